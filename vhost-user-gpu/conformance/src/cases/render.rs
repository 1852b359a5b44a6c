//! Renderer cases: our backend with a real virgl renderer (`--capset virgl`: virglrenderer
//! with Mesa's llvmpipe where there is no GPU). Capsets come from the renderer, a virgl
//! context clears a texture that is read back into guest memory and shown on a scanout,
//! malformed streams are refused while the device keeps rendering, `--capset` decides
//! what the guest is offered, and a render worker that crashes (`SIGSEGV`) ends only the
//! renderer contexts.

use super::upgrade::upgrade_fails;
use super::{ctrl, ensure, send_expecting, still_serving, Case, CaseResult, Harness, Need};
use crate::frontend::{Frontend, FrontendOptions};
use crate::gpu::{self, features, format, ty, MemEntry};
use crate::virgl;

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "render::capsets_come_from_the_renderer",
            need: Need::Renderer,
            run: capsets,
        },
        Case {
            name: "render::capset_option_decides_what_is_offered",
            need: Need::OurCommandLine,
            run: capset_option,
        },
        Case {
            name: "render::virgl_clear_read_back_into_guest_memory",
            need: Need::Renderer,
            run: clear_and_read_back,
        },
        Case {
            name: "render::virgl_draw_with_compiled_shaders",
            need: Need::Renderer,
            run: draw_with_shaders,
        },
        Case {
            name: "render::scanout_of_a_3d_resource",
            need: Need::Renderer,
            run: scanout_3d,
        },
        Case {
            name: "render::malformed_virgl_streams_leave_the_renderer_working",
            need: Need::Renderer,
            run: malformed_streams,
        },
        Case {
            name: "render::a_crashed_render_worker_ends_only_renderer_contexts",
            need: Need::Renderer,
            run: crashed_render_worker,
        },
        Case {
            name: "render::upgrade_refused_while_renderer_state_exists",
            need: Need::Renderer,
            run: upgrade_with_renderer_state,
        },
    ]
}

const CTX: u32 = 1;
const SIDE: u32 = 64;

/// Our backend with `--capset capsets`, under its default sandbox (`--sandbox on`: the 3D
/// profile when a virgl capset is served).
fn spawn(harness: &Harness, capsets: &str) -> Result<Frontend, String> {
    harness
        .spawn_with(&["--capset", capsets])
        .map_err(|e| format!("cannot start backend with --capset {capsets}: {e}"))
}

/// `num_capsets` from the config space.
fn num_capsets(fe: &Frontend) -> u32 {
    fe.config_space()
        .get(12..16)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The capset ids offered, in index order.
fn capset_ids(fe: &mut Frontend) -> Result<Vec<u32>, String> {
    (0..num_capsets(fe))
        .map(|i| {
            send_expecting(
                fe,
                "GET_CAPSET_INFO",
                gpu::get_capset_info(i),
                ty::OK_CAPSET_INFO,
            )?
            .capset_info()
            .map(|c| c.id)
            .map_err(|e| e.to_string())
        })
        .collect()
}

fn capsets(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, "virgl,cross-domain")?;
    let ids = capset_ids(&mut fe)?;
    ensure(
        &fe,
        ids == [
            gpu::CAPSET_VIRGL,
            gpu::CAPSET_VIRGL2,
            gpu::CAPSET_CROSS_DOMAIN,
        ],
        || format!("capsets {ids:?}, expected VIRGL, VIRGL2, CROSS_DOMAIN"),
    )?;
    for (index, id) in [gpu::CAPSET_VIRGL, gpu::CAPSET_VIRGL2]
        .into_iter()
        .enumerate()
    {
        let info = send_expecting(
            &mut fe,
            "GET_CAPSET_INFO",
            gpu::get_capset_info(index as u32),
            ty::OK_CAPSET_INFO,
        )?
        .capset_info()
        .map_err(|e| e.to_string())?;
        let data = send_expecting(
            &mut fe,
            "GET_CAPSET",
            gpu::get_capset(id, info.max_version),
            ty::OK_CAPSET,
        )?
        .body;
        // struct virgl_caps_v1 starts with max_version; the rest are format bitmasks and
        // limits that a renderer fills in.
        let max_version = data
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        ensure(
            &fe,
            data.len() == info.max_size as usize
                && max_version >= 1
                && data[4..].iter().any(|&b| b != 0),
            || {
                format!(
                    "capset {id}: {} bytes (max_size {}), max_version {max_version}",
                    data.len(),
                    info.max_size
                )
            },
        )?;
    }
    let r = ctrl(
        &mut fe,
        "GET_CAPSET venus",
        gpu::get_capset(gpu::CAPSET_VENUS, 0),
    )?;
    ensure(&fe, r.ty == ty::ERR_INVALID_PARAMETER, || {
        format!("a capset not offered answered {}", r.name())
    })?;
    still_serving(&mut fe)
}

fn capset_option(harness: &Harness) -> CaseResult {
    // Nothing offered: no contexts at all, so no VIRGL and no CONTEXT_INIT.
    let fe = spawn(harness, "none")?;
    ensure(
        &fe,
        fe.offered_features() & (features::VIRGL | features::CONTEXT_INIT) == 0
            && num_capsets(&fe) == 0,
        || {
            format!(
                "--capset none offered features {:#x}, {} capsets",
                fe.offered_features(),
                num_capsets(&fe)
            )
        },
    )?;
    // Cross-domain alone still needs VIRGL (Linux creates contexts only with it).
    let mut fe = spawn(harness, "cross-domain")?;
    let ids = capset_ids(&mut fe)?;
    ensure(
        &fe,
        ids == [gpu::CAPSET_CROSS_DOMAIN] && fe.offered_features() & features::VIRGL != 0,
        || format!("--capset cross-domain offered {ids:?}"),
    )?;
    // Without a renderer, a default context is not a virgl context.
    send_expecting(
        &mut fe,
        "CTX_CREATE",
        gpu::ctx_create(CTX, 0, "x"),
        ty::OK_NODATA,
    )?;
    let r = ctrl(
        &mut fe,
        "SUBMIT_3D",
        gpu::submit_3d(CTX, &virgl::clear(1, 1, [0.0; 4])),
    )?;
    ensure(&fe, r.ty == ty::ERR_UNSPEC, || {
        format!("virgl stream without a renderer answered {}", r.name())
    })?;
    // An unknown name is a usage error.
    match harness.spawn_with(&["--capset", "glide"]) {
        Ok(fe) => Err(super::case_error(
            &fe,
            "--capset glide",
            "the backend started with an unknown context type",
        )),
        Err(_) => Ok(()),
    }
}

/// A virgl context with a `SIDE`x`SIDE` render-target texture `res` whose backing is
/// `backing` in guest memory.
fn texture(fe: &mut Frontend, res: u32, backing: u64) -> CaseResult {
    send_expecting(
        fe,
        "CTX_CREATE virgl",
        gpu::ctx_create(CTX, 0, "render"),
        ty::OK_NODATA,
    )?;
    send_expecting(
        fe,
        "RESOURCE_CREATE_3D",
        gpu::texture_create_3d(
            CTX,
            res,
            format::B8G8R8X8_UNORM,
            virgl::BIND_RENDER_TARGET | virgl::BIND_SAMPLER_VIEW | virgl::BIND_SCANOUT,
            SIDE,
            SIDE,
        ),
        ty::OK_NODATA,
    )?;
    send_expecting(
        fe,
        "RESOURCE_ATTACH_BACKING",
        gpu::resource_attach_backing(
            res,
            &[MemEntry {
                addr: backing,
                length: SIDE * SIDE * 4,
            }],
        ),
        ty::OK_NODATA,
    )?;
    send_expecting(
        fe,
        "CTX_ATTACH_RESOURCE",
        gpu::ctx_attach_resource(CTX, res),
        ty::OK_NODATA,
    )?;
    Ok(())
}

/// Clears `res` to `rgba` (fenced) and reads it back into its backing (fenced).
fn clear(fe: &mut Frontend, res: u32, surface: u32, rgba: [f32; 4]) -> CaseResult {
    let r = send_expecting(
        fe,
        "SUBMIT_3D clear",
        gpu::submit_3d(CTX, &virgl::clear(res, surface, rgba))
            .fence(100 + u64::from(surface), None),
        ty::OK_NODATA,
    )?;
    ensure(fe, r.fence_id == 100 + u64::from(surface), || {
        format!("fence {} echoed for {}", r.fence_id, 100 + surface)
    })?;
    let whole = gpu::Box3d {
        origin: [0, 0, 0],
        size: [SIDE, SIDE, 1],
    };
    send_expecting(
        fe,
        "TRANSFER_FROM_HOST_3D",
        gpu::transfer_from_host_3d(CTX, res, whole, 0, SIDE * 4).fence(200, None),
        ty::OK_NODATA,
    )?;
    Ok(())
}

fn clear_and_read_back(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, "virgl")?;
    let len = u64::from(SIDE * SIDE * 4);
    let backing = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    fe.ram()
        .write(backing, &vec![0x55; len as usize])
        .map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    clear(&mut fe, 1, 1, [1.0, 0.0, 0.0, 1.0])?;
    let pixels = fe
        .ram()
        .read_vec(backing, len as usize)
        .map_err(|e| e.to_string())?;
    // B8G8R8X8: blue, green, red, unused.
    let wrong = pixels.chunks_exact(4).position(|p| p[..3] != [0, 0, 0xff]);
    ensure(&fe, wrong.is_none(), || {
        let at = wrong.unwrap_or(0);
        format!(
            "pixel {at} of the read-back is {:02x?}, not red",
            &pixels[at * 4..at * 4 + 4]
        )
    })?;
    still_serving(&mut fe)
}

/// A draw through shaders the renderer compiles (llvmpipe: to machine code, at draw time),
/// fenced, read back into guest memory: every pixel has the triangle's colour.
fn draw_with_shaders(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, "virgl")?;
    let len = u64::from(SIDE * SIDE * 4);
    let backing = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_3D vertex buffer",
        gpu::buffer_create_3d(CTX, 2, virgl::BIND_VERTEX_BUFFER, virgl::TRIANGLE_BYTES),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CTX_ATTACH_RESOURCE vertex buffer",
        gpu::ctx_attach_resource(CTX, 2),
        ty::OK_NODATA,
    )?;
    let stream = virgl::draw(1, 1, 2, SIDE, [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]);
    let r = send_expecting(
        &mut fe,
        "SUBMIT_3D draw",
        gpu::submit_3d(CTX, &stream).fence(300, None),
        ty::OK_NODATA,
    )?;
    ensure(&fe, r.fence_id == 300, || {
        format!("fence {} echoed for 300", r.fence_id)
    })?;
    let whole = gpu::Box3d {
        origin: [0, 0, 0],
        size: [SIDE, SIDE, 1],
    };
    send_expecting(
        &mut fe,
        "TRANSFER_FROM_HOST_3D",
        gpu::transfer_from_host_3d(CTX, 1, whole, 0, SIDE * 4).fence(301, None),
        ty::OK_NODATA,
    )?;
    let pixels = fe
        .ram()
        .read_vec(backing, len as usize)
        .map_err(|e| e.to_string())?;
    // Yellow in B8G8R8X8: blue 0, green and red full.
    let wrong = pixels
        .chunks_exact(4)
        .position(|p| p[..3] != [0, 0xff, 0xff]);
    ensure(&fe, wrong.is_none(), || {
        let at = wrong.unwrap_or(0);
        format!(
            "pixel {at} of the drawn texture is {:02x?}, not yellow",
            &pixels[at * 4..at * 4 + 4]
        )
    })?;
    still_serving(&mut fe)
}

fn scanout_3d(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, "virgl")?;
    let backing = fe
        .ram()
        .alloc(u64::from(SIDE * SIDE * 4), 4096)
        .map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    clear(&mut fe, 1, 1, [0.0, 1.0, 0.0, 1.0])?;
    let rect = gpu::Rect {
        x: 0,
        y: 0,
        width: SIDE,
        height: SIDE,
    };
    send_expecting(
        &mut fe,
        "SET_SCANOUT of a 3D resource",
        gpu::set_scanout(0, 1, rect),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(1, rect),
        ty::OK_NODATA,
    )?;
    let display = fe
        .display()
        .ok_or_else(|| "no display channel".to_string())?;
    let green = |s: &crate::display::DisplayState| {
        s.scanouts.get(&0).is_some_and(|sc| {
            sc.width == SIDE
                && sc.pixels.len() == (SIDE * SIDE) as usize
                && sc.pixels.iter().all(|&p| p & 0x00ff_ffff == 0x0000_ff00)
        })
    };
    let shown = display.wait_for(super::DISPLAY_WAIT, green);
    let first = display
        .state()
        .scanouts
        .get(&0)
        .and_then(|s| s.pixels.first().copied());
    ensure(&fe, shown, || {
        format!("the display did not show the green texture (first pixel {first:08x?})")
    })?;
    // Clear again: the next flush shows the new colour.
    clear(&mut fe, 1, 2, [0.0, 0.0, 1.0, 1.0])?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(1, rect),
        ty::OK_NODATA,
    )?;
    let display = fe
        .display()
        .ok_or_else(|| "no display channel".to_string())?;
    let blue = display.wait_for(super::DISPLAY_WAIT, |s| {
        s.scanouts
            .get(&0)
            .is_some_and(|sc| sc.pixels.iter().all(|&p| p & 0x00ff_ffff == 0x0000_00ff))
    });
    ensure(&fe, blue, || "the second flush did not show blue".into())?;
    still_serving(&mut fe)
}

fn malformed_streams(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness, "virgl")?;
    let backing = fe
        .ram()
        .alloc(u64::from(SIDE * SIDE * 4), 4096)
        .map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    // Garbage in many shapes: unknown commands, lengths past the end, objects that do not
    // exist, a stream not made of whole words.
    let streams: Vec<Vec<u8>> = vec![
        vec![0xff; 64],
        virgl::header(virgl::CCMD_CREATE_OBJECT, virgl::OBJECT_SURFACE, 0xffff)
            .to_le_bytes()
            .to_vec(),
        [
            virgl::header(virgl::CCMD_SET_FRAMEBUFFER_STATE, 0, 3),
            1,
            0,
            12345,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect(),
        vec![1, 2, 3],
        crate::cases::pattern(4096, 7),
    ];
    for (i, s) in streams.iter().enumerate() {
        // The answer may be OK (virglrenderer marks the context as in error and goes on)
        // or an error; it must come, and the process must live.
        ctrl(
            &mut fe,
            &format!("malformed stream {i}"),
            gpu::submit_3d(CTX, s),
        )?;
        let alive = fe.backend_alive();
        ensure(&fe, alive, || {
            format!("the backend died on malformed stream {i}")
        })?;
    }
    // A fresh context still renders.
    send_expecting(&mut fe, "CTX_DESTROY", gpu::ctx_destroy(CTX), ty::OK_NODATA)?;
    send_expecting(
        &mut fe,
        "CTX_CREATE",
        gpu::ctx_create(CTX, 0, "again"),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CTX_ATTACH_RESOURCE",
        gpu::ctx_attach_resource(CTX, 1),
        ty::OK_NODATA,
    )?;
    clear(&mut fe, 1, 3, [1.0, 1.0, 1.0, 1.0])?;
    let pixels = fe
        .ram()
        .read_vec(backing, (SIDE * SIDE * 4) as usize)
        .map_err(|e| e.to_string())?;
    ensure(
        &fe,
        pixels.chunks_exact(4).all(|p| p[..3] == [0xff; 3]),
        || "a new context after malformed streams did not render".into(),
    )?;
    still_serving(&mut fe)
}

/// Every pixel of the `SIDE`x`SIDE` read-back at `backing` is `bgr` (B8G8R8X8).
fn pixels_are(fe: &Frontend, backing: u64, bgr: [u8; 3], what: &str) -> CaseResult {
    let len = (SIDE * SIDE * 4) as usize;
    let pixels = fe.ram().read_vec(backing, len).map_err(|e| e.to_string())?;
    let wrong = pixels.chunks_exact(4).position(|p| p[..3] != bgr);
    ensure(fe, wrong.is_none(), || {
        let at = wrong.unwrap_or(0);
        format!(
            "{what}: pixel {at} of the read-back is {:02x?}, not {bgr:02x?}",
            &pixels[at * 4..at * 4 + 4]
        )
    })
}

/// A live upgrade (DESIGN-lifecycle.md 4.7) while the renderer holds guest state is refused
/// end to end: virglrenderer's contexts and textures live in the process and cannot be
/// carried. With a virgl context, and then with only a 3D resource left, the new process is
/// refused, the old one names the reason, serves on and still renders; once the guest freed
/// its 3D state the device moves, and the new process renders with a renderer of its own.
fn upgrade_with_renderer_state(harness: &Harness) -> CaseResult {
    let options = FrontendOptions {
        control_socket: true,
        ..FrontendOptions::default()
    };
    let mut fe = harness
        .spawn_with_options(&["--capset", "virgl"], options)
        .map_err(|e| format!("cannot start backend with --capset virgl: {e}"))?;
    let len = u64::from(SIDE * SIDE * 4);
    let backing = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    clear(&mut fe, 1, 1, [1.0, 0.0, 0.0, 1.0])?;
    let pid = fe.backend_pid();
    let refused = |fe: &mut Frontend, what: &str, reason: &str, count: usize| {
        upgrade_fails(fe, what)?;
        let serving = fe.backend_pid() == pid && fe.backend_alive();
        let log = fe.backend_log();
        ensure(
            fe,
            serving && log.matches("upgrade refused: ").count() == count && log.contains(reason),
            || format!("{what}: the old process does not serve on naming '{reason}'"),
        )
    };
    refused(
        &mut fe,
        "upgrade with a virgl context",
        &format!("context(s) [{CTX}] live in the renderer"),
        1,
    )?;
    // The context and its texture are untouched: it renders on.
    clear(&mut fe, 1, 2, [0.0, 1.0, 0.0, 1.0])?;
    pixels_are(&fe, backing, [0, 0xff, 0], "after the refused upgrade")?;
    send_expecting(&mut fe, "CTX_DESTROY", gpu::ctx_destroy(CTX), ty::OK_NODATA)?;
    refused(
        &mut fe,
        "upgrade with a 3D resource and no context",
        "resource(s) [1] live in the renderer",
        2,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNREF",
        gpu::resource_unref(1),
        ty::OK_NODATA,
    )?;
    let up = fe
        .upgrade()
        .map_err(|e| super::case_error(&fe, "upgrade once the 3D state is gone", e))?;
    ensure(
        &fe,
        Some(up.new_pid) == fe.backend_pid() && Some(up.old_pid) == pid,
        || format!("pids after the upgrade: {up:?}"),
    )?;
    // The new process's renderer serves the same guest.
    fe.ram()
        .write(backing, &vec![0x55; len as usize])
        .map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    clear(&mut fe, 1, 1, [0.0, 0.0, 1.0, 1.0])?;
    pixels_are(&fe, backing, [0xff, 0, 0], "in the new process")?;
    still_serving(&mut fe)
}

/// The render worker's pid, from the backend's log line.
fn render_worker_pid(fe: &Frontend) -> Option<i32> {
    let log = fe.backend_log();
    let at = log.rfind("render worker pid ")?;
    log[at + "render worker pid ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Our backend's default `--renderer-isolation process`: virgl (and venus where it is
/// offered) render in a worker process. Killed with `SIGSEGV` mid-stream (as a fault in
/// Mesa would end it), the worker takes only the renderer contexts with it: their commands
/// get `ERR_UNSPEC`, the backend logs the loss with the worker's pid and signal, and 2D and
/// cross-domain keep serving in the backend, which stays alive.
fn crashed_render_worker(harness: &Harness) -> CaseResult {
    const VENUS: u32 = 2;
    const XD: u32 = 3;
    let mut fe = spawn(harness, "auto")?;
    let ids = capset_ids(&mut fe)?;
    let Some(pid) = render_worker_pid(&fe) else {
        return Err(super::case_error(
            &fe,
            "render worker",
            "no 'render worker pid' line in the backend's log",
        ));
    };
    let len = u64::from(SIDE * SIDE * 4);
    let backing = fe.ram().alloc(len, 4096).map_err(|e| e.to_string())?;
    texture(&mut fe, 1, backing)?;
    clear(&mut fe, 1, 1, [0.0, 1.0, 0.0, 1.0])?;
    let venus = ids.contains(&gpu::CAPSET_VENUS);
    if venus {
        send_expecting(
            &mut fe,
            "CTX_CREATE venus",
            gpu::ctx_create(VENUS, gpu::CAPSET_VENUS, "venus"),
            ty::OK_NODATA,
        )?;
    }
    send_expecting(
        &mut fe,
        "CTX_CREATE cross-domain",
        gpu::ctx_create(XD, gpu::CAPSET_CROSS_DOMAIN, "xd"),
        ty::OK_NODATA,
    )?;
    // Mid-stream: a submit, then the crash.
    send_expecting(
        &mut fe,
        "SUBMIT_3D before the crash",
        gpu::submit_3d(CTX, &virgl::clear(1, 2, [0.0, 0.0, 1.0, 1.0])),
        ty::OK_NODATA,
    )?;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).ok_or("pid 0")?,
        rustix::process::Signal::SEGV,
    )
    .map_err(|e| super::case_error(&fe, "kill the render worker", e))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lost = |fe: &Frontend| {
        let log = fe.backend_log();
        log.contains(&format!("render worker (pid {pid})")) && log.contains("SIGSEGV")
    };
    while !lost(&fe) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ensure(&fe, lost(&fe), || {
        format!("no log line of the render worker (pid {pid}) lost to SIGSEGV")
    })?;
    // Renderer contexts: device errors, fenced or not (a fence must not wait for ever).
    let r = ctrl(
        &mut fe,
        "SUBMIT_3D after the crash",
        gpu::submit_3d(CTX, &virgl::clear(1, 3, [1.0, 0.0, 0.0, 1.0])).fence(300, None),
    )?;
    ensure(&fe, r.ty == ty::ERR_UNSPEC, || {
        format!("virgl SUBMIT_3D after the crash answered {}", r.name())
    })?;
    if venus {
        let r = ctrl(
            &mut fe,
            "venus SUBMIT_3D after the crash",
            gpu::submit_3d(VENUS, &[0; 8]),
        )?;
        ensure(&fe, r.ty == ty::ERR_UNSPEC, || {
            format!("venus SUBMIT_3D after the crash answered {}", r.name())
        })?;
    }
    let r = ctrl(
        &mut fe,
        "CTX_CREATE virgl after the crash",
        gpu::ctx_create(4, 0, "again"),
    )?;
    ensure(&fe, r.ty == ty::ERR_UNSPEC, || {
        format!("a new virgl context after the crash answered {}", r.name())
    })?;
    // 2D and cross-domain keep serving.
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D after the crash",
        gpu::resource_create_2d(20, format::B8G8R8X8_UNORM, 16, 16),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_UNREF after the crash",
        gpu::resource_unref(20),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CTX_CREATE cross-domain after the crash",
        gpu::ctx_create(5, gpu::CAPSET_CROSS_DOMAIN, "xd2"),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CTX_DESTROY cross-domain",
        gpu::ctx_destroy(XD),
        ty::OK_NODATA,
    )?;
    let alive = fe.backend_alive();
    ensure(&fe, alive, || "the backend died with its worker".into())?;
    still_serving(&mut fe)
}
