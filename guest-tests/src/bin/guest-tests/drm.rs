//! The virtio-gpu and KMS uapi this suite drives, written from the kernel's uapi headers
//! (`drm_mode.h`, `virtgpu_drm.h`), and thin wrappers around `ioctl` and `mmap`. The ioctl
//! encoding and the dma-buf, udmabuf, dma-heap and core DRM ioctls come from
//! `dmabuf_info::uapi`, the workspace's one ioctl layer. All `unsafe` of the guest binary
//! lives here.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use dmabuf_info::uapi::{self, iowr, DRM_COMMAND_BASE, DRM_IOCTL_BASE};
use rustix::fs::{MemfdFlags, SealFlags};

/// `VIRTGPU_PARAM_*`.
pub mod param {
    /// Host has virgl 3D (the VIRGL feature).
    pub const FEATURES_3D: u64 = 1;
    /// RESOURCE_BLOB negotiated.
    pub const RESOURCE_BLOB: u64 = 3;
    /// A host-visible shared memory region exists.
    pub const HOST_VISIBLE: u64 = 4;
    /// CONTEXT_INIT negotiated.
    pub const CONTEXT_INIT: u64 = 6;
    /// Bit mask of capset ids the device offers.
    pub const SUPPORTED_CAPSET_IDS: u64 = 7;
}

/// `VIRTGPU_BLOB_MEM_*`.
pub const BLOB_MEM_GUEST: u32 = 1;
/// `VIRTGPU_BLOB_MEM_HOST3D`.
pub const BLOB_MEM_HOST3D: u32 = 2;
/// `VIRTGPU_BLOB_FLAG_USE_MAPPABLE`.
pub const BLOB_FLAG_MAPPABLE: u32 = 1;
/// `VIRTGPU_CONTEXT_PARAM_CAPSET_ID`.
const CONTEXT_PARAM_CAPSET_ID: u64 = 1;
/// `VIRTGPU_CONTEXT_PARAM_NUM_RINGS`.
const CONTEXT_PARAM_NUM_RINGS: u64 = 2;
/// `VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK`: rings whose fences become DRM events.
const CONTEXT_PARAM_POLL_RINGS_MASK: u64 = 3;
/// `VIRTGPU_BLOB_FLAG_USE_SHAREABLE`.
pub const BLOB_FLAG_SHAREABLE: u32 = 2;
/// `VIRTGPU_EVENT_FENCE_SIGNALED`: the `type` of the DRM event a polled ring's fence sends.
pub const EVENT_FENCE_SIGNALED: u32 = 0x9000_0000;

#[repr(C)]
#[derive(Default)]
struct GetParam {
    param: u64,
    value: u64,
}

#[repr(C)]
#[derive(Default)]
struct GetCaps {
    cap_set_id: u32,
    cap_set_ver: u32,
    addr: u64,
    size: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct ContextSetParam {
    param: u64,
    value: u64,
}

#[repr(C)]
#[derive(Default)]
struct ContextInit {
    num_params: u32,
    pad: u32,
    ctx_set_params: u64,
}

#[repr(C)]
#[derive(Default)]
struct CreateBlob {
    blob_mem: u32,
    blob_flags: u32,
    bo_handle: u32,
    res_handle: u32,
    size: u64,
    pad: u32,
    cmd_size: u32,
    cmd: u64,
    blob_id: u64,
}

#[repr(C)]
#[derive(Default)]
struct VirtgpuMap {
    offset: u64,
    handle: u32,
    pad: u32,
}

/// `struct drm_virtgpu_resource_info` (6.12 layout: the 4th field is
/// `blob_mem` for blobs, `stride` before).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct ResourceInfo {
    /// GEM handle asked about.
    pub bo_handle: u32,
    /// The virtio-gpu resource id.
    pub res_handle: u32,
    /// Size in bytes (u32 in the uapi).
    pub size: u32,
    /// `blob_mem` of a blob resource, 0 otherwise.
    pub blob_mem: u32,
}

#[repr(C)]
#[derive(Default)]
struct Execbuffer {
    flags: u32,
    size: u32,
    command: u64,
    bo_handles: u64,
    num_bo_handles: u32,
    fence_fd: i32,
    ring_idx: u32,
    syncobj_stride: u32,
    num_in_syncobjs: u32,
    num_out_syncobjs: u32,
    in_syncobjs: u64,
    out_syncobjs: u64,
}
/// `VIRTGPU_EXECBUF_RING_IDX`.
const EXECBUF_RING_IDX: u32 = 4;

#[repr(C)]
#[derive(Default)]
struct Wait {
    handle: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct CardRes {
    fb_id_ptr: u64,
    crtc_id_ptr: u64,
    connector_id_ptr: u64,
    encoder_id_ptr: u64,
    count_fbs: u32,
    count_crtcs: u32,
    count_connectors: u32,
    count_encoders: u32,
    min_width: u32,
    max_width: u32,
    min_height: u32,
    max_height: u32,
}

/// `struct drm_mode_modeinfo`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct ModeInfo {
    clock: u32,
    /// Horizontal pixels.
    pub hdisplay: u16,
    hsync_start: u16,
    hsync_end: u16,
    htotal: u16,
    hskew: u16,
    /// Vertical pixels.
    pub vdisplay: u16,
    vsync_start: u16,
    vsync_end: u16,
    vtotal: u16,
    vscan: u16,
    vrefresh: u32,
    flags: u32,
    mode_type: u32,
    name: [u8; 32],
}

#[repr(C)]
#[derive(Default)]
struct GetConnector {
    encoders_ptr: u64,
    modes_ptr: u64,
    props_ptr: u64,
    prop_values_ptr: u64,
    count_modes: u32,
    count_props: u32,
    count_encoders: u32,
    encoder_id: u32,
    connector_id: u32,
    connector_type: u32,
    connector_type_id: u32,
    connection: u32,
    mm_width: u32,
    mm_height: u32,
    subpixel: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetEncoder {
    encoder_id: u32,
    encoder_type: u32,
    crtc_id: u32,
    possible_crtcs: u32,
    possible_clones: u32,
}

#[repr(C)]
#[derive(Default)]
struct SetCrtc {
    set_connectors_ptr: u64,
    count_connectors: u32,
    crtc_id: u32,
    fb_id: u32,
    x: u32,
    y: u32,
    gamma_size: u32,
    mode_valid: u32,
    mode: ModeInfo,
}

#[repr(C)]
#[derive(Default)]
struct MapDumb {
    handle: u32,
    pad: u32,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct FbCmd {
    fb_id: u32,
    width: u32,
    height: u32,
    pitch: u32,
    bpp: u32,
    depth: u32,
    handle: u32,
}

const MODE_GETRESOURCES: u32 = iowr::<CardRes>(DRM_IOCTL_BASE, 0xA0);
const MODE_SETCRTC: u32 = iowr::<SetCrtc>(DRM_IOCTL_BASE, 0xA2);
const MODE_GETENCODER: u32 = iowr::<GetEncoder>(DRM_IOCTL_BASE, 0xA6);
const MODE_GETCONNECTOR: u32 = iowr::<GetConnector>(DRM_IOCTL_BASE, 0xA7);
const MODE_ADDFB: u32 = iowr::<FbCmd>(DRM_IOCTL_BASE, 0xAE);
const MODE_RMFB: u32 = iowr::<u32>(DRM_IOCTL_BASE, 0xAF);
const MODE_MAP_DUMB: u32 = iowr::<MapDumb>(DRM_IOCTL_BASE, 0xB3);
const VIRTGPU_MAP: u32 = iowr::<VirtgpuMap>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x01);
const VIRTGPU_EXECBUFFER: u32 = iowr::<Execbuffer>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x02);
const VIRTGPU_GETPARAM: u32 = iowr::<GetParam>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x03);
const VIRTGPU_RESOURCE_INFO: u32 = iowr::<ResourceInfo>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x05);
const VIRTGPU_WAIT: u32 = iowr::<Wait>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x08);
const VIRTGPU_GET_CAPS: u32 = iowr::<GetCaps>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x09);
const VIRTGPU_RESOURCE_CREATE_BLOB: u32 =
    iowr::<CreateBlob>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x0a);
const VIRTGPU_CONTEXT_INIT: u32 = iowr::<ContextInit>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + 0x0b);

/// Issues one ioctl whose argument is a `#[repr(C)]` struct (retried on EINTR/EAGAIN).
fn ioctl<T>(fd: &impl AsFd, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller in this module passes the `#[repr(C)]` struct `request` encodes
    // (its size is part of the number), exclusively borrowed for the call; pointers embedded
    // in it (if any) are set by the callers to live buffers that outlive this call.
    unsafe { uapi::ioctl_retry(fd.as_fd(), request, arg) }.map(drop)
}

/// An open DRM node (render or card).
pub struct Device {
    file: File,
}

/// A GEM object that is closed when dropped.
pub struct Bo<'a> {
    device: &'a Device,
    /// GEM handle.
    pub handle: u32,
    /// virtio-gpu resource id.
    pub res_handle: u32,
    /// Size in bytes.
    pub size: u64,
}

impl Drop for Bo<'_> {
    fn drop(&mut self) {
        let _ = uapi::drm_gem_close(self.device.file.as_fd(), self.handle);
    }
}

/// A connected output and how to drive it.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Connector id.
    pub connector: u32,
    /// CRTC id.
    pub crtc: u32,
    /// The preferred (first) mode.
    pub mode: ModeInfo,
}

impl Device {
    /// Opens a DRM node read-write.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Device { file })
    }

    /// `DRM_IOCTL_VIRTGPU_GETPARAM`.
    pub fn get_param(&self, param: u64) -> io::Result<u64> {
        let mut value: u64 = 0;
        let mut arg = GetParam {
            param,
            value: &mut value as *mut u64 as u64,
        };
        ioctl(&self.file, VIRTGPU_GETPARAM, &mut arg)?;
        Ok(value)
    }

    /// `DRM_IOCTL_VIRTGPU_GET_CAPS` into a buffer of `size` bytes.
    pub fn get_caps(&self, capset: u32, version: u32, size: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let mut arg = GetCaps {
            cap_set_id: capset,
            cap_set_ver: version,
            addr: buf.as_mut_ptr() as u64,
            size,
            pad: 0,
        };
        ioctl(&self.file, VIRTGPU_GET_CAPS, &mut arg)?;
        Ok(buf)
    }

    /// `DRM_IOCTL_VIRTGPU_CONTEXT_INIT` with a capset id and a ring count.
    pub fn context_init(&self, capset: u32, num_rings: u32) -> io::Result<()> {
        self.context_init_polled(capset, num_rings, 0)
    }

    /// `DRM_IOCTL_VIRTGPU_CONTEXT_INIT` with a capset id, a ring count and the rings whose
    /// fences arrive as DRM events (`poll_rings_mask`, 0: none).
    pub fn context_init_polled(
        &self,
        capset: u32,
        num_rings: u32,
        poll_rings_mask: u64,
    ) -> io::Result<()> {
        let mut params = vec![
            ContextSetParam {
                param: CONTEXT_PARAM_CAPSET_ID,
                value: capset.into(),
            },
            ContextSetParam {
                param: CONTEXT_PARAM_NUM_RINGS,
                value: num_rings.into(),
            },
        ];
        if poll_rings_mask != 0 {
            params.push(ContextSetParam {
                param: CONTEXT_PARAM_POLL_RINGS_MASK,
                value: poll_rings_mask,
            });
        }
        let mut arg = ContextInit {
            num_params: params.len() as u32,
            pad: 0,
            ctx_set_params: params.as_ptr() as u64,
        };
        ioctl(&self.file, VIRTGPU_CONTEXT_INIT, &mut arg)
    }

    /// `DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB`.
    pub fn create_blob(
        &self,
        blob_mem: u32,
        blob_flags: u32,
        size: u64,
        blob_id: u64,
    ) -> io::Result<Bo<'_>> {
        let mut arg = CreateBlob {
            blob_mem,
            blob_flags,
            size,
            blob_id,
            ..CreateBlob::default()
        };
        ioctl(&self.file, VIRTGPU_RESOURCE_CREATE_BLOB, &mut arg)?;
        Ok(Bo {
            device: self,
            handle: arg.bo_handle,
            res_handle: arg.res_handle,
            size,
        })
    }

    /// `DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB` for an object that outlives any borrow of
    /// the device: returns (GEM handle, resource id); the caller closes the handle with
    /// [`Device::close_handle`].
    pub fn create_blob_handle(
        &self,
        blob_mem: u32,
        blob_flags: u32,
        size: u64,
        blob_id: u64,
    ) -> io::Result<(u32, u32)> {
        let mut arg = CreateBlob {
            blob_mem,
            blob_flags,
            size,
            blob_id,
            ..CreateBlob::default()
        };
        ioctl(&self.file, VIRTGPU_RESOURCE_CREATE_BLOB, &mut arg)?;
        Ok((arg.bo_handle, arg.res_handle))
    }

    /// `DRM_IOCTL_GEM_CLOSE`.
    pub fn close_handle(&self, handle: u32) -> io::Result<()> {
        uapi::drm_gem_close(self.file.as_fd(), handle)
    }

    /// `DRM_IOCTL_PRIME_HANDLE_TO_FD`: a dma-buf of the object.
    pub fn export(&self, handle: u32) -> io::Result<OwnedFd> {
        uapi::drm_prime_handle_to_fd(self.file.as_fd(), handle)
    }

    /// `DRM_IOCTL_PRIME_FD_TO_HANDLE`: the GEM handle of a dma-buf of this device.
    pub fn import(&self, dmabuf: BorrowedFd<'_>) -> io::Result<u32> {
        uapi::drm_prime_fd_to_handle(self.file.as_fd(), dmabuf)
    }

    /// The DRM file (poll it for events).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Makes `read` of DRM events return `EAGAIN` instead of waiting.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        rustix::fs::fcntl_setfl(&self.file, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(())
    }

    /// The `type` of each DRM event waiting on the file (none: `EAGAIN` on a non-blocking
    /// file).
    pub fn read_events(&self) -> io::Result<Vec<u32>> {
        let mut buf = [0u8; 1024];
        let n = match rustix::io::read(&self.file, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // `struct drm_event { u32 type; u32 length; }` then the event's own fields.
        let mut events = Vec::new();
        let mut at = 0;
        while at + 8 <= n {
            let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
            let (kind, length) = (word(at), word(at + 4) as usize);
            if length < 8 {
                break;
            }
            events.push(kind);
            at += length;
        }
        Ok(events)
    }

    /// `DRM_IOCTL_VIRTGPU_RESOURCE_INFO`.
    pub fn resource_info(&self, bo: &Bo<'_>) -> io::Result<ResourceInfo> {
        self.resource_info_handle(bo.handle)
    }

    /// `DRM_IOCTL_VIRTGPU_RESOURCE_INFO` on a raw GEM handle.
    pub fn resource_info_handle(&self, handle: u32) -> io::Result<ResourceInfo> {
        let mut arg = ResourceInfo {
            bo_handle: handle,
            ..ResourceInfo::default()
        };
        ioctl(&self.file, VIRTGPU_RESOURCE_INFO, &mut arg)?;
        Ok(arg)
    }

    /// `DRM_IOCTL_VIRTGPU_MAP`: the fake offset to `mmap` the object at.
    pub fn map_offset(&self, handle: u32) -> io::Result<u64> {
        let mut arg = VirtgpuMap {
            handle,
            ..VirtgpuMap::default()
        };
        ioctl(&self.file, VIRTGPU_MAP, &mut arg)?;
        Ok(arg.offset)
    }

    /// `DRM_IOCTL_VIRTGPU_EXECBUFFER` on a ring, referencing `bos`.
    pub fn execbuffer(&self, command: &[u8], bos: &[u32], ring: u32) -> io::Result<()> {
        self.execbuffer_on(command, bos, Some(ring))
    }

    /// `DRM_IOCTL_VIRTGPU_EXECBUFFER` on a ring (`VIRTGPU_EXECBUF_RING_IDX`), or on none
    /// (the device's global fence timeline, answered at once by cross-domain).
    pub fn execbuffer_on(&self, command: &[u8], bos: &[u32], ring: Option<u32>) -> io::Result<()> {
        let mut arg = Execbuffer {
            flags: if ring.is_some() { EXECBUF_RING_IDX } else { 0 },
            size: u32::try_from(command.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            command: command.as_ptr() as u64,
            bo_handles: bos.as_ptr() as u64,
            num_bo_handles: bos.len() as u32,
            fence_fd: -1,
            ring_idx: ring.unwrap_or(0),
            ..Execbuffer::default()
        };
        ioctl(&self.file, VIRTGPU_EXECBUFFER, &mut arg)
    }

    /// `DRM_IOCTL_VIRTGPU_WAIT` (blocking) for work on a GEM object.
    pub fn wait(&self, handle: u32) -> io::Result<()> {
        let mut arg = Wait { handle, flags: 0 };
        ioctl(&self.file, VIRTGPU_WAIT, &mut arg)
    }

    /// Maps `len` bytes of the node at `offset` (a GEM fake offset).
    pub fn mmap(&self, offset: u64, len: usize) -> io::Result<Mapping> {
        Mapping::new(&self.file, offset, len)
    }

    /// `DRM_IOCTL_MODE_CREATE_DUMB`: returns the object and its pitch.
    pub fn create_dumb(&self, width: u32, height: u32, bpp: u32) -> io::Result<(Bo<'_>, u32)> {
        let arg = uapi::drm_mode_create_dumb(self.file.as_fd(), width, height, bpp)?;
        let bo = Bo {
            device: self,
            handle: arg.handle,
            res_handle: 0,
            size: arg.size,
        };
        Ok((bo, arg.pitch))
    }

    /// `DRM_IOCTL_MODE_MAP_DUMB`.
    pub fn map_dumb(&self, handle: u32) -> io::Result<u64> {
        let mut arg = MapDumb {
            handle,
            ..MapDumb::default()
        };
        ioctl(&self.file, MODE_MAP_DUMB, &mut arg)?;
        Ok(arg.offset)
    }

    /// Finds the first connected connector, its preferred mode and a CRTC.
    pub fn first_output(&self) -> io::Result<Output> {
        let mut res = CardRes::default();
        ioctl(&self.file, MODE_GETRESOURCES, &mut res)?;
        let mut crtcs = vec![0u32; res.count_crtcs as usize];
        let mut connectors = vec![0u32; res.count_connectors as usize];
        let mut encoders = vec![0u32; res.count_encoders as usize];
        let mut res2 = CardRes {
            crtc_id_ptr: crtcs.as_mut_ptr() as u64,
            connector_id_ptr: connectors.as_mut_ptr() as u64,
            encoder_id_ptr: encoders.as_mut_ptr() as u64,
            count_crtcs: crtcs.len() as u32,
            count_connectors: connectors.len() as u32,
            count_encoders: encoders.len() as u32,
            ..CardRes::default()
        };
        ioctl(&self.file, MODE_GETRESOURCES, &mut res2)?;
        for &connector in connectors.iter().take(res2.count_connectors as usize) {
            let mut probe = GetConnector {
                connector_id: connector,
                ..GetConnector::default()
            };
            ioctl(&self.file, MODE_GETCONNECTOR, &mut probe)?;
            // 1 = DRM_MODE_CONNECTED.
            if probe.connection != 1 || probe.count_modes == 0 {
                continue;
            }
            let mut modes = vec![ModeInfo::default(); probe.count_modes as usize];
            let mut conn_encoders = vec![0u32; probe.count_encoders as usize];
            let mut full = GetConnector {
                connector_id: connector,
                modes_ptr: modes.as_mut_ptr() as u64,
                count_modes: modes.len() as u32,
                encoders_ptr: conn_encoders.as_mut_ptr() as u64,
                count_encoders: conn_encoders.len() as u32,
                ..GetConnector::default()
            };
            ioctl(&self.file, MODE_GETCONNECTOR, &mut full)?;
            let count = (full.count_modes as usize).min(modes.len());
            let Some(&mode) = modes[..count].first() else {
                continue;
            };
            let encoder_id = if full.encoder_id != 0 {
                full.encoder_id
            } else {
                conn_encoders.first().copied().unwrap_or(0)
            };
            let mut encoder = GetEncoder {
                encoder_id,
                ..GetEncoder::default()
            };
            ioctl(&self.file, MODE_GETENCODER, &mut encoder)?;
            let crtc = if encoder.crtc_id != 0 {
                encoder.crtc_id
            } else {
                // First CRTC this encoder can drive.
                (0..crtcs.len())
                    .find(|i| encoder.possible_crtcs & (1 << i) != 0)
                    .map(|i| crtcs[i])
                    .unwrap_or(0)
            };
            if crtc == 0 {
                continue;
            }
            return Ok(Output {
                connector,
                crtc,
                mode,
            });
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no connected connector with a mode",
        ))
    }

    /// `DRM_IOCTL_MODE_ADDFB` (XRGB8888: depth 24, 32 bpp).
    pub fn add_fb(&self, bo: &Bo<'_>, width: u32, height: u32, pitch: u32) -> io::Result<u32> {
        let mut arg = FbCmd {
            width,
            height,
            pitch,
            bpp: 32,
            depth: 24,
            handle: bo.handle,
            fb_id: 0,
        };
        ioctl(&self.file, MODE_ADDFB, &mut arg)?;
        Ok(arg.fb_id)
    }

    /// `DRM_IOCTL_MODE_RMFB`.
    pub fn remove_fb(&self, fb: u32) -> io::Result<()> {
        let mut arg = fb;
        ioctl(&self.file, MODE_RMFB, &mut arg)
    }

    /// `DRM_IOCTL_MODE_SETCRTC`: shows `fb` on `output`.
    pub fn set_crtc(&self, output: &Output, fb: u32) -> io::Result<()> {
        let connectors = [output.connector];
        let mut arg = SetCrtc {
            set_connectors_ptr: connectors.as_ptr() as u64,
            count_connectors: 1,
            crtc_id: output.crtc,
            fb_id: fb,
            mode_valid: 1,
            mode: output.mode,
            ..SetCrtc::default()
        };
        ioctl(&self.file, MODE_SETCRTC, &mut arg)
    }
}

/// A shared mapping, unmapped when dropped.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, shared, read-write.
    pub fn new(fd: &impl AsRawFd, offset: u64, len: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address),
        // so no existing Rust object is aliased.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live mapping owned by `self`; device memory
        // may change under us, which is fine for plain bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The mapped bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only Rust view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range `new` mapped; no slice outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Creates a udmabuf of `size` bytes from a sealed memfd.
pub fn udmabuf(size: u64) -> io::Result<OwnedFd> {
    let memfd = rustix::fs::memfd_create("guest-tests-udmabuf", MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&memfd, size)?;
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK)?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/udmabuf")?;
    uapi::udmabuf_create(dev.as_fd(), memfd.as_fd(), 0, size)
}

/// Allocates `size` bytes from the system dma-heap.
pub fn system_heap(size: u64) -> io::Result<OwnedFd> {
    let heap = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/dma_heap/system")?;
    uapi::dma_heap_alloc(heap.as_fd(), size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_headers() {
        // Values as the C macros expand on x86-64.
        assert_eq!(VIRTGPU_GETPARAM, 0xc010_6443);
        assert_eq!(VIRTGPU_RESOURCE_CREATE_BLOB, 0xc030_644a);
        assert_eq!(VIRTGPU_CONTEXT_INIT, 0xc010_644b);
        assert_eq!(VIRTGPU_EXECBUFFER, 0xc040_6442);
        assert_eq!(MODE_SETCRTC, 0xc068_64a2);
        assert_eq!(std::mem::size_of::<GetConnector>(), 80);
        assert_eq!(std::mem::size_of::<ModeInfo>(), 68);
    }
}
