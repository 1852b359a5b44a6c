//! C ABI. The header is `include/dmabuf_info.h`; keep the two in step and bump
//! [`ABI_MINOR`] (compatible additions) or [`ABI_MAJOR`] (breaking changes) with every change.
//!
//! All functions return 0 (or a documented non-negative value) on success and a negative errno
//! on failure, or [`DMABUF_INFO_E_NOT_BUFFER`] when the descriptor is neither a dma-buf nor a
//! memfd. They never panic across the boundary and never take ownership of descriptors.
//!
//! The library keeps one process-wide [`Inspector`], created on first use from
//! [`Config::load_default`] or explicitly by `dmabuf_info_init()`.

use std::ffi::{c_char, c_int, CStr};
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, FileKind};
use crate::info::{BufferInfo, BufferKind, CacheAttr, Driver, KernelAbi, NeedsSync, Source};
use crate::platform::Platform;
use crate::policy::{self, Decision};
use crate::uapi::DmaBufInfoArg;
use crate::{Config, Inspector};

/// ABI major version (incompatible changes).
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version (compatible additions).
pub const ABI_MINOR: u32 = 0;
/// Returned when the descriptor is neither a dma-buf nor a memfd (`out->file_kind` says what
/// it is). Outside the errno range.
pub const DMABUF_INFO_E_NOT_BUFFER: c_int = -10000;

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

/// `struct dmabuf_info_result`.
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

/// `struct dmabuf_info_decision`.
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
        CacheAttr::Unknown => 0,
        CacheAttr::Cached => 1,
        CacheAttr::Uncached => 2,
        CacheAttr::WriteCombined => 3,
    }
}

fn cache_from(code: u32) -> Option<CacheAttr> {
    Some(match code {
        0 => CacheAttr::Unknown,
        1 => CacheAttr::Cached,
        2 => CacheAttr::Uncached,
        3 => CacheAttr::WriteCombined,
        _ => return None,
    })
}

fn sync_code(s: NeedsSync) -> u32 {
    match s {
        NeedsSync::Unknown => 0,
        NeedsSync::No => 1,
        NeedsSync::Yes => 2,
    }
}

fn sync_from(code: u32) -> Option<NeedsSync> {
    Some(match code {
        0 => NeedsSync::Unknown,
        1 => NeedsSync::No,
        2 => NeedsSync::Yes,
        _ => return None,
    })
}

const DRIVERS: [Driver; 5] = [
    Driver::Msm,
    Driver::Panfrost,
    Driver::Panthor,
    Driver::I915,
    Driver::Amdgpu,
];

/// Source code: low byte = kind, second byte = detail (ABI 1/2, or driver 1..5).
fn source_code(s: &Source) -> u32 {
    match s {
        Source::Default => 0,
        Source::KernelIoctl(KernelAbi::V1) => 1 | (1 << 8),
        Source::KernelIoctl(KernelAbi::V2) => 1 | (2 << 8),
        Source::DriverIoctl(d) => {
            let idx = DRIVERS
                .iter()
                .position(|x| x == d)
                .map_or(0, |i| i as u32 + 1);
            2 | (idx << 8)
        }
        Source::ExporterTable => 3,
        Source::ConfigQuirk(_) => 4,
        Source::Memfd => 5,
    }
}

fn source_from(code: u32) -> Option<Source> {
    let detail = (code >> 8) & 0xff;
    Some(match code & 0xff {
        0 => Source::Default,
        1 => Source::KernelIoctl(if detail == 1 {
            KernelAbi::V1
        } else {
            KernelAbi::V2
        }),
        2 => Source::DriverIoctl(*DRIVERS.get((detail as usize).checked_sub(1)?)?),
        3 => Source::ExporterTable,
        4 => Source::ConfigQuirk("(from configuration)".into()),
        5 => Source::Memfd,
        _ => return None,
    })
}

fn platform_code(p: Platform) -> u32 {
    Platform::ALL
        .iter()
        .position(|x| *x == p)
        .map_or(0, |i| i as u32 + 1)
}

fn file_kind_code(k: &FileKind) -> u32 {
    match k {
        FileKind::RegularFile => 1,
        FileKind::Directory => 2,
        FileKind::Pipe => 3,
        FileKind::Socket => 4,
        FileKind::CharDevice => 5,
        FileKind::BlockDevice => 6,
        FileKind::Symlink => 7,
        FileKind::AnonInode(_) => 8,
        FileKind::Other => 9,
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

/// `uint32_t dmabuf_info_abi_version(void)`: `(major << 16) | minor`.
#[no_mangle]
pub extern "C" fn dmabuf_info_abi_version() -> u32 {
    (ABI_MAJOR << 16) | ABI_MINOR
}

/// `int dmabuf_info_init(const char *config_path)`: creates the process-wide inspector from
/// `config_path` (NULL = default search). Returns 0, `-EINVAL` for a bad configuration, or
/// `-EALREADY` if the inspector already exists (first use or an earlier init).
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

/// `uint32_t dmabuf_info_platform(void)`: the `DMABUF_INFO_PLATFORM_*` in use (0 if the
/// configuration is invalid).
#[no_mangle]
pub extern "C" fn dmabuf_info_platform() -> u32 {
    inspector().map_or(0, |i| platform_code(i.platform()))
}

fn fill_result(out: &mut DmabufInfoResult, info: &BufferInfo) {
    out.kind = match info.kind {
        BufferKind::DmaBuf => 1,
        BufferKind::Memfd => 2,
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

/// `int dmabuf_info_inspect(int fd, int drm_fd, struct dmabuf_info_result *out)`: fills `out`
/// for `fd`. `drm_fd` is the allocating DRM device or -1. `out->struct_size` must be set.
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

/// `int dmabuf_info_decide(const struct dmabuf_info_result *info, uint32_t platform,
/// struct dmabuf_info_decision *out)`: applies the guest mapping policy. `platform` is a
/// `DMABUF_INFO_PLATFORM_*` or 0 for the configured/detected one. Returns 1 (allow), 0
/// (refuse) or a negative errno (`-EINVAL` for out-of-range values).
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
    let platform = if platform == 0 {
        match inspector() {
            Ok(i) => i.platform(),
            Err(e) => return e,
        }
    } else {
        match Platform::ALL.get(platform as usize - 1) {
            Some(p) => *p,
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
            out.refuse_reason = r.code();
            0
        }
    }
}

/// `int dmabuf_info_query_abi(int fd, struct dma_buf_info *info, uint32_t abi)`: the
/// ioctl-shaped entry point for value set `abi` (1 = v1 `DMA_BUF_INFO_VM_PROT`, 2 = v2
/// `DMA_BUF_INFO_MAP_INFO`). Returns 0 or a negative errno, as the ioctl would fail (see
/// [`Inspector::query_uapi`]).
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

/// `int dmabuf_info_query(int fd, struct dma_buf_info *info)`: [`dmabuf_info_query_abi`] with
/// the v2 value set (`DMA_BUF_INFO_MAP_INFO`), the last one posted.
///
/// # Safety
/// As [`dmabuf_info_query_abi`].
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
        assert_eq!(source_from(2), None);
        assert_eq!(cache_from(4), None);
    }

    #[test]
    fn strings_are_truncated_and_terminated() {
        let mut buf = [1 as c_char; 4];
        copy_str(&mut buf, "abcdef");
        assert_eq!(buf, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
    }
}
