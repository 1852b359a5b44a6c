//! Identification and answers for descriptors this host has: memfd, regular file, pipe,
//! socket, a closed descriptor. (Real dma-bufs: `tests/real_exporters.rs`, run in a guest.)

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};

use dmabuf_info::ffi::with_raw_fd;
use dmabuf_info::{
    BufferKind, CacheAttr, Config, Decision, Error, FileKind, Inspector, MapCache, NeedsSync,
    Platform, Source, SyncAccess, SyncGuard,
};
use rustix::fs::MemfdFlags;

fn inspector(platform: Platform) -> Inspector {
    Inspector::new(Config {
        platform: Some(platform),
        ..Config::default()
    })
}

fn memfd(name: &str, len: u64) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, len).expect("ftruncate");
    fd
}

#[test]
fn memfd_is_cached_coherent_stable_and_mappable() {
    let fd = memfd("frame", 8192);
    let ins = inspector(Platform::X86Intel);
    let info = ins.inspect(fd.as_fd(), None).expect("memfd is a buffer");
    assert_eq!(info.kind, BufferKind::Memfd);
    assert_eq!(info.exporter, "memfd");
    assert_eq!(info.name.as_deref(), Some("frame"));
    assert_eq!(info.size, 8192);
    let st = rustix::fs::fstat(&fd).unwrap();
    assert_eq!(info.inode, st.st_ino);
    assert_eq!(info.cache.value, CacheAttr::Cached);
    assert_eq!(info.cache.source, Source::Memfd);
    assert_eq!(info.needs_sync.value, NeedsSync::No);
    assert!(info.stable.value);
    assert_eq!(
        info.kernel_ioctl, None,
        "the dma-buf ioctl is not asked for a memfd"
    );
    assert_eq!(ins.decide(&info), Decision::Allow(MapCache::Cached));
}

#[test]
fn memfd_size_follows_truncate_even_when_cached() {
    let fd = memfd("grow", 4096);
    let ins = inspector(Platform::X86Amd);
    assert_eq!(ins.inspect(fd.as_fd(), None).unwrap().size, 4096);
    rustix::fs::ftruncate(&fd, 3 * 4096).unwrap();
    assert_eq!(ins.inspect(fd.as_fd(), None).unwrap().size, 3 * 4096);
    assert_eq!(ins.cached_buffers(), 1);
}

#[test]
fn memfd_quirk_overrides_the_memfd_answer() {
    let config = Config::from_toml_str(
        "platform = \"x86-amd\"\n[[exporter]]\nname = \"memfd\"\nneeds_sync = \"yes\"\n",
    )
    .unwrap();
    let ins = Inspector::new(config);
    let fd = memfd("refused", 4096);
    let info = ins.inspect(fd.as_fd(), None).unwrap();
    assert_eq!(info.needs_sync.value, NeedsSync::Yes);
    assert_eq!(info.needs_sync.source, Source::ConfigQuirk("memfd".into()));
    // Fields the quirk does not set still come from the memfd source.
    assert_eq!(info.cache.source, Source::Memfd);
    let d = ins.decide(&info);
    assert!(!d.is_allowed(), "{d}");
    assert!(d.to_string().contains("config quirk \"memfd\""), "{d}");
}

#[test]
fn memfd_quirk_by_name_applies_to_memfds_of_that_name_only() {
    let config = Config::from_toml_str(
        "platform = \"x86-amd\"\n[[exporter]]\nname = \"memfd:llvmpipe*\"\nneeds_sync = \"yes\"\n",
    )
    .unwrap();
    let ins = Inspector::new(config);
    let named = memfd("llvmpipe memory fd", 4096);
    let info = ins.inspect(named.as_fd(), None).unwrap();
    assert_eq!(info.needs_sync.value, NeedsSync::Yes);
    assert_eq!(
        info.needs_sync.source,
        Source::ConfigQuirk("memfd:llvmpipe*".into())
    );
    assert!(!ins.decide(&info).is_allowed());
    let other = memfd("vkr-shmem", 4096);
    let info = ins.inspect(other.as_fd(), None).unwrap();
    assert_eq!(info.needs_sync.value, NeedsSync::No);
    assert_eq!(info.needs_sync.source, Source::Memfd);
    assert!(ins.decide(&info).is_allowed());
}

#[test]
fn regular_file_is_named() {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(b"not a buffer").unwrap();
    let err = inspector(Platform::X86Intel)
        .inspect(f.as_fd(), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotDmaBuf {
                what: FileKind::RegularFile
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "descriptor is a regular file, not a dma-buf or memfd"
    );
}

#[test]
fn tmpfs_file_that_is_not_a_memfd_is_a_regular_file() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let f = std::fs::File::create(dir.path().join("x")).unwrap();
    let err = inspector(Platform::X86Intel)
        .inspect(f.as_fd(), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotDmaBuf {
                what: FileKind::RegularFile
            }
        ),
        "{err:?}"
    );
}

#[test]
fn pipe_is_named() {
    let (r, w) = rustix::pipe::pipe().unwrap();
    for fd in [r.as_fd(), w.as_fd()] {
        let err = inspector(Platform::X86Intel).inspect(fd, None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotDmaBuf {
                    what: FileKind::Pipe
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("a pipe"));
    }
}

#[test]
fn socket_is_named() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = inspector(Platform::X86Intel)
        .inspect(a.as_fd(), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotDmaBuf {
                what: FileKind::Socket
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("a socket"));
}

#[test]
fn directory_and_char_device_and_anon_inode_are_named() {
    let ins = inspector(Platform::X86Intel);
    let dir = std::fs::File::open("/").unwrap();
    assert!(matches!(
        ins.inspect(dir.as_fd(), None),
        Err(Error::NotDmaBuf {
            what: FileKind::Directory
        })
    ));
    let null = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(
        ins.inspect(null.as_fd(), None),
        Err(Error::NotDmaBuf {
            what: FileKind::CharDevice
        })
    ));
    let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    match ins.inspect(ev.as_fd(), None) {
        Err(Error::NotDmaBuf {
            what: FileKind::AnonInode(k),
        }) => assert_eq!(k, "[eventfd]"),
        other => panic!("eventfd gave {other:?}"),
    }
}

/// A descriptor number that cannot be open: at or above RLIMIT_NOFILE, so no concurrently
/// running test can be handed it either.
fn never_open_fd() -> i32 {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let cur = lim.current.unwrap_or(1 << 20).min(i32::MAX as u64 - 8);
    cur as i32 + 7
}

#[test]
fn closed_fd_is_bad_fd() {
    let ins = inspector(Platform::X86Intel);
    let raw = never_open_fd();
    let err = with_raw_fd(raw, |fd| ins.inspect(fd, None)).unwrap_err();
    assert!(matches!(err, Error::BadFd), "{err:?}");
    assert_eq!(err.to_string(), "not an open file descriptor");
    // A descriptor that was open and is closed now. Another test thread may reuse the
    // number at once; then it must at least not be the closed memfd any more.
    let f = memfd("closed", 4096);
    let raw = f.as_raw_fd();
    let ino = rustix::fs::fstat(&f).unwrap().st_ino;
    drop(f);
    match with_raw_fd(raw, |fd| rustix::fs::fstat(fd).map(|st| st.st_ino)) {
        Err(Error::BadFd) => {}
        Ok(Ok(other)) => assert_ne!(other, ino, "closed memfd still reachable"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sync_guard_on_memfd_reports_not_a_dma_buf() {
    let fd = memfd("nosync", 4096);
    let err = SyncGuard::begin(fd.as_fd(), SyncAccess::ReadWrite).unwrap_err();
    match err {
        Error::Io { context, source } => {
            assert!(context.contains("DMA_BUF_IOCTL_SYNC"));
            assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn repeated_queries_hit_the_cache() {
    let fd = memfd("cached", 4096);
    let ins = inspector(Platform::X86Intel);
    let first = ins.inspect(fd.as_fd(), None).unwrap();
    for _ in 0..100 {
        assert_eq!(ins.inspect(fd.as_fd(), None).unwrap(), first);
        assert_eq!(
            ins.decide_fd(fd.as_fd(), None).unwrap(),
            Decision::Allow(MapCache::Cached)
        );
    }
    assert_eq!(ins.cached_buffers(), 1);
    let other = memfd("other", 4096);
    ins.inspect(other.as_fd(), None).unwrap();
    assert_eq!(ins.cached_buffers(), 2);
    ins.clear_cache();
    assert_eq!(ins.cached_buffers(), 0);
}

#[test]
fn cache_capacity_bounds_memory() {
    let ins = Inspector::new(Config {
        platform: Some(Platform::X86Amd),
        cache_capacity: 3,
        ..Config::default()
    });
    let fds: Vec<_> = (0..7).map(|i| memfd(&format!("m{i}"), 4096)).collect();
    for fd in &fds {
        ins.inspect(fd.as_fd(), None).unwrap();
        assert!(ins.cached_buffers() <= 3);
    }
}
