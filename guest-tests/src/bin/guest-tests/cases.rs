//! The cases. Each returns an [`Outcome`]; nothing here panics on what the
//! device or kernel answers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_tests::pattern;
use guest_tests::report::Outcome;

use crate::drm::{self, param, Bo, Device, BLOB_FLAG_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D};
use crate::{hold_for_host, Expectations, Runner};

/// `VIRTIO_GPU_CAPSET_CROSS_DOMAIN`.
const CAPSET_CROSS_DOMAIN: u32 = 5;
/// `CROSS_DOMAIN_CMD_INIT`.
const CMD_INIT: u8 = 1;
/// `CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS`.
const CMD_GET_IMAGE_REQUIREMENTS: u8 = 2;
/// Size of `struct CrossDomainImageRequirements` in the query ring.
const IMAGE_REQUIREMENTS_SIZE: usize = 64;
/// `VIRTIO_GPU_MAP_CACHE_*` values a mappable image may carry.
const MAP_CACHE_VALID: [u32; 3] = [1, 2, 3];
/// Size of the host-visible region the runner gives the backend (`--hostmem 256M`).
const REGION_SIZE: u64 = 256 << 20;

pub(crate) const XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
const ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
const ABGR8888: u32 = u32::from_le_bytes(*b"AB24");

/// Macro-free `?` for cases: turns an error into a failed outcome with context.
macro_rules! check {
    ($e:expr, $($ctx:tt)*) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(format!("{}: {e}", format!($($ctx)*))),
        }
    };
}

fn fail(why: impl Into<String>) -> Outcome {
    Outcome::Failed(why.into())
}

/// Whether a DRM node's parent device is a virtio-gpu: the PCI function
/// 1af4:1050 (virtio 1.0 device id 16), or a virtio device bound to `virtio_gpu`.
fn is_virtio_gpu(device: &Path) -> bool {
    let read = |f: &str| fs::read_to_string(device.join(f)).map(|s| s.trim().to_string());
    if read("vendor").is_ok_and(|v| v == "0x1af4") && read("device").is_ok_and(|d| d == "0x1050") {
        return true;
    }
    fs::read_link(device.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "virtio_gpu"))
        .unwrap_or(false)
}

/// The virtio-gpu nodes (`/dev/dri/cardN`, `/dev/dri/renderDN`).
pub(crate) fn virtio_gpu_nodes() -> (Option<PathBuf>, Option<PathBuf>) {
    let mut card = None;
    let mut render = None;
    let Ok(entries) = fs::read_dir("/sys/class/drm") else {
        return (None, None);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        if !is_virtio_gpu(&Path::new("/sys/class/drm").join(&name).join("device")) {
            continue;
        }
        let node = Path::new("/dev/dri").join(&name);
        if name.starts_with("card") && !name.contains('-') && card.is_none() {
            card = Some(node);
        } else if name.starts_with("renderD") && render.is_none() {
            render = Some(node);
        }
    }
    (card, render)
}

/// A cross-domain context with its query ring (a mapped GUEST blob).
pub(crate) struct CrossDomain<'a> {
    device: &'a Device,
    ring: Bo<'a>,
    ring_map: drm::Mapping,
}

/// `struct CrossDomainImageRequirements`, as read from the query ring.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageRequirements {
    pub(crate) strides: [u32; 4],
    pub(crate) size: u64,
    pub(crate) blob_id: u32,
    pub(crate) map_info: u32,
}

fn header(cmd: u8, size: u16) -> Vec<u8> {
    let mut out = vec![cmd, 0];
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

impl<'a> CrossDomain<'a> {
    pub(crate) fn init(device: &'a Device) -> Result<Self, String> {
        device
            .context_init(CAPSET_CROSS_DOMAIN, 2)
            .map_err(|e| format!("CONTEXT_INIT capset 5: {e}"))?;
        let ring = device
            .create_blob(BLOB_MEM_GUEST, BLOB_FLAG_MAPPABLE, 4096, 0)
            .map_err(|e| format!("query ring GUEST blob: {e}"))?;
        let offset = device
            .map_offset(ring.handle)
            .map_err(|e| format!("MAP of the query ring: {e}"))?;
        let ring_map = device
            .mmap(offset, 4096)
            .map_err(|e| format!("mmap of the query ring: {e}"))?;
        let mut cmd = header(CMD_INIT, 20);
        cmd.extend_from_slice(&ring.res_handle.to_le_bytes());
        cmd.extend_from_slice(&0u32.to_le_bytes()); // channel_ring_id: no channel
        cmd.extend_from_slice(&0u32.to_le_bytes()); // channel_type: none
        device
            .execbuffer(&cmd, &[ring.handle], 0)
            .map_err(|e| format!("EXECBUFFER CROSS_DOMAIN_CMD_INIT: {e}"))?;
        device
            .wait(ring.handle)
            .map_err(|e| format!("WAIT after CROSS_DOMAIN_CMD_INIT: {e}"))?;
        Ok(CrossDomain {
            device,
            ring,
            ring_map,
        })
    }

    pub(crate) fn image_requirements(
        &mut self,
        width: u32,
        height: u32,
        format: u32,
    ) -> Result<ImageRequirements, String> {
        self.ring_map.bytes_mut()[..IMAGE_REQUIREMENTS_SIZE].fill(0);
        let mut cmd = header(CMD_GET_IMAGE_REQUIREMENTS, 24);
        for v in [width, height, format, 0] {
            cmd.extend_from_slice(&v.to_le_bytes());
        }
        self.device
            .execbuffer(&cmd, &[self.ring.handle], 0)
            .map_err(|e| format!("EXECBUFFER GET_IMAGE_REQUIREMENTS {width}x{height}: {e}"))?;
        self.device
            .wait(self.ring.handle)
            .map_err(|e| format!("WAIT after GET_IMAGE_REQUIREMENTS: {e}"))?;
        let b = &self.ring_map.bytes()[..IMAGE_REQUIREMENTS_SIZE];
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Ok(ImageRequirements {
            strides: [u32_at(0), u32_at(4), u32_at(8), u32_at(12)],
            size: u64_at(40),
            blob_id: u32_at(48),
            map_info: u32_at(52),
        })
    }
}

/// Fills `bytes` with a position-dependent pattern seeded by `seed`.
pub(crate) fn fill(bytes: &mut [u8], seed: u32) {
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let v = (i as u32)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(seed)
            .to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Index of the first byte that differs from the pattern, if any.
pub(crate) fn verify(bytes: &[u8], seed: u32) -> Option<usize> {
    bytes.chunks(4).enumerate().find_map(|(i, chunk)| {
        let v = (i as u32)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(seed)
            .to_le_bytes();
        (chunk != &v[..chunk.len()]).then_some(i * 4)
    })
}

pub(crate) fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b != 0)
}

/// Creates a HOST3D MAPPABLE blob for `req`, checks it reads as zeros, writes a
/// pattern, unmaps, maps again and reads it back.
fn host3d_round_trip(device: &Device, req: &ImageRequirements, seed: u32) -> Outcome {
    let bo = check!(
        device.create_blob(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE,
            req.size,
            req.blob_id.into()
        ),
        "RESOURCE_CREATE_BLOB HOST3D MAPPABLE size {} blob_id {}",
        req.size,
        req.blob_id
    );
    bo_round_trip(device, &bo, req, seed)
}

/// RESOURCE_INFO, then map / write / unmap / map / read back of a created HOST3D blob.
fn bo_round_trip(device: &Device, bo: &Bo<'_>, req: &ImageRequirements, seed: u32) -> Outcome {
    let info = check!(device.resource_info(bo), "RESOURCE_INFO");
    if info.blob_mem != BLOB_MEM_HOST3D
        || u64::from(info.size) != req.size
        || info.res_handle != bo.res_handle
    {
        return fail(format!(
            "RESOURCE_INFO says {info:?}, want blob_mem 2 size {}",
            req.size
        ));
    }
    let len = check!(usize::try_from(req.size), "size");
    let offset = check!(device.map_offset(bo.handle), "MAP");
    {
        let mut map = check!(device.mmap(offset, len), "first mmap of {len} bytes");
        if let Some(at) = first_nonzero(map.bytes()) {
            return fail(format!("fresh blob has a non-zero byte at offset {at}"));
        }
        fill(map.bytes_mut(), seed);
    }
    let map = check!(device.mmap(offset, len), "second mmap");
    if let Some(at) = verify(map.bytes(), seed) {
        return fail(format!("read back differs at offset {at} after unmap/map"));
    }
    Outcome::Passed
}

/// Runs every case.
pub fn run_all(runner: &mut Runner, expect: Expectations) {
    let (card, render) = virtio_gpu_nodes();
    let mut render_dev = None;
    runner.case("virtio-gpu nodes present (card and render)", || {
        match (&card, &render) {
            (Some(_), Some(r)) => match Device::open(r) {
                Ok(d) => {
                    render_dev = Some(d);
                    Outcome::Passed
                }
                Err(e) => fail(format!("open {}: {e}", r.display())),
            },
            _ => fail(format!("card {card:?}, render {render:?}")),
        }
    });
    let Some(dev) = render_dev else {
        return;
    };
    params_case(runner, &dev, expect);
    blob_cases(runner, &dev, expect);
    if let Some(card) = card {
        dumb_and_kms_cases(runner, &card, expect);
    }
}

fn params_case(runner: &mut Runner, dev: &Device, expect: Expectations) {
    runner.case("parameters match what the device offers", || {
        let get = |p| dev.get_param(p);
        let blob = check!(get(param::RESOURCE_BLOB), "GETPARAM RESOURCE_BLOB");
        let host_visible = check!(get(param::HOST_VISIBLE), "GETPARAM HOST_VISIBLE");
        let context_init = check!(get(param::CONTEXT_INIT), "GETPARAM CONTEXT_INIT");
        let three_d = check!(get(param::FEATURES_3D), "GETPARAM 3D_FEATURES");
        let capsets = check!(get(param::SUPPORTED_CAPSET_IDS), "GETPARAM SUPPORTED_CAPSET_IDs");
        println!(
            "  3D={three_d} RESOURCE_BLOB={blob} HOST_VISIBLE={host_visible} \
             CONTEXT_INIT={context_init} capsets={capsets:#x}"
        );
        if expect.blob {
            let want = three_d == 1
                && blob == 1
                && host_visible == 1
                && context_init == 1
                && capsets == 1 << CAPSET_CROSS_DOMAIN;
            if !want {
                return fail("want 3D=1 RESOURCE_BLOB=1 HOST_VISIBLE=1 CONTEXT_INIT=1 capsets=0x20 (cross-domain only)");
            }
        } else if blob != 0 || context_init != 0 || host_visible != 0 {
            return fail("this frontend hides RESOURCE_BLOB, CONTEXT_INIT and the host-visible region, yet the guest sees them");
        }
        Outcome::Passed
    });
    if !expect.blob {
        return;
    }
    runner.case("GET_CAPS cross-domain capset", || {
        let caps = check!(
            dev.get_caps(CAPSET_CROSS_DOMAIN, 0, 16),
            "GET_CAPS capset 5"
        );
        let version = u32::from_le_bytes([caps[0], caps[1], caps[2], caps[3]]);
        if version == 0 {
            return fail(format!("capset version 0 in {caps:02x?}"));
        }
        Outcome::Passed
    });
}

const SKIP_NO_BLOB: &str = "this frontend hides RESOURCE_BLOB (asserted by the parameters case)";
const SKIP_REFUSING: &str = "the backend refuses to map its buffers (policy)";

fn blob_cases(runner: &mut Runner, dev: &Device, expect: Expectations) {
    let names = [
        "cross-domain context init",
        "image requirements (256x256 XRGB8888)",
        "HOST3D MAPPABLE blob: mmap, write, unmap, map again, read back",
        "blobs of several sizes and formats",
        "fresh HOST3D blob reads as zeros after a written one was freed",
        "region full: blobs until the right error, then success after freeing",
        "refused mapping: mmap fails with EINVAL, the device keeps working",
        "fresh GUEST blob reads as zeros",
    ];
    if !expect.blob {
        for name in names {
            runner.case(name, || Outcome::Skipped(SKIP_NO_BLOB.into()));
        }
        return;
    }
    let mut ctx = None;
    runner.case(names[0], || match CrossDomain::init(dev) {
        Ok(c) => {
            ctx = Some(c);
            Outcome::Passed
        }
        Err(e) => fail(e),
    });
    let Some(mut ctx) = ctx else {
        for name in &names[1..] {
            runner.case(name, || fail("no cross-domain context"));
        }
        return;
    };
    runner.case(names[1], || {
        let req = check!(ctx.image_requirements(256, 256, XRGB8888), "query");
        if req.strides[0] < 256 * 4
            || req.size < u64::from(req.strides[0]) * 256
            || req.blob_id == 0
        {
            return fail(format!("implausible answer {req:?}"));
        }
        let map_ok = if expect.refuse_maps {
            req.map_info == 0
        } else {
            MAP_CACHE_VALID.contains(&req.map_info)
        };
        if !map_ok {
            return fail(format!(
                "map_info {} (policy {})",
                req.map_info,
                if expect.refuse_maps {
                    "refuses: want NONE (0)"
                } else {
                    "allows: want 1, 2 or 3"
                }
            ));
        }
        Outcome::Passed
    });
    let mapped = |runner: &mut Runner, name: &str, f: &mut dyn FnMut() -> Outcome| {
        if expect.refuse_maps {
            runner.case(name, || Outcome::Skipped(SKIP_REFUSING.into()));
        } else {
            runner.case(name, f);
        }
    };
    mapped(runner, names[2], &mut || {
        let req = check!(ctx.image_requirements(256, 256, XRGB8888), "query");
        host3d_round_trip(dev, &req, 0x5eed)
    });
    mapped(runner, names[3], &mut || {
        let shapes = [
            (64, 64, XRGB8888),
            (1920, 1080, ARGB8888),
            (17, 9, ABGR8888),
            (4096, 16, XRGB8888),
            (1, 1, ARGB8888),
        ];
        for (i, &(w, h, format)) in shapes.iter().enumerate() {
            let req = check!(ctx.image_requirements(w, h, format), "query {w}x{h}");
            if req.size < u64::from(w) * u64::from(h) * 4 {
                return fail(format!("{w}x{h}: size {} is too small", req.size));
            }
            if let Outcome::Failed(why) = host3d_round_trip(dev, &req, i as u32) {
                return fail(format!("{w}x{h} {format:#x}: {why}"));
            }
        }
        Outcome::Passed
    });
    mapped(runner, names[4], &mut || {
        // The previous cases wrote patterns into blobs of this size and freed them.
        let req = check!(ctx.image_requirements(256, 256, XRGB8888), "query");
        host3d_round_trip(dev, &req, 0x2)
    });
    mapped(runner, names[5], &mut || region_full(&mut ctx, dev));
    if expect.refuse_maps {
        runner.case(names[6], || refused_mapping(&mut ctx, dev));
    } else {
        runner.case(names[6], || {
            Outcome::Skipped(
                "the default policy maps memfd buffers; the refusing run covers this".into(),
            )
        });
    }
    runner.case(names[7], || {
        let bo = check!(
            dev.create_blob(BLOB_MEM_GUEST, BLOB_FLAG_MAPPABLE, 1 << 20, 0),
            "GUEST blob"
        );
        let offset = check!(dev.map_offset(bo.handle), "MAP");
        let map = check!(dev.mmap(offset, 1 << 20), "mmap");
        match first_nonzero(map.bytes()) {
            Some(at) => fail(format!("non-zero byte at {at}")),
            None => Outcome::Passed,
        }
    });
}

/// Creates and maps 4 MiB blobs until the region is full, checks the error,
/// frees one and maps again.
fn region_full(ctx: &mut CrossDomain<'_>, dev: &Device) -> Outcome {
    let mut live = Vec::new();
    let blob_size: u64 = 4 << 20;
    let most = REGION_SIZE / blob_size;
    let error = loop {
        let req = check!(
            ctx.image_requirements(1024, 1024, XRGB8888),
            "query #{}",
            live.len()
        );
        if req.size != blob_size {
            return fail(format!(
                "1024x1024 XRGB8888 is {} bytes, expected {blob_size}",
                req.size
            ));
        }
        let bo = match dev.create_blob(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE,
            req.size,
            req.blob_id.into(),
        ) {
            Ok(bo) => bo,
            Err(e) => break e,
        };
        let offset = check!(dev.map_offset(bo.handle), "MAP #{}", live.len());
        match dev.mmap(offset, blob_size as usize) {
            Ok(map) => live.push((bo, map)),
            Err(e) => break e,
        }
        if live.len() as u64 > most {
            return fail(format!(
                "{} blobs of 4 MiB fit into a {} MiB region",
                live.len(),
                REGION_SIZE >> 20
            ));
        }
    };
    println!("  region full after {} blobs: {error}", live.len());
    // The guest kernel allocates the region too: it answers ENOSPC itself when
    // its range allocator is full; a device-side refusal shows as EINVAL at mmap.
    let errno = error.raw_os_error();
    if errno != Some(libc::ENOSPC) && errno != Some(libc::EINVAL) {
        return fail(format!("wrong error when full: {error}"));
    }
    if (live.len() as u64) < most - 1 {
        return fail(format!("only {} of {most} blobs of 4 MiB fit", live.len()));
    }
    // Free one, and the next blob must map again. The guest kernel returns the freed
    // range to its allocator only when the device has answered the UNMAP it sends for
    // the freed blob (asynchronously), so creation may see ENOSPC for a moment.
    live.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut retries = 0;
    let outcome = loop {
        let req = check!(
            ctx.image_requirements(1024, 1024, XRGB8888),
            "query after freeing"
        );
        match dev.create_blob(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE,
            req.size,
            req.blob_id.into(),
        ) {
            Ok(bo) => break bo_round_trip(dev, &bo, &req, 0x77),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && Instant::now() < deadline => {
                retries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                break fail(format!(
                    "RESOURCE_CREATE_BLOB after freeing one blob ({retries} retries): {e}"
                ))
            }
        }
    };
    if retries > 0 {
        println!("  the freed range came back after {retries} ENOSPC retries");
    }
    drop(live);
    outcome
}

/// With a refusing policy: the mmap fails with EINVAL and the device keeps
/// working (a GUEST blob maps and the context still answers).
fn refused_mapping(ctx: &mut CrossDomain<'_>, dev: &Device) -> Outcome {
    let req = check!(ctx.image_requirements(256, 256, XRGB8888), "query");
    let bo = check!(
        dev.create_blob(
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE,
            req.size,
            req.blob_id.into()
        ),
        "RESOURCE_CREATE_BLOB"
    );
    let offset = check!(dev.map_offset(bo.handle), "MAP");
    match dev.mmap(offset, req.size as usize) {
        Ok(_) => return fail("mmap of a refused buffer succeeded"),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return fail(format!("mmap failed with {e}, want EINVAL")),
    }
    check!(
        dev.resource_info(&bo),
        "RESOURCE_INFO on the refused resource"
    );
    drop(bo);
    let again = check!(
        ctx.image_requirements(64, 64, XRGB8888),
        "query after the refusal"
    );
    if again.blob_id == req.blob_id {
        return fail("the context reused a blob id");
    }
    let guest = check!(
        dev.create_blob(BLOB_MEM_GUEST, BLOB_FLAG_MAPPABLE, 65536, 0),
        "GUEST blob after the refusal"
    );
    let offset = check!(dev.map_offset(guest.handle), "MAP of the GUEST blob");
    let mut map = check!(dev.mmap(offset, 65536), "mmap of the GUEST blob");
    fill(map.bytes_mut(), 9);
    match verify(map.bytes(), 9) {
        Some(at) => fail(format!("GUEST blob read back differs at {at}")),
        None => Outcome::Passed,
    }
}

fn dumb_and_kms_cases(runner: &mut Runner, card: &Path, expect: Expectations) {
    let dev = match Device::open(card) {
        Ok(d) => d,
        Err(e) => {
            runner.case("open the card node", || {
                fail(format!("{}: {e}", card.display()))
            });
            return;
        }
    };
    runner.case(
        "dumb buffer: fresh zeros, write, read back, RESOURCE_INFO",
        || {
            let (bo, pitch) = check!(dev.create_dumb(64, 64, 32), "CREATE_DUMB 64x64");
            if pitch < 64 * 4 || bo.size < u64::from(pitch) * 64 {
                return fail(format!("pitch {pitch} size {}", bo.size));
            }
            let info = check!(dev.resource_info_handle(bo.handle), "RESOURCE_INFO");
            if info.res_handle == 0 || u64::from(info.size) < bo.size {
                return fail(format!("RESOURCE_INFO {info:?}"));
            }
            let offset = check!(dev.map_dumb(bo.handle), "MAP_DUMB");
            let mut map = check!(dev.mmap(offset, bo.size as usize), "mmap");
            if let Some(at) = first_nonzero(map.bytes()) {
                return fail(format!("fresh dumb buffer has a non-zero byte at {at}"));
            }
            fill(map.bytes_mut(), 3);
            match verify(map.bytes(), 3) {
                Some(at) => fail(format!("read back differs at {at}")),
                None => Outcome::Passed,
            }
        },
    );
    runner.case("KMS: dumb buffer with the test pattern scanned out", || {
        let output = check!(dev.first_output(), "find a connected output");
        let (w, h) = (
            u32::from(output.mode.hdisplay),
            u32::from(output.mode.vdisplay),
        );
        let (bo, pitch) = check!(dev.create_dumb(w, h, 32), "CREATE_DUMB {w}x{h}");
        let offset = check!(dev.map_dumb(bo.handle), "MAP_DUMB");
        let mut map = check!(dev.mmap(offset, bo.size as usize), "mmap");
        let bytes = map.bytes_mut();
        for y in 0..h as usize {
            let row = &mut bytes[y * pitch as usize..][..w as usize * 4];
            for (x, px) in row.chunks_mut(4).enumerate() {
                px.copy_from_slice(&pattern::pixel(x as u32, w).to_le_bytes());
            }
        }
        let fb = check!(dev.add_fb(&bo, w, h, pitch), "ADDFB");
        let shown = dev.set_crtc(&output, fb);
        let outcome = match shown {
            Err(e) => fail(format!("SETCRTC: {e}")),
            Ok(()) => {
                if expect.hold_kms {
                    match hold_for_host(&format!("kms-pattern {w}x{h}")) {
                        Ok(()) => Outcome::Passed,
                        Err(e) => fail(format!("talking to the host: {e}")),
                    }
                } else {
                    Outcome::Passed
                }
            }
        };
        let _ = dev.remove_fb(fb);
        outcome
    });
}

/// Writes text on the framebuffer console and lets the host look at it.
pub fn show_console(runner: &mut Runner) {
    runner.case("console text written to tty0 and shown to the host", || {
        let mut tty = check!(
            fs::OpenOptions::new().write(true).open("/dev/tty0"),
            "open /dev/tty0"
        );
        let mut text = String::new();
        for i in 0..12 {
            text.push_str(&format!(
                "vm-lanes: guest console line {i} ##########################\r\n"
            ));
        }
        check!(
            tty.write_all(text.as_bytes()).and_then(|_| tty.flush()),
            "write /dev/tty0"
        );
        check!(hold_for_host("console"), "talking to the host");
        Outcome::Passed
    });
}
