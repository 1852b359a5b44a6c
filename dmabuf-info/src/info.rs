//! The answer types: what a buffer is, what its CPU mapping is, and who said so.

use std::fmt;
use std::sync::Arc;

/// What kind of descriptor was inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BufferKind {
    /// A dma-buf (`fstatfs` magic `DMA_BUF_MAGIC`).
    DmaBuf,
    /// A memfd (shmem/hugetlbfs file created by `memfd_create`): plain cached RAM.
    Memfd,
}

impl BufferKind {
    /// Short lowercase name (`dma-buf`, `memfd`).
    pub fn as_str(self) -> &'static str {
        match self {
            BufferKind::DmaBuf => "dma-buf",
            BufferKind::Memfd => "memfd",
        }
    }
}

impl fmt::Display for BufferKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CPU cache attribute of the buffer's mmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheAttr {
    /// Write-back cached.
    Cached,
    /// Write-combined (uncached, buffered writes).
    WriteCombined,
    /// Uncached.
    Uncached,
    /// Nobody could say.
    Unknown,
}

impl CacheAttr {
    /// All values, for exhaustive tests and tables.
    pub const ALL: [CacheAttr; 4] = [
        CacheAttr::Cached,
        CacheAttr::WriteCombined,
        CacheAttr::Uncached,
        CacheAttr::Unknown,
    ];

    /// Config-file spelling (`cached`, `write-combined`, `uncached`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheAttr::Cached => "cached",
            CacheAttr::WriteCombined => "write-combined",
            CacheAttr::Uncached => "uncached",
            CacheAttr::Unknown => "unknown",
        }
    }

    /// Parses the config-file spelling (also accepts `wc`).
    pub fn parse(s: &str) -> Option<CacheAttr> {
        Some(match s {
            "cached" => CacheAttr::Cached,
            "write-combined" | "wc" => CacheAttr::WriteCombined,
            "uncached" => CacheAttr::Uncached,
            "unknown" => CacheAttr::Unknown,
            _ => return None,
        })
    }
}

impl fmt::Display for CacheAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether CPU access must be bracketed with `DMA_BUF_IOCTL_SYNC` to be coherent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NeedsSync {
    /// Coherent without SYNC.
    No,
    /// Not coherent without SYNC (a guest cannot issue it: never map into a guest).
    Yes,
    /// Nobody could say.
    Unknown,
}

impl NeedsSync {
    /// All values, for exhaustive tests and tables.
    pub const ALL: [NeedsSync; 3] = [NeedsSync::No, NeedsSync::Yes, NeedsSync::Unknown];

    /// Config-file spelling (`no`, `yes`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            NeedsSync::No => "no",
            NeedsSync::Yes => "yes",
            NeedsSync::Unknown => "unknown",
        }
    }

    /// Parses the config-file spelling.
    pub fn parse(s: &str) -> Option<NeedsSync> {
        Some(match s {
            "no" => NeedsSync::No,
            "yes" => NeedsSync::Yes,
            "unknown" => NeedsSync::Unknown,
            _ => return None,
        })
    }
}

impl fmt::Display for NeedsSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which value set of the proposed `DMA_BUF_IOCTL_INFO` a kernel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelAbi {
    /// 2022-07-29 posting: `DMA_BUF_INFO_VM_PROT`, values WC 0, CACHED 1.
    V1,
    /// 2022-08-15 posting: `DMA_BUF_INFO_MAP_INFO`, values INCOHERENT 0, COHERENT_WC 1,
    /// COHERENT_CACHED 2.
    V2,
}

impl KernelAbi {
    /// Config spelling (`v1`, `v2`).
    pub fn as_str(self) -> &'static str {
        match self {
            KernelAbi::V1 => "v1",
            KernelAbi::V2 => "v2",
        }
    }
}

/// A DRM driver with a query ioctl this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// msm `DRM_IOCTL_MSM_GEM_INFO` + `MSM_INFO_GET_FLAGS`.
    Msm,
    /// panfrost `DRM_IOCTL_PANFROST_QUERY_BO_INFO`.
    Panfrost,
    /// panthor `DRM_IOCTL_PANTHOR_BO_QUERY_INFO`.
    Panthor,
    /// i915 `DRM_IOCTL_I915_GEM_GET_CACHING` (+ `I915_PARAM_HAS_LLC`).
    I915,
    /// amdgpu `DRM_IOCTL_AMDGPU_GEM_OP` + `AMDGPU_GEM_OP_GET_GEM_CREATE_INFO`.
    Amdgpu,
}

impl Driver {
    /// The DRM driver name as `DRM_IOCTL_VERSION` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Msm => "msm",
            Driver::Panfrost => "panfrost",
            Driver::Panthor => "panthor",
            Driver::I915 => "i915",
            Driver::Amdgpu => "amdgpu",
        }
    }

    /// Maps a `DRM_IOCTL_VERSION` driver name to a driver with a query ioctl.
    pub fn from_name(name: &str) -> Option<Driver> {
        Some(match name {
            "msm" => Driver::Msm,
            "panfrost" => Driver::Panfrost,
            "panthor" => Driver::Panthor,
            "i915" => Driver::I915,
            "amdgpu" => Driver::Amdgpu,
            _ => return None,
        })
    }

    /// The ioctl that is asked.
    pub fn query_ioctl(self) -> &'static str {
        match self {
            Driver::Msm => "MSM_GEM_INFO(MSM_INFO_GET_FLAGS)",
            Driver::Panfrost => "PANFROST_QUERY_BO_INFO",
            Driver::Panthor => "PANTHOR_BO_QUERY_INFO",
            Driver::I915 => "I915_GEM_GET_CACHING",
            Driver::Amdgpu => "AMDGPU_GEM_OP(GET_GEM_CREATE_INFO)",
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The kernel's `DMA_BUF_IOCTL_INFO`, interpreted with the configured value set.
    KernelIoctl(KernelAbi),
    /// A driver query ioctl on the exporting DRM device.
    DriverIoctl(Driver),
    /// The built-in exporter-name table (`exp_name` from `/proc/self/fdinfo`).
    ExporterTable,
    /// A `[[exporter]]` quirk from a configuration file; carries the quirk's name pattern.
    ConfigQuirk(Arc<str>),
    /// The descriptor is a memfd: ordinary cached, coherent RAM.
    Memfd,
    /// Nothing answered: the conservative default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::KernelIoctl(abi) => write!(f, "kernel DMA_BUF_IOCTL_INFO ({})", abi.as_str()),
            Source::DriverIoctl(d) => write!(f, "{} {}", d.name(), d.query_ioctl()),
            Source::ExporterTable => f.write_str("exporter table"),
            Source::ConfigQuirk(name) => write!(f, "config quirk \"{name}\""),
            Source::Memfd => f.write_str("memfd"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The kind of a [`Source`], without its detail (for JSON and the C ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// [`Source::KernelIoctl`].
    KernelIoctl,
    /// [`Source::DriverIoctl`].
    DriverIoctl,
    /// [`Source::ExporterTable`].
    ExporterTable,
    /// [`Source::ConfigQuirk`].
    ConfigQuirk,
    /// [`Source::Memfd`].
    Memfd,
    /// [`Source::Default`].
    Default,
}

impl Source {
    /// The kind of source.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::KernelIoctl(_) => SourceKind::KernelIoctl,
            Source::DriverIoctl(_) => SourceKind::DriverIoctl,
            Source::ExporterTable => SourceKind::ExporterTable,
            Source::ConfigQuirk(_) => SourceKind::ConfigQuirk,
            Source::Memfd => SourceKind::Memfd,
            Source::Default => SourceKind::Default,
        }
    }

    /// The detail: the value set (`v1`, `v2`), the driver (`i915`, ...) or the quirk's name
    /// pattern; `None` for the other kinds.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Source::KernelIoctl(abi) => Some(abi.as_str()),
            Source::DriverIoctl(d) => Some(d.name()),
            Source::ConfigQuirk(name) => Some(name),
            Source::ExporterTable | Source::Memfd | Source::Default => None,
        }
    }

    /// Whether an answer from this source holds for the buffer's whole life, so that it may
    /// be given again from the cache.
    ///
    /// - Fixed: the memfd rule, configuration quirks and the exporter table (they depend only
    ///   on the exporter name and the configuration); the kernel's v2 answer (`map_info` is set
    ///   at export); msm flags, panfrost/panthor create flags and amdgpu's create info (fixed
    ///   at creation; amdgpu's possible migration is already answered as "not stable").
    /// - Not fixed: i915 `GEM_GET_CACHING`, because any holder of a handle to the object may
    ///   change it with `I915_GEM_SET_CACHING`, and pinning it for display moves it to
    ///   uncached (or WT) without anyone asking us; the kernel's v1 answer, which comes from an
    ///   exporter callback run on every query with no lifetime promise. Answers from these
    ///   are asked again on every query (see [`crate::Inspector`]).
    pub fn fixed_for_lifetime(&self) -> bool {
        !matches!(
            self,
            Source::DriverIoctl(Driver::I915) | Source::KernelIoctl(KernelAbi::V1)
        )
    }
}

/// One answer and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Answer<T> {
    /// The value.
    pub value: T,
    /// Who gave it.
    pub source: Source,
}

impl<T> Answer<T> {
    /// Builds an answer.
    pub fn new(value: T, source: Source) -> Self {
        Answer { value, source }
    }
}

/// What happened when a DRM device was asked (for diagnostics and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverProbe {
    /// Driver name from `DRM_IOCTL_VERSION`.
    pub driver: String,
    /// The device node that was opened for the import.
    pub node: String,
    /// `PRIME_FD_TO_HANDLE` succeeded (the handle was closed again).
    pub imported: bool,
    /// What the driver said, or why it could not answer.
    pub outcome: String,
}

/// Everything known about one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferInfo {
    /// dma-buf or memfd.
    pub kind: BufferKind,
    /// `exp_name` from fdinfo; `"memfd"` for memfds.
    pub exporter: String,
    /// Size in bytes.
    pub size: u64,
    /// The buffer's name (`DMA_BUF_SET_NAME`, or the memfd name), if any.
    pub name: Option<String>,
    /// Inode number (`st_ino`): unique per dma-buf.
    pub inode: u64,
    /// Device of the inode (`st_dev`): the dma-buf or shmem pseudo filesystem.
    pub device: u64,
    /// CPU cache attribute of the buffer's mmap.
    pub cache: Answer<CacheAttr>,
    /// Whether CPU access needs `DMA_BUF_IOCTL_SYNC`.
    pub needs_sync: Answer<NeedsSync>,
    /// Whether the attribute is fixed for the buffer's lifetime (cannot change by migration).
    pub stable: Answer<bool>,
    /// The raw `DMA_BUF_IOCTL_INFO` outcome: `None` when not asked (ABI "none" or a memfd),
    /// `Some(Err(errno))` when the kernel does not have it, `Some(Ok(value))` otherwise.
    pub kernel_ioctl: Option<Result<u64, i32>>,
    /// DRM devices that were asked, in order.
    pub driver_probes: Vec<DriverProbe>,
}
