//! The host end of cross-domain Wayland channels (`CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND`): the
//! [`ChannelConnector`](crate::device::ports::ChannelConnector) and
//! [`Channel`](crate::device::ports::Channel) ports implemented over a Unix socket to the
//! host compositor (`$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY` or `--wayland-socket PATH`), one
//! connection per cross-domain context that asks for a channel.

mod channel;

pub use channel::{socket_from_env, ChannelLimits, WaylandChannel, WaylandConnector};
