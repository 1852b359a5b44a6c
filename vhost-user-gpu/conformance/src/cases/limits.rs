//! Resource limits: a guest that allocates in a loop is stopped at the cap with
//! `ERR_OUT_OF_MEMORY` (never a host allocation failure), frees, and succeeds again; the
//! backend's resident memory stays bounded by the cap. Covers 2D resources (pixels),
//! HOST3D blobs (cross-domain image allocations), GUEST blobs and ATTACH_BACKING (the entry
//! lists are host memory too), the resource count and the context count.

use super::blob::CrossDomain;
use super::{ctrl, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::frontend::Frontend;
use crate::gpu::{self, features, format, ty, MemEntry};

pub(super) fn cases() -> Vec<Case> {
    let blob = Need::All(vec![
        Need::OurCommandLine,
        Need::Features(features::RESOURCE_BLOB | features::CONTEXT_INIT),
    ]);
    vec![
        Case {
            name: "limits::create_2d_loop_stops_at_memory_cap_rss_bounded",
            need: Need::OurCommandLine,
            run: create_2d_loop,
        },
        Case {
            name: "limits::resource_count_loop_stops_at_cap",
            need: Need::OurCommandLine,
            run: resource_count_loop,
        },
        Case {
            name: "limits::host3d_blob_loop_stops_at_memory_cap",
            need: blob.clone(),
            run: host3d_loop,
        },
        Case {
            name: "limits::entry_lists_are_charged",
            need: blob.clone(),
            run: entry_lists,
        },
        Case {
            name: "limits::context_count_is_capped",
            need: Need::All(vec![
                Need::OurCommandLine,
                Need::Features(features::VIRGL | features::CONTEXT_INIT),
            ]),
            run: context_loop,
        },
    ]
}

/// Resident memory of the backend in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(super) fn backend_rss(fe: &Frontend) -> Result<u64, String> {
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn spawn(harness: &Harness, extra: &[&str]) -> Result<Frontend, String> {
    harness
        .spawn_with(extra)
        .map_err(|e| format!("cannot start backend: {e}"))
}

/// Sends `make(i)` for i = first.. until it answers ERR_OUT_OF_MEMORY (at most `limit`
/// times); every other answer must be OK_NODATA. Returns how many succeeded.
fn until_oom(
    fe: &mut Frontend,
    what: &str,
    first: u32,
    limit: u32,
    mut make: impl FnMut(&mut Frontend, u32) -> Result<u32, String>,
) -> Result<u32, String> {
    for i in 0..limit {
        let t = make(fe, first + i)?;
        if t == ty::ERR_OUT_OF_MEMORY {
            return Ok(i);
        }
        ensure(fe, t == ty::OK_NODATA, || {
            format!("{what} #{i}: answered {}", gpu::ty::name(t))
        })?;
    }
    Err(crate::suite::with_log(
        fe,
        format!("{what}: {limit} allocations and still no ERR_OUT_OF_MEMORY"),
    ))
}

fn create_2d(fe: &mut Frontend, id: u32, side: u32) -> Result<u32, String> {
    Ok(ctrl(
        fe,
        "RESOURCE_CREATE_2D",
        gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, side, side),
    )?
    .ty)
}

fn create_2d_loop(harness: &Harness) -> CaseResult {
    const CAP: u64 = 64 << 20;
    let mut fe = spawn(harness, &["--max-resource-memory", "64M"])?;
    still_serving(&mut fe)?;
    let rss_before = backend_rss(&fe)?;
    // 512x512 BGRA = 1 MiB each: exactly 64 fit.
    let n = until_oom(&mut fe, "CREATE_2D 1 MiB", 1, 1000, |fe, id| {
        create_2d(fe, id, 512)
    })?;
    ensure(&fe, n == 64, || {
        format!("{n} resources of 1 MiB fit under a 64 MiB cap, expected 64")
    })?;
    let rss_full = backend_rss(&fe)?;
    ensure(&fe, rss_full <= rss_before + CAP + (16 << 20), || {
        format!(
            "backend RSS {} MiB -> {} MiB with a 64 MiB cap",
            rss_before >> 20,
            rss_full >> 20
        )
    })?;
    // The guest keeps trying: every try is refused, nothing grows.
    for id in 1000..1100 {
        let t = create_2d(&mut fe, id, 512)?;
        ensure(&fe, t == ty::ERR_OUT_OF_MEMORY, || {
            format!("CREATE_2D past the cap answered {}", gpu::ty::name(t))
        })?;
    }
    // Free two: two more fit, the third does not.
    for id in [3, 7] {
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    }
    let again = until_oom(&mut fe, "CREATE_2D after freeing", 2000, 10, |fe, id| {
        create_2d(fe, id, 512)
    })?;
    ensure(&fe, again == 2, || {
        format!("{again} fit after freeing 2 MiB, expected 2")
    })?;
    // Free everything: memory goes back to the host.
    for id in (1..=64)
        .filter(|id| *id != 3 && *id != 7)
        .chain([2000, 2001])
    {
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    }
    let rss_after = backend_rss(&fe)?;
    ensure(&fe, rss_after <= rss_before + (8 << 20), || {
        format!(
            "backend RSS {} MiB before, {} MiB after freeing everything",
            rss_before >> 20,
            rss_after >> 20
        )
    })?;
    still_serving(&mut fe)
}

fn resource_count_loop(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--max-resources", "100"])?;
    let n = until_oom(&mut fe, "CREATE_2D 4x4", 1, 1000, |fe, id| {
        create_2d(fe, id, 4)
    })?;
    ensure(&fe, n == 100, || {
        format!("{n} resources under --max-resources 100")
    })?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(50), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "CREATE_2D after an UNREF",
        gpu::resource_create_2d(500, format::B8G8R8A8_UNORM, 4, 4),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CREATE_2D at the cap again",
        gpu::resource_create_2d(501, format::B8G8R8A8_UNORM, 4, 4),
        ty::ERR_OUT_OF_MEMORY,
    )?;
    still_serving(&mut fe)
}

fn host3d_loop(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &["--max-resource-memory", "4M"])?;
    let mut cd = CrossDomain::init(&mut fe)?;
    let rss_before = backend_rss(&fe)?;
    // 256x256 ARGB = 256 KiB per image: the cap (minus the query ring's entry list) stops
    // the loop at 15.
    let mut created = Vec::new();
    let mut stopped = None;
    for id in 10..200u32 {
        match cd.create(&mut fe, id, 256, 256, gpu::BLOB_FLAG_MAPPABLE) {
            Ok(_) => created.push(id),
            Err(e) if e.contains("ERR_OUT_OF_MEMORY") => {
                stopped = Some(id);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    ensure(
        &fe,
        stopped.is_some() && (14..=16).contains(&created.len()),
        || {
            format!(
                "{} HOST3D blobs of 256 KiB under a 4 MiB cap (stopped: {stopped:?})",
                created.len()
            )
        },
    )?;
    let rss_full = backend_rss(&fe)?;
    ensure(&fe, rss_full <= rss_before + (4 << 20) + (16 << 20), || {
        format!(
            "backend RSS {} MiB -> {} MiB with a 4 MiB cap",
            rss_before >> 20,
            rss_full >> 20
        )
    })?;
    // Free one: one more fits.
    send_expecting(
        &mut fe,
        "UNREF",
        gpu::resource_unref(created[0]),
        ty::OK_NODATA,
    )?;
    cd.create(&mut fe, 500, 256, 256, gpu::BLOB_FLAG_MAPPABLE)
        .map_err(|e| format!("HOST3D blob after freeing one: {e}"))?;
    still_serving(&mut fe)
}

/// `n` entries of 16 bytes each, contiguous, in fresh guest memory.
fn entries(fe: &Frontend, n: u32) -> Result<Vec<MemEntry>, String> {
    let base = fe
        .ram()
        .alloc(u64::from(n) * 16, 4096)
        .map_err(|e| e.to_string())?;
    Ok((0..n)
        .map(|i| MemEntry {
            addr: base + u64::from(i) * 16,
            length: 16,
        })
        .collect())
}

fn entry_lists(harness: &Harness) -> CaseResult {
    // 4096 entries cost the backend about 192 KiB of host memory each time (48 bytes per
    // entry); a 1 MiB cap stops a guest that creates such blobs in a loop after 5.
    let mut fe = spawn(harness, &["--max-resource-memory", "1M"])?;
    let list = entries(&fe, 4096)?;
    let size = 4096 * 16;
    let n = until_oom(&mut fe, "GUEST blob with 4096 entries", 1, 100, |fe, id| {
        Ok(ctrl(
            fe,
            "CREATE_BLOB GUEST",
            gpu::resource_create_blob(0, id, gpu::BLOB_MEM_GUEST, 0, 0, size, &list),
        )?
        .ty)
    })?;
    ensure(&fe, n == 5, || {
        format!("{n} GUEST blobs with 4096 entries under a 1 MiB cap, expected 5")
    })?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(2), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "CREATE_BLOB GUEST after freeing one",
        gpu::resource_create_blob(0, 100, gpu::BLOB_MEM_GUEST, 0, 0, size, &list),
        ty::OK_NODATA,
    )?;
    // ATTACH_BACKING is charged the same way, and DETACH_BACKING gives it back.
    for id in 1..=5 {
        if id != 2 {
            send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
        }
    }
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(100), ty::OK_NODATA)?;
    for id in 200..206 {
        send_expecting(
            &mut fe,
            "CREATE_2D 1x1",
            gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, 1, 1),
            ty::OK_NODATA,
        )?;
    }
    let n = until_oom(&mut fe, "ATTACH_BACKING 4096 entries", 200, 6, |fe, id| {
        Ok(ctrl(
            fe,
            "ATTACH_BACKING",
            gpu::resource_attach_backing(id, &list),
        )?
        .ty)
    })?;
    ensure(&fe, n == 5, || {
        format!("{n} backings of 4096 entries under a 1 MiB cap, expected 5")
    })?;
    send_expecting(
        &mut fe,
        "DETACH_BACKING",
        gpu::resource_detach_backing(200),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "ATTACH_BACKING after a detach",
        gpu::resource_attach_backing(205, &list),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

fn context_loop(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, &[])?;
    let n = until_oom(&mut fe, "CTX_CREATE", 1, 5000, |fe, id| {
        Ok(ctrl(
            fe,
            "CTX_CREATE",
            gpu::ctx_create(id, gpu::CAPSET_CROSS_DOMAIN, "limits"),
        )?
        .ty)
    })?;
    ensure(&fe, n == 1024, || {
        format!("{n} contexts, expected the cap of 1024")
    })?;
    send_expecting(&mut fe, "CTX_DESTROY", gpu::ctx_destroy(17), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "CTX_CREATE after a destroy",
        gpu::ctx_create(17, gpu::CAPSET_CROSS_DOMAIN, "again"),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}
