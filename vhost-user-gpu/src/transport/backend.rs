//! The `vhost-user-backend` glue: one [`GpuBackend`] per frontend connection.
//!
//! Threads and locks. The vhost library calls frontend-message handlers (features, memory
//! table, config space, reset, ...) on its connection thread, and [`GpuBackend::handle_event`]
//! on one worker thread that serves both queues. The device core sits behind one mutex that
//! the worker holds while it processes a command, and a command may wait for the frontend to
//! acknowledge a `SHMEM_MAP`. The frontend (QEMU) may at the same moment be blocked, with its
//! big lock held, waiting for our reply to a message on the connection thread, and it reads
//! the acknowledgement channel only in its main loop. So a connection-thread handler must
//! never wait for the device mutex:
//! - config space reads are answered from a snapshot refreshed after every device change;
//! - everything that changes the device from the connection thread (feature ack, config
//!   write, reset, display sink swap) is queued as a [`DeferredOp`] and applied right away if
//!   the device is idle (`try_lock`), otherwise by the worker as soon as it releases the
//!   device (it re-checks the queue after every release, so nothing is left behind);
//! - `update_memory` only stores the new memory handle (QEMU sends a whole new table, or with
//!   `CONFIGURE_MEM_SLOTS` one `ADD_MEM_REG`/`REM_MEM_REG`, after each `SHMEM_MAP`/`UNMAP`,
//!   so it must be cheap and lock-free with respect to the device).
//!
//! Fenced answers that wait ([`Completion::Later`]): the chain (head and writable
//! descriptors) and the answer are held under the token; the device's event fd is registered
//! with the worker's epoll ([`EVENT_DEVICE`], by the server after the daemon is made), and
//! when it is readable the worker asks the device which tokens are done and answers their
//! chains, all with the device locked (so a reset, which drops the held chains unanswered,
//! cannot interleave). While the device says it cannot take more, the worker leaves the rest
//! of the control queue in the ring (back-pressure) and comes back to it when answers went.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueOwnedT;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend as _, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::device::ports::{DisplaySink, GuestMemory, RegionMapper};
use crate::device::{Completion, FenceToken, GpuDevice};
use crate::display::fanout::SharedSink;
use crate::display::{FanOut, QemuDisplay};
use crate::guest_log::GUEST_LOG;
use crate::protocol::{cmd, CONFIG_SIZE};
use crate::queue_thread::QueueThreadScope;
use crate::transport::chain::{self, DescriptorRef, WriteOutcome};
use crate::transport::shmem::{BackendChannel, ShmemMapper};
use crate::transport::sys::ExitEvent;

/// Queue index of the control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Queue index of the cursor queue.
pub const CURSOR_QUEUE: u16 = 1;
/// Number of queues.
pub const NUM_QUEUES: usize = 2;
/// Largest queue size accepted (QEMU uses 256 for control and 16 for cursor).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Worker epoll data of the device's event fd (above the queues and the exit event, which
/// vhost-user-backend reserves).
pub const EVENT_DEVICE: u16 = NUM_QUEUES as u16 + 1;

/// Builds the device core of a new connection from the connection's region mapper and
/// display sink (the caller adds allocator, advisor and configuration).
pub type DeviceFactory =
    dyn Fn(Box<dyn RegionMapper>, Box<dyn DisplaySink>) -> io::Result<GpuDevice> + Send + Sync;

/// Settings of the transport, fixed for the daemon's life.
#[derive(Clone)]
pub struct TransportSettings {
    /// Size of the host-visible region (shmid 1) in bytes; 0 disables blob mapping.
    pub hostmem: u64,
    /// A capture sink shared by all connections (`--capture-dir`), if any.
    pub capture: Option<SharedSink>,
}

/// A change requested from the connection thread, applied when the device is idle.
pub enum DeferredOp {
    /// `VHOST_USER_SET_FEATURES`.
    AckFeatures(u64),
    /// `VHOST_USER_SET_CONFIG`.
    WriteConfig {
        /// Offset in the config space.
        offset: u32,
        /// Bytes written.
        data: Vec<u8>,
    },
    /// `VHOST_USER_RESET_DEVICE` or a queue stop.
    Reset,
    /// `VHOST_USER_GPU_SET_SOCKET`: the new display sink.
    SetDisplay(Box<dyn DisplaySink>),
}

/// A control chain whose answer waits for a fence.
struct HeldChain {
    head: u16,
    writable: Vec<(GuestAddress, u32)>,
    response: Vec<u8>,
}

/// How far a queue was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Every available chain was taken.
    Drained,
    /// As many chains as the device could take were taken; there may be more.
    MaybeMore,
    /// The device can take no more: the rest stays in the ring until answers went.
    Throttled,
}

/// What became of one chain.
enum Served {
    /// Answered: the used length.
    Now(u32),
    /// Held until its token is done.
    Held,
}

/// How much of the deferred-op queue to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyScope {
    /// Everything (the device is idle).
    All,
    /// Everything before the first reset (between chains of a batch).
    BeforeReset,
}

/// The vhost-user backend of one connection.
pub struct GpuBackend {
    device: Mutex<GpuDevice>,
    deferred: Mutex<Vec<DeferredOp>>,
    config_snapshot: Mutex<[u8; CONFIG_SIZE]>,
    memory: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    /// Where the regions of the last memory update are mapped here, and the kinds of update
    /// logged at info level so far, to log what changed.
    mapped_regions: Mutex<(Vec<usize>, Vec<&'static str>)>,
    channel: BackendChannel,
    settings: TransportSettings,
    event_idx: AtomicBool,
    /// QEMU's display channel, to ask it for the preferred modes (queue thread only: the
    /// reply comes from QEMU's main loop).
    display_channel: Mutex<Option<vhost::vhost_user::GpuBackend>>,
    exit: Arc<ExitEvent>,
    features: u64,
    /// Control chains whose answers wait, by token (changed only with the device locked).
    held: Mutex<HashMap<FenceToken, HeldChain>>,
    /// The control queue was left unread because the device could take no more.
    throttled: AtomicBool,
}

impl GpuBackend {
    /// A backend for a new connection: a fresh device from `factory`.
    pub fn new(
        settings: TransportSettings,
        factory: &DeviceFactory,
        exit: Arc<ExitEvent>,
    ) -> io::Result<Self> {
        let channel = BackendChannel::default();
        let mapper = ShmemMapper::new(channel.clone(), settings.hostmem);
        let device = factory(Box::new(mapper), initial_display(&settings))?;
        // VIRTIO_F_RING_RESET: QEMU 10's vhost-user-gpu-pci does not filter virtio-pci's
        // transport features, so the guest acks RING_RESET and QEMU passes it on in
        // SET_FEATURES; vhost-user-backend refuses any acked bit that was not offered and
        // drops the connection. Offering it is harmless here: the Linux virtio-gpu driver
        // never resets a single queue, and frontends that filter (QEMU 11.1's generic
        // device) show it to the guest the same way QEMU 10 already does.
        let features = device.features()
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_F_RING_RESET
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let config = device.read_config();
        Ok(GpuBackend {
            device: Mutex::new(device),
            deferred: Mutex::new(Vec::new()),
            config_snapshot: Mutex::new(config),
            memory: RwLock::new(None),
            mapped_regions: Mutex::new((Vec::new(), Vec::new())),
            channel,
            settings,
            event_idx: AtomicBool::new(false),
            display_channel: Mutex::new(None),
            exit,
            features,
            held: Mutex::new(HashMap::new()),
            throttled: AtomicBool::new(false),
        })
    }

    /// The device's event fd, to register with the worker's epoll as [`EVENT_DEVICE`]. The
    /// fd lives as long as this backend.
    pub fn device_event_fd(&self) -> Option<RawFd> {
        self.lock_device().event_fd().map(|fd| fd.as_raw_fd())
    }

    /// Locks the device. A panic inside the device core is caught per command (see
    /// `serve_chain`), so a poisoned lock still holds a usable, reset device.
    fn lock_device(&self) -> MutexGuard<'_, GpuDevice> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` and applies it at once if the device is idle (never waits for it).
    fn defer(&self, op: DeferredOp) {
        lock(&self.deferred).push(op);
        let device = match self.device.try_lock() {
            Ok(device) => device,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // The worker holds it: it applies the queue when it lets go.
            Err(TryLockError::WouldBlock) => return,
        };
        let mut device = device;
        self.apply_deferred(&mut device, ApplyScope::All);
    }

    /// Applies queued ops (device locked by the caller) and refreshes the config snapshot.
    fn apply_deferred(&self, device: &mut GpuDevice, scope: ApplyScope) {
        let ops = {
            let mut queue = lock(&self.deferred);
            let end = match scope {
                ApplyScope::All => queue.len(),
                ApplyScope::BeforeReset => queue
                    .iter()
                    .position(|op| matches!(op, DeferredOp::Reset))
                    .unwrap_or(queue.len()),
            };
            queue.drain(..end).collect::<Vec<_>>()
        };
        for op in ops {
            match op {
                DeferredOp::AckFeatures(features) => device.ack_features(features),
                DeferredOp::WriteConfig { offset, data } => device.write_config(offset, &data),
                DeferredOp::Reset => {
                    self.throttled.store(false, Ordering::Release);
                    let held = std::mem::take(&mut *lock(&self.held));
                    log::info!(
                        "device reset{}",
                        if held.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} fenced answers dropped unanswered)", held.len())
                        }
                    );
                    device.reset();
                }
                DeferredOp::SetDisplay(sink) => device.set_display(sink),
            }
        }
        self.refresh_config(device);
    }

    fn refresh_config(&self, device: &mut GpuDevice) {
        *lock(&self.config_snapshot) = device.read_config();
        if device.take_config_changed() {
            // vhost 0.18's Backend has no VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, and QEMU's
            // vhost-user-gpu-pci manages the display events itself; the guest sees the new
            // value on its next config read.
            log::debug!(
                "config space changed; frontend not notified (no CONFIG_CHANGE_MSG support)"
            );
        }
    }

    /// After the worker released the device: apply anything queued meanwhile.
    fn drain_deferred_after_release(&self) {
        while !lock(&self.deferred).is_empty() {
            let mut device = self.lock_device();
            self.apply_deferred(&mut device, ApplyScope::All);
        }
    }

    /// Serves the available chains of `vring` (queue `index`): all of them, or on the
    /// control queue only as many as the device can take (the rest stay in the ring).
    fn process_queue(&self, index: u16, vring: &VringRwLock) -> Progress {
        let Some(atomic) = read_lock(&self.memory).clone() else {
            log::warn!("queue {index} kicked before the frontend sent a memory table; ignored");
            return Progress::Drained;
        };
        let mem = atomic.memory();
        // Each control chain may leave one answer waiting: take no more than can wait.
        let room = if index == CONTROL_QUEUE {
            self.lock_device().fence_room()
        } else {
            usize::MAX
        };
        if room == 0 {
            if !self.throttled.swap(true, Ordering::AcqRel) {
                log::debug!(
                    "control queue: the most fenced answers that may wait do; leaving the \
                     rest of the queue until some are answered"
                );
            }
            return Progress::Throttled;
        }
        // Collect the chains first: add_used locks the vring again.
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(iter) => iter.take(room).collect(),
            Err(e) => {
                self.guest_warn(format_args!(
                    "queue {index}: cannot read the available ring: {e}"
                ));
                return Progress::Drained;
            }
        };
        if chains.is_empty() {
            return Progress::Drained;
        }
        let full = chains.len() == room;
        // The display's modes are asked at most once per batch: every chain of the batch was
        // already available when the ring was read, so one answer serves them all (at queue
        // depth 64 this saves up to 63 display round trips per batch).
        let mut modes_asked = false;
        for chain in chains {
            let head = chain.head_index();
            let descriptors: Vec<DescriptorRef> = chain
                .map(|d| DescriptorRef {
                    addr: d.addr(),
                    len: d.len(),
                    write_only: d.is_write_only(),
                })
                .collect();
            match self.serve_chain(index, head, &mem, descriptors, &mut modes_asked) {
                Served::Now(used) => {
                    if let Err(e) = vring.add_used(head, used) {
                        self.guest_warn(format_args!(
                            "queue {index}: add_used({head}) failed: {e}"
                        ));
                    }
                }
                Served::Held => {}
            }
        }
        self.drain_deferred_after_release();
        notify_guest(index, vring);
        if full {
            Progress::MaybeMore
        } else {
            Progress::Drained
        }
    }

    /// The device's event fd is readable: answers whose fences are done go to their held
    /// chains; a control queue left for back-pressure is served again.
    fn service_device(&self, vrings: &[VringRwLock]) {
        let Some(control) = vrings.get(usize::from(CONTROL_QUEUE)) else {
            return;
        };
        let completed = {
            let mut device = self.lock_device();
            // A reset queued meanwhile (the ring was stopped) goes first: it drops the held
            // chains, which must not be written then.
            self.apply_deferred(&mut device, ApplyScope::All);
            let memory = read_lock(&self.memory).clone();
            // Before the frontend's memory table nothing can wait (no chain was read).
            let tokens = match &memory {
                Some(atomic) => {
                    let _scope = QueueThreadScope::enter();
                    device.service(&atomic.memory())
                }
                None => Vec::new(),
            };
            let mut held = lock(&self.held);
            let mut completed = 0;
            for token in tokens {
                let Some(chain) = held.remove(&token) else {
                    log::debug!("fence token {} has no held chain", token.get());
                    continue;
                };
                let used = match &memory {
                    Some(atomic) => {
                        let mem = atomic.memory();
                        self.write_answer(CONTROL_QUEUE, &mem, &chain.writable, &chain.response)
                    }
                    None => 0,
                };
                if let Err(e) = control.add_used(chain.head, used) {
                    self.guest_warn(format_args!(
                        "control queue: add_used({}) failed: {e}",
                        chain.head
                    ));
                }
                completed += 1;
            }
            completed
        };
        if completed > 0 {
            notify_guest(CONTROL_QUEUE, control);
        }
        self.drain_deferred_after_release();
        if self.throttled.load(Ordering::Acquire) && completed > 0 {
            self.throttled.store(false, Ordering::Release);
            self.serve_ring(CONTROL_QUEUE, control);
        }
    }

    /// Serves a ring until it is empty (with EVENT_IDX: until no kick was missed) or left
    /// for back-pressure.
    fn serve_ring(&self, index: u16, vring: &VringRwLock) {
        let event_idx = self.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                // Tell the driver not to kick while we drain; re-check after re-enabling.
                if let Err(e) = vring.disable_notification() {
                    log::warn!("queue {index}: disable_notification: {e}");
                }
            }
            match self.process_queue(index, vring) {
                Progress::Throttled => {
                    // Back-pressure: the device event brings us back; kicks meanwhile are
                    // harmless (the ring is read again then).
                    if event_idx {
                        let _ = vring.enable_notification();
                    }
                    break;
                }
                Progress::MaybeMore => continue,
                Progress::Drained => {}
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue, // more arrived meanwhile
                Ok(false) => break,
                Err(e) => {
                    log::warn!("queue {index}: enable_notification: {e}");
                    break;
                }
            }
        }
    }

    /// Serves one chain (head `head`): answered now (the used length) or held for its fence.
    /// `modes_asked`: whether the display's modes were already asked for in this batch.
    fn serve_chain(
        &self,
        index: u16,
        head: u16,
        mem: &GuestMemory,
        descriptors: Vec<DescriptorRef>,
        modes_asked: &mut bool,
    ) -> Served {
        let parsed = match chain::read_chain(mem, descriptors) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.guest_warn(format_args!("queue {index}: malformed chain skipped: {e}"));
                return Served::Now(0);
            }
        };
        if index == CONTROL_QUEUE && parsed.writable.is_empty() {
            self.guest_warn(format_args!(
                "control queue: chain without a writable part skipped (no room for the response)"
            ));
            return Served::Now(0);
        }
        let completion = {
            let mut device = self.lock_device();
            let _scope = QueueThreadScope::enter();
            if index == CONTROL_QUEUE && !*modes_asked && asks_for_modes(&parsed.request) {
                self.refresh_outputs_from_display(&mut device);
                *modes_asked = true;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if index == CONTROL_QUEUE {
                    device.process_control(mem, &parsed.request)
                } else {
                    Completion::Now(device.process_cursor(mem, &parsed.request))
                }
            }));
            let completion = match result {
                Ok(completion) => completion,
                Err(_) => {
                    self.guest_warn(format_args!(
                        "device core panicked on a queue {index} command: device reset, command dropped"
                    ));
                    lock(&self.held).clear();
                    device.reset();
                    Completion::Now(Vec::new())
                }
            };
            if let Completion::Later { token, response } = completion {
                // Held with the device locked: the token cannot be done before it is here.
                lock(&self.held).insert(
                    token,
                    HeldChain {
                        head,
                        writable: parsed.writable,
                        response,
                    },
                );
                self.apply_deferred(&mut device, ApplyScope::BeforeReset);
                return Served::Held;
            }
            // Between two chains of a batch: apply what came in, but keep a reset (and what
            // follows it) for the end of the batch, so the chains taken from the ring before
            // the frontend stopped it complete against the state they were sent to.
            self.apply_deferred(&mut device, ApplyScope::BeforeReset);
            completion
        };
        let Completion::Now(response) = completion else {
            unreachable!("held answers returned above");
        };
        Served::Now(self.write_answer(index, mem, &parsed.writable, &response))
    }

    /// Writes `response` into a chain's writable descriptors; returns the used length.
    fn write_answer(
        &self,
        index: u16,
        mem: &GuestMemory,
        writable: &[(GuestAddress, u32)],
        response: &[u8],
    ) -> u32 {
        let writable_len: u64 = writable.iter().map(|&(_, len)| u64::from(len)).sum();
        let (used, outcome) = chain::write_response(mem, writable, response);
        match outcome {
            WriteOutcome::Complete => {}
            WriteOutcome::ErrorHeaderOnly => self.guest_warn(format_args!(
                "queue {index}: {}-byte response does not fit {writable_len} writable bytes; \
                 sent ERR_UNSPEC",
                response.len(),
            )),
            WriteOutcome::Nothing if index == CURSOR_QUEUE || response.is_empty() => {}
            WriteOutcome::Nothing => self.guest_warn(format_args!(
                "queue {index}: {}-byte response does not fit {writable_len} writable bytes; \
                 nothing written",
                response.len(),
            )),
        }
        used
    }

    /// With QEMU's display attached, its preferred modes win (as with QEMU's own backend):
    /// `-device vhost-user-gpu-pci,xres=..,yres=..` and window resizes reach the guest.
    fn refresh_outputs_from_display(&self, device: &mut GpuDevice) {
        let Some(channel) = lock(&self.display_channel).clone() else {
            return;
        };
        match channel.get_display_info() {
            Ok(info) => {
                let outputs = device.config().outputs.len();
                for (id, mode) in info.pmodes.iter().enumerate().take(outputs) {
                    let wanted = (mode.enabled != 0 && mode.r.width != 0 && mode.r.height != 0)
                        .then_some((mode.r.width, mode.r.height));
                    if wanted.is_some() && !device.set_output(id as u32, wanted) {
                        log::warn!("display: QEMU's mode {wanted:?} for scanout {id} is invalid; kept ours");
                    }
                }
            }
            Err(e) => {
                log::warn!(
                    "display: GET_DISPLAY_INFO to QEMU failed: {e}; using the configured modes"
                );
                *lock(&self.display_channel) = None;
            }
        }
    }

    /// A guest-caused warning, through the process's one limiter ([`crate::guest_log`]).
    fn guest_warn(&self, args: std::fmt::Arguments<'_>) {
        GUEST_LOG.log(module_path!(), log::Level::Warn, args);
    }

    /// Forgets the backend channel (the connection is gone).
    pub fn disconnect(&self) {
        self.channel.clear();
    }
}

/// Whether a control request reports modes to the guest: `VIRTIO_GPU_CMD_GET_DISPLAY_INFO`
/// or `VIRTIO_GPU_CMD_GET_EDID` (Linux asks for the EDIDs first; both must agree).
fn asks_for_modes(request: &[u8]) -> bool {
    let ty = request
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    matches!(ty, Some(cmd::GET_DISPLAY_INFO | cmd::GET_EDID))
}

/// Signals the guest if the ring's notification rules ask for it.
fn notify_guest(index: u16, vring: &VringRwLock) {
    match vring.needs_notification() {
        Ok(true) => {
            if let Err(e) = vring.signal_used_queue() {
                GUEST_LOG.log(
                    module_path!(),
                    log::Level::Warn,
                    format_args!("queue {index}: cannot signal the guest: {e}"),
                );
            }
        }
        Ok(false) => {}
        Err(e) => GUEST_LOG.log(
            module_path!(),
            log::Level::Warn,
            format_args!("queue {index}: needs_notification: {e}"),
        ),
    }
}

fn initial_display(settings: &TransportSettings) -> Box<dyn DisplaySink> {
    let mut fan = FanOut::default();
    if let Some(capture) = &settings.capture {
        fan.push(Box::new(capture.clone()));
    }
    Box::new(fan)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

impl VhostUserBackend for GpuBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        log::debug!("GET_FEATURES: offering {:#x}", self.features);
        self.features
    }

    fn acked_features(&self, features: u64) {
        log::info!("frontend acked features {features:#x}");
        self.defer(DeferredOp::AckFeatures(features));
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        log::debug!("GET_PROTOCOL_FEATURES");
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::SHMEM
            // Lets a frontend add and remove single regions (ADD_MEM_REG / REM_MEM_REG,
            // handled by vhost-user-backend) instead of re-sending its whole memory table
            // after every SHMEM_MAP/SHMEM_UNMAP; a frontend that does not take it keeps
            // sending SET_MEM_TABLE, which works as before.
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        self.defer(DeferredOp::Reset);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        log::debug!("GET_CONFIG {offset}+{size}");
        let snapshot = *lock(&self.config_snapshot);
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= CONFIG_SIZE => snapshot[start..end].to_vec(),
            _ => {
                log::warn!(
                    "get_config {offset}+{size} is outside the {CONFIG_SIZE}-byte config space"
                );
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let fits = (offset as usize)
            .checked_add(buf.len())
            .is_some_and(|end| end <= CONFIG_SIZE);
        if !fits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "set_config {offset}+{} is outside the {CONFIG_SIZE}-byte config space",
                    buf.len()
                ),
            ));
        }
        log::debug!("SET_CONFIG {offset}+{}", buf.len());
        self.defer(DeferredOp::WriteConfig {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let now: Vec<usize> = mem.memory().iter().map(|r| r.as_ptr() as usize).collect();
        let mut state = self
            .mapped_regions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (before, logged) = &mut *state;
        let kind = describe_memory_update(before, &now);
        // The first update of each kind at info level (which messages the frontend uses),
        // every update at debug level (two per mapped blob).
        let level = if logged.contains(&kind.0) {
            log::Level::Debug
        } else {
            logged.push(kind.0);
            log::Level::Info
        };
        log::log!(level, "memory updated: {}, {} regions", kind.1, now.len());
        *before = now;
        drop(state);
        *self.memory.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        log::info!("backend request channel installed");
        self.channel.set(backend);
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        self.channel.set_shmem_negotiated();
        if self.settings.hostmem == 0 {
            log::info!("GET_SHMEM_CONFIG: no host-visible region (--hostmem 0)");
            return Ok(VhostUserShMemConfig::new(0, &[]));
        }
        log::info!(
            "GET_SHMEM_CONFIG: shmid 1 = {:#x} bytes",
            self.settings.hostmem
        );
        // The array index is the shmid: shmid 0 unused, shmid 1 the host-visible region.
        Ok(VhostUserShMemConfig::new(2, &[0, self.settings.hostmem]))
    }

    fn set_gpu_socket(&self, gpu_backend: vhost::vhost_user::GpuBackend) -> io::Result<()> {
        log::info!(
            "display channel from the frontend installed (QEMU vhost-user-gpu display protocol)"
        );
        let mut fan = FanOut::default();
        if let Some(capture) = &self.settings.capture {
            fan.push(Box::new(capture.clone()));
        }
        *lock(&self.display_channel) = Some(gpu_backend.clone());
        fan.push(Box::new(QemuDisplay::new(gpu_backend)));
        self.defer(DeferredOp::SetDisplay(Box::new(fan)));
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // The library keeps the notifier and fires it when the daemon is dropped, which
        // stops and joins the worker thread.
        match self.exit.pair_for_worker() {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("cannot create the worker exit event: {e}");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The frontend stops the queues when the guest resets the device (QEMU 10 sends no
        // RESET_DEVICE for vhost-user-gpu). The frontend also drops every SHMEM mapping then,
        // so the device forgets its state, region ranges included. Caveat: a VM pause stops
        // the queues the same way and also loses the device state.
        if queue_index == u32::from(CONTROL_QUEUE) {
            log::info!("control queue stopped: resetting the device");
            self.defer(DeferredOp::Reset);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            log::warn!("unexpected event set {evset:?} for event {device_event}");
            return Ok(());
        }
        if device_event == EVENT_DEVICE {
            self.service_device(vrings);
            return Ok(());
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            log::warn!("event for unknown queue {device_event}");
            return Ok(());
        };
        self.serve_ring(device_event, vring);
        self.drain_deferred_after_release();
        Ok(())
    }
}

/// Names the frontend message a memory update came from, told apart by which mappings
/// survived it: `SET_MEM_TABLE` maps every region anew, `ADD_MEM_REG` keeps all and adds one,
/// `REM_MEM_REG` keeps all but one.
/// Returns a short kind and the description.
fn describe_memory_update(before: &[usize], now: &[usize]) -> (&'static str, String) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advisor::DmabufInfoAdvisor;
    use crate::alloc::{self, AllocatorKind};
    use crate::device::{DeviceConfig, Ports};

    fn backend() -> GpuBackend {
        let factory = |mapper: Box<dyn RegionMapper>, display: Box<dyn DisplaySink>| {
            let config = DeviceConfig {
                outputs: vec![(640, 480), (800, 600)],
                ..DeviceConfig::default()
            };
            let ports = Ports {
                allocator: alloc::select(AllocatorKind::Memfd, None).map_err(io::Error::other)?,
                mapper,
                display,
                advisor: Box::new(DmabufInfoAdvisor::new(
                    dmabuf_info::Config::default(),
                    Some(dmabuf_info::Platform::X86Intel),
                )),
                exporter: alloc::guest_page_exporter(),
                channels: None,
                renderer: None,
            };
            Ok(GpuDevice::new(config, ports))
        };
        let settings = TransportSettings {
            hostmem: 1 << 20,
            capture: None,
        };
        GpuBackend::new(settings, &factory, Arc::new(ExitEvent::new().unwrap())).unwrap()
    }

    const EDID: u64 = 1 << 1;
    const UUID: u64 = 1 << 2;

    #[test]
    fn frontend_callbacks_never_wait_for_a_busy_device() {
        let backend = backend();
        // The queue worker is in the middle of a command (maybe waiting for a SHMEM_MAP
        // acknowledgement): it holds the device.
        let busy = backend.device.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // What QEMU sends from its vCPU thread with its big lock held. Each call must
                // return without the device; a regression here hangs instead of passing.
                let config = backend.get_config(0, 16);
                assert_eq!(config.len(), 16);
                assert_eq!(
                    u32::from_le_bytes(config[8..12].try_into().unwrap()),
                    2,
                    "num_scanouts"
                );
                backend.reset_device();
                backend.acked_features(EDID);
                backend.set_config(4, &[1, 0, 0, 0]).unwrap();
            })
            .join()
            .unwrap();
        });
        assert_eq!(lock(&backend.deferred).len(), 3, "queued, not applied");
        assert_eq!(busy.acked_features(), 0);
        drop(busy);
        // The worker applies them, in order, as soon as it lets go.
        backend.drain_deferred_after_release();
        assert!(lock(&backend.deferred).is_empty());
        assert_eq!(
            backend.lock_device().acked_features(),
            EDID,
            "reset first, then the ack"
        );
    }

    #[test]
    fn a_reset_waits_for_the_end_of_the_batch_with_what_follows_it() {
        let backend = backend();
        {
            let _busy = backend.device.lock().unwrap();
            backend.acked_features(EDID);
            backend.reset_device();
            backend.acked_features(UUID);
        }
        {
            let mut device = backend.lock_device();
            backend.apply_deferred(&mut device, ApplyScope::BeforeReset);
            assert_eq!(device.acked_features(), EDID);
        }
        assert_eq!(lock(&backend.deferred).len(), 2);
        backend.drain_deferred_after_release();
        assert_eq!(backend.lock_device().acked_features(), UUID);
    }

    #[test]
    fn idle_device_applies_at_once_and_config_bounds_are_checked() {
        let backend = backend();
        backend.acked_features(EDID | UUID);
        assert!(lock(&backend.deferred).is_empty());
        assert_eq!(backend.lock_device().acked_features(), EDID | UUID);
        assert!(backend.get_config(12, 8).is_empty());
        assert!(backend.get_config(u32::MAX, 2).is_empty());
        assert!(backend.set_config(14, &[0; 4]).is_err());
        assert!(backend.set_config(u32::MAX, &[0]).is_err());
    }

    #[test]
    fn shmem_config_puts_the_region_at_index_1() {
        let backend = backend();
        let config = backend.get_shmem_config().unwrap();
        let nregions = config.nregions;
        let sizes = config.memory_sizes;
        assert_eq!(nregions, 2);
        assert_eq!(&sizes[..3], &[0, 1 << 20, 0]);
        assert!(backend.channel.shmem_negotiated());
    }

    #[test]
    fn display_info_and_edid_requests_are_recognised() {
        assert!(asks_for_modes(&0x100u32.to_le_bytes()));
        assert!(asks_for_modes(&[0x0a, 0x01, 0, 0, 0xff]));
        assert!(!asks_for_modes(&0x101u32.to_le_bytes()));
        assert!(!asks_for_modes(&[0x00, 0x01]));
        assert!(!asks_for_modes(&[]));
        // No display channel: nothing to ask, the configured modes stay.
        let backend = backend();
        let mut device = backend.lock_device();
        backend.refresh_outputs_from_display(&mut device);
        assert_eq!(device.config().outputs, vec![(640, 480), (800, 600)]);
    }

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

    #[test]
    fn transport_features_are_offered() {
        let backend = backend();
        let f = backend.features();
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        let proto = backend.protocol_features();
        assert!(
            proto.contains(VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::REPLY_ACK)
        );
        assert!(proto.contains(
            VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::BACKEND_SEND_FD
        ));
        assert!(proto.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    }
}
