//! Resources: host-side 2D images, GUEST blobs (guest memory), HOST3D blobs (host
//! buffers), resources that live in the renderer, and the pixel copies between them and
//! guest memory.

use std::os::fd::OwnedFd;

use super::backing::{Backing, BackingError};
use super::budget::Charge;
use super::mmap::MappedBuffer;
use crate::device::ports::{BlobFdKind, GuestMemory, HostBuffer, CURSOR_BYTES, CURSOR_SIDE};
use crate::protocol::{fourcc, Rect, Resource3d};

/// Bytes per pixel of every format this device accepts.
pub(crate) const BYTES_PER_PIXEL: u32 = 4;

/// A 2D resource: a host copy of the image plus the guest backing it is updated from.
#[derive(Debug)]
pub(crate) struct Image2d {
    /// DRM fourcc of `pixels`.
    pub drm_format: u32,
    pub width: u32,
    pub height: u32,
    /// `width * 4`.
    pub stride: u32,
    /// `stride * height` bytes.
    pub pixels: Vec<u8>,
    pub backing: Option<AttachedBacking>,
}

/// A 2D resource's guest backing, with the host bytes its entry list is charged (released
/// when it is detached).
#[derive(Debug)]
pub(crate) struct AttachedBacking {
    pub backing: Backing,
    /// Held for its `Drop`, which releases the entry list's host bytes.
    pub _charge: Charge,
}

/// The image a HOST3D blob was allocated for (cross-domain GET_IMAGE_REQUIREMENTS; all zero
/// for a buffer the compositor handed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub drm_format: u32,
}

/// A host-allocated blob.
#[derive(Debug)]
pub(crate) struct HostBlob {
    pub buffer: HostBuffer,
    pub image: ImageInfo,
    /// Offset in the host-visible region while mapped.
    pub mapped_at: Option<u64>,
    /// Host CPU mapping, created on first scanout read.
    pub cpu_map: Option<MappedBuffer>,
    /// Whether the guest may map it writable (`false` for read-only buffers the compositor
    /// handed in, such as sealed keymaps).
    pub writable: bool,
}

/// A renderer blob mapped into the host-visible region.
#[derive(Debug)]
pub(crate) struct RendererMapping {
    /// Offset in the region.
    pub offset: u64,
    /// Length mapped (the blob's size in whole pages).
    pub len: u64,
}

/// A resource that lives in the renderer: made by `RESOURCE_CREATE_3D`, or a blob
/// (HOST3D, HOST3D_GUEST) of a renderer context.
#[derive(Debug)]
pub(crate) struct RendererResource {
    /// `RESOURCE_CREATE_3D`'s description; `None` for blobs.
    pub create: Option<Resource3d>,
    /// `BLOB_MEM_*` of a blob.
    pub blob_mem: Option<u32>,
    /// The guest backing the renderer holds (3D resources after ATTACH_BACKING, HOST3D_GUEST
    /// blobs from their creation), with what its entry list is charged.
    pub backing: Option<AttachedBacking>,
    /// The blob's fd as the renderer exported it (kept once asked for: mapping, scanout).
    pub exported: Option<OwnedFd>,
    /// What `exported` is charged (one open file), released with it.
    pub _exported_charge: Option<Charge>,
    /// What the renderer says `exported` is.
    pub exported_kind: Option<BlobFdKind>,
    /// Where the blob's bytes start in `exported`.
    pub exported_offset: u64,
    /// The renderer's own idea of the caching, logged beside dmabuf-info's.
    pub renderer_map_info: Option<u32>,
    /// Where it is mapped in the host-visible region.
    pub mapping: Option<RendererMapping>,
    /// Host CPU mapping of `exported`, made on the first scanout read of a blob.
    pub cpu_map: Option<MappedBuffer>,
}

impl RendererResource {
    /// A resource made by `RESOURCE_CREATE_3D`.
    pub fn created(create: Resource3d) -> Self {
        RendererResource {
            create: Some(create),
            blob_mem: None,
            backing: None,
            exported: None,
            _exported_charge: None,
            exported_kind: None,
            exported_offset: 0,
            renderer_map_info: None,
            mapping: None,
            cpu_map: None,
        }
    }

    /// A blob of kind `blob_mem` with `backing` (HOST3D_GUEST).
    pub fn blob(blob_mem: u32, backing: Option<AttachedBacking>) -> Self {
        RendererResource {
            create: None,
            blob_mem: Some(blob_mem),
            backing,
            exported: None,
            _exported_charge: None,
            exported_kind: None,
            exported_offset: 0,
            renderer_map_info: None,
            mapping: None,
            cpu_map: None,
        }
    }
}

/// What a resource is.
#[derive(Debug)]
pub(crate) enum ResourceKind {
    /// A 2D image (`RESOURCE_CREATE_2D`).
    Image2d(Image2d),
    /// A blob in guest memory (`BLOB_MEM_GUEST`).
    GuestBlob {
        backing: Backing,
        /// The backing exported as a udmabuf, when the host has `/dev/udmabuf`.
        dmabuf: Option<OwnedFd>,
    },
    /// A blob in a host buffer (`BLOB_MEM_HOST3D`).
    HostBlob(HostBlob),
    /// A resource of the renderer (`RESOURCE_CREATE_3D`, renderer blobs).
    Renderer(RendererResource),
}

#[cfg(test)]
impl ResourceKind {
    /// A 1x1 2D image without backing.
    pub fn empty_2d() -> Self {
        ResourceKind::Image2d(Image2d {
            drm_format: fourcc::XRGB8888,
            width: 1,
            height: 1,
            stride: BYTES_PER_PIXEL,
            pixels: vec![0; BYTES_PER_PIXEL as usize],
            backing: None,
        })
    }
}

/// A resource and its bookkeeping.
#[derive(Debug)]
pub(crate) struct Resource {
    pub kind: ResourceKind,
    /// Blob size (blobs) or pixel bytes (2D).
    pub size: u64,
    pub blob_flags: u32,
    pub uuid: Option<[u8; 16]>,
    /// What the resource is charged (one resource, the host bytes of what it holds), held
    /// for its `Drop`; parts that can go on their own, such as a 2D backing, carry their own.
    _charge: Charge,
}

impl Resource {
    /// A resource without a UUID.
    pub fn new(kind: ResourceKind, size: u64, blob_flags: u32, charge: Charge) -> Self {
        Resource {
            kind,
            size,
            blob_flags,
            uuid: None,
            _charge: charge,
        }
    }

    /// What the resource is charged (live upgrade: charged again in the next process).
    pub fn charge_amount(&self) -> super::budget::Usage {
        self._charge.amount()
    }

    /// Short kind name for logs.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            ResourceKind::Image2d(_) => "2D",
            ResourceKind::GuestBlob { .. } => "GUEST blob",
            ResourceKind::HostBlob(_) => "HOST3D blob",
            ResourceKind::Renderer(r) if r.create.is_some() => "3D resource",
            ResourceKind::Renderer(_) => "renderer blob",
        }
    }
}

/// Whether `rect` is non-empty and lies inside a `width`x`height` image.
pub(crate) fn rect_within(rect: &Rect, width: u32, height: u32) -> bool {
    rect.width > 0
        && rect.height > 0
        && rect.x.checked_add(rect.width).is_some_and(|r| r <= width)
        && rect.y.checked_add(rect.height).is_some_and(|b| b <= height)
}

/// Intersection of two rectangles (empty rectangles have width or height 0).
pub(crate) fn intersect(a: &Rect, b: &Rect) -> Rect {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = (u64::from(a.x) + u64::from(a.width)).min(u64::from(b.x) + u64::from(b.width));
    let y1 = (u64::from(a.y) + u64::from(a.height)).min(u64::from(b.y) + u64::from(b.height));
    if x1 <= u64::from(x0) || y1 <= u64::from(y0) {
        return Rect::default();
    }
    Rect {
        x: x0,
        y: y0,
        width: (x1 - u64::from(x0)) as u32,
        height: (y1 - u64::from(y0)) as u32,
    }
}

/// Why a transfer was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// The rectangle is empty or outside the resource.
    #[error("rect {0:?} is empty or outside the {1}x{2} resource")]
    Rect(Rect, u32, u32),
    /// The source range does not fit in the backing.
    #[error("offset {offset:#x} + {rows} rows of stride {stride} needs {needed:#x} bytes, backing has {available:#x}")]
    BackingTooShort {
        offset: u64,
        rows: u32,
        stride: u32,
        needed: u64,
        available: u64,
    },
    /// Guest memory could not be read.
    #[error("{0}")]
    Backing(#[from] BackingError),
}

/// `TRANSFER_TO_HOST_2D`: copies `rect` of the guest image, which starts `offset` bytes into
/// `backing` and has the resource's stride, into the host image. Checks everything before
/// copying anything; copies whole rows in bulk (one copy for full-width rectangles).
pub(crate) fn transfer_to_host_2d(
    image: &mut Image2d,
    backing: &Backing,
    mem: &GuestMemory,
    rect: &Rect,
    offset: u64,
) -> Result<(), TransferError> {
    if !rect_within(rect, image.width, image.height) {
        return Err(TransferError::Rect(*rect, image.width, image.height));
    }
    let stride = u64::from(image.stride);
    let row_bytes = u64::from(rect.width) * u64::from(BYTES_PER_PIXEL);
    let rows = u64::from(rect.height);
    // Source: rows at offset, offset + stride, ...; the last row needs only row_bytes.
    let needed = (rows - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(row_bytes))
        .and_then(|v| v.checked_add(offset));
    match needed {
        Some(needed) if needed <= backing.len() => {}
        _ => {
            return Err(TransferError::BackingTooShort {
                offset,
                rows: rect.height,
                stride: image.stride,
                needed: needed.unwrap_or(u64::MAX),
                available: backing.len(),
            })
        }
    }
    // Destination offsets fit in usize: they are inside `pixels`, already allocated.
    let dst_start =
        (u64::from(rect.y) * stride + u64::from(rect.x) * u64::from(BYTES_PER_PIXEL)) as usize;
    if rect.x == 0 && rect.width == image.width {
        // Full-width rows are contiguous on both sides (row_bytes == stride).
        let len = (rows * stride) as usize;
        backing.read(mem, offset, &mut image.pixels[dst_start..dst_start + len])?;
        return Ok(());
    }
    for row in 0..rows {
        let src = offset + row * stride;
        let dst = dst_start + (row * stride) as usize;
        backing.read(mem, src, &mut image.pixels[dst..dst + row_bytes as usize])?;
    }
    Ok(())
}

/// Copies `rect` out of a linear image (`stride` bytes per row, starting at `base`) into
/// `out` as a tightly packed image, using `read(offset, dst)` for each row (or one read when
/// the rows are contiguous). `out` is resized to `rect.width * 4 * rect.height`; a host that
/// cannot allocate that is an error, never an abort.
pub(crate) fn copy_rect_out(
    rect: &Rect,
    base: u64,
    stride: u64,
    out: &mut Vec<u8>,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), String>,
) -> Result<(), String> {
    let row_bytes = rect.width as usize * BYTES_PER_PIXEL as usize;
    let total = row_bytes.checked_mul(rect.height as usize).ok_or_else(|| {
        format!(
            "a {}x{} copy does not fit in memory",
            rect.width, rect.height
        )
    })?;
    out.clear();
    out.try_reserve_exact(total).map_err(|e| {
        format!(
            "cannot allocate the {total}-byte copy of a {}x{} image: {e}",
            rect.width, rect.height
        )
    })?;
    out.resize(total, 0);
    let first = base + u64::from(rect.y) * stride + u64::from(rect.x) * u64::from(BYTES_PER_PIXEL);
    if stride == row_bytes as u64 {
        return read(first, out);
    }
    for (row, chunk) in out.chunks_exact_mut(row_bytes).enumerate() {
        read(first + row as u64 * stride, chunk)?;
    }
    Ok(())
}

/// Byte positions of B, G, R and (if any) A in a pixel of `drm_format`, for converting to
/// ARGB8888 (memory order B, G, R, A). `None` for formats that are not 4-byte RGB.
fn channel_positions(drm_format: u32) -> Option<([usize; 3], Option<usize>)> {
    Some(match drm_format {
        fourcc::ARGB8888 => ([0, 1, 2], Some(3)),
        fourcc::XRGB8888 => ([0, 1, 2], None),
        fourcc::BGRA8888 => ([3, 2, 1], Some(0)),
        fourcc::BGRX8888 => ([3, 2, 1], None),
        fourcc::ABGR8888 => ([2, 1, 0], Some(3)),
        fourcc::XBGR8888 => ([2, 1, 0], None),
        fourcc::RGBA8888 => ([1, 2, 3], Some(0)),
        fourcc::RGBX8888 => ([1, 2, 3], None),
        _ => return None,
    })
}

/// Converts a packed `width`x`height` image (`width <= 64`, `height <= 64`) into a 64x64
/// ARGB8888 cursor image, transparent outside the source.
pub(crate) fn cursor_image(
    src: &[u8],
    width: u32,
    height: u32,
    drm_format: u32,
) -> Option<Vec<u8>> {
    let (bgr, a) = channel_positions(drm_format)?;
    if width > CURSOR_SIDE || height > CURSOR_SIDE {
        return None;
    }
    let src_stride = width as usize * BYTES_PER_PIXEL as usize;
    if src.len() < src_stride * height as usize {
        return None;
    }
    let mut out = vec![0u8; CURSOR_BYTES];
    for y in 0..height as usize {
        for x in 0..width as usize {
            let s = &src[y * src_stride + x * 4..][..4];
            let d = &mut out[(y * CURSOR_SIDE as usize + x) * 4..][..4];
            d[0] = s[bgr[0]];
            d[1] = s[bgr[1]];
            d[2] = s[bgr[2]];
            d[3] = a.map_or(0xff, |i| s[i]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn rect_checks_do_not_overflow() {
        assert!(rect_within(&r(0, 0, 10, 10), 10, 10));
        assert!(!rect_within(&r(1, 0, 10, 10), 10, 10));
        assert!(!rect_within(&r(0, 0, 0, 10), 10, 10));
        assert!(!rect_within(&r(u32::MAX, 0, 2, 1), 10, 10));
        assert!(!rect_within(&r(0, u32::MAX, 1, 2), 10, 10));
    }

    #[test]
    fn intersection() {
        assert_eq!(intersect(&r(0, 0, 10, 10), &r(5, 5, 10, 10)), r(5, 5, 5, 5));
        assert_eq!(intersect(&r(0, 0, 10, 10), &r(10, 0, 5, 5)).width, 0);
        assert_eq!(
            intersect(&r(u32::MAX - 1, 0, u32::MAX, 1), &r(0, 0, u32::MAX, 1)),
            r(u32::MAX - 1, 0, 1, 1)
        );
    }

    #[test]
    fn copy_rect_out_packs_rows() {
        // 4x3 image, stride 16 bytes, pixel value = index.
        let src: Vec<u8> = (0..48).collect();
        let mut out = Vec::new();
        copy_rect_out(&r(1, 1, 2, 2), 0, 16, &mut out, |off, dst: &mut [u8]| {
            dst.copy_from_slice(&src[off as usize..off as usize + dst.len()]);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            out,
            vec![20, 21, 22, 23, 24, 25, 26, 27, 36, 37, 38, 39, 40, 41, 42, 43]
        );
    }

    #[test]
    fn cursor_conversion_reorders_channels() {
        // One RGBA-in-memory (ABGR8888) pixel: R=1, G=2, B=3, A=4.
        let img = cursor_image(&[1, 2, 3, 4], 1, 1, fourcc::ABGR8888).unwrap();
        assert_eq!(&img[..4], &[3, 2, 1, 4]);
        assert_eq!(img.len(), CURSOR_BYTES);
        assert!(img[4..].iter().all(|&b| b == 0));
        let img = cursor_image(&[9, 8, 7, 0], 1, 1, fourcc::XRGB8888).unwrap();
        assert_eq!(&img[..4], &[9, 8, 7, 0xff]);
        assert!(cursor_image(&[0; 4], 65, 1, fourcc::ARGB8888).is_none());
        assert!(cursor_image(&[0; 3], 1, 1, fourcc::ARGB8888).is_none());
    }
}
