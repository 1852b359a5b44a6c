//! virtio-gpu conformance cases that run inside a Linux guest (the static
//! `guest-tests` binary) and the host-side `vm-lanes` runner that boots such
//! guests under QEMU.
//!
//! The library holds what both sides share: the result line format
//! ([`report`]) and the KMS test pattern the guest draws and the host checks in
//! PNG captures and screendumps ([`pattern`]), and the guest-side Wayland proxy over a
//! cross-domain channel ([`wl_proxy`]).

pub mod pattern;
pub mod report;
pub mod wl_proxy;
