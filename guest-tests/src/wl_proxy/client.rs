//! One proxied client: its socket, its cross-domain channel, and what the proxy must know
//! about its objects (interfaces, shm pools, buffers, surfaces).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use vhost_user_gpu::protocol::cross_domain::{
    decode_event, ChannelEvent, CrossDomainCommand, Identifier, SendReceive, ID_TYPE_VIRTGPU_BLOB,
    ID_TYPE_WRITE_PIPE,
};

use super::protocol::{self, GLOBALS};
use super::GuestChannel;

/// Largest Wayland message (libwayland's limit).
const MAX_MESSAGE: usize = 4096;
/// Most fds in one `sendmsg`/`recvmsg` (libwayland's `MAX_FDS_OUT`).
const MAX_FDS: usize = 28;
/// Bytes queued for a client that does not read, before it is dropped.
const MAX_CLIENT_BACKLOG: usize = 4 << 20;
const PAGE: u64 = 4096;

/// Why a client was disconnected.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client broke the protocol (or used something the proxy does not carry).
    #[error("client protocol error: {0}")]
    Protocol(String),
    /// The channel or a socket failed.
    #[error("{what}: {source}")]
    Io {
        /// Operation.
        what: &'static str,
        /// Error.
        source: std::io::Error,
    },
    /// The client or the host compositor closed the connection.
    #[error("connection closed by the {0}")]
    Closed(&'static str),
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// An shm pool; buffers keep it alive after the client destroyed it (as in Wayland).
#[derive(Debug)]
struct Pool {
    fd: OwnedFd,
    size: Cell<u64>,
    host_size: u64,
    resource: u32,
}

#[derive(Debug, Clone)]
struct ShmBuffer {
    pool: Rc<Pool>,
    offset: u64,
    stride: u64,
    height: u64,
}

/// What the proxy knows of one client.
pub struct Client {
    socket: OwnedFd,
    channel: Box<dyn GuestChannel>,
    objects: HashMap<u32, &'static str>,
    /// Globals shown to the client: name -> (interface, version offered).
    globals: HashMap<u32, (&'static str, u32)>,
    pools: HashMap<u32, Rc<Pool>>,
    buffers: HashMap<u32, ShmBuffer>,
    /// Surface -> attached shm buffer (0: none).
    attached: HashMap<u32, u32>,
    from_client: Vec<u8>,
    client_fds: VecDeque<OwnedFd>,
    from_host: Vec<u8>,
    host_fds: VecDeque<OwnedFd>,
    to_client: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    backlog: usize,
    commits: Option<super::CommitLog>,
}

impl Client {
    /// A client on `socket` (non-blocking) with its own channel.
    pub fn new(socket: OwnedFd, channel: Box<dyn GuestChannel>) -> Client {
        let mut objects = HashMap::new();
        objects.insert(1, "wl_display");
        Client {
            socket,
            channel,
            objects,
            globals: HashMap::new(),
            pools: HashMap::new(),
            buffers: HashMap::new(),
            attached: HashMap::new(),
            from_client: Vec::new(),
            client_fds: VecDeque::new(),
            from_host: Vec::new(),
            host_fds: VecDeque::new(),
            to_client: VecDeque::new(),
            backlog: 0,
            commits: None,
        }
    }

    /// Where to record the shm buffers copied at commits (see
    /// [`super::Proxy::record_commits`]).
    pub fn record_commits(&mut self, log: Option<super::CommitLog>) {
        self.commits = log;
    }

    /// The client's socket (poll it for reading; for writing while [`Client::wants_write`]).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The channel's event fd.
    pub fn channel_fd(&self) -> BorrowedFd<'_> {
        self.channel.event_fd()
    }

    /// Whether bytes wait for the client.
    pub fn wants_write(&self) -> bool {
        !self.to_client.is_empty()
    }

    /// Reads what the client sent and forwards whole requests to the host.
    pub fn client_readable(&mut self) -> Result<(), ClientError> {
        loop {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let n = match rustix::net::recvmsg(
                &self.socket,
                &mut iov,
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg.bytes,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_err("recvmsg from the client")(e.into())),
            };
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    self.client_fds.extend(fds);
                }
            }
            if n == 0 {
                return Err(ClientError::Closed("client"));
            }
            self.from_client.extend_from_slice(&buf[..n]);
        }
        self.forward_requests()
    }

    fn forward_requests(&mut self) -> Result<(), ClientError> {
        let layout = self.channel.layout();
        let mut data = Vec::new();
        let mut ids: Vec<Identifier> = Vec::new();
        let mut consumed = 0;
        while let Some((object, opcode, size)) = protocol::header(&self.from_client[consumed..]) {
            if !(8..=MAX_MESSAGE).contains(&size) || !size.is_multiple_of(4) {
                return Err(ClientError::Protocol(format!("message size {size}")));
            }
            if self.from_client.len() - consumed < size {
                break;
            }
            let iface_name = *self.objects.get(&object).ok_or_else(|| {
                ClientError::Protocol(format!("request to unknown object {object}"))
            })?;
            let iface =
                protocol::interface(iface_name).expect("objects only hold known interfaces");
            let sig = iface.requests.get(usize::from(opcode)).ok_or_else(|| {
                ClientError::Protocol(format!("{iface_name} has no request {opcode}"))
            })?;
            let msg = self.from_client[consumed..consumed + size].to_vec();
            let walked = protocol::walk(sig, &msg[8..]).ok_or_else(|| {
                ClientError::Protocol(format!("{iface_name}.{opcode}: arguments do not fit"))
            })?;
            if self.client_fds.len() < walked.fds {
                break; // The fds are on their way.
            }
            let fds: Vec<OwnedFd> = self.client_fds.drain(..walked.fds).collect();
            if ids.len() + walked.fds > layout.max_ids() || data.len() + size > layout.max_data() {
                self.submit_send(&data, &ids)?;
                data.clear();
                ids.clear();
            }
            self.request(object, iface_name, opcode, &walked, fds, &mut ids)?;
            for (id, name) in &walked.new_objects {
                let known = protocol::interface(name).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "binding {name}, which this proxy does not carry"
                    ))
                })?;
                self.objects.insert(*id, known.name);
            }
            data.extend_from_slice(&msg);
            consumed += size;
        }
        self.from_client.drain(..consumed);
        if !data.is_empty() {
            self.submit_send(&data, &ids)?;
        }
        Ok(())
    }

    fn submit_send(&mut self, data: &[u8], ids: &[Identifier]) -> Result<(), ClientError> {
        let cmd = CrossDomainCommand::Send(SendReceive {
            layout: self.channel.layout(),
            identifiers: ids.to_vec(),
            data: data.to_vec(),
        });
        self.channel.submit(&cmd.to_bytes()).map_err(io_err("SEND"))
    }

    /// The proxy's own part of a request: fds become identifiers, shm is shadowed.
    fn request(
        &mut self,
        object: u32,
        iface: &'static str,
        opcode: u16,
        walked: &protocol::Walked,
        mut fds: Vec<OwnedFd>,
        ids: &mut Vec<Identifier>,
    ) -> Result<(), ClientError> {
        match (iface, opcode) {
            ("wl_registry", 0) => {
                let name = walked.words[0];
                let (_, interface) = &walked.new_objects[0];
                let offered = self.globals.get(&name);
                if offered.map(|(i, _)| *i) != Some(interface.as_str())
                    || offered.is_some_and(|(_, v)| walked.words[1] > *v)
                {
                    return Err(ClientError::Protocol(format!(
                        "bind of global {name} as {interface} v{}: not offered",
                        walked.words[1]
                    )));
                }
            }
            ("wl_shm", 0) => {
                let fd = fds.pop().expect("signature has one fd");
                let size = u64::from(walked.words[0]);
                if size == 0 || size > (1 << 30) {
                    return Err(ClientError::Protocol(format!(
                        "wl_shm pool of {size} bytes"
                    )));
                }
                let host_size = size.div_ceil(PAGE) * PAGE;
                let resource = self
                    .channel
                    .alloc_shm(host_size)
                    .map_err(io_err("host buffer for a wl_shm pool"))?;
                let (pool, _) = walked.new_objects[0];
                self.pools.insert(
                    pool,
                    Rc::new(Pool {
                        fd,
                        size: Cell::new(size),
                        host_size,
                        resource,
                    }),
                );
                ids.push(Identifier {
                    id: resource,
                    kind: ID_TYPE_VIRTGPU_BLOB,
                    size: 0,
                });
            }
            ("wl_shm_pool", 0) => {
                let (buffer, _) = walked.new_objects[0];
                let [offset, _width, height, stride, _format] = walked.words[..] else {
                    unreachable!("signature has five words")
                };
                let pool = self.pools.get(&object).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "wl_shm_pool {object} is not a pool of this proxy"
                    ))
                })?;
                self.buffers.insert(
                    buffer,
                    ShmBuffer {
                        pool: pool.clone(),
                        offset: u64::from(offset),
                        stride: u64::from(stride),
                        height: u64::from(height),
                    },
                );
            }
            ("wl_shm_pool", 2) => {
                let pool = self.pools.get(&object).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "wl_shm_pool {object} is not a pool of this proxy"
                    ))
                })?;
                let size = u64::from(walked.words[0]);
                if size > pool.host_size {
                    return Err(ClientError::Protocol(format!(
                        "wl_shm_pool.resize to {size} bytes: beyond the {} bytes of its host buffer (not supported by this proxy)",
                        pool.host_size
                    )));
                }
                pool.size.set(size);
            }
            ("wl_surface", 1) => {
                self.attached.insert(object, walked.words[0]);
            }
            ("wl_surface", 6) => {
                if let Some(buffer) = self.attached.get(&object).and_then(|b| self.buffers.get(b)) {
                    let buffer = buffer.clone();
                    self.copy_to_host(&buffer)?;
                }
            }
            ("zwp_linux_buffer_params_v1", 1) => {
                let fd = fds.pop().expect("signature has one fd");
                let resource = self
                    .channel
                    .resource_of(fd.as_fd())
                    .map_err(io_err("dma-buf to resource id"))?
                    .ok_or_else(|| {
                        ClientError::Protocol(
                            "a dma-buf that is not a virtio-gpu buffer cannot reach the host"
                                .into(),
                        )
                    })?;
                ids.push(Identifier {
                    id: resource,
                    kind: ID_TYPE_VIRTGPU_BLOB,
                    size: 0,
                });
            }
            _ => {}
        }
        if !fds.is_empty() {
            return Err(ClientError::Protocol(format!(
                "{iface}.{opcode} carries an fd this proxy does not pass"
            )));
        }
        Ok(())
    }

    /// Copies the rows of an shm buffer from the client's pool into the host buffer.
    fn copy_to_host(&mut self, buffer: &ShmBuffer) -> Result<(), ClientError> {
        let pool = &buffer.pool;
        let len = buffer.stride.saturating_mul(buffer.height);
        let end = buffer.offset.saturating_add(len);
        if end > pool.size.get() {
            return Err(ClientError::Protocol(format!(
                "wl_buffer {}..{end} lies outside its {}-byte pool",
                buffer.offset,
                pool.size.get()
            )));
        }
        let mut data = vec![0u8; len as usize];
        let mut done = 0;
        while done < data.len() {
            let n = rustix::io::pread(&pool.fd, &mut data[done..], buffer.offset + done as u64)
                .map_err(|e| io_err("reading the client's shm pool")(e.into()))?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "shm pool shorter than announced".into(),
                ));
            }
            done += n;
        }
        let resource = pool.resource;
        self.channel
            .write_resource(resource, buffer.offset, &data)
            .map_err(io_err("copying into the host buffer"))?;
        if let Some(log) = &self.commits {
            use std::io::Write as _;
            let _ = writeln!(
                log.borrow_mut(),
                "commit offset={} stride={} height={} fnv={:016x}",
                buffer.offset,
                buffer.stride,
                buffer.height,
                fnv1a(&data)
            );
        }
        Ok(())
    }

    /// Takes the host's events and passes them to the client.
    pub fn channel_readable(&mut self) -> Result<(), ClientError> {
        while let Some(event) = self.channel.next_event().map_err(io_err("channel event"))? {
            match decode_event(&event) {
                Ok(ChannelEvent::Receive(receive)) => self.receive(receive)?,
                Ok(ChannelEvent::Read(_)) => {
                    return Err(ClientError::Protocol(
                        "READ for a pipe this proxy never made".into(),
                    ))
                }
                Err(e) => return Err(ClientError::Protocol(format!("channel event: {e}"))),
            }
        }
        self.flush()
    }

    fn receive(&mut self, event: SendReceive) -> Result<(), ClientError> {
        if event.layout != self.channel.layout() {
            return Err(ClientError::Protocol(format!(
                "RECEIVE with {} identifier slots, SEND with {}",
                event.layout.max_ids(),
                self.channel.layout().max_ids()
            )));
        }
        if event.identifiers.is_empty() && event.data.is_empty() {
            return Err(ClientError::Closed("host compositor"));
        }
        for ident in &event.identifiers {
            match ident.kind {
                ID_TYPE_VIRTGPU_BLOB => {
                    let fd = self
                        .channel
                        .import_blob(ident.id, ident.size)
                        .map_err(io_err("importing a host blob"))?;
                    self.host_fds.push_back(fd);
                }
                ID_TYPE_WRITE_PIPE => {
                    return Err(ClientError::Protocol(
                        "write pipes are not carried (no data device is offered)".into(),
                    ))
                }
                other => return Err(ClientError::Protocol(format!("identifier type {other}"))),
            }
        }
        self.from_host.extend_from_slice(&event.data);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some((object, opcode, size)) = protocol::header(&self.from_host[consumed..]) {
            if size < 8 || self.from_host.len() - consumed < size {
                break;
            }
            let msg = self.from_host[consumed..consumed + size].to_vec();
            consumed += size;
            if let Some(forward) = self.event(object, opcode, msg) {
                out.extend_from_slice(&forward);
            }
        }
        self.from_host.drain(..consumed);
        if !out.is_empty() || !self.host_fds.is_empty() {
            let fds: Vec<OwnedFd> = self.host_fds.drain(..).collect();
            self.backlog += out.len();
            if self.backlog > MAX_CLIENT_BACKLOG {
                return Err(ClientError::Protocol(
                    "client does not read its events".into(),
                ));
            }
            self.to_client.push_back((out, fds));
        }
        Ok(())
    }

    /// Bookkeeping for one event; the bytes to forward (`None` drops it: globals the proxy
    /// does not carry; a version above what it understands is lowered).
    fn event(&mut self, object: u32, opcode: u16, msg: Vec<u8>) -> Option<Vec<u8>> {
        let word = |at: usize| {
            msg.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let iface = self.objects.get(&object).copied();
        match (iface, opcode) {
            (Some("wl_display"), 1) => {
                if let Some(id) = word(8) {
                    self.objects.remove(&id);
                    self.pools.remove(&id);
                    self.buffers.remove(&id);
                    self.attached.remove(&id);
                }
                Some(msg)
            }
            (Some("wl_registry"), 0) => {
                let (name, len) = (word(8)?, word(12)? as usize);
                let raw = msg.get(16..16 + len.checked_sub(1)?)?;
                let interface = String::from_utf8_lossy(raw).into_owned();
                let version_at = 16 + len.div_ceil(4) * 4;
                let version = word(version_at)?;
                let (known, max) = GLOBALS.iter().find(|(g, _)| *g == interface)?;
                let offered = version.min(*max);
                self.globals.insert(name, (known, offered));
                let mut msg = msg;
                msg[version_at..version_at + 4].copy_from_slice(&offered.to_le_bytes());
                Some(msg)
            }
            (Some("wl_registry"), 1) => {
                let name = word(8)?;
                self.globals.remove(&name).map(|_| msg)
            }
            (Some(name), op) => {
                for (iface, event, created) in protocol::EVENT_NEW_IDS {
                    if *iface == name && *event == op {
                        if let Some(id) = word(8) {
                            let created = protocol::interface(created).expect("listed").name;
                            self.objects.insert(id, created);
                        }
                    }
                }
                Some(msg)
            }
            (None, _) => Some(msg),
        }
    }

    /// Sends queued events to the client as far as it reads them.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        while let Some((data, fds)) = self.to_client.front_mut() {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(ClientError::Protocol("too many fds for one message".into()));
            }
            match rustix::net::sendmsg(
                &self.socket,
                &[IoSlice::new(data)],
                &mut control,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    fds.clear();
                    data.drain(..n);
                    self.backlog -= n;
                    if data.is_empty() {
                        self.to_client.pop_front();
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE) | Err(Errno::CONNRESET) => {
                    return Err(ClientError::Closed("client"))
                }
                Err(e) => return Err(io_err("sendmsg to the client")(e.into())),
            }
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits, of `bytes` (the commit log's digest; the `wayland` lane computes the
/// same over the host buffer).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::cell::RefCell;
    use vhost_user_gpu::protocol::cross_domain::{commands, IdLayout};

    fn decode_send(cmd: &[u8]) -> Option<SendReceive> {
        match commands(cmd).next()? {
            Ok(CrossDomainCommand::Send(send)) => Some(send),
            _ => None,
        }
    }

    fn receive(data: &[u8]) -> Vec<u8> {
        SendReceive {
            layout: IdLayout::TwentyEight,
            identifiers: vec![],
            data: data.to_vec(),
        }
        .receive_bytes()
    }

    /// Records what the proxy submits; hands out memfd-backed "resources"; events scripted.
    #[derive(Default)]
    struct Recorder {
        submitted: Vec<Vec<u8>>,
        events: VecDeque<Vec<u8>>,
        written: Vec<(u32, u64, usize)>,
    }

    struct FakeChannel(Rc<RefCell<Recorder>>, OwnedFd);

    impl GuestChannel for FakeChannel {
        fn layout(&self) -> IdLayout {
            IdLayout::TwentyEight
        }
        fn submit(&mut self, cmd: &[u8]) -> std::io::Result<()> {
            self.0.borrow_mut().submitted.push(cmd.to_vec());
            Ok(())
        }
        fn event_fd(&self) -> BorrowedFd<'_> {
            self.1.as_fd()
        }
        fn next_event(&mut self) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.0.borrow_mut().events.pop_front())
        }
        fn resource_of(&mut self, _fd: BorrowedFd<'_>) -> std::io::Result<Option<u32>> {
            Ok(None)
        }
        fn import_blob(&mut self, _id: u32, _size: u32) -> std::io::Result<OwnedFd> {
            Ok(rustix::fs::memfd_create(
                "x",
                rustix::fs::MemfdFlags::CLOEXEC,
            )?)
        }
        fn alloc_shm(&mut self, _size: u64) -> std::io::Result<u32> {
            Ok(100)
        }
        fn write_resource(&mut self, r: u32, off: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.borrow_mut().written.push((r, off, data.len()));
            Ok(())
        }
    }

    fn setup() -> (Client, OwnedFd, Rc<RefCell<Recorder>>) {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let rec = Rc::new(RefCell::new(Recorder::default()));
        let dummy = rustix::fs::memfd_create("ev", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        (
            Client::new(a, Box::new(FakeChannel(rec.clone(), dummy))),
            b,
            rec,
        )
    }

    fn msg(object: u32, opcode: u16, words: &[u32]) -> Vec<u8> {
        let size = 8 + 4 * words.len() as u32;
        let mut out = object.to_le_bytes().to_vec();
        out.extend_from_slice(&((size << 16) | u32::from(opcode)).to_le_bytes());
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    fn client_sends(peer: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            peer,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    #[test]
    fn requests_cross_as_send_in_one_command() {
        let (mut c, peer, rec) = setup();
        let mut bytes = msg(1, 1, &[2]); // get_registry
        bytes.extend(msg(1, 0, &[3])); // sync
        client_sends(&peer, &bytes, &[]);
        c.client_readable().unwrap();
        let rec = rec.borrow();
        assert_eq!(rec.submitted.len(), 1);
        let send = decode_send(&rec.submitted[0]).unwrap();
        assert_eq!(send.data, &bytes[..]);
        assert!(send.identifiers.is_empty());
    }

    #[test]
    fn hostile_clients_are_disconnected_not_panicking() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unknown object", msg(77, 0, &[])),
            ("unknown opcode", msg(1, 9, &[])),
            ("args do not fit", msg(1, 1, &[2, 3])),
            ("size below header", {
                let mut m = msg(1, 0, &[3]);
                m[6] = 4;
                m[7] = 0;
                m
            }),
            ("bind of a global never offered", {
                let mut m = msg(1, 1, &[2]);
                // wl_registry.bind(name 9, "wl_seat", 1, id 3)
                let mut bind = 2u32.to_le_bytes().to_vec();
                let mut args = 9u32.to_le_bytes().to_vec();
                args.extend_from_slice(&8u32.to_le_bytes());
                args.extend_from_slice(b"wl_seat\0");
                args.extend_from_slice(&1u32.to_le_bytes());
                args.extend_from_slice(&3u32.to_le_bytes());
                bind.extend_from_slice(&((8 + args.len() as u32) << 16).to_le_bytes());
                bind.extend(args);
                m.extend(bind);
                m
            }),
        ];
        for (what, bytes) in cases {
            let (mut c, peer, _rec) = setup();
            client_sends(&peer, &bytes, &[]);
            match c.client_readable() {
                Err(ClientError::Protocol(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn shm_pool_becomes_a_host_blob_and_commits_copy_rows() {
        let (mut c, peer, rec) = setup();
        // Pretend weston offered wl_shm (name 1) and wl_compositor (name 2).
        c.globals.insert(1, ("wl_shm", 1));
        c.globals.insert(2, ("wl_compositor", 4));
        c.objects.insert(2, "wl_registry");
        c.objects.insert(3, "wl_shm");
        c.objects.insert(4, "wl_compositor");
        let pool_fd = rustix::fs::memfd_create("pool", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&pool_fd, 8192).unwrap();
        let mut bytes = msg(3, 0, &[5, 8192]); // create_pool(5, fd, 8192)
        bytes.extend(msg(5, 0, &[6, 4096, 16, 16, 64, 1])); // create_buffer(6, off 4096, 16x16)
        bytes.extend(msg(4, 0, &[7])); // create_surface(7)
        bytes.extend(msg(7, 1, &[6, 0, 0])); // attach
        bytes.extend(msg(7, 6, &[])); // commit
        client_sends(&peer, &bytes, &[pool_fd.as_fd()]);
        c.client_readable().unwrap();
        let rec = rec.borrow();
        let send = decode_send(&rec.submitted[0]).unwrap();
        assert_eq!(send.identifiers.len(), 1);
        assert_eq!(
            (send.identifiers[0].id, send.identifiers[0].kind),
            (100, ID_TYPE_VIRTGPU_BLOB)
        );
        assert_eq!(rec.written, vec![(100, 4096, 64 * 16)]);
    }

    #[test]
    fn a_buffer_outside_its_pool_is_a_protocol_error() {
        let (mut c, peer, _rec) = setup();
        c.objects.insert(3, "wl_shm");
        c.objects.insert(4, "wl_compositor");
        let pool_fd = rustix::fs::memfd_create("pool", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&pool_fd, 4096).unwrap();
        let mut bytes = msg(3, 0, &[5, 4096]);
        bytes.extend(msg(5, 0, &[6, 0, 64, 64, 256, 1])); // 16 KiB buffer in a 4 KiB pool
        bytes.extend(msg(4, 0, &[7]));
        bytes.extend(msg(7, 1, &[6, 0, 0]));
        bytes.extend(msg(7, 6, &[]));
        client_sends(&peer, &bytes, &[pool_fd.as_fd()]);
        assert!(matches!(c.client_readable(), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn host_hang_up_and_hidden_globals() {
        let (mut c, peer, rec) = setup();
        c.objects.insert(2, "wl_registry");
        // Two globals: wl_seat (hidden) and wl_compositor v6 (offered as v5).
        let global = |name: u32, iface: &str, version: u32| {
            let mut args = name.to_le_bytes().to_vec();
            args.extend_from_slice(&(iface.len() as u32 + 1).to_le_bytes());
            args.extend_from_slice(iface.as_bytes());
            args.push(0);
            while !args.len().is_multiple_of(4) {
                args.push(0);
            }
            args.extend_from_slice(&version.to_le_bytes());
            let mut m = 2u32.to_le_bytes().to_vec();
            m.extend_from_slice(&((8 + args.len() as u32) << 16).to_le_bytes());
            m.extend(args);
            m
        };
        let mut data = global(1, "wl_seat", 7);
        data.extend(global(2, "wl_compositor", 6));
        rec.borrow_mut().events.push_back(receive(&data));
        c.channel_readable().unwrap();
        let mut buf = [0u8; 256];
        let n = rustix::io::read(&peer, &mut buf).unwrap();
        let expected = global(2, "wl_compositor", 5);
        assert_eq!(&buf[..n], &expected[..]);
        rec.borrow_mut().events.push_back(receive(&[]));
        assert!(matches!(c.channel_readable(), Err(ClientError::Closed(_))));
    }
}
