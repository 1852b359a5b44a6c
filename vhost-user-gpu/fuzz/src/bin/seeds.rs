//! Writes the seed corpus: the command sequences the conformance cases send (built with the
//! conformance frontend's own command builders), into `corpus/decode`, `corpus/device` and
//! `corpus/cross_domain` under the directory given (default: this crate's `corpus/`); and
//! well-formed virgl and venus command streams, written here from the protocols'
//! definitions, into `corpus/renderer`.
//!
//! `cargo run --release --bin seeds [DIR]`

use std::path::PathBuf;

use vhost_user_gpu_fuzz::renderer::{
    ccmd, clear_stream, cmd0, object, op as rop, words, RendererInput, VIRGL_FORMAT_B8G8R8X8,
};
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
    let rdir = dir.join("renderer");
    std::fs::create_dir_all(&rdir)?;
    for (i, input) in renderer_inputs().into_iter().enumerate() {
        std::fs::write(rdir.join(format!("seed-{i:03}")), input.into_bytes())?;
    }
    println!("seed corpus written to {}", dir.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Renderer seeds: virgl command streams (virglrenderer's virgl_protocol.h, Gallium's
// p_defines.h and TGSI text) and a venus one (Mesa's venus-protocol defines).

/// Contexts of the renderer harness: 0 virgl2, 1 virgl, 2 venus.
const CTX_VIRGL2: u8 = 0;
const CTX_VIRGL: u8 = 1;
const CTX_VENUS: u8 = 2;
/// Fence byte: global timeline, ring 0.
const FENCE_GLOBAL: u8 = 1;
const FENCE_RING0: u8 = 2;
/// RESOURCE op bind byte (shifted left by one): render target + sampler view; vertex buffer.
const BIND_RT_SAMPLER: u8 = 0b101;
const BIND_VERTEX_BUFFER: u8 = 0b1000;
const TARGET_BUFFER: u8 = 0;
const TARGET_2D: u8 = 2;
const FORMAT_R8_UNORM: u8 = 64;
const FORMAT_R32G32B32A32_FLOAT: u32 = 31;

/// A TGSI text shader object (`type` 0 vertex, 1 fragment).
fn shader(handle: u32, kind: u32, text: &str) -> Vec<u32> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    let len = bytes.len() as u32;
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    let body: Vec<u32> = bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut w = vec![
        cmd0(ccmd::CREATE_OBJECT, object::SHADER, 5 + body.len() as u32),
        handle,
        kind,
        len, // offset field: the whole text in this command
        300, // number of TGSI tokens to parse into
        0,   // no stream output
    ];
    w.extend(body);
    w.extend([cmd0(ccmd::BIND_SHADER, 0, 2), handle, kind]);
    w
}

/// A red triangle over the whole 16x16 render target `rt` (surface 1), from vertex buffer
/// `vb`: shaders, vertex elements, blend, depth-stencil-alpha, rasterizer, viewport, vertex
/// data (inline write), draw.
fn draw_stream(rt: u32, vb: u32) -> Vec<u8> {
    let f = |v: f32| v.to_bits();
    let mut w = Vec::new();
    w.extend(shader(
        10,
        0,
        "VERT\nDCL IN[0]\nDCL OUT[0], POSITION\n  0: MOV OUT[0], IN[0]\n  1: END\n",
    ));
    w.extend(shader(
        11,
        1,
        "FRAG\nPROPERTY FS_COLOR0_WRITES_ALL_CBUFS 1\nDCL OUT[0], COLOR\n\
         IMM[0] FLT32 {    1.0000,     0.0000,     0.0000,     1.0000}\n\
         \x20 0: MOV OUT[0], IMM[0]\n  1: END\n",
    ));
    // One element: a vec4 at offset 0 of vertex buffer 0.
    w.extend([
        cmd0(ccmd::CREATE_OBJECT, object::VERTEX_ELEMENTS, 5),
        12,
        0,
        0,
        0,
        FORMAT_R32G32B32A32_FLOAT,
        cmd0(ccmd::BIND_OBJECT, object::VERTEX_ELEMENTS, 1),
        12,
    ]);
    // Blend: colour mask RGBA on buffer 0.
    w.extend([
        cmd0(ccmd::CREATE_OBJECT, object::BLEND, 11),
        13,
        0,
        0,
        0xf << 27,
    ]);
    w.extend([0; 7]);
    w.extend([cmd0(ccmd::BIND_OBJECT, object::BLEND, 1), 13]);
    w.extend([
        cmd0(ccmd::CREATE_OBJECT, object::DSA, 5),
        14,
        0,
        0,
        0,
        0,
        cmd0(ccmd::BIND_OBJECT, object::DSA, 1),
        14,
    ]);
    // Rasterizer: depth clip, half-pixel centres; point size and line width 1.
    w.extend([
        cmd0(ccmd::CREATE_OBJECT, object::RASTERIZER, 9),
        15,
        (1 << 1) | (1 << 29),
        f(1.0),
        0,
        0,
        f(1.0),
        0,
        0,
        0,
        cmd0(ccmd::BIND_OBJECT, object::RASTERIZER, 1),
        15,
    ]);
    w.extend([
        cmd0(ccmd::SET_VIEWPORT_STATE, 0, 7),
        0,
        f(8.0),
        f(8.0),
        f(0.5),
        f(8.0),
        f(8.0),
        f(0.5),
    ]);
    // The render target, cleared to blue first.
    let clear = clear_stream(rt, 1, [0.0, 0.0, 1.0, 1.0]);
    w.extend(
        clear
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    // Three vertices covering the viewport, written into the vertex buffer.
    let verts = [
        -1.0f32, -1.0, 0.0, 1.0, 3.0, -1.0, 0.0, 1.0, -1.0, 3.0, 0.0, 1.0,
    ];
    w.extend([
        cmd0(ccmd::RESOURCE_INLINE_WRITE, 0, 11 + verts.len() as u32),
        vb,
        0, // level
        0, // usage
        0, // stride
        0, // layer stride
        0,
        0,
        0, // x, y, z
        (verts.len() * 4) as u32,
        1,
        1, // w (bytes), h, d
    ]);
    w.extend(verts.iter().map(|&v| f(v)));
    w.extend([cmd0(ccmd::SET_VERTEX_BUFFERS, 0, 3), 16, 0, vb]);
    // start 0, count 3, PIPE_PRIM_TRIANGLES, not indexed, 1 instance, the rest 0, max index 2.
    w.extend([
        cmd0(ccmd::DRAW_VBO, 0, 12),
        0,
        3,
        4,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        2,
        0,
    ]);
    words(&w)
}

/// Venus: vkSetReplyCommandStreamMESA (replies into resource `res` at 0, 4 KiB), then
/// vkEnumerateInstanceVersion with a reply (vn_protocol_driver_defines.h: command types 178
/// and 137, VK_COMMAND_GENERATE_REPLY_BIT_EXT 1). Pointers are encoded as a u64 count.
fn venus_stream(res: u32) -> Vec<u8> {
    words(&[
        178, 0, // vkSetReplyCommandStreamMESA, no flags
        1, 0, // pStream: one element
        res, 0, 0, // resourceId, offset (size_t: u64)
        4096, 0, // size (u64)
        137, 1, // vkEnumerateInstanceVersion, generate a reply
        1, 0, // pApiVersion: present
    ])
}

fn renderer_inputs() -> Vec<RendererInput> {
    let texture =
        |i: RendererInput| i.resource(1, TARGET_2D, VIRGL_FORMAT_B8G8R8X8, BIND_RT_SAMPLER, 16, 16);
    vec![
        // Clear in a virgl2 context, global fence, read back.
        texture(RendererInput::new(0))
            .submit(
                CTX_VIRGL2,
                FENCE_GLOBAL,
                &clear_stream(1, 1, [1.0, 0.0, 0.0, 1.0]),
            )
            .transfer(CTX_VIRGL2, 1, false, 16, 16),
        // A draw in a virgl context, ring-0 fence, read back.
        texture(RendererInput::new(1))
            .resource(2, TARGET_BUFFER, FORMAT_R8_UNORM, BIND_VERTEX_BUFFER, 64, 1)
            .submit(CTX_VIRGL, FENCE_RING0, &draw_stream(1, 2))
            .op(rop::SERVICE)
            .transfer(CTX_VIRGL, 1, false, 16, 16),
        // Upload then draw over it in the other context.
        texture(RendererInput::new(0))
            .guest_write(0x10000, &[0x80; 1024])
            .transfer(CTX_VIRGL2, 1, true, 16, 16)
            .resource(2, TARGET_BUFFER, FORMAT_R8_UNORM, BIND_VERTEX_BUFFER, 64, 1)
            .submit(CTX_VIRGL2, FENCE_GLOBAL, &draw_stream(1, 2)),
        // Venus: reply stream and one command with a reply, fenced on ring 0 and 1.
        RendererInput::new(1)
            .resource(
                3,
                TARGET_BUFFER,
                FORMAT_R8_UNORM,
                BIND_VERTEX_BUFFER,
                4096,
                1,
            )
            .submit(CTX_VENUS, FENCE_RING0, &venus_stream(3))
            .submit(CTX_VENUS, FENCE_RING0 | (1 << 2), &[]),
        // Both at once, interleaved.
        texture(RendererInput::new(0))
            .submit(CTX_VENUS, FENCE_GLOBAL, &venus_stream(1))
            .submit(
                CTX_VIRGL2,
                FENCE_RING0,
                &clear_stream(1, 2, [0.0, 1.0, 1.0, 1.0]),
            ),
    ]
}
