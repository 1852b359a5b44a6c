//! Resource limits set in the backend's process before it runs its first instruction.
//!
//! Set between `fork` and `exec` (a `pre_exec` hook), so they hold from the backend's start
//! without a helper program: `prlimit(1)` is not in the lanes' guests. Its one `unsafe`:
//! registering that hook.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

pub use rustix::process::Resource;
use rustix::process::{setrlimit, Rlimit};

/// Makes `cmd`'s child set every `(resource, value)` of `limits` as its soft and hard limit
/// before it executes the program.
pub fn set_at_exec(cmd: &mut Command, limits: &[(Resource, u64)]) {
    if limits.is_empty() {
        return;
    }
    let limits = limits.to_vec();
    let hook = move || -> rustix::io::Result<()> {
        for &(resource, value) in &limits {
            setrlimit(
                resource,
                Rlimit {
                    current: Some(value),
                    maximum: Some(value),
                },
            )?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only reads the vector it
    // owns (allocated before the fork, never resized) and makes setrlimit system calls,
    // which take no locks and allocate nothing; its error converts an errno into an
    // io::Error without allocating.
    unsafe {
        cmd.pre_exec(move || hook().map_err(std::io::Error::from));
    }
}
