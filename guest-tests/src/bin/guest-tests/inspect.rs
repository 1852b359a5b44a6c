//! `dmabuf-info inspect --pid` against another guest process that holds real
//! dma-bufs (a udmabuf and a system dma-heap buffer).

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode, Stdio};

use guest_tests::report::Outcome;
use serde_json::Value;

use crate::{drm, Runner};

const UDMABUF_SIZE: u64 = 1 << 20;
const HEAP_SIZE: u64 = 64 << 10;

/// The helper process: allocates the buffers, prints `ready UDMABUF_FD HEAP_FD`
/// and keeps them open until its stdin closes.
pub fn hold_dmabufs() -> ExitCode {
    let udmabuf = match drm::udmabuf(UDMABUF_SIZE) {
        Ok(fd) => fd,
        Err(e) => {
            println!("error udmabuf: {e}");
            return ExitCode::FAILURE;
        }
    };
    let heap = match drm::system_heap(HEAP_SIZE) {
        Ok(fd) => fd,
        Err(e) => {
            println!("error system heap: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready {} {}", udmabuf.as_raw_fd(), heap.as_raw_fd());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop((udmabuf, heap));
    ExitCode::SUCCESS
}

/// Every JSON object (at any depth) that has an `exporter` field.
fn buffers(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("exporter") {
                out.push(value.clone());
            }
            map.values().for_each(|v| buffers(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| buffers(v, out)),
        _ => {}
    }
}

fn check_buffer(found: &[Value], fd: i64, exporter: &str, size: u64) -> Outcome {
    let Some(buffer) = found.iter().find(|b| b["fd"].as_i64() == Some(fd)) else {
        return Outcome::Failed(format!("fd {fd} is not in the output"));
    };
    if buffer["exporter"].as_str() != Some(exporter) {
        return Outcome::Failed(format!(
            "fd {fd}: exporter {}, want {exporter}",
            buffer["exporter"]
        ));
    }
    if buffer["size"].as_u64() != Some(size) {
        return Outcome::Failed(format!("fd {fd}: size {}, want {size}", buffer["size"]));
    }
    if buffer["decision"]["allow"].as_bool() != Some(true) {
        return Outcome::Failed(format!(
            "fd {fd}: a {exporter} buffer on x86 should be mappable, decision {}",
            buffer["decision"]
        ));
    }
    Outcome::Passed
}

/// Starts the helper, runs `TOOL --json inspect --pid PID` and checks what it
/// reports about the helper's buffers.
pub fn inspect_pid(runner: &mut Runner, tool: &str) {
    let child = Command::new("/proc/self/exe")
        .arg("hold-dmabufs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            runner.case("inspect-pid: helper process holds dma-bufs", || {
                Outcome::Failed(format!("cannot start the helper: {e}"))
            });
            return;
        }
    };
    let pid = child.id();
    let mut ready = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut ready);
    }
    let fds: Vec<i64> = ready
        .strip_prefix("ready ")
        .map(|r| {
            r.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut output = None;
    runner.case(
        "inspect-pid: helper process holds a udmabuf and a system-heap buffer",
        || {
            if fds.len() != 2 {
                return Outcome::Failed(format!("helper said {:?}", ready.trim()));
            }
            match Command::new(tool)
                .args(["--json", "inspect", "--pid", &pid.to_string()])
                .output()
            {
                Ok(out) => {
                    let status = out.status;
                    output = Some(out);
                    if status.success() {
                        Outcome::Passed
                    } else {
                        Outcome::Failed(format!("{tool} inspect --pid exited with {status}"))
                    }
                }
                Err(e) => Outcome::Failed(format!("cannot run {tool}: {e}")),
            }
        },
    );
    drop(child.stdin.take());
    let _ = child.wait();
    let Some(output) = output else {
        return;
    };
    let parsed: Result<Value, _> = serde_json::from_slice(&output.stdout);
    let mut found = Vec::new();
    runner.case(
        "inspect-pid: --json output parses and lists buffers",
        || match &parsed {
            Ok(v) => {
                buffers(v, &mut found);
                if found.is_empty() {
                    Outcome::Failed(format!("no buffer objects in {v}"))
                } else {
                    Outcome::Passed
                }
            }
            Err(e) => Outcome::Failed(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )),
        },
    );
    if fds.len() == 2 {
        runner.case(
            "inspect-pid: the other process's udmabuf (exporter, size, decision)",
            || check_buffer(&found, fds[0], "udmabuf", UDMABUF_SIZE),
        );
        runner.case(
            "inspect-pid: the other process's system-heap buffer (exporter, size, decision)",
            || check_buffer(&found, fds[1], "system", HEAP_SIZE),
        );
    }
}
