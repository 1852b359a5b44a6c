//! Host buffer allocators.
