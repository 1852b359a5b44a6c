//! The `vhost-user-gpu` binary's command line: capabilities, usage errors (exit status 2)
//! and start-up errors (exit status 1).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_vhost-user-gpu");

fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run vhost-user-gpu")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn capabilities() -> Vec<String> {
    let out = run(&["--print-capabilities"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(caps["type"], "gpu");
    caps["features"]
        .as_array()
        .expect("features is an array")
        .iter()
        .map(|f| f.as_str().expect("features are strings").to_owned())
        .collect()
}

/// A backend started on a socket in a temporary directory; killed on drop.
struct Started {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the backend with `args` and reads its log until it listens (`Ok(log)`) or exits
/// (`Err((exit code, log))`).
fn start(args: &[&str]) -> Result<(Started, String), (Option<i32>, String)> {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gpu.sock");
    let mut child = Command::new(BINARY)
        .arg("--socket-path")
        .arg(&sock)
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vhost-user-gpu");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening on") {
                    return Ok((Started { child, _dir: dir }, log));
                }
            }
            _ => {
                let status = child.wait().unwrap();
                return Err((status.code(), log));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the backend neither listened nor exited within 30 s:\n{log}");
}

#[test]
fn print_capabilities_is_valid_json_of_type_gpu() {
    let features = capabilities();
    // Only the names QEMU's docs/interop/vhost-user.json defines for gpu backends.
    for f in &features {
        assert!(f == "render-node" || f == "virgl", "unknown feature {f}");
    }
    // This backend has no virgl renderer: it must not claim one.
    assert!(!features.iter().any(|f| f == "virgl"));
}

#[test]
fn print_capabilities_ignores_other_options() {
    // QEMU's backend conventions: "Other options and arguments should be ignored".
    let out = run(&["--print-capabilities", "--socket-path", "/x", "--fd", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(caps["type"], "gpu");
}

#[test]
fn render_node_is_listed_exactly_when_the_backend_starts_with_gbm() {
    let listed = capabilities().iter().any(|f| f == "render-node");
    // What the backend does with the same host: --allocator gbm starts only where GBM can
    // allocate on a render node, and auto picks GBM there.
    match start(&["--allocator", "gbm"]) {
        Ok((_backend, log)) => {
            assert!(
                listed,
                "gbm works here but render-node is not listed:\n{log}"
            );
            assert!(log.contains("allocator gbm on /dev/dri/renderD"), "{log}");
        }
        Err((code, log)) => {
            assert!(!listed, "render-node listed but gbm cannot start:\n{log}");
            assert_eq!(code, Some(1), "{log}");
            assert!(log.contains("--allocator gbm: "), "{log}");
        }
    }
    let (_backend, log) = start(&["--allocator", "auto"]).expect("auto always starts");
    assert_eq!(log.contains("allocator gbm on "), listed, "{log}");
}

#[test]
fn a_socket_is_required() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--socket-path"), "{}", stderr(&out));
}

#[test]
fn socket_path_and_fd_conflict() {
    let out = run(&["--socket-path", "/tmp/x.sock", "--fd", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    for (args, needle) in [
        (vec!["--outputs", "17"], "17"),
        (vec!["--outputs", "0"], "0"),
        (vec!["--hostmem", "lots"], "not a size"),
        (vec!["--hostmem", "1000"], "multiple of 4 KiB"),
        (vec!["--max-resource-memory", "1Q"], "not a size"),
        (vec!["--resolution", "big"], "not a resolution"),
        (
            vec!["--allocator", "magic"],
            "[possible values: auto, gbm, udmabuf, memfd]",
        ),
        (vec!["--platform", "sparc"], "x86-intel"),
        (
            vec!["--sandbox", "yes"],
            "[possible values: on, seccomp-only, off]",
        ),
        (
            vec!["--capture-dir", "/nonexistent/dir"],
            "/nonexistent/dir",
        ),
        (vec!["--capture-dir", file], "not a directory"),
        (vec!["--render-node", "/dev/null"], "not a DRM render node"),
        (
            vec!["--render-node", "/nonexistent/renderD128"],
            "renderD128",
        ),
        (
            vec!["--render-node", dir.path().to_str().unwrap()],
            "not a character device",
        ),
        (
            vec!["--allocator", "memfd", "--render-node", "/dev/null"],
            "not a DRM render node",
        ),
        (
            vec!["--policy-config", "/nonexistent/policy.toml"],
            "policy.toml",
        ),
        (vec!["--fd", "-1"], "-1"),
    ] {
        let mut full = vec!["--socket-path", sock];
        if args[0] == "--fd" {
            full.clear();
        }
        full.extend(args.iter().copied());
        let out = run(&full);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn render_node_with_a_non_gbm_allocator_is_a_usage_error() {
    // Needs a real render node to get past the node check; without one the check itself is
    // the usage error (covered above).
    let Some(node) = (128..=191)
        .map(|n| format!("/dev/dri/renderD{n}"))
        .find(|p| std::path::Path::new(p).exists())
    else {
        let out = run(&[
            "--socket-path",
            "/tmp/x",
            "--allocator",
            "udmabuf",
            "--render-node",
            "/dev/dri/renderD128",
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        return;
    };
    let out = run(&[
        "--socket-path",
        "/tmp/x",
        "--allocator",
        "udmabuf",
        "--render-node",
        &node,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--render-node is for the gbm allocator"));
}

#[test]
fn start_up_failures_exit_1_with_one_line() {
    for (args, needle) in [
        (
            vec!["--socket-path", "/nonexistent/dir/gpu.sock"],
            "/nonexistent/dir/gpu.sock",
        ),
        (vec!["--fd", "987"], "fd 987"),
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("vhost-user-gpu: error: "),
            "{args:?}: {err}"
        );
        assert!(last.contains(needle), "{args:?}: {err}");
    }
}
