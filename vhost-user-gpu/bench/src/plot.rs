//! The map round-trip latency plot: cumulative distributions of ours and the floor, drawn
//! pixel by pixel (axes, ticks, a 5x7 bitmap font) and written with the `png` crate.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::report::Samples;

const W: usize = 900;
const H: usize = 540;
const LEFT: usize = 70;
const RIGHT: usize = 30;
const TOP: usize = 50;
const BOTTOM: usize = 60;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];

/// One curve: name and samples.
pub struct Series<'a> {
    /// Legend text (upper case letters, digits, spaces and `()+-.%/:`).
    pub name: &'a str,
    /// Colour.
    pub colour: Rgb,
    /// The latencies.
    pub samples: &'a Samples,
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: WHITE.repeat(W * H),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: i64) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for s in 0..=steps {
            let x = x0 + (x1 - x0) * s / steps;
            let y = y0 + (y1 - y0) * s / steps;
            for d in 0..thick {
                self.set(x, y + d, c);
                self.set(x + d, y, c);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (ry, row) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if row & (0x10 >> rx) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(cx + rx * scale + dx, y + ry as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }
}

/// 5x7 glyphs, one byte per row, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'B' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'D' => [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
        'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'F' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'Q' => [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
        'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        'X' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
        'Z' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
        '.' => [0, 0, 0, 0, 0, 0x0c, 0x0c],
        ',' => [0, 0, 0, 0, 0x0c, 0x04, 0x08],
        ':' => [0, 0x0c, 0x0c, 0, 0x0c, 0x0c, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '+' => [0, 0x04, 0x04, 0x1f, 0x04, 0x04, 0],
        '-' => [0, 0, 0, 0x1f, 0, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1f, 0, 0x1f, 0, 0],
        _ => [0; 7],
    }
}

fn label(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the cumulative distribution of each series (x: latency in microseconds, log scale,
/// y: fraction of pairs at or below it) to `path`.
pub fn write_cdf(path: &Path, title: &str, series: &[Series<'_>]) -> std::io::Result<()> {
    let mut c = Canvas::new();
    // Logarithmic latency axis: from the decade below the fastest sample to the slowest one.
    let all = || {
        series
            .iter()
            .flat_map(|s| s.samples.ns.iter().map(|&n| n as f64 / 1000.0))
    };
    let lo = all().fold(f64::INFINITY, f64::min).max(0.1);
    let hi = all().fold(0.0f64, f64::max).max(lo * 10.0);
    let (l0, l1) = (lo.log10().floor(), hi.log10().ceil());
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let to_x = |us: f64| {
        let f = ((us.max(10f64.powf(l0)).log10() - l0) / (l1 - l0)).clamp(0.0, 1.0);
        LEFT as i64 + (f * pw) as i64
    };
    let to_y = |frac: f64| (TOP as f64 + (1.0 - frac) * ph) as i64;

    // Grid and ticks: 1, 2, 5 of every decade, labelled.
    let mut decade = l0;
    while decade <= l1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(decade);
            if v.log10() > l1 + 1e-9 {
                break;
            }
            let x = to_x(v);
            c.line((x, TOP as i64), (x, (H - BOTTOM) as i64), GRID, 1);
            c.line(
                (x, (H - BOTTOM) as i64),
                (x, (H - BOTTOM) as i64 + 5),
                BLACK,
                1,
            );
            let s = label(v);
            c.text(
                x - Canvas::text_width(&s, 1) / 2,
                (H - BOTTOM) as i64 + 9,
                &s,
                BLACK,
                1,
            );
        }
        decade += 1.0;
    }
    for i in 0..=10 {
        let frac = f64::from(i) / 10.0;
        let y = to_y(frac);
        c.line((LEFT as i64, y), ((W - RIGHT) as i64, y), GRID, 1);
        c.line((LEFT as i64 - 5, y), (LEFT as i64, y), BLACK, 1);
        let s = format!("{:.1}", frac);
        c.text(
            LEFT as i64 - 9 - Canvas::text_width(&s, 1),
            y - 3,
            &s,
            BLACK,
            1,
        );
    }
    // Axes.
    c.line(
        (LEFT as i64, TOP as i64),
        (LEFT as i64, (H - BOTTOM) as i64),
        BLACK,
        2,
    );
    c.line(
        (LEFT as i64, (H - BOTTOM) as i64),
        ((W - RIGHT) as i64, (H - BOTTOM) as i64),
        BLACK,
        2,
    );
    let xl = "LATENCY OF ONE MAP+UNMAP PAIR (MICROSECONDS, LOG SCALE)";
    c.text(
        (W as i64 - Canvas::text_width(xl, 2)) / 2,
        (H - 24) as i64,
        xl,
        BLACK,
        2,
    );
    c.text(8, TOP as i64 - 16, "CDF", BLACK, 2);
    c.text(LEFT as i64 + 40, 14, title, BLACK, 2);

    // Curves: a step function through the sorted samples.
    for (i, s) in series.iter().enumerate() {
        let n = s.samples.ns.len();
        let Some(&first) = s.samples.ns.first() else {
            continue;
        };
        let mut prev = (to_x(first as f64 / 1000.0), to_y(0.0));
        for (k, &ns) in s.samples.ns.iter().enumerate() {
            let x = to_x(ns as f64 / 1000.0);
            let y = to_y((k + 1) as f64 / n as f64);
            c.line(prev, (x, prev.1), s.colour, 2);
            c.line((x, prev.1), (x, y), s.colour, 2);
            prev = (x, y);
        }
        // Legend.
        let ly = TOP as i64 + ph as i64 - 16 - (series.len() - i) as i64 * 22;
        let lx = (W - RIGHT) as i64 - 370;
        c.line((lx, ly + 6), (lx + 30, ly + 6), s.colour, 3);
        c.text(lx + 40, ly, s.name, BLACK, 2);
    }

    let file = File::create(path)?;
    let mut enc = png::Encoder::new(BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(&c.px).map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_a_png_with_both_curves() {
        let a = Samples::new(
            (0..500).map(|i| 30_000 + i * 10).collect(),
            Duration::from_secs(1),
        );
        let b = Samples::new(
            (0..500).map(|i| 100_000 + i * 100).collect(),
            Duration::from_secs(1),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdf.png");
        let (ca, cb) = ([10, 200, 30], [200, 10, 30]);
        write_cdf(
            &path,
            "TEST",
            &[
                Series {
                    name: "A",
                    colour: ca,
                    samples: &a,
                },
                Series {
                    name: "B",
                    colour: cb,
                    samples: &b,
                },
            ],
        )
        .unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (W as u32, H as u32));
        let count = |c: Rgb| buf.chunks(3).filter(|p| *p == c).count();
        assert!(count(ca) > 200, "curve A drawn");
        assert!(count(cb) > 200, "curve B drawn");
        assert!(count(BLACK) > 1000, "axes and labels drawn");
    }
}
