//! The cross-domain context protocol (capset 5), the guest side: encoders for the commands
//! a guest sends in `SUBMIT_3D` and a decoder for what the device writes into the query ring.
//! Layouts follow crosvm's `rutabaga_gfx` cross-domain protocol (read for the facts).
//!
//! Independent of the device's own cross-domain codec on purpose, like [`crate::gpu`].

use crate::{Error, Result};

/// `CROSS_DOMAIN_CMD_INIT`.
pub const CMD_INIT: u8 = 1;
/// `CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS`.
pub const CMD_GET_IMAGE_REQUIREMENTS: u8 = 2;
/// The query ring index (fences on this ring complete queries).
pub const QUERY_RING: u8 = 0;
/// "No channel ring".
pub const RING_NONE: u32 = 0xffff_ffff;
/// `DRM_FORMAT_XRGB8888` ('XR24').
pub const DRM_FORMAT_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
/// `DRM_FORMAT_ARGB8888` ('AR24').
pub const DRM_FORMAT_ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
/// Size of the image requirements record written to the query ring.
pub const IMAGE_REQUIREMENTS_SIZE: usize = 64;

fn header(cmd: u8, size: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(usize::from(size));
    v.push(cmd);
    v.push(0); // ring_idx
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// `CROSS_DOMAIN_CMD_INIT`: `query_ring_id` is the resource id of a guest blob the device
/// writes query answers into.
pub fn init(query_ring_id: u32, channel_ring_id: u32, channel_type: u32) -> Vec<u8> {
    let mut v = header(CMD_INIT, 20);
    v.extend_from_slice(&query_ring_id.to_le_bytes());
    v.extend_from_slice(&channel_ring_id.to_le_bytes());
    v.extend_from_slice(&channel_type.to_le_bytes());
    v
}

/// `CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS`.
pub fn get_image_requirements(width: u32, height: u32, drm_format: u32, flags: u32) -> Vec<u8> {
    let mut v = header(CMD_GET_IMAGE_REQUIREMENTS, 24);
    for x in [width, height, drm_format, flags] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// What the device answers to `GET_IMAGE_REQUIREMENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRequirements {
    /// Plane strides.
    pub strides: [u32; 4],
    /// Plane offsets.
    pub offsets: [u32; 4],
    /// Format modifier.
    pub modifier: u64,
    /// Total size.
    pub size: u64,
    /// The blob id to pass to `RESOURCE_CREATE_BLOB`.
    pub blob_id: u32,
    /// Cache attribute the device will report when mapping.
    pub map_info: u32,
    /// Vulkan memory index (-1 without Vulkan).
    pub memory_idx: i32,
    /// Vulkan physical device index (-1 without Vulkan).
    pub physical_device_idx: i32,
}

impl ImageRequirements {
    /// Decodes the record.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < IMAGE_REQUIREMENTS_SIZE {
            return Err(Error::Malformed(format!(
                "image requirements of {} bytes",
                b.len()
            )));
        }
        let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let q = |at: usize| u64::from(u(at)) | (u64::from(u(at + 4)) << 32);
        Ok(Self {
            strides: [u(0), u(4), u(8), u(12)],
            offsets: [u(16), u(20), u(24), u(28)],
            modifier: q(32),
            size: q(40),
            blob_id: u(48),
            map_info: u(52),
            memory_idx: u(56) as i32,
            physical_device_idx: u(60) as i32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_sizes_match_the_header() {
        let i = init(100, RING_NONE, 0);
        assert_eq!(i.len(), 20);
        assert_eq!(u16::from_le_bytes([i[2], i[3]]), 20);
        let g = get_image_requirements(64, 32, DRM_FORMAT_ARGB8888, 0);
        assert_eq!(g.len(), 24);
        assert_eq!(
            (g[0], u16::from_le_bytes([g[2], g[3]])),
            (CMD_GET_IMAGE_REQUIREMENTS, 24)
        );
        assert_eq!(DRM_FORMAT_ARGB8888, 0x3432_5241);
    }

    #[test]
    fn requirements_decode() {
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(&256u32.to_le_bytes());
        b[40..48].copy_from_slice(&16384u64.to_le_bytes());
        b[48..52].copy_from_slice(&7u32.to_le_bytes());
        b[52..56].copy_from_slice(&1u32.to_le_bytes());
        b[56..60].copy_from_slice(&(-1i32).to_le_bytes());
        let r = ImageRequirements::parse(&b).unwrap();
        assert_eq!(
            (r.strides[0], r.size, r.blob_id, r.map_info, r.memory_idx),
            (256, 16384, 7, 1, -1)
        );
        assert!(ImageRequirements::parse(&b[..63]).is_err());
    }
}
