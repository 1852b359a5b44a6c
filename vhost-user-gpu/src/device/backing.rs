//! Guest memory backing of a resource: a scatter list of guest physical ranges, addressed
//! as one linear byte range.
//!
//! All accesses go through vm-memory's `GuestMemory`/`Bytes` (checked address ranges, bulk
//! copies per contiguous piece). Guest addresses are re-resolved on every access because the
//! frontend replaces the memory table at any time (QEMU sends a new one after every
//! SHMEM_MAP). Entries may point into the host-visible region when the frontend lists it in
//! its memory table: reading or writing there touches the mapped blob itself, which is the
//! guest's own buffer, so it is allowed (no host memory outside the guest's reach is
//! involved).

use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, Permissions,
};

use crate::device::ports::GuestMemory as GuestMem;
use crate::protocol::MemEntry;

/// Why a backing access failed.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// An entry's address range wraps around.
    #[error("entry {index} at {addr:#x}+{len:#x} wraps the address space")]
    EntryOverflow {
        /// Entry index.
        index: usize,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// An entry is not (entirely) in guest memory.
    #[error("entry {index} at {addr:#x}+{len:#x} is outside guest memory")]
    EntryOutsideMemory {
        /// Entry index.
        index: usize,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The access does not fit in the backing.
    #[error("access {offset:#x}+{len:#x} exceeds the backing length {total:#x}")]
    OutOfRange {
        /// Offset in the backing.
        offset: u64,
        /// Access length.
        len: u64,
        /// Backing length.
        total: u64,
    },
    /// Guest memory access failed (memory table changed since validation).
    #[error("guest memory access at {addr:#x}: {source}")]
    Memory {
        /// Guest address.
        addr: u64,
        /// vm-memory's error.
        source: GuestMemoryError,
    },
}

/// One guest-physically contiguous piece (adjacent entries merged).
#[derive(Debug, Clone, Copy)]
struct Piece {
    addr: u64,
    len: u64,
}

/// A resource's guest memory pieces.
#[derive(Debug, Clone)]
pub(crate) struct Backing {
    /// The guest's entries, as sent.
    entries: Vec<MemEntry>,
    /// The same memory with guest-physically adjacent entries merged, so that copies are
    /// as large as the guest layout allows.
    pieces: Vec<Piece>,
    /// Offset of each piece in the linear backing (prefix sums of lengths).
    starts: Vec<u64>,
    total: u64,
}

impl Backing {
    /// Builds a backing from the guest's entries, checking that each lies in guest memory.
    pub fn new(mem: &GuestMem, entries: Vec<MemEntry>) -> Result<Self, BackingError> {
        let mut pieces: Vec<Piece> = Vec::with_capacity(entries.len());
        let mut starts = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for (index, e) in entries.iter().enumerate() {
            let len = u64::from(e.length);
            if e.addr.checked_add(len).is_none() {
                return Err(BackingError::EntryOverflow {
                    index,
                    addr: e.addr,
                    len: e.length,
                });
            }
            if !GuestMemory::check_range(
                mem,
                GuestAddress(e.addr),
                e.length as usize,
                Permissions::ReadWrite,
            ) {
                return Err(BackingError::EntryOutsideMemory {
                    index,
                    addr: e.addr,
                    len: e.length,
                });
            }
            if len == 0 {
                continue;
            }
            match pieces.last_mut() {
                // Cannot overflow: addr + len was checked above for both.
                Some(last) if last.addr + last.len == e.addr => last.len += len,
                _ => {
                    pieces.push(Piece { addr: e.addr, len });
                    starts.push(total);
                }
            }
            // Cannot overflow: at most 16384 entries of at most 4 GiB each.
            total += len;
        }
        Ok(Backing {
            entries,
            pieces,
            starts,
            total,
        })
    }

    /// The first two entries (by index) whose guest ranges overlap, if any. Empty entries
    /// overlap nothing; entries that only touch (one ends where the other starts) do not
    /// overlap.
    pub fn overlapping_entries(&self) -> Option<(usize, usize)> {
        let mut ranges: Vec<(u64, u64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.length > 0)
            // Cannot overflow: checked in `new`.
            .map(|(i, e)| (e.addr, e.addr + u64::from(e.length), i))
            .collect();
        ranges.sort_unstable();
        // The entry reaching furthest so far: any later start before its end overlaps it.
        let mut furthest: Option<(u64, usize)> = None;
        let mut found: Option<(usize, usize)> = None;
        for &(start, end, index) in &ranges {
            if let Some((reach, other)) = furthest {
                if start < reach {
                    let pair = (other.min(index), other.max(index));
                    found = Some(found.map_or(pair, |f| f.min(pair)));
                }
            }
            if furthest.is_none_or(|(reach, _)| end > reach) {
                furthest = Some((end, index));
            }
        }
        found
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The guest's entries.
    pub fn entries(&self) -> &[MemEntry] {
        &self.entries
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), BackingError> {
        let len64 = len as u64;
        match offset.checked_add(len64) {
            Some(end) if end <= self.total => Ok(()),
            _ => Err(BackingError::OutOfRange {
                offset,
                len: len64,
                total: self.total,
            }),
        }
    }

    /// Calls `f(guest_address, start, end)` for each contiguous piece of
    /// `offset..offset+len` (`start..end` indexes the caller's buffer).
    fn for_each_piece(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), BackingError>,
    ) -> Result<(), BackingError> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // The piece containing `offset` (pieces are non-empty, starts strictly increase,
        // and starts[0] == 0 <= offset < total).
        let mut index = self.starts.partition_point(|&s| s <= offset) - 1;
        let mut within = offset - self.starts[index];
        let mut done = 0usize;
        while done < len {
            let p = self.pieces[index];
            let chunk = (p.len - within).min((len - done) as u64) as usize;
            f(GuestAddress(p.addr + within), done, done + chunk)?;
            done += chunk;
            index += 1;
            within = 0;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` of the backing into `dst`.
    pub fn read(&self, mem: &GuestMem, offset: u64, dst: &mut [u8]) -> Result<(), BackingError> {
        self.for_each_piece(offset, dst.len(), |addr, start, end| {
            let dst = &mut dst[start..end];
            // Fast path: the piece lies in one region, one bulk copy. Otherwise (a piece
            // spanning adjacent regions) let vm-memory walk the regions.
            if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, dst.len()) {
                if slice.copy_to(dst) == dst.len() {
                    return Ok(());
                }
            }
            mem.read_slice(dst, addr)
                .map_err(|source| BackingError::Memory {
                    addr: addr.0,
                    source,
                })
        })
    }

    /// Copies `src` to `offset` of the backing.
    pub fn write(&self, mem: &GuestMem, offset: u64, src: &[u8]) -> Result<(), BackingError> {
        self.for_each_piece(offset, src.len(), |addr, start, end| {
            let src = &src[start..end];
            if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, src.len()) {
                slice.copy_from(src);
                return Ok(());
            }
            mem.write_slice(src, addr)
                .map_err(|source| BackingError::Memory {
                    addr: addr.0,
                    source,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMem {
        GuestMem::from_ranges(&[
            (GuestAddress(0x1000), 0x4000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn reads_and_writes_across_scattered_entries() {
        let mem = memory();
        let entries = vec![
            MemEntry {
                addr: 0x3000,
                length: 10,
            },
            MemEntry {
                addr: 0x10000,
                length: 0,
            },
            MemEntry {
                addr: 0x10100,
                length: 6,
            },
            MemEntry {
                addr: 0x1000,
                length: 16,
            },
        ];
        let b = Backing::new(&mem, entries).unwrap();
        assert_eq!(b.len(), 32);
        let data: Vec<u8> = (0..32).collect();
        b.write(&mem, 0, &data).unwrap();
        let mut raw = [0u8; 6];
        mem.read_slice(&mut raw, GuestAddress(0x10100)).unwrap();
        assert_eq!(raw, [10, 11, 12, 13, 14, 15]);
        let mut out = [0u8; 12];
        b.read(&mem, 8, &mut out).unwrap();
        assert_eq!(out, [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
        // Exactly at the end is fine, one past is not.
        b.read(&mem, 32, &mut []).unwrap();
        assert!(matches!(
            b.read(&mem, 31, &mut [0; 2]),
            Err(BackingError::OutOfRange { .. })
        ));
        assert!(matches!(
            b.read(&mem, u64::MAX, &mut [0; 2]),
            Err(BackingError::OutOfRange { .. })
        ));
    }

    #[test]
    fn adjacent_entries_are_merged_into_one_piece() {
        let mem = memory();
        let entries = vec![
            MemEntry {
                addr: 0x1000,
                length: 0x1000,
            },
            MemEntry {
                addr: 0x2000,
                length: 0x1000,
            },
            MemEntry {
                addr: 0x3000,
                length: 0,
            },
            MemEntry {
                addr: 0x3000,
                length: 0x10,
            },
            MemEntry {
                addr: 0x10000,
                length: 0x10,
            },
        ];
        let b = Backing::new(&mem, entries).unwrap();
        assert_eq!(b.entries().len(), 5);
        assert_eq!(b.pieces.len(), 2);
        assert_eq!(b.pieces[0].len, 0x2010);
        assert_eq!(b.starts, vec![0, 0x2010]);
        let data: Vec<u8> = (0..0x2020u32).map(|i| (i % 251) as u8).collect();
        b.write(&mem, 0, &data).unwrap();
        let mut out = vec![0u8; 0x20];
        b.read(&mem, 0x2000, &mut out).unwrap();
        assert_eq!(out, data[0x2000..]);
    }

    #[test]
    fn overlapping_entries_are_found_touching_ones_are_not() {
        let mem = memory();
        let e = |addr, length| MemEntry { addr, length };
        let check =
            |entries: Vec<MemEntry>| Backing::new(&mem, entries).unwrap().overlapping_entries();
        // Touching end to start, in any order, and empty entries anywhere: no overlap.
        assert_eq!(check(vec![e(0x2000, 0x1000), e(0x1000, 0x1000)]), None);
        assert_eq!(
            check(vec![e(0x1000, 0x10), e(0x1008, 0), e(0x1010, 0x10)]),
            None
        );
        // One byte of overlap, the same entry twice, one inside another.
        assert_eq!(check(vec![e(0x1000, 0x11), e(0x1010, 0x10)]), Some((0, 1)));
        assert_eq!(
            check(vec![e(0x3000, 0x10), e(0x1000, 8), e(0x1000, 8)]),
            Some((1, 2))
        );
        assert_eq!(
            check(vec![e(0x1000, 0x1000), e(0x3000, 4), e(0x1800, 0x10)]),
            Some((0, 2))
        );
        // A long entry overlapping a later, not adjacent, one.
        assert_eq!(
            check(vec![e(0x1000, 0x3000), e(0x2000, 4), e(0x3ff0, 0x10)]),
            Some((0, 1))
        );
    }

    #[test]
    fn entries_outside_guest_memory_are_rejected() {
        let mem = memory();
        for (addr, length) in [(0x0, 16), (0x4ff0, 32), (0x20000, 1), (u64::MAX - 4, 16)] {
            assert!(
                Backing::new(&mem, vec![MemEntry { addr, length }]).is_err(),
                "{addr:#x}+{length:#x}"
            );
        }
    }
}
