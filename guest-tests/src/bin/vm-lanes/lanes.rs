//! The three lanes: `kernel`, `blob`, `qemu10`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use guest_tests::pattern;
use guest_tests::report::{case_line, parse_libtest_result, parse_summary, Outcome, Tally};

use crate::binaries;
use crate::fetch::{self, Apt, Kernel};
use crate::initramfs;
use crate::lifecycle::{PauseDriver, ResetDriver, Screen, UpgradeDriver, RESET_BOOTS};
use crate::qmp::Qmp;
use crate::vm::{Boot, HoldReply, KillOnDrop, Qemu, Transcript};
use crate::{step, Error};

/// Pixel rows that must be lit for a screen to count as showing the guest's
/// console text: the guest writes 12 lines, about 10 lit rows each in an 8x16
/// font; a cursor alone lights one or two.
const CONSOLE_TEXT_ROWS: usize = 60;

/// Live upgrades of the backend while the `blob` lane's guest workload runs.
const UPGRADES: u32 = 10;

/// Lane names, in the order they run by default (`render`: real guest userspace on a root
/// file system image, see `render.rs`).
pub const NAMES: [&str; 5] = ["kernel", "blob", "qemu10", "wayland", "render"];

/// Everything prepared once and shared by the lanes.
#[derive(Default)]
pub struct Env {
    cache: Option<PathBuf>,
    apt: Option<Apt>,
    kernel: Option<Kernel>,
    guest_tests: Option<PathBuf>,
}

impl Env {
    pub(crate) fn cache(&mut self) -> Result<PathBuf, Error> {
        if self.cache.is_none() {
            self.cache = Some(fetch::cache_root()?);
        }
        Ok(self.cache.clone().unwrap_or_default())
    }

    pub(crate) fn apt(&mut self) -> Result<&Apt, Error> {
        if self.apt.is_none() {
            let cache = self.cache()?;
            ensure_host_tools()?;
            self.apt = Some(Apt::new(&cache)?);
        }
        self.apt
            .as_ref()
            .ok_or_else(|| Error::Setup("apt configuration missing".into()))
    }

    pub(crate) fn kernel(&mut self) -> Result<&Kernel, Error> {
        if self.kernel.is_none() {
            let cache = self.cache()?;
            let kernel = fetch::kernel(&cache, self.apt()?)?;
            self.kernel = Some(kernel);
        }
        self.kernel
            .as_ref()
            .ok_or_else(|| Error::Setup("kernel missing".into()))
    }

    fn qemu10(&mut self) -> Result<Qemu, Error> {
        Ok(Qemu::System(fetch::qemu10(self.apt()?)?))
    }

    pub(crate) fn qemu11(&mut self) -> Result<Qemu, Error> {
        let cache = self.cache()?;
        self.apt()?;
        Ok(Qemu::Chroot(fetch::trixie_root(&cache)?))
    }

    pub(crate) fn guest_tests(&mut self) -> Result<PathBuf, Error> {
        if self.guest_tests.is_none() {
            let built = step("build: static guest-tests", || {
                binaries::guest(&["build", "-p", "guest-tests", "--bin", "guest-tests"])
            })?;
            self.guest_tests = Some(binaries::find(&built, "guest-tests", false)?.path.clone());
        }
        Ok(self.guest_tests.clone().unwrap_or_default())
    }
}

/// Tools the runner shells out to, and the Debian packages that carry them.
const HOST_TOOLS: [(&str, &str); 6] = [
    ("/bin/busybox", "busybox-static"),
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/bin/xz", "xz-utils"),
    ("/usr/sbin/depmod", "kmod"),
    ("/usr/bin/unshare", "util-linux"),
    ("/usr/bin/dpkg-deb", "dpkg"),
];

fn ensure_host_tools() -> Result<(), Error> {
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("apt: installing {}", missing.join(" ")), || {
        crate::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )
    })
}

/// A lane's work directory under `target/vm-lanes/`, emptied.
pub(crate) fn lane_dir(name: &str) -> Result<PathBuf, Error> {
    let dir = binaries::target_dir().join("vm-lanes").join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// One guest program run by `/init`.
struct GuestStep {
    name: String,
    command: String,
}

impl GuestStep {
    fn new(name: &str, command: &str) -> Self {
        GuestStep {
            name: name.into(),
            command: command.into(),
        }
    }
}

/// Loads the modules given as arguments, one case line each.
const LOAD_MODULES: &str = "#!/bin/sh
pass=0; fail=0
for m in \"$@\"; do
  if insmod /lib/modules/$m; then echo \"ok insmod $m\"; pass=$((pass+1));
  else echo \"FAILED insmod $m\"; fail=$((fail+1)); fi
done
echo \"$pass passed, $fail failed, 0 skipped\"
[ $fail -eq 0 ]
";

/// Removes ANSI colour sequences (libtest colours its output on some setups).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the final byte of the CSI sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes the lane's initramfs: busybox, modules, binaries (installed as
/// `/bin/NAME`) and an `/init` that runs the steps.
fn write_initramfs(
    path: &Path,
    kernel: &Kernel,
    modules: &[&str],
    binaries: &[(&str, &Path)],
    scripts: &[(&str, &str)],
    steps: &[GuestStep],
) -> Result<(), Error> {
    let mut archive = initramfs::base()?;
    let module_files = initramfs::add_modules(&mut archive, &kernel.modules, modules)?;
    for (name, source) in binaries {
        let data = fs::read(source).map_err(|e| Error::io(source, e))?;
        archive.file(&format!("bin/{name}"), 0o755, &data);
    }
    for (path, text) in scripts {
        archive.file(path, 0o755, text.as_bytes());
    }
    let mut init = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         stty -F /dev/ttyS1 raw -echo\n\
         exec </dev/ttyS1 >/dev/ttyS1 2>&1\n\
         echo \"@@VMLANE boot $(uname -r)\"\n\
         step() { name=$1; shift; echo \"@@VMLANE step $name\"; \
         (cd /tmp && timeout -s KILL 900 \"$@\"); echo \"@@VMLANE end $name rc=$?\"; }\n\
",
    );
    archive.file("bin/load-modules", 0o755, LOAD_MODULES.as_bytes());
    init.push_str(&format!(
        "step modules /bin/load-modules {}\n",
        module_files.join(" ")
    ));
    for s in steps {
        init.push_str(&format!("step {} {}\n", s.name, s.command));
    }
    init.push_str("echo \"@@VMLANE done\"\nsync\npoweroff -f\n");
    archive.file("init", 0o755, init.as_bytes());
    archive.finish(path)
}

/// Counts a transcript: every step must end and print a summary line (ours or
/// libtest's); a step that exits non-zero without a counted failure counts as
/// one failure; a step that never ran counts as one failure.
pub(crate) fn tally_transcript(label: &str, transcript: &Transcript, steps: &[String]) -> Tally {
    let mut total = Tally::default();
    let mut current: Option<(String, Tally, bool)> = None;
    let mut ended = Vec::new();
    for line in &transcript.lines {
        let line = &strip_ansi(line);
        if line.starts_with("@@VMLANE boot ") {
            // A reset ended the step in flight (the reset steps): what it counted before
            // asking for the reset stands; a step that counted nothing failed.
            if let Some((name, mut tally, counted)) = current.take() {
                if !counted {
                    println!(
                        "FAILED {label}/{name}: interrupted by a reboot before its result line"
                    );
                    tally.failed += 1;
                }
                println!("  {label}/{name} (until the reset): {tally}");
                total.add(tally);
                ended.push(name);
            }
            continue;
        }
        if let Some(name) = line.strip_prefix("@@VMLANE step ") {
            current = Some((name.trim().to_string(), Tally::default(), false));
            continue;
        }
        if let Some(rest) = line.strip_prefix("@@VMLANE end ") {
            let Some((name, mut tally, counted)) = current.take() else {
                continue;
            };
            let rc = rest
                .rsplit("rc=")
                .next()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if !counted {
                println!("FAILED {label}/{name}: printed no result line (exit {rc:?})");
                tally.failed += 1;
            } else if rc != Some(0) && tally.failed == 0 {
                println!("FAILED {label}/{name}: exited with {rc:?} although no case failed");
                tally.failed += 1;
            }
            println!("  {label}/{name}: {tally}");
            total.add(tally);
            ended.push(name);
            continue;
        }
        if let Some((name, tally, counted)) = current.as_mut() {
            let parsed = parse_summary(line).or_else(|| parse_libtest_result(line));
            if let Some(t) = parsed {
                tally.add(t);
                *counted = true;
            } else if line.starts_with("FAILED ")
                || (line.starts_with("test ") && line.ends_with("FAILED"))
            {
                println!("  {label}/{name}: {line}");
            }
        }
    }
    if let Some((name, _, _)) = current {
        println!("FAILED {label}/{name}: did not finish");
        total.failed += 1;
        ended.push(name);
    }
    for expected in steps {
        if !ended.contains(expected) {
            println!("FAILED {label}/{expected}: never ran");
            total.failed += 1;
        }
    }
    if !transcript.finished {
        println!("FAILED {label}: the guest did not reach the end of /init");
        total.failed += 1;
    }
    total
}

/// Runs one lane by name.
pub fn run(name: &str, env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    match name {
        "kernel" => kernel_lane(env, timeout),
        "blob" => blob_lane(env, timeout),
        "qemu10" => qemu10_lane(env, timeout),
        "render" => crate::render::lane(env, timeout),
        "wayland" => crate::wayland::lane(env, timeout),
        other => Err(Error::Lane(format!("no lane named {other}"))),
    }
}

pub(crate) fn host_case(label: &str, tally: &mut Tally, outcome: Outcome) {
    println!("{}", case_line(label, &outcome));
    tally.record(&outcome);
}

pub(crate) const VIRTIO_GPU_MODULES: [&str; 5] = [
    "drm",
    "drm_kms_helper",
    "drm_shmem_helper",
    "virtio_dma_buf",
    "virtio-gpu",
];

fn kernel_lane(env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    let dir = lane_dir("kernel")?;
    let qemu = env.qemu10()?;
    let guest_tests = env.guest_tests()?;
    let dmabuf = step(
        "build: static dmabuf-info CLI and real-exporter tests",
        || {
            let mut built = binaries::guest(&["build", "-p", "dmabuf-info", "--bins"])?;
            built.extend(binaries::guest(&[
                "test",
                "-p",
                "dmabuf-info",
                "--test",
                "real_exporters",
                "--no-run",
            ])?);
            Ok(built)
        },
    )?;
    let cli = binaries::find(&dmabuf, "dmabuf-info", false)?.path.clone();
    let real = binaries::find(&dmabuf, "real_exporters", true)?
        .path
        .clone();

    let mut bins: Vec<(&str, &Path)> = vec![
        ("guest-tests", &guest_tests),
        ("dmabuf-info", &cli),
        ("real_exporters", &real),
    ];
    let mut steps = vec![
        GuestStep::new(
            "real-exporters",
            "/bin/real_exporters --test-threads=1 --color never",
        ),
        GuestStep::new(
            "inspect-pid",
            "/bin/guest-tests inspect-pid /bin/dmabuf-info",
        ),
        GuestStep::new("map-policy", "/bin/guest-tests map-policy"),
    ];
    let backend = vhost_user_gpu_in_guest()?;
    if let Some(backend) = &backend {
        bins.push(("vhost-user-gpu", &backend.0));
        bins.push(("conformance", &backend.1));
        steps.push(GuestStep::new(
            "vhost-user-gpu-udmabuf",
            // Without the `upgrading::` repeats (every case of nine groups again, with live
            // upgrades in the middle): they run on the host; here under TCG they would
            // double the lane's longest guest run.
            "env VUG_BACKEND=/bin/vhost-user-gpu VUG_BACKEND_PEER=ours VUG_ALLOCATOR=udmabuf \
             /bin/conformance --test-threads=1 --color never --skip upgrading::",
        ));
    }
    let kernel = env.kernel()?;
    eprintln!("vm-lanes: guest kernel {}", kernel.release);
    let initrd = dir.join("initramfs.cpio");
    let mut modules: Vec<&str> = VIRTIO_GPU_MODULES.to_vec();
    modules.push("vgem");
    write_initramfs(&initrd, kernel, &modules, &bins, &[], &steps)?;
    let boot = Boot {
        qemu: &qemu,
        dir: &dir,
        kernel: &kernel.image,
        initramfs: &initrd,
        extra: strings(&["-m", "512M", "-machine", "q35", "-device", "virtio-gpu-pci"]),
        env: Vec::new(),
        timeout,
        allow_reboot: false,
    };
    let transcript = step("kernel lane: guest run", || {
        boot.run(&mut |_| HoldReply::Continue)
    })?;
    let mut names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
    names.push("modules".into());
    let mut tally = tally_transcript("kernel", &transcript, &names);
    if backend.is_none() {
        host_case(
            "kernel/vhost-user-gpu-udmabuf",
            &mut tally,
            Outcome::Failed(
                "the vhost-user-gpu binary or its conformance tests could not be built static"
                    .into(),
            ),
        );
    }
    Ok(tally)
}

/// The backend and the conformance test executable, built static for the
/// guest, or `None` when they cannot be (reported as a failure by the lane).
fn vhost_user_gpu_in_guest() -> Result<Option<(PathBuf, PathBuf)>, Error> {
    let built = step("build: static vhost-user-gpu and conformance tests", || {
        let mut built =
            binaries::guest(&["build", "-p", "vhost-user-gpu", "--bin", "vhost-user-gpu"])?;
        built.extend(binaries::guest(&[
            "test",
            "-p",
            "vhost-user-gpu",
            "--test",
            "conformance",
            "--no-run",
        ])?);
        Ok(built)
    });
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vm-lanes: {e}");
            return Ok(None);
        }
    };
    let backend = binaries::find(&built, "vhost-user-gpu", false)?
        .path
        .clone();
    let conformance = binaries::find(&built, "conformance", true)?.path.clone();
    Ok(Some((backend, conformance)))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The host-side backend process for the blob, qemu10 and wayland lanes; after a live
/// upgrade ([`Backend::upgrade`]) the process that took over.
pub(crate) struct Backend {
    child: KillOnDrop,
    log: PathBuf,
    binary: PathBuf,
}

/// One live upgrade of a lane's backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upgraded {
    /// The process that served before (it exited 0).
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
    /// From starting the new process to the old one's exit.
    pub took: Duration,
}

/// How long a live upgrade may take before the runner gives up on it (the backend's own
/// handover deadline is 60 s).
const UPGRADE_LIMIT: Duration = Duration::from_secs(90);

impl Backend {
    pub(crate) fn start(
        binary: &Path,
        dir: &Path,
        socket: &Path,
        extra: &[String],
    ) -> Result<Self, Error> {
        let log = dir.join("backend.log");
        let out = fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = Command::new(binary)
            .arg("--socket-path")
            .arg(socket)
            .args(extra)
            // VM_LANES_BACKEND_LOG=debug (or trace: every vhost-user message) for a closer look.
            .env(
                "RUST_LOG",
                std::env::var("VM_LANES_BACKEND_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start {}: {e}", binary.display())))?;
        let mut backend = Backend {
            child: KillOnDrop(child),
            log,
            binary: binary.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Ok(Some(status)) = backend.child.0.try_wait() {
                return Err(Error::Lane(format!(
                    "the backend exited ({status}) before listening; see {}",
                    backend.log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Lane(format!(
                    "the backend did not create {} within 20 s",
                    socket.display()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(backend)
    }

    /// The backend's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Replaces the backend by a new process of the same binary while the VM runs:
    /// `BINARY --upgrade-from CONTROL` (the running one was started with
    /// `--control-socket CONTROL`), logging to the same file. Done when the old process
    /// exited 0 while the new one runs and the old one's log names the new pid as the one that
    /// serves; from then on this `Backend` is the new process. When the new process exits
    /// first, the upgrade failed and the old process goes on serving (rollback): an error, and
    /// this `Backend` stays the old process.
    pub(crate) fn upgrade(&mut self, control: &Path) -> Result<Upgraded, String> {
        let old_pid = self.pid();
        let log = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let started = Instant::now();
        let new = Command::new(&self.binary)
            .arg("--upgrade-from")
            .arg(control)
            .env(
                "RUST_LOG",
                std::env::var("VM_LANES_BACKEND_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let mut new = KillOnDrop(new);
        let new_pid = new.0.id();
        loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                if !status.success() {
                    return Err(format!(
                        "the old backend (pid {old_pid}) exited with {status} during the upgrade; \
                         see {}",
                        self.log.display()
                    ));
                }
                break;
            }
            if let Ok(Some(status)) = new.0.try_wait() {
                return Err(format!(
                    "the new backend (pid {new_pid}) exited with {status}; pid {old_pid} serves \
                     on; see {}",
                    self.log.display()
                ));
            }
            if started.elapsed() > UPGRADE_LIMIT {
                return Err(format!(
                    "no handover within {} s (new process killed); see {}",
                    UPGRADE_LIMIT.as_secs(),
                    self.log.display()
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
        let took = started.elapsed();
        // The old process is reaped; from here on the new one is the backend.
        drop(std::mem::replace(&mut self.child, new));
        if let Ok(Some(status)) = self.child.0.try_wait() {
            return Err(format!(
                "the new backend (pid {new_pid}) exited with {status} right after taking over; \
                 see {}",
                self.log.display()
            ));
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if !log.contains(&format!("upgrade: pid {new_pid} serves now")) {
            return Err(format!(
                "the old backend exited 0 without naming pid {new_pid} as the one that serves; \
                 see {}",
                self.log.display()
            ));
        }
        Ok(Upgraded {
            old_pid,
            new_pid,
            took,
        })
    }

    /// Whether the backend crashed on its own (a clean exit after the frontend
    /// went away is fine). After live upgrades this is the process that serves now: the
    /// ones it replaced were checked to exit 0 by [`Backend::upgrade`].
    pub(crate) fn crashed(&mut self) -> Option<String> {
        match self.child.0.try_wait() {
            Ok(Some(status)) if !status.success() => Some(format!(
                "the backend exited with {status}; see {}",
                self.log.display()
            )),
            _ => None,
        }
    }
}

pub(crate) fn host_backend() -> Result<PathBuf, Error> {
    let built = step("build: vhost-user-gpu (host)", || {
        binaries::host(&["build", "-p", "vhost-user-gpu", "--bin", "vhost-user-gpu"])
    })?;
    Ok(binaries::find(&built, "vhost-user-gpu", false)?
        .path
        .clone())
}

/// QEMU 11.1's generic vhost-user device as a virtio-gpu (device id 16, two queues, the
/// 16-byte config space), on chardev `gpu`.
pub(crate) const QEMU11_GPU_DEVICE: &str =
    "vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=16,chardev=gpu";
/// QEMU's own `vhost-user-gpu-pci` (QEMU 10), on chardev `gpu`.
pub(crate) const QEMU10_GPU_DEVICE: &str = "vhost-user-gpu-pci,chardev=gpu";

/// QEMU arguments for a guest whose GPU is `device` on chardev `gpu`, connected to the
/// vhost-user backend at `socket`, with the shared guest memory vhost-user needs.
pub(crate) fn vhost_user_gpu_args(socket: &Path, device: &str) -> Vec<String> {
    let mut args = vhost_user_memory();
    args.extend([
        "-chardev".into(),
        format!("socket,id=gpu,path={}", socket.display()),
        "-device".into(),
        device.into(),
    ]);
    args
}

pub(crate) fn vhost_user_memory() -> Vec<String> {
    strings(&[
        "-m",
        "512M",
        "-object",
        "memory-backend-memfd,id=mem,size=512M,share=on",
        "-machine",
        "q35,memory-backend=mem",
    ])
}

/// Checks a PNG against the guest's KMS test pattern.
fn check_pattern_png(path: &Path) -> Outcome {
    match pattern::read_png(path) {
        Ok(image) => match pattern::check(&image) {
            Ok(()) => Outcome::Passed,
            Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
        },
        Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
    }
}

/// Runs `attempt` until it passes or `limit` has passed; returns the last outcome.
pub(crate) fn poll_outcome(limit: Duration, mut attempt: impl FnMut() -> Outcome) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        let outcome = attempt();
        if outcome == Outcome::Passed || Instant::now() >= deadline {
            return outcome;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The refusing policy: memfd buffers declared as needing SYNC, which the
/// guest policy must refuse to map.
const REFUSING_POLICY: &str = "\
[[exporter]]
name = \"memfd\"
cache = \"cached\"
needs_sync = \"yes\"
stable = true
";

fn blob_lane(env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    let qemu = env.qemu11()?;
    let guest_tests = env.guest_tests()?;
    let backend_bin = host_backend()?;
    let mut total = Tally::default();
    for (run, refuse) in [("blob-default", false), ("blob-refusing", true)] {
        let dir = lane_dir(run)?;
        let captures = dir.join("captures");
        fs::create_dir_all(&captures).map_err(|e| Error::io(&captures, e))?;
        let socket = dir.join("gpu.sock");
        // Cross-domain only, whatever renderer this host has: the guest checks the capsets
        // (3D is the render lane's).
        let mut extra = strings(&[
            "--allocator",
            "memfd",
            "--hostmem",
            "256M",
            "--capset",
            "cross-domain",
        ]);
        extra.push("--capture-dir".into());
        extra.push(captures.display().to_string());
        let control = dir.join("control.sock");
        if !refuse {
            extra.push("--control-socket".into());
            extra.push(control.display().to_string());
        }
        if refuse {
            let policy = dir.join("refuse.toml");
            fs::write(&policy, REFUSING_POLICY).map_err(|e| Error::io(&policy, e))?;
            extra.push("--policy-config".into());
            extra.push(policy.display().to_string());
        }
        let mut backend = Backend::start(&backend_bin, &dir, &socket, &extra)?;
        let policy_arg = if refuse { "refuse" } else { "allow" };
        let mut steps = vec![
            GuestStep::new(
                "guest-tests",
                &format!("/bin/guest-tests --expect-blob yes --map-policy {policy_arg} --hold-kms"),
            ),
            GuestStep::new("console", "/bin/guest-tests show-console"),
        ];
        if !refuse {
            steps.push(GuestStep::new(
                "lifecycle",
                "/bin/guest-tests lifecycle hold --expect-blob yes --rounds 3",
            ));
            steps.push(GuestStep::new(
                "upgrade",
                &format!("/bin/guest-tests lifecycle upgrade --rounds {UPGRADES}"),
            ));
        }
        let qmp_socket = dir.join("qmp.sock");
        let kernel = env.kernel()?;
        let initrd = dir.join("initramfs.cpio");
        write_initramfs(
            &initrd,
            kernel,
            &VIRTIO_GPU_MODULES,
            &[("guest-tests", &guest_tests)],
            &[],
            &steps,
        )?;
        let mut args = vhost_user_gpu_args(&socket, QEMU11_GPU_DEVICE);
        args.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp_socket.display()),
        ]);
        let boot = Boot {
            qemu: &qemu,
            dir: &dir,
            kernel: &kernel.image,
            initramfs: &initrd,
            extra: args,
            env: Vec::new(),
            timeout,
            allow_reboot: false,
        };
        let mut capture_outcome = None;
        let mut console_outcome = None;
        let mut pause = PauseDriver::new(
            &qmp_socket,
            Screen::Capture(captures.join("scanout-0.png")),
            &dir,
        );
        let mut upgrades = UpgradeDriver::new(&control, &captures.join("scanout-0.png"), &dir);
        let transcript = step(&format!("{run}: guest run"), || {
            boot.run(&mut |what| {
                if let Some(reply) = pause.hold(what) {
                    return reply;
                }
                if let Some(reply) = upgrades.hold(what, &mut backend) {
                    return reply;
                }
                if what.starts_with("kms-pattern") {
                    // The capture is written off the queue thread (at most every
                    // 200 ms): look again until it shows the pattern or 10 s pass.
                    let kept = dir.join("kms-pattern.png");
                    capture_outcome =
                        Some(poll_outcome(Duration::from_secs(10), || {
                            match fs::copy(captures.join("scanout-0.png"), &kept) {
                                Ok(_) => check_pattern_png(&kept),
                                Err(e) => Outcome::Failed(format!(
                                    "no scanout-0.png in {}: {e}",
                                    captures.display()
                                )),
                            }
                        }));
                } else if what.starts_with("console") {
                    let kept = dir.join("console.png");
                    console_outcome = Some(poll_outcome(Duration::from_secs(10), || {
                        let image = fs::copy(captures.join("scanout-0.png"), &kept)
                            .map_err(|e| e.to_string())
                            .and_then(|_| pattern::read_png(&kept).map_err(|e| e.to_string()));
                        match image {
                            // Text on the console: no longer the pattern, and the
                            // guest's lines, not just a cursor.
                            Ok(image)
                                if image.lit_rows() >= CONSOLE_TEXT_ROWS
                                    && pattern::check(&image).is_err() =>
                            {
                                Outcome::Passed
                            }
                            Ok(image) => Outcome::Failed(format!(
                                "{} shows no console text ({} lit pixel rows, want {CONSOLE_TEXT_ROWS})",
                                kept.display(),
                                image.lit_rows()
                            )),
                            Err(e) => Outcome::Failed(e),
                        }
                    }));
                }
                HoldReply::Continue
            })
        })?;
        let names: Vec<String> = steps
            .iter()
            .map(|s| s.name.clone())
            .chain(["modules".into()])
            .collect();
        let mut tally = tally_transcript(run, &transcript, &names);
        for (what, outcome) in pause.outcomes.drain(..) {
            host_case(&format!("{run}/host: pause {what}"), &mut tally, outcome);
        }
        if !refuse {
            host_case(
                &format!("{run}/host: the guest asked for {UPGRADES} live upgrades"),
                &mut tally,
                if upgrades.outcomes.len() == UPGRADES as usize + 1 {
                    Outcome::Passed
                } else {
                    Outcome::Failed(format!(
                        "{} upgrade holds (want {UPGRADES} and the console check)",
                        upgrades.outcomes.len()
                    ))
                },
            );
            if let Some(slowest) = upgrades.took.iter().max() {
                eprintln!(
                    "vm-lanes: {run}: {} upgrades, slowest {:.1} ms",
                    upgrades.took.len(),
                    slowest.as_secs_f64() * 1e3
                );
            }
        }
        for (what, outcome) in upgrades.outcomes.drain(..) {
            host_case(&format!("{run}/host: {what}"), &mut tally, outcome);
        }
        host_case(
            &format!("{run}/host: KMS pattern in the backend's PNG capture"),
            &mut tally,
            capture_outcome.unwrap_or(Outcome::Failed(
                "the guest never asked the host to look at the KMS pattern".into(),
            )),
        );
        host_case(
            &format!("{run}/host: console text in the backend's PNG capture (console.png)"),
            &mut tally,
            console_outcome.unwrap_or(Outcome::Failed(
                "the guest never asked the host to look at the console".into(),
            )),
        );
        host_case(
            &format!("{run}/host: backend survived the guest"),
            &mut tally,
            match backend.crashed() {
                Some(why) => Outcome::Failed(why),
                None => Outcome::Passed,
            },
        );
        println!("  {run}: {tally}");
        total.add(tally);
    }
    let reset = reset_run(
        "blob-reset",
        &qemu,
        env,
        timeout,
        &backend_bin,
        &["--allocator", "memfd", "--hostmem", "256M"],
        QEMU11_GPU_DEVICE,
        true,
    )?;
    total.add(reset);
    Ok(total)
}

/// A boot of its own that resets the VM twice (a guest reboot, then QMP `system_reset`,
/// [`crate::lifecycle`]) against a fresh backend, on a device line `device` (with
/// `chardev=gpu`).
#[allow(clippy::too_many_arguments)]
fn reset_run(
    run: &str,
    qemu: &Qemu,
    env: &mut Env,
    timeout: Duration,
    backend_bin: &Path,
    backend_args: &[&str],
    device: &str,
    blob: bool,
) -> Result<Tally, Error> {
    let dir = lane_dir(run)?;
    let captures = dir.join("captures");
    fs::create_dir_all(&captures).map_err(|e| Error::io(&captures, e))?;
    let socket = dir.join("gpu.sock");
    let qmp_socket = dir.join("qmp.sock");
    let mut extra = strings(backend_args);
    extra.push("--capture-dir".into());
    extra.push(captures.display().to_string());
    let mut backend = Backend::start(backend_bin, &dir, &socket, &extra)?;
    let guest_tests = env.guest_tests()?;
    let steps = vec![GuestStep::new(
        "lifecycle-reset",
        &format!(
            "/bin/guest-tests lifecycle reset --expect-blob {}",
            if blob { "yes" } else { "no" }
        ),
    )];
    let kernel = env.kernel()?;
    let initrd = dir.join("initramfs.cpio");
    write_initramfs(
        &initrd,
        kernel,
        &VIRTIO_GPU_MODULES,
        &[("guest-tests", &guest_tests)],
        &[],
        &steps,
    )?;
    let mut args = vhost_user_gpu_args(&socket, device);
    args.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ]);
    let boot = Boot {
        qemu,
        dir: &dir,
        kernel: &kernel.image,
        initramfs: &initrd,
        extra: args,
        env: Vec::new(),
        timeout,
        allow_reboot: true,
    };
    let screen = if blob {
        Screen::Capture(captures.join("scanout-0.png"))
    } else {
        Screen::Screendump
    };
    let mut driver = ResetDriver::new(&qmp_socket, screen, &dir);
    let transcript = step(&format!("{run}: guest run (3 boots)"), || {
        boot.run(&mut |what| driver.hold(what))
    })?;
    let mut tally = tally_transcript(
        run,
        &transcript,
        &["modules".into(), "lifecycle-reset".into()],
    );
    host_case(
        &format!("{run}/host: the guest booted {RESET_BOOTS} times (reboot, system_reset)"),
        &mut tally,
        if driver.boots() == RESET_BOOTS {
            Outcome::Passed
        } else {
            Outcome::Failed(format!("{} boots", driver.boots()))
        },
    );
    for (what, outcome) in driver.outcomes.drain(..) {
        host_case(&format!("{run}/host: {what}"), &mut tally, outcome);
    }
    let log = fs::read_to_string(&backend.log).unwrap_or_default();
    let freeing = log
        .lines()
        .filter(|l| l.contains("device reset (") && !l.contains(": 0 resources freed"))
        .count();
    host_case(
        &format!("{run}/host: the backend freed the device at both resets"),
        &mut tally,
        if freeing >= 2 {
            Outcome::Passed
        } else {
            Outcome::Failed(format!(
                "{freeing} resets that freed resources in {}",
                backend.log.display()
            ))
        },
    );
    host_case(
        &format!("{run}/host: backend survived the guest"),
        &mut tally,
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    println!("  {run}: {tally}");
    Ok(tally)
}

fn qemu10_lane(env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    let dir = lane_dir("qemu10")?;
    let qemu = env.qemu10()?;
    let guest_tests = env.guest_tests()?;
    let backend_bin = host_backend()?;
    let socket = dir.join("gpu.sock");
    let qmp_socket = dir.join("qmp.sock");
    let mut backend = Backend::start(
        &backend_bin,
        &dir,
        &socket,
        &strings(&["--allocator", "memfd", "--capset", "cross-domain"]),
    )?;
    let steps = vec![
        GuestStep::new(
            "guest-tests",
            "/bin/guest-tests --expect-blob no --map-policy allow --hold-kms",
        ),
        GuestStep::new("console", "/bin/guest-tests show-console"),
        GuestStep::new(
            "lifecycle",
            "/bin/guest-tests lifecycle hold --expect-blob no --rounds 3",
        ),
    ];
    let kernel = env.kernel()?;
    let initrd = dir.join("initramfs.cpio");
    write_initramfs(
        &initrd,
        kernel,
        &VIRTIO_GPU_MODULES,
        &[("guest-tests", &guest_tests)],
        &[],
        &steps,
    )?;
    let mut args = vhost_user_gpu_args(&socket, QEMU10_GPU_DEVICE);
    args.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ]);
    let boot = Boot {
        qemu: &qemu,
        dir: &dir,
        kernel: &kernel.image,
        initramfs: &initrd,
        extra: args,
        env: Vec::new(),
        timeout,
        allow_reboot: false,
    };
    let mut pattern_outcome = None;
    let mut console_outcome = None;
    let mut pause = PauseDriver::new(&qmp_socket, Screen::Screendump, &dir);
    let transcript = step("qemu10 lane: guest run", || {
        boot.run(&mut |what| {
            if let Some(reply) = pause.hold(what) {
                return reply;
            }
            let (file, slot) = if what.starts_with("kms-pattern") {
                (dir.join("screendump-kms.png"), &mut pattern_outcome)
            } else if what.starts_with("console") {
                (dir.join("screendump-console.png"), &mut console_outcome)
            } else {
                return HoldReply::Continue;
            };
            let is_pattern = what.starts_with("kms-pattern");
            let check = |file: &Path| -> Outcome {
                if is_pattern {
                    return check_pattern_png(file);
                }
                match pattern::read_png(file) {
                    Ok(image) if image.lit_rows() >= CONSOLE_TEXT_ROWS => Outcome::Passed,
                    Ok(image) => Outcome::Failed(format!(
                        "{} shows no console text ({} lit pixel rows, want {CONSOLE_TEXT_ROWS})",
                        file.display(),
                        image.lit_rows()
                    )),
                    Err(e) => Outcome::Failed(format!("{}: {e}", file.display())),
                }
            };
            // The display update reaches QEMU asynchronously (backend -> QEMU
            // display socket -> main loop): look again until it shows or 10 s pass.
            *slot = Some(poll_outcome(
                Duration::from_secs(10),
                || match Qmp::connect(&qmp_socket).and_then(|mut q| q.screendump_png(&file)) {
                    Err(e) => Outcome::Failed(format!("QMP screendump: {e}")),
                    Ok(()) => check(&file),
                },
            ));
            HoldReply::Continue
        })
    })?;
    let names: Vec<String> = steps
        .iter()
        .map(|s| s.name.clone())
        .chain(["modules".into()])
        .collect();
    let mut tally = tally_transcript("qemu10", &transcript, &names);
    for (what, outcome) in pause.outcomes.drain(..) {
        host_case(&format!("qemu10/host: pause {what}"), &mut tally, outcome);
    }
    host_case(
        "qemu10/host: screendump shows the KMS pattern",
        &mut tally,
        pattern_outcome.unwrap_or(Outcome::Failed(
            "the guest never asked for the KMS screendump".into(),
        )),
    );
    host_case(
        "qemu10/host: screendump shows the guest console",
        &mut tally,
        console_outcome.unwrap_or(Outcome::Failed(
            "the guest never asked for the console screendump".into(),
        )),
    );
    host_case(
        "qemu10/host: backend survived the guest",
        &mut tally,
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    println!("  qemu10: {tally}");
    let reset = reset_run(
        "qemu10-reset",
        &qemu,
        env,
        timeout,
        &backend_bin,
        &["--allocator", "memfd"],
        QEMU10_GPU_DEVICE,
        false,
    )?;
    tally.add(reset);
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(lines: &[&str], finished: bool) -> Transcript {
        Transcript {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            finished,
        }
    }

    #[test]
    fn summaries_are_counted_per_step() {
        let t = transcript(
            &[
                "@@VMLANE step a",
                "ok x",
                "2 passed, 0 failed, 1 skipped",
                "@@VMLANE end a rc=0",
                "@@VMLANE step b",
                "\u{1b}[32mtest result: \u{1b}[0mok. 3 passed; 0 failed; 2 ignored; 0 measured",
                "@@VMLANE end b rc=0",
                "@@VMLANE done",
            ],
            true,
        );
        let tally = tally_transcript("t", &t, &["a".into(), "b".into()]);
        assert_eq!(
            tally,
            Tally {
                passed: 5,
                failed: 0,
                skipped: 3
            }
        );
    }

    #[test]
    fn silent_crashed_missing_and_unfinished_steps_fail() {
        let t = transcript(
            &[
                "@@VMLANE step silent",
                "@@VMLANE end silent rc=0",
                "@@VMLANE step crashed",
                "1 passed, 0 failed, 0 skipped",
                "@@VMLANE end crashed rc=139",
                "@@VMLANE step hung",
            ],
            false,
        );
        let names = ["silent", "crashed", "hung", "missing"].map(String::from);
        let tally = tally_transcript("t", &t, &names);
        // silent + crashed + hung + missing + not finished.
        assert_eq!(tally.failed, 5);
        assert_eq!(tally.passed, 1);
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[31mFAILED\u{1b}[0m x"), "FAILED x");
    }
}
