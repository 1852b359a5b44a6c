//! `vk-hostmem`: Vulkan HOST_VISIBLE memory end to end, from inside a guest.
//!
//! ```text
//! vk-hostmem [--device NAME] [--size BYTES] [--expect-map-failure] [--bench]
//! ```
//!
//! Opens the Vulkan device whose name contains NAME (default `Venus`: Mesa's venus
//! driver, whose HOST_VISIBLE allocations are HOST3D blobs mapped through virtio-gpu's
//! host-visible region), allocates two HOST_VISIBLE buffers, writes a pattern through the
//! first mapping, has the GPU copy it into the second, and checks every byte through the
//! second mapping. Prints one line per case and `N passed, N failed, N skipped`.
//!
//! `--expect-map-failure`: the host refuses the mapping (a policy that forbids it): the
//! first `vkMapMemory` must fail with an error, cleanly, and the device must keep working
//! for memory that needs no mapping.
//!
//! `--bench`: also measures write bandwidth through the mapping against the same writes to
//! ordinary memory (`bench:` lines, MB/s and their ratio).

mod vulkan;

use std::process::ExitCode;
use std::time::Instant;

use vulkan::Gpu;

struct Options {
    device: String,
    size: u64,
    expect_map_failure: bool,
    bench: bool,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        device: "Venus".into(),
        size: 4 << 20,
        expect_map_failure: false,
        bench: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => o.device = args.next().ok_or("--device needs a NAME")?,
            "--size" => {
                o.size = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n: &u64| n > 0 && n <= 1 << 30)
                    .ok_or("--size needs a number of bytes (1..=1 GiB)")?
            }
            "--expect-map-failure" => o.expect_map_failure = true,
            "--bench" => o.bench = true,
            "-h" | "--help" => {
                println!("usage: vk-hostmem [--device NAME] [--size BYTES] [--expect-map-failure] [--bench]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// Counts cases and prints their lines.
#[derive(Default)]
struct Report {
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Report {
    fn case(&mut self, name: &str, result: Result<String, String>) -> bool {
        match result {
            Ok(detail) if detail.is_empty() => {
                println!("ok {name}");
                self.passed += 1;
                true
            }
            Ok(detail) => {
                println!("ok {name} ({detail})");
                self.passed += 1;
                true
            }
            Err(why) => {
                println!("FAILED {name}: {why}");
                self.failed += 1;
                false
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        println!("skipped {name}: {why}");
        self.skipped += 1;
    }
}

/// The byte at `i` of the pattern: position-dependent, so a shifted, truncated or stale
/// copy does not match.
fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ (i >> 12) as u8
}

fn first_mismatch(bytes: &[u8]) -> Option<usize> {
    bytes.iter().enumerate().position(|(i, &b)| b != pattern(i))
}

fn run(o: &Options, report: &mut Report) {
    let gpu = match Gpu::open(&o.device) {
        Ok(g) => g,
        Err(e) => {
            report.case(&format!("a Vulkan device named *{}*", o.device), Err(e));
            return;
        }
    };
    report.case(
        &format!("a Vulkan device named *{}*", o.device),
        Ok(gpu.name().to_string()),
    );
    let names = [
        "write a pattern through a HOST_VISIBLE mapping",
        "GPU copy into a second HOST_VISIBLE buffer",
        "every byte of the copy, read through its mapping",
    ];
    let mut src = match gpu.host_visible_buffer(o.size) {
        Ok(b) if o.expect_map_failure => {
            report.case(
                "vkMapMemory is refused",
                Err(format!(
                    "mapped {} bytes of memory type {:?}",
                    o.size,
                    b.memory_type()
                )),
            );
            return;
        }
        Ok(b) => b,
        Err(e) if o.expect_map_failure && e.call == "vkMapMemory" => {
            report.case("vkMapMemory is refused", Ok(format!("{:?}", e.result)));
            report.case(
                "the device still serves: a fenced queue submission completes",
                gpu.submit_empty()
                    .map(|()| String::new())
                    .map_err(|e| e.to_string()),
            );
            return;
        }
        Err(e) => {
            report.case(names[0], Err(e.to_string()));
            for n in &names[1..] {
                report.skip(n, "no source buffer");
            }
            return;
        }
    };
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = pattern(i);
    }
    let written =
        src.flush()
            .map_err(|e| e.to_string())
            .and_then(|()| match first_mismatch(src.bytes()) {
                None => Ok(format!("{} bytes, {:?}", o.size, src.memory_type())),
                Some(i) => Err(format!("byte {i} reads back wrong right after the write")),
            });
    report.case(names[0], written);
    let dst = match gpu.host_visible_buffer(o.size) {
        Ok(b) => b,
        Err(e) => {
            report.case(names[1], Err(e.to_string()));
            report.skip(names[2], "no destination buffer");
            return;
        }
    };
    let copied = gpu
        .copy(&src, &dst)
        .map(|()| String::new())
        .map_err(|e| e.to_string());
    if !report.case(names[1], copied) {
        report.skip(names[2], "the copy failed");
        return;
    }
    let checked = dst.invalidate().map_err(|e| e.to_string()).and_then(|()| {
        match first_mismatch(dst.bytes()) {
            None => Ok(format!("{} bytes", o.size)),
            Some(i) => Err(format!(
                "byte {i} is {:#04x}, want {:#04x}",
                dst.bytes()[i],
                pattern(i)
            )),
        }
    });
    report.case(names[2], checked);
    if o.bench {
        bench(&mut src, o.size as usize);
    }
}

/// Write bandwidth through the mapping against ordinary memory, same writes: the best of
/// five interleaved rounds each (the machine's load moves single rounds a lot).
fn bench(mapped: &mut vulkan::MappedBuffer<'_>, size: usize) {
    const PASSES: u32 = 8;
    const ROUNDS: usize = 5;
    let source: Vec<u8> = (0..size).map(pattern).collect();
    let mut ordinary = vec![0u8; size];
    let measure = |dst: &mut [u8]| {
        let start = Instant::now();
        for _ in 0..PASSES {
            dst.copy_from_slice(&source);
            std::hint::black_box(&mut *dst);
        }
        (size as f64 * f64::from(PASSES)) / start.elapsed().as_secs_f64() / 1e6
    };
    // Warm-up: fault everything in.
    mapped.bytes_mut().copy_from_slice(&source);
    ordinary.copy_from_slice(&source);
    let (mut mapped_rate, mut ordinary_rate) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        mapped_rate = mapped_rate.max(measure(mapped.bytes_mut()));
        ordinary_rate = ordinary_rate.max(measure(&mut ordinary));
    }
    println!(
        "bench: write to mapped HOST_VISIBLE memory: {mapped_rate:.1} MB/s \
         (best of {ROUNDS} rounds of {PASSES} x {size} bytes)"
    );
    println!("bench: write to ordinary memory: {ordinary_rate:.1} MB/s");
    println!(
        "bench: ratio mapped/ordinary: {:.3}",
        mapped_rate / ordinary_rate
    );
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vk-hostmem: {e}");
            return ExitCode::from(2);
        }
    };
    let mut report = Report::default();
    run(&options, &mut report);
    println!(
        "{} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    );
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_tells_shifted_and_truncated_copies_apart() {
        let bytes: Vec<u8> = (0..1 << 16).map(pattern).collect();
        assert_eq!(first_mismatch(&bytes), None);
        let shifted: Vec<u8> = (1..(1 << 16) + 1).map(pattern).collect();
        assert!(first_mismatch(&shifted).is_some_and(|i| i < 8));
        // Pages that repeat the first page are caught on the second page.
        let mut repeated = bytes.clone();
        let (first, rest) = repeated.split_at_mut(4096);
        rest[..4096].copy_from_slice(first);
        assert!(first_mismatch(&repeated).is_some_and(|i| (4096..8192).contains(&i)));
    }
}
