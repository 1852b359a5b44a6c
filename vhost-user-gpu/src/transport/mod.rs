//! The vhost-user transport: the daemon glue around the device core.
//!
//! - [`chain`]: request/response copying for one descriptor chain, with the bounds checks.
//! - [`shmem`]: the `SHMEM_MAP`/`SHMEM_UNMAP` region mapper (shmid 1).

pub mod chain;
pub mod shmem;

pub use shmem::{BackendChannel, ShmemMapper};
