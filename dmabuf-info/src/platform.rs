//! The host platform, as far as guest mappings are concerned.

use std::fmt;
use std::str::FromStr;

/// How the host's hypervisor combines the host mapping with the guest's page tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// x86 Intel (VMX/EPT) with KVM's default `KVM_X86_QUIRK_IGNORE_GUEST_PAT`: guest RAM,
    /// including mapped host buffers, is write-back for the guest whatever `map_info` says.
    X86Intel,
    /// x86 Intel with the quirk disabled by the VMM: guest PAT is honoured (`map_info` works).
    X86IntelGuestPat,
    /// x86 AMD (NPT): guest PAT is honoured.
    X86Amd,
    /// arm64 without FWB: stage 1 and 2 combine to the stricter attribute; `map_info` must
    /// match the host mapping.
    Arm64,
    /// arm64 with FEAT_S2FWB: RAM is always cacheable for the guest.
    Arm64Fwb,
    /// Anything else: only cached, coherent buffers are mapped.
    Other,
}

impl Platform {
    /// All platforms, for exhaustive tests and the `platform` command.
    pub const ALL: [Platform; 6] = [
        Platform::X86Intel,
        Platform::X86IntelGuestPat,
        Platform::X86Amd,
        Platform::Arm64,
        Platform::Arm64Fwb,
        Platform::Other,
    ];

    /// Config/CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::X86Intel => "x86-intel",
            Platform::X86IntelGuestPat => "x86-intel-guest-pat",
            Platform::X86Amd => "x86-amd",
            Platform::Arm64 => "arm64",
            Platform::Arm64Fwb => "arm64-fwb",
            Platform::Other => "other",
        }
    }

    /// One line describing what the guest gets on this platform.
    pub fn describe(self) -> &'static str {
        match self {
            Platform::X86Intel => {
                "x86 Intel, KVM ignores guest PAT: the guest sees host buffers write-back"
            }
            Platform::X86IntelGuestPat => "x86 Intel, guest PAT honoured: map_info is obeyed",
            Platform::X86Amd => "x86 AMD (NPT): guest PAT honoured, map_info is obeyed",
            Platform::Arm64 => "arm64 without FWB: stage 1 + 2 combine, map_info must match",
            Platform::Arm64Fwb => "arm64 with S2FWB: guest RAM is always cacheable",
            Platform::Other => "unknown host: only cached coherent buffers are safe",
        }
    }

    /// Whether devices on this host are DMA-coherent with the CPU caches by default (x86: PCIe
    /// devices snoop). Decides the default [`DeviceAccess`].
    pub fn dma_coherent(self) -> bool {
        matches!(
            self,
            Platform::X86Intel | Platform::X86IntelGuestPat | Platform::X86Amd
        )
    }

    /// The [`DeviceAccess`] assumed when the configuration does not name one: `coherent` on
    /// x86, `non-coherent` everywhere else.
    pub fn default_device_access(self) -> DeviceAccess {
        if self.dma_coherent() {
            DeviceAccess::Coherent
        } else {
            DeviceAccess::NonCoherent
        }
    }

    /// Detects the platform of the running host from `/proc/cpuinfo`.
    pub fn detect() -> Platform {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Platform::detect_from(std::env::consts::ARCH, &cpuinfo)
    }

    /// Detection from an architecture name and the text of `/proc/cpuinfo`.
    ///
    /// - x86: `vendor_id` `GenuineIntel` -> [`Platform::X86Intel`] (KVM's default ignores guest
    ///   PAT; configure `x86-intel-guest-pat` if your VMM disables that quirk);
    ///   `AuthenticAMD` / `HygonGenuine` -> [`Platform::X86Amd`].
    /// - arm64 -> [`Platform::Arm64Fwb`]: FEAT_S2FWB is not visible to userspace (no hwcap),
    ///   and assuming FWB is the conservative choice (it refuses write-combined buffers).
    ///   Configure `arm64` on hosts known to lack FWB.
    pub fn detect_from(arch: &str, cpuinfo: &str) -> Platform {
        match arch {
            "x86_64" | "x86" => {
                let vendor = cpuinfo
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        (k.trim() == "vendor_id").then(|| v.trim())
                    })
                    .unwrap_or("");
                match vendor {
                    "GenuineIntel" => Platform::X86Intel,
                    "AuthenticAMD" | "HygonGenuine" => Platform::X86Amd,
                    _ => Platform::Other,
                }
            }
            "aarch64" => Platform::Arm64Fwb,
            _ => Platform::Other,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which devices, besides CPUs, may access the buffers that are mapped into guests.
///
/// This decides one thing: whether a *cached* buffer from an exporter whose
/// `begin/end_cpu_access` only does cache maintenance for device attachments (udmabuf, the
/// system and CMA dma-heaps) needs `DMA_BUF_IOCTL_SYNC`. Between CPUs (host processes and the
/// guest's vCPUs, all with write-back mappings) the caches are kept coherent by hardware on
/// every platform here; what a SYNC adds is cleaning and invalidating CPU caches for a device
/// that does not snoop them. Whether such a device will ever attach the buffer is a property of
/// the deployment (which display, which GPU, which importers), not of the buffer: attachments
/// are not visible to userspace (fdinfo has no attachment list; debugfs is root-only and no
/// ABI), and a device may attach after the guest's mapping was granted. So it is configured:
/// `devices = ...` in the configuration, `--devices` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceAccess {
    /// Devices that do not snoop CPU caches may access the buffers (arm64 SoC GPUs and display
    /// controllers, for instance): cached udmabuf/heap buffers need SYNC. The default wherever
    /// [`Platform::dma_coherent`] is false.
    NonCoherent,
    /// Every device that may access the buffers snoops CPU caches: x86 PCIe devices (the
    /// default there), arm64 servers whose devices are DMA-coherent (ACPI `_CCA` = 1, or
    /// `dma-coherent` in the device tree).
    Coherent,
    /// No device accesses the buffers: only CPUs do (the backend's own CPU copies, a CPU-only
    /// display path, the guest). Cached udmabuf/heap buffers need no SYNC.
    CpuOnly,
}

impl DeviceAccess {
    /// All values, for exhaustive tests and tables.
    pub const ALL: [DeviceAccess; 3] = [
        DeviceAccess::NonCoherent,
        DeviceAccess::Coherent,
        DeviceAccess::CpuOnly,
    ];

    /// Config/CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceAccess::NonCoherent => "non-coherent",
            DeviceAccess::Coherent => "coherent",
            DeviceAccess::CpuOnly => "cpu-only",
        }
    }

    /// One line describing the setting.
    pub fn describe(self) -> &'static str {
        match self {
            DeviceAccess::NonCoherent => {
                "devices that do not snoop CPU caches may access the buffers"
            }
            DeviceAccess::Coherent => "every device that may access the buffers snoops CPU caches",
            DeviceAccess::CpuOnly => "only CPUs access the buffers, no device",
        }
    }

    /// Whether cached buffers whose exporter syncs only device attachments are coherent
    /// without `DMA_BUF_IOCTL_SYNC`.
    pub fn cached_is_coherent(self) -> bool {
        !matches!(self, DeviceAccess::NonCoherent)
    }
}

impl fmt::Display for DeviceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`DeviceAccess::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device access \"{0}\" (expected one of: non-coherent, coherent, cpu-only)")]
pub struct UnknownDeviceAccess(pub String);

impl FromStr for DeviceAccess {
    type Err = UnknownDeviceAccess;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceAccess::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDeviceAccess(s.to_string()))
    }
}

/// Error of [`Platform::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform \"{0}\" (expected one of: x86-intel, x86-intel-guest-pat, x86-amd, arm64, arm64-fwb, other)")]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPlatform(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>(), Ok(p));
        }
        assert!("x86".parse::<Platform>().is_err());
    }

    #[test]
    fn device_access_names_round_trip_and_defaults() {
        for d in DeviceAccess::ALL {
            assert_eq!(d.as_str().parse::<DeviceAccess>(), Ok(d));
        }
        assert!("none".parse::<DeviceAccess>().is_err());
        assert_eq!(
            Platform::X86Amd.default_device_access(),
            DeviceAccess::Coherent
        );
        assert_eq!(
            Platform::Arm64.default_device_access(),
            DeviceAccess::NonCoherent
        );
        assert!(!DeviceAccess::NonCoherent.cached_is_coherent());
        assert!(DeviceAccess::CpuOnly.cached_is_coherent());
    }

    #[test]
    fn detection_from_cpuinfo() {
        let intel = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n";
        let amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\n";
        assert_eq!(Platform::detect_from("x86_64", intel), Platform::X86Intel);
        assert_eq!(Platform::detect_from("x86_64", amd), Platform::X86Amd);
        assert_eq!(
            Platform::detect_from("x86_64", "vendor_id: Weird\n"),
            Platform::Other
        );
        assert_eq!(
            Platform::detect_from("aarch64", "Features\t: fp asimd\n"),
            Platform::Arm64Fwb
        );
        assert_eq!(Platform::detect_from("riscv64", ""), Platform::Other);
    }

    #[test]
    fn detection_on_this_host_matches_cpuinfo() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let p = Platform::detect();
        if cpuinfo.contains("GenuineIntel") {
            assert_eq!(p, Platform::X86Intel);
        } else if cpuinfo.contains("AuthenticAMD") {
            assert_eq!(p, Platform::X86Amd);
        }
    }
}
