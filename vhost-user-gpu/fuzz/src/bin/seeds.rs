//! Writes the seed corpus: the command sequences the conformance cases send (built with the
//! conformance frontend's own command builders), into `corpus/decode`, `corpus/device` and
//! `corpus/cross_domain` under the directory given (default: this crate's `corpus/`).
//!
//! `cargo run --release --bin seeds [DIR]`

use std::path::PathBuf;

use vhost_user_gpu_fuzz::{op, Input};
use vug_conformance::cross_domain as xd;
use vug_conformance::gpu::{self, format, BlobLayout, MemEntry, Rect};

/// All features (byte 1 of a device input).
const ALL: u8 = 0x1f;
const RING_GPA: u64 = 0x1000;
const BACKING_GPA: u64 = 0x4000;
/// In the second guest RAM region.
const HIGH_GPA: u64 = 0x80000;

fn b(c: gpu::Cmd) -> Vec<u8> {
    c.into_bytes()
}

/// The 2D path: create, attach, transfer, scanout, flush, cursor, detach, unref.
fn two_d() -> Vec<Vec<u8>> {
    let r = Rect::sized(16, 8);
    let entries = [
        MemEntry {
            addr: BACKING_GPA,
            length: 256,
        },
        MemEntry {
            addr: HIGH_GPA,
            length: 256,
        },
    ];
    vec![
        b(gpu::get_display_info()),
        b(gpu::get_edid(0)),
        b(gpu::resource_create_2d(1, format::B8G8R8X8_UNORM, 16, 8)),
        b(gpu::resource_attach_backing(1, &entries)),
        b(gpu::transfer_to_host_2d(1, r, 0)),
        b(gpu::set_scanout(0, 1, r)),
        b(gpu::resource_flush(1, r).fence(7, Some(1))),
        b(gpu::resource_assign_uuid(1)),
        b(gpu::resource_detach_backing(1)),
        b(gpu::set_scanout(0, 0, Rect::sized(0, 0))),
        b(gpu::resource_unref(1)),
    ]
}

fn cursor() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let ctrl = vec![
        b(gpu::resource_create_2d(2, format::B8G8R8A8_UNORM, 64, 64)),
        b(gpu::resource_attach_backing(
            2,
            &[MemEntry {
                addr: 0x10000,
                length: 64 * 64 * 4,
            }],
        )),
        b(gpu::transfer_to_host_2d(2, Rect::sized(64, 64), 0)),
    ];
    let cur = vec![
        b(gpu::update_cursor(0, 10, 10, 2, (1, 2))),
        b(gpu::move_cursor(0, 20, 30, 2)),
        b(gpu::update_cursor(0, 0, 0, 0, (0, 0))),
    ];
    (ctrl, cur)
}

/// GUEST blob shown with SET_SCANOUT_BLOB.
fn guest_blob() -> Vec<Vec<u8>> {
    let l = BlobLayout {
        width: 16,
        height: 16,
        format: format::B8G8R8X8_UNORM,
        stride: 64,
        offset: 0,
    };
    vec![
        b(gpu::resource_create_blob(
            0,
            3,
            gpu::BLOB_MEM_GUEST,
            gpu::BLOB_FLAG_SHAREABLE,
            0,
            4096,
            &[MemEntry {
                addr: BACKING_GPA,
                length: 4096,
            }],
        )),
        b(gpu::set_scanout_blob(0, 3, Rect::sized(16, 16), l)),
        b(gpu::transfer_to_host_2d(3, Rect::sized(16, 16), 0)),
        b(gpu::resource_flush(3, Rect::sized(16, 16))),
        b(gpu::set_scanout(0, 0, Rect::sized(0, 0))),
        b(gpu::resource_unref(3)),
    ]
}

/// Cross-domain context, query ring, image requirements, HOST3D blob, map, unmap, unref.
fn cross_domain() -> Vec<Vec<u8>> {
    let ctx = 1;
    let mut stream = xd::init(10, xd::RING_NONE, 0);
    stream.extend(xd::get_image_requirements(
        64,
        64,
        xd::DRM_FORMAT_ARGB8888,
        0,
    ));
    vec![
        b(gpu::get_capset_info(0)),
        b(gpu::get_capset(gpu::CAPSET_CROSS_DOMAIN, 0)),
        b(gpu::ctx_create(ctx, gpu::CAPSET_CROSS_DOMAIN, "fuzz")),
        b(gpu::resource_create_blob(
            ctx,
            10,
            gpu::BLOB_MEM_GUEST,
            gpu::BLOB_FLAG_SHAREABLE,
            0,
            4096,
            &[MemEntry {
                addr: RING_GPA,
                length: 4096,
            }],
        )),
        b(gpu::ctx_attach_resource(ctx, 10)),
        b(gpu::submit_3d(ctx, &stream)),
        // blob_id 2 is the first one handed out; 64x64 ARGB8888 is 16 KiB.
        b(gpu::resource_create_blob(
            ctx,
            11,
            gpu::BLOB_MEM_HOST3D,
            gpu::BLOB_FLAG_MAPPABLE | gpu::BLOB_FLAG_SHAREABLE,
            2,
            16384,
            &[],
        )),
        b(gpu::resource_map_blob(ctx, 11, 0x10000)),
        b(gpu::set_scanout_blob(
            0,
            11,
            Rect::sized(64, 48),
            BlobLayout {
                width: 64,
                height: 48,
                format: format::B8G8R8A8_UNORM,
                stride: 256,
                offset: 0,
            },
        )),
        b(gpu::resource_flush(11, Rect::sized(64, 48))),
        b(gpu::resource_unmap_blob(ctx, 11)),
        b(gpu::ctx_detach_resource(ctx, 10)),
        b(gpu::resource_unref(11)),
        b(gpu::ctx_destroy(ctx)),
    ]
}

/// Refused 3D commands.
fn three_d() -> Vec<Vec<u8>> {
    vec![
        b(gpu::ctx_create(2, 0, "virgl")),
        b(gpu::resource_create_3d(
            2,
            20,
            format::B8G8R8X8_UNORM,
            16,
            16,
        )),
        b(gpu::transfer_to_host_3d(2, 20, gpu::Box3d::default(), 0, 0)),
        b(gpu::transfer_from_host_3d(
            2,
            20,
            gpu::Box3d::default(),
            0,
            0,
        )),
        b(gpu::submit_3d(2, &[0; 16])),
    ]
}

fn device_input(ctrl: &[Vec<u8>]) -> Input {
    ctrl.iter().fold(Input::new(0, ALL), |i, c| i.control(c))
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let (cursor_ctrl, cursor_cmds) = cursor();
    let groups = [
        two_d(),
        guest_blob(),
        cross_domain(),
        three_d(),
        cursor_ctrl.clone(),
    ];

    let decode = dir.join("decode");
    std::fs::create_dir_all(&decode)?;
    for (n, cmd) in groups
        .iter()
        .flatten()
        .chain(cursor_cmds.iter())
        .enumerate()
    {
        std::fs::write(decode.join(format!("seed-{n:03}")), cmd)?;
    }

    let device = dir.join("device");
    std::fs::create_dir_all(&device)?;
    let pixels: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let inputs = vec![
        device_input(&two_d()).guest_write(BACKING_GPA as u32, &pixels),
        device_input(&guest_blob()),
        device_input(&cross_domain()),
        device_input(&three_d()),
        cursor_cmds
            .iter()
            .fold(device_input(&cursor_ctrl), |i, c| i.cursor(c)),
        // Mapping refused by the advisor, map failure injected, reset while mapped.
        device_input(&cross_domain()[..8]).op(op::RESET),
        Input::new(1, ALL)
            .op(op::FAIL_MAP)
            .control(&b(gpu::get_display_info())),
        device_input(&cross_domain()[..7])
            .op(op::FAIL_MAP)
            .control(&b(gpu::resource_map_blob(1, 11, 0)))
            .control(&b(gpu::resource_map_blob(1, 11, 0)))
            .op(op::FAIL_UNMAP)
            .control(&b(gpu::resource_unmap_blob(1, 11)))
            .control(&b(gpu::resource_unref(11))),
        // No features at all, mapper unavailable.
        Input::new(2, 0).control(&b(gpu::get_edid(0))),
        // Frontend shared memory torn down, then mapping attempted.
        device_input(&cross_domain()[..7])
            .op(op::SHMEM)
            .op(0) // the u8 of SHMEM: not set up
            .control(&b(gpu::resource_map_blob(1, 11, 0))),
    ];
    for (i, input) in inputs.into_iter().enumerate() {
        std::fs::write(device.join(format!("seed-{i:03}")), input.into_bytes())?;
    }

    let xdir = dir.join("cross_domain");
    std::fs::create_dir_all(&xdir)?;
    let mut stream = xd::init(10, xd::RING_NONE, 0);
    stream.extend(xd::get_image_requirements(
        64,
        64,
        xd::DRM_FORMAT_XRGB8888,
        0,
    ));
    std::fs::write(xdir.join("seed-000"), &stream)?;
    std::fs::write(xdir.join("seed-001"), xd::init(1, 2, 1))?;
    std::fs::write(xdir.join("seed-002"), [3u8, 0, 8, 0, 0, 0, 0, 0])?;
    println!("seed corpus written to {}", dir.display());
    Ok(())
}
