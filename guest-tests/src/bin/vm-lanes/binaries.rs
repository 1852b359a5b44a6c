//! Building the workspace's binaries: static ones for the guest (glibc with
//! `-C target-feature=+crt-static`, in a target directory of their own so the
//! flags do not invalidate the normal build) and normal ones for the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run_output, Error};

/// The workspace root (the runner is built from it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// An executable cargo built.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The target's name (crate binary or test target).
    pub name: String,
    /// Whether it is a test harness.
    pub is_test: bool,
    /// The executable.
    pub path: PathBuf,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cargo ARGS --message-format=json` and lists the executables built.
fn executables(mut cmd: Command) -> Result<Vec<Artifact>, Error> {
    cmd.current_dir(workspace())
        .arg("--message-format=json-render-diagnostics");
    let out = run_output(&mut cmd)?;
    let mut artifacts = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else {
            continue;
        };
        artifacts.push(Artifact {
            name: msg["target"]["name"].as_str().unwrap_or("").to_string(),
            is_test: msg["profile"]["test"].as_bool().unwrap_or(false),
            path: PathBuf::from(path),
        });
    }
    Ok(artifacts)
}

/// Builds static guest executables: `cargo ARGS` (a `build` or `test --no-run`
/// command line) for the guest target.
pub fn guest(args: &[&str]) -> Result<Vec<Artifact>, Error> {
    let mut cmd = cargo();
    cmd.args(args)
        .args(["--release", "--target", GUEST_TARGET])
        .env("CARGO_TARGET_DIR", target_dir().join("vm-lanes-static"))
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        );
    let artifacts = executables(cmd)?;
    for artifact in &artifacts {
        let data = std::fs::read(&artifact.path).map_err(|e| Error::io(&artifact.path, e))?;
        if !crate::initramfs::is_static_elf(&data) {
            return Err(Error::Setup(format!(
                "{} is not statically linked",
                artifact.path.display()
            )));
        }
    }
    Ok(artifacts)
}

/// Builds host executables: `cargo ARGS --release` in the normal target dir.
pub fn host(args: &[&str]) -> Result<Vec<Artifact>, Error> {
    let mut cmd = cargo();
    cmd.args(args).arg("--release");
    executables(cmd)
}

/// The one artifact with this name, or an error naming what was built.
pub fn find<'a>(
    artifacts: &'a [Artifact],
    name: &str,
    is_test: bool,
) -> Result<&'a Artifact, Error> {
    artifacts
        .iter()
        .find(|a| a.name == name && a.is_test == is_test)
        .ok_or_else(|| {
            Error::Setup(format!(
                "cargo built no {} named {name}",
                if is_test { "test" } else { "binary" }
            ))
        })
}
