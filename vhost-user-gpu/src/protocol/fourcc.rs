//! DRM fourcc codes and format modifiers used on the host side (little-endian, as in
//! `drm_fourcc.h`): the formats of cross-domain images and of what scanouts show.

/// `DRM_FORMAT_ARGB8888` ('AR24'): bytes B, G, R, A in memory.
pub const ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
/// `DRM_FORMAT_XRGB8888` ('XR24'): bytes B, G, R, X in memory.
pub const XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
/// `DRM_FORMAT_ABGR8888` ('AB24'): bytes R, G, B, A in memory.
pub const ABGR8888: u32 = u32::from_le_bytes(*b"AB24");
/// `DRM_FORMAT_XBGR8888` ('XB24'): bytes R, G, B, X in memory.
pub const XBGR8888: u32 = u32::from_le_bytes(*b"XB24");
/// `DRM_FORMAT_BGRA8888` ('BA24'): bytes A, R, G, B in memory.
pub const BGRA8888: u32 = u32::from_le_bytes(*b"BA24");
/// `DRM_FORMAT_BGRX8888` ('BX24'): bytes X, R, G, B in memory.
pub const BGRX8888: u32 = u32::from_le_bytes(*b"BX24");
/// `DRM_FORMAT_RGBA8888` ('RA24'): bytes A, B, G, R in memory.
pub const RGBA8888: u32 = u32::from_le_bytes(*b"RA24");
/// `DRM_FORMAT_RGBX8888` ('RX24'): bytes X, B, G, R in memory.
pub const RGBX8888: u32 = u32::from_le_bytes(*b"RX24");
/// `DRM_FORMAT_R8` ('R8  ').
pub const R8: u32 = u32::from_le_bytes(*b"R8  ");
/// `DRM_FORMAT_MOD_LINEAR`.
pub const MOD_LINEAR: u64 = 0;
/// `DRM_FORMAT_MOD_INVALID`.
pub const MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;
