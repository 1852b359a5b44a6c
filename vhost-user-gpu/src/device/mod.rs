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
//! Host memory is accounted before it is allocated: `max_resource_memory` and
//! `max_resources` turn into `ERR_OUT_OF_MEMORY`, never into a host allocation failure.

mod backing;
mod blob;
mod context;
pub mod edid;
mod mmap;
pub mod ports;
pub mod region;
mod resource;
mod scanout;

use std::collections::BTreeMap;
use std::fmt;

use log::{debug, warn};

use crate::protocol::{
    self, command_name, feature, format, CtrlHeader, DecodeError, DisplayMode, GpuCommand,
    GpuError, GpuResponse, Rect, CONFIG_EVENTS_CLEAR, CONFIG_EVENTS_READ, CONFIG_NUM_CAPSETS,
    CONFIG_NUM_SCANOUTS, CONFIG_SIZE, EVENT_DISPLAY, MAX_SCANOUTS,
};
pub use backing::BackingError;
use context::Context;
use ports::{
    BufferAllocator, DisplaySink, GuestMemory, GuestPageExporter, MapAdvisor, RegionMapper,
};
use region::RegionAllocator;
use resource::{Image2d, Resource, ResourceKind, BYTES_PER_PIXEL};
use scanout::{CursorState, Scanout};

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
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            outputs: vec![DEFAULT_OUTPUT],
            hostmem: 256 << 20,
            max_resource_memory: 1 << 30,
            max_resources: 16384,
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
}

/// Largest output side accepted.
pub const MAX_OUTPUT_SIDE: u32 = 16384;
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
        if !self.hostmem.is_multiple_of(region::PAGE_SIZE) {
            return Err(ConfigError::HostmemAlignment(self.hostmem));
        }
        Ok(())
    }
}

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

/// A refused command: the error to answer and the reason to log.
#[derive(Debug)]
pub(crate) struct Reject {
    error: GpuError,
    reason: String,
}

/// Builds a [`Reject`].
pub(crate) fn reject(error: GpuError, reason: impl Into<String>) -> Reject {
    Reject {
        error,
        reason: reason.into(),
    }
}

type CmdResult = Result<GpuResponse, Reject>;

/// The virtio-gpu device state machine.
pub struct GpuDevice {
    config: DeviceConfig,
    allocator: Box<dyn BufferAllocator>,
    mapper: Box<dyn RegionMapper>,
    display: Box<dyn DisplaySink>,
    advisor: Box<dyn MapAdvisor>,
    exporter: Option<Box<dyn GuestPageExporter>>,
    acked_features: u64,
    shmem_available: bool,
    events_read: u32,
    config_changed: bool,
    resources: BTreeMap<u32, Resource>,
    /// Host bytes charged: resources plus pending cross-domain buffers.
    resource_memory: u64,
    contexts: BTreeMap<u32, Context>,
    scanouts: Vec<Scanout>,
    cursor: CursorState,
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
            .field("resource_memory", &self.resource_memory)
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
            config.outputs.truncate(MAX_SCANOUTS);
            if config.outputs.is_empty() {
                config.outputs.push(DEFAULT_OUTPUT);
            }
            for o in &mut config.outputs {
                o.0 = o.0.clamp(1, MAX_OUTPUT_SIDE);
                o.1 = o.1.clamp(1, MAX_OUTPUT_SIDE);
            }
            config.hostmem &= !(region::PAGE_SIZE - 1);
        }
        let scanouts = config
            .outputs
            .iter()
            .map(|&mode| Scanout::new(Some(mode)))
            .collect();
        GpuDevice {
            region: RegionAllocator::new(config.hostmem),
            config,
            allocator: ports.allocator,
            mapper: ports.mapper,
            display: ports.display,
            advisor: ports.advisor,
            exporter: ports.exporter,
            acked_features: 0,
            shmem_available: true,
            events_read: 0,
            config_changed: false,
            resources: BTreeMap::new(),
            resource_memory: 0,
            contexts: BTreeMap::new(),
            scanouts,
            cursor: CursorState::default(),
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
        let Some(scanout) = self.scanouts.get_mut(scanout_id as usize) else {
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
        for (id, s) in self.scanouts.iter().enumerate() {
            if let Some(shown) = &s.shown {
                self.display
                    .scanout(id as u32, Some((shown.rect.width, shown.rect.height)));
            }
        }
    }

    /// Device reset: drops every resource, context and scanout, and forgets the region's
    /// ranges without calling `RegionMapper::unmap` (the frontend already unmapped the
    /// region). Negotiated features and pending events are cleared.
    pub fn reset(&mut self) {
        for (id, s) in self.scanouts.iter_mut().enumerate() {
            if s.shown.take().is_some() {
                self.display.scanout(id as u32, None);
            }
            // Whether an output is connected is host state: it survives a reset.
        }
        self.resources.clear();
        self.contexts.clear();
        self.region.clear();
        self.resource_memory = 0;
        self.cursor = CursorState::default();
        self.acked_features = 0;
        self.events_read = 0;
        self.config_changed = false;
    }

    /// Host memory currently charged to resources, in bytes.
    pub fn resource_memory(&self) -> u64 {
        self.resource_memory
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
                    self.handle(mem, &hdr, command)
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

    fn handle(&mut self, mem: &GuestMemory, hdr: &CtrlHeader, command: GpuCommand) -> CmdResult {
        use GpuCommand as C;
        match command {
            C::GetDisplayInfo => Ok(self.display_info()),
            C::GetEdid { scanout_id } => self.get_edid(scanout_id),
            C::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self.resource_create_2d(resource_id, format, width, height),
            C::ResourceUnref { resource_id } => self.resource_unref(resource_id),
            C::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => self.set_scanout(scanout_id, resource_id, rect),
            C::ResourceFlush { rect, resource_id } => self.resource_flush(mem, resource_id, rect),
            C::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => self.transfer_to_host_2d(mem, resource_id, rect, offset),
            C::ResourceAttachBacking {
                resource_id,
                entries,
            } => self.attach_backing(mem, resource_id, entries),
            C::ResourceDetachBacking { resource_id } => self.detach_backing(resource_id),
            C::GetCapsetInfo { capset_index } => self.get_capset_info(capset_index),
            C::GetCapset {
                capset_id,
                capset_version,
            } => self.get_capset(capset_id, capset_version),
            C::ResourceAssignUuid { resource_id } => self.assign_uuid(resource_id),
            C::ResourceCreateBlob {
                resource_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                entries,
            } => self.create_blob(
                mem,
                hdr.ctx_id,
                blob::BlobParams {
                    resource_id,
                    blob_mem,
                    blob_flags,
                    blob_id,
                    size,
                    entries,
                },
            ),
            C::SetScanoutBlob {
                rect,
                scanout_id,
                resource_id,
                width,
                height,
                format,
                strides,
                offsets,
            } => self.set_scanout_blob(
                scanout_id,
                resource_id,
                rect,
                scanout::BlobView {
                    width,
                    height,
                    format,
                    drm_format: 0,
                    stride: strides[0],
                    offset: offsets[0],
                },
            ),
            C::CtxCreate {
                context_init,
                debug_name,
            } => self.ctx_create(hdr.ctx_id, context_init, debug_name),
            C::CtxDestroy => self.ctx_destroy(hdr.ctx_id),
            C::CtxAttachResource { resource_id } => self.ctx_attach(hdr.ctx_id, resource_id),
            C::CtxDetachResource { resource_id } => self.ctx_detach(hdr.ctx_id, resource_id),
            C::ResourceCreate3d { resource_id }
            | C::TransferToHost3d { resource_id }
            | C::TransferFromHost3d { resource_id } => Err(reject(
                GpuError::Unspec,
                format!(
                    "resource {resource_id}: 3D resources need a virgl renderer, which this \
                     device does not have (use cross-domain blobs)"
                ),
            )),
            C::Submit3d { commands } => self.submit_3d(mem, hdr.ctx_id, &commands),
            C::ResourceMapBlob {
                resource_id,
                offset,
            } => self.map_blob(resource_id, offset),
            C::ResourceUnmapBlob { resource_id } => self.unmap_blob(resource_id),
            C::UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
            } => self.update_cursor(mem, pos, resource_id, hot_x, hot_y),
            C::MoveCursor { pos } => self.move_cursor(pos),
        }
    }

    fn display_info(&self) -> GpuResponse {
        GpuResponse::OkDisplayInfo(
            self.scanouts
                .iter()
                .map(|s| match s.mode {
                    Some((width, height)) => DisplayMode {
                        rect: Rect {
                            x: 0,
                            y: 0,
                            width,
                            height,
                        },
                        enabled: true,
                        flags: 0,
                    },
                    None => DisplayMode::default(),
                })
                .collect(),
        )
    }

    fn get_edid(&self, scanout_id: u32) -> CmdResult {
        self.require_feature(feature::EDID, "EDID")?;
        let scanout = self.scanouts.get(scanout_id as usize).ok_or_else(|| {
            reject(
                GpuError::InvalidScanoutId,
                format!("scanout {scanout_id} does not exist"),
            )
        })?;
        let (width, height) = scanout
            .mode
            .or_else(|| self.config.outputs.get(scanout_id as usize).copied())
            .unwrap_or(DEFAULT_OUTPUT);
        let block = edid::build(width, height, scanout_id).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!(
                    "scanout {scanout_id}: mode {width}x{height} cannot be described by an \
                     EDID base block"
                ),
            )
        })?;
        Ok(GpuResponse::OkEdid(block.to_vec()))
    }

    /// Checks a new resource id and the resource count.
    fn check_new_resource_id(&self, resource_id: u32) -> Result<(), Reject> {
        if resource_id == 0 {
            return Err(reject(
                GpuError::InvalidResourceId,
                "resource_id 0 is invalid",
            ));
        }
        if self.resources.contains_key(&resource_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} already exists"),
            ));
        }
        if self.resources.len() >= self.config.max_resources as usize {
            return Err(reject(
                GpuError::OutOfMemory,
                format!(
                    "resource_id {resource_id}: the limit of {} resources is reached",
                    self.config.max_resources
                ),
            ));
        }
        Ok(())
    }

    /// Charges `bytes` of host memory, refusing past `max_resource_memory`.
    fn charge(&mut self, bytes: u64, what: &str) -> Result<(), Reject> {
        self.check_budget(bytes, what)?;
        self.resource_memory += bytes; // checked in check_budget
        Ok(())
    }

    /// Checks that `bytes` more would fit, without charging them.
    fn check_budget(&self, bytes: u64, what: &str) -> Result<(), Reject> {
        match self.resource_memory.checked_add(bytes) {
            Some(total) if total <= self.config.max_resource_memory => Ok(()),
            _ => Err(reject(
                GpuError::OutOfMemory,
                format!(
                    "{what}: about {bytes} bytes would exceed the resource memory limit ({} \
                     of {} bytes in use)",
                    self.resource_memory, self.config.max_resource_memory
                ),
            )),
        }
    }

    fn uncharge(&mut self, bytes: u64) {
        self.resource_memory = self.resource_memory.saturating_sub(bytes);
    }

    fn resource_create_2d(
        &mut self,
        resource_id: u32,
        virtio_format: u32,
        width: u32,
        height: u32,
    ) -> CmdResult {
        self.check_new_resource_id(resource_id)?;
        let drm_format = format::to_drm_fourcc(virtio_format).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id}: format {virtio_format} is not supported"),
            )
        })?;
        if width == 0 || height == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id}: size {width}x{height} is empty"),
            ));
        }
        let stride = width.checked_mul(BYTES_PER_PIXEL).ok_or_else(|| {
            reject(
                GpuError::OutOfMemory,
                format!("resource_id {resource_id}: width {width} is too large"),
            )
        })?;
        let bytes = u64::from(stride) * u64::from(height);
        let len = usize::try_from(bytes).map_err(|_| {
            reject(
                GpuError::OutOfMemory,
                format!("resource_id {resource_id}: {bytes} bytes do not fit in memory"),
            )
        })?;
        self.charge(bytes, &format!("resource_id {resource_id}"))?;
        let mut pixels = Vec::new();
        if pixels.try_reserve_exact(len).is_err() {
            self.uncharge(bytes);
            return Err(reject(
                GpuError::OutOfMemory,
                format!("resource_id {resource_id}: host allocation of {bytes} bytes failed"),
            ));
        }
        pixels.resize(len, 0);
        self.resources.insert(
            resource_id,
            Resource {
                kind: ResourceKind::Image2d(Image2d {
                    drm_format,
                    width,
                    height,
                    stride,
                    pixels,
                    backing: None,
                }),
                size: bytes,
                blob_flags: 0,
                uuid: None,
                host_bytes: bytes,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    fn resource_unref(&mut self, resource_id: u32) -> CmdResult {
        if !self.resources.contains_key(&resource_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} does not exist"),
            ));
        }
        self.destroy_resource(resource_id);
        Ok(GpuResponse::OkNoData)
    }

    /// Removes a resource: scanouts showing it are disabled first, contexts forget it, a
    /// mapping is removed (synchronously) before the buffer is released.
    fn destroy_resource(&mut self, resource_id: u32) {
        for (id, s) in self.scanouts.iter_mut().enumerate() {
            if s.shown
                .as_ref()
                .is_some_and(|v| v.resource_id == resource_id)
            {
                s.shown = None;
                self.display.scanout(id as u32, None);
            }
        }
        for ctx in self.contexts.values_mut() {
            ctx.resources.remove(&resource_id);
            if ctx.query_ring == Some(resource_id) {
                ctx.query_ring = None;
            }
        }
        let Some(resource) = self.resources.remove(&resource_id) else {
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
        self.uncharge(resource.host_bytes);
    }

    fn resource_mut(&mut self, resource_id: u32) -> Result<&mut Resource, Reject> {
        self.resources.get_mut(&resource_id).ok_or_else(|| {
            reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} does not exist"),
            )
        })
    }

    fn attach_backing(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        entries: Vec<protocol::MemEntry>,
    ) -> CmdResult {
        let resource = self.resource_mut(resource_id)?;
        let kind = resource.kind_name();
        let ResourceKind::Image2d(image) = &resource.kind else {
            return Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id} is a {kind}; only 2D resources take a backing"),
            ));
        };
        if image.backing.is_some() {
            return Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id} already has a backing"),
            ));
        }
        // The entry list is host memory the guest chooses the size of.
        let cost = backing_cost(entries.len());
        self.charge(cost, &format!("resource_id {resource_id}: backing entries"))?;
        let backing = match backing::Backing::new(mem, entries) {
            Ok(b) => b,
            Err(e) => {
                self.uncharge(cost);
                return Err(reject(
                    GpuError::Unspec,
                    format!("resource_id {resource_id}: nr_entries/entries: {e}"),
                ));
            }
        };
        let resource = self.resource_mut(resource_id)?;
        resource.host_bytes += cost;
        if let ResourceKind::Image2d(image) = &mut resource.kind {
            image.backing = Some(backing);
        }
        Ok(GpuResponse::OkNoData)
    }

    fn detach_backing(&mut self, resource_id: u32) -> CmdResult {
        let resource = self.resource_mut(resource_id)?;
        let kind = resource.kind_name();
        let released = match &mut resource.kind {
            ResourceKind::Image2d(image) => match image.backing.take() {
                Some(backing) => backing_cost(backing.entries().len()),
                None => {
                    return Err(reject(
                        GpuError::Unspec,
                        format!("resource_id {resource_id} has no backing"),
                    ))
                }
            },
            _ => {
                return Err(reject(
                    GpuError::Unspec,
                    format!(
                        "resource_id {resource_id} is a {kind}; its backing cannot be detached"
                    ),
                ))
            }
        };
        resource.host_bytes = resource.host_bytes.saturating_sub(released);
        self.uncharge(released);
        Ok(GpuResponse::OkNoData)
    }

    fn transfer_to_host_2d(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        rect: Rect,
        offset: u64,
    ) -> CmdResult {
        let resource = self.resource_mut(resource_id)?;
        let kind = resource.kind_name();
        match &mut resource.kind {
            ResourceKind::Image2d(image) => {
                let Some(backing) = image.backing.take() else {
                    return Err(reject(
                        GpuError::Unspec,
                        format!("resource_id {resource_id} has no backing attached"),
                    ));
                };
                let result = resource::transfer_to_host_2d(image, &backing, mem, &rect, offset);
                image.backing = Some(backing);
                result.map_err(|e| {
                    let error = match e {
                        resource::TransferError::Backing(_) => GpuError::Unspec,
                        _ => GpuError::InvalidParameter,
                    };
                    reject(error, format!("resource_id {resource_id}: r/offset: {e}"))
                })?;
                Ok(GpuResponse::OkNoData)
            }
            // GUEST blobs are read from guest memory when shown: nothing to copy. The Linux
            // driver sends this for dumb buffers, which are GUEST blobs with RESOURCE_BLOB.
            ResourceKind::GuestBlob { .. } => Ok(GpuResponse::OkNoData),
            ResourceKind::HostBlob(_) => Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is a {kind}: it has no guest backing"),
            )),
        }
    }
}
