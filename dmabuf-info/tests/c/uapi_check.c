/* Prints ioctl numbers as the system's kernel uapi headers define them, one NAME=0xVALUE per
 * line, for tests/uapi_numbers.rs to compare with the Rust constants. DRM headers are used
 * when installed (linux-libc-dev ships them under /usr/include/drm). */
#include <stdio.h>
#include <linux/dma-buf.h>
#include <linux/ioctl.h>

#if __has_include(<linux/udmabuf.h>)
#include <linux/udmabuf.h>
#endif
#if __has_include(<linux/dma-heap.h>)
#include <linux/dma-heap.h>
#endif
#if __has_include(<drm/drm.h>)
#include <drm/drm.h>
#include <drm/drm_mode.h>
#endif
#if __has_include(<drm/msm_drm.h>)
#include <drm/msm_drm.h>
#endif
#if __has_include(<drm/i915_drm.h>)
#include <drm/i915_drm.h>
#endif
#if __has_include(<drm/amdgpu_drm.h>)
#include <drm/amdgpu_drm.h>
#endif

/* The proposed struct, as posted in 2022 (not in any released header). */
struct proposed_dma_buf_info {
	__u32 param;
	__u32 pad;
	__u64 value;
};

#define P(name, value) printf("%s=0x%llx\n", name, (unsigned long long)(value))

int main(void)
{
	P("DMA_BUF_IOCTL_SYNC", DMA_BUF_IOCTL_SYNC);
	P("DMA_BUF_SET_NAME_B", DMA_BUF_SET_NAME_B);
	P("sizeof_dma_buf_sync", sizeof(struct dma_buf_sync));
	P("DMA_BUF_SYNC_END", DMA_BUF_SYNC_END);
	P("DMA_BUF_SYNC_RW", DMA_BUF_SYNC_RW);
#ifdef DMA_BUF_IOCTL_EXPORT_SYNC_FILE
	P("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", DMA_BUF_IOCTL_EXPORT_SYNC_FILE);
	P("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", DMA_BUF_IOCTL_IMPORT_SYNC_FILE);
#endif
	P("DMA_BUF_IOCTL_INFO", _IOWR(DMA_BUF_BASE, 2, struct proposed_dma_buf_info));
#ifdef UDMABUF_CREATE
	P("UDMABUF_CREATE", UDMABUF_CREATE);
#endif
#ifdef DMA_HEAP_IOCTL_ALLOC
	P("DMA_HEAP_IOCTL_ALLOC", DMA_HEAP_IOCTL_ALLOC);
#endif
#ifdef DRM_IOCTL_VERSION
	P("DRM_IOCTL_VERSION", DRM_IOCTL_VERSION);
	P("DRM_IOCTL_PRIME_FD_TO_HANDLE", DRM_IOCTL_PRIME_FD_TO_HANDLE);
	P("DRM_IOCTL_PRIME_HANDLE_TO_FD", DRM_IOCTL_PRIME_HANDLE_TO_FD);
	P("DRM_IOCTL_GEM_CLOSE", DRM_IOCTL_GEM_CLOSE);
	P("DRM_IOCTL_MODE_CREATE_DUMB", DRM_IOCTL_MODE_CREATE_DUMB);
#endif
#ifdef DRM_IOCTL_MSM_GEM_INFO
	P("DRM_IOCTL_MSM_GEM_INFO", DRM_IOCTL_MSM_GEM_INFO);
	P("MSM_INFO_GET_FLAGS", MSM_INFO_GET_FLAGS);
#ifdef MSM_BO_CACHED_COHERENT
	P("MSM_BO_CACHED_COHERENT", MSM_BO_CACHED_COHERENT);
#endif
#endif
#ifdef DRM_IOCTL_I915_GEM_GET_CACHING
	P("DRM_IOCTL_I915_GEM_GET_CACHING", DRM_IOCTL_I915_GEM_GET_CACHING);
	P("DRM_IOCTL_I915_GETPARAM", DRM_IOCTL_I915_GETPARAM);
	P("I915_PARAM_HAS_LLC", I915_PARAM_HAS_LLC);
#endif
#ifdef DRM_IOCTL_AMDGPU_GEM_OP
	P("DRM_IOCTL_AMDGPU_GEM_OP", DRM_IOCTL_AMDGPU_GEM_OP);
	P("AMDGPU_GEM_CREATE_CPU_GTT_USWC", AMDGPU_GEM_CREATE_CPU_GTT_USWC);
#endif
	return 0;
}
