//! Fenced answers that wait for a renderer: the device side of the fence contract, with the
//! `FakeRenderer` (a stand-in for a GPU, named as such: its fences signal only when the test
//! says so, through a real eventfd) wired into a real device.

use std::os::fd::BorrowedFd;

use vm_memory::GuestAddress;

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::ports::GuestMemory;
use vhost_user_gpu::device::{
    Completion, DeviceConfig, FenceToken, GpuDevice, Ports, BASE_FEATURES, CONTEXT_FEATURES,
};
use vhost_user_gpu::protocol::{
    CtrlHeader, GpuCommand, GpuError, GpuResponse, CAPSET_CROSS_DOMAIN, CAPSET_VENUS,
    CAPSET_VIRGL2, FLAG_FENCE, FLAG_INFO_RING_IDX,
};
use vhost_user_gpu::renderer::fake::{FakeControl, FakeRenderer};
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion, NoDisplay};

struct Harness {
    dev: GpuDevice,
    mem: GuestMemory,
    fake: Option<FakeControl>,
}

const VIRGL_CTX: u32 = 1;
const VENUS_CTX: u32 = 2;

fn device(renderer: Option<FakeRenderer>, config: DeviceConfig) -> Harness {
    let fake = renderer.as_ref().map(FakeRenderer::control);
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(FrontendRegion::new(config.hostmem))),
        display: Box::new(NoDisplay),
        advisor: Box::new(FixedAdvisor::allow(1)),
        exporter: None,
        renderer: renderer.map(|r| Box::new(r) as _),
        channels: None,
    };
    let mut dev = GpuDevice::new(config, ports);
    dev.ack_features(dev.features());
    Harness {
        dev,
        mem: GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        fake,
    }
}

/// A device with the fake renderer and a virgl (context_init 0) and a venus context.
fn with_contexts() -> Harness {
    let mut h = device(Some(FakeRenderer::new()), DeviceConfig::default());
    assert_eq!(
        h.now(CtrlHeader::default(), ctx_create(VIRGL_CTX, 0)),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.now(CtrlHeader::default(), ctx_create(VENUS_CTX, CAPSET_VENUS)),
        GpuResponse::OkNoData
    );
    h
}

fn ctx_create(ctx_id: u32, context_init: u32) -> (u32, GpuCommand) {
    (
        ctx_id,
        GpuCommand::CtxCreate {
            context_init,
            debug_name: "test".into(),
        },
    )
}

fn submit(ctx_id: u32) -> (u32, GpuCommand) {
    (
        ctx_id,
        GpuCommand::Submit3d {
            commands: vec![0; 8],
        },
    )
}

fn fence(fence_id: u64) -> CtrlHeader {
    CtrlHeader {
        flags: FLAG_FENCE,
        fence_id,
        ..Default::default()
    }
}

fn ring_fence(fence_id: u64, ring_idx: u8) -> CtrlHeader {
    CtrlHeader {
        flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
        fence_id,
        ring_idx,
        ..Default::default()
    }
}

impl Harness {
    fn send(&mut self, mut hdr: CtrlHeader, (ctx_id, command): (u32, GpuCommand)) -> Completion {
        hdr.ctx_id = ctx_id;
        let mut request = Vec::new();
        command.encode(&hdr, &mut request);
        self.dev.process_control(&self.mem, &request)
    }

    /// Sends and expects an answer now.
    fn now(&mut self, hdr: CtrlHeader, command: (u32, GpuCommand)) -> GpuResponse {
        match self.send(hdr, command) {
            Completion::Now(bytes) => GpuResponse::decode(&bytes).unwrap().1,
            Completion::Later { .. } => panic!("answer waits"),
        }
    }

    /// Sends and expects the answer to wait; returns its token and decoded header.
    fn later(
        &mut self,
        hdr: CtrlHeader,
        command: (u32, GpuCommand),
    ) -> (FenceToken, CtrlHeader, GpuResponse) {
        match self.send(hdr, command) {
            Completion::Later { token, response } => {
                let (rhdr, r) = GpuResponse::decode(&response).unwrap();
                (token, rhdr, r)
            }
            Completion::Now(bytes) => panic!(
                "answered at once: {:?}",
                GpuResponse::decode(&bytes).unwrap()
            ),
        }
    }

    fn fake(&self) -> &FakeControl {
        self.fake.as_ref().unwrap()
    }

    fn event_fd_readable(&self) -> bool {
        readable(self.dev.event_fd().expect("the device has an event fd"))
    }
}

fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap() > 0
}

#[test]
fn capsets_and_the_virgl_bit_follow_what_is_served() {
    let h = device(Some(FakeRenderer::new()), DeviceConfig::default());
    let ids: Vec<u32> = h.dev.capsets().iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![CAPSET_VIRGL2, CAPSET_VENUS, CAPSET_CROSS_DOMAIN]);
    assert_eq!(h.dev.features(), BASE_FEATURES | CONTEXT_FEATURES);
    assert_eq!(
        u32::from_le_bytes(h.dev.read_config()[12..16].try_into().unwrap()),
        3,
        "num_capsets"
    );
    // Cross-domain alone still needs VIRGL: Linux creates contexts only with it.
    let h = device(None, DeviceConfig::default());
    assert_eq!(h.dev.capsets().len(), 1);
    assert_eq!(h.dev.features(), BASE_FEATURES | CONTEXT_FEATURES);
    // Nothing to serve: no VIRGL, no CONTEXT_INIT, no capsets.
    let mut h = device(
        None,
        DeviceConfig {
            cross_domain: false,
            ..Default::default()
        },
    );
    assert!(h.dev.capsets().is_empty());
    assert_eq!(h.dev.features(), BASE_FEATURES);
    assert_eq!(h.dev.read_config()[12..16], [0; 4]);
    assert_eq!(
        h.now(CtrlHeader::default(), ctx_create(1, 0)),
        GpuResponse::Err(GpuError::Unspec),
        "no contexts without VIRGL"
    );
}

#[test]
fn capset_queries_reach_the_renderer() {
    let mut h = device(Some(FakeRenderer::new()), DeviceConfig::default());
    let GpuResponse::OkCapsetInfo { capset_id, .. } = h.now(
        CtrlHeader::default(),
        (0, GpuCommand::GetCapsetInfo { capset_index: 1 }),
    ) else {
        panic!("no capset info");
    };
    assert_eq!(capset_id, CAPSET_VENUS);
    let GpuResponse::OkCapset(data) = h.now(
        CtrlHeader::default(),
        (
            0,
            GpuCommand::GetCapset {
                capset_id: CAPSET_VENUS,
                capset_version: 1,
            },
        ),
    ) else {
        panic!("no capset");
    };
    assert_eq!(
        data,
        CAPSET_VENUS.to_le_bytes().repeat(4),
        "the fake's data"
    );
    assert_eq!(
        h.now(
            CtrlHeader::default(),
            (0, GpuCommand::GetCapsetInfo { capset_index: 3 })
        ),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
    // A capset the renderer does not serve (VIRGL 1 here) is not a context type either.
    assert_eq!(
        h.now(CtrlHeader::default(), ctx_create(9, 1)),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
}

#[test]
fn ring_fences_wait_for_the_renderer() {
    let mut h = with_contexts();
    assert!(!h.event_fd_readable());
    let (token, rhdr, r) = h.later(ring_fence(10, 3), submit(VENUS_CTX));
    assert_eq!(r, GpuResponse::OkNoData);
    assert_eq!(
        (rhdr.flags, rhdr.fence_id, rhdr.ring_idx, rhdr.ctx_id),
        (FLAG_FENCE | FLAG_INFO_RING_IDX, 10, 3, VENUS_CTX),
        "the answer echoes the fence and ring"
    );
    assert_eq!(
        h.fake().submitted(),
        vec![(VENUS_CTX, vec![0; 8])],
        "effect done now"
    );
    assert_eq!(h.dev.pending_fences(), 1);
    // Unfenced commands go at once meanwhile.
    assert_eq!(
        h.now(CtrlHeader::default(), submit(VENUS_CTX)),
        GpuResponse::OkNoData
    );
    assert!(
        h.dev.service(&h.mem).is_empty(),
        "not before the renderer signals"
    );
    h.fake().signal(1);
    assert!(h.event_fd_readable());
    assert_eq!(h.dev.service(&h.mem), vec![token]);
    assert!(!h.event_fd_readable(), "service drains the sources");
    assert_eq!(h.dev.pending_fences(), 0);
}

#[test]
fn global_fences_keep_their_order_behind_renderer_work() {
    let mut h = with_contexts();
    // Renderer work with a global fence, then a 2D command and an error with fences: the
    // guest would signal the renderer's fence with theirs, so they wait behind it.
    let (first, ..) = h.later(fence(20), submit(VIRGL_CTX));
    let (second, _, r) = h.later(fence(21), (0, GpuCommand::GetDisplayInfo));
    assert!(matches!(r, GpuResponse::OkDisplayInfo(_)));
    let (third, _, r) = h.later(
        fence(22),
        (0, GpuCommand::ResourceUnref { resource_id: 77 }),
    );
    assert_eq!(r, GpuResponse::Err(GpuError::InvalidResourceId));
    // Another timeline is not held up.
    let (ring, ..) = h.later(ring_fence(23, 0), submit(VENUS_CTX));
    assert_eq!(h.dev.pending_fences(), 4);
    assert_eq!(
        h.fake().pending_fences(),
        2,
        "only renderer fences reach the renderer"
    );
    h.fake().signal(1); // the global one (created first)
    assert_eq!(h.dev.service(&h.mem), vec![first, second, third]);
    h.fake().signal(1);
    assert_eq!(h.dev.service(&h.mem), vec![ring]);
    // With nothing in front, a fenced 2D command is answered at once.
    assert!(matches!(
        h.now(fence(24), (0, GpuCommand::GetDisplayInfo)),
        GpuResponse::OkDisplayInfo(_)
    ));
}

#[test]
fn destroyed_contexts_release_their_ring_answers_and_reset_drops_all() {
    let mut h = with_contexts();
    let (ring, ..) = h.later(ring_fence(30, 1), submit(VENUS_CTX));
    let (_global, ..) = h.later(fence(31), submit(VIRGL_CTX));
    assert_eq!(
        h.now(CtrlHeader::default(), (VENUS_CTX, GpuCommand::CtxDestroy)),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.dev.service(&h.mem),
        vec![ring],
        "its fence will never signal"
    );
    assert_eq!(h.dev.pending_fences(), 1);
    h.dev.reset();
    assert_eq!(h.dev.pending_fences(), 0, "dropped unanswered");
    h.fake().signal(usize::MAX);
    assert!(
        h.dev.service(&h.mem).is_empty(),
        "a fence from before the reset answers nothing"
    );
    assert!(h.dev.can_take_more());
}

#[test]
fn a_lost_render_server_releases_venus_answers_and_fails_its_contexts() {
    let mut h = with_contexts();
    let (ring, ..) = h.later(ring_fence(40, 0), submit(VENUS_CTX));
    h.fake().lose_render_server();
    assert_eq!(h.dev.service(&h.mem), vec![ring]);
    assert_eq!(
        h.now(CtrlHeader::default(), submit(VENUS_CTX)),
        GpuResponse::Err(GpuError::Unspec),
        "the venus context is gone"
    );
    // Virgl keeps working.
    let (token, ..) = h.later(fence(41), submit(VIRGL_CTX));
    h.fake().signal(usize::MAX);
    assert_eq!(h.dev.service(&h.mem), vec![token]);
}

#[test]
fn the_pending_fence_limit_is_back_pressure_not_refusal() {
    let mut h = device(
        Some(FakeRenderer::new()),
        DeviceConfig {
            max_pending_fences: 3,
            ..Default::default()
        },
    );
    h.now(CtrlHeader::default(), ctx_create(VENUS_CTX, CAPSET_VENUS));
    for i in 0..3 {
        assert!(h.dev.can_take_more());
        assert_eq!(h.dev.fence_room(), 3 - i);
        h.later(ring_fence(50 + i as u64, 0), submit(VENUS_CTX));
    }
    assert!(
        !h.dev.can_take_more(),
        "the transport stops reading the queue"
    );
    h.fake().signal(2);
    assert_eq!(h.dev.service(&h.mem).len(), 2);
    assert_eq!(h.dev.fence_room(), 2);
}

#[test]
fn without_a_renderer_nothing_waits() {
    let mut h = device(None, DeviceConfig::default());
    assert!(
        h.dev.event_fd().is_some(),
        "the event fd exists for the device's life"
    );
    assert!(matches!(
        h.now(fence(1), (0, GpuCommand::GetDisplayInfo)),
        GpuResponse::OkDisplayInfo(_)
    ));
    h.now(CtrlHeader::default(), ctx_create(3, CAPSET_CROSS_DOMAIN));
    assert_eq!(
        h.now(
            ring_fence(2, 0),
            (3, GpuCommand::CtxDetachResource { resource_id: 1 })
        ),
        GpuResponse::Err(GpuError::InvalidResourceId)
    );
    assert!(h.dev.service(&h.mem).is_empty());
}

#[test]
fn a_handover_is_refused_while_answers_wait_or_renderer_state_exists() {
    let mut h = device(Some(FakeRenderer::new()), DeviceConfig::default());
    assert_eq!(h.dev.handover_blocker(), None, "nothing to refuse yet");
    h.now(CtrlHeader::default(), ctx_create(VENUS_CTX, CAPSET_VENUS));
    let why = h.dev.handover_blocker().expect("a renderer context");
    assert!(why.contains("renderer"), "{why}");
    h.later(ring_fence(70, 0), submit(VENUS_CTX));
    let why = h.dev.handover_blocker().expect("an answer waits");
    assert!(why.contains("1 fenced answer"), "{why}");
    h.fake().signal(1);
    assert_eq!(h.dev.service(&h.mem).len(), 1);
    let why = h
        .dev
        .handover_blocker()
        .expect("the context is still there");
    assert!(why.contains("renderer"), "{why}");
    assert_eq!(
        h.now(CtrlHeader::default(), (VENUS_CTX, GpuCommand::CtxDestroy)),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.handover_blocker(), None);
    h.dev
        .snapshot()
        .expect("a 2D-only device can be handed over");
    // A 3D resource lives in the renderer without any context: it refuses the handover too.
    let texture = vhost_user_gpu::protocol::Resource3d {
        target: 2,
        format: 2,
        width: 4,
        height: 4,
        depth: 1,
        array_size: 1,
        ..Default::default()
    };
    assert_eq!(
        h.now(
            CtrlHeader::default(),
            (
                0,
                GpuCommand::ResourceCreate3d {
                    resource_id: 9,
                    resource: texture
                }
            )
        ),
        GpuResponse::OkNoData
    );
    let why = h.dev.handover_blocker().expect("a 3D resource");
    assert!(why.contains("resource(s) [9]"), "{why}");
    assert!(
        h.dev.snapshot().is_err(),
        "never snapshotted without the renderer"
    );
    assert_eq!(
        h.now(
            CtrlHeader::default(),
            (0, GpuCommand::ResourceUnref { resource_id: 9 })
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.handover_blocker(), None);
}
