//! virtio-gpu wire protocol: the control header, one typed [`GpuCommand`] decoded from the
//! bytes a guest put in a descriptor chain, and one typed [`GpuResponse`] encoded back.
//!
//! Numbers come from `virtio-bindings` (`virtio_gpu`); layouts are checked against the
//! bindings' struct sizes in the tests. Decoding is done by hand from little-endian bytes
//! with bounds checks: every guest buffer may be short, long or hostile, and decoding never
//! panics. Trailing bytes after a fixed-size command are ignored (as QEMU and crosvm do);
//! variable-length parts (memory entries, SUBMIT_3D payload) must be present in full.
//!
//! The encoders for commands and decoders for responses exist for test frontends.

pub mod cross_domain;
mod wire;

use virtio_bindings::virtio_gpu as vg;

pub use crate::device::ports::Rect;
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
/// `VIRTIO_GPU_EVENT_DISPLAY` (bit in `events_read`).
pub const EVENT_DISPLAY: u32 = vg::VIRTIO_GPU_EVENT_DISPLAY;
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
        use crate::device::ports::fourcc;
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

fn read_rect(r: &mut WireReader<'_>) -> Result<Rect, DecodeError> {
    Ok(Rect {
        x: r.u32()?,
        y: r.u32()?,
        width: r.u32()?,
        height: r.u32()?,
    })
}

fn put_rect(out: &mut Vec<u8>, rect: &Rect) {
    out.put_u32(rect.x);
    out.put_u32(rect.y);
    out.put_u32(rect.width);
    out.put_u32(rect.height);
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

fn put_entries(out: &mut Vec<u8>, entries: &[MemEntry]) {
    for e in entries {
        out.put_u64(e.addr);
        out.put_u32(e.length);
        out.put_u32(0);
    }
}

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
    ResourceCreateBlob {
        /// New resource id.
        resource_id: u32,
        /// `BLOB_MEM_*`.
        blob_mem: u32,
        /// `BLOB_FLAG_*`.
        blob_flags: u32,
        /// Context-specific blob id (HOST3D).
        blob_id: u64,
        /// Size in bytes.
        size: u64,
        /// Guest memory pieces (GUEST blobs).
        entries: Vec<MemEntry>,
    },
    /// `SET_SCANOUT_BLOB`.
    SetScanoutBlob {
        /// Part of the image shown.
        rect: Rect,
        /// Scanout index.
        scanout_id: u32,
        /// Blob resource (0 disables the scanout).
        resource_id: u32,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// `virtio_gpu_formats` value.
        format: u32,
        /// Plane strides.
        strides: [u32; 4],
        /// Plane offsets.
        offsets: [u32; 4],
    },
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
    /// `RESOURCE_CREATE_3D` (not supported: no virgl renderer).
    ResourceCreate3d {
        /// Resource id.
        resource_id: u32,
    },
    /// `TRANSFER_TO_HOST_3D` (not supported).
    TransferToHost3d {
        /// Resource id.
        resource_id: u32,
    },
    /// `TRANSFER_FROM_HOST_3D` (not supported).
    TransferFromHost3d {
        /// Resource id.
        resource_id: u32,
    },
    /// `SUBMIT_3D`: a command buffer for the context's capset (cross-domain here).
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
    UpdateCursor {
        /// Position.
        pos: CursorPos,
        /// Cursor image resource (0 hides the cursor).
        resource_id: u32,
        /// Hotspot x.
        hot_x: u32,
        /// Hotspot y.
        hot_y: u32,
    },
    /// `MOVE_CURSOR` (cursor queue).
    MoveCursor {
        /// Position.
        pos: CursorPos,
    },
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
                    rect: read_rect(r)?,
                    scanout_id: r.u32()?,
                    resource_id: r.u32()?,
                }
            }
            cmd::RESOURCE_FLUSH => {
                r.set_what("virtio_gpu_resource_flush");
                let rect = read_rect(r)?;
                let resource_id = r.u32()?;
                r.skip(4)?;
                C::ResourceFlush { rect, resource_id }
            }
            cmd::TRANSFER_TO_HOST_2D => {
                r.set_what("virtio_gpu_transfer_to_host_2d");
                let rect = read_rect(r)?;
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
                C::ResourceCreateBlob {
                    resource_id,
                    blob_mem,
                    blob_flags,
                    blob_id,
                    size,
                    entries,
                }
            }
            cmd::SET_SCANOUT_BLOB => {
                r.set_what("virtio_gpu_set_scanout_blob");
                let rect = read_rect(r)?;
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
                C::SetScanoutBlob {
                    rect,
                    scanout_id,
                    resource_id,
                    width,
                    height,
                    format,
                    strides,
                    offsets,
                }
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
                r.skip(std::mem::size_of::<vg::virtio_gpu_resource_create_3d>() - 28)?;
                C::ResourceCreate3d { resource_id }
            }
            cmd::TRANSFER_TO_HOST_3D | cmd::TRANSFER_FROM_HOST_3D => {
                r.set_what("virtio_gpu_transfer_host_3d");
                r.skip(24 + 8)?; // box, offset
                let resource_id = r.u32()?;
                r.skip(12)?; // level, stride, layer_stride
                if ctrl_type == cmd::TRANSFER_TO_HOST_3D {
                    C::TransferToHost3d { resource_id }
                } else {
                    C::TransferFromHost3d { resource_id }
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
                C::UpdateCursor {
                    pos,
                    resource_id,
                    hot_x,
                    hot_y,
                }
            }
            cmd::MOVE_CURSOR => {
                r.set_what("virtio_gpu_update_cursor");
                let pos = read_cursor_pos(r)?;
                r.skip(16)?;
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
            C::ResourceCreateBlob { .. } => cmd::RESOURCE_CREATE_BLOB,
            C::SetScanoutBlob { .. } => cmd::SET_SCANOUT_BLOB,
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
            C::UpdateCursor { .. } => cmd::UPDATE_CURSOR,
            C::MoveCursor { .. } => cmd::MOVE_CURSOR,
        }
    }

    /// Short name for logs (`RESOURCE_CREATE_2D`, ...).
    pub fn name(&self) -> &'static str {
        command_name(self.ctrl_type())
    }

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
                put_rect(out, rect);
                out.put_u32(*scanout_id);
                out.put_u32(*resource_id);
            }
            C::ResourceFlush { rect, resource_id } => {
                put_rect(out, rect);
                out.put_u32(*resource_id);
                out.put_u32(0);
            }
            C::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => {
                put_rect(out, rect);
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
            C::ResourceCreateBlob {
                resource_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                entries,
            } => {
                out.put_u32(*resource_id);
                out.put_u32(*blob_mem);
                out.put_u32(*blob_flags);
                out.put_u32(entries.len() as u32);
                out.put_u64(*blob_id);
                out.put_u64(*size);
                put_entries(out, entries);
            }
            C::SetScanoutBlob {
                rect,
                scanout_id,
                resource_id,
                width,
                height,
                format,
                strides,
                offsets,
            } => {
                put_rect(out, rect);
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
            C::ResourceCreate3d { resource_id } => {
                out.put_u32(*resource_id);
                out.put_zeros(std::mem::size_of::<vg::virtio_gpu_resource_create_3d>() - 28);
            }
            C::TransferToHost3d { resource_id } | C::TransferFromHost3d { resource_id } => {
                out.put_zeros(32);
                out.put_u32(*resource_id);
                out.put_zeros(12);
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
            C::UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
            } => {
                put_cursor_pos(out, pos);
                out.put_u32(*resource_id);
                out.put_u32(*hot_x);
                out.put_u32(*hot_y);
                out.put_u32(0);
            }
            C::MoveCursor { pos } => {
                put_cursor_pos(out, pos);
                out.put_zeros(16);
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

/// One scanout in `OK_DISPLAY_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DisplayMode {
    /// Position and size.
    pub rect: Rect,
    /// Whether the output is connected.
    pub enabled: bool,
    /// Flags (none defined).
    pub flags: u32,
}

/// The error kinds of virtio-gpu responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuError {
    /// `ERR_UNSPEC`.
    Unspec,
    /// `ERR_OUT_OF_MEMORY`.
    OutOfMemory,
    /// `ERR_INVALID_SCANOUT_ID`.
    InvalidScanoutId,
    /// `ERR_INVALID_RESOURCE_ID`.
    InvalidResourceId,
    /// `ERR_INVALID_CONTEXT_ID`.
    InvalidContextId,
    /// `ERR_INVALID_PARAMETER`.
    InvalidParameter,
}

impl GpuError {
    /// The response type number.
    pub fn ctrl_type(self) -> u32 {
        match self {
            GpuError::Unspec => resp::ERR_UNSPEC,
            GpuError::OutOfMemory => resp::ERR_OUT_OF_MEMORY,
            GpuError::InvalidScanoutId => resp::ERR_INVALID_SCANOUT_ID,
            GpuError::InvalidResourceId => resp::ERR_INVALID_RESOURCE_ID,
            GpuError::InvalidContextId => resp::ERR_INVALID_CONTEXT_ID,
            GpuError::InvalidParameter => resp::ERR_INVALID_PARAMETER,
        }
    }
}

/// A typed virtio-gpu response, without its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuResponse {
    /// `OK_NODATA`.
    OkNoData,
    /// `OK_DISPLAY_INFO`: one entry per scanout (at most 16; missing ones are disabled).
    OkDisplayInfo(Vec<DisplayMode>),
    /// `OK_CAPSET_INFO`.
    OkCapsetInfo {
        /// Capset id.
        capset_id: u32,
        /// Highest version.
        max_version: u32,
        /// Size of the capset data.
        max_size: u32,
    },
    /// `OK_CAPSET`: the capset data.
    OkCapset(Vec<u8>),
    /// `OK_EDID`: the EDID bytes (at most 1024).
    OkEdid(Vec<u8>),
    /// `OK_RESOURCE_UUID`.
    OkResourceUuid([u8; 16]),
    /// `OK_MAP_INFO`: a `MAP_CACHE_*` value.
    OkMapInfo {
        /// `MAP_CACHE_CACHED`, `_UNCACHED` or `_WC`.
        map_info: u32,
    },
    /// An `ERR_*` response.
    Err(GpuError),
}

impl GpuResponse {
    /// The response type number.
    pub fn ctrl_type(&self) -> u32 {
        match self {
            GpuResponse::OkNoData => resp::OK_NODATA,
            GpuResponse::OkDisplayInfo(_) => resp::OK_DISPLAY_INFO,
            GpuResponse::OkCapsetInfo { .. } => resp::OK_CAPSET_INFO,
            GpuResponse::OkCapset(_) => resp::OK_CAPSET,
            GpuResponse::OkEdid(_) => resp::OK_EDID,
            GpuResponse::OkResourceUuid(_) => resp::OK_RESOURCE_UUID,
            GpuResponse::OkMapInfo { .. } => resp::OK_MAP_INFO,
            GpuResponse::Err(e) => e.ctrl_type(),
        }
    }

    /// Whether this is an `OK_*` response.
    pub fn is_ok(&self) -> bool {
        !matches!(self, GpuResponse::Err(_))
    }

    /// Appends the response to `out`: a header derived from the request header `hdr` (fence,
    /// context and ring index copied, see [`CtrlHeader::response`]) and the payload.
    pub fn encode(&self, hdr: &CtrlHeader, out: &mut Vec<u8>) {
        hdr.response(self.ctrl_type()).encode(out);
        match self {
            GpuResponse::OkNoData | GpuResponse::Err(_) => {}
            GpuResponse::OkDisplayInfo(modes) => {
                for i in 0..MAX_SCANOUTS {
                    let mode = modes.get(i).copied().unwrap_or_default();
                    put_rect(out, &mode.rect);
                    out.put_u32(mode.enabled.into());
                    out.put_u32(mode.flags);
                }
            }
            GpuResponse::OkCapsetInfo {
                capset_id,
                max_version,
                max_size,
            } => {
                out.put_u32(*capset_id);
                out.put_u32(*max_version);
                out.put_u32(*max_size);
                out.put_u32(0);
            }
            GpuResponse::OkCapset(data) => out.extend_from_slice(data),
            GpuResponse::OkEdid(edid) => {
                let len = edid.len().min(EDID_BLOB_SIZE);
                out.put_u32(len as u32);
                out.put_u32(0);
                out.extend_from_slice(&edid[..len]);
                out.put_zeros(EDID_BLOB_SIZE - len);
            }
            GpuResponse::OkResourceUuid(uuid) => out.extend_from_slice(uuid),
            GpuResponse::OkMapInfo { map_info } => {
                out.put_u32(*map_info);
                out.put_u32(0);
            }
        }
    }

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
                    let rect = read_rect(&mut r)?;
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

#[cfg(test)]
mod tests;
