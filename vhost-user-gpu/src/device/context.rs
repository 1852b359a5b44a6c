//! Rendering contexts. The only context type is cross-domain (capset 5): its state is the
//! query ring (where replies go) and the image requirements handed out, keyed by blob id.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use log::{debug, info};

use super::blob::trim_pending;
use super::resource::{ImageInfo, ResourceKind};
use super::{reject, CmdResult, GpuDevice, Reject};
use crate::device::ports::{BufferRequest, GuestMemory, HostBuffer, MapAdvice};
use crate::protocol::cross_domain::{
    self, Capabilities, CrossDomainCommand, ImageRequirements, IMAGE_REQUIREMENTS_SIZE,
};
use crate::protocol::{
    feature, GpuError, GpuResponse, CAPSET_CROSS_DOMAIN, CONTEXT_INIT_CAPSET_ID_MASK,
    MAP_CACHE_NONE,
};

/// Most image requirements one context keeps (each GET_IMAGE_REQUIREMENTS adds one; guests
/// reuse a blob id for many CREATE_BLOBs). When full, the oldest is forgotten.
pub(crate) const MAX_REQUIREMENTS_PER_CONTEXT: usize = 4096;
/// Most allocated-but-not-yet-claimed buffers one context keeps; older ones are released
/// (a later CREATE_BLOB with their blob id allocates again).
pub(crate) const MAX_PENDING_BUFFERS_PER_CONTEXT: usize = 8;
/// Most image requirements all contexts together keep (about 200 host bytes each): 4096 per
/// context times 1024 contexts would otherwise be up to a gigabyte of host memory outside
/// `max_resource_memory`. When reached, the requesting context forgets its oldest one; a
/// context that has none gets ERR_OUT_OF_MEMORY.
pub(crate) const MAX_REQUIREMENTS_TOTAL: usize = 16384;
/// Most contexts at once.
pub(crate) const MAX_CONTEXTS: usize = 1024;

/// The answer to one GET_IMAGE_REQUIREMENTS.
#[derive(Debug)]
pub(crate) struct Requirement {
    /// What was asked of the allocator (to allocate again for a second CREATE_BLOB).
    pub request: BufferRequest,
    pub image: ImageInfo,
    /// What the guest was told.
    pub reqs: ImageRequirements,
    /// The buffer allocated while answering, until a CREATE_BLOB claims it.
    pub pending: Option<HostBuffer>,
}

/// A context: cross-domain, or the default context a guest creates without a capset.
#[derive(Debug)]
pub(crate) struct Context {
    pub debug_name: String,
    /// `false` for a default context (`context_init` 0): Linux creates one for every DRM
    /// file that makes resources when 3D is offered. It holds attached resources and GUEST
    /// blobs but has no renderer: every SUBMIT_3D in it is refused.
    pub cross_domain: bool,
    /// Resources attached with CTX_ATTACH_RESOURCE (or created in this context).
    pub resources: BTreeSet<u32>,
    /// The query ring resource, after CROSS_DOMAIN_CMD_INIT.
    pub query_ring: Option<u32>,
    /// Requirements by blob id.
    pub requirements: BTreeMap<u32, Requirement>,
    /// Blob ids whose requirement still holds a pending buffer, oldest first.
    pub pending_order: VecDeque<u32>,
    /// Last blob id handed out (even numbers from 2, as rutabaga does).
    pub last_blob_id: u32,
}

impl Context {
    pub fn new(debug_name: String, cross_domain: bool) -> Self {
        Context {
            debug_name,
            cross_domain,
            resources: BTreeSet::new(),
            query_ring: None,
            requirements: BTreeMap::new(),
            pending_order: VecDeque::new(),
            last_blob_id: 0,
        }
    }

    /// Bytes held by pending buffers.
    pub fn pending_bytes(&self) -> u64 {
        self.requirements
            .values()
            .filter_map(|r| r.pending.as_ref().map(|b| b.size))
            .sum()
    }

    /// The next blob id, `None` when the id space is exhausted.
    pub fn next_blob_id(&mut self) -> Option<u32> {
        let id = self.last_blob_id.checked_add(2)?;
        self.last_blob_id = id;
        Some(id)
    }

    /// Forgets the oldest requirements until one more fits; returns the bytes of pending
    /// buffers released.
    pub fn make_room(&mut self) -> u64 {
        let mut released = 0;
        while self.requirements.len() >= MAX_REQUIREMENTS_PER_CONTEXT {
            let Some((blob_id, old)) = self.requirements.pop_first() else {
                break;
            };
            if let Some(buffer) = old.pending {
                released += buffer.size;
                self.pending_order.retain(|&id| id != blob_id);
            }
        }
        released
    }
}

/// Highest cross-domain capset version offered (as rutabaga: 0).
pub(crate) const CROSS_DOMAIN_MAX_VERSION: u32 = 0;

impl GpuDevice {
    fn require_virgl(&self) -> Result<(), Reject> {
        self.require_feature(feature::VIRGL, "VIRGL (needed for contexts)")
    }

    fn context_mut(&mut self, ctx_id: u32) -> Result<&mut Context, Reject> {
        self.contexts.get_mut(&ctx_id).ok_or_else(|| {
            reject(
                GpuError::InvalidContextId,
                format!("ctx_id {ctx_id} does not exist"),
            )
        })
    }

    pub(super) fn get_capset_info(&self, capset_index: u32) -> CmdResult {
        self.require_virgl()?;
        if capset_index != 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("capset_index {capset_index}: only 1 capset (cross-domain) exists"),
            ));
        }
        Ok(GpuResponse::OkCapsetInfo {
            capset_id: CAPSET_CROSS_DOMAIN,
            max_version: CROSS_DOMAIN_MAX_VERSION,
            max_size: cross_domain::CAPABILITIES_SIZE as u32,
        })
    }

    pub(super) fn get_capset(&mut self, capset_id: u32, capset_version: u32) -> CmdResult {
        self.require_virgl()?;
        if capset_id != CAPSET_CROSS_DOMAIN {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("capset_id {capset_id} is not offered (only cross-domain, 5)"),
            ));
        }
        if capset_version > CROSS_DOMAIN_MAX_VERSION {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("capset_version {capset_version} > max version {CROSS_DOMAIN_MAX_VERSION}"),
            ));
        }
        let caps = Capabilities {
            version: cross_domain::CAPABILITIES_VERSION,
            supported_channels: 0,
            supports_dmabuf: self.allocator_gives_dmabufs(),
            supports_external_gpu_memory: false,
        };
        Ok(GpuResponse::OkCapset(caps.encode()))
    }

    /// Whether the allocator's buffers are dma-bufs: probed once with a small image.
    fn allocator_gives_dmabufs(&mut self) -> bool {
        if let Some(known) = self.allocator_dmabuf {
            return known;
        }
        let probe = self.allocator.allocate(&BufferRequest::Image {
            width: 64,
            height: 64,
            drm_format: crate::protocol::fourcc::ARGB8888,
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
        if self.contexts.contains_key(&ctx_id) {
            return Err(reject(
                GpuError::InvalidContextId,
                format!("ctx_id {ctx_id} already exists"),
            ));
        }
        let capset = context_init & CONTEXT_INIT_CAPSET_ID_MASK;
        // context_init 0 is the default context the Linux driver creates whenever 3D is
        // offered (before any CONTEXT_INIT ioctl): accepted, so that the guest's
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
        if cross_domain && context_init != CAPSET_CROSS_DOMAIN {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "ctx_id {ctx_id}: context_init {context_init:#x}: capset {capset} / flags \
                     not supported (only capset 5, no flags)"
                ),
            ));
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            return Err(reject(
                GpuError::OutOfMemory,
                format!("ctx_id {ctx_id}: the limit of {MAX_CONTEXTS} contexts is reached"),
            ));
        }
        debug!(
            "ctx_id {ctx_id}: {} context '{debug_name}' created",
            if cross_domain {
                "cross-domain"
            } else {
                "default (no renderer)"
            }
        );
        self.contexts
            .insert(ctx_id, Context::new(debug_name, cross_domain));
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn ctx_destroy(&mut self, ctx_id: u32) -> CmdResult {
        self.require_virgl()?;
        let ctx = self.contexts.remove(&ctx_id).ok_or_else(|| {
            reject(
                GpuError::InvalidContextId,
                format!("ctx_id {ctx_id} does not exist"),
            )
        })?;
        self.uncharge(ctx.pending_bytes());
        debug!("ctx_id {ctx_id} ('{}') destroyed", ctx.debug_name);
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn ctx_attach(&mut self, ctx_id: u32, resource_id: u32) -> CmdResult {
        self.require_virgl()?;
        if !self.resources.contains_key(&resource_id) {
            self.context_mut(ctx_id)?;
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("ctx_id {ctx_id}: resource_id {resource_id} does not exist"),
            ));
        }
        self.context_mut(ctx_id)?.resources.insert(resource_id);
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn ctx_detach(&mut self, ctx_id: u32, resource_id: u32) -> CmdResult {
        self.require_virgl()?;
        let ctx = self.context_mut(ctx_id)?;
        if !ctx.resources.remove(&resource_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("ctx_id {ctx_id}: resource_id {resource_id} is not attached"),
            ));
        }
        if ctx.query_ring == Some(resource_id) {
            ctx.query_ring = None;
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn submit_3d(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        commands: &[u8],
    ) -> CmdResult {
        self.require_virgl()?;
        if !self.context_mut(ctx_id)?.cross_domain {
            return Err(reject(
                GpuError::Unspec,
                format!(
                    "ctx_id {ctx_id} is a default context (context_init 0, i.e. virgl): this \
                     device has no virgl renderer; only cross-domain contexts (capset 5) take \
                     SUBMIT_3D"
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
                CrossDomainCommand::Init {
                    query_ring_id,
                    channel_ring_id,
                    channel_type,
                } => {
                    self.cross_domain_init(ctx_id, query_ring_id, channel_ring_id, channel_type)?
                }
                CrossDomainCommand::GetImageRequirements {
                    width,
                    height,
                    drm_format,
                    flags,
                } => self.cross_domain_image_requirements(
                    mem, ctx_id, width, height, drm_format, flags,
                )?,
                CrossDomainCommand::Unsupported { cmd } => {
                    return Err(reject(
                        GpuError::Unspec,
                        format!(
                            "ctx_id {ctx_id}: cross-domain command {cmd} (channel poll/send/\
                             receive/read/write: Wayland forwarding) is not implemented"
                        ),
                    ))
                }
            }
        }
        Ok(GpuResponse::OkNoData)
    }

    fn cross_domain_init(
        &mut self,
        ctx_id: u32,
        query_ring_id: u32,
        channel_ring_id: u32,
        channel_type: u32,
    ) -> Result<(), Reject> {
        if channel_type != 0 {
            return Err(reject(
                GpuError::Unspec,
                format!(
                    "ctx_id {ctx_id}: INIT channel_type {channel_type} (channel_ring_id \
                     {channel_ring_id}): Wayland/camera channel forwarding is not implemented"
                ),
            ));
        }
        let ring_ok = match self.resources.get(&query_ring_id) {
            Some(r) => match &r.kind {
                ResourceKind::GuestBlob { backing, .. } => {
                    backing.len() >= IMAGE_REQUIREMENTS_SIZE as u64
                }
                _ => false,
            },
            None => false,
        };
        let ctx = self.context_mut(ctx_id)?;
        if !ctx.resources.contains(&query_ring_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("ctx_id {ctx_id}: INIT query_ring_id {query_ring_id} is not attached to the context"),
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
        ctx.query_ring = Some(query_ring_id);
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
        let total: usize = self.contexts.values().map(|c| c.requirements.len()).sum();
        if total >= MAX_REQUIREMENTS_TOTAL {
            let ctx = self.context_mut(ctx_id)?;
            let Some((old_id, old)) = ctx.requirements.pop_first() else {
                return Err(reject(
                    GpuError::OutOfMemory,
                    format!(
                        "ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS: all contexts together keep \
                         {MAX_REQUIREMENTS_TOTAL} image requirements already"
                    ),
                ));
            };
            if let Some(buffer) = old.pending {
                ctx.pending_order.retain(|&id| id != old_id);
                self.uncharge(buffer.size);
            }
        }
        let ctx = self.context_mut(ctx_id)?;
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
        let max = crate::device::ports::MAX_IMAGE_DIMENSION;
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
        // Refuse before allocating when even a tightly packed 4-byte-per-pixel image would
        // not fit the memory budget (some allocators commit memory at once).
        let estimate = u64::from(width) * u64::from(height) * 4;
        self.check_budget(
            estimate,
            &format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS"),
        )?;
        let buffer = self.allocator.allocate(&request).map_err(|e| {
            let error = match e {
                crate::device::ports::AllocError::Unsupported(_) => GpuError::InvalidParameter,
                crate::device::ports::AllocError::Os(_) => GpuError::OutOfMemory,
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
        self.charge(
            buffer.size,
            &format!("ctx_id {ctx_id}: GET_IMAGE_REQUIREMENTS"),
        )?;
        let map_info = match self.advisor.advise(
            std::os::fd::AsFd::as_fd(&buffer.fd),
            self.allocator.drm_fd(),
        ) {
            MapAdvice::Allow { map_info, .. } => map_info,
            MapAdvice::Refuse { reason } => {
                info!(
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
        let written = match self.resources.get(&ring_id).map(|r| &r.kind) {
            Some(ResourceKind::GuestBlob { backing, .. }) => backing
                .write(mem, 0, &reqs.encode())
                .map_err(|e| e.to_string()),
            _ => Err("the query ring resource is gone".to_string()),
        };
        if let Err(e) = written {
            self.uncharge(buffer.size);
            return Err(reject(
                GpuError::Unspec,
                format!("ctx_id {ctx_id}: writing the reply to query ring {ring_id}: {e}"),
            ));
        }
        let size = buffer.size;
        let ctx = self.context_mut(ctx_id)?;
        let mut released = ctx.make_room();
        ctx.requirements.insert(
            blob_id,
            Requirement {
                request,
                image: ImageInfo {
                    width,
                    height,
                    drm_format,
                },
                reqs,
                pending: Some(buffer),
            },
        );
        ctx.pending_order.push_back(blob_id);
        released += trim_pending(ctx);
        self.uncharge(released);
        debug!(
            "ctx_id {ctx_id}: blob_id {blob_id}: {width}x{height} {drm_format:#010x}, {size} bytes"
        );
        Ok(())
    }
}
