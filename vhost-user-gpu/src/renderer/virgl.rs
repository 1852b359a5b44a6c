//! [`VirglRenderer`]: the [`Renderer`] port over virglrenderer (virgl contexts through EGL,
//! surfaceless where there is no display; venus contexts in the render server).

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use super::ffi::{self, flags, Instance, Library, PinnedIovecs, VirglBox};
use crate::device::ports::{
    BlobFdKind, BlobRequest, CapsetInfo, ExportedBlob, FenceSignal, GuestMemory, Renderer,
    RendererError, RendererEvent, Resource3d, ResourceInfo, ScanoutExport, Transfer3d,
};
use crate::protocol::{CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2};

/// Where Debian's `virgl-server` package puts the render server.
pub const DEFAULT_RENDER_SERVER: &str = "/usr/libexec/virgl_render_server";

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirglConfig {
    /// The library (a soname or a path).
    pub library: PathBuf,
    /// Serve virgl contexts (OpenGL: capsets VIRGL and VIRGL2).
    pub virgl: bool,
    /// Serve venus contexts (Vulkan: capset VENUS), in the render server.
    pub venus: bool,
    /// The render server binary venus contexts run in.
    pub render_server: PathBuf,
    /// OpenGL ES host contexts instead of desktop OpenGL.
    pub gles: bool,
    /// Serve venus even from a library older than 1.0, whose venus speaks wire format 0:
    /// current guest drivers refuse it (Mesa 25's venus: "Unsupported wire format version
    /// 0"), so by default venus is not offered there.
    pub legacy_venus: bool,
}

impl Default for VirglConfig {
    fn default() -> Self {
        VirglConfig {
            library: PathBuf::from(ffi::DEFAULT_LIBRARY),
            virgl: true,
            venus: true,
            render_server: PathBuf::from(DEFAULT_RENDER_SERVER),
            gles: false,
            legacy_venus: false,
        }
    }
}

/// epoll tokens.
const TOKEN_VIRGL: u64 = 1;
const TOKEN_TIMER: u64 = 2;
const TOKEN_SERVER: u64 = 3;
/// Context fence fds: this bit plus the context id.
const TOKEN_CONTEXT: u64 = 1 << 32;

/// How often fences are polled when the library has no fence thread (no poll fd).
const FALLBACK_POLL: Duration = Duration::from_millis(2);

/// A fence on the global timeline, waiting for the library's 32-bit sequence number.
#[derive(Debug, Clone, Copy)]
struct GlobalFence {
    seqno: u32,
    ctx_id: u32,
    fence_id: u64,
}

/// The render server we started and hand to the library.
struct RenderServer {
    child: Child,
    pidfd: OwnedFd,
    lost: bool,
}

/// virglrenderer, initialised on the calling thread (see the module docs of
/// [`crate::renderer`]). At most one exists per process.
pub struct VirglRenderer {
    instance: Instance,
    capsets: Vec<CapsetInfo>,
    epoll: OwnedFd,
    /// Armed while fences wait and the library has no fence thread.
    timer: Option<OwnedFd>,
    global: VecDeque<GlobalFence>,
    /// The newest fence created on each ring of a virgl context, until it is retired: virgl
    /// contexts' fences retire through the library's fence thread, or, where it has none,
    /// only by polling on the timer, which runs while some wait.
    ring_fences: std::collections::HashMap<(u32, u32), u64>,
    next_seqno: u32,
    server: Option<RenderServer>,
    /// Contexts whose fence fd is in the epoll set.
    watched: Vec<u32>,
    /// Contexts and resources the library holds for us: what a reset destroys.
    live_contexts: BTreeSet<u32>,
    live_resources: BTreeSet<u32>,
    /// Why venus was asked for but is not served, if so.
    venus_withheld: Option<String>,
}

impl std::fmt::Debug for VirglRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirglRenderer")
            .field("instance", &self.instance)
            .field("capsets", &self.capsets)
            .finish()
    }
}

fn start_error(what: &str, e: impl std::fmt::Display) -> RendererError {
    RendererError::Start(format!("{what}: {e}"))
}

impl RenderServer {
    /// Starts the render server on one end of a `SOCK_SEQPACKET` pair and returns the other.
    fn start(path: &std::path::Path) -> Result<(Self, OwnedFd), RendererError> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| start_error("socketpair for the render server", e))?;
        // The server's end must survive exec: clear close-on-exec on it (our end keeps it).
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
            .map_err(|e| start_error("fcntl on the render server socket", e))?;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(path)
                .arg("--socket-fd")
                .arg(theirs.as_raw_fd().to_string()),
            0,
        )
        .spawn()
        .map_err(|e| start_error(&format!("{}", path.display()), e))?;
        drop(theirs);
        let pid = rustix::process::Pid::from_raw(child.id() as i32)
            .ok_or_else(|| start_error("render server", "no pid"))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| start_error("pidfd_open of the render server", e))?;
        log::info!(
            "renderer: render server {} started (pid {})",
            path.display(),
            child.id()
        );
        Ok((
            RenderServer {
                child,
                pidfd,
                lost: false,
            },
            ours,
        ))
    }
}

impl Drop for RenderServer {
    fn drop(&mut self) {
        // The library closed its socket at cleanup: the server exits on its own.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        log::warn!("renderer: render server did not exit; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VirglRenderer {
    /// Loads the library and initialises it on this thread.
    pub fn new(config: &VirglConfig) -> Result<Self, RendererError> {
        Self::new_confined(config, |_| Ok(()))
    }

    /// As [`VirglRenderer::new`], calling `confine` with the render server's pid (venus)
    /// after the library is loaded and the render server started, and before the library
    /// initialises (which loads Mesa's drivers and starts their threads): the backend's
    /// sandbox confines this thread there, so that every thread Mesa starts inherits it,
    /// and the render server, already running, does not.
    pub fn new_confined(
        config: &VirglConfig,
        confine: impl FnOnce(Option<u32>) -> Result<(), RendererError>,
    ) -> Result<Self, RendererError> {
        if !config.virgl && !config.venus {
            return Err(RendererError::Start(
                "neither virgl nor venus asked for".into(),
            ));
        }
        let lib = Library::load(&config.library)?;
        let mut venus_withheld = None;
        // 1.0 added the log callback and moved venus to wire format 1 at the same time.
        let venus = config.venus && (lib.has_log_callback() || config.legacy_venus);
        if config.venus && !venus {
            venus_withheld = Some(format!(
                "{} predates virglrenderer 1.0: its venus speaks wire format 0, which guest \
                 venus drivers refuse (Mesa 25: \"Unsupported wire format version 0\")",
                lib.path().display()
            ));
        }
        if !config.virgl && !venus {
            return Err(RendererError::Start(format!(
                "nothing to serve: virgl not asked for, venus not offered ({})",
                venus_withheld.as_deref().unwrap_or("")
            )));
        }
        let mut init_flags = flags::THREAD_SYNC;
        if config.virgl {
            // USE_EXTERNAL_BLOB: the guest maps blobs in another process (the VMM), so
            // virgl blobs must be exportable as fds (the header says multi-process VMMs
            // that offer blobs must set it).
            init_flags |= flags::USE_EGL | flags::USE_SURFACELESS | flags::USE_EXTERNAL_BLOB;
            if config.gles {
                init_flags |= flags::USE_GLES;
            }
        } else {
            init_flags |= flags::NO_VIRGL;
        }
        let mut server = None;
        let mut server_socket = None;
        if venus {
            init_flags |= flags::VENUS | flags::RENDER_SERVER;
            let (s, socket) = RenderServer::start(&config.render_server)?;
            server = Some(s);
            server_socket = Some(socket);
        }
        confine(server.as_ref().map(|s: &RenderServer| s.child.id()))?;
        let instance = Instance::init(lib, init_flags, server_socket).map_err(|e| match e {
            ffi::InitError::Busy => RendererError::Start(e.to_string()),
            ffi::InitError::Call(c) => RendererError::Start(format!(
                "{c} with flags {init_flags:#x} (virgl: surfaceless EGL needs Mesa's \
                 libegl-mesa0 and libgl1-mesa-dri; venus needs the render server and a \
                 Vulkan driver such as mesa-vulkan-drivers)"
            )),
        })?;
        let mut capsets = Vec::new();
        let mut wanted = Vec::new();
        if config.virgl {
            wanted.extend([CAPSET_VIRGL, CAPSET_VIRGL2]);
        }
        if venus {
            wanted.push(CAPSET_VENUS);
        }
        for id in wanted {
            let (max_version, max_size) = instance.capset_info(id);
            if id == CAPSET_VENUS && max_size >= 4 && !config.legacy_venus {
                // struct virgl_renderer_capset_venus starts with wire_format_version.
                let caps = instance.fill_caps(id, max_version);
                let wire = caps
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if wire == Some(0) {
                    venus_withheld = Some(format!(
                        "{} serves venus wire format 0, which guest venus drivers refuse",
                        instance.library().path().display()
                    ));
                    continue;
                }
            }
            if max_size > 0 {
                capsets.push(CapsetInfo {
                    id,
                    max_version,
                    max_size,
                });
            }
        }
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| start_error("epoll_create", e))?;
        let mut timer = None;
        if let Some(fd) = instance.poll_fd() {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(TOKEN_VIRGL),
                epoll::EventFlags::IN,
            )
            .map_err(|e| start_error("epoll_ctl", e))?;
        } else if config.virgl {
            let t = fallback_timer(&epoll).map_err(|e| start_error("timerfd", e))?;
            log::info!("renderer: no fence thread in virglrenderer; polling fences every {FALLBACK_POLL:?} while some wait");
            timer = Some(t);
        }
        if let Some(s) = &server {
            epoll::add(
                &epoll,
                &s.pidfd,
                epoll::EventData::new_u64(TOKEN_SERVER),
                epoll::EventFlags::IN,
            )
            .map_err(|e| start_error("epoll_ctl", e))?;
        }
        log::info!(
            "renderer: {} initialised (flags {init_flags:#x}, its log {}); capsets {:?}",
            instance.library().path().display(),
            if instance.library().has_log_callback() {
                "through ours"
            } else {
                "on stderr (before 1.0)"
            },
            capsets
                .iter()
                .map(|c| (c.id, c.max_version, c.max_size))
                .collect::<Vec<_>>()
        );
        if let Some(why) = &venus_withheld {
            log::warn!("renderer: venus not offered: {why}; virglrenderer >= 1.0 serves it");
        }
        Ok(VirglRenderer {
            instance,
            capsets,
            epoll,
            timer,
            global: VecDeque::new(),
            ring_fences: std::collections::HashMap::new(),
            next_seqno: 1,
            server,
            watched: Vec::new(),
            live_contexts: BTreeSet::new(),
            live_resources: BTreeSet::new(),
            venus_withheld,
        })
    }

    /// Why venus was asked for but is not served (an old library), for the device's
    /// start-up log and `--print-capabilities`.
    pub fn venus_withheld(&self) -> Option<&str> {
        self.venus_withheld.as_deref()
    }

    /// The render server's process id (venus), while it was started by us; for operators'
    /// logs and for tests that stop it.
    pub fn render_server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.child.id())
    }

    fn serves(&self, capset: u32) -> bool {
        self.capsets.iter().any(|c| c.id == capset)
    }

    /// Whether fences wait that only polling the library retires.
    fn fences_wait(&self) -> bool {
        !self.global.is_empty() || !self.ring_fences.is_empty()
    }

    fn arm_timer(&self, on: bool) {
        if let Some(t) = &self.timer {
            let period = if on {
                Timespec {
                    tv_sec: 0,
                    tv_nsec: FALLBACK_POLL.as_nanos() as _,
                }
            } else {
                Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }
            };
            let spec = Itimerspec {
                it_interval: period,
                it_value: period,
            };
            let _ = timerfd_settime(t, TimerfdTimerFlags::empty(), &spec);
        }
    }

    fn unwatch(&mut self, ctx_id: u32) {
        if let Some(pos) = self.watched.iter().position(|&c| c == ctx_id) {
            self.watched.swap_remove(pos);
            if let Some(fd) = self.instance.context_poll_fd(ctx_id) {
                let _ = epoll::delete(&self.epoll, fd);
            }
        }
    }
}

fn to_box(b: &crate::device::ports::Box3d) -> VirglBox {
    VirglBox {
        x: b.x,
        y: b.y,
        z: b.z,
        w: b.w,
        h: b.h,
        d: b.d,
    }
}

/// virgl formats of 4-byte colour formats, and the DRM fourcc with the same byte order.
fn drm_fourcc_of(virgl_format: u32) -> u32 {
    use crate::device::ports::fourcc;
    match virgl_format {
        1 => fourcc::ARGB8888,   // B8G8R8A8_UNORM
        2 => fourcc::XRGB8888,   // B8G8R8X8_UNORM
        67 => fourcc::ABGR8888,  // R8G8B8A8_UNORM
        134 => fourcc::XBGR8888, // R8G8B8X8_UNORM
        3 => fourcc::BGRA8888,   // A8R8G8B8_UNORM
        4 => fourcc::BGRX8888,   // X8R8G8B8_UNORM
        121 => fourcc::RGBA8888, // A8B8G8R8_UNORM
        68 => fourcc::RGBX8888,  // X8B8G8R8_UNORM
        _ => 0,
    }
}

impl Renderer for VirglRenderer {
    fn name(&self) -> &'static str {
        "virglrenderer"
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.capsets.clone()
    }

    fn capset(&mut self, id: u32, version: u32) -> Result<Vec<u8>, RendererError> {
        let info = self
            .capsets
            .iter()
            .find(|c| c.id == id)
            .ok_or(RendererError::NoCapset(id))?;
        if version > info.max_version {
            return Err(RendererError::Invalid(format!(
                "capset {id} version {version} > {}",
                info.max_version
            )));
        }
        Ok(self.instance.fill_caps(id, version))
    }

    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: u32,
        name: &[u8],
    ) -> Result<(), RendererError> {
        if ctx_id == 0 {
            return Err(RendererError::Invalid("context id 0".into()));
        }
        if !self.serves(capset) {
            return Err(RendererError::NoCapset(capset));
        }
        if capset == CAPSET_VENUS && self.server.as_ref().is_some_and(|s| s.lost) {
            return Err(RendererError::Start("the render server is gone".into()));
        }
        self.instance.context_create(ctx_id, capset, name)?;
        self.live_contexts.insert(ctx_id);
        // A virgl context's fence fd is the library's global one (already watched): only
        // other contexts (venus) have fds of their own.
        let global = self.instance.poll_fd().map(|fd| fd.as_raw_fd());
        if let Some(fd) = self.instance.context_poll_fd(ctx_id) {
            if Some(fd.as_raw_fd()) != global && !self.watched.contains(&ctx_id) {
                match epoll::add(
                    &self.epoll,
                    fd,
                    epoll::EventData::new_u64(TOKEN_CONTEXT | u64::from(ctx_id)),
                    epoll::EventFlags::IN,
                ) {
                    Ok(()) => self.watched.push(ctx_id),
                    Err(e) => log::warn!("renderer: cannot watch context {ctx_id}'s fences: {e}"),
                }
            }
        }
        Ok(())
    }

    fn context_destroy(&mut self, ctx_id: u32) {
        self.ring_fences.retain(|&(ctx, _), _| ctx != ctx_id);
        self.unwatch(ctx_id);
        self.live_contexts.remove(&ctx_id);
        self.instance.context_destroy(ctx_id);
    }

    fn context_attach(&mut self, ctx_id: u32, res_id: u32) {
        self.instance.ctx_attach(ctx_id, res_id);
    }

    fn context_detach(&mut self, ctx_id: u32, res_id: u32) {
        self.instance.ctx_detach(ctx_id, res_id);
    }

    fn resource_create_3d(&mut self, res_id: u32, a: &Resource3d) -> Result<(), RendererError> {
        if res_id == 0 {
            return Err(RendererError::Invalid("resource id 0".into()));
        }
        self.instance.resource_create(&ffi::ResourceCreateArgs {
            handle: res_id,
            target: a.target,
            format: a.format,
            bind: a.bind,
            width: a.width,
            height: a.height,
            depth: a.depth,
            array_size: a.array_size,
            last_level: a.last_level,
            nr_samples: a.nr_samples,
            flags: a.flags,
        })?;
        self.live_resources.insert(res_id);
        Ok(())
    }

    fn attach_backing(
        &mut self,
        res_id: u32,
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(), RendererError> {
        let pinned = PinnedIovecs::from_guest(memory, ranges)?;
        self.instance.attach_iov(res_id, pinned)?;
        Ok(())
    }

    fn detach_backing(&mut self, res_id: u32) {
        self.instance.detach_iov(res_id);
    }

    fn resource_create_blob(
        &mut self,
        res_id: u32,
        r: &BlobRequest,
        backing: Option<(&GuestMemory, &[(u64, u64)])>,
    ) -> Result<(), RendererError> {
        if res_id == 0 {
            return Err(RendererError::Invalid("resource id 0".into()));
        }
        let pinned = match backing {
            Some((memory, ranges)) => {
                let p = PinnedIovecs::from_guest(memory, ranges)?;
                if p.len() < r.size {
                    return Err(RendererError::Invalid(format!(
                        "blob of {} bytes with {} bytes of backing",
                        r.size,
                        p.len()
                    )));
                }
                Some(p)
            }
            None => None,
        };
        self.instance.create_blob(
            &ffi::CreateBlobArgs {
                res_handle: res_id,
                ctx_id: r.ctx_id,
                blob_mem: r.blob_mem,
                blob_flags: r.blob_flags,
                blob_id: r.blob_id,
                size: r.size,
            },
            pinned,
        )?;
        self.live_resources.insert(res_id);
        Ok(())
    }

    fn resource_unref(&mut self, res_id: u32) {
        self.live_resources.remove(&res_id);
        self.instance.resource_unref(res_id);
    }

    fn transfer_to_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        t: &Transfer3d,
    ) -> Result<(), RendererError> {
        self.instance.transfer_write(
            res_id,
            ctx_id,
            t.level,
            t.stride,
            t.layer_stride,
            to_box(&t.bx),
            t.offset,
        )?;
        Ok(())
    }

    fn transfer_from_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        t: &Transfer3d,
    ) -> Result<(), RendererError> {
        self.instance.transfer_read(
            res_id,
            ctx_id,
            t.level,
            t.stride,
            t.layer_stride,
            to_box(&t.bx),
            t.offset,
        )?;
        Ok(())
    }

    fn submit(&mut self, ctx_id: u32, commands: &[u8]) -> Result<(), RendererError> {
        if !commands.len().is_multiple_of(4) {
            return Err(RendererError::Invalid(format!(
                "command stream of {} bytes is not whole 32-bit words",
                commands.len()
            )));
        }
        self.instance.submit(ctx_id, commands)?;
        Ok(())
    }

    fn create_fence(
        &mut self,
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        match ring {
            Some(ring) => {
                self.instance.context_create_fence(ctx_id, ring, fence_id)?;
                // Venus contexts have fence fds of their own (watched); virgl contexts'
                // fences retire through the library's.
                if !self.watched.contains(&ctx_id) {
                    self.ring_fences.insert((ctx_id, ring), fence_id);
                    self.arm_timer(true);
                }
            }
            None => {
                let seqno = self.next_seqno;
                self.next_seqno = self.next_seqno.wrapping_add(1).max(1);
                self.instance.create_fence(seqno, ctx_id)?;
                self.global.push_back(GlobalFence {
                    seqno,
                    ctx_id,
                    fence_id,
                });
                if self.global.len() == 1 {
                    self.arm_timer(true);
                }
            }
        }
        Ok(())
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    fn poll(&mut self) -> Vec<RendererEvent> {
        let mut out = Vec::new();
        let mut ready: Vec<epoll::Event> = Vec::with_capacity(16);
        let mut any = false;
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut ready),
            Some(&now),
        )
        .is_ok()
        {
            for event in &ready {
                any = true;
                match event.data.u64() {
                    TOKEN_TIMER => {
                        if let Some(t) = &self.timer {
                            let mut buf = [0u8; 8];
                            let _ = rustix::io::read(t, &mut buf);
                        }
                    }
                    TOKEN_SERVER => {
                        if let Some(s) = self.server.as_mut() {
                            if !s.lost {
                                s.lost = true;
                                let status = s.child.try_wait().ok().flatten();
                                let what = format!(
                                    "render server (pid {}) exited: {}",
                                    s.child.id(),
                                    status.map_or("status unknown".into(), |s| s.to_string())
                                );
                                log::error!("renderer: {what}; venus contexts are lost");
                                let _ = epoll::delete(&self.epoll, &s.pidfd);
                                out.push(RendererEvent::RenderServerLost(what));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if any || self.fences_wait() {
            // Retires virgl fences and polls every other context too.
            self.instance.poll();
        }
        let events = self.instance.take_events();
        for seqno in events.global_fences {
            if let Some(pos) = self.global.iter().position(|f| f.seqno == seqno) {
                for f in self.global.drain(..=pos) {
                    out.push(RendererEvent::Fence(FenceSignal {
                        ctx_id: f.ctx_id,
                        ring: None,
                        fence_id: f.fence_id,
                    }));
                }
            }
        }
        for (ctx_id, ring, fence_id) in events.context_fences {
            if self
                .ring_fences
                .get(&(ctx_id, ring))
                .is_some_and(|&newest| newest <= fence_id)
            {
                self.ring_fences.remove(&(ctx_id, ring));
            }
            out.push(RendererEvent::Fence(FenceSignal {
                ctx_id,
                ring: Some(ring),
                fence_id,
            }));
        }
        if !self.fences_wait() {
            self.arm_timer(false);
        }
        out
    }

    fn export_blob(&mut self, res_id: u32) -> Result<ExportedBlob, RendererError> {
        let (kind, fd) = self.instance.export_blob(res_id)?;
        let kind = match kind {
            ffi::fd_type::DMABUF => BlobFdKind::Dmabuf,
            ffi::fd_type::OPAQUE => BlobFdKind::Opaque,
            ffi::fd_type::SHM => BlobFdKind::Shm,
            other => {
                return Err(RendererError::Invalid(format!(
                    "virglrenderer exported resource {res_id} as unknown fd type {other}"
                )))
            }
        };
        let renderer_map_info = self
            .instance
            .map_info(res_id)
            .ok()
            .filter(|&m| m & virtio_bindings::virtio_gpu::VIRTIO_GPU_MAP_CACHE_MASK != 0);
        // An OPAQUE fd is laid out as its driver likes (lavapipe's memfd starts with a
        // header page, the memory follows): where the bytes start is found where the library
        // maps it itself, through the driver.
        let fd_offset = match kind {
            BlobFdKind::Opaque => self
                .instance
                .while_mapped(res_id, |address, _| offset_in_fd(fd.as_fd(), address))?
                .map_err(|why| {
                    RendererError::Invalid(format!(
                        "resource {res_id}: opaque fd from the renderer, but where its bytes                          start is unknown ({why}); not mappable"
                    ))
                })?,
            BlobFdKind::Dmabuf | BlobFdKind::Shm => 0,
        };
        Ok(ExportedBlob {
            fd,
            kind,
            fd_offset,
            renderer_map_info,
        })
    }

    fn resource_info(&mut self, res_id: u32) -> Result<ResourceInfo, RendererError> {
        let info = self.instance.resource_info(res_id)?;
        Ok(ResourceInfo {
            width: info.width,
            height: info.height,
            virgl_format: info.virgl_format,
            drm_fourcc: drm_fourcc_of(info.virgl_format),
            y_0_top: info.flags & 1 != 0,
        })
    }

    fn read_pixels(
        &mut self,
        res_id: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, RendererError> {
        let info = self.instance.resource_info(res_id)?;
        if drm_fourcc_of(info.virgl_format) == 0 {
            return Err(RendererError::Invalid(format!(
                "resource {res_id} has virgl format {}, not a 4-byte colour format",
                info.virgl_format
            )));
        }
        if width == 0 || height == 0 || width > info.width || height > info.height {
            return Err(RendererError::Invalid(format!(
                "{width}x{height} from a {}x{} resource",
                info.width, info.height
            )));
        }
        let stride = width
            .checked_mul(4)
            .ok_or_else(|| RendererError::Invalid("width overflows".into()))?;
        let len = stride as usize * height as usize;
        let mut pixels = vec![0u8; len];
        // GL resources are stored bottom-up unless Y_0_TOP: read the rows that show as the
        // top `height` rows, then flip.
        let y_0_top = info.flags & 1 != 0;
        let y = if y_0_top { 0 } else { info.height - height };
        self.instance.read_into(
            res_id,
            VirglBox {
                x: 0,
                y,
                z: 0,
                w: width,
                h: height,
                d: 1,
            },
            stride,
            &mut pixels,
        )?;
        if !y_0_top {
            let rows: Vec<&[u8]> = pixels.chunks(stride as usize).rev().collect();
            pixels = rows.concat();
        }
        Ok(pixels)
    }

    fn export_scanout(&mut self, res_id: u32) -> Result<ScanoutExport, RendererError> {
        let info = self.instance.resource_info(res_id)?;
        let (fd, stride, offset) = self.instance.texture_dmabuf(info.tex_id)?;
        Ok(ScanoutExport {
            fd,
            stride,
            offset,
            drm_fourcc: if info.drm_fourcc != 0 {
                info.drm_fourcc
            } else {
                drm_fourcc_of(info.virgl_format)
            },
            width: info.width,
            height: info.height,
        })
    }

    fn reset(&mut self) {
        // Not `virgl_renderer_reset`: it stops the library's fence thread, and neither 0.10.4
        // nor 1.1 signals that eventfd again afterwards, so every fence after a reset waited
        // forever (QEMU 10 resets the device at every boot). Destroying what we created is
        // the same reset as far as the guest can tell, and the fence thread keeps running.
        for ctx_id in std::mem::take(&mut self.live_contexts) {
            self.unwatch(ctx_id);
            self.instance.context_destroy(ctx_id);
        }
        for res_id in std::mem::take(&mut self.live_resources) {
            self.instance.resource_unref(res_id);
        }
        // Fences in flight still retire; their sequence numbers match nothing any more.
        self.global.clear();
        self.ring_fences.clear();
        self.arm_timer(false);
    }
}

/// The timer that retires fences where the library has no fence thread (no poll fd), in
/// `epoll`'s set; disarmed until fences wait.
fn fallback_timer(epoll: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    let t = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )?;
    epoll::add(
        epoll,
        &t,
        epoll::EventData::new_u64(TOKEN_TIMER),
        epoll::EventFlags::IN,
    )?;
    Ok(t)
}

/// Where `address` (inside a mapping of this process) lies in `fd`: the mapping that holds
/// it must be of the same file (device and inode as `fd`'s), and the offset is the
/// mapping's file offset plus the distance from its start (`/proc/self/maps`).
fn offset_in_fd(fd: BorrowedFd<'_>, address: usize) -> Result<u64, String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    let maps =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let line = maps
        .lines()
        .find_map(|l| parse_maps_line(l).filter(|m| m.start <= address && address < m.end))
        .ok_or_else(|| format!("no mapping holds {address:#x}"))?;
    let dev = (
        rustix::fs::major(stat.st_dev),
        rustix::fs::minor(stat.st_dev),
    );
    if line.inode != stat.st_ino || line.dev != dev {
        return Err(format!(
            "the library's mapping at {address:#x} is of inode {} on {:?}, not of the \
             exported fd (inode {} on {dev:?})",
            line.inode, line.dev, stat.st_ino
        ));
    }
    Ok(line.offset + (address - line.start) as u64)
}

/// One line of `/proc/self/maps`: range, file offset, device and inode.
#[derive(Debug, PartialEq, Eq)]
struct MapsLine {
    start: usize,
    end: usize,
    offset: u64,
    dev: (u32, u32),
    inode: u64,
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?;
    Some(MapsLine {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
    })
}

#[cfg(test)]
mod tests;
