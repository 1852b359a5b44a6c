//! The guest-side Wayland proxy on the host, end to end with real Wayland software: Debian's
//! `weston-simple-shm` and `weston-simple-damage` connect to the proxy as their compositor;
//! the proxy speaks cross-domain to the device's own channel code (`WaylandChannel`), which
//! talks to a real weston (headless, pixman). The virtio-gpu part in between (the DRM uapi,
//! the virtqueue) is what this host test replaces with direct calls; the `wayland` VM lane
//! runs the same proxy over the real driver.

#[path = "../../vhost-user-gpu/tests/weston/mod.rs"]
mod weston;

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_tests::wl_proxy::{GuestChannel, Proxy};
use vhost_user_gpu::device::budget::{Budget, Kind, Usage};
use vhost_user_gpu::device::ports::{BlobExporter, Channel};
use vhost_user_gpu::protocol::cross_domain::{commands, CrossDomainCommand, IdLayout};
use vhost_user_gpu::wayland::{ChannelLimits, WaylandChannel};

/// Host buffers by resource id (memfds, as the device's memfd allocator makes them).
#[derive(Default)]
struct Resources {
    by_id: HashMap<u32, OwnedFd>,
    next: u32,
}

impl BlobExporter for Resources {
    fn export_blob(&mut self, resource_id: u32) -> Result<OwnedFd, String> {
        let fd = self
            .by_id
            .get(&resource_id)
            .ok_or_else(|| format!("no resource {resource_id}"))?;
        fd.try_clone().map_err(|e| e.to_string())
    }
}

/// The device side of one context, called directly.
struct DirectChannel {
    channel: WaylandChannel,
    resources: Resources,
    layout: IdLayout,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl GuestChannel for DirectChannel {
    fn layout(&self) -> IdLayout {
        self.layout
    }
    fn submit(&mut self, cmd: &[u8]) -> io::Result<()> {
        match commands(cmd).next() {
            Some(Ok(CrossDomainCommand::Send(send))) => {
                self.channel.send(&send, &mut self.resources).map_err(other)
            }
            Some(Ok(CrossDomainCommand::Write(write))) => self.channel.write(&write).map_err(other),
            c => Err(other(format!("command {c:?}"))),
        }
    }
    fn event_fd(&self) -> BorrowedFd<'_> {
        self.channel.wait_fd()
    }
    fn next_event(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.channel.next_event().map_err(other)
    }
    fn resource_of(&mut self, _fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
        Ok(None)
    }
    fn import_blob(&mut self, id: u32, _size: u32) -> io::Result<OwnedFd> {
        Ok(self.channel.take_blob(id).map_err(other)?.fd)
    }
    fn alloc_shm(&mut self, size: u64) -> io::Result<u32> {
        let fd = rustix::fs::memfd_create("host-blob", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, size)?;
        self.resources.next += 2;
        let id = self.resources.next;
        self.resources.by_id.insert(id, fd);
        Ok(id)
    }
    fn write_resource(&mut self, resource: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let fd = self
            .resources
            .by_id
            .get(&resource)
            .ok_or_else(|| other("no resource"))?;
        let mut done = 0;
        while done < data.len() {
            done += rustix::io::pwrite(fd, &data[done..], offset + done as u64)?;
        }
        Ok(())
    }
}

/// A proxy on its own thread, listening in a private runtime directory.
struct RunningProxy {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningProxy {
    fn start(weston_socket: std::path::PathBuf, layout: IdLayout) -> RunningProxy {
        let dir = tempfile::Builder::new()
            .prefix("vug-wl-proxy-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("wayland-proxy");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let connect = Box::new(move || -> io::Result<Box<dyn GuestChannel>> {
                let budget = Budget::new(Usage::host_bytes(64 << 20).with(Kind::Fds, 256));
                let mut channel =
                    WaylandChannel::connect(&weston_socket, ChannelLimits::default(), &budget)
                        .map_err(other)?;
                channel.want_events(true).map_err(other)?;
                Ok(Box::new(DirectChannel {
                    channel,
                    resources: Resources::default(),
                    layout,
                }))
            });
            let mut proxy = Proxy::bind(&path, connect).expect("proxy socket");
            ready_tx.send(()).unwrap();
            while !thread_stop.load(Ordering::Relaxed) {
                proxy.turn(Duration::from_millis(20)).expect("proxy turn");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy listening");
        RunningProxy {
            dir,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rows at the top of weston's desktop-shell output that hold the panel (and its clock).
const PANEL_ROWS: usize = 40;

/// Pixels of `shot` below weston's panel that differ from `base`.
fn changed(base: &weston::Screenshot, shot: &weston::Screenshot) -> usize {
    changed_pixels(base, shot).count()
}

fn changed_pixels<'a>(
    base: &'a weston::Screenshot,
    shot: &'a weston::Screenshot,
) -> impl Iterator<Item = &'a [u8]> {
    let row = (base.width * 3) as usize;
    base.rgb[PANEL_ROWS * row..]
        .chunks_exact(3)
        .zip(shot.rgb[PANEL_ROWS * row..].chunks_exact(3))
        .filter(|(a, b)| a != b)
        .map(|(_, b)| b)
}

/// Distinct colours among the changed pixels: the demo clients draw gradients and rings, a
/// window whose pixels never arrived is one flat colour.
fn colours(base: &weston::Screenshot, shot: &weston::Screenshot) -> usize {
    changed_pixels(base, shot)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Runs a Debian weston demo client through the proxy and checks that weston shows its
/// window: at least `min_changed` pixels differ from the desktop without it, in at least
/// `min_colours` colours (a window whose pixels never crossed is one flat colour), while the
/// client is still running (it would have exited on a protocol error).
fn demo_client_shows(client: &str, layout: IdLayout, min_changed: usize, min_colours: usize) {
    let weston = weston::Weston::start(640, 480);
    let base = weston.settled_screenshot(PANEL_ROWS);
    assert_eq!(
        changed(&base, &weston.screenshot()),
        0,
        "the desktop alone is still"
    );
    let proxy = RunningProxy::start(weston.socket(), layout);
    let mut child = Command::new(client)
        .env("XDG_RUNTIME_DIR", proxy.dir.path())
        .env("WAYLAND_DISPLAY", "wayland-proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{client} runs (Debian package weston): {e}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut best, mut best_colours) = (0, 0);
    while Instant::now() < deadline && (best < min_changed || best_colours < min_colours) {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "{client} exited early ({status}): {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                weston.log()
            );
        }
        let shot = weston.screenshot();
        best = best.max(changed(&base, &shot));
        best_colours = best_colours.max(colours(&base, &shot));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        best >= min_changed && best_colours >= min_colours,
        "{client}: {best} pixels changed (want {min_changed}) in {best_colours} colours (want \
         {min_colours}); client said: {}\nweston: {}",
        String::from_utf8_lossy(&out.stderr),
        weston.log()
    );
}

#[test]
fn weston_simple_shm_through_the_proxy() {
    // simple-shm draws a 250x250 window.
    demo_client_shows("weston-simple-shm", IdLayout::TwentyEight, 200 * 200, 32);
}

#[test]
fn weston_simple_shm_through_the_proxy_with_4_slot_sends() {
    demo_client_shows("weston-simple-shm", IdLayout::Four, 200 * 200, 32);
}

#[test]
fn weston_simple_damage_through_the_proxy() {
    // simple-damage: a ball on a flat background, about 20 colours.
    demo_client_shows("weston-simple-damage", IdLayout::TwentyEight, 100 * 100, 8);
}
