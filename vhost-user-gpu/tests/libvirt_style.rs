//! The backend started exactly as libvirt starts a vhost-user GPU backend
//! (`src/qemu/qemu_vhost_user_gpu.c`): it reads the JSON descriptor, asks the binary
//! `--print-capabilities`, creates a connected socket pair, and runs the binary with
//! `--fd=N` on one end (plus `--render-node=PATH` when the capabilities list `render-node`);
//! QEMU gets the other end. Here our test frontend (vug-conformance) plays QEMU on that other
//! end and runs a device session: display modes, a 2D resource shown on the display, and,
//! with a host-visible region, a HOST3D blob mapped. When the frontend closes the connection
//! the backend exits with status 0, as libvirt expects of a helper whose VM stopped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vug_conformance::cross_domain;
use vug_conformance::frontend::FrontendOptions;
use vug_conformance::gpu::{self, format, ty, MemEntry, Rect};
use vug_conformance::{BackendSpec, Frontend, Peer};

const BINARY: &str = env!("CARGO_BIN_EXE_vhost-user-gpu");

/// What libvirt reads from the descriptor and the binary: the command line it runs the
/// backend with (after `--fd=N`).
fn libvirt_arguments() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("share/60-dmabuf-virtio-gpu.json");
    let text = std::fs::read_to_string(&path).expect("the descriptor");
    let descriptor: serde_json::Value = serde_json::from_str(&text).expect("descriptor JSON");
    assert_eq!(descriptor["type"], "gpu", "{}", path.display());
    let binary = descriptor["binary"]
        .as_str()
        .expect("descriptor names a binary");
    assert_eq!(
        Path::new(binary).file_name(),
        Path::new(BINARY).file_name(),
        "the descriptor names another program"
    );
    let out = Command::new(BINARY)
        .arg("--print-capabilities")
        .output()
        .expect("run --print-capabilities");
    assert!(out.status.success());
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("capabilities");
    assert_eq!(caps["type"], "gpu");
    let features: Vec<&str> = caps["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    let mut args = Vec::new();
    if features.contains(&"render-node") {
        // libvirt picks the host's first render node when the domain names none.
        let node = std::fs::read_dir("/dev/dri")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("renderD"))
            })
            .min()
            .expect("render-node listed but the host has no render node");
        args.push(format!("--render-node={}", node.display()));
    }
    args
}

fn ctrl(fe: &mut Frontend, what: &str, cmd: gpu::Cmd, want: u32) -> gpu::Resp {
    let r = fe
        .ctrl(cmd)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", fe.backend_log()));
    assert_eq!(
        r.ty,
        want,
        "{what}: {} instead of {}\n{}",
        ty::name(r.ty),
        ty::name(want),
        fe.backend_log()
    );
    r
}

#[test]
fn started_as_libvirt_does_it_serves_the_connected_socket_and_exits_when_it_closes() {
    let spec = BackendSpec {
        args: libvirt_arguments(),
        ..BackendSpec::new(BINARY, Peer::Ours)
    };
    let mut fe = Frontend::spawn_connected(spec, FrontendOptions::default())
        .expect("backend started on a connected socket pair");
    assert!(
        fe.backend_log()
            .contains("serving the frontend connected on inherited fd 3"),
        "{}",
        fe.backend_log()
    );
    ctrl(
        &mut fe,
        "GET_DISPLAY_INFO",
        gpu::get_display_info(),
        ty::OK_DISPLAY_INFO,
    );

    // A 2D resource reaches the display channel.
    let (w, h) = (16u32, 8u32);
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| [i as u8, (i * 3) as u8, (i * 7) as u8, 0xff])
        .collect();
    let gpa = fe
        .ram()
        .alloc(pixels.len() as u64, 4096)
        .expect("guest RAM");
    fe.ram().write(gpa, &pixels).expect("write guest RAM");
    ctrl(
        &mut fe,
        "RESOURCE_CREATE_2D",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, w, h),
        ty::OK_NODATA,
    );
    ctrl(
        &mut fe,
        "RESOURCE_ATTACH_BACKING",
        gpu::resource_attach_backing(
            1,
            &[MemEntry {
                addr: gpa,
                length: pixels.len() as u32,
            }],
        ),
        ty::OK_NODATA,
    );
    for (what, cmd) in [
        (
            "TRANSFER_TO_HOST_2D",
            gpu::transfer_to_host_2d(1, Rect::sized(w, h), 0),
        ),
        ("SET_SCANOUT", gpu::set_scanout(0, 1, Rect::sized(w, h))),
        ("RESOURCE_FLUSH", gpu::resource_flush(1, Rect::sized(w, h))),
    ] {
        ctrl(&mut fe, what, cmd, ty::OK_NODATA);
    }
    let expected: Vec<u32> = pixels
        .chunks(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
        .collect();
    let display = fe.display().expect("display channel");
    assert!(
        display.wait_for(Duration::from_secs(10), |st| st
            .scanouts
            .get(&0)
            .is_some_and(|s| s
                .pixels
                .iter()
                .map(|p| p & 0xff_ffff)
                .eq(expected.iter().copied()))),
        "the display never showed the resource\n{}",
        fe.backend_log()
    );

    // With a host-visible region, a HOST3D blob from a cross-domain context maps into it.
    if let Some(region_size) = fe.shmem().map(|r| r.size()) {
        assert!(region_size > 0);
        ctrl(
            &mut fe,
            "CTX_CREATE (cross-domain)",
            gpu::ctx_create(1, gpu::CAPSET_CROSS_DOMAIN, "libvirt-style"),
            ty::OK_NODATA,
        );
        let ring = fe.ram().alloc(4096, 4096).expect("guest RAM");
        let ring_entry = [MemEntry {
            addr: ring,
            length: 4096,
        }];
        ctrl(
            &mut fe,
            "CREATE_BLOB (GUEST query ring)",
            gpu::resource_create_blob(
                1,
                100,
                gpu::BLOB_MEM_GUEST,
                gpu::BLOB_FLAG_MAPPABLE,
                0,
                4096,
                &ring_entry,
            ),
            ty::OK_NODATA,
        );
        ctrl(
            &mut fe,
            "CTX_ATTACH_RESOURCE",
            gpu::ctx_attach_resource(1, 100),
            ty::OK_NODATA,
        );
        ctrl(
            &mut fe,
            "CROSS_DOMAIN_CMD_INIT",
            gpu::submit_3d(1, &cross_domain::init(100, cross_domain::RING_NONE, 0)),
            ty::OK_NODATA,
        );
        let query =
            cross_domain::get_image_requirements(64, 64, cross_domain::DRM_FORMAT_XRGB8888, 0);
        ctrl(
            &mut fe,
            "GET_IMAGE_REQUIREMENTS",
            gpu::submit_3d(1, &query).fence(1, Some(cross_domain::QUERY_RING)),
            ty::OK_NODATA,
        );
        let mut answer = vec![0u8; cross_domain::IMAGE_REQUIREMENTS_SIZE];
        fe.ram()
            .read(ring, &mut answer)
            .expect("read the query ring");
        let reqs = cross_domain::ImageRequirements::parse(&answer).expect("image requirements");
        ctrl(
            &mut fe,
            "CREATE_BLOB (HOST3D)",
            gpu::resource_create_blob(
                1,
                3,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                u64::from(reqs.blob_id),
                reqs.size,
                &[],
            ),
            ty::OK_NODATA,
        );
        ctrl(
            &mut fe,
            "RESOURCE_MAP_BLOB",
            gpu::resource_map_blob(1, 3, 0),
            ty::OK_MAP_INFO,
        );
        let mapped = fe.shmem().map(|r| r.mappings()).unwrap_or_default();
        assert!(
            mapped.iter().any(|&(o, l)| o == 0 && l >= reqs.size),
            "the blob was not mapped: {mapped:?}\n{}",
            fe.backend_log()
        );
    }

    // QEMU goes away: the backend ends, successfully.
    fe.disconnect();
    let status = fe
        .wait_backend_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the backend still runs\n{}", fe.backend_log()));
    assert!(status.success(), "{status}\n{}", fe.backend_log());
}
