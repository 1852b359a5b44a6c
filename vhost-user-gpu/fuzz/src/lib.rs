//! The device-core fuzz harness: a `GpuDevice` wired with the real memfd allocator, the
//! region mapper of `vug-test-support` (a real reservation that buffers are mapped into, as
//! a frontend backs its PCI BAR window; it asserts that the device's calls are sane), a
//! display sink that checks every frame it is handed, and a **fake** map advisor with a
//! fixed answer (there is no exporter to ask). Guest memory is a `GuestMemoryMmap` with two
//! regions and a hole, whose contents come from the input.
//!
//! Input format (all little-endian), chosen so that a byte-level mutator keeps commands
//! intact and a generator can write meaningful seeds ([`Input`]):
//!
//! ```text
//! byte 0      setup: bit 0 advisor refuses, bit 1 mapper unavailable
//! byte 1      features acked: bit i = FEATURES[i] (VIRGL, EDID, UUID, BLOB, CONTEXT_INIT)
//! then ops    op byte, then by op % 8:
//!   0 control request   u16 len, len bytes (GpuDevice::process_control)
//!   1 cursor request    u16 len, len bytes (GpuDevice::process_cursor)
//!   2 guest write       u32 gpa, u16 len, len bytes
//!   3 device reset      (the frontend unmaps the whole region, as QEMU does)
//!   4 next map fails    5 next unmap fails
//!   6 set output        u8 scanout, u16 width, u16 height (width 0: disconnect)
//!   7 shmem available   u8 (bit 0)
//! ```
//!
//! Checked on every command: the response decodes, echoes the fence, ctx_id and ring index,
//! and the device stays within its memory and resource limits; the mapper asserts that
//! maps are inside the region, never overlap and that only mapped ranges are unmapped. At
//! the end every resource and context the input named is released, and then nothing may be
//! left: no resource, no charged byte, no region range, no mapping, no extra fd.

pub mod renderer;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::ports::{Cursor, DisplaySink, Frame, GuestMemory, CURSOR_BYTES};
use vhost_user_gpu::device::{DeviceConfig, GpuDevice, Ports};
use vhost_user_gpu::protocol::Rect;
use vhost_user_gpu::protocol::{
    feature, CreateBlob, CtrlHeader, GpuCommand, GpuResponse, FLAG_FENCE, FLAG_INFO_RING_IDX,
    MAP_CACHE_WC,
};
use vm_memory::GuestAddress;
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion};

/// Guest RAM layout: (guest address, size). Two regions with a hole between them.
pub const GUEST_REGIONS: [(u64, usize); 2] = [(0, 256 << 10), (0x80000, 64 << 10)];
/// Host-visible region size given to the device.
pub const HOSTMEM: u64 = 4 << 20;
/// Resource memory limit given to the device (small, so that inputs stay fast).
pub const MAX_RESOURCE_MEMORY: u64 = 16 << 20;
/// Resource count limit given to the device.
pub const MAX_RESOURCES: u32 = 64;
/// Guest-held fd limit given to the device (small, so that inputs reach it).
pub const MAX_FDS: u64 = 32;
/// Most operations taken from one input.
pub const MAX_OPS: usize = 96;
/// Feature bits selected by byte 1 of the input.
pub const FEATURES: [u32; 5] = [
    feature::VIRGL,
    feature::EDID,
    feature::RESOURCE_UUID,
    feature::RESOURCE_BLOB,
    feature::CONTEXT_INIT,
];

/// Op codes (see the module docs).
pub mod op {
    /// Control queue request.
    pub const CONTROL: u8 = 0;
    /// Cursor queue request.
    pub const CURSOR: u8 = 1;
    /// Write into guest memory.
    pub const GUEST_WRITE: u8 = 2;
    /// Device reset.
    pub const RESET: u8 = 3;
    /// The next map fails.
    pub const FAIL_MAP: u8 = 4;
    /// The next unmap fails.
    pub const FAIL_UNMAP: u8 = 5;
    /// Connect or disconnect an output.
    pub const SET_OUTPUT: u8 = 6;
    /// Frontend shared memory set up or not.
    pub const SHMEM: u8 = 7;
}

/// Display sink that checks what it is handed and otherwise discards it.
struct CheckingDisplay;

impl DisplaySink for CheckingDisplay {
    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        assert!(scanout_id < 16);
        if let Some((w, h)) = mode {
            assert!(w > 0 && h > 0);
        }
    }
    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect) {
        assert!(scanout_id < 16);
        let need = u64::from(frame.stride) * u64::from(frame.height);
        assert!(
            frame.data.len() as u64 >= need,
            "frame shorter than stride*height"
        );
        assert!(u64::from(frame.width) * 4 <= u64::from(frame.stride));
        let _ = damage;
        // Touch the bytes, as a real sink would.
        let _sum: u32 = frame.data[..need as usize]
            .iter()
            .step_by(4093)
            .map(|&b| u32::from(b))
            .sum();
    }
    fn cursor_update(&mut self, cursor: &Cursor<'_>) {
        assert!(cursor.scanout_id < 16);
        if let Some(img) = cursor.image {
            assert_eq!(img.len(), CURSOR_BYTES);
        }
    }
    fn cursor_move(&mut self, scanout_id: u32, _x: u32, _y: u32) {
        assert!(scanout_id < 16);
    }
}

// ---------------------------------------------------------------------------------------
// Input reading.

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    /// Up to `len` bytes (fewer at the end of the input).
    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let n = len.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

/// Builds inputs in the harness format (for the seed generator and regression tests).
#[derive(Debug, Default, Clone)]
pub struct Input(Vec<u8>);

impl Input {
    /// An input with setup byte `setup` and feature selection `features`.
    pub fn new(setup: u8, features: u8) -> Self {
        Input(vec![setup, features])
    }
    /// A control queue request.
    pub fn control(mut self, request: &[u8]) -> Self {
        self.0.push(op::CONTROL);
        self.0
            .extend_from_slice(&(request.len() as u16).to_le_bytes());
        self.0.extend_from_slice(request);
        self
    }
    /// A cursor queue request.
    pub fn cursor(mut self, request: &[u8]) -> Self {
        self.0.push(op::CURSOR);
        self.0
            .extend_from_slice(&(request.len() as u16).to_le_bytes());
        self.0.extend_from_slice(request);
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
    /// A bare op (reset, failure injection).
    pub fn op(mut self, op: u8) -> Self {
        self.0.push(op);
        self
    }
    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// The fds of kinds the device creates.
fn open_fds() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        Some(format!(
            "{} -> {}",
            e.file_name().to_string_lossy(),
            target.display()
        ))
    })
    // Only what the device can create: memfds, dma-bufs and other anonymous inodes, device
    // nodes. (libFuzzer and the sanitizer runtime open pipes to the symbolizer at any time.)
    .filter(|s| s.contains("memfd:") || s.contains("anon_inode:") || s.contains("dmabuf"))
    .collect()
}

/// Ids an input named, to release them at the end.
#[derive(Default)]
struct Named {
    resources: BTreeSet<u32>,
    contexts: BTreeSet<u32>,
}

impl Named {
    fn note(&mut self, hdr: &CtrlHeader, command: &GpuCommand) {
        use GpuCommand as C;
        if hdr.ctx_id != 0 && self.contexts.len() < 64 {
            self.contexts.insert(hdr.ctx_id);
        }
        let rid = match command {
            C::ResourceCreate2d { resource_id, .. }
            | C::ResourceCreateBlob(CreateBlob { resource_id, .. })
            | C::CtxAttachResource { resource_id } => *resource_id,
            _ => return,
        };
        if self.resources.len() < 256 {
            self.resources.insert(rid);
        }
    }
}

fn checked_process(dev: &mut GpuDevice, mem: &GuestMemory, request: &[u8], cursor: bool) {
    let out = if cursor {
        dev.process_cursor(mem, request)
    } else {
        dev.process_control(mem, request).into_response()
    };
    let (rhdr, resp) = GpuResponse::decode(&out).expect("the device's response decodes");
    if let Ok(hdr) = CtrlHeader::decode(request) {
        assert_eq!(rhdr.ctx_id, hdr.ctx_id, "ctx_id echoed");
        if hdr.flags & FLAG_FENCE != 0 {
            assert_eq!(rhdr.fence_id, hdr.fence_id, "fence echoed");
            assert_ne!(rhdr.flags & FLAG_FENCE, 0);
            if hdr.flags & FLAG_INFO_RING_IDX != 0 {
                assert_eq!(rhdr.ring_idx, hdr.ring_idx, "ring index echoed");
            }
        } else {
            assert_eq!(rhdr.flags, 0);
        }
    }
    let _ = resp;
    assert!(dev.resource_memory() <= MAX_RESOURCE_MEMORY);
    assert!(dev.resource_count() <= MAX_RESOURCES as usize);
}

/// A fresh guest RAM for one input.
pub fn guest_ram() -> GuestMemory {
    let ranges: Vec<(GuestAddress, usize)> = GUEST_REGIONS
        .iter()
        .map(|&(a, s)| (GuestAddress(a), s))
        .collect();
    GuestMemory::from_ranges(&ranges).expect("guest RAM")
}

/// Runs one input through a fresh device (see the module docs).
pub fn run(data: &[u8]) {
    static BASELINE_FDS: OnceLock<usize> = OnceLock::new();
    let baseline = *BASELINE_FDS.get_or_init(|| open_fds().len());
    run_device(data);
    let now = open_fds();
    assert!(
        now.len() <= baseline,
        "fd leak: {} open fds, {baseline} before: {now:?}",
        now.len()
    );
}

fn run_device(data: &[u8]) {
    use vm_memory::Bytes;
    let mut r = Reader(data);
    let setup = r.u8().unwrap_or(0);
    let feature_sel = r.u8().unwrap_or(0xff);
    let features: u64 = FEATURES
        .iter()
        .enumerate()
        .filter(|(i, _)| feature_sel & (1 << i) != 0)
        .map(|(_, &bit)| 1u64 << bit)
        .fold(0, |a, b| a | b);
    let region = FrontendRegion::new(HOSTMEM);
    region.set_available(setup & 2 == 0);
    // A FAKE map advisor with a fixed answer: there is no exporter to ask here.
    let advisor = if setup & 1 != 0 {
        FixedAdvisor::refuse()
    } else {
        FixedAdvisor::allow(MAP_CACHE_WC)
    };
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(region.clone())),
        display: Box::new(CheckingDisplay),
        advisor: Box::new(advisor),
        exporter: vhost_user_gpu::alloc::guest_page_exporter(),
        channels: None,
        renderer: None,
    };
    let config = DeviceConfig {
        outputs: vec![(64, 48), (32, 32)],
        hostmem: HOSTMEM,
        max_resource_memory: MAX_RESOURCE_MEMORY,
        max_resources: MAX_RESOURCES,
        cross_domain: true,
        max_pending_fences: vhost_user_gpu::device::MAX_PENDING_FENCES,
        max_fds: MAX_FDS,
    };
    let mut dev = GpuDevice::new(config, ports);
    dev.ack_features(features);
    let mem = guest_ram();
    let mut named = Named::default();
    // Whether a failed unmap may have left a range reserved (kept until reset, by design).
    let mut unmap_failed = false;
    for _ in 0..MAX_OPS {
        let Some(code) = r.u8() else { break };
        match code % 8 {
            op::CONTROL | op::CURSOR => {
                let len = r.u16().unwrap_or(0) as usize;
                let request = r.bytes(len);
                if let Ok((hdr, command)) = GpuCommand::decode(request) {
                    named.note(&hdr, &command);
                }
                checked_process(&mut dev, &mem, request, code % 8 == op::CURSOR);
            }
            op::GUEST_WRITE => {
                let gpa = u64::from(r.u32().unwrap_or(0));
                let len = r.u16().unwrap_or(0) as usize;
                let bytes = r.bytes(len);
                let _ = mem.write_slice(bytes, GuestAddress(gpa));
            }
            op::RESET => {
                dev.reset();
                region.region().unmap_all().expect("unmap the region");
                unmap_failed = false;
                assert_eq!(dev.resource_count(), 0);
                assert_eq!(dev.resource_memory(), 0);
                assert!(dev.region_ranges().is_empty());
                dev.ack_features(features);
            }
            op::FAIL_MAP => region.fail_next_map(),
            op::FAIL_UNMAP => {
                region.fail_next_unmap();
                unmap_failed = true;
            }
            op::SET_OUTPUT => {
                let scanout = u32::from(r.u8().unwrap_or(0));
                let w = u32::from(r.u16().unwrap_or(0));
                let h = u32::from(r.u16().unwrap_or(0));
                let mode = (w != 0).then_some((w, h));
                let _ = dev.set_output(scanout, mode);
                let _ = dev.take_config_changed();
            }
            _ => dev.set_shmem_available(r.u8().unwrap_or(1) & 1 != 0),
        }
    }
    // Release everything the input named; then nothing may be left.
    region.clear_failures();
    dev.ack_features(features | (1 << feature::VIRGL));
    for &ctx in &named.contexts {
        let mut req = Vec::new();
        GpuCommand::CtxDestroy.encode(
            &CtrlHeader {
                ctx_id: ctx,
                ..CtrlHeader::new(0)
            },
            &mut req,
        );
        checked_process(&mut dev, &mem, &req, false);
    }
    for &rid in &named.resources {
        let mut req = Vec::new();
        GpuCommand::ResourceUnref { resource_id: rid }.encode(&CtrlHeader::new(0), &mut req);
        checked_process(&mut dev, &mem, &req, false);
    }
    assert_eq!(dev.resource_count(), 0, "resources left after unref of all");
    assert_eq!(
        dev.resource_memory(),
        0,
        "bytes still charged after releasing everything"
    );
    if !unmap_failed {
        assert!(
            dev.region_ranges().is_empty(),
            "region ranges left: {:?}",
            dev.region_ranges()
        );
        assert!(region.mappings().is_empty(), "mappings left");
    }
    dev.reset();
    assert!(dev.region_ranges().is_empty());
}
