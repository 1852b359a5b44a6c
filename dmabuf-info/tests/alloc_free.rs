//! The cached query paths allocate nothing: a counting global allocator (per thread) sees
//! zero allocations for repeated `decide_fd` and `query_uapi` calls.
//!
//! The counting allocator implements the `unsafe` `GlobalAlloc` trait: the only `unsafe` of
//! this test.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::AsFd;

use dmabuf_info::uapi::DmaBufInfoArg;
use dmabuf_info::{Config, Decision, Inspector, KernelAbi, MapCache, Platform};

struct Counting;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    COUNT.with(|c| c.get())
}

#[test]
fn cached_paths_do_not_allocate() {
    let fd = rustix::fs::memfd_create("alloc", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let ins = Inspector::new(Config {
        platform: Some(Platform::X86Amd),
        ..Config::default()
    });
    let before = allocations();
    ins.inspect(fd.as_fd(), None).unwrap();
    assert!(
        allocations() > before,
        "the counter works: the first inspect allocates"
    );

    let before = allocations();
    for _ in 0..1000 {
        assert_eq!(
            ins.decide_fd(fd.as_fd(), None).unwrap(),
            Decision::Allow(MapCache::Cached)
        );
        let mut arg = DmaBufInfoArg {
            param: 1,
            ..Default::default()
        };
        assert_eq!(
            ins.query_uapi(fd.as_fd(), &mut arg, KernelAbi::V2),
            Err(libc::ENOTTY)
        );
    }
    assert_eq!(allocations() - before, 0, "cached queries allocated");
}
