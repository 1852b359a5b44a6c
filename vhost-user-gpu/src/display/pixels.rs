//! Pixel format conversion for display sinks.
//!
//! Scanout frames arrive in a 32-bit DRM format ([`crate::protocol::fourcc`]); PNG wants
//! RGBA bytes and QEMU's display protocol wants `PIXMAN_x8r8g8b8`, which on a little-endian
//! host is DRM `XRGB8888` (bytes B, G, R, X). Frames come from guest-controlled sizes, so
//! every index here is checked: a frame whose buffer is too short is rejected, never read
//! past its end.

use crate::device::ports::Frame;
use crate::protocol::{fourcc, Rect};

/// Byte positions of the red, green and blue channels inside one 4-byte pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOrder {
    /// Byte index of red.
    pub r: usize,
    /// Byte index of green.
    pub g: usize,
    /// Byte index of blue.
    pub b: usize,
}

/// The channel order of a 32-bit DRM format, or `None` for formats the sinks cannot show.
pub fn channel_order(drm_format: u32) -> Option<ChannelOrder> {
    let (r, g, b) = match drm_format {
        fourcc::ARGB8888 | fourcc::XRGB8888 => (2, 1, 0),
        fourcc::ABGR8888 | fourcc::XBGR8888 => (0, 1, 2),
        fourcc::BGRA8888 | fourcc::BGRX8888 => (1, 2, 3),
        fourcc::RGBA8888 | fourcc::RGBX8888 => (3, 2, 1),
        _ => return None,
    };
    Some(ChannelOrder { r, g, b })
}

/// Why a frame cannot be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PixelError {
    /// The format is not a 32-bit RGB format the sinks know.
    #[error("unsupported scanout format {0:#010x}")]
    UnsupportedFormat(u32),
    /// `stride`/`height` do not fit in the frame's buffer.
    #[error("frame {width}x{height} stride {stride} needs more than the {len} bytes given")]
    ShortBuffer {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Frame stride.
        stride: u32,
        /// Buffer length.
        len: usize,
    },
    /// The host cannot allocate the converted copy.
    #[error("cannot allocate {bytes} bytes for the converted frame")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
}

/// Checks that `frame` is a supported format and that every row of it lies in `data`.
pub fn validate(frame: &Frame<'_>) -> Result<ChannelOrder, PixelError> {
    let order =
        channel_order(frame.drm_format).ok_or(PixelError::UnsupportedFormat(frame.drm_format))?;
    let short = || PixelError::ShortBuffer {
        width: frame.width,
        height: frame.height,
        stride: frame.stride,
        len: frame.data.len(),
    };
    if frame.height == 0 || frame.width == 0 {
        return Ok(order);
    }
    let row_bytes = u64::from(frame.width) * 4;
    if u64::from(frame.stride) < row_bytes {
        return Err(short());
    }
    let needed = u64::from(frame.stride) * u64::from(frame.height - 1) + row_bytes;
    if needed > frame.data.len() as u64 {
        return Err(short());
    }
    Ok(order)
}

/// Clamps `rect` to the frame's bounds (an empty rect if it lies outside).
pub fn clamp_rect(rect: Rect, width: u32, height: u32) -> Rect {
    let x = rect.x.min(width);
    let y = rect.y.min(height);
    let right = rect.x.saturating_add(rect.width).min(width);
    let bottom = rect.y.saturating_add(rect.height).min(height);
    Rect {
        x,
        y,
        width: right - x,
        height: bottom - y,
    }
}

/// A zeroed buffer of `bytes`, or [`PixelError::OutOfMemory`] (never an abort: frame sizes
/// come from the guest).
pub fn try_zeroed(bytes: usize) -> Result<Vec<u8>, PixelError> {
    let mut out = Vec::new();
    out.try_reserve_exact(bytes)
        .map_err(|_| PixelError::OutOfMemory { bytes })?;
    out.resize(bytes, 0);
    Ok(out)
}

/// Converts `rect` (already clamped to the frame) of a validated frame into tightly packed
/// pixels, calling `put(dst, src)` for each 4-byte pixel.
fn convert_rect(
    frame: &Frame<'_>,
    rect: Rect,
    put: impl Fn(&mut [u8], &[u8]),
) -> Result<Vec<u8>, PixelError> {
    let row_out = rect.width as usize * 4;
    let mut out = try_zeroed(row_out * rect.height as usize)?;
    for (row, dst_row) in out
        .chunks_exact_mut(row_out.max(1))
        .enumerate()
        .take(rect.height as usize)
    {
        let start = (rect.y as usize + row) * frame.stride as usize + rect.x as usize * 4;
        let src_row = &frame.data[start..start + row_out];
        for (dst, src) in dst_row.chunks_exact_mut(4).zip(src_row.chunks_exact(4)) {
            put(dst, src);
        }
    }
    Ok(out)
}

/// Converts `rect` of `frame` to opaque 4-byte pixels whose first three bytes are the
/// channels `pick` names (the fourth, alpha or X, is 0xff: a scanout ignores alpha, as a
/// display controller's primary plane does).
fn to_opaque(
    frame: &Frame<'_>,
    rect: Rect,
    pick: fn(ChannelOrder) -> [usize; 3],
) -> Result<Vec<u8>, PixelError> {
    let order = validate(frame)?;
    let rect = clamp_rect(rect, frame.width, frame.height);
    let [first, second, third] = pick(order);
    convert_rect(frame, rect, |dst, src| {
        dst[0] = src[first];
        dst[1] = src[second];
        dst[2] = src[third];
        dst[3] = 0xff;
    })
}

/// Converts `rect` of `frame` to RGBA bytes (opaque).
pub fn to_rgba(frame: &Frame<'_>, rect: Rect) -> Result<Vec<u8>, PixelError> {
    to_opaque(frame, rect, |o| [o.r, o.g, o.b])
}

/// Converts `rect` of `frame` to `PIXMAN_x8r8g8b8` (bytes B, G, R, X on little-endian), the
/// payload format of `VHOST_USER_GPU_UPDATE`.
pub fn to_xrgb8888(frame: &Frame<'_>, rect: Rect) -> Result<Vec<u8>, PixelError> {
    to_opaque(frame, rect, |o| [o.b, o.g, o.r])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8], width: u32, height: u32, stride: u32, drm_format: u32) -> Frame<'_> {
        Frame {
            width,
            height,
            stride,
            drm_format,
            data,
        }
    }

    #[test]
    fn every_supported_format_maps_red_to_red() {
        // One pixel of pure red in each format, written as the format's memory byte order.
        let cases: [(u32, [u8; 4]); 8] = [
            (fourcc::XRGB8888, [0, 0, 0xff, 0]),
            (fourcc::ARGB8888, [0, 0, 0xff, 0x80]),
            (fourcc::XBGR8888, [0xff, 0, 0, 0]),
            (fourcc::ABGR8888, [0xff, 0, 0, 0x80]),
            (fourcc::BGRX8888, [0, 0xff, 0, 0]),
            (fourcc::BGRA8888, [0x80, 0xff, 0, 0]),
            (fourcc::RGBX8888, [0, 0, 0, 0xff]),
            (fourcc::RGBA8888, [0x80, 0, 0, 0xff]),
        ];
        for (format, px) in cases {
            let f = frame(&px, 1, 1, 4, format);
            let all = Rect {
                x: 0,
                y: 0,
                width: 1,
                height: 1,
            };
            assert_eq!(
                to_rgba(&f, all).unwrap(),
                vec![0xff, 0, 0, 0xff],
                "format {format:#x}"
            );
            assert_eq!(
                to_xrgb8888(&f, all).unwrap(),
                vec![0, 0, 0xff, 0xff],
                "format {format:#x}"
            );
        }
    }

    #[test]
    fn stride_padding_and_rect_are_honoured() {
        // 2x2 XRGB with an 12-byte stride (4 bytes padding per row).
        let data = [
            1, 2, 3, 0, 4, 5, 6, 0, 0xee, 0xee, 0xee, 0xee, //
            7, 8, 9, 0, 10, 11, 12, 0, 0xee, 0xee, 0xee, 0xee,
        ];
        let f = frame(&data, 2, 2, 12, fourcc::XRGB8888);
        let got = to_rgba(
            &f,
            Rect {
                x: 1,
                y: 0,
                width: 1,
                height: 2,
            },
        )
        .unwrap();
        assert_eq!(got, vec![6, 5, 4, 0xff, 12, 11, 10, 0xff]);
        // A rect hanging off the frame is clamped, never read out of bounds.
        let got = to_rgba(
            &f,
            Rect {
                x: 1,
                y: 1,
                width: 100,
                height: 100,
            },
        )
        .unwrap();
        assert_eq!(got, vec![12, 11, 10, 0xff]);
        let got = to_rgba(
            &f,
            Rect {
                x: 5,
                y: 5,
                width: 1,
                height: 1,
            },
        )
        .unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn short_buffers_and_unknown_formats_are_rejected() {
        let data = [0u8; 15];
        let f = frame(&data, 2, 2, 8, fourcc::XRGB8888);
        assert!(matches!(
            to_rgba(
                &f,
                Rect {
                    x: 0,
                    y: 0,
                    width: 2,
                    height: 2
                }
            ),
            Err(PixelError::ShortBuffer { .. })
        ));
        let f = frame(&data, 2, 1, 4, fourcc::XRGB8888);
        assert!(
            matches!(validate(&f), Err(PixelError::ShortBuffer { .. })),
            "stride below width*4"
        );
        let f = frame(&data, 1, 1, 4, fourcc::R8);
        assert_eq!(validate(&f), Err(PixelError::UnsupportedFormat(fourcc::R8)));
    }
}
