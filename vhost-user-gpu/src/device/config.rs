//! The device's static configuration ([`DeviceConfig`]) and the limits derived from it.

use super::budget::{Kind, Usage};
use super::context::{ATTACHMENTS_PER_RESOURCE, MAX_CONTEXTS};
use super::fence::MAX_PENDING_FENCES;
use super::ports::PAGE_SIZE;
use crate::protocol::MAX_SCANOUTS;

/// Static configuration of the device (from the command line; stable across runs so that
/// what the guest sees does not depend on the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// One entry per scanout (1..=16): the output's resolution.
    pub outputs: Vec<(u32, u32)>,
    /// Size of the host-visible shared memory region (shmid 1) in bytes; 0 = no region.
    pub hostmem: u64,
    /// Most host memory all resources together may use, in bytes.
    pub max_resource_memory: u64,
    /// Most resources at once.
    pub max_resources: u32,
    /// Offer the cross-domain capset (host-allocated images and Wayland channels).
    pub cross_domain: bool,
    /// Most fenced answers that may wait at once ([`MAX_PENDING_FENCES`] by default); the
    /// transport stops taking control commands while this many wait.
    pub max_pending_fences: usize,
    /// Most file descriptors the device holds for the guest at once, all contexts together:
    /// host buffers, exported GUEST blobs, and cross-domain channels' compositor
    /// connections, pipes and fds received from the compositor and not yet claimed. The
    /// binary sets it to its open-file limit less [`FD_RESERVE`], so that a guest running
    /// out never leaves the process without fds for the frontend's memory regions and
    /// messages.
    pub max_fds: u64,
}

/// Most guest memory regions the transport accepts from the frontend (`GET_MAX_MEM_SLOTS`
/// with `CONFIGURE_MEM_SLOTS`), each an fd the process holds: QEMU asks for the number and
/// never uses more than its own limit (509 on x86), and it lists every mapped blob as a
/// region.
pub const MAX_MEMORY_REGIONS: u64 = 509;

/// File descriptors the binary keeps out of the guest's reach ([`DeviceConfig::max_fds`]):
/// one per memory region the frontend may send ([`MAX_MEMORY_REGIONS`]), plus the
/// process's own (standard streams, the listening, connection and `--control-socket`
/// sockets, the backend and display channels, the queues' kick, call and error eventfds,
/// epoll instances, `/dev/udmabuf`, the render node, capture files) and the short-lived
/// ones of an allocation (the memfd behind a udmabuf) or of a live upgrade's handover (its
/// connection and the memfd of the 2D pixels).
pub const FD_RESERVE: u64 = MAX_MEMORY_REGIONS + 64;

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            outputs: vec![DEFAULT_OUTPUT],
            hostmem: 256 << 20,
            max_resource_memory: 1 << 30,
            max_resources: 16384,
            cross_domain: true,
            max_pending_fences: MAX_PENDING_FENCES,
            max_fds: 4096,
        }
    }
}

/// An invalid [`DeviceConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No outputs, or more than 16.
    #[error("{0} outputs configured: need 1 to 16")]
    OutputCount(usize),
    /// An output with a zero or too large dimension.
    #[error("output {index} has size {width}x{height}: each side must be 1..={MAX_OUTPUT_SIDE}")]
    OutputSize {
        /// Output index.
        index: usize,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The region size is not a multiple of 4 KiB.
    #[error("host-visible region size {0:#x} is not a multiple of 4096")]
    HostmemAlignment(u64),
    /// No fenced answer could ever wait.
    #[error("max_pending_fences is 0: at least one fenced answer must be able to wait")]
    NoPendingFences,
}

/// Largest output side accepted.
pub const MAX_OUTPUT_SIDE: u32 = 16384;
/// Largest width or height of what a scanout shows (the rectangle of `SET_SCANOUT`, the
/// image of `SET_SCANOUT_BLOB`): the largest output mode the device accepts. Larger ones
/// are refused with `ERR_INVALID_PARAMETER`, so no display sink (nor the frontend's display
/// behind it) is ever asked for more; within it, the copies a shown image costs are charged
/// to `max_resource_memory`.
pub const MAX_SCANOUT_SIDE: u32 = MAX_OUTPUT_SIDE;
/// The output a configuration without outputs is repaired to (and the EDID fallback).
pub const DEFAULT_OUTPUT: (u32, u32) = (1280, 800);

impl DeviceConfig {
    /// Checks the configuration ([`GpuDevice::new`] repairs invalid ones with a warning).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.outputs.is_empty() || self.outputs.len() > MAX_SCANOUTS {
            return Err(ConfigError::OutputCount(self.outputs.len()));
        }
        for (index, &(width, height)) in self.outputs.iter().enumerate() {
            if width == 0 || height == 0 || width > MAX_OUTPUT_SIDE || height > MAX_OUTPUT_SIDE {
                return Err(ConfigError::OutputSize {
                    index,
                    width,
                    height,
                });
            }
        }
        if !self.hostmem.is_multiple_of(PAGE_SIZE) {
            return Err(ConfigError::HostmemAlignment(self.hostmem));
        }
        if self.max_pending_fences == 0 {
            return Err(ConfigError::NoPendingFences);
        }
        Ok(())
    }
}

impl DeviceConfig {
    /// The budgets of a device with this configuration.
    pub(crate) fn limits(&self) -> Usage {
        Usage::host_bytes(self.max_resource_memory)
            .with(Kind::Resources, u64::from(self.max_resources))
            .with(Kind::Contexts, MAX_CONTEXTS)
            .with(Kind::PendingFences, self.max_pending_fences as u64)
            .with(Kind::Fds, self.max_fds)
            .with(
                Kind::Attachments,
                ATTACHMENTS_PER_RESOURCE * u64::from(self.max_resources),
            )
    }

    /// Repairs an invalid configuration (see [`DeviceConfig::validate`]): outputs limited to
    /// 16 (at least one, [`DEFAULT_OUTPUT`]), sizes clamped to `1..=MAX_OUTPUT_SIDE`, the
    /// region rounded down to whole pages.
    pub(crate) fn repair(&mut self) {
        self.outputs.truncate(MAX_SCANOUTS);
        if self.outputs.is_empty() {
            self.outputs.push(DEFAULT_OUTPUT);
        }
        for o in &mut self.outputs {
            o.0 = o.0.clamp(1, MAX_OUTPUT_SIDE);
            o.1 = o.1.clamp(1, MAX_OUTPUT_SIDE);
        }
        self.hostmem &= !(PAGE_SIZE - 1);
        self.max_pending_fences = self.max_pending_fences.max(1);
    }
}
