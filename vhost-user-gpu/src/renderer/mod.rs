//! 3D rendering for virtio-gpu contexts: implementations of the device's
//! [`Renderer`](crate::device::ports::Renderer) port. [`VirglRenderer`] runs virglrenderer
//! (virgl for OpenGL, venus for Vulkan), loaded at run time.
//!
//! Why virglrenderer is loaded at run time through our own declarations ([`ffi`]) instead of
//! a maintained binding: neither the `virglrenderer` crate (0.1.6, which needs the 1.0 log
//! API) nor `rutabaga_gfx` (0.1.85, which asks pkg-config for >= 1.3.0) builds against
//! Debian bookworm's 0.10.4, and both link at build time, which would put 3D behind a cargo
//! feature that is off by default. Loaded at run time, one binary offers 3D exactly where
//! the host can render, and runs against 0.10.4 and 1.x alike.
//!
//! Threads: virglrenderer keeps one global state per process and its GL contexts are
//! current on the thread that initialised it, so a [`VirglRenderer`] is not `Send` and at
//! most one exists per process. [`RendererThread`] runs one on a thread of its own and hands
//! out `Send` handles ([`RendererClient`]) that implement the same port, so each
//! connection's device (which moves between the vhost-user threads) can own one.
//!
//! Isolation: [`RenderWorker`] runs the same [`VirglRenderer`] in a process of its own (our
//! binary re-executed as `--render-worker`, [`worker`]), over the typed messages of
//! [`wire`], so that a fault in the library or Mesa ends that process only (the backend's
//! default, `--renderer-isolation process`); [`RendererThread`] runs it on a thread of the
//! backend (`--renderer-isolation thread`).
//!
//! Tests of the device core use [`fake::FakeRenderer`] (named as such): deterministic fences,
//! real memfd blobs, no library.
//!
//! Fences: `Renderer::create_fence` returns at once; the renderer signals completion on its
//! poll fd (`Renderer::poll_fd`, one fd for every renderer-internal eventfd, timer and the
//! render server's pidfd), and `Renderer::poll` (never blocking) returns what completed.

pub mod fake;
mod ffi;
mod process;
mod thread;
mod virgl;
pub mod wire;
pub mod worker;

pub use ffi::DEFAULT_LIBRARY;
pub use process::{RenderWorker, RenderWorkerClient, ANSWER_TIMEOUT};
pub use thread::{RendererClient, RendererThread};
pub use virgl::{VirglConfig, VirglRenderer, DEFAULT_RENDER_SERVER};
