//! The device's state as data, for the live upgrade (DESIGN-lifecycle.md 4): everything a
//! [`GpuDevice`] holds, in a serializable [`DeviceState`], with the host buffers' fds and the
//! 2D pixel copies kept apart ([`Snapshot::fds`], [`Snapshot::bulk`]) and referred to by
//! index and offset.
//!
//! Charges are carried as amounts and charged again against the new device's budgets, so the
//! accounting after a restore is exactly what it was. Guest backings are rebuilt from their
//! entries against the new process's view of guest memory (and checked again).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::backing::Backing;
use super::budget::{Kind, Usage};
use super::context::{Context, Pending, Requirement};
use super::resource::{AttachedBacking, HostBlob, Image2d, ImageInfo, Resource, ResourceKind};
use super::scanout::{BlobView, CursorState, Scanout, Scanouts, Shown};
use super::{DeviceConfig, GpuDevice, Ports};
use crate::device::ports::{BufferRequest, GuestMemory, HostBuffer, PlaneLayout};
use crate::protocol::cross_domain::ImageRequirements;
use crate::protocol::{MemEntry, Rect};

/// Why a device state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state refers to an fd that was not sent.
    #[error("fd {0} is missing")]
    MissingFd(usize),
    /// The state refers to bulk data outside what was sent.
    #[error("bulk data {offset:#x}+{len:#x} is outside the {total:#x} bytes sent")]
    Bulk {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Bytes sent.
        total: u64,
    },
    /// Restoring the state would exceed the device's limits (another configuration).
    #[error("{0} would exceed this device's limits")]
    OverBudget(String),
    /// A guest backing is not inside the guest memory the frontend gave.
    #[error("resource {id}: backing: {reason}")]
    Backing {
        /// Resource id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// A value does not fit this device (a scanout that does not exist, a bad range...).
    #[error("{0}")]
    Invalid(String),
}

/// What a charge holds, by [`Kind`] (in [`Kind::ALL`] order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount(pub [u64; 3]);

impl Amount {
    fn of(usage: Usage) -> Self {
        Amount(Kind::ALL.map(|k| usage.get(k)))
    }

    fn usage(self) -> Usage {
        Kind::ALL
            .iter()
            .zip(self.0)
            .fold(Usage::ZERO, |u, (&k, n)| u.with(k, n))
    }
}

/// A part of [`Snapshot::bulk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRef {
    /// Offset in the bulk data.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// A host buffer, its fd by index in [`Snapshot::fds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferState {
    /// Index of the fd.
    pub fd: usize,
    /// Size in bytes.
    pub size: u64,
    /// Plane layouts, `(offset, stride)`.
    pub planes: Vec<(u32, u32)>,
    /// Format modifier.
    pub modifier: u64,
    /// Whether it is a dma-buf.
    pub is_dmabuf: bool,
}

/// What a resource is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ResourceKindState {
    /// A 2D image.
    Image2d {
        /// DRM fourcc.
        drm_format: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Bytes per row.
        stride: u32,
        /// The host copy of the pixels.
        pixels: BulkRef,
        /// The guest backing (`(address, length)` entries) and what its list is charged.
        backing: Option<(Vec<(u64, u32)>, Amount)>,
    },
    /// A GUEST blob.
    GuestBlob {
        /// Its guest memory entries.
        entries: Vec<(u64, u32)>,
        /// Index of the udmabuf export, if any.
        dmabuf: Option<usize>,
    },
    /// A HOST3D blob.
    HostBlob {
        /// The host buffer.
        buffer: BufferState,
        /// Image the buffer was allocated for: width, height, DRM fourcc.
        image: (u32, u32, u32),
        /// Where it is mapped in the host-visible region.
        mapped_at: Option<u64>,
    },
}

/// One resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceState {
    /// Resource id.
    pub id: u32,
    /// Blob size or pixel bytes.
    pub size: u64,
    /// Blob flags.
    pub blob_flags: u32,
    /// Assigned UUID.
    pub uuid: Option<[u8; 16]>,
    /// What it is charged.
    pub charge: Amount,
    /// What it is.
    pub kind: ResourceKindState,
}

/// What an allocator was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestState {
    /// A linear image.
    Image {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// DRM fourcc.
        drm_format: u32,
        /// Usage flags.
        usage: u32,
    },
    /// Bytes.
    Bytes {
        /// Size.
        size: u64,
    },
}

/// One cross-domain image requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementState {
    /// Blob id handed out.
    pub blob_id: u32,
    /// What was asked of the allocator.
    pub request: RequestState,
    /// Width, height, DRM fourcc.
    pub image: (u32, u32, u32),
    /// What the guest was told, in its wire form.
    pub reqs: Vec<u8>,
    /// The buffer allocated and not yet claimed, with its charge.
    pub pending: Option<(BufferState, Amount)>,
}

/// One context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextState {
    /// Context id.
    pub id: u32,
    /// The guest's debug name.
    pub debug_name: String,
    /// Cross-domain (capset 5) or the default context.
    pub cross_domain: bool,
    /// Attached resources.
    pub resources: Vec<u32>,
    /// The query ring resource.
    pub query_ring: Option<u32>,
    /// Requirements.
    pub requirements: Vec<RequirementState>,
    /// Blob ids with pending buffers, oldest first.
    pub pending_order: Vec<u32>,
    /// Last blob id handed out.
    pub last_blob_id: u32,
    /// What the context is charged.
    pub charge: Amount,
}

/// What a scanout shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShownState {
    /// Resource shown.
    pub resource_id: u32,
    /// Rectangle `(x, y, width, height)`.
    pub rect: (u32, u32, u32, u32),
    /// Blob layout: width, height, virtio format, DRM fourcc, stride, offset.
    pub blob: Option<(u32, u32, u32, u32, u32, u32)>,
    /// Whether the sink took it as a dma-buf.
    pub dmabuf: bool,
}

/// Everything a device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// Features the driver acked.
    pub acked_features: u64,
    /// Whether the frontend set up shared memory.
    pub shmem_available: bool,
    /// Pending config events.
    pub events_read: u32,
    /// Output resolutions (the configuration as changed by the display).
    pub outputs: Vec<(u32, u32)>,
    /// Connected mode of each scanout.
    pub modes: Vec<Option<(u32, u32)>>,
    /// What each scanout shows.
    pub shown: Vec<Option<ShownState>>,
    /// Last cursor: resource, scanout, x, y.
    pub cursor: (u32, u32, u32, u32),
    /// Resources.
    pub resources: Vec<ResourceState>,
    /// Contexts.
    pub contexts: Vec<ContextState>,
    /// Reserved ranges of the host-visible region.
    pub region: Vec<(u64, u64)>,
    /// Rejected requests so far (log rate limiting goes on where it was).
    pub rejects: u64,
}

/// A device's state with what it refers to.
#[derive(Debug)]
pub struct Snapshot {
    /// The state.
    pub state: DeviceState,
    /// Duplicates of the host buffers' fds, by index.
    pub fds: Vec<OwnedFd>,
    /// 2D pixel copies.
    pub bulk: Vec<u8>,
}

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
    backing.entries().iter().map(|e| (e.addr, e.length)).collect()
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
                        backing: img.backing.as_ref().map(|b| {
                            (entries_of(&b.backing), Amount::of(b._charge.amount()))
                        }),
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
                },
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
            let (requirements, pending_order, last_blob_id, charge) = c.parts();
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
                resources: c.resources.iter().copied().collect(),
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
            shown.push(s.shown.as_ref().map(|v| ShownState {
                resource_id: v.resource_id,
                rect: (v.rect.x, v.rect.y, v.rect.width, v.rect.height),
                blob: v
                    .blob
                    .map(|b| (b.width, b.height, b.format, b.drm_format, b.stride, b.offset)),
                dmabuf: v.dmabuf,
            }));
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
                rejects: self.rejects,
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
        bulk: &[u8],
    ) -> Result<GpuDevice, RestoreError> {
        let mut device = GpuDevice::new(config, ports);
        let mut taker = Taker { fds };
        let budget = device.resources.budget().clone_handle();
        let charge = |amount: Amount, what: &str| {
            budget
                .charge(amount.usage())
                .map_err(|e| {
                    RestoreError::OverBudget(format!(
                        "{what} ({} {} wanted, {} of {} in use)",
                        e.wanted, e.kind, e.used, e.limit
                    ))
                })
        };
        device.acked_features = state.acked_features & super::OFFERED_FEATURES;
        device.shmem_available = state.shmem_available;
        device.events_read = state.events_read;
        device.rejects = state.rejects;
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
                    let end = pixels.offset.checked_add(pixels.len);
                    let Some(px) = end.and_then(|end| {
                        bulk.get(usize::try_from(pixels.offset).ok()?..usize::try_from(end).ok()?)
                    }) else {
                        return Err(RestoreError::Bulk {
                            offset: pixels.offset,
                            len: pixels.len,
                            total: bulk.len() as u64,
                        });
                    };
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
                        pixels: px.to_vec(),
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
                } => ResourceKind::HostBlob(HostBlob {
                    buffer: taker.buffer(buffer)?,
                    image: ImageInfo {
                        width: image.0,
                        height: image.1,
                        drm_format: image.2,
                    },
                    mapped_at: *mapped_at,
                    cpu_map: None,
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
            device.contexts.insert(
                c.id,
                Context::restored(
                    c.debug_name.clone(),
                    c.cross_domain,
                    c.resources.iter().copied().collect::<BTreeSet<u32>>(),
                    c.query_ring,
                    requirements,
                    c.pending_order.iter().copied().collect::<VecDeque<u32>>(),
                    c.last_blob_id,
                    charge(c.charge, &format!("ctx_id {}", c.id))?,
                ),
            );
        }
        let outputs = state
            .modes
            .iter()
            .zip(&state.shown)
            .map(|(&mode, shown)| Scanout {
                mode,
                shown: shown.as_ref().map(|v| Shown {
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
                }),
            })
            .collect();
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
        for &(offset, len) in &state.region {
            device
                .region
                .allocate_at(offset, len)
                .map_err(|e| RestoreError::Invalid(format!("region range: {e}")))?;
        }
        Ok(device)
    }
}
