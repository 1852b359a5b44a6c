//! Scanouts and the cursor: SET_SCANOUT, SET_SCANOUT_BLOB, RESOURCE_FLUSH, UPDATE_CURSOR,
//! MOVE_CURSOR, and handing frames to the display sink.

use std::os::fd::AsFd;

use log::debug;

use super::mmap::MappedBuffer;
use super::resource::{self, cursor_image, intersect, rect_within, ResourceKind, CURSOR_SIZE};
use super::{reject, CmdResult, GpuDevice, Reject};
use crate::device::ports::{DmabufScanout, Frame, GuestMemory};
use crate::protocol::{feature, format, CursorPos, GpuError, GpuResponse};
use crate::protocol::{fourcc, Rect};

/// How a blob is laid out as an image on a scanout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobView {
    pub width: u32,
    pub height: u32,
    /// virtio format.
    pub format: u32,
    /// DRM fourcc (filled in when validated).
    pub drm_format: u32,
    pub stride: u32,
    pub offset: u32,
}

/// What a scanout shows.
#[derive(Debug, Clone)]
pub(crate) struct Shown {
    pub resource_id: u32,
    /// Part of the resource (2D) or blob image shown.
    pub rect: Rect,
    /// Layout, for blob scanouts.
    pub blob: Option<BlobView>,
    /// Whether the sink took the buffer as a dma-buf.
    pub dmabuf: bool,
}

/// One scanout.
#[derive(Debug, Clone)]
pub(crate) struct Scanout {
    /// Connected output resolution (`None`: disconnected).
    pub mode: Option<(u32, u32)>,
    pub shown: Option<Shown>,
}

impl Scanout {
    pub fn new(mode: Option<(u32, u32)>) -> Self {
        Scanout { mode, shown: None }
    }
}

/// Last cursor state (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CursorState {
    pub resource_id: u32,
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
}

impl GpuDevice {
    fn check_scanout(&self, scanout_id: u32) -> Result<(), Reject> {
        if (scanout_id as usize) < self.scanouts.len() {
            Ok(())
        } else {
            Err(reject(
                GpuError::InvalidScanoutId,
                format!(
                    "scanout_id {scanout_id} does not exist ({} scanouts)",
                    self.scanouts.len()
                ),
            ))
        }
    }

    fn disable_scanout(&mut self, scanout_id: u32) {
        self.scanouts[scanout_id as usize].shown = None;
        self.display.scanout(scanout_id, None);
    }

    pub(super) fn set_scanout(
        &mut self,
        scanout_id: u32,
        resource_id: u32,
        rect: Rect,
    ) -> CmdResult {
        self.check_scanout(scanout_id)?;
        if resource_id == 0 {
            self.disable_scanout(scanout_id);
            return Ok(GpuResponse::OkNoData);
        }
        let resource = self.resources.get(&resource_id).ok_or_else(|| {
            reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} does not exist"),
            )
        })?;
        let ResourceKind::Image2d(image) = &resource.kind else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {resource_id} is a {}; blobs are shown with SET_SCANOUT_BLOB",
                    resource.kind_name()
                ),
            ));
        };
        if !rect_within(&rect, image.width, image.height) {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "r {rect:?} is empty or outside resource_id {resource_id} ({}x{})",
                    image.width, image.height
                ),
            ));
        }
        self.scanouts[scanout_id as usize].shown = Some(Shown {
            resource_id,
            rect,
            blob: None,
            dmabuf: false,
        });
        self.display
            .scanout(scanout_id, Some((rect.width, rect.height)));
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn set_scanout_blob(
        &mut self,
        scanout_id: u32,
        resource_id: u32,
        rect: Rect,
        mut view: BlobView,
    ) -> CmdResult {
        self.require_feature(feature::RESOURCE_BLOB, "RESOURCE_BLOB")?;
        self.check_scanout(scanout_id)?;
        if resource_id == 0 {
            self.disable_scanout(scanout_id);
            return Ok(GpuResponse::OkNoData);
        }
        let resource = self.resources.get(&resource_id).ok_or_else(|| {
            reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} does not exist"),
            )
        })?;
        if matches!(resource.kind, ResourceKind::Image2d(_)) {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is not a blob; use SET_SCANOUT"),
            ));
        }
        view.drm_format = format::to_drm_fourcc(view.format).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!("format {} is not supported", view.format),
            )
        })?;
        let row_bytes = u64::from(view.width) * 4;
        if view.width == 0 || view.height == 0 || u64::from(view.stride) < row_bytes {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "width/height/strides[0] {}x{} stride {} do not describe an image",
                    view.width, view.height, view.stride
                ),
            ));
        }
        // offset + stride * (height - 1) + width * 4 <= blob size, in u64 (cannot overflow:
        // each term < 2^32 * 2^32).
        let needed = u64::from(view.offset)
            + u64::from(view.stride) * u64::from(view.height - 1)
            + row_bytes;
        if needed > resource.size {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "offsets[0] {} + image {}x{} stride {} needs {needed} bytes; resource_id \
                     {resource_id} has {}",
                    view.offset, view.width, view.height, view.stride, resource.size
                ),
            ));
        }
        if !rect_within(&rect, view.width, view.height) {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "r {rect:?} is empty or outside the {}x{} image",
                    view.width, view.height
                ),
            ));
        }
        // Offer the buffer itself to sinks that import dma-bufs, when the whole image is
        // shown.
        let full =
            rect.x == 0 && rect.y == 0 && rect.width == view.width && rect.height == view.height;
        let dmabuf_fd = match &resource.kind {
            ResourceKind::HostBlob(b) if b.buffer.is_dmabuf => Some(b.buffer.fd.as_fd()),
            ResourceKind::GuestBlob { dmabuf, .. } => dmabuf.as_ref().map(|fd| fd.as_fd()),
            _ => None,
        };
        let modifier = match &resource.kind {
            ResourceKind::HostBlob(b) => b.buffer.modifier,
            _ => fourcc::MOD_LINEAR,
        };
        self.display
            .scanout(scanout_id, Some((rect.width, rect.height)));
        let dmabuf = match dmabuf_fd {
            Some(fd) if full && view.offset == 0 => self.display.dmabuf_scanout(
                scanout_id,
                &DmabufScanout {
                    fd,
                    width: view.width,
                    height: view.height,
                    stride: view.stride,
                    drm_format: view.drm_format,
                    modifier,
                },
            ),
            _ => false,
        };
        self.scanouts[scanout_id as usize].shown = Some(Shown {
            resource_id,
            rect,
            blob: Some(view),
            dmabuf,
        });
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn resource_flush(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        rect: Rect,
    ) -> CmdResult {
        let resource = self.resources.get(&resource_id).ok_or_else(|| {
            reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} does not exist"),
            )
        })?;
        if let ResourceKind::Image2d(image) = &resource.kind {
            if !rect_within(&rect, image.width, image.height) {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!(
                        "r {rect:?} is empty or outside resource_id {resource_id} ({}x{})",
                        image.width, image.height
                    ),
                ));
            }
        }
        for scanout_id in 0..self.scanouts.len() {
            let Some(shown) = self.scanouts[scanout_id].shown.clone() else {
                continue;
            };
            if shown.resource_id != resource_id {
                continue;
            }
            let damage = intersect(&rect, &shown.rect);
            if damage.width == 0 {
                continue;
            }
            let damage = Rect {
                x: damage.x - shown.rect.x,
                y: damage.y - shown.rect.y,
                ..damage
            };
            self.present(mem, scanout_id as u32, &shown, damage)?;
        }
        Ok(GpuResponse::OkNoData)
    }

    /// Hands the scanout's current image to the display sink.
    fn present(
        &mut self,
        mem: &GuestMemory,
        scanout_id: u32,
        shown: &Shown,
        damage: Rect,
    ) -> Result<(), Reject> {
        if shown.dmabuf && self.display.dmabuf_flush(scanout_id, damage) {
            return Ok(());
        }
        let rid = shown.resource_id;
        let Some(resource) = self.resources.get_mut(&rid) else {
            return Ok(());
        };
        let rect = shown.rect;
        let packed_stride = rect.width * 4;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = match (&mut resource.kind, shown.blob) {
            (ResourceKind::Image2d(image), _) => {
                if rect.x == 0
                    && rect.y == 0
                    && rect.width == image.width
                    && rect.height == image.height
                {
                    let frame = Frame {
                        width: image.width,
                        height: image.height,
                        stride: image.stride,
                        drm_format: image.drm_format,
                        data: &image.pixels,
                    };
                    self.display.flush(scanout_id, &frame, damage);
                    self.scratch = scratch;
                    return Ok(());
                }
                let (pixels, drm_format) = (&image.pixels, image.drm_format);
                resource::copy_rect_out(
                    &rect,
                    0,
                    u64::from(image.stride),
                    &mut scratch,
                    |off, dst| {
                        let off = off as usize;
                        dst.copy_from_slice(&pixels[off..off + dst.len()]);
                        Ok::<(), String>(())
                    },
                )
                .map(|()| drm_format)
            }
            (ResourceKind::GuestBlob { backing, .. }, Some(view)) => resource::copy_rect_out(
                &rect,
                u64::from(view.offset),
                u64::from(view.stride),
                &mut scratch,
                |off, dst| backing.read(mem, off, dst).map_err(|e| e.to_string()),
            )
            .map(|()| view.drm_format),
            (ResourceKind::HostBlob(blob), Some(view)) => {
                let map = match blob.cpu_map.take() {
                    Some(m) => m,
                    None => {
                        match MappedBuffer::map_read(blob.buffer.fd.as_fd(), blob.buffer.size) {
                            Ok(m) => m,
                            Err(e) => {
                                self.scratch = scratch;
                                return Err(reject(
                                GpuError::Unspec,
                                format!("resource_id {rid}: cannot map the host buffer for reading: {e}"),
                            ));
                            }
                        }
                    }
                };
                let fd = blob.buffer.fd.as_fd();
                let _sync = blob
                    .buffer
                    .is_dmabuf
                    .then(|| super::blob::begin_cpu_read(fd))
                    .flatten();
                let copied = resource::copy_rect_out(
                    &rect,
                    u64::from(view.offset),
                    u64::from(view.stride),
                    &mut scratch,
                    |off, dst| {
                        usize::try_from(off)
                            .ok()
                            .and_then(|off| map.read_into(off, dst))
                            .ok_or_else(|| format!("read at {off:#x} outside the buffer"))
                    },
                )
                .map(|()| view.drm_format);
                drop(_sync);
                blob.cpu_map = Some(map);
                copied
            }
            (_, None) => Err("blob shown without a layout".to_string()),
        };
        let outcome = match result {
            Ok(drm_format) => {
                let frame = Frame {
                    width: rect.width,
                    height: rect.height,
                    stride: packed_stride,
                    drm_format,
                    data: &scratch,
                };
                self.display.flush(scanout_id, &frame, damage);
                Ok(())
            }
            Err(e) => Err(reject(
                GpuError::Unspec,
                format!("scanout {scanout_id}: reading resource_id {rid} failed: {e}"),
            )),
        };
        self.scratch = scratch;
        outcome
    }

    pub(super) fn update_cursor(
        &mut self,
        mem: &GuestMemory,
        pos: CursorPos,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    ) -> CmdResult {
        self.check_scanout(pos.scanout_id)?;
        if resource_id == 0 {
            self.cursor = CursorState {
                resource_id: 0,
                scanout_id: pos.scanout_id,
                x: pos.x,
                y: pos.y,
            };
            self.display
                .cursor_update(pos.scanout_id, pos.x, pos.y, hot_x, hot_y, None);
            return Ok(GpuResponse::OkNoData);
        }
        let resource = self.resources.get(&resource_id).ok_or_else(|| {
            reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} does not exist"),
            )
        })?;
        let cursor_bytes = (CURSOR_SIZE * CURSOR_SIZE * 4) as usize;
        let image = match &resource.kind {
            ResourceKind::Image2d(image) => {
                cursor_image(&image.pixels, image.width, image.height, image.drm_format)
                    .ok_or_else(|| {
                        reject(
                            GpuError::InvalidParameter,
                            format!(
                                "resource_id {resource_id} is {}x{}; cursors are at most 64x64",
                                image.width, image.height
                            ),
                        )
                    })?
            }
            // Blob cursors (dumb buffers with RESOURCE_BLOB) are 64x64 ARGB8888, the only
            // cursor format the Linux driver offers.
            ResourceKind::GuestBlob { backing, .. } => {
                let mut raw = vec![0u8; cursor_bytes];
                backing.read(mem, 0, &mut raw).map_err(|e| {
                    reject(
                        GpuError::InvalidParameter,
                        format!("resource_id {resource_id}: cursor image: {e}"),
                    )
                })?;
                raw
            }
            ResourceKind::HostBlob(_) => {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("resource_id {resource_id}: HOST3D blobs cannot be cursors"),
                ))
            }
        };
        debug!(
            "cursor: resource {resource_id} on scanout {} at {},{}",
            pos.scanout_id, pos.x, pos.y
        );
        self.cursor = CursorState {
            resource_id,
            scanout_id: pos.scanout_id,
            x: pos.x,
            y: pos.y,
        };
        self.display
            .cursor_update(pos.scanout_id, pos.x, pos.y, hot_x, hot_y, Some(&image));
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn move_cursor(&mut self, pos: CursorPos) -> CmdResult {
        self.check_scanout(pos.scanout_id)?;
        if self.cursor.resource_id == 0 {
            debug!("MOVE_CURSOR: no cursor image set yet");
        }
        self.cursor.scanout_id = pos.scanout_id;
        self.cursor.x = pos.x;
        self.cursor.y = pos.y;
        self.display.cursor_move(pos.scanout_id, pos.x, pos.y);
        Ok(GpuResponse::OkNoData)
    }
}
