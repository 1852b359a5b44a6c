//! Reading a request out of a descriptor chain and writing the response back.
//!
//! Everything here is guest-controlled: descriptor addresses, lengths and their order. The
//! rules:
//! - Device-readable descriptors must all come before device-writable ones (virtio 1.2,
//!   2.7.4.2); a readable descriptor after a writable one makes the chain malformed.
//! - The request is copied out (the device core decodes a stable copy, never memory the guest
//!   can change under it) and bounded by [`MAX_REQUEST_BYTES`]. The largest legitimate
//!   request is `RESOURCE_ATTACH_BACKING` with QEMU's limit of 16384 entries:
//!   24 + 8 + 16 * 16384 = 262 176 bytes; 1 MiB leaves room for four times that (and for
//!   `SUBMIT_3D` command streams) while bounding what one request can make the host allocate.
//! - Every descriptor must lie entirely in guest memory, or the chain is malformed.
//! - A response that does not fit the writable part is not truncated (a cut-off `OK_*`
//!   response would be a lie): if at least a header fits, the header is sent with its type
//!   changed to `ERR_UNSPEC` (fence id and context kept, so fences still complete);
//!   otherwise nothing is written.
//!
//! Malformed chains are completed with a used length of 0, so the guest gets its buffer back
//! and the queue keeps moving.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::device::ports::GuestMemory;
use crate::protocol::{resp, CTRL_HEADER_SIZE};

/// Upper bound on the readable part of one request (see the module documentation).
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// One descriptor as the chain walker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorRef {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write_only: bool,
}

/// Why a chain cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The readable part is larger than [`MAX_REQUEST_BYTES`].
    #[error("request of {0} bytes or more exceeds the {MAX_REQUEST_BYTES}-byte limit")]
    RequestTooLarge(u64),
    /// A descriptor is not entirely inside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Descriptor address.
        addr: u64,
        /// Descriptor length.
        len: u32,
    },
}

/// A request copied out of a chain, and where its response goes.
#[derive(Debug)]
pub struct ParsedChain {
    /// The readable bytes, concatenated.
    pub request: Vec<u8>,
    /// The writable descriptors, in order.
    pub writable: Vec<(GuestAddress, u32)>,
}

impl ParsedChain {
    /// Total writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&(_, len)| u64::from(len)).sum()
    }
}

/// Collects the request bytes and the writable descriptors of a chain.
pub fn read_chain(
    mem: &GuestMemory,
    descriptors: impl IntoIterator<Item = DescriptorRef>,
) -> Result<ParsedChain, ChainError> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut request_len: u64 = 0;
    for desc in descriptors {
        if !GuestMemoryBackend::check_range(mem, desc.addr, desc.len as usize) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr.0,
                len: desc.len,
            });
        }
        if desc.write_only {
            writable.push((desc.addr, desc.len));
        } else {
            if !writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            }
            request_len += u64::from(desc.len);
            if request_len > MAX_REQUEST_BYTES {
                return Err(ChainError::RequestTooLarge(request_len));
            }
            readable.push((desc.addr, desc.len));
        }
    }
    // request_len <= 1 MiB: the allocation is bounded.
    let mut request = vec![0u8; request_len as usize];
    let mut at = 0usize;
    for (addr, len) in readable {
        let len = len as usize;
        mem.read_slice(&mut request[at..at + len], addr)
            .map_err(|_| ChainError::OutsideMemory {
                addr: addr.0,
                len: len as u32,
            })?;
        at += len;
    }
    Ok(ParsedChain { request, writable })
}

/// What [`write_response`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The whole response was written.
    Complete,
    /// The response did not fit; an `ERR_UNSPEC` header was written instead.
    ErrorHeaderOnly,
    /// Nothing could be written.
    Nothing,
}

/// Writes `response` into the writable descriptors. Returns the used length and what happened.
pub fn write_response(
    mem: &GuestMemory,
    writable: &[(GuestAddress, u32)],
    response: &[u8],
) -> (u32, WriteOutcome) {
    let capacity: u64 = writable.iter().map(|&(_, len)| u64::from(len)).sum();
    let (bytes, outcome): (std::borrow::Cow<'_, [u8]>, _) = if response.len() as u64 <= capacity {
        (response.into(), WriteOutcome::Complete)
    } else if response.len() >= CTRL_HEADER_SIZE && capacity >= CTRL_HEADER_SIZE as u64 {
        let mut header = response[..CTRL_HEADER_SIZE].to_vec();
        header[..4].copy_from_slice(&resp::ERR_UNSPEC.to_le_bytes());
        (header.into(), WriteOutcome::ErrorHeaderOnly)
    } else {
        return (0, WriteOutcome::Nothing);
    };
    let mut written = 0usize;
    for &(addr, len) in writable {
        if written == bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - written);
        if mem.write_slice(&bytes[written..written + n], addr).is_err() {
            // read_chain checked the range; memory can only have changed under us (a new
            // table). Report what was really written.
            break;
        }
        written += n;
    }
    let outcome = if written == bytes.len() {
        outcome
    } else {
        WriteOutcome::Nothing
    };
    (u32::try_from(written).unwrap_or(u32::MAX), outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0x1000), 0x10000)]).unwrap()
    }

    fn r(addr: u64, len: u32) -> DescriptorRef {
        DescriptorRef {
            addr: GuestAddress(addr),
            len,
            write_only: false,
        }
    }

    fn w(addr: u64, len: u32) -> DescriptorRef {
        DescriptorRef {
            addr: GuestAddress(addr),
            len,
            write_only: true,
        }
    }

    #[test]
    fn readable_parts_are_concatenated_in_order() {
        let mem = memory();
        mem.write_slice(b"abc", GuestAddress(0x2000)).unwrap();
        mem.write_slice(b"defg", GuestAddress(0x1000)).unwrap();
        let parsed = read_chain(
            &mem,
            [r(0x2000, 3), r(0x1000, 4), w(0x3000, 10), w(0x4000, 30)],
        )
        .unwrap();
        assert_eq!(parsed.request, b"abcdefg");
        assert_eq!(parsed.writable_len(), 40);
    }

    #[test]
    fn malformed_chains_are_rejected() {
        let mem = memory();
        assert_eq!(
            read_chain(&mem, [r(0x1000, 4), w(0x2000, 4), r(0x3000, 4)]).unwrap_err(),
            ChainError::ReadableAfterWritable
        );
        assert!(matches!(
            read_chain(&mem, [r(0x10ff0, 0x20)]),
            Err(ChainError::OutsideMemory { .. })
        ));
        assert!(matches!(
            read_chain(&mem, [w(0x0, 4)]),
            Err(ChainError::OutsideMemory { .. })
        ));
        assert!(matches!(
            read_chain(&mem, [r(u64::MAX - 2, 8)]),
            Err(ChainError::OutsideMemory { .. })
        ));
        // Many descriptors pointing at the same page cannot make the host allocate more than
        // the limit.
        let many = std::iter::repeat_n(r(0x1000, 0x10000), 17);
        assert!(matches!(
            read_chain(&mem, many),
            Err(ChainError::RequestTooLarge(_))
        ));
    }

    #[test]
    fn the_largest_legitimate_attach_backing_fits() {
        let big = GuestMemory::from_ranges(&[(GuestAddress(0), 0x50000)]).unwrap();
        let len = 24 + 8 + 16 * 16384;
        let parsed = read_chain(&big, [r(0, len), w(0x48000, 24)]).unwrap();
        assert_eq!(parsed.request.len(), len as usize);
    }

    #[test]
    fn response_is_scattered_over_writable_descriptors() {
        let mem = memory();
        let response: Vec<u8> = (0..30).collect();
        let (used, outcome) = write_response(
            &mem,
            &[(GuestAddress(0x2000), 10), (GuestAddress(0x3000), 100)],
            &response,
        );
        assert_eq!((used, outcome), (30, WriteOutcome::Complete));
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        mem.read_slice(&mut a, GuestAddress(0x2000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x3000)).unwrap();
        assert_eq!(&a[..], &response[..10]);
        assert_eq!(&b[..], &response[10..]);
    }

    #[test]
    fn too_short_writable_part_gets_an_error_header_not_a_truncated_ok() {
        let mem = memory();
        let mut response = vec![0u8; 408]; // OK_DISPLAY_INFO size
        response[..4].copy_from_slice(&0x1101u32.to_le_bytes());
        response[8..16].copy_from_slice(&77u64.to_le_bytes()); // fence id
        let (used, outcome) = write_response(&mem, &[(GuestAddress(0x2000), 100)], &response);
        assert_eq!((used, outcome), (24, WriteOutcome::ErrorHeaderOnly));
        let mut hdr = [0u8; 24];
        mem.read_slice(&mut hdr, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            u32::from_le_bytes(hdr[..4].try_into().unwrap()),
            resp::ERR_UNSPEC
        );
        assert_eq!(u64::from_le_bytes(hdr[8..16].try_into().unwrap()), 77);
        assert_eq!(
            write_response(&mem, &[(GuestAddress(0x2000), 23)], &response),
            (0, WriteOutcome::Nothing)
        );
        assert_eq!(
            write_response(&mem, &[], &response),
            (0, WriteOutcome::Nothing)
        );
    }
}
