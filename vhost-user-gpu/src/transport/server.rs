//! Listening for frontends and serving connections.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::transport::backend::{DeviceFactory, GpuBackend, TransportSettings, EVENT_DEVICE};
use crate::transport::sys::{self, ExitEvent};

/// Where the vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// Create and listen on a Unix socket at this path (`--socket-path`); a stale file there
    /// is replaced.
    Path(PathBuf),
    /// An inherited, already listening Unix socket (`--fd`).
    ListeningFd(RawFd),
}

/// Start-up and serving errors.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket cannot be created or used.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The socket path or fd.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// The device for a new connection cannot be created.
    #[error("cannot create the device: {0}")]
    Device(io::Error),
    /// The vhost-user daemon failed.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

/// Checks that `fd` is a listening Unix stream socket and takes ownership of it.
pub fn listener_from_fd(fd: RawFd) -> Result<Listener, ServeError> {
    let what = format!("fd {fd}");
    let Some(borrowed) = sys::borrow_inherited(fd) else {
        return Err(ServeError::Listen {
            what,
            source: io::Error::new(io::ErrorKind::InvalidInput, "not an open file descriptor"),
        });
    };
    let domain = rustix::net::sockopt::socket_domain(borrowed).map_err(|e| ServeError::Listen {
        what: what.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, format!("not a socket ({e})")),
    })?;
    if domain != rustix::net::AddressFamily::UNIX {
        return Err(ServeError::Listen {
            what,
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a Unix domain socket"),
        });
    }
    let listening =
        rustix::net::sockopt::socket_acceptconn(borrowed).map_err(|e| ServeError::Listen {
            what: what.clone(),
            source: e.into(),
        })?;
    if !listening {
        return Err(ServeError::Listen {
            what,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "a connected socket was given; --fd needs a listening socket (use --socket-path otherwise)",
            ),
        });
    }
    Ok(sys::adopt_listener(borrowed))
}

/// Opens the socket described by `source`.
pub fn open_listener(source: &SocketSource) -> Result<Listener, ServeError> {
    match source {
        SocketSource::Path(path) => Listener::new(path, true).map_err(|e| ServeError::Listen {
            what: path.display().to_string(),
            source: io::Error::other(e.to_string()),
        }),
        SocketSource::ListeningFd(fd) => listener_from_fd(*fd),
    }
}

/// Serves frontends on `listener`: one connection, or one after another with
/// `keep_listening`, each with a fresh device from `factory`. Returns when the (last)
/// connection ends.
pub fn serve(
    mut listener: Listener,
    keep_listening: bool,
    settings: TransportSettings,
    factory: Arc<DeviceFactory>,
) -> Result<(), ServeError> {
    let exit = Arc::new(ExitEvent::new().map_err(ServeError::Device)?);
    loop {
        exit.rearm();
        let backend = GpuBackend::new(settings.clone(), &*factory, exit.clone());
        let backend = Arc::new(backend.map_err(ServeError::Device)?);
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon =
            VhostUserDaemon::new("vhost-user-gpu".to_string(), backend.clone(), memory)
                .map_err(|e| ServeError::Daemon(e.to_string()))?;
        // The device's event fd (fenced answers that wait) is served by the queue worker.
        if let Some(fd) = backend.device_event_fd() {
            let worker = daemon.get_epoll_handlers();
            let registered = worker
                .first()
                .map(|w| w.register_listener(fd, EventSet::IN, u64::from(EVENT_DEVICE)));
            match registered {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(ServeError::Device(e)),
                None => {
                    return Err(ServeError::Daemon(
                        "the vhost-user daemon has no queue worker".into(),
                    ))
                }
            }
        }
        daemon
            .start(&mut listener)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        log::info!("frontend connected");
        let result = daemon.wait();
        backend.disconnect();
        // Dropping the daemon stops and joins the queue worker; then the backend (device,
        // buffers, mappings bookkeeping, display channel) is the last reference and goes.
        drop(daemon);
        match result {
            Ok(()) => log::info!("frontend disconnected"),
            Err(DaemonError::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => {
                log::info!("frontend disconnected")
            }
            Err(e) => log::warn!("connection ended with an error: {e}"),
        }
        let leftover = Arc::strong_count(&backend) - 1;
        if leftover != 0 {
            log::warn!("{leftover} reference(s) to the old device still alive after disconnect");
        }
        drop(backend);
        if !keep_listening {
            return Ok(());
        }
        log::info!("waiting for the next frontend (--keep-listening)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn fd_must_be_a_listening_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(listener_from_fd(listener.into_raw_fd()).is_ok());

        let (a, _b) = UnixStream::pair().unwrap();
        let err = listener_from_fd(a.into_raw_fd()).err().unwrap();
        assert!(err.to_string().contains("connected socket"), "{err}");

        let file = tempfile::tempfile().unwrap();
        let err = listener_from_fd(file.into_raw_fd()).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");

        assert!(listener_from_fd(-1).is_err());
    }
}
