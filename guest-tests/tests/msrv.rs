//! The workspace's `rust-version` is true of what it ships: every crate declares it, and no
//! dependency in Cargo.lock needs a newer Rust.
//!
//! Rust 1.95 is the only toolchain here and in CI (no other can be fetched), so an older
//! compiler cannot be run. What can be checked without one: the standard-library items the
//! code uses (clippy's `incompatible_msrv` lint, which reads `rust-version` and which CI's
//! `clippy -D warnings` enforces), and the dependencies' own declared `rust-version` (this
//! test). Language features newer than `rust-version` are not checked by either.

use std::process::Command;

/// `1.89` and `1.89.0` alike, as `[major, minor, patch]`.
fn version(v: &str) -> [u64; 3] {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    [(); 3].map(|()| parts.next().unwrap_or(0))
}

/// The host's target triple (`rustc -vV`): what the workspace is built and shipped for.
fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

#[test]
fn rust_version_covers_every_locked_dependency() {
    // Only the host's dependencies: a build downloads no others (Windows-only crates in
    // Cargo.lock are never fetched on Linux), and `--offline` must not need them.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let packages = meta["packages"].as_array().unwrap();

    let mut declared = None;
    for p in packages
        .iter()
        .filter(|p| members.contains(&p["id"].as_str().unwrap()))
    {
        let rv = p["rust_version"]
            .as_str()
            .unwrap_or_else(|| panic!("{} declares no rust-version", p["name"]));
        match declared {
            None => declared = Some(rv.to_owned()),
            Some(ref d) => assert_eq!(d, rv, "{} has another rust-version", p["name"]),
        }
    }
    let declared = declared.expect("workspace members");

    let too_new: Vec<String> = packages
        .iter()
        .filter(|p| !members.contains(&p["id"].as_str().unwrap()))
        .filter_map(|p| {
            let rv = p["rust_version"].as_str()?;
            (version(rv) > version(&declared))
                .then(|| format!("{} {} needs Rust {rv}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version {declared} is older than what Cargo.lock needs: {too_new:?}"
    );
}
