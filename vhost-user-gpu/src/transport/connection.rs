//! The connection thread: reads the frontend's messages one at a time with the `vhost`
//! crate's `BackendReqHandler` (which validates each message and calls our
//! [`crate::transport::handler::Handler`]), and can stop exactly between two messages.
//!
//! Before each message it polls the connection and a stop eventfd. `handle_request()` reads
//! one whole message (header, then body) and nothing more, so after a stop the next message
//! is still unread in the socket, for whoever serves the connection next (the same thread
//! again, or another process after a live upgrade).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError};

use crate::transport::handler::Handler;

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
    fn new() -> std::io::Result<Self> {
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

    fn consume(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.0, &mut buf);
    }
}

/// One frontend connection's message loop.
pub struct Connection {
    handler: BackendReqHandler<Mutex<Handler>>,
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
    /// Serves `stream` with `handler`.
    pub fn new(stream: UnixStream, handler: Handler) -> std::io::Result<Self> {
        Self::from_handler(BackendReqHandler::from_stream(
            stream,
            Arc::new(Mutex::new(handler)),
        ))
    }

    /// Wraps a handler that was primed elsewhere (live upgrade).
    pub fn from_handler(handler: BackendReqHandler<Mutex<Handler>>) -> std::io::Result<Self> {
        Ok(Connection {
            watch: handler.try_clone_connection()?,
            handler,
            stop: Stopper::new()?,
        })
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
                self.stop.consume();
                return ConnectionEnd::Stopped;
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match self.handler.handle_request() {
                Ok(()) => {}
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
