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
 * pcow_free_clusters_locked, the table mapping (pcow_map_l2_shared,
 * pcow_l2_entry, pcow_read_below) and the persistence module.  The unit
 * test runtime-sigsafe (scripts/pcow-sigsafe.py) follows every call from
 * here through libpcow and fails on any library function outside its
 * list of async-signal-safe ones.
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
    ret = pcow_map_l2_shared(img, i, off);
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
    return pcow_persist_store64(img, e,
                                pcow_entry_file_off(img, v, PCOW_W_MAP), map);
}

int pcow_expand_internal(pcow_image *img, uint64_t vcluster,
                         uint64_t *file_offset, bool sync)
{
    uint64_t nclusters, map, off, l2off = 0;
    uint64_t *e;
    uint32_t i;
    int ret;

    ret = pcow_writable(img);
    if (ret < 0) {
        return ret;
    }
    nclusters = pcow_div_round_up(img->hdr.virtual_size, img->cluster_size);
    if (vcluster >= nclusters) {
        return -EINVAL;
    }
    i = vcluster / img->l2_entries;
    pcow_lock(img);
    /* Under the lock: pcow_defer_commits(off)'s barrier comes after us */
    sync = sync && !img->defer_commits;
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
    ret = store_word(img, e, pcow_entry_file_off(img, vcluster, PCOW_W_MAP),
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

        if (pcow_entry_kind(src) != PCOW_ENTRY_HOLE) {
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
        if (pcow_is_zero(buf, sizeof(buf))) {
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

/* The entry of virtual cluster @v as copy-on-write finds it */
typedef struct CowEntry {
    uint64_t v;
    uint64_t *e;            /* NULL: no L2 table yet */
    uint64_t map;
    PcowEntryKind kind;
    uint64_t copied;        /* PARTIAL: units copied so far */
    uint64_t source;        /* PARTIAL: where the other units still are */
} CowEntry;

static void cow_entry_load(pcow_image *img, uint64_t v, CowEntry *c)
{
    c->v = v;
    c->e = pcow_l2_entry(img, v);
    c->map = c->e ? pcow_word(c->e) : 0;
    c->kind = pcow_entry_kind(c->map);
    c->copied = 0;
    c->source = 0;
    if (pcow_entry_is_partial(c->kind)) {
        c->copied = pcow_word(c->e + PCOW_W_COPIED) & img->units_mask;
        c->source = pcow_word(c->e + PCOW_W_SOURCE);
    }
}

/* Source map word of unit @u */
static uint64_t unit_source(const CowEntry *c, unsigned u)
{
    if (!pcow_entry_is_partial(c->kind)) {
        return c->map;
    }
    return (c->copied >> u) & 1 ? c->map : c->source;
}

/* New home @n could not be referenced: it goes back, zeroed */
static int give_back_locked(pcow_image *img, uint64_t n, int ret)
{
    pcow_persist_punch(img, n, img->cluster_size);
    pcow_free_clusters_locked(img, n, 1);
    return ret;
}

/* PARTIAL and ours: fill in unit @u (every missing one, @whole) in place */
static int cow_fill_locked(pcow_image *img, CowEntry *c, unsigned u,
                           bool whole, pcow_extent *ext)
{
    uint64_t cs = img->cluster_size, data = c->map & ~(cs - 1);
    uint64_t unit = 1ull << img->cow_unit_bits;
    unsigned k;
    int ret = 0;

    if (whole) {
        for (k = 0; k < img->units && ret == 0; k++) {
            if (!((c->copied >> k) & 1)) {
                ret = copy_unit(img, c->v, k, c->source, data);
            }
        }
        if (ret == 0) {
            ret = pcow_persist_sync_range(img, data, cs);  /* P-COW-DATA */
        }
    } else {
        ret = copy_unit(img, c->v, u, c->source, data);
        if (ret == 0) {
            ret = pcow_persist_sync_range(img, data + u * unit, unit);
        }
        if (ret == 0) {
            c->copied |= 1ull << u;
            /* P-COW-BIT */
            ret = pcow_persist_store64(img, c->e + PCOW_W_COPIED,
                                       pcow_entry_file_off(img, c->v,
                                                           PCOW_W_COPIED),
                                       c->copied);
        }
    }
    if (ret < 0) {
        return ret;
    }
    if (whole || c->copied == img->units_mask) {
        /* P-COW-DONE: the source may now be unreferenced */
        ret = pcow_persist_store64(img, c->e,
                                   pcow_entry_file_off(img, c->v, PCOW_W_MAP),
                                   data | PCOW_F_PRESENT | PCOW_F_WRITABLE);
        if (ret == 0) {
            cow_extent(img, c->v, data, -1, ext);
        }
        return ret;
    }
    cow_extent(img, c->v, data, u, ext);
    return 0;
}

/* Every unit into new home @n, then commit it writable */
static int cow_whole_locked(pcow_image *img, CowEntry *c, uint64_t n,
                            pcow_extent *ext)
{
    unsigned k;
    int ret = 0;

    for (k = 0; k < img->units && ret == 0; k++) {
        ret = copy_unit(img, c->v, k, unit_source(c, k), n);
    }
    if (ret == 0) {
        /* P-COW-DATA */
        ret = pcow_persist_sync_range(img, n, img->cluster_size);
    }
    if (ret < 0) {
        return give_back_locked(img, n, ret);
    }
    /* P-COW-COMMIT, whole-cluster form */
    ret = pcow_persist_store64(img, c->e,
                               pcow_entry_file_off(img, c->v, PCOW_W_MAP),
                               n | PCOW_F_PRESENT | PCOW_F_WRITABLE);
    if (ret == 0) {
        cow_extent(img, c->v, n, -1, ext);
    }
    return ret;
}

/* Unit @u into new home @n; the entry becomes PARTIAL with the old map */
static int cow_unit_locked(pcow_image *img, CowEntry *c, unsigned u,
                           uint64_t n, pcow_extent *ext)
{
    uint64_t off1 = pcow_entry_file_off(img, c->v, PCOW_W_COPIED);
    int ret = copy_unit(img, c->v, u, c->map, n);

    if (ret == 0) {
        ret = pcow_persist_sync_range(img, n +
                                      ((uint64_t)u << img->cow_unit_bits),
                                      1ull << img->cow_unit_bits);
    }
    if (ret == 0) {
        /* P-COW-PREPARE: invisible until PARTIAL is set */
        pcow_persist_store64_nosync(img, c->e + PCOW_W_COPIED, off1,
                                    1ull << u);
        pcow_persist_store64_nosync(img, c->e + PCOW_W_SOURCE, off1 + 8,
                                    c->map);
        ret = pcow_persist_mapped(img, c->e + PCOW_W_COPIED, off1, 16);
    }
    if (ret < 0) {
        return give_back_locked(img, n, ret);
    }
    /* P-COW-COMMIT */
    ret = pcow_persist_store64(img, c->e,
                               pcow_entry_file_off(img, c->v, PCOW_W_MAP),
                               n | PCOW_F_PRESENT | PCOW_F_WRITABLE |
                               PCOW_F_PARTIAL);
    if (ret == 0) {
        cow_extent(img, c->v, n, u, ext);
    }
    return ret;
}

/* Frozen, hole or backing: the cluster gets a new home */
static int cow_move_locked(pcow_image *img, CowEntry *c, unsigned u,
                           bool whole, pcow_extent *ext)
{
    uint64_t n, l2off = 0;
    int ret = take_pair_locked(img, !c->e, &l2off, &n);

    if (ret < 0) {
        return ret;
    }
    if (!c->e) {
        /* A hole without an L2 table: P-EXPAND-L1 first */
        ret = install_l2_locked(img, c->v / img->l2_entries, l2off, true);
        if (ret < 0) {
            pcow_untake_locked(img, n);
            pcow_untake_locked(img, l2off);
            return ret;
        }
        c->e = pcow_l2_entry(img, c->v);
    }
    if (whole || pcow_entry_is_partial(c->kind)) {
        return cow_whole_locked(img, c, n, ext);
    }
    return cow_unit_locked(img, c, u, n, ext);
}

static int cow_locked(pcow_image *img, uint64_t v, unsigned u, bool whole,
                      pcow_extent *ext)
{
    uint64_t data;
    CowEntry c;

    cow_entry_load(img, v, &c);
    data = c.map & ~(img->cluster_size - 1);
    if (c.kind == PCOW_ENTRY_OWNED) {
        cow_extent(img, v, data, -1, ext);
        return -EEXIST;
    }
    if (c.kind == PCOW_ENTRY_PARTIAL && ((c.copied >> u) & 1) && !whole) {
        cow_extent(img, v, data, u, ext);
        return -EEXIST;
    }
    if (img->units == 1) {
        whole = true;
    }
    if (c.kind == PCOW_ENTRY_PARTIAL) {
        return cow_fill_locked(img, &c, u, whole, ext);
    }
    return cow_move_locked(img, &c, u, whole, ext);
}

int pcow_cow(pcow_image *img, uint64_t offset, bool whole_cluster,
             pcow_extent *ext)
{
    uint64_t v;
    unsigned u;
    int ret;

    ret = pcow_writable(img);
    if (ret < 0) {
        return ret;
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
    switch (pcow_entry_kind(map)) {
    case PCOW_ENTRY_PARTIAL:
    case PCOW_ENTRY_PARTIAL_FROZEN:
        n = __builtin_popcountll(pcow_word(e + PCOW_W_COPIED) &
                                 img->units_mask);
        break;
    case PCOW_ENTRY_OWNED:
        n = img->units;
        break;
    default:
        break;
    }
    pcow_unlock(img);
    return n;
}
