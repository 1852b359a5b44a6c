//! virtio-gpu wire protocol: the control header, one typed [`GpuCommand`] decoded from the
//! bytes a guest put in a descriptor chain, and one typed [`GpuResponse`] encoded back.
//!
//! Numbers come from `virtio-bindings` (`virtio_gpu`); layouts are checked against the
//! bindings' struct sizes in the tests. Decoding is done by hand from little-endian bytes
//! with bounds checks: every guest buffer may be short, long or hostile, and decoding never
//! panics. Trailing bytes after a fixed-size command are ignored (as QEMU and crosvm do);
//! variable-length parts (memory entries, SUBMIT_3D payload) must be present in full.
//!
//! This is the lowest layer of the crate: it imports nothing from the rest of it.
//! - [`command`]: [`GpuCommand`] and its decoder (what a device reads);
//! - [`response`]: [`GpuResponse`] and its encoder (what a device writes);
//! - [`cross_domain`]: the cross-domain context protocol carried in `SUBMIT_3D`;
//! - [`fourcc`]: the DRM formats the host side uses (cross-domain images, scanouts).
//!
//! The reverse direction (encoding commands, decoding responses), which only a driver needs,
//! is compiled with the `test-codec` feature, for the crate's tests and fuzz targets.

/// Bytes of the wire struct `$t` after its `u32` field `$field` (fields this device does
/// not use, and padding).
macro_rules! tail_after_u32 {
    ($t:ty, $field:ident) => {
        std::mem::size_of::<$t>() - std::mem::offset_of!($t, $field) - std::mem::size_of::<u32>()
    };
}

pub mod command;
pub mod cross_domain;
pub mod fourcc;
pub mod response;
#[cfg(any(test, feature = "test-codec"))]
mod reverse;
mod wire;

use virtio_bindings::virtio_gpu as vg;

pub use command::{
    Box3d, CreateBlob, CursorUpdate, GpuCommand, Resource3d, ScanoutBlob, Transfer3d,
    MAX_SUBMIT_SIZE,
};
pub use response::{DisplayMode, GpuError, GpuResponse};
use wire::{WireReader, WireWrite};

/// Command type numbers (`VIRTIO_GPU_CMD_*`).
pub mod cmd {
    use virtio_bindings::virtio_gpu as vg;
    /// `VIRTIO_GPU_CMD_GET_DISPLAY_INFO`
    pub const GET_DISPLAY_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO;
    /// `VIRTIO_GPU_CMD_RESOURCE_CREATE_2D`
    pub const RESOURCE_CREATE_2D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D;
    /// `VIRTIO_GPU_CMD_RESOURCE_UNREF`
    pub const RESOURCE_UNREF: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF;
    /// `VIRTIO_GPU_CMD_SET_SCANOUT`
    pub const SET_SCANOUT: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT;
    /// `VIRTIO_GPU_CMD_RESOURCE_FLUSH`
    pub const RESOURCE_FLUSH: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH;
    /// `VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D`
    pub const TRANSFER_TO_HOST_2D: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D;
    /// `VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING`
    pub const RESOURCE_ATTACH_BACKING: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING;
    /// `VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING`
    pub const RESOURCE_DETACH_BACKING: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING;
    /// `VIRTIO_GPU_CMD_GET_CAPSET_INFO`
    pub const GET_CAPSET_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET_INFO;
    /// `VIRTIO_GPU_CMD_GET_CAPSET`
    pub const GET_CAPSET: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET;
    /// `VIRTIO_GPU_CMD_GET_EDID`
    pub const GET_EDID: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_EDID;
    /// `VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID`
    pub const RESOURCE_ASSIGN_UUID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID;
    /// `VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB`
    pub const RESOURCE_CREATE_BLOB: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB;
    /// `VIRTIO_GPU_CMD_SET_SCANOUT_BLOB`
    pub const SET_SCANOUT_BLOB: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT_BLOB;
    /// `VIRTIO_GPU_CMD_CTX_CREATE`
    pub const CTX_CREATE: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_CREATE;
    /// `VIRTIO_GPU_CMD_CTX_DESTROY`
    pub const CTX_DESTROY: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DESTROY;
    /// `VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE`
    pub const CTX_ATTACH_RESOURCE: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE;
    /// `VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE`
    pub const CTX_DETACH_RESOURCE: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE;
    /// `VIRTIO_GPU_CMD_RESOURCE_CREATE_3D`
    pub const RESOURCE_CREATE_3D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_3D;
    /// `VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D`
    pub const TRANSFER_TO_HOST_3D: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D;
    /// `VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D`
    pub const TRANSFER_FROM_HOST_3D: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D;
    /// `VIRTIO_GPU_CMD_SUBMIT_3D`
    pub const SUBMIT_3D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SUBMIT_3D;
    /// `VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB`
    pub const RESOURCE_MAP_BLOB: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB;
    /// `VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB`
    pub const RESOURCE_UNMAP_BLOB: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB;
    /// `VIRTIO_GPU_CMD_UPDATE_CURSOR`
    pub const UPDATE_CURSOR: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_UPDATE_CURSOR;
    /// `VIRTIO_GPU_CMD_MOVE_CURSOR`
    pub const MOVE_CURSOR: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_MOVE_CURSOR;
}

/// Response type numbers (`VIRTIO_GPU_RESP_*`).
pub mod resp {
    use virtio_bindings::virtio_gpu as vg;
    /// `VIRTIO_GPU_RESP_OK_NODATA`
    pub const OK_NODATA: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
    /// `VIRTIO_GPU_RESP_OK_DISPLAY_INFO`
    pub const OK_DISPLAY_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
    /// `VIRTIO_GPU_RESP_OK_CAPSET_INFO`
    pub const OK_CAPSET_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET_INFO;
    /// `VIRTIO_GPU_RESP_OK_CAPSET`
    pub const OK_CAPSET: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET;
    /// `VIRTIO_GPU_RESP_OK_EDID`
    pub const OK_EDID: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID;
    /// `VIRTIO_GPU_RESP_OK_RESOURCE_UUID`
    pub const OK_RESOURCE_UUID: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_RESOURCE_UUID;
    /// `VIRTIO_GPU_RESP_OK_MAP_INFO`
    pub const OK_MAP_INFO: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_MAP_INFO;
    /// `VIRTIO_GPU_RESP_ERR_UNSPEC`
    pub const ERR_UNSPEC: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;
    /// `VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY`
    pub const ERR_OUT_OF_MEMORY: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    /// `VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID`
    pub const ERR_INVALID_SCANOUT_ID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
    /// `VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID`
    pub const ERR_INVALID_RESOURCE_ID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
    /// `VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID`
    pub const ERR_INVALID_CONTEXT_ID: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID;
    /// `VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER`
    pub const ERR_INVALID_PARAMETER: u32 =
        vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
}

/// Feature bit numbers (`VIRTIO_GPU_F_*`); the mask is `1 << bit`.
pub mod feature {
    use virtio_bindings::virtio_gpu as vg;
    /// `VIRTIO_GPU_F_VIRGL`: 3D commands (contexts, SUBMIT_3D).
    pub const VIRGL: u32 = vg::VIRTIO_GPU_F_VIRGL;
    /// `VIRTIO_GPU_F_EDID`
    pub const EDID: u32 = vg::VIRTIO_GPU_F_EDID;
    /// `VIRTIO_GPU_F_RESOURCE_UUID`
    pub const RESOURCE_UUID: u32 = vg::VIRTIO_GPU_F_RESOURCE_UUID;
    /// `VIRTIO_GPU_F_RESOURCE_BLOB`
    pub const RESOURCE_BLOB: u32 = vg::VIRTIO_GPU_F_RESOURCE_BLOB;
    /// `VIRTIO_GPU_F_CONTEXT_INIT`
    pub const CONTEXT_INIT: u32 = vg::VIRTIO_GPU_F_CONTEXT_INIT;
}

/// Header flag `VIRTIO_GPU_FLAG_FENCE`.
pub const FLAG_FENCE: u32 = vg::VIRTIO_GPU_FLAG_FENCE;
/// Header flag `VIRTIO_GPU_FLAG_INFO_RING_IDX`.
pub const FLAG_INFO_RING_IDX: u32 = vg::VIRTIO_GPU_FLAG_INFO_RING_IDX;
/// `VIRTIO_GPU_MAX_SCANOUTS`.
pub const MAX_SCANOUTS: usize = vg::VIRTIO_GPU_MAX_SCANOUTS as usize;
/// `VIRTIO_GPU_SHM_ID_HOST_VISIBLE`: the shared memory region blobs are mapped into.
pub const SHM_ID_HOST_VISIBLE: u8 = vg::virtio_gpu_shm_id_VIRTIO_GPU_SHM_ID_HOST_VISIBLE as u8;
/// `VIRTIO_GPU_EVENT_DISPLAY` (bit in `events_read`).
pub const EVENT_DISPLAY: u32 = vg::VIRTIO_GPU_EVENT_DISPLAY;
/// `VIRTIO_GPU_CAPSET_VIRGL`: virgl (OpenGL), the first version of its capability set.
pub const CAPSET_VIRGL: u32 = vg::VIRTIO_GPU_CAPSET_VIRGL;
/// `VIRTIO_GPU_CAPSET_VIRGL2`: virgl (OpenGL), the extended capability set.
pub const CAPSET_VIRGL2: u32 = vg::VIRTIO_GPU_CAPSET_VIRGL2;
/// `VIRTIO_GPU_CAPSET_VENUS`: venus (Vulkan).
pub const CAPSET_VENUS: u32 = vg::VIRTIO_GPU_CAPSET_VENUS;
/// `VIRTIO_GPU_CAPSET_CROSS_DOMAIN`.
pub const CAPSET_CROSS_DOMAIN: u32 = vg::VIRTIO_GPU_CAPSET_CROSS_DOMAIN;
/// `VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK`.
pub const CONTEXT_INIT_CAPSET_ID_MASK: u32 = vg::VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK;
/// `VIRTIO_GPU_BLOB_MEM_GUEST`.
pub const BLOB_MEM_GUEST: u32 = vg::VIRTIO_GPU_BLOB_MEM_GUEST;
/// `VIRTIO_GPU_BLOB_MEM_HOST3D`.
pub const BLOB_MEM_HOST3D: u32 = vg::VIRTIO_GPU_BLOB_MEM_HOST3D;
/// `VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST`.
pub const BLOB_MEM_HOST3D_GUEST: u32 = vg::VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST;
/// `VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE`.
pub const BLOB_FLAG_USE_MAPPABLE: u32 = vg::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE;
/// `VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE`.
pub const BLOB_FLAG_USE_SHAREABLE: u32 = vg::VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE;
/// `VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE`.
pub const BLOB_FLAG_USE_CROSS_DEVICE: u32 = vg::VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE;
/// `VIRTIO_GPU_MAP_CACHE_NONE`: not mappable (never sent in `OK_MAP_INFO`).
pub const MAP_CACHE_NONE: u32 = vg::VIRTIO_GPU_MAP_CACHE_NONE;
/// `VIRTIO_GPU_MAP_CACHE_CACHED`.
pub const MAP_CACHE_CACHED: u32 = vg::VIRTIO_GPU_MAP_CACHE_CACHED;
/// `VIRTIO_GPU_MAP_CACHE_UNCACHED`.
pub const MAP_CACHE_UNCACHED: u32 = vg::VIRTIO_GPU_MAP_CACHE_UNCACHED;
/// `VIRTIO_GPU_MAP_CACHE_WC`.
pub const MAP_CACHE_WC: u32 = vg::VIRTIO_GPU_MAP_CACHE_WC;

/// `virtio_gpu_formats` values accepted for 2D resources and blob scanouts.
pub mod format {
    use virtio_bindings::virtio_gpu as vg;
    /// `VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM`
    pub const B8G8R8A8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM;
    /// `VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM`
    pub const B8G8R8X8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
    /// `VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM`
    pub const A8R8G8B8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM;
    /// `VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM`
    pub const X8R8G8B8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM;
    /// `VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM`
    pub const R8G8B8A8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM;
    /// `VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM`
    pub const X8B8G8R8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM;
    /// `VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM`
    pub const A8B8G8R8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM;
    /// `VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM`
    pub const R8G8B8X8_UNORM: u32 = vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM;

    /// The DRM fourcc with the same byte order in memory, or `None` for formats this device
    /// does not support. All supported formats have 4 bytes per pixel.
    pub fn to_drm_fourcc(format: u32) -> Option<u32> {
        use super::fourcc;
        Some(match format {
            B8G8R8A8_UNORM => fourcc::ARGB8888,
            B8G8R8X8_UNORM => fourcc::XRGB8888,
            A8R8G8B8_UNORM => fourcc::BGRA8888,
            X8R8G8B8_UNORM => fourcc::BGRX8888,
            R8G8B8A8_UNORM => fourcc::ABGR8888,
            X8B8G8R8_UNORM => fourcc::RGBX8888,
            A8B8G8R8_UNORM => fourcc::RGBA8888,
            R8G8B8X8_UNORM => fourcc::XBGR8888,
            _ => return None,
        })
    }
}

/// Size of `struct virtio_gpu_ctrl_hdr` on the wire.
pub const CTRL_HEADER_SIZE: usize = std::mem::size_of::<vg::virtio_gpu_ctrl_hdr>();
/// Size of `struct virtio_gpu_mem_entry` on the wire.
pub const MEM_ENTRY_SIZE: usize = std::mem::size_of::<vg::virtio_gpu_mem_entry>();
/// Most memory entries accepted in one ATTACH_BACKING or CREATE_BLOB (as QEMU: 16384).
pub const MAX_MEM_ENTRIES: u32 = 16384;
/// Size of the EDID blob field in `OK_EDID`.
pub const EDID_BLOB_SIZE: usize = 1024;

/// Size of `struct virtio_gpu_config`, the device's config space.
pub const CONFIG_SIZE: usize = std::mem::size_of::<vg::virtio_gpu_config>();
/// Offset of `events_read` in the config space.
pub const CONFIG_EVENTS_READ: usize = std::mem::offset_of!(vg::virtio_gpu_config, events_read);
/// Offset of `events_clear` in the config space (the only field a driver writes).
pub const CONFIG_EVENTS_CLEAR: usize = std::mem::offset_of!(vg::virtio_gpu_config, events_clear);
/// Offset of `num_scanouts` in the config space.
pub const CONFIG_NUM_SCANOUTS: usize = std::mem::offset_of!(vg::virtio_gpu_config, num_scanouts);
/// Offset of `num_capsets` in the config space.
pub const CONFIG_NUM_CAPSETS: usize = std::mem::offset_of!(vg::virtio_gpu_config, num_capsets);

/// Why a request could not be decoded. The device answers these with an error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ended before the struct did.
    #[error("{what} truncated: needs {needed} bytes, request has {got}")]
    Truncated {
        /// Struct being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The command type is not a virtio-gpu command (or not one for this queue).
    #[error("unknown command type {0:#x}")]
    UnknownType(u32),
    /// A count field is larger than the device accepts.
    #[error("{what} = {value} exceeds the limit of {limit}")]
    TooLarge {
        /// Field name.
        what: &'static str,
        /// Value sent.
        value: u64,
        /// Limit.
        limit: u64,
    },
}

/// `struct virtio_gpu_ctrl_hdr`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtrlHeader {
    /// Command or response type.
    pub ctrl_type: u32,
    /// `FLAG_FENCE`, `FLAG_INFO_RING_IDX`.
    pub flags: u32,
    /// Fence id (meaningful with `FLAG_FENCE`).
    pub fence_id: u64,
    /// Context id (3D and context commands).
    pub ctx_id: u32,
    /// Ring index (meaningful with `FLAG_INFO_RING_IDX`).
    pub ring_idx: u8,
}

impl CtrlHeader {
    /// A header with only the type set.
    pub fn new(ctrl_type: u32) -> Self {
        CtrlHeader {
            ctrl_type,
            ..Default::default()
        }
    }

    fn read(r: &mut WireReader<'_>) -> Result<Self, DecodeError> {
        let ctrl_type = r.u32()?;
        let flags = r.u32()?;
        let fence_id = r.u64()?;
        let ctx_id = r.u32()?;
        let ring_idx = r.u8()?;
        r.skip(3)?;
        Ok(CtrlHeader {
            ctrl_type,
            flags,
            fence_id,
            ctx_id,
            ring_idx,
        })
    }

    /// Decodes the header at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::read(&mut WireReader::new(buf, "virtio_gpu_ctrl_hdr"))
    }

    /// Appends the header's wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.ctrl_type);
        out.put_u32(self.flags);
        out.put_u64(self.fence_id);
        out.put_u32(self.ctx_id);
        out.put_u8(self.ring_idx);
        out.put_zeros(3);
    }

    /// The header of the response to a request with this header: `ctrl_type`, plus the
    /// fence (`FLAG_FENCE`, `fence_id`), `ctx_id` and, with `FLAG_INFO_RING_IDX`, `ring_idx`.
    pub fn response(&self, ctrl_type: u32) -> CtrlHeader {
        let mut hdr = CtrlHeader {
            ctrl_type,
            ctx_id: self.ctx_id,
            ..Default::default()
        };
        if self.flags & FLAG_FENCE != 0 {
            hdr.flags |= FLAG_FENCE;
            hdr.fence_id = self.fence_id;
            if self.flags & FLAG_INFO_RING_IDX != 0 {
                hdr.flags |= FLAG_INFO_RING_IDX;
                hdr.ring_idx = self.ring_idx;
            }
        }
        hdr
    }
}

/// `struct virtio_gpu_rect`: a rectangle in resource or scanout coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Rect {
    fn read(r: &mut WireReader<'_>) -> Result<Rect, DecodeError> {
        Ok(Rect {
            x: r.u32()?,
            y: r.u32()?,
            width: r.u32()?,
            height: r.u32()?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.put_u32(self.x);
        out.put_u32(self.y);
        out.put_u32(self.width);
        out.put_u32(self.height);
    }
}

/// `struct virtio_gpu_mem_entry`: one piece of guest memory backing a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemEntry {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
}

/// `struct virtio_gpu_cursor_pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CursorPos {
    /// Scanout the cursor is on.
    pub scanout_id: u32,
    /// X position.
    pub x: u32,
    /// Y position.
    pub y: u32,
}

/// Name of a command or response type, for logs.
pub fn command_name(ctrl_type: u32) -> &'static str {
    match ctrl_type {
        cmd::GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
        cmd::RESOURCE_CREATE_2D => "RESOURCE_CREATE_2D",
        cmd::RESOURCE_UNREF => "RESOURCE_UNREF",
        cmd::SET_SCANOUT => "SET_SCANOUT",
        cmd::RESOURCE_FLUSH => "RESOURCE_FLUSH",
        cmd::TRANSFER_TO_HOST_2D => "TRANSFER_TO_HOST_2D",
        cmd::RESOURCE_ATTACH_BACKING => "RESOURCE_ATTACH_BACKING",
        cmd::RESOURCE_DETACH_BACKING => "RESOURCE_DETACH_BACKING",
        cmd::GET_CAPSET_INFO => "GET_CAPSET_INFO",
        cmd::GET_CAPSET => "GET_CAPSET",
        cmd::GET_EDID => "GET_EDID",
        cmd::RESOURCE_ASSIGN_UUID => "RESOURCE_ASSIGN_UUID",
        cmd::RESOURCE_CREATE_BLOB => "RESOURCE_CREATE_BLOB",
        cmd::SET_SCANOUT_BLOB => "SET_SCANOUT_BLOB",
        cmd::CTX_CREATE => "CTX_CREATE",
        cmd::CTX_DESTROY => "CTX_DESTROY",
        cmd::CTX_ATTACH_RESOURCE => "CTX_ATTACH_RESOURCE",
        cmd::CTX_DETACH_RESOURCE => "CTX_DETACH_RESOURCE",
        cmd::RESOURCE_CREATE_3D => "RESOURCE_CREATE_3D",
        cmd::TRANSFER_TO_HOST_3D => "TRANSFER_TO_HOST_3D",
        cmd::TRANSFER_FROM_HOST_3D => "TRANSFER_FROM_HOST_3D",
        cmd::SUBMIT_3D => "SUBMIT_3D",
        cmd::RESOURCE_MAP_BLOB => "RESOURCE_MAP_BLOB",
        cmd::RESOURCE_UNMAP_BLOB => "RESOURCE_UNMAP_BLOB",
        cmd::UPDATE_CURSOR => "UPDATE_CURSOR",
        cmd::MOVE_CURSOR => "MOVE_CURSOR",
        resp::OK_NODATA => "OK_NODATA",
        resp::OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
        resp::OK_CAPSET_INFO => "OK_CAPSET_INFO",
        resp::OK_CAPSET => "OK_CAPSET",
        resp::OK_EDID => "OK_EDID",
        resp::OK_RESOURCE_UUID => "OK_RESOURCE_UUID",
        resp::OK_MAP_INFO => "OK_MAP_INFO",
        resp::ERR_UNSPEC => "ERR_UNSPEC",
        resp::ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY",
        resp::ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID",
        resp::ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
        resp::ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID",
        resp::ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests;
