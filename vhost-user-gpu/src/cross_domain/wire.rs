//! Wire forms of the cross-domain channel commands, in every layout released guests send
//! (see `CROSS-DOMAIN.md` for who sends which): INIT in 16, 20 and 24 bytes, SEND with 4 or
//! 28 identifier slots, POLL in 8 or 16 bytes, WRITE; and the host -> guest RECEIVE and READ
//! written into the channel ring.
//!
//! Every function takes one whole command (`cmd_size` bytes, header included) as cut out by
//! [`crate::protocol::cross_domain::commands`]-style iteration, and checks each size and count
//! against the command's own length before it reads anything. The command numbers live in
//! [`crate::protocol::cross_domain`]; only what that module lacks is declared here.
// Phase 2 of issue 14 folds these decoders into `protocol::cross_domain`.

use crate::protocol::cross_domain::{
    CMD_INIT, CMD_POLL, CMD_READ, CMD_RECEIVE, CMD_SEND, CMD_WRITE, HEADER_SIZE,
};

/// `CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND`.
pub const CHANNEL_TYPE_WAYLAND: u32 = 0x0001;
/// `CROSS_DOMAIN_CHANNEL_TYPE_CAMERA` (no host implements it).
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

/// Size of `struct CrossDomainReadWrite` (READ and WRITE, before the data).
pub const READ_WRITE_SIZE: usize = HEADER_SIZE + 16;
/// The page every client allocates for each ring, and the most any client sends at once.
pub const RING_PAGE_SIZE: usize = 4096;

/// The layout of a `CROSS_DOMAIN_CMD_INIT`, told by its exact `cmd_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitLayout {
    /// 16 bytes: one ring id used as query and channel ring, channel type (minigbm; Sommelier
    /// before 2023-06; wayland-proxy-virtwl before 2023-10).
    OneRing,
    /// 20 bytes: query ring, channel ring, channel type (Sommelier, wayland-proxy-virtwl).
    TwoRings,
    /// 24 bytes: as `TwoRings` plus `protocol_version` (libkrun; muvm sends 1).
    Versioned,
}

impl InitLayout {
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
    /// `protocol_version` of the 24-byte layout (0 for the others).
    pub protocol_version: u32,
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

    /// Largest opaque data a command of this layout carries within one ring page.
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

/// A decoded SEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send<'a> {
    /// The layout it came in.
    pub layout: IdLayout,
    /// `num_identifiers` entries.
    pub identifiers: Vec<Identifier>,
    /// The bytes for the compositor.
    pub data: &'a [u8],
}

/// A decoded WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write<'a> {
    /// Write pipe id.
    pub identifier: u32,
    /// Close the pipe after writing `data`.
    pub hang_up: bool,
    /// Bytes for the pipe.
    pub data: &'a [u8],
}

/// A malformed channel command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The command is shorter than its header says, or than its fixed part.
    #[error("{what}: cmd_size {cmd_size} but {needed} bytes needed")]
    Short {
        /// Command name.
        what: &'static str,
        /// `cmd_size` (or bytes present).
        cmd_size: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// `cmd_size` matches no layout of the command.
    #[error("{what}: cmd_size {cmd_size} is none of the released layouts ({known})")]
    UnknownLayout {
        /// Command name.
        what: &'static str,
        /// `cmd_size` sent.
        cmd_size: usize,
        /// Sizes accepted, for the log line.
        known: &'static str,
    },
    /// A count or size field is out of range.
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
        /// Field name.
        what: &'static str,
        /// Value sent.
        value: u64,
    },
    /// The header names another command than the decoder was asked for.
    #[error("command {found} where {expected} was expected")]
    WrongCommand {
        /// Command expected.
        expected: u8,
        /// Command found.
        found: u8,
    },
}

fn u32_at(buf: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

/// `(cmd, cmd_size)` of the header at the start of `cmd`, checked against `cmd.len()`.
fn header(cmd: &[u8], expected: u8, what: &'static str) -> Result<usize, WireError> {
    if cmd.len() < HEADER_SIZE {
        return Err(WireError::Short {
            what,
            cmd_size: cmd.len(),
            needed: HEADER_SIZE,
        });
    }
    if cmd[0] != expected {
        return Err(WireError::WrongCommand {
            expected,
            found: cmd[0],
        });
    }
    let cmd_size = usize::from(u16::from_le_bytes([cmd[2], cmd[3]]));
    if cmd_size > cmd.len() {
        return Err(WireError::Short {
            what,
            cmd_size: cmd.len(),
            needed: cmd_size,
        });
    }
    Ok(cmd_size)
}

/// Decodes an INIT of any released layout.
pub fn decode_init(cmd: &[u8]) -> Result<Init, WireError> {
    let what = "CrossDomainInit";
    let cmd_size = header(cmd, CMD_INIT, what)?;
    let layout = [
        InitLayout::OneRing,
        InitLayout::TwoRings,
        InitLayout::Versioned,
    ]
    .into_iter()
    .find(|l| l.size() == cmd_size)
    .ok_or(WireError::UnknownLayout {
        what,
        cmd_size,
        known: "16, 20 or 24",
    })?;
    let init = match layout {
        InitLayout::OneRing => Init {
            layout,
            query_ring_id: u32_at(cmd, 8),
            channel_ring_id: u32_at(cmd, 8),
            channel_type: u32_at(cmd, 12),
            protocol_version: 0,
        },
        InitLayout::TwoRings | InitLayout::Versioned => Init {
            layout,
            query_ring_id: u32_at(cmd, 8),
            channel_ring_id: u32_at(cmd, 12),
            channel_type: u32_at(cmd, 16),
            protocol_version: if layout == InitLayout::Versioned {
                u32_at(cmd, 20)
            } else {
                0
            },
        },
    };
    if init.layout == InitLayout::Versioned && init.protocol_version > 1 {
        return Err(WireError::Invalid {
            what: "CrossDomainInit protocol_version (0 or 1 known)",
            value: init.protocol_version.into(),
        });
    }
    Ok(init)
}

/// Checks a POLL (8 bytes, header only, or 16 with a pad; every host reads only the header).
pub fn decode_poll(cmd: &[u8]) -> Result<(), WireError> {
    let cmd_size = header(cmd, CMD_POLL, "CrossDomainPoll")?;
    if cmd_size != HEADER_SIZE && cmd_size != HEADER_SIZE + 8 {
        return Err(WireError::UnknownLayout {
            what: "CrossDomainPoll",
            cmd_size,
            known: "8 or 16",
        });
    }
    Ok(())
}

/// Decodes a SEND in either identifier layout. The layout is `cmd_size - opaque_data_size`
/// (64 or 352): the two counts sit at the same offsets in both.
pub fn decode_send(cmd: &[u8]) -> Result<Send<'_>, WireError> {
    let what = "CrossDomainSendReceive";
    let cmd_size = header(cmd, CMD_SEND, what)?;
    let fixed = HEADER_SIZE + 8;
    if cmd_size < fixed {
        return Err(WireError::Short {
            what,
            cmd_size,
            needed: fixed,
        });
    }
    let num_identifiers = u32_at(cmd, 8);
    let data_size = u32_at(cmd, 12) as usize;
    let layout = match cmd_size.checked_sub(data_size) {
        Some(h) if h == IdLayout::Four.header_size() => IdLayout::Four,
        Some(h) if h == IdLayout::TwentyEight.header_size() => IdLayout::TwentyEight,
        _ => {
            return Err(WireError::UnknownLayout {
                what: "CrossDomainSendReceive (cmd_size - opaque_data_size)",
                cmd_size,
                known: "64 or 352 plus the data",
            })
        }
    };
    let max = layout.max_ids();
    if num_identifiers as usize > max {
        return Err(WireError::TooLarge {
            what: "num_identifiers",
            value: num_identifiers.into(),
            limit: max as u64,
        });
    }
    let ids_at = fixed;
    let kinds_at = ids_at + 4 * max;
    let sizes_at = kinds_at + 4 * max;
    let identifiers = (0..num_identifiers as usize)
        .map(|i| Identifier {
            id: u32_at(cmd, ids_at + 4 * i),
            kind: u32_at(cmd, kinds_at + 4 * i),
            size: u32_at(cmd, sizes_at + 4 * i),
        })
        .collect();
    Ok(Send {
        layout,
        identifiers,
        data: &cmd[layout.header_size()..cmd_size],
    })
}

/// Decodes a WRITE.
pub fn decode_write(cmd: &[u8]) -> Result<Write<'_>, WireError> {
    let what = "CrossDomainReadWrite";
    let cmd_size = header(cmd, CMD_WRITE, what)?;
    if cmd_size < READ_WRITE_SIZE {
        return Err(WireError::Short {
            what,
            cmd_size,
            needed: READ_WRITE_SIZE,
        });
    }
    let data_size = u32_at(cmd, 16) as usize;
    if READ_WRITE_SIZE + data_size != cmd_size {
        return Err(WireError::Invalid {
            what: "CrossDomainReadWrite opaque_data_size (must be cmd_size - 24)",
            value: data_size as u64,
        });
    }
    let hang_up = match u32_at(cmd, 12) {
        0 => false,
        1 => true,
        other => {
            return Err(WireError::Invalid {
                what: "CrossDomainReadWrite hang_up",
                value: other.into(),
            })
        }
    };
    Ok(Write {
        identifier: u32_at(cmd, 8),
        hang_up,
        data: &cmd[READ_WRITE_SIZE..cmd_size],
    })
}

fn put_header(out: &mut Vec<u8>, cmd: u8, size: usize) {
    out.push(cmd);
    out.push(0);
    // Callers bound `size` by the ring page (4096).
    out.extend_from_slice(&(size as u16).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// The bytes of a RECEIVE (host -> guest) in `layout`. `ids.len()` must be at most
/// `layout.max_ids()` and `data.len()` at most `layout.max_data()` (the channel enforces both).
pub fn encode_receive(layout: IdLayout, ids: &[Identifier], data: &[u8]) -> Vec<u8> {
    debug_assert!(ids.len() <= layout.max_ids() && data.len() <= layout.max_data());
    encode_send_receive(CMD_RECEIVE, layout, ids, data)
}

/// The bytes of a SEND (guest -> host), for test clients and the guest proxy.
pub fn encode_send(layout: IdLayout, ids: &[Identifier], data: &[u8]) -> Vec<u8> {
    encode_send_receive(CMD_SEND, layout, ids, data)
}

fn encode_send_receive(cmd: u8, layout: IdLayout, ids: &[Identifier], data: &[u8]) -> Vec<u8> {
    let size = layout.header_size() + data.len();
    let mut out = Vec::with_capacity(size);
    put_header(&mut out, cmd, size);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    for field in 0..3 {
        for slot in 0..layout.max_ids() {
            let value = ids.get(slot).map_or(0, |i| match field {
                0 => i.id,
                1 => i.kind,
                _ => i.size,
            });
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out.extend_from_slice(data);
    out
}

fn encode_read_write(cmd: u8, identifier: u32, hang_up: bool, data: &[u8]) -> Vec<u8> {
    let size = READ_WRITE_SIZE + data.len();
    let mut out = Vec::with_capacity(size);
    put_header(&mut out, cmd, size);
    out.extend_from_slice(&identifier.to_le_bytes());
    out.extend_from_slice(&u32::from(hang_up).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(data);
    out
}

/// The bytes of a READ (host -> guest): data from read pipe `identifier`.
pub fn encode_read(identifier: u32, hang_up: bool, data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() <= RING_PAGE_SIZE - READ_WRITE_SIZE);
    encode_read_write(CMD_READ, identifier, hang_up, data)
}

/// The bytes of a WRITE (guest -> host), for test clients and the guest proxy.
pub fn encode_write(identifier: u32, hang_up: bool, data: &[u8]) -> Vec<u8> {
    encode_read_write(CMD_WRITE, identifier, hang_up, data)
}

/// The bytes of an INIT in `layout` (for test clients and conformance cases).
pub fn encode_init(
    layout: InitLayout,
    query_ring_id: u32,
    channel_ring_id: u32,
    channel_type: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(layout.size());
    put_header(&mut out, CMD_INIT, layout.size());
    out.extend_from_slice(&query_ring_id.to_le_bytes());
    if layout != InitLayout::OneRing {
        out.extend_from_slice(&channel_ring_id.to_le_bytes());
    }
    out.extend_from_slice(&channel_type.to_le_bytes());
    if layout == InitLayout::Versioned {
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out
}

/// The bytes of a 16-byte POLL.
pub fn encode_poll() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + 8);
    put_header(&mut out, CMD_POLL, HEADER_SIZE + 8);
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_layouts_by_exact_size() {
        let legacy = encode_init(InitLayout::OneRing, 7, 0, CHANNEL_TYPE_WAYLAND);
        assert_eq!(legacy.len(), 16);
        let init = decode_init(&legacy).unwrap();
        assert_eq!((init.query_ring_id, init.channel_ring_id), (7, 7));
        assert_eq!(init.channel_type, CHANNEL_TYPE_WAYLAND);

        let two = encode_init(InitLayout::TwoRings, 7, 9, 0);
        assert_eq!(two.len(), 20);
        let init = decode_init(&two).unwrap();
        assert_eq!(
            (init.query_ring_id, init.channel_ring_id, init.channel_type),
            (7, 9, 0)
        );

        let versioned = encode_init(InitLayout::Versioned, 7, 9, 0x11);
        assert_eq!(versioned.len(), 24);
        let init = decode_init(&versioned).unwrap();
        assert_eq!(
            (init.layout, init.protocol_version, init.channel_type),
            (InitLayout::Versioned, 1, 0x11)
        );
    }

    #[test]
    fn init_of_unknown_size_or_version_is_refused() {
        // 36 bytes (rutabaga's internal-socket INIT), 12 and 28 bytes.
        for size in [12usize, 28, 36] {
            let mut cmd = vec![0u8; size];
            cmd[0] = CMD_INIT;
            cmd[2..4].copy_from_slice(&(size as u16).to_le_bytes());
            assert!(
                matches!(decode_init(&cmd), Err(WireError::UnknownLayout { .. })),
                "{size}"
            );
        }
        let mut v = encode_init(InitLayout::Versioned, 1, 2, 1);
        v[20] = 2;
        assert!(matches!(decode_init(&v), Err(WireError::Invalid { .. })));
        // cmd_size larger than what was submitted.
        let mut two = encode_init(InitLayout::TwoRings, 1, 2, 1);
        two[2] = 24;
        assert!(matches!(decode_init(&two), Err(WireError::Short { .. })));
    }

    #[test]
    fn send_layouts_are_told_apart_by_header_size() {
        let ids = [Identifier {
            id: 5,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: 0,
        }];
        for layout in [IdLayout::Four, IdLayout::TwentyEight] {
            let bytes = encode_send(layout, &ids, b"hello");
            assert_eq!(bytes.len(), layout.header_size() + 5);
            let send = decode_send(&bytes).unwrap();
            assert_eq!(send.layout, layout);
            assert_eq!(send.identifiers, ids);
            assert_eq!(send.data, b"hello");
        }
        assert_eq!(IdLayout::Four.header_size(), 64);
        assert_eq!(IdLayout::TwentyEight.header_size(), 352);
    }

    #[test]
    fn hostile_sends_are_refused() {
        // num_identifiers beyond the layout's slots.
        let mut bytes = encode_send(IdLayout::Four, &[], b"x");
        bytes[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            decode_send(&bytes),
            Err(WireError::TooLarge { .. })
        ));
        // opaque_data_size that makes the header size none of the layouts.
        let mut bytes = encode_send(IdLayout::TwentyEight, &[], b"abc");
        bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            decode_send(&bytes),
            Err(WireError::UnknownLayout { .. })
        ));
        // opaque_data_size larger than cmd_size (would underflow).
        let mut bytes = encode_send(IdLayout::TwentyEight, &[], b"abc");
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_send(&bytes).is_err());
        // Header only.
        let bytes = &encode_send(IdLayout::Four, &[], b"")[..8];
        assert!(decode_send(bytes).is_err());
    }

    #[test]
    fn write_checks_size_and_hang_up() {
        let w = encode_write(3, true, b"data");
        let d = decode_write(&w).unwrap();
        assert_eq!((d.identifier, d.hang_up, d.data), (3, true, &b"data"[..]));
        let mut bad = w.clone();
        bad[12] = 2;
        assert!(matches!(decode_write(&bad), Err(WireError::Invalid { .. })));
        let mut bad = w;
        bad[16..20].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(decode_write(&bad), Err(WireError::Invalid { .. })));
    }

    #[test]
    fn poll_sizes() {
        assert!(decode_poll(&encode_poll()).is_ok());
        let mut short = encode_poll();
        short.truncate(8);
        short[2] = 8;
        assert!(decode_poll(&short).is_ok());
        let mut odd = encode_poll();
        odd.extend_from_slice(&[0; 4]);
        odd[2] = 20;
        assert!(decode_poll(&odd).is_err());
    }

    #[test]
    fn receive_and_read_layouts() {
        let ids = [Identifier {
            id: 1,
            kind: ID_TYPE_WRITE_PIPE,
            size: 0,
        }];
        let r = encode_receive(IdLayout::Four, &ids, b"abc");
        assert_eq!(r[0], CMD_RECEIVE);
        assert_eq!(u16::from_le_bytes([r[2], r[3]]) as usize, 64 + 3);
        assert_eq!(&r[64..], b"abc");
        // identifier_types[0] sits after 4 ids.
        assert_eq!(u32_at(&r, 16 + 16), ID_TYPE_WRITE_PIPE);
        let rd = encode_read(0x8000_0001, true, b"xy");
        assert_eq!(rd.len(), 26);
        assert_eq!(u32_at(&rd, 8), 0x8000_0001);
        assert_eq!(u32_at(&rd, 12), 1);
        assert_eq!(u32_at(&rd, 16), 2);
    }
}
