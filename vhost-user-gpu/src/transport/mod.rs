//! The vhost-user transport: the daemon glue around the device core.
//!
//! - [`backend`]: `VhostUserBackend` for one connection (features, config space, memory
//!   table, queue processing, display channel, and the locking rules that keep a frontend
//!   such as QEMU from deadlocking).
//! - [`chain`]: request/response copying for one descriptor chain, with the bounds checks.
//! - [`shmem`]: the `SHMEM_MAP`/`SHMEM_UNMAP` region mapper (shmid 1).
//! - [`server`]: listening, serving, `--keep-listening`.
//! - [`sys`]: the raw file-descriptor operations (the transport's only `unsafe`).

pub mod backend;
pub mod chain;
pub mod server;
pub mod shmem;
pub mod sys;

pub use backend::{DeviceFactory, GpuBackend, TransportSettings};
pub use server::{open_listener, serve, ServeError, SocketSource};
pub use shmem::{BackendChannel, ShmemMapper};
