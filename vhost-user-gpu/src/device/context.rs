//! Rendering contexts: [`ContextTable`] holds them by id. The context types are cross-domain
//! (capset 5), whose state is the query ring (where replies go), the image requirements
//! handed out, keyed by blob id, and, when its INIT asked for one, a channel to the host
//! compositor with its channel ring; renderer contexts (virgl, venus), whose state lives in
//! the renderer; and the default context a guest creates without a capset (a virgl context
//! when the renderer serves virgl).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::budget::{Charge, Exceeded, Kind, Usage};
use super::reject::{reject, Reject};
use super::resource::ImageInfo;
use crate::device::ports::{BufferRequest, Channel, HostBuffer};
use crate::protocol::cross_domain::{ImageRequirements, InitLayout};
use crate::protocol::{GpuError, CAPSET_VENUS};

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
/// Most contexts at once (the contexts budget).
pub const MAX_CONTEXTS: u64 = 1024;
/// Resource attachments all contexts together may hold, per resource of `max_resources`
/// (the attachments budget): Linux attaches a resource to every context (DRM file) that
/// uses it; without a cap 1024 contexts times every resource would be millions of entries.
pub const ATTACHMENTS_PER_RESOURCE: u64 = 16;

/// A buffer allocated for a requirement, with the host bytes it is charged, until a
/// CREATE_BLOB claims it (dropping it releases both).
#[derive(Debug)]
pub(crate) struct Pending {
    pub buffer: HostBuffer,
    pub charge: Charge,
}

/// The answer to one GET_IMAGE_REQUIREMENTS.
#[derive(Debug)]
pub(crate) struct Requirement {
    /// What was asked of the allocator (to allocate again for a second CREATE_BLOB).
    pub request: BufferRequest,
    pub image: ImageInfo,
    /// What the guest was told.
    pub reqs: ImageRequirements,
    /// The buffer allocated while answering, until a CREATE_BLOB claims it.
    pub pending: Option<Pending>,
}

/// A cross-domain context's channel to the host compositor.
#[derive(Debug)]
pub(crate) struct ContextChannel {
    /// The host end (a port).
    pub channel: Box<dyn Channel>,
    /// The GUEST blob events are written into (offset 0, one event per POLL fence).
    pub ring: u32,
    /// Fences on the channel ring waiting for an event, oldest first.
    pub waiting: VecDeque<Waiting>,
}

/// A fenced command on the channel ring whose answer waits for an event: its fence id.
pub(crate) type Waiting = u64;

/// A context that lives in the renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RendererContext {
    /// The capset it was created with (VIRGL, VIRGL2 or VENUS).
    pub capset: u32,
    /// The renderer lost it (the render server died, or the renderer stopped): its
    /// commands fail.
    pub lost: bool,
}

/// A context: cross-domain, a renderer context, or the default context a guest creates
/// without a capset.
#[derive(Debug)]
pub(crate) struct Context {
    pub debug_name: String,
    /// Set for contexts that live in the renderer (then `cross_domain` is `false`).
    pub renderer: Option<RendererContext>,
    /// `false` for a default context (`context_init` 0): Linux creates one for every DRM
    /// file that makes resources when 3D is offered. It holds attached resources and GUEST
    /// blobs but has no renderer: every SUBMIT_3D in it is refused.
    pub cross_domain: bool,
    /// Resources attached with CTX_ATTACH_RESOURCE (or created in this context), each
    /// charged one attachment.
    attached: BTreeSet<u32>,
    /// The query ring resource, after CROSS_DOMAIN_CMD_INIT.
    pub query_ring: Option<u32>,
    /// The layout of the INIT the guest sent (for logs and the ring rules).
    pub init_layout: Option<InitLayout>,
    /// The channel, after an INIT with a channel type.
    pub channel: Option<ContextChannel>,
    /// Requirements by blob id.
    requirements: BTreeMap<u32, Requirement>,
    /// Blob ids whose requirement still holds a pending buffer, oldest first.
    pending_order: VecDeque<u32>,
    /// Last blob id handed out (even numbers from 2, as rutabaga does).
    last_blob_id: u32,
    /// The context's place in the contexts budget and its attachments.
    charge: Charge,
}

impl Context {
    /// A context holding `charge` (one context).
    pub fn new(debug_name: String, cross_domain: bool, charge: Charge) -> Self {
        Context {
            debug_name,
            renderer: None,
            cross_domain,
            attached: BTreeSet::new(),
            query_ring: None,
            init_layout: None,
            channel: None,
            requirements: BTreeMap::new(),
            pending_order: VecDeque::new(),
            last_blob_id: 0,
            charge,
        }
    }

    /// A context as a previous process had it (live upgrade); `requirements` by blob id,
    /// `pending_order` oldest first, `charge` its place in the contexts budget and one
    /// attachment per resource in `attached`.
    #[allow(clippy::too_many_arguments)]
    pub fn restored(
        debug_name: String,
        cross_domain: bool,
        attached: BTreeSet<u32>,
        query_ring: Option<u32>,
        requirements: BTreeMap<u32, Requirement>,
        pending_order: VecDeque<u32>,
        last_blob_id: u32,
        charge: Charge,
    ) -> Self {
        Context {
            debug_name,
            renderer: None,
            cross_domain,
            attached,
            query_ring,
            init_layout: None,
            channel: None,
            requirements,
            pending_order,
            last_blob_id,
            charge,
        }
    }

    /// Attached resources, requirements by blob id, pending buffers oldest first, the last
    /// blob id handed out, and what the context is charged (live upgrade).
    pub fn parts(
        &self,
    ) -> (
        &BTreeSet<u32>,
        &BTreeMap<u32, Requirement>,
        &VecDeque<u32>,
        u32,
        Usage,
    ) {
        (
            &self.attached,
            &self.requirements,
            &self.pending_order,
            self.last_blob_id,
            self.charge.amount(),
        )
    }

    /// This context lives in the renderer, created there with `capset`.
    pub fn in_renderer(mut self, capset: u32) -> Self {
        self.renderer = Some(RendererContext {
            capset,
            lost: false,
        });
        self
    }

    /// Attaches `resource_id`, charging one attachment unless it is attached already.
    pub fn attach(&mut self, resource_id: u32) -> Result<(), Exceeded> {
        if self.attached.contains(&resource_id) {
            return Ok(());
        }
        self.charge.grow(Usage::of(Kind::Attachments, 1))?;
        self.attached.insert(resource_id);
        Ok(())
    }

    /// Attaches `resource_id` with an attachment charged beforehand (`charge`, one
    /// attachment); a resource attached already gives it back.
    pub fn attach_charged(&mut self, resource_id: u32, charge: Charge) {
        if self.attached.insert(resource_id) {
            self.charge.absorb(charge);
        }
    }

    /// Whether `resource_id` is attached.
    pub fn is_attached(&self, resource_id: u32) -> bool {
        self.attached.contains(&resource_id)
    }

    /// The channel, if any, with the attached resources (read-only: what SEND may export).
    pub fn channel_and_attached(&mut self) -> Option<(&mut ContextChannel, &BTreeSet<u32>)> {
        let channel = self.channel.as_mut()?;
        Some((channel, &self.attached))
    }

    /// Detaches `resource_id` (and drops it as the query ring); `false` if it was not
    /// attached.
    pub fn detach(&mut self, resource_id: u32) -> bool {
        if self.query_ring == Some(resource_id) {
            self.query_ring = None;
        }
        if !self.attached.remove(&resource_id) {
            return false;
        }
        self.charge.shrink(Usage::of(Kind::Attachments, 1));
        true
    }

    /// The next blob id, `None` when the id space is exhausted.
    pub fn next_blob_id(&mut self) -> Option<u32> {
        let id = self.last_blob_id.checked_add(2)?;
        self.last_blob_id = id;
        Some(id)
    }

    /// Keeps `requirement` under `blob_id`: forgets the oldest requirements first if the
    /// context holds [`MAX_REQUIREMENTS_PER_CONTEXT`], and releases the oldest pending
    /// buffers beyond [`MAX_PENDING_BUFFERS_PER_CONTEXT`].
    pub fn add_requirement(&mut self, blob_id: u32, requirement: Requirement) {
        while self.requirements.len() >= MAX_REQUIREMENTS_PER_CONTEXT {
            if !self.forget_oldest_requirement() {
                break;
            }
        }
        if requirement.pending.is_some() {
            self.pending_order.push_back(blob_id);
        }
        self.requirements.insert(blob_id, requirement);
        while self.pending_order.len() > MAX_PENDING_BUFFERS_PER_CONTEXT {
            let Some(id) = self.pending_order.pop_front() else {
                break;
            };
            if let Some(requirement) = self.requirements.get_mut(&id) {
                requirement.pending = None;
            }
        }
    }

    /// Forgets the oldest requirement (and releases its pending buffer); `false` when there
    /// is none.
    pub fn forget_oldest_requirement(&mut self) -> bool {
        let Some((blob_id, old)) = self.requirements.pop_first() else {
            return false;
        };
        if old.pending.is_some() {
            self.pending_order.retain(|&id| id != blob_id);
        }
        true
    }

    /// The requirement handed out as `blob_id`.
    pub fn requirement_mut(&mut self, blob_id: u32) -> Option<&mut Requirement> {
        self.requirements.get_mut(&blob_id)
    }

    /// Takes the buffer still waiting in requirement `blob_id`, if any.
    pub fn take_pending(&mut self, blob_id: u32) -> Option<Pending> {
        let pending = self.requirements.get_mut(&blob_id)?.pending.take()?;
        self.pending_order.retain(|&id| id != blob_id);
        Some(pending)
    }

    /// Number of requirements kept.
    pub fn requirement_count(&self) -> usize {
        self.requirements.len()
    }

    /// Forgets `resource_id` (destroyed or detached) as a ring: drops it as the query ring,
    /// and closes the channel whose ring it was (events would have nowhere to go). Returns
    /// the POLLs that were waiting on that channel (to be answered now).
    pub fn forget_ring(&mut self, resource_id: u32) -> VecDeque<Waiting> {
        if self.query_ring == Some(resource_id) {
            self.query_ring = None;
        }
        if self.channel.as_ref().is_some_and(|c| c.ring == resource_id) {
            if let Some(channel) = self.channel.take() {
                return channel.waiting;
            }
        }
        VecDeque::new()
    }

    /// Forgets `resource_id` (destroyed): detaches it, and drops it as a ring; returns the
    /// POLLs left without a channel.
    pub fn forget_resource(&mut self, resource_id: u32) -> VecDeque<Waiting> {
        self.detach(resource_id);
        self.forget_ring(resource_id)
    }
}

/// Live contexts by id.
#[derive(Debug, Default)]
pub(crate) struct ContextTable {
    contexts: BTreeMap<u32, Context>,
}

impl ContextTable {
    /// Whether `ctx_id` exists.
    pub fn contains(&self, ctx_id: u32) -> bool {
        self.contexts.contains_key(&ctx_id)
    }

    /// The context, or `ERR_INVALID_CONTEXT_ID`.
    pub fn get_mut(&mut self, ctx_id: u32) -> Result<&mut Context, Reject> {
        self.contexts
            .get_mut(&ctx_id)
            .ok_or_else(|| missing(ctx_id))
    }

    /// Adds a context under a new id.
    pub fn insert(&mut self, ctx_id: u32, context: Context) {
        let old = self.contexts.insert(ctx_id, context);
        debug_assert!(old.is_none(), "ctx_id {ctx_id} inserted twice");
    }

    /// Takes a context out; dropping it releases its charges and pending buffers.
    pub fn remove(&mut self, ctx_id: u32) -> Result<Context, Reject> {
        self.contexts.remove(&ctx_id).ok_or_else(|| missing(ctx_id))
    }

    /// Forgets `resource_id` in every context; returns the contexts whose channel closed
    /// with it (their waiting fences will never see an event).
    pub fn forget_resource(&mut self, resource_id: u32) -> Vec<u32> {
        let mut closed = Vec::new();
        for (&ctx_id, ctx) in self.contexts.iter_mut() {
            if !ctx.forget_resource(resource_id).is_empty() {
                closed.push(ctx_id);
            }
        }
        closed
    }

    /// The contexts with a channel, by id.
    pub fn channels_mut(&mut self) -> impl Iterator<Item = (u32, &mut ContextChannel)> {
        self.contexts
            .iter_mut()
            .filter_map(|(&id, ctx)| ctx.channel.as_mut().map(|c| (id, c)))
    }

    /// The context's channel, or `None` (no such context or no channel).
    pub fn channel_mut(&mut self, ctx_id: u32) -> Option<&mut ContextChannel> {
        self.contexts.get_mut(&ctx_id)?.channel.as_mut()
    }

    /// Requirements kept by all contexts together.
    pub fn requirement_count(&self) -> usize {
        self.contexts.values().map(Context::requirement_count).sum()
    }

    /// Whether `ctx_id` exists and lives in the renderer.
    pub fn has_renderer(&self, ctx_id: u32) -> bool {
        self.contexts
            .get(&ctx_id)
            .is_some_and(|c| c.renderer.is_some())
    }

    /// Whether `ctx_id` exists, lives in the renderer and was not lost there.
    pub fn has_live_renderer(&self, ctx_id: u32) -> bool {
        self.contexts
            .get(&ctx_id)
            .and_then(|c| c.renderer)
            .is_some_and(|r| !r.lost)
    }

    /// Every venus context is lost with the render server it lived in; returns their ids.
    pub fn renderer_server_lost(&mut self) -> Vec<u32> {
        let mut lost = Vec::new();
        for (&id, ctx) in &mut self.contexts {
            if let Some(r) = ctx.renderer.as_mut().filter(|r| r.capset == CAPSET_VENUS) {
                r.lost = true;
                lost.push(id);
            }
        }
        lost
    }

    /// Every renderer context is lost with the renderer; returns their ids.
    pub fn renderer_lost(&mut self) -> Vec<u32> {
        let mut lost = Vec::new();
        for (&id, ctx) in &mut self.contexts {
            if let Some(r) = ctx.renderer.as_mut() {
                r.lost = true;
                lost.push(id);
            }
        }
        lost
    }

    /// Number of live contexts.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Every context with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Context)> {
        self.contexts.iter().map(|(&id, c)| (id, c))
    }

    /// Drops every context (device reset).
    pub fn clear(&mut self) {
        self.contexts.clear();
    }
}

fn missing(ctx_id: u32) -> Reject {
    reject(
        GpuError::InvalidContextId,
        format!("ctx_id {ctx_id} does not exist"),
    )
}
