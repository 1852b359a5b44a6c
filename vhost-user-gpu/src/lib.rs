//! A vhost-user virtio-gpu device backend with blob mapping through SHMEM_MAP.
//!
//! Layout:
//! - [`protocol`]: virtio-gpu wire structs, the typed command decoded from bytes and the
//!   typed response encoded back.
//! - [`device`]: the device state machine (resources, contexts, scanouts, the host-visible
//!   region allocator), apart from any queue handling; [`device::ports`] are its interfaces.
//! - [`alloc`]: host buffer allocators (memfd, udmabuf, gbm).
//! - [`transport`]: the vhost-user glue (queues, config space, SHMEM_MAP mapper).
//! - [`display`]: display sinks (QEMU's vhost-user-gpu display protocol, PNG capture).
//! - [`renderer`]: 3D rendering (virglrenderer, loaded at run time) behind the `Renderer` port.
//! - [`advisor`]: the map advisor over `dmabuf-info`.
//! - [`wayland`]: the host end of cross-domain Wayland channels (compositor connection,
//!   identifier tables, pipes).
//! - [`sandbox`]: self-confinement after start-up (seccomp-bpf allowlist, Landlock).
//! - [`queue_thread`]: marks the thread that may wait for the frontend.
//! - [`guest_log`]: the one rate limiter of log lines a guest can cause.

pub mod advisor;
pub mod alloc;
pub mod device;
pub mod display;
pub mod guest_log;
pub mod protocol;
pub mod queue_thread;
pub mod renderer;
pub mod sandbox;
pub mod transport;
pub mod wayland;
