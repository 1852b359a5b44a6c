//! Mesa's `libgbm` loaded at run time (`dlopen`), and the few of its calls the GBM allocator
//! makes, wrapped safely.
//!
//! Why at run time: the default build must allocate GPU buffers on a host with a render node
//! without a rebuild or a cargo feature, and the same binary must still build and run on a
//! host without `libgbm` (it then falls back to udmabuf or memfd). Linking `libgbm` would
//! make it a hard dependency of every build; loading it here makes it an optional one, found
//! when the GBM allocator is first asked for.
//!
//! The declarations below are written from the facts of Mesa's `gbm.h` (function signatures,
//! flag values); they are the only `unsafe` code of the GBM allocator.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::OnceLock;

use libloading::os::unix::{Library as DynamicLibrary, RTLD_LOCAL, RTLD_NOW};

/// The library's file name (Debian `libgbm1`; every distribution ships this soname).
pub const LIBGBM_SONAME: &str = "libgbm.so.1";

/// `GBM_BO_USE_SCANOUT`: the buffer may be shown on a display.
pub const BO_USE_SCANOUT: u32 = 1 << 0;
/// `GBM_BO_USE_RENDERING`: the GPU may render into the buffer.
pub const BO_USE_RENDERING: u32 = 1 << 2;
/// `GBM_BO_USE_LINEAR`: a linear (untiled) layout, readable through a CPU mapping.
pub const BO_USE_LINEAR: u32 = 1 << 4;
/// `GBM_BO_TRANSFER_WRITE`: a CPU mapping whose contents are written back.
const BO_TRANSFER_WRITE: u32 = 1 << 1;

/// `struct gbm_device` (opaque).
#[repr(C)]
struct RawDevice {
    _opaque: [u8; 0],
}

/// `struct gbm_bo` (opaque).
#[repr(C)]
struct RawBo {
    _opaque: [u8; 0],
}

/// The entry points used, resolved once when the library is loaded.
struct Entry {
    create_device: unsafe extern "C" fn(c_int) -> *mut RawDevice,
    device_destroy: unsafe extern "C" fn(*mut RawDevice),
    device_get_backend_name: unsafe extern "C" fn(*mut RawDevice) -> *const c_char,
    device_is_format_supported: unsafe extern "C" fn(*mut RawDevice, u32, u32) -> c_int,
    bo_create: unsafe extern "C" fn(*mut RawDevice, u32, u32, u32, u32) -> *mut RawBo,
    bo_destroy: unsafe extern "C" fn(*mut RawBo),
    bo_map: unsafe extern "C" fn(
        *mut RawBo,
        u32,
        u32,
        u32,
        u32,
        u32,
        *mut u32,
        *mut *mut c_void,
    ) -> *mut c_void,
    bo_unmap: unsafe extern "C" fn(*mut RawBo, *mut c_void),
    bo_get_fd: unsafe extern "C" fn(*mut RawBo) -> c_int,
    bo_get_plane_count: unsafe extern "C" fn(*mut RawBo) -> c_int,
    bo_get_stride_for_plane: unsafe extern "C" fn(*mut RawBo, c_int) -> u32,
    bo_get_offset: unsafe extern "C" fn(*mut RawBo, c_int) -> u32,
    bo_get_modifier: unsafe extern "C" fn(*mut RawBo) -> u64,
}

/// `libgbm` could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// `dlopen` failed: the library is not installed (or not loadable).
    #[error("cannot load {name}: {reason} (install Mesa's libgbm, Debian package libgbm1)")]
    NotFound {
        /// The name given to `dlopen`.
        name: String,
        /// `dlerror()`'s text.
        reason: String,
    },
    /// The library lacks a function this allocator calls (a libgbm older than Mesa 18).
    #[error("{name} has no {symbol}: {reason}")]
    MissingSymbol {
        /// The name given to `dlopen`.
        name: String,
        /// The missing function.
        symbol: &'static str,
        /// `dlerror()`'s text.
        reason: String,
    },
}

/// A loaded `libgbm`. It stays loaded while any [`Device`] made from it exists (devices
/// borrow it); the process-wide one ([`Libgbm::system`]) is never unloaded.
pub struct Libgbm {
    entry: Entry,
    name: String,
    // Last field: dropped (dlclose) after nothing can call through `entry` any more.
    _library: DynamicLibrary,
}

impl std::fmt::Debug for Libgbm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libgbm")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Libgbm {
    /// Loads the library `name` (a soname searched the usual `dlopen` way, or a path) and
    /// resolves every function the allocator uses.
    pub fn load(name: &str) -> Result<Self, LoadError> {
        // SAFETY: loading runs the library's initialisers. libgbm's are Mesa's ordinary
        // constructors (no process-wide state is changed that Rust relies on); a library of
        // another name is the caller's explicit choice (tests pass missing names only).
        let library =
            unsafe { DynamicLibrary::open(Some(name), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
                LoadError::NotFound {
                    name: name.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        macro_rules! resolve {
            ($symbol:literal) => {{
                let symbol = {
                    // SAFETY: the symbol's type is the one `gbm.h` declares for it (each
                    // field of `Entry` mirrors that prototype), and the pointer is only
                    // called while `library` is loaded: `Libgbm` owns the library and drops
                    // it last.
                    unsafe { library.get(concat!($symbol, "\0").as_bytes()) }
                }
                .map_err(|e| LoadError::MissingSymbol {
                    name: name.to_owned(),
                    symbol: $symbol,
                    reason: e.to_string(),
                })?;
                *symbol
            }};
        }
        let entry = Entry {
            create_device: resolve!("gbm_create_device"),
            device_destroy: resolve!("gbm_device_destroy"),
            device_get_backend_name: resolve!("gbm_device_get_backend_name"),
            device_is_format_supported: resolve!("gbm_device_is_format_supported"),
            bo_create: resolve!("gbm_bo_create"),
            bo_destroy: resolve!("gbm_bo_destroy"),
            bo_map: resolve!("gbm_bo_map"),
            bo_unmap: resolve!("gbm_bo_unmap"),
            bo_get_fd: resolve!("gbm_bo_get_fd"),
            bo_get_plane_count: resolve!("gbm_bo_get_plane_count"),
            bo_get_stride_for_plane: resolve!("gbm_bo_get_stride_for_plane"),
            bo_get_offset: resolve!("gbm_bo_get_offset"),
            bo_get_modifier: resolve!("gbm_bo_get_modifier"),
        };
        Ok(Libgbm {
            entry,
            name: name.to_owned(),
            _library: library,
        })
    }

    /// The process's `libgbm` ([`LIBGBM_SONAME`]), loaded on first use and kept for the
    /// life of the process (so that no `dlopen` happens after the sandbox is in place).
    pub fn system() -> Result<&'static Libgbm, LoadError> {
        static SYSTEM: OnceLock<Result<Libgbm, LoadError>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| Libgbm::load(LIBGBM_SONAME))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The name the library was loaded by.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A GBM device (`gbm_create_device`) on an open DRM node, which it keeps open.
pub struct Device<'lib> {
    lib: &'lib Libgbm,
    raw: NonNull<RawDevice>,
    // Dropped after `gbm_device_destroy` (Drop below): the device uses the fd until then.
    file: File,
}

// SAFETY: a gbm_device has no thread affinity: Mesa only requires that one thread uses it at
// a time, which `&mut`/ownership gives (Device is not Sync: shared use from two threads is
// impossible).
unsafe impl Send for Device<'_> {}

impl std::fmt::Debug for Device<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("fd", &self.file.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl<'lib> Device<'lib> {
    /// `gbm_create_device` on `file` (a DRM node opened read-write).
    pub fn new(lib: &'lib Libgbm, file: File) -> io::Result<Self> {
        // SAFETY: the fd is open (owned by `file`, which the device keeps until after
        // gbm_device_destroy); gbm_create_device does not take ownership of it.
        let raw = unsafe { (lib.entry.create_device)(file.as_raw_fd()) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            let os = io::Error::last_os_error();
            io::Error::new(
                os.kind(),
                format!("gbm_create_device failed (not a DRM device Mesa can drive?): {os}"),
            )
        })?;
        Ok(Device { lib, raw, file })
    }

    /// The GBM backend's name (`drm` for Mesa's DRI backend).
    pub fn backend_name(&self) -> String {
        // SAFETY: `raw` is a live device; the returned string is a static string owned by
        // the backend (or NULL), copied before returning.
        let name = unsafe { (self.lib.entry.device_get_backend_name)(self.raw.as_ptr()) };
        if name.is_null() {
            return String::new();
        }
        // SAFETY: non-NULL, NUL-terminated, valid while the device lives (it does here).
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }

    /// `gbm_device_is_format_supported`.
    pub fn is_format_supported(&self, format: u32, usage: u32) -> bool {
        // SAFETY: `raw` is a live device; plain integer arguments.
        let supported = unsafe {
            (self.lib.entry.device_is_format_supported)(self.raw.as_ptr(), format, usage)
        };
        supported != 0
    }

    /// `gbm_bo_create`: a buffer of `width` x `height` pixels of DRM `format`.
    pub fn create_bo(
        &self,
        width: u32,
        height: u32,
        format: u32,
        usage: u32,
    ) -> io::Result<Bo<'_, 'lib>> {
        // SAFETY: `raw` is a live device; plain integer arguments.
        let raw =
            unsafe { (self.lib.entry.bo_create)(self.raw.as_ptr(), width, height, format, usage) };
        let raw = NonNull::new(raw).ok_or_else(io::Error::last_os_error)?;
        Ok(Bo { device: self, raw })
    }
}

impl AsFd for Device<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for Device<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from gbm_create_device and is destroyed once; every Bo borrows
        // the device, so none outlives it.
        unsafe { (self.lib.entry.device_destroy)(self.raw.as_ptr()) }
    }
}

/// A GBM buffer object; destroyed on drop (an exported dma-buf fd stays valid).
pub struct Bo<'dev, 'lib> {
    device: &'dev Device<'lib>,
    raw: NonNull<RawBo>,
}

impl Bo<'_, '_> {
    /// Fills the whole buffer with zeros through a GBM CPU mapping (`gbm_bo_map` of the
    /// `width` x `height` image, `stride * height` bytes written).
    pub fn zero(&mut self, width: u32, height: u32) -> io::Result<()> {
        let entry = &self.device.lib.entry;
        let mut stride: u32 = 0;
        let mut map_data: *mut c_void = std::ptr::null_mut();
        // SAFETY: `raw` is a live buffer of at least width x height (it was created with
        // them); `stride` and `map_data` are valid out-pointers for the call.
        let ptr = unsafe {
            (entry.bo_map)(
                self.raw.as_ptr(),
                0,
                0,
                width,
                height,
                BO_TRANSFER_WRITE,
                &mut stride,
                &mut map_data,
            )
        };
        if ptr.is_null() || ptr as isize == -1 {
            return Err(io::Error::other(format!(
                "gbm_bo_map for zeroing: {}",
                io::Error::last_os_error()
            )));
        }
        let len = (stride as usize).checked_mul(height as usize);
        if let Some(len) = len {
            // SAFETY: gbm_bo_map returned a writable mapping of the image: `height` rows of
            // `stride` bytes starting at `ptr`, valid until gbm_bo_unmap below. Nothing else
            // references this memory yet (the buffer was just created).
            unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, len) };
        }
        // SAFETY: `map_data` is the cookie gbm_bo_map returned for this buffer; unmapped once.
        unsafe { (entry.bo_unmap)(self.raw.as_ptr(), map_data) };
        if len.is_none() {
            return Err(io::Error::other(format!(
                "gbm_bo_map: stride {stride} x {height} rows overflows"
            )));
        }
        Ok(())
    }

    /// `gbm_bo_get_fd`: a new dma-buf fd for the buffer (close-on-exec).
    pub fn export(&self) -> io::Result<OwnedFd> {
        // SAFETY: `raw` is a live buffer.
        let fd = unsafe { (self.device.lib.entry.bo_get_fd)(self.raw.as_ptr()) };
        if fd < 0 {
            return Err(io::Error::other(format!(
                "gbm_bo_get_fd: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: gbm_bo_get_fd returns a new descriptor owned by the caller.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        Ok(fd)
    }

    /// `(offset, stride)` of each plane (at most 4, GBM's `GBM_MAX_PLANES`).
    pub fn planes(&self) -> Vec<(u32, u32)> {
        let entry = &self.device.lib.entry;
        // SAFETY: `raw` is a live buffer.
        let count = unsafe { (entry.bo_get_plane_count)(self.raw.as_ptr()) }.clamp(1, 4);
        (0..count)
            .map(|plane| {
                // SAFETY: `raw` is a live buffer and `plane` < its plane count.
                unsafe {
                    (
                        (entry.bo_get_offset)(self.raw.as_ptr(), plane),
                        (entry.bo_get_stride_for_plane)(self.raw.as_ptr(), plane),
                    )
                }
            })
            .collect()
    }

    /// `gbm_bo_get_modifier`.
    pub fn modifier(&self) -> u64 {
        // SAFETY: `raw` is a live buffer.
        unsafe { (self.device.lib.entry.bo_get_modifier)(self.raw.as_ptr()) }
    }
}

impl Drop for Bo<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from gbm_bo_create on this device (still alive: borrowed) and is
        // destroyed once.
        unsafe { (self.device.lib.entry.bo_destroy)(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let err = Libgbm::load("libgbm-not-installed.so.1").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("libgbm-not-installed.so.1"), "{text}");
        assert!(text.contains("libgbm1"), "{text}");
    }

    #[test]
    fn a_library_without_gbm_functions_is_refused() {
        // libc is loadable everywhere and has none of the gbm_* functions.
        let err = Libgbm::load("libc.so.6").unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::MissingSymbol {
                    symbol: "gbm_create_device",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_system_libgbm_loads() {
        // CI installs libgbm1 (.ci/test); without it this test says what to install.
        let lib = Libgbm::system().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lib.name(), LIBGBM_SONAME);
    }

    #[test]
    fn gbm_create_device_refuses_a_memfd() {
        let lib = Libgbm::system().unwrap_or_else(|e| panic!("{e}"));
        let fd = rustix::fs::memfd_create("not-drm", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let err = Device::new(lib, File::from(fd)).unwrap_err();
        assert!(
            err.to_string().contains("gbm_create_device failed"),
            "{err}"
        );
    }

    #[test]
    fn a_character_device_that_is_not_drm_gives_no_buffer() {
        // Mesa falls back to its software (kms_swrast) device for a node it cannot identify,
        // so gbm_create_device may succeed on /dev/null (with Mesa's DRI drivers installed);
        // allocating must then fail, since there is no DRM behind it.
        let lib = Libgbm::system().unwrap_or_else(|e| panic!("{e}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        match Device::new(lib, file) {
            Err(e) => assert!(e.to_string().contains("gbm_create_device"), "{e}"),
            Ok(device) => {
                assert!(device.as_fd().as_raw_fd() >= 0);
                let _ = device.backend_name();
                assert!(device
                    .create_bo(
                        64,
                        64,
                        crate::device::ports::fourcc::XRGB8888,
                        BO_USE_LINEAR
                    )
                    .is_err());
            }
        }
    }
}
