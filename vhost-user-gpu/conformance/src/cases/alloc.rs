//! Hostile guests against the backend's host allocations: every allocation a guest can cause
//! is charged to its budget or bounded, and nothing it sends can make the backend abort.
//!
//! Each case starts the backend with a small `--max-resource-memory`, attacks, checks the
//! exact virtio-gpu error, that the backend's peak resident memory (`VmHWM`) stayed under
//! the budget plus [`RSS_ALLOWANCE`], and that a normal command sequence still works. The
//! first four are the findings of an independent review (a GUEST blob whose entries alias
//! one MiB claiming 16 GiB; a huge blob scanout whose copies were not charged; a scanout
//! size forwarded to the frontend's display unchecked; one `SUBMIT_3D` logging 43,000
//! lines), the others cover the rest of the allocation inventory in `README-launch.md`.

use std::time::Duration;

use super::blob::{CrossDomain, CTX_ID};
use super::{ctrl, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::cross_domain as xd;
use crate::frontend::{Frontend, FrontendOptions};
use crate::gpu::{self, features, format, ty, BlobLayout, Cmd, MemEntry, Rect};
use crate::proc_stats::MemoryStats;

/// What the backend may hold beyond its budget: its own code, stacks and heap (about 10 MiB
/// here), the guest RAM it touched for the case, allocator slack. Documented in
/// `README-launch.md` ("Limits").
pub const RSS_ALLOWANCE: u64 = 48 << 20;

/// Largest side of a scanout the backend accepts (its largest output mode).
const MAX_SCANOUT_SIDE: u32 = 16384;

/// Guest-caused log lines the backend writes per 10 s window at the default level (its
/// documented limiter, `README-launch.md` "Logs"), plus the one line reporting what was held
/// back.
const LOG_BURST: usize = 50;

/// The file descriptors the backend keeps out of the guest's reach (`FD_RESERVE`).
const FD_RESERVE: u64 = 509 + 64;

const MIB: u64 = 1 << 20;

fn blob_need() -> Need {
    Need::All(vec![
        Need::OurCommandLine,
        Need::Features(features::RESOURCE_BLOB),
    ])
}

fn ctx_need() -> Need {
    Need::All(vec![
        Need::OurCommandLine,
        Need::Features(features::VIRGL | features::CONTEXT_INIT | features::RESOURCE_BLOB),
    ])
}

pub(super) fn cases() -> Vec<Case> {
    let case = |name, need, run| Case { name, need, run };
    vec![
        case(
            "alloc::aliased_guest_blob_entries_are_refused",
            blob_need(),
            aliased_guest_blob,
        ),
        case(
            "alloc::huge_blob_scanout_copies_are_charged",
            blob_need(),
            huge_blob_scanout,
        ),
        case(
            "alloc::scanout_copy_past_the_address_space_is_an_error",
            Need::All(vec![
                blob_need(),
                Need::NoHostPath(
                    "/dev/udmabuf",
                    "GUEST blobs are shown as dma-bufs, with no copy to refuse",
                ),
            ]),
            copy_past_address_space,
        ),
        case(
            "alloc::display_channel_never_gets_more_than_accepted",
            blob_need(),
            display_sizes,
        ),
        case("alloc::log_flood_is_rate_limited", ctx_need(), log_flood),
        case(
            "alloc::fd_exhaustion_leaves_memory_table_fds",
            Need::All(vec![ctx_need(), Need::HostVisibleRegion]),
            fd_exhaustion,
        ),
        case(
            "alloc::context_attachments_are_capped",
            ctx_need(),
            attachments,
        ),
        case(
            "alloc::udmabuf_exports_are_charged",
            Need::All(vec![blob_need(), Need::HostPath("/dev/udmabuf")]),
            udmabuf_exports,
        ),
        case(
            "alloc::reset_while_mapped_and_shown_releases_every_charge",
            Need::All(vec![ctx_need(), Need::HostVisibleRegion]),
            reset_while_mapped,
        ),
        case(
            "alloc::dead_backend_is_noticed_at_once",
            Need::Nothing,
            dead_backend,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn spawn(harness: &Harness, extra: &[&str], ram: usize) -> Result<Frontend, String> {
    let options = FrontendOptions {
        ram_size: ram,
        ..FrontendOptions::default()
    };
    harness
        .spawn_with_options(extra, options)
        .map_err(|e| format!("cannot start backend: {e}"))
}

fn ok(fe: &mut Frontend, what: &str, cmd: Cmd) -> CaseResult {
    send_expecting(fe, what, cmd, ty::OK_NODATA).map(|_| ())
}

fn err(fe: &mut Frontend, what: &str, cmd: Cmd, t: u32) -> CaseResult {
    send_expecting(fe, what, cmd, t).map(|_| ())
}

fn memory(fe: &Frontend) -> Result<MemoryStats, String> {
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    MemoryStats::of(pid).map_err(|e| e.to_string())
}

/// The backend's peak resident memory must stay under `budget` + [`RSS_ALLOWANCE`].
fn peak_within(fe: &Frontend, budget: u64, what: &str) -> CaseResult {
    let m = memory(fe)?;
    eprintln!(
        "alloc: {what}: backend peak RSS {:.1} MiB, budget {} MiB",
        m.peak_rss as f64 / MIB as f64,
        budget >> 20
    );
    ensure(fe, m.peak_rss <= budget + RSS_ALLOWANCE, || {
        format!(
            "{what}: backend peak RSS {} MiB with a budget of {} MiB (allowance {} MiB)",
            m.peak_rss >> 20,
            budget >> 20,
            RSS_ALLOWANCE >> 20
        )
    })
}

/// A normal 2D sequence after the attack (create, attach, transfer, scanout, flush, unref).
fn normal_2d(fe: &mut Frontend) -> CaseResult {
    let id = 0xfff0;
    ok(
        fe,
        "normal CREATE_2D after the attack",
        gpu::resource_create_2d(id, format::B8G8R8X8_UNORM, 16, 16),
    )?;
    let backing = super::two_d::Backing::new(fe, 16 * 16 * 4)?;
    ok(
        fe,
        "normal ATTACH_BACKING",
        gpu::resource_attach_backing(id, &backing.entries),
    )?;
    ok(
        fe,
        "normal TRANSFER_TO_HOST_2D",
        gpu::transfer_to_host_2d(id, Rect::sized(16, 16), 0),
    )?;
    ok(
        fe,
        "normal SET_SCANOUT",
        gpu::set_scanout(0, id, Rect::sized(16, 16)),
    )?;
    ok(
        fe,
        "normal RESOURCE_FLUSH",
        gpu::resource_flush(id, Rect::sized(16, 16)),
    )?;
    ok(fe, "normal UNREF", gpu::resource_unref(id))?;
    backing.free(fe);
    still_serving(fe)
}

/// A GUEST blob `id` over `len` bytes of fresh guest memory in entries of at most `piece`
/// bytes; returns the entries.
fn guest_blob(fe: &mut Frontend, id: u32, len: u64, piece: u64) -> Result<Vec<MemEntry>, String> {
    let base = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    let entries: Vec<MemEntry> = (0..len.div_ceil(piece))
        .map(|i| MemEntry {
            addr: base + i * piece,
            length: piece.min(len - i * piece) as u32,
        })
        .collect();
    ok(
        fe,
        "CREATE_BLOB GUEST",
        gpu::resource_create_blob(0, id, gpu::BLOB_MEM_GUEST, 0, 0, len, &entries),
    )?;
    Ok(entries)
}

/// `SET_SCANOUT_BLOB` of a `w`x`h` XRGB image at the start of `id`, stride `w * 4`.
fn scanout_blob(id: u32, w: u32, h: u32) -> Cmd {
    gpu::set_scanout_blob(
        0,
        id,
        Rect::sized(w, h),
        BlobLayout {
            width: w,
            height: h,
            format: format::B8G8R8X8_UNORM,
            stride: w.wrapping_mul(4),
            offset: 0,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Finding 1: aliased GUEST blob entries.

fn aliased_guest_blob(harness: &Harness) -> CaseResult {
    const BUDGET: u64 = 64 * MIB;
    let mut fe = spawn(harness, &["--max-resource-memory", "64M"], 128 << 20)?;
    let page = fe.ram().alloc(MIB, 4096).map_err(|e| e.to_string())?;
    // 16384 entries of 1 MiB over the same MiB: a "16 GiB" blob over 1 MiB of RAM.
    let entries = vec![
        MemEntry {
            addr: page,
            length: MIB as u32,
        };
        16384
    ];
    err(
        &mut fe,
        "CREATE_BLOB GUEST of 16384 entries over one MiB (16 GiB claimed)",
        gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, 16384 * MIB, &entries),
        ty::ERR_INVALID_PARAMETER,
    )?;
    // Nothing was created: the id is free, showing it is an unknown resource.
    err(
        &mut fe,
        "SET_SCANOUT_BLOB of the refused blob",
        scanout_blob(1, 16384, 8192),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    // The same MiB once, as 16 distinct entries: accepted.
    let distinct: Vec<MemEntry> = (0..16)
        .map(|i| MemEntry {
            addr: page + i * (MIB / 16),
            length: (MIB / 16) as u32,
        })
        .collect();
    ok(
        &mut fe,
        "CREATE_BLOB GUEST over one MiB in 16 distinct entries",
        gpu::resource_create_blob(0, 1, gpu::BLOB_MEM_GUEST, 0, 0, MIB, &distinct),
    )?;
    // Exactly the covered size is accepted (above); one byte more is refused although the
    // entries are valid: only the size bound refuses.
    err(
        &mut fe,
        "CREATE_BLOB GUEST one byte larger than its entries",
        gpu::resource_create_blob(0, 2, gpu::BLOB_MEM_GUEST, 0, 0, MIB + 1, &distinct),
        ty::ERR_INVALID_PARAMETER,
    )?;
    ok(&mut fe, "UNREF", gpu::resource_unref(1))?;
    peak_within(&fe, BUDGET, "after the aliased blob")?;
    normal_2d(&mut fe)
}

// ---------------------------------------------------------------------------------------
// Finding 2: huge blob scanouts.

fn huge_blob_scanout(harness: &Harness) -> CaseResult {
    // Sized to run inside the lanes' 512 MiB guests too: 128 MiB of guest RAM, a 64 MiB
    // GUEST blob over distinct pages of it, a 16 MiB budget.
    const BUDGET: u64 = 16 * MIB;
    let mut fe = spawn(harness, &["--max-resource-memory", "16M"], 128 << 20)?;
    guest_blob(&mut fe, 1, 64 * MIB, MIB)?;
    // 4096x4096 fits the blob; one copy alone is 64 MiB, four times the budget.
    err(
        &mut fe,
        "SET_SCANOUT_BLOB 4096x4096 over a 64 MiB blob with a 16 MiB budget",
        scanout_blob(1, 4096, 4096),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    // Past the largest side even with the budget's help: a bad parameter.
    err(
        &mut fe,
        "SET_SCANOUT_BLOB 16384x65536",
        scanout_blob(1, 16384, 65536),
        ty::ERR_INVALID_PARAMETER,
    )?;
    ok(
        &mut fe,
        "RESOURCE_FLUSH of a blob no scanout shows",
        gpu::resource_flush(1, Rect::sized(4096, 4096)),
    )?;
    peak_within(&fe, BUDGET, "after the refused scanout")?;
    // A scanout whose copies fit (1024x1024: 4 MiB a copy; the device's and the display
    // channel's) is shown and flushed.
    ok(
        &mut fe,
        "SET_SCANOUT_BLOB 1024x1024",
        scanout_blob(1, 1024, 1024),
    )?;
    ok(
        &mut fe,
        "RESOURCE_FLUSH 1024x1024",
        gpu::resource_flush(1, Rect::sized(1024, 1024)),
    )?;
    // 2048x2048 is 16 MiB a copy, the whole budget: refused, and the 1024x1024 scanout
    // stays.
    err(
        &mut fe,
        "SET_SCANOUT_BLOB 2048x2048",
        scanout_blob(1, 2048, 2048),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    ok(
        &mut fe,
        "RESOURCE_FLUSH after the refused change",
        gpu::resource_flush(1, Rect::sized(1024, 1024)),
    )?;
    peak_within(&fe, BUDGET, "after showing 1024x1024")?;
    // Disabling the scanout releases its charge: the budget takes a 2D resource of
    // nearly all of it.
    ok(
        &mut fe,
        "SET_SCANOUT_BLOB resource 0 (disable)",
        gpu::set_scanout_blob(
            0,
            0,
            Rect::default(),
            BlobLayout {
                width: 0,
                height: 0,
                format: format::B8G8R8X8_UNORM,
                stride: 0,
                offset: 0,
            },
        ),
    )?;
    ok(&mut fe, "UNREF", gpu::resource_unref(1))?;
    ok(
        &mut fe,
        "CREATE_2D of 15 MiB once the scanout is gone",
        gpu::resource_create_2d(2, format::B8G8R8X8_UNORM, 2048, 1920),
    )?;
    ok(&mut fe, "UNREF", gpu::resource_unref(2))?;
    peak_within(&fe, BUDGET, "at the end")?;
    normal_2d(&mut fe)
}

/// A flush whose copy the host cannot allocate (an address-space limit, set once the
/// backend runs) is answered with an error; the backend does not abort.
fn copy_past_address_space(harness: &Harness) -> CaseResult {
    // A large budget, so that only the host refuses.
    // Sized to run inside the lanes' 512 MiB guests too.
    let mut fe = spawn(harness, &["--max-resource-memory", "8G"], 128 << 20)?;
    guest_blob(&mut fe, 1, 64 * MIB, MIB)?;
    ok(
        &mut fe,
        "SET_SCANOUT_BLOB 4096x4096 (64 MiB a copy, within the budget)",
        scanout_blob(1, 4096, 4096),
    )?;
    // From now on the backend may grow its address space by 16 MiB at most.
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    let limit = memory(&fe)?.address_space + 16 * MIB;
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("bad pid")?;
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .map_err(|e| format!("prlimit(RLIMIT_AS) on the backend: {e}"))?;
    err(
        &mut fe,
        "RESOURCE_FLUSH needing a 64 MiB copy past the address-space limit",
        gpu::resource_flush(1, Rect::sized(4096, 4096)),
        ty::ERR_UNSPEC,
    )?;
    ensure(&fe, fe.backend_log().contains("cannot allocate"), || {
        "the refused flush was not logged with its cause".into()
    })?;
    // The device keeps serving, and a scanout whose copy fits works.
    ok(
        &mut fe,
        "SET_SCANOUT_BLOB 1024x1024",
        scanout_blob(1, 1024, 1024),
    )?;
    ok(
        &mut fe,
        "RESOURCE_FLUSH 1024x1024",
        gpu::resource_flush(1, Rect::sized(1024, 1024)),
    )?;
    normal_2d(&mut fe)?;
    let alive = fe.backend_alive();
    ensure(&fe, alive, || "the backend died".into())
}

// ---------------------------------------------------------------------------------------
// Finding 3: scanout sizes on the display channel.

fn display_sizes(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--max-resource-memory", "64M"], 128 << 20)?;
    // A blob large enough for one row of 16385 pixels, and for one column of 16385: only
    // the side limit can refuse below.
    let len = 16385 * 4;
    guest_blob(&mut fe, 1, len, 4096)?;
    // The review's message: a 1073741823x1 image.
    let huge = gpu::set_scanout_blob(
        0,
        1,
        Rect::sized(1_073_741_823, 1),
        BlobLayout {
            width: 1_073_741_823,
            height: 1,
            format: format::B8G8R8X8_UNORM,
            stride: 4_294_967_292,
            offset: 0,
        },
    );
    err(
        &mut fe,
        "SET_SCANOUT_BLOB 1073741823x1",
        huge,
        ty::ERR_INVALID_PARAMETER,
    )?;
    for (w, h, stride) in [
        (MAX_SCANOUT_SIDE + 1, 1, (MAX_SCANOUT_SIDE + 1) * 4),
        (1, MAX_SCANOUT_SIDE + 1, 4),
    ] {
        err(
            &mut fe,
            &format!("SET_SCANOUT_BLOB {w}x{h} (one past the side limit)"),
            gpu::set_scanout_blob(
                0,
                1,
                Rect::sized(w, h),
                BlobLayout {
                    width: w,
                    height: h,
                    format: format::B8G8R8X8_UNORM,
                    stride,
                    offset: 0,
                },
            ),
            ty::ERR_INVALID_PARAMETER,
        )?;
    }
    for (w, h, stride) in [
        (MAX_SCANOUT_SIDE, 1, MAX_SCANOUT_SIDE * 4),
        (1, MAX_SCANOUT_SIDE, 4),
    ] {
        ok(
            &mut fe,
            &format!("SET_SCANOUT_BLOB {w}x{h} (exactly the side limit)"),
            gpu::set_scanout_blob(
                0,
                1,
                Rect::sized(w, h),
                BlobLayout {
                    width: w,
                    height: h,
                    format: format::B8G8R8X8_UNORM,
                    stride,
                    offset: 0,
                },
            ),
        )?;
        ok(
            &mut fe,
            "RESOURCE_FLUSH",
            gpu::resource_flush(1, Rect::sized(w, h)),
        )?;
        let display = fe.display().ok_or("no display channel")?;
        let shown = display.wait_for(super::DISPLAY_WAIT, |st| {
            st.scanouts
                .get(&0)
                .is_some_and(|s| s.width == w && s.height == h && s.updates > 0)
        });
        ensure(&fe, shown, || {
            format!("the display never showed the {w}x{h} scanout")
        })?;
    }
    // The 2D path: a 16385x1 resource (64 KiB) cannot be shown whole, 16384 of it can.
    ok(
        &mut fe,
        "CREATE_2D 16385x1",
        gpu::resource_create_2d(2, format::B8G8R8X8_UNORM, MAX_SCANOUT_SIDE + 1, 1),
    )?;
    err(
        &mut fe,
        "SET_SCANOUT of 16385x1",
        gpu::set_scanout(0, 2, Rect::sized(MAX_SCANOUT_SIDE + 1, 1)),
        ty::ERR_INVALID_PARAMETER,
    )?;
    ok(
        &mut fe,
        "SET_SCANOUT of 16384x1",
        gpu::set_scanout(0, 2, Rect::sized(MAX_SCANOUT_SIDE, 1)),
    )?;
    let display = fe.display().ok_or("no display channel")?;
    let st = display.state();
    let largest = st
        .scanouts
        .values()
        .map(|s| s.width.max(s.height))
        .max()
        .unwrap_or(0);
    let violations = st.violations.clone();
    drop(st);
    ensure(&fe, violations.is_empty(), || {
        format!("display channel violations: {violations:?}")
    })?;
    ensure(&fe, largest <= MAX_SCANOUT_SIDE, || {
        format!("the display was sent a scanout side of {largest}")
    })?;
    normal_2d(&mut fe)
}

// ---------------------------------------------------------------------------------------
// Finding 4: log volume.

fn log_lines(fe: &Frontend) -> usize {
    fe.backend_log().lines().count()
}

fn log_flood(harness: &Harness) -> CaseResult {
    // The default level (no -v, RUST_LOG=info as when unset), and a policy that refuses to
    // map what the allocator makes: each GET_IMAGE_REQUIREMENTS then has something to say.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let policy = dir.path().join("refuse.toml");
    let text: String = ["memfd", "udmabuf"]
        .iter()
        .map(|n| {
            format!(
                "[[exporter]]\nname = \"{n}\"\ncache = \"cached\"\nneeds_sync = \"yes\"\nstable = true\n"
            )
        })
        .collect();
    std::fs::write(&policy, text).map_err(|e| e.to_string())?;
    let policy = policy.to_string_lossy().to_string();
    let spec = harness.spec.clone().with_env("RUST_LOG", "info");
    let quiet = Harness::new(spec);
    let mut fe = quiet
        .spawn_with(&["--policy-config", &policy])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let _cd = CrossDomain::init(&mut fe)?;
    let before = log_lines(&fe);
    let started = std::time::Instant::now();
    // One SUBMIT_3D of 16 KiB: 682 GET_IMAGE_REQUIREMENTS of 1x1 (each answered, each not
    // mappable under this policy), thirteen times the burst. (The review's 1 MiB one makes
    // each of 43,690 requests allocate a buffer: minutes inside the lanes' TCG guests, where
    // the allocator is udmabuf, past the frontend's wait for an answer.)
    let one = xd::get_image_requirements(1, 1, xd::DRM_FORMAT_ARGB8888, 0);
    let n = ((16 << 10) - 64) / one.len();
    let stream: Vec<u8> = one.iter().copied().cycle().take(n * one.len()).collect();
    ok(
        &mut fe,
        "SUBMIT_3D of 16 KiB of GET_IMAGE_REQUIREMENTS",
        gpu::submit_3d(CTX_ID, &stream),
    )?;
    // And 20,000 refused commands.
    for i in 0..20_000u32 {
        let r = ctrl(
            &mut fe,
            "UNREF of an unknown resource",
            gpu::resource_unref(0x8000_0000 | i),
        )?;
        if r.ty != ty::ERR_INVALID_RESOURCE_ID {
            return Err(format!("UNREF of unknown #{i} answered {}", r.name()));
        }
    }
    still_serving(&mut fe)?;
    let logged = log_lines(&fe) - before;
    // The limit is per 10 s window: a flood lasting d seconds touches at most d/10 + 2 of
    // them (usually one: the flood takes a few seconds).
    let windows = started.elapsed().as_secs() as usize / 10 + 2;
    let limit = windows * (LOG_BURST + 1);
    ensure(&fe, logged <= limit, || {
        format!(
            "a flood of {n} refusals-to-map and 20,000 bad commands logged {logged} lines at \
             the default level in {:?} (limit {} per 10 s window)",
            started.elapsed(),
            LOG_BURST + 1
        )
    })?;
    ensure(&fe, logged >= LOG_BURST, || {
        format!("the flood logged only {logged} lines: the limiter swallows the burst")
    })?;
    normal_2d(&mut fe)
}

// ---------------------------------------------------------------------------------------
// Kernel-side resources: fds, attachments, udmabuf exports.

fn fd_exhaustion(harness: &Harness) -> CaseResult {
    // An open-file limit leaving the guest 40 fds after the reserve.
    const GUEST_FDS: u64 = 40;
    let spec = harness
        .spec
        .clone()
        .with_limit(crate::limits::Resource::Nofile, FD_RESERVE + GUEST_FDS);
    let limited = Harness::new(spec);
    let mut fe = limited
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let base = fe.backend_stats().map_err(|e| e.to_string())?;
    // HOST3D blobs (one fd each) until the fd budget refuses.
    let mut created = Vec::new();
    for id in 200..200 + 2 * GUEST_FDS as u32 {
        match cd.create(&mut fe, id, 64, 64, gpu::BLOB_FLAG_MAPPABLE) {
            Ok(_) => created.push(id),
            Err(e) if e.contains("ERR_OUT_OF_MEMORY") => break,
            Err(e) => return Err(e),
        }
    }
    // The pending buffer of each requirement becomes the blob, so each blob costs one fd.
    // Where /dev/udmabuf exists, the context's query ring (a GUEST blob) is exported as a
    // dma-buf when created and holds one of the guest's fds already.
    let ring_fds = u64::from(std::path::Path::new("/dev/udmabuf").exists());
    ensure(&fe, created.len() as u64 == GUEST_FDS - ring_fds, || {
        format!(
            "{} HOST3D blobs before ERR_OUT_OF_MEMORY with {GUEST_FDS} fds for the guest \
             ({ring_fds} held by the query ring)",
            created.len()
        )
    })?;
    // Every blob mapped: each SHMEM_MAP makes the frontend send a memory region with an fd,
    // which the backend must still be able to receive.
    for (i, &id) in created.iter().enumerate() {
        super::blob::map(&mut fe, id, i as u64 * 16384, 16384)?;
    }
    fe.wait_memtable_synced().map_err(|e| e.to_string())?;
    let errors = fe.memtable_errors();
    ensure(&fe, errors.is_empty(), || {
        format!("memory-table updates failed with the guest's fds used up: {errors:?}")
    })?;
    let full = fe.backend_stats().map_err(|e| e.to_string())?;
    ensure(&fe, full.fds >= base.fds + 2 * created.len(), || {
        format!(
            "{} -> {} fds: the buffers and their memory regions are not all held",
            base.fds, full.fds
        )
    })?;
    // Unmapped and freed, the same number fits again.
    for &id in &created {
        ok(&mut fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, id))?;
        ok(&mut fe, "UNREF", gpu::resource_unref(id))?;
    }
    for id in 500..505 {
        cd.create(&mut fe, id, 64, 64, 0)?;
        ok(&mut fe, "UNREF", gpu::resource_unref(id))?;
    }
    normal_2d(&mut fe)?;
    super::blob::no_leaks(&mut fe, &base)
}

fn attachments(harness: &Harness) -> CaseResult {
    // 16 attachments per resource: 64 resources allow 1024.
    let mut fe = spawn(harness, &["--max-resources", "64"], 128 << 20)?;
    for ctx in 1..=17u32 {
        ok(
            &mut fe,
            "CTX_CREATE",
            gpu::ctx_create(ctx, gpu::CAPSET_CROSS_DOMAIN, "attach"),
        )?;
    }
    for id in 1..=64u32 {
        ok(
            &mut fe,
            "CREATE_2D",
            gpu::resource_create_2d(id, format::B8G8R8X8_UNORM, 1, 1),
        )?;
    }
    for ctx in 1..=16u32 {
        for id in 1..=64u32 {
            ok(
                &mut fe,
                "CTX_ATTACH_RESOURCE",
                gpu::ctx_attach_resource(ctx, id),
            )?;
        }
    }
    // Attaching again what is attached costs nothing; one more pair is past the cap.
    ok(
        &mut fe,
        "CTX_ATTACH_RESOURCE of an attached pair",
        gpu::ctx_attach_resource(3, 7),
    )?;
    err(
        &mut fe,
        "CTX_ATTACH_RESOURCE past 1024 attachments",
        gpu::ctx_attach_resource(17, 1),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    // A detach, an unref (which detaches from all 16) and a destroyed context give back.
    ok(
        &mut fe,
        "CTX_DETACH_RESOURCE",
        gpu::ctx_detach_resource(1, 1),
    )?;
    ok(
        &mut fe,
        "CTX_ATTACH_RESOURCE after a detach",
        gpu::ctx_attach_resource(17, 1),
    )?;
    err(
        &mut fe,
        "CTX_ATTACH_RESOURCE at the cap again",
        gpu::ctx_attach_resource(17, 2),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    ok(&mut fe, "UNREF", gpu::resource_unref(64))?;
    ok(&mut fe, "CTX_DESTROY", gpu::ctx_destroy(16))?;
    for id in 2..=63u32 {
        ok(
            &mut fe,
            "CTX_ATTACH_RESOURCE after freeing",
            gpu::ctx_attach_resource(17, id),
        )?;
    }
    normal_2d(&mut fe)
}

fn udmabuf_exports(harness: &Harness) -> CaseResult {
    // Each GUEST blob over the same 16 MiB of guest pages is exported as its own udmabuf:
    // 4096 pages of kernel page arrays (32 bytes a page) plus 4 KiB, about 132 KiB, and an
    // fd. With a 4 MiB budget about 30 exports fit; later blobs work without one.
    const BUDGET: u64 = 4 * MIB;
    const EXPORT_COST: u64 = 4096 * 32 + 4096;
    let mut fe = spawn(harness, &["--max-resource-memory", "4M"], 128 << 20)?;
    let base_addr = fe.ram().alloc(16 * MIB, 4096).map_err(|e| e.to_string())?;
    let entry = [MemEntry {
        addr: base_addr,
        length: (16 * MIB) as u32,
    }];
    let before = fe.backend_stats().map_err(|e| e.to_string())?;
    for id in 1..=60u32 {
        ok(
            &mut fe,
            "CREATE_BLOB GUEST over the shared 16 MiB",
            gpu::resource_create_blob(0, id, gpu::BLOB_MEM_GUEST, 0, 0, 16 * MIB, &entry),
        )?;
    }
    let full = fe.backend_stats().map_err(|e| e.to_string())?;
    let exports = full.fds.saturating_sub(before.fds) as u64;
    ensure(&fe, (1..=BUDGET / EXPORT_COST).contains(&exports), || {
        format!(
            "{exports} new fds for 60 exported GUEST blobs with a {} MiB budget (at most {} \
             exports fit)",
            BUDGET >> 20,
            BUDGET / EXPORT_COST
        )
    })?;
    for id in 1..=60u32 {
        ok(&mut fe, "UNREF", gpu::resource_unref(id))?;
    }
    peak_within(&fe, BUDGET, "after 60 exports")?;
    normal_2d(&mut fe)?;
    super::blob::no_leaks(&mut fe, &before)
}

fn reset_while_mapped(harness: &Harness) -> CaseResult {
    // A budget of 1 MiB: count what fits, use it all (mapped blobs, a shown scanout, a
    // context with pending buffers), reset the device, and the same count fits again.
    let mut fe = spawn(harness, &["--max-resource-memory", "1M"], 128 << 20)?;
    let fill = |fe: &mut Frontend| -> Result<(CrossDomain, usize), String> {
        let mut cd = CrossDomain::init(fe)?;
        let mut n = 0usize;
        for id in 10..200u32 {
            match cd.create(fe, id, 64, 64, gpu::BLOB_FLAG_MAPPABLE) {
                Ok(_) => n += 1,
                Err(e) if e.contains("ERR_OUT_OF_MEMORY") => break,
                Err(e) => return Err(e),
            }
        }
        Ok((cd, n))
    };
    let (_cd, first) = fill(&mut fe)?;
    ensure(&fe, first > 4, || {
        format!("only {first} blobs fit in 1 MiB")
    })?;
    for i in 0..4u64 {
        super::blob::map(&mut fe, 10 + i as u32, i * 16384, 16384)?;
    }
    // Room for a scanout of part of a mapped blob.
    ok(&mut fe, "UNREF", gpu::resource_unref(9 + first as u32))?;
    ok(
        &mut fe,
        "SET_SCANOUT_BLOB of a mapped blob",
        gpu::set_scanout_blob(
            0,
            10,
            Rect::sized(16, 16),
            BlobLayout {
                width: 64,
                height: 64,
                format: format::B8G8R8X8_UNORM,
                stride: 256,
                offset: 0,
            },
        ),
    )?;
    fe.reset().map_err(|e| e.to_string())?;
    let (_cd, again) = fill(&mut fe)?;
    ensure(&fe, again == first, || {
        format!("{first} blobs fit before the reset, {again} after: charges outlived it")
    })?;
    still_serving(&mut fe)
}

// ---------------------------------------------------------------------------------------
// The harness itself.

fn dead_backend(harness: &Harness) -> CaseResult {
    let mut fe = harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))?;
    still_serving(&mut fe)?;
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("bad pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .map_err(|e| format!("kill: {e}"))?;
    let started = std::time::Instant::now();
    match fe.ctrl(gpu::get_display_info()) {
        Err(crate::Error::BackendExited(_) | crate::Error::BackendGone(_)) => {}
        other => {
            return Err(format!(
                "a command to a killed backend ended with {other:?} after {:?}, not with \
                 the backend's exit",
                started.elapsed()
            ))
        }
    }
    // Not a timing assertion: the hang guard (20 s) is what the wait must not fall into.
    ensure(&fe, started.elapsed() < Duration::from_secs(10), || {
        "the dead backend was noticed only by the hang guard".into()
    })
}
