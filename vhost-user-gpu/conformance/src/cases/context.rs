//! Context cases: capsets, CTX_* commands and their errors, malformed cross-domain command
//! streams in SUBMIT_3D, and destroying a context whose blob is mapped.

use super::blob::{map, no_leaks, region_empty, CrossDomain, CTX_ID};
use super::{ctrl, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::cross_domain;
use crate::frontend::Frontend;
use crate::gpu::{self, features, format, ty};

pub(super) fn cases() -> Vec<Case> {
    let need = Need::Features(features::CONTEXT_INIT);
    vec![
        Case {
            name: "ctx::capset_cross_domain",
            need: need.clone(),
            run: capset_cross_domain,
        },
        Case {
            name: "ctx::lifecycle_and_errors",
            need: need.clone(),
            run: lifecycle_and_errors,
        },
        Case {
            name: "ctx::malformed_cross_domain_streams",
            need: Need::Features(features::CONTEXT_INIT | features::RESOURCE_BLOB),
            run: malformed_streams,
        },
        Case {
            name: "ctx::virgl_3d_commands_refused_without_virgl_context",
            need: Need::Features(features::CONTEXT_INIT),
            run: virgl_refused,
        },
        Case {
            name: "ctx::destroy_while_mapped",
            need: Need::All(vec![
                Need::Features(features::CONTEXT_INIT | features::RESOURCE_BLOB),
                Need::HostVisibleRegion,
            ]),
            run: destroy_while_mapped,
        },
    ]
}

fn spawn(harness: &Harness) -> Result<Frontend, String> {
    harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))
}

/// `r` must be exactly the error `t`.
fn is_err(fe: &Frontend, what: &str, r: &gpu::Resp, t: u32) -> CaseResult {
    ensure(fe, r.ty == t, || {
        format!("{what} answered {}, expected {}", r.name(), ty::name(t))
    })
}

fn capset_cross_domain(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cfg = fe.config_space().to_vec();
    let num = cfg
        .get(12..16)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut found = None;
    for i in 0..num {
        let info = send_expecting(
            &mut fe,
            "GET_CAPSET_INFO",
            gpu::get_capset_info(i),
            ty::OK_CAPSET_INFO,
        )?
        .capset_info()
        .map_err(|e| e.to_string())?;
        if info.id == gpu::CAPSET_CROSS_DOMAIN {
            found = Some(info);
        }
    }
    let info = found.ok_or_else(|| format!("no cross-domain capset among {num}"))?;
    let r = send_expecting(
        &mut fe,
        "GET_CAPSET cross-domain",
        gpu::get_capset(info.id, info.max_version),
        ty::OK_CAPSET,
    )?;
    ensure(
        &fe,
        r.body.len() >= info.max_size as usize && info.max_size >= 16,
        || {
            format!(
                "capset of {} bytes, info says {}",
                r.body.len(),
                info.max_size
            )
        },
    )?;
    let r = ctrl(
        &mut fe,
        "GET_CAPSET of unknown capset 99",
        gpu::get_capset(99, 0),
    )?;
    is_err(&fe, "GET_CAPSET 99", &r, ty::ERR_INVALID_PARAMETER)?;
    let r = ctrl(
        &mut fe,
        "GET_CAPSET of a version past max",
        gpu::get_capset(info.id, info.max_version + 1),
    )?;
    is_err(
        &fe,
        "GET_CAPSET version past max",
        &r,
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn lifecycle_and_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cd = gpu::CAPSET_CROSS_DOMAIN;
    send_expecting(
        &mut fe,
        "CTX_CREATE 1",
        gpu::ctx_create(1, cd, "a"),
        ty::OK_NODATA,
    )?;
    let r = ctrl(&mut fe, "CTX_CREATE 1 again", gpu::ctx_create(1, cd, "b"))?;
    is_err(
        &fe,
        "CTX_CREATE of an existing id",
        &r,
        ty::ERR_INVALID_CONTEXT_ID,
    )?;
    let r = ctrl(&mut fe, "CTX_CREATE 0", gpu::ctx_create(0, cd, "zero"))?;
    is_err(&fe, "CTX_CREATE with id 0", &r, ty::ERR_INVALID_CONTEXT_ID)?;
    let r = ctrl(
        &mut fe,
        "CTX_CREATE capset 200",
        gpu::ctx_create(2, 200, "bad"),
    )?;
    is_err(
        &fe,
        "CTX_CREATE with an unknown capset",
        &r,
        ty::ERR_INVALID_PARAMETER,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D",
        gpu::resource_create_2d(5, format::B8G8R8A8_UNORM, 8, 8),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CTX_ATTACH_RESOURCE",
        gpu::ctx_attach_resource(1, 5),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CTX_ATTACH_RESOURCE unknown context",
        gpu::ctx_attach_resource(9, 5),
        ty::ERR_INVALID_CONTEXT_ID,
    )?;
    send_expecting(
        &mut fe,
        "CTX_ATTACH_RESOURCE unknown resource",
        gpu::ctx_attach_resource(1, 77),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    send_expecting(
        &mut fe,
        "CTX_DETACH_RESOURCE",
        gpu::ctx_detach_resource(1, 5),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "SUBMIT_3D unknown context",
        gpu::submit_3d(9, &cross_domain::init(5, cross_domain::RING_NONE, 0)),
        ty::ERR_INVALID_CONTEXT_ID,
    )?;
    send_expecting(&mut fe, "CTX_DESTROY 1", gpu::ctx_destroy(1), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "CTX_DESTROY 1 again",
        gpu::ctx_destroy(1),
        ty::ERR_INVALID_CONTEXT_ID,
    )?;
    // The id is free again.
    send_expecting(
        &mut fe,
        "CTX_CREATE 1 after destroy",
        gpu::ctx_create(1, cd, "c"),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

fn malformed_streams(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let good = cross_domain::get_image_requirements(16, 16, cross_domain::DRM_FORMAT_ARGB8888, 0);
    let mut zero_size = good.clone();
    zero_size[2..4].copy_from_slice(&0u16.to_le_bytes());
    let mut too_long = good.clone();
    too_long[2..4].copy_from_slice(&200u16.to_le_bytes());
    let mut unknown = good.clone();
    unknown[0] = 99;
    // Streams that cannot be parsed, commands no released guest sends (99) and values out
    // of range are bad parameters.
    let invalid = ty::ERR_INVALID_PARAMETER;
    let streams: [(&str, Vec<u8>, u32); 7] = [
        ("cmd_size 0", zero_size, invalid),
        ("cmd_size past the stream", too_long, invalid),
        ("unknown command 99", unknown, invalid),
        ("3-byte stream", vec![2, 0, 24], invalid),
        (
            "0x0 image",
            cross_domain::get_image_requirements(0, 0, cross_domain::DRM_FORMAT_ARGB8888, 0),
            invalid,
        ),
        (
            "100000x100000 image",
            cross_domain::get_image_requirements(
                100_000,
                100_000,
                cross_domain::DRM_FORMAT_ARGB8888,
                0,
            ),
            invalid,
        ),
        (
            "unknown DRM format",
            cross_domain::get_image_requirements(16, 16, 0x1234_5678, 0),
            invalid,
        ),
    ];
    for (what, stream, t) in streams {
        let r = ctrl(&mut fe, what, gpu::submit_3d(CTX_ID, &stream))?;
        is_err(&fe, &format!("SUBMIT_3D with {what}"), &r, t)?;
    }
    // A second INIT of the same context and an INIT naming an unknown ring resource.
    let r = ctrl(
        &mut fe,
        "INIT with unknown ring",
        gpu::submit_3d(
            CTX_ID,
            &cross_domain::init(4242, cross_domain::RING_NONE, 0),
        ),
    )?;
    is_err(
        &fe,
        "CROSS_DOMAIN_CMD_INIT with an unknown query ring",
        &r,
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    // The context still answers good queries.
    cd.create(&mut fe, 1, 16, 16, gpu::BLOB_FLAG_MAPPABLE)?;
    still_serving(&mut fe)
}

fn destroy_while_mapped(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let before = fe.backend_stats().map_err(|e| e.to_string())?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    send_expecting(
        &mut fe,
        "CTX_DESTROY with a mapped blob",
        gpu::ctx_destroy(CTX_ID),
        ty::OK_NODATA,
    )?;
    // The blob is a resource of the device, not of the context: it may stay mapped until
    // it is unmapped or unreferenced; after UNREF nothing may remain.
    let _ = ctrl(
        &mut fe,
        "UNMAP_BLOB after CTX_DESTROY",
        gpu::resource_unmap_blob(CTX_ID, 1),
    )?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(1), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "UNREF query ring",
        gpu::resource_unref(super::blob::RING_RES),
        ty::OK_NODATA,
    )?;
    region_empty(&fe, "CTX_DESTROY + UNREF")?;
    no_leaks(&mut fe, &before)?;
    still_serving(&mut fe)
}

/// A cross-domain context has no 3D resources: CREATE_3D and 3D transfers of a 2D resource
/// must get error responses, not a crash.
fn virgl_refused(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    send_expecting(
        &mut fe,
        "CTX_CREATE",
        gpu::ctx_create(1, gpu::CAPSET_CROSS_DOMAIN, "x"),
        ty::OK_NODATA,
    )?;
    let r = ctrl(
        &mut fe,
        "RESOURCE_CREATE_3D",
        gpu::resource_create_3d(1, 1, format::B8G8R8A8_UNORM, 16, 16),
    )?;
    is_err(
        &fe,
        "RESOURCE_CREATE_3D in a cross-domain context",
        &r,
        ty::ERR_UNSPEC,
    )?;
    let r = ctrl(
        &mut fe,
        "RESOURCE_CREATE_3D without context",
        gpu::resource_create_3d(0, 2, format::B8G8R8A8_UNORM, 16, 16),
    )?;
    is_err(
        &fe,
        "RESOURCE_CREATE_3D without a context",
        &r,
        ty::ERR_UNSPEC,
    )?;
    // Our backend has no virgl renderer here: its log line must say so and what to use.
    if fe.peer() == crate::frontend::Peer::Ours {
        let log = fe.backend_log();
        ensure(
            &fe,
            log.contains("RESOURCE_CREATE_3D")
                && log.contains("no virgl renderer")
                && log.contains("--capset virgl")
                && log.contains("cross-domain"),
            || {
                "the backend's log should name the refused RESOURCE_CREATE_3D, say there is no \
                 virgl renderer and what to configure instead (--capset virgl, or \
                 cross-domain)"
                    .to_string()
            },
        )?;
    }
    send_expecting(
        &mut fe,
        "CREATE_2D",
        gpu::resource_create_2d(3, format::B8G8R8A8_UNORM, 16, 16),
        ty::OK_NODATA,
    )?;
    let b = gpu::Box3d {
        origin: [0, 0, 0],
        size: [16, 16, 1],
    };
    let r = ctrl(
        &mut fe,
        "TRANSFER_TO_HOST_3D of a 2D resource",
        gpu::transfer_to_host_3d(1, 3, b, 0, 64),
    )?;
    is_err(
        &fe,
        "TRANSFER_TO_HOST_3D of a 2D resource without backing",
        &r,
        ty::ERR_UNSPEC,
    )?;
    let r = ctrl(
        &mut fe,
        "TRANSFER_FROM_HOST_3D unknown resource",
        gpu::transfer_from_host_3d(1, 77, b, 0, 64),
    )?;
    is_err(
        &fe,
        "TRANSFER_FROM_HOST_3D of an unknown resource",
        &r,
        ty::ERR_UNSPEC,
    )?;
    still_serving(&mut fe)
}
