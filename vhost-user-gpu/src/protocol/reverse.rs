//! The driver's half of the codec: [`GpuCommand::encode`] and [`GpuResponse::decode`].
//!
//! A device never needs these; the crate's tests and fuzz targets do (to build requests and
//! check answers), so they are compiled only with the `test-codec` feature. The conformance
//! frontend (`vug-conformance`) deliberately does not use them: it has its own encoder,
//! written independently from the specification, so that a shared misreading cannot hide.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_gpu as vg;

use super::wire::{WireReader, WireWrite};
use super::{
    resp, CreateBlob, CtrlHeader, CursorPos, CursorUpdate, DecodeError, DisplayMode, GpuCommand,
    GpuError, GpuResponse, MemEntry, Rect, ScanoutBlob, EDID_BLOB_SIZE, MAX_SCANOUTS,
};

impl GpuCommand {
    /// Encodes the request as a driver would (for test frontends). `hdr.ctrl_type` is
    /// replaced by this command's type. Fields this device ignores (3D commands) are zero.
    pub fn encode(&self, hdr: &CtrlHeader, out: &mut Vec<u8>) {
        use GpuCommand as C;
        let mut hdr = *hdr;
        hdr.ctrl_type = self.ctrl_type();
        hdr.encode(out);
        match self {
            C::GetDisplayInfo | C::CtxDestroy => {}
            C::GetEdid { scanout_id } => {
                out.put_u32(*scanout_id);
                out.put_u32(0);
            }
            C::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => {
                out.put_u32(*resource_id);
                out.put_u32(*format);
                out.put_u32(*width);
                out.put_u32(*height);
            }
            C::ResourceUnref { resource_id }
            | C::ResourceDetachBacking { resource_id }
            | C::ResourceAssignUuid { resource_id }
            | C::CtxAttachResource { resource_id }
            | C::CtxDetachResource { resource_id }
            | C::ResourceUnmapBlob { resource_id } => {
                out.put_u32(*resource_id);
                out.put_u32(0);
            }
            C::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => {
                rect.write(out);
                out.put_u32(*scanout_id);
                out.put_u32(*resource_id);
            }
            C::ResourceFlush { rect, resource_id } => {
                rect.write(out);
                out.put_u32(*resource_id);
                out.put_u32(0);
            }
            C::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => {
                rect.write(out);
                out.put_u64(*offset);
                out.put_u32(*resource_id);
                out.put_u32(0);
            }
            C::ResourceAttachBacking {
                resource_id,
                entries,
            } => {
                out.put_u32(*resource_id);
                out.put_u32(entries.len() as u32);
                put_entries(out, entries);
            }
            C::GetCapsetInfo { capset_index } => {
                out.put_u32(*capset_index);
                out.put_u32(0);
            }
            C::GetCapset {
                capset_id,
                capset_version,
            } => {
                out.put_u32(*capset_id);
                out.put_u32(*capset_version);
            }
            C::ResourceCreateBlob(CreateBlob {
                resource_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                entries,
            }) => {
                out.put_u32(*resource_id);
                out.put_u32(*blob_mem);
                out.put_u32(*blob_flags);
                out.put_u32(entries.len() as u32);
                out.put_u64(*blob_id);
                out.put_u64(*size);
                put_entries(out, entries);
            }
            C::SetScanoutBlob(ScanoutBlob {
                rect,
                scanout_id,
                resource_id,
                width,
                height,
                format,
                strides,
                offsets,
            }) => {
                rect.write(out);
                out.put_u32(*scanout_id);
                out.put_u32(*resource_id);
                out.put_u32(*width);
                out.put_u32(*height);
                out.put_u32(*format);
                out.put_u32(0);
                for s in strides {
                    out.put_u32(*s);
                }
                for o in offsets {
                    out.put_u32(*o);
                }
            }
            C::CtxCreate {
                context_init,
                debug_name,
            } => {
                let name = debug_name.as_bytes();
                let len = name.len().min(64);
                out.put_u32(len as u32);
                out.put_u32(*context_init);
                out.extend_from_slice(&name[..len]);
                out.put_zeros(64 - len);
            }
            C::ResourceCreate3d {
                resource_id,
                resource: a,
            } => {
                for v in [
                    *resource_id,
                    a.target,
                    a.format,
                    a.bind,
                    a.width,
                    a.height,
                    a.depth,
                    a.array_size,
                    a.last_level,
                    a.nr_samples,
                    a.flags,
                ] {
                    out.put_u32(v);
                }
                out.put_zeros(tail_after_u32!(vg::virtio_gpu_resource_create_3d, flags));
            }
            C::TransferToHost3d {
                resource_id,
                transfer: t,
            }
            | C::TransferFromHost3d {
                resource_id,
                transfer: t,
            } => {
                for v in [t.bx.x, t.bx.y, t.bx.z, t.bx.w, t.bx.h, t.bx.d] {
                    out.put_u32(v);
                }
                out.put_u64(t.offset);
                for v in [*resource_id, t.level, t.stride, t.layer_stride] {
                    out.put_u32(v);
                }
                out.put_zeros(tail_after_u32!(
                    vg::virtio_gpu_transfer_host_3d,
                    layer_stride
                ));
            }
            C::Submit3d { commands } => {
                out.put_u32(commands.len() as u32);
                out.put_u32(0);
                out.extend_from_slice(commands);
            }
            C::ResourceMapBlob {
                resource_id,
                offset,
            } => {
                out.put_u32(*resource_id);
                out.put_u32(0);
                out.put_u64(*offset);
            }
            C::UpdateCursor(CursorUpdate {
                pos,
                resource_id,
                hot_x,
                hot_y,
            }) => {
                put_cursor_pos(out, pos);
                out.put_u32(*resource_id);
                out.put_u32(*hot_x);
                out.put_u32(*hot_y);
                out.put_u32(0);
            }
            C::MoveCursor { pos } => {
                put_cursor_pos(out, pos);
                out.put_zeros(
                    size_of::<vg::virtio_gpu_update_cursor>()
                        - offset_of!(vg::virtio_gpu_update_cursor, resource_id),
                );
            }
        }
    }
}

fn put_cursor_pos(out: &mut Vec<u8>, pos: &CursorPos) {
    out.put_u32(pos.scanout_id);
    out.put_u32(pos.x);
    out.put_u32(pos.y);
    out.put_u32(0);
}

fn put_entries(out: &mut Vec<u8>, entries: &[MemEntry]) {
    for e in entries {
        out.put_u64(e.addr);
        out.put_u32(e.length);
        out.put_u32(0);
    }
}

impl GpuResponse {
    /// Decodes a response (for test frontends). `OK_CAPSET` takes every byte after the
    /// header as capset data.
    pub fn decode(buf: &[u8]) -> Result<(CtrlHeader, GpuResponse), DecodeError> {
        let mut r = WireReader::new(buf, "virtio_gpu_ctrl_hdr");
        let hdr = CtrlHeader::read(&mut r)?;
        let response = match hdr.ctrl_type {
            resp::OK_NODATA => GpuResponse::OkNoData,
            resp::OK_DISPLAY_INFO => {
                r.set_what("virtio_gpu_resp_display_info");
                let mut modes = Vec::with_capacity(MAX_SCANOUTS);
                for _ in 0..MAX_SCANOUTS {
                    let rect = Rect::read(&mut r)?;
                    let enabled = r.u32()? != 0;
                    let flags = r.u32()?;
                    modes.push(DisplayMode {
                        rect,
                        enabled,
                        flags,
                    });
                }
                GpuResponse::OkDisplayInfo(modes)
            }
            resp::OK_CAPSET_INFO => {
                r.set_what("virtio_gpu_resp_capset_info");
                GpuResponse::OkCapsetInfo {
                    capset_id: r.u32()?,
                    max_version: r.u32()?,
                    max_size: r.u32()?,
                }
            }
            resp::OK_CAPSET => GpuResponse::OkCapset(r.bytes(r.remaining())?.to_vec()),
            resp::OK_EDID => {
                r.set_what("virtio_gpu_resp_edid");
                let size = r.u32()? as usize;
                r.skip(4)?;
                let blob = r.bytes(EDID_BLOB_SIZE)?;
                if size > EDID_BLOB_SIZE {
                    return Err(DecodeError::TooLarge {
                        what: "edid size",
                        value: size as u64,
                        limit: EDID_BLOB_SIZE as u64,
                    });
                }
                GpuResponse::OkEdid(blob[..size].to_vec())
            }
            resp::OK_RESOURCE_UUID => {
                r.set_what("virtio_gpu_resp_resource_uuid");
                GpuResponse::OkResourceUuid(r.array()?)
            }
            resp::OK_MAP_INFO => {
                r.set_what("virtio_gpu_resp_map_info");
                GpuResponse::OkMapInfo { map_info: r.u32()? }
            }
            resp::ERR_UNSPEC => GpuResponse::Err(GpuError::Unspec),
            resp::ERR_OUT_OF_MEMORY => GpuResponse::Err(GpuError::OutOfMemory),
            resp::ERR_INVALID_SCANOUT_ID => GpuResponse::Err(GpuError::InvalidScanoutId),
            resp::ERR_INVALID_RESOURCE_ID => GpuResponse::Err(GpuError::InvalidResourceId),
            resp::ERR_INVALID_CONTEXT_ID => GpuResponse::Err(GpuError::InvalidContextId),
            resp::ERR_INVALID_PARAMETER => GpuResponse::Err(GpuError::InvalidParameter),
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok((hdr, response))
    }
}
