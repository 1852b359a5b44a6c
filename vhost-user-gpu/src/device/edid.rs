//! EDID 1.4 base blocks for the configured outputs (`GET_EDID`).
//!
//! The preferred mode is a detailed timing descriptor computed for the configured
//! resolution at 60 Hz with reduced blanking (CVT-RB v1 style: 160-pixel horizontal
//! blanking, at least 460 µs of vertical blanking, pixel clock in 250 kHz steps). The block
//! also carries a range limits descriptor and a monitor name, and a correct checksum.

/// Size of the EDID base block.
pub const EDID_BLOCK_SIZE: usize = 128;

/// Manufacturer id letters (three letters `A..=Z`).
const MANUFACTURER: &[u8; 3] = b"VUG";
/// Monitor name (at most 13 bytes).
const MONITOR_NAME: &[u8] = b"vhost-user-gp";
/// Refresh rate of the preferred mode.
const REFRESH_HZ: u64 = 60;

/// A detailed timing, in the units of the EDID descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetailedTiming {
    /// Pixel clock in 10 kHz units.
    pub pixel_clock_10khz: u16,
    /// Active pixels per line.
    pub h_active: u16,
    /// Blanking pixels per line.
    pub h_blank: u16,
    /// Active lines.
    pub v_active: u16,
    /// Blanking lines.
    pub v_blank: u16,
    /// Horizontal front porch.
    pub h_sync_offset: u16,
    /// Horizontal sync width.
    pub h_sync_width: u16,
    /// Vertical front porch.
    pub v_sync_offset: u8,
    /// Vertical sync width.
    pub v_sync_width: u8,
    /// Image width in mm.
    pub width_mm: u16,
    /// Image height in mm.
    pub height_mm: u16,
}

impl DetailedTiming {
    /// CVT reduced-blanking style timing for `width`x`height` at 60 Hz, or `None` when the
    /// mode cannot be described by a base-block descriptor (more than 4095 pixels or
    /// lines, or a pixel clock above 655.35 MHz).
    pub fn for_mode(width: u32, height: u32) -> Option<Self> {
        if width == 0 || height == 0 || width > 4095 || height > 4095 {
            return None;
        }
        const H_BLANK: u64 = 160;
        const H_FRONT: u64 = 48;
        const H_SYNC: u64 = 32;
        const V_FRONT: u64 = 3;
        const V_SYNC: u64 = 6;
        const MIN_V_BACK: u64 = 6;
        const MIN_VBLANK_US: u64 = 460;
        let (w, h) = (u64::from(width), u64::from(height));
        // Line period estimate in ns: (frame time - min blanking time) / active lines.
        let frame_ns = 1_000_000_000 / REFRESH_HZ;
        let line_ns = (frame_ns - MIN_VBLANK_US * 1000) / h;
        let v_blank =
            (MIN_VBLANK_US * 1000 / line_ns.max(1) + 1).max(V_FRONT + V_SYNC + MIN_V_BACK);
        let h_total = w + H_BLANK;
        let v_total = h + v_blank;
        // Pixel clock, rounded down to a 250 kHz step, then in 10 kHz units.
        let clock_hz = REFRESH_HZ * h_total * v_total;
        // Tiny modes: never round down to zero, which would make the descriptor a display
        // descriptor.
        let clock_10khz = match clock_hz / 250_000 * 25 {
            0 => clock_hz.div_ceil(10_000),
            rounded => rounded,
        };
        let pixel_clock_10khz = u16::try_from(clock_10khz).ok()?;
        // Physical size at 96 dpi.
        let width_mm = (w * 254 / 960).min(4095) as u16;
        let height_mm = (h * 254 / 960).min(4095) as u16;
        Some(DetailedTiming {
            pixel_clock_10khz,
            h_active: width as u16,
            h_blank: H_BLANK as u16,
            v_active: height as u16,
            v_blank: v_blank.min(4095) as u16,
            h_sync_offset: H_FRONT as u16,
            h_sync_width: H_SYNC as u16,
            v_sync_offset: V_FRONT as u8,
            v_sync_width: V_SYNC as u8,
            width_mm,
            height_mm,
        })
    }

    /// The 18-byte descriptor.
    pub fn encode(&self) -> [u8; 18] {
        let lo = |v: u16| (v & 0xff) as u8;
        let hi4 = |v: u16| ((v >> 8) & 0xf) as u8;
        let mut d = [0u8; 18];
        d[0..2].copy_from_slice(&self.pixel_clock_10khz.to_le_bytes());
        d[2] = lo(self.h_active);
        d[3] = lo(self.h_blank);
        d[4] = (hi4(self.h_active) << 4) | hi4(self.h_blank);
        d[5] = lo(self.v_active);
        d[6] = lo(self.v_blank);
        d[7] = (hi4(self.v_active) << 4) | hi4(self.v_blank);
        d[8] = lo(self.h_sync_offset);
        d[9] = lo(self.h_sync_width);
        d[10] = ((self.v_sync_offset & 0xf) << 4) | (self.v_sync_width & 0xf);
        d[11] = (((self.h_sync_offset >> 8) as u8 & 3) << 6)
            | (((self.h_sync_width >> 8) as u8 & 3) << 4)
            | (((self.v_sync_offset >> 4) & 3) << 2)
            | ((self.v_sync_width >> 4) & 3);
        d[12] = lo(self.width_mm);
        d[13] = lo(self.height_mm);
        d[14] = (hi4(self.width_mm) << 4) | hi4(self.height_mm);
        d[15] = 0; // no borders
        d[16] = 0;
        // Digital separate sync (0b11 in bits 4-3), hsync positive, vsync negative (CVT-RB).
        d[17] = 0x18 | 0x02;
        d
    }

    /// Parses an 18-byte descriptor (`None` if it is a display descriptor, clock 0).
    pub fn decode(d: &[u8; 18]) -> Option<Self> {
        let pixel_clock_10khz = u16::from_le_bytes([d[0], d[1]]);
        if pixel_clock_10khz == 0 {
            return None;
        }
        let w12 = |lo: u8, hi: u8| u16::from(lo) | (u16::from(hi) << 8);
        Some(DetailedTiming {
            pixel_clock_10khz,
            h_active: w12(d[2], d[4] >> 4),
            h_blank: w12(d[3], d[4] & 0xf),
            v_active: w12(d[5], d[7] >> 4),
            v_blank: w12(d[6], d[7] & 0xf),
            h_sync_offset: w12(d[8], (d[11] >> 6) & 3),
            h_sync_width: w12(d[9], (d[11] >> 4) & 3),
            v_sync_offset: (d[10] >> 4) | (((d[11] >> 2) & 3) << 4),
            v_sync_width: (d[10] & 0xf) | ((d[11] & 3) << 4),
            width_mm: w12(d[12], d[14] >> 4),
            height_mm: w12(d[13], d[14] & 0xf),
        })
    }

    /// Refresh rate in mHz.
    pub fn refresh_millihz(&self) -> u64 {
        let total = (u64::from(self.h_active) + u64::from(self.h_blank))
            * (u64::from(self.v_active) + u64::from(self.v_blank));
        u64::from(self.pixel_clock_10khz) * 10_000 * 1000 / total.max(1)
    }
}

fn display_descriptor(tag: u8, payload: &[u8; 13], header_byte4: u8) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = tag;
    d[4] = header_byte4;
    d[5..18].copy_from_slice(payload);
    d
}

fn text_payload(text: &[u8]) -> [u8; 13] {
    let mut p = [0x20u8; 13];
    let len = text.len().min(13);
    p[..len].copy_from_slice(&text[..len]);
    if len < 13 {
        p[len] = 0x0a;
    }
    p
}

/// Builds the EDID base block for an output of `width`x`height`; `serial` distinguishes
/// outputs. `None` if the mode does not fit a base-block timing descriptor.
pub fn build(width: u32, height: u32, serial: u32) -> Option<[u8; EDID_BLOCK_SIZE]> {
    let timing = DetailedTiming::for_mode(width, height)?;
    let mut e = [0u8; EDID_BLOCK_SIZE];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer id: three 5-bit letters (A = 1), big-endian.
    let letter = |c: u8| u16::from(c - b'A' + 1);
    let id =
        (letter(MANUFACTURER[0]) << 10) | (letter(MANUFACTURER[1]) << 5) | letter(MANUFACTURER[2]);
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&0x1234u16.to_le_bytes()); // product code
    e[12..16].copy_from_slice(&serial.to_le_bytes());
    e[16] = 1; // week
    e[17] = (2026 - 1990) as u8; // year of manufacture
    e[18] = 1; // EDID 1.4
    e[19] = 4;
    e[20] = 0x80 | 0x20; // digital input, 8 bits per colour, interface undefined
    e[21] = (timing.width_mm / 10).clamp(1, 255) as u8; // cm
    e[22] = (timing.height_mm / 10).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
                 // RGB 4:4:4, sRGB default colour space, preferred timing is native, not continuous.
    e[24] = 0x04 | 0x02;
    // sRGB chromaticity, 10-bit binary fractions.
    let q = |v: f64| (v * 1024.0).round() as u16;
    let (rx, ry, gx, gy) = (q(0.640), q(0.330), q(0.300), q(0.600));
    let (bx, by, wx, wy) = (q(0.150), q(0.060), q(0.3127), q(0.3290));
    let low2 = |v: u16| (v & 3) as u8;
    e[25] = (low2(rx) << 6) | (low2(ry) << 4) | (low2(gx) << 2) | low2(gy);
    e[26] = (low2(bx) << 6) | (low2(by) << 4) | (low2(wx) << 2) | low2(wy);
    for (i, v) in [rx, ry, gx, gy, bx, by, wx, wy].into_iter().enumerate() {
        e[27 + i] = (v >> 2) as u8;
    }
    // No established timings; standard timings unused (0x01 0x01).
    for i in 0..8 {
        e[38 + 2 * i] = 0x01;
        e[39 + 2 * i] = 0x01;
    }
    e[54..72].copy_from_slice(&timing.encode());
    // Range limits: 50-75 Hz vertical, horizontal range around the preferred line rate,
    // maximum pixel clock (in 10 MHz units, rounded up); "range limits only".
    let line_khz = u64::from(timing.pixel_clock_10khz) * 10
        / (u64::from(timing.h_active) + u64::from(timing.h_blank));
    let mut range = [0u8; 13];
    range[0] = 50;
    range[1] = 75;
    range[2] = (line_khz.saturating_sub(line_khz / 4)).clamp(1, 255) as u8;
    range[3] = (line_khz + line_khz / 4 + 1).clamp(1, 255) as u8;
    range[4] = (u64::from(timing.pixel_clock_10khz) * 5 / 4)
        .div_ceil(1000)
        .clamp(1, 255) as u8;
    range[5] = 0x01;
    range[6] = 0x0a;
    for b in &mut range[7..] {
        *b = 0x20;
    }
    e[72..90].copy_from_slice(&display_descriptor(0xfd, &range, 0));
    e[90..108].copy_from_slice(&display_descriptor(0xfc, &text_payload(MONITOR_NAME), 0));
    // Dummy descriptor.
    e[108..126].copy_from_slice(&display_descriptor(0x10, &[0; 13], 0));
    e[126] = 0; // no extensions
    let sum = e[..127].iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
    e[127] = 0u8.wrapping_sub(sum);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_has_header_version_and_checksum() {
        for (w, h) in [
            (1280, 800),
            (640, 480),
            (1920, 1080),
            (3840, 2160),
            (1, 1),
            (4095, 4095),
        ] {
            let Some(e) = build(w, h, 7) else {
                assert!(w == 4095, "{w}x{h} should be describable");
                continue;
            };
            assert_eq!(&e[0..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
            assert_eq!((e[18], e[19]), (1, 4));
            let sum = e.iter().fold(0u8, |a, &b| a.wrapping_add(b));
            assert_eq!(sum, 0, "{w}x{h} checksum");
            // Manufacturer "VUG".
            let id = u16::from_be_bytes([e[8], e[9]]);
            let letters = [(id >> 10) & 31, (id >> 5) & 31, id & 31].map(|v| (v as u8) + b'A' - 1);
            assert_eq!(&letters, b"VUG");
            assert_eq!(u32::from_le_bytes([e[12], e[13], e[14], e[15]]), 7);
        }
    }

    #[test]
    fn preferred_timing_decodes_to_the_configured_mode_at_60hz() {
        for (w, h) in [
            (1280, 800),
            (1024, 768),
            (1920, 1200),
            (2560, 1600),
            (800, 600),
            (3000, 2000),
        ] {
            let e = build(w, h, 0).unwrap();
            let d: [u8; 18] = e[54..72].try_into().unwrap();
            let t = DetailedTiming::decode(&d).unwrap();
            assert_eq!(u32::from(t.h_active), w);
            assert_eq!(u32::from(t.v_active), h);
            assert_eq!(t.h_blank, 160);
            assert!(t.v_blank >= 15, "{w}x{h}: vblank {}", t.v_blank);
            // Vertical blanking lasts at least 460 µs.
            let line_ns = (u64::from(t.h_active) + 160) * 1_000_000_000
                / (u64::from(t.pixel_clock_10khz) * 10_000);
            assert!(u64::from(t.v_blank) * line_ns >= 460_000, "{w}x{h}");
            let mhz = t.refresh_millihz();
            assert!((59_000..=60_100).contains(&mhz), "{w}x{h}: {mhz} mHz");
            assert_eq!(t.h_sync_offset, 48);
            assert_eq!(t.v_sync_width, 6);
            assert_eq!(DetailedTiming::decode(&t.encode()), Some(t));
        }
    }

    #[test]
    fn display_descriptors_are_present() {
        let e = build(1280, 800, 0).unwrap();
        let tags: Vec<u8> = [72, 90, 108].iter().map(|&o| e[o + 3]).collect();
        assert_eq!(tags, vec![0xfd, 0xfc, 0x10]);
        assert_eq!(&e[95..108], b"vhost-user-gp");
        // Range limits: 50..75 Hz and a max clock that covers the preferred timing.
        assert_eq!((e[77], e[78]), (50, 75));
        let t = DetailedTiming::decode(e[54..72].try_into().unwrap()).unwrap();
        assert!(u64::from(e[81]) * 1000 >= u64::from(t.pixel_clock_10khz));
        assert_eq!(e[126], 0);
    }

    #[test]
    fn modes_a_base_block_cannot_describe_are_refused() {
        assert!(build(0, 600, 0).is_none());
        assert!(build(4096, 2160, 0).is_none());
        assert!(build(7680, 4320, 0).is_none());
    }
}
