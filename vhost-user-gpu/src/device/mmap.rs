//! Read-only CPU mappings of host buffers (HOST3D blobs shown on a scanout).
//!
//! The guest may write to the same pages at any time through its own mapping, so no Rust
//! reference to the mapped bytes is ever handed out: [`MappedBuffer::read_into`] copies out
//! of it with bounds checks. The only `unsafe` of the device core lives here.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

/// A shared, read-only mapping of a buffer fd.
#[derive(Debug)]
pub(crate) struct MappedBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value (unmapped on drop) and only read through
// `read_into`, which does not depend on the calling thread.
unsafe impl Send for MappedBuffer {}

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
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MappedBuffer { ptr, len })
    }

    /// Length of the mapping.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`; `None` if out of bounds.
    pub(crate) fn read_into(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let end = offset.checked_add(dst.len())?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset..end` lies inside the mapping (checked above), which lives as long
        // as `self`; `dst` is a distinct Rust buffer, so the ranges do not overlap. Bytes
        // written concurrently by the guest are plain data (any value is valid for u8).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Some(())
    }
}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping created in `map_read` and not unmapped yet;
        // no reference into it exists outside `read_into` calls, which have returned.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
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
