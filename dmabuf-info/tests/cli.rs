//! The `dmabuf-info` binary: table and `--json` on a memfd it inherits as fd 3, `--pid` on a
//! child that holds a memfd, exit codes, usage errors, `--help`, drop-in quirk directories.
//! Every run sets `DMABUF_INFO_QUIRKS_DIRS` so that the host's own quirk files play no part.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};

use rustix::fs::MemfdFlags;
use rustix::io::FdFlags;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dmabuf-info");

/// A memfd without CLOEXEC, so that children inherit it.
fn inheritable_memfd(name: &str, len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::io::fcntl_setfd(&fd, FdFlags::empty()).unwrap();
    fd
}

/// Runs the binary with `fd` duplicated onto descriptor 3 (bash does the dup2).
fn run_with_fd3(fd: &OwnedFd, args: &[&str]) -> Output {
    let script = format!("exec \"$0\" \"$@\" 3<&{}", fd.as_raw_fd());
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .args(args)
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", "")
        .output()
        .expect("run dmabuf-info")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", "")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn table_on_inherited_memfd() {
    let fd = inheritable_memfd("cli-frame", 3 * 4096);
    let o = run_with_fd3(&fd, &["inspect", "--fd", "3", "--platform", "x86-intel"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.starts_with("fd 3: memfd \"cli-frame\""), "{out}");
    assert!(out.contains("12288 bytes"), "{out}");
    let cache_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("cache"))
        .unwrap();
    assert!(
        cache_line.contains("cached") && cache_line.contains("source: memfd"),
        "{cache_line}"
    );
    assert!(out.contains("allow, map_info CACHED (1)"), "{out}");
    assert!(out.contains("[platform x86-intel]"), "{out}");
}

#[test]
fn json_on_inherited_memfd() {
    let fd = inheritable_memfd("cli-json", 4096);
    let o = run_with_fd3(
        &fd,
        &["inspect", "--fd", "3", "--json", "--platform", "arm64-fwb"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["platform"], "arm64-fwb");
    let b = &v["buffers"][0];
    assert_eq!(b["fd"], 3);
    assert_eq!(b["kind"], "memfd");
    assert_eq!(b["exporter"], "memfd");
    assert_eq!(b["name"], "cli-json");
    assert_eq!(b["size"], 4096);
    let ino = rustix::fs::fstat(&fd).unwrap().st_ino;
    assert_eq!(b["inode"], ino);
    assert_eq!(b["cache"]["value"], "cached");
    assert_eq!(b["cache"]["source"], "memfd");
    assert_eq!(b["needs_sync"]["value"], "no");
    assert_eq!(b["stable"]["value"], true);
    assert_eq!(b["kernel_ioctl"]["status"], "not-asked");
    assert_eq!(b["decision"]["allow"], true);
    assert_eq!(b["decision"]["map_info"], 1);
}

#[test]
fn config_quirk_makes_memfd_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("quirks.toml");
    std::fs::write(
        &cfg,
        "platform = \"x86-amd\"\n[[exporter]]\nname = \"memfd\"\nneeds_sync = \"yes\"\nnote = \"test\"\n",
    )
    .unwrap();
    let fd = inheritable_memfd("cli-refused", 4096);
    let o = run_with_fd3(
        &fd,
        &[
            "inspect",
            "--fd",
            "3",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(5),
        "refused buffers exit 5: {}",
        stderr(&o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["platform"], "x86-amd");
    let b = &v["buffers"][0];
    assert_eq!(b["needs_sync"]["source"], "config quirk \"memfd\"");
    assert_eq!(b["decision"]["allow"], false);
    assert_eq!(b["decision"]["reason"], "needs-sync");
    // The same through the environment variable.
    let script = format!("exec \"$0\" inspect --fd 3 3<&{}", fd.as_raw_fd());
    let o = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .env("DMABUF_INFO_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert!(
        stdout(&o).contains("refuse: CPU access needs DMA_BUF_IOCTL_SYNC"),
        "{}",
        stdout(&o)
    );
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child_holding(fd: &OwnedFd) -> KillOnDrop {
    // The memfd has no CLOEXEC: `sleep` inherits it at the same number.
    let _ = fd;
    KillOnDrop(
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn pid_lists_the_memfd_of_a_child() {
    let fd = inheritable_memfd("held-by-child", 2 * 4096);
    let child = child_holding(&fd);
    let pid = child.0.id().to_string();
    let o = run(&[
        "inspect",
        "--pid",
        &pid,
        "--json",
        "--platform",
        "x86-intel",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pid"], child.0.id());
    let bufs = v["buffers"].as_array().unwrap();
    let b = bufs
        .iter()
        .find(|b| b["name"] == "held-by-child")
        .unwrap_or_else(|| panic!("memfd not listed: {v}"));
    assert_eq!(b["fd"], fd.as_raw_fd());
    assert_eq!(b["size"], 8192);
    assert_eq!(b["decision"]["allow"], true);
    // Non-buffers (stdin = /dev/null, pipes) are not listed.
    assert!(bufs
        .iter()
        .all(|b| b["kind"] == "memfd" || b["kind"] == "dma-buf"));

    // The table form, and --fd to pick one descriptor.
    let n = fd.as_raw_fd().to_string();
    let o = run(&["inspect", "--pid", &pid, "--fd", &n]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("pid {pid} fd {n}: memfd \"held-by-child\"")),
        "{out}"
    );
    // The /proc path form goes through pidfd_getfd too (dma-bufs cannot be reopened).
    let o = run(&["inspect", &format!("/proc/{pid}/fd/{n}")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with(&format!("pid {pid} fd {n}: memfd")),
        "{}",
        stdout(&o)
    );
    // --fd of the child that is not a buffer: its stdin is /dev/null.
    let o = run(&["inspect", "--pid", &pid, "--fd", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("character device"), "{}", stderr(&o));
}

#[test]
fn pid_without_permission_exits_4() {
    let fd = inheritable_memfd("private", 4096);
    let child = child_holding(&fd);
    let pid = child.0.id().to_string();
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run the CLI as another user");
        return;
    }
    let n = fd.as_raw_fd().to_string();
    for args in [
        vec!["inspect", "--pid", &pid],
        vec!["inspect", "--pid", &pid, "--fd", &n],
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    }
}

#[test]
fn exit_codes() {
    // Not open in the child (Rust spawns children with only 0, 1, 2).
    let o = run(&["inspect", "--fd", "9"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("not an open file descriptor"),
        "{}",
        stderr(&o)
    );
    // A regular file and a directory, by path: not a buffer.
    let f = tempfile::NamedTempFile::new().unwrap();
    let o = run(&["inspect", f.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("a regular file"), "{}", stderr(&o));
    let o = run(&["inspect", "--json", "/"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not-a-buffer");
    assert_eq!(v["error"]["what"], "a directory");
    assert_eq!(v["buffers"], serde_json::json!([]));
    // Missing path, missing process.
    assert_eq!(run(&["inspect", "/nonexistent/x"]).status.code(), Some(3));
    assert_eq!(
        run(&["inspect", "--pid", "2147483646"]).status.code(),
        Some(3)
    );
}

/// Usage errors, from clap or from a configuration the user named, exit 2 and say what is
/// wrong on stderr, with nothing on stdout.
#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "platfrom = \"x86-amd\"\n").unwrap();
    let bad = bad.to_str().unwrap();
    for (args, needle) in [
        (&["inspect"][..], "required"),
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&[][..], "Usage"),
        (&["platform", "--platform", "vax"], "possible values"),
        (&["platform", "--devices", "some"], "possible values"),
        (&["inspect", "--pid", "0"], "0 is not in 1.."),
        (&["inspect", "--fd", "-1"], "--fd"),
        (&["inspect", "--fd", "three"], "invalid digit"),
        (
            &["inspect", "--fd", "3", "/dev/null"],
            "cannot be used with",
        ),
        (
            &["platform", "--config", "/nonexistent.toml"],
            "cannot read",
        ),
        (&["platform", "--config", bad], "unknown field `platfrom`"),
        (
            &["--json", "inspect", "--fd", "3", "--config", bad],
            "platfrom",
        ),
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
}

/// `--help` names every option's accepted values and every exit status.
#[test]
fn help_lists_accepted_values_and_exit_codes() {
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for p in dmabuf_info::Platform::ALL {
        assert!(
            help.contains(&format!("- {}:", p.as_str())),
            "{p} missing: {help}"
        );
    }
    for d in dmabuf_info::DeviceAccess::ALL {
        assert!(
            help.contains(&format!("- {}:", d.as_str())),
            "{d} missing: {help}"
        );
    }
    for code in [
        "0  success",
        "1  the descriptor",
        "2  usage",
        "3  operating-system",
        "4  permission",
        "5  inspected",
    ] {
        assert!(help.contains(code), "{code} missing from --help");
    }
    let o = run(&["inspect", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for needle in [
        "--fd <N>",
        "(0 or more)",
        "--pid <PID>",
        "(1 or more)",
        "--drm <PATH>",
        "/dev/dri/renderD128",
        "[PATH]",
        "/proc/PID/fd/N",
        "--config <FILE>",
        "--platform <NAME>",
        "--devices <ACCESS>",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from inspect --help: {help}"
        );
    }
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        format!("dmabuf-info {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Drop-in quirk files: the /etc directory replaces the vendor file of the same name, a file
/// with an unknown key or a newer schema is skipped with a warning naming file and key, and the
/// rest still applies.
#[test]
fn quirk_directories() {
    let root = tempfile::tempdir().unwrap();
    let vendor = root.path().join("usr-share");
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&vendor).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let write = |dir: &std::path::Path, name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap()
    };
    // Vendor: memfds need SYNC (10-), platform arm64 (20-); both replaced or kept below.
    write(
        &vendor,
        "10-memfd.toml",
        "schema = 1\n[[exporter]]\nname = \"memfd\"\nneeds_sync = \"yes\"\n",
    );
    write(
        &vendor,
        "20-platform.toml",
        "schema = 1\nplatform = \"arm64\"\n",
    );
    write(&vendor, "README", "not a .toml file: ignored\n");
    // /etc: replaces 10-memfd.toml (memfds are written cached by the quirk, still coherent).
    write(
        &etc,
        "10-memfd.toml",
        "[[exporter]]\nname = \"memfd\"\nstable = true\nnote = \"admin\"\n",
    );
    // Broken files: skipped, reported, never fatal.
    write(
        &etc,
        "30-typo.toml",
        "schema = 1\ndevices = \"cpu-only\"\nplatfrom = \"x86-amd\"\n",
    );
    write(
        &etc,
        "40-future.toml",
        "schema = 2\nplatform = \"x86-amd\"\n",
    );

    let fd = inheritable_memfd("quirked", 4096);
    let script = format!("exec \"$0\" \"$@\" 3<&{}", fd.as_raw_fd());
    let dirs = format!("{}:{}", vendor.display(), etc.display());
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .arg(BIN)
        .args(["--json", "inspect", "--fd", "3"])
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", &dirs)
        .output()
        .unwrap();
    let err = stderr(&o);
    // Allowed: the vendor's "needs SYNC" was replaced by the admin's file.
    assert_eq!(o.status.code(), Some(0), "{err}{}", stdout(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["platform"], "arm64",
        "the vendor's 20-platform.toml applies"
    );
    assert_eq!(
        v["devices"], "non-coherent",
        "30-typo.toml was skipped whole"
    );
    let b = &v["buffers"][0];
    assert_eq!(b["needs_sync"]["source"], "memfd");
    assert_eq!(b["stable"]["source"], "config quirk \"memfd\"");
    let typo = etc.join("30-typo.toml").display().to_string();
    let future = etc.join("40-future.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "warning: {typo}: line 3: unknown field `platfrom`"
        )),
        "{err}"
    );
    assert!(err.contains("file skipped"), "{err}");
    assert!(
        err.contains(&format!("warning: {future}: schema = 2")),
        "{err}"
    );
    let warnings = v["config_warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0]["path"], typo.as_str());
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("platfrom"),
        "{warnings:?}"
    );

    // An empty file in /etc masks the vendor file of the same name.
    write(&etc, "20-platform.toml", "");
    let o = Command::new(BIN)
        .args(["--json", "platform"])
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", &dirs)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["how"], "detected", "masked: {v}");

    // $DMABUF_INFO_CONFIG names one file, read strictly: the broken one is an error.
    let o = Command::new(BIN)
        .args(["platform"])
        .env("DMABUF_INFO_CONFIG", etc.join("30-typo.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("platfrom"), "{}", stderr(&o));
}

#[test]
fn pipe_inherited_as_fd3_is_named() {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    rustix::io::fcntl_setfd(&r, FdFlags::empty()).unwrap();
    let o = run_with_fd3(&r, &["inspect", "--fd", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("descriptor is a pipe"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn platform_command_prints_the_decision_table() {
    let o = run(&["platform", "--json", "--platform", "x86-intel"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["platform"], "x86-intel");
    assert_eq!(v["how"], "configured");
    let rows = v["decisions"].as_array().unwrap();
    assert_eq!(rows.len(), 4 * 3 * 2);
    let allowed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["decision"]["allow"] == true)
        .collect();
    // On x86-intel (guest PAT ignored) only cached, coherent, stable buffers are mapped.
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["cache"], "cached");
    let o = run(&["platform", "--platform", "x86-amd"]);
    let out = stdout(&o);
    assert!(out.starts_with("platform: x86-amd (configured"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("write-combined") && l.contains("allow, map_info WC (3)")),
        "{out}"
    );
    // Detected platform without override.
    let o = run(&["platform", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["how"], "detected");
    assert_eq!(v["platform"], v["detected"]);
}
