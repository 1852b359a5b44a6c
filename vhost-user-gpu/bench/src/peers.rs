//! Finding (and when missing, building or installing) the backends to compare.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// QEMU's reference C backend (Debian qemu-system-gui).
pub const QEMU_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";

/// The repository root (this crate is vhost-user-gpu/bench/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where `.ci/peers` installs vhost-device-gpu.
pub fn vdg_cached() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("dmabuf-virtio-gpu/peers/bin/vhost-device-gpu")
}

/// The state of one peer.
#[derive(Debug, Clone)]
pub enum PeerState {
    /// Ready at this path.
    Found(PathBuf),
    /// Not available, and why (printed as is).
    Missing(String),
}

impl PeerState {
    /// The path when found.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PeerState::Found(p) => Some(p),
            PeerState::Missing(_) => None,
        }
    }
}

/// Runs `.ci/peers NAME`; returns how long it took.
fn install(name: &str) -> Result<f64, String> {
    let script = repo_root().join(".ci/peers");
    eprintln!(
        "vug-bench: installing peer {name} with {}",
        script.display()
    );
    let t = Instant::now();
    let status = Command::new(&script)
        .arg(name)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!("{} {name} failed ({status})", script.display()));
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("vug-bench: peer {name} installed in {secs:.0} s");
    Ok(secs)
}

/// QEMU's backend: found, or installed when `may_install`.
pub fn qemu(may_install: bool) -> (PeerState, Option<f64>) {
    if Path::new(QEMU_BACKEND).is_file() {
        return (PeerState::Found(QEMU_BACKEND.into()), None);
    }
    if !may_install {
        return (
            PeerState::Missing(format!(
                "not installed ({QEMU_BACKEND} missing; run .ci/peers qemu)"
            )),
            None,
        );
    }
    match install("qemu") {
        Ok(secs) if Path::new(QEMU_BACKEND).is_file() => {
            (PeerState::Found(QEMU_BACKEND.into()), Some(secs))
        }
        Ok(_) => (
            PeerState::Missing(format!("{QEMU_BACKEND} still missing after install")),
            None,
        ),
        Err(e) => (PeerState::Missing(e), None),
    }
}

/// vhost-device-gpu 0.2.0: `$VUG_BENCH_VDG`, the cache, or installed when `may_install`.
pub fn vhost_device_gpu(may_install: bool) -> (PeerState, Option<f64>) {
    if let Some(p) = std::env::var_os("VUG_BENCH_VDG").map(PathBuf::from) {
        return if p.is_file() {
            (PeerState::Found(p), None)
        } else {
            (
                PeerState::Missing(format!("VUG_BENCH_VDG={} does not exist", p.display())),
                None,
            )
        };
    }
    let cached = vdg_cached();
    if cached.is_file() {
        return (PeerState::Found(cached), None);
    }
    if !may_install {
        return (
            PeerState::Missing(format!(
                "not installed ({} missing; --quick does not build it: run .ci/peers \
                 vhost-device-gpu or vug-bench without --quick)",
                cached.display()
            )),
            None,
        );
    }
    match install("vhost-device-gpu") {
        Ok(secs) if cached.is_file() => (PeerState::Found(cached), Some(secs)),
        Ok(_) => (
            PeerState::Missing(format!("{} still missing after install", cached.display())),
            None,
        ),
        Err(e) => (PeerState::Missing(e), None),
    }
}

/// Our backend: `--backend PATH`, else `vhost-user-gpu` next to this program, (re)built with
/// cargo first so that the figures are of the current sources.
pub fn ours(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("vug-bench has no parent directory")?
        .to_path_buf();
    let candidate = dir.join("vhost-user-gpu");
    // target/<profile>/vug-bench: rebuild the backend in the same target dir and profile.
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let target_dir = dir.parent();
    if let (Some(cargo), Some(target_dir)) = (std::env::var_os("CARGO"), target_dir) {
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "vhost-user-gpu",
            "--bin",
            "vhost-user-gpu",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo_root());
        match profile {
            "release" => {
                cmd.arg("--release");
            }
            "debug" => {}
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo to build the backend: {e}"))?;
        if !status.success() {
            return Err(format!("building vhost-user-gpu failed ({status})"));
        }
    }
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not found: build it (cargo build --release -p vhost-user-gpu) or pass --backend",
            candidate.display()
        ))
    }
}
