//! Frontend and backend restarts, the backend's side (DESIGN-lifecycle.md 1.3 and 5):
//! with `--keep-listening`, a frontend that disconnects leaves nothing behind and the next
//! one gets a clean device; and a frontend that comes back the way QEMU resumes a started
//! device after its backend went away (new connection, the driver's rings at their used
//! index, no reset) is served from that index with a clean device: what the guest created
//! before is unknown (`ERR_INVALID_RESOURCE_ID`), a chain the guest queued while nobody
//! served the rings runs once, and new work is served and signalled.
//!
//! With `--keep-listening` the same process serves the next connection with a fresh device,
//! which is what a restarted backend process does on its first connection.

use super::blob::{map, region_empty, CrossDomain, CTX_ID};
use super::two_d::{create_filled, display_matches, show_on_scanout_0};
use super::{
    bgra_pattern, case_error, ensure, send_expecting, still_serving, Case, CaseResult, Harness,
    Need,
};
use crate::gpu::{self, features, ty, Rect};

/// Control queue index.
const CONTROL: usize = 0;

pub(super) fn cases() -> Vec<Case> {
    let blob = Need::All(vec![
        Need::OurCommandLine,
        Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
        Need::HostVisibleRegion,
    ]);
    vec![
        Case {
            name: "restart::next_frontend_gets_a_clean_device",
            need: blob,
            run: next_frontend_clean,
        },
        Case {
            name: "restart::frontend_resuming_rings_on_a_new_connection_gets_a_clean_device",
            need: Need::OurCommandLine,
            run: resumed_rings_clean,
        },
    ]
}

/// A frontend leaves a shown 2D resource with backing, a context and a mapped blob behind
/// and disconnects; the next frontend finds none of it: the ids are free, the context id
/// can be created again, the whole host-visible region is free (offset 0 maps again), and
/// the display shows what the new frontend draws.
fn next_frontend_clean(harness: &Harness) -> CaseResult {
    let mut fe = harness
        .spawn_with(&["--keep-listening"])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 10, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 10, 0, reqs.size)?;
    let (w, h) = (32, 16);
    create_filled(&mut fe, 1, w, h, &bgra_pattern(w, h, 1))?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    fe.disconnect();

    fe.connect()
        .map_err(|e| case_error(&fe, "connect a new frontend", e))?;
    region_empty(&fe, "on the new connection")?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH of the previous frontend's resource",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNREF of the previous frontend's blob",
        gpu::resource_unref(10),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    // The context id is free again, and so is offset 0 of the region.
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 10, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 10, 0, reqs.size)?;
    let img = bgra_pattern(w, h, 2);
    create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNMAP_BLOB on the new connection",
        gpu::resource_unmap_blob(CTX_ID, 10),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

/// Work on the rings, then the connection ends with the device started (stopped by a VM
/// pause first, so the chain queued next is taken by nobody); the frontend connects again and starts the same rings at
/// their used index (what QEMU does on a chardev reconnect). The backend serves from that
/// index: the queued chain runs once (its resource is new to this device), what the
/// previous connection created is unknown, and the guest gets its interrupts.
fn resumed_rings_clean(harness: &Harness) -> CaseResult {
    let mut fe = harness
        .spawn_with(&["--keep-listening"])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let (w, h) = (16, 8);
    create_filled(&mut fe, 1, w, h, &bgra_pattern(w, h, 3))?;
    // Some more work, so the rings are well past index 0.
    for id in 100..120u32 {
        send_expecting(
            &mut fe,
            "RESOURCE_CREATE_2D",
            gpu::resource_create_2d(id, gpu::format::B8G8R8A8_UNORM, 4, 4),
            ty::OK_NODATA,
        )?;
    }
    // The VM is paused (QMP `stop`) when the backend goes away, so a chain the guest adds
    // now is certainly taken by no backend before the reconnect. With --keep-listening the
    // same process serves the next connection with a fresh device, exactly as a restarted
    // backend would.
    let before = fe
        .pause()
        .map_err(|e| case_error(&fe, "GET_VRING_BASE before the reconnect", e))?;
    let queued = gpu::resource_create_2d(200, gpu::format::B8G8R8A8_UNORM, 4, 4).into_bytes();
    let head = fe
        .send(CONTROL, &[&queued], 64)
        .map_err(|e| case_error(&fe, "queue a command while the rings are stopped", e))?;
    let bases = fe
        .reconnect_resuming()
        .map_err(|e| case_error(&fe, "reconnect resuming the rings", e))?;
    ensure(
        &fe,
        bases.first() == before.first() && bases[0] > 20,
        || format!("resumed at {bases:?}, the backend reported {before:?} at the stop"),
    )?;
    // wait_for_head sleeps on the call eventfd only: the guest's interrupt is checked too.
    let bytes = fe
        .wait_for_head(CONTROL, head)
        .map_err(|e| case_error(&fe, "the command queued while disconnected", e))?;
    let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
    ensure(&fe, r.ty == ty::OK_NODATA, || {
        format!(
            "the command queued while disconnected answered {}",
            ty::name(r.ty)
        )
    })?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D of the id the queued command created (it ran once)",
        gpu::resource_create_2d(200, gpu::format::B8G8R8A8_UNORM, 4, 4),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNREF of a resource the previous connection created",
        gpu::resource_unref(1),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    let img = bgra_pattern(w, h, 4);
    create_filled(&mut fe, 1, w, h, &img)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    still_serving(&mut fe)
}
