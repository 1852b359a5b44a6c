//! udmabuf buffers: a memfd sealed against shrinking, turned into a dma-buf by
//! `/dev/udmabuf` (`UDMABUF_CREATE`). Real dma-bufs without a GPU.
//!
//! `/dev/udmabuf` is opened once per process ([`shared_device`]), the first time an
//! allocator is selected ([`super::select`], which the binary calls at start-up before any
//! frontend connects). Every allocator and the GUEST-blob exporter ([`UdmabufExporter`])
//! borrow that one file: no connection, reset or blob opens it again, so it never shows up
//! as a new fd.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use dmabuf_info::uapi::{self, UdmabufRange, UDMABUF_LIST_LIMIT};
use rustix::fs::SealFlags;

use super::linear_layout;
use super::memfd::sealed_memfd;
use crate::device::ports::{
    AllocError, BufferAllocator, BufferRequest, ExportError, GuestPageExporter, GuestPages,
    HostBuffer,
};
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
        let memfd = sealed_memfd(
            "vhost-user-gpu-udmabuf",
            size,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        let fd = uapi::udmabuf_create(self.device, memfd.as_fd(), 0, size)
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

/// Exports GUEST blobs' guest RAM as udmabufs (`UDMABUF_CREATE_LIST` over the memfd ranges)
/// through the process's `/dev/udmabuf`.
#[derive(Debug)]
pub struct UdmabufExporter {
    device: BorrowedFd<'static>,
}

impl UdmabufExporter {
    /// An exporter over the process's `/dev/udmabuf` ([`shared_device`]), if it has one.
    pub fn new() -> Result<Self, AllocError> {
        Ok(UdmabufExporter {
            device: shared_device()?,
        })
    }
}

impl GuestPageExporter for UdmabufExporter {
    fn export(&mut self, pages: &[GuestPages<'_>]) -> Result<OwnedFd, ExportError> {
        if pages.len() > UDMABUF_LIST_LIMIT {
            return Err(ExportError::Unsuitable(format!(
                "{} entries (UDMABUF_CREATE_LIST takes at most {UDMABUF_LIST_LIMIT})",
                pages.len()
            )));
        }
        let ranges: Vec<UdmabufRange<'_>> = pages
            .iter()
            .map(|p| UdmabufRange {
                memfd: p.memfd,
                offset: p.offset,
                size: p.size,
            })
            .collect();
        uapi::udmabuf_create_list(self.device, &ranges).map_err(|e| {
            ExportError::Refused(format!("UDMABUF_CREATE_LIST: {e}{}", seal_hint(pages)))
        })
    }
}

/// Why the kernel may have refused `pages`: udmabuf needs each memfd sealed with
/// `F_SEAL_SHRINK` and without `F_SEAL_WRITE` (QEMU's `memory-backend-memfd` seals
/// GROW|SHRINK|SEAL unless `seal=off`).
fn seal_hint(pages: &[GuestPages<'_>]) -> String {
    let Some(first) = pages.first() else {
        return String::new();
    };
    match rustix::fs::fcntl_get_seals(first.memfd) {
        Ok(seals) if !seals.contains(SealFlags::SHRINK) => format!(
            " (guest RAM memfd seals {seals:?} lack F_SEAL_SHRINK, which udmabuf requires: \
             use -object memory-backend-memfd with seal=on, the default)"
        ),
        Ok(seals) if seals.contains(SealFlags::WRITE) => format!(
            " (guest RAM memfd seals {seals:?} include F_SEAL_WRITE, which udmabuf refuses)"
        ),
        Ok(_) => String::new(),
        Err(e) => format!(" (guest RAM fd is not a sealable memfd: F_GET_SEALS: {e})"),
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
