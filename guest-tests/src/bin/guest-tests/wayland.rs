//! The guest's half of the `wayland` lane: Debian's weston demo clients draw through the
//! guest proxy (`guest-tests wl-proxy`, one run per cross-domain layout), and the host
//! looks at its compositor while each client is stopped on its last frame.
//!
//! For each run: start the proxy on its own socket, start the client against it, wait until
//! the proxy has copied a few of its frames to host buffers (its commit log), stop the
//! client (SIGSTOP: the last frame it committed stays on the host's screen), and hand the
//! host the digests of the last commits (`@@VMLANE hold wayland LABEL COMMIT;COMMIT`). The
//! host finds those bytes in a buffer its compositor and the backend share, and that buffer's
//! pixels on the compositor's screen. Then the client and the proxy are ended.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::report::Outcome;
use rustix::process::{kill_process, Pid, Signal};

use crate::{hold_for_host, Runner};

/// One run: which client, which INIT layout and identifier slots.
struct Run {
    label: &'static str,
    client: &'static str,
    init: &'static str,
    ids: &'static str,
}

/// Sommelier today (20-byte INIT, 28 slots); Sommelier of 2021-2023 and wayland-proxy-virtwl
/// before 2023-10 (16-byte INIT, 4 slots); muvm's INIT (24 bytes).
const RUNS: [Run; 3] = [
    Run {
        label: "shm-init20-ids28",
        client: "weston-simple-shm",
        init: "20",
        ids: "28",
    },
    Run {
        label: "shm-init16-ids4",
        client: "weston-simple-shm",
        init: "16",
        ids: "4",
    },
    Run {
        label: "damage-init24-ids28",
        client: "weston-simple-damage",
        init: "24",
        ids: "28",
    },
];

/// Commits the proxy must have copied before the host looks (the client is drawing).
const MIN_COMMITS: usize = 5;
/// Longest wait for them (TCG guests are slow).
const FRAME_WAIT: Duration = Duration::from_secs(90);

const RUNTIME_DIR: &str = "/run/user/0";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pid(child: &Child) -> Option<Pid> {
    Pid::from_raw(child.id() as i32)
}

fn commit_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("commit "))
        .map(str::to_string)
        .collect()
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Runs every client through the proxy.
pub fn clients(runner: &mut Runner) {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    for (i, run) in RUNS.iter().enumerate() {
        one(runner, &me, i, run);
    }
}

fn one(runner: &mut Runner, me: &Path, index: usize, run: &Run) {
    let display = format!("wayland-{}", index + 1);
    let socket = Path::new(RUNTIME_DIR).join(&display);
    let commits = PathBuf::from(format!("/tmp/commits-{}", run.label));
    let proxy_log = PathBuf::from(format!("/tmp/proxy-{}.log", run.label));
    let client_log = PathBuf::from(format!("/tmp/client-{}.log", run.label));
    let label = run.label;

    let proxy = fs::File::create(&proxy_log).and_then(|log| {
        Command::new(me)
            .args(["wl-proxy", "--socket"])
            .arg(&socket)
            .args(["--init", run.init, "--ids", run.ids, "--commits"])
            .arg(&commits)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    });
    let mut proxy = match proxy {
        Ok(child) => Killed(child),
        Err(e) => {
            runner.case(&format!("wayland {label}: proxy starts"), || {
                Outcome::Failed(e.to_string())
            });
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut up = Outcome::Passed;
    while !socket.exists() {
        if let Ok(Some(status)) = proxy.0.try_wait() {
            up = Outcome::Failed(format!("proxy exited ({status}): {}", tail(&proxy_log)));
            break;
        }
        if Instant::now() > deadline {
            up = Outcome::Failed(format!("no proxy socket in 20 s: {}", tail(&proxy_log)));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = up != Outcome::Passed;
    runner.case(
        &format!(
            "wayland {label}: proxy listens (INIT {} bytes, {} identifier slots)",
            run.init, run.ids
        ),
        || up,
    );
    if failed {
        return;
    }

    let client = fs::File::create(&client_log).and_then(|log| {
        Command::new(run.client)
            .env("XDG_RUNTIME_DIR", RUNTIME_DIR)
            .env("WAYLAND_DISPLAY", &display)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    });
    let mut client = match client {
        Ok(child) => Killed(child),
        Err(e) => {
            runner.case(&format!("wayland {label}: {} runs", run.client), || {
                Outcome::Failed(e.to_string())
            });
            return;
        }
    };
    let deadline = Instant::now() + FRAME_WAIT;
    let drew = loop {
        let n = commit_lines(&commits).len();
        if n >= MIN_COMMITS {
            break Outcome::Passed;
        }
        if let Ok(Some(status)) = client.0.try_wait() {
            break Outcome::Failed(format!(
                "{} exited ({status}) after {n} commits: {}; proxy: {}",
                run.client,
                tail(&client_log),
                tail(&proxy_log)
            ));
        }
        if Instant::now() > deadline {
            break Outcome::Failed(format!(
                "{n} commits in {} s (want {MIN_COMMITS}); proxy: {}",
                FRAME_WAIT.as_secs(),
                tail(&proxy_log)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let failed = drew != Outcome::Passed;
    runner.case(
        &format!(
            "wayland {label}: {} draws frames through the proxy",
            run.client
        ),
        || drew,
    );
    if failed {
        return;
    }
    // Stop the client on its last frame; let the host compositor show it.
    if let Some(p) = pid(&client.0) {
        let _ = kill_process(p, Signal::STOP);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let lines = commit_lines(&commits);
    let last: Vec<String> = lines
        .iter()
        .rev()
        .take(2)
        .map(|l| {
            l.trim_start_matches("commit ")
                .split_whitespace()
                .map(|kv| kv.split('=').nth(1).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect();
    let held = hold_for_host(&format!("wayland {label} {}", last.join(";")));
    runner.case(
        &format!("wayland {label}: the host looked"),
        || match held {
            Ok(()) => Outcome::Passed,
            Err(e) => Outcome::Failed(e.to_string()),
        },
    );
    if let Some(p) = pid(&client.0) {
        let _ = kill_process(p, Signal::CONT);
    }
    drop(client);
    let alive = match proxy.0.try_wait() {
        Ok(None) => Outcome::Passed,
        Ok(Some(status)) => {
            Outcome::Failed(format!("the proxy exited ({status}): {}", tail(&proxy_log)))
        }
        Err(e) => Outcome::Failed(e.to_string()),
    };
    runner.case(
        &format!("wayland {label}: the proxy served to the end"),
        || alive,
    );
}
