//! Raw kernel uapi: ioctl numbers, argument structs and thin ioctl wrappers.
//!
//! This is the only module (together with [`crate::ffi`]) that contains `unsafe`, and the one
//! ioctl layer of the workspace: the backend's allocators and the guest test binary issue
//! their dma-buf, udmabuf, dma-heap and DRM ioctls through it. Every number is computed with
//! [`iow`]/[`iowr`] (on `rustix::ioctl`) and checked against the literal value the kernel
//! headers define (see the tests at the bottom and `tests/uapi_numbers.rs`); every call goes
//! through [`ioctl`].
//!
//! Sources of the layouts: `include/uapi/linux/dma-buf.h`, `linux/udmabuf.h`,
//! `linux/dma-heap.h`, `drm/drm.h`, `drm/drm_mode.h`, `drm/msm_drm.h`, `drm/panfrost_drm.h`,
//! `drm/panthor_drm.h`, `drm/i915_drm.h`, `drm/amdgpu_drm.h`, and the two postings of the
//! never-merged `DMA_BUF_IOCTL_INFO` (2022-07-29 "v1" and 2022-08-15 "v2").
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};

/// `_IOW(type, nr, T)`: the kernel reads a `T` (the architecture's `_IOC` encoding, from
/// `rustix::ioctl::opcode`).
pub const fn iow<T>(ty: u8, nr: u8) -> u32 {
    opcode::write::<T>(ty, nr) as u32
}

/// `_IOWR(type, nr, T)`: the kernel reads a `T` and writes it back.
pub const fn iowr<T>(ty: u8, nr: u8) -> u32 {
    opcode::read_write::<T>(ty, nr) as u32
}

// ---------------------------------------------------------------------------------------------
// dma-buf (`linux/dma-buf.h`)
// ---------------------------------------------------------------------------------------------

/// `DMA_BUF_MAGIC`: `statfs.f_type` of the dma-buf pseudo filesystem.
pub const DMA_BUF_MAGIC: i64 = 0x444d_4142;
/// `TMPFS_MAGIC` (shmem; memfds live here).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `HUGETLBFS_MAGIC` (memfds created with `MFD_HUGETLB`).
pub const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// `DMA_BUF_BASE`, the ioctl type letter of dma-buf.
pub const DMA_BUF_BASE: u8 = b'b';

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DmaBufSync {
    /// `DMA_BUF_SYNC_*` flags.
    pub flags: u64,
}

/// `DMA_BUF_SYNC_READ`.
pub const DMA_BUF_SYNC_READ: u64 = 1;
/// `DMA_BUF_SYNC_WRITE`.
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
/// `DMA_BUF_SYNC_RW`.
pub const DMA_BUF_SYNC_RW: u64 = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE;
/// `DMA_BUF_SYNC_START`.
pub const DMA_BUF_SYNC_START: u64 = 0;
/// `DMA_BUF_SYNC_END`.
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;

/// `struct dma_buf_export_sync_file` (only used to check that `DMA_BUF_IOCTL_INFO` does not
/// collide with `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, which has the same type and nr).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaBufExportSyncFile {
    /// `DMA_BUF_SYNC_*` flags.
    pub flags: u32,
    /// The returned sync_file fd.
    pub fd: i32,
}

/// `struct dma_buf_info` as posted with `DMA_BUF_IOCTL_INFO` (never merged). Both postings
/// (v1 and v2) use this layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DmaBufInfoArg {
    /// What to ask: [`DMA_BUF_INFO_VM_PROT`] (v1) or [`DMA_BUF_INFO_MAP_INFO`] (v2); both are 1.
    pub param: u32,
    /// Must be zero.
    pub pad: u32,
    /// The answer.
    pub value: u64,
}

/// `DMA_BUF_IOCTL_SYNC` = `_IOW('b', 0, struct dma_buf_sync)`.
pub const DMA_BUF_IOCTL_SYNC: u32 = iow::<DmaBufSync>(DMA_BUF_BASE, 0);
/// `DMA_BUF_SET_NAME_B` = `_IOW('b', 1, __u64)`.
pub const DMA_BUF_SET_NAME_B: u32 = iow::<u64>(DMA_BUF_BASE, 1);
/// `DMA_BUF_SET_NAME_A` = `_IOW('b', 1, __u32)`.
pub const DMA_BUF_SET_NAME_A: u32 = iow::<u32>(DMA_BUF_BASE, 1);
/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` = `_IOWR('b', 2, struct dma_buf_export_sync_file)`.
pub const DMA_BUF_IOCTL_EXPORT_SYNC_FILE: u32 = iowr::<DmaBufExportSyncFile>(DMA_BUF_BASE, 2);
/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` = `_IOW('b', 3, struct dma_buf_import_sync_file)`.
pub const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: u32 = iow::<DmaBufExportSyncFile>(DMA_BUF_BASE, 3);
/// The proposed `DMA_BUF_IOCTL_INFO` = `_IOWR('b', 2, struct dma_buf_info)` (never merged).
pub const DMA_BUF_IOCTL_INFO: u32 = iowr::<DmaBufInfoArg>(DMA_BUF_BASE, 2);

/// v1 (2022-07-29): `DMA_BUF_INFO_VM_PROT`.
pub const DMA_BUF_INFO_VM_PROT: u32 = 1;
/// v1: `DMA_BUF_VM_PROT_WC`.
pub const DMA_BUF_VM_PROT_WC: u64 = 0;
/// v1: `DMA_BUF_VM_PROT_CACHED`.
pub const DMA_BUF_VM_PROT_CACHED: u64 = 1;
/// v2 (2022-08-15): `DMA_BUF_INFO_MAP_INFO`.
pub const DMA_BUF_INFO_MAP_INFO: u32 = 1;
/// v2: `DMA_BUF_MAP_INCOHERENT`: CPU access needs `DMA_BUF_IOCTL_SYNC`.
pub const DMA_BUF_MAP_INCOHERENT: u64 = 0;
/// v2: `DMA_BUF_COHERENT_WC`.
pub const DMA_BUF_COHERENT_WC: u64 = 1;
/// v2: `DMA_BUF_COHERENT_CACHED`.
pub const DMA_BUF_COHERENT_CACHED: u64 = 2;

// ---------------------------------------------------------------------------------------------
// Test exporters: udmabuf and dma-heaps
// ---------------------------------------------------------------------------------------------

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdmabufCreate {
    /// The memfd (must be sealed with `F_SEAL_SHRINK` and not `F_SEAL_WRITE`).
    pub memfd: u32,
    /// `UDMABUF_FLAGS_CLOEXEC`.
    pub flags: u32,
    /// Page-aligned offset into the memfd.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}
/// `UDMABUF_FLAGS_CLOEXEC`.
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `UDMABUF_CREATE` = `_IOW('u', 0x42, struct udmabuf_create)`.
pub const UDMABUF_CREATE: u32 = iow::<UdmabufCreate>(b'u', 0x42);

/// `struct udmabuf_create_list` (the header; `count` [`UdmabufCreateItem`]s follow it).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdmabufCreateList {
    /// `UDMABUF_FLAGS_CLOEXEC`.
    pub flags: u32,
    /// Number of items.
    pub count: u32,
}
/// `struct udmabuf_create_item`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdmabufCreateItem {
    /// The memfd (sealed as for [`UdmabufCreate`]).
    pub memfd: u32,
    /// Must be zero.
    pub pad: u32,
    /// Page-aligned offset into the memfd.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}
/// `UDMABUF_CREATE_LIST` = `_IOW('u', 0x43, struct udmabuf_create_list)`.
pub const UDMABUF_CREATE_LIST: u32 = iow::<UdmabufCreateList>(b'u', 0x43);
/// Most items the kernel takes in one `UDMABUF_CREATE_LIST` (the udmabuf module parameter
/// `list_limit`, 1024 unless the host changed it).
pub const UDMABUF_LIST_LIMIT: usize = 1024;

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaHeapAllocationData {
    /// Size to allocate.
    pub len: u64,
    /// Returned dma-buf fd.
    pub fd: u32,
    /// `O_RDWR | O_CLOEXEC` style flags for the new fd.
    pub fd_flags: u32,
    /// Heap flags (none defined).
    pub heap_flags: u64,
}
/// `DMA_HEAP_IOCTL_ALLOC` = `_IOWR('H', 0x0, struct dma_heap_allocation_data)`.
pub const DMA_HEAP_IOCTL_ALLOC: u32 = iowr::<DmaHeapAllocationData>(b'H', 0x0);

// ---------------------------------------------------------------------------------------------
// DRM core (`drm/drm.h`, `drm/drm_mode.h`)
// ---------------------------------------------------------------------------------------------

/// `DRM_IOCTL_BASE`.
pub const DRM_IOCTL_BASE: u8 = b'd';
/// `DRM_COMMAND_BASE`: first driver-private ioctl nr.
pub const DRM_COMMAND_BASE: u8 = 0x40;

/// `struct drm_version`.
#[repr(C)]
#[derive(Debug)]
pub struct DrmVersion {
    /// Major version.
    pub version_major: i32,
    /// Minor version.
    pub version_minor: i32,
    /// Patch level.
    pub version_patchlevel: i32,
    /// Length of `name`.
    pub name_len: usize,
    /// Driver name buffer.
    pub name: *mut u8,
    /// Length of `date`.
    pub date_len: usize,
    /// Date buffer.
    pub date: *mut u8,
    /// Length of `desc`.
    pub desc_len: usize,
    /// Description buffer.
    pub desc: *mut u8,
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmGemClose {
    /// Handle to close.
    pub handle: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmPrimeHandle {
    /// GEM handle.
    pub handle: u32,
    /// `DRM_CLOEXEC | DRM_RDWR` for HANDLE_TO_FD.
    pub flags: u32,
    /// dma-buf fd.
    pub fd: i32,
}

/// `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmModeCreateDumb {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
    /// Bits per pixel.
    pub bpp: u32,
    /// Must be zero.
    pub flags: u32,
    /// Returned handle.
    pub handle: u32,
    /// Returned pitch.
    pub pitch: u32,
    /// Returned size.
    pub size: u64,
}

/// `struct drm_mode_destroy_dumb`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmModeDestroyDumb {
    /// Handle to destroy.
    pub handle: u32,
}

/// `DRM_CLOEXEC` (= `O_CLOEXEC`).
pub const DRM_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
/// `DRM_RDWR` (= `O_RDWR`).
pub const DRM_RDWR: u32 = libc::O_RDWR as u32;

/// `DRM_IOCTL_VERSION` = `_IOWR('d', 0x00, struct drm_version)`.
pub const DRM_IOCTL_VERSION: u32 = iowr::<DrmVersion>(DRM_IOCTL_BASE, 0x00);
/// `DRM_IOCTL_GEM_CLOSE` = `_IOW('d', 0x09, struct drm_gem_close)`.
pub const DRM_IOCTL_GEM_CLOSE: u32 = iow::<DrmGemClose>(DRM_IOCTL_BASE, 0x09);
/// `DRM_IOCTL_PRIME_HANDLE_TO_FD` = `_IOWR('d', 0x2d, struct drm_prime_handle)`.
pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: u32 = iowr::<DrmPrimeHandle>(DRM_IOCTL_BASE, 0x2d);
/// `DRM_IOCTL_PRIME_FD_TO_HANDLE` = `_IOWR('d', 0x2e, struct drm_prime_handle)`.
pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: u32 = iowr::<DrmPrimeHandle>(DRM_IOCTL_BASE, 0x2e);
/// `DRM_IOCTL_MODE_CREATE_DUMB` = `_IOWR('d', 0xB2, struct drm_mode_create_dumb)`.
pub const DRM_IOCTL_MODE_CREATE_DUMB: u32 = iowr::<DrmModeCreateDumb>(DRM_IOCTL_BASE, 0xB2);
/// `DRM_IOCTL_MODE_DESTROY_DUMB` = `_IOWR('d', 0xB4, struct drm_mode_destroy_dumb)`.
pub const DRM_IOCTL_MODE_DESTROY_DUMB: u32 = iowr::<DrmModeDestroyDumb>(DRM_IOCTL_BASE, 0xB4);

// ---------------------------------------------------------------------------------------------
// Driver query ioctls
// ---------------------------------------------------------------------------------------------

/// `struct drm_msm_gem_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmMsmGemInfo {
    /// GEM handle.
    pub handle: u32,
    /// `MSM_INFO_*`.
    pub info: u32,
    /// Returned (or passed) value.
    pub value: u64,
    /// Buffer length for name queries.
    pub len: u32,
    /// Padding.
    pub pad: u32,
}
/// `DRM_MSM_GEM_INFO` (driver-private nr).
pub const DRM_MSM_GEM_INFO: u8 = 0x03;
/// `DRM_IOCTL_MSM_GEM_INFO`.
pub const DRM_IOCTL_MSM_GEM_INFO: u32 =
    iowr::<DrmMsmGemInfo>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_MSM_GEM_INFO);
/// `MSM_INFO_GET_FLAGS`.
pub const MSM_INFO_GET_FLAGS: u32 = 5;
/// `MSM_BO_CACHE_MASK`.
pub const MSM_BO_CACHE_MASK: u64 = 0x000f_0000;
/// `MSM_BO_CACHED`: cached, not coherent with the GPU.
pub const MSM_BO_CACHED: u64 = 0x0001_0000;
/// `MSM_BO_WC`.
pub const MSM_BO_WC: u64 = 0x0002_0000;
/// `MSM_BO_UNCACHED` (deprecated, treated as WC by the driver).
pub const MSM_BO_UNCACHED: u64 = 0x0004_0000;
/// `MSM_BO_CACHED_COHERENT`.
pub const MSM_BO_CACHED_COHERENT: u64 = 0x0008_0000;

/// `struct drm_panfrost_query_bo_info` / `struct drm_panthor_bo_query_info` (same layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmPanBoQueryInfo {
    /// GEM handle.
    pub handle: u32,
    /// `*_BO_IS_IMPORTED`.
    pub extra_flags: u32,
    /// Creation flags (`*_BO_WB_MMAP`, ...).
    pub create_flags: u32,
    /// Zero on return.
    pub pad: u32,
}
/// `DRM_PANFROST_QUERY_BO_INFO` (driver-private nr, panfrost >= 1.6).
pub const DRM_PANFROST_QUERY_BO_INFO: u8 = 0x0d;
/// `DRM_IOCTL_PANFROST_QUERY_BO_INFO`.
pub const DRM_IOCTL_PANFROST_QUERY_BO_INFO: u32 = iowr::<DrmPanBoQueryInfo>(
    DRM_IOCTL_BASE,
    DRM_COMMAND_BASE + DRM_PANFROST_QUERY_BO_INFO,
);
/// `PANFROST_BO_WB_MMAP`: CPU mapping is write-back cached.
pub const PANFROST_BO_WB_MMAP: u32 = 4;
/// `DRM_PANFROST_BO_IS_IMPORTED`.
pub const DRM_PANFROST_BO_IS_IMPORTED: u32 = 1;
/// `DRM_PANTHOR_BO_QUERY_INFO` (position in `enum drm_panthor_ioctl_id`, panthor >= 1.7).
pub const DRM_PANTHOR_BO_QUERY_INFO: u8 = 0x10;
/// `DRM_IOCTL_PANTHOR_BO_QUERY_INFO`.
pub const DRM_IOCTL_PANTHOR_BO_QUERY_INFO: u32 =
    iowr::<DrmPanBoQueryInfo>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_PANTHOR_BO_QUERY_INFO);
/// `DRM_PANTHOR_BO_WB_MMAP`.
pub const DRM_PANTHOR_BO_WB_MMAP: u32 = 1 << 1;
/// `DRM_PANTHOR_BO_IS_IMPORTED`.
pub const DRM_PANTHOR_BO_IS_IMPORTED: u32 = 1;

/// `struct drm_i915_gem_caching`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmI915GemCaching {
    /// GEM handle.
    pub handle: u32,
    /// `I915_CACHING_*`.
    pub caching: u32,
}
/// `DRM_I915_GEM_GET_CACHING`.
pub const DRM_I915_GEM_GET_CACHING: u8 = 0x30;
/// `DRM_IOCTL_I915_GEM_GET_CACHING`.
pub const DRM_IOCTL_I915_GEM_GET_CACHING: u32 =
    iowr::<DrmI915GemCaching>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_I915_GEM_GET_CACHING);
/// `I915_CACHING_NONE`.
pub const I915_CACHING_NONE: u32 = 0;
/// `I915_CACHING_CACHED`.
pub const I915_CACHING_CACHED: u32 = 1;
/// `I915_CACHING_DISPLAY`.
pub const I915_CACHING_DISPLAY: u32 = 2;

/// `struct drm_i915_getparam`.
#[repr(C)]
#[derive(Debug)]
pub struct DrmI915Getparam {
    /// `I915_PARAM_*`.
    pub param: i32,
    /// Where the kernel writes the value.
    pub value: *mut i32,
}
/// `DRM_I915_GETPARAM`.
pub const DRM_I915_GETPARAM: u8 = 0x06;
/// `DRM_IOCTL_I915_GETPARAM`.
pub const DRM_IOCTL_I915_GETPARAM: u32 =
    iowr::<DrmI915Getparam>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_I915_GETPARAM);
/// `I915_PARAM_HAS_LLC`.
pub const I915_PARAM_HAS_LLC: i32 = 17;

/// `struct drm_amdgpu_gem_op`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmAmdgpuGemOp {
    /// GEM handle.
    pub handle: u32,
    /// `AMDGPU_GEM_OP_*`.
    pub op: u32,
    /// In/out value; for GET_GEM_CREATE_INFO a pointer to [`DrmAmdgpuGemCreateIn`].
    pub value: u64,
}
/// `struct drm_amdgpu_gem_create_in`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmAmdgpuGemCreateIn {
    /// Size.
    pub bo_size: u64,
    /// Alignment.
    pub alignment: u64,
    /// `AMDGPU_GEM_DOMAIN_*`.
    pub domains: u64,
    /// `AMDGPU_GEM_CREATE_*`.
    pub domain_flags: u64,
}
/// `DRM_AMDGPU_GEM_OP`.
pub const DRM_AMDGPU_GEM_OP: u8 = 0x10;
/// `DRM_IOCTL_AMDGPU_GEM_OP`.
pub const DRM_IOCTL_AMDGPU_GEM_OP: u32 =
    iowr::<DrmAmdgpuGemOp>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_GEM_OP);
/// `AMDGPU_GEM_OP_GET_GEM_CREATE_INFO`.
pub const AMDGPU_GEM_OP_GET_GEM_CREATE_INFO: u32 = 0;
/// `AMDGPU_GEM_DOMAIN_CPU`.
pub const AMDGPU_GEM_DOMAIN_CPU: u64 = 0x1;
/// `AMDGPU_GEM_DOMAIN_GTT`.
pub const AMDGPU_GEM_DOMAIN_GTT: u64 = 0x2;
/// `AMDGPU_GEM_DOMAIN_VRAM`.
pub const AMDGPU_GEM_DOMAIN_VRAM: u64 = 0x4;
/// `AMDGPU_GEM_CREATE_CPU_GTT_USWC`.
pub const AMDGPU_GEM_CREATE_CPU_GTT_USWC: u64 = 1 << 2;

// ---------------------------------------------------------------------------------------------
// ioctl wrappers
// ---------------------------------------------------------------------------------------------

/// An ioctl whose argument is a pointer to a `T`, which the kernel may read and write. Its
/// output is the ioctl's non-negative return value (a new fd for some requests).
struct ByPointer<T> {
    request: u32,
    arg: *mut T,
}

// SAFETY: `as_ptr` hands the kernel exactly the pointer the caller of `ioctl` gave, whose
// validity for `request` the caller guarantees (see `ioctl`); the output is the plain return
// value, not read through the pointer; `IS_MUTATING` is true, so rustix assumes the kernel
// may write through it.
unsafe impl<T> Ioctl for ByPointer<T> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.request as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg.cast()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _arg: *mut c_void,
    ) -> rustix::io::Result<Self::Output> {
        Ok(out)
    }
}

/// Issues `ioctl(fd, request, arg)`: returns the (non-negative) return value, or the errno.
///
/// # Safety
/// `request` must be an ioctl whose argument is a pointer to a `T` (or, for requests that take
/// a pointer value such as a string, `arg` itself), `arg` must be valid for the reads and
/// writes the kernel makes through it, and so must every pointer inside `*arg`, for the
/// duration of the call.
pub unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: *mut T) -> io::Result<i32> {
    // SAFETY: forwarded from the caller (see above).
    unsafe { rustix::ioctl::ioctl(fd, ByPointer { request, arg }) }.map_err(io::Error::from)
}

/// Like [`ioctl`] but retried on `EINTR` and `EAGAIN` (needed for `DMA_BUF_IOCTL_SYNC` and
/// for DRM ioctls interrupted by signals).
///
/// # Safety
/// Same as [`ioctl`].
pub unsafe fn ioctl_retry<T>(fd: BorrowedFd<'_>, request: u32, arg: *mut T) -> io::Result<i32> {
    loop {
        // SAFETY: forwarded from the caller.
        match unsafe { ioctl(fd, request, arg) } {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {}
            other => return other,
        }
    }
}

/// Takes ownership of the descriptor an ioctl returned.
///
/// # Safety
/// `fd` must be a descriptor the kernel just installed for this process as the result of an
/// ioctl (its return value, or a field it filled), which nothing else owns.
unsafe fn adopt_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: a new descriptor nobody else owns (the caller's guarantee).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn raw_fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// `DMA_BUF_IOCTL_INFO` with `param`; returns the value or the errno.
pub fn dma_buf_ioctl_info(fd: BorrowedFd<'_>, param: u32) -> io::Result<u64> {
    let mut arg = DmaBufInfoArg {
        param,
        pad: 0,
        value: 0,
    };
    // SAFETY: DMA_BUF_IOCTL_INFO takes a `struct dma_buf_info` (no pointers inside); on
    // kernels without it the number is unknown and nothing is read or written.
    unsafe { ioctl(fd, DMA_BUF_IOCTL_INFO, &mut arg) }?;
    Ok(arg.value)
}

/// `DMA_BUF_IOCTL_SYNC` with `flags` (`DMA_BUF_SYNC_*`), retried on EINTR/EAGAIN.
pub fn dma_buf_sync(fd: BorrowedFd<'_>, flags: u64) -> io::Result<()> {
    let mut arg = DmaBufSync { flags };
    // SAFETY: DMA_BUF_IOCTL_SYNC takes a `struct dma_buf_sync` without pointers.
    unsafe { ioctl_retry(fd, DMA_BUF_IOCTL_SYNC, &mut arg) }.map(drop)
}

/// `DMA_BUF_SET_NAME_B`: names the buffer (shows up as `name:` in fdinfo).
pub fn dma_buf_set_name(fd: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: SET_NAME reads a NUL-terminated string (at most DMA_BUF_NAME_LEN bytes) through
    // the pointer it is given as its argument; `name` is a valid C string for the call and is
    // only read.
    unsafe { ioctl(fd, DMA_BUF_SET_NAME_B, name.as_ptr().cast_mut()) }.map(drop)
}

/// `UDMABUF_CREATE` on an open `/dev/udmabuf`: wraps `size` bytes of `memfd` at `offset`.
pub fn udmabuf_create(
    dev: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> io::Result<OwnedFd> {
    let mut arg = UdmabufCreate {
        memfd: raw_fd_u32(memfd)?,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset,
        size,
    };
    // SAFETY: UDMABUF_CREATE takes a `struct udmabuf_create` without pointers.
    let fd = unsafe { ioctl(dev, UDMABUF_CREATE, &mut arg) }?;
    // SAFETY: on success UDMABUF_CREATE returns a new fd that nobody else owns.
    unsafe { adopt_fd(fd) }
}

/// One range of a memfd to put into a udmabuf.
#[derive(Debug, Clone, Copy)]
pub struct UdmabufRange<'a> {
    /// The memfd (must carry `F_SEAL_SHRINK`, must not carry `F_SEAL_WRITE`).
    pub memfd: BorrowedFd<'a>,
    /// Page-aligned offset into the memfd.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}

/// `UDMABUF_CREATE_LIST` on an open `/dev/udmabuf`: one dma-buf over several memfd ranges,
/// in order. At most [`UDMABUF_LIST_LIMIT`] ranges.
pub fn udmabuf_create_list(
    dev: BorrowedFd<'_>,
    ranges: &[UdmabufRange<'_>],
) -> io::Result<OwnedFd> {
    if ranges.is_empty() || ranges.len() > UDMABUF_LIST_LIMIT {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // The header and the items as one u64-aligned buffer of native-endian words (both structs
    // are made of 8-byte groups: {flags, count}, {memfd, pad}, offset, size).
    let pair = |a: u32, b: u32| {
        let mut word = [0u8; 8];
        word[..4].copy_from_slice(&a.to_ne_bytes());
        word[4..].copy_from_slice(&b.to_ne_bytes());
        u64::from_ne_bytes(word)
    };
    let mut words = Vec::with_capacity(1 + 3 * ranges.len());
    words.push(pair(UDMABUF_FLAGS_CLOEXEC, ranges.len() as u32));
    for range in ranges {
        words.extend([pair(raw_fd_u32(range.memfd)?, 0), range.offset, range.size]);
    }
    // SAFETY: UDMABUF_CREATE_LIST reads the header and then `count` items from the pointer;
    // `words` holds exactly that (the layout above; checked against the structs' sizes in the
    // tests), is u64-aligned, outlives the call, and the kernel does not keep the pointer.
    let fd = unsafe { ioctl(dev, UDMABUF_CREATE_LIST, words.as_mut_ptr()) }?;
    // SAFETY: on success UDMABUF_CREATE_LIST returns a new fd that nobody else owns.
    unsafe { adopt_fd(fd) }
}

/// `DMA_HEAP_IOCTL_ALLOC` on an open `/dev/dma_heap/<heap>`.
pub fn dma_heap_alloc(heap: BorrowedFd<'_>, len: u64) -> io::Result<OwnedFd> {
    let mut arg = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
        heap_flags: 0,
    };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC takes a `struct dma_heap_allocation_data` without pointers.
    unsafe { ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &mut arg) }?;
    let fd = i32::try_from(arg.fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel installed a new fd for us in `arg.fd`.
    unsafe { adopt_fd(fd) }
}

/// `DRM_IOCTL_VERSION`: returns the driver name (e.g. `"vgem"`, `"msm"`, `"i915"`).
pub fn drm_driver_name(drm: BorrowedFd<'_>) -> io::Result<String> {
    let mut name = [0u8; 64];
    let mut arg = DrmVersion {
        version_major: 0,
        version_minor: 0,
        version_patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: `name` is writable for `name_len` bytes for the duration of the call; date and
    // desc have length 0 so the kernel does not write through their null pointers.
    unsafe { ioctl(drm, DRM_IOCTL_VERSION, &mut arg) }?;
    let len = arg.name_len.min(name.len());
    let raw = &name[..len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// `DRM_IOCTL_PRIME_FD_TO_HANDLE`: imports a dma-buf and returns a GEM handle in this file.
pub fn drm_prime_fd_to_handle(drm: BorrowedFd<'_>, dmabuf: BorrowedFd<'_>) -> io::Result<u32> {
    let mut arg = DrmPrimeHandle {
        handle: 0,
        flags: 0,
        fd: dmabuf.as_raw_fd(),
    };
    // SAFETY: `struct drm_prime_handle` has no pointers.
    unsafe { ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut arg) }?;
    Ok(arg.handle)
}

/// `DRM_IOCTL_PRIME_HANDLE_TO_FD` with `DRM_CLOEXEC | DRM_RDWR`: exports a GEM handle.
pub fn drm_prime_handle_to_fd(drm: BorrowedFd<'_>, handle: u32) -> io::Result<OwnedFd> {
    let mut arg = DrmPrimeHandle {
        handle,
        flags: DRM_CLOEXEC | DRM_RDWR,
        fd: -1,
    };
    // SAFETY: `struct drm_prime_handle` has no pointers.
    unsafe { ioctl(drm, DRM_IOCTL_PRIME_HANDLE_TO_FD, &mut arg) }?;
    // SAFETY: on success the kernel installed a new fd for us in `arg.fd`.
    unsafe { adopt_fd(arg.fd) }
}

/// `DRM_IOCTL_GEM_CLOSE`.
pub fn drm_gem_close(drm: BorrowedFd<'_>, handle: u32) -> io::Result<()> {
    let mut arg = DrmGemClose { handle, pad: 0 };
    // SAFETY: `struct drm_gem_close` has no pointers.
    unsafe { ioctl(drm, DRM_IOCTL_GEM_CLOSE, &mut arg) }.map(drop)
}

/// `DRM_IOCTL_MODE_CREATE_DUMB`; returns the filled struct (handle, pitch, size).
pub fn drm_mode_create_dumb(
    drm: BorrowedFd<'_>,
    width: u32,
    height: u32,
    bpp: u32,
) -> io::Result<DrmModeCreateDumb> {
    let mut arg = DrmModeCreateDumb {
        height,
        width,
        bpp,
        ..Default::default()
    };
    // SAFETY: `struct drm_mode_create_dumb` has no pointers.
    unsafe { ioctl(drm, DRM_IOCTL_MODE_CREATE_DUMB, &mut arg) }?;
    Ok(arg)
}

/// `DRM_IOCTL_MSM_GEM_INFO` with `MSM_INFO_GET_FLAGS`.
pub fn msm_gem_get_flags(drm: BorrowedFd<'_>, handle: u32) -> io::Result<u64> {
    let mut arg = DrmMsmGemInfo {
        handle,
        info: MSM_INFO_GET_FLAGS,
        ..Default::default()
    };
    // SAFETY: for GET_FLAGS the struct carries no pointer (`value` is an out value).
    unsafe { ioctl(drm, DRM_IOCTL_MSM_GEM_INFO, &mut arg) }?;
    Ok(arg.value)
}

/// `DRM_IOCTL_PANFROST_QUERY_BO_INFO` or `DRM_IOCTL_PANTHOR_BO_QUERY_INFO` (same layout).
pub fn pan_bo_query_info(
    drm: BorrowedFd<'_>,
    request: PanQuery,
    handle: u32,
) -> io::Result<DrmPanBoQueryInfo> {
    let mut arg = DrmPanBoQueryInfo {
        handle,
        ..Default::default()
    };
    let req = match request {
        PanQuery::Panfrost => DRM_IOCTL_PANFROST_QUERY_BO_INFO,
        PanQuery::Panthor => DRM_IOCTL_PANTHOR_BO_QUERY_INFO,
    };
    // SAFETY: both ioctls take the 16-byte pointer-free struct.
    unsafe { ioctl(drm, req, &mut arg) }?;
    Ok(arg)
}

/// Which of the two Arm Mali query ioctls to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanQuery {
    /// panfrost `QUERY_BO_INFO`.
    Panfrost,
    /// panthor `BO_QUERY_INFO`.
    Panthor,
}

/// `DRM_IOCTL_I915_GEM_GET_CACHING`.
pub fn i915_gem_get_caching(drm: BorrowedFd<'_>, handle: u32) -> io::Result<u32> {
    let mut arg = DrmI915GemCaching { handle, caching: 0 };
    // SAFETY: pointer-free struct.
    unsafe { ioctl(drm, DRM_IOCTL_I915_GEM_GET_CACHING, &mut arg) }?;
    Ok(arg.caching)
}

/// `DRM_IOCTL_I915_GETPARAM`.
pub fn i915_getparam(drm: BorrowedFd<'_>, param: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut arg = DrmI915Getparam {
        param,
        value: &mut value,
    };
    // SAFETY: `value` points to a live i32 for the duration of the call.
    unsafe { ioctl(drm, DRM_IOCTL_I915_GETPARAM, &mut arg) }?;
    Ok(value)
}

/// `DRM_IOCTL_AMDGPU_GEM_OP` with `AMDGPU_GEM_OP_GET_GEM_CREATE_INFO`.
pub fn amdgpu_gem_create_info(
    drm: BorrowedFd<'_>,
    handle: u32,
) -> io::Result<DrmAmdgpuGemCreateIn> {
    let mut info = DrmAmdgpuGemCreateIn::default();
    let mut arg = DrmAmdgpuGemOp {
        handle,
        op: AMDGPU_GEM_OP_GET_GEM_CREATE_INFO,
        value: (&mut info as *mut DrmAmdgpuGemCreateIn) as u64,
    };
    // SAFETY: `value` points to a live `drm_amdgpu_gem_create_in` the kernel copies into.
    unsafe { ioctl(drm, DRM_IOCTL_AMDGPU_GEM_OP, &mut arg) }?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    // Literal values as the kernel headers spell them (or as `_IOC` yields them on x86-64 and
    // arm64, for structs whose size does not depend on the pointer width).
    #[test]
    fn dma_buf_numbers_match_the_headers() {
        assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        assert_eq!(DMA_BUF_SET_NAME_A, 0x4004_6201);
        assert_eq!(DMA_BUF_SET_NAME_B, 0x4008_6201);
        assert_eq!(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0xC008_6202);
        assert_eq!(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x4008_6203);
        assert_eq!(DMA_BUF_IOCTL_INFO, 0xC010_6202);
        assert_ne!(DMA_BUF_IOCTL_INFO, DMA_BUF_IOCTL_EXPORT_SYNC_FILE);
        assert_eq!(size_of::<DmaBufInfoArg>(), 16);
        assert_eq!(size_of::<DmaBufSync>(), 8);
    }

    #[test]
    fn exporter_numbers_match_the_headers() {
        assert_eq!(size_of::<UdmabufCreate>(), 24);
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
        // The list header and items, as `udmabuf_create_list` lays them out in u64 words.
        assert_eq!(size_of::<UdmabufCreateList>(), 8);
        assert_eq!(size_of::<UdmabufCreateItem>(), 24);
        assert_eq!(UDMABUF_CREATE_LIST, 0x4008_7543);
        assert_eq!(size_of::<DmaHeapAllocationData>(), 24);
        assert_eq!(DMA_HEAP_IOCTL_ALLOC, 0xC018_4800);
    }

    #[test]
    fn drm_numbers_match_the_headers() {
        assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
        assert_eq!(DRM_IOCTL_PRIME_HANDLE_TO_FD, 0xC00C_642D);
        assert_eq!(DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xC00C_642E);
        assert_eq!(DRM_IOCTL_MODE_CREATE_DUMB, 0xC020_64B2);
        assert_eq!(DRM_IOCTL_MODE_DESTROY_DUMB, 0xC004_64B4);
        assert_eq!(DRM_IOCTL_MSM_GEM_INFO, 0xC018_6443);
        assert_eq!(DRM_IOCTL_PANFROST_QUERY_BO_INFO, 0xC010_644D);
        assert_eq!(DRM_IOCTL_PANTHOR_BO_QUERY_INFO, 0xC010_6450);
        assert_eq!(DRM_IOCTL_I915_GEM_GET_CACHING, 0xC008_6470);
        assert_eq!(DRM_IOCTL_AMDGPU_GEM_OP, 0xC010_6450);
        assert_eq!(size_of::<DrmAmdgpuGemCreateIn>(), 32);
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(size_of::<DrmVersion>(), 64);
            assert_eq!(DRM_IOCTL_VERSION, 0xC040_6400);
            assert_eq!(DRM_IOCTL_I915_GETPARAM, 0xC010_6446);
        }
    }
}
