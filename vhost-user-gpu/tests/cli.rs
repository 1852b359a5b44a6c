//! The `vhost-user-gpu` binary's command line: capabilities and start-up errors.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-gpu"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run vhost-user-gpu")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn print_capabilities_is_valid_json_of_type_gpu() {
    let out = run(&["--print-capabilities"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(caps["type"], "gpu");
    let features = caps["features"].as_array().expect("features is an array");
    // Only the names QEMU's docs/interop/vhost-user.json defines for gpu backends.
    for f in features {
        assert!(f == "render-node" || f == "virgl", "unknown feature {f}");
    }
    // This backend has no virgl renderer: it must not claim one.
    assert!(!features.iter().any(|f| f == "virgl"));
}

#[test]
fn a_socket_is_required() {
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--socket-path"), "{}", stderr(&out));
}

#[test]
fn socket_path_and_fd_conflict() {
    let out = run(&["--socket-path", "/tmp/x.sock", "--fd", "3"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_values_are_rejected_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    for (args, needle) in [
        (vec!["--outputs", "17"], "17"),
        (vec!["--outputs", "0"], "0"),
        (vec!["--hostmem", "lots"], "not a size"),
        (vec!["--hostmem", "1000"], "multiple of 4 KiB"),
        (vec!["--resolution", "big"], "not a resolution"),
        (vec!["--allocator", "magic"], "unknown allocator"),
        (vec!["--platform", "sparc"], "unknown platform"),
        (vec!["--capture-dir", "/nonexistent/dir"], "capture"),
        (
            vec!["--policy-config", "/nonexistent/policy.toml"],
            "policy.toml",
        ),
        (vec!["--fd", "987"], "fd 987"),
    ] {
        let mut full = vec!["--socket-path", sock];
        if args[0] == "--fd" {
            full.clear();
        }
        full.extend(args.iter().copied());
        let out = run(&full);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Start-up errors found after parsing are a single line.
    let out = run(&["--socket-path", sock, "--hostmem", "1000"]);
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unwritable_socket_location_fails_at_start() {
    let out = run(&["--socket-path", "/nonexistent/dir/gpu.sock"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/dir/gpu.sock"),
        "{}",
        stderr(&out)
    );
}
