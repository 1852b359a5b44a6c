//! Real dma-buf exporters: udmabuf (`/dev/udmabuf` + a sealed memfd), the system dma-heap
//! (`/dev/dma_heap/system`) and vgem (a DRM device whose driver is "vgem": dumb buffer +
//! PRIME export). None exists on the development host; these run inside a Linux guest (e.g.
//! Debian's 6.12 kernel, which has UDMABUF=y, DMABUF_HEAPS_SYSTEM=y, DRM_VGEM=m).
//!
//! Each case is reported as ignored, never passed, when its device is absent. The binary has
//! no dynamic-only dependencies, so it can be built with `-C target-feature=+crt-static`.
//!
//! Run: `cargo test -p dmabuf-info --test real_exporters` (add `-- --include-ignored` to see
//! the absent ones fail loudly instead of being skipped).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use dmabuf_info::sources::kernel::{self, KernelProbe};
use dmabuf_info::uapi::{self, DmaBufInfoArg};
use dmabuf_info::{
    BufferInfo, BufferKind, CacheAttr, Config, Decision, DeviceAccess, Error, Inspector, KernelAbi,
    MapCache, NeedsSync, Platform, Source, SyncAccess, SyncGuard,
};
use libtest_mimic::{Arguments, Failed, Trial};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};

type TestResult = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($msg)+)).into());
        }
    };
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, Failed> {
    r.map_err(|e| Failed::from(format!("{what}: {e}")))
}

fn inspector(platform: Platform) -> Inspector {
    Inspector::new(Config {
        platform: Some(platform),
        ..Config::default()
    })
}

fn open_rw(path: &Path) -> Result<OwnedFd, Failed> {
    ctx(
        rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()),
        &format!("open {}", path.display()),
    )
}

const PAGES: u64 = 16;
const PAGE: u64 = 4096;

fn make_udmabuf() -> Result<(OwnedFd, OwnedFd), Failed> {
    let dev = open_rw(Path::new("/dev/udmabuf"))?;
    let memfd = ctx(
        rustix::fs::memfd_create(
            "udmabuf-backing",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        ),
        "memfd_create",
    )?;
    ctx(rustix::fs::ftruncate(&memfd, PAGES * PAGE), "ftruncate")?;
    ctx(
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK),
        "F_SEAL_SHRINK",
    )?;
    let buf = ctx(
        uapi::udmabuf_create(dev.as_fd(), memfd.as_fd(), 0, PAGES * PAGE),
        "UDMABUF_CREATE",
    )?;
    Ok((buf, memfd))
}

fn make_heap_buffer() -> Result<OwnedFd, Failed> {
    let heap = open_rw(Path::new("/dev/dma_heap/system"))?;
    ctx(
        uapi::dma_heap_alloc(heap.as_fd(), PAGES * PAGE),
        "DMA_HEAP_IOCTL_ALLOC",
    )
}

/// The first DRM node (card or render) whose driver is vgem.
fn vgem_node() -> Option<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    nodes.sort();
    nodes.into_iter().find(|p| {
        rustix::fs::open(p.as_path(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .ok()
            .and_then(|fd| uapi::drm_driver_name(fd.as_fd()).ok())
            .is_some_and(|n| n == "vgem")
    })
}

/// Checks shared by every exporter: identity, size, inode, kernel probe, SYNC guard, cache.
fn common_checks(
    ins: &Inspector,
    buf: BorrowedFd<'_>,
    info: &BufferInfo,
    exporter: &str,
) -> TestResult {
    ensure!(info.kind == BufferKind::DmaBuf, "kind {:?}", info.kind);
    ensure!(
        info.exporter == exporter,
        "exp_name {:?}, expected {exporter:?}",
        info.exporter
    );
    ensure!(
        info.size == PAGES * PAGE || exporter == "drm",
        "size {}",
        info.size
    );
    let st = ctx(rustix::fs::fstat(buf), "fstat")?;
    ensure!(
        info.inode == st.st_ino,
        "inode {} != st_ino {}",
        info.inode,
        st.st_ino
    );
    ensure!(
        info.size == st.st_size as u64,
        "size {} != st_size {}",
        info.size,
        st.st_size
    );
    // Upstream kernels have no DMA_BUF_IOCTL_INFO.
    ensure!(
        kernel::probe(buf) == KernelProbe::Absent(libc::ENOTTY),
        "kernel probe: {:?}",
        kernel::probe(buf)
    );
    ensure!(
        info.kernel_ioctl == Some(Err(libc::ENOTTY)),
        "kernel_ioctl {:?}",
        info.kernel_ioctl
    );
    // SYNC guard: START and END both succeed.
    for access in [SyncAccess::Read, SyncAccess::Write, SyncAccess::ReadWrite] {
        let guard = ctx(SyncGuard::begin(buf, access), "DMA_BUF_IOCTL_SYNC START")?;
        ctx(guard.end(), "DMA_BUF_IOCTL_SYNC END")?;
    }
    {
        let _dropped = ctx(SyncGuard::begin(buf, SyncAccess::ReadWrite), "SYNC START")?;
    }
    // Cached path: same answer again, one entry.
    let again = ctx(ins.inspect(buf, None), "inspect again")?;
    ensure!(&again == info || exporter == "drm", "second answer differs");
    Ok(())
}

fn check_cached_coherent_exporter(buf: BorrowedFd<'_>, exporter: &str) -> TestResult {
    // On a DMA-coherent host (x86) the table says cached + coherent: allowed as CACHED.
    let ins = inspector(Platform::X86Intel);
    let info = ctx(ins.inspect(buf, None), "inspect")?;
    common_checks(&ins, buf, &info, exporter)?;
    ensure!(
        info.cache.value == CacheAttr::Cached,
        "cache {:?}",
        info.cache
    );
    ensure!(
        info.cache.source == Source::ExporterTable,
        "cache source {}",
        info.cache.source
    );
    ensure!(
        info.needs_sync.value == NeedsSync::No,
        "needs_sync {:?}",
        info.needs_sync
    );
    ensure!(info.stable.value, "not stable");
    ensure!(
        info.driver_probes.is_empty(),
        "DRM probed for {exporter}: {:?}",
        info.driver_probes
    );
    ensure!(
        ins.decide(&info) == Decision::Allow(MapCache::Cached),
        "{}",
        ins.decide(&info)
    );
    ensure!(
        ins.decide_fd(buf, None).ok() == Some(Decision::Allow(MapCache::Cached)),
        "decide_fd"
    );

    // The ioctl-shaped shim answers as a patched kernel would.
    let mut arg = DmaBufInfoArg {
        param: uapi::DMA_BUF_INFO_MAP_INFO,
        ..Default::default()
    };
    ensure!(
        ins.query_uapi(buf, &mut arg, KernelAbi::V2).is_ok(),
        "query v2"
    );
    ensure!(
        arg.value == uapi::DMA_BUF_COHERENT_CACHED,
        "v2 value {}",
        arg.value
    );
    let mut arg = DmaBufInfoArg {
        param: uapi::DMA_BUF_INFO_VM_PROT,
        ..Default::default()
    };
    ensure!(
        ins.query_uapi(buf, &mut arg, KernelAbi::V1).is_ok(),
        "query v1"
    );
    ensure!(
        arg.value == uapi::DMA_BUF_VM_PROT_CACHED,
        "v1 value {}",
        arg.value
    );

    // On a non-coherent host the same exporter needs SYNC: refused.
    let arm = inspector(Platform::Arm64);
    let info = ctx(arm.inspect(buf, None), "inspect (arm64)")?;
    ensure!(
        info.needs_sync.value == NeedsSync::Yes,
        "arm64 needs_sync {:?}",
        info.needs_sync
    );
    ensure!(
        matches!(arm.decide(&info), Decision::Refuse(_)),
        "arm64 must refuse"
    );
    let mut arg = DmaBufInfoArg {
        param: 1,
        ..Default::default()
    };
    ensure!(
        arm.query_uapi(buf, &mut arg, KernelAbi::V2).is_ok(),
        "query v2 arm64"
    );
    ensure!(
        arg.value == uapi::DMA_BUF_MAP_INCOHERENT,
        "v2 value on arm64 {}",
        arg.value
    );

    // arm64 with devices that snoop, or none at all: the same buffer is mapped cached, with
    // and without FWB (only a non-coherent device makes it need SYNC).
    for platform in [Platform::Arm64, Platform::Arm64Fwb] {
        for devices in [DeviceAccess::Coherent, DeviceAccess::CpuOnly] {
            let ins = Inspector::new(Config {
                platform: Some(platform),
                devices: Some(devices),
                ..Config::default()
            });
            let d = ctx(ins.decide_fd(buf, None), "decide_fd (arm64, devices)")?;
            ensure!(
                d == Decision::Allow(MapCache::Cached),
                "{platform} with devices {devices}: {d}"
            );
        }
    }

    // The cache: a real dma-buf's inode keeps its change time, so repeated queries are hits,
    // and another buffer of the same exporter gets its own entry and inode.
    let ins = inspector(Platform::X86Amd);
    for _ in 0..3 {
        ctx(ins.inspect(buf, None), "inspect (repeated)")?;
    }
    ensure!(
        ins.cached_buffers() == 1,
        "{} entries",
        ins.cached_buffers()
    );
    let (other, _backing) = if exporter == "udmabuf" {
        let (b, m) = make_udmabuf()?;
        (b, Some(m))
    } else {
        (make_heap_buffer()?, None)
    };
    let other_info = ctx(ins.inspect(other.as_fd(), None), "inspect other")?;
    ensure!(
        ins.cached_buffers() == 2,
        "{} entries",
        ins.cached_buffers()
    );
    ensure!(
        other_info.inode != ctx(ins.inspect(buf, None), "inspect")?.inode,
        "two live dma-bufs share an inode number"
    );

    // A configured kernel ABI does not change anything when the kernel lacks the ioctl.
    let v2 = Inspector::new(Config {
        platform: Some(Platform::X86Amd),
        kernel_info_abi: Some(KernelAbi::V2),
        ..Config::default()
    });
    let info = ctx(v2.inspect(buf, None), "inspect (kernel abi v2)")?;
    ensure!(
        info.cache.source == Source::ExporterTable,
        "source {}",
        info.cache.source
    );

    // A quirk overrides the table.
    let quirk = Inspector::new(ctx(
        Config::from_toml_str(&format!(
            "platform = \"x86-amd\"\n[[exporter]]\nname = \"{exporter}\"\ncache = \"write-combined\"\n"
        )),
        "config",
    )?);
    let info = ctx(quirk.inspect(buf, None), "inspect (quirk)")?;
    ensure!(
        info.cache.value == CacheAttr::WriteCombined,
        "quirk cache {:?}",
        info.cache
    );
    ensure!(
        matches!(info.cache.source, Source::ConfigQuirk(_)),
        "quirk source {}",
        info.cache.source
    );
    ensure!(
        quirk.decide(&info) == Decision::Allow(MapCache::WriteCombined),
        "{}",
        quirk.decide(&info)
    );
    Ok(())
}

fn udmabuf_case() -> TestResult {
    let (buf, _memfd) = make_udmabuf()?;
    check_cached_coherent_exporter(buf.as_fd(), "udmabuf")?;
    // The name set with DMA_BUF_SET_NAME shows up (fresh inspector: answers are cached).
    ctx(
        uapi::dma_buf_set_name(buf.as_fd(), c"frame-7"),
        "DMA_BUF_SET_NAME",
    )?;
    let info = ctx(
        inspector(Platform::X86Amd).inspect(buf.as_fd(), None),
        "inspect named",
    )?;
    ensure!(
        info.name.as_deref() == Some("frame-7"),
        "name {:?}",
        info.name
    );
    Ok(())
}

fn system_heap_case() -> TestResult {
    let buf = make_heap_buffer()?;
    check_cached_coherent_exporter(buf.as_fd(), "system")
}

fn vgem_case(node: &Path) -> TestResult {
    let drm = open_rw(node)?;
    let dumb = ctx(
        uapi::drm_mode_create_dumb(drm.as_fd(), 64, 64, 32),
        "MODE_CREATE_DUMB",
    )?;
    let buf = ctx(
        uapi::drm_prime_handle_to_fd(drm.as_fd(), dumb.handle),
        "PRIME_HANDLE_TO_FD",
    )?;
    let ins = inspector(Platform::X86Amd);

    // With the allocating DRM fd: the driver path runs (private reopen, PRIME import, no query
    // ioctl on vgem, GEM_CLOSE), then the name table answers for "drm": unknown, refused.
    let info = ctx(
        ins.inspect(buf.as_fd(), Some(drm.as_fd())),
        "inspect with drm fd",
    )?;
    ensure!(info.exporter == "drm", "exp_name {:?}", info.exporter);
    ensure!(
        info.size == dumb.size,
        "size {} != dumb size {}",
        info.size,
        dumb.size
    );
    ensure!(
        info.driver_probes.len() == 1,
        "probes {:?}",
        info.driver_probes
    );
    let p = &info.driver_probes[0];
    ensure!(p.driver == "vgem", "driver {:?}", p.driver);
    ensure!(p.imported, "PRIME import did not happen: {}", p.outcome);
    ensure!(
        p.outcome.contains("no cache query ioctl"),
        "outcome {}",
        p.outcome
    );
    ensure!(
        info.cache.value == CacheAttr::Unknown,
        "cache {:?}",
        info.cache
    );
    ensure!(
        info.cache.source == Source::ExporterTable,
        "cache source {}",
        info.cache.source
    );
    ensure!(
        info.needs_sync.value == NeedsSync::Unknown,
        "needs_sync {:?}",
        info.needs_sync
    );
    ensure!(!info.stable.value, "stable");
    match ins.decide(&info) {
        Decision::Refuse(r) => ensure!(r.to_string().contains("exporter table"), "reason {r}"),
        d => return Err(format!("vgem buffer allowed: {d}").into()),
    }
    let mut arg = DmaBufInfoArg {
        param: 1,
        ..Default::default()
    };
    ensure!(
        ins.query_uapi(buf.as_fd(), &mut arg, KernelAbi::V2) == Err(libc::ENOSYS),
        "query on drm"
    );

    // The caller's own handle survived the probe (the import used a private DRM file).
    let again = ctx(
        uapi::drm_prime_handle_to_fd(drm.as_fd(), dumb.handle),
        "re-export caller's handle",
    )?;
    let (a, b) = (
        ctx(rustix::fs::fstat(&buf), "fstat")?,
        ctx(rustix::fs::fstat(&again), "fstat")?,
    );
    ensure!(
        a.st_ino == b.st_ino,
        "caller's handle now names another buffer"
    );

    // Without a DRM fd, no render node is asked: vgem cannot answer, so importing is pointless.
    let fresh = inspector(Platform::X86Amd);
    let info2 = ctx(fresh.inspect(buf.as_fd(), None), "inspect without drm fd")?;
    ensure!(
        info2.driver_probes.is_empty(),
        "probed {:?}",
        info2.driver_probes
    );
    ensure!(
        matches!(fresh.decide(&info2), Decision::Refuse(_)),
        "allowed without drm fd"
    );

    common_checks(&ins, buf.as_fd(), &info, "drm")?;
    Ok(())
}

/// The CLI binary: `$DMABUF_INFO_BIN`, the one cargo built next to this test, or
/// `/bin/dmabuf-info` (where the guest script puts it).
fn cli_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DMABUF_INFO_BIN").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_BIN_EXE_dmabuf-info"))),
        Some(PathBuf::from("/bin/dmabuf-info")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn cli_case(bin: &Path) -> TestResult {
    // Hold whatever real buffers exist; the CLI finds them through pidfd_getfd.
    let udmabuf = if Path::new("/dev/udmabuf").exists() {
        Some(make_udmabuf()?)
    } else {
        None
    };
    let heap = if Path::new("/dev/dma_heap/system").exists() {
        Some(make_heap_buffer()?)
    } else {
        None
    };
    let pid = std::process::id().to_string();
    let out = ctx(
        std::process::Command::new(bin)
            .args([
                "inspect",
                "--pid",
                &pid,
                "--json",
                "--platform",
                "x86-intel",
            ])
            .output(),
        "run dmabuf-info",
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.code() == Some(0),
        "exit {:?}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = ctx(serde_json::from_str(&text), "JSON")?;
    let bufs = v["buffers"].as_array().cloned().unwrap_or_default();
    let mut expected = Vec::new();
    if let Some((buf, _)) = &udmabuf {
        expected.push(("udmabuf", std::os::fd::AsRawFd::as_raw_fd(buf)));
    }
    if let Some(buf) = &heap {
        expected.push(("system", std::os::fd::AsRawFd::as_raw_fd(buf)));
    }
    for (exporter, fd) in expected {
        let b = bufs.iter().find(|b| b["fd"] == fd);
        let Some(b) = b else {
            return Err(format!("fd {fd} ({exporter}) not listed: {text}").into());
        };
        ensure!(b["kind"] == "dma-buf", "{b}");
        ensure!(b["exporter"] == exporter, "{b}");
        ensure!(b["size"] == PAGES * PAGE, "{b}");
        ensure!(b["kernel_ioctl"]["status"] == "absent", "{b}");
        ensure!(b["cache"]["source"] == "exporter table", "{b}");
        ensure!(
            b["decision"]["allow"] == true && b["decision"]["map_info"] == 1,
            "{b}"
        );
        // One descriptor, table form.
        let out = ctx(
            std::process::Command::new(bin)
                .args([
                    "inspect",
                    "--pid",
                    &pid,
                    "--fd",
                    &fd.to_string(),
                    "--platform",
                    "arm64",
                ])
                .output(),
            "run dmabuf-info --fd",
        )?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.code() == Some(5),
            "arm64 must refuse (exit 5): {table}"
        );
        ensure!(table.contains(&format!("fd {fd}: dma-buf")), "{table}");
        ensure!(
            table.contains("refuse: CPU access needs DMA_BUF_IOCTL_SYNC"),
            "{table}"
        );
        // Path form: dma-bufs cannot be reopened through /proc (ENXIO), so the CLI turns
        // /proc/PID/fd/N into pidfd_getfd.
        let out = ctx(
            std::process::Command::new(bin)
                .args([
                    "inspect",
                    "--platform",
                    "x86-intel",
                    &format!("/proc/{pid}/fd/{fd}"),
                ])
                .output(),
            "run dmabuf-info PATH",
        )?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.code() == Some(0),
            "path form: {:?} {table}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            table.contains(&format!("pid {pid} fd {fd}: dma-buf")),
            "{table}"
        );
        ensure!(table.contains(exporter), "{table}");
    }
    // --drm: the vgem driver path through the CLI.
    if let Some(node) = vgem_node() {
        let drm = open_rw(&node)?;
        let dumb = ctx(
            uapi::drm_mode_create_dumb(drm.as_fd(), 32, 32, 32),
            "MODE_CREATE_DUMB",
        )?;
        let buf = ctx(
            uapi::drm_prime_handle_to_fd(drm.as_fd(), dumb.handle),
            "PRIME_HANDLE_TO_FD",
        )?;
        let n = std::os::fd::AsRawFd::as_raw_fd(&buf).to_string();
        let node_arg = node.display().to_string();
        let out = ctx(
            std::process::Command::new(bin)
                .args([
                    "inspect", "--pid", &pid, "--fd", &n, "--drm", &node_arg, "--json",
                ])
                .output(),
            "run dmabuf-info --drm",
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.code() == Some(5),
            "vgem buffer must be refused (exit 5): {text}"
        );
        let v: serde_json::Value = ctx(serde_json::from_str(&text), "JSON")?;
        let b = &v["buffers"][0];
        ensure!(b["exporter"] == "drm", "{b}");
        ensure!(b["driver_probes"][0]["driver"] == "vgem", "{b}");
        ensure!(b["driver_probes"][0]["imported"] == true, "{b}");
        ensure!(b["decision"]["reason"] == "sync-unknown", "{b}");
    }
    Ok(())
}

fn non_buffer_device_case(node: &Path) -> TestResult {
    // The DRM node itself is not a buffer.
    let drm = open_rw(node)?;
    match inspector(Platform::X86Amd).inspect(drm.as_fd(), None) {
        Err(Error::NotDmaBuf { .. }) => Ok(()),
        other => Err(format!("DRM node gave {other:?}").into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let udmabuf = Path::new("/dev/udmabuf").exists();
    let heap = Path::new("/dev/dma_heap/system").exists();
    let vgem = vgem_node();
    let vgem2 = vgem.clone();
    let vgem3 = vgem.clone();
    let cli = cli_binary();
    let cli2 = cli.clone();
    let trials = vec![
        Trial::test(
            "udmabuf: identification, answers, policy, SYNC guard, uapi shim",
            udmabuf_case,
        )
        .with_ignored_flag(!udmabuf),
        Trial::test(
            "system heap: identification, answers, policy, SYNC guard, uapi shim",
            system_heap_case,
        )
        .with_ignored_flag(!heap),
        Trial::test(
            "vgem: PRIME-import driver path, drm = unknown, refused, SYNC guard",
            move || {
                vgem2
                    .as_deref()
                    .map_or_else(|| Err("no vgem".into()), vgem_case)
            },
        )
        .with_ignored_flag(vgem.is_none()),
        Trial::test("vgem: the DRM node itself is not a buffer", move || {
            vgem3
                .as_deref()
                .map_or_else(|| Err("no vgem".into()), non_buffer_device_case)
        })
        .with_ignored_flag(vgem.is_none()),
        Trial::test(
            "cli: inspect --pid lists this process's real dma-bufs",
            move || {
                cli2.as_deref()
                    .map_or_else(|| Err("no dmabuf-info binary".into()), cli_case)
            },
        )
        .with_ignored_flag(cli.is_none() || !(udmabuf || heap)),
    ];
    libtest_mimic::run(&args, trials).exit();
}
