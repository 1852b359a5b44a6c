//! A few virgl protocol commands (`virgl_protocol.h`: object creation, framebuffer state,
//! clear), enough to make a real virgl renderer draw something a test can check. Written
//! from the protocol's facts, independent of the backend's code, like the rest of this
//! crate's codecs.

/// A command header: command, object type, length in 32-bit words after the header.
pub const fn header(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}

/// `VIRGL_CCMD_CREATE_OBJECT`.
pub const CCMD_CREATE_OBJECT: u32 = 1;
/// `VIRGL_CCMD_SET_FRAMEBUFFER_STATE`.
pub const CCMD_SET_FRAMEBUFFER_STATE: u32 = 5;
/// `VIRGL_CCMD_CLEAR`.
pub const CCMD_CLEAR: u32 = 7;
/// `VIRGL_OBJECT_SURFACE`.
pub const OBJECT_SURFACE: u32 = 8;
/// `PIPE_CLEAR_COLOR0`.
pub const CLEAR_COLOR0: u32 = 1 << 2;
/// `PIPE_TEXTURE_2D`.
pub const TEXTURE_2D: u32 = 2;
/// `VIRGL_FORMAT_B8G8R8X8_UNORM` (the same number as virtio-gpu's format).
pub const FORMAT_B8G8R8X8_UNORM: u32 = 2;
/// `VIRGL_BIND_RENDER_TARGET`.
pub const BIND_RENDER_TARGET: u32 = 1 << 1;
/// `VIRGL_BIND_SAMPLER_VIEW`.
pub const BIND_SAMPLER_VIEW: u32 = 1 << 3;
/// `VIRGL_BIND_SCANOUT`.
pub const BIND_SCANOUT: u32 = 1 << 18;

/// A stream that makes surface object `surface` over resource `res` (B8G8R8X8), binds it
/// as the only colour buffer and clears it to `rgba`.
pub fn clear(res: u32, surface: u32, rgba: [f32; 4]) -> Vec<u8> {
    let mut words = vec![
        header(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 5),
        surface,
        res,
        FORMAT_B8G8R8X8_UNORM,
        0, // level
        0, // first layer | last layer << 16
        header(CCMD_SET_FRAMEBUFFER_STATE, 0, 3),
        1, // nr_cbufs
        0, // no depth/stencil surface
        surface,
        header(CCMD_CLEAR, 0, 8),
        CLEAR_COLOR0,
    ];
    words.extend(rgba.iter().map(|c| c.to_bits()));
    words.extend([0, 0, 0]); // depth (f64), stencil
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
