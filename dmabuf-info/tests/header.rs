//! `include/dmabuf_info.h` is generated from `src/ffi.rs` with cbindgen: the structs, the
//! constants and the prototypes come from the Rust definitions, the few macros and the
//! proposed uapi block below from the same constants. This test generates it again and fails if
//! the committed header differs; `BLESS=1 cargo test -p dmabuf-info --test header` rewrites it.

use std::path::Path;

use dmabuf_info::ffi::{DMABUF_INFO_ABI_MAJOR, DMABUF_INFO_ABI_MINOR, DMABUF_INFO_E_NOT_BUFFER};
use dmabuf_info::uapi;

const PREAMBLE: &str = "\
/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * dmabuf_info.h - C ABI of the dmabuf-info library.
 *
 * What may the CPU, or a guest VM, do with a dma-buf: its CPU cache attribute, whether CPU
 * access needs DMA_BUF_IOCTL_SYNC, whether the attribute is stable, and where each answer
 * came from. Also a userspace shim for the proposed (never merged) DMA_BUF_IOCTL_INFO.
 *
 * Build with `pkg-config --cflags --libs dmabuf-info` (libdmabuf_info.so.1), or link
 * libdmabuf_info.a statically (+ `pkg-config --static --libs dmabuf-info`).
 *
 * Return values: 0 (or a documented non-negative value) on success, a negative errno on
 * failure, or DMABUF_INFO_E_NOT_BUFFER when the descriptor is neither a dma-buf nor a memfd.
 * No function takes ownership of a descriptor. All functions are thread-safe.
 *
 * Configuration: on first use the library reads $DMABUF_INFO_CONFIG, else the drop-in files
 * /usr/share/dmabuf-info/quirks.d/ *.toml and /etc/dmabuf-info/quirks.d/ *.toml, or the file
 * given to dmabuf_info_init().
 *
 * Generated from src/ffi.rs by cbindgen (tests/header.rs): do not edit by hand.
 */";

fn after_includes() -> String {
    let d = |v: u64| v.to_string();
    format!(
        "
#define DMABUF_INFO_ABI_MAJOR {major}
#define DMABUF_INFO_ABI_MINOR {minor}
#define DMABUF_INFO_ABI_VERSION ((DMABUF_INFO_ABI_MAJOR << 16) | DMABUF_INFO_ABI_MINOR)

/* Neither a dma-buf nor a memfd (result->file_kind says what it is); outside the errno range. */
#define DMABUF_INFO_E_NOT_BUFFER ({not_buffer})

/* *_source fields: low byte = DMABUF_INFO_SOURCE_* kind, second byte = detail */
#define DMABUF_INFO_SOURCE_KIND(s) ((s) & 0xff)
#define DMABUF_INFO_SOURCE_DETAIL(s) (((s) >> 8) & 0xff)

/* The proposed kernel uapi (2022, never merged). Same layout in both postings. */
#ifndef DMA_BUF_IOCTL_INFO
struct dma_buf_info {{
  uint32_t param;
  uint32_t pad;
  uint64_t value;
}};
/* _IOWR('b', 2, struct dma_buf_info) */
#define DMA_BUF_IOCTL_INFO {ioctl:#x}
#endif
/* v1 (2022-07-29) */
#ifndef DMA_BUF_INFO_VM_PROT
#define DMA_BUF_INFO_VM_PROT {vm_prot}
#define DMA_BUF_VM_PROT_WC {v1_wc}
#define DMA_BUF_VM_PROT_CACHED {v1_cached}
#endif
/* v2 (2022-08-15) */
#ifndef DMA_BUF_INFO_MAP_INFO
#define DMA_BUF_INFO_MAP_INFO {map_info}
#define DMA_BUF_MAP_INCOHERENT {v2_incoherent}
#define DMA_BUF_COHERENT_WC {v2_wc}
#define DMA_BUF_COHERENT_CACHED {v2_cached}
#endif",
        major = DMABUF_INFO_ABI_MAJOR,
        minor = DMABUF_INFO_ABI_MINOR,
        not_buffer = DMABUF_INFO_E_NOT_BUFFER,
        ioctl = uapi::DMA_BUF_IOCTL_INFO,
        vm_prot = uapi::DMA_BUF_INFO_VM_PROT,
        v1_wc = d(uapi::DMA_BUF_VM_PROT_WC),
        v1_cached = d(uapi::DMA_BUF_VM_PROT_CACHED),
        map_info = uapi::DMA_BUF_INFO_MAP_INFO,
        v2_incoherent = d(uapi::DMA_BUF_MAP_INCOHERENT),
        v2_wc = d(uapi::DMA_BUF_COHERENT_WC),
        v2_cached = d(uapi::DMA_BUF_COHERENT_CACHED),
    )
}

fn generate() -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs");
    let mut config = cbindgen::Config {
        language: cbindgen::Language::C,
        header: Some(PREAMBLE.into()),
        include_guard: Some("DMABUF_INFO_H".into()),
        no_includes: true,
        sys_includes: vec!["stdint.h".into()],
        after_includes: Some(after_includes()),
        cpp_compat: true,
        style: cbindgen::Style::Tag,
        documentation_style: cbindgen::DocumentationStyle::Doxy,
        ..Default::default()
    };
    for (rust, c) in [
        ("DmabufInfoResult", "dmabuf_info_result"),
        ("DmabufInfoDecision", "dmabuf_info_decision"),
        ("DmaBufInfoArg", "struct dma_buf_info"),
    ] {
        config.export.rename.insert(rust.into(), c.into());
    }
    // Declared in the verbatim block: the struct inside #ifndef, so that a kernel header that
    // has it wins; the negative code in parentheses.
    config.export.exclude.push("DmaBufInfoArg".into());
    config
        .export
        .exclude
        .push("DMABUF_INFO_E_NOT_BUFFER".into());
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(&src)
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_generated_from_the_rust_definitions() {
    // The uapi block's struct, written out above, is the Rust one.
    assert_eq!(std::mem::size_of::<uapi::DmaBufInfoArg>(), 16);
    assert_eq!(std::mem::offset_of!(uapi::DmaBufInfoArg, pad), 4);
    assert_eq!(std::mem::offset_of!(uapi::DmaBufInfoArg, value), 8);

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/dmabuf_info.h");
    let fresh = generate();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/dmabuf_info.h is not what src/ffi.rs generates; run BLESS=1 cargo test -p dmabuf-info --test header"
    );
    for needle in [
        "struct dmabuf_info_result {",
        "int dmabuf_info_inspect(int fd, int drm_fd, struct dmabuf_info_result *out);",
        "int dmabuf_info_query(int fd, struct dma_buf_info *info);",
        "#define DMABUF_INFO_E_NOT_BUFFER (-10000)",
        "#define DMABUF_INFO_PLATFORM_ARM64_FWB 5",
    ] {
        assert!(
            fresh.contains(needle),
            "generated header lacks `{needle}`:\n{fresh}"
        );
    }
}
