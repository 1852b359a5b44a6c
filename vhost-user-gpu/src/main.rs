//! `vhost-user-gpu`: a vhost-user virtio-gpu device backend.
//!
//! Follows the "Backend program conventions" of QEMU's `docs/interop/vhost-user.rst`
//! (`--socket-path` / `--fd`, `--print-capabilities`, `--render-node`). See
//! `README-launch.md` for frontend command lines.

use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory as _, Parser};
use dmabuf_info::{Config as PolicyConfig, Platform};
use vhost_user_gpu::advisor::DmabufInfoAdvisor;
use vhost_user_gpu::alloc::{self, gbm, AllocatorKind};
use vhost_user_gpu::device::ports::{CapsetInfo, Renderer, RendererError, SendRenderer};
use vhost_user_gpu::device::Ports;
use vhost_user_gpu::device::{DeviceConfig, FD_RESERVE};
use vhost_user_gpu::display::{PngCapture, SharedSink};
use vhost_user_gpu::protocol::{CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2, MAX_SCANOUTS};
use vhost_user_gpu::renderer::wire::{StartConfig, WorkerSandbox};
use vhost_user_gpu::renderer::{
    RenderWorker, RenderWorkerClient, RendererClient, RendererThread, VirglConfig, VirglRenderer,
};
use vhost_user_gpu::sandbox::{Landlock, RendererNeeds, SandboxError, SandboxPolicy};
use vhost_user_gpu::transport::upgrade::{self, ControlServer, Incoming, Restored};
use vhost_user_gpu::transport::{
    self, DeviceFactory, ServeControl, SocketSource, Start, TransportSettings,
};
use vhost_user_gpu::wayland::{self, ChannelLimits, WaylandConnector};

/// vhost-user virtio-gpu backend: 2D scanouts, blob resources mapped into the guest through
/// the host-visible region (SHMEM_MAP), with dmabuf-info deciding what is safe to map.
///
/// Exit status: 0 after the frontend disconnected (or --print-capabilities), 1 when start-up
/// or serving failed, 2 for a wrong command line.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-gpu", version, about, long_about)]
struct Cli {
    /// Listen on this Unix socket path (the frontend connects to it).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["fd", "upgrade_from"], required_unless_present_any = ["fd", "print_capabilities", "upgrade_from"])]
    socket_path: Option<PathBuf>,

    /// Use this inherited file descriptor: a Unix socket connected to the frontend (libvirt's
    /// and QEMU's convention), or a listening one.
    #[arg(long, value_name = "N", conflicts_with = "upgrade_from", value_parser = clap::value_parser!(i32).range(0..))]
    fd: Option<i32>,

    /// Accept live-upgrade requests on this Unix socket (created like --socket-path): a new
    /// binary started with --upgrade-from PATH takes over the running device.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,

    /// Take over the device of the backend whose --control-socket is PATH (live upgrade), with
    /// that backend's configuration; it exits once this process serves. Other options except
    /// -v are not allowed.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["control_socket", "render_node", "policy_config", "capture_dir", "platform"])]
    upgrade_from: Option<PathBuf>,

    /// Print the backend's capabilities as JSON ({"type":"gpu","features":[...]}) and exit;
    /// other options are ignored. `render-node` is listed only when GBM can allocate on a
    /// render node of this host.
    #[arg(long)]
    print_capabilities: bool,

    /// DRM render node for the gbm allocator: a character device of major 226, minor
    /// 128-191 (e.g. /dev/dri/renderD128). Implies --allocator gbm; default: the first
    /// render node GBM can allocate on.
    #[arg(long, value_name = "PATH", value_parser = parse_render_node)]
    render_node: Option<PathBuf>,

    /// Host buffer allocator.
    #[arg(long, value_name = "KIND", default_value = "auto", value_parser = allocator_parser())]
    allocator: AllocatorKind,

    /// Size of the host-visible region (shmid 1) blobs are mapped into: bytes, or with a
    /// K/M/G/T suffix (binary multiples); a multiple of 4 KiB. 0 disables blob mapping.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_hostmem)]
    hostmem: u64,

    /// Guest platform for the mapping policy (default: from --policy-config, else detected
    /// from this CPU).
    #[arg(long, value_name = "PLATFORM", value_parser = platform_parser())]
    platform: Option<Platform>,

    /// dmabuf-info configuration file (TOML: platform, quirks). Default: dmabuf-info's search
    /// ($DMABUF_INFO_CONFIG, /etc/dmabuf-info/quirks.d/*.toml).
    #[arg(long, value_name = "FILE")]
    policy_config: Option<PathBuf>,

    /// Number of scanouts: 1-16.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_SCANOUTS as i64))]
    outputs: u32,

    /// Preferred resolution of every scanout: WIDTHxHEIGHT, each 1-16384.
    #[arg(long, value_name = "WxH", default_value = "1280x800", value_parser = parse_resolution)]
    resolution: (u32, u32),

    /// Write each scanout to DIR/scanout-<id>.png (at most every 200 ms, always the latest).
    /// DIR must be an existing directory.
    #[arg(long, value_name = "DIR", value_parser = parse_directory)]
    capture_dir: Option<PathBuf>,

    /// Most host memory all resources of a guest may use: bytes, or with a K/M/G/T suffix.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    max_resource_memory: u64,

    /// Context types offered to the guest: `auto` (cross-domain, plus virgl and venus where
    /// they work on this host: venus needs virglrenderer >= 1.0), `none` (no contexts, no
    /// VIRGL feature), or a comma-separated list of `virgl` (OpenGL; capsets VIRGL and
    /// VIRGL2), `venus` (Vulkan) and `cross-domain`, each of which must work or the backend
    /// does not start.
    #[arg(long, value_name = "LIST", default_value = "auto", value_parser = parse_capsets)]
    capset: CapsetChoice,

    /// The virglrenderer library for virgl and venus (a soname or a path).
    #[arg(long, value_name = "PATH", default_value = vhost_user_gpu::renderer::DEFAULT_LIBRARY)]
    virglrenderer: PathBuf,

    /// virglrenderer's render server, which venus contexts run in (Debian: virgl-server).
    #[arg(long, value_name = "PATH", default_value = vhost_user_gpu::renderer::DEFAULT_RENDER_SERVER)]
    render_server: PathBuf,

    /// Most resources a guest may have at once: 1-4294967295.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_resources: u32,

    /// After the frontend disconnects, wait for the next one (with fresh device state).
    #[arg(long)]
    keep_listening: bool,

    /// Wayland compositor socket for cross-domain Wayland channels (one connection per guest
    /// context that asks for one), or `off`. Default: $XDG_RUNTIME_DIR/$WAYLAND_DISPLAY when
    /// WAYLAND_DISPLAY is set and a compositor answers there at start-up; a socket given here
    /// must answer at start-up.
    #[arg(long, value_name = "PATH|off")]
    wayland_socket: Option<PathBuf>,

    /// Confine the backend after start-up: a seccomp-bpf system call allowlist and Landlock
    /// file-system rules (see README-launch.md). `on` refuses to start on a kernel without
    /// Landlock; `seccomp-only` runs there with the system-call filter alone, which then lets
    /// no file be created or written (no --capture-dir). The renderer of virgl and venus
    /// contexts runs under the 3D profile (executable memory for its compiled shaders, Mesa's
    /// libraries readable): in its render worker process, while this process keeps the
    /// minimal one (the default), or in this process with --renderer-isolation thread.
    #[arg(long, value_name = "MODE", default_value = "on", value_parser = sandbox_parser(), action = ArgAction::Set)]
    sandbox: SandboxMode,

    /// Where virgl and venus contexts are rendered: `process` (a render worker process of
    /// this binary: a crash in virglrenderer or Mesa ends only the renderer contexts, 2D and
    /// cross-domain keep serving, and this process keeps the minimal sandbox profile while
    /// the worker gets the 3D one), or `thread` (a thread of this process, under the 3D
    /// profile; such a crash ends the backend).
    #[arg(long, value_name = "WHERE", default_value = "process", value_parser = isolation_parser(), action = ArgAction::Set)]
    renderer_isolation: Isolation,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

/// `--allocator`: the kinds with what each allocates (listed by `--help`).
fn allocator_parser() -> impl clap::builder::TypedValueParser<Value = AllocatorKind> {
    PossibleValuesParser::new(
        AllocatorKind::ALL.map(|k| PossibleValue::new(k.as_str()).help(k.describe())),
    )
    .try_map(|s| s.parse::<AllocatorKind>())
}

/// `--platform`: dmabuf-info's platforms with what a guest gets on each.
fn platform_parser() -> impl clap::builder::TypedValueParser<Value = Platform> {
    PossibleValuesParser::new(
        Platform::ALL.map(|p| PossibleValue::new(p.as_str()).help(p.describe())),
    )
    .try_map(|s| s.parse::<Platform>())
}

/// Whether a context type is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Not offered.
    Off,
    /// Offered where it works on this host (`--capset auto`).
    IfAvailable,
    /// Asked for by name: start-up fails without it.
    Required,
}

/// `--capset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CapsetChoice {
    virgl: Want,
    venus: Want,
    cross_domain: bool,
}

/// Parses `auto`, `none` or a list of `virgl`, `venus`, `cross-domain`.
fn parse_capsets(s: &str) -> Result<CapsetChoice, String> {
    match s.trim() {
        "auto" => {
            return Ok(CapsetChoice {
                virgl: Want::IfAvailable,
                venus: Want::IfAvailable,
                cross_domain: true,
            })
        }
        "none" => {
            return Ok(CapsetChoice {
                virgl: Want::Off,
                venus: Want::Off,
                cross_domain: false,
            })
        }
        _ => {}
    }
    let mut choice = CapsetChoice {
        virgl: Want::Off,
        venus: Want::Off,
        cross_domain: false,
    };
    for name in s.split(',').map(str::trim) {
        match name {
            "virgl" => choice.virgl = Want::Required,
            "venus" => choice.venus = Want::Required,
            "cross-domain" => choice.cross_domain = true,
            other => {
                return Err(format!(
                    "'{other}' is not a context type (auto, none, or a list of virgl, venus, \
                     cross-domain)"
                ))
            }
        }
    }
    Ok(choice)
}

/// What `--sandbox` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SandboxMode {
    /// seccomp-bpf and Landlock (Landlock required).
    On,
    /// seccomp-bpf alone, no file may be created or written.
    SeccompOnly,
    /// Not confined.
    Off,
}

/// `--renderer-isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// A render worker process.
    Process,
    /// A thread of the backend.
    Thread,
}

/// `--renderer-isolation process|thread`.
fn isolation_parser() -> impl clap::builder::TypedValueParser<Value = Isolation> {
    PossibleValuesParser::new([
        PossibleValue::new("process")
            .help("a render worker process (the default): a renderer crash ends only 3D contexts"),
        PossibleValue::new("thread")
            .help("a thread of the backend: a renderer crash ends the backend"),
    ])
    .map(|s| match s.as_str() {
        "thread" => Isolation::Thread,
        _ => Isolation::Process,
    })
}

/// `--sandbox on|seccomp-only|off`.
fn sandbox_parser() -> impl clap::builder::TypedValueParser<Value = SandboxMode> {
    PossibleValuesParser::new([
        PossibleValue::new("on")
            .help("seccomp allowlist and Landlock (the default; needs a kernel with Landlock)"),
        PossibleValue::new("seccomp-only").help(
            "seccomp allowlist alone, for kernels without Landlock: no file is created or written",
        ),
        PossibleValue::new("off").help("not confined: for debugging only"),
    ])
    .map(|s| match s.as_str() {
        "on" => SandboxMode::On,
        "seccomp-only" => SandboxMode::SeccompOnly,
        _ => SandboxMode::Off,
    })
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

/// A size that is a multiple of the page size (`--hostmem`).
fn parse_hostmem(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    if !size.is_multiple_of(alloc::PAGE_SIZE) {
        return Err(format!("{size} bytes is not a multiple of 4 KiB"));
    }
    Ok(size)
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

/// `--render-node`: must be a DRM render node.
fn parse_render_node(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    gbm::check_render_node(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--capture-dir`: an existing directory.
fn parse_directory(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(format!("{s} is not a directory")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// The `--print-capabilities` document (QEMU's docs/interop/vhost-user.json,
/// `VHostUserBackendCapabilitiesGPU`): only what this binary can do on this host.
fn capabilities(gbm_usable: bool) -> serde_json::Value {
    let mut features = Vec::new();
    // `render-node` makes libvirt pass --render-node (and pick a render node itself, failing
    // the VM start if the host has none), so it is listed only when GBM works here.
    if gbm_usable {
        features.push("render-node");
    }
    serde_json::json!({ "type": "gpu", "features": features })
}

/// Whether GBM can allocate on one of this host's render nodes (libgbm loads, a render node
/// exists, and a test buffer can be allocated and exported on it).
fn gbm_usable() -> bool {
    gbm::GbmAllocator::open(None).is_ok()
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

/// Why the backend stopped, deciding the exit status.
#[derive(Debug)]
enum Failure {
    /// The command line asks for something impossible (exit 2, as clap's own errors).
    Usage(String),
    /// Start-up or serving failed (exit 1).
    Runtime(String),
}

/// What a start (or an upgrade) prepares before the sandbox: the configuration checked,
/// the policy loaded, the allocator tried once.
struct Prepared {
    policy: PolicyConfig,
    platform: Platform,
    resolved: alloc::Resolved,
    device_config: DeviceConfig,
    /// Wayland channels' compositor, when there is one.
    wayland: Option<WaylandConnector>,
    /// The renderer of virgl and venus contexts (started before the sandbox: it loads Mesa's
    /// drivers and starts the render server), shared by every device; it stops when this
    /// goes.
    renderer: Option<RendererHost>,
    /// What the renderer needs from this process's sandbox (`None`: no renderer in this
    /// process, the minimal profile).
    renderer_needs: Option<RendererNeeds>,
}

/// Where the renderer runs.
enum RendererHost {
    /// On a thread of this process.
    Thread(RendererThread),
    /// In a render worker process.
    Process(RenderWorker),
}

/// A device's handle to the renderer.
#[derive(Clone)]
enum RendererHandle {
    Thread(RendererClient),
    Process(RenderWorkerClient),
}

impl RendererHost {
    fn handle(&self) -> RendererHandle {
        match self {
            RendererHost::Thread(t) => RendererHandle::Thread(t.client()),
            RendererHost::Process(w) => RendererHandle::Process(w.client()),
        }
    }

    /// The render worker's pid.
    fn worker_pid(&self) -> Option<u32> {
        match self {
            RendererHost::Thread(_) => None,
            RendererHost::Process(w) => Some(w.pid()),
        }
    }
}

impl RendererHandle {
    fn boxed(&self) -> SendRenderer {
        match self {
            RendererHandle::Thread(c) => Box::new(c.clone()),
            RendererHandle::Process(c) => Box::new(c.clone()),
        }
    }
}

/// `max_fds`: the fds a guest may make the device hold ([`guest_fd_limit`]).
fn prepare(cli: &Cli, max_fds: u64) -> Result<Prepared, Failure> {
    use Failure::{Runtime, Usage};
    // --render-node is a GBM option: with auto it means gbm, with another allocator it is a
    // mistake.
    let allocator_wanted = match (cli.allocator, &cli.render_node) {
        (AllocatorKind::Auto, Some(_)) => AllocatorKind::Gbm,
        (AllocatorKind::Udmabuf | AllocatorKind::Memfd, Some(_)) => {
            return Err(Usage(format!(
                "--render-node is for the gbm allocator, not --allocator {}",
                cli.allocator
            )))
        }
        (kind, _) => kind,
    };

    let policy = match &cli.policy_config {
        Some(path) => PolicyConfig::from_file(path)
            .map_err(|e| Usage(format!("--policy-config {}: {e}", path.display())))?,
        None => PolicyConfig::load_default()
            .map_err(|e| Runtime(format!("dmabuf-info configuration: {e}")))?,
    };
    let platform = DmabufInfoAdvisor::new(policy.clone(), cli.platform).platform();

    // Try the allocator once now, so that an allocator that cannot work here fails at
    // start-up (QEMU's backend conventions: fail early, exit != 0).
    let (probe, resolved) = alloc::resolve(allocator_wanted, cli.render_node.as_deref())
        .map_err(|e| Runtime(format!("--allocator {allocator_wanted}: {e}")))?;
    drop(probe);

    let wayland = wayland_connector(cli.wayland_socket.as_deref())?;

    if cli.sandbox == SandboxMode::SeccompOnly && cli.capture_dir.is_some() {
        return Err(Usage(
            "--capture-dir writes files, which --sandbox seccomp-only does not allow (without \
             Landlock nothing confines what is written); use --sandbox on on a kernel with \
             Landlock"
                .into(),
        ));
    }
    let device_config = DeviceConfig {
        outputs: vec![cli.resolution; cli.outputs as usize],
        hostmem: cli.hostmem,
        max_resource_memory: cli.max_resource_memory,
        max_resources: cli.max_resources,
        cross_domain: cli.capset.cross_domain,
        max_pending_fences: vhost_user_gpu::device::MAX_PENDING_FENCES,
        max_fds,
    };
    device_config.validate().map_err(|e| Usage(e.to_string()))?;
    let started = start_renderer(cli).map_err(Runtime)?;
    let renderer_needs = started
        .as_ref()
        .filter(|s| matches!(s.host, RendererHost::Thread(_)))
        .map(|s| renderer_needs(cli, s.render_server, s.venus));
    let renderer = started.map(|s| s.host);
    Ok(Prepared {
        policy,
        platform,
        resolved,
        device_config,
        wayland,
        renderer,
        renderer_needs,
    })
}

/// The ports of each new (or restored) device.
fn device_factory(prepared: &Prepared) -> Arc<DeviceFactory> {
    let allocator = prepared.resolved.clone();
    let policy = prepared.policy.clone();
    let platform = prepared.platform;
    let device_config = prepared.device_config.clone();
    let wayland = prepared.wayland.clone();
    let renderer_client = prepared.renderer.as_ref().map(RendererHost::handle);
    Arc::new(move |mapper, display| {
        let allocator = alloc::select(allocator.kind, allocator.render_node.as_deref())
            .map_err(std::io::Error::other)?;
        let advisor = DmabufInfoAdvisor::new(policy.clone(), Some(platform));
        let ports = Ports {
            allocator,
            mapper,
            display,
            advisor: Box::new(advisor),
            exporter: alloc::guest_page_exporter(),
            channels: wayland
                .clone()
                .map(|c| Box::new(c) as Box<dyn vhost_user_gpu::device::ports::ChannelConnector>),
            renderer: renderer_client.as_ref().map(RendererHandle::boxed),
        };
        Ok((device_config.clone(), ports))
    })
}

/// Applies the sandbox (before any thread of ours exists but the renderer's, which confined
/// itself to the renderer's Landlock rules: Landlock applies to the calling thread and its
/// future children; the system-call filter to every thread). The profile is the 3D one when
/// a renderer runs, else the minimal one.
fn confine(cli: &Cli, prepared: &Prepared) -> Result<(), Failure> {
    if cli.sandbox == SandboxMode::Off {
        log::warn!("sandbox: off (--sandbox off): the backend is not confined");
        return Ok(());
    }
    let policy = sandbox_policy(
        cli,
        &prepared.resolved,
        prepared.wayland.is_some(),
        prepared.renderer_needs.clone(),
        prepared
            .renderer
            .as_ref()
            .and_then(RendererHost::worker_pid),
    );
    let status = vhost_user_gpu::sandbox::confine(&policy).map_err(|e| match e {
        SandboxError::LandlockUnavailable => Failure::Runtime(e.to_string()),
        e => Failure::Runtime(format!(
            "{e} (start with --sandbox off to run without confinement)"
        )),
    })?;
    log::info!(
        "sandbox: {} profile: seccomp allowlist of {} system calls on every thread; Landlock {}",
        if policy.renderer.is_some() {
            "3D (renderer)"
        } else {
            "minimal (no 3D)"
        },
        status.allowed_syscalls,
        match cli.sandbox {
            SandboxMode::SeccompOnly =>
                "not used (--sandbox seccomp-only: no file may be created or written)".to_string(),
            _ => status.landlock.to_string(),
        }
    );
    Ok(())
}

fn start_capture(dir: &Path) -> Result<PngCapture, Failure> {
    PngCapture::new(dir).map_err(|e| Failure::Runtime(format!("--capture-dir: {e}")))
}

/// `--control-socket`: listening before the sandbox (which has no `bind`).
fn control_listener(cli: &Cli) -> Result<Option<UnixListener>, Failure> {
    let Some(path) = &cli.control_socket else {
        return Ok(None);
    };
    match transport::open_endpoint(&SocketSource::Path(path.clone())) {
        Ok(transport::Endpoint::Listening(listener)) => Ok(Some(listener)),
        Ok(transport::Endpoint::Connected(_)) => Err(Failure::Runtime(format!(
            "--control-socket {}: not a listening socket",
            path.display()
        ))),
        Err(e) => Err(Failure::Runtime(format!("--control-socket: {e}"))),
    }
}

fn log_configuration(cli: &Cli, prepared: &Prepared) {
    let resolved = &prepared.resolved;
    let allocator_name = match &resolved.render_node {
        Some(node) => format!("{} on {}", resolved.kind, node.display()),
        None => resolved.kind.to_string(),
    };
    log::info!(
        "vhost-user-gpu {}: {} output(s) at {}x{}, allocator {allocator_name}, host-visible region {} (shmid 1), platform {}",
        env!("CARGO_PKG_VERSION"),
        cli.outputs,
        cli.resolution.0,
        cli.resolution.1,
        if cli.hostmem == 0 { "disabled".to_string() } else { format!("{} MiB", cli.hostmem >> 20) },
        prepared.platform,
    );
    if let Some(dir) = &cli.capture_dir {
        log::info!("capturing scanouts to {}/scanout-<id>.png", dir.display());
    }
    if let Some(path) = &cli.control_socket {
        log::info!(
            "live upgrade: vhost-user-gpu --upgrade-from {}",
            path.display()
        );
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    use Failure::{Runtime, Usage};
    // First of all: an upgrade receives every fd the running backend holds.
    let max_fds = guest_fd_limit(raise_fd_limit());
    if let Some(path) = &cli.upgrade_from {
        return run_upgrade(path, max_fds);
    }
    let prepared = prepare(&cli, max_fds)?;
    let source = match (&cli.socket_path, cli.fd) {
        (Some(path), None) => SocketSource::Path(path.clone()),
        (None, Some(fd)) => SocketSource::Fd(fd),
        _ => {
            return Err(Usage(
                "exactly one of --socket-path and --fd is required".into(),
            ))
        }
    };

    let endpoint = transport::open_endpoint(&source).map_err(|e| Runtime(e.to_string()))?;
    let control = ServeControl::new().map_err(|e| Runtime(e.to_string()))?;
    let control_server = control_listener(&cli)?.map(|listener| {
        ControlServer::new(
            listener,
            control.clone(),
            std::env::args().skip(1).collect(),
        )
    });
    // The capture writer and the vhost-user threads start after this.
    confine(&cli, &prepared)?;

    let capture = match &cli.capture_dir {
        Some(dir) => Some(SharedSink::new(start_capture(dir)?)),
        None => None,
    };
    log_configuration(&cli, &prepared);
    match &source {
        SocketSource::Path(path) => {
            log::info!("listening on {}", path.display());
            log::info!("{}", attach_hint(path));
        }
        SocketSource::Fd(fd) => match &endpoint {
            transport::Endpoint::Listening(_) => log::info!("listening on inherited fd {fd}"),
            transport::Endpoint::Connected(_) => {
                log::info!("serving the frontend connected on inherited fd {fd}")
            }
        },
    }
    if let Some(server) = control_server {
        server
            .spawn()
            .map_err(|e| Runtime(format!("--control-socket: {e}")))?;
    }
    let settings = TransportSettings {
        hostmem: cli.hostmem,
        capture,
    };
    transport::serve(
        Start::Endpoint(endpoint),
        cli.keep_listening,
        settings,
        device_factory(&prepared),
        control,
    )
    .map_err(|e| Runtime(e.to_string()))
}

/// `--upgrade-from PATH`: takes over the running backend's device (DESIGN-lifecycle.md 4).
/// Until the old process commits, any failure is reported to it (it goes on serving) and
/// makes this process exit non-zero.
fn run_upgrade(path: &Path, max_fds: u64) -> Result<(), Failure> {
    use Failure::Runtime;
    let started = std::time::Instant::now();
    let what =
        |e: &dyn std::fmt::Display| Runtime(format!("--upgrade-from {}: {e}", path.display()));
    let mut incoming = upgrade::receive(path).map_err(|e| what(&e))?;
    log::info!(
        "upgrade: received the device of pid {} (vhost-user-gpu {}, state version {})",
        incoming.handover.pid,
        incoming.handover.from,
        incoming.handover.version
    );
    match take_over(&mut incoming, max_fds) {
        Ok(run) => {
            log::info!(
                "upgrade: serving in place of pid {} ({:.1} ms after start)",
                incoming.handover.pid,
                started.elapsed().as_secs_f64() * 1e3
            );
            drop(incoming);
            run()
        }
        Err(e) => {
            let why = match &e {
                Failure::Usage(m) | Failure::Runtime(m) => m.clone(),
            };
            incoming.abort(&why);
            Err(what(&why))
        }
    }
}

/// A restored device until this process takes over. Dropped before that (a later step
/// failed and the previous process goes on serving), it is discarded without a word to the
/// display channel the previous process still serves.
struct Uncommitted(Option<Restored>);

impl Uncommitted {
    /// This process serves now: the restored device is its own.
    fn take_over(mut self) -> Option<Restored> {
        self.0.take()
    }
}

impl Drop for Uncommitted {
    fn drop(&mut self) {
        if let Some(restored) = self.0.take() {
            restored.discard();
        }
    }
}

/// Restores, confines and commits; returns the serve loop to run.
fn take_over(
    incoming: &mut Incoming,
    max_fds: u64,
) -> Result<Box<dyn FnOnce() -> Result<(), Failure>>, Failure> {
    use Failure::Runtime;
    let args = incoming.handover.args.clone();
    let cli =
        Cli::try_parse_from(std::iter::once("vhost-user-gpu".to_string()).chain(args.clone()))
            .map_err(|e| Runtime(format!("the running backend's command line {args:?}: {e}")))?;
    let mut prepared = prepare(&cli, max_fds)?;
    // The capture's writer thread may only start once this process is confined; until then
    // the restored device draws into nothing, and the capture is repainted when it starts.
    let capture = cli.capture_dir.as_ref().map(|_| SharedSink::later());
    let settings = TransportSettings {
        hostmem: cli.hostmem,
        capture: capture.clone(),
    };
    let factory = device_factory(&prepared);
    let restored = Uncommitted(
        incoming
            .restore(&settings, &*factory)
            .map_err(|e| Runtime(e.to_string()))?,
    );
    let fd = |incoming: &mut Incoming, index| {
        incoming.take_opt(index).map_err(|e| Runtime(e.to_string()))
    };
    let listener = fd(incoming, incoming.handover.listener)?.map(UnixListener::from);
    let control_listener = fd(incoming, incoming.handover.control)?.map(UnixListener::from);
    let stderr = fd(incoming, incoming.handover.stderr)?;
    let control = ServeControl::new().map_err(|e| Runtime(e.to_string()))?;
    let control_server =
        control_listener.map(|l| ControlServer::new(l, control.clone(), args.clone()));
    if let Some(stderr) = stderr {
        upgrade::log_where_it_logged(stderr).map_err(|e| Runtime(format!("stderr: {e}")))?;
    }
    confine(&cli, &prepared)?;
    if let (Some(shared), Some(dir)) = (&capture, &cli.capture_dir) {
        shared.install(start_capture(dir)?);
    }
    incoming.commit().map_err(|e| Runtime(e.to_string()))?;
    let restored = restored.take_over();
    log_configuration(&cli, &prepared);
    let renderer = prepared.renderer.take();
    Ok(Box::new(move || {
        if let Some(server) = control_server {
            server
                .spawn()
                .map_err(|e| Runtime(format!("--control-socket: {e}")))?;
        }
        let served = transport::serve(
            Start::Restored {
                session: restored.map(|r| Box::new((r.session, r.device, r.connection))),
                listener,
            },
            cli.keep_listening,
            settings,
            factory,
            control,
        )
        .map_err(|e| Runtime(e.to_string()));
        drop(renderer);
        served
    }))
}

/// Starts the renderer for the virgl and venus contexts `--capset` asks for: `None` when
/// none is asked for, or (with `auto`) when none works here. An error names what was asked
/// for by name and does not work.
fn start_renderer(cli: &Cli) -> Result<Option<Started>, String> {
    let CapsetChoice { virgl, venus, .. } = cli.capset;
    if virgl == Want::Off && venus == Want::Off {
        return Ok(None);
    }
    let config = VirglConfig {
        library: cli.virglrenderer.clone(),
        virgl: virgl != Want::Off,
        venus: venus != Want::Off,
        render_server: cli.render_server.clone(),
        ..VirglConfig::default()
    };
    // Mesa's shader cache would write under $HOME, which the sandbox does not allow.
    if std::env::var_os("MESA_SHADER_CACHE_DISABLE").is_none() {
        std::env::set_var("MESA_SHADER_CACHE_DISABLE", "true");
    }
    // Under the sandbox the renderer's thread confines itself to the renderer's files
    // (Landlock) after starting the render server and before Mesa starts its threads; the
    // system-call filter comes later for the whole process (`confine`).
    let landlock = match cli.sandbox {
        SandboxMode::Off => None,
        SandboxMode::SeccompOnly => Some(Landlock::Off),
        SandboxMode::On => Some(Landlock::Required),
    };
    if cli.renderer_isolation == Isolation::Process {
        return start_render_worker(cli, config);
    }
    // Whether venus will be served is known once the library is loaded; the files are
    // granted when it is asked for (the system calls later only when it is served).
    let needs = renderer_needs(cli, None, venus != Want::Off);
    let server_pid = Arc::new(std::sync::OnceLock::new());
    let pid_slot = server_pid.clone();
    let started = RendererThread::spawn(move || {
        VirglRenderer::new_confined(&config, |server| {
            if let Some(pid) = server {
                let _ = pid_slot.set(pid);
            }
            let Some(landlock) = landlock else {
                return Ok(());
            };
            let outcome = vhost_user_gpu::sandbox::confine_renderer_thread(&needs, landlock)
                .map_err(|e| RendererError::Start(e.to_string()))?;
            log::debug!("sandbox: renderer thread: Landlock {outcome}");
            Ok(())
        })
        .map(|r| Box::new(r) as Box<dyn Renderer>)
    });
    let renderer = match started {
        Ok(r) => r,
        Err(e) if virgl != Want::Required && venus != Want::Required => {
            log::info!("3D: no virgl or venus contexts on this host ({e}); cross-domain only");
            return Ok(None);
        }
        Err(e) => return Err(format!("--capset: the renderer does not start: {e}")),
    };
    let render_server = server_pid.get().copied();
    check_served(cli, renderer.name(), &renderer.capsets()).map(|venus| {
        Some(Started {
            venus,
            host: RendererHost::Thread(renderer),
            render_server,
        })
    })
}

/// `--renderer-isolation process`: starts the render worker, which confines itself (the 3D
/// profile) and reports its capsets.
fn start_render_worker(cli: &Cli, config: VirglConfig) -> Result<Option<Started>, String> {
    let CapsetChoice { virgl, venus, .. } = cli.capset;
    let needs = renderer_needs(cli, None, config.venus);
    let start = StartConfig {
        library: config.library,
        render_server: config.render_server,
        virgl: config.virgl,
        venus: config.venus,
        legacy_venus: config.legacy_venus,
        sandbox: match cli.sandbox {
            SandboxMode::Off => WorkerSandbox::Off,
            SandboxMode::SeccompOnly => WorkerSandbox::SeccompOnly,
            SandboxMode::On => WorkerSandbox::On,
        },
        render_nodes: needs.render_nodes,
        library_dirs: needs.library_dirs,
    };
    let program = std::env::current_exe()
        .map_err(|e| format!("the render worker: cannot find this program ({e})"))?;
    let worker = match RenderWorker::spawn(&program, start, cli.verbose) {
        Ok(w) => w,
        Err(e) if virgl != Want::Required && venus != Want::Required => {
            log::info!("3D: no virgl or venus contexts on this host ({e}); cross-domain only");
            return Ok(None);
        }
        Err(e) => return Err(format!("--capset: the renderer does not start: {e}")),
    };
    let venus = check_served(cli, "virglrenderer in a render worker", &worker.capsets())?;
    Ok(Some(Started {
        venus,
        render_server: worker.render_server(),
        host: RendererHost::Process(worker),
    }))
}

/// Checks that the capsets asked for by name are served, logs what is; whether venus is.
fn check_served(cli: &Cli, name: &str, served: &[CapsetInfo]) -> Result<bool, String> {
    let CapsetChoice { virgl, venus, .. } = cli.capset;
    let serves = |id: u32| served.iter().any(|c: &CapsetInfo| c.id == id);
    if virgl == Want::Required && !(serves(CAPSET_VIRGL) || serves(CAPSET_VIRGL2)) {
        return Err("--capset virgl: the renderer serves no virgl capset here".into());
    }
    if venus == Want::Required && !serves(CAPSET_VENUS) {
        return Err(
            "--capset venus: the renderer serves no venus capset here (virglrenderer >= 1.0, \
             its render server and a Vulkan driver are needed)"
                .into(),
        );
    }
    log::info!(
        "3D: {name} serves {}",
        served
            .iter()
            .map(|c| match c.id {
                CAPSET_VIRGL => "VIRGL",
                CAPSET_VIRGL2 => "VIRGL2",
                CAPSET_VENUS => "VENUS",
                _ => "another capset",
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(serves(CAPSET_VENUS))
}

/// A renderer that serves 3D contexts.
struct Started {
    host: RendererHost,
    /// The render server it started (venus), for the sandbox.
    render_server: Option<u32>,
    /// Venus contexts are served.
    venus: bool,
}

/// What the renderer needs from the sandbox ([`RendererNeeds`]): the render nodes Mesa may
/// open (`/dev/dri` when it exists: a host with a GPU), the directory of a library named
/// by path, the render server's pid, whether venus is served.
fn renderer_needs(cli: &Cli, render_server: Option<u32>, venus: bool) -> RendererNeeds {
    let dri = Path::new(gbm::DRI_DIR);
    RendererNeeds {
        render_server,
        venus,
        render_nodes: if dri.exists() {
            vec![dri.to_path_buf()]
        } else {
            Vec::new()
        },
        library_dirs: cli
            .virglrenderer
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .into_iter()
            .collect(),
    }
}

/// Raises the soft limit of open files to the hard limit (every HOST3D blob and exported
/// GUEST blob holds an fd) and returns the limit in effect (`None`: unlimited).
fn raise_fd_limit() -> Option<u64> {
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
            Err(e) => {
                log::info!("open file limit stays {before:?}: {e}");
                return before;
            }
        }
    }
    limit.current
}

/// The fds a guest may make the device hold (`DeviceConfig::max_fds`): the open-file limit
/// less [`FD_RESERVE`], so that a guest that uses up its share still leaves the process the
/// fds of the frontend's memory regions and messages. Past it the guest's allocations get
/// ERR_OUT_OF_MEMORY.
fn guest_fd_limit(open_file_limit: Option<u64>) -> u64 {
    let Some(limit) = open_file_limit else {
        return u64::MAX;
    };
    let guest = limit.saturating_sub(FD_RESERVE);
    if guest < 64 {
        log::warn!(
            "open file limit {limit}: only {guest} left for guest buffers after a reserve of \
             {FD_RESERVE} (raise it with ulimit -n or LimitNOFILE=)"
        );
    } else {
        log::debug!("open file limit {limit}: {guest} for guest buffers, {FD_RESERVE} reserved");
    }
    guest
}

/// The Wayland connector: `--wayland-socket PATH` (which must answer now), `off`, or the
/// environment's compositor when WAYLAND_DISPLAY is set and it answers.
fn wayland_connector(option: Option<&Path>) -> Result<Option<WaylandConnector>, Failure> {
    let (path, explicit) = match option {
        Some(p) if p == Path::new("off") => return Ok(None),
        Some(p) => (p.to_path_buf(), true),
        None => match (
            std::env::var_os("WAYLAND_DISPLAY"),
            wayland::socket_from_env(),
        ) {
            (Some(_), Some(path)) => (path, false),
            _ => {
                log::info!(
                    "cross-domain: no Wayland channel (WAYLAND_DISPLAY is not set; \
                     --wayland-socket PATH names a compositor)"
                );
                return Ok(None);
            }
        },
    };
    let connector = WaylandConnector::new(path, ChannelLimits::default());
    match connector.probe() {
        Ok(()) => {
            log::info!(
                "cross-domain: Wayland channels to {}",
                connector.socket().display()
            );
            Ok(Some(connector))
        }
        Err(e) if explicit => Err(Failure::Runtime(format!("--wayland-socket: {e}"))),
        Err(e) => {
            log::info!("cross-domain: no Wayland channel: {e}");
            Ok(None)
        }
    }
}

/// What the confined backend still needs: the capture directory, `/dev/udmabuf` (udmabuf
/// allocator, and GUEST blob export when the device exists), the render node with GBM,
/// Unix stream sockets and pipes for Wayland channels.
fn sandbox_policy(
    cli: &Cli,
    allocator: &alloc::Resolved,
    wayland: bool,
    renderer: Option<RendererNeeds>,
    render_worker: Option<u32>,
) -> SandboxPolicy {
    let mut devices = Vec::new();
    let udmabuf = Path::new(alloc::udmabuf::UDMABUF_DEVICE);
    if udmabuf.exists() {
        devices.push(udmabuf.to_path_buf());
    }
    let gbm = allocator.kind == AllocatorKind::Gbm;
    if gbm {
        devices.push(
            allocator
                .render_node
                .clone()
                .unwrap_or_else(|| PathBuf::from(gbm::DRI_DIR)),
        );
    }
    SandboxPolicy {
        write_dirs: cli.capture_dir.iter().cloned().collect(),
        udmabuf: devices.iter().any(|d| d == udmabuf),
        devices,
        gbm,
        wayland,
        landlock: match cli.sandbox {
            SandboxMode::SeccompOnly => Landlock::Off,
            _ => Landlock::Required,
        },
        renderer,
        render_worker,
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

/// `vhost-user-gpu --render-worker --fd N [--parent PID] [-v...]`: the render worker
/// (hidden: only the backend starts it, `--renderer-isolation process`). It serves the
/// backend on the connected Unix stream socket `N`.
fn render_worker(args: &[std::ffi::OsString]) -> ExitCode {
    let mut fd = None;
    let mut parent = None;
    let mut verbose = 0u8;
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--render-worker" => {}
            "--fd" => fd = it.next().and_then(|v| v.parse::<i32>().ok()),
            "--parent" => parent = it.next().and_then(|v| v.parse::<u32>().ok()),
            "-v" => verbose = verbose.saturating_add(1),
            _ => {
                eprintln!("vhost-user-gpu --render-worker: unknown argument {arg}");
                return ExitCode::from(2);
            }
        }
    }
    init_logging(verbose);
    let Some(fd) = fd else {
        eprintln!("vhost-user-gpu --render-worker: --fd N is required");
        return ExitCode::from(2);
    };
    let socket = match transport::open_endpoint(&SocketSource::Fd(fd)) {
        Ok(transport::Endpoint::Connected(stream)) => std::os::fd::OwnedFd::from(stream),
        Ok(transport::Endpoint::Listening(_)) => {
            eprintln!("vhost-user-gpu --render-worker: fd {fd} is a listening socket");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("vhost-user-gpu --render-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = vhost_user_gpu::sandbox::die_on_fault_signals() {
        log::warn!("render worker: cannot restore the default action of SIGSEGV: {e}");
    }
    match vhost_user_gpu::renderer::worker::run(socket, parent, &mut WorkerSandboxing::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The render worker's sandbox: the renderer's Landlock rules before Mesa starts its
/// threads, then the 3D seccomp profile.
#[derive(Default)]
struct WorkerSandboxing {
    landlock: Option<vhost_user_gpu::sandbox::LandlockOutcome>,
}

impl WorkerSandboxing {
    fn landlock(config: &StartConfig) -> Option<Landlock> {
        match config.sandbox {
            WorkerSandbox::Off => None,
            WorkerSandbox::SeccompOnly => Some(Landlock::Off),
            WorkerSandbox::On => Some(Landlock::Required),
        }
    }

    fn needs(config: &StartConfig, render_server: Option<u32>, venus: bool) -> RendererNeeds {
        RendererNeeds {
            render_server,
            venus,
            render_nodes: config.render_nodes.clone(),
            library_dirs: config.library_dirs.clone(),
        }
    }
}

impl vhost_user_gpu::renderer::worker::Confinement for WorkerSandboxing {
    fn before_init(&mut self, config: &StartConfig) -> Result<(), RendererError> {
        let Some(landlock) = Self::landlock(config) else {
            return Ok(());
        };
        let needs = Self::needs(config, None, config.venus);
        self.landlock = Some(
            vhost_user_gpu::sandbox::confine_renderer_thread(&needs, landlock)
                .map_err(|e| RendererError::Start(e.to_string()))?,
        );
        Ok(())
    }

    fn after_init(
        &mut self,
        config: &StartConfig,
        render_server: Option<u32>,
        venus: bool,
    ) -> Result<(), RendererError> {
        let Some(landlock) = Self::landlock(config) else {
            log::warn!("render worker: not confined (--sandbox off)");
            return Ok(());
        };
        let outcome = self
            .landlock
            .unwrap_or(vhost_user_gpu::sandbox::LandlockOutcome::NotEnforced);
        let needs = Self::needs(config, render_server, venus);
        let status = vhost_user_gpu::sandbox::confine_render_worker(&needs, landlock, outcome)
            .map_err(|e| RendererError::Start(e.to_string()))?;
        log::info!(
            "render worker: sandbox: 3D (renderer) profile: seccomp allowlist of {} system \
             calls; Landlock {}",
            status.allowed_syscalls,
            match landlock {
                Landlock::Off => "not used (--sandbox seccomp-only)".to_string(),
                Landlock::Required => status.landlock.to_string(),
            }
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--render-worker") {
        return render_worker(&args);
    }
    // QEMU's backend conventions: with --print-capabilities, other options are ignored.
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "--print-capabilities")
    {
        let mut out = std::io::stdout().lock();
        let document = capabilities(gbm_usable());
        return match writeln!(out, "{document}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Reported like clap's own errors (usage line, exit status 2).
        Err(Failure::Usage(e)) => Cli::command().error(ErrorKind::ValueValidation, e).exit(),
        Err(Failure::Runtime(e)) => {
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
        assert!(Cli::try_parse_from([
            "vhost-user-gpu",
            "--socket-path",
            "/tmp/s",
            "--sandbox",
            "yes"
        ])
        .is_err());
        let cli = Cli::try_parse_from(["vhost-user-gpu", "--socket-path", "/tmp/s"]).unwrap();
        assert_eq!(cli.sandbox, SandboxMode::On, "the sandbox is on by default");
        for (value, mode) in [
            ("off", SandboxMode::Off),
            ("seccomp-only", SandboxMode::SeccompOnly),
            ("on", SandboxMode::On),
        ] {
            let cli = Cli::try_parse_from([
                "vhost-user-gpu",
                "--socket-path",
                "/tmp/s",
                "--sandbox",
                value,
            ])
            .unwrap();
            assert_eq!(cli.sandbox, mode);
        }
    }

    #[test]
    fn the_sandbox_profile_follows_the_renderer() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["vhost-user-gpu", "--socket-path", "/tmp/s"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap()
        };
        // Nothing 3D asked for: no renderer, so the minimal profile.
        for args in [&["--capset", "cross-domain"][..], &["--capset", "none"]] {
            assert!(matches!(start_renderer(&parse(args)), Ok(None)), "{args:?}");
        }
        let resolved = alloc::Resolved {
            kind: AllocatorKind::Memfd,
            render_node: None,
        };
        let cli = parse(&[]);
        assert_eq!(
            sandbox_policy(&cli, &resolved, false, None, None).renderer,
            None
        );
        // A renderer: its needs go into the policy (the 3D profile).
        let needs = renderer_needs(&cli, Some(42), true);
        assert_eq!(needs.render_server, Some(42));
        assert!(needs.venus);
        assert!(needs.library_dirs.is_empty(), "a soname has no directory");
        let policy = sandbox_policy(&cli, &resolved, false, Some(needs.clone()), None);
        assert_eq!(policy.renderer, Some(needs));
        // A library named by path: its directory is readable for the renderer thread.
        let cli = parse(&["--virglrenderer", "/opt/virgl/lib/libvirglrenderer.so.1"]);
        assert_eq!(
            renderer_needs(&cli, None, false).library_dirs,
            vec![PathBuf::from("/opt/virgl/lib")]
        );
    }

    #[test]
    fn hostmem_must_be_whole_pages() {
        assert_eq!(parse_hostmem("256M"), Ok(256 << 20));
        assert_eq!(parse_hostmem("0"), Ok(0));
        assert!(parse_hostmem("1000")
            .unwrap_err()
            .contains("multiple of 4 KiB"));
    }

    #[test]
    fn render_node_must_be_a_drm_render_node() {
        let err = parse_render_node("/dev/null").unwrap_err();
        assert!(err.contains("not a DRM render node"), "{err}");
        let err = parse_render_node("/nonexistent/renderD128").unwrap_err();
        assert!(err.contains("/nonexistent/renderD128"), "{err}");
    }

    #[test]
    fn help_lists_the_accepted_values() {
        let help = Cli::command().render_long_help().to_string();
        for value in AllocatorKind::ALL.map(AllocatorKind::as_str) {
            assert!(help.contains(value), "--help lacks allocator {value}");
        }
        for platform in Platform::ALL {
            assert!(help.contains(platform.as_str()), "--help lacks {platform}");
        }
        for text in [
            "on",
            "off",
            "seccomp-only",
            "1-16",
            "WIDTHxHEIGHT",
            "K/M/G/T",
            "minor 128-191",
        ] {
            assert!(help.contains(text), "--help lacks {text}");
        }
    }

    #[test]
    fn capabilities_are_gpu_and_honest() {
        let caps = capabilities(false);
        assert_eq!(caps["type"], "gpu");
        assert_eq!(caps["features"], serde_json::json!([]));
        let caps = capabilities(true);
        assert_eq!(caps["features"], serde_json::json!(["render-node"]));
        // On this host: listed exactly when GBM can allocate on one of its render nodes.
        let listed = capabilities(gbm_usable())["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "render-node");
        assert_eq!(listed, gbm::GbmAllocator::open(None).is_ok());
        if gbm::render_nodes().is_empty() {
            assert!(!listed, "render-node listed on a host without render nodes");
        }
    }

    /// The man page, as clap_mangen renders it from the definitions above.
    fn man_page() -> Vec<u8> {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .expect("render the man page");
        page
    }

    #[test]
    fn man_page_is_generated_from_the_command_line() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("share/vhost-user-gpu.1");
        let generated = man_page();
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from the clap definitions; regenerate it with \
             BLESS=1 cargo test -p vhost-user-gpu --bin vhost-user-gpu man_page",
            path.display()
        );
    }
}
