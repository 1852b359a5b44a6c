//! The `SIGSYS` handler that turns a seccomp violation into a readable diagnosis.
//!
//! The only `unsafe` of the sandbox lives here: installing a signal handler, reading the
//! kernel's `siginfo` for `SIGSYS`, and the async-signal-safe calls the handler makes
//! (`write`, `rt_sigaction`, `tgkill`); and restoring the default action of the fault
//! signals in the render worker.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// `siginfo_t` as the kernel fills it for `SIGSYS` (`struct __sifields._sigsys`) on 64-bit
/// Linux: three ints, padding to the union's 8-byte alignment, then `_call_addr`,
/// `_syscall`, `_arch`.
#[repr(C)]
#[allow(dead_code)] // Every field mirrors the kernel's layout; only two are read.
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

// The layout above is the 64-bit one.
const _: () = assert!(std::mem::size_of::<usize>() == 8);
const _: () = assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());

/// `si_code` of a seccomp `SECCOMP_RET_TRAP` (`SYS_SECCOMP`).
const SYS_SECCOMP: libc::c_int = 1;

/// Appends `s` to `buf` at `*len` (truncating at the end of `buf`).
fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    for &b in s {
        if *len < buf.len() {
            buf[*len] = b;
            *len += 1;
        }
    }
}

/// Appends `n` in decimal.
fn push_number(buf: &mut [u8], len: &mut usize, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        push(buf, len, b"-");
    }
    push(buf, len, &digits[i..]);
}

/// The profile installed: `true` for the 3D (renderer) one. Read by the handler (an atomic
/// load is async-signal-safe).
static RENDERER_PROFILE: AtomicBool = AtomicBool::new(false);

/// Records which profile the filter is (for the diagnosis).
pub(super) fn set_renderer_profile(renderer: bool) {
    RENDERER_PROFILE.store(renderer, Ordering::Relaxed);
}

/// Builds the diagnosis line (no allocation: it runs inside a signal handler).
fn message(nr: i64, renderer: bool, buf: &mut [u8; 768]) -> usize {
    let mut len = 0;
    push(buf, &mut len, b"vhost-user-gpu: sandbox: system call ");
    push(buf, &mut len, super::syscalls::name_of(nr).as_bytes());
    push(buf, &mut len, b" (");
    push_number(buf, &mut len, nr);
    if renderer {
        push(
            buf,
            &mut len,
            b") is not on the seccomp allowlist of the 3D profile; terminating with SIGSYS. \
              The renderer (virglrenderer, Mesa) or the backend made a call the profile does \
              not know: report this line with the virglrenderer and Mesa versions; meanwhile \
              --capset cross-domain serves without 3D under the sandbox, or --sandbox off \
              serves 3D unconfined.\n",
        );
    } else {
        push(
            buf,
            &mut len,
            b") is not on the seccomp allowlist of the minimal profile; terminating with \
              SIGSYS. This is a bug in the backend or in a library it uses: report it with \
              this line; run with --sandbox off to debug.\n",
        );
    }
    len
}

extern "C" fn on_sigsys(signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut nr: i64 = -1;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler; for SIGSYS
        // with si_code SYS_SECCOMP its union holds `_sigsys`, whose layout `SigsysInfo`
        // mirrors (and which is no larger than `siginfo_t`, checked at compile time).
        let sys = unsafe { &*(info as *const SigsysInfo) };
        if sys.code == SYS_SECCOMP {
            nr = i64::from(sys.syscall);
        }
    }
    let mut buf = [0u8; 768];
    let len = message(nr, RENDERER_PROFILE.load(Ordering::Relaxed), &mut buf);
    // SAFETY: write(2) on fd 2 with a valid buffer and length; async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
    }
    // Restore the default action and re-raise: the signal is blocked while this handler
    // runs, so it is delivered right after the handler returns and ends the process with
    // SIGSYS (as SECCOMP_RET_KILL_PROCESS would), instead of resuming after the refused call.
    // SAFETY: signal(2) with SIG_DFL and tgkill(2) to this very thread are async-signal-safe
    // and touch no memory of ours.
    unsafe {
        libc::signal(signo, libc::SIG_DFL);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            signo,
        );
    }
}

/// Installs [`on_sigsys`] for `SIGSYS` (on the alternate stack when the thread has one).
pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid starting point (empty mask, no flags); the
    // handler is an `extern "C"` function with the SA_SIGINFO signature and lives for the
    // whole program.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restores the default action (end the process) of `SIGSEGV` and `SIGBUS`. Rust's
/// runtime catches them to tell a stack overflow from other faults and, for a signal that
/// was not a fault of its own (one sent with `kill`), returns without ending the process.
pub(super) fn default_fault_signals() -> io::Result<()> {
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a zeroed `sigaction` with SIG_DFL (0) is the default action; it replaces
        // the runtime's handler, which keeps no state that depends on staying installed.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_call() {
        let mut buf = [0u8; 768];
        let len = message(libc::SYS_socket, false, &mut buf);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            text.contains(&format!(
                "system call socket ({}) is not on the seccomp allowlist of the minimal profile",
                libc::SYS_socket
            )),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        // The 3D profile's line names it and the ways out, and fits the buffer whole.
        let len = message(libc::SYS_socket, true, &mut buf);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.contains("allowlist of the 3D profile"), "{text}");
        assert!(text.contains("--capset cross-domain"), "{text}");
        assert!(text.ends_with("unconfined.\n"), "{text}");
        let len = message(-1, false, &mut buf);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.contains("system call ? (-1)"), "{text}");
    }
}
