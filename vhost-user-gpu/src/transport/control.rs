//! The serve loop as the live upgrade sees it: a way to stop it at a quiet point and to
//! let it go on (rollback), and the connection it is serving, if any.
//!
//! The serve loop is stopped only between two things: while it waits for a frontend
//! (accept) or between two frontend messages ([`crate::transport::connection`]). One
//! [`Stopper`] serves both. After a stop the loop reports [`Phase::Stopped`] and waits for
//! [`ServeControl::resume`]; a committed upgrade ends the process instead.

use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::device::GpuDevice;
use crate::transport::connection::Stopper;
use crate::transport::session::Session;
use crate::transport::worker::{WorkerControl, WorkerRequest};

/// Where the serve loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving (or waiting for a frontend).
    Running,
    /// Stopped at a quiet point, waiting for [`ServeControl::resume`].
    Stopped,
    /// Told to go on.
    Resuming,
}

/// A connection being served: what the upgrade hands over.
pub struct Live {
    /// The connection's shared state.
    pub session: Arc<Session>,
    /// Its queue thread.
    pub worker: WorkerControl,
    /// A duplicate of the vhost-user connection's fd.
    pub conn: OwnedFd,
}

impl Live {
    /// Parks the queue thread at a chain boundary; `false` if it did not within `limit`.
    pub fn park(&self, limit: Duration) -> bool {
        self.worker.request(WorkerRequest::Park);
        self.session.gate.wait_parked(limit)
    }

    /// Lets the queue thread serve again.
    pub fn unpark(&self) {
        self.worker.request(WorkerRequest::Resume);
    }

    /// Runs `f` on the (parked) device on the queue thread; `None` if it did not answer
    /// within `limit`.
    pub fn with_device<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl FnOnce(&mut GpuDevice) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        self.worker
            .request(WorkerRequest::WithDevice(Box::new(move |device| {
                let _ = tx.send(f(device));
            })));
        rx.recv_timeout(limit).ok()
    }
}

/// Control over one serve loop, shared with the upgrade's control thread.
pub struct ServeControl {
    stopper: Stopper,
    phase: Mutex<Phase>,
    changed: Condvar,
    live: Mutex<Option<Arc<Live>>>,
    /// A duplicate of the listening socket, when there is one (handed over too).
    listener: Mutex<Option<OwnedFd>>,
}

impl ServeControl {
    /// Control for a serve loop.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(ServeControl {
            stopper: Stopper::new()?,
            phase: Mutex::new(Phase::Running),
            changed: Condvar::new(),
            live: Mutex::new(None),
            listener: Mutex::new(None),
        }))
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What stops the serve loop at its next quiet point.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// The serve loop stopped (called by the loop); returns once told to resume.
    pub fn stopped_here(&self) {
        let mut phase = self.phase();
        *phase = Phase::Stopped;
        self.changed.notify_all();
        while *phase == Phase::Stopped {
            phase = self.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
        }
        *phase = Phase::Running;
    }

    /// Stops the serve loop; `true` once it stopped, `false` after `limit` (then the stop is
    /// taken back).
    pub fn stop(&self, limit: Duration) -> bool {
        self.stopper.stop();
        let deadline = Instant::now() + limit;
        let mut phase = self.phase();
        while *phase != Phase::Stopped {
            let now = Instant::now();
            if now >= deadline {
                drop(phase);
                self.stopper.take_back();
                return false;
            }
            phase = self
                .changed
                .wait_timeout(phase, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Lets a stopped serve loop go on.
    pub fn resume(&self) {
        let mut phase = self.phase();
        if *phase == Phase::Stopped {
            *phase = Phase::Resuming;
            self.changed.notify_all();
        }
    }

    /// Records the connection being served (`None` when it ends).
    pub fn set_live(&self, live: Option<Arc<Live>>) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = live;
    }

    /// The connection being served, if any.
    pub fn live(&self) -> Option<Arc<Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records (a duplicate of) the listening socket.
    pub fn set_listener(&self, fd: Option<OwnedFd>) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = fd;
    }

    /// A duplicate of the listening socket, if there is one.
    pub fn listener(&self) -> Option<OwnedFd> {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_waits_for_the_loop_and_resume_lets_it_go_on() {
        let control = ServeControl::new().unwrap();
        // Nobody stops: the stop times out and is taken back.
        assert!(!control.stop(Duration::from_millis(20)));
        let c = control.clone();
        let lp = std::thread::spawn(move || {
            // The loop notices the stopper, stops, and comes back on resume.
            c.stopper().wait_stopped();
            c.stopped_here();
        });
        assert!(control.stop(Duration::from_secs(5)));
        control.resume();
        lp.join().unwrap();
        assert_eq!(*control.phase(), Phase::Running);
    }
}
