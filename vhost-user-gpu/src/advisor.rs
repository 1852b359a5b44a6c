//! The map advisor over `dmabuf-info`: may a guest map this host buffer, and with which
//! `VIRTIO_GPU_MAP_CACHE_*` attribute?
//!
//! Every buffer is asked about before `SHMEM_MAP`. `dmabuf-info` identifies it (dma-buf or
//! memfd), finds its cache attribute and whether CPU access needs `DMA_BUF_IOCTL_SYNC` (kernel
//! ioctl, driver ioctl on the allocator's DRM device, configuration quirks, exporter table),
//! and its guest policy decides for the configured platform and device access. Anything it
//! cannot vouch for is refused: the guest's `mmap()` then fails cleanly instead of corrupting
//! data silently.
//!
//! Freshness: the inspector caches only answers that hold for the buffer's life, checked
//! against the inode's change time; answers that another handle holder can change (i915's
//! caching level: `I915_GEM_SET_CACHING`, display pinning) are asked again on every call, so
//! each `SHMEM_MAP` is decided on a current answer (`dmabuf_info::Inspector`).

use std::os::fd::BorrowedFd;

use dmabuf_info::{BufferInfo, Config, Decision, DeviceAccess, Inspector, Platform};

use crate::device::ports::{MapAdvice, MapAdvisor};

/// A [`MapAdvisor`] backed by a `dmabuf_info::Inspector`.
#[derive(Debug)]
pub struct DmabufInfoAdvisor {
    inspector: Inspector,
}

impl DmabufInfoAdvisor {
    /// An advisor with `config`; `platform`, if given, overrides the configuration's and the
    /// detected platform (`--platform`).
    pub fn new(mut config: Config, platform: Option<Platform>) -> Self {
        if platform.is_some() {
            config.platform = platform;
        }
        DmabufInfoAdvisor {
            inspector: Inspector::new(config),
        }
    }

    /// The platform decisions are made for.
    pub fn platform(&self) -> Platform {
        self.inspector.platform()
    }

    /// Which devices may access the buffers (configured, else the platform's default).
    pub fn devices(&self) -> DeviceAccess {
        self.inspector.devices()
    }
}

fn sources(info: &BufferInfo) -> String {
    format!(
        "{} exported by \"{}\": cache {} ({}), needs_sync {} ({})",
        info.kind.as_str(),
        info.exporter,
        info.cache.value.as_str(),
        info.cache.source,
        info.needs_sync.value.as_str(),
        info.needs_sync.source
    )
}

impl MapAdvisor for DmabufInfoAdvisor {
    fn advise(&self, fd: BorrowedFd<'_>, drm_fd: Option<BorrowedFd<'_>>) -> MapAdvice {
        let info = match self.inspector.inspect(fd, drm_fd) {
            Ok(info) => info,
            Err(e) => {
                return MapAdvice::Refuse {
                    reason: format!("cannot inspect the buffer: {e}"),
                }
            }
        };
        match self.inspector.decide(&info) {
            Decision::Allow(cache) => MapAdvice::Allow {
                map_info: cache.virtio_value(),
                source: sources(&info),
            },
            Decision::Refuse(reason) => MapAdvice::Refuse {
                reason: format!(
                    "{reason} [{}; platform {}, devices {}]",
                    sources(&info),
                    self.inspector.platform(),
                    self.inspector.devices()
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn memfd() -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("advisor-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        fd
    }

    #[test]
    fn memfd_is_allowed_cached_on_x86() {
        let advisor = DmabufInfoAdvisor::new(Config::default(), Some(Platform::X86Intel));
        let fd = memfd();
        match advisor.advise(fd.as_fd(), None) {
            MapAdvice::Allow { map_info, source } => {
                assert_eq!(map_info, 1, "VIRTIO_GPU_MAP_CACHE_CACHED");
                assert!(source.contains("memfd"), "{source}");
            }
            other => panic!("expected Allow, got {other:?}"),
        }
    }

    #[test]
    fn quirk_saying_needs_sync_refuses_with_its_source() {
        let config = Config::from_toml_str(
            r#"
            [[exporter]]
            name = "memfd"
            needs_sync = "yes"
            "#,
        )
        .unwrap();
        let advisor = DmabufInfoAdvisor::new(config, Some(Platform::X86Intel));
        let fd = memfd();
        match advisor.advise(fd.as_fd(), None) {
            MapAdvice::Refuse { reason } => {
                assert!(reason.contains("memfd"), "{reason}");
                assert!(
                    reason.contains("quirk"),
                    "reason names the quirk as source: {reason}"
                );
            }
            other => panic!("expected Refuse, got {other:?}"),
        }
    }

    #[test]
    fn a_non_buffer_is_refused() {
        let advisor = DmabufInfoAdvisor::new(Config::default(), Some(Platform::X86Intel));
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(
            advisor.advise(file.as_fd(), None),
            MapAdvice::Refuse { .. }
        ));
    }

    #[test]
    fn platform_override_wins() {
        let advisor = DmabufInfoAdvisor::new(Config::default(), Some(Platform::Arm64));
        assert_eq!(advisor.platform(), Platform::Arm64);
        assert_eq!(advisor.devices(), DeviceAccess::NonCoherent);
        let config = Config::from_toml_str("devices = \"cpu-only\"").unwrap();
        let advisor = DmabufInfoAdvisor::new(config, Some(Platform::Arm64));
        assert_eq!(advisor.devices(), DeviceAccess::CpuOnly);
    }

    /// Asked before every map, the advisor answers for the buffer as it is now: a memfd whose
    /// inode changed is inspected again, and two buffers never share an answer.
    #[test]
    fn every_advice_is_about_the_buffer_as_it_is() {
        let advisor = DmabufInfoAdvisor::new(Config::default(), Some(Platform::X86Amd));
        let a = memfd();
        let b = rustix::fs::memfd_create("advisor-other", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        for _ in 0..3 {
            for (fd, name) in [(a.as_fd(), "advisor-test"), (b.as_fd(), "advisor-other")] {
                match advisor.advise(fd, None) {
                    MapAdvice::Allow { map_info, source } => {
                        assert_eq!(map_info, 1);
                        assert!(source.contains("memfd"), "{name}: {source}");
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        assert_eq!(advisor.inspector.cached_buffers(), 2);
    }
}
