//! What a VM does to its GPU besides sending commands (DESIGN-lifecycle.md): a pause
//! (QMP `stop`/`cont`: the rings stop and restart at the reported base) keeps every resource,
//! context, mapping and scanout; commands the guest queued while paused run after `cont`,
//! once; a pause that catches the backend waiting for a `SHMEM_MAP` answer neither deadlocks
//! nor loses or repeats the command; a reset the way QEMU 11.1 does it (rings restart at 0,
//! no `RESET_DEVICE`) frees everything.

use std::time::Duration;

use super::blob::{map, no_leaks, CrossDomain, CTX_ID};
use super::two_d::{create_filled, display_matches, show_on_scanout_0};
use super::{
    bgra_pattern, case_error, ensure, send_expecting, still_serving, Case, CaseResult, Harness,
    Need,
};
use crate::frontend::Frontend;
use crate::gpu::{self, features, ty, Rect};
use crate::proc_stats::ProcStats;

/// Control queue index.
const CONTROL: usize = 0;

pub(super) fn cases() -> Vec<Case> {
    let blob = Need::All(vec![
        Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
        Need::HostVisibleRegion,
    ]);
    vec![
        Case {
            name: "lifecycle::pause_keeps_2d_state",
            need: Need::Nothing,
            run: pause_keeps_2d_state,
        },
        Case {
            name: "lifecycle::pause_keeps_blobs_contexts_mappings",
            need: blob.clone(),
            run: pause_keeps_blobs,
        },
        Case {
            name: "lifecycle::commands_queued_while_paused_run_once_after",
            need: Need::Nothing,
            run: queued_while_paused,
        },
        Case {
            name: "lifecycle::pause_while_backend_waits_for_shmem_map",
            need: blob.clone(),
            run: pause_during_map,
        },
        Case {
            name: "lifecycle::reset_by_ring_restart_frees_everything",
            need: Need::Nothing,
            run: reset_by_ring_restart,
        },
    ]
}

fn spawn(harness: &Harness) -> Result<Frontend, String> {
    harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))
}

fn stats(fe: &Frontend) -> Result<ProcStats, String> {
    fe.backend_stats().map_err(|e| e.to_string())
}

fn pause(fe: &mut Frontend) -> Result<Vec<u16>, String> {
    fe.pause()
        .map_err(|e| case_error(fe, "pause (QMP stop)", e))
}

fn resume(fe: &mut Frontend, bases: &[u16]) -> CaseResult {
    fe.resume(bases)
        .map_err(|e| case_error(fe, "resume (QMP cont)", e))
}

/// A 2D resource on scanout 0 survives three pauses: after each, a transfer and flush of
/// new pixels on the same resource reach the display.
fn pause_keeps_2d_state(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let (w, h) = (32, 16);
    let img = bgra_pattern(w, h, 3);
    let backing = create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    for round in 0..3u32 {
        let bases = pause(&mut fe)?;
        resume(&mut fe, &bases)?;
        let img = bgra_pattern(w, h, 10 + round);
        backing.write(&fe, 0, &img)?;
        send_expecting(
            &mut fe,
            "TRANSFER_TO_HOST_2D after the pause",
            gpu::transfer_to_host_2d(1, Rect::sized(w, h), 0),
            ty::OK_NODATA,
        )?;
        // QEMU 10 gives a new display channel on `cont`: the scanout must show there.
        show_on_scanout_0(&mut fe, 1, w, h)?;
        display_matches(&fe, 0, w, h, &img).map_err(|e| format!("after pause {round}: {e}"))?;
    }
    still_serving(&mut fe)
}

/// A context, a mapped HOST3D blob (with bytes written through the mapping) and a GUEST blob
/// survive pauses: the frontend's mapping still holds the bytes, the blob unmaps and maps
/// again, the context answers a new query and a new blob maps.
fn pause_keeps_blobs(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    let region = fe.shmem_shared().ok_or("no host-visible region")?;
    let bytes = super::pattern(64, 77);
    region.write(0, &bytes).map_err(|e| e.to_string())?;
    for round in 0..3 {
        let bases = pause(&mut fe)?;
        resume(&mut fe, &bases)?;
        ensure(&fe, region.mappings().iter().any(|&(o, _)| o == 0), || {
            format!("after pause {round} the frontend lost the mapping")
        })?;
        let now = region.read(0, 64).map_err(|e| e.to_string())?;
        ensure(&fe, now == bytes, || {
            format!("after pause {round} the blob reads {now:02x?}")
        })?;
    }
    send_expecting(
        &mut fe,
        "RESOURCE_UNMAP_BLOB after the pauses",
        gpu::resource_unmap_blob(CTX_ID, 1),
        ty::OK_NODATA,
    )?;
    map(&mut fe, 1, 0, reqs.size)?;
    let again = region.read(0, 64).map_err(|e| e.to_string())?;
    ensure(&fe, again == bytes, || {
        format!("mapped again, the blob reads {again:02x?}")
    })?;
    let more = cd.create(&mut fe, 2, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 2, reqs.size.next_multiple_of(4096), more.size)?;
    still_serving(&mut fe)
}

/// Commands put on the ring (and kicked) while the rings are stopped are not touched (no used
/// entry appears) and run once, in order, after the rings restart. A backend that loses the
/// kicks it got while stopped hangs here.
fn queued_while_paused(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let bases = pause(&mut fe)?;
    let mut heads = Vec::new();
    for id in 1..=5u32 {
        let cmd = gpu::resource_create_2d(id, gpu::format::B8G8R8A8_UNORM, 8, 8).into_bytes();
        heads.push(
            fe.send(CONTROL, &[&cmd], 64)
                .map_err(|e| case_error(&fe, "queue a command while paused", e))?,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let early = fe.has_used(CONTROL).map_err(|e| e.to_string())?;
    ensure(&fe, !early, || {
        "the backend completed a command while its rings were stopped".into()
    })?;
    // What the guest saw before: nothing pending on its interrupt.
    while fe
        .wait_notified(CONTROL, Duration::ZERO)
        .map_err(|e| e.to_string())?
    {}
    resume(&mut fe, &bases)?;
    // The guest sleeps until its interrupt: the backend must raise it on the notifier the
    // guest has after `cont` (QEMU swaps notifiers at the end of the restart).
    let notified = fe
        .wait_notified(CONTROL, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    ensure(&fe, notified, || {
        "no interrupt reached the guest's notifier after cont: the guest would wait forever".into()
    })?;
    for (n, head) in heads.into_iter().enumerate() {
        let bytes = fe
            .wait_for_head(CONTROL, head)
            .map_err(|e| case_error(&fe, "command queued while paused", e))?;
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(&fe, r.ty == ty::OK_NODATA, || {
            format!(
                "command {n} queued while paused answered {}",
                ty::name(r.ty)
            )
        })?;
    }
    // Each ran exactly once: the ids exist (a second create of one fails).
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D of an id created while paused",
        gpu::resource_create_2d(3, gpu::format::B8G8R8A8_UNORM, 8, 8),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    still_serving(&mut fe)
}

/// The frontend stops the rings while the backend waits for its answer to a `SHMEM_MAP`
/// (QEMU cannot answer while it waits for `GET_VRING_BASE`): the stop must be answered anyway
/// (no deadlock), the command must not complete into guest memory while stopped, and after
/// `cont` it completes exactly once with the mapping in place.
fn pause_during_map(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    let region = fe.shmem_shared().ok_or("no host-visible region")?;
    region.hold_maps();
    let cmd = gpu::resource_map_blob(CTX_ID, 1, 0).into_bytes();
    let head = fe
        .send(CONTROL, &[&cmd], 64)
        .map_err(|e| case_error(&fe, "RESOURCE_MAP_BLOB", e))?;
    if !region.wait_map_held(Duration::from_secs(10)) {
        region.release_maps();
        return Err(case_error(
            &fe,
            "SHMEM_MAP",
            "the backend never asked to map",
        ));
    }
    // The stop, while the backend waits for us: answered at once or this hangs.
    let (tx, rx) = std::sync::mpsc::channel();
    let releaser = {
        let region = region.clone();
        std::thread::spawn(move || {
            // Hang guard only: a backend that waits for the map answer inside
            // GET_VRING_BASE deadlocks a real QEMU; here the answer comes after 20 s.
            if rx.recv_timeout(Duration::from_secs(20)).is_err() {
                region.release_maps();
            }
        })
    };
    let started = std::time::Instant::now();
    let bases = pause(&mut fe);
    let waited = started.elapsed();
    let _ = tx.send(());
    let _ = releaser.join();
    let bases = match bases {
        Ok(b) => b,
        Err(e) => {
            region.release_maps();
            return Err(e);
        }
    };
    ensure(&fe, waited < Duration::from_secs(10), || {
        format!("GET_VRING_BASE waited {waited:?} for a command that waits for the frontend")
    })?;
    region.release_maps();
    std::thread::sleep(Duration::from_millis(300));
    let early = fe.has_used(CONTROL).map_err(|e| e.to_string())?;
    ensure(&fe, !early, || {
        "the MAP_BLOB completed into guest memory while the rings were stopped".into()
    })?;
    resume(&mut fe, &bases)?;
    let bytes = fe
        .wait_for_head(CONTROL, head)
        .map_err(|e| case_error(&fe, "RESOURCE_MAP_BLOB after the pause", e))?;
    let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
    ensure(&fe, r.ty == ty::OK_MAP_INFO, || {
        format!(
            "RESOURCE_MAP_BLOB answered {} after the pause",
            ty::name(r.ty)
        )
    })?;
    ensure(
        &fe,
        region
            .mappings()
            .iter()
            .any(|&(o, l)| o == 0 && l >= reqs.size),
        || format!("no mapping after the pause: {:?}", region.mappings()),
    )?;
    // Exactly once: the blob is mapped, so mapping it again is refused.
    send_expecting(
        &mut fe,
        "RESOURCE_MAP_BLOB again",
        gpu::resource_map_blob(CTX_ID, 1, 0x10_0000),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

/// QEMU 11.1 resets the device without `RESET_DEVICE`: the rings stop, and the rebooted
/// driver starts new rings at base 0. Everything must be gone: ids are free again, the
/// backend holds no more buffers than before.
fn reset_by_ring_restart(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let before = stats(&fe)?;
    let (w, h) = (32, 16);
    let img = bgra_pattern(w, h, 5);
    create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    fe.reset_without_reset_device()
        .map_err(|e| case_error(&fe, "reset (rings restarted at 0)", e))?;
    no_leaks(&mut fe, &before)?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D of the id the reset freed",
        gpu::resource_create_2d(1, gpu::format::B8G8R8A8_UNORM, w, h),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}
