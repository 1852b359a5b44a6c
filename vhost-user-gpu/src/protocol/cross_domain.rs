//! The cross-domain context protocol (capset 5), as carried in `SUBMIT_3D` command buffers.
//!
//! Wire format as defined by crosvm's rutabaga `cross_domain_protocol.rs` (little-endian
//! `repr(C)` structs): an 8-byte header `{cmd: u8, ring_idx: u8, cmd_size: u16, pad: u32}`
//! then the command's fields; `cmd_size` is the size of the whole command, header included,
//! and the next command starts `cmd_size` bytes later.

use super::wire::{WireReader, WireWrite};
use super::DecodeError;

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

/// `CROSS_DOMAIN_QUERY_RING`: ring index of the metadata query ring.
pub const QUERY_RING: u32 = 0;
/// `CROSS_DOMAIN_CHANNEL_RING`: ring index of the channel ring.
pub const CHANNEL_RING: u32 = 1;

/// Size of the command header.
pub const HEADER_SIZE: usize = 8;
/// Size of `struct CrossDomainInit`.
pub const INIT_SIZE: usize = HEADER_SIZE + 12;
/// Size of `struct CrossDomainGetImageRequirements`.
pub const GET_IMAGE_REQUIREMENTS_SIZE: usize = HEADER_SIZE + 16;
/// Size of `struct CrossDomainImageRequirements` (the reply written to the query ring).
pub const IMAGE_REQUIREMENTS_SIZE: usize = 64;
/// Size of `struct CrossDomainCapabilities`.
pub const CAPABILITIES_SIZE: usize = 16;
/// Capabilities version this device implements (1: commands up to WRITE are defined).
pub const CAPABILITIES_VERSION: u32 = 1;

/// `struct CrossDomainCapabilities`, the data of capset 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Protocol version.
    pub version: u32,
    /// Bit mask of supported channel types (none: no Wayland forwarding).
    pub supported_channels: u32,
    /// Whether buffers are dma-bufs.
    pub supports_dmabuf: bool,
    /// Whether external GPU memory (Vulkan) is supported.
    pub supports_external_gpu_memory: bool,
}

impl Capabilities {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CAPABILITIES_SIZE);
        out.put_u32(self.version);
        out.put_u32(self.supported_channels);
        out.put_u32(self.supports_dmabuf.into());
        out.put_u32(self.supports_external_gpu_memory.into());
        out
    }

    /// Parses the wire form (what a guest reads from the capset; `test-codec` only).
    #[cfg(any(test, feature = "test-codec"))]
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = WireReader::new(buf, "CrossDomainCapabilities");
        Ok(Capabilities {
            version: r.u32()?,
            supported_channels: r.u32()?,
            supports_dmabuf: r.u32()? != 0,
            supports_external_gpu_memory: r.u32()? != 0,
        })
    }
}

/// `struct CrossDomainImageRequirements`, written to the query ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageRequirements {
    /// Plane strides.
    pub strides: [u32; 4],
    /// Plane offsets.
    pub offsets: [u32; 4],
    /// DRM format modifier.
    pub modifier: u64,
    /// Size of the allocation in bytes.
    pub size: u64,
    /// Id to pass as `blob_id` to `RESOURCE_CREATE_BLOB` (HOST3D).
    pub blob_id: u32,
    /// `MAP_CACHE_*` the guest should use, or `MAP_CACHE_NONE` when it may not map it.
    pub map_info: u32,
    /// Vulkan memory type index, -1 (none).
    pub memory_idx: i32,
    /// Vulkan physical device index, -1 (deprecated, none).
    pub physical_device_idx: i32,
}

impl ImageRequirements {
    /// The wire form (64 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IMAGE_REQUIREMENTS_SIZE);
        for s in self.strides {
            out.put_u32(s);
        }
        for o in self.offsets {
            out.put_u32(o);
        }
        out.put_u64(self.modifier);
        out.put_u64(self.size);
        out.put_u32(self.blob_id);
        out.put_u32(self.map_info);
        out.put_i32(self.memory_idx);
        out.put_i32(self.physical_device_idx);
        out
    }

    /// Parses the wire form (what a guest reads from its query ring; what a live upgrade
    /// carries).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = WireReader::new(buf, "CrossDomainImageRequirements");
        let mut strides = [0u32; 4];
        for s in &mut strides {
            *s = r.u32()?;
        }
        let mut offsets = [0u32; 4];
        for o in &mut offsets {
            *o = r.u32()?;
        }
        Ok(ImageRequirements {
            strides,
            offsets,
            modifier: r.u64()?,
            size: r.u64()?,
            blob_id: r.u32()?,
            map_info: r.u32()?,
            memory_idx: r.i32()?,
            physical_device_idx: r.i32()?,
        })
    }
}

/// One decoded cross-domain command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossDomainCommand {
    /// `CROSS_DOMAIN_CMD_INIT`.
    Init {
        /// Resource (a GUEST blob attached to the context) the replies are written into.
        query_ring_id: u32,
        /// Resource for channel messages.
        channel_ring_id: u32,
        /// Channel type (0: none).
        channel_type: u32,
    },
    /// `CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS`.
    GetImageRequirements {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// DRM fourcc.
        drm_format: u32,
        /// Gralloc usage flags.
        flags: u32,
    },
    /// Any other command (POLL, SEND, RECEIVE, READ, WRITE or unknown): Wayland channel
    /// forwarding, not implemented by this device.
    Unsupported {
        /// The command number.
        cmd: u8,
    },
}

/// The guest's side: encoding commands (`test-codec` only).
#[cfg(any(test, feature = "test-codec"))]
impl CrossDomainCommand {
    /// Appends the command's wire form (what a guest driver sends).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CrossDomainCommand::Init {
                query_ring_id,
                channel_ring_id,
                channel_type,
            } => {
                put_header(out, CMD_INIT, INIT_SIZE as u16);
                out.put_u32(*query_ring_id);
                out.put_u32(*channel_ring_id);
                out.put_u32(*channel_type);
            }
            CrossDomainCommand::GetImageRequirements {
                width,
                height,
                drm_format,
                flags,
            } => {
                put_header(
                    out,
                    CMD_GET_IMAGE_REQUIREMENTS,
                    GET_IMAGE_REQUIREMENTS_SIZE as u16,
                );
                out.put_u32(*width);
                out.put_u32(*height);
                out.put_u32(*drm_format);
                out.put_u32(*flags);
            }
            CrossDomainCommand::Unsupported { cmd } => {
                put_header(out, *cmd, HEADER_SIZE as u16);
            }
        }
    }
}

#[cfg(any(test, feature = "test-codec"))]
fn put_header(out: &mut Vec<u8>, cmd: u8, size: u16) {
    out.put_u8(cmd);
    out.put_u8(0);
    out.put_u16(size);
    out.put_u32(0);
}

/// Iterates over the commands of a `SUBMIT_3D` buffer. Stops (after yielding the error) at
/// the first malformed command: a `cmd_size` smaller than the command's struct or larger
/// than what is left.
#[derive(Debug)]
pub struct CommandIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

/// Decodes the commands in `buf`.
pub fn commands(buf: &[u8]) -> CommandIter<'_> {
    CommandIter { buf, failed: false }
}

impl Iterator for CommandIter<'_> {
    type Item = Result<CrossDomainCommand, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let result = self.decode_one();
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

impl CommandIter<'_> {
    fn decode_one(&mut self) -> Result<CrossDomainCommand, DecodeError> {
        let mut r = WireReader::new(self.buf, "CrossDomainHeader");
        let cmd = r.u8()?;
        let _ring_idx = r.u8()?;
        let cmd_size = usize::from(r.u16()?);
        r.skip(4)?;
        let (what, min_size) = match cmd {
            CMD_INIT => ("CrossDomainInit", INIT_SIZE),
            CMD_GET_IMAGE_REQUIREMENTS => (
                "CrossDomainGetImageRequirements",
                GET_IMAGE_REQUIREMENTS_SIZE,
            ),
            _ => ("CrossDomainHeader", HEADER_SIZE),
        };
        if cmd_size < min_size {
            return Err(DecodeError::Truncated {
                what,
                needed: min_size,
                got: cmd_size,
            });
        }
        if cmd_size > self.buf.len() {
            return Err(DecodeError::Truncated {
                what,
                needed: cmd_size,
                got: self.buf.len(),
            });
        }
        let mut r = WireReader::new(&self.buf[..cmd_size], what);
        r.skip(HEADER_SIZE)?;
        let command = match cmd {
            CMD_INIT => CrossDomainCommand::Init {
                query_ring_id: r.u32()?,
                channel_ring_id: r.u32()?,
                channel_type: r.u32()?,
            },
            CMD_GET_IMAGE_REQUIREMENTS => CrossDomainCommand::GetImageRequirements {
                width: r.u32()?,
                height: r.u32()?,
                drm_format: r.u32()?,
                flags: r.u32()?,
            },
            other => CrossDomainCommand::Unsupported { cmd: other },
        };
        self.buf = &self.buf[cmd_size..];
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_requirements_layout_matches_repr_c() {
        let reqs = ImageRequirements {
            strides: [1, 2, 3, 4],
            offsets: [5, 6, 7, 8],
            modifier: 0x0102_0304_0506_0708,
            size: 0x1000,
            blob_id: 2,
            map_info: 3,
            memory_idx: -1,
            physical_device_idx: -1,
        };
        let bytes = reqs.encode();
        assert_eq!(bytes.len(), IMAGE_REQUIREMENTS_SIZE);
        // modifier at 32, size at 40, blob_id at 48, map_info at 52, memory_idx at 56.
        assert_eq!(&bytes[32..40], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &0x1000u64.to_le_bytes());
        assert_eq!(&bytes[48..52], &2u32.to_le_bytes());
        assert_eq!(&bytes[52..56], &3u32.to_le_bytes());
        assert_eq!(&bytes[56..60], &(-1i32).to_le_bytes());
        assert_eq!(ImageRequirements::decode(&bytes).unwrap(), reqs);
    }

    #[test]
    fn command_stream_round_trips() {
        let cmds = vec![
            CrossDomainCommand::Init {
                query_ring_id: 7,
                channel_ring_id: 0,
                channel_type: 0,
            },
            CrossDomainCommand::GetImageRequirements {
                width: 64,
                height: 32,
                drm_format: 0x3432_5241,
                flags: 1,
            },
            CrossDomainCommand::Unsupported { cmd: CMD_POLL },
        ];
        let mut buf = Vec::new();
        for c in &cmds {
            c.encode(&mut buf);
        }
        let decoded: Vec<_> = commands(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded, cmds);
    }

    #[test]
    fn zero_cmd_size_is_an_error_not_a_loop() {
        let mut buf = Vec::new();
        put_header(&mut buf, CMD_POLL, 0);
        let items: Vec<_> = commands(&buf).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }

    /// An encoded INIT command.
    fn init_command() -> Vec<u8> {
        let mut buf = Vec::new();
        CrossDomainCommand::Init {
            query_ring_id: 1,
            channel_ring_id: 0,
            channel_type: 0,
        }
        .encode(&mut buf);
        buf
    }

    #[test]
    fn cmd_size_past_the_end_is_an_error() {
        let mut buf = init_command();
        buf[2] = 200; // cmd_size = 200 > 20 bytes present
        let items: Vec<_> = commands(&buf).collect();
        assert_eq!(
            items,
            vec![Err(DecodeError::Truncated {
                what: "CrossDomainInit",
                needed: 200,
                got: INIT_SIZE
            })]
        );
    }

    #[test]
    fn short_cmd_size_for_init_is_an_error() {
        let mut buf = init_command();
        buf[2] = 8;
        assert!(commands(&buf).next().unwrap().is_err());
    }

    #[test]
    fn capabilities_round_trip() {
        let caps = Capabilities {
            version: 1,
            supported_channels: 0,
            supports_dmabuf: true,
            supports_external_gpu_memory: false,
        };
        let bytes = caps.encode();
        assert_eq!(bytes.len(), CAPABILITIES_SIZE);
        assert_eq!(Capabilities::decode(&bytes).unwrap(), caps);
    }
}
