//! Hostile descriptor chains: the guest is untrusted at the virtqueue level too. After each
//! malformed chain the device must neither write outside the buffers it was given nor stop
//! serving well-formed commands.

use super::{case_error, ensure, still_serving, Case, CaseResult, Harness, Need};
use crate::frontend::{Frontend, CONTROL_QUEUE};
use crate::gpu::{self, ty};
use crate::virtq::RawDesc;

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "queue::short_response_buffer",
            need: Need::Nothing,
            run: short_response_buffer,
        },
        Case {
            name: "queue::descriptor_outside_guest_ram",
            need: Need::Nothing,
            run: outside_ram,
        },
        Case {
            name: "queue::descriptor_loop",
            need: Need::Nothing,
            run: descriptor_loop,
        },
        Case {
            name: "queue::writable_only_chain",
            need: Need::Nothing,
            run: writable_only,
        },
        Case {
            name: "queue::absurd_descriptor_length",
            need: Need::Nothing,
            run: absurd_length,
        },
        Case {
            name: "queue::full_ring",
            need: Need::Nothing,
            run: full_ring,
        },
        Case {
            name: "queue::plain_chains_without_indirect_or_event_idx",
            need: Need::Nothing,
            run: plain_chains,
        },
        Case {
            name: "queue::ring_index_wraps",
            need: Need::Nothing,
            run: index_wraps,
        },
    ]
}

fn spawn(harness: &Harness) -> Result<Frontend, String> {
    harness
        .spawn()
        .map_err(|e| format!("cannot start backend: {e}"))
}

fn buf(fe: &Frontend, bytes: &[u8]) -> Result<u64, String> {
    let gpa = fe
        .ram()
        .alloc(bytes.len().max(1) as u64, 8)
        .map_err(|e| e.to_string())?;
    fe.ram().write(gpa, bytes).map_err(|e| e.to_string())?;
    Ok(gpa)
}

/// Sends a malformed chain, then a good GET_DISPLAY_INFO, and requires the good one answered.
fn survive(fe: &mut Frontend, what: &str, descs: &[RawDesc]) -> CaseResult {
    fe.send_raw(CONTROL_QUEUE, descs)
        .map_err(|e| case_error(fe, what, e))?;
    let cmd = gpu::get_display_info().into_bytes();
    let head = fe
        .send(CONTROL_QUEUE, &[&cmd], gpu::resp_size::DISPLAY_INFO)
        .map_err(|e| case_error(fe, what, e))?;
    let bytes = fe
        .wait_for_head(CONTROL_QUEUE, head)
        .map_err(|e| case_error(fe, &format!("a good command after {what}"), e))?;
    let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
    ensure(fe, r.ty == ty::OK_DISPLAY_INFO, || {
        format!("after {what}: {}", r.name())
    })?;
    still_serving(fe)
}

fn short_response_buffer(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cmd = gpu::get_display_info().into_bytes();
    let req = buf(&fe, &cmd)?;
    // An 8-byte response buffer followed by a canary the device must not touch.
    let resp = buf(&fe, &[0xa5; 8 + 64])?;
    survive(
        &mut fe,
        "an 8-byte response buffer",
        &[
            RawDesc {
                addr: req,
                len: cmd.len() as u32,
                write: false,
                next: Some(1),
            },
            RawDesc {
                addr: resp,
                len: 8,
                write: true,
                next: None,
            },
        ],
    )?;
    let canary = fe.ram().read_vec(resp + 8, 64).map_err(|e| e.to_string())?;
    ensure(&fe, canary.iter().all(|&b| b == 0xa5), || {
        "the device wrote past the end of an 8-byte response buffer".into()
    })
}

fn outside_ram(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let outside = fe.ram().size() as u64 + (1 << 30);
    let resp = buf(&fe, &[0; 64])?;
    survive(
        &mut fe,
        "a request descriptor outside guest RAM",
        &[
            RawDesc {
                addr: outside,
                len: 24,
                write: false,
                next: Some(1),
            },
            RawDesc {
                addr: resp,
                len: 64,
                write: true,
                next: None,
            },
        ],
    )?;
    let cmd = gpu::get_display_info().into_bytes();
    let req = buf(&fe, &cmd)?;
    survive(
        &mut fe,
        "a response descriptor outside guest RAM",
        &[
            RawDesc {
                addr: req,
                len: cmd.len() as u32,
                write: false,
                next: Some(1),
            },
            RawDesc {
                addr: outside,
                len: 512,
                write: true,
                next: None,
            },
        ],
    )
}

fn descriptor_loop(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cmd = gpu::get_display_info().into_bytes();
    let req = buf(&fe, &cmd)?;
    survive(
        &mut fe,
        "a chain looping back to its head",
        &[
            RawDesc {
                addr: req,
                len: cmd.len() as u32,
                write: false,
                next: Some(1),
            },
            RawDesc {
                addr: req,
                len: cmd.len() as u32,
                write: false,
                next: Some(0),
            },
        ],
    )
}

fn writable_only(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let resp = buf(&fe, &[0; 512])?;
    survive(
        &mut fe,
        "a chain without a request",
        &[RawDesc {
            addr: resp,
            len: 512,
            write: true,
            next: None,
        }],
    )
}

fn absurd_length(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cmd = gpu::get_display_info().into_bytes();
    let req = buf(&fe, &cmd)?;
    let resp = buf(&fe, &[0; 64])?;
    survive(
        &mut fe,
        "a 4 GiB request descriptor",
        &[
            RawDesc {
                addr: req,
                len: u32::MAX,
                write: false,
                next: Some(1),
            },
            RawDesc {
                addr: resp,
                len: 64,
                write: true,
                next: None,
            },
        ],
    )
}

/// Every descriptor in use at once (128 two-descriptor chains in a 256-entry ring), one kick.
fn full_ring(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cmd = gpu::resource_unref(4242).into_bytes();
    let mut sent = 0;
    while let Ok(_head) = fe.send(CONTROL_QUEUE, &[&cmd], gpu::resp_size::NODATA) {
        sent += 1;
        if sent == 128 {
            break;
        }
    }
    ensure(&fe, sent == 128, || {
        format!("only {sent} chains fit in the ring")
    })?;
    for _ in 0..sent {
        let (_, bytes) = fe
            .wait(CONTROL_QUEUE)
            .map_err(|e| case_error(&fe, "wait", e))?;
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(&fe, r.ty == ty::ERR_INVALID_RESOURCE_ID, || {
            format!("UNREF of unknown answered {}", r.name())
        })?;
    }
    still_serving(&mut fe)
}

/// More than 65536 requests, so the 16-bit available and used indexes wrap around.
fn index_wraps(harness: &Harness) -> CaseResult {
    let mut fe = spawn(harness)?;
    let cmd = gpu::resource_unref(4242).into_bytes();
    let depth = 64u32;
    let total = 70_000u32;
    let mut done = 0u32;
    let mut in_flight = 0u32;
    while done < total {
        while in_flight < depth && done + in_flight < total {
            fe.send(CONTROL_QUEUE, &[&cmd], gpu::resp_size::NODATA)
                .map_err(|e| case_error(&fe, "send", e))?;
            in_flight += 1;
        }
        let (_, bytes) = fe
            .wait(CONTROL_QUEUE)
            .map_err(|e| case_error(&fe, &format!("wait after {done} requests"), e))?;
        let r = gpu::Resp::parse(&bytes).map_err(|e| e.to_string())?;
        ensure(&fe, r.ty == ty::ERR_INVALID_RESOURCE_ID, || {
            format!("request {done} answered {}", r.name())
        })?;
        in_flight -= 1;
        done += 1;
    }
    still_serving(&mut fe)
}

/// The same 2D flow with neither indirect descriptors nor EVENT_IDX negotiated: plain
/// multi-descriptor chains and a notification for every used buffer.
fn plain_chains(harness: &Harness) -> CaseResult {
    let options = crate::frontend::FrontendOptions {
        indirect_descriptors: false,
        event_idx: false,
        ..Default::default()
    };
    let mut fe = harness
        .spawn_with_options(&[], options)
        .map_err(|e| format!("cannot start backend: {e}"))?;
    let ring_bits = crate::virtq::RING_F_INDIRECT_DESC | crate::virtq::RING_F_EVENT_IDX;
    ensure(&fe, fe.acked_features() & ring_bits == 0, || {
        "ring features negotiated anyway".into()
    })?;
    let (w, h) = (24u32, 24u32);
    let img = super::bgra_pattern(w, h, 91);
    super::two_d::create_filled(&mut fe, 1, w, h, &img)?;
    super::send_expecting(
        &mut fe,
        "SET_SCANOUT",
        gpu::set_scanout(0, 1, gpu::Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    super::send_expecting(
        &mut fe,
        "FLUSH",
        gpu::resource_flush(1, gpu::Rect::sized(w, h)),
        ty::OK_NODATA,
    )?;
    super::two_d::display_matches(&fe, 0, w, h, &img)?;
    still_serving(&mut fe)
}
