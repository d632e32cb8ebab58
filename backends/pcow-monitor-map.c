/*
 * The pcow Image Monitor: the mapping
 *
 * The whole virtual range is reserved with one anonymous mapping, which is
 * registered with userfaultfd once: whatever is not mapped over it is a
 * hole.  Data is then mapped over it with MAP_FIXED, one mmap per maximal
 * extent (pcow_get_extent), read-write where the active layer owns it,
 * read-only where a snapshot or a base does (COW on write, see
 * pcow-monitor-cow.c).  This file decides the mappings: how many an image
 * needs (against vm.max_map_count), eager or lazy, what protection after a
 * snapshot, and flushes and prefaults them.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "pcow-monitor-int.h"

/* VMAs left for the rest of the process (QEMU, libraries, threads). */
#define MON_VMA_MARGIN 4096
/* More mappings than this are made lazily (docs/benchmarks.rst). */
#define MON_EAGER_MAX 32768
#define MON_MAX_MAP_COUNT "/proc/sys/vm/max_map_count"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

bool mon_vma_budget(pcow_monitor *mon, uint64_t add)
{
    return atomic_fetch_add(&mon->vmas, add) + add <= mon->max_vmas;
}

void mon_vma_unbudget(pcow_monitor *mon, uint64_t sub)
{
    uint64_t cur = atomic_load(&mon->vmas);

    /* Saturating: the statistics may have recounted meanwhile */
    while (!atomic_compare_exchange_weak(&mon->vmas, &cur,
                                         cur > sub ? cur - sub : 0)) {
    }
}

int mon_map_anon(pcow_monitor *mon, uint64_t off, uint64_t len, int prot)
{
    void *p = mmap(mon->base + off, len, prot, MAP_PRIVATE | MAP_ANONYMOUS |
                   MAP_FIXED | MAP_NORESERVE, -1, 0);

    return p == MAP_FAILED ? -errno : 0;
}

/* The extent at @off, checked: it starts at @off and ends by @end. */
static int get_extent(pcow_monitor *mon, uint64_t off, uint64_t end,
                      pcow_extent *ext, pcow_error *err)
{
    int r = pcow_get_extent(mon->img, off, end - off, ext);

    if (r < 0 || ext->length == 0 || ext->offset != off ||
        ext->length > end - off) {
        r = r < 0 ? r : -EIO;
        if (!err) {
            return r;           /* the uffd thread: no strerror */
        }
        return mon_error(mon, err, r, "cannot read the mapping at guest "
                         "offset 0x%" PRIx64 ": %s", off, strerror(-r));
    }
    return 0;
}

/*
 * The hole [off, e): only whole clusters stay uffd holes (the reservation
 * is registered).  A cluster that is partly base data (a raw base ending
 * inside it) is base data as a whole: its hole part reads zeros read-only
 * and a write copies on write.  Returns the mappings it takes or -errno.
 */
static int64_t map_hole(pcow_monitor *mon, uint64_t off, uint64_t e,
                        bool *prev_hole)
{
    uint64_t cs = mon->cluster_size;
    uint64_t hs = (off + cs - 1) & ~(cs - 1);
    uint64_t he = e == mon->size ? e : e & ~(cs - 1);
    bool map = !mon->read_only;
    int64_t maps = 0;
    int r;

    if (hs >= he) {
        hs = he = e;
    }
    if (hs > off) {
        maps++;
        *prev_hole = false;
        if (map && (r = mon_map_anon(mon, off, hs - off, PROT_READ)) < 0) {
            return r;
        }
    }
    if (he > hs) {
        maps += !*prev_hole;
        *prev_hole = true;
    }
    if (e > he) {
        maps++;
        *prev_hole = false;
        if (map && (r = mon_map_anon(mon, he, e - he, PROT_READ)) < 0) {
            return r;
        }
    }
    return maps;
}

/*
 * The data extent @ext: its file, and a raw base's tail past its EOF as
 * read-only zeros.  Returns the mappings it takes or -errno.
 */
static int64_t map_data(pcow_monitor *mon, const pcow_extent *ext)
{
    int prot = ext->writable && !mon->read_only ? PROT_READ | PROT_WRITE
                                                : PROT_READ;
    uint64_t valid = ext->length;

    if (ext->valid_length < ext->length) {
        valid = (ext->valid_length + 4095) & ~4095ull;
        if (valid > ext->length) {
            valid = ext->length;
        }
        prot = PROT_READ;
    }
    if (valid && mmap(mon->base + ext->offset, valid, prot,
                      MAP_SHARED | MAP_FIXED, ext->fd, ext->file_offset) ==
                 MAP_FAILED) {
        return -errno;
    }
    if (valid < ext->length) {
        int r = mon_map_anon(mon, ext->offset + valid, ext->length - valid,
                             PROT_READ);

        return r < 0 ? r : 2;
    }
    return 1;
}

int64_t mon_map_range(pcow_monitor *mon, uint64_t off, uint64_t len,
                      pcow_error *err)
{
    uint64_t end = off + len;
    int64_t maps = 0;
    bool prev_hole = false;

    while (off < end) {
        pcow_extent ext;
        int64_t n;
        int r = get_extent(mon, off, end, &ext, err);

        if (r < 0) {
            return r;
        }
        if (ext.kind == PCOW_EXTENT_HOLE) {
            n = map_hole(mon, off, off + ext.length, &prev_hole);
        } else {
            prev_hole = false;
            n = map_data(mon, &ext);
        }
        if (n < 0 && !err) {
            return n;
        }
        if (n < 0) {
            return mon_error(mon, err, n, "cannot map guest offset 0x%"
                             PRIx64 " (%s)%s", off, strerror(-n),
                             n == -ENOMEM ? "; raise vm.max_map_count" : "");
        }
        maps += n;
        off += ext.length;
    }
    return maps;
}

/* PCOW_MONITOR_EAGER_MAX overrides it (tests exercise both ways). */
static uint64_t eager_max(void)
{
    const char *e = getenv("PCOW_MONITOR_EAGER_MAX");

    return e ? strtoull(e, NULL, 0) : MON_EAGER_MAX;
}

int mon_map_plan(pcow_monitor *mon, uint64_t max_vmas, pcow_error *err)
{
    uint64_t limit = max_vmas, maps;
    int r;

    /* Budget: what vm.max_map_count leaves after the rest of the process. */
    if (!limit) {
        uint64_t sys = mon_proc_read_u64(MON_MAX_MAP_COUNT, 65530);
        uint64_t used = mon_proc_count_maps(0, 0) + MON_VMA_MARGIN;

        limit = sys > used ? sys - used : 0;
    }
    mon->max_vmas = limit;

    /* Counted by libpcow, extent by extent, as mon_map_range maps */
    r = pcow_mapping_count(mon->img, &maps, err);
    if (r < 0) {
        return r;
    }
    if (maps > limit) {
        return mon_error(mon, err, -ENOMEM, "mapping the image needs %"
                         PRIu64 " mappings but only %" PRIu64 " are left "
                         "under vm.max_map_count; raise it (sysctl "
                         "vm.max_map_count=%" PRIu64 ")", maps, limit,
                         mon_proc_read_u64(MON_MAX_MAP_COUNT, 65530) +
                         maps - limit + 65536);
    }
    atomic_store(&mon->vmas, maps);
    mon->vmas_needed = maps;
    /* An mmap costs microseconds: past eager_max() map on first touch. */
    mon->lazy = !mon->read_only && maps > eager_max();
    return 0;
}

int mon_map_image(pcow_monitor *mon, pcow_error *err)
{
    int64_t maps;

    if (mon->lazy) {
        atomic_store(&mon->vmas, 1);
        return 0;
    }
    maps = mon_map_range(mon, 0, mon->size, err);
    return maps < 0 ? maps : 0;
}

int mon_map_reset(pcow_monitor *mon, pcow_error *err)
{
    uint64_t maps;
    void *p;
    int r = pcow_mapping_count(mon->img, &maps, err);

    if (r < 0) {
        return r;
    }
    if (maps > mon->max_vmas) {
        return mon_error(mon, err, -ENOMEM, "mapping the image needs %"
                         PRIu64 " mappings but only %" PRIu64 " are left "
                         "under vm.max_map_count", maps, mon->max_vmas);
    }
    /* Same address: QEMU's RAM block keeps pointing at it. */
    p = mmap(mon->base, mon->size, PROT_READ | PROT_WRITE, MAP_PRIVATE |
             MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        int e = errno;

        return mon_error(mon, err, -e, "cannot replace the mapping: %s",
                         strerror(e));
    }
    madvise(mon->base, mon->size, MADV_NOHUGEPAGE);
    /* Private anonymous: dropping the pages clears the maps. */
    madvise(mon->zero_map, mon->map_bytes, MADV_DONTNEED);
    madvise(mon->mapped_map, mon->map_bytes, MADV_DONTNEED);
    /*
     * Held expansions too: the writers were woken by the new mapping and
     * fault again on the reverted image; a stale bit would expand a
     * cluster nobody writes.
     */
    madvise(mon->held_map, mon->map_bytes, MADV_DONTNEED);
    atomic_store(&mon->uffd_held, 0);
    mon->held_lo = UINT64_MAX;
    atomic_store(&mon->vmas, maps);
    mon->vmas_needed = maps;
    mon->lazy = maps > eager_max();
    return 0;
}

/* [off, off + len) of the data extent @ext: the image's writability now */
static int remap_span(pcow_monitor *mon, const pcow_extent *ext,
                      uint64_t off, uint64_t len, bool make_writable,
                      pcow_error *err)
{
    int r = 0;

    if (!make_writable && !ext->writable) {
        r = mprotect(mon->base + off, len, PROT_READ);
    } else if (make_writable && ext->writable) {
        void *p = mmap(mon->base + off, len, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_FIXED, ext->fd,
                       ext->file_offset + (off - ext->offset));

        r = p == MAP_FAILED ? -1 : 0;
    }
    if (r < 0) {
        int e = errno;

        return mon_error(mon, err, -e, "cannot remap guest offset 0x%"
                         PRIx64 ": %s", off, strerror(e));
    }
    return 0;
}

int mon_remap_data(pcow_monitor *mon, bool make_writable, pcow_error *err)
{
    uint64_t off = 0;

    while (off < mon->size) {
        pcow_extent ext;
        uint64_t end;
        int r = get_extent(mon, off, mon->size, &ext, err);

        if (r < 0) {
            return r;
        }
        end = off + ext.length;
        while (ext.kind == PCOW_EXTENT_DATA && off < end) {
            uint64_t vc = off >> mon->cluster_bits;
            uint64_t next = end;

            /*
             * Lazy monitors change only the clusters mapped so far: the
             * others get the right protection on their first touch.
             */
            if (mon->lazy) {
                next = (vc + 1) << mon->cluster_bits;
                next = next < end ? next : end;
            }
            if (!mon->lazy || test_bit64(mon->mapped_map, vc)) {
                r = remap_span(mon, &ext, off, next - off, make_writable,
                               err);
                if (r < 0) {
                    return r;
                }
            }
            off = next;
        }
        off = end;
    }
    return 0;
}

int pcow_monitor_flush(pcow_monitor *mon, pcow_error *err)
{
    if (mon->read_only) {
        return 0;
    }
    /*
     * msync skips anonymous parts; this also covers PM (DAX) files.  Through
     * libpcow: a failure here must keep the image from being marked clean.
     */
    return pcow_flush_mapping(mon->img, mon->base, mon->size, err);
}

int pcow_monitor_prefault(pcow_monitor *mon, pcow_error *err)
{
    uint64_t off = 0;

    while (off < mon->size) {
        pcow_extent ext;
        uint64_t len;
        int r = get_extent(mon, off, mon->size, &ext, err);

        if (r < 0) {
            return r;
        }
        /* Past a raw base's end there is no page to fault in. */
        len = (ext.valid_length + 4095) & ~4095ull;
        len = len < ext.length ? len : ext.length;
        if (ext.kind == PCOW_EXTENT_DATA && len &&
            madvise(mon->base + off, len, MADV_POPULATE_READ) < 0) {
            int e = errno;

            /* EINVAL: kernel older than 5.14; prefaulting is a hint. */
            if (e == EINVAL) {
                return 0;
            }
            mon_error(mon, err, -e, "prefaulting guest offset 0x%" PRIx64
                      " failed: %s", off, strerror(e));
            return 1;
        }
        off += ext.length;
    }
    return 0;
}
