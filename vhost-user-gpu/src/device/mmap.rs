//! Read-only CPU mappings of host buffers (HOST3D blobs shown on a scanout).
//!
//! The guest may write to the same pages at any time through its own mapping, so the bytes
//! are only ever copied out with vm-memory's volatile accessors (the rust-vmm convention for
//! memory a guest writes concurrently); no Rust reference to them is handed out. Creating
//! and removing the mapping is the only `unsafe` of the device core; it lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;

use rustix::mm::{MapFlags, ProtFlags};
use vm_memory::mmap::MmapRegion;
use vm_memory::VolatileMemory;

/// A shared, read-only mapping of a buffer fd.
#[derive(Debug)]
pub(crate) struct MappedBuffer {
    /// The mapping, as a vm-memory region that does not own it (unmapped in `Drop`).
    region: MmapRegion<()>,
}

impl MappedBuffer {
    /// Maps the first `len` bytes of `fd` read-only and shared.
    pub(crate) fn map_read(fd: BorrowedFd<'_>, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a new mapping chosen by the kernel (null hint) cannot alias any Rust
        // object; `fd` is valid for the call. The buffers mapped here have a fixed size
        // (sealed memfds, dma-bufs), so the mapping stays backed.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        // SAFETY: `ptr..ptr+len` is the mapping just created (page aligned, as mmap returns
        // it), with these protection and flags; it stays mapped until `Drop` below, which
        // outlives the region value it is in. The region does not own it (never unmaps it).
        let region =
            unsafe { MmapRegion::build_raw(ptr.cast(), len, libc::PROT_READ, libc::MAP_SHARED) };
        match region {
            Ok(region) => Ok(MappedBuffer { region }),
            Err(e) => {
                // SAFETY: the mapping created above, not referenced by anything.
                let _ = unsafe { rustix::mm::munmap(ptr, len) };
                Err(io::Error::other(format!("mmap region: {e}")))
            }
        }
    }

    /// Length of the mapping.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.region.size()
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`; `None` if out of bounds.
    pub(crate) fn read_into(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let slice = self.region.get_slice(offset, dst.len()).ok()?;
        (slice.copy_to(dst) == dst.len()).then_some(())
    }
}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        let (ptr, len) = (self.region.as_ptr(), self.region.size());
        // SAFETY: the region describes the mapping created in `map_read` and not unmapped
        // yet; no slice of it outlives a `read_into` call, and the region itself (dropped
        // right after this) does not touch the memory.
        if let Err(e) = unsafe { rustix::mm::munmap(ptr.cast(), len) } {
            log::error!("munmap of a host buffer mapping failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn reads_what_the_fd_holds_and_checks_bounds() {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        rustix::io::pwrite(&fd, b"hello", 4096).unwrap();
        let m = MappedBuffer::map_read(fd.as_fd(), 8192).unwrap();
        assert_eq!(m.len(), 8192);
        let mut buf = [0u8; 5];
        m.read_into(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(m.read_into(8190, &mut buf).is_none());
        assert!(m.read_into(usize::MAX, &mut buf).is_none());
    }
}
