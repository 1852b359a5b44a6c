//! The sandbox refuses what is not on its lists: a child process (this test binary run
//! again) confines itself with the backend's own `sandbox::confine` and then tries things
//! the backend never needs. The parent observes the outcome: file accesses outside the
//! Landlock rules fail with `EACCES`, `clone3` answers `ENOSYS`, and a forbidden system call
//! (`socket`) kills the process by `SIGSYS` after one diagnosis line on stderr, also when it
//! is made by a thread that existed before the filter was installed (TSYNC).
//!
//! Its one `unsafe`: the raw `clone3` call with a null argument block (no wrapper issues
//! that call as it is).
#![allow(unsafe_code)]

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;

use rustix::net::{AddressFamily, SocketType};
use std::path::PathBuf;
use std::process::Command;

use vhost_user_gpu::sandbox::{self, LandlockOutcome, SandboxPolicy};

const CHILD_ENV: &str = "VUG_SANDBOX_TEST_CHILD";
const DIR_ENV: &str = "VUG_SANDBOX_TEST_DIR";

/// The child's part: confine, probe, then make the forbidden call `mode` says.
fn child(mode: &str) -> ! {
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let mut out = std::io::stdout().lock();
    // A thread that exists before the sandbox: TSYNC must filter it too.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let early = std::thread::spawn(move || {
        rx.recv().unwrap();
        let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None);
        println!("early thread: socket returned {fd:?}");
    });
    let wayland = mode == "wayland";
    // With Wayland channels: a compositor socket to connect to (made before the sandbox).
    let compositor = wayland.then(|| {
        let path = dir.join("wayland-0");
        let l = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&l, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&l, 4).unwrap();
        (l, path)
    });
    let policy = SandboxPolicy {
        write_dirs: vec![dir.clone()],
        devices: Vec::new(),
        gbm: false,
        wayland,
    };
    let status = sandbox::confine(&policy).expect("confine");
    writeln!(out, "landlock={:?}", status.landlock).unwrap();
    let proc_status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp = proc_status
        .lines()
        .find(|l| l.starts_with("Seccomp:"))
        .unwrap_or("Seccomp: ?");
    writeln!(
        out,
        "{}",
        seccomp.split_whitespace().collect::<Vec<_>>().join(" ")
    )
    .unwrap();
    let outside = std::fs::read("/etc/passwd")
        .map(|_| ())
        .map_err(|e| e.raw_os_error());
    writeln!(out, "read /etc/passwd: {outside:?}").unwrap();
    let inside = std::fs::write(dir.join("tmp.png"), b"x")
        .and_then(|()| std::fs::rename(dir.join("tmp.png"), dir.join("final.png")));
    writeln!(
        out,
        "write+rename in the write dir: {:?}",
        inside.map_err(|e| e.raw_os_error())
    )
    .unwrap();
    // A thread started after the sandbox works (clone with CLONE_THREAD, after clone3's
    // ENOSYS).
    let late = std::thread::spawn(|| 7).join().unwrap();
    writeln!(out, "late thread: {late}").unwrap();
    // SAFETY: clone3 with a null argument block: the filter answers before the kernel
    // would read it (and without a filter the kernel answers EFAULT/EINVAL).
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    writeln!(
        out,
        "clone3: {r} errno {:?}",
        std::io::Error::last_os_error().raw_os_error()
    )
    .unwrap();
    out.flush().unwrap();
    drop(out);
    if let Some((_listener, path)) = &compositor {
        // What a channel does: an AF_UNIX stream socket, connect, a pipe.
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let connected =
            rustix::net::connect(&sock, &rustix::net::SocketAddrUnix::new(path).unwrap());
        println!("wayland connect: {connected:?}");
        let pipe = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map(drop);
        println!("wayland pipe2: {pipe:?}");
        // Any other socket is still refused: an AF_UNIX datagram socket here.
        let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::DGRAM, None);
        println!("main thread: socket returned {fd:?}");
        std::process::exit(0)
    }
    match mode {
        "main" => {
            let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None);
            println!("main thread: socket returned {fd:?}");
        }
        _ => {
            tx.send(()).unwrap();
            early.join().unwrap();
        }
    }
    std::process::exit(0)
}

fn run_child(mode: &str) -> (std::process::ExitStatus, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "forbidden_syscall_kills_with_a_diagnosis",
            "--nocapture",
        ])
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir.path())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

fn check(mode: &str) {
    let (status, stdout, stderr, dir) = run_child(mode);
    let ctx = format!("mode {mode}: status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{ctx}");
    assert!(
        stderr.contains(&format!(
            "system call socket ({}) is not on the seccomp allowlist",
            libc::SYS_socket
        )),
        "{ctx}"
    );
    assert!(!stdout.contains("socket returned"), "{ctx}");
    assert!(stdout.contains("Seccomp: 2"), "{ctx}");
    assert!(stdout.contains("late thread: 7"), "{ctx}");
    assert!(
        stdout.contains(&format!("clone3: -1 errno Some({})", libc::ENOSYS)),
        "{ctx}"
    );
    assert!(
        stdout.contains("write+rename in the write dir: Ok(())"),
        "{ctx}"
    );
    assert!(dir.path().join("final.png").exists(), "{ctx}");
    // Landlock is optional (kernel config); when it is enforced, outside paths are refused.
    if stdout.contains(&format!("landlock={:?}", LandlockOutcome::FullyEnforced)) {
        assert!(
            stdout.contains(&format!("read /etc/passwd: Err(Some({}))", libc::EACCES)),
            "{ctx}"
        );
    } else {
        eprintln!("Landlock not fully enforced by this kernel: {stdout}");
    }
}

#[test]
fn forbidden_syscall_kills_with_a_diagnosis() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode);
    }
    check("main");
}

#[test]
fn forbidden_syscall_in_a_thread_started_before_the_filter() {
    check("early-thread");
}

#[test]
fn wayland_channels_get_unix_stream_sockets_and_pipes_only() {
    let (status, stdout, stderr, _dir) = run_child("wayland");
    let ctx = format!("status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("wayland connect: Ok(())"), "{ctx}");
    assert!(stdout.contains("wayland pipe2: Ok(())"), "{ctx}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{ctx}");
    assert!(stderr.contains("system call socket"), "{ctx}");
    assert!(!stdout.contains("socket returned"), "{ctx}");
}
