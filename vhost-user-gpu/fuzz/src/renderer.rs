//! The renderer fuzz harness: a `GpuDevice` with the **real** virglrenderer (virgl contexts
//! on llvmpipe, venus contexts in the render server, lavapipe) in a render worker, the
//! backend's default (`--renderer-isolation process`): this package's `vhost-user-gpu`
//! binary re-executed as `--render-worker`, named by `VUG_RENDER_WORKER` (`.ci/fuzz` builds
//! it and sets it). The device is fed SUBMIT_3D streams and 3D resource commands chosen by
//! the input, fences included.
//!
//! One worker serves the inputs one after another (virglrenderer keeps one global state per
//! process); every input gets a fresh device holding a client of it, and the device reset at
//! the end of the input resets the renderer (every context and resource goes). A fault
//! inside virglrenderer or Mesa ends the worker, not this process: that is the containment
//! under test (libvirglrenderer 0.10.4 has such faults on fuzzed virgl streams, a NULL
//! dereference in its command decoder among them). The input's device must then see the
//! renderer lost: every waiting fenced answer released, renderer commands refused, 2D and
//! cross-domain served; the next input starts a new worker. Venus is served even from a
//! library older than 1.0 (`legacy_venus`): the render server is what is fuzzed, whatever a
//! guest driver would accept.
//!
//! Input format (little-endian):
//!
//! ```text
//! byte 0      setup: bit 0 BLOB feature acked
//! then ops    op byte, then by op % 8:
//!   0 control     u16 len, len bytes: any control request, as is
//!   1 submit      u8 ctx, u8 fence, u16 len, len bytes: SUBMIT_3D of the bytes to context
//!                 CONTEXTS[ctx % 3]; fence & 3: 0 none, 1 global, 2 and 3 on ring fence >> 2
//!   2 guest write u32 gpa, u16 len, len bytes
//!   3 resource    u8 id, u8 target, u8 format, u8 bind, u16 width, u16 height:
//!                 RESOURCE_CREATE_3D, ATTACH_BACKING (RESOURCE_BACKING bytes of guest RAM)
//!                 and CTX_ATTACH to every context
//!   4 transfer    u8 ctx, u8 id, u8 to_host, u16 x, u16 y, u16 w, u16 h, u32 offset
//!   5 attach      u8 ctx, u8 id, u8 attach (bit 0: attach, else detach)
//!   6 service     let the device retire what completed
//!   7 context     u8 ctx: destroy it and create it again
//! ```
//!
//! Checked: every response decodes and echoes fence, ctx_id and ring; limits hold; within
//! [`FENCE_DEADLINE`] of the last op every waiting fenced answer is released (a fence that
//! never signals is a hang), except those on a venus context's rings, which the render
//! server may reject without a word (see `run_device`): destroying the context must release
//! them; then the device still serves: a 2D resource round-trips its
//! pixels, a new virgl context clears a texture that reads back with the cleared colour, a
//! new venus context is created (while the render server lives) and a cross-domain context
//! answers; after the device reset no fd is left behind. A hang inside the renderer shows as
//! libFuzzer's per-input `-timeout`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::ports::GuestMemory;
use vhost_user_gpu::device::{Completion, DeviceConfig, FenceToken, GpuDevice, Ports};
use vhost_user_gpu::protocol::{
    feature, format, Box3d, CtrlHeader, GpuCommand, GpuResponse, MemEntry, Rect, Resource3d,
    Transfer3d, CAPSET_CROSS_DOMAIN, CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2, FLAG_FENCE,
    FLAG_INFO_RING_IDX, MAP_CACHE_WC,
};
use vhost_user_gpu::renderer::RenderWorker;
use vm_memory::{Bytes, GuestAddress};
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion};

use super::{open_fds, CheckingDisplay, Reader};

/// The contexts every input starts with: (ctx_id, context_init).
pub const CONTEXTS: [(u32, u32); 3] = [(1, CAPSET_VIRGL2), (2, CAPSET_VIRGL), (3, CAPSET_VENUS)];
/// Guest RAM: one region.
pub const GUEST_RAM: usize = 1 << 20;
/// Guest bytes each RESOURCE op attaches as backing (at `id * RESOURCE_BACKING`).
pub const RESOURCE_BACKING: u64 = 64 << 10;
/// Resource ids the RESOURCE op uses (`1..=MAX_RESOURCE_ID`).
pub const MAX_RESOURCE_ID: u8 = 8;
/// Most operations taken from one input.
pub const MAX_OPS: usize = 64;
/// How long the waiting fenced answers may take after the last op.
pub const FENCE_DEADLINE: Duration = Duration::from_secs(10);
/// Host memory the device may charge (small: inputs stay fast, llvmpipe stays small).
pub const MAX_RESOURCE_MEMORY: u64 = 16 << 20;

/// Op codes (see the module docs).
pub mod op {
    /// A control request as is.
    pub const CONTROL: u8 = 0;
    /// SUBMIT_3D to one of the contexts.
    pub const SUBMIT: u8 = 1;
    /// Write into guest memory.
    pub const GUEST_WRITE: u8 = 2;
    /// RESOURCE_CREATE_3D + backing + attach.
    pub const RESOURCE: u8 = 3;
    /// TRANSFER_TO_HOST_3D / TRANSFER_FROM_HOST_3D.
    pub const TRANSFER: u8 = 4;
    /// CTX_ATTACH_RESOURCE / CTX_DETACH_RESOURCE.
    pub const ATTACH: u8 = 5;
    /// GpuDevice::service.
    pub const SERVICE: u8 = 6;
    /// Destroy a context and create it again.
    pub const CONTEXT: u8 = 7;
}

/// Builds inputs in this harness's format (for the seed generator).
#[derive(Debug, Default, Clone)]
pub struct RendererInput(Vec<u8>);

impl RendererInput {
    /// An input with setup byte `setup`.
    pub fn new(setup: u8) -> Self {
        RendererInput(vec![setup])
    }
    /// SUBMIT_3D of `stream` to `CONTEXTS[ctx]`, with `fence` as in the module docs.
    pub fn submit(mut self, ctx: u8, fence: u8, stream: &[u8]) -> Self {
        self.0.extend([op::SUBMIT, ctx, fence]);
        self.0
            .extend_from_slice(&(stream.len() as u16).to_le_bytes());
        self.0.extend_from_slice(stream);
        self
    }
    /// A 3D resource `id` attached to every context.
    pub fn resource(mut self, id: u8, target: u8, format: u8, bind: u8, w: u16, h: u16) -> Self {
        self.0.extend([op::RESOURCE, id, target, format, bind]);
        self.0.extend_from_slice(&w.to_le_bytes());
        self.0.extend_from_slice(&h.to_le_bytes());
        self
    }
    /// A transfer of `w`x`h` at (0, 0) of resource `id` in context `ctx`.
    pub fn transfer(mut self, ctx: u8, id: u8, to_host: bool, w: u16, h: u16) -> Self {
        self.0
            .extend([op::TRANSFER, ctx, id, u8::from(to_host), 0, 0, 0, 0]);
        self.0.extend_from_slice(&w.to_le_bytes());
        self.0.extend_from_slice(&h.to_le_bytes());
        self.0.extend_from_slice(&0u32.to_le_bytes());
        self
    }
    /// Writes `data` at guest address `gpa`.
    pub fn guest_write(mut self, gpa: u32, data: &[u8]) -> Self {
        self.0.push(op::GUEST_WRITE);
        self.0.extend_from_slice(&gpa.to_le_bytes());
        self.0.extend_from_slice(&(data.len() as u16).to_le_bytes());
        self.0.extend_from_slice(data);
        self
    }
    /// A bare op (service).
    pub fn op(mut self, op: u8) -> Self {
        self.0.push(op);
        self
    }
    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// The render worker, started on the first input and again after one is lost. Every
/// failure to start it is a failure of the target (the CI script skips the target where the
/// library is absent).
fn start_worker() -> RenderWorker {
    let program = std::env::var_os("VUG_RENDER_WORKER").unwrap_or_else(|| {
        panic!(
            "VUG_RENDER_WORKER must name the vhost-user-gpu binary the render worker runs \
             (.ci/fuzz builds it and sets it)"
        )
    });
    let config = vug_test_support::render_worker_config();
    let worker =
        RenderWorker::spawn(std::path::Path::new(&program), config, 0).unwrap_or_else(|e| {
            panic!(
                "the renderer target needs virglrenderer with llvmpipe and the render server \
             (Debian: libvirglrenderer1 virgl-server libegl-mesa0 libgl1-mesa-dri \
             mesa-vulkan-drivers) and the worker {}: {e}",
                std::path::Path::new(&program).display()
            )
        });
    // A hang inside the worker ends it well within libFuzzer's per-input -timeout (25 s in
    // .ci/fuzz): the containment of a hang is then what is checked, as for a crash.
    worker.set_answer_timeout(Duration::from_secs(10));
    let mut client = worker.client();
    // One reset first: whatever one-time state a reset leaves in the renderer is then
    // part of the fd baseline, not taken for a leak of the first input.
    vhost_user_gpu::device::ports::Renderer::reset(&mut client);
    let ids: Vec<u32> = vhost_user_gpu::device::ports::Renderer::capsets(&client)
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(
        ids.contains(&CAPSET_VIRGL2) && ids.contains(&CAPSET_VENUS),
        "the renderer serves capsets {ids:?}: the target needs virgl and venus"
    );
    worker
}

/// The render worker for the next input: the running one, or a new one when the last was
/// lost (with the fd count of this process once it runs).
fn worker() -> std::sync::MutexGuard<'static, Option<(RenderWorker, usize)>> {
    static WORKER: Mutex<Option<(RenderWorker, usize)>> = Mutex::new(None);
    let mut worker = WORKER.lock().unwrap_or_else(|e| e.into_inner());
    if worker.as_ref().is_some_and(|(w, _)| w.lost().is_some()) {
        // Dropped first: its socket and thread go before the new baseline is counted.
        *worker = None;
    }
    if worker.is_none() {
        // The guest RAM's memfd is part of the baseline.
        drop(guest_ram());
        let started = start_worker();
        *worker = Some((started, open_fds().len()));
    }
    worker
}

struct Harness {
    dev: GpuDevice,
    mem: GuestMemory,
    venus_ok: bool,
    /// Answers that wait: token, ctx_id, whether on a ring (INFO_RING_IDX).
    waiting: Vec<(FenceToken, u32, bool)>,
}

impl Harness {
    /// Sends a request; returns the decoded answer (None for an answer that waits).
    fn request(&mut self, request: &[u8]) -> Option<GpuResponse> {
        let out = match self.dev.process_control(&self.mem, request) {
            Completion::Now(bytes) => bytes,
            Completion::Later { response, token } => {
                check_echo(request, &response);
                let hdr = CtrlHeader::decode(request).expect("a fenced request decodes");
                self.waiting
                    .push((token, hdr.ctx_id, hdr.flags & FLAG_INFO_RING_IDX != 0));
                return None;
            }
        };
        check_echo(request, &out);
        assert!(self.dev.resource_memory() <= MAX_RESOURCE_MEMORY);
        Some(GpuResponse::decode(&out).expect("the answer decodes").1)
    }

    fn send(&mut self, hdr: CtrlHeader, command: GpuCommand) -> Option<GpuResponse> {
        let mut req = Vec::new();
        command.encode(&hdr, &mut req);
        self.request(&req)
    }

    fn ctx(&mut self, ctx_id: u32, command: GpuCommand) -> GpuResponse {
        self.send(
            CtrlHeader {
                ctx_id,
                ..CtrlHeader::new(0)
            },
            command,
        )
        .expect("an unfenced command is answered at once")
    }

    fn create_context(&mut self, ctx_id: u32, context_init: u32) -> GpuResponse {
        self.ctx(
            ctx_id,
            GpuCommand::CtxCreate {
                context_init,
                debug_name: format!("fuzz-{ctx_id}"),
            },
        )
    }

    /// Releases the fenced answers that became ready.
    fn service(&mut self) {
        let done = self.dev.service(&self.mem);
        self.waiting.retain(|(t, ..)| !done.contains(t));
        assert_eq!(self.waiting.len(), self.dev.pending_fences());
    }

    /// Waits (up to `deadline`) until the answers `left` does not excuse are released;
    /// returns those still waiting.
    fn drain(
        &mut self,
        deadline: Duration,
        left: impl Fn(&(FenceToken, u32, bool)) -> bool,
    ) -> Vec<(FenceToken, u32, bool)> {
        let end = Instant::now() + deadline;
        loop {
            self.service();
            let stuck: Vec<_> = self.waiting.iter().copied().filter(|w| !left(w)).collect();
            if stuck.is_empty() || Instant::now() >= end {
                return stuck;
            }
            if let Some(fd) = self.dev.event_fd() {
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::IN,
                )];
                let t = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000_000,
                };
                let _ = rustix::event::poll(&mut fds, Some(&t));
            }
        }
    }
}

/// The answer echoes the request's fence, ctx_id and ring (where the request decodes).
fn check_echo(request: &[u8], answer: &[u8]) {
    let (rhdr, _) = GpuResponse::decode(answer).expect("the answer decodes");
    if let Ok(hdr) = CtrlHeader::decode(request) {
        assert_eq!(rhdr.ctx_id, hdr.ctx_id, "ctx_id echoed");
        if hdr.flags & FLAG_FENCE != 0 {
            assert_eq!(rhdr.fence_id, hdr.fence_id, "fence echoed");
            if hdr.flags & FLAG_INFO_RING_IDX != 0 {
                assert_eq!(rhdr.ring_idx, hdr.ring_idx, "ring echoed");
            }
        }
    }
}

fn resource_3d(target: u32, format: u32, bind: u32, width: u32, height: u32) -> Resource3d {
    Resource3d {
        target,
        format,
        bind,
        width,
        height,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    }
}

/// virgl targets the RESOURCE op picks from (PIPE_BUFFER, TEXTURE_1D, 2D, 3D, CUBE, RECT,
/// 1D_ARRAY, 2D_ARRAY, CUBE_ARRAY).
const TARGETS: [u32; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 8];

/// Runs one input (see the module docs).
pub fn run(data: &[u8]) {
    let guard = worker();
    let (worker, baseline) = guard.as_ref().expect("a worker was started");
    run_device(worker, data);
    if let Some(why) = worker.lost() {
        // Contained: this input's device served on; the next input starts a new worker.
        eprintln!("renderer target: {why}");
    }
    let now = open_fds();
    assert!(
        now.len() <= *baseline,
        "fd leak: {} open fds, {baseline} before: {now:?}",
        now.len()
    );
}

fn run_device(worker: &RenderWorker, data: &[u8]) {
    let mut r = Reader(data);
    let setup = r.u8().unwrap_or(0);
    let mut features = (1u64 << feature::VIRGL) | (1u64 << feature::CONTEXT_INIT);
    if setup & 1 != 0 {
        features |= 1u64 << feature::RESOURCE_BLOB;
    }
    let region = FrontendRegion::new(4 << 20);
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(region.clone())),
        display: Box::new(CheckingDisplay),
        // A FAKE map advisor with a fixed answer: the policy is not what is fuzzed here.
        advisor: Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        exporter: vhost_user_gpu::alloc::guest_page_exporter(),
        channels: None,
        renderer: Some(Box::new(worker.client())),
    };
    let config = DeviceConfig {
        outputs: vec![(64, 48)],
        hostmem: 4 << 20,
        max_resource_memory: MAX_RESOURCE_MEMORY,
        max_resources: 64,
        cross_domain: true,
        max_pending_fences: 256,
        max_fds: 32,
    };
    let mut h = Harness {
        dev: GpuDevice::new(config, ports),
        mem: guest_ram(),
        venus_ok: true,
        waiting: Vec::new(),
    };
    h.dev.ack_features(features);
    for (ctx_id, init) in CONTEXTS {
        let answer = h.create_context(ctx_id, init);
        if init == CAPSET_VENUS {
            // The render server may be gone (an earlier input killed it): then venus
            // contexts are refused, cleanly.
            h.venus_ok = answer == GpuResponse::OkNoData;
        } else {
            virgl_created(worker, &answer, ctx_id);
        }
    }
    let mut fence_id = 1u64;
    for _ in 0..MAX_OPS {
        let Some(code) = r.u8() else { break };
        match code % 8 {
            op::CONTROL => {
                let len = r.u16().unwrap_or(0) as usize;
                let request = r.bytes(len);
                h.request(request);
            }
            op::SUBMIT => {
                let (ctx_id, _) = CONTEXTS[usize::from(r.u8().unwrap_or(0) % 3)];
                let fence = r.u8().unwrap_or(0);
                let len = r.u16().unwrap_or(0) as usize;
                let commands = r.bytes(len).to_vec();
                let mut hdr = CtrlHeader {
                    ctx_id,
                    ..CtrlHeader::new(0)
                };
                if fence & 3 != 0 {
                    hdr.flags |= FLAG_FENCE;
                    hdr.fence_id = fence_id;
                    fence_id += 1;
                    if fence & 2 != 0 {
                        hdr.flags |= FLAG_INFO_RING_IDX;
                        hdr.ring_idx = fence >> 2;
                    }
                }
                h.send(hdr, GpuCommand::Submit3d { commands });
            }
            op::GUEST_WRITE => {
                let gpa = u64::from(r.u32().unwrap_or(0));
                let len = r.u16().unwrap_or(0) as usize;
                let _ = h.mem.write_slice(r.bytes(len), GuestAddress(gpa));
            }
            op::RESOURCE => {
                // 1..=MAX_RESOURCE_ID map to themselves.
                let id = u32::from(r.u8().unwrap_or(1).wrapping_sub(1) % MAX_RESOURCE_ID) + 1;
                let target = TARGETS[usize::from(r.u8().unwrap_or(2)) % TARGETS.len()];
                let format = u32::from(r.u8().unwrap_or(2));
                let bind = u32::from(r.u8().unwrap_or(0xa)) << 1;
                let w = u32::from(r.u16().unwrap_or(16)).max(1);
                let height = u32::from(r.u16().unwrap_or(16)).max(1);
                let create = resource_3d(target, format, bind, w, height);
                h.ctx(
                    0,
                    GpuCommand::ResourceCreate3d {
                        resource_id: id,
                        resource: create,
                    },
                );
                h.ctx(
                    0,
                    GpuCommand::ResourceAttachBacking {
                        resource_id: id,
                        entries: vec![MemEntry {
                            addr: u64::from(id) * RESOURCE_BACKING,
                            length: RESOURCE_BACKING as u32,
                        }],
                    },
                );
                for (ctx_id, _) in CONTEXTS {
                    h.ctx(ctx_id, GpuCommand::CtxAttachResource { resource_id: id });
                }
            }
            op::TRANSFER => {
                let (ctx_id, _) = CONTEXTS[usize::from(r.u8().unwrap_or(0) % 3)];
                let id = u32::from(r.u8().unwrap_or(1));
                let to_host = r.u8().unwrap_or(1) & 1 != 0;
                let x = u32::from(r.u16().unwrap_or(0));
                let y = u32::from(r.u16().unwrap_or(0));
                let w = u32::from(r.u16().unwrap_or(1));
                let hh = u32::from(r.u16().unwrap_or(1));
                let offset = u64::from(r.u32().unwrap_or(0));
                let transfer = Transfer3d {
                    bx: Box3d {
                        x,
                        y,
                        z: 0,
                        w,
                        h: hh,
                        d: 1,
                    },
                    offset,
                    level: 0,
                    stride: 0,
                    layer_stride: 0,
                };
                let command = if to_host {
                    GpuCommand::TransferToHost3d {
                        resource_id: id,
                        transfer,
                    }
                } else {
                    GpuCommand::TransferFromHost3d {
                        resource_id: id,
                        transfer,
                    }
                };
                h.ctx(ctx_id, command);
            }
            op::ATTACH => {
                let (ctx_id, _) = CONTEXTS[usize::from(r.u8().unwrap_or(0) % 3)];
                let resource_id = u32::from(r.u8().unwrap_or(1));
                let command = if r.u8().unwrap_or(1) & 1 != 0 {
                    GpuCommand::CtxAttachResource { resource_id }
                } else {
                    GpuCommand::CtxDetachResource { resource_id }
                };
                h.ctx(ctx_id, command);
            }
            op::SERVICE => {
                h.service();
            }
            _ => {
                let (ctx_id, init) = CONTEXTS[usize::from(r.u8().unwrap_or(0) % 3)];
                h.ctx(ctx_id, GpuCommand::CtxDestroy);
                let answer = h.create_context(ctx_id, init);
                if init != CAPSET_VENUS {
                    virgl_created(worker, &answer, ctx_id);
                }
            }
        }
    }
    // Every waiting answer is released in time: the renderer did not hang on the input.
    // Except fences on a venus context's rings: the render server checks those only when
    // it runs them (a ring without a queue: "vkr: invalid ring_idx"), and the library
    // reports nothing, so such a fence never signals. Its answer waits until the context
    // goes, which must release it.
    // A lost worker releases every one of them (the device learns of the loss through its
    // poll fd).
    let (venus_ctx, _) = CONTEXTS[2];
    let lost = worker.lost().is_some();
    let stuck = h.drain(FENCE_DEADLINE, |&(_, ctx, ring)| {
        !lost && ring && ctx == venus_ctx
    });
    assert!(
        stuck.is_empty(),
        "fenced answers still wait {FENCE_DEADLINE:?} after the last command: {stuck:?}"
    );
    if !h.waiting.is_empty() {
        h.ctx(venus_ctx, GpuCommand::CtxDestroy);
        h.service();
        assert!(
            h.waiting.is_empty(),
            "destroying the venus context released its answers: {:?}",
            h.waiting
        );
    }
    still_serves(&mut h, worker);
    h.dev.reset();
    assert_eq!(h.dev.resource_count(), 0);
    assert_eq!(h.dev.resource_memory(), 0);
}

/// Guest RAM in a memfd, as a frontend shares it (the render worker maps it too), zeroed:
/// one memfd for every input (the worker's client keeps the last memory table it sent, so a
/// fresh memfd per input would stay open until the next).
fn guest_ram() -> GuestMemory {
    static RAM: std::sync::OnceLock<GuestMemory> = std::sync::OnceLock::new();
    let ram = RAM.get_or_init(new_guest_ram).clone();
    ram.write_slice(&vec![0u8; GUEST_RAM], GuestAddress(0))
        .expect("zeroing guest RAM");
    ram
}

fn new_guest_ram() -> GuestMemory {
    vug_test_support::shared_guest_memory(GUEST_RAM).expect("guest RAM")
}

/// A virgl context was created, unless the worker is lost (then it was refused).
fn virgl_created(worker: &RenderWorker, answer: &GpuResponse, ctx_id: u32) {
    assert!(
        *answer == GpuResponse::OkNoData || worker.lost().is_some(),
        "virgl context {ctx_id} answered {answer:?} while the render worker serves"
    );
}

/// After whatever the input did, the device still serves 2D, virgl and venus (while the
/// worker and the render server live) and cross-domain.
fn still_serves(h: &mut Harness, worker: &RenderWorker) {
    const RES_2D: u32 = 100;
    const RES_3D: u32 = 101;
    const CTX_VIRGL: u32 = 10;
    const CTX_VENUS: u32 = 11;
    const CTX_XD: u32 = 12;
    const BACKING: u64 = 0xc0000;
    let pixels: Vec<u8> = (0..4 * 4 * 4).map(|i| i as u8 ^ 0x5a).collect();
    h.mem
        .write_slice(&pixels, GuestAddress(BACKING))
        .expect("guest write");
    // 2D: create, back, upload, unref. The input's resources go first: it may have taken
    // the ids, or the whole memory budget (a refusal then is right, and not what is checked).
    for id in (1..=u32::from(MAX_RESOURCE_ID)).chain([RES_2D, RES_3D]) {
        h.ctx(0, GpuCommand::ResourceUnref { resource_id: id });
    }
    for ctx_id in [CTX_VIRGL, CTX_VENUS, CTX_XD] {
        h.ctx(ctx_id, GpuCommand::CtxDestroy);
    }
    let entries = vec![MemEntry {
        addr: BACKING,
        length: 4096,
    }];
    let answers = [
        h.ctx(
            0,
            GpuCommand::ResourceCreate2d {
                resource_id: RES_2D,
                format: format::B8G8R8X8_UNORM,
                width: 4,
                height: 4,
            },
        ),
        h.ctx(
            0,
            GpuCommand::ResourceAttachBacking {
                resource_id: RES_2D,
                entries: entries.clone(),
            },
        ),
        h.ctx(
            0,
            GpuCommand::TransferToHost2d {
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: 4,
                    height: 4,
                },
                offset: 0,
                resource_id: RES_2D,
            },
        ),
        h.ctx(
            0,
            GpuCommand::ResourceUnref {
                resource_id: RES_2D,
            },
        ),
    ];
    for a in answers {
        assert_eq!(
            a,
            GpuResponse::OkNoData,
            "2D still served ({} resources, {} bytes charged, worker lost: {:?})",
            h.dev.resource_count(),
            h.dev.resource_memory(),
            worker.lost()
        );
    }
    // A lost worker (the input crashed it): renderer contexts are refused from now on, 2D
    // (above) and cross-domain are served.
    if let Some(why) = worker.lost() {
        let answer = h.create_context(CTX_VIRGL, CAPSET_VIRGL2);
        assert!(
            matches!(answer, GpuResponse::Err(_)),
            "a virgl context after the worker was lost ({why}) answered {answer:?}"
        );
        assert_eq!(
            h.create_context(CTX_XD, CAPSET_CROSS_DOMAIN),
            GpuResponse::OkNoData,
            "cross-domain still served after the worker was lost"
        );
        return;
    }
    // virgl: a new context clears a texture; the pixels read back are the clear colour.
    assert_eq!(
        h.create_context(CTX_VIRGL, CAPSET_VIRGL2),
        GpuResponse::OkNoData
    );
    let texture = resource_3d(2, u32::from(VIRGL_FORMAT_B8G8R8X8), BIND_RT_SAMPLER, 4, 4);
    for (ctx, command) in [
        (
            0,
            GpuCommand::ResourceCreate3d {
                resource_id: RES_3D,
                resource: texture,
            },
        ),
        (
            0,
            GpuCommand::ResourceAttachBacking {
                resource_id: RES_3D,
                entries,
            },
        ),
        (
            CTX_VIRGL,
            GpuCommand::CtxAttachResource {
                resource_id: RES_3D,
            },
        ),
        (
            CTX_VIRGL,
            GpuCommand::Submit3d {
                commands: clear_stream(RES_3D, 1, [0.0, 1.0, 0.0, 1.0]),
            },
        ),
        (
            CTX_VIRGL,
            GpuCommand::TransferFromHost3d {
                resource_id: RES_3D,
                transfer: Transfer3d::image(4, 4),
            },
        ),
    ] {
        assert_eq!(
            h.ctx(ctx, command),
            GpuResponse::OkNoData,
            "virgl still served"
        );
    }
    let mut first = [0u8; 4];
    h.mem
        .read_slice(&mut first, GuestAddress(BACKING))
        .expect("guest read");
    assert_eq!(
        &first[..3],
        &[0, 255, 0],
        "the clear reached the texture (B, G, R)"
    );
    if h.venus_ok {
        assert_eq!(
            h.create_context(CTX_VENUS, CAPSET_VENUS),
            GpuResponse::OkNoData,
            "venus still served"
        );
    }
    assert_eq!(
        h.create_context(CTX_XD, CAPSET_CROSS_DOMAIN),
        GpuResponse::OkNoData,
        "cross-domain still served"
    );
}

// The virgl protocol numbers the harness and the seeds use (virglrenderer's
// src/virgl_protocol.h and Gallium's p_defines.h).

/// `VIRGL_FORMAT_B8G8R8X8_UNORM`.
pub const VIRGL_FORMAT_B8G8R8X8: u8 = 2;
/// `PIPE_BIND_RENDER_TARGET | PIPE_BIND_SAMPLER_VIEW`.
pub const BIND_RT_SAMPLER: u32 = (1 << 1) | (1 << 3);

/// A virgl command header: command, object type, length in dwords after the header.
pub const fn cmd0(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}

/// `enum virgl_context_cmd` values.
pub mod ccmd {
    /// VIRGL_CCMD_CREATE_OBJECT.
    pub const CREATE_OBJECT: u32 = 1;
    /// VIRGL_CCMD_BIND_OBJECT.
    pub const BIND_OBJECT: u32 = 2;
    /// VIRGL_CCMD_SET_VIEWPORT_STATE.
    pub const SET_VIEWPORT_STATE: u32 = 4;
    /// VIRGL_CCMD_SET_FRAMEBUFFER_STATE.
    pub const SET_FRAMEBUFFER_STATE: u32 = 5;
    /// VIRGL_CCMD_SET_VERTEX_BUFFERS.
    pub const SET_VERTEX_BUFFERS: u32 = 6;
    /// VIRGL_CCMD_CLEAR.
    pub const CLEAR: u32 = 7;
    /// VIRGL_CCMD_DRAW_VBO.
    pub const DRAW_VBO: u32 = 8;
    /// VIRGL_CCMD_RESOURCE_INLINE_WRITE.
    pub const RESOURCE_INLINE_WRITE: u32 = 9;
    /// VIRGL_CCMD_BIND_SHADER.
    pub const BIND_SHADER: u32 = 31;
}

/// `enum virgl_object_type` values.
pub mod object {
    /// VIRGL_OBJECT_BLEND.
    pub const BLEND: u32 = 1;
    /// VIRGL_OBJECT_RASTERIZER.
    pub const RASTERIZER: u32 = 2;
    /// VIRGL_OBJECT_DSA.
    pub const DSA: u32 = 3;
    /// VIRGL_OBJECT_SHADER.
    pub const SHADER: u32 = 4;
    /// VIRGL_OBJECT_VERTEX_ELEMENTS.
    pub const VERTEX_ELEMENTS: u32 = 5;
    /// VIRGL_OBJECT_SURFACE.
    pub const SURFACE: u32 = 8;
}

/// Dwords as little-endian bytes.
pub fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A surface `surface` on resource `res`, bound as the only colour buffer, cleared to `rgba`.
pub fn clear_stream(res: u32, surface: u32, rgba: [f32; 4]) -> Vec<u8> {
    let mut w = vec![
        cmd0(ccmd::CREATE_OBJECT, object::SURFACE, 5),
        surface,
        res,
        u32::from(VIRGL_FORMAT_B8G8R8X8),
        0, // level
        0, // first and last layer
        cmd0(ccmd::SET_FRAMEBUFFER_STATE, 0, 3),
        1, // nr_cbufs
        0, // no depth/stencil surface
        surface,
        cmd0(ccmd::CLEAR, 0, 8),
        1 << 2, // PIPE_CLEAR_COLOR0
    ];
    w.extend(rgba.iter().map(|c| c.to_bits()));
    w.extend([0, 0, 0]); // depth (f64), stencil
    words(&w)
}
