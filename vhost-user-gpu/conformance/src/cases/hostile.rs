//! The hostile-guest suite: one small case per attack, grouped by what the guest abuses.
//!
//! Every case runs in [`guarded`]: a fresh backend, a baseline of its fds and buffer
//! mappings, the attack (each refused request must get exactly the expected virtio-gpu
//! error), then a normal 2D command sequence must still succeed, the device must still
//! answer, and the backend must hold no more fds or buffer mappings than before.
//!
//! Expected errors follow the virtio-gpu specification where it says anything and QEMU's
//! device (`hw/display/virtio-gpu.c`) where it does not: a request that cannot be decoded
//! or an unknown command is `ERR_UNSPEC`; a bad resource, context or scanout id is the
//! matching `ERR_INVALID_*_ID`; a bad field value is `ERR_INVALID_PARAMETER`; a backing the
//! guest cannot map (QEMU's `virtio_gpu_create_mapping_iov` failing) or a resource in the
//! wrong state (backing present/missing) is `ERR_UNSPEC`; a size the host refuses to
//! allocate is `ERR_OUT_OF_MEMORY`. Where this device decides differently from QEMU the
//! case says why.

use super::blob::{self, CrossDomain, CTX_ID, RING_RES};
use super::two_d::Backing;
use super::{ctrl, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::cross_domain as xd;
use crate::frontend::{Frontend, CONTROL_QUEUE};
use crate::gpu::{self, features, format, ty, BlobLayout, Cmd, MemEntry, Rect};
use crate::virtq::RawDesc;

fn blob_need() -> Need {
    Need::Features(features::RESOURCE_BLOB)
}
fn ctx_need() -> Need {
    Need::Features(features::VIRGL | features::CONTEXT_INIT | features::RESOURCE_BLOB)
}
fn map_need() -> Need {
    Need::All(vec![ctx_need(), Need::HostVisibleRegion])
}
fn uuid_need() -> Need {
    Need::Features(features::RESOURCE_UUID)
}

macro_rules! case_list {
    ($($group:literal $name:ident $need:expr;)*) => {
        vec![$(Case {
            name: concat!("hostile::", $group, "::", stringify!($name)),
            need: $need,
            run: $name,
        },)*]
    };
}

pub(super) fn cases() -> Vec<Case> {
    case_list! {
        // Malformed headers and lengths.
        "hdr" four_byte_request Need::Nothing;
        "hdr" header_one_byte_short Need::Nothing;
        "hdr" set_scanout_body_truncated Need::Nothing;
        "hdr" attach_backing_entries_missing Need::Nothing;
        "hdr" nr_entries_above_limit Need::Nothing;
        "hdr" submit_size_beyond_request Need::Nothing;
        "hdr" submit_size_above_limit Need::Nothing;
        "hdr" unknown_flag_bits_ignored Need::Nothing;
        "hdr" trailing_bytes_ignored Need::Nothing;
        "hdr" ring_idx_without_fence_not_echoed Need::Nothing;
        "hdr" ctx_create_name_length_lies ctx_need();
        // Descriptor chains.
        "chain" readable_after_writable Need::Nothing;
        "chain" response_room_for_header_only Need::Nothing;
        "chain" response_scattered_over_descriptors Need::Nothing;
        "chain" request_in_eight_byte_pieces Need::Nothing;
        "chain" zero_length_descriptor_in_request Need::Nothing;
        "chain" writable_descriptor_outside_ram Need::Nothing;
        "chain" request_over_one_mib Need::Nothing;
        "chain" no_writable_part Need::Nothing;
        // Unknown commands.
        "unknown" type_zero Need::Nothing;
        "unknown" gap_after_2d_commands Need::Nothing;
        "unknown" gap_after_3d_commands Need::Nothing;
        "unknown" gap_after_cursor_commands Need::Nothing;
        "unknown" response_type_as_command Need::Nothing;
        "unknown" all_ones Need::Nothing;
        "unknown" cursor_command_on_control_queue Need::Nothing;
        // Resource id 0 and unknown ids.
        "rid" unref_id_0 Need::Nothing;
        "rid" flush_id_0 Need::Nothing;
        "rid" transfer_id_0 Need::Nothing;
        "rid" attach_backing_id_0 Need::Nothing;
        "rid" assign_uuid_id_0 uuid_need();
        "rid" map_blob_id_0 map_need();
        "rid" ctx_detach_unknown_resource ctx_need();
        // Duplicate ids.
        "dup" guest_blob_over_2d_id blob_need();
        "dup" create_2d_over_blob_id blob_need();
        "dup" host_blob_id_taken map_need();
        "dup" attach_backing_twice Need::Nothing;
        "dup" ctx_attach_twice ctx_need();
        "dup" ctx_detach_twice ctx_need();
        // Integer overflows in offsets, strides and sizes.
        "ovf" create_2d_stride_overflows Need::Nothing;
        "ovf" create_2d_area_beyond_memory Need::Nothing;
        "ovf" transfer_x_plus_width_wraps Need::Nothing;
        "ovf" transfer_offset_u64_max Need::Nothing;
        "ovf" flush_y_plus_height_wraps Need::Nothing;
        "ovf" set_scanout_rect_wraps Need::Nothing;
        "ovf" scanout_blob_stride_u32_max blob_need();
        "ovf" scanout_blob_offset_u32_max blob_need();
        "ovf" guest_blob_size_u64_max blob_need();
        "ovf" image_requirements_u32_max_width ctx_need();
        // Backing entries outside guest memory or overlapping.
        "backing" entry_straddles_ram_end Need::Nothing;
        "backing" entries_overlap Need::Nothing;
        "backing" zero_entries Need::Nothing;
        "backing" guest_blob_entry_outside_ram blob_need();
        "backing" guest_blob_entries_overlap blob_need();
        // Transfers and scanouts out of bounds.
        "oob" transfer_one_byte_past_backing Need::Nothing;
        "oob" set_scanout_id_u32_max Need::Nothing;
        "oob" scanout_blob_larger_than_blob blob_need();
        "oob" flush_of_unbacked_resource_ok Need::Nothing;
        // Maps past the region end or overlapping, unmaps.
        "map" map_twice map_need();
        "map" map_straddling_region_end map_need();
        "map" map_guest_blob_refused map_need();
        "map" double_unmap map_need();
        "map" unmap_guest_blob map_need();
        "map" unmap_2d_resource map_need();
        // Unref while mapped or scanned out.
        "unref" scanned_out_2d Need::Nothing;
        "unref" scanned_out_guest_blob blob_need();
        "unref" mapped_and_scanned_out_host_blob map_need();
        "unref" query_ring_in_use ctx_need();
        "unref" cursor_resource_in_use Need::Nothing;
        // Contexts and capsets that do not exist.
        "ctx" destroy_unknown ctx_need();
        "ctx" submit_after_destroy ctx_need();
        "ctx" attach_to_ctx_0 ctx_need();
        "ctx" host_blob_in_unknown_context ctx_need();
        "ctx" context_init_flag_bits ctx_need();
        "ctx" capset_info_index_u32_max ctx_need();
        "ctx" host_blob_id_of_another_context map_need();
        "ctx" host_blob_wrong_size map_need();
        "ctx" host_blob_id_never_handed_out ctx_need();
        "ctx" default_context_refuses_submit Need::Features(features::VIRGL);
        // Cross-domain commands with bad lengths.
        "xd" cmd_size_zero ctx_need();
        "xd" cmd_size_past_stream ctx_need();
        "xd" init_size_short ctx_need();
        "xd" header_truncated ctx_need();
        "xd" garbage_after_good_command ctx_need();
        "xd" image_requirements_before_init ctx_need();
        "xd" poll_without_a_channel ctx_need();
        "xd" init_with_2d_ring ctx_need();
        // Fences out of order.
        "fence" decreasing_ids_echoed Need::Nothing;
        "fence" error_keeps_fence Need::Nothing;
        "fence" u64_max_and_zero Need::Nothing;
        "fence" pipelined_out_of_order_ids Need::Nothing;
        "fence" ring_idx_echoed Need::Nothing;
    }
}

// ---------------------------------------------------------------------------------------
// Frame and helpers.

fn spawn(harness: &Harness) -> Result<Frontend, String> {
    harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))
}

/// The frame of every case (see the module docs).
pub(super) fn guarded(
    harness: &Harness,
    body: impl FnOnce(&mut Frontend) -> CaseResult,
) -> CaseResult {
    let mut fe = spawn(harness)?;
    // Warm-up: a GUEST blob makes the backend open /dev/udmabuf (kept open) where it exists.
    if fe.has_features(features::RESOURCE_BLOB) {
        let page = fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?;
        let entry = [MemEntry {
            addr: page,
            length: 4096,
        }];
        ok(
            &mut fe,
            "warm-up GUEST blob",
            gpu::resource_create_blob(0, 0xffff, gpu::BLOB_MEM_GUEST, 0, 0, 4096, &entry),
        )?;
        ok(&mut fe, "warm-up UNREF", gpu::resource_unref(0xffff))?;
        fe.ram().free(page);
    }
    let before = fe.backend_stats().map_err(|e| e.to_string())?;
    body(&mut fe)?;
    normal_2d(&mut fe)?;
    still_serving(&mut fe)?;
    blob::no_leaks(&mut fe, &before)
}

/// A normal 2D sequence with its own ids: create, attach, transfer, flush, detach, unref.
fn normal_2d(fe: &mut Frontend) -> CaseResult {
    let id = 0xfff0;
    ok(
        fe,
        "normal CREATE_2D after the attack",
        gpu::resource_create_2d(id, format::B8G8R8X8_UNORM, 8, 8),
    )?;
    let backing = Backing::new(fe, 8 * 8 * 4)?;
    ok(
        fe,
        "normal ATTACH_BACKING",
        gpu::resource_attach_backing(id, &backing.entries),
    )?;
    ok(
        fe,
        "normal TRANSFER_TO_HOST_2D",
        gpu::transfer_to_host_2d(id, Rect::sized(8, 8), 0),
    )?;
    ok(
        fe,
        "normal RESOURCE_FLUSH",
        gpu::resource_flush(id, Rect::sized(8, 8)),
    )?;
    ok(
        fe,
        "normal DETACH_BACKING",
        gpu::resource_detach_backing(id),
    )?;
    ok(fe, "normal UNREF", gpu::resource_unref(id))?;
    backing.free(fe);
    Ok(())
}

pub(super) fn ok(fe: &mut Frontend, what: &str, cmd: Cmd) -> CaseResult {
    send_expecting(fe, what, cmd, ty::OK_NODATA).map(|_| ())
}

fn err(fe: &mut Frontend, what: &str, cmd: Cmd, t: u32) -> CaseResult {
    send_expecting(fe, what, cmd, t).map(|_| ())
}

/// A 2D resource `id` of `w`x`h` with a backing of `w*h*4` bytes (returned).
fn res_2d(fe: &mut Frontend, id: u32, w: u32, h: u32) -> Result<Backing, String> {
    ok(
        fe,
        "CREATE_2D",
        gpu::resource_create_2d(id, format::B8G8R8X8_UNORM, w, h),
    )?;
    let backing = Backing::new(fe, (w * h * 4) as usize)?;
    ok(
        fe,
        "ATTACH_BACKING",
        gpu::resource_attach_backing(id, &backing.entries),
    )?;
    Ok(backing)
}

/// A GUEST blob `id` over fresh guest pages.
fn guest_blob(fe: &mut Frontend, id: u32, len: usize) -> Result<Backing, String> {
    let backing = Backing::new(fe, len)?;
    ok(
        fe,
        "CREATE_BLOB (GUEST)",
        gpu::resource_create_blob(
            0,
            id,
            gpu::BLOB_MEM_GUEST,
            0,
            0,
            len as u64,
            &backing.entries,
        ),
    )?;
    Ok(backing)
}

fn alloc(fe: &Frontend, bytes: &[u8]) -> Result<u64, String> {
    let gpa = fe
        .ram()
        .alloc(bytes.len().max(1) as u64, 8)
        .map_err(|e| e.to_string())?;
    fe.ram().write(gpa, bytes).map_err(|e| e.to_string())?;
    Ok(gpa)
}

fn raw_request(fe: &mut Frontend, what: &str, bytes: &[u8], t: u32) -> CaseResult {
    let r = fe
        .ctrl_parts(&[bytes], gpu::resp_size::DISPLAY_INFO)
        .map_err(|e| super::case_error(fe, what, e))?;
    ensure(fe, r.ty == t, || {
        format!("{what}: expected {}, got {}", ty::name(t), r.name())
    })
}

/// Cleans up a cross-domain context set up by [`CrossDomain::init`].
pub(super) fn drop_cross_domain(fe: &mut Frontend) -> CaseResult {
    ok(fe, "CTX_DESTROY", gpu::ctx_destroy(CTX_ID))?;
    ok(fe, "UNREF query ring", gpu::resource_unref(RING_RES))
}

// ---------------------------------------------------------------------------------------
// hdr

fn four_byte_request(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        raw_request(
            fe,
            "a 4-byte request",
            &gpu::get_display_info().into_bytes()[..4],
            ty::ERR_UNSPEC,
        )
    })
}

fn header_one_byte_short(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        raw_request(
            fe,
            "a 23-byte header",
            &gpu::get_display_info().into_bytes()[..23],
            ty::ERR_UNSPEC,
        )
    })
}

fn set_scanout_body_truncated(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        let cmd = gpu::set_scanout(0, 1, Rect::sized(16, 16));
        let len = cmd.len() - 4;
        err(
            fe,
            "SET_SCANOUT without resource_id",
            cmd.truncate(len),
            ty::ERR_UNSPEC,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

fn attach_backing_entries_missing(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 16, 16),
        )?;
        let page = fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?;
        // nr_entries says 3, one entry follows.
        let cmd = Cmd::new(ty::RESOURCE_ATTACH_BACKING, 0)
            .u32(1)
            .u32(3)
            .u64(page)
            .u32(4096)
            .u32(0);
        err(
            fe,
            "ATTACH_BACKING with 2 of 3 entries missing",
            cmd,
            ty::ERR_UNSPEC,
        )?;
        // Nothing was attached.
        err(
            fe,
            "TRANSFER after the refused attach",
            gpu::transfer_to_host_2d(1, Rect::sized(16, 16), 0),
            ty::ERR_UNSPEC,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

fn nr_entries_above_limit(harness: &Harness) -> CaseResult {
    // QEMU answers ERR_UNSPEC for every failure of its mapping helper; this device names
    // the field: nr_entries past the documented limit (16384) is a bad parameter.
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 16, 16),
        )?;
        let page = fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?;
        let entries = vec![
            MemEntry {
                addr: page,
                length: 1
            };
            16385
        ];
        err(
            fe,
            "ATTACH_BACKING with 16385 entries",
            gpu::resource_attach_backing(1, &entries),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

fn submit_size_beyond_request(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = Cmd::new(ty::SUBMIT_3D, 1).u32(4096).u32(0).bytes(&[0; 64]);
        err(fe, "SUBMIT_3D size 4096 with 64 bytes", cmd, ty::ERR_UNSPEC)
    })
}

fn submit_size_above_limit(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = Cmd::new(ty::SUBMIT_3D, 1)
            .u32(u32::MAX)
            .u32(0)
            .bytes(&[0; 64]);
        err(
            fe,
            "SUBMIT_3D size 0xffffffff",
            cmd,
            ty::ERR_INVALID_PARAMETER,
        )
    })
}

fn unknown_flag_bits_ignored(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let r = send_expecting(
            fe,
            "GET_DISPLAY_INFO with flags 0xfffffffc",
            gpu::get_display_info().raw_flags(0xffff_fffc),
            ty::OK_DISPLAY_INFO,
        )?;
        ensure(fe, r.flags == 0 && r.fence_id == 0, || {
            format!(
                "unknown flags echoed: flags {:#x} fence {}",
                r.flags, r.fence_id
            )
        })
    })
}

fn trailing_bytes_ignored(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 4, 4).bytes(&[0xa5; 200]);
        ok(fe, "CREATE_2D with 200 trailing bytes", cmd)?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

fn ring_idx_without_fence_not_echoed(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut bytes = gpu::get_display_info()
            .raw_flags(gpu::FLAG_INFO_RING_IDX)
            .into_bytes();
        bytes[8] = 9; // fence_id, meaningless without FLAG_FENCE
        bytes[20] = 3; // ring_idx
        let r = fe
            .ctrl_parts(&[&bytes], gpu::resp_size::DISPLAY_INFO)
            .map_err(|e| super::case_error(fe, "GET_DISPLAY_INFO", e))?;
        ensure(
            fe,
            r.ty == ty::OK_DISPLAY_INFO && r.flags == 0 && r.fence_id == 0 && r.ring_idx == 0,
            || {
                format!(
                    "answered {} flags {:#x} fence {} ring {}",
                    r.name(),
                    r.flags,
                    r.fence_id,
                    r.ring_idx
                )
            },
        )
    })
}

fn ctx_create_name_length_lies(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cmd = gpu::ctx_create(5, gpu::CAPSET_CROSS_DOMAIN, "liar").into_bytes();
        cmd[24..28].copy_from_slice(&100_000u32.to_le_bytes()); // nlen
        raw_request(fe, "CTX_CREATE with nlen 100000", &cmd, ty::OK_NODATA)?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(5))
    })
}

// ---------------------------------------------------------------------------------------
// chain

/// A malformed chain must come back without the device writing into `canary_gpa`.
fn send_raw_and_check(
    fe: &mut Frontend,
    what: &str,
    descs: &[RawDesc],
    canary: Option<(u64, usize)>,
) -> CaseResult {
    if let Some((gpa, len)) = canary {
        fe.ram()
            .write(gpa, &vec![0xa5; len])
            .map_err(|e| e.to_string())?;
    }
    let head = fe
        .send_raw(CONTROL_QUEUE, descs)
        .map_err(|e| super::case_error(fe, what, e))?;
    fe.wait_for_head(CONTROL_QUEUE, head)
        .map_err(|e| super::case_error(fe, &format!("{what} never came back"), e))?;
    if let Some((gpa, len)) = canary {
        let bytes = fe.ram().read_vec(gpa, len).map_err(|e| e.to_string())?;
        ensure(fe, bytes.iter().all(|&b| b == 0xa5), || {
            format!("{what}: the device wrote into the response buffer of a malformed chain")
        })?;
    }
    Ok(())
}

fn rd(addr: u64, len: u32, next: Option<usize>) -> RawDesc {
    RawDesc {
        addr,
        len,
        write: false,
        next,
    }
}
fn wr(addr: u64, len: u32, next: Option<usize>) -> RawDesc {
    RawDesc {
        addr,
        len,
        write: true,
        next,
    }
}

fn readable_after_writable(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::get_display_info().into_bytes();
        let req = alloc(fe, &cmd)?;
        let resp = alloc(fe, &[0; 512])?;
        let more = alloc(fe, &[0; 16])?;
        send_raw_and_check(
            fe,
            "a readable descriptor after the writable one",
            &[
                rd(req, 24, Some(1)),
                wr(resp, 512, Some(2)),
                rd(more, 16, None),
            ],
            Some((resp, 512)),
        )
    })
}

fn response_room_for_header_only(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::get_display_info().fence(77, None).into_bytes();
        let req = alloc(fe, &cmd)?;
        let resp = alloc(fe, &[0xa5; 24 + 32])?;
        let head = fe
            .send_raw(CONTROL_QUEUE, &[rd(req, 24, Some(1)), wr(resp, 24, None)])
            .map_err(|e| e.to_string())?;
        fe.wait_for_head(CONTROL_QUEUE, head)
            .map_err(|e| e.to_string())?;
        let bytes = fe
            .ram()
            .read_vec(resp, 24 + 32)
            .map_err(|e| e.to_string())?;
        let r = gpu::Resp::parse(&bytes[..24]).map_err(|e| e.to_string())?;
        // Not a cut-off OK_DISPLAY_INFO: an error header, with the fence kept.
        ensure(fe, r.ty == ty::ERR_UNSPEC && r.fence_id == 77, || {
            format!("24-byte response room: {} fence {}", r.name(), r.fence_id)
        })?;
        ensure(fe, bytes[24..].iter().all(|&b| b == 0xa5), || {
            "the device wrote past the 24-byte response buffer".into()
        })
    })
}

fn response_scattered_over_descriptors(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::get_display_info().into_bytes();
        let req = alloc(fe, &cmd)?;
        let parts = [7u32, 17, 400];
        let mut gpas = Vec::new();
        for &p in &parts {
            gpas.push(alloc(fe, &vec![0; p as usize])?);
        }
        let head = fe
            .send_raw(
                CONTROL_QUEUE,
                &[
                    rd(req, 24, Some(1)),
                    wr(gpas[0], parts[0], Some(2)),
                    wr(gpas[1], parts[1], Some(3)),
                    wr(gpas[2], parts[2], None),
                ],
            )
            .map_err(|e| e.to_string())?;
        fe.wait_for_head(CONTROL_QUEUE, head)
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        for (&g, &p) in gpas.iter().zip(&parts) {
            bytes.extend(
                fe.ram()
                    .read_vec(g, p as usize)
                    .map_err(|e| e.to_string())?,
            );
        }
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        let modes = r.display_info().map_err(|e| e.to_string())?;
        ensure(fe, r.ty == ty::OK_DISPLAY_INFO && modes[0].enabled, || {
            format!("scattered response: {} {:?}", r.name(), modes.first())
        })
    })
}

fn request_in_eight_byte_pieces(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::resource_create_2d(3, format::B8G8R8X8_UNORM, 4, 4).into_bytes();
        let pieces: Vec<&[u8]> = cmd.chunks(8).collect();
        let r = fe
            .ctrl_parts(&pieces, gpu::resp_size::NODATA)
            .map_err(|e| e.to_string())?;
        ensure(fe, r.ty == ty::OK_NODATA, || {
            format!("CREATE_2D in 8-byte descriptors: {}", r.name())
        })?;
        err(
            fe,
            "CREATE_2D of the same id",
            gpu::resource_create_2d(3, format::B8G8R8X8_UNORM, 4, 4),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(3))
    })
}

fn zero_length_descriptor_in_request(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::get_display_info().into_bytes();
        let a = alloc(fe, &cmd[..10])?;
        let z = alloc(fe, &[0; 8])?;
        let b = alloc(fe, &cmd[10..])?;
        let resp = alloc(fe, &[0; 512])?;
        let head = fe
            .send_raw(
                CONTROL_QUEUE,
                &[
                    rd(a, 10, Some(1)),
                    rd(z, 0, Some(2)),
                    rd(b, 14, Some(3)),
                    wr(resp, 512, None),
                ],
            )
            .map_err(|e| e.to_string())?;
        fe.wait_for_head(CONTROL_QUEUE, head)
            .map_err(|e| e.to_string())?;
        let bytes = fe.ram().read_vec(resp, 24).map_err(|e| e.to_string())?;
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(fe, r.ty == ty::OK_DISPLAY_INFO, || {
            format!("request with a zero-length descriptor: {}", r.name())
        })
    })
}

fn writable_descriptor_outside_ram(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::get_display_info().into_bytes();
        let req = alloc(fe, &cmd)?;
        let resp = alloc(fe, &[0; 64])?;
        let outside = fe.ram().size() as u64 + (1 << 20);
        send_raw_and_check(
            fe,
            "a writable descriptor outside guest RAM",
            &[
                rd(req, 24, Some(1)),
                wr(resp, 64, Some(2)),
                wr(outside, 4096, None),
            ],
            Some((resp, 64)),
        )
    })
}

fn request_over_one_mib(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let len = (1 << 20) + 4096;
        let req = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
        let cmd = gpu::get_display_info().into_bytes();
        fe.ram().write(req, &cmd).map_err(|e| e.to_string())?;
        let resp = alloc(fe, &[0; 512])?;
        send_raw_and_check(
            fe,
            "a 1 MiB + 4 KiB request",
            &[rd(req, len as u32, Some(1)), wr(resp, 512, None)],
            Some((resp, 512)),
        )?;
        fe.ram().free(req);
        Ok(())
    })
}

fn no_writable_part(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = gpu::resource_create_2d(4, format::B8G8R8X8_UNORM, 4, 4).into_bytes();
        let req = alloc(fe, &cmd)?;
        send_raw_and_check(
            fe,
            "CREATE_2D without a response buffer",
            &[rd(req, cmd.len() as u32, None)],
            None,
        )?;
        // Whether it was executed or not, the id can be released or created again.
        let r = ctrl(fe, "UNREF", gpu::resource_unref(4))?;
        ensure(
            fe,
            r.ty == ty::OK_NODATA || r.ty == ty::ERR_INVALID_RESOURCE_ID,
            || format!("UNREF answered {}", r.name()),
        )
    })
}

// ---------------------------------------------------------------------------------------
// unknown

fn unknown_type(harness: &Harness, t: u32) -> CaseResult {
    guarded(harness, |fe| {
        let cmd = Cmd::new(t, 0).u32(1).u32(0).bytes(&[0; 32]);
        err(fe, &format!("command type {t:#x}"), cmd, ty::ERR_UNSPEC)
    })
}
fn type_zero(harness: &Harness) -> CaseResult {
    unknown_type(harness, 0)
}
fn gap_after_2d_commands(harness: &Harness) -> CaseResult {
    unknown_type(harness, ty::SET_SCANOUT_BLOB + 1)
}
fn gap_after_3d_commands(harness: &Harness) -> CaseResult {
    unknown_type(harness, ty::RESOURCE_UNMAP_BLOB + 1)
}
fn gap_after_cursor_commands(harness: &Harness) -> CaseResult {
    unknown_type(harness, ty::MOVE_CURSOR + 1)
}
fn response_type_as_command(harness: &Harness) -> CaseResult {
    unknown_type(harness, ty::OK_NODATA)
}
fn all_ones(harness: &Harness) -> CaseResult {
    unknown_type(harness, u32::MAX)
}
fn cursor_command_on_control_queue(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "MOVE_CURSOR on the control queue",
            gpu::move_cursor(0, 1, 1, 0),
            ty::ERR_UNSPEC,
        )
    })
}

// ---------------------------------------------------------------------------------------
// rid

fn unref_id_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "UNREF 0",
            gpu::resource_unref(0),
            ty::ERR_INVALID_RESOURCE_ID,
        )
    })
}
fn flush_id_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "FLUSH 0",
            gpu::resource_flush(0, Rect::sized(1, 1)),
            ty::ERR_INVALID_RESOURCE_ID,
        )
    })
}
fn transfer_id_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "TRANSFER 0",
            gpu::transfer_to_host_2d(0, Rect::sized(1, 1), 0),
            ty::ERR_INVALID_RESOURCE_ID,
        )
    })
}
fn attach_backing_id_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let page = fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?;
        err(
            fe,
            "ATTACH_BACKING 0",
            gpu::resource_attach_backing(
                0,
                &[MemEntry {
                    addr: page,
                    length: 4096,
                }],
            ),
            ty::ERR_INVALID_RESOURCE_ID,
        )
    })
}
fn assign_uuid_id_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "ASSIGN_UUID 0",
            gpu::resource_assign_uuid(0),
            ty::ERR_INVALID_RESOURCE_ID,
        )
    })
}
fn map_blob_id_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "MAP_BLOB 0",
            gpu::resource_map_blob(0, 0, 0),
            ty::ERR_INVALID_RESOURCE_ID,
        )
    })
}
fn ctx_detach_unknown_resource(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "h"),
        )?;
        err(
            fe,
            "CTX_DETACH_RESOURCE of an unknown resource",
            gpu::ctx_detach_resource(2, 4242),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(2))
    })
}

// ---------------------------------------------------------------------------------------
// dup

fn guest_blob_over_2d_id(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let b = res_2d(fe, 1, 16, 16)?;
        let page = Backing::new(fe, 4096)?;
        err(
            fe,
            "CREATE_BLOB with the id of a 2D resource",
            gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, 4096, &page.entries),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        // The 2D resource is untouched.
        ok(
            fe,
            "TRANSFER",
            gpu::transfer_to_host_2d(1, Rect::sized(16, 16), 0),
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        b.free(fe);
        page.free(fe);
        Ok(())
    })
}

fn create_2d_over_blob_id(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = guest_blob(fe, 2, 4096)?;
        err(
            fe,
            "CREATE_2D with the id of a blob",
            gpu::resource_create_2d(2, format::B8G8R8X8_UNORM, 4, 4),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(2))
    })
}

fn host_blob_id_taken(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        err(
            fe,
            "CREATE_BLOB HOST3D with a taken id",
            gpu::resource_create_blob(
                CTX_ID,
                1,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                u64::from(reqs.blob_id),
                reqs.size,
                &[],
            ),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        drop_cross_domain(fe)
    })
}

fn attach_backing_twice(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let b = res_2d(fe, 1, 16, 16)?;
        err(
            fe,
            "second ATTACH_BACKING",
            gpu::resource_attach_backing(1, &b.entries),
            ty::ERR_UNSPEC,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

fn ctx_attach_twice(harness: &Harness) -> CaseResult {
    // Attaching is idempotent (a set), as in virglrenderer.
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "h"),
        )?;
        let _b = guest_blob(fe, 7, 4096)?;
        ok(fe, "CTX_ATTACH", gpu::ctx_attach_resource(2, 7))?;
        ok(fe, "CTX_ATTACH again", gpu::ctx_attach_resource(2, 7))?;
        ok(fe, "CTX_DETACH", gpu::ctx_detach_resource(2, 7))?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(2))?;
        ok(fe, "UNREF", gpu::resource_unref(7))
    })
}

fn ctx_detach_twice(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "h"),
        )?;
        let _b = guest_blob(fe, 7, 4096)?;
        ok(fe, "CTX_ATTACH", gpu::ctx_attach_resource(2, 7))?;
        ok(fe, "CTX_DETACH", gpu::ctx_detach_resource(2, 7))?;
        err(
            fe,
            "CTX_DETACH again",
            gpu::ctx_detach_resource(2, 7),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(2))?;
        ok(fe, "UNREF", gpu::resource_unref(7))
    })
}

// ---------------------------------------------------------------------------------------
// ovf

fn create_2d_stride_overflows(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "CREATE_2D width 0x40000001 (width * 4 overflows u32)",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 0x4000_0001, 1),
            ty::ERR_OUT_OF_MEMORY,
        )
    })
}
fn create_2d_area_beyond_memory(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "CREATE_2D 65535x65535 (16 GiB)",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 65535, 65535),
            ty::ERR_OUT_OF_MEMORY,
        )?;
        ok(
            fe,
            "CREATE_2D of the id after",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 4, 4),
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn transfer_x_plus_width_wraps(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        let r = Rect {
            x: u32::MAX - 1,
            y: 0,
            width: 4,
            height: 1,
        };
        err(
            fe,
            "TRANSFER x+width wrapping",
            gpu::transfer_to_host_2d(1, r, 0),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn transfer_offset_u64_max(harness: &Harness) -> CaseResult {
    // QEMU's iov_to_buf silently copies nothing for an offset past the backing and answers
    // OK; this device refuses a transfer whose source range (offset, stride, rows) does
    // not lie in the attached backing as a bad parameter, and copies nothing.
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        err(
            fe,
            "TRANSFER offset u64::MAX",
            gpu::transfer_to_host_2d(1, Rect::sized(16, 16), u64::MAX),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn flush_y_plus_height_wraps(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        let r = Rect {
            x: 0,
            y: 8,
            width: 1,
            height: u32::MAX - 4,
        };
        err(
            fe,
            "FLUSH y+height wrapping",
            gpu::resource_flush(1, r),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn set_scanout_rect_wraps(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        let r = Rect {
            x: 0x8000_0000,
            y: 0,
            width: 0x8000_0010,
            height: 16,
        };
        err(
            fe,
            "SET_SCANOUT x+width wrapping",
            gpu::set_scanout(0, 1, r),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn scanout_blob_layout(
    harness: &Harness,
    what: &'static str,
    change: fn(&mut BlobLayout),
) -> CaseResult {
    guarded(harness, |fe| {
        let _b = guest_blob(fe, 1, 16 * 16 * 4)?;
        let mut l = BlobLayout {
            width: 16,
            height: 16,
            format: format::B8G8R8X8_UNORM,
            stride: 64,
            offset: 0,
        };
        change(&mut l);
        err(
            fe,
            what,
            gpu::set_scanout_blob(0, 1, Rect::sized(16, 16), l),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn scanout_blob_stride_u32_max(harness: &Harness) -> CaseResult {
    scanout_blob_layout(harness, "SET_SCANOUT_BLOB stride 0xffffffff", |l| {
        l.stride = u32::MAX
    })
}
fn scanout_blob_offset_u32_max(harness: &Harness) -> CaseResult {
    scanout_blob_layout(harness, "SET_SCANOUT_BLOB offset 0xffffffff", |l| {
        l.offset = u32::MAX
    })
}
fn guest_blob_size_u64_max(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let b = Backing::new(fe, 4096)?;
        err(
            fe,
            "CREATE_BLOB GUEST size u64::MAX",
            gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, u64::MAX, &b.entries),
            ty::ERR_INVALID_PARAMETER,
        )?;
        b.free(fe);
        Ok(())
    })
}
fn image_requirements_u32_max_width(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _cd = CrossDomain::init(fe)?;
        let cmd = xd::get_image_requirements(u32::MAX, 1, xd::DRM_FORMAT_ARGB8888, 0);
        err(
            fe,
            "GET_IMAGE_REQUIREMENTS width 0xffffffff",
            gpu::submit_3d(CTX_ID, &cmd),
            ty::ERR_INVALID_PARAMETER,
        )?;
        drop_cross_domain(fe)
    })
}

// ---------------------------------------------------------------------------------------
// backing

fn entry_straddles_ram_end(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 16, 16),
        )?;
        let end = fe.ram().size() as u64;
        err(
            fe,
            "ATTACH_BACKING straddling the end of RAM",
            gpu::resource_attach_backing(
                1,
                &[MemEntry {
                    addr: end - 512,
                    length: 1024,
                }],
            ),
            ty::ERR_UNSPEC,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn entries_overlap(harness: &Harness) -> CaseResult {
    // The guest may list its own pages twice (QEMU maps each entry as given); the device
    // reads exactly what the list says.
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 4, 2),
        )?;
        let px = super::pattern(16, 5);
        let gpa = alloc(fe, &px)?;
        let e = MemEntry {
            addr: gpa,
            length: 16,
        };
        ok(
            fe,
            "ATTACH_BACKING with the same entry twice",
            gpu::resource_attach_backing(1, &[e, e]),
        )?;
        ok(
            fe,
            "TRANSFER",
            gpu::transfer_to_host_2d(1, Rect::sized(4, 2), 0),
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn zero_entries(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 4, 4),
        )?;
        ok(
            fe,
            "ATTACH_BACKING with no entries",
            gpu::resource_attach_backing(1, &[]),
        )?;
        // The source range is not in the (empty) backing: a bad parameter, as below.
        err(
            fe,
            "TRANSFER from an empty backing",
            gpu::transfer_to_host_2d(1, Rect::sized(4, 4), 0),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn guest_blob_entry_outside_ram(harness: &Harness) -> CaseResult {
    // As QEMU: entries the guest cannot map are ERR_UNSPEC, for blobs as for backings.
    guarded(harness, |fe| {
        let outside = fe.ram().size() as u64 + 4096;
        err(
            fe,
            "CREATE_BLOB GUEST with an entry outside RAM",
            gpu::resource_create_blob(
                0,
                1,
                gpu::BLOB_MEM_GUEST,
                0,
                0,
                4096,
                &[MemEntry {
                    addr: outside,
                    length: 4096,
                }],
            ),
            ty::ERR_UNSPEC,
        )
    })
}
fn guest_blob_entries_overlap(harness: &Harness) -> CaseResult {
    // Unlike a 2D backing (whose length bounds nothing the host allocates), a GUEST blob's
    // size is what scanout views and dma-buf exports are sized by: entries listing the same
    // guest memory twice would claim more than there is, so this device refuses them (QEMU
    // accepts them). Entries that only touch are distinct memory and accepted.
    guarded(harness, |fe| {
        let page = fe.ram().alloc(8192, 4096).map_err(|e| e.to_string())?;
        let e = |addr, length| MemEntry { addr, length };
        err(
            fe,
            "CREATE_BLOB GUEST over the same page twice",
            gpu::resource_create_blob(
                0,
                1,
                gpu::BLOB_MEM_GUEST,
                0,
                0,
                8192,
                &[e(page, 4096), e(page, 4096)],
            ),
            ty::ERR_INVALID_PARAMETER,
        )?;
        err(
            fe,
            "CREATE_BLOB GUEST with entries overlapping by one byte",
            gpu::resource_create_blob(
                0,
                1,
                gpu::BLOB_MEM_GUEST,
                0,
                0,
                8192,
                &[e(page + 4095, 4097), e(page, 4096)],
            ),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(
            fe,
            "CREATE_BLOB GUEST with touching entries, listed backwards",
            gpu::resource_create_blob(
                0,
                1,
                gpu::BLOB_MEM_GUEST,
                0,
                0,
                8192,
                &[e(page + 4096, 4096), e(page, 4096)],
            ),
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        fe.ram().free(page);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// oob

fn transfer_one_byte_past_backing(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 16, 16),
        )?;
        let b = Backing::new(fe, 16 * 16 * 4 - 1)?;
        ok(
            fe,
            "ATTACH_BACKING one byte short",
            gpu::resource_attach_backing(1, &b.entries),
        )?;
        // QEMU copies what there is and answers OK; this device refuses a source range
        // past the backing's end (ERR_INVALID_PARAMETER) rather than show partial data.
        err(
            fe,
            "TRANSFER of the whole resource",
            gpu::transfer_to_host_2d(1, Rect::sized(16, 16), 0),
            ty::ERR_INVALID_PARAMETER,
        )?;
        // The rows that do fit can be transferred.
        ok(
            fe,
            "TRANSFER of 15 rows",
            gpu::transfer_to_host_2d(1, Rect::sized(16, 15), 0),
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn set_scanout_id_u32_max(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        err(
            fe,
            "SET_SCANOUT scanout 0xffffffff",
            gpu::set_scanout(u32::MAX, 1, Rect::sized(16, 16)),
            ty::ERR_INVALID_SCANOUT_ID,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn scanout_blob_larger_than_blob(harness: &Harness) -> CaseResult {
    scanout_blob_layout(harness, "SET_SCANOUT_BLOB 16x17 over a 16x16 blob", |l| {
        l.height = 17
    })
}
fn flush_of_unbacked_resource_ok(harness: &Harness) -> CaseResult {
    // A flush only shows host pixels: no backing is needed (as QEMU).
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 8, 8),
        )?;
        ok(
            fe,
            "FLUSH without backing",
            gpu::resource_flush(1, Rect::sized(8, 8)),
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

// ---------------------------------------------------------------------------------------
// map

fn with_mapped_blob(
    harness: &Harness,
    body: impl FnOnce(&mut Frontend, &mut CrossDomain, u64) -> CaseResult,
) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 1, 0, reqs.size)?;
        body(fe, &mut cd, reqs.size)?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        blob::region_empty(fe, "UNREF of the blob")?;
        drop_cross_domain(fe)
    })
}

fn map_twice(harness: &Harness) -> CaseResult {
    with_mapped_blob(harness, |fe, _, _| {
        err(
            fe,
            "MAP_BLOB of a mapped blob (another offset)",
            gpu::resource_map_blob(CTX_ID, 1, 1 << 20),
            ty::ERR_INVALID_PARAMETER,
        )
    })
}
fn map_straddling_region_end(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let size = fe.shmem().ok_or("no region")?.size();
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        ensure(fe, reqs.size > 4096, || {
            "blob too small for the case".into()
        })?;
        err(
            fe,
            "MAP_BLOB whose last pages are past the region",
            gpu::resource_map_blob(CTX_ID, 1, size - 4096),
            ty::ERR_INVALID_PARAMETER,
        )?;
        blob::region_empty(fe, "the refused map")?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        drop_cross_domain(fe)
    })
}
fn map_guest_blob_refused(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = guest_blob(fe, 3, 4096)?;
        err(
            fe,
            "MAP_BLOB of a GUEST blob",
            gpu::resource_map_blob(0, 3, 0),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(3))
    })
}
fn double_unmap(harness: &Harness) -> CaseResult {
    with_mapped_blob(harness, |fe, _, _| {
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 1))?;
        err(
            fe,
            "UNMAP_BLOB again",
            gpu::resource_unmap_blob(CTX_ID, 1),
            ty::ERR_INVALID_PARAMETER,
        )?;
        blob::region_empty(fe, "the unmap")
    })
}
fn unmap_guest_blob(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = guest_blob(fe, 3, 4096)?;
        err(
            fe,
            "UNMAP_BLOB of a GUEST blob",
            gpu::resource_unmap_blob(0, 3),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(3))
    })
}
fn unmap_2d_resource(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(3, format::B8G8R8X8_UNORM, 4, 4),
        )?;
        err(
            fe,
            "UNMAP_BLOB of a 2D resource",
            gpu::resource_unmap_blob(0, 3),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(3))
    })
}

// ---------------------------------------------------------------------------------------
// unref

fn scanout_disabled(fe: &Frontend) -> CaseResult {
    let display = fe.display().ok_or("no display")?;
    let off = display.wait_for(super::DISPLAY_WAIT, |s| {
        s.scanouts.get(&0).is_none_or(|sc| sc.width == 0)
    });
    ensure(fe, off, || {
        "scanout 0 still shows the destroyed resource".into()
    })
}

fn scanned_out_2d(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 16, 16)?;
        ok(
            fe,
            "SET_SCANOUT",
            gpu::set_scanout(0, 1, Rect::sized(16, 16)),
        )?;
        ok(fe, "UNREF while scanned out", gpu::resource_unref(1))?;
        err(
            fe,
            "FLUSH of the destroyed resource",
            gpu::resource_flush(1, Rect::sized(16, 16)),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        scanout_disabled(fe)
    })
}
fn scanned_out_guest_blob(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = guest_blob(fe, 1, 16 * 16 * 4)?;
        let l = BlobLayout {
            width: 16,
            height: 16,
            format: format::B8G8R8X8_UNORM,
            stride: 64,
            offset: 0,
        };
        ok(
            fe,
            "SET_SCANOUT_BLOB",
            gpu::set_scanout_blob(0, 1, Rect::sized(16, 16), l),
        )?;
        ok(fe, "UNREF while scanned out", gpu::resource_unref(1))?;
        err(
            fe,
            "FLUSH of the destroyed blob",
            gpu::resource_flush(1, Rect::sized(16, 16)),
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        scanout_disabled(fe)
    })
}
fn mapped_and_scanned_out_host_blob(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 1, 0, reqs.size)?;
        let l = BlobLayout {
            width: 32,
            height: 32,
            format: format::B8G8R8A8_UNORM,
            stride: reqs.strides[0],
            offset: reqs.offsets[0],
        };
        ok(
            fe,
            "SET_SCANOUT_BLOB",
            gpu::set_scanout_blob(0, 1, Rect::sized(32, 32), l),
        )?;
        ok(
            fe,
            "UNREF while mapped and scanned out",
            gpu::resource_unref(1),
        )?;
        blob::region_empty(fe, "UNREF")?;
        scanout_disabled(fe)?;
        drop_cross_domain(fe)
    })
}
fn query_ring_in_use(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _cd = CrossDomain::init(fe)?;
        ok(fe, "UNREF of the query ring", gpu::resource_unref(RING_RES))?;
        let cmd = xd::get_image_requirements(16, 16, xd::DRM_FORMAT_ARGB8888, 0);
        err(
            fe,
            "GET_IMAGE_REQUIREMENTS after the ring is gone",
            gpu::submit_3d(CTX_ID, &cmd),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(CTX_ID))
    })
}
fn cursor_resource_in_use(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = res_2d(fe, 1, 64, 64)?;
        ok(
            fe,
            "TRANSFER",
            gpu::transfer_to_host_2d(1, Rect::sized(64, 64), 0),
        )?;
        fe.cursor(gpu::update_cursor(0, 5, 5, 1, (0, 0)))
            .map_err(|e| e.to_string())?;
        ok(fe, "UNREF of the cursor image", gpu::resource_unref(1))?;
        // The cursor queue keeps working and moving a cursor of a gone resource is harmless.
        fe.cursor(gpu::move_cursor(0, 9, 9, 1))
            .map_err(|e| e.to_string())?;
        fe.cursor(gpu::update_cursor(0, 0, 0, 0, (0, 0)))
            .map_err(|e| e.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// ctx

fn destroy_unknown(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "CTX_DESTROY 77",
            gpu::ctx_destroy(77),
            ty::ERR_INVALID_CONTEXT_ID,
        )
    })
}
fn submit_after_destroy(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "h"),
        )?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(2))?;
        let init = xd::init(1, xd::RING_NONE, 0);
        err(
            fe,
            "SUBMIT_3D to the destroyed context",
            gpu::submit_3d(2, &init),
            ty::ERR_INVALID_CONTEXT_ID,
        )
    })
}
fn attach_to_ctx_0(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _b = guest_blob(fe, 1, 4096)?;
        err(
            fe,
            "CTX_ATTACH_RESOURCE to ctx 0",
            gpu::ctx_attach_resource(0, 1),
            ty::ERR_INVALID_CONTEXT_ID,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}
fn host_blob_in_unknown_context(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "CREATE_BLOB HOST3D in ctx 9",
            gpu::resource_create_blob(
                9,
                1,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                2,
                4096,
                &[],
            ),
            ty::ERR_INVALID_CONTEXT_ID,
        )
    })
}
fn context_init_flag_bits(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "CTX_CREATE cross-domain with unknown context_init flags",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN | 0x100, "h"),
            ty::ERR_INVALID_PARAMETER,
        )?;
        // Not created.
        err(
            fe,
            "CTX_DESTROY",
            gpu::ctx_destroy(2),
            ty::ERR_INVALID_CONTEXT_ID,
        )
    })
}
fn capset_info_index_u32_max(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        err(
            fe,
            "GET_CAPSET_INFO index 0xffffffff",
            gpu::get_capset_info(u32::MAX),
            ty::ERR_INVALID_PARAMETER,
        )
    })
}
fn host_blob_id_of_another_context(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        ok(
            fe,
            "CTX_CREATE 2",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "other"),
        )?;
        err(
            fe,
            "CREATE_BLOB HOST3D in ctx 2 with ctx 1's blob_id",
            gpu::resource_create_blob(
                2,
                2,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                u64::from(reqs.blob_id),
                reqs.size,
                &[],
            ),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "CTX_DESTROY 2", gpu::ctx_destroy(2))?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        drop_cross_domain(fe)
    })
}
fn host_blob_wrong_size(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        err(
            fe,
            "CREATE_BLOB HOST3D with twice the size",
            gpu::resource_create_blob(
                CTX_ID,
                2,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                u64::from(reqs.blob_id),
                reqs.size * 2,
                &[],
            ),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        drop_cross_domain(fe)
    })
}
fn host_blob_id_never_handed_out(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _cd = CrossDomain::init(fe)?;
        err(
            fe,
            "CREATE_BLOB HOST3D blob_id 12345",
            gpu::resource_create_blob(
                CTX_ID,
                2,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                12345,
                4096,
                &[],
            ),
            ty::ERR_INVALID_PARAMETER,
        )?;
        drop_cross_domain(fe)
    })
}

fn default_context_refuses_submit(harness: &Harness) -> CaseResult {
    // Linux creates a context with context_init 0 for every DRM file that makes resources
    // when 3D is offered. It is accepted (resources attach to it) but has no renderer: a
    // SUBMIT_3D there is ERR_UNSPEC, as on a device without virgl.
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE context_init 0",
            gpu::ctx_create(3, 0, "default"),
        )?;
        ok(
            fe,
            "CREATE_2D",
            gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 4, 4),
        )?;
        ok(fe, "CTX_ATTACH_RESOURCE", gpu::ctx_attach_resource(3, 1))?;
        err(
            fe,
            "SUBMIT_3D in the default context",
            gpu::submit_3d(3, &[0; 16]),
            ty::ERR_UNSPEC,
        )?;
        ok(fe, "CTX_DETACH_RESOURCE", gpu::ctx_detach_resource(3, 1))?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(3))?;
        ok(fe, "UNREF", gpu::resource_unref(1))
    })
}

// ---------------------------------------------------------------------------------------
// xd

fn bad_stream(
    harness: &Harness,
    what: &'static str,
    stream: fn() -> Vec<u8>,
    t: u32,
) -> CaseResult {
    guarded(harness, |fe| {
        let _cd = CrossDomain::init(fe)?;
        err(fe, what, gpu::submit_3d(CTX_ID, &stream()), t)?;
        drop_cross_domain(fe)
    })
}
fn cmd_size_zero(harness: &Harness) -> CaseResult {
    bad_stream(
        harness,
        "cross-domain command with cmd_size 0",
        || {
            let mut s = xd::get_image_requirements(4, 4, xd::DRM_FORMAT_ARGB8888, 0);
            s[2..4].copy_from_slice(&0u16.to_le_bytes());
            s
        },
        ty::ERR_INVALID_PARAMETER,
    )
}
fn cmd_size_past_stream(harness: &Harness) -> CaseResult {
    bad_stream(
        harness,
        "cross-domain command with cmd_size past the stream",
        || {
            let mut s = xd::get_image_requirements(4, 4, xd::DRM_FORMAT_ARGB8888, 0);
            s[2..4].copy_from_slice(&4000u16.to_le_bytes());
            s
        },
        ty::ERR_INVALID_PARAMETER,
    )
}
fn init_size_short(harness: &Harness) -> CaseResult {
    bad_stream(
        harness,
        "CROSS_DOMAIN_CMD_INIT with cmd_size 12",
        || {
            let mut s = xd::init(RING_RES, xd::RING_NONE, 0);
            s[2..4].copy_from_slice(&12u16.to_le_bytes());
            s
        },
        ty::ERR_INVALID_PARAMETER,
    )
}
fn header_truncated(harness: &Harness) -> CaseResult {
    bad_stream(
        harness,
        "a 4-byte cross-domain stream",
        || xd::init(RING_RES, xd::RING_NONE, 0)[..4].to_vec(),
        ty::ERR_INVALID_PARAMETER,
    )
}
fn garbage_after_good_command(harness: &Harness) -> CaseResult {
    bad_stream(
        harness,
        "a good GET_IMAGE_REQUIREMENTS followed by 5 bytes",
        || {
            let mut s = xd::get_image_requirements(4, 4, xd::DRM_FORMAT_ARGB8888, 0);
            s.extend_from_slice(&[2, 0, 0xff, 0xff, 0]);
            s
        },
        ty::ERR_INVALID_PARAMETER,
    )
}
fn image_requirements_before_init(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "h"),
        )?;
        let cmd = xd::get_image_requirements(16, 16, xd::DRM_FORMAT_ARGB8888, 0);
        err(
            fe,
            "GET_IMAGE_REQUIREMENTS before INIT",
            gpu::submit_3d(2, &cmd),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(2))
    })
}
/// A POLL in a context whose INIT opened no channel: an error (ours: ERR_INVALID_PARAMETER,
/// as for every channel command without a channel; other backends may say ERR_UNSPEC).
fn poll_without_a_channel(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let _cd = CrossDomain::init(fe)?;
        let r = ctrl(
            fe,
            "CROSS_DOMAIN_CMD_POLL without a channel",
            gpu::submit_3d(CTX_ID, &[3, 0, 8, 0, 0, 0, 0, 0]),
        )?;
        let want_exact = fe.peer() == crate::frontend::Peer::Ours;
        ensure(
            fe,
            if want_exact {
                r.ty == ty::ERR_INVALID_PARAMETER
            } else {
                r.ty >= ty::ERR_UNSPEC
            },
            || format!("POLL without a channel answered {}", r.name()),
        )?;
        drop_cross_domain(fe)
    })
}
fn init_with_2d_ring(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        ok(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "h"),
        )?;
        let _b = res_2d(fe, 5, 16, 16)?;
        ok(fe, "CTX_ATTACH", gpu::ctx_attach_resource(2, 5))?;
        err(
            fe,
            "INIT with a 2D resource as query ring",
            gpu::submit_3d(2, &xd::init(5, xd::RING_NONE, 0)),
            ty::ERR_INVALID_PARAMETER,
        )?;
        ok(fe, "CTX_DESTROY", gpu::ctx_destroy(2))?;
        ok(fe, "UNREF", gpu::resource_unref(5))
    })
}

// ---------------------------------------------------------------------------------------
// fence

fn fenced(fe: &mut Frontend, what: &str, cmd: Cmd, fence: u64, t: u32) -> CaseResult {
    let r = send_expecting(fe, what, cmd.fence(fence, None), t)?;
    ensure(
        fe,
        r.fence_id == fence && r.flags & gpu::FLAG_FENCE != 0,
        || {
            format!(
                "{what}: fence {fence} answered as {} (flags {:#x})",
                r.fence_id, r.flags
            )
        },
    )
}

fn decreasing_ids_echoed(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        for fence in [100u64, 50, 7, 1] {
            fenced(
                fe,
                "GET_DISPLAY_INFO",
                gpu::get_display_info(),
                fence,
                ty::OK_DISPLAY_INFO,
            )?;
        }
        Ok(())
    })
}
fn error_keeps_fence(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        fenced(
            fe,
            "UNREF of unknown",
            gpu::resource_unref(99),
            41,
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
        fenced(
            fe,
            "unknown command",
            Cmd::new(0x7777, 0),
            42,
            ty::ERR_UNSPEC,
        )
    })
}
fn u64_max_and_zero(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        fenced(
            fe,
            "GET_DISPLAY_INFO",
            gpu::get_display_info(),
            u64::MAX,
            ty::OK_DISPLAY_INFO,
        )?;
        fenced(
            fe,
            "GET_DISPLAY_INFO",
            gpu::get_display_info(),
            0,
            ty::OK_DISPLAY_INFO,
        )
    })
}
fn pipelined_out_of_order_ids(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let fences = [4u64, 2, 3, 1, 9, 5];
        let mut heads = Vec::new();
        for &f in &fences {
            let cmd = gpu::get_display_info().fence(f, None).into_bytes();
            let head = fe
                .send(CONTROL_QUEUE, &[&cmd], gpu::resp_size::DISPLAY_INFO)
                .map_err(|e| e.to_string())?;
            heads.push((head, f));
        }
        for &(head, f) in &heads {
            let (h, bytes) = fe.wait(CONTROL_QUEUE).map_err(|e| e.to_string())?;
            let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
            ensure(
                fe,
                h == head && r.fence_id == f && r.ty == ty::OK_DISPLAY_INFO,
                || {
                    format!(
                        "expected head {head} fence {f}, got head {h} fence {} ({})",
                        r.fence_id,
                        r.name()
                    )
                },
            )?;
        }
        Ok(())
    })
}
fn ring_idx_echoed(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let r = send_expecting(
            fe,
            "GET_DISPLAY_INFO with ring_idx 63",
            gpu::get_display_info().fence(5, Some(63)),
            ty::OK_DISPLAY_INFO,
        )?;
        ensure(
            fe,
            r.fence_id == 5 && r.ring_idx == 63 && r.flags & gpu::FLAG_INFO_RING_IDX != 0,
            || {
                format!(
                    "fence {} ring {} flags {:#x}",
                    r.fence_id, r.ring_idx, r.flags
                )
            },
        )
    })
}
