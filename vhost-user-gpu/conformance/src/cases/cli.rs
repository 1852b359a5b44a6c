//! Cases for this project's command line: outputs and resolution, resource limits, a
//! disabled host-visible region, and a frontend that refuses `SHMEM_MAP`.

use super::blob::{no_leaks, CrossDomain, CTX_ID};
use super::two_d::create_filled;
use super::{
    bgra_pattern, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need,
    DISPLAY_WAIT,
};
use crate::frontend::Frontend;
use crate::gpu::{self, features, format, ty, Rect};

pub(super) fn cases() -> Vec<Case> {
    let host = Need::All(vec![
        Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
        Need::HostVisibleRegion,
        Need::OurCommandLine,
    ]);
    vec![
        Case {
            name: "cli::two_outputs",
            need: Need::OurCommandLine,
            run: two_outputs,
        },
        Case {
            name: "cli::max_resources",
            need: Need::OurCommandLine,
            run: max_resources,
        },
        Case {
            name: "cli::max_resource_memory",
            need: Need::OurCommandLine,
            run: max_resource_memory,
        },
        Case {
            name: "cli::hostmem_0_disables_mapping",
            need: Need::All(vec![
                Need::OurCommandLine,
                Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
            ]),
            run: hostmem_0,
        },
        Case {
            name: "cli::frontend_refuses_shmem_map",
            need: host,
            run: frontend_refuses_map,
        },
    ]
}

fn spawn(harness: &Harness, extra: &[&str]) -> Result<Frontend, String> {
    harness
        .spawn_with(extra)
        .map_err(|e| format!("cannot start backend: {e}"))
}

fn two_outputs(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--outputs", "2", "--resolution", "800x600"])?;
    let num_scanouts = fe
        .config_space()
        .get(8..12)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    ensure(&fe, num_scanouts == 2, || {
        format!("config space num_scanouts {num_scanouts}, expected 2")
    })?;
    let modes = send_expecting(
        &mut fe,
        "GET_DISPLAY_INFO",
        gpu::get_display_info(),
        ty::OK_DISPLAY_INFO,
    )?
    .display_info()
    .map_err(|e| e.to_string())?;
    let enabled = modes.iter().filter(|m| m.enabled).count();
    ensure(
        &fe,
        enabled >= 1 && !modes[2..].iter().any(|m| m.enabled),
        || format!("display info {:?}", &modes[..3]),
    )?;
    let img = bgra_pattern(32, 24, 41);
    create_filled(&mut fe, 1, 32, 24, &img)?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT on scanout 1",
        gpu::set_scanout(1, 1, Rect::sized(32, 24)),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "FLUSH",
        gpu::resource_flush(1, Rect::sized(32, 24)),
        ty::OK_NODATA,
    )?;
    super::two_d::display_matches(&fe, 1, 32, 24, &img)?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT on scanout 2",
        gpu::set_scanout(2, 1, Rect::sized(32, 24)),
        ty::ERR_INVALID_SCANOUT_ID,
    )?;
    let display = fe.display().ok_or("no display")?;
    ensure(
        &fe,
        display.wait_for(DISPLAY_WAIT, |st| !st.scanouts.contains_key(&2)),
        || "scanout 2 reached the display".into(),
    )?;
    still_serving(&mut fe)
}

fn max_resources(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--max-resources", "4"])?;
    for id in 1..=4 {
        send_expecting(
            &mut fe,
            "CREATE_2D within the limit",
            gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, 8, 8),
            ty::OK_NODATA,
        )?;
    }
    send_expecting(
        &mut fe,
        "CREATE_2D past --max-resources",
        gpu::resource_create_2d(5, format::B8G8R8A8_UNORM, 8, 8),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(1), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "CREATE_2D after an UNREF",
        gpu::resource_create_2d(5, format::B8G8R8A8_UNORM, 8, 8),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

fn max_resource_memory(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--max-resource-memory", "1M"])?;
    // 1024x1024x4 = 4 MiB: over the limit.
    send_expecting(
        &mut fe,
        "CREATE_2D of 4 MiB with a 1 MiB limit",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 1024, 1024),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    // A guest-controlled size that overflows 32 bits must not wrap into a small allocation.
    send_expecting(
        &mut fe,
        "CREATE_2D of 65535x65535 (16 GiB) with a 1 MiB limit",
        gpu::resource_create_2d(2, format::B8G8R8A8_UNORM, 65535, 65535),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    send_expecting(
        &mut fe,
        "CREATE_2D of 256 KiB",
        gpu::resource_create_2d(3, format::B8G8R8A8_UNORM, 256, 256),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

fn hostmem_0(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--hostmem", "0"])?;
    ensure(&fe, fe.shmem().is_none(), || {
        "--hostmem 0 but the backend announced a host-visible region".into()
    })?;
    let mut cd = CrossDomain::init(&mut fe)?;
    if let Err(e) = cd.create(&mut fe, 1, 16, 16, gpu::BLOB_FLAG_MAPPABLE) {
        // Refusing MAPPABLE blobs without a region is as good as refusing the map.
        ensure(&fe, e.contains("ERR_"), || e.clone())?;
    }
    // No region: the backend refuses without asking anyone (ERR_UNSPEC, as for a map the
    // frontend refuses: the guest's mmap() fails with EINVAL).
    send_expecting(
        &mut fe,
        "MAP_BLOB without a region",
        gpu::resource_map_blob(CTX_ID, 1, 0),
        ty::ERR_UNSPEC,
    )?;
    still_serving(&mut fe)
}

fn frontend_refuses_map(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let before = fe.backend_stats().map_err(|e| e.to_string())?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    fe.shmem().ok_or("no region")?.set_refuse_maps(true);
    super::refused(
        &mut fe,
        "MAP_BLOB the frontend refuses",
        gpu::resource_map_blob(CTX_ID, 1, 0),
        ty::ERR_UNSPEC,
        super::RefusedBy::Frontend,
    )?;
    fe.shmem().ok_or("no region")?.set_refuse_maps(false);
    // The resource stays usable: mapping works once the frontend agrees.
    super::blob::map(&mut fe, 1, 0, reqs.size)?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(1), ty::OK_NODATA)?;
    no_leaks(&mut fe, &before)?;
    still_serving(&mut fe)
}
