//! Renderer resources through the device: RESOURCE_CREATE_3D (charged to the budget), their
//! backing and transfers, renderer blobs, and the policy between renderer blobs and the guest
//! (RESOURCE_MAP_BLOB asks the real dmabuf-info advisor about the fd the renderer exported).
//! The renderer is the `FakeRenderer` (a stand-in for a GPU, named as such): its HOST3D
//! blobs are real memfds and its transfers really move bytes; the region mapper really maps
//! into a reserved region.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use vhost_user_gpu::advisor::DmabufInfoAdvisor;
use vhost_user_gpu::alloc::memfd::MemfdAllocator;
use vhost_user_gpu::device::ports::{Cursor, DisplaySink, Frame, GuestMemory, MapAdvisor};
use vhost_user_gpu::device::{Completion, DeviceConfig, GpuDevice, Ports};
use vhost_user_gpu::protocol::{
    format, CreateBlob, CtrlHeader, GpuCommand, GpuError, GpuResponse, MemEntry, Rect, Resource3d,
    Transfer3d, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D, BLOB_MEM_HOST3D_GUEST,
    CAPSET_VENUS, MAP_CACHE_CACHED, MAP_CACHE_WC,
};
use vhost_user_gpu::renderer::fake::{FakeControl, FakeRenderer};
use vug_test_support::{FixedAdvisor, FrontendMapper, FrontendRegion, ShmemEvent};

const MIB: u64 = 1 << 20;
const VIRGL_CTX: u32 = 1;
const VENUS_CTX: u32 = 2;

#[derive(Default)]
struct Shown {
    flushes: Vec<(u32, u32, u32, Vec<u8>)>,
}

struct RecordingDisplay(Arc<Mutex<Shown>>);

impl DisplaySink for RecordingDisplay {
    fn scanout(&mut self, _: u32, _: Option<(u32, u32)>) {}
    fn flush(&mut self, _: u32, frame: &Frame<'_>, _: Rect) {
        let len = (frame.stride * frame.height) as usize;
        self.0.lock().unwrap().flushes.push((
            frame.width,
            frame.height,
            frame.drm_format,
            frame.data[..len].to_vec(),
        ));
    }
    fn cursor_update(&mut self, _: &Cursor<'_>) {}
    fn cursor_move(&mut self, _: u32, _: u32, _: u32) {}
}

struct Harness {
    dev: GpuDevice,
    mem: GuestMemory,
    region: Arc<FrontendRegion>,
    shown: Arc<Mutex<Shown>>,
    _fake: FakeControl,
}

fn harness(advisor: Box<dyn MapAdvisor>, config: DeviceConfig) -> Harness {
    let fake = FakeRenderer::new();
    let control = fake.control();
    let region = FrontendRegion::new(config.hostmem);
    let shown = Arc::new(Mutex::new(Shown::default()));
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(region.clone())),
        display: Box::new(RecordingDisplay(shown.clone())),
        advisor,
        exporter: None,
        channels: None,
        renderer: Some(Box::new(fake)),
    };
    let mut dev = GpuDevice::new(config, ports);
    dev.ack_features(dev.features());
    let mut h = Harness {
        dev,
        mem: GuestMemory::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)]).unwrap(),
        region,
        shown,
        _fake: control,
    };
    for (ctx, init) in [(VIRGL_CTX, 0), (VENUS_CTX, CAPSET_VENUS)] {
        assert_eq!(
            h.send(
                ctx,
                GpuCommand::CtxCreate {
                    context_init: init,
                    debug_name: "t".into()
                }
            ),
            GpuResponse::OkNoData
        );
    }
    h
}

/// The real dmabuf-info advisor with `quirks` (TOML) on an x86 AMD platform (where a
/// write-combined host mapping reaches the guest as such).
fn dmabuf_info(quirks: &str) -> Box<dyn MapAdvisor> {
    let config = dmabuf_info::Config::from_toml_str(quirks).unwrap();
    Box::new(DmabufInfoAdvisor::new(
        config,
        Some(dmabuf_info::Platform::X86Amd),
    ))
}

fn config() -> DeviceConfig {
    DeviceConfig {
        hostmem: 16 * MIB,
        ..DeviceConfig::default()
    }
}

impl Harness {
    fn send(&mut self, ctx_id: u32, command: GpuCommand) -> GpuResponse {
        let hdr = CtrlHeader {
            ctx_id,
            ..Default::default()
        };
        let mut request = Vec::new();
        command.encode(&hdr, &mut request);
        match self.dev.process_control(&self.mem, &request) {
            Completion::Now(bytes) => GpuResponse::decode(&bytes).unwrap().1,
            Completion::Later { .. } => panic!("an unfenced command waits"),
        }
    }

    fn blob(
        &mut self,
        ctx_id: u32,
        id: u32,
        blob_mem: u32,
        size: u64,
        entries: Vec<MemEntry>,
    ) -> GpuResponse {
        self.send(
            ctx_id,
            GpuCommand::ResourceCreateBlob(CreateBlob {
                resource_id: id,
                blob_mem,
                blob_flags: BLOB_FLAG_USE_MAPPABLE,
                blob_id: 0,
                size,
                entries,
            }),
        )
    }

    fn mapped(&self) -> Vec<(u64, u64)> {
        self.region.region().mappings()
    }
}

fn texture(width: u32, height: u32) -> Resource3d {
    Resource3d {
        target: 2,
        format: format::B8G8R8X8_UNORM,
        bind: 2,
        width,
        height,
        depth: 1,
        array_size: 1,
        ..Resource3d::default()
    }
}

#[test]
fn resource_create_3d_is_charged_and_refused_past_the_budget() {
    let mut h = harness(
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        DeviceConfig {
            max_resource_memory: MIB,
            ..config()
        },
    );
    let r = h.send(
        0,
        GpuCommand::ResourceCreate3d {
            resource_id: 1,
            resource: texture(256, 256),
        },
    );
    assert_eq!(r, GpuResponse::OkNoData);
    assert_eq!(h.dev.resource_memory(), 256 * 256 * 4);
    // 1024x1024 of 4 bytes is past a 1 MiB budget: refused before the renderer sees it.
    let r = h.send(
        0,
        GpuCommand::ResourceCreate3d {
            resource_id: 2,
            resource: texture(1024, 1024),
        },
    );
    assert_eq!(r, GpuResponse::Err(GpuError::OutOfMemory));
    assert_eq!(h.dev.resource_count(), 1);
    // Sizes no renderer takes are invalid, not charged.
    let r = h.send(
        0,
        GpuCommand::ResourceCreate3d {
            resource_id: 3,
            resource: texture(70_000, 1),
        },
    );
    assert_eq!(r, GpuResponse::Err(GpuError::InvalidParameter));
    assert_eq!(
        h.send(0, GpuCommand::ResourceUnref { resource_id: 1 }),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), 0);
}

#[test]
fn transfers_move_bytes_and_a_3d_scanout_shows_them() {
    let mut h = harness(Box::new(FixedAdvisor::allow(MAP_CACHE_WC)), config());
    let pixels: Vec<u8> = (0..4 * 4 * 4).map(|i| i as u8).collect();
    h.mem.write_slice(&pixels, GuestAddress(0x1000)).unwrap();
    assert_eq!(
        h.send(
            0,
            GpuCommand::ResourceCreate3d {
                resource_id: 5,
                resource: texture(4, 4)
            }
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.send(
            0,
            GpuCommand::ResourceAttachBacking {
                resource_id: 5,
                entries: vec![MemEntry {
                    addr: 0x1000,
                    length: 64
                }]
            }
        ),
        GpuResponse::OkNoData
    );
    let whole = Transfer3d::image(4, 4);
    assert_eq!(
        h.send(
            VIRGL_CTX,
            GpuCommand::TransferToHost3d {
                resource_id: 5,
                transfer: whole
            }
        ),
        GpuResponse::OkNoData
    );
    // Shown on a scanout: the flush carries the renderer's pixels (read back).
    let rect = Rect {
        x: 0,
        y: 0,
        width: 4,
        height: 4,
    };
    let before_shown = h.dev.resource_memory();
    assert_eq!(
        h.send(
            0,
            GpuCommand::SetScanout {
                rect,
                scanout_id: 0,
                resource_id: 5
            }
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.send(
            0,
            GpuCommand::ResourceFlush {
                rect,
                resource_id: 5
            }
        ),
        GpuResponse::OkNoData
    );
    let flush = h.shown.lock().unwrap().flushes.pop().expect("a flush");
    assert_eq!((flush.0, flush.1), (4, 4));
    assert_eq!(flush.3, pixels, "the renderer's pixels reach the display");
    // The read-back copies are charged while the scanout shows the resource.
    assert!(h.dev.resource_memory() >= before_shown + 4 * 4 * 4);
    assert_eq!(
        h.send(
            0,
            GpuCommand::SetScanout {
                rect: Rect::default(),
                scanout_id: 0,
                resource_id: 0
            }
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), before_shown);
    // And back into guest memory, elsewhere.
    h.mem.write_slice(&[0; 64], GuestAddress(0x1000)).unwrap();
    assert_eq!(
        h.send(
            VIRGL_CTX,
            GpuCommand::TransferFromHost3d {
                resource_id: 5,
                transfer: whole
            }
        ),
        GpuResponse::OkNoData
    );
    let mut back = vec![0u8; 64];
    h.mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
    assert_eq!(back, pixels);
    // With virgl served, a 3D transfer of a resource the renderer does not have (a 2D one)
    // is an invalid parameter.
    let two_d = GpuCommand::ResourceCreate2d {
        resource_id: 6,
        format: format::B8G8R8X8_UNORM,
        width: 4,
        height: 4,
    };
    assert_eq!(h.send(0, two_d), GpuResponse::OkNoData);
    assert_eq!(
        h.send(
            VIRGL_CTX,
            GpuCommand::TransferToHost3d {
                resource_id: 6,
                transfer: whole
            }
        ),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
    // A second backing is refused; after detaching, transfers have nothing to move.
    let again = GpuCommand::ResourceAttachBacking {
        resource_id: 5,
        entries: vec![MemEntry {
            addr: 0x2000,
            length: 64,
        }],
    };
    assert_eq!(h.send(0, again), GpuResponse::Err(GpuError::Unspec));
    assert_eq!(
        h.send(0, GpuCommand::ResourceDetachBacking { resource_id: 5 }),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.send(
            VIRGL_CTX,
            GpuCommand::TransferToHost3d {
                resource_id: 5,
                transfer: whole
            }
        ),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
}

#[test]
fn a_host3d_blob_is_mapped_with_dmabuf_infos_cache_type_not_the_renderers() {
    // The fake renderer says CACHED; dmabuf-info's memfd quirk says write-combined.
    let mut h = harness(
        dmabuf_info(
            "[[exporter]]\nname = \"memfd\"\ncache = \"write-combined\"\nneeds_sync = \"no\"\nstable = true\n",
        ),
        config(),
    );
    assert_eq!(
        h.blob(VENUS_CTX, 7, BLOB_MEM_HOST3D, 8192, vec![]),
        GpuResponse::OkNoData
    );
    assert_eq!(h.dev.resource_memory(), 8192, "renderer memory is charged");
    let r = h.send(
        VENUS_CTX,
        GpuCommand::ResourceMapBlob {
            resource_id: 7,
            offset: 0x10000,
        },
    );
    assert_eq!(
        r,
        GpuResponse::OkMapInfo {
            map_info: MAP_CACHE_WC
        }
    );
    assert_eq!(h.mapped(), vec![(0x10000, 8192)]);
    // What the guest writes through the mapping is the renderer's memory: it is there
    // again when the blob is mapped elsewhere.
    h.region.region().write(0x10000, b"venus").unwrap();
    assert_eq!(
        h.send(VENUS_CTX, GpuCommand::ResourceUnmapBlob { resource_id: 7 }),
        GpuResponse::OkNoData
    );
    assert!(h.mapped().is_empty());
    h.send(
        VENUS_CTX,
        GpuCommand::ResourceMapBlob {
            resource_id: 7,
            offset: 0,
        },
    );
    assert_eq!(h.region.region().read(0, 5).unwrap(), b"venus");
    // UNREF unmaps before the renderer lets go.
    assert_eq!(
        h.send(0, GpuCommand::ResourceUnref { resource_id: 7 }),
        GpuResponse::OkNoData
    );
    assert!(h.mapped().is_empty());
    assert_eq!(h.dev.resource_memory(), 0);
}

#[test]
fn a_refused_blob_is_not_mapped_and_the_device_keeps_serving() {
    let mut h = harness(
        dmabuf_info("[[exporter]]\nname = \"memfd\"\nneeds_sync = \"yes\"\n"),
        config(),
    );
    h.blob(VENUS_CTX, 7, BLOB_MEM_HOST3D, 4096, vec![]);
    let r = h.send(
        VENUS_CTX,
        GpuCommand::ResourceMapBlob {
            resource_id: 7,
            offset: 0,
        },
    );
    assert_eq!(r, GpuResponse::Err(GpuError::Unspec));
    assert!(h.mapped().is_empty(), "nothing mapped");
    assert!(
        !h.region
            .events()
            .iter()
            .any(|e| matches!(e, ShmemEvent::Mapped { .. })),
        "the frontend was never asked"
    );
    // Still serving, and the blob is still there (and can be destroyed).
    assert_eq!(
        h.send(0, GpuCommand::ResourceUnref { resource_id: 7 }),
        GpuResponse::OkNoData
    );
    assert!(matches!(
        h.send(0, GpuCommand::GetDisplayInfo),
        GpuResponse::OkDisplayInfo(_)
    ));
}

#[test]
fn guest_backed_renderer_blobs_and_what_cannot_be_mapped() {
    let mut h = harness(Box::new(FixedAdvisor::allow(MAP_CACHE_CACHED)), config());
    let entries = vec![MemEntry {
        addr: 0x4000,
        length: 8192,
    }];
    assert_eq!(
        h.blob(VENUS_CTX, 1, BLOB_MEM_HOST3D_GUEST, 8192, entries.clone()),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.blob(VENUS_CTX, 2, BLOB_MEM_GUEST, 8192, entries.clone()),
        GpuResponse::OkNoData
    );
    // Entries shorter than the size, HOST3D with entries, unknown blob_mem.
    assert_eq!(
        h.blob(
            VENUS_CTX,
            3,
            BLOB_MEM_HOST3D_GUEST,
            3 * 4096,
            entries.clone()
        ),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.blob(VENUS_CTX, 3, BLOB_MEM_HOST3D, 4096, entries),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
    assert_eq!(
        h.blob(VENUS_CTX, 3, 9, 4096, vec![]),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
    // The fake exports only HOST3D memory: a guest-backed blob has nothing to map.
    assert_eq!(
        h.send(
            VENUS_CTX,
            GpuCommand::ResourceMapBlob {
                resource_id: 1,
                offset: 0
            }
        ),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
    assert!(h.mapped().is_empty());
    // A 3D resource is not a blob.
    h.send(
        0,
        GpuCommand::ResourceCreate3d {
            resource_id: 4,
            resource: texture(4, 4),
        },
    );
    assert_eq!(
        h.send(
            0,
            GpuCommand::ResourceMapBlob {
                resource_id: 4,
                offset: 0
            }
        ),
        GpuResponse::Err(GpuError::InvalidParameter)
    );
}

#[test]
fn a_renderer_blobs_exported_fd_is_charged_to_the_fd_budget() {
    // One open file for the guest: the first exported blob takes it.
    let mut h = harness(
        Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        DeviceConfig {
            max_fds: 1,
            ..config()
        },
    );
    for id in [7, 8] {
        assert_eq!(
            h.blob(VENUS_CTX, id, BLOB_MEM_HOST3D, 4096, vec![]),
            GpuResponse::OkNoData,
            "creating a renderer blob holds no fd of ours"
        );
    }
    let map = |id, offset| GpuCommand::ResourceMapBlob {
        resource_id: id,
        offset,
    };
    assert_eq!(
        h.send(VENUS_CTX, map(7, 0)),
        GpuResponse::OkMapInfo {
            map_info: MAP_CACHE_WC
        }
    );
    // The second export does not fit: refused before the renderer is asked, nothing mapped.
    assert_eq!(
        h.send(VENUS_CTX, map(8, 0x10000)),
        GpuResponse::Err(GpuError::OutOfMemory)
    );
    assert_eq!(h.mapped(), vec![(0, 4096)]);
    // Unmapping keeps the export (and its fd); destroying the blob gives the fd back.
    assert_eq!(
        h.send(VENUS_CTX, GpuCommand::ResourceUnmapBlob { resource_id: 7 }),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.send(VENUS_CTX, map(8, 0x10000)),
        GpuResponse::Err(GpuError::OutOfMemory)
    );
    assert_eq!(
        h.send(0, GpuCommand::ResourceUnref { resource_id: 7 }),
        GpuResponse::OkNoData
    );
    assert_eq!(
        h.send(VENUS_CTX, map(8, 0x10000)),
        GpuResponse::OkMapInfo {
            map_info: MAP_CACHE_WC
        }
    );
}

#[test]
fn without_virgl_3d_resources_and_transfers_are_refused_naming_the_option() {
    // A renderer serving venus only: RESOURCE_CREATE_3D and the 3D transfers are virgl's,
    // refused with ERR_UNSPEC before the renderer sees them.
    let fake = FakeRenderer::with_capsets(&[CAPSET_VENUS]);
    let control = fake.control();
    let ports = Ports {
        allocator: Box::new(MemfdAllocator::new()),
        mapper: Box::new(FrontendMapper(FrontendRegion::new(16 * MIB))),
        display: Box::new(RecordingDisplay(Arc::new(Mutex::new(Shown::default())))),
        advisor: Box::new(FixedAdvisor::allow(MAP_CACHE_WC)),
        exporter: None,
        channels: None,
        renderer: Some(Box::new(fake)),
    };
    let mut dev = GpuDevice::new(config(), ports);
    dev.ack_features(dev.features());
    let mut h = Harness {
        dev,
        mem: GuestMemory::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)]).unwrap(),
        region: FrontendRegion::new(16 * MIB),
        shown: Arc::new(Mutex::new(Shown::default())),
        _fake: control,
    };
    let r = h.send(
        0,
        GpuCommand::ResourceCreate3d {
            resource_id: 1,
            resource: texture(4, 4),
        },
    );
    assert_eq!(r, GpuResponse::Err(GpuError::Unspec));
    assert_eq!(h.dev.resource_count(), 0);
    assert_eq!(h.dev.resource_memory(), 0);
    let r = h.send(
        0,
        GpuCommand::TransferFromHost3d {
            resource_id: 1,
            transfer: Transfer3d::default(),
        },
    );
    assert_eq!(r, GpuResponse::Err(GpuError::Unspec));
}
