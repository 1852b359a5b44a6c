//! C ABI. The header `include/dmabuf_info.h` is generated from this file with cbindgen
//! (`tests/header.rs` regenerates it and fails when the committed one differs; `BLESS=1 cargo
//! test -p dmabuf-info --test header` rewrites it). Bump [`DMABUF_INFO_ABI_MINOR`] with
//! compatible additions and [`DMABUF_INFO_ABI_MAJOR`] (and with it the SONAME) with breaking
//! changes.
//!
//! All functions return 0 (or a documented non-negative value) on success and a negative errno
//! on failure, or [`DMABUF_INFO_E_NOT_BUFFER`] when the descriptor is neither a dma-buf nor a
//! memfd. They never panic across the boundary and never take ownership of descriptors.
//!
//! The library keeps one process-wide [`Inspector`], created on first use from
//! [`Config::load_default`] or explicitly by `dmabuf_info_init()`.
// The C ABI takes raw pointers from C: with `uapi`, one of the two modules of the crate that
// hold `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, FileKind};
use crate::info::{BufferInfo, BufferKind, CacheAttr, Driver, KernelAbi, NeedsSync, Source};
use crate::platform::Platform;
use crate::policy::{self, Decision, RefuseReason};
use crate::uapi::DmaBufInfoArg;
use crate::{Config, Inspector};

include!("abi_version.rs");

/// Neither a dma-buf nor a memfd (`out->file_kind` says what it is). Outside the errno range.
pub const DMABUF_INFO_E_NOT_BUFFER: c_int = -10000;

/// `kind`: a dma-buf.
pub const DMABUF_INFO_KIND_DMABUF: u32 = 1;
/// `kind`: a memfd.
pub const DMABUF_INFO_KIND_MEMFD: u32 = 2;

/// `cache`: nobody could say (values mirror `VIRTIO_GPU_MAP_CACHE_*`, with 0 = unknown).
pub const DMABUF_INFO_CACHE_UNKNOWN: u32 = 0;
/// `cache`: write-back cached.
pub const DMABUF_INFO_CACHE_CACHED: u32 = 1;
/// `cache`: uncached.
pub const DMABUF_INFO_CACHE_UNCACHED: u32 = 2;
/// `cache`: write-combined.
pub const DMABUF_INFO_CACHE_WRITE_COMBINED: u32 = 3;

/// `needs_sync`: nobody could say.
pub const DMABUF_INFO_SYNC_UNKNOWN: u32 = 0;
/// `needs_sync`: coherent without `DMA_BUF_IOCTL_SYNC`.
pub const DMABUF_INFO_SYNC_NO: u32 = 1;
/// `needs_sync`: CPU access needs `DMA_BUF_IOCTL_SYNC`.
pub const DMABUF_INFO_SYNC_YES: u32 = 2;

/// `*_source` kind (low byte): nothing answered, the conservative default.
pub const DMABUF_INFO_SOURCE_DEFAULT: u32 = 0;
/// `*_source` kind: `DMA_BUF_IOCTL_INFO`; detail (second byte) 1 = v1, 2 = v2.
pub const DMABUF_INFO_SOURCE_KERNEL_IOCTL: u32 = 1;
/// `*_source` kind: a driver ioctl; detail 1 msm, 2 panfrost, 3 panthor, 4 i915, 5 amdgpu.
pub const DMABUF_INFO_SOURCE_DRIVER_IOCTL: u32 = 2;
/// `*_source` kind: the built-in exporter table.
pub const DMABUF_INFO_SOURCE_EXPORTER_TABLE: u32 = 3;
/// `*_source` kind: a configuration quirk.
pub const DMABUF_INFO_SOURCE_CONFIG_QUIRK: u32 = 4;
/// `*_source` kind: the descriptor is a memfd.
pub const DMABUF_INFO_SOURCE_MEMFD: u32 = 5;

/// `file_kind` after `DMABUF_INFO_E_NOT_BUFFER`: a regular file.
pub const DMABUF_INFO_FILE_REGULAR: u32 = 1;
/// `file_kind`: a directory.
pub const DMABUF_INFO_FILE_DIRECTORY: u32 = 2;
/// `file_kind`: a pipe or FIFO.
pub const DMABUF_INFO_FILE_PIPE: u32 = 3;
/// `file_kind`: a socket.
pub const DMABUF_INFO_FILE_SOCKET: u32 = 4;
/// `file_kind`: a character device.
pub const DMABUF_INFO_FILE_CHAR_DEVICE: u32 = 5;
/// `file_kind`: a block device.
pub const DMABUF_INFO_FILE_BLOCK_DEVICE: u32 = 6;
/// `file_kind`: an `O_PATH` symlink.
pub const DMABUF_INFO_FILE_SYMLINK: u32 = 7;
/// `file_kind`: an anonymous inode (eventfd, timerfd, sync_file, ...).
pub const DMABUF_INFO_FILE_ANON_INODE: u32 = 8;
/// `file_kind`: anything else.
pub const DMABUF_INFO_FILE_OTHER: u32 = 9;

/// Platform for `dmabuf_info_decide()`: the configured or detected one.
pub const DMABUF_INFO_PLATFORM_DEFAULT: u32 = 0;
/// x86 Intel, KVM ignores guest PAT.
pub const DMABUF_INFO_PLATFORM_X86_INTEL: u32 = 1;
/// x86 Intel, guest PAT honoured.
pub const DMABUF_INFO_PLATFORM_X86_INTEL_GUEST_PAT: u32 = 2;
/// x86 AMD.
pub const DMABUF_INFO_PLATFORM_X86_AMD: u32 = 3;
/// arm64 without FWB.
pub const DMABUF_INFO_PLATFORM_ARM64: u32 = 4;
/// arm64 with FEAT_S2FWB.
pub const DMABUF_INFO_PLATFORM_ARM64_FWB: u32 = 5;
/// Anything else.
pub const DMABUF_INFO_PLATFORM_OTHER: u32 = 6;

/// `refuse_reason`: CPU access needs `DMA_BUF_IOCTL_SYNC`, which a guest cannot issue.
pub const DMABUF_INFO_REFUSE_NEEDS_SYNC: u32 = 1;
/// `refuse_reason`: unknown whether CPU access needs `DMA_BUF_IOCTL_SYNC`.
pub const DMABUF_INFO_REFUSE_SYNC_UNKNOWN: u32 = 2;
/// `refuse_reason`: the cache attribute is unknown.
pub const DMABUF_INFO_REFUSE_CACHE_UNKNOWN: u32 = 3;
/// `refuse_reason`: the attribute may change, or its stability is unknown.
pub const DMABUF_INFO_REFUSE_NOT_STABLE: u32 = 4;
/// `refuse_reason`: the platform cannot give the guest this attribute.
pub const DMABUF_INFO_REFUSE_PLATFORM: u32 = 5;

/// Runs `f` with `raw` borrowed, after checking that it is an open descriptor.
///
/// This is how raw descriptor numbers from C or the command line enter safe code: a closed
/// number gives [`Error::BadFd`] instead of reaching any system call.
pub fn with_raw_fd<R>(raw: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Result<R, Error> {
    if raw < 0 {
        return Err(Error::BadFd);
    }
    // SAFETY: `raw` is non-negative; the borrow lives only for this call. It is first used by
    // `fcntl(F_GETFD)`, which on a closed number just fails with EBADF; when it succeeds, the
    // caller's contract (C callers and inherited CLI descriptors) is that the descriptor stays
    // open until this function returns.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(fd).map_err(|_| Error::BadFd)?;
    Ok(f(fd))
}

/// What `dmabuf_info_inspect()` found out about a buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DmabufInfoResult {
    /// Set by the caller to `sizeof(struct dmabuf_info_result)`.
    pub struct_size: u32,
    /// `DMABUF_INFO_KIND_*` (0 when the call failed).
    pub kind: u32,
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub inode: u64,
    /// `DMABUF_INFO_CACHE_*`.
    pub cache: u32,
    /// `DMABUF_INFO_SOURCE_*` of `cache`.
    pub cache_source: u32,
    /// `DMABUF_INFO_SYNC_*`.
    pub needs_sync: u32,
    /// `DMABUF_INFO_SOURCE_*` of `needs_sync`.
    pub needs_sync_source: u32,
    /// 1 if stable, else 0.
    pub stable: u32,
    /// `DMABUF_INFO_SOURCE_*` of `stable`.
    pub stable_source: u32,
    /// `DMABUF_INFO_FILE_*` when the call returned `DMABUF_INFO_E_NOT_BUFFER`, else 0.
    pub file_kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// NUL-terminated exporter name (truncated).
    pub exporter: [c_char; 32],
    /// NUL-terminated buffer name (truncated), empty if none.
    pub name: [c_char; 64],
}

/// The guest mapping decision of `dmabuf_info_decide()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DmabufInfoDecision {
    /// 1 = allow, 0 = refuse.
    pub allow: u32,
    /// `VIRTIO_GPU_MAP_CACHE_*` (1, 2, 3) when allowed, else 0.
    pub map_info: u32,
    /// `DMABUF_INFO_REFUSE_*` when refused, else 0.
    pub refuse_reason: u32,
    /// The `DMABUF_INFO_PLATFORM_*` the decision was made for.
    pub platform: u32,
    /// NUL-terminated explanation.
    pub message: [c_char; 256],
}

fn cache_code(c: CacheAttr) -> u32 {
    match c {
        CacheAttr::Unknown => DMABUF_INFO_CACHE_UNKNOWN,
        CacheAttr::Cached => DMABUF_INFO_CACHE_CACHED,
        CacheAttr::Uncached => DMABUF_INFO_CACHE_UNCACHED,
        CacheAttr::WriteCombined => DMABUF_INFO_CACHE_WRITE_COMBINED,
    }
}

fn cache_from(code: u32) -> Option<CacheAttr> {
    CacheAttr::ALL.into_iter().find(|c| cache_code(*c) == code)
}

fn sync_code(s: NeedsSync) -> u32 {
    match s {
        NeedsSync::Unknown => DMABUF_INFO_SYNC_UNKNOWN,
        NeedsSync::No => DMABUF_INFO_SYNC_NO,
        NeedsSync::Yes => DMABUF_INFO_SYNC_YES,
    }
}

fn sync_from(code: u32) -> Option<NeedsSync> {
    NeedsSync::ALL.into_iter().find(|s| sync_code(*s) == code)
}

/// Drivers in the order of their `DMABUF_INFO_SOURCE_DRIVER_IOCTL` detail (1-based).
const DRIVERS: [Driver; 5] = [
    Driver::Msm,
    Driver::Panfrost,
    Driver::Panthor,
    Driver::I915,
    Driver::Amdgpu,
];

/// Value sets in the order of their `DMABUF_INFO_SOURCE_KERNEL_IOCTL` detail (1-based).
const ABIS: [KernelAbi; 2] = [KernelAbi::V1, KernelAbi::V2];

fn detail_of<T: PartialEq>(list: &[T], x: &T) -> u32 {
    list.iter().position(|y| y == x).map_or(0, |i| i as u32 + 1)
}

/// Source code: low byte = kind, second byte = detail (value set, or driver).
fn source_code(s: &Source) -> u32 {
    match s {
        Source::Default => DMABUF_INFO_SOURCE_DEFAULT,
        Source::KernelIoctl(abi) => DMABUF_INFO_SOURCE_KERNEL_IOCTL | (detail_of(&ABIS, abi) << 8),
        Source::DriverIoctl(d) => DMABUF_INFO_SOURCE_DRIVER_IOCTL | (detail_of(&DRIVERS, d) << 8),
        Source::ExporterTable => DMABUF_INFO_SOURCE_EXPORTER_TABLE,
        Source::ConfigQuirk(_) => DMABUF_INFO_SOURCE_CONFIG_QUIRK,
        Source::Memfd => DMABUF_INFO_SOURCE_MEMFD,
    }
}

fn source_from(code: u32) -> Option<Source> {
    let detail = ((code >> 8) & 0xff) as usize;
    let nth = |len: usize| detail.checked_sub(1).filter(|i| *i < len);
    Some(match code & 0xff {
        DMABUF_INFO_SOURCE_DEFAULT => Source::Default,
        DMABUF_INFO_SOURCE_KERNEL_IOCTL => Source::KernelIoctl(ABIS[nth(ABIS.len())?]),
        DMABUF_INFO_SOURCE_DRIVER_IOCTL => Source::DriverIoctl(DRIVERS[nth(DRIVERS.len())?]),
        DMABUF_INFO_SOURCE_EXPORTER_TABLE => Source::ExporterTable,
        DMABUF_INFO_SOURCE_CONFIG_QUIRK => Source::ConfigQuirk("(from configuration)".into()),
        DMABUF_INFO_SOURCE_MEMFD => Source::Memfd,
        _ => return None,
    })
}

fn platform_code(p: Platform) -> u32 {
    match p {
        Platform::X86Intel => DMABUF_INFO_PLATFORM_X86_INTEL,
        Platform::X86IntelGuestPat => DMABUF_INFO_PLATFORM_X86_INTEL_GUEST_PAT,
        Platform::X86Amd => DMABUF_INFO_PLATFORM_X86_AMD,
        Platform::Arm64 => DMABUF_INFO_PLATFORM_ARM64,
        Platform::Arm64Fwb => DMABUF_INFO_PLATFORM_ARM64_FWB,
        Platform::Other => DMABUF_INFO_PLATFORM_OTHER,
    }
}

fn platform_from(code: u32) -> Option<Platform> {
    Platform::ALL
        .into_iter()
        .find(|p| platform_code(*p) == code)
}

fn refuse_code(r: &RefuseReason) -> u32 {
    match r {
        RefuseReason::NeedsSync { .. } => DMABUF_INFO_REFUSE_NEEDS_SYNC,
        RefuseReason::SyncUnknown { .. } => DMABUF_INFO_REFUSE_SYNC_UNKNOWN,
        RefuseReason::CacheUnknown { .. } => DMABUF_INFO_REFUSE_CACHE_UNKNOWN,
        RefuseReason::NotStable { .. } => DMABUF_INFO_REFUSE_NOT_STABLE,
        RefuseReason::PlatformCannotDeliver { .. } => DMABUF_INFO_REFUSE_PLATFORM,
    }
}

fn file_kind_code(k: &FileKind) -> u32 {
    match k {
        FileKind::RegularFile => DMABUF_INFO_FILE_REGULAR,
        FileKind::Directory => DMABUF_INFO_FILE_DIRECTORY,
        FileKind::Pipe => DMABUF_INFO_FILE_PIPE,
        FileKind::Socket => DMABUF_INFO_FILE_SOCKET,
        FileKind::CharDevice => DMABUF_INFO_FILE_CHAR_DEVICE,
        FileKind::BlockDevice => DMABUF_INFO_FILE_BLOCK_DEVICE,
        FileKind::Symlink => DMABUF_INFO_FILE_SYMLINK,
        FileKind::AnonInode(_) => DMABUF_INFO_FILE_ANON_INODE,
        FileKind::Other => DMABUF_INFO_FILE_OTHER,
    }
}

fn copy_str(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len().saturating_sub(1));
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    for d in dst.iter_mut().skip(n) {
        *d = 0;
    }
}

fn error_code(e: &Error) -> c_int {
    match e {
        Error::NotDmaBuf { .. } => DMABUF_INFO_E_NOT_BUFFER,
        other => -other.errno(),
    }
}

static INSPECTOR: OnceLock<Result<Inspector, String>> = OnceLock::new();

fn inspector() -> Result<&'static Inspector, c_int> {
    INSPECTOR
        .get_or_init(|| {
            Config::load_default()
                .map(Inspector::new)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|_| -libc::EINVAL)
}

/// The library's ABI version, `(major << 16) | minor`; compare with
/// `DMABUF_INFO_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn dmabuf_info_abi_version() -> u32 {
    (DMABUF_INFO_ABI_MAJOR << 16) | DMABUF_INFO_ABI_MINOR
}

/// Creates the process-wide inspector before first use (optional) from `config_path`, read
/// strictly, or with NULL from the default search ($DMABUF_INFO_CONFIG, else the drop-in
/// directories, whose broken files are skipped). Returns 0, -EINVAL (bad configuration) or
/// -EALREADY (the inspector already exists: first use or an earlier init).
///
/// # Safety
/// `config_path` is NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmabuf_info_init(config_path: *const c_char) -> c_int {
    let config = if config_path.is_null() {
        Config::load_default()
    } else {
        // SAFETY: the caller passes a valid NUL-terminated string.
        let s = unsafe { CStr::from_ptr(config_path) };
        match s.to_str() {
            Ok(p) => Config::from_file(Path::new(p)),
            Err(_) => return -libc::EINVAL,
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(_) => return -libc::EINVAL,
    };
    let mut created = false;
    INSPECTOR.get_or_init(|| {
        created = true;
        Ok(Inspector::new(config))
    });
    if created {
        0
    } else {
        -libc::EALREADY
    }
}

/// The `DMABUF_INFO_PLATFORM_*` in use (configured or detected); 0 if the configuration is
/// invalid.
#[no_mangle]
pub extern "C" fn dmabuf_info_platform() -> u32 {
    inspector().map_or(0, |i| platform_code(i.platform()))
}

fn fill_result(out: &mut DmabufInfoResult, info: &BufferInfo) {
    out.kind = match info.kind {
        BufferKind::DmaBuf => DMABUF_INFO_KIND_DMABUF,
        BufferKind::Memfd => DMABUF_INFO_KIND_MEMFD,
    };
    out.size = info.size;
    out.inode = info.inode;
    out.cache = cache_code(info.cache.value);
    out.cache_source = source_code(&info.cache.source);
    out.needs_sync = sync_code(info.needs_sync.value);
    out.needs_sync_source = source_code(&info.needs_sync.source);
    out.stable = u32::from(info.stable.value);
    out.stable_source = source_code(&info.stable.source);
    out.file_kind = 0;
    out.reserved = 0;
    copy_str(&mut out.exporter, &info.exporter);
    copy_str(&mut out.name, info.name.as_deref().unwrap_or(""));
}

/// Fills `*out` for `fd`. `drm_fd` is the DRM device that allocated the buffer, or -1.
/// `out->struct_size` must be set. Returns 0, -EBADF (`fd` not open),
/// `DMABUF_INFO_E_NOT_BUFFER` (`out->file_kind` set) or another -errno.
///
/// # Safety
/// `out` points to a writable `struct dmabuf_info_result`.
#[no_mangle]
pub unsafe extern "C" fn dmabuf_info_inspect(
    fd: c_int,
    drm_fd: c_int,
    out: *mut DmabufInfoResult,
) -> c_int {
    if out.is_null() {
        return -libc::EFAULT;
    }
    // SAFETY: non-null; the caller guarantees it points to a writable result struct.
    let out = unsafe { &mut *out };
    if (out.struct_size as usize) < std::mem::size_of::<DmabufInfoResult>() {
        return -libc::EINVAL;
    }
    let ins = match inspector() {
        Ok(i) => i,
        Err(e) => return e,
    };
    out.kind = 0;
    out.file_kind = 0;
    let result = with_raw_fd(fd, |fd| {
        if drm_fd < 0 {
            ins.inspect(fd, None)
        } else {
            with_raw_fd(drm_fd, |drm| ins.inspect(fd, Some(drm))).and_then(|r| r)
        }
    })
    .and_then(|r| r);
    match result {
        Ok(info) => {
            fill_result(out, &info);
            0
        }
        Err(e) => {
            if let Error::NotDmaBuf { what } = &e {
                out.file_kind = file_kind_code(what);
            }
            error_code(&e)
        }
    }
}

/// The guest mapping policy for `*info` on `platform` (a `DMABUF_INFO_PLATFORM_*`, 0 = the
/// configured or detected one). Returns 1 (allow, `out->map_info` set), 0 (refuse,
/// `out->refuse_reason` set) or -EINVAL for out-of-range values.
///
/// # Safety
/// `info` points to a readable result struct, `out` to a writable decision struct.
#[no_mangle]
pub unsafe extern "C" fn dmabuf_info_decide(
    info: *const DmabufInfoResult,
    platform: u32,
    out: *mut DmabufInfoDecision,
) -> c_int {
    if info.is_null() || out.is_null() {
        return -libc::EFAULT;
    }
    // SAFETY: non-null and valid per the caller's contract.
    let (info, out) = unsafe { (&*info, &mut *out) };
    let platform = if platform == DMABUF_INFO_PLATFORM_DEFAULT {
        match inspector() {
            Ok(i) => i.platform(),
            Err(e) => return e,
        }
    } else {
        match platform_from(platform) {
            Some(p) => p,
            None => return -libc::EINVAL,
        }
    };
    let parts = (
        cache_from(info.cache),
        source_from(info.cache_source),
        sync_from(info.needs_sync),
        source_from(info.needs_sync_source),
        source_from(info.stable_source),
    );
    let (Some(cache), Some(cs), Some(sync), Some(ss), Some(sts)) = parts else {
        return -libc::EINVAL;
    };
    if info.stable > 1 {
        return -libc::EINVAL;
    }
    let d = policy::decide_parts(
        (cache, &cs),
        (sync, &ss),
        (info.stable == 1, &sts),
        platform,
    );
    out.platform = platform_code(platform);
    copy_str(&mut out.message, &d.to_string());
    match d {
        Decision::Allow(m) => {
            out.allow = 1;
            out.map_info = m.virtio_value();
            out.refuse_reason = 0;
            1
        }
        Decision::Refuse(r) => {
            out.allow = 0;
            out.map_info = 0;
            out.refuse_reason = refuse_code(&r);
            0
        }
    }
}

/// `dmabuf_info_query()` for value set `abi`: 1 = v1 (`DMA_BUF_INFO_VM_PROT`), 2 = v2
/// (`DMA_BUF_INFO_MAP_INFO`); -EINVAL for another `abi`.
///
/// # Safety
/// `info` points to a readable and writable `struct dma_buf_info`.
#[no_mangle]
pub unsafe extern "C" fn dmabuf_info_query_abi(
    fd: c_int,
    info: *mut DmaBufInfoArg,
    abi: u32,
) -> c_int {
    if info.is_null() {
        return -libc::EFAULT;
    }
    let abi = match abi {
        1 => KernelAbi::V1,
        2 => KernelAbi::V2,
        _ => return -libc::EINVAL,
    };
    // SAFETY: non-null and valid per the caller's contract.
    let arg = unsafe { &mut *info };
    let ins = match inspector() {
        Ok(i) => i,
        Err(e) => return e,
    };
    match with_raw_fd(fd, |fd| ins.query_uapi(fd, arg, abi)) {
        Ok(Ok(())) => 0,
        Ok(Err(errno)) => -errno,
        Err(e) => -e.errno(),
    }
}

/// ioctl-shaped: fills `info->value` for `info->param == 1` exactly as a kernel carrying
/// `DMA_BUF_IOCTL_INFO` v2 (`DMA_BUF_INFO_MAP_INFO`, the last value set posted) would.
/// Returns 0 or -errno: -EINVAL (bad param or pad), -ENOTTY (not a dma-buf), -EBADF, -ENOSYS
/// (no answer: unknown, or not stable).
///
/// # Safety
/// `info` points to a readable and writable `struct dma_buf_info`.
#[no_mangle]
pub unsafe extern "C" fn dmabuf_info_query(fd: c_int, info: *mut DmaBufInfoArg) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { dmabuf_info_query_abi(fd, info, 2) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in CacheAttr::ALL {
            assert_eq!(cache_from(cache_code(c)), Some(c));
        }
        for s in NeedsSync::ALL {
            assert_eq!(sync_from(sync_code(s)), Some(s));
        }
        for s in [
            Source::Default,
            Source::KernelIoctl(KernelAbi::V1),
            Source::KernelIoctl(KernelAbi::V2),
            Source::ExporterTable,
            Source::Memfd,
        ]
        .into_iter()
        .chain(DRIVERS.iter().map(|d| Source::DriverIoctl(*d)))
        {
            assert_eq!(source_from(source_code(&s)), Some(s));
        }
        assert_eq!(source_from(DMABUF_INFO_SOURCE_DRIVER_IOCTL), None);
        assert_eq!(
            source_from(DMABUF_INFO_SOURCE_KERNEL_IOCTL | (3 << 8)),
            None
        );
        assert_eq!(cache_from(4), None);
        for p in Platform::ALL {
            assert_eq!(platform_from(platform_code(p)), Some(p));
        }
        assert_eq!(platform_from(DMABUF_INFO_PLATFORM_DEFAULT), None);
        assert_eq!(platform_from(7), None);
    }

    /// The C codes of refusals are the JSON `reason_code`s.
    #[test]
    fn refuse_codes_match_the_policy() {
        let s = Source::Default;
        for r in [
            RefuseReason::NeedsSync { source: s.clone() },
            RefuseReason::SyncUnknown { source: s.clone() },
            RefuseReason::CacheUnknown { source: s.clone() },
            RefuseReason::NotStable { source: s.clone() },
            RefuseReason::PlatformCannotDeliver {
                cache: CacheAttr::WriteCombined,
                platform: Platform::X86Intel,
                source: s.clone(),
            },
        ] {
            assert_eq!(refuse_code(&r), r.code(), "{r}");
        }
    }

    #[test]
    fn strings_are_truncated_and_terminated() {
        let mut buf = [1 as c_char; 4];
        copy_str(&mut buf, "abcdef");
        assert_eq!(buf, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
    }
}
