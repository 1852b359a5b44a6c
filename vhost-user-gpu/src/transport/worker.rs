//! The queue thread: owns the device core and serves both rings.
//!
//! One epoll set holds the rings' kick eventfds, the session's wake eventfd (deferred
//! operations, ring starts and stops), the device's event fd (behind which the device keeps
//! its renderer's fence fd and its channels' sockets and pipes) and any [`EventSource`]
//! registered later: everything that touches the device runs on this one thread, so a
//! renderer that must be called from a single thread is, and a source can complete work when
//! its fd becomes ready.
//!
//! Per wake-up: apply the deferred operations in order, bring the epoll set in line with the
//! rings, then look at every ring that takes chains (not only the kicked ones: a ring that
//! restarts after a pause may hold chains whose kick arrived while it was stopped). Chains are
//! taken one at a time, so a stop (`GET_VRING_BASE`) waits for at most one chain.
//!
//! Fenced answers that wait ([`DeviceCompletion::Later`], docs/fence contract): the device's
//! event fd is in the epoll set; the chain (head, writable descriptors, answer) is kept here
//! under its token, and the frontend was told the chain was taken (`GET_VRING_BASE` never
//! waits for a fence). When the device reports the token done, the answer is published, or
//! held in the ring while the ring is stopped (published on resume), or dropped when the
//! ring was reset since. While the device cannot keep more answers waiting, the control
//! queue is left in the ring (back-pressure); every device event looks at the rings again.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::device::ports::{GuestMemory, RegionMapper};
use crate::device::{Completion as DeviceCompletion, FenceToken, GpuDevice};
use crate::display::{FanOut, QemuDisplay};
use crate::guest_log::guest_warn;
use crate::queue_thread::QueueThreadScope;
use crate::transport::chain::{self, DescriptorRef, WriteOutcome};
use crate::transport::session::{
    lock, DeferredOp, Session, CONTROL_QUEUE, CURSOR_QUEUE, NUM_QUEUES,
};
use crate::transport::shmem::ShmemMapper;
use crate::transport::vring::{HeldCompletion, LateCompletion};

/// `VIRTIO_GPU_CMD_GET_DISPLAY_INFO`.
const CMD_GET_DISPLAY_INFO: u32 = 0x100;
/// `VIRTIO_GPU_CMD_GET_EDID`.
const CMD_GET_EDID: u32 = 0x10a;

/// Epoll token of the wake eventfd.
const TOKEN_WAKE: u64 = 0;
/// Epoll token of ring `i`'s kick: `TOKEN_KICK + i`.
const TOKEN_KICK: u64 = 1;
/// Epoll token of the device's event fd (fences done, channels with bytes to move).
const TOKEN_DEVICE: u64 = 8;
/// Epoll token of event source `n`: `TOKEN_SOURCE + n`.
const TOKEN_SOURCE: u64 = 16;

/// What an [`EventSource`] wants after handling an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAction {
    /// Keep polling the fd.
    Keep,
    /// Remove the source (its fd is done).
    Remove,
}

/// An extra fd the queue thread polls, with the device at hand when it is ready.
pub trait EventSource: Send {
    /// The fd to poll (readable).
    fn fd(&self) -> RawFd;
    /// Called on the queue thread when the fd is readable.
    fn ready(&mut self, device: &mut GpuDevice) -> SourceAction;
}

/// A request to the queue thread from outside the connection (the live upgrade).
pub enum WorkerRequest {
    /// Finish the chain in flight, then stop serving until [`WorkerRequest::Resume`] or
    /// [`WorkerRequest::Exit`]; the queue thread is then parked ([`crate::transport::gate`]).
    Park,
    /// Run a function on the device while parked (snapshot).
    WithDevice(Box<dyn FnOnce(&mut GpuDevice) + Send>),
    /// Serve again.
    Resume,
    /// End the thread.
    Exit,
    /// Poll another fd.
    AddSource(Box<dyn EventSource>),
}

/// Sends requests to a running queue thread (cloneable).
#[derive(Clone)]
pub struct WorkerControl {
    requests: Sender<WorkerRequest>,
    session: Arc<Session>,
}

impl WorkerControl {
    /// Sends a request and wakes the thread.
    pub fn request(&self, request: WorkerRequest) {
        if self.requests.send(request).is_ok() {
            self.session.kick_worker();
        }
    }
}

/// Handle to a running queue thread.
pub struct WorkerHandle {
    requests: Sender<WorkerRequest>,
    session: Arc<Session>,
    thread: Option<JoinHandle<GpuDevice>>,
}

impl WorkerHandle {
    /// Sends a request and wakes the thread.
    pub fn request(&self, request: WorkerRequest) {
        if self.requests.send(request).is_ok() {
            self.session.kick_worker();
        }
    }

    /// Something to send requests with from elsewhere.
    pub fn control(&self) -> WorkerControl {
        WorkerControl {
            requests: self.requests.clone(),
            session: self.session.clone(),
        }
    }

    /// Stops the thread and returns the device (dropped by the caller).
    pub fn stop(mut self) -> Option<GpuDevice> {
        self.request(WorkerRequest::Exit);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.requests.send(WorkerRequest::Exit);
            self.session.kick_worker();
            let _ = thread.join();
        }
    }
}

/// A chain whose answer waits for its fence.
struct FencedChain {
    /// The ring it came from.
    index: u16,
    head: u16,
    writable: Vec<(GuestAddress, u32)>,
    response: Vec<u8>,
    /// The ring's reset count when the chain was taken ([`crate::transport::vring::Vring::fence_completion`]).
    resets: u64,
}

/// The queue thread's state.
pub struct Worker {
    session: Arc<Session>,
    device: GpuDevice,
    epoll: Epoll,
    /// Kick fds in the epoll set, per ring (the `Arc` keeps the fd open while registered).
    registered: [Option<Arc<std::fs::File>>; NUM_QUEUES],
    sources: Vec<Option<Box<dyn EventSource>>>,
    /// Unmaps what the frontend still maps when the device resets.
    mapper: ShmemMapper,
    requests: Receiver<WorkerRequest>,
    /// The display's modes were asked for in the current batch.
    modes_asked: bool,
    /// Chains whose answers wait for their fences, by token.
    fenced: HashMap<FenceToken, FencedChain>,
    /// The control queue was left in the ring for back-pressure (for one log line).
    throttled: bool,
}

/// Whether a control request reports modes to the guest: `GET_DISPLAY_INFO` or `GET_EDID`
/// (Linux asks for the EDIDs first; both must agree).
fn asks_for_modes(request: &[u8]) -> bool {
    let ty = request
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    matches!(ty, Some(CMD_GET_DISPLAY_INFO | CMD_GET_EDID))
}

enum Flow {
    Continue,
    Exit,
}

impl Worker {
    /// Starts the queue thread for `session` with `device`.
    pub fn spawn(session: Arc<Session>, device: GpuDevice) -> io::Result<WorkerHandle> {
        let (tx, rx) = std::sync::mpsc::channel();
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            session.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_WAKE),
        )?;
        // Stable for the device's life (a restored device comes through here too).
        if let Some(fd) = device.event_fd() {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_DEVICE),
            )?;
        }
        let mapper = ShmemMapper::new(session.channel.clone(), session.settings.hostmem);
        let mut worker = Worker {
            session: session.clone(),
            device,
            epoll,
            registered: [None, None],
            sources: Vec::new(),
            mapper,
            requests: rx,
            modes_asked: false,
            fenced: HashMap::new(),
            throttled: false,
        };
        worker.refresh_config();
        let thread = std::thread::Builder::new()
            .name("vug-queues".into())
            .spawn(move || {
                worker.run();
                worker.device
            })?;
        Ok(WorkerHandle {
            requests: tx,
            session,
            thread: Some(thread),
        })
    }

    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("queue thread: epoll_wait failed: {e}; the device stops serving");
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_WAKE => {
                        let _ = self.session.wake.read();
                    }
                    t if (TOKEN_KICK..TOKEN_KICK + NUM_QUEUES as u64).contains(&t) => {
                        if let Some(kick) = &self.registered[(t - TOKEN_KICK) as usize] {
                            let mut buf = [0u8; 8];
                            let _ = io::Read::read(&mut &**kick, &mut buf);
                        }
                    }
                    TOKEN_DEVICE => self.service_device(),
                    t if t >= TOKEN_SOURCE => self.source_ready((t - TOKEN_SOURCE) as usize),
                    _ => {}
                }
            }
            if let Flow::Exit = self.step() {
                return;
            }
        }
    }

    /// One round: requests, deferred operations, epoll set, rings.
    fn step(&mut self) -> Flow {
        if let Flow::Exit = self.handle_requests() {
            return Flow::Exit;
        }
        self.apply_ops();
        self.sync_kicks();
        if lock(&self.session.lifecycle).undecided {
            // The control queue stopped: serve nothing until its restart shows whether the
            // frontend paused or reset the device.
            return Flow::Continue;
        }
        self.modes_asked = false;
        for index in [CONTROL_QUEUE, CURSOR_QUEUE] {
            self.serve_ring(index);
        }
        Flow::Continue
    }

    fn handle_requests(&mut self) -> Flow {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                WorkerRequest::Park => {
                    if let Flow::Exit = self.park() {
                        return Flow::Exit;
                    }
                }
                WorkerRequest::Resume => {}
                WorkerRequest::WithDevice(f) => f(&mut self.device),
                WorkerRequest::Exit => return Flow::Exit,
                WorkerRequest::AddSource(source) => self.add_source(source),
            }
        }
        Flow::Continue
    }

    /// Parked: serve nothing, answer requests until told to resume or exit.
    fn park(&mut self) -> Flow {
        self.session.gate.set_parked(true);
        log::debug!("queue thread parked");
        let flow = loop {
            match self.requests.recv() {
                Ok(WorkerRequest::Resume) => break Flow::Continue,
                Ok(WorkerRequest::Exit) | Err(_) => break Flow::Exit,
                Ok(WorkerRequest::WithDevice(f)) => f(&mut self.device),
                Ok(WorkerRequest::Park) => {}
                Ok(WorkerRequest::AddSource(source)) => self.add_source(source),
            }
        };
        self.session.gate.set_parked(false);
        log::debug!("queue thread resumed");
        flow
    }

    fn add_source(&mut self, source: Box<dyn EventSource>) {
        let n = self.sources.len();
        let token = TOKEN_SOURCE + n as u64;
        match self.epoll.ctl(
            ControlOperation::Add,
            source.fd(),
            EpollEvent::new(EventSet::IN, token),
        ) {
            Ok(()) => self.sources.push(Some(source)),
            Err(e) => log::error!("cannot poll event source fd {}: {e}", source.fd()),
        }
    }

    fn source_ready(&mut self, n: usize) {
        let Some(Some(source)) = self.sources.get_mut(n) else {
            return;
        };
        let _scope = QueueThreadScope::enter();
        if source.ready(&mut self.device) == SourceAction::Remove {
            let fd = source.fd();
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                fd,
                EpollEvent::new(EventSet::IN, TOKEN_SOURCE + n as u64),
            );
            self.sources[n] = None;
        }
        self.refresh_config();
    }

    /// The device's event fd is readable: lets the device move its work on and answers the
    /// chains whose fences are done.
    fn service_device(&mut self) {
        let mem = self.session.guest.memory();
        let tokens = {
            let _scope = QueueThreadScope::enter();
            self.device.service(&mem)
        };
        let mut answered = [false; NUM_QUEUES];
        for token in tokens {
            let Some(chain) = self.fenced.remove(&token) else {
                log::debug!("fence token {} has no waiting chain", token.get());
                continue;
            };
            let index = usize::from(chain.index);
            let mut ring = lock(&self.session.rings[index]);
            match ring.fence_completion(chain.resets) {
                LateCompletion::Publish => {
                    let (_, outcome) =
                        ring.complete(&mem, chain.head, &chain.writable, &chain.response);
                    drop(ring);
                    report_outcome(chain.index, &chain.writable, &chain.response, outcome);
                    answered[index] = true;
                }
                LateCompletion::Hold => ring.held.push(HeldCompletion {
                    head: chain.head,
                    writable: chain.writable.iter().map(|&(a, l)| (a.0, l)).collect(),
                    response: chain.response,
                }),
                LateCompletion::Drop => log::debug!(
                    "ring {index}: a fenced answer done after its ring was reset; dropped"
                ),
            }
        }
        for (index, answered) in answered.into_iter().enumerate() {
            if answered {
                lock(&self.session.rings[index]).notify(&mem);
            }
        }
        self.refresh_config();
    }

    fn apply_ops(&mut self) {
        loop {
            let Some(op) = lock(&self.session.ops).pop_front() else {
                break;
            };
            match op {
                DeferredOp::AckFeatures(features) => self.device.ack_features(features),
                DeferredOp::WriteConfig { offset, data } => self.device.write_config(offset, &data),
                DeferredOp::Reset(why) => self.reset_device(why),
                DeferredOp::SetDisplay(channel) => {
                    let mut fan = FanOut::default();
                    if let Some(capture) = &self.session.settings.capture {
                        fan.push(Box::new(capture.clone()));
                    }
                    let qemu = QemuDisplay::new(channel);
                    *lock(&self.session.display_record) = Some(qemu.record());
                    fan.push(Box::new(qemu));
                    self.device.set_display(Box::new(fan));
                }
                DeferredOp::RingsChanged => {}
                DeferredOp::RepaintCapture => {
                    if let Some(capture) = &self.session.settings.capture {
                        let mem = self.session.guest.memory();
                        let _scope = QueueThreadScope::enter();
                        drop(self.device.repaint(&mem, Box::new(capture.clone())));
                    }
                }
            }
            self.refresh_config();
        }
    }

    /// A reset: the frontend's mappings of our buffers go first (`SHMEM_UNMAP`, from this
    /// thread as always), then everything the device holds. The features the frontend acked
    /// last stay acked (a ring restart sends `SET_FEATURES` before the restart that shows the
    /// reset).
    fn reset_device(&mut self, why: &str) {
        // The device drops its pending fences: their chains go unanswered (the driver reset).
        let fenced = self.fenced.len();
        self.fenced.clear();
        self.throttled = false;
        let ranges = self.device.region_ranges();
        let _scope = QueueThreadScope::enter();
        let mut unmapped = 0;
        for (offset, len) in &ranges {
            match self.mapper.unmap(*offset, *len) {
                Ok(()) => unmapped += 1,
                Err(e) => log::debug!(
                    "reset: SHMEM_UNMAP {offset:#x}+{len:#x}: {e} (the frontend may have dropped it already)"
                ),
            }
        }
        let resources = self.device.resource_count();
        self.device.reset();
        let acked = lock(&self.session.negotiated).acked_features;
        self.device.ack_features(acked);
        log::info!(
            "device reset ({why}): {resources} resources freed, {unmapped} of {} mapped ranges unmapped, {fenced} fenced answers dropped",
            ranges.len()
        );
    }

    fn refresh_config(&mut self) {
        *lock(&self.session.config) = self.device.read_config();
        if self.device.take_config_changed() {
            // vhost 0.18's Backend has no VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, and QEMU's
            // vhost-user-gpu-pci manages the display events itself; the guest sees the new
            // value on its next config read.
            log::debug!(
                "config space changed; frontend not notified (no CONFIG_CHANGE_MSG support)"
            );
        }
    }

    /// Brings the epoll set in line with the rings: a ring that takes chains has its kick fd
    /// registered, others not.
    fn sync_kicks(&mut self) {
        for index in 0..NUM_QUEUES {
            let wanted = {
                let ring = lock(&self.session.rings[index]);
                if ring.takes_chains() {
                    ring.kick.clone()
                } else {
                    None
                }
            };
            let same = match (&wanted, &self.registered[index]) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let token = TOKEN_KICK + index as u64;
            if let Some(old) = self.registered[index].take() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    old.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                );
            }
            if let Some(new) = wanted {
                match self.epoll.ctl(
                    ControlOperation::Add,
                    new.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                ) {
                    Ok(()) => self.registered[index] = Some(new),
                    Err(e) => log::error!("ring {index}: cannot poll the kick fd: {e}"),
                }
            }
        }
    }

    /// Serves every available chain of ring `index` (and first publishes completions held
    /// while it was stopped).
    fn serve_ring(&mut self, index: u16) {
        let mem = self.session.guest.memory();
        let event_idx;
        {
            let mut ring = lock(&self.session.rings[usize::from(index)]);
            if !ring.takes_chains() {
                return;
            }
            if !ring.held.is_empty() {
                let n = ring.publish_held(&mem);
                log::info!("ring {index}: {n} response(s) held during the pause published");
                ring.signal();
            }
            event_idx = ring.queue.state().event_idx_enabled;
        }
        let mut served = 0u32;
        loop {
            if index == CONTROL_QUEUE && !self.device.can_take_more() {
                // Back-pressure: the chains stay in the ring (the driver waits for room);
                // the device event that frees some brings this thread back to every ring.
                if !self.throttled {
                    self.throttled = true;
                    log::debug!(
                        "control queue: {} fenced answers wait, the most allowed; the rest of the queue waits",
                        self.device.pending_fences()
                    );
                }
                break;
            }
            self.throttled = false;
            let popped = {
                let mut ring = lock(&self.session.rings[usize::from(index)]);
                if !ring.takes_chains() {
                    break;
                }
                if event_idx {
                    // Tell the driver not to kick while we drain; re-check after re-enabling.
                    if let Err(e) =
                        virtio_queue::QueueT::disable_notification(&mut ring.queue, &*mem)
                    {
                        // The used ring's address comes from the guest's driver.
                        guest_warn!("ring {index}: disable_notification: {e}");
                    }
                }
                match ring.pop(&mem) {
                    Ok(Some(chain)) => {
                        self.session.gate.begin_chain(index);
                        Some((chain, (ring.epoch, ring.resets)))
                    }
                    Ok(None) => {
                        let more = event_idx
                            && virtio_queue::QueueT::enable_notification(&mut ring.queue, &*mem)
                                .unwrap_or(false);
                        if more {
                            continue;
                        }
                        None
                    }
                    Err(e) => {
                        drop(ring);
                        guest_warn!("ring {index}: cannot read the available ring: {e}");
                        None
                    }
                }
            };
            let Some(((head, descriptors), (epoch, resets))) = popped else {
                break;
            };
            self.serve_chain(index, &mem, head, descriptors, epoch, resets);
            self.session.gate.end_chain();
            served += 1;
        }
        if served > 0 {
            let mut ring = lock(&self.session.rings[usize::from(index)]);
            ring.notify(&mem);
        }
    }

    /// Serves one chain and completes it, holds its completion when the ring was stopped
    /// meanwhile, or keeps it until its fence is done. `epoch` and `resets`: the ring's when
    /// the chain was taken.
    fn serve_chain(
        &mut self,
        index: u16,
        mem: &GuestMemory,
        head: u16,
        descriptors: Vec<DescriptorRef>,
        epoch: u64,
        resets: u64,
    ) {
        let (writable, completion) = match chain::read_chain(mem, descriptors) {
            Ok(parsed) if index == CONTROL_QUEUE && parsed.writable.is_empty() => {
                guest_warn!(
                    "control queue: chain without a writable part skipped (no room for the response)"
                );
                (Vec::new(), DeviceCompletion::Now(Vec::new()))
            }
            Ok(parsed) => {
                let completion = self.run_command(index, mem, &parsed.request);
                (parsed.writable, completion)
            }
            Err(e) => {
                guest_warn!("ring {index}: malformed chain skipped: {e}");
                (Vec::new(), DeviceCompletion::Now(Vec::new()))
            }
        };
        let response = match completion {
            DeviceCompletion::Now(response) => response,
            DeviceCompletion::Later { token, response } => {
                if lock(&self.session.rings[usize::from(index)]).resets != resets {
                    // Reset while the command ran: the device dropped the token already.
                    log::debug!("ring {index}: a fenced command ran across a reset; dropped");
                    return;
                }
                self.fenced.insert(
                    token,
                    FencedChain {
                        index,
                        head,
                        writable,
                        response,
                        resets,
                    },
                );
                return;
            }
        };
        let mut ring = lock(&self.session.rings[usize::from(index)]);
        match ring.late_completion(epoch) {
            LateCompletion::Publish => {}
            LateCompletion::Hold => {
                // Stopped while this chain was served: the frontend was told it was taken;
                // the response waits for the ring to resume (a reset drops it).
                ring.held.push(HeldCompletion {
                    head,
                    writable: writable.iter().map(|&(a, l)| (a.0, l)).collect(),
                    response,
                });
                return;
            }
            LateCompletion::Drop => {
                log::info!(
                    "ring {index}: a command completed after its ring was reset; response dropped"
                );
                return;
            }
        }
        let (_, outcome) = ring.complete(mem, head, &writable, &response);
        drop(ring);
        report_outcome(index, &writable, &response, outcome);
    }

    /// Runs one command on the device. A panic in the device core is caught: the frontend's
    /// mappings are undone, the device reset, the command dropped.
    fn run_command(&mut self, index: u16, mem: &GuestMemory, request: &[u8]) -> DeviceCompletion {
        let _scope = QueueThreadScope::enter();
        if index == CONTROL_QUEUE && !self.modes_asked && asks_for_modes(request) {
            self.refresh_outputs_from_display();
            self.modes_asked = true;
        }
        let device = &mut self.device;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if index == CONTROL_QUEUE {
                device.process_control(mem, request)
            } else {
                DeviceCompletion::Now(device.process_cursor(mem, request))
            }
        }));
        let completion = match result {
            Ok(completion) => completion,
            Err(_) => {
                // A guest that found a way to make the core panic can repeat it at will.
                guest_warn!(
                    "device core panicked on a ring {index} command: command dropped, device reset"
                );
                self.reset_device("panic in the device core");
                DeviceCompletion::Now(Vec::new())
            }
        };
        self.apply_ops();
        completion
    }

    /// With QEMU's display attached, its preferred modes win (as with QEMU's own backend):
    /// `-device vhost-user-gpu-pci,xres=..,yres=..` and window resizes reach the guest.
    fn refresh_outputs_from_display(&mut self) {
        let Some(channel) = lock(&self.session.display_channel).clone() else {
            return;
        };
        match self
            .session
            .gate
            .frontend_round_trip(|| channel.get_display_info())
        {
            Ok(info) => {
                let outputs = self.device.config().outputs.len();
                for (id, mode) in info.pmodes.iter().enumerate().take(outputs) {
                    let wanted = (mode.enabled != 0 && mode.r.width != 0 && mode.r.height != 0)
                        .then_some((mode.r.width, mode.r.height));
                    if wanted.is_some() && !self.device.set_output(id as u32, wanted) {
                        log::warn!("display: QEMU's mode {wanted:?} for scanout {id} is invalid; kept ours");
                    }
                }
            }
            Err(e) => {
                log::warn!(
                    "display: GET_DISPLAY_INFO to QEMU failed: {e}; using the configured modes"
                );
                *lock(&self.session.display_channel) = None;
            }
        }
    }
}

/// Says (rate-limited) when a response did not fit the chain's writable part.
fn report_outcome(
    index: u16,
    writable: &[(GuestAddress, u32)],
    response: &[u8],
    outcome: WriteOutcome,
) {
    let capacity: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
    match outcome {
        WriteOutcome::Complete => {}
        WriteOutcome::ErrorHeaderOnly => guest_warn!(
            "ring {index}: {}-byte response does not fit {capacity} writable bytes; sent ERR_UNSPEC",
            response.len()
        ),
        WriteOutcome::Nothing if index == CURSOR_QUEUE || response.is_empty() => {}
        WriteOutcome::Nothing => guest_warn!(
            "ring {index}: {}-byte response does not fit {capacity} writable bytes; nothing written",
            response.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_info_and_edid_requests_are_recognised() {
        assert!(asks_for_modes(&0x100u32.to_le_bytes()));
        assert!(asks_for_modes(&[0x0a, 0x01, 0, 0, 0xff]));
        assert!(!asks_for_modes(&0x101u32.to_le_bytes()));
        assert!(!asks_for_modes(&[0x00, 0x01]));
        assert!(!asks_for_modes(&[]));
    }
}
