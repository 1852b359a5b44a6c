//! `DMA_BUF_IOCTL_SYNC` as a guard for host-side CPU access.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::Error;
use crate::uapi;

/// Which CPU access the guard brackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    /// The CPU reads.
    Read,
    /// The CPU writes.
    Write,
    /// Both.
    ReadWrite,
}

impl SyncAccess {
    fn flags(self) -> u64 {
        match self {
            SyncAccess::Read => uapi::DMA_BUF_SYNC_READ,
            SyncAccess::Write => uapi::DMA_BUF_SYNC_WRITE,
            SyncAccess::ReadWrite => uapi::DMA_BUF_SYNC_RW,
        }
    }
}

/// Issues `DMA_BUF_SYNC_START` on creation and `DMA_BUF_SYNC_END` on drop (or [`end`]).
///
/// The guard keeps its own duplicate of the descriptor so that END reaches the buffer even if
/// the caller closes its fd first.
///
/// [`end`]: SyncGuard::end
#[derive(Debug)]
pub struct SyncGuard {
    fd: Option<OwnedFd>,
    flags: u64,
}

impl SyncGuard {
    /// Starts CPU access (`DMA_BUF_SYNC_START | access`). Fails with the OS error if `fd` is
    /// not a dma-buf (ENOTTY) or the exporter refuses.
    pub fn begin(fd: BorrowedFd<'_>, access: SyncAccess) -> Result<SyncGuard, Error> {
        let flags = access.flags();
        uapi::dma_buf_sync(fd, uapi::DMA_BUF_SYNC_START | flags)
            .map_err(|e| Error::os("DMA_BUF_IOCTL_SYNC(START)", e))?;
        let own = match fd.try_clone_to_owned() {
            Ok(own) => own,
            Err(e) => {
                // Keep START/END balanced even when the dup fails.
                let _ = uapi::dma_buf_sync(fd, uapi::DMA_BUF_SYNC_END | flags);
                return Err(Error::os("dup dma-buf fd", e));
            }
        };
        Ok(SyncGuard {
            fd: Some(own),
            flags,
        })
    }

    /// Ends CPU access now and reports the result (dropping the guard ignores errors).
    pub fn end(mut self) -> Result<(), Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), Error> {
        match self.fd.take() {
            Some(fd) => uapi::dma_buf_sync(fd.as_fd(), uapi::DMA_BUF_SYNC_END | self.flags)
                .map_err(|e| Error::os("DMA_BUF_IOCTL_SYNC(END)", e)),
            None => Ok(()),
        }
    }
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; use `end()` to see them.
        let _ = self.finish();
    }
}
