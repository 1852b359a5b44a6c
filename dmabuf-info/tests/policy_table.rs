//! Every platform x cache x needs_sync x stable combination of the guest policy, and every
//! row of the built-in exporter table.

use dmabuf_info::info::{Answer, BufferInfo};
use dmabuf_info::policy::{self, Decision, MapCache, RefuseReason};
use dmabuf_info::sources::table::{self, BUILTIN};
use dmabuf_info::{BufferKind, CacheAttr, DeviceAccess, NeedsSync, Platform, Source};

fn info(cache: CacheAttr, sync: NeedsSync, stable: bool) -> BufferInfo {
    BufferInfo {
        kind: BufferKind::DmaBuf,
        exporter: "test".into(),
        size: 4096,
        name: None,
        inode: 1,
        device: 1,
        cache: Answer::new(cache, Source::ExporterTable),
        needs_sync: Answer::new(sync, Source::DriverIoctl(dmabuf_info::Driver::Msm)),
        stable: Answer::new(stable, Source::Default),
        kernel_ioctl: None,
        driver_probes: Vec::new(),
    }
}

/// Which platforms give a guest a write-combined / uncached mapping unchanged. Written out
/// independently of the library's implementation.
fn honours_guest_attribute(p: Platform) -> bool {
    match p {
        Platform::X86Amd => true,
        Platform::X86IntelGuestPat => true,
        Platform::Arm64 => true,
        Platform::X86Intel => false,
        Platform::Arm64Fwb => false,
        Platform::Other => false,
    }
}

#[test]
fn every_policy_combination() {
    let mut allowed = 0;
    let mut total = 0;
    for platform in Platform::ALL {
        for cache in CacheAttr::ALL {
            for sync in NeedsSync::ALL {
                for stable in [false, true] {
                    total += 1;
                    let d = policy::decide(&info(cache, sync, stable), platform);
                    let expected_allow = sync == NeedsSync::No
                        && stable
                        && match cache {
                            CacheAttr::Cached => true,
                            CacheAttr::WriteCombined | CacheAttr::Uncached => {
                                honours_guest_attribute(platform)
                            }
                            CacheAttr::Unknown => false,
                        };
                    let ctx = format!("{platform} {cache} sync={sync} stable={stable}: {d}");
                    match &d {
                        Decision::Allow(m) => {
                            assert!(expected_allow, "{ctx}");
                            allowed += 1;
                            let want = match cache {
                                CacheAttr::Cached => MapCache::Cached,
                                CacheAttr::WriteCombined => MapCache::WriteCombined,
                                CacheAttr::Uncached => MapCache::Uncached,
                                CacheAttr::Unknown => unreachable!("{ctx}"),
                            };
                            assert_eq!(*m, want, "{ctx}");
                            assert_ne!(m.virtio_value(), 0, "never NONE: {ctx}");
                        }
                        Decision::Refuse(r) => {
                            assert!(!expected_allow, "{ctx}");
                            // The most fundamental problem is named first.
                            let want_code = if sync == NeedsSync::Yes {
                                1
                            } else if sync == NeedsSync::Unknown {
                                2
                            } else if cache == CacheAttr::Unknown {
                                3
                            } else if !stable {
                                4
                            } else {
                                5
                            };
                            assert_eq!(r.code(), want_code, "{ctx}");
                            let text = r.to_string();
                            assert!(text.contains("source:"), "{ctx}");
                            match r {
                                RefuseReason::NeedsSync { source }
                                | RefuseReason::SyncUnknown { source } => {
                                    assert_eq!(
                                        *source,
                                        Source::DriverIoctl(dmabuf_info::Driver::Msm)
                                    )
                                }
                                RefuseReason::CacheUnknown { source }
                                | RefuseReason::PlatformCannotDeliver { source, .. } => {
                                    assert_eq!(*source, Source::ExporterTable)
                                }
                                RefuseReason::NotStable { source } => {
                                    assert_eq!(*source, Source::Default)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(total, 6 * 4 * 3 * 2);
    // cached: 6 platforms; wc + uncached: 3 platforms each.
    assert_eq!(allowed, 6 + 3 * 2);
}

/// The expected answer of every built-in row: (sample exporter name, cache, needs_sync when
/// every device is coherent or none accesses the buffer, needs_sync when non-coherent devices
/// may, stable).
const EXPECTED: &[(&str, CacheAttr, NeedsSync, NeedsSync, bool)] = &[
    (
        "udmabuf",
        CacheAttr::Cached,
        NeedsSync::No,
        NeedsSync::Yes,
        true,
    ),
    (
        "system",
        CacheAttr::Cached,
        NeedsSync::No,
        NeedsSync::Yes,
        true,
    ),
    (
        "default_cma_region",
        CacheAttr::Cached,
        NeedsSync::No,
        NeedsSync::Yes,
        true,
    ),
    (
        "linux,cma",
        CacheAttr::Cached,
        NeedsSync::No,
        NeedsSync::Yes,
        true,
    ),
    (
        "system-uncached",
        CacheAttr::WriteCombined,
        NeedsSync::No,
        NeedsSync::No,
        true,
    ),
    (
        "vendor_uncached",
        CacheAttr::WriteCombined,
        NeedsSync::No,
        NeedsSync::No,
        true,
    ),
    (
        "i915",
        CacheAttr::Unknown,
        NeedsSync::Unknown,
        NeedsSync::Unknown,
        false,
    ),
    (
        "msm",
        CacheAttr::Unknown,
        NeedsSync::Unknown,
        NeedsSync::Unknown,
        true,
    ),
    (
        "nv_dmabuf",
        CacheAttr::Uncached,
        NeedsSync::Unknown,
        NeedsSync::Unknown,
        false,
    ),
    (
        "nvidia",
        CacheAttr::Uncached,
        NeedsSync::Unknown,
        NeedsSync::Unknown,
        false,
    ),
    (
        "virtio_gpu",
        CacheAttr::Unknown,
        NeedsSync::Unknown,
        NeedsSync::Unknown,
        false,
    ),
    (
        "drm",
        CacheAttr::Unknown,
        NeedsSync::Unknown,
        NeedsSync::Unknown,
        false,
    ),
];

#[test]
fn every_exporter_table_row() {
    assert_eq!(
        EXPECTED.len(),
        BUILTIN.len(),
        "a row without an expectation"
    );
    for (row, &(name, cache, sync_coherent, sync_other, stable)) in BUILTIN.iter().zip(EXPECTED) {
        let found = table::lookup(name).unwrap_or_else(|| panic!("{name} not in table"));
        assert_eq!(found, row, "{name} matched another row");
        for devices in DeviceAccess::ALL {
            let p = table::answer(name, devices);
            let want_sync = if devices == DeviceAccess::NonCoherent {
                sync_other
            } else {
                sync_coherent
            };
            assert_eq!(
                p.cache,
                Some(Answer::new(cache, Source::ExporterTable)),
                "{name}"
            );
            assert_eq!(
                p.needs_sync,
                Some(Answer::new(want_sync, Source::ExporterTable)),
                "{name} with devices {devices}"
            );
            assert_eq!(
                p.stable,
                Some(Answer::new(stable, Source::ExporterTable)),
                "{name}"
            );
        }
        assert!(!row.note.is_empty());
        let drm_names = ["i915", "msm", "virtio_gpu", "drm"];
        assert_eq!(row.drm, drm_names.contains(&name), "{name}");
        assert_eq!(table::may_be_drm(name), row.drm, "{name}");
    }
}

#[test]
fn table_decisions_for_common_exporters() {
    let decide = |name: &str, platform: Platform| {
        let p = table::answer(name, platform.default_device_access());
        let i = BufferInfo {
            cache: p.cache.unwrap(),
            needs_sync: p.needs_sync.unwrap(),
            stable: p.stable.unwrap(),
            ..info(CacheAttr::Unknown, NeedsSync::Unknown, false)
        };
        policy::decide(&i, platform)
    };
    assert_eq!(
        decide("udmabuf", Platform::X86Intel),
        Decision::Allow(MapCache::Cached)
    );
    assert!(
        !decide("udmabuf", Platform::Arm64).is_allowed(),
        "non-coherent host needs SYNC"
    );
    assert_eq!(
        decide("system-uncached", Platform::X86Amd),
        Decision::Allow(MapCache::WriteCombined)
    );
    assert!(
        !decide("system-uncached", Platform::X86Intel).is_allowed(),
        "guest PAT ignored"
    );
    assert!(!decide("drm", Platform::X86Amd).is_allowed());
    assert!(!decide("nv_dmabuf", Platform::X86Amd).is_allowed());
}

/// arm64: cached udmabuf and heap buffers are refused by default (a device that does not snoop
/// may read or write them, and only DMA_BUF_IOCTL_SYNC, which a guest cannot issue, keeps them
/// coherent), and allowed as CACHED, with and without FWB, when the configuration says the
/// devices are coherent or that only CPUs access the buffers.
#[test]
fn arm64_cached_exporters_follow_the_configured_device_access() {
    for platform in [Platform::Arm64, Platform::Arm64Fwb] {
        assert_eq!(platform.default_device_access(), DeviceAccess::NonCoherent);
        for name in ["udmabuf", "system", "default_cma_region", "linux,cma"] {
            for devices in DeviceAccess::ALL {
                let p = table::answer(name, devices);
                let i = BufferInfo {
                    cache: p.cache.unwrap(),
                    needs_sync: p.needs_sync.unwrap(),
                    stable: p.stable.unwrap(),
                    ..info(CacheAttr::Unknown, NeedsSync::Unknown, false)
                };
                let d = policy::decide(&i, platform);
                let ctx = format!("{name} on {platform} with devices {devices}: {d}");
                match devices {
                    DeviceAccess::NonCoherent => match d {
                        Decision::Refuse(RefuseReason::NeedsSync { source }) => {
                            assert_eq!(source, Source::ExporterTable, "{ctx}")
                        }
                        other => panic!("{ctx}: expected a needs-sync refusal, got {other}"),
                    },
                    DeviceAccess::Coherent | DeviceAccess::CpuOnly => {
                        assert_eq!(d, Decision::Allow(MapCache::Cached), "{ctx}")
                    }
                }
            }
        }
        // Write-combined heaps are unaffected by the device access: refused under FWB only.
        let p = table::answer("system-uncached", DeviceAccess::CpuOnly);
        let i = BufferInfo {
            cache: p.cache.unwrap(),
            needs_sync: p.needs_sync.unwrap(),
            stable: p.stable.unwrap(),
            ..info(CacheAttr::Unknown, NeedsSync::Unknown, false)
        };
        assert_eq!(
            policy::decide(&i, platform).is_allowed(),
            platform == Platform::Arm64
        );
    }
}

#[test]
fn unknown_exporter_is_not_in_the_table() {
    assert!(table::lookup("some-new-exporter").is_none());
    assert!(
        table::may_be_drm("some-new-exporter"),
        "unknown names may be DRM drivers"
    );
    assert_eq!(
        table::answer("some-new-exporter", DeviceAccess::Coherent),
        Default::default()
    );
}

/// The ioctl-shaped shim's values for every answer combination, as a kernel carrying each
/// posting would report them.
#[test]
fn uapi_values_for_every_combination() {
    use dmabuf_info::{uapi, uapi_value, KernelAbi};
    for cache in CacheAttr::ALL {
        for sync in NeedsSync::ALL {
            for stable in [false, true] {
                let i = info(cache, sync, stable);
                let v2 = uapi_value(&i, KernelAbi::V2);
                let v1 = uapi_value(&i, KernelAbi::V1);
                let ctx = format!("{cache} sync={sync} stable={stable}: v1 {v1:?} v2 {v2:?}");
                if !stable {
                    assert_eq!((v1, v2), (Err(libc::ENOSYS), Err(libc::ENOSYS)), "{ctx}");
                    continue;
                }
                let want_v2 = match (sync, cache) {
                    (NeedsSync::Yes, _) => Ok(uapi::DMA_BUF_MAP_INCOHERENT),
                    (NeedsSync::No, CacheAttr::Cached) => Ok(uapi::DMA_BUF_COHERENT_CACHED),
                    (NeedsSync::No, CacheAttr::WriteCombined) => Ok(uapi::DMA_BUF_COHERENT_WC),
                    (NeedsSync::No, CacheAttr::Uncached) => Ok(uapi::DMA_BUF_COHERENT_WC),
                    _ => Err(libc::ENOSYS),
                };
                // v1 has no way to say "needs SYNC": such buffers get no answer.
                let want_v1 = match (sync, cache) {
                    (NeedsSync::No, CacheAttr::Cached) => Ok(uapi::DMA_BUF_VM_PROT_CACHED),
                    (NeedsSync::No, CacheAttr::WriteCombined | CacheAttr::Uncached) => {
                        Ok(uapi::DMA_BUF_VM_PROT_WC)
                    }
                    _ => Err(libc::ENOSYS),
                };
                assert_eq!(v2, want_v2, "{ctx}");
                assert_eq!(v1, want_v1, "{ctx}");
            }
        }
    }
}
