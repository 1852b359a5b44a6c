//! The `wayland` lane: a guest's Wayland clients on the host's compositor through
//! cross-domain.
//!
//! Host: Debian's weston (headless backend, pixman renderer, `--debug` so that
//! `weston-screenshooter` may take screenshots) on a private runtime directory, and our
//! backend with `--wayland-socket` pointing at it (sandbox on) behind QEMU 11.1's
//! `vhost-user-test-device-pci` (blobs mapped through the host-visible region). Guest: a
//! bookworm image with weston's demo clients (`rootfs::Spec::wayland`) and `guest-tests
//! wayland-clients`, which runs `weston-simple-shm` and `weston-simple-damage` through the
//! guest proxy in three cross-domain layouts (see `guest-tests/src/bin/guest-tests/wayland.rs`)
//! and holds each client on its last frame.
//!
//! At each hold the host checks, from the compositor's side:
//! - zero copy: a memfd the backend holds and weston has mapped (the same inode in the
//!   backend's fd table and in weston's `/proc/PID/maps`; weston closes a pool's fd after
//!   mapping it) contains exactly the bytes the guest client committed (the proxy's FNV-1a
//!   digest of them): the guest proxy wrote them into the host buffer through its mapping,
//!   and weston reads those very pages;
//! - pixels: weston's screenshot contains that buffer's image, every pixel, at the window's
//!   place. Only opaque pixels (top byte 0xff) are compared, and they must have at least
//!   two colours: `weston-simple-shm` draws its cross with X = 0 (to show compositors that
//!   wrongly read X as alpha), and weston 10's pixman screenshot has them black with alpha
//!   0, for a client on the host just the same; `weston-simple-damage` (ARGB8888) draws a
//!   half-transparent background that weston blends with its wallpaper, and an opaque
//!   border and ball.
//!
//! The guest hands over the last two commits, the last first; the host looks for the last
//! one (a double-buffering client's other buffer holds an older frame).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::pattern::{self, Image};
use guest_tests::report::{Outcome, Tally};

use crate::lanes::{self, host_case, Backend, Env};
use crate::rootfs::{self, LaneFiles, Spec};
use crate::vm::{Boot, HoldReply, KillOnDrop};
use crate::{step, Error};

/// Weston's output size (room for every demo client's window below the panel).
const OUTPUT: (u32, u32) = (1024, 768);
/// The socket name weston listens on in its runtime directory.
const SOCKET_NAME: &str = "wayland-host";

/// The host compositor.
struct Weston {
    child: KillOnDrop,
    runtime: PathBuf,
    log: PathBuf,
}

impl Weston {
    fn start(dir: &Path) -> Result<Weston, Error> {
        let runtime = dir.join("xdg-runtime");
        fs::create_dir_all(&runtime).map_err(|e| Error::io(&runtime, e))?;
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&runtime, e))?;
        let log = dir.join("weston.log");
        let out = fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = Command::new("weston")
            .args([
                "--backend=headless-backend.so",
                "--use-pixman",
                "--debug",
                "--idle-time=0",
                &format!("--socket={SOCKET_NAME}"),
                &format!("--width={}", OUTPUT.0),
                &format!("--height={}", OUTPUT.1),
            ])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot start weston (Debian package weston; .ci/test installs it): {e}"
                ))
            })?;
        let mut weston = Weston {
            child: KillOnDrop(child),
            runtime,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !weston.socket().exists() {
            if let Ok(Some(status)) = weston.child.0.try_wait() {
                return Err(Error::Lane(format!(
                    "weston exited ({status}); see {}",
                    weston.log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Lane(format!(
                    "no weston socket after 20 s; see {}",
                    weston.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(weston)
    }

    fn socket(&self) -> PathBuf {
        self.runtime.join(SOCKET_NAME)
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The output as weston composited it, kept as `keep`.
    fn screenshot(&self, keep: &Path) -> Result<Image, String> {
        let shots = self.runtime.join("shots");
        let _ = fs::remove_dir_all(&shots);
        fs::create_dir_all(&shots).map_err(|e| e.to_string())?;
        let out = Command::new("weston-screenshooter")
            .current_dir(&shots)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env("WAYLAND_DISPLAY", SOCKET_NAME)
            .output()
            .map_err(|e| format!("weston-screenshooter: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "weston-screenshooter: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let png = fs::read_dir(&shots)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .ok_or("weston-screenshooter wrote no PNG")?;
        fs::copy(&png, keep).map_err(|e| e.to_string())?;
        pattern::read_png(keep).map_err(|e| format!("{}: {e}", keep.display()))
    }
}

/// One commit as the guest proxy logged it: where the buffer lies in its pool, and the
/// digest of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Commit {
    offset: u64,
    stride: u64,
    height: u64,
    fnv: u64,
}

fn parse_commits(text: &str) -> Vec<Commit> {
    text.split(';')
        .filter_map(|c| {
            let f: Vec<&str> = c.split(':').collect();
            Some(Commit {
                offset: f.first()?.parse().ok()?,
                stride: f.get(1)?.parse().ok()?,
                height: f.get(2)?.parse().ok()?,
                fnv: u64::from_str_radix(f.get(3)?, 16).ok()?,
            })
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The inodes of the memfds a process has mapped (`/proc/PID/maps`: weston maps a shm pool's
/// fd and closes it).
fn mapped_memfds(pid: u32) -> BTreeSet<u64> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5)?;
            path.starts_with("/memfd:")
                .then(|| fields.get(4)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The memfds a process holds as fds: inode -> a path to open it by.
fn memfds(pid: u32) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(entries) = fs::read_dir(&dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_memfd = fs::read_link(&path)
            .map(|t| t.to_string_lossy().starts_with("/memfd:"))
            .unwrap_or(false);
        if !is_memfd {
            continue;
        }
        if let Ok(meta) = fs::metadata(&path) {
            out.insert(meta.ino(), path);
        }
    }
    out
}

/// A committed XRGB8888 buffer as the host found it: its pixels (0xRRGGBB) and which of them
/// a compositor shows as they are (X byte 0xff).
struct Frame {
    image: Image,
    opaque: Vec<bool>,
}

impl Frame {
    fn from_xrgb(width: u32, height: u32, bytes: &[u8]) -> Frame {
        let (pixels, opaque) = bytes
            .chunks_exact(4)
            .map(|p| (u32::from_le_bytes([p[0], p[1], p[2], 0]), p[3] == 0xff))
            .unzip();
        Frame {
            image: Image {
                width,
                height,
                pixels,
            },
            opaque,
        }
    }

    fn opaque_pixels(&self) -> usize {
        self.opaque.iter().filter(|&&o| o).count()
    }

    fn opaque_colors(&self) -> usize {
        let colors: BTreeSet<u32> = (self.image.pixels.iter().zip(&self.opaque))
            .filter(|(_, &o)| o)
            .map(|(&p, _)| p)
            .collect();
        colors.len()
    }
}

/// The buffer the compositor shows for `commits` (the last first): a memfd the backend
/// holds and weston has mapped whose bytes at a commit's place have that commit's digest,
/// the earliest commit of the list that is found. Returns that frame or why none was found.
fn shared_buffer(weston: u32, backend: u32, commits: &[Commit]) -> Result<(Frame, String), String> {
    let theirs = mapped_memfds(weston);
    let ours = memfds(backend);
    let shared: BTreeSet<&u64> = theirs.iter().filter(|k| ours.contains_key(k)).collect();
    if shared.is_empty() {
        return Err(format!(
            "weston maps {} memfds, the backend holds {}, none the same",
            theirs.len(),
            ours.len()
        ));
    }
    let buffers: Vec<(u64, Vec<u8>)> = shared
        .iter()
        .filter_map(|key| Some((**key, fs::read(&ours[*key]).ok()?)))
        .collect();
    for (n, c) in commits.iter().enumerate() {
        let (start, len) = (c.offset as usize, (c.stride * c.height) as usize);
        for (key, data) in &buffers {
            let Some(bytes) = data.get(start..start + len) else {
                continue;
            };
            if fnv1a(bytes) != c.fnv {
                continue;
            }
            return Ok((
                Frame::from_xrgb((c.stride / 4) as u32, c.height as u32, bytes),
                format!(
                    "commit {n} (0 is the last) in inode {key} ({} bytes) held by the backend, \
                     mapped by weston",
                    data.len()
                ),
            ));
        }
    }
    Err(format!(
        "{} memfds are shared by weston and the backend, none holds the bytes the guest \
         committed ({commits:?})",
        shared.len()
    ))
}

/// Where `frame` shows in `screen`, every opaque pixel equal.
fn find(screen: &Image, frame: &Frame) -> Option<(u32, u32)> {
    let window = &frame.image;
    if window.width == 0 || window.width > screen.width || window.height > screen.height {
        return None;
    }
    let (w, h) = (window.width as usize, window.height as usize);
    let sw = screen.width as usize;
    let compared: Vec<(usize, usize, u32)> = (0..h)
        .flat_map(|r| (0..w).map(move |c| (r, c)))
        .filter(|&(r, c)| frame.opaque[r * w + c])
        .map(|(r, c)| (r, c, window.pixels[r * w + c]))
        .collect();
    let &(ar, ac, anchor) = compared.first()?;
    for y in 0..=(screen.height as usize - h) {
        for x in 0..=(sw - w) {
            if screen.pixels[(y + ar) * sw + x + ac] != anchor {
                continue;
            }
            if compared
                .iter()
                .all(|&(r, c, px)| screen.pixels[(y + r) * sw + x + c] == px)
            {
                return Some((x as u32, y as u32));
            }
        }
    }
    None
}

/// The host's look at one held client: the zero-copy and the pixels cases.
fn check(dir: &Path, weston: &Weston, backend: u32, what: &str, tally: &mut Tally) {
    let mut words = what.split_whitespace();
    let (Some("wayland"), Some(label)) = (words.next(), words.next()) else {
        return;
    };
    let commits = parse_commits(words.next().unwrap_or(""));
    let found = shared_buffer(weston.pid(), backend, &commits);
    host_case(
        &format!("wayland/{label}/host: weston maps the backend's buffer holding the guest client's last frame (no copy on the host)"),
        tally,
        match &found {
            Ok((_, how)) if commits.is_empty() => Outcome::Failed(format!("no commits from the guest ({how})")),
            Ok(_) => Outcome::Passed,
            Err(e) => Outcome::Failed(e.clone()),
        },
    );
    let keep = dir.join(format!("{label}.png"));
    let pixels = match found {
        Err(_) => Outcome::Failed("no buffer to look for".into()),
        // Compared are the opaque pixels; a single colour there could be a buffer nobody drew
        // into. (weston-simple-damage: a white border and a green ball opaque, its
        // background half-transparent black, which weston blends with the wallpaper.)
        Ok((frame, _)) if frame.opaque_colors() < 2 => Outcome::Failed(format!(
            "the client's frame has {} opaque pixels in {} colour(s): nothing to compare",
            frame.opaque_pixels(),
            frame.opaque_colors()
        )),
        Ok((frame, _)) => {
            let window = &frame.image;
            let mut last = Outcome::Failed("no screenshot".into());
            // Weston repaints on its own clock: look a few times.
            for _ in 0..10 {
                last = match weston.screenshot(&keep) {
                    Ok(screen) => match find(&screen, &frame) {
                        Some(_) => Outcome::Passed,
                        None => Outcome::Failed(format!(
                            "{}: the client's {}x{} frame is not on the screen",
                            keep.display(),
                            window.width,
                            window.height
                        )),
                    },
                    Err(e) => Outcome::Failed(e),
                };
                if last == Outcome::Passed {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            last
        }
    };
    host_case(
        &format!(
            "wayland/{label}/host: weston's screen shows that frame, every pixel ({label}.png)"
        ),
        tally,
        pixels,
    );
}

/// Runs the lane.
pub fn lane(env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    let cache = env.cache()?;
    let image = rootfs::image(&cache, &Spec::wayland())?;
    let qemu = env.qemu11()?;
    let guest_tests = env.guest_tests()?;
    let backend_bin = lanes::host_backend()?;
    let dir = lanes::lane_dir("wayland")?;
    let weston = step("wayland lane: host weston (headless, pixman)", || {
        Weston::start(&dir)
    })?;
    let socket = dir.join("gpu.sock");
    let mut extra: Vec<String> = ["--allocator", "memfd", "--hostmem", "256M"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    extra.push("--wayland-socket".into());
    extra.push(weston.socket().display().to_string());
    let mut backend = Backend::start(&backend_bin, &dir, &socket, &extra)?;

    let kernel = env.kernel()?;
    let mut init = String::from(rootfs::LANE_INIT_PRELUDE);
    init.push_str("step clients /lane/guest-tests wayland-clients\n");
    init.push_str("finish\n");
    let binary = fs::read(&guest_tests).map_err(|e| Error::io(&guest_tests, e))?;
    let files = LaneFiles {
        files: vec![
            ("init", 0o755, init.into_bytes()),
            ("guest-tests", 0o755, binary),
        ],
    };
    let initrd = dir.join("initramfs.cpio");
    rootfs::write_initramfs(&initrd, kernel, &lanes::VIRTIO_GPU_MODULES, &files)?;
    let mut args = lanes::vhost_user_memory();
    args.extend([
        "-chardev".into(),
        format!("socket,id=gpu,path={}", socket.display()),
        "-device".into(),
        "vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=16,chardev=gpu".into(),
    ]);
    args.extend(rootfs::drive_args(&image, &dir)?);
    let boot = Boot {
        qemu: &qemu,
        dir: &dir,
        kernel: &kernel.image,
        initramfs: &initrd,
        extra: args,
        env: Vec::new(),
        timeout,
        allow_reboot: false,
    };
    let mut host = Tally::default();
    let backend_pid = backend.pid();
    let transcript = step("wayland lane: guest run", || {
        boot.run(&mut |what| {
            check(&dir, &weston, backend_pid, what, &mut host);
            HoldReply::Continue
        })
    })?;
    let mut tally = lanes::tally_transcript(
        "wayland",
        &transcript,
        &["modules".to_string(), "clients".to_string()],
    );
    tally.add(host);
    host_case(
        "wayland/host: the backend survived the guest",
        &mut tally,
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_parse_as_the_guest_prints_them() {
        let c = parse_commits("0:1000:250:00ff00ff00ff00ff;1000:1000:250:0000000000000001");
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            Commit {
                offset: 0,
                stride: 1000,
                height: 250,
                fnv: 0x00ff_00ff_00ff_00ff
            }
        );
        assert!(parse_commits("").is_empty());
        assert!(parse_commits("x:y").is_empty());
    }

    /// XRGB8888 bytes of `pixels` (0xXXRRGGBB).
    fn xrgb(pixels: &[u32]) -> Vec<u8> {
        pixels.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    #[test]
    fn a_window_is_found_only_where_every_opaque_pixel_matches() {
        let screen = Image {
            width: 6,
            height: 4,
            pixels: (0..24).collect(),
        };
        let opaque = 0xff00_0000;
        let window = Frame::from_xrgb(
            2,
            2,
            &xrgb(&[opaque | 8, opaque | 9, opaque | 14, opaque | 15]),
        );
        assert_eq!(window.opaque_pixels(), 4);
        assert_eq!(window.opaque_colors(), 4);
        assert_eq!(find(&screen, &window), Some((2, 1)));
        let wrong = Frame::from_xrgb(
            2,
            2,
            &xrgb(&[opaque | 8, opaque | 9, opaque | 14, opaque | 16]),
        );
        assert_eq!(find(&screen, &wrong), None);
        // A pixel with X = 0 is not compared, whatever its colour; the others still are.
        let cross = Frame::from_xrgb(2, 2, &xrgb(&[opaque | 8, 0x77, opaque | 14, opaque | 15]));
        assert_eq!(cross.opaque_pixels(), 3);
        assert_eq!(
            Frame::from_xrgb(2, 1, &xrgb(&[opaque | 5, 0x80 << 24])).opaque_colors(),
            1
        );
        assert_eq!(find(&screen, &cross), Some((2, 1)));
        let cross_wrong =
            Frame::from_xrgb(2, 2, &xrgb(&[0x08, opaque | 9, opaque | 13, opaque | 15]));
        assert_eq!(find(&screen, &cross_wrong), None);
        // Nothing opaque: nothing to find.
        assert_eq!(find(&screen, &Frame::from_xrgb(1, 1, &xrgb(&[8]))), None);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
