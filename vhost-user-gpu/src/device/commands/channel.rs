//! Cross-domain channels: INIT with a channel type, SEND, WRITE, POLL, the events written
//! into the channel ring, and `RESOURCE_CREATE_BLOB` of a buffer the compositor handed in.
//!
//! The channel itself is a port ([`Channel`]); this file holds what the device decides: which
//! resources may go to the compositor (those attached to the context that have a host fd),
//! what each failure answers, where events go, and that a received buffer becomes a HOST3D
//! blob judged by the map advisor like any other before the guest maps it.

use std::os::fd::{AsFd, OwnedFd};

use log::debug;

use crate::device::budget::Charge;
use crate::device::context::{ContextChannel, Waiting};
use crate::device::fence::Timeline;
use crate::device::ports::{
    BlobExporter, ChannelError, GuestMemory, HostBuffer, PlaneLayout, ReceivedKind,
};
use crate::device::reject::{reject, Reject};
use crate::device::resource::{HostBlob, ImageInfo, Resource, ResourceKind};
use crate::device::resource_table::ResourceTable;
use crate::device::GpuDevice;
use crate::guest_log::guest_info;
use crate::protocol::cross_domain::{
    Init, InitLayout, ReadWrite, SendReceive, CHANNEL_RING, CHANNEL_TYPE_WAYLAND, RING_PAGE_SIZE,
};
use crate::protocol::{fourcc, CreateBlob, CtrlHeader, GpuError};

/// The virtio-gpu error for a channel failure: the guest's mistakes are invalid parameters,
/// full queues and budgets are out of memory, a closed or broken connection is unspecified.
fn channel_error(e: &ChannelError) -> GpuError {
    match e {
        ChannelError::LayoutChanged { .. }
        | ChannelError::FdsWithoutData
        | ChannelError::UnsupportedIdType(_)
        | ChannelError::UnsupportedType(_)
        | ChannelError::Export { .. }
        | ChannelError::ReadPipeId(_)
        | ChannelError::UnknownItem { .. } => GpuError::InvalidParameter,
        ChannelError::TooMany { .. }
        | ChannelError::OverBudget { .. }
        | ChannelError::Stalled { .. } => GpuError::OutOfMemory,
        ChannelError::Connect { .. }
        | ChannelError::UnsupportedFd(_)
        | ChannelError::Closed
        | ChannelError::Io { .. } => GpuError::Unspec,
    }
}

fn channel_reject(ctx_id: u32, what: &str, e: &ChannelError) -> Reject {
    reject(channel_error(e), format!("ctx_id {ctx_id}: {what}: {e}"))
}

/// Exports the resources attached to one context (for one SEND).
struct AttachedExporter<'a> {
    table: &'a ResourceTable,
    attached: &'a std::collections::BTreeSet<u32>,
}

impl BlobExporter for AttachedExporter<'_> {
    fn export_blob(&mut self, resource_id: u32) -> Result<OwnedFd, String> {
        if !self.attached.contains(&resource_id) {
            return Err("it is not attached to the context".to_string());
        }
        let resource = self
            .table
            .get(resource_id)
            .map_err(|_| "it does not exist".to_string())?;
        let fd = match &resource.kind {
            ResourceKind::HostBlob(blob) => blob.buffer.fd.as_fd(),
            ResourceKind::GuestBlob {
                dmabuf: Some(dmabuf),
                ..
            } => dmabuf.as_fd(),
            ResourceKind::GuestBlob { dmabuf: None, .. } => {
                return Err(
                    "it is a GUEST blob and this host could not export its pages as a \
                     dma-buf (no /dev/udmabuf, or pages not page aligned in one memfd); \
                     allocate it through the context (GET_IMAGE_REQUIREMENTS, HOST3D)"
                        .to_string(),
                )
            }
            ResourceKind::Image2d(_) => {
                return Err("a 2D resource has no host buffer to share".to_string())
            }
            // Renderer buffers do not cross to a compositor (not served yet).
            ResourceKind::Renderer(_) => {
                return Err(
                    "it is a renderer (virgl/venus) resource, which is not passed to the \
                     compositor; allocate shared buffers through the cross-domain context \
                     (GET_IMAGE_REQUIREMENTS, HOST3D)"
                        .to_string(),
                )
            }
        };
        fd.try_clone_to_owned()
            .map_err(|e| format!("duplicating its fd: {e}"))
    }
}

impl GpuDevice {
    /// The channel types this device serves (the capset's `supported_channels`).
    pub(crate) fn supported_channels(&self) -> u32 {
        self.channels.as_ref().map_or(0, |c| c.supported_channels())
    }

    /// The channel part of an INIT: checks the channel ring and connects.
    pub(super) fn open_channel(&mut self, ctx_id: u32, init: &Init) -> Result<(), Reject> {
        let Init {
            layout,
            channel_ring_id: ring,
            channel_type,
            ..
        } = *init;
        if channel_type != CHANNEL_TYPE_WAYLAND || self.supported_channels() & (1 << 1) == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "ctx_id {ctx_id}: INIT channel_type {channel_type:#x} is not served (the \
                     capset's supported_channels is {:#x}: {}); INIT with channel_type 0 \
                     allocates without a channel",
                    self.supported_channels(),
                    if self.channels.is_none() {
                        "no Wayland socket configured (--wayland-socket)"
                    } else {
                        "only WAYLAND, 1"
                    }
                ),
            ));
        }
        let ctx = self.contexts.get_mut(ctx_id)?;
        if ctx.channel.is_some() {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("ctx_id {ctx_id}: INIT: the context already has a channel"),
            ));
        }
        if !ctx.is_attached(ring) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!(
                    "ctx_id {ctx_id}: INIT channel_ring_id {ring} is not attached to the context"
                ),
            ));
        }
        let ring_ok = matches!(
            self.resources.get(ring).map(|r| &r.kind),
            Ok(ResourceKind::GuestBlob { backing, .. }) if backing.len() >= RING_PAGE_SIZE as u64
        );
        if !ring_ok {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "ctx_id {ctx_id}: INIT channel_ring_id {ring} must be a GUEST blob of at \
                     least {RING_PAGE_SIZE} bytes (one event)"
                ),
            ));
        }
        let Some(connector) = self.channels.as_mut() else {
            unreachable!("supported_channels checked above");
        };
        let channel = connector
            .connect(channel_type, self.resources.budget())
            .map_err(|e| channel_reject(ctx_id, "INIT: opening the channel", &e))?;
        guest_info!(
            "ctx_id {ctx_id}: Wayland channel open ({} INIT, {})",
            match layout {
                InitLayout::OneRing => "16-byte",
                InitLayout::TwoRings => "20-byte",
                InitLayout::Versioned => "24-byte",
            },
            if init.query_ring_id == ring {
                "one ring for queries and events".to_string()
            } else {
                format!("channel ring {ring}")
            }
        );
        self.watch_channel(channel.wait_fd());
        self.contexts.get_mut(ctx_id)?.channel = Some(ContextChannel {
            channel,
            ring,
            waiting: Default::default(),
        });
        Ok(())
    }

    /// SEND: bytes and identifiers to the compositor.
    pub(super) fn channel_send(&mut self, ctx_id: u32, send: &SendReceive) -> Result<(), Reject> {
        let ctx = self.contexts.get_mut(ctx_id)?;
        let Some((channel, attached)) = ctx.channel_and_attached() else {
            return Err(no_channel(ctx_id, "SEND"));
        };
        let mut exporter = AttachedExporter {
            table: &self.resources,
            attached,
        };
        channel
            .channel
            .send(send, &mut exporter)
            .map_err(|e| channel_reject(ctx_id, "SEND", &e))
    }

    /// WRITE: bytes for a write pipe the compositor handed over.
    pub(super) fn channel_write(&mut self, ctx_id: u32, write: &ReadWrite) -> Result<(), Reject> {
        let Some(channel) = self.contexts.get_mut(ctx_id)?.channel.as_mut() else {
            return Err(no_channel(ctx_id, "WRITE"));
        };
        channel
            .channel
            .write(write)
            .map_err(|e| channel_reject(ctx_id, "WRITE", &e))
    }

    /// POLL: the guest wants the next event. The event itself answers the POLL's fence on
    /// the channel ring ([`GpuDevice::channel_fence`]); an unfenced POLL only checks that
    /// there is a channel.
    pub(super) fn channel_poll(&mut self, ctx_id: u32) -> Result<(), Reject> {
        match self.contexts.get_mut(ctx_id)?.channel {
            Some(_) => Ok(()),
            None => Err(no_channel(ctx_id, "POLL")),
        }
    }

    /// A fenced command on `timeline`: when that is the channel ring of a context with a
    /// channel, its answer waits until one event was written into the ring (rutabaga's rule:
    /// every fence on the channel ring is one event; guests fence only their POLLs there).
    /// Writes an event at once when one is ready and no earlier fence waits. Returns whether
    /// the answer waits.
    pub(crate) fn channel_fence(
        &mut self,
        mem: &GuestMemory,
        hdr: &CtrlHeader,
        timeline: Timeline,
    ) -> bool {
        let Timeline::Ring { ctx_id, ring } = timeline else {
            return false;
        };
        if u32::from(ring) != CHANNEL_RING {
            return false;
        }
        let Some(channel) = self.contexts.channel_mut(ctx_id) else {
            return false;
        };
        channel.waiting.push_back(hdr.fence_id);
        !self.deliver(mem, ctx_id).contains(&hdr.fence_id)
    }

    /// Writes events into the channel ring of `ctx_id` while fences wait for them, one event
    /// per fence, and signals those fences; a channel that fails is closed (its waiting
    /// fences are released). Returns the fences answered.
    fn deliver(&mut self, mem: &GuestMemory, ctx_id: u32) -> Vec<Waiting> {
        let mut answered = Vec::new();
        let timeline = Timeline::Ring {
            ctx_id,
            ring: CHANNEL_RING as u8,
        };
        loop {
            let Some(channel) = self.contexts.channel_mut(ctx_id) else {
                return answered;
            };
            if channel.waiting.is_empty() {
                if let Err(e) = channel.channel.want_events(false) {
                    debug!("ctx_id {ctx_id}: Wayland channel: {e}");
                }
                return answered;
            }
            let event = match channel.channel.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => {
                    if let Err(e) = channel.channel.want_events(true) {
                        self.log_reject(format_args!(
                            "ctx_id {ctx_id}: Wayland channel: {e}; closing it"
                        ));
                        self.close_channel(ctx_id);
                    }
                    return answered;
                }
                Err(e) => {
                    // The compositor's doing (a broken stream, too many fds): the channel
                    // turned itself closed and tells the guest with its next event.
                    guest_info!("ctx_id {ctx_id}: Wayland channel: {e}");
                    continue;
                }
            };
            let ring = channel.ring;
            let write = match self.resources.get(ring).map(|r| &r.kind) {
                Ok(ResourceKind::GuestBlob { backing, .. }) => {
                    backing.write(mem, 0, &event).map_err(|e| e.to_string())
                }
                _ => Err("the channel ring is gone".to_string()),
            };
            if let Err(e) = write {
                self.log_reject(format_args!(
                    "ctx_id {ctx_id}: writing an event into channel ring {ring}: {e}; closing \
                     the channel"
                ));
                self.close_channel(ctx_id);
                return answered;
            }
            if let Some(fence) = self
                .contexts
                .channel_mut(ctx_id)
                .and_then(|c| c.waiting.pop_front())
            {
                self.fences.signal(timeline, fence);
                answered.push(fence);
            }
        }
    }

    /// Closes the channel of `ctx_id`: its waiting fences are answered (nothing was written
    /// for them; the guest finds the channel gone on its next command).
    fn close_channel(&mut self, ctx_id: u32) {
        if let Ok(ctx) = self.contexts.get_mut(ctx_id) {
            if ctx.channel.take().is_some() {
                self.fences.release_context(ctx_id);
            }
        }
    }

    /// Lets every channel move bytes and writes the events waiting fences asked for.
    pub(crate) fn service_channels(&mut self, mem: &GuestMemory) {
        let ids: Vec<u32> = self.contexts.channels_mut().map(|(id, _)| id).collect();
        for ctx_id in ids {
            if let Some(channel) = self.contexts.channel_mut(ctx_id) {
                if let Err(e) = channel.channel.flush() {
                    debug!("ctx_id {ctx_id}: Wayland channel flush: {e}");
                }
            }
            self.deliver(mem, ctx_id);
        }
    }

    /// `RESOURCE_CREATE_BLOB` (HOST3D) of item `blob_id` of a RECEIVE: the buffer the
    /// compositor handed in becomes the resource (mapped later only if the advisor allows).
    pub(super) fn received_blob(
        &mut self,
        ctx_id: u32,
        p: &CreateBlob,
        mut charge: Charge,
    ) -> Result<Resource, Reject> {
        let rid = p.resource_id;
        let id = u32::try_from(p.blob_id).map_err(|_| {
            reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: blob_id {:#x} is not a 32-bit id",
                    p.blob_id
                ),
            )
        })?;
        let Some(channel) = self.contexts.get_mut(ctx_id)?.channel.as_mut() else {
            return Err(no_channel(
                ctx_id,
                "RESOURCE_CREATE_BLOB of a received item",
            ));
        };
        let blob = channel
            .channel
            .take_blob(id)
            .map_err(|e| channel_reject(ctx_id, &format!("resource_id {rid}"), &e))?;
        if blob.size != p.size {
            let size = blob.size;
            // Dropping the blob closes its fd: the guest was told its size in the RECEIVE,
            // and an item is claimed once.
            drop(blob);
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: size {} differs from the {size} bytes of received \
                     item {id:#x} (the item is dropped)",
                    p.size
                ),
            ));
        }
        charge.absorb(blob.charge);
        debug!(
            "ctx_id {ctx_id}: resource_id {rid}: {} bytes from the compositor ({}, {})",
            blob.size,
            match blob.kind {
                ReceivedKind::Memory => "memory",
                ReceivedKind::Dmabuf => "dma-buf",
            },
            if blob.writable {
                "writable"
            } else {
                "read-only"
            }
        );
        let buffer = HostBuffer {
            fd: blob.fd,
            size: blob.size,
            planes: vec![PlaneLayout::default()],
            modifier: fourcc::MOD_LINEAR,
            is_dmabuf: blob.kind == ReceivedKind::Dmabuf,
        };
        let kind = ResourceKind::HostBlob(HostBlob {
            buffer,
            image: ImageInfo {
                width: 0,
                height: 0,
                drm_format: 0,
            },
            mapped_at: None,
            cpu_map: None,
            writable: blob.writable,
        });
        Ok(Resource::new(kind, blob.size, p.blob_flags, charge))
    }
}

/// The refusal of a channel command on a context without a channel.
fn no_channel(ctx_id: u32, command: &str) -> Reject {
    reject(
        GpuError::InvalidParameter,
        format!(
            "ctx_id {ctx_id}: {command} without a channel (INIT had channel_type 0, or the \
             channel closed with its ring)"
        ),
    )
}
