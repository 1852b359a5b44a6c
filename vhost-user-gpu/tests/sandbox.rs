//! The sandbox refuses what is not on its lists: a child process (this test binary run
//! again) confines itself with the backend's own `sandbox::confine` and then tries things
//! the backend never needs. The parent observes the outcome: file accesses outside the
//! Landlock rules fail with `EACCES`, `clone3` answers `ENOSYS`, and a forbidden system call
//! (`socket`) kills the process by `SIGSYS` after one diagnosis line on stderr, also when it
//! is made by a thread that existed before the filter was installed (TSYNC). Without
//! Landlock (`Landlock::Off`, the backend's `--sandbox seccomp-only`), creating, removing
//! and writing files fail with `EACCES` from the filter itself.
//!
//! Both profiles: without a 3D capset the minimal one (an executable mapping ends the
//! process), with a renderer the 3D one (code compiled at run time runs, the renderer's
//! thread reads Mesa's files, the main thread does not, `kill` outside the render server
//! still ends the process). And the real backend: `--capset cross-domain` confines itself
//! with the minimal profile, `--capset virgl` with the 3D profile under which a virgl
//! context really draws through shaders llvmpipe compiles, its fences complete, and the
//! backend exits cleanly at the end (the renderer's shutdown is in the profile too). With
//! the renderer in a render worker (`--renderer-isolation process`, the default) the backend
//! keeps the minimal profile (plus waiting for and killing its worker) and the worker, a
//! filtered process of its own, runs the 3D one; with `thread` the backend runs the 3D one.
//!
//! Its `unsafe`: the raw `clone3` call with a null argument block (no wrapper issues that
//! call as it is), and the run-time code of the 3D profile's probe.
#![allow(unsafe_code)]

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;

use rustix::net::{AddressFamily, SocketType};
use std::path::PathBuf;
use std::process::Command;

use vug_conformance::gpu::{self, ty, Box3d, MemEntry};
use vug_conformance::{virgl, BackendSpec, Frontend, Peer};

use vhost_user_gpu::sandbox::{
    self, Landlock, LandlockOutcome, RendererNeeds, SandboxError, SandboxPolicy,
};

const CHILD_ENV: &str = "VUG_SANDBOX_TEST_CHILD";
const DIR_ENV: &str = "VUG_SANDBOX_TEST_DIR";

/// Maps a page, writes `mov eax, 42; ret` into it and runs it (x86_64; elsewhere only the
/// mapping and protection changes): what llvmpipe does with every shader it compiles.
/// Returns what the code returned, or why it could not.
fn jit() -> Result<i32, String> {
    let len = 4096;
    // SAFETY: an anonymous private mapping at an address the kernel chooses; nothing else
    // refers to it.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let code: [u8; 6] = [0xb8, 42, 0, 0, 0, 0xc3];
    // SAFETY: `page` is a fresh writable mapping of `len` >= 6 bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), code.len()) };
    // SAFETY: changes the protection of our own mapping only.
    if unsafe { libc::mprotect(page, len, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
    }
    #[cfg(target_arch = "x86_64")]
    let result = {
        // SAFETY: the page holds a complete x86_64 function (`mov eax, 42; ret`) with the C
        // calling convention, and is executable now.
        let f: extern "C" fn() -> i32 = unsafe { std::mem::transmute(page) };
        f()
    };
    #[cfg(not(target_arch = "x86_64"))]
    let result = 42;
    // SAFETY: unmaps the page mapped above, no longer used.
    unsafe { libc::munmap(page, len) };
    Ok(result)
}

/// The child of the profile tests: `minimal-exec` (the minimal profile: an executable
/// mapping is refused) and `renderer` (the 3D profile: the renderer's thread reads Mesa's
/// files and compiles code; the main thread keeps the minimal files; a system call outside
/// the 3D list still kills).
fn child_profile(mode: &str) -> ! {
    let mut out = std::io::stdout().lock();
    let read = |path: &str| {
        std::fs::read(path)
            .map(|_| ())
            .map_err(|e| e.raw_os_error())
    };
    // A file under /usr/lib every Debian system has.
    let lib_file = "/usr/lib/os-release";
    let renderer = (mode == "renderer").then(|| RendererNeeds {
        render_server: None,
        render_nodes: Vec::new(),
        library_dirs: Vec::new(),
        // virgl only: the Vulkan loader's manifests stay closed.
        venus: false,
    });
    if let Some(needs) = &renderer {
        // The renderer's thread confines itself before the main thread does (as the
        // backend's renderer thread does before it loads Mesa).
        let needs = needs.clone();
        let probes = std::thread::spawn(move || {
            let outcome = sandbox::confine_renderer_thread(&needs, Landlock::Required);
            let vulkan = std::fs::read_dir("/usr/share/vulkan")
                .map(drop)
                .map_err(|e| e.raw_os_error());
            (
                outcome.map_err(|e| e.to_string()),
                read(lib_file),
                read("/etc/passwd"),
                vulkan,
            )
        })
        .join()
        .unwrap();
        match probes.0 {
            Err(e) if e.contains("does not enforce Landlock") => {
                writeln!(out, "landlock=unavailable: refused").unwrap();
                std::process::exit(0)
            }
            Err(e) => panic!("confine_renderer_thread: {e}"),
            Ok(_) => {}
        }
        writeln!(out, "renderer thread: read {lib_file}: {:?}", probes.1).unwrap();
        writeln!(out, "renderer thread: read /etc/passwd: {:?}", probes.2).unwrap();
        writeln!(
            out,
            "renderer thread: list /usr/share/vulkan: {:?}",
            probes.3
        )
        .unwrap();
    }
    let policy = SandboxPolicy {
        renderer,
        ..SandboxPolicy::default()
    };
    match sandbox::confine(&policy) {
        Ok(status) => writeln!(out, "allowed={}", status.allowed_syscalls).unwrap(),
        Err(SandboxError::LandlockUnavailable) => {
            writeln!(out, "landlock=unavailable: refused").unwrap();
            std::process::exit(0)
        }
        Err(e) => panic!("confine: {e}"),
    }
    writeln!(out, "main thread: read {lib_file}: {:?}", read(lib_file)).unwrap();
    out.flush().unwrap();
    drop(out);
    // Code compiled at run time: allowed by the 3D profile only (the minimal one ends the
    // process here, at the mprotect).
    println!("jit: {:?}", jit());
    // SAFETY: kill(2) with signal 0 only checks; the filter answers before the kernel.
    let r = unsafe { libc::kill(1, 0) };
    println!("kill returned {r}");
    std::process::exit(0)
}

/// The child's part: confine, probe, then make the forbidden call `mode` says.
fn child(mode: &str) -> ! {
    if matches!(mode, "minimal-exec" | "renderer") {
        child_profile(mode);
    }
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

/// What a confined child (a `mode` of [`child`]) did.
struct ChildRun {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    /// The child's write directory (`final.png`, `existing`).
    dir: tempfile::TempDir,
    /// Everything above, for assertion messages.
    ctx: String,
}

/// Runs [`child`] in `mode`. `None` on a kernel without Landlock, after checking that
/// `confine()` refused there, as the backend does at start-up (the probes were not run).
fn run_child(mode: &str) -> Option<ChildRun> {
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
    let (status, stdout, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let ctx = format!("mode {mode}: status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    if stdout.contains("landlock=unavailable: refused") {
        assert!(status.success(), "{ctx}");
        eprintln!(
            "mode {mode}: Landlock not available: the refusal was checked, the probes were not"
        );
        return None;
    }
    Some(ChildRun {
        status,
        stdout,
        stderr,
        dir,
        ctx,
    })
}

fn check(mode: &str) {
    // Without Landlock the filter itself is checked by the seccomp-only mode.
    let Some(ChildRun {
        status,
        stdout,
        stderr,
        dir,
        ctx,
    }) = run_child(mode)
    else {
        return;
    };
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
    let Some(ChildRun {
        status,
        stdout,
        stderr,
        ctx,
        ..
    }) = run_child("wayland")
    else {
        return;
    };
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

#[test]
fn the_minimal_profile_refuses_executable_memory() {
    let Some(ChildRun {
        status,
        stdout,
        stderr,
        ctx,
        ..
    }) = run_child("minimal-exec")
    else {
        return;
    };
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{ctx}");
    assert!(
        stderr.contains(&format!(
            "system call mprotect ({}) is not on the seccomp allowlist of the minimal profile",
            libc::SYS_mprotect
        )),
        "{ctx}"
    );
    assert!(!stdout.contains("jit:"), "{ctx}");
}

#[test]
fn the_3d_profile_runs_compiled_code_and_still_kills_outside_its_list() {
    let Some(ChildRun {
        status,
        stdout,
        stderr,
        ctx,
        ..
    }) = run_child("renderer")
    else {
        return;
    };
    let eacces = format!("Err(Some({}))", libc::EACCES);
    // The renderer's thread reads the system's libraries, nothing else; the main thread's
    // minimal rules do not include them.
    assert!(
        stdout.contains("renderer thread: read /usr/lib/os-release: Ok(())"),
        "{ctx}"
    );
    assert!(
        stdout.contains(&format!("renderer thread: read /etc/passwd: {eacces}")),
        "{ctx}"
    );
    assert!(
        stdout.contains(&format!("main thread: read /usr/lib/os-release: {eacces}")),
        "{ctx}"
    );
    // Without venus the Vulkan loader's manifests are not readable.
    if std::path::Path::new("/usr/share/vulkan").exists() {
        assert!(
            stdout.contains(&format!(
                "renderer thread: list /usr/share/vulkan: {eacces}"
            )),
            "{ctx}"
        );
    }
    let allowed: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("allowed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no allowlist size: {ctx}"));
    let minimal = sandbox::syscalls::allowlist(&SandboxPolicy::default(), 1)
        .unwrap()
        .len();
    assert!(allowed > minimal, "{allowed} <= {minimal}: {ctx}");
    assert!(stdout.contains("jit: Ok(42)"), "{ctx}");
    // kill is allowed for the render server only (none here): refused, by SIGSYS.
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{ctx}");
    assert!(
        stderr.contains(&format!(
            "system call kill ({}) is not on the seccomp allowlist of the 3D profile",
            libc::SYS_kill
        )),
        "{ctx}"
    );
    assert!(!stdout.contains("kill returned"), "{ctx}");
}

/// Our backend with `args` under its default sandbox; `None` when it does not start
/// because this host has no renderer (an error when `VUG_REQUIRE_RENDERER` says it has).
fn backend(args: &[&str], needs_renderer: bool) -> Option<Frontend> {
    let spec = BackendSpec::new(env!("CARGO_BIN_EXE_vhost-user-gpu"), Peer::Ours)
        .with_args(["--allocator", "memfd"])
        .with_args(args.iter().copied());
    match Frontend::spawn(spec) {
        Ok(fe) => Some(fe),
        Err(e) if needs_renderer && std::env::var_os("VUG_REQUIRE_RENDERER").is_none() => {
            eprintln!("no renderer on this host ({e}): the 3D profile's session was not run");
            None
        }
        Err(e) => panic!("the backend does not start with {args:?}: {e}"),
    }
}

/// The `Seccomp:` mode of the backend (2: filtered).
fn seccomp_mode(fe: &Frontend) -> String {
    let pid = fe.backend_pid().expect("a backend we started");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// The allowlist size the backend's main process logged for `profile`.
fn logged_allowlist(log: &str, profile: &str) -> Option<usize> {
    let at = log.find(&format!(
        "] sandbox: {profile} profile: seccomp allowlist of "
    ))?;
    log[at..].split_whitespace().find_map(|w| w.parse().ok())
}

/// The allowlist size the render worker logged for the 3D profile.
fn worker_allowlist(log: &str) -> Option<usize> {
    let at = log.find("render worker: sandbox: 3D (renderer) profile: seccomp allowlist of ")?;
    log[at..].split_whitespace().find_map(|w| w.parse().ok())
}

/// The `Seccomp:` mode of process `pid`.
fn seccomp_mode_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn ok(fe: &mut Frontend, what: &str, cmd: gpu::Cmd) -> gpu::Resp {
    let r = fe
        .ctrl(cmd)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", fe.backend_log()));
    assert_eq!(
        r.ty,
        ty::OK_NODATA,
        "{what}: {}\n{}",
        r.name(),
        fe.backend_log()
    );
    r
}

#[test]
fn without_a_3d_capset_the_backend_keeps_the_minimal_profile() {
    let Some(mut fe) = backend(&["--capset", "cross-domain"], false) else {
        return;
    };
    let log = fe.backend_log();
    let minimal = sandbox::syscalls::allowlist(&SandboxPolicy::default(), 1)
        .unwrap()
        .len();
    assert_eq!(
        logged_allowlist(&log, "minimal (no 3D)"),
        Some(minimal),
        "{log}"
    );
    assert!(!log.contains("3D (renderer) profile"), "{log}");
    assert_eq!(seccomp_mode(&fe), "2", "{log}");
    let status = fe.disconnect_and_wait(std::time::Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fe.backend_log()
    );
}

#[test]
fn with_a_renderer_thread_the_backend_draws_under_the_3d_profile() {
    draws_under_the_3d_profile("on", "thread");
}

#[test]
fn with_a_renderer_thread_and_seccomp_only_the_backend_draws_too() {
    draws_under_the_3d_profile("seccomp-only", "thread");
}

#[test]
fn with_a_render_worker_the_backend_keeps_the_minimal_profile_and_the_worker_has_3d() {
    draws_under_the_3d_profile("on", "process");
}

#[test]
fn with_a_render_worker_and_seccomp_only_the_worker_draws_too() {
    draws_under_the_3d_profile("seccomp-only", "process");
}

/// A virgl session under `--sandbox mode` and `--renderer-isolation isolation`: with a
/// renderer thread the backend runs the 3D profile; with a render worker (the default) the
/// backend keeps the minimal one (plus waiting for and killing that one process) and the
/// worker runs the 3D one. A draw through compiled shaders, its fence, the read-back, a
/// clean exit.
fn draws_under_the_3d_profile(mode: &str, isolation: &str) {
    const CTX: u32 = 1;
    const SIDE: u32 = 32;
    let Some(mut fe) = backend(
        &[
            "--capset",
            "virgl",
            "--sandbox",
            mode,
            "--renderer-isolation",
            isolation,
        ],
        true,
    ) else {
        return;
    };
    let log = fe.backend_log();
    let minimal = sandbox::syscalls::allowlist(&SandboxPolicy::default(), 1)
        .unwrap()
        .len();
    if isolation == "thread" {
        let allowed = logged_allowlist(&log, "3D (renderer)")
            .unwrap_or_else(|| panic!("no 3D profile in the log:\n{log}"));
        assert!(allowed > minimal, "{allowed} <= {minimal}\n{log}");
        assert!(!log.contains("render worker"), "{log}");
    } else {
        assert!(
            logged_allowlist(&log, "3D (renderer)").is_none(),
            "the backend itself runs the 3D profile:\n{log}"
        );
        let with_worker = sandbox::syscalls::allowlist(
            &SandboxPolicy {
                render_worker: Some(1),
                ..SandboxPolicy::default()
            },
            1,
        )
        .unwrap()
        .len();
        assert_eq!(
            logged_allowlist(&log, "minimal (no 3D)"),
            Some(with_worker),
            "{log}"
        );
        let worker = worker_allowlist(&log)
            .unwrap_or_else(|| panic!("no 3D profile of the render worker in the log:\n{log}"));
        assert!(worker > minimal, "{worker} <= {minimal}\n{log}");
        let pid: u32 = log
            .split("render worker pid ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no render worker pid in the log:\n{log}"));
        assert_eq!(seccomp_mode_of(pid), "2", "the worker is filtered\n{log}");
    }
    assert_eq!(seccomp_mode(&fe), "2", "{log}");
    // A virgl context, a render target backed by guest memory, a vertex buffer.
    let len = u64::from(SIDE * SIDE * 4);
    let backing = fe.ram().alloc(len, 4096).unwrap();
    ok(&mut fe, "CTX_CREATE", gpu::ctx_create(CTX, 0, "sandbox"));
    ok(
        &mut fe,
        "RESOURCE_CREATE_3D texture",
        gpu::texture_create_3d(
            CTX,
            1,
            virgl::FORMAT_B8G8R8X8_UNORM,
            virgl::BIND_RENDER_TARGET | virgl::BIND_SAMPLER_VIEW,
            SIDE,
            SIDE,
        ),
    );
    ok(
        &mut fe,
        "RESOURCE_ATTACH_BACKING",
        gpu::resource_attach_backing(
            1,
            &[MemEntry {
                addr: backing,
                length: len as u32,
            }],
        ),
    );
    ok(
        &mut fe,
        "RESOURCE_CREATE_3D buffer",
        gpu::buffer_create_3d(CTX, 2, virgl::BIND_VERTEX_BUFFER, virgl::TRIANGLE_BYTES),
    );
    for res in [1, 2] {
        ok(
            &mut fe,
            "CTX_ATTACH_RESOURCE",
            gpu::ctx_attach_resource(CTX, res),
        );
    }
    // Draw (llvmpipe compiles both shaders now), fenced: the answer comes when the fence
    // completes.
    let stream = virgl::draw(1, 1, 2, SIDE, [0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]);
    let r = ok(
        &mut fe,
        "SUBMIT_3D draw",
        gpu::submit_3d(CTX, &stream).fence(7, None),
    );
    assert_eq!(r.fence_id, 7);
    let whole = Box3d {
        origin: [0, 0, 0],
        size: [SIDE, SIDE, 1],
    };
    ok(
        &mut fe,
        "TRANSFER_FROM_HOST_3D",
        gpu::transfer_from_host_3d(CTX, 1, whole, 0, SIDE * 4).fence(8, None),
    );
    let pixels = fe.ram().read_vec(backing, len as usize).unwrap();
    // Green in B8G8R8X8.
    let wrong = pixels.chunks_exact(4).position(|p| p[..3] != [0, 0xff, 0]);
    assert_eq!(wrong, None, "{:02x?}", &pixels[..16]);
    ok(&mut fe, "CTX_DESTROY", gpu::ctx_destroy(CTX));
    assert_eq!(seccomp_mode(&fe), "2");
    // The backend exits normally when its frontend goes (not by SIGSYS: the renderer's
    // shutdown is in the profile too).
    let status = fe.disconnect_and_wait(std::time::Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fe.backend_log()
    );
}

#[test]
fn the_render_server_is_not_under_the_backends_filter() {
    // Venus needs virglrenderer >= 1.0 (the render root); elsewhere venus is not served and
    // the backend refuses --capset venus.
    let spec = BackendSpec::new(env!("CARGO_BIN_EXE_vhost-user-gpu"), Peer::Ours).with_args([
        "--allocator",
        "memfd",
        "--capset",
        "virgl,venus",
    ]);
    let mut fe = match Frontend::spawn(spec) {
        Ok(fe) => fe,
        Err(e) => {
            eprintln!("no venus on this host ({e}): the render server's case was not run");
            return;
        }
    };
    let log = fe.backend_log();
    assert!(logged_allowlist(&log, "3D (renderer)").is_some(), "{log}");
    let pid: u32 = log
        .split("render server ")
        .nth(1)
        .and_then(|rest| rest.split("(pid ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no render server pid in the log:\n{log}"));
    // Started before the filter: the render server (and the workers it forks for venus
    // contexts) are not filtered by the backend's profile.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t0"), "{status}");
    assert_eq!(seccomp_mode(&fe), "2");
    // A venus context: the render server starts a worker for it.
    ok(
        &mut fe,
        "CTX_CREATE venus",
        gpu::ctx_create(1, gpu::CAPSET_VENUS, "venus"),
    );
    ok(&mut fe, "CTX_DESTROY venus", gpu::ctx_destroy(1));
    // At exit the backend waits for the render server (and would kill it): allowed for
    // that process, so the backend exits normally.
    let exit = fe.disconnect_and_wait(std::time::Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        fe.backend_log()
    );
}
