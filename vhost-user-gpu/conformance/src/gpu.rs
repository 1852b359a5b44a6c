//! virtio-gpu command encoders and response decoders, written from the virtio 1.3
//! specification (section 5.7) for the test side.
//!
//! This codec is independent of the device's own (`vhost_user_gpu::protocol`) on purpose and
//! must stay so: the crate does not depend on `vhost-user-gpu`, and nothing here may be
//! shared with it or generated from it, so that a misreading of the specification in one
//! cannot hide behind the same misreading in the other. `duplicates` shows the two side by
//! side; that pair is deliberate.
//!
//! Numbers come from `virtio-bindings`; layouts are encoded by hand, little-endian.

use virtio_bindings::virtio_gpu as vg;

use crate::{Error, Result};

/// Size of `struct virtio_gpu_ctrl_hdr`.
pub const HDR_SIZE: usize = 24;

/// Command and response type codes.
#[allow(missing_docs)]
pub mod ty {
    use super::vg;
    pub const GET_DISPLAY_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO;
    pub const RESOURCE_CREATE_2D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D;
    pub const RESOURCE_UNREF: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF;
    pub const SET_SCANOUT: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT;
    pub const RESOURCE_FLUSH: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH;
    pub const TRANSFER_TO_HOST_2D: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D;
    pub const RESOURCE_ATTACH_BACKING: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING;
    pub const RESOURCE_DETACH_BACKING: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING;
    pub const GET_CAPSET_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET_INFO;
    pub const GET_CAPSET: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET;
    pub const GET_EDID: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_EDID;
    pub const RESOURCE_ASSIGN_UUID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID;
    pub const RESOURCE_CREATE_BLOB: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB;
    pub const SET_SCANOUT_BLOB: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT_BLOB;
    pub const CTX_CREATE: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_CREATE;
    pub const CTX_DESTROY: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DESTROY;
    pub const CTX_ATTACH_RESOURCE: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE;
    pub const CTX_DETACH_RESOURCE: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE;
    pub const RESOURCE_CREATE_3D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_3D;
    pub const TRANSFER_TO_HOST_3D: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D;
    pub const TRANSFER_FROM_HOST_3D: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D;
    pub const SUBMIT_3D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SUBMIT_3D;
    pub const RESOURCE_MAP_BLOB: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB;
    pub const RESOURCE_UNMAP_BLOB: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB;
    pub const UPDATE_CURSOR: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_UPDATE_CURSOR;
    pub const MOVE_CURSOR: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_MOVE_CURSOR;

    pub const OK_NODATA: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
    pub const OK_DISPLAY_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
    pub const OK_CAPSET_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET_INFO;
    pub const OK_CAPSET: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET;
    pub const OK_EDID: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID;
    pub const OK_RESOURCE_UUID: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_RESOURCE_UUID;
    pub const OK_MAP_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_MAP_INFO;
    pub const ERR_UNSPEC: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;
    pub const ERR_OUT_OF_MEMORY: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    pub const ERR_INVALID_SCANOUT_ID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
    pub const ERR_INVALID_RESOURCE_ID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
    pub const ERR_INVALID_CONTEXT_ID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID;
    pub const ERR_INVALID_PARAMETER: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;

    /// A readable name for a type code, for assertion messages.
    pub fn name(t: u32) -> &'static str {
        match t {
            OK_NODATA => "OK_NODATA",
            OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
            OK_CAPSET_INFO => "OK_CAPSET_INFO",
            OK_CAPSET => "OK_CAPSET",
            OK_EDID => "OK_EDID",
            OK_RESOURCE_UUID => "OK_RESOURCE_UUID",
            OK_MAP_INFO => "OK_MAP_INFO",
            ERR_UNSPEC => "ERR_UNSPEC",
            ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY",
            ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID",
            ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
            ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID",
            ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER",
            _ => "unknown",
        }
    }
}

/// Feature bits of virtio-gpu.
#[allow(missing_docs)]
pub mod features {
    use super::vg;
    pub const VIRGL: u64 = 1 << vg::VIRTIO_GPU_F_VIRGL;
    pub const EDID: u64 = 1 << vg::VIRTIO_GPU_F_EDID;
    pub const RESOURCE_UUID: u64 = 1 << vg::VIRTIO_GPU_F_RESOURCE_UUID;
    pub const RESOURCE_BLOB: u64 = 1 << vg::VIRTIO_GPU_F_RESOURCE_BLOB;
    pub const CONTEXT_INIT: u64 = 1 << vg::VIRTIO_GPU_F_CONTEXT_INIT;
}

/// Pixel formats.
#[allow(missing_docs)]
pub mod format {
    use super::vg;
    pub const B8G8R8A8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM;
    pub const B8G8R8X8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
    pub const R8G8B8A8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM;
}

/// Header flag: the command carries a fence.
pub const FLAG_FENCE: u32 = vg::VIRTIO_GPU_FLAG_FENCE;
/// Header flag: `ring_idx` is valid.
pub const FLAG_INFO_RING_IDX: u32 = vg::VIRTIO_GPU_FLAG_INFO_RING_IDX;
/// `blob_mem` values.
pub const BLOB_MEM_GUEST: u32 = vg::VIRTIO_GPU_BLOB_MEM_GUEST;
/// `blob_mem` HOST3D.
pub const BLOB_MEM_HOST3D: u32 = vg::VIRTIO_GPU_BLOB_MEM_HOST3D;
/// `blob_flags` MAPPABLE.
pub const BLOB_FLAG_MAPPABLE: u32 = vg::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE;
/// `blob_flags` SHAREABLE.
pub const BLOB_FLAG_SHAREABLE: u32 = vg::VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE;
/// Map info: cached.
pub const MAP_CACHE_CACHED: u32 = vg::VIRTIO_GPU_MAP_CACHE_CACHED;
/// Map info: write-combined.
pub const MAP_CACHE_WC: u32 = vg::VIRTIO_GPU_MAP_CACHE_WC;
/// Map info: uncached.
pub const MAP_CACHE_UNCACHED: u32 = vg::VIRTIO_GPU_MAP_CACHE_UNCACHED;
/// The cross-domain capset id.
pub const CAPSET_CROSS_DOMAIN: u32 = vg::VIRTIO_GPU_CAPSET_CROSS_DOMAIN;
/// `VIRTIO_GPU_CAPSET_VIRGL`.
pub const CAPSET_VIRGL: u32 = vg::VIRTIO_GPU_CAPSET_VIRGL;
/// `VIRTIO_GPU_CAPSET_VIRGL2`.
pub const CAPSET_VIRGL2: u32 = vg::VIRTIO_GPU_CAPSET_VIRGL2;
/// `VIRTIO_GPU_CAPSET_VENUS`.
pub const CAPSET_VENUS: u32 = vg::VIRTIO_GPU_CAPSET_VENUS;
/// shmid of the host-visible region.
pub const SHM_ID_HOST_VISIBLE: u8 = vg::virtio_gpu_shm_id_VIRTIO_GPU_SHM_ID_HOST_VISIBLE as u8;

/// A rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Rect {
    /// A rectangle at the origin.
    pub fn sized(width: u32, height: u32) -> Self {
        Self {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// One guest memory range of a resource's backing (`virtio_gpu_mem_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
}

/// A command being built: header plus body, little-endian.
#[derive(Debug, Clone)]
pub struct Cmd(Vec<u8>);

impl Cmd {
    /// A command of type `ty` for context `ctx_id` with no flags.
    pub fn new(ty: u32, ctx_id: u32) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&ctx_id.to_le_bytes());
        v.extend_from_slice(&[0u8; 4]);
        Self(v)
    }
    /// Sets a fence (and optionally a ring index) in the header.
    pub fn fence(mut self, fence_id: u64, ring_idx: Option<u8>) -> Self {
        let mut flags = FLAG_FENCE;
        if let Some(r) = ring_idx {
            flags |= FLAG_INFO_RING_IDX;
            self.0[20] = r;
        }
        self.0[4..8].copy_from_slice(&flags.to_le_bytes());
        self.0[8..16].copy_from_slice(&fence_id.to_le_bytes());
        self
    }
    /// Overwrites the header flags (for malformed-input tests).
    pub fn raw_flags(mut self, flags: u32) -> Self {
        self.0[4..8].copy_from_slice(&flags.to_le_bytes());
        self
    }
    /// Appends a `u32`.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Appends a rectangle.
    pub fn rect(self, r: Rect) -> Self {
        self.u32(r.x).u32(r.y).u32(r.width).u32(r.height)
    }
    /// Drops bytes from the end (for truncated-command tests).
    pub fn truncate(mut self, len: usize) -> Self {
        self.0.truncate(len);
        self
    }
    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the command is empty (never, a header is always there).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `GET_DISPLAY_INFO`.
pub fn get_display_info() -> Cmd {
    Cmd::new(ty::GET_DISPLAY_INFO, 0)
}
/// `RESOURCE_CREATE_2D`.
pub fn resource_create_2d(resource_id: u32, format: u32, width: u32, height: u32) -> Cmd {
    Cmd::new(ty::RESOURCE_CREATE_2D, 0)
        .u32(resource_id)
        .u32(format)
        .u32(width)
        .u32(height)
}
/// `RESOURCE_UNREF`.
pub fn resource_unref(resource_id: u32) -> Cmd {
    Cmd::new(ty::RESOURCE_UNREF, 0).u32(resource_id).u32(0)
}
/// `SET_SCANOUT`.
pub fn set_scanout(scanout_id: u32, resource_id: u32, r: Rect) -> Cmd {
    Cmd::new(ty::SET_SCANOUT, 0)
        .rect(r)
        .u32(scanout_id)
        .u32(resource_id)
}
/// `RESOURCE_FLUSH`.
pub fn resource_flush(resource_id: u32, r: Rect) -> Cmd {
    Cmd::new(ty::RESOURCE_FLUSH, 0)
        .rect(r)
        .u32(resource_id)
        .u32(0)
}
/// `TRANSFER_TO_HOST_2D`.
pub fn transfer_to_host_2d(resource_id: u32, r: Rect, offset: u64) -> Cmd {
    Cmd::new(ty::TRANSFER_TO_HOST_2D, 0)
        .rect(r)
        .u64(offset)
        .u32(resource_id)
        .u32(0)
}
fn entries(mut c: Cmd, entries: &[MemEntry]) -> Cmd {
    for e in entries {
        c = c.u64(e.addr).u32(e.length).u32(0);
    }
    c
}
/// `RESOURCE_ATTACH_BACKING` with its entries inline.
pub fn resource_attach_backing(resource_id: u32, list: &[MemEntry]) -> Cmd {
    let c = Cmd::new(ty::RESOURCE_ATTACH_BACKING, 0)
        .u32(resource_id)
        .u32(list.len() as u32);
    entries(c, list)
}
/// `RESOURCE_DETACH_BACKING`.
pub fn resource_detach_backing(resource_id: u32) -> Cmd {
    Cmd::new(ty::RESOURCE_DETACH_BACKING, 0)
        .u32(resource_id)
        .u32(0)
}
/// `GET_CAPSET_INFO`.
pub fn get_capset_info(capset_index: u32) -> Cmd {
    Cmd::new(ty::GET_CAPSET_INFO, 0).u32(capset_index).u32(0)
}
/// `GET_CAPSET`.
pub fn get_capset(capset_id: u32, capset_version: u32) -> Cmd {
    Cmd::new(ty::GET_CAPSET, 0)
        .u32(capset_id)
        .u32(capset_version)
}
/// `GET_EDID`.
pub fn get_edid(scanout: u32) -> Cmd {
    Cmd::new(ty::GET_EDID, 0).u32(scanout).u32(0)
}
/// `RESOURCE_ASSIGN_UUID`.
pub fn resource_assign_uuid(resource_id: u32) -> Cmd {
    Cmd::new(ty::RESOURCE_ASSIGN_UUID, 0)
        .u32(resource_id)
        .u32(0)
}
/// `RESOURCE_CREATE_BLOB` with its entries inline.
pub fn resource_create_blob(
    ctx_id: u32,
    resource_id: u32,
    blob_mem: u32,
    blob_flags: u32,
    blob_id: u64,
    size: u64,
    list: &[MemEntry],
) -> Cmd {
    let c = Cmd::new(ty::RESOURCE_CREATE_BLOB, ctx_id)
        .u32(resource_id)
        .u32(blob_mem)
        .u32(blob_flags)
        .u32(list.len() as u32)
        .u64(blob_id)
        .u64(size);
    entries(c, list)
}
/// Layout of a single-plane blob shown by `SET_SCANOUT_BLOB`.
#[derive(Debug, Clone, Copy)]
pub struct BlobLayout {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// virtio-gpu format.
    pub format: u32,
    /// Bytes per row.
    pub stride: u32,
    /// Offset of the first pixel in the blob.
    pub offset: u32,
}

/// `SET_SCANOUT_BLOB` for a single-plane format.
pub fn set_scanout_blob(scanout_id: u32, resource_id: u32, r: Rect, l: BlobLayout) -> Cmd {
    Cmd::new(ty::SET_SCANOUT_BLOB, 0)
        .rect(r)
        .u32(scanout_id)
        .u32(resource_id)
        .u32(l.width)
        .u32(l.height)
        .u32(l.format)
        .u32(0)
        .u32(l.stride)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(l.offset)
        .u32(0)
        .u32(0)
        .u32(0)
}
/// `CTX_CREATE`; `context_init` carries the capset id when CONTEXT_INIT is negotiated.
pub fn ctx_create(ctx_id: u32, context_init: u32, name: &str) -> Cmd {
    let mut debug_name = [0u8; 64];
    let n = name.len().min(64);
    debug_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    Cmd::new(ty::CTX_CREATE, ctx_id)
        .u32(n as u32)
        .u32(context_init)
        .bytes(&debug_name)
}
/// `CTX_DESTROY`.
pub fn ctx_destroy(ctx_id: u32) -> Cmd {
    Cmd::new(ty::CTX_DESTROY, ctx_id)
}
/// `CTX_ATTACH_RESOURCE`.
pub fn ctx_attach_resource(ctx_id: u32, resource_id: u32) -> Cmd {
    Cmd::new(ty::CTX_ATTACH_RESOURCE, ctx_id)
        .u32(resource_id)
        .u32(0)
}
/// `CTX_DETACH_RESOURCE`.
pub fn ctx_detach_resource(ctx_id: u32, resource_id: u32) -> Cmd {
    Cmd::new(ty::CTX_DETACH_RESOURCE, ctx_id)
        .u32(resource_id)
        .u32(0)
}
/// `RESOURCE_CREATE_3D` of a 2D texture without bind flags (refusal tests).
pub fn resource_create_3d(
    ctx_id: u32,
    resource_id: u32,
    format: u32,
    width: u32,
    height: u32,
) -> Cmd {
    texture_create_3d(ctx_id, resource_id, format, 0, width, height)
}
/// `RESOURCE_CREATE_3D` of a 2D texture with `bind` flags (`VIRGL_BIND_*`).
pub fn texture_create_3d(
    ctx_id: u32,
    resource_id: u32,
    format: u32,
    bind: u32,
    width: u32,
    height: u32,
) -> Cmd {
    use crate::virgl::TEXTURE_2D;
    create_3d(ctx_id, resource_id, TEXTURE_2D, format, bind, width, height)
}
/// `RESOURCE_CREATE_3D` of a buffer (`PIPE_BUFFER`) of `bytes` with `bind` flags.
pub fn buffer_create_3d(ctx_id: u32, resource_id: u32, bind: u32, bytes: u32) -> Cmd {
    use crate::virgl::{BUFFER, FORMAT_R8_UNORM};
    create_3d(ctx_id, resource_id, BUFFER, FORMAT_R8_UNORM, bind, bytes, 1)
}
/// `RESOURCE_CREATE_3D` of one level, one layer, one sample, depth 1.
fn create_3d(
    ctx_id: u32,
    resource_id: u32,
    target: u32,
    format: u32,
    bind: u32,
    width: u32,
    height: u32,
) -> Cmd {
    Cmd::new(ty::RESOURCE_CREATE_3D, ctx_id)
        .u32(resource_id)
        .u32(target)
        .u32(format)
        .u32(bind)
        .u32(width)
        .u32(height)
        .u32(1) // depth
        .u32(1) // array_size
        .u32(0) // last_level
        .u32(0) // nr_samples
        .u32(0) // flags
        .u32(0) // padding
}
/// `SUBMIT_3D` with the command stream inline.
pub fn submit_3d(ctx_id: u32, stream: &[u8]) -> Cmd {
    Cmd::new(ty::SUBMIT_3D, ctx_id)
        .u32(stream.len() as u32)
        .u32(0)
        .bytes(stream)
}
/// A 3D box for transfers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Box3d {
    /// x, y, z
    pub origin: [u32; 3],
    /// width, height, depth
    pub size: [u32; 3],
}
fn transfer_3d(t: u32, ctx_id: u32, resource_id: u32, b: Box3d, offset: u64, stride: u32) -> Cmd {
    Cmd::new(t, ctx_id)
        .u32(b.origin[0])
        .u32(b.origin[1])
        .u32(b.origin[2])
        .u32(b.size[0])
        .u32(b.size[1])
        .u32(b.size[2])
        .u64(offset)
        .u32(resource_id)
        .u32(0)
        .u32(stride)
        .u32(0)
}
/// `TRANSFER_TO_HOST_3D`.
pub fn transfer_to_host_3d(ctx_id: u32, res: u32, b: Box3d, offset: u64, stride: u32) -> Cmd {
    transfer_3d(ty::TRANSFER_TO_HOST_3D, ctx_id, res, b, offset, stride)
}
/// `TRANSFER_FROM_HOST_3D`.
pub fn transfer_from_host_3d(ctx_id: u32, res: u32, b: Box3d, offset: u64, stride: u32) -> Cmd {
    transfer_3d(ty::TRANSFER_FROM_HOST_3D, ctx_id, res, b, offset, stride)
}
/// `RESOURCE_MAP_BLOB`: map the blob at `offset` of the host-visible region.
pub fn resource_map_blob(ctx_id: u32, resource_id: u32, offset: u64) -> Cmd {
    Cmd::new(ty::RESOURCE_MAP_BLOB, ctx_id)
        .u32(resource_id)
        .u32(0)
        .u64(offset)
}
/// `RESOURCE_UNMAP_BLOB`.
pub fn resource_unmap_blob(ctx_id: u32, resource_id: u32) -> Cmd {
    Cmd::new(ty::RESOURCE_UNMAP_BLOB, ctx_id)
        .u32(resource_id)
        .u32(0)
}
fn cursor(t: u32, scanout: u32, x: u32, y: u32, resource_id: u32, hot: (u32, u32)) -> Cmd {
    Cmd::new(t, 0)
        .u32(scanout)
        .u32(x)
        .u32(y)
        .u32(0)
        .u32(resource_id)
        .u32(hot.0)
        .u32(hot.1)
        .u32(0)
}
/// `UPDATE_CURSOR` (cursor queue).
pub fn update_cursor(scanout: u32, x: u32, y: u32, resource_id: u32, hot: (u32, u32)) -> Cmd {
    cursor(ty::UPDATE_CURSOR, scanout, x, y, resource_id, hot)
}
/// `MOVE_CURSOR` (cursor queue); `resource_id` is the current cursor (0 hides it), as
/// Linux sends it.
pub fn move_cursor(scanout: u32, x: u32, y: u32, resource_id: u32) -> Cmd {
    cursor(ty::MOVE_CURSOR, scanout, x, y, resource_id, (0, 0))
}

/// A decoded response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Response type.
    pub ty: u32,
    /// Header flags.
    pub flags: u32,
    /// Fence id echoed back.
    pub fence_id: u64,
    /// Context id echoed back.
    pub ctx_id: u32,
    /// Ring index echoed back.
    pub ring_idx: u8,
    /// Bytes after the header.
    pub body: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| Error::Malformed(format!("response too short for u32 at {at}")))
}

/// One scanout of `OK_DISPLAY_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayMode {
    /// Position and size.
    pub rect: Rect,
    /// Whether the output is enabled.
    pub enabled: bool,
    /// Flags.
    pub flags: u32,
}

/// Body of `OK_CAPSET_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsetInfo {
    /// Capset id.
    pub id: u32,
    /// Highest version.
    pub max_version: u32,
    /// Largest size.
    pub max_size: u32,
}

impl Resp {
    /// Decodes `bytes` (what the device wrote).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HDR_SIZE {
            return Err(Error::Malformed(format!(
                "response of {} bytes",
                bytes.len()
            )));
        }
        Ok(Self {
            ty: le32(bytes, 0)?,
            flags: le32(bytes, 4)?,
            fence_id: u64::from(le32(bytes, 8)?) | (u64::from(le32(bytes, 12)?) << 32),
            ctx_id: le32(bytes, 16)?,
            ring_idx: bytes[20],
            body: bytes[HDR_SIZE..].to_vec(),
        })
    }
    /// The type's name.
    pub fn name(&self) -> &'static str {
        ty::name(self.ty)
    }
    /// Reads a `u32` of the body.
    pub fn body_u32(&self, at: usize) -> Result<u32> {
        le32(&self.body, at)
    }
    /// Decodes `OK_DISPLAY_INFO`.
    pub fn display_info(&self) -> Result<Vec<DisplayMode>> {
        self.check_type(ty::OK_DISPLAY_INFO)?;
        (0..16)
            .map(|i| {
                let o = i * 24;
                Ok(DisplayMode {
                    rect: Rect {
                        x: self.body_u32(o)?,
                        y: self.body_u32(o + 4)?,
                        width: self.body_u32(o + 8)?,
                        height: self.body_u32(o + 12)?,
                    },
                    enabled: self.body_u32(o + 16)? != 0,
                    flags: self.body_u32(o + 20)?,
                })
            })
            .collect()
    }
    /// Decodes `OK_CAPSET_INFO`.
    pub fn capset_info(&self) -> Result<CapsetInfo> {
        self.check_type(ty::OK_CAPSET_INFO)?;
        Ok(CapsetInfo {
            id: self.body_u32(0)?,
            max_version: self.body_u32(4)?,
            max_size: self.body_u32(8)?,
        })
    }
    /// Decodes `OK_EDID`: the EDID bytes.
    pub fn edid(&self) -> Result<Vec<u8>> {
        self.check_type(ty::OK_EDID)?;
        let size = self.body_u32(0)? as usize;
        self.body
            .get(8..8 + size)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Malformed(format!("EDID size {size} beyond response")))
    }
    /// Decodes `OK_MAP_INFO`: the cache attribute.
    pub fn map_info(&self) -> Result<u32> {
        self.check_type(ty::OK_MAP_INFO)?;
        self.body_u32(0)
    }
    /// Decodes `OK_RESOURCE_UUID`.
    pub fn uuid(&self) -> Result<[u8; 16]> {
        self.check_type(ty::OK_RESOURCE_UUID)?;
        self.body
            .get(..16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Malformed("uuid response too short".into()))
    }
    /// Fails unless the response has type `t`.
    pub fn check_type(&self, t: u32) -> Result<&Self> {
        if self.ty == t {
            Ok(self)
        } else {
            Err(Error::Malformed(format!(
                "expected {} ({t:#x}), got {} ({:#x})",
                ty::name(t),
                self.name(),
                self.ty
            )))
        }
    }
}

/// Expected response body sizes (what a driver posts as the writable buffer).
pub mod resp_size {
    use super::HDR_SIZE;
    /// `OK_NODATA` and errors.
    pub const NODATA: usize = HDR_SIZE;
    /// `OK_DISPLAY_INFO`.
    pub const DISPLAY_INFO: usize = HDR_SIZE + 16 * 24;
    /// `OK_CAPSET_INFO`.
    pub const CAPSET_INFO: usize = HDR_SIZE + 16;
    /// `OK_EDID`.
    pub const EDID: usize = HDR_SIZE + 8 + 1024;
    /// `OK_RESOURCE_UUID`.
    pub const UUID: usize = HDR_SIZE + 16;
    /// `OK_MAP_INFO`.
    pub const MAP_INFO: usize = HDR_SIZE + 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes of the specification's structs (virtio 1.3, 5.7.6).
    #[test]
    fn commands_have_the_specified_sizes() {
        let r = Rect::sized(1, 1);
        let cases: [(&str, Cmd, usize); 14] = [
            ("get_display_info", get_display_info(), 24),
            ("resource_create_2d", resource_create_2d(1, 1, 1, 1), 40),
            ("resource_unref", resource_unref(1), 32),
            ("set_scanout", set_scanout(0, 1, r), 48),
            ("resource_flush", resource_flush(1, r), 48),
            ("transfer_to_host_2d", transfer_to_host_2d(1, r, 0), 56),
            (
                "attach_backing + 1 entry",
                resource_attach_backing(1, &[MemEntry { addr: 0, length: 1 }]),
                48,
            ),
            (
                "create_blob",
                resource_create_blob(0, 1, 1, 0, 0, 1, &[]),
                56,
            ),
            (
                "set_scanout_blob",
                set_scanout_blob(
                    0,
                    1,
                    r,
                    BlobLayout {
                        width: 1,
                        height: 1,
                        format: 1,
                        stride: 4,
                        offset: 0,
                    },
                ),
                96,
            ),
            ("ctx_create", ctx_create(1, 5, "x"), 96),
            (
                "transfer_to_host_3d",
                transfer_to_host_3d(1, 1, Box3d::default(), 0, 0),
                72,
            ),
            ("map_blob", resource_map_blob(1, 1, 0), 40),
            ("unmap_blob", resource_unmap_blob(1, 1), 32),
            ("update_cursor", update_cursor(0, 0, 0, 1, (0, 0)), 56),
        ];
        for (name, cmd, size) in cases {
            assert_eq!(cmd.len(), size, "{name}");
        }
    }

    #[test]
    fn response_header_round_trip() {
        let cmd = Cmd::new(ty::OK_MAP_INFO, 7)
            .fence(0x1_0000_0002, Some(3))
            .u32(MAP_CACHE_WC)
            .u32(0);
        let resp = Resp::parse(&cmd.into_bytes()).unwrap();
        assert_eq!(resp.ty, ty::OK_MAP_INFO);
        assert_eq!(resp.flags, FLAG_FENCE | FLAG_INFO_RING_IDX);
        assert_eq!(resp.fence_id, 0x1_0000_0002);
        assert_eq!((resp.ctx_id, resp.ring_idx), (7, 3));
        assert_eq!(resp.map_info().unwrap(), MAP_CACHE_WC);
        assert!(resp.display_info().is_err());
        assert!(Resp::parse(&[0; 23]).is_err());
    }
}
