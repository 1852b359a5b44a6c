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
use vhost_user_gpu::cross_domain::wire::{
    self, Identifier, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE,
};
use vhost_user_gpu::protocol::cross_domain::{CMD_READ, CMD_RECEIVE};

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
        }
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
        let cmd = wire::encode_send(self.channel.layout(), ids, data);
        self.channel.submit(&cmd).map_err(io_err("SEND"))
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
            .map_err(io_err("copying into the host buffer"))
    }

    /// Takes the host's events and passes them to the client.
    pub fn channel_readable(&mut self) -> Result<(), ClientError> {
        while let Some(event) = self.channel.next_event().map_err(io_err("channel event"))? {
            match event.first().copied() {
                Some(CMD_RECEIVE) => self.receive(&event)?,
                Some(CMD_READ) => {
                    return Err(ClientError::Protocol(
                        "READ for a pipe this proxy never made".into(),
                    ))
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unknown channel event {other:?}"
                    )))
                }
            }
        }
        self.flush()
    }

    fn receive(&mut self, event: &[u8]) -> Result<(), ClientError> {
        let layout = self.channel.layout();
        let word = |at: usize| u32::from_le_bytes(event[at..at + 4].try_into().unwrap());
        if event.len() < layout.header_size() {
            return Err(ClientError::Protocol("short RECEIVE".into()));
        }
        let n = word(8) as usize;
        let size = word(12) as usize;
        if n > layout.max_ids() || layout.header_size() + size != event.len() {
            return Err(ClientError::Protocol(
                "RECEIVE does not fit its layout".into(),
            ));
        }
        if n == 0 && size == 0 {
            return Err(ClientError::Closed("host compositor"));
        }
        let max = layout.max_ids();
        for i in 0..n {
            let (id, kind, blob_size) = (
                word(16 + 4 * i),
                word(16 + 4 * (max + i)),
                word(16 + 4 * (2 * max + i)),
            );
            match kind {
                ID_TYPE_VIRTGPU_BLOB => {
                    let fd = self
                        .channel
                        .import_blob(id, blob_size)
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
        self.from_host
            .extend_from_slice(&event[layout.header_size()..]);
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
