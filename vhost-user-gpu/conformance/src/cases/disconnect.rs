//! `--keep-listening` across 100 frontend disconnects: half are a frontend *process* killed
//! with SIGKILL while commands are in flight (pipelined CREATE_2D, MAP_BLOB waiting for its
//! SHMEM_MAP acknowledgement from the dying process), half are orderly disconnects with a
//! mapped blob and a shown scanout left behind. After each one the backend must be back to
//! its idle fd and buffer-mapping counts (0 extra), its RSS flat within 1 MiB after a
//! warm-up of 10 disconnects, and the next frontend must be served correctly.
//!
//! The child frontend is this very test binary, started again with `VUG_CHILD_FRONTEND`
//! naming the socket (see [`child_frontend_from_env`], called first thing by the suite's
//! `main`).

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::blob::{map, CrossDomain, CTX_ID};
use super::limits::backend_rss;
use super::two_d::create_filled;
use super::{bgra_pattern, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::frontend::{Frontend, FrontendOptions, CONTROL_QUEUE};
use crate::gpu::{self, features, format, ty};
use crate::proc_stats::ProcStats;
use crate::Peer;

/// Environment variable that turns the suite binary into a child frontend for `socket`.
pub const CHILD_SOCKET_ENV: &str = "VUG_CHILD_FRONTEND";

/// Disconnects per run (`VUG_DISCONNECTS` overrides, for longer runs).
fn disconnects() -> u32 {
    std::env::var("VUG_DISCONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u32| n >= 20)
        .unwrap_or(100)
}

pub(super) fn cases() -> Vec<Case> {
    vec![Case {
        name: "disconnect::keep_listening_survives_100_disconnects_and_sigkill",
        need: Need::All(vec![
            Need::OurCommandLine,
            Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
            Need::HostVisibleRegion,
        ]),
        run: survives_disconnects,
    }]
}

/// When `VUG_CHILD_FRONTEND` is set, runs the child frontend (never returns normally: it
/// is killed) and gives the exit code; otherwise `None`.
pub fn child_frontend_from_env() -> Option<i32> {
    let socket = std::env::var_os(CHILD_SOCKET_ENV)?;
    Some(match child_main(Path::new(&socket)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child frontend: {e}");
            1
        }
    })
}

/// Leaves state behind (a mapped HOST3D blob, a shown 2D resource with backing), says
/// `ready`, then keeps commands in flight until it is killed.
fn child_main(socket: &Path) -> Result<(), String> {
    let mut fe = Frontend::attach(socket, Peer::Ours, FrontendOptions::default())
        .map_err(|e| format!("attach to {}: {e}", socket.display()))?;
    let mut cd = leave_state_behind(&mut fe)?;
    println!("ready");
    let mut round = 0u32;
    loop {
        // 16 requests in flight at once.
        for k in 0..16 {
            let cmd =
                gpu::resource_create_2d(1000 + k, format::B8G8R8A8_UNORM, 128, 128).into_bytes();
            fe.send(CONTROL_QUEUE, &[&cmd], 64)
                .map_err(|e| e.to_string())?;
        }
        for _ in 0..16 {
            fe.wait(CONTROL_QUEUE).map_err(|e| e.to_string())?;
        }
        for k in 0..16 {
            let cmd = gpu::resource_unref(1000 + k).into_bytes();
            fe.send(CONTROL_QUEUE, &[&cmd], 64)
                .map_err(|e| e.to_string())?;
        }
        for _ in 0..16 {
            fe.wait(CONTROL_QUEUE).map_err(|e| e.to_string())?;
        }
        // A map/unmap pair: SHMEM_MAP round trips to this process.
        let id = 3000 + round % 100;
        let reqs = cd.create(&mut fe, id, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        map(&mut fe, id, 0x10_0000, reqs.size)?;
        send_expecting(
            &mut fe,
            "UNMAP_BLOB",
            gpu::resource_unmap_blob(CTX_ID, id),
            ty::OK_NODATA,
        )?;
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
        round += 1;
    }
}

/// A context with a mapped HOST3D blob, and a 2D resource with backing on the scanout.
fn leave_state_behind(fe: &mut Frontend) -> Result<CrossDomain, String> {
    let mut cd = CrossDomain::init(fe)?;
    let reqs = cd.create(fe, 10, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(fe, 10, 0, reqs.size)?;
    let img = bgra_pattern(32, 32, 5);
    create_filled(fe, 1, 32, 32, &img)?;
    super::two_d::show_on_scanout_0(fe, 1, 32, 32)?;
    Ok(cd)
}

/// Waits until the backend holds no more fds and buffer mappings than `idle`.
fn back_to_idle(fe: &mut Frontend, idle: &ProcStats, what: &str) -> Result<ProcStats, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fe.backend_stats().map_err(|e| e.to_string())?;
        if now.fds == idle.fds && now.buffer_maps == idle.buffer_maps {
            return Ok(now);
        }
        if !fe.backend_alive() {
            return Err(crate::suite::with_log(
                fe,
                format!("the backend died after {what}"),
            ));
        }
        if Instant::now() > deadline {
            return Err(crate::suite::with_log(
                fe,
                format!(
                    "after {what} the backend holds {} fds / {} buffer mappings, {} / {} when \
                     idle; new fds {:?}",
                    now.fds,
                    now.buffer_maps,
                    idle.fds,
                    idle.buffer_maps,
                    now.new_fds(idle)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a child frontend, waits for `ready`, lets it run `delay`, kills it with SIGKILL.
fn kill_child_frontend(fe: &Frontend, delay: Duration, n: u32) -> CaseResult {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log_path = fe.scratch_dir().join(format!("child-{n}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_SOCKET_ENV, fe.socket_path())
        .env_remove("VUG_FULL_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the child frontend: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx.recv_timeout(Duration::from_secs(20));
    if !matches!(&ready, Ok(l) if l.trim() == "ready") {
        let _ = child.kill();
        let _ = child.wait();
        let child_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(crate::suite::with_log(
            fe,
            format!("child frontend {n} never got ready ({ready:?}); its stderr:\n{child_log}"),
        ));
    }
    std::thread::sleep(delay);
    child.kill().map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.signal() != Some(libc::SIGKILL) {
        let child_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(crate::suite::with_log(
            fe,
            format!("child frontend {n} ended by itself ({status}) before SIGKILL:\n{child_log}"),
        ));
    }
    Ok(())
}

fn survives_disconnects(harness: &Harness) -> CaseResult {
    let total = disconnects();
    let start = Instant::now();
    let mut fe = harness
        .spawn_with(&["--keep-listening"])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    still_serving(&mut fe)?;
    fe.disconnect();
    // Idle: listening, no connection. Give the first disconnect time to finish.
    std::thread::sleep(Duration::from_millis(200));
    let idle = fe.backend_stats().map_err(|e| e.to_string())?;
    let mut rss_warm = 0;
    let mut max_rss = 0;
    for n in 0..total {
        if n % 2 == 0 {
            // 0-20 ms of commands in flight before the kill.
            let delay = Duration::from_millis(u64::from(n % 7) * 3);
            kill_child_frontend(&fe, delay, n)?;
        } else {
            fe.connect()
                .map_err(|e| super::case_error(&fe, "reconnect", e))?;
            leave_state_behind(&mut fe)?;
            fe.disconnect();
        }
        back_to_idle(&mut fe, &idle, &format!("disconnect {n}"))?;
        let rss = backend_rss(&fe)?;
        if n == 9 {
            rss_warm = rss;
        }
        if n >= 9 {
            max_rss = max_rss.max(rss);
        }
    }
    let end = fe.backend_stats().map_err(|e| e.to_string())?;
    let rss_end = backend_rss(&fe)?;
    // What the kills interrupted, from the backend's log (figures only).
    let log = fe.backend_log();
    let maps_cut = log
        .lines()
        .filter(|l| l.contains("RESOURCE_MAP_BLOB") && l.contains("-> ERR_"))
        .count();
    let ended_with_error = log
        .lines()
        .filter(|l| l.contains("connection ended with an error"))
        .count();
    eprintln!(
        "disconnect: {total} disconnects ({} SIGKILLed child frontends) in {:.1?}; idle fds {} \
         -> {}, buffer mappings {} -> {}, maps {} -> {}; RSS after warm-up {} KiB, max {} KiB, \
         end {} KiB; MAP_BLOBs cut short by a dying frontend: {maps_cut}; connections ended \
         with an error: {ended_with_error}",
        total.div_ceil(2),
        start.elapsed(),
        idle.fds,
        end.fds,
        idle.buffer_maps,
        end.buffer_maps,
        idle.maps,
        end.maps,
        rss_warm >> 10,
        max_rss >> 10,
        rss_end >> 10
    );
    super::ensure(&fe, max_rss <= rss_warm + (1 << 20), || {
        format!(
            "backend RSS grew from {} KiB to {} KiB over {} disconnects",
            rss_warm >> 10,
            max_rss >> 10,
            total - 10
        )
    })?;
    super::ensure(&fe, end.maps <= idle.maps, || {
        format!(
            "backend has {} mappings after the disconnects, {} when idle before",
            end.maps, idle.maps
        )
    })?;
    // The next frontend is served correctly: blobs map, the display shows, state is fresh.
    fe.connect()
        .map_err(|e| super::case_error(&fe, "final reconnect", e))?;
    send_expecting(
        &mut fe,
        "UNREF of the previous connection's resource",
        gpu::resource_unref(1),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 10, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 10, 0, reqs.size)?;
    let img = bgra_pattern(32, 32, 6);
    create_filled(&mut fe, 1, 32, 32, &img)?;
    super::two_d::show_on_scanout_0(&mut fe, 1, 32, 32)?;
    super::two_d::display_matches(&fe, 0, 32, 32, &img)?;
    still_serving(&mut fe)
}
