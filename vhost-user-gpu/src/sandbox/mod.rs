//! Self-confinement after start-up (`--sandbox on`, the default).
//!
//! Once the backend has parsed its configuration, opened its listening socket and probed its
//! allocator, it no longer needs most of what a process can do. [`confine`] then takes it
//! away, in this order:
//! 1. [`filesystem`]: a Landlock ruleset (where the kernel offers Landlock) that leaves only
//!    what the backend needs after start-up: the capture directory for writing (temporary
//!    file + rename), `/dev/udmabuf` and the DRM render node when used, `/proc/self` for
//!    reading (dma-buf `fdinfo`). No TCP, no abstract Unix sockets, no signals to other
//!    processes (Landlock scopes, ABI 6).
//! 2. [`syscalls`]: a seccomp-bpf allowlist (rust-vmm's `seccompiler`), installed with
//!    `SECCOMP_FILTER_FLAG_TSYNC` so that every thread of the process has it, and inherited
//!    by every thread spawned later (vhost-user-backend's connection and queue threads, the
//!    PNG capture writer).
//!
//! A system call outside the list is not executed: the kernel raises `SIGSYS`, and
//! [`sigsys`]'s handler writes one line naming the call to stderr and ends the process with
//! `SIGSYS` (see [`syscalls`] for why this is `SECCOMP_RET_TRAP` and not
//! `SECCOMP_RET_KILL_PROCESS`).
//!
//! Landlock only applies to the calling thread and the threads it creates afterwards, so
//! [`confine`] must run before the backend spawns any thread; `main` calls it right before
//! the capture writer thread and the vhost-user daemon start.

pub mod filesystem;
mod sigsys;
pub mod syscalls;

use std::path::PathBuf;

pub use filesystem::LandlockOutcome;

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
    /// The seccomp filter cannot be built (unsupported architecture) or installed.
    #[error("sandbox: seccomp: {0}")]
    Seccomp(String),
    /// The SIGSYS handler cannot be installed.
    #[error("sandbox: cannot install the SIGSYS handler: {0}")]
    Signal(std::io::Error),
}

/// Confines the calling process: Landlock first (while `landlock_restrict_self` is still
/// allowed), then the SIGSYS handler, then the seccomp filter on every thread.
pub fn confine(policy: &SandboxPolicy) -> Result<SandboxStatus, SandboxError> {
    let landlock = filesystem::restrict(policy)?;
    sigsys::install_handler().map_err(SandboxError::Signal)?;
    let allowed_syscalls = syscalls::install(policy)?;
    Ok(SandboxStatus {
        landlock,
        allowed_syscalls,
    })
}
