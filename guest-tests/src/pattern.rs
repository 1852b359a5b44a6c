//! The KMS test pattern: four vertical bars (red, green, blue, white) across
//! the whole mode. The guest draws it into an XRGB8888 dumb buffer; the host
//! checks it in the backend's PNG capture or a QMP screendump.

use std::fs::File;
use std::path::Path;

/// The bar colours, left to right, as 0xRRGGBB.
pub const BARS: [u32; 4] = [0xff0000, 0x00ff00, 0x0000ff, 0xffffff];

/// The XRGB8888 value of pixel column `x` in a mode `width` pixels wide.
pub fn pixel(x: u32, width: u32) -> u32 {
    let bar = (u64::from(x) * 4 / u64::from(width.max(1))).min(3) as usize;
    BARS[bar]
}

/// An RGB image decoded from a PNG.
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixels as 0xRRGGBB, row by row.
    pub pixels: Vec<u32>,
}

impl Image {
    /// The pixel at (x, y), if inside the image.
    pub fn at(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let index = usize::try_from(u64::from(y) * u64::from(self.width) + u64::from(x)).ok()?;
        self.pixels.get(index).copied()
    }

    /// How many pixel rows have at least one pixel that differs from the
    /// background (taken from the bottom-right corner). A text cursor lights
    /// one or two rows; a line of console text in an 8x16 font about ten.
    pub fn lit_rows(&self) -> usize {
        let Some(background) = self.pixels.last().copied() else {
            return 0;
        };
        let width = self.width.max(1) as usize;
        self.pixels
            .chunks(width)
            .filter(|row| row.iter().any(|&p| p != background))
            .count()
    }

    /// Like [`Image::lit_rows`], counting only the pixel rows in `rows`.
    pub fn lit_rows_in(&self, rows: std::ops::Range<u32>) -> usize {
        let Some(background) = self.pixels.last().copied() else {
            return 0;
        };
        let width = self.width.max(1) as usize;
        self.pixels
            .chunks(width)
            .enumerate()
            .filter(|(y, _)| rows.contains(&(*y as u32)))
            .filter(|(_, row)| row.iter().any(|&p| p != background))
            .count()
    }

    /// How many different colours the image has (capped at 16).
    pub fn distinct_colors(&self) -> usize {
        let mut seen: Vec<u32> = Vec::new();
        for &p in &self.pixels {
            if !seen.contains(&p) {
                seen.push(p);
                if seen.len() >= 16 {
                    break;
                }
            }
        }
        seen.len()
    }
}

/// Why a PNG could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// Opening the file failed.
    #[error("cannot open: {0}")]
    Open(#[from] std::io::Error),
    /// The PNG decoder refused it.
    #[error("not a PNG we can read: {0}")]
    Decode(#[from] png::DecodingError),
    /// A colour type or depth we do not handle.
    #[error("unsupported PNG layout {0:?} at {1:?} bits")]
    Layout(png::ColorType, png::BitDepth),
}

/// Reads an 8-bit RGB or RGBA PNG.
pub fn read_png(path: &Path) -> Result<Image, PngError> {
    let decoder = png::Decoder::new(File::open(path)?);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let channels = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
        (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
        (ct, bd) => return Err(PngError::Layout(ct, bd)),
    };
    let mut pixels = Vec::with_capacity(info.width as usize * info.height as usize);
    for row in buf[..info.buffer_size()].chunks(info.line_size) {
        for px in row.chunks(channels).take(info.width as usize) {
            pixels.push(u32::from(px[0]) << 16 | u32::from(px[1]) << 8 | u32::from(px[2]));
        }
    }
    Ok(Image {
        width: info.width,
        height: info.height,
        pixels,
    })
}

/// Checks that `image` shows the pattern: each bar's colour at the middle of
/// the bar, on three rows (top quarter, middle, bottom quarter).
pub fn check(image: &Image) -> Result<(), String> {
    if image.width < 8 || image.height < 4 {
        return Err(format!("image is only {}x{}", image.width, image.height));
    }
    for (bar, &want) in BARS.iter().enumerate() {
        let x = (2 * bar as u32 + 1) * image.width / 8;
        for y in [image.height / 4, image.height / 2, image.height * 3 / 4] {
            let got = image.at(x, y).unwrap_or(0);
            if got != want {
                return Err(format!(
                    "pixel ({x},{y}) is #{got:06x}, the pattern has #{want:06x} there"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(width: u32, height: u32) -> Image {
        let pixels = (0..height)
            .flat_map(|_| (0..width).map(move |x| pixel(x, width)))
            .collect();
        Image {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn the_drawn_pattern_passes_the_check() {
        assert_eq!(check(&drawn(1024, 768)), Ok(()));
        assert_eq!(check(&drawn(1280, 800)), Ok(()));
    }

    #[test]
    fn a_blank_or_shifted_image_fails() {
        let mut blank = drawn(64, 32);
        blank.pixels.iter_mut().for_each(|p| *p = 0);
        assert!(check(&blank).is_err());
        let mut mirrored = drawn(64, 32);
        mirrored.pixels.reverse();
        assert!(check(&mirrored).is_err());
        assert_eq!(blank.distinct_colors(), 1);
        assert_eq!(blank.lit_rows(), 0);
        assert_eq!(drawn(64, 32).distinct_colors(), 4);
    }

    #[test]
    fn a_cursor_lights_few_rows_and_text_many() {
        let (w, h) = (64u32, 48u32);
        let mut screen = Image {
            width: w,
            height: h,
            pixels: vec![0; (w * h) as usize],
        };
        // A cursor: one underline at the top left.
        for x in 0..8 {
            screen.pixels[(13 * w + x) as usize] = 0xaaaaaa;
        }
        assert_eq!(screen.lit_rows(), 1);
        // Two "lines of text": glyph rows 2..12 and 18..28 lit here and there.
        for y in (2..12).chain(18..28) {
            screen.pixels[(y * w + 5 + y % 7) as usize] = 0xaaaaaa;
        }
        assert_eq!(screen.lit_rows(), 21);
    }

    #[test]
    fn png_round_trip() {
        let path = std::env::temp_dir().join(format!("pattern-{}.png", std::process::id()));
        let image = drawn(32, 8);
        {
            let file = File::create(&path).unwrap();
            let mut encoder = png::Encoder::new(file, 32, 8);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            let data: Vec<u8> = image
                .pixels
                .iter()
                .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
                .collect();
            writer.write_image_data(&data).unwrap();
        }
        let read = read_png(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.pixels, image.pixels);
        assert_eq!(check(&read), Ok(()));
    }
}
