//! Live upgrade: handing a running device to a new backend process (DESIGN-lifecycle.md 4).
//!
//! The running backend listens on its control socket (`--control-socket`). A new process
//! (`vhost-user-gpu --upgrade-from PATH`) connects and says hello; the old process stops its
//! queue thread at a chain boundary and its connection thread between two messages, sends a
//! [`Handover`] document (its command line, the negotiated connection, the memory table, the
//! rings, the device state) and every fd it refers to, and waits. The new process restores
//! everything, confines itself, and answers `READY`; the old one answers `COMMIT` and exits at
//! once, and the new one starts serving. Anything else (`ABORT`, a broken connection, a
//! timeout) and the old process goes on serving: rollback.
//!
//! Wire format on the control connection: frames of `kind: u32, len: u32` (little-endian)
//! and `len` payload bytes; fds ride with a frame's header (`SCM_RIGHTS`), at most
//! [`FDS_PER_FRAME`] per frame.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};

use rustix::event::{poll, PollFd, PollFlags};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Backend, BackendReqHandler, GpuBackend};

use crate::device::snapshot::{BulkSource, DeviceState, Snapshot};
use crate::device::GpuDevice;
use crate::display::qemu::ChannelState;
use crate::display::{FanOut, QemuDisplay};
use crate::transport::connection::Connection;
use crate::transport::control::{Live, ServeControl};
use crate::transport::gate::QueueGate;
use crate::transport::handler::Handler;
use crate::transport::memory::{MemoryTable, RegionInfo};
use crate::transport::server::DeviceFactory;
use crate::transport::session::{
    lock, DeferredOp, Lifecycle, Negotiated, Session, TransportSettings, CONFIG_SIZE, NUM_QUEUES,
};
use crate::transport::shmem::{BackendChannel, ShmemMapper};
use crate::transport::sys;
use crate::transport::vring::{Vring, VringState};

/// `format` of every handover document.
pub const FORMAT: &str = "vhost-user-gpu-state";
/// Version of the handover document this binary writes. It changes whenever the document
/// changes in any way (a field added, removed or given another meaning). 2: charges of five
/// kinds (open files and context attachments added), shown scanouts carry their charge, no
/// reject count (the log limiter is the process's).
pub const STATE_VERSION: u32 = 2;
/// Versions this binary reads.
pub const READS_VERSIONS: &[u32] = &[2];

/// Most fds in one frame (the kernel takes up to 253 per message).
pub const FDS_PER_FRAME: usize = 250;
/// How long the old process waits for the queue thread to finish its chain, and for the
/// connection thread to reach a message boundary.
pub const QUIESCE_LIMIT: Duration = Duration::from_secs(5);
/// How long either side waits for the other's next frame (the new process's verdict
/// comes after its whole restore).
pub const VERDICT_LIMIT: Duration = Duration::from_secs(60);
/// How long sending one frame may take.
const SEND_LIMIT: Duration = Duration::from_secs(10);

const HELLO: u32 = 1;
const STATE: u32 = 2;
const FDS: u32 = 3;
const READY: u32 = 4;
const ABORT: u32 = 5;
const COMMIT: u32 = 6;
const REFUSED: u32 = 7;

/// Largest frame payload accepted (the document of a full device is a few MiB).
const MAX_FRAME: u32 = 256 << 20;

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The control connection failed.
    #[error("control connection: {0}")]
    Io(#[from] io::Error),
    /// The other side said no (the text says why).
    #[error("{0}")]
    Refused(String),
    /// The other side broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Restoring failed in the new process.
    #[error("restore: {0}")]
    Restore(String),
}

/// The new process's hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// [`FORMAT`].
    pub format: String,
    /// Document versions it reads.
    pub versions: Vec<u32>,
    /// Its pid.
    pub pid: u32,
    /// Its crate version.
    pub binary: String,
}

/// A serializable deferred operation (see [`DeferredOp`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpState {
    /// `AckFeatures`.
    AckFeatures(u64),
    /// `WriteConfig`.
    WriteConfig {
        /// Offset.
        offset: u32,
        /// Bytes.
        data: Vec<u8>,
    },
    /// `Reset`.
    Reset,
    /// `SetDisplay`: the display channel is the handover's.
    SetDisplay,
    /// `RingsChanged`.
    RingsChanged,
    /// `RepaintCapture`.
    RepaintCapture,
}

/// One ring and its fds (indices into the handover's fds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingHandover {
    /// The ring.
    pub state: VringState,
    /// Kick eventfd.
    pub kick: Option<usize>,
    /// Call eventfd.
    pub call: Option<usize>,
    /// Error eventfd.
    pub err: Option<usize>,
}

/// A served connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionHandover {
    /// The vhost-user connection.
    pub conn: usize,
    /// Virtio features offered.
    pub offered_features: u64,
    /// Protocol features offered.
    pub offered_protocol: u64,
    /// What was negotiated.
    pub negotiated: Negotiated,
    /// Pause/reset bookkeeping.
    pub lifecycle: Lifecycle,
    /// The config space.
    pub config: [u8; CONFIG_SIZE],
    /// The memory table: region and its fd.
    pub memory: Vec<(RegionInfo, usize)>,
    /// The rings.
    pub rings: Vec<RingHandover>,
    /// The backend request channel (`SHMEM_MAP`).
    pub backend_channel: Option<usize>,
    /// Whether `GET_SHMEM_CONFIG` was answered (SHMEM negotiated).
    pub shmem_negotiated: bool,
    /// QEMU's display channel.
    pub display_channel: Option<usize>,
    /// What QEMU's side of the display channel knows.
    pub display_state: Option<ChannelState>,
    /// Operations the queue thread had not applied yet.
    pub ops: Vec<OpState>,
    /// The device.
    pub device: DeviceState,
    /// The device's fds, in [`Snapshot::fds`] order.
    pub device_fds: Vec<usize>,
    /// The 2D pixel copies: a memfd and its length.
    pub bulk: Option<(usize, u64)>,
}

/// Everything the new process gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// [`FORMAT`].
    pub format: String,
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// The old binary's crate version.
    pub from: String,
    /// The old process's pid.
    pub pid: u32,
    /// The old process's command line (without the program name); the new process reads
    /// its configuration from it.
    pub args: Vec<String>,
    /// The listening vhost-user socket.
    pub listener: Option<usize>,
    /// The control socket.
    pub control: Option<usize>,
    /// The old process's stderr (the new one logs there).
    pub stderr: Option<usize>,
    /// The connection being served, if any.
    pub session: Option<SessionHandover>,
}

// ------------------------------------------------------------------------------------------
// Frames.

// The control connection is used with `poll` deadlines, not socket timeouts: the old
// process is confined, and `setsockopt` is not on its allowlist. No read or write may block
// for ever on a stuck peer while the device is parked.

/// Waits until `stream` is ready for `events`, or fails with `TimedOut` at `deadline`.
fn wait_ready(stream: &UnixStream, events: PollFlags, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the other side of the control connection does not answer",
            ));
        }
        let timeout = rustix::event::Timespec::try_from(left).map_err(io::Error::other)?;
        let mut fds = [PollFd::new(stream, events)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `bytes` (after `sent` bytes of them went with a `sendmsg`) by `deadline`.
fn write_within(stream: &UnixStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        wait_ready(stream, PollFlags::OUT, deadline)?;
        match rustix::net::send(
            stream,
            &bytes[done..],
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Fills `buf` by `deadline`.
fn read_within(stream: &UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        wait_ready(stream, PollFlags::IN, deadline)?;
        match rustix::net::recv(stream, &mut buf[done..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the control connection ended in the middle of a frame",
                ))
            }
            Ok((n, _)) => done += n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn send_frame(
    stream: &UnixStream,
    kind: u32,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let deadline = Instant::now() + SEND_LIMIT;
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[4..].copy_from_slice(&len.to_le_bytes());
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_FRAME))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    // The header carries the fds: its first byte must go out with them.
    let sent = loop {
        wait_ready(stream, PollFlags::OUT, deadline)?;
        match sendmsg(
            stream,
            &[IoSlice::new(&header)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    write_within(stream, &header[sent..], deadline)?;
    write_within(stream, payload, deadline)
}

struct Frame {
    kind: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Receives one frame; waits at most [`VERDICT_LIMIT`] for it.
fn recv_frame(stream: &UnixStream) -> io::Result<Frame> {
    let deadline = Instant::now() + VERDICT_LIMIT;
    let mut header = [0u8; 8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_FRAME))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        wait_ready(stream, PollFlags::IN, deadline)?;
        match recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut header)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(got) => break got,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other side closed the control connection",
        ));
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    read_within(stream, &mut header[got.bytes..], deadline)?;
    let kind = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    read_within(stream, &mut payload, deadline)?;
    Ok(Frame { kind, payload, fds })
}

fn send_json<T: Serialize>(stream: &UnixStream, kind: u32, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    send_frame(stream, kind, &bytes, &[])
}

fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for chunk in fds.chunks(FDS_PER_FRAME) {
        send_frame(stream, FDS, &(chunk.len() as u32).to_le_bytes(), chunk)?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The old process.

/// Collects fds for a handover, by index.
#[derive(Default)]
struct FdList(Vec<OwnedFd>);

impl FdList {
    fn push(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.0.push(fd.try_clone_to_owned()?);
        Ok(self.0.len() - 1)
    }

    fn push_owned(&mut self, fd: OwnedFd) -> usize {
        self.0.push(fd);
        self.0.len() - 1
    }
}

fn op_state(op: &DeferredOp) -> OpState {
    match op {
        DeferredOp::AckFeatures(f) => OpState::AckFeatures(*f),
        DeferredOp::WriteConfig { offset, data } => OpState::WriteConfig {
            offset: *offset,
            data: data.clone(),
        },
        DeferredOp::Reset(_) => OpState::Reset,
        DeferredOp::SetDisplay(_) => OpState::SetDisplay,
        DeferredOp::RingsChanged => OpState::RingsChanged,
        DeferredOp::RepaintCapture => OpState::RepaintCapture,
    }
}

/// The session part of a handover (queue thread parked, connection stopped).
fn session_handover(
    live: &Live,
    snapshot: Snapshot,
    fds: &mut FdList,
) -> io::Result<SessionHandover> {
    let session = &live.session;
    let conn = fds.push(live.conn.as_fd())?;
    let memory = {
        let table = lock(&session.memory);
        let infos = table.infos();
        let mut out = Vec::with_capacity(infos.len());
        for (info, fd) in infos.into_iter().zip(table.fds()) {
            out.push((info, fds.push(fd)?));
        }
        out
    };
    let errs = lock(&session.err_fds);
    let mut rings = Vec::with_capacity(NUM_QUEUES);
    for (index, ring) in session.rings.iter().enumerate() {
        let ring = lock(ring);
        let kick = match &ring.kick {
            Some(f) => Some(fds.push(f.as_fd())?),
            None => None,
        };
        let call = match &ring.call {
            Some(f) => Some(fds.push(f.as_fd())?),
            None => None,
        };
        let err = match &errs[index] {
            Some(f) => Some(fds.push(f.as_fd())?),
            None => None,
        };
        rings.push(RingHandover {
            state: ring.state(),
            kick,
            call,
            err,
        });
    }
    drop(errs);
    let backend_channel = match (
        session.channel.get(),
        lock(&session.backend_channel_fd).as_ref(),
    ) {
        (Some(_), Some(fd)) => Some(fds.push(fd.as_fd())?),
        _ => None,
    };
    let display_channel = match (
        lock(&session.display_channel).as_ref(),
        lock(&session.display_channel_fd).as_ref(),
    ) {
        (Some(_), Some(fd)) => Some(fds.push(fd.as_fd())?),
        _ => None,
    };
    let display_state = lock(&session.display_record)
        .as_ref()
        .map(|record| record.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let ops = lock(&session.ops).iter().map(op_state).collect();
    let Snapshot {
        state: device,
        fds: device_owned,
        bulk,
    } = snapshot;
    let device_fds = device_owned
        .into_iter()
        .map(|fd| fds.push_owned(fd))
        .collect();
    let bulk = if bulk.is_empty() {
        None
    } else {
        let memfd =
            rustix::fs::memfd_create("vhost-user-gpu-handover", rustix::fs::MemfdFlags::CLOEXEC)?;
        File::from(memfd.try_clone()?).write_all(&bulk)?;
        Some((fds.push_owned(memfd), bulk.len() as u64))
    };
    Ok(SessionHandover {
        conn,
        offered_features: session.offered_features,
        offered_protocol: session.offered_protocol.bits(),
        negotiated: *lock(&session.negotiated),
        lifecycle: *lock(&session.lifecycle),
        config: *lock(&session.config),
        memory,
        rings,
        backend_channel,
        shmem_negotiated: session.channel.shmem_negotiated(),
        display_channel,
        display_state,
        ops,
        device,
        device_fds,
        bulk,
    })
}

/// The old process's side: answers upgrade requests on the control socket.
pub struct ControlServer {
    listener: UnixListener,
    control: Arc<ServeControl>,
    args: Vec<String>,
    /// This process's user (read before the sandbox, which has no `getuid`).
    uid: rustix::process::Uid,
    /// One upgrade at a time.
    busy: Mutex<()>,
}

impl ControlServer {
    /// Serves upgrade requests on `listener` for the serve loop `control`; `args` is this
    /// process's command line (without the program name).
    pub fn new(listener: UnixListener, control: Arc<ServeControl>, args: Vec<String>) -> Self {
        ControlServer {
            listener,
            control,
            args,
            uid: rustix::process::getuid(),
            busy: Mutex::new(()),
        }
    }

    /// Answers requests on a thread of its own, for the life of the process.
    pub fn spawn(self) -> io::Result<()> {
        std::thread::Builder::new()
            .name("vug-control".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    match stream {
                        Ok(stream) => self.serve(stream),
                        Err(e) => log::warn!("control socket: {e}"),
                    }
                }
            })
            .map(drop)
    }

    fn serve(&self, stream: UnixStream) {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        match self.hand_over(&stream) {
            Ok(()) => {}
            Err(UpgradeError::Refused(why)) => {
                log::warn!("upgrade refused: {why}");
                let _ = send_frame(&stream, REFUSED, why.as_bytes(), &[]);
            }
            Err(e) => log::warn!("upgrade did not happen: {e}; serving on"),
        }
    }

    /// One handover. Returns only when this process goes on serving (it exits on commit).
    fn hand_over(&self, stream: &UnixStream) -> Result<(), UpgradeError> {
        let peer = rustix::net::sockopt::socket_peercred(stream).map_err(io::Error::from)?;
        let me = self.uid;
        if peer.uid != me {
            return Err(UpgradeError::Refused(format!(
                "the upgrading process runs as uid {}, this backend as uid {}",
                peer.uid.as_raw(),
                me.as_raw()
            )));
        }
        let hello = recv_frame(stream)?;
        if hello.kind != HELLO {
            return Err(UpgradeError::Protocol(format!(
                "frame {} before hello",
                hello.kind
            )));
        }
        let hello: Hello = serde_json::from_slice(&hello.payload)
            .map_err(|e| UpgradeError::Protocol(format!("hello: {e}")))?;
        if hello.format != FORMAT || !hello.versions.contains(&STATE_VERSION) {
            return Err(UpgradeError::Refused(format!(
                "the new binary ({}) reads state versions {:?}; this one ({}) writes version {STATE_VERSION}",
                hello.binary,
                hello.versions,
                env!("CARGO_PKG_VERSION")
            )));
        }
        log::info!(
            "upgrade: handing over to pid {} ({} {})",
            hello.pid,
            hello.binary,
            hello.format
        );
        let started = Instant::now();
        let parked = |live: &Option<Arc<Live>>| match live {
            Some(live) if !live.park(QUIESCE_LIMIT) => {
                live.unpark();
                Err(UpgradeError::Refused(format!(
                    "the queue thread did not reach a chain boundary within {QUIESCE_LIMIT:?}"
                )))
            }
            _ => Ok(()),
        };
        let mut live = self.control.live();
        parked(&live)?;
        let rollback = |live: &Option<Arc<Live>>, why: String| {
            self.control.resume();
            if let Some(live) = live {
                live.unpark();
            }
            log::warn!("upgrade: rolled back ({why}); serving on");
        };
        if !self.control.stop(QUIESCE_LIMIT) {
            rollback(
                &live,
                "the connection did not reach a message boundary".into(),
            );
            return Err(UpgradeError::Refused(format!(
                "the connection did not reach a message boundary within {QUIESCE_LIMIT:?}"
            )));
        }
        // The connection served now, with the serve loop stopped: the one parked above unless
        // the loop moved on meanwhile (it had just started a restored or accepted connection's
        // queue thread and not yet published the connection, or was leaving one). Handing
        // over what was read before the stop would leave the frontend's connection behind.
        let now = self.control.live();
        let same = match (&live, &now) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some(left) = &live {
                left.unpark();
            }
            live = now;
            if let Err(e) = parked(&live) {
                self.control.resume();
                log::warn!("upgrade: rolled back ({e}); serving on");
                return Err(e);
            }
        }
        let rollback = |why: String| rollback(&live, why);
        let handover = self.snapshot(live.as_deref());
        let (doc, fds) = match handover {
            Ok(h) => h,
            Err(e) => {
                rollback(e.to_string());
                return Err(e);
            }
        };
        let sent = send_json(stream, STATE, &doc).and_then(|()| {
            let borrowed: Vec<BorrowedFd<'_>> = fds.0.iter().map(|f| f.as_fd()).collect();
            send_fds(stream, &borrowed)
        });
        if let Err(e) = sent {
            rollback(format!("sending the state: {e}"));
            return Err(e.into());
        }
        log::info!(
            "upgrade: state sent ({} fds) {:.1} ms after the request; waiting for pid {}",
            fds.0.len(),
            started.elapsed().as_secs_f64() * 1e3,
            hello.pid
        );
        let verdict = recv_frame(stream);
        match verdict {
            Ok(Frame { kind: READY, .. }) => {
                if let Err(e) = send_frame(stream, COMMIT, &[], &[]) {
                    rollback(format!("sending COMMIT: {e}"));
                    return Err(e.into());
                }
                log::info!(
                    "upgrade: pid {} serves now; this process exits ({:.1} ms after the request)",
                    hello.pid,
                    started.elapsed().as_secs_f64() * 1e3
                );
                // Nothing else may reach the frontend: no destructors, no unmaps.
                let _ = io::stderr().flush();
                std::process::exit(0);
            }
            Ok(Frame {
                kind: ABORT,
                payload,
                ..
            }) => {
                let why = String::from_utf8_lossy(&payload).into_owned();
                rollback(format!("the new process gave up: {why}"));
                Err(UpgradeError::Restore(why))
            }
            Ok(frame) => {
                let why = format!("unexpected frame {}", frame.kind);
                let _ = send_frame(stream, ABORT, why.as_bytes(), &[]);
                rollback(why);
                Err(UpgradeError::Protocol(format!("frame {}", frame.kind)))
            }
            Err(e) => {
                // The new process must not take over after this: it reads the ABORT, or, if
                // it is gone, nobody reads anything.
                let why = format!("no verdict from pid {}: {e}", hello.pid);
                let _ = send_frame(stream, ABORT, why.as_bytes(), &[]);
                rollback(why);
                Err(e.into())
            }
        }
    }

    fn snapshot(&self, live: Option<&Live>) -> Result<(Handover, FdList), UpgradeError> {
        let mut fds = FdList::default();
        let session = match live {
            Some(live) => {
                let snapshot = live
                    .with_device(QUIESCE_LIMIT, |device| match device.handover_blocker() {
                        Some(why) => Err(why),
                        None => device.snapshot().map_err(|e| {
                            out_of_fds(&e).unwrap_or_else(|| format!("device snapshot: {e}"))
                        }),
                    })
                    .ok_or_else(|| UpgradeError::Refused("the queue thread did not answer".into()))?
                    .map_err(UpgradeError::Refused)?;
                Some(
                    session_handover(live, snapshot, &mut fds)
                        .map_err(|e| refuse_out_of_fds(e.into()))?,
                )
            }
            None => None,
        };
        let listener = self.control.listener().map(|fd| fds.push_owned(fd));
        let control = Some(
            fds.push(self.listener.as_fd())
                .map_err(|e| refuse_out_of_fds(e.into()))?,
        );
        let stderr = Some(
            fds.push(io::stderr().as_fd())
                .map_err(|e| refuse_out_of_fds(e.into()))?,
        );
        Ok((
            Handover {
                format: FORMAT.into(),
                version: STATE_VERSION,
                from: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                args: self.args.clone(),
                listener,
                control,
                stderr,
                session,
            },
            fds,
        ))
    }
}

/// The refusal for a handover that cannot duplicate its fds (`EMFILE`, `ENFILE`): every fd
/// of the device is duplicated to be sent, and a guest holding about as many buffers as the
/// reserve (`FD_RESERVE`) or more leaves no room for that. The duplicates made so far are
/// closed with the refused handover; the process serves on.
fn out_of_fds(e: &io::Error) -> Option<String> {
    let errno = rustix::io::Errno::from_io_error(e);
    matches!(
        errno,
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
    .then(|| {
        format!(
            "the handover duplicates each of the device's file descriptors, and the open-file \
             limit is reached ({e}); upgrade when the guest holds fewer buffers, or run the \
             backend with a higher open-file limit (LimitNOFILE=, ulimit -n)"
        )
    })
}

/// [`out_of_fds`] as an [`UpgradeError::Refused`]; other errors pass.
fn refuse_out_of_fds(e: UpgradeError) -> UpgradeError {
    match &e {
        UpgradeError::Io(io) => out_of_fds(io).map_or(e, UpgradeError::Refused),
        _ => e,
    }
}

// ------------------------------------------------------------------------------------------
// The new process.

/// What the new process received, until it restored it.
pub struct Incoming {
    stream: UnixStream,
    /// The document.
    pub handover: Handover,
    fds: Vec<Option<OwnedFd>>,
}

/// Connects to the control socket at `path` and receives the device.
pub fn receive(path: &Path) -> Result<Incoming, UpgradeError> {
    let stream = UnixStream::connect(path)?;
    send_json(
        &stream,
        HELLO,
        &Hello {
            format: FORMAT.into(),
            versions: READS_VERSIONS.to_vec(),
            pid: std::process::id(),
            binary: format!("vhost-user-gpu {}", env!("CARGO_PKG_VERSION")),
        },
    )?;
    let frame = recv_frame(&stream)?;
    let handover: Handover = match frame.kind {
        STATE => serde_json::from_slice(&frame.payload)
            .map_err(|e| UpgradeError::Protocol(format!("the state document: {e}")))?,
        REFUSED => {
            return Err(UpgradeError::Refused(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            ))
        }
        other => {
            return Err(UpgradeError::Protocol(format!(
                "frame {other} instead of the state"
            )))
        }
    };
    if handover.format != FORMAT || !READS_VERSIONS.contains(&handover.version) {
        let why = format!(
            "state version {} (from vhost-user-gpu {}) is not one this binary reads ({READS_VERSIONS:?})",
            handover.version, handover.from
        );
        let _ = send_frame(&stream, ABORT, why.as_bytes(), &[]);
        return Err(UpgradeError::Refused(why));
    }
    let wanted = max_index(&handover).map_or(0, |m| m + 1);
    let mut fds = Vec::with_capacity(wanted);
    while fds.len() < wanted {
        let frame = recv_frame(&stream)?;
        if frame.kind != FDS {
            return Err(UpgradeError::Protocol(format!(
                "frame {} while {} of {wanted} fds came",
                frame.kind,
                fds.len()
            )));
        }
        fds.extend(frame.fds.into_iter().map(Some));
    }
    Ok(Incoming {
        stream,
        handover,
        fds,
    })
}

fn max_index(h: &Handover) -> Option<usize> {
    let mut all: Vec<usize> = [h.listener, h.control, h.stderr]
        .into_iter()
        .flatten()
        .collect();
    if let Some(s) = &h.session {
        all.push(s.conn);
        all.extend(s.memory.iter().map(|(_, fd)| *fd));
        for r in &s.rings {
            all.extend([r.kick, r.call, r.err].into_iter().flatten());
        }
        all.extend([s.backend_channel, s.display_channel].into_iter().flatten());
        all.extend(&s.device_fds);
        all.extend(s.bulk.map(|(fd, _)| fd));
    }
    all.into_iter().max()
}

/// A restored connection, ready to serve.
pub struct Restored {
    /// Its shared state.
    pub session: Arc<Session>,
    /// The device.
    pub device: GpuDevice,
    /// The connection, primed with the negotiation.
    pub connection: Connection,
}

impl Restored {
    /// Drops what was restored without a word to the display channel, which the previous
    /// process goes on serving (this process did not take over: see
    /// [`GpuDevice::discard`]).
    pub fn discard(self) {
        self.device.discard();
    }
}

impl Incoming {
    /// Takes fd `index` (each only once).
    pub fn take(&mut self, index: usize) -> Result<OwnedFd, UpgradeError> {
        self.fds
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| UpgradeError::Restore(format!("fd {index} missing or used twice")))
    }

    /// Takes the fd `index`, if there is one.
    pub fn take_opt(&mut self, index: Option<usize>) -> Result<Option<OwnedFd>, UpgradeError> {
        index.map(|i| self.take(i)).transpose()
    }

    /// Restores the served connection, if there was one: memory table, rings, channels,
    /// negotiation (the `vhost` handler primed by a replay, DESIGN-lifecycle.md 4.5) and the
    /// device (ports from `factory`).
    pub fn restore(
        &mut self,
        settings: &TransportSettings,
        factory: &DeviceFactory,
    ) -> Result<Option<Restored>, UpgradeError> {
        let Some(h) = self.handover.session.clone() else {
            return Ok(None);
        };
        let fail =
            |what: &str, e: &dyn std::fmt::Display| UpgradeError::Restore(format!("{what}: {e}"));
        // Memory first: backings are checked against it.
        let mut files = Vec::with_capacity(h.memory.len());
        for (_, fd) in &h.memory {
            files.push(File::from(self.take(*fd)?));
        }
        let infos: Vec<RegionInfo> = h.memory.iter().map(|(i, _)| *i).collect();
        let memory = MemoryTable::restore(&infos, files).map_err(|e| fail("memory table", &e))?;
        let gate = Arc::new(QueueGate::default());
        let channel = BackendChannel::new(gate.clone());
        let backend_fd = self.take_opt(h.backend_channel)?;
        if let Some(fd) = &backend_fd {
            let backend = Backend::from_stream(UnixStream::from(fd.try_clone()?));
            backend.set_reply_ack_flag(
                h.negotiated
                    .has_protocol(VhostUserProtocolFeatures::REPLY_ACK),
            );
            backend.set_shmem_flag(h.negotiated.has_protocol(VhostUserProtocolFeatures::SHMEM));
            channel.set(backend);
        }
        if h.shmem_negotiated {
            channel.set_shmem_negotiated();
        }
        let display_fd = self.take_opt(h.display_channel)?;
        let display = match &display_fd {
            Some(fd) => Some(GpuBackend::from_stream(UnixStream::from(fd.try_clone()?))),
            None => None,
        };
        // The device, with a display sink that continues what the old one showed.
        let mut fan = FanOut::default();
        if let Some(capture) = &settings.capture {
            fan.push(Box::new(capture.clone()));
        }
        let mut display_record = None;
        if let Some(display) = &display {
            let qemu =
                QemuDisplay::restored(display.clone(), h.display_state.clone().unwrap_or_default());
            display_record = Some(qemu.record());
            fan.push(Box::new(qemu));
        }
        let mapper = Box::new(ShmemMapper::new(channel.clone(), settings.hostmem));
        let (config, ports) =
            factory(mapper, Box::new(fan)).map_err(|e| fail("device ports", &e))?;
        let mut device_fds = Vec::with_capacity(h.device_fds.len());
        for &i in &h.device_fds {
            device_fds.push(Some(self.take(i)?));
        }
        let bulk = match h.bulk {
            Some((fd, len)) => {
                let file = File::from(self.take(fd)?);
                if file.size() != len {
                    return Err(UpgradeError::Restore(format!(
                        "the 2D pixel data has {} bytes, the state says {len}",
                        file.size()
                    )));
                }
                file
            }
            None => File::from(
                rustix::fs::memfd_create("vhost-user-gpu-empty", rustix::fs::MemfdFlags::CLOEXEC)
                    .map_err(|e| fail("bulk", &e))?,
            ),
        };
        let device = GpuDevice::restore(
            config,
            ports,
            &h.device,
            &memory.memory(),
            &mut device_fds,
            &bulk,
        )
        .map_err(|e| fail("device", &e))?;
        // The session.
        let mut session = Session::new(
            settings.clone(),
            gate,
            channel,
            h.offered_features,
            VhostUserProtocolFeatures::from_bits_retain(h.offered_protocol),
            h.config,
        )
        .map_err(|e| fail("session", &e))?;
        session.set_memory(memory);
        *lock(&session.negotiated) = h.negotiated;
        *lock(&session.lifecycle) = h.lifecycle;
        *lock(&session.display_channel) = display.clone();
        *lock(&session.backend_channel_fd) = backend_fd;
        *lock(&session.display_channel_fd) = display_fd;
        *lock(&session.display_record) = display_record;
        for (index, r) in h.rings.iter().enumerate().take(NUM_QUEUES) {
            let mut ring = Vring::from_state(&r.state).map_err(|e| fail("ring", &e))?;
            ring.kick = self.take_opt(r.kick)?.map(|fd| Arc::new(File::from(fd)));
            ring.call = self.take_opt(r.call)?.map(|fd| Arc::new(File::from(fd)));
            lock(&session.err_fds)[index] = self.take_opt(r.err)?.map(File::from);
            *lock(&session.rings[index]) = ring;
        }
        for op in &h.ops {
            let op = match op {
                OpState::AckFeatures(f) => DeferredOp::AckFeatures(*f),
                OpState::WriteConfig { offset, data } => DeferredOp::WriteConfig {
                    offset: *offset,
                    data: data.clone(),
                },
                OpState::Reset => DeferredOp::Reset("pending before the upgrade"),
                OpState::SetDisplay => match &display {
                    Some(d) => DeferredOp::SetDisplay(d.clone()),
                    None => continue,
                },
                OpState::RingsChanged => DeferredOp::RingsChanged,
                OpState::RepaintCapture => DeferredOp::RepaintCapture,
            };
            lock(&session.ops).push_back(op);
        }
        lock(&session.ops).push_back(DeferredOp::RingsChanged);
        if settings.capture.is_some() {
            lock(&session.ops).push_back(DeferredOp::RepaintCapture);
        }
        // The queue thread's first look at the rings (chains that came during the handover).
        session.kick_worker();
        let session = Arc::new(session);
        let conn = self.take(h.conn)?;
        let connection = prime(session.clone(), &h.negotiated, h.offered_features, conn)
            .map_err(|e| fail("priming the vhost-user handler", &e))?;
        Ok(Some(Restored {
            session,
            device,
            connection,
        }))
    }

    /// Tells the old process that everything is restored; waits for its `COMMIT`. An
    /// `ABORT` (the old process rolled back) or a timeout (it may still serve) is an error;
    /// the end of the connection without a frame means the old process died mid-way: this
    /// process takes over (nobody else will).
    pub fn commit(&mut self) -> Result<(), UpgradeError> {
        send_frame(&self.stream, READY, &[], &[])?;
        match recv_frame(&self.stream) {
            Ok(Frame { kind: COMMIT, .. }) => Ok(()),
            Ok(Frame {
                kind: ABORT,
                payload,
                ..
            }) => Err(UpgradeError::Refused(format!(
                "pid {} rolled back: {}",
                self.handover.pid,
                String::from_utf8_lossy(&payload)
            ))),
            Ok(frame) => Err(UpgradeError::Protocol(format!(
                "frame {} instead of COMMIT",
                frame.kind
            ))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                log::warn!(
                    "upgrade: pid {} went away before its COMMIT; taking over",
                    self.handover.pid
                );
                Ok(())
            }
            Err(e) => Err(UpgradeError::Refused(format!(
                "no COMMIT from pid {} ({e}); not taking over",
                self.handover.pid
            ))),
        }
    }

    /// Tells the old process to go on serving.
    pub fn abort(&self, why: &str) {
        let _ = send_frame(&self.stream, ABORT, why.as_bytes(), &[]);
    }
}

/// Makes this process's stderr (fd 2) the old process's, so that the log goes on where it
/// was (a supervisor's log file, the journal).
pub fn log_where_it_logged(stderr: OwnedFd) -> io::Result<()> {
    sys::replace_fd(2, stderr.as_fd(), false)
}

fn session_of(handler: &Mutex<Handler>) -> Arc<Session> {
    handler.lock().unwrap_or_else(|e| e.into_inner()).session()
}

/// A `vhost` request handler for the inherited connection `conn`, in the state the
/// frontend's negotiation left the old one in: it is created over a socket pair, the
/// negotiation is replayed into it (our handler answers from the restored state and changes
/// nothing), then the connection is put in place of the pair's end (DESIGN-lifecycle.md 4.5).
fn prime(
    session: Arc<Session>,
    negotiated: &Negotiated,
    offered: u64,
    conn: OwnedFd,
) -> io::Result<Connection> {
    let (ours, theirs) = UnixStream::pair()?;
    let handler = Arc::new(Mutex::new(Handler::new(session)));
    handler
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_restoring(true);
    let mut req = BackendReqHandler::from_stream(ours, handler.clone());
    let mut replay = |code: u32, body: Option<u64>, reply: bool| -> io::Result<()> {
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes()); // version 1, no NEED_REPLY
        msg.extend_from_slice(&(if body.is_some() { 8u32 } else { 0 }).to_le_bytes());
        if let Some(v) = body {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        (&theirs).write_all(&msg)?;
        req.handle_request()
            .map_err(|e| io::Error::other(format!("replaying request {code}: {e}")))?;
        if reply {
            let mut answer = [0u8; 20];
            (&theirs).read_exact(&mut answer)?;
        }
        Ok(())
    };
    // GET_FEATURES, SET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES.
    replay(1, None, true)?;
    replay(2, Some(negotiated.acked_features & offered), false)?;
    replay(15, None, true)?;
    replay(16, Some(negotiated.acked_protocol), false)?;
    handler
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_restoring(false);
    sys::replace_fd(req.as_raw_fd(), conn.as_fd(), true)?;
    drop(conn);
    drop(theirs);
    Connection::from_handler(req, session_of(&handler))
}
