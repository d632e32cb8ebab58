/*
 * libpcow runtime operations: expansion of a hole and copy-on-write
 * (cf. qcow2-cluster.c)
 *
 * ASYNC-SIGNAL-SAFE ONLY.  The Image Monitor calls pcow_expand_cluster()
 * and pcow_cow() from its SIGSEGV handler, so everything in this file and
 * everything it calls takes no lock but the image spinlock, allocates no
 * memory (no malloc/realloc/free, no stdio) and uses only plain system
 * calls (pread, pwrite, fallocate, msync, mmap, mremap).  Its callees are
 * the allocation primitives pcow_take_locked/pcow_untake_locked/
 * pcow_free_clusters_locked, the table mapping (pcow_map_l2, pcow_l2_entry,
 * pcow_read_below) and the persistence module.  Keep it so: check with
 * nm(1) on runtime.c.o that no allocating symbol appears.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "pcow-int.h"

/*
 * Store a table word: persisted at once on the runtime path; the tools'
 * bulk writes (@sync false) leave it to the next barrier (flush, close or
 * any structural operation), which fdatasync/msync covers.
 */
static int store_word(pcow_image *img, uint64_t *p, uint64_t file_off,
                      uint64_t val, bool sync)
{
    if (sync) {
        return pcow_persist_store64(img, p, file_off, val);
    }
    pcow_persist_store64_nosync(img, p, file_off, val);
    return 0;
}

/* Empty L2 table at ready cluster @off for L1 index @i; P-EXPAND-L1 */
static int install_l2_locked(pcow_image *img, uint32_t i, uint64_t off,
                             bool sync)
{
    int ret;

    /* Map before publishing, so the entry is usable once it is durable */
    ret = pcow_map_l2(img, i, off);
    if (ret < 0) {
        return ret;
    }
    ret = store_word(img, &img->l1[i], img->hdr.l1_table_offset + i * 8ull,
                     off, sync);
    if (ret < 0) {
        uint64_t *t = img->l2[i];

        __atomic_store_n(&img->l2[i], NULL, __ATOMIC_RELEASE);
        pcow_persist_unmap(img, t, img->cluster_size);
    }
    return ret;
}

/* New empty L2 table for L1 index @i.  Lock held. */
int pcow_new_l2_locked(pcow_image *img, uint32_t i, bool sync)
{
    uint64_t off;
    int ret;

    ret = pcow_take_locked(img, &off);
    if (ret < 0) {
        return ret;
    }
    ret = install_l2_locked(img, i, off, sync);
    if (ret < 0) {
        pcow_untake_locked(img, off);
    }
    return ret;
}

/*
 * Ready clusters for a data cluster and, when @need_l2, its L2 table
 * (taken first, so that consecutive expansions stay contiguous).  All or
 * nothing: on ENOSPC nothing has changed.
 */
static int take_pair_locked(pcow_image *img, bool need_l2, uint64_t *l2,
                            uint64_t *data)
{
    int ret;

    if (need_l2) {
        ret = pcow_take_locked(img, l2);
        if (ret < 0) {
            return ret;
        }
    }
    ret = pcow_take_locked(img, data);
    if (ret < 0 && need_l2) {
        pcow_untake_locked(img, *l2);
    }
    return ret;
}

int pcow_set_map_locked(pcow_image *img, uint64_t v, uint64_t map)
{
    uint64_t *e = pcow_l2_entry(img, v);

    if (!e) {
        return -EIO;
    }
    return pcow_persist_store64(img, e, pcow_entry_file_off(img, v, 0), map);
}

int pcow_expand_internal(pcow_image *img, uint64_t vcluster,
                         uint64_t *file_offset, bool sync)
{
    uint64_t nclusters, map, off, l2off = 0;
    uint64_t *e;
    uint32_t i;
    int ret;

    if (img->read_only) {
        return -EROFS;
    }
    nclusters = pcow_div_round_up(img->hdr.virtual_size, img->cluster_size);
    if (vcluster >= nclusters) {
        return -EINVAL;
    }
    i = vcluster / img->l2_entries;
    pcow_lock(img);
    /* Re-check under the lock: exactly one allocation per cluster */
    e = pcow_l2_entry(img, vcluster);
    map = e ? pcow_word(e) : 0;
    if (map) {
        *file_offset = map & ~(img->cluster_size - 1);
        pcow_unlock(img);
        return -EEXIST;
    }
    ret = take_pair_locked(img, !e, &l2off, &off);
    if (ret < 0) {
        pcow_unlock(img);
        return ret;
    }
    if (!e) {
        ret = install_l2_locked(img, i, l2off, sync);
        if (ret < 0) {
            pcow_untake_locked(img, off);
            pcow_untake_locked(img, l2off);
            pcow_unlock(img);
            return ret;
        }
        e = pcow_l2_entry(img, vcluster);
    }
    /* P-EXPAND-COMMIT */
    ret = store_word(img, e, pcow_entry_file_off(img, vcluster, 0),
                     off | PCOW_F_PRESENT | PCOW_F_WRITABLE, sync);
    pcow_unlock(img);
    if (ret < 0) {
        return ret;
    }
    *file_offset = off;
    return 0;
}

int pcow_expand_cluster(pcow_image *img, uint64_t vcluster,
                        uint64_t *file_offset)
{
    return pcow_expand_internal(img, vcluster, file_offset, true);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/*
 * Copy unit @u of virtual cluster @v into data cluster @dst.  @src is the
 * map word the unit is read from: a cluster of this image when PRESENT,
 * else the backing chain.  Zeros are not written (@dst reads as zeros).
 * Stack buffer and pread/pwrite only: this runs in a signal handler.
 */
static int copy_unit(pcow_image *img, uint64_t v, unsigned u, uint64_t src,
                     uint64_t dst)
{
    uint8_t buf[4096];
    uint64_t unit = 1ull << img->cow_unit_bits;
    uint64_t in = (uint64_t)u * unit;
    uint64_t cs = img->cluster_size;
    uint64_t done;
    int ret;

    for (done = 0; done < unit; done += sizeof(buf)) {
        uint64_t pos = in + done;

        if (src & PCOW_F_PRESENT) {
            uint64_t so = (src & ~(cs - 1)) + pos;
            uint64_t got = 0;

            while (got < sizeof(buf)) {
                ssize_t n = pread(img->fd, buf + got, sizeof(buf) - got,
                                  so + got);

                if (n < 0 && errno == EINTR) {
                    continue;
                }
                if (n < 0) {
                    return -errno;
                }
                if (n == 0) {
                    memset(buf + got, 0, sizeof(buf) - got);
                    break;
                }
                got += n;
            }
        } else {
            ret = pcow_read_below(img, v * cs + pos, buf, sizeof(buf));
            if (ret < 0) {
                return ret;
            }
        }
        if (all_zero(buf, sizeof(buf))) {
            continue;
        }
        ret = pcow_persist_pwrite(img, dst + pos, buf, sizeof(buf));
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static void cow_extent(pcow_image *img, uint64_t v, uint64_t data,
                       int unit_idx, pcow_extent *ext)
{
    uint64_t cs = img->cluster_size;
    uint64_t unit = 1ull << img->cow_unit_bits;

    if (!ext) {
        return;
    }
    memset(ext, 0, sizeof(*ext));
    ext->kind = PCOW_EXTENT_DATA;
    ext->writable = true;
    ext->fd = img->fd;
    if (unit_idx < 0) {
        ext->offset = v * cs;
        ext->length = cs;
        ext->file_offset = data;
    } else {
        ext->offset = v * cs + unit_idx * unit;
        ext->length = unit;
        ext->file_offset = data + unit_idx * unit;
    }
    if (ext->offset + ext->length > img->hdr.virtual_size) {
        ext->length = img->hdr.virtual_size - ext->offset;
    }
    ext->valid_length = ext->length;
}

/* Source map word of unit @u in entry state (map, copied, source) */
static uint64_t unit_source(uint64_t map, uint64_t copied, uint64_t source,
                            unsigned u)
{
    if (!(map & PCOW_F_PARTIAL)) {
        return map;
    }
    return (copied >> u) & 1 ? map : source;
}

static int cow_locked(pcow_image *img, uint64_t v, unsigned u, bool whole,
                      pcow_extent *ext)
{
    uint64_t cs = img->cluster_size;
    uint64_t *e = pcow_l2_entry(img, v);
    uint64_t map, copied = 0, source = 0, n, data, l2off = 0;
    unsigned k;
    int ret;

    map = e ? pcow_word(e) : 0;
    if (map & PCOW_F_PARTIAL) {
        copied = pcow_word(e + 1) & img->units_mask;
        source = pcow_word(e + 2);
    }
    data = map & ~(cs - 1);
    if ((map & PCOW_F_WRITABLE) && !(map & PCOW_F_PARTIAL)) {
        cow_extent(img, v, data, -1, ext);
        return -EEXIST;
    }
    if ((map & PCOW_F_WRITABLE) && ((copied >> u) & 1) && !whole) {
        cow_extent(img, v, data, u, ext);
        return -EEXIST;
    }
    if (img->units == 1) {
        whole = true;
    }
    if (map & PCOW_F_WRITABLE) {
        /* PARTIAL and ours: fill in units from the source */
        if (whole) {
            for (k = 0; k < img->units; k++) {
                if (!((copied >> k) & 1)) {
                    ret = copy_unit(img, v, k, source, data);
                    if (ret < 0) {
                        return ret;
                    }
                }
            }
            ret = pcow_persist_sync_range(img, data, cs);  /* P-COW-DATA */
        } else {
            uint64_t unit = 1ull << img->cow_unit_bits;

            ret = copy_unit(img, v, u, source, data);
            if (ret == 0) {
                ret = pcow_persist_sync_range(img, data + u * unit, unit);
            }
            if (ret == 0) {
                copied |= 1ull << u;
                /* P-COW-BIT */
                ret = pcow_persist_store64(img, e + 1,
                                           pcow_entry_file_off(img, v, 1),
                                           copied);
            }
        }
        if (ret < 0) {
            return ret;
        }
        if (whole || copied == img->units_mask) {
            /* P-COW-DONE: the source may now be unreferenced */
            ret = pcow_persist_store64(img, e, pcow_entry_file_off(img, v, 0),
                                       data | PCOW_F_PRESENT |
                                       PCOW_F_WRITABLE);
            if (ret == 0) {
                cow_extent(img, v, data, -1, ext);
            }
            return ret;
        }
        cow_extent(img, v, data, u, ext);
        return 0;
    }

    /* Frozen, hole or backing: the cluster gets a new home N */
    ret = take_pair_locked(img, !e, &l2off, &n);
    if (ret < 0) {
        return ret;
    }
    if (!e) {
        /* A hole without an L2 table: P-EXPAND-L1 first */
        ret = install_l2_locked(img, v / img->l2_entries, l2off, true);
        if (ret < 0) {
            pcow_untake_locked(img, n);
            pcow_untake_locked(img, l2off);
            return ret;
        }
        e = pcow_l2_entry(img, v);
    }
    if (whole || (map & PCOW_F_PARTIAL)) {
        for (k = 0; k < img->units; k++) {
            ret = copy_unit(img, v, k, unit_source(map, copied, source, k),
                            n);
            if (ret < 0) {
                goto fail;
            }
        }
        ret = pcow_persist_sync_range(img, n, cs);      /* P-COW-DATA */
        if (ret < 0) {
            goto fail;
        }
        /* P-COW-COMMIT, whole-cluster form */
        ret = pcow_persist_store64(img, e, pcow_entry_file_off(img, v, 0),
                                   n | PCOW_F_PRESENT | PCOW_F_WRITABLE);
        if (ret < 0) {
            return ret;
        }
        cow_extent(img, v, n, -1, ext);
        return 0;
    }
    ret = copy_unit(img, v, u, map, n);
    if (ret == 0) {
        ret = pcow_persist_sync_range(img, n +
                                      ((uint64_t)u << img->cow_unit_bits),
                                      1ull << img->cow_unit_bits);
    }
    if (ret < 0) {
        goto fail;
    }
    /* P-COW-PREPARE: invisible until PARTIAL is set */
    pcow_persist_store64_nosync(img, e + 1, pcow_entry_file_off(img, v, 1),
                                1ull << u);
    pcow_persist_store64_nosync(img, e + 2, pcow_entry_file_off(img, v, 2), map);
    ret = pcow_persist_mapped(img, e + 1, pcow_entry_file_off(img, v, 1), 16);
    if (ret < 0) {
        goto fail;
    }
    /* P-COW-COMMIT */
    ret = pcow_persist_store64(img, e, pcow_entry_file_off(img, v, 0),
                               n | PCOW_F_PRESENT | PCOW_F_WRITABLE |
                               PCOW_F_PARTIAL);
    if (ret < 0) {
        return ret;
    }
    cow_extent(img, v, n, u, ext);
    return 0;

fail:
    /* N was never referenced: it goes back, zeroed */
    pcow_persist_punch(img, n, cs);
    pcow_free_clusters_locked(img, n, 1);
    return ret;
}

int pcow_cow(pcow_image *img, uint64_t offset, bool whole_cluster,
             pcow_extent *ext)
{
    uint64_t v;
    unsigned u;
    int ret;

    if (img->read_only) {
        return -EROFS;
    }
    if (offset >= img->hdr.virtual_size) {
        return -EINVAL;
    }
    v = offset >> img->cluster_bits;
    u = (offset & (img->cluster_size - 1)) >> img->cow_unit_bits;
    pcow_lock(img);
    ret = cow_locked(img, v, u, whole_cluster, ext);
    pcow_unlock(img);
    return ret;
}

unsigned pcow_cow_units_copied(pcow_image *img, uint64_t offset)
{
    uint64_t *e, map;
    unsigned n = 0;

    if (offset >= img->hdr.virtual_size) {
        return 0;
    }
    pcow_lock(img);
    e = pcow_l2_entry(img, offset >> img->cluster_bits);
    map = e ? pcow_word(e) : 0;
    if (map & PCOW_F_PARTIAL) {
        n = __builtin_popcountll(pcow_word(e + 1) & img->units_mask);
    } else if (map & PCOW_F_WRITABLE) {
        n = img->units;
    }
    pcow_unlock(img);
    return n;
}
