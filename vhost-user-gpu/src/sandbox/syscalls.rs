//! The seccomp-bpf allowlist of the confined backend.
//!
//! Every system call the backend makes after start-up, and nothing else. The list was
//! taken from `strace -f` of the backend under the whole conformance suite (2D, blobs,
//! cross-domain contexts, display channel, PNG capture, `--keep-listening` reconnections,
//! frontend crashes) and reviewed call by call; who needs each one is said next to it in
//! [`allowlist`]. Some calls are allowed only with certain arguments:
//! - `ioctl`: only dma-buf (`'b'`: `DMA_BUF_IOCTL_SYNC`, dmabuf-info's queries), udmabuf
//!   (`'u'`: `UDMABUF_CREATE[_LIST]`) and DRM (`'d'`, with GBM or dmabuf-info's driver
//!   queries) request types, plus `TCGETS`/`FIONBIO`/`FIOCLEX`;
//! - `clone`: only with `CLONE_THREAD` (threads, never new processes); `clone3` answers
//!   `ENOSYS` (its flags are behind a pointer seccomp cannot read), and glibc then falls
//!   back to `clone`;
//! - `mmap`/`mprotect`: never `PROT_EXEC` (except with GBM, whose driver is `dlopen`ed,
//!   and with a renderer, whose llvmpipe compiles shaders to machine code at draw time);
//! - `prctl`: only `PR_SET_NAME` (thread names); `prlimit64`: only reading this process's
//!   limits; `tgkill`: only this process;
//! - with Wayland channels only: `socket` for `AF_UNIX` stream sockets, `connect` (its
//!   address is behind a pointer seccomp cannot read; Landlock keeps abstract sockets out,
//!   pathname sockets are reachable as the backend's user may reach them: run it as an
//!   unprivileged user, as libvirt does) and `pipe2`.
//!
//! Not allowed, among others: `socket` and `connect` (without Wayland channels), `bind`,
//! `listen` (the listening socket exists before the filter; connections arrive with
//! `accept4`), `execve`, `fork`,
//! `ptrace`, `kill`, `mount`, `setuid`, `bpf`, `io_uring_*`, `process_vm_*`, `open_by_handle_at`.
//!
//! A call outside the list gets `SECCOMP_RET_TRAP`, not `SECCOMP_RET_KILL_PROCESS`: the
//! kernel skips the call either way (it is never executed), but with TRAP the process
//! itself can print which call it was, on its own stderr, which is where a user or a
//! supervisor (libvirt, systemd) looks; `KILL_PROCESS` only leaves an audit record that is
//! often unreadable (containers, no auditd). The handler then re-raises `SIGSYS` with the
//! default action, so the end is the same as with `KILL_PROCESS`: the process dies by
//! `SIGSYS`. Code that wanted to get around this would need to run its own code first, in
//! which case the filter (which it cannot remove) still refuses every other call.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::{SandboxError, SandboxPolicy};

/// One allowed system call.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// Name.
    pub name: &'static str,
    /// Number on this architecture.
    pub nr: i64,
    /// Argument conditions (any rule may match; empty: any arguments).
    pub rules: Vec<SeccompRule>,
}

/// Names of the calls the diagnosis can name (the allowlist and common forbidden calls).
/// Static tables, read from the SIGSYS handler (no allocation there).
static NAMES: &[(&str, i64)] = &[
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("lseek", libc::SYS_lseek),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("openat", libc::SYS_openat),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("statx", libc::SYS_statx),
    ("fstatfs", libc::SYS_fstatfs),
    ("readlinkat", libc::SYS_readlinkat),
    ("unlinkat", libc::SYS_unlinkat),
    ("renameat2", libc::SYS_renameat2),
    ("ftruncate", libc::SYS_ftruncate),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("memfd_create", libc::SYS_memfd_create),
    ("ioctl", libc::SYS_ioctl),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("accept4", libc::SYS_accept4),
    ("shutdown", libc::SYS_shutdown),
    ("getsockopt", libc::SYS_getsockopt),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("eventfd2", libc::SYS_eventfd2),
    ("ppoll", libc::SYS_ppoll),
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("futex", libc::SYS_futex),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_yield", libc::SYS_sched_yield),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("prctl", libc::SYS_prctl),
    ("prlimit64", libc::SYS_prlimit64),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("getrandom", libc::SYS_getrandom),
    ("getdents64", libc::SYS_getdents64),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("uname", libc::SYS_uname),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("sysinfo", libc::SYS_sysinfo),
    ("pipe2", libc::SYS_pipe2),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("getcpu", libc::SYS_getcpu),
    ("kcmp", libc::SYS_kcmp),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("kill", libc::SYS_kill),
    ("tkill", libc::SYS_tkill),
    ("ptrace", libc::SYS_ptrace),
    ("mount", libc::SYS_mount),
    ("setuid", libc::SYS_setuid),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("mkdirat", libc::SYS_mkdirat),
    ("symlinkat", libc::SYS_symlinkat),
    ("linkat", libc::SYS_linkat),
    ("fchmod", libc::SYS_fchmod),
    ("fchown", libc::SYS_fchown),
    ("chdir", libc::SYS_chdir),
    ("seccomp", libc::SYS_seccomp),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("membarrier", libc::SYS_membarrier),
    ("wait4", libc::SYS_wait4),
    ("waitid", libc::SYS_waitid),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_getparam", libc::SYS_sched_getparam),
    ("sched_setparam", libc::SYS_sched_setparam),
    ("setpriority", libc::SYS_setpriority),
    ("getpriority", libc::SYS_getpriority),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("signalfd4", libc::SYS_signalfd4),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("msync", libc::SYS_msync),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("mbind", libc::SYS_mbind),
    ("getrusage", libc::SYS_getrusage),
    ("times", libc::SYS_times),
    ("clock_getres", libc::SYS_clock_getres),
    ("getppid", libc::SYS_getppid),
    ("fallocate", libc::SYS_fallocate),
    ("pkey_mprotect", libc::SYS_pkey_mprotect),
    ("mincore", libc::SYS_mincore),
];

/// x86_64's legacy numbers.
#[cfg(target_arch = "x86_64")]
static NAMES_ARCH: &[(&str, i64)] = &[
    ("renameat", libc::SYS_renameat),
    ("poll", libc::SYS_poll),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("rename", libc::SYS_rename),
    ("unlink", libc::SYS_unlink),
    ("readlink", libc::SYS_readlink),
    ("access", libc::SYS_access),
    ("fork", libc::SYS_fork),
    ("vfork", libc::SYS_vfork),
    ("open", libc::SYS_open),
    ("mkdir", libc::SYS_mkdir),
    ("getdents", libc::SYS_getdents),
];
#[cfg(not(target_arch = "x86_64"))]
static NAMES_ARCH: &[(&str, i64)] = &[];

/// The name of system call `nr` on this architecture, or `"?"`.
pub fn name_of(nr: i64) -> &'static str {
    for &(name, n) in NAMES.iter().chain(NAMES_ARCH) {
        if n == nr {
            return name;
        }
    }
    "?"
}

fn number(name: &str) -> i64 {
    NAMES
        .iter()
        .chain(NAMES_ARCH)
        .find(|(n, _)| *n == name)
        .map_or(-1, |&(_, nr)| nr)
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The ioctl request types allowed (the `_IOC_TYPE` byte).
pub const IOCTL_TYPES: [(u8, &str); 3] = [
    (b'b', "dma-buf (DMA_BUF_IOCTL_SYNC, dmabuf-info queries)"),
    (b'u', "udmabuf (UDMABUF_CREATE, UDMABUF_CREATE_LIST)"),
    (b'd', "DRM (GBM allocations, dmabuf-info driver queries)"),
];

/// The ioctl request types `policy` allows: dma-buf always, udmabuf when it is used, DRM
/// only with GBM or a renderer on a render node (the render node is the only DRM device
/// the backend opens).
pub fn ioctl_types(policy: &SandboxPolicy) -> Vec<(u8, &'static str)> {
    IOCTL_TYPES
        .into_iter()
        .filter(|&(ty, _)| match ty {
            b'u' => policy.udmabuf,
            b'd' => policy.gbm || renders_on_a_node(policy),
            _ => true,
        })
        .collect()
}

/// A renderer that opens a DRM render node (a host with a GPU).
fn renders_on_a_node(policy: &SandboxPolicy) -> bool {
    policy
        .renderer
        .as_ref()
        .is_some_and(|r| !r.render_nodes.is_empty())
}

/// The calls that create, rename or remove files: without Landlock
/// ([`crate::sandbox::Landlock::Off`]) they are answered `EACCES`, as Landlock answers them
/// outside its rules.
const FILE_CHANGING: &[&str] = &[
    "unlinkat",
    "renameat2",
    #[cfg(target_arch = "x86_64")]
    "unlink",
    #[cfg(target_arch = "x86_64")]
    "rename",
    #[cfg(target_arch = "x86_64")]
    "renameat",
];

/// `openat` flags refused without Landlock: creating (`O_CREAT`, `O_TMPFILE`), truncating,
/// and opening for writing (`render_node`: GBM or the renderer opens the render node
/// read-write, so writing stays allowed with it).
pub fn refused_open_flags(render_node: bool) -> u64 {
    // O_TMPFILE is __O_TMPFILE | O_DIRECTORY; the first bit alone marks it.
    let tmpfile = (libc::O_TMPFILE & !libc::O_DIRECTORY) as u64;
    let create = libc::O_CREAT as u64 | libc::O_TRUNC as u64 | tmpfile;
    if render_node {
        create
    } else {
        create | libc::O_WRONLY as u64 | libc::O_RDWR as u64
    }
}

/// Unconditionally allowed calls, with who needs them.
const PLAIN: &[(&str, &str)] = &[
    ("read", "sockets, eventfds, files"),
    ("write", "logging, eventfds, capture files"),
    ("readv", "std I/O"),
    ("writev", "std I/O, logging"),
    ("pread64", "dmabuf-info fdinfo reads"),
    ("pwrite64", "std I/O"),
    ("lseek", "std I/O"),
    ("close", "every fd"),
    ("fcntl", "F_DUPFD_CLOEXEC, F_GETFD/F_SETFL, memfd seals"),
    (
        "openat",
        "capture files, /proc/self/fdinfo, /dev/udmabuf (paths limited by Landlock)",
    ),
    ("newfstatat", "std::fs metadata"),
    ("fstat", "std::fs metadata"),
    ("statx", "std::fs metadata"),
    ("fstatfs", "dmabuf-info: is this fd a dma-buf"),
    ("readlinkat", "dmabuf-info: /proc/self/fd names"),
    ("unlinkat", "capture temporary file clean-up"),
    ("renameat2", "capture: temporary file + rename"),
    ("ftruncate", "memfd buffers"),
    ("fsync", "capture files"),
    ("fdatasync", "capture files"),
    ("memfd_create", "memfd and udmabuf buffers"),
    ("recvmsg", "vhost-user messages with fds"),
    (
        "sendmsg",
        "vhost-user replies, SHMEM_MAP with fds, display messages",
    ),
    ("recvfrom", "Unix stream reads"),
    ("sendto", "Unix stream writes"),
    ("accept4", "--keep-listening: the next frontend"),
    ("shutdown", "closing connections"),
    ("getsockopt", "checks of fds the frontend sends"),
    ("epoll_create1", "the queue thread's event loop"),
    ("epoll_ctl", "the queue thread's event loop"),
    ("epoll_pwait", "the queue thread's event loop"),
    ("eventfd2", "queue kick/exit events"),
    ("ppoll", "std and vhost waits"),
    ("brk", "malloc"),
    ("munmap", "malloc, guest memory and buffer mappings"),
    ("mremap", "realloc of large buffers"),
    ("madvise", "malloc, thread stacks"),
    ("futex", "locks, condition variables"),
    ("set_robust_list", "new threads (glibc)"),
    ("rseq", "new threads (glibc)"),
    ("sched_getaffinity", "new threads (glibc, std)"),
    ("sched_yield", "spin waits"),
    ("gettid", "threads, SIGSYS handler"),
    ("getpid", "SIGSYS handler"),
    ("exit", "thread exit"),
    ("exit_group", "process exit"),
    ("rt_sigaction", "signal set-up, SIGSYS handler"),
    ("rt_sigprocmask", "new threads (glibc)"),
    ("rt_sigreturn", "return from signal handlers"),
    ("sigaltstack", "Rust's stack-overflow guard on every thread"),
    ("restart_syscall", "interrupted sleeps"),
    ("clock_gettime", "timestamps (normally vDSO)"),
    ("clock_nanosleep", "sleeps"),
    ("nanosleep", "sleeps"),
    ("getrandom", "RESOURCE_ASSIGN_UUID, hash map seeds"),
];

/// x86_64's legacy calls glibc still uses there.
#[cfg(target_arch = "x86_64")]
const PLAIN_ARCH: &[(&str, &str)] = &[
    ("poll", "std and vhost waits"),
    ("epoll_wait", "the queue thread's event loop"),
    ("rename", "capture: temporary file + rename"),
    ("renameat", "capture: temporary file + rename"),
    (
        "unlink",
        "capture temporary file clean-up; socket file on exit",
    ),
    ("readlink", "dmabuf-info: /proc/self/fd names"),
];
#[cfg(not(target_arch = "x86_64"))]
const PLAIN_ARCH: &[(&str, &str)] = &[];

/// Extra calls Mesa's GBM makes (only with `--allocator gbm`).
const GBM_EXTRA: &[(&str, &str)] = &[
    (
        "getdents64",
        "Mesa/libdrm: directory listings (/dev/dri, /sys)",
    ),
    ("faccessat", "Mesa: file checks"),
    ("faccessat2", "Mesa: file checks"),
    ("uname", "Mesa: driver selection"),
    ("getuid", "Mesa: secure environment checks"),
    ("geteuid", "Mesa: secure environment checks"),
    ("getgid", "Mesa: secure environment checks"),
    ("getegid", "Mesa: secure environment checks"),
    ("sysinfo", "Mesa: memory size"),
    ("pipe2", "Mesa: utility queues"),
    ("dup", "libdrm"),
    ("dup3", "libdrm"),
    ("getcpu", "Mesa: thread placement"),
    ("kcmp", "libdrm: same-device checks"),
];
#[cfg(target_arch = "x86_64")]
const GBM_EXTRA_ARCH: &[(&str, &str)] = &[("access", "Mesa: file checks")];
#[cfg(not(target_arch = "x86_64"))]
const GBM_EXTRA_ARCH: &[(&str, &str)] = &[];

/// Extra calls of the renderer (only when a virgl or venus capset is served; the Vulkan
/// loader's in [`VENUS_EXTRA`]): what virglrenderer, Mesa's llvmpipe and (for venus blobs)
/// the Vulkan loader with lavapipe make after start-up, beyond the minimal list, as seen under `strace -f` of the backend in the
/// `render` lane (virgl, kmscube, vulkaninfo, vk-hostmem through venus) and of virgl draws,
/// and with the filter in place (the SIGSYS diagnosis named `access` first).
/// The first map of a venus OPAQUE blob makes virglrenderer (`vkr_allocator`) load the
/// Vulkan loader and every installed Vulkan driver into this process, on the renderer's
/// thread.
/// Executable mappings, the render server's process and DRM ioctls are argument rules in
/// [`allowlist`].
const RENDERER_EXTRA: &[(&str, &str)] = &[
    (
        "sysinfo",
        "llvmpipe: total memory, when a context is created",
    ),
    (
        "timerfd_settime",
        "fence polling when virglrenderer has no fence thread (our 2 ms timer)",
    ),
    (
        "sched_setaffinity",
        "lavapipe/llvmpipe: placing their rasterizer threads",
    ),
];

/// Extra calls with venus only ([`crate::sandbox::RendererNeeds::venus`]): the Vulkan
/// loader's, when virglrenderer loads it to import a venus OPAQUE blob.
const VENUS_EXTRA: &[(&str, &str)] = &[
    (
        "getdents64",
        "Vulkan loader: listing its manifest directories (venus OPAQUE blob maps)",
    ),
    ("faccessat", "Vulkan loader: manifest and layer checks"),
    ("faccessat2", "Vulkan loader: manifest and layer checks"),
    ("getuid", "Vulkan loader: secure environment checks"),
    ("geteuid", "Vulkan loader: secure environment checks"),
    ("getgid", "Vulkan loader: secure environment checks"),
    ("getegid", "Vulkan loader: secure environment checks"),
];
#[cfg(target_arch = "x86_64")]
const VENUS_EXTRA_ARCH: &[(&str, &str)] = &[("access", "Vulkan loader: manifest and layer checks")];
#[cfg(not(target_arch = "x86_64"))]
const VENUS_EXTRA_ARCH: &[(&str, &str)] = &[];

/// The allowlist for `policy` (`pid`: this process, for `tgkill`).
pub fn allowlist(policy: &SandboxPolicy, pid: u32) -> Result<Vec<Allowed>, SandboxError> {
    let mut v = Vec::new();
    let plain = |name: &'static str| Allowed {
        name,
        nr: number(name),
        rules: Vec::new(),
    };
    for &(name, _) in PLAIN.iter().chain(PLAIN_ARCH) {
        v.push(plain(name));
    }
    if policy.gbm {
        for &(name, _) in GBM_EXTRA.iter().chain(GBM_EXTRA_ARCH) {
            v.push(plain(name));
        }
    }
    if let Some(renderer) = &policy.renderer {
        let venus: &[(&str, &str)] = if renderer.venus { VENUS_EXTRA } else { &[] };
        let venus_arch: &[(&str, &str)] = if renderer.venus {
            VENUS_EXTRA_ARCH
        } else {
            &[]
        };
        for &(name, _) in RENDERER_EXTRA.iter().chain(venus).chain(venus_arch) {
            if !v.iter().any(|a| a.name == name) {
                v.push(plain(name));
            }
        }
    }
    let with = |name: &'static str, rules: Vec<SeccompRule>| Allowed {
        name,
        nr: number(name),
        rules,
    };
    if policy.wayland {
        // socket(AF_UNIX, SOCK_STREAM | flags, 0): the type's low bits are the kind,
        // SOCK_CLOEXEC and SOCK_NONBLOCK sit above them.
        v.push(with(
            "socket",
            vec![rule(vec![
                cond(0, Len::Dword, Op::Eq, libc::AF_UNIX as u64)?,
                cond(1, Len::Dword, Op::MaskedEq(0xf), libc::SOCK_STREAM as u64)?,
            ])?],
        ));
        v.push(plain("connect"));
        if !policy.gbm {
            v.push(plain("pipe2"));
        }
    }
    // ioctl: by request type (udmabuf only when it is used, DRM only with GBM's render
    // node), plus three terminal/fd requests.
    let mut ioctl_rules = Vec::new();
    for (ty, _) in ioctl_types(policy) {
        ioctl_rules.push(rule(vec![cond(
            1,
            Len::Dword,
            Op::MaskedEq(0xff00),
            u64::from(ty) << 8,
        )?])?);
    }
    for request in [libc::TCGETS, libc::FIONBIO, libc::FIOCLEX] {
        ioctl_rules.push(rule(vec![cond(1, Len::Dword, Op::Eq, request)?])?);
    }
    v.push(with("ioctl", ioctl_rules));
    // mmap/mprotect: no executable mappings unless Mesa has to load its driver (GBM) or
    // the renderer's LLVM compiles shaders to machine code while the guest draws (llvmpipe
    // maps its code memory read-write-execute, Mesa 22, or writes it and then makes it
    // executable, Mesa 25).
    for name in ["mmap", "mprotect"] {
        if policy.gbm || policy.renderer.is_some() {
            v.push(plain(name));
        } else {
            v.push(with(
                name,
                vec![rule(vec![cond(
                    2,
                    Len::Dword,
                    Op::MaskedEq(libc::PROT_EXEC as u64),
                    0,
                )?])?],
            ));
        }
    }
    // clone: threads only. clone3 is listed so that the ENOSYS filter's answer stands.
    v.push(with(
        "clone",
        vec![rule(vec![cond(
            0,
            Len::Dword,
            Op::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )?])?],
    ));
    v.push(plain("clone3"));
    v.push(with(
        "prctl",
        vec![rule(vec![cond(
            0,
            Len::Dword,
            Op::Eq,
            libc::PR_SET_NAME as u64,
        )?])?],
    ));
    v.push(with(
        "prlimit64",
        vec![rule(vec![
            cond(0, Len::Dword, Op::Eq, 0)?,
            cond(2, Len::Qword, Op::Eq, 0)?,
        ])?],
    ));
    v.push(with(
        "tgkill",
        vec![rule(vec![cond(0, Len::Dword, Op::Eq, u64::from(pid))?])?],
    ));
    // The render server (venus) is this process's child: when the renderer stops it is
    // waited for, and killed if it does not exit. That process only, and SIGKILL only.
    if let Some(server) = policy.renderer.as_ref().and_then(|r| r.render_server) {
        let server = u64::from(server);
        v.push(with(
            "kill",
            vec![rule(vec![
                cond(0, Len::Dword, Op::Eq, server)?,
                cond(1, Len::Dword, Op::Eq, libc::SIGKILL as u64)?,
            ])?],
        ));
        v.push(with(
            "wait4",
            vec![rule(vec![cond(0, Len::Dword, Op::Eq, server)?])?],
        ));
        v.push(with(
            "waitid",
            vec![rule(vec![
                cond(0, Len::Dword, Op::Eq, libc::P_PID as u64)?,
                cond(1, Len::Dword, Op::Eq, server)?,
            ])?],
        ));
    }
    // The render worker (a child of this process): killed when it stops answering and
    // waited for when it ends. That process only, and SIGKILL only.
    if let Some(worker) = policy.render_worker {
        let worker = u64::from(worker);
        let kill = vec![rule(vec![
            cond(0, Len::Dword, Op::Eq, worker)?,
            cond(1, Len::Dword, Op::Eq, libc::SIGKILL as u64)?,
        ])?];
        let wait4 = vec![rule(vec![cond(0, Len::Dword, Op::Eq, worker)?])?];
        let waitid = vec![rule(vec![
            cond(0, Len::Dword, Op::Eq, libc::P_PID as u64)?,
            cond(1, Len::Dword, Op::Eq, worker)?,
        ])?];
        for (name, rules) in [("kill", kill), ("wait4", wait4), ("waitid", waitid)] {
            match v.iter_mut().find(|a| a.name == name) {
                Some(a) if !a.rules.is_empty() => a.rules.extend(rules),
                Some(_) => {}
                None => v.push(with(name, rules)),
            }
        }
    }
    if let Some(missing) = v.iter().find(|a| a.nr < 0) {
        return Err(SandboxError::Seccomp(format!(
            "no number for {} (table out of date)",
            missing.name
        )));
    }
    Ok(v)
}

/// Every allowed call's name (with and without GBM), for documentation and tests.
pub fn documented() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<(&str, &str)> = PLAIN.iter().chain(PLAIN_ARCH).copied().collect();
    v.extend([
        (
            "ioctl",
            "request types 'b', 'u' (udmabuf in use), 'd' (GBM only) and TCGETS/FIONBIO/FIOCLEX only",
        ),
        ("mmap", "not PROT_EXEC (except with GBM, and in the 3D profile)"),
        ("mprotect", "not PROT_EXEC (except with GBM, and in the 3D profile)"),
        ("clone", "CLONE_THREAD only"),
        ("clone3", "answered ENOSYS (glibc falls back to clone)"),
        ("prctl", "PR_SET_NAME only"),
        ("prlimit64", "reading this process's limits only"),
        ("tgkill", "this process only"),
    ]);
    v
}

/// The extra calls allowed with Wayland channels.
pub fn documented_wayland() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "socket",
            "AF_UNIX stream sockets only: compositor connections",
        ),
        (
            "connect",
            "compositor connections (one per guest context with a channel)",
        ),
        ("pipe2", "clipboard and drag-and-drop read pipes"),
    ]
}

/// The extra calls allowed with a renderer (3D contexts served).
pub fn documented_renderer() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<(&str, &str)> = RENDERER_EXTRA
        .iter()
        .chain(VENUS_EXTRA)
        .chain(VENUS_EXTRA_ARCH)
        .copied()
        .collect();
    v.extend([
        (
            "mmap",
            "PROT_EXEC too: llvmpipe's shader code (LLVM compiles at draw time)",
        ),
        (
            "mprotect",
            "PROT_EXEC too: llvmpipe's shader code made executable",
        ),
        ("kill", "SIGKILL to the render server only (venus)"),
        ("wait4", "the render server only (venus)"),
        ("waitid", "the render server only (venus)"),
        (
            "ioctl",
            "DRM requests ('d') too when Mesa renders on a render node",
        ),
    ]);
    v
}

/// The extra calls allowed with GBM.
pub fn documented_gbm() -> Vec<(&'static str, &'static str)> {
    GBM_EXTRA.iter().chain(GBM_EXTRA_ARCH).copied().collect()
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SandboxError::Seccomp(format!(
            "architecture {} is not supported (x86_64 and aarch64 are)",
            std::env::consts::ARCH
        )))
    }
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, target_arch()?)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// The BPF programs: `clone3` -> `ENOSYS` (anything else allowed); without Landlock, the
/// file-changing calls and file-creating or writing opens -> `EACCES`; then the allowlist
/// (anything else trapped). The kernel runs every filter and takes the most severe answer.
pub fn programs(policy: &SandboxPolicy) -> Result<Vec<BpfProgram>, SandboxError> {
    let mut programs = vec![compile(
        BTreeMap::from([(number("clone3"), Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?];
    if policy.landlock == crate::sandbox::Landlock::Off {
        let mut refused: BTreeMap<i64, Vec<SeccompRule>> = FILE_CHANGING
            .iter()
            .map(|name| (number(name), Vec::new()))
            .collect();
        // openat(dirfd, path, flags, mode): any refused flag set.
        let flags = refused_open_flags(policy.gbm || renders_on_a_node(policy));
        let mut open_rules = Vec::new();
        for bit in (0..32).map(|i| 1u64 << i).filter(|b| flags & b != 0) {
            open_rules.push(rule(vec![cond(2, Len::Dword, Op::MaskedEq(bit), bit)?])?);
        }
        refused.insert(number("openat"), open_rules);
        programs.push(compile(
            refused,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?);
    }
    let mut rules = BTreeMap::new();
    for a in allowlist(policy, std::process::id())? {
        rules.insert(a.nr, a.rules);
    }
    programs.push(compile(rules, SeccompAction::Trap, SeccompAction::Allow)?);
    Ok(programs)
}

/// Installs the filters on every thread of the process (TSYNC); returns the number of
/// allowed calls.
pub fn install(policy: &SandboxPolicy) -> Result<usize, SandboxError> {
    let count = allowlist(policy, std::process::id())?.len();
    // The clone3 and file filters first: installing the allowlist last needs seccomp(2),
    // which the allowlist itself does not allow.
    for program in programs(policy)? {
        seccompiler::apply_filter_all_threads(&program)
            .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_call_has_a_number_and_a_name() {
        for gbm in [false, true] {
            let policy = SandboxPolicy {
                gbm,
                ..SandboxPolicy::default()
            };
            let list = allowlist(&policy, 1).unwrap();
            for a in &list {
                assert!(a.nr >= 0, "{}", a.name);
                assert_eq!(name_of(a.nr), a.name);
            }
            let mut nrs: Vec<i64> = list.iter().map(|a| a.nr).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), list.len(), "duplicate entries");
        }
    }

    #[test]
    fn dangerous_calls_are_not_listed() {
        let policy = SandboxPolicy::default();
        let list = allowlist(&policy, 1).unwrap();
        for name in [
            "socket", "connect", "bind", "listen", "execve", "kill", "ptrace", "mount", "seccomp",
            "bpf", "fork", "vfork", "open",
        ] {
            assert!(
                !list.iter().any(|a| a.name == name),
                "{name} must not be allowed"
            );
        }
        assert_eq!(name_of(libc::SYS_socket), "socket");
        assert_eq!(name_of(-7), "?");
    }

    #[test]
    fn readme_lists_every_allowed_call() {
        let readme = include_str!("../../README-launch.md");
        for (name, _) in documented()
            .into_iter()
            .chain(documented_gbm())
            .chain(documented_wayland())
            .chain(documented_renderer())
        {
            assert!(
                readme.contains(&format!("`{name}`")),
                "README-launch.md does not list `{name}`"
            );
        }
    }

    fn programs_len(policy: &SandboxPolicy) -> usize {
        programs(policy).unwrap().len()
    }

    #[test]
    fn ioctl_types_follow_the_devices_in_use() {
        let names = |policy: &SandboxPolicy| -> Vec<u8> {
            ioctl_types(policy).into_iter().map(|(t, _)| t).collect()
        };
        assert_eq!(names(&SandboxPolicy::default()), vec![b'b']);
        let udmabuf = SandboxPolicy {
            udmabuf: true,
            ..SandboxPolicy::default()
        };
        assert_eq!(names(&udmabuf), vec![b'b', b'u']);
        let gbm = SandboxPolicy {
            gbm: true,
            ..SandboxPolicy::default()
        };
        assert_eq!(names(&gbm), vec![b'b', b'd']);
    }

    #[test]
    fn the_3d_profile_adds_to_the_minimal_one() {
        use crate::sandbox::RendererNeeds;
        let minimal = allowlist(&SandboxPolicy::default(), 1).unwrap();
        let with = |needs: RendererNeeds| {
            allowlist(
                &SandboxPolicy {
                    renderer: Some(needs),
                    ..SandboxPolicy::default()
                },
                1,
            )
            .unwrap()
        };
        let renderer = with(RendererNeeds::default());
        // Everything of the minimal list stays, plus the renderer's calls.
        for a in &minimal {
            assert!(renderer.iter().any(|b| b.nr == a.nr), "{}", a.name);
        }
        for (name, _) in RENDERER_EXTRA {
            assert!(renderer.iter().any(|a| a.name == *name), "{name}");
        }
        // The Vulkan loader's calls only with venus.
        let venus = with(RendererNeeds {
            venus: true,
            ..RendererNeeds::default()
        });
        for (name, _) in VENUS_EXTRA.iter().chain(VENUS_EXTRA_ARCH) {
            assert!(!renderer.iter().any(|a| a.name == *name), "{name}");
            assert!(venus.iter().any(|a| a.name == *name), "{name}");
        }
        // Executable memory: conditions on the minimal list, none with a renderer.
        for name in ["mmap", "mprotect"] {
            let find = |list: &[Allowed]| list.iter().find(|a| a.name == name).unwrap().rules.len();
            assert_eq!(find(&minimal), 1, "{name}");
            assert_eq!(find(&renderer), 0, "{name}");
        }
        // kill and wait only with a render server, and then with conditions.
        assert!(!renderer.iter().any(|a| a.name == "kill"));
        let server = with(RendererNeeds {
            render_server: Some(4242),
            ..RendererNeeds::default()
        });
        for name in ["kill", "wait4", "waitid"] {
            let a = server.iter().find(|a| a.name == name).unwrap();
            assert_eq!(a.rules.len(), 1, "{name}");
        }
        // DRM ioctls only with a render node.
        let types = |needs: RendererNeeds| -> Vec<u8> {
            ioctl_types(&SandboxPolicy {
                renderer: Some(needs),
                ..SandboxPolicy::default()
            })
            .into_iter()
            .map(|(t, _)| t)
            .collect()
        };
        assert_eq!(types(RendererNeeds::default()), vec![b'b']);
        let node = RendererNeeds {
            render_nodes: vec!["/dev/dri".into()],
            ..RendererNeeds::default()
        };
        assert_eq!(types(node.clone()), vec![b'b', b'd']);
        assert!(programs(&SandboxPolicy {
            renderer: Some(node),
            ..SandboxPolicy::default()
        })
        .is_ok());
    }

    #[test]
    fn without_landlock_only_read_only_opens_stay() {
        let flags = refused_open_flags(false);
        for f in [
            libc::O_CREAT,
            libc::O_TRUNC,
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_TMPFILE,
        ] {
            assert_ne!(flags & f as u64, 0, "{f:#o}");
        }
        for f in [
            libc::O_RDONLY,
            libc::O_CLOEXEC,
            libc::O_DIRECTORY,
            libc::O_PATH,
        ] {
            assert_eq!(flags & f as u64, 0, "{f:#o}");
        }
        // With GBM the render node is opened read-write.
        assert_eq!(refused_open_flags(true) & libc::O_RDWR as u64, 0);
        assert_ne!(refused_open_flags(true) & libc::O_CREAT as u64, 0);
    }

    #[test]
    fn filters_compile() {
        for (gbm, wayland) in [(false, false), (true, false), (false, true), (true, true)] {
            let policy = SandboxPolicy {
                gbm,
                wayland,
                ..SandboxPolicy::default()
            };
            let list = allowlist(&policy, 1).unwrap();
            let mut nrs: Vec<i64> = list.iter().map(|a| a.nr).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), list.len(), "duplicate entries");
            assert_eq!(list.iter().any(|a| a.name == "connect"), wayland);
            let programs = programs(&policy).unwrap();
            assert_eq!(programs.len(), 2);
            assert!(programs.iter().all(|p| !p.is_empty()));
            let unconfined = SandboxPolicy {
                landlock: crate::sandbox::Landlock::Off,
                ..policy
            };
            assert_eq!(programs_len(&unconfined), 3, "the EACCES filter for files");
        }
    }
}
