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

pub mod config;
pub mod error;
pub mod ffi;
pub mod identify;
pub mod info;
pub mod platform;
pub mod policy;
pub mod report;
pub mod sources;
pub mod sync;
pub mod uapi;

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, RwLock};

pub use config::{Config, ConfigWarning, Quirk};
pub use error::{Error, FileKind};
pub use info::{
    Answer, BufferInfo, BufferKind, CacheAttr, Driver, DriverProbe, KernelAbi, NeedsSync, Source,
    SourceKind,
};
pub use platform::{DeviceAccess, Platform};
pub use policy::{Decision, MapCache, RefuseReason};
pub use sync::{SyncAccess, SyncGuard};

use identify::Identity;
use sources::Partial;

/// (st_dev, st_ino): names a buffer while it lives. See [`CacheEntry::born`] for why a cached
/// answer never goes to another buffer that got the same number later.
type BufferKey = (u64, u64);

#[derive(Debug)]
struct CacheEntry {
    info: Arc<BufferInfo>,
    /// Whether the answer was computed with a caller-supplied DRM fd; a later call that brings
    /// one recomputes an answer made without.
    with_drm_fd: bool,
    /// The inode's change time (`st_ctime`, seconds and nanoseconds) when the answer was
    /// computed; a hit whose inode has another one is a miss.
    ///
    /// Inode numbers alone are not enough everywhere. dma-buf inodes are numbered from a 64-bit
    /// counter (`dma_buf_getfile`) and memfds on shmem's kernel mount from a 64-bit
    /// per-superblock counter, so on 64-bit hosts a number is not reused while the system
    /// runs; but `i_ino` is 32 bits on 32-bit hosts, and hugetlbfs memfds take theirs from
    /// `get_next_ino()`, a 32-bit counter that wraps. A buffer that reuses a number is a new
    /// inode whose times are set when it is created, so it carries the creation time, and a
    /// number comes back only after 2^32 other inodes were created, which takes minutes, not
    /// the one clock tick that would give both the same stamp. Changing an inode's ctime
    /// (`ftruncate` or `write` on a memfd, `fchmod`) only costs a recomputation.
    born: (i64, i64),
}

/// The `st_ctime` stamp of [`CacheEntry::born`].
#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
fn change_time(st: &rustix::fs::Stat) -> (i64, i64) {
    (st.st_ctime as i64, st.st_ctime_nsec as i64)
}

/// Whether every answer in `info` may be given again from the cache
/// ([`Source::fixed_for_lifetime`]).
fn cacheable(info: &BufferInfo) -> bool {
    info.cache.source.fixed_for_lifetime()
        && info.needs_sync.source.fixed_for_lifetime()
        && info.stable.source.fixed_for_lifetime()
}

/// Answers questions about buffers, with a per-buffer cache. `Send + Sync`.
///
/// The cache holds an answer only when every source that gave it vouches for the buffer's
/// whole life ([`Source::fixed_for_lifetime`]); answers that may change later (i915's
/// caching level, the kernel's v1 callback) are computed afresh on every query, so a caller
/// that asks before every guest mapping (the backend asks before every `SHMEM_MAP`) always
/// acts on a current answer. Entries are keyed by inode and checked against the inode's
/// change time, so that a buffer that reuses a dead buffer's inode number never gets the dead
/// buffer's answer.
#[derive(Debug)]
pub struct Inspector {
    config: Config,
    platform: Platform,
    devices: DeviceAccess,
    cache: RwLock<HashMap<BufferKey, CacheEntry>>,
}

impl Inspector {
    /// Creates an inspector. The platform is `config.platform` or, if unset, detected now.
    pub fn new(config: Config) -> Inspector {
        let platform = config.platform.unwrap_or_else(Platform::detect);
        let devices = config
            .devices
            .unwrap_or_else(|| platform.default_device_access());
        let capacity = config.cache_capacity.min(1024);
        Inspector {
            config,
            platform,
            devices,
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

    /// Which devices may access the buffers: configured, else
    /// [`Platform::default_device_access`].
    pub fn devices(&self) -> DeviceAccess {
        self.devices
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
        let born = change_time(&st);
        let size_now = |info: &BufferInfo| match info.kind {
            // A memfd may grow or shrink; a dma-buf's size is fixed.
            BufferKind::Memfd => st.st_size as u64,
            BufferKind::DmaBuf => info.size,
        };
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = cache.get(&key) {
                if e.born == born && (e.with_drm_fd || drm_fd.is_none()) {
                    return Ok(f(&e.info, size_now(&e.info)));
                }
            }
        }
        let id = identify::identify_with_stat(fd, &st)?;
        let info = self.resolve(fd, drm_fd, id);
        let result = f(&info, size_now(&info));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if !cacheable(&info) {
            // Asked again next time; an older entry for this inode must not answer either.
            cache.remove(&key);
            return Ok(result);
        }
        if cache.len() >= self.config.cache_capacity && !cache.contains_key(&key) {
            cache.clear();
        }
        cache.insert(
            key,
            CacheEntry {
                info: Arc::new(info),
                with_drm_fd: drm_fd.is_some(),
                born,
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
        let mut kernel_ioctl = None;
        let mut driver_probes = Vec::new();
        let (cache, needs_sync, stable) = match id.kind {
            BufferKind::Memfd => {
                let mut layers = Vec::with_capacity(2);
                if let Some(q) = self.config.memfd_quirk(id.name.as_deref()) {
                    layers.push(sources::table::quirk_answer(q));
                }
                layers.push(Partial {
                    cache: Some(Answer::new(CacheAttr::Cached, Source::Memfd)),
                    needs_sync: Some(Answer::new(NeedsSync::No, Source::Memfd)),
                    stable: Some(Answer::new(true, Source::Memfd)),
                });
                sources::merge(&layers)
            }
            BufferKind::DmaBuf => {
                let probe = sources::kernel::probe(fd);
                kernel_ioctl = Some(probe.as_result());
                let (driver, probes) = sources::driver::query(
                    fd,
                    &id.exporter,
                    drm_fd,
                    self.config.probe_render_nodes,
                );
                driver_probes = probes;
                sources::dma_buf_answers(&self.config, self.devices, &id.exporter, probe, driver)
            }
        };
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

    fn memfd(name: &str) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        fd
    }

    fn amd() -> Inspector {
        Inspector::new(Config {
            platform: Some(Platform::X86Amd),
            ..Config::default()
        })
    }

    /// Puts `old` into the cache under `fd`'s key with change time `born`: the answer of a
    /// buffer that had this inode number before (inode numbers cannot be made to repeat here,
    /// so the dead buffer's entry is planted).
    fn plant(ins: &Inspector, fd: BorrowedFd<'_>, old: BufferInfo, born: (i64, i64)) {
        let st = identify::stat(fd).unwrap();
        ins.cache.write().unwrap().insert(
            identify::buffer_key(&st),
            CacheEntry {
                info: Arc::new(old),
                with_drm_fd: false,
                born,
            },
        );
    }

    fn dead_buffer_answer(ins: &Inspector, fd: BorrowedFd<'_>) -> BufferInfo {
        let mut old = ins.inspect(fd, None).unwrap();
        old.name = Some("dead buffer".into());
        old.needs_sync = Answer::new(NeedsSync::Yes, Source::ExporterTable);
        old
    }

    #[test]
    fn a_reused_inode_number_does_not_get_the_dead_buffers_answer() {
        use std::os::fd::AsFd;
        let ins = amd();
        let fd = memfd("current");
        let born = change_time(&identify::stat(fd.as_fd()).unwrap());
        let old = dead_buffer_answer(&ins, fd.as_fd());

        // The dead buffer was created at another time than this one.
        plant(&ins, fd.as_fd(), old.clone(), (born.0 - 1, born.1));
        let info = ins.inspect(fd.as_fd(), None).unwrap();
        assert_eq!(info.name.as_deref(), Some("current"));
        assert_eq!(
            ins.decide_fd(fd.as_fd(), None).unwrap(),
            Decision::Allow(MapCache::Cached)
        );
        let st = identify::stat(fd.as_fd()).unwrap();
        let cache = ins.cache.read().unwrap();
        let entry = &cache[&identify::buffer_key(&st)];
        assert_eq!(entry.born, born, "the entry was replaced");
        assert_eq!(entry.info.name.as_deref(), Some("current"));
        drop(cache);

        // Control: with the same stamp the planted entry does answer, so the stamp is what
        // keeps the dead buffer's answer away.
        plant(&ins, fd.as_fd(), old, born);
        assert_eq!(
            ins.inspect(fd.as_fd(), None).unwrap().name.as_deref(),
            Some("dead buffer")
        );
    }

    #[test]
    fn a_changed_inode_is_inspected_again() {
        use std::os::fd::AsFd;
        let ins = amd();
        let fd = memfd("grows");
        let before = change_time(&identify::stat(fd.as_fd()).unwrap());
        let old = dead_buffer_answer(&ins, fd.as_fd());
        plant(&ins, fd.as_fd(), old, before);
        // ftruncate sets the change time; wait until the coarse clock has moved on.
        let mut after = before;
        for len in 1..1000 {
            rustix::fs::ftruncate(&fd, 4096 * (len + 1)).unwrap();
            after = change_time(&identify::stat(fd.as_fd()).unwrap());
            if after != before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_ne!(after, before, "ctime never changed");
        let info = ins.inspect(fd.as_fd(), None).unwrap();
        assert_eq!(info.name.as_deref(), Some("grows"));
        assert_eq!(info.needs_sync.source, Source::Memfd);
    }

    #[test]
    fn answers_that_may_change_are_not_cached() {
        let fixed = {
            let fd = memfd("fixed");
            use std::os::fd::AsFd;
            amd().inspect(fd.as_fd(), None).unwrap()
        };
        assert!(cacheable(&fixed));
        let with = |source: Source| BufferInfo {
            needs_sync: Answer::new(NeedsSync::No, source),
            ..fixed.clone()
        };
        assert!(cacheable(&with(Source::DriverIoctl(Driver::Msm))));
        assert!(cacheable(&with(Source::KernelIoctl(KernelAbi::V2))));
        assert!(cacheable(&with(Source::ConfigQuirk("i915".into()))));
        assert!(!cacheable(&with(Source::DriverIoctl(Driver::I915))));
        assert!(!cacheable(&with(Source::KernelIoctl(KernelAbi::V1))));
        let stable_from_i915 = BufferInfo {
            stable: Answer::new(true, Source::DriverIoctl(Driver::I915)),
            ..fixed.clone()
        };
        assert!(!cacheable(&stable_from_i915));
    }
}
