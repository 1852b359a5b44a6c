//! `dmabuf-info`: what may the CPU, or a guest VM, do with a dma-buf?
//!
//! Given a file descriptor, [`Inspector::inspect`] answers whether it is a dma-buf (or a
//! memfd), its exporter, size and name, its CPU cache attribute, whether CPU access needs
//! `DMA_BUF_IOCTL_SYNC`, whether the attribute is stable, and which source gave each answer:
//!
//! 1. the kernel's `DMA_BUF_IOCTL_INFO` (never merged upstream; interpreted only with the value
//!    set named in [`Config::kernel_info_abi`]);
//! 2. driver query ioctls on the exporting DRM device ([`sources::driver`]);
//! 3. configuration quirks, then the built-in exporter-name table ([`sources::table`]);
//! 4. the conservative default: unknown.
//!
//! [`policy::decide`] turns an answer into a guest mapping decision for a [`Platform`];
//! [`SyncGuard`] brackets host CPU access; [`Inspector::query_uapi`] fills the proposed
//! `struct dma_buf_info` exactly as a kernel carrying the patch would. The C ABI lives in
//! [`ffi`] (header `include/dmabuf_info.h`).
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use dmabuf_info::{Config, Inspector};
//! # fn main() -> Result<(), dmabuf_info::Error> {
//! # let file = std::fs::File::open("/dev/null").unwrap();
//! let inspector = Inspector::new(Config::load_default()?);
//! let info = inspector.inspect(file.as_fd(), None)?;
//! println!("{}: cache {} ({})", info.exporter, info.cache.value, info.cache.source);
//! println!("{}", inspector.decide(&info));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod ffi;
pub mod identify;
pub mod info;
pub mod platform;
pub mod policy;
pub mod sources;
pub mod sync;
pub mod uapi;

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, RwLock};

pub use config::{Config, Quirk};
pub use error::{Error, FileKind};
pub use info::{
    Answer, BufferInfo, BufferKind, CacheAttr, Driver, DriverProbe, KernelAbi, NeedsSync, Source,
};
pub use platform::Platform;
pub use policy::{Decision, MapCache, RefuseReason};
pub use sync::{SyncAccess, SyncGuard};

use identify::Identity;
use sources::kernel::KernelProbe;
use sources::Partial;

/// (st_dev, st_ino): identifies a buffer for as long as it lives (dma-buf inode numbers are
/// never reused).
type BufferKey = (u64, u64);

#[derive(Debug)]
struct CacheEntry {
    info: Arc<BufferInfo>,
    /// Whether the answer was computed with a caller-supplied DRM fd; a later call that brings
    /// one recomputes an answer made without.
    with_drm_fd: bool,
}

/// Answers questions about buffers, with a per-buffer cache. `Send + Sync`.
#[derive(Debug)]
pub struct Inspector {
    config: Config,
    platform: Platform,
    cache: RwLock<HashMap<BufferKey, CacheEntry>>,
}

impl Inspector {
    /// Creates an inspector. The platform is `config.platform` or, if unset, detected now.
    pub fn new(config: Config) -> Inspector {
        let platform = config.platform.unwrap_or_else(Platform::detect);
        let capacity = config.cache_capacity.min(1024);
        Inspector {
            config,
            platform,
            cache: RwLock::new(HashMap::with_capacity(capacity)),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The platform: configured, else detected.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// Inspects `fd`. `drm_fd` is the DRM device that allocated the buffer, if the caller
    /// has it (its device is reopened privately for the PRIME import; see
    /// [`sources::driver`]).
    ///
    /// Answers are cached per buffer (inode + device): asking again costs an `fstat` and a
    /// hash lookup (plus cloning the strings of the returned [`BufferInfo`]; use
    /// [`Inspector::decide_fd`] or [`Inspector::query_uapi`] for allocation-free repeats).
    pub fn inspect(
        &self,
        fd: BorrowedFd<'_>,
        drm_fd: Option<BorrowedFd<'_>>,
    ) -> Result<BufferInfo, Error> {
        self.with_info(fd, drm_fd, |info, size| {
            let mut out = info.clone();
            out.size = size;
            out
        })
    }

    /// The guest mapping decision for `info` on [`Inspector::platform`].
    pub fn decide(&self, info: &BufferInfo) -> Decision {
        policy::decide(info, self.platform)
    }

    /// [`Inspector::inspect`] + [`Inspector::decide`]; allocation-free when the buffer is
    /// already cached.
    pub fn decide_fd(
        &self,
        fd: BorrowedFd<'_>,
        drm_fd: Option<BorrowedFd<'_>>,
    ) -> Result<Decision, Error> {
        self.with_info(fd, drm_fd, |info, _| policy::decide(info, self.platform))
    }

    /// The ioctl-shaped entry point: fills the proposed `struct dma_buf_info` for
    /// `DMA_BUF_INFO_VM_PROT` (`abi` = v1) or `DMA_BUF_INFO_MAP_INFO` (`abi` = v2) exactly as
    /// a kernel carrying that patch would. Returns `Err(errno)` like the ioctl:
    ///
    /// - `EINVAL`: `param` is not 1 or `pad` is not 0;
    /// - `ENOTTY`: `fd` is not a dma-buf (memfds included: the kernel ioctl is dma-buf only);
    /// - `EBADF`: `fd` is not open;
    /// - `ENOSYS`: no source knows the answer in this value set (unknown, not stable, or for
    ///   v1 a buffer that needs SYNC, which v1 cannot express), as for an exporter that does
    ///   not implement the callback.
    ///
    /// If the configuration says the kernel carries `abi` and the kernel answers, its answer is
    /// passed through unchanged. Allocation-free when the buffer is already cached.
    pub fn query_uapi(
        &self,
        fd: BorrowedFd<'_>,
        arg: &mut uapi::DmaBufInfoArg,
        abi: KernelAbi,
    ) -> Result<(), i32> {
        if arg.param != uapi::DMA_BUF_INFO_MAP_INFO || arg.pad != 0 {
            return Err(libc::EINVAL);
        }
        if self.config.kernel_info_abi == Some(abi) {
            if let Ok(v) = uapi::dma_buf_ioctl_info(fd, arg.param) {
                arg.value = v;
                return Ok(());
            }
        }
        let value = self
            .with_info(fd, None, |info, _| {
                if info.kind != BufferKind::DmaBuf {
                    return Err(libc::ENOTTY);
                }
                uapi_value(info, abi)
            })
            .map_err(|e| e.errno())??;
        arg.value = value;
        Ok(())
    }

    /// Forgets every cached answer.
    pub fn clear_cache(&self) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Number of buffers currently cached.
    pub fn cached_buffers(&self) -> usize {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn with_info<R>(
        &self,
        fd: BorrowedFd<'_>,
        drm_fd: Option<BorrowedFd<'_>>,
        f: impl FnOnce(&BufferInfo, u64) -> R,
    ) -> Result<R, Error> {
        let st = identify::stat(fd)?;
        let key: BufferKey = identify::buffer_key(&st);
        let size_now = |info: &BufferInfo| match info.kind {
            // A memfd may grow or shrink; a dma-buf's size is fixed.
            BufferKind::Memfd => st.st_size as u64,
            BufferKind::DmaBuf => info.size,
        };
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = cache.get(&key) {
                if e.with_drm_fd || drm_fd.is_none() {
                    return Ok(f(&e.info, size_now(&e.info)));
                }
            }
        }
        let id = identify::identify_with_stat(fd, &st)?;
        let info = Arc::new(self.resolve(fd, drm_fd, id));
        let result = f(&info, size_now(&info));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.config.cache_capacity && !cache.contains_key(&key) {
            cache.clear();
        }
        cache.insert(
            key,
            CacheEntry {
                info,
                with_drm_fd: drm_fd.is_some(),
            },
        );
        Ok(result)
    }

    /// Runs the sources for an identified buffer (no caching).
    pub fn resolve(
        &self,
        fd: BorrowedFd<'_>,
        drm_fd: Option<BorrowedFd<'_>>,
        id: Identity,
    ) -> BufferInfo {
        let mut layers: Vec<Partial> = Vec::with_capacity(4);
        let mut kernel_ioctl = None;
        let mut driver_probes = Vec::new();
        match id.kind {
            BufferKind::Memfd => {
                if let Some(q) = self.config.quirk_for("memfd") {
                    layers.push(sources::table::quirk_answer(q));
                }
                layers.push(Partial {
                    cache: Some(Answer::new(CacheAttr::Cached, Source::Memfd)),
                    needs_sync: Some(Answer::new(NeedsSync::No, Source::Memfd)),
                    stable: Some(Answer::new(true, Source::Memfd)),
                });
            }
            BufferKind::DmaBuf => {
                let probe = sources::kernel::probe(fd);
                kernel_ioctl = Some(probe.as_result());
                if let (Some(abi), KernelProbe::Answered(v)) = (self.config.kernel_info_abi, probe)
                {
                    layers.push(sources::kernel::interpret(abi, v));
                }
                let (partial, probes) = sources::driver::query(
                    fd,
                    &id.exporter,
                    drm_fd,
                    self.config.probe_render_nodes,
                );
                driver_probes = probes;
                layers.push(partial);
                if let Some(q) = self.config.quirk_for(&id.exporter) {
                    layers.push(sources::table::quirk_answer(q));
                }
                layers.push(sources::table::answer(&id.exporter, self.platform));
            }
        }
        let (cache, needs_sync, stable) = sources::merge(&layers);
        BufferInfo {
            kind: id.kind,
            exporter: id.exporter,
            size: id.size,
            name: id.name,
            inode: id.inode,
            device: id.device,
            cache,
            needs_sync,
            stable,
            kernel_ioctl,
            driver_probes,
        }
    }
}

/// The value a kernel carrying `abi` would return for `DMA_BUF_INFO_*` param 1, or the errno
/// (`ENOSYS` when the answer cannot be given in that value set).
pub fn uapi_value(info: &BufferInfo, abi: KernelAbi) -> Result<u64, i32> {
    if !info.stable.value {
        return Err(libc::ENOSYS);
    }
    match (abi, info.needs_sync.value, info.cache.value) {
        (KernelAbi::V2, NeedsSync::Yes, _) => Ok(uapi::DMA_BUF_MAP_INCOHERENT),
        (KernelAbi::V2, NeedsSync::No, CacheAttr::Cached) => Ok(uapi::DMA_BUF_COHERENT_CACHED),
        (KernelAbi::V2, NeedsSync::No, CacheAttr::WriteCombined | CacheAttr::Uncached) => {
            Ok(uapi::DMA_BUF_COHERENT_WC)
        }
        (KernelAbi::V1, NeedsSync::No, CacheAttr::Cached) => Ok(uapi::DMA_BUF_VM_PROT_CACHED),
        (KernelAbi::V1, NeedsSync::No, CacheAttr::WriteCombined | CacheAttr::Uncached) => {
            Ok(uapi::DMA_BUF_VM_PROT_WC)
        }
        _ => Err(libc::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn inspector_is_send_and_sync() {
        assert_send_sync::<Inspector>();
    }
}
