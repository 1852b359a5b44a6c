//! Display sinks: where the pixels the guest shows go.
//!
//! - [`qemu::QemuDisplay`] speaks QEMU's vhost-user-gpu display protocol over the socket
//!   the frontend hands over with `VHOST_USER_GPU_SET_SOCKET`.
//! - [`capture::PngCapture`] writes every scanout as a PNG file (headless use, tests).
//! - [`fanout::FanOut`] feeds several sinks at once (capture and QEMU together); an empty
//!   fan-out is the "no display" sink.
//! - [`pixels`] converts the DRM formats scanouts use into the layouts the sinks need.

pub mod capture;
pub mod fanout;
pub mod pixels;
pub mod qemu;

pub use capture::PngCapture;
pub use fanout::{FanOut, SharedSink};
pub use qemu::QemuDisplay;
