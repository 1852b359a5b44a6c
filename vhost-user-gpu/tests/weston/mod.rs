//! A real host compositor for tests: Debian's weston (bookworm 10.0.1) with the headless
//! backend and the pixman renderer, on a private `XDG_RUNTIME_DIR`, and screenshots of its
//! output through `weston-screenshooter` (weston 10 lets that client in only with `--debug`).
//!
//! Needs the Debian package `weston` (`.ci/test` installs it).
#![allow(dead_code)] // Each test crate that includes this uses a part of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running weston, ended (by its pid) when dropped.
pub struct Weston {
    child: Child,
    dir: tempfile::TempDir,
    name: String,
}

/// An RGB screenshot.
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    /// 3 bytes per pixel, rows without padding.
    pub rgb: Vec<u8>,
}

impl Screenshot {
    /// How many pixels are exactly `rgb`.
    pub fn count(&self, rgb: [u8; 3]) -> usize {
        self.rgb.chunks_exact(3).filter(|p| *p == rgb).count()
    }
}

impl Weston {
    /// Starts weston and waits (up to 20 s) for its socket.
    pub fn start(width: u32, height: u32) -> Weston {
        let dir = tempfile::Builder::new()
            .prefix("vug-weston-")
            .tempdir()
            .expect("temporary XDG_RUNTIME_DIR");
        // Weston wants its runtime directory private.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let name = "wayland-vug".to_string();
        let log = std::fs::File::create(dir.path().join("weston.log")).unwrap();
        let child = Command::new("weston")
            .args([
                "--backend=headless-backend.so",
                "--use-pixman",
                "--debug",
                "--idle-time=0",
                &format!("--socket={name}"),
                &format!("--width={width}"),
                &format!("--height={height}"),
            ])
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weston runs (Debian package `weston`; .ci/test installs it)");
        let mut weston = Weston { child, dir, name };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !weston.socket().exists() {
            if let Some(status) = weston.child.try_wait().unwrap() {
                panic!("weston exited ({status}): {}", weston.log());
            }
            assert!(
                Instant::now() < deadline,
                "no weston socket after 20 s: {}",
                weston.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        weston
    }

    /// `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY` of this weston.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// Weston's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weston.log")).unwrap_or_default()
    }

    /// The whole output as weston composited it.
    pub fn screenshot(&self) -> Screenshot {
        let shots = self.dir.path().join("shots");
        std::fs::create_dir_all(&shots).unwrap();
        for old in std::fs::read_dir(&shots).unwrap() {
            std::fs::remove_file(old.unwrap().path()).unwrap();
        }
        let out = Command::new("weston-screenshooter")
            .current_dir(&shots)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", &self.name)
            .output()
            .expect("weston-screenshooter runs");
        assert!(
            out.status.success(),
            "weston-screenshooter: {out:?}\n{}",
            self.log()
        );
        let png = std::fs::read_dir(&shots)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .expect("weston-screenshooter wrote a PNG");
        decode(&png)
    }

    /// A screenshot once the desktop stopped changing below weston's panel (`panel_rows`
    /// rows at the top hold a clock): two in a row equal there, at most 20 s.
    pub fn settled_screenshot(&self, panel_rows: usize) -> Screenshot {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.screenshot();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let shot = self.screenshot();
            let row = (shot.width * 3) as usize;
            if shot.rgb[panel_rows * row..] == last.rgb[panel_rows * row..] {
                return shot;
            }
            assert!(Instant::now() < deadline, "weston's desktop never settled");
            last = shot;
        }
    }
}

fn decode(path: &Path) -> Screenshot {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let mut rgb = Vec::with_capacity((info.width * info.height * 3) as usize);
    for row in buf[..info.buffer_size()].chunks_exact(info.line_size) {
        for px in row.chunks_exact(channels).take(info.width as usize) {
            rgb.extend_from_slice(&px[..3]);
        }
    }
    Screenshot {
        width: info.width,
        height: info.height,
        rgb,
    }
}

impl Drop for Weston {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
