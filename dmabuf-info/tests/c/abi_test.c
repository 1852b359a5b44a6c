/* Exercises the C ABI (include/dmabuf_info.h) on real descriptors: a memfd, a pipe, a closed
 * descriptor. Run by tests/c_abi.rs with argv[1] = a configuration file that sets
 * platform = "x86-amd". Prints "ok" and exits 0, or names the failed check and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dmabuf_info.h"

static int failures;
#define CHECK(cond)                                                              \
	do {                                                                     \
		if (!(cond)) {                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,   \
				__LINE__, #cond);                                \
			failures++;                                              \
		}                                                                \
	} while (0)

int main(int argc, char **argv)
{
	struct dmabuf_info_result r;
	struct dmabuf_info_decision d;
	struct dma_buf_info q;
	struct stat st;
	int fd, pipefd[2], closed, rc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s CONFIG\n", argv[0]);
		return 2;
	}
	CHECK(dmabuf_info_abi_version() == DMABUF_INFO_ABI_VERSION);
	CHECK((dmabuf_info_abi_version() >> 16) == DMABUF_INFO_ABI_MAJOR);

	CHECK(dmabuf_info_init(argv[1]) == 0);
	CHECK(dmabuf_info_init(NULL) == -EALREADY);
	CHECK(dmabuf_info_platform() == DMABUF_INFO_PLATFORM_X86_AMD);

	fd = memfd_create("c-abi", MFD_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(ftruncate(fd, 4 * 4096) == 0);
	CHECK(fstat(fd, &st) == 0);

	memset(&r, 0xff, sizeof(r));
	r.struct_size = sizeof(r);
	rc = dmabuf_info_inspect(fd, -1, &r);
	CHECK(rc == 0);
	CHECK(r.kind == DMABUF_INFO_KIND_MEMFD);
	CHECK(r.size == 4 * 4096);
	CHECK(r.inode == (uint64_t)st.st_ino);
	CHECK(strcmp(r.exporter, "memfd") == 0);
	CHECK(strcmp(r.name, "c-abi") == 0);
	CHECK(r.cache == DMABUF_INFO_CACHE_CACHED);
	CHECK(DMABUF_INFO_SOURCE_KIND(r.cache_source) == DMABUF_INFO_SOURCE_MEMFD);
	CHECK(r.needs_sync == DMABUF_INFO_SYNC_NO);
	CHECK(r.stable == 1);
	CHECK(r.file_kind == 0);

	/* Policy on the real answer: allowed, cached. */
	CHECK(dmabuf_info_decide(&r, DMABUF_INFO_PLATFORM_DEFAULT, &d) == 1);
	CHECK(d.allow == 1 && d.map_info == 1);
	CHECK(d.platform == DMABUF_INFO_PLATFORM_X86_AMD);

	/* Policy on edited answers. */
	r.cache = DMABUF_INFO_CACHE_WRITE_COMBINED;
	CHECK(dmabuf_info_decide(&r, DMABUF_INFO_PLATFORM_X86_AMD, &d) == 1);
	CHECK(d.map_info == 3);
	CHECK(dmabuf_info_decide(&r, DMABUF_INFO_PLATFORM_X86_INTEL, &d) == 0);
	CHECK(d.allow == 0 && d.map_info == 0);
	CHECK(d.refuse_reason == DMABUF_INFO_REFUSE_PLATFORM);
	CHECK(strstr(d.message, "x86-intel") != NULL);
	r.needs_sync = DMABUF_INFO_SYNC_YES;
	CHECK(dmabuf_info_decide(&r, DMABUF_INFO_PLATFORM_ARM64, &d) == 0);
	CHECK(d.refuse_reason == DMABUF_INFO_REFUSE_NEEDS_SYNC);
	CHECK(strstr(d.message, "DMA_BUF_IOCTL_SYNC") != NULL);
	CHECK(strstr(d.message, "source: memfd") != NULL);
	r.needs_sync = DMABUF_INFO_SYNC_NO;
	r.stable = 0;
	CHECK(dmabuf_info_decide(&r, DMABUF_INFO_PLATFORM_ARM64, &d) == 0);
	CHECK(d.refuse_reason == DMABUF_INFO_REFUSE_NOT_STABLE);
	CHECK(dmabuf_info_decide(&r, 99, &d) == -EINVAL);
	r.cache = 17;
	CHECK(dmabuf_info_decide(&r, DMABUF_INFO_PLATFORM_ARM64, &d) == -EINVAL);

	/* ioctl-shaped entry: a memfd is not a dma-buf, exactly as the kernel would say. */
	memset(&q, 0, sizeof(q));
	q.param = DMA_BUF_INFO_MAP_INFO;
	CHECK(dmabuf_info_query(fd, &q) == -ENOTTY);
	q.param = 2;
	CHECK(dmabuf_info_query(fd, &q) == -EINVAL);
	q.param = DMA_BUF_INFO_VM_PROT;
	CHECK(dmabuf_info_query_abi(fd, &q, 1) == -ENOTTY);
	CHECK(dmabuf_info_query_abi(fd, &q, 3) == -EINVAL);

	/* A pipe is named. */
	CHECK(pipe(pipefd) == 0);
	memset(&r, 0, sizeof(r));
	r.struct_size = sizeof(r);
	CHECK(dmabuf_info_inspect(pipefd[0], -1, &r) == DMABUF_INFO_E_NOT_BUFFER);
	CHECK(r.file_kind == DMABUF_INFO_FILE_PIPE);

	/* A closed descriptor. */
	closed = dup(fd);
	CHECK(closed >= 0);
	close(closed);
	CHECK(dmabuf_info_inspect(closed, -1, &r) == -EBADF);
	CHECK(dmabuf_info_query(closed, &q) == -EBADF);

	/* Struct size check. */
	r.struct_size = 8;
	CHECK(dmabuf_info_inspect(fd, -1, &r) == -EINVAL);
	CHECK(dmabuf_info_inspect(fd, -1, NULL) == -EFAULT);

	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
