//! Live upgrade (DESIGN-lifecycle.md 4): a new backend process takes the running device
//! over (`--upgrade-from` the old one's `--control-socket`) while this frontend goes on as if
//! nothing happened: no reconnection, no message it would not get from a running backend.
//! Resources, pixels, contexts, mapped blobs, scanouts, the cursor and the display channel
//! carry over; commands in flight complete once, by one process or the other; a new process
//! that fails or gives up leaves the old one serving (rollback); 100 upgrades in a row leak
//! nothing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::blob::{map, CrossDomain, CTX_ID};
use super::lifecycle::MapWaitingForFrontend;
use super::two_d::{create_filled, display_matches, show_on_scanout_0};
use super::{
    bgra_pattern, case_error, ensure, send_expecting, still_serving, Case, CaseResult, Harness,
    Need,
};
use crate::frontend::{Frontend, FrontendOptions, Upgraded};
use crate::gpu::{self, features, ty, Rect};
use crate::proc_stats::ProcStats;
use crate::BackendSpec;

/// Control queue index.
const CONTROL: usize = 0;

/// QEMU's display protocol: `VHOST_USER_GPU_GET_PROTOCOL_FEATURES`.
const DISPLAY_GET_PROTOCOL_FEATURES: u32 = 1;

pub(super) fn cases() -> Vec<Case> {
    let blob = Need::All(vec![
        Need::OurCommandLine,
        Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
        Need::HostVisibleRegion,
    ]);
    vec![
        Case {
            name: "upgrade::keeps_2d_state_cursor_and_display",
            need: Need::OurCommandLine,
            run: keeps_2d_state,
        },
        Case {
            name: "upgrade::keeps_blobs_contexts_mappings",
            need: blob.clone(),
            run: keeps_blobs,
        },
        Case {
            name: "upgrade::commands_queued_while_paused_complete_once",
            need: Need::OurCommandLine,
            run: queued_while_paused,
        },
        Case {
            name: "upgrade::command_waiting_for_shmem_map_completes_once",
            need: blob.clone(),
            run: waiting_for_map,
        },
        Case {
            name: "upgrade::keep_listening_without_a_frontend",
            need: Need::OurCommandLine,
            run: without_frontend,
        },
        Case {
            name: "upgrade::connected_fd",
            need: Need::OurCommandLine,
            run: connected_fd,
        },
        Case {
            name: "upgrade::rollback_when_the_new_binary_cannot_start",
            need: Need::OurCommandLine,
            run: rollback_new_cannot_start,
        },
        Case {
            name: "upgrade::rollback_when_the_new_process_gives_up_or_dies",
            need: Need::OurCommandLine,
            run: rollback_abort_and_crash,
        },
        Case {
            name: "upgrade::state_version_the_new_binary_cannot_read_is_refused",
            need: Need::OurCommandLine,
            run: version_refused,
        },
        Case {
            name: "upgrade::rollback_when_the_state_exceeds_the_new_process_budget",
            need: blob.clone(),
            run: rollback_over_budget,
        },
        Case {
            name: "upgrade::rollback_when_the_handover_runs_out_of_fds",
            need: blob.clone(),
            run: rollback_out_of_fds,
        },
        Case {
            name: "upgrade::hundred_upgrades_leak_nothing",
            need: blob,
            run: hundred_upgrades,
        },
    ]
}

fn options() -> FrontendOptions {
    FrontendOptions {
        control_socket: true,
        ..FrontendOptions::default()
    }
}

/// Our backend with a control socket.
fn spawn(harness: &Harness, extra: &[&str]) -> Result<Frontend, String> {
    harness
        .spawn_with_options(extra, options())
        .map_err(|e| format!("cannot start backend: {e}"))
}

/// Upgrades; a failure carries the log.
fn upgrade(fe: &mut Frontend) -> Result<Upgraded, String> {
    let before = fe.backend_pid();
    let up = fe
        .upgrade()
        .map_err(|e| case_error(fe, "live upgrade", e))?;
    ensure(
        fe,
        before == Some(up.old_pid) && fe.backend_pid() == Some(up.new_pid),
        || format!("pids after the upgrade: {up:?}, now {:?}", fe.backend_pid()),
    )?;
    Ok(up)
}

/// An upgrade that must not take place (`what`): the frontend's upgrade fails (the new
/// process gave up, or the old one refused to hand over).
pub(super) fn upgrade_fails(fe: &mut Frontend, what: &str) -> CaseResult {
    match fe.upgrade() {
        Err(crate::Error::Upgrade(_)) => Ok(()),
        other => Err(case_error(
            fe,
            what,
            format!("{other:?} instead of a refused or failed upgrade"),
        )),
    }
}

fn stats(fe: &Frontend) -> Result<ProcStats, String> {
    fe.backend_stats().map_err(|e| e.to_string())
}

/// The backend's counters once they stopped moving (unchanged over 100 ms, at most 2 s): a
/// memory region the frontend just removed stays mapped until the queue thread lets go of
/// the previous memory table.
fn settled_stats(fe: &Frontend) -> Result<ProcStats, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut last = stats(fe)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = stats(fe)?;
        let same = now.fds == last.fds && now.buffer_maps == last.buffer_maps;
        if same || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// The display saw one protocol handshake, no protocol violation, and its socket is open.
fn display_undisturbed(fe: &Frontend) -> CaseResult {
    let Some(display) = fe.display() else {
        return Ok(());
    };
    let state = display.state();
    let handshakes = state
        .requests
        .iter()
        .filter(|&&r| r == DISPLAY_GET_PROTOCOL_FEATURES)
        .count();
    ensure(
        fe,
        handshakes <= 1 && state.violations.is_empty() && !state.closed,
        || {
            format!(
                "the display channel saw {handshakes} protocol handshakes, violations {:?}, closed {}",
                state.violations, state.closed
            )
        },
    )
}

/// A 2D resource on scanout 0 and a cursor: after each of three upgrades a flush without a
/// new transfer still shows the same pixels (they moved with the device), new pixels reach
/// the display, the cursor moves, and the display channel saw nothing unexpected. A device
/// reset afterwards works and frees everything.
fn keeps_2d_state(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let (w, h) = (32, 16);
    let mut img = bgra_pattern(w, h, 3);
    let backing = create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    let cursor = bgra_pattern(64, 64, 4);
    create_filled(&mut fe, 2, 64, 64, &cursor)?;
    fe.cursor(gpu::update_cursor(0, 5, 6, 2, (1, 1)))
        .map_err(|e| case_error(&fe, "UPDATE_CURSOR", e))?;
    for round in 0..3u32 {
        upgrade(&mut fe)?;
        send_expecting(
            &mut fe,
            "RESOURCE_FLUSH after the upgrade",
            gpu::resource_flush(1, Rect::sized(w, h)),
            ty::OK_NODATA,
        )?;
        display_matches(&fe, 0, w, h, &img)
            .map_err(|e| format!("after upgrade {round}, the old pixels: {e}"))?;
        img = bgra_pattern(w, h, 10 + round);
        backing.write(&fe, 0, &img)?;
        send_expecting(
            &mut fe,
            "TRANSFER_TO_HOST_2D after the upgrade",
            gpu::transfer_to_host_2d(1, Rect::sized(w, h), 0),
            ty::OK_NODATA,
        )?;
        send_expecting(
            &mut fe,
            "RESOURCE_FLUSH after the upgrade",
            gpu::resource_flush(1, Rect::sized(w, h)),
            ty::OK_NODATA,
        )?;
        display_matches(&fe, 0, w, h, &img)
            .map_err(|e| format!("after upgrade {round}, new pixels: {e}"))?;
        let (x, y) = (10 + round, 20 + round);
        fe.cursor(gpu::move_cursor(0, x, y, 2))
            .map_err(|e| case_error(&fe, "MOVE_CURSOR", e))?;
        if let Some(display) = fe.display() {
            let moved = display.wait_for(super::DISPLAY_WAIT, |s| s.cursor.pos == (0, x, y));
            ensure(&fe, moved, || {
                format!("after upgrade {round} the cursor did not move to {x},{y}")
            })?;
        }
        display_undisturbed(&fe)?;
    }
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D of an id that exists",
        gpu::resource_create_2d(1, gpu::format::B8G8R8A8_UNORM, w, h),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    // The restored negotiation gates messages as the frontend's did: a device reset
    // (RESET_DEVICE with NEED_REPLY, new rings, a new display channel) works after upgrades.
    fe.reset()
        .map_err(|e| case_error(&fe, "device reset after the upgrades", e))?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH after the reset",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    still_serving(&mut fe)
}

/// A context, a mapped HOST3D blob written through the frontend's mapping, across three
/// upgrades: the mapping holds the bytes throughout, the new process unmaps it
/// (`SHMEM_UNMAP` on the channel it inherited) and maps it again, a new blob maps after it.
fn keeps_blobs(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    let region = fe.shmem_shared().ok_or("no host-visible region")?;
    let bytes = super::pattern(64, 77);
    region.write(0, &bytes).map_err(|e| e.to_string())?;
    for round in 0..3 {
        upgrade(&mut fe)?;
        ensure(&fe, region.mappings().iter().any(|&(o, _)| o == 0), || {
            format!("after upgrade {round} the frontend lost the mapping")
        })?;
        let now = region.read(0, 64).map_err(|e| e.to_string())?;
        ensure(&fe, now == bytes, || {
            format!("after upgrade {round} the blob reads {now:02x?}")
        })?;
    }
    // The region's bookkeeping moved too: the same range is refused while taken.
    let more = cd.create(&mut fe, 2, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    send_expecting(
        &mut fe,
        "RESOURCE_MAP_BLOB over the range blob 1 holds",
        gpu::resource_map_blob(CTX_ID, 2, 0),
        ty::ERR_INVALID_PARAMETER,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNMAP_BLOB after the upgrades",
        gpu::resource_unmap_blob(CTX_ID, 1),
        ty::OK_NODATA,
    )?;
    map(&mut fe, 1, 0, reqs.size)?;
    let again = region.read(0, 64).map_err(|e| e.to_string())?;
    ensure(&fe, again == bytes, || {
        format!("mapped again, the blob reads {again:02x?}")
    })?;
    map(&mut fe, 2, reqs.size.next_multiple_of(4096), more.size)?;
    display_undisturbed(&fe)?;
    still_serving(&mut fe)
}

/// Commands on the ring while the VM is paused are in flight at the upgrade: the old
/// process has not touched them; the new one runs each exactly once after `cont` and raises
/// the guest's interrupt.
fn queued_while_paused(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let bases = fe
        .pause()
        .map_err(|e| case_error(&fe, "pause (QMP stop)", e))?;
    let mut heads = Vec::new();
    for id in 1..=5u32 {
        let cmd = gpu::resource_create_2d(id, gpu::format::B8G8R8A8_UNORM, 8, 8).into_bytes();
        heads.push(
            fe.send(CONTROL, &[&cmd], 64)
                .map_err(|e| case_error(&fe, "queue a command while paused", e))?,
        );
    }
    upgrade(&mut fe)?;
    let early = fe.has_used(CONTROL).map_err(|e| e.to_string())?;
    ensure(&fe, !early, || {
        "a command completed while the rings were stopped".into()
    })?;
    while fe
        .wait_notified(CONTROL, Duration::ZERO)
        .map_err(|e| e.to_string())?
    {}
    fe.resume(&bases)
        .map_err(|e| case_error(&fe, "resume (QMP cont)", e))?;
    let notified = fe
        .wait_notified(CONTROL, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    ensure(&fe, notified, || {
        "no interrupt reached the guest after cont".into()
    })?;
    for (n, head) in heads.into_iter().enumerate() {
        let bytes = fe
            .wait_for_head(CONTROL, head)
            .map_err(|e| case_error(&fe, "command queued before the upgrade", e))?;
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(&fe, r.ty == ty::OK_NODATA, || {
            format!("queued command {n} answered {}", ty::name(r.ty))
        })?;
    }
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D of an id created by a queued command",
        gpu::resource_create_2d(3, gpu::format::B8G8R8A8_UNORM, 8, 8),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    still_serving(&mut fe)
}

/// An upgrade requested while the old process's queue thread waits for the frontend's
/// answer to a `SHMEM_MAP`: the handover waits for that command, the old process completes
/// it (once), and the new one serves the mapping it made.
fn waiting_for_map(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let waiting = MapWaitingForFrontend::start(&mut fe)?;
    let region = waiting.region.clone();
    let releaser = {
        let region = region.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            region.release_maps();
        })
    };
    let up = upgrade(&mut fe);
    let _ = releaser.join();
    up?;
    waiting.completed_once(&mut fe, "the upgrade")?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNMAP_BLOB by the new process",
        gpu::resource_unmap_blob(CTX_ID, 1),
        ty::OK_NODATA,
    )?;
    ensure(&fe, region.mappings().is_empty(), || {
        format!("still mapped: {:?}", region.mappings())
    })?;
    still_serving(&mut fe)
}

/// `--keep-listening` with no frontend connected: the upgrade moves only the listening
/// socket; the next frontend connects to the new process and gets a fresh device.
fn without_frontend(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--keep-listening"])?;
    let (w, h) = (8, 8);
    create_filled(&mut fe, 1, w, h, &bgra_pattern(w, h, 1))?;
    fe.disconnect();
    upgrade(&mut fe)?;
    fe.reconnect()
        .map_err(|e| case_error(&fe, "connect to the new process", e))?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D of the previous connection's id",
        gpu::resource_create_2d(1, gpu::format::B8G8R8A8_UNORM, w, h),
        ty::OK_NODATA,
    )?;
    upgrade(&mut fe)?;
    still_serving(&mut fe)
}

/// Started as libvirt starts it (`--fd` of a connected socket, no listening socket): the
/// connection moves, and the new process exits when the frontend leaves, as the old one would.
fn connected_fd(harness: &Harness) -> CaseResult {
    let mut spec: BackendSpec = harness.spec.clone();
    if !spec.args.iter().any(|a| a == "--allocator") {
        spec.args.extend(["--allocator".into(), "memfd".into()]);
    }
    let mut fe = Frontend::spawn_connected(spec, options())
        .map_err(|e| format!("cannot start backend on a socket pair: {e}"))?;
    let (w, h) = (16, 8);
    let img = bgra_pattern(w, h, 9);
    create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    upgrade(&mut fe)?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH after the upgrade",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    display_matches(&fe, 0, w, h, &img)?;
    still_serving(&mut fe)?;
    fe.disconnect();
    match fe.wait_backend_exit(Duration::from_secs(10)) {
        Some(status) if status.success() => Ok(()),
        other => Err(case_error(
            &fe,
            "the upgraded backend after the frontend left",
            format!("{other:?} instead of exit status 0"),
        )),
    }
}

/// The new binary cannot start with the running configuration (its `--capture-dir` was
/// removed meanwhile): it reports why, the old process goes on serving with its state, and a
/// later upgrade (directory back) works.
fn rollback_new_cannot_start(harness: &Harness) -> CaseResult {
    let capture = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = capture.path().join("shots");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let dir_arg = dir.display().to_string();
    let mut fe = spawn(harness, &["--capture-dir", &dir_arg])?;
    let (w, h) = (16, 8);
    let img = bgra_pattern(w, h, 21);
    create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    let pid = fe.backend_pid();
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    upgrade_fails(&mut fe, "upgrade to a process that cannot start")?;
    let same = fe.backend_pid() == pid && fe.backend_alive();
    ensure(&fe, same, || {
        "the old backend is gone after a failed upgrade".into()
    })?;
    // The new process exits after its ABORT; the old one logs its rollback when it reads it.
    log_count(&fe, "rolled back", 1)?;
    ensure(&fe, fe.backend_log().contains("--capture-dir"), || {
        "the log does not say why the new process failed".into()
    })?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH after the rollback",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    display_matches(&fe, 0, w, h, &img)?;
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    upgrade(&mut fe)?;
    display_matches(&fe, 0, w, h, &img)?;
    // The new process's capture shows the screen without a new flush (it is repainted).
    let png = dir.join("scanout-0.png");
    let deadline = std::time::Instant::now() + super::DISPLAY_WAIT;
    while !png.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure(&fe, png.exists(), || {
        format!("{} not written after the upgrade", png.display())
    })?;
    still_serving(&mut fe)
}

// ---- A hand-written new process, to test what the real one never does. -------------------

const HELLO: u32 = 1;
/// The state versions the hand-written new process claims to read: the one our backend
/// writes (its `STATE_VERSION`; 2 since charges have five kinds and scanouts their charge).
const STATE_VERSIONS: &str = "[2]";
const STATE: u32 = 2;
const ABORT: u32 = 5;
const REFUSED: u32 = 7;

fn control_socket(fe: &Frontend) -> std::path::PathBuf {
    fe.scratch_dir().join("control.sock")
}

fn write_frame(s: &mut UnixStream, kind: u32, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&kind.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame)
}

/// Reads one frame (fds that come with it are dropped by the kernel with the socket).
fn read_frame(s: &mut UnixStream) -> std::io::Result<(u32, Vec<u8>)> {
    let mut header = [0u8; 8];
    s.read_exact(&mut header)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)?;
    Ok((kind, payload))
}

fn hello(control: &Path, versions: &str) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(control)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let doc = format!(
        r#"{{"format":"vhost-user-gpu-state","versions":{versions},"pid":{},"binary":"vug-conformance"}}"#,
        std::process::id()
    );
    write_frame(&mut s, HELLO, doc.as_bytes())?;
    Ok(s)
}

/// Waits until the log has `needle` `count` times.
fn log_count(fe: &Frontend, needle: &str, count: usize) -> CaseResult {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fe.backend_log().matches(needle).count() < count {
        if std::time::Instant::now() > deadline {
            return Err(case_error(
                fe,
                "backend log",
                format!("'{needle}' not logged {count} time(s)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A new process that takes the state and then says ABORT, and one that takes it and
/// vanishes: the old process rolls back both times (same pid, same state, queue thread and
/// connection serving again), and a real upgrade afterwards works.
fn rollback_abort_and_crash(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let (w, h) = (16, 8);
    let img = bgra_pattern(w, h, 31);
    create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    let pid = fe.backend_pid();
    let control = control_socket(&fe);
    for (round, give_up) in [true, false].into_iter().enumerate() {
        let mut s = hello(&control, STATE_VERSIONS).map_err(|e| e.to_string())?;
        let (kind, doc) = read_frame(&mut s).map_err(|e| e.to_string())?;
        ensure(&fe, kind == STATE && doc.starts_with(b"{"), || {
            format!("frame {kind} instead of the state")
        })?;
        if give_up {
            write_frame(&mut s, ABORT, b"vug-conformance gives up").map_err(|e| e.to_string())?;
        }
        drop(s);
        log_count(&fe, "rolled back", round + 1)?;
        let same = fe.backend_pid() == pid && fe.backend_alive();
        ensure(&fe, same, || "the old backend is gone".into())?;
        send_expecting(
            &mut fe,
            "RESOURCE_FLUSH after the rollback",
            gpu::resource_flush(1, Rect::sized(w, h)),
            ty::OK_NODATA,
        )?;
        display_matches(&fe, 0, w, h, &img)?;
    }
    upgrade(&mut fe)?;
    display_undisturbed(&fe)?;
    still_serving(&mut fe)
}

/// A new binary that reads only state versions this backend does not write is refused
/// before anything stops, with a message naming both sides' versions.
fn version_refused(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut s = hello(&control_socket(&fe), "[99]").map_err(|e| e.to_string())?;
    let (kind, why) = read_frame(&mut s).map_err(|e| e.to_string())?;
    let why = String::from_utf8_lossy(&why).into_owned();
    ensure(
        &fe,
        kind == REFUSED
            && why.contains("[99]")
            && why
                .split_once("writes version ")
                .is_some_and(|(_, v)| v.starts_with(|c: char| c.is_ascii_digit())),
        || format!("frame {kind} '{why}' instead of a refusal naming the versions"),
    )?;
    still_serving(&mut fe)?;
    upgrade(&mut fe)?;
    still_serving(&mut fe)
}

/// 100 upgrades, each after some work (2D upload and flush, a HOST3D blob created, mapped,
/// written, read and unmapped): each process holds the same number of fds and buffer
/// mappings as the one before it, and memory does not grow.
fn hundred_upgrades(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let (w, h) = (64, 32);
    let mut img = bgra_pattern(w, h, 1);
    let backing = create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    let region = fe.shmem_shared().ok_or("no host-visible region")?;
    let mut baseline: Option<ProcStats> = None;
    let mut took = Vec::new();
    for round in 0..100u32 {
        img = bgra_pattern(w, h, 100 + round);
        backing.write(&fe, 0, &img)?;
        send_expecting(
            &mut fe,
            "TRANSFER_TO_HOST_2D",
            gpu::transfer_to_host_2d(1, Rect::sized(w, h), 0),
            ty::OK_NODATA,
        )?;
        send_expecting(
            &mut fe,
            "RESOURCE_FLUSH",
            gpu::resource_flush(1, Rect::sized(w, h)),
            ty::OK_NODATA,
        )?;
        let id = 1000 + round;
        let reqs = cd.create(&mut fe, id, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        map(&mut fe, id, 0, reqs.size)?;
        let bytes = super::pattern(256, round);
        region.write(0, &bytes).map_err(|e| e.to_string())?;
        let up = upgrade(&mut fe)?;
        took.push(up.took);
        let back = region.read(0, 256).map_err(|e| e.to_string())?;
        ensure(&fe, back == bytes, || {
            format!("upgrade {round}: the mapped blob changed")
        })?;
        send_expecting(
            &mut fe,
            "RESOURCE_UNMAP_BLOB",
            gpu::resource_unmap_blob(CTX_ID, id),
            ty::OK_NODATA,
        )?;
        send_expecting(
            &mut fe,
            "RESOURCE_UNREF",
            gpu::resource_unref(id),
            ty::OK_NODATA,
        )?;
        display_matches(&fe, 0, w, h, &img).map_err(|e| format!("upgrade {round}: {e}"))?;
        // The frontend's memory-table update for the unmapped blob is through (the backend
        // closes that region's fd when it handles it): counts are compared settled.
        fe.wait_memtable_synced().map_err(|e| e.to_string())?;
        match &baseline {
            // The first processes settle (lazily opened files, allocator caches).
            None if round == 9 => baseline = Some(settled_stats(&fe)?),
            None => {}
            Some(base) => {
                // Counted once the new process is past its start (it may still be closing
                // what it used to restore).
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                let now = loop {
                    let now = stats(&fe)?;
                    let same = now.fds == base.fds && now.buffer_maps == base.buffer_maps;
                    if same || std::time::Instant::now() > deadline {
                        break now;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                ensure(
                    &fe,
                    now.fds == base.fds && now.buffer_maps == base.buffer_maps,
                    || {
                        format!(
                            "upgrade {round}: {} fds and {} buffer mappings, {} and {} after upgrade 9; fds now {:?}, then {:?}",
                            now.fds,
                            now.buffer_maps,
                            base.fds,
                            base.buffer_maps,
                            now.fd_targets,
                            base.fd_targets
                        )
                    },
                )?;
                ensure(&fe, now.rss_kib <= base.rss_kib + 8 * 1024, || {
                    format!(
                        "upgrade {round}: resident memory {} KiB, {} KiB after upgrade 9",
                        now.rss_kib, base.rss_kib
                    )
                })?;
            }
        }
    }
    ensure(&fe, fe.upgrades().len() == 100, || {
        format!("{} upgrades recorded", fe.upgrades().len())
    })?;
    display_undisturbed(&fe)?;
    log::info!(
        "100 upgrades: slowest {:?}",
        took.iter().max().copied().unwrap_or_default()
    );
    still_serving(&mut fe)
}

/// HOST3D blobs (one fd each with memfd buffers) `ids`, until `ERR_OUT_OF_MEMORY` when
/// `until_refused`; returns the ids created.
fn fd_blobs(
    fe: &mut Frontend,
    cd: &mut CrossDomain,
    ids: std::ops::Range<u32>,
    until_refused: bool,
) -> Result<Vec<u32>, String> {
    let mut created = Vec::new();
    for id in ids {
        match cd.create(fe, id, 16, 16, gpu::BLOB_FLAG_MAPPABLE) {
            Ok(_) => created.push(id),
            Err(e) if until_refused && e.contains("ERR_OUT_OF_MEMORY") => break,
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Frees the resources `ids`.
fn unref(fe: &mut Frontend, ids: &[u32]) -> CaseResult {
    for &id in ids {
        send_expecting(fe, "RESOURCE_UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    }
    Ok(())
}

/// The old process serves on after a failed upgrade: same pid, its rollback logged `count`
/// times, every blob in `ids` still known (mapping it works once, then it is unmapped).
fn rolled_back(fe: &mut Frontend, pid: Option<u32>, count: usize, ids: &[u32]) -> CaseResult {
    let same = fe.backend_pid() == pid && fe.backend_alive();
    ensure(fe, same, || {
        "the old backend is gone after a failed upgrade".into()
    })?;
    log_count(fe, "rolled back", count)?;
    for &id in ids.iter().step_by(ids.len().div_ceil(8).max(1)) {
        map(fe, id, 0, 4096)?;
        send_expecting(
            fe,
            "RESOURCE_UNMAP_BLOB after the rollback",
            gpu::resource_unmap_blob(CTX_ID, id),
            ty::OK_NODATA,
        )?;
    }
    still_serving(fe)
}

/// The new binary runs under a smaller open-file limit than the old one (an operator's unit
/// with a lower `LimitNOFILE=`): its fd budget cannot hold the guest's buffers, so its
/// restore fails (over budget) before it touches anything; it gives up, the old process
/// rolls back with every buffer, and once the guest freed enough the same new binary takes
/// over.
fn rollback_over_budget(harness: &Harness) -> CaseResult {
    use super::alloc::FD_RESERVE;
    let spec = harness
        .spec
        .clone()
        .with_limit(crate::limits::Resource::Nofile, FD_RESERVE + 100);
    let mut fe = Harness::new(spec)
        .spawn_with_options(&[], options())
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let ids = fd_blobs(&mut fe, &mut cd, 1..61, false)?;
    fe.set_upgrade_limit(crate::limits::Resource::Nofile, FD_RESERVE + 40);
    let pid = fe.backend_pid();
    upgrade_fails(
        &mut fe,
        "upgrade to a process whose fd budget is smaller than the guest's buffers",
    )?;
    // The new process exits after its ABORT; the old one logs its rollback when it reads it.
    log_count(&fe, "rolled back", 1)?;
    let log = fe.backend_log();
    ensure(
        &fe,
        log.contains("rolled back (the new process gave up: restore: ")
            && log.contains("open files wanted"),
        || "the log does not say that the restore exceeded the fd budget".into(),
    )?;
    rolled_back(&mut fe, pid, 1, &ids)?;
    // 30 blobs fit in the new process's 40 fds.
    unref(&mut fe, &ids[30..])?;
    upgrade(&mut fe)?;
    map(&mut fe, ids[0], 0, 4096)?;
    still_serving(&mut fe)
}

/// The guest holds as many buffers as its fd budget allows, more than the reserve could
/// duplicate: the old process cannot duplicate every buffer fd for the handover (the
/// open-file limit is reached). The upgrade is refused with that reason, nothing leaks, the
/// old process serves on with every buffer; with fewer buffers the upgrade works.
fn rollback_out_of_fds(harness: &Harness) -> CaseResult {
    use super::alloc::FD_RESERVE;
    // More guest fds than the reserve: duplicating them all cannot fit.
    const GUEST_FDS: u64 = FD_RESERVE + 40;
    let spec = harness
        .spec
        .clone()
        .with_limit(crate::limits::Resource::Nofile, FD_RESERVE + GUEST_FDS);
    let mut fe = Harness::new(spec)
        .spawn_with_options(&[], options())
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let before = stats(&fe)?;
    let ids = fd_blobs(&mut fe, &mut cd, 1000..1000 + 2 * GUEST_FDS as u32, true)?;
    ensure(&fe, ids.len() as u64 + 1 >= GUEST_FDS, || {
        format!("only {} blobs before the fd budget refused", ids.len())
    })?;
    let full = stats(&fe)?;
    let pid = fe.backend_pid();
    upgrade_fails(&mut fe, "upgrade with the guest's fd budget used up")?;
    ensure(
        &fe,
        fe.backend_log()
            .contains("upgrade refused: the handover duplicates"),
        || "the refusal does not say that the fds could not be duplicated".into(),
    )?;
    rolled_back(&mut fe, pid, 1, &ids)?;
    // Counted once the memory-table updates of those maps and the refused control
    // connection are through (both close fds a moment later).
    fe.wait_memtable_synced().map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let after = loop {
        let now = stats(&fe)?;
        if now.fds <= full.fds || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure(&fe, after.fds <= full.fds, || {
        format!(
            "the failed handover left {} fds open ({} before it)",
            after.fds, full.fds
        )
    })?;
    unref(&mut fe, &ids[ids.len() / 2..])?;
    upgrade(&mut fe)?;
    map(&mut fe, ids[0], 0, 4096)?;
    ensure(&fe, stats(&fe)?.fds > before.fds, || {
        "the new process does not hold the guest's buffers".into()
    })?;
    still_serving(&mut fe)
}
