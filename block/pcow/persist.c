/*
 * libpcow persistence: the only code that writes image files
 *
 * Every change is reported to the image's persistence hook before it is
 * made, so that a crash-point harness can replay any prefix of the stream.
 * After each persist the hook gets what became durable: a BARRIER
 * (fdatasync: the whole file) or a SYNC of a file range (msync of a range,
 * pmem_persist of cache lines: only that range).
 *
 * The method is chosen once per image, at open (pcow_persist_init; cf.
 * libpmem2's choice per mapping), and kept in img->sync (PcowSync):
 * - PCOW_SYNC_PMEM: real PM (a MAP_SYNC mapping works, see
 *   pcow_map_sync_means_pmem): mapped stores are made durable with
 *   pmem_persist(), pwrite()s with fdatasync();
 * - PCOW_SYNC_MSYNC: page cache: msync(MS_SYNC) of the touched pages, and
 *   pwrite()s with a ranged msync() through a standing PROT_NONE window
 *   over the file (no mmap per call; past the window as below);
 * - PCOW_SYNC_MSYNC_TEMP: the same without a window (finite RLIMIT_AS, or
 *   it could not be mapped): a temporary mapping per ranged sync, or
 *   fdatasync() if that cannot be mapped;
 * - PCOW_SYNC_TMPFS: the page cache is the medium: a store or pwrite is as
 *   durable as it will ever be once made, msync/fdatasync are no-ops in the
 *   kernel (noop_fsync), so the runtime persists skip the system call and
 *   keep only a full fence (ordering) and the report to the hook.
 * Barriers are fdatasync() with every method.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <libpmem.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "pcow-int.h"

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#define PAGE_SIZE_MIN 4096ul

/* Bounds of the msync window (offsets beyond: a temporary mapping) */
#define SYNC_WIN_MIN (16ull << 30)
#define SYNC_WIN_MAX (1ull << 40)

static inline void hook(pcow_image *img, pcow_persist_op op, uint64_t off,
                        const void *data, uint64_t len)
{
    if (img->hook) {
        img->hook(img->hook_opaque, op, off, data, len);
    }
}

/* Remember the first failed barrier or sync (pcow_close_clean).  Sig-safe */
static int persist_failed(pcow_image *img, int code)
{
    int none = 0;

    __atomic_compare_exchange_n(&img->persist_error, &none, code, false,
                                __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return code;
}

/*
 * msync(MS_SYNC) of a MAP_SHARED range is vfs_fsync_range(datasync): the
 * ranged fdatasync that P-COW-DATA needs (it must not flush the guest's
 * dirty pages of the rest of the file).  It only needs a shared VMA over
 * the range, not access: one PROT_NONE window, mapped once, replaces an
 * mmap+munmap (and two mmap_lock write sections) per copy-on-write.  Not
 * with a finite RLIMIT_AS, which the address space would count against.
 * Sized for the image growing to twice its virtual plus file size.
 */
static void sync_init(pcow_image *img)
{
    struct statfs sfs;
    struct rlimit rl;
    struct stat st;
    uint64_t len;
    void *p;

    if (fstatfs(img->fd, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC) {
        img->sync = PCOW_SYNC_TMPFS;
        return;
    }
    if (sizeof(void *) < 8 || getrlimit(RLIMIT_AS, &rl) < 0 ||
        rl.rlim_cur != RLIM_INFINITY || fstat(img->fd, &st) < 0) {
        return;
    }
    len = 2 * (img->hdr.virtual_size + (uint64_t)st.st_size);
    len = len < SYNC_WIN_MIN ? SYNC_WIN_MIN :
          len > SYNC_WIN_MAX ? SYNC_WIN_MAX : pcow_round_up(len, 1ull << 30);
    p = mmap(NULL, len, PROT_NONE, MAP_SHARED | MAP_NORESERVE, img->fd, 0);
    if (p != MAP_FAILED) {
        img->sync = PCOW_SYNC_MSYNC;
        img->sync_win = p;
        img->sync_win_len = len;
    }
}

int pcow_persist_init(pcow_image *img)
{
    long ps = sysconf(_SC_PAGESIZE);
    void *p;

    /* Not sysconf() on the runtime paths: it is not async-signal-safe */
    img->page_size = ps > 0 ? (uint64_t)ps : PAGE_SIZE_MIN;
    img->method = PCOW_PERSIST_MSYNC;
    img->sync = PCOW_SYNC_MSYNC_TEMP;
    if (img->read_only) {
        return 0;
    }
    /* Cluster 0's first page holds both header slots and the hot line */
    p = mmap(NULL, PAGE_SIZE_MIN, PROT_READ | PROT_WRITE,
             MAP_SHARED_VALIDATE | MAP_SYNC, img->fd, 0);
    if (p != MAP_FAILED) {
        if (pcow_map_sync_means_pmem()) {
            img->method = PCOW_PERSIST_PMEM;
            img->sync = PCOW_SYNC_PMEM;
            img->c0 = p;
            return 0;
        }
        munmap(p, PAGE_SIZE_MIN);
    }
    p = mmap(NULL, PAGE_SIZE_MIN, PROT_READ | PROT_WRITE, MAP_SHARED,
             img->fd, 0);
    if (p == MAP_FAILED) {
        return -errno;
    }
    img->c0 = p;
    sync_init(img);
    return 0;
}

void pcow_persist_fini(pcow_image *img)
{
    if (img->sync_win) {
        munmap(img->sync_win, img->sync_win_len);
        img->sync_win = NULL;
    }
    if (img->c0) {
        munmap(img->c0, PAGE_SIZE_MIN);
        img->c0 = NULL;
    }
}

/* Map file range [off, off+len) (page aligned) read-write, for tables */
void *pcow_persist_map(pcow_image *img, uint64_t off, uint64_t len)
{
    void *p;

    if (img->sync == PCOW_SYNC_PMEM) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_SHARED_VALIDATE | MAP_SYNC, img->fd, off);
        if (p != MAP_FAILED) {
            return p;
        }
    }
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, img->fd, off);
    return p == MAP_FAILED ? NULL : p;
}

void pcow_persist_unmap(pcow_image *img, void *addr, uint64_t len)
{
    if (addr) {
        munmap(addr, len);
    }
}

int pcow_persist_pwrite(pcow_image *img, uint64_t off, const void *buf,
                        uint64_t len)
{
    const uint8_t *p = buf;

    pcow_mark_wrote(img);
    hook(img, PCOW_OP_WRITE, off, buf, len);
    while (len > 0) {
        ssize_t n = pwrite(img->fd, p, len, off);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            return -EIO;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* msync(MS_SYNC) of a caller's mapping of the file; a failure is kept */
int pcow_persist_msync(pcow_image *img, void *addr, uint64_t len)
{
    if (msync(addr, len, MS_SYNC) < 0) {
        return persist_failed(img, -errno);
    }
    return 0;
}

int pcow_persist_barrier(pcow_image *img)
{
    if (fdatasync(img->fd) < 0) {
        return persist_failed(img, -errno);
    }
    hook(img, PCOW_OP_BARRIER, 0, NULL, 0);
    return 0;
}

/*
 * Make a file range written with pwrite durable without flushing the rest
 * of the file (the guest's dirty pages): msync of a temporary mapping is a
 * ranged fdatasync.  The hook gets the range: nothing outside it is made
 * durable (tmpfs too reports what a disk would give).
 */
int pcow_persist_sync_range(pcow_image *img, uint64_t off, uint64_t len)
{
    uint64_t ps = img->page_size;
    uint64_t start = off & ~(ps - 1);
    uint64_t mlen = pcow_round_up(off + len, ps) - start;
    void *p;
    int ret = 0;

    switch (img->sync) {
    case PCOW_SYNC_PMEM:
        /* DAX writes bypass the page cache; only fs metadata remains */
        return pcow_persist_barrier(img);
    case PCOW_SYNC_TMPFS:
        /* tmpfs: written is persisted (fdatasync would be a no-op) */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        break;
    case PCOW_SYNC_MSYNC:
        if (start + mlen <= img->sync_win_len) {
            if (msync((uint8_t *)img->sync_win + start, mlen, MS_SYNC) < 0) {
                return persist_failed(img, -errno);
            }
            break;
        }
        /* Past the window: a temporary mapping */
        /* fall through */
    case PCOW_SYNC_MSYNC_TEMP:
        p = mmap(NULL, mlen, PROT_READ, MAP_SHARED, img->fd, start);
        if (p == MAP_FAILED) {
            return pcow_persist_barrier(img);
        }
        if (msync(p, mlen, MS_SYNC) < 0) {
            ret = persist_failed(img, -errno);
        }
        munmap(p, mlen);
        if (ret < 0) {
            return ret;
        }
        break;
    }
    hook(img, PCOW_OP_SYNC, start, NULL, mlen);
    return 0;
}

/*
 * Persist [addr, addr + len) of one of our MAP_SHARED mappings, which
 * maps the file at @file_off: the pages around it with msync, the cache
 * lines with pmem_persist.  Only that file range becomes durable.
 */
int pcow_persist_mapped(pcow_image *img, void *addr, uint64_t file_off,
                        uint64_t len)
{
    uintptr_t a = (uintptr_t)addr;
    uintptr_t g = img->sync == PCOW_SYNC_PMEM ? 64 : img->page_size;
    uintptr_t start = a & ~(g - 1);
    uintptr_t end = pcow_round_up(a + len, g);

    if (img->sync == PCOW_SYNC_PMEM) {
        pmem_persist(addr, len);
    } else if (img->sync == PCOW_SYNC_TMPFS) {
        /* tmpfs: the store is in the medium; msync would be a no-op */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    } else if (msync((void *)start, end - start, MS_SYNC) < 0) {
        return persist_failed(img, -errno);
    }
    /* Mappings are page aligned: file and address agree below a page */
    hook(img, PCOW_OP_SYNC, file_off - (a - start), NULL, end - start);
    return 0;
}

static void store64(pcow_image *img, uint64_t *p, uint64_t file_off,
                    uint64_t val)
{
    uint64_t le = pcow_le64(val);

    hook(img, PCOW_OP_WRITE, file_off, &le, 8);
    __atomic_store_n(p, le, __ATOMIC_RELEASE);
}

/* Table words (and data) may change what a reader sees: not a hot word */
void pcow_persist_store64_nosync(pcow_image *img, uint64_t *p,
                                 uint64_t file_off, uint64_t val)
{
    pcow_mark_wrote(img);
    store64(img, p, file_off, val);
}

/* The hot path's commit: one aligned 8-byte store, made durable */
int pcow_persist_store64(pcow_image *img, uint64_t *p, uint64_t file_off,
                         uint64_t val)
{
    pcow_persist_store64_nosync(img, p, file_off, val);
    return pcow_persist_mapped(img, p, file_off, 8);
}

/* Bookkeeping (frontier, in-use, stamp): no change a reader sees */
void pcow_persist_hot_set(pcow_image *img, unsigned hot_off, uint64_t val)
{
    store64(img, (uint64_t *)(img->c0 + hot_off), hot_off, val);
}

int pcow_persist_hot_sync(pcow_image *img, unsigned hot_off)
{
    return pcow_persist_mapped(img, img->c0 + hot_off, hot_off, 8);
}

int pcow_persist_hot_store(pcow_image *img, unsigned hot_off, uint64_t val)
{
    pcow_persist_hot_set(img, hot_off, val);
    return pcow_persist_hot_sync(img, hot_off);
}

int pcow_persist_allocate(pcow_image *img, uint64_t off, uint64_t len)
{
    hook(img, PCOW_OP_ALLOCATE, off, NULL, len);
    if (fallocate(img->fd, 0, off, len) < 0) {
        int e = errno;
        off_t size;

        if (e != EOPNOTSUPP) {
            return -e;
        }
        /* No fallocate: the range still reads as zeros if we extend */
        size = lseek(img->fd, 0, SEEK_END);
        if (size >= 0 && (uint64_t)size < off + len &&
            ftruncate(img->fd, off + len) < 0) {
            return -errno;
        }
    }
    return 0;
}

int pcow_persist_punch(pcow_image *img, uint64_t off, uint64_t len)
{
    hook(img, PCOW_OP_PUNCH, off, NULL, len);
    if (fallocate(img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  off, len) < 0) {
        int e = errno;
        static const uint8_t zero[4096];

        if (e != EOPNOTSUPP) {
            return -e;
        }
        /* Cannot deallocate here: at least make it read as zeros */
        while (len > 0) {
            uint64_t n = len < sizeof(zero) ? len : sizeof(zero);

            if (pwrite(img->fd, zero, n, off) != (ssize_t)n) {
                return -EIO;
            }
            off += n;
            len -= n;
        }
    }
    return 0;
}

int pcow_persist_truncate(pcow_image *img, uint64_t size)
{
    hook(img, PCOW_OP_TRUNCATE, size, NULL, 0);
    if (ftruncate(img->fd, size) < 0) {
        return -errno;
    }
    return 0;
}
