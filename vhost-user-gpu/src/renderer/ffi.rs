//! The raw virglrenderer ABI, loaded at run time, and the one instance a process may have.
//!
//! The only `unsafe` of `crate::renderer` lives here. The declarations are written from the
//! facts of `virglrenderer.h` as shipped by 0.10.4 (Debian bookworm) and 1.x (trixie 1.1.0,
//! sid 1.3.0): only entry points present in 0.10.4 are required; newer ones are looked up
//! at load and used when present (`virgl_set_log_callback`, 1.0). Layout differences between
//! the versions are handled where they matter:
//!
//! - `struct virgl_renderer_resource_info` gained a trailing `int fd` in 1.0; we always pass
//!   the larger layout, so that a 1.x library never writes past our struct;
//! - the callbacks table is passed with version 3 (context fences and the render-server
//!   socket), which both versions accept (they take 1..=4).
//!
//! Every buffer virglrenderer keeps a pointer to (iovec arrays of attached backings, the
//! callbacks table, the cookie) is owned by [`Instance`] and outlives the library's use of
//! it: backings are detached before they are dropped, and the callbacks live until
//! `virgl_renderer_cleanup`.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::device::ports::{GuestMemory, RendererError};

/// `virgl_renderer_init` flags (`VIRGL_RENDERER_*`).
pub mod flags {
    /// Use EGL for the GL winsys.
    pub const USE_EGL: i32 = 1 << 0;
    /// Wait for GPU fences on a library thread and signal an eventfd (the poll fds).
    pub const THREAD_SYNC: i32 = 1 << 1;
    /// EGL without a window system (`EGL_MESA_platform_surfaceless`).
    pub const USE_SURFACELESS: i32 = 1 << 3;
    /// Use GLES contexts instead of desktop GL.
    pub const USE_GLES: i32 = 1 << 4;
    /// Blobs must be exportable as file descriptors (multi-process VMMs).
    pub const USE_EXTERNAL_BLOB: i32 = 1 << 5;
    /// Enable the venus (Vulkan) renderer.
    pub const VENUS: i32 = 1 << 6;
    /// Disable the virgl (OpenGL) renderer.
    pub const NO_VIRGL: i32 = 1 << 7;
    /// Run venus contexts in the render server.
    pub const RENDER_SERVER: i32 = 1 << 9;
}

/// `VIRGL_RENDERER_BLOB_FD_TYPE_*`: what `virgl_renderer_resource_export_blob` returned.
pub mod fd_type {
    /// A dma-buf.
    pub const DMABUF: u32 = 1;
    /// An opaque fd (Vulkan `VK_KHR_external_memory_fd`): what it is, only the exporter knows.
    pub const OPAQUE: u32 = 2;
    /// Shared memory (a memfd).
    pub const SHM: u32 = 3;
}

/// Version of the callbacks table we pass: 3 has `write_context_fence` and `get_server_fd`.
const CALLBACKS_VERSION: c_int = 3;

/// The render server protocol version `get_server_fd` is asked for (0: a connected
/// `SOCK_SEQPACKET` socket).
const RENDER_SERVER_VERSION: u32 = 0;

/// `struct virgl_renderer_callbacks` up to version 3 (`get_egl_display`, v4, is left out:
/// the library reads it only when the version says it is there).
#[repr(C)]
struct Callbacks {
    version: c_int,
    write_fence: Option<unsafe extern "C" fn(*mut c_void, u32)>,
    create_gl_context: Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> *mut c_void>,
    destroy_gl_context: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
    make_current: Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int>,
    get_drm_fd: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    write_context_fence: Option<unsafe extern "C" fn(*mut c_void, u32, u32, u64)>,
    get_server_fd: Option<unsafe extern "C" fn(*mut c_void, u32) -> c_int>,
}

/// `struct virgl_renderer_resource_create_args`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceCreateArgs {
    /// Resource id.
    pub handle: u32,
    /// Gallium `pipe_texture_target`.
    pub target: u32,
    /// virgl format (`VIRGL_FORMAT_*`).
    pub format: u32,
    /// `VIRGL_BIND_*`.
    pub bind: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Depth.
    pub depth: u32,
    /// Array size.
    pub array_size: u32,
    /// Last mip level.
    pub last_level: u32,
    /// Sample count.
    pub nr_samples: u32,
    /// `VIRGL_RESOURCE_FLAG_*`.
    pub flags: u32,
}

/// `struct virgl_box`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirglBox {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Front (layer).
    pub z: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Depth.
    pub d: u32,
}

/// `struct virgl_renderer_resource_info` with 1.0's trailing `fd` (0.10.4 leaves it alone).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawResourceInfo {
    handle: u32,
    virgl_format: u32,
    width: u32,
    height: u32,
    depth: u32,
    flags: u32,
    tex_id: u32,
    stride: u32,
    drm_fourcc: c_int,
    fd: c_int,
}

/// What `virgl_renderer_resource_get_info` says about a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// virgl format.
    pub virgl_format: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Depth.
    pub depth: u32,
    /// `VIRGL_RESOURCE_FLAG_*` (bit 0: Y_0_TOP).
    pub flags: u32,
    /// GL texture name (for `get_fd_for_texture2`).
    pub tex_id: u32,
    /// Row stride in bytes.
    pub stride: u32,
    /// DRM fourcc, 0 when the library does not know one.
    pub drm_fourcc: u32,
}

/// `struct virgl_renderer_resource_create_blob_args`.
#[repr(C)]
struct RawCreateBlobArgs {
    res_handle: u32,
    ctx_id: u32,
    blob_mem: u32,
    blob_flags: u32,
    blob_id: u64,
    size: u64,
    iovecs: *const libc::iovec,
    num_iovs: u32,
}

/// What [`Instance::create_blob`] is asked for.
#[derive(Debug, Clone, Copy)]
pub struct CreateBlobArgs {
    /// Resource id.
    pub res_handle: u32,
    /// Context the blob comes from (0 for GUEST blobs).
    pub ctx_id: u32,
    /// `VIRGL_RENDERER_BLOB_MEM_*` (same values as virtio-gpu's).
    pub blob_mem: u32,
    /// `VIRGL_RENDERER_BLOB_FLAG_*` (same values as virtio-gpu's).
    pub blob_flags: u32,
    /// The context's id for the allocation.
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
}

type LogCallback = unsafe extern "C" fn(c_int, *const c_char, *mut c_void);
type FreeDataCallback = unsafe extern "C" fn(*mut c_void);

/// The entry points we use, looked up once.
struct Symbols {
    init: unsafe extern "C" fn(*mut c_void, c_int, *mut Callbacks) -> c_int,
    cleanup: unsafe extern "C" fn(*mut c_void),
    poll: unsafe extern "C" fn(),
    get_poll_fd: unsafe extern "C" fn() -> c_int,
    get_cap_set: unsafe extern "C" fn(u32, *mut u32, *mut u32),
    fill_caps: unsafe extern "C" fn(u32, u32, *mut c_void),
    context_create_with_flags: unsafe extern "C" fn(u32, u32, u32, *const c_char) -> c_int,
    context_destroy: unsafe extern "C" fn(u32),
    ctx_attach_resource: unsafe extern "C" fn(c_int, c_int),
    ctx_detach_resource: unsafe extern "C" fn(c_int, c_int),
    resource_create: unsafe extern "C" fn(*mut ResourceCreateArgs, *mut libc::iovec, u32) -> c_int,
    resource_unref: unsafe extern "C" fn(u32),
    resource_attach_iov: unsafe extern "C" fn(c_int, *mut libc::iovec, c_int) -> c_int,
    resource_detach_iov: unsafe extern "C" fn(c_int, *mut *mut libc::iovec, *mut c_int),
    transfer_read_iov: unsafe extern "C" fn(
        u32,
        u32,
        u32,
        u32,
        u32,
        *mut VirglBox,
        u64,
        *mut libc::iovec,
        c_int,
    ) -> c_int,
    transfer_write_iov: unsafe extern "C" fn(
        u32,
        u32,
        c_int,
        u32,
        u32,
        *mut VirglBox,
        u64,
        *mut libc::iovec,
        u32,
    ) -> c_int,
    submit_cmd: unsafe extern "C" fn(*mut c_void, c_int, c_int) -> c_int,
    create_fence: unsafe extern "C" fn(c_int, u32) -> c_int,
    context_create_fence: unsafe extern "C" fn(u32, u32, u32, u64) -> c_int,
    context_get_poll_fd: unsafe extern "C" fn(u32) -> c_int,
    resource_get_info: unsafe extern "C" fn(c_int, *mut RawResourceInfo) -> c_int,
    resource_create_blob: unsafe extern "C" fn(*const RawCreateBlobArgs) -> c_int,
    resource_export_blob: unsafe extern "C" fn(u32, *mut u32, *mut c_int) -> c_int,
    resource_get_map_info: unsafe extern "C" fn(u32, *mut u32) -> c_int,
    resource_map: unsafe extern "C" fn(u32, *mut *mut c_void, *mut u64) -> c_int,
    resource_unmap: unsafe extern "C" fn(u32) -> c_int,
    get_fd_for_texture2: unsafe extern "C" fn(u32, *mut c_int, *mut c_int, *mut c_int) -> c_int,
    /// 1.0 and newer.
    set_log_callback:
        Option<unsafe extern "C" fn(Option<LogCallback>, *mut c_void, Option<FreeDataCallback>)>,
}

/// Why the library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `dlopen` failed (not installed, wrong architecture...).
    #[error("cannot load {path}: {source} (Debian: apt-get install libvirglrenderer1)")]
    Open {
        /// What was asked for.
        path: PathBuf,
        /// The loader's message.
        source: libloading::Error,
    },
    /// A required entry point is missing (a library older than 0.10.4, or not virglrenderer).
    #[error("{path} has no `{symbol}`: virglrenderer 0.10.4 or newer is needed")]
    Symbol {
        /// The library.
        path: PathBuf,
        /// The missing entry point.
        symbol: &'static str,
    },
}

/// A loaded libvirglrenderer (not yet initialised).
pub struct Library {
    sym: Symbols,
    path: PathBuf,
    // Dropped last: the function pointers in `sym` point into it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("has_log_callback", &self.sym.set_log_callback.is_some())
            .finish()
    }
}

/// The soname Debian's `libvirglrenderer1` ships (0.10.4 and 1.x alike).
pub const DEFAULT_LIBRARY: &str = "libvirglrenderer.so.1";

macro_rules! required {
    ($lib:expr, $path:expr, $name:literal) => {{
        // SAFETY: the symbol is looked up by its C name and given the type its header
        // declares for it (see the field's type in `Symbols`); the pointer is copied out and
        // used only while `_lib` keeps the library loaded.
        let sym = unsafe { $lib.get(concat!($name, "\0").as_bytes()) };
        *sym.map_err(|_| LoadError::Symbol {
            path: $path.to_path_buf(),
            symbol: $name,
        })?
    }};
}

macro_rules! optional {
    ($lib:expr, $name:literal) => {{
        // SAFETY: as for `required!`; a missing symbol gives `None`.
        let sym = unsafe { $lib.get(concat!($name, "\0").as_bytes()) };
        sym.ok().map(|s| *s)
    }};
}

impl Library {
    /// Loads `path` (a soname is searched the usual way) and looks up every entry point.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        // SAFETY: loading runs the library's initialisers. libvirglrenderer's only set up
        // its own static state (no threads, no handlers); the caller chose the path.
        let lib = unsafe { libloading::Library::new(path.as_os_str()) }.map_err(|source| {
            LoadError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let sym = Symbols {
            init: required!(lib, path, "virgl_renderer_init"),
            cleanup: required!(lib, path, "virgl_renderer_cleanup"),
            poll: required!(lib, path, "virgl_renderer_poll"),
            get_poll_fd: required!(lib, path, "virgl_renderer_get_poll_fd"),
            get_cap_set: required!(lib, path, "virgl_renderer_get_cap_set"),
            fill_caps: required!(lib, path, "virgl_renderer_fill_caps"),
            context_create_with_flags: required!(
                lib,
                path,
                "virgl_renderer_context_create_with_flags"
            ),
            context_destroy: required!(lib, path, "virgl_renderer_context_destroy"),
            ctx_attach_resource: required!(lib, path, "virgl_renderer_ctx_attach_resource"),
            ctx_detach_resource: required!(lib, path, "virgl_renderer_ctx_detach_resource"),
            resource_create: required!(lib, path, "virgl_renderer_resource_create"),
            resource_unref: required!(lib, path, "virgl_renderer_resource_unref"),
            resource_attach_iov: required!(lib, path, "virgl_renderer_resource_attach_iov"),
            resource_detach_iov: required!(lib, path, "virgl_renderer_resource_detach_iov"),
            transfer_read_iov: required!(lib, path, "virgl_renderer_transfer_read_iov"),
            transfer_write_iov: required!(lib, path, "virgl_renderer_transfer_write_iov"),
            submit_cmd: required!(lib, path, "virgl_renderer_submit_cmd"),
            create_fence: required!(lib, path, "virgl_renderer_create_fence"),
            context_create_fence: required!(lib, path, "virgl_renderer_context_create_fence"),
            context_get_poll_fd: required!(lib, path, "virgl_renderer_context_get_poll_fd"),
            resource_get_info: required!(lib, path, "virgl_renderer_resource_get_info"),
            resource_create_blob: required!(lib, path, "virgl_renderer_resource_create_blob"),
            resource_export_blob: required!(lib, path, "virgl_renderer_resource_export_blob"),
            resource_get_map_info: required!(lib, path, "virgl_renderer_resource_get_map_info"),
            resource_map: required!(lib, path, "virgl_renderer_resource_map"),
            resource_unmap: required!(lib, path, "virgl_renderer_resource_unmap"),
            get_fd_for_texture2: required!(lib, path, "virgl_renderer_get_fd_for_texture2"),
            set_log_callback: optional!(lib, "virgl_set_log_callback"),
        };
        Ok(Library {
            sym,
            path: path.to_path_buf(),
            _lib: lib,
        })
    }

    /// The path or soname it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the library has 1.0's log callback (0.10.4 prints to stderr itself).
    pub fn has_log_callback(&self) -> bool {
        self.sym.set_log_callback.is_some()
    }
}

/// Guest memory pinned for the renderer: an iovec array over host mappings of guest
/// memory, and the guest memory handle that keeps those mappings alive. The frontend may
/// replace the memory table at any time (QEMU does after every `SHMEM_MAP`); the old
/// mappings stay valid for as long as this value holds them.
pub struct PinnedIovecs {
    iovs: Box<[libc::iovec]>,
    _memory: GuestMemory,
}

impl std::fmt::Debug for PinnedIovecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedIovecs")
            .field("pieces", &self.iovs.len())
            .field("bytes", &self.len())
            .finish()
    }
}

// SAFETY: the iovecs point into the guest memory mappings owned (through `Arc`s) by
// `_memory`, which is `Send`; nothing here is tied to a thread.
unsafe impl Send for PinnedIovecs {}

/// A guest range outside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest range {addr:#x}+{len:#x} is not in guest memory")]
pub struct OutsideGuestMemory {
    /// Guest physical address.
    pub addr: u64,
    /// Length.
    pub len: u64,
}

impl PinnedIovecs {
    /// Resolves guest physical ranges to host iovecs (one or more per range, split at
    /// memory-region boundaries).
    pub fn from_guest(
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<Self, OutsideGuestMemory> {
        let mut iovs = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            let outside = OutsideGuestMemory { addr, len };
            let count = usize::try_from(len).map_err(|_| outside)?;
            if addr.checked_add(len).is_none() {
                return Err(outside);
            }
            let mut covered = 0usize;
            for slice in memory.get_slices(GuestAddress(addr), count) {
                let slice = slice.map_err(|_| outside)?;
                iovs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
                covered += slice.len();
            }
            if covered != count {
                return Err(outside);
            }
        }
        Ok(PinnedIovecs {
            iovs: iovs.into_boxed_slice(),
            _memory: memory.clone(),
        })
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.iovs.iter().map(|v| v.iov_len as u64).sum()
    }
}

/// What the library reported through the callbacks since the last [`Instance::take_events`].
#[derive(Debug, Default)]
pub struct CallbackEvents {
    /// `write_fence`: the newest retired fence on the global (context 0) timeline.
    pub global_fences: Vec<u32>,
    /// `write_context_fence`: (context, ring, fence id) in retirement order.
    pub context_fences: Vec<(u32, u32, u64)>,
}

/// State the callbacks reach through the cookie. Lives in a `Box` owned by the instance,
/// so its address is stable for as long as the library may call back.
#[derive(Default)]
struct CookieState {
    events: RefCell<CallbackEvents>,
    /// The render server socket handed over on `get_server_fd` (taken once).
    server_fd: RefCell<Option<OwnedFd>>,
}

/// The cookie is a `*const CookieState`; the callbacks run on the thread that called into
/// the library (we never set `ASYNC_FENCE_CB`), so the `RefCell`s are never shared.
fn cookie_state<'a>(cookie: *mut c_void) -> Option<&'a CookieState> {
    // SAFETY: the library passes back the cookie we gave `virgl_renderer_init`, a pointer
    // to the `CookieState` boxed in the live `Instance` (callbacks only run inside calls
    // made through that instance, so the box is alive); null is checked.
    unsafe { cookie.cast::<CookieState>().as_ref() }
}

unsafe extern "C" fn on_write_fence(cookie: *mut c_void, fence: u32) {
    if let Some(state) = cookie_state(cookie) {
        if let Ok(mut events) = state.events.try_borrow_mut() {
            events.global_fences.push(fence);
        }
    }
}

unsafe extern "C" fn on_write_context_fence(
    cookie: *mut c_void,
    ctx_id: u32,
    ring_idx: u32,
    fence_id: u64,
) {
    if let Some(state) = cookie_state(cookie) {
        if let Ok(mut events) = state.events.try_borrow_mut() {
            events.context_fences.push((ctx_id, ring_idx, fence_id));
        }
    }
}

unsafe extern "C" fn on_get_server_fd(cookie: *mut c_void, version: u32) -> c_int {
    let Some(state) = cookie_state(cookie) else {
        return -1;
    };
    if version != RENDER_SERVER_VERSION {
        log::error!("virglrenderer asks for render server protocol {version}; we speak 0");
        return -1;
    }
    match state
        .server_fd
        .try_borrow_mut()
        .ok()
        .and_then(|mut s| s.take())
    {
        // The library takes ownership of the socket.
        Some(fd) => fd.into_raw_fd(),
        None => -1,
    }
}

unsafe extern "C" fn on_log(level: c_int, message: *const c_char, _user: *mut c_void) {
    if message.is_null() {
        return;
    }
    // SAFETY: the library passes a NUL-terminated message valid for the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let text = text.trim_end();
    // enum virgl_log_level_flags: DEBUG 0, INFO 1, WARNING 2, ERROR 3. What the library
    // reports is mostly about the guest's streams and resources (a malformed command buffer
    // is an error line per command), so it goes through the guest-caused line limiter.
    let level = match level {
        0 => log::Level::Debug,
        1 => log::Level::Info,
        2 => log::Level::Warn,
        _ => log::Level::Error,
    };
    crate::guest_log::GUEST_LOG.log("virglrenderer", level, format_args!("{text}"));
}

/// A call into the library failed; the value is what it returned (an errno, with either
/// sign depending on the entry point and version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed ({code})")]
pub struct CallError {
    /// The entry point.
    pub call: &'static str,
    /// Its return value.
    pub code: i32,
}

impl From<CallError> for RendererError {
    fn from(e: CallError) -> Self {
        RendererError::Failed(format!("virglrenderer: {e}"))
    }
}

impl From<LoadError> for RendererError {
    fn from(e: LoadError) -> Self {
        RendererError::Unavailable(e.to_string())
    }
}

impl From<OutsideGuestMemory> for RendererError {
    fn from(e: OutsideGuestMemory) -> Self {
        RendererError::OutsideGuestMemory {
            addr: e.addr,
            len: e.len,
        }
    }
}

fn check(call: &'static str, ret: c_int) -> Result<(), CallError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(CallError { call, code: ret })
    }
}

/// Whether an [`Instance`] exists in this process: virglrenderer keeps one global state.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Why [`Instance::init`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Another instance is alive in this process (virglrenderer has one global state).
    #[error("virglrenderer is already initialised in this process")]
    Busy,
    /// `virgl_renderer_init` failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// The process's initialised virglrenderer. Not `Send`: the library's GL contexts are
/// current on the thread that initialised it, and every call must come from there.
pub struct Instance {
    lib: Library,
    cookie: Box<CookieState>,
    _callbacks: Box<Callbacks>,
    /// Backings the library holds pointers to, by resource id.
    pinned: HashMap<u32, PinnedIovecs>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("lib", &self.lib)
            .field("pinned", &self.pinned.len())
            .finish()
    }
}

impl Instance {
    /// `virgl_renderer_init` with `flags`; `server` is the render server socket handed to
    /// the library when it asks (with [`flags::RENDER_SERVER`]); without one the library
    /// forks and execs the server itself.
    pub fn init(lib: Library, flags: i32, server: Option<OwnedFd>) -> Result<Self, InitError> {
        if ACTIVE.swap(true, Ordering::AcqRel) {
            return Err(InitError::Busy);
        }
        let cookie = Box::new(CookieState::default());
        *cookie.server_fd.borrow_mut() = server;
        let mut callbacks = Box::new(Callbacks {
            version: CALLBACKS_VERSION,
            write_fence: Some(on_write_fence),
            create_gl_context: None,
            destroy_gl_context: None,
            make_current: None,
            get_drm_fd: None,
            write_context_fence: Some(on_write_context_fence),
            get_server_fd: Some(on_get_server_fd),
        });
        if let Some(set_log) = lib.sym.set_log_callback {
            // SAFETY: `on_log` matches `virgl_log_callback_type` and needs no user data.
            unsafe { set_log(Some(on_log), std::ptr::null_mut(), None) };
        }
        let cookie_ptr: *const CookieState = &*cookie;
        // SAFETY: the cookie and the callbacks table are boxed and owned by the returned
        // instance, which calls `virgl_renderer_cleanup` before dropping them; on failure
        // the library has cleaned up itself (its `fail:` path) and keeps no pointer.
        let ret = unsafe { (lib.sym.init)(cookie_ptr.cast_mut().cast(), flags, &mut *callbacks) };
        if ret != 0 {
            ACTIVE.store(false, Ordering::Release);
            return Err(InitError::Call(CallError {
                call: "virgl_renderer_init",
                code: ret,
            }));
        }
        Ok(Instance {
            lib,
            cookie,
            _callbacks: callbacks,
            pinned: HashMap::new(),
            _not_send: PhantomData,
        })
    }

    /// The loaded library.
    pub fn library(&self) -> &Library {
        &self.lib
    }

    /// Takes what the callbacks reported.
    pub fn take_events(&self) -> CallbackEvents {
        std::mem::take(&mut *self.cookie.events.borrow_mut())
    }

    /// `virgl_renderer_get_cap_set`: (max version, max size); (0, 0) when not served.
    pub fn capset_info(&self, set: u32) -> (u32, u32) {
        let (mut version, mut size) = (0u32, 0u32);
        // SAFETY: two valid out-pointers.
        unsafe { (self.lib.sym.get_cap_set)(set, &mut version, &mut size) };
        (version, size)
    }

    /// `virgl_renderer_fill_caps` into a buffer of the set's size.
    pub fn fill_caps(&self, set: u32, version: u32) -> Vec<u8> {
        let (_, size) = self.capset_info(set);
        if size == 0 {
            return Vec::new();
        }
        let mut caps = vec![0u8; size as usize];
        // SAFETY: the library writes at most the set's max size, which `caps` holds.
        unsafe { (self.lib.sym.fill_caps)(set, version, caps.as_mut_ptr().cast()) };
        caps
    }

    /// `virgl_renderer_context_create_with_flags` (the capset id is the flags' low byte).
    pub fn context_create(&self, ctx_id: u32, capset: u32, name: &[u8]) -> Result<(), CallError> {
        let len = u32::try_from(name.len()).unwrap_or(u32::MAX).min(64);
        // SAFETY: `name` is valid for `len` bytes (the library copies it, it needs no NUL).
        let ret = unsafe {
            (self.lib.sym.context_create_with_flags)(
                ctx_id,
                capset & 0xff,
                len,
                name.as_ptr().cast(),
            )
        };
        check("virgl_renderer_context_create_with_flags", ret)
    }

    /// `virgl_renderer_context_destroy`.
    pub fn context_destroy(&self, ctx_id: u32) {
        // SAFETY: plain value argument; unknown ids are ignored by the library.
        unsafe { (self.lib.sym.context_destroy)(ctx_id) }
    }

    /// `virgl_renderer_ctx_attach_resource`.
    pub fn ctx_attach(&self, ctx_id: u32, res_id: u32) {
        // SAFETY: plain values; unknown ids are ignored by the library.
        unsafe { (self.lib.sym.ctx_attach_resource)(ctx_id as c_int, res_id as c_int) }
    }

    /// `virgl_renderer_ctx_detach_resource`.
    pub fn ctx_detach(&self, ctx_id: u32, res_id: u32) {
        // SAFETY: plain values; unknown ids are ignored by the library.
        unsafe { (self.lib.sym.ctx_detach_resource)(ctx_id as c_int, res_id as c_int) }
    }

    /// `virgl_renderer_resource_create` without backing (attached later).
    pub fn resource_create(&self, args: &ResourceCreateArgs) -> Result<(), CallError> {
        let mut args = *args;
        // SAFETY: a valid args struct; no iovecs.
        let ret = unsafe { (self.lib.sym.resource_create)(&mut args, std::ptr::null_mut(), 0) };
        check("virgl_renderer_resource_create", ret)
    }

    /// `virgl_renderer_resource_attach_iov`; the instance keeps the backing until
    /// [`Instance::detach_iov`] or [`Instance::resource_unref`].
    pub fn attach_iov(&mut self, res_id: u32, mut pinned: PinnedIovecs) -> Result<(), CallError> {
        if self.pinned.contains_key(&res_id) {
            return Err(CallError {
                call: "virgl_renderer_resource_attach_iov",
                code: -libc::EBUSY,
            });
        }
        let count = c_int::try_from(pinned.iovs.len()).map_err(|_| CallError {
            call: "virgl_renderer_resource_attach_iov",
            code: -libc::E2BIG,
        })?;
        // SAFETY: the iovecs point into guest memory kept mapped by `pinned`, which is
        // stored below and dropped only after the library let go of it (detach, unref).
        // The boxed array does not move when `pinned` is moved into the map.
        let ret = unsafe {
            (self.lib.sym.resource_attach_iov)(res_id as c_int, pinned.iovs.as_mut_ptr(), count)
        };
        check("virgl_renderer_resource_attach_iov", ret)?;
        self.pinned.insert(res_id, pinned);
        Ok(())
    }

    /// `virgl_renderer_resource_detach_iov`, then drops the backing.
    pub fn detach_iov(&mut self, res_id: u32) {
        if self.pinned.contains_key(&res_id) {
            let mut iov: *mut libc::iovec = std::ptr::null_mut();
            let mut count: c_int = 0;
            // SAFETY: valid out-pointers; the returned array is ours (it is `pinned`'s),
            // so nothing is freed here but our own box below.
            unsafe { (self.lib.sym.resource_detach_iov)(res_id as c_int, &mut iov, &mut count) };
        }
        self.pinned.remove(&res_id);
    }

    /// `virgl_renderer_resource_unref`, detaching and dropping its backing first.
    pub fn resource_unref(&mut self, res_id: u32) {
        self.detach_iov(res_id);
        // SAFETY: plain value; unknown ids are ignored by the library.
        unsafe { (self.lib.sym.resource_unref)(res_id) }
    }

    /// `virgl_renderer_transfer_write_iov` from the resource's attached backing.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer_write(
        &self,
        res_id: u32,
        ctx_id: u32,
        level: u32,
        stride: u32,
        layer_stride: u32,
        mut bx: VirglBox,
        offset: u64,
    ) -> Result<(), CallError> {
        // SAFETY: no iovecs are passed (the library uses the attached backing, whose
        // memory `self.pinned` keeps mapped); the box is a valid struct.
        let ret = unsafe {
            (self.lib.sym.transfer_write_iov)(
                res_id,
                ctx_id,
                level as c_int,
                stride,
                layer_stride,
                &mut bx,
                offset,
                std::ptr::null_mut(),
                0,
            )
        };
        check("virgl_renderer_transfer_write_iov", ret)
    }

    /// `virgl_renderer_transfer_read_iov` into the resource's attached backing.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer_read(
        &self,
        res_id: u32,
        ctx_id: u32,
        level: u32,
        stride: u32,
        layer_stride: u32,
        mut bx: VirglBox,
        offset: u64,
    ) -> Result<(), CallError> {
        // SAFETY: as for `transfer_write`.
        let ret = unsafe {
            (self.lib.sym.transfer_read_iov)(
                res_id,
                ctx_id,
                level,
                stride,
                layer_stride,
                &mut bx,
                offset,
                std::ptr::null_mut(),
                0,
            )
        };
        check("virgl_renderer_transfer_read_iov", ret)
    }

    /// `virgl_renderer_transfer_read_iov` of `bx` (level 0) into `dst`, rows `stride`
    /// bytes apart. The library checks that the box fits in `dst`.
    pub fn read_into(
        &self,
        res_id: u32,
        mut bx: VirglBox,
        stride: u32,
        dst: &mut [u8],
    ) -> Result<(), CallError> {
        let mut iov = libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: dst.len(),
        };
        // SAFETY: one iovec over `dst`, exclusively borrowed for the call; the library
        // copies synchronously and keeps no pointer to a transfer's iovecs.
        let ret = unsafe {
            (self.lib.sym.transfer_read_iov)(res_id, 0, 0, stride, 0, &mut bx, 0, &mut iov, 1)
        };
        check("virgl_renderer_transfer_read_iov", ret)
    }

    /// `virgl_renderer_submit_cmd`: `commands` is a whole number of 32-bit words.
    pub fn submit(&self, ctx_id: u32, commands: &[u8]) -> Result<(), CallError> {
        const CALL: &str = "virgl_renderer_submit_cmd";
        if !commands.len().is_multiple_of(4) {
            return Err(CallError {
                call: CALL,
                code: -libc::EINVAL,
            });
        }
        let words = c_int::try_from(commands.len() / 4).map_err(|_| CallError {
            call: CALL,
            code: -libc::E2BIG,
        })?;
        // 8-byte aligned copy: the library reads it as words and some renderers want 8.
        let mut aligned = vec![0u64; commands.len().div_ceil(8)];
        for (chunk, word) in commands.chunks(8).zip(aligned.iter_mut()) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_ne_bytes(bytes);
        }
        // SAFETY: `aligned` holds `words` 32-bit words and lives across the call; the
        // library does not write to it nor keep it.
        let ret = unsafe {
            (self.lib.sym.submit_cmd)(aligned.as_mut_ptr().cast(), ctx_id as c_int, words)
        };
        check(CALL, ret)
    }

    /// `virgl_renderer_create_fence` on the global timeline (ids are 32-bit there).
    pub fn create_fence(&self, fence: u32, ctx_id: u32) -> Result<(), CallError> {
        // SAFETY: plain values.
        let ret = unsafe { (self.lib.sym.create_fence)(fence as c_int, ctx_id) };
        check("virgl_renderer_create_fence", ret)
    }

    /// `virgl_renderer_context_create_fence` on a context's ring.
    pub fn context_create_fence(
        &self,
        ctx_id: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> Result<(), CallError> {
        // SAFETY: plain values (no MERGEABLE flag: every fence is reported).
        let ret = unsafe { (self.lib.sym.context_create_fence)(ctx_id, 0, ring_idx, fence_id) };
        check("virgl_renderer_context_create_fence", ret)
    }

    /// `virgl_renderer_poll`: retires virgl fences (and polls every other context).
    pub fn poll(&self) {
        // SAFETY: no arguments; callbacks run on this thread.
        unsafe { (self.lib.sym.poll)() }
    }

    /// `virgl_renderer_get_poll_fd`: the eventfd of the virgl fence thread, if any. The
    /// library owns it; it stays open until cleanup.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: no arguments.
        let fd = unsafe { (self.lib.sym.get_poll_fd)() };
        borrow(fd)
    }

    /// `virgl_renderer_context_get_poll_fd`: the context's fence eventfd, if any. The
    /// library owns it; it stays open until the context is destroyed.
    pub fn context_poll_fd(&self, ctx_id: u32) -> Option<BorrowedFd<'_>> {
        // SAFETY: plain value.
        let fd = unsafe { (self.lib.sym.context_get_poll_fd)(ctx_id) };
        borrow(fd)
    }

    /// `virgl_renderer_resource_get_info`.
    pub fn resource_info(&self, res_id: u32) -> Result<ResourceInfo, CallError> {
        let mut raw = RawResourceInfo {
            handle: 0,
            virgl_format: 0,
            width: 0,
            height: 0,
            depth: 0,
            flags: 0,
            tex_id: 0,
            stride: 0,
            drm_fourcc: 0,
            fd: -1,
        };
        // SAFETY: `raw` has the larger (1.x) layout, so neither version writes past it.
        let ret = unsafe { (self.lib.sym.resource_get_info)(res_id as c_int, &mut raw) };
        check("virgl_renderer_resource_get_info", ret)?;
        Ok(ResourceInfo {
            virgl_format: raw.virgl_format,
            width: raw.width,
            height: raw.height,
            depth: raw.depth,
            flags: raw.flags,
            tex_id: raw.tex_id,
            stride: raw.stride,
            drm_fourcc: raw.drm_fourcc as u32,
        })
    }

    /// `virgl_renderer_get_fd_for_texture2`: a dma-buf of a GL texture, with its stride
    /// and offset (EGL `MESA_image_dma_buf_export`).
    pub fn texture_dmabuf(&self, tex_id: u32) -> Result<(OwnedFd, u32, u32), CallError> {
        let (mut fd, mut stride, mut offset): (c_int, c_int, c_int) = (-1, 0, 0);
        // SAFETY: three valid out-pointers.
        let ret = unsafe {
            (self.lib.sym.get_fd_for_texture2)(tex_id, &mut fd, &mut stride, &mut offset)
        };
        check("virgl_renderer_get_fd_for_texture2", ret)?;
        let fd = own(fd).ok_or(CallError {
            call: "virgl_renderer_get_fd_for_texture2",
            code: -libc::EBADF,
        })?;
        Ok((fd, stride as u32, offset as u32))
    }

    /// `virgl_renderer_resource_create_blob`; `backing` (GUEST and HOST3D_GUEST blobs) is
    /// kept like an attached backing.
    pub fn create_blob(
        &mut self,
        args: &CreateBlobArgs,
        backing: Option<PinnedIovecs>,
    ) -> Result<(), CallError> {
        const CALL: &str = "virgl_renderer_resource_create_blob";
        if self.pinned.contains_key(&args.res_handle) {
            return Err(CallError {
                call: CALL,
                code: -libc::EBUSY,
            });
        }
        let (iovecs, num_iovs) = match &backing {
            Some(p) => (
                p.iovs.as_ptr(),
                u32::try_from(p.iovs.len()).map_err(|_| CallError {
                    call: CALL,
                    code: -libc::E2BIG,
                })?,
            ),
            None => (std::ptr::null(), 0),
        };
        let raw = RawCreateBlobArgs {
            res_handle: args.res_handle,
            ctx_id: args.ctx_id,
            blob_mem: args.blob_mem,
            blob_flags: args.blob_flags,
            blob_id: args.blob_id,
            size: args.size,
            iovecs,
            num_iovs,
        };
        // SAFETY: a valid args struct; its iovecs (if any) point into guest memory kept
        // mapped by `backing`, stored below until the resource is unreferenced.
        let ret = unsafe { (self.lib.sym.resource_create_blob)(&raw) };
        check(CALL, ret)?;
        if let Some(p) = backing {
            self.pinned.insert(args.res_handle, p);
        }
        Ok(())
    }

    /// `virgl_renderer_resource_export_blob`: (fd type, fd), the fd ours to close.
    pub fn export_blob(&self, res_id: u32) -> Result<(u32, OwnedFd), CallError> {
        const CALL: &str = "virgl_renderer_resource_export_blob";
        let (mut kind, mut fd): (u32, c_int) = (0, -1);
        // SAFETY: two valid out-pointers.
        let ret = unsafe { (self.lib.sym.resource_export_blob)(res_id, &mut kind, &mut fd) };
        check(CALL, ret)?;
        let fd = own(fd).ok_or(CallError {
            call: CALL,
            code: -libc::EBADF,
        })?;
        Ok((kind, fd))
    }

    /// `virgl_renderer_resource_get_map_info`: the library's idea of the caching
    /// (`VIRGL_RENDERER_MAP_CACHE_*`, same values as virtio-gpu's).
    pub fn map_info(&self, res_id: u32) -> Result<u32, CallError> {
        let mut info = 0u32;
        // SAFETY: one valid out-pointer.
        let ret = unsafe { (self.lib.sym.resource_get_map_info)(res_id, &mut info) };
        check("virgl_renderer_resource_get_map_info", ret)?;
        Ok(info)
    }

    /// Runs `f` with where the library itself maps a blob in this process
    /// (`virgl_renderer_resource_map`, undone with `virgl_renderer_resource_unmap` when `f`
    /// returns): `f(address, size)`. For an OPAQUE fd the library imports it into a Vulkan
    /// device of its own to map it, so the address says where the driver keeps the blob's
    /// bytes. `f` gets the address as a number only: nothing here dereferences it.
    pub fn while_mapped<T>(
        &self,
        res_id: u32,
        f: impl FnOnce(usize, u64) -> T,
    ) -> Result<T, CallError> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let mut size = 0u64;
        // SAFETY: two valid out-pointers; the mapping is the library's and is undone below
        // without being touched.
        let ret = unsafe { (self.lib.sym.resource_map)(res_id, &mut ptr, &mut size) };
        check("virgl_renderer_resource_map", ret)?;
        let out = f(ptr as usize, size);
        // SAFETY: plain value; the resource was mapped just above.
        let ret = unsafe { (self.lib.sym.resource_unmap)(res_id) };
        if ret != 0 {
            log::warn!("virgl_renderer_resource_unmap({res_id}) failed: {ret}");
        }
        Ok(out)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: the cookie we passed to init. After cleanup the library holds no pointer
        // to the callbacks, the cookie or any backing, which are dropped after this.
        unsafe { (self.lib.sym.cleanup)((&*self.cookie as *const CookieState).cast_mut().cast()) };
        self.pinned.clear();
        ACTIVE.store(false, Ordering::Release);
    }
}

fn borrow<'a>(fd: RawFd) -> Option<BorrowedFd<'a>> {
    (fd >= 0).then(|| {
        // SAFETY: a non-negative fd the library owns and keeps open for the lifetime
        // the caller ties the borrow to (see the callers' docs).
        unsafe { BorrowedFd::borrow_raw(fd) }
    })
}

fn own(fd: RawFd) -> Option<OwnedFd> {
    (fd >= 0).then(|| {
        // SAFETY: the library handed us ownership of this fresh fd.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}
