// The C ABI's version, declared once: included by `src/ffi.rs` (the constants and the
// generated header) and by `build.rs` (the SONAME `libdmabuf_info.so.<major>`).

/// ABI major version: bumped with incompatible changes (and with it the SONAME).
pub const DMABUF_INFO_ABI_MAJOR: u32 = 1;
/// ABI minor version: bumped with compatible additions.
pub const DMABUF_INFO_ABI_MINOR: u32 = 0;
