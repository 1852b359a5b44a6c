//! Micro-benchmarks of a vhost-user-gpu backend through the test frontend (not a test:
//! timings are printed, never asserted).
//!
//! ```text
//! cargo run --release -p vug-conformance --example bench -- PROGRAM [ours|qemu|vhost-device-gpu] [ARGS...]
//! ```
//!
//! Measures: control-queue round trip at queue depth 1, pipelined throughput at depth 32,
//! full-HD TRANSFER_TO_HOST_2D + RESOURCE_FLUSH frames (including the display message), and
//! for backends with a host-visible region the MAP_BLOB + UNMAP_BLOB cycle (two SHMEM
//! round trips each).

use std::time::{Duration, Instant};

use vug_conformance::cross_domain;
use vug_conformance::frontend::{FrontendOptions, CONTROL_QUEUE};
use vug_conformance::gpu::{self, format, ty, MemEntry, Rect};
use vug_conformance::{BackendSpec, Frontend, Peer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn report(what: &str, n: u32, elapsed: Duration) {
    let per = elapsed / n.max(1);
    println!(
        "{what:<44} {n:>6} x  {per:>10.2?} each  {:>10.0} /s",
        f64::from(n) / elapsed.as_secs_f64()
    );
}

fn ok(resp: gpu::Resp, t: u32) -> Res<()> {
    resp.expect(t)?;
    Ok(())
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let program = args
        .next()
        .ok_or("usage: bench PROGRAM [ours|qemu|vhost-device-gpu] [ARGS...]")?;
    let peer = args
        .next()
        .and_then(|p| Peer::parse(&p))
        .unwrap_or(Peer::Ours);
    let mut extra: Vec<String> = args.collect();
    if peer == Peer::Ours && !extra.iter().any(|a| a == "--allocator") {
        extra.extend(["--allocator".into(), "memfd".into()]);
    }
    let spec = BackendSpec {
        program: program.into(),
        args: extra,
        peer,
    };
    let options = FrontendOptions {
        ram_size: 256 << 20,
        ..FrontendOptions::default()
    };
    let mut fe = Frontend::spawn_with(spec, options)?;
    println!("{}", fe.describe());

    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        ok(fe.ctrl(gpu::get_display_info())?, ty::OK_DISPLAY_INFO)?;
    }
    report("GET_DISPLAY_INFO round trip (depth 1)", n, t.elapsed());

    let depth = 32u32;
    let rounds = 50u32;
    let t = Instant::now();
    for round in 0..rounds {
        for i in 0..depth {
            let id = 1000 + round * depth + i;
            let cmd = gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, 64, 64).into_bytes();
            fe.send(CONTROL_QUEUE, &[&cmd], 64)?;
        }
        for _ in 0..depth {
            fe.wait(CONTROL_QUEUE)?;
        }
        for i in 0..depth {
            let cmd = gpu::resource_unref(1000 + round * depth + i).into_bytes();
            fe.send(CONTROL_QUEUE, &[&cmd], 64)?;
        }
        for _ in 0..depth {
            fe.wait(CONTROL_QUEUE)?;
        }
    }
    report(
        "CREATE_2D/UNREF pipelined (depth 32)",
        rounds * depth * 2,
        t.elapsed(),
    );

    let (w, h) = (1920u32, 1080u32);
    let len = (w * h * 4) as u64;
    let gpa = fe.ram().alloc(len, 4096)?;
    ok(
        fe.ctrl(gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, w, h))?,
        ty::OK_NODATA,
    )?;
    let entry = [MemEntry {
        addr: gpa,
        length: len as u32,
    }];
    ok(
        fe.ctrl(gpu::resource_attach_backing(1, &entry))?,
        ty::OK_NODATA,
    )?;
    ok(
        fe.ctrl(gpu::set_scanout(0, 1, Rect::sized(w, h)))?,
        ty::OK_NODATA,
    )?;
    let frames = 60;
    let t = Instant::now();
    for _ in 0..frames {
        ok(
            fe.ctrl(gpu::transfer_to_host_2d(1, Rect::sized(w, h), 0))?,
            ty::OK_NODATA,
        )?;
        ok(
            fe.ctrl(gpu::resource_flush(1, Rect::sized(w, h)))?,
            ty::OK_NODATA,
        )?;
    }
    report("1920x1080 TRANSFER_TO_HOST_2D + FLUSH", frames, t.elapsed());

    if fe.shmem().is_some()
        && fe.has_features(gpu::features::CONTEXT_INIT | gpu::features::RESOURCE_BLOB)
    {
        bench_map(&mut fe)?;
    } else {
        println!("MAP_BLOB + UNMAP_BLOB: skipped (no host-visible region or no blob contexts)");
    }
    Ok(())
}

fn bench_map(fe: &mut Frontend) -> Res<()> {
    ok(
        fe.ctrl(gpu::ctx_create(1, gpu::CAPSET_CROSS_DOMAIN, "bench"))?,
        ty::OK_NODATA,
    )?;
    let ring = fe.ram().alloc(4096, 4096)?;
    let entry = [MemEntry {
        addr: ring,
        length: 4096,
    }];
    ok(
        fe.ctrl(gpu::resource_create_blob(
            1,
            100,
            gpu::BLOB_MEM_GUEST,
            gpu::BLOB_FLAG_MAPPABLE,
            0,
            4096,
            &entry,
        ))?,
        ty::OK_NODATA,
    )?;
    ok(fe.ctrl(gpu::ctx_attach_resource(1, 100))?, ty::OK_NODATA)?;
    ok(
        fe.ctrl(gpu::submit_3d(
            1,
            &cross_domain::init(100, cross_domain::RING_NONE, 0),
        ))?,
        ty::OK_NODATA,
    )?;
    let query =
        cross_domain::get_image_requirements(1920, 1080, cross_domain::DRM_FORMAT_ARGB8888, 0);
    ok(
        fe.ctrl(gpu::submit_3d(1, &query).fence(1, Some(cross_domain::QUERY_RING)))?,
        ty::OK_NODATA,
    )?;
    let reqs = cross_domain::ImageRequirements::parse(&fe.ram().read_vec(ring, 64)?)?;
    let create = gpu::resource_create_blob(
        1,
        2,
        gpu::BLOB_MEM_HOST3D,
        gpu::BLOB_FLAG_MAPPABLE,
        u64::from(reqs.blob_id),
        reqs.size,
        &[],
    );
    ok(fe.ctrl(create)?, ty::OK_NODATA)?;
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        ok(fe.ctrl(gpu::resource_map_blob(1, 2, 0))?, ty::OK_MAP_INFO)?;
        ok(fe.ctrl(gpu::resource_unmap_blob(1, 2))?, ty::OK_NODATA)?;
    }
    report("MAP_BLOB + UNMAP_BLOB of an 8 MiB blob", n, t.elapsed());
    Ok(())
}
