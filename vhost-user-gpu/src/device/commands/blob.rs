//! Blob resources: RESOURCE_CREATE_BLOB (GUEST and HOST3D), RESOURCE_ASSIGN_UUID,
//! RESOURCE_MAP_BLOB and RESOURCE_UNMAP_BLOB.

use std::os::fd::{AsFd, OwnedFd};

use log::{debug, error, info};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::device::backing::Backing;
use crate::device::budget::{Charge, Kind, Usage};
use crate::device::ports::{
    ExportError, GuestMemory, GuestPages, HostBuffer, MapAdvice, MapRange, PAGE_SIZE,
};
use crate::device::reject::{over_budget, reject, CmdResult, Reject};
use crate::device::resource::{HostBlob, Resource, ResourceKind};
use crate::device::{backing_cost, buffer_usage, dmabuf_overhead, GpuDevice};
use crate::protocol::cross_domain::ImageRequirements;
use crate::protocol::{
    feature, CreateBlob, GpuError, GpuResponse, MemEntry, BLOB_FLAG_USE_CROSS_DEVICE,
    BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D,
    MAP_CACHE_CACHED, MAP_CACHE_UNCACHED, MAP_CACHE_WC,
};

const KNOWN_BLOB_FLAGS: u32 =
    BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE | BLOB_FLAG_USE_CROSS_DEVICE;

/// Whether an allocation has the layout the guest was told.
fn matches_requirements(buffer: &HostBuffer, reqs: &ImageRequirements) -> bool {
    buffer.size == reqs.size
        && buffer.modifier == reqs.modifier
        && buffer.planes.len() <= 4
        && buffer
            .planes
            .iter()
            .zip(reqs.strides.iter().zip(reqs.offsets.iter()))
            .all(|(plane, (&stride, &offset))| plane.stride == stride && plane.offset == offset)
}

impl GpuDevice {
    pub(super) fn create_blob(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        p: CreateBlob,
    ) -> CmdResult {
        self.require_feature(feature::RESOURCE_BLOB, "RESOURCE_BLOB")?;
        let rid = p.resource_id;
        let count = self.resources.reserve(rid)?;
        if p.blob_flags & !KNOWN_BLOB_FLAGS != 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: unknown blob_flags bits {:#x}",
                    p.blob_flags
                ),
            ));
        }
        if p.size == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {rid}: size 0"),
            ));
        }
        if ctx_id != 0 && !self.contexts.contains(ctx_id) {
            return Err(reject(
                GpuError::InvalidContextId,
                format!("resource_id {rid}: ctx_id {ctx_id} does not exist"),
            ));
        }
        // A blob created in a context is attached to it: charge that before creating it.
        let attachment = match ctx_id {
            0 => None,
            _ => Some(self.resources.charge(
                Usage::of(Kind::Attachments, 1),
                &format!("resource_id {rid}: attaching to ctx_id {ctx_id}"),
            )?),
        };
        let resource = match p.blob_mem {
            // Blobs of a renderer context live in the renderer (GUEST ones in both).
            _ if self.contexts.has_renderer(ctx_id) => {
                self.create_renderer_blob(mem, ctx_id, p, count)?
            }
            BLOB_MEM_GUEST => self.new_guest_blob(mem, &p, count)?,
            BLOB_MEM_HOST3D => self.new_host_blob(ctx_id, &p, count)?,
            other => {
                return Err(reject(
                    GpuError::InvalidParameter,
                    format!(
                        "resource_id {rid}: blob_mem {other} is not supported (GUEST=1 and \
                         HOST3D=2 are)"
                    ),
                ))
            }
        };
        self.resources.insert(rid, resource);
        if let (Ok(ctx), Some(attachment)) = (self.contexts.get_mut(ctx_id), attachment) {
            ctx.attach_charged(rid, attachment);
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn new_guest_blob(
        &mut self,
        mem: &GuestMemory,
        p: &CreateBlob,
        mut charge: Charge,
    ) -> Result<Resource, Reject> {
        let rid = p.resource_id;
        if p.blob_id != 0 {
            debug!(
                "RESOURCE_CREATE_BLOB: resource_id {rid}: blob_id {} ignored for GUEST blobs",
                p.blob_id
            );
        }
        // The entry list is host memory the guest chooses the size of.
        charge.absorb(self.resources.charge_bytes(
            backing_cost(p.entries.len()),
            &format!("resource_id {rid}: blob entries"),
        )?);
        let backing = Backing::new(mem, p.entries.clone()).map_err(|e| {
            // As for RESOURCE_ATTACH_BACKING (and as QEMU answers both): entries the device
            // cannot reach in guest memory are ERR_UNSPEC.
            reject(GpuError::Unspec, format!("resource_id {rid}: entries: {e}"))
        })?;
        // A GUEST blob is guest memory: entries that list the same guest bytes twice would
        // make a blob larger than the memory behind it (16384 entries of 1 MiB over one
        // MiB claim 16 GiB), and everything sized by a blob (scanout views, dma-buf page
        // arrays) would follow that claim. No driver does this: refused.
        if let Some((a, b)) = backing.overlapping_entries() {
            let (ea, eb) = (backing.entries()[a], backing.entries()[b]);
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: entries {a} ({:#x}+{:#x}) and {b} ({:#x}+{:#x}) \
                     overlap: a GUEST blob's entries must list distinct guest memory",
                    ea.addr, ea.length, eb.addr, eb.length
                ),
            ));
        }
        if backing.len() < p.size {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: size {} but the entries cover only {} bytes",
                    p.size,
                    backing.len()
                ),
            ));
        }
        let dmabuf = self
            .export_guest_pages(mem, rid, &backing)
            .map(|(fd, export)| {
                charge.absorb(export);
                fd
            });
        Ok(Resource::new(
            ResourceKind::GuestBlob { backing, dmabuf },
            p.size,
            p.blob_flags,
            charge,
        ))
    }

    /// Best effort: a dma-buf over the guest pages of a GUEST blob, when there is an exporter
    /// (udmabuf) and every entry is page aligned inside one memfd-backed guest RAM region,
    /// with what it is charged (its fd and the kernel's page arrays; the pages are guest
    /// RAM). A blob that cannot be exported still works (its pixels are copied for the
    /// display), so a budget that cannot take the export only skips it; the first refusal by
    /// the kernel is logged once per device with its cause, later ones at debug level.
    fn export_guest_pages(
        &mut self,
        mem: &GuestMemory,
        rid: u32,
        backing: &Backing,
    ) -> Option<(OwnedFd, Charge)> {
        let exporter = self.exporter.as_mut()?;
        let pages = guest_pages(mem, backing.entries())?;
        let cost = Usage::host_bytes(dmabuf_overhead(backing.len())).with(Kind::Fds, 1);
        let charge = match self.resources.budget().charge(cost) {
            Ok(charge) => charge,
            Err(e) => {
                debug!(
                    "udmabuf export of resource_id {rid} skipped: {}",
                    over_budget("the export", e).reason
                );
                return None;
            }
        };
        match exporter.export(&pages) {
            Ok(fd) => Some((fd, charge)),
            Err(ExportError::Unsuitable(why)) => {
                debug!("udmabuf export skipped: {why}");
                None
            }
            Err(ExportError::Refused(e)) => {
                if self.export_refusal_logged {
                    debug!("udmabuf export failed: {e}");
                } else {
                    self.export_refusal_logged = true;
                    info!(
                        "GUEST blobs are not exported as dma-bufs (the blob still works, its \
                         pixels are copied): {e}; logged once"
                    );
                }
                None
            }
        }
    }

    fn new_host_blob(
        &mut self,
        ctx_id: u32,
        p: &CreateBlob,
        mut charge: Charge,
    ) -> Result<Resource, Reject> {
        let rid = p.resource_id;
        if ctx_id == 0 {
            return Err(reject(
                GpuError::InvalidContextId,
                format!("resource_id {rid}: HOST3D blobs need a context (ctx_id 0)"),
            ));
        }
        if !p.entries.is_empty() {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: HOST3D blobs take no entries ({} given)",
                    p.entries.len()
                ),
            ));
        }
        let ctx = self.contexts.get_mut(ctx_id).map_err(|_| {
            reject(
                GpuError::InvalidContextId,
                format!("resource_id {rid}: ctx_id {ctx_id} does not exist"),
            )
        })?;
        // Odd ids name buffers the compositor handed in (RECEIVE); image requirements hand
        // out even ones.
        if ctx.channel.is_some() && p.blob_id % 2 == 1 {
            return self.received_blob(ctx_id, p, charge);
        }
        let blob_id = u32::try_from(p.blob_id).ok();
        let requirement = blob_id
            .and_then(|id| ctx.requirement_mut(id))
            .ok_or_else(|| {
                reject(
                    GpuError::InvalidParameter,
                    format!(
                        "resource_id {rid}: blob_id {} was not handed out by \
                         GET_IMAGE_REQUIREMENTS in ctx_id {ctx_id}",
                        p.blob_id
                    ),
                )
            })?;
        if requirement.reqs.size != p.size {
            return Err(reject(
                GpuError::InvalidParameter,
                format!(
                    "resource_id {rid}: size {} differs from the {} bytes of blob_id {}",
                    p.size, requirement.reqs.size, p.blob_id
                ),
            ));
        }
        let image = requirement.image;
        let reqs = requirement.reqs;
        let request = requirement.request;
        let buffer = match blob_id.and_then(|id| ctx.take_pending(id)) {
            // Allocated (and charged) by GET_IMAGE_REQUIREMENTS.
            Some(pending) => {
                charge.absorb(pending.charge);
                pending.buffer
            }
            // A second blob from the same requirements: allocate again, and insist on the
            // layout the guest was told.
            None => {
                // Charged as a dma-buf (the most it can cost) until the allocator says what
                // it made.
                let mut buffer_charge = self
                    .resources
                    .charge(buffer_usage(reqs.size, true), &format!("resource_id {rid}"))?;
                let buffer = match self.allocator.allocate(&request) {
                    Ok(b) if matches_requirements(&b, &reqs) => b,
                    Ok(_) => {
                        return Err(reject(
                            GpuError::Unspec,
                            format!(
                                "resource_id {rid}: the {} allocator returned a different \
                                 layout for blob_id {}",
                                self.allocator.name(),
                                p.blob_id
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(reject(
                            GpuError::OutOfMemory,
                            format!(
                                "resource_id {rid}: {} allocator: {e}",
                                self.allocator.name()
                            ),
                        ));
                    }
                };
                // Only ever shrinks (the buffer has the requirement's size).
                buffer_charge
                    .resize(buffer_usage(buffer.size, buffer.is_dmabuf))
                    .map_err(|e| over_budget(&format!("resource_id {rid}"), e))?;
                charge.absorb(buffer_charge);
                buffer
            }
        };
        let size = buffer.size;
        let kind = ResourceKind::HostBlob(HostBlob {
            buffer,
            image,
            mapped_at: None,
            cpu_map: None,
            writable: true,
        });
        Ok(Resource::new(kind, size, p.blob_flags, charge))
    }

    pub(super) fn assign_uuid(&mut self, resource_id: u32) -> CmdResult {
        self.require_feature(feature::RESOURCE_UUID, "RESOURCE_UUID")?;
        let resource = self.resources.get_mut(resource_id)?;
        if let Some(uuid) = resource.uuid {
            return Ok(GpuResponse::OkResourceUuid(uuid));
        }
        let mut uuid = [0u8; 16];
        rustix::rand::getrandom(&mut uuid, rustix::rand::GetRandomFlags::empty()).map_err(|e| {
            reject(
                GpuError::Unspec,
                format!("resource_id {resource_id}: getrandom: {e}"),
            )
        })?;
        // RFC 4122 version 4 (random), variant 10.
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        resource.uuid = Some(uuid);
        Ok(GpuResponse::OkResourceUuid(uuid))
    }

    /// `ERR_UNSPEC` unless there is a host-visible region to map into now.
    pub(super) fn check_region(&self, resource_id: u32) -> Result<(), Reject> {
        let region_size = self.region.size();
        let shmem_available = self.shmem_available;
        let mapper_available = self.mapper.available();
        if region_size == 0 || !shmem_available || !mapper_available {
            return Err(reject(
                GpuError::Unspec,
                format!(
                    "resource_id {resource_id}: no host-visible region to map into (region \
                     size {region_size:#x}, frontend shared memory {}, mapper {})",
                    if shmem_available {
                        "set up"
                    } else {
                        "not set up"
                    },
                    if mapper_available {
                        "ready"
                    } else {
                        "unavailable"
                    }
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn map_blob(&mut self, resource_id: u32, offset: u64) -> CmdResult {
        self.require_feature(feature::RESOURCE_BLOB, "RESOURCE_BLOB")?;
        if matches!(
            self.resources.get(resource_id)?.kind,
            ResourceKind::Renderer(_)
        ) {
            return self.map_renderer_blob(resource_id, offset);
        }
        let region_check = self.check_region(resource_id);
        let resource = self.resources.get_mut(resource_id)?;
        let kind = resource.kind_name();
        let flags = resource.blob_flags;
        let ResourceKind::HostBlob(blob) = &mut resource.kind else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is a {kind}; only HOST3D blobs are mapped"),
            ));
        };
        if flags & BLOB_FLAG_USE_MAPPABLE == 0 {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} was not created MAPPABLE"),
            ));
        }
        if let Some(at) = blob.mapped_at {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is already mapped at {at:#x}"),
            ));
        }
        region_check?;
        let advice = self
            .advisor
            .advise(blob.buffer.fd.as_fd(), self.allocator.drm_fd());
        let map_info = match advice {
            MapAdvice::Refuse { reason } => {
                return Err(reject(
                    GpuError::Unspec,
                    format!(
                        "resource_id {resource_id} ({}, {} bytes, {}x{} {:#010x}) refused for \
                         guest mapping: {reason}",
                        if blob.buffer.is_dmabuf {
                            "dma-buf"
                        } else {
                            "memfd"
                        },
                        blob.buffer.size,
                        blob.image.width,
                        blob.image.height,
                        blob.image.drm_format
                    ),
                ))
            }
            MapAdvice::Allow { map_info, source } => {
                if ![MAP_CACHE_CACHED, MAP_CACHE_UNCACHED, MAP_CACHE_WC].contains(&map_info) {
                    error!(
                        "RESOURCE_MAP_BLOB: resource_id {resource_id}: the map advisor allowed \
                         mapping with map_info {map_info} ({source}), which is not a cache \
                         type; refusing"
                    );
                    return Err(reject(GpuError::Unspec, "invalid advice"));
                }
                debug!("resource_id {resource_id}: map_info {map_info} from {source}");
                map_info
            }
        };
        let len = blob.buffer.size;
        self.region.allocate_at(offset, len).map_err(|e| {
            reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id}: offset: {e}"),
            )
        })?;
        let range = MapRange {
            shm_offset: offset,
            len,
            fd_offset: 0,
            writable: blob.writable,
        };
        if let Err(e) = self.mapper.map(blob.buffer.fd.as_fd(), range) {
            let _ = self.region.free(offset);
            return Err(reject(
                GpuError::Unspec,
                format!("resource_id {resource_id}: mapping at {offset:#x}+{len:#x}: {e}"),
            ));
        }
        blob.mapped_at = Some(offset);
        Ok(GpuResponse::OkMapInfo { map_info })
    }

    pub(super) fn unmap_blob(&mut self, resource_id: u32) -> CmdResult {
        self.require_feature(feature::RESOURCE_BLOB, "RESOURCE_BLOB")?;
        if matches!(
            self.resources.get(resource_id)?.kind,
            ResourceKind::Renderer(_)
        ) {
            return self.unmap_renderer_blob(resource_id);
        }
        let resource = self.resources.get_mut(resource_id)?;
        let ResourceKind::HostBlob(blob) = &mut resource.kind else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is not a mapped blob"),
            ));
        };
        let Some(offset) = blob.mapped_at else {
            return Err(reject(
                GpuError::InvalidParameter,
                format!("resource_id {resource_id} is not mapped"),
            ));
        };
        let len = blob.buffer.size;
        self.mapper.unmap(offset, len).map_err(|e| {
            reject(
                GpuError::Unspec,
                format!(
                    "resource_id {resource_id}: unmapping {offset:#x}+{len:#x}: {e}; still mapped"
                ),
            )
        })?;
        blob.mapped_at = None;
        let _ = self.region.free(offset);
        Ok(GpuResponse::OkNoData)
    }
}

/// The memfd ranges behind guest `entries`, for the exporter: `None` (logged) unless every
/// entry is page aligned and lies inside one fd-backed guest RAM region.
fn guest_pages<'m>(mem: &'m GuestMemory, entries: &[MemEntry]) -> Option<Vec<GuestPages<'m>>> {
    let page = PAGE_SIZE;
    if entries.is_empty() {
        debug!("udmabuf export skipped: no entries");
        return None;
    }
    let mut pages = Vec::with_capacity(entries.len());
    for e in entries {
        let len = u64::from(e.length);
        if !e.addr.is_multiple_of(page) || !len.is_multiple_of(page) || len == 0 {
            debug!(
                "udmabuf export skipped: entry {:#x}+{len:#x} is not page aligned",
                e.addr
            );
            return None;
        }
        let region = mem.find_region(GuestAddress(e.addr))?;
        let within = e.addr - region.start_addr().0;
        if within.checked_add(len)? > region.len() {
            debug!(
                "udmabuf export skipped: entry {:#x}+{len:#x} crosses a region",
                e.addr
            );
            return None;
        }
        let Some(file_offset) = region.file_offset() else {
            debug!(
                "udmabuf export skipped: guest RAM at {:#x} has no fd",
                e.addr
            );
            return None;
        };
        pages.push(GuestPages {
            memfd: file_offset.file().as_fd(),
            offset: file_offset.start().checked_add(within)?,
            size: len,
        });
    }
    Some(pages)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    use vm_memory::FileOffset;

    use super::*;

    #[test]
    fn guest_pages_translate_guest_addresses_to_memfd_offsets() {
        let fd = rustix::fs::memfd_create("ram", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 0x10_0000).unwrap();
        let file = File::from(fd);
        let raw = file.as_raw_fd();
        // Two regions of one memfd: GPA 0 -> file 0x8000, GPA 0x10_0000 -> file 0x20000.
        let mem = GuestMemory::from_ranges_with_files([
            (
                GuestAddress(0),
                0x10000,
                Some(FileOffset::new(file.try_clone().unwrap(), 0x8000)),
            ),
            (
                GuestAddress(0x10_0000),
                0x10000,
                Some(FileOffset::new(file, 0x20000)),
            ),
        ])
        .unwrap();
        let entry = |addr, length| MemEntry { addr, length };
        let items = guest_pages(&mem, &[entry(0x3000, 0x2000), entry(0x10_1000, 0x1000)]).unwrap();
        let got: Vec<(u64, u64)> = items.iter().map(|i| (i.offset, i.size)).collect();
        assert_eq!(got, vec![(0xb000, 0x2000), (0x21000, 0x1000)]);
        // Each item names the fd of its own region (the second region holds `file` itself).
        assert_ne!(items[0].memfd.as_raw_fd(), raw);
        assert_eq!(items[1].memfd.as_raw_fd(), raw);
        // Unaligned, crossing the region end, outside memory, empty.
        assert!(guest_pages(&mem, &[entry(0x3100, 0x1000)]).is_none());
        assert!(guest_pages(&mem, &[entry(0x3000, 0x800)]).is_none());
        assert!(guest_pages(&mem, &[entry(0xf000, 0x2000)]).is_none());
        assert!(guest_pages(&mem, &[entry(0x40_0000, 0x1000)]).is_none());
        assert!(guest_pages(&mem, &[]).is_none());
        // Anonymous guest RAM has no fd to export.
        let anon = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(guest_pages(&anon, &[entry(0, 0x1000)]).is_none());
    }
}
