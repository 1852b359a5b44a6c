//! Port implementations the `vhost-user-gpu` device tests (`tests/device_core.rs`) and fuzz
//! targets (`fuzz/`) share, so that each exists once:
//! - [`FrontendRegion`] / [`FrontendMapper`]: the host-visible region as a frontend holds
//!   it (vug-conformance's [`SharedMemoryRegion`]: a real `PROT_NONE` reservation that
//!   buffers are `mmap`ed into, as QEMU backs its PCI BAR window), behind the device's
//!   [`RegionMapper`] port, with failure injection;
//! - [`FixedAdvisor`]: a map advisor with a fixed answer, a stand-in (named as such) for
//!   `dmabuf-info`, for tests whose point is what the device does with an answer;
//! - [`NoDisplay`]: a display that shows nothing, for tests that do not look at one;
//! - [`shared_guest_memory`] and [`render_worker_config`]: guest memory a render worker can
//!   map, and the worker configuration the renderer tests and the renderer fuzz target use.
//!
//! It also turns on `vhost-user-gpu`'s `test-codec` feature (the driver's half of the
//! protocol codec) for whoever depends on it.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost::vhost_user::VhostUserFrontendReqHandler;
use vhost_user_gpu::device::ports::{
    Cursor, DisplaySink, Frame, MapAdvice, MapAdvisor, MapError, MapRange, RegionMapper, PAGE_SIZE,
};
use vhost_user_gpu::protocol::{Rect, SHM_ID_HOST_VISIBLE};
use vhost_user_gpu::transport::shmem::shmem_request;
pub use vug_conformance::shmem::{SharedMemoryRegion, ShmemEvent};

/// The host-visible region of one device under test, and the knobs of its mapper.
pub struct FrontendRegion {
    /// The reservation (`None` for a device configured without a region).
    region: Option<SharedMemoryRegion>,
    available: AtomicBool,
    fail_next_map: AtomicBool,
    fail_next_unmap: AtomicBool,
}

impl FrontendRegion {
    /// A region of `size` bytes (0: none), available, without injected failures.
    pub fn new(size: u64) -> Arc<Self> {
        let region = (size > 0).then(|| {
            SharedMemoryRegion::reserve(SHM_ID_HOST_VISIBLE, size)
                .expect("reserve the host-visible region")
        });
        Arc::new(FrontendRegion {
            region,
            available: AtomicBool::new(true),
            fail_next_map: AtomicBool::new(false),
            fail_next_unmap: AtomicBool::new(false),
        })
    }

    /// The reservation.
    ///
    /// # Panics
    /// For a region of size 0.
    pub fn region(&self) -> &SharedMemoryRegion {
        self.region
            .as_ref()
            .expect("a device configured with a host-visible region")
    }

    /// Whether the mapper reports itself available (a frontend that negotiated SHMEM).
    pub fn set_available(&self, yes: bool) {
        self.available.store(yes, Ordering::Relaxed);
    }

    /// Makes the next map fail (the frontend refuses it) after its checks passed.
    pub fn fail_next_map(&self) {
        self.fail_next_map.store(true, Ordering::Relaxed);
    }

    /// Makes the next unmap fail after its checks passed.
    pub fn fail_next_unmap(&self) {
        self.fail_next_unmap.store(true, Ordering::Relaxed);
    }

    /// Clears both injected failures.
    pub fn clear_failures(&self) {
        self.fail_next_map.store(false, Ordering::Relaxed);
        self.fail_next_unmap.store(false, Ordering::Relaxed);
    }

    /// What the frontend did so far (maps and unmaps, in order).
    pub fn events(&self) -> Vec<ShmemEvent> {
        self.region.as_ref().map_or_else(Vec::new, |r| r.events())
    }

    /// Number of maps so far.
    pub fn maps(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, ShmemEvent::Mapped { .. }))
            .count()
    }

    /// Live mappings as `(offset, len)`.
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.region.as_ref().map_or_else(Vec::new, |r| r.mappings())
    }
}

/// A [`RegionMapper`] over a [`FrontendRegion`]. It asserts what a device must never ask
/// for (a map while unavailable, a range that is empty, unaligned, outside the region or
/// overlapping a mapping, an fd offset other than 0, an unmap of something that is not a
/// mapping): a test or fuzz target using it fails on such a call.
pub struct FrontendMapper(pub Arc<FrontendRegion>);

impl RegionMapper for FrontendMapper {
    fn available(&self) -> bool {
        self.0.available.load(Ordering::Relaxed)
    }

    fn map(&mut self, fd: BorrowedFd<'_>, range: MapRange) -> Result<(), MapError> {
        let MapRange {
            shm_offset,
            len,
            fd_offset,
            ..
        } = range;
        assert!(self.available(), "map while the mapper is unavailable");
        assert!(
            len > 0 && len.is_multiple_of(PAGE_SIZE) && shm_offset.is_multiple_of(PAGE_SIZE),
            "map {shm_offset:#x}+{len:#x} is not page aligned"
        );
        assert_eq!(fd_offset, 0, "maps start at the buffer's first byte");
        let region = self.0.region();
        let end = shm_offset.checked_add(len).expect("map range wraps");
        assert!(
            end <= region.size(),
            "map {shm_offset:#x}+{len:#x} past the region"
        );
        for (o, l) in region.mappings() {
            assert!(
                end <= o || o + l <= shm_offset,
                "map {shm_offset:#x}+{len:#x} overlaps {o:#x}+{l:#x}"
            );
        }
        if self.0.fail_next_map.swap(false, Ordering::Relaxed) {
            return Err(MapError::Frontend("injected map failure".into()));
        }
        region
            .shmem_map(&shmem_request(&range), &fd)
            .map(drop)
            .map_err(|e| MapError::Frontend(e.to_string()))
    }

    fn unmap(&mut self, shm_offset: u64, len: u64) -> Result<(), MapError> {
        let region = self.0.region();
        assert!(
            region.mappings().contains(&(shm_offset, len)),
            "unmap of {shm_offset:#x}+{len:#x}, which is not a mapping: {:?}",
            region.mappings()
        );
        if self.0.fail_next_unmap.swap(false, Ordering::Relaxed) {
            return Err(MapError::Frontend("injected unmap failure".into()));
        }
        region
            .shmem_unmap(&shmem_request(&MapRange::unmap(shm_offset, len)))
            .map(drop)
            .map_err(|e| MapError::Frontend(e.to_string()))
    }
}

/// A map advisor with a fixed answer: a stand-in for the `dmabuf-info` advisor (there is no
/// exporter to ask in these tests; their point is what the device does with the answer).
#[derive(Debug, Clone)]
pub struct FixedAdvisor(MapAdvice);

impl FixedAdvisor {
    /// Allows every buffer with `map_info`.
    pub fn allow(map_info: u32) -> Self {
        FixedAdvisor(MapAdvice::Allow {
            map_info,
            source: "fixed test answer".into(),
        })
    }

    /// Refuses every buffer.
    pub fn refuse() -> Self {
        FixedAdvisor(MapAdvice::Refuse {
            reason: "needs DMA_BUF_IOCTL_SYNC (fixed test answer)".into(),
        })
    }
}

impl MapAdvisor for FixedAdvisor {
    fn advise(&self, _fd: BorrowedFd<'_>, _drm_fd: Option<BorrowedFd<'_>>) -> MapAdvice {
        self.0.clone()
    }
}

/// A display that shows nothing: for device tests that do not look at the screen.
pub struct NoDisplay;

impl DisplaySink for NoDisplay {
    fn scanout(&mut self, _: u32, _: Option<(u32, u32)>) {}
    fn flush(&mut self, _: u32, _: &Frame<'_>, _: Rect) {}
    fn cursor_update(&mut self, _: &Cursor<'_>) {}
    fn cursor_move(&mut self, _: u32, _: u32, _: u32) {}
}

/// Guest memory in one memfd of `len` bytes at guest address 0, as a frontend shares it: a
/// render worker maps it too (anonymous memory cannot be sent to one).
pub fn shared_guest_memory(
    len: usize,
) -> std::io::Result<vhost_user_gpu::device::ports::GuestMemory> {
    let fd = rustix::fs::memfd_create("guest-ram", rustix::fs::MemfdFlags::CLOEXEC)?;
    let file = std::fs::File::from(fd);
    file.set_len(len as u64)?;
    vhost_user_gpu::device::ports::GuestMemory::from_ranges_with_files([(
        vm_memory::GuestAddress(0),
        len,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .map_err(std::io::Error::other)
}

/// The render worker configuration of the renderer tests and the renderer fuzz target: the
/// real virglrenderer (the default library and render server) with virgl and venus, venus
/// also from a library older than 1.0 (what is tested is the render server, whatever a guest
/// driver would accept), under the worker's 3D seccomp profile without Landlock (which
/// depends on the kernel; the conformance suite runs the backend's default, Landlock
/// included).
pub fn render_worker_config() -> vhost_user_gpu::renderer::wire::StartConfig {
    let defaults = vhost_user_gpu::renderer::VirglConfig::default();
    vhost_user_gpu::renderer::wire::StartConfig {
        library: defaults.library,
        render_server: defaults.render_server,
        virgl: true,
        venus: true,
        legacy_venus: true,
        sandbox: vhost_user_gpu::renderer::wire::WorkerSandbox::SeccompOnly,
        render_nodes: Vec::new(),
        library_dirs: Vec::new(),
    }
}
