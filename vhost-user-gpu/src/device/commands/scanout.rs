//! Scanouts and the cursor: GET_DISPLAY_INFO, GET_EDID, SET_SCANOUT, SET_SCANOUT_BLOB,
//! RESOURCE_FLUSH, UPDATE_CURSOR, MOVE_CURSOR, and handing frames to the display sink.

use std::os::fd::{AsFd, BorrowedFd};

use log::debug;

use crate::device::budget::Usage;
use crate::device::config::DEFAULT_OUTPUT;
use crate::device::config::MAX_SCANOUT_SIDE;
use crate::device::edid;
use crate::device::mmap::MappedBuffer;
use crate::device::ports::{
    BlobFdKind, Cursor, DisplaySink, DmabufScanout, Frame, GuestMemory, CURSOR_BYTES, CURSOR_SIDE,
};
use crate::device::reject::{over_budget, reject, CmdResult, Reject};
use crate::device::resource::{
    self, cursor_image, intersect, rect_within, ResourceKind, BYTES_PER_PIXEL,
};
use crate::device::scanout::{BlobView, CursorState, FrameMemory, Shown, ShownView};
use crate::device::GpuDevice;
use crate::protocol::{
    feature, format, fourcc, CursorPos, CursorUpdate, DisplayMode, GpuError, GpuResponse, Rect,
    ScanoutBlob,
};

/// Starts a host CPU read of a dma-buf (DMA_BUF_IOCTL_SYNC); the returned guard ends it.
/// `None` (logged) when the exporter refuses: the read still happens, as a display copy is
/// better than none, but the log says it may be stale.
fn begin_cpu_read(fd: BorrowedFd<'_>) -> Option<dmabuf_info::SyncGuard> {
    match dmabuf_info::SyncGuard::begin(fd, dmabuf_info::SyncAccess::Read) {
        Ok(guard) => Some(guard),
        Err(e) => {
            debug!("DMA_BUF_IOCTL_SYNC(START|READ) failed: {e}; reading without it");
            None
        }
    }
}

impl GpuDevice {
    pub(super) fn display_info(&self) -> GpuResponse {
        GpuResponse::OkDisplayInfo(
            self.scanouts
                .iter()
                .map(|(_, s)| match s.mode {
                    Some((width, height)) => DisplayMode {
                        rect: Rect {
                            x: 0,
                            y: 0,
                            width,
                            height,
                        },
                        enabled: true,
                        flags: 0,
                    },
                    None => DisplayMode::default(),
                })
                .collect(),
        )
    }

    pub(super) fn get_edid(&self, scanout_id: u32) -> CmdResult {
        self.require_feature(feature::EDID, "EDID")?;
        let scanout = self.scanouts.get(scanout_id).ok_or_else(|| {
            reject(
                GpuError::InvalidScanoutId,
                format!("scanout {scanout_id} does not exist"),
            )
        })?;
        let (width, height) = scanout
            .mode
            .or_else(|| self.config.outputs.get(scanout_id as usize).copied())
            .unwrap_or(DEFAULT_OUTPUT);
        let block = edid::build(width, height, scanout_id).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!(
                    "scanout {scanout_id}: mode {width}x{height} cannot be described by an \
                     EDID base block"
                ),
            )
        })?;
        Ok(GpuResponse::OkEdid(block.to_vec()))
    }

    /// Shows nothing on `scanout_id` (which exists); what showing cost is released.
    fn disable_scanout(&mut self, scanout_id: u32) {
        if let Some(s) = self.scanouts.get_mut(scanout_id) {
            s.shown = None;
        }
        self.display.scanout(scanout_id, None);
    }

    /// Shows `view` on `scanout_id` (which exists), with `memory` charged for it.
    fn show(&mut self, scanout_id: u32, view: ShownView, memory: FrameMemory) {
        if let Some(s) = self.scanouts.get_mut(scanout_id) {
            s.shown = Some(Shown { view, memory });
        }
    }

    /// What showing a `width`x`height` rectangle costs: the device's copy and each display
    /// sink copy, 4 bytes per pixel.
    pub(crate) fn frame_cost(&self, width: u32, height: u32) -> Usage {
        let copies = 1 + u64::from(self.display.frame_copies());
        Usage::host_bytes(
            (u64::from(width) * u64::from(height) * u64::from(BYTES_PER_PIXEL))
                .saturating_mul(copies),
        )
    }

    /// The memory for showing a `width`x`height` rectangle on `scanout_id`: the scanout's
    /// current one resized (a page flip between images of one size costs nothing new), or a
    /// new charge. On failure (`ERR_OUT_OF_MEMORY`) the scanout keeps what it shows.
    fn frame_memory(
        &mut self,
        scanout_id: u32,
        width: u32,
        height: u32,
    ) -> Result<FrameMemory, Reject> {
        let cost = self.frame_cost(width, height);
        let what = || format!("scanout {scanout_id}: showing {width}x{height}");
        let frame_bytes = u64::from(width) * u64::from(height) * u64::from(BYTES_PER_PIXEL);
        let mut memory = match self.scanouts.shown_mut(scanout_id) {
            Some(shown) => {
                shown
                    .memory
                    .charge
                    .resize(cost)
                    .map_err(|e| over_budget(&what(), e))?;
                let empty = FrameMemory {
                    scratch: Vec::new(),
                    charge: self.resources.budget().nothing(),
                };
                std::mem::replace(&mut shown.memory, empty)
            }
            None => FrameMemory {
                scratch: Vec::new(),
                charge: self.resources.charge(cost, &what())?,
            },
        };
        // The scratch copy never holds more than the new rectangle.
        if memory.scratch.capacity() as u64 > frame_bytes {
            memory.scratch = Vec::new();
        }
        Ok(memory)
    }

    /// `ERR_INVALID_PARAMETER` for an image larger than [`MAX_SCANOUT_SIDE`] on a side.
    fn check_scanout_size(width: u32, height: u32, what: &str) -> Result<(), Reject> {
        if width > MAX_SCANOUT_SIDE || height > MAX_SCANOUT_SIDE {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "{what} {width}x{height}: a scanout shows at most \
                     {MAX_SCANOUT_SIDE}x{MAX_SCANOUT_SIDE}"
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn set_scanout(
        &mut self,
        scanout_id: u32,
        resource_id: u32,
        rect: Rect,
    ) -> CmdResult {
        self.scanouts.check(scanout_id)?;
        if resource_id == 0 {
            self.disable_scanout(scanout_id);
            return Ok(GpuResponse::OkNoData);
        }
        let resource = self.resources.get(resource_id)?;
        if matches!(&resource.kind, ResourceKind::Renderer(r) if r.create.is_some()) {
            return self.set_scanout_3d(scanout_id, resource_id, rect);
        }
        let ResourceKind::Image2d(image) = &resource.kind else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {resource_id} is a {}; blobs are shown with SET_SCANOUT_BLOB",
                    resource.kind_name()
                ),
            ));
        };
        check_rect(&rect, image.width, image.height, || {
            format!("resource_id {resource_id}")
        })?;
        Self::check_scanout_size(rect.width, rect.height, "r")?;
        let memory = self.frame_memory(scanout_id, rect.width, rect.height)?;
        self.show(
            scanout_id,
            ShownView {
                resource_id,
                rect,
                blob: None,
                dmabuf: false,
            },
            memory,
        );
        self.display
            .scanout(scanout_id, Some((rect.width, rect.height)));
        Ok(GpuResponse::OkNoData)
    }

    /// `SET_SCANOUT` of a 3D resource: a dma-buf scanout where the renderer can export the
    /// texture and the display takes it (a host with a render node), else its pixels are
    /// read back on every flush.
    fn set_scanout_3d(&mut self, scanout_id: u32, resource_id: u32, rect: Rect) -> CmdResult {
        let what = format!("scanout {scanout_id}: resource_id {resource_id}");
        let Some(renderer) = self.renderer.as_mut() else {
            return Err(reject(GpuError::Unspec, format!("{what}: no renderer")));
        };
        self.renderer_work = true;
        let info = renderer
            .resource_info(resource_id)
            .map_err(|e| reject(GpuError::InvalidParameter, format!("{what}: {e}")))?;
        check_rect(&rect, info.width, info.height, || {
            format!("resource_id {resource_id}")
        })?;
        Self::check_scanout_size(rect.width, rect.height, "r")?;
        let full =
            rect.x == 0 && rect.y == 0 && rect.width == info.width && rect.height == info.height;
        let export = if full {
            renderer.export_scanout(resource_id).ok()
        } else {
            None
        };
        if export.is_none() && info.drm_fourcc == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "{what}: virgl format {} cannot be shown (not a 4-byte colour format, and \
                     no dma-buf export)",
                    info.virgl_format
                ),
            ));
        }
        // Shown by reading back, each flush holds the pixels from the resource's corner to
        // the rectangle's far edge (`read_pixels`) besides the copies of the rectangle: the
        // scanout is charged as a frame of that size.
        let memory = self.frame_memory(
            scanout_id,
            rect.x.saturating_add(rect.width),
            rect.y.saturating_add(rect.height),
        )?;
        self.display
            .scanout(scanout_id, Some((rect.width, rect.height)));
        let dmabuf = export.is_some_and(|e| {
            self.display.dmabuf_scanout(
                scanout_id,
                &DmabufScanout {
                    fd: e.fd.as_fd(),
                    width: e.width,
                    height: e.height,
                    stride: e.stride,
                    drm_format: e.drm_fourcc,
                    modifier: fourcc::MOD_INVALID,
                    y0_top: info.y_0_top,
                },
            )
        });
        debug!(
            "{what}: {}x{} virgl format {} shown {}",
            info.width,
            info.height,
            info.virgl_format,
            if dmabuf {
                "as a dma-buf"
            } else {
                "by reading it back"
            }
        );
        self.show(
            scanout_id,
            ShownView {
                resource_id,
                rect,
                blob: None,
                dmabuf,
            },
            memory,
        );
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn set_scanout_blob(&mut self, blob: ScanoutBlob) -> CmdResult {
        let ScanoutBlob {
            rect,
            scanout_id,
            resource_id,
            ..
        } = blob;
        let mut view = BlobView {
            width: blob.width,
            height: blob.height,
            format: blob.format,
            drm_format: 0,
            stride: blob.strides[0],
            offset: blob.offsets[0],
        };
        self.require_feature(feature::RESOURCE_BLOB, "RESOURCE_BLOB")?;
        self.scanouts.check(scanout_id)?;
        if resource_id == 0 {
            self.disable_scanout(scanout_id);
            return Ok(GpuResponse::OkNoData);
        }
        let resource = self.resources.get(resource_id)?;
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
        Self::check_scanout_size(view.width, view.height, "width/height")?;
        let row_bytes = u64::from(view.width) * u64::from(BYTES_PER_PIXEL);
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
        check_rect(&rect, view.width, view.height, || "the image".into())?;
        if matches!(resource.kind, ResourceKind::Renderer(_)) {
            self.export_for_scanout(resource_id)?;
        }
        let memory = self.frame_memory(scanout_id, rect.width, rect.height)?;
        self.display
            .scanout(scanout_id, Some((rect.width, rect.height)));
        // Offer the buffer itself to sinks that import dma-bufs, when the whole image is
        // shown.
        let full = rect.x == 0
            && rect.y == 0
            && rect.width == view.width
            && rect.height == view.height
            && view.offset == 0;
        let buffer = match self.resources.get(resource_id).map(|r| &r.kind) {
            Ok(ResourceKind::HostBlob(b)) if b.buffer.is_dmabuf => {
                Some((b.buffer.fd.as_fd(), b.buffer.modifier))
            }
            Ok(ResourceKind::GuestBlob {
                dmabuf: Some(fd), ..
            }) => Some((fd.as_fd(), fourcc::MOD_LINEAR)),
            // A renderer blob the renderer exported as a dma-buf (its bytes from offset 0).
            Ok(ResourceKind::Renderer(r))
                if r.exported_kind == Some(BlobFdKind::Dmabuf) && r.exported_offset == 0 =>
            {
                r.exported
                    .as_ref()
                    .map(|fd| (fd.as_fd(), fourcc::MOD_LINEAR))
            }
            _ => None,
        };
        let dmabuf = match buffer {
            Some((fd, modifier)) if full => self.display.dmabuf_scanout(
                scanout_id,
                &DmabufScanout {
                    fd,
                    width: view.width,
                    height: view.height,
                    stride: view.stride,
                    drm_format: view.drm_format,
                    modifier,
                    y0_top: false,
                },
            ),
            _ => false,
        };
        self.show(
            scanout_id,
            ShownView {
                resource_id,
                rect,
                blob: Some(view),
                dmabuf,
            },
            memory,
        );
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn resource_flush(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        rect: Rect,
    ) -> CmdResult {
        let resource = self.resources.get(resource_id)?;
        if let ResourceKind::Image2d(image) = &resource.kind {
            check_rect(&rect, image.width, image.height, || {
                format!("resource_id {resource_id}")
            })?;
        }
        for scanout_id in self.scanouts.showing(resource_id) {
            let Some(shown) = self.scanouts.shown_mut(scanout_id) else {
                continue;
            };
            let view = shown.view;
            let damage = intersect(&rect, &view.rect);
            if damage.width == 0 {
                continue;
            }
            let damage = Rect {
                x: damage.x - view.rect.x,
                y: damage.y - view.rect.y,
                ..damage
            };
            // The scratch copy is the scanout's (charged with it): lend it to `present`.
            let mut scratch = std::mem::take(&mut shown.memory.scratch);
            let presented = self.present(mem, scanout_id, &view, damage, &mut scratch);
            if let Some(shown) = self.scanouts.shown_mut(scanout_id) {
                shown.memory.scratch = scratch;
            }
            presented?;
        }
        Ok(GpuResponse::OkNoData)
    }

    /// Shows every scanout's current image on `sink` alone (a sink that starts late: the
    /// capture after a live upgrade): its mode, then the whole image as one update. Returns
    /// `sink`; the device's own sink is not told anything. The copies are the scanouts' own
    /// (charged with them).
    pub fn repaint(
        &mut self,
        mem: &GuestMemory,
        sink: Box<dyn DisplaySink>,
    ) -> Box<dyn DisplaySink> {
        let own = std::mem::replace(&mut self.display, sink);
        for scanout_id in 0..self.scanouts.len() as u32 {
            let Some(shown) = self.scanouts.shown_mut(scanout_id) else {
                continue;
            };
            // A copy, whatever the device's own sink imported.
            let view = ShownView {
                dmabuf: false,
                ..shown.view
            };
            let (width, height) = (view.rect.width, view.rect.height);
            let mut scratch = std::mem::take(&mut shown.memory.scratch);
            self.display.scanout(scanout_id, Some((width, height)));
            let whole = Rect {
                x: 0,
                y: 0,
                width,
                height,
            };
            if let Err(e) = self.present(mem, scanout_id, &view, whole, &mut scratch) {
                debug!("repaint of scanout {scanout_id}: {}", e.reason);
            }
            if let Some(shown) = self.scanouts.shown_mut(scanout_id) {
                shown.memory.scratch = scratch;
            }
        }
        std::mem::replace(&mut self.display, own)
    }

    /// Hands the scanout's current image to the display sink; `scratch` is the scanout's
    /// copy of its rectangle (charged with it).
    fn present(
        &mut self,
        mem: &GuestMemory,
        scanout_id: u32,
        view: &ShownView,
        damage: Rect,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        if view.dmabuf && self.display.dmabuf_flush(scanout_id, damage) {
            return Ok(());
        }
        let rid = view.resource_id;
        let Ok(resource) = self.resources.get_mut(rid) else {
            return Ok(());
        };
        let rect = view.rect;
        let packed_stride = rect.width * BYTES_PER_PIXEL;
        let result = match (&mut resource.kind, view.blob) {
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
                    return Ok(());
                }
                let (pixels, drm_format) = (&image.pixels, image.drm_format);
                resource::copy_rect_out(&rect, 0, u64::from(image.stride), scratch, |off, dst| {
                    let off = off as usize;
                    dst.copy_from_slice(&pixels[off..off + dst.len()]);
                    Ok(())
                })
                .map(|()| drm_format)
            }
            (ResourceKind::GuestBlob { backing, .. }, Some(view)) => resource::copy_rect_out(
                &rect,
                u64::from(view.offset),
                u64::from(view.stride),
                scratch,
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
                                return Err(reject(
                                GpuError::Unspec,
                                format!("resource_id {rid}: cannot map the host buffer for reading: {e}"),
                            ));
                            }
                        }
                    }
                };
                let fd = blob.buffer.fd.as_fd();
                let _sync = blob.buffer.is_dmabuf.then(|| begin_cpu_read(fd)).flatten();
                let copied = resource::copy_rect_out(
                    &rect,
                    u64::from(view.offset),
                    u64::from(view.stride),
                    scratch,
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
            (ResourceKind::Renderer(r), Some(view)) => {
                // A renderer blob shown as an image: read through its exported fd.
                let Some(fd) = r.exported.as_ref() else {
                    return Err(reject(
                        GpuError::Unspec,
                        format!("resource_id {rid}: the renderer blob was not exported"),
                    ));
                };
                // Where the blob's bytes start in the fd (an opaque fd's header comes first).
                let start = r.exported_offset;
                let map = match r.cpu_map.take() {
                    Some(m) => m,
                    None => match MappedBuffer::map_read(
                        fd.as_fd(),
                        resource.size.saturating_add(start),
                    ) {
                        Ok(m) => m,
                        Err(e) => {
                            return Err(reject(
                                GpuError::Unspec,
                                format!("resource_id {rid}: cannot map the renderer blob: {e}"),
                            ));
                        }
                    },
                };
                let dmabuf = r.exported_kind == Some(BlobFdKind::Dmabuf);
                let _sync = dmabuf.then(|| begin_cpu_read(fd.as_fd())).flatten();
                let copied = resource::copy_rect_out(
                    &rect,
                    u64::from(view.offset),
                    u64::from(view.stride),
                    scratch,
                    |off, dst| {
                        usize::try_from(off.saturating_add(start))
                            .ok()
                            .and_then(|off| map.read_into(off, dst))
                            .ok_or_else(|| format!("read at {off:#x} outside the blob"))
                    },
                )
                .map(|()| view.drm_format);
                drop(_sync);
                r.cpu_map = Some(map);
                copied
            }
            (ResourceKind::Renderer(_), None) => {
                // A 3D resource: read back through the renderer.
                let renderer = self.renderer.as_mut();
                let read = renderer
                    .ok_or_else(|| "no renderer".to_string())
                    .and_then(|renderer| {
                        let info = renderer.resource_info(rid).map_err(|e| e.to_string())?;
                        let (w, h) = (
                            rect.x.saturating_add(rect.width),
                            rect.y.saturating_add(rect.height),
                        );
                        let pixels = renderer.read_pixels(rid, w, h).map_err(|e| e.to_string())?;
                        Ok((info.drm_fourcc, pixels, w))
                    });
                self.renderer_work = true;
                match read {
                    Ok((drm_format, pixels, w)) => resource::copy_rect_out(
                        &rect,
                        0,
                        u64::from(w) * u64::from(BYTES_PER_PIXEL),
                        scratch,
                        |off, dst| {
                            let off = off as usize;
                            pixels
                                .get(off..off + dst.len())
                                .map(|src| dst.copy_from_slice(src))
                                .ok_or_else(|| "read-back shorter than asked".to_string())
                        },
                    )
                    .map(|()| drm_format),
                    Err(e) => Err(e),
                }
            }
            (_, None) => Err("blob shown without a layout".to_string()),
        };
        match result {
            Ok(drm_format) => {
                let frame = Frame {
                    width: rect.width,
                    height: rect.height,
                    stride: packed_stride,
                    drm_format,
                    data: &scratch[..],
                };
                self.display.flush(scanout_id, &frame, damage);
                Ok(())
            }
            Err(e) => Err(reject(
                GpuError::Unspec,
                format!("scanout {scanout_id}: reading resource_id {rid} failed: {e}"),
            )),
        }
    }

    pub(super) fn update_cursor(&mut self, mem: &GuestMemory, update: CursorUpdate) -> CmdResult {
        let CursorUpdate {
            pos,
            resource_id,
            hot_x,
            hot_y,
        } = update;
        self.scanouts.check(pos.scanout_id)?;
        if resource_id == 0 {
            self.scanouts.cursor = CursorState {
                resource_id: 0,
                scanout_id: pos.scanout_id,
                x: pos.x,
                y: pos.y,
            };
            self.display
                .cursor_update(&cursor(&pos, hot_x, hot_y, None));
            return Ok(GpuResponse::OkNoData);
        }
        let resource = self.resources.get(resource_id)?;
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
                let mut raw = vec![0u8; CURSOR_BYTES];
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
            // GBM cursor buffers of a virgl guest (weston, Xorg) are 3D resources.
            ResourceKind::Renderer(r) if r.create.is_some() => self.cursor_3d(resource_id)?,
            ResourceKind::Renderer(_) => {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!("resource_id {resource_id}: renderer blobs cannot be cursors"),
                ))
            }
        };
        debug!(
            "cursor: resource {resource_id} on scanout {} at {},{}",
            pos.scanout_id, pos.x, pos.y
        );
        self.scanouts.cursor = CursorState {
            resource_id,
            scanout_id: pos.scanout_id,
            x: pos.x,
            y: pos.y,
        };
        self.display
            .cursor_update(&cursor(&pos, hot_x, hot_y, Some(&image)));
        Ok(GpuResponse::OkNoData)
    }

    /// The 64x64 cursor image of a 3D resource, read back through the renderer.
    fn cursor_3d(&mut self, resource_id: u32) -> Result<Vec<u8>, Reject> {
        let what = format!("resource_id {resource_id}: cursor");
        let renderer = self
            .renderer
            .as_mut()
            .ok_or_else(|| reject(GpuError::InvalidParameter, format!("{what}: no renderer")))?;
        self.renderer_work = true;
        let info = renderer
            .resource_info(resource_id)
            .map_err(|e| reject(GpuError::InvalidParameter, format!("{what}: {e}")))?;
        let (w, h) = (info.width.min(CURSOR_SIDE), info.height.min(CURSOR_SIDE));
        let pixels = renderer
            .read_pixels(resource_id, w, h)
            .map_err(|e| reject(GpuError::InvalidParameter, format!("{what}: {e}")))?;
        cursor_image(&pixels, w, h, info.drm_fourcc).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!(
                    "{what}: virgl format {} is not a cursor format",
                    info.virgl_format
                ),
            )
        })
    }

    /// Exports a renderer blob (once) so that it can be shown.
    fn export_for_scanout(&mut self, resource_id: u32) -> Result<(), Reject> {
        self.exported_blob(resource_id)
    }

    pub(super) fn move_cursor(&mut self, pos: CursorPos) -> CmdResult {
        self.scanouts.check(pos.scanout_id)?;
        let cursor = &mut self.scanouts.cursor;
        if cursor.resource_id == 0 {
            debug!("MOVE_CURSOR: no cursor image set yet");
        }
        cursor.scanout_id = pos.scanout_id;
        cursor.x = pos.x;
        cursor.y = pos.y;
        self.display.cursor_move(pos.scanout_id, pos.x, pos.y);
        Ok(GpuResponse::OkNoData)
    }
}

/// The cursor as the display sink is given it.
fn cursor<'a>(pos: &CursorPos, hot_x: u32, hot_y: u32, image: Option<&'a [u8]>) -> Cursor<'a> {
    Cursor {
        scanout_id: pos.scanout_id,
        x: pos.x,
        y: pos.y,
        hot_x,
        hot_y,
        image,
    }
}

/// `ERR_INVALID_PARAMETER` unless `rect` is non-empty and inside the `width`x`height` image
/// `what()` names.
fn check_rect(
    rect: &Rect,
    width: u32,
    height: u32,
    what: impl FnOnce() -> String,
) -> Result<(), Reject> {
    if rect_within(rect, width, height) {
        Ok(())
    } else {
        Err(reject(
            GpuError::InvalidParameter,
            format!(
                "r {rect:?} is empty or outside {} ({width}x{height})",
                what()
            ),
        ))
    }
}
