//! Taking the device's state as data and building a device from it (live upgrade,
//! DESIGN-lifecycle.md 4): [`GpuDevice::snapshot`] and [`GpuDevice::restore`]. The state
//! types are in `device/snapshot.rs`; this file needs the device itself, so it lives with the
//! other code that does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};

use crate::device::backing::Backing;
use crate::device::budget::Kind;
use crate::device::context::{Context, Pending, Requirement};
use crate::device::ports::{BufferRequest, GuestMemory, HostBuffer, PlaneLayout};
use crate::device::resource::{
    AttachedBacking, HostBlob, Image2d, ImageInfo, Resource, ResourceKind,
};
use crate::device::scanout::{
    BlobView, CursorState, FrameMemory, Scanout, Scanouts, Shown, ShownView,
};
use crate::device::snapshot::{
    Amount, BufferState, BulkRef, BulkSource, ContextState, DeviceState, RequestState,
    RequirementState, ResourceKindState, ResourceState, RestoreError, ShownState, Snapshot,
};
use crate::device::{DeviceConfig, GpuDevice, Ports};
use crate::protocol::cross_domain::ImageRequirements;
use crate::protocol::{MemEntry, Rect};

struct Taker<'a> {
    fds: &'a mut Vec<Option<OwnedFd>>,
}

impl Taker<'_> {
    fn take(&mut self, index: usize) -> Result<OwnedFd, RestoreError> {
        self.fds
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(RestoreError::MissingFd(index))
    }

    fn buffer(&mut self, b: &BufferState) -> Result<HostBuffer, RestoreError> {
        Ok(HostBuffer {
            fd: self.take(b.fd)?,
            size: b.size,
            planes: b
                .planes
                .iter()
                .map(|&(offset, stride)| PlaneLayout { offset, stride })
                .collect(),
            modifier: b.modifier,
            is_dmabuf: b.is_dmabuf,
        })
    }
}

fn entries_of(backing: &Backing) -> Vec<(u64, u32)> {
    backing
        .entries()
        .iter()
        .map(|e| (e.addr, e.length))
        .collect()
}

fn mem_entries(entries: &[(u64, u32)]) -> Vec<MemEntry> {
    entries
        .iter()
        .map(|&(addr, length)| MemEntry { addr, length })
        .collect()
}

fn buffer_state(buffer: &HostBuffer, fds: &mut Vec<OwnedFd>) -> std::io::Result<BufferState> {
    fds.push(buffer.fd.as_fd().try_clone_to_owned()?);
    Ok(BufferState {
        fd: fds.len() - 1,
        size: buffer.size,
        planes: buffer.planes.iter().map(|p| (p.offset, p.stride)).collect(),
        modifier: buffer.modifier,
        is_dmabuf: buffer.is_dmabuf,
    })
}

fn request_state(r: BufferRequest) -> RequestState {
    match r {
        BufferRequest::Image {
            width,
            height,
            drm_format,
            usage,
        } => RequestState::Image {
            width,
            height,
            drm_format,
            usage,
        },
        BufferRequest::Bytes { size } => RequestState::Bytes { size },
    }
}

fn request_of(r: RequestState) -> BufferRequest {
    match r {
        RequestState::Image {
            width,
            height,
            drm_format,
            usage,
        } => BufferRequest::Image {
            width,
            height,
            drm_format,
            usage,
        },
        RequestState::Bytes { size } => BufferRequest::Bytes { size },
    }
}

impl GpuDevice {
    /// Why this device's state cannot be handed to another process now, if it cannot: an
    /// answer waits for a fence (its chain lives in the transport), a context lives in the
    /// renderer (its state is inside the renderer), or a context has a channel to the
    /// compositor (a connection to a compositor cannot be carried).
    pub fn handover_blocker(&self) -> Option<String> {
        let pending = self.pending_fences();
        if pending > 0 {
            return Some(format!(
                "{pending} fenced answer(s) wait for their fences; try again when the guest is idle"
            ));
        }
        let renderer: Vec<u32> = self
            .contexts
            .iter()
            .filter(|(_, c)| c.renderer.is_some())
            .map(|(id, _)| id)
            .collect();
        if !renderer.is_empty() {
            return Some(format!(
                "context(s) {renderer:?} live in the renderer, whose state cannot be carried"
            ));
        }
        // 3D resources and renderer blobs live in the renderer too (a 3D resource needs no
        // context).
        let in_renderer: Vec<u32> = self
            .resources
            .iter()
            .filter(|(_, r)| matches!(r.kind, ResourceKind::Renderer(_)))
            .map(|(id, _)| id)
            .collect();
        if !in_renderer.is_empty() {
            return Some(format!(
                "resource(s) {in_renderer:?} live in the renderer, whose state cannot be carried"
            ));
        }
        let channels: Vec<u32> = self
            .contexts
            .iter()
            .filter(|(_, c)| c.channel.is_some())
            .map(|(id, _)| id)
            .collect();
        if !channels.is_empty() {
            return Some(format!(
                "context(s) {channels:?} have a Wayland channel; a connection to the compositor cannot be carried"
            ));
        }
        None
    }

    /// The device's state, with duplicates of its buffers' fds and its 2D pixel copies.
    pub fn snapshot(&self) -> std::io::Result<Snapshot> {
        let mut fds = Vec::new();
        let mut bulk = Vec::new();
        let mut resources = Vec::with_capacity(self.resources.len());
        for (id, r) in self.resources.iter() {
            let kind = match &r.kind {
                ResourceKind::Image2d(img) => {
                    let offset = bulk.len() as u64;
                    bulk.extend_from_slice(&img.pixels);
                    ResourceKindState::Image2d {
                        drm_format: img.drm_format,
                        width: img.width,
                        height: img.height,
                        stride: img.stride,
                        pixels: BulkRef {
                            offset,
                            len: img.pixels.len() as u64,
                        },
                        backing: img
                            .backing
                            .as_ref()
                            .map(|b| (entries_of(&b.backing), Amount::of(b._charge.amount()))),
                    }
                }
                ResourceKind::GuestBlob { backing, dmabuf } => {
                    let dmabuf = match dmabuf {
                        Some(fd) => {
                            fds.push(fd.try_clone()?);
                            Some(fds.len() - 1)
                        }
                        None => None,
                    };
                    ResourceKindState::GuestBlob {
                        entries: entries_of(backing),
                        dmabuf,
                    }
                }
                ResourceKind::HostBlob(blob) => ResourceKindState::HostBlob {
                    buffer: buffer_state(&blob.buffer, &mut fds)?,
                    image: (blob.image.width, blob.image.height, blob.image.drm_format),
                    mapped_at: blob.mapped_at,
                    writable: blob.writable,
                },
                // Refused by `handover_blocker` before any snapshot is taken.
                ResourceKind::Renderer(_) => {
                    return Err(std::io::Error::other(format!(
                        "resource_id {id} lives in the renderer, whose state cannot be carried"
                    )))
                }
            };
            resources.push(ResourceState {
                id,
                size: r.size,
                blob_flags: r.blob_flags,
                uuid: r.uuid,
                charge: Amount::of(r.charge_amount()),
                kind,
            });
        }
        let mut contexts = Vec::with_capacity(self.contexts.len());
        for (id, c) in self.contexts.iter() {
            let (attached, requirements, pending_order, last_blob_id, charge) = c.parts();
            let mut reqs = Vec::with_capacity(requirements.len());
            for (&blob_id, q) in requirements {
                let pending = match &q.pending {
                    Some(p) => Some((
                        buffer_state(&p.buffer, &mut fds)?,
                        Amount::of(p.charge.amount()),
                    )),
                    None => None,
                };
                reqs.push(RequirementState {
                    blob_id,
                    request: request_state(q.request),
                    image: (q.image.width, q.image.height, q.image.drm_format),
                    reqs: q.reqs.encode(),
                    pending,
                });
            }
            contexts.push(ContextState {
                id,
                debug_name: c.debug_name.clone(),
                cross_domain: c.cross_domain,
                attached: attached.iter().copied().collect(),
                query_ring: c.query_ring,
                requirements: reqs,
                pending_order: pending_order.iter().copied().collect(),
                last_blob_id,
                charge: Amount::of(charge),
            });
        }
        let mut modes = Vec::new();
        let mut shown = Vec::new();
        for (_, s) in self.scanouts.iter() {
            modes.push(s.mode);
            shown.push(
                s.shown
                    .as_ref()
                    .map(|Shown { view: v, memory }| ShownState {
                        resource_id: v.resource_id,
                        rect: (v.rect.x, v.rect.y, v.rect.width, v.rect.height),
                        blob: v.blob.map(|b| {
                            (
                                b.width,
                                b.height,
                                b.format,
                                b.drm_format,
                                b.stride,
                                b.offset,
                            )
                        }),
                        dmabuf: v.dmabuf,
                        charge: Amount::of(memory.charge.amount()),
                    }),
            );
        }
        let c = self.scanouts.cursor;
        Ok(Snapshot {
            state: DeviceState {
                acked_features: self.acked_features,
                shmem_available: self.shmem_available,
                events_read: self.events_read,
                outputs: self.config.outputs.clone(),
                modes,
                shown,
                cursor: (c.resource_id, c.scanout_id, c.x, c.y),
                resources,
                contexts,
                region: self.region.ranges().collect(),
            },
            fds,
            bulk,
        })
    }

    /// A device with `config` and `ports` holding `state` (live upgrade): the buffers come
    /// from `fds` (taken by index), the 2D pixels from `bulk`, guest backings are checked
    /// against `mem`. The display sink in `ports` is not told anything: it continues what
    /// the previous process's sink showed.
    pub fn restore(
        config: DeviceConfig,
        ports: Ports,
        state: &DeviceState,
        mem: &GuestMemory,
        fds: &mut Vec<Option<OwnedFd>>,
        bulk: &dyn BulkSource,
    ) -> Result<GpuDevice, RestoreError> {
        let mut device = GpuDevice::new(config, ports);
        let mut taker = Taker { fds };
        let budget = device.resources.budget().clone_handle();
        let charge = |amount: Amount, what: &str| {
            budget.charge(amount.usage()).map_err(|e| {
                RestoreError::OverBudget(format!(
                    "{what} ({} {} wanted, {} of {} in use)",
                    e.wanted, e.kind, e.used, e.limit
                ))
            })
        };
        device.acked_features = state.acked_features & crate::device::OFFERED_FEATURES;
        device.shmem_available = state.shmem_available;
        device.events_read = state.events_read;
        if state.outputs.len() != device.config.outputs.len()
            || state.modes.len() != device.config.outputs.len()
            || state.shown.len() != device.config.outputs.len()
        {
            return Err(RestoreError::Invalid(format!(
                "{} scanouts in the state, {} configured",
                state.outputs.len(),
                device.config.outputs.len()
            )));
        }
        device.config.outputs = state.outputs.clone();
        for r in &state.resources {
            let kind = match &r.kind {
                ResourceKindState::Image2d {
                    drm_format,
                    width,
                    height,
                    stride,
                    pixels,
                    backing,
                } => {
                    let out_of_range = || RestoreError::Bulk {
                        offset: pixels.offset,
                        len: pixels.len,
                        total: bulk.size(),
                    };
                    if pixels
                        .offset
                        .checked_add(pixels.len)
                        .is_none_or(|end| end > bulk.size())
                    {
                        return Err(out_of_range());
                    }
                    let mut px =
                        vec![0u8; usize::try_from(pixels.len).map_err(|_| out_of_range())?];
                    bulk.read_at(pixels.offset, &mut px)
                        .map_err(|e| RestoreError::Invalid(format!("reading 2D pixels: {e}")))?;
                    let backing = match backing {
                        Some((entries, amount)) => Some(AttachedBacking {
                            backing: Backing::new(mem, mem_entries(entries)).map_err(|e| {
                                RestoreError::Backing {
                                    id: r.id,
                                    reason: e.to_string(),
                                }
                            })?,
                            _charge: charge(*amount, "a backing")?,
                        }),
                        None => None,
                    };
                    ResourceKind::Image2d(Image2d {
                        drm_format: *drm_format,
                        width: *width,
                        height: *height,
                        stride: *stride,
                        pixels: px,
                        backing,
                    })
                }
                ResourceKindState::GuestBlob { entries, dmabuf } => ResourceKind::GuestBlob {
                    backing: Backing::new(mem, mem_entries(entries)).map_err(|e| {
                        RestoreError::Backing {
                            id: r.id,
                            reason: e.to_string(),
                        }
                    })?,
                    dmabuf: match dmabuf {
                        Some(i) => Some(taker.take(*i)?),
                        None => None,
                    },
                },
                ResourceKindState::HostBlob {
                    buffer,
                    image,
                    mapped_at,
                    writable,
                } => ResourceKind::HostBlob(HostBlob {
                    buffer: taker.buffer(buffer)?,
                    image: ImageInfo {
                        width: image.0,
                        height: image.1,
                        drm_format: image.2,
                    },
                    mapped_at: *mapped_at,
                    cpu_map: None,
                    writable: *writable,
                }),
            };
            let mut resource = Resource::new(
                kind,
                r.size,
                r.blob_flags,
                charge(r.charge, &format!("resource_id {}", r.id))?,
            );
            resource.uuid = r.uuid;
            if r.id == 0 || device.resources.contains(r.id) {
                return Err(RestoreError::Invalid(format!(
                    "resource_id {} is invalid or twice in the state",
                    r.id
                )));
            }
            device.resources.insert(r.id, resource);
        }
        for c in &state.contexts {
            let mut requirements = BTreeMap::new();
            for q in &c.requirements {
                let reqs = ImageRequirements::decode(&q.reqs)
                    .map_err(|e| RestoreError::Invalid(format!("image requirements: {e}")))?;
                let pending = match &q.pending {
                    Some((buffer, amount)) => Some(Pending {
                        buffer: taker.buffer(buffer)?,
                        charge: charge(*amount, "a pending buffer")?,
                    }),
                    None => None,
                };
                requirements.insert(
                    q.blob_id,
                    Requirement {
                        request: request_of(q.request),
                        image: ImageInfo {
                            width: q.image.0,
                            height: q.image.1,
                            drm_format: q.image.2,
                        },
                        reqs,
                        pending,
                    },
                );
            }
            if device.contexts.contains(c.id) {
                return Err(RestoreError::Invalid(format!(
                    "ctx_id {} is twice in the state",
                    c.id
                )));
            }
            let attached: BTreeSet<u32> = c.attached.iter().copied().collect();
            if c.charge.usage().get(Kind::Attachments) != attached.len() as u64 {
                return Err(RestoreError::Invalid(format!(
                    "ctx_id {}: {} attachments charged for {} attached resources",
                    c.id,
                    c.charge.usage().get(Kind::Attachments),
                    attached.len()
                )));
            }
            device.contexts.insert(
                c.id,
                Context::restored(
                    c.debug_name.clone(),
                    c.cross_domain,
                    attached,
                    c.query_ring,
                    requirements,
                    c.pending_order.iter().copied().collect::<VecDeque<u32>>(),
                    c.last_blob_id,
                    charge(c.charge, &format!("ctx_id {}", c.id))?,
                ),
            );
        }
        for &(offset, len) in &state.region {
            device
                .region
                .allocate_at(offset, len)
                .map_err(|e| RestoreError::Invalid(format!("region range: {e}")))?;
        }
        // The scanouts last: a device that fails to restore is dropped before it shows
        // anything, so its drop tells the display sink nothing (the previous process still
        // serves that display).
        let mut outputs = Vec::with_capacity(state.modes.len());
        for (id, (&mode, shown)) in state.modes.iter().zip(&state.shown).enumerate() {
            let shown = match shown {
                Some(v) => Some(Shown {
                    view: ShownView {
                        resource_id: v.resource_id,
                        rect: Rect {
                            x: v.rect.0,
                            y: v.rect.1,
                            width: v.rect.2,
                            height: v.rect.3,
                        },
                        blob: v.blob.map(|b| BlobView {
                            width: b.0,
                            height: b.1,
                            format: b.2,
                            drm_format: b.3,
                            stride: b.4,
                            offset: b.5,
                        }),
                        dmabuf: v.dmabuf,
                    },
                    // The copy is made again at the next flush, within what is charged.
                    memory: FrameMemory {
                        scratch: Vec::new(),
                        charge: charge(v.charge, &format!("scanout {id}"))?,
                    },
                }),
                None => None,
            };
            outputs.push(Scanout { mode, shown });
        }
        let (resource_id, scanout_id, x, y) = state.cursor;
        device.scanouts = Scanouts::restored(
            outputs,
            CursorState {
                resource_id,
                scanout_id,
                x,
                y,
            },
        );
        Ok(device)
    }
}
