//! (6) Live upgrade blackout (DESIGN-lifecycle.md 4): how long the guest gets no answer while
//! the backend is replaced. The frontend sends one command at a time, the next as soon as the
//! previous one completed, while `vhost-user-gpu --upgrade-from` takes the device over; the
//! blackout of one upgrade is the largest gap between two consecutive completions, from the
//! start of the new process to the first completion after the old process exited. It includes
//! one command's own service time (tens of microseconds), so it slightly overstates the
//! time nobody serves.

use std::time::{Duration, Instant};

use vug_conformance::frontend::FrontendOptions;
use vug_conformance::gpu::{self, format, ty};
use vug_conformance::{BackendSpec, Frontend};

use crate::report::Samples;
use crate::Res;

/// Blackouts and whole-upgrade times of `n` upgrades in a row.
pub struct Upgrades {
    /// Largest gap between completions, per upgrade.
    pub blackout: Samples,
    /// From starting the new process to the old one's exit, per upgrade.
    pub whole: Samples,
}

/// Runs `n` upgrades of a backend started from `spec`, with a 2D resource on the device and
/// commands in flight throughout.
pub fn blackouts(spec: BackendSpec, n: usize) -> Res<Upgrades> {
    let options = FrontendOptions {
        control_socket: true,
        ..FrontendOptions::default()
    };
    let mut fe = Frontend::spawn_with(spec, options)?;
    // State that has to move: a resource (its pixels go through the handover).
    expect(
        &mut fe,
        gpu::resource_create_2d(1, format::B8G8R8A8_UNORM, 256, 256),
    )?;
    let started = Instant::now();
    let mut blackout = Vec::with_capacity(n);
    let mut whole = Vec::with_capacity(n);
    let mut next_id = 2u32;
    for _ in 0..n {
        let mut pending = fe.begin_upgrade(&[])?;
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let mut over = None;
        loop {
            // A CREATE_2D and an UNREF of the same id: two cheap commands that change state.
            let id = next_id;
            next_id = next_id.wrapping_add(1).max(2);
            for cmd in [
                gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, 4, 4),
                gpu::resource_unref(id),
            ] {
                expect(&mut fe, cmd)?;
                let now = Instant::now();
                worst = worst.max(now - last);
                last = now;
            }
            if over.is_some() {
                break;
            }
            over = fe.poll_upgrade(&mut pending)?;
        }
        blackout.push(u64::try_from(worst.as_nanos()).unwrap_or(u64::MAX));
        if let Some(up) = over {
            whole.push(u64::try_from(up.took.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    let wall = started.elapsed();
    Ok(Upgrades {
        blackout: Samples::new(blackout, wall),
        whole: Samples::new(whole, wall),
    })
}

fn expect(fe: &mut Frontend, cmd: gpu::Cmd) -> Res<()> {
    let r = fe.ctrl(cmd)?;
    if r.ty != ty::OK_NODATA {
        return Err(format!("a command answered {} during the upgrades", ty::name(r.ty)).into());
    }
    Ok(())
}
