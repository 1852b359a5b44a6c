//! A guest-side Wayland proxy over a cross-domain channel, written for the `wayland` lane
//! because no released guest proxy can be installed from the archives CI reaches (Sommelier is
//! built only inside ChromiumOS; wayland-proxy-virtwl needs OCaml packages from opam; muvm's
//! crate has X11 and PipeWire bridges, no Wayland one).
//!
//! It behaves like the published proxies: guest applications connect to it as their
//! compositor; for each one it opens a cross-domain context with a Wayland channel and passes
//! the Wayland byte stream through SEND and RECEIVE. File descriptors become identifiers the
//! way Sommelier makes them: a dma-buf of the virtio-gpu device is sent as its resource id; a
//! `wl_shm` pool (guest memory the host cannot see) is backed by a host buffer allocated
//! through the context, and each `wl_surface.commit` copies the attached buffer's rows into it
//! (one copy inside the guest, none on the host: the compositor reads the host buffer's
//! pages). Host blobs the compositor sends become fds through `RESOURCE_CREATE_BLOB`.
//!
//! The virtio-gpu side is the [`GuestChannel`] port: in the guest it is the DRM uapi
//! (CONTEXT_INIT with capset 5 and two rings, EXECBUFFER, the channel ring); in host tests it
//! is the device's own channel code talking to a real weston.

pub mod client;
pub mod protocol;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use vhost_user_gpu::protocol::cross_domain::IdLayout;

/// One cross-domain context with a Wayland channel, as seen from the guest.
pub trait GuestChannel {
    /// The identifier layout this proxy writes SENDs in (and expects RECEIVEs in).
    fn layout(&self) -> IdLayout;
    /// Submits one encoded command (SEND or WRITE).
    fn submit(&mut self, cmd: &[u8]) -> io::Result<()>;
    /// An fd that is readable when [`GuestChannel::next_event`] may have an event.
    fn event_fd(&self) -> BorrowedFd<'_>;
    /// The next event (RECEIVE or READ bytes as the host wrote them into the channel ring),
    /// or `None`; re-arms the channel poll.
    fn next_event(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// The resource id behind `fd` when it is a dma-buf of this virtio-gpu device.
    fn resource_of(&mut self, fd: BorrowedFd<'_>) -> io::Result<Option<u32>>;
    /// An fd for identifier `id` of `size` bytes from a RECEIVE.
    fn import_blob(&mut self, id: u32, size: u32) -> io::Result<OwnedFd>;
    /// A host buffer of at least `size` bytes for a `wl_shm` pool; its resource id.
    fn alloc_shm(&mut self, size: u64) -> io::Result<u32>;
    /// Writes into a buffer made by [`GuestChannel::alloc_shm`].
    fn write_resource(&mut self, resource: u32, offset: u64, data: &[u8]) -> io::Result<()>;
}

use std::path::Path;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use client::Client;

/// Makes one channel (one cross-domain context) per client.
pub type Connect = Box<dyn FnMut() -> io::Result<Box<dyn GuestChannel>>>;

/// Where the proxy records the shm buffers it copied to the host (see
/// [`Proxy::record_commits`]).
pub type CommitLog = std::rc::Rc<std::cell::RefCell<std::fs::File>>;

/// The proxy: a Wayland socket for guest applications and one [`Client`] per connection.
pub struct Proxy {
    listener: OwnedFd,
    connect: Connect,
    clients: Vec<Client>,
    commits: Option<CommitLog>,
}

impl Proxy {
    /// Listens on `path` (a Wayland socket, e.g. `$XDG_RUNTIME_DIR/wayland-0`).
    pub fn bind(path: &Path, connect: Connect) -> io::Result<Proxy> {
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&listener, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&listener, 16)?;
        Ok(Proxy {
            listener,
            connect,
            clients: Vec::new(),
            commits: None,
        })
    }

    /// Appends one line per `wl_surface.commit` of an shm buffer to `file`: the buffer's
    /// place in its pool and an FNV-1a digest of the bytes the client drew, as copied to
    /// the host buffer (`commit offset=O stride=S height=H fnv=HEX`). The `wayland` lane
    /// finds those bytes in the buffer the host compositor shows.
    pub fn record_commits(&mut self, file: std::fs::File) {
        self.commits = Some(std::rc::Rc::new(std::cell::RefCell::new(file)));
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Waits up to `timeout` for something to do and does it. A client whose channel or
    /// protocol fails is disconnected (and logged); the proxy keeps serving the others.
    pub fn turn(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
        for c in &self.clients {
            let mut client_flags = PollFlags::IN;
            if c.wants_write() {
                client_flags |= PollFlags::OUT;
            }
            fds.push(PollFd::from_borrowed_fd(c.socket(), client_flags));
            fds.push(PollFd::from_borrowed_fd(c.channel_fd(), PollFlags::IN));
        }
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let client_ready: Vec<bool> = fds[1..]
            .chunks(2)
            .map(|p| !p[0].revents().is_empty())
            .collect();
        let accept = !fds[0].revents().is_empty();
        drop(fds);
        let mut gone = Vec::new();
        for (i, client_ready) in client_ready.into_iter().enumerate() {
            let c = &mut self.clients[i];
            // The channel is asked every turn, not only when its fd woke the poll: events
            // can be ready without a new wake-up (one event per channel poll).
            let result = (|| {
                if client_ready {
                    c.client_readable()?;
                    c.flush()?;
                }
                c.channel_readable()
            })();
            if let Err(e) = result {
                log::info!("wl-proxy: client {i}: {e}");
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
        if accept {
            loop {
                match rustix::net::accept_with(
                    &self.listener,
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                ) {
                    Ok(socket) => match (self.connect)() {
                        Ok(channel) => {
                            let mut client = Client::new(socket, channel);
                            client.record_commits(self.commits.clone());
                            self.clients.push(client);
                        }
                        Err(e) => log::warn!("wl-proxy: no channel for a new client: {e}"),
                    },
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}
