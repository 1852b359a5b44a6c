//! The backend confines itself after start-up (`--sandbox on`, the default): these cases
//! check from outside that the confinement is in place (`/proc/<pid>/status`: `Seccomp: 2`,
//! `NoNewPrivs: 1`; the backend's log line for Landlock) while a workload touching every
//! part that needs the kernel runs (2D with display, HOST3D blobs mapped through SHMEM_MAP,
//! PNG capture written with temporary file + rename), and that `--sandbox off` leaves it
//! unconfined. The whole suite runs with the sandbox on, as it is the default.
//!
//! Its one `unsafe`: the raw `landlock_create_ruleset` call that asks the kernel's Landlock
//! ABI version.
#![allow(unsafe_code)]

use super::blob::{map, no_leaks, CrossDomain, CTX_ID};
use super::two_d::create_filled;
use super::{bgra_pattern, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::frontend::Frontend;
use crate::gpu::{self, features, ty};

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "sandbox::confined_by_default",
            need: Need::All(vec![
                Need::OurCommandLine,
                Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
                Need::HostVisibleRegion,
            ]),
            run: confined_by_default,
        },
        Case {
            name: "sandbox::seccomp_only_serves_without_writing_files",
            need: Need::All(vec![
                Need::OurCommandLine,
                Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
                Need::HostVisibleRegion,
            ]),
            run: seccomp_only,
        },
        Case {
            name: "sandbox::off_leaves_it_unconfined",
            need: Need::OurCommandLine,
            run: sandbox_off,
        },
    ]
}

/// `Field:\tvalue` of `/proc/<pid>/status`.
fn status_field(fe: &Frontend, field: &str) -> Result<String, String> {
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// The kernel's Landlock ABI version (0: no Landlock).
fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version (or
    // fails with ENOSYS/EOPNOTSUPP); it reads no memory and creates no fd.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

fn confined_by_default(harness: &Harness) -> CaseResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir_arg = dir.path().to_string_lossy().to_string();
    let mut fe = harness
        .spawn_with(&["--capture-dir", &dir_arg])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let seccomp = status_field(&fe, "Seccomp")?;
    ensure(&fe, seccomp == "2", || {
        format!("Seccomp: {seccomp} in /proc/<pid>/status, expected 2 (filter mode)")
    })?;
    let nnp = status_field(&fe, "NoNewPrivs")?;
    ensure(&fe, nnp == "1", || format!("NoNewPrivs: {nnp}, expected 1"))?;
    let log = fe.backend_log();
    ensure(
        &fe,
        log.contains("sandbox: minimal (no 3D) profile: seccomp allowlist of")
            && log.contains("Landlock "),
        || "the backend (without a renderer) did not log its minimal sandbox profile".into(),
    )?;
    // Landlock is a kernel option: when this kernel has it, the backend must enforce it.
    if landlock_abi() >= 6 {
        ensure(&fe, log.contains("Landlock fully enforced"), || {
            "this kernel has Landlock but the backend did not fully enforce it".into()
        })?;
    }

    // A workload through everything that needs the kernel after start-up.
    let (w, h) = (32u32, 24u32);
    let img = bgra_pattern(w, h, 77);
    create_filled(&mut fe, 1, w, h, &img)?;
    super::two_d::show_on_scanout_0(&mut fe, 1, w, h)?;
    super::two_d::display_matches(&fe, 0, w, h, &img)?;
    let png = dir.path().join("scanout-0.png");
    let deadline = std::time::Instant::now() + super::DISPLAY_WAIT;
    while !png.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ensure(&fe, png.exists(), || {
        format!("{} was not written under the sandbox", png.display())
    })?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let before = fe.backend_stats().map_err(|e| e.to_string())?;
    for round in 0..3u32 {
        let id = 10 + round;
        let reqs = cd.create(&mut fe, id, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        map(&mut fe, id, 0, reqs.size)?;
        send_expecting(
            &mut fe,
            "UNMAP_BLOB",
            gpu::resource_unmap_blob(CTX_ID, id),
            ty::OK_NODATA,
        )?;
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    }
    no_leaks(&mut fe, &before)?;
    // Every thread of the backend (main, vhost-user connection and queue threads, capture
    // writer) runs under the filter.
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())? {
        let path = task.map_err(|e| e.to_string())?.path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        threads += 1;
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        ensure(&fe, mode == "2", || {
            format!(
                "backend thread {name} ({}) has Seccomp: {mode}",
                path.display()
            )
        })?;
    }
    ensure(&fe, threads >= 3, || {
        format!(
            "only {threads} backend threads seen; expected main, vhost-user and capture threads"
        )
    })?;
    // Reset (new display socket, memory table) still works confined.
    fe.reset()
        .map_err(|e| super::case_error(&fe, "device reset", e))?;
    still_serving(&mut fe)?;
    let alive = fe.backend_alive();
    ensure(&fe, alive, || "the backend died under its sandbox".into())
}

/// `--sandbox seccomp-only` (kernels without Landlock): the filter alone, which answers
/// `EACCES` to creating, writing, renaming and removing files. The backend serves 2D with
/// its display, HOST3D blobs mapped through SHMEM_MAP and a reset; at the end its attempt to
/// remove its socket file is refused, and it still exits 0 (nothing was trapped).
fn seccomp_only(harness: &Harness) -> CaseResult {
    let mut fe = harness
        .spawn_with(&["--sandbox", "seccomp-only"])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let seccomp = status_field(&fe, "Seccomp")?;
    ensure(&fe, seccomp == "2", || {
        format!("--sandbox seccomp-only but Seccomp: {seccomp}")
    })?;
    ensure(
        &fe,
        fe.backend_log()
            .contains("Landlock not used (--sandbox seccomp-only"),
        || "the backend did not log that Landlock is not used".into(),
    )?;
    let (w, h) = (32u32, 24u32);
    let img = bgra_pattern(w, h, 78);
    create_filled(&mut fe, 1, w, h, &img)?;
    super::two_d::show_on_scanout_0(&mut fe, 1, w, h)?;
    super::two_d::display_matches(&fe, 0, w, h, &img)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 10, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 10, 0, reqs.size)?;
    fe.reset()
        .map_err(|e| super::case_error(&fe, "device reset", e))?;
    still_serving(&mut fe)?;
    let socket = fe.socket_path().to_owned();
    let status = fe.disconnect_and_wait(std::time::Duration::from_secs(10));
    ensure(&fe, status.is_some_and(|s| s.success()), || {
        format!("after the frontend left, the backend ended with {status:?}, expected exit 0")
    })?;
    ensure(&fe, socket.exists(), || {
        "the socket file was removed although seccomp-only refuses removing files".into()
    })
}

fn sandbox_off(harness: &Harness) -> CaseResult {
    let mut fe = harness
        .spawn_with(&["--sandbox", "off"])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let seccomp = status_field(&fe, "Seccomp")?;
    ensure(&fe, seccomp == "0", || {
        format!("--sandbox off but Seccomp: {seccomp}")
    })?;
    ensure(&fe, fe.backend_log().contains("sandbox: off"), || {
        "--sandbox off was not logged".into()
    })?;
    still_serving(&mut fe)
}
