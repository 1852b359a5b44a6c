//! 2D cases: every command of the base device, happy paths and documented errors.
//! These run against every peer.

use super::{
    bgra_pattern, case_error, ctrl, ensure, send_expecting, still_serving, Case, CaseResult,
    Harness, Need, DISPLAY_WAIT,
};
use crate::frontend::{Frontend, CONTROL_QUEUE};
use crate::gpu::{self, format, ty, MemEntry, Rect};
use crate::proc_stats::ProcStats;

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "2d::display_info",
            need: Need::Nothing,
            run: display_info,
        },
        Case {
            name: "2d::scanout_flush_shows_pixels",
            need: Need::Nothing,
            run: scanout_flush_shows_pixels,
        },
        Case {
            name: "2d::every_format_reaches_the_display",
            need: Need::Nothing,
            run: every_format,
        },
        Case {
            name: "2d::create_2d_errors",
            need: Need::Nothing,
            run: create_2d_errors,
        },
        Case {
            name: "2d::unknown_resource_errors",
            need: Need::Nothing,
            run: unknown_resource_errors,
        },
        Case {
            name: "2d::set_scanout_errors_and_disable",
            need: Need::Nothing,
            run: set_scanout_errors,
        },
        Case {
            name: "2d::transfer_outside_resource",
            need: Need::Nothing,
            run: transfer_outside_resource,
        },
        Case {
            name: "2d::attach_backing_outside_guest_ram",
            need: Need::Nothing,
            run: attach_backing_outside_ram,
        },
        Case {
            name: "2d::detach_backing",
            need: Need::Nothing,
            run: detach_backing,
        },
        Case {
            name: "2d::malformed_commands",
            need: Need::Nothing,
            run: malformed_commands,
        },
        Case {
            name: "2d::fence_is_echoed",
            need: Need::Nothing,
            run: fence_is_echoed,
        },
        Case {
            name: "2d::capset_info_out_of_range",
            need: Need::Nothing,
            run: capset_info_out_of_range,
        },
        Case {
            name: "2d::get_edid",
            need: Need::Features(gpu::features::EDID),
            run: get_edid,
        },
        Case {
            name: "2d::resource_assign_uuid",
            need: Need::Features(gpu::features::RESOURCE_UUID),
            run: assign_uuid,
        },
        Case {
            name: "2d::cursor_update_and_move",
            need: Need::Nothing,
            run: cursor_update_and_move,
        },
        Case {
            name: "2d::multi_descriptor_chains",
            need: Need::Nothing,
            run: multi_descriptor_chains,
        },
        Case {
            name: "2d::queue_depth_32",
            need: Need::Nothing,
            run: queue_depth,
        },
        Case {
            name: "2d::unref_releases_everything",
            need: Need::Nothing,
            run: unref_releases_everything,
        },
        Case {
            name: "2d::display_protocol_is_clean",
            need: Need::Nothing,
            run: display_protocol_is_clean,
        },
        Case {
            name: "2d::reset_forgets_resources",
            need: Need::Nothing,
            run: reset_forgets_resources,
        },
    ]
}

fn spawn(harness: &Harness) -> Result<Frontend, String> {
    harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))
}

/// Guest backing for a resource, deliberately split in two separate guest ranges.
pub(crate) struct Backing {
    pub entries: Vec<MemEntry>,
}

impl Backing {
    /// Returns the guest memory to the frontend's allocator.
    pub(crate) fn free(self, fe: &Frontend) {
        for e in self.entries {
            fe.ram().free(e.addr - 4096);
        }
    }

    pub(crate) fn new(fe: &Frontend, len: usize) -> Result<Self, String> {
        let first = (len / 2).next_multiple_of(4096).min(len).max(1);
        let mut entries = Vec::new();
        for part in [first, len - first] {
            if part == 0 {
                continue;
            }
            // A gap between the two parts so a device that assumes contiguity is caught.
            let gpa = fe
                .ram()
                .alloc(part as u64 + 4096, 4096)
                .map_err(|e| e.to_string())?;
            entries.push(MemEntry {
                addr: gpa + 4096,
                length: part as u32,
            });
        }
        Ok(Self { entries })
    }

    pub(crate) fn write(
        &self,
        fe: &Frontend,
        mut offset: usize,
        mut data: &[u8],
    ) -> Result<(), String> {
        for e in &self.entries {
            let len = e.length as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            fe.ram()
                .write(e.addr + offset as u64, &data[..n])
                .map_err(|e| e.to_string())?;
            data = &data[n..];
            offset = 0;
            if data.is_empty() {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn read(&self, fe: &Frontend, len: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len);
        for e in &self.entries {
            let n = (e.length as usize).min(len - out.len());
            out.extend(fe.ram().read_vec(e.addr, n).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

/// SET_SCANOUT of scanout 0 to the whole `w`x`h` resource `id`, then RESOURCE_FLUSH of
/// it; both must answer OK_NODATA.
pub(crate) fn show_on_scanout_0(fe: &mut Frontend, id: u32, w: u32, h: u32) -> CaseResult {
    let rect = Rect::sized(w, h);
    send_expecting(
        fe,
        "SET_SCANOUT",
        gpu::set_scanout(0, id, rect),
        ty::OK_NODATA,
    )?;
    send_expecting(
        fe,
        "RESOURCE_FLUSH",
        gpu::resource_flush(id, rect),
        ty::OK_NODATA,
    )?;
    Ok(())
}

/// CREATE_2D + ATTACH_BACKING + write `pixels` + TRANSFER of the whole resource.
pub(crate) fn create_filled(
    fe: &mut Frontend,
    id: u32,
    w: u32,
    h: u32,
    pixels: &[u8],
) -> Result<Backing, String> {
    send_expecting(
        fe,
        "RESOURCE_CREATE_2D",
        gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, w, h),
        ty::OK_NODATA,
    )?;
    let backing = Backing::new(fe, pixels.len())?;
    backing.write(fe, 0, pixels)?;
    send_expecting(
        fe,
        "RESOURCE_ATTACH_BACKING",
        gpu::resource_attach_backing(id, &backing.entries),
        ty::OK_NODATA,
    )?;
    send_expecting(
        fe,
        "TRANSFER_TO_HOST_2D",
        gpu::transfer_to_host_2d(id, Rect::sized(w, h), 0),
        ty::OK_NODATA,
    )?;
    Ok(backing)
}

/// Compares the display's framebuffer with BGRA bytes (alpha ignored: the display is x8r8g8b8).
pub(crate) fn display_matches(
    fe: &Frontend,
    scanout: u32,
    w: u32,
    h: u32,
    bgra: &[u8],
) -> Result<(), String> {
    let display = fe.display().ok_or("no display socket")?;
    let expected: Vec<u32> = bgra
        .chunks(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
        .collect();
    // A backend shows a scanout either as pixels (SCANOUT + UPDATE) or, when the resource
    // is a dma-buf, as DMABUF_SCANOUT + DMABUF_UPDATE (QEMU then reads the buffer itself,
    // as `read_xrgb` does here). Either way the display must show the image.
    let ok = display.wait_for(DISPLAY_WAIT, |st| {
        let pixels = st.scanouts.get(&scanout).is_some_and(|s| {
            s.width == w
                && s.height == h
                && s.pixels
                    .iter()
                    .map(|p| p & 0x00ff_ffff)
                    .eq(expected.iter().copied())
        });
        let dmabuf = st.dmabuf_updates > 0
            && st.dmabuf_scanouts.get(&scanout).is_some_and(|d| {
                d.fields[3] == w && d.fields[4] == h && d.read_xrgb().is_ok_and(|px| px == expected)
            });
        pixels || dmabuf
    });
    if ok {
        return Ok(());
    }
    let st = display.state();
    if let Some(d) = st.dmabuf_scanouts.get(&scanout).filter(|d| d.fd.is_some()) {
        let detail = match d.read_xrgb() {
            Ok(px) => format!(
                "first differing pixel {:?}",
                px.iter().zip(&expected).position(|(a, b)| a != b)
            ),
            Err(e) => e.to_string(),
        };
        return Err(crate::suite::with_log(
            fe,
            format!(
                "scanout {scanout} is a dma-buf scanout {:?} (modifier {:?}) after {} \
                 DMABUF_UPDATEs that does not show the {w}x{h} image: {detail}; requests {:?}",
                d.fields, d.modifier, st.dmabuf_updates, st.requests
            ),
        ));
    }
    let detail = match st.scanouts.get(&scanout) {
        None => "no SCANOUT message for it".to_string(),
        Some(s) => {
            let first_diff = s
                .pixels
                .iter()
                .zip(&expected)
                .position(|(a, b)| a & 0xff_ffff != *b);
            format!(
                "display has {}x{} after {} updates, first differing pixel {:?}",
                s.width, s.height, s.updates, first_diff
            )
        }
    };
    Err(crate::suite::with_log(
        fe,
        format!("scanout {scanout} does not show the {w}x{h} image: {detail}; requests {:?}, violations {:?}", st.requests, st.violations),
    ))
}

fn display_info(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let resp = send_expecting(
        &mut fe,
        "GET_DISPLAY_INFO",
        gpu::get_display_info(),
        ty::OK_DISPLAY_INFO,
    )?;
    let modes = resp.display_info().map_err(|e| e.to_string())?;
    let first = modes[0];
    ensure(
        &fe,
        first.enabled && first.rect.width > 0 && first.rect.height > 0,
        || format!("scanout 0 not enabled or empty: {first:?}"),
    )?;
    let asked_display = fe.display().is_some_and(|d| {
        d.state()
            .requests
            .contains(&crate::display::req::GET_DISPLAY_INFO)
    });
    if asked_display {
        ensure(
            &fe,
            (first.rect.width, first.rect.height) == (1024, 768),
            || {
                format!(
                    "backend asked the display for its size (1024x768) but reported {:?}",
                    first.rect
                )
            },
        )?;
    }
    Ok(())
}

fn scanout_flush_shows_pixels(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let (w, h) = (64u32, 48u32);
    let mut image = bgra_pattern(w, h, 1);
    let backing = create_filled(&mut fe, 1, w, h, &image)?;
    show_on_scanout_0(&mut fe, 1, w, h)?;
    display_matches(&fe, 0, w, h, &image)?;

    // A partial update: new pixels in a sub-rectangle, transferred with the right offset.
    let sub = Rect {
        x: 10,
        y: 5,
        width: 16,
        height: 8,
    };
    let patch = bgra_pattern(sub.width, sub.height, 2);
    let stride = (w * 4) as usize;
    for row in 0..sub.height as usize {
        let off = (sub.y as usize + row) * stride + sub.x as usize * 4;
        let src = &patch[row * sub.width as usize * 4..(row + 1) * sub.width as usize * 4];
        image[off..off + src.len()].copy_from_slice(src);
        backing.write(&fe, off, src)?;
    }
    let offset = u64::from(sub.y) * u64::from(w * 4) + u64::from(sub.x) * 4;
    send_expecting(
        &mut fe,
        "TRANSFER_TO_HOST_2D (sub-rect)",
        gpu::transfer_to_host_2d(1, sub, offset),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "RESOURCE_FLUSH (sub-rect)",
        gpu::resource_flush(1, sub),
        ty::OK_NODATA,
    )?;
    display_matches(&fe, 0, w, h, &image)
}

fn create_2d_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    send_expecting(
        &mut fe,
        "create id 5",
        gpu::resource_create_2d(5, format::B8G8R8A8_UNORM, 16, 16),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "create id 5 again",
        gpu::resource_create_2d(5, format::B8G8R8A8_UNORM, 16, 16),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    send_expecting(
        &mut fe,
        "create id 0",
        gpu::resource_create_2d(0, format::B8G8R8A8_UNORM, 16, 16),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    send_expecting(
        &mut fe,
        "create with format 0xdead",
        gpu::resource_create_2d(6, 0xdead, 16, 16),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn unknown_resource_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let r = Rect::sized(4, 4);
    let entry = [MemEntry {
        addr: fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?,
        length: 4096,
    }];
    let cmds = [
        ("RESOURCE_UNREF", gpu::resource_unref(77)),
        ("RESOURCE_FLUSH", gpu::resource_flush(77, r)),
        ("TRANSFER_TO_HOST_2D", gpu::transfer_to_host_2d(77, r, 0)),
        (
            "RESOURCE_ATTACH_BACKING",
            gpu::resource_attach_backing(77, &entry),
        ),
        ("RESOURCE_DETACH_BACKING", gpu::resource_detach_backing(77)),
        ("SET_SCANOUT", gpu::set_scanout(0, 77, r)),
    ];
    for (what, cmd) in cmds {
        send_expecting(
            &mut fe,
            &format!("{what} of unknown resource"),
            cmd,
            ty::ERR_INVALID_RESOURCE_ID,
        )?;
    }
    still_serving(&mut fe)
}

fn set_scanout_errors(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let img = bgra_pattern(32, 32, 3);
    create_filled(&mut fe, 1, 32, 32, &img)?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT scanout 16",
        gpu::set_scanout(16, 1, Rect::sized(32, 32)),
        ty::ERR_INVALID_SCANOUT_ID,
    )?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT rect beyond resource",
        gpu::set_scanout(
            0,
            1,
            Rect {
                x: 16,
                y: 0,
                width: 32,
                height: 32,
            },
        ),
        ty::ERR_INVALID_PARAMETER,
    )?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT",
        gpu::set_scanout(0, 1, Rect::sized(32, 32)),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT disable",
        gpu::set_scanout(0, 0, Rect::sized(0, 0)),
        ty::OK_NODATA,
    )?;
    let display = fe.display().ok_or("no display")?;
    let disabled = display.wait_for(DISPLAY_WAIT, |st| {
        st.scanouts
            .get(&0)
            .is_some_and(|s| s.width == 0 && s.height == 0)
    });
    ensure(&fe, disabled, || {
        format!(
            "display never saw scanout 0 disabled: {:?}",
            fe.display().map(|d| d.state().requests.clone())
        )
    })?;
    still_serving(&mut fe)
}

fn transfer_outside_resource(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    create_filled(&mut fe, 1, 16, 16, &bgra_pattern(16, 16, 4))?;
    send_expecting(
        &mut fe,
        "TRANSFER beyond the resource",
        gpu::transfer_to_host_2d(
            1,
            Rect {
                x: 8,
                y: 8,
                width: 16,
                height: 16,
            },
            0,
        ),
        ty::ERR_INVALID_PARAMETER,
    )?;
    send_expecting(
        &mut fe,
        "FLUSH beyond the resource",
        gpu::resource_flush(
            1,
            Rect {
                x: 0,
                y: 0,
                width: 17,
                height: 16,
            },
        ),
        ty::ERR_INVALID_PARAMETER,
    )?;
    // A transfer offset past the backing (the rectangle itself is fine).
    send_expecting(
        &mut fe,
        "TRANSFER with an offset past the backing",
        gpu::transfer_to_host_2d(1, Rect::sized(16, 16), 1 << 20),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn attach_backing_outside_ram(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    send_expecting(
        &mut fe,
        "RESOURCE_CREATE_2D",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16),
        ty::OK_NODATA,
    )?;
    let outside = fe.ram().size() as u64 + (1 << 30);
    let entries = [MemEntry {
        addr: outside,
        length: 1024,
    }];
    send_expecting(
        &mut fe,
        "ATTACH_BACKING outside guest RAM",
        gpu::resource_attach_backing(1, &entries),
        ty::ERR_UNSPEC,
    )?;
    let wrap = [MemEntry {
        addr: u64::MAX - 100,
        length: 1024,
    }];
    send_expecting(
        &mut fe,
        "ATTACH_BACKING wrapping address",
        gpu::resource_attach_backing(1, &wrap),
        ty::ERR_UNSPEC,
    )?;
    // nr_entries far larger than the entries present: the device must not trust it.
    let page = fe.ram().alloc(4096, 4096).map_err(|e| e.to_string())?;
    let lying = gpu::Cmd::new(ty::RESOURCE_ATTACH_BACKING, 0)
        .u32(1)
        .u32(u32::MAX)
        .u64(page)
        .u32(4096)
        .u32(0);
    // Past the 16384 entries a command may carry: a bad parameter, whatever follows.
    send_expecting(
        &mut fe,
        "ATTACH_BACKING claiming 2^32-1 entries",
        lying,
        ty::ERR_INVALID_PARAMETER,
    )?;
    // Backing smaller than the resource: a full transfer must fail, not read past it.
    let small = [MemEntry {
        addr: page,
        length: 100,
    }];
    let r = ctrl(
        &mut fe,
        "ATTACH_BACKING of 100 bytes",
        gpu::resource_attach_backing(1, &small),
    )?;
    // A short backing is accepted (QEMU too: its size is checked per transfer), and the
    // transfer that needs more than it holds is a bad parameter.
    ensure(&fe, r.ty == ty::OK_NODATA, || {
        format!("ATTACH_BACKING of 100 bytes answered {}", r.name())
    })?;
    send_expecting(
        &mut fe,
        "TRANSFER of 1024 bytes from a 100-byte backing",
        gpu::transfer_to_host_2d(1, Rect::sized(16, 16), 0),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn detach_backing(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    create_filled(&mut fe, 1, 16, 16, &bgra_pattern(16, 16, 5))?;
    send_expecting(
        &mut fe,
        "DETACH_BACKING",
        gpu::resource_detach_backing(1),
        ty::OK_NODATA,
    )?;
    // A resource in the wrong state (no backing): ERR_UNSPEC, as QEMU answers.
    send_expecting(
        &mut fe,
        "TRANSFER without backing",
        gpu::transfer_to_host_2d(1, Rect::sized(16, 16), 0),
        ty::ERR_UNSPEC,
    )?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(1), ty::OK_NODATA)?;
    still_serving(&mut fe)
}

fn malformed_commands(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    send_expecting(
        &mut fe,
        "unknown command 0x1234",
        gpu::Cmd::new(0x1234, 0),
        ty::ERR_UNSPEC,
    )?;
    let truncated =
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16).truncate(gpu::HDR_SIZE + 6);
    send_expecting(
        &mut fe,
        "truncated RESOURCE_CREATE_2D",
        truncated,
        ty::ERR_UNSPEC,
    )?;
    // The truncated create must not have created anything.
    send_expecting(
        &mut fe,
        "create after truncated",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16),
        ty::OK_NODATA,
    )?;
    still_serving(&mut fe)
}

fn fence_is_echoed(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let resp = send_expecting(
        &mut fe,
        "fenced CREATE_2D",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 8, 8).fence(0x1234_5678_9abc, None),
        ty::OK_NODATA,
    )?;
    ensure(
        &fe,
        resp.flags & gpu::FLAG_FENCE != 0 && resp.fence_id == 0x1234_5678_9abc,
        || {
            format!(
                "fence not echoed: flags {:#x} fence_id {:#x}",
                resp.flags, resp.fence_id
            )
        },
    )
}

fn capset_info_out_of_range(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cfg = fe.config_space().to_vec();
    let num_capsets = cfg
        .get(12..16)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    for i in 0..num_capsets {
        let r = send_expecting(
            &mut fe,
            "GET_CAPSET_INFO",
            gpu::get_capset_info(i),
            ty::OK_CAPSET_INFO,
        )?;
        let info = r.capset_info().map_err(|e| e.to_string())?;
        ensure(&fe, info.id != 0 && info.max_size > 0, || {
            format!("capset {i}: {info:?}")
        })?;
    }
    // The specification names no particular error here; a capset index past num_capsets
    // is a bad parameter (QEMU answers the same).
    send_expecting(
        &mut fe,
        &format!("GET_CAPSET_INFO {num_capsets} of {num_capsets}"),
        gpu::get_capset_info(num_capsets),
        ty::ERR_INVALID_PARAMETER,
    )?;
    still_serving(&mut fe)
}

fn get_edid(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let r = send_expecting(&mut fe, "GET_EDID 0", gpu::get_edid(0), ty::OK_EDID)?;
    let edid = r.edid().map_err(|e| e.to_string())?;
    ensure(
        &fe,
        edid.len() >= 128 && edid[..8] == [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0],
        || {
            format!(
                "EDID has no valid header: {:02x?}",
                &edid[..edid.len().min(16)]
            )
        },
    )?;
    let sum = edid[..128].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    ensure(&fe, sum == 0, || {
        format!("EDID block checksum is {sum:#x}, not 0")
    })?;
    // A backend that asked the display for the EDID must pass on what the display said.
    let asked = fe
        .display()
        .is_some_and(|d| d.state().requests.contains(&crate::display::req::GET_EDID));
    if asked {
        let display_edid = crate::display::edid_for(1024, 768);
        ensure(&fe, edid[..128] == display_edid[..], || {
            "the backend asked the display for its EDID but answered a different one".into()
        })?;
    }
    // The specification names no error for a bad scanout here: QEMU's in-process device
    // answers INVALID_PARAMETER, INVALID_SCANOUT_ID says the same more precisely.
    let r = ctrl(&mut fe, "GET_EDID 16", gpu::get_edid(16))?;
    ensure(
        &fe,
        matches!(r.ty, ty::ERR_INVALID_PARAMETER | ty::ERR_INVALID_SCANOUT_ID),
        || format!("GET_EDID of scanout 16 answered {}", r.name()),
    )?;
    still_serving(&mut fe)
}

fn assign_uuid(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    send_expecting(
        &mut fe,
        "CREATE_2D",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 8, 8),
        ty::OK_NODATA,
    )?;
    send_expecting(
        &mut fe,
        "CREATE_2D",
        gpu::resource_create_2d(2, format::B8G8R8A8_UNORM, 8, 8),
        ty::OK_NODATA,
    )?;
    let a = send_expecting(
        &mut fe,
        "ASSIGN_UUID 1",
        gpu::resource_assign_uuid(1),
        ty::OK_RESOURCE_UUID,
    )?
    .uuid()
    .map_err(|e| e.to_string())?;
    let b = send_expecting(
        &mut fe,
        "ASSIGN_UUID 2",
        gpu::resource_assign_uuid(2),
        ty::OK_RESOURCE_UUID,
    )?
    .uuid()
    .map_err(|e| e.to_string())?;
    ensure(&fe, a != b && a != [0; 16], || {
        format!("uuids not distinct/non-zero: {a:02x?} {b:02x?}")
    })?;
    send_expecting(
        &mut fe,
        "ASSIGN_UUID unknown",
        gpu::resource_assign_uuid(77),
        ty::ERR_INVALID_RESOURCE_ID,
    )?;
    still_serving(&mut fe)
}

fn cursor_update_and_move(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let img = bgra_pattern(64, 64, 6);
    create_filled(&mut fe, 9, 64, 64, &img)?;
    fe.cursor(gpu::update_cursor(0, 100, 200, 9, (3, 4)))
        .map_err(|e| case_error(&fe, "UPDATE_CURSOR", e))?;
    let display = fe.display().ok_or("no display")?;
    let expected: Vec<u32> = img
        .chunks(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
        .collect();
    let got = display.wait_for(DISPLAY_WAIT, |st| st.cursor.updates > 0);
    let st = display.state();
    ensure(&fe, got, || {
        format!("no CURSOR_UPDATE; display saw {:?}", st.requests)
    })?;
    ensure(
        &fe,
        st.cursor.pos == (0, 100, 200) && st.cursor.hot == (3, 4),
        || {
            format!(
                "cursor at {:?} hot {:?}, expected (0, 100, 200) hot (3, 4)",
                st.cursor.pos, st.cursor.hot
            )
        },
    )?;
    ensure(&fe, st.cursor.image == expected, || {
        "cursor image differs from the resource".into()
    })?;
    drop(st);
    fe.cursor(gpu::move_cursor(0, 300, 40, 9))
        .map_err(|e| case_error(&fe, "MOVE_CURSOR", e))?;
    let display = fe.display().ok_or("no display")?;
    let moved = display.wait_for(DISPLAY_WAIT, |st| {
        st.cursor.pos == (0, 300, 40) && st.cursor.visible
    });
    ensure(&fe, moved, || {
        format!("cursor not moved: {:?}", display.state().cursor.pos)
    })?;
    still_serving(&mut fe)
}

fn multi_descriptor_chains(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    // Header, body and entry list each in their own descriptor, as Linux sends ATTACH_BACKING.
    let (w, h) = (32u32, 16u32);
    let img = bgra_pattern(w, h, 7);
    let create = gpu::resource_create_2d(3, format::B8G8R8A8_UNORM, w, h).into_bytes();
    let r = fe
        .ctrl_parts(&[&create[..gpu::HDR_SIZE], &create[gpu::HDR_SIZE..]], 64)
        .map_err(|e| case_error(&fe, "split CREATE_2D", e))?;
    ensure(&fe, r.ty == ty::OK_NODATA, || {
        format!("split CREATE_2D answered {}", r.name())
    })?;
    let backing = Backing::new(&fe, img.len())?;
    backing.write(&fe, 0, &img)?;
    let attach = gpu::resource_attach_backing(3, &backing.entries).into_bytes();
    let cut = gpu::HDR_SIZE + 8;
    let r = fe
        .ctrl_parts(&[&attach[..cut], &attach[cut..]], 64)
        .map_err(|e| case_error(&fe, "split ATTACH_BACKING", e))?;
    ensure(&fe, r.ty == ty::OK_NODATA, || {
        format!("split ATTACH_BACKING answered {}", r.name())
    })?;
    send_expecting(
        &mut fe,
        "TRANSFER",
        gpu::transfer_to_host_2d(3, Rect::sized(w, h), 0),
        ty::OK_NODATA,
    )?;
    show_on_scanout_0(&mut fe, 3, w, h)?;
    display_matches(&fe, 0, w, h, &img)
}

fn queue_depth(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let n = 32u32;
    for id in 1..=n {
        let cmd = gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, 8, 8).into_bytes();
        fe.send(CONTROL_QUEUE, &[&cmd], 64)
            .map_err(|e| case_error(&fe, "send", e))?;
    }
    for _ in 1..=n {
        let (_, bytes) = fe
            .wait(CONTROL_QUEUE)
            .map_err(|e| case_error(&fe, "wait", e))?;
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(&fe, r.ty == ty::OK_NODATA, || {
            format!("pipelined CREATE_2D answered {}", r.name())
        })?;
    }
    for id in 1..=n {
        send_expecting(&mut fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    }
    still_serving(&mut fe)
}

fn cycle(fe: &mut Frontend, id: u32) -> CaseResult {
    let img = bgra_pattern(128, 128, id);
    let b = create_filled(fe, id, 128, 128, &img)?;
    show_on_scanout_0(fe, id, 128, 128)?;
    send_expecting(
        fe,
        "SET_SCANOUT off",
        gpu::set_scanout(0, 0, Rect::sized(0, 0)),
        ty::OK_NODATA,
    )?;
    send_expecting(fe, "UNREF", gpu::resource_unref(id), ty::OK_NODATA)?;
    b.free(fe);
    Ok(())
}

fn unref_releases_everything(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    cycle(&mut fe, 1)?;
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    let before = ProcStats::of(pid).map_err(|e| e.to_string())?;
    for id in 2..40 {
        cycle(&mut fe, id)?;
    }
    let after = ProcStats::of(pid).map_err(|e| e.to_string())?;
    ensure(
        &fe,
        after.fds <= before.fds && after.buffer_maps <= before.buffer_maps,
        || {
            format!(
                "backend grew from {} to {} fds, {} to {} buffer mappings; new fds {:?}",
                before.fds,
                after.fds,
                before.buffer_maps,
                after.buffer_maps,
                after.new_fds(&before)
            )
        },
    )?;
    still_serving(&mut fe)
}

fn reset_forgets_resources(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    create_filled(&mut fe, 1, 16, 16, &bgra_pattern(16, 16, 8))?;
    fe.reset().map_err(|e| case_error(&fe, "device reset", e))?;
    send_expecting(
        &mut fe,
        "CREATE_2D with the same id after reset",
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 16, 16),
        ty::OK_NODATA,
    )?;
    send_expecting(&mut fe, "UNREF", gpu::resource_unref(1), ty::OK_NODATA)?;
    still_serving(&mut fe)
}

/// A whole 2D session, then the display channel must hold no protocol violation: protocol
/// features negotiated before use and only from what the display offered, updates inside
/// their scanout, pixel payloads of the right size.
fn display_protocol_is_clean(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let img = bgra_pattern(40, 30, 51);
    create_filled(&mut fe, 1, 40, 30, &img)?;
    show_on_scanout_0(&mut fe, 1, 40, 30)?;
    display_matches(&fe, 0, 40, 30, &img)?;
    fe.cursor(gpu::update_cursor(0, 1, 1, 0, (0, 0)))
        .map_err(|e| case_error(&fe, "UPDATE_CURSOR (hide)", e))?;
    send_expecting(
        &mut fe,
        "SET_SCANOUT off",
        gpu::set_scanout(0, 0, Rect::sized(0, 0)),
        ty::OK_NODATA,
    )?;
    let display = fe.display().ok_or("no display")?;
    display.wait_for(DISPLAY_WAIT, |st| {
        st.scanouts.get(&0).is_some_and(|s| s.width == 0)
    });
    let st = display.state();
    ensure(&fe, st.violations.is_empty(), || {
        format!("display protocol violations: {:?}", st.violations)
    })?;
    use crate::display::req;
    let get = st
        .requests
        .iter()
        .position(|&r| r == req::GET_PROTOCOL_FEATURES);
    let set = st
        .requests
        .iter()
        .position(|&r| r == req::SET_PROTOCOL_FEATURES);
    if let Some(set) = set {
        ensure(&fe, get.is_some_and(|g| g < set), || {
            "SET_PROTOCOL_FEATURES without GET first".into()
        })?;
        let offered = crate::display::DisplayConfig::default().protocol_features;
        let chosen = st.protocol_features.unwrap_or(0);
        ensure(&fe, chosen & !offered == 0, || {
            format!("backend enabled display protocol features {chosen:#x}, offered {offered:#x}")
        })?;
    }
    let uses_edid = st.requests.contains(&req::GET_EDID);
    ensure(
        &fe,
        !uses_edid || st.protocol_features.is_some_and(|f| f & 1 != 0),
        || "GET_EDID sent without negotiating VHOST_USER_GPU_PROTOCOL_F_EDID".into(),
    )?;
    drop(st);
    still_serving(&mut fe)
}

/// All eight 2D formats of the specification, named by their byte order in memory, shown on
/// the display as x8r8g8b8: the device must convert each one correctly.
fn every_format(harness: &Harness) -> CaseResult {
    use virtio_bindings::virtio_gpu as vg;
    // (format, byte order in memory: index of R, G, B in each 4-byte pixel)
    let formats: [(&str, u32, [usize; 3]); 8] = [
        (
            "B8G8R8A8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
            [2, 1, 0],
        ),
        (
            "B8G8R8X8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            [2, 1, 0],
        ),
        (
            "A8R8G8B8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
            [1, 2, 3],
        ),
        (
            "X8R8G8B8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
            [1, 2, 3],
        ),
        (
            "R8G8B8A8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            [0, 1, 2],
        ),
        (
            "X8B8G8R8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
            [3, 2, 1],
        ),
        (
            "A8B8G8R8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
            [3, 2, 1],
        ),
        (
            "R8G8B8X8",
            vg::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
            [0, 1, 2],
        ),
    ];
    let mut fe = spawn(harness)?;
    let (w, h) = (8u32, 4u32);
    for (i, (name, fmt, [r, g, b])) in formats.into_iter().enumerate() {
        let id = 10 + i as u32;
        let mut bytes = super::pattern((w * h * 4) as usize, 100 + i as u32);
        // Opaque alpha wherever the format has one, so premultiplication cannot matter.
        let alpha = 6 - r - g - b;
        for px in bytes.chunks_mut(4) {
            px[alpha] = 0xff;
        }
        send_expecting(
            &mut fe,
            name,
            gpu::resource_create_2d(id, fmt, w, h),
            ty::OK_NODATA,
        )?;
        let backing = Backing::new(&fe, bytes.len())?;
        backing.write(&fe, 0, &bytes)?;
        send_expecting(
            &mut fe,
            "ATTACH",
            gpu::resource_attach_backing(id, &backing.entries),
            ty::OK_NODATA,
        )?;
        send_expecting(
            &mut fe,
            "TRANSFER",
            gpu::transfer_to_host_2d(id, Rect::sized(w, h), 0),
            ty::OK_NODATA,
        )?;
        show_on_scanout_0(&mut fe, id, w, h)?;
        // Expected: BGRA bytes of the same colours.
        let bgra: Vec<u8> = bytes
            .chunks(4)
            .flat_map(|p| [p[b], p[g], p[r], 0xff])
            .collect();
        display_matches(&fe, 0, w, h, &bgra).map_err(|e| format!("format {name}: {e}"))?;
        // Make the next format's SCANOUT a fresh one in the display's record.
        send_expecting(
            &mut fe,
            "SET_SCANOUT off",
            gpu::set_scanout(0, 0, Rect::sized(0, 0)),
            ty::OK_NODATA,
        )?;
        let display = fe.display().ok_or("no display")?;
        display.wait_for(DISPLAY_WAIT, |st| {
            st.scanouts.get(&0).is_some_and(|s| s.width == 0)
        });
    }
    still_serving(&mut fe)
}
