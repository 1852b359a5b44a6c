//! Every bounds check a guest can reach, at its edge: the exact fit is accepted, one past it
//! is refused with the exact error, and everything else about the request (the backing,
//! the blob, the region) is large enough that only the checked bound can refuse.
//!
//! A check that is off by one fails here: a transfer rectangle one row past the resource's
//! height, with a backing that holds that row, is refused by the rectangle check and by
//! nothing else (a device that let it through would copy out of bounds).

use super::blob::{self, CrossDomain, CTX_ID};
use super::two_d::Backing;
use super::{
    ctrl, ensure, refused, send_expecting, still_serving, Case, CaseResult, Harness, Need,
    RefusedBy,
};
use crate::frontend::{Frontend, CONTROL_QUEUE, CURSOR_QUEUE};
use crate::gpu::{self, features, format, ty, BlobLayout, Cmd, MemEntry, Rect};
use crate::virtq::RawDesc;

fn blob_need() -> Need {
    Need::Features(features::RESOURCE_BLOB)
}
fn ctx_need() -> Need {
    Need::Features(features::VIRGL | features::CONTEXT_INIT | features::RESOURCE_BLOB)
}

pub(super) fn cases() -> Vec<Case> {
    let case = |name, need, run| Case { name, need, run };
    vec![
        case("bounds::transfer_rect_x", Need::Nothing, transfer_rect_x),
        case("bounds::transfer_rect_y", Need::Nothing, transfer_rect_y),
        case("bounds::transfer_offset", Need::Nothing, transfer_offset),
        case("bounds::flush_rect", Need::Nothing, flush_rect),
        case("bounds::set_scanout_rect", Need::Nothing, set_scanout_rect),
        case("bounds::scanout_id", Need::Nothing, scanout_id),
        case("bounds::cursor_size", Need::Nothing, cursor_size),
        case("bounds::entry_count", Need::Nothing, entry_count),
        case("bounds::request_bytes", Need::Nothing, request_bytes),
        case(
            "bounds::scanout_blob_layout",
            blob_need(),
            scanout_blob_layout,
        ),
        case("bounds::guest_blob_size", blob_need(), guest_blob_size),
        case("bounds::host_blob_size", ctx_need(), host_blob_size),
        case(
            "bounds::image_requirement_sides",
            ctx_need(),
            image_requirement_sides,
        ),
        case(
            "bounds::submit_size",
            Need::Features(features::VIRGL),
            submit_size,
        ),
        case(
            "bounds::map_offset_at_region_end",
            Need::All(vec![ctx_need(), Need::HostVisibleRegion]),
            map_offset_at_region_end,
        ),
    ]
}

fn spawn(harness: &Harness) -> Result<Frontend, String> {
    harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))
}

fn ok(fe: &mut Frontend, what: &str, cmd: Cmd) -> CaseResult {
    send_expecting(fe, what, cmd, ty::OK_NODATA).map(|_| ())
}

/// `fit` must be accepted (`OK_NODATA`), `past` refused with `t`.
fn edge(fe: &mut Frontend, what: &str, fit: Cmd, past: Cmd, t: u32) -> CaseResult {
    ok(fe, &format!("{what}: exact fit"), fit)?;
    send_expecting(fe, &format!("{what}: one past"), past, t).map(|_| ())
}

const W: u32 = 16;
const H: u32 = 16;

/// A 16x16 2D resource with a backing of `extra` bytes more than its pixels.
fn resource(fe: &mut Frontend, id: u32, extra: usize) -> Result<Backing, String> {
    ok(
        fe,
        "CREATE_2D 16x16",
        gpu::resource_create_2d(id, format::B8G8R8X8_UNORM, W, H),
    )?;
    let backing = Backing::new(fe, (W * H * 4) as usize + extra)?;
    ok(
        fe,
        "ATTACH_BACKING",
        gpu::resource_attach_backing(id, &backing.entries),
    )?;
    Ok(backing)
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn transfer_rect_x(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    // The backing holds a whole extra row and more: only the rectangle check can refuse.
    resource(&mut fe, 1, 4096)?;
    let t = |r| gpu::transfer_to_host_2d(1, r, 0);
    edge(
        &mut fe,
        "TRANSFER x + width",
        t(rect(8, 0, 8, H)),
        t(rect(9, 0, 8, H)),
        ty::ERR_INVALID_PARAMETER,
    )?;
    edge(
        &mut fe,
        "TRANSFER width",
        t(rect(0, 0, W, 1)),
        t(rect(0, 0, W + 1, 1)),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn transfer_rect_y(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    resource(&mut fe, 1, 4096)?;
    let t = |r| gpu::transfer_to_host_2d(1, r, 0);
    // One row past the resource's height, with a backing holding that row.
    edge(
        &mut fe,
        "TRANSFER y + height",
        t(rect(0, 8, W, 8)),
        t(rect(0, 9, W, 8)),
        ty::ERR_INVALID_PARAMETER,
    )?;
    edge(
        &mut fe,
        "TRANSFER height",
        t(rect(0, 0, W, H)),
        t(rect(0, 0, W, H + 1)),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn transfer_offset(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    // A backing of exactly the image: the offset is the only thing that can overrun it.
    resource(&mut fe, 1, 0)?;
    let t = |r, offset| gpu::transfer_to_host_2d(1, r, offset);
    edge(
        &mut fe,
        "TRANSFER 16x16 offset",
        t(rect(0, 0, W, H), 0),
        t(rect(0, 0, W, H), 1),
        ty::ERR_INVALID_PARAMETER,
    )?;
    // 15 rows from 64 bytes in end exactly at the backing's end.
    edge(
        &mut fe,
        "TRANSFER 16x15 offset",
        t(rect(0, 0, W, H - 1), 64),
        t(rect(0, 0, W, H - 1), 65),
        ty::ERR_INVALID_PARAMETER,
    )?;
    // A partial row: the last row only needs its own pixels.
    edge(
        &mut fe,
        "TRANSFER 8x16 offset",
        t(rect(0, 0, 8, H), 32),
        t(rect(0, 0, 8, H), 33),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn flush_rect(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    resource(&mut fe, 1, 0)?;
    ok(
        &mut fe,
        "SET_SCANOUT",
        gpu::set_scanout(0, 1, rect(0, 0, W, H)),
    )?;
    let f = |r| gpu::resource_flush(1, r);
    for (what, fit, past) in [
        ("x", rect(8, 0, 8, H), rect(9, 0, 8, H)),
        ("y", rect(0, 8, W, 8), rect(0, 9, W, 8)),
        ("width", rect(0, 0, W, H), rect(0, 0, W + 1, H)),
        ("height", rect(0, 0, W, H), rect(0, 0, W, H + 1)),
    ] {
        edge(
            &mut fe,
            &format!("RESOURCE_FLUSH {what}"),
            f(fit),
            f(past),
            ty::ERR_INVALID_PARAMETER,
        )?;
    }
    still_serving(&mut fe)
}

fn set_scanout_rect(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    resource(&mut fe, 1, 0)?;
    let s = |r| gpu::set_scanout(0, 1, r);
    for (what, fit, past) in [
        ("x", rect(8, 0, 8, H), rect(9, 0, 8, H)),
        ("y", rect(0, 8, W, 8), rect(0, 9, W, 8)),
        ("width", rect(0, 0, W, H), rect(0, 0, W + 1, H)),
        ("height", rect(0, 0, W, H), rect(0, 0, W, H + 1)),
    ] {
        edge(
            &mut fe,
            &format!("SET_SCANOUT {what}"),
            s(fit),
            s(past),
            ty::ERR_INVALID_PARAMETER,
        )?;
    }
    still_serving(&mut fe)
}

fn scanout_id(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    resource(&mut fe, 1, 0)?;
    let r = send_expecting(
        &mut fe,
        "GET_DISPLAY_INFO",
        gpu::get_display_info(),
        ty::OK_DISPLAY_INFO,
    )?;
    let scanouts = fe.config_space().get(8..12).map_or(1, |b| {
        u32::from_le_bytes(b.try_into().unwrap_or([1, 0, 0, 0]))
    });
    ensure(&fe, !r.body.is_empty() && scanouts >= 1, || {
        format!("num_scanouts {scanouts}")
    })?;
    edge(
        &mut fe,
        "SET_SCANOUT scanout_id",
        gpu::set_scanout(scanouts - 1, 1, rect(0, 0, W, H)),
        gpu::set_scanout(scanouts, 1, rect(0, 0, W, H)),
        ty::ERR_INVALID_SCANOUT_ID,
    )?;
    still_serving(&mut fe)
}

/// A cursor command with room for the response (the Linux driver gives none; the device
/// answers anyway where it can), and its response type.
fn cursor_answer(fe: &mut Frontend, what: &str, cmd: Cmd) -> Result<u32, String> {
    fe.send(CURSOR_QUEUE, &[&cmd.into_bytes()], 64)
        .map_err(|e| super::case_error(fe, what, e))?;
    let (_, bytes) = fe
        .wait(CURSOR_QUEUE)
        .map_err(|e| super::case_error(fe, what, e))?;
    gpu::Resp::parse(&bytes)
        .map(|r| r.ty)
        .map_err(|e| super::case_error(fe, what, e))
}

fn cursor_size(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    for (id, w, h) in [(1, 64, 64), (2, 65, 64), (3, 64, 65)] {
        ok(
            &mut fe,
            "CREATE_2D",
            gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, w, h),
        )?;
    }
    for (id, t) in [
        (1, ty::OK_NODATA),
        (2, ty::ERR_INVALID_PARAMETER),
        (3, ty::ERR_INVALID_PARAMETER),
    ] {
        let got = cursor_answer(
            &mut fe,
            "UPDATE_CURSOR",
            gpu::update_cursor(0, 1, 1, id, (0, 0)),
        )?;
        ensure(&fe, got == t, || {
            format!(
                "UPDATE_CURSOR with resource {id} answered {}, expected {}",
                ty::name(got),
                ty::name(t)
            )
        })?;
    }
    still_serving(&mut fe)
}

fn entry_count(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    for id in [1, 2] {
        ok(
            &mut fe,
            "CREATE_2D",
            gpu::resource_create_2d(id, format::B8G8R8X8_UNORM, W, H),
        )?;
    }
    let page = fe
        .ram()
        .alloc(16384 * 16, 4096)
        .map_err(|e| e.to_string())?;
    let entries = |n: u64| -> Vec<MemEntry> {
        (0..n)
            .map(|i| MemEntry {
                addr: page + (i % 16384) * 16,
                length: 16,
            })
            .collect()
    };
    edge(
        &mut fe,
        "ATTACH_BACKING entries",
        gpu::resource_attach_backing(1, &entries(16384)),
        gpu::resource_attach_backing(2, &entries(16385)),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn request_bytes(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    // A GET_DISPLAY_INFO padded to exactly 1 MiB is served (trailing bytes are ignored);
    // one byte more and the chain is dropped without a response.
    let limit = 1u64 << 20;
    let req = fe.ram().alloc(limit + 1, 4096).map_err(|e| e.to_string())?;
    fe.ram()
        .write(req, &gpu::get_display_info().into_bytes())
        .map_err(|e| e.to_string())?;
    let resp = fe.ram().alloc(512, 8).map_err(|e| e.to_string())?;
    for (len, answered) in [(limit, true), (limit + 1, false)] {
        fe.ram()
            .write(resp, &[0xa5; 512])
            .map_err(|e| e.to_string())?;
        let descs = [
            RawDesc {
                addr: req,
                len: len as u32,
                write: false,
                next: Some(1),
            },
            RawDesc {
                addr: resp,
                len: 512,
                write: true,
                next: None,
            },
        ];
        let head = fe
            .send_raw(CONTROL_QUEUE, &descs)
            .map_err(|e| super::case_error(&fe, "raw chain", e))?;
        fe.wait_for_head(CONTROL_QUEUE, head)
            .map_err(|e| super::case_error(&fe, "raw chain never came back", e))?;
        let bytes = fe.ram().read_vec(resp, 24).map_err(|e| e.to_string())?;
        let ty_got = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if answered {
            ensure(&fe, ty_got == ty::OK_DISPLAY_INFO, || {
                format!(
                    "a request of exactly {len} bytes answered {}",
                    ty::name(ty_got)
                )
            })?;
        } else {
            ensure(&fe, bytes.iter().all(|&b| b == 0xa5), || {
                format!("a request of {len} bytes (one past the limit) was answered")
            })?;
        }
    }
    fe.ram().free(req);
    still_serving(&mut fe)
}

/// A GUEST blob `id` of exactly `len` bytes over fresh guest pages.
fn guest_blob(fe: &mut Frontend, id: u32, len: u64) -> Result<u64, String> {
    let addr = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    ok(
        fe,
        "CREATE_BLOB GUEST",
        gpu::resource_create_blob(
            0,
            id,
            gpu::BLOB_MEM_GUEST,
            0,
            0,
            len,
            &[MemEntry {
                addr,
                length: len as u32,
            }],
        ),
    )?;
    Ok(addr)
}

fn scanout_blob_layout(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    // Exactly a 64x64 image: its end is the blob's end.
    let (w, h) = (64u32, 64u32);
    guest_blob(&mut fe, 1, u64::from(w * h * 4))?;
    let layout = BlobLayout {
        width: w,
        height: h,
        format: format::B8G8R8X8_UNORM,
        stride: w * 4,
        offset: 0,
    };
    let s = |r: Rect, l: BlobLayout| gpu::set_scanout_blob(0, 1, r, l);
    let full = rect(0, 0, w, h);
    let invalid = ty::ERR_INVALID_PARAMETER;
    // offsets[0]: the image ends exactly at the blob's end.
    edge(
        &mut fe,
        "SET_SCANOUT_BLOB offset",
        s(full, layout),
        s(
            full,
            BlobLayout {
                offset: 4,
                ..layout
            },
        ),
        invalid,
    )?;
    // 63 rows fit from one row in.
    let short = BlobLayout {
        height: h - 1,
        ..layout
    };
    edge(
        &mut fe,
        "SET_SCANOUT_BLOB offset of 63 rows",
        s(
            rect(0, 0, w, h - 1),
            BlobLayout {
                offset: w * 4,
                ..short
            },
        ),
        s(
            rect(0, 0, w, h - 1),
            BlobLayout {
                offset: w * 4 + 1,
                ..short
            },
        ),
        invalid,
    )?;
    // strides[0]: 63 rows of a wider stride end exactly at the blob's end.
    let rows = h - 1;
    let stride_fit = (w * h * 4 - w * 4) / (rows - 1);
    let tall = BlobLayout {
        height: rows,
        ..layout
    };
    edge(
        &mut fe,
        "SET_SCANOUT_BLOB stride",
        s(
            rect(0, 0, w, rows),
            BlobLayout {
                stride: stride_fit,
                ..tall
            },
        ),
        s(
            rect(0, 0, w, rows),
            BlobLayout {
                stride: stride_fit + 1,
                ..tall
            },
        ),
        invalid,
    )?;
    // A stride one byte short of a row (the blob is large enough for any row).
    let narrow = BlobLayout {
        width: w - 1,
        height: 1,
        ..layout
    };
    edge(
        &mut fe,
        "SET_SCANOUT_BLOB stride below a row",
        s(
            rect(0, 0, w - 1, 1),
            BlobLayout {
                stride: (w - 1) * 4,
                ..narrow
            },
        ),
        s(
            rect(0, 0, w - 1, 1),
            BlobLayout {
                stride: (w - 1) * 4 - 1,
                ..narrow
            },
        ),
        invalid,
    )?;
    // The rectangle inside the image, on each axis.
    for (what, fit, past) in [
        ("rect x", rect(1, 0, w - 1, h), rect(2, 0, w - 1, h)),
        ("rect y", rect(0, 1, w, h - 1), rect(0, 2, w, h - 1)),
    ] {
        edge(
            &mut fe,
            &format!("SET_SCANOUT_BLOB {what}"),
            s(fit, layout),
            s(past, layout),
            invalid,
        )?;
    }
    still_serving(&mut fe)
}

fn guest_blob_size(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let addr = fe.ram().alloc(8192, 4096).map_err(|e| e.to_string())?;
    let entries = [MemEntry { addr, length: 8192 }];
    let b = |id, size| gpu::resource_create_blob(0, id, gpu::BLOB_MEM_GUEST, 0, 0, size, &entries);
    edge(
        &mut fe,
        "CREATE_BLOB GUEST size",
        b(1, 8192),
        b(2, 8193),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn host_blob_size(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    // The requirements' size, exactly: one byte more or less is refused.
    let reqs = cd.create(&mut fe, 1, 64, 64, 0)?;
    let b = |id, size| {
        gpu::resource_create_blob(
            CTX_ID,
            id,
            gpu::BLOB_MEM_HOST3D,
            0,
            u64::from(reqs.blob_id),
            size,
            &[],
        )
    };
    for size in [reqs.size + 1, reqs.size - 1] {
        send_expecting(
            &mut fe,
            &format!(
                "CREATE_BLOB HOST3D of {size} bytes for {} bytes of requirements",
                reqs.size
            ),
            b(2, size),
            ty::ERR_INVALID_PARAMETER,
        )?;
    }
    ok(
        &mut fe,
        "CREATE_BLOB HOST3D of the exact size again",
        b(2, reqs.size),
    )?;
    still_serving(&mut fe)
}

fn image_requirement_sides(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let _cd = CrossDomain::init(&mut fe)?;
    let submit = |w, h| {
        gpu::submit_3d(
            CTX_ID,
            &crate::cross_domain::get_image_requirements(
                w,
                h,
                crate::cross_domain::DRM_FORMAT_ARGB8888,
                0,
            ),
        )
    };
    edge(
        &mut fe,
        "GET_IMAGE_REQUIREMENTS width",
        submit(16384, 1),
        submit(16385, 1),
        ty::ERR_INVALID_PARAMETER,
    )?;
    edge(
        &mut fe,
        "GET_IMAGE_REQUIREMENTS height",
        submit(1, 16384),
        submit(1, 16385),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn submit_size(harness: &Harness) -> CaseResult {
    // The size field of SUBMIT_3D is bounded at 1 MiB before the stream is looked at: a
    // size of exactly 1 MiB passes that check and is refused by the next one (the stream
    // is shorter: ERR_UNSPEC), one byte more is refused by the bound (ERR_INVALID_PARAMETER).
    let mut fe = spawn(harness)?;
    let submit = |size: u32| Cmd::new(ty::SUBMIT_3D, 1).u32(size).u32(0).bytes(&[0; 64]);
    send_expecting(
        &mut fe,
        "SUBMIT_3D size 1 MiB with 64 bytes",
        submit(1 << 20),
        ty::ERR_UNSPEC,
    )?;
    send_expecting(
        &mut fe,
        "SUBMIT_3D size 1 MiB + 1",
        submit((1 << 20) + 1),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn map_offset_at_region_end(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let region = fe.shmem().ok_or("no region")?.size();
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    let size = reqs.size.next_multiple_of(4096);
    // Ending exactly at the region's end: mapped.
    blob::map(&mut fe, 1, region - size, size)?;
    ok(&mut fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 1))?;
    // One page further: refused by the backend itself, never sent to the frontend.
    refused(
        &mut fe,
        "MAP_BLOB one page past the region's end",
        gpu::resource_map_blob(CTX_ID, 1, region - size + 4096),
        ty::ERR_INVALID_PARAMETER,
        RefusedBy::Backend,
    )?;
    // One byte off the page grid, with room behind it: refused for its alignment alone.
    refused(
        &mut fe,
        "MAP_BLOB at an unaligned offset",
        gpu::resource_map_blob(CTX_ID, 1, 4095),
        ty::ERR_INVALID_PARAMETER,
        RefusedBy::Backend,
    )?;
    blob::map(&mut fe, 1, 4096, size)?;
    let r = ctrl(&mut fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 1))?;
    ensure(&fe, r.ty == ty::OK_NODATA, || {
        format!("UNMAP_BLOB answered {}", r.name())
    })?;
    still_serving(&mut fe)
}
