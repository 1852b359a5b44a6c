//! `dmabuf-info`: inspect dma-bufs (and memfds) and show the guest mapping decision.

mod cli;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use dmabuf_info::ffi::with_raw_fd;
use dmabuf_info::info::BufferInfo;
use dmabuf_info::policy::{self, Decision};
use dmabuf_info::report::{
    BufferReport, DecisionReport, ErrorReport, ExporterRow, InspectReport, KernelIoctlReport,
    KernelIoctlStatus, PlatformReport, PolicyRow, WarningReport, SCHEMA_VERSION,
};
use dmabuf_info::sources::table::BUILTIN;
use dmabuf_info::{CacheAttr, Config, Error, Inspector, NeedsSync, Platform, Source};
use rustix::fs::{Mode, OFlags};

use cli::{
    Cli, Command, InspectArgs, EXIT_NOT_BUFFER, EXIT_OK, EXIT_OS, EXIT_PERMISSION, EXIT_REFUSED,
    EXIT_USAGE,
};

/// `println!` that ignores a closed stdout (e.g. `| head`) instead of panicking.
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => outln!("{text}"),
        Err(e) => eprintln!("dmabuf-info: cannot encode JSON: {e}"),
    }
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::NotDmaBuf { .. } => EXIT_NOT_BUFFER,
        Error::Permission { .. } => EXIT_PERMISSION,
        Error::Config { .. } => EXIT_USAGE,
        Error::BadFd | Error::Io { .. } => EXIT_OS,
    }
}

fn kernel_text(info: &BufferInfo) -> String {
    let k = KernelIoctlReport::new(info.kernel_ioctl);
    let errno = |e: Option<i32>| std::io::Error::from_raw_os_error(e.unwrap_or(0));
    match k.status {
        KernelIoctlStatus::NotAsked => "not asked (not a dma-buf)".into(),
        KernelIoctlStatus::Answered => format!("answered {}", k.value.unwrap_or_default()),
        KernelIoctlStatus::Absent => format!("absent ({})", errno(k.errno)),
        KernelIoctlStatus::Failed => format!("failed ({})", errno(k.errno)),
    }
}

fn print_buffer_table(label: &str, info: &BufferInfo, d: &Decision, platform: Platform) {
    let name = info
        .name
        .as_deref()
        .map(|n| format!(" \"{n}\""))
        .unwrap_or_default();
    outln!("{label}: {}{name}", info.kind);
    outln!("  {:<13} {}", "exporter", info.exporter);
    outln!("  {:<13} {} bytes", "size", info.size);
    outln!(
        "  {:<13} {} (device {:#x})",
        "inode",
        info.inode,
        info.device
    );
    let row = |k: &str, v: String, s: &Source| outln!("  {k:<13} {v:<16} source: {s}");
    row("cache", info.cache.value.to_string(), &info.cache.source);
    row(
        "needs_sync",
        info.needs_sync.value.to_string(),
        &info.needs_sync.source,
    );
    row(
        "stable",
        if info.stable.value { "yes" } else { "no" }.into(),
        &info.stable.source,
    );
    outln!("  {:<13} {}", "kernel ioctl", kernel_text(info));
    for p in &info.driver_probes {
        outln!(
            "  {:<13} {} {}: {}",
            "drm probe",
            p.driver,
            p.node,
            p.outcome
        );
    }
    outln!("  {:<13} {d}  [platform {platform}]", "decision");
}

/// How an inspected buffer is labelled.
struct Target {
    /// JSON field `fd`.
    fd_label: Option<i32>,
    /// JSON field `path`.
    path_label: Option<String>,
    /// Table heading.
    heading: String,
}

fn open_path(path: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::os(format!("open {}", path.display()), e.into()))
}

fn pid_targets(pid: i32, only_fd: Option<i32>) -> Result<Vec<(Target, OwnedFd)>, Error> {
    let rpid = rustix::process::Pid::from_raw(pid).ok_or_else(|| Error::Config {
        path: None,
        message: format!("invalid pid {pid}"),
    })?;
    let pidfd = rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty())
        .map_err(|e| Error::os(format!("pidfd_open({pid})"), e.into()))?;
    let fds: Vec<i32> = match only_fd {
        Some(n) => vec![n],
        None => {
            let dir = format!("/proc/{pid}/fd");
            let mut v: Vec<i32> = std::fs::read_dir(&dir)
                .map_err(|e| Error::os(format!("list {dir}"), e))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            v.sort_unstable();
            v
        }
    };
    let mut out = Vec::new();
    for n in fds {
        match rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty()) {
            Ok(fd) => out.push((
                Target {
                    fd_label: Some(n),
                    path_label: None,
                    heading: format!("pid {pid} fd {n}"),
                },
                fd,
            )),
            Err(e) => {
                let e = Error::os(format!("pidfd_getfd(pid {pid}, fd {n})"), e.into());
                // Listing: descriptors closed meanwhile are skipped; anything else stops.
                match (&e, only_fd) {
                    (Error::BadFd, None) => continue,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

/// `/proc/PID/fd/N` or `/proc/self/fd/N` -> (PID, N).
fn proc_fd_path(p: &Path) -> Option<(i32, i32)> {
    let s = p.to_str()?;
    let rest = s.strip_prefix("/proc/")?;
    let (pid, rest) = rest.split_once('/')?;
    let n = rest.strip_prefix("fd/")?;
    let pid = if pid == "self" {
        i32::try_from(std::process::id()).ok()?
    } else {
        pid.parse().ok()?
    };
    Some((pid, n.parse().ok()?))
}

/// What `inspect` found: the buffers (with their decisions) and the process, if any.
struct Inspected {
    pid: Option<i32>,
    buffers: Vec<(Target, BufferInfo, Decision)>,
    /// Whether a listing (`--pid` without `--fd`): a table heading is printed.
    listing: bool,
}

fn inspect_targets(ins: &Inspector, args: &InspectArgs) -> Result<Inspected, Error> {
    let drm_fd = args.drm.as_deref().map(open_path).transpose()?;
    let drm = drm_fd.as_ref().map(|f| f.as_fd());
    let platform = ins.platform();
    let decide = |t: Target, info: BufferInfo| {
        let d = policy::decide(&info, platform);
        (t, info, d)
    };

    // Single inherited descriptor: borrowed, never closed by us.
    if let (Some(n), None) = (args.fd, args.pid) {
        let info = with_raw_fd(n, |b: BorrowedFd<'_>| ins.inspect(b, drm)).and_then(|r| r)?;
        let t = Target {
            fd_label: Some(n),
            path_label: None,
            heading: format!("fd {n}"),
        };
        return Ok(Inspected {
            pid: None,
            buffers: vec![decide(t, info)],
            listing: false,
        });
    }
    // dma-bufs cannot be reopened through /proc (the kernel answers ENXIO): inspect
    // /proc/PID/fd/N through pidfd_getfd instead.
    let (pid, fd, path) = match args.path.as_deref().and_then(proc_fd_path) {
        Some((p, n)) => (Some(p), Some(n), None),
        None => (args.pid, args.fd, args.path.as_deref()),
    };
    if let Some(p) = path {
        let f = open_path(p)?;
        let info = ins.inspect(f.as_fd(), drm)?;
        let t = Target {
            fd_label: None,
            path_label: Some(p.display().to_string()),
            heading: p.display().to_string(),
        };
        return Ok(Inspected {
            pid: None,
            buffers: vec![decide(t, info)],
            listing: false,
        });
    }
    let Some(pid) = pid else {
        // clap requires one of --fd, --pid and PATH.
        return Err(Error::Config {
            path: None,
            message: "inspect needs --fd N, --pid PID or a PATH".into(),
        });
    };
    let listing = fd.is_none();
    let mut buffers = Vec::new();
    for (t, fd) in pid_targets(pid, fd)? {
        match ins.inspect(fd.as_fd(), drm) {
            Ok(info) => buffers.push(decide(t, info)),
            // Listing: descriptors that are not buffers are left out.
            Err(Error::NotDmaBuf { .. }) if listing => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Inspected {
        pid: Some(pid),
        buffers,
        listing,
    })
}

fn warnings(config: &Config) -> Vec<WarningReport> {
    config.warnings.iter().map(WarningReport::from).collect()
}

fn run_inspect(cli: &Cli, ins: &Inspector, args: &InspectArgs) -> u8 {
    let platform = ins.platform();
    let result = inspect_targets(ins, args);
    if cli.json {
        let (pid, buffers, error) = match &result {
            Ok(found) => (
                found.pid,
                found
                    .buffers
                    .iter()
                    .map(|(t, info, d)| {
                        BufferReport::new(t.fd_label, t.path_label.clone(), info, d)
                    })
                    .collect(),
                None,
            ),
            Err(e) => (None, Vec::new(), Some(ErrorReport::from(e))),
        };
        print_json(&InspectReport {
            schema_version: SCHEMA_VERSION,
            platform,
            devices: ins.devices(),
            pid,
            buffers,
            error,
            config_warnings: warnings(ins.config()),
        });
    }
    let found = match result {
        Ok(found) => found,
        Err(e) => {
            eprintln!("dmabuf-info: {e}");
            return exit_code(&e);
        }
    };
    if !cli.json {
        if found.listing {
            outln!(
                "pid {}: {} buffer(s), platform {platform}",
                found.pid.unwrap_or_default(),
                found.buffers.len()
            );
        }
        for (t, info, d) in &found.buffers {
            if found.listing {
                outln!();
            }
            print_buffer_table(&t.heading, info, d, platform);
        }
    }
    if found.buffers.iter().all(|(_, _, d)| d.is_allowed()) {
        EXIT_OK
    } else {
        EXIT_REFUSED
    }
}

fn run_platform(cli: &Cli, ins: &Inspector) -> u8 {
    let platform = ins.platform();
    let devices = ins.devices();
    let detected = Platform::detect();
    let how = if ins.config().platform.is_some() {
        "configured"
    } else {
        "detected"
    };
    let mut decisions = Vec::new();
    for cache in CacheAttr::ALL {
        for needs_sync in NeedsSync::ALL {
            for stable in [true, false] {
                let d = policy::decide_parts(
                    (cache, &Source::Default),
                    (needs_sync, &Source::Default),
                    (stable, &Source::Default),
                    platform,
                );
                decisions.push(PolicyRow {
                    cache,
                    needs_sync,
                    stable,
                    decision: DecisionReport::from(&d),
                });
            }
        }
    }
    let exporters: Vec<ExporterRow> = BUILTIN
        .iter()
        .map(|row| ExporterRow::new(row, devices, platform))
        .collect();
    if cli.json {
        print_json(&PlatformReport {
            schema_version: SCHEMA_VERSION,
            platform,
            how: how.into(),
            detected,
            description: platform.describe().into(),
            dma_coherent: platform.dma_coherent(),
            devices,
            decisions,
            exporters,
            config_warnings: warnings(ins.config()),
        });
        return EXIT_OK;
    }
    outln!("platform: {platform} ({how}; detected: {detected})");
    outln!("  {}", platform.describe());
    outln!(
        "  devices DMA-coherent by default: {}",
        if platform.dma_coherent() { "yes" } else { "no" }
    );
    outln!("devices: {devices}");
    outln!("  {}", devices.describe());
    outln!();
    outln!(
        "{:<16} {:<11} {:<7} decision",
        "cache",
        "needs_sync",
        "stable"
    );
    let short = |d: &DecisionReport| match (d.map_cache, &d.reason) {
        (Some(m), _) => format!("allow, map_info {} ({})", m.as_str(), m.virtio_value()),
        (None, Some(r)) => format!("refuse ({r})"),
        (None, None) => "refuse".into(),
    };
    for r in &decisions {
        outln!(
            "{:<16} {:<11} {:<7} {}",
            r.cache.as_str(),
            r.needs_sync.as_str(),
            if r.stable { "yes" } else { "no" },
            short(&r.decision)
        );
    }
    outln!();
    outln!("built-in exporter table (devices {devices}; a driver answer or quirk comes first):");
    outln!(
        "{:<20} {:<16} {:<11} {:<7} decision",
        "exporter",
        "cache",
        "needs_sync",
        "stable"
    );
    for r in &exporters {
        outln!(
            "{:<20} {:<16} {:<11} {:<7} {}",
            r.exporter,
            r.cache.as_str(),
            r.needs_sync.as_str(),
            if r.stable { "yes" } else { "no" },
            short(&r.decision)
        );
    }
    EXIT_OK
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // Usage errors exit 2, --help and --version 0.
        Err(e) => e.exit(),
    };
    let config = match &cli.config {
        Some(p) => Config::from_file(p),
        None => Config::load_default(),
    };
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmabuf-info: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for w in &config.warnings {
        eprintln!("dmabuf-info: warning: {w}");
    }
    if let Some(p) = cli.platform {
        config.platform = Some(p);
    }
    if let Some(d) = cli.devices {
        config.devices = Some(d);
    }
    let ins = Inspector::new(config);
    let code = match &cli.command {
        Command::Platform => run_platform(&cli, &ins),
        Command::Inspect(args) => run_inspect(&cli, &ins, args),
    };
    ExitCode::from(code)
}
