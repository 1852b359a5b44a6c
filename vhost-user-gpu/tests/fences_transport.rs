//! Fenced answers through the vhost-user transport: the real transport (`transport::serve`,
//! the queue thread with the device's event fd in its epoll) in this process,
//! driven by the conformance frontend over a real socket and real virtqueues, with the
//! `FakeRenderer` (a stand-in for a GPU, named as such) so that the test decides when
//! fences signal.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::{DeviceConfig, Ports};
use vhost_user_gpu::protocol::CAPSET_VENUS;
use vhost_user_gpu::renderer::fake::{FakeControl, FakeRenderer};
use vhost_user_gpu::transport::{
    self, DeviceFactory, ServeControl, SocketSource, Start, TransportSettings,
};
use vug_conformance::frontend::{FrontendOptions, CONTROL_QUEUE};
use vug_conformance::gpu::{self, ty as resp, Resp};
use vug_conformance::{Frontend, Peer};
use vug_test_support::FixedAdvisor;

/// How long an answer that must not come yet is waited for.
const NOT_YET: Duration = Duration::from_millis(300);

const CTX: u32 = 1;

struct Backend {
    frontend: Frontend,
    fake: FakeControl,
    _server: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Our transport serving one connection with a fake renderer, and a frontend attached.
fn start(max_pending_fences: usize) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gpu.sock");
    let endpoint = transport::open_endpoint(&SocketSource::Path(socket.clone())).unwrap();
    let (control_tx, control_rx) = mpsc::channel();
    let factory: std::sync::Arc<DeviceFactory> = std::sync::Arc::new(move |mapper, display| {
        let fake = FakeRenderer::new();
        let _ = control_tx.send(fake.control());
        let ports = Ports {
            allocator: Box::new(MemfdAllocator::new()),
            mapper,
            display,
            advisor: Box::new(FixedAdvisor::allow(1)),
            exporter: None,
            renderer: Some(Box::new(fake)),
            channels: None,
        };
        let config = DeviceConfig {
            max_pending_fences,
            ..Default::default()
        };
        Ok((config, ports))
    });
    let settings = TransportSettings {
        hostmem: 1 << 20,
        capture: None,
    };
    let server = std::thread::spawn(move || {
        let control = ServeControl::new().unwrap();
        let _ = transport::serve(Start::Endpoint(endpoint), false, settings, factory, control);
    });
    let options = FrontendOptions {
        display_channel: false,
        ..Default::default()
    };
    let mut frontend = Frontend::attach(&socket, Peer::Ours, options).unwrap();
    // The transport makes a connection's device when the frontend connects.
    let fake = control_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the transport made a device");
    let r = frontend
        .ctrl(gpu::ctx_create(CTX, CAPSET_VENUS, "fences"))
        .unwrap();
    r.check_type(resp::OK_NODATA).unwrap();
    Backend {
        frontend,
        fake,
        _server: server,
        _dir: dir,
    }
}

impl Backend {
    /// Sends a fenced SUBMIT_3D on `ring`; returns the chain's head.
    fn submit(&mut self, fence_id: u64, ring: Option<u8>) -> u16 {
        let cmd = gpu::submit_3d(CTX, &[0; 8]).fence(fence_id, ring);
        self.frontend
            .send(CONTROL_QUEUE, &[&cmd.into_bytes()], 64)
            .unwrap()
    }

    /// The next answer, which must come.
    fn answer(&mut self) -> (u16, Resp) {
        let (head, bytes) = self.frontend.wait(CONTROL_QUEUE).unwrap();
        (head, Resp::parse(&bytes).unwrap())
    }

    /// `true` when nothing is answered within [`NOT_YET`].
    fn quiet(&mut self) -> bool {
        self.frontend
            .wait_within(CONTROL_QUEUE, NOT_YET)
            .unwrap()
            .is_none()
    }

    /// Waits until the fake has `n` fences (the backend took that many commands).
    fn fences_reach(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.fake.pending_fences() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "the renderer has {} fences, not {n}",
                self.fake.pending_fences()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn a_fenced_answer_comes_when_the_renderer_signals_and_others_pass_it() {
    let mut b = start(16);
    let held = b.submit(7, Some(2));
    b.fences_reach(1);
    assert!(b.quiet(), "answered before the renderer signalled");
    // An unfenced command behind it is answered meanwhile.
    let head = b
        .frontend
        .send(CONTROL_QUEUE, &[&gpu::get_display_info().into_bytes()], 512)
        .unwrap();
    let (h, r) = b.answer();
    assert_eq!(h, head);
    r.check_type(resp::OK_DISPLAY_INFO).unwrap();
    // The renderer finishes: the held chain is answered, fence and ring echoed.
    b.fake.signal(1);
    let (h, r) = b.answer();
    assert_eq!(h, held);
    r.check_type(resp::OK_NODATA).unwrap();
    assert_eq!((r.fence_id, r.ring_idx), (7, 2));
    assert_eq!(b.fake.submitted().len(), 1);
}

#[test]
fn the_transport_stops_taking_commands_at_the_limit_and_comes_back() {
    let mut b = start(2);
    let heads: Vec<u16> = (0..5).map(|i| b.submit(100 + i, Some(0))).collect();
    // Two wait; the other three stay in the ring, not even processed.
    b.fences_reach(2);
    assert!(b.quiet());
    assert_eq!(b.fake.submitted().len(), 2, "the rest stays in the queue");
    // One answer goes: one more command is taken.
    b.fake.signal(1);
    assert_eq!(b.answer().0, heads[0]);
    b.fences_reach(2);
    assert_eq!(b.fake.submitted().len(), 3);
    // The renderer catches up: everything is answered, in order.
    for (i, &head) in heads.iter().enumerate().skip(1) {
        b.fences_reach(2.min(heads.len() - i));
        b.fake.signal(1);
        let (h, r) = b.answer();
        assert_eq!(h, head);
        assert_eq!(r.fence_id, 100 + i as u64);
    }
    assert_eq!(b.fake.submitted().len(), 5);
}

#[test]
fn a_reset_drops_held_answers_and_the_device_serves_on() {
    let mut b = start(16);
    b.submit(1, Some(0));
    b.fences_reach(1);
    b.frontend.reset().unwrap();
    // The renderer was reset with the device: the old fence is gone.
    b.fences_reach(0);
    b.fake.signal(usize::MAX);
    let r = b
        .frontend
        .ctrl(gpu::ctx_create(CTX, CAPSET_VENUS, "again"))
        .unwrap();
    r.check_type(resp::OK_NODATA).unwrap();
    let head = b.submit(2, Some(0));
    b.fences_reach(1);
    assert!(b.quiet());
    b.fake.signal(1);
    let (h, r) = b.answer();
    assert_eq!((h, r.fence_id), (head, 2));
}

#[test]
fn a_fenced_answer_waits_across_pauses_and_comes_after_the_resume() {
    let mut b = start(16);
    let held = b.submit(9, Some(1));
    b.fences_reach(1);
    assert!(b.quiet());
    // A pause: GET_VRING_BASE reports the waiting chain as taken and does not wait for it.
    let bases = b.frontend.pause().unwrap();
    assert_eq!(
        bases[0], 2,
        "CTX_CREATE and the fenced SUBMIT_3D were taken"
    );
    // The fence signals while the ring is stopped: nothing may be written into it.
    b.fake.signal(1);
    b.fences_reach(0);
    assert!(b.quiet(), "answered into a stopped ring");
    b.frontend.resume(&bases).unwrap();
    let (h, r) = b.answer();
    assert_eq!(h, held, "the held answer is published on the resume");
    assert_eq!((r.fence_id, r.ring_idx), (9, 1));
    // Across two pauses while the fence waits: still answered, once.
    let held = b.submit(10, Some(1));
    b.fences_reach(1);
    for _ in 0..2 {
        let bases = b.frontend.pause().unwrap();
        assert_eq!(bases[0], 3);
        b.frontend.resume(&bases).unwrap();
    }
    assert!(b.quiet());
    b.fake.signal(1);
    let (h, r) = b.answer();
    assert_eq!((h, r.fence_id), (held, 10));
    assert!(b.quiet(), "answered twice");
    // The device kept its state: the context still takes commands.
    let head = b.submit(11, None);
    b.fences_reach(1);
    b.fake.signal(1);
    assert_eq!(b.answer().0, head);
}

#[test]
fn back_pressure_leaves_chains_in_the_ring_and_a_pause_reports_only_those_taken() {
    let mut b = start(2);
    let heads: Vec<u16> = (0..4).map(|i| b.submit(200 + i, Some(0))).collect();
    b.fences_reach(2);
    assert!(b.quiet());
    // Kicks while full change nothing (the driver kicks again when it adds chains).
    let extra = b
        .frontend
        .send(CONTROL_QUEUE, &[&gpu::get_display_info().into_bytes()], 512)
        .unwrap();
    assert!(b.quiet(), "a chain was taken past the limit");
    assert_eq!(b.fake.submitted().len(), 2);
    // GET_VRING_BASE counts CTX_CREATE and the two waiting chains, not the three left.
    let bases = b.frontend.pause().unwrap();
    assert_eq!(bases[0], 3);
    b.frontend.resume(&bases).unwrap();
    assert!(b.quiet());
    // Room again: the queue is served in order, nothing lost.
    b.fake.signal(1);
    assert_eq!(b.answer().0, heads[0]);
    b.fences_reach(2);
    b.fake.signal(1);
    assert_eq!(b.answer().0, heads[1]);
    b.fences_reach(2);
    b.fake.signal(2);
    let mut rest: Vec<u16> = (0..3).map(|_| b.answer().0).collect();
    rest.sort_unstable();
    let mut want = vec![heads[2], heads[3], extra];
    want.sort_unstable();
    assert_eq!(rest, want);
    assert_eq!(b.fake.submitted().len(), 4);
}
