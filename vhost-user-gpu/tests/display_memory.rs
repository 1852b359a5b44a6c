//! The display sinks hold no more than the frame copies they declare
//! (`DisplaySink::frame_copies`), which is what the device charges a shown scanout for: the
//! process's heap is counted by a global allocator while each real sink takes a frame of
//! incompressible pixels (the PNG encoder's worst case), and the peak is compared with the
//! declared copies.
//!
//! Its one `unsafe`: the counting global allocator, which forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI64, Ordering};

use vhost::vhost_user::GpuBackend;
use vhost_user_gpu::device::ports::{DisplaySink, Frame};
use vhost_user_gpu::display::{PngCapture, QemuDisplay};
use vhost_user_gpu::protocol::{fourcc, Rect};
use vhost_user_gpu::queue_thread::QueueThreadScope;

/// Live heap bytes of the process, and their peak since the last [`reset_peak`].
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes as i64, Ordering::SeqCst) + bytes as i64;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes as i64, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator with the caller's arguments; the
// counters are atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given (`ptr` came from this allocator with `layout`).
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block first: the old one lives until the copy is done.
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn reset_peak() -> i64 {
    let live = LIVE.load(Ordering::SeqCst);
    PEAK.store(live, Ordering::SeqCst);
    live
}

/// Bytes the sinks may allocate beyond their frame copies: paths, a `BufWriter`, the PNG
/// encoder's row buffers and compressor state, a message header.
const SLACK: i64 = 512 << 10;

/// A `side`x`side` XRGB8888 frame of pseudo-random (incompressible) pixels.
fn noise(side: u32) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..side * side * 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn frame(data: &[u8], side: u32) -> Frame<'_> {
    Frame {
        width: side,
        height: side,
        stride: side * 4,
        drm_format: fourcc::XRGB8888,
        data,
    }
}

fn whole(side: u32) -> Rect {
    Rect {
        x: 0,
        y: 0,
        width: side,
        height: side,
    }
}

/// Peak heap growth while `run` shows one frame, checked against the sink's declared
/// copies.
fn check(name: &str, copies: u32, frame_bytes: i64, run: impl FnOnce()) {
    let base = reset_peak();
    run();
    let grown = PEAK.load(Ordering::SeqCst) - base;
    let allowed = i64::from(copies) * frame_bytes + SLACK;
    println!(
        "{name}: peak {grown} bytes for a {frame_bytes}-byte frame ({copies} copies declared)"
    );
    assert!(
        grown <= allowed,
        "{name} held {grown} bytes at its peak for a {frame_bytes}-byte frame; it declares \
         {copies} copies ({allowed} bytes with slack)"
    );
    assert!(
        grown >= frame_bytes,
        "{name} allocated only {grown} bytes: the measurement does not see its copy"
    );
}

#[test]
fn sinks_hold_no_more_than_their_declared_copies() {
    const SIDE: u32 = 512;
    let frame_bytes = i64::from(SIDE * SIDE * 4);
    let pixels = noise(SIDE);

    // PNG capture: its RGBA image, the writer's snapshot, the encoder's stream.
    let dir = tempfile::tempdir().unwrap();
    let mut capture = PngCapture::new(dir.path()).unwrap();
    let copies = capture.frame_copies();
    check("PngCapture", copies, frame_bytes, || {
        capture.scanout(0, Some((SIDE, SIDE)));
        capture.flush(0, &frame(&pixels, SIDE), whole(SIDE));
        // Dropping it writes what is pending and joins the writer thread.
        drop(capture);
    });
    assert!(PngCapture::path_for(dir.path(), 0).exists());

    // QEMU's display channel: the update converted to QEMU's format while it is sent. The
    // far end (QEMU) drains the socket into a buffer allocated before the measurement.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut drain = vec![0u8; 4 << 20];
    let qemu = std::thread::spawn(move || {
        let mut theirs = theirs;
        // Handshake: GET_PROTOCOL_FEATURES (answered: no features), SET_PROTOCOL_FEATURES.
        let mut hdr = [0u8; 12];
        theirs.read_exact(&mut hdr).unwrap();
        let reply: Vec<u8> = [1u32, 0x4, 8]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .chain(0u64.to_ne_bytes())
            .collect();
        std::io::Write::write_all(&mut theirs, &reply).unwrap();
        while let Ok(n) = theirs.read(&mut drain) {
            if n == 0 {
                break;
            }
        }
    });
    let _queue_thread = QueueThreadScope::enter();
    let mut display = QemuDisplay::new(GpuBackend::from_stream(ours));
    display.negotiate();
    let copies = display.frame_copies();
    check("QemuDisplay", copies, frame_bytes, || {
        display.flush(0, &frame(&pixels, SIDE), whole(SIDE));
    });
    drop(display);
    qemu.join().unwrap();
}
