//! The host-visible shared memory region, handled the way QEMU handles it.
//!
//! The frontend reserves an inaccessible (`PROT_NONE`) anonymous range as large as the
//! backend announced with `GET_SHMEM_CONFIG`. A backend `SHMEM_MAP` request maps the sent
//! fd over part of it with `MAP_FIXED|MAP_SHARED`; `SHMEM_UNMAP` puts an inaccessible
//! anonymous mapping back. Bad offsets or lengths get an error reply, nothing mapped.
//!
//! The `unsafe` of the test frontend's memory handling lives here: the reservation, the
//! `MAP_FIXED` mappings into it and the volatile views of mapped ranges.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};
use vm_memory::VolatileSlice;

use crate::{Error, Result};

/// What the backend asked for on its request channel, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmemEvent {
    /// A mapping that was made.
    Mapped {
        /// Offset in the region.
        offset: u64,
        /// Length.
        len: u64,
        /// Whether it was mapped writable.
        writable: bool,
    },
    /// A mapping that was removed.
    Unmapped {
        /// Offset in the region.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A request that was refused (bad shmid, range or overlap).
    Refused {
        /// `SHMEM_MAP` or `SHMEM_UNMAP`.
        request: &'static str,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
    },
}

#[derive(Debug, Default)]
struct RegionState {
    /// offset -> (len, writable)
    mappings: BTreeMap<u64, (u64, bool)>,
    /// The fd (a duplicate) and fd offset each live mapping came from.
    fds: BTreeMap<u64, (OwnedFd, u64)>,
    /// Bumped on every map and unmap (the frontend re-sends its memory table then).
    generation: u64,
    events: Vec<ShmemEvent>,
    /// Test knob: answer every `SHMEM_MAP` with an error, as QEMU does for a bad range.
    refuse_maps: bool,
}

/// Test knob: `SHMEM_MAP` requests wait here until released (a frontend busy elsewhere, as
/// QEMU is while it waits for a reply from the backend).
#[derive(Debug, Default)]
struct HoldGate {
    holding: bool,
    /// Requests waiting now.
    waiting: u32,
}

/// The reserved host-visible region (shmid 1) and its live mappings.
pub struct SharedMemoryRegion {
    shmid: u8,
    base: NonNull<u8>,
    size: u64,
    state: Mutex<RegionState>,
    hold: Mutex<HoldGate>,
    hold_changed: std::sync::Condvar,
}

// SAFETY: the reservation is owned by this struct; byte access goes through bounds- and
// mapping-checked copies while the state lock is held, so a concurrent unmap cannot race it.
unsafe impl Send for SharedMemoryRegion {}
// SAFETY: see `Send`.
unsafe impl Sync for SharedMemoryRegion {}

impl SharedMemoryRegion {
    /// Reserves `size` bytes of inaccessible address space for region `shmid`.
    pub fn reserve(shmid: u8, size: u64) -> Result<Self> {
        let len = usize::try_from(size).map_err(|_| Error::Malformed("region size".into()))?;
        if len == 0 {
            return Err(Error::Unsupported("an empty shared memory region"));
        }
        // SAFETY: a new anonymous reservation at a kernel-chosen address.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| Error::Io {
            what: "reserve shared memory region",
            source: e.into(),
        })?;
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::Malformed("mmap returned NULL".into()))?;
        Ok(Self {
            shmid,
            base,
            size,
            state: Mutex::new(RegionState::default()),
            hold: Mutex::new(HoldGate::default()),
            hold_changed: std::sync::Condvar::new(),
        })
    }

    fn hold_gate(&self) -> MutexGuard<'_, HoldGate> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes further `SHMEM_MAP` requests wait (unanswered) until [`Self::release_maps`].
    pub fn hold_maps(&self) {
        self.hold_gate().holding = true;
    }

    /// Lets held and further `SHMEM_MAP` requests through.
    pub fn release_maps(&self) {
        self.hold_gate().holding = false;
        self.hold_changed.notify_all();
    }

    /// Waits until a `SHMEM_MAP` request is being held, at most `limit`.
    pub fn wait_map_held(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut gate = self.hold_gate();
        while gate.waiting == 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            gate = self
                .hold_changed
                .wait_timeout(gate, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn wait_while_held(&self) {
        let mut gate = self.hold_gate();
        if !gate.holding {
            return;
        }
        gate.waiting += 1;
        self.hold_changed.notify_all();
        while gate.holding {
            gate = self
                .hold_changed
                .wait(gate)
                .unwrap_or_else(|p| p.into_inner());
        }
        gate.waiting -= 1;
    }

    /// Region size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn state(&self) -> MutexGuard<'_, RegionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live mappings as `(offset, len)`.
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.state()
            .mappings
            .iter()
            .map(|(&o, &(l, _))| (o, l))
            .collect()
    }

    /// Makes the frontend refuse (`true`) or serve (`false`) further `SHMEM_MAP` requests,
    /// to test how a backend copes with a frontend that cannot map.
    pub fn set_refuse_maps(&self, refuse: bool) {
        self.state().refuse_maps = refuse;
    }

    /// A duplicate of the fd the backend sent for the mapping at `offset`.
    pub fn mapped_fd(&self, offset: u64) -> Option<OwnedFd> {
        self.state()
            .fds
            .get(&offset)
            .and_then(|(fd, _)| fd.try_clone().ok())
    }

    /// Counter bumped by every map and unmap.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// The live mappings as memory-table regions placed at `base_gpa` (where a guest would
    /// see the window).
    pub fn table_regions(&self, base_gpa: u64) -> Vec<TableRegion> {
        let state = self.state();
        state
            .mappings
            .iter()
            .filter_map(|(&offset, &(len, _))| {
                let (fd, fd_offset) = state.fds.get(&offset)?;
                let fd = fd.try_clone().ok()?;
                let addr = self.base.as_ptr() as u64 + offset;
                Some(TableRegion {
                    guest_phys_addr: base_gpa.checked_add(offset)?,
                    len,
                    user_addr: addr,
                    fd_offset: *fd_offset,
                    fd,
                })
            })
            .collect()
    }

    /// Everything the backend asked for so far.
    pub fn events(&self) -> Vec<ShmemEvent> {
        self.state().events.clone()
    }

    fn check_mapped(state: &RegionState, offset: u64, len: u64, write: bool) -> Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::GuestMemory("offset overflow".into()))?;
        let covered = state
            .mappings
            .range(..=offset)
            .next_back()
            .is_some_and(|(&o, &(l, w))| end <= o + l && (w || !write));
        if covered {
            Ok(())
        } else {
            Err(Error::GuestMemory(format!(
                "{offset:#x}+{len:#x} is not inside one {} mapping of the region",
                if write { "writable" } else { "readable" }
            )))
        }
    }

    /// The bytes at `offset..offset+len` of the reservation, for volatile copies (the
    /// backend may write them at any time through its own mapping of the same buffer).
    ///
    /// # Safety
    /// `offset..offset+len` must lie inside a live mapping of the region (checked with
    /// `check_mapped` under the state lock, held for as long as the slice is used).
    unsafe fn window(&self, offset: u64, len: usize) -> VolatileSlice<'_> {
        // SAFETY: inside the reservation, which lives as long as `self`, and mapped (the
        // caller's guarantee).
        unsafe { VolatileSlice::new(self.base.as_ptr().add(offset as usize), len) }
    }

    /// Reads bytes through the frontend's mapping (what a guest sees through the BAR).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let state = self.state();
        Self::check_mapped(&state, offset, len as u64, false)?;
        let mut out = vec![0u8; len];
        // SAFETY: the range lies inside a live mapping (checked under the lock we hold, so
        // no unmap can run concurrently) of the reservation we own.
        unsafe { self.window(offset, len) }.copy_to(&mut out);
        Ok(out)
    }

    /// Writes bytes through the frontend's mapping.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let state = self.state();
        Self::check_mapped(&state, offset, data.len() as u64, true)?;
        // SAFETY: as in `read`; the mapping is writable.
        unsafe { self.window(offset, data.len()) }.copy_from(data);
        Ok(())
    }

    fn make_inaccessible(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: `offset + len <= size` (checked by callers); MAP_FIXED replaces exactly
        // that part of our own reservation, no Rust reference points into it.
        unsafe {
            mmap_anonymous(
                self.base.as_ptr().add(offset as usize).cast(),
                len as usize,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        }
        .map(|_| ())
        .map_err(io::Error::from)
    }

    /// What QEMU does on device reset: the whole region becomes inaccessible again.
    pub fn unmap_all(&self) -> Result<()> {
        let mut state = self.state();
        self.make_inaccessible(0, self.size)
            .map_err(Error::io("reset shared memory region"))?;
        let old: Vec<_> = std::mem::take(&mut state.mappings).into_iter().collect();
        state.fds.clear();
        state.generation += 1;
        for (offset, (len, _)) in old {
            state.events.push(ShmemEvent::Unmapped { offset, len });
        }
        Ok(())
    }

    fn valid_range(&self, req: &VhostUserMMap) -> Option<(u64, u64)> {
        let (offset, len) = (req.shm_offset, req.len);
        let end = offset.checked_add(len)?;
        (req.shmid == self.shmid && len > 0 && end <= self.size).then_some((offset, len))
    }

    fn refuse(&self, request: &'static str, req: &VhostUserMMap) -> HandlerResult<u64> {
        let (offset, len) = (req.shm_offset, req.len);
        log::warn!(
            "refusing {request} shmid {} {offset:#x}+{len:#x}",
            req.shmid
        );
        self.state().events.push(ShmemEvent::Refused {
            request,
            offset,
            len,
        });
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

impl VhostUserFrontendReqHandler for SharedMemoryRegion {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        self.wait_while_held();
        let Some((offset, len)) = self.valid_range(req) else {
            return self.refuse("SHMEM_MAP", req);
        };
        if self.state().refuse_maps {
            return self.refuse("SHMEM_MAP", req);
        }
        let mut state = self.state();
        let overlaps = state
            .mappings
            .range(..offset + len)
            .next_back()
            .is_some_and(|(&o, &(l, _))| o + l > offset);
        if overlaps {
            drop(state);
            return self.refuse("SHMEM_MAP", req);
        }
        let writable =
            VhostUserMMapFlags::from_bits_retain(req.flags).contains(VhostUserMMapFlags::WRITABLE);
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: the fd is alive for this call (the request handler owns it).
        let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        // SAFETY: the target range is inside our reservation (checked by `valid_range`) and
        // not mapped by anything else (checked above); MAP_FIXED replaces our PROT_NONE pages.
        let mapped = unsafe {
            mmap(
                self.base.as_ptr().add(offset as usize).cast(),
                len as usize,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                req.fd_offset,
            )
        };
        if let Err(e) = mapped {
            log::warn!("SHMEM_MAP {offset:#x}+{len:#x}: mmap failed: {e}");
            // A failed MAP_FIXED may have removed the old pages: restore the reservation.
            let _ = self.make_inaccessible(offset, len);
            state.events.push(ShmemEvent::Refused {
                request: "SHMEM_MAP",
                offset,
                len,
            });
            return Err(e.into());
        }
        state.mappings.insert(offset, (len, writable));
        if let Ok(dup) = fd.try_clone_to_owned() {
            state.fds.insert(offset, (dup, req.fd_offset));
        }
        state.generation += 1;
        state.events.push(ShmemEvent::Mapped {
            offset,
            len,
            writable,
        });
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let Some((offset, len)) = self.valid_range(req) else {
            return self.refuse("SHMEM_UNMAP", req);
        };
        let mut state = self.state();
        if state.mappings.get(&offset).map(|&(l, _)| l) != Some(len) {
            drop(state);
            return self.refuse("SHMEM_UNMAP", req);
        }
        self.make_inaccessible(offset, len)?;
        state.mappings.remove(&offset);
        state.fds.remove(&offset);
        state.generation += 1;
        state.events.push(ShmemEvent::Unmapped { offset, len });
        Ok(0)
    }
}

impl Drop for SharedMemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the whole reservation is ours; nothing borrows it.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.size as usize) };
    }
}

/// Called on the request thread after each acknowledged map or unmap.
pub type MappingChangeHook = Box<dyn Fn(&SharedMemoryRegion) + Send>;

/// A live mapping described as a memory-table region.
#[derive(Debug)]
pub struct TableRegion {
    /// Where the guest sees it (window base + offset).
    pub guest_phys_addr: u64,
    /// Length.
    pub len: u64,
    /// The frontend's address of the mapping.
    pub user_addr: u64,
    /// Offset in the fd.
    pub fd_offset: u64,
    /// The buffer (a duplicate of what the backend sent).
    pub fd: OwnedFd,
}

/// The thread answering the backend's requests (`SET_BACKEND_REQ_FD` channel).
pub struct BackendRequestServer {
    rx_fd: i32,
    thread: Option<JoinHandle<()>>,
}

impl BackendRequestServer {
    /// Creates the channel; returns the server and the fd to send to the backend.
    pub fn start(
        region: Arc<SharedMemoryRegion>,
        reply_ack: bool,
        on_change: Option<MappingChangeHook>,
    ) -> Result<(Self, std::os::fd::OwnedFd)> {
        let mut handler = FrontendReqHandler::new(region.clone()).map_err(|e| Error::Io {
            what: "backend request channel",
            source: io::Error::other(e),
        })?;
        handler.set_reply_ack_flag(reply_ack);
        // SAFETY: the fd belongs to `handler`, alive here; we duplicate it at once.
        let tx = unsafe { BorrowedFd::borrow_raw(handler.get_tx_raw_fd()) }
            .try_clone_to_owned()
            .map_err(Error::io("dup backend request fd"))?;
        let rx_fd = handler.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("backend-requests".into())
            .spawn(move || {
                let mut seen = region.generation();
                loop {
                    match handler.handle_request() {
                        Ok(_) | Err(vhost::vhost_user::Error::ReqHandlerError(_)) => {}
                        Err(e) => {
                            log::debug!("backend request channel closed: {e}");
                            break;
                        }
                    }
                    // Like QEMU: after the (acknowledged) change, a new memory table.
                    let now = region.generation();
                    if now != seen {
                        seen = now;
                        if let Some(hook) = &on_change {
                            hook(&region);
                        }
                    }
                }
            })
            .map_err(Error::io("spawn backend request thread"))?;
        Ok((
            Self {
                rx_fd,
                thread: Some(thread),
            },
            tx,
        ))
    }
}

impl Drop for BackendRequestServer {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by the handler inside the thread, which is still alive
        // (we join it below); shutdown only wakes its blocking receive.
        let fd = unsafe { BorrowedFd::borrow_raw(self.rx_fd) };
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn req(offset: u64, len: u64, flags: u64) -> VhostUserMMap {
        VhostUserMMap {
            shmid: 1,
            shm_offset: offset,
            len,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn map_unmap_and_refusals_like_qemu() {
        let region = SharedMemoryRegion::reserve(1, 1 << 20).unwrap();
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(&[7u8; 8192]).unwrap();
        let w = VhostUserMMapFlags::WRITABLE.bits();
        region.shmem_map(&req(4096, 8192, w), &file).unwrap();
        assert_eq!(region.read(4096, 4).unwrap(), vec![7; 4]);
        region.write(4096, &[1, 2]).unwrap();
        // Shared: the write reached the file.
        let mut back = [0u8; 2];
        rustix::io::pread(&file, &mut back, 0).unwrap();
        assert_eq!(back, [1, 2]);
        // Outside any mapping, past the end, overlapping, wrong shmid: refused.
        assert!(region.read(0, 1).is_err());
        assert!(region
            .shmem_map(&req((1 << 20) - 4096, 8192, w), &file)
            .is_err());
        assert!(region.shmem_map(&req(8192, 4096, w), &file).is_err());
        assert!(region
            .shmem_map(&req(u64::MAX - 10, 4096, w), &file)
            .is_err());
        assert!(region
            .shmem_map(
                &VhostUserMMap {
                    shmid: 2,
                    ..req(0, 4096, w)
                },
                &file
            )
            .is_err());
        assert!(
            region.shmem_unmap(&req(4096, 4096, 0)).is_err(),
            "partial unmap"
        );
        assert_eq!(region.mappings(), vec![(4096, 8192)]);
        assert!(region.mapped_fd(4096).is_some());
        region.shmem_unmap(&req(4096, 8192, 0)).unwrap();
        assert!(region.mappings().is_empty());
        assert!(region.read(4096, 1).is_err());
        // Read-only mapping refuses writes through the frontend helper.
        region.shmem_map(&req(0, 4096, 0), &file).unwrap();
        assert!(region.write(0, &[1]).is_err());
        region.unmap_all().unwrap();
        assert!(region.mappings().is_empty());
        let refused = region
            .events()
            .iter()
            .filter(|e| matches!(e, ShmemEvent::Refused { .. }))
            .count();
        assert_eq!(refused, 5);
    }
}
