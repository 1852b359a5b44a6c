//! Mesa GBM buffers on a DRM render node (cargo feature `gbm`). Buffers are allocated
//! linear (the guest reads and writes them through a CPU mapping) and zeroed through a GBM
//! CPU mapping before they are returned.

use rustix::fs::SeekFrom;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use gbm::{BufferObjectFlags, Device, Format};

use crate::device::ports::{
    fourcc, AllocError, BufferAllocator, BufferRequest, HostBuffer, PlaneLayout,
};

/// Render nodes probed when none is given.
const RENDER_NODES: std::ops::RangeInclusive<u32> = 128..=191;

/// Allocates buffers with Mesa GBM.
pub struct GbmAllocator {
    device: Device<File>,
    path: PathBuf,
}

impl std::fmt::Debug for GbmAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GbmAllocator")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_node(path: &Path) -> Result<GbmAllocator, AllocError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let device = Device::new(file).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: gbm_create_device: {e}", path.display()),
        )
    })?;
    Ok(GbmAllocator {
        device,
        path: path.to_owned(),
    })
}

impl GbmAllocator {
    /// Opens `render_node`, or the first working `/dev/dri/renderD128..191`.
    pub fn open(render_node: Option<&Path>) -> Result<Self, AllocError> {
        if let Some(path) = render_node {
            return open_node(path);
        }
        let mut last = None;
        for n in RENDER_NODES {
            let path = PathBuf::from(format!("/dev/dri/renderD{n}"));
            if !path.exists() {
                continue;
            }
            match open_node(&path) {
                Ok(a) => return Ok(a),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            AllocError::Unsupported(
                "no DRM render node in /dev/dri (no GPU?); use --allocator udmabuf or memfd".into(),
            )
        }))
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
        let format = Format::try_from(drm_format).map_err(|_| {
            AllocError::Unsupported(format!("DRM format {drm_format:#010x} unknown to GBM"))
        })?;
        let wanted = BufferObjectFlags::SCANOUT | BufferObjectFlags::RENDERING;
        let flags =
            (BufferObjectFlags::from_bits_truncate(usage) & wanted) | BufferObjectFlags::LINEAR;
        let mut bo = self
            .device
            .create_buffer_object::<()>(width, height, format, flags)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("gbm_bo_create {width}x{height} {format:?}: {e}"),
                )
            })?;
        // Zero it before anyone sees it.
        bo.map_mut(0, 0, width, height, |m| m.buffer_mut().fill(0))
            .map_err(|e| std::io::Error::new(e.kind(), format!("gbm_bo_map for zeroing: {e}")))?;
        let fd = bo
            .fd()
            .map_err(|e| std::io::Error::other(format!("gbm_bo_get_fd: {e}")))?;
        let size = rustix::fs::seek(&fd, SeekFrom::End(0))
            .map_err(|e| std::io::Error::other(format!("dma-buf size (lseek): {e}")))?;
        rustix::fs::seek(&fd, SeekFrom::Start(0))
            .map_err(|e| std::io::Error::other(format!("lseek: {e}")))?;
        let planes = (0..bo.plane_count().min(4) as i32)
            .map(|i| PlaneLayout {
                offset: bo.offset(i),
                stride: bo.stride_for_plane(i),
            })
            .collect();
        Ok(HostBuffer {
            fd,
            size,
            planes,
            modifier: u64::from(bo.modifier()),
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
    fn no_render_node_is_a_clear_error() {
        let has_node = RENDER_NODES
            .clone()
            .any(|n| Path::new(&format!("/dev/dri/renderD{n}")).exists());
        if has_node {
            return; // hosts with a GPU exercise the allocation instead (conformance suite)
        }
        let err = GbmAllocator::open(None).err().unwrap();
        assert!(err.to_string().contains("no DRM render node"), "{err}");
        let err = GbmAllocator::open(Some(Path::new("/nonexistent/renderD128")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/renderD128"), "{err}");
    }
}
