//! The transport's raw file-descriptor operations, the only `unsafe` of `crate::transport`:
//! adopting the socket a service manager or libvirt passed (`--fd`), and putting an
//! inherited connection in place of another socket (live upgrade).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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
    // `adopt_socket`, once the caller checked what the descriptor is.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Takes ownership of an inherited descriptor the caller checked to be a Unix stream socket.
pub(crate) fn adopt_socket(fd: BorrowedFd<'static>) -> OwnedFd {
    // SAFETY: the fd is a Unix stream socket inherited for us to own (checked by the
    // caller); nothing else in this process uses it or closes it.
    unsafe { OwnedFd::from_raw_fd(fd.as_raw_fd()) }
}

/// Makes descriptor number `target` (owned by someone else, e.g. the `vhost` crate's
/// endpoint) refer to what `with` refers to, atomically; the file `target` referred to before
/// is closed. `cloexec`: whether the number is closed on `exec` (`dup3(O_CLOEXEC)`), as every
/// descriptor of this process is except stderr.
pub(crate) fn replace_fd(
    target: RawFd,
    with: BorrowedFd<'_>,
    cloexec: bool,
) -> std::io::Result<()> {
    // SAFETY: `target` is open and owned elsewhere in this process; the ManuallyDrop keeps
    // this temporary OwnedFd from closing it, so ownership stays where it was. dup3 only
    // swaps what the number refers to.
    let mut target = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(target) });
    let flags = if cloexec {
        rustix::io::DupFlags::CLOEXEC
    } else {
        rustix::io::DupFlags::empty()
    };
    rustix::io::dup3(with, &mut target, flags)?;
    Ok(())
}
