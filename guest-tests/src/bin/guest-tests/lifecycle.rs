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

use crate::cases::{fill, first_nonzero, verify, virtio_gpu_nodes, CrossDomain, XRGB8888};
use crate::drm::{Bo, Device, Mapping, BLOB_FLAG_MAPPABLE, BLOB_MEM_HOST3D};
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
        let blob = dev
            .create_blob(
                BLOB_MEM_HOST3D,
                BLOB_FLAG_MAPPABLE,
                req.size,
                req.blob_id.into(),
            )
            .map_err(|e| format!("RESOURCE_CREATE_BLOB HOST3D: {e}"))?;
        let len = usize::try_from(req.size).map_err(|e| e.to_string())?;
        let offset = dev
            .map_offset(blob.handle)
            .map_err(|e| format!("MAP: {e}"))?;
        let mut map = dev
            .mmap(offset, len)
            .map_err(|e| format!("mmap of the blob: {e}"))?;
        if let Some(at) = first_nonzero(map.bytes()) {
            return Err(format!("fresh blob has a non-zero byte at {at}"));
        }
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

/// `lifecycle hold`: state survives what the host does, `rounds` times.
pub fn hold(runner: &mut Runner, options: Options) {
    let dev = match open_render() {
        Ok(d) => d,
        Err(e) => {
            runner.case("open the virtio-gpu render node", || fail(e));
            return;
        }
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
    let dev = match open_render() {
        Ok(d) => d,
        Err(e) => {
            runner.case("open the virtio-gpu render node", || fail(e));
            return;
        }
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
    let setup = match open_render() {
        Ok(d) => d,
        Err(e) => {
            runner.case("open the virtio-gpu render node again", || fail(e));
            return;
        }
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
