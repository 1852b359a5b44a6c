//! The command line of `dmabuf-info`: clap definitions only, so that the man page test
//! (`tests/man.rs`) can include this file and render the pages from the same source.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{value_parser, ArgGroup, Args, Parser, Subcommand};
use dmabuf_info::{DeviceAccess, Platform};

/// Exit status, shown by `--help` and in the man page.
pub const EXIT_HELP: &str = "\
Exit status:
  0  success: every inspected buffer may be mapped into a guest
  1  the descriptor or path is not a dma-buf or memfd
  2  usage or configuration error
  3  operating-system error (fd not open, no such file or process)
  4  permission denied (pidfd_getfd on another user's process)
  5  inspected, but the policy refuses at least one buffer

Configuration: --config FILE, else $DMABUF_INFO_CONFIG, else the drop-in files
/usr/share/dmabuf-info/quirks.d/*.toml and /etc/dmabuf-info/quirks.d/*.toml (a file in /etc
replaces the vendor file of the same name; $DMABUF_INFO_QUIRKS_DIRS replaces both
directories). A drop-in file with an unknown key or schema is skipped with a warning.
--platform and --devices override the configuration.";

/// Exit status: success, every buffer may be mapped.
pub const EXIT_OK: u8 = 0;
/// Exit status: not a dma-buf or memfd.
pub const EXIT_NOT_BUFFER: u8 = 1;
/// Exit status: usage or configuration error (clap's own usage errors exit 2 too).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: operating-system error.
pub const EXIT_OS: u8 = 3;
/// Exit status: permission denied.
pub const EXIT_PERMISSION: u8 = 4;
/// Exit status: at least one buffer is refused.
pub const EXIT_REFUSED: u8 = 5;

fn platforms() -> impl TypedValueParser<Value = Platform> {
    PossibleValuesParser::new(
        Platform::ALL.map(|p| PossibleValue::new(p.as_str()).help(p.describe())),
    )
    .map(|s| s.parse::<Platform>().expect("every listed value parses"))
}

fn device_accesses() -> impl TypedValueParser<Value = DeviceAccess> {
    PossibleValuesParser::new(
        DeviceAccess::ALL.map(|d| PossibleValue::new(d.as_str()).help(d.describe())),
    )
    .map(|s| {
        s.parse::<DeviceAccess>()
            .expect("every listed value parses")
    })
}

/// What may the CPU, or a guest VM, do with a dma-buf?
///
/// Inspects dma-bufs and memfds: exporter, size, CPU cache attribute, whether CPU access needs
/// DMA_BUF_IOCTL_SYNC, whether the attribute is stable, which source gave each answer, and
/// whether a virtio-gpu device may map the buffer into a guest (and with which map_info).
#[derive(Parser, Debug)]
#[command(name = "dmabuf-info", version, after_help = EXIT_HELP)]
pub struct Cli {
    /// Configuration file (TOML: schema, platform, devices, kernel_info_abi, [[exporter]]
    /// quirks); read strictly, any problem is a usage error.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Host platform the guest mapping decision is made for (default: configured, else
    /// detected).
    #[arg(long, global = true, value_name = "NAME", value_parser = platforms())]
    pub platform: Option<Platform>,
    /// Which devices may access the buffers besides CPUs (default: configured, else coherent on
    /// x86 and non-coherent elsewhere). Decides whether cached udmabuf and dma-heap buffers
    /// need DMA_BUF_IOCTL_SYNC.
    #[arg(long, global = true, value_name = "ACCESS", value_parser = device_accesses())]
    pub devices: Option<DeviceAccess>,
    /// Print JSON (schema in the README, "JSON output") instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect an inherited descriptor (--fd), a path, or the buffers of another process
    /// (--pid).
    #[command(after_help = EXIT_HELP)]
    Inspect(InspectArgs),
    /// Print the platform, the device access and the decision tables they imply.
    #[command(after_help = EXIT_HELP)]
    Platform,
}

/// Arguments of `inspect`: at least one of --fd, --pid and PATH.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["fd", "pid", "path"])))]
pub struct InspectArgs {
    /// Descriptor number (0 or more): one this process inherited, or with --pid one of that
    /// process.
    #[arg(long, value_name = "N", value_parser = value_parser!(i32).range(0..))]
    pub fd: Option<i32>,
    /// Process ID (1 or more) whose dma-bufs and memfds to list (pidfd_open +
    /// pidfd_getfd); with --fd only that descriptor.
    #[arg(long, value_name = "PID", value_parser = value_parser!(i32).range(1..))]
    pub pid: Option<i32>,
    /// DRM device node that allocated the buffer (e.g. /dev/dri/renderD128): its driver is
    /// asked about the buffer.
    #[arg(long, value_name = "PATH")]
    pub drm: Option<PathBuf>,
    /// A file to open and inspect; /proc/PID/fd/N is inspected through pidfd_getfd.
    #[arg(value_name = "PATH", conflicts_with_all = ["fd", "pid"])]
    pub path: Option<PathBuf>,
}
