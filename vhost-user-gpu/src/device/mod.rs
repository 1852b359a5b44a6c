//! The device core: typed commands in, state machine, typed responses out.
//!
//! [`GpuDevice`] owns the resources, contexts, scanouts and the host-visible region's
//! bookkeeping. It never touches a socket or a virtqueue: the transport hands it the
//! readable bytes of a descriptor chain and writes back the bytes it returns. Everything
//! with side effects outside the process goes through the [`ports`].
//!
//! Processing is synchronous: a command's effects (including a mapping acknowledged by the
//! frontend) are complete when its response is returned, so fences are answered in order by
//! echoing them in the response header.
//!
//! Every rejected guest input is answered with the matching virtio-gpu error and logged
//! with `warn!`, naming the command and the field.
//!
//! Guest memory is only reached through vm-memory (`GuestMemory`/`Bytes`), with every range
//! checked, and re-resolved on each access because the frontend may replace the memory table
//! at any time. QEMU lists mapped blobs of the host-visible region in that table, so guest
//! descriptors and backings may point into a mapped blob; the device then reads or writes
//! that blob, which is memory the guest already owns and sees. This is harmless and
//! deliberately allowed (refusing it would need the region's guest address, which the
//! backend is never told).
//!
//! Host memory is accounted before it is allocated: every resource, context and host buffer
//! is charged to the device's budgets ([`budget`]) through the resource table before it is
//! made, so `max_resource_memory`, `max_resources` and the context limit turn into
//! `ERR_OUT_OF_MEMORY`, never into a host allocation failure.
//!
//! Layout: the state has owners with small APIs (`ResourceTable` in `resource_table.rs`,
//! `ContextTable` in `context.rs`, `Scanouts` in `scanout.rs`, [`region::RegionAllocator`]);
//! the command handlers are in `commands/`, one file per command group; [`GpuDevice`] ties
//! them to the ports. The state owners import neither `GpuDevice` nor the handlers.

mod backing;
pub mod budget;
mod commands;
mod config;
mod context;
pub mod edid;
mod mmap;
pub mod ports;
pub mod region;
mod reject;
mod resource;
mod resource_table;
mod scanout;

use std::fmt;

use log::{debug, warn};

use crate::protocol::{
    command_name, feature, CtrlHeader, DecodeError, GpuCommand, GpuError, GpuResponse,
    CONFIG_EVENTS_CLEAR, CONFIG_EVENTS_READ, CONFIG_NUM_CAPSETS, CONFIG_NUM_SCANOUTS, CONFIG_SIZE,
    EVENT_DISPLAY,
};
pub use backing::BackingError;
use budget::{Budget, Kind};
pub use config::{ConfigError, DeviceConfig, DEFAULT_OUTPUT, MAX_OUTPUT_SIDE};
use context::ContextTable;
use context::Waiting;
use ports::{
    BufferAllocator, ChannelConnector, DisplaySink, GuestMemory, GuestPageExporter, MapAdvisor,
    RegionMapper,
};
use region::RegionAllocator;
use reject::{reject, Reject};
use resource::ResourceKind;
use resource_table::ResourceTable;
use scanout::Scanouts;

/// The device's side-effect interfaces.
pub struct Ports {
    /// Allocates host buffers (HOST3D blobs).
    pub allocator: Box<dyn BufferAllocator>,
    /// Maps buffers into the host-visible region.
    pub mapper: Box<dyn RegionMapper>,
    /// Shows scanouts and the cursor.
    pub display: Box<dyn DisplaySink>,
    /// Decides whether a buffer may be mapped into the guest.
    pub advisor: Box<dyn MapAdvisor>,
    /// Exports GUEST blobs' guest RAM as dma-bufs for display sinks that import them
    /// (`None`: GUEST blobs are shown by copying their pixels).
    pub exporter: Option<Box<dyn GuestPageExporter>>,
    /// Opens cross-domain channels to the host compositor (`None`: no channel is served and
    /// the capset's `supported_channels` is 0).
    pub channels: Option<Box<dyn ChannelConnector>>,
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports")
            .field("allocator", &self.allocator.name())
            .finish_non_exhaustive()
    }
}

/// Feature bits this device offers (`VIRTIO_GPU_F_*` as masks).
pub const OFFERED_FEATURES: u64 = (1 << feature::VIRGL)
    | (1 << feature::EDID)
    | (1 << feature::RESOURCE_UUID)
    | (1 << feature::RESOURCE_BLOB)
    | (1 << feature::CONTEXT_INIT);

/// Number of capsets offered (cross-domain only).
pub const NUM_CAPSETS: u32 = 1;

/// Host bytes charged per guest memory entry of a backing (the entry as sent, its merged
/// piece and offset): a backing's entry list is host memory whose size the guest chooses
/// (up to 16384 entries per resource), so it counts against `max_resource_memory`.
pub const BACKING_ENTRY_COST: u64 = 48;

/// Host bytes charged for a backing of `entries` entries.
pub(crate) fn backing_cost(entries: usize) -> u64 {
    (entries as u64).saturating_mul(BACKING_ENTRY_COST)
}

/// Rejected requests logged as warnings before rate limiting starts.
pub const REJECT_LOG_BURST: u64 = 200;
/// After the burst, one rejected request in this many is logged as a warning.
pub const REJECT_LOG_EVERY: u64 = 1000;

/// The virtio-gpu device state machine.
pub struct GpuDevice {
    config: DeviceConfig,
    allocator: Box<dyn BufferAllocator>,
    mapper: Box<dyn RegionMapper>,
    display: Box<dyn DisplaySink>,
    advisor: Box<dyn MapAdvisor>,
    exporter: Option<Box<dyn GuestPageExporter>>,
    channels: Option<Box<dyn ChannelConnector>>,
    /// Fenced POLLs answered (an event was written, or their channel closed), not yet
    /// reported to the transport.
    fences_done: Vec<Waiting>,
    acked_features: u64,
    shmem_available: bool,
    events_read: u32,
    config_changed: bool,
    /// Resources, and the budgets every guest-caused host allocation is charged against.
    resources: ResourceTable,
    contexts: ContextTable,
    scanouts: Scanouts,
    region: RegionAllocator,
    /// Whether the allocator hands out dma-bufs (probed once, for the capset).
    allocator_dmabuf: Option<bool>,
    /// Whether a refused export of a GUEST blob was logged (once per device).
    export_refusal_logged: bool,
    /// Reused buffer for frames and cursor images.
    scratch: Vec<u8>,
    /// Rejected requests so far (for log rate limiting).
    rejects: u64,
}

impl fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuDevice")
            .field("config", &self.config)
            .field("acked_features", &self.acked_features)
            .field("resources", &self.resources.len())
            .field("contexts", &self.contexts.len())
            .field("used", &self.resources.used())
            .finish_non_exhaustive()
    }
}

impl GpuDevice {
    /// A device with `config` and `ports`. An invalid `config` (see
    /// [`DeviceConfig::validate`]) is repaired with a warning: outputs are limited to 16
    /// (at least one, 1280x800), sizes clamped to `1..=16384`, the region rounded down to
    /// whole pages.
    pub fn new(config: DeviceConfig, ports: Ports) -> GpuDevice {
        let mut config = config;
        if let Err(e) = config.validate() {
            warn!("device configuration: {e}; repairing it");
            config.repair();
        }
        GpuDevice {
            resources: ResourceTable::new(Budget::new(config.limits())),
            contexts: ContextTable::default(),
            scanouts: Scanouts::new(config.outputs.iter().copied()),
            region: RegionAllocator::new(config.hostmem),
            config,
            allocator: ports.allocator,
            mapper: ports.mapper,
            display: ports.display,
            advisor: ports.advisor,
            exporter: ports.exporter,
            channels: ports.channels,
            fences_done: Vec::new(),
            acked_features: 0,
            shmem_available: true,
            events_read: 0,
            config_changed: false,
            allocator_dmabuf: None,
            export_refusal_logged: false,
            scratch: Vec::new(),
            rejects: 0,
        }
    }

    /// The configuration in use (after repair).
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The `VIRTIO_GPU_F_*` features offered, as a mask (`1 << bit`). Transport features
    /// (VERSION_1, protocol features...) are the transport's business.
    pub fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    /// Records what the driver accepted; only acked features are served (others answer
    /// `ERR_UNSPEC`). Bits not offered are ignored.
    pub fn ack_features(&mut self, acked: u64) {
        self.acked_features = acked & OFFERED_FEATURES;
    }

    /// The features in effect.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    fn require_feature(&self, bit: u32, name: &str) -> Result<(), Reject> {
        if self.has_feature(bit) {
            Ok(())
        } else {
            Err(reject(
                GpuError::Unspec,
                format!("feature {name} was not negotiated"),
            ))
        }
    }

    /// Transport-level switch for the host-visible region: `false` while the frontend has
    /// not set up shared memory (no GET_SHMEM_CONFIG / SHMEM negotiated). Default `true`.
    /// Independently, every RESOURCE_MAP_BLOB also asks `RegionMapper::available()` and
    /// needs a configured region (`hostmem > 0`); all three must hold to map.
    pub fn set_shmem_available(&mut self, yes: bool) {
        self.shmem_available = yes;
    }

    /// The config space: `events_read`, `events_clear` (reads 0), `num_scanouts`,
    /// `num_capsets`, little-endian.
    pub fn read_config(&self) -> [u8; CONFIG_SIZE] {
        let mut out = [0u8; CONFIG_SIZE];
        let mut put = |at: usize, value: u32| out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        put(CONFIG_EVENTS_READ, self.events_read);
        put(CONFIG_NUM_SCANOUTS, self.scanouts.len() as u32);
        put(CONFIG_NUM_CAPSETS, NUM_CAPSETS);
        out
    }

    /// A driver write to the config space. Only `events_clear` is writable:
    /// bits written there are cleared from `events_read`. Other writes are ignored.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) {
        let start = offset as usize;
        let Some(end) = start.checked_add(data.len()).filter(|&e| e <= CONFIG_SIZE) else {
            warn!(
                "config write at {offset}+{} is outside the config space",
                data.len()
            );
            return;
        };
        // Overlap of the write with events_clear.
        let field = CONFIG_EVENTS_CLEAR..CONFIG_EVENTS_CLEAR + 4;
        let mut clear = [0u8; 4];
        let mut touched = false;
        for (i, &b) in data.iter().enumerate() {
            let pos = start + i;
            if field.contains(&pos) {
                clear[pos - field.start] = b;
                touched = true;
            }
        }
        if !touched || start < field.start || end > field.end {
            debug!(
                "config write at {offset}+{} touches read-only fields",
                data.len()
            );
        }
        self.events_read &= !u32::from_le_bytes(clear);
    }

    /// `true` once after a display event became pending (the transport then signals a
    /// config change interrupt).
    pub fn take_config_changed(&mut self) -> bool {
        std::mem::take(&mut self.config_changed)
    }

    /// Changes output `scanout_id`: `Some((w, h))` connects it with that resolution, `None`
    /// disconnects it. Raises `VIRTIO_GPU_EVENT_DISPLAY` so the driver asks again. Returns
    /// `false` for an unknown scanout or an invalid size.
    pub fn set_output(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) -> bool {
        let Some(scanout) = self.scanouts.get_mut(scanout_id) else {
            return false;
        };
        if let Some((w, h)) = mode {
            if w == 0 || h == 0 || w > MAX_OUTPUT_SIDE || h > MAX_OUTPUT_SIDE {
                return false;
            }
            self.config.outputs[scanout_id as usize] = (w, h);
        }
        if scanout.mode != mode {
            scanout.mode = mode;
            self.events_read |= EVENT_DISPLAY;
            self.config_changed = true;
        }
        true
    }

    /// Replaces the display sink (the transport does this when QEMU sends its display
    /// socket). The new sink is told about every enabled scanout.
    pub fn set_display(&mut self, display: Box<dyn DisplaySink>) {
        self.display = display;
        for (id, s) in self.scanouts.iter() {
            if let Some(shown) = &s.shown {
                self.display
                    .scanout(id, Some((shown.rect.width, shown.rect.height)));
            }
        }
    }

    /// Device reset: drops every resource, context and scanout, and forgets the region's
    /// ranges without calling `RegionMapper::unmap` (the frontend already unmapped the
    /// region). Negotiated features and pending events are cleared.
    pub fn reset(&mut self) {
        for id in self.scanouts.stop_all() {
            self.display.scanout(id, None);
        }
        self.resources.clear();
        self.contexts.clear();
        self.fences_done.clear();
        debug_assert!(
            self.resources.used().is_zero(),
            "charges outlive the resources and contexts they pay for: {:?}",
            self.resources.used()
        );
        self.region.clear();
        self.acked_features = 0;
        self.events_read = 0;
        self.config_changed = false;
    }

    /// Host memory currently charged to resources, in bytes.
    pub fn resource_memory(&self) -> u64 {
        self.resources.used().get(Kind::HostBytes)
    }

    /// Number of live resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// The reserved ranges of the host-visible region, `(offset, len)`.
    pub fn region_ranges(&self) -> Vec<(u64, u64)> {
        self.region.ranges().collect()
    }

    /// Handles one control-queue request (the whole readable part of the chain) and
    /// returns the response bytes.
    pub fn process_control(&mut self, mem: &GuestMemory, request: &[u8]) -> Vec<u8> {
        self.process(mem, request, false)
    }

    /// Handles one cursor-queue request. The response bytes are returned for symmetry;
    /// cursor chains usually have no writable part, and then the transport drops them.
    pub fn process_cursor(&mut self, mem: &GuestMemory, request: &[u8]) -> Vec<u8> {
        self.process(mem, request, true)
    }

    fn process(&mut self, mem: &GuestMemory, request: &[u8], cursor_queue: bool) -> Vec<u8> {
        let queue = if cursor_queue { "cursor" } else { "control" };
        let (hdr, response) = match GpuCommand::decode(request) {
            Ok((hdr, command)) => {
                let name = command.name();
                let is_cursor = matches!(
                    command,
                    GpuCommand::UpdateCursor { .. } | GpuCommand::MoveCursor { .. }
                );
                let result = if is_cursor != cursor_queue {
                    Err(reject(
                        GpuError::Unspec,
                        format!("not accepted on the {queue} queue"),
                    ))
                } else {
                    self.execute(mem, &hdr, command)
                };
                let response = match result {
                    Ok(r) => r,
                    Err(Reject { error, reason }) => {
                        self.log_reject(format_args!(
                            "{name}: {reason} -> {}",
                            command_name(error.ctrl_type())
                        ));
                        GpuResponse::Err(error)
                    }
                };
                (hdr, response)
            }
            Err(e) => {
                let hdr = CtrlHeader::decode(request).unwrap_or_default();
                let error = match e {
                    DecodeError::TooLarge { .. } => GpuError::InvalidParameter,
                    DecodeError::Truncated { .. } | DecodeError::UnknownType(_) => GpuError::Unspec,
                };
                self.log_reject(format_args!(
                    "{} ({:#x}) on the {queue} queue: {e} -> {}",
                    command_name(hdr.ctrl_type),
                    hdr.ctrl_type,
                    command_name(error.ctrl_type())
                ));
                (hdr, GpuResponse::Err(error))
            }
        };
        let mut out = Vec::new();
        response.encode(&hdr, &mut out);
        out
    }

    /// Logs a rejected request with `warn!`. A guest that keeps sending bad requests must
    /// not flood the host log: after [`REJECT_LOG_BURST`] warnings only every
    /// [`REJECT_LOG_EVERY`]th is a warning (with the count of the others, which go to
    /// `debug!`).
    fn log_reject(&mut self, message: fmt::Arguments<'_>) {
        self.rejects = self.rejects.saturating_add(1);
        if self.rejects <= REJECT_LOG_BURST {
            warn!("{message}");
        } else if self.rejects.is_multiple_of(REJECT_LOG_EVERY) {
            warn!(
                "{message} ({} rejected requests so far; most are logged at debug level)",
                self.rejects
            );
        } else {
            debug!("{message}");
        }
    }
    /// Removes a resource: scanouts showing it are disabled first, contexts forget it, a
    /// mapping is removed (synchronously) before the buffer is released.
    pub(crate) fn destroy_resource(&mut self, resource_id: u32) {
        for id in self.scanouts.stop_showing(resource_id) {
            self.display.scanout(id, None);
        }
        let orphans = self.contexts.forget_resource(resource_id);
        self.fences_done.extend(orphans);
        let Some(resource) = self.resources.remove(resource_id) else {
            return;
        };
        if let ResourceKind::HostBlob(blob) = &resource.kind {
            if let Some(offset) = blob.mapped_at {
                match self.mapper.unmap(offset, blob.buffer.size) {
                    Ok(()) => {
                        let _ = self.region.free(offset);
                    }
                    Err(e) => {
                        // The range may still be mapped in the guest: keep it reserved
                        // until reset so that nothing else is mapped over it.
                        log::error!(
                            "RESOURCE_UNREF: resource_id {resource_id}: unmapping region \
                             range {offset:#x}+{:#x} failed: {e}; the range stays reserved",
                            blob.buffer.size
                        );
                    }
                }
            }
        }
        // Dropping `resource` releases what it was charged.
    }
}
