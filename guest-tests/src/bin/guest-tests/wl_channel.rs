//! The guest proxy's virtio-gpu side: one cross-domain context with a Wayland channel per
//! proxied client, over the Linux driver's uapi, the way Sommelier and
//! wayland-proxy-virtwl drive it (read from their sources; nothing copied):
//!
//! - `CONTEXT_INIT` with capset 5, two rings, and `POLL_RINGS_MASK = 1 << 1`, so that the
//!   fence of each command on ring 1 arrives as a DRM event on the file;
//! - two GUEST blobs of one page, mapped: the query ring and the channel ring (the 16-byte
//!   INIT names one ring for both);
//! - INIT and SEND/WRITE on no ring (answered at once), GET_IMAGE_REQUIREMENTS on ring 0
//!   followed by `VIRTGPU_WAIT` on the query ring, POLL on ring 1;
//! - a received blob becomes a HOST3D blob (`blob_id` = the identifier) and a dma-buf by
//!   PRIME; a `wl_shm` pool is shadowed by a HOST3D blob from GET_IMAGE_REQUIREMENTS,
//!   mapped, which the proxy's copies write into.

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use guest_tests::wl_proxy::GuestChannel;
use vhost_user_gpu::protocol::cross_domain::{
    Capabilities, CrossDomainCommand, IdLayout, ImageRequirements, Init, InitLayout, PollLayout,
    CAPABILITIES_SIZE, CHANNEL_RING, CHANNEL_TYPE_WAYLAND, IMAGE_REQUIREMENTS_SIZE, QUERY_RING,
    RING_PAGE_SIZE,
};

use crate::drm::{
    self, Device, Mapping, BLOB_FLAG_MAPPABLE, BLOB_FLAG_SHAREABLE, BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D, EVENT_FENCE_SIGNALED,
};

/// The cross-domain capset id.
const CAPSET_CROSS_DOMAIN: u32 = 5;
/// `DRM_FORMAT_ARGB8888` (a shm shadow is bytes; any 4-byte format the host allocates).
const ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
/// Row of a shm shadow buffer: 1024 pixels of 4 bytes.
const SHADOW_ROW: u64 = 4096;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A guest blob of one page, mapped.
struct Ring {
    handle: u32,
    resource: u32,
    map: Mapping,
}

/// A host buffer shadowing a `wl_shm` pool, mapped.
struct Shadow {
    handle: u32,
    map: Mapping,
}

/// One cross-domain context with a Wayland channel on its own DRM file.
pub struct DrmChannel {
    dev: Device,
    layout: IdLayout,
    query: Ring,
    /// `None` with the 16-byte INIT (the query ring is the channel ring).
    channel: Option<Ring>,
    shadows: HashMap<u32, Shadow>,
    /// GEM handles of dma-bufs sent in the last SEND (closed after the next submit).
    sent_handles: Vec<u32>,
}

/// Checks that the device serves Wayland channels: CONTEXT_INIT, blobs, a host-visible
/// region and capset 5 with `supported_channels` bit 1; returns the capabilities.
pub fn check_device(dev: &Device) -> io::Result<Capabilities> {
    for (param, name) in [
        (drm::param::CONTEXT_INIT, "CONTEXT_INIT"),
        (drm::param::RESOURCE_BLOB, "RESOURCE_BLOB"),
        (drm::param::HOST_VISIBLE, "a host-visible region"),
    ] {
        if dev.get_param(param)? == 0 {
            return Err(invalid(format!("the virtio-gpu device has no {name}")));
        }
    }
    if dev.get_param(drm::param::SUPPORTED_CAPSET_IDS)? & (1 << CAPSET_CROSS_DOMAIN) == 0 {
        return Err(invalid(
            "the virtio-gpu device offers no cross-domain capset",
        ));
    }
    let caps =
        Capabilities::decode(&dev.get_caps(CAPSET_CROSS_DOMAIN, 0, CAPABILITIES_SIZE as u32)?)
            .map_err(|e| invalid(e.to_string()))?;
    if caps.supported_channels & (1 << CHANNEL_TYPE_WAYLAND) == 0 {
        return Err(invalid(format!(
            "the host serves no Wayland channel (supported_channels {:#x})",
            caps.supported_channels
        )));
    }
    Ok(caps)
}

impl DrmChannel {
    /// Opens `node`, makes the context and its rings, sends INIT in `init` layout and the
    /// first POLL. SENDs go in `layout`.
    pub fn open(node: &Path, init: InitLayout, layout: IdLayout) -> io::Result<Self> {
        let dev = Device::open(node)?;
        check_device(&dev)?;
        dev.context_init_polled(CAPSET_CROSS_DOMAIN, 2, 1 << CHANNEL_RING)?;
        dev.set_nonblocking()?;
        let ring = |dev: &Device| -> io::Result<Ring> {
            let (handle, resource) = dev.create_blob_handle(
                BLOB_MEM_GUEST,
                BLOB_FLAG_MAPPABLE,
                RING_PAGE_SIZE as u64,
                0,
            )?;
            let map = dev.mmap(dev.map_offset(handle)?, RING_PAGE_SIZE)?;
            Ok(Ring {
                handle,
                resource,
                map,
            })
        };
        let query = ring(&dev)?;
        let channel = match init {
            InitLayout::OneRing => None,
            InitLayout::TwoRings | InitLayout::Versioned => Some(ring(&dev)?),
        };
        let channel_ring_id = channel.as_ref().map_or(query.resource, |r| r.resource);
        let me = DrmChannel {
            dev,
            layout,
            query,
            channel,
            shadows: HashMap::new(),
            sent_handles: Vec::new(),
        };
        let cmd = CrossDomainCommand::Init(Init {
            layout: init,
            query_ring_id: me.query.resource,
            channel_ring_id,
            channel_type: CHANNEL_TYPE_WAYLAND,
            protocol_version: u32::from(init == InitLayout::Versioned),
        });
        let bos: Vec<u32> = std::iter::once(me.query.handle)
            .chain(me.channel.as_ref().map(|r| r.handle))
            .collect();
        me.dev.execbuffer_on(&cmd.to_bytes(), &bos, None)?;
        me.poll()?;
        Ok(me)
    }

    fn channel_ring(&self) -> &Ring {
        self.channel.as_ref().unwrap_or(&self.query)
    }

    /// POLL on the channel ring: its fence (a DRM event) says one event is in the ring.
    fn poll(&self) -> io::Result<()> {
        let cmd = CrossDomainCommand::Poll(PollLayout::Padded);
        self.dev
            .execbuffer_on(&cmd.to_bytes(), &[], Some(CHANNEL_RING))
    }
}

impl Drop for DrmChannel {
    fn drop(&mut self) {
        for handle in self
            .sent_handles
            .drain(..)
            .chain(self.shadows.values().map(|s| s.handle))
            .chain(std::iter::once(self.query.handle))
            .chain(self.channel.as_ref().map(|r| r.handle))
        {
            let _ = self.dev.close_handle(handle);
        }
    }
}

impl GuestChannel for DrmChannel {
    fn layout(&self) -> IdLayout {
        self.layout
    }

    fn submit(&mut self, cmd: &[u8]) -> io::Result<()> {
        let result = self.dev.execbuffer_on(cmd, &[], None);
        for handle in self.sent_handles.drain(..) {
            let _ = self.dev.close_handle(handle);
        }
        result
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.dev.fd()
    }

    fn next_event(&mut self) -> io::Result<Option<Vec<u8>>> {
        let events = self.dev.read_events()?;
        if events.is_empty() {
            return Ok(None);
        }
        if events.len() > 1 || events[0] != EVENT_FENCE_SIGNALED {
            return Err(invalid(format!(
                "DRM events {events:#x?}: one FENCE_SIGNALED per POLL expected"
            )));
        }
        let ring = self.channel_ring().map.bytes();
        let cmd_size = usize::from(u16::from_le_bytes([ring[2], ring[3]]));
        if cmd_size > RING_PAGE_SIZE {
            return Err(invalid(format!(
                "event of {cmd_size} bytes in a one-page ring"
            )));
        }
        let event = ring[..cmd_size].to_vec();
        self.poll()?;
        Ok(Some(event))
    }

    fn resource_of(&mut self, fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
        let Ok(handle) = self.dev.import(fd) else {
            return Ok(None);
        };
        let info = self.dev.resource_info_handle(handle);
        self.sent_handles.push(handle);
        Ok(Some(info?.res_handle))
    }

    fn import_blob(&mut self, id: u32, size: u32) -> io::Result<OwnedFd> {
        let (handle, _) = self.dev.create_blob_handle(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE | BLOB_FLAG_SHAREABLE,
            size.into(),
            id.into(),
        )?;
        let fd = self.dev.export(handle);
        let _ = self.dev.close_handle(handle);
        fd
    }

    fn alloc_shm(&mut self, size: u64) -> io::Result<u32> {
        let rows = size.div_ceil(SHADOW_ROW);
        let height =
            u32::try_from(rows).map_err(|_| invalid(format!("shm pool of {size} bytes")))?;
        let cmd = CrossDomainCommand::GetImageRequirements {
            width: (SHADOW_ROW / 4) as u32,
            height,
            drm_format: ARGB8888,
            flags: 0,
        };
        self.dev
            .execbuffer_on(&cmd.to_bytes(), &[self.query.handle], Some(QUERY_RING))?;
        self.dev.wait(self.query.handle)?;
        let reqs = ImageRequirements::decode(&self.query.map.bytes()[..IMAGE_REQUIREMENTS_SIZE])
            .map_err(|e| invalid(e.to_string()))?;
        if reqs.size < size {
            return Err(invalid(format!(
                "the host buffer for {size} bytes has {} bytes",
                reqs.size
            )));
        }
        let (handle, resource) = self.dev.create_blob_handle(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE | BLOB_FLAG_SHAREABLE,
            reqs.size,
            reqs.blob_id.into(),
        )?;
        let len = usize::try_from(reqs.size).map_err(|_| invalid("buffer size"))?;
        let map = match self
            .dev
            .map_offset(handle)
            .and_then(|offset| self.dev.mmap(offset, len))
        {
            Ok(map) => map,
            Err(e) => {
                let _ = self.dev.close_handle(handle);
                return Err(e);
            }
        };
        self.shadows.insert(resource, Shadow { handle, map });
        Ok(resource)
    }

    fn write_resource(&mut self, resource: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let shadow = self
            .shadows
            .get_mut(&resource)
            .ok_or_else(|| invalid(format!("no shadow buffer {resource}")))?;
        let start = usize::try_from(offset).map_err(|_| invalid("offset"))?;
        let end = start
            .checked_add(data.len())
            .filter(|&e| e <= shadow.map.bytes().len())
            .ok_or_else(|| invalid("write past the shadow buffer"))?;
        shadow.map.bytes_mut()[start..end].copy_from_slice(data);
        Ok(())
    }
}
