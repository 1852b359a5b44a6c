//! Handing a child process one of our descriptors at a fixed number, as a service manager or
//! libvirt does (`--fd N`), or none at all, as an operator's shell does. Holds this crate's one
//! `unsafe` outside the memory modules: `pre_exec`.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child started by `cmd` find `fd` at descriptor number `at`, inheritable there.
/// The parent's copy keeps `FD_CLOEXEC`, so no other child started meanwhile inherits it.
pub fn pass_fd_at(cmd: &mut Command, fd: BorrowedFd<'_>, at: i32) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: dup2 is one, and the closure touches no other state. `raw` is open
    // in the child (fork copies the parent's table; the caller keeps `fd` alive until spawn
    // returns). dup2 leaves the new number without FD_CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, at) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the child started by `cmd` inherit no descriptor but stdin, stdout and stderr (a new
/// backend started by an operator for a live upgrade): this frontend's own eventfds and
/// sockets are not all close-on-exec (the `vhost` crate's are not), and a test must not count
/// them as the backend's.
pub fn inherit_only_stdio(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call (close_range), touching no other state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
