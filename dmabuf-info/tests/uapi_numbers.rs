//! ioctl numbers and struct sizes against the kernel uapi headers: the literal values, and,
//! where `/usr/include/linux/dma-buf.h` exists and `cc` works, the values a C compiler gets
//! from the system headers. Also: the kernel-ioctl probe and its "absent" outcome here.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use dmabuf_info::sources::kernel::{self, KernelProbe};
use dmabuf_info::uapi;

#[test]
fn literal_numbers_from_the_headers() {
    // include/uapi/linux/dma-buf.h
    assert_eq!(uapi::DMA_BUF_IOCTL_SYNC, 0x4008_6200);
    assert_eq!(uapi::DMA_BUF_SET_NAME_B, 0x4008_6201);
    assert_eq!(uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0xC008_6202);
    assert_eq!(uapi::DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x4008_6203);
    // The proposed DMA_BUF_IOCTL_INFO: same type and nr as EXPORT_SYNC_FILE, other size.
    assert_eq!(uapi::DMA_BUF_IOCTL_INFO, 0xC010_6202);
    assert_eq!(std::mem::size_of::<uapi::DmaBufInfoArg>(), 16);
    assert_eq!(uapi::DMA_BUF_MAGIC, 0x444d_4142);
    // linux/udmabuf.h, linux/dma-heap.h
    assert_eq!(uapi::UDMABUF_CREATE, 0x4018_7542);
    assert_eq!(uapi::DMA_HEAP_IOCTL_ALLOC, 0xC018_4800);
    // drm/drm.h
    assert_eq!(uapi::DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xC00C_642E);
    assert_eq!(uapi::DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
    // The sync flags.
    assert_eq!(uapi::DMA_BUF_SYNC_RW | uapi::DMA_BUF_SYNC_END, 7);
}

fn cc_available() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Compiles a C program that prints the header values and compares them with ours.
#[test]
fn values_match_system_headers_via_cc() {
    if !Path::new("/usr/include/linux/dma-buf.h").exists() || !cc_available() {
        eprintln!("skipped: no /usr/include/linux/dma-buf.h or no cc");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/uapi_check.c");
    let exe = dir.path().join("uapi_check");
    let out = Command::new("cc")
        .args(["-O0", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        let (name, value) = line.split_once('=').unwrap();
        let value = u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
        let ours: u64 = match name {
            "DMA_BUF_IOCTL_SYNC" => uapi::DMA_BUF_IOCTL_SYNC.into(),
            "DMA_BUF_SET_NAME_B" => uapi::DMA_BUF_SET_NAME_B.into(),
            "DMA_BUF_IOCTL_EXPORT_SYNC_FILE" => uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE.into(),
            "DMA_BUF_IOCTL_IMPORT_SYNC_FILE" => uapi::DMA_BUF_IOCTL_IMPORT_SYNC_FILE.into(),
            "DMA_BUF_IOCTL_INFO" => uapi::DMA_BUF_IOCTL_INFO.into(),
            "sizeof_dma_buf_sync" => std::mem::size_of::<uapi::DmaBufSync>() as u64,
            "DMA_BUF_SYNC_END" => uapi::DMA_BUF_SYNC_END,
            "DMA_BUF_SYNC_RW" => uapi::DMA_BUF_SYNC_RW,
            "DRM_IOCTL_VERSION" => uapi::DRM_IOCTL_VERSION.into(),
            "DRM_IOCTL_PRIME_FD_TO_HANDLE" => uapi::DRM_IOCTL_PRIME_FD_TO_HANDLE.into(),
            "DRM_IOCTL_PRIME_HANDLE_TO_FD" => uapi::DRM_IOCTL_PRIME_HANDLE_TO_FD.into(),
            "DRM_IOCTL_GEM_CLOSE" => uapi::DRM_IOCTL_GEM_CLOSE.into(),
            "DRM_IOCTL_MODE_CREATE_DUMB" => uapi::DRM_IOCTL_MODE_CREATE_DUMB.into(),
            "UDMABUF_CREATE" => uapi::UDMABUF_CREATE.into(),
            "DMA_HEAP_IOCTL_ALLOC" => uapi::DMA_HEAP_IOCTL_ALLOC.into(),
            "DRM_IOCTL_MSM_GEM_INFO" => uapi::DRM_IOCTL_MSM_GEM_INFO.into(),
            "DRM_IOCTL_I915_GEM_GET_CACHING" => uapi::DRM_IOCTL_I915_GEM_GET_CACHING.into(),
            "DRM_IOCTL_I915_GETPARAM" => uapi::DRM_IOCTL_I915_GETPARAM.into(),
            "DRM_IOCTL_AMDGPU_GEM_OP" => uapi::DRM_IOCTL_AMDGPU_GEM_OP.into(),
            "MSM_INFO_GET_FLAGS" => uapi::MSM_INFO_GET_FLAGS.into(),
            "MSM_BO_CACHED_COHERENT" => uapi::MSM_BO_CACHED_COHERENT,
            "I915_PARAM_HAS_LLC" => uapi::I915_PARAM_HAS_LLC as u64,
            "AMDGPU_GEM_CREATE_CPU_GTT_USWC" => uapi::AMDGPU_GEM_CREATE_CPU_GTT_USWC,
            other => panic!("unexpected line {other}"),
        };
        assert_eq!(ours, value, "{name}");
        seen += 1;
    }
    assert!(seen >= 9, "only {seen} values checked:\n{text}");
}

/// The probe reports what this kernel does with DMA_BUF_IOCTL_INFO. There is no dma-buf
/// exporter on this host (no DRM, udmabuf or heaps), so it is issued on a memfd: the number
/// is unknown to shmem too, and the probe must classify the ENOTTY as "absent". The probe on
/// real dma-bufs of an upstream kernel is in `tests/real_exporters.rs`.
#[test]
fn kernel_ioctl_probe_reports_absent_here() {
    let fd = rustix::fs::memfd_create("probe", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    assert_eq!(kernel::probe(fd.as_fd()), KernelProbe::Absent(libc::ENOTTY));
    assert_eq!(
        uapi::dma_buf_ioctl_info(fd.as_fd(), uapi::DMA_BUF_INFO_MAP_INFO)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTTY)
    );
}
