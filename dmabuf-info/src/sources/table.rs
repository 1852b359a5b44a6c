//! Source 3: the exporter-name table (`exp_name` from fdinfo), after configuration quirks.

use crate::config::{glob_match, Quirk};
use crate::info::{Answer, CacheAttr, NeedsSync, Source};
use crate::platform::DeviceAccess;

use super::Partial;

/// How a table row answers `needs_sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRule {
    /// Never needs SYNC.
    No,
    /// Always needs SYNC.
    Yes,
    /// Cannot tell from the name.
    Unknown,
    /// Cached pages whose exporter does cache maintenance in `begin/end_cpu_access` only for
    /// device attachments (udmabuf, the system and CMA heaps): needs SYNC exactly when a device
    /// that does not snoop CPU caches may access the buffer ([`DeviceAccess::NonCoherent`]).
    ///
    /// Why this, and why it is the default refusal on arm64: the CPU mapping is write-back on
    /// every platform, and a guest given `map_info` CACHED maps it write-back too (arm64
    /// without FWB: stage 1 Normal-WB combined with stage 2 Normal-WB is WB; with FWB stage 2
    /// forces WB), so host and guest CPUs see one coherent copy through the hardware cache
    /// coherency of the inner-shareable domain. A device that does not snoop reads DRAM: guest
    /// writes still in a CPU cache are invisible to it, and its writes are hidden behind stale
    /// lines the guest reads. Cleaning and invalidating to the point of coherency around device
    /// access is what `DMA_BUF_IOCTL_SYNC` does (`dma_sync_sg_for_{cpu,device}` on each
    /// attachment); a guest cannot issue it, and does not know when the host's device runs. The
    /// library cannot see attachments (none in fdinfo), and one made after the mapping was
    /// granted would not be seen anyway, so the answer follows the configured
    /// [`DeviceAccess`]: refused by default where devices are not DMA-coherent (arm64 SoCs),
    /// allowed on `coherent` hosts and `cpu-only` deployments.
    OnlyWithNonCoherentDevices,
}

impl SyncRule {
    /// Resolves the rule for the configured device access.
    pub fn resolve(self, devices: DeviceAccess) -> NeedsSync {
        match self {
            SyncRule::No => NeedsSync::No,
            SyncRule::Yes => NeedsSync::Yes,
            SyncRule::Unknown => NeedsSync::Unknown,
            SyncRule::OnlyWithNonCoherentDevices => {
                if devices.cached_is_coherent() {
                    NeedsSync::No
                } else {
                    NeedsSync::Yes
                }
            }
        }
    }
}

/// One row of the built-in table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRow {
    /// Exporter name or glob.
    pub pattern: &'static str,
    /// CPU mapping attribute.
    pub cache: CacheAttr,
    /// SYNC rule.
    pub needs_sync: SyncRule,
    /// Whether the attribute is fixed for the buffer's lifetime.
    pub stable: bool,
    /// Why.
    pub note: &'static str,
    /// Whether buffers with this name come from a DRM driver (only then are DRM devices
    /// asked, even when the caller passes a DRM fd).
    pub drm: bool,
}

/// The built-in exporter table, first match wins.
pub const BUILTIN: &[TableRow] = &[
    TableRow {
        pattern: "udmabuf",
        cache: CacheAttr::Cached,
        needs_sync: SyncRule::OnlyWithNonCoherentDevices,
        stable: true,
        note: "memfd pages mapped cached; begin/end_cpu_access syncs attached devices",
        drm: false,
    },
    TableRow {
        pattern: "system",
        cache: CacheAttr::Cached,
        needs_sync: SyncRule::OnlyWithNonCoherentDevices,
        stable: true,
        note: "system dma-heap: cached pages, syncs attached devices",
        drm: false,
    },
    TableRow {
        pattern: "default_cma_region",
        cache: CacheAttr::Cached,
        needs_sync: SyncRule::OnlyWithNonCoherentDevices,
        stable: true,
        note: "default CMA heap: cached, syncs attached devices",
        drm: false,
    },
    TableRow {
        pattern: "linux,cma",
        cache: CacheAttr::Cached,
        needs_sync: SyncRule::OnlyWithNonCoherentDevices,
        stable: true,
        note: "CMA heap named after its reserved-memory region",
        drm: false,
    },
    TableRow {
        pattern: "*-uncached",
        cache: CacheAttr::WriteCombined,
        needs_sync: SyncRule::No,
        stable: true,
        note: "uncached dma-heap (vendor): WC mapping, no cache maintenance needed",
        drm: false,
    },
    TableRow {
        pattern: "*_uncached",
        cache: CacheAttr::WriteCombined,
        needs_sync: SyncRule::No,
        stable: true,
        note: "uncached dma-heap (vendor spelling): WC mapping",
        drm: false,
    },
    TableRow {
        pattern: "i915",
        cache: CacheAttr::Unknown,
        needs_sync: SyncRule::Unknown,
        stable: false,
        note: "i915: WB shmem or WC LMEM, coherent only on LLC hosts: ask I915_GEM_GET_CACHING",
        drm: true,
    },
    TableRow {
        pattern: "msm",
        cache: CacheAttr::Unknown,
        needs_sync: SyncRule::Unknown,
        stable: true,
        note: "msm: per-buffer MSM_BO_* flags, fixed at creation: ask MSM_INFO_GET_FLAGS",
        drm: true,
    },
    TableRow {
        pattern: "nv_dmabuf",
        cache: CacheAttr::Uncached,
        needs_sync: SyncRule::Unknown,
        stable: false,
        note: "NVIDIA: often not mmappable, else uncached BAR1: do not map",
        drm: false,
    },
    TableRow {
        pattern: "nvidia",
        cache: CacheAttr::Uncached,
        needs_sync: SyncRule::Unknown,
        stable: false,
        note: "NVIDIA (older drivers): do not map",
        drm: false,
    },
    TableRow {
        pattern: "virtio_gpu",
        cache: CacheAttr::Unknown,
        needs_sync: SyncRule::Unknown,
        stable: false,
        note: "virtio-gpu (nested guest): attribute follows the host's map_info, not exposed",
        drm: true,
    },
    TableRow {
        pattern: "drm",
        cache: CacheAttr::Unknown,
        needs_sync: SyncRule::Unknown,
        stable: false,
        note: "generic PRIME export (amdgpu, xe, nouveau, vgem, shmem helpers, ...): ambiguous",
        drm: true,
    },
];

/// The first built-in row matching `exporter`.
pub fn lookup(exporter: &str) -> Option<&'static TableRow> {
    BUILTIN.iter().find(|r| glob_match(r.pattern, exporter))
}

/// Whether DRM devices should be asked about a buffer from `exporter`: not for exporters
/// the table knows to be something else (udmabuf, dma-heaps, NVIDIA).
pub fn may_be_drm(exporter: &str) -> bool {
    lookup(exporter).is_none_or(|r| r.drm)
}

/// The table's answers for `exporter` with the configured device access.
pub fn answer(exporter: &str, devices: DeviceAccess) -> Partial {
    match lookup(exporter) {
        Some(row) => Partial {
            cache: Some(Answer::new(row.cache, Source::ExporterTable)),
            needs_sync: Some(Answer::new(
                row.needs_sync.resolve(devices),
                Source::ExporterTable,
            )),
            stable: Some(Answer::new(row.stable, Source::ExporterTable)),
        },
        None => Partial::default(),
    }
}

/// A configuration quirk's answers.
pub fn quirk_answer(q: &Quirk) -> Partial {
    let src = Source::ConfigQuirk(q.name.clone());
    Partial {
        cache: q.cache.map(|v| Answer::new(v, src.clone())),
        needs_sync: q.needs_sync.map(|v| Answer::new(v, src.clone())),
        stable: q.stable.map(|v| Answer::new(v, src.clone())),
    }
}
