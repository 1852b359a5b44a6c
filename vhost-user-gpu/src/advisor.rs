//! The map advisor over `dmabuf-info`.
