//! Self-confinement after start-up (`--sandbox on`, the default).
//!
//! Once the backend has parsed its configuration, opened its listening socket and probed its
//! allocator, it no longer needs most of what a process can do. [`confine`] then takes it
//! away, in this order:
//! 1. [`filesystem`]: a Landlock ruleset (required: see [`Landlock`]) that leaves only
//!    what the backend needs after start-up: the capture directory for writing (temporary
//!    file + rename), `/dev/udmabuf` and the DRM render node when used, `/proc/self` for
//!    reading (dma-buf `fdinfo`). No TCP, no abstract Unix sockets, no signals to other
//!    processes (Landlock scopes, ABI 6).
//! 2. [`syscalls`]: a seccomp-bpf allowlist (rust-vmm's `seccompiler`), installed with
//!    `SECCOMP_FILTER_FLAG_TSYNC` so that every thread of the process has it, and inherited
//!    by every thread spawned later (the vhost-user connection and queue threads, the PNG
//!    capture writer).
//!
//! A system call outside the list is not executed: the kernel raises `SIGSYS`, and
//! [`sigsys`]'s handler writes one line naming the call to stderr and ends the process with
//! `SIGSYS` (see [`syscalls`] for why this is `SECCOMP_RET_TRAP` and not
//! `SECCOMP_RET_KILL_PROCESS`).
//!
//! Landlock only applies to the calling thread and the threads it creates afterwards, so
//! [`confine`] must run before the backend spawns any thread; `main` calls it right before
//! the capture writer thread and the vhost-user daemon start. The threads that exist before
//! are the renderer's (`--renderer-isolation thread`, when a virgl or venus capset is
//! served), which confines itself first ([`confine_renderer_thread`]) with the files Mesa
//! needs before Mesa starts its own threads, or (`--renderer-isolation process`, the
//! default) the render worker's I/O thread, which only reads the worker's socket and kills
//! and reaps that process (Landlock's signal scope would forbid that from a confined thread:
//! the worker is outside the backend's domain); the seccomp filter covers both.
//!
//! The render worker is a process of its own: it confines itself with the renderer's
//! Landlock rules ([`confine_renderer_thread`]) and the 3D seccomp profile
//! ([`confine_render_worker`]); the backend then keeps the minimal profile, plus `kill`
//! (SIGKILL), `wait4` and `waitid` of that one process ([`SandboxPolicy::render_worker`]).
//!
//! Two profiles: the minimal one, and the 3D one when [`SandboxPolicy::renderer`] is set
//! (a renderer runs in the process: executable memory for compiled shaders and the other
//! calls of [`RendererNeeds`]). Both end the process on a violation the same way.

pub mod filesystem;
mod sigsys;
pub mod syscalls;

use std::path::PathBuf;

pub use filesystem::LandlockOutcome;

/// How the sandbox uses Landlock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Landlock {
    /// Landlock confines the files the process may open, create and remove; [`confine`]
    /// fails ([`SandboxError::LandlockUnavailable`]) on a kernel that does not enforce it,
    /// because the seccomp filter alone cannot tell a capture file from any other path.
    #[default]
    Required,
    /// No Landlock (`--sandbox seccomp-only`, for kernels without it): the seccomp filter
    /// alone, which then refuses (`EACCES`) every call that creates, truncates, renames or
    /// removes a file, and opening files for writing (except the render node with GBM).
    /// [`SandboxPolicy::write_dirs`] must be empty.
    Off,
}

/// What the confined backend still needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxPolicy {
    /// Directories files are written into (`--capture-dir`): create, write, truncate,
    /// rename within, remove.
    pub write_dirs: Vec<PathBuf>,
    /// Device files opened read-write after start-up, with ioctls (`/dev/udmabuf`, a render
    /// node, or `/dev/dri` as a whole when the render node is chosen per connection).
    pub devices: Vec<PathBuf>,
    /// Mesa's GBM is in use: it loads its driver with `dlopen` for every connection, so the
    /// library and configuration directories stay readable, executable mappings stay
    /// allowed, and Mesa's extra system calls are allowed (best effort: no GPU here to test
    /// with).
    pub gbm: bool,
    /// Cross-domain Wayland channels are served: Unix stream sockets may be created and
    /// connected (one compositor connection per guest context), and pipes made (clipboard).
    pub wayland: bool,
    /// `/dev/udmabuf` is in use (udmabuf allocator, GUEST-blob export): its ioctls are
    /// allowed only then, as DRM ioctls are only with GBM.
    pub udmabuf: bool,
    /// How Landlock is used.
    pub landlock: Landlock,
    /// 3D contexts are served (a virgl or venus capset is offered): the renderer's profile
    /// ([`RendererNeeds`]) instead of the minimal one. `None`: no Mesa code runs in this
    /// process, and the minimal profile stays.
    pub renderer: Option<RendererNeeds>,
    /// The render worker this process started (`--renderer-isolation process`): it may be
    /// sent `SIGKILL` and waited for, and no other process.
    pub render_worker: Option<u32>,
}

/// What the renderer (virglrenderer with Mesa's drivers, in this process) needs beyond the
/// minimal profile. See the module [`syscalls`] for the system calls it adds and
/// [`filesystem::renderer_rules`] for the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RendererNeeds {
    /// The render server this process started for venus contexts: it may be sent `SIGKILL`
    /// and waited for (when the renderer stops), and no other process.
    pub render_server: Option<u32>,
    /// DRM device nodes Mesa renders on (a host with a GPU: the render node, or
    /// `/dev/dri`): read-write with DRM ioctls. Empty without a GPU (llvmpipe).
    pub render_nodes: Vec<PathBuf>,
    /// Directories of libraries loaded from outside the system library directories
    /// (`--virglrenderer PATH`): readable and executable for the renderer thread.
    pub library_dirs: Vec<PathBuf>,
    /// Venus contexts are (or, before the renderer starts, may be) served: virglrenderer
    /// imports venus OPAQUE blobs through a Vulkan device of its own in this process, so the
    /// Vulkan loader's manifests are readable and its file and identity checks allowed.
    /// Without venus (virgl only) neither is.
    pub venus: bool,
}

/// What [`confine`] achieved.
#[derive(Debug)]
pub struct SandboxStatus {
    /// Landlock result (it is optional: kernels without it still get the seccomp filter).
    pub landlock: LandlockOutcome,
    /// Number of system calls on the seccomp allowlist.
    pub allowed_syscalls: usize,
}

/// Why the sandbox could not be set up. The backend refuses to start then (use
/// `--sandbox off` to run without one).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A path the policy names cannot be opened for a Landlock rule.
    #[error("sandbox: cannot use {path} in the Landlock ruleset: {reason}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Landlock is available but refused the ruleset.
    #[error("sandbox: Landlock: {0}")]
    Landlock(String),
    /// Landlock is required but this kernel does not enforce it.
    #[error(
        "sandbox: this kernel does not enforce Landlock (not built, or not in the lsm= list), \
         so the files the backend may create and open could not be confined; start with \
         --sandbox seccomp-only to run with the system-call filter alone (it then lets no \
         file be created or written: no --capture-dir), or --sandbox off"
    )]
    LandlockUnavailable,
    /// Directories to write into were given without Landlock to confine them.
    #[error(
        "sandbox: writing files ({0}) needs Landlock; --sandbox seccomp-only allows no file writes"
    )]
    WriteWithoutLandlock(String),
    /// The seccomp filter cannot be built (unsupported architecture) or installed.
    #[error("sandbox: seccomp: {0}")]
    Seccomp(String),
    /// The SIGSYS handler cannot be installed.
    #[error("sandbox: cannot install the SIGSYS handler: {0}")]
    Signal(std::io::Error),
}

/// Confines the calling thread, and every thread it creates afterwards, to the files the
/// renderer needs ([`filesystem::renderer_rules`]). The renderer's thread calls this before
/// it loads Mesa's drivers (which start their own threads: llvmpipe's rasterizer threads,
/// virglrenderer's fence thread), so that no thread running Mesa's code escapes it; the
/// main thread confines itself to the minimal rules later ([`confine`]), which its
/// vhost-user threads inherit. With [`Landlock::Off`] it does nothing; a kernel that does
/// not enforce Landlock is [`SandboxError::LandlockUnavailable`] with [`Landlock::Required`].
pub fn confine_renderer_thread(
    needs: &RendererNeeds,
    landlock: Landlock,
) -> Result<LandlockOutcome, SandboxError> {
    match landlock {
        Landlock::Off => Ok(LandlockOutcome::NotEnforced),
        Landlock::Required => match filesystem::restrict_to(&filesystem::renderer_rules(needs))? {
            LandlockOutcome::NotEnforced => Err(SandboxError::LandlockUnavailable),
            outcome => Ok(outcome),
        },
    }
}

/// Makes `SIGSEGV` and `SIGBUS` end the calling process however they arrive (the render
/// worker: a fault there must end it, also one another process reports with `kill`, so the
/// backend sees the loss at once; Rust's runtime would otherwise ignore a sent one).
pub fn die_on_fault_signals() -> std::io::Result<()> {
    sigsys::default_fault_signals()
}

/// Confines the render worker (a process that only runs the renderer) with the 3D
/// seccomp profile. Its Landlock rules are the renderer's, applied earlier by
/// [`confine_renderer_thread`] on its one thread before Mesa started its own; nothing else
/// runs in that process, so the minimal rules are not added on top. `outcome`: what that
/// call achieved, reported back in the status.
pub fn confine_render_worker(
    needs: &RendererNeeds,
    landlock: Landlock,
    outcome: LandlockOutcome,
) -> Result<SandboxStatus, SandboxError> {
    let policy = SandboxPolicy {
        landlock,
        renderer: Some(needs.clone()),
        ..SandboxPolicy::default()
    };
    sigsys::set_renderer_profile(true);
    sigsys::install_handler().map_err(SandboxError::Signal)?;
    let allowed_syscalls = syscalls::install(&policy)?;
    Ok(SandboxStatus {
        landlock: outcome,
        allowed_syscalls,
    })
}

/// Confines the calling process: Landlock first (while `landlock_restrict_self` is still
/// allowed), then the SIGSYS handler, then the seccomp filters on every thread. With
/// [`Landlock::Required`], a kernel that does not enforce Landlock is an error
/// ([`SandboxError::LandlockUnavailable`]); one with an older Landlock ABI enforces what it
/// knows, which always includes creating, writing and removing files (ABI 1).
pub fn confine(policy: &SandboxPolicy) -> Result<SandboxStatus, SandboxError> {
    let landlock = match policy.landlock {
        Landlock::Required => match filesystem::restrict(policy)? {
            LandlockOutcome::NotEnforced => return Err(SandboxError::LandlockUnavailable),
            outcome => outcome,
        },
        Landlock::Off => {
            if let Some(dir) = policy.write_dirs.first() {
                return Err(SandboxError::WriteWithoutLandlock(
                    dir.display().to_string(),
                ));
            }
            LandlockOutcome::NotEnforced
        }
    };
    sigsys::set_renderer_profile(policy.renderer.is_some());
    sigsys::install_handler().map_err(SandboxError::Signal)?;
    let allowed_syscalls = syscalls::install(policy)?;
    Ok(SandboxStatus {
        landlock,
        allowed_syscalls,
    })
}
