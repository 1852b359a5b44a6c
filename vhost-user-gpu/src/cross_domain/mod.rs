//! Cross-domain channels: the host side of `CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND`.
//!
//! - [`wire`]: every released layout of the channel commands (INIT 16/20/24 bytes, SEND and
//!   RECEIVE with 4 or 28 identifier slots, POLL, READ, WRITE); `CROSS-DOMAIN.md` says who
//!   sends which.
//! - [`channel`]: one non-blocking connection to the host compositor per context, with the
//!   identifier tables, pipes and fd passing, every guest-supplied size, count and id bounded.
//!
//! The device core drives a [`channel::WaylandChannel`] from its cross-domain context and
//! lends it a [`channel::BlobExporter`] to turn resource ids into fds.

pub mod channel;
pub mod wire;
