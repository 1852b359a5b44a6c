//! `guest-tests`: virtio-gpu conformance cases that run inside a Linux guest.
//!
//! ```text
//! guest-tests [--expect-blob yes|no] [--map-policy allow|refuse] [--hold-kms]
//! guest-tests inspect-pid DMABUF_INFO     # dmabuf-info inspect --pid on a helper process
//! guest-tests show-console                # writes text on tty0, asks the host to look
//! guest-tests map-policy                  # the backend's map decision on every real exporter
//! guest-tests lifecycle hold|reset ...     # state across pause, reset, upgrade (lifecycle.rs)
//! guest-tests wl-proxy [--socket PATH] [--init 16|20|24] [--ids 4|28] [--commits FILE]
//!                                         # the guest Wayland proxy (runs until killed)
//! guest-tests wayland-clients             # weston's demo clients through the proxy; the
//!                                         # host checks its compositor's screen (wayland lane)
//! ```
//!
//! Prints one line per case (`ok`, `FAILED`, `skipped`) and ends with
//! `N passed, N failed, N skipped`; exits 1 when a case failed.
//!
//! `--expect-blob yes` says the backend offers RESOURCE_BLOB, CONTEXT_INIT, a
//! host-visible region and the cross-domain capset (our backend behind QEMU 11.1's
//! `vhost-user-test-device-pci`); `no` says the frontend hides them (QEMU 10.0's
//! `vhost-user-gpu-pci`): the parameters case asserts that, blob cases skip.
//! `--map-policy refuse` says the backend was configured to refuse mapping its
//! buffers: the refused-mapping case runs and mapped cases expect the refusal.
//! `--hold-kms` prints `@@VMLANE hold kms-pattern WxH` while the pattern is on
//! screen and waits for one line on stdin (the runner checks the display then).

mod cases;
mod drm;
mod inspect;
mod lifecycle;
mod policy;
mod wayland;
mod wl_channel;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use guest_tests::report::{case_line, Outcome, Tally};

/// What the runner told us about the device.
#[derive(Debug, Clone, Copy)]
pub struct Expectations {
    /// The backend offers blobs, contexts and a host-visible region.
    pub blob: bool,
    /// The backend refuses to map its buffers (policy).
    pub refuse_maps: bool,
    /// Wait for the host while the KMS pattern is shown.
    pub hold_kms: bool,
}

/// Runs cases and counts them.
pub struct Runner {
    tally: Tally,
}

impl Runner {
    fn new() -> Self {
        Runner {
            tally: Tally::default(),
        }
    }

    /// Runs one case and prints its line.
    pub fn case(&mut self, name: &str, f: impl FnOnce() -> Outcome) {
        let outcome = f();
        println!("{}", case_line(name, &outcome));
        let _ = std::io::stdout().flush();
        self.tally.record(&outcome);
    }

    /// Prints the summary line now (a step that ends in a reboot never reaches `finish`).
    pub fn print_summary(&self) {
        println!("{}", self.tally);
        let _ = std::io::stdout().flush();
    }

    fn finish(self) -> ExitCode {
        println!("{}", self.tally);
        if self.tally.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Asks the host to look at something and waits for its answer line.
pub fn hold_for_host(what: &str) -> std::io::Result<()> {
    ask_host(what).map(drop)
}

/// Asks the host to act (`@@VMLANE hold WHAT`) and returns its answer line.
pub fn ask_host(what: &str) -> std::io::Result<String> {
    println!("@@VMLANE hold {what}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the host closed the results port",
        ));
    }
    Ok(line.trim_end().to_string())
}

/// `guest-tests lifecycle hold|reset [--expect-blob yes|no] [--rounds N]`.
fn lifecycle_main(args: &[String]) -> ExitCode {
    let mut options = lifecycle::Options {
        blob: true,
        rounds: 1,
    };
    let Some(mode) = args.first() else {
        return usage();
    };
    let mut it = args[1..].iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next().map(String::as_str)) {
            ("--expect-blob", Some(v @ ("yes" | "no"))) => options.blob = v == "yes",
            ("--rounds", Some(n)) => match n.parse() {
                Ok(n) => options.rounds = n,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let mut runner = Runner::new();
    match mode.as_str() {
        "hold" => lifecycle::hold(&mut runner, options),
        "reset" => lifecycle::reset(&mut runner, options),
        _ => return usage(),
    }
    runner.finish()
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: guest-tests [--expect-blob yes|no] [--map-policy allow|refuse] [--hold-kms]\n\
         \x20      guest-tests inspect-pid DMABUF_INFO\n\
         \x20      guest-tests show-console\n\
         \x20      guest-tests map-policy\n\
         \x20      guest-tests lifecycle hold|reset [--expect-blob yes|no] [--rounds N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("inspect-pid") => {
            let Some(tool) = args.get(1) else {
                return usage();
            };
            let mut runner = Runner::new();
            inspect::inspect_pid(&mut runner, tool);
            return runner.finish();
        }
        Some("hold-dmabufs") => return inspect::hold_dmabufs(),
        Some("map-policy") => {
            let mut runner = Runner::new();
            policy::map_policy(&mut runner);
            return runner.finish();
        }
        Some("lifecycle") => return lifecycle_main(&args[1..]),
        Some("wl-proxy") => return wl_proxy(&args[1..]),
        Some("wayland-clients") => {
            let mut runner = Runner::new();
            wayland::clients(&mut runner);
            return runner.finish();
        }
        Some("show-console") => {
            let mut runner = Runner::new();
            cases::show_console(&mut runner);
            return runner.finish();
        }
        _ => {}
    }
    let mut expect = Expectations {
        blob: true,
        refuse_maps: false,
        hold_kms: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.clone().next().map(String::as_str)) {
            ("--expect-blob", Some(v @ ("yes" | "no"))) => {
                expect.blob = v == "yes";
                it.next();
            }
            ("--map-policy", Some(v @ ("allow" | "refuse"))) => {
                expect.refuse_maps = v == "refuse";
                it.next();
            }
            ("--hold-kms", _) => expect.hold_kms = true,
            _ => return usage(),
        }
    }
    let mut runner = Runner::new();
    cases::run_all(&mut runner, expect);
    runner.finish()
}

/// `wl-proxy`: serves guest Wayland clients on `--socket` (default
/// `$XDG_RUNTIME_DIR/wayland-0`), one cross-domain context per client on the virtio-gpu
/// render node, INIT in the layout `--init` names and SENDs with `--ids` identifier slots.
fn wl_proxy(args: &[String]) -> ExitCode {
    use vhost_user_gpu::protocol::cross_domain::{IdLayout, InitLayout};
    let mut socket =
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| std::path::PathBuf::from(d).join("wayland-0"));
    let mut init = InitLayout::TwoRings;
    let mut ids = IdLayout::TwentyEight;
    let mut commits = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next().map(String::as_str)) {
            ("--socket", Some(path)) => socket = Some(path.into()),
            ("--init", Some("16")) => init = InitLayout::OneRing,
            ("--init", Some("20")) => init = InitLayout::TwoRings,
            ("--init", Some("24")) => init = InitLayout::Versioned,
            ("--ids", Some("4")) => ids = IdLayout::Four,
            ("--ids", Some("28")) => ids = IdLayout::TwentyEight,
            ("--commits", Some(path)) => commits = Some(std::path::PathBuf::from(path)),
            _ => return usage(),
        }
    }
    static LOGGER: StderrLog = StderrLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let Some(socket) = socket else {
        eprintln!("wl-proxy: no --socket and no XDG_RUNTIME_DIR");
        return ExitCode::from(2);
    };
    let Some(node) = cases::virtio_gpu_nodes().1 else {
        eprintln!("wl-proxy: no virtio-gpu render node");
        return ExitCode::FAILURE;
    };
    let connect = Box::new(
        move || -> std::io::Result<Box<dyn guest_tests::wl_proxy::GuestChannel>> {
            Ok(Box::new(wl_channel::DrmChannel::open(&node, init, ids)?))
        },
    );
    let mut proxy = match guest_tests::wl_proxy::Proxy::bind(&socket, connect) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wl-proxy: {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = commits {
        match std::fs::File::create(&path) {
            Ok(file) => proxy.record_commits(file),
            Err(e) => {
                eprintln!("wl-proxy: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "wl-proxy: listening on {} (INIT {} bytes, {} identifier slots)",
        socket.display(),
        init.size(),
        ids.max_ids()
    );
    let _ = std::io::stdout().flush();
    loop {
        if let Err(e) = proxy.turn(std::time::Duration::from_secs(1)) {
            eprintln!("wl-proxy: {e}");
            return ExitCode::FAILURE;
        }
    }
}

/// The proxy's log lines (a client it dropped, and why) on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{}: {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}
