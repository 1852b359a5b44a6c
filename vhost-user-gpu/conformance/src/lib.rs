//! A vhost-user virtio-gpu *frontend* for conformance tests and benchmarks.
//!
//! It plays the part QEMU plays for a vhost-user-gpu backend:
//! - [`frontend::Frontend`] starts a backend program on a socket, negotiates features and
//!   protocol features, hands over guest RAM (one memfd) and sets up the control and cursor
//!   split virtqueues ([`virtq`]) in it.
//! - [`shmem::SharedMemoryRegion`] answers the backend's `SHMEM_MAP`/`SHMEM_UNMAP` requests
//!   the way QEMU does: `mmap(MAP_FIXED|MAP_SHARED)` of the sent fd into a reserved
//!   `PROT_NONE` region, and an inaccessible mapping again on unmap.
//! - [`display::DisplayServer`] is QEMU's side of the vhost-user-gpu display protocol
//!   (`VHOST_USER_GPU_SET_SOCKET`), recording what the backend showed.
//! - [`gpu`] encodes virtio-gpu commands and decodes responses, written from the virtio
//!   specification independently of the device's own decoder; [`cross_domain`] does the
//!   same for the cross-domain context protocol.
//!
//! Nothing here is a mock: every test drives a real backend process through real sockets.

pub mod cases;
pub mod child;
pub mod cross_domain;
pub mod display;
pub mod error;
pub mod frontend;
pub mod gpu;
pub mod limits;
pub mod memory;
pub mod proc_stats;
pub mod shmem;
pub mod suite;
pub mod virgl;
pub mod virtq;

pub use error::{Error, Result};
pub use frontend::{BackendSpec, Frontend, Peer};
