//! Guest RAM: one shared memfd, mapped in the frontend and handed to the backend with
//! `SET_MEM_TABLE`, plus a small first-fit allocator for guest-physical ranges.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicU16;
use std::sync::Mutex;

use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory, VolatileSlice};

use crate::{Error, Result};

/// Guest-physical address where guest RAM starts (QEMU's q35 also starts at 0).
pub const GUEST_RAM_BASE: u64 = 0;

/// Guest RAM shared with the backend.
///
/// The backend writes it concurrently, exactly like a guest's RAM, so it is only reached
/// through vm-memory's volatile accessors (copies, and atomics for the ring indices); no
/// Rust reference to plain bytes in it is ever made.
pub struct GuestRam {
    /// The shared mapping of the memfd (which the region's `FileOffset` owns).
    region: MmapRegion<()>,
    allocator: Mutex<RangeAllocator>,
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM backed by a memfd, sealed against growing
    /// and shrinking like QEMU's `memory-backend-memfd` (its `seal` property defaults to
    /// on: `F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`). udmabuf needs `F_SEAL_SHRINK` to
    /// export guest pages, so a backend sees the same guest RAM as behind QEMU.
    pub fn new(size: usize) -> Result<Self> {
        let memfd = memfd_create(
            "vug-conformance-guest-ram",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| Error::Io {
            what: "memfd_create",
            source: e.into(),
        })?;
        ftruncate(&memfd, size as u64).map_err(|e| Error::Io {
            what: "ftruncate guest RAM",
            source: e.into(),
        })?;
        fcntl_add_seals(
            &memfd,
            SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )
        .map_err(|e| Error::Io {
            what: "seal guest RAM (F_ADD_SEALS)",
            source: e.into(),
        })?;
        let region = MmapRegion::from_file(FileOffset::new(File::from(memfd), 0), size)
            .map_err(|e| Error::GuestMemory(format!("mmap guest RAM: {e}")))?;
        Ok(Self {
            region,
            allocator: Mutex::new(RangeAllocator::new(GUEST_RAM_BASE, size as u64)),
        })
    }

    /// Size of guest RAM in bytes.
    pub fn size(&self) -> usize {
        self.region.size()
    }

    /// The memfd backing guest RAM.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        match self.region.file_offset() {
            Some(file_offset) => file_offset.file().as_fd(),
            // `new` always maps a file.
            None => unreachable!("guest RAM is mapped from its memfd"),
        }
    }

    /// The region description for `SET_MEM_TABLE`.
    pub fn region_info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: GUEST_RAM_BASE,
            memory_size: self.size() as u64,
            userspace_addr: self.region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: self.memfd().as_raw_fd(),
        }
    }

    /// The frontend's virtual address of `gpa` (what vhost-user calls a user address).
    pub fn user_addr(&self, gpa: u64) -> Result<u64> {
        let offset = self.offset(gpa, 0)?;
        Ok(self.region.as_ptr() as u64 + offset as u64)
    }

    fn offset(&self, gpa: u64, len: usize) -> Result<usize> {
        let offset = gpa
            .checked_sub(GUEST_RAM_BASE)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= self.size()))
            .ok_or_else(|| {
                Error::GuestMemory(format!("access {gpa:#x}+{len:#x} outside guest RAM"))
            })?;
        Ok(offset)
    }

    /// The `len` bytes at `gpa`, after checking that they are guest RAM.
    fn slice(&self, gpa: u64, len: usize) -> Result<VolatileSlice<'_>> {
        let offset = self.offset(gpa, len)?;
        self.region
            .get_slice(offset, len)
            .map_err(|e| Error::GuestMemory(format!("access {gpa:#x}+{len:#x}: {e}")))
    }

    /// The 16-bit ring index at `gpa` (2-aligned), shared with the backend.
    pub(crate) fn ring_index(&self, gpa: u64) -> Result<&AtomicU16> {
        let offset = self.offset(gpa, 2)?;
        self.region
            .get_atomic_ref::<AtomicU16>(offset)
            .map_err(|e| Error::Queue(format!("ring index at {gpa:#x}: {e}")))
    }

    /// Copies `data` into guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.slice(gpa, data.len())?.copy_from(data);
        Ok(())
    }

    /// Copies guest RAM at `gpa` into `out`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        self.slice(gpa, out.len())?.copy_to(out);
        Ok(())
    }

    /// Reads `len` bytes at `gpa` into a new vector.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0; len];
        self.read(gpa, &mut out)?;
        Ok(out)
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); the range is zeroed.
    pub fn alloc(&self, size: u64, align: u64) -> Result<u64> {
        let gpa = self
            .allocator
            .lock()
            .map_err(|_| Error::GuestMemory("allocator poisoned".into()))?
            .alloc(size, align)
            .ok_or_else(|| {
                Error::GuestMemory(format!("no room for {size:#x} bytes in guest RAM"))
            })?;
        let len = usize::try_from(size).map_err(|_| Error::GuestMemory("size".into()))?;
        // Zeroed a piece at a time: a range of hundreds of MiB must not need a heap copy of
        // itself (the frontend runs inside 512 MiB guests too).
        const PIECE: usize = 1 << 20;
        let zeros = vec![0; PIECE.min(len)];
        let mut done = 0;
        while done < len {
            let n = PIECE.min(len - done);
            self.write(gpa + done as u64, &zeros[..n])?;
            done += n;
        }
        Ok(gpa)
    }

    /// Returns a range from [`alloc`](Self::alloc) to the allocator.
    pub fn free(&self, gpa: u64) {
        if let Ok(mut a) = self.allocator.lock() {
            a.free(gpa);
        }
    }
}

/// First-fit allocator over a guest-physical range.
#[derive(Debug)]
struct RangeAllocator {
    free: BTreeMap<u64, u64>,
    used: BTreeMap<u64, u64>,
}

impl RangeAllocator {
    fn new(base: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(base, size);
        Self {
            free,
            used: BTreeMap::new(),
        }
    }

    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let size = size.max(1);
        let align = align.max(1);
        if !align.is_power_of_two() {
            return None;
        }
        let (start, len, at) = self.free.iter().find_map(|(&start, &len)| {
            let at = start.checked_add(align - 1)? & !(align - 1);
            let end = at.checked_add(size)?;
            (end <= start + len).then_some((start, len, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        let end = at + size;
        if end < start + len {
            self.free.insert(end, start + len - end);
        }
        self.used.insert(at, size);
        Some(at)
    }

    fn free(&mut self, at: u64) {
        let Some(mut size) = self.used.remove(&at) else {
            return;
        };
        let mut start = at;
        if let Some((&prev, &plen)) = self.free.range(..at).next_back() {
            if prev + plen == at {
                self.free.remove(&prev);
                start = prev;
                size += plen;
            }
        }
        let next = start + size;
        if let Some(nlen) = self.free.remove(&next) {
            size += nlen;
        }
        self.free.insert(start, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_reuses_and_merges() {
        let mut a = RangeAllocator::new(0, 0x1000);
        let x = a.alloc(0x100, 0x100).unwrap();
        let y = a.alloc(0x100, 0x100).unwrap();
        assert_ne!(x, y);
        a.free(x);
        a.free(y);
        assert_eq!(a.free.len(), 1, "{:?}", a.free);
        assert_eq!(a.alloc(0x1000, 1), Some(0));
        assert_eq!(a.alloc(1, 1), None);
    }

    #[test]
    fn ram_round_trip_and_bounds() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let gpa = ram.alloc(16, 16).unwrap();
        ram.write(gpa, b"0123456789abcdef").unwrap();
        assert_eq!(ram.read_vec(gpa, 16).unwrap(), b"0123456789abcdef");
        assert!(ram.write((1 << 20) - 1, b"xx").is_err());
    }

    #[test]
    fn ram_is_sealed_like_qemus_memfd_backend() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let seals = rustix::fs::fcntl_get_seals(ram.memfd()).unwrap();
        assert_eq!(seals, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL);
        assert!(ftruncate(ram.memfd(), 4096).is_err());
    }
}
