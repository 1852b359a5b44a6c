//! Fenced commands whose answer waits ([`Fences`]): the device side of the contract in
//! which a command with `VIRTIO_GPU_FLAG_FENCE` is answered only when its fence signalled.
//!
//! The Linux driver signals, on every fenced answer, that fence and every earlier fence of the
//! same dma-fence context (`virtio_gpu_fence_event_process`: same context, smaller sequence
//! number, which is the fence id). Its contexts are the device-wide timeline (fences without
//! `VIRTIO_GPU_FLAG_INFO_RING_IDX`) and one per (virtio-gpu context, ring). So answers must
//! come in fence order per timeline: a fenced command that could be answered at once (a 2D
//! command, an error) still waits while an earlier fence of its timeline waits for the
//! renderer, or the guest would take the renderer's work for done.
//!
//! A fenced answer is kept here under a [`FenceToken`] when something must signal it (the
//! renderer retiring its fence; later a cross-domain channel writing an event) or when an
//! earlier answer of its timeline still waits; the transport keeps the descriptor chain and
//! writes the answer when [`crate::device::GpuDevice::service`] hands the token back. Each
//! waiting answer holds one pending-fence charge of the device's budget: at most
//! [`MAX_PENDING_FENCES`] wait, and the transport stops taking commands before that limit
//! (back-pressure: nothing is refused, nothing dropped).

use std::collections::{BTreeMap, VecDeque};

use super::budget::Charge;

/// Most fenced answers that may wait at once (per device). The transport stops reading the
/// control queue while this many wait (the guest's queue fills and its driver waits); the
/// virtqueue size bounds it too (QEMU: 256 control entries).
pub const MAX_PENDING_FENCES: usize = 1024;

/// Names a fenced answer that waits; the transport keeps the descriptor chain under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FenceToken(u64);

impl FenceToken {
    /// The token's number (unique for the device's life), for logs and transport maps.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What the transport does with a processed control command.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Answer now with these bytes.
    Now(Vec<u8>),
    /// Answer with `response` when [`crate::device::GpuDevice::service`] returns `token`.
    /// The command's effects are done; only its answer waits.
    Later {
        /// What to wait for.
        token: FenceToken,
        /// The answer.
        response: Vec<u8>,
    },
}

impl Completion {
    /// The answer bytes, now or later.
    pub fn response(&self) -> &[u8] {
        match self {
            Completion::Now(r) | Completion::Later { response: r, .. } => r,
        }
    }

    /// The answer bytes, whether they go now or later.
    pub fn into_response(self) -> Vec<u8> {
        match self {
            Completion::Now(r) | Completion::Later { response: r, .. } => r,
        }
    }
}

/// A fence timeline as the guest driver sees it (one dma-fence context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timeline {
    /// Fences without `VIRTIO_GPU_FLAG_INFO_RING_IDX`.
    Global,
    /// `ring` of context `ctx_id` (`VIRTIO_GPU_FLAG_INFO_RING_IDX`).
    Ring {
        /// The context.
        ctx_id: u32,
        /// The ring index.
        ring: u8,
    },
}

/// One waiting answer.
#[derive(Debug)]
struct Waiting {
    token: FenceToken,
    fence_id: u64,
    /// Whether its own fence has signalled (it may still wait for earlier ones).
    signalled: bool,
    _charge: Charge,
}

/// Waiting answers by timeline, in fence order.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    timelines: BTreeMap<Timeline, VecDeque<Waiting>>,
    /// Tokens whose answers may go, in the order they became ready.
    ready: Vec<FenceToken>,
    next_token: u64,
    waiting: usize,
}

impl Fences {
    /// Whether an answer on `timeline` would have to wait behind earlier ones.
    pub fn busy(&self, timeline: Timeline) -> bool {
        self.timelines.get(&timeline).is_some_and(|q| !q.is_empty())
    }

    /// Keeps a fenced answer: `signalled` when nothing but earlier answers of its timeline
    /// holds it back. `charge` (one pending fence) is held until it is handed back.
    pub fn push(
        &mut self,
        timeline: Timeline,
        fence_id: u64,
        signalled: bool,
        charge: Charge,
    ) -> FenceToken {
        self.next_token += 1;
        let token = FenceToken(self.next_token);
        self.timelines
            .entry(timeline)
            .or_default()
            .push_back(Waiting {
                token,
                fence_id,
                signalled,
                _charge: charge,
            });
        self.waiting += 1;
        // A signalled answer at the head of its timeline is ready at once (the caller
        // answers now instead when the timeline was idle; this covers the other paths).
        self.release(timeline);
        token
    }

    /// Fence `fence_id` of `timeline` signalled: it and every earlier fence of the timeline
    /// are done (renderers retire a timeline in order). Unknown ids are ignored (a fence of a
    /// context destroyed meanwhile, or of the time before a reset); returns whether it was
    /// known.
    pub fn signal(&mut self, timeline: Timeline, fence_id: u64) -> bool {
        let Some(queue) = self.timelines.get_mut(&timeline) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|w| w.fence_id == fence_id) else {
            return false;
        };
        for w in queue.iter_mut().take(pos + 1) {
            w.signalled = true;
        }
        self.release(timeline);
        true
    }

    /// Every waiting answer of `ctx_id`'s rings is released (the context was destroyed or
    /// lost: its fences will never signal). Answers of the global timeline keep their order.
    pub fn release_context(&mut self, ctx_id: u32) {
        let rings: Vec<Timeline> = self
            .timelines
            .keys()
            .copied()
            .filter(|t| matches!(t, Timeline::Ring { ctx_id: c, .. } if *c == ctx_id))
            .collect();
        for timeline in rings {
            if let Some(queue) = self.timelines.get_mut(&timeline) {
                queue.iter_mut().for_each(|w| w.signalled = true);
            }
            self.release(timeline);
        }
    }

    /// Every waiting answer of the global timeline is released, in order (the renderer that
    /// would have signalled them is gone).
    pub fn release_global(&mut self) {
        if let Some(queue) = self.timelines.get_mut(&Timeline::Global) {
            queue.iter_mut().for_each(|w| w.signalled = true);
        }
        self.release(Timeline::Global);
    }

    /// Moves the signalled head of `timeline` to the ready list.
    fn release(&mut self, timeline: Timeline) {
        let Some(queue) = self.timelines.get_mut(&timeline) else {
            return;
        };
        while queue.front().is_some_and(|w| w.signalled) {
            if let Some(w) = queue.pop_front() {
                self.ready.push(w.token);
                self.waiting -= 1;
            }
        }
        if queue.is_empty() {
            self.timelines.remove(&timeline);
        }
    }

    /// Whether answers are ready to be handed back.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The tokens whose answers may go now, in the order they became ready.
    pub fn take_ready(&mut self) -> Vec<FenceToken> {
        std::mem::take(&mut self.ready)
    }

    /// Answers waiting (not yet handed back).
    pub fn waiting(&self) -> usize {
        self.waiting + self.ready.len()
    }

    /// Forgets everything (device reset: the transport drops the held chains unanswered).
    pub fn clear(&mut self) {
        self.timelines.clear();
        self.ready.clear();
        self.waiting = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::budget::{Budget, Kind, Usage};

    fn budget() -> Budget {
        Budget::new(Usage::of(Kind::PendingFences, 8))
    }

    fn one(b: &Budget) -> Charge {
        b.charge(Usage::of(Kind::PendingFences, 1)).unwrap()
    }

    const RING: Timeline = Timeline::Ring { ctx_id: 3, ring: 1 };

    #[test]
    fn answers_go_in_fence_order_per_timeline() {
        let b = budget();
        let mut f = Fences::default();
        let a = f.push(Timeline::Global, 10, false, one(&b));
        // A 2D answer behind a renderer fence waits for it.
        let two_d = f.push(Timeline::Global, 11, true, one(&b));
        let r = f.push(RING, 12, false, one(&b));
        assert!(f.take_ready().is_empty());
        assert_eq!(f.waiting(), 3);
        assert_eq!(b.used().get(Kind::PendingFences), 3);
        // The ring's fence is on its own timeline.
        assert!(f.signal(RING, 12));
        assert_eq!(f.take_ready(), vec![r]);
        assert!(f.signal(Timeline::Global, 10));
        assert_eq!(f.take_ready(), vec![a, two_d]);
        assert_eq!(f.waiting(), 0);
        assert!(!f.busy(Timeline::Global));
        assert_eq!(b.used().get(Kind::PendingFences), 0, "charges released");
        assert!(!f.signal(Timeline::Global, 10), "a fence signals once");
    }

    #[test]
    fn a_later_signal_releases_earlier_fences() {
        let b = budget();
        let mut f = Fences::default();
        let t: Vec<_> = (0..3)
            .map(|i| f.push(Timeline::Global, 20 + i, false, one(&b)))
            .collect();
        assert!(f.signal(Timeline::Global, 21));
        assert_eq!(f.take_ready(), t[..2].to_vec());
        assert!(
            !f.signal(Timeline::Global, 99),
            "unknown fence ids are ignored"
        );
        assert_eq!(f.waiting(), 1);
    }

    #[test]
    fn destroyed_contexts_release_their_rings_and_reset_forgets_all() {
        let b = budget();
        let mut f = Fences::default();
        let _global = f.push(Timeline::Global, 1, false, one(&b));
        let r1 = f.push(RING, 2, false, one(&b));
        let r2 = f.push(Timeline::Ring { ctx_id: 3, ring: 0 }, 3, false, one(&b));
        let _other = f.push(Timeline::Ring { ctx_id: 4, ring: 0 }, 4, false, one(&b));
        f.release_context(3);
        let mut ready = f.take_ready();
        ready.sort();
        assert_eq!(ready, vec![r1, r2]);
        assert_eq!(
            f.waiting(),
            2,
            "the global fence and ctx 4's ring still wait"
        );
        f.clear();
        assert_eq!(f.waiting(), 0);
        assert!(!f.signal(Timeline::Global, 1));
        assert_eq!(b.used().get(Kind::PendingFences), 0);
    }
}
