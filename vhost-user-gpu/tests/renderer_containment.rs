//! Containment of renderer failures, through the device: a lost render server (venus) and a
//! renderer thread that stops after a panic become device errors the guest sees, logged,
//! while 2D, cross-domain and (for a lost render server) virgl keep serving.
//!
//! And the renderer in a process of its own (`RenderWorker`, the backend's default): a
//! worker killed by `SIGSEGV` mid-stream, as a fault in Mesa would, loses the virgl and venus
//! contexts (device errors, a log line with the worker's pid and the signal), while 2D and
//! cross-domain keep serving in this process and the worker is reaped; a worker that stops
//! answering (`SIGSTOP`, as a hang in Mesa) is killed after the answer timeout and lost the
//! same way, without hanging the device.
//!
//! The first two tests run the real virglrenderer (llvmpipe in this process, lavapipe in
//! the render server); where it is missing they say why and return, unless
//! `VUG_REQUIRE_RENDERER` is set (CI), where that is a failure. The last one runs the
//! renderer thread with the `FakeRenderer` (a stand-in for a GPU, named as such), so the
//! thread's containment is tested on every host.

use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::ports::{GuestMemory, Renderer, RendererError};
use vhost_user_gpu::device::{Completion, DeviceConfig, FenceToken, GpuDevice, Ports};
use vhost_user_gpu::protocol::{
    format, CtrlHeader, GpuCommand, GpuError, GpuResponse, MemEntry, Rect, Resource3d, Transfer3d,
    CAPSET_CROSS_DOMAIN, CAPSET_VENUS, CAPSET_VIRGL2, FLAG_FENCE, FLAG_INFO_RING_IDX, MAP_CACHE_WC,
};
use vhost_user_gpu::renderer::fake::FakeRenderer;
use vhost_user_gpu::renderer::{RenderWorker, RendererThread, VirglConfig, VirglRenderer};
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion, NoDisplay};

const VIRGL_CTX: u32 = 1;
const VENUS_CTX: u32 = 2;
const XD_CTX: u32 = 3;
const BACKING: u64 = 0x10000;

/// Every log line of this test process (level, target, text).
struct Captured(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

fn logged() -> &'static Captured {
    static LOGGER: OnceLock<&'static Captured> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static Captured = Box::leak(Box::new(Captured(Mutex::new(Vec::new()))));
        log::set_logger(logger).expect("the only logger");
        log::set_max_level(log::LevelFilter::Debug);
        logger
    })
}

/// Whether a line at `level` containing every one of `words` was logged.
fn was_logged(level: log::Level, words: &[&str]) -> bool {
    logged()
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(l, text)| *l == level && words.iter().all(|w| text.contains(w)))
}

/// virglrenderer has one global state: one renderer at a time in this test binary.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn skip(reason: String) -> Option<(RendererThread, Option<u32>)> {
    if std::env::var_os("VUG_REQUIRE_RENDERER").is_some() {
        panic!("VUG_REQUIRE_RENDERER is set but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// The real renderer (virgl and venus, venus also from a library older than 1.0) on its
/// thread, and the render server's pid.
fn real_renderer() -> Option<(RendererThread, Option<u32>)> {
    let config = VirglConfig {
        legacy_venus: true,
        ..VirglConfig::default()
    };
    if !config.render_server.exists() {
        return skip(format!(
            "{} is missing (Debian: virgl-server)",
            config.render_server.display()
        ));
    }
    let (pid_tx, pid_rx) = mpsc::channel();
    let started = RendererThread::spawn(move || {
        let r = VirglRenderer::new(&config)?;
        let _ = pid_tx.send(r.render_server_pid());
        Ok(Box::new(r) as Box<dyn Renderer>)
    });
    match started {
        Ok(thread) => Some((thread, pid_rx.recv().ok().flatten())),
        Err(RendererError::Unavailable(e)) => skip(e),
        Err(e) => panic!("the library loads but the renderer does not start: {e}"),
    }
}

struct Harness {
    dev: GpuDevice,
    mem: GuestMemory,
    _region: std::sync::Arc<FrontendRegion>,
}

fn device(thread: &RendererThread) -> Harness {
    device_with(Box::new(thread.client()))
}

fn device_with(renderer: vhost_user_gpu::device::ports::SendRenderer) -> Harness {
    // Each test's lines only (the tests run one at a time: `serial`).
    logged().0.lock().unwrap().clear();
    let region = FrontendRegion::new(4 << 20);
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(region.clone())),
        display: Box::new(NoDisplay),
        // A FAKE advisor with a fixed answer: no blob is mapped here.
        advisor: Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        exporter: None,
        channels: None,
        renderer: Some(renderer),
    };
    let config = DeviceConfig {
        hostmem: 4 << 20,
        cross_domain: true,
        ..DeviceConfig::default()
    };
    let mut dev = GpuDevice::new(config, ports);
    dev.ack_features(dev.features());
    Harness {
        dev,
        mem: vug_test_support::shared_guest_memory(1 << 20).unwrap(),
        _region: region,
    }
}

impl Harness {
    fn process(&mut self, hdr: CtrlHeader, command: GpuCommand) -> Completion {
        let mut request = Vec::new();
        command.encode(&hdr, &mut request);
        self.dev.process_control(&self.mem, &request)
    }

    fn send(&mut self, ctx_id: u32, command: GpuCommand) -> GpuResponse {
        let hdr = CtrlHeader {
            ctx_id,
            ..CtrlHeader::new(0)
        };
        match self.process(hdr, command) {
            Completion::Now(bytes) => GpuResponse::decode(&bytes).unwrap().1,
            Completion::Later { .. } => panic!("an unfenced command waits"),
        }
    }

    /// A fenced command on `ctx_id`'s ring 0: its token when its answer waits.
    fn fenced(&mut self, ctx_id: u32, fence_id: u64, command: GpuCommand) -> Option<FenceToken> {
        let hdr = CtrlHeader {
            ctx_id,
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            fence_id,
            ring_idx: 0,
            ..CtrlHeader::new(0)
        };
        match self.process(hdr, command) {
            Completion::Now(_) => None,
            Completion::Later { token, .. } => Some(token),
        }
    }

    fn create_context(&mut self, ctx_id: u32, capset: u32) -> GpuResponse {
        self.send(
            ctx_id,
            GpuCommand::CtxCreate {
                context_init: capset,
                debug_name: format!("ctx{ctx_id}"),
            },
        )
    }

    /// Whether the device's event fd becomes readable within `ms`.
    fn readable(&self, ms: i64) -> bool {
        let fd = self.dev.event_fd().expect("the device has an event fd");
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let t = rustix::time::Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        rustix::event::poll(&mut fds, Some(&t)).unwrap_or(0) > 0
    }

    /// Serves events until `done` holds (up to 10 s); returns the tokens released.
    fn serve_until(&mut self, mut done: impl FnMut(&Self) -> bool) -> Vec<FenceToken> {
        let mut tokens = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) && Instant::now() < deadline {
            self.readable(100);
            tokens.extend(self.dev.service(&self.mem));
        }
        tokens
    }

    /// 2D still serves: create, back, upload, unref.
    fn two_d_serves(&mut self, id: u32) {
        let entries = vec![MemEntry {
            addr: BACKING,
            length: 4096,
        }];
        for command in [
            GpuCommand::ResourceCreate2d {
                resource_id: id,
                format: format::B8G8R8X8_UNORM,
                width: 8,
                height: 8,
            },
            GpuCommand::ResourceAttachBacking {
                resource_id: id,
                entries,
            },
            GpuCommand::TransferToHost2d {
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: 8,
                    height: 8,
                },
                offset: 0,
                resource_id: id,
            },
            GpuCommand::ResourceUnref { resource_id: id },
        ] {
            assert_eq!(self.send(0, command), GpuResponse::OkNoData, "2D");
        }
    }

    /// Cross-domain still serves: a new context, and its capset.
    fn cross_domain_serves(&mut self, ctx_id: u32) {
        assert_eq!(
            self.create_context(ctx_id, CAPSET_CROSS_DOMAIN),
            GpuResponse::OkNoData
        );
        assert!(matches!(
            self.send(
                0,
                GpuCommand::GetCapset {
                    capset_id: CAPSET_CROSS_DOMAIN,
                    capset_version: 0
                }
            ),
            GpuResponse::OkCapset(_)
        ));
    }

    /// A 4x4 texture `id` in virgl context `ctx_id`, cleared to green, read back into guest
    /// memory: the answer of the last step, and the first pixel.
    fn virgl_clear(&mut self, ctx_id: u32, id: u32) -> (GpuResponse, [u8; 4]) {
        self.mem
            .write_slice(&[0u8; 64], GuestAddress(BACKING))
            .unwrap();
        let texture = Resource3d {
            target: 2,
            format: 2,
            bind: (1 << 1) | (1 << 3),
            width: 4,
            height: 4,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        };
        let steps = [
            (
                0,
                GpuCommand::ResourceCreate3d {
                    resource_id: id,
                    resource: texture,
                },
            ),
            (
                0,
                GpuCommand::ResourceAttachBacking {
                    resource_id: id,
                    entries: vec![MemEntry {
                        addr: BACKING,
                        length: 4096,
                    }],
                },
            ),
            (ctx_id, GpuCommand::CtxAttachResource { resource_id: id }),
            (
                ctx_id,
                GpuCommand::Submit3d {
                    commands: clear_stream(id, 1, [0.0, 1.0, 0.0, 1.0]),
                },
            ),
            (
                ctx_id,
                GpuCommand::TransferFromHost3d {
                    resource_id: id,
                    transfer: Transfer3d::image(4, 4),
                },
            ),
        ];
        let mut last = GpuResponse::OkNoData;
        for (ctx, command) in steps {
            last = self.send(ctx, command);
            if last != GpuResponse::OkNoData {
                break;
            }
        }
        let mut pixel = [0u8; 4];
        self.mem
            .read_slice(&mut pixel, GuestAddress(BACKING))
            .unwrap();
        (last, pixel)
    }
}

/// virgl: a surface on `res`, bound as the colour buffer, cleared to `rgba` (virglrenderer's
/// virgl_protocol.h: CREATE_OBJECT 1 of SURFACE 8, SET_FRAMEBUFFER_STATE 5, CLEAR 7).
fn clear_stream(res: u32, surface: u32, rgba: [f32; 4]) -> Vec<u8> {
    let cmd0 = |cmd: u32, obj: u32, len: u32| cmd | (obj << 8) | (len << 16);
    let mut w = vec![
        cmd0(1, 8, 5),
        surface,
        res,
        2, // B8G8R8X8_UNORM
        0,
        0,
        cmd0(5, 0, 3),
        1,
        0,
        surface,
        cmd0(7, 0, 8),
        1 << 2, // PIPE_CLEAR_COLOR0
    ];
    w.extend(rgba.iter().map(|c| c.to_bits()));
    w.extend([0, 0, 0]);
    w.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn submit(commands: Vec<u8>) -> GpuCommand {
    GpuCommand::Submit3d { commands }
}

#[test]
fn a_killed_render_server_fails_venus_contexts_and_the_rest_keeps_serving() {
    let _g = serial();
    let Some((thread, pid)) = real_renderer() else {
        return;
    };
    let pid = pid.expect("venus is on: the render server was started");
    let mut h = device(&thread);
    assert_eq!(
        h.create_context(VIRGL_CTX, CAPSET_VIRGL2),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_context(VENUS_CTX, CAPSET_VENUS),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_context(XD_CTX, CAPSET_CROSS_DOMAIN),
        GpuResponse::OkNoData
    );
    // Venus answers fences before the loss.
    if let Some(token) = h.fenced(VENUS_CTX, 1, submit(Vec::new())) {
        let tokens = h.serve_until(|h| h.dev.pending_fences() == 0);
        assert_eq!(tokens, vec![token], "venus's ring-0 fence signalled");
    }

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    h.serve_until(|_| was_logged(log::Level::Error, &["venus contexts", "are lost"]));
    assert!(
        was_logged(
            log::Level::Error,
            &["render server", "venus contexts", "are lost"]
        ),
        "the loss is logged"
    );

    // The guest sees device errors on the lost context, and new venus contexts are refused.
    assert_eq!(
        h.send(VENUS_CTX, submit(vec![0; 8])),
        GpuResponse::Err(GpuError::Unspec)
    );
    assert!(
        was_logged(log::Level::Warn, &["ctx_id 2", "was lost"]),
        "the refusal is logged (through the guest log limiter)"
    );
    assert_eq!(
        h.create_context(4, CAPSET_VENUS),
        GpuResponse::Err(GpuError::Unspec),
        "no render server: no new venus context"
    );
    assert_eq!(
        h.fenced(VENUS_CTX, 2, submit(Vec::new())),
        None,
        "a fenced command on the lost context does not wait for a fence that never comes"
    );
    // virgl (in this process), 2D and cross-domain keep serving.
    let (answer, pixel) = h.virgl_clear(VIRGL_CTX, 10);
    assert_eq!(answer, GpuResponse::OkNoData);
    assert_eq!(&pixel[..3], &[0, 255, 0], "virgl still renders (B, G, R)");
    h.two_d_serves(11);
    h.cross_domain_serves(5);
    assert_eq!(h.dev.pending_fences(), 0);
}

#[test]
fn a_panic_on_the_real_renderer_thread_becomes_a_device_error() {
    let _g = serial();
    let Some((thread, _)) = real_renderer() else {
        return;
    };
    let mut h = device(&thread);
    assert_eq!(
        h.create_context(VIRGL_CTX, CAPSET_VIRGL2),
        GpuResponse::OkNoData
    );
    let (answer, pixel) = h.virgl_clear(VIRGL_CTX, 10);
    assert_eq!(
        (answer, &pixel[..3]),
        (GpuResponse::OkNoData, &[0u8, 255, 0][..])
    );
    contained_panic(&thread, &mut h);
}

#[test]
fn a_panic_on_the_renderer_thread_releases_waiting_answers() {
    let _g = serial();
    // The FAKE renderer (a stand-in for a GPU): its fences signal only when told, so an
    // answer is certainly waiting when the thread stops.
    let thread =
        RendererThread::spawn(|| Ok(Box::new(FakeRenderer::new()) as Box<dyn Renderer>)).unwrap();
    let mut h = device(&thread);
    assert_eq!(
        h.create_context(VIRGL_CTX, CAPSET_VIRGL2),
        GpuResponse::OkNoData
    );
    let waiting = h
        .fenced(VIRGL_CTX, 1, submit(vec![0; 4]))
        .expect("the fake renderer's fence waits");
    assert!(!h.readable(0), "nothing to serve yet");
    let released = contained_panic(&thread, &mut h);
    assert_eq!(released, vec![waiting], "the waiting answer is released");
}

/// Stops the renderer thread with a panic and checks what the guest sees; returns the
/// answers released.
fn contained_panic(thread: &RendererThread, h: &mut Harness) -> Vec<FenceToken> {
    assert_eq!(
        h.create_context(XD_CTX, CAPSET_CROSS_DOMAIN),
        GpuResponse::OkNoData
    );
    assert!(
        thread
            .run_on_thread::<()>(|| panic!("injected renderer fault"))
            .is_err(),
        "the request that panicked has no answer"
    );
    assert!(h.readable(5000), "the stop wakes the device");
    let released =
        h.serve_until(|_| was_logged(log::Level::Error, &["renderer contexts", "are lost"]));
    assert!(
        was_logged(
            log::Level::Error,
            &["injected renderer fault", "renderer is stopped"]
        ),
        "the panic is logged"
    );
    assert_eq!(h.dev.pending_fences(), 0, "no answer waits for it any more");
    assert!(
        !h.readable(0),
        "the stopped renderer no longer wakes the device (no busy loop)"
    );
    // Device errors on the lost context and on every 3D command.
    assert_eq!(
        h.send(VIRGL_CTX, submit(vec![0; 4])),
        GpuResponse::Err(GpuError::Unspec)
    );
    assert!(was_logged(log::Level::Warn, &["ctx_id 1", "was lost"]));
    assert_eq!(
        h.create_context(4, CAPSET_VIRGL2),
        GpuResponse::Err(GpuError::Unspec)
    );
    let (answer, _) = h.virgl_clear(4, 12);
    assert_eq!(answer, GpuResponse::Err(GpuError::Unspec));
    assert!(was_logged(log::Level::Warn, &["the renderer stopped"]));
    // 2D and cross-domain keep serving; the existing cross-domain context too.
    h.two_d_serves(11);
    h.cross_domain_serves(5);
    assert_eq!(
        h.send(XD_CTX, GpuCommand::CtxDestroy),
        GpuResponse::OkNoData
    );
    h.dev.reset();
    released
}

/// The real renderer (virgl and venus, venus also from a library older than 1.0) in a
/// render worker: this package's binary, re-executed as `--render-worker`.
fn real_worker() -> Option<RenderWorker> {
    let defaults = VirglConfig::default();
    if !defaults.render_server.exists() {
        skip(format!(
            "{} is missing (Debian: virgl-server)",
            defaults.render_server.display()
        ));
        return None;
    }
    let config = vug_test_support::render_worker_config();
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_vhost-user-gpu"));
    match RenderWorker::spawn(program, config, 0) {
        Ok(worker) => Some(worker),
        Err(RendererError::Unavailable(e)) => {
            skip(e);
            None
        }
        Err(e) => panic!("the library loads but the render worker does not start: {e}"),
    }
}

#[test]
fn a_render_worker_killed_by_sigsegv_loses_only_renderer_contexts() {
    let _g = serial();
    let Some(worker) = real_worker() else {
        return;
    };
    let pid = worker.pid();
    let mut h = device_with(Box::new(worker.client()));
    assert_eq!(
        h.create_context(VIRGL_CTX, CAPSET_VIRGL2),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_context(VENUS_CTX, CAPSET_VENUS),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_context(XD_CTX, CAPSET_CROSS_DOMAIN),
        GpuResponse::OkNoData
    );
    // Both render before the crash: virgl draws into guest memory the worker mapped from
    // the memfd, venus answers a fence.
    let (answer, pixel) = h.virgl_clear(VIRGL_CTX, 10);
    assert_eq!(
        (answer, &pixel[..3]),
        (GpuResponse::OkNoData, &[0u8, 255, 0][..]),
        "virgl renders in the worker (B, G, R)"
    );
    if let Some(token) = h.fenced(VENUS_CTX, 1, submit(Vec::new())) {
        let tokens = h.serve_until(|h| h.dev.pending_fences() == 0);
        assert_eq!(tokens, vec![token], "venus's ring-0 fence signalled");
    }
    // Mid-stream: a fenced virgl submit waits, then Mesa "crashes".
    let waiting = h.fenced(
        VIRGL_CTX,
        2,
        submit(clear_stream(10, 2, [1.0, 0.0, 0.0, 1.0])),
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::SEGV,
    )
    .unwrap();
    let mut released =
        h.serve_until(|_| was_logged(log::Level::Error, &["render worker", "SIGSEGV"]));
    assert!(
        was_logged(
            log::Level::Error,
            &[
                &format!("pid {pid}"),
                "SIGSEGV",
                "every renderer context is lost"
            ]
        ),
        "the loss is logged with the worker's pid and signal"
    );
    released.extend(h.serve_until(|h| h.dev.pending_fences() == 0));
    assert_eq!(
        h.dev.pending_fences(),
        0,
        "no answer waits for the dead worker"
    );
    if let Some(token) = waiting {
        // Signalled before the crash, or released by the loss: never left waiting.
        assert!(released.contains(&token), "the waiting answer is released");
    }
    // virgl and venus contexts get device errors; new ones are refused.
    assert_eq!(
        h.send(VIRGL_CTX, submit(clear_stream(10, 3, [0.0; 4]))),
        GpuResponse::Err(GpuError::Unspec)
    );
    assert_eq!(
        h.send(VENUS_CTX, submit(vec![0; 8])),
        GpuResponse::Err(GpuError::Unspec)
    );
    assert_eq!(
        h.create_context(4, CAPSET_VIRGL2),
        GpuResponse::Err(GpuError::Unspec)
    );
    // 2D and cross-domain keep serving; the existing cross-domain context too.
    h.two_d_serves(11);
    h.cross_domain_serves(5);
    assert_eq!(
        h.send(XD_CTX, GpuCommand::CtxDestroy),
        GpuResponse::OkNoData
    );
    // The worker was reaped (no zombie left behind).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the worker was reaped"
    );
    h.dev.reset();
}

#[test]
fn a_render_worker_that_stops_answering_is_killed_and_lost() {
    let _g = serial();
    let Some(worker) = real_worker() else {
        return;
    };
    let pid = worker.pid();
    worker.set_answer_timeout(Duration::from_millis(500));
    let mut h = device_with(Box::new(worker.client()));
    assert_eq!(
        h.create_context(VIRGL_CTX, CAPSET_VIRGL2),
        GpuResponse::OkNoData
    );
    // A worker hung inside Mesa, as far as the backend can tell.
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::STOP).unwrap();
    let started = Instant::now();
    assert_eq!(
        h.send(VIRGL_CTX, submit(clear_stream(1, 1, [0.0; 4]))),
        GpuResponse::Err(GpuError::Unspec),
        "the unanswered request fails"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not hang"
    );
    h.serve_until(|_| was_logged(log::Level::Error, &["did not answer"]));
    assert!(
        was_logged(
            log::Level::Error,
            &[&format!("pid {pid}"), "did not answer SUBMIT_3D", "killed"]
        ),
        "the hang is logged"
    );
    h.two_d_serves(11);
    h.cross_domain_serves(5);
    // Killed (SIGKILL ends a stopped process too) and reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the hung worker was killed and reaped"
    );
    h.dev.reset();
}
