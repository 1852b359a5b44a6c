//! `vhost-user-gpu`: a vhost-user virtio-gpu device backend.
//!
//! Follows the "Backend program conventions" of QEMU's `docs/interop/vhost-user.rst`
//! (`--socket-path` / `--fd`, `--print-capabilities`, `--render-node`). See
//! `README-launch.md` for frontend command lines.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgAction, Parser};
use dmabuf_info::{Config as PolicyConfig, Platform};
use vhost_user_gpu::advisor::DmabufInfoAdvisor;
use vhost_user_gpu::alloc::{self, AllocatorKind};
use vhost_user_gpu::device::Ports;
use vhost_user_gpu::device::{DeviceConfig, GpuDevice};
use vhost_user_gpu::display::{PngCapture, SharedSink};
use vhost_user_gpu::sandbox::SandboxPolicy;
use vhost_user_gpu::transport::{self, DeviceFactory, SocketSource, TransportSettings};

/// Largest number of scanouts virtio-gpu has.
const MAX_OUTPUTS: u32 = 16;

/// vhost-user virtio-gpu backend: 2D scanouts, blob resources mapped into the guest through
/// the host-visible region (SHMEM_MAP), with dmabuf-info deciding what is safe to map.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-gpu", version, about, long_about = None)]
struct Cli {
    /// Listen on this Unix socket path (the frontend connects to it).
    #[arg(long, value_name = "PATH", conflicts_with = "fd", required_unless_present_any = ["fd", "print_capabilities"])]
    socket_path: Option<PathBuf>,

    /// Use this inherited file descriptor, a listening Unix socket.
    #[arg(long, value_name = "N")]
    fd: Option<i32>,

    /// Print the backend's capabilities as JSON and exit.
    #[arg(long)]
    print_capabilities: bool,

    /// DRM render node for the gbm allocator (default: the first one that works).
    #[arg(long, value_name = "PATH")]
    render_node: Option<PathBuf>,

    /// Host buffer allocator.
    #[arg(long, value_name = "KIND", default_value = "auto", value_parser = parse_allocator)]
    allocator: AllocatorKind,

    /// Size of the host-visible region (shmid 1) blobs are mapped into: bytes, or with a
    /// K/M/G suffix; a multiple of 4 KiB. 0 disables blob mapping.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    hostmem: u64,

    /// Guest platform for the mapping policy (default: from --policy-config, else detected).
    #[arg(long, value_name = "PLATFORM", value_parser = parse_platform)]
    platform: Option<Platform>,

    /// dmabuf-info configuration file (TOML: platform, quirks). Default: dmabuf-info's search
    /// ($DMABUF_INFO_CONFIG, /etc/dmabuf-info/quirks.d/*.toml).
    #[arg(long, value_name = "FILE")]
    policy_config: Option<PathBuf>,

    /// Number of scanouts (1-16).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_OUTPUTS as i64))]
    outputs: u32,

    /// Preferred resolution of every scanout.
    #[arg(long, value_name = "WxH", default_value = "1280x800", value_parser = parse_resolution)]
    resolution: (u32, u32),

    /// Write each scanout to DIR/scanout-<id>.png (at most every 200 ms, always the latest).
    #[arg(long, value_name = "DIR")]
    capture_dir: Option<PathBuf>,

    /// Most host memory all resources of a guest may use (K/M/G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    max_resource_memory: u64,

    /// Most resources a guest may have at once.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_resources: u32,

    /// After the frontend disconnects, wait for the next one (with fresh device state).
    #[arg(long)]
    keep_listening: bool,

    /// Confine the backend after start-up: a seccomp-bpf system call allowlist and, where
    /// the kernel has it, Landlock file-system rules (see README-launch.md). `off` is for
    /// debugging only.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = ArgAction::Set)]
    sandbox: bool,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

fn parse_allocator(s: &str) -> Result<AllocatorKind, String> {
    s.parse()
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}': expected on or off")),
    }
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse::<Platform>().map_err(|e| e.to_string())
}

/// Parses `4096`, `64K`, `256M`, `1G` (binary multiples; optional `iB`/`B`).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 64K, 256M, 1G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("'{s}' is not a resolution WIDTHxHEIGHT (example: 1280x800)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let w: u32 = w.trim().parse().map_err(|_| err())?;
    let h: u32 = h.trim().parse().map_err(|_| err())?;
    if !(1..=alloc::MAX_IMAGE_DIMENSION).contains(&w)
        || !(1..=alloc::MAX_IMAGE_DIMENSION).contains(&h)
    {
        return Err(format!(
            "resolution {w}x{h}: width and height must be 1-{}",
            alloc::MAX_IMAGE_DIMENSION
        ));
    }
    Ok((w, h))
}

/// The `--print-capabilities` document: only features this build really has.
fn capabilities() -> serde_json::Value {
    let mut features = Vec::new();
    if cfg!(feature = "gbm") {
        features.push("render-node");
    }
    serde_json::json!({ "type": "gpu", "features": features })
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

fn run(cli: Cli) -> Result<(), String> {
    if !cli.hostmem.is_multiple_of(alloc::PAGE_SIZE) {
        return Err(format!(
            "--hostmem {} is not a multiple of 4 KiB",
            cli.hostmem
        ));
    }
    if cli.render_node.is_some() && !cfg!(feature = "gbm") {
        return Err(
            "--render-node needs a build with the gbm feature (cargo build --features gbm)".into(),
        );
    }
    if let Some(node) = &cli.render_node {
        if !node.exists() {
            return Err(format!("--render-node {}: no such device", node.display()));
        }
    }

    let policy = match &cli.policy_config {
        Some(path) => PolicyConfig::from_file(path)
            .map_err(|e| format!("--policy-config {}: {e}", path.display()))?,
        None => {
            PolicyConfig::load_default().map_err(|e| format!("dmabuf-info configuration: {e}"))?
        }
    };
    let platform = DmabufInfoAdvisor::new(policy.clone(), cli.platform).platform();

    // Try the allocator once now, so that a bad --allocator fails at start-up.
    let probe = alloc::select(cli.allocator, cli.render_node.as_deref())
        .map_err(|e| format!("--allocator {}: {e}", cli.allocator))?;
    let allocator_name = probe.name();
    drop(probe);
    // Every connection gets the allocator chosen now (`auto` is not re-probed), so what a
    // guest sees does not change across reconnections.
    let allocator_kind: AllocatorKind = allocator_name.parse().unwrap_or(cli.allocator);

    let source = match (&cli.socket_path, cli.fd) {
        (Some(path), None) => SocketSource::Path(path.clone()),
        (None, Some(fd)) => SocketSource::ListeningFd(fd),
        _ => return Err("exactly one of --socket-path and --fd is required".into()),
    };

    let listener = transport::open_listener(&source).map_err(|e| e.to_string())?;
    raise_fd_limit();
    if let Some(dir) = &cli.capture_dir {
        // Checked before the sandbox, which needs the directory for its rule.
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "--capture-dir: capture directory {} is not a directory",
                    dir.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "--capture-dir: capture directory {}: {e}",
                    dir.display()
                ))
            }
        }
    }
    if cli.sandbox {
        // Before any thread exists (Landlock applies to the calling thread and its future
        // children): the capture writer and the vhost-user threads start below.
        let policy = sandbox_policy(&cli, allocator_kind);
        let status = vhost_user_gpu::sandbox::confine(&policy)
            .map_err(|e| format!("{e} (start with --sandbox off to run without confinement)"))?;
        log::info!(
            "sandbox: seccomp allowlist of {} system calls on every thread; Landlock {}",
            status.allowed_syscalls,
            status.landlock
        );
    } else {
        log::warn!("sandbox: off (--sandbox off): the backend is not confined");
    }

    let capture = match &cli.capture_dir {
        Some(dir) => Some(SharedSink::new(
            PngCapture::new(dir).map_err(|e| format!("--capture-dir: {e}"))?,
        )),
        None => None,
    };

    let outputs = vec![cli.resolution; cli.outputs as usize];
    let device_config = DeviceConfig {
        outputs,
        hostmem: cli.hostmem,
        max_resource_memory: cli.max_resource_memory,
        max_resources: cli.max_resources,
    };
    device_config.validate().map_err(|e| e.to_string())?;
    let render_node = cli.render_node.clone();
    let factory: Arc<DeviceFactory> = Arc::new(move |mapper, display| {
        let allocator =
            alloc::select(allocator_kind, render_node.as_deref()).map_err(std::io::Error::other)?;
        let advisor = DmabufInfoAdvisor::new(policy.clone(), Some(platform));
        let ports = Ports {
            allocator,
            mapper,
            display,
            advisor: Box::new(advisor),
        };
        Ok(GpuDevice::new(device_config.clone(), ports))
    });

    log::info!(
        "vhost-user-gpu {}: {} output(s) at {}x{}, allocator {allocator_name}, host-visible region {} (shmid 1), platform {platform}",
        env!("CARGO_PKG_VERSION"),
        cli.outputs,
        cli.resolution.0,
        cli.resolution.1,
        if cli.hostmem == 0 { "disabled".to_string() } else { format!("{} MiB", cli.hostmem >> 20) },
    );
    if let Some(dir) = &cli.capture_dir {
        log::info!("capturing scanouts to {}/scanout-<id>.png", dir.display());
    }
    match &source {
        SocketSource::Path(path) => {
            log::info!("listening on {}", path.display());
            log::info!("{}", attach_hint(path));
        }
        SocketSource::ListeningFd(fd) => log::info!("listening on inherited fd {fd}"),
    }
    let settings = TransportSettings {
        hostmem: cli.hostmem,
        capture,
    };
    transport::serve(listener, cli.keep_listening, settings, factory).map_err(|e| e.to_string())
}

/// Raises the soft limit of open files to the hard limit: every HOST3D blob and exported
/// GUEST blob holds an fd (up to `--max-resources`), and running out would also break
/// receiving the frontend's memory tables. A guest that still reaches the limit gets
/// ERR_OUT_OF_MEMORY for its allocations.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => log::debug!(
                "open file limit raised from {before:?} to {:?}",
                limit.maximum
            ),
            Err(e) => log::info!("open file limit stays {before:?}: {e}"),
        }
    }
}

/// What the confined backend still needs: the capture directory, `/dev/udmabuf` (udmabuf
/// allocator, and GUEST blob export when the device exists), the render node or `/dev/dri`
/// with GBM.
fn sandbox_policy(cli: &Cli, allocator: AllocatorKind) -> SandboxPolicy {
    let mut devices = Vec::new();
    let udmabuf = Path::new(alloc::udmabuf::UDMABUF_DEVICE);
    if udmabuf.exists() {
        devices.push(udmabuf.to_path_buf());
    }
    let gbm = allocator == AllocatorKind::Gbm;
    if gbm {
        devices.push(
            cli.render_node
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/dri")),
        );
    }
    SandboxPolicy {
        write_dirs: cli.capture_dir.iter().cloned().collect(),
        devices,
        gbm,
    }
}

fn attach_hint(path: &Path) -> String {
    format!(
        "attach QEMU: -object memory-backend-memfd,id=mem,size=<RAM>,share=on -machine memory-backend=mem \
         -chardev socket,id=vgpu,path={p} -device vhost-user-gpu-pci,chardev=vgpu \
         (QEMU >= 11.1 with blob mapping: -device vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=16,chardev=vgpu)",
        p = path.display()
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_capabilities {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&capabilities()).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-gpu: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn resolutions() {
        assert_eq!(parse_resolution("1280x800"), Ok((1280, 800)));
        assert_eq!(parse_resolution("640X480"), Ok((640, 480)));
        assert!(parse_resolution("0x480").is_err());
        assert!(parse_resolution("1280").is_err());
        assert!(parse_resolution("99999x1").is_err());
    }

    #[test]
    fn sandbox_flag() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("yes").is_err());
        let cli = Cli::try_parse_from(["vhost-user-gpu", "--socket-path", "/tmp/s"]).unwrap();
        assert!(cli.sandbox, "the sandbox is on by default");
        let cli = Cli::try_parse_from([
            "vhost-user-gpu",
            "--socket-path",
            "/tmp/s",
            "--sandbox",
            "off",
        ])
        .unwrap();
        assert!(!cli.sandbox);
    }

    #[test]
    fn capabilities_are_gpu_and_honest() {
        let caps = capabilities();
        assert_eq!(caps["type"], "gpu");
        let has_render_node = caps["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "render-node");
        assert_eq!(has_render_node, cfg!(feature = "gbm"));
    }
}
