//! [`GpuResponse`]: one virtio-gpu response, encoded into the writable part of a chain.

use super::wire::WireWrite;
use super::{resp, CtrlHeader, Rect, EDID_BLOB_SIZE, MAX_SCANOUTS};

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
                    mode.rect.write(out);
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
}
