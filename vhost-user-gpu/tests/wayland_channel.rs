//! The host end of the cross-domain Wayland channel against a real compositor: Debian's
//! weston (headless backend, pixman renderer). The test plays the guest: it speaks the Wayland
//! wire protocol inside cross-domain SEND commands (both identifier layouts) and reads the
//! compositor's answers from the RECEIVE events the channel produces, exactly as a guest proxy
//! reads them from its channel ring. Buffers are memfds handed out through the channel's
//! `BlobExporter` port, as the device hands out its host buffers.

mod weston;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use vhost_user_gpu::device::budget::{Budget, Kind, Usage};
use vhost_user_gpu::device::ports::{BlobExporter, Channel, ChannelError};
use vhost_user_gpu::protocol::cross_domain::{
    IdLayout, Identifier, SendReceive, CMD_RECEIVE, ID_TYPE_VIRTGPU_BLOB,
};
use vhost_user_gpu::wayland::{ChannelLimits, WaylandChannel};
use weston::Weston;

fn send_cmd(layout: IdLayout, ids: &[Identifier], data: &[u8]) -> SendReceive {
    SendReceive {
        layout,
        identifiers: ids.to_vec(),
        data: data.to_vec(),
    }
}

/// Resource ids the "guest" owns: each one a memfd the test also writes into.
struct Resources(Vec<(u32, OwnedFd)>);

impl BlobExporter for Resources {
    fn export_blob(&mut self, resource_id: u32) -> Result<OwnedFd, String> {
        let (_, fd) = self
            .0
            .iter()
            .find(|(id, _)| *id == resource_id)
            .ok_or_else(|| format!("resource {resource_id} is not attached"))?;
        fd.try_clone().map_err(|e| e.to_string())
    }
}

/// Wayland wire encoding (little-endian words; strings with their NUL, padded to 4).
struct Msg(Vec<u8>);

impl Msg {
    fn new(object: u32, opcode: u16) -> Msg {
        let mut m = Msg(Vec::new());
        m.uint(object);
        m.uint(u32::from(opcode));
        m
    }
    fn uint(&mut self, v: u32) -> &mut Msg {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Msg {
        self.uint(s.len() as u32 + 1);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn done(&mut self) -> Vec<u8> {
        let size = self.0.len() as u32;
        let word = u32::from_le_bytes(self.0[4..8].try_into().unwrap());
        self.0[4..8].copy_from_slice(&((size << 16) | word).to_le_bytes());
        std::mem::take(&mut self.0)
    }
}

/// One event from the compositor.
#[derive(Debug)]
struct Event {
    object: u32,
    opcode: u16,
    args: Vec<u8>,
}

impl Event {
    fn uint(&self, index: usize) -> u32 {
        u32::from_le_bytes(self.args[4 * index..4 * index + 4].try_into().unwrap())
    }
    /// A string argument at word `index`, and the word after it.
    fn string(&self, index: usize) -> (String, usize) {
        let len = self.uint(index) as usize;
        let start = 4 * index + 4;
        let s = String::from_utf8_lossy(&self.args[start..start + len - 1]).into_owned();
        (s, index + 1 + len.div_ceil(4))
    }
}

/// The "guest": a channel, its identifier layout, and the bytes received so far.
struct Guest {
    channel: WaylandChannel,
    layout: IdLayout,
    resources: Resources,
    pending: Vec<u8>,
    next_id: u32,
}

impl Guest {
    fn new(weston: &Weston, layout: IdLayout) -> Guest {
        let budget = Budget::new(Usage::host_bytes(64 << 20).with(Kind::Fds, 64));
        let mut channel =
            WaylandChannel::connect(&weston.socket(), ChannelLimits::default(), &budget)
                .expect("connect to weston");
        channel.want_events(true).unwrap();
        Guest {
            channel,
            layout,
            resources: Resources(Vec::new()),
            pending: Vec::new(),
            next_id: 2,
        }
    }

    fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, bytes: &[u8], ids: &[Identifier]) {
        let cmd = send_cmd(self.layout, ids, bytes);
        self.channel
            .send(&cmd, &mut self.resources)
            .expect("SEND accepted");
    }

    /// Waits (at most 10 s) for the next event from the compositor, as the device would:
    /// poll the channel's fds, then take one RECEIVE.
    fn event(&mut self) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.pending.len() >= 8 {
                let size =
                    (u32::from_le_bytes(self.pending[4..8].try_into().unwrap()) >> 16) as usize;
                if self.pending.len() >= size {
                    let ev = Event {
                        object: u32::from_le_bytes(self.pending[0..4].try_into().unwrap()),
                        opcode: u16::from_le_bytes(self.pending[4..6].try_into().unwrap()),
                        args: self.pending[8..size].to_vec(),
                    };
                    self.pending.drain(..size);
                    if ev.object == 1 && ev.opcode == 0 {
                        let (msg, _) = ev.string(2);
                        panic!("wl_display.error from weston: {msg}");
                    }
                    return ev;
                }
            }
            match self.channel.next_event().expect("channel event") {
                Some(ring) => {
                    assert_eq!(ring[0], CMD_RECEIVE);
                    let n_ids = u32::from_le_bytes(ring[8..12].try_into().unwrap());
                    let size = u32::from_le_bytes(ring[12..16].try_into().unwrap()) as usize;
                    assert!(size > 0, "weston hung up");
                    assert_eq!(n_ids, 0, "no fds expected from weston in this test");
                    let header = self.layout.header_size();
                    assert_eq!(ring.len(), header + size);
                    self.pending.extend_from_slice(&ring[header..]);
                }
                None => {
                    assert!(Instant::now() < deadline, "no event from weston in 10 s");
                    // What the device does: wait on the channel's one fd.
                    let mut pollfds = [PollFd::from_borrowed_fd(
                        self.channel.wait_fd(),
                        PollFlags::IN,
                    )];
                    let timeout = Timespec {
                        tv_sec: 0,
                        tv_nsec: 100_000_000,
                    };
                    poll(&mut pollfds, Some(&timeout)).unwrap();
                }
            }
        }
    }

    /// `wl_display.sync` and wait for its `done`, handling `xdg_wm_base.ping` on the way.
    fn roundtrip(&mut self, wm_base: Option<u32>) -> Vec<Event> {
        let callback = self.new_id();
        self.send(&Msg::new(1, 0).uint(callback).done(), &[]);
        let mut seen = Vec::new();
        loop {
            let ev = self.event();
            if ev.object == callback && ev.opcode == 0 {
                return seen;
            }
            if Some(ev.object) == wm_base && ev.opcode == 0 {
                let serial = ev.uint(0);
                self.send(&Msg::new(ev.object, 3).uint(serial).done(), &[]);
                continue;
            }
            seen.push(ev);
        }
    }
}

/// (name, version) of each global weston announces.
fn globals(guest: &mut Guest, registry: u32) -> Vec<(u32, String, u32)> {
    guest.send(&Msg::new(1, 1).uint(registry).done(), &[]);
    guest
        .roundtrip(None)
        .into_iter()
        .filter(|ev| ev.object == registry && ev.opcode == 0)
        .map(|ev| {
            let (interface, next) = ev.string(1);
            (ev.uint(0), interface, ev.uint(next))
        })
        .collect()
}

fn bind(guest: &mut Guest, registry: u32, globals: &[(u32, String, u32)], interface: &str) -> u32 {
    let (name, _, version) = globals
        .iter()
        .find(|(_, i, _)| i == interface)
        .unwrap_or_else(|| panic!("weston offers no {interface}"));
    let id = guest.new_id();
    let version = (*version).min(1);
    let msg = Msg::new(registry, 0)
        .uint(*name)
        .string(interface)
        .uint(version)
        .uint(id)
        .done();
    guest.send(&msg, &[]);
    id
}

fn fill(fd: &OwnedFd, bytes_bgrx: [u8; 4], pixels: usize) {
    let data: Vec<u8> = bytes_bgrx
        .iter()
        .copied()
        .cycle()
        .take(4 * pixels)
        .collect();
    assert_eq!(rustix::io::pwrite(fd, &data, 0).unwrap(), data.len());
}

/// A 64x64 window whose pixels live in a memfd passed as a VIRTGPU_BLOB identifier; weston
/// shows them, and shows new pixels written into the same memfd later without any new buffer:
/// the compositor reads the very pages the "guest" writes, nothing was copied on the way.
fn window_shows_the_guests_pages(layout: IdLayout) {
    let weston = Weston::start(320, 240);
    let mut guest = Guest::new(&weston, layout);
    let registry = guest.new_id();
    let globals = globals(&mut guest, registry);
    let compositor = bind(&mut guest, registry, &globals, "wl_compositor");
    let shm = bind(&mut guest, registry, &globals, "wl_shm");
    let wm_base = bind(&mut guest, registry, &globals, "xdg_wm_base");

    let (w, h) = (64u32, 64u32);
    let memfd = rustix::fs::memfd_create("guest-blob", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, u64::from(w * h * 4)).unwrap();
    fill(&memfd, [0x56, 0x34, 0x12, 0xff], (w * h) as usize);
    let resource_id = 42;
    guest
        .resources
        .0
        .push((resource_id, memfd.try_clone().unwrap()));

    let surface = guest.new_id();
    guest.send(&Msg::new(compositor, 0).uint(surface).done(), &[]);
    let xdg_surface = guest.new_id();
    guest.send(
        &Msg::new(wm_base, 2).uint(xdg_surface).uint(surface).done(),
        &[],
    );
    let toplevel = guest.new_id();
    guest.send(&Msg::new(xdg_surface, 1).uint(toplevel).done(), &[]);
    guest.send(&Msg::new(surface, 6).done(), &[]);
    // Wait for the first configure, ack it.
    let serial = loop {
        let ev = guest.event();
        if ev.object == wm_base && ev.opcode == 0 {
            let ping = ev.uint(0);
            guest.send(&Msg::new(wm_base, 3).uint(ping).done(), &[]);
        } else if ev.object == xdg_surface && ev.opcode == 0 {
            break ev.uint(0);
        }
    };
    guest.send(&Msg::new(xdg_surface, 4).uint(serial).done(), &[]);

    // wl_shm.create_pool(new_id, fd, size): the fd travels as identifier `resource_id`.
    let pool = guest.new_id();
    let blob = Identifier {
        id: resource_id,
        kind: ID_TYPE_VIRTGPU_BLOB,
        size: 0,
    };
    guest.send(&Msg::new(shm, 0).uint(pool).uint(w * h * 4).done(), &[blob]);
    let buffer = guest.new_id();
    let xrgb8888 = 1;
    let msg = Msg::new(pool, 0)
        .uint(buffer)
        .uint(0)
        .uint(w)
        .uint(h)
        .uint(w * 4)
        .uint(xrgb8888)
        .done();
    guest.send(&msg, &[]);
    let commit = |guest: &mut Guest| {
        guest.send(
            &Msg::new(surface, 1).uint(buffer).uint(0).uint(0).done(),
            &[],
        );
        guest.send(
            &Msg::new(surface, 2).uint(0).uint(0).uint(w).uint(h).done(),
            &[],
        );
        guest.send(&Msg::new(surface, 6).done(), &[]);
        guest.roundtrip(Some(wm_base));
    };
    commit(&mut guest);

    let wanted = (w * h) as usize;
    let first = [0x12, 0x34, 0x56];
    let shot = wait_for_colour(&weston, first, wanted);
    assert!(shot.count(first) >= wanted, "{}", weston.log());

    // New pixels into the same pages; the compositor is only told "damaged".
    fill(&memfd, [0xcc, 0xbb, 0xaa, 0xff], (w * h) as usize);
    commit(&mut guest);
    let second = [0xaa, 0xbb, 0xcc];
    let shot = wait_for_colour(&weston, second, wanted);
    assert!(shot.count(second) >= wanted);
    assert_eq!(shot.count(first), 0, "the old pixels are gone");
}

/// Screenshots until `count` pixels of `rgb` show (weston repaints on its own clock), at
/// most 10 s; returns the last screenshot either way.
fn wait_for_colour(weston: &Weston, rgb: [u8; 3], count: usize) -> weston::Screenshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shot = weston.screenshot();
        if shot.count(rgb) >= count || Instant::now() > deadline {
            assert_eq!((shot.width, shot.height), (320, 240));
            return shot;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn weston_shows_a_window_from_28_slot_sends() {
    window_shows_the_guests_pages(IdLayout::TwentyEight);
}

#[test]
fn weston_shows_a_window_from_4_slot_sends() {
    window_shows_the_guests_pages(IdLayout::Four);
}

#[test]
fn weston_sees_its_client_go_when_the_channel_is_dropped_and_the_guest_sees_weston_go() {
    let weston = Weston::start(320, 240);
    let mut guest = Guest::new(&weston, IdLayout::TwentyEight);
    let registry = guest.new_id();
    assert!(!globals(&mut guest, registry).is_empty());
    drop(weston);
    // The hang-up arrives as one empty RECEIVE, then nothing; SEND is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ring = loop {
        if let Some(ring) = guest.channel.next_event().unwrap() {
            break ring;
        }
        assert!(Instant::now() < deadline, "no hang-up event in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(&ring[8..16], &[0; 8], "RECEIVE with no ids and no data");
    assert!(guest.channel.next_event().unwrap().is_none());
    let cmd = send_cmd(
        IdLayout::TwentyEight,
        &[],
        b"\x01\0\0\0\x0c\0\0\0\x09\0\0\0",
    );
    assert!(matches!(
        guest.channel.send(&cmd, &mut guest.resources),
        Err(ChannelError::Closed)
    ));
}

#[test]
fn a_resource_the_guest_does_not_own_is_not_sent() {
    let weston = Weston::start(320, 240);
    let mut guest = Guest::new(&weston, IdLayout::TwentyEight);
    let registry = guest.new_id();
    let globals = globals(&mut guest, registry);
    let shm = bind(&mut guest, registry, &globals, "wl_shm");
    // Not taken with new_id(): the message is refused, so weston never sees this id.
    let pool = guest.next_id;
    let blob = Identifier {
        id: 7,
        kind: ID_TYPE_VIRTGPU_BLOB,
        size: 0,
    };
    let cmd = send_cmd(
        IdLayout::TwentyEight,
        &[blob],
        &Msg::new(shm, 0).uint(pool).uint(4096).done(),
    );
    let err = guest.channel.send(&cmd, &mut guest.resources).unwrap_err();
    assert!(matches!(err, ChannelError::Export { id: 7, .. }), "{err}");
    // Nothing half-sent: the connection still works.
    // Nothing half-sent: the connection still works, and weston says nothing but the
    // wl_shm.format events of the bind and wl_display.delete_id of the last callback.
    let events = guest.roundtrip(None);
    assert!(
        events
            .iter()
            .all(|ev| (ev.object == shm && ev.opcode == 0) || (ev.object == 1 && ev.opcode == 1)),
        "{events:?}"
    );
}
