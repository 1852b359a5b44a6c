//! Device core tests: every command against a `GpuDevice` wired with the real
//! `MemfdAllocator`, a region mapper that really maps buffers into a reserved anonymous
//! region (as QEMU does with its PCI BAR window), a recording display sink, and guest RAM
//! in a memfd (as `memory-backend-memfd,share=on` gives a vhost-user backend).
//!
//! The region mapper and the fixed-answer map advisors come from `vug-test-support`, shared
//! with the fuzz targets. The only stand-ins are the advisors: fixed answers, named as such,
//! because the point of those tests is what the device does with an answer.

use std::fs::File;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, FileOffset, GuestAddress};

use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::budget::Kind;
use vhost_user_gpu::device::ports::{
    Cursor, DisplaySink, ExportError, Frame, GuestMemory, GuestPageExporter, GuestPages, MapAdvisor,
};
use vhost_user_gpu::device::{
    DeviceConfig, GpuDevice, Ports, BACKING_ENTRY_COST, DMABUF_OBJECT_COST, DMABUF_PAGE_COST,
    MAX_SCANOUT_SIDE, OFFERED_FEATURES,
};
use vhost_user_gpu::protocol::cross_domain::{
    Capabilities, CrossDomainCommand, IdLayout, ImageRequirements, Init, InitLayout, PollLayout,
    ReadWrite, SendReceive, IMAGE_REQUIREMENTS_SIZE,
};
use vhost_user_gpu::protocol::{
    feature, format, CreateBlob, CtrlHeader, CursorPos, CursorUpdate, GpuCommand, GpuError,
    GpuResponse, MemEntry, Resource3d, ScanoutBlob, Transfer3d, BLOB_FLAG_USE_MAPPABLE,
    BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D, CAPSET_CROSS_DOMAIN, EVENT_DISPLAY,
    FLAG_FENCE, FLAG_INFO_RING_IDX, MAP_CACHE_WC,
};
use vhost_user_gpu::protocol::{fourcc, Rect};
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion, ShmemEvent};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const GUEST_RAM: u64 = 32 * MIB;

// ---------------------------------------------------------------------------------------
// Region mapper: vug-test-support's FrontendMapper, a real reservation that buffers are
// mapped into with MAP_FIXED, exactly like a frontend backs its host-visible PCI BAR window.

#[derive(Debug, Clone, PartialEq, Eq)]
enum MapCall {
    Map { shm_offset: u64, len: u64 },
    Unmap { shm_offset: u64, len: u64 },
}

/// The maps and unmaps the frontend carried out, in order.
fn map_calls(region: &FrontendRegion) -> Vec<MapCall> {
    region
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ShmemEvent::Mapped { offset, len, .. } => Some(MapCall::Map {
                shm_offset: offset,
                len,
            }),
            ShmemEvent::Unmapped { offset, len } => Some(MapCall::Unmap {
                shm_offset: offset,
                len,
            }),
            ShmemEvent::Refused { .. } => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Display sink that records what it is shown.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shown {
    Scanout(u32, Option<(u32, u32)>),
    Flush {
        scanout: u32,
        width: u32,
        height: u32,
        stride: u32,
        drm_format: u32,
        data: Vec<u8>,
        damage: Rect,
    },
    Cursor {
        scanout: u32,
        x: u32,
        y: u32,
        hot: (u32, u32),
        image: Option<Vec<u8>>,
    },
    Move(u32, u32, u32),
}

struct RecordingDisplay(Arc<Mutex<Vec<Shown>>>);

impl DisplaySink for RecordingDisplay {
    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        self.0
            .lock()
            .unwrap()
            .push(Shown::Scanout(scanout_id, mode));
    }
    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect) {
        let len = (frame.stride * frame.height) as usize;
        self.0.lock().unwrap().push(Shown::Flush {
            scanout: scanout_id,
            width: frame.width,
            height: frame.height,
            stride: frame.stride,
            drm_format: frame.drm_format,
            data: frame.data[..len].to_vec(),
            damage,
        });
    }
    fn cursor_update(&mut self, cursor: &Cursor<'_>) {
        self.0.lock().unwrap().push(Shown::Cursor {
            scanout: cursor.scanout_id,
            x: cursor.x,
            y: cursor.y,
            hot: (cursor.hot_x, cursor.hot_y),
            image: cursor.image.map(<[u8]>::to_vec),
        });
    }
    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        self.0.lock().unwrap().push(Shown::Move(scanout_id, x, y));
    }
}

// ---------------------------------------------------------------------------------------
// Harness.

struct Harness {
    dev: GpuDevice,
    mem: GuestMemory,
    region: Arc<FrontendRegion>,
    shown: Arc<Mutex<Vec<Shown>>>,
}

fn guest_ram() -> GuestMemory {
    let fd = rustix::fs::memfd_create("guest-ram", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, GUEST_RAM).unwrap();
    let file = File::from(fd);
    GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        GUEST_RAM as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// The fds of `snap` duplicated, as a new process receives them (SCM_RIGHTS).
fn received_fds(
    snap: &vhost_user_gpu::device::snapshot::Snapshot,
) -> Vec<Option<std::os::fd::OwnedFd>> {
    snap.fds
        .iter()
        .map(|f| Some(f.try_clone().unwrap()))
        .collect()
}

impl Harness {
    fn with(config: DeviceConfig, advisor: Box<dyn MapAdvisor>) -> Self {
        Self::with_exporter(config, advisor, None)
    }

    /// With `exporter` for GUEST blobs (the other harnesses have none, so that their charges
    /// are the same on hosts with and without `/dev/udmabuf`).
    fn with_exporter(
        config: DeviceConfig,
        advisor: Box<dyn MapAdvisor>,
        exporter: Option<Box<dyn GuestPageExporter>>,
    ) -> Self {
        let region = FrontendRegion::new(config.hostmem);
        let mapper = FrontendMapper(region.clone());
        let shown = Arc::new(Mutex::new(Vec::new()));
        let ports = Ports {
            allocator: Box::new(MemfdAllocator::new()),
            mapper: Box::new(mapper),
            display: Box::new(RecordingDisplay(shown.clone())),
            advisor,
            exporter,
            channels: None,
            renderer: None,
        };
        let mut dev = GpuDevice::new(config, ports);
        dev.ack_features(dev.features());
        Harness {
            dev,
            mem: guest_ram(),
            region,
            shown,
        }
    }

    fn new() -> Self {
        Self::with(
            DeviceConfig {
                hostmem: 16 * MIB,
                ..Default::default()
            },
            Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        )
    }

    /// Ports for a device restored from this one's snapshot, as a new process builds them:
    /// a fresh allocator, the same frontend region, a display that records into `shown`.
    fn restore_ports(&self, shown: Arc<Mutex<Vec<Shown>>>) -> Ports {
        Ports {
            allocator: Box::new(MemfdAllocator::new()),
            mapper: Box::new(FrontendMapper(self.region.clone())),
            display: Box::new(RecordingDisplay(shown)),
            advisor: Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
            exporter: None,
            channels: None,
            renderer: None,
        }
    }

    fn send_with(&mut self, hdr: CtrlHeader, command: GpuCommand) -> (CtrlHeader, GpuResponse) {
        let cursor = matches!(
            command,
            GpuCommand::UpdateCursor(..) | GpuCommand::MoveCursor { .. }
        );
        let mut request = Vec::new();
        command.encode(&hdr, &mut request);
        let out = if cursor {
            self.dev.process_cursor(&self.mem, &request)
        } else {
            self.dev
                .process_control(&self.mem, &request)
                .into_response()
        };
        GpuResponse::decode(&out).unwrap()
    }

    fn ctx_send(&mut self, ctx_id: u32, command: GpuCommand) -> GpuResponse {
        let hdr = CtrlHeader {
            ctx_id,
            ..Default::default()
        };
        self.send_with(hdr, command).1
    }

    fn send(&mut self, command: GpuCommand) -> GpuResponse {
        self.send_with(CtrlHeader::default(), command).1
    }

    fn ok(&mut self, command: GpuCommand) {
        let name = command.name();
        let r = self.send(command);
        assert_eq!(r, GpuResponse::OkNoData, "{name}");
    }

    fn take_shown(&self) -> Vec<Shown> {
        std::mem::take(&mut self.shown.lock().unwrap())
    }

    fn write_guest(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    fn create_2d(&mut self, id: u32, width: u32, height: u32) {
        self.ok(GpuCommand::ResourceCreate2d {
            resource_id: id,
            format: format::B8G8R8X8_UNORM,
            width,
            height,
        });
    }

    /// A GUEST blob over `pages` pages at `addr`.
    fn create_guest_blob(&mut self, ctx_id: u32, id: u32, addr: u64, pages: u64) -> GpuResponse {
        self.ctx_send(
            ctx_id,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: id,
                blob_mem: BLOB_MEM_GUEST,
                blob_flags: BLOB_FLAG_USE_SHAREABLE,
                blob_id: 0,
                size: pages * PAGE,
                entries: vec![MemEntry {
                    addr,
                    length: (pages * PAGE) as u32,
                }],
            }),
        )
    }

    /// Cross-domain context `ctx` with a query ring (resource `ring_id` at `ring_addr`).
    fn cross_domain_context(&mut self, ctx: u32, ring_id: u32, ring_addr: u64) {
        assert_eq!(
            self.ctx_send(
                ctx,
                GpuCommand::CtxCreate {
                    context_init: CAPSET_CROSS_DOMAIN,
                    debug_name: "test".into()
                }
            ),
            GpuResponse::OkNoData
        );
        assert_eq!(
            self.create_guest_blob(ctx, ring_id, ring_addr, 1),
            GpuResponse::OkNoData
        );
        assert_eq!(
            self.ctx_send(
                ctx,
                GpuCommand::CtxAttachResource {
                    resource_id: ring_id
                }
            ),
            GpuResponse::OkNoData
        );
        let r = self.submit(
            ctx,
            &[CrossDomainCommand::Init(Init {
                layout: InitLayout::TwoRings,
                query_ring_id: ring_id,
                channel_ring_id: 0,
                channel_type: 0,
                protocol_version: 0,
            })],
        );
        assert_eq!(r, GpuResponse::OkNoData);
    }

    fn submit(&mut self, ctx: u32, commands: &[CrossDomainCommand]) -> GpuResponse {
        let mut buf = Vec::new();
        for c in commands {
            c.encode(&mut buf);
        }
        self.ctx_send(ctx, GpuCommand::Submit3d { commands: buf })
    }

    /// GET_IMAGE_REQUIREMENTS, returning what the device wrote into the query ring.
    fn image_requirements(
        &mut self,
        ctx: u32,
        ring_addr: u64,
        w: u32,
        h: u32,
    ) -> ImageRequirements {
        self.write_guest(ring_addr, &[0xee; IMAGE_REQUIREMENTS_SIZE]);
        let r = self.submit(
            ctx,
            &[CrossDomainCommand::GetImageRequirements {
                width: w,
                height: h,
                drm_format: fourcc::XRGB8888,
                flags: 0,
            }],
        );
        assert_eq!(r, GpuResponse::OkNoData);
        ImageRequirements::decode(&self.read_guest(ring_addr, IMAGE_REQUIREMENTS_SIZE)).unwrap()
    }

    fn create_host_blob(&mut self, ctx: u32, id: u32, reqs: &ImageRequirements) -> GpuResponse {
        self.ctx_send(
            ctx,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: id,
                blob_mem: BLOB_MEM_HOST3D,
                blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
                blob_id: reqs.blob_id.into(),
                size: reqs.size,
                entries: vec![],
            }),
        )
    }
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn err(e: GpuError) -> GpuResponse {
    GpuResponse::Err(e)
}

/// A recognizable pattern of `len` bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Features, config space, display info, EDID.

#[test]
fn features_config_space_and_display_events() {
    let mut h = Harness::new();
    for bit in [
        feature::VIRGL,
        feature::EDID,
        feature::RESOURCE_UUID,
        feature::RESOURCE_BLOB,
        feature::CONTEXT_INIT,
    ] {
        assert_ne!(h.dev.features() & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(h.dev.features(), OFFERED_FEATURES);
    let cfg = h.dev.read_config();
    assert_eq!(u32::from_le_bytes(cfg[0..4].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(cfg[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 1);
    assert!(!h.dev.take_config_changed());

    assert!(h.dev.set_output(0, Some((1024, 768))));
    assert!(h.dev.take_config_changed());
    assert!(!h.dev.take_config_changed(), "reported once");
    let cfg = h.dev.read_config();
    assert_eq!(
        u32::from_le_bytes(cfg[0..4].try_into().unwrap()),
        EVENT_DISPLAY
    );
    let GpuResponse::OkDisplayInfo(modes) = h.send(GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert_eq!(modes[0].rect, rect(0, 0, 1024, 768));
    assert!(modes[0].enabled);
    assert!(modes[1..].iter().all(|m| !m.enabled));
    // events_clear clears the bit.
    h.dev.write_config(4, &EVENT_DISPLAY.to_le_bytes());
    assert_eq!(h.dev.read_config()[0..4], [0, 0, 0, 0]);
    // Unknown scanouts and bad sizes are refused.
    assert!(!h.dev.set_output(1, Some((640, 480))));
    assert!(!h.dev.set_output(0, Some((0, 480))));
    // Disconnecting reports it.
    assert!(h.dev.set_output(0, None));
    assert!(h.dev.take_config_changed());
    let GpuResponse::OkDisplayInfo(modes) = h.send(GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert!(!modes[0].enabled);
}

#[test]
fn multiple_outputs_and_edid() {
    let mut h = Harness::with(
        DeviceConfig {
            outputs: vec![(1280, 800), (1920, 1080)],
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
    );
    let GpuResponse::OkDisplayInfo(modes) = h.send(GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert_eq!(modes[1].rect, rect(0, 0, 1920, 1080));
    assert!(modes[1].enabled);
    let GpuResponse::OkEdid(edid) = h.send(GpuCommand::GetEdid { scanout_id: 1 }) else {
        panic!("no edid");
    };
    assert_eq!(edid.len(), 128);
    assert_eq!(edid.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    // Preferred timing: 1920 active pixels, 1080 lines.
    assert_eq!(u16::from(edid[56]) | (u16::from(edid[58] >> 4) << 8), 1920);
    assert_eq!(u16::from(edid[59]) | (u16::from(edid[61] >> 4) << 8), 1080);
    assert_eq!(
        h.send(GpuCommand::GetEdid { scanout_id: 2 }),
        err(GpuError::InvalidScanoutId)
    );
    // Without the EDID feature: ERR_UNSPEC.
    h.dev.ack_features(0);
    assert_eq!(
        h.send(GpuCommand::GetEdid { scanout_id: 0 }),
        err(GpuError::Unspec)
    );
}

#[test]
fn fences_and_ring_index_are_echoed_in_order() {
    let mut h = Harness::new();
    for fence in 1..=5u64 {
        let hdr = CtrlHeader {
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            fence_id: fence,
            ctx_id: 0,
            ring_idx: 1,
            ..Default::default()
        };
        let (rhdr, r) = h.send_with(hdr, GpuCommand::GetDisplayInfo);
        assert!(matches!(r, GpuResponse::OkDisplayInfo(_)));
        assert_eq!(rhdr.flags, FLAG_FENCE | FLAG_INFO_RING_IDX);
        assert_eq!(rhdr.fence_id, fence);
        assert_eq!(rhdr.ring_idx, 1);
    }
    // Errors echo the fence too.
    let hdr = CtrlHeader {
        flags: FLAG_FENCE,
        fence_id: 99,
        ..Default::default()
    };
    let (rhdr, r) = h.send_with(hdr, GpuCommand::ResourceUnref { resource_id: 42 });
    assert_eq!(r, err(GpuError::InvalidResourceId));
    assert_eq!((rhdr.flags, rhdr.fence_id), (FLAG_FENCE, 99));
}

#[test]
fn malformed_requests_get_errors_and_the_device_keeps_serving() {
    let mut h = Harness::new();
    // Shorter than a header.
    let out = h.dev.process_control(&h.mem, &[1, 2, 3]).into_response();
    assert_eq!(GpuResponse::decode(&out).unwrap().1, err(GpuError::Unspec));
    // Truncated command, fence still echoed.
    let mut req = Vec::new();
    GpuCommand::ResourceCreate2d {
        resource_id: 1,
        format: format::B8G8R8A8_UNORM,
        width: 4,
        height: 4,
    }
    .encode(
        &CtrlHeader {
            flags: FLAG_FENCE,
            fence_id: 7,
            ..Default::default()
        },
        &mut req,
    );
    let out = h.dev.process_control(&h.mem, &req[..30]).into_response();
    let (rhdr, r) = GpuResponse::decode(&out).unwrap();
    assert_eq!(r, err(GpuError::Unspec));
    assert_eq!(rhdr.fence_id, 7);
    assert_eq!(h.dev.resource_count(), 0, "nothing half-created");
    // Unknown command type.
    let mut req = Vec::new();
    CtrlHeader::new(0x1ff).encode(&mut req);
    let out = h.dev.process_control(&h.mem, &req).into_response();
    assert_eq!(GpuResponse::decode(&out).unwrap().1, err(GpuError::Unspec));
    // Entry count beyond the limit.
    let mut req = Vec::new();
    GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![],
    }
    .encode(&CtrlHeader::default(), &mut req);
    req[28..32].copy_from_slice(&1_000_000u32.to_le_bytes());
    let out = h.dev.process_control(&h.mem, &req).into_response();
    assert_eq!(
        GpuResponse::decode(&out).unwrap().1,
        err(GpuError::InvalidParameter)
    );
    // Cursor commands on the control queue and the other way round.
    let mut req = Vec::new();
    GpuCommand::MoveCursor {
        pos: CursorPos::default(),
    }
    .encode(&CtrlHeader::default(), &mut req);
    let out = h.dev.process_control(&h.mem, &req).into_response();
    assert_eq!(GpuResponse::decode(&out).unwrap().1, err(GpuError::Unspec));
    let mut req = Vec::new();
    GpuCommand::GetDisplayInfo.encode(&CtrlHeader::default(), &mut req);
    let out = h.dev.process_cursor(&h.mem, &req);
    assert_eq!(GpuResponse::decode(&out).unwrap().1, err(GpuError::Unspec));
    // Still serving.
    h.create_2d(1, 4, 4);
}

// ---------------------------------------------------------------------------------------
// 2D resources.

/// Scattered backing: the guest image is split over non-contiguous pieces of guest RAM
/// with sizes that do not line up with rows.
fn scattered_entries(total: u64) -> Vec<MemEntry> {
    let mut entries = Vec::new();
    let mut left = total;
    let mut addr = 0x10_0000u64;
    let mut piece = 1000u64;
    while left > 0 {
        let len = piece.min(left);
        entries.push(MemEntry {
            addr,
            length: len as u32,
        });
        left -= len;
        addr += len + 0x3000; // a hole after each piece
        piece = piece * 3 % 1999 + 100;
    }
    entries
}

fn write_backing(h: &Harness, entries: &[MemEntry], data: &[u8]) {
    let mut done = 0usize;
    for e in entries {
        let len = e.length as usize;
        h.write_guest(e.addr, &data[done..done + len]);
        done += len;
    }
}

#[test]
fn transfer_scanout_and_flush_show_the_guest_pixels() {
    let mut h = Harness::new();
    let (w, hgt) = (100u32, 60u32);
    let stride = w * 4;
    let size = (stride * hgt) as u64;
    h.create_2d(1, w, hgt);
    let entries = scattered_entries(size);
    assert!(entries.len() > 10);
    let image = pattern(size as usize, 3);
    write_backing(&h, &entries, &image);
    h.ok(GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: entries.clone(),
    });
    h.ok(GpuCommand::TransferToHost2d {
        rect: rect(0, 0, w, hgt),
        offset: 0,
        resource_id: 1,
    });
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, w, hgt),
        scanout_id: 0,
        resource_id: 1,
    });
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(10, 10, 20, 20),
        resource_id: 1,
    });
    let shown = h.take_shown();
    assert_eq!(shown[0], Shown::Scanout(0, Some((w, hgt))));
    let Shown::Flush {
        data,
        damage,
        stride: fstride,
        drm_format,
        ..
    } = &shown[1]
    else {
        panic!("{shown:?}");
    };
    assert_eq!(*damage, rect(10, 10, 20, 20));
    assert_eq!(*fstride, stride);
    assert_eq!(*drm_format, fourcc::XRGB8888);
    assert_eq!(data, &image);

    // Partial transfer: only the rectangle changes.
    let image2 = pattern(size as usize, 77);
    write_backing(&h, &entries, &image2);
    let r = rect(5, 7, 30, 11);
    h.ok(GpuCommand::TransferToHost2d {
        rect: r,
        offset: u64::from(r.y * stride + r.x * 4),
        resource_id: 1,
    });
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, w, hgt),
        resource_id: 1,
    });
    let shown = h.take_shown();
    let Shown::Flush { data, .. } = &shown[0] else {
        panic!("{shown:?}");
    };
    for y in 0..hgt {
        for x in 0..w {
            let i = (y * stride + x * 4) as usize;
            let inside = x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height;
            let expect = if inside { &image2 } else { &image };
            assert_eq!(data[i..i + 4], expect[i..i + 4], "pixel {x},{y}");
        }
    }

    // A scanout showing part of the resource gets a packed frame of that part.
    h.ok(GpuCommand::SetScanout {
        rect: r,
        scanout_id: 0,
        resource_id: 1,
    });
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, w, hgt),
        resource_id: 1,
    });
    let shown = h.take_shown();
    assert_eq!(shown[0], Shown::Scanout(0, Some((30, 11))));
    let Shown::Flush {
        width,
        height,
        stride: fs,
        data,
        damage,
        ..
    } = &shown[1]
    else {
        panic!("{shown:?}");
    };
    assert_eq!((*width, *height, *fs), (30, 11, 120));
    assert_eq!(*damage, rect(0, 0, 30, 11));
    let first = (r.y * stride + r.x * 4) as usize;
    assert_eq!(data[..120], image2[first..first + 120]);
}

#[test]
fn every_2d_format_is_accepted_and_mapped_to_its_fourcc() {
    let mut h = Harness::new();
    let formats = [
        (format::B8G8R8A8_UNORM, fourcc::ARGB8888),
        (format::B8G8R8X8_UNORM, fourcc::XRGB8888),
        (format::A8R8G8B8_UNORM, fourcc::BGRA8888),
        (format::X8R8G8B8_UNORM, fourcc::BGRX8888),
        (format::R8G8B8A8_UNORM, fourcc::ABGR8888),
        (format::X8B8G8R8_UNORM, fourcc::RGBX8888),
        (format::A8B8G8R8_UNORM, fourcc::RGBA8888),
        (format::R8G8B8X8_UNORM, fourcc::XBGR8888),
    ];
    for (i, (virtio, drm)) in formats.into_iter().enumerate() {
        let id = i as u32 + 1;
        h.ok(GpuCommand::ResourceCreate2d {
            resource_id: id,
            format: virtio,
            width: 2,
            height: 2,
        });
        h.ok(GpuCommand::SetScanout {
            rect: rect(0, 0, 2, 2),
            scanout_id: 0,
            resource_id: id,
        });
        h.ok(GpuCommand::ResourceFlush {
            rect: rect(0, 0, 2, 2),
            resource_id: id,
        });
        let shown = h.take_shown();
        assert!(
            matches!(&shown[1], Shown::Flush { drm_format, data, .. } if *drm_format == drm && data.iter().all(|&b| b == 0)),
            "format {virtio}: {shown:?}"
        );
    }
}

#[test]
fn documented_2d_errors() {
    let mut h = Harness::new();
    let create = |id, format, width, height| GpuCommand::ResourceCreate2d {
        resource_id: id,
        format,
        width,
        height,
    };
    let f = format::B8G8R8A8_UNORM;
    assert_eq!(h.send(create(0, f, 4, 4)), err(GpuError::InvalidResourceId));
    h.create_2d(1, 16, 16);
    assert_eq!(h.send(create(1, f, 4, 4)), err(GpuError::InvalidResourceId));
    assert_eq!(
        h.send(create(2, 999, 4, 4)),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.send(create(2, f, 0, 4)), err(GpuError::InvalidParameter));
    assert_eq!(
        h.send(create(2, f, u32::MAX, u32::MAX)),
        err(GpuError::OutOfMemory)
    );
    // Transfer without backing.
    let transfer = |r, offset| GpuCommand::TransferToHost2d {
        rect: r,
        offset,
        resource_id: 1,
    };
    assert_eq!(
        h.send(transfer(rect(0, 0, 16, 16), 0)),
        err(GpuError::Unspec)
    );
    // Backing entries outside guest memory; wrapping entries.
    for entries in [
        vec![MemEntry {
            addr: GUEST_RAM - 16,
            length: 1024,
        }],
        vec![MemEntry {
            addr: u64::MAX - 10,
            length: 1024,
        }],
    ] {
        assert_eq!(
            h.send(GpuCommand::ResourceAttachBacking {
                resource_id: 1,
                entries
            }),
            err(GpuError::Unspec)
        );
    }
    // A backing one byte short of the image.
    h.ok(GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![MemEntry {
            addr: 0x1000,
            length: 16 * 16 * 4 - 1,
        }],
    });
    assert_eq!(
        h.send(GpuCommand::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![MemEntry {
                addr: 0x1000,
                length: 64
            }]
        }),
        err(GpuError::Unspec),
        "double attach"
    );
    assert_eq!(
        h.send(transfer(rect(0, 0, 16, 16), 0)),
        err(GpuError::InvalidParameter)
    );
    h.ok(transfer(rect(0, 0, 16, 15), 0));
    h.ok(transfer(rect(0, 15, 15, 1), 15 * 64));
    // Rect outside the resource, offset overflow, empty rect.
    for (r, off) in [
        (rect(8, 8, 9, 1), 0),
        (rect(0, 0, 1, 17), 0),
        (rect(u32::MAX, 0, 2, 1), 0),
        (rect(0, 0, 1, 1), u64::MAX - 2),
        (rect(0, 0, 0, 0), 0),
    ] {
        assert_eq!(
            h.send(transfer(r, off)),
            err(GpuError::InvalidParameter),
            "{r:?}+{off}"
        );
    }
    h.ok(GpuCommand::ResourceDetachBacking { resource_id: 1 });
    assert_eq!(
        h.send(GpuCommand::ResourceDetachBacking { resource_id: 1 }),
        err(GpuError::Unspec)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceDetachBacking { resource_id: 9 }),
        err(GpuError::InvalidResourceId)
    );
    // Scanout errors.
    let set = |scanout_id, resource_id, r| GpuCommand::SetScanout {
        rect: r,
        scanout_id,
        resource_id,
    };
    assert_eq!(
        h.send(set(1, 1, rect(0, 0, 1, 1))),
        err(GpuError::InvalidScanoutId)
    );
    assert_eq!(
        h.send(set(0, 5, rect(0, 0, 1, 1))),
        err(GpuError::InvalidResourceId)
    );
    assert_eq!(
        h.send(set(0, 1, rect(0, 0, 17, 1))),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceFlush {
            rect: rect(0, 0, 17, 1),
            resource_id: 1
        }),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceFlush {
            rect: rect(0, 0, 1, 1),
            resource_id: 77
        }),
        err(GpuError::InvalidResourceId)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceUnref { resource_id: 77 }),
        err(GpuError::InvalidResourceId)
    );
    // 3D resources: no renderer.
    let resource = Resource3d {
        target: 2,
        format: 2,
        width: 4,
        height: 4,
        depth: 1,
        array_size: 1,
        ..Resource3d::default()
    };
    assert_eq!(
        h.send(GpuCommand::ResourceCreate3d {
            resource_id: 5,
            resource
        }),
        err(GpuError::Unspec)
    );
    assert_eq!(h.dev.resource_count(), 1, "nothing made");
    // Transfers of a 2D resource as if it were 3D: without a virgl renderer every 3D
    // transfer is ERR_UNSPEC (3D resources need one), as RESOURCE_CREATE_3D.
    assert_eq!(
        h.send(GpuCommand::TransferToHost3d {
            resource_id: 1,
            transfer: Transfer3d::default()
        }),
        err(GpuError::Unspec)
    );
    assert_eq!(
        h.send(GpuCommand::TransferFromHost3d {
            resource_id: 1,
            transfer: Transfer3d::default()
        }),
        err(GpuError::Unspec)
    );
}

#[test]
fn unref_of_a_scanned_out_resource_disables_the_scanout_first() {
    let mut h = Harness::new();
    h.create_2d(1, 8, 8);
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, 8, 8),
        scanout_id: 0,
        resource_id: 1,
    });
    h.take_shown();
    h.ok(GpuCommand::ResourceUnref { resource_id: 1 });
    assert_eq!(h.take_shown(), vec![Shown::Scanout(0, None)]);
    assert_eq!(h.dev.resource_memory(), 0);
    // Disabling explicitly with resource 0.
    h.create_2d(2, 8, 8);
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, 8, 8),
        scanout_id: 0,
        resource_id: 0,
    });
    assert_eq!(h.take_shown(), vec![Shown::Scanout(0, None)]);
}

#[test]
fn resource_limits_answer_out_of_memory_and_recover() {
    let mut h = Harness::with(
        DeviceConfig {
            max_resources: 3,
            max_resource_memory: 3 * 64 * 64 * 4,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
    );
    h.create_2d(1, 64, 64);
    h.create_2d(2, 64, 64);
    // Memory limit: a 64x65 resource does not fit in what is left.
    assert_eq!(
        h.send(GpuCommand::ResourceCreate2d {
            resource_id: 3,
            format: format::B8G8R8A8_UNORM,
            width: 64,
            height: 65
        }),
        err(GpuError::OutOfMemory)
    );
    h.create_2d(3, 64, 64);
    // Count limit.
    assert_eq!(
        h.send(GpuCommand::ResourceCreate2d {
            resource_id: 4,
            format: format::B8G8R8A8_UNORM,
            width: 1,
            height: 1
        }),
        err(GpuError::OutOfMemory)
    );
    h.ok(GpuCommand::ResourceUnref { resource_id: 2 });
    h.create_2d(4, 64, 64);
    // Huge requests are refused by accounting, never attempted.
    assert_eq!(
        h.send(GpuCommand::ResourceCreate2d {
            resource_id: 9,
            format: format::B8G8R8A8_UNORM,
            width: 16384,
            height: 16384
        }),
        err(GpuError::OutOfMemory)
    );
}

// ---------------------------------------------------------------------------------------
// Cursor.

#[test]
fn cursor_update_and_move() {
    let mut h = Harness::new();
    h.ok(GpuCommand::ResourceCreate2d {
        resource_id: 1,
        format: format::B8G8R8A8_UNORM,
        width: 64,
        height: 64,
    });
    let img = pattern(64 * 64 * 4, 9);
    h.write_guest(0x2000, &img);
    h.ok(GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![MemEntry {
            addr: 0x2000,
            length: img.len() as u32,
        }],
    });
    h.ok(GpuCommand::TransferToHost2d {
        rect: rect(0, 0, 64, 64),
        offset: 0,
        resource_id: 1,
    });
    let pos = CursorPos {
        scanout_id: 0,
        x: 10,
        y: 20,
    };
    h.ok(GpuCommand::UpdateCursor(CursorUpdate {
        pos,
        resource_id: 1,
        hot_x: 3,
        hot_y: 4,
    }));
    h.ok(GpuCommand::MoveCursor {
        pos: CursorPos {
            scanout_id: 0,
            x: 11,
            y: 21,
        },
    });
    h.ok(GpuCommand::UpdateCursor(CursorUpdate {
        pos,
        resource_id: 0,
        hot_x: 0,
        hot_y: 0,
    }));
    let shown = h.take_shown();
    assert_eq!(
        shown,
        vec![
            Shown::Cursor {
                scanout: 0,
                x: 10,
                y: 20,
                hot: (3, 4),
                image: Some(img)
            },
            Shown::Move(0, 11, 21),
            Shown::Cursor {
                scanout: 0,
                x: 10,
                y: 20,
                hot: (0, 0),
                image: None
            },
        ]
    );
    // Errors: bad scanout, unknown resource, too large.
    assert_eq!(
        h.send(GpuCommand::MoveCursor {
            pos: CursorPos {
                scanout_id: 3,
                x: 0,
                y: 0
            }
        }),
        err(GpuError::InvalidScanoutId)
    );
    assert_eq!(
        h.send(GpuCommand::UpdateCursor(CursorUpdate {
            pos,
            resource_id: 5,
            hot_x: 0,
            hot_y: 0
        })),
        err(GpuError::InvalidResourceId)
    );
    h.create_2d(2, 65, 64);
    assert_eq!(
        h.send(GpuCommand::UpdateCursor(CursorUpdate {
            pos,
            resource_id: 2,
            hot_x: 0,
            hot_y: 0
        })),
        err(GpuError::InvalidParameter)
    );
}

// ---------------------------------------------------------------------------------------
// Blobs.

#[test]
fn blob_and_context_commands_need_their_features() {
    let mut h = Harness::new();
    h.dev.ack_features(1 << feature::EDID);
    assert_eq!(h.create_guest_blob(0, 1, 0x1000, 1), err(GpuError::Unspec));
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::CtxCreate {
                context_init: CAPSET_CROSS_DOMAIN,
                debug_name: String::new()
            }
        ),
        err(GpuError::Unspec)
    );
    assert_eq!(
        h.send(GpuCommand::GetCapsetInfo { capset_index: 0 }),
        err(GpuError::Unspec)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceAssignUuid { resource_id: 1 }),
        err(GpuError::Unspec)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset: 0
        }),
        err(GpuError::Unspec)
    );
    // VIRGL without CONTEXT_INIT: no cross-domain context.
    h.dev.ack_features(1 << feature::VIRGL);
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::CtxCreate {
                context_init: CAPSET_CROSS_DOMAIN,
                debug_name: String::new()
            }
        ),
        err(GpuError::Unspec)
    );
}

#[test]
fn guest_blob_scanout_reads_guest_memory() {
    let mut h = Harness::new();
    let (w, hgt, stride) = (32u32, 16u32, 160u32); // stride > width * 4
    let size_pages = 1u64;
    let addr = 0x40_0000;
    assert_eq!(
        h.create_guest_blob(0, 1, addr, size_pages),
        GpuResponse::OkNoData
    );
    let img = pattern((stride * hgt) as usize, 5);
    h.write_guest(addr + 64, &img);
    let set = |r, offset| {
        GpuCommand::SetScanoutBlob(ScanoutBlob {
            rect: r,
            scanout_id: 0,
            resource_id: 1,
            width: w,
            height: hgt,
            format: format::B8G8R8A8_UNORM,
            strides: [stride, 0, 0, 0],
            offsets: [offset, 0, 0, 0],
        })
    };
    h.ok(set(rect(0, 0, w, hgt), 64));
    // Transfers on GUEST blobs are accepted and change nothing.
    h.ok(GpuCommand::TransferToHost2d {
        rect: rect(0, 0, w, hgt),
        offset: 0,
        resource_id: 1,
    });
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, w, hgt),
        resource_id: 1,
    });
    let shown = h.take_shown();
    assert_eq!(shown[0], Shown::Scanout(0, Some((w, hgt))));
    let Shown::Flush {
        data,
        stride: fs,
        drm_format,
        ..
    } = &shown[1]
    else {
        panic!("{shown:?}");
    };
    assert_eq!((*fs, *drm_format), (w * 4, fourcc::ARGB8888));
    for y in 0..hgt as usize {
        let src = &img[y * stride as usize..][..(w * 4) as usize];
        assert_eq!(
            &data[y * (w * 4) as usize..][..(w * 4) as usize],
            src,
            "row {y}"
        );
    }
    // Layout checks: past the blob's end, stride too small, rect outside the image.
    assert_eq!(
        h.send(set(rect(0, 0, w, hgt), 4096)),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(GpuCommand::SetScanoutBlob(ScanoutBlob {
            rect: rect(0, 0, w, hgt),
            scanout_id: 0,
            resource_id: 1,
            width: w,
            height: hgt,
            format: format::B8G8R8A8_UNORM,
            strides: [w * 4 - 1, 0, 0, 0],
            offsets: [0; 4],
        })),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(set(rect(1, 0, w, hgt), 0)),
        err(GpuError::InvalidParameter)
    );
    // Entries that cover less than the size.
    assert_eq!(
        h.ctx_send(
            0,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: 2,
                blob_mem: BLOB_MEM_GUEST,
                blob_flags: 0,
                blob_id: 0,
                size: 2 * PAGE,
                entries: vec![MemEntry {
                    addr,
                    length: PAGE as u32
                }],
            })
        ),
        err(GpuError::InvalidParameter)
    );
    // SET_SCANOUT with a blob and SET_SCANOUT_BLOB with a 2D resource are refused.
    assert_eq!(
        h.send(GpuCommand::SetScanout {
            rect: rect(0, 0, 1, 1),
            scanout_id: 0,
            resource_id: 1
        }),
        err(GpuError::InvalidParameter)
    );
    h.create_2d(3, 32, 16);
    assert_eq!(
        h.send(GpuCommand::SetScanoutBlob(ScanoutBlob {
            rect: rect(0, 0, w, hgt),
            scanout_id: 0,
            resource_id: 3,
            width: w,
            height: hgt,
            format: format::B8G8R8A8_UNORM,
            strides: [w * 4, 0, 0, 0],
            offsets: [0; 4],
        })),
        err(GpuError::InvalidParameter)
    );
    // Unknown blob_mem and flags.
    for (blob_mem, blob_flags) in [(3, 0), (9, 0), (BLOB_MEM_GUEST, 0x100)] {
        assert_eq!(
            h.ctx_send(
                0,
                GpuCommand::ResourceCreateBlob(CreateBlob {
                    resource_id: 4,
                    blob_mem,
                    blob_flags,
                    blob_id: 0,
                    size: PAGE,
                    entries: vec![MemEntry {
                        addr,
                        length: PAGE as u32
                    }],
                })
            ),
            err(GpuError::InvalidParameter),
            "blob_mem {blob_mem} flags {blob_flags:#x}"
        );
    }
}

#[test]
fn assign_uuid_gives_a_stable_random_v4_uuid() {
    let mut h = Harness::new();
    h.create_2d(1, 4, 4);
    h.create_2d(2, 4, 4);
    let GpuResponse::OkResourceUuid(a) = h.send(GpuCommand::ResourceAssignUuid { resource_id: 1 })
    else {
        panic!("no uuid");
    };
    let GpuResponse::OkResourceUuid(b) = h.send(GpuCommand::ResourceAssignUuid { resource_id: 2 })
    else {
        panic!("no uuid");
    };
    assert_ne!(a, b);
    assert_eq!(a[6] >> 4, 4, "version 4");
    assert_eq!(a[8] >> 6, 0b10, "RFC 4122 variant");
    assert_eq!(
        h.send(GpuCommand::ResourceAssignUuid { resource_id: 1 }),
        GpuResponse::OkResourceUuid(a)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceAssignUuid { resource_id: 3 }),
        err(GpuError::InvalidResourceId)
    );
}

// ---------------------------------------------------------------------------------------
// Contexts and cross-domain.

#[test]
fn context_lifecycle_and_capsets() {
    let mut h = Harness::new();
    assert_eq!(
        h.send(GpuCommand::GetCapsetInfo { capset_index: 0 }),
        GpuResponse::OkCapsetInfo {
            capset_id: CAPSET_CROSS_DOMAIN,
            max_version: 0,
            max_size: 16
        }
    );
    assert_eq!(
        h.send(GpuCommand::GetCapsetInfo { capset_index: 1 }),
        err(GpuError::InvalidParameter)
    );
    let GpuResponse::OkCapset(data) = h.send(GpuCommand::GetCapset {
        capset_id: CAPSET_CROSS_DOMAIN,
        capset_version: 0,
    }) else {
        panic!("no capset");
    };
    let caps = Capabilities::decode(&data).unwrap();
    assert_eq!(caps.version, 1);
    assert_eq!(caps.supported_channels, 0);
    assert!(!caps.supports_dmabuf, "memfd buffers are not dma-bufs");
    assert_eq!(
        h.send(GpuCommand::GetCapset {
            capset_id: 1,
            capset_version: 0
        }),
        err(GpuError::InvalidParameter)
    );

    let create = |init| GpuCommand::CtxCreate {
        context_init: init,
        debug_name: "c".into(),
    };
    // context_init 0: the default context Linux creates; it exists but renders nothing.
    assert_eq!(h.ctx_send(9, create(0)), GpuResponse::OkNoData);
    assert_eq!(
        h.ctx_send(9, GpuCommand::Submit3d { commands: vec![] }),
        err(GpuError::Unspec)
    );
    assert_eq!(h.ctx_send(9, GpuCommand::CtxDestroy), GpuResponse::OkNoData);
    assert_eq!(
        h.ctx_send(1, create(0x100)),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.ctx_send(1, create(1)), err(GpuError::InvalidParameter));
    assert_eq!(h.ctx_send(0, create(5)), err(GpuError::InvalidContextId));
    assert_eq!(h.ctx_send(1, create(5)), GpuResponse::OkNoData);
    assert_eq!(h.ctx_send(1, create(5)), err(GpuError::InvalidContextId));
    h.create_2d(10, 4, 4);
    assert_eq!(
        h.ctx_send(1, GpuCommand::CtxAttachResource { resource_id: 10 }),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.ctx_send(1, GpuCommand::CtxAttachResource { resource_id: 11 }),
        err(GpuError::InvalidResourceId)
    );
    assert_eq!(
        h.ctx_send(2, GpuCommand::CtxAttachResource { resource_id: 10 }),
        err(GpuError::InvalidContextId)
    );
    assert_eq!(
        h.ctx_send(1, GpuCommand::CtxDetachResource { resource_id: 10 }),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.ctx_send(1, GpuCommand::CtxDetachResource { resource_id: 10 }),
        err(GpuError::InvalidResourceId)
    );
    assert_eq!(h.ctx_send(1, GpuCommand::CtxDestroy), GpuResponse::OkNoData);
    assert_eq!(
        h.ctx_send(1, GpuCommand::CtxDestroy),
        err(GpuError::InvalidContextId)
    );
    assert_eq!(
        h.ctx_send(1, GpuCommand::Submit3d { commands: vec![] }),
        err(GpuError::InvalidContextId)
    );
}

#[test]
fn cross_domain_protocol_errors() {
    let mut h = Harness::new();
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::CtxCreate {
                context_init: 5,
                debug_name: String::new()
            }
        ),
        GpuResponse::OkNoData
    );
    // GET_IMAGE_REQUIREMENTS before INIT.
    let get = CrossDomainCommand::GetImageRequirements {
        width: 64,
        height: 64,
        drm_format: fourcc::XRGB8888,
        flags: 0,
    };
    assert_eq!(
        h.submit(1, std::slice::from_ref(&get)),
        err(GpuError::InvalidParameter)
    );
    // INIT with a ring that is not attached, or not a GUEST blob.
    assert_eq!(h.create_guest_blob(0, 7, 0x8000, 1), GpuResponse::OkNoData);
    let init = |id| {
        CrossDomainCommand::Init(Init {
            layout: InitLayout::TwoRings,
            query_ring_id: id,
            channel_ring_id: 0,
            channel_type: 0,
            protocol_version: 0,
        })
    };
    assert_eq!(h.submit(1, &[init(7)]), err(GpuError::InvalidResourceId));
    h.create_2d(8, 64, 64);
    h.ctx_send(1, GpuCommand::CtxAttachResource { resource_id: 8 });
    assert_eq!(h.submit(1, &[init(8)]), err(GpuError::InvalidParameter));
    // A Wayland channel on a device without a compositor socket: not served (the capset
    // says so).
    h.ctx_send(1, GpuCommand::CtxAttachResource { resource_id: 7 });
    assert_eq!(
        h.submit(
            1,
            &[CrossDomainCommand::Init(Init {
                layout: InitLayout::TwoRings,
                query_ring_id: 7,
                channel_ring_id: 7,
                channel_type: 1,
                protocol_version: 0,
            })]
        ),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.submit(1, &[init(7)]), GpuResponse::OkNoData);
    // Channel commands without a channel.
    for command in [
        CrossDomainCommand::Poll(PollLayout::Padded),
        CrossDomainCommand::Send(SendReceive {
            layout: IdLayout::TwentyEight,
            identifiers: vec![],
            data: b"x".to_vec(),
        }),
        CrossDomainCommand::Write(ReadWrite {
            identifier: 1,
            hang_up: false,
            data: vec![],
        }),
    ] {
        assert_eq!(
            h.submit(1, std::slice::from_ref(&command)),
            err(GpuError::InvalidParameter),
            "{command:?}"
        );
    }
    // Host -> guest commands and unknown ones.
    for cmd in [5u8, 6, 8, 0xff] {
        let mut raw = vec![0u8; 64];
        raw[0] = cmd;
        raw[2] = 64;
        assert_eq!(
            h.ctx_send(1, GpuCommand::Submit3d { commands: raw }),
            err(GpuError::InvalidParameter),
            "cmd {cmd}"
        );
    }
    // Bad image requests.
    for (width, height, drm_format) in [
        (0, 64, fourcc::XRGB8888),
        (64, 64, 0x1234),
        (100_000, 1, fourcc::XRGB8888),
    ] {
        assert_eq!(
            h.submit(
                1,
                &[CrossDomainCommand::GetImageRequirements {
                    width,
                    height,
                    drm_format,
                    flags: 0
                }]
            ),
            err(GpuError::InvalidParameter),
            "{width}x{height} {drm_format:#x}"
        );
    }
    // Malformed command stream.
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::Submit3d {
                commands: vec![2, 0, 0, 0, 0, 0, 0, 0]
            }
        ),
        err(GpuError::InvalidParameter)
    );
    // HOST3D blobs: unknown blob_id, no context, entries given, size mismatch.
    let reqs = h.image_requirements(1, 0x8000, 64, 64);
    assert_eq!(reqs.blob_id % 2, 0);
    let mut bad = reqs;
    bad.blob_id += 2;
    assert_eq!(
        h.create_host_blob(1, 20, &bad),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.create_host_blob(0, 20, &reqs),
        err(GpuError::InvalidContextId)
    );
    assert_eq!(
        h.create_host_blob(9, 20, &reqs),
        err(GpuError::InvalidContextId)
    );
    let mut bad = reqs;
    bad.size += PAGE;
    assert_eq!(
        h.create_host_blob(1, 20, &bad),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: 20,
                blob_mem: BLOB_MEM_HOST3D,
                blob_flags: BLOB_FLAG_USE_MAPPABLE,
                blob_id: reqs.blob_id.into(),
                size: reqs.size,
                entries: vec![MemEntry {
                    addr: 0,
                    length: 4096
                }],
            })
        ),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.create_host_blob(1, 20, &reqs), GpuResponse::OkNoData);
    // The same requirements serve a second blob (allocated again).
    assert_eq!(h.create_host_blob(1, 21, &reqs), GpuResponse::OkNoData);
    assert_eq!(
        h.dev.resource_memory(),
        2 * reqs.size + 64 * 64 * 4 + BACKING_ENTRY_COST
    );
}

/// The whole blob lane: cross-domain INIT + GET_IMAGE_REQUIREMENTS, CREATE_BLOB HOST3D with
/// the blob id, MAP_BLOB into the region, the guest writes through the mapping, and
/// SET_SCANOUT_BLOB + RESOURCE_FLUSH show those bytes.
#[test]
fn host3d_blob_map_write_and_scanout() {
    let mut h = Harness::new();
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let (w, hgt) = (100u32, 50u32);
    let reqs = h.image_requirements(1, ring, w, hgt);
    assert_eq!(reqs.strides[0], 448, "100 * 4 rounded to 64");
    assert_eq!(reqs.offsets[0], 0);
    assert_eq!(reqs.modifier, fourcc::MOD_LINEAR);
    assert_eq!(reqs.size, 6 * PAGE);
    assert_eq!(reqs.map_info, MAP_CACHE_WC);
    assert_eq!(reqs.memory_idx, -1);
    assert_eq!(h.create_host_blob(1, 1, &reqs), GpuResponse::OkNoData);

    let offset = 2 * MIB;
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset
        }),
        GpuResponse::OkMapInfo {
            map_info: MAP_CACHE_WC
        }
    );
    assert_eq!(
        map_calls(&h.region),
        vec![MapCall::Map {
            shm_offset: offset,
            len: reqs.size
        }]
    );
    assert_eq!(h.dev.region_ranges(), vec![(offset, reqs.size)]);
    // A fresh blob reads zero through the guest's mapping.
    let region = h.region.clone();
    assert!(region
        .region()
        .read(offset, reqs.size as usize)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // The guest draws through the mapping.
    let stride = reqs.strides[0];
    let img = pattern((stride * hgt) as usize, 11);
    region.region().write(offset, &img).unwrap();
    h.ok(GpuCommand::SetScanoutBlob(ScanoutBlob {
        rect: rect(0, 0, w, hgt),
        scanout_id: 0,
        resource_id: 1,
        width: w,
        height: hgt,
        format: format::B8G8R8X8_UNORM,
        strides: [stride, 0, 0, 0],
        offsets: [0; 4],
    }));
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, w, hgt),
        resource_id: 1,
    });
    let shown = h.take_shown();
    let Shown::Flush {
        data, drm_format, ..
    } = &shown[1]
    else {
        panic!("{shown:?}");
    };
    assert_eq!(*drm_format, fourcc::XRGB8888);
    for y in 0..hgt as usize {
        assert_eq!(
            &data[y * (w * 4) as usize..][..(w * 4) as usize],
            &img[y * stride as usize..][..(w * 4) as usize],
            "row {y}"
        );
    }

    // Mapping twice is refused; unmap, then double unmap is refused.
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset: 0
        }),
        err(GpuError::InvalidParameter)
    );
    h.ok(GpuCommand::ResourceUnmapBlob { resource_id: 1 });
    assert_eq!(
        h.send(GpuCommand::ResourceUnmapBlob { resource_id: 1 }),
        err(GpuError::InvalidParameter)
    );
    assert!(h.dev.region_ranges().is_empty());
    // Remap, then unref: unmapped synchronously, scanout disabled first.
    assert!(h
        .send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset: 0
        })
        .is_ok());
    h.take_shown();
    h.ok(GpuCommand::ResourceUnref { resource_id: 1 });
    assert_eq!(h.take_shown(), vec![Shown::Scanout(0, None)]);
    let calls = map_calls(&h.region);
    assert_eq!(
        calls[1..],
        [
            MapCall::Unmap {
                shm_offset: offset,
                len: reqs.size
            },
            MapCall::Map {
                shm_offset: 0,
                len: reqs.size
            },
            MapCall::Unmap {
                shm_offset: 0,
                len: reqs.size
            },
        ]
    );
    assert!(h.dev.region_ranges().is_empty());
    // Only the query ring is left; its GUEST blob costs only its one-entry list.
    assert_eq!(h.dev.resource_memory(), BACKING_ENTRY_COST);
}

#[test]
fn refused_buffers_are_never_mapped() {
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 16 * MIB,
            ..Default::default()
        },
        Box::new(FixedAdvisor::refuse()),
    );
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let reqs = h.image_requirements(1, ring, 64, 64);
    assert_eq!(reqs.map_info, 0, "requirements say: not mappable");
    assert_eq!(h.create_host_blob(1, 1, &reqs), GpuResponse::OkNoData);
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset: 0
        }),
        err(GpuError::Unspec)
    );
    assert_eq!(h.region.maps(), 0);
    assert!(h.dev.region_ranges().is_empty());
    // The resource stays usable and can be released.
    h.ok(GpuCommand::ResourceUnref { resource_id: 1 });
}

#[test]
fn region_full_then_freed_then_mapped() {
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 8 * PAGE,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
    );
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    // 64x32 XRGB = 8 KiB = 2 pages each.
    let mut ids = Vec::new();
    for id in 1..=5u32 {
        let reqs = h.image_requirements(1, ring, 64, 32);
        assert_eq!(reqs.size, 2 * PAGE);
        assert_eq!(h.create_host_blob(1, id, &reqs), GpuResponse::OkNoData);
        ids.push(id);
    }
    let map = |id, offset| GpuCommand::ResourceMapBlob {
        resource_id: id,
        offset,
    };
    for (i, &id) in ids[..4].iter().enumerate() {
        assert!(h.send(map(id, i as u64 * 2 * PAGE)).is_ok(), "blob {id}");
    }
    // Region full: every offset is taken or out of bounds.
    for offset in [
        0,
        2 * PAGE,
        6 * PAGE,
        7 * PAGE,
        8 * PAGE,
        u64::MAX - PAGE + 1,
    ] {
        assert_eq!(
            h.send(map(5, offset)),
            err(GpuError::InvalidParameter),
            "offset {offset:#x}"
        );
    }
    // Unaligned offset.
    assert_eq!(h.send(map(5, 100)), err(GpuError::InvalidParameter));
    h.ok(GpuCommand::ResourceUnmapBlob { resource_id: 2 });
    assert!(h.send(map(5, 2 * PAGE)).is_ok());
    assert_eq!(h.region.maps(), 5);
}

#[test]
fn mapping_needs_a_region_and_a_ready_mapper_and_undoes_failures() {
    // No region configured.
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 0,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
    );
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let reqs = h.image_requirements(1, ring, 64, 64);
    assert_eq!(h.create_host_blob(1, 1, &reqs), GpuResponse::OkNoData);
    let map = GpuCommand::ResourceMapBlob {
        resource_id: 1,
        offset: 0,
    };
    assert_eq!(h.send(map.clone()), err(GpuError::Unspec));

    let mut h = Harness::new();
    h.cross_domain_context(1, 100, ring);
    let reqs = h.image_requirements(1, ring, 64, 64);
    assert_eq!(h.create_host_blob(1, 1, &reqs), GpuResponse::OkNoData);
    // Mapper not available (frontend without SHMEM).
    h.region.set_available(false);
    assert_eq!(h.send(map.clone()), err(GpuError::Unspec));
    h.region.set_available(true);
    // Transport switch.
    h.dev.set_shmem_available(false);
    assert_eq!(h.send(map.clone()), err(GpuError::Unspec));
    h.dev.set_shmem_available(true);
    // The frontend refuses the map: the range is released again.
    h.region.fail_next_map();
    assert_eq!(h.send(map.clone()), err(GpuError::Unspec));
    assert!(h.dev.region_ranges().is_empty());
    assert!(h.send(map.clone()).is_ok());
    // A failed unmap keeps the blob mapped (the guest may retry).
    h.region.fail_next_unmap();
    assert_eq!(
        h.send(GpuCommand::ResourceUnmapBlob { resource_id: 1 }),
        err(GpuError::Unspec)
    );
    assert_eq!(h.dev.region_ranges().len(), 1);
    h.ok(GpuCommand::ResourceUnmapBlob { resource_id: 1 });
    // GUEST blobs and 2D resources are not mappable; unknown resources are invalid.
    assert_eq!(h.create_guest_blob(0, 2, 0x1000, 1), GpuResponse::OkNoData);
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 2,
            offset: 0
        }),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 3,
            offset: 0
        }),
        err(GpuError::InvalidResourceId)
    );
    // Not MAPPABLE.
    let reqs = h.image_requirements(1, ring, 64, 64);
    assert_eq!(
        h.ctx_send(
            1,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: 4,
                blob_mem: BLOB_MEM_HOST3D,
                blob_flags: BLOB_FLAG_USE_SHAREABLE,
                blob_id: reqs.blob_id.into(),
                size: reqs.size,
                entries: vec![],
            })
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.send(GpuCommand::ResourceMapBlob {
            resource_id: 4,
            offset: 0
        }),
        err(GpuError::InvalidParameter)
    );
}

#[test]
fn reset_forgets_everything_without_unmapping() {
    let mut h = Harness::new();
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let reqs = h.image_requirements(1, ring, 64, 64);
    assert_eq!(h.create_host_blob(1, 1, &reqs), GpuResponse::OkNoData);
    assert!(h
        .send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset: 0
        })
        .is_ok());
    h.create_2d(2, 8, 8);
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, 8, 8),
        scanout_id: 0,
        resource_id: 2,
    });
    h.take_shown();
    let calls_before = map_calls(&h.region).len();
    let display_before = h.send(GpuCommand::GetDisplayInfo);
    h.dev.reset();
    assert_eq!(
        h.send(GpuCommand::GetDisplayInfo),
        display_before,
        "outputs survive reset"
    );
    assert_eq!(
        map_calls(&h.region).len(),
        calls_before,
        "no unmap on reset"
    );
    assert!(h.dev.region_ranges().is_empty());
    assert_eq!(h.dev.resource_count(), 0);
    assert_eq!(h.dev.resource_memory(), 0);
    assert_eq!(h.take_shown(), vec![Shown::Scanout(0, None)]);
    // Features are renegotiated after reset.
    assert_eq!(h.dev.acked_features(), 0);
    h.dev.ack_features(h.dev.features());
    // The frontend unmaps the whole region on reset, as QEMU does.
    h.region.region().unmap_all().unwrap();
    // Ids are free again, the region offset too.
    h.create_2d(2, 8, 8);
    h.cross_domain_context(1, 100, ring);
    let reqs = h.image_requirements(1, ring, 64, 64);
    assert_eq!(h.create_host_blob(1, 1, &reqs), GpuResponse::OkNoData);
    assert!(h
        .send(GpuCommand::ResourceMapBlob {
            resource_id: 1,
            offset: 0
        })
        .is_ok());
}

#[test]
fn pending_image_buffers_are_bounded_and_released_with_the_context() {
    let mut h = Harness::new();
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    for _ in 0..50 {
        h.image_requirements(1, ring, 64, 64); // 16 KiB each
    }
    // At most 8 buffers wait for a CREATE_BLOB.
    assert_eq!(h.dev.resource_memory(), 8 * 16384 + BACKING_ENTRY_COST);
    h.ok(GpuCommand::ResourceUnref { resource_id: 100 });
    // The ring is gone: no more replies possible.
    assert_eq!(
        h.submit(
            1,
            &[CrossDomainCommand::GetImageRequirements {
                width: 1,
                height: 1,
                drm_format: fourcc::XRGB8888,
                flags: 0
            }]
        ),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.ctx_send(1, GpuCommand::CtxDestroy), GpuResponse::OkNoData);
    assert_eq!(h.dev.resource_memory(), 0);
}

#[test]
fn display_sink_swap_is_told_the_current_scanouts() {
    let mut h = Harness::new();
    h.create_2d(1, 8, 8);
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, 8, 4),
        scanout_id: 0,
        resource_id: 1,
    });
    let fresh = Arc::new(Mutex::new(Vec::new()));
    h.dev.set_display(Box::new(RecordingDisplay(fresh.clone())));
    assert_eq!(
        *fresh.lock().unwrap(),
        vec![Shown::Scanout(0, Some((8, 4)))]
    );
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, 8, 8),
        resource_id: 1,
    });
    assert_eq!(fresh.lock().unwrap().len(), 2);
}

#[test]
fn image_requirements_respect_the_memory_budget() {
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 16 * MIB,
            max_resource_memory: MIB,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
    );
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let get = |width, height| CrossDomainCommand::GetImageRequirements {
        width,
        height,
        drm_format: fourcc::XRGB8888,
        flags: 0,
    };
    assert_eq!(h.submit(1, &[get(1024, 1024)]), err(GpuError::OutOfMemory));
    // The query ring's one-entry list is charged.
    assert_eq!(h.dev.resource_memory(), BACKING_ENTRY_COST);
    assert_eq!(h.submit(1, &[get(256, 256)]), GpuResponse::OkNoData);
    assert_eq!(h.dev.resource_memory(), 256 * 256 * 4 + BACKING_ENTRY_COST);
}

#[test]
fn device_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<GpuDevice>();
    // And it keeps working on another thread.
    let mut h = Harness::new();
    let handle = std::thread::spawn(move || {
        h.create_2d(1, 4, 4);
        h.dev.resource_count()
    });
    assert_eq!(handle.join().unwrap(), 1);
}

/// Robustness: random requests (valid command types with random fields and lengths, mixed
/// with mutated valid requests) always get a well-formed response, and the device keeps
/// serving and keeps its invariants.
#[test]
fn random_requests_never_break_the_device() {
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
    let mut h = Harness::new();
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let types: Vec<u32> = (0x100..=0x10d)
        .chain(0x200..=0x209)
        .chain(0x300..=0x301)
        .collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut valid = Vec::new();
    GpuCommand::ResourceCreateBlob(CreateBlob {
        resource_id: 5,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: 0,
        blob_id: 0,
        size: PAGE,
        entries: vec![MemEntry {
            addr: 0x1000,
            length: PAGE as u32,
        }],
    })
    .encode(&CtrlHeader::default(), &mut valid);
    for i in 0..20_000u32 {
        let mut req = if i % 3 == 0 {
            let mut r = valid.clone();
            for _ in 0..rng.below(4) + 1 {
                let at = rng.below(r.len() as u64) as usize;
                r[at] = rng.next() as u8;
            }
            r
        } else {
            let len = rng.below(160) as usize;
            let mut r: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if r.len() >= 4 {
                let t = types[rng.below(types.len() as u64) as usize];
                r[0..4].copy_from_slice(&t.to_le_bytes());
            }
            if r.len() >= 24 {
                // Small ids so that commands hit existing objects now and then.
                r[16..20].copy_from_slice(&(rng.below(3) as u32).to_le_bytes());
            }
            if r.len() >= 28 {
                r[24..28].copy_from_slice(&(rng.below(8) as u32).to_le_bytes());
            }
            r
        };
        if rng.below(2) == 0 && req.len() > 8 {
            req.truncate(rng.below(req.len() as u64) as usize);
        }
        let out = if rng.below(4) == 0 {
            h.dev.process_cursor(&h.mem, &req)
        } else {
            h.dev.process_control(&h.mem, &req).into_response()
        };
        let (_, response) = GpuResponse::decode(&out).expect("well-formed response");
        if let GpuResponse::OkMapInfo { map_info } = response {
            assert!((1..=3).contains(&map_info));
        }
        // Ranges never overlap and stay inside the region.
        let mut end = 0;
        for (o, l) in h.dev.region_ranges() {
            assert!(o >= end && o + l <= 16 * MIB);
            end = o + l;
        }
    }
    assert!(h.dev.resource_memory() <= DeviceConfig::default().max_resource_memory);
    // Still serving.
    h.create_2d(4242, 4, 4);
    assert!(matches!(
        h.send(GpuCommand::GetDisplayInfo),
        GpuResponse::OkDisplayInfo(_)
    ));
}

/// Property: for random images, random scatter lists and random rectangles, the host image
/// after TRANSFER_TO_HOST_2D equals a byte-by-byte model of the copy.
#[test]
fn transfers_match_a_bytewise_model() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut h = Harness::new();
    for round in 0..40u32 {
        let id = round + 1;
        let (w, hgt) = (next(90) as u32 + 1, next(40) as u32 + 1);
        let stride = w * 4;
        let size = u64::from(stride * hgt);
        h.create_2d(id, w, hgt);
        // Random scatter list, pieces of 1..=700 bytes with holes, in guest RAM above 1 MiB.
        let mut entries = Vec::new();
        let mut left = size;
        let mut addr = 0x10_0000 + next(4096);
        while left > 0 {
            let len = (next(700) + 1).min(left);
            entries.push(MemEntry {
                addr,
                length: len as u32,
            });
            addr += len + next(3) * 64;
            left -= len;
        }
        let guest = pattern(size as usize, round as u8);
        write_backing(&h, &entries, &guest);
        h.ok(GpuCommand::ResourceAttachBacking {
            resource_id: id,
            entries,
        });
        let mut model = vec![0u8; size as usize];
        for _ in 0..5 {
            let x = next(u64::from(w)) as u32;
            let y = next(u64::from(hgt)) as u32;
            let rw = next(u64::from(w - x)) as u32 + 1;
            let rh = next(u64::from(hgt - y)) as u32 + 1;
            let offset = u64::from(y * stride + x * 4);
            h.ok(GpuCommand::TransferToHost2d {
                rect: rect(x, y, rw, rh),
                offset,
                resource_id: id,
            });
            for row in 0..rh {
                for col in 0..rw * 4 {
                    let dst = ((y + row) * stride + x * 4 + col) as usize;
                    let src = (offset + u64::from(row * stride + col)) as usize;
                    model[dst] = guest[src];
                }
            }
        }
        h.ok(GpuCommand::SetScanout {
            rect: rect(0, 0, w, hgt),
            scanout_id: 0,
            resource_id: id,
        });
        h.ok(GpuCommand::ResourceFlush {
            rect: rect(0, 0, w, hgt),
            resource_id: id,
        });
        let shown = h.take_shown();
        let Some(Shown::Flush { data, .. }) = shown.last() else {
            panic!("{shown:?}");
        };
        assert_eq!(data, &model, "round {round}: {w}x{hgt}");
        h.ok(GpuCommand::ResourceUnref { resource_id: id });
    }
}

#[test]
fn oldest_image_requirements_are_forgotten_when_the_table_is_full() {
    let mut h = Harness::new();
    let ring = 0x20_0000;
    h.cross_domain_context(1, 100, ring);
    let first = h.image_requirements(1, ring, 1, 1);
    let mut last = first;
    for _ in 0..4096 {
        last = h.image_requirements(1, ring, 1, 1);
    }
    assert_eq!(last.blob_id, first.blob_id + 2 * 4096);
    assert_eq!(
        h.create_host_blob(1, 1, &first),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.create_host_blob(1, 2, &last), GpuResponse::OkNoData);
    // Pending buffers stay bounded throughout.
    assert!(h.dev.resource_memory() <= 9 * PAGE);
}

#[test]
fn image_requirements_are_capped_across_all_contexts() {
    let mut h = Harness::new();
    let get = CrossDomainCommand::GetImageRequirements {
        width: 1,
        height: 1,
        drm_format: fourcc::XRGB8888,
        flags: 0,
    };
    // Four full contexts (4 x 4096) reach the total cap of 16384.
    for ctx in 1..=4u32 {
        let ring = 0x20_0000 + u64::from(ctx) * 0x1000;
        h.cross_domain_context(ctx, 100 + ctx, ring);
        for _ in 0..4096 {
            assert_eq!(
                h.submit(ctx, std::slice::from_ref(&get)),
                GpuResponse::OkNoData
            );
        }
    }
    // A fifth context holds none, so it cannot make room: out of memory.
    h.cross_domain_context(5, 105, 0x20_0000 + 5 * 0x1000);
    assert_eq!(
        h.submit(5, std::slice::from_ref(&get)),
        err(GpuError::OutOfMemory)
    );
    // A full context still works: it forgets its own oldest.
    assert_eq!(
        h.submit(1, std::slice::from_ref(&get)),
        GpuResponse::OkNoData
    );
    // Destroying a context frees its share for the others.
    assert_eq!(h.ctx_send(2, GpuCommand::CtxDestroy), GpuResponse::OkNoData);
    assert_eq!(h.submit(5, &[get]), GpuResponse::OkNoData);
}

// ---------------------------------------------------------------------------------------
// Live upgrade: the device's state as data, and back.

/// A device with every kind of state (a 2D resource with backing on scanout 0, a GUEST blob,
/// a cross-domain context with a pending image buffer, a mapped HOST3D blob, a UUID, the
/// cursor) is snapshotted, carried through JSON and restored into a fresh device (same
/// guest memory, same frontend region, fds duplicated as SCM_RIGHTS would): the restored
/// device has the same state and charges, and every object keeps working.
#[test]
fn snapshot_and_restore_carry_the_whole_device() {
    use vhost_user_gpu::device::snapshot::DeviceState;

    let mut h = Harness::new();
    let (w, hgt) = (64u32, 32u32);
    let size = u64::from(w * 4 * hgt);
    h.create_2d(1, w, hgt);
    let entries = scattered_entries(size);
    write_backing(&h, &entries, &pattern(size as usize, 5));
    h.ok(GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: entries.clone(),
    });
    h.ok(GpuCommand::TransferToHost2d {
        rect: rect(0, 0, w, hgt),
        offset: 0,
        resource_id: 1,
    });
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, w, hgt),
        scanout_id: 0,
        resource_id: 1,
    });
    assert!(matches!(
        h.send(GpuCommand::ResourceAssignUuid { resource_id: 1 }),
        GpuResponse::OkResourceUuid { .. }
    ));
    h.cross_domain_context(2, 10, 8 * MIB);
    let reqs = h.image_requirements(2, 8 * MIB, 64, 64);
    assert_eq!(h.create_host_blob(2, 11, &reqs), GpuResponse::OkNoData);
    assert!(matches!(
        h.ctx_send(
            2,
            GpuCommand::ResourceMapBlob {
                resource_id: 11,
                offset: 0
            }
        ),
        GpuResponse::OkMapInfo { .. }
    ));
    // A requirement whose buffer is still pending, for a blob not created yet.
    let pending = h.image_requirements(2, 8 * MIB, 32, 32);
    assert_eq!(
        h.create_guest_blob(0, 12, 12 * MIB, 2),
        GpuResponse::OkNoData
    );
    h.take_shown();

    let before = h.dev.snapshot().unwrap();
    // Every budget kind travels with what it pays for: the shown scanout's copies (the
    // device's and the sink's), the host buffers' fds, the context's attachments.
    let scanout = before.state.shown[0]
        .as_ref()
        .expect("scanout 0 shows resource 1");
    assert_eq!(scanout.charge.get(Kind::HostBytes), 2 * size);
    let blob = before.state.resources.iter().find(|r| r.id == 11).unwrap();
    assert_eq!(blob.charge.get(Kind::Fds), 1);
    let ctx = before.state.contexts.iter().find(|c| c.id == 2).unwrap();
    assert!(ctx.attached.contains(&10) && ctx.attached.contains(&11));
    assert_eq!(ctx.charge.get(Kind::Attachments), ctx.attached.len() as u64);
    assert_eq!(ctx.charge.get(Kind::Contexts), 1);
    let waiting = ctx.requirements.iter().find_map(|q| q.pending.as_ref());
    assert_eq!(waiting.map(|(_, amount)| amount.get(Kind::Fds)), Some(1));
    let json = serde_json::to_string(&before.state).unwrap();
    let state: DeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(state, before.state);
    let mut fds = received_fds(&before);
    let memory_before = h.dev.resource_memory();
    let ranges_before = h.dev.region_ranges();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let ports = Ports {
        exporter: vhost_user_gpu::alloc::guest_page_exporter(),
        ..h.restore_ports(shown.clone())
    };
    let restored = GpuDevice::restore(
        h.dev.config().clone(),
        ports,
        &state,
        &h.mem,
        &mut fds,
        &before.bulk,
    )
    .unwrap();
    assert!(fds.iter().all(Option::is_none), "every fd was taken");
    assert!(
        shown.lock().unwrap().is_empty(),
        "the display is not told anything"
    );
    let again = restored.snapshot().unwrap();
    assert_eq!(again.state, before.state);
    assert_eq!(again.bulk, before.bulk);
    assert_eq!(restored.resource_memory(), memory_before);
    assert_eq!(restored.region_ranges(), ranges_before);
    assert_eq!(restored.resource_count(), h.dev.resource_count());

    // The restored device goes on where the old one stopped.
    drop(std::mem::replace(&mut h.dev, restored));
    h.shown = shown;
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, w, hgt),
        resource_id: 1,
    });
    let Shown::Flush { data, .. } = &h.take_shown()[0] else {
        panic!("no flush after the restore");
    };
    assert_eq!(data.len(), size as usize);
    assert_eq!(
        h.ctx_send(2, GpuCommand::ResourceUnmapBlob { resource_id: 11 }),
        GpuResponse::OkNoData
    );
    assert!(map_calls(&h.region).contains(&MapCall::Unmap {
        shm_offset: 0,
        len: reqs.size
    }));
    // The pending buffer is claimed, and the context hands out the next blob id.
    assert_eq!(h.create_host_blob(2, 13, &pending), GpuResponse::OkNoData);
    let next = h.image_requirements(2, 8 * MIB, 16, 16);
    assert!(next.blob_id > pending.blob_id, "{next:?} after {pending:?}");
    h.ok(GpuCommand::ResourceUnref { resource_id: 12 });
    h.ok(GpuCommand::ResourceUnref { resource_id: 1 });
}

/// A state that does not fit the device it is restored into is refused, nothing half-done.
#[test]
fn restore_refuses_a_state_for_another_device() {
    let mut h = Harness::new();
    h.create_2d(1, 16, 16);
    let snap = h.dev.snapshot().unwrap();
    let mut state = snap.state.clone();
    state.outputs.push((640, 480));
    let ports = |h: &Harness| h.restore_ports(Arc::default());
    let err = GpuDevice::restore(
        h.dev.config().clone(),
        ports(&h),
        &state,
        &h.mem,
        &mut Vec::new(),
        &snap.bulk,
    )
    .unwrap_err();
    assert!(err.to_string().contains("scanouts"), "{err}");
    // Pixels past the bulk data sent.
    let err = GpuDevice::restore(
        h.dev.config().clone(),
        ports(&h),
        &snap.state,
        &h.mem,
        &mut Vec::new(),
        &Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("bulk data"), "{err}");
    // A context whose attachments are not what it is charged for.
    h.cross_domain_context(2, 10, 8 * MIB);
    let snap = h.dev.snapshot().unwrap();
    let mut state = snap.state.clone();
    state.contexts[0].attached.push(99);
    let err = GpuDevice::restore(
        h.dev.config().clone(),
        ports(&h),
        &state,
        &h.mem,
        &mut Vec::new(),
        &snap.bulk,
    )
    .unwrap_err();
    assert!(err.to_string().contains("attachments charged"), "{err}");
}

/// A state over a budget of the device it is restored into (a new process under a smaller
/// open-file limit, say) is refused with the budget named, whichever kind it is: the live
/// upgrade rolls back instead of serving a guest past its limits.
#[test]
fn restore_refuses_a_state_over_the_budget() {
    let mut h = Harness::new();
    h.create_2d(1, 64, 64);
    h.cross_domain_context(2, 10, 8 * MIB);
    for id in 11..14 {
        let reqs = h.image_requirements(2, 8 * MIB, 16, 16);
        assert_eq!(h.create_host_blob(2, id, &reqs), GpuResponse::OkNoData);
    }
    let snap = h.dev.snapshot().unwrap();
    let base = h.dev.config().clone();
    let smaller = [
        (
            DeviceConfig {
                max_fds: 2,
                ..base.clone()
            },
            "open files",
        ),
        (
            DeviceConfig {
                max_resource_memory: 4096,
                ..base.clone()
            },
            "host bytes",
        ),
        (
            DeviceConfig {
                max_resources: 2,
                ..base.clone()
            },
            "resources",
        ),
    ];
    for (config, kind) in smaller {
        let err = GpuDevice::restore(
            config,
            h.restore_ports(Arc::default()),
            &snap.state,
            &h.mem,
            &mut received_fds(&snap),
            &snap.bulk,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                vhost_user_gpu::device::snapshot::RestoreError::OverBudget(_)
            ) && err.to_string().contains(kind),
            "{kind}: {err}"
        );
    }
    // The same state fits the device it came from.
    GpuDevice::restore(
        base,
        h.restore_ports(Arc::default()),
        &snap.state,
        &h.mem,
        &mut received_fds(&snap),
        &snap.bulk,
    )
    .unwrap()
    .discard();
}

/// A restored device that its process does not take over (the live upgrade rolls back) is
/// discarded without a word to its display sink, which writes to the channel the previous
/// process still serves; dropped like any device, it turns its scanouts off.
#[test]
fn a_discarded_restored_device_tells_the_display_nothing() {
    let mut h = Harness::new();
    let (w, hgt) = (16u32, 8u32);
    h.create_2d(1, w, hgt);
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, w, hgt),
        scanout_id: 0,
        resource_id: 1,
    });
    let snap = h.dev.snapshot().unwrap();
    let restore = |shown: &Arc<Mutex<Vec<Shown>>>| {
        GpuDevice::restore(
            h.dev.config().clone(),
            h.restore_ports(shown.clone()),
            &snap.state,
            &h.mem,
            &mut Vec::new(),
            &snap.bulk,
        )
        .unwrap()
    };
    let shown = Arc::new(Mutex::new(Vec::new()));
    let restored = restore(&shown);
    assert_eq!(restored.resource_memory(), h.dev.resource_memory());
    restored.discard();
    assert!(shown.lock().unwrap().is_empty(), "{:?}", shown.lock());
    let dropped = restore(&shown);
    drop(dropped);
    assert!(
        matches!(shown.lock().unwrap()[..], [Shown::Scanout(0, None)]),
        "{:?}",
        shown.lock()
    );
}

// ---------------------------------------------------------------------------------------
// What showing, exporting and attaching cost the guest's budget.

/// A display sink that declares `copies` frame copies and records the scanouts it is told.
struct CopyingDisplay {
    copies: u32,
    shown: Arc<Mutex<Vec<Shown>>>,
}

impl DisplaySink for CopyingDisplay {
    fn frame_copies(&self) -> u32 {
        self.copies
    }
    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        self.shown
            .lock()
            .unwrap()
            .push(Shown::Scanout(scanout_id, mode));
    }
    fn flush(&mut self, _scanout_id: u32, _frame: &Frame<'_>, _damage: Rect) {}
    fn cursor_update(&mut self, _cursor: &Cursor<'_>) {}
    fn cursor_move(&mut self, _scanout_id: u32, _x: u32, _y: u32) {}
}

fn show_blob(h: &mut Harness, id: u32, r: Rect, w: u32, hgt: u32) -> GpuResponse {
    h.send(GpuCommand::SetScanoutBlob(ScanoutBlob {
        rect: r,
        scanout_id: 0,
        resource_id: id,
        width: w,
        height: hgt,
        format: format::B8G8R8X8_UNORM,
        strides: [w * 4, 0, 0, 0],
        offsets: [0; 4],
    }))
}

#[test]
fn scanout_copies_are_charged_while_shown() {
    // 64x64 is 16 KiB a copy: the device's and the recording sink's (it declares 1).
    const FRAME: u64 = 64 * 64 * 4;
    let config = |budget| DeviceConfig {
        hostmem: 16 * MIB,
        max_resource_memory: budget,
        ..Default::default()
    };
    let advisor = || Box::new(FixedAdvisor::allow(MAP_CACHE_WC));
    // Two one-entry GUEST blobs of 5 pages, and exactly one shown 64x64 frame.
    let exact = 2 * BACKING_ENTRY_COST + 2 * FRAME;
    let mut h = Harness::with(config(exact), advisor());
    assert_eq!(
        h.create_guest_blob(0, 1, 0x10_0000, 5),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_guest_blob(0, 2, 0x20_0000, 5),
        GpuResponse::OkNoData
    );
    let blobs = h.dev.resource_memory();
    assert_eq!(
        show_blob(&mut h, 1, rect(0, 0, 64, 64), 64, 64),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), exact, "the frame fits exactly");
    // A page flip to an image of the same size reuses the charge.
    assert_eq!(
        show_blob(&mut h, 2, rect(0, 0, 64, 64), 64, 64),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), exact);
    // One more row is past the budget (the blob is large enough: only the budget refuses);
    // the scanout keeps showing what it showed.
    assert_eq!(
        show_blob(&mut h, 1, rect(0, 0, 64, 65), 64, 65),
        err(GpuError::OutOfMemory)
    );
    assert_eq!(h.dev.resource_memory(), exact);
    h.take_shown();
    h.ok(GpuCommand::ResourceFlush {
        rect: rect(0, 0, 64, 64),
        resource_id: 2,
    });
    assert!(
        matches!(
            h.take_shown().as_slice(),
            [Shown::Flush {
                width: 64,
                height: 64,
                ..
            }]
        ),
        "the earlier image is still shown"
    );
    // A smaller rectangle costs less; disabling releases it all.
    assert_eq!(
        show_blob(&mut h, 2, rect(0, 0, 32, 32), 64, 64),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), blobs + 2 * 32 * 32 * 4);
    assert_eq!(
        show_blob(&mut h, 0, rect(0, 0, 0, 0), 0, 0),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), blobs);
    // A 2D scanout is charged the same way (its pixels are charged on their own).
    h.create_2d(3, 16, 16);
    let before = h.dev.resource_memory();
    h.ok(GpuCommand::SetScanout {
        rect: rect(0, 0, 16, 8),
        scanout_id: 0,
        resource_id: 3,
    });
    assert_eq!(h.dev.resource_memory(), before + 2 * 16 * 8 * 4);
    h.ok(GpuCommand::ResourceUnref { resource_id: 3 });
    assert_eq!(
        h.dev.resource_memory(),
        blobs,
        "unref stops the scanout and its charge"
    );

    // One byte less: the frame does not fit.
    let mut h = Harness::with(config(exact - 1), advisor());
    assert_eq!(
        h.create_guest_blob(0, 1, 0x10_0000, 5),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_guest_blob(0, 2, 0x20_0000, 5),
        GpuResponse::OkNoData
    );
    assert_eq!(
        show_blob(&mut h, 1, rect(0, 0, 64, 64), 64, 64),
        err(GpuError::OutOfMemory)
    );

    // A new display sink that copies more is charged again; a scanout that no longer fits
    // is disabled (and the new sink is not told about it).
    let mut h = Harness::with(config(exact), advisor());
    assert_eq!(
        h.create_guest_blob(0, 1, 0x10_0000, 5),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.create_guest_blob(0, 2, 0x20_0000, 5),
        GpuResponse::OkNoData
    );
    assert_eq!(
        show_blob(&mut h, 1, rect(0, 0, 64, 64), 64, 64),
        GpuResponse::OkNoData
    );
    let told = Arc::new(Mutex::new(Vec::new()));
    h.dev.set_display(Box::new(CopyingDisplay {
        copies: 2,
        shown: told.clone(),
    }));
    assert!(
        told.lock().unwrap().is_empty(),
        "{:?}",
        told.lock().unwrap()
    );
    assert_eq!(h.dev.resource_memory(), 2 * BACKING_ENTRY_COST);
    // With that sink a 64x32 frame costs three copies.
    assert_eq!(
        show_blob(&mut h, 1, rect(0, 0, 64, 32), 64, 64),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.dev.resource_memory(),
        2 * BACKING_ENTRY_COST + 3 * 64 * 32 * 4
    );
}

#[test]
fn scanout_sides_are_capped_exactly() {
    let mut h = Harness::new();
    // A blob large enough for one row and one column one past the limit: only the side
    // limit can refuse.
    let pages = (u64::from(MAX_SCANOUT_SIDE + 1) * 4).div_ceil(PAGE);
    assert_eq!(
        h.create_guest_blob(0, 1, 0x10_0000, pages),
        GpuResponse::OkNoData
    );
    let set = |w: u32, hgt: u32, stride: u32| {
        GpuCommand::SetScanoutBlob(ScanoutBlob {
            rect: rect(0, 0, w, hgt),
            scanout_id: 0,
            resource_id: 1,
            width: w,
            height: hgt,
            format: format::B8G8R8X8_UNORM,
            strides: [stride, 0, 0, 0],
            offsets: [0; 4],
        })
    };
    let max = MAX_SCANOUT_SIDE;
    assert_eq!(h.send(set(max, 1, max * 4)), GpuResponse::OkNoData);
    assert_eq!(
        h.send(set(max + 1, 1, (max + 1) * 4)),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.send(set(1, max, 4)), GpuResponse::OkNoData);
    assert_eq!(h.send(set(1, max + 1, 4)), err(GpuError::InvalidParameter));
    // 2D: a wide resource, shown up to the limit.
    h.create_2d(2, max + 1, 1);
    let show = |w| GpuCommand::SetScanout {
        rect: rect(0, 0, w, 1),
        scanout_id: 0,
        resource_id: 2,
    };
    assert_eq!(h.send(show(max)), GpuResponse::OkNoData);
    assert_eq!(h.send(show(max + 1)), err(GpuError::InvalidParameter));
    // Nothing larger than the limit ever reached the display.
    for s in h.take_shown() {
        if let Shown::Scanout(_, Some((w, hgt))) = s {
            assert!(w <= max && hgt <= max, "{w}x{hgt} reached the display");
        }
    }
}

/// A FAKE udmabuf exporter (no `/dev/udmabuf` here): it "exports" by handing out a memfd,
/// so the device's accounting of exports can be checked on any host.
struct FakeExporter {
    exports: Arc<Mutex<usize>>,
}

impl GuestPageExporter for FakeExporter {
    fn export(&mut self, _pages: &[GuestPages<'_>]) -> Result<std::os::fd::OwnedFd, ExportError> {
        *self.exports.lock().unwrap() += 1;
        rustix::fs::memfd_create("fake-udmabuf", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| ExportError::Refused(e.to_string()))
    }
}

#[test]
fn guest_blob_exports_are_charged_or_skipped() {
    // Each export of a 16-page blob costs its page arrays and one fd.
    let export = 16 * DMABUF_PAGE_COST + DMABUF_OBJECT_COST;
    let exports = Arc::new(Mutex::new(0));
    let mut h = Harness::with_exporter(
        DeviceConfig {
            hostmem: 16 * MIB,
            max_resource_memory: 3 * BACKING_ENTRY_COST + 2 * export,
            max_fds: 10,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        Some(Box::new(FakeExporter {
            exports: exports.clone(),
        })),
    );
    // Memfd guest RAM, page-aligned entries: exportable. Three blobs over the same pages
    // (distinct blobs may share pages): two exports fit, the third blob is made without one.
    for id in 1..=3 {
        assert_eq!(
            h.create_guest_blob(0, id, 0x10_0000, 16),
            GpuResponse::OkNoData
        );
    }
    assert_eq!(
        *exports.lock().unwrap(),
        2,
        "the third export was not attempted"
    );
    assert_eq!(h.dev.resource_memory(), 3 * BACKING_ENTRY_COST + 2 * export);
    // Freeing an exported blob gives its export back.
    h.ok(GpuCommand::ResourceUnref { resource_id: 1 });
    assert_eq!(h.dev.resource_memory(), 2 * BACKING_ENTRY_COST + export);
    assert_eq!(
        h.create_guest_blob(0, 4, 0x10_0000, 16),
        GpuResponse::OkNoData
    );
    assert_eq!(*exports.lock().unwrap(), 3);
    // The fd budget caps exports too (and host buffers).
    let mut h = Harness::with_exporter(
        DeviceConfig {
            hostmem: 16 * MIB,
            max_fds: 1,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        Some(Box::new(FakeExporter {
            exports: exports.clone(),
        })),
    );
    *exports.lock().unwrap() = 0;
    for id in 1..=3 {
        assert_eq!(
            h.create_guest_blob(0, id, 0x10_0000, 16),
            GpuResponse::OkNoData
        );
    }
    assert_eq!(*exports.lock().unwrap(), 1);
}

#[test]
fn aliased_guest_blob_entries_are_refused() {
    let mut h = Harness::new();
    let blob = |id, size, entries: Vec<MemEntry>| {
        GpuCommand::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: 0,
            blob_id: 0,
            size,
            entries,
        })
    };
    let e = |addr, length| MemEntry { addr, length };
    // 16384 entries of 1 MiB over one MiB: a 16 GiB claim.
    let aliased = vec![e(0x10_0000, MIB as u32); 16384];
    assert_eq!(
        h.send(blob(1, 16384 * MIB, aliased)),
        err(GpuError::InvalidParameter)
    );
    // Overlapping by one byte, either order; touching is fine.
    assert_eq!(
        h.send(blob(
            1,
            2 * PAGE,
            vec![e(0x10_0000, 4097), e(0x10_1000, 4096)]
        )),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(blob(
            1,
            2 * PAGE,
            vec![e(0x10_1000, 4096), e(0x10_0000, 4097)]
        )),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(h.dev.resource_memory(), 0, "nothing stays charged");
    assert_eq!(
        h.send(blob(
            1,
            2 * PAGE,
            vec![e(0x10_1000, 4096), e(0x10_0000, 4096)]
        )),
        GpuResponse::OkNoData
    );
    // The blob's size is bounded by its entries: exactly their sum, not a byte more.
    assert_eq!(
        h.send(blob(2, 2 * PAGE + 1, vec![e(0x20_0000, 8192)])),
        err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.send(blob(2, 2 * PAGE, vec![e(0x20_0000, 8192)])),
        GpuResponse::OkNoData
    );
    // A 2D backing may list the same memory twice (its length bounds no host allocation).
    h.create_2d(3, 4, 1);
    h.ok(GpuCommand::ResourceAttachBacking {
        resource_id: 3,
        entries: vec![e(0x30_0000, 16), e(0x30_0000, 16)],
    });
}

#[test]
fn context_attachments_are_charged() {
    let mut h = Harness::with(
        DeviceConfig {
            hostmem: 16 * MIB,
            max_resources: 2,
            ..Default::default()
        },
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
    );
    // 2 resources: 32 attachments (16 per resource).
    h.create_2d(1, 1, 1);
    h.create_2d(2, 1, 1);
    let create = |ctx| GpuCommand::CtxCreate {
        context_init: CAPSET_CROSS_DOMAIN,
        debug_name: format!("c{ctx}"),
    };
    for ctx in 1..=17 {
        assert_eq!(h.ctx_send(ctx, create(ctx)), GpuResponse::OkNoData);
    }
    let attach = |rid| GpuCommand::CtxAttachResource { resource_id: rid };
    for ctx in 1..=16 {
        for rid in [1, 2] {
            assert_eq!(h.ctx_send(ctx, attach(rid)), GpuResponse::OkNoData);
        }
    }
    assert_eq!(
        h.ctx_send(1, attach(1)),
        GpuResponse::OkNoData,
        "attached already"
    );
    assert_eq!(h.ctx_send(17, attach(1)), err(GpuError::OutOfMemory));
    assert_eq!(
        h.ctx_send(16, GpuCommand::CtxDestroy),
        GpuResponse::OkNoData,
        "a destroyed context gives its attachments back"
    );
    assert_eq!(h.ctx_send(17, attach(1)), GpuResponse::OkNoData);
    assert_eq!(h.ctx_send(17, attach(2)), GpuResponse::OkNoData);
    assert_eq!(h.ctx_send(15, attach(1)), GpuResponse::OkNoData);
    // Reset releases everything.
    h.dev.reset();
    assert_eq!(h.dev.resource_memory(), 0);
}
