/*
 * libpcow compact: bounded mappings.
 *
 * The Image Monitor maps an image with one mapping (VMA) per maximal
 * extent, so an image written in random order needs about one VMA per
 * allocated cluster.  pcow_mapping_count() counts what the monitor needs;
 * pcow_compact() relocates the active layer's own data clusters so that
 * each run of consecutive guest clusters lies in consecutive file
 * clusters, in guest order, and maps as one extent.  It is offline (the
 * exclusive lock) and crash-safe: every entry points at the old or at the
 * new copy of the same data (docs/interop/pcow-spec.rst, Compact).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcow-int.h"

/* Clusters copied per batch: three barriers each, bounded memory */
#define COMPACT_BATCH 4096

/* ---- mapping count ------------------------------------------------------ */

/*
 * Mappings of the hole [off, e): whole clusters stay in the monitor's
 * registered reservation (one VMA for consecutive holes), a partial
 * cluster at either end is mapped read-only zeros.
 */
static uint64_t hole_mappings(pcow_image *img, uint64_t off, uint64_t e,
                              bool *prev_hole)
{
    uint64_t cs = img->cluster_size;
    uint64_t hs = pcow_round_up(off, cs);
    uint64_t he = e == img->hdr.virtual_size ? e : e & ~(cs - 1);
    uint64_t maps = 0;

    if (hs >= he) {
        hs = he = e;
    }
    if (hs > off) {
        maps++;
        *prev_hole = false;
    }
    if (he > hs) {
        maps += !*prev_hole;
        *prev_hole = true;
    }
    if (e > he) {
        maps++;
        *prev_hole = false;
    }
    return maps;
}

/* A data extent: its file, plus a raw base's tail past EOF as zeros */
static uint64_t data_mappings(const pcow_extent *ext)
{
    uint64_t valid = ext->length;

    if (ext->valid_length < ext->length) {
        valid = pcow_round_up(ext->valid_length, PCOW_PAGE_SIZE);
    }
    return valid < ext->length ? 2 : 1;
}

int pcow_mapping_count(pcow_image *img, uint64_t *count, pcow_error *err)
{
    uint64_t off = 0, end = img->hdr.virtual_size, maps = 0;
    bool prev_hole = false;
    pcow_extent ext;
    int ret;

    while (off < end) {
        ret = pcow_get_extent(img, off, end - off, &ext);
        if (ret == 0 && (ext.length == 0 || ext.offset != off ||
                         ext.length > end - off)) {
            ret = -EIO;
        }
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot read the mapping "
                                  "at guest offset 0x%llx: %s",
                                  (unsigned long long)off, strerror(-ret));
        }
        if (ext.kind == PCOW_EXTENT_HOLE) {
            maps += hole_mappings(img, off, off + ext.length, &prev_hole);
        } else {
            prev_hole = false;
            maps += data_mappings(&ext);
        }
        off += ext.length;
    }
    *count = maps;
    return 0;
}

/* ---- compaction --------------------------------------------------------- */

typedef struct CompactRun {
    uint64_t v;                 /* first virtual cluster */
    uint64_t n;                 /* clusters */
} CompactRun;

typedef struct Compact {
    pcow_image *img;
    PcowWalk w;
    CompactRun *runs;           /* the batch */
    size_t nruns;
    size_t cap;
    uint64_t clusters;          /* in the batch */
    uint8_t *buf;               /* one cluster */
    pcow_compact_result *res;
} Compact;

/*
 * The data cluster of active entry @v when compaction may move it: the
 * active layer owns it whole (not PARTIAL) and nothing else refers to it.
 * 0 otherwise.
 */
static uint64_t movable(Compact *c, uint64_t v)
{
    pcow_image *img = c->img;
    uint64_t *e = pcow_l2_entry(img, v);
    uint64_t map = e ? pcow_word(e) : 0;
    uint64_t off = map & ~(img->cluster_size - 1), i;

    if (pcow_entry_kind(map) != PCOW_ENTRY_OWNED) {
        return 0;
    }
    i = off >> img->cluster_bits;
    if (i >= c->w.nclusters ||
        (c->w.cls[i] & (PCOW_C_KIND | PCOW_C_SNAP | PCOW_C_SOURCE)) !=
        PCOW_C_DATA) {
        return 0;
    }
    return off;
}

/*
 * The run of movable clusters from @v: *n clusters, *in_order when they
 * already lie back to back in the file.
 */
static void scan_run(Compact *c, uint64_t v, uint64_t vend, uint64_t *n,
                     bool *in_order)
{
    uint64_t cs = c->img->cluster_size, prev = movable(c, v), off;

    *n = 1;
    *in_order = true;
    while (v + *n < vend && (off = movable(c, v + *n)) != 0) {
        *in_order &= off == prev + cs;
        prev = off;
        (*n)++;
    }
}

static int add_run(Compact *c, uint64_t v, uint64_t n)
{
    if (c->nruns == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        CompactRun *r = realloc(c->runs, cap * sizeof(*r));

        if (!r) {
            return -ENOMEM;
        }
        c->runs = r;
        c->cap = cap;
    }
    c->runs[c->nruns++] = (CompactRun) { .v = v, .n = n };
    c->clusters += n;
    return 0;
}

/*
 * Copy the cluster at @from to the new cluster at @to, which reads zeros
 * already: only its non-zero pages are written, a run of them at once.
 */
static int copy_cluster(Compact *c, uint64_t from, uint64_t to)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size, pg = PCOW_PAGE_SIZE, a = 0, b;
    int ret = pcow_read_table(img, from, c->buf, cs);

    while (ret == 0 && a < cs) {
        if (pcow_is_zero(c->buf + a, pg)) {
            a += pg;
            continue;
        }
        for (b = a + pg; b < cs && !pcow_is_zero(c->buf + b, pg); b += pg) {
        }
        ret = pcow_persist_pwrite(img, to + a, c->buf + a, b - a);
        a = b;
    }
    return ret;
}

/* Copy the batch to @to, in guest order; P-COMPACT-DATA */
static int copy_batch(Compact *c, uint64_t to, uint64_t *old)
{
    uint64_t cs = c->img->cluster_size, j = 0, k;
    size_t r;
    int ret;

    for (r = 0; r < c->nruns; r++) {
        for (k = 0; k < c->runs[r].n; k++, j++) {
            old[j] = movable(c, c->runs[r].v + k);
            ret = copy_cluster(c, old[j], to + j * cs);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return pcow_persist_barrier(c->img);    /* P-COMPACT-DATA */
}

/* The map words of @n adjacent L2 entries from @first, made durable */
static int stretch_persist(pcow_image *img, uint64_t *first,
                           uint64_t file_off, uint64_t n)
{
    return pcow_persist_mapped(img, first, file_off,
                               (n - 1) * PCOW_L2_ENTRY_SIZE + 8);
}

/*
 * Point the batch's entries at their copies; P-COMPACT-MAP.  Each stretch
 * of adjacent entries (a run's, within one L2 table) is made durable with
 * pcow_persist_mapped(): on pmem the stores need their cache lines
 * flushed, which a barrier (fdatasync) does not do.
 */
static int switch_batch(Compact *c, uint64_t to)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size, j = 0, k, v, *e, *first = NULL;
    uint64_t first_off = 0, n = 0;
    size_t r;
    int ret = 0;

    pcow_lock(img);
    for (r = 0; r < c->nruns; r++) {
        for (k = 0; k < c->runs[r].n; k++, j++) {
            v = c->runs[r].v + k;
            e = pcow_l2_entry(img, v);
            if (first && e != first + n * PCOW_L2_WORDS) {
                ret = stretch_persist(img, first, first_off, n);
                if (ret < 0) {
                    goto out;
                }
                first = NULL;
            }
            if (!first) {
                first = e;
                first_off = pcow_entry_file_off(img, v, PCOW_W_MAP);
                n = 0;
            }
            /* One aligned store: old or new home, never a mix */
            pcow_persist_store64_nosync(img, e,
                                        first_off + n * PCOW_L2_ENTRY_SIZE,
                                        (to + j * cs) |
                                        (pcow_word(e) & (cs - 1)));
            n++;
        }
    }
    if (first) {
        ret = stretch_persist(img, first, first_off, n);
    }
out:
    pcow_unlock(img);                       /* P-COMPACT-MAP */
    return ret;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Punch and free the old homes, neighbours in the file with one punch */
static int free_old(Compact *c, uint64_t *old, uint64_t n)
{
    uint64_t cs = c->img->cluster_size, i = 0, k;
    int ret;

    qsort(old, n, sizeof(*old), cmp_u64);
    while (i < n) {
        for (k = 1; i + k < n && old[i + k] == old[i] + k * cs; k++) {
        }
        ret = pcow_free_clusters(c->img, old[i], k);
        if (ret < 0) {
            return ret;
        }
        i += k;
    }
    return 0;
}

/*
 * Move the batch into one new contiguous range: allocate, copy and make
 * the copies durable, switch the entries durably, only then free the old
 * homes.  A crash leaves every entry at its old or its new home (both
 * hold the data) and the other one leaked.
 */
static int move_batch(Compact *c, pcow_error *err)
{
    pcow_image *img = c->img;
    uint64_t to, *old;
    int ret;

    if (!c->nruns) {
        return 0;
    }
    old = malloc(c->clusters * sizeof(*old));
    if (!old) {
        return pcow_img_error(img, err, -ENOMEM, "out of memory");
    }
    ret = pcow_alloc_clusters(img, c->clusters, &to);
    if (ret < 0) {
        free(old);
        return pcow_img_error(img, err, ret, "cannot allocate %llu "
                              "clusters: %s",
                              (unsigned long long)c->clusters,
                              strerror(-ret));
    }
    ret = copy_batch(c, to, old);
    if (ret == 0) {
        ret = switch_batch(c, to);
    }
    if (ret == 0) {
        ret = free_old(c, old, c->clusters);
        c->res->runs_moved += c->nruns;
        c->res->clusters_moved += c->clusters;
    }
    free(old);
    c->nruns = 0;
    c->clusters = 0;
    if (ret < 0) {
        /* The new range is a leak the next read-write open reclaims */
        return pcow_img_error(img, err, ret, "cannot move data clusters: "
                              "%s", strerror(-ret));
    }
    return 0;
}

/* Every run out of guest order, in batches */
static int compact_runs(Compact *c, pcow_error *err)
{
    uint64_t vend = pcow_div_round_up(c->img->hdr.virtual_size,
                                      c->img->cluster_size);
    uint64_t v = 0, n;
    bool in_order;
    int ret;

    while (v < vend) {
        if (!movable(c, v)) {
            v++;
            continue;
        }
        scan_run(c, v, vend, &n, &in_order);
        if (!in_order) {
            if (add_run(c, v, n) < 0) {
                return pcow_img_error(c->img, err, -ENOMEM, "out of memory");
            }
            if (c->clusters >= COMPACT_BATCH &&
                (ret = move_batch(c, err)) < 0) {
                return ret;
            }
        }
        v += n;
    }
    return move_batch(c, err);
}

/* What compaction refuses, before it writes anything */
static int compact_check(pcow_image *img, pcow_error *err)
{
    if (pcow_writable(img) < 0) {
        return pcow_write_check(img, err);
    }
    if (img->flags & PCOW_OPEN_NO_LOCK) {
        return pcow_img_error(img, err, -EINVAL, "compact needs the "
                              "image's lock");
    }
    if (img->was_dirty) {
        return pcow_img_error(img, err, -EUCLEAN, "image was not closed "
                              "cleanly");
    }
    if (img->hdr.nb_snapshots) {
        return pcow_img_error(img, err, -ENOTSUP, "image has %u "
                              "snapshot%s; compact moves only unshared "
                              "data: delete the snapshots first",
                              img->hdr.nb_snapshots,
                              img->hdr.nb_snapshots == 1 ? "" : "s");
    }
    return 0;
}

int pcow_compact(pcow_image *img, pcow_compact_result *res,
                 pcow_error *err)
{
    Compact c = { .img = img, .res = res };
    PcowProblems pr = { 0 };
    int ret;

    memset(res, 0, sizeof(*res));
    ret = compact_check(img, err);
    if (ret == 0) {
        ret = pcow_mapping_count(img, &res->mappings_before, err);
    }
    if (ret < 0) {
        return ret;
    }
    c.buf = malloc(img->cluster_size);
    pcow_lock(img);
    ret = c.buf ? pcow_walk(img, &c.w, &pr, false) : -ENOMEM;
    pcow_unlock(img);
    if (ret == 0 && pr.count) {
        ret = pcow_img_error(img, err, pr.first_code ? pr.first_code
                             : -EINVAL, "%s", pr.first);
    } else if (ret < 0) {
        ret = pcow_img_error(img, err, ret, "cannot walk the tables: %s",
                             strerror(-ret));
    } else {
        ret = compact_runs(&c, err);
    }
    pcow_walk_free(&c.w);
    free(c.runs);
    free(c.buf);
    if (ret == 0) {
        ret = pcow_mapping_count(img, &res->mappings_after, err);
    }
    return ret;
}
