//! The vhost-user transport.
