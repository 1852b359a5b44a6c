//! The cross-domain context protocol (capset 5), as carried in `SUBMIT_3D` command buffers
//! and written back into the guest's rings, in every layout a released guest sends.
//!
//! Cross-domain has no specification; its definition is the code of its peers, and they do
//! not agree: `CROSS-DOMAIN.md` is the table of who sends which layout (read from
//! Sommelier, minigbm, wayland-proxy-virtwl, muvm, rutabaga and libkrun; nothing copied).
//! Little-endian `repr(C)` structs: an 8-byte header `{cmd: u8, ring_idx: u8, cmd_size:
//! u16, pad: u32}` then the command's fields; `cmd_size` is the size of the whole command,
//! header and trailing data included, and the next command starts `cmd_size` bytes later.
//!
//! Decoded here (guest -> host): INIT in 16, 20 and 24 bytes ([`InitLayout`]),
//! GET_IMAGE_REQUIREMENTS, POLL in 8 or 16 bytes, SEND with 4 or 28 identifier slots
//! ([`IdLayout`], told apart by `cmd_size - opaque_data_size`), WRITE. Encoded here (host ->
//! guest, into the channel ring): RECEIVE in the guest's identifier layout, READ. The
//! reverse directions (what a guest proxy needs) are compiled with the `test-codec` feature.

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
/// `CROSS_DOMAIN_CMD_RECEIVE` (host -> guest only).
pub const CMD_RECEIVE: u8 = 5;
/// `CROSS_DOMAIN_CMD_READ` (host -> guest only).
pub const CMD_READ: u8 = 6;
/// `CROSS_DOMAIN_CMD_WRITE`.
pub const CMD_WRITE: u8 = 7;

/// `CROSS_DOMAIN_QUERY_RING`: ring index of the metadata query ring.
pub const QUERY_RING: u32 = 0;
/// `CROSS_DOMAIN_CHANNEL_RING`: ring index of the channel ring.
pub const CHANNEL_RING: u32 = 1;

/// `CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND`.
pub const CHANNEL_TYPE_WAYLAND: u32 = 0x0001;
/// `CROSS_DOMAIN_CHANNEL_TYPE_CAMERA` (defined; no host implements it).
pub const CHANNEL_TYPE_CAMERA: u32 = 0x0002;

/// `CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB`: a virtio-gpu resource id (guest -> host), or a host
/// item id the guest turns into a resource with `RESOURCE_CREATE_BLOB` (host -> guest).
pub const ID_TYPE_VIRTGPU_BLOB: u32 = 1;
/// `CROSS_DOMAIN_ID_TYPE_VIRTGPU_SYNC`: defined, never sent by any client.
pub const ID_TYPE_VIRTGPU_SYNC: u32 = 2;
/// `CROSS_DOMAIN_ID_TYPE_READ_PIPE`: a pipe the guest reads (the host sends the write end to
/// the compositor and forwards what arrives with READ).
pub const ID_TYPE_READ_PIPE: u32 = 3;
/// `CROSS_DOMAIN_ID_TYPE_WRITE_PIPE`: the write end of a pipe the compositor handed over; the
/// guest forwards data into it with WRITE.
pub const ID_TYPE_WRITE_PIPE: u32 = 4;

/// `CROSS_DOMAIN_PIPE_READ_START`: read pipe ids are above this value (chosen by the guest).
pub const PIPE_READ_START: u32 = 0x8000_0000;

/// Size of the command header.
pub const HEADER_SIZE: usize = 8;
/// Size of `struct CrossDomainGetImageRequirements`.
pub const GET_IMAGE_REQUIREMENTS_SIZE: usize = HEADER_SIZE + 16;
/// Size of `struct CrossDomainImageRequirements` (the reply written to the query ring).
pub const IMAGE_REQUIREMENTS_SIZE: usize = 64;
/// Size of `struct CrossDomainReadWrite` (READ and WRITE, before the data).
pub const READ_WRITE_SIZE: usize = HEADER_SIZE + 16;
/// Size of `struct CrossDomainCapabilities`.
pub const CAPABILITIES_SIZE: usize = 16;
/// Capabilities version this device implements (1: commands up to WRITE are defined).
pub const CAPABILITIES_VERSION: u32 = 1;
/// The page every client allocates for each ring: one host -> guest event (RECEIVE or READ)
/// must fit in it.
pub const RING_PAGE_SIZE: usize = 4096;

/// `struct CrossDomainCapabilities`, the data of capset 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Protocol version.
    pub version: u32,
    /// Bit mask of supported channel types (`1 << CHANNEL_TYPE_*`; none: no channels).
    pub supported_channels: u32,
    /// Whether buffers are dma-bufs.
    pub supports_dmabuf: bool,
    /// Whether the host allocates buffers outside a guest renderer (minigbm uses
    /// cross-domain for hardware buffers only when this is set or the device has no 3D).
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

/// The layout of a `CROSS_DOMAIN_CMD_INIT`, told by its exact `cmd_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitLayout {
    /// 16 bytes: one ring id used as query and channel ring, channel type (minigbm; Sommelier
    /// before 2023-06; wayland-proxy-virtwl before 2023-10).
    OneRing,
    /// 20 bytes: query ring, channel ring, channel type (Sommelier, wayland-proxy-virtwl).
    TwoRings,
    /// 24 bytes: as `TwoRings` plus `protocol_version` (libkrun's; muvm sends 1).
    Versioned,
}

impl InitLayout {
    /// Every layout, shortest first.
    pub const ALL: [InitLayout; 3] = [
        InitLayout::OneRing,
        InitLayout::TwoRings,
        InitLayout::Versioned,
    ];

    /// `cmd_size` of this layout.
    pub const fn size(self) -> usize {
        match self {
            InitLayout::OneRing => HEADER_SIZE + 8,
            InitLayout::TwoRings => HEADER_SIZE + 12,
            InitLayout::Versioned => HEADER_SIZE + 16,
        }
    }
}

/// A decoded INIT, whatever its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Init {
    /// Which layout the guest sent.
    pub layout: InitLayout,
    /// Resource for GET_IMAGE_REQUIREMENTS replies.
    pub query_ring_id: u32,
    /// Resource for channel events (the query ring for [`InitLayout::OneRing`]).
    pub channel_ring_id: u32,
    /// Channel type (0: none).
    pub channel_type: u32,
    /// `protocol_version` of the 24-byte layout (0 for the others; 0 or 1 accepted).
    pub protocol_version: u32,
}

/// The layout of a `CROSS_DOMAIN_CMD_POLL`: every host reads only the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollLayout {
    /// 8 bytes, the header alone.
    HeaderOnly,
    /// 16 bytes, header and a `u64` pad (Sommelier, wayland-proxy-virtwl, muvm).
    Padded,
}

impl PollLayout {
    /// `cmd_size` of this layout.
    pub const fn size(self) -> usize {
        match self {
            PollLayout::HeaderOnly => HEADER_SIZE,
            PollLayout::Padded => HEADER_SIZE + 8,
        }
    }
}

/// How many identifier slots a SEND/RECEIVE carries (`CROSS_DOMAIN_MAX_IDENTIFIERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdLayout {
    /// 4 slots, 64-byte header (Sommelier before 2024-02, wayland-proxy-virtwl before 2024-04).
    Four,
    /// 28 slots, 352-byte header (everyone since).
    TwentyEight,
}

impl IdLayout {
    /// Identifier slots.
    pub const fn max_ids(self) -> usize {
        match self {
            IdLayout::Four => 4,
            IdLayout::TwentyEight => 28,
        }
    }

    /// Bytes before the opaque data.
    pub const fn header_size(self) -> usize {
        HEADER_SIZE + 8 + 12 * self.max_ids()
    }

    /// Largest opaque data of a RECEIVE of this layout within one ring page.
    pub const fn max_data(self) -> usize {
        RING_PAGE_SIZE - self.header_size()
    }
}

/// One identifier of a SEND or RECEIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identifier {
    /// Resource id, item id or pipe id.
    pub id: u32,
    /// `ID_TYPE_*`.
    pub kind: u32,
    /// Size in bytes (blobs from the host; 0 otherwise).
    pub size: u32,
}

/// `struct CrossDomainSendReceive`: a SEND (guest -> host) or RECEIVE (host -> guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceive {
    /// The identifier layout it came in (or is written in).
    pub layout: IdLayout,
    /// `num_identifiers` entries (at most `layout.max_ids()`).
    pub identifiers: Vec<Identifier>,
    /// The opaque bytes (Wayland wire bytes).
    pub data: Vec<u8>,
}

impl SendReceive {
    /// Appends the wire form with command number `cmd` (`CMD_SEND` or `CMD_RECEIVE`).
    /// `identifiers` beyond the layout's slots are not written; a caller keeps within
    /// `layout.max_ids()` and a `cmd_size` that fits 16 bits.
    pub fn encode(&self, cmd: u8, out: &mut Vec<u8>) {
        let max = self.layout.max_ids();
        let ids = &self.identifiers[..self.identifiers.len().min(max)];
        put_header(out, cmd, self.layout.header_size() + self.data.len());
        out.put_u32(ids.len() as u32);
        out.put_u32(self.data.len() as u32);
        for field in 0..3 {
            for slot in 0..max {
                out.put_u32(ids.get(slot).map_or(0, |i| match field {
                    0 => i.id,
                    1 => i.kind,
                    _ => i.size,
                }));
            }
        }
        out.extend_from_slice(&self.data);
    }

    /// The RECEIVE bytes for the channel ring.
    pub fn receive_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.layout.header_size() + self.data.len());
        self.encode(CMD_RECEIVE, &mut out);
        out
    }
}

/// `struct CrossDomainReadWrite`: a WRITE (guest -> host) or READ (host -> guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadWrite {
    /// Pipe id (a write pipe for WRITE, a read pipe for READ).
    pub identifier: u32,
    /// Close the pipe after `data`.
    pub hang_up: bool,
    /// The bytes.
    pub data: Vec<u8>,
}

impl ReadWrite {
    /// Appends the wire form with command number `cmd` (`CMD_READ` or `CMD_WRITE`).
    pub fn encode(&self, cmd: u8, out: &mut Vec<u8>) {
        put_header(out, cmd, READ_WRITE_SIZE + self.data.len());
        out.put_u32(self.identifier);
        out.put_u32(self.hang_up.into());
        out.put_u32(self.data.len() as u32);
        out.put_u32(0);
        out.extend_from_slice(&self.data);
    }

    /// The READ bytes for the channel ring.
    pub fn read_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(READ_WRITE_SIZE + self.data.len());
        self.encode(CMD_READ, &mut out);
        out
    }
}

/// One decoded cross-domain command (guest -> host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossDomainCommand {
    /// `CROSS_DOMAIN_CMD_INIT`, any layout.
    Init(Init),
    /// `CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS`.
    GetImageRequirements {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// DRM fourcc.
        drm_format: u32,
        /// GBM-style usage flags.
        flags: u32,
    },
    /// `CROSS_DOMAIN_CMD_POLL`.
    Poll(PollLayout),
    /// `CROSS_DOMAIN_CMD_SEND`.
    Send(SendReceive),
    /// `CROSS_DOMAIN_CMD_WRITE`.
    Write(ReadWrite),
}

impl CrossDomainCommand {
    /// The command's name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            CrossDomainCommand::Init(_) => "INIT",
            CrossDomainCommand::GetImageRequirements { .. } => "GET_IMAGE_REQUIREMENTS",
            CrossDomainCommand::Poll(_) => "POLL",
            CrossDomainCommand::Send(_) => "SEND",
            CrossDomainCommand::Write(_) => "WRITE",
        }
    }
}

/// A malformed cross-domain command. Every variant is the guest's doing
/// (`ERR_INVALID_PARAMETER`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossDomainError {
    /// The command is shorter than its header says, or than its fixed part.
    #[error("{what}: {got} bytes but {needed} needed")]
    Short {
        /// Struct being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present (`cmd_size`, or what is left of the buffer).
        got: usize,
    },
    /// `cmd_size` matches no released layout of the command.
    #[error("{what}: cmd_size {cmd_size} is none of the released layouts ({known})")]
    UnknownLayout {
        /// Command name.
        what: &'static str,
        /// `cmd_size` sent.
        cmd_size: usize,
        /// Sizes accepted, for the log line.
        known: &'static str,
    },
    /// A count field is out of range.
    #[error("{what} = {value} exceeds the limit of {limit}")]
    TooLarge {
        /// Field name.
        what: &'static str,
        /// Value sent.
        value: u64,
        /// Limit.
        limit: u64,
    },
    /// A field has a value no layout allows.
    #[error("{what} = {value:#x} is not valid")]
    Invalid {
        /// Field name (and what is valid).
        what: &'static str,
        /// Value sent.
        value: u64,
    },
    /// A command number this device does not take from a guest.
    #[error("command {cmd} {why}")]
    Unsupported {
        /// The command number.
        cmd: u8,
        /// Why, for the log line.
        why: &'static str,
    },
}

impl From<DecodeError> for CrossDomainError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated { what, needed, got } => {
                CrossDomainError::Short { what, needed, got }
            }
            DecodeError::TooLarge { what, value, limit } => {
                CrossDomainError::TooLarge { what, value, limit }
            }
            DecodeError::UnknownType(t) => CrossDomainError::Invalid {
                what: "command",
                value: t.into(),
            },
        }
    }
}

fn put_header(out: &mut Vec<u8>, cmd: u8, size: usize) {
    debug_assert!(
        size <= usize::from(u16::MAX),
        "cmd_size {size} does not fit"
    );
    out.put_u8(cmd);
    out.put_u8(0);
    out.put_u16(size as u16);
    out.put_u32(0);
}

/// Iterates over the commands of a `SUBMIT_3D` buffer. Stops (after yielding the error) at
/// the first malformed command: a `cmd_size` that is no layout of the command, or larger
/// than what is left, or a field out of range.
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
    type Item = Result<CrossDomainCommand, CrossDomainError>;

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
    fn decode_one(&mut self) -> Result<CrossDomainCommand, CrossDomainError> {
        let mut r = WireReader::new(self.buf, "CrossDomainHeader");
        let cmd = r.u8()?;
        let _ring_idx = r.u8()?;
        let cmd_size = usize::from(r.u16()?);
        if cmd_size < HEADER_SIZE {
            return Err(CrossDomainError::Short {
                what: "CrossDomainHeader (cmd_size)",
                needed: HEADER_SIZE,
                got: cmd_size,
            });
        }
        if cmd_size > self.buf.len() {
            return Err(CrossDomainError::Short {
                what: "cross-domain command (cmd_size past the end of the buffer)",
                needed: cmd_size,
                got: self.buf.len(),
            });
        }
        let command = decode(cmd, &self.buf[..cmd_size])?;
        self.buf = &self.buf[cmd_size..];
        Ok(command)
    }
}

/// Decodes one whole command (`body` is `cmd_size` bytes, header included).
fn decode(cmd: u8, body: &[u8]) -> Result<CrossDomainCommand, CrossDomainError> {
    let cmd_size = body.len();
    match cmd {
        CMD_INIT => {
            let what = "CrossDomainInit";
            let layout = InitLayout::ALL
                .into_iter()
                .find(|l| l.size() == cmd_size)
                .ok_or(CrossDomainError::UnknownLayout {
                    what,
                    cmd_size,
                    known: "16, 20 or 24",
                })?;
            let mut r = WireReader::new(body, what);
            r.skip(HEADER_SIZE)?;
            let query_ring_id = r.u32()?;
            let channel_ring_id = if layout == InitLayout::OneRing {
                query_ring_id
            } else {
                r.u32()?
            };
            let channel_type = r.u32()?;
            let protocol_version = if layout == InitLayout::Versioned {
                r.u32()?
            } else {
                0
            };
            if protocol_version > 1 {
                return Err(CrossDomainError::Invalid {
                    what: "CrossDomainInit protocol_version (0 or 1 known)",
                    value: protocol_version.into(),
                });
            }
            Ok(CrossDomainCommand::Init(Init {
                layout,
                query_ring_id,
                channel_ring_id,
                channel_type,
                protocol_version,
            }))
        }
        CMD_GET_IMAGE_REQUIREMENTS => {
            let what = "CrossDomainGetImageRequirements";
            if cmd_size < GET_IMAGE_REQUIREMENTS_SIZE {
                return Err(CrossDomainError::Short {
                    what,
                    needed: GET_IMAGE_REQUIREMENTS_SIZE,
                    got: cmd_size,
                });
            }
            let mut r = WireReader::new(body, what);
            r.skip(HEADER_SIZE)?;
            Ok(CrossDomainCommand::GetImageRequirements {
                width: r.u32()?,
                height: r.u32()?,
                drm_format: r.u32()?,
                flags: r.u32()?,
            })
        }
        CMD_POLL => match cmd_size {
            s if s == PollLayout::HeaderOnly.size() => {
                Ok(CrossDomainCommand::Poll(PollLayout::HeaderOnly))
            }
            s if s == PollLayout::Padded.size() => Ok(CrossDomainCommand::Poll(PollLayout::Padded)),
            _ => Err(CrossDomainError::UnknownLayout {
                what: "CrossDomainPoll",
                cmd_size,
                known: "8 or 16",
            }),
        },
        CMD_SEND => decode_send_receive(body).map(CrossDomainCommand::Send),
        CMD_WRITE => decode_read_write(body).map(CrossDomainCommand::Write),
        CMD_RECEIVE | CMD_READ => Err(CrossDomainError::Unsupported {
            cmd,
            why: "(RECEIVE/READ) goes from host to guest only",
        }),
        _ => Err(CrossDomainError::Unsupported {
            cmd,
            why: "is not implemented (1-7 are; 8 and up mean different things to rutabaga \
                  and libkrun, and need virtio-fs)",
        }),
    }
}

/// A SEND or RECEIVE in either identifier layout. The layout is `cmd_size -
/// opaque_data_size` (64 or 352): the two counts sit at the same offsets in both.
fn decode_send_receive(body: &[u8]) -> Result<SendReceive, CrossDomainError> {
    let what = "CrossDomainSendReceive";
    let cmd_size = body.len();
    let mut r = WireReader::new(body, what);
    r.skip(HEADER_SIZE)?;
    let num_identifiers = r.u32()?;
    let data_size = r.u32()? as usize;
    let layout = match cmd_size.checked_sub(data_size) {
        Some(h) if h == IdLayout::Four.header_size() => IdLayout::Four,
        Some(h) if h == IdLayout::TwentyEight.header_size() => IdLayout::TwentyEight,
        _ => {
            return Err(CrossDomainError::UnknownLayout {
                what: "CrossDomainSendReceive (cmd_size - opaque_data_size)",
                cmd_size,
                known: "64 or 352, plus the data",
            })
        }
    };
    let max = layout.max_ids();
    if num_identifiers as usize > max {
        return Err(CrossDomainError::TooLarge {
            what: "CrossDomainSendReceive num_identifiers",
            value: num_identifiers.into(),
            limit: max as u64,
        });
    }
    let mut slots = [[0u32; 28]; 3];
    for field in &mut slots {
        for slot in field.iter_mut().take(max) {
            *slot = r.u32()?;
        }
    }
    let identifiers = (0..num_identifiers as usize)
        .map(|i| Identifier {
            id: slots[0][i],
            kind: slots[1][i],
            size: slots[2][i],
        })
        .collect();
    Ok(SendReceive {
        layout,
        identifiers,
        data: r.bytes(data_size)?.to_vec(),
    })
}

/// A WRITE or READ: `cmd_size` is 24 plus `opaque_data_size`, `hang_up` 0 or 1.
fn decode_read_write(body: &[u8]) -> Result<ReadWrite, CrossDomainError> {
    let what = "CrossDomainReadWrite";
    let cmd_size = body.len();
    if cmd_size < READ_WRITE_SIZE {
        return Err(CrossDomainError::Short {
            what,
            needed: READ_WRITE_SIZE,
            got: cmd_size,
        });
    }
    let mut r = WireReader::new(body, what);
    r.skip(HEADER_SIZE)?;
    let identifier = r.u32()?;
    let hang_up = match r.u32()? {
        0 => false,
        1 => true,
        other => {
            return Err(CrossDomainError::Invalid {
                what: "CrossDomainReadWrite hang_up (0 or 1)",
                value: other.into(),
            })
        }
    };
    let data_size = r.u32()? as usize;
    r.skip(4)?;
    if READ_WRITE_SIZE.checked_add(data_size) != Some(cmd_size) {
        return Err(CrossDomainError::Invalid {
            what: "CrossDomainReadWrite opaque_data_size (must be cmd_size - 24)",
            value: data_size as u64,
        });
    }
    Ok(ReadWrite {
        identifier,
        hang_up,
        data: r.bytes(data_size)?.to_vec(),
    })
}

/// One event the host wrote into the channel ring, as a guest reads it (`test-codec` only).
#[cfg(any(test, feature = "test-codec"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// `CROSS_DOMAIN_CMD_RECEIVE`: bytes and identifiers from the compositor (none of
    /// either: the host connection closed).
    Receive(SendReceive),
    /// `CROSS_DOMAIN_CMD_READ`: bytes from a read pipe.
    Read(ReadWrite),
}

/// The guest's side: encoding commands and decoding channel events (`test-codec` only:
/// the crate's tests, the fuzz targets and the guest proxy in `guest-tests`).
#[cfg(any(test, feature = "test-codec"))]
impl CrossDomainCommand {
    /// Appends the command's wire form (what a guest sends).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CrossDomainCommand::Init(init) => {
                put_header(out, CMD_INIT, init.layout.size());
                out.put_u32(init.query_ring_id);
                if init.layout != InitLayout::OneRing {
                    out.put_u32(init.channel_ring_id);
                }
                out.put_u32(init.channel_type);
                if init.layout == InitLayout::Versioned {
                    out.put_u32(init.protocol_version);
                }
            }
            CrossDomainCommand::GetImageRequirements {
                width,
                height,
                drm_format,
                flags,
            } => {
                put_header(out, CMD_GET_IMAGE_REQUIREMENTS, GET_IMAGE_REQUIREMENTS_SIZE);
                out.put_u32(*width);
                out.put_u32(*height);
                out.put_u32(*drm_format);
                out.put_u32(*flags);
            }
            CrossDomainCommand::Poll(layout) => {
                put_header(out, CMD_POLL, layout.size());
                out.put_zeros(layout.size() - HEADER_SIZE);
            }
            CrossDomainCommand::Send(send) => send.encode(CMD_SEND, out),
            CrossDomainCommand::Write(write) => write.encode(CMD_WRITE, out),
        }
    }

    /// The command's wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Decodes the event at the start of a channel ring (`test-codec` only).
#[cfg(any(test, feature = "test-codec"))]
pub fn decode_event(ring: &[u8]) -> Result<ChannelEvent, CrossDomainError> {
    let mut r = WireReader::new(ring, "CrossDomainHeader");
    let cmd = r.u8()?;
    let _ring_idx = r.u8()?;
    let cmd_size = usize::from(r.u16()?);
    if cmd_size > ring.len() || cmd_size < HEADER_SIZE {
        return Err(CrossDomainError::Short {
            what: "channel event",
            needed: cmd_size.max(HEADER_SIZE),
            got: ring.len(),
        });
    }
    let body = &ring[..cmd_size];
    match cmd {
        CMD_RECEIVE => decode_send_receive(body).map(ChannelEvent::Receive),
        CMD_READ => decode_read_write(body).map(ChannelEvent::Read),
        _ => Err(CrossDomainError::Unsupported {
            cmd,
            why: "is not a channel event (RECEIVE or READ)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

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

    fn init(layout: InitLayout, q: u32, c: u32, t: u32) -> CrossDomainCommand {
        CrossDomainCommand::Init(Init {
            layout,
            query_ring_id: q,
            channel_ring_id: if layout == InitLayout::OneRing { q } else { c },
            channel_type: t,
            protocol_version: u32::from(layout == InitLayout::Versioned),
        })
    }

    #[test]
    fn command_stream_of_every_layout_round_trips() {
        let blob = Identifier {
            id: 5,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: 0,
        };
        let cmds = vec![
            init(InitLayout::OneRing, 7, 7, 0),
            init(InitLayout::TwoRings, 7, 9, CHANNEL_TYPE_WAYLAND),
            init(InitLayout::Versioned, 7, 9, CHANNEL_TYPE_WAYLAND),
            CrossDomainCommand::GetImageRequirements {
                width: 64,
                height: 32,
                drm_format: 0x3432_5241,
                flags: 1,
            },
            CrossDomainCommand::Poll(PollLayout::HeaderOnly),
            CrossDomainCommand::Poll(PollLayout::Padded),
            CrossDomainCommand::Send(SendReceive {
                layout: IdLayout::Four,
                identifiers: vec![blob],
                data: b"hello".to_vec(),
            }),
            CrossDomainCommand::Send(SendReceive {
                layout: IdLayout::TwentyEight,
                identifiers: vec![blob; 28],
                data: b"world".to_vec(),
            }),
            CrossDomainCommand::Write(ReadWrite {
                identifier: 3,
                hang_up: true,
                data: b"clip".to_vec(),
            }),
        ];
        let sizes = [16, 20, 24, 24, 8, 16, 64 + 5, 352 + 5, 24 + 4];
        let mut buf = Vec::new();
        for (c, size) in cmds.iter().zip(sizes) {
            let before = buf.len();
            c.encode(&mut buf);
            assert_eq!(buf.len() - before, size, "{c:?}");
        }
        let decoded: Vec<_> = commands(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded, cmds);
    }

    #[test]
    fn one_ring_init_names_the_ring_twice() {
        let bytes = init(InitLayout::OneRing, 7, 0, CHANNEL_TYPE_WAYLAND).to_bytes();
        let Some(Ok(CrossDomainCommand::Init(i))) = commands(&bytes).next() else {
            panic!()
        };
        assert_eq!((i.query_ring_id, i.channel_ring_id), (7, 7));
        assert_eq!(i.channel_type, CHANNEL_TYPE_WAYLAND);
    }

    fn raw(cmd: u8, size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        v[0] = cmd;
        v[2..4].copy_from_slice(&(size as u16).to_le_bytes());
        v
    }

    fn first_err(buf: &[u8]) -> CrossDomainError {
        commands(buf).next().unwrap().unwrap_err()
    }

    #[test]
    fn init_of_unknown_size_or_version_is_refused() {
        // 36 bytes (rutabaga's internal-socket INIT), 12 and 28 bytes.
        for size in [8usize, 12, 28, 36] {
            assert!(
                matches!(
                    first_err(&raw(CMD_INIT, size)),
                    CrossDomainError::UnknownLayout { .. }
                ),
                "{size}"
            );
        }
        let mut v = init(InitLayout::Versioned, 1, 2, 1).to_bytes();
        v[20] = 2;
        assert!(matches!(first_err(&v), CrossDomainError::Invalid { .. }));
    }

    #[test]
    fn zero_cmd_size_is_an_error_not_a_loop() {
        let items: Vec<_> = commands(&raw(CMD_POLL, 8)[..8])
            .chain(commands(&{
                let mut b = raw(CMD_POLL, 8);
                b[2] = 0;
                b
            }))
            .collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }

    #[test]
    fn cmd_size_past_the_end_is_an_error() {
        let mut buf = init(InitLayout::TwoRings, 1, 0, 0).to_bytes();
        buf[2] = 200;
        assert_eq!(
            first_err(&buf),
            CrossDomainError::Short {
                what: "cross-domain command (cmd_size past the end of the buffer)",
                needed: 200,
                got: 20
            }
        );
    }

    #[test]
    fn hostile_sends_are_refused() {
        let send = |layout, data: &[u8]| {
            CrossDomainCommand::Send(SendReceive {
                layout,
                identifiers: vec![],
                data: data.to_vec(),
            })
            .to_bytes()
        };
        // num_identifiers beyond the layout's slots.
        let mut bytes = send(IdLayout::Four, b"x");
        bytes[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            first_err(&bytes),
            CrossDomainError::TooLarge { limit: 4, .. }
        ));
        let mut bytes = send(IdLayout::TwentyEight, b"x");
        bytes[8..12].copy_from_slice(&29u32.to_le_bytes());
        assert!(matches!(
            first_err(&bytes),
            CrossDomainError::TooLarge { limit: 28, .. }
        ));
        // opaque_data_size that makes the header size none of the layouts.
        let mut bytes = send(IdLayout::TwentyEight, b"abc");
        bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            first_err(&bytes),
            CrossDomainError::UnknownLayout { .. }
        ));
        // opaque_data_size larger than cmd_size (would underflow).
        let mut bytes = send(IdLayout::TwentyEight, b"abc");
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(first_err(&bytes)
            .to_string()
            .contains("none of the released"));
        // Header only, and a header that claims the counts but ends before them.
        for short in [8, 12] {
            assert!(matches!(
                first_err(&raw(CMD_SEND, short)),
                CrossDomainError::Short { got: 8 | 12, .. }
            ));
        }
    }

    #[test]
    fn hostile_writes_and_host_commands_are_refused() {
        let w = CrossDomainCommand::Write(ReadWrite {
            identifier: 3,
            hang_up: false,
            data: b"data".to_vec(),
        })
        .to_bytes();
        let mut bad = w.clone();
        bad[12] = 2;
        assert!(matches!(first_err(&bad), CrossDomainError::Invalid { .. }));
        let mut bad = w.clone();
        bad[16..20].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(first_err(&bad), CrossDomainError::Invalid { .. }));
        let mut bad = w;
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(first_err(&bad), CrossDomainError::Invalid { .. }));
        assert!(matches!(
            first_err(&raw(CMD_WRITE, 20)),
            CrossDomainError::Short { .. }
        ));
        for cmd in [CMD_RECEIVE, CMD_READ, 0, 8, 13, 255] {
            assert!(
                matches!(
                    first_err(&raw(cmd, 64)),
                    CrossDomainError::Unsupported { .. }
                ),
                "{cmd}"
            );
        }
        // POLL of another size.
        assert!(matches!(
            first_err(&raw(CMD_POLL, 20)),
            CrossDomainError::UnknownLayout { .. }
        ));
    }

    #[test]
    fn events_are_written_in_the_guests_layout() {
        let ids = [Identifier {
            id: 1,
            kind: ID_TYPE_WRITE_PIPE,
            size: 0,
        }];
        let r = SendReceive {
            layout: IdLayout::Four,
            identifiers: ids.to_vec(),
            data: b"abc".to_vec(),
        };
        let bytes = r.receive_bytes();
        assert_eq!(bytes[0], CMD_RECEIVE);
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]) as usize, 64 + 3);
        assert_eq!(&bytes[64..], b"abc");
        // identifier_types[0] sits after 4 ids.
        assert_eq!(u32_at(&bytes, 16 + 16), ID_TYPE_WRITE_PIPE);
        assert_eq!(decode_event(&bytes).unwrap(), ChannelEvent::Receive(r));
        let rd = ReadWrite {
            identifier: 0x8000_0001,
            hang_up: true,
            data: b"xy".to_vec(),
        };
        let bytes = rd.read_bytes();
        assert_eq!(bytes.len(), 26);
        assert_eq!(
            (u32_at(&bytes, 8), u32_at(&bytes, 12), u32_at(&bytes, 16)),
            (0x8000_0001, 1, 2)
        );
        assert_eq!(decode_event(&bytes).unwrap(), ChannelEvent::Read(rd));
        assert_eq!(IdLayout::Four.header_size(), 64);
        assert_eq!(IdLayout::TwentyEight.header_size(), 352);
    }

    #[test]
    fn capabilities_round_trip() {
        let caps = Capabilities {
            version: 1,
            supported_channels: 1 << CHANNEL_TYPE_WAYLAND,
            supports_dmabuf: true,
            supports_external_gpu_memory: false,
        };
        let bytes = caps.encode();
        assert_eq!(bytes.len(), CAPABILITIES_SIZE);
        assert_eq!(u32_at(&bytes, 4), 2);
        assert_eq!(Capabilities::decode(&bytes).unwrap(), caps);
    }
}
