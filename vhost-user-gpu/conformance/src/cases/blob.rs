//! Blob cases: GUEST blobs shown with SET_SCANOUT_BLOB (PNG capture checked), cross-domain
//! HOST3D blobs mapped into the frontend's host-visible region through SHMEM_MAP, the
//! refusal of buffers that would need `DMA_BUF_IOCTL_SYNC`, and the lifecycle of mappings
//! (unmap, unref while mapped, reset, reconnection) with fd and mapping leak checks.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::two_d::{display_matches, Backing};
use super::{
    bgra_pattern, ctrl, ensure, pattern, refused, send_expecting, still_serving, Case, CaseResult,
    Harness, Need, RefusedBy,
};
use crate::cross_domain::{self, ImageRequirements};
use crate::frontend::{Frontend, Peer};
use crate::gpu::{self, features, format, ty, BlobLayout, MemEntry, Rect};
use crate::proc_stats::ProcStats;
use crate::shmem::ShmemEvent;

/// The virtio-gpu context the blob cases create (cross-domain).
pub(super) const CTX_ID: u32 = 1;
pub(super) const RING_RES: u32 = 100;
/// GBM-style usage: linear, CPU reads and writes often (what a guest that maps wants).
const IMAGE_FLAGS: u32 = (1 << 4) | (1 << 9) | (1 << 11);

fn host() -> Need {
    Need::All(vec![
        Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
        Need::HostVisibleRegion,
    ])
}

fn host_ours() -> Need {
    Need::All(vec![host(), Need::OurCommandLine])
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "blob::guest_blob_set_scanout_blob",
            need: Need::Features(features::RESOURCE_BLOB),
            run: guest_blob_scanout,
        },
        Case {
            name: "blob::guest_blob_capture_png",
            need: Need::All(vec![
                Need::Features(features::RESOURCE_BLOB),
                Need::OurCommandLine,
            ]),
            run: guest_blob_capture_png,
        },
        Case {
            name: "blob::guest_blob_scanout_is_a_dmabuf_where_udmabuf_exists",
            need: Need::All(vec![
                Need::Features(features::RESOURCE_BLOB),
                Need::OurCommandLine,
            ]),
            run: guest_blob_dmabuf_scanout,
        },
        Case {
            name: "blob::set_scanout_blob_errors",
            need: Need::Features(features::RESOURCE_BLOB),
            run: set_scanout_blob_errors,
        },
        Case {
            name: "blob::create_blob_errors",
            need: Need::Features(features::RESOURCE_BLOB),
            run: create_blob_errors,
        },
        Case {
            name: "blob::host_blob_map_roundtrip",
            need: host(),
            run: host_blob_map_roundtrip,
        },
        Case {
            name: "blob::host_blob_capture_png",
            need: host_ours(),
            run: host_blob_capture_png,
        },
        Case {
            name: "blob::map_info_matches_dmabuf_info",
            need: host_ours(),
            run: map_info_matches_dmabuf_info,
        },
        Case {
            name: "blob::host_blob_contents_survive_remap",
            need: host(),
            run: host_blob_contents_survive_remap,
        },
        Case {
            name: "blob::guest_descriptors_into_mapped_blob",
            need: host(),
            run: descriptors_into_mapped_blob,
        },
        Case {
            name: "blob::fresh_host_blobs_read_zeros",
            need: host(),
            run: fresh_blobs_read_zeros,
        },
        Case {
            name: "blob::map_refused_when_policy_needs_sync",
            need: host_ours(),
            run: refused_when_needs_sync,
        },
        Case {
            name: "blob::mapped_buffers_answer_needs_sync_no",
            need: host(),
            run: mapped_buffers_answer_needs_sync_no,
        },
        Case {
            name: "blob::map_blob_errors",
            need: host(),
            run: map_blob_errors,
        },
        Case {
            name: "blob::unmap_blob_releases_everything",
            need: host(),
            run: unmap_releases,
        },
        Case {
            name: "blob::unref_while_mapped",
            need: host(),
            run: unref_while_mapped,
        },
        Case {
            name: "blob::reset_while_mapped",
            need: host(),
            run: reset_while_mapped,
        },
        Case {
            name: "blob::reconnect_while_mapped",
            need: host_ours(),
            run: reconnect_while_mapped,
        },
    ]
}

fn spawn(harness: &Harness, extra: &[&str]) -> Result<Frontend, String> {
    harness
        .spawn_with(extra)
        .map_err(|e| format!("cannot start backend: {e}"))
}

fn stats(fe: &Frontend) -> Result<ProcStats, String> {
    fe.backend_stats().map_err(|e| e.to_string())
}

fn guest_blob(fe: &mut Frontend, id: u32, img: &[u8]) -> Result<Backing, String> {
    let backing = Backing::new(fe, img.len())?;
    backing.write(fe, 0, img)?;
    send_expecting(
        fe,
        "RESOURCE_CREATE_BLOB (GUEST)",
        gpu::resource_create_blob(
            0,
            id,
            gpu::BLOB_MEM_GUEST,
            0,
            0,
            img.len() as u64,
            &backing.entries,
        ),
        ty::OK_NODATA,
    )?;
    Ok(backing)
}

fn show_blob(fe: &mut Frontend, id: u32, w: u32, h: u32) -> CaseResult {
    let layout = BlobLayout {
        width: w,
        height: h,
        format: format::B8G8R8A8_UNORM,
        stride: w * 4,
        offset: 0,
    };
    send_expecting(
        fe,
        "SET_SCANOUT_BLOB",
        gpu::set_scanout_blob(0, id, Rect::sized(w, h), layout),
        ty::OK_NODATA,
    )?;
    send_expecting(
        fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(id, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    Ok(())
}

fn guest_blob_scanout(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let (w, h) = (64u32, 32u32);
    let img = bgra_pattern(w, h, 11);
    guest_blob(&mut fe, 1, &img)?;
    show_blob(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    still_serving(&mut fe)
}

/// Our backend exports a page-aligned GUEST blob with udmabuf when `/dev/udmabuf` exists
/// (guest RAM is a memfd sealed like QEMU's): the display then gets a `DMABUF_SCANOUT`
/// whose fd shows the guest's pixels, and pixels the guest writes later appear in it
/// without any copy (it is the guest's pages). Without `/dev/udmabuf` the scanout is
/// pixels (`UPDATE`) and no dma-buf is sent.
fn guest_blob_dmabuf_scanout(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let (w, h) = (64u32, 32u32);
    let len = (w * h * 4) as u64;
    let gpa = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    let img = bgra_pattern(w, h, 13);
    fe.ram().write(gpa, &img).map_err(|e| e.to_string())?;
    let entries = [MemEntry {
        addr: gpa,
        length: len as u32,
    }];
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_BLOB (GUEST, page aligned)",
        gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, len, &entries),
        ty::OK_NODATA,
    )?;
    show_blob(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    // display_matches saw the image: whatever path the backend took has been received.
    let display = fe.display().ok_or("no display socket")?;
    let got_dmabuf = display
        .state()
        .dmabuf_scanouts
        .get(&0)
        .is_some_and(|d| d.fd.is_some());
    if !Path::new("/dev/udmabuf").exists() {
        return ensure(&fe, !got_dmabuf, || {
            "a dma-buf scanout without /dev/udmabuf".into()
        })
        .and_then(|()| still_serving(&mut fe));
    }
    ensure(&fe, got_dmabuf, || {
        "/dev/udmabuf exists but the GUEST blob was not shown as a dma-buf (not exported?)".into()
    })?;
    // The dma-buf is the guest's pages: a new image written by the guest is in it.
    let img2 = bgra_pattern(w, h, 14);
    fe.ram().write(gpa, &img2).map_err(|e| e.to_string())?;
    let expected: Vec<u32> = img2
        .chunks(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
        .collect();
    let shown = {
        let st = display.state();
        st.dmabuf_scanouts
            .get(&0)
            .map(|d| d.read_xrgb().map_err(|e| e.to_string()))
    };
    ensure(&fe, shown == Some(Ok(expected)), || {
        "the GUEST blob's dma-buf does not show what the guest wrote into its pages".into()
    })?;
    still_serving(&mut fe)
}

/// Decodes a PNG to RGBA8.
fn decode_png(path: &Path) -> Result<(u32, u32, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = png::Decoder::new(file)
        .read_info()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 0xff])
            .collect(),
        other => return Err(format!("unexpected PNG colour type {other:?}")),
    };
    Ok((info.width, info.height, rgba))
}

/// Waits (hang guard) until the capture of scanout 0 shows `bgra` (alpha not compared).
fn capture_matches(fe: &Frontend, dir: &Path, w: u32, h: u32, bgra: &[u8]) -> CaseResult {
    let path = dir.join("scanout-0.png");
    let expected: Vec<u8> = bgra.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let deadline = Instant::now() + super::DISPLAY_WAIT;
    let mut last = String::from("no file");
    while Instant::now() < deadline {
        if path.exists() {
            match decode_png(&path) {
                Ok((pw, ph, rgba)) => {
                    let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                    if (pw, ph) == (w, h) && rgb == expected {
                        return Ok(());
                    }
                    let diff = rgb.iter().zip(&expected).position(|(a, b)| a != b);
                    last = format!("{pw}x{ph}, first differing byte {diff:?}");
                }
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(crate::suite::with_log(
        fe,
        format!(
            "capture {} never showed the {w}x{h} image: {last}",
            path.display()
        ),
    ))
}

fn guest_blob_capture_png(harness: &Harness) -> CaseResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir_arg = dir.path().to_string_lossy().to_string();
    let mut fe = spawn(harness, &["--capture-dir", &dir_arg])?;
    let (w, h) = (48u32, 40u32);
    let mut img = bgra_pattern(w, h, 12);
    let backing = guest_blob(&mut fe, 1, &img)?;
    show_blob(&mut fe, 1, w, h)?;
    capture_matches(&fe, dir.path(), w, h, &img)?;
    // The guest draws again into its own memory; a flush alone must show it (no transfer:
    // a GUEST blob *is* guest memory).
    img = bgra_pattern(w, h, 13);
    backing.write(&fe, 0, &img)?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    capture_matches(&fe, dir.path(), w, h, &img)?;
    still_serving(&mut fe)
}

fn create_blob_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let page = fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?;
    let entry = [MemEntry {
        addr: page,
        length: 4096,
    }];
    send_expecting(
        &mut fe,
        "CREATE_BLOB id 0",
        gpu::resource_create_blob(0, 0, gpu::BLOB_MEM_GUEST, 0, 0, 4096, &entry),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    let r = ctrl(
        &mut fe,
        "CREATE_BLOB blob_mem 9",
        gpu::resource_create_blob(0, 1, 9, 0, 0, 4096, &entry),
    )?;
    ensure(&fe, r.ty == ty::ERR_INVALID_PARAMETER, || {
        format!("blob_mem 9 answered {}", r.name())
    })?;
    let r = ctrl(
        &mut fe,
        "CREATE_BLOB HOST3D without a context",
        gpu::resource_create_blob(
            0,
            1,
            gpu::BLOB_MEM_HOST3D,
            gpu::BLOB_FLAG_MAPPABLE,
            1,
            4096,
            &[],
        ),
    )?;
    ensure(&fe, r.ty == ty::ERR_INVALID_CONTEXT_ID, || {
        format!(
            "HOST3D blob without context answered {}, expected ERR_INVALID_CONTEXT_ID",
            r.name()
        )
    })?;
    let outside = [MemEntry {
        addr: fe.ram().size() as u64 + 4096,
        length: 4096,
    }];
    let r = ctrl(
        &mut fe,
        "CREATE_BLOB GUEST outside RAM",
        gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, 4096, &outside),
    )?;
    // As ATTACH_BACKING (and as QEMU answers both): memory the device cannot reach.
    ensure(&fe, r.ty == ty::ERR_UNSPEC, || {
        format!(
            "GUEST blob outside RAM answered {}, expected ERR_UNSPEC",
            r.name()
        )
    })?;
    let r = ctrl(
        &mut fe,
        "CREATE_BLOB GUEST size beyond entries",
        gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, 8192, &entry),
    )?;
    ensure(&fe, r.ty == ty::ERR_INVALID_PARAMETER, || {
        format!(
            "GUEST blob larger than its entries answered {}, expected ERR_INVALID_PARAMETER",
            r.name()
        )
    })?;
    // None of the refused creates may have taken id 1.
    send_expecting(
        &mut fe,
        "CREATE_BLOB valid",
        gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, 4096, &entry),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

/// A cross-domain context with its query ring set up.
pub(super) struct CrossDomain {
    ring: Backing,
    fence: u64,
}

impl CrossDomain {
    pub(super) fn init(fe: &mut Frontend) -> Result<Self, String> {
        send_expecting(
            fe,
            "CTX_CREATE (cross-domain)",
            gpu::ctx_create(CTX_ID, gpu::CAPSET_CROSS_DOMAIN, "conformance"),
            ty::OK_NODATA,
        )?;
        let ring = Backing::new(fe, 4096)?;
        send_expecting(
            fe,
            "CREATE_BLOB (query ring)",
            gpu::resource_create_blob(
                CTX_ID,
                RING_RES,
                gpu::BLOB_MEM_GUEST,
                gpu::BLOB_FLAG_MAPPABLE,
                0,
                4096,
                &ring.entries,
            ),
            ty::OK_NODATA,
        )?;
        send_expecting(
            fe,
            "CTX_ATTACH_RESOURCE (query ring)",
            gpu::ctx_attach_resource(CTX_ID, RING_RES),
            ty::OK_NODATA,
        )?;
        let init = cross_domain::init(RING_RES, cross_domain::RING_NONE, 0);
        send_expecting(
            fe,
            "SUBMIT_3D CROSS_DOMAIN_CMD_INIT",
            gpu::submit_3d(CTX_ID, &init),
            ty::OK_NODATA,
        )?;
        Ok(Self { ring, fence: 0 })
    }

    fn requirements(
        &mut self,
        fe: &mut Frontend,
        w: u32,
        h: u32,
    ) -> Result<ImageRequirements, String> {
        fe.ram()
            .write(self.ring.entries[0].addr, &[0xee; 64])
            .map_err(|e| e.to_string())?;
        self.fence += 1;
        let cmd = cross_domain::get_image_requirements(
            w,
            h,
            cross_domain::DRM_FORMAT_ARGB8888,
            IMAGE_FLAGS,
        );
        let r = send_expecting(
            fe,
            "SUBMIT_3D GET_IMAGE_REQUIREMENTS",
            gpu::submit_3d(CTX_ID, &cmd).fence(self.fence, Some(cross_domain::QUERY_RING)),
            ty::OK_NODATA,
        )?;
        ensure(fe, r.fence_id == self.fence, || {
            format!("fence {} answered for {}", r.fence_id, self.fence)
        })?;
        let bytes = self.ring.read(fe, 64)?;
        let reqs = ImageRequirements::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(
            fe,
            reqs.size >= u64::from(w * h * 4)
                && reqs.strides[0] >= w * 4
                && reqs.blob_id != 0xeeee_eeee,
            || format!("implausible image requirements for {w}x{h}: {reqs:?}"),
        )?;
        Ok(reqs)
    }

    pub(super) fn create(
        &mut self,
        fe: &mut Frontend,
        id: u32,
        w: u32,
        h: u32,
        flags: u32,
    ) -> Result<ImageRequirements, String> {
        let reqs = self.requirements(fe, w, h)?;
        send_expecting(
            fe,
            "RESOURCE_CREATE_BLOB (HOST3D)",
            gpu::resource_create_blob(
                CTX_ID,
                id,
                gpu::BLOB_MEM_HOST3D,
                flags,
                u64::from(reqs.blob_id),
                reqs.size,
                &[],
            ),
            ty::OK_NODATA,
        )?;
        Ok(reqs)
    }
}

fn page_round(n: u64) -> u64 {
    n.next_multiple_of(4096)
}

/// Maps `id` at `offset`; checks OK_MAP_INFO and that the frontend now has the mapping.
pub(super) fn map(fe: &mut Frontend, id: u32, offset: u64, size: u64) -> Result<u32, String> {
    let r = send_expecting(
        fe,
        "RESOURCE_MAP_BLOB",
        gpu::resource_map_blob(CTX_ID, id, offset),
        ty::OK_MAP_INFO,
    )?;
    let info = r.map_info().map_err(|e| e.to_string())?;
    ensure(
        fe,
        matches!(
            info,
            gpu::MAP_CACHE_CACHED | gpu::MAP_CACHE_WC | gpu::MAP_CACHE_UNCACHED
        ),
        || format!("map_info {info} is not CACHED, UNCACHED or WC"),
    )?;
    let region = fe.shmem().ok_or("no host-visible region")?;
    let mapped = region
        .mappings()
        .iter()
        .any(|&(o, l)| o == offset && l >= size && l == page_round(l));
    ensure(fe, mapped, || {
        format!(
            "OK_MAP_INFO but the frontend has no mapping at {offset:#x}: {:?}",
            region.mappings()
        )
    })?;
    Ok(info)
}

fn host_blob_map_roundtrip(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let (w, h) = (64u32, 64u32);
    let reqs = cd.create(&mut fe, 1, w, h, gpu::BLOB_FLAG_MAPPABLE)?;
    let info = map(&mut fe, 1, 0, reqs.size)?;
    ensure(&fe, info == reqs.map_info, || {
        format!(
            "map_info {info} differs from GET_IMAGE_REQUIREMENTS' {}",
            reqs.map_info
        )
    })?;
    let region = fe.shmem().ok_or("no region")?;
    let fresh = region
        .read(0, reqs.size as usize)
        .map_err(|e| e.to_string())?;
    ensure(&fe, fresh.iter().all(|&b| b == 0), || {
        "a fresh host blob is not zeroed".into()
    })?;
    // Frontend writes through its mapping; the backend shows it (reads its own buffer).
    let img = bgra_pattern(w, h, 21);
    let stride = reqs.strides[0] as usize;
    for row in 0..h as usize {
        let off = reqs.offsets[0] as usize + row * stride;
        region
            .write(
                off as u64,
                &img[row * w as usize * 4..(row + 1) * w as usize * 4],
            )
            .map_err(|e| e.to_string())?;
    }
    let layout = BlobLayout {
        width: w,
        height: h,
        format: format::B8G8R8A8_UNORM,
        stride: reqs.strides[0],
        offset: reqs.offsets[0],
    };
    send_expecting(
        &mut fe,
        "SET_SCANOUT_BLOB (host blob)",
        gpu::set_scanout_blob(0, 1, Rect::sized(w, h), layout),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    display_matches(&fe, 0, w, h, &img)?;
    if harness.allocator() == Some("udmabuf") {
        // A udmabuf blob is a dma-buf: the display gets the buffer, not a pixel copy.
        let display = fe.display().ok_or("no display socket")?;
        let dmabuf = display
            .state()
            .dmabuf_scanouts
            .get(&0)
            .is_some_and(|d| d.fd.is_some());
        ensure(&fe, dmabuf, || {
            "with --allocator udmabuf the host blob was not shown as a dma-buf".into()
        })?;
    }
    still_serving(&mut fe)
}

fn map_info_matches_dmabuf_info(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--platform", "x86-intel"])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    let info = map(&mut fe, 1, 0, reqs.size)?;
    let fd = fe
        .shmem()
        .and_then(|r| r.mapped_fd(0))
        .ok_or("no fd recorded for the mapping")?;
    let inspector = dmabuf_info::Inspector::new(dmabuf_info::Config::default());
    let buffer = inspector
        .inspect(fd.as_fd(), None)
        .map_err(|e| format!("dmabuf-info on the mapped fd: {e}"))?;
    let decision = dmabuf_info::policy::decide(&buffer, dmabuf_info::Platform::X86Intel);
    match decision {
        dmabuf_info::Decision::Allow(cache) => ensure(&fe, cache.virtio_value() == info, || {
            format!("device reported map_info {info}, dmabuf-info decided {cache:?} for {buffer:?}")
        }),
        dmabuf_info::Decision::Refuse(reason) => Err(format!(
            "device mapped a buffer dmabuf-info refuses: {reason:?}"
        )),
    }
}

/// The other direction: the backend's buffer is what the frontend sees. Bytes written
/// through one mapping are still there through a new mapping at another offset (the
/// backend sends its own fd again), and a second blob does not see them.
fn host_blob_contents_survive_remap(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    let len = reqs.size as usize;
    map(&mut fe, 1, 0, reqs.size)?;
    let bytes = pattern(len, 31);
    fe.shmem()
        .ok_or("no region")?
        .write(0, &bytes)
        .map_err(|e| e.to_string())?;
    send_expecting(
        &mut fe,
        "UNMAP_BLOB",
        gpu::resource_unmap_blob(CTX_ID, 1),
        ty::OK_NODATA,
    )?;
    let other = 1 << 20;
    map(&mut fe, 1, other, reqs.size)?;
    let seen = fe
        .shmem()
        .ok_or("no region")?
        .read(other, len)
        .map_err(|e| e.to_string())?;
    ensure(&fe, seen == bytes, || {
        "the blob's bytes changed across unmap and map".into()
    })?;
    let reqs2 = cd.create(&mut fe, 2, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 2, 0, reqs2.size)?;
    let second = fe
        .shmem()
        .ok_or("no region")?
        .read(0, len)
        .map_err(|e| e.to_string())?;
    ensure(&fe, second.iter().all(|&b| b == 0), || {
        "a second blob shows another blob's bytes".into()
    })?;
    still_serving(&mut fe)
}

fn fresh_blobs_read_zeros(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    for round in 0..4u32 {
        let id = 10 + round;
        let reqs = cd.create(&mut fe, id, 128, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        map(&mut fe, id, 0, reqs.size)?;
        let region = fe.shmem().ok_or("no region")?;
        let bytes = region
            .read(0, page_round(reqs.size) as usize)
            .map_err(|e| e.to_string())?;
        let nonzero = bytes.iter().position(|&b| b != 0);
        ensure(&fe, nonzero.is_none(), || {
            format!("round {round}: fresh blob has data at byte {nonzero:?}")
        })?;
        region
            .write(0, &pattern(reqs.size as usize, round + 40))
            .map_err(|e| e.to_string())?;
        send_expecting(
            &mut fe,
            "UNMAP_BLOB",
            gpu::resource_unmap_blob(CTX_ID, id),
            ty::OK_NODATA,
        )?;
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    }
    still_serving(&mut fe)
}

/// The exporter name `dmabuf-info` gives the buffers of the backend under test: a blob is
/// mapped with the default policy and the fd the frontend received is inspected. `None`
/// when the default policy already refuses them (then nothing can be learnt this way).
fn exporter_of_mapped_blobs(harness: &Harness) -> Result<Option<String>, String> {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    cd.create(&mut fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    let r = ctrl(
        &mut fe,
        "RESOURCE_MAP_BLOB",
        gpu::resource_map_blob(CTX_ID, 1, 0),
    )?;
    if r.ty != ty::OK_MAP_INFO {
        return Ok(None);
    }
    let fd = fe
        .shmem()
        .and_then(|r| r.mapped_fd(0))
        .ok_or("OK_MAP_INFO but no fd recorded for the mapping")?;
    let info = dmabuf_info::Inspector::new(dmabuf_info::Config::default())
        .inspect(fd.as_fd(), None)
        .map_err(|e| format!("dmabuf-info on the mapped fd: {e}"))?;
    Ok(Some(info.exporter))
}

/// A policy file whose quirks give `needs_sync = answer` to the exporters our allocators
/// produce (`memfd`, `udmabuf`) and to `probed`, if given (e.g. a GPU driver's name).
fn policy_saying(dir: &Path, answer: &str, probed: Option<&str>) -> Result<String, String> {
    let mut names = vec!["memfd", "udmabuf"];
    if let Some(p) = probed.filter(|p| !names.contains(p)) {
        names.push(p);
    }
    let text: String = names
        .iter()
        .map(|n| {
            format!(
                "[[exporter]]\nname = \"{n}\"\ncache = \"cached\"\nneeds_sync = \"{answer}\"\nstable = true\n"
            )
        })
        .collect();
    let path = dir.join(format!("policy-{answer}.toml"));
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path.to_string_lossy().to_string())
}

fn refused_when_needs_sync(harness: &Harness) -> CaseResult {
    // (A quirk cannot say "unknown": in dmabuf-info an unknown layer defers to the next
    // source. Unknown answers from real exporters are checked in the kernel VM lane.)
    let probed = exporter_of_mapped_blobs(harness)?;
    let answer = "yes";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let policy_arg = policy_saying(dir.path(), answer, probed.as_deref())?;
    let mut fe = spawn(harness, &["--policy-config", &policy_arg])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    cd.create(&mut fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    // Refused by the backend's policy, before any SHMEM_MAP (ERR_UNSPEC: the guest's
    // mmap() then fails with EINVAL, as for a frontend that cannot map).
    refused(
        &mut fe,
        &format!("RESOURCE_MAP_BLOB of a buffer whose needs-SYNC answer is {answer}"),
        gpu::resource_map_blob(CTX_ID, 1, 0),
        ty::ERR_UNSPEC,
        RefusedBy::Backend,
    )?;
    let region = fe.shmem().ok_or("no region")?;
    ensure(&fe, region.mappings().is_empty(), || {
        format!("refused map left mappings {:?}", region.mappings())
    })?;
    let mapped_ever = region
        .events()
        .iter()
        .any(|e| matches!(e, ShmemEvent::Mapped { .. }));
    ensure(&fe, !mapped_ever, || {
        format!(
            "SHMEM_MAP was sent although the map was refused: {:?}",
            region.events()
        )
    })?;
    // The resource stays usable and the device keeps serving.
    send_expecting(
        &mut fe,
        "UNREF of the refused blob",
        gpu::resource_unref(1),
        ty::OK_NODATA,
    )?;
    cd.create(&mut fe, 2, 16, 16, gpu::BLOB_FLAG_MAPPABLE)?;
    still_serving(&mut fe)
}

/// Every buffer the backend maps into the frontend (whatever its allocator) is one that
/// `dmabuf-info` says needs no `DMA_BUF_IOCTL_SYNC` (answer No), that its policy allows, and
/// whose cache attribute is the map_info the guest was told. Checked on the fds the frontend
/// received with `SHMEM_MAP`, for blobs of several sizes.
fn mapped_buffers_answer_needs_sync_no(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let inspector = dmabuf_info::Inspector::new(dmabuf_info::Config::default());
    let mut offset = 0u64;
    for (id, (w, h)) in [
        (1u32, (16u32, 16u32)),
        (2, (64, 64)),
        (3, (100, 30)),
        (4, (256, 256)),
    ] {
        let reqs = cd.create(&mut fe, id, w, h, gpu::BLOB_FLAG_MAPPABLE)?;
        let info = map(&mut fe, id, offset, reqs.size)?;
        let fd = fe
            .shmem()
            .and_then(|r| r.mapped_fd(offset))
            .ok_or("no fd recorded for the mapping")?;
        let buffer = inspector
            .inspect(fd.as_fd(), None)
            .map_err(|e| format!("dmabuf-info on the mapped fd: {e}"))?;
        ensure(
            &fe,
            buffer.needs_sync.value == dmabuf_info::NeedsSync::No,
            || {
                format!(
                    "resource {id} ({}) was mapped although its needs-SYNC answer is {} ({})",
                    buffer.exporter,
                    buffer.needs_sync.value.as_str(),
                    buffer.needs_sync.source
                )
            },
        )?;
        match inspector.decide(&buffer) {
            dmabuf_info::Decision::Allow(cache) => {
                ensure(&fe, cache.virtio_value() == info, || {
                    format!(
                        "resource {id} ({}): map_info {info}, dmabuf-info decides {cache:?}",
                        buffer.exporter
                    )
                })?
            }
            dmabuf_info::Decision::Refuse(reason) => {
                return Err(format!(
                    "resource {id} ({}) was mapped although the policy refuses it: {reason}",
                    buffer.exporter
                ))
            }
        }
        offset += page_round(reqs.size);
    }
    let mapped = fe
        .shmem()
        .ok_or("no region")?
        .events()
        .iter()
        .filter(|e| matches!(e, ShmemEvent::Mapped { .. }))
        .count();
    ensure(&fe, mapped == 4, || {
        format!("expected 4 SHMEM_MAPs, the frontend saw {mapped}")
    })?;
    still_serving(&mut fe)
}

fn map_blob_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let region_size = fe.shmem().ok_or("no region")?.size();
    send_expecting(
        &mut fe,
        "MAP_BLOB of unknown resource",
        gpu::resource_map_blob(CTX_ID, 77, 0),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    refused(
        &mut fe,
        "MAP_BLOB of a GUEST blob",
        gpu::resource_map_blob(CTX_ID, RING_RES, 0),
        ty::ERR_INVALID_PARAMETER,
        RefusedBy::Backend,
    )?;
    let reqs = cd.create(&mut fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    cd.create(&mut fe, 2, 32, 32, 0)?;
    refused(
        &mut fe,
        "MAP_BLOB of a non-MAPPABLE blob",
        gpu::resource_map_blob(CTX_ID, 2, 0),
        ty::ERR_INVALID_PARAMETER,
        RefusedBy::Backend,
    )?;
    for (what, offset) in [
        ("offset past the region", region_size),
        ("blob crossing the region end", region_size - 4096),
        ("offset overflowing", u64::MAX - 4095),
        ("unaligned offset", 100),
    ] {
        if what == "blob crossing the region end" && reqs.size <= 4096 {
            continue;
        }
        // The backend's region allocator refuses these before asking the frontend.
        refused(
            &mut fe,
            &format!("MAP_BLOB with {what} ({offset:#x})"),
            gpu::resource_map_blob(CTX_ID, 1, offset),
            ty::ERR_INVALID_PARAMETER,
            RefusedBy::Backend,
        )?;
    }
    let region = fe.shmem().ok_or("no region")?;
    ensure(&fe, region.mappings().is_empty(), || {
        format!("refused maps left mappings {:?}", region.mappings())
    })?;
    map(&mut fe, 1, 0, reqs.size)?;
    refused(
        &mut fe,
        "second MAP_BLOB of a mapped blob",
        gpu::resource_map_blob(CTX_ID, 1, 1 << 20),
        ty::ERR_INVALID_PARAMETER,
        RefusedBy::Backend,
    )?;
    // Another blob over the first one's range: the device must not hand out the same
    // guest-physical range twice.
    cd.create(&mut fe, 3, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
    refused(
        &mut fe,
        "MAP_BLOB overlapping another mapping",
        gpu::resource_map_blob(CTX_ID, 3, page_round(reqs.size) - 4096),
        ty::ERR_INVALID_PARAMETER,
        RefusedBy::Backend,
    )?;
    send_expecting(
        &mut fe,
        "UNMAP_BLOB of unknown resource",
        gpu::resource_unmap_blob(CTX_ID, 77),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    send_expecting(
        &mut fe,
        "UNMAP_BLOB of an unmapped blob",
        gpu::resource_unmap_blob(CTX_ID, 2),
        ty::ERR_INVALID_PARAMETER,
    )?;
    let region = fe.shmem().ok_or("no region")?;
    ensure(&fe, region.mappings().len() == 1, || {
        format!(
            "expected exactly the one good mapping: {:?}",
            region.mappings()
        )
    })?;
    still_serving(&mut fe)
}

/// Baseline after context set-up, then `body`, then the backend must be back to baseline.
pub(super) fn no_leaks(fe: &mut Frontend, before: &ProcStats) -> CaseResult {
    // Releases happen before the response; no waiting needed, but the display socket
    // replacement on reset is asynchronous in some backends, so allow it to settle.
    let deadline = Instant::now() + super::DISPLAY_WAIT;
    loop {
        let now = stats(fe)?;
        if now.fds <= before.fds && now.buffer_maps <= before.buffer_maps {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(crate::suite::with_log(
                fe,
                format!("backend holds more than before: {} -> {} fds, {} -> {} buffer mappings; new fds {:?}", before.fds, now.fds, before.buffer_maps, now.buffer_maps, now.new_fds(before)),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn region_empty(fe: &Frontend, what: &str) -> CaseResult {
    let region = fe.shmem().ok_or("no region")?;
    ensure(fe, region.mappings().is_empty(), || {
        format!(
            "after {what} the frontend still has mappings {:?}",
            region.mappings()
        )
    })
}

fn unmap_releases(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let before = stats(&fe)?;
    for round in 0..3 {
        let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        map(&mut fe, 1, 4096 * round, reqs.size)?;
        send_expecting(
            &mut fe,
            "UNMAP_BLOB",
            gpu::resource_unmap_blob(CTX_ID, 1),
            ty::OK_NODATA,
        )?;
        region_empty(&fe, "UNMAP_BLOB")?;
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(1), ty::OK_NODATA)?;
    }
    no_leaks(&mut fe, &before)?;
    still_serving(&mut fe)
}

fn unref_while_mapped(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let before = stats(&fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    send_expecting(
        &mut fe,
        "UNREF while mapped",
        gpu::resource_unref(1),
        ty::OK_NODATA,
    )?;
    region_empty(&fe, "UNREF of a mapped blob")?;
    no_leaks(&mut fe, &before)?;
    // The range is free again.
    let reqs = cd.create(&mut fe, 2, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 2, 0, reqs.size)?;
    still_serving(&mut fe)
}

fn reset_while_mapped(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let before = stats(&fe)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    fe.reset()
        .map_err(|e| super::case_error(&fe, "device reset", e))?;
    region_empty(&fe, "reset")?;
    fe.wait_memtable_synced()
        .map_err(|e| super::case_error(&fe, "memory table after reset", e))?;
    no_leaks(&mut fe, &before)?;
    // Everything starts over: the same ids and offsets work again.
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    still_serving(&mut fe)
}

fn reconnect_while_mapped(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--keep-listening"])?;
    let before = stats(&fe)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    fe.reconnect()
        .map_err(|e| super::case_error(&fe, "reconnect", e))?;
    region_empty(&fe, "reconnection")?;
    no_leaks(&mut fe, &before)?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let reqs = cd.create(&mut fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    still_serving(&mut fe)
}

fn set_scanout_blob_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let (w, h) = (32u32, 16u32);
    let img = bgra_pattern(w, h, 61);
    guest_blob(&mut fe, 1, &img)?;
    let good = BlobLayout {
        width: w,
        height: h,
        format: format::B8G8R8A8_UNORM,
        stride: w * 4,
        offset: 0,
    };
    let full = Rect::sized(w, h);
    send_expecting(
        &mut fe,
        "SET_SCANOUT_BLOB scanout 16",
        gpu::set_scanout_blob(16, 1, full, good),
        ty::ERR_INVALID_SCANOUT_ID,
    )?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT_BLOB unknown resource",
        gpu::set_scanout_blob(0, 77, full, good),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    let bad: [(&str, Rect, BlobLayout); 5] = [
        (
            "format 0xdead",
            full,
            BlobLayout {
                format: 0xdead,
                ..good
            },
        ),
        (
            "stride smaller than a row",
            full,
            BlobLayout {
                stride: w * 4 - 4,
                ..good
            },
        ),
        (
            "image past the blob's end",
            full,
            BlobLayout {
                offset: 4096,
                ..good
            },
        ),
        (
            "rectangle outside the image",
            Rect {
                x: 16,
                y: 0,
                width: w,
                height: h,
            },
            good,
        ),
        (
            "height overflowing stride * height",
            full,
            BlobLayout {
                height: u32::MAX,
                ..good
            },
        ),
    ];
    for (what, rect, layout) in bad {
        send_expecting(
            &mut fe,
            &format!("SET_SCANOUT_BLOB with {what}"),
            gpu::set_scanout_blob(0, 1, rect, layout),
            ty::ERR_INVALID_PARAMETER,
        )?;
    }
    // None of them reached the display; the good one does.
    let display = fe.display().ok_or("no display")?;
    ensure(
        &fe,
        display
            .state()
            .scanouts
            .get(&0)
            .is_none_or(|s| s.width == 0),
        || "a refused SET_SCANOUT_BLOB configured the display".into(),
    )?;
    show_blob(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &img)?;
    still_serving(&mut fe)
}

/// Bytes written through the frontend's mapping of a HOST3D blob, read back by the backend
/// into its PNG capture (the headless display path), then overwritten and captured again.
fn host_blob_capture_png(harness: &Harness) -> CaseResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir_arg = dir.path().to_string_lossy().to_string();
    let mut fe = spawn(harness, &["--capture-dir", &dir_arg])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let (w, h) = (48u32, 32u32);
    let reqs = cd.create(&mut fe, 1, w, h, gpu::BLOB_FLAG_MAPPABLE)?;
    map(&mut fe, 1, 0, reqs.size)?;
    let write_image = |fe: &Frontend, img: &[u8]| -> CaseResult {
        let region = fe.shmem().ok_or("no region")?;
        for row in 0..h as usize {
            let off = reqs.offsets[0] as usize + row * reqs.strides[0] as usize;
            let src = &img[row * w as usize * 4..(row + 1) * w as usize * 4];
            region.write(off as u64, src).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let img = bgra_pattern(w, h, 71);
    write_image(&fe, &img)?;
    let layout = BlobLayout {
        width: w,
        height: h,
        format: format::B8G8R8A8_UNORM,
        stride: reqs.strides[0],
        offset: reqs.offsets[0],
    };
    send_expecting(
        &mut fe,
        "SET_SCANOUT_BLOB",
        gpu::set_scanout_blob(0, 1, Rect::sized(w, h), layout),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    capture_matches(&fe, dir.path(), w, h, &img)?;
    let img = bgra_pattern(w, h, 72);
    write_image(&fe, &img)?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(1, Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    capture_matches(&fe, dir.path(), w, h, &img)?;
    still_serving(&mut fe)
}

/// QEMU puts mapped blobs into the memory table, so guest addresses inside the host-visible
/// window are valid descriptors. A 2D resource whose backing lies in a mapped blob: the
/// device may refuse it (an error response) or use it, but if it answers OK the pixels must
/// be the blob's bytes; either way it keeps serving, and unmapping it afterwards is safe.
/// Run twice: the frontend announcing the blob with `ADD_MEM_REG`/`REM_MEM_REG`
/// (`CONFIGURE_MEM_SLOTS`, what QEMU does when the backend offers it) and with whole
/// `SET_MEM_TABLE`s (what it does otherwise).
fn descriptors_into_mapped_blob(harness: &Harness) -> CaseResult {
    for configure_mem_slots in [true, false] {
        let options = crate::frontend::FrontendOptions {
            configure_mem_slots,
            ..Default::default()
        };
        let mut fe = harness
            .spawn_with_options(&[], options)
            .map_err(|e| format!("cannot start backend: {e}"))?;
        let slots = fe
            .protocol_features()
            .contains(vhost::vhost_user::VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        let mode = if slots {
            "ADD_MEM_REG/REM_MEM_REG"
        } else {
            "whole memory tables"
        };
        if fe.peer() == crate::frontend::Peer::Ours {
            ensure(&fe, slots == configure_mem_slots, || {
                format!("CONFIGURE_MEM_SLOTS negotiated: {slots}, frontend wanted {configure_mem_slots}")
            })?;
        }
        descriptors_into_mapped_blob_with(&mut fe).map_err(|e| format!("{mode}: {e}"))?;
        // Our backend names each memory update in its debug log: the blob must have come
        // and gone as single regions, or as whole tables.
        let log = fe.backend_log();
        if fe.peer() == crate::frontend::Peer::Ours && log.contains("memory updated:") {
            let (want, not) = if slots {
                ("REM_MEM_REG", "SET_MEM_TABLE (whole")
            } else {
                ("SET_MEM_TABLE (whole", "ADD_MEM_REG (one")
            };
            ensure(&fe, log.contains(want) && !log.contains(not), || {
                format!("{mode}: backend log should show {want} and no {not}")
            })?;
        }
    }
    Ok(())
}

fn descriptors_into_mapped_blob_with(fe: &mut Frontend) -> CaseResult {
    let mut cd = CrossDomain::init(fe)?;
    let (w, h) = (32u32, 32u32);
    let reqs = cd.create(fe, 1, w, h, gpu::BLOB_FLAG_MAPPABLE)?;
    map(fe, 1, 0, reqs.size)?;
    fe.wait_memtable_synced()
        .map_err(|e| super::case_error(fe, "memory table update", e))?;
    let img = bgra_pattern(w, h, 81);
    fe.shmem()
        .ok_or("no region")?
        .write(0, &img)
        .map_err(|e| e.to_string())?;
    let window = fe.shmem_window_gpa();
    send_expecting(
        fe,
        "CREATE_2D",
        gpu::resource_create_2d(2, format::B8G8R8A8_UNORM, w, h),
        ty::OK_NODATA,
    )?;
    let entry = [MemEntry {
        addr: window,
        length: w * h * 4,
    }];
    let r = ctrl(
        fe,
        "ATTACH_BACKING inside the mapped blob",
        gpu::resource_attach_backing(2, &entry),
    )?;
    if r.ty == ty::OK_NODATA {
        send_expecting(
            fe,
            "TRANSFER",
            gpu::transfer_to_host_2d(2, Rect::sized(w, h), 0),
            ty::OK_NODATA,
        )?;
        super::two_d::show_on_scanout_0(fe, 2, w, h)?;
        display_matches(fe, 0, w, h, &img)?;
    } else {
        // This device reads a backing inside a mapped blob (the guest's own memory); a
        // frontend table that lacks the blob, or a device that refuses, answers as for memory
        // it cannot reach.
        ensure(
            fe,
            fe.peer() != Peer::Ours && r.ty == ty::ERR_UNSPEC,
            || {
                format!(
                    "ATTACH_BACKING inside a mapped blob answered {}{}",
                    r.name(),
                    if fe.peer() == Peer::Ours {
                        ", expected OK_NODATA"
                    } else {
                        ", expected OK_NODATA or ERR_UNSPEC"
                    }
                )
            },
        )?;
    }
    send_expecting(
        fe,
        "UNMAP_BLOB",
        gpu::resource_unmap_blob(CTX_ID, 1),
        ty::OK_NODATA,
    )?;
    fe.wait_memtable_synced()
        .map_err(|e| super::case_error(fe, "memory table update", e))?;
    // Now the backing points at nothing: a transfer must fail cleanly, not crash.
    if r.ty == ty::OK_NODATA {
        let t = ctrl(
            fe,
            "TRANSFER after the blob was unmapped",
            gpu::transfer_to_host_2d(2, Rect::sized(w, h), 0),
        )?;
        // The backing's memory is gone from the memory table: the read fails as for memory
        // outside guest RAM.
        ensure(fe, t.ty == ty::ERR_UNSPEC, || {
            format!(
                "TRANSFER from a backing in an unmapped blob answered {}, expected ERR_UNSPEC",
                t.name()
            )
        })?;
    }
    still_serving(fe)
}
