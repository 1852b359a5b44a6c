//! The `dmabuf-info` binary: table and `--json` on a memfd it inherits as fd 3, `--pid` on a
//! child that holds a memfd, exit codes.

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
        .output()
        .expect("run dmabuf-info")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DMABUF_INFO_CONFIG")
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
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
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
    // A regular file and a directory, by path.
    let f = tempfile::NamedTempFile::new().unwrap();
    let o = run(&["inspect", f.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("a regular file"), "{}", stderr(&o));
    let o = run(&["inspect", "--json", "/"]);
    assert_eq!(o.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not-a-buffer");
    assert_eq!(v["error"]["what"], "a directory");
    // Missing path, missing process.
    assert_eq!(run(&["inspect", "/nonexistent/x"]).status.code(), Some(3));
    assert_eq!(
        run(&["inspect", "--pid", "2147483646"]).status.code(),
        Some(3)
    );
    // Usage errors.
    assert_eq!(run(&["inspect"]).status.code(), Some(1));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(1));
    assert_eq!(
        run(&["platform", "--platform", "vax"]).status.code(),
        Some(1)
    );
    assert_eq!(
        run(&["platform", "--config", "/nonexistent.toml"])
            .status
            .code(),
        Some(1)
    );
    // --help documents them.
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for code in [
        "0  success",
        "1  usage",
        "2  the descriptor",
        "3  operating-system",
        "4  permission",
        "5  inspected",
    ] {
        assert!(help.contains(code), "{code} missing from --help");
    }
}

#[test]
fn pipe_inherited_as_fd3_is_named() {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    rustix::io::fcntl_setfd(&r, FdFlags::empty()).unwrap();
    let o = run_with_fd3(&r, &["inspect", "--fd", "3"]);
    assert_eq!(o.status.code(), Some(2));
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
