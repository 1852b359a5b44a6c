//! The vhost-user frontend: starts a backend program and drives it like QEMU does.
//!
//! Built on the `vhost` crate's frontend (`vhost::vhost_user::Frontend`) for the standard
//! messages; `VHOST_USER_GPU_SET_SOCKET` (request 33), which the crate cannot send, is
//! written by hand on the same socket.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend as VuFrontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::display::{DisplayConfig, DisplayServer};
use crate::gpu::{self, Cmd, Resp};
use crate::memory::GuestRam;
use crate::proc_stats::ProcStats;
use crate::shmem::{BackendRequestServer, MappingChangeHook, SharedMemoryRegion};
use crate::virtq::{RawDesc, Segment, SplitQueue, RING_F_EVENT_IDX, RING_F_INDIRECT_DESC};
use crate::{Error, Result};

/// `VHOST_USER_GPU_SET_SOCKET`.
const GPU_SET_SOCKET: u32 = 33;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Control queue index.
pub const CONTROL_QUEUE: usize = 0;
/// Cursor queue index.
pub const CURSOR_QUEUE: usize = 1;
/// Regions a `SET_MEM_TABLE` can carry without CONFIGURE_MEM_SLOTS.
const MAX_TABLE_REGIONS: usize = 8;
/// How long to wait for a backend before calling it hung (a guard, not an assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// Which backend implementation is under test; decides its command line and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// This project's `vhost-user-gpu`.
    Ours,
    /// QEMU's reference C backend (`/usr/lib/qemu/vhost-user-gpu`).
    Qemu,
    /// rust-vmm's `vhost-device-gpu`.
    VhostDeviceGpu,
}

impl Peer {
    /// Parses `ours`, `qemu` or `vhost-device-gpu`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ours" | "vhost-user-gpu" => Some(Self::Ours),
            "qemu" => Some(Self::Qemu),
            "vhost-device-gpu" | "vdg" => Some(Self::VhostDeviceGpu),
            _ => None,
        }
    }
    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Qemu => "qemu",
            Self::VhostDeviceGpu => "vhost-device-gpu",
        }
    }
}

/// How to start a backend.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// The program.
    pub program: PathBuf,
    /// Extra arguments after the socket path.
    pub args: Vec<String>,
    /// Which implementation it is.
    pub peer: Peer,
    /// Environment variables for the backend. Our binary runs with `RUST_LOG=debug` unless
    /// `RUST_LOG` is set here or in the environment of the tests.
    pub env: Vec<(String, String)>,
    /// Resource limits set in the backend's process before it starts, soft and hard
    /// ([`crate::limits`]).
    pub limits: Vec<(crate::limits::Resource, u64)>,
}

impl BackendSpec {
    /// `program`, which is `peer`, with no extra arguments, environment or limits.
    pub fn new(program: impl Into<PathBuf>, peer: Peer) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            peer,
            env: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// Sets an environment variable of the backend.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the backend with `resource`'s soft and hard limit set to `value`.
    pub fn with_limit(mut self, resource: crate::limits::Resource, value: u64) -> Self {
        self.limits.push((resource, value));
        self
    }

    /// The command that starts this backend (its arguments follow): its limits set in the
    /// child before exec ([`crate::limits`]), its environment; our binary logs at debug level
    /// unless `RUST_LOG` says otherwise.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        crate::limits::set_at_exec(&mut cmd, &self.limits);
        if self.peer == Peer::Ours && std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "debug");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `VUG_BACKEND=/path` (+ `VUG_BACKEND_PEER=qemu|vhost-device-gpu|ours`) if set, else
    /// `ours` run from `default_program`. For our binary, `VUG_ALLOCATOR=NAME` (`memfd`,
    /// `udmabuf`, `gbm`, `auto`) adds `--allocator NAME`; without it the cases start it with
    /// `--allocator memfd`.
    pub fn from_env(default_program: &Path) -> Self {
        let mut spec = Self::from_env_without_allocator(default_program);
        if spec.peer == Peer::Ours {
            if let Some(name) = std::env::var("VUG_ALLOCATOR")
                .ok()
                .filter(|s| !s.is_empty())
            {
                spec.args.extend(["--allocator".to_string(), name]);
            }
        }
        spec
    }

    /// The `--allocator` this spec passes to our binary, if any.
    pub fn allocator(&self) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == "--allocator")
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }

    fn from_env_without_allocator(default_program: &Path) -> Self {
        match std::env::var_os("VUG_BACKEND") {
            Some(p) => {
                let peer = std::env::var("VUG_BACKEND_PEER")
                    .ok()
                    .and_then(|s| Peer::parse(&s))
                    .unwrap_or_else(|| guess_peer(Path::new(&p)));
                Self::new(p, peer)
            }
            None => Self::new(default_program, Peer::Ours),
        }
    }

    /// Adds arguments.
    pub fn with_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

fn guess_peer(p: &Path) -> Peer {
    let s = p.to_string_lossy();
    if s.contains("qemu") {
        Peer::Qemu
    } else if s.contains("vhost-device-gpu") {
        Peer::VhostDeviceGpu
    } else {
        Peer::Ours
    }
}

/// Frontend settings.
#[derive(Debug, Clone)]
pub struct FrontendOptions {
    /// Guest RAM size.
    pub ram_size: usize,
    /// Entries per virtqueue.
    pub queue_size: u16,
    /// virtio-gpu feature bits the "driver" wants (masked by what the backend offers).
    pub gpu_features: u64,
    /// The display the frontend pretends to have.
    pub display: DisplayConfig,
    /// Re-send the memory table, with every live host-visible mapping as a region, after
    /// each `SHMEM_MAP`/`SHMEM_UNMAP`, as QEMU does (it then includes e.g. `0xe0000000+0x10000`).
    pub memtable_follows_mappings: bool,
    /// Guest-physical address of the host-visible window in those memory tables.
    pub shmem_window_gpa: u64,
    /// Negotiate `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS` if the backend offers it, and
    /// then do what QEMU does: `GET_MAX_MEM_SLOTS` at connection, the initial memory as one
    /// `ADD_MEM_REG` per region instead of `SET_MEM_TABLE`, and after each mapping change
    /// `REM_MEM_REG` for every region that went away followed by `ADD_MEM_REG` for every new
    /// one (never the whole table). Default: on, unless `VUG_MEM_SLOTS=0` (or `off`) is set,
    /// which makes every frontend send whole tables as QEMU does with a backend that does not
    /// offer the feature.
    pub configure_mem_slots: bool,
    /// Negotiate `VIRTIO_RING_F_INDIRECT_DESC` and use indirect tables for multi-buffer
    /// chains, as the Linux driver does.
    pub indirect_descriptors: bool,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` and drive `used_event`, as the Linux driver does.
    pub event_idx: bool,
    /// Give the backend QEMU's display channel (`VHOST_USER_GPU_SET_SOCKET` with a display
    /// socket this frontend answers), as QEMU's `vhost-user-gpu-pci` does. Off: no display
    /// channel at all, as QEMU's generic `vhost-user-test-device-pci` and crosvm do; then
    /// [`Frontend::display`] is `None`. Default: on.
    pub display_channel: bool,
    /// Start our backend with `--control-socket`, so that [`Frontend::upgrade`] can replace
    /// it with a new process (live upgrade). Default: on when `VUG_UPGRADE_EVERY` is set.
    pub control_socket: bool,
    /// Upgrade the backend before every N-th control command, at most `max` times per
    /// frontend: `VUG_UPGRADE_EVERY=N` (and `VUG_UPGRADE_MAX`, default 4) run every case with
    /// upgrades in the middle. Default: from those variables; `None` without them.
    pub upgrade_every: Option<UpgradeSchedule>,
}

/// When a frontend upgrades its backend by itself ([`FrontendOptions::upgrade_every`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeSchedule {
    /// Before every `every`-th control command.
    pub every: u64,
    /// At most this many upgrades per frontend.
    pub max: u32,
}

impl UpgradeSchedule {
    /// `VUG_UPGRADE_EVERY` / `VUG_UPGRADE_MAX`.
    pub fn from_env() -> Option<Self> {
        let every: u64 = std::env::var("VUG_UPGRADE_EVERY")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let max = std::env::var("VUG_UPGRADE_MAX")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(4);
        (every > 0).then_some(Self { every, max })
    }
}

/// A live upgrade under way ([`Frontend::begin_upgrade`]).
pub struct PendingUpgrade {
    new: Option<std::process::Child>,
    old_pid: u32,
    started: Instant,
}

impl Drop for PendingUpgrade {
    fn drop(&mut self) {
        // An upgrade abandoned half-way: the new process must not linger.
        if let Some(mut new) = self.new.take() {
            let _ = new.kill();
            let _ = new.wait();
        }
    }
}

/// One live upgrade of the backend.
#[derive(Debug, Clone, Copy)]
pub struct Upgraded {
    /// The process that served before.
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
    /// From starting the new process to the old one's exit.
    pub took: Duration,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        Self {
            ram_size: 128 << 20,
            queue_size: 256,
            gpu_features: gpu::features::EDID
                | gpu::features::RESOURCE_UUID
                | gpu::features::RESOURCE_BLOB
                | gpu::features::CONTEXT_INIT
                | gpu::features::VIRGL,
            display: DisplayConfig::default(),
            memtable_follows_mappings: true,
            shmem_window_gpa: 1 << 32,
            configure_mem_slots: mem_slots_from_env(),
            indirect_descriptors: true,
            event_idx: true,
            display_channel: true,
            control_socket: UpgradeSchedule::from_env().is_some(),
            upgrade_every: UpgradeSchedule::from_env(),
        }
    }
}

/// `VUG_MEM_SLOTS`: `0`, `off`, `no` or `false` turn `CONFIGURE_MEM_SLOTS` off by default.
fn mem_slots_from_env() -> bool {
    std::env::var("VUG_MEM_SLOTS").map_or(true, |v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "no" | "false"
        )
    })
}

/// Protocol features this frontend implements.
pub fn supported_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::SHMEM
}

struct InFlight {
    buffers: Vec<u64>,
    resp: Option<(u64, usize)>,
}

/// One live vhost-user connection and everything hanging off it.
struct Connection {
    vu: VuFrontend,
    raw: UnixStream,
    offered_features: u64,
    acked_features: u64,
    protocol: VhostUserProtocolFeatures,
    queues: Vec<SplitQueue>,
    in_flight: Vec<HashMap<u16, InFlight>>,
    region: Option<Arc<SharedMemoryRegion>>,
    requests: Option<BackendRequestServer>,
    display: Option<DisplayServer>,
    config: Vec<u8>,
    memory: Arc<Mutex<MemoryTable>>,
}

impl Connection {
    /// Virtqueue `queue`.
    fn queue_mut(&mut self, queue: usize) -> Result<&mut SplitQueue> {
        self.queues
            .get_mut(queue)
            .ok_or(Error::Queue(format!("no queue {queue}")))
    }
}

/// The driver's rings carried to a new connection ([`Frontend::reconnect_resuming`]).
struct ResumedRings {
    queues: Vec<SplitQueue>,
    in_flight: Vec<HashMap<u16, InFlight>>,
}

/// A region as the backend was told about it (what QEMU keeps as its "shadow" regions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentRegion {
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
    mmap_offset: u64,
}

impl SentRegion {
    fn of(r: &VhostUserMemoryRegionInfo) -> Self {
        Self {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            mmap_offset: r.mmap_offset,
        }
    }
}

/// How the frontend tells the backend about its memory, and what it told it so far.
struct MemoryTable {
    vu: VuFrontend,
    /// `Some(max slots)` when `CONFIGURE_MEM_SLOTS` was negotiated.
    slots: Option<usize>,
    /// The regions the backend has now (slots mode).
    sent: Vec<SentRegion>,
}

impl MemoryTable {
    /// Brings the backend to `regions`: one `SET_MEM_TABLE`, or (with memory slots) the
    /// removals, then the additions, each acknowledged when REPLY_ACK is on (QEMU's order).
    fn update(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> Result<()> {
        let Some(max) = self.slots else {
            if regions.len() > MAX_TABLE_REGIONS {
                return Err(Error::Malformed(format!(
                    "{} regions: more than a memory table can carry ({MAX_TABLE_REGIONS})",
                    regions.len()
                )));
            }
            return self
                .vu
                .set_mem_table(regions)
                .map(|_| ())
                .map_err(Error::vhost("SET_MEM_TABLE"));
        };
        if regions.len() > max {
            return Err(Error::Malformed(format!(
                "{} regions: more than the backend's {max} memory slots",
                regions.len()
            )));
        }
        let wanted: Vec<SentRegion> = regions.iter().map(SentRegion::of).collect();
        let gone: Vec<SentRegion> = self
            .sent
            .iter()
            .filter(|r| !wanted.contains(r))
            .copied()
            .collect();
        for r in gone {
            let info = VhostUserMemoryRegionInfo {
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.memory_size,
                userspace_addr: r.userspace_addr,
                mmap_offset: r.mmap_offset,
                mmap_handle: -1,
            };
            self.vu
                .remove_mem_region(&info)
                .map_err(Error::vhost("REM_MEM_REG"))?;
            self.sent.retain(|s| *s != r);
        }
        for (info, r) in regions.iter().zip(&wanted) {
            if self.sent.contains(r) {
                continue;
            }
            self.vu
                .add_mem_region(info)
                .map_err(Error::vhost("ADD_MEM_REG"))?;
            self.sent.push(*r);
        }
        Ok(())
    }
}

/// The control socket's name in the frontend's directory.
const CONTROL_SOCKET: &str = "control.sock";
/// How long a live upgrade may take before the frontend gives up on it.
const UPGRADE_LIMIT: Duration = Duration::from_secs(30);

/// A running backend and the frontend talking to it.
pub struct Frontend {
    spec: BackendSpec,
    options: FrontendOptions,
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
    ram: Arc<GuestRam>,
    conn: Option<Connection>,
    memtable_errors: Arc<Mutex<Vec<String>>>,
    /// Region generation the last memory-table update described.
    memtable_synced: Arc<std::sync::atomic::AtomicU64>,
    /// The backend's stderr (one file description, shared by every process that serves).
    log: Option<File>,
    /// Control commands sent (for [`FrontendOptions::upgrade_every`]).
    commands: u64,
    /// Live upgrades done.
    upgrades: Vec<Upgraded>,
}

impl Frontend {
    /// Starts the backend with default options and connects.
    pub fn spawn(spec: BackendSpec) -> Result<Self> {
        Self::spawn_with(spec, FrontendOptions::default())
    }

    /// Starts the backend and connects.
    pub fn spawn_with(spec: BackendSpec, options: FrontendOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vug-conformance")
            .tempdir()
            .map_err(Error::io("tempdir"))?;
        let socket = dir.path().join("backend.sock");
        let stderr = File::create(dir.path().join("backend.log")).map_err(Error::io("log"))?;
        let log = stderr.try_clone().map_err(Error::io("log"))?;
        let mut cmd = spec.command();
        cmd.arg("--socket-path").arg(&socket);
        if spec.peer == Peer::Ours && options.control_socket {
            cmd.arg("--control-socket")
                .arg(dir.path().join(CONTROL_SOCKET));
        }
        if spec.peer == Peer::VhostDeviceGpu
            && !spec.args.iter().any(|a| a.starts_with("--gpu-mode"))
        {
            cmd.args(["--gpu-mode", "null"]);
        }
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().map_err(Error::io("log"))?)
            .stderr(stderr);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
        Self::connect_new(spec, options, dir, socket.to_owned(), Some((child, log)))
    }

    /// A frontend with fresh guest RAM, connected to the backend listening on `socket`.
    fn connect_new(
        spec: BackendSpec,
        options: FrontendOptions,
        dir: tempfile::TempDir,
        socket: PathBuf,
        child: Option<(Child, File)>,
    ) -> Result<Self> {
        let (child, log) = child.unzip();
        let ram = Arc::new(GuestRam::new(options.ram_size)?);
        let mut fe = Self {
            spec,
            options,
            dir,
            socket,
            child,
            ram,
            conn: None,
            memtable_errors: Arc::new(Mutex::new(Vec::new())),
            memtable_synced: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            log,
            commands: 0,
            upgrades: Vec::new(),
        };
        fe.connect()?;
        Ok(fe)
    }

    /// Starts the backend as libvirt does: one end of a connected socket pair passed as an
    /// inherited fd, `--fd=N` on its command line (before `spec.args`), the other end kept
    /// here; then negotiates over it. No socket path exists, so [`Frontend::reconnect`] is
    /// impossible; the backend serves this one connection and exits when it ends.
    pub fn spawn_connected(spec: BackendSpec, options: FrontendOptions) -> Result<Self> {
        /// The fd number the backend finds its end at (after stdin, stdout, stderr).
        const CHILD_FD: i32 = 3;
        let dir = tempfile::Builder::new()
            .prefix("vug-conformance")
            .tempdir()
            .map_err(Error::io("tempdir"))?;
        let (ours, theirs) = UnixStream::pair().map_err(Error::io("socketpair"))?;
        let stderr = File::create(dir.path().join("backend.log")).map_err(Error::io("log"))?;
        let log = stderr.try_clone().map_err(Error::io("log"))?;
        let mut cmd = spec.command();
        cmd.arg(format!("--fd={CHILD_FD}"));
        if spec.peer == Peer::Ours && options.control_socket {
            cmd.arg("--control-socket")
                .arg(dir.path().join(CONTROL_SOCKET));
        }
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().map_err(Error::io("log"))?)
            .stderr(stderr);
        crate::child::pass_fd_at(&mut cmd, theirs.as_fd(), CHILD_FD);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
        drop(theirs);
        let ram = Arc::new(GuestRam::new(options.ram_size)?);
        let mut fe = Self {
            spec,
            options,
            socket: dir.path().join("(inherited fd: no socket path)"),
            dir,
            child: Some(child),
            ram,
            conn: None,
            memtable_errors: Arc::new(Mutex::new(Vec::new())),
            memtable_synced: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            log: Some(log),
            commands: 0,
            upgrades: Vec::new(),
        };
        fe.handshake(ours, None)?;
        Ok(fe)
    }

    /// Replaces the backend by a new process of the same program while this frontend goes
    /// on as if nothing happened (live upgrade): starts `PROGRAM --upgrade-from CONTROL`
    /// with the backend's stderr, and waits until the old process exited (the new one took
    /// over). If the new process exits first, the upgrade failed and the old process goes on
    /// serving: [`Error::Upgrade`] with the new process's exit status. Needs
    /// [`FrontendOptions::control_socket`].
    pub fn upgrade(&mut self) -> Result<Upgraded> {
        self.upgrade_with(&[])
    }

    /// [`Frontend::upgrade`] with extra arguments for the new process.
    pub fn upgrade_with(&mut self, extra: &[&str]) -> Result<Upgraded> {
        let mut pending = self.begin_upgrade(extra)?;
        loop {
            if let Some(upgraded) = self.poll_upgrade(&mut pending)? {
                return Ok(upgraded);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts a live upgrade and returns at once: the frontend can go on sending commands
    /// (the blackout benchmark does) and asks [`Frontend::poll_upgrade`] whether it is done.
    pub fn begin_upgrade(&mut self, extra: &[&str]) -> Result<PendingUpgrade> {
        if self.spec.peer != Peer::Ours || !self.options.control_socket {
            return Err(Error::Unsupported(
                "live upgrade (our backend with --control-socket)",
            ));
        }
        let log = self.log.as_ref().ok_or(Error::Unsupported(
            "live upgrade of a backend started elsewhere",
        ))?;
        let old_pid = self.backend_pid().ok_or(Error::Unsupported(
            "live upgrade of a backend started elsewhere",
        ))?;
        // The new process runs under the old one's limits and environment.
        let mut cmd = self.spec.command();
        cmd.arg("--upgrade-from")
            .arg(self.dir.path().join(CONTROL_SOCKET))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(Error::io("log"))?)
            .stderr(log.try_clone().map_err(Error::io("log"))?);
        crate::child::inherit_only_stdio(&mut cmd);
        let started = Instant::now();
        let new = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.spec.program.display().to_string(),
            source,
        })?;
        Ok(PendingUpgrade {
            new: Some(new),
            old_pid,
            started,
        })
    }

    /// Whether the upgrade `pending` finished: `Some` once the old process exited (the new
    /// one serves), `None` while both run; an error when the new process exited first (the
    /// old one goes on serving), the old one failed, or nothing happened within
    /// [`UPGRADE_LIMIT`] (the new process is killed).
    pub fn poll_upgrade(&mut self, pending: &mut PendingUpgrade) -> Result<Option<Upgraded>> {
        let old_pid = pending.old_pid;
        let Some(new) = pending.new.as_mut() else {
            return Err(Error::Upgrade("this upgrade is over".into()));
        };
        let old = self.child.as_mut().map(|c| c.try_wait());
        if let Some(Ok(Some(status))) = old {
            let took = pending.started.elapsed();
            let mut new = pending
                .new
                .take()
                .ok_or(Error::Unsupported("a new process"))?;
            if !status.success() {
                let _ = new.kill();
                let _ = new.wait();
                return Err(Error::Upgrade(format!(
                    "the old backend (pid {old_pid}) exited with {status}"
                )));
            }
            let upgraded = Upgraded {
                old_pid,
                new_pid: new.id(),
                took,
            };
            self.child = Some(new);
            self.upgrades.push(upgraded);
            return Ok(Some(upgraded));
        }
        if let Ok(Some(status)) = new.try_wait() {
            pending.new = None;
            return Err(Error::Upgrade(format!(
                "the new backend exited with {status}; pid {old_pid} goes on serving"
            )));
        }
        if pending.started.elapsed() > UPGRADE_LIMIT {
            let _ = new.kill();
            let _ = new.wait();
            pending.new = None;
            return Err(Error::Upgrade(format!(
                "no handover within {UPGRADE_LIMIT:?} (new process killed)"
            )));
        }
        Ok(None)
    }

    /// The live upgrades this frontend did.
    pub fn upgrades(&self) -> &[Upgraded] {
        &self.upgrades
    }

    /// Waits at most `limit` for the backend process to exit; its status, or `None` while
    /// it still runs (or when this frontend started no process).
    pub fn wait_backend_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects to a backend that already listens on `socket` (started elsewhere, e.g.
    /// with `--keep-listening`); this frontend neither starts nor stops a process, and has
    /// no backend log or pid. Used by child frontend processes in the disconnect cases.
    pub fn attach(socket: &Path, peer: Peer, options: FrontendOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vug-conformance-attach")
            .tempdir()
            .map_err(Error::io("tempdir"))?;
        let spec = BackendSpec::new("(attached)", peer);
        Self::connect_new(spec, options, dir, socket.to_owned(), None)
    }

    /// The vhost-user socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Which peer this is.
    pub fn peer(&self) -> Peer {
        self.spec.peer
    }

    /// Process id of the backend.
    pub fn backend_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `/proc` counters of the backend.
    pub fn backend_stats(&self) -> Result<ProcStats> {
        let pid = self
            .backend_pid()
            .ok_or(Error::Unsupported("a running backend"))?;
        ProcStats::of(pid)
    }

    /// What the backend printed so far.
    pub fn backend_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("backend.log")).unwrap_or_default()
    }

    /// A scratch directory that lives as long as the frontend.
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the backend process is still running.
    pub fn backend_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Disconnects and waits (up to `timeout`) for the backend to exit; its exit status, or
    /// `None` if it is still running (or this frontend did not start it).
    pub fn disconnect_and_wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.disconnect();
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or(Error::Unsupported("a connected backend"))
    }

    fn conn_mut(&mut self) -> Result<&mut Connection> {
        self.conn
            .as_mut()
            .ok_or(Error::Unsupported("a connected backend"))
    }

    /// virtio feature bits acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.acked_features)
    }

    /// virtio feature bits offered by the backend.
    pub fn offered_features(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.offered_features)
    }

    /// Whether all of `gpu_feature_mask` was negotiated.
    pub fn has_features(&self, mask: u64) -> bool {
        self.acked_features() & mask == mask
    }

    /// Negotiated protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.conn
            .as_ref()
            .map_or(VhostUserProtocolFeatures::empty(), |c| c.protocol)
    }

    /// The config space read at connect time (16 bytes for virtio-gpu).
    pub fn config_space(&self) -> &[u8] {
        self.conn.as_ref().map_or(&[], |c| &c.config)
    }

    /// The host-visible region, when the backend has one (SHMEM negotiated).
    pub fn shmem(&self) -> Option<&SharedMemoryRegion> {
        self.conn.as_ref().and_then(|c| c.region.as_deref())
    }

    /// The host-visible region of the current connection, shared (for use while the
    /// frontend is borrowed elsewhere, e.g. from another thread).
    pub fn shmem_shared(&self) -> Option<Arc<SharedMemoryRegion>> {
        self.conn.as_ref().and_then(|c| c.region.clone())
    }

    /// The display server of the current connection.
    pub fn display(&self) -> Option<&DisplayServer> {
        self.conn.as_ref().and_then(|c| c.display.as_ref())
    }

    fn wait_for_socket(&mut self) -> Result<()> {
        let deadline = Instant::now() + HANG_GUARD;
        while !self.socket.exists() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::BackendExited(status));
                }
            }
            if Instant::now() > deadline {
                return Err(Error::SocketTimeout(
                    self.spec.program.display().to_string(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Connects (again) and runs the whole QEMU-like setup.
    pub fn connect(&mut self) -> Result<()> {
        self.wait_for_socket()?;
        let deadline = Instant::now() + HANG_GUARD;
        let stream = loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    log::debug!("connect: {e}, retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::Io {
                        what: "connect to backend",
                        source: e,
                    })
                }
            }
        };
        self.handshake(stream, None)
    }

    /// Negotiates and starts the device on a connected stream (what QEMU does when the
    /// device is created, then at the driver's DRIVER_OK).
    fn handshake(&mut self, stream: UnixStream, resume: Option<ResumedRings>) -> Result<()> {
        let raw = stream.try_clone().map_err(Error::io("clone socket"))?;
        let mut vu = VuFrontend::from_stream(stream, 2);

        vu.set_owner().map_err(Error::vhost("SET_OWNER"))?;
        let offered = vu.get_features().map_err(Error::vhost("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let theirs = vu
                .get_protocol_features()
                .map_err(Error::vhost("GET_PROTOCOL_FEATURES"))?;
            protocol = theirs & supported_protocol_features();
            if !self.options.configure_mem_slots {
                protocol.remove(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
            }
            vu.set_protocol_features(protocol)
                .map_err(Error::vhost("SET_PROTOCOL_FEATURES"))?;
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = vu.get_queue_num().map_err(Error::vhost("GET_QUEUE_NUM"))?;
            if n < 2 {
                return Err(Error::Malformed(format!(
                    "backend has {n} queues, virtio-gpu needs 2"
                )));
            }
        }
        let mut slots = None;
        if protocol.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            let max = vu
                .get_max_mem_slots()
                .map_err(Error::vhost("GET_MAX_MEM_SLOTS"))?;
            if max == 0 {
                return Err(Error::Malformed(
                    "GET_MAX_MEM_SLOTS answered 0: no room for guest RAM".into(),
                ));
            }
            slots = Some(usize::try_from(max).unwrap_or(usize::MAX));
        }
        let memory = Arc::new(Mutex::new(MemoryTable {
            vu: vu.clone(),
            slots,
            sent: Vec::new(),
        }));
        let mut region = None;
        let mut requests = None;
        if protocol.contains(VhostUserProtocolFeatures::SHMEM) {
            let cfg = vu
                .get_shmem_config()
                .map_err(Error::vhost("GET_SHMEM_CONFIG"))?;
            let id = usize::from(gpu::SHM_ID_HOST_VISIBLE);
            let size = cfg.memory_sizes[id];
            if size > 0 {
                region = Some(Arc::new(SharedMemoryRegion::reserve(
                    gpu::SHM_ID_HOST_VISIBLE,
                    size,
                )?));
            }
        }
        if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let handler = region.clone().map_or_else(
                || SharedMemoryRegion::reserve(gpu::SHM_ID_HOST_VISIBLE, 4096).map(Arc::new),
                Ok,
            )?;
            let reply_ack = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
            let hook = self
                .options
                .memtable_follows_mappings
                .then(|| self.memtable_hook(&memory));
            let (server, fd) = BackendRequestServer::start(handler, reply_ack, hook)?;
            vu.set_backend_request_fd(&fd)
                .map_err(Error::vhost("SET_BACKEND_REQ_FD"))?;
            requests = Some(server);
        }
        let mut config = Vec::new();
        if protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let (_, payload) = vu
                .get_config(0, 16, VhostUserConfigFlags::WRITABLE, &[0u8; 16])
                .map_err(Error::vhost("GET_CONFIG"))?;
            config = payload.to_vec();
        }
        let mut conn = Connection {
            vu,
            raw,
            offered_features: offered,
            acked_features: 0,
            protocol,
            queues: Vec::new(),
            in_flight: Vec::new(),
            region,
            requests,
            display: None,
            config,
            memory,
        };
        match resume {
            None => self.start_device(&mut conn)?,
            Some(rings) => self.start_resumed(&mut conn, rings)?,
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// The memory-table update sent after each mapping change (QEMU's behaviour).
    fn memtable_hook(&self, memory: &Arc<Mutex<MemoryTable>>) -> MappingChangeHook {
        let memory = memory.clone();
        let ram = self.ram.clone();
        let base = self.options.shmem_window_gpa;
        let errors = self.memtable_errors.clone();
        let synced = self.memtable_synced.clone();
        Box::new(move |region: &SharedMemoryRegion| {
            let generation = region.generation();
            let extra = region.table_regions(base);
            let mut regions = vec![ram.region_info()];
            regions.extend(extra.iter().map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.len,
                userspace_addr: r.user_addr,
                mmap_offset: r.fd_offset,
                mmap_handle: r.fd.as_raw_fd(),
            }));
            let mut memory = memory.lock().unwrap_or_else(|p| p.into_inner());
            if memory.slots.is_none() && regions.len() > MAX_TABLE_REGIONS {
                log::warn!(
                    "{} regions: memory table not re-sent (limit {MAX_TABLE_REGIONS})",
                    regions.len()
                );
                return;
            }
            match memory.update(&regions) {
                Ok(()) => synced.store(generation, std::sync::atomic::Ordering::Release),
                Err(e) => {
                    let msg = format!("memory update with {} mapped blobs: {e}", extra.len());
                    log::warn!("{msg}");
                    errors.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
                }
            }
        })
    }

    /// Guest-physical address of the host-visible window in the memory table.
    pub fn shmem_window_gpa(&self) -> u64 {
        self.options.shmem_window_gpa
    }

    /// Waits until the backend acknowledged a memory table describing the current mappings
    /// (the update runs on the request thread, after the `SHMEM_MAP`/`UNMAP` ack).
    pub fn wait_memtable_synced(&self) -> Result<()> {
        let Some(region) = self.shmem() else {
            return Ok(());
        };
        if !self.options.memtable_follows_mappings {
            return Err(Error::Unsupported(
                "memory-table updates (disabled in the options)",
            ));
        }
        let deadline = Instant::now() + HANG_GUARD;
        while self
            .memtable_synced
            .load(std::sync::atomic::Ordering::Acquire)
            != region.generation()
        {
            if Instant::now() > deadline {
                return Err(Error::Malformed(
                    "memory table never caught up with the mappings".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Failures of the memory-table updates sent after mapping changes.
    pub fn memtable_errors(&self) -> Vec<String> {
        self.memtable_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What QEMU does when the device starts: display socket (if `display_channel`), features,
    /// memory, vrings.
    /// What every device start sends before the rings: a display channel, `SET_FEATURES`,
    /// the memory table.
    fn start_common(&self, conn: &mut Connection) -> Result<()> {
        if self.options.display_channel {
            let (display, theirs) = DisplayServer::start(self.options.display.clone())?;
            // The raw message bypasses the vhost crate's lock on the connection: hold the
            // memory table's lock, so a memory update from the request thread (after a
            // SHMEM_MAP/UNMAP the backend sends at the same moment) cannot interleave with it.
            let _serialized = conn.memory.lock().unwrap_or_else(|p| p.into_inner());
            send_gpu_set_socket(&mut conn.raw, &theirs, conn.protocol)?;
            drop(theirs);
            conn.display = Some(display);
        } else {
            conn.display = None;
        }

        let mut wanted = VIRTIO_F_VERSION_1
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | self.options.gpu_features;
        if self.options.indirect_descriptors {
            wanted |= RING_F_INDIRECT_DESC;
        }
        if self.options.event_idx {
            wanted |= RING_F_EVENT_IDX;
        }
        conn.acked_features = conn.offered_features & wanted;
        conn.vu
            .set_features(conn.acked_features)
            .map_err(Error::vhost("SET_FEATURES"))?;
        conn.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(&[self.ram.region_info()])?;
        Ok(())
    }

    /// Starts the device with fresh rings at base 0 (a driver's DRIVER_OK).
    fn start_device(&self, conn: &mut Connection) -> Result<()> {
        self.start_common(conn)?;
        for q in conn.queues.drain(..) {
            q.release(&self.ram);
        }
        conn.in_flight.clear();
        for index in 0..2 {
            let mut q = SplitQueue::new(&self.ram, index, self.options.queue_size)?;
            q.set_ring_features(
                conn.acked_features & RING_F_INDIRECT_DESC != 0,
                conn.acked_features & RING_F_EVENT_IDX != 0,
            );
            conn.vu
                .set_vring_num(index, q.size())
                .map_err(Error::vhost("SET_VRING_NUM"))?;
            conn.vu
                .set_vring_addr(index, &q.vring_config(&self.ram)?)
                .map_err(Error::vhost("SET_VRING_ADDR"))?;
            conn.vu
                .set_vring_base(index, 0)
                .map_err(Error::vhost("SET_VRING_BASE"))?;
            conn.vu
                .set_vring_call(index, q.call_fd())
                .map_err(Error::vhost("SET_VRING_CALL"))?;
            conn.vu
                .set_vring_kick(index, q.kick_fd())
                .map_err(Error::vhost("SET_VRING_KICK"))?;
            if conn.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                conn.vu
                    .set_vring_enable(index, true)
                    .map_err(Error::vhost("SET_VRING_ENABLE"))?;
            }
            conn.queues.push(q);
            conn.in_flight.push(HashMap::new());
        }
        Ok(())
    }

    /// Starts the device on a new connection with the rings the driver already has (QEMU
    /// after its backend came back): same addresses, each at the used index in guest memory.
    fn start_resumed(&self, conn: &mut Connection, rings: ResumedRings) -> Result<()> {
        self.start_common(conn)?;
        let ResumedRings { queues, in_flight } = rings;
        for (index, mut q) in queues.into_iter().enumerate() {
            q.set_ring_features(
                conn.acked_features & RING_F_INDIRECT_DESC != 0,
                conn.acked_features & RING_F_EVENT_IDX != 0,
            );
            let base = q.device_used_idx(&self.ram)?;
            conn.vu
                .set_vring_num(index, q.size())
                .map_err(Error::vhost("SET_VRING_NUM"))?;
            conn.vu
                .set_vring_addr(index, &q.vring_config(&self.ram)?)
                .map_err(Error::vhost("SET_VRING_ADDR"))?;
            conn.vu
                .set_vring_base(index, base)
                .map_err(Error::vhost("SET_VRING_BASE"))?;
            conn.vu
                .set_vring_call(index, q.call_fd())
                .map_err(Error::vhost("SET_VRING_CALL"))?;
            conn.vu
                .set_vring_kick(index, q.kick_fd())
                .map_err(Error::vhost("SET_VRING_KICK"))?;
            if conn.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                conn.vu
                    .set_vring_enable(index, true)
                    .map_err(Error::vhost("SET_VRING_ENABLE"))?;
            }
            conn.queues.push(q);
        }
        conn.in_flight = in_flight;
        Ok(())
    }

    /// Device reset the way QEMU does it: disable and stop the rings (`GET_VRING_BASE`),
    /// `RESET_DEVICE` if negotiated, make the whole host-visible region inaccessible, then
    /// start again with fresh rings and a new display socket.
    pub fn reset(&mut self) -> Result<()> {
        // The memory-table update that follows a mapping change is sent from the backend
        // request thread on this same socket: let it finish first (QEMU serializes both on
        // its main loop), or its acknowledgement would meet the reset's messages.
        if self.options.memtable_follows_mappings {
            self.wait_memtable_synced()?;
        }
        let mut conn = self
            .conn
            .take()
            .ok_or(Error::Unsupported("a connected backend"))?;
        let result = (|| {
            for index in 0..2 {
                if conn.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                    conn.vu
                        .set_vring_enable(index, false)
                        .map_err(Error::vhost("SET_VRING_ENABLE"))?;
                }
                conn.vu
                    .get_vring_base(index)
                    .map_err(Error::vhost("GET_VRING_BASE"))?;
            }
            if conn
                .protocol
                .contains(VhostUserProtocolFeatures::RESET_DEVICE)
            {
                conn.vu
                    .reset_device()
                    .map_err(Error::vhost("RESET_DEVICE"))?;
            }
            if let Some(region) = &conn.region {
                region.unmap_all()?;
            }
            conn.display = None;
            self.start_device(&mut conn)?;
            // start_device sent a table without any mapping, matching the emptied region.
            if let Some(region) = &conn.region {
                self.memtable_synced
                    .store(region.generation(), std::sync::atomic::Ordering::Release);
            }
            Ok(())
        })();
        self.conn = Some(conn);
        result
    }

    /// What QEMU sends on QMP `stop` (and first on a reset): per ring `SET_VRING_ENABLE 0`
    /// (with `PROTOCOL_FEATURES`) and `GET_VRING_BASE`. Returns the bases the backend
    /// reported. The rings and the chains on them stay as they are; chains added now wait.
    pub fn pause(&mut self) -> Result<Vec<u16>> {
        let conn = self.conn_mut()?;
        let mut bases = Vec::with_capacity(2);
        for index in 0..2 {
            if conn.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                conn.vu
                    .set_vring_enable(index, false)
                    .map_err(Error::vhost("SET_VRING_ENABLE"))?;
            }
        }
        for index in 0..2 {
            let base = conn
                .vu
                .get_vring_base(index)
                .map_err(Error::vhost("GET_VRING_BASE"))?;
            bases.push(u16::try_from(base).map_err(|_| {
                Error::Malformed(format!("GET_VRING_BASE {index} answered {base}"))
            })?);
        }
        Ok(bases)
    }

    /// What QEMU sends on QMP `cont` after [`Frontend::pause`], in QEMU's order: a new
    /// display channel (as QEMU 10's `vhost-user-gpu-pci` does), `SET_VRING_CALL` with
    /// QEMU's own "masked" notifiers, `SET_FEATURES`, then per ring `SET_VRING_NUM`,
    /// `SET_VRING_BASE` with the reported base, `SET_VRING_ADDR` (the same rings),
    /// `SET_VRING_KICK`, `SET_VRING_ENABLE 1`, and only then `SET_VRING_CALL` with the
    /// guest's notifiers. A backend that completes chains right at the restart and signals
    /// only the masked notifier leaves this frontend (like a guest) waiting forever.
    pub fn resume(&mut self, bases: &[u16]) -> Result<()> {
        let display_channel = self.options.display_channel;
        let display_config = self.options.display.clone();
        let ram = self.ram.clone();
        let conn = self.conn_mut()?;
        if display_channel {
            let (display, theirs) = DisplayServer::start(display_config)?;
            let _serialized = conn.memory.lock().unwrap_or_else(|p| p.into_inner());
            send_gpu_set_socket(&mut conn.raw, &theirs, conn.protocol)?;
            conn.display = Some(display);
        }
        let masked = EventFd::new(EFD_NONBLOCK).map_err(Error::io("masked notifier"))?;
        for index in 0..conn.queues.len() {
            conn.vu
                .set_vring_call(index, &masked)
                .map_err(Error::vhost("SET_VRING_CALL (masked)"))?;
        }
        conn.vu
            .set_features(conn.acked_features)
            .map_err(Error::vhost("SET_FEATURES"))?;
        for (index, q) in conn.queues.iter().enumerate() {
            let base = *bases
                .get(index)
                .ok_or_else(|| Error::Malformed(format!("no base for ring {index}")))?;
            conn.vu
                .set_vring_num(index, q.size())
                .map_err(Error::vhost("SET_VRING_NUM"))?;
            conn.vu
                .set_vring_base(index, base)
                .map_err(Error::vhost("SET_VRING_BASE"))?;
            conn.vu
                .set_vring_addr(index, &q.vring_config(&ram)?)
                .map_err(Error::vhost("SET_VRING_ADDR"))?;
            conn.vu
                .set_vring_kick(index, q.kick_fd())
                .map_err(Error::vhost("SET_VRING_KICK"))?;
        }
        for index in 0..conn.queues.len() {
            if conn.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                conn.vu
                    .set_vring_enable(index, true)
                    .map_err(Error::vhost("SET_VRING_ENABLE"))?;
            }
        }
        // Give the backend time to serve what waited on the rings before the notifiers are
        // swapped (QEMU's window is the same: its main loop finishes the restart first).
        std::thread::sleep(Duration::from_millis(50));
        for (index, q) in conn.queues.iter().enumerate() {
            conn.vu
                .set_vring_call(index, q.call_fd())
                .map_err(Error::vhost("SET_VRING_CALL"))?;
        }
        Ok(())
    }

    /// A device reset the way QEMU 11.1's generic device does it: the rings stop, no
    /// `RESET_DEVICE` follows, and the driver starts over with new rings at base 0. The
    /// frontend's mappings are dropped as a reset does.
    pub fn reset_without_reset_device(&mut self) -> Result<()> {
        self.pause()?;
        let mut conn = self
            .conn
            .take()
            .ok_or(Error::Unsupported("a connected backend"))?;
        let result = (|| {
            if let Some(region) = &conn.region {
                region.unmap_all()?;
            }
            conn.display = None;
            // New rings (allocated before the old ones are freed: other addresses).
            let old: Vec<SplitQueue> = conn.queues.drain(..).collect();
            let old_in_flight: Vec<_> = conn.in_flight.drain(..).collect();
            self.start_device(&mut conn)?;
            for q in old {
                q.release(&self.ram);
            }
            for flights in old_in_flight {
                for flight in flights.into_values() {
                    for b in flight.buffers {
                        self.ram.free(b);
                    }
                }
            }
            if let Some(region) = &conn.region {
                self.memtable_synced
                    .store(region.generation(), std::sync::atomic::Ordering::Release);
            }
            Ok(())
        })();
        self.conn = Some(conn);
        result
    }

    /// Whether the backend signalled `queue`'s call eventfd (the guest's interrupt) within
    /// `timeout`; the signal is consumed. With `EVENT_IDX` the frontend first asks to be
    /// notified for the next used entry, as a driver does before it sleeps.
    pub fn wait_notified(&mut self, queue: usize, timeout: Duration) -> Result<bool> {
        let ram = self.ram.clone();
        let conn = self.conn_mut()?;
        let q = conn
            .queues
            .get_mut(queue)
            .ok_or(Error::Queue(format!("no queue {queue}")))?;
        q.request_notification(&ram)?;
        Ok(q.wait_call(timeout))
    }

    /// Whether a used entry is waiting on `queue` (does not consume it).
    pub fn has_used(&mut self, queue: usize) -> Result<bool> {
        let ram = self.ram.clone();
        let conn = self.conn_mut()?;
        let q = conn
            .queues
            .get_mut(queue)
            .ok_or(Error::Queue(format!("no queue {queue}")))?;
        Ok(q.peek_used(&ram)?.is_some())
    }

    /// Closes the vhost-user connection (QEMU quitting or the socket dropping). The
    /// frontend forgets all mappings, as QEMU does.
    pub fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            for q in conn.queues {
                q.release(&self.ram);
            }
            drop(conn.requests);
            drop(conn.vu);
            drop(conn.raw);
            drop(conn.display);
            drop(conn.region);
        }
    }

    /// Disconnects and connects again (needs a backend that keeps listening).
    pub fn reconnect(&mut self) -> Result<()> {
        self.disconnect();
        self.connect()
    }

    /// What QEMU does for a device whose backend went away and came back on a reconnecting
    /// chardev (`reconnect-ms`; vhost-user-blk does it, QEMU 10's and 11.1's GPU devices do
    /// not, DESIGN-lifecycle.md 1.3): the old connection is closed with the device started
    /// and the guest running; on a new connection QEMU negotiates again, sends a new display
    /// channel and memory table, and starts the rings the guest's driver still has (same
    /// addresses) at the used index in guest memory, so chains the old backend took but never
    /// completed are offered again. The driver's rings, chains in flight and buffers stay;
    /// the frontend's blob mappings go with the old connection. Returns the bases sent.
    pub fn reconnect_resuming(&mut self) -> Result<Vec<u16>> {
        let mut conn = self
            .conn
            .take()
            .ok_or(Error::Unsupported("a connected backend"))?;
        let queues: Vec<SplitQueue> = conn.queues.drain(..).collect();
        let in_flight: Vec<_> = conn.in_flight.drain(..).collect();
        let mut bases = Vec::with_capacity(queues.len());
        for q in &queues {
            bases.push(q.device_used_idx(&self.ram)?);
        }
        drop(conn);
        self.wait_for_socket()?;
        let stream = UnixStream::connect(&self.socket).map_err(Error::io("reconnect"))?;
        self.handshake(stream, Some(ResumedRings { queues, in_flight }))?;
        Ok(bases)
    }

    /// Puts a request (readable parts, each its own descriptor) and an optional
    /// `resp_len`-byte response buffer on `queue`, and kicks. Returns the head index.
    pub fn send(&mut self, queue: usize, parts: &[&[u8]], resp_len: usize) -> Result<u16> {
        let ram = self.ram.clone();
        let conn = self.conn_mut()?;
        let mut segments = Vec::with_capacity(parts.len() + 1);
        let mut buffers = Vec::with_capacity(parts.len() + 1);
        let cleanup = |buffers: &[u64]| buffers.iter().for_each(|&b| ram.free(b));
        for part in parts {
            let gpa = match ram.alloc(part.len() as u64, 8) {
                Ok(g) => g,
                Err(e) => {
                    cleanup(&buffers);
                    return Err(e);
                }
            };
            buffers.push(gpa);
            ram.write(gpa, part)?;
            segments.push(Segment::readable(gpa, part.len() as u32));
        }
        let mut resp = None;
        if resp_len > 0 {
            let gpa = ram
                .alloc(resp_len as u64, 8)
                .inspect_err(|_| cleanup(&buffers))?;
            buffers.push(gpa);
            segments.push(Segment::writable(gpa, resp_len as u32));
            resp = Some((gpa, resp_len));
        }
        let q = conn.queue_mut(queue)?;
        let head = q
            .add_chain(&ram, &segments)
            .inspect_err(|_| cleanup(&buffers))?;
        q.kick()?;
        conn.in_flight[queue].insert(head, InFlight { buffers, resp });
        Ok(head)
    }

    /// Puts hand-made descriptors on `queue` and kicks (hostile-guest tests).
    pub fn send_raw(&mut self, queue: usize, descs: &[RawDesc]) -> Result<u16> {
        let ram = self.ram.clone();
        let conn = self.conn_mut()?;
        let q = conn.queue_mut(queue)?;
        let head = q.add_raw_chain(&ram, descs)?;
        q.kick()?;
        conn.in_flight[queue].insert(
            head,
            InFlight {
                buffers: Vec::new(),
                resp: None,
            },
        );
        Ok(head)
    }

    /// Waits until the chain with head `head` comes back, dropping other returned chains
    /// (which a device may return for malformed requests, or not at all).
    pub fn wait_for_head(&mut self, queue: usize, head: u16) -> Result<Vec<u8>> {
        loop {
            let (h, bytes) = self.wait(queue)?;
            if h == head {
                return Ok(bytes);
            }
        }
    }

    /// Waits for the next used buffer on `queue`; returns its head and the response bytes
    /// the device wrote (empty without a response buffer).
    pub fn wait(&mut self, queue: usize) -> Result<(u16, Vec<u8>)> {
        self.wait_within(queue, HANG_GUARD)?
            .ok_or(Error::UsedTimeout(queue))
    }

    /// Like [`Frontend::wait`], but `None` when nothing came back within `timeout` (for
    /// answers that must not come yet, such as a fenced command whose fence has not
    /// signalled).
    pub fn wait_within(
        &mut self,
        queue: usize,
        timeout: Duration,
    ) -> Result<Option<(u16, Vec<u8>)>> {
        let ram = self.ram.clone();
        let waited = {
            let Connection { queues, raw, .. } = self.conn_mut()?;
            let q = queues
                .get_mut(queue)
                .ok_or(Error::Queue(format!("no queue {queue}")))?;
            q.wait_used(&ram, timeout, Some(raw.as_fd()))
        };
        let used = match waited {
            Err(Error::UsedTimeout(_)) => return Ok(None),
            // Name how it ended when the process is ours to ask.
            Err(Error::BackendGone(q)) => {
                let status = self.child.as_mut().and_then(|c| {
                    // The process may still be exiting after closing its sockets.
                    let deadline = Instant::now() + Duration::from_secs(1);
                    loop {
                        match c.try_wait() {
                            Ok(Some(status)) => return Some(status),
                            Ok(None) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(5))
                            }
                            _ => return None,
                        }
                    }
                });
                return Err(status.map_or(Error::BackendGone(q), Error::BackendExited));
            }
            other => other?,
        };
        let conn = self.conn_mut()?;
        let flight = conn.in_flight[queue]
            .remove(&used.head)
            .ok_or_else(|| Error::Queue(format!("used head {} not in flight", used.head)))?;
        let mut bytes = Vec::new();
        if let Some((gpa, len)) = flight.resp {
            let n = (used.written as usize).min(len);
            bytes = ram.read_vec(gpa, n)?;
        }
        for b in flight.buffers {
            ram.free(b);
        }
        Ok(Some((used.head, bytes)))
    }

    /// Sends one control command and returns the decoded response.
    pub fn ctrl(&mut self, cmd: Cmd) -> Result<Resp> {
        self.ctrl_parts(&[&cmd.into_bytes()], 4096)
    }

    /// Sends a control command split over several descriptors.
    pub fn ctrl_parts(&mut self, parts: &[&[u8]], resp_len: usize) -> Result<Resp> {
        self.commands += 1;
        if let Some(schedule) = self.options.upgrade_every {
            if self.commands.is_multiple_of(schedule.every)
                && self.upgrades.len() < schedule.max as usize
            {
                self.upgrade()?;
            }
        }
        self.send(CONTROL_QUEUE, parts, resp_len)?;
        let (_, bytes) = self.wait(CONTROL_QUEUE)?;
        Resp::parse(&bytes)
    }

    /// Sends a cursor command (no response buffer, like the Linux driver).
    pub fn cursor(&mut self, cmd: Cmd) -> Result<()> {
        self.send(CURSOR_QUEUE, &[&cmd.into_bytes()], 0)?;
        self.wait(CURSOR_QUEUE).map(|_| ())
    }

    /// Frontend-side info for debugging assertions.
    pub fn describe(&self) -> String {
        match self.conn() {
            Ok(c) => format!(
                "peer {} features {:#x} (offered {:#x}) protocol {:?}",
                self.spec.peer.name(),
                c.acked_features,
                c.offered_features,
                c.protocol
            ),
            Err(_) => format!("peer {} (disconnected)", self.spec.peer.name()),
        }
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        self.disconnect();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            // A backend normally exits when its frontend goes away; stop it otherwise.
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `VHOST_USER_GPU_SET_SOCKET` with `fd` on the main socket; waits for the ack when
/// REPLY_ACK is negotiated.
fn send_gpu_set_socket(
    raw: &mut UnixStream,
    fd: &OwnedFd,
    protocol: VhostUserProtocolFeatures,
) -> Result<()> {
    let reply_ack = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
    let mut flags = 0x1; // version 1
    if reply_ack {
        flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
    }
    let mut hdr = [0u8; 12];
    hdr[0..4].copy_from_slice(&GPU_SET_SOCKET.to_le_bytes());
    hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    raw.send_with_fd(&hdr[..], fd.as_raw_fd())
        .map_err(|e| Error::Io {
            what: "send GPU_SET_SOCKET",
            source: e.into(),
        })?;
    if reply_ack {
        let mut reply = [0u8; 20];
        raw.read_exact(&mut reply)
            .map_err(Error::io("GPU_SET_SOCKET ack"))?;
        let code = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
        let value = u64::from_le_bytes(reply[12..20].try_into().unwrap_or([0xff; 8]));
        if code != GPU_SET_SOCKET || value != 0 {
            return Err(Error::Malformed(format!(
                "GPU_SET_SOCKET ack: request {code}, status {value:#x}"
            )));
        }
    }
    raw.flush().map_err(Error::io("flush"))?;
    Ok(())
}
