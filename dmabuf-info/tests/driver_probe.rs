//! The DRM driver source's device handling, with real system calls on what this host has
//! (no DRM device): a caller "DRM fd" that is not a DRM device, non-DRM exporters, no render
//! nodes.

use std::os::fd::AsFd;

use dmabuf_info::sources::driver;
use rustix::fs::MemfdFlags;

fn memfd() -> std::os::fd::OwnedFd {
    rustix::fs::memfd_create("not-a-dmabuf", MemfdFlags::CLOEXEC).unwrap()
}

#[test]
fn caller_fd_that_is_not_drm_is_reopened_and_rejected() {
    let buf = memfd();
    let null = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        driver::private_node_for(null.as_fd()).as_deref(),
        Some(std::path::Path::new("/dev/null"))
    );
    let (partial, probes) = driver::query(buf.as_fd(), "drm", Some(null.as_fd()), true);
    assert_eq!(partial, Default::default());
    assert_eq!(probes.len(), 1, "{probes:?}");
    assert_eq!(probes[0].node, "/dev/null");
    assert!(!probes[0].imported);
    assert!(
        probes[0].outcome.starts_with("DRM_IOCTL_VERSION"),
        "{}",
        probes[0].outcome
    );
}

#[test]
fn non_drm_exporters_are_never_imported() {
    let buf = memfd();
    let null = std::fs::File::open("/dev/null").unwrap();
    for exporter in ["udmabuf", "system", "system-uncached", "nv_dmabuf"] {
        let (partial, probes) = driver::query(buf.as_fd(), exporter, Some(null.as_fd()), true);
        assert_eq!(partial, Default::default(), "{exporter}");
        assert!(probes.is_empty(), "{exporter}: {probes:?}");
    }
}

#[test]
fn without_render_nodes_nothing_is_asked() {
    let buf = memfd();
    let has_dri = std::path::Path::new("/dev/dri").exists();
    let (partial, probes) = driver::query(buf.as_fd(), "drm", None, true);
    assert_eq!(partial, Default::default());
    if !has_dri {
        assert!(probes.is_empty(), "{probes:?}");
    }
    // Probing disabled by configuration.
    let (_, probes) = driver::query(buf.as_fd(), "drm", None, false);
    assert!(probes.is_empty());
}
