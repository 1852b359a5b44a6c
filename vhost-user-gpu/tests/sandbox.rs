//! The sandbox refuses what is not on its lists: a child process (this test binary run
//! again) confines itself with the backend's own `sandbox::confine` and then tries things
//! the backend never needs. The parent observes the outcome: file accesses outside the
//! Landlock rules fail with `EACCES`, `clone3` answers `ENOSYS`, and a forbidden system call
//! (`socket`) kills the process by `SIGSYS` after one diagnosis line on stderr, also when it
//! is made by a thread that existed before the filter was installed (TSYNC). Without
//! Landlock (`Landlock::Off`, the backend's `--sandbox seccomp-only`), creating, removing
//! and writing files fail with `EACCES` from the filter itself.
//!
//! Its one `unsafe`: the raw `clone3` call with a null argument block (no wrapper issues
//! that call as it is).
#![allow(unsafe_code)]

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;

use rustix::net::{AddressFamily, SocketType};
use std::path::PathBuf;
use std::process::Command;

use vhost_user_gpu::sandbox::{self, Landlock, LandlockOutcome, SandboxError, SandboxPolicy};

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
    let seccomp_only = mode == "seccomp-only";
    let policy = SandboxPolicy {
        write_dirs: if seccomp_only {
            Vec::new()
        } else {
            vec![dir.clone()]
        },
        wayland,
        landlock: if seccomp_only {
            Landlock::Off
        } else {
            Landlock::Required
        },
        ..SandboxPolicy::default()
    };
    let status = match sandbox::confine(&policy) {
        Ok(status) => status,
        Err(SandboxError::LandlockUnavailable) => {
            // The backend refuses to start on such a kernel; nothing more to probe here.
            writeln!(out, "landlock=unavailable: refused").unwrap();
            std::process::exit(0)
        }
        Err(e) => panic!("confine: {e}"),
    };
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
    // Removing and renaming a file that exists (made by the parent).
    let removed = std::fs::remove_file(dir.join("existing")).map_err(|e| e.raw_os_error());
    writeln!(out, "remove an existing file: {removed:?}").unwrap();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("existing"))
        .map(|_| ())
        .map_err(|e| e.raw_os_error());
    writeln!(out, "open an existing file for writing: {written:?}").unwrap();
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
    std::fs::write(dir.path().join("existing"), b"keep").unwrap();
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
    if stdout.contains("landlock=unavailable: refused") {
        // A kernel without Landlock: confine() refused, as the backend does at start-up.
        // The filter itself is checked by the seccomp-only mode.
        assert!(status.success(), "{ctx}");
        eprintln!("Landlock not available: the refusal was checked, the probes were not");
        return;
    }
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
    if mode == "seccomp-only" {
        // No Landlock: reading anything is allowed, but no file is created, removed or
        // opened for writing: the filter answers EACCES, as Landlock would.
        let eacces = format!("Err(Some({}))", libc::EACCES);
        assert!(stdout.contains("read /etc/passwd: Ok(())"), "{ctx}");
        for probe in [
            "write+rename in the write dir",
            "remove an existing file",
            "open an existing file for writing",
        ] {
            assert!(stdout.contains(&format!("{probe}: {eacces}")), "{ctx}");
        }
        assert!(!dir.path().join("final.png").exists(), "{ctx}");
        assert!(dir.path().join("existing").exists(), "{ctx}");
        return;
    }
    assert!(
        stdout.contains("write+rename in the write dir: Ok(())"),
        "{ctx}"
    );
    assert!(dir.path().join("final.png").exists(), "{ctx}");
    assert!(stdout.contains("remove an existing file: Ok(())"), "{ctx}");
    // Landlock's ABI may be older than the policy: outside paths are refused either way.
    assert!(
        stdout.contains(&format!("landlock={:?}", LandlockOutcome::FullyEnforced))
            || stdout.contains(&format!(
                "landlock={:?}",
                LandlockOutcome::PartiallyEnforced
            )),
        "{ctx}"
    );
    assert!(
        stdout.contains(&format!("read /etc/passwd: Err(Some({}))", libc::EACCES)),
        "{ctx}"
    );
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
    if stdout.contains("landlock=unavailable: refused") {
        assert!(status.success(), "{ctx}");
        eprintln!("Landlock not available: the refusal was checked, the probes were not");
        return;
    }
    assert!(stdout.contains("wayland connect: Ok(())"), "{ctx}");
    assert!(stdout.contains("wayland pipe2: Ok(())"), "{ctx}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{ctx}");
    assert!(stderr.contains("system call socket"), "{ctx}");
    assert!(!stdout.contains("socket returned"), "{ctx}");
}

#[test]
fn without_landlock_no_file_is_created_removed_or_written() {
    check("seccomp-only");
}
