//! Headless display: every scanout written as `DIR/scanout-<id>.png`.
//!
//! Flushes only update an in-memory RGBA copy of the scanout (just the damaged rectangle);
//! a writer thread encodes and writes the PNG, at most once per [`PngCapture::MIN_INTERVAL`]
//! per scanout, and always writes the latest state once flushes stop (or when the sink is
//! dropped), so the file a person looks at is never older than the guest's last flush by more
//! than the interval. Files are replaced atomically (write to a temporary name, then rename),
//! so a reader never sees a half-written PNG. Encoding happens off the queue thread.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::device::ports::{Cursor, DisplaySink, Frame};
use crate::display::pixels;
use crate::guest_log::guest_warn;
use crate::protocol::Rect;

/// The RGBA copy of one scanout.
struct ScanoutImage {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
    /// Changed since the last write.
    dirty: bool,
    /// When the file was last written.
    last_write: Option<Instant>,
}

#[derive(Default)]
struct State {
    scanouts: BTreeMap<u32, ScanoutImage>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this module; the
        // state (plain buffers) stays usable, so keep going rather than poisoning capture.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`DisplaySink`] writing PNG files (see the module documentation).
pub struct PngCapture {
    dir: PathBuf,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl PngCapture {
    /// Minimum time between two writes of the same scanout's file.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

    /// Starts capturing into `dir`, which must exist and be writable (checked here, so that
    /// a bad `--capture-dir` fails at start-up, not at the first frame).
    pub fn new(dir: &Path) -> io::Result<Self> {
        let meta = fs::metadata(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("capture directory {}: {e}", dir.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("capture directory {} is not a directory", dir.display()),
            ));
        }
        let probe = dir.join(".vhost-user-gpu-probe");
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("capture directory {} is not writable: {e}", dir.display()),
                )
            })?;

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let writer_shared = shared.clone();
        let writer_dir = dir.to_owned();
        let writer = std::thread::Builder::new()
            .name("png-capture".into())
            .spawn(move || writer_loop(&writer_shared, &writer_dir))?;
        Ok(PngCapture {
            dir: dir.to_owned(),
            shared,
            writer: Some(writer),
        })
    }

    /// The path of the file for `scanout_id`.
    pub fn path_for(dir: &Path, scanout_id: u32) -> PathBuf {
        dir.join(format!("scanout-{scanout_id}.png"))
    }

    /// The directory files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PngCapture {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                log::error!("png capture writer thread panicked");
            }
        }
    }
}

impl DisplaySink for PngCapture {
    /// The RGBA copy of each scanout and the writer's snapshot of it (the encoder streams
    /// its output in chunks).
    fn frame_copies(&self) -> u32 {
        2
    }

    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        let mut state = self.shared.lock();
        match mode {
            Some((width, height)) => {
                let keep = state
                    .scanouts
                    .get(&scanout_id)
                    .is_some_and(|s| s.width == width && s.height == height);
                if !keep {
                    // The image is filled by the next flush; until then nothing is written.
                    state.scanouts.insert(
                        scanout_id,
                        ScanoutImage {
                            width,
                            height,
                            rgba: Vec::new(),
                            dirty: false,
                            last_write: None,
                        },
                    );
                }
            }
            None => {
                // Keep the last file on disk: it shows what the guest showed last.
                if let Some(image) = state.scanouts.remove(&scanout_id) {
                    if image.dirty {
                        drop(state);
                        write_png(
                            &self.dir,
                            scanout_id,
                            image.width,
                            image.height,
                            &image.rgba,
                        );
                    }
                }
            }
        }
    }

    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect) {
        let whole = Rect {
            x: 0,
            y: 0,
            width: frame.width,
            height: frame.height,
        };
        let mut state = self.shared.lock();
        let image = state.scanouts.entry(scanout_id).or_insert(ScanoutImage {
            width: frame.width,
            height: frame.height,
            rgba: Vec::new(),
            dirty: false,
            last_write: None,
        });
        let full_size = (frame.width as usize) * (frame.height as usize) * 4;
        let result = if image.width != frame.width
            || image.height != frame.height
            || image.rgba.len() != full_size
        {
            // New or resized: convert the whole frame.
            pixels::to_rgba(frame, whole).map(|rgba| {
                image.width = frame.width;
                image.height = frame.height;
                image.rgba = rgba;
            })
        } else {
            let rect = pixels::clamp_rect(damage, frame.width, frame.height);
            pixels::to_rgba(frame, rect).map(|part| {
                let row = rect.width as usize * 4;
                for (i, src) in part
                    .chunks_exact(row.max(1))
                    .enumerate()
                    .take(rect.height as usize)
                {
                    let start =
                        ((rect.y as usize + i) * frame.width as usize + rect.x as usize) * 4;
                    image.rgba[start..start + row].copy_from_slice(src);
                }
            })
        };
        match result {
            Ok(()) => {
                image.dirty = true;
                drop(state);
                self.shared.wake.notify_all();
            }
            Err(e) => guest_warn!("capture: scanout {scanout_id}: {e}; frame not captured"),
        }
    }

    fn cursor_update(&mut self, _cursor: &Cursor<'_>) {
        // The capture shows the scanout planes only, like a screenshot without the cursor.
    }

    fn cursor_move(&mut self, _scanout_id: u32, _x: u32, _y: u32) {}
}

/// Writes dirty scanouts, each no more often than `MIN_INTERVAL`, until told to stop; on
/// stop, writes whatever is still dirty.
fn writer_loop(shared: &Shared, dir: &Path) {
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        let stopping = state.stop;
        let mut next_deadline: Option<Instant> = None;
        let mut due = None;
        for (&id, image) in state.scanouts.iter() {
            if !image.dirty || image.rgba.is_empty() {
                continue;
            }
            let ready_at = image
                .last_write
                .map_or(now, |t| t + PngCapture::MIN_INTERVAL);
            if stopping || ready_at <= now {
                due = Some(id);
                break;
            }
            next_deadline = Some(next_deadline.map_or(ready_at, |d: Instant| d.min(ready_at)));
        }
        if let Some(id) = due {
            let (width, height, rgba) = {
                let image = state.scanouts.get_mut(&id).expect("scanout found above");
                image.dirty = false;
                image.last_write = Some(now);
                // The snapshot the encoder works on (its size comes from the guest).
                let mut rgba = Vec::new();
                match rgba.try_reserve_exact(image.rgba.len()) {
                    Ok(()) => rgba.extend_from_slice(&image.rgba),
                    Err(_) => guest_warn!(
                        "capture: scanout {id}: cannot allocate a {}-byte snapshot; frame not \
                         written",
                        image.rgba.len()
                    ),
                }
                (image.width, image.height, rgba)
            };
            drop(state);
            if !rgba.is_empty() {
                write_png(dir, id, width, height, &rgba);
            }
            state = shared.lock();
            continue;
        }
        if stopping {
            return;
        }
        state = match next_deadline {
            Some(deadline) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                shared
                    .wake
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Encodes and atomically replaces `DIR/scanout-<id>.png`; failures are logged, not fatal.
fn write_png(dir: &Path, scanout_id: u32, width: u32, height: u32, rgba: &[u8]) {
    let path = PngCapture::path_for(dir, scanout_id);
    // The pid keeps two processes capturing into one directory from sharing a temporary.
    let tmp = dir.join(format!(
        ".scanout-{scanout_id}.png.{}.tmp",
        std::process::id()
    ));
    let result = (|| -> io::Result<()> {
        let file = fs::File::create(&tmp)?;
        let mut out = BufWriter::new(file);
        encode_png(&mut out, width, height, rgba)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        fs::rename(&tmp, &path)
    })();
    match result {
        Ok(()) => log::debug!("capture: wrote {} ({width}x{height})", path.display()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            guest_warn!("capture: cannot write {}: {e}", path.display());
        }
    }
}

/// Bytes of compressed data the PNG encoder buffers before writing a chunk.
const PNG_CHUNK: usize = 64 << 10;

/// Encodes an RGBA image as PNG into `out`, streaming: the encoder holds its compressor
/// state and one chunk, never the whole compressed image (`write_image_data` keeps the
/// compressed stream, and for incompressible pixels a second, stored copy, in memory).
pub fn encode_png<W: Write>(out: W, width: u32, height: u32, rgba: &[u8]) -> io::Result<()> {
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(io::Error::other)?;
    let mut stream = writer
        .stream_writer_with_size(PNG_CHUNK)
        .map_err(io::Error::other)?;
    stream.write_all(rgba)?;
    stream.finish().map_err(io::Error::other)?;
    writer.finish().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fourcc;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgba);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// A 3x2 XRGB8888 frame with a distinct colour per pixel, stride padded to 16 bytes.
    fn test_frame_bytes() -> Vec<u8> {
        let mut data = vec![0xaa; 16 * 2];
        for y in 0..2 {
            for x in 0..3 {
                let o = y * 16 + x * 4;
                // B, G, R, X
                data[o..o + 4].copy_from_slice(&[
                    (10 * x) as u8,
                    (100 + y) as u8,
                    (200 + x + y) as u8,
                    0,
                ]);
            }
        }
        data
    }

    fn expected_rgba(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for y in 0..2 {
            for x in 0..3 {
                let o = y * 16 + x * 4;
                out.extend_from_slice(&[data[o + 2], data[o + 1], data[o], 0xff]);
            }
        }
        out
    }

    #[test]
    fn final_state_is_written_and_decodes_to_the_same_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = test_frame_bytes();
        {
            let mut sink = PngCapture::new(dir.path()).unwrap();
            sink.scanout(0, Some((3, 2)));
            let frame = Frame {
                width: 3,
                height: 2,
                stride: 16,
                drm_format: fourcc::XRGB8888,
                data: &data,
            };
            sink.flush(
                0,
                &frame,
                Rect {
                    x: 0,
                    y: 0,
                    width: 3,
                    height: 2,
                },
            );
            // Second flush right after the first: only the damaged pixel changes. Whether or
            // not the first write happened yet, the last state must end up on disk.
            data[16 + 4..16 + 8].copy_from_slice(&[1, 2, 3, 0]);
            let frame = Frame {
                width: 3,
                height: 2,
                stride: 16,
                drm_format: fourcc::XRGB8888,
                data: &data,
            };
            sink.flush(
                0,
                &frame,
                Rect {
                    x: 1,
                    y: 1,
                    width: 1,
                    height: 1,
                },
            );
        } // drop: the writer flushes pending state and exits
        let (w, h, pixels) = decode(&PngCapture::path_for(dir.path(), 0));
        assert_eq!((w, h), (3, 2));
        assert_eq!(pixels, expected_rgba(&data));
        assert_eq!(&pixels[16..20], &[3, 2, 1, 0xff]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("scanout-0.png")]);
    }

    #[test]
    fn bad_frames_are_skipped_and_other_scanouts_unaffected() {
        let dir = tempfile::tempdir().unwrap();
        let data = test_frame_bytes();
        {
            let mut sink = PngCapture::new(dir.path()).unwrap();
            let short = Frame {
                width: 100,
                height: 100,
                stride: 400,
                drm_format: fourcc::XRGB8888,
                data: &data,
            };
            sink.flush(
                1,
                &short,
                Rect {
                    x: 0,
                    y: 0,
                    width: 100,
                    height: 100,
                },
            );
            let good = Frame {
                width: 3,
                height: 2,
                stride: 16,
                drm_format: fourcc::XRGB8888,
                data: &data,
            };
            sink.flush(
                2,
                &good,
                Rect {
                    x: 0,
                    y: 0,
                    width: 3,
                    height: 2,
                },
            );
        }
        assert!(!PngCapture::path_for(dir.path(), 1).exists());
        let (_, _, pixels) = decode(&PngCapture::path_for(dir.path(), 2));
        assert_eq!(pixels, expected_rgba(&data));
    }

    #[test]
    fn missing_directory_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let err = PngCapture::new(&dir.path().join("nope"))
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
