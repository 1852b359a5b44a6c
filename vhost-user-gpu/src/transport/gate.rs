//! What the queue thread is doing, for the frontend-message handlers that must know whether
//! they may wait for it.
//!
//! `GET_VRING_BASE` waits for the chain being served to finish, but must not wait while the
//! queue thread itself waits for the frontend (a `SHMEM_MAP` acknowledgement, a display
//! reply): the frontend cannot answer while it waits for our reply. Every such round trip runs
//! inside [`QueueGate::frontend_round_trip`], so the handler sees it and stops waiting.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct GateState {
    /// The queue whose chain is being served.
    serving: Option<u16>,
    /// Round trips to the frontend in progress.
    awaiting_frontend: u32,
    /// The queue thread is parked (live upgrade) and serves nothing.
    parked: bool,
}

/// The queue thread's activity, shared with the connection thread.
#[derive(Debug, Default)]
pub struct QueueGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// How a wait for the queue thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The queue thread is not serving a chain of that queue.
    Idle,
    /// It waits for the frontend: waiting for it would deadlock.
    AwaitingFrontend,
    /// It is still serving after the time limit.
    TimedOut,
}

impl QueueGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue thread starts serving a chain of `queue`.
    pub fn begin_chain(&self, queue: u16) {
        self.lock().serving = Some(queue);
    }

    /// The chain is done (completed or held).
    pub fn end_chain(&self) {
        self.lock().serving = None;
        self.changed.notify_all();
    }

    /// Runs `f`, a request the frontend answers, marked as such.
    pub fn frontend_round_trip<T>(&self, f: impl FnOnce() -> T) -> T {
        self.lock().awaiting_frontend += 1;
        self.changed.notify_all();
        let result = f();
        self.lock().awaiting_frontend -= 1;
        self.changed.notify_all();
        result
    }

    /// Marks the queue thread parked or running again.
    pub fn set_parked(&self, parked: bool) {
        self.lock().parked = parked;
        self.changed.notify_all();
    }

    /// Whether the queue thread is parked.
    pub fn parked(&self) -> bool {
        self.lock().parked
    }

    /// Waits until the queue thread is parked, at most `limit`.
    pub fn wait_parked(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while !state.parked {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Waits until no chain of `queue` is being served, the queue thread waits for the
    /// frontend, or `limit` passes.
    pub fn wait_chain_done(&self, queue: u16, limit: Duration) -> WaitOutcome {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        loop {
            if state.serving != Some(queue) {
                return WaitOutcome::Idle;
            }
            if state.awaiting_frontend > 0 {
                return WaitOutcome::AwaitingFrontend;
            }
            let now = Instant::now();
            if now >= deadline {
                return WaitOutcome::TimedOut;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_for_the_chain_but_not_for_a_round_trip() {
        let gate = Arc::new(QueueGate::default());
        assert_eq!(
            gate.wait_chain_done(0, Duration::from_secs(5)),
            WaitOutcome::Idle
        );
        gate.begin_chain(0);
        assert_eq!(
            gate.wait_chain_done(1, Duration::from_secs(5)),
            WaitOutcome::Idle,
            "another queue"
        );
        assert_eq!(
            gate.wait_chain_done(0, Duration::from_millis(20)),
            WaitOutcome::TimedOut
        );
        // The chain ends while someone waits.
        let g = gate.clone();
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            g.end_chain();
        });
        assert_eq!(
            gate.wait_chain_done(0, Duration::from_secs(5)),
            WaitOutcome::Idle
        );
        ender.join().unwrap();
        // A round trip to the frontend starts while someone waits: the wait ends at once.
        gate.begin_chain(0);
        let g = gate.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let tripper = std::thread::spawn(move || {
            g.frontend_round_trip(|| rx.recv().unwrap());
        });
        assert_eq!(
            gate.wait_chain_done(0, Duration::from_secs(5)),
            WaitOutcome::AwaitingFrontend
        );
        tx.send(()).unwrap();
        tripper.join().unwrap();
        gate.end_chain();
        assert!(!gate.wait_parked(Duration::from_millis(1)));
        gate.set_parked(true);
        assert!(gate.wait_parked(Duration::from_millis(1)));
    }
}
