//! Control-queue measurements through the conformance frontend: (2) 2D command cycles and
//! GET_DISPLAY_INFO transport pairs, (3) TRANSFER_TO_HOST_2D bandwidth from scattered pages,
//! (5) resources kept alive for the memory figure.

use std::time::{Duration, Instant};

use vug_conformance::frontend::CONTROL_QUEUE;
use vug_conformance::gpu::{self, format, ty, MemEntry, Rect, Resp};
use vug_conformance::Frontend;

use crate::Res;

/// Sends `n` commands with at most `depth` in flight (a new one as soon as one returns);
/// `cmd(i)` builds command `i`, `check` looks at every response. Returns the wall time.
pub fn pipelined(
    fe: &mut Frontend,
    depth: usize,
    n: usize,
    mut cmd: impl FnMut(usize) -> Vec<u8>,
    check: impl Fn(&Resp) -> Res<()>,
) -> Res<Duration> {
    let start = Instant::now();
    let mut sent = 0;
    while sent < n.min(depth) {
        fe.send(CONTROL_QUEUE, &[&cmd(sent)], 1024)?;
        sent += 1;
    }
    for _ in 0..n {
        let (_, bytes) = fe.wait(CONTROL_QUEUE)?;
        check(&Resp::parse(&bytes)?)?;
        if sent < n {
            fe.send(CONTROL_QUEUE, &[&cmd(sent)], 1024)?;
            sent += 1;
        }
    }
    Ok(start.elapsed())
}

/// What a GET_DISPLAY_INFO answer must be for a pair to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayAnswer {
    /// `OK_DISPLAY_INFO` with scanout 0 enabled at this size (width, height).
    Mode(u32, u32),
    /// Anything: vhost-device-gpu's null mode answers OK_NODATA to every command, so only
    /// its transport is measured.
    Any,
}

impl DisplayAnswer {
    /// Fails unless `r` is the answer wanted.
    pub fn check(self, r: &Resp) -> Res<()> {
        let DisplayAnswer::Mode(width, height) = self else {
            return Ok(());
        };
        r.check_type(ty::OK_DISPLAY_INFO)?;
        // Scanout 0: x, y, width, height, enabled, flags.
        let got = (r.body_u32(8)?, r.body_u32(12)?, r.body_u32(16)?);
        if got != (width, height, 1) {
            return Err(format!(
                "OK_DISPLAY_INFO scanout 0: {}x{} enabled={}, expected {width}x{height} enabled",
                got.0, got.1, got.2
            )
            .into());
        }
        Ok(())
    }
}

/// GET_DISPLAY_INFO request/response pairs per second at queue depth `depth`; every response
/// is checked against `want` (a wrong answer fails the run instead of being counted).
pub fn display_info_rate(
    fe: &mut Frontend,
    depth: usize,
    n: usize,
    want: DisplayAnswer,
) -> Res<f64> {
    let bytes = gpu::get_display_info().into_bytes();
    let check = |r: &Resp| want.check(r);
    // Warm-up.
    pipelined(fe, depth, (n / 10).max(depth), |_| bytes.clone(), check)?;
    let wall = pipelined(fe, depth, n, |_| bytes.clone(), check)?;
    Ok(n as f64 / wall.as_secs_f64())
}

/// Cycles per second of CREATE_2D 64x64 + ATTACH_BACKING + TRANSFER_TO_HOST_2D +
/// RESOURCE_FLUSH + RESOURCE_UNREF, one command in flight (queue depth 1).
pub fn two_d_cycles(fe: &mut Frontend, cycles: usize) -> Res<f64> {
    let len = 64 * 64 * 4;
    let backing = fe.ram().alloc(len, 4096)?;
    let rect = Rect::sized(64, 64);
    let entry = [MemEntry {
        addr: backing,
        length: len as u32,
    }];
    let cycle = |fe: &mut Frontend, id: u32| -> Res<()> {
        fe.ctrl(gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, 64, 64))?
            .check_type(ty::OK_NODATA)?;
        fe.ctrl(gpu::resource_attach_backing(id, &entry))?
            .check_type(ty::OK_NODATA)?;
        fe.ctrl(gpu::transfer_to_host_2d(id, rect, 0))?
            .check_type(ty::OK_NODATA)?;
        fe.ctrl(gpu::resource_flush(id, rect))?
            .check_type(ty::OK_NODATA)?;
        fe.ctrl(gpu::resource_unref(id))?
            .check_type(ty::OK_NODATA)?;
        Ok(())
    };
    for i in 0..(cycles / 10).max(10) {
        cycle(fe, 1 + i as u32)?;
    }
    let start = Instant::now();
    for i in 0..cycles {
        cycle(fe, 1 + i as u32)?;
    }
    let wall = start.elapsed();
    fe.ram().free(backing);
    Ok(cycles as f64 / wall.as_secs_f64())
}

/// A deterministic permutation of `0..n` (Fisher-Yates with a fixed LCG).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((state >> 33) as usize) % (i + 1);
        v.swap(i, j);
    }
    v
}

/// Result of the transfer measurement.
pub struct Transfer {
    /// GiB/s through the backend (TRANSFER_TO_HOST_2D, depth 1, including the round trip).
    pub backend_gib_s: f64,
    /// GiB/s of a single-threaded copy of the same pages into one contiguous buffer.
    pub copy_gib_s: f64,
    /// Backing entries used.
    pub entries: usize,
}

/// TRANSFER_TO_HOST_2D of a 1920x1080 B8G8R8A8 resource whose backing is 2025 separate
/// 4 KiB guest pages in shuffled order, `frames` times; against the same bytes copied by one
/// thread of this process from the same pages (same order) into a contiguous buffer; best
/// of `rounds` turns each.
pub fn transfer(fe: &mut Frontend, frames: usize, rounds: usize) -> Res<Transfer> {
    let (w, h) = (1920u32, 1080u32);
    let bytes = (w * h * 4) as usize;
    let pages = bytes.div_ceil(4096);
    // Twice as many pages as needed, a shuffled half of them used: not contiguous, not in
    // ascending order.
    let mut pool = Vec::with_capacity(pages * 2);
    for _ in 0..pages * 2 {
        pool.push(fe.ram().alloc(4096, 4096)?);
    }
    let order = shuffled(pool.len());
    let entries: Vec<MemEntry> = order[..pages]
        .iter()
        .enumerate()
        .map(|(i, &p)| MemEntry {
            addr: pool[p],
            length: (bytes - i * 4096).min(4096) as u32,
        })
        .collect();
    for (i, e) in entries.iter().enumerate() {
        fe.ram()
            .write(e.addr, &vec![(i % 251) as u8; e.length as usize])?;
    }
    let id = 0x7000;
    fe.ctrl(gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, w, h))?
        .check_type(ty::OK_NODATA)?;
    fe.ctrl(gpu::resource_attach_backing(id, &entries))?
        .check_type(ty::OK_NODATA)?;
    let rect = Rect::sized(w, h);
    let frame = |fe: &mut Frontend| -> Res<()> {
        fe.ctrl(gpu::transfer_to_host_2d(id, rect, 0))?
            .check_type(ty::OK_NODATA)?;
        Ok(())
    };
    let mut dst = vec![0u8; bytes];
    let copy_once = |fe: &Frontend, dst: &mut [u8]| -> Res<()> {
        for (i, e) in entries.iter().enumerate() {
            let at = i * 4096;
            fe.ram()
                .read(e.addr, &mut dst[at..at + e.length as usize])?;
        }
        Ok(())
    };
    for _ in 0..2 {
        frame(fe)?;
        copy_once(fe, &mut dst)?;
    }
    // Backend and copy take turns; each keeps its best round.
    let (mut backend, mut copy) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..frames {
            frame(fe)?;
        }
        backend = backend.min(start.elapsed());
        let start = Instant::now();
        for _ in 0..frames {
            copy_once(fe, std::hint::black_box(&mut dst))?;
        }
        copy = copy.min(start.elapsed());
    }

    fe.ctrl(gpu::resource_unref(id))?
        .check_type(ty::OK_NODATA)?;
    for p in pool {
        fe.ram().free(p);
    }
    let gib = (bytes * frames) as f64 / f64::from(1u32 << 30);
    Ok(Transfer {
        backend_gib_s: gib / backend.as_secs_f64(),
        copy_gib_s: gib / copy.as_secs_f64(),
        entries: pages,
    })
}

/// Creates `n` 16x16 B8G8R8A8 resources, each with one 4 KiB backing entry (all the same
/// guest page), queue depth 64, and leaves them alive.
pub fn many_resources(fe: &mut Frontend, n: usize, first_id: u32) -> Res<()> {
    let page = fe.ram().alloc(4096, 4096)?;
    let entry = [MemEntry {
        addr: page,
        length: 4096,
    }];
    let ok = |r: &Resp| -> Res<()> {
        r.check_type(ty::OK_NODATA)?;
        Ok(())
    };
    pipelined(
        fe,
        64,
        n,
        |i| {
            gpu::resource_create_2d(first_id + i as u32, format::B8G8R8A8_UNORM, 16, 16)
                .into_bytes()
        },
        ok,
    )?;
    pipelined(
        fe,
        64,
        n,
        |i| gpu::resource_attach_backing(first_id + i as u32, &entry).into_bytes(),
        ok,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn display_info(ty: u32, width: u32, height: u32, enabled: u32) -> Resp {
        let mut b = vec![0u8; 24 + 16 * 24];
        b[0..4].copy_from_slice(&ty.to_le_bytes());
        b[24 + 8..24 + 12].copy_from_slice(&width.to_le_bytes());
        b[24 + 12..24 + 16].copy_from_slice(&height.to_le_bytes());
        b[24 + 16..24 + 20].copy_from_slice(&enabled.to_le_bytes());
        Resp::parse(&b).unwrap()
    }

    #[test]
    fn display_answers_are_checked() {
        let want = DisplayAnswer::Mode(1280, 800);
        assert!(want
            .check(&display_info(ty::OK_DISPLAY_INFO, 1280, 800, 1))
            .is_ok());
        // Wrong size, disabled output, wrong response type: not counted.
        assert!(want
            .check(&display_info(ty::OK_DISPLAY_INFO, 1024, 768, 1))
            .is_err());
        assert!(want
            .check(&display_info(ty::OK_DISPLAY_INFO, 1280, 800, 0))
            .is_err());
        assert!(want
            .check(&display_info(ty::OK_NODATA, 1280, 800, 1))
            .is_err());
        assert!(DisplayAnswer::Any
            .check(&display_info(ty::OK_NODATA, 0, 0, 0))
            .is_ok());
    }

    #[test]
    fn shuffled_is_a_scrambled_permutation() {
        let v = shuffled(4050);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..4050).collect::<Vec<_>>());
        let in_place = v.iter().enumerate().filter(|(i, &p)| *i == p).count();
        assert!(in_place < 50, "{in_place} of 4050 pages kept their place");
        let ascending = v.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(ascending < 50, "{ascending} neighbours stayed adjacent");
    }
}
