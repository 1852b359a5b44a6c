//! The device core: typed commands in, state machine, typed responses out.
//!
//! [`GpuDevice`] owns the resources, contexts, scanouts and the host-visible region's
//! bookkeeping. It never touches a socket or a virtqueue: the transport hands it the
//! readable bytes of a descriptor chain and writes back the bytes it returns. Everything
//! with side effects outside the process goes through the [`ports`].
//!
//! Processing is synchronous: a command's effects (including a mapping acknowledged by the
//! frontend) are complete when its response is made. Only the answer of a fenced command may
//! wait ([`Completion::Later`]): until the renderer retired its fence, or until earlier fences
//! of its timeline did (see [`fence`]). The transport polls [`GpuDevice::event_fd`] on the
//! thread that processes commands and calls [`GpuDevice::service`] when it is readable, which
//! hands back the tokens of the answers that may go now.
//!
//! Every rejected guest input is answered with the matching virtio-gpu error and logged
//! as a warning naming the command and the field, through the process's limiter of
//! guest-caused log lines ([`crate::guest_log`]).
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
pub mod fence;
mod mmap;
pub mod ports;
pub mod region;
mod reject;
mod resource;
mod resource_table;
mod scanout;
pub mod snapshot;

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::{debug, error, trace, warn};
use rustix::event::epoll;

use crate::guest_log::guest_warn;
use crate::protocol::{
    command_name, feature, CtrlHeader, DecodeError, GpuCommand, GpuError, GpuResponse,
    CONFIG_EVENTS_CLEAR, CONFIG_EVENTS_READ, CONFIG_NUM_CAPSETS, CONFIG_NUM_SCANOUTS, CONFIG_SIZE,
    EVENT_DISPLAY, FLAG_FENCE, FLAG_INFO_RING_IDX,
};
pub use backing::BackingError;
use budget::{Budget, Kind, Usage};
pub use config::{
    ConfigError, DeviceConfig, DEFAULT_OUTPUT, FD_RESERVE, MAX_MEMORY_REGIONS, MAX_OUTPUT_SIDE,
    MAX_SCANOUT_SIDE,
};
use context::ContextTable;
pub use context::{ATTACHMENTS_PER_RESOURCE, MAX_CONTEXTS};
pub use fence::{Completion, FenceToken, MAX_PENDING_FENCES};
use fence::{Fences, Timeline};
use ports::{
    BufferAllocator, CapsetInfo, ChannelConnector, DisplaySink, GuestMemory, GuestPageExporter,
    MapAdvisor, RegionMapper, RendererEvent, SendRenderer,
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
    /// Renders virgl and venus contexts (`None`: no 3D renderer; only cross-domain
    /// contexts).
    pub renderer: Option<SendRenderer>,
    /// Opens cross-domain channels to the host compositor (`None`: no channel is served and
    /// the capset's `supported_channels` is 0).
    pub channels: Option<Box<dyn ChannelConnector>>,
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports")
            .field("allocator", &self.allocator.name())
            .field("renderer", &self.renderer.as_ref().map(|r| r.name()))
            .finish_non_exhaustive()
    }
}

/// Feature bits every device offers (`VIRTIO_GPU_F_*` as masks).
pub const BASE_FEATURES: u64 =
    (1 << feature::EDID) | (1 << feature::RESOURCE_UUID) | (1 << feature::RESOURCE_BLOB);

/// Feature bits offered exactly when the device serves a context capset (virgl, virgl2,
/// venus or cross-domain). VIRGL because the Linux driver creates contexts (CONTEXT_INIT ones
/// included) and reports 3D only with it; CONTEXT_INIT so that contexts name their capset.
/// Without a virgl capset a guest's virgl driver finds no capset and falls back to software.
pub const CONTEXT_FEATURES: u64 = (1 << feature::VIRGL) | (1 << feature::CONTEXT_INIT);

/// Every feature bit this device can offer (`VIRTIO_GPU_F_*` as masks).
pub const OFFERED_FEATURES: u64 = BASE_FEATURES | CONTEXT_FEATURES;

/// Host bytes charged per guest memory entry of a backing (the entry as sent, its merged
/// piece and offset): a backing's entry list is host memory whose size the guest chooses
/// (up to 16384 entries per resource), so it counts against `max_resource_memory`.
pub const BACKING_ENTRY_COST: u64 = 48;

/// Host bytes charged for a backing of `entries` entries.
pub(crate) fn backing_cost(entries: usize) -> u64 {
    (entries as u64).saturating_mul(BACKING_ENTRY_COST)
}

/// Kernel memory charged per page of a dma-buf the device holds, on top of the pages
/// themselves: udmabuf keeps a folio pointer, an offset and a pinned-folio pointer per page,
/// and an importer's scatter list adds about one entry per page.
pub const DMABUF_PAGE_COST: u64 = 32;
/// Kernel memory charged per dma-buf for the objects behind its fd (the file, the dma-buf,
/// the exporter's private data and scatter table).
pub const DMABUF_OBJECT_COST: u64 = 4096;

/// What a host buffer of `size` bytes costs while the device holds it: its bytes, the kernel's
/// page arrays when it is a dma-buf, and its file descriptor.
pub(crate) fn buffer_usage(size: u64, dmabuf: bool) -> Usage {
    let bytes = if dmabuf {
        size.saturating_add(dmabuf_overhead(size))
    } else {
        size
    };
    Usage::host_bytes(bytes).with(Kind::Fds, 1)
}

/// The kernel's memory behind a dma-buf of `size` bytes, without the pages.
pub(crate) fn dmabuf_overhead(size: u64) -> u64 {
    size.div_ceil(ports::PAGE_SIZE)
        .saturating_mul(DMABUF_PAGE_COST)
        .saturating_add(DMABUF_OBJECT_COST)
}

/// The virtio-gpu device state machine.
pub struct GpuDevice {
    config: DeviceConfig,
    allocator: Box<dyn BufferAllocator>,
    mapper: Box<dyn RegionMapper>,
    display: Box<dyn DisplaySink>,
    advisor: Box<dyn MapAdvisor>,
    exporter: Option<Box<dyn GuestPageExporter>>,
    channels: Option<Box<dyn ChannelConnector>>,
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
    /// The 3D renderer, if any.
    renderer: Option<SendRenderer>,
    /// The capsets offered, in `GET_CAPSET_INFO` index order (fixed for the device's life).
    capsets: Vec<CapsetInfo>,
    /// Fenced answers that wait.
    fences: Fences,
    /// What the transport polls: an epoll set over the device's event sources (the
    /// renderer's poll fd), `None` if it could not be created (then nothing waits).
    events: Option<OwnedFd>,
    /// An eventfd in the event set, written when answers became ready while a command was
    /// processed (a destroyed context, a closed channel, an event written at once behind an
    /// earlier fence): the transport polls only `events`, so it must wake for those too.
    ready_kick: Option<OwnedFd>,
    /// Set by a handler that handed work to the renderer for the command being processed:
    /// a fence on the global timeline then waits for the renderer.
    renderer_work: bool,
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

impl Drop for GpuDevice {
    /// A device that goes (its frontend disconnected) stops showing its scanouts, so that a
    /// sink that outlives it (the capture, shared by every connection) lets go of their
    /// copies, which were charged to this device's budget.
    ///
    /// The renderer outlives the device too (one per process, shared by connection after
    /// connection): what this device made there goes with it.
    fn drop(&mut self) {
        for id in self.scanouts.stop_all() {
            self.display.scanout(id, None);
        }
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.reset();
        }
    }
}

impl GpuDevice {
    /// Drops the device without telling its display sink anything: a device restored by a
    /// new process that then does not take over (live upgrade), whose display sink writes
    /// to the display channel the previous process goes on serving. Its charges are
    /// released as with any drop.
    pub fn discard(mut self) {
        self.scanouts.stop_all();
    }

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
        let events = event_set(ports.renderer.as_deref().map(|r| r.poll_fd()));
        let ready_kick = events.as_ref().and_then(|set| {
            let kick = rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .ok()?;
            epoll::add(
                set,
                &kick,
                epoll::EventData::new_u64(EVENT_READY),
                epoll::EventFlags::IN,
            )
            .ok()?;
            Some(kick)
        });
        let capsets = commands::offered_capsets(
            ports.renderer.as_deref().map(|r| r as &dyn ports::Renderer),
            config.cross_domain,
        );
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
            acked_features: 0,
            shmem_available: true,
            events_read: 0,
            config_changed: false,
            allocator_dmabuf: None,
            export_refusal_logged: false,
            renderer: ports.renderer,
            capsets,
            fences: Fences::default(),
            events,
            ready_kick,
            renderer_work: false,
        }
    }

    /// The configuration in use (after repair).
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The `VIRTIO_GPU_F_*` features offered, as a mask (`1 << bit`). Transport features
    /// (VERSION_1, protocol features...) are the transport's business.
    pub fn features(&self) -> u64 {
        if self.capsets.is_empty() {
            BASE_FEATURES
        } else {
            BASE_FEATURES | CONTEXT_FEATURES
        }
    }

    /// Records what the driver accepted; only acked features are served (others answer
    /// `ERR_UNSPEC`). Bits not offered are ignored.
    pub fn ack_features(&mut self, acked: u64) {
        self.acked_features = acked & self.features();
    }

    /// The capsets offered (`GET_CAPSET_INFO` order): the renderer's, then cross-domain.
    pub fn capsets(&self) -> &[CapsetInfo] {
        &self.capsets
    }

    /// Whether capset `id` is offered.
    fn offers(&self, id: u32) -> bool {
        self.capsets.iter().any(|c| c.id == id)
    }

    /// The renderer's name, if the device has one.
    pub fn renderer_name(&self) -> Option<&'static str> {
        self.renderer.as_ref().map(|r| r.name())
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
        put(CONFIG_NUM_CAPSETS, self.capsets.len() as u32);
        out
    }

    /// A driver write to the config space. Only `events_clear` is writable:
    /// bits written there are cleared from `events_read`. Other writes are ignored.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) {
        let start = offset as usize;
        let Some(end) = start.checked_add(data.len()).filter(|&e| e <= CONFIG_SIZE) else {
            guest_warn!(
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
    /// socket). Each shown scanout is charged again for the new sink's copies; one whose
    /// charge no longer fits the budget is disabled (the guest's next `SET_SCANOUT` gets
    /// `ERR_OUT_OF_MEMORY`). The new sink is told about every enabled scanout.
    pub fn set_display(&mut self, display: Box<dyn DisplaySink>) {
        self.display = display;
        for id in 0..self.scanouts.len() as u32 {
            let Some(rect) = self.scanouts.shown_mut(id).map(|s| s.view.rect) else {
                continue;
            };
            let cost = self.frame_cost(rect.width, rect.height);
            let Some(shown) = self.scanouts.shown_mut(id) else {
                continue;
            };
            match shown.memory.charge.resize(cost) {
                Ok(()) => self.display.scanout(id, Some((rect.width, rect.height))),
                Err(e) => {
                    guest_warn!(
                        "scanout {id} disabled: {}",
                        reject::over_budget("showing it on the new display", e).reason
                    );
                    if let Some(s) = self.scanouts.get_mut(id) {
                        s.shown = None;
                    }
                }
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
        // Waiting answers are dropped unanswered: the guest driver reset too.
        self.fences.clear();
        self.resources.clear();
        self.contexts.clear();
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.reset();
        }
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

    /// Handles one control-queue request (the whole readable part of the chain). The
    /// answer goes now, or (a fenced command whose fence has not signalled yet) when
    /// [`GpuDevice::service`] returns its token.
    pub fn process_control(&mut self, mem: &GuestMemory, request: &[u8]) -> Completion {
        self.renderer_work = false;
        let (hdr, response) = self.process(mem, request, false);
        let completion = self.fenced(mem, &hdr, response);
        if self.fences.has_ready() {
            if let Some(kick) = &self.ready_kick {
                let _ = rustix::io::write(kick, &1u64.to_ne_bytes());
            }
        }
        completion
    }

    /// One fd that is readable when [`GpuDevice::service`] may have answers to hand back
    /// (level-triggered; poll it on the thread that calls [`GpuDevice::process_control`]).
    /// The same fd for the device's life (made at construction); `None` only if it could not
    /// be made, and then no answer ever waits for an event.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().map(|fd| fd.as_fd())
    }

    /// Lets the device's event sources move (the renderer retires fences, cross-domain
    /// channels move bytes and write events into their channel rings in `mem`) and returns
    /// the tokens of the answers that may go now, in the order they became ready. Never
    /// blocks; harmless to call at any time. The transport calls it only while the control
    /// queue runs (events are guest memory writes).
    pub fn service(&mut self, mem: &GuestMemory) -> Vec<FenceToken> {
        if let Some(events) = &self.events {
            // The sources are level-triggered and drained below; only clear the readiness.
            let mut ready: Vec<epoll::Event> = Vec::with_capacity(4);
            let now = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let _ = epoll::wait(
                events,
                rustix::buffer::spare_capacity(&mut ready),
                Some(&now),
            );
        }
        if let Some(kick) = &self.ready_kick {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(kick, &mut count);
        }
        let events = self.renderer.as_mut().map(|r| r.poll()).unwrap_or_default();
        for event in events {
            match event {
                RendererEvent::Fence(f) => {
                    let timeline = match f.ring {
                        Some(ring) => Timeline::Ring {
                            ctx_id: f.ctx_id,
                            ring: u8::try_from(ring).unwrap_or(u8::MAX),
                        },
                        None => Timeline::Global,
                    };
                    trace!(
                        "renderer fence {} of ctx_id {} ({timeline:?}) signalled",
                        f.fence_id,
                        f.ctx_id
                    );
                    if !self.fences.signal(timeline, f.fence_id) {
                        debug!(
                            "renderer fence {} of ctx_id {} ({timeline:?}) has no waiting answer",
                            f.fence_id, f.ctx_id
                        );
                    }
                }
                RendererEvent::RenderServerLost(why) => self.render_server_lost(&why),
                RendererEvent::RendererLost(why) => self.renderer_lost(&why),
            }
        }
        self.service_channels(mem);
        self.fences.take_ready()
    }

    /// Fenced answers waiting (including those [`GpuDevice::service`] is about to return).
    pub fn pending_fences(&self) -> usize {
        self.fences.waiting()
    }

    /// Whether the transport may take another control command: `false` while
    /// `max_pending_fences` answers wait (back-pressure: the transport leaves the rest of
    /// the queue until [`GpuDevice::service`] frees some).
    pub fn can_take_more(&self) -> bool {
        self.fence_room() > 0
    }

    /// How many more control commands the transport may take now (each may leave one
    /// answer waiting).
    pub fn fence_room(&self) -> usize {
        self.config
            .max_pending_fences
            .saturating_sub(self.fences.waiting())
    }

    /// What to do with the answer of a processed control command: now, unless it is
    /// fenced and its fence waits (for the renderer, or behind earlier fences of its
    /// timeline).
    fn fenced(&mut self, mem: &GuestMemory, hdr: &CtrlHeader, response: Vec<u8>) -> Completion {
        if hdr.flags & FLAG_FENCE == 0 {
            return Completion::Now(response);
        }
        let timeline = if hdr.flags & FLAG_INFO_RING_IDX != 0 {
            Timeline::Ring {
                ctx_id: hdr.ctx_id,
                ring: hdr.ring_idx,
            }
        } else {
            Timeline::Global
        };
        let waits = self.renderer_fence(hdr, timeline) || self.channel_fence(mem, hdr, timeline);
        if !waits && !self.fences.busy(timeline) {
            return Completion::Now(response);
        }
        trace!(
            "fence {} of ctx_id {} ({timeline:?}): the answer waits{}",
            hdr.fence_id,
            hdr.ctx_id,
            if waits {
                " for the renderer"
            } else {
                " behind earlier fences"
            }
        );
        match self
            .resources
            .budget()
            .charge(budget::Usage::of(Kind::PendingFences, 1))
        {
            Ok(charge) => Completion::Later {
                token: self.fences.push(timeline, hdr.fence_id, !waits, charge),
                response,
            },
            Err(e) => {
                // The transport stops taking commands before this (can_take_more).
                error!(
                    "fence {} answered out of order: {} answers already wait ({e:?}); the \
                     transport did not apply back-pressure",
                    hdr.fence_id,
                    self.fences.waiting()
                );
                Completion::Now(response)
            }
        }
    }

    /// Creates the renderer's fence for a fenced command, if it has one: on a renderer
    /// context's ring, or on the global timeline after work handed to the renderer.
    /// Returns whether the answer waits for it.
    fn renderer_fence(&mut self, hdr: &CtrlHeader, timeline: Timeline) -> bool {
        let ring = match timeline {
            Timeline::Ring { ctx_id, ring } => {
                // A lost context's fences would never signal: its answers go at once.
                if !self.contexts.has_live_renderer(ctx_id) {
                    return false;
                }
                Some(u32::from(ring))
            }
            Timeline::Global if self.renderer_work => None,
            Timeline::Global => return false,
        };
        let Some(renderer) = self.renderer.as_mut() else {
            return false;
        };
        match renderer.create_fence(hdr.ctx_id, ring, hdr.fence_id) {
            Ok(()) => true,
            Err(e) => {
                self.log_reject(format_args!(
                    "fence {} of ctx_id {} ({timeline:?}): the renderer cannot create it: {e}; \
                     answered in order without waiting for the renderer",
                    hdr.fence_id, hdr.ctx_id
                ));
                false
            }
        }
    }

    /// The render server is gone: its (venus) contexts are lost. Their waiting answers are
    /// released (their fences will never signal) and later commands on them fail.
    fn render_server_lost(&mut self, why: &str) {
        let lost = self.contexts.renderer_server_lost();
        error!(
            "renderer: {why}; venus contexts {lost:?} are lost (their commands now fail), \
             virgl, 2D and cross-domain keep working"
        );
        for ctx_id in lost {
            self.fences.release_context(ctx_id);
        }
    }

    /// The renderer stopped: every renderer context is lost, the answers that waited for it
    /// are released (its fences will never signal), later commands on those contexts fail and
    /// its poll fd leaves the event set (it would stay readable).
    fn renderer_lost(&mut self, why: &str) {
        let lost = self.contexts.renderer_lost();
        error!(
            "renderer: {why}; renderer contexts {lost:?} are lost (their commands now fail, \
             new ones are refused), 2D and cross-domain keep working"
        );
        for ctx_id in lost {
            self.fences.release_context(ctx_id);
        }
        self.fences.release_global();
        self.renderer_work = false;
        if let (Some(events), Some(renderer)) = (&self.events, self.renderer.as_deref()) {
            let _ = epoll::delete(events, renderer.poll_fd());
        }
    }

    /// Handles one cursor-queue request. The response bytes are returned for symmetry;
    /// cursor chains usually have no writable part, and then the transport drops them.
    pub fn process_cursor(&mut self, mem: &GuestMemory, request: &[u8]) -> Vec<u8> {
        self.process(mem, request, true).1
    }

    /// Decodes and runs one request; returns its header (as far as it decodes) and the
    /// response bytes.
    fn process(
        &mut self,
        mem: &GuestMemory,
        request: &[u8],
        cursor_queue: bool,
    ) -> (CtrlHeader, Vec<u8>) {
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
        (hdr, out)
    }

    /// Logs a rejected request as a warning, through the process's limiter of guest-caused
    /// lines ([`crate::guest_log`]): a guest that keeps sending bad requests cannot flood
    /// the host log.
    fn log_reject(&mut self, message: fmt::Arguments<'_>) {
        guest_warn!("{message}");
    }

    /// Removes a resource: scanouts showing it are disabled first, contexts forget it, a
    /// mapping is removed (synchronously) before the buffer is released.
    pub(crate) fn destroy_resource(&mut self, resource_id: u32) {
        for id in self.scanouts.stop_showing(resource_id) {
            self.display.scanout(id, None);
        }
        for ctx_id in self.contexts.forget_resource(resource_id) {
            // Its channel closed with its ring: the fences waiting for events go.
            self.fences.release_context(ctx_id);
        }
        let Some(resource) = self.resources.remove(resource_id) else {
            return;
        };
        let mapped = match &resource.kind {
            ResourceKind::HostBlob(blob) => blob.mapped_at.map(|at| (at, blob.buffer.size)),
            ResourceKind::Renderer(r) => r.mapping.as_ref().map(|m| (m.offset, m.len)),
            _ => None,
        };
        if let Some((offset, len)) = mapped {
            match self.mapper.unmap(offset, len) {
                Ok(()) => {
                    let _ = self.region.free(offset);
                }
                Err(e) => {
                    // The range may still be mapped in the guest: keep it reserved until
                    // reset so that nothing else is mapped over it.
                    guest_warn!(
                        "RESOURCE_UNREF: resource_id {resource_id}: unmapping region range \
                         {offset:#x}+{len:#x} failed: {e}; the range stays reserved"
                    );
                }
            }
        }
        // The renderer forgets it too (it ignores ids it never had: 2D resources, blobs of
        // other contexts).
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.resource_unref(resource_id);
            self.renderer_work = true;
        }
        // Dropping `resource` releases what it was charged.
    }
}

impl GpuDevice {
    /// Adds a channel's wait fd to the device's event set (it leaves the set when the
    /// channel, its only owner, closes it).
    pub(crate) fn watch_channel(&self, fd: BorrowedFd<'_>) {
        let Some(set) = &self.events else {
            return;
        };
        if let Err(e) = epoll::add(
            set,
            fd,
            epoll::EventData::new_u64(EVENT_CHANNEL),
            epoll::EventFlags::IN,
        ) {
            error!("cannot watch a Wayland channel ({e}): its events wait for the next command");
        }
    }
}

/// epoll data of the renderer's poll fd in the device's event set.
const EVENT_RENDERER: u64 = 1;
/// epoll data of the ready-answers eventfd in the device's event set.
const EVENT_READY: u64 = 3;
/// epoll data of a cross-domain channel's wait fd in the device's event set.
const EVENT_CHANNEL: u64 = 2;

/// The device's event set: an epoll fd over its event sources (the renderer's poll fd),
/// made at construction. `None` only when it cannot be made (logged; then the renderer's
/// fences cannot be waited for and fenced answers go in order without waiting).
fn event_set(renderer: Option<BorrowedFd<'_>>) -> Option<OwnedFd> {
    let made = epoll::create(epoll::CreateFlags::CLOEXEC).and_then(|set| {
        if let Some(fd) = renderer {
            epoll::add(
                &set,
                fd,
                epoll::EventData::new_u64(EVENT_RENDERER),
                epoll::EventFlags::IN,
            )?;
        }
        Ok(set)
    });
    match made {
        Ok(set) => Some(set),
        Err(e) => {
            error!(
                "cannot create the device's event set ({e}): renderer fences cannot be waited for"
            );
            None
        }
    }
}
