//! A broken dmabuf-info drop-in quirk file never stops the backend: it is skipped with a
//! warning naming the file and the key, and start-up goes on (here to the listening socket,
//! which is made to fail so that the process ends by itself).

use std::process::Command;

#[test]
fn a_broken_quirk_file_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("50-local.toml"),
        "schema = 1\nplatfrom = \"x86-amd\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("60-future.toml"), "schema = 2\n").unwrap();
    let socket = dir.path().join("no-such-dir/vhost-user-gpu.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_vhost-user-gpu"))
        .arg("--socket-path")
        .arg(&socket)
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let bad = dir.path().join("50-local.toml");
    assert!(
        err.contains(&format!(
            "{}: line 2: unknown field `platfrom`",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}: schema = 2",
            dir.path().join("60-future.toml").display()
        )),
        "{err}"
    );
    // Start-up went past the configuration: what stopped it is the socket.
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!err.contains("dmabuf-info configuration: invalid"), "{err}");
}
