//! Cost of a repeated (cached) query. Target: < 1 microsecond per query.
//!
//! `cargo bench -p dmabuf-info --bench cached_query` prints nanoseconds per call for the
//! cached paths on a memfd (the host has no dma-buf exporter; the cached path is the same).

use std::hint::black_box;
use std::os::fd::AsFd;
use std::time::Instant;

use dmabuf_info::uapi::DmaBufInfoArg;
use dmabuf_info::{Config, Inspector, KernelAbi, Platform};

fn main() {
    let fd = rustix::fs::memfd_create("bench", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&fd, 1 << 20).expect("ftruncate");
    let ins = Inspector::new(Config {
        platform: Some(Platform::X86Intel),
        ..Config::default()
    });
    ins.inspect(fd.as_fd(), None).expect("first inspect");
    const N: u32 = 200_000;

    let measure = |name: &str, f: &dyn Fn()| {
        for _ in 0..1000 {
            f();
        }
        let t = Instant::now();
        for _ in 0..N {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
        println!(
            "{name:<34} {ns:8.1} ns/call {}",
            if ns < 1000.0 {
                "(< 1 us)"
            } else {
                "(OVER 1 us)"
            }
        );
    };
    measure("fstat alone (floor)", &|| {
        black_box(rustix::fs::fstat(fd.as_fd()).unwrap());
    });
    measure("Inspector::decide_fd (cached)", &|| {
        black_box(ins.decide_fd(fd.as_fd(), None).unwrap());
    });
    measure("Inspector::query_uapi (cached)", &|| {
        let mut arg = DmaBufInfoArg {
            param: 1,
            ..Default::default()
        };
        black_box(
            ins.query_uapi(fd.as_fd(), &mut arg, KernelAbi::V2)
                .unwrap_err(),
        );
    });
    measure("Inspector::inspect (cached, clones)", &|| {
        black_box(ins.inspect(fd.as_fd(), None).unwrap());
    });
}
