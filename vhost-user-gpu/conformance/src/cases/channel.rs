//! Cross-domain Wayland channel cases: one per released command layout (INIT in 16, 20 and
//! 24 bytes, with and without a channel; POLL in 8 and 16 bytes; SEND with 4 and 28
//! identifier slots; WRITE; the RECEIVE and READ events in the guest's layout), and the
//! hostile ones. `CROSS-DOMAIN.md` says who sends which layout.
//!
//! Our backend runs with `--wayland-socket` naming a socket this process listens on and
//! answers as the compositor would (the real weston is in `tests/wayland_channel.rs` and the
//! `wayland` VM lane); other backends have no such option (the cases need our command line).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType,
};

use super::blob::CTX_ID;
use super::two_d::Backing;
use super::{ctrl, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::cross_domain::{self as xd, Event};
use crate::frontend::{Frontend, CONTROL_QUEUE};
use crate::gpu::{self, features, ty, Resp};

const QUERY_RES: u32 = 200;
const CHANNEL_RES: u32 = 201;
/// How long an answer that must not come yet is waited for.
const NOT_YET: Duration = Duration::from_millis(300);

pub(super) fn cases() -> Vec<Case> {
    let need = || {
        Need::All(vec![
            Need::OurCommandLine,
            Need::Features(features::CONTEXT_INIT | features::RESOURCE_BLOB),
        ])
    };
    let case = |name, run| Case {
        name,
        need: need(),
        run,
    };
    vec![
        case(
            "xdomain::capset_names_the_channel_only_with_a_socket",
            capset,
        ),
        case("xdomain::init_16_without_channel_allocates", init16_alloc),
        case("xdomain::init_24_without_channel_allocates", init24_alloc),
        case("xdomain::init_16_channel_on_one_ring", init16_channel),
        case("xdomain::init_20_channel_on_two_rings", init20_channel),
        case("xdomain::init_24_channel_versioned", init24_channel),
        case("xdomain::poll_8_and_16_one_event_per_fence", poll_sizes),
        case("xdomain::send_4_slots_and_receive_in_4", send4),
        case("xdomain::send_28_slots_with_a_host_blob", send28),
        case("xdomain::write_and_read_pipes", pipes),
        case("xdomain::hostile_channel_commands", hostile),
        case("xdomain::compositor_hang_up", hang_up),
        case(
            "xdomain::upgrade_refused_while_a_channel_is_open",
            upgrade_refused_with_a_channel,
        ),
    ]
}

/// The test's compositor socket.
struct Compositor {
    dir: tempfile::TempDir,
    listener: OwnedFd,
}

impl Compositor {
    fn new() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None)
            .map_err(|e| e.to_string())?;
        let addr = SocketAddrUnix::new(dir.path().join("wayland-c")).map_err(|e| e.to_string())?;
        rustix::net::bind(&listener, &addr).map_err(|e| e.to_string())?;
        rustix::net::listen(&listener, 16).map_err(|e| e.to_string())?;
        Ok(Compositor { dir, listener })
    }

    fn path(&self) -> String {
        self.dir.path().join("wayland-c").display().to_string()
    }

    /// The connection the backend opened for a channel (within 5 s).
    fn accept(&self, fe: &Frontend) -> Result<OwnedFd, String> {
        if !readable(self.listener.as_fd(), Duration::from_secs(5)) {
            return Err(crate::suite::with_log(
                fe,
                "the backend opened no compositor connection".into(),
            ));
        }
        rustix::net::accept(&self.listener).map_err(|e| e.to_string())
    }

    /// Whether a connection waits (none should after a refused INIT).
    fn pending(&self) -> bool {
        readable(self.listener.as_fd(), Duration::ZERO)
    }
}

fn readable(fd: BorrowedFd<'_>, wait: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
        fd,
        rustix::event::PollFlags::IN,
    )];
    let t = rustix::event::Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    rustix::event::poll(&mut fds, Some(&t)).unwrap_or(0) == 1
}

/// What the compositor reads (waits up to `wait`).
fn recv(client: &OwnedFd, wait: Duration) -> (Vec<u8>, Vec<OwnedFd>) {
    if !readable(client.as_fd(), wait) {
        return (Vec::new(), Vec::new());
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = rustix::net::recvmsg(
        client,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::DONTWAIT,
    )
    .map(|m| m.bytes)
    .unwrap_or(0);
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    buf.truncate(n);
    (buf, fds)
}

fn send(client: &OwnedFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), String> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err("too many fds".into());
    }
    rustix::net::sendmsg(
        client,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::empty(),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// A cross-domain context with two ring pages (GUEST blobs, attached).
struct Rings {
    query: Backing,
    channel: Backing,
    next_fence: u64,
}

impl Rings {
    fn new(fe: &mut Frontend) -> Result<Self, String> {
        send_expecting(
            fe,
            "CTX_CREATE (cross-domain)",
            gpu::ctx_create(CTX_ID, gpu::CAPSET_CROSS_DOMAIN, "wayland"),
            ty::OK_NODATA,
        )?;
        let mut page = |id| -> Result<Backing, String> {
            let b = Backing::new(fe, 4096)?;
            send_expecting(
                fe,
                "RESOURCE_CREATE_BLOB (ring)",
                gpu::resource_create_blob(
                    CTX_ID,
                    id,
                    gpu::BLOB_MEM_GUEST,
                    gpu::BLOB_FLAG_MAPPABLE,
                    0,
                    4096,
                    &b.entries,
                ),
                ty::OK_NODATA,
            )?;
            send_expecting(
                fe,
                "CTX_ATTACH_RESOURCE (ring)",
                gpu::ctx_attach_resource(CTX_ID, id),
                ty::OK_NODATA,
            )?;
            Ok(b)
        };
        Ok(Rings {
            query: page(QUERY_RES)?,
            channel: page(CHANNEL_RES)?,
            next_fence: 1,
        })
    }

    fn submit(&self, fe: &mut Frontend, what: &str, cmd: &[u8]) -> Result<Resp, String> {
        ctrl(fe, what, gpu::submit_3d(CTX_ID, cmd))
    }

    fn submit_ok(&self, fe: &mut Frontend, what: &str, cmd: &[u8]) -> CaseResult {
        send_expecting(fe, what, gpu::submit_3d(CTX_ID, cmd), ty::OK_NODATA).map(drop)
    }

    /// Sends a fenced POLL on the channel ring; returns its head.
    fn poll(&mut self, fe: &mut Frontend, size: u16) -> Result<(u16, u64), String> {
        let fence = self.next_fence;
        self.next_fence += 1;
        let cmd = gpu::submit_3d(CTX_ID, &xd::poll(size)).fence(fence, Some(xd::CHANNEL_RING));
        let head = fe
            .send(CONTROL_QUEUE, &[&cmd.into_bytes()], 4096)
            .map_err(|e| e.to_string())?;
        Ok((head, fence))
    }

    /// The event in `ring` once the POLL `head` was answered (within 5 s).
    fn event(
        &self,
        fe: &mut Frontend,
        (head, fence): (u16, u64),
        ring: &Backing,
    ) -> Result<Event, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fe
                .wait_within(CONTROL_QUEUE, Duration::from_millis(200))
                .map_err(|e| e.to_string())?
            {
                Some((h, bytes)) if h == head => {
                    let r = Resp::parse(&bytes).map_err(|e| e.to_string())?;
                    ensure(fe, r.ty == ty::OK_NODATA && r.fence_id == fence, || {
                        format!("POLL answered {} fence {}", r.name(), r.fence_id)
                    })?;
                    break;
                }
                Some(_) => {}
                None if Instant::now() < deadline => {}
                None => {
                    return Err(crate::suite::with_log(
                        fe,
                        "the POLL was not answered within 5 s of the compositor's bytes".into(),
                    ))
                }
            }
        }
        let bytes = ring.read(fe, 4096)?;
        xd::parse_event(&bytes).map_err(|e| crate::suite::with_log(fe, e.to_string()))
    }

    /// Requires that the POLL `head` is not answered yet.
    fn not_yet(&self, fe: &mut Frontend, head: u16) -> CaseResult {
        match fe
            .wait_within(CONTROL_QUEUE, NOT_YET)
            .map_err(|e| e.to_string())?
        {
            Some((h, _)) if h == head => Err(crate::suite::with_log(
                fe,
                "a POLL was answered before any event".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Our backend with `--wayland-socket` on a test compositor. The backend checks at start-up
/// that a compositor answers (one connection, closed at once): that one is taken here.
fn spawn(harness: &Harness, compositor: &Compositor) -> Result<Frontend, String> {
    let fe = harness
        .spawn_with(&["--wayland-socket", &compositor.path()])
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let probe = compositor.accept(&fe)?;
    let (data, _) = recv(&probe, Duration::from_secs(5));
    ensure(&fe, data.is_empty(), || {
        format!("the start-up check sent {data:?}")
    })?;
    Ok(fe)
}

fn capabilities(fe: &mut Frontend) -> Result<Vec<u8>, String> {
    Ok(send_expecting(
        fe,
        "GET_CAPSET cross-domain",
        gpu::get_capset(gpu::CAPSET_CROSS_DOMAIN, 0),
        ty::OK_CAPSET,
    )?
    .body)
}

fn word(b: &[u8], i: usize) -> u32 {
    b.get(4 * i..4 * i + 4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

fn capset(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let mut fe = spawn(harness, &c)?;
    let caps = capabilities(&mut fe)?;
    ensure(&fe, word(&caps, 1) == 1 << xd::CHANNEL_TYPE_WAYLAND, || {
        format!("supported_channels {:#x} with a socket", word(&caps, 1))
    })?;
    ensure(&fe, word(&caps, 3) == 1, || {
        "supports_external_gpu_memory 0 without a virgl renderer: minigbm would fall back to \
         virgl"
            .into()
    })?;
    drop(fe);
    let mut fe = harness
        .spawn_with(&["--wayland-socket", "off"])
        .map_err(|e| e.to_string())?;
    let caps = capabilities(&mut fe)?;
    ensure(&fe, word(&caps, 1) == 0, || {
        format!("supported_channels {:#x} without a socket", word(&caps, 1))
    })?;
    let rings = Rings::new(&mut fe)?;
    let r = rings.submit(
        &mut fe,
        "INIT with a channel, no socket",
        &xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    ensure(&fe, r.ty == ty::ERR_INVALID_PARAMETER, || {
        format!("INIT with a channel and no socket answered {}", r.name())
    })?;
    still_serving(&mut fe)
}

/// INIT without a channel, then an allocation through the query ring (what minigbm does).
fn alloc_after(rings: &Rings, fe: &mut Frontend, init: &[u8], what: &str) -> CaseResult {
    rings.submit_ok(fe, what, init)?;
    fe.ram()
        .write(rings.query.entries[0].addr, &[0xee; 64])
        .map_err(|e| e.to_string())?;
    send_expecting(
        fe,
        "GET_IMAGE_REQUIREMENTS",
        gpu::submit_3d(
            CTX_ID,
            &xd::get_image_requirements(64, 64, xd::DRM_FORMAT_ARGB8888, 0),
        )
        .fence(1, Some(xd::QUERY_RING)),
        ty::OK_NODATA,
    )?;
    let reqs =
        xd::ImageRequirements::parse(&rings.query.read(fe, 64)?).map_err(|e| e.to_string())?;
    ensure(
        fe,
        reqs.size >= 64 * 64 * 4 && reqs.blob_id != 0xeeee_eeee,
        || format!("{what}: implausible requirements {reqs:?}"),
    )?;
    send_expecting(
        fe,
        "RESOURCE_CREATE_BLOB (HOST3D)",
        gpu::resource_create_blob(
            CTX_ID,
            300,
            gpu::BLOB_MEM_HOST3D,
            gpu::BLOB_FLAG_MAPPABLE,
            u64::from(reqs.blob_id),
            reqs.size,
            &[],
        ),
        ty::OK_NODATA,
    )?;
    still_serving(fe)
}

fn init16_alloc(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let mut fe = spawn(harness, &c)?;
    let rings = Rings::new(&mut fe)?;
    alloc_after(
        &rings,
        &mut fe,
        &xd::init_one_ring(QUERY_RES, 0),
        "16-byte INIT (minigbm)",
    )?;
    ensure(&fe, !c.pending(), || {
        "INIT without a channel connected".into()
    })
}

fn init24_alloc(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let mut fe = spawn(harness, &c)?;
    let rings = Rings::new(&mut fe)?;
    alloc_after(
        &rings,
        &mut fe,
        &xd::init_versioned(QUERY_RES, CHANNEL_RES, 0, 1),
        "24-byte INIT",
    )
}

/// INIT `cmd` opens a channel whose events land in `ring`.
fn channel_events_land(harness: &Harness, cmd: fn() -> Vec<u8>, one_ring: bool) -> CaseResult {
    let c = Compositor::new()?;
    let mut fe = spawn(harness, &c)?;
    let mut rings = Rings::new(&mut fe)?;
    rings.submit_ok(&mut fe, "INIT with a channel", &cmd())?;
    let client = c.accept(&fe)?;
    let poll = rings.poll(&mut fe, 16)?;
    rings.not_yet(&mut fe, poll.0)?;
    send(&client, b"wl_display.delete_id", &[])?;
    let ring = if one_ring {
        &rings.query
    } else {
        &rings.channel
    };
    let ev = rings.event(&mut fe, poll, ring)?;
    ensure(
        &fe,
        ev == Event::Receive {
            slots: 28,
            ids: vec![],
            data: b"wl_display.delete_id".to_vec(),
        },
        || format!("event {ev:?}"),
    )?;
    still_serving(&mut fe)
}

fn init16_channel(harness: &Harness) -> CaseResult {
    channel_events_land(
        harness,
        || xd::init_one_ring(QUERY_RES, xd::CHANNEL_TYPE_WAYLAND),
        true,
    )
}

fn init20_channel(harness: &Harness) -> CaseResult {
    channel_events_land(
        harness,
        || xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
        false,
    )
}

fn init24_channel(harness: &Harness) -> CaseResult {
    channel_events_land(
        harness,
        || xd::init_versioned(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND, 1),
        false,
    )
}

/// A context with an open channel and the compositor's end of it.
fn open(harness: &Harness, c: &Compositor) -> Result<(Frontend, Rings, OwnedFd), String> {
    let mut fe = spawn(harness, c)?;
    let rings = Rings::new(&mut fe)?;
    rings.submit_ok(
        &mut fe,
        "INIT with a channel",
        &xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    let client = c.accept(&fe)?;
    Ok((fe, rings, client))
}

fn poll_sizes(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let (mut fe, mut rings, client) = open(harness, &c)?;
    for (size, msg) in [(8u16, &b"first"[..]), (16, &b"second"[..])] {
        let poll = rings.poll(&mut fe, size)?;
        rings.not_yet(&mut fe, poll.0)?;
        send(&client, msg, &[])?;
        let ev = rings.event(&mut fe, poll, &rings.channel)?;
        ensure(
            &fe,
            matches!(&ev, Event::Receive { data, .. } if data == msg),
            || format!("{size}-byte POLL: event {ev:?}"),
        )?;
    }
    // Other sizes are no POLL layout.
    let mut odd = xd::poll(16);
    odd.extend_from_slice(&[0; 8]);
    odd[2] = 24;
    let r = rings.submit(&mut fe, "24-byte POLL", &odd)?;
    ensure(&fe, r.ty == ty::ERR_INVALID_PARAMETER, || {
        format!("a 24-byte POLL answered {}", r.name())
    })?;
    still_serving(&mut fe)
}

fn send4(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let (mut fe, mut rings, client) = open(harness, &c)?;
    exchange_4_slots(&mut fe, &mut rings, &client, b"get_registry", b"global")?;
    let r = rings.submit(&mut fe, "SEND (28 slots) after 4", &xd::send(28, &[], b"x"))?;
    ensure(&fe, r.ty == ty::ERR_INVALID_PARAMETER, || {
        format!("mixing layouts answered {}", r.name())
    })?;
    still_serving(&mut fe)
}

/// Bytes both ways on an open channel in the 4-slot layout: `out` SENT by the guest reaches
/// the compositor, `back` from the compositor answers a POLL as a RECEIVE.
fn exchange_4_slots(
    fe: &mut Frontend,
    rings: &mut Rings,
    client: &OwnedFd,
    out: &[u8],
    back: &[u8],
) -> CaseResult {
    rings.submit_ok(fe, "SEND (4 slots)", &xd::send(4, &[], out))?;
    let (data, _) = recv(client, Duration::from_secs(5));
    ensure(fe, data == out, || format!("compositor got {data:?}"))?;
    let poll = rings.poll(fe, 16)?;
    send(client, back, &[])?;
    let ev = rings.event(fe, poll, &rings.channel)?;
    ensure(
        fe,
        ev == Event::Receive {
            slots: 4,
            ids: vec![],
            data: back.to_vec(),
        },
        || format!("a 4-slot guest got {ev:?}"),
    )
}

fn send28(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let (mut fe, rings, client) = open(harness, &c)?;
    // A HOST3D blob of the context, as the guest shadows a wl_shm pool.
    fe.ram()
        .write(rings.query.entries[0].addr, &[0xee; 64])
        .map_err(|e| e.to_string())?;
    send_expecting(
        &mut fe,
        "GET_IMAGE_REQUIREMENTS",
        gpu::submit_3d(
            CTX_ID,
            &xd::get_image_requirements(32, 32, xd::DRM_FORMAT_ARGB8888, 0),
        )
        .fence(1, Some(xd::QUERY_RING)),
        ty::OK_NODATA,
    )?;
    let reqs =
        xd::ImageRequirements::parse(&rings.query.read(&fe, 64)?).map_err(|e| e.to_string())?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_BLOB (HOST3D)",
        gpu::resource_create_blob(
            CTX_ID,
            300,
            gpu::BLOB_MEM_HOST3D,
            gpu::BLOB_FLAG_MAPPABLE | gpu::BLOB_FLAG_SHAREABLE,
            u64::from(reqs.blob_id),
            reqs.size,
            &[],
        ),
        ty::OK_NODATA,
    )?;
    rings.submit_ok(
        &mut fe,
        "SEND (28 slots) with the blob",
        &xd::send(28, &[(300, xd::ID_VIRTGPU_BLOB)], b"create_pool"),
    )?;
    let (data, fds) = recv(&client, Duration::from_secs(5));
    ensure(&fe, data == b"create_pool" && fds.len() == 1, || {
        format!("compositor got {data:?} with {} fds", fds.len())
    })?;
    let size = rustix::fs::fstat(&fds[0])
        .map(|s| s.st_size as u64)
        .unwrap_or(0);
    ensure(&fe, size == reqs.size, || {
        format!("the fd has {size} bytes, the blob {}", reqs.size)
    })?;
    still_serving(&mut fe)
}

fn pipes(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let mut fe = spawn(harness, &c)?;
    let before = fe.backend_stats().map_err(|e| e.to_string())?;
    let mut rings = Rings::new(&mut fe)?;
    rings.submit_ok(
        &mut fe,
        "INIT with a channel",
        &xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    let client = c.accept(&fe)?;
    // The count below sees the channel: its connection and its wait fd at least.
    let open = fe.backend_stats().map_err(|e| e.to_string())?;
    ensure(&fe, open.fds >= before.fds + 2, || {
        format!(
            "the backend holds {} fds with a channel open, {} before",
            open.fds, before.fds
        )
    })?;
    // A read pipe the guest names: the compositor writes, READ events come.
    let id = 0x8000_0007;
    rings.submit_ok(
        &mut fe,
        "SEND with a read pipe",
        &xd::send(28, &[(id, xd::ID_READ_PIPE)], b"receive"),
    )?;
    let (_, mut fds) = recv(&client, Duration::from_secs(5));
    let write_end = fds.pop().ok_or("no pipe reached the compositor")?;
    rustix::io::write(&write_end, b"selection").map_err(|e| e.to_string())?;
    drop(write_end);
    let mut got = Vec::new();
    let mut hung_up = false;
    for _ in 0..3 {
        if hung_up {
            break;
        }
        let poll = rings.poll(&mut fe, 16)?;
        match rings.event(&mut fe, poll, &rings.channel)? {
            Event::Read {
                id: i,
                hang_up,
                data,
            } if i == id => {
                got.extend(data);
                hung_up = hang_up;
            }
            other => return Err(format!("event {other:?} for a read pipe")),
        }
    }
    ensure(&fe, got == b"selection" && hung_up, || {
        format!("READ events carried {got:?}, hang_up {hung_up}")
    })?;
    // A write pipe the compositor hands over: WRITE reaches it, hang_up closes it.
    let (r, w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
    let poll = rings.poll(&mut fe, 16)?;
    send(&client, b"send", &[w.as_fd()])?;
    drop(w);
    let ev = rings.event(&mut fe, poll, &rings.channel)?;
    let Event::Receive { ids, .. } = &ev else {
        return Err(format!("event {ev:?}"));
    };
    let Some(&(pipe, xd::ID_WRITE_PIPE, _)) = ids.first() else {
        return Err(format!("no write pipe in {ev:?}"));
    };
    rings.submit_ok(&mut fe, "WRITE", &xd::write(pipe, true, b"copied"))?;
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&r, &mut buf).map_err(|e| e.to_string())?;
    let eof = rustix::io::read(&r, &mut buf).map_err(|e| e.to_string())?;
    ensure(&fe, &buf[..n] == b"copied" && eof == 0, || {
        format!("the pipe read {:?} then {eof} bytes", &buf[..n])
    })?;
    // The context goes, and every fd its channel held (connection, wait fd, pipes) with it.
    send_expecting(
        &mut fe,
        "CTX_DESTROY",
        gpu::ctx_destroy(CTX_ID),
        ty::OK_NODATA,
    )?;
    for id in [QUERY_RES, CHANNEL_RES] {
        send_expecting(
            &mut fe,
            "RESOURCE_UNREF (ring)",
            gpu::resource_unref(id),
            ty::OK_NODATA,
        )?;
    }
    super::blob::no_leaks(&mut fe, &before)?;
    drop(client);
    still_serving(&mut fe)
}

fn hostile(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let mut fe = spawn(harness, &c)?;
    let rings = Rings::new(&mut fe)?;
    let inval = |fe: &mut Frontend, what: &str, cmd: Vec<u8>| -> CaseResult {
        let r = rings.submit(fe, what, &cmd)?;
        ensure(
            fe,
            r.ty == ty::ERR_INVALID_PARAMETER || r.ty == ty::ERR_INVALID_RESOURCE_ID,
            || format!("{what} answered {}", r.name()),
        )
    };
    // INITs no guest sends, channels not served, rings that are no rings.
    let mut internal = vec![0u8; 36];
    internal[0] = xd::CMD_INIT;
    internal[2] = 36;
    inval(
        &mut fe,
        "36-byte INIT (rutabaga's internal socket)",
        internal,
    )?;
    inval(
        &mut fe,
        "INIT for X11 (0x11)",
        xd::init(QUERY_RES, CHANNEL_RES, 0x11),
    )?;
    inval(
        &mut fe,
        "INIT with protocol_version 2",
        xd::init_versioned(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND, 2),
    )?;
    inval(
        &mut fe,
        "INIT with an unknown channel ring",
        xd::init(QUERY_RES, 999, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    ensure(&fe, !c.pending(), || {
        "a refused INIT connected to the compositor".into()
    })?;
    // Channel commands before any channel.
    inval(&mut fe, "POLL without a channel", xd::poll(16))?;
    inval(&mut fe, "SEND without a channel", xd::send(28, &[], b"x"))?;
    // With a channel: the guest's mistakes, and host-to-guest commands.
    rings.submit_ok(
        &mut fe,
        "INIT with a channel",
        &xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    let client = c.accept(&fe)?;
    inval(
        &mut fe,
        "second INIT with a channel",
        xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    inval(
        &mut fe,
        "SEND of a resource the context does not have",
        xd::send(28, &[(4242, xd::ID_VIRTGPU_BLOB)], b"x"),
    )?;
    // A GUEST blob (here the query ring) has a host fd only where udmabuf exports it: then
    // the compositor gets it (as rutabaga cannot), else the SEND is refused.
    let ring_send = xd::send(28, &[(QUERY_RES, xd::ID_VIRTGPU_BLOB)], b"x");
    if std::path::Path::new("/dev/udmabuf").exists() {
        rings.submit_ok(&mut fe, "SEND of a GUEST blob udmabuf exports", &ring_send)?;
        let (data, fds) = recv(&client, Duration::from_secs(5));
        ensure(&fe, data == b"x" && fds.len() == 1, || {
            format!(
                "a SEND of an exported GUEST blob reached the compositor as {data:?} with {} fds",
                fds.len()
            )
        })?;
    } else {
        inval(
            &mut fe,
            "SEND of a ring (GUEST blob, no host fd)",
            ring_send,
        )?;
    }
    inval(
        &mut fe,
        "SEND with identifier type 6",
        xd::send(28, &[(1, 6)], b"x"),
    )?;
    inval(
        &mut fe,
        "SEND with read pipe id 3",
        xd::send(28, &[(3, xd::ID_READ_PIPE)], b"x"),
    )?;
    let mut too_many = xd::send(4, &[], b"x");
    too_many[8] = 5;
    inval(&mut fe, "SEND with 5 of 4 identifiers", too_many)?;
    let mut bad_size = xd::send(28, &[], b"abc");
    bad_size[12] = 200;
    inval(&mut fe, "SEND whose sizes disagree", bad_size)?;
    inval(&mut fe, "WRITE to no pipe", xd::write(77, false, b"x"))?;
    let mut hang = xd::write(77, false, b"x");
    hang[12] = 2;
    inval(&mut fe, "WRITE with hang_up 2", hang)?;
    let mut receive = xd::send(28, &[], b"x");
    receive[0] = xd::CMD_RECEIVE;
    inval(&mut fe, "RECEIVE from the guest", receive)?;
    let mut futex = xd::poll(16);
    futex[0] = 8;
    inval(&mut fe, "command 8", futex)?;
    let (data, fds) = recv(&client, NOT_YET);
    ensure(&fe, data.is_empty() && fds.is_empty(), || {
        format!("refused commands sent {data:?} and {} fds", fds.len())
    })?;
    // A fence on the channel ring of another context, without a channel, does not wait.
    send_expecting(
        &mut fe,
        "CTX_CREATE 2",
        gpu::ctx_create(2, gpu::CAPSET_CROSS_DOMAIN, "no channel"),
        ty::OK_NODATA,
    )?;
    let r = ctrl(
        &mut fe,
        "fenced SUBMIT_3D on ring 1 without a channel",
        gpu::submit_3d(2, &xd::get_image_requirements(1, 1, 0, 0)).fence(9, Some(xd::CHANNEL_RING)),
    )?;
    ensure(&fe, r.fence_id == 9, || "fence not echoed".into())?;
    still_serving(&mut fe)
}

fn hang_up(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let (mut fe, mut rings, client) = open(harness, &c)?;
    let poll = rings.poll(&mut fe, 16)?;
    drop(client);
    let ev = rings.event(&mut fe, poll, &rings.channel)?;
    ensure(
        &fe,
        ev == Event::Receive {
            slots: 28,
            ids: vec![],
            data: vec![],
        },
        || format!("hang-up event {ev:?}"),
    )?;
    let r = rings.submit(&mut fe, "SEND after the hang-up", &xd::send(28, &[], b"x"))?;
    ensure(&fe, r.ty >= ty::ERR_UNSPEC, || {
        format!("SEND to a closed compositor answered {}", r.name())
    })?;
    // A POLL now waits for nothing; destroying the context answers it.
    let poll = rings.poll(&mut fe, 16)?;
    rings.not_yet(&mut fe, poll.0)?;
    let destroy = gpu::ctx_destroy(CTX_ID).into_bytes();
    let head = fe
        .send(CONTROL_QUEUE, &[&destroy], 4096)
        .map_err(|e| e.to_string())?;
    let mut answered = Vec::new();
    while answered.len() < 2 {
        match fe
            .wait_within(CONTROL_QUEUE, Duration::from_secs(5))
            .map_err(|e| e.to_string())?
        {
            Some((h, _)) => answered.push(h),
            None => break,
        }
    }
    ensure(
        &fe,
        answered.contains(&poll.0) && answered.contains(&head),
        || format!("answered heads {answered:?}, want the POLL and CTX_DESTROY"),
    )?;
    still_serving(&mut fe)
}

/// Takes the start-up check of a new backend process (one connection that sends nothing),
/// if one came within `wait`.
fn take_probe(fe: &Frontend, c: &Compositor, wait: Duration) -> CaseResult {
    if !readable(c.listener.as_fd(), wait) {
        return Ok(());
    }
    let probe = rustix::net::accept(&c.listener).map_err(|e| e.to_string())?;
    let (data, _) = recv(&probe, Duration::from_secs(5));
    ensure(fe, data.is_empty(), || {
        format!("a new process's start-up check sent {data:?}")
    })
}

/// A live upgrade while a guest context has a Wayland channel is refused by design (the
/// compositor connection holds the client's protocol state, which no second connection can
/// take over; DESIGN-lifecycle.md 4.7): the new process exits with the reason, the old one
/// serves on with the channel working, the compositor sees no second connection from the
/// handover. The same context before its channel opened, and the device after the context
/// (and its channel) went, upgrade.
fn upgrade_refused_with_a_channel(harness: &Harness) -> CaseResult {
    let c = Compositor::new()?;
    let options = crate::frontend::FrontendOptions {
        control_socket: true,
        ..crate::frontend::FrontendOptions::default()
    };
    let mut fe = harness
        .spawn_with_options(&["--wayland-socket", &c.path()], options)
        .map_err(|e| format!("cannot start backend: {e}"))?;
    take_probe(&fe, &c, Duration::from_secs(5))?;
    let rings = Rings::new(&mut fe)?;
    // No channel yet: the context moves.
    fe.upgrade()
        .map_err(|e| super::case_error(&fe, "upgrade with a context and no channel", e))?;
    take_probe(&fe, &c, Duration::from_secs(5))?;
    rings.submit_ok(
        &mut fe,
        "INIT with a channel after the upgrade",
        &xd::init(QUERY_RES, CHANNEL_RES, xd::CHANNEL_TYPE_WAYLAND),
    )?;
    let client = c.accept(&fe)?;
    let pid = fe.backend_pid();
    super::upgrade::upgrade_fails(&mut fe, "upgrade with a Wayland channel open")?;
    let same = fe.backend_pid() == pid && fe.backend_alive();
    ensure(&fe, same, || {
        "the old backend is gone after the refused upgrade".into()
    })?;
    let log = fe.backend_log();
    ensure(
        &fe,
        log.contains("upgrade refused: ") && log.contains("have a Wayland channel"),
        || "the log does not say the handover was refused for the channel".into(),
    )?;
    // Whatever the refused new process did at start-up, the channel's connection is the
    // only one that carries anything.
    take_probe(&fe, &c, Duration::from_millis(300))?;
    let mut rings = rings;
    exchange_4_slots(&mut fe, &mut rings, &client, b"still", b"here")
        .map_err(|e| format!("after the refused upgrade: {e}"))?;
    // The channel goes with its context; then the device moves again.
    send_expecting(
        &mut fe,
        "CTX_DESTROY (closes the channel)",
        gpu::ctx_destroy(CTX_ID),
        ty::OK_NODATA,
    )?;
    fe.upgrade()
        .map_err(|e| super::case_error(&fe, "upgrade after the channel closed", e))?;
    take_probe(&fe, &c, Duration::from_secs(5))?;
    still_serving(&mut fe)
}
