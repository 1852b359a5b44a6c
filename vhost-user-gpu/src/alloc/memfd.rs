//! Sealed memfd buffers: zero-filled by the kernel, fixed size (shrink/grow sealed), not
//! dma-bufs. The embedded default when no GPU and no udmabuf exist.

use std::os::fd::BorrowedFd;

use rustix::fs::SealFlags;

use super::{linear_layout, sys};
use crate::device::ports::{AllocError, BufferAllocator, BufferRequest, HostBuffer};
use crate::protocol::fourcc;

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
        let fd = sys::sealed_memfd(
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
