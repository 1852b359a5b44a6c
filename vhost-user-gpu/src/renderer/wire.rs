//! `render_wire`: the messages between the backend and its render worker (a process of its
//! own that runs virglrenderer, [`super::worker`]), and their framing.
//!
//! Transport: a `SOCK_STREAM` Unix socket pair, one frame per message: an 8-byte header
//! (payload length, number of file descriptors, both `u32` little-endian) and the payload.
//! A stream and not `SOCK_SEQPACKET`: a sequenced packet is limited by the socket's send
//! buffer (about 200 KiB by default), while a `SUBMIT_3D` stream, capset data and a read-back
//! scanout are larger, so packets would need chunking; a stream needs none. File descriptors
//! (guest memory regions, exported blobs, scanout dma-bufs) travel with `SCM_RIGHTS` on the
//! first bytes of their frame; the reader reads exactly one frame at a time, so the kernel
//! never hands it descriptors of the next frame (a read does not cross a message that
//! carries descriptors), and a frame's descriptor count is checked against what arrived.
//!
//! Encoding: hand-written little-endian fields (as `protocol/`), no dependency. Each payload
//! starts with a `u16` tag. Decoding is total: truncated, trailing, oversized or unknown
//! input is a [`WireError`], never a panic, and no length read from the wire allocates
//! before the bytes it announces have been checked to be there (the frame itself is bounded
//! by [`MAX_FRAME`] and read in steps as it arrives). The backend treats the worker as
//! untrusted (a guest may have taken it over through Mesa).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::device::ports::{
    BlobFdKind, BlobRequest, Box3d, CapsetInfo, FenceSignal, RendererError, Resource3d,
    ResourceInfo, Transfer3d,
};

/// Largest payload of one frame: a read-back 8K scanout (7680 x 4320 x 4 bytes) fits.
pub const MAX_FRAME: usize = 160 << 20;
/// Most file descriptors one frame carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;
/// Most bytes of a text (error messages, names, paths).
pub const MAX_TEXT: usize = 64 << 10;
/// Bytes of the frame header.
const HEADER: usize = 8;

/// Why a frame or message could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the socket.
    #[error("the peer closed the connection")]
    Closed,
    /// A system call on the socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The message ends before its fields do.
    #[error("truncated message")]
    Truncated,
    /// Bytes after the message's last field.
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    /// A tag no message has.
    #[error("unknown message tag {0}")]
    UnknownTag(u16),
    /// A length over its bound.
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The frame carried a different number of file descriptors than its message needs.
    #[error("{got} file descriptors where the message needs {expected}")]
    FdCount {
        /// What the message needs.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// A field out of its range.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// A frame: a payload and the descriptors that came with it.
#[derive(Debug, Default)]
pub struct Frame {
    /// The encoded message.
    pub payload: Vec<u8>,
    /// Its file descriptors, in order.
    pub fds: Vec<OwnedFd>,
}

/// Sends one frame (blocking until it is all written).
pub fn send_frame(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            what: "frame",
            len: payload.len(),
            max: MAX_FRAME,
        });
    }
    if fds.len() > MAX_FDS {
        return Err(WireError::TooLarge {
            what: "descriptor list",
            len: fds.len(),
            max: MAX_FDS,
        });
    }
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut sent = 0usize;
    let total = HEADER + payload.len();
    while sent < total {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(WireError::Invalid("descriptor buffer too small"));
        }
        let iov: [IoSlice<'_>; 2] = if sent < HEADER {
            [IoSlice::new(&header[sent..]), IoSlice::new(payload)]
        } else {
            [IoSlice::new(&payload[sent - HEADER..]), IoSlice::new(&[])]
        };
        match sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                return Err(WireError::Closed)
            }
            Err(e) => return Err(WireError::Io(e.into())),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, adding the descriptors that come with them to `fds`.
/// `Ok(false)`: end of stream before the first byte.
fn read_exact(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<bool, WireError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut got = 0;
    while got < buf.len() {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let r = match recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::CONNRESET) => return Err(WireError::Closed),
            Err(e) => return Err(WireError::Io(e.into())),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if r.flags.contains(ReturnFlags::CTRUNC) {
            return Err(WireError::TooLarge {
                what: "descriptor list",
                len: MAX_FDS + 1,
                max: MAX_FDS,
            });
        }
        if fds.len() > MAX_FDS {
            return Err(WireError::TooLarge {
                what: "descriptor list",
                len: fds.len(),
                max: MAX_FDS,
            });
        }
        if r.bytes == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(WireError::Truncated)
            };
        }
        got += r.bytes;
    }
    Ok(true)
}

/// Reads one frame (blocking). [`WireError::Closed`] at the end of the stream between
/// frames.
pub fn recv_frame(socket: BorrowedFd<'_>) -> Result<Frame, WireError> {
    let mut header = [0u8; HEADER];
    let mut fds = Vec::new();
    if !read_exact(socket, &mut header, &mut fds)? {
        return Err(WireError::Closed);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let nfds = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge {
            what: "frame",
            len,
            max: MAX_FRAME,
        });
    }
    if nfds > MAX_FDS {
        return Err(WireError::TooLarge {
            what: "descriptor list",
            len: nfds,
            max: MAX_FDS,
        });
    }
    // In steps, so that a length the peer announces is only allocated as bytes arrive.
    const STEP: usize = 1 << 20;
    let mut payload = Vec::new();
    while payload.len() < len {
        let start = payload.len();
        let end = (start + STEP).min(len);
        payload.resize(end, 0);
        if !read_exact(socket, &mut payload[start..end], &mut fds)? {
            return Err(WireError::Truncated);
        }
    }
    if fds.len() != nfds {
        return Err(WireError::FdCount {
            expected: nfds,
            got: fds.len(),
        });
    }
    Ok(Frame { payload, fds })
}

/// Little-endian writer.
#[derive(Debug, Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn tag(tag: u16) -> Self {
        let mut e = Enc(Vec::new());
        e.u16(tag);
        e
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v.into())
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn opt_u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).u32(v),
            None => self.u8(0),
        }
    }
    fn ranges(&mut self, ranges: &[(u64, u64)]) -> &mut Self {
        self.u32(ranges.len() as u32);
        for &(a, l) in ranges {
            self.u64(a).u64(l);
        }
        self
    }
    fn box3d(&mut self, b: &Box3d) -> &mut Self {
        self.u32(b.x).u32(b.y).u32(b.z).u32(b.w).u32(b.h).u32(b.d)
    }
    fn transfer(&mut self, t: &Transfer3d) -> &mut Self {
        self.box3d(&t.bx)
            .u64(t.offset)
            .u32(t.level)
            .u32(t.stride)
            .u32(t.layer_stride)
    }
}

/// Little-endian reader over a received payload.
struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("boolean")),
        }
    }
    fn bytes(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::TooLarge { what, len, max });
        }
        Ok(self.take(len)?.to_vec())
    }
    fn text(&mut self) -> Result<String, WireError> {
        Ok(String::from_utf8_lossy(&self.bytes(MAX_TEXT, "text")?).into_owned())
    }
    fn path(&mut self) -> Result<std::path::PathBuf, WireError> {
        use std::os::unix::ffi::OsStringExt;
        Ok(std::ffi::OsString::from_vec(self.bytes(MAX_TEXT, "path")?).into())
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, WireError> {
        Ok(if self.bool()? {
            Some(self.u32()?)
        } else {
            None
        })
    }
    /// A count of `size`-byte elements, checked against what is left.
    fn count(&mut self, size: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(size) > self.buf.len() {
            return Err(WireError::Truncated);
        }
        Ok(n)
    }
    fn ranges(&mut self) -> Result<Vec<(u64, u64)>, WireError> {
        let n = self.count(16)?;
        (0..n).map(|_| Ok((self.u64()?, self.u64()?))).collect()
    }
    fn box3d(&mut self) -> Result<Box3d, WireError> {
        Ok(Box3d {
            x: self.u32()?,
            y: self.u32()?,
            z: self.u32()?,
            w: self.u32()?,
            h: self.u32()?,
            d: self.u32()?,
        })
    }
    fn transfer(&mut self) -> Result<Transfer3d, WireError> {
        Ok(Transfer3d {
            bx: self.box3d()?,
            offset: self.u64()?,
            level: self.u32()?,
            stride: self.u32()?,
            layer_stride: self.u32()?,
        })
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

/// How the worker confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerSandbox {
    /// Not confined (`--sandbox off`).
    Off,
    /// The 3D seccomp profile without Landlock (`--sandbox seccomp-only`).
    SeccompOnly,
    /// The 3D seccomp profile and the renderer's Landlock rules (`--sandbox on`).
    On,
}

/// What the worker starts: the first request on a new socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartConfig {
    /// The virglrenderer library (a soname or a path).
    pub library: std::path::PathBuf,
    /// The render server (venus).
    pub render_server: std::path::PathBuf,
    /// virgl contexts asked for.
    pub virgl: bool,
    /// venus contexts asked for.
    pub venus: bool,
    /// Venus from a library older than 1.0 (tests only).
    pub legacy_venus: bool,
    /// The worker's sandbox.
    pub sandbox: WorkerSandbox,
    /// DRM device nodes Mesa may render on.
    pub render_nodes: Vec<std::path::PathBuf>,
    /// Directories of libraries loaded by path.
    pub library_dirs: Vec<std::path::PathBuf>,
}

/// One guest memory region of a [`Request::MemoryTable`] (its fd travels beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// Guest physical address of its first byte.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where it starts in its file.
    pub file_offset: u64,
}

/// A request from the backend: one per port method, plus the start and the guest memory
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    /// Start the renderer; answered by [`Reply::Started`] or an error.
    Start(StartConfig),
    Capset {
        id: u32,
        version: u32,
    },
    ContextCreate {
        ctx_id: u32,
        capset: u32,
        name: Vec<u8>,
    },
    ContextDestroy {
        ctx_id: u32,
    },
    ContextAttach {
        ctx_id: u32,
        res_id: u32,
    },
    ContextDetach {
        ctx_id: u32,
        res_id: u32,
    },
    ResourceCreate3d {
        res_id: u32,
        args: Resource3d,
    },
    /// The guest memory that later backings refer to: one fd per region, in order. No
    /// answer.
    MemoryTable {
        regions: Vec<RegionDesc>,
    },
    AttachBacking {
        res_id: u32,
        ranges: Vec<(u64, u64)>,
    },
    DetachBacking {
        res_id: u32,
    },
    ResourceCreateBlob {
        res_id: u32,
        request: BlobRequest,
        backing: Option<Vec<(u64, u64)>>,
    },
    ResourceUnref {
        res_id: u32,
    },
    TransferToHost {
        ctx_id: u32,
        res_id: u32,
        transfer: Transfer3d,
    },
    TransferFromHost {
        ctx_id: u32,
        res_id: u32,
        transfer: Transfer3d,
    },
    Submit {
        ctx_id: u32,
        commands: Vec<u8>,
    },
    CreateFence {
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    },
    ExportBlob {
        res_id: u32,
    },
    ResourceInfo {
        res_id: u32,
    },
    ReadPixels {
        res_id: u32,
        width: u32,
        height: u32,
    },
    ExportScanout {
        res_id: u32,
    },
    Reset,
}

impl Request {
    /// Whether the backend waits for a reply to it.
    pub fn answered(&self) -> bool {
        !matches!(
            self,
            Request::ContextDestroy { .. }
                | Request::ContextAttach { .. }
                | Request::ContextDetach { .. }
                | Request::MemoryTable { .. }
                | Request::DetachBacking { .. }
                | Request::ResourceUnref { .. }
        )
    }

    /// The virtio-gpu command (or step) it stands for, for log lines.
    pub fn what(&self) -> &'static str {
        match self {
            Request::Start(_) => "start",
            Request::Capset { .. } => "GET_CAPSET",
            Request::ContextCreate { .. } => "CTX_CREATE",
            Request::ContextDestroy { .. } => "CTX_DESTROY",
            Request::ContextAttach { .. } => "CTX_ATTACH_RESOURCE",
            Request::ContextDetach { .. } => "CTX_DETACH_RESOURCE",
            Request::ResourceCreate3d { .. } => "RESOURCE_CREATE_3D",
            Request::MemoryTable { .. } => "guest memory table",
            Request::AttachBacking { .. } => "RESOURCE_ATTACH_BACKING",
            Request::DetachBacking { .. } => "RESOURCE_DETACH_BACKING",
            Request::ResourceCreateBlob { .. } => "RESOURCE_CREATE_BLOB",
            Request::ResourceUnref { .. } => "RESOURCE_UNREF",
            Request::TransferToHost { .. } => "TRANSFER_TO_HOST_3D",
            Request::TransferFromHost { .. } => "TRANSFER_FROM_HOST_3D",
            Request::Submit { .. } => "SUBMIT_3D",
            Request::CreateFence { .. } => "fence",
            Request::ExportBlob { .. } => "RESOURCE_MAP_BLOB",
            Request::ResourceInfo { .. } => "resource info",
            Request::ReadPixels { .. } => "read-back",
            Request::ExportScanout { .. } => "scanout export",
            Request::Reset => "reset",
        }
    }

    /// How many fds travel with it.
    pub fn fd_count(&self) -> usize {
        match self {
            Request::MemoryTable { regions } => regions.len(),
            _ => 0,
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let e = match self {
            Request::Start(c) => {
                let mut e = Enc::tag(1);
                use std::os::unix::ffi::OsStrExt;
                e.bytes(c.library.as_os_str().as_bytes())
                    .bytes(c.render_server.as_os_str().as_bytes())
                    .bool(c.virgl)
                    .bool(c.venus)
                    .bool(c.legacy_venus)
                    .u8(match c.sandbox {
                        WorkerSandbox::Off => 0,
                        WorkerSandbox::SeccompOnly => 1,
                        WorkerSandbox::On => 2,
                    });
                for list in [&c.render_nodes, &c.library_dirs] {
                    e.u32(list.len() as u32);
                    for p in list {
                        e.bytes(p.as_os_str().as_bytes());
                    }
                }
                e
            }
            Request::Capset { id, version } => {
                let mut e = Enc::tag(2);
                e.u32(*id).u32(*version);
                e
            }
            Request::ContextCreate {
                ctx_id,
                capset,
                name,
            } => {
                let mut e = Enc::tag(3);
                e.u32(*ctx_id).u32(*capset).bytes(name);
                e
            }
            Request::ContextDestroy { ctx_id } => {
                let mut e = Enc::tag(4);
                e.u32(*ctx_id);
                e
            }
            Request::ContextAttach { ctx_id, res_id } => {
                let mut e = Enc::tag(5);
                e.u32(*ctx_id).u32(*res_id);
                e
            }
            Request::ContextDetach { ctx_id, res_id } => {
                let mut e = Enc::tag(6);
                e.u32(*ctx_id).u32(*res_id);
                e
            }
            Request::ResourceCreate3d { res_id, args } => {
                let mut e = Enc::tag(7);
                e.u32(*res_id)
                    .u32(args.target)
                    .u32(args.format)
                    .u32(args.bind)
                    .u32(args.width)
                    .u32(args.height)
                    .u32(args.depth)
                    .u32(args.array_size)
                    .u32(args.last_level)
                    .u32(args.nr_samples)
                    .u32(args.flags);
                e
            }
            Request::MemoryTable { regions } => {
                let mut e = Enc::tag(8);
                e.u32(regions.len() as u32);
                for r in regions {
                    e.u64(r.guest_addr).u64(r.len).u64(r.file_offset);
                }
                e
            }
            Request::AttachBacking { res_id, ranges } => {
                let mut e = Enc::tag(9);
                e.u32(*res_id).ranges(ranges);
                e
            }
            Request::DetachBacking { res_id } => {
                let mut e = Enc::tag(10);
                e.u32(*res_id);
                e
            }
            Request::ResourceCreateBlob {
                res_id,
                request,
                backing,
            } => {
                let mut e = Enc::tag(11);
                e.u32(*res_id)
                    .u32(request.ctx_id)
                    .u32(request.blob_mem)
                    .u32(request.blob_flags)
                    .u64(request.blob_id)
                    .u64(request.size);
                match backing {
                    Some(r) => e.u8(1).ranges(r),
                    None => e.u8(0),
                };
                e
            }
            Request::ResourceUnref { res_id } => {
                let mut e = Enc::tag(12);
                e.u32(*res_id);
                e
            }
            Request::TransferToHost {
                ctx_id,
                res_id,
                transfer,
            } => {
                let mut e = Enc::tag(13);
                e.u32(*ctx_id).u32(*res_id).transfer(transfer);
                e
            }
            Request::TransferFromHost {
                ctx_id,
                res_id,
                transfer,
            } => {
                let mut e = Enc::tag(14);
                e.u32(*ctx_id).u32(*res_id).transfer(transfer);
                e
            }
            Request::Submit { ctx_id, commands } => {
                let mut e = Enc::tag(15);
                e.u32(*ctx_id).bytes(commands);
                e
            }
            Request::CreateFence {
                ctx_id,
                ring,
                fence_id,
            } => {
                let mut e = Enc::tag(16);
                e.u32(*ctx_id).opt_u32(*ring).u64(*fence_id);
                e
            }
            Request::ExportBlob { res_id } => {
                let mut e = Enc::tag(17);
                e.u32(*res_id);
                e
            }
            Request::ResourceInfo { res_id } => {
                let mut e = Enc::tag(18);
                e.u32(*res_id);
                e
            }
            Request::ReadPixels {
                res_id,
                width,
                height,
            } => {
                let mut e = Enc::tag(19);
                e.u32(*res_id).u32(*width).u32(*height);
                e
            }
            Request::ExportScanout { res_id } => {
                let mut e = Enc::tag(20);
                e.u32(*res_id);
                e
            }
            Request::Reset => Enc::tag(21),
        };
        e.0
    }

    /// Decodes a request that came with `fds` descriptors.
    pub fn decode(payload: &[u8], fds: usize) -> Result<Self, WireError> {
        let mut d = Dec { buf: payload };
        let tag = d.u16()?;
        let r = match tag {
            1 => {
                let library = d.path()?;
                let render_server = d.path()?;
                let virgl = d.bool()?;
                let venus = d.bool()?;
                let legacy_venus = d.bool()?;
                let sandbox = match d.u8()? {
                    0 => WorkerSandbox::Off,
                    1 => WorkerSandbox::SeccompOnly,
                    2 => WorkerSandbox::On,
                    _ => return Err(WireError::Invalid("sandbox mode")),
                };
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = d.count(4)?;
                    for _ in 0..n {
                        list.push(d.path()?);
                    }
                }
                let [render_nodes, library_dirs] = lists;
                Request::Start(StartConfig {
                    library,
                    render_server,
                    virgl,
                    venus,
                    legacy_venus,
                    sandbox,
                    render_nodes,
                    library_dirs,
                })
            }
            2 => Request::Capset {
                id: d.u32()?,
                version: d.u32()?,
            },
            3 => Request::ContextCreate {
                ctx_id: d.u32()?,
                capset: d.u32()?,
                name: d.bytes(MAX_TEXT, "context name")?,
            },
            4 => Request::ContextDestroy { ctx_id: d.u32()? },
            5 => Request::ContextAttach {
                ctx_id: d.u32()?,
                res_id: d.u32()?,
            },
            6 => Request::ContextDetach {
                ctx_id: d.u32()?,
                res_id: d.u32()?,
            },
            7 => Request::ResourceCreate3d {
                res_id: d.u32()?,
                args: Resource3d {
                    target: d.u32()?,
                    format: d.u32()?,
                    bind: d.u32()?,
                    width: d.u32()?,
                    height: d.u32()?,
                    depth: d.u32()?,
                    array_size: d.u32()?,
                    last_level: d.u32()?,
                    nr_samples: d.u32()?,
                    flags: d.u32()?,
                },
            },
            8 => {
                let n = d.count(24)?;
                if n > MAX_FDS {
                    return Err(WireError::TooLarge {
                        what: "memory table",
                        len: n,
                        max: MAX_FDS,
                    });
                }
                let regions = (0..n)
                    .map(|_| {
                        Ok(RegionDesc {
                            guest_addr: d.u64()?,
                            len: d.u64()?,
                            file_offset: d.u64()?,
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                Request::MemoryTable { regions }
            }
            9 => Request::AttachBacking {
                res_id: d.u32()?,
                ranges: d.ranges()?,
            },
            10 => Request::DetachBacking { res_id: d.u32()? },
            11 => Request::ResourceCreateBlob {
                res_id: d.u32()?,
                request: BlobRequest {
                    ctx_id: d.u32()?,
                    blob_mem: d.u32()?,
                    blob_flags: d.u32()?,
                    blob_id: d.u64()?,
                    size: d.u64()?,
                },
                backing: if d.bool()? { Some(d.ranges()?) } else { None },
            },
            12 => Request::ResourceUnref { res_id: d.u32()? },
            13 => Request::TransferToHost {
                ctx_id: d.u32()?,
                res_id: d.u32()?,
                transfer: d.transfer()?,
            },
            14 => Request::TransferFromHost {
                ctx_id: d.u32()?,
                res_id: d.u32()?,
                transfer: d.transfer()?,
            },
            15 => Request::Submit {
                ctx_id: d.u32()?,
                commands: d.bytes(MAX_FRAME, "command stream")?,
            },
            16 => Request::CreateFence {
                ctx_id: d.u32()?,
                ring: d.opt_u32()?,
                fence_id: d.u64()?,
            },
            17 => Request::ExportBlob { res_id: d.u32()? },
            18 => Request::ResourceInfo { res_id: d.u32()? },
            19 => Request::ReadPixels {
                res_id: d.u32()?,
                width: d.u32()?,
                height: d.u32()?,
            },
            20 => Request::ExportScanout { res_id: d.u32()? },
            21 => Request::Reset,
            t => return Err(WireError::UnknownTag(t)),
        };
        d.finish()?;
        check_fds(r.fd_count(), fds)?;
        Ok(r)
    }
}

fn check_fds(expected: usize, got: usize) -> Result<(), WireError> {
    if expected == got {
        Ok(())
    } else {
        Err(WireError::FdCount { expected, got })
    }
}

/// A [`RendererError`] as it travels (the worker's errors become the backend's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireRendererError {
    /// [`RendererError::Unavailable`].
    Unavailable(String),
    /// [`RendererError::Start`].
    Start(String),
    /// [`RendererError::Failed`].
    Failed(String),
    /// [`RendererError::NoCapset`].
    NoCapset(u32),
    /// [`RendererError::Invalid`].
    Invalid(String),
    /// [`RendererError::OutsideGuestMemory`].
    OutsideGuestMemory {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// [`RendererError::Gone`].
    Gone,
}

impl From<&RendererError> for WireRendererError {
    fn from(e: &RendererError) -> Self {
        match e {
            RendererError::Unavailable(s) => Self::Unavailable(s.clone()),
            RendererError::Start(s) => Self::Start(s.clone()),
            RendererError::Failed(s) => Self::Failed(s.clone()),
            RendererError::NoCapset(id) => Self::NoCapset(*id),
            RendererError::Invalid(s) => Self::Invalid(s.clone()),
            RendererError::OutsideGuestMemory { addr, len } => Self::OutsideGuestMemory {
                addr: *addr,
                len: *len,
            },
            RendererError::Gone => Self::Gone,
        }
    }
}

impl From<WireRendererError> for RendererError {
    fn from(e: WireRendererError) -> Self {
        match e {
            WireRendererError::Unavailable(s) => Self::Unavailable(s),
            WireRendererError::Start(s) => Self::Start(s),
            WireRendererError::Failed(s) => Self::Failed(s),
            WireRendererError::NoCapset(id) => Self::NoCapset(id),
            WireRendererError::Invalid(s) => Self::Invalid(s),
            WireRendererError::OutsideGuestMemory { addr, len } => {
                Self::OutsideGuestMemory { addr, len }
            }
            WireRendererError::Gone => Self::Gone,
        }
    }
}

/// A reply to an answered [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Ok,
    /// Failed.
    Err(WireRendererError),
    /// Bytes (capset data, read-back pixels).
    Data(Vec<u8>),
    /// The renderer started.
    Started {
        /// The capsets it serves.
        capsets: Vec<CapsetInfo>,
        /// Its render server's pid (venus), for log lines.
        render_server: Option<u32>,
        /// Why venus is not served though asked for, if so.
        venus_withheld: Option<String>,
    },
    /// An exported blob; its fd travels with the frame.
    Blob {
        /// What the renderer says it is.
        kind: BlobFdKind,
        /// Where its bytes start.
        fd_offset: u64,
        /// The renderer's caching.
        map_info: Option<u32>,
    },
    /// A resource's description.
    Info(ResourceInfo),
    /// A scanout export; its fd travels with the frame.
    Scanout {
        /// Bytes per row.
        stride: u32,
        /// Offset of the first pixel.
        offset: u32,
        /// DRM fourcc.
        drm_fourcc: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// What the worker reports without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A fence signalled.
    Fence(FenceSignal),
    /// The render server (venus) is gone.
    RenderServerLost(String),
    /// The renderer in the worker stopped.
    RendererLost(String),
}

/// A message from the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage {
    /// The reply to the oldest answered request not yet answered.
    Reply(Reply),
    /// An event.
    Event(Event),
}

impl WorkerMessage {
    /// How many fds travel with it.
    pub fn fd_count(&self) -> usize {
        match self {
            WorkerMessage::Reply(Reply::Blob { .. } | Reply::Scanout { .. }) => 1,
            _ => 0,
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let e = match self {
            WorkerMessage::Reply(Reply::Ok) => Enc::tag(100),
            WorkerMessage::Reply(Reply::Err(err)) => {
                let mut e = Enc::tag(101);
                match err {
                    WireRendererError::Unavailable(s) => e.u8(1).bytes(s.as_bytes()),
                    WireRendererError::Start(s) => e.u8(2).bytes(s.as_bytes()),
                    WireRendererError::Failed(s) => e.u8(3).bytes(s.as_bytes()),
                    WireRendererError::NoCapset(id) => e.u8(4).u32(*id),
                    WireRendererError::Invalid(s) => e.u8(5).bytes(s.as_bytes()),
                    WireRendererError::OutsideGuestMemory { addr, len } => {
                        e.u8(6).u64(*addr).u64(*len)
                    }
                    WireRendererError::Gone => e.u8(7),
                };
                e
            }
            WorkerMessage::Reply(Reply::Data(data)) => {
                let mut e = Enc::tag(102);
                e.bytes(data);
                e
            }
            WorkerMessage::Reply(Reply::Started {
                capsets,
                render_server,
                venus_withheld,
            }) => {
                let mut e = Enc::tag(103);
                e.u32(capsets.len() as u32);
                for c in capsets {
                    e.u32(c.id).u32(c.max_version).u32(c.max_size);
                }
                e.opt_u32(*render_server);
                match venus_withheld {
                    Some(s) => e.u8(1).bytes(s.as_bytes()),
                    None => e.u8(0),
                };
                e
            }
            WorkerMessage::Reply(Reply::Blob {
                kind,
                fd_offset,
                map_info,
            }) => {
                let mut e = Enc::tag(104);
                e.u8(match kind {
                    BlobFdKind::Dmabuf => 0,
                    BlobFdKind::Opaque => 1,
                    BlobFdKind::Shm => 2,
                })
                .u64(*fd_offset)
                .opt_u32(*map_info);
                e
            }
            WorkerMessage::Reply(Reply::Info(i)) => {
                let mut e = Enc::tag(105);
                e.u32(i.width)
                    .u32(i.height)
                    .u32(i.virgl_format)
                    .u32(i.drm_fourcc)
                    .bool(i.y_0_top);
                e
            }
            WorkerMessage::Reply(Reply::Scanout {
                stride,
                offset,
                drm_fourcc,
                width,
                height,
            }) => {
                let mut e = Enc::tag(106);
                e.u32(*stride)
                    .u32(*offset)
                    .u32(*drm_fourcc)
                    .u32(*width)
                    .u32(*height);
                e
            }
            WorkerMessage::Event(Event::Fence(f)) => {
                let mut e = Enc::tag(200);
                e.u32(f.ctx_id).opt_u32(f.ring).u64(f.fence_id);
                e
            }
            WorkerMessage::Event(Event::RenderServerLost(s)) => {
                let mut e = Enc::tag(201);
                e.bytes(s.as_bytes());
                e
            }
            WorkerMessage::Event(Event::RendererLost(s)) => {
                let mut e = Enc::tag(202);
                e.bytes(s.as_bytes());
                e
            }
        };
        e.0
    }

    /// Decodes a message that came with `fds` descriptors.
    pub fn decode(payload: &[u8], fds: usize) -> Result<Self, WireError> {
        let mut d = Dec { buf: payload };
        let m = match d.u16()? {
            100 => WorkerMessage::Reply(Reply::Ok),
            101 => WorkerMessage::Reply(Reply::Err(match d.u8()? {
                1 => WireRendererError::Unavailable(d.text()?),
                2 => WireRendererError::Start(d.text()?),
                3 => WireRendererError::Failed(d.text()?),
                4 => WireRendererError::NoCapset(d.u32()?),
                5 => WireRendererError::Invalid(d.text()?),
                6 => WireRendererError::OutsideGuestMemory {
                    addr: d.u64()?,
                    len: d.u64()?,
                },
                7 => WireRendererError::Gone,
                _ => return Err(WireError::Invalid("error kind")),
            })),
            102 => WorkerMessage::Reply(Reply::Data(d.bytes(MAX_FRAME, "data")?)),
            103 => {
                let n = d.count(12)?;
                let capsets = (0..n)
                    .map(|_| {
                        Ok(CapsetInfo {
                            id: d.u32()?,
                            max_version: d.u32()?,
                            max_size: d.u32()?,
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                let render_server = d.opt_u32()?;
                let venus_withheld = if d.bool()? { Some(d.text()?) } else { None };
                WorkerMessage::Reply(Reply::Started {
                    capsets,
                    render_server,
                    venus_withheld,
                })
            }
            104 => WorkerMessage::Reply(Reply::Blob {
                kind: match d.u8()? {
                    0 => BlobFdKind::Dmabuf,
                    1 => BlobFdKind::Opaque,
                    2 => BlobFdKind::Shm,
                    _ => return Err(WireError::Invalid("blob fd kind")),
                },
                fd_offset: d.u64()?,
                map_info: d.opt_u32()?,
            }),
            105 => WorkerMessage::Reply(Reply::Info(ResourceInfo {
                width: d.u32()?,
                height: d.u32()?,
                virgl_format: d.u32()?,
                drm_fourcc: d.u32()?,
                y_0_top: d.bool()?,
            })),
            106 => WorkerMessage::Reply(Reply::Scanout {
                stride: d.u32()?,
                offset: d.u32()?,
                drm_fourcc: d.u32()?,
                width: d.u32()?,
                height: d.u32()?,
            }),
            200 => WorkerMessage::Event(Event::Fence(FenceSignal {
                ctx_id: d.u32()?,
                ring: d.opt_u32()?,
                fence_id: d.u64()?,
            })),
            201 => WorkerMessage::Event(Event::RenderServerLost(d.text()?)),
            202 => WorkerMessage::Event(Event::RendererLost(d.text()?)),
            t => return Err(WireError::UnknownTag(t)),
        };
        d.finish()?;
        check_fds(m.fd_count(), fds)?;
        Ok(m)
    }
}

/// Sends a request with its fds.
pub fn send_request(
    socket: BorrowedFd<'_>,
    request: &Request,
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    check_fds(request.fd_count(), fds.len())?;
    send_frame(socket, &request.encode(), fds)
}

/// Sends a worker message with its fd (exported blobs and scanouts).
pub fn send_message(
    socket: BorrowedFd<'_>,
    message: &WorkerMessage,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), WireError> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    check_fds(message.fd_count(), fds.len())?;
    send_frame(socket, &message.encode(), &fds)
}

/// Decodes hostile bytes both ways (the fuzz target's entry point): never panics.
pub fn decode_any(payload: &[u8], fds: usize) {
    let _ = Request::decode(payload, fds);
    let _ = WorkerMessage::decode(payload, fds);
}

/// Borrowed fds of owned ones.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    fn t3() -> Transfer3d {
        Transfer3d {
            bx: Box3d {
                x: 1,
                y: 2,
                z: 3,
                w: 4,
                h: 5,
                d: 6,
            },
            offset: 7,
            level: 8,
            stride: 9,
            layer_stride: 10,
        }
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Start(StartConfig {
                library: "libvirglrenderer.so.1".into(),
                render_server: "/usr/libexec/virgl_render_server".into(),
                virgl: true,
                venus: false,
                legacy_venus: true,
                sandbox: WorkerSandbox::SeccompOnly,
                render_nodes: vec!["/dev/dri".into()],
                library_dirs: vec!["/opt/a".into(), "/opt/b".into()],
            }),
            Request::Capset { id: 2, version: 1 },
            Request::ContextCreate {
                ctx_id: 1,
                capset: 4,
                name: b"glmark2".to_vec(),
            },
            Request::ContextDestroy { ctx_id: 1 },
            Request::ContextAttach {
                ctx_id: 1,
                res_id: 2,
            },
            Request::ContextDetach {
                ctx_id: 1,
                res_id: 2,
            },
            Request::ResourceCreate3d {
                res_id: 3,
                args: Resource3d {
                    target: 2,
                    format: 1,
                    bind: 2,
                    width: 64,
                    height: 32,
                    depth: 1,
                    array_size: 1,
                    last_level: 0,
                    nr_samples: 0,
                    flags: 0,
                },
            },
            Request::MemoryTable {
                regions: vec![
                    RegionDesc {
                        guest_addr: 0,
                        len: 1 << 20,
                        file_offset: 0,
                    },
                    RegionDesc {
                        guest_addr: 1 << 32,
                        len: 1 << 21,
                        file_offset: 4096,
                    },
                ],
            },
            Request::AttachBacking {
                res_id: 3,
                ranges: vec![(0x1000, 0x2000), (0x8000, 0x10)],
            },
            Request::DetachBacking { res_id: 3 },
            Request::ResourceCreateBlob {
                res_id: 4,
                request: BlobRequest {
                    ctx_id: 1,
                    blob_mem: 2,
                    blob_flags: 1,
                    blob_id: 99,
                    size: 1 << 16,
                },
                backing: Some(vec![(0, 4096)]),
            },
            Request::ResourceCreateBlob {
                res_id: 5,
                request: BlobRequest {
                    ctx_id: 1,
                    blob_mem: 2,
                    blob_flags: 1,
                    blob_id: 98,
                    size: 4096,
                },
                backing: None,
            },
            Request::ResourceUnref { res_id: 4 },
            Request::TransferToHost {
                ctx_id: 1,
                res_id: 3,
                transfer: t3(),
            },
            Request::TransferFromHost {
                ctx_id: 1,
                res_id: 3,
                transfer: t3(),
            },
            Request::Submit {
                ctx_id: 1,
                commands: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
            Request::CreateFence {
                ctx_id: 1,
                ring: Some(3),
                fence_id: 1 << 40,
            },
            Request::CreateFence {
                ctx_id: 0,
                ring: None,
                fence_id: 7,
            },
            Request::ExportBlob { res_id: 4 },
            Request::ResourceInfo { res_id: 3 },
            Request::ReadPixels {
                res_id: 3,
                width: 64,
                height: 32,
            },
            Request::ExportScanout { res_id: 3 },
            Request::Reset,
        ]
    }

    fn messages() -> Vec<WorkerMessage> {
        let mut v: Vec<WorkerMessage> = [
            Reply::Ok,
            Reply::Data(vec![9; 300]),
            Reply::Started {
                capsets: vec![
                    CapsetInfo {
                        id: 1,
                        max_version: 1,
                        max_size: 308,
                    },
                    CapsetInfo {
                        id: 4,
                        max_version: 0,
                        max_size: 160,
                    },
                ],
                render_server: Some(1234),
                venus_withheld: Some("too old".into()),
            },
            Reply::Started {
                capsets: Vec::new(),
                render_server: None,
                venus_withheld: None,
            },
            Reply::Blob {
                kind: BlobFdKind::Opaque,
                fd_offset: 4096,
                map_info: Some(3),
            },
            Reply::Info(ResourceInfo {
                width: 64,
                height: 32,
                virgl_format: 2,
                drm_fourcc: 0x3432_5258,
                y_0_top: true,
            }),
            Reply::Scanout {
                stride: 256,
                offset: 0,
                drm_fourcc: 0x3432_5258,
                width: 64,
                height: 32,
            },
        ]
        .into_iter()
        .map(WorkerMessage::Reply)
        .collect();
        for e in [
            WireRendererError::Unavailable("u".into()),
            WireRendererError::Start("s".into()),
            WireRendererError::Failed("f".into()),
            WireRendererError::NoCapset(9),
            WireRendererError::Invalid("i".into()),
            WireRendererError::OutsideGuestMemory { addr: 1, len: 2 },
            WireRendererError::Gone,
        ] {
            v.push(WorkerMessage::Reply(Reply::Err(e)));
        }
        v.push(WorkerMessage::Event(Event::Fence(FenceSignal {
            ctx_id: 1,
            ring: Some(0),
            fence_id: 5,
        })));
        v.push(WorkerMessage::Event(Event::Fence(FenceSignal {
            ctx_id: 0,
            ring: None,
            fence_id: 6,
        })));
        v.push(WorkerMessage::Event(Event::RenderServerLost("gone".into())));
        v.push(WorkerMessage::Event(Event::RendererLost("lost".into())));
        v
    }

    #[test]
    fn every_message_round_trips() {
        for r in requests() {
            let bytes = r.encode();
            assert_eq!(Request::decode(&bytes, r.fd_count()).unwrap(), r);
        }
        for m in messages() {
            let bytes = m.encode();
            assert_eq!(WorkerMessage::decode(&bytes, m.fd_count()).unwrap(), m);
        }
    }

    #[test]
    fn truncated_trailing_and_wrong_fd_counts_are_refused() {
        for r in requests() {
            let bytes = r.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Request::decode(&bytes[..cut], r.fd_count()).is_err(),
                    "{r:?} cut {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Request::decode(&longer, r.fd_count()),
                Err(WireError::Trailing(1))
            ));
            assert!(matches!(
                Request::decode(&bytes, r.fd_count() + 1),
                Err(WireError::FdCount { .. })
            ));
        }
        for m in messages() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                assert!(WorkerMessage::decode(&bytes[..cut], m.fd_count()).is_err());
            }
            assert!(WorkerMessage::decode(&bytes, m.fd_count() + 1).is_err());
        }
    }

    #[test]
    fn hostile_lengths_do_not_allocate_and_garbage_is_refused() {
        // A submit claiming 4 GiB of commands in a 10-byte message.
        let mut bytes = Request::Submit {
            ctx_id: 1,
            commands: Vec::new(),
        }
        .encode();
        bytes.truncate(6);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Request::decode(&bytes, 0).is_err());
        // A capset list claiming 2^32 entries.
        let mut bytes = 103u16.to_le_bytes().to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            WorkerMessage::decode(&bytes, 0),
            Err(WireError::Truncated)
        ));
        for tag in [0u16, 22, 99, 107, 203, u16::MAX] {
            assert!(matches!(
                Request::decode(&tag.to_le_bytes(), 0)
                    .err()
                    .or(WorkerMessage::decode(&tag.to_le_bytes(), 0).err()),
                Some(WireError::UnknownTag(_))
            ));
        }
        // Pseudo-random garbage: errors or values, never a panic.
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            decode_any(&bytes, (len % 3) as usize);
        }
    }

    #[test]
    fn frames_carry_payloads_and_fds() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let memfd = rustix::fs::memfd_create("wire-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let big = vec![7u8; 3 << 20];
        let writer = {
            let a = a.try_clone().unwrap();
            let big = big.clone();
            std::thread::spawn(move || {
                send_frame(a.as_fd(), &big, &[memfd.as_fd()]).unwrap();
                send_frame(a.as_fd(), b"small", &[]).unwrap();
            })
        };
        let f = recv_frame(b.as_fd()).unwrap();
        assert_eq!(f.payload, big);
        assert_eq!(f.fds.len(), 1);
        let f = recv_frame(b.as_fd()).unwrap();
        assert_eq!(f.payload, b"small");
        assert!(f.fds.is_empty());
        writer.join().unwrap();
        drop(a);
        assert!(matches!(recv_frame(b.as_fd()), Err(WireError::Closed)));
    }

    #[test]
    fn oversized_and_lying_frames_are_refused() {
        let pair = || {
            socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap()
        };
        // A header announcing more than MAX_FRAME.
        let (a, b) = pair();
        let mut header = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        header.extend_from_slice(&0u32.to_le_bytes());
        rustix::io::write(&a, &header).unwrap();
        assert!(matches!(
            recv_frame(b.as_fd()),
            Err(WireError::TooLarge { .. })
        ));
        // A header announcing one fd, none sent.
        let (a, b) = pair();
        let mut header = 2u32.to_le_bytes().to_vec();
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&[0, 0]);
        rustix::io::write(&a, &header).unwrap();
        assert!(matches!(
            recv_frame(b.as_fd()),
            Err(WireError::FdCount { .. })
        ));
        // A frame cut short by the peer's end.
        let (a, b) = pair();
        let mut header = 100u32.to_le_bytes().to_vec();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&[1, 2, 3]);
        rustix::io::write(&a, &header).unwrap();
        drop(a);
        assert!(matches!(recv_frame(b.as_fd()), Err(WireError::Truncated)));
    }
}
