//! Tests against the real library (Mesa's llvmpipe for virgl, lavapipe in the render
//! server for venus). A test that cannot start the renderer it needs says why and returns:
//! that is the only skip, and it names the missing piece.

use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::renderer::RendererThread;

/// virglrenderer has one global state: one renderer at a time in this test binary.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Skips (returns `None`) with a reason, unless `VUG_REQUIRE_RENDERER` is set (CI installs
/// the packages, so there a missing piece is a failure).
fn skip(reason: String) -> Option<VirglRenderer> {
    if std::env::var_os("VUG_REQUIRE_RENDERER").is_some() {
        panic!("VUG_REQUIRE_RENDERER is set but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// A renderer with virgl and/or venus; venus also from a library older than 1.0
/// (`legacy_venus`), so that the render server path is tested with bookworm's 0.10.4 too.
fn start(virgl: bool, venus: bool) -> Option<VirglRenderer> {
    let config = VirglConfig {
        virgl,
        venus,
        legacy_venus: true,
        ..VirglConfig::default()
    };
    if venus && !config.render_server.exists() {
        return skip(format!(
            "{} is missing (Debian: virgl-server)",
            config.render_server.display()
        ));
    }
    match VirglRenderer::new(&config) {
        Ok(r) => Some(r),
        Err(RendererError::Unavailable(e)) => skip(e.to_string()),
        Err(e) => panic!("the library loads but the renderer does not start: {e}"),
    }
}

// virgl protocol (virgl_protocol.h): command header, objects, formats, binds.
const fn cmd0(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}
const CCMD_CREATE_OBJECT: u32 = 1;
const CCMD_SET_FRAMEBUFFER_STATE: u32 = 5;
const CCMD_CLEAR: u32 = 7;
const OBJECT_SURFACE: u32 = 8;
const PIPE_CLEAR_COLOR0: u32 = 1 << 2;
const PIPE_TEXTURE_2D: u32 = 2;
const FORMAT_B8G8R8X8_UNORM: u32 = 2;
const BIND_RENDER_TARGET: u32 = 1 << 1;
const BIND_SAMPLER_VIEW: u32 = 1 << 3;

fn texture(width: u32, height: u32) -> Resource3d {
    Resource3d {
        target: PIPE_TEXTURE_2D,
        format: FORMAT_B8G8R8X8_UNORM,
        bind: BIND_RENDER_TARGET | BIND_SAMPLER_VIEW,
        width,
        height,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    }
}

/// A command stream that clears resource `res` (through surface object `surface`) to
/// `rgba`.
fn clear_stream(res: u32, surface: u32, rgba: [f32; 4]) -> Vec<u8> {
    let mut words = vec![
        cmd0(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 5),
        surface,
        res,
        FORMAT_B8G8R8X8_UNORM,
        0, // level
        0, // first | last layer << 16
        cmd0(CCMD_SET_FRAMEBUFFER_STATE, 0, 3),
        1, // nr_cbufs
        0, // no depth surface
        surface,
        cmd0(CCMD_CLEAR, 0, 8),
        PIPE_CLEAR_COLOR0,
    ];
    words.extend(rgba.iter().map(|c| c.to_bits()));
    words.extend([0, 0, 0]); // depth (f64), stencil
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Whether the renderer's poll fd becomes readable within `ms` milliseconds.
fn readable(r: &VirglRenderer, ms: i64) -> bool {
    let fd = r.poll_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::time::Timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0
}

/// Waits (up to 10 s) on the poll fd until `want` fences were reported.
fn wait_fences(r: &mut VirglRenderer, want: usize) -> Vec<FenceSignal> {
    let mut fences = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fences.len() < want && Instant::now() < deadline {
        readable(r, 100);
        for e in r.poll() {
            if let RendererEvent::Fence(f) = e {
                fences.push(f);
            }
        }
    }
    fences
}

#[test]
fn virgl_capsets_come_from_the_renderer() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    let caps = r.capsets();
    let ids: Vec<u32> = caps.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![CAPSET_VIRGL, CAPSET_VIRGL2], "{caps:?}");
    for c in &caps {
        assert!(c.max_version >= 1 && c.max_size >= 4, "{c:?}");
        let data = r.capset(c.id, c.max_version).unwrap();
        assert_eq!(data.len(), c.max_size as usize);
        // struct virgl_caps_v1 starts with max_version, then the format bitmasks.
        let max_version = u32::from_le_bytes(data[..4].try_into().unwrap());
        assert!(
            max_version >= 1,
            "capset {} reports max_version {max_version}",
            c.id
        );
        assert!(
            data[4..].iter().any(|&b| b != 0),
            "capset {} is empty",
            c.id
        );
    }
    assert!(matches!(
        r.capset(CAPSET_VENUS, 0),
        Err(RendererError::NoCapset(_))
    ));
    assert!(matches!(
        r.capset(CAPSET_VIRGL2, 99),
        Err(RendererError::Invalid(_))
    ));
}

#[test]
fn virgl_context_clears_a_texture_and_reads_it_back() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    r.context_create(1, CAPSET_VIRGL2, b"test").unwrap();
    r.resource_create_3d(10, &texture(64, 32)).unwrap();
    r.context_attach(1, 10);
    r.submit(1, &clear_stream(10, 1, [1.0, 0.0, 0.0, 1.0]))
        .unwrap();
    let info = r.resource_info(10).unwrap();
    assert_eq!((info.width, info.height), (64, 32));
    assert_eq!(info.drm_fourcc, crate::device::ports::fourcc::XRGB8888);
    let pixels = r.read_pixels(10, 64, 32).unwrap();
    assert_eq!(pixels.len(), 64 * 32 * 4);
    for px in pixels.chunks(4) {
        // XRGB8888: bytes B, G, R, X.
        assert_eq!(&px[..3], &[0, 0, 255], "not red: {px:?}");
    }
    r.context_detach(1, 10);
    r.resource_unref(10);
    r.context_destroy(1);
}

#[test]
fn transfers_move_bytes_between_guest_memory_and_a_texture() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // 16x16 pixels, 4 bytes each, written in two pieces to check the scatter list.
    let pattern: Vec<u8> = (0..16 * 16 * 4).map(|i| (i * 7 % 251) as u8).collect();
    mem.write_slice(&pattern[..600], GuestAddress(0x1000))
        .unwrap();
    mem.write_slice(&pattern[600..], GuestAddress(0x8000))
        .unwrap();
    r.context_create(3, CAPSET_VIRGL, b"xfer").unwrap();
    r.resource_create_3d(20, &texture(16, 16)).unwrap();
    r.context_attach(3, 20);
    r.attach_backing(20, &mem, &[(0x1000, 600), (0x8000, 1024 - 600)])
        .unwrap();
    let whole = Transfer3d {
        stride: 64,
        ..Transfer3d::image(16, 16)
    };
    r.transfer_to_host(3, 20, &whole).unwrap();
    // Back into a second resource's backing, through the host texture.
    mem.write_slice(&[0u8; 1024], GuestAddress(0x1000)).unwrap();
    mem.write_slice(&[0u8; 1024], GuestAddress(0x8000)).unwrap();
    r.transfer_from_host(3, 20, &whole).unwrap();
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back[..600], GuestAddress(0x1000))
        .unwrap();
    mem.read_slice(&mut back[600..], GuestAddress(0x8000))
        .unwrap();
    assert_eq!(back, pattern);
    // Backing outside guest memory is refused before the library sees it.
    r.resource_create_3d(21, &texture(16, 16)).unwrap();
    assert!(matches!(
        r.attach_backing(21, &mem, &[(0xff000, 0x2000)]),
        Err(RendererError::OutsideGuestMemory { .. })
    ));
    r.detach_backing(20);
    r.resource_unref(20);
    r.resource_unref(21);
}

#[test]
fn fences_complete_through_the_poll_fd() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    r.context_create(2, CAPSET_VIRGL2, b"fences").unwrap();
    r.resource_create_3d(30, &texture(256, 256)).unwrap();
    r.context_attach(2, 30);
    r.submit(2, &clear_stream(30, 5, [0.0, 1.0, 0.0, 1.0]))
        .unwrap();
    // Ring fences and global fences with 64-bit ids (the library's global ids are 32-bit).
    r.create_fence(2, Some(0), 0x1_0000_0007).unwrap();
    r.create_fence(2, None, 0x2_0000_0001).unwrap();
    r.create_fence(2, None, 0x2_0000_0002).unwrap();
    r.create_fence(2, Some(0), 9).unwrap();
    // virgl contexts have one ring: the library refuses others.
    assert!(r.create_fence(2, Some(1), 10).is_err());
    let fences = wait_fences(&mut r, 4);
    let ring: Vec<_> = fences
        .iter()
        .filter(|f| f.ring.is_some())
        .copied()
        .collect();
    assert_eq!(
        ring,
        vec![
            FenceSignal {
                ctx_id: 2,
                ring: Some(0),
                fence_id: 0x1_0000_0007
            },
            FenceSignal {
                ctx_id: 2,
                ring: Some(0),
                fence_id: 9
            },
        ],
        "ring fences in order, with their 64-bit ids"
    );
    let global: Vec<_> = fences
        .iter()
        .filter(|f| f.ring.is_none())
        .map(|f| f.fence_id)
        .collect();
    assert_eq!(
        global,
        vec![0x2_0000_0001, 0x2_0000_0002],
        "global fences in order"
    );
    // Nothing more, and the poll fd is quiet.
    assert!(r.poll().is_empty());
    assert!(
        !readable(&r, 50),
        "poll fd still readable after everything was reported"
    );
}

#[test]
fn malformed_virgl_streams_are_refused_and_the_renderer_keeps_working() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    r.context_create(4, CAPSET_VIRGL2, b"hostile").unwrap();
    r.resource_create_3d(40, &texture(8, 8)).unwrap();
    r.context_attach(4, 40);
    // Unaligned length: caught before the library.
    assert!(matches!(
        r.submit(4, &[1, 2, 3]),
        Err(RendererError::Invalid(_))
    ));
    // A command whose length runs past the end, an unknown command, a surface on a
    // resource that does not exist, a clear without framebuffer: none may crash.
    let streams: Vec<Vec<u32>> = vec![
        vec![cmd0(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 0xffff)],
        vec![cmd0(0xff, 0, 1), 0],
        vec![
            cmd0(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 5),
            9,
            999,
            FORMAT_B8G8R8X8_UNORM,
            0,
            0,
        ],
        vec![
            cmd0(CCMD_CLEAR, 0, 8),
            PIPE_CLEAR_COLOR0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ],
        vec![cmd0(CCMD_SET_FRAMEBUFFER_STATE, 0, 3), 1, 0, 12345],
    ];
    for words in streams {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let _ = r.submit(4, &bytes);
    }
    // Submitting to a context that does not exist fails.
    assert!(r.submit(77, &clear_stream(40, 1, [0.0; 4])).is_err());
    // Still renders (a context whose stream went bad may be marked dead: use a new one).
    r.context_create(5, CAPSET_VIRGL2, b"after").unwrap();
    r.context_attach(5, 40);
    r.submit(5, &clear_stream(40, 2, [0.0, 0.0, 1.0, 1.0]))
        .unwrap();
    let px = r.read_pixels(40, 8, 8).unwrap();
    assert_eq!(&px[..3], &[255, 0, 0]);
}

#[test]
fn reset_forgets_contexts_and_resources() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
    r.context_create(6, CAPSET_VIRGL2, b"reset").unwrap();
    r.resource_create_3d(60, &texture(8, 8)).unwrap();
    r.attach_backing(60, &mem, &[(0, 256)]).unwrap();
    r.reset();
    assert!(r.resource_info(60).is_err());
    assert!(r.submit(6, &clear_stream(60, 1, [0.0; 4])).is_err());
    // Ids can be used again.
    r.context_create(6, CAPSET_VIRGL2, b"again").unwrap();
    r.resource_create_3d(60, &texture(8, 8)).unwrap();
    r.attach_backing(60, &mem, &[(0, 256)]).unwrap();
}

/// QEMU 10 sends RESET_DEVICE at every boot: fences after a reset must still wake the poll
/// fd (the device sleeps on it; nothing else polls the renderer). `virgl_renderer_reset`
/// stopped the library's fence thread for good, which this caught.
#[test]
fn fences_after_a_reset_still_wake_the_poll_fd() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    for round in 0..3u32 {
        r.reset();
        let ctx = 2 + round;
        let res = 40 + round;
        r.context_create(ctx, CAPSET_VIRGL2, b"after-reset")
            .unwrap();
        r.resource_create_3d(res, &texture(64, 64)).unwrap();
        r.context_attach(ctx, res);
        r.submit(ctx, &clear_stream(res, 1, [1.0, 0.0, 0.0, 1.0]))
            .unwrap();
        r.create_fence(ctx, None, u64::from(round) + 1).unwrap();
        r.create_fence(ctx, Some(0), u64::from(round) + 100)
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && Instant::now() < deadline {
            // Only the poll fd may say when to look: no polling on a timer here.
            if !readable(&r, 10_000) {
                break;
            }
            got.extend(r.poll().into_iter().filter_map(|e| match e {
                RendererEvent::Fence(f) => Some((f.ring, f.fence_id)),
                _ => None,
            }));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                (None, u64::from(round) + 1),
                (Some(0), u64::from(round) + 100)
            ],
            "after reset {}: both fences reported through the poll fd",
            round + 1
        );
    }
}

#[test]
fn a_second_renderer_in_the_process_is_refused() {
    let _g = serial();
    let Some(_r) = start(true, false) else { return };
    match VirglRenderer::new(&VirglConfig {
        venus: false,
        ..VirglConfig::default()
    }) {
        Err(RendererError::Start(msg)) => assert!(msg.contains("already"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_missing_library_is_a_load_error_naming_the_package() {
    let _g = serial();
    let err = VirglRenderer::new(&VirglConfig {
        library: "/nonexistent/libvirglrenderer.so.1".into(),
        ..VirglConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, RendererError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("libvirglrenderer1"), "{err}");
}

#[test]
fn venus_capset_comes_from_the_render_server() {
    let _g = serial();
    let Some(mut r) = start(false, true) else {
        return;
    };
    let caps = r.capsets();
    let venus = caps
        .iter()
        .find(|c| c.id == CAPSET_VENUS)
        .unwrap_or_else(|| panic!("no venus capset: {caps:?}"));
    let data = r.capset(CAPSET_VENUS, venus.max_version).unwrap();
    // struct virgl_renderer_capset_venus (venus_hw.h): wire_format_version,
    // vk_xml_version, two extension spec versions, supports_blob_id_0 (set when contexts
    // run in the render server), vk_extension_mask1[32], allow_vk_wait_syncs,
    // supports_multiple_timelines.
    let word = |i: usize| u32::from_le_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(
        word(1) >> 22,
        1,
        "vk_xml_version {:#x} is not Vulkan 1.x",
        word(1)
    );
    assert!(
        word(3) >= 1,
        "VK_MESA_venus_protocol spec version {}",
        word(3)
    );
    assert_eq!(
        word(4),
        1,
        "supports_blob_id_0: contexts are not in the render server"
    );
    assert_eq!(word(5) & 1, 1, "extension mask not marked valid");
    assert_eq!(word(38), 1, "supports_multiple_timelines");
    r.context_create(1, CAPSET_VENUS, b"venus").unwrap();
    r.create_fence(1, Some(0), 42).unwrap();
    let fences = wait_fences(&mut r, 1);
    assert_eq!(
        fences,
        vec![FenceSignal {
            ctx_id: 1,
            ring: Some(0),
            fence_id: 42
        }]
    );
    r.context_destroy(1);
}

#[test]
fn a_lost_render_server_is_reported_and_virgl_keeps_working() {
    let _g = serial();
    let Some(mut r) = start(true, true) else {
        return;
    };
    r.context_create(1, CAPSET_VENUS, b"venus").unwrap();
    let pid = r.server.as_ref().unwrap().child.id();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lost = None;
    while lost.is_none() && Instant::now() < deadline {
        readable(&r, 100);
        lost = r
            .poll()
            .into_iter()
            .find(|e| matches!(e, RendererEvent::RenderServerLost(_)));
    }
    assert!(lost.is_some(), "the render server's death was not reported");
    assert!(r.context_create(2, CAPSET_VENUS, b"venus").is_err());
    r.context_create(3, CAPSET_VIRGL2, b"virgl").unwrap();
    r.resource_create_3d(9, &texture(4, 4)).unwrap();
    r.context_attach(3, 9);
    r.submit(3, &clear_stream(9, 1, [0.0, 1.0, 0.0, 1.0]))
        .unwrap();
    assert_eq!(&r.read_pixels(9, 4, 4).unwrap()[..3], &[0, 255, 0]);
    let _ = r.poll_fd().as_fd();
}

#[test]
fn a_renderer_thread_serves_other_threads_and_wakes_them_on_fences() {
    let _g = serial();
    if start(true, false).is_none() {
        return;
    }
    let mut r = RendererThread::spawn(|| {
        let config = VirglConfig {
            venus: false,
            ..VirglConfig::default()
        };
        Ok(Box::new(VirglRenderer::new(&config)?) as Box<dyn Renderer>)
    })
    .unwrap();
    assert_eq!(r.name(), "virglrenderer");
    assert!(r.capsets().iter().any(|c| c.id == CAPSET_VIRGL2));
    // The handle is Send: drive it from yet another thread.
    let pixels = std::thread::spawn(move || {
        r.context_create(1, CAPSET_VIRGL2, b"thread").unwrap();
        r.resource_create_3d(5, &texture(16, 16)).unwrap();
        r.context_attach(1, 5);
        r.submit(1, &clear_stream(5, 1, [0.0, 1.0, 0.0, 1.0]))
            .unwrap();
        r.create_fence(1, Some(0), 77).unwrap();
        let fd = r.poll_fd().try_clone_to_owned().unwrap();
        let mut fences = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fences.is_empty() && Instant::now() < deadline {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::time::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            fences.extend(r.poll());
        }
        assert_eq!(
            fences,
            vec![RendererEvent::Fence(FenceSignal {
                ctx_id: 1,
                ring: Some(0),
                fence_id: 77
            })]
        );
        r.read_pixels(5, 16, 16).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(&pixels[..4], &[0, 255, 0, 255]);
    // A renderer that cannot start reports why, and no thread is left behind.
    let err = RendererThread::spawn(|| Err(RendererError::Start("no".into()))).unwrap_err();
    assert!(matches!(err, RendererError::Start(_)));
}

#[test]
fn guest_blobs_pin_their_backing_and_have_no_fd_to_export() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let guest = |size| BlobRequest {
        ctx_id: 0,
        blob_mem: virtio_bindings::virtio_gpu::VIRTIO_GPU_BLOB_MEM_GUEST,
        blob_flags: virtio_bindings::virtio_gpu::VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE,
        blob_id: 0,
        size,
    };
    // Less backing than the blob's size: refused before the library sees it.
    assert!(matches!(
        r.resource_create_blob(7, &guest(8192), Some((&mem, &[(0x2000, 4096)]))),
        Err(RendererError::Invalid(_))
    ));
    r.resource_create_blob(
        7,
        &guest(8192),
        Some((&mem, &[(0x2000, 4096), (0x9000, 4096)])),
    )
    .unwrap();
    // The same id again is refused (by our bookkeeping or the library).
    assert!(r
        .resource_create_blob(7, &guest(4096), Some((&mem, &[(0x2000, 4096)])))
        .is_err());
    // Guest memory has no host fd: nothing to export for mapping.
    assert!(r.export_blob(7).is_err());
    r.resource_unref(7);
    // The id is free again.
    r.resource_create_blob(7, &guest(4096), Some((&mem, &[(0x2000, 4096)])))
        .unwrap();
    r.resource_unref(7);
}

#[test]
fn scanouts_export_a_dmabuf_with_a_render_node_and_read_back_without() {
    let _g = serial();
    let Some(mut r) = start(true, false) else {
        return;
    };
    r.context_create(1, CAPSET_VIRGL2, b"scanout").unwrap();
    let mut t = texture(64, 48);
    t.bind |= 1 << 18 | 1 << 20; // VIRGL_BIND_SCANOUT | VIRGL_BIND_SHARED
    r.resource_create_3d(3, &t).unwrap();
    r.context_attach(1, 3);
    r.submit(1, &clear_stream(3, 1, [1.0, 1.0, 0.0, 1.0]))
        .unwrap();
    let render_node = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        })
        .unwrap_or(false);
    match r.export_scanout(3) {
        Ok(export) => {
            assert!(render_node, "a dma-buf export without a render node");
            assert_eq!((export.width, export.height), (64, 48));
            assert!(export.stride >= 64 * 4);
            let id = dmabuf_info::identify::identify(export.fd.as_fd()).unwrap();
            assert_eq!(id.kind, dmabuf_info::BufferKind::DmaBuf, "{id:?}");
        }
        // llvmpipe without a render node (this machine) has no dma-buf to give: the
        // device reads the pixels back instead.
        Err(RendererError::Failed(_)) => assert!(!render_node, "no export with a render node"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    let pixels = r.read_pixels(3, 64, 48).unwrap();
    assert!(
        pixels.chunks(4).all(|p| p[..3] == [0, 255, 255]),
        "not yellow"
    );
}

#[test]
fn venus_is_offered_by_default_only_where_guests_accept_it() {
    let _g = serial();
    if start(true, false).is_none() {
        return;
    }
    let r = VirglRenderer::new(&VirglConfig::default()).unwrap();
    let old = !r.instance.library().has_log_callback();
    let venus = r.capsets().iter().any(|c| c.id == CAPSET_VENUS);
    if old {
        // 0.10.4: wire format 0, which Mesa 25's venus refuses: withheld, with the reason.
        assert!(!venus, "venus offered from a pre-1.0 library");
        let why = r.venus_withheld().unwrap_or_default();
        assert!(why.contains("wire format 0"), "{why}");
        assert!(
            r.server.is_none(),
            "a render server was started for nothing"
        );
    } else {
        assert!(
            venus,
            "venus withheld from a 1.x library: {:?}",
            r.venus_withheld()
        );
        assert_eq!(r.venus_withheld(), None);
    }
    // Virgl is served either way.
    assert!(r.capsets().iter().any(|c| c.id == CAPSET_VIRGL2));
}

#[test]
fn venus_fences_are_reported_beside_virgl_contexts_and_after_id_reuse() {
    let _g = serial();
    let Some(mut r) = start(true, true) else {
        return;
    };
    // The sequence of a guest session: a virgl context, then venus and virgl contexts
    // that reuse an id.
    r.context_create(1, CAPSET_VIRGL2, b"eglinfo").unwrap();
    for (round, fence) in [(0u64, 50u64), (1, 60)] {
        r.context_create(2, CAPSET_VIRGL2, b"kmscube").unwrap();
        r.context_destroy(2);
        r.context_create(2, CAPSET_VENUS, b"vulkan").unwrap();
        r.create_fence(2, Some(0), fence).unwrap();
        assert!(readable(&r, 5000), "round {round}: the poll fd never woke");
        let fences = wait_fences(&mut r, 1);
        assert_eq!(
            fences,
            vec![FenceSignal {
                ctx_id: 2,
                ring: Some(0),
                fence_id: fence
            }],
            "round {round}"
        );
        r.context_destroy(2);
    }
    r.context_destroy(1);
}

#[test]
fn maps_lines_parse() {
    let line =
        "7f12a0000000-7f12a0201000 rw-s 00001000 00:01 4242   /memfd:llvmpipe memory fd (deleted)";
    assert_eq!(
        parse_maps_line(line),
        Some(MapsLine {
            start: 0x7f12_a000_0000,
            end: 0x7f12_a020_1000,
            offset: 0x1000,
            dev: (0, 1),
            inode: 4242,
        })
    );
    assert_eq!(parse_maps_line("garbage"), None);
}

#[test]
fn an_address_in_a_file_mapping_gives_its_offset_in_that_file_only() {
    // A file-backed mapping of this process (the test binary or a library).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let (m, path) = maps
        .lines()
        .find_map(|l| {
            let m = parse_maps_line(l)?;
            let path = l.split_ascii_whitespace().nth(5)?;
            (m.inode != 0 && path.starts_with('/') && m.end - m.start > 64)
                .then(|| (m, path.to_string()))
        })
        .expect("a file-backed mapping");
    let file = std::fs::File::open(&path).unwrap();
    assert_eq!(
        offset_in_fd(file.as_fd(), m.start + 40),
        Ok(m.offset + 40),
        "{path}"
    );
    // Another file at the same address: refused, not guessed.
    let other = std::fs::File::open("/proc/self/maps").unwrap();
    let err = offset_in_fd(other.as_fd(), m.start + 40).unwrap_err();
    assert!(err.contains("not of the exported fd"), "{err}");
    // No mapping at all.
    assert!(offset_in_fd(file.as_fd(), 8).is_err());
}
