//! The C ABI through a C program compiled with the system `cc` against
//! `include/dmabuf_info.h` and the crate's cdylib.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the crate's cdylib. `cargo build` copies it next to
/// the binaries; a test build (cargo test, nextest) leaves it in `deps/`.
fn artifact_dir() -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_dmabuf-info"))
        .parent()
        .unwrap()
        .to_path_buf();
    [bin_dir.join("deps"), bin_dir.clone()]
        .into_iter()
        .find(|d| d.join("libdmabuf_info.so").exists())
        .unwrap_or(bin_dir)
}

#[test]
fn c_program_uses_the_abi_on_a_memfd() {
    let dir = artifact_dir();
    let lib = dir.join("libdmabuf_info.so");
    assert!(lib.exists(), "cdylib not built at {}", lib.display());
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("abi_test");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(manifest.join("tests/c/abi_test.c"))
        .arg("-I")
        .arg(manifest.join("include"))
        .arg("-L")
        .arg(&dir)
        .arg("-ldmabuf_info")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "platform = \"x86-amd\"\n").unwrap();
    let out = Command::new(&exe)
        .arg(&cfg)
        .env_remove("DMABUF_INFO_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "C checks failed:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn header_version_matches_the_library() {
    let header = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/dmabuf_info.h"
    ))
    .unwrap();
    let major = format!(
        "#define DMABUF_INFO_ABI_MAJOR {}",
        dmabuf_info::ffi::DMABUF_INFO_ABI_MAJOR
    );
    let minor = format!(
        "#define DMABUF_INFO_ABI_MINOR {}",
        dmabuf_info::ffi::DMABUF_INFO_ABI_MINOR
    );
    assert!(header.contains(&major), "header lacks `{major}`");
    assert!(header.contains(&minor), "header lacks `{minor}`");
    assert_eq!(
        dmabuf_info::ffi::dmabuf_info_abi_version(),
        (dmabuf_info::ffi::DMABUF_INFO_ABI_MAJOR << 16) | dmabuf_info::ffi::DMABUF_INFO_ABI_MINOR
    );
    assert_eq!(
        std::mem::size_of::<dmabuf_info::ffi::DmabufInfoResult>(),
        152
    );
    assert_eq!(
        std::mem::size_of::<dmabuf_info::ffi::DmabufInfoDecision>(),
        272
    );
}
