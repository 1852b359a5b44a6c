/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * dmabuf_info.h - C ABI of the dmabuf-info library.
 *
 * What may the CPU, or a guest VM, do with a dma-buf: its CPU cache attribute, whether CPU
 * access needs DMA_BUF_IOCTL_SYNC, whether the attribute is stable, and where each answer
 * came from. Also a userspace shim for the proposed (never merged) DMA_BUF_IOCTL_INFO.
 *
 * Link with -ldmabuf_info (cdylib) or libdmabuf_info.a (+ -lpthread -ldl -lm).
 *
 * Return values: 0 (or a documented non-negative value) on success, a negative errno on
 * failure, or DMABUF_INFO_E_NOT_BUFFER when the descriptor is neither a dma-buf nor a memfd.
 * No function takes ownership of a descriptor. All functions are thread-safe.
 *
 * Configuration: the library reads $DMABUF_INFO_CONFIG, else /etc/dmabuf-info/quirks.d/ *.toml,
 * on first use, or the file given to dmabuf_info_init().
 */
#ifndef DMABUF_INFO_H
#define DMABUF_INFO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DMABUF_INFO_ABI_MAJOR 1
#define DMABUF_INFO_ABI_MINOR 0
#define DMABUF_INFO_ABI_VERSION ((DMABUF_INFO_ABI_MAJOR << 16) | DMABUF_INFO_ABI_MINOR)

/* Neither a dma-buf nor a memfd; result->file_kind says what it is. */
#define DMABUF_INFO_E_NOT_BUFFER (-10000)

/* result->kind */
#define DMABUF_INFO_KIND_DMABUF 1
#define DMABUF_INFO_KIND_MEMFD 2

/* result->cache (values mirror VIRTIO_GPU_MAP_CACHE_*, with 0 = unknown) */
#define DMABUF_INFO_CACHE_UNKNOWN 0
#define DMABUF_INFO_CACHE_CACHED 1
#define DMABUF_INFO_CACHE_UNCACHED 2
#define DMABUF_INFO_CACHE_WRITE_COMBINED 3

/* result->needs_sync */
#define DMABUF_INFO_SYNC_UNKNOWN 0
#define DMABUF_INFO_SYNC_NO 1
#define DMABUF_INFO_SYNC_YES 2

/* result->*_source: low byte = kind, second byte = detail */
#define DMABUF_INFO_SOURCE_KIND(s) ((s) & 0xff)
#define DMABUF_INFO_SOURCE_DETAIL(s) (((s) >> 8) & 0xff)
#define DMABUF_INFO_SOURCE_DEFAULT 0
#define DMABUF_INFO_SOURCE_KERNEL_IOCTL 1 /* detail: 1 = v1, 2 = v2 */
#define DMABUF_INFO_SOURCE_DRIVER_IOCTL 2 /* detail: 1 msm, 2 panfrost, 3 panthor, 4 i915, 5 amdgpu */
#define DMABUF_INFO_SOURCE_EXPORTER_TABLE 3
#define DMABUF_INFO_SOURCE_CONFIG_QUIRK 4
#define DMABUF_INFO_SOURCE_MEMFD 5

/* result->file_kind after DMABUF_INFO_E_NOT_BUFFER */
#define DMABUF_INFO_FILE_REGULAR 1
#define DMABUF_INFO_FILE_DIRECTORY 2
#define DMABUF_INFO_FILE_PIPE 3
#define DMABUF_INFO_FILE_SOCKET 4
#define DMABUF_INFO_FILE_CHAR_DEVICE 5
#define DMABUF_INFO_FILE_BLOCK_DEVICE 6
#define DMABUF_INFO_FILE_SYMLINK 7
#define DMABUF_INFO_FILE_ANON_INODE 8
#define DMABUF_INFO_FILE_OTHER 9

/* Platforms for dmabuf_info_decide(); 0 = configured or detected */
#define DMABUF_INFO_PLATFORM_DEFAULT 0
#define DMABUF_INFO_PLATFORM_X86_INTEL 1           /* KVM ignores guest PAT */
#define DMABUF_INFO_PLATFORM_X86_INTEL_GUEST_PAT 2 /* guest PAT honoured */
#define DMABUF_INFO_PLATFORM_X86_AMD 3
#define DMABUF_INFO_PLATFORM_ARM64 4               /* no FWB */
#define DMABUF_INFO_PLATFORM_ARM64_FWB 5
#define DMABUF_INFO_PLATFORM_OTHER 6

/* decision->refuse_reason */
#define DMABUF_INFO_REFUSE_NEEDS_SYNC 1
#define DMABUF_INFO_REFUSE_SYNC_UNKNOWN 2
#define DMABUF_INFO_REFUSE_CACHE_UNKNOWN 3
#define DMABUF_INFO_REFUSE_NOT_STABLE 4
#define DMABUF_INFO_REFUSE_PLATFORM 5

struct dmabuf_info_result {
	uint32_t struct_size; /* set by the caller: sizeof(struct dmabuf_info_result) */
	uint32_t kind;
	uint64_t size;
	uint64_t inode;
	uint32_t cache;
	uint32_t cache_source;
	uint32_t needs_sync;
	uint32_t needs_sync_source;
	uint32_t stable; /* 1 = cannot change while the buffer lives */
	uint32_t stable_source;
	uint32_t file_kind;
	uint32_t reserved;
	char exporter[32]; /* exp_name, or "memfd" */
	char name[64];     /* buffer name, may be empty */
};

struct dmabuf_info_decision {
	uint32_t allow;         /* 1 = map it, 0 = refuse */
	uint32_t map_info;      /* VIRTIO_GPU_MAP_CACHE_*: 1 cached, 2 uncached, 3 wc; never 0 when allowed */
	uint32_t refuse_reason; /* DMABUF_INFO_REFUSE_* */
	uint32_t platform;      /* DMABUF_INFO_PLATFORM_* used */
	char message[256];      /* why, naming the source of the answer */
};

/* The proposed kernel uapi (2022, never merged). Same layout in both postings. */
#ifndef DMA_BUF_IOCTL_INFO
struct dma_buf_info {
	uint32_t param;
	uint32_t pad;
	uint64_t value;
};
#define DMA_BUF_IOCTL_INFO _IOWR(DMA_BUF_BASE, 2, struct dma_buf_info)
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

/* (major << 16) | minor of the library; compare with DMABUF_INFO_ABI_VERSION. */
uint32_t dmabuf_info_abi_version(void);

/* Creates the process-wide inspector from config_path (NULL = default search) before first
 * use. 0, -EINVAL (bad configuration) or -EALREADY (already created). Optional. */
int dmabuf_info_init(const char *config_path);

/* DMABUF_INFO_PLATFORM_* in use (configured or detected); 0 if the configuration is bad. */
uint32_t dmabuf_info_platform(void);

/* Fills *out for fd. drm_fd: the DRM device that allocated the buffer, or -1.
 * 0, -EBADF (fd not open), DMABUF_INFO_E_NOT_BUFFER (out->file_kind set), or -errno. */
int dmabuf_info_inspect(int fd, int drm_fd, struct dmabuf_info_result *out);

/* Guest mapping policy for *info on platform (0 = configured/detected).
 * 1 = allow (out->map_info set), 0 = refuse (out->refuse_reason set), -EINVAL bad input. */
int dmabuf_info_decide(const struct dmabuf_info_result *info, uint32_t platform,
		       struct dmabuf_info_decision *out);

/* ioctl-shaped: fills info->value for info->param == 1 exactly as a kernel carrying
 * DMA_BUF_IOCTL_INFO v2 (DMA_BUF_INFO_MAP_INFO) would. 0 or -errno: -EINVAL bad param/pad,
 * -ENOTTY not a dma-buf, -EBADF, -ENOSYS no answer (unknown or not stable). */
int dmabuf_info_query(int fd, struct dma_buf_info *info);

/* Same, for value set abi: 1 = v1 (DMA_BUF_INFO_VM_PROT), 2 = v2 (DMA_BUF_INFO_MAP_INFO). */
int dmabuf_info_query_abi(int fd, struct dma_buf_info *info, uint32_t abi);

#ifdef __cplusplus
}
#endif

#endif /* DMABUF_INFO_H */
