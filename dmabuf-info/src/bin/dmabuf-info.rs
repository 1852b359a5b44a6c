//! `dmabuf-info`: inspect dma-bufs (and memfds) and show the guest mapping decision.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dmabuf_info::ffi::with_raw_fd;
use dmabuf_info::info::{Answer, BufferInfo};
use dmabuf_info::policy::{self, Decision};
use dmabuf_info::{CacheAttr, Config, Error, Inspector, NeedsSync, Platform, Source};
use rustix::fs::{Mode, OFlags};
use serde_json::{json, Value};

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

const EXIT_HELP: &str = "\
Exit status:
  0  success; every inspected buffer may be mapped into a guest
  1  usage or configuration error
  2  the descriptor or path is not a dma-buf or memfd
  3  operating-system error (descriptor not open, no such file or process, I/O)
  4  permission denied (e.g. pidfd_getfd on another user's process without CAP_SYS_PTRACE)
  5  inspected, but the policy refuses at least one buffer

Configuration: --config FILE, else $DMABUF_INFO_CONFIG, else /etc/dmabuf-info/quirks.d/*.toml
(optional). --platform overrides both the configuration and detection.";

/// What may the CPU, or a guest VM, do with a dma-buf?
#[derive(Parser, Debug)]
#[command(name = "dmabuf-info", version, after_help = EXIT_HELP)]
struct Cli {
    /// Configuration file (TOML: platform, kernel_info_abi, [[exporter]] quirks).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Host platform: x86-intel, x86-intel-guest-pat, x86-amd, arm64, arm64-fwb, other.
    #[arg(long, global = true, value_name = "NAME")]
    platform: Option<Platform>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect an inherited fd (--fd), a path, or the buffers of another process (--pid).
    #[command(after_help = EXIT_HELP)]
    Inspect {
        /// Descriptor number: inherited by this process, or of --pid's process.
        #[arg(long, value_name = "N")]
        fd: Option<i32>,
        /// Process whose buffers to list (pidfd_open + pidfd_getfd); with --fd only that one.
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
        /// DRM device node that allocated the buffer (e.g. /dev/dri/renderD128).
        #[arg(long, value_name = "PATH")]
        drm: Option<PathBuf>,
        /// A path to open and inspect.
        #[arg(value_name = "PATH", conflicts_with_all = ["fd", "pid"])]
        path: Option<PathBuf>,
    },
    /// Print the detected (or configured) platform and the decision table it implies.
    #[command(after_help = EXIT_HELP)]
    Platform,
}

const EXIT_OK: u8 = 0;
const EXIT_USAGE: u8 = 1;
const EXIT_NOT_BUFFER: u8 = 2;
const EXIT_OS: u8 = 3;
const EXIT_PERMISSION: u8 = 4;
const EXIT_REFUSED: u8 = 5;

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::NotDmaBuf { .. } => EXIT_NOT_BUFFER,
        Error::Permission { .. } => EXIT_PERMISSION,
        Error::Config { .. } => EXIT_USAGE,
        Error::BadFd | Error::Io { .. } => EXIT_OS,
    }
}

fn error_json(e: &Error) -> Value {
    let kind = match e {
        Error::BadFd => "bad-fd",
        Error::NotDmaBuf { .. } => "not-a-buffer",
        Error::Permission { .. } => "permission",
        Error::Io { .. } => "os",
        Error::Config { .. } => "config",
    };
    let mut v = json!({ "kind": kind, "message": e.to_string() });
    if let Error::NotDmaBuf { what } = e {
        v["what"] = json!(what.to_string());
    }
    v
}

fn answer_json<T: ToString>(a: &Answer<T>) -> Value {
    json!({ "value": a.value.to_string(), "source": a.source.to_string() })
}

fn decision_json(d: &Decision) -> Value {
    match d {
        Decision::Allow(m) => {
            json!({ "allow": true, "map_info": m.virtio_value(), "map_cache": m.as_str() })
        }
        Decision::Refuse(r) => json!({
            "allow": false,
            "reason": r.name(),
            "reason_code": r.code(),
            "message": r.to_string(),
        }),
    }
}

fn kernel_text(info: &BufferInfo) -> String {
    match info.kernel_ioctl {
        None => "not asked (not a dma-buf)".into(),
        Some(Ok(v)) => format!("answered {v}"),
        Some(Err(e)) => format!("absent ({})", std::io::Error::from_raw_os_error(e)),
    }
}

fn buffer_json(label: &Value, info: &BufferInfo, d: &Decision) -> Value {
    json!({
        "fd": label["fd"],
        "path": label["path"],
        "kind": info.kind.as_str(),
        "exporter": info.exporter,
        "size": info.size,
        "name": info.name,
        "inode": info.inode,
        "device": info.device,
        "cache": answer_json(&info.cache),
        "needs_sync": answer_json(&info.needs_sync),
        "stable": json!({ "value": info.stable.value, "source": info.stable.source.to_string() }),
        "kernel_ioctl": match info.kernel_ioctl {
            None => json!({ "status": "not-asked" }),
            Some(Ok(v)) => json!({ "status": "answered", "value": v }),
            Some(Err(e)) => json!({ "status": "absent", "errno": e }),
        },
        "driver_probes": info.driver_probes.iter().map(|p| json!({
            "driver": p.driver, "node": p.node, "imported": p.imported, "outcome": p.outcome,
        })).collect::<Vec<_>>(),
        "decision": decision_json(d),
    })
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

struct Target {
    /// JSON fields `fd` and `path`.
    label: Value,
    /// Table heading.
    heading: String,
    fd: OwnedFd,
}

fn open_path(path: &PathBuf) -> Result<OwnedFd, Error> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::os(format!("open {}", path.display()), e.into()))
}

fn pid_targets(pid: i32, only_fd: Option<i32>) -> Result<Vec<Target>, Error> {
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
            Ok(fd) => out.push(Target {
                label: json!({ "fd": n, "path": null }),
                heading: format!("pid {pid} fd {n}"),
                fd,
            }),
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
fn proc_fd_path(p: &std::path::Path) -> Option<(i32, i32)> {
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

fn run_inspect(
    cli: &Cli,
    ins: &Inspector,
    fd: Option<i32>,
    pid: Option<i32>,
    drm: Option<&PathBuf>,
    path: Option<&PathBuf>,
) -> Result<u8, Error> {
    let drm_fd = drm.map(open_path).transpose()?;
    let drm_borrow = drm_fd.as_ref().map(|f| f.as_fd());
    let platform = ins.platform();

    // Single inherited descriptor: borrowed, never closed by us.
    if let (Some(n), None) = (fd, pid) {
        let label = json!({ "fd": n, "path": null });
        let result = with_raw_fd(n, |b: BorrowedFd<'_>| ins.inspect(b, drm_borrow)).and_then(|r| r);
        return report_single(cli, ins, &label, &format!("fd {n}"), result, platform);
    }
    // dma-bufs cannot be reopened through /proc (the kernel answers ENXIO): inspect
    // /proc/PID/fd/N through pidfd_getfd instead.
    let (pid, fd, path) = match path.and_then(|p| proc_fd_path(p)) {
        Some((p, n)) => (Some(p), Some(n), None),
        None => (pid, fd, path),
    };
    let listing = pid.is_some() && fd.is_none();
    if let Some(p) = path {
        let label = json!({ "fd": null, "path": p.display().to_string() });
        let result = open_path(p).and_then(|f| ins.inspect(f.as_fd(), drm_borrow));
        return report_single(cli, ins, &label, &p.display().to_string(), result, platform);
    }
    let Some(pid) = pid else {
        return Err(Error::Config {
            path: None,
            message: "inspect needs --fd N, --pid PID or a PATH".into(),
        });
    };
    let targets = pid_targets(pid, fd)?;
    if !listing {
        if let [t] = targets.as_slice() {
            let result = ins.inspect(t.fd.as_fd(), drm_borrow);
            return report_single(cli, ins, &t.label, &t.heading, result, platform);
        }
    }
    let mut buffers = Vec::new();
    let mut all_allowed = true;
    let mut first_error: Option<Error> = None;
    for t in &targets {
        match ins.inspect(t.fd.as_fd(), drm_borrow) {
            Ok(info) => {
                let d = policy::decide(&info, platform);
                all_allowed &= d.is_allowed();
                buffers.push((t, info, d));
            }
            Err(e @ Error::NotDmaBuf { .. }) if listing => drop(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if cli.json {
        let list: Vec<Value> = buffers
            .iter()
            .map(|(t, info, d)| buffer_json(&t.label, info, d))
            .collect();
        let v = json!({ "platform": platform.as_str(), "pid": pid, "buffers": list });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!(
            "pid {pid}: {} buffer(s), platform {platform}",
            buffers.len()
        );
        for (t, info, d) in &buffers {
            outln!();
            print_buffer_table(&t.heading, info, d, platform);
        }
    }
    Ok(if all_allowed { EXIT_OK } else { EXIT_REFUSED })
}

fn report_single(
    cli: &Cli,
    _ins: &Inspector,
    label: &Value,
    heading: &str,
    result: Result<BufferInfo, Error>,
    platform: Platform,
) -> Result<u8, Error> {
    let info = result?;
    let d = policy::decide(&info, platform);
    if cli.json {
        let v = json!({
            "platform": platform.as_str(),
            "pid": null,
            "buffers": [buffer_json(label, &info, &d)],
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_buffer_table(heading, &info, &d, platform);
    }
    Ok(if d.is_allowed() {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}

fn run_platform(cli: &Cli, ins: &Inspector) -> u8 {
    let platform = ins.platform();
    let detected = Platform::detect();
    let how = if ins.config().platform.is_some() || cli.platform.is_some() {
        "configured"
    } else {
        "detected"
    };
    let mut rows = Vec::new();
    for cache in CacheAttr::ALL {
        for sync in NeedsSync::ALL {
            for stable in [true, false] {
                let d = policy::decide_parts(
                    (cache, &Source::Default),
                    (sync, &Source::Default),
                    (stable, &Source::Default),
                    platform,
                );
                rows.push((cache, sync, stable, d));
            }
        }
    }
    if cli.json {
        let table: Vec<Value> = rows
            .iter()
            .map(|(c, s, st, d)| {
                json!({ "cache": c.as_str(), "needs_sync": s.as_str(), "stable": st, "decision": decision_json(d) })
            })
            .collect();
        let v = json!({
            "platform": platform.as_str(),
            "how": how,
            "detected": detected.as_str(),
            "description": platform.describe(),
            "dma_coherent": platform.dma_coherent(),
            "decisions": table,
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!("platform: {platform} ({how}; detected: {detected})");
        outln!("  {}", platform.describe());
        outln!(
            "  devices DMA-coherent by default: {}",
            if platform.dma_coherent() { "yes" } else { "no" }
        );
        outln!();
        outln!(
            "{:<16} {:<11} {:<7} decision",
            "cache",
            "needs_sync",
            "stable"
        );
        for (c, s, st, d) in &rows {
            let short = match d {
                Decision::Allow(m) => format!("allow, map_info {m}"),
                Decision::Refuse(r) => format!("refuse ({})", r.name()),
            };
            outln!(
                "{:<16} {:<11} {:<7} {short}",
                c.as_str(),
                s.as_str(),
                if *st { "yes" } else { "no" }
            );
        }
    }
    EXIT_OK
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
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
    if let Some(p) = cli.platform {
        config.platform = Some(p);
    }
    let ins = Inspector::new(config);
    let code = match &cli.command {
        Command::Platform => run_platform(&cli, &ins),
        Command::Inspect { fd, pid, drm, path } => {
            match run_inspect(&cli, &ins, *fd, *pid, drm.as_ref(), path.as_ref()) {
                Ok(code) => code,
                Err(e) => {
                    if cli.json {
                        let v =
                            json!({ "platform": ins.platform().as_str(), "error": error_json(&e) });
                        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    }
                    eprintln!("dmabuf-info: {e}");
                    exit_code(&e)
                }
            }
        }
    };
    ExitCode::from(code)
}
