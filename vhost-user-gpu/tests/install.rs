//! `install.sh` into a temporary DESTDIR: the files a distribution package would ship, and a
//! vhost-user backend descriptor (QEMU's docs/interop/vhost-user.json) that names the
//! installed binary, does not collide with QEMU's own backend, and agrees with what that
//! binary reports.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_vhost-user-gpu");
const DESCRIPTOR: &str = "60-dmabuf-virtio-gpu.json";
/// Where QEMU installs its own backend (upstream `make install`, Debian's qemu-system-gui).
const QEMU_BINARIES: [&str; 2] = [
    "/usr/libexec/vhost-user-gpu",
    "/usr/lib/qemu/vhost-user-gpu",
];
/// QEMU's own descriptor.
const QEMU_DESCRIPTOR: &str = "50-qemu-gpu.json";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs install.sh with the test's binary (no build) into `destdir`.
fn install(destdir: &Path, extra: &[&str]) -> String {
    let out = Command::new(manifest_dir().join("install.sh"))
        .arg("--binary")
        .arg(BINARY)
        .args(extra)
        .env("DESTDIR", destdir)
        .output()
        .expect("run install.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "install.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn capabilities(binary: &Path) -> serde_json::Value {
    let out = Command::new(binary)
        .arg("--print-capabilities")
        .output()
        .expect("run --print-capabilities");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("capabilities are JSON")
}

/// Checks one installed descriptor against the schema and the installed files.
fn check_descriptor(destdir: &Path, prefix: &str) {
    let dir = destdir
        .join(prefix.trim_start_matches('/'))
        .join("share/qemu/vhost-user");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [DESCRIPTOR], "one descriptor in {}", dir.display());
    // Management software sorts descriptors by file name and takes the first match: ours
    // must not replace QEMU's file, and sorts after it (an administrator prefers it with an
    // /etc/qemu/vhost-user/ entry, see README-launch.md).
    assert_ne!(DESCRIPTOR, QEMU_DESCRIPTOR);
    assert!(DESCRIPTOR > QEMU_DESCRIPTOR);
    assert!(DESCRIPTOR.as_bytes()[..2].iter().all(u8::is_ascii_digit));

    let doc = read_json(&dir.join(DESCRIPTOR));
    let object = doc.as_object().expect("a JSON object");
    // @VhostUserBackend: description, type, binary, optional tags; nothing else.
    for key in object.keys() {
        assert!(
            ["description", "type", "binary", "tags"].contains(&key.as_str()),
            "{key} is not a VhostUserBackend member"
        );
    }
    assert!(doc["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(doc["type"], "gpu");
    let binary = doc["binary"].as_str().expect("binary is a string");
    assert_eq!(
        binary,
        format!("{prefix}/libexec/dmabuf-virtio-gpu/vhost-user-gpu")
    );
    assert!(Path::new(binary).is_absolute());
    assert!(!QEMU_BINARIES.contains(&binary), "{binary} is QEMU's path");

    // The binary the descriptor names exists (under DESTDIR) and is executable.
    let installed = destdir.join(binary.trim_start_matches('/'));
    let meta =
        std::fs::metadata(&installed).unwrap_or_else(|e| panic!("{}: {e}", installed.display()));
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);

    // What libvirt does next: run it with --print-capabilities. It must answer for the
    // descriptor's type, with the schema's gpu feature names only, and exactly what the
    // tested binary reports on this host.
    let caps = capabilities(&installed);
    assert_eq!(caps["type"], doc["type"]);
    let features = caps["features"].as_array().expect("features");
    for f in features {
        assert!(f == "render-node" || f == "virgl", "unknown feature {f}");
    }
    assert_eq!(caps, capabilities(Path::new(BINARY)));
}

#[test]
fn installs_what_libvirt_discovers_under_usr() {
    let destdir = tempfile::tempdir().unwrap();
    let stdout = install(destdir.path(), &[]);
    check_descriptor(destdir.path(), "/usr");
    let root = destdir.path().join("usr");
    // The man page is the committed, generated one.
    assert_eq!(
        std::fs::read(root.join("share/man/man1/vhost-user-gpu.1")).unwrap(),
        std::fs::read(manifest_dir().join("share/vhost-user-gpu.1")).unwrap()
    );
    for doc in ["README-launch.md", "LICENSE-APACHE", "LICENSE-BSD-3-Clause"] {
        let path = root.join("share/doc/dmabuf-virtio-gpu").join(doc);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 0),
            "{}",
            path.display()
        );
    }
    // The committed descriptor is the /usr one, byte for byte.
    assert_eq!(
        std::fs::read(root.join("share/qemu/vhost-user").join(DESCRIPTOR)).unwrap(),
        std::fs::read(manifest_dir().join("share").join(DESCRIPTOR)).unwrap()
    );
    assert!(stdout.contains("capabilities on this host: {"), "{stdout}");
}

#[test]
fn another_prefix_is_named_in_the_descriptor() {
    let destdir = tempfile::tempdir().unwrap();
    let stdout = install(destdir.path(), &["--prefix", "/opt/vug/"]);
    check_descriptor(destdir.path(), "/opt/vug");
    // libvirt does not look there: the script says where to link it.
    assert!(stdout.contains("/etc/qemu/vhost-user"), "{stdout}");
}

#[test]
fn bad_prefixes_are_usage_errors() {
    for prefix in ["relative/dir", "/a\"b", "/a|b"] {
        let out = Command::new(manifest_dir().join("install.sh"))
            .args(["--binary", BINARY, "--prefix", prefix])
            .env("DESTDIR", "/nonexistent")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{prefix}");
    }
}
