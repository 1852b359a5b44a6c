//! The one raw-fd operation of the bench, its only `unsafe`: adopting the socket the floor
//! child inherits.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Takes ownership of inherited fd `fd` as a Unix stream socket.
pub fn inherited_stream(fd: i32) -> Result<UnixStream, String> {
    // Refuse the standard streams and anything that is not an open socket before adopting it.
    if fd <= 2 {
        return Err(format!(
            "fd {fd} is a standard stream, not the floor socket"
        ));
    }
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("fd {fd} is not open: {e}"))?;
    if !target.to_string_lossy().starts_with("socket:") {
        return Err(format!("fd {fd} is {}, not a socket", target.display()));
    }
    // SAFETY: the fd is open (checked above), was passed to this process by its parent for
    // exactly this purpose, and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixStream::from(owned))
}
