//! A vhost-user virtio-gpu device backend with blob mapping through SHMEM_MAP.
#![warn(missing_docs)]

pub mod device;
