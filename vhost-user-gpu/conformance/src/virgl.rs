//! A few virgl protocol commands (`virgl_protocol.h`: object creation, framebuffer state,
//! clear), enough to make a real virgl renderer draw something a test can check. Written
//! from the protocol's facts, independent of the backend's code, like the rest of this
//! crate's codecs.

/// A command header: command, object type, length in 32-bit words after the header.
pub const fn header(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}

/// `VIRGL_CCMD_CREATE_OBJECT`.
pub const CCMD_CREATE_OBJECT: u32 = 1;
/// `VIRGL_CCMD_SET_FRAMEBUFFER_STATE`.
pub const CCMD_SET_FRAMEBUFFER_STATE: u32 = 5;
/// `VIRGL_CCMD_CLEAR`.
pub const CCMD_CLEAR: u32 = 7;
/// `VIRGL_OBJECT_SURFACE`.
pub const OBJECT_SURFACE: u32 = 8;
/// `PIPE_CLEAR_COLOR0`.
pub const CLEAR_COLOR0: u32 = 1 << 2;
/// `PIPE_TEXTURE_2D`.
pub const TEXTURE_2D: u32 = 2;
/// `VIRGL_FORMAT_B8G8R8X8_UNORM` (the same number as virtio-gpu's format).
pub const FORMAT_B8G8R8X8_UNORM: u32 = 2;
/// `VIRGL_BIND_RENDER_TARGET`.
pub const BIND_RENDER_TARGET: u32 = 1 << 1;
/// `VIRGL_BIND_SAMPLER_VIEW`.
pub const BIND_SAMPLER_VIEW: u32 = 1 << 3;
/// `VIRGL_BIND_SCANOUT`.
pub const BIND_SCANOUT: u32 = 1 << 18;

/// A stream that makes surface object `surface` over resource `res` (B8G8R8X8), binds it
/// as the only colour buffer and clears it to `rgba`.
pub fn clear(res: u32, surface: u32, rgba: [f32; 4]) -> Vec<u8> {
    let mut words = vec![
        header(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 5),
        surface,
        res,
        FORMAT_B8G8R8X8_UNORM,
        0, // level
        0, // first layer | last layer << 16
        header(CCMD_SET_FRAMEBUFFER_STATE, 0, 3),
        1, // nr_cbufs
        0, // no depth/stencil surface
        surface,
        header(CCMD_CLEAR, 0, 8),
        CLEAR_COLOR0,
    ];
    words.extend(rgba.iter().map(|c| c.to_bits()));
    words.extend([0, 0, 0]); // depth (f64), stencil
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// `VIRGL_CCMD_BIND_OBJECT`.
pub const CCMD_BIND_OBJECT: u32 = 2;
/// `VIRGL_CCMD_SET_VIEWPORT_STATE`.
pub const CCMD_SET_VIEWPORT_STATE: u32 = 4;
/// `VIRGL_CCMD_SET_VERTEX_BUFFERS`.
pub const CCMD_SET_VERTEX_BUFFERS: u32 = 6;
/// `VIRGL_CCMD_DRAW_VBO`.
pub const CCMD_DRAW_VBO: u32 = 8;
/// `VIRGL_CCMD_RESOURCE_INLINE_WRITE`.
pub const CCMD_RESOURCE_INLINE_WRITE: u32 = 9;
/// `VIRGL_CCMD_BIND_SHADER`.
pub const CCMD_BIND_SHADER: u32 = 31;
/// `VIRGL_OBJECT_BLEND`.
pub const OBJECT_BLEND: u32 = 1;
/// `VIRGL_OBJECT_RASTERIZER`.
pub const OBJECT_RASTERIZER: u32 = 2;
/// `VIRGL_OBJECT_DSA` (depth, stencil, alpha).
pub const OBJECT_DSA: u32 = 3;
/// `VIRGL_OBJECT_SHADER`.
pub const OBJECT_SHADER: u32 = 4;
/// `VIRGL_OBJECT_VERTEX_ELEMENTS`.
pub const OBJECT_VERTEX_ELEMENTS: u32 = 5;
/// `PIPE_BUFFER` (a resource target).
pub const BUFFER: u32 = 0;
/// `VIRGL_FORMAT_R8_UNORM` (what buffers are created with).
pub const FORMAT_R8_UNORM: u32 = 64;
/// `VIRGL_FORMAT_R32G32B32A32_FLOAT`.
pub const FORMAT_R32G32B32A32_FLOAT: u32 = 31;
/// `VIRGL_BIND_VERTEX_BUFFER`.
pub const BIND_VERTEX_BUFFER: u32 = 1 << 4;
/// `PIPE_SHADER_VERTEX`, `PIPE_SHADER_FRAGMENT`.
pub const SHADER_VERTEX: u32 = 0;
/// See [`SHADER_VERTEX`].
pub const SHADER_FRAGMENT: u32 = 1;
/// `PIPE_PRIM_TRIANGLES`.
pub const PRIM_TRIANGLES: u32 = 4;
/// Bytes of the vertex buffer [`draw`] writes into: three vec4 positions.
pub const TRIANGLE_BYTES: u32 = 3 * 16;

/// Creates shader object `handle` of `kind` from TGSI `text` (in one piece, no stream
/// output) and binds it.
fn shader(words: &mut Vec<u32>, handle: u32, kind: u32, text: &str) {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    let text_len = bytes.len() as u32;
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let body: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    words.extend([
        header(CCMD_CREATE_OBJECT, OBJECT_SHADER, 5 + body.len() as u32),
        handle,
        kind,
        text_len, // the whole text in this command (no continuation bit)
        256,      // TGSI tokens to parse into
        0,        // no stream output
    ]);
    words.extend(body);
    words.extend([header(CCMD_BIND_SHADER, 0, 2), handle, kind]);
}

/// A stream that draws, with shaders the renderer compiles, one triangle covering the
/// whole `side`x`side` render target `res` in `rgba`, after clearing it to `background`
/// (through surface `surface`, as [`clear`]). The three vertices go into buffer resource
/// `vertex_buffer` ([`BUFFER`], at least [`TRIANGLE_BYTES`] long) by an inline write. A
/// software renderer (llvmpipe) compiles both shaders to machine code when it draws.
pub fn draw(
    res: u32,
    surface: u32,
    vertex_buffer: u32,
    side: u32,
    background: [f32; 4],
    rgba: [f32; 4],
) -> Vec<u8> {
    let f = |v: f32| v.to_bits();
    let mut w: Vec<u32> = clear(res, surface, background)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    shader(
        &mut w,
        100,
        SHADER_VERTEX,
        "VERT\nDCL IN[0]\nDCL OUT[0], POSITION\n  0: MOV OUT[0], IN[0]\n  1: END\n",
    );
    let [r, g, b, a] = rgba;
    shader(
        &mut w,
        101,
        SHADER_FRAGMENT,
        &format!(
            "FRAG\nPROPERTY FS_COLOR0_WRITES_ALL_CBUFS 1\nDCL OUT[0], COLOR\n\
             IMM[0] FLT32 {{ {r:.4}, {g:.4}, {b:.4}, {a:.4} }}\n  0: MOV OUT[0], IMM[0]\n  1: END\n"
        ),
    );
    // One vertex element: a vec4 at offset 0 of vertex buffer 0.
    w.extend([
        header(CCMD_CREATE_OBJECT, OBJECT_VERTEX_ELEMENTS, 5),
        102,
        0, // src_offset
        0, // instance_divisor
        0, // vertex_buffer_index
        FORMAT_R32G32B32A32_FLOAT,
        header(CCMD_BIND_OBJECT, OBJECT_VERTEX_ELEMENTS, 1),
        102,
    ]);
    // Blend: off, colour mask RGBA on every colour buffer (8 per-target words).
    w.extend([header(CCMD_CREATE_OBJECT, OBJECT_BLEND, 11), 103, 0, 0]);
    w.extend([0xf << 27; 8]);
    w.extend([header(CCMD_BIND_OBJECT, OBJECT_BLEND, 1), 103]);
    // Depth, stencil and alpha tests off.
    w.extend([
        header(CCMD_CREATE_OBJECT, OBJECT_DSA, 5),
        104,
        0,
        0,
        0,
        0,
        header(CCMD_BIND_OBJECT, OBJECT_DSA, 1),
        104,
    ]);
    // Rasterizer: depth clip and half-pixel centres on, no culling, point size and line
    // width 1.
    w.extend([
        header(CCMD_CREATE_OBJECT, OBJECT_RASTERIZER, 9),
        105,
        (1 << 1) | (1 << 29),
        f(1.0),
        0,
        0,
        f(1.0),
        0,
        0,
        0,
        header(CCMD_BIND_OBJECT, OBJECT_RASTERIZER, 1),
        105,
    ]);
    let half = side as f32 / 2.0;
    w.extend([
        header(CCMD_SET_VIEWPORT_STATE, 0, 7),
        0, // start slot
        f(half),
        f(half),
        f(0.5),
        f(half),
        f(half),
        f(0.5),
    ]);
    // A triangle larger than the viewport: it covers every pixel.
    let vertices = [
        -1.0f32, -1.0, 0.0, 1.0, 3.0, -1.0, 0.0, 1.0, -1.0, 3.0, 0.0, 1.0,
    ];
    w.extend([
        header(CCMD_RESOURCE_INLINE_WRITE, 0, 11 + vertices.len() as u32),
        vertex_buffer,
        0, // level
        0, // usage
        0, // stride
        0, // layer stride
        0, // x
        0, // y
        0, // z
        TRIANGLE_BYTES,
        1, // height
        1, // depth
    ]);
    w.extend(vertices.iter().map(|&v| f(v)));
    w.extend([header(CCMD_SET_VERTEX_BUFFERS, 0, 3), 16, 0, vertex_buffer]);
    w.extend([
        header(CCMD_DRAW_VBO, 0, 12),
        0, // start
        3, // count
        PRIM_TRIANGLES,
        0, // not indexed
        1, // instances
        0, // index bias
        0, // start instance
        0, // no primitive restart
        0, // restart index
        0, // min index
        2, // max index
        0, // count not from stream output
    ]);
    w.iter().flat_map(|w| w.to_le_bytes()).collect()
}
