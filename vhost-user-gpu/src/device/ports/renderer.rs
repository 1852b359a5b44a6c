//! The [`Renderer`] port: what the device core asks of a 3D renderer (virgl contexts for
//! OpenGL, venus contexts for Vulkan). The implementation over virglrenderer lives in
//! `crate::renderer`, beside the other port implementations.
//!
//! Every call returns without waiting for the GPU. Fence completions arrive through
//! [`Renderer::poll_fd`] (readable when something may have completed) and
//! [`Renderer::poll`] (never blocks).

use std::os::fd::{BorrowedFd, OwnedFd};

use super::GuestMemory;
pub use crate::protocol::{Box3d, Resource3d, Transfer3d};

/// A capset the renderer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsetInfo {
    /// `VIRTIO_GPU_CAPSET_*`.
    pub id: u32,
    /// Highest version served.
    pub max_version: u32,
    /// Size of the capset data.
    pub max_size: u32,
}

/// `RESOURCE_CREATE_BLOB` for a renderer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRequest {
    /// The context the blob comes from.
    pub ctx_id: u32,
    /// `VIRTIO_GPU_BLOB_MEM_*`.
    pub blob_mem: u32,
    /// `VIRTIO_GPU_BLOB_FLAG_*`.
    pub blob_flags: u32,
    /// The context's allocation id.
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What kind of fd a renderer exported for a blob (what the renderer says; dmabuf-info
/// checks what it really is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobFdKind {
    /// A dma-buf.
    Dmabuf,
    /// An opaque Vulkan memory fd (a memfd with software drivers).
    Opaque,
    /// Shared memory (a memfd).
    Shm,
}

impl std::fmt::Display for BlobFdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobFdKind::Dmabuf => "dma-buf",
            BlobFdKind::Opaque => "opaque fd",
            BlobFdKind::Shm => "shared memory",
        })
    }
}

/// A blob exported for mapping.
#[derive(Debug)]
pub struct ExportedBlob {
    /// The fd (ours).
    pub fd: OwnedFd,
    /// What the renderer says it is.
    pub kind: BlobFdKind,
    /// Where the blob's bytes start in `fd` (0 for dma-bufs and shared memory; an OPAQUE
    /// fd's layout is the driver's: lavapipe's memfd starts with a header page).
    pub fd_offset: u64,
    /// The renderer's own idea of the caching (`VIRTIO_GPU_MAP_CACHE_*`), for the log
    /// line beside dmabuf-info's answer; `None` when it has none.
    pub renderer_map_info: Option<u32>,
}

/// How a 3D resource can be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// virgl format.
    pub virgl_format: u32,
    /// DRM fourcc of the pixels as [`Renderer::read_pixels`] returns them (0: not a
    /// 4-byte colour format, cannot be read back).
    pub drm_fourcc: u32,
    /// Row 0 is the top row (`VIRGL_RESOURCE_Y_0_TOP`); GL textures are bottom-up otherwise.
    pub y_0_top: bool,
}

/// A dma-buf export of a 3D resource, for frontends that take dma-buf scanouts.
#[derive(Debug)]
pub struct ScanoutExport {
    /// The dma-buf.
    pub fd: OwnedFd,
    /// Bytes per row.
    pub stride: u32,
    /// Offset of the first pixel.
    pub offset: u32,
    /// DRM fourcc.
    pub drm_fourcc: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A fence the renderer signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceSignal {
    /// The context (the one named when the fence was created).
    pub ctx_id: u32,
    /// The ring (`Some` for `VIRTIO_GPU_FLAG_INFO_RING_IDX` fences).
    pub ring: Option<u32>,
    /// The guest's fence id.
    pub fence_id: u64,
}

/// What [`Renderer::poll`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendererEvent {
    /// A fence completed (and every earlier fence of its timeline).
    Fence(FenceSignal),
    /// The render server (venus contexts) is gone; its contexts are dead and new venus
    /// contexts fail. Virgl and the rest of the device keep working.
    RenderServerLost(String),
    /// The renderer stopped (a failure on its thread): every renderer context is lost, every
    /// later request fails with [`RendererError::Gone`] and nothing more is reported. 2D and
    /// cross-domain keep working. Reported once per renderer handle.
    RendererLost(String),
}

/// Why a renderer request failed. The device answers `ERR_INVALID_PARAMETER` for
/// [`RendererError::Invalid`], `ERR_INVALID_CONTEXT_ID` for [`RendererError::NoCapset`],
/// `ERR_UNSPEC` otherwise.
#[derive(Debug, thiserror::Error)]
pub enum RendererError {
    /// The renderer library is not available on this host (not installed, too old).
    #[error("{0}")]
    Unavailable(String),
    /// Starting the renderer failed.
    #[error("cannot start the renderer: {0}")]
    Start(String),
    /// The renderer refused or failed a request it was given.
    #[error("{0}")]
    Failed(String),
    /// A capset this renderer does not serve.
    #[error("capset {0} is not served by this renderer")]
    NoCapset(u32),
    /// A malformed request (caught before the renderer library sees it).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Backing outside guest memory.
    #[error("guest range {addr:#x}+{len:#x} is not in guest memory")]
    OutsideGuestMemory {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The renderer thread is gone (it panicked or was stopped).
    #[error(
        "the renderer stopped (see the backend's log); 3D commands fail until the backend \
         restarts"
    )]
    Gone,
}

/// The device core's port to a 3D renderer. Every call returns without waiting for the
/// GPU; fence completions arrive through [`Renderer::poll_fd`] and [`Renderer::poll`].
///
/// Not `Send` by itself: virglrenderer must stay on the thread that initialised it. The
/// device holds a [`SendRenderer`] (for virglrenderer: a handle to the renderer's own
/// thread).
pub trait Renderer {
    /// Short name for logs (`virglrenderer`).
    fn name(&self) -> &'static str;
    /// The capsets served, fixed for the renderer's lifetime.
    fn capsets(&self) -> Vec<CapsetInfo>;
    /// `GET_CAPSET` data.
    fn capset(&mut self, id: u32, version: u32) -> Result<Vec<u8>, RendererError>;
    /// `CTX_CREATE` of a context with a renderer capset.
    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: u32,
        name: &[u8],
    ) -> Result<(), RendererError>;
    /// `CTX_DESTROY`.
    fn context_destroy(&mut self, ctx_id: u32);
    /// `CTX_ATTACH_RESOURCE`.
    fn context_attach(&mut self, ctx_id: u32, res_id: u32);
    /// `CTX_DETACH_RESOURCE`.
    fn context_detach(&mut self, ctx_id: u32, res_id: u32);
    /// `RESOURCE_CREATE_3D`.
    fn resource_create_3d(&mut self, res_id: u32, args: &Resource3d) -> Result<(), RendererError>;
    /// `RESOURCE_ATTACH_BACKING` of a 3D resource: guest physical (address, length) ranges.
    /// The renderer keeps the memory mapped until the backing is detached.
    fn attach_backing(
        &mut self,
        res_id: u32,
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(), RendererError>;
    /// `RESOURCE_DETACH_BACKING`.
    fn detach_backing(&mut self, res_id: u32);
    /// `RESOURCE_CREATE_BLOB` of a renderer blob (HOST3D, or HOST3D_GUEST and GUEST with
    /// `backing`).
    fn resource_create_blob(
        &mut self,
        res_id: u32,
        request: &BlobRequest,
        backing: Option<(&GuestMemory, &[(u64, u64)])>,
    ) -> Result<(), RendererError>;
    /// `RESOURCE_UNREF`.
    fn resource_unref(&mut self, res_id: u32);
    /// `TRANSFER_TO_HOST_3D`.
    fn transfer_to_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        transfer: &Transfer3d,
    ) -> Result<(), RendererError>;
    /// `TRANSFER_FROM_HOST_3D`.
    fn transfer_from_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        transfer: &Transfer3d,
    ) -> Result<(), RendererError>;
    /// `SUBMIT_3D`.
    fn submit(&mut self, ctx_id: u32, commands: &[u8]) -> Result<(), RendererError>;
    /// A fence after everything submitted so far: on a context's `ring`, or (ring `None`)
    /// on the global timeline, where fences complete in creation order.
    fn create_fence(
        &mut self,
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    ) -> Result<(), RendererError>;
    /// Readable when [`Renderer::poll`] may have something to report.
    fn poll_fd(&self) -> BorrowedFd<'_>;
    /// Reports what completed since the last call. Never blocks.
    fn poll(&mut self) -> Vec<RendererEvent>;
    /// `RESOURCE_MAP_BLOB`'s first half: the blob's fd, for the policy to judge.
    fn export_blob(&mut self, res_id: u32) -> Result<ExportedBlob, RendererError>;
    /// How a 3D resource can be shown (`SET_SCANOUT`).
    fn resource_info(&mut self, res_id: u32) -> Result<ResourceInfo, RendererError>;
    /// The pixels of a 3D resource's level 0 (`width` x `height` from the top-left corner),
    /// top row first, 4 bytes per pixel in [`ResourceInfo::drm_fourcc`].
    fn read_pixels(
        &mut self,
        res_id: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, RendererError>;
    /// A dma-buf of a 3D resource for a dma-buf scanout, where the host can export one.
    fn export_scanout(&mut self, res_id: u32) -> Result<ScanoutExport, RendererError>;
    /// Device reset: every context and resource is destroyed.
    fn reset(&mut self);
}

/// A renderer the device can own (it moves between threads with the device).
pub type SendRenderer = Box<dyn Renderer + Send>;
