//! udmabuf buffers: a memfd sealed against shrinking, turned into a dma-buf by
//! `/dev/udmabuf` (`UDMABUF_CREATE`). Real dma-bufs without a GPU.
//!
//! `/dev/udmabuf` is opened once per process ([`shared_device`]), the first time an
//! allocator is selected ([`super::select`], which the binary calls at start-up before any
//! frontend connects). Every allocator and the device's GUEST-blob export borrow that one
//! file: no connection, reset or blob opens it again, so it never shows up as a new fd.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;

use rustix::fs::SealFlags;

use super::{linear_layout, sys};
use crate::device::ports::{AllocError, BufferAllocator, BufferRequest, HostBuffer};
use crate::protocol::fourcc;

/// Path of the udmabuf misc device.
pub const UDMABUF_DEVICE: &str = "/dev/udmabuf";

/// The process's `/dev/udmabuf`, or why it could not be opened.
static DEVICE: OnceLock<Result<File, (ErrorKind, String)>> = OnceLock::new();

/// The process-wide `/dev/udmabuf`, opened on the first call and kept open for the life of
/// the process. Later calls return the same file (or the same error) without touching the
/// file system again.
pub fn shared_device() -> Result<BorrowedFd<'static>, AllocError> {
    let opened = DEVICE.get_or_init(|| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(UDMABUF_DEVICE)
            .map_err(|e| {
                log::info!(
                    "{UDMABUF_DEVICE}: {e}: no udmabuf allocator, GUEST blobs are not exported \
                     as dma-bufs"
                );
                (e.kind(), e.to_string())
            })
    });
    match opened {
        Ok(file) => Ok(file.as_fd()),
        Err((ErrorKind::NotFound, _)) => Err(AllocError::Unsupported(format!(
            "{UDMABUF_DEVICE}: not present; load the udmabuf module or use --allocator memfd"
        ))),
        Err((kind, msg)) => Err(AllocError::Os(std::io::Error::new(
            *kind,
            format!("{UDMABUF_DEVICE}: {msg}"),
        ))),
    }
}

/// Allocates udmabufs.
#[derive(Debug)]
pub struct UdmabufAllocator {
    device: BorrowedFd<'static>,
}

impl UdmabufAllocator {
    /// An allocator over the process's `/dev/udmabuf` ([`shared_device`]).
    pub fn new() -> Result<Self, AllocError> {
        Ok(UdmabufAllocator {
            device: shared_device()?,
        })
    }

    /// The open `/dev/udmabuf`.
    pub fn device(&self) -> BorrowedFd<'_> {
        self.device
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
            self.device,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn the_device_is_opened_once_per_process() {
        let first = shared_device().map(|fd| fd.as_raw_fd());
        let fds = open_fds();
        for _ in 0..8 {
            let again = shared_device().map(|fd| fd.as_raw_fd());
            assert_eq!(
                first.as_ref().ok(),
                again.as_ref().ok(),
                "same fd every time"
            );
            let _ = UdmabufAllocator::new();
        }
        // Other tests of this binary run in parallel threads and may open files, so only
        // check that our calls did not add eight.
        assert!(open_fds() < fds + 8);
        if !std::path::Path::new(UDMABUF_DEVICE).exists() {
            let err = first.err().unwrap().to_string();
            assert!(err.contains("load the udmabuf module"), "{err}");
        }
    }
}
