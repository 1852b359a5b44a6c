//! The Landlock part of the sandbox: which files the backend may still open.
//!
//! Rules (everything else, for every access right Landlock ABI 1-6 knows, is denied):
//! - each [`SandboxPolicy::write_dirs`] entry (the capture directory): create regular
//!   files, write, truncate, remove; the PNG writer's temporary file + `rename` stays inside
//!   the directory, so no cross-directory `REFER` right is needed;
//! - each [`SandboxPolicy::devices`] entry (`/dev/udmabuf`, the render node or `/dev/dri`):
//!   read, write and device ioctls;
//! - `/proc/self` (the process's own `/proc/<pid>` directory): read, for dma-buf `fdinfo`
//!   and the process's own status; `/proc/sys/vm/overcommit_memory`: read (glibc's malloc
//!   consults it when it shrinks a thread arena);
//! - with GBM: `/usr/lib`, `/usr/lib64`, `/lib`, `/lib64` read + execute (Mesa's driver is
//!   `dlopen`ed per connection), `/usr/share` and `/etc` read (drirc), `/sys` read (libdrm
//!   finds the device's PCI ids there).
//!
//! Scopes (ABI 6): no connecting to abstract Unix sockets and no signals to processes
//! outside the sandbox. TCP bind/connect (ABI 4) are handled and never granted.
//! Best effort: a kernel with an older ABI enforces what it knows; a kernel without
//! Landlock enforces nothing (the seccomp filter still applies) and the outcome says so.
//!
//! procfs creates a new inode for `/proc/<pid>` whenever its dentry was evicted, and a
//! Landlock rule belongs to an inode; an `O_PATH` descriptor of `/proc/self`, held for the
//! life of the process, pins the dentry so the rule stays attached to the live directory.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{RendererNeeds, SandboxError, SandboxPolicy};

/// The newest Landlock ABI this policy is written for.
const TARGET_ABI: ABI = ABI::V6;

/// What Landlock enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockOutcome {
    /// Every rule and scope of the policy is enforced.
    FullyEnforced,
    /// The kernel's Landlock ABI is older than the policy: part of it is enforced.
    PartiallyEnforced,
    /// The kernel has no Landlock (or it is disabled): nothing is enforced by it.
    NotEnforced,
}

impl fmt::Display for LandlockOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LandlockOutcome::FullyEnforced => "fully enforced",
            LandlockOutcome::PartiallyEnforced => "partially enforced (older kernel ABI)",
            LandlockOutcome::NotEnforced => "not available in this kernel",
        })
    }
}

/// Keeps `/proc/self` pinned (see the module documentation).
static PROC_SELF: OnceLock<OwnedFd> = OnceLock::new();

fn path_fd(path: &Path) -> Result<PathFd, SandboxError> {
    PathFd::new(path).map_err(|e| SandboxError::Path {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn landlock_err(e: impl fmt::Display) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}

/// The rules as `(path, access)`, in the order they are added (for logs and tests).
pub fn rules(policy: &SandboxPolicy) -> Vec<(PathBuf, BitFlags<AccessFs>)> {
    let abi = TARGET_ABI;
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let dir_write =
        AccessFs::WriteFile | AccessFs::Truncate | AccessFs::MakeReg | AccessFs::RemoveFile;
    let mut v = Vec::new();
    for dir in &policy.write_dirs {
        v.push((dir.clone(), dir_write));
    }
    for dev in &policy.devices {
        let access = if dev.is_dir() {
            file_rw | AccessFs::IoctlDev | AccessFs::ReadDir
        } else {
            file_rw | AccessFs::IoctlDev
        };
        v.push((dev.clone(), access));
    }
    v.push((PathBuf::from("/proc/self"), AccessFs::from_read(abi)));
    v.push((
        PathBuf::from("/proc/sys/vm/overcommit_memory"),
        AccessFs::ReadFile.into(),
    ));
    if policy.gbm {
        for lib in ["/usr/lib", "/usr/lib64", "/lib", "/lib64"] {
            if Path::new(lib).exists() {
                v.push((PathBuf::from(lib), AccessFs::from_read(abi)));
            }
        }
        for dir in ["/usr/share", "/etc", "/sys"] {
            if Path::new(dir).exists() {
                v.push((PathBuf::from(dir), AccessFs::ReadFile | AccessFs::ReadDir));
            }
        }
    }
    v
}

/// The rules of the renderer's thread (and the threads Mesa starts from it): read-only
/// access to what Mesa and virglrenderer load and read, nothing written.
/// - `/usr/lib`, `/usr/lib64`, `/lib`, `/lib64` and [`RendererNeeds::library_dirs`]: read
///   and execute (virglrenderer, libEGL, Mesa's DRI driver, LLVM: `dlopen`ed when the
///   renderer starts, on this thread); `/etc/ld.so.cache` (how `dlopen` finds a soname);
/// - `/usr/share/glvnd` (libglvnd's EGL vendor files), `/usr/share/drirc.d` and
///   `/etc/drirc` (Mesa's driver configuration), `/sys/devices/system/cpu`, `/proc/stat`
///   and `/proc/meminfo` (llvmpipe's and lavapipe's thread count, CPU features, memory
///   size): read;
/// - with venus ([`RendererNeeds::venus`]): `/usr/share/vulkan`, `/usr/local/share/vulkan`,
///   `/etc/vulkan`: read (the Vulkan loader's driver and layer manifests: the first map of a
///   venus OPAQUE blob makes virglrenderer load the Vulkan loader and the installed drivers
///   into this process);
/// - `/proc/self` and `/proc/sys/vm/overcommit_memory`: read, as for every thread (Mesa
///   reads its own command name; an OPAQUE blob is looked up in `/proc/self/maps`);
/// - [`RendererNeeds::render_nodes`]: read, write, DRM ioctls (a host with a GPU).
///
/// Not granted: Mesa's on-disk shader cache (`~/.cache/mesa_shader_cache`). The backend
/// turns it off (`MESA_SHADER_CACHE_DISABLE=true`) before the renderer starts: a cache
/// the guest's shaders fill would be host disk a guest uses without a budget, and files a
/// guest can make the host write; llvmpipe compiles each shader once per run instead.
/// Not granted: the per-user Vulkan and drirc files under `$HOME` (the loader and Mesa
/// go on without them).
pub fn renderer_rules(needs: &RendererNeeds) -> Vec<(PathBuf, BitFlags<AccessFs>)> {
    let abi = TARGET_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut v = Vec::new();
    for lib in ["/usr/lib", "/usr/lib64", "/lib", "/lib64"]
        .into_iter()
        .map(PathBuf::from)
        .chain(needs.library_dirs.iter().cloned())
    {
        if lib.exists() && !v.iter().any(|(p, _)| *p == lib) {
            v.push((lib, AccessFs::from_read(abi)));
        }
    }
    for path in [
        "/etc/ld.so.cache",
        "/usr/share/glvnd",
        "/usr/share/drirc.d",
        "/etc/drirc",
        "/sys/devices/system/cpu",
        "/proc/meminfo",
        "/proc/stat",
    ] {
        if Path::new(path).exists() {
            v.push((PathBuf::from(path), read));
        }
    }
    if needs.venus {
        for path in [
            "/usr/share/vulkan",
            "/usr/local/share/vulkan",
            "/etc/vulkan",
        ] {
            if Path::new(path).exists() {
                v.push((PathBuf::from(path), read));
            }
        }
    }
    v.push((PathBuf::from("/proc/self"), AccessFs::from_read(abi)));
    v.push((
        PathBuf::from("/proc/sys/vm/overcommit_memory"),
        AccessFs::ReadFile.into(),
    ));
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    for node in &needs.render_nodes {
        let access = if node.is_dir() {
            file_rw | AccessFs::ReadDir
        } else {
            file_rw
        };
        v.push((node.clone(), access));
    }
    v
}

/// Applies the Landlock ruleset of `policy` to the calling thread (and every thread it
/// creates afterwards).
pub fn restrict(policy: &SandboxPolicy) -> Result<LandlockOutcome, SandboxError> {
    restrict_to(&rules(policy))
}

/// Applies a ruleset of `rules` (everything else denied) to the calling thread (and every
/// thread it creates afterwards).
pub fn restrict_to(
    rules: &[(PathBuf, BitFlags<AccessFs>)],
) -> Result<LandlockOutcome, SandboxError> {
    let abi = TARGET_ABI;
    if PROC_SELF.get().is_none() {
        if let Ok(fd) = rustix::fs::open(
            "/proc/self",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            let _ = PROC_SELF.set(fd);
        }
    }
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock_err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(landlock_err)?
        .scope(Scope::from_all(abi))
        .map_err(landlock_err)?
        .create()
        .map_err(landlock_err)?;
    for (path, access) in rules {
        let (path, access) = (path.clone(), *access);
        let fd = path_fd(&path)?;
        // File rules may only carry file rights.
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| SandboxError::Path {
                path: path.clone(),
                reason: e.to_string(),
            })?;
    }
    let status = ruleset.restrict_self().map_err(landlock_err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockOutcome::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockOutcome::PartiallyEnforced,
        RulesetStatus::NotEnforced => LandlockOutcome::NotEnforced,
    })
}
