//! Where frontends come from, and serving them: `--socket-path` (listen), `--fd N` (an
//! inherited socket: listening, or already connected as libvirt and QEMU's conventions pass
//! it), `--keep-listening`.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use rustix::event::{poll, PollFd, PollFlags};

use crate::device::ports::{DisplaySink, RegionMapper};
use crate::device::{DeviceConfig, GpuDevice, Ports};
use crate::display::FanOut;
use crate::transport::connection::{Connection, ConnectionEnd};
use crate::transport::control::{Live, ServeControl};
use crate::transport::gate::QueueGate;
use crate::transport::session::{Session, TransportSettings};
use crate::transport::shmem::{BackendChannel, ShmemMapper};
use crate::transport::sys;
use crate::transport::worker::Worker;

/// Where the vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// Create and listen on a Unix socket at this path (`--socket-path`); a stale file there
    /// is replaced.
    Path(PathBuf),
    /// An inherited Unix socket (`--fd`): listening, or connected to the frontend.
    Fd(RawFd),
}

/// An opened socket source.
pub enum Endpoint {
    /// Accept frontends here.
    Listening(UnixListener),
    /// One frontend, already connected.
    Connected(UnixStream),
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
    /// The connection's threads cannot start.
    #[error("cannot serve the connection: {0}")]
    Serve(io::Error),
}

/// The device configuration and ports of a new connection, from the connection's region
/// mapper and display sink (the caller adds allocator, advisor, exporter and configuration).
pub type DeviceFactory = dyn Fn(Box<dyn RegionMapper>, Box<dyn DisplaySink>) -> io::Result<(DeviceConfig, Ports)>
    + Send
    + Sync;

/// Virtio features the transport adds to the device's.
///
/// `VIRTIO_F_RING_RESET`: QEMU 10's vhost-user-gpu-pci does not filter virtio-pci's transport
/// features, so the guest acks RING_RESET and QEMU passes it on in `SET_FEATURES`; an acked
/// bit that was not offered is refused. Offering it is harmless here: the Linux virtio-gpu
/// driver never resets a single queue, and frontends that filter (QEMU 11.1's generic device)
/// show it to the guest the same way QEMU 10 already does.
pub fn transport_features() -> u64 {
    1 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_F_RING_RESET
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// Protocol features offered.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::SHMEM
        // Lets a frontend add and remove single regions (ADD_MEM_REG / REM_MEM_REG) instead
        // of re-sending its whole memory table after every SHMEM_MAP/SHMEM_UNMAP; a frontend
        // that does not take it keeps sending SET_MEM_TABLE, which works as before.
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        // The one message that says "reset" rather than "pause" (QEMU 10 sends it on every
        // device reset and never on a pause; DESIGN-lifecycle.md 1.2).
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// Checks that `fd` is a Unix stream socket and takes ownership of it, as a listener when
/// it listens (`SO_ACCEPTCONN`), else as a connected frontend.
pub fn endpoint_from_fd(fd: RawFd) -> Result<Endpoint, ServeError> {
    let what = format!("fd {fd}");
    let invalid = |why: String| ServeError::Listen {
        what: what.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why),
    };
    let borrowed =
        sys::borrow_inherited(fd).ok_or_else(|| invalid("not an open file descriptor".into()))?;
    let domain = rustix::net::sockopt::socket_domain(borrowed)
        .map_err(|e| invalid(format!("not a socket ({e})")))?;
    if domain != rustix::net::AddressFamily::UNIX {
        return Err(invalid("not a Unix domain socket".into()));
    }
    let kind = rustix::net::sockopt::socket_type(borrowed)
        .map_err(|e| invalid(format!("not a socket ({e})")))?;
    if kind != rustix::net::SocketType::STREAM {
        return Err(invalid("not a stream socket".into()));
    }
    let listening =
        rustix::net::sockopt::socket_acceptconn(borrowed).map_err(|e| ServeError::Listen {
            what: what.clone(),
            source: e.into(),
        })?;
    let owned = sys::adopt_socket(borrowed);
    if listening {
        Ok(Endpoint::Listening(UnixListener::from(owned)))
    } else {
        Ok(Endpoint::Connected(UnixStream::from(owned)))
    }
}

/// Opens the socket described by `source`.
pub fn open_endpoint(source: &SocketSource) -> Result<Endpoint, ServeError> {
    match source {
        SocketSource::Path(path) => {
            let err = |source: io::Error| ServeError::Listen {
                what: path.display().to_string(),
                source,
            };
            // A stale socket file from an earlier run is replaced; anything else is not ours.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    )));
                }
                std::fs::remove_file(path).map_err(err)?;
            }
            Ok(Endpoint::Listening(UnixListener::bind(path).map_err(err)?))
        }
        SocketSource::Fd(fd) => endpoint_from_fd(*fd),
    }
}

/// A new connection's session and device (fresh, from `factory`).
pub fn new_session(
    settings: &TransportSettings,
    factory: &DeviceFactory,
) -> Result<(Arc<Session>, GpuDevice), ServeError> {
    let gate = Arc::new(QueueGate::default());
    let channel = BackendChannel::new(gate.clone());
    let mapper = Box::new(ShmemMapper::new(channel.clone(), settings.hostmem));
    let (config, ports) = factory(mapper, initial_display(settings)).map_err(ServeError::Device)?;
    let device = GpuDevice::new(config, ports);
    let features = device.features() | transport_features();
    let session = Arc::new(
        Session::new(
            settings.clone(),
            gate,
            channel,
            features,
            protocol_features(),
            device.read_config(),
        )
        .map_err(ServeError::Serve)?,
    );
    Ok((session, device))
}

/// The display sink a device starts with: the capture, if any (QEMU's display channel is
/// added when the frontend sends it).
pub fn initial_display(settings: &TransportSettings) -> Box<dyn DisplaySink> {
    let mut fan = FanOut::default();
    if let Some(capture) = &settings.capture {
        fan.push(Box::new(capture.clone()));
    }
    Box::new(fan)
}

/// Serves `connection` of `session` with `device` until the frontend leaves; a stop from
/// `control` pauses it between two messages (live upgrade) until resumed.
pub fn run_session(
    session: Arc<Session>,
    device: GpuDevice,
    connection: Connection,
    control: &ServeControl,
) -> Result<ConnectionEnd, ServeError> {
    let worker = Worker::spawn(session.clone(), device).map_err(ServeError::Serve)?;
    let mut connection = connection.with_stopper(control.stopper());
    let conn = connection.duplicate_fd().map_err(ServeError::Serve)?;
    control.set_live(Some(Arc::new(Live {
        session: session.clone(),
        worker: worker.control(),
        conn,
    })));
    let end = loop {
        match connection.run() {
            ConnectionEnd::Stopped => control.stopped_here(),
            end => break end,
        }
    };
    control.set_live(None);
    session.channel.clear();
    // Stopping the queue thread drops the device: buffers, mappings bookkeeping, display.
    drop(worker.stop());
    drop(connection);
    let leftover = Arc::strong_count(&session) - 1;
    if leftover != 0 {
        log::warn!("{leftover} reference(s) to the old session still alive after disconnect");
    }
    Ok(end)
}

/// Serves one connected frontend until it leaves; a fresh device from `factory`.
pub fn serve_connection(
    stream: UnixStream,
    settings: &TransportSettings,
    factory: &DeviceFactory,
    control: &ServeControl,
) -> Result<ConnectionEnd, ServeError> {
    let (session, device) = new_session(settings, factory)?;
    let connection = Connection::new(stream, session.clone()).map_err(ServeError::Serve)?;
    run_session(session, device, connection, control)
}

fn log_end(end: &ConnectionEnd) {
    match end {
        ConnectionEnd::Disconnected => log::info!("frontend disconnected"),
        ConnectionEnd::Failed(e) => log::warn!("connection ended with an error: {e}"),
        ConnectionEnd::Stopped => {}
    }
}

/// Waits for the next frontend on `listener`; a stop from `control` pauses the wait (live
/// upgrade) until resumed.
fn accept(listener: &UnixListener, control: &ServeControl) -> Result<UnixStream, ServeError> {
    let stopper = control.stopper();
    loop {
        let stop_fd = stopper.fd();
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(&stop_fd, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(ServeError::Listen {
                    what: "the listening socket".into(),
                    source: e.into(),
                })
            }
        }
        if !fds[1].revents().is_empty() {
            stopper.take_back();
            control.stopped_here();
            continue;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ServeError::Listen {
                    what: "the listening socket".into(),
                    source: e,
                })
            }
        }
    }
}

/// What a serve loop starts with.
pub enum Start {
    /// A socket (`--socket-path`, `--fd`).
    Endpoint(Endpoint),
    /// A connection handed over by the previous process (live upgrade), and the listening
    /// socket if there was one.
    Restored {
        /// The restored connection: session, device, primed connection (boxed: the device
        /// is large and the other variant small).
        session: Option<Box<(Arc<Session>, GpuDevice, Connection)>>,
        /// The listening socket.
        listener: Option<UnixListener>,
    },
}

/// Serves frontends: one connection, or one after another with `keep_listening` (a
/// connected `--fd` is one connection), each with a fresh device from `factory`. Returns when
/// the (last) connection ends.
pub fn serve(
    start: Start,
    keep_listening: bool,
    settings: TransportSettings,
    factory: Arc<DeviceFactory>,
    control: Arc<ServeControl>,
) -> Result<(), ServeError> {
    let listener = match start {
        Start::Endpoint(Endpoint::Connected(stream)) => {
            if keep_listening {
                log::info!(
                    "--keep-listening has no effect on a connected --fd: serving that one frontend"
                );
            }
            log::info!("frontend connected (inherited connection)");
            let end = serve_connection(stream, &settings, &*factory, &control)?;
            log_end(&end);
            return Ok(());
        }
        Start::Endpoint(Endpoint::Listening(listener)) => Some(listener),
        Start::Restored { session, listener } => {
            if let Some(restored) = session {
                let (session, device, connection) = *restored;
                let end = run_session(session, device, connection, &control)?;
                log_end(&end);
                if listener.is_none() || !keep_listening {
                    return Ok(());
                }
            }
            listener
        }
    };
    let Some(listener) = listener else {
        return Ok(());
    };
    control.set_listener(
        rustix::io::fcntl_dupfd_cloexec(&listener, 0)
            .map_err(|e| ServeError::Serve(e.into()))
            .ok(),
    );
    loop {
        let stream = accept(&listener, &control)?;
        log::info!("frontend connected");
        let end = serve_connection(stream, &settings, &*factory, &control)?;
        log_end(&end);
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

    #[test]
    fn fd_may_be_a_listening_or_a_connected_unix_stream_socket() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(matches!(
            endpoint_from_fd(listener.into_raw_fd()),
            Ok(Endpoint::Listening(_))
        ));

        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            endpoint_from_fd(a.into_raw_fd()),
            Ok(Endpoint::Connected(_))
        ));

        let datagram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let err = endpoint_from_fd(datagram.into_raw_fd()).err().unwrap();
        assert!(err.to_string().contains("not a stream socket"), "{err}");

        let file = tempfile::tempfile().unwrap();
        let err = endpoint_from_fd(file.into_raw_fd()).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");

        assert!(endpoint_from_fd(-1).is_err());
    }
}
