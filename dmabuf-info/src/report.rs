//! The `--json` output of the `dmabuf-info` command, as typed structs.
//!
//! Every object carries what the README's "JSON output" section documents field by field;
//! `schema_version` ([`SCHEMA_VERSION`]) changes when a field is removed, renamed or changes
//! its meaning, not when one is added. The structs also deserialize, for programs that read
//! the output.

use serde::{Deserialize, Serialize};

use crate::config::ConfigWarning;
use crate::error::Error;
use crate::info::{Answer, BufferInfo, BufferKind, CacheAttr, NeedsSync, SourceKind};
use crate::platform::{DeviceAccess, Platform};
use crate::policy::{Decision, MapCache};
use crate::sources::kernel::is_absent_errno;
use crate::sources::table::TableRow;

/// The version of the JSON layout described here.
pub const SCHEMA_VERSION: u32 = 1;

/// Output of `dmabuf-info --json inspect ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The platform decisions were made for.
    pub platform: Platform,
    /// The device access the exporter table was resolved for.
    pub devices: DeviceAccess,
    /// The process inspected with `--pid` (or named by a `/proc/PID/fd/N` path), else `null`.
    pub pid: Option<i32>,
    /// The buffers, in descriptor order; empty when `error` is set.
    pub buffers: Vec<BufferReport>,
    /// Why nothing could be inspected, else `null`.
    pub error: Option<ErrorReport>,
    /// Drop-in configuration files that were skipped.
    pub config_warnings: Vec<WarningReport>,
}

/// One inspected buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferReport {
    /// The descriptor number (this process's with `--fd`, the other process's with `--pid`),
    /// else `null`.
    pub fd: Option<i32>,
    /// The path given on the command line, else `null`.
    pub path: Option<String>,
    /// dma-buf or memfd.
    pub kind: BufferKind,
    /// `exp_name`, or `memfd`.
    pub exporter: String,
    /// Size in bytes.
    pub size: u64,
    /// The buffer's name, or `null`.
    pub name: Option<String>,
    /// `st_ino`.
    pub inode: u64,
    /// `st_dev`.
    pub device: u64,
    /// CPU cache attribute.
    pub cache: AnswerReport<CacheAttr>,
    /// Whether CPU access needs `DMA_BUF_IOCTL_SYNC`.
    pub needs_sync: AnswerReport<NeedsSync>,
    /// Whether the attribute is fixed for the buffer's lifetime.
    pub stable: AnswerReport<bool>,
    /// What `DMA_BUF_IOCTL_INFO` did.
    pub kernel_ioctl: KernelIoctlReport,
    /// The DRM devices that were asked, in order.
    pub driver_probes: Vec<DriverProbeReport>,
    /// The guest mapping decision.
    pub decision: DecisionReport,
}

/// One answer and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerReport<T> {
    /// The answer.
    pub value: T,
    /// The source, as a sentence (`exporter table`, `config quirk "memfd"`, ...).
    pub source: String,
    /// The kind of source.
    pub source_kind: SourceKind,
    /// The value set, driver or quirk name pattern, else `null`.
    pub source_detail: Option<String>,
}

impl<T: Clone> From<&Answer<T>> for AnswerReport<T> {
    fn from(a: &Answer<T>) -> Self {
        AnswerReport {
            value: a.value.clone(),
            source: a.source.to_string(),
            source_kind: a.source.kind(),
            source_detail: a.source.detail().map(str::to_string),
        }
    }
}

/// Outcome of `DMA_BUF_IOCTL_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelIoctlStatus {
    /// Not a dma-buf: not asked.
    NotAsked,
    /// The kernel answered.
    Answered,
    /// The kernel does not have it (`ENOTTY`, `EINVAL`, `ENOSYS`).
    Absent,
    /// Another error.
    Failed,
}

/// What `DMA_BUF_IOCTL_INFO` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIoctlReport {
    /// The outcome.
    pub status: KernelIoctlStatus,
    /// The raw value when answered, else `null`.
    pub value: Option<u64>,
    /// The errno when absent or failed, else `null`.
    pub errno: Option<i32>,
}

impl KernelIoctlReport {
    /// From [`BufferInfo::kernel_ioctl`].
    pub fn new(outcome: Option<Result<u64, i32>>) -> Self {
        let (status, value, errno) = match outcome {
            None => (KernelIoctlStatus::NotAsked, None, None),
            Some(Ok(v)) => (KernelIoctlStatus::Answered, Some(v), None),
            Some(Err(e)) if is_absent_errno(e) => (KernelIoctlStatus::Absent, None, Some(e)),
            Some(Err(e)) => (KernelIoctlStatus::Failed, None, Some(e)),
        };
        KernelIoctlReport {
            status,
            value,
            errno,
        }
    }
}

/// One DRM device that was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverProbeReport {
    /// Driver name (`DRM_IOCTL_VERSION`), empty if the device could not be opened.
    pub driver: String,
    /// The device node.
    pub node: String,
    /// Whether `PRIME_FD_TO_HANDLE` succeeded.
    pub imported: bool,
    /// What the driver said, or why it could not answer.
    pub outcome: String,
}

/// The guest mapping decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionReport {
    /// Whether the buffer may be mapped into a guest.
    pub allow: bool,
    /// `VIRTIO_GPU_MAP_CACHE_*` (1, 2 or 3) when allowed, else `null`.
    pub map_info: Option<u32>,
    /// Its name when allowed (`CACHED`, `UNCACHED`, `WC`), else `null`.
    pub map_cache: Option<MapCache>,
    /// The refusal's name (`needs-sync`, ...) when refused, else `null`.
    pub reason: Option<String>,
    /// The refusal's code (as in the C ABI) when refused, else `null`.
    pub reason_code: Option<u32>,
    /// The decision as a sentence, naming the source of the deciding answer.
    pub message: String,
}

impl From<&Decision> for DecisionReport {
    fn from(d: &Decision) -> Self {
        match d {
            Decision::Allow(m) => DecisionReport {
                allow: true,
                map_info: Some(m.virtio_value()),
                map_cache: Some(*m),
                reason: None,
                reason_code: None,
                message: d.to_string(),
            },
            Decision::Refuse(r) => DecisionReport {
                allow: false,
                map_info: None,
                map_cache: None,
                reason: Some(r.name().to_string()),
                reason_code: Some(r.code()),
                message: d.to_string(),
            },
        }
    }
}

impl BufferReport {
    /// The report of `info` with its decision, labelled with a descriptor number or a path.
    pub fn new(fd: Option<i32>, path: Option<String>, info: &BufferInfo, d: &Decision) -> Self {
        BufferReport {
            fd,
            path,
            kind: info.kind,
            exporter: info.exporter.clone(),
            size: info.size,
            name: info.name.clone(),
            inode: info.inode,
            device: info.device,
            cache: (&info.cache).into(),
            needs_sync: (&info.needs_sync).into(),
            stable: (&info.stable).into(),
            kernel_ioctl: KernelIoctlReport::new(info.kernel_ioctl),
            driver_probes: info
                .driver_probes
                .iter()
                .map(|p| DriverProbeReport {
                    driver: p.driver.clone(),
                    node: p.node.clone(),
                    imported: p.imported,
                    outcome: p.outcome.clone(),
                })
                .collect(),
            decision: d.into(),
        }
    }
}

/// Why nothing could be inspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// `bad-fd`, `not-a-buffer`, `permission`, `os` or `config`.
    pub kind: String,
    /// The error as a sentence.
    pub message: String,
    /// For `not-a-buffer`: what the descriptor is (`a pipe`, ...), else `null`.
    pub what: Option<String>,
}

impl From<&Error> for ErrorReport {
    fn from(e: &Error) -> Self {
        let kind = match e {
            Error::BadFd => "bad-fd",
            Error::NotDmaBuf { .. } => "not-a-buffer",
            Error::Permission { .. } => "permission",
            Error::Io { .. } => "os",
            Error::Config { .. } => "config",
        };
        ErrorReport {
            kind: kind.to_string(),
            message: e.to_string(),
            what: match e {
                Error::NotDmaBuf { what } => Some(what.to_string()),
                _ => None,
            },
        }
    }
}

/// A skipped drop-in configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningReport {
    /// The file (or directory).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl From<&ConfigWarning> for WarningReport {
    fn from(w: &ConfigWarning) -> Self {
        WarningReport {
            path: w.path.display().to_string(),
            message: w.message.clone(),
        }
    }
}

/// Output of `dmabuf-info --json platform`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The platform in use.
    pub platform: Platform,
    /// `configured` (configuration or `--platform`) or `detected`.
    pub how: String,
    /// What detection says on this host.
    pub detected: Platform,
    /// What the guest gets on this platform, as a sentence.
    pub description: String,
    /// Whether devices are DMA-coherent by default on this platform.
    pub dma_coherent: bool,
    /// The device access in use (configured, else the platform's default).
    pub devices: DeviceAccess,
    /// Every cache x needs_sync x stable combination and its decision.
    pub decisions: Vec<PolicyRow>,
    /// Every row of the built-in exporter table, resolved for `devices`, and its decision.
    pub exporters: Vec<ExporterRow>,
    /// Drop-in configuration files that were skipped.
    pub config_warnings: Vec<WarningReport>,
}

/// One combination of the decision table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// Cache attribute.
    pub cache: CacheAttr,
    /// SYNC requirement.
    pub needs_sync: NeedsSync,
    /// Stability.
    pub stable: bool,
    /// The decision.
    pub decision: DecisionReport,
}

/// One row of the built-in exporter table as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExporterRow {
    /// Exporter name or glob.
    pub exporter: String,
    /// The table's cache attribute.
    pub cache: CacheAttr,
    /// The table's SYNC answer for the device access in use.
    pub needs_sync: NeedsSync,
    /// The table's stability answer.
    pub stable: bool,
    /// Whether a DRM driver is asked first (its answer then wins).
    pub asks_driver: bool,
    /// Why.
    pub note: String,
    /// The decision on the table's answers alone.
    pub decision: DecisionReport,
}

impl ExporterRow {
    /// `row` resolved for `devices` and decided for `platform`.
    pub fn new(row: &TableRow, devices: DeviceAccess, platform: Platform) -> Self {
        let needs_sync = row.needs_sync.resolve(devices);
        let src = crate::info::Source::ExporterTable;
        let d = crate::policy::decide_parts(
            (row.cache, &src),
            (needs_sync, &src),
            (row.stable, &src),
            platform,
        );
        ExporterRow {
            exporter: row.pattern.to_string(),
            cache: row.cache,
            needs_sync,
            stable: row.stable,
            asks_driver: row.drm,
            note: row.note.to_string(),
            decision: (&d).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON spellings are the config/CLI spellings.
    #[test]
    fn enum_names_match_the_config_spelling() {
        let name = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for p in Platform::ALL {
            assert_eq!(name(serde_json::to_value(p).unwrap()), p.as_str());
        }
        for d in DeviceAccess::ALL {
            assert_eq!(name(serde_json::to_value(d).unwrap()), d.as_str());
        }
        for c in CacheAttr::ALL {
            assert_eq!(name(serde_json::to_value(c).unwrap()), c.as_str());
        }
        for s in NeedsSync::ALL {
            assert_eq!(name(serde_json::to_value(s).unwrap()), s.as_str());
        }
        for k in [BufferKind::DmaBuf, BufferKind::Memfd] {
            assert_eq!(name(serde_json::to_value(k).unwrap()), k.as_str());
        }
        for m in [
            MapCache::Cached,
            MapCache::Uncached,
            MapCache::WriteCombined,
        ] {
            assert_eq!(name(serde_json::to_value(m).unwrap()), m.as_str());
        }
    }
}
