//! Source 2: driver query ioctls on the exporting DRM device.
//!
//! The dma-buf is imported with `PRIME_FD_TO_HANDLE` into a DRM file this module opened
//! itself, queried, and the handle closed again. The import is never done on the caller's own
//! DRM file: if that file already held a handle for the buffer, PRIME would return that same
//! handle and the `GEM_CLOSE` would close the caller's object. A caller-supplied DRM fd is
//! therefore used to find the device; the device's render node (or the same node) is opened
//! privately.
//!
//! Without a caller fd, render nodes are tried, but only of drivers that can answer for the
//! exporter name (`i915` -> i915, `msm` -> msm, `drm` -> msm, panfrost, panthor, amdgpu), to
//! avoid pointless foreign imports (which attach and map the buffer on another device).
//!
//! What each driver's answer means is decided by the pure `*_answer` functions below.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::info::{Answer, CacheAttr, Driver, DriverProbe, NeedsSync, Source};
use crate::uapi;

use super::Partial;

/// A driver's interpretation of its query result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverAnswer {
    /// Cache attribute, if the driver tells.
    pub cache: Option<CacheAttr>,
    /// SYNC requirement, if the driver tells.
    pub needs_sync: Option<NeedsSync>,
    /// Stability, if the driver tells.
    pub stable: Option<bool>,
    /// Human-readable explanation.
    pub explanation: String,
}

impl DriverAnswer {
    fn into_partial(self, driver: Driver) -> Partial {
        let src = Source::DriverIoctl(driver);
        Partial {
            cache: self.cache.map(|v| Answer::new(v, src.clone())),
            needs_sync: self.needs_sync.map(|v| Answer::new(v, src.clone())),
            stable: self.stable.map(|v| Answer::new(v, src.clone())),
        }
    }
}

/// msm `MSM_INFO_GET_FLAGS` -> answer. MSM_BO_* cache flags are fixed at creation.
pub fn msm_answer(flags: u64) -> Option<DriverAnswer> {
    let (cache, sync, what) = match flags & uapi::MSM_BO_CACHE_MASK {
        uapi::MSM_BO_WC => (CacheAttr::WriteCombined, NeedsSync::No, "MSM_BO_WC"),
        // Deprecated; the driver maps it write-combined.
        uapi::MSM_BO_UNCACHED => (
            CacheAttr::WriteCombined,
            NeedsSync::No,
            "MSM_BO_UNCACHED (= WC)",
        ),
        uapi::MSM_BO_CACHED_COHERENT => {
            (CacheAttr::Cached, NeedsSync::No, "MSM_BO_CACHED_COHERENT")
        }
        uapi::MSM_BO_CACHED => (
            CacheAttr::Cached,
            NeedsSync::Yes,
            "MSM_BO_CACHED (not coherent)",
        ),
        _ => return None,
    };
    Some(DriverAnswer {
        cache: Some(cache),
        needs_sync: Some(sync),
        stable: Some(true),
        explanation: format!("flags {flags:#x}: {what}"),
    })
}

/// panfrost `QUERY_BO_INFO` / panthor `BO_QUERY_INFO` -> answer.
///
/// Buffers the driver imported from elsewhere (`*_BO_IS_IMPORTED`) are not its own: no answer.
/// Without `*_BO_WB_MMAP` the CPU mapping is write-combined (or cached on an IO-coherent GPU,
/// which this query does not tell), so the cache attribute is only claimed for WB buffers;
/// whether a WB buffer is coherent depends on the GPU's coherency, which is not queried here:
/// `needs_sync` is then `Unknown`.
pub fn pan_answer(driver: Driver, info: &uapi::DrmPanBoQueryInfo) -> Option<DriverAnswer> {
    let (imported, wb) = match driver {
        Driver::Panfrost => (
            info.extra_flags & uapi::DRM_PANFROST_BO_IS_IMPORTED != 0,
            info.create_flags & uapi::PANFROST_BO_WB_MMAP != 0,
        ),
        Driver::Panthor => (
            info.extra_flags & uapi::DRM_PANTHOR_BO_IS_IMPORTED != 0,
            info.create_flags & uapi::DRM_PANTHOR_BO_WB_MMAP != 0,
        ),
        _ => return None,
    };
    if imported {
        return None;
    }
    Some(if wb {
        DriverAnswer {
            cache: Some(CacheAttr::Cached),
            needs_sync: Some(NeedsSync::Unknown),
            stable: Some(true),
            explanation: format!(
                "create_flags {:#x}: WB_MMAP, coherent only on an IO-coherent GPU",
                info.create_flags
            ),
        }
    } else {
        DriverAnswer {
            cache: None,
            needs_sync: None,
            stable: Some(true),
            explanation: format!(
                "create_flags {:#x}: no WB_MMAP (WC on non-coherent GPUs, cached on coherent ones)",
                info.create_flags
            ),
        }
    })
}

/// i915 `GEM_GET_CACHING` (+ `HAS_LLC`) -> answer. CPU mmaps of i915 objects are write-back;
/// they are coherent with the GPU only for CACHED objects on an LLC host.
pub fn i915_answer(caching: u32, has_llc: bool) -> Option<DriverAnswer> {
    let what = match caching {
        uapi::I915_CACHING_NONE => "I915_CACHING_NONE",
        uapi::I915_CACHING_CACHED => "I915_CACHING_CACHED",
        uapi::I915_CACHING_DISPLAY => "I915_CACHING_DISPLAY",
        _ => return None,
    };
    let coherent = caching == uapi::I915_CACHING_CACHED && has_llc;
    Some(DriverAnswer {
        cache: Some(CacheAttr::Cached),
        needs_sync: Some(if coherent {
            NeedsSync::No
        } else {
            NeedsSync::Yes
        }),
        stable: Some(true),
        explanation: format!("{what}, LLC {}", if has_llc { "yes" } else { "no" }),
    })
}

/// amdgpu `GET_GEM_CREATE_INFO` -> answer. The domains are the creation intent, not the
/// current placement: a VRAM-capable or USWC buffer is write-combined and TTM may migrate it
/// (not stable). A GTT-only cached buffer stays cached wherever TTM moves it (GTT or system).
/// A CPU-only domain is what amdgpu gives buffers it imported: not its own, no answer.
pub fn amdgpu_answer(info: &uapi::DrmAmdgpuGemCreateIn) -> Option<DriverAnswer> {
    let d = info.domains;
    if d & (uapi::AMDGPU_GEM_DOMAIN_GTT | uapi::AMDGPU_GEM_DOMAIN_VRAM) == 0 {
        return None;
    }
    let vram = d & uapi::AMDGPU_GEM_DOMAIN_VRAM != 0;
    let uswc = info.domain_flags & uapi::AMDGPU_GEM_CREATE_CPU_GTT_USWC != 0;
    Some(if vram || uswc {
        DriverAnswer {
            cache: Some(CacheAttr::WriteCombined),
            needs_sync: Some(NeedsSync::No),
            stable: Some(false),
            explanation: format!(
                "domains {d:#x} flags {:#x}: {}, TTM may migrate it",
                info.domain_flags,
                if vram { "VRAM-capable" } else { "USWC" }
            ),
        }
    } else {
        DriverAnswer {
            cache: Some(CacheAttr::Cached),
            needs_sync: Some(NeedsSync::No),
            stable: Some(true),
            explanation: format!("domains {d:#x}: GTT only, cached and snooped"),
        }
    })
}

/// Which drivers may have exported a buffer with this `exp_name`.
pub fn candidate_drivers(exporter: &str) -> &'static [Driver] {
    match exporter {
        "i915" => &[Driver::I915],
        "msm" => &[Driver::Msm],
        "drm" => &[
            Driver::Msm,
            Driver::Panfrost,
            Driver::Panthor,
            Driver::Amdgpu,
        ],
        _ => &[],
    }
}

fn open_node(path: &Path) -> Result<OwnedFd, String> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// The node to open privately for the device of `drm_fd`: its render node if it has one,
/// else the node the fd refers to.
pub fn private_node_for(drm_fd: BorrowedFd<'_>) -> Option<PathBuf> {
    let st = rustix::fs::fstat(drm_fd).ok()?;
    let rdev = st.st_rdev;
    let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let sys = format!("/sys/dev/char/{maj}:{min}/device/drm");
    if let Ok(dir) = std::fs::read_dir(&sys) {
        let mut renders: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("renderD"))
            .collect();
        renders.sort();
        if let Some(r) = renders.first() {
            let p = PathBuf::from(format!("/dev/dri/{r}"));
            if p.exists() {
                return Some(p);
            }
        }
    }
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", drm_fd.as_raw_fd())).ok()
}

fn render_nodes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir("/dev/dri") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Imports `dmabuf` into `node`, asks `driver` (if it has a query), closes the handle.
fn ask(
    node: BorrowedFd<'_>,
    dmabuf: BorrowedFd<'_>,
    driver: Option<Driver>,
    probe: &mut DriverProbe,
) -> Option<DriverAnswer> {
    let handle = match uapi::drm_prime_fd_to_handle(node, dmabuf) {
        Ok(h) => h,
        Err(e) => {
            probe.outcome = format!("PRIME_FD_TO_HANDLE failed: {e}");
            return None;
        }
    };
    probe.imported = true;
    let result: Result<Option<DriverAnswer>, String> = match driver {
        None => Err(format!("{} has no cache query ioctl", probe.driver)),
        Some(Driver::Msm) => uapi::msm_gem_get_flags(node, handle)
            .map(msm_answer)
            .map_err(|e| format!("MSM_INFO_GET_FLAGS: {e} (EINVAL = imported, not msm's own)")),
        Some(d @ Driver::Panfrost) => {
            uapi::pan_bo_query_info(node, uapi::PanQuery::Panfrost, handle)
                .map(|i| pan_answer(d, &i))
                .map_err(|e| format!("QUERY_BO_INFO: {e}"))
        }
        Some(d @ Driver::Panthor) => uapi::pan_bo_query_info(node, uapi::PanQuery::Panthor, handle)
            .map(|i| pan_answer(d, &i))
            .map_err(|e| format!("BO_QUERY_INFO: {e}")),
        Some(Driver::I915) => uapi::i915_gem_get_caching(node, handle)
            .map_err(|e| format!("GEM_GET_CACHING: {e} (ENODEV = discrete GPU)"))
            .and_then(|c| {
                let llc = uapi::i915_getparam(node, uapi::I915_PARAM_HAS_LLC)
                    .map_err(|e| format!("GETPARAM(HAS_LLC): {e}"))?;
                Ok(i915_answer(c, llc != 0))
            }),
        Some(Driver::Amdgpu) => uapi::amdgpu_gem_create_info(node, handle)
            .map(|i| amdgpu_answer(&i))
            .map_err(|e| format!("GEM_OP: {e}")),
    };
    if let Err(e) = uapi::drm_gem_close(node, handle) {
        // Our own file: the handle goes away with the fd anyway.
        probe.outcome = format!("GEM_CLOSE({handle}) failed: {e}; ");
    }
    match result {
        Ok(Some(a)) => {
            probe
                .outcome
                .push_str(&format!("handle {handle}: {}", a.explanation));
            Some(a)
        }
        Ok(None) => {
            probe.outcome.push_str(&format!(
                "handle {handle}: not the driver's own buffer, no answer"
            ));
            None
        }
        Err(e) => {
            probe.outcome.push_str(&format!("handle {handle}: {e}"));
            None
        }
    }
}

/// Asks the DRM driver(s) about `dmabuf`. Returns the answers and a record of every device
/// asked.
pub fn query(
    dmabuf: BorrowedFd<'_>,
    exporter: &str,
    drm_fd: Option<BorrowedFd<'_>>,
    probe_render_nodes: bool,
) -> (Partial, Vec<DriverProbe>) {
    let mut probes = Vec::new();
    if !super::table::may_be_drm(exporter) {
        // udmabuf, heaps, ...: importing into a DRM device would only attach it there.
        return (Partial::default(), probes);
    }
    let nodes: Vec<(PathBuf, bool)> = match drm_fd {
        Some(fd) => match private_node_for(fd) {
            Some(p) => vec![(p, true)],
            None => {
                probes.push(DriverProbe {
                    driver: String::new(),
                    node: String::new(),
                    imported: false,
                    outcome: "cannot find the device node of the given DRM fd".into(),
                });
                Vec::new()
            }
        },
        None if probe_render_nodes && !candidate_drivers(exporter).is_empty() => {
            render_nodes().into_iter().map(|p| (p, false)).collect()
        }
        None => Vec::new(),
    };
    for (path, from_caller) in nodes {
        let node_name = path.display().to_string();
        let fd = match open_node(&path) {
            Ok(fd) => fd,
            Err(e) => {
                probes.push(DriverProbe {
                    driver: String::new(),
                    node: node_name,
                    imported: false,
                    outcome: e,
                });
                continue;
            }
        };
        let name = match uapi::drm_driver_name(fd.as_fd()) {
            Ok(n) => n,
            Err(e) => {
                probes.push(DriverProbe {
                    driver: String::new(),
                    node: node_name,
                    imported: false,
                    outcome: format!("DRM_IOCTL_VERSION: {e}"),
                });
                continue;
            }
        };
        let driver = Driver::from_name(&name);
        if !from_caller && !driver.is_some_and(|d| candidate_drivers(exporter).contains(&d)) {
            // Not a driver that could have exported this: do not import it there.
            continue;
        }
        let mut probe = DriverProbe {
            driver: name,
            node: node_name,
            imported: false,
            outcome: String::new(),
        };
        let answer = ask(fd.as_fd(), dmabuf, driver, &mut probe);
        probes.push(probe);
        if let (Some(a), Some(d)) = (answer, driver) {
            return (a.into_partial(d), probes);
        }
    }
    (Partial::default(), probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msm_flags() {
        let a = msm_answer(uapi::MSM_BO_WC | 1).unwrap();
        assert_eq!(
            (a.cache, a.needs_sync),
            (Some(CacheAttr::WriteCombined), Some(NeedsSync::No))
        );
        let a = msm_answer(uapi::MSM_BO_CACHED).unwrap();
        assert_eq!(
            (a.cache, a.needs_sync),
            (Some(CacheAttr::Cached), Some(NeedsSync::Yes))
        );
        let a = msm_answer(uapi::MSM_BO_CACHED_COHERENT).unwrap();
        assert_eq!(
            (a.cache, a.needs_sync),
            (Some(CacheAttr::Cached), Some(NeedsSync::No))
        );
        let a = msm_answer(uapi::MSM_BO_UNCACHED).unwrap();
        assert_eq!(a.cache, Some(CacheAttr::WriteCombined));
        assert_eq!(msm_answer(0), None);
    }

    #[test]
    fn pan_flags() {
        let mut i = uapi::DrmPanBoQueryInfo {
            create_flags: uapi::PANFROST_BO_WB_MMAP,
            ..Default::default()
        };
        let a = pan_answer(Driver::Panfrost, &i).unwrap();
        assert_eq!(
            (a.cache, a.needs_sync),
            (Some(CacheAttr::Cached), Some(NeedsSync::Unknown))
        );
        i.extra_flags = uapi::DRM_PANFROST_BO_IS_IMPORTED;
        assert_eq!(pan_answer(Driver::Panfrost, &i), None);
        let i = uapi::DrmPanBoQueryInfo {
            create_flags: uapi::DRM_PANTHOR_BO_WB_MMAP,
            ..Default::default()
        };
        assert_eq!(
            pan_answer(Driver::Panthor, &i).unwrap().cache,
            Some(CacheAttr::Cached)
        );
        let i = uapi::DrmPanBoQueryInfo::default();
        let a = pan_answer(Driver::Panthor, &i).unwrap();
        assert_eq!((a.cache, a.needs_sync), (None, None));
    }

    #[test]
    fn i915_caching() {
        let a = i915_answer(uapi::I915_CACHING_CACHED, true).unwrap();
        assert_eq!(a.needs_sync, Some(NeedsSync::No));
        let a = i915_answer(uapi::I915_CACHING_CACHED, false).unwrap();
        assert_eq!(a.needs_sync, Some(NeedsSync::Yes));
        let a = i915_answer(uapi::I915_CACHING_NONE, true).unwrap();
        assert_eq!(a.needs_sync, Some(NeedsSync::Yes));
        assert_eq!(i915_answer(7, true), None);
    }

    #[test]
    fn amdgpu_domains() {
        let gtt = uapi::DrmAmdgpuGemCreateIn {
            domains: uapi::AMDGPU_GEM_DOMAIN_GTT,
            ..Default::default()
        };
        let a = amdgpu_answer(&gtt).unwrap();
        assert_eq!((a.cache, a.stable), (Some(CacheAttr::Cached), Some(true)));
        let uswc = uapi::DrmAmdgpuGemCreateIn {
            domains: uapi::AMDGPU_GEM_DOMAIN_GTT,
            domain_flags: uapi::AMDGPU_GEM_CREATE_CPU_GTT_USWC,
            ..Default::default()
        };
        let a = amdgpu_answer(&uswc).unwrap();
        assert_eq!(
            (a.cache, a.stable),
            (Some(CacheAttr::WriteCombined), Some(false))
        );
        let vram = uapi::DrmAmdgpuGemCreateIn {
            domains: uapi::AMDGPU_GEM_DOMAIN_VRAM | uapi::AMDGPU_GEM_DOMAIN_GTT,
            ..Default::default()
        };
        assert_eq!(amdgpu_answer(&vram).unwrap().stable, Some(false));
        let cpu = uapi::DrmAmdgpuGemCreateIn {
            domains: uapi::AMDGPU_GEM_DOMAIN_CPU,
            ..Default::default()
        };
        assert_eq!(amdgpu_answer(&cpu), None);
    }

    #[test]
    fn candidates_by_exporter_name() {
        assert_eq!(candidate_drivers("i915"), &[Driver::I915]);
        assert!(candidate_drivers("drm").contains(&Driver::Amdgpu));
        assert!(candidate_drivers("udmabuf").is_empty());
    }
}
