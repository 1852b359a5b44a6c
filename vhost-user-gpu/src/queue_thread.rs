//! Which thread may wait for the frontend.
//!
//! A frontend such as QEMU answers backend requests (`SHMEM_MAP`, display protocol replies)
//! only from its main loop, and may itself be blocked waiting for one of our replies on the
//! vhost-user socket. Anything that waits for a frontend answer must therefore run on the
//! queue-handling thread, never inside a frontend-message callback. The transport marks
//! that thread with a [`QueueThreadScope`]; the region mapper and QEMU's display channel
//! ask [`in_queue_thread`] before they send.
//!
//! This module is a leaf: it imports nothing from the crate, so the transport and the
//! display sinks can both use it without importing each other.

use std::cell::Cell;

thread_local! {
    static IN_QUEUE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as the queue-handling thread while alive (mapping requests are
/// allowed only then).
pub struct QueueThreadScope {
    previous: bool,
}

impl QueueThreadScope {
    /// Enters the scope.
    pub fn enter() -> Self {
        let previous = IN_QUEUE_THREAD.with(|c| c.replace(true));
        QueueThreadScope { previous }
    }
}

impl Drop for QueueThreadScope {
    fn drop(&mut self) {
        IN_QUEUE_THREAD.with(|c| c.set(self.previous));
    }
}

/// Whether the current thread is inside a [`QueueThreadScope`] (may wait for the frontend).
pub fn in_queue_thread() -> bool {
    IN_QUEUE_THREAD.with(Cell::get)
}
