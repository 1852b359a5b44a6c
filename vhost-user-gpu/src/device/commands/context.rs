//! Contexts and capsets: GET_CAPSET_INFO, GET_CAPSET, CTX_CREATE, CTX_DESTROY,
//! CTX_ATTACH_RESOURCE, CTX_DETACH_RESOURCE and SUBMIT_3D with the cross-domain protocol
//! (INIT in every layout, GET_IMAGE_REQUIREMENTS; the channel commands are in
//! `channel.rs`).

use log::{debug, info};

use crate::device::budget::{Kind, Usage};
use crate::device::context::{Context, Pending, Requirement, MAX_REQUIREMENTS_TOTAL};
use crate::device::ports::{
    AllocError, BufferRequest, GuestMemory, MapAdvice, MAX_IMAGE_DIMENSION,
};
use crate::device::reject::{over_budget, reject, CmdResult, Reject};
use crate::device::resource::{ImageInfo, ResourceKind};
use crate::device::{buffer_usage, GpuDevice};
use crate::guest_log::guest_info;
use crate::protocol::cross_domain::{
    self, Capabilities, CrossDomainCommand, Init, IMAGE_REQUIREMENTS_SIZE,
};
use crate::protocol::{
    feature, fourcc, CtrlHeader, GpuError, GpuResponse, CAPSET_CROSS_DOMAIN, CAPSET_VIRGL,
    CAPSET_VIRGL2, CONTEXT_INIT_CAPSET_ID_MASK, MAP_CACHE_NONE,
};

/// What a guest is told when it uses virgl (3D resources, SUBMIT_3D in a default context)
/// on a device without a virgl renderer: what to configure instead.
pub(crate) const VIRGL_MISSING: &str = "This device has no virgl renderer: guest OpenGL \
     (Mesa's virgl driver) cannot render here. Start the backend with --capset virgl (or \
     auto, with virglrenderer on the host), or use cross-domain (capset 5: \
     minigbm and Sommelier allocate and share buffers through it).";

/// Highest cross-domain capset version offered (as rutabaga: 0).
pub(crate) const CROSS_DOMAIN_MAX_VERSION: u32 = 0;

impl GpuDevice {
    fn require_virgl(&self) -> Result<(), Reject> {
        self.require_feature(feature::VIRGL, "VIRGL (needed for contexts)")
    }

    pub(super) fn get_capset_info(&self, capset_index: u32) -> CmdResult {
        self.require_virgl()?;
        let info = self.capsets.get(capset_index as usize).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!(
                    "capset_index {capset_index}: {} capsets are offered",
                    self.capsets.len()
                ),
            )
        })?;
        Ok(GpuResponse::OkCapsetInfo {
            capset_id: info.id,
            max_version: info.max_version,
            max_size: info.max_size,
        })
    }

    pub(super) fn get_capset(&mut self, capset_id: u32, capset_version: u32) -> CmdResult {
        self.require_virgl()?;
        let Some(info) = self.capsets.iter().find(|c| c.id == capset_id).copied() else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "capset_id {capset_id} is not offered (offered: {:?})",
                    self.capsets.iter().map(|c| c.id).collect::<Vec<_>>()
                ),
            ));
        };
        if capset_version > info.max_version {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "capset_version {capset_version} > max version {}",
                    info.max_version
                ),
            ));
        }
        if capset_id != CAPSET_CROSS_DOMAIN {
            return self.renderer_capset(capset_id, capset_version);
        }
        let caps = self.cross_domain_capabilities();
        Ok(GpuResponse::OkCapset(caps.encode()))
    }

    /// What capset 5 tells the guest (`CROSS-DOMAIN.md`, "Capabilities", has the evidence):
    /// - `supported_channels`: WAYLAND (bit 1) only with a compositor socket configured;
    /// - `supports_dmabuf`: the allocator's buffers are dma-bufs (Sommelier then offers
    ///   `zwp_linux_dmabuf_v1`; a memfd allocator's are not);
    /// - `supports_external_gpu_memory`: set while no virgl renderer serves
    ///   `RESOURCE_CREATE_3D`. Linux reports 3D (`VIRTGPU_PARAM_3D_FEATURES`) whenever
    ///   VIRGL is offered, which CONTEXT_INIT needs, and minigbm then takes its virgl path
    ///   (3D resources) unless this is set; with it, minigbm allocates every hardware buffer
    ///   through cross-domain, which is what this device serves. Image requirements still
    ///   carry `memory_idx = -1` (no Vulkan memory type is claimed).
    pub(crate) fn cross_domain_capabilities(&mut self) -> Capabilities {
        Capabilities {
            version: cross_domain::CAPABILITIES_VERSION,
            supported_channels: self.supported_channels(),
            supports_dmabuf: self.allocator_gives_dmabufs(),
            supports_external_gpu_memory: !self.serves_virgl(),
        }
    }

    /// Whether a virgl renderer serves 3D resources and virgl contexts (a virgl capset is
    /// offered). Without one every virgl command is refused (see [`VIRGL_MISSING`]).
    pub(crate) fn serves_virgl(&self) -> bool {
        self.capsets
            .iter()
            .any(|c| c.id == CAPSET_VIRGL || c.id == CAPSET_VIRGL2)
    }

    /// Whether the allocator's buffers are dma-bufs: probed once with a small image.
    fn allocator_gives_dmabufs(&mut self) -> bool {
        if let Some(known) = self.allocator_dmabuf {
            return known;
        }
        let probe = self.allocator.allocate(&BufferRequest::Image {
            width: 64,
            height: 64,
            drm_format: fourcc::ARGB8888,
            usage: 0,
        });
        let known = match probe {
            Ok(buffer) => buffer.is_dmabuf,
            Err(e) => {
                info!("{} allocator probe failed: {e}", self.allocator.name());
                false
            }
        };
        self.allocator_dmabuf = Some(known);
        known
    }

    pub(super) fn ctx_create(
        &mut self,
        ctx_id: u32,
        context_init: u32,
        debug_name: String,
    ) -> CmdResult {
        self.require_virgl()?;
        if ctx_id == 0 {
            return Err(reject(GpuError::InvalidContextId, "ctx_id 0 is invalid"));
        }
        if self.contexts.contains(ctx_id) {
            return Err(reject(
                GpuError::InvalidContextId,
                format!("ctx_id {ctx_id} already exists"),
            ));
        }
        let capset = context_init & CONTEXT_INIT_CAPSET_ID_MASK;
        if let Some(renderer_capset) = self.renderer_capset_for(context_init) {
            if context_init != 0 {
                self.require_feature(feature::CONTEXT_INIT, "CONTEXT_INIT")?;
            }
            return self.ctx_create_in_renderer(ctx_id, renderer_capset, debug_name);
        }
        // context_init 0 is the default context the Linux driver creates whenever 3D is
        // offered (before any CONTEXT_INIT ioctl): with a renderer that serves virgl it is a
        // virgl context (above); without one it is accepted, so that the guest's
        // CTX_ATTACH_RESOURCE traffic works and its console stays quiet, but without a
        // renderer (SUBMIT_3D answers ERR_UNSPEC there, as a device without virgl does).
        let cross_domain = context_init != 0;
        if cross_domain && capset == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("ctx_id {ctx_id}: context_init {context_init:#x} has flags but no capset"),
            ));
        }
        if cross_domain {
            self.require_feature(feature::CONTEXT_INIT, "CONTEXT_INIT")?;
        }
        if cross_domain && (context_init != CAPSET_CROSS_DOMAIN || !self.offers(capset)) {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "ctx_id {ctx_id}: context_init {context_init:#x}: capset {capset} / flags \
                     not supported (offered capsets: {:?}, no flags)",
                    self.capsets.iter().map(|c| c.id).collect::<Vec<_>>()
                ),
            ));
        }
        let charge = self
            .resources
            .budget()
            .charge(Usage::of(Kind::Contexts, 1))
            .map_err(|e| over_budget(&format!("ctx_id {ctx_id}"), e))?;
        debug!(
            "ctx_id {ctx_id}: {} context '{debug_name}' created",
            if cross_domain {
                "cross-domain"
            } else {
                "default (no renderer)"
            }
        );
        self.contexts
            .insert(ctx_id, Context::new(debug_name, cross_domain, charge));
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn ctx_destroy(&mut self, ctx_id: u32) -> CmdResult {
        self.require_virgl()?;
        // Dropping the context releases its charge and its pending buffers.
        let ctx = self.contexts.remove(ctx_id)?;
        if ctx.renderer.is_some() {
            self.renderer_context_destroyed(ctx_id);
        }
        if ctx.channel.is_some() {
            // Its channel ring's fences will see no event now.
            self.fences.release_context(ctx_id);
        }
        debug!("ctx_id {ctx_id} ('{}') destroyed", ctx.debug_name);
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn ctx_attach(&mut self, ctx_id: u32, resource_id: u32) -> CmdResult {
        self.require_virgl()?;
        if !self.resources.contains(resource_id) {
            self.contexts.get_mut(ctx_id)?;
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("ctx_id {ctx_id}: resource_id {resource_id} does not exist"),
            ));
        }
        let ctx = self.contexts.get_mut(ctx_id)?;
        let in_renderer = ctx.renderer.is_some();
        ctx.attach(resource_id).map_err(|e| {
            over_budget(
                &format!("ctx_id {ctx_id}: CTX_ATTACH_RESOURCE {resource_id}"),
                e,
            )
        })?;
        if in_renderer {
            self.renderer_attach(ctx_id, resource_id);
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn ctx_detach(&mut self, ctx_id: u32, resource_id: u32) -> CmdResult {
        self.require_virgl()?;
        let ctx = self.contexts.get_mut(ctx_id)?;
        if !ctx.detach(resource_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("ctx_id {ctx_id}: resource_id {resource_id} is not attached"),
            ));
        }
        let orphans = ctx.forget_ring(resource_id);
        let has_renderer = ctx.renderer.is_some();
        if !orphans.is_empty() {
            // The channel closed with its ring: the fences waiting for events go.
            self.fences.release_context(ctx_id);
        }
        if has_renderer {
            self.renderer_detach(ctx_id, resource_id);
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn submit_3d(
        &mut self,
        mem: &GuestMemory,
        hdr: &CtrlHeader,
        commands: &[u8],
    ) -> CmdResult {
        self.require_virgl()?;
        let ctx_id = hdr.ctx_id;
        let ctx = self.contexts.get_mut(ctx_id)?;
        if ctx.renderer.is_some() {
            return self.submit_to_renderer(ctx_id, commands);
        }
        if !ctx.cross_domain {
            return Err(reject(
                GpuError::Unspec,
                format!(
                    "ctx_id {ctx_id} is a default context (context_init 0, i.e. virgl): \
                     SUBMIT_3D there needs a virgl renderer. {VIRGL_MISSING}"
                ),
            ));
        }
        for (index, command) in cross_domain::commands(commands).enumerate() {
            let command = command.map_err(|e| {
                reject(
                    GpuError::InvalidParameter,
                    format!("ctx_id {ctx_id}: cross-domain command {index}: {e}"),
                )
            })?;
            match command {
                CrossDomainCommand::Init(init) => self.cross_domain_init(ctx_id, &init)?,
                CrossDomainCommand::GetImageRequirements {
                    width,
                    height,
                    drm_format,
                    flags,
                } => self.cross_domain_image_requirements(
                    mem, ctx_id, width, height, drm_format, flags,
                )?,
                CrossDomainCommand::Poll(_) => self.channel_poll(ctx_id)?,
                CrossDomainCommand::Send(send) => self.channel_send(ctx_id, &send)?,
                CrossDomainCommand::Write(write) => self.channel_write(ctx_id, &write)?,
            }
        }
        Ok(GpuResponse::OkNoData)
    }

    /// INIT, any layout: the query ring, and the channel when a channel type is given.
    fn cross_domain_init(&mut self, ctx_id: u32, init: &Init) -> Result<(), Reject> {
        let query_ring_id = init.query_ring_id;
        let ring_ok = match self.resources.get(query_ring_id).map(|r| &r.kind) {
            Ok(ResourceKind::GuestBlob { backing, .. }) => {
                backing.len() >= IMAGE_REQUIREMENTS_SIZE as u64
            }
            _ => false,
        };
        let ctx = self.contexts.get_mut(ctx_id)?;
        if !ctx.is_attached(query_ring_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!(
                    "ctx_id {ctx_id}: INIT query_ring_id {query_ring_id} is not attached to the \
                     context"
                ),
            ));
        }
        if !ring_ok {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "ctx_id {ctx_id}: INIT query_ring_id {query_ring_id} must be a GUEST blob of \
                     at least {IMAGE_REQUIREMENTS_SIZE} bytes"
                ),
            ));
        }
        if init.channel_type != 0 {
            self.open_channel(ctx_id, init)?;
        }
        let ctx = self.contexts.get_mut(ctx_id)?;
        ctx.query_ring = Some(query_ring_id);
        ctx.init_layout = Some(init.layout);
        Ok(())
    }

    fn cross_domain_image_requirements(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        width: u32,
        height: u32,
        drm_format: u32,
        flags: u32,
    ) -> Result<(), Reject> {
        if self.contexts.requirement_count() >= MAX_REQUIREMENTS_TOTAL
            && !self.contexts.get_mut(ctx_id)?.forget_oldest_requirement()
        {
            return Err(reject(
                GpuError::OutOfMemory,
                format!(
                    "ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS: all contexts together keep \
                     {MAX_REQUIREMENTS_TOTAL} image requirements already"
                ),
            ));
        }
        let ctx = self.contexts.get_mut(ctx_id)?;
        let Some(ring_id) = ctx.query_ring else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS before INIT (no query ring)"),
            ));
        };
        let Some(blob_id) = ctx.next_blob_id() else {
            return Err(reject(
                GpuError::OutOfMemory,
                format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS: blob ids are exhausted"),
            ));
        };
        if width == 0 || height == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS width/height {width}x{height}"),
            ));
        }
        let max = MAX_IMAGE_DIMENSION;
        if width > max || height > max {
            // A bad parameter, not a lack of memory (checked before the budget estimate).
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS {width}x{height}: each side must \
                     be at most {max}"
                ),
            ));
        }
        let request = BufferRequest::Image {
            width,
            height,
            drm_format,
            usage: flags,
        };
        // Refuse before allocating when even a tightly packed 4-byte-per-pixel image (as a
        // dma-buf, with its fd) would not fit the budgets (some allocators commit memory at
        // once).
        let estimate = u64::from(width) * u64::from(height) * 4;
        self.resources.check(
            buffer_usage(estimate, true),
            &format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS"),
        )?;
        let buffer = self.allocator.allocate(&request).map_err(|e| {
            let error = match e {
                AllocError::Unsupported(_) => GpuError::InvalidParameter,
                AllocError::Os(_) => GpuError::OutOfMemory,
            };
            reject(
                error,
                format!(
                    "ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS {width}x{height} format \
                     {drm_format:#010x}: {} allocator: {e}",
                    self.allocator.name()
                ),
            )
        })?;
        let charge = self.resources.charge(
            buffer_usage(buffer.size, buffer.is_dmabuf),
            &format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS"),
        )?;
        let map_info = match self.advisor.advise(
            std::os::fd::AsFd::as_fd(&buffer.fd),
            self.allocator.drm_fd(),
        ) {
            MapAdvice::Allow { map_info, .. } => map_info,
            MapAdvice::Refuse { reason } => {
                guest_info!(
                    "ctx_id {ctx_id}: image {width}x{height} {drm_format:#010x} will not be \
                     mappable: {reason}"
                );
                MAP_CACHE_NONE
            }
        };
        let mut reqs = cross_domain::ImageRequirements {
            modifier: buffer.modifier,
            size: buffer.size,
            blob_id,
            map_info,
            memory_idx: -1,
            physical_device_idx: -1,
            ..Default::default()
        };
        for (i, plane) in buffer.planes.iter().take(4).enumerate() {
            reqs.strides[i] = plane.stride;
            reqs.offsets[i] = plane.offset;
        }
        // Reply into the query ring (the guest waits on the fence, then reads it).
        let written = match self.resources.get(ring_id).map(|r| &r.kind) {
            Ok(ResourceKind::GuestBlob { backing, .. }) => backing
                .write(mem, 0, &reqs.encode())
                .map_err(|e| e.to_string()),
            _ => Err("the query ring resource is gone".to_string()),
        };
        if let Err(e) = written {
            return Err(reject(
                GpuError::Unspec,
                format!("ctx_id {ctx_id}: writing the reply to query ring {ring_id}: {e}"),
            ));
        }
        let size = buffer.size;
        self.contexts.get_mut(ctx_id)?.add_requirement(
            blob_id,
            Requirement {
                request,
                image: ImageInfo {
                    width,
                    height,
                    drm_format,
                },
                reqs,
                pending: Some(Pending { buffer, charge }),
            },
        );
        debug!(
            "ctx_id {ctx_id}: blob_id {blob_id}: {width}x{height} {drm_format:#010x}, {size} bytes"
        );
        Ok(())
    }
}
