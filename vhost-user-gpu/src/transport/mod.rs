//! The vhost-user transport: our own, on the `vhost` crate's message layer
//! (DESIGN-lifecycle.md 3 says why not vhost-user-backend).
//!
//! - [`server`]: where frontends come from (`--socket-path`, `--fd` listening or connected,
//!   `--keep-listening`) and serving one connection.
//! - [`connection`]: the connection thread's message loop, which can stop between messages.
//! - [`control`]: stopping the serve loop at a quiet point, and what it serves (live upgrade).
//! - [`handler`]: the frontend's messages (features, memory table, rings, config space,
//!   channels); never waits for the device.
//! - [`session`]: the state one connection's threads share, and the deferred operations.
//! - [`worker`]: the queue thread, owner of the device core; epoll over kicks and other
//!   event sources.
//! - [`vring`]: one ring, its fds, and what pause/reset/upgrade need to know about it.
//! - [`memory`]: the guest memory table.
//! - [`gate`]: what the queue thread is doing (may the connection thread wait for it).
//! - [`chain`]: request/response copying for one descriptor chain, with the bounds checks.
//! - [`shmem`]: the `SHMEM_MAP`/`SHMEM_UNMAP` region mapper (shmid 1).
//! - [`upgrade`]: the live upgrade's handover (old and new process).
//! - [`sys`]: the raw file-descriptor operations (the transport's only `unsafe`).

pub mod chain;
pub mod connection;
pub mod control;
pub mod gate;
pub mod handler;
pub mod memory;
pub mod server;
pub mod session;
pub mod shmem;
pub mod sys;
pub mod upgrade;
pub mod vring;
pub mod worker;

pub use control::ServeControl;
pub use server::{open_endpoint, serve, DeviceFactory, Endpoint, ServeError, SocketSource, Start};
pub use session::TransportSettings;
pub use shmem::{BackendChannel, ShmemMapper};
