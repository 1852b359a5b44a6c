//! The README's "JSON output" tables against real `--json` output: every field the command
//! prints is documented, every documented field is printed (DRM probe records, which need a
//! DRM device, are checked on the typed struct instead), and every printed value has the
//! documented type.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use dmabuf_info::info::{Answer, BufferInfo, DriverProbe};
use dmabuf_info::policy::{Decision, MapCache};
use dmabuf_info::report::{BufferReport, SCHEMA_VERSION};
use dmabuf_info::{BufferKind, CacheAttr, Driver, NeedsSync, Source};
use rustix::fs::MemfdFlags;
use rustix::io::FdFlags;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dmabuf-info");

/// field path -> the JSON types the README allows.
type Schema = BTreeMap<String, BTreeSet<String>>;

/// The table under `### \`{section}\`` of the README's JSON section.
fn documented(section: &str) -> Schema {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let heading = format!("### `{section}`");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README has no {heading}"));
    let mut schema = Schema::new();
    for line in readme[start + heading.len()..].lines() {
        if line.starts_with("#") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let path = cells[1].trim_matches('`').to_string();
        let types = cells[2].split(" or ").map(str::to_string).collect();
        assert!(
            schema.insert(path.clone(), types).is_none(),
            "{path} documented twice"
        );
    }
    assert!(schema.len() > 10, "{section}: table not found");
    schema
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field path in `v` (`a.b`, `list[].c`) with the types seen there.
fn observe(v: &Value, prefix: &str, out: &mut Schema) {
    let Value::Object(map) = v else { return };
    for (key, child) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        out.entry(path.clone())
            .or_default()
            .insert(json_type(child).to_string());
        match child {
            Value::Object(_) => observe(child, &path, out),
            Value::Array(items) => {
                for item in items {
                    observe(item, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
}

fn check(section: &str, outputs: &[Value], extra: &Schema) {
    let docs = documented(section);
    let mut seen = Schema::new();
    for v in outputs {
        assert_eq!(v["schema_version"], SCHEMA_VERSION, "{v}");
        observe(v, "", &mut seen);
    }
    for (path, types) in &seen {
        let allowed = docs
            .get(path)
            .unwrap_or_else(|| panic!("{section}: `{path}` is printed but not documented"));
        for t in types {
            assert!(
                allowed.contains(t),
                "{section}: `{path}` printed as {t}, documented as {allowed:?}"
            );
        }
    }
    for path in docs.keys() {
        assert!(
            seen.contains_key(path) || extra.contains_key(path),
            "{section}: `{path}` is documented but never printed"
        );
    }
    for (path, types) in extra {
        let allowed = docs
            .get(path)
            .unwrap_or_else(|| panic!("{section}: `{path}` not documented"));
        assert!(types.is_subset(allowed), "{section}: `{path}`: {types:?}");
    }
}

fn inheritable_memfd(name: &str) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 8192).unwrap();
    rustix::io::fcntl_setfd(&fd, FdFlags::empty()).unwrap();
    fd
}

fn json_of(cmd: &mut Command) -> Value {
    let o = cmd.output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn documented_fields_match_real_output() {
    // A drop-in directory with one broken file, so that config_warnings has an entry.
    let quirks = tempfile::tempdir().unwrap();
    std::fs::write(quirks.path().join("10-bad.toml"), "colour = 1\n").unwrap();
    let dirs = quirks.path().to_str().unwrap().to_string();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_remove("DMABUF_INFO_CONFIG")
            .env("DMABUF_INFO_QUIRKS_DIRS", &dirs);
        c
    };

    // A named memfd inherited as fd 3.
    let fd = inheritable_memfd("schema");
    let mut inherited = Command::new("bash");
    inherited
        .arg("-c")
        .arg(format!("exec \"$0\" \"$@\" 3<&{}", fd.as_raw_fd()))
        .arg(BIN)
        .args(["--json", "inspect", "--fd", "3"])
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", &dirs);
    let by_fd = json_of(&mut inherited);
    assert_eq!(by_fd["buffers"][0]["name"], "schema", "{by_fd}");
    assert_eq!(
        by_fd["config_warnings"][0]["path"]
            .as_str()
            .map(|p| p.ends_with("10-bad.toml")),
        Some(true)
    );

    // Another process's descriptors (pid set), then an error (error set, buffers empty).
    let mut child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let by_pid = json_of(&mut cmd(&[
        "--json",
        "inspect",
        "--pid",
        &child.id().to_string(),
    ]));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(by_pid["pid"], child.id(), "{by_pid}");
    let error = json_of(&mut cmd(&["--json", "inspect", "/"]));
    assert_eq!(error["error"]["kind"], "not-a-buffer", "{error}");

    // DRM probe records need a DRM device: check the typed struct instead.
    let src = Source::DriverIoctl(Driver::I915);
    let info = BufferInfo {
        kind: BufferKind::DmaBuf,
        exporter: "i915".into(),
        size: 4096,
        name: None,
        inode: 7,
        device: 9,
        cache: Answer::new(CacheAttr::Cached, src.clone()),
        needs_sync: Answer::new(NeedsSync::No, src.clone()),
        stable: Answer::new(true, src),
        kernel_ioctl: Some(Err(libc::ENOTTY)),
        driver_probes: vec![DriverProbe {
            driver: "i915".into(),
            node: "/dev/dri/renderD128".into(),
            imported: true,
            outcome: "handle 1: I915_CACHING_CACHED, LLC yes".into(),
        }],
    };
    let typed = serde_json::to_value(BufferReport::new(
        Some(5),
        None,
        &info,
        &Decision::Allow(MapCache::Cached),
    ))
    .unwrap();
    let mut probes = Schema::new();
    observe(&typed, "buffers[]", &mut probes);
    probes.retain(|p, _| p.starts_with("buffers[].driver_probes[]."));
    assert_eq!(probes.len(), 4, "{probes:?}");

    check("inspect", &[by_fd, by_pid, error], &probes);

    let platform = json_of(&mut cmd(&["--json", "platform", "--platform", "arm64"]));
    assert_eq!(platform["decisions"].as_array().map(Vec::len), Some(24));
    check("platform", &[platform], &Schema::new());
}
