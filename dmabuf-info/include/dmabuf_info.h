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
 */

#ifndef DMABUF_INFO_H
#define DMABUF_INFO_H

#include <stdint.h>

#define DMABUF_INFO_ABI_MAJOR 1
#define DMABUF_INFO_ABI_MINOR 0
#define DMABUF_INFO_ABI_VERSION ((DMABUF_INFO_ABI_MAJOR << 16) | DMABUF_INFO_ABI_MINOR)

/* Neither a dma-buf nor a memfd (result->file_kind says what it is); outside the errno range. */
#define DMABUF_INFO_E_NOT_BUFFER (-10000)

/* *_source fields: low byte = DMABUF_INFO_SOURCE_* kind, second byte = detail */
#define DMABUF_INFO_SOURCE_KIND(s) ((s) & 0xff)
#define DMABUF_INFO_SOURCE_DETAIL(s) (((s) >> 8) & 0xff)

/* The proposed kernel uapi (2022, never merged). Same layout in both postings. */
#ifndef DMA_BUF_IOCTL_INFO
struct dma_buf_info {
  uint32_t param;
  uint32_t pad;
  uint64_t value;
};
/* _IOWR('b', 2, struct dma_buf_info) */
#define DMA_BUF_IOCTL_INFO 0xc0106202
#endif
/* v1 (2022-07-29) */
#ifndef DMA_BUF_INFO_VM_PROT
#define DMA_BUF_INFO_VM_PROT 1
#define DMA_BUF_VM_PROT_WC 0
#define DMA_BUF_VM_PROT_CACHED 1
#endif
/* v2 (2022-08-15) */
#ifndef DMA_BUF_INFO_MAP_INFO
#define DMA_BUF_INFO_MAP_INFO 1
#define DMA_BUF_MAP_INCOHERENT 0
#define DMA_BUF_COHERENT_WC 1
#define DMA_BUF_COHERENT_CACHED 2
#endif

/**
 * `kind`: a dma-buf.
 */
#define DMABUF_INFO_KIND_DMABUF 1

/**
 * `kind`: a memfd.
 */
#define DMABUF_INFO_KIND_MEMFD 2

/**
 * `cache`: nobody could say (values mirror `VIRTIO_GPU_MAP_CACHE_*`, with 0 = unknown).
 */
#define DMABUF_INFO_CACHE_UNKNOWN 0

/**
 * `cache`: write-back cached.
 */
#define DMABUF_INFO_CACHE_CACHED 1

/**
 * `cache`: uncached.
 */
#define DMABUF_INFO_CACHE_UNCACHED 2

/**
 * `cache`: write-combined.
 */
#define DMABUF_INFO_CACHE_WRITE_COMBINED 3

/**
 * `needs_sync`: nobody could say.
 */
#define DMABUF_INFO_SYNC_UNKNOWN 0

/**
 * `needs_sync`: coherent without `DMA_BUF_IOCTL_SYNC`.
 */
#define DMABUF_INFO_SYNC_NO 1

/**
 * `needs_sync`: CPU access needs `DMA_BUF_IOCTL_SYNC`.
 */
#define DMABUF_INFO_SYNC_YES 2

/**
 * `*_source` kind (low byte): nothing answered, the conservative default.
 */
#define DMABUF_INFO_SOURCE_DEFAULT 0

/**
 * `*_source` kind: `DMA_BUF_IOCTL_INFO`; detail (second byte) 1 = v1, 2 = v2.
 */
#define DMABUF_INFO_SOURCE_KERNEL_IOCTL 1

/**
 * `*_source` kind: a driver ioctl; detail 1 msm, 2 panfrost, 3 panthor, 4 i915, 5 amdgpu.
 */
#define DMABUF_INFO_SOURCE_DRIVER_IOCTL 2

/**
 * `*_source` kind: the built-in exporter table.
 */
#define DMABUF_INFO_SOURCE_EXPORTER_TABLE 3

/**
 * `*_source` kind: a configuration quirk.
 */
#define DMABUF_INFO_SOURCE_CONFIG_QUIRK 4

/**
 * `*_source` kind: the descriptor is a memfd.
 */
#define DMABUF_INFO_SOURCE_MEMFD 5

/**
 * `file_kind` after `DMABUF_INFO_E_NOT_BUFFER`: a regular file.
 */
#define DMABUF_INFO_FILE_REGULAR 1

/**
 * `file_kind`: a directory.
 */
#define DMABUF_INFO_FILE_DIRECTORY 2

/**
 * `file_kind`: a pipe or FIFO.
 */
#define DMABUF_INFO_FILE_PIPE 3

/**
 * `file_kind`: a socket.
 */
#define DMABUF_INFO_FILE_SOCKET 4

/**
 * `file_kind`: a character device.
 */
#define DMABUF_INFO_FILE_CHAR_DEVICE 5

/**
 * `file_kind`: a block device.
 */
#define DMABUF_INFO_FILE_BLOCK_DEVICE 6

/**
 * `file_kind`: an `O_PATH` symlink.
 */
#define DMABUF_INFO_FILE_SYMLINK 7

/**
 * `file_kind`: an anonymous inode (eventfd, timerfd, sync_file, ...).
 */
#define DMABUF_INFO_FILE_ANON_INODE 8

/**
 * `file_kind`: anything else.
 */
#define DMABUF_INFO_FILE_OTHER 9

/**
 * Platform for `dmabuf_info_decide()`: the configured or detected one.
 */
#define DMABUF_INFO_PLATFORM_DEFAULT 0

/**
 * x86 Intel, KVM ignores guest PAT.
 */
#define DMABUF_INFO_PLATFORM_X86_INTEL 1

/**
 * x86 Intel, guest PAT honoured.
 */
#define DMABUF_INFO_PLATFORM_X86_INTEL_GUEST_PAT 2

/**
 * x86 AMD.
 */
#define DMABUF_INFO_PLATFORM_X86_AMD 3

/**
 * arm64 without FWB.
 */
#define DMABUF_INFO_PLATFORM_ARM64 4

/**
 * arm64 with FEAT_S2FWB.
 */
#define DMABUF_INFO_PLATFORM_ARM64_FWB 5

/**
 * Anything else.
 */
#define DMABUF_INFO_PLATFORM_OTHER 6

/**
 * `refuse_reason`: CPU access needs `DMA_BUF_IOCTL_SYNC`, which a guest cannot issue.
 */
#define DMABUF_INFO_REFUSE_NEEDS_SYNC 1

/**
 * `refuse_reason`: unknown whether CPU access needs `DMA_BUF_IOCTL_SYNC`.
 */
#define DMABUF_INFO_REFUSE_SYNC_UNKNOWN 2

/**
 * `refuse_reason`: the cache attribute is unknown.
 */
#define DMABUF_INFO_REFUSE_CACHE_UNKNOWN 3

/**
 * `refuse_reason`: the attribute may change, or its stability is unknown.
 */
#define DMABUF_INFO_REFUSE_NOT_STABLE 4

/**
 * `refuse_reason`: the platform cannot give the guest this attribute.
 */
#define DMABUF_INFO_REFUSE_PLATFORM 5

/**
 * What `dmabuf_info_inspect()` found out about a buffer.
 */
struct dmabuf_info_result {
  /**
   * Set by the caller to `sizeof(struct dmabuf_info_result)`.
   */
  uint32_t struct_size;
  /**
   * `DMABUF_INFO_KIND_*` (0 when the call failed).
   */
  uint32_t kind;
  /**
   * Size in bytes.
   */
  uint64_t size;
  /**
   * Inode number.
   */
  uint64_t inode;
  /**
   * `DMABUF_INFO_CACHE_*`.
   */
  uint32_t cache;
  /**
   * `DMABUF_INFO_SOURCE_*` of `cache`.
   */
  uint32_t cache_source;
  /**
   * `DMABUF_INFO_SYNC_*`.
   */
  uint32_t needs_sync;
  /**
   * `DMABUF_INFO_SOURCE_*` of `needs_sync`.
   */
  uint32_t needs_sync_source;
  /**
   * 1 if stable, else 0.
   */
  uint32_t stable;
  /**
   * `DMABUF_INFO_SOURCE_*` of `stable`.
   */
  uint32_t stable_source;
  /**
   * `DMABUF_INFO_FILE_*` when the call returned `DMABUF_INFO_E_NOT_BUFFER`, else 0.
   */
  uint32_t file_kind;
  /**
   * Reserved, zero.
   */
  uint32_t reserved;
  /**
   * NUL-terminated exporter name (truncated).
   */
  char exporter[32];
  /**
   * NUL-terminated buffer name (truncated), empty if none.
   */
  char name[64];
};

/**
 * The guest mapping decision of `dmabuf_info_decide()`.
 */
struct dmabuf_info_decision {
  /**
   * 1 = allow, 0 = refuse.
   */
  uint32_t allow;
  /**
   * `VIRTIO_GPU_MAP_CACHE_*` (1, 2, 3) when allowed, else 0.
   */
  uint32_t map_info;
  /**
   * `DMABUF_INFO_REFUSE_*` when refused, else 0.
   */
  uint32_t refuse_reason;
  /**
   * The `DMABUF_INFO_PLATFORM_*` the decision was made for.
   */
  uint32_t platform;
  /**
   * NUL-terminated explanation.
   */
  char message[256];
};

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The library's ABI version, `(major << 16) | minor`; compare with
 * `DMABUF_INFO_ABI_VERSION`.
 */
uint32_t dmabuf_info_abi_version(void);

/**
 * Creates the process-wide inspector before first use (optional) from `config_path`, read
 * strictly, or with NULL from the default search ($DMABUF_INFO_CONFIG, else the drop-in
 * directories, whose broken files are skipped). Returns 0, -EINVAL (bad configuration) or
 * -EALREADY (the inspector already exists: first use or an earlier init).
 *
 * # Safety
 * `config_path` is NULL or a valid NUL-terminated string.
 */
int dmabuf_info_init(const char *config_path);

/**
 * The `DMABUF_INFO_PLATFORM_*` in use (configured or detected); 0 if the configuration is
 * invalid.
 */
uint32_t dmabuf_info_platform(void);

/**
 * Fills `*out` for `fd`. `drm_fd` is the DRM device that allocated the buffer, or -1.
 * `out->struct_size` must be set. Returns 0, -EBADF (`fd` not open),
 * `DMABUF_INFO_E_NOT_BUFFER` (`out->file_kind` set) or another -errno.
 *
 * # Safety
 * `out` points to a writable `struct dmabuf_info_result`.
 */
int dmabuf_info_inspect(int fd, int drm_fd, struct dmabuf_info_result *out);

/**
 * The guest mapping policy for `*info` on `platform` (a `DMABUF_INFO_PLATFORM_*`, 0 = the
 * configured or detected one). Returns 1 (allow, `out->map_info` set), 0 (refuse,
 * `out->refuse_reason` set) or -EINVAL for out-of-range values.
 *
 * # Safety
 * `info` points to a readable result struct, `out` to a writable decision struct.
 */
int dmabuf_info_decide(const struct dmabuf_info_result *info,
                       uint32_t platform,
                       struct dmabuf_info_decision *out);

/**
 * `dmabuf_info_query()` for value set `abi`: 1 = v1 (`DMA_BUF_INFO_VM_PROT`), 2 = v2
 * (`DMA_BUF_INFO_MAP_INFO`); -EINVAL for another `abi`.
 *
 * # Safety
 * `info` points to a readable and writable `struct dma_buf_info`.
 */
int dmabuf_info_query_abi(int fd, struct dma_buf_info *info, uint32_t abi);

/**
 * ioctl-shaped: fills `info->value` for `info->param == 1` exactly as a kernel carrying
 * `DMA_BUF_IOCTL_INFO` v2 (`DMA_BUF_INFO_MAP_INFO`, the last value set posted) would.
 * Returns 0 or -errno: -EINVAL (bad param or pad), -ENOTTY (not a dma-buf), -EBADF, -ENOSYS
 * (no answer: unknown, or not stable).
 *
 * # Safety
 * `info` points to a readable and writable `struct dma_buf_info`.
 */
int dmabuf_info_query(int fd, struct dma_buf_info *info);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* DMABUF_INFO_H */
