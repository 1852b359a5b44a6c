//! (4) `dmabuf-info` inspect cost and (5) process memory.

use std::os::fd::AsFd;
use std::time::Instant;

use dmabuf_info::{Config, Inspector};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

use crate::Res;

/// Costs of one `Inspector::inspect`, in nanoseconds.
pub struct InspectCost {
    /// A fresh inspector (nothing cached): identify + sources + decision data.
    pub first_ns: f64,
    /// The same buffer again on the same inspector (cached): median of many.
    pub repeated_ns: f64,
    /// `decide_fd` on a cached buffer (what the backend calls on every MAP_BLOB).
    pub decide_ns: f64,
    /// What was inspected.
    pub buffer: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Inspects a 1 MiB buffer: `rounds` fresh inspectors (first), and `repeats` calls in batches
/// on one inspector (repeated). This host has no dma-buf exporter (no DRM, no udmabuf, no
/// heaps), so the buffer is a memfd, which dmabuf-info identifies and answers for itself.
pub fn inspect_cost(rounds: usize, repeats: usize) -> Res<InspectCost> {
    let memfd = memfd_create("vug-bench-inspect", MemfdFlags::CLOEXEC)?;
    ftruncate(&memfd, 1 << 20)?;
    let fd = memfd.as_fd();
    let mut first = Vec::with_capacity(rounds);
    let mut kind = String::new();
    for _ in 0..rounds {
        let inspector = Inspector::new(Config::default());
        let t = Instant::now();
        let info = inspector.inspect(fd, None)?;
        first.push(t.elapsed().as_nanos() as f64);
        kind = format!("{:?} ({})", info.kind, info.exporter);
    }
    let inspector = Inspector::new(Config::default());
    inspector.inspect(fd, None)?;
    let batch = 1000usize;
    let mut repeated = Vec::new();
    let mut decide = Vec::new();
    for _ in 0..(repeats / batch).max(1) {
        let t = Instant::now();
        for _ in 0..batch {
            std::hint::black_box(inspector.inspect(std::hint::black_box(fd), None)?);
        }
        repeated.push(t.elapsed().as_nanos() as f64 / batch as f64);
        let t = Instant::now();
        for _ in 0..batch {
            std::hint::black_box(inspector.decide_fd(std::hint::black_box(fd), None)?);
        }
        decide.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    Ok(InspectCost {
        first_ns: median(first),
        repeated_ns: median(repeated),
        decide_ns: median(decide),
        buffer: kind,
    })
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS without value")?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time of all threads of `pid` so far, in nanoseconds (`/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> Res<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between listing and reading.
        let Ok(s) = std::fs::read_to_string(path) else {
            continue;
        };
        total += s
            .split_whitespace()
            .next()
            .ok_or("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(total)
}

/// The 1-minute load average (other work on the machine disturbs the figures).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One line describing this machine (CPU, cores, memory, kernel).
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or("? GiB".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_string());
    let os = std::fs::read_to_string("/etc/debian_version")
        .map_or(String::new(), |s| format!(", Debian {}", s.trim()));
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {kernel}{os}")
}
