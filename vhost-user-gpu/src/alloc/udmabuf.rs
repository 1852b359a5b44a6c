//! udmabuf buffers: a memfd sealed against shrinking, turned into a dma-buf by
//! `/dev/udmabuf` (`UDMABUF_CREATE`). Real dma-bufs without a GPU.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::SealFlags;

use super::{linear_layout, sys};
use crate::device::ports::{fourcc, AllocError, BufferAllocator, BufferRequest, HostBuffer};

/// Path of the udmabuf misc device.
pub const UDMABUF_DEVICE: &str = "/dev/udmabuf";

/// Allocates udmabufs.
#[derive(Debug)]
pub struct UdmabufAllocator {
    device: File,
}

impl UdmabufAllocator {
    /// Opens `/dev/udmabuf`.
    pub fn new() -> Result<Self, AllocError> {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(UDMABUF_DEVICE)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    AllocError::Unsupported(format!(
                        "{UDMABUF_DEVICE}: not present; load the udmabuf module or use --allocator memfd"
                    ))
                } else {
                    AllocError::Os(std::io::Error::new(
                        e.kind(),
                        format!("{UDMABUF_DEVICE}: {e}"),
                    ))
                }
            })?;
        Ok(UdmabufAllocator { device })
    }

    /// The open `/dev/udmabuf`.
    pub fn device(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }
}

impl BufferAllocator for UdmabufAllocator {
    fn name(&self) -> &'static str {
        "udmabuf"
    }

    fn allocate(&mut self, request: &BufferRequest) -> Result<HostBuffer, AllocError> {
        let (size, planes) = linear_layout(request)?;
        // udmabuf requires F_SEAL_SHRINK and refuses F_SEAL_WRITE.
        let memfd = sys::sealed_memfd(
            "vhost-user-gpu-udmabuf",
            size,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        let fd = sys::udmabuf_create(
            self.device.as_fd(),
            sys::UdmabufItem {
                memfd: memfd.as_fd(),
                offset: 0,
                size,
            },
        )
        .map_err(|e| std::io::Error::new(e.kind(), format!("UDMABUF_CREATE: {e}")))?;
        Ok(HostBuffer {
            fd,
            size,
            planes,
            modifier: fourcc::MOD_LINEAR,
            is_dmabuf: true,
        })
    }

    fn drm_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
