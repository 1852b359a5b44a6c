//! What a VM goes through, seen from the guest: pause (QMP `stop`/`cont`), reset
//! (QMP `system_reset`, guest reboot) and a live upgrade of the backend.
//!
//! `guest-tests lifecycle hold [--expect-blob yes|no] [--rounds N]` sets up device state
//! (console text on the framebuffer console; with blobs also a cross-domain context and a
//! mapped HOST3D blob filled with a pattern), keeps commands in flight (a thread writing
//! console lines) and asks the host to act (`@@VMLANE hold lifecycle N`) `N` times
//! (default 1): the host pauses and resumes the VM, or upgrades the backend. After each
//! answer it checks that nothing was lost: the blob mapping still holds the pattern, the
//! blob can be unmapped, mapped again and read back, the context still serves a new blob,
//! and the console is redrawn (the host looks at it: `@@VMLANE hold redrawn ROUND`).
//! At the end the kernel log must hold no virtio-gpu error response.
//!
//! `guest-tests lifecycle upgrade [--rounds N]` runs a workload in a thread of its own (2D
//! flushes of a dumb buffer, scanouts of a GUEST blob, HOST3D blobs created, mapped, written,
//! read back, unmapped and freed; every failed ioctl counted) while it asks the host `N`
//! times to upgrade the backend (`@@VMLANE hold upgrade ROUND`), each time after the
//! workload got on since the previous upgrade and waiting until it gets on after it. A HOST3D
//! blob stays mapped across all upgrades. Afterwards: no workload error, the held blob kept
//! its contents, the console is redrawn (the host looks: `@@VMLANE hold
//! redrawn-after-upgrades`), no virtio-gpu error response in the kernel log.
//!
//! `guest-tests lifecycle reset [--expect-blob yes|no]` asks the host which boot this is
//! (`@@VMLANE hold lifecycle-boot`, answered `1`, `2`, `3`). Boots before the last set up
//! the same state (with the mapped blob closed and an unmapped one in its place: QEMU
//! 11.1.3 crashes on a reset with a blob mapped) and
//! ask the host to reset the VM (`@@VMLANE hold reset`: the host answers `reboot` when the
//! guest should reboot itself, and resets the VM without answering otherwise). Boots after
//! the first check that the device starts clean: the console is drawn (the host looks), a
//! fresh blob reads zeros and maps, the kernel log holds no error response.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use guest_tests::report::Outcome;

use crate::cases::{
    fill, first_nonzero, verify, virtio_gpu_nodes, CrossDomain, ImageRequirements, XRGB8888,
};
use crate::drm::{Bo, Device, Mapping, BLOB_FLAG_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D};
use crate::{ask_host, Runner};

/// Lines of `#` the guest writes after each host action: the host counts lit pixel rows.
pub const REDRAW_LINES: usize = 40;
/// Boots of `lifecycle reset` (two resets: a guest reboot, then QMP `system_reset`).
pub const RESET_BOOTS: u32 = 3;

fn fail(why: impl Into<String>) -> Outcome {
    Outcome::Failed(why.into())
}

/// Options of both modes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The device offers blobs and a host-visible region (QEMU 11.1).
    pub blob: bool,
    /// How many times to ask the host to act (hold mode).
    pub rounds: u32,
}

/// The state the guest keeps across what the host does.
struct State<'a> {
    ctx: CrossDomain<'a>,
    blob: Bo<'a>,
    map: Option<Mapping>,
    len: usize,
    seed: u32,
}

impl<'a> State<'a> {
    fn new(dev: &'a Device, seed: u32) -> Result<Self, String> {
        let mut ctx = CrossDomain::init(dev)?;
        let req = ctx.image_requirements(256, 256, XRGB8888)?;
        let (blob, mut map, len) = fresh_host3d(dev, &req)?;
        fill(map.bytes_mut(), seed);
        Ok(State {
            ctx,
            blob,
            map: Some(map),
            len,
            seed,
        })
    }

    /// Closes the mapped blob (the kernel unmaps it from the host-visible region only when
    /// the object goes) and keeps the context, with a HOST3D blob that is never mapped in
    /// its place: host resources for a reset to free, none mapped when it comes (QEMU 11.1.3
    /// crashes on a reset with a blob mapped, DESIGN-lifecycle.md 1.2).
    fn into_unmapped(self, dev: &'a Device) -> Result<(CrossDomain<'a>, Bo<'a>), String> {
        let State {
            mut ctx, blob, map, ..
        } = self;
        drop(map);
        drop(blob);
        let req = ctx.image_requirements(128, 128, XRGB8888)?;
        let unmappable = dev
            .create_blob(BLOB_MEM_HOST3D, 0, req.size, req.blob_id.into())
            .map_err(|e| format!("RESOURCE_CREATE_BLOB HOST3D (not mappable): {e}"))?;
        Ok((ctx, unmappable))
    }

    /// After the host acted: the mapping, a fresh mapping, and the context still work.
    fn check(&mut self, dev: &'a Device, round: u32) -> Outcome {
        if let Some(map) = &self.map {
            if let Some(at) = verify(map.bytes(), self.seed) {
                return fail(format!(
                    "the mapped blob lost its contents (first difference at {at})"
                ));
            }
        }
        let offset = match dev.map_offset(self.blob.handle) {
            Ok(o) => o,
            Err(e) => return fail(format!("MAP after the host acted: {e}")),
        };
        // A second mapping of the same object, then the first one goes: the kernel keeps
        // the host mapping while any guest mapping is alive.
        let second = match dev.mmap(offset, self.len) {
            Ok(m) => m,
            Err(e) => return fail(format!("mmap after the host acted: {e}")),
        };
        if let Some(at) = verify(second.bytes(), self.seed) {
            return fail(format!("second mapping differs at {at}"));
        }
        self.seed = self.seed.wrapping_add(round + 1);
        let mut second = second;
        fill(second.bytes_mut(), self.seed);
        self.map = Some(second);
        // The context is still known to the device: it answers a new query, and the new
        // blob maps and reads back.
        let req = match self.ctx.image_requirements(64, 64, XRGB8888) {
            Ok(r) => r,
            Err(e) => return fail(format!("cross-domain context after the host acted: {e}")),
        };
        let bo = match dev.create_blob(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE,
            req.size,
            req.blob_id.into(),
        ) {
            Ok(bo) => bo,
            Err(e) => return fail(format!("new blob after the host acted: {e}")),
        };
        let len = req.size as usize;
        let mut map = match dev.map_offset(bo.handle).and_then(|o| dev.mmap(o, len)) {
            Ok(m) => m,
            Err(e) => return fail(format!("mapping a new blob after the host acted: {e}")),
        };
        fill(map.bytes_mut(), 0x5a5a);
        match verify(map.bytes(), 0x5a5a) {
            Some(at) => fail(format!("new blob reads back wrong at {at}")),
            None => Outcome::Passed,
        }
    }
}

/// A HOST3D MAPPABLE blob for `req`, mapped, checked to read zeros; with its length.
fn fresh_host3d<'a>(
    dev: &'a Device,
    req: &ImageRequirements,
) -> Result<(Bo<'a>, Mapping, usize), String> {
    let blob = dev
        .create_blob(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE,
            req.size,
            req.blob_id.into(),
        )
        .map_err(|e| format!("RESOURCE_CREATE_BLOB HOST3D ({} bytes): {e}", req.size))?;
    let len = usize::try_from(req.size).map_err(|e| e.to_string())?;
    let map = dev
        .map_offset(blob.handle)
        .and_then(|o| dev.mmap(o, len))
        .map_err(|e| format!("mapping the HOST3D blob: {e}"))?;
    if let Some(at) = first_nonzero(map.bytes()) {
        return Err(format!("a fresh blob has a non-zero byte at {at}"));
    }
    Ok((blob, map, len))
}

/// Writes console lines to tty0 until stopped: commands in flight while the host acts.
struct ConsoleWriter {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU32>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ConsoleWriter {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU32::new(0));
        let (s, w) = (stop.clone(), written.clone());
        let thread = thread::spawn(move || {
            let Ok(mut tty) = fs::OpenOptions::new().write(true).open("/dev/tty0") else {
                return;
            };
            while !s.load(Ordering::Relaxed) {
                let n = w.fetch_add(1, Ordering::Relaxed);
                let _ = write!(tty, "in flight {n}\r\n");
                thread::sleep(Duration::from_millis(5));
            }
        });
        ConsoleWriter {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.written.load(Ordering::Relaxed)
    }
}

/// Clears the console and writes `lines` lines of `#` (most of the screen lights up).
fn write_console(lines: usize, label: &str) -> std::io::Result<()> {
    let mut tty = fs::OpenOptions::new().write(true).open("/dev/tty0")?;
    let mut text = String::from("\x1b[2J\x1b[H");
    for i in 0..lines {
        text.push_str(&format!(
            "{label} {i:02} ##################################################\r\n"
        ));
    }
    tty.write_all(text.as_bytes())?;
    tty.flush()
}

/// Error responses the Linux virtio-gpu driver logged (`response 0x12.. (command ..)`).
fn driver_errors() -> Result<Vec<String>, String> {
    // /dev/kmsg: one record per read; non-blocking so the end shows as EAGAIN.
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(|e| format!("open /dev/kmsg: {e}"))?;
    let mut errors = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                if line.contains("response 0x12") {
                    errors.push(line.trim().to_string());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while reading: go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(format!("read /dev/kmsg: {e}")),
        }
    }
    Ok(errors)
}

fn no_driver_errors(runner: &mut Runner) {
    runner.case(
        "no virtio-gpu error response in the kernel log",
        || match driver_errors() {
            Ok(errors) if errors.is_empty() => Outcome::Passed,
            Ok(errors) => fail(format!(
                "{} error responses, first: {}",
                errors.len(),
                errors[0]
            )),
            Err(e) => fail(e),
        },
    );
}

fn open_render() -> Result<Device, String> {
    let (_, render) = virtio_gpu_nodes();
    let render = render.ok_or("no virtio-gpu render node")?;
    Device::open(&render).map_err(|e| format!("open {}: {e}", render.display()))
}

/// The render node opened; `None` after a failed case named `what` when it does not open.
fn open_render_case(runner: &mut Runner, what: &str) -> Option<Device> {
    match open_render() {
        Ok(d) => Some(d),
        Err(e) => {
            runner.case(what, || fail(e));
            None
        }
    }
}

/// `lifecycle hold`: state survives what the host does, `rounds` times.
pub fn hold(runner: &mut Runner, options: Options) {
    let Some(dev) = open_render_case(runner, "open the virtio-gpu render node") else {
        return;
    };
    let mut state = None;
    runner.case("state before: console text, mapped blob", || {
        if let Err(e) = write_console(12, "before") {
            return fail(format!("console: {e}"));
        }
        if !options.blob {
            return Outcome::Passed;
        }
        match State::new(&dev, 0x1234) {
            Ok(s) => {
                state = Some(s);
                Outcome::Passed
            }
            Err(e) => fail(e),
        }
    });
    for round in 0..options.rounds {
        let writer = ConsoleWriter::start();
        let asked = ask_host(&format!("lifecycle {round}"));
        let written = writer.finish();
        runner.case(
            &format!("round {round}: host acted with commands in flight"),
            || match asked {
                Ok(_) if written > 0 => Outcome::Passed,
                Ok(_) => fail("the console writer never wrote"),
                Err(e) => fail(format!("talking to the host: {e}")),
            },
        );
        runner.case(
            &format!("round {round}: mapped blob and context kept"),
            || match state.as_mut() {
                Some(s) => s.check(&dev, round),
                None if options.blob => fail("no state was set up"),
                None => Outcome::Skipped("this frontend hides RESOURCE_BLOB".into()),
            },
        );
        runner.case(&format!("round {round}: console redrawn"), || {
            if let Err(e) = write_console(REDRAW_LINES, &format!("round {round}")) {
                return fail(format!("console: {e}"));
            }
            match ask_host(&format!("redrawn {round}")) {
                Ok(_) => Outcome::Passed,
                Err(e) => fail(format!("talking to the host: {e}")),
            }
        });
    }
    no_driver_errors(runner);
}

/// `lifecycle reset`: the device forgets everything on reset and works afterwards.
///
/// The host numbers the boots (`1`, `2`, `3`). Boots after the first check the fresh
/// device; boots before the last set up state and ask for a reset (the host answers `reboot`
/// when the guest should reboot itself, and resets the VM itself otherwise).
pub fn reset(runner: &mut Runner, options: Options) {
    let boot: u32 = match ask_host("lifecycle-boot").map(|a| a.trim().parse()) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            runner.case("ask the host which boot this is", || {
                fail(format!("not a boot number: {e}"))
            });
            return;
        }
        Err(e) => {
            runner.case("ask the host which boot this is", || {
                fail(format!("talking to the host: {e}"))
            });
            return;
        }
    };
    let Some(dev) = open_render_case(runner, "open the virtio-gpu render node") else {
        return;
    };
    if boot > 1 {
        runner.case(
            &format!("boot {boot}: console drawn after the reset"),
            || {
                if let Err(e) = write_console(REDRAW_LINES, &format!("boot {boot}")) {
                    return fail(format!("console: {e}"));
                }
                match ask_host(&format!("redrawn boot-{boot}")) {
                    Ok(_) => Outcome::Passed,
                    Err(e) => fail(format!("talking to the host: {e}")),
                }
            },
        );
        runner.case(
            &format!("boot {boot}: a fresh blob reads zeros, maps and reads back"),
            || {
                if !options.blob {
                    return Outcome::Skipped("this frontend hides RESOURCE_BLOB".into());
                }
                match State::new(&dev, 0x4242 + boot) {
                    Ok(mut s) => s.check(&dev, 0),
                    Err(e) => fail(e),
                }
            },
        );
        no_driver_errors(runner);
    }
    if boot >= RESET_BOOTS {
        return;
    }
    // A file of its own: the checks above already gave `dev` its (one) context.
    let Some(setup) = open_render_case(runner, "open the virtio-gpu render node again") else {
        return;
    };
    let dev = &setup;
    let mut held = None;
    runner.case(
        &format!("boot {boot}: state set up before the reset"),
        || {
            if let Err(e) = write_console(12, "before the reset") {
                return fail(format!("console: {e}"));
            }
            if options.blob {
                match State::new(dev, 0x7777).and_then(|s| s.into_unmapped(dev)) {
                    Ok(kept) => held = Some(kept),
                    Err(e) => return fail(e),
                }
            }
            Outcome::Passed
        },
    );
    runner.print_summary();
    // Commands stay in flight while the VM is reset.
    let _writer = ConsoleWriter::start();
    match ask_host("reset") {
        Ok(answer) if answer.trim() == "reboot" => {
            let _ = std::io::stdout().flush();
            rustix::fs::sync();
            if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
                println!("FAILED guest reboot: {e}");
            }
        }
        // The host resets the VM: nothing after this runs.
        Ok(_) => thread::sleep(Duration::from_secs(600)),
        Err(e) => println!("FAILED ask the host to reset: {e}"),
    }
    drop(held);
}

/// What the upgrade workload did, shared with its thread.
#[derive(Default)]
struct WorkCounts {
    /// Dumb-buffer frames shown (TRANSFER_TO_HOST_2D + RESOURCE_FLUSH).
    flushes_2d: AtomicU32,
    /// GUEST-blob frames shown (SET_SCANOUT_BLOB + RESOURCE_FLUSH).
    blob_scanouts: AtomicU32,
    /// HOST3D blobs created, mapped, written, read back, unmapped and freed.
    host3d_cycles: AtomicU32,
    /// Whole rounds of the three.
    rounds: AtomicU32,
    /// Failed operations.
    errors: AtomicU32,
    /// The first few failures, for the report.
    first_errors: std::sync::Mutex<Vec<String>>,
}

impl WorkCounts {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_errors.lock() {
            if first.len() < 5 {
                first.push(what);
            }
        }
        // A failing device is not hammered.
        thread::sleep(Duration::from_millis(50));
    }
}

/// The workload of `lifecycle upgrade`, on the card node (it is DRM master, so it drives
/// the display; the framebuffer console gets it back when the file closes).
fn workload(card: &Device, stop: &AtomicBool, counts: &WorkCounts) -> Result<(), String> {
    let mut ctx = CrossDomain::init(card)?;
    let output = card
        .first_output()
        .map_err(|e| format!("find a connected output: {e}"))?;
    let (w, h) = (
        u32::from(output.mode.hdisplay),
        u32::from(output.mode.vdisplay),
    );
    let (dumb, pitch) = card
        .create_dumb(w, h, 32)
        .map_err(|e| format!("CREATE_DUMB {w}x{h}: {e}"))?;
    let mut dumb_map = card
        .map_dumb(dumb.handle)
        .and_then(|o| card.mmap(o, dumb.size as usize))
        .map_err(|e| format!("mapping the dumb buffer: {e}"))?;
    let fb_2d = card
        .add_fb(&dumb, w, h, pitch)
        .map_err(|e| format!("ADDFB (dumb): {e}"))?;
    let blob_len = u64::from(pitch) * u64::from(h);
    let guest = card
        .create_blob(BLOB_MEM_GUEST, BLOB_FLAG_MAPPABLE, blob_len, 0)
        .map_err(|e| format!("RESOURCE_CREATE_BLOB GUEST {blob_len} bytes: {e}"))?;
    let mut guest_map = card
        .map_offset(guest.handle)
        .and_then(|o| card.mmap(o, blob_len as usize))
        .map_err(|e| format!("mapping the GUEST blob: {e}"))?;
    let fb_blob = card
        .add_fb(&guest, w, h, pitch)
        .map_err(|e| format!("ADDFB (GUEST blob): {e}"))?;
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        fill(dumb_map.bytes_mut(), round);
        match card.set_crtc(&output, fb_2d) {
            Ok(()) => drop(counts.flushes_2d.fetch_add(1, Ordering::Relaxed)),
            Err(e) => counts.error(format!("round {round}: SETCRTC of the dumb buffer: {e}")),
        }
        fill(guest_map.bytes_mut(), round ^ 0x00ff_00ff);
        match card.set_crtc(&output, fb_blob) {
            Ok(()) => drop(counts.blob_scanouts.fetch_add(1, Ordering::Relaxed)),
            Err(e) => counts.error(format!("round {round}: SETCRTC of the GUEST blob: {e}")),
        }
        match host3d_cycle(card, &mut ctx, round) {
            Ok(()) => drop(counts.host3d_cycles.fetch_add(1, Ordering::Relaxed)),
            Err(e) => counts.error(format!("round {round}: HOST3D blob: {e}")),
        }
        round = round.wrapping_add(1);
        counts.rounds.fetch_add(1, Ordering::Relaxed);
    }
    let _ = card.remove_fb(fb_blob);
    let _ = card.remove_fb(fb_2d);
    Ok(())
}

/// A HOST3D blob created, mapped, checked fresh, written, read back, unmapped and freed.
fn host3d_cycle(card: &Device, ctx: &mut CrossDomain<'_>, round: u32) -> Result<(), String> {
    let side = 32 + (round % 4) * 32;
    let req = ctx.image_requirements(side, side, XRGB8888)?;
    let (bo, mut map, _) = fresh_host3d(card, &req)?;
    fill(map.bytes_mut(), round);
    if let Some(at) = verify(map.bytes(), round) {
        return Err(format!("the blob reads back wrong at {at}"));
    }
    // The mapping goes, then the object (the kernel unmaps it from the host-visible
    // region: RESOURCE_UNMAP_BLOB, then RESOURCE_UNREF).
    drop(map);
    drop(bo);
    Ok(())
}

/// Waits until the workload finished more than `past` rounds, or gave up.
fn wait_rounds(counts: &WorkCounts, past: u32, done: &AtomicBool) -> Result<u32, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let now = counts.rounds.load(Ordering::Relaxed);
        if now > past {
            return Ok(now);
        }
        if done.load(Ordering::Relaxed) {
            return Err("the workload ended".into());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the workload stuck at round {now} for 120 s"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `lifecycle upgrade`: a workload runs while the host upgrades the backend `rounds` times.
pub fn upgrade(runner: &mut Runner, options: Options) {
    let (card, _) = virtio_gpu_nodes();
    let Some(card) = card else {
        runner.case("find the virtio-gpu card node", || fail("none"));
        return;
    };
    let Some(dev) = open_render_case(runner, "open the virtio-gpu render node") else {
        return;
    };
    let mut held = None;
    runner.case(
        "a HOST3D blob mapped before the upgrades",
        || match State::new(&dev, 0x600d) {
            Ok(s) => {
                held = Some(s);
                Outcome::Passed
            }
            Err(e) => fail(e),
        },
    );
    let counts = Arc::new(WorkCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let (counts, stop, done) = (counts.clone(), stop.clone(), done.clone());
        thread::spawn(move || {
            let result = Device::open(&card)
                .map_err(|e| format!("open {}: {e}", card.display()))
                .and_then(|card| workload(&card, &stop, &counts));
            done.store(true, Ordering::Relaxed);
            result
        })
    };
    let mut seen = 0;
    for round in 0..options.rounds {
        let result = wait_rounds(&counts, seen, &done).and_then(|before| {
            let answer = ask_host(&format!("upgrade {round}"))
                .map_err(|e| format!("talking to the host: {e}"))?;
            let at = counts.rounds.load(Ordering::Relaxed);
            // A whole round after the host answered: served by the new process.
            let after =
                wait_rounds(&counts, at, &done).map_err(|e| format!("after the upgrade: {e}"))?;
            seen = after;
            Ok((before, at, answer))
        });
        runner.case(
            &format!("upgrade {round}: the workload went on across it"),
            || match result {
                Ok((before, at, answer)) if answer == "continue" => {
                    println!("  upgrade {round}: asked after round {before}, answered at {at}");
                    Outcome::Passed
                }
                Ok((_, _, answer)) => fail(format!("the host answered {answer:?}")),
                Err(e) => fail(e),
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    let ended = worker.join();
    runner.case(
        &format!(
            "workload across {} upgrades: 2D flushes, GUEST blob scanouts, HOST3D blob cycles, no error",
            options.rounds
        ),
        || {
            let (flushes, scanouts, cycles, errors) = (
                counts.flushes_2d.load(Ordering::Relaxed),
                counts.blob_scanouts.load(Ordering::Relaxed),
                counts.host3d_cycles.load(Ordering::Relaxed),
                counts.errors.load(Ordering::Relaxed),
            );
            println!(
                "  workload: {flushes} 2D flushes, {scanouts} GUEST blob scanouts, \
                 {cycles} HOST3D blob cycles, {errors} errors"
            );
            match ended {
                Err(_) => return fail("the workload thread panicked"),
                Ok(Err(e)) => return fail(format!("the workload could not start: {e}")),
                Ok(Ok(())) => {}
            }
            if errors > 0 {
                let first = counts
                    .first_errors
                    .lock()
                    .map(|f| f.join("; "))
                    .unwrap_or_default();
                return fail(format!("{errors} errors, first: {first}"));
            }
            if flushes == 0 || scanouts == 0 || cycles == 0 {
                return fail("some part of the workload never ran");
            }
            Outcome::Passed
        },
    );
    runner.case(
        "the HOST3D blob mapped throughout kept its contents",
        || match held.as_mut() {
            Some(s) => s.check(&dev, options.rounds),
            None => fail("no blob was set up"),
        },
    );
    // Every DRM file closes: the framebuffer console takes the display back.
    drop(held);
    drop(dev);
    runner.case("console redrawn after the last upgrade", || {
        if let Err(e) = write_console(REDRAW_LINES, "after the upgrades") {
            return fail(format!("console: {e}"));
        }
        match ask_host("redrawn-after-upgrades") {
            Ok(_) => Outcome::Passed,
            Err(e) => fail(format!("talking to the host: {e}")),
        }
    });
    no_driver_errors(runner);
}
