//! The host end of one cross-domain Wayland channel: a connection to the host compositor,
//! the tables that turn guest identifiers into file descriptors and back, and the pipes that
//! carry clipboard and drag-and-drop data.
//!
//! Nothing here blocks. The socket and the host ends of pipes are non-blocking; bytes and fds
//! for the compositor wait in a bounded queue when it does not read, and a guest that keeps
//! sending into a stalled queue gets [`ChannelError::Stalled`], never a blocked queue thread.
//! Every fd the channel holds for the guest, and every byte queued, is charged to the
//! device's budget while it is held (the charges travel with what they pay for).
//!
//! The channel keeps an epoll instance of its own ([`Channel::wait_fd`]) in which exactly
//! the fds it can make progress on are registered: the socket and read pipes while the device
//! wants events, the socket and write pipes while bytes wait for them. A registered fd is
//! removed from it before it is closed (a pipe's file description may live on in the
//! compositor, and epoll would go on reporting it).

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::fs::{FileType, OFlags, SealFlags, SeekFrom};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::device::budget::{Budget, Charge, Kind, Usage};
use crate::device::ports::{
    BlobExporter, Channel, ChannelConnector, ChannelError, ReceivedBlob, ReceivedKind,
};
use crate::protocol::cross_domain::{
    IdLayout, Identifier, ReadWrite, SendReceive, CHANNEL_TYPE_WAYLAND, ID_TYPE_READ_PIPE,
    ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE, PIPE_READ_START, READ_WRITE_SIZE, RING_PAGE_SIZE,
};

/// `DMA_BUF_MAGIC` from `linux/magic.h` (the `f_type` of a dma-buf's file system).
const DMA_BUF_MAGIC: u64 = 0x444d_4142;
/// Most fds libwayland puts in one `sendmsg` (`MAX_FDS_OUT`); more than this in one message
/// from the compositor is a broken stream (the kernel closes the ones that did not fit).
const MAX_FDS_PER_MESSAGE: usize = 28;
/// Page size for rounding blob sizes (guests create blobs of whole pages).
const PAGE: u64 = 4096;
/// Fds a channel holds from the start: the compositor connection and its epoll instance.
const CHANNEL_FDS: u64 = 2;

/// Bounds on what one channel holds for a guest, on top of the device-wide budget.
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

/// Opens one [`WaylandChannel`] per context to the compositor at a fixed socket path.
#[derive(Debug, Clone)]
pub struct WaylandConnector {
    socket: PathBuf,
    limits: ChannelLimits,
}

impl WaylandConnector {
    /// A connector for the compositor listening at `socket`.
    pub fn new(socket: PathBuf, limits: ChannelLimits) -> Self {
        WaylandConnector { socket, limits }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects once and hangs up: whether a compositor answers at the socket now.
    pub fn probe(&self) -> Result<(), ChannelError> {
        connect_socket(&self.socket).map(drop)
    }
}

impl ChannelConnector for WaylandConnector {
    fn supported_channels(&self) -> u32 {
        1 << CHANNEL_TYPE_WAYLAND
    }

    fn connect(
        &mut self,
        channel_type: u32,
        budget: &Budget,
    ) -> Result<Box<dyn Channel>, ChannelError> {
        if channel_type != CHANNEL_TYPE_WAYLAND {
            return Err(ChannelError::UnsupportedType(channel_type));
        }
        Ok(Box::new(WaylandChannel::connect(
            &self.socket,
            self.limits,
            budget,
        )?))
    }
}

fn io(what: &'static str) -> impl FnOnce(Errno) -> ChannelError {
    move |e| ChannelError::Io {
        what,
        source: e.into(),
    }
}

fn connect_socket(path: &Path) -> Result<OwnedFd, ChannelError> {
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
    // Non-blocking: a compositor whose listen backlog is full is an error (EAGAIN), not a
    // wait on the queue thread.
    rustix::net::connect(&socket, &addr).map_err(connect_error)?;
    Ok(socket)
}

/// Bytes and fds for the compositor, with what they are charged.
#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    /// Sent with the first byte of `data`; empty once that happened.
    fds: Vec<OwnedFd>,
    _charge: Charge,
}

/// Bytes for a write pipe, with what they are charged.
#[derive(Debug)]
struct Chunk {
    data: Vec<u8>,
    _charge: Charge,
}

#[derive(Debug)]
struct WritePipe {
    fd: OwnedFd,
    backlog: VecDeque<Chunk>,
    hang_up: bool,
    _charge: Charge,
}

#[derive(Debug)]
struct ReadPipe {
    fd: OwnedFd,
    _charge: Charge,
}

#[derive(Debug)]
enum Item {
    Blob(ReceivedBlob),
    WritePipe(WritePipe),
}

/// The fds registered in the channel's epoll instance, and for what.
#[derive(Debug)]
struct Registry {
    epoll: OwnedFd,
    registered: BTreeMap<RawFd, EventFlags>,
}

impl Registry {
    fn new() -> Result<Self, ChannelError> {
        Ok(Registry {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)
                .map_err(io("epoll_create1 for a channel"))?,
            registered: BTreeMap::new(),
        })
    }

    /// Registers `fd` for `flags` (nothing: not registered).
    fn set(&mut self, fd: BorrowedFd<'_>, flags: EventFlags) -> Result<(), ChannelError> {
        let raw = fd.as_raw_fd();
        let data = EventData::new_u64(raw as u64);
        match (self.registered.get(&raw).copied(), flags.is_empty()) {
            (None, true) => Ok(()),
            (Some(old), false) if old == flags => Ok(()),
            (Some(_), true) => {
                self.registered.remove(&raw);
                epoll::delete(&self.epoll, fd).map_err(io("epoll_ctl(DEL)"))
            }
            (Some(_), false) => {
                epoll::modify(&self.epoll, fd, data, flags).map_err(io("epoll_ctl(MOD)"))?;
                self.registered.insert(raw, flags);
                Ok(())
            }
            (None, false) => {
                epoll::add(&self.epoll, fd, data, flags).map_err(io("epoll_ctl(ADD)"))?;
                self.registered.insert(raw, flags);
                Ok(())
            }
        }
    }

    /// Unregisters `fd` before it is closed.
    fn forget(&mut self, fd: BorrowedFd<'_>) {
        if self.registered.remove(&fd.as_raw_fd()).is_some() {
            let _ = epoll::delete(&self.epoll, fd);
        }
    }
}

/// The host end of one context's Wayland channel.
#[derive(Debug)]
pub struct WaylandChannel {
    socket: OwnedFd,
    registry: Registry,
    limits: ChannelLimits,
    budget: Budget,
    /// The socket and the epoll instance.
    _charge: Charge,
    /// Identifier layout of the guest, learnt from its first SEND.
    layout: Option<IdLayout>,
    outgoing: VecDeque<Outgoing>,
    queued_bytes: usize,
    queued_fds: usize,
    /// Received from the compositor, not yet delivered to the guest (at most one
    /// `recvmsg`, refilled only when empty).
    incoming: Vec<u8>,
    incoming_ids: VecDeque<Identifier>,
    items: BTreeMap<u32, Item>,
    last_item_id: u32,
    read_pipes: BTreeMap<u32, ReadPipe>,
    pipe_backlog: usize,
    want_events: bool,
    /// The compositor closed its end (or the stream broke).
    hung_up: bool,
    /// The guest was told (RECEIVE with nothing in it).
    hang_up_delivered: bool,
    /// Alternates the first source `next_event` looks at.
    pipes_first: bool,
}

impl WaylandChannel {
    /// Connects to the compositor at `path` (non-blocking), charging its two fds to
    /// `budget`.
    pub fn connect(
        path: &Path,
        limits: ChannelLimits,
        budget: &Budget,
    ) -> Result<Self, ChannelError> {
        let charge = budget
            .charge(Usage::of(Kind::Fds, CHANNEL_FDS))
            .map_err(|e| ChannelError::over_budget("a compositor connection", e))?;
        let socket = connect_socket(path)?;
        Self::from_socket(socket, limits, budget, charge)
    }

    fn from_socket(
        socket: OwnedFd,
        limits: ChannelLimits,
        budget: &Budget,
        charge: Charge,
    ) -> Result<Self, ChannelError> {
        Ok(WaylandChannel {
            socket,
            registry: Registry::new()?,
            limits,
            budget: budget.clone(),
            _charge: charge,
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
            want_events: false,
            hung_up: false,
            hang_up_delivered: false,
            pipes_first: false,
        })
    }

    /// The identifier layout RECEIVEs are written in (28 slots until the guest's first SEND).
    pub fn layout(&self) -> IdLayout {
        self.layout.unwrap_or(IdLayout::TwentyEight)
    }

    /// Fds received and not yet claimed plus open write pipes, and open read pipes.
    pub fn held(&self) -> (usize, usize) {
        (self.items.len(), self.read_pipes.len())
    }

    /// Registers in the epoll instance exactly what can make progress now.
    fn rearm(&mut self) -> Result<(), ChannelError> {
        let mut socket = EventFlags::empty();
        if !self.hung_up {
            if self.want_events {
                socket |= EventFlags::IN;
            }
            if !self.outgoing.is_empty() {
                socket |= EventFlags::OUT;
            }
        }
        self.registry.set(self.socket.as_fd(), socket)?;
        let read = if self.want_events {
            EventFlags::IN
        } else {
            EventFlags::empty()
        };
        for pipe in self.read_pipes.values() {
            self.registry.set(pipe.fd.as_fd(), read)?;
        }
        for item in self.items.values() {
            if let Item::WritePipe(pipe) = item {
                let flags = if pipe.backlog.is_empty() {
                    EventFlags::empty()
                } else {
                    EventFlags::OUT
                };
                self.registry.set(pipe.fd.as_fd(), flags)?;
            }
        }
        Ok(())
    }

    fn send_inner(
        &mut self,
        send: &SendReceive,
        exporter: &mut dyn BlobExporter,
    ) -> Result<(), ChannelError> {
        if let Some(first) = self.layout {
            if first != send.layout {
                return Err(ChannelError::LayoutChanged {
                    first: first.max_ids(),
                    now: send.layout.max_ids(),
                });
            }
        }
        if self.hung_up {
            return Err(ChannelError::Closed);
        }
        if send.data.is_empty() && !send.identifiers.is_empty() {
            return Err(ChannelError::FdsWithoutData);
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
        // One fd per identifier waits in the queue; a read pipe also keeps its read end.
        let read_pipes = send
            .identifiers
            .iter()
            .filter(|i| i.kind == ID_TYPE_READ_PIPE)
            .count();
        let charge = self
            .budget
            .charge(
                Usage::host_bytes(send.data.len() as u64)
                    .with(Kind::Fds, send.identifiers.len() as u64),
            )
            .map_err(|e| ChannelError::over_budget("a SEND to the compositor", e))?;
        if read_pipes > 0 && self.read_pipes.len() + read_pipes > self.limits.max_read_pipes {
            return Err(ChannelError::TooMany {
                what: "read pipes",
                limit: self.limits.max_read_pipes,
            });
        }
        let mut fds = Vec::with_capacity(send.identifiers.len());
        let mut new_read_pipes: Vec<(u32, ReadPipe)> = Vec::new();
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
                    let read_charge = self
                        .budget
                        .charge(Usage::of(Kind::Fds, 1))
                        .map_err(|e| ChannelError::over_budget("a read pipe", e))?;
                    let (read_end, write_end) =
                        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                            .map_err(io("pipe2"))?;
                    // Only our end is non-blocking: the compositor's writer keeps its own
                    // file description as it expects.
                    rustix::fs::fcntl_setfl(&read_end, OFlags::NONBLOCK)
                        .map_err(io("fcntl(F_SETFL) on a read pipe"))?;
                    new_read_pipes.push((
                        id,
                        ReadPipe {
                            fd: read_end,
                            _charge: read_charge,
                        },
                    ));
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
            data: send.data.clone(),
            fds,
            _charge: charge,
        });
        self.flush_inner()
    }

    fn flush_inner(&mut self) -> Result<(), ChannelError> {
        while let Some(front) = self.outgoing.front_mut() {
            if front.data.is_empty() {
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
            while let Some(chunk) = pipe.backlog.front_mut() {
                match rustix::io::write(&pipe.fd, &chunk.data) {
                    Ok(n) => {
                        chunk.data.drain(..n);
                        self.pipe_backlog -= n;
                        if chunk.data.is_empty() {
                            pipe.backlog.pop_front();
                        }
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => break,
                    Err(e) => {
                        // The reader went away: drop what is left, close the pipe.
                        log::debug!("write pipe {id:#x}: {e}; closing it");
                        let left: usize = pipe.backlog.iter().map(|c| c.data.len()).sum();
                        self.pipe_backlog -= left;
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
            self.remove_item(id);
        }
    }

    /// Removes an item, unregistering its fd first.
    fn remove_item(&mut self, id: u32) -> Option<Item> {
        let item = self.items.remove(&id)?;
        if let Item::WritePipe(pipe) = &item {
            self.registry.forget(pipe.fd.as_fd());
        }
        Some(item)
    }

    fn write_inner(&mut self, write: &ReadWrite) -> Result<(), ChannelError> {
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
        if !write.data.is_empty() {
            let charge = self
                .budget
                .charge(Usage::host_bytes(write.data.len() as u64))
                .map_err(|e| ChannelError::over_budget("a WRITE to a pipe", e))?;
            pipe.backlog.push_back(Chunk {
                data: write.data.clone(),
                _charge: charge,
            });
            self.pipe_backlog += write.data.len();
        }
        pipe.hang_up |= write.hang_up;
        self.flush_pipes();
        Ok(())
    }

    fn next_event_inner(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        self.pipes_first = !self.pipes_first;
        if self.pipes_first {
            if let Some(event) = self.next_pipe_event() {
                return Ok(Some(event));
            }
            self.next_socket_event()
        } else {
            if let Some(event) = self.next_socket_event()? {
                return Ok(Some(event));
            }
            Ok(self.next_pipe_event())
        }
    }

    fn next_socket_event(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.incoming.is_empty() && !self.hung_up {
            if let Err(e) = self.receive() {
                // A broken stream cannot be resynchronised: tell the guest it is closed.
                self.hung_up = true;
                self.incoming.clear();
                self.drop_incoming_ids();
                log::debug!("compositor connection closed: {e}");
                if !matches!(e, ChannelError::Closed) {
                    return Err(e);
                }
            }
        }
        let layout = self.layout();
        if !self.incoming.is_empty() {
            let n = self.incoming.len().min(layout.max_data());
            let take = self.incoming_ids.len().min(layout.max_ids());
            let event = SendReceive {
                layout,
                identifiers: self.incoming_ids.drain(..take).collect(),
                data: self.incoming.drain(..n).collect(),
            };
            return Ok(Some(event.receive_bytes()));
        }
        if self.hung_up && !self.hang_up_delivered {
            // Identifiers that never got bytes to travel with are dropped with their items.
            self.drop_incoming_ids();
            self.hang_up_delivered = true;
            let closed = SendReceive {
                layout,
                identifiers: Vec::new(),
                data: Vec::new(),
            };
            return Ok(Some(closed.receive_bytes()));
        }
        Ok(None)
    }

    fn drop_incoming_ids(&mut self) {
        while let Some(ident) = self.incoming_ids.pop_front() {
            self.remove_item(ident.id);
        }
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
            return Err(ChannelError::TooMany {
                what: "fds in one message from the compositor",
                limit: MAX_FDS_PER_MESSAGE,
            });
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
        let mut received = Vec::with_capacity(fds.len());
        for fd in fds {
            let charge = self
                .budget
                .charge(Usage::of(Kind::Fds, 1))
                .map_err(|e| ChannelError::over_budget("an fd from the compositor", e))?;
            received.push(classify(fd, charge)?);
        }
        for (kind, size, item) in received {
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

    fn next_pipe_event(&mut self) -> Option<Vec<u8>> {
        let max = RING_PAGE_SIZE - READ_WRITE_SIZE;
        let mut buf = vec![0u8; max];
        let mut finished = None;
        let mut event = None;
        for (&id, pipe) in &self.read_pipes {
            let read = |data: &[u8], hang_up| {
                ReadWrite {
                    identifier: id,
                    hang_up,
                    data: data.to_vec(),
                }
                .read_bytes()
            };
            match rustix::io::read(&pipe.fd, &mut buf) {
                Ok(0) => {
                    finished = Some(id);
                    event = Some(read(&[], true));
                    break;
                }
                Ok(n) => {
                    event = Some(read(&buf[..n], false));
                    break;
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                Err(e) => {
                    log::debug!("read pipe {id:#x}: {e}; closing it");
                    finished = Some(id);
                    event = Some(read(&[], true));
                    break;
                }
            }
        }
        if let Some(id) = finished {
            if let Some(pipe) = self.read_pipes.remove(&id) {
                self.registry.forget(pipe.fd.as_fd());
            }
        }
        event
    }

    fn take_blob_inner(&mut self, id: u32) -> Result<ReceivedBlob, ChannelError> {
        if !matches!(self.items.get(&id), Some(Item::Blob(_)))
            || self.incoming_ids.iter().any(|i| i.id == id)
        {
            return Err(ChannelError::UnknownItem {
                id,
                what: "blob received from the compositor",
            });
        }
        match self.remove_item(id) {
            Some(Item::Blob(blob)) => Ok(blob),
            _ => unreachable!("checked just above"),
        }
    }

    /// Runs `op`, then registers what can make progress afterwards.
    fn rearm_after<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, ChannelError>,
    ) -> Result<T, ChannelError> {
        let result = op(self);
        let rearmed = self.rearm();
        let value = result?;
        rearmed?;
        Ok(value)
    }
}

impl Channel for WaylandChannel {
    fn send(
        &mut self,
        send: &SendReceive,
        exporter: &mut dyn BlobExporter,
    ) -> Result<(), ChannelError> {
        self.rearm_after(|ch| ch.send_inner(send, exporter))
    }

    fn write(&mut self, write: &ReadWrite) -> Result<(), ChannelError> {
        self.rearm_after(|ch| ch.write_inner(write))
    }

    fn next_event(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        self.rearm_after(Self::next_event_inner)
    }

    fn flush(&mut self) -> Result<(), ChannelError> {
        self.rearm_after(Self::flush_inner)
    }

    fn want_events(&mut self, yes: bool) -> Result<(), ChannelError> {
        self.want_events = yes;
        self.rearm()
    }

    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.registry.epoll.as_fd()
    }

    fn take_blob(&mut self, id: u32) -> Result<ReceivedBlob, ChannelError> {
        self.take_blob_inner(id)
    }

    fn is_closed(&self) -> bool {
        self.hung_up
    }
}

/// What an fd from the compositor is: (identifier type, size for the guest, item).
fn classify(fd: OwnedFd, charge: Charge) -> Result<(u32, u32, Item), ChannelError> {
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
                    backlog: VecDeque::new(),
                    hang_up: false,
                    _charge: charge,
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
            blob(
                fd,
                stat.st_size as u64,
                ReceivedKind::Memory,
                writable,
                charge,
            )
        }
        other => {
            let fs = rustix::fs::fstatfs(&fd).map_err(io("fstatfs"))?;
            if fs.f_type as u64 == DMA_BUF_MAGIC {
                let size =
                    rustix::fs::seek(&fd, SeekFrom::End(0)).map_err(io("lseek on a dma-buf"))?;
                let _ = rustix::fs::seek(&fd, SeekFrom::Start(0));
                blob(
                    fd,
                    size,
                    ReceivedKind::Dmabuf,
                    access == OFlags::RDWR,
                    charge,
                )
            } else {
                Err(ChannelError::UnsupportedFd(format!("of type {other:?}")))
            }
        }
    }
}

fn blob(
    fd: OwnedFd,
    file_size: u64,
    kind: ReceivedKind,
    writable: bool,
    charge: Charge,
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
            kind,
            writable,
            charge,
        }),
    ))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::cross_domain::{CMD_READ, CMD_RECEIVE};
    use rustix::net::{socketpair, SocketFlags as SF};

    fn encode_send(layout: IdLayout, ids: &[Identifier], data: &[u8]) -> SendReceive {
        SendReceive {
            layout,
            identifiers: ids.to_vec(),
            data: data.to_vec(),
        }
    }

    fn encode_write(identifier: u32, hang_up: bool, data: &[u8]) -> ReadWrite {
        ReadWrite {
            identifier,
            hang_up,
            data: data.to_vec(),
        }
    }

    fn budget() -> Budget {
        Budget::new(Usage::host_bytes(64 << 20).with(Kind::Fds, 1000))
    }

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
        pair_in(limits, &budget())
    }

    fn pair_in(limits: ChannelLimits, budget: &Budget) -> (WaylandChannel, OwnedFd) {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SF::CLOEXEC | SF::NONBLOCK,
            None,
        )
        .unwrap();
        let charge = budget.charge(Usage::of(Kind::Fds, CHANNEL_FDS)).unwrap();
        (
            WaylandChannel::from_socket(a, limits, budget, charge).unwrap(),
            b,
        )
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
            Err(ChannelError::FdsWithoutData)
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
        assert_eq!(first[0], CMD_RECEIVE);
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
            (got.size, got.kind, got.writable),
            (8192, ReceivedKind::Memory, true)
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
        assert_eq!(ev[0], CMD_READ);
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
    fn a_write_pipe_reader_that_does_not_read_is_bounded_and_charged() {
        let limits = ChannelLimits {
            max_pipe_backlog: 256 << 10,
            ..ChannelLimits::default()
        };
        let budget = budget();
        let (mut ch, peer) = pair_in(limits, &budget);
        let (pipe_r, pipe_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        peer_send(&peer, b"event", &[pipe_w.as_fd()]);
        drop(pipe_w);
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        let pipe_id = u32_at(&ev, 16);
        // Nobody reads `pipe_r`: after the kernel's pipe buffer the bytes wait here.
        let chunk = vec![0x33u8; 4096];
        let mut refused = None;
        for i in 0..10_000 {
            if let Err(e) = ch.write(&encode_write(pipe_id, false, &chunk)) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("the backlog is bounded");
        assert!(matches!(e, ChannelError::Stalled { .. }), "{e}");
        assert!(
            i * chunk.len() > 256 << 10,
            "the pipe took something first ({i})"
        );
        let waiting = budget.used().get(Kind::HostBytes);
        assert!(
            waiting > (256 << 10) - chunk.len() as u64 && waiting <= 256 << 10,
            "what waits is charged as host bytes: {waiting}"
        );
        drop(ch);
        assert!(budget.used().is_zero(), "{:?}", budget.used());
        drop((peer, pipe_r));
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

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    #[test]
    fn wait_fd_wakes_for_data_only_while_events_are_wanted() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        assert!(!readable(ch.wait_fd()));
        peer_send(&peer, b"hello", &[]);
        assert!(!readable(ch.wait_fd()), "no POLL pending: no wake-up");
        ch.want_events(true).unwrap();
        assert!(readable(ch.wait_fd()));
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap());
        assert_eq!(&ev.unwrap()[352..], b"hello");
        assert!(!readable(ch.wait_fd()), "drained");
        ch.want_events(false).unwrap();
        peer_send(&peer, b"more", &[]);
        assert!(!readable(ch.wait_fd()));
    }

    #[test]
    fn wait_fd_wakes_when_a_stalled_compositor_reads_again() {
        let limits = ChannelLimits {
            max_queued_bytes: 8 << 20,
            ..ChannelLimits::default()
        };
        let (mut ch, peer) = pair(limits);
        let chunk = vec![7u8; IdLayout::TwentyEight.max_data()];
        let cmd = encode_send(IdLayout::TwentyEight, &[], &chunk);
        while ch.outgoing.is_empty() {
            ch.send(&cmd, &mut MemfdExporter).unwrap();
        }
        // The socket buffer is full: nothing to do until the compositor reads.
        assert!(!readable(ch.wait_fd()));
        let mut sink = vec![0u8; 1 << 20];
        while rustix::io::read(&peer, &mut sink).is_ok() {}
        assert!(readable(ch.wait_fd()), "socket writable again");
        ch.flush().unwrap();
        while rustix::io::read(&peer, &mut sink).is_ok() {}
        ch.flush().unwrap();
        assert!(ch.outgoing.is_empty());
        assert!(!readable(ch.wait_fd()));
    }

    #[test]
    fn write_pipe_closed_here_but_open_in_the_compositor_does_not_wake() {
        let (mut ch, peer) = pair(ChannelLimits::default());
        let (pipe_r, pipe_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        peer_send(&peer, b"w", &[pipe_w.as_fd()]);
        // The compositor keeps its copy of the write end open.
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        let pipe_id = u32_at(&ev, 16);
        // A write that cannot finish at once would register the pipe for OUT; this one
        // finishes and hangs up: the pipe is gone, and so is its registration.
        ch.write(&encode_write(pipe_id, true, b"x")).unwrap();
        assert_eq!(ch.held(), (0, 0));
        assert!(
            !readable(ch.wait_fd()),
            "a pipe writable in the compositor is no concern of ours"
        );
        let mut buf = [0u8; 4];
        assert_eq!(rustix::io::read(&pipe_r, &mut buf).unwrap(), 1);
        drop(pipe_w);
    }

    #[test]
    fn every_fd_and_byte_held_is_charged_and_released() {
        let budget = budget();
        let (mut ch, peer) = pair_in(ChannelLimits::default(), &budget);
        assert_eq!(budget.used().get(Kind::Fds), CHANNEL_FDS);
        // Two fds from the compositor, unclaimed: charged.
        let memfd = MemfdExporter.export_blob(1).unwrap();
        peer_send(&peer, b"x", &[memfd.as_fd(), memfd.as_fd()]);
        let ev = ch
            .next_event()
            .unwrap()
            .or_else(|| ch.next_event().unwrap())
            .unwrap();
        assert_eq!(budget.used().get(Kind::Fds), CHANNEL_FDS + 2);
        // A claimed blob carries its charge out; dropping it releases it.
        let blob = ch.take_blob(u32_at(&ev, 16)).unwrap();
        assert_eq!(budget.used().get(Kind::Fds), CHANNEL_FDS + 2);
        drop(blob);
        assert_eq!(budget.used().get(Kind::Fds), CHANNEL_FDS + 1);
        // A read pipe holds its read end; queued bytes while the compositor does not read.
        let read_pipe = Identifier {
            id: PIPE_READ_START + 1,
            kind: ID_TYPE_READ_PIPE,
            size: 0,
        };
        ch.send(
            &encode_send(IdLayout::TwentyEight, &[read_pipe], b"r"),
            &mut MemfdExporter,
        )
        .unwrap();
        assert_eq!(budget.used().get(Kind::Fds), CHANNEL_FDS + 2);
        assert_eq!(budget.used().get(Kind::HostBytes), 0, "sent at once");
        drop(ch);
        assert!(budget.used().is_zero(), "{:?}", budget.used());
        drop(peer);
    }

    #[test]
    fn a_full_fd_budget_refuses_sends_and_closes_a_flooding_compositor() {
        let budget = Budget::new(Usage::host_bytes(1 << 20).with(Kind::Fds, CHANNEL_FDS + 1));
        let (mut ch, peer) = pair_in(ChannelLimits::default(), &budget);
        let cmd = encode_send(IdLayout::TwentyEight, &[blob(7), blob(8)], b"two");
        assert!(matches!(
            ch.send(&cmd, &mut MemfdExporter),
            Err(ChannelError::OverBudget {
                kind: Kind::Fds,
                ..
            })
        ));
        assert!(peer_recv(&peer).0.is_empty(), "nothing half-sent");
        let memfd = MemfdExporter.export_blob(1).unwrap();
        peer_send(&peer, b"y", &[memfd.as_fd(), memfd.as_fd()]);
        let err = ch.next_event().and_then(|e| match e {
            Some(_) => ch.next_event(),
            None => ch.next_event(),
        });
        assert!(
            matches!(err, Err(ChannelError::OverBudget { .. })),
            "{err:?}"
        );
        assert!(ch.is_closed());
        assert_eq!(
            budget.used().get(Kind::Fds),
            CHANNEL_FDS,
            "the refused fds were closed"
        );
        // The guest is told once.
        let ev = ch.next_event().unwrap().unwrap();
        assert_eq!((u32_at(&ev, 8), u32_at(&ev, 12)), (0, 0));
    }

    #[test]
    fn a_connection_is_charged_before_it_is_made() {
        let budget = Budget::new(Usage::of(Kind::Fds, 1));
        let err = WaylandChannel::connect(
            Path::new("/nonexistent/wayland-0"),
            ChannelLimits::default(),
            &budget,
        )
        .unwrap_err();
        assert!(matches!(err, ChannelError::OverBudget { .. }), "{err}");
        let budget = Budget::new(Usage::of(Kind::Fds, 2));
        let err = WaylandChannel::connect(
            Path::new("/nonexistent/wayland-0"),
            ChannelLimits::default(),
            &budget,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--wayland-socket"), "{err}");
        assert!(budget.used().is_zero());
    }
}
