//! Every shell command block (```` ```sh ````) of every Markdown file of the repository runs
//! here verbatim, as a user would type it, from the repository root, as root:
//!
//! - ordinary blocks run to the end and must exit 0 (some with a check of what they left);
//! - a block that starts the backend (`--socket-path`) must reach `listening on`;
//! - a QEMU block (`qemu-system-x86_64 ...`) runs against the backend block before it in the
//!   same file: the backend must see the frontend connect, QEMU must still be running after
//!   the vhost-user negotiation, and the backend must exit 0 once QEMU is gone. Blocks with
//!   `vhost-user-test-device-pci` get QEMU 11.1 (the trixie root vm-lanes builds), the others
//!   the system's QEMU 10;
//! - long runs whose start is what can break (a peer's conformance run) are stopped once they
//!   print the line that shows they run;
//! - blocks CI already runs (`.ci/test`, the VM lanes) and blocks this machine cannot run
//!   (crosvm) are listed in [`TABLE`] with the reason, not run twice. A block nobody
//!   classified that looks expensive fails instead of running.
//!
//! Blocks run in a private mount namespace in which `/usr`, `/etc` and `/var` are overlays
//! whose changes land in a directory of this run (kept across the run's blocks, so an install
//! block is seen by the blocks after it, and thrown away afterwards): the README's install
//! commands run exactly as written without touching the machine. `cargo install` goes to
//! this run's `CARGO_INSTALL_ROOT`, which is on `PATH`.
//!
//! The blocks are ignored by default (they build in release and start QEMU); `.ci/test` runs
//! them after the VM lanes with `-- --include-ignored --test-threads 1`. The first trial
//! (`markdown::blocks_are_classified`) is cheap and always runs: untagged fences, stale table
//! entries and unclassified expensive blocks fail it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("guest-tests is inside the repository")
        .to_path_buf()
}

/// Set for every block: a block that ran this harness again would find it and stop.
const NESTED: &str = "VUG_README_COMMANDS";

/// How long an ordinary block (or a backend reaching `listening on`: the first one builds in
/// release) may take.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a frontend has to connect to the backend.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long QEMU must keep running after it connected (it exits at once when the vhost-user
/// negotiation fails).
const SETTLE: Duration = Duration::from_secs(3);
/// How long a stopped process (or a backend whose frontend left) may take to end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How a block is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// To the end; exit status 0.
    Run,
    /// The backend: passes at `listening on`, then stopped with SIGTERM.
    Backend,
    /// QEMU against the backend block before it in the same file.
    Frontend,
    /// Long-running: passes once a line contains the text, then stopped.
    Until(&'static str),
    /// Not run again: CI runs it (the reason says where).
    Ci(&'static str),
    /// Not run: this machine cannot (the reason says why).
    NotHere(&'static str),
}

/// Blocks that are not run as their text suggests, keyed by file and first line (exact).
/// An entry that matches no block fails `markdown::blocks_are_classified`.
const TABLE: &[(&str, &str, How)] = &[
    (
        "README.md",
        ".ci/test",
        How::Ci("the README's test command is what CI runs (.ci/run)"),
    ),
    (
        "README.md",
        "cargo run --release -p guest-tests --bin vm-lanes                # lanes kernel, blob, qemu10, wayland, render",
        How::Ci(".ci/test's last stages run every lane; the blob lane checks its console.png itself"),
    ),
    (
        "guest-tests/README.md",
        "cargo run --release -p guest-tests --bin vm-lanes                 # all lanes",
        How::Ci(".ci/test runs every lane; --lane and --timeout only choose among them"),
    ),
    (
        "guest-tests/README.md",
        "cargo run --release -p guest-tests --bin vm-lanes -- --lane blob && ls target/vm-lanes/blob-default/console.png",
        How::Ci(".ci/test runs the blob lane, which checks its console.png itself"),
    ),
    (
        "guest-tests/README.md",
        "git clone . /tmp/lanes-clean && cd /tmp/lanes-clean",
        How::Ci("CI runs .ci/test on a fresh machine with an empty cache: that run is this one"),
    ),
    (
        "guest-tests/README.md",
        "cargo test -p guest-tests --test readme_commands -- --include-ignored --test-threads 1",
        How::Ci("this test itself: .ci/test runs it"),
    ),
    (
        "vhost-user-gpu/conformance/README.md",
        "cargo test -p vhost-user-gpu --test conformance                  # our binary",
        How::Ci(".ci/test's cargo nextest stage runs the conformance test target"),
    ),
    (
        "vhost-user-gpu/conformance/README.md",
        "VUG_BACKEND=/usr/lib/qemu/vhost-user-gpu VUG_BACKEND_PEER=qemu \\",
        How::Until(QEMU_PEER_UP),
    ),
    (
        "vhost-user-gpu/conformance/README.md",
        "VUG_BACKEND=~/.cache/dmabuf-virtio-gpu/peers/bin/vhost-device-gpu VUG_BACKEND_PEER=vhost-device-gpu \\",
        How::NotHere(PEER_VDG),
    ),
    (
        "vhost-user-gpu/conformance/README.md",
        "VUG_ALLOCATOR=udmabuf cargo test -p vhost-user-gpu --test conformance   # needs /dev/udmabuf",
        How::NotHere(
            "needs /dev/udmabuf, which this host has not; the kernel VM lane runs the suite with \
             udmabuf inside a guest (.ci/test)",
        ),
    ),
    (
        "vhost-user-gpu/conformance/PEERS.md",
        "# ours (default)",
        How::Ci(".ci/test's cargo nextest stage runs the conformance test target"),
    ),
    (
        "vhost-user-gpu/conformance/PEERS.md",
        "# QEMU 10.0.2's reference C backend (Debian qemu-system-gui, bookworm-backports)",
        How::Until(QEMU_PEER_UP),
    ),
    (
        "vhost-user-gpu/conformance/PEERS.md",
        "# rust-vmm vhost-device-gpu 0.2.0",
        How::NotHere(PEER_VDG),
    ),
    (
        "BENCHMARKS.md",
        "# Full run: installs missing peers first (QEMU's backend with apt, about 45 s; vhost-device-gpu",
        How::NotHere(PEER_VDG),
    ),
    (
        "BENCHMARKS.md",
        "# Smoke run for CI (checks that it runs, not the figures): fewer iterations, and",
        How::Ci(".ci/run's last stage runs it"),
    ),
    (
        "BENCHMARKS.md",
        "# Install the peers without benchmarking: both, or one of them.",
        How::NotHere(PEER_VDG),
    ),
    ("BENCHMARKS.md", ".ci/peers qemu", How::Run),
    (
        "BENCHMARKS.md",
        "cargo run --release -p guest-tests --bin vm-lanes -- --bench render",
        How::Run,
    ),
    (
        "vhost-user-gpu/fuzz/README.md",
        ".ci/fuzz 60",
        How::Ci(".ci/test's fuzzing stage runs .ci/fuzz 60"),
    ),
    (
        "vhost-user-gpu/README-launch.md",
        "crosvm run --vhost-user gpu,socket=/tmp/vgpu.sock /boot/vmlinuz",
        How::NotHere(
            "no crosvm here: it is not packaged for Debian bookworm, and its KVM cannot run on \
             this machine's /dev/kvm",
        ),
    ),
];

/// What the conformance suite prints once it has brought QEMU's backend up.
const QEMU_PEER_UP: &str = "conformance: /usr/lib/qemu/vhost-user-gpu (qemu) features";

/// Why blocks needing rust-vmm's vhost-device-gpu are not run.
const PEER_VDG: &str =
    "builds rust-vmm's vhost-device-gpu 0.2.0 from crates.io (5.5 min on 2 cores) only to \
     compare against it; run by hand when PEERS.md or BENCHMARKS.md is regenerated";

/// Text that marks a block too expensive to run without a decision in [`TABLE`].
const EXPENSIVE: &[&str] = &[
    ".ci/test",
    ".ci/fuzz",
    ".ci/peers",
    "vm-lanes",
    "vug-bench",
    "vhost-device-gpu",
];

/// One fenced code block.
#[derive(Debug, Clone)]
struct Block {
    /// Path relative to the repository root.
    file: String,
    /// Line of the opening fence (1-based).
    line: usize,
    /// The fence's info string (`sh`, `text`...).
    lang: String,
    /// The block's lines.
    text: String,
}

impl Block {
    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default().trim()
    }

    fn name(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    fn is_shell(&self) -> bool {
        matches!(self.lang.as_str(), "sh" | "bash" | "shell")
    }
}

/// Every `*.md` of the repository (not build output, not fuzz corpora).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "corpus" {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// The fenced blocks of `path`; an untagged fence is an error (say `sh` or `text`).
fn blocks_of(path: &Path) -> Result<Vec<Block>, String> {
    let file = path
        .strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let fence = ["```", "~~~"].into_iter().find(|f| trimmed.starts_with(f));
        match (&mut open, fence) {
            (None, Some(f)) => {
                let lang = trimmed[f.len()..].trim().to_owned();
                if lang.is_empty() {
                    return Err(format!(
                        "{file}:{}: untagged code fence: tag it `sh` (a command the README \
                         test runs) or `text` (output, a synopsis)",
                        i + 1
                    ));
                }
                open = Some((i + 1, f.to_owned(), lang, Vec::new()));
            }
            (Some((line_no, f, lang, lines)), _) if trimmed.starts_with(f.as_str()) => {
                blocks.push(Block {
                    file: file.clone(),
                    line: *line_no,
                    lang: std::mem::take(lang),
                    text: lines.join("\n"),
                });
                open = None;
            }
            (Some((_, _, _, lines)), _) => lines.push(line),
            (None, None) => {}
        }
    }
    if let Some((line_no, ..)) = open {
        return Err(format!("{file}:{line_no}: code fence never closed"));
    }
    Ok(blocks)
}

/// Every shell block of every Markdown file, with how it is run.
fn classified() -> Result<Vec<(Block, How)>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut used = vec![false; TABLE.len()];
    for path in markdown_files() {
        let blocks = match blocks_of(&path) {
            Ok(b) => b,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut backend_seen = false;
        for block in blocks.into_iter().filter(Block::is_shell) {
            let entry = TABLE
                .iter()
                .position(|(f, first, _)| *f == block.file && *first == block.first_line());
            let how = match entry {
                Some(i) => {
                    used[i] = true;
                    TABLE[i].2
                }
                None => role(&block),
            };
            match how {
                How::Backend => backend_seen = true,
                How::Frontend if !backend_seen => errors.push(format!(
                    "{}: a QEMU block with no backend block before it in the same file",
                    block.name()
                )),
                How::Run if entry.is_none() => {
                    if let Some(word) = EXPENSIVE.iter().find(|w| block.text.contains(*w)) {
                        errors.push(format!(
                            "{}: runs `{word}` but is not in the README test's TABLE: say how it \
                             is run (or why not)",
                            block.name()
                        ));
                    }
                }
                _ => {}
            }
            out.push((block, how));
        }
    }
    for (i, (file, first, _)) in TABLE.iter().enumerate() {
        if !used[i] {
            errors.push(format!(
                "TABLE entry for {file} `{first}` matches no block (the doc changed: update it)"
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("\n"))
    }
}

/// The role a block's text gives it.
fn role(block: &Block) -> How {
    let commands: Vec<&str> = block
        .text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let first = commands.first().copied().unwrap_or_default();
    if first.starts_with("qemu-system-") {
        How::Frontend
    } else if commands.len() == 1
        && first.contains("--socket-path")
        && (first.starts_with("vhost-user-gpu ") || first.contains("--bin vhost-user-gpu "))
    {
        How::Backend
    } else {
        How::Run
    }
}

/// What one run of the harness shares between its blocks: the overlay upper directories,
/// the `cargo install` root, the QEMU 11.1 wrapper.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn get() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| {
            let base = root().join("target/readme-commands");
            std::fs::create_dir_all(&base).expect("create target/readme-commands");
            let dir = tempfile::tempdir_in(&base).expect("a directory for this run");
            for d in ["usr", "etc", "var"] {
                for kind in ["upper", "work"] {
                    std::fs::create_dir_all(dir.path().join(format!("{d}.{kind}"))).unwrap();
                }
            }
            std::fs::create_dir_all(dir.path().join("cargo/bin")).unwrap();
            Env { dir }
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cargo_bin(&self) -> PathBuf {
        self.path().join("cargo/bin")
    }

    /// What the block's commands wrote below `/usr` (etc.), seen from outside.
    fn upper(&self, dir: &str) -> PathBuf {
        self.path().join(format!("{dir}.upper"))
    }

    /// A directory holding `qemu-system-x86_64` = QEMU 11.1 from the trixie root.
    fn qemu_11_1(&self) -> Result<PathBuf, String> {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or("neither XDG_CACHE_HOME nor HOME is set")?
            .join("dmabuf-virtio-gpu");
        let trixie = cache.join("trixie-root");
        if !cache.join("trixie-root.complete").exists() {
            return Err(format!(
                "QEMU 11.1 lives in {}, which vm-lanes builds: run \
                 `cargo run --release -p guest-tests --bin vm-lanes -- --lane blob` first",
                trixie.display()
            ));
        }
        let dir = self.path().join("qemu-11.1");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let wrapper = dir.join("qemu-system-x86_64");
        // Like vm-lanes: chroot into the root in a private mount namespace with /dev, /proc
        // and the host's /tmp (where the backend's socket is) mounted into it. QEMU is named
        // by its path in the root: by name, a checkout under /tmp would find this wrapper
        // again through PATH inside the chroot.
        let script = format!(
            "#!/bin/sh\n\
             exec unshare --mount --propagation private -- sh -c 'root=$1; shift; \
             mount --rbind /dev \"$root/dev\"; mount -t proc proc \"$root/proc\"; \
             mount --bind /tmp \"$root/tmp\"; exec chroot \"$root\" /usr/bin/qemu-system-x86_64 \"$@\"' \
             qemu-11.1 '{}' \"$@\"\n",
            trixie.display()
        );
        std::fs::write(&wrapper, script).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(dir)
    }
}

/// Mounts the overlays, then runs the block with bash (-e, pipefail).
const SANDBOX: &str = r#"set -e
run=$1; block=$2
for d in usr etc var; do
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$run/$d.upper,workdir=$run/$d.work" "/$d"
done
exec bash -e -o pipefail -c "$block"
"#;

/// A started block: its process group and everything it printed (stdout and stderr).
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
    name: String,
}

impl Running {
    fn start(block: &Block, extra_path: Option<&Path>) -> Result<Running, String> {
        let env = Env::get();
        let mut path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![env.cargo_bin()];
        dirs.extend(extra_path.map(Path::to_path_buf));
        dirs.extend(std::env::split_paths(&path));
        path = std::env::join_paths(dirs).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SANDBOX,
        ])
        .arg("readme-block")
        .arg(env.path())
        .arg(&block.text)
        .current_dir(root())
        .env("PATH", path)
        .env("CARGO_INSTALL_ROOT", env.path().join("cargo"))
        .env(NESTED, "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start unshare (root is needed): {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let lines = Arc::clone(&lines);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Running {
            child,
            lines,
            rx,
            name: block.name(),
        })
    }

    /// Waits for a line containing `marker`; fails if the block ends first or time runs out.
    fn wait_for(&mut self, marker: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) if line.contains(marker) => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        // Output may still be in the pipe: read what is left first.
                        std::thread::sleep(Duration::from_millis(200));
                        if self.rx.try_iter().any(|l| l.contains(marker)) {
                            return Ok(());
                        }
                        return Err(self.failure(&format!("ended ({status}) before `{marker}`")));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure(&format!("no `{marker}` within {within:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    return Err(self.failure(&format!("ended ({status:?}) before `{marker}`")));
                }
            }
        }
    }

    /// Waits for the block to end by itself.
    fn wait(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("still running after {within:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the whole process group, SIGKILL if it is still there after
    /// [`EXIT_TIMEOUT`].
    fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        let kill = |signal: &str| {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        kill("-TERM");
        if self.wait(EXIT_TIMEOUT).is_err() {
            kill("-KILL");
            let _ = self.child.wait();
        }
        // Whatever the group left behind (a backend started by `cargo run`...).
        kill("-KILL");
    }

    fn failure(&self, what: &str) -> String {
        let lines = self.lines.lock().unwrap();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("{}: {what}; its last output:\n{tail}", self.name)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
    }
}

fn run_block(block: &Block, how: How, all: &[(Block, How)]) -> Result<(), String> {
    if std::env::var_os(NESTED).is_some() {
        return Err("refusing to run README blocks from inside a README block".into());
    }
    match how {
        How::Ci(_) | How::NotHere(_) => Ok(()),
        How::Run => {
            let mut running = Running::start(block, None)?;
            let status = running.wait(BLOCK_TIMEOUT)?;
            if !status.success() {
                return Err(running.failure(&format!("exited with {status}")));
            }
            after(block)
        }
        How::Until(marker) => {
            let mut running = Running::start(block, None)?;
            running.wait_for(marker, BLOCK_TIMEOUT)?;
            running.stop();
            Ok(())
        }
        How::Backend => {
            let mut backend = Running::start(block, None)?;
            backend.wait_for("listening on", BLOCK_TIMEOUT)?;
            backend.stop();
            Ok(())
        }
        How::Frontend => {
            let backend_block = all
                .iter()
                .rev()
                .find(|(b, h)| b.file == block.file && b.line < block.line && *h == How::Backend)
                .map(|(b, _)| b)
                .ok_or("no backend block before this QEMU block")?;
            let qemu_path = if block.text.contains("vhost-user-test-device-pci") {
                Some(Env::get().qemu_11_1()?)
            } else {
                None
            };
            let mut backend = Running::start(backend_block, None)?;
            backend.wait_for("listening on", BLOCK_TIMEOUT)?;
            let mut qemu = Running::start(block, qemu_path.as_deref())?;
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            loop {
                if backend
                    .wait_for("frontend connected", Duration::from_secs(1))
                    .is_ok()
                {
                    break;
                }
                if !qemu.alive() {
                    return Err(qemu.failure("QEMU ended before the backend saw it connect"));
                }
                if !backend.alive() {
                    return Err(backend.failure("the backend ended before QEMU connected"));
                }
                if Instant::now() >= deadline {
                    return Err(backend
                        .failure(&format!("no frontend connected within {CONNECT_TIMEOUT:?}")));
                }
            }
            std::thread::sleep(SETTLE);
            if !qemu.alive() {
                return Err(qemu.failure("QEMU ended right after connecting"));
            }
            qemu.stop();
            // Without --keep-listening the backend ends with its frontend, successfully.
            let status = backend.wait(EXIT_TIMEOUT)?;
            if !status.success() {
                return Err(
                    backend.failure(&format!("the backend exited with {status} after QEMU left"))
                );
            }
            Ok(())
        }
    }
}

/// Checks of what a block left behind, keyed by its first line.
fn after(block: &Block) -> Result<(), String> {
    let env = Env::get();
    match block.first_line().trim() {
        first if first.starts_with("cargo install --locked --path vhost-user-gpu") => {
            let mut installed: Vec<String> = std::fs::read_dir(env.cargo_bin())
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            installed.sort();
            if installed != ["vhost-user-gpu"] {
                return Err(format!(
                    "cargo install --path vhost-user-gpu installed {installed:?}, not only the backend"
                ));
            }
            Ok(())
        }
        "cd vhost-user-gpu/fuzz && cargo run --bin seeds" => {
            // The committed seeds are what the generator makes today.
            let out = Command::new("git")
                .args(["status", "--porcelain", "--", "vhost-user-gpu/fuzz/corpus"])
                .current_dir(root())
                .output()
                .map_err(|e| format!("git status: {e}"))?;
            let changed = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !changed.trim().is_empty() {
                return Err(format!(
                    "the regenerated seeds differ from the committed ones:\n{changed}"
                ));
            }
            Ok(())
        }
        "dmabuf-info/scripts/install.sh --prefix /usr --libdir /usr/lib/x86_64-linux-gnu --destdir \"$PWD/debian/tmp\"" => {
            // A package build's staging tree, in the repository root: check it, then remove it.
            let debian = root().join("debian");
            let staged = debian.join("tmp/usr");
            let missing: Vec<&str> = [
                "bin/dmabuf-info",
                "lib/x86_64-linux-gnu/libdmabuf_info.so.1",
                "lib/x86_64-linux-gnu/pkgconfig/dmabuf-info.pc",
                "include/dmabuf_info.h",
            ]
            .into_iter()
            .filter(|f| !staged.join(f).exists())
            .collect();
            let _ = std::fs::remove_dir_all(debian.join("tmp"));
            let _ = std::fs::remove_dir(&debian);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not staged under debian/tmp/usr: {missing:?}"))
            }
        }
        "vhost-user-gpu/install.sh" => {
            let usr = env.upper("usr");
            let descriptor = usr.join("share/qemu/vhost-user/60-dmabuf-virtio-gpu.json");
            let doc: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&descriptor)
                    .map_err(|e| format!("{}: {e}", descriptor.display()))?,
            )
            .map_err(|e| e.to_string())?;
            let binary = doc["binary"].as_str().unwrap_or_default();
            if binary != "/usr/libexec/dmabuf-virtio-gpu/vhost-user-gpu" {
                return Err(format!("the installed descriptor names {binary:?}"));
            }
            let installed = usr.join("libexec/dmabuf-virtio-gpu/vhost-user-gpu");
            if !installed.is_file() {
                return Err(format!("{} was not installed", installed.display()));
            }
            Ok(())
        }
        first if first.starts_with("mkdir -p /etc/qemu/vhost-user") => {
            let chosen = libvirt_choice(env)?;
            if chosen != "/usr/libexec/dmabuf-virtio-gpu/vhost-user-gpu" {
                return Err(format!("libvirt's discovery would now pick {chosen}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The gpu backend binary libvirt would pick (QEMU's docs/interop/vhost-user.json: file
/// names from /usr/share/qemu/vhost-user and /etc/qemu/vhost-user merged, /etc winning on
/// the same name, an empty file hiding it, sorted by name, first "type": "gpu"), over the
/// machine's files plus what this run's blocks wrote.
fn libvirt_choice(env: &Env) -> Result<String, String> {
    use std::collections::BTreeMap;
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (system, upper) in [
        (
            PathBuf::from("/usr/share/qemu/vhost-user"),
            env.upper("usr").join("share/qemu/vhost-user"),
        ),
        (
            PathBuf::from("/etc/qemu/vhost-user"),
            env.upper("etc").join("qemu/vhost-user"),
        ),
    ] {
        for dir in [system, upper.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mut path = entry.path();
                // A link written by a block points into the overlaid /usr: follow it there.
                if let Ok(target) = std::fs::read_link(&path) {
                    let in_upper = env
                        .upper("usr")
                        .join(target.strip_prefix("/usr").unwrap_or(&target));
                    path = if in_upper.exists() { in_upper } else { target };
                }
                files.insert(name, path);
            }
        }
    }
    for (name, path) in files {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        if text.trim().is_empty() {
            continue; // hidden
        }
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        if doc["type"] == "gpu" {
            return Ok(doc["binary"].as_str().unwrap_or_default().to_owned());
        }
    }
    Err("no gpu descriptor at all".into())
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    let blocks = classified();
    let summary = match &blocks {
        Ok(b) => Ok(b.len()),
        Err(e) => Err(e.clone()),
    };
    trials.push(Trial::test("markdown::blocks_are_classified", move || {
        summary.map(|_| ()).map_err(Failed::from)
    }));
    let blocks = Arc::new(blocks.unwrap_or_default());
    // One run at a time on a machine: the blocks use fixed paths such as /tmp/vgpu.sock.
    let lock = Arc::new(Mutex::new(None::<File>));
    for i in 0..blocks.len() {
        let (block, how) = blocks[i].clone();
        let all = Arc::clone(&blocks);
        let lock = Arc::clone(&lock);
        let kind = match how {
            How::Run => "run",
            How::Backend => "backend",
            How::Frontend => "qemu",
            How::Until(_) => "until",
            How::Ci(_) => "ci",
            How::NotHere(_) => "not-here",
        };
        let trial = Trial::test(format!("block::{}", block.name()), move || {
            if let How::Ci(why) | How::NotHere(why) = how {
                eprintln!("{}: not run here: {why}", block.name());
            }
            let mut held = lock.lock().unwrap();
            if held.is_none() {
                let file = File::create("/tmp/dmabuf-virtio-gpu-readme-commands.lock")
                    .map_err(|e| Failed::from(e.to_string()))?;
                file.lock().map_err(|e| Failed::from(e.to_string()))?;
                *held = Some(file);
            }
            let started = Instant::now();
            let result = run_block(&block, how, &all);
            if !matches!(how, How::Ci(_) | How::NotHere(_)) {
                eprintln!("{}: {:.1} s", block.name(), started.elapsed().as_secs_f64());
            }
            result.map_err(Failed::from)
        })
        .with_kind(kind)
        .with_ignored_flag(true);
        trials.push(trial);
    }
    libtest_mimic::run(&args, trials).exit();
}
