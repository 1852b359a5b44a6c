//! Errors of the test frontend.

use std::io;

/// Everything that can go wrong while driving a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend program could not be started.
    #[error("cannot start backend {program}: {source}")]
    Spawn {
        /// The program that was started.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The backend never created its socket.
    #[error("backend {0} did not create its socket in time (is it the right program and flags?)")]
    SocketTimeout(String),
    /// The backend exited while the frontend was waiting for it.
    #[error("backend exited early with {0}")]
    BackendExited(std::process::ExitStatus),
    /// A vhost-user request failed.
    #[error("vhost-user {what} failed: {source}")]
    VhostUser {
        /// The request that failed.
        what: &'static str,
        /// The error from the vhost crate.
        source: vhost::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Guest memory is exhausted or an access fell outside guest RAM.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// The virtqueue has no free descriptors or a chain is malformed.
    #[error("virtqueue: {0}")]
    Queue(String),
    /// The backend closed the vhost-user connection (it exited or crashed) while a used
    /// buffer was awaited.
    #[error("the backend closed the vhost-user connection (exited or crashed) while a used buffer was awaited on queue {0}")]
    BackendGone(usize),
    /// The backend did not return a used buffer in time.
    #[error("timed out waiting for the backend to return a used buffer on queue {0}")]
    UsedTimeout(usize),
    /// The backend does not offer something the caller asked for.
    #[error("backend does not support {0}")]
    Unsupported(&'static str),
    /// A reply from the backend was malformed.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// A live upgrade of the backend did not happen (the old process goes on serving).
    #[error("live upgrade: {0}")]
    Upgrade(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
    pub(crate) fn vhost(what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
        move |source| Error::VhostUser { what, source }
    }
}
