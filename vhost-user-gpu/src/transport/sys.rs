//! The transport's raw file-descriptor operations, the only `unsafe` of `crate::transport`:
//! adopting the listening socket a service manager passed (`--fd`), and sharing one
//! eventfd number with every queue worker of vhost-user-backend.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};

use vhost::vhost_user::Listener;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// The event that stops a connection's queue worker, shared by all connections.
///
/// vhost-user-backend 0.24 registers the exit-event consumer a backend hands it with
/// `consumer.into_raw_fd()` and never closes it (`VringEpollHandler::new`), so a fresh
/// eventfd per connection would leak one fd per reconnect. Instead every worker gets the
/// same eventfd number, owned here for the life of the server, and the event is re-armed
/// (drained) between connections.
pub struct ExitEvent {
    consumer: EventConsumer,
    notifier: EventNotifier,
}

impl ExitEvent {
    /// A new, non-signalled exit event.
    pub fn new() -> io::Result<Self> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(ExitEvent { consumer, notifier })
    }

    /// The pair handed to the library for one worker thread.
    pub fn pair_for_worker(&self) -> io::Result<(EventConsumer, EventNotifier)> {
        // SAFETY: vhost-user-backend 0.24 turns this consumer straight into a raw fd for its
        // epoll set and never closes it (see the type's documentation), so the fd is never
        // closed twice; `self.consumer` keeps the real ownership and outlives every daemon
        // (the server drops it only after its last connection).
        let consumer = unsafe { EventConsumer::from_raw_fd(self.consumer.as_raw_fd()) };
        Ok((consumer, self.notifier.try_clone()?))
    }

    /// Clears a fired event so that the next connection's worker does not exit at once.
    pub fn rearm(&self) {
        while self.consumer.consume().is_ok() {}
    }
}

/// Borrows an inherited descriptor number for the life of the process, or `None` when the
/// number is not open.
pub(crate) fn borrow_inherited(fd: RawFd) -> Option<BorrowedFd<'static>> {
    // SAFETY: F_GETFD only reads the descriptor flags of whatever number it is given; it
    // touches no memory and fails with EBADF for a number that is not open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the number is open (checked above) and stays open: nothing in this process
    // closes inherited descriptors it does not own. Ownership is taken only by
    // `adopt_listener`, once the caller checked what the descriptor is.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Takes ownership of an inherited descriptor the caller checked to be a listening Unix
/// socket.
pub(crate) fn adopt_listener(fd: BorrowedFd<'static>) -> Listener {
    // SAFETY: the fd is a listening Unix socket inherited for us to own (checked by the
    // caller); nothing else in this process uses it.
    unsafe { Listener::from_raw_fd(fd.as_raw_fd()) }
}
