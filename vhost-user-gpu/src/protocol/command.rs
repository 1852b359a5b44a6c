//! [`GpuCommand`]: one virtio-gpu request (control or cursor queue), decoded from the bytes
//! of a descriptor chain.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_gpu as vg;

use super::wire::WireReader;
use super::{
    cmd, command_name, CtrlHeader, CursorPos, DecodeError, MemEntry, Rect, MAX_MEM_ENTRIES,
    MEM_ENTRY_SIZE,
};

/// A decoded virtio-gpu request (control or cursor queue), without its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuCommand {
    /// `GET_DISPLAY_INFO`.
    GetDisplayInfo,
    /// `GET_EDID`.
    GetEdid {
        /// Scanout to describe.
        scanout_id: u32,
    },
    /// `RESOURCE_CREATE_2D`.
    ResourceCreate2d {
        /// New resource id.
        resource_id: u32,
        /// `virtio_gpu_formats` value.
        format: u32,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// `RESOURCE_UNREF`.
    ResourceUnref {
        /// Resource to destroy.
        resource_id: u32,
    },
    /// `SET_SCANOUT`.
    SetScanout {
        /// Part of the resource shown.
        rect: Rect,
        /// Scanout index.
        scanout_id: u32,
        /// Resource shown (0 disables the scanout).
        resource_id: u32,
    },
    /// `RESOURCE_FLUSH`.
    ResourceFlush {
        /// Damaged part of the resource.
        rect: Rect,
        /// Resource.
        resource_id: u32,
    },
    /// `TRANSFER_TO_HOST_2D`.
    TransferToHost2d {
        /// Part of the resource to update.
        rect: Rect,
        /// Byte offset of the rectangle's first pixel in the backing.
        offset: u64,
        /// Resource.
        resource_id: u32,
    },
    /// `RESOURCE_ATTACH_BACKING`.
    ResourceAttachBacking {
        /// Resource.
        resource_id: u32,
        /// Guest memory pieces, in order.
        entries: Vec<MemEntry>,
    },
    /// `RESOURCE_DETACH_BACKING`.
    ResourceDetachBacking {
        /// Resource.
        resource_id: u32,
    },
    /// `GET_CAPSET_INFO`.
    GetCapsetInfo {
        /// Index in `0..num_capsets`.
        capset_index: u32,
    },
    /// `GET_CAPSET`.
    GetCapset {
        /// Capset id.
        capset_id: u32,
        /// Requested version.
        capset_version: u32,
    },
    /// `RESOURCE_ASSIGN_UUID`.
    ResourceAssignUuid {
        /// Resource.
        resource_id: u32,
    },
    /// `RESOURCE_CREATE_BLOB`.
    ResourceCreateBlob(CreateBlob),
    /// `SET_SCANOUT_BLOB`.
    SetScanoutBlob(ScanoutBlob),
    /// `CTX_CREATE`.
    CtxCreate {
        /// `context_init` (capset id in the low 8 bits).
        context_init: u32,
        /// Debug name (lossy UTF-8, at most 64 bytes).
        debug_name: String,
    },
    /// `CTX_DESTROY`.
    CtxDestroy,
    /// `CTX_ATTACH_RESOURCE`.
    CtxAttachResource {
        /// Resource.
        resource_id: u32,
    },
    /// `CTX_DETACH_RESOURCE`.
    CtxDetachResource {
        /// Resource.
        resource_id: u32,
    },
    /// `RESOURCE_CREATE_3D`: a renderer resource (virgl).
    ResourceCreate3d {
        /// Resource id.
        resource_id: u32,
        /// What the renderer makes.
        resource: Resource3d,
    },
    /// `TRANSFER_TO_HOST_3D`: guest backing into a renderer resource.
    TransferToHost3d {
        /// Resource id.
        resource_id: u32,
        /// What moves.
        transfer: Transfer3d,
    },
    /// `TRANSFER_FROM_HOST_3D`: a renderer resource into its guest backing.
    TransferFromHost3d {
        /// Resource id.
        resource_id: u32,
        /// What moves.
        transfer: Transfer3d,
    },
    /// `SUBMIT_3D`: a command buffer for the context's capset (renderer or cross-domain).
    Submit3d {
        /// The command stream.
        commands: Vec<u8>,
    },
    /// `RESOURCE_MAP_BLOB`.
    ResourceMapBlob {
        /// Resource.
        resource_id: u32,
        /// Offset in the host-visible region.
        offset: u64,
    },
    /// `RESOURCE_UNMAP_BLOB`.
    ResourceUnmapBlob {
        /// Resource.
        resource_id: u32,
    },
    /// `UPDATE_CURSOR` (cursor queue).
    UpdateCursor(CursorUpdate),
    /// `MOVE_CURSOR` (cursor queue).
    MoveCursor {
        /// Position.
        pos: CursorPos,
    },
}

/// The fields of `RESOURCE_CREATE_3D` after the resource id (Gallium terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resource3d {
    /// `pipe_texture_target` (0: a buffer).
    pub target: u32,
    /// virgl format.
    pub format: u32,
    /// `VIRGL_BIND_*`.
    pub bind: u32,
    /// Width (bytes for buffers).
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Depth.
    pub depth: u32,
    /// Array size.
    pub array_size: u32,
    /// Last mip level.
    pub last_level: u32,
    /// Sample count.
    pub nr_samples: u32,
    /// `VIRGL_RESOURCE_FLAG_*`.
    pub flags: u32,
}

/// `struct virtio_gpu_box`: a box in a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Box3d {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Front.
    pub z: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Depth.
    pub d: u32,
}

/// The fields of `TRANSFER_TO_HOST_3D` / `TRANSFER_FROM_HOST_3D` but the resource id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer3d {
    /// The box in the resource.
    pub bx: Box3d,
    /// Byte offset in the backing.
    pub offset: u64,
    /// Mip level.
    pub level: u32,
    /// Row stride in the backing (0: tightly packed).
    pub stride: u32,
    /// Layer stride in the backing (0: tightly packed).
    pub layer_stride: u32,
}

impl Transfer3d {
    /// All of a `width` x `height` 2D image (level 0, one layer), tightly packed at the
    /// start of the backing.
    pub fn image(width: u32, height: u32) -> Self {
        Transfer3d {
            bx: Box3d {
                w: width,
                h: height,
                d: 1,
                ..Box3d::default()
            },
            ..Transfer3d::default()
        }
    }
}

/// The fields of `RESOURCE_CREATE_BLOB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateBlob {
    /// New resource id.
    pub resource_id: u32,
    /// `BLOB_MEM_*`.
    pub blob_mem: u32,
    /// `BLOB_FLAG_*`.
    pub blob_flags: u32,
    /// Context-specific blob id (HOST3D).
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
    /// Guest memory pieces (GUEST blobs).
    pub entries: Vec<MemEntry>,
}

/// The fields of `SET_SCANOUT_BLOB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanoutBlob {
    /// Part of the image shown.
    pub rect: Rect,
    /// Scanout index.
    pub scanout_id: u32,
    /// Blob resource (0 disables the scanout).
    pub resource_id: u32,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// `virtio_gpu_formats` value.
    pub format: u32,
    /// Plane strides.
    pub strides: [u32; 4],
    /// Plane offsets.
    pub offsets: [u32; 4],
}

/// The fields of `UPDATE_CURSOR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUpdate {
    /// Position.
    pub pos: CursorPos,
    /// Cursor image resource (0 hides the cursor).
    pub resource_id: u32,
    /// Hotspot x.
    pub hot_x: u32,
    /// Hotspot y.
    pub hot_y: u32,
}

/// Most SUBMIT_3D payload accepted, in bytes.
pub const MAX_SUBMIT_SIZE: u32 = 1 << 20;

impl GpuCommand {
    /// Decodes a whole request: header, then the command's fields. Bytes past the command
    /// are ignored.
    pub fn decode(buf: &[u8]) -> Result<(CtrlHeader, GpuCommand), DecodeError> {
        let mut r = WireReader::new(buf, "virtio_gpu_ctrl_hdr");
        let hdr = CtrlHeader::read(&mut r)?;
        let command = Self::decode_body(hdr.ctrl_type, &mut r)?;
        Ok((hdr, command))
    }

    fn decode_body(ctrl_type: u32, r: &mut WireReader<'_>) -> Result<GpuCommand, DecodeError> {
        use GpuCommand as C;
        Ok(match ctrl_type {
            cmd::GET_DISPLAY_INFO => C::GetDisplayInfo,
            cmd::GET_EDID => {
                r.set_what("virtio_gpu_cmd_get_edid");
                let scanout_id = r.u32()?;
                r.skip(4)?;
                C::GetEdid { scanout_id }
            }
            cmd::RESOURCE_CREATE_2D => {
                r.set_what("virtio_gpu_resource_create_2d");
                C::ResourceCreate2d {
                    resource_id: r.u32()?,
                    format: r.u32()?,
                    width: r.u32()?,
                    height: r.u32()?,
                }
            }
            cmd::RESOURCE_UNREF => {
                r.set_what("virtio_gpu_resource_unref");
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::ResourceUnref { resource_id }
            }
            cmd::SET_SCANOUT => {
                r.set_what("virtio_gpu_set_scanout");
                C::SetScanout {
                    rect: Rect::read(r)?,
                    scanout_id: r.u32()?,
                    resource_id: r.u32()?,
                }
            }
            cmd::RESOURCE_FLUSH => {
                r.set_what("virtio_gpu_resource_flush");
                let rect = Rect::read(r)?;
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::ResourceFlush { rect, resource_id }
            }
            cmd::TRANSFER_TO_HOST_2D => {
                r.set_what("virtio_gpu_transfer_to_host_2d");
                let rect = Rect::read(r)?;
                let offset = r.u64()?;
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::TransferToHost2d {
                    rect,
                    offset,
                    resource_id,
                }
            }
            cmd::RESOURCE_ATTACH_BACKING => {
                r.set_what("virtio_gpu_resource_attach_backing");
                let resource_id = r.u32()?;
                let nr_entries = r.u32()?;
                let entries = read_entries(r, nr_entries)?;
                C::ResourceAttachBacking {
                    resource_id,
                    entries,
                }
            }
            cmd::RESOURCE_DETACH_BACKING => {
                r.set_what("virtio_gpu_resource_detach_backing");
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::ResourceDetachBacking { resource_id }
            }
            cmd::GET_CAPSET_INFO => {
                r.set_what("virtio_gpu_get_capset_info");
                let capset_index = r.u32()?;
                r.skip(4)?;
                C::GetCapsetInfo { capset_index }
            }
            cmd::GET_CAPSET => {
                r.set_what("virtio_gpu_get_capset");
                C::GetCapset {
                    capset_id: r.u32()?,
                    capset_version: r.u32()?,
                }
            }
            cmd::RESOURCE_ASSIGN_UUID => {
                r.set_what("virtio_gpu_resource_assign_uuid");
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::ResourceAssignUuid { resource_id }
            }
            cmd::RESOURCE_CREATE_BLOB => {
                r.set_what("virtio_gpu_resource_create_blob");
                let resource_id = r.u32()?;
                let blob_mem = r.u32()?;
                let blob_flags = r.u32()?;
                let nr_entries = r.u32()?;
                let blob_id = r.u64()?;
                let size = r.u64()?;
                let entries = read_entries(r, nr_entries)?;
                C::ResourceCreateBlob(CreateBlob {
                    resource_id,
                    blob_mem,
                    blob_flags,
                    blob_id,
                    size,
                    entries,
                })
            }
            cmd::SET_SCANOUT_BLOB => {
                r.set_what("virtio_gpu_set_scanout_blob");
                let rect = Rect::read(r)?;
                let scanout_id = r.u32()?;
                let resource_id = r.u32()?;
                let width = r.u32()?;
                let height = r.u32()?;
                let format = r.u32()?;
                r.skip(4)?;
                let mut strides = [0u32; 4];
                for s in &mut strides {
                    *s = r.u32()?;
                }
                let mut offsets = [0u32; 4];
                for o in &mut offsets {
                    *o = r.u32()?;
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
                })
            }
            cmd::CTX_CREATE => {
                r.set_what("virtio_gpu_ctx_create");
                let nlen = r.u32()?;
                let context_init = r.u32()?;
                let name = r.bytes(64)?;
                let len = (nlen as usize).min(name.len());
                let name = &name[..len];
                let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                C::CtxCreate {
                    context_init,
                    debug_name: String::from_utf8_lossy(name).into_owned(),
                }
            }
            cmd::CTX_DESTROY => C::CtxDestroy,
            cmd::CTX_ATTACH_RESOURCE | cmd::CTX_DETACH_RESOURCE => {
                r.set_what("virtio_gpu_ctx_resource");
                let resource_id = r.u32()?;
                r.skip(4)?;
                if ctrl_type == cmd::CTX_ATTACH_RESOURCE {
                    C::CtxAttachResource { resource_id }
                } else {
                    C::CtxDetachResource { resource_id }
                }
            }
            cmd::RESOURCE_CREATE_3D => {
                r.set_what("virtio_gpu_resource_create_3d");
                let resource_id = r.u32()?;
                let resource = Resource3d {
                    target: r.u32()?,
                    format: r.u32()?,
                    bind: r.u32()?,
                    width: r.u32()?,
                    height: r.u32()?,
                    depth: r.u32()?,
                    array_size: r.u32()?,
                    last_level: r.u32()?,
                    nr_samples: r.u32()?,
                    flags: r.u32()?,
                };
                r.skip(tail_after_u32!(vg::virtio_gpu_resource_create_3d, flags))?;
                C::ResourceCreate3d {
                    resource_id,
                    resource,
                }
            }
            cmd::TRANSFER_TO_HOST_3D | cmd::TRANSFER_FROM_HOST_3D => {
                r.set_what("virtio_gpu_transfer_host_3d");
                let bx = Box3d {
                    x: r.u32()?,
                    y: r.u32()?,
                    z: r.u32()?,
                    w: r.u32()?,
                    h: r.u32()?,
                    d: r.u32()?,
                };
                let offset = r.u64()?;
                let resource_id = r.u32()?;
                let transfer = Transfer3d {
                    bx,
                    offset,
                    level: r.u32()?,
                    stride: r.u32()?,
                    layer_stride: r.u32()?,
                };
                r.skip(tail_after_u32!(
                    vg::virtio_gpu_transfer_host_3d,
                    layer_stride
                ))?;
                if ctrl_type == cmd::TRANSFER_TO_HOST_3D {
                    C::TransferToHost3d {
                        resource_id,
                        transfer,
                    }
                } else {
                    C::TransferFromHost3d {
                        resource_id,
                        transfer,
                    }
                }
            }
            cmd::SUBMIT_3D => {
                r.set_what("virtio_gpu_cmd_submit");
                let size = r.u32()?;
                r.skip(4)?;
                if size > MAX_SUBMIT_SIZE {
                    return Err(DecodeError::TooLarge {
                        what: "submit size",
                        value: size.into(),
                        limit: MAX_SUBMIT_SIZE.into(),
                    });
                }
                r.set_what("SUBMIT_3D command buffer");
                C::Submit3d {
                    commands: r.bytes(size as usize)?.to_vec(),
                }
            }
            cmd::RESOURCE_MAP_BLOB => {
                r.set_what("virtio_gpu_resource_map_blob");
                let resource_id = r.u32()?;
                r.skip(4)?;
                let offset = r.u64()?;
                C::ResourceMapBlob {
                    resource_id,
                    offset,
                }
            }
            cmd::RESOURCE_UNMAP_BLOB => {
                r.set_what("virtio_gpu_resource_unmap_blob");
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::ResourceUnmapBlob { resource_id }
            }
            cmd::UPDATE_CURSOR => {
                r.set_what("virtio_gpu_update_cursor");
                let pos = read_cursor_pos(r)?;
                let resource_id = r.u32()?;
                let hot_x = r.u32()?;
                let hot_y = r.u32()?;
                r.skip(4)?;
                C::UpdateCursor(CursorUpdate {
                    pos,
                    resource_id,
                    hot_x,
                    hot_y,
                })
            }
            cmd::MOVE_CURSOR => {
                r.set_what("virtio_gpu_update_cursor");
                let pos = read_cursor_pos(r)?;
                r.skip(
                    size_of::<vg::virtio_gpu_update_cursor>()
                        - offset_of!(vg::virtio_gpu_update_cursor, resource_id),
                )?;
                C::MoveCursor { pos }
            }
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// The command type number.
    pub fn ctrl_type(&self) -> u32 {
        use GpuCommand as C;
        match self {
            C::GetDisplayInfo => cmd::GET_DISPLAY_INFO,
            C::GetEdid { .. } => cmd::GET_EDID,
            C::ResourceCreate2d { .. } => cmd::RESOURCE_CREATE_2D,
            C::ResourceUnref { .. } => cmd::RESOURCE_UNREF,
            C::SetScanout { .. } => cmd::SET_SCANOUT,
            C::ResourceFlush { .. } => cmd::RESOURCE_FLUSH,
            C::TransferToHost2d { .. } => cmd::TRANSFER_TO_HOST_2D,
            C::ResourceAttachBacking { .. } => cmd::RESOURCE_ATTACH_BACKING,
            C::ResourceDetachBacking { .. } => cmd::RESOURCE_DETACH_BACKING,
            C::GetCapsetInfo { .. } => cmd::GET_CAPSET_INFO,
            C::GetCapset { .. } => cmd::GET_CAPSET,
            C::ResourceAssignUuid { .. } => cmd::RESOURCE_ASSIGN_UUID,
            C::ResourceCreateBlob(..) => cmd::RESOURCE_CREATE_BLOB,
            C::SetScanoutBlob(..) => cmd::SET_SCANOUT_BLOB,
            C::CtxCreate { .. } => cmd::CTX_CREATE,
            C::CtxDestroy => cmd::CTX_DESTROY,
            C::CtxAttachResource { .. } => cmd::CTX_ATTACH_RESOURCE,
            C::CtxDetachResource { .. } => cmd::CTX_DETACH_RESOURCE,
            C::ResourceCreate3d { .. } => cmd::RESOURCE_CREATE_3D,
            C::TransferToHost3d { .. } => cmd::TRANSFER_TO_HOST_3D,
            C::TransferFromHost3d { .. } => cmd::TRANSFER_FROM_HOST_3D,
            C::Submit3d { .. } => cmd::SUBMIT_3D,
            C::ResourceMapBlob { .. } => cmd::RESOURCE_MAP_BLOB,
            C::ResourceUnmapBlob { .. } => cmd::RESOURCE_UNMAP_BLOB,
            C::UpdateCursor(..) => cmd::UPDATE_CURSOR,
            C::MoveCursor { .. } => cmd::MOVE_CURSOR,
        }
    }

    /// Short name for logs (`RESOURCE_CREATE_2D`, ...).
    pub fn name(&self) -> &'static str {
        command_name(self.ctrl_type())
    }
}

fn read_cursor_pos(r: &mut WireReader<'_>) -> Result<CursorPos, DecodeError> {
    let pos = CursorPos {
        scanout_id: r.u32()?,
        x: r.u32()?,
        y: r.u32()?,
    };
    r.skip(4)?;
    Ok(pos)
}

fn read_entries(r: &mut WireReader<'_>, count: u32) -> Result<Vec<MemEntry>, DecodeError> {
    if count > MAX_MEM_ENTRIES {
        return Err(DecodeError::TooLarge {
            what: "nr_entries",
            value: count.into(),
            limit: MAX_MEM_ENTRIES.into(),
        });
    }
    r.set_what("virtio_gpu_mem_entry array");
    // The whole array must be present before anything is allocated for it.
    let raw = r.bytes(count as usize * MEM_ENTRY_SIZE)?;
    let mut r = WireReader::new(raw, "virtio_gpu_mem_entry");
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let addr = r.u64()?;
        let length = r.u32()?;
        r.skip(4)?;
        entries.push(MemEntry { addr, length });
    }
    Ok(entries)
}
