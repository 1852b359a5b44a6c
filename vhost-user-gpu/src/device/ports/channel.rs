//! The host end of cross-domain channels: the connector that opens one per context, the
//! channel itself, and what crosses it (buffers from the compositor, resource fds to it).

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::device::budget::{Budget, Charge, Exceeded, Kind};
use crate::protocol::cross_domain::{ReadWrite, SendReceive};

/// Opens the host end of cross-domain channels: one connection to the host compositor per
/// context that asks for a channel in its INIT.
pub trait ChannelConnector: Send {
    /// The channel types served, as the capset's `supported_channels` mask
    /// (`1 << CHANNEL_TYPE_*`).
    fn supported_channels(&self) -> u32;
    /// A new channel of `channel_type`, whose file descriptors and queued bytes are charged
    /// to `budget` while it holds them (a charge past the budget is an error of the call
    /// that needed it, or closes the channel when the compositor caused it).
    fn connect(
        &mut self,
        channel_type: u32,
        budget: &Budget,
    ) -> Result<Box<dyn Channel>, ChannelError>;
}

/// Turns guest resource ids into fds for the compositor (the device implements it over its
/// resource table, for one SEND).
pub trait BlobExporter {
    /// A new fd for resource `resource_id`, or why not.
    fn export_blob(&mut self, resource_id: u32) -> Result<OwnedFd, String>;
}

/// The host end of one context's channel. Nothing blocks: what the compositor does not read
/// waits in bounded queues, and a guest that keeps sending into a full queue gets
/// [`ChannelError::Stalled`].
pub trait Channel: Send + std::fmt::Debug {
    /// Forwards a SEND: its bytes and one fd per identifier (resource ids through
    /// `exporter`, read pipes made here). On any error nothing is sent and nothing kept.
    fn send(
        &mut self,
        send: &SendReceive,
        exporter: &mut dyn BlobExporter,
    ) -> Result<(), ChannelError>;
    /// Forwards a WRITE into the write pipe it names.
    fn write(&mut self, write: &ReadWrite) -> Result<(), ChannelError>;
    /// The next event for the guest (the bytes of one RECEIVE or READ, at most one ring
    /// page), or `None` when nothing is ready. After the compositor hung up, one RECEIVE
    /// with no data and no identifiers says so.
    fn next_event(&mut self) -> Result<Option<Vec<u8>>, ChannelError>;
    /// Moves queued bytes to the compositor and to write pipes, as far as they take them.
    fn flush(&mut self) -> Result<(), ChannelError>;
    /// Whether the device waits for an event (a POLL fence is pending): only then does
    /// [`Channel::wait_fd`] wake for incoming data.
    fn want_events(&mut self, yes: bool) -> Result<(), ChannelError>;
    /// One fd, readable (level-triggered) while [`Channel::next_event`] (when events are
    /// wanted) or [`Channel::flush`] can make progress. Stable for the channel's life.
    fn wait_fd(&self) -> BorrowedFd<'_>;
    /// Hands over the buffer behind item `id` of an earlier RECEIVE (the guest's
    /// `RESOURCE_CREATE_BLOB`); the channel forgets it.
    fn take_blob(&mut self, id: u32) -> Result<ReceivedBlob, ChannelError>;
    /// Whether the compositor closed the connection (the guest was or will be told).
    fn is_closed(&self) -> bool;
}

/// What a buffer from the compositor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivedKind {
    /// A regular file or memfd (keymaps, shm pools).
    Memory,
    /// A dma-buf.
    Dmabuf,
}

/// A buffer the compositor handed in, waiting for the guest to make a resource of it. The
/// device judges it like its own buffers (the map advisor) before any guest mapping.
#[derive(Debug)]
pub struct ReceivedBlob {
    /// The fd.
    pub fd: OwnedFd,
    /// Size in bytes as told to the guest (the fd's size rounded up to whole pages).
    pub size: u64,
    /// Memory or dma-buf.
    pub kind: ReceivedKind,
    /// Whether a writable mapping is allowed: opened read-write and not sealed against
    /// writes (weston's keymaps are read-only).
    pub writable: bool,
    /// Its charge (one fd), released when the blob goes.
    pub charge: Charge,
}

/// Why a channel operation failed. Every variant is the guest's or the compositor's doing
/// and maps to a virtio-gpu error; none leaves an fd behind.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The compositor's socket could not be reached.
    #[error(
        "cannot connect to the Wayland compositor at {path}: {source} (is it running? set \
         --wayland-socket, or XDG_RUNTIME_DIR and WAYLAND_DISPLAY)"
    )]
    Connect {
        /// Socket path.
        path: std::path::PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A channel type this host does not serve.
    #[error("channel type {0} is not served here (only WAYLAND, 1, with a compositor socket)")]
    UnsupportedType(u32),
    /// The guest switched identifier layouts within one context.
    #[error("SEND uses {now} identifier slots but this context started with {first}")]
    LayoutChanged {
        /// Slots of the first SEND.
        first: usize,
        /// Slots of this one.
        now: usize,
    },
    /// A SEND whose identifiers have no byte to travel with (a stream socket would drop them).
    #[error("a SEND with identifiers but no data cannot carry them")]
    FdsWithoutData,
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
    #[error("read pipe id {0:#x} is not above 0x80000000 or is already in use")]
    ReadPipeId(u32),
    /// An item id the channel does not hold (or not of the right kind).
    #[error("identifier {id:#x} is not a {what} of this channel")]
    UnknownItem {
        /// Identifier.
        id: u32,
        /// What it should have been.
        what: &'static str,
    },
    /// A bound of the channel is reached.
    #[error("{what}: the limit of {limit} is reached")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// Limit.
        limit: usize,
    },
    /// The device's budget has no room for what the channel must hold.
    #[error("{what}: {kind} budget exhausted ({used} of {limit} in use)")]
    OverBudget {
        /// What needed it.
        what: &'static str,
        /// The kind of budget.
        kind: Kind,
        /// In use.
        used: u64,
        /// Limit.
        limit: u64,
    },
    /// The compositor (or a pipe reader) does not read and its queue is full.
    #[error("{what} is not reading: {queued} bytes queued, limit {limit}; the data is refused")]
    Stalled {
        /// Who.
        what: &'static str,
        /// Queued now.
        queued: usize,
        /// Limit.
        limit: usize,
    },
    /// The compositor sent an fd this device does not forward (the channel is closed).
    #[error(
        "the compositor sent an fd that is {0}; only memfds, regular files, dma-bufs and pipe \
         write ends are forwarded"
    )]
    UnsupportedFd(String),
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

impl ChannelError {
    /// The error for a charge that did not fit.
    pub fn over_budget(what: &'static str, e: Exceeded) -> Self {
        ChannelError::OverBudget {
            what,
            kind: e.kind,
            used: e.used,
            limit: e.limit,
        }
    }
}
