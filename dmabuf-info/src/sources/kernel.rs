//! Source 1: the kernel's `DMA_BUF_IOCTL_INFO`, where the running kernel carries it.
//!
//! Upstream never merged it, so the usual outcome is `ENOTTY` ("absent"). Two incompatible
//! value sets were posted with the same number and param; answers are only interpreted with
//! the value set named in the configuration, never guessed.

use std::os::fd::BorrowedFd;

use crate::info::{Answer, CacheAttr, KernelAbi, NeedsSync, Source};
use crate::uapi;

use super::Partial;

/// What `DMA_BUF_IOCTL_INFO` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelProbe {
    /// The kernel (or this exporter) does not implement it: `ENOTTY`, `EINVAL` or `ENOSYS`.
    Absent(i32),
    /// It answered this value (for param 1).
    Answered(u64),
    /// Another error.
    Failed(i32),
}

impl KernelProbe {
    /// As stored in [`crate::BufferInfo::kernel_ioctl`].
    pub fn as_result(self) -> Result<u64, i32> {
        match self {
            KernelProbe::Answered(v) => Ok(v),
            KernelProbe::Absent(e) | KernelProbe::Failed(e) => Err(e),
        }
    }
}

/// Whether an errno from `DMA_BUF_IOCTL_INFO` means "not implemented here".
pub fn is_absent_errno(errno: i32) -> bool {
    matches!(errno, libc::ENOTTY | libc::EINVAL | libc::ENOSYS)
}

/// Issues `DMA_BUF_IOCTL_INFO` (param 1) on `fd`.
pub fn probe(fd: BorrowedFd<'_>) -> KernelProbe {
    match uapi::dma_buf_ioctl_info(fd, uapi::DMA_BUF_INFO_MAP_INFO) {
        Ok(v) => KernelProbe::Answered(v),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            if is_absent_errno(errno) {
                KernelProbe::Absent(errno)
            } else {
                KernelProbe::Failed(errno)
            }
        }
    }
}

/// Interprets a kernel answer with value set `abi`. Unknown values answer nothing.
///
/// Stability differs between the postings:
/// - v2 (`DMA_BUF_INFO_MAP_INFO`) returns `dma_buf::map_info`, set by the exporter in
///   `dma_buf_export_info` when the buffer is exported and never changed afterwards ("set
///   map_info at export time to make it more clear that it applies for the lifetime of the
///   dma-buf"; the patch also warns when an mmap's pgprot contradicts it). A v2 answer
///   therefore also answers `stable` = yes, for every value including INCOHERENT. Without
///   this the exporter table's "may change" (i915, `drm`) would win for `stable` and refuse a
///   buffer the kernel vouched for.
/// - v1 (`DMA_BUF_INFO_VM_PROT`) calls the exporter's `mmap_info` callback on every query, with
///   no promise that the answer holds later: it says nothing about stability (nor about
///   SYNC), and is re-asked on every query ([`crate::Source::fixed_for_lifetime`]).
pub fn interpret(abi: KernelAbi, value: u64) -> Partial {
    let src = Source::KernelIoctl(abi);
    let (cache, sync) = match (abi, value) {
        (KernelAbi::V1, uapi::DMA_BUF_VM_PROT_WC) => (Some(CacheAttr::WriteCombined), None),
        (KernelAbi::V1, uapi::DMA_BUF_VM_PROT_CACHED) => (Some(CacheAttr::Cached), None),
        (KernelAbi::V2, uapi::DMA_BUF_MAP_INCOHERENT) => (None, Some(NeedsSync::Yes)),
        (KernelAbi::V2, uapi::DMA_BUF_COHERENT_WC) => {
            (Some(CacheAttr::WriteCombined), Some(NeedsSync::No))
        }
        (KernelAbi::V2, uapi::DMA_BUF_COHERENT_CACHED) => {
            (Some(CacheAttr::Cached), Some(NeedsSync::No))
        }
        _ => (None, None),
    };
    let known = cache.is_some() || sync.is_some();
    Partial {
        cache: cache.map(|c| Answer::new(c, src.clone())),
        needs_sync: sync.map(|s| Answer::new(s, src.clone())),
        stable: (abi == KernelAbi::V2 && known).then(|| Answer::new(true, src.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_values() {
        let p = interpret(KernelAbi::V1, 0);
        assert_eq!(p.cache.unwrap().value, CacheAttr::WriteCombined);
        assert!(p.needs_sync.is_none());
        assert_eq!(
            interpret(KernelAbi::V1, 1).cache.unwrap().value,
            CacheAttr::Cached
        );
        assert_eq!(interpret(KernelAbi::V1, 2), Partial::default());
        // v1 answers come from a callback asked on every query: no stability claim.
        assert!(interpret(KernelAbi::V1, 0).stable.is_none());
        assert!(interpret(KernelAbi::V1, 1).stable.is_none());
    }

    #[test]
    fn v2_values() {
        let p = interpret(KernelAbi::V2, 0);
        assert!(p.cache.is_none());
        assert_eq!(p.needs_sync.unwrap().value, NeedsSync::Yes);
        let p = interpret(KernelAbi::V2, 1);
        assert_eq!(p.cache.unwrap().value, CacheAttr::WriteCombined);
        assert_eq!(p.needs_sync.unwrap().value, NeedsSync::No);
        let p = interpret(KernelAbi::V2, 2);
        assert_eq!(p.cache.as_ref().unwrap().value, CacheAttr::Cached);
        assert_eq!(p.cache.unwrap().source, Source::KernelIoctl(KernelAbi::V2));
        assert_eq!(interpret(KernelAbi::V2, 3), Partial::default());
        // v2's map_info is fixed at export: every known value is also a stability answer.
        for v in 0..=2 {
            assert_eq!(
                interpret(KernelAbi::V2, v).stable,
                Some(Answer::new(true, Source::KernelIoctl(KernelAbi::V2))),
                "value {v}"
            );
        }
    }

    #[test]
    fn absent_errnos() {
        assert!(is_absent_errno(libc::ENOTTY));
        assert!(is_absent_errno(libc::EINVAL));
        assert!(is_absent_errno(libc::ENOSYS));
        assert!(!is_absent_errno(libc::EFAULT));
    }
}
