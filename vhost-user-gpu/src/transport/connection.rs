//! The connection thread: reads the frontend's messages one at a time with the `vhost`
//! crate's `BackendReqHandler` (which validates each message and calls our
//! [`crate::transport::handler::Handler`]), and can stop exactly between two messages.
//!
//! Before each message it polls the connection and a stop eventfd. `handle_request()` reads
//! one whole message (header, then body) and nothing more, so after a stop the next message
//! is still unread in the socket, for whoever serves the connection next (the same thread
//! again, or another process after a live upgrade).

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::net::{recv, recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use vhost::vhost_user::message::FrontendReq;
use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError};

use crate::transport::handler::Handler;
use crate::transport::session::{lock, Session};

/// Why [`Connection::run`] returned.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The frontend closed the connection.
    Disconnected,
    /// The frontend broke the protocol, or the socket failed.
    Failed(String),
    /// [`Stopper::stop`] asked to stop; the next message is unread.
    Stopped,
}

/// Makes a [`Connection::run`] return before its next message.
#[derive(Clone)]
pub struct Stopper(Arc<OwnedFd>);

impl Stopper {
    /// A stopper nobody has used yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Stopper(Arc::new(eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?)))
    }

    /// Asks the connection loop to stop before its next message.
    pub fn stop(&self) {
        if let Err(e) = rustix::io::write(&*self.0, &1u64.to_ne_bytes()) {
            log::error!("cannot stop the connection loop: {e}");
        }
    }

    /// Consumes a pending stop request (after acting on it, or to take it back).
    pub fn take_back(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.0, &mut buf);
    }

    /// The eventfd to poll: readable while a stop is pending.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    /// Blocks until a stop is pending, and consumes it.
    pub fn wait_stopped(&self) {
        let mut fds = [PollFd::new(&*self.0, PollFlags::IN)];
        while !matches!(poll(&mut fds, None), Ok(n) if n > 0) {}
        self.take_back();
    }
}

/// One frontend connection's message loop.
pub struct Connection {
    handler: BackendReqHandler<Mutex<Handler>>,
    session: Arc<Session>,
    /// A duplicate of the connection's fd, polled before each message.
    watch: UnixStream,
    stop: Stopper,
}

/// Whether an error from `handle_request()` leaves the stream usable: our handler refused a
/// value (the message was read whole and answered with a `REPLY_ACK` failure if asked).
fn recoverable(e: &VhostUserError) -> bool {
    matches!(
        e,
        VhostUserError::ReqHandlerError(_)
            | VhostUserError::InvalidParam
            | VhostUserError::InvalidOperation(_)
    )
}

impl Connection {
    /// Serves `stream` for `session`.
    pub fn new(stream: UnixStream, session: Arc<Session>) -> std::io::Result<Self> {
        Self::from_handler(
            BackendReqHandler::from_stream(
                stream,
                Arc::new(Mutex::new(Handler::new(session.clone()))),
            ),
            session,
        )
    }

    /// Wraps a handler that was primed elsewhere (live upgrade).
    pub fn from_handler(
        handler: BackendReqHandler<Mutex<Handler>>,
        session: Arc<Session>,
    ) -> std::io::Result<Self> {
        Ok(Connection {
            watch: handler.try_clone_connection()?,
            handler,
            session,
            stop: Stopper::new()?,
        })
    }

    /// The fd a `SET_BACKEND_REQ_FD` or `GPU_SET_SOCKET` message carries, peeked before the
    /// `vhost` crate reads the message: the crate turns it into a `Backend`/`GpuBackend` that
    /// never shows its fd, and the live upgrade must hand that fd on. A peek leaves the
    /// message (and its fd) in the socket for the crate; the kernel gives the peeker a
    /// duplicate of the fd.
    fn peek_channel_fd(&self) -> Option<(FrontendReq, OwnedFd)> {
        let mut header = [0u8; 12];
        // Without room for fds first: most messages are not these two.
        let (n, _) = recv(&self.watch, &mut header, RecvFlags::PEEK).ok()?;
        if n < 4 {
            return None;
        }
        let code = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let request = FrontendReq::try_from(code).ok()?;
        if !matches!(
            request,
            FrontendReq::SET_BACKEND_REQ_FD | FrontendReq::GPU_SET_SOCKET
        ) {
            return None;
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        recvmsg(
            &self.watch,
            &mut [IoSliceMut::new(&mut header)],
            &mut control,
            RecvFlags::PEEK | RecvFlags::CMSG_CLOEXEC,
        )
        .ok()?;
        let mut fd = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = message {
                fd = fd.or_else(|| fds.next());
            }
        }
        fd.map(|fd| (request, fd))
    }

    /// Uses `stopper` (shared with the serve loop) instead of a stopper of its own.
    pub fn with_stopper(mut self, stopper: Stopper) -> Self {
        self.stop = stopper;
        self
    }

    /// A duplicate of the connection's fd (the live upgrade hands it on).
    pub fn duplicate_fd(&self) -> std::io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.watch.try_clone()?))
    }

    /// What makes [`Connection::run`] return [`ConnectionEnd::Stopped`] before the next
    /// message.
    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// The connection's fd number (the live upgrade hands it on).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.handler.as_raw_fd()
    }

    /// Serves messages until the frontend leaves, the protocol breaks, or a stop request.
    pub fn run(&mut self) -> ConnectionEnd {
        loop {
            let mut fds = [
                PollFd::new(&self.watch, PollFlags::IN),
                PollFd::new(&*self.stop.0, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return ConnectionEnd::Failed(format!("poll: {e}")),
            }
            if !fds[1].revents().is_empty() {
                self.stop.take_back();
                return ConnectionEnd::Stopped;
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            let peeked = self.peek_channel_fd();
            match self.handler.handle_request() {
                Ok(()) => match peeked {
                    Some((FrontendReq::SET_BACKEND_REQ_FD, fd)) => {
                        *lock(&self.session.backend_channel_fd) = Some(fd);
                    }
                    Some((_, fd)) => *lock(&self.session.display_channel_fd) = Some(fd),
                    None => {}
                },
                Err(VhostUserError::Disconnected | VhostUserError::PartialMessage) => {
                    return ConnectionEnd::Disconnected
                }
                Err(e) if recoverable(&e) => {
                    log::warn!("frontend message refused: {e}");
                }
                Err(e) => return ConnectionEnd::Failed(e.to_string()),
            }
        }
    }
}
