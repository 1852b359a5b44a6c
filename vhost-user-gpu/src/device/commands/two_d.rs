//! 2D resources: RESOURCE_CREATE_2D, RESOURCE_ATTACH_BACKING, RESOURCE_DETACH_BACKING and
//! TRANSFER_TO_HOST_2D.

use crate::device::backing::Backing;
use crate::device::ports::GuestMemory;
use crate::device::reject::{reject, CmdResult};
use crate::device::resource::{
    self, AttachedBacking, Image2d, Resource, ResourceKind, TransferError, BYTES_PER_PIXEL,
};
use crate::device::{backing_cost, GpuDevice};
use crate::protocol::{format, GpuError, GpuResponse, MemEntry, Rect};

impl GpuDevice {
    pub(super) fn resource_create_2d(
        &mut self,
        resource_id: u32,
        virtio_format: u32,
        width: u32,
        height: u32,
    ) -> CmdResult {
        let mut charge = self.resources.reserve(resource_id)?;
        let drm_format = format::to_drm_fourcc(virtio_format).ok_or_else(|| {
            reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id}: format {virtio_format} is not supported"),
            )
        })?;
        if width == 0 || height == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id}: size {width}x{height} is empty"),
            ));
        }
        let stride = width.checked_mul(BYTES_PER_PIXEL).ok_or_else(|| {
            reject(
                GpuError::OutOfMemory,
                format!("resource_id {resource_id}: width {width} is too large"),
            )
        })?;
        let bytes = u64::from(stride) * u64::from(height);
        let len = usize::try_from(bytes).map_err(|_| {
            reject(
                GpuError::OutOfMemory,
                format!("resource_id {resource_id}: {bytes} bytes do not fit in memory"),
            )
        })?;
        charge.absorb(
            self.resources
                .charge_bytes(bytes, &format!("resource_id {resource_id}"))?,
        );
        let mut pixels = Vec::new();
        if pixels.try_reserve_exact(len).is_err() {
            return Err(reject(
                GpuError::OutOfMemory,
                format!("resource_id {resource_id}: host allocation of {bytes} bytes failed"),
            ));
        }
        pixels.resize(len, 0);
        let image = Image2d {
            drm_format,
            width,
            height,
            stride,
            pixels,
            backing: None,
        };
        self.resources.insert(
            resource_id,
            Resource::new(ResourceKind::Image2d(image), bytes, 0, charge),
        );
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn attach_backing(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        entries: Vec<MemEntry>,
    ) -> CmdResult {
        let resource = self.resources.get(resource_id)?;
        let kind = resource.kind_name();
        if matches!(resource.kind, ResourceKind::Renderer(_)) {
            return self.attach_backing_3d(mem, resource_id, entries);
        }
        let ResourceKind::Image2d(image) = &resource.kind else {
            return Err(reject(
                GpuError::Unspec,
                format!(
                    "resource_id {resource_id} is a {kind}; only 2D and 3D resources take a \
                     backing"
                ),
            ));
        };
        if image.backing.is_some() {
            return Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id} already has a backing"),
            ));
        }
        // The entry list is host memory the guest chooses the size of.
        let charge = self.resources.charge_bytes(
            backing_cost(entries.len()),
            &format!("resource_id {resource_id}: backing entries"),
        )?;
        let backing = Backing::new(mem, entries).map_err(|e| {
            reject(
                GpuError::Unspec,
                format!("resource_id {resource_id}: nr_entries/entries: {e}"),
            )
        })?;
        if let ResourceKind::Image2d(image) = &mut self.resources.get_mut(resource_id)?.kind {
            image.backing = Some(AttachedBacking {
                backing,
                _charge: charge,
            });
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn detach_backing(&mut self, resource_id: u32) -> CmdResult {
        if matches!(
            self.resources.get(resource_id)?.kind,
            ResourceKind::Renderer(_)
        ) {
            return self.detach_backing_3d(resource_id);
        }
        let resource = self.resources.get_mut(resource_id)?;
        let kind = resource.kind_name();
        match &mut resource.kind {
            // Dropping the backing releases what its entry list was charged.
            ResourceKind::Image2d(image) => match image.backing.take() {
                Some(_released) => Ok(GpuResponse::OkNoData),
                None => Err(reject(
                    GpuError::Unspec,
                    format!("resource_id {resource_id} has no backing"),
                )),
            },
            _ => Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id} is a {kind}; its backing cannot be detached"),
            )),
        }
    }

    pub(super) fn transfer_to_host_2d(
        &mut self,
        mem: &GuestMemory,
        resource_id: u32,
        rect: Rect,
        offset: u64,
    ) -> CmdResult {
        let resource = self.resources.get_mut(resource_id)?;
        let kind = resource.kind_name();
        match &mut resource.kind {
            ResourceKind::Image2d(image) => {
                let Some(attached) = image.backing.take() else {
                    return Err(reject(
                        GpuError::Unspec,
                        format!("resource_id {resource_id} has no backing attached"),
                    ));
                };
                let result =
                    resource::transfer_to_host_2d(image, &attached.backing, mem, &rect, offset);
                image.backing = Some(attached);
                result.map_err(|e| {
                    let error = match e {
                        TransferError::Backing(_) => GpuError::Unspec,
                        _ => GpuError::InvalidParameter,
                    };
                    reject(error, format!("resource_id {resource_id}: r/offset: {e}"))
                })?;
                Ok(GpuResponse::OkNoData)
            }
            // GUEST blobs are read from guest memory when shown: nothing to copy. The Linux
            // driver sends this for dumb buffers, which are GUEST blobs with RESOURCE_BLOB.
            ResourceKind::GuestBlob { .. } => Ok(GpuResponse::OkNoData),
            ResourceKind::HostBlob(_) => Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is a {kind}: it has no guest backing"),
            )),
            ResourceKind::Renderer(_) => self.transfer_2d_of_3d(resource_id, rect, offset),
        }
    }
}
