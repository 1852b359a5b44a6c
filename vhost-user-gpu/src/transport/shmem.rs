//! The host-visible shared memory region (shmid 1) through vhost-user `SHMEM_MAP` /
//! `SHMEM_UNMAP` on the backend channel.
//!
//! Two rules from running against QEMU:
//! - A mapping request is answered by the frontend's main loop. If it is sent while the
//!   frontend is itself waiting for one of our replies (inside any frontend-message callback),
//!   both sides wait forever. Requests are therefore only sent from the queue-handling thread;
//!   [`crate::queue_thread::QueueThreadScope`] marks that thread, and the mapper refuses to
//!   send from anywhere else.
//! - The request must be acknowledged before the guest is told anything (`OK_MAP_INFO`) or a
//!   buffer is freed. `vhost`'s `Backend` waits for the `REPLY_ACK` when the frontend
//!   negotiated `VHOST_USER_PROTOCOL_F_REPLY_ACK`, which this backend offers and every known
//!   SHMEM-capable frontend accepts (the handler sets the flag from what was acked and warns
//!   when a frontend does not take it).
//!
//! Every request is a round trip marked on the connection's [`QueueGate`], so a stop
//! (`GET_VRING_BASE`) arriving meanwhile does not wait for it.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

use crate::device::ports::{MapError, MapRange, RegionMapper};
use crate::protocol::SHM_ID_HOST_VISIBLE;
use crate::queue_thread::in_queue_thread;
use crate::transport::gate::QueueGate;

/// The backend-to-frontend channel of one connection, shared between the vhost-user
/// callbacks (which install it) and the mapper (which uses it).
#[derive(Clone, Default)]
pub struct BackendChannel {
    inner: Arc<ChannelInner>,
}

#[derive(Default)]
struct ChannelInner {
    backend: Mutex<Option<Backend>>,
    /// The frontend asked `GET_SHMEM_CONFIG`, which the vhost library only lets through when
    /// `VHOST_USER_PROTOCOL_F_SHMEM` was negotiated.
    shmem_negotiated: AtomicBool,
    /// Marks the round trips (the connection thread must not wait for them).
    gate: Arc<QueueGate>,
}

impl BackendChannel {
    /// A channel whose round trips are marked on `gate`.
    pub fn new(gate: Arc<QueueGate>) -> Self {
        BackendChannel {
            inner: Arc::new(ChannelInner {
                gate,
                ..ChannelInner::default()
            }),
        }
    }

    /// Runs a request the frontend answers, marked on the gate.
    fn round_trip<T>(&self, f: impl FnOnce() -> T) -> T {
        self.inner.gate.frontend_round_trip(f)
    }

    /// Installs the handle from `VHOST_USER_SET_BACKEND_REQ_FD` (replacing any older one).
    pub fn set(&self, backend: Backend) {
        *self.inner.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(backend);
    }

    /// Records that SHMEM was negotiated (called from the `GET_SHMEM_CONFIG` handler).
    pub fn set_shmem_negotiated(&self) {
        self.inner.shmem_negotiated.store(true, Ordering::Release);
    }

    /// Whether the frontend negotiated SHMEM.
    pub fn shmem_negotiated(&self) -> bool {
        self.inner.shmem_negotiated.load(Ordering::Acquire)
    }

    /// Forgets the channel (disconnect).
    pub fn clear(&self) {
        *self.inner.backend.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A handle to the channel, if one was installed. The lock is held only for the clone:
    /// sending happens on the returned handle.
    pub fn get(&self) -> Option<Backend> {
        self.inner
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A [`RegionMapper`] placing buffers in shmid 1 with `SHMEM_MAP` / `SHMEM_UNMAP`.
pub struct ShmemMapper {
    channel: BackendChannel,
    region_size: u64,
}

impl ShmemMapper {
    /// A mapper over `channel` for a region of `region_size` bytes (0: no region).
    pub fn new(channel: BackendChannel, region_size: u64) -> Self {
        ShmemMapper {
            channel,
            region_size,
        }
    }

    fn check_range(&self, shm_offset: u64, len: u64) -> Result<(), MapError> {
        let end = shm_offset.checked_add(len);
        if len == 0 || end.is_none_or(|end| end > self.region_size) {
            return Err(MapError::Frontend(format!(
                "range {shm_offset:#x}+{len:#x} is not inside the {:#x}-byte region",
                self.region_size
            )));
        }
        Ok(())
    }

    fn channel_for_request(&self, what: &str) -> Result<Backend, MapError> {
        if !in_queue_thread() {
            log::error!("{what} requested outside the queue thread: refused (it would deadlock the frontend)");
            return Err(MapError::Frontend(format!(
                "{what} outside the queue thread refused"
            )));
        }
        if !self.available() {
            return Err(MapError::NotSupported);
        }
        self.channel.get().ok_or(MapError::NotSupported)
    }
}

impl RegionMapper for ShmemMapper {
    fn available(&self) -> bool {
        self.region_size > 0 && self.channel.shmem_negotiated() && self.channel.get().is_some()
    }

    fn map(&mut self, fd: BorrowedFd<'_>, range: MapRange) -> Result<(), MapError> {
        let MapRange {
            shm_offset,
            len,
            fd_offset,
            writable,
        } = range;
        self.check_range(shm_offset, len)?;
        if fd_offset.checked_add(len).is_none() {
            return Err(MapError::Frontend(format!(
                "fd range {fd_offset:#x}+{len:#x} overflows"
            )));
        }
        let backend = self.channel_for_request("SHMEM_MAP")?;
        self.channel
            .round_trip(|| backend.shmem_map(&shmem_request(&range), &fd))
            .map_err(|e| MapError::Frontend(format!("SHMEM_MAP {shm_offset:#x}+{len:#x}: {e}")))?;
        log::debug!("SHMEM_MAP shmid 1 {shm_offset:#x}+{len:#x} (fd offset {fd_offset:#x}, writable {writable}) acknowledged");
        Ok(())
    }

    fn unmap(&mut self, shm_offset: u64, len: u64) -> Result<(), MapError> {
        self.check_range(shm_offset, len)?;
        let backend = self.channel_for_request("SHMEM_UNMAP")?;
        self.channel
            .round_trip(|| backend.shmem_unmap(&shmem_request(&MapRange::unmap(shm_offset, len))))
            .map_err(|e| {
                MapError::Frontend(format!("SHMEM_UNMAP {shm_offset:#x}+{len:#x}: {e}"))
            })?;
        log::debug!("SHMEM_UNMAP shmid 1 {shm_offset:#x}+{len:#x} acknowledged");
        Ok(())
    }
}

/// The `SHMEM_MAP`/`SHMEM_UNMAP` message body for `range` of the host-visible region (an
/// unmap uses only `shm_offset` and `len`).
pub fn shmem_request(range: &MapRange) -> VhostUserMMap {
    let flags = if range.writable {
        VhostUserMMapFlags::WRITABLE
    } else {
        VhostUserMMapFlags::empty()
    };
    VhostUserMMap {
        shmid: SHM_ID_HOST_VISIBLE,
        padding: [0; 7],
        fd_offset: range.fd_offset,
        shm_offset: range.shm_offset,
        len: range.len,
        flags: flags.bits(),
    }
}

#[cfg(test)]
mod tests {
    //! The frontend side is played by hand on a socket pair, reading the raw vhost-user
    //! message (header: request u32, flags u32, size u32; then `VhostUserMMap`), so the test
    //! checks the bytes a real frontend would receive.
    use super::*;
    use crate::queue_thread::QueueThreadScope;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    /// A writable mapping of `len` bytes of the buffer from `fd_offset` at `shm_offset`.
    fn writable(shm_offset: u64, len: u64, fd_offset: u64) -> MapRange {
        MapRange {
            shm_offset,
            len,
            fd_offset,
            writable: true,
        }
    }

    const SHMEM_MAP: u32 = 9;
    const SHMEM_UNMAP: u32 = 10;
    const NEED_REPLY: u32 = 0x8;

    fn read_request(sock: &mut UnixStream) -> (u32, u32, Vec<u8>, bool) {
        let mut hdr = [0u8; 12];
        let (n, file) = sock.recv_with_fd(&mut hdr).unwrap();
        sock.read_exact(&mut hdr[n..]).unwrap();
        let w = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
        let mut body = vec![0u8; w(2) as usize];
        sock.read_exact(&mut body).unwrap();
        (w(0), w(1), body, file.is_some())
    }

    fn ack(sock: &mut UnixStream, request: u32, status: u64) {
        let mut msg = Vec::new();
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&(0x4u32 | 0x1).to_le_bytes()); // REPLY | version 1
        msg.extend_from_slice(&8u32.to_le_bytes());
        msg.extend_from_slice(&status.to_le_bytes());
        sock.write_all(&msg).unwrap();
    }

    fn negotiated_channel() -> (BackendChannel, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let backend = Backend::from_stream(ours);
        backend.set_reply_ack_flag(true);
        backend.set_shmem_flag(true);
        let channel = BackendChannel::default();
        channel.set(backend);
        channel.set_shmem_negotiated();
        (channel, theirs)
    }

    #[test]
    fn map_sends_shmid_1_with_fd_and_waits_for_the_ack() {
        let (channel, mut frontend) = negotiated_channel();
        let mut mapper = ShmemMapper::new(channel, 0x1000_0000);
        assert!(mapper.available());
        let frontend_thread = std::thread::spawn(move || {
            let (req, flags, body, had_fd) = read_request(&mut frontend);
            assert_eq!(req, SHMEM_MAP);
            assert_ne!(
                flags & NEED_REPLY,
                0,
                "the map must ask for an acknowledgement"
            );
            assert!(had_fd);
            assert_eq!(body.len(), 40);
            assert_eq!(body[0], SHM_ID_HOST_VISIBLE);
            let q = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
            assert_eq!((q(8), q(16), q(24), q(32)), (0x2000, 0x10_0000, 0x4000, 1));
            ack(&mut frontend, SHMEM_MAP, 0);
            // Second request: the frontend fails it.
            let (req, _, body, had_fd) = read_request(&mut frontend);
            assert_eq!(req, SHMEM_UNMAP);
            assert!(!had_fd);
            let q = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
            assert_eq!((q(16), q(24)), (0x10_0000, 0x4000));
            ack(&mut frontend, SHMEM_UNMAP, 1);
        });
        let memfd = rustix::fs::memfd_create("buf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let _scope = QueueThreadScope::enter();
        mapper
            .map(memfd.as_fd(), writable(0x10_0000, 0x4000, 0x2000))
            .unwrap();
        let err = mapper.unmap(0x10_0000, 0x4000).unwrap_err();
        assert!(matches!(err, MapError::Frontend(_)), "{err}");
        frontend_thread.join().unwrap();
    }

    #[test]
    fn requests_outside_the_queue_thread_or_region_are_refused_without_sending() {
        let (channel, frontend) = negotiated_channel();
        let mut mapper = ShmemMapper::new(channel, 0x10000);
        let memfd = rustix::fs::memfd_create("buf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        // Not in a queue thread scope: refused.
        assert!(mapper.map(memfd.as_fd(), writable(0, 0x1000, 0)).is_err());
        let _scope = QueueThreadScope::enter();
        // Past the region end, zero length, or overflowing: refused.
        assert!(mapper
            .map(memfd.as_fd(), writable(0xf000, 0x2000, 0))
            .is_err());
        assert!(mapper.map(memfd.as_fd(), writable(0, 0, 0)).is_err());
        assert!(mapper.unmap(u64::MAX, 2).is_err());
        assert!(mapper
            .map(memfd.as_fd(), writable(0, 0x1000, u64::MAX))
            .is_err());
        // Nothing reached the frontend.
        frontend.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            (&frontend).read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn not_available_without_shmem_channel_or_region() {
        let channel = BackendChannel::default();
        assert!(
            !ShmemMapper::new(channel.clone(), 0x1000).available(),
            "no channel"
        );
        let (ours, _theirs) = UnixStream::pair().unwrap();
        channel.set(Backend::from_stream(ours));
        assert!(
            !ShmemMapper::new(channel.clone(), 0x1000).available(),
            "SHMEM not negotiated"
        );
        channel.set_shmem_negotiated();
        assert!(ShmemMapper::new(channel.clone(), 0x1000).available());
        assert!(
            !ShmemMapper::new(channel.clone(), 0).available(),
            "--hostmem 0"
        );
        channel.clear();
        assert!(
            !ShmemMapper::new(channel, 0x1000).available(),
            "disconnected"
        );
        let mut mapper = ShmemMapper::new(BackendChannel::default(), 0x1000);
        let _scope = QueueThreadScope::enter();
        assert!(matches!(
            mapper.unmap(0, 0x1000),
            Err(MapError::NotSupported)
        ));
    }
}
