//! Mesa GBM buffers on a DRM render node, with `libgbm` loaded at run time
//! ([`super::gbm_sys`]): every build has this allocator, and a host without `libgbm` or
//! without a render node gets a clear reason instead.
//!
//! Buffers are allocated linear (the guest reads and writes them through a CPU mapping),
//! zeroed through a GBM CPU mapping and exported as dma-bufs before they are returned.

use rustix::fs::{FileType, SeekFrom};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::gbm_sys::{self, Libgbm};
use crate::device::ports::{
    fourcc, AllocError, BufferAllocator, BufferRequest, HostBuffer, PlaneLayout,
};

/// Major number of DRM character devices (`DRM_MAJOR`, include/drm/drm.h's users).
pub const DRM_MAJOR: u32 = 226;
/// Render nodes are DRM minors 128-191 (`/dev/dri/renderD128`..`renderD191`).
pub const RENDER_MINORS: std::ops::RangeInclusive<u32> = 128..=191;
/// Where render nodes live.
pub const DRI_DIR: &str = "/dev/dri";

/// Side of the square test buffer allocated when a device is opened: a node GBM opens but
/// cannot allocate on (Mesa's software fallback on a DRM driver it does not know) is not
/// usable.
const PROBE_SIZE: u32 = 64;

/// Why a path is not a DRM render node.
#[derive(Debug, thiserror::Error)]
pub enum RenderNodeError {
    /// The path cannot be inspected.
    #[error("{path}: {source}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is no character device.
    #[error("{path} is not a character device (a DRM render node is, e.g. /dev/dri/renderD128)")]
    NotCharDevice {
        /// The path.
        path: PathBuf,
    },
    /// A character device of another driver, or a DRM primary (card) node.
    #[error(
        "{path} is character device {major}:{minor}, not a DRM render node \
         (major {DRM_MAJOR}, minor 128-191, e.g. /dev/dri/renderD128)"
    )]
    NotRenderNode {
        /// The path.
        path: PathBuf,
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
}

/// Checks that `path` is a DRM render node: a character device of major 226 with a minor in
/// 128-191 (`renderD*`). Returns its minor number.
pub fn check_render_node(path: &Path) -> Result<u32, RenderNodeError> {
    let st = rustix::fs::stat(path).map_err(|e| RenderNodeError::Stat {
        path: path.to_owned(),
        source: e.into(),
    })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice {
        return Err(RenderNodeError::NotCharDevice {
            path: path.to_owned(),
        });
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if major != DRM_MAJOR || !RENDER_MINORS.contains(&minor) {
        return Err(RenderNodeError::NotRenderNode {
            path: path.to_owned(),
            major,
            minor,
        });
    }
    Ok(minor)
}

/// The render nodes present, in minor order (`/dev/dri/renderD128`...).
pub fn render_nodes() -> Vec<PathBuf> {
    RENDER_MINORS
        .map(|n| PathBuf::from(format!("{DRI_DIR}/renderD{n}")))
        .filter(|p| check_render_node(p).is_ok())
        .collect()
}

/// Why GBM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GbmUnavailable {
    /// `libgbm` is not installed or unusable.
    #[error(transparent)]
    Library(#[from] gbm_sys::LoadError),
    /// The node given is not a render node.
    #[error(transparent)]
    NotRenderNode(#[from] RenderNodeError),
    /// The node cannot be opened, or GBM refuses it.
    #[error("{path}: {source}")]
    Open {
        /// The render node.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// GBM opened the node but cannot allocate a linear buffer on it.
    #[error("{path}: GBM opened it but cannot allocate a linear buffer: {source}")]
    Allocate {
        /// The render node.
        path: PathBuf,
        /// Why.
        source: AllocError,
    },
    /// The host has no render node.
    #[error("no DRM render node in {DRI_DIR} (no GPU?); use --allocator udmabuf or memfd")]
    NoRenderNode,
}

/// Allocates buffers with Mesa GBM.
pub struct GbmAllocator {
    device: gbm_sys::Device<'static>,
    path: PathBuf,
}

impl std::fmt::Debug for GbmAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GbmAllocator")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn io_context(context: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("{context}: {e}"))
}

/// Opens `path` with GBM from `lib` and checks that it can allocate (a small linear buffer,
/// zeroed and exported, as every real allocation is).
fn open_node(lib: &'static Libgbm, path: &Path) -> Result<GbmAllocator, GbmUnavailable> {
    check_render_node(path)?;
    let open = |source| GbmUnavailable::Open {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(open)?;
    let mut allocator = GbmAllocator::from_file(lib, file, path).map_err(open)?;
    allocator
        .allocate(&BufferRequest::Image {
            width: PROBE_SIZE,
            height: PROBE_SIZE,
            drm_format: fourcc::XRGB8888,
            usage: 0,
        })
        .map_err(|source| GbmUnavailable::Allocate {
            path: path.to_owned(),
            source,
        })?;
    Ok(allocator)
}

impl GbmAllocator {
    /// Opens `render_node`, or else the first render node in `/dev/dri` that GBM can
    /// allocate on. Fails with the reason when `libgbm` is missing, the node is not a DRM
    /// render node, or no node works.
    pub fn open(render_node: Option<&Path>) -> Result<Self, GbmUnavailable> {
        let lib = Libgbm::system()?;
        if let Some(path) = render_node {
            return open_node(lib, path);
        }
        let mut last = None;
        for path in render_nodes() {
            match open_node(lib, &path) {
                Ok(a) => return Ok(a),
                Err(e) => {
                    log::info!("allocator: gbm: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(GbmUnavailable::NoRenderNode))
    }

    /// GBM on an already open `file` (named `path` in messages), without checking what it is.
    fn from_file(lib: &'static Libgbm, file: File, path: &Path) -> std::io::Result<Self> {
        let device = gbm_sys::Device::new(lib, file)?;
        log::debug!(
            "allocator: gbm backend {} on {}",
            device.backend_name(),
            path.display()
        );
        Ok(GbmAllocator {
            device,
            path: path.to_owned(),
        })
    }

    /// The render node in use.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BufferAllocator for GbmAllocator {
    fn name(&self) -> &'static str {
        "gbm"
    }

    fn allocate(&mut self, request: &BufferRequest) -> Result<HostBuffer, AllocError> {
        let (width, height, drm_format, usage) = match *request {
            BufferRequest::Image {
                width,
                height,
                drm_format,
                usage,
            } => (width, height, drm_format, usage),
            // Untyped bytes: a linear R8 image 4096 bytes wide.
            BufferRequest::Bytes { size } => {
                let height = u32::try_from(size / super::PAGE_SIZE)
                    .ok()
                    .filter(|&h| h > 0 && size % super::PAGE_SIZE == 0)
                    .ok_or_else(|| AllocError::Unsupported(format!("byte buffer size {size}")))?;
                (super::PAGE_SIZE as u32, height, fourcc::R8, 0)
            }
        };
        if width == 0
            || height == 0
            || width > super::MAX_IMAGE_DIMENSION
            || height > super::MAX_IMAGE_DIMENSION
        {
            return Err(AllocError::Unsupported(format!(
                "image size {width}x{height} outside 1..={}",
                super::MAX_IMAGE_DIMENSION
            )));
        }
        // Single-plane formats only (the ones the linear allocators take too): zeroing
        // through the CPU mapping then covers the whole image.
        if super::bytes_per_pixel(drm_format).is_none() {
            return Err(AllocError::Unsupported(format!(
                "DRM format {drm_format:#010x} not supported"
            )));
        }
        let flags = (usage & (gbm_sys::BO_USE_SCANOUT | gbm_sys::BO_USE_RENDERING))
            | gbm_sys::BO_USE_LINEAR;
        if !self.device.is_format_supported(drm_format, flags) {
            return Err(AllocError::Unsupported(format!(
                "DRM format {drm_format:#010x} with GBM usage {flags:#x} not supported by {}",
                self.path.display()
            )));
        }
        let mut bo = self
            .device
            .create_bo(width, height, drm_format, flags)
            .map_err(io_context(format!(
                "gbm_bo_create {width}x{height} format {drm_format:#010x}"
            )))?;
        // Zero it before anyone sees it.
        bo.zero(width, height)?;
        let fd = bo.export()?;
        let size = rustix::fs::seek(&fd, SeekFrom::End(0))
            .map_err(|e| std::io::Error::other(format!("dma-buf size (lseek): {e}")))?;
        rustix::fs::seek(&fd, SeekFrom::Start(0))
            .map_err(|e| std::io::Error::other(format!("lseek: {e}")))?;
        let planes = bo
            .planes()
            .into_iter()
            .map(|(offset, stride)| PlaneLayout { offset, stride })
            .collect();
        Ok(HostBuffer {
            fd,
            size,
            planes,
            modifier: bo.modifier(),
            is_dmabuf: true,
        })
    }

    fn drm_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.device.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_node_check_names_what_is_wrong() {
        let err = check_render_node(Path::new("/nonexistent/renderD128")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/renderD128"), "{err}");
        let err = check_render_node(Path::new("/tmp")).unwrap_err();
        assert!(
            matches!(err, RenderNodeError::NotCharDevice { .. }),
            "{err}"
        );
        // /dev/null is character device 1:3.
        let err = check_render_node(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(
                err,
                RenderNodeError::NotRenderNode {
                    major: 1,
                    minor: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("1:3"), "{err}");
    }

    #[test]
    fn no_render_node_is_a_clear_error() {
        if !render_nodes().is_empty() {
            return; // hosts with a GPU exercise the allocation instead (conformance suite)
        }
        let err = GbmAllocator::open(None).err().unwrap();
        assert!(matches!(err, GbmUnavailable::NoRenderNode), "{err}");
        assert!(err.to_string().contains("no DRM render node"), "{err}");
        let err = GbmAllocator::open(Some(Path::new("/dev/null")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a DRM render node"), "{err}");
    }

    #[test]
    fn a_non_drm_file_gives_no_allocator() {
        let lib = Libgbm::system().unwrap_or_else(|e| panic!("{e}"));
        let memfd = rustix::fs::memfd_create("not-drm", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let err = GbmAllocator::from_file(lib, File::from(memfd), Path::new("memfd"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("gbm_create_device"), "{err}");
    }
}
