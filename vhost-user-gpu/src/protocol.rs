//! virtio-gpu wire protocol.
