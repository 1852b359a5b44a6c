//! The state of one frontend connection shared by its two threads: the connection thread
//! (frontend messages, [`crate::transport::handler`]) and the queue thread (device and rings,
//! [`crate::transport::worker`]).
//!
//! The rule that keeps a frontend such as QEMU from deadlocking: the connection thread never
//! waits for the device. It changes rings and the memory table under short locks of their
//! own, answers config reads from [`Session::config`] (refreshed by the queue thread), and
//! hands everything that changes the device to the queue thread as a [`DeferredOp`], which the
//! queue thread applies before it serves any chain.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::GpuBackend;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::ports::GuestMemory;
use crate::display::fanout::SharedSink;
use crate::display::qemu::ChannelRecord;
use crate::transport::gate::QueueGate;
use crate::transport::memory::MemoryTable;
use crate::transport::shmem::BackendChannel;
use crate::transport::vring::Vring;

/// Queue index of the control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Queue index of the cursor queue.
pub const CURSOR_QUEUE: u16 = 1;
/// Number of queues.
pub const NUM_QUEUES: usize = 2;
/// Largest queue size accepted (QEMU uses 256 for control and 16 for cursor; 11.1's generic
/// device 64 for both).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Size of the virtio-gpu config space.
pub const CONFIG_SIZE: usize = 16;

/// Settings of the transport, fixed for the daemon's life.
#[derive(Clone)]
pub struct TransportSettings {
    /// Size of the host-visible region (shmid 1) in bytes; 0 disables blob mapping.
    pub hostmem: u64,
    /// A capture sink shared by all connections (`--capture-dir`), if any.
    pub capture: Option<SharedSink>,
}

/// A change for the device, requested by a frontend message and applied by the queue thread.
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
    /// A device reset (`RESET_DEVICE`, or a ring restart that shows the driver started over):
    /// unmap what the frontend still maps, free everything.
    Reset(&'static str),
    /// `VHOST_USER_GPU_SET_SOCKET`: QEMU's display channel.
    SetDisplay(GpuBackend),
    /// A ring started, stopped, was enabled or disabled, or got another kick fd.
    RingsChanged,
    /// The capture started late (live upgrade): show it every scanout's current image.
    RepaintCapture,
}

/// What was negotiated on the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Negotiated {
    /// `SET_OWNER` received.
    pub owner: bool,
    /// Virtio features the frontend acked (`SET_FEATURES`).
    pub acked_features: u64,
    /// Protocol features the frontend acked (`SET_PROTOCOL_FEATURES`).
    pub acked_protocol: u64,
    /// The frontend asked `GET_SHMEM_CONFIG` (only let through with `SHMEM` acked).
    pub shmem_config_asked: bool,
}

impl Negotiated {
    /// Whether a protocol feature was acked.
    pub fn has_protocol(&self, feature: VhostUserProtocolFeatures) -> bool {
        self.acked_protocol & feature.bits() != 0
    }

    /// Whether `PROTOCOL_FEATURES` was acked (rings then start disabled).
    pub fn has_protocol_features(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }
}

/// Facts for telling a pause from a reset (DESIGN-lifecycle.md 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// The control queue was stopped and has not started since: the restart decides whether
    /// this was a pause or a reset, and nothing is served before that.
    pub undecided: bool,
    /// The driver read the config space while undecided (a probing driver; a paused guest
    /// cannot).
    pub config_read_while_stopped: bool,
}

/// The shared state of one connection.
pub struct Session {
    /// Transport settings.
    pub settings: TransportSettings,
    /// Virtio features offered (`GET_FEATURES`).
    pub offered_features: u64,
    /// Protocol features offered (`GET_PROTOCOL_FEATURES`).
    pub offered_protocol: VhostUserProtocolFeatures,
    /// What was negotiated.
    pub negotiated: Mutex<Negotiated>,
    /// Pause/reset bookkeeping.
    pub lifecycle: Mutex<Lifecycle>,
    /// The guest memory table.
    pub memory: Mutex<MemoryTable>,
    /// The memory the queue thread reads (follows every table update).
    pub guest: GuestMemoryAtomic<GuestMemory>,
    /// The rings.
    pub rings: [Mutex<Vring>; NUM_QUEUES],
    /// The config space as of the last device change.
    pub config: Mutex<[u8; CONFIG_SIZE]>,
    /// Changes waiting for the queue thread.
    pub ops: Mutex<VecDeque<DeferredOp>>,
    /// Wakes the queue thread (an op was queued).
    pub wake: EventFd,
    /// What the queue thread is doing.
    pub gate: Arc<QueueGate>,
    /// The backend request channel (`SHMEM_MAP`).
    pub channel: BackendChannel,
    /// QEMU's display channel, to ask it for modes (queue thread only).
    pub display_channel: Mutex<Option<GpuBackend>>,
    /// The backend request channel's fd (the `Backend` hides it; the upgrade hands it on).
    pub backend_channel_fd: Mutex<Option<OwnedFd>>,
    /// The display channel's fd, likewise.
    pub display_channel_fd: Mutex<Option<OwnedFd>>,
    /// What QEMU's side of the display channel knows (kept by the display sink; handed on).
    pub display_record: Mutex<Option<ChannelRecord>>,
    /// The frontend's error eventfds are kept here only to be handed on (never signalled).
    pub err_fds: Mutex<[Option<File>; NUM_QUEUES]>,
}

/// Locks `m`, recovering from poisoning (a panic elsewhere never makes state unreachable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    /// A session for a new connection.
    pub fn new(
        settings: TransportSettings,
        gate: Arc<QueueGate>,
        channel: BackendChannel,
        offered_features: u64,
        offered_protocol: VhostUserProtocolFeatures,
        config: [u8; CONFIG_SIZE],
    ) -> std::io::Result<Self> {
        let memory = MemoryTable::default();
        let guest = memory.atomic();
        Ok(Session {
            settings,
            offered_features,
            offered_protocol,
            negotiated: Mutex::new(Negotiated::default()),
            lifecycle: Mutex::new(Lifecycle::default()),
            memory: Mutex::new(memory),
            guest,
            rings: [
                Mutex::new(Vring::new(MAX_QUEUE_SIZE)),
                Mutex::new(Vring::new(MAX_QUEUE_SIZE)),
            ],
            config: Mutex::new(config),
            ops: Mutex::new(VecDeque::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
            channel,
            gate,
            display_channel: Mutex::new(None),
            backend_channel_fd: Mutex::new(None),
            display_channel_fd: Mutex::new(None),
            display_record: Mutex::new(None),
            err_fds: Mutex::new([None, None]),
        })
    }

    /// Replaces the memory table (live upgrade: the one the previous process had).
    pub fn set_memory(&mut self, memory: MemoryTable) {
        self.guest = memory.atomic();
        self.memory = Mutex::new(memory);
    }

    /// Queues `op` for the queue thread and wakes it.
    pub fn defer(&self, op: DeferredOp) {
        lock(&self.ops).push_back(op);
        self.kick_worker();
    }

    /// Wakes the queue thread.
    pub fn kick_worker(&self) {
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the queue thread: {e}");
        }
    }

    /// The ring `index`, if it exists.
    pub fn ring(&self, index: usize) -> Option<MutexGuard<'_, Vring>> {
        self.rings.get(index).map(lock)
    }
}
