//! [`FakeRenderer`]: a stand-in for a GPU renderer, for device-core tests and fuzzing where
//! the real library must not run (many renderers per process, deterministic fences, hosts
//! without Mesa). It models what the device relies on: capsets, contexts, resources with
//! guest backing and host pixels, transfers that really move bytes, fences that complete
//! only when the test says so (through a real eventfd poll fd), and HOST3D blobs backed by
//! real sealed memfds. It renders nothing: `submit` records the stream.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::event::{eventfd, EventfdFlags};
use vm_memory::{Bytes, GuestAddress};

use crate::device::ports::{fourcc, PAGE_SIZE};
use crate::device::ports::{
    BlobFdKind, BlobRequest, Box3d, CapsetInfo, ExportedBlob, FenceSignal, GuestMemory, Renderer,
    RendererError, RendererEvent, Resource3d, ResourceInfo, ScanoutExport, Transfer3d,
};
use crate::protocol::{CAPSET_VENUS, CAPSET_VIRGL2};

/// A fake 3D resource: host pixels (4 bytes each) and its guest backing.
#[derive(Debug, Default)]
struct FakeResource {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    backing: Option<(GuestMemory, Vec<(u64, u64)>)>,
    blob: Option<OwnedFd>,
}

/// What a test controls or inspects while the device owns the fake (shared through
/// [`FakeControl`]).
#[derive(Debug, Default)]
struct Shared {
    /// Fences created and not yet signalled, in creation order.
    pending: VecDeque<FenceSignal>,
    /// Signalled, waiting for `poll`.
    signalled: Vec<RendererEvent>,
    /// Every stream submitted, by context.
    submitted: Vec<(u32, Vec<u8>)>,
    /// When set, the next `submit` fails (a stream the renderer rejects).
    fail_next_submit: bool,
}

/// A test's handle on a [`FakeRenderer`] that a device owns: signals its fences as a GPU
/// finishing work would, and shows what was submitted.
#[derive(Debug, Clone)]
pub struct FakeControl {
    shared: Arc<Mutex<Shared>>,
    poll_fd: Arc<OwnedFd>,
}

impl FakeControl {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let _ = rustix::io::write(&*self.poll_fd, &1u64.to_ne_bytes());
    }

    /// Fences created and not signalled yet.
    pub fn pending_fences(&self) -> usize {
        self.shared().pending.len()
    }

    /// Signals the oldest `n` pending fences (all of them with `usize::MAX`); the poll fd
    /// becomes readable.
    pub fn signal(&self, n: usize) {
        let mut shared = self.shared();
        let n = n.min(shared.pending.len());
        let done: Vec<FenceSignal> = shared.pending.drain(..n).collect();
        shared
            .signalled
            .extend(done.into_iter().map(RendererEvent::Fence));
        drop(shared);
        if n > 0 {
            self.wake();
        }
    }

    /// Reports the render server lost (as the real renderer does when it dies).
    pub fn lose_render_server(&self) {
        self.shared()
            .signalled
            .push(RendererEvent::RenderServerLost(
                "fake render server killed".into(),
            ));
        self.wake();
    }

    /// Every stream submitted so far, by context.
    pub fn submitted(&self) -> Vec<(u32, Vec<u8>)> {
        self.shared().submitted.clone()
    }

    /// Makes the next `submit` fail (a stream the renderer rejects).
    pub fn fail_next_submit(&self) {
        self.shared().fail_next_submit = true;
    }
}

/// See the module docs. Named as a fake everywhere it is used.
#[derive(Debug)]
pub struct FakeRenderer {
    capsets: Vec<CapsetInfo>,
    contexts: HashMap<u32, u32>,
    resources: HashMap<u32, FakeResource>,
    control: FakeControl,
    /// What `export_blob` says the renderer thinks of the caching.
    pub renderer_map_info: Option<u32>,
}

impl FakeRenderer {
    /// A fake serving VIRGL2 and VENUS (capset data: 16 bytes of the id).
    pub fn new() -> Self {
        Self::with_capsets(&[CAPSET_VIRGL2, CAPSET_VENUS])
    }

    /// A fake serving these capsets.
    pub fn with_capsets(ids: &[u32]) -> Self {
        FakeRenderer {
            capsets: ids
                .iter()
                .map(|&id| CapsetInfo {
                    id,
                    max_version: 1,
                    max_size: 16,
                })
                .collect(),
            contexts: HashMap::new(),
            resources: HashMap::new(),
            control: FakeControl {
                shared: Arc::default(),
                poll_fd: Arc::new(
                    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                        .expect("eventfd for the fake renderer"),
                ),
            },
            renderer_map_info: Some(virtio_bindings::virtio_gpu::VIRTIO_GPU_MAP_CACHE_CACHED),
        }
    }

    /// A handle that controls this fake while a device owns it.
    pub fn control(&self) -> FakeControl {
        self.control.clone()
    }

    /// Fences created and not signalled yet.
    pub fn pending_fences(&self) -> usize {
        self.control.pending_fences()
    }

    /// Signals the oldest `n` pending fences (all of them with `usize::MAX`), as a GPU
    /// finishing work would; the poll fd becomes readable.
    pub fn signal(&mut self, n: usize) {
        self.control.signal(n);
    }

    /// Reports the render server lost (as the real renderer does when it dies).
    pub fn lose_render_server(&mut self) {
        self.control.lose_render_server();
    }

    /// Live contexts and resources, for leak checks.
    pub fn live(&self) -> (usize, usize) {
        (self.contexts.len(), self.resources.len())
    }

    fn resource(&mut self, res_id: u32) -> Result<&mut FakeResource, RendererError> {
        self.resources
            .get_mut(&res_id)
            .ok_or_else(|| RendererError::Invalid(format!("no resource {res_id}")))
    }

    fn context(&self, ctx_id: u32) -> Result<u32, RendererError> {
        self.contexts
            .get(&ctx_id)
            .copied()
            .ok_or_else(|| RendererError::Invalid(format!("no context {ctx_id}")))
    }
}

impl Default for FakeRenderer {
    fn default() -> Self {
        Self::new()
    }
}

/// Byte ranges (offset, length) of `bx` in a `width` x `height` image of 4-byte pixels,
/// or an error when the box does not fit.
fn rows(bx: &Box3d, width: u32, height: u32) -> Result<Vec<(u64, u64)>, RendererError> {
    let fits =
        |start: u32, len: u32, limit: u32| start.checked_add(len).is_some_and(|e| e <= limit);
    if !fits(bx.x, bx.w, width) || !fits(bx.y, bx.h, height) {
        return Err(RendererError::Invalid(format!(
            "box {bx:?} outside a {width}x{height} resource"
        )));
    }
    let stride = u64::from(width) * 4;
    Ok((0..u64::from(bx.h))
        .map(|y| {
            (
                (u64::from(bx.y) + y) * stride + u64::from(bx.x) * 4,
                u64::from(bx.w) * 4,
            )
        })
        .collect())
}

/// Reads or writes `len` bytes at linear `offset` of a guest backing.
fn backing_io(
    memory: &GuestMemory,
    ranges: &[(u64, u64)],
    mut offset: u64,
    buf: &mut [u8],
    write_to_guest: bool,
) -> Result<(), RendererError> {
    let mut done = 0usize;
    for &(addr, len) in ranges {
        if done == buf.len() {
            break;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = ((len - offset) as usize).min(buf.len() - done);
        let at = GuestAddress(addr + offset);
        let chunk = &mut buf[done..done + n];
        let r = if write_to_guest {
            memory.write_slice(chunk, at)
        } else {
            memory.read_slice(chunk, at)
        };
        r.map_err(|e| RendererError::Invalid(format!("backing access: {e}")))?;
        done += n;
        offset = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(RendererError::Invalid("transfer past the backing".into()))
    }
}

/// Host memory for a HOST3D blob, as a renderer's shared-memory blob is: a memfd of the
/// blob's size rounded up to whole pages, sealed against size changes.
fn host_memory(size: u64) -> Result<OwnedFd, RendererError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let failed = |e: rustix::io::Errno| RendererError::Failed(format!("fake renderer memfd: {e}"));
    if size == 0 || size > 1 << 30 {
        return Err(RendererError::Invalid(format!("blob size {size}")));
    }
    let size = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let fd = rustix::fs::memfd_create(
        "fake-renderer-blob",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(failed)?;
    rustix::fs::ftruncate(&fd, size).map_err(failed)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).map_err(failed)?;
    Ok(fd)
}

impl Renderer for FakeRenderer {
    fn name(&self) -> &'static str {
        "fake renderer"
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.capsets.clone()
    }

    fn capset(&mut self, id: u32, version: u32) -> Result<Vec<u8>, RendererError> {
        let info = self
            .capsets
            .iter()
            .find(|c| c.id == id)
            .ok_or(RendererError::NoCapset(id))?;
        if version > info.max_version {
            return Err(RendererError::Invalid(format!("capset version {version}")));
        }
        Ok(id.to_le_bytes().repeat(4))
    }

    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: u32,
        _name: &[u8],
    ) -> Result<(), RendererError> {
        if !self.capsets.iter().any(|c| c.id == capset) {
            return Err(RendererError::NoCapset(capset));
        }
        match self.contexts.get(&ctx_id) {
            Some(&c) if c != capset => Err(RendererError::Invalid(format!(
                "context {ctx_id} exists with capset {c}"
            ))),
            _ => {
                self.contexts.insert(ctx_id, capset);
                Ok(())
            }
        }
    }

    fn context_destroy(&mut self, ctx_id: u32) {
        self.contexts.remove(&ctx_id);
        self.control.shared().pending.retain(|f| f.ctx_id != ctx_id);
    }

    fn context_attach(&mut self, _ctx_id: u32, _res_id: u32) {}

    fn context_detach(&mut self, _ctx_id: u32, _res_id: u32) {}

    fn resource_create_3d(&mut self, res_id: u32, a: &Resource3d) -> Result<(), RendererError> {
        if res_id == 0 || self.resources.contains_key(&res_id) {
            return Err(RendererError::Invalid(format!("resource id {res_id}")));
        }
        let bytes = u64::from(a.width) * u64::from(a.height) * 4;
        if bytes == 0 || bytes > 64 << 20 {
            return Err(RendererError::Invalid(format!("{}x{}", a.width, a.height)));
        }
        self.resources.insert(
            res_id,
            FakeResource {
                width: a.width,
                height: a.height,
                pixels: vec![0; bytes as usize],
                ..FakeResource::default()
            },
        );
        Ok(())
    }

    fn attach_backing(
        &mut self,
        res_id: u32,
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(), RendererError> {
        for &(addr, len) in ranges {
            let fits = usize::try_from(len).ok().is_some_and(|n| {
                vm_memory::GuestMemoryBackend::check_range(memory, GuestAddress(addr), n)
            });
            if !fits {
                return Err(RendererError::OutsideGuestMemory { addr, len });
            }
        }
        self.resource(res_id)?.backing = Some((memory.clone(), ranges.to_vec()));
        Ok(())
    }

    fn detach_backing(&mut self, res_id: u32) {
        if let Ok(r) = self.resource(res_id) {
            r.backing = None;
        }
    }

    fn resource_create_blob(
        &mut self,
        res_id: u32,
        r: &BlobRequest,
        backing: Option<(&GuestMemory, &[(u64, u64)])>,
    ) -> Result<(), RendererError> {
        if res_id == 0 || self.resources.contains_key(&res_id) {
            return Err(RendererError::Invalid(format!("resource id {res_id}")));
        }
        self.context(r.ctx_id)?;
        let blob = if backing.is_none() {
            Some(host_memory(r.size)?)
        } else {
            None
        };
        self.resources.insert(
            res_id,
            FakeResource {
                backing: backing.map(|(m, ranges)| (m.clone(), ranges.to_vec())),
                blob,
                ..FakeResource::default()
            },
        );
        Ok(())
    }

    fn resource_unref(&mut self, res_id: u32) {
        self.resources.remove(&res_id);
    }

    fn transfer_to_host(
        &mut self,
        _ctx_id: u32,
        res_id: u32,
        t: &Transfer3d,
    ) -> Result<(), RendererError> {
        let r = self.resource(res_id)?;
        let (memory, ranges) = r
            .backing
            .clone()
            .ok_or_else(|| RendererError::Invalid("no backing".into()))?;
        let stride = if t.stride == 0 {
            u64::from(t.bx.w) * 4
        } else {
            u64::from(t.stride)
        };
        let dst = rows(&t.bx, r.width, r.height)?;
        for (i, (at, len)) in dst.into_iter().enumerate() {
            let src_offset = t.offset + i as u64 * stride;
            let row = &mut r.pixels[at as usize..(at + len) as usize];
            backing_io(&memory, &ranges, src_offset, row, false)?;
        }
        Ok(())
    }

    fn transfer_from_host(
        &mut self,
        _ctx_id: u32,
        res_id: u32,
        t: &Transfer3d,
    ) -> Result<(), RendererError> {
        let r = self.resource(res_id)?;
        let (memory, ranges) = r
            .backing
            .clone()
            .ok_or_else(|| RendererError::Invalid("no backing".into()))?;
        let stride = if t.stride == 0 {
            u64::from(t.bx.w) * 4
        } else {
            u64::from(t.stride)
        };
        let src = rows(&t.bx, r.width, r.height)?;
        for (i, (at, len)) in src.into_iter().enumerate() {
            let dst_offset = t.offset + i as u64 * stride;
            let mut row = r.pixels[at as usize..(at + len) as usize].to_vec();
            backing_io(&memory, &ranges, dst_offset, &mut row, true)?;
        }
        Ok(())
    }

    fn submit(&mut self, ctx_id: u32, commands: &[u8]) -> Result<(), RendererError> {
        self.context(ctx_id)?;
        let mut shared = self.control.shared();
        if std::mem::take(&mut shared.fail_next_submit) {
            return Err(RendererError::Invalid(
                "the fake renderer rejects this stream".into(),
            ));
        }
        shared.submitted.push((ctx_id, commands.to_vec()));
        Ok(())
    }

    fn create_fence(
        &mut self,
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        if ctx_id != 0 {
            self.context(ctx_id)?;
        }
        self.control.shared().pending.push_back(FenceSignal {
            ctx_id,
            ring,
            fence_id,
        });
        Ok(())
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.control.poll_fd.as_fd()
    }

    fn poll(&mut self) -> Vec<RendererEvent> {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.control.poll_fd, &mut buf);
        std::mem::take(&mut self.control.shared().signalled)
    }

    fn export_blob(&mut self, res_id: u32) -> Result<ExportedBlob, RendererError> {
        let map_info = self.renderer_map_info;
        let r = self.resource(res_id)?;
        let fd = r
            .blob
            .as_ref()
            .ok_or_else(|| RendererError::Invalid(format!("resource {res_id} has no host blob")))?
            .try_clone()
            .map_err(|e| RendererError::Invalid(e.to_string()))?;
        Ok(ExportedBlob {
            fd,
            kind: BlobFdKind::Shm,
            fd_offset: 0,
            renderer_map_info: map_info,
        })
    }

    fn resource_info(&mut self, res_id: u32) -> Result<ResourceInfo, RendererError> {
        let r = self.resource(res_id)?;
        Ok(ResourceInfo {
            width: r.width,
            height: r.height,
            virgl_format: 2,
            drm_fourcc: fourcc::XRGB8888,
            y_0_top: true,
        })
    }

    fn read_pixels(
        &mut self,
        res_id: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, RendererError> {
        let r = self.resource(res_id)?;
        if width == 0 || height == 0 || width > r.width || height > r.height {
            return Err(RendererError::Invalid(format!("{width}x{height}")));
        }
        let stride = r.width as usize * 4;
        Ok((0..height as usize)
            .flat_map(|y| r.pixels[y * stride..y * stride + width as usize * 4].to_vec())
            .collect())
    }

    fn export_scanout(&mut self, res_id: u32) -> Result<ScanoutExport, RendererError> {
        self.resource(res_id)?;
        Err(RendererError::Invalid(
            "the fake renderer has no dma-bufs".into(),
        ))
    }

    fn reset(&mut self) {
        self.contexts.clear();
        self.resources.clear();
        let mut shared = self.control.shared();
        shared.pending.clear();
        shared.signalled.clear();
        drop(shared);
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.control.poll_fd, &mut buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )
        .unwrap_or(0)
            > 0
    }

    #[test]
    fn fences_wait_for_the_test_and_wake_the_poll_fd() {
        let mut r = FakeRenderer::new();
        r.context_create(1, CAPSET_VENUS, b"x").unwrap();
        r.create_fence(1, Some(2), 10).unwrap();
        r.create_fence(1, Some(2), 11).unwrap();
        assert!(!readable(r.poll_fd()));
        assert!(r.poll().is_empty());
        r.signal(1);
        assert!(readable(r.poll_fd()));
        assert_eq!(
            r.poll(),
            vec![RendererEvent::Fence(FenceSignal {
                ctx_id: 1,
                ring: Some(2),
                fence_id: 10
            })]
        );
        assert!(!readable(r.poll_fd()));
        assert_eq!(r.pending_fences(), 1);
        // Fences of a destroyed context never signal.
        r.context_destroy(1);
        assert_eq!(r.pending_fences(), 0);
        assert!(r.create_fence(1, Some(0), 12).is_err());
    }

    #[test]
    fn transfers_move_bytes_like_a_renderer() {
        let mut r = FakeRenderer::new();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let data: Vec<u8> = (0..64).collect();
        mem.write_slice(&data[..40], GuestAddress(0x100)).unwrap();
        mem.write_slice(&data[40..], GuestAddress(0x900)).unwrap();
        let args = Resource3d {
            width: 4,
            height: 4,
            ..Resource3d::default()
        };
        r.resource_create_3d(5, &args).unwrap();
        r.attach_backing(5, &mem, &[(0x100, 40), (0x900, 24)])
            .unwrap();
        let all = Transfer3d::image(4, 4);
        r.transfer_to_host(0, 5, &all).unwrap();
        assert_eq!(r.read_pixels(5, 4, 4).unwrap(), data);
        mem.write_slice(&[0u8; 64], GuestAddress(0x100)).unwrap();
        r.transfer_from_host(0, 5, &all).unwrap();
        let mut back = [0u8; 40];
        mem.read_slice(&mut back, GuestAddress(0x100)).unwrap();
        assert_eq!(&back[..], &data[..40]);
        let past = Transfer3d {
            bx: Box3d {
                x: 2,
                y: 0,
                z: 0,
                w: 4,
                h: 1,
                d: 1,
            },
            ..Transfer3d::default()
        };
        assert!(r.transfer_to_host(0, 5, &past).is_err());
        assert!(matches!(
            r.attach_backing(5, &mem, &[(0xffff, 2)]),
            Err(RendererError::OutsideGuestMemory { .. })
        ));
    }

    #[test]
    fn host_blobs_are_real_memfds_and_submits_can_be_refused() {
        let mut r = FakeRenderer::new();
        r.context_create(3, CAPSET_VENUS, b"v").unwrap();
        let req = BlobRequest {
            ctx_id: 3,
            blob_mem: virtio_bindings::virtio_gpu::VIRTIO_GPU_BLOB_MEM_HOST3D,
            blob_flags: virtio_bindings::virtio_gpu::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE,
            blob_id: 1,
            size: 8192,
        };
        r.resource_create_blob(9, &req, None).unwrap();
        let blob = r.export_blob(9).unwrap();
        let id = dmabuf_info::identify::identify(blob.fd.as_fd()).unwrap();
        assert_eq!((id.kind, id.size), (dmabuf_info::BufferKind::Memfd, 8192));
        assert!(
            r.resource_create_blob(9, &req, None).is_err(),
            "duplicate id"
        );
        r.control().fail_next_submit();
        assert!(r.submit(3, &[0; 8]).is_err());
        r.submit(3, &[1; 8]).unwrap();
        assert_eq!(r.control().submitted(), vec![(3, vec![1; 8])]);
        r.reset();
        assert_eq!(r.live(), (0, 0));
    }
}
