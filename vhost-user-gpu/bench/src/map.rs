//! (1) Map round trip: RESOURCE_MAP_BLOB + RESOURCE_UNMAP_BLOB of a 1 MiB HOST3D blob, and
//! its floor: the same `SHMEM_MAP`/`SHMEM_UNMAP` round trips on the same kind of socket to
//! the same frontend handler (which `mmap`s the fd), from a process with no device logic.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::io::{fcntl_setfd, FdFlags};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vug_conformance::cross_domain;
use vug_conformance::gpu::{self, ty, MemEntry};
use vug_conformance::shmem::{BackendRequestServer, SharedMemoryRegion};
use vug_conformance::Frontend;

use crate::report::Samples;
use crate::{sys, Res};

/// Size of the blob (and of the floor's memfd).
pub const BLOB_SIZE: u64 = 1 << 20;
/// Size of the host-visible region the floor's frontend side reserves (ours: --hostmem 256M).
const REGION_SIZE: u64 = 256 << 20;
/// Untimed pairs before each measurement.
const WARMUP: usize = 50;

/// Creates a cross-domain context and a MAPPABLE HOST3D blob of [`BLOB_SIZE`]; returns its
/// resource id.
pub fn setup_host_blob(fe: &mut Frontend) -> Res<u32> {
    fe.ctrl(gpu::ctx_create(1, gpu::CAPSET_CROSS_DOMAIN, "vug-bench"))?
        .check_type(ty::OK_NODATA)?;
    let ring = fe.ram().alloc(4096, 4096)?;
    let entry = [MemEntry {
        addr: ring,
        length: 4096,
    }];
    fe.ctrl(gpu::resource_create_blob(
        1,
        100,
        gpu::BLOB_MEM_GUEST,
        gpu::BLOB_FLAG_MAPPABLE,
        0,
        4096,
        &entry,
    ))?
    .check_type(ty::OK_NODATA)?;
    fe.ctrl(gpu::ctx_attach_resource(1, 100))?
        .check_type(ty::OK_NODATA)?;
    fe.ctrl(gpu::submit_3d(
        1,
        &cross_domain::init(100, cross_domain::RING_NONE, 0),
    ))?
    .check_type(ty::OK_NODATA)?;
    // 512x512 ARGB8888 = 1 MiB.
    let query =
        cross_domain::get_image_requirements(512, 512, cross_domain::DRM_FORMAT_ARGB8888, 0);
    fe.ctrl(gpu::submit_3d(1, &query).fence(1, Some(cross_domain::QUERY_RING)))?
        .check_type(ty::OK_NODATA)?;
    let reqs = cross_domain::ImageRequirements::parse(&fe.ram().read_vec(ring, 64)?)?;
    if reqs.size != BLOB_SIZE {
        return Err(format!("512x512 ARGB8888 blob is {} bytes, not 1 MiB", reqs.size).into());
    }
    fe.ctrl(gpu::resource_create_blob(
        1,
        2,
        gpu::BLOB_MEM_HOST3D,
        gpu::BLOB_FLAG_MAPPABLE,
        u64::from(reqs.blob_id),
        reqs.size,
        &[],
    ))?
    .check_type(ty::OK_NODATA)?;
    Ok(2)
}

/// `pairs` timed MAP_BLOB + UNMAP_BLOB pairs of resource `id` (after a warm-up).
pub fn measure_ours(fe: &mut Frontend, id: u32, pairs: usize) -> Res<Samples> {
    let pair = |fe: &mut Frontend| -> Res<()> {
        fe.ctrl(gpu::resource_map_blob(1, id, 0))?
            .check_type(ty::OK_MAP_INFO)?;
        fe.ctrl(gpu::resource_unmap_blob(1, id))?
            .check_type(ty::OK_NODATA)?;
        Ok(())
    };
    for _ in 0..WARMUP {
        pair(fe)?;
    }
    let mut ns = Vec::with_capacity(pairs);
    let start = Instant::now();
    for _ in 0..pairs {
        let t = Instant::now();
        pair(fe)?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    Ok(Samples::new(ns, start.elapsed()))
}

/// The floor: a child process (this program, `--floor-child`) sends `pairs` SHMEM_MAP +
/// SHMEM_UNMAP requests with REPLY_ACK for a 1 MiB memfd over a socketpair to the
/// conformance frontend's request handler, which maps and unmaps it exactly as for ours.
pub fn measure_floor(pairs: usize) -> Res<Samples> {
    let region = Arc::new(SharedMemoryRegion::reserve(
        gpu::SHM_ID_HOST_VISIBLE,
        REGION_SIZE,
    )?);
    let (server, tx) = BackendRequestServer::start(region.clone(), true, None)?;
    // The child inherits the socket (no CLOEXEC on this one fd).
    fcntl_setfd(&tx, FdFlags::empty())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tx);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--floor-child", &fd.to_string(), &pairs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    drop(tx);
    let mut out = String::new();
    child
        .stdout
        .take()
        .ok_or("floor child has no stdout")?
        .read_to_string(&mut out)?;
    let status = child.wait()?;
    drop(server);
    if !status.success() {
        return Err(format!("floor child failed ({status}): {out}").into());
    }
    if !region.mappings().is_empty() {
        return Err("floor child left mappings behind".into());
    }
    let mut nums = out.split_whitespace().map(str::parse::<u64>);
    let wall = nums.next().ok_or("floor child printed nothing")??;
    let ns = nums.collect::<Result<Vec<_>, _>>()?;
    if ns.len() != pairs {
        return Err(format!("floor child reported {} of {pairs} pairs", ns.len()).into());
    }
    Ok(Samples::new(ns, Duration::from_nanos(wall)))
}

/// The child side of the floor: what a backend does for MAP_BLOB + UNMAP_BLOB minus the
/// device (no queue, no command decoding, no resource or region bookkeeping).
pub fn floor_child(fd: i32, pairs: usize) -> Res<()> {
    let backend = Backend::from_stream(sys::inherited_stream(fd)?);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    let memfd = memfd_create("vug-bench-floor", MemfdFlags::CLOEXEC)?;
    ftruncate(&memfd, BLOB_SIZE)?;
    let req = VhostUserMMap {
        shmid: gpu::SHM_ID_HOST_VISIBLE,
        fd_offset: 0,
        shm_offset: 0,
        len: BLOB_SIZE,
        flags: VhostUserMMapFlags::WRITABLE.bits(),
        ..Default::default()
    };
    let file = std::fs::File::from(memfd.as_fd().try_clone_to_owned()?);
    let pair = || -> Res<()> {
        backend.shmem_map(&req, &file)?;
        backend.shmem_unmap(&req)?;
        Ok(())
    };
    for _ in 0..WARMUP {
        pair()?;
    }
    let mut ns = Vec::with_capacity(pairs);
    let start = Instant::now();
    for _ in 0..pairs {
        let t = Instant::now();
        pair()?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    let wall = start.elapsed().as_nanos();
    let mut out = wall.to_string();
    for n in ns {
        out.push(' ');
        out.push_str(&n.to_string());
    }
    println!("{out}");
    Ok(())
}
