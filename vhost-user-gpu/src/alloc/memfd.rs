//! Sealed memfd buffers: zero-filled by the kernel, fixed size (shrink/grow sealed), not
//! dma-bufs. The embedded default when no GPU and no udmabuf exist.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

use super::linear_layout;
use crate::device::ports::{AllocError, BufferAllocator, BufferRequest, HostBuffer};
use crate::protocol::fourcc;

/// Creates a memfd of `size` bytes (zero-filled by the kernel) and adds `seals`.
pub(crate) fn sealed_memfd(name: &str, size: u64, seals: SealFlags) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, seals)?;
    Ok(fd)
}

/// Allocates sealed memfds.
#[derive(Debug, Default)]
pub struct MemfdAllocator;

impl MemfdAllocator {
    /// A memfd allocator (always available on Linux).
    pub fn new() -> Self {
        MemfdAllocator
    }
}

impl BufferAllocator for MemfdAllocator {
    fn name(&self) -> &'static str {
        "memfd"
    }

    fn allocate(&mut self, request: &BufferRequest) -> Result<HostBuffer, AllocError> {
        let (size, planes) = linear_layout(request)?;
        let fd = sealed_memfd(
            "vhost-user-gpu-buffer",
            size,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        Ok(HostBuffer {
            fd,
            size,
            planes,
            modifier: fourcc::MOD_LINEAR,
            is_dmabuf: false,
        })
    }

    fn drm_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_is_zeroed_and_cannot_change_size() {
        let fd = sealed_memfd(
            "test",
            8192,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
        assert!(rustix::fs::ftruncate(&fd, 4096).is_err());
        assert!(rustix::fs::ftruncate(&fd, 16384).is_err());
        let mut buf = vec![0xffu8; 8192];
        let n = rustix::io::pread(&fd, &mut buf, 0).unwrap();
        assert_eq!(n, 8192);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn image_buffers_are_sealed_and_zeroed() {
        let mut a = MemfdAllocator::new();
        let buf = a
            .allocate(&BufferRequest::Image {
                width: 64,
                height: 64,
                drm_format: fourcc::ARGB8888,
                usage: 0,
            })
            .unwrap();
        assert_eq!(buf.size, 16384);
        assert_eq!(buf.planes[0].stride, 256);
        assert!(!buf.is_dmabuf);
        let seals = rustix::fs::fcntl_get_seals(&buf.fd).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        let mut data = vec![1u8; 16384];
        assert_eq!(rustix::io::pread(&buf.fd, &mut data, 0).unwrap(), 16384);
        assert!(data.iter().all(|&b| b == 0));
    }
}
