//! The frontend's messages: our `VhostUserBackendReqHandlerMut`, called by the `vhost`
//! crate's `BackendReqHandler` on the connection thread.
//!
//! Nothing here waits for the device (see [`crate::transport::session`]); the one wait is
//! `GET_VRING_BASE` waiting for the chain in flight, bounded and never while the queue thread
//! waits for the frontend ([`crate::transport::gate`]). Every message is logged at trace level
//! with its arguments (`-vv`).

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as VhostUserError, GpuBackend, Result as VhostUserResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::QueueT;

use crate::transport::gate::WaitOutcome;
use crate::transport::memory::MAX_MEM_SLOTS;
use crate::transport::session::{
    lock, DeferredOp, Session, CONFIG_SIZE, CONTROL_QUEUE, MAX_QUEUE_SIZE, NUM_QUEUES,
};
use crate::transport::vring::{RingAddresses, RingRun, StopRecord};

/// How long `GET_VRING_BASE` waits for the chain being served (the frontend holds its big lock
/// meanwhile).
pub const STOP_WAIT: Duration = Duration::from_millis(200);

/// The shared memory region id of virtio-gpu's host-visible region.
const HOST_VISIBLE_SHMID: usize = 1;

fn refused(what: impl Into<String>) -> VhostUserError {
    VhostUserError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, what.into()))
}

/// Frontend-message handler of one connection.
pub struct Handler {
    session: Arc<Session>,
    /// Replaying the negotiation into a fresh `BackendReqHandler` (live upgrade): answer from
    /// the restored state, change nothing.
    restoring: bool,
    /// Kinds of memory update logged at info level so far (the first of each kind).
    logged_updates: Vec<&'static str>,
}

impl Handler {
    /// A handler for `session`.
    pub fn new(session: Arc<Session>) -> Self {
        Handler {
            session,
            restoring: false,
            logged_updates: Vec::new(),
        }
    }

    /// The session this handler serves.
    pub fn session(&self) -> Arc<Session> {
        self.session.clone()
    }

    /// Switches the replay mode of the live upgrade on or off.
    pub fn set_restoring(&mut self, restoring: bool) {
        self.restoring = restoring;
    }

    fn ring_index(&self, index: u32) -> VhostUserResult<usize> {
        let index = index as usize;
        if index < NUM_QUEUES {
            Ok(index)
        } else {
            Err(VhostUserError::InvalidParam)
        }
    }

    /// Logs a memory update: which message it came from, told apart by which regions
    /// survived (the first update of each kind at info level, every one at debug level).
    fn log_memory_update(&mut self, before: &[usize], now: &[usize]) {
        let kind = describe_memory_update(before, now);
        let level = if self.logged_updates.contains(&kind.0) {
            log::Level::Debug
        } else {
            self.logged_updates.push(kind.0);
            log::Level::Info
        };
        log::log!(level, "memory updated: {}, {} regions", kind.1, now.len());
    }

    /// A ring got a kick fd or was enabled: if it can take chains now, start it, and when it is
    /// the control queue after a stop, decide whether the frontend paused or reset the device.
    fn ring_may_start(&mut self, index: usize) {
        let session = self.session.clone();
        let mut ring = lock(&session.rings[index]);
        if ring.kick.is_none() || ring.run == RingRun::Started {
            return;
        }
        ring.run = RingRun::Started;
        let restarted = ring.stopped_at.take();
        let base = ring.queue.next_avail();
        let addresses = ring.addresses();
        drop(ring);
        if index == usize::from(CONTROL_QUEUE) {
            if let Some(stop) = restarted {
                self.decide_pause_or_reset(stop, base, addresses);
            }
        }
        session.defer(DeferredOp::RingsChanged);
    }

    /// DESIGN-lifecycle.md 2: same base and addresses is a pause (resume now), anything else a
    /// reset; at base 0 a config read while stopped tips it to a reset.
    fn decide_pause_or_reset(&mut self, stop: StopRecord, base: u16, addresses: RingAddresses) {
        let session = &self.session;
        let mut lifecycle = lock(&session.lifecycle);
        if !lifecycle.undecided {
            return;
        }
        let reason = if base != stop.next_avail {
            Some("the control queue restarted at another index")
        } else if addresses != stop.addresses {
            Some("the control queue restarted at other addresses")
        } else if base == 0 && lifecycle.config_read_while_stopped {
            Some("the driver probed the device while its queues were stopped")
        } else {
            None
        };
        lifecycle.undecided = false;
        lifecycle.config_read_while_stopped = false;
        drop(lifecycle);
        for ring in &session.rings {
            let mut ring = lock(ring);
            if reason.is_some() {
                ring.forget_stop();
            } else {
                ring.stopped_at = None;
            }
        }
        match reason {
            Some(why) => {
                log::info!("device reset by the frontend ({why}, stopped at {}, restarted at {base}): freeing everything", stop.next_avail);
                session.defer(DeferredOp::Reset("ring restart"));
            }
            None => log::info!(
                "queues resumed at {base} with the same rings: the device state is kept (pause)"
            ),
        }
    }
}

/// Names the frontend message a memory update came from, told apart by which mappings
/// survived it: `SET_MEM_TABLE` maps every region anew, `ADD_MEM_REG` keeps all and adds one,
/// `REM_MEM_REG` keeps all but one. Returns a short kind and the description.
pub fn describe_memory_update(before: &[usize], now: &[usize]) -> (&'static str, String) {
    let kept = now.iter().filter(|a| before.contains(a)).count();
    let added = now.len() - kept;
    let removed = before.len() - kept;
    match (kept, added, removed) {
        (k, 1, 0) if k > 0 => ("add", "ADD_MEM_REG (one region added)".into()),
        (_, 0, 1) => ("rem", "REM_MEM_REG (one region removed)".into()),
        (0, _, _) if before.is_empty() && now.len() == 1 => (
            "first",
            "first region (SET_MEM_TABLE or ADD_MEM_REG)".into(),
        ),
        (0, _, _) => ("table", "SET_MEM_TABLE (whole table mapped anew)".into()),
        _ => (
            "other",
            format!("{added} added, {removed} removed, {kept} kept"),
        ),
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        log::trace!("SET_OWNER");
        let mut negotiated = lock(&self.session.negotiated);
        if negotiated.owner && !self.restoring {
            return Err(VhostUserError::InvalidOperation("already claimed"));
        }
        negotiated.owner = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        log::trace!("RESET_OWNER");
        let mut negotiated = lock(&self.session.negotiated);
        negotiated.owner = false;
        negotiated.acked_features = 0;
        negotiated.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        log::trace!("RESET_DEVICE");
        log::info!("device reset by the frontend (RESET_DEVICE): freeing everything");
        for ring in &self.session.rings {
            let mut ring = lock(ring);
            ring.reset();
            ring.kick = None;
            ring.call = None;
        }
        *lock(&self.session.lifecycle) = Default::default();
        self.session.defer(DeferredOp::Reset("RESET_DEVICE"));
        self.session.defer(DeferredOp::RingsChanged);
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        log::trace!("GET_FEATURES -> {:#x}", self.session.offered_features);
        Ok(self.session.offered_features)
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        log::trace!("SET_FEATURES {features:#x}");
        if features & !self.session.offered_features != 0 {
            log::warn!(
                "frontend acked features {:#x} that were not offered",
                features & !self.session.offered_features
            );
            return Err(VhostUserError::InvalidParam);
        }
        let mut negotiated = lock(&self.session.negotiated);
        negotiated.acked_features = features;
        let enable_all = !negotiated.has_protocol_features();
        drop(negotiated);
        if self.restoring {
            return Ok(());
        }
        log::info!("frontend acked features {features:#x}");
        let event_idx =
            features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        for ring in &self.session.rings {
            let mut ring = lock(ring);
            ring.queue.set_event_idx(event_idx);
            // Without PROTOCOL_FEATURES the rings are enabled from the start (specification,
            // "Ring states").
            if enable_all {
                ring.enabled = true;
            }
        }
        self.session.defer(DeferredOp::AckFeatures(features));
        if enable_all {
            for index in 0..NUM_QUEUES {
                self.ring_may_start(index);
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        log::trace!("SET_MEM_TABLE {} regions", ctx.len());
        let mut memory = lock(&self.session.memory);
        let before = memory.local_addresses();
        memory
            .set_table(ctx, files)
            .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e.to_string())))?;
        let now = memory.local_addresses();
        drop(memory);
        self.log_memory_update(&before, &now);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        log::trace!("SET_VRING_NUM {index} {num}");
        let index = self.ring_index(index)?;
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            log::warn!("ring {index}: size {num} refused (a power of two up to {MAX_QUEUE_SIZE})");
            return Err(VhostUserError::InvalidParam);
        }
        lock(&self.session.rings[index]).queue.set_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        log::trace!(
            "SET_VRING_ADDR {index} desc {descriptor:#x} used {used:#x} avail {available:#x}"
        );
        let index = self.ring_index(index)?;
        let memory = lock(&self.session.memory);
        let translate = |addr: u64, what: &str| {
            memory.frontend_to_guest(addr).ok_or_else(|| {
                refused(format!(
                    "ring {index}: {what} address {addr:#x} is in no memory region"
                ))
            })
        };
        let addresses = RingAddresses {
            desc: translate(descriptor, "descriptor table")?,
            avail: translate(available, "available ring")?,
            used: translate(used, "used ring")?,
        };
        let mem = memory.memory();
        drop(memory);
        let mut ring = lock(&self.session.rings[index]);
        if !ring.set_addresses(addresses) {
            return Err(refused(format!(
                "ring {index}: misaligned ring addresses {addresses:?}"
            )));
        }
        ring.queue.set_ready(true);
        // The used index continues from what is in guest memory: 0 for a fresh ring, the
        // frontend's value after a pause (libvhost-user does the same).
        match ring
            .queue
            .used_idx(&*mem, std::sync::atomic::Ordering::Acquire)
        {
            Ok(idx) => ring.queue.set_next_used(idx.0),
            Err(e) => return Err(refused(format!("ring {index}: used index unreadable: {e}"))),
        }
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        log::trace!("SET_VRING_BASE {index} {base}");
        let index = self.ring_index(index)?;
        let base = u16::try_from(base).map_err(|_| VhostUserError::InvalidParam)?;
        lock(&self.session.rings[index]).queue.set_next_avail(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        let ring_index = self.ring_index(index)?;
        let session = self.session.clone();
        {
            let mut ring = lock(&session.rings[ring_index]);
            if ring.run == RingRun::Started {
                ring.run = RingRun::Stopping;
            }
        }
        match session.gate.wait_chain_done(ring_index as u16, STOP_WAIT) {
            WaitOutcome::Idle => {}
            WaitOutcome::AwaitingFrontend => log::info!(
                "ring {ring_index} stopped while its command waits for the frontend: the command completes later, its response is held until the ring resumes"
            ),
            WaitOutcome::TimedOut => log::warn!(
                "ring {ring_index} stopped while a command runs longer than {STOP_WAIT:?}: its response is held until the ring resumes"
            ),
        }
        let mut ring = lock(&session.rings[ring_index]);
        let next_avail = ring.queue.next_avail();
        ring.stop();
        ring.kick = None;
        ring.call = None;
        drop(ring);
        if ring_index == usize::from(CONTROL_QUEUE) {
            let mut lifecycle = lock(&session.lifecycle);
            lifecycle.undecided = true;
            lifecycle.config_read_while_stopped = false;
        }
        session.defer(DeferredOp::RingsChanged);
        log::trace!("GET_VRING_BASE {index} -> {next_avail}");
        log::debug!("ring {ring_index} stopped at {next_avail}");
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        log::trace!("SET_VRING_KICK {index} fd {}", fd.is_some());
        let index = self.ring_index(u32::from(index))?;
        if fd.is_none() {
            log::warn!("ring {index}: no kick fd (polling mode) is not supported; the ring is served on other wake-ups only");
        }
        lock(&self.session.rings[index]).kick = fd.map(Arc::new);
        self.ring_may_start(index);
        self.session.defer(DeferredOp::RingsChanged);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        log::trace!("SET_VRING_CALL {index} fd {}", fd.is_some());
        let index = self.ring_index(u32::from(index))?;
        let mut ring = lock(&self.session.rings[index]);
        ring.call = fd.map(Arc::new);
        // QEMU replaces the call fd right after a restart (its masked notifier, then the
        // guest's irqfd): a completion signalled on the old fd in between is lost with it, and
        // the driver then waits forever for a response that is already on the used ring
        // (seen after `cont` with commands queued during the pause). One notification on the
        // new fd covers it; a spurious one costs the driver a look at the used ring.
        ring.signal();
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        log::trace!("SET_VRING_ERR {index} fd {}", fd.is_some());
        let index = self.ring_index(u32::from(index))?;
        lock(&self.session.err_fds)[index] = fd;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        log::trace!(
            "GET_PROTOCOL_FEATURES -> {:#x}",
            self.session.offered_protocol.bits()
        );
        Ok(self.session.offered_protocol)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        log::trace!("SET_PROTOCOL_FEATURES {features:#x}");
        lock(&self.session.negotiated).acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        log::trace!("GET_QUEUE_NUM -> {NUM_QUEUES}");
        Ok(NUM_QUEUES as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        log::trace!("SET_VRING_ENABLE {index} {enable}");
        if !lock(&self.session.negotiated).has_protocol_features() {
            return Err(VhostUserError::InactiveFeature(
                vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        let index = self.ring_index(index)?;
        lock(&self.session.rings[index]).enabled = enable;
        if enable {
            self.ring_may_start(index);
        }
        self.session.defer(DeferredOp::RingsChanged);
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        log::trace!("GET_CONFIG {offset}+{size}");
        {
            let mut lifecycle = lock(&self.session.lifecycle);
            if lifecycle.undecided {
                lifecycle.config_read_while_stopped = true;
            }
        }
        let snapshot = *lock(&self.session.config);
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= CONFIG_SIZE => Ok(snapshot[start..end].to_vec()),
            _ => {
                log::warn!(
                    "get_config {offset}+{size} is outside the {CONFIG_SIZE}-byte config space"
                );
                Ok(Vec::new())
            }
        }
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        log::trace!("SET_CONFIG {offset}+{}", buf.len());
        let fits = (offset as usize)
            .checked_add(buf.len())
            .is_some_and(|end| end <= CONFIG_SIZE);
        if !fits {
            return Err(refused(format!(
                "set_config {offset}+{} is outside the {CONFIG_SIZE}-byte config space",
                buf.len()
            )));
        }
        self.session.defer(DeferredOp::WriteConfig {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        log::trace!("SET_BACKEND_REQ_FD");
        let negotiated = *lock(&self.session.negotiated);
        // Acknowledged requests make SHMEM_MAP synchronous with the guest-visible answer.
        backend.set_reply_ack_flag(negotiated.has_protocol(VhostUserProtocolFeatures::REPLY_ACK));
        backend.set_shmem_flag(negotiated.has_protocol(VhostUserProtocolFeatures::SHMEM));
        if !negotiated.has_protocol(VhostUserProtocolFeatures::REPLY_ACK) {
            log::warn!("the frontend did not take REPLY_ACK: SHMEM_MAP cannot wait for its answer");
        }
        log::info!("backend request channel installed");
        self.session.channel.set(backend);
    }

    fn set_gpu_socket(&mut self, gpu_backend: GpuBackend) -> VhostUserResult<()> {
        log::trace!("GPU_SET_SOCKET");
        log::info!(
            "display channel from the frontend installed (QEMU vhost-user-gpu display protocol)"
        );
        *lock(&self.session.display_channel) = Some(gpu_backend.clone());
        self.session.defer(DeferredOp::SetDisplay(gpu_backend));
        Ok(())
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(VhostUserError::InvalidOperation(
            "shared objects are not offered",
        ))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        Err(VhostUserError::InvalidOperation(
            "inflight tracking is not offered",
        ))
    }

    fn set_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
        _file: File,
    ) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation(
            "inflight tracking is not offered",
        ))
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        log::trace!("GET_MAX_MEM_SLOTS -> {MAX_MEM_SLOTS}");
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        log::trace!("ADD_MEM_REG {gpa:#x}+{size:#x}");
        let mut memory = lock(&self.session.memory);
        let before = memory.local_addresses();
        memory
            .add(region, fd)
            .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e.to_string())))?;
        let now = memory.local_addresses();
        drop(memory);
        self.log_memory_update(&before, &now);
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        log::trace!("REM_MEM_REG {gpa:#x}+{size:#x}");
        let mut memory = lock(&self.session.memory);
        let before = memory.local_addresses();
        memory
            .remove(region)
            .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e.to_string())))?;
        let now = memory.local_addresses();
        drop(memory);
        self.log_memory_update(&before, &now);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        Err(VhostUserError::InvalidOperation(
            "device state transfer is not offered",
        ))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation(
            "device state transfer is not offered",
        ))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        log::trace!("GET_SHMEM_CONFIG");
        lock(&self.session.negotiated).shmem_config_asked = true;
        self.session.channel.set_shmem_negotiated();
        let hostmem = self.session.settings.hostmem;
        if hostmem == 0 {
            log::info!("GET_SHMEM_CONFIG: no host-visible region (--hostmem 0)");
            return Ok(VhostUserShMemConfig::new(0, &[]));
        }
        log::info!("GET_SHMEM_CONFIG: shmid 1 = {hostmem:#x} bytes");
        // The array index is the shmid: shmid 0 unused, shmid 1 the host-visible region.
        let mut sizes = [0u64; HOST_VISIBLE_SHMID + 1];
        sizes[HOST_VISIBLE_SHMID] = hostmem;
        Ok(VhostUserShMemConfig::new(sizes.len() as u32, &sizes))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation(
            "dirty logging is not offered",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_updates_are_named_by_what_survived() {
        let describe = |b: &[usize], n: &[usize]| describe_memory_update(b, n).1;
        assert_eq!(
            describe(&[], &[1]),
            "first region (SET_MEM_TABLE or ADD_MEM_REG)"
        );
        assert_eq!(describe(&[1], &[1, 2]), "ADD_MEM_REG (one region added)");
        assert_eq!(describe(&[1, 2], &[1]), "REM_MEM_REG (one region removed)");
        assert_eq!(
            describe(&[1, 2], &[3, 4, 5]),
            "SET_MEM_TABLE (whole table mapped anew)"
        );
        assert_eq!(describe(&[1, 2], &[1, 3]), "1 added, 1 removed, 1 kept");
    }
}
