//! `vm-lanes`: boots Debian 6.12 guests under QEMU (TCG) and runs the in-guest
//! suites, one lane at a time.
//!
//! ```text
//! cargo run --release -p guest-tests --bin vm-lanes -- [--lane NAME]... [--timeout SECS]
//! ```
//!
//! Lanes: `kernel`, `blob`, `qemu10`, `wayland`, `render` (all by default). Prints one line
//! per lane,
//! `lane NAME: N passed, N failed, N skipped`, then the total. Exits non-zero when
//! any case failed or a lane could not run. Everything fetched is cached under
//! `~/.cache/dmabuf-virtio-gpu/`; per-run logs go to `target/vm-lanes/LANE/`.

mod binaries;
mod fetch;
mod initramfs;
mod lanes;
mod lifecycle;
mod qmp;
mod render;
mod render_bench;
mod rootfs;
mod vm;
mod wayland;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use guest_tests::report::Tally;

/// Why the runner or a lane could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Preparing a piece (download, install, build) failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of what it printed on stderr.
        stderr: String,
    },
    /// A lane could not run to the end.
    #[error("{0}")]
    Lane(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs a command, failing with its stderr when it exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<(), Error> {
    run_output(cmd).map(drop)
}

/// Runs a command and returns its stdout.
pub fn run_output(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(Path::new(cmd.get_program()), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(Error::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a named, timed preparation step, printing how long it took.
pub fn step<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    eprintln!("vm-lanes: {what} ...");
    let start = Instant::now();
    let result = f();
    eprintln!(
        "vm-lanes: {what}: {} in {:.1} s",
        if result.is_ok() { "done" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    result
}

struct Options {
    lanes: Vec<String>,
    timeout: Duration,
    /// `--bench render`: the renderer benchmark instead of lanes.
    bench: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut lanes = Vec::new();
    let mut timeout = Duration::from_secs(300);
    let mut bench = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--lane" => lanes.push(args.next().ok_or("--lane needs a NAME")?),
            "--bench" => match args.next().as_deref() {
                Some("render") => bench = true,
                other => return Err(format!("--bench takes `render`, not {other:?}")),
            },
            "--timeout" => {
                let secs: u64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--timeout needs a number of seconds")?;
                timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!(
                    "usage: vm-lanes [--lane NAME]... [--timeout SECS]\n\
                     \x20      vm-lanes --bench render [--timeout SECS]\n\
                     lanes: {} (default: all)\n\
                     --bench render: glmark2 through ours and rust-vmm's vhost-device-gpu, and\n\
                     \x20 guest write bandwidth into venus HOST_VISIBLE memory (BENCHMARKS.md)\n\
                     --timeout: per guest boot, default 300",
                    lanes::NAMES.join(", ")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    for lane in &lanes {
        if !lanes::NAMES.contains(&lane.as_str()) {
            return Err(format!(
                "unknown lane {lane:?}; lanes are {}",
                lanes::NAMES.join(", ")
            ));
        }
    }
    if bench && !lanes.is_empty() {
        return Err("--bench runs no lanes; give one or the other".into());
    }
    if lanes.is_empty() {
        lanes = lanes::NAMES.iter().map(|s| s.to_string()).collect();
    }
    Ok(Options {
        lanes,
        timeout,
        bench,
    })
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vm-lanes: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    if options.bench {
        let mut env = lanes::Env::default();
        return match render_bench::bench(&mut env, options.timeout) {
            Ok(()) => {
                eprintln!(
                    "vm-lanes: the benchmark took {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vm-lanes: the benchmark could not run: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut total = Tally::default();
    let mut results = Vec::new();
    let mut env = lanes::Env::default();
    for name in &options.lanes {
        let lane_start = Instant::now();
        let tally = match lanes::run(name, &mut env, options.timeout) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("vm-lanes: lane {name} could not run: {e}");
                Tally {
                    failed: 1,
                    ..Tally::default()
                }
            }
        };
        eprintln!(
            "vm-lanes: lane {name} took {:.1} s",
            lane_start.elapsed().as_secs_f64()
        );
        total.add(tally);
        results.push((name.clone(), tally));
    }
    for (name, tally) in &results {
        println!("lane {name}: {tally}");
    }
    println!("{total}");
    eprintln!(
        "vm-lanes: all lanes took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if total.failed == 0 && total.total() > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
