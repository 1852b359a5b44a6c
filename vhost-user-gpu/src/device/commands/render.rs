//! Renderer contexts (virgl, venus): their capsets, CTX_CREATE/CTX_DESTROY in the renderer,
//! resources attached to them, SUBMIT_3D command streams; renderer resources
//! (RESOURCE_CREATE_3D, their backing and TRANSFER_*_3D, renderer blobs) and the policy
//! between renderer blobs and the guest (RESOURCE_MAP_BLOB).
//!
//! The renderer owns the contexts' state; the device keeps the context's id, capset and
//! budget charge, and hands the guest's bytes over unchanged. Everything the renderer does
//! with a guest's stream is the renderer's to check (virglrenderer validates virgl streams;
//! venus streams run in the render server, a process of its own).

use std::os::fd::AsFd;

use log::debug;

use crate::device::backing::Backing;
use crate::device::budget::{Charge, Kind, Usage};
use crate::device::context::Context;
use crate::device::ports::{
    BlobFdKind, BlobRequest, CapsetInfo, GuestMemory, MapAdvice, MapRange, Renderer, RendererError,
    MAX_IMAGE_DIMENSION, PAGE_SIZE,
};
use crate::device::reject::{over_budget, reject, CmdResult, Reject};
use crate::device::resource::{
    AttachedBacking, RendererMapping, RendererResource, Resource, ResourceKind,
};
use crate::device::{backing_cost, GpuDevice};
use crate::guest_log::guest_info;
use crate::protocol::{
    cross_domain, feature, CreateBlob, GpuError, GpuResponse, MemEntry, Rect, Resource3d,
    Transfer3d, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D, BLOB_MEM_HOST3D_GUEST,
    CAPSET_CROSS_DOMAIN, CAPSET_VIRGL, CAPSET_VIRGL2, MAP_CACHE_CACHED, MAP_CACHE_UNCACHED,
    MAP_CACHE_WC,
};

use super::context::{CROSS_DOMAIN_MAX_VERSION, VIRGL_MISSING};

/// The capsets a device offers, in `GET_CAPSET_INFO` order: the renderer's (in id order),
/// then cross-domain when `cross_domain`.
pub(crate) fn offered_capsets(
    renderer: Option<&dyn Renderer>,
    cross_domain: bool,
) -> Vec<CapsetInfo> {
    let mut capsets: Vec<CapsetInfo> = renderer.map(|r| r.capsets()).unwrap_or_default();
    capsets.retain(|c| c.id != CAPSET_CROSS_DOMAIN && c.max_size > 0);
    capsets.sort_by_key(|c| c.id);
    capsets.dedup_by_key(|c| c.id);
    if cross_domain {
        capsets.push(CapsetInfo {
            id: CAPSET_CROSS_DOMAIN,
            max_version: CROSS_DOMAIN_MAX_VERSION,
            max_size: cross_domain::CAPABILITIES_SIZE as u32,
        });
    }
    capsets
}

/// Largest depth or array size of a 3D resource (GL's usual limit).
const MAX_3D_LAYERS: u32 = 2048;
/// Most mip levels (a 16384-texel side has 15).
const MAX_3D_LEVEL: u32 = 15;
/// Most samples per pixel.
const MAX_3D_SAMPLES: u32 = 32;

/// Bytes per pixel of a virgl format (`enum virgl_formats`), for charging a 3D resource's
/// host memory; 16 for formats not listed (compressed formats take less).
fn virgl_format_bytes(format: u32) -> u64 {
    match format {
        9..=11 | 23 | 64 | 69 | 74 | 82 | 95 => 1,
        5..=7 | 12..=16 | 48 | 52 | 56 | 60 | 65 | 70 | 75 | 83 | 91 | 96 => 2,
        1..=4
        | 8
        | 17..=22
        | 28
        | 32
        | 36
        | 40
        | 44
        | 49
        | 53
        | 57
        | 61
        | 66..=68
        | 71..=72
        | 76..=77
        | 84..=85
        | 87
        | 92
        | 97..=104 => 4,
        24 | 29 | 33 | 37 | 41 | 45 | 50..=51 | 54..=55 | 58..=59 | 62..=63 | 88 | 93..=94 => 8,
        30 | 34 | 38 | 42 | 46 | 89 => 12,
        26 => 24,
        27 => 32,
        _ => 16,
    }
}

/// The host bytes a `RESOURCE_CREATE_3D` is charged: the renderer's memory for it, estimated
/// from its size and format (a buffer's width is bytes; a mip chain is counted as twice the
/// base level, more than any chain takes). `Err` names a field out of range.
pub(crate) fn resource_3d_bytes(r: &Resource3d) -> Result<u64, String> {
    if r.width == 0 {
        return Err("width 0".into());
    }
    if r.target == 0 {
        // PIPE_BUFFER: width bytes.
        return Ok(u64::from(r.width));
    }
    if r.width > MAX_IMAGE_DIMENSION || r.height > MAX_IMAGE_DIMENSION {
        return Err(format!(
            "{}x{} exceeds {MAX_IMAGE_DIMENSION}",
            r.width, r.height
        ));
    }
    if r.depth > MAX_3D_LAYERS || r.array_size > MAX_3D_LAYERS {
        return Err(format!(
            "depth {} / array_size {} exceeds {MAX_3D_LAYERS}",
            r.depth, r.array_size
        ));
    }
    if r.last_level > MAX_3D_LEVEL || r.nr_samples > MAX_3D_SAMPLES {
        return Err(format!(
            "last_level {} / nr_samples {} out of range",
            r.last_level, r.nr_samples
        ));
    }
    let base = u64::from(r.width)
        * u64::from(r.height.max(1))
        * u64::from(r.depth.max(1))
        * u64::from(r.array_size.max(1))
        * u64::from(r.nr_samples.max(1))
        * virgl_format_bytes(r.format);
    Ok(if r.last_level > 0 { base * 2 } else { base })
}

/// The virtio-gpu error for a renderer failure.
pub(crate) fn renderer_reject(what: &str, e: RendererError) -> Reject {
    let error = match e {
        RendererError::Invalid(_) | RendererError::OutsideGuestMemory { .. } => {
            GpuError::InvalidParameter
        }
        RendererError::NoCapset(_) => GpuError::InvalidContextId,
        _ => GpuError::Unspec,
    };
    reject(error, format!("{what}: renderer: {e}"))
}

impl GpuDevice {
    /// `GET_CAPSET` of a renderer capset (offered and version checked by the caller).
    pub(super) fn renderer_capset(&mut self, capset_id: u32, version: u32) -> CmdResult {
        let renderer = self.renderer.as_mut().ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!("capset_id {capset_id}: no renderer"),
            )
        })?;
        let data = renderer
            .capset(capset_id, version)
            .map_err(|e| renderer_reject(&format!("capset_id {capset_id}"), e))?;
        Ok(GpuResponse::OkCapset(data))
    }

    /// The renderer capset a context with `context_init` is created with, if it lives in
    /// the renderer: its capset when the renderer offers it; for `context_init` 0 (the
    /// default context of a guest that names no capset, as virgl drivers without
    /// CONTEXT_INIT do) virgl's, when virgl is offered.
    pub(super) fn renderer_capset_for(&self, context_init: u32) -> Option<u32> {
        self.renderer.as_ref()?;
        let capset = context_init & crate::protocol::CONTEXT_INIT_CAPSET_ID_MASK;
        if context_init == 0 {
            return [CAPSET_VIRGL2, CAPSET_VIRGL]
                .into_iter()
                .find(|&id| self.offers(id));
        }
        (capset != CAPSET_CROSS_DOMAIN && capset != 0 && self.offers(capset)).then_some(capset)
    }

    pub(super) fn ctx_create_in_renderer(
        &mut self,
        ctx_id: u32,
        capset: u32,
        debug_name: String,
    ) -> CmdResult {
        let charge = self
            .resources
            .budget()
            .charge(Usage::of(Kind::Contexts, 1))
            .map_err(|e| over_budget(&format!("ctx_id {ctx_id}"), e))?;
        let renderer = self
            .renderer
            .as_mut()
            .ok_or_else(|| reject(GpuError::Unspec, "no renderer"))?;
        renderer
            .context_create(ctx_id, capset, debug_name.as_bytes())
            .map_err(|e| renderer_reject(&format!("ctx_id {ctx_id} (capset {capset})"), e))?;
        self.renderer_work = true;
        debug!(
            "ctx_id {ctx_id}: {} context '{debug_name}' (capset {capset}) created",
            renderer.name()
        );
        self.contexts.insert(
            ctx_id,
            Context::new(debug_name, false, charge).in_renderer(capset),
        );
        Ok(GpuResponse::OkNoData)
    }

    /// A renderer context was destroyed (removed from the table by the caller): it goes in
    /// the renderer too, and its rings' waiting answers are released (its fences will never
    /// signal).
    pub(super) fn renderer_context_destroyed(&mut self, ctx_id: u32) {
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.context_destroy(ctx_id);
        }
        self.fences.release_context(ctx_id);
    }

    /// `CTX_ATTACH_RESOURCE` in a renderer context (the renderer ignores resources it does
    /// not know, such as 2D resources).
    pub(super) fn renderer_attach(&mut self, ctx_id: u32, resource_id: u32) {
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.context_attach(ctx_id, resource_id);
            self.renderer_work = true;
        }
    }

    /// `CTX_DETACH_RESOURCE` in a renderer context.
    pub(super) fn renderer_detach(&mut self, ctx_id: u32, resource_id: u32) {
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.context_detach(ctx_id, resource_id);
            self.renderer_work = true;
        }
    }

    /// Fails with `ERR_UNSPEC` when `ctx_id`'s renderer context was lost (its render server
    /// died, or the renderer stopped).
    pub(super) fn check_not_lost(&mut self, ctx_id: u32) -> Result<(), Reject> {
        let ctx = self.contexts.get_mut(ctx_id)?;
        match ctx.renderer {
            Some(r) if r.lost => Err(reject(
                GpuError::Unspec,
                format!(
                    "ctx_id {ctx_id}: its renderer context was lost (the render server died \
                     or the renderer stopped: see the backend's log); create a new context"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `SUBMIT_3D` to a renderer context.
    pub(super) fn submit_to_renderer(&mut self, ctx_id: u32, commands: &[u8]) -> CmdResult {
        self.check_not_lost(ctx_id)?;
        let renderer = self
            .renderer
            .as_mut()
            .ok_or_else(|| reject(GpuError::Unspec, "no renderer"))?;
        self.renderer_work = true;
        renderer.submit(ctx_id, commands).map_err(|e| {
            renderer_reject(
                &format!("ctx_id {ctx_id}: {}-byte command stream", commands.len()),
                e,
            )
        })?;
        Ok(GpuResponse::OkNoData)
    }
}

impl GpuDevice {
    /// The renderer, for a command that needs one (`what` names it in the refusal).
    fn need_renderer(&mut self, what: &str) -> Result<&mut (dyn Renderer + Send), Reject> {
        match self.renderer.as_deref_mut() {
            Some(r) => Ok(r),
            None => Err(reject(
                GpuError::Unspec,
                format!("{what}: this device has no 3D renderer. {VIRGL_MISSING}"),
            )),
        }
    }

    /// `ERR_UNSPEC` naming what to configure when no virgl capset is served: 3D resources
    /// and their transfers are virgl's (a venus-only renderer has none).
    fn need_virgl(&self, what: &str) -> Result<(), Reject> {
        if self.serves_virgl() {
            return Ok(());
        }
        Err(reject(
            GpuError::Unspec,
            format!("{what}: 3D resources need a virgl renderer. {VIRGL_MISSING}"),
        ))
    }

    pub(super) fn resource_create_3d(&mut self, resource_id: u32, args: Resource3d) -> CmdResult {
        self.require_feature(feature::VIRGL, "VIRGL")?;
        let what = format!("RESOURCE_CREATE_3D resource_id {resource_id}");
        self.need_virgl(&what)?;
        self.need_renderer(&what)?;
        let mut charge = self.resources.reserve(resource_id)?;
        let bytes = resource_3d_bytes(&args)
            .map_err(|e| reject(GpuError::InvalidParameter, format!("{what}: {e}")))?;
        charge.absorb(self.resources.charge_bytes(bytes, &what)?);
        self.renderer_work = true;
        self.need_renderer(&what)?
            .resource_create_3d(resource_id, &args)
            .map_err(|e| renderer_reject(&what, e))?;
        self.resources.insert(
            resource_id,
            Resource::new(
                ResourceKind::Renderer(RendererResource::created(args)),
                bytes,
                0,
                charge,
            ),
        );
        Ok(GpuResponse::OkNoData)
    }

    /// `RESOURCE_ATTACH_BACKING` of a 3D resource: the renderer pins the guest pages.
    pub(super) fn attach_backing_3d(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        entries: Vec<MemEntry>,
    ) -> CmdResult {
        let what = format!("resource_id {resource_id}");
        let resource = self.resources.get(resource_id)?;
        let ResourceKind::Renderer(r) = &resource.kind else {
            return Err(reject(
                GpuError::Unspec,
                format!("{what} is not a 3D resource"),
            ));
        };
        if r.create.is_none() || r.backing.is_some() {
            return Err(reject(
                GpuError::Unspec,
                format!("{what}: already has a backing (or is a blob)"),
            ));
        }
        let charge = self.resources.charge_bytes(
            backing_cost(entries.len()),
            &format!("{what}: backing entries"),
        )?;
        let backing = Backing::new(mem, entries)
            .map_err(|e| reject(GpuError::Unspec, format!("{what}: nr_entries/entries: {e}")))?;
        let ranges = ranges_of(backing.entries());
        self.renderer_work = true;
        self.need_renderer(&what)?
            .attach_backing(resource_id, mem, &ranges)
            .map_err(|e| renderer_reject(&what, e))?;
        if let ResourceKind::Renderer(r) = &mut self.resources.get_mut(resource_id)?.kind {
            r.backing = Some(AttachedBacking {
                backing,
                _charge: charge,
            });
        }
        Ok(GpuResponse::OkNoData)
    }

    /// `RESOURCE_DETACH_BACKING` of a 3D resource.
    pub(super) fn detach_backing_3d(&mut self, resource_id: u32) -> CmdResult {
        let resource = self.resources.get_mut(resource_id)?;
        let released = match &mut resource.kind {
            ResourceKind::Renderer(r) if r.create.is_some() => r.backing.take(),
            _ => None,
        };
        if released.is_none() {
            return Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id} has no backing to detach"),
            ));
        }
        self.renderer_work = true;
        if let Some(renderer) = self.renderer.as_mut() {
            renderer.detach_backing(resource_id);
        }
        Ok(GpuResponse::OkNoData)
    }

    /// `TRANSFER_TO_HOST_3D` / `TRANSFER_FROM_HOST_3D` (and `TRANSFER_TO_HOST_2D` of a 3D
    /// resource, as a one-layer box).
    pub(super) fn transfer_3d(
        &mut self,
        ctx_id: u32,
        resource_id: u32,
        transfer: Transfer3d,
        to_host: bool,
    ) -> CmdResult {
        let what = format!(
            "{} resource_id {resource_id}",
            if to_host {
                "TRANSFER_TO_HOST_3D"
            } else {
                "TRANSFER_FROM_HOST_3D"
            }
        );
        self.need_virgl(&what)?;
        let resource = self.resources.get(resource_id)?;
        if !matches!(resource.kind, ResourceKind::Renderer(_)) {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "{what} is a {}, not a renderer resource",
                    resource.kind_name()
                ),
            ));
        }
        if ctx_id != 0 {
            self.check_not_lost(ctx_id)?;
        }
        self.renderer_work = true;
        let renderer = self.need_renderer(&what)?;
        let done = if to_host {
            renderer.transfer_to_host(ctx_id, resource_id, &transfer)
        } else {
            renderer.transfer_from_host(ctx_id, resource_id, &transfer)
        };
        done.map_err(|e| renderer_reject(&what, e))?;
        Ok(GpuResponse::OkNoData)
    }

    /// `TRANSFER_TO_HOST_2D` of a 3D resource (what QEMU's virgl device does too).
    pub(super) fn transfer_2d_of_3d(
        &mut self,
        resource_id: u32,
        rect: Rect,
        offset: u64,
    ) -> CmdResult {
        let transfer = Transfer3d {
            bx: crate::protocol::Box3d {
                x: rect.x,
                y: rect.y,
                z: 0,
                w: rect.width,
                h: rect.height,
                d: 1,
            },
            offset,
            ..Transfer3d::default()
        };
        self.transfer_3d(0, resource_id, transfer, true)
    }

    /// `RESOURCE_CREATE_BLOB` in a renderer context: GUEST (also shown by the device),
    /// HOST3D (renderer memory) and HOST3D_GUEST (guest memory the renderer uses).
    pub(super) fn create_renderer_blob(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        p: CreateBlob,
        mut charge: Charge,
    ) -> Result<Resource, Reject> {
        let rid = p.resource_id;
        let what = format!("resource_id {rid} (ctx_id {ctx_id})");
        self.check_not_lost(ctx_id)?;
        let request = BlobRequest {
            ctx_id,
            blob_mem: p.blob_mem,
            blob_flags: p.blob_flags,
            blob_id: p.blob_id,
            size: p.size,
        };
        let (kind, size) = match p.blob_mem {
            BLOB_MEM_GUEST => {
                let resource = self.new_guest_blob(mem, &p, charge)?;
                let ResourceKind::GuestBlob { backing, .. } = &resource.kind else {
                    unreachable!("new_guest_blob makes GUEST blobs");
                };
                let ranges = ranges_of(backing.entries());
                self.renderer_work = true;
                self.need_renderer(&what)?
                    .resource_create_blob(rid, &request, Some((mem, &ranges)))
                    .map_err(|e| renderer_reject(&what, e))?;
                return Ok(resource);
            }
            BLOB_MEM_HOST3D => {
                if !p.entries.is_empty() {
                    return Err(reject(
                        GpuError::InvalidParameter,
                        format!("{what}: HOST3D blobs take no entries"),
                    ));
                }
                charge.absorb(self.resources.charge_bytes(p.size, &what)?);
                self.renderer_work = true;
                self.need_renderer(&what)?
                    .resource_create_blob(rid, &request, None)
                    .map_err(|e| renderer_reject(&what, e))?;
                (RendererResource::blob(p.blob_mem, None), p.size)
            }
            BLOB_MEM_HOST3D_GUEST => {
                let entry_charge = self
                    .resources
                    .charge_bytes(backing_cost(p.entries.len()), &format!("{what}: entries"))?;
                let backing = Backing::new(mem, p.entries.clone())
                    .map_err(|e| reject(GpuError::Unspec, format!("{what}: entries: {e}")))?;
                if backing.len() < p.size {
                    return Err(reject(
                        GpuError::InvalidParameter,
                        format!(
                            "{what}: size {} but the entries cover only {} bytes",
                            p.size,
                            backing.len()
                        ),
                    ));
                }
                let ranges = ranges_of(backing.entries());
                self.renderer_work = true;
                self.need_renderer(&what)?
                    .resource_create_blob(rid, &request, Some((mem, &ranges)))
                    .map_err(|e| renderer_reject(&what, e))?;
                let attached = AttachedBacking {
                    backing,
                    _charge: entry_charge,
                };
                (RendererResource::blob(p.blob_mem, Some(attached)), p.size)
            }
            other => {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("{what}: blob_mem {other} is not supported"),
                ))
            }
        };
        Ok(Resource::new(
            ResourceKind::Renderer(kind),
            size,
            p.blob_flags,
            charge,
        ))
    }

    /// The renderer blob's fd, exported once and kept.
    pub(super) fn exported_blob(&mut self, resource_id: u32) -> Result<(), Reject> {
        let what = format!("resource_id {resource_id}");
        let known = match &self.resources.get(resource_id)?.kind {
            ResourceKind::Renderer(r) => r.exported.is_some(),
            _ => {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("{what}: not a renderer blob"),
                ))
            }
        };
        if known {
            return Ok(());
        }
        // The exported fd stays open as long as the blob: one of the guest's open files.
        let fd_charge = self
            .resources
            .charge(Usage::of(Kind::Fds, 1), &format!("{what}: its exported fd"))?;
        self.renderer_work = true;
        let exported = self
            .need_renderer(&what)?
            .export_blob(resource_id)
            .map_err(|e| renderer_reject(&format!("{what}: export"), e))?;
        debug!(
            "{what}: the renderer exported it as {} (its map_info: {:?})",
            exported.kind, exported.renderer_map_info
        );
        if let ResourceKind::Renderer(r) = &mut self.resources.get_mut(resource_id)?.kind {
            r.exported_kind = Some(exported.kind);
            r.exported_offset = exported.fd_offset;
            r.renderer_map_info = exported.renderer_map_info;
            r.exported = Some(exported.fd);
            r._exported_charge = Some(fd_charge);
        }
        Ok(())
    }

    /// `RESOURCE_MAP_BLOB` of a renderer blob: the renderer exports it, dmabuf-info judges
    /// the fd, and only what the policy allows is mapped, with dmabuf-info's cache type.
    pub(super) fn map_renderer_blob(&mut self, resource_id: u32, offset: u64) -> CmdResult {
        let what = format!("resource_id {resource_id}");
        {
            let resource = self.resources.get(resource_id)?;
            let ResourceKind::Renderer(r) = &resource.kind else {
                unreachable!("checked by the caller");
            };
            if r.blob_mem.is_none() {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("{what} is a 3D resource, not a blob"),
                ));
            }
            if resource.blob_flags & BLOB_FLAG_USE_MAPPABLE == 0 {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("{what} was not created MAPPABLE"),
                ));
            }
            if let Some(m) = &r.mapping {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("{what} is already mapped at {:#x}", m.offset),
                ));
            }
        }
        self.check_region(resource_id)?;
        self.exported_blob(resource_id)?;
        let size = self.resources.get(resource_id)?.size;
        let len = size.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let resource = self.resources.get(resource_id)?;
        let ResourceKind::Renderer(r) = &resource.kind else {
            unreachable!("checked above");
        };
        let renderer_kind = r.exported_kind.unwrap_or(BlobFdKind::Opaque);
        let fd_offset = r.exported_offset;
        let renderer_map_info = r.renderer_map_info;
        let Some(fd) = r.exported.as_ref() else {
            unreachable!("exported above");
        };
        // The fd must hold the whole mapping (a shorter file would fault in the guest).
        let fd_len = rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).unwrap_or(0);
        let _ = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0));
        if fd_len < fd_offset.saturating_add(len) {
            return Err(reject(
                GpuError::Unspec,
                format!(
                    "{what}: the renderer's {renderer_kind} holds {fd_len} bytes, the blob \
                     needs {len} from {fd_offset:#x}; refused"
                ),
            ));
        }
        let advice = self.advisor.advise(fd.as_fd(), None);
        let map_info = match advice {
            MapAdvice::Refuse { reason } => {
                return Err(reject(
                    GpuError::Unspec,
                    format!(
                        "{what} (renderer blob, {renderer_kind} by the renderer's word, {size} \
                         bytes) refused for guest mapping: {reason}"
                    ),
                ));
            }
            MapAdvice::Allow { map_info, source } => {
                if ![MAP_CACHE_CACHED, MAP_CACHE_UNCACHED, MAP_CACHE_WC].contains(&map_info) {
                    return Err(reject(GpuError::Unspec, "invalid advice"));
                }
                match renderer_map_info {
                    Some(theirs) if theirs != map_info => guest_info!(
                        "{what}: the renderer says map_info {theirs}, dmabuf-info says \
                         {map_info} ({source}): using dmabuf-info's"
                    ),
                    theirs => debug!(
                        "{what}: map_info {map_info} from {source} (the renderer's: {theirs:?})"
                    ),
                }
                map_info
            }
        };
        self.region
            .allocate_at(offset, len)
            .map_err(|e| reject(GpuError::InvalidParameter, format!("{what}: offset: {e}")))?;
        let range = MapRange {
            shm_offset: offset,
            len,
            fd_offset,
            writable: true,
        };
        if let Err(e) = self.mapper.map(fd.as_fd(), range) {
            let _ = self.region.free(offset);
            return Err(reject(
                GpuError::Unspec,
                format!("{what}: mapping at {offset:#x}+{len:#x}: {e}"),
            ));
        }
        if let ResourceKind::Renderer(r) = &mut self.resources.get_mut(resource_id)?.kind {
            r.mapping = Some(RendererMapping { offset, len });
        }
        Ok(GpuResponse::OkMapInfo { map_info })
    }

    /// `RESOURCE_UNMAP_BLOB` of a renderer blob.
    pub(super) fn unmap_renderer_blob(&mut self, resource_id: u32) -> CmdResult {
        let resource = self.resources.get_mut(resource_id)?;
        let ResourceKind::Renderer(r) = &mut resource.kind else {
            unreachable!("checked by the caller");
        };
        let Some(m) = r.mapping.take() else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is not mapped"),
            ));
        };
        if let Err(e) = self.mapper.unmap(m.offset, m.len) {
            r.mapping = Some(m);
            return Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id}: unmapping: {e}; still mapped"),
            ));
        }
        let _ = self.region.free(m.offset);
        Ok(GpuResponse::OkNoData)
    }
}

/// Guest memory entries as (address, length) ranges for the renderer.
fn ranges_of(entries: &[MemEntry]) -> Vec<(u64, u64)> {
    entries
        .iter()
        .map(|e| (e.addr, u64::from(e.length)))
        .collect()
}
