//! Cross-domain Wayland channels through the device: INIT in every layout, SEND in both
//! identifier layouts, fenced POLLs answered one event at a time, buffers the compositor
//! hands in becoming HOST3D blobs (judged, mapped read-only when sealed), and the hostile
//! cases (bad rings, foreign resources, unknown items, a compositor that stalls or leaves,
//! budgets). The device runs without sockets or virtqueues (as in `device_core.rs`); its
//! channel port is the real one (`wayland::WaylandConnector`) connected to a Unix socket the
//! test listens on and answers as the compositor.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType,
};
use vm_memory::{Bytes, FileOffset, GuestAddress};

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::ports::{GuestMemory, MapAdvice, MapAdvisor};
use vhost_user_gpu::device::{Completion, DeviceConfig, GpuDevice, Ports};
use vhost_user_gpu::protocol::cross_domain::{
    decode_event, Capabilities, ChannelEvent, CrossDomainCommand, IdLayout, Identifier,
    ImageRequirements, Init, InitLayout, PollLayout, ReadWrite, SendReceive, CHANNEL_RING,
    CHANNEL_TYPE_WAYLAND, ID_TYPE_READ_PIPE, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE,
    IMAGE_REQUIREMENTS_SIZE, PIPE_READ_START,
};
use vhost_user_gpu::protocol::{
    fourcc, CreateBlob, CtrlHeader, GpuCommand, GpuError, GpuResponse, MemEntry,
    BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D,
    CAPSET_CROSS_DOMAIN, FLAG_FENCE, FLAG_INFO_RING_IDX, MAP_CACHE_WC,
};
use vhost_user_gpu::wayland::{ChannelLimits, WaylandConnector};
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion, NoDisplay, ShmemEvent};

const PAGE: u64 = 4096;
const GUEST_RAM: u64 = 16 << 20;
/// Guest addresses of the rings of context `ctx`: query at `ring_addr(ctx)`, channel one
/// page above.
fn ring_addr(ctx: u32) -> u64 {
    0x10_0000 + u64::from(ctx) * 0x4000
}
fn query_id(ctx: u32) -> u32 {
    100 + 2 * ctx
}
fn channel_id(ctx: u32) -> u32 {
    101 + 2 * ctx
}

fn guest_ram() -> GuestMemory {
    let fd = rustix::fs::memfd_create("guest-ram", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, GUEST_RAM).unwrap();
    GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        GUEST_RAM as usize,
        Some(FileOffset::new(File::from(fd), 0)),
    )])
    .unwrap()
}

/// The test's compositor: a listening socket; each accepted connection is one channel.
struct Compositor {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: OwnedFd,
}

impl Compositor {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wayland-test");
        let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 64).unwrap();
        Compositor {
            _dir: dir,
            path,
            listener,
        }
    }

    /// The next client connection (the device connected during INIT).
    fn accept(&self) -> OwnedFd {
        rustix::net::accept(&self.listener).unwrap()
    }
}

/// Bytes and fds the compositor reads from one client (waits up to 5 s for something).
fn recv(client: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut fds = [PollFd::new(client, PollFlags::IN)];
    let t = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&t)).unwrap();
    recv_now(client)
}

fn recv_now(client: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; 1 << 16];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = match rustix::net::recvmsg(
        client,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::DONTWAIT,
    ) {
        Ok(m) => m.bytes,
        Err(rustix::io::Errno::AGAIN) => 0,
        Err(e) => panic!("{e}"),
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    (buf[..n].to_vec(), fds)
}

fn send(client: &OwnedFd, data: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let n = rustix::net::sendmsg(
        client,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, data.len());
}

struct Harness {
    dev: GpuDevice,
    mem: GuestMemory,
    region: std::sync::Arc<FrontendRegion>,
    compositor: Compositor,
    next_fence: u64,
}

impl Harness {
    fn with(config: DeviceConfig, limits: ChannelLimits) -> Self {
        Self::with_advisor(config, limits, Box::new(FixedAdvisor::allow(MAP_CACHE_WC)))
    }

    fn with_advisor(
        config: DeviceConfig,
        limits: ChannelLimits,
        advisor: Box<dyn MapAdvisor>,
    ) -> Self {
        let compositor = Compositor::new();
        let region = FrontendRegion::new(config.hostmem);
        let ports = Ports {
            allocator: Box::new(MemfdAllocator::new()),
            mapper: Box::new(FrontendMapper(region.clone())),
            display: Box::new(NoDisplay),
            advisor,
            exporter: None,
            channels: Some(Box::new(WaylandConnector::new(
                compositor.path.clone(),
                limits,
            ))),
            renderer: None,
        };
        let mut dev = GpuDevice::new(config, ports);
        dev.ack_features(dev.features());
        Harness {
            dev,
            mem: guest_ram(),
            region,
            compositor,
            next_fence: 1,
        }
    }

    fn new() -> Self {
        Self::with(
            DeviceConfig {
                hostmem: 16 << 20,
                ..DeviceConfig::default()
            },
            ChannelLimits::default(),
        )
    }

    fn process(&mut self, hdr: CtrlHeader, command: GpuCommand) -> Completion {
        let mut request = Vec::new();
        command.encode(&hdr, &mut request);
        self.dev.process_control(&self.mem, &request)
    }

    fn ctx_send(&mut self, ctx_id: u32, command: GpuCommand) -> GpuResponse {
        let hdr = CtrlHeader {
            ctx_id,
            ..CtrlHeader::default()
        };
        match self.process(hdr, command) {
            Completion::Now(r) => GpuResponse::decode(&r).unwrap().1,
            later => panic!("an unfenced command waited: {later:?}"),
        }
    }

    /// SUBMIT_3D of `commands` (no fence).
    fn submit(&mut self, ctx: u32, commands: &[CrossDomainCommand]) -> GpuResponse {
        let mut buf = Vec::new();
        for c in commands {
            c.encode(&mut buf);
        }
        self.ctx_send(ctx, GpuCommand::Submit3d { commands: buf })
    }

    /// A fenced SUBMIT_3D of `command` on `ring` (as the driver sends an EXECBUFFER with
    /// RING_IDX).
    fn submit_fenced(&mut self, ctx: u32, ring: u8, command: &CrossDomainCommand) -> Completion {
        let fence_id = self.next_fence;
        self.next_fence += 1;
        let hdr = CtrlHeader {
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            fence_id,
            ctx_id: ctx,
            ring_idx: ring,
            ..CtrlHeader::default()
        };
        self.process(
            hdr,
            GpuCommand::Submit3d {
                commands: command.to_bytes(),
            },
        )
    }

    fn poll_fenced(&mut self, ctx: u32) -> Completion {
        self.submit_fenced(
            ctx,
            CHANNEL_RING as u8,
            &CrossDomainCommand::Poll(PollLayout::Padded),
        )
    }

    fn guest_blob(&mut self, ctx: u32, id: u32, addr: u64, pages: u64) -> GpuResponse {
        self.ctx_send(
            ctx,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: id,
                blob_mem: BLOB_MEM_GUEST,
                blob_flags: BLOB_FLAG_USE_MAPPABLE,
                blob_id: 0,
                size: pages * PAGE,
                entries: vec![MemEntry {
                    addr,
                    length: (pages * PAGE) as u32,
                }],
            }),
        )
    }

    fn context(&mut self, ctx: u32) {
        let r = self.ctx_send(
            ctx,
            GpuCommand::CtxCreate {
                context_init: CAPSET_CROSS_DOMAIN,
                debug_name: "wayland".into(),
            },
        );
        assert_eq!(r, GpuResponse::OkNoData);
        assert_eq!(
            self.guest_blob(ctx, query_id(ctx), ring_addr(ctx), 1),
            GpuResponse::OkNoData
        );
        assert_eq!(
            self.guest_blob(ctx, channel_id(ctx), ring_addr(ctx) + PAGE, 1),
            GpuResponse::OkNoData
        );
    }

    fn init(&mut self, ctx: u32, layout: InitLayout) -> GpuResponse {
        let channel = if layout == InitLayout::OneRing {
            query_id(ctx)
        } else {
            channel_id(ctx)
        };
        self.submit(
            ctx,
            &[CrossDomainCommand::Init(Init {
                layout,
                query_ring_id: query_id(ctx),
                channel_ring_id: channel,
                channel_type: CHANNEL_TYPE_WAYLAND,
                protocol_version: u32::from(layout == InitLayout::Versioned),
            })],
        )
    }

    /// A context with a Wayland channel (20-byte INIT) and the compositor's end of it.
    fn channel(&mut self, ctx: u32) -> OwnedFd {
        self.context(ctx);
        assert_eq!(self.init(ctx, InitLayout::TwoRings), GpuResponse::OkNoData);
        self.compositor.accept()
    }

    fn channel_ring(&self, ctx: u32, layout: InitLayout) -> Vec<u8> {
        let addr = if layout == InitLayout::OneRing {
            ring_addr(ctx)
        } else {
            ring_addr(ctx) + PAGE
        };
        let mut out = vec![0u8; PAGE as usize];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    /// Whether the device's event fd is readable now.
    fn woken(&self) -> bool {
        let fd = self.dev.event_fd().expect("the device's event fd");
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    /// Waits (at most 5 s) on the device's event fd and services it until `token` is
    /// answered.
    fn wait_for(&mut self, token: vhost_user_gpu::device::FenceToken) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.dev.service(&self.mem).contains(&token) {
                return;
            }
            assert!(Instant::now() < deadline, "fence {token:?} never answered");
            let fd = self.dev.event_fd().expect("the device's event fd");
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let t = Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            poll(&mut fds, Some(&t)).unwrap();
        }
    }

    fn image_blob(&mut self, ctx: u32, id: u32) -> ImageRequirements {
        let r = self.submit(
            ctx,
            &[CrossDomainCommand::GetImageRequirements {
                width: 64,
                height: 64,
                drm_format: fourcc::XRGB8888,
                flags: 0,
            }],
        );
        assert_eq!(r, GpuResponse::OkNoData);
        let mut raw = vec![0u8; IMAGE_REQUIREMENTS_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(ring_addr(ctx)))
            .unwrap();
        let reqs = ImageRequirements::decode(&raw).unwrap();
        let r = self.host_blob(ctx, id, reqs.blob_id.into(), reqs.size);
        assert_eq!(r, GpuResponse::OkNoData);
        reqs
    }

    fn host_blob(&mut self, ctx: u32, id: u32, blob_id: u64, size: u64) -> GpuResponse {
        self.ctx_send(
            ctx,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: id,
                blob_mem: BLOB_MEM_HOST3D,
                blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
                blob_id,
                size,
                entries: vec![],
            }),
        )
    }
}

impl Harness {
    /// A fenced POLL, answered now or once its event arrived: the ring then holds it.
    fn poll_answered(&mut self, ctx: u32) {
        if let Completion::Later { token, .. } = self.poll_fenced(ctx) {
            self.wait_for(token);
        }
    }
}

fn later(c: Completion) -> vhost_user_gpu::device::FenceToken {
    match c {
        Completion::Later { token, response } => {
            assert_eq!(
                GpuResponse::decode(&response).unwrap().1,
                GpuResponse::OkNoData
            );
            token
        }
        Completion::Now(r) => panic!("answered at once: {:?}", GpuResponse::decode(&r)),
    }
}

fn err(e: GpuError) -> GpuResponse {
    GpuResponse::Err(e)
}

fn send_cmd(layout: IdLayout, ids: &[Identifier], data: &[u8]) -> CrossDomainCommand {
    CrossDomainCommand::Send(SendReceive {
        layout,
        identifiers: ids.to_vec(),
        data: data.to_vec(),
    })
}

fn receive(ring: &[u8]) -> SendReceive {
    match decode_event(ring).unwrap() {
        ChannelEvent::Receive(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_capset_names_the_wayland_channel_and_every_init_layout_opens_one() {
    let mut h = Harness::new();
    let caps = match h.ctx_send(
        0,
        GpuCommand::GetCapset {
            capset_id: CAPSET_CROSS_DOMAIN,
            capset_version: 0,
        },
    ) {
        GpuResponse::OkCapset(data) => Capabilities::decode(&data).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(caps.supported_channels, 1 << CHANNEL_TYPE_WAYLAND);
    assert!(!caps.supports_dmabuf, "memfd buffers are not dma-bufs");
    assert!(
        caps.supports_external_gpu_memory,
        "no virgl renderer: minigbm must allocate through cross-domain"
    );
    for (ctx, layout) in [
        (1, InitLayout::OneRing),
        (2, InitLayout::TwoRings),
        (3, InitLayout::Versioned),
    ] {
        h.context(ctx);
        assert_eq!(h.init(ctx, layout), GpuResponse::OkNoData, "{layout:?}");
        let client = h.compositor.accept();
        // An event lands in the channel ring: the query ring itself for the 16-byte INIT.
        let token = later(h.poll_fenced(ctx));
        send(&client, b"hello", &[]);
        h.wait_for(token);
        let r = receive(&h.channel_ring(ctx, layout));
        assert_eq!(r.data, b"hello", "{layout:?}");
        assert_eq!(r.layout, IdLayout::TwentyEight, "28 slots before any SEND");
    }
}

#[test]
fn a_channel_fence_waits_for_one_event_and_each_event_answers_one_fence() {
    let mut h = Harness::new();
    let client = h.channel(1);
    let first = later(h.poll_fenced(1));
    assert!(h.dev.service(&h.mem).is_empty(), "no event yet");
    // Unfenced commands and fences on the query ring go past it.
    assert_eq!(
        h.submit(1, &[send_cmd(IdLayout::TwentyEight, &[], b"req")]),
        GpuResponse::OkNoData
    );
    assert!(matches!(
        h.submit_fenced(1, 0, &send_cmd(IdLayout::TwentyEight, &[], b"q")),
        Completion::Now(_)
    ));
    assert_eq!(recv(&client).0, b"reqq");
    // Two events waiting: one per POLL, in order.
    let big = vec![b'x'; IdLayout::TwentyEight.max_data() + 10];
    send(&client, &big, &[]);
    h.wait_for(first);
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    assert_eq!(r.data.len(), IdLayout::TwentyEight.max_data());
    let second = h.poll_fenced(1);
    // The rest was already received: the second POLL is answered at once.
    let Completion::Now(_) = second else {
        panic!("{second:?}")
    };
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    assert_eq!(r.data, vec![b'x'; 10]);
    // Nothing more: the next POLL waits, and the channel's fd is not busy meanwhile.
    let third = later(h.poll_fenced(1));
    assert!(h.dev.service(&h.mem).is_empty());
    assert_eq!(h.dev.pending_fences(), 1);
    send(&client, b"late", &[]);
    h.wait_for(third);
    assert_eq!(
        receive(&h.channel_ring(1, InitLayout::TwoRings)).data,
        b"late"
    );
}

#[test]
fn sends_in_both_layouts_carry_the_guests_buffers_and_receives_follow_the_layout() {
    for layout in [IdLayout::Four, IdLayout::TwentyEight] {
        let mut h = Harness::new();
        let client = h.channel(1);
        let reqs = h.image_blob(1, 7);
        let blob = Identifier {
            id: 7,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: 0,
        };
        assert_eq!(
            h.submit(1, &[send_cmd(layout, &[blob], b"create_pool")]),
            GpuResponse::OkNoData
        );
        let (data, fds) = recv(&client);
        assert_eq!(data, b"create_pool");
        assert_eq!(fds.len(), 1);
        assert_eq!(
            rustix::fs::fstat(&fds[0]).unwrap().st_size as u64,
            reqs.size
        );
        // The compositor writes into what it got; the guest maps its blob and sees it: the
        // same pages, nothing copied.
        rustix::io::pwrite(&fds[0], b"same pages", 0).unwrap();
        match h.ctx_send(
            1,
            GpuCommand::ResourceMapBlob {
                resource_id: 7,
                offset: 0,
            },
        ) {
            GpuResponse::OkMapInfo { .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(h.region.region().read(0, 10).unwrap(), b"same pages");
        // The answer comes in the guest's layout.
        let token = later(h.poll_fenced(1));
        send(&client, b"format", &[]);
        h.wait_for(token);
        let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
        assert_eq!((r.layout, r.data.as_slice()), (layout, &b"format"[..]));
        // Mixing layouts in one context is refused.
        let other = if layout == IdLayout::Four {
            IdLayout::TwentyEight
        } else {
            IdLayout::Four
        };
        assert_eq!(
            h.submit(1, &[send_cmd(other, &[], b"x")]),
            err(GpuError::InvalidParameter)
        );
    }
}

#[test]
fn a_buffer_from_the_compositor_becomes_a_blob_mapped_as_it_may_be() {
    let mut h = Harness::new();
    let client = h.channel(1);
    // A sealed keymap (read-only) and a writable pool, as weston sends them.
    let keymap = rustix::fs::memfd_create(
        "keymap",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::io::write(&keymap, &[b'k'; 5000]).unwrap();
    rustix::fs::fcntl_add_seals(
        &keymap,
        rustix::fs::SealFlags::WRITE | rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )
    .unwrap();
    let pool = rustix::fs::memfd_create("pool", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&pool, 3 * PAGE).unwrap();
    let token = later(h.poll_fenced(1));
    send(&client, b"keymap+pool", &[keymap.as_fd(), pool.as_fd()]);
    h.wait_for(token);
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    assert_eq!(r.identifiers.len(), 2);
    let (k, p) = (r.identifiers[0], r.identifiers[1]);
    assert_eq!((k.kind, k.size), (ID_TYPE_VIRTGPU_BLOB, 8192));
    assert_eq!((p.kind, p.size), (ID_TYPE_VIRTGPU_BLOB, 3 * 4096));
    assert_eq!(
        k.id % 2,
        1,
        "received ids are odd (image requirements hand out even ones)"
    );
    assert_eq!(h.dev.resource_count(), 2, "the two rings only");
    // Wrong size: refused, and the item is gone.
    assert_eq!(
        h.host_blob(1, 20, p.id.into(), PAGE),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.host_blob(1, 20, p.id.into(), 3 * PAGE),
        err(GpuError::InvalidParameter),
        "an item is claimed once"
    );
    assert_eq!(h.host_blob(1, 21, k.id.into(), 8192), GpuResponse::OkNoData);
    assert_eq!(
        h.host_blob(1, 22, k.id.into(), 8192),
        err(GpuError::InvalidParameter)
    );
    // Mapped read-only (sealed), and it shows the compositor's bytes.
    match h.ctx_send(
        1,
        GpuCommand::ResourceMapBlob {
            resource_id: 21,
            offset: 0,
        },
    ) {
        GpuResponse::OkMapInfo { map_info } => assert_eq!(map_info, MAP_CACHE_WC),
        other => panic!("{other:?}"),
    }
    assert!(h.region.events().contains(&ShmemEvent::Mapped {
        offset: 0,
        len: 8192,
        writable: false
    }));
    assert_eq!(h.region.region().read(4000, 4).unwrap(), b"kkkk");
    // An id nobody handed out.
    assert_eq!(
        h.host_blob(1, 23, 0x1001, PAGE),
        err(GpuError::InvalidParameter)
    );
    drop(client);
}

/// Refuses every buffer and remembers which ones it was asked about (device, inode): the
/// map advisor port, which `dmabuf-info` serves in the backend.
struct RecordingRefusal(std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>);

impl MapAdvisor for RecordingRefusal {
    fn advise(&self, fd: BorrowedFd<'_>, _drm_fd: Option<BorrowedFd<'_>>) -> MapAdvice {
        let st = rustix::fs::fstat(fd).unwrap();
        self.0
            .lock()
            .unwrap()
            .push((st.st_dev as u64, st.st_ino as u64));
        MapAdvice::Refuse {
            reason: "needs DMA_BUF_IOCTL_SYNC (test advisor)".into(),
        }
    }
}

#[test]
fn a_buffer_from_the_compositor_is_judged_by_the_advisor_before_any_mapping() {
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut h = Harness::with_advisor(
        DeviceConfig {
            hostmem: 16 << 20,
            ..DeviceConfig::default()
        },
        ChannelLimits::default(),
        Box::new(RecordingRefusal(asked.clone())),
    );
    let client = h.channel(1);
    let pool = rustix::fs::memfd_create("pool", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&pool, 2 * PAGE).unwrap();
    let st = rustix::fs::fstat(&pool).unwrap();
    let pool_inode = (st.st_dev as u64, st.st_ino as u64);
    let token = later(h.poll_fenced(1));
    send(&client, b"pool", &[pool.as_fd()]);
    h.wait_for(token);
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    assert_eq!(r.identifiers.len(), 1);
    let id = r.identifiers[0];
    assert_eq!(
        h.host_blob(1, 30, id.id.into(), 2 * PAGE),
        GpuResponse::OkNoData
    );
    assert!(
        asked.lock().unwrap().is_empty(),
        "creating the blob maps nothing and asks nothing"
    );
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::ResourceMapBlob {
                resource_id: 30,
                offset: 0,
            },
        ),
        err(GpuError::Unspec),
        "the advisor refused: no mapping"
    );
    assert_eq!(
        *asked.lock().unwrap(),
        vec![pool_inode],
        "the advisor was asked about the very buffer the compositor sent"
    );
    assert!(
        !h.region
            .events()
            .iter()
            .any(|e| matches!(e, ShmemEvent::Mapped { .. })),
        "nothing reached the guest's region"
    );
    drop(client);
}

#[test]
fn read_and_write_pipes_cross_the_channel() {
    let mut h = Harness::new();
    let client = h.channel(1);
    // The guest asks for the selection: a read pipe it named.
    let id = PIPE_READ_START + 5;
    let read_pipe = Identifier {
        id,
        kind: ID_TYPE_READ_PIPE,
        size: 0,
    };
    assert_eq!(
        h.submit(
            1,
            &[send_cmd(IdLayout::TwentyEight, &[read_pipe], b"receive")]
        ),
        GpuResponse::OkNoData
    );
    let (_, mut fds) = recv(&client);
    let write_end = fds.pop().unwrap();
    rustix::io::write(&write_end, b"pasted text").unwrap();
    drop(write_end);
    h.poll_answered(1);
    let ev = decode_event(&h.channel_ring(1, InitLayout::TwoRings)).unwrap();
    assert_eq!(
        ev,
        ChannelEvent::Read(ReadWrite {
            identifier: id,
            hang_up: false,
            data: b"pasted text".to_vec()
        })
    );
    h.poll_answered(1);
    let ev = decode_event(&h.channel_ring(1, InitLayout::TwoRings)).unwrap();
    assert!(matches!(
        ev,
        ChannelEvent::Read(ReadWrite { hang_up: true, .. })
    ));
    // The compositor hands over a write pipe (a data source's send): the guest writes.
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    let token = later(h.poll_fenced(1));
    send(&client, b"send", &[pipe_w.as_fd()]);
    drop(pipe_w);
    h.wait_for(token);
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    let w = r.identifiers[0];
    assert_eq!(w.kind, ID_TYPE_WRITE_PIPE);
    let write = |data: &[u8], hang_up| {
        CrossDomainCommand::Write(ReadWrite {
            identifier: w.id,
            hang_up,
            data: data.to_vec(),
        })
    };
    assert_eq!(
        h.submit(1, &[write(b"copied", true)]),
        GpuResponse::OkNoData
    );
    let mut buf = [0u8; 32];
    let n = rustix::io::read(&pipe_r, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"copied");
    assert_eq!(
        rustix::io::read(&pipe_r, &mut buf).unwrap(),
        0,
        "closed after hang_up"
    );
    assert_eq!(
        h.submit(1, &[write(b"late", false)]),
        err(GpuError::InvalidParameter)
    );
}

#[test]
fn hostile_channel_commands_are_refused_and_nothing_half_happens() {
    let mut h = Harness::new();
    h.context(1);
    let init = |q, c, t| {
        CrossDomainCommand::Init(Init {
            layout: InitLayout::TwoRings,
            query_ring_id: q,
            channel_ring_id: c,
            channel_type: t,
            protocol_version: 0,
        })
    };
    // Channel ring not attached (another context's), too small, not a GUEST blob, missing.
    h.context(2);
    assert_eq!(
        h.submit(1, &[init(query_id(1), channel_id(2), CHANNEL_TYPE_WAYLAND)]),
        err(GpuError::InvalidResourceId)
    );
    let small = 300;
    h.ctx_send(
        1,
        GpuCommand::ResourceCreateBlob(CreateBlob {
            resource_id: small,
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: 0,
            blob_id: 0,
            size: 64,
            entries: vec![MemEntry {
                addr: 0x8000,
                length: 64,
            }],
        }),
    );
    assert_eq!(
        h.submit(1, &[init(query_id(1), small, CHANNEL_TYPE_WAYLAND)]),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.submit(1, &[init(query_id(1), 9999, CHANNEL_TYPE_WAYLAND)]),
        err(GpuError::InvalidResourceId)
    );
    // Channel types not served: camera, X11 (libkrun's 0x11), rutabaga's internal socket.
    for t in [2, 0x11, 0xffff_ffff] {
        assert_eq!(
            h.submit(1, &[init(query_id(1), channel_id(1), t)]),
            err(GpuError::InvalidParameter),
            "type {t:#x}"
        );
    }
    // A 24-byte INIT with a protocol version nobody defined.
    let mut v2 = CrossDomainCommand::Init(Init {
        layout: InitLayout::Versioned,
        query_ring_id: query_id(1),
        channel_ring_id: channel_id(1),
        channel_type: CHANNEL_TYPE_WAYLAND,
        protocol_version: 1,
    })
    .to_bytes();
    v2[20] = 2;
    assert_eq!(
        h.ctx_send(1, GpuCommand::Submit3d { commands: v2 }),
        err(GpuError::InvalidParameter)
    );
    // No channel was opened by any of these.
    let mut fds = [PollFd::new(&h.compositor.listener, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(poll(&mut fds, Some(&zero)).unwrap(), 0, "nobody connected");
    // Now a good one; a second INIT with a channel is refused.
    assert_eq!(
        h.submit(1, &[init(query_id(1), channel_id(1), CHANNEL_TYPE_WAYLAND)]),
        GpuResponse::OkNoData
    );
    let client = h.compositor.accept();
    assert_eq!(
        h.submit(1, &[init(query_id(1), channel_id(1), CHANNEL_TYPE_WAYLAND)]),
        err(GpuError::InvalidParameter)
    );
    // SEND with a resource of another context, a 2D resource, a GUEST blob without a host
    // fd (no udmabuf here), an identifier type nobody passes, a bad read pipe id, fds with
    // no byte to travel with: each refused, nothing reaches the compositor.
    let blob = |id| Identifier {
        id,
        kind: ID_TYPE_VIRTGPU_BLOB,
        size: 0,
    };
    h.ctx_send(
        0,
        GpuCommand::ResourceCreate2d {
            resource_id: 50,
            format: vhost_user_gpu::protocol::format::B8G8R8X8_UNORM,
            width: 4,
            height: 4,
        },
    );
    h.ctx_send(1, GpuCommand::CtxAttachResource { resource_id: 50 });
    let refused = [
        send_cmd(IdLayout::TwentyEight, &[blob(query_id(2))], b"x"),
        send_cmd(IdLayout::TwentyEight, &[blob(50)], b"x"),
        send_cmd(IdLayout::TwentyEight, &[blob(query_id(1))], b"x"),
        send_cmd(
            IdLayout::TwentyEight,
            &[Identifier {
                id: 1,
                kind: 5,
                size: 0,
            }],
            b"x",
        ),
        send_cmd(
            IdLayout::TwentyEight,
            &[Identifier {
                id: 3,
                kind: ID_TYPE_READ_PIPE,
                size: 0,
            }],
            b"x",
        ),
        send_cmd(IdLayout::TwentyEight, &[blob(query_id(1))], b""),
    ];
    for (i, cmd) in refused.iter().enumerate() {
        assert_eq!(
            h.submit(1, std::slice::from_ref(cmd)),
            err(GpuError::InvalidParameter),
            "case {i}"
        );
    }
    // A WRITE to a pipe nobody handed over; a POLL in a context without a channel.
    assert_eq!(
        h.submit(
            1,
            &[CrossDomainCommand::Write(ReadWrite {
                identifier: 3,
                hang_up: true,
                data: vec![]
            })]
        ),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.submit(2, &[CrossDomainCommand::Poll(PollLayout::HeaderOnly)]),
        err(GpuError::InvalidParameter)
    );
    // A fence on ring 1 of a context without a channel does not wait.
    assert!(matches!(
        h.submit_fenced(
            2,
            CHANNEL_RING as u8,
            &CrossDomainCommand::Poll(PollLayout::Padded)
        ),
        Completion::Now(_)
    ));
    std::thread::sleep(Duration::from_millis(50));
    let (data, fds) = recv_now(&client);
    assert!(data.is_empty() && fds.is_empty(), "nothing half-sent");
    // The channel still works.
    assert_eq!(
        h.submit(1, &[send_cmd(IdLayout::TwentyEight, &[], b"ok")]),
        GpuResponse::OkNoData
    );
    assert_eq!(recv(&client).0, b"ok");
}

#[test]
fn waiting_fences_are_answered_when_their_channel_goes() {
    let mut h = Harness::new();
    // Context destroyed.
    let _c1 = h.channel(1);
    let token = later(h.poll_fenced(1));
    assert_eq!(h.ctx_send(1, GpuCommand::CtxDestroy), GpuResponse::OkNoData);
    // The transport only looks when the device's event fd is readable: it must be.
    assert!(h.woken(), "no wake-up for a released answer");
    assert_eq!(h.dev.service(&h.mem), vec![token]);
    assert!(!h.woken(), "service() clears the wake-up");
    // Channel ring detached.
    let _c2 = h.channel(2);
    let token = later(h.poll_fenced(2));
    assert_eq!(
        h.ctx_send(
            2,
            GpuCommand::CtxDetachResource {
                resource_id: channel_id(2)
            }
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.service(&h.mem), vec![token]);
    assert_eq!(
        h.submit(2, &[send_cmd(IdLayout::TwentyEight, &[], b"x")]),
        err(GpuError::InvalidParameter),
        "the channel closed with its ring"
    );
    // Channel ring destroyed.
    let _c3 = h.channel(3);
    let token = later(h.poll_fenced(3));
    assert_eq!(
        h.ctx_send(
            0,
            GpuCommand::ResourceUnref {
                resource_id: channel_id(3)
            }
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.service(&h.mem), vec![token]);
    // Reset: dropped unanswered, every fd and charge released.
    let _c4 = h.channel(4);
    let _token = later(h.poll_fenced(4));
    h.dev.reset();
    assert_eq!(h.dev.pending_fences(), 0);
    assert!(h.dev.service(&h.mem).is_empty());
}

#[test]
fn the_compositor_leaving_is_one_empty_receive_then_errors() {
    let mut h = Harness::new();
    let client = h.channel(1);
    let token = later(h.poll_fenced(1));
    send(&client, b"bye", &[]);
    drop(client);
    h.wait_for(token);
    assert_eq!(
        receive(&h.channel_ring(1, InitLayout::TwoRings)).data,
        b"bye"
    );
    h.poll_answered(1);
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    assert!(r.data.is_empty() && r.identifiers.is_empty(), "{r:?}");
    assert_eq!(
        h.submit(1, &[send_cmd(IdLayout::TwentyEight, &[], b"x")]),
        err(GpuError::Unspec)
    );
    // A further POLL waits (nothing will come) and goes with the context.
    let token = later(h.poll_fenced(1));
    assert!(h.dev.service(&h.mem).is_empty());
    h.ctx_send(1, GpuCommand::CtxDestroy);
    assert_eq!(h.dev.service(&h.mem), vec![token]);
}

#[test]
fn a_compositor_that_does_not_read_gets_out_of_memory_not_a_blocked_queue() {
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 16 << 20,
            ..DeviceConfig::default()
        },
        ChannelLimits {
            max_queued_bytes: 256 << 10,
            ..ChannelLimits::default()
        },
    );
    let _client = h.channel(1);
    let rings = h.dev.resource_memory();
    let chunk = vec![0x42u8; 3000];
    let start = Instant::now();
    let mut refused_at = None;
    for i in 0..10_000 {
        let r = h.submit(1, &[send_cmd(IdLayout::TwentyEight, &[], &chunk)]);
        if r != GpuResponse::OkNoData {
            assert_eq!(r, err(GpuError::OutOfMemory));
            refused_at = Some(i);
            break;
        }
    }
    let i = refused_at.expect("the queue is bounded");
    assert!(i > 10, "the socket took something first ({i})");
    // Not a timing target: the loop ended, so no SEND blocked.
    assert!(start.elapsed() < Duration::from_secs(60));
    // What waits is charged to the device's budget as host bytes.
    assert!(h.dev.resource_memory() > rings + (128 << 10));
    h.ctx_send(1, GpuCommand::CtxDestroy);
    assert_eq!(h.dev.resource_memory(), rings, "released with the channel");
}

#[test]
fn channel_fds_come_out_of_the_device_budget() {
    // Room for one channel (its connection and wait fd) and one fd more.
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 16 << 20,
            max_fds: 3,
            ..DeviceConfig::default()
        },
        ChannelLimits::default(),
    );
    let client = h.channel(1);
    h.context(2);
    assert_eq!(
        h.init(2, InitLayout::TwoRings),
        err(GpuError::OutOfMemory),
        "a second channel does not fit"
    );
    // The compositor floods fds: over the budget, the channel closes (fds closed) and the
    // guest is told.
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, PAGE).unwrap();
    let token = later(h.poll_fenced(1));
    send(&client, b"two fds", &[memfd.as_fd(), memfd.as_fd()]);
    h.wait_for(token);
    let r = receive(&h.channel_ring(1, InitLayout::TwoRings));
    assert!(
        r.data.is_empty() && r.identifiers.is_empty(),
        "closed: {r:?}"
    );
    // Freed: destroy the first context, the second can open its channel.
    h.ctx_send(1, GpuCommand::CtxDestroy);
    assert_eq!(h.init(2, InitLayout::TwoRings), GpuResponse::OkNoData);
    let _c2 = h.compositor.accept();
}

/// The cross-domain capset's `supports_external_gpu_memory` for a device with `renderer`:
/// minigbm takes its virgl path exactly when this is 0 (`CROSS-DOMAIN.md`, capabilities).
fn external_gpu_memory_with(
    renderer: Option<vhost_user_gpu::renderer::fake::FakeRenderer>,
) -> bool {
    let config = DeviceConfig::default();
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(FrontendRegion::new(config.hostmem))),
        display: Box::new(NoDisplay),
        advisor: Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        exporter: None,
        channels: None,
        renderer: renderer.map(|r| Box::new(r) as _),
    };
    let mut dev = GpuDevice::new(config, ports);
    dev.ack_features(dev.features());
    let mut request = Vec::new();
    GpuCommand::GetCapset {
        capset_id: CAPSET_CROSS_DOMAIN,
        capset_version: 0,
    }
    .encode(&CtrlHeader::default(), &mut request);
    let Completion::Now(bytes) = dev.process_control(&guest_ram(), &request) else {
        panic!("GET_CAPSET waits");
    };
    match GpuResponse::decode(&bytes).unwrap().1 {
        GpuResponse::OkCapset(data) => {
            let caps = Capabilities::decode(&data).unwrap();
            assert_eq!(caps.supported_channels, 0, "no compositor configured");
            caps.supports_external_gpu_memory
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn minigbm_is_kept_off_virgl_exactly_when_no_virgl_renderer_serves_it() {
    use vhost_user_gpu::protocol::{CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2};
    use vhost_user_gpu::renderer::fake::FakeRenderer;
    assert!(external_gpu_memory_with(None), "no renderer");
    assert!(
        external_gpu_memory_with(Some(FakeRenderer::with_capsets(&[CAPSET_VENUS]))),
        "venus alone: minigbm's virgl backend would find no virgl"
    );
    for virgl in [
        vec![CAPSET_VIRGL],
        vec![CAPSET_VIRGL2],
        vec![CAPSET_VIRGL, CAPSET_VIRGL2, CAPSET_VENUS],
    ] {
        assert!(
            !external_gpu_memory_with(Some(FakeRenderer::with_capsets(&virgl))),
            "capsets {virgl:?}: a virgl renderer serves minigbm's virgl path"
        );
    }
}

#[test]
fn a_handover_is_refused_while_a_channel_is_open_or_its_poll_waits() {
    let mut h = Harness::new();
    h.context(1);
    assert_eq!(h.dev.handover_blocker(), None, "no channel yet");
    let _client = h.channel(2);
    let why = h.dev.handover_blocker().expect("a channel is open");
    assert!(
        why.contains("[2]") && why.contains("Wayland channel"),
        "{why}"
    );
    let token = later(h.poll_fenced(2));
    let why = h.dev.handover_blocker().expect("a POLL waits");
    assert!(why.contains("1 fenced answer"), "{why}");
    assert_eq!(h.ctx_send(2, GpuCommand::CtxDestroy), GpuResponse::OkNoData);
    // The POLL's answer is released with its context, and waits until the transport took it.
    assert!(h.dev.handover_blocker().is_some());
    h.wait_for(token);
    assert_eq!(
        h.dev.handover_blocker(),
        None,
        "the channel went with its context"
    );
}
