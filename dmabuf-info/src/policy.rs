//! Guest mapping policy: may this buffer be mapped into a guest, and with which `map_info`?
//!
//! Rules, in order (the first that applies decides):
//! 1. `needs_sync` is `Yes` -> refuse: the guest cannot issue `DMA_BUF_IOCTL_SYNC`.
//! 2. `needs_sync` is `Unknown` -> refuse.
//! 3. `cache` is `Unknown` -> refuse.
//! 4. not `stable` -> refuse: the exporter may migrate the buffer and change its attribute.
//! 5. the platform must deliver the attribute to the guest:
//!    - cached buffers: allowed everywhere, `map_info` CACHED;
//!    - write-combined / uncached buffers: allowed (with the matching `map_info`) only where the
//!      guest's attribute is honoured: `x86-amd`, `x86-intel-guest-pat`, `arm64`. Refused on
//!      `x86-intel` (guest PAT ignored: the guest would map it write-back), `arm64-fwb` (RAM is
//!      always cacheable) and `other`.
//!
//! An allowed decision never carries `VIRTIO_GPU_MAP_CACHE_NONE`: [`MapCache`] has no such
//! value.
//!
//! # arm64, and cached buffers that only CPUs touch
//!
//! Rule 5 allows cached buffers on arm64 with and without FWB: the guest maps `map_info`
//! CACHED as Normal write-back at stage 1; without FWB stage 1 and stage 2 (Normal-WB for
//! memslot memory) combine to the stricter attribute, write-back; with FEAT_S2FWB stage 2
//! forces write-back. Host and guest then use the same attribute and the CPUs' caches are kept
//! coherent by hardware. So a cached udmabuf or system-heap buffer that only CPUs touch is safe
//! to map on arm64.
//!
//! What refuses such buffers by default on arm64 is rule 1, fed by the exporter table's
//! [`SyncRule::OnlyWithNonCoherentDevices`]: they need `DMA_BUF_IOCTL_SYNC` as soon as a device
//! that does not snoop CPU caches accesses them (an arm64 SoC GPU or display controller the
//! host compositor imports the scanout into), because only the exporter's
//! `begin/end_cpu_access` cleans and invalidates the caches for it, and a guest cannot ask for
//! that. Which devices will access a buffer is not visible from its descriptor and may change
//! after the mapping was granted, so it is configuration ([`DeviceAccess`]): `non-coherent`
//! (the default off x86) refuses, `coherent` (arm64 servers whose devices snoop) and `cpu-only`
//! (no device imports the buffers) allow them as CACHED.
//!
//! [`SyncRule::OnlyWithNonCoherentDevices`]: crate::sources::table::SyncRule::OnlyWithNonCoherentDevices
//! [`DeviceAccess`]: crate::DeviceAccess

use std::fmt;

use crate::info::{BufferInfo, CacheAttr, NeedsSync, Source};
use crate::platform::Platform;

/// The `map_info` a guest gets for an allowed mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MapCache {
    /// `VIRTIO_GPU_MAP_CACHE_CACHED` (1).
    #[serde(rename = "CACHED")]
    Cached,
    /// `VIRTIO_GPU_MAP_CACHE_UNCACHED` (2).
    #[serde(rename = "UNCACHED")]
    Uncached,
    /// `VIRTIO_GPU_MAP_CACHE_WC` (3).
    #[serde(rename = "WC")]
    WriteCombined,
}

impl MapCache {
    /// The `VIRTIO_GPU_MAP_CACHE_*` value: 1, 2 or 3 (never NONE = 0).
    pub fn virtio_value(self) -> u32 {
        match self {
            MapCache::Cached => 1,
            MapCache::Uncached => 2,
            MapCache::WriteCombined => 3,
        }
    }

    /// The virtio constant name without prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            MapCache::Cached => "CACHED",
            MapCache::Uncached => "UNCACHED",
            MapCache::WriteCombined => "WC",
        }
    }
}

impl fmt::Display for MapCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.virtio_value())
    }
}

/// Why a buffer must not be mapped into a guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// CPU access needs `DMA_BUF_IOCTL_SYNC`, which a guest cannot issue.
    NeedsSync {
        /// Who said so.
        source: Source,
    },
    /// Nobody could say whether CPU access needs SYNC.
    SyncUnknown {
        /// The source of the `Unknown` answer.
        source: Source,
    },
    /// The cache attribute is unknown.
    CacheUnknown {
        /// The source of the `Unknown` answer.
        source: Source,
    },
    /// The attribute may change (migration), or its stability is unknown.
    NotStable {
        /// Who said so.
        source: Source,
    },
    /// The platform cannot give the guest this attribute.
    PlatformCannotDeliver {
        /// The buffer's attribute.
        cache: CacheAttr,
        /// The platform.
        platform: Platform,
        /// The source of the cache answer.
        source: Source,
    },
}

impl RefuseReason {
    /// A stable numeric code (C ABI, JSON).
    pub fn code(&self) -> u32 {
        match self {
            RefuseReason::NeedsSync { .. } => 1,
            RefuseReason::SyncUnknown { .. } => 2,
            RefuseReason::CacheUnknown { .. } => 3,
            RefuseReason::NotStable { .. } => 4,
            RefuseReason::PlatformCannotDeliver { .. } => 5,
        }
    }

    /// A short machine-readable name (JSON).
    pub fn name(&self) -> &'static str {
        match self {
            RefuseReason::NeedsSync { .. } => "needs-sync",
            RefuseReason::SyncUnknown { .. } => "sync-unknown",
            RefuseReason::CacheUnknown { .. } => "cache-unknown",
            RefuseReason::NotStable { .. } => "not-stable",
            RefuseReason::PlatformCannotDeliver { .. } => "platform-cannot-deliver",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::NeedsSync { source } => write!(
                f,
                "CPU access needs DMA_BUF_IOCTL_SYNC, which a guest cannot issue (source: {source})"
            ),
            RefuseReason::SyncUnknown { source } => write!(
                f,
                "unknown whether CPU access needs DMA_BUF_IOCTL_SYNC (source: {source})"
            ),
            RefuseReason::CacheUnknown { source } => {
                write!(f, "CPU cache attribute is unknown (source: {source})")
            }
            RefuseReason::NotStable { source } => write!(
                f,
                "cache attribute may change while mapped (migration) or its stability is unknown (source: {source})"
            ),
            RefuseReason::PlatformCannotDeliver { cache, platform, source } => write!(
                f,
                "{cache} buffer cannot be given to a guest on {platform}: {} (source: {source})",
                platform.describe()
            ),
        }
    }
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Map it and report this `map_info`.
    Allow(MapCache),
    /// Do not map it.
    Refuse(RefuseReason),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(c) => write!(f, "allow, map_info {c}"),
            Decision::Refuse(r) => write!(f, "refuse: {r}"),
        }
    }
}

/// Whether `platform` delivers a host mapping with attribute `cache` to a guest unchanged.
pub fn platform_delivers(platform: Platform, cache: CacheAttr) -> Option<MapCache> {
    match cache {
        CacheAttr::Cached => Some(MapCache::Cached),
        CacheAttr::Unknown => None,
        CacheAttr::WriteCombined | CacheAttr::Uncached => match platform {
            Platform::X86Amd | Platform::X86IntelGuestPat | Platform::Arm64 => {
                Some(if cache == CacheAttr::WriteCombined {
                    MapCache::WriteCombined
                } else {
                    MapCache::Uncached
                })
            }
            Platform::X86Intel | Platform::Arm64Fwb | Platform::Other => None,
        },
    }
}

/// Decides from the three answers (the core of [`decide`], usable without a [`BufferInfo`]).
pub fn decide_parts(
    cache: (CacheAttr, &Source),
    needs_sync: (NeedsSync, &Source),
    stable: (bool, &Source),
    platform: Platform,
) -> Decision {
    match needs_sync.0 {
        NeedsSync::Yes => {
            return Decision::Refuse(RefuseReason::NeedsSync {
                source: needs_sync.1.clone(),
            })
        }
        NeedsSync::Unknown => {
            return Decision::Refuse(RefuseReason::SyncUnknown {
                source: needs_sync.1.clone(),
            })
        }
        NeedsSync::No => {}
    }
    if cache.0 == CacheAttr::Unknown {
        return Decision::Refuse(RefuseReason::CacheUnknown {
            source: cache.1.clone(),
        });
    }
    if !stable.0 {
        return Decision::Refuse(RefuseReason::NotStable {
            source: stable.1.clone(),
        });
    }
    match platform_delivers(platform, cache.0) {
        Some(m) => Decision::Allow(m),
        None => Decision::Refuse(RefuseReason::PlatformCannotDeliver {
            cache: cache.0,
            platform,
            source: cache.1.clone(),
        }),
    }
}

/// The guest mapping policy for `info` on `platform`.
pub fn decide(info: &BufferInfo, platform: Platform) -> Decision {
    decide_parts(
        (info.cache.value, &info.cache.source),
        (info.needs_sync.value, &info.needs_sync.source),
        (info.stable.value, &info.stable.source),
        platform,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_values_are_never_none() {
        assert_eq!(MapCache::Cached.virtio_value(), 1);
        assert_eq!(MapCache::Uncached.virtio_value(), 2);
        assert_eq!(MapCache::WriteCombined.virtio_value(), 3);
    }

    #[test]
    fn refuse_reason_names_the_source() {
        let d = decide_parts(
            (CacheAttr::Cached, &Source::Memfd),
            (NeedsSync::Yes, &Source::ExporterTable),
            (true, &Source::Memfd),
            Platform::X86Amd,
        );
        let text = d.to_string();
        assert!(text.contains("DMA_BUF_IOCTL_SYNC"), "{text}");
        assert!(text.contains("exporter table"), "{text}");
    }
}
