//! The device core's ports: the small interfaces through which the state machine reaches
//! the outside world (host buffer allocation, the host-visible shared memory region, display
//! output, the "may a guest map this buffer?" question, a 3D renderer, and the host end of
//! cross-domain channels).
//!
//! The transport (`crate::transport`) and the binary wire real implementations into
//! [`crate::device::GpuDevice`]; tests wire in their own. Nothing here knows about sockets
//! or virtqueues.

use std::os::fd::{BorrowedFd, OwnedFd};

mod channel;
mod renderer;

pub use channel::{
    BlobExporter, Channel, ChannelConnector, ChannelError, ReceivedBlob, ReceivedKind,
};
pub use renderer::{
    BlobFdKind, BlobRequest, Box3d, CapsetInfo, ExportedBlob, FenceSignal, Renderer, RendererError,
    RendererEvent, Resource3d, ResourceInfo, ScanoutExport, SendRenderer, Transfer3d,
};

/// The protocol types the ports speak in (defined in [`crate::protocol`]), so that a port
/// implementation can name everything from here.
pub use crate::protocol::{fourcc, Rect};

/// Guest memory as the vhost-user backend library hands it to us.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Page size: host buffer sizes and host-visible region ranges are multiples of it.
pub const PAGE_SIZE: u64 = 4096;

/// Largest image width or height the device asks an allocator for (cross-domain
/// `GET_IMAGE_REQUIREMENTS` beyond it is refused before any allocation).
pub const MAX_IMAGE_DIMENSION: u32 = 16384;

/// What the device asks an allocator for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferRequest {
    /// A linear image (cross-domain GET_IMAGE_REQUIREMENTS).
    Image {
        /// Width in pixels (1..=[`MAX_IMAGE_DIMENSION`], checked by the caller).
        width: u32,
        /// Height in pixels (1..=[`MAX_IMAGE_DIMENSION`], checked by the caller).
        height: u32,
        /// DRM fourcc.
        drm_format: u32,
        /// GBM-style usage flags, passed through to allocators that understand them.
        usage: u32,
    },
    /// An untyped byte buffer of `size` bytes (already rounded up to the page size).
    Bytes {
        /// Size in bytes.
        size: u64,
    },
}

/// One plane of an allocated image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneLayout {
    /// Byte offset of the plane in the buffer.
    pub offset: u32,
    /// Bytes per row.
    pub stride: u32,
}

/// A host buffer, exported as a file descriptor (a dma-buf or a memfd), zero-filled.
#[derive(Debug)]
pub struct HostBuffer {
    /// The buffer's fd. Mapping is done through this fd.
    pub fd: OwnedFd,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
    /// Plane layouts; one entry for `Bytes` requests (offset 0, stride 0).
    pub planes: Vec<PlaneLayout>,
    /// Format modifier (`fourcc::MOD_LINEAR` for linear buffers).
    pub modifier: u64,
    /// Whether the buffer is a dma-buf (`false`: a plain memfd).
    pub is_dmabuf: bool,
}

/// Allocation failure, mapped to `ERR_OUT_OF_MEMORY` or `ERR_INVALID_PARAMETER` by the device.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The request cannot be satisfied by this allocator (bad format, size too large...).
    #[error("unsupported buffer request: {0}")]
    Unsupported(String),
    /// The host ran out of memory or the allocator failed at the OS level.
    #[error("allocation failed: {0}")]
    Os(#[from] std::io::Error),
}

/// Allocates zero-filled host buffers.
pub trait BufferAllocator: Send {
    /// Short name for logs and `--allocator` (`memfd`, `udmabuf`, `gbm`).
    fn name(&self) -> &'static str;
    /// Allocates a zero-filled buffer.
    fn allocate(&mut self, request: &BufferRequest) -> Result<HostBuffer, AllocError>;
    /// The DRM device fd the buffers come from, if any (passed to the map advisor so that
    /// driver ioctls can be asked).
    fn drm_fd(&self) -> Option<BorrowedFd<'_>>;
}

/// A piece of guest RAM named by the memfd behind it: what can be turned into a dma-buf.
#[derive(Debug, Clone, Copy)]
pub struct GuestPages<'a> {
    /// The memfd backing the guest RAM region.
    pub memfd: BorrowedFd<'a>,
    /// Page-aligned offset in the memfd.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}

/// Why guest pages were not exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// This exporter cannot take these pages (too many pieces...); nothing was attempted.
    #[error("{0}")]
    Unsuitable(String),
    /// The kernel refused; the message says why where it can tell.
    #[error("{0}")]
    Refused(String),
}

/// Exports guest RAM as a dma-buf (udmabuf), so that a display sink can import what a GUEST
/// blob shows instead of being handed a copy of its pixels.
pub trait GuestPageExporter: Send {
    /// One dma-buf over `pages`, in order.
    fn export(&mut self, pages: &[GuestPages<'_>]) -> Result<OwnedFd, ExportError>;
}

/// Failure to change the host-visible region.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The frontend did not negotiate the SHMEM protocol feature (or sent no backend channel).
    #[error("frontend has no shared memory region support (SHMEM not negotiated)")]
    NotSupported,
    /// The frontend refused or failed the request.
    #[error("frontend refused the mapping request: {0}")]
    Frontend(String),
}

/// What a [`RegionMapper`] maps: `len` bytes of a buffer from `fd_offset`, at `shm_offset`
/// in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRange {
    /// Offset in the host-visible region.
    pub shm_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the buffer.
    pub fd_offset: u64,
    /// Whether the guest may write through the mapping.
    pub writable: bool,
}

impl MapRange {
    /// The range an unmap names (no buffer).
    pub fn unmap(shm_offset: u64, len: u64) -> Self {
        MapRange {
            shm_offset,
            len,
            fd_offset: 0,
            writable: false,
        }
    }
}

/// Places host buffers in the host-visible shared memory region (shmid 1). Implementations
/// are synchronous: `map` returns only after the frontend acknowledged the mapping.
pub trait RegionMapper: Send {
    /// Whether mapping is possible at all right now (SHMEM negotiated, channel present).
    fn available(&self) -> bool;
    /// Maps `fd` as `range` says.
    fn map(&mut self, fd: BorrowedFd<'_>, range: MapRange) -> Result<(), MapError>;
    /// Removes the mapping at `shm_offset`..`shm_offset+len`.
    fn unmap(&mut self, shm_offset: u64, len: u64) -> Result<(), MapError>;
}

/// A view of a scanout's pixels, handed to display sinks on flush.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per row in `data`.
    pub stride: u32,
    /// DRM fourcc of `data`.
    pub drm_format: u32,
    /// The pixels (`stride * height` bytes at least).
    pub data: &'a [u8],
}

/// A dma-buf shown on a scanout (for frontends that can import it).
#[derive(Debug)]
pub struct DmabufScanout<'a> {
    /// The buffer.
    pub fd: BorrowedFd<'a>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per row.
    pub stride: u32,
    /// DRM fourcc.
    pub drm_format: u32,
    /// Format modifier.
    pub modifier: u64,
    /// Row 0 is the image's top row as a GL texture sees it (virglrenderer's
    /// `VIRGL_RESOURCE_Y_0_TOP`, QEMU's `VIRTIO_GPU_RESOURCE_FLAG_Y_0_TOP`): set for 3D
    /// resources that have it; `false` for blobs, as QEMU's own device sends them.
    pub y0_top: bool,
}

/// Side of the cursor image handed to display sinks, in pixels: 64x64 ARGB8888, the cursor
/// size of virtio-gpu and of QEMU's display protocol.
pub const CURSOR_SIDE: u32 = 64;
/// Bytes of the cursor image.
pub const CURSOR_BYTES: usize = (CURSOR_SIDE * CURSOR_SIDE * 4) as usize;

/// The cursor as a display sink is given it.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    /// Scanout the cursor is on.
    pub scanout_id: u32,
    /// Position.
    pub x: u32,
    /// Position.
    pub y: u32,
    /// Hotspot.
    pub hot_x: u32,
    /// Hotspot.
    pub hot_y: u32,
    /// The image ([`CURSOR_BYTES`] of ARGB8888), or `None` to hide the cursor.
    pub image: Option<&'a [u8]>,
}

/// Receives what the guest shows: QEMU's display channel, PNG capture, or nothing.
pub trait DisplaySink: Send {
    /// How many copies of a shown image, at 4 bytes per pixel of the scanout's rectangle,
    /// this sink may hold at once per scanout (kept between flushes or made during one,
    /// including what an encoder buffers). The device charges them to the guest's budget
    /// while the scanout shows the image, so a sink's memory is bounded like the device's
    /// own. A sink that copies nothing returns 0; the default is 1.
    fn frame_copies(&self) -> u32 {
        1
    }
    /// A scanout was enabled (`Some((width, height))`) or disabled (`None`).
    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>);
    /// The region `damage` of the scanout changed; `frame` is the whole current image.
    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect);
    /// The scanout now shows a dma-buf (only called when the buffer is a dma-buf). Returns
    /// `false` when the sink cannot take dma-bufs; the device then falls back to `flush`.
    fn dmabuf_scanout(&mut self, _scanout_id: u32, _buf: &DmabufScanout<'_>) -> bool {
        false
    }
    /// The region `damage` of a scanout that shows a dma-buf (accepted by
    /// `dmabuf_scanout`) changed. Returns `false` when the sink wants the pixels instead;
    /// the device then calls `flush` with a CPU copy.
    fn dmabuf_flush(&mut self, _scanout_id: u32, _damage: Rect) -> bool {
        false
    }
    /// The cursor image changed (or was hidden).
    fn cursor_update(&mut self, cursor: &Cursor<'_>);
    /// The cursor moved.
    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32);
}

/// The answer to "may a guest map this host buffer, and with which cache attribute?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapAdvice {
    /// Map it; report `map_info` (a `VIRTIO_GPU_MAP_CACHE_*` value, never NONE).
    Allow {
        /// `VIRTIO_GPU_MAP_CACHE_CACHED` (1), `_UNCACHED` (2) or `_WC` (3).
        map_info: u32,
        /// Where the answer came from, for logs.
        source: String,
    },
    /// Do not map it.
    Refuse {
        /// Why, including the source of the answer, for logs.
        reason: String,
    },
}

/// Decides whether buffers may be mapped into a guest (implemented over `dmabuf-info`).
pub trait MapAdvisor: Send {
    /// Asks about `fd`; `drm_fd` is the allocator's DRM device, if it has one.
    fn advise(&self, fd: BorrowedFd<'_>, drm_fd: Option<BorrowedFd<'_>>) -> MapAdvice;
}
