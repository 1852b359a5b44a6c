//! The host end of a cross-domain Wayland channel: one connection to the host compositor per
//! context, the tables that turn guest identifiers into file descriptors and back, and the
//! pipes that carry clipboard and drag-and-drop data.
//!
//! Nothing here blocks. The socket and the host ends of pipes are non-blocking; bytes and fds
//! for the compositor wait in a bounded queue when it does not read, and a guest that keeps
//! sending into a stalled queue gets [`ChannelError::Stalled`], never a blocked queue thread.
//! The device drives the channel:
//! - `SEND` -> [`WaylandChannel::send`] (resource ids are turned into fds through the
//!   [`BlobExporter`] port);
//! - `WRITE` -> [`WaylandChannel::write`];
//! - a `POLL` fence on the channel ring -> [`WaylandChannel::next_event`] whenever one of
//!   [`WaylandChannel::poll_fds`] is ready; the event's bytes go to offset 0 of the channel
//!   ring, then the fence is signalled (one event per fence);
//! - `RESOURCE_CREATE_BLOB` with an identifier from a RECEIVE -> [`WaylandChannel::take_blob`];
//! - socket or pipe writable -> [`WaylandChannel::flush`].

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, SealFlags, SeekFrom};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::wire::{
    self, IdLayout, Identifier, ID_TYPE_READ_PIPE, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE,
    PIPE_READ_START, READ_WRITE_SIZE, RING_PAGE_SIZE,
};

/// `DMA_BUF_MAGIC` from `linux/magic.h` (the `f_type` of a dma-buf's file system).
const DMA_BUF_MAGIC: u64 = 0x444d_4142;
/// Most fds libwayland puts in one `sendmsg` (`MAX_FDS_OUT`); more than this in one message
/// from the compositor is a broken stream.
const MAX_FDS_PER_MESSAGE: usize = 28;
/// Page size for rounding blob sizes (guests create blobs of whole pages).
const PAGE: u64 = 4096;

/// Bounds on what one channel holds for a guest. Every count is of host resources (fds,
/// bytes) that a guest or the compositor can make the device keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Fds received from the compositor and not yet claimed by the guest (blobs), plus write
    /// pipes still open.
    pub max_items: usize,
    /// Read pipes open at once.
    pub max_read_pipes: usize,
    /// Bytes waiting for the compositor to read.
    pub max_queued_bytes: usize,
    /// Fds waiting for the compositor to read.
    pub max_queued_fds: usize,
    /// Bytes waiting for all write pipes together.
    pub max_pipe_backlog: usize,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits {
            max_items: 256,
            max_read_pipes: 32,
            max_queued_bytes: 1 << 20,
            max_queued_fds: 128,
            max_pipe_backlog: 1 << 20,
        }
    }
}

/// What a blob from the compositor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A regular file or memfd (keymaps, shm pools).
    Memory,
    /// A dma-buf.
    Dmabuf,
}

/// A buffer the compositor handed in, waiting for the guest to make a resource of it. The
/// device must judge it (dmabuf-info) before any guest mapping, like its own buffers.
#[derive(Debug)]
pub struct ReceivedBlob {
    /// The fd.
    pub fd: OwnedFd,
    /// Size in bytes as reported to the guest (the fd's size rounded up to whole pages).
    pub size: u64,
    /// The fd's own size in bytes.
    pub file_size: u64,
    /// Memory or dma-buf.
    pub kind: BlobKind,
    /// Whether a writable mapping is allowed: opened read-write and not sealed against
    /// writes (weston's keymaps are read-only).
    pub writable: bool,
}

/// The port through which the channel turns a guest resource id into an fd for the
/// compositor. The device implements it over its resource table.
pub trait BlobExporter {
    /// A new fd for resource `resource_id` (attached to the context), or why not.
    fn export_blob(&mut self, resource_id: u32) -> Result<OwnedFd, String>;
}

/// Interest of the device's event loop in one fd of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Wake when readable (data or hang-up): call [`WaylandChannel::next_event`].
    Read,
    /// Wake when writable: call [`WaylandChannel::flush`].
    Write,
}

/// Why a channel operation failed. Every variant is the guest's or the compositor's doing
/// and maps to a virtio-gpu error for the guest; none leaves an fd behind.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The compositor's socket could not be reached.
    #[error("cannot connect to the Wayland compositor at {path}: {source} (is it running? set --wayland-socket or XDG_RUNTIME_DIR/WAYLAND_DISPLAY)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A malformed command.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// The guest switched identifier layouts within one context.
    #[error("SEND uses {now:?} identifier slots but this context started with {first:?}")]
    LayoutChanged {
        /// Layout of the first SEND.
        first: IdLayout,
        /// Layout of this one.
        now: IdLayout,
    },
    /// An identifier type this device does not pass.
    #[error("identifier type {0} is not supported (only VIRTGPU_BLOB 1 and READ_PIPE 3)")]
    UnsupportedIdType(u32),
    /// A resource could not be exported.
    #[error("resource {id} cannot be passed to the compositor: {reason}")]
    Export {
        /// Resource id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// A bad read pipe id.
    #[error("read pipe id {0:#x} is not above {PIPE_READ_START:#x} or is already in use")]
    ReadPipeId(u32),
    /// An item id the channel does not hold (or not of the right kind).
    #[error("identifier {id:#x} is not a {what} of this channel")]
    UnknownItem {
        /// Identifier.
        id: u32,
        /// What it should have been.
        what: &'static str,
    },
    /// A bound of [`ChannelLimits`] is reached.
    #[error("{what}: the limit of {limit} is reached")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// Limit.
        limit: usize,
    },
    /// The compositor (or a pipe reader) does not read and its queue is full.
    #[error("{what} is not reading: {queued} queued, limit {limit}; the data is refused")]
    Stalled {
        /// Who.
        what: &'static str,
        /// Queued now.
        queued: usize,
        /// Limit.
        limit: usize,
    },
    /// The compositor sent an fd this device does not forward.
    #[error("the compositor sent an fd that is {0}; only memfds, regular files, dma-bufs and pipe write ends are forwarded")]
    UnsupportedFd(String),
    /// The compositor sent more fds in one message than fit (they were closed).
    #[error("the compositor sent more than {MAX_FDS_PER_MESSAGE} fds in one message")]
    FdsTruncated,
    /// The connection is closed (the compositor hung up or the channel broke earlier).
    #[error("the compositor connection is closed")]
    Closed,
    /// An OS error on the socket or a pipe.
    #[error("{what}: {source}")]
    Io {
        /// Operation.
        what: &'static str,
        /// Error.
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(Errno) -> ChannelError {
    move |e| ChannelError::Io {
        what,
        source: e.into(),
    }
}

#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    /// Sent with the first byte of `data`; empty once that happened.
    fds: Vec<OwnedFd>,
}

#[derive(Debug)]
struct WritePipe {
    fd: OwnedFd,
    backlog: Vec<u8>,
    hang_up: bool,
}

#[derive(Debug)]
enum Item {
    Blob(ReceivedBlob),
    WritePipe(WritePipe),
}

/// The host end of one context's Wayland channel.
#[derive(Debug)]
pub struct WaylandChannel {
    socket: OwnedFd,
    limits: ChannelLimits,
    /// Identifier layout of the guest, learnt from its first SEND.
    layout: Option<IdLayout>,
    outgoing: VecDeque<Outgoing>,
    queued_bytes: usize,
    queued_fds: usize,
    /// Received from the compositor, not yet delivered to the guest.
    incoming: Vec<u8>,
    incoming_ids: VecDeque<Identifier>,
    items: BTreeMap<u32, Item>,
    last_item_id: u32,
    read_pipes: BTreeMap<u32, OwnedFd>,
    pipe_backlog: usize,
    /// The compositor closed its end (or the stream broke).
    hung_up: bool,
    /// The guest was told (RECEIVE with nothing in it).
    hang_up_delivered: bool,
    /// Alternates the first source `next_event` looks at.
    pipes_first: bool,
}

/// The compositor socket path from the environment: `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY`
/// (`wayland-0` when unset), or `$WAYLAND_DISPLAY` when it is absolute, as libwayland does.
pub fn socket_from_env() -> Option<PathBuf> {
    let display = std::env::var_os("WAYLAND_DISPLAY").unwrap_or_else(|| "wayland-0".into());
    let display = PathBuf::from(display);
    if display.is_absolute() {
        return Some(display);
    }
    Some(PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join(display))
}

impl WaylandChannel {
    /// Connects to the compositor at `path` (non-blocking; a compositor whose backlog is full
    /// is an error, not a wait).
    pub fn connect(path: &Path, limits: ChannelLimits) -> Result<Self, ChannelError> {
        let connect_error = |e: Errno| ChannelError::Connect {
            path: path.to_owned(),
            source: e.into(),
        };
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(connect_error)?;
        let addr = SocketAddrUnix::new(path).map_err(connect_error)?;
        rustix::net::connect(&socket, &addr).map_err(connect_error)?;
        Ok(Self::from_socket(socket, limits))
    }

    fn from_socket(socket: OwnedFd, limits: ChannelLimits) -> Self {
        WaylandChannel {
            socket,
            limits,
            layout: None,
            outgoing: VecDeque::new(),
            queued_bytes: 0,
            queued_fds: 0,
            incoming: Vec::new(),
            incoming_ids: VecDeque::new(),
            items: BTreeMap::new(),
            // Odd, so that the first id handed out wraps to 1.
            last_item_id: PIPE_READ_START - 1,
            read_pipes: BTreeMap::new(),
            pipe_backlog: 0,
            hung_up: false,
            hang_up_delivered: false,
            pipes_first: false,
        }
    }

    /// The identifier layout RECEIVEs are written in (28 slots until the guest's first SEND).
    pub fn layout(&self) -> IdLayout {
        self.layout.unwrap_or(IdLayout::TwentyEight)
    }

    /// Whether the compositor closed the connection.
    pub fn is_closed(&self) -> bool {
        self.hung_up
    }

    /// Fds received and not yet claimed plus open write pipes, and open read pipes.
    pub fn held(&self) -> (usize, usize) {
        (self.items.len(), self.read_pipes.len())
    }

    /// Forwards a SEND: its bytes and one fd per identifier go to the compositor. On any
    /// error nothing is sent and nothing is kept.
    pub fn send(
        &mut self,
        cmd: &[u8],
        exporter: &mut dyn BlobExporter,
    ) -> Result<(), ChannelError> {
        let send = wire::decode_send(cmd)?;
        if let Some(first) = self.layout {
            if first != send.layout {
                return Err(ChannelError::LayoutChanged {
                    first,
                    now: send.layout,
                });
            }
        }
        if self.hung_up {
            return Err(ChannelError::Closed);
        }
        if send.data.is_empty() && !send.identifiers.is_empty() {
            // A stream socket carries fds only with at least one byte; they would be lost.
            return Err(ChannelError::Wire(wire::WireError::Invalid {
                what: "CrossDomainSendReceive with identifiers but opaque_data_size",
                value: 0,
            }));
        }
        if self.queued_bytes + send.data.len() > self.limits.max_queued_bytes {
            return Err(ChannelError::Stalled {
                what: "the compositor",
                queued: self.queued_bytes,
                limit: self.limits.max_queued_bytes,
            });
        }
        if self.queued_fds + send.identifiers.len() > self.limits.max_queued_fds {
            return Err(ChannelError::Stalled {
                what: "the compositor (fds)",
                queued: self.queued_fds,
                limit: self.limits.max_queued_fds,
            });
        }
        let mut fds = Vec::with_capacity(send.identifiers.len());
        let mut new_read_pipes: Vec<(u32, OwnedFd)> = Vec::new();
        for ident in &send.identifiers {
            match ident.kind {
                ID_TYPE_VIRTGPU_BLOB => {
                    let fd =
                        exporter
                            .export_blob(ident.id)
                            .map_err(|reason| ChannelError::Export {
                                id: ident.id,
                                reason,
                            })?;
                    fds.push(fd);
                }
                ID_TYPE_READ_PIPE => {
                    let id = ident.id;
                    if id <= PIPE_READ_START
                        || self.read_pipes.contains_key(&id)
                        || new_read_pipes.iter().any(|(i, _)| *i == id)
                    {
                        return Err(ChannelError::ReadPipeId(id));
                    }
                    if self.read_pipes.len() + new_read_pipes.len() >= self.limits.max_read_pipes {
                        return Err(ChannelError::TooMany {
                            what: "read pipes",
                            limit: self.limits.max_read_pipes,
                        });
                    }
                    let (read_end, write_end) =
                        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                            .map_err(io("pipe2"))?;
                    // Only our end is non-blocking: the compositor's writer keeps its own
                    // file description as it expects.
                    rustix::fs::fcntl_setfl(&read_end, OFlags::NONBLOCK)
                        .map_err(io("fcntl(F_SETFL) on a read pipe"))?;
                    new_read_pipes.push((id, read_end));
                    fds.push(write_end);
                }
                other => return Err(ChannelError::UnsupportedIdType(other)),
            }
        }
        self.read_pipes.extend(new_read_pipes);
        self.layout = Some(send.layout);
        self.queued_bytes += send.data.len();
        self.queued_fds += fds.len();
        self.outgoing.push_back(Outgoing {
            data: send.data.to_vec(),
            fds,
        });
        self.flush()
    }

    /// Writes what waits for the compositor and for write pipes, as far as they take it
    /// without blocking. A compositor that went away marks the channel closed.
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        while let Some(front) = self.outgoing.front_mut() {
            if front.data.is_empty() && front.fds.is_empty() {
                self.outgoing.pop_front();
                continue;
            }
            let borrowed: Vec<BorrowedFd<'_>> = front.fds.iter().map(|f| f.as_fd()).collect();
            let mut space =
                vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(ChannelError::TooMany {
                    what: "fds in one message",
                    limit: MAX_FDS_PER_MESSAGE,
                });
            }
            // A message with fds but no bytes cannot carry them: Wayland always has bytes.
            let slice = [IoSlice::new(&front.data)];
            match rustix::net::sendmsg(
                &self.socket,
                &slice,
                &mut control,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(sent) => {
                    self.queued_bytes -= sent;
                    self.queued_fds -= front.fds.len();
                    front.fds.clear();
                    front.data.drain(..sent);
                    if front.data.is_empty() {
                        self.outgoing.pop_front();
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE) | Err(Errno::CONNRESET) => {
                    self.hung_up = true;
                    self.outgoing.clear();
                    self.queued_bytes = 0;
                    self.queued_fds = 0;
                    return Err(ChannelError::Closed);
                }
                Err(e) => return Err(io("sendmsg to the compositor")(e)),
            }
        }
        self.flush_pipes();
        Ok(())
    }

    fn flush_pipes(&mut self) {
        let mut done = Vec::new();
        for (id, item) in &mut self.items {
            let Item::WritePipe(pipe) = item else {
                continue;
            };
            while !pipe.backlog.is_empty() {
                match rustix::io::write(&pipe.fd, &pipe.backlog) {
                    Ok(n) => {
                        pipe.backlog.drain(..n);
                        self.pipe_backlog -= n;
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => break,
                    Err(e) => {
                        // The reader went away: drop what is left, close the pipe.
                        log::debug!("write pipe {id:#x}: {e}; closing it");
                        self.pipe_backlog -= pipe.backlog.len();
                        pipe.backlog.clear();
                        pipe.hang_up = true;
                    }
                }
            }
            if pipe.backlog.is_empty() && pipe.hang_up {
                done.push(*id);
            }
        }
        for id in done {
            self.items.remove(&id);
        }
    }

    /// Forwards a WRITE into the write pipe it names.
    pub fn write(&mut self, cmd: &[u8]) -> Result<(), ChannelError> {
        let write = wire::decode_write(cmd)?;
        let Some(Item::WritePipe(pipe)) = self.items.get_mut(&write.identifier) else {
            return Err(ChannelError::UnknownItem {
                id: write.identifier,
                what: "write pipe",
            });
        };
        if self.pipe_backlog + write.data.len() > self.limits.max_pipe_backlog {
            return Err(ChannelError::Stalled {
                what: "a write pipe's reader",
                queued: self.pipe_backlog,
                limit: self.limits.max_pipe_backlog,
            });
        }
        pipe.backlog.extend_from_slice(write.data);
        pipe.hang_up |= write.hang_up;
        self.pipe_backlog += write.data.len();
        self.flush_pipes();
        Ok(())
    }

    /// The fds the device's event loop should watch, and for what.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, Interest)> {
        let mut fds = Vec::with_capacity(2 + self.read_pipes.len());
        if !self.hung_up {
            fds.push((self.socket.as_fd(), Interest::Read));
            if !self.outgoing.is_empty() {
                fds.push((self.socket.as_fd(), Interest::Write));
            }
        }
        fds.extend(
            self.read_pipes
                .values()
                .map(|fd| (fd.as_fd(), Interest::Read)),
        );
        for item in self.items.values() {
            if let Item::WritePipe(pipe) = item {
                if !pipe.backlog.is_empty() {
                    fds.push((pipe.fd.as_fd(), Interest::Write));
                }
            }
        }
        fds
    }

    /// The next event for the guest (the bytes of one RECEIVE or READ, at most one ring page),
    /// or `None` when nothing is ready. Never blocks. After the compositor hung up, one
    /// RECEIVE with no data and no identifiers tells the guest.
    pub fn next_event(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        self.pipes_first = !self.pipes_first;
        if self.pipes_first {
            if let Some(event) = self.next_pipe_event()? {
                return Ok(Some(event));
            }
            self.next_socket_event()
        } else {
            if let Some(event) = self.next_socket_event()? {
                return Ok(Some(event));
            }
            self.next_pipe_event()
        }
    }

    fn next_socket_event(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.incoming.is_empty() && !self.hung_up {
            if let Err(e) = self.receive() {
                // A broken stream cannot be resynchronised: tell the guest it is closed.
                self.hung_up = true;
                self.incoming.clear();
                self.incoming_ids.clear();
                log::debug!("compositor connection broken: {e}");
                if !matches!(e, ChannelError::Closed) {
                    return Err(e);
                }
            }
        }
        let layout = self.layout();
        if !self.incoming.is_empty() {
            let n = self.incoming.len().min(layout.max_data());
            let take = self.incoming_ids.len().min(layout.max_ids());
            let ids: Vec<Identifier> = self.incoming_ids.drain(..take).collect();
            let event = wire::encode_receive(layout, &ids, &self.incoming[..n]);
            self.incoming.drain(..n);
            return Ok(Some(event));
        }
        if self.hung_up && !self.hang_up_delivered {
            // Identifiers that never got bytes to travel with are dropped with their items.
            for ident in self.incoming_ids.drain(..) {
                self.items.remove(&ident.id);
            }
            self.hang_up_delivered = true;
            return Ok(Some(wire::encode_receive(layout, &[], &[])));
        }
        Ok(None)
    }

    /// One non-blocking `recvmsg` from the compositor into `incoming`.
    fn receive(&mut self) -> Result<(), ChannelError> {
        let layout = self.layout();
        let mut buf = vec![0u8; layout.max_data()];
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match rustix::net::recvmsg(
                &self.socket,
                &mut iov,
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => break msg,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::CONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(io("recvmsg from the compositor")(e)),
            }
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ChannelError::FdsTruncated);
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Err(ChannelError::Closed);
        }
        if self.items.len() + fds.len() > self.limits.max_items {
            return Err(ChannelError::TooMany {
                what: "fds from the compositor not yet claimed by the guest",
                limit: self.limits.max_items,
            });
        }
        let mut idents = Vec::with_capacity(fds.len());
        let mut items = Vec::with_capacity(fds.len());
        for fd in fds {
            let (kind, size, item) = classify(fd)?;
            items.push(item);
            idents.push((kind, size));
        }
        for ((kind, size), item) in idents.into_iter().zip(items) {
            let id = self.next_item_id();
            self.items.insert(id, item);
            self.incoming_ids.push_back(Identifier { id, kind, size });
        }
        self.incoming.extend_from_slice(&buf[..msg.bytes]);
        Ok(())
    }

    /// Odd ids from 1, below the read pipe range, never one in use (the device's own blob
    /// ids are even, so the two never meet).
    fn next_item_id(&mut self) -> u32 {
        loop {
            let next = self.last_item_id.wrapping_add(2);
            self.last_item_id = if next >= PIPE_READ_START { 1 } else { next };
            if !self.items.contains_key(&self.last_item_id) {
                return self.last_item_id;
            }
        }
    }

    fn next_pipe_event(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        let max = RING_PAGE_SIZE - READ_WRITE_SIZE;
        let mut buf = vec![0u8; max];
        let mut finished = None;
        let mut event = None;
        for (&id, fd) in &self.read_pipes {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    finished = Some(id);
                    event = Some(wire::encode_read(id, true, &[]));
                    break;
                }
                Ok(n) => {
                    event = Some(wire::encode_read(id, false, &buf[..n]));
                    break;
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                Err(e) => {
                    log::debug!("read pipe {id:#x}: {e}; closing it");
                    finished = Some(id);
                    event = Some(wire::encode_read(id, true, &[]));
                    break;
                }
            }
        }
        if let Some(id) = finished {
            self.read_pipes.remove(&id);
        }
        Ok(event)
    }

    /// Hands the guest the buffer behind identifier `id` of an earlier RECEIVE (its
    /// `RESOURCE_CREATE_BLOB`); the item is forgotten by the channel.
    pub fn take_blob(&mut self, id: u32) -> Result<ReceivedBlob, ChannelError> {
        match self.items.get(&id) {
            Some(Item::Blob(_)) => match self.items.remove(&id) {
                Some(Item::Blob(blob)) => Ok(blob),
                _ => unreachable!("checked just above"),
            },
            _ => Err(ChannelError::UnknownItem {
                id,
                what: "blob received from the compositor",
            }),
        }
    }
}

/// What an fd from the compositor is: (identifier type, size for the guest, item).
fn classify(fd: OwnedFd) -> Result<(u32, u32, Item), ChannelError> {
    let stat = rustix::fs::fstat(&fd).map_err(io("fstat on an fd from the compositor"))?;
    let access = rustix::fs::fcntl_getfl(&fd).map_err(io("fcntl(F_GETFL)"))? & OFlags::RWMODE;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Fifo if access == OFlags::WRONLY => {
            rustix::fs::fcntl_setfl(&fd, OFlags::WRONLY | OFlags::NONBLOCK)
                .map_err(io("fcntl(F_SETFL) on a write pipe"))?;
            Ok((
                ID_TYPE_WRITE_PIPE,
                0,
                Item::WritePipe(WritePipe {
                    fd,
                    backlog: Vec::new(),
                    hang_up: false,
                }),
            ))
        }
        FileType::Fifo => Err(ChannelError::UnsupportedFd(
            "the read end of a pipe".to_string(),
        )),
        FileType::RegularFile => {
            let seals = rustix::fs::fcntl_get_seals(&fd).unwrap_or(SealFlags::empty());
            let writable = access == OFlags::RDWR
                && !seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE);
            blob(fd, stat.st_size as u64, BlobKind::Memory, writable)
        }
        other => {
            let fs = rustix::fs::fstatfs(&fd).map_err(io("fstatfs"))?;
            if fs.f_type as u64 == DMA_BUF_MAGIC {
                let size =
                    rustix::fs::seek(&fd, SeekFrom::End(0)).map_err(io("lseek on a dma-buf"))?;
                let _ = rustix::fs::seek(&fd, SeekFrom::Start(0));
                blob(fd, size, BlobKind::Dmabuf, access == OFlags::RDWR)
            } else {
                Err(ChannelError::UnsupportedFd(format!("of type {other:?}")))
            }
        }
    }
}

fn blob(
    fd: OwnedFd,
    file_size: u64,
    kind: BlobKind,
    writable: bool,
) -> Result<(u32, u32, Item), ChannelError> {
    let size = file_size.div_ceil(PAGE) * PAGE;
    let Ok(wire_size) = u32::try_from(size) else {
        return Err(ChannelError::UnsupportedFd(format!(
            "{file_size} bytes large (identifier sizes are 32 bits)"
        )));
    };
    if size == 0 {
        return Err(ChannelError::UnsupportedFd("empty".to_string()));
    }
    Ok((
        ID_TYPE_VIRTGPU_BLOB,
        wire_size,
        Item::Blob(ReceivedBlob {
            fd,
            size,
            file_size,
            kind,
            writable,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cross_domain::wire::{encode_send, encode_write};
    use rustix::net::{socketpair, SocketFlags as SF};

    /// Hands out memfds holding `resource id` as text; refuses id 0.
    struct MemfdExporter;

    impl BlobExporter for MemfdExporter {
        fn export_blob(&mut self, resource_id: u32) -> Result<OwnedFd, String> {
            if resource_id == 0 {
                return Err("no such resource".into());
            }
            let fd = rustix::fs::memfd_create("blob", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| e.to_string())?;
            rustix::io::write(&fd, format!("resource {resource_id}").as_bytes())
                .map_err(|e| e.to_string())?;
            Ok(fd)
        }
    }

    fn pair(limits: ChannelLimits) -> (WaylandChannel, OwnedFd) {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SF::CLOEXEC | SF::NONBLOCK,
            None,
        )
        .unwrap();
        (WaylandChannel::from_socket(a, limits), b)
    }

    /// What the fake compositor reads: bytes and fds.
    fn peer_recv(peer: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut buf = vec![0u8; 8192];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let n = match rustix::net::recvmsg(peer, &mut iov, &mut control, RecvFlags::DONTWAIT) {
            Ok(msg) => msg.bytes,
            Err(Errno::AGAIN) => 0,
            Err(e) => panic!("{e}"),
        };
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        (buf[..n].to_vec(), fds)
    }

    fn peer_send(peer: &OwnedFd, data: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let n = rustix::net::sendmsg(
            peer,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(n, data.len());
    }

    fn blob(id: u32) -> Identifier {
        Identifier {
            id,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: 0,
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn send_passes_bytes_and_resource_fds() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let cmd = encode_send(IdLayout::TwentyEight, &[blob(7)], b"wayland bytes");
        ch.send(&cmd, &mut MemfdExporter).unwrap();
        let (data, fds) = peer_recv(&peer);
        assert_eq!(data, b"wayland bytes");
        assert_eq!(fds.len(), 1);
        let mut text = [0u8; 10];
        let n = rustix::io::pread(&fds[0], &mut text, 0).unwrap();
        assert_eq!(&text[..n], b"resource 7");
    }

    #[test]
    fn refused_send_sends_nothing_and_keeps_nothing() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let read_pipe = Identifier {
            id: PIPE_READ_START + 1,
            kind: ID_TYPE_READ_PIPE,
            size: 0,
        };
        // Export of resource 0 fails after a read pipe was made for the same message.
        let cmd = encode_send(IdLayout::TwentyEight, &[read_pipe, blob(0)], b"x");
        assert!(matches!(
            ch.send(&cmd, &mut MemfdExporter),
            Err(ChannelError::Export { id: 0, .. })
        ));
        assert_eq!(ch.held(), (0, 0));
        let (data, fds) = peer_recv(&peer);
        assert!(data.is_empty() && fds.is_empty());
        // Bad read pipe ids, duplicates and unknown identifier types.
        for bad in [PIPE_READ_START, 5, 0] {
            let id = Identifier {
                id: bad,
                kind: ID_TYPE_READ_PIPE,
                size: 0,
            };
            let cmd = encode_send(IdLayout::TwentyEight, &[id], b"x");
            assert!(matches!(
                ch.send(&cmd, &mut MemfdExporter),
                Err(ChannelError::ReadPipeId(_))
            ));
        }
        let cmd = encode_send(IdLayout::TwentyEight, &[read_pipe, read_pipe], b"x");
        assert!(matches!(
            ch.send(&cmd, &mut MemfdExporter),
            Err(ChannelError::ReadPipeId(_))
        ));
        for kind in [ID_TYPE_WRITE_PIPE, 2, 5, 6, 7, u32::MAX] {
            let id = Identifier {
                id: 1,
                kind,
                size: 0,
            };
            let cmd = encode_send(IdLayout::TwentyEight, &[id], b"x");
            assert!(matches!(
                ch.send(&cmd, &mut MemfdExporter),
                Err(ChannelError::UnsupportedIdType(_))
            ));
        }
        // Identifiers without a byte to travel with.
        let cmd = encode_send(IdLayout::TwentyEight, &[blob(7)], b"");
        assert!(matches!(
            ch.send(&cmd, &mut MemfdExporter),
            Err(ChannelError::Wire(_))
        ));
        assert_eq!(ch.held(), (0, 0));
        assert!(peer_recv(&peer).0.is_empty());
    }

    #[test]
    fn layout_is_learnt_from_the_first_send_and_kept() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        assert_eq!(ch.layout(), IdLayout::TwentyEight);
        ch.send(&encode_send(IdLayout::Four, &[], b"a"), &mut MemfdExporter)
            .unwrap();
        assert_eq!(ch.layout(), IdLayout::Four);
        let mixed = encode_send(IdLayout::TwentyEight, &[], b"b");
        assert!(matches!(
            ch.send(&mixed, &mut MemfdExporter),
            Err(ChannelError::LayoutChanged { .. })
        ));
        // The compositor answers with 6 fds and 2 bytes: a 4-slot guest gets 4 ids with the
        // first byte and 2 with the second.
        let memfd = MemfdExporter.export_blob(3).unwrap();
        let fds: Vec<_> = (0..6).map(|_| memfd.as_fd()).collect();
        peer_send(&peer, b"AB", &fds);
        let first = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(first[0], crate::protocol::cross_domain::CMD_RECEIVE);
        assert_eq!(u32_at(&first, 8), 4);
        assert_eq!(&first[64..], b"AB");
        // All bytes went with the first event: the remaining 2 ids wait for more bytes.
        assert!(ch.next_event().unwrap().is_none());
        peer_send(&peer, b"C", &[]);
        let second = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(u32_at(&second, 8), 2);
        assert_eq!(&second[64..], b"C");
    }

    #[test]
    fn compositor_blobs_and_write_pipes_reach_the_guest() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let memfd = MemfdExporter.export_blob(9).unwrap();
        rustix::fs::ftruncate(&memfd, 5000).unwrap();
        let (pipe_r, pipe_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        peer_send(&peer, b"event", &[memfd.as_fd(), pipe_w.as_fd()]);
        drop(pipe_w);
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(u32_at(&ev, 8), 2);
        assert_eq!(u32_at(&ev, 12), 5);
        let (blob_id, pipe_id) = (u32_at(&ev, 16), u32_at(&ev, 20));
        assert_eq!(u32_at(&ev, 16 + 112), ID_TYPE_VIRTGPU_BLOB);
        assert_eq!(u32_at(&ev, 20 + 112), ID_TYPE_WRITE_PIPE);
        assert_eq!(u32_at(&ev, 16 + 224), 8192, "size rounded to pages");
        assert_eq!(blob_id % 2, 1, "received ids are odd");
        let got = ch.take_blob(blob_id).unwrap();
        assert_eq!(
            (got.file_size, got.kind, got.writable),
            (5000, BlobKind::Memory, true)
        );
        assert!(ch.take_blob(blob_id).is_err(), "a blob is handed out once");
        assert!(ch.take_blob(pipe_id).is_err(), "a pipe is not a blob");
        // The guest writes into the pipe, then hangs up: the reader sees the data and EOF.
        ch.write(&encode_write(pipe_id, false, b"clip")).unwrap();
        ch.write(&encode_write(pipe_id, true, b"board")).unwrap();
        let mut buf = [0u8; 32];
        let n = rustix::io::read(&pipe_r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"clipboard");
        assert_eq!(
            rustix::io::read(&pipe_r, &mut buf).unwrap(),
            0,
            "write end closed"
        );
        assert!(matches!(
            ch.write(&encode_write(pipe_id, false, b"late")),
            Err(ChannelError::UnknownItem { .. })
        ));
        assert_eq!(ch.held(), (0, 0));
    }

    #[test]
    fn read_pipes_forward_data_then_hang_up() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let id = PIPE_READ_START + 1;
        let read_pipe = Identifier {
            id,
            kind: ID_TYPE_READ_PIPE,
            size: 0,
        };
        ch.send(
            &encode_send(IdLayout::TwentyEight, &[read_pipe], b"receive"),
            &mut MemfdExporter,
        )
        .unwrap();
        let (_, mut fds) = peer_recv(&peer);
        let write_end = fds.pop().unwrap();
        rustix::io::write(&write_end, b"pasted").unwrap();
        drop(write_end);
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(ev[0], crate::protocol::cross_domain::CMD_READ);
        assert_eq!(
            (u32_at(&ev, 8), u32_at(&ev, 12), u32_at(&ev, 16)),
            (id, 0, 6)
        );
        assert_eq!(&ev[24..], b"pasted");
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(
            (u32_at(&ev, 8), u32_at(&ev, 12), u32_at(&ev, 16)),
            (id, 1, 0)
        );
        assert_eq!(ch.held(), (0, 0));
        // The id may be used again once the pipe is gone.
        ch.send(
            &encode_send(IdLayout::TwentyEight, &[read_pipe], b"again"),
            &mut MemfdExporter,
        )
        .unwrap();
    }

    #[test]
    fn read_pipes_are_bounded() {
        let limits = ChannelLimits {
            max_read_pipes: 2,
            ..ChannelLimits::default()
        };
        let (mut ch, _peer) = pair(limits);
        for i in 1..=2 {
            let id = Identifier {
                id: PIPE_READ_START + i,
                kind: ID_TYPE_READ_PIPE,
                size: 0,
            };
            ch.send(
                &encode_send(IdLayout::TwentyEight, &[id], b"r"),
                &mut MemfdExporter,
            )
            .unwrap();
        }
        let id = Identifier {
            id: PIPE_READ_START + 3,
            kind: ID_TYPE_READ_PIPE,
            size: 0,
        };
        let err = ch.send(
            &encode_send(IdLayout::TwentyEight, &[id], b"r"),
            &mut MemfdExporter,
        );
        assert!(matches!(
            err,
            Err(ChannelError::TooMany {
                what: "read pipes",
                ..
            })
        ));
    }

    #[test]
    fn a_compositor_that_does_not_read_stalls_the_channel_not_the_caller() {
        let limits = ChannelLimits {
            max_queued_bytes: 64 << 10,
            ..ChannelLimits::default()
        };
        let (mut ch, _peer) = pair(limits);
        let chunk = vec![0x55u8; IdLayout::TwentyEight.max_data()];
        let cmd = encode_send(IdLayout::TwentyEight, &[], &chunk);
        let start = std::time::Instant::now();
        let mut refused = None;
        for i in 0..10_000 {
            if let Err(e) = ch.send(&cmd, &mut MemfdExporter) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("the queue is bounded");
        assert!(matches!(e, ChannelError::Stalled { .. }), "{e}");
        assert!(i > 0, "the socket buffer took something first");
        // Not a timing target: only that the loop ended (it would hang if send blocked).
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn compositor_hang_up_is_told_once_and_sends_fail() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        peer_send(&peer, b"last words", &[]);
        drop(peer);
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(&ev[352..], b"last words");
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(
            (u32_at(&ev, 8), u32_at(&ev, 12)),
            (0, 0),
            "empty RECEIVE = hang-up"
        );
        assert!(ch.next_event().unwrap().is_none());
        assert!(ch.next_event().unwrap().is_none());
        assert!(ch.is_closed());
        let cmd = encode_send(IdLayout::TwentyEight, &[], b"x");
        assert!(matches!(
            ch.send(&cmd, &mut MemfdExporter),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn too_many_unclaimed_fds_close_the_channel() {
        let limits = ChannelLimits {
            max_items: 3,
            ..ChannelLimits::default()
        };
        let (mut ch, peer) = pair(limits);
        let memfd = MemfdExporter.export_blob(1).unwrap();
        peer_send(&peer, b"x", &[memfd.as_fd(), memfd.as_fd()]);
        assert!(ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .is_some());
        peer_send(&peer, b"y", &[memfd.as_fd(), memfd.as_fd()]);
        let err = ch.next_event().and_then(|e| match e {
            Some(_) => ch.next_event(),
            None => ch.next_event(),
        });
        assert!(matches!(err, Err(ChannelError::TooMany { .. })), "{err:?}");
        assert!(ch.is_closed());
        assert_eq!(
            ch.held().0,
            2,
            "the refused fds were closed, the claimed-later ones kept"
        );
    }

    #[test]
    fn unsupported_fds_from_the_compositor_break_the_channel_without_leaking() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let (sock, _other) =
            socketpair(AddressFamily::UNIX, SocketType::STREAM, SF::CLOEXEC, None).unwrap();
        let (pipe_r, pipe_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        // A pipe write end (fine) and a socket (not forwarded) in one message.
        peer_send(&peer, b"z", &[pipe_w.as_fd(), sock.as_fd()]);
        drop(pipe_w);
        let err = ch.next_event().and_then(|e| match e {
            Some(_) => ch.next_event(),
            None => ch.next_event(),
        });
        assert!(
            matches!(err, Err(ChannelError::UnsupportedFd(_))),
            "{err:?}"
        );
        // The channel's copy of the pipe's write end is closed: the reader sees EOF.
        let mut buf = [0u8; 4];
        assert_eq!(rustix::io::read(&pipe_r, &mut buf).unwrap(), 0);
        assert_eq!(ch.held(), (0, 0));
    }

    #[test]
    fn dropping_the_channel_closes_every_fd_it_holds() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let (pipe_r, pipe_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        peer_send(&peer, b"w", &[pipe_w.as_fd()]);
        drop(pipe_w);
        assert!(ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .is_some());
        assert_eq!(ch.held(), (1, 0));
        drop(ch);
        let mut buf = [0u8; 4];
        assert_eq!(rustix::io::read(&pipe_r, &mut buf).unwrap(), 0);
        // And the compositor sees its client go away.
        assert_eq!(peer_recv(&peer).0.len(), 0);
    }
}
