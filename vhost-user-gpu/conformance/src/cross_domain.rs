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
/// `CROSS_DOMAIN_CMD_POLL`.
pub const CMD_POLL: u8 = 3;
/// `CROSS_DOMAIN_CMD_SEND`.
pub const CMD_SEND: u8 = 4;
/// `CROSS_DOMAIN_CMD_RECEIVE`.
pub const CMD_RECEIVE: u8 = 5;
/// `CROSS_DOMAIN_CMD_READ`.
pub const CMD_READ: u8 = 6;
/// `CROSS_DOMAIN_CMD_WRITE`.
pub const CMD_WRITE: u8 = 7;
/// The channel ring index (fences on it are answered by events).
pub const CHANNEL_RING: u8 = 1;
/// `CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND`.
pub const CHANNEL_TYPE_WAYLAND: u32 = 1;
/// `CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB`.
pub const ID_VIRTGPU_BLOB: u32 = 1;
/// `CROSS_DOMAIN_ID_TYPE_READ_PIPE`.
pub const ID_READ_PIPE: u32 = 3;
/// `CROSS_DOMAIN_ID_TYPE_WRITE_PIPE`.
pub const ID_WRITE_PIPE: u32 = 4;
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

/// The 16-byte INIT (minigbm; Sommelier before 2023-06): one ring for queries and events.
pub fn init_one_ring(ring_id: u32, channel_type: u32) -> Vec<u8> {
    let mut v = header(CMD_INIT, 16);
    v.extend_from_slice(&ring_id.to_le_bytes());
    v.extend_from_slice(&channel_type.to_le_bytes());
    v
}

/// The 24-byte INIT (libkrun's, as muvm sends it): the 20-byte one and `protocol_version`.
pub fn init_versioned(
    query_ring_id: u32,
    channel_ring_id: u32,
    channel_type: u32,
    protocol_version: u32,
) -> Vec<u8> {
    let mut v = header(CMD_INIT, 24);
    for x in [
        query_ring_id,
        channel_ring_id,
        channel_type,
        protocol_version,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// `CROSS_DOMAIN_CMD_POLL` of `size` bytes (8: header only; 16: with the pad Sommelier
/// sends).
pub fn poll(size: u16) -> Vec<u8> {
    let mut v = header(CMD_POLL, size);
    v.resize(usize::from(size), 0);
    v
}

/// `CROSS_DOMAIN_CMD_SEND` with `slots` identifier slots (4: Sommelier before 2024-02; 28:
/// everyone since): `ids` as (id, type), then `data`.
pub fn send(slots: usize, ids: &[(u32, u32)], data: &[u8]) -> Vec<u8> {
    let size = 16 + 12 * slots + data.len();
    let mut v = header(CMD_SEND, size as u16);
    v.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    for field in 0..3 {
        for slot in 0..slots {
            let value = ids.get(slot).map_or(0, |&(id, kind)| match field {
                0 => id,
                1 => kind,
                _ => 0,
            });
            v.extend_from_slice(&value.to_le_bytes());
        }
    }
    v.extend_from_slice(data);
    v
}

/// `CROSS_DOMAIN_CMD_WRITE`: `data` for write pipe `id`.
pub fn write(id: u32, hang_up: bool, data: &[u8]) -> Vec<u8> {
    let mut v = header(CMD_WRITE, (24 + data.len()) as u16);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&u32::from(hang_up).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// What the device wrote into a channel ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// RECEIVE: the identifier slots of its layout, (id, type, size) per identifier, data.
    Receive {
        /// Slots of the layout (4 or 28).
        slots: usize,
        /// Identifiers.
        ids: Vec<(u32, u32, u32)>,
        /// Bytes from the compositor.
        data: Vec<u8>,
    },
    /// READ: data from read pipe `id`.
    Read {
        /// Pipe id.
        id: u32,
        /// Last data of the pipe.
        hang_up: bool,
        /// Bytes.
        data: Vec<u8>,
    },
}

/// Decodes the event at the start of `ring`.
pub fn parse_event(ring: &[u8]) -> Result<Event> {
    let bad = |what: &str| Error::Malformed(format!("channel event: {what}"));
    if ring.len() < 8 {
        return Err(bad("shorter than a header"));
    }
    let u = |at: usize| -> Result<u32> {
        ring.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated"))
    };
    let cmd_size = usize::from(u16::from_le_bytes([ring[2], ring[3]]));
    match ring[0] {
        CMD_RECEIVE => {
            let (n, len) = (u(8)? as usize, u(12)? as usize);
            let slots = match cmd_size.checked_sub(len) {
                Some(64) => 4,
                Some(352) => 28,
                _ => return Err(bad(&format!("RECEIVE of {cmd_size} bytes with {len} data"))),
            };
            if n > slots {
                return Err(bad("more identifiers than slots"));
            }
            let mut ids = Vec::new();
            for i in 0..n {
                ids.push((
                    u(16 + 4 * i)?,
                    u(16 + 4 * (slots + i))?,
                    u(16 + 4 * (2 * slots + i))?,
                ));
            }
            let start = 16 + 12 * slots;
            let data = ring
                .get(start..start + len)
                .ok_or_else(|| bad("data past the ring"))?
                .to_vec();
            Ok(Event::Receive { slots, ids, data })
        }
        CMD_READ => {
            let len = u(16)? as usize;
            if cmd_size != 24 + len {
                return Err(bad("READ size"));
            }
            Ok(Event::Read {
                id: u(8)?,
                hang_up: u(12)? == 1,
                data: ring
                    .get(24..24 + len)
                    .ok_or_else(|| bad("data past the ring"))?
                    .to_vec(),
            })
        }
        other => Err(bad(&format!("command {other}"))),
    }
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
    fn channel_commands_have_the_released_sizes() {
        assert_eq!(init_one_ring(1, 1).len(), 16);
        assert_eq!(init_versioned(1, 2, 1, 1).len(), 24);
        assert_eq!(poll(8).len(), 8);
        assert_eq!(poll(16).len(), 16);
        assert_eq!(send(4, &[(5, ID_VIRTGPU_BLOB)], b"abc").len(), 64 + 3);
        assert_eq!(send(28, &[], b"abc").len(), 352 + 3);
        assert_eq!(write(3, true, b"xy").len(), 26);
        // A RECEIVE is a SEND with another command number.
        let mut r = send(4, &[(9, ID_WRITE_PIPE)], b"hi");
        r[0] = CMD_RECEIVE;
        assert_eq!(
            parse_event(&r).unwrap(),
            Event::Receive {
                slots: 4,
                ids: vec![(9, ID_WRITE_PIPE, 0)],
                data: b"hi".to_vec()
            }
        );
        let mut rd = write(0x8000_0001, true, b"z");
        rd[0] = CMD_READ;
        assert_eq!(
            parse_event(&rd).unwrap(),
            Event::Read {
                id: 0x8000_0001,
                hang_up: true,
                data: b"z".to_vec()
            }
        );
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
