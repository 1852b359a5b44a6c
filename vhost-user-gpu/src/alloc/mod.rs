//! Host buffer allocators behind [`BufferAllocator`]:
//! - [`memfd::MemfdAllocator`]: sealed memfds, the embedded default (no dma-buf);
//! - [`udmabuf::UdmabufAllocator`]: memfds turned into real dma-bufs by `/dev/udmabuf`;
//! - [`gbm::GbmAllocator`]: Mesa GBM on a DRM render node, `libgbm` loaded at run time
//!   ([`gbm_sys`]), so every build has it and hosts without it fall back.
//!
//! and the GUEST-blob exporter behind [`GuestPageExporter`] ([`guest_page_exporter`]:
//! [`udmabuf::UdmabufExporter`] where `/dev/udmabuf` exists).
//!
//! Every buffer is zero-filled before it is returned.

pub mod gbm;
pub mod gbm_sys;
pub mod memfd;
pub mod udmabuf;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::device::ports::PlaneLayout;
pub use crate::device::ports::{
    AllocError, BufferAllocator, BufferRequest, GuestPageExporter, HostBuffer,
};
use crate::protocol::fourcc;

/// Page size used to round buffer sizes, and the largest image width or height accepted
/// (the ports' contract).
pub use crate::device::ports::{MAX_IMAGE_DIMENSION, PAGE_SIZE};
/// Row alignment of the linear allocators' images, in bytes.
pub const STRIDE_ALIGN: u32 = 64;

/// Which allocator to use (`--allocator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocatorKind {
    /// gbm if libgbm loads and a render node works, else udmabuf if present, else memfd.
    #[default]
    Auto,
    /// Mesa GBM on a render node.
    Gbm,
    /// udmabuf from sealed memfds.
    Udmabuf,
    /// Sealed memfds.
    Memfd,
}

impl AllocatorKind {
    /// Every kind, in `--allocator` order.
    pub const ALL: [AllocatorKind; 4] = [
        AllocatorKind::Auto,
        AllocatorKind::Gbm,
        AllocatorKind::Udmabuf,
        AllocatorKind::Memfd,
    ];

    /// The `--allocator` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocatorKind::Auto => "auto",
            AllocatorKind::Gbm => "gbm",
            AllocatorKind::Udmabuf => "udmabuf",
            AllocatorKind::Memfd => "memfd",
        }
    }

    /// One line saying what the kind allocates (for `--help`).
    pub fn describe(self) -> &'static str {
        match self {
            AllocatorKind::Auto => "gbm if a render node works, else udmabuf, else memfd",
            AllocatorKind::Gbm => "Mesa GBM on a DRM render node (libgbm loaded at run time)",
            AllocatorKind::Udmabuf => "dma-bufs made from sealed memfds by /dev/udmabuf",
            AllocatorKind::Memfd => "sealed memfds (no dma-buf, no GPU)",
        }
    }
}

impl FromStr for AllocatorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AllocatorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown allocator '{s}': expected auto, gbm, udmabuf or memfd"))
    }
}

impl fmt::Display for AllocatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `--allocator` resolved to at start-up. Every connection then gets this allocator
/// again (`auto` is not re-probed), so what a guest sees does not change across reconnections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The allocator chosen (never [`AllocatorKind::Auto`]).
    pub kind: AllocatorKind,
    /// The render node GBM uses (only with [`AllocatorKind::Gbm`]).
    pub render_node: Option<PathBuf>,
}

/// An allocator cannot be used on this host.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Unavailable {
    /// The allocator asked for.
    pub kind: AllocatorKind,
    /// Why it cannot be used (what to do instead, where there is something).
    pub reason: String,
}

impl Unavailable {
    fn new(kind: AllocatorKind, error: impl fmt::Display) -> Self {
        Unavailable {
            kind,
            reason: error.to_string(),
        }
    }

    fn from_alloc(kind: AllocatorKind, error: AllocError) -> Self {
        match error {
            AllocError::Unsupported(reason) => Unavailable { kind, reason },
            other => Unavailable::new(kind, other),
        }
    }
}

/// Creates the allocator `kind` and says which one it is. `Auto` tries gbm (libgbm and a
/// render node that can allocate), then udmabuf, then memfd, and logs why each one was
/// skipped. `render_node` is only used by gbm (`None`: the first render node that works).
///
/// The first call (the binary's start-up probe, before any frontend connects) also opens
/// the process's `/dev/udmabuf` ([`udmabuf::shared_device`]) whatever `kind` is, since GUEST
/// blobs are exported through it: it is part of the process's baseline, never opened later.
pub fn resolve(
    kind: AllocatorKind,
    render_node: Option<&Path>,
) -> Result<(Box<dyn BufferAllocator>, Resolved), Unavailable> {
    let _ = udmabuf::shared_device();
    let plain = |kind: AllocatorKind| Resolved {
        kind,
        render_node: None,
    };
    match kind {
        AllocatorKind::Gbm => gbm_allocator(render_node),
        AllocatorKind::Udmabuf => Ok((
            Box::new(
                udmabuf::UdmabufAllocator::new()
                    .map_err(|e| Unavailable::from_alloc(AllocatorKind::Udmabuf, e))?,
            ),
            plain(AllocatorKind::Udmabuf),
        )),
        AllocatorKind::Memfd => Ok((
            Box::new(memfd::MemfdAllocator::new()),
            plain(AllocatorKind::Memfd),
        )),
        AllocatorKind::Auto => {
            match gbm_allocator(render_node) {
                Ok(a) => return Ok(a),
                Err(e) => log::info!("allocator: gbm skipped: {e}"),
            }
            match udmabuf::UdmabufAllocator::new() {
                Ok(a) => return Ok((Box::new(a), plain(AllocatorKind::Udmabuf))),
                Err(e) => log::info!(
                    "allocator: udmabuf skipped: {}",
                    Unavailable::from_alloc(AllocatorKind::Udmabuf, e)
                ),
            }
            log::info!("allocator: using memfd (buffers are not dma-bufs)");
            Ok((
                Box::new(memfd::MemfdAllocator::new()),
                plain(AllocatorKind::Memfd),
            ))
        }
    }
}

/// Creates the allocator `kind` ([`resolve`] without saying which one `Auto` chose).
pub fn select(
    kind: AllocatorKind,
    render_node: Option<&Path>,
) -> Result<Box<dyn BufferAllocator>, Unavailable> {
    resolve(kind, render_node).map(|(allocator, _)| allocator)
}

/// The GUEST-blob exporter: udmabuf when the process has `/dev/udmabuf` (whatever the
/// allocator), else none (GUEST blobs are then shown by copying their pixels).
pub fn guest_page_exporter() -> Option<Box<dyn GuestPageExporter>> {
    udmabuf::UdmabufExporter::new()
        .ok()
        .map(|e| Box::new(e) as Box<dyn GuestPageExporter>)
}

fn gbm_allocator(
    render_node: Option<&Path>,
) -> Result<(Box<dyn BufferAllocator>, Resolved), Unavailable> {
    let allocator = gbm::GbmAllocator::open(render_node)
        .map_err(|e| Unavailable::new(AllocatorKind::Gbm, e))?;
    let resolved = Resolved {
        kind: AllocatorKind::Gbm,
        render_node: Some(allocator.path().to_owned()),
    };
    Ok((Box::new(allocator), resolved))
}

/// Bytes per pixel of the formats the linear allocators support.
pub fn bytes_per_pixel(drm_format: u32) -> Option<u32> {
    match drm_format {
        fourcc::ARGB8888
        | fourcc::XRGB8888
        | fourcc::ABGR8888
        | fourcc::XBGR8888
        | fourcc::BGRA8888
        | fourcc::BGRX8888
        | fourcc::RGBA8888
        | fourcc::RGBX8888 => Some(4),
        fourcc::R8 => Some(1),
        _ => None,
    }
}

/// Rounds `size` up to a multiple of [`PAGE_SIZE`], `None` on overflow.
pub fn page_align(size: u64) -> Option<u64> {
    size.checked_add(PAGE_SIZE - 1)
        .map(|s| s & !(PAGE_SIZE - 1))
}

/// Layout of a linear single-plane image: stride aligned to [`STRIDE_ALIGN`], size rounded
/// to pages. Rejects unknown formats, zero or too-large dimensions.
pub fn linear_layout(request: &BufferRequest) -> Result<(u64, Vec<PlaneLayout>), AllocError> {
    match *request {
        BufferRequest::Bytes { size } => {
            if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
                return Err(AllocError::Unsupported(format!(
                    "byte buffer size {size} is not a non-zero multiple of {PAGE_SIZE}"
                )));
            }
            Ok((size, vec![PlaneLayout::default()]))
        }
        BufferRequest::Image {
            width,
            height,
            drm_format,
            ..
        } => {
            let bpp = bytes_per_pixel(drm_format).ok_or_else(|| {
                AllocError::Unsupported(format!("DRM format {drm_format:#010x} not supported"))
            })?;
            if width == 0
                || height == 0
                || width > MAX_IMAGE_DIMENSION
                || height > MAX_IMAGE_DIMENSION
            {
                return Err(AllocError::Unsupported(format!(
                    "image size {width}x{height} outside 1..={MAX_IMAGE_DIMENSION}"
                )));
            }
            // Cannot overflow: width <= 16384, bpp <= 4.
            let stride = (width * bpp).div_ceil(STRIDE_ALIGN) * STRIDE_ALIGN;
            let size = page_align(u64::from(stride) * u64::from(height))
                .ok_or_else(|| AllocError::Unsupported("image size overflows".into()))?;
            Ok((size, vec![PlaneLayout { offset: 0, stride }]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_kind_parses_and_prints() {
        for kind in AllocatorKind::ALL {
            assert_eq!(kind.to_string().parse::<AllocatorKind>().unwrap(), kind);
        }
        assert!("dumb".parse::<AllocatorKind>().is_err());
    }

    #[test]
    fn linear_layout_aligns_stride_and_size() {
        let (size, planes) = linear_layout(&BufferRequest::Image {
            width: 100,
            height: 3,
            drm_format: fourcc::XRGB8888,
            usage: 0,
        })
        .unwrap();
        assert_eq!(planes[0].stride, 448);
        assert_eq!(size, 4096);
        assert!(linear_layout(&BufferRequest::Image {
            width: 0,
            height: 3,
            drm_format: fourcc::XRGB8888,
            usage: 0
        })
        .is_err());
        assert!(linear_layout(&BufferRequest::Image {
            width: 16385,
            height: 3,
            drm_format: fourcc::XRGB8888,
            usage: 0
        })
        .is_err());
        assert!(linear_layout(&BufferRequest::Image {
            width: 10,
            height: 3,
            drm_format: 0x1234,
            usage: 0
        })
        .is_err());
        assert!(linear_layout(&BufferRequest::Bytes { size: 100 }).is_err());
    }

    #[test]
    fn auto_falls_back_to_a_working_allocator() {
        // On this host (no GPU, no udmabuf) auto ends at memfd; on others it may pick gbm
        // or udmabuf. Either way the result allocates zeroed buffers.
        let (mut a, resolved) = resolve(AllocatorKind::Auto, None).unwrap();
        let buf = a.allocate(&BufferRequest::Bytes { size: 4096 }).unwrap();
        assert_eq!(buf.size, 4096);
        assert_eq!(resolved.kind.as_str(), a.name());
        assert_ne!(resolved.kind, AllocatorKind::Auto);
        // A render node is named exactly when GBM was chosen.
        assert_eq!(
            resolved.render_node.is_some(),
            resolved.kind == AllocatorKind::Gbm
        );
        if gbm::render_nodes().is_empty() {
            assert_ne!(resolved.kind, AllocatorKind::Gbm);
        }
    }

    #[test]
    fn udmabuf_without_the_device_explains_what_to_do() {
        if Path::new("/dev/udmabuf").exists() {
            return; // the message is only produced on hosts without it
        }
        let err = select(AllocatorKind::Udmabuf, None).err().unwrap();
        assert!(err.to_string().contains("load the udmabuf module"), "{err}");
    }
}
