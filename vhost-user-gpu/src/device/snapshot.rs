//! The device's state as data, for the live upgrade (DESIGN-lifecycle.md 4): everything a
//! [`GpuDevice`](crate::device::GpuDevice) holds, in a serializable [`DeviceState`], with
//! the host buffers' fds and the 2D pixel copies kept apart ([`Snapshot::fds`],
//! [`Snapshot::bulk`]) and referred to by index and offset. Taking and restoring it is in
//! `device/commands/snapshot.rs` (it needs the device; state owners here must not).
//!
//! Charges (every [`Kind`]: host bytes, resources, contexts, open files, context attachments;
//! what resources, contexts, pending buffers, backings and shown scanouts hold) are carried as
//! amounts and charged again against the new device's budgets, so the accounting after a
//! restore is exactly what it was; a new process whose limits cannot take them (a lower
//! open-file limit, say) refuses the state. Guest backings are rebuilt from their
//! entries against the new process's view of guest memory (and checked again).

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::device::budget::{Kind, Usage};

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

/// What a charge holds, by [`Kind`] (in [`Kind::ALL`] order: host bytes, resources,
/// contexts, open files, context attachments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount(pub [u64; Kind::ALL.len()]);

impl Amount {
    /// How much of `kind` it holds.
    pub fn get(self, kind: Kind) -> u64 {
        self.0[Kind::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or_default()]
    }

    /// The amount of `usage`.
    pub(in crate::device) fn of(usage: Usage) -> Self {
        Amount(Kind::ALL.map(|k| usage.get(k)))
    }

    /// The usage this amount stands for.
    pub(in crate::device) fn usage(self) -> Usage {
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
        /// Whether the guest may map it writable (`false` for sealed buffers a compositor
        /// handed in). Written only when `false`, so documents stay readable by binaries
        /// from before read-only blobs (which refuse, and so roll back, those with one).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        writable: bool,
    },
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
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
    /// Attached resources (each charged one attachment in `charge`).
    pub attached: Vec<u32>,
    /// The query ring resource.
    pub query_ring: Option<u32>,
    /// Requirements.
    pub requirements: Vec<RequirementState>,
    /// Blob ids with pending buffers, oldest first.
    pub pending_order: Vec<u32>,
    /// Last blob id handed out.
    pub last_blob_id: u32,
    /// What the context is charged: its place in the contexts budget and its attachments.
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
    /// What showing it is charged (the device's copy and the display sinks').
    pub charge: Amount,
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

/// Where a restore reads the 2D pixel copies ([`Snapshot::bulk`]) from: the bytes
/// themselves, or the file they were sent in (read piece by piece, so the new process never
/// holds them twice).
pub trait BulkSource {
    /// Bytes available.
    fn size(&self) -> u64;
    /// Fills `dst` with the bytes at `offset`.
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> std::io::Result<()>;
}

impl BulkSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, dst: &mut [u8]) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(dst.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        dst.copy_from_slice(src);
        Ok(())
    }
}

impl BulkSource for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn read_at(&self, offset: u64, dst: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, dst, offset)
    }
}
