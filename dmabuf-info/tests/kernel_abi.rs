//! Both `DMA_BUF_IOCTL_INFO` value sets through the whole decision: kernel answer, driver
//! answer, quirks and exporter table merged by `sources::dma_buf_answers` (what
//! `Inspector::inspect` runs once the ioctls are done), then the guest policy. Upstream kernels
//! answer ENOTTY, so the kernel's answers are given here as a patched kernel would return them.

use dmabuf_info::info::Answer;
use dmabuf_info::policy::{self, Decision, MapCache, RefuseReason};
use dmabuf_info::sources::kernel::KernelProbe;
use dmabuf_info::sources::{dma_buf_answers, Answers, Partial};
use dmabuf_info::{
    CacheAttr, Config, DeviceAccess, Driver, KernelAbi, NeedsSync, Platform, Source,
};

/// Exporter names with every kind of table row: asks-a-driver and "may change" (i915, drm,
/// virtio_gpu), fixed (msm), cached heaps (udmabuf, system), WC heaps, do-not-map (nv_dmabuf),
/// and one the table does not know.
const EXPORTERS: [&str; 8] = [
    "i915",
    "drm",
    "virtio_gpu",
    "msm",
    "udmabuf",
    "system-uncached",
    "nv_dmabuf",
    "brand-new-exporter",
];

fn answers(abi: Option<KernelAbi>, exporter: &str, kernel: KernelProbe, p: Platform) -> Answers {
    let config = Config {
        kernel_info_abi: abi,
        ..Config::default()
    };
    dma_buf_answers(
        &config,
        p.default_device_access(),
        exporter,
        kernel,
        Partial::default(),
    )
}

fn decide(a: &Answers, platform: Platform) -> Decision {
    policy::decide_parts(
        (a.0.value, &a.0.source),
        (a.1.value, &a.1.source),
        (a.2.value, &a.2.source),
        platform,
    )
}

/// Whether the platform delivers WC to a guest (written out independently of the library).
fn delivers_wc(p: Platform) -> bool {
    matches!(
        p,
        Platform::X86Amd | Platform::X86IntelGuestPat | Platform::Arm64
    )
}

#[test]
fn v2_answers_decide_for_every_exporter_and_platform() {
    let v2 = Source::KernelIoctl(KernelAbi::V2);
    for platform in Platform::ALL {
        for exporter in EXPORTERS {
            let ctx = |v: u64, d: &Decision| format!("v2 value {v}, {exporter} on {platform}: {d}");

            // COHERENT_CACHED: the kernel answers all three, whatever the table says.
            let a = answers(
                Some(KernelAbi::V2),
                exporter,
                KernelProbe::Answered(2),
                platform,
            );
            assert_eq!(a.0, Answer::new(CacheAttr::Cached, v2.clone()));
            assert_eq!(a.1, Answer::new(NeedsSync::No, v2.clone()));
            assert_eq!(a.2, Answer::new(true, v2.clone()));
            let d = decide(&a, platform);
            assert_eq!(d, Decision::Allow(MapCache::Cached), "{}", ctx(2, &d));

            // COHERENT_WC: allowed as WC where the platform delivers WC.
            let a = answers(
                Some(KernelAbi::V2),
                exporter,
                KernelProbe::Answered(1),
                platform,
            );
            assert_eq!(a.2, Answer::new(true, v2.clone()));
            let d = decide(&a, platform);
            if delivers_wc(platform) {
                assert_eq!(
                    d,
                    Decision::Allow(MapCache::WriteCombined),
                    "{}",
                    ctx(1, &d)
                );
            } else {
                assert!(
                    matches!(
                        &d,
                        Decision::Refuse(RefuseReason::PlatformCannotDeliver { source, .. })
                            if *source == v2
                    ),
                    "{}",
                    ctx(1, &d)
                );
            }

            // INCOHERENT: refused for needing SYNC, on the kernel's word.
            let a = answers(
                Some(KernelAbi::V2),
                exporter,
                KernelProbe::Answered(0),
                platform,
            );
            let d = decide(&a, platform);
            assert_eq!(
                d,
                Decision::Refuse(RefuseReason::NeedsSync { source: v2.clone() }),
                "{}",
                ctx(0, &d)
            );

            // A value v2 does not define answers nothing: as if the kernel had no ioctl.
            let unknown = answers(
                Some(KernelAbi::V2),
                exporter,
                KernelProbe::Answered(7),
                platform,
            );
            let absent = answers(
                Some(KernelAbi::V2),
                exporter,
                KernelProbe::Absent(libc::ENOTTY),
                platform,
            );
            assert_eq!(unknown, absent, "{exporter} on {platform}");
        }
    }
}

#[test]
fn v1_answers_give_the_attribute_only() {
    let v1 = Source::KernelIoctl(KernelAbi::V1);
    for platform in Platform::ALL {
        for exporter in EXPORTERS {
            let table = answers(None, exporter, KernelProbe::Absent(libc::ENOTTY), platform);
            for (value, cache) in [(0, CacheAttr::WriteCombined), (1, CacheAttr::Cached)] {
                let a = answers(
                    Some(KernelAbi::V1),
                    exporter,
                    KernelProbe::Answered(value),
                    platform,
                );
                let ctx = format!("v1 value {value}, {exporter} on {platform}");
                // v1 says nothing about SYNC or stability: those come from the table.
                assert_eq!(a.0, Answer::new(cache, v1.clone()), "{ctx}");
                assert_eq!(a.1, table.1, "{ctx}");
                assert_eq!(a.2, table.2, "{ctx}");
                let d = decide(&a, platform);
                let want = match (table.1.value, table.2.value, cache) {
                    (NeedsSync::No, true, CacheAttr::Cached) => {
                        Some(Decision::Allow(MapCache::Cached))
                    }
                    (NeedsSync::No, true, _) if delivers_wc(platform) => {
                        Some(Decision::Allow(MapCache::WriteCombined))
                    }
                    _ => None,
                };
                match want {
                    Some(w) => assert_eq!(d, w, "{ctx}"),
                    None => assert!(!d.is_allowed(), "{ctx}: {d}"),
                }
            }
        }
    }
    // Concretely: udmabuf on x86 AMD with a v1 kernel saying WC is mapped WC, the table
    // vouching for SYNC and stability; an i915 buffer stays refused (v1 does not say whether
    // SYNC is needed).
    let a = answers(
        Some(KernelAbi::V1),
        "udmabuf",
        KernelProbe::Answered(0),
        Platform::X86Amd,
    );
    assert_eq!(
        decide(&a, Platform::X86Amd),
        Decision::Allow(MapCache::WriteCombined)
    );
    let a = answers(
        Some(KernelAbi::V1),
        "i915",
        KernelProbe::Answered(1),
        Platform::X86Amd,
    );
    assert!(matches!(
        decide(&a, Platform::X86Amd),
        Decision::Refuse(RefuseReason::SyncUnknown { .. })
    ));
}

#[test]
fn answers_are_interpreted_only_with_the_configured_value_set() {
    for exporter in EXPORTERS {
        let table = answers(
            None,
            exporter,
            KernelProbe::Absent(libc::ENOTTY),
            Platform::X86Amd,
        );
        // No value set configured: the kernel's answer is not trusted.
        let a = answers(None, exporter, KernelProbe::Answered(2), Platform::X86Amd);
        assert_eq!(a, table, "{exporter}");
        // Configured, but the kernel has no ioctl or it failed.
        for probe in [
            KernelProbe::Absent(libc::ENOTTY),
            KernelProbe::Failed(libc::EFAULT),
        ] {
            for abi in [KernelAbi::V1, KernelAbi::V2] {
                let a = answers(Some(abi), exporter, probe, Platform::X86Amd);
                assert_eq!(a, table, "{exporter} {probe:?} {abi:?}");
            }
        }
    }
    // The same raw value means different things in the two sets: 1 is CACHED in v1, WC in v2.
    let v1 = answers(
        Some(KernelAbi::V1),
        "drm",
        KernelProbe::Answered(1),
        Platform::X86Amd,
    );
    let v2 = answers(
        Some(KernelAbi::V2),
        "drm",
        KernelProbe::Answered(1),
        Platform::X86Amd,
    );
    assert_eq!(v1.0.value, CacheAttr::Cached);
    assert_eq!(v2.0.value, CacheAttr::WriteCombined);
}

#[test]
fn the_kernel_comes_before_driver_and_quirk() {
    // A driver answer (msm: cached, needs SYNC) and a quirk lose to a v2 kernel answer.
    let config = Config {
        kernel_info_abi: Some(KernelAbi::V2),
        ..Config::from_toml_str("[[exporter]]\nname = \"msm\"\nstable = false\n").unwrap()
    };
    let msm = Source::DriverIoctl(Driver::Msm);
    let driver = Partial {
        cache: Some(Answer::new(CacheAttr::Cached, msm.clone())),
        needs_sync: Some(Answer::new(NeedsSync::Yes, msm.clone())),
        stable: Some(Answer::new(true, msm.clone())),
    };
    let a = dma_buf_answers(
        &config,
        DeviceAccess::NonCoherent,
        "msm",
        KernelProbe::Answered(1),
        driver.clone(),
    );
    assert_eq!(
        decide(&a, Platform::Arm64),
        Decision::Allow(MapCache::WriteCombined)
    );
    // Without the kernel the driver decides: refused for SYNC, not for the quirk's stability.
    let a = dma_buf_answers(
        &config,
        DeviceAccess::NonCoherent,
        "msm",
        KernelProbe::Absent(libc::ENOTTY),
        driver,
    );
    assert_eq!(
        decide(&a, Platform::Arm64),
        Decision::Refuse(RefuseReason::NeedsSync { source: msm })
    );
}
