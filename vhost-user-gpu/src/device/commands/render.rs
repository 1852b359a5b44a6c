//! Renderer contexts (virgl, venus): their capsets, CTX_CREATE/CTX_DESTROY in the renderer,
//! resources attached to them, and SUBMIT_3D command streams.
//!
//! The renderer owns the contexts' state; the device keeps the context's id, capset and
//! budget charge, and hands the guest's bytes over unchanged. Everything the renderer does
//! with a guest's stream is the renderer's to check (virglrenderer validates virgl streams;
//! venus streams run in the render server, a process of its own).

use log::debug;

use crate::device::budget::{Kind, Usage};
use crate::device::context::Context;
use crate::device::ports::{CapsetInfo, Renderer, RendererError};
use crate::device::reject::{over_budget, reject, CmdResult, Reject};
use crate::device::GpuDevice;
use crate::protocol::{
    cross_domain, GpuError, GpuResponse, CAPSET_CROSS_DOMAIN, CAPSET_VIRGL, CAPSET_VIRGL2,
};

use super::context::CROSS_DOMAIN_MAX_VERSION;

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
    /// died).
    pub(super) fn check_not_lost(&mut self, ctx_id: u32) -> Result<(), Reject> {
        let ctx = self.contexts.get_mut(ctx_id)?;
        match ctx.renderer {
            Some(r) if r.lost => Err(reject(
                GpuError::Unspec,
                format!(
                    "ctx_id {ctx_id}: its renderer context was lost with the render server; \
                     create a new context"
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
