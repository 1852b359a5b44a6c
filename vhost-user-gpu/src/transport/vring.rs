//! One virtqueue as the vhost-user connection sees it: the split ring (`virtio_queue::Queue`),
//! the frontend's kick/call/err eventfds, and the lifecycle facts the backend needs to tell a
//! pause from a reset (DESIGN-lifecycle.md 2).
//!
//! Ring states, after the vhost-user specification ("Ring states") plus one of ours:
//! - **stopped**: no kick fd since the last `GET_VRING_BASE` (or never started); nothing is
//!   taken from the ring.
//! - **started**: a kick fd arrived. Chains are taken only while the ring is also **enabled**
//!   (`SET_VRING_ENABLE 1`, or implicitly when `PROTOCOL_FEATURES` was not negotiated).
//! - **stopping** (ours): `GET_VRING_BASE` arrived and waits for the chain being served; no
//!   new chain is taken, the one in flight completes normally.
//!
//! A chain that completes after its ring was stopped (the queue thread was waiting for the
//! frontend, which cannot answer while it waits for `GET_VRING_BASE`) is *held*: its response
//! is kept here and written into guest memory only when the ring resumes; a reset drops it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;

use crate::device::ports::GuestMemory;
use crate::guest_log::guest_warn;
use crate::transport::chain::{self, DescriptorRef, WriteOutcome};

/// Where the frontend put a ring, as guest-physical addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingAddresses {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// What a ring looked like when the frontend stopped it (`GET_VRING_BASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRecord {
    /// The index reported to the frontend (next available entry not taken).
    pub next_avail: u16,
    /// The ring's addresses then.
    pub addresses: RingAddresses,
}

/// A response computed while the ring was stopped, waiting for the ring to resume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldCompletion {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// The chain's device-writable descriptors (guest addresses and lengths).
    pub writable: Vec<(u64, u32)>,
    /// The response bytes to write there.
    pub response: Vec<u8>,
}

/// Whether the queue thread may take chains from a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RingRun {
    /// Not started (no kick fd) or stopped by `GET_VRING_BASE`.
    Stopped,
    /// Started: chains are taken while enabled.
    Started,
    /// `GET_VRING_BASE` is waiting for the chain in flight; nothing new is taken.
    Stopping,
}

/// One virtqueue of the connection.
pub struct Vring {
    /// The split ring.
    pub queue: Queue,
    /// Frontend's kick eventfd (guest -> backend).
    pub kick: Option<Arc<File>>,
    /// Frontend's call eventfd (backend -> guest).
    pub call: Option<Arc<File>>,
    /// Frontend's error eventfd (kept, never signalled).
    pub err: Option<File>,
    /// `SET_VRING_ENABLE` state.
    pub enabled: bool,
    /// Started / stopped.
    pub run: RingRun,
    /// The last stop, until the ring starts again (pause-or-reset decision).
    pub stopped_at: Option<StopRecord>,
    /// Completions held while the ring was stopped.
    pub held: Vec<HeldCompletion>,
    /// Counts stops and resets, so a chain that completes late knows what happened to its
    /// ring meanwhile ([`Vring::late_completion`]).
    pub epoch: u64,
    /// Counts resets alone: a chain whose answer waits for a fence may outlive any number of
    /// pauses, and only a reset drops it ([`Vring::fence_completion`]).
    pub resets: u64,
}

/// What to do with a chain that completes, given what happened to its ring since it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateCompletion {
    /// Write the response and publish the chain.
    Publish,
    /// The ring was stopped meanwhile: hold the response until it resumes.
    Hold,
    /// The ring was reset meanwhile: the chain belongs to a ring that no longer exists.
    Drop,
}

impl Vring {
    /// A ring of at most `max_size` entries, not configured.
    pub fn new(max_size: u16) -> Self {
        Vring {
            queue: Queue::new(max_size).expect("a power-of-two queue size"),
            kick: None,
            call: None,
            err: None,
            enabled: false,
            run: RingRun::Stopped,
            stopped_at: None,
            held: Vec::new(),
            epoch: 0,
            resets: 0,
        }
    }

    /// The ring stops (`GET_VRING_BASE`).
    pub fn stop(&mut self) {
        self.stopped_at = Some(StopRecord {
            next_avail: self.queue.next_avail(),
            addresses: self.addresses(),
        });
        self.run = RingRun::Stopped;
        self.epoch += 1;
    }

    /// What to do with a chain taken at `epoch` that completes now.
    pub fn late_completion(&self, epoch: u64) -> LateCompletion {
        match self.epoch - epoch {
            0 => LateCompletion::Publish,
            // One stop since: still stopped, hold; resumed (same ring), publish.
            1 if self.run == RingRun::Stopped => LateCompletion::Hold,
            1 => LateCompletion::Publish,
            _ => LateCompletion::Drop,
        }
    }

    /// What to do with a chain taken when the ring had seen `resets` resets, whose answer
    /// waited for a fence that is done now. Its answer may have waited across pauses (the
    /// frontend was told it was taken): only a reset since drops it. While the ring serves
    /// nothing (stopped, stopping, disabled) the answer is held for the resume, as nothing
    /// may be written into a stopped ring.
    pub fn fence_completion(&self, resets: u64) -> LateCompletion {
        if self.resets != resets {
            LateCompletion::Drop
        } else if self.takes_chains() {
            LateCompletion::Publish
        } else {
            LateCompletion::Hold
        }
    }

    /// Whether the queue thread may take chains now.
    pub fn takes_chains(&self) -> bool {
        self.run == RingRun::Started && self.enabled && self.queue.ready()
    }

    /// The ring's current addresses.
    pub fn addresses(&self) -> RingAddresses {
        RingAddresses {
            desc: self.queue.desc_table(),
            avail: self.queue.avail_ring(),
            used: self.queue.used_ring(),
        }
    }

    /// Sets the ring's addresses; false when the queue refuses them (misaligned).
    pub fn set_addresses(&mut self, addresses: RingAddresses) -> bool {
        self.queue
            .try_set_desc_table_address(GuestAddress(addresses.desc))
            .is_ok()
            && self
                .queue
                .try_set_avail_ring_address(GuestAddress(addresses.avail))
                .is_ok()
            && self
                .queue
                .try_set_used_ring_address(GuestAddress(addresses.used))
                .is_ok()
    }

    /// The kick fd number, for the queue thread's epoll set.
    pub fn kick_fd(&self) -> Option<RawFd> {
        self.kick.as_ref().map(|k| k.as_raw_fd())
    }

    /// Consumes pending kicks (the eventfd counter), so a level-triggered poll stops
    /// reporting them.
    pub fn drain_kick(&self) {
        if let Some(kick) = &self.kick {
            let mut buf = [0u8; 8];
            let _ = (&**kick).read(&mut buf);
        }
    }

    /// Takes the next available chain: its head index and descriptors (guest-controlled, checked
    /// later by [`chain::read_chain`]). `None` when the ring is empty or cannot be read.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<(u16, Vec<DescriptorRef>)>, String> {
        let mut iter = self.queue.iter(mem).map_err(|e| e.to_string())?;
        let Some(chain) = iter.next() else {
            return Ok(None);
        };
        let head = chain.head_index();
        let descriptors = chain
            .map(|d| DescriptorRef {
                addr: d.addr(),
                len: d.len(),
                write_only: d.is_write_only(),
            })
            .collect();
        Ok(Some((head, descriptors)))
    }

    /// Writes `response` into the chain's writable part and puts the chain on the used ring.
    pub fn complete(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        writable: &[(GuestAddress, u32)],
        response: &[u8],
    ) -> (u32, WriteOutcome) {
        let (used, outcome) = chain::write_response(mem, writable, response);
        if let Err(e) = self.queue.add_used(mem, head, used) {
            guest_warn!("add_used({head}) failed: {e}");
        }
        (used, outcome)
    }

    /// Publishes every held completion (the ring resumed); returns how many.
    pub fn publish_held(&mut self, mem: &GuestMemory) -> usize {
        let held = std::mem::take(&mut self.held);
        for h in &held {
            let writable: Vec<(GuestAddress, u32)> = h
                .writable
                .iter()
                .map(|&(addr, len)| (GuestAddress(addr), len))
                .collect();
            self.complete(mem, h.head, &writable, &h.response);
        }
        held.len()
    }

    /// Signals the guest when the ring's notification rules say so.
    pub fn notify(&mut self, mem: &GuestMemory) {
        match self.queue.needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = self.try_signal() {
                    guest_warn!("cannot signal the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => guest_warn!("needs_notification: {e}"),
        }
    }

    /// Signals the guest unconditionally (after a resume or an upgrade, a spurious
    /// notification is harmless and a missing one hangs the driver).
    pub fn signal(&self) {
        if let Err(e) = self.try_signal() {
            guest_warn!("cannot signal the guest: {e}");
        }
    }

    fn try_signal(&self) -> std::io::Result<()> {
        match &self.call {
            Some(call) => (&**call).write_all(&1u64.to_ne_bytes()),
            None => Ok(()),
        }
    }

    /// Forgets everything (device reset): the ring is unconfigured and stopped.
    pub fn reset(&mut self) {
        self.queue.reset();
        self.enabled = false;
        self.run = RingRun::Stopped;
        self.forget_stop();
    }

    /// The ring's last stop turned out to be a reset: held responses go, and a chain still in
    /// flight from before is dropped when it completes.
    pub fn forget_stop(&mut self) {
        self.stopped_at = None;
        self.held.clear();
        self.epoch += 2;
        self.resets += 1;
    }
}

/// The serializable part of a ring (live upgrade); the fds travel separately.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VringState {
    /// Largest size the backend accepts.
    pub max_size: u16,
    /// Size the frontend chose.
    pub size: u16,
    /// Whether the queue was configured (`ready` in virtio-queue terms).
    pub ready: bool,
    /// Ring addresses.
    pub addresses: RingAddresses,
    /// Next available entry to take.
    pub next_avail: u16,
    /// Next used entry to write.
    pub next_used: u16,
    /// `VIRTIO_RING_F_EVENT_IDX` in use.
    pub event_idx: bool,
    /// `SET_VRING_ENABLE` state.
    pub enabled: bool,
    /// Run state.
    pub run: RingRun,
    /// The last stop, if the ring has not started since.
    pub stopped_at: Option<StopRecord>,
    /// Held completions.
    pub held: Vec<HeldCompletion>,
}

impl Vring {
    /// The ring's state (fds excluded).
    pub fn state(&self) -> VringState {
        let q = self.queue.state();
        VringState {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            addresses: RingAddresses {
                desc: q.desc_table,
                avail: q.avail_ring,
                used: q.used_ring,
            },
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            enabled: self.enabled,
            run: self.run,
            stopped_at: self.stopped_at,
            held: self.held.clone(),
        }
    }

    /// A ring rebuilt from `state` (fds set by the caller).
    pub fn from_state(state: &VringState) -> Result<Self, String> {
        let queue = Queue::try_from(virtio_queue::QueueState {
            max_size: state.max_size,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx_enabled: state.event_idx,
            size: state.size,
            ready: state.ready,
            desc_table: state.addresses.desc,
            avail_ring: state.addresses.avail,
            used_ring: state.addresses.used,
        })
        .map_err(|e| format!("ring state refused: {e}"))?;
        Ok(Vring {
            queue,
            kick: None,
            call: None,
            err: None,
            enabled: state.enabled,
            run: state.run,
            stopped_at: state.stopped_at,
            held: state.held.clone(),
            epoch: 0,
            resets: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rings_take_chains_only_when_started_and_enabled() {
        let mut ring = Vring::new(256);
        assert!(!ring.takes_chains());
        ring.queue.set_size(64);
        assert!(ring.set_addresses(RingAddresses {
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000
        }));
        ring.queue.set_ready(true);
        ring.queue.set_next_avail(7);
        ring.queue.set_next_used(5);
        ring.run = RingRun::Started;
        assert!(!ring.takes_chains(), "not enabled");
        ring.enabled = true;
        assert!(ring.takes_chains());
        ring.held.push(HeldCompletion {
            head: 3,
            writable: vec![(0x4000, 24)],
            response: vec![1, 2, 3],
        });
        let state = ring.state();
        let copy = Vring::from_state(&state).unwrap();
        assert_eq!(copy.state(), state);
        assert_eq!(copy.queue.next_avail(), 7);
        assert!(copy.takes_chains());
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<VringState>(&json).unwrap(), state);
        ring.reset();
        assert!(!ring.takes_chains());
        assert!(ring.held.is_empty());
    }

    #[test]
    fn late_completions_follow_what_happened_to_the_ring() {
        let mut ring = Vring::new(256);
        ring.run = RingRun::Started;
        let taken = ring.epoch;
        assert_eq!(ring.late_completion(taken), LateCompletion::Publish);
        ring.stop();
        assert_eq!(ring.late_completion(taken), LateCompletion::Hold);
        ring.run = RingRun::Started; // resumed with the same ring
        assert_eq!(ring.late_completion(taken), LateCompletion::Publish);
        ring.forget_stop(); // it was a reset after all
        assert_eq!(ring.late_completion(taken), LateCompletion::Drop);
        let taken = ring.epoch;
        ring.reset();
        assert_eq!(ring.late_completion(taken), LateCompletion::Drop);
    }

    #[test]
    fn a_fenced_answer_outlives_pauses_but_not_a_reset() {
        let mut ring = Vring::new(256);
        ring.queue.set_size(64);
        ring.queue.set_ready(true);
        ring.enabled = true;
        ring.run = RingRun::Started;
        let taken = ring.resets;
        assert_eq!(ring.fence_completion(taken), LateCompletion::Publish);
        // Two pauses while the fence is pending: the epoch moved by two, which
        // late_completion would take for a reset.
        for _ in 0..2 {
            ring.stop();
            assert_eq!(ring.fence_completion(taken), LateCompletion::Hold);
            ring.stopped_at = None; // the restart showed a pause
            ring.run = RingRun::Started;
        }
        assert_eq!(ring.late_completion(0), LateCompletion::Drop);
        assert_eq!(ring.fence_completion(taken), LateCompletion::Publish);
        ring.enabled = false;
        assert_eq!(ring.fence_completion(taken), LateCompletion::Hold);
        ring.enabled = true;
        ring.stop();
        ring.forget_stop(); // that stop was a reset
        ring.run = RingRun::Started;
        assert_eq!(ring.fence_completion(taken), LateCompletion::Drop);
    }

    #[test]
    fn misaligned_ring_addresses_are_refused() {
        let mut ring = Vring::new(256);
        assert!(!ring.set_addresses(RingAddresses {
            desc: 0x1001,
            avail: 0x2000,
            used: 0x3000
        }));
    }
}
