/*
 * libpcow allocation: the reference walk, the free-cluster bitmap, the
 * reserve ring, and the runtime operations (expansion, copy-on-write)
 *
 * There is no refcount on disk: open walks every table once and classifies
 * each cluster below the frontier (docs/pcow.rst, Reference rules).  Runtime
 * operations run in signal handlers: they only take the image spinlock, use
 * preallocated memory and plain syscalls.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-int.h"

/* ---- reference walk ---------------------------------------------------- */

typedef struct WalkCtx {
    pcow_image *img;
    PcowWalk *w;
    PcowProblems *pr;
    bool repair;
    uint64_t frontier;          /* entries must lie below (valid end) */
    uint64_t vclusters;         /* active entries from here on are stale */
    uint64_t last_data;         /* for fragmentation */
    uint64_t *seen;             /* clusters marked SEEN in this snapshot */
    size_t nseen, seen_cap;
} WalkCtx;

static const char *table_name(const PcowSnapshot *sn, char *buf, size_t len)
{
    if (!sn) {
        return "";
    }
    snprintf(buf, len, "snapshot '%s': ", sn->name);
    return buf;
}

/* Overwrite one on-disk word to repair a problem (check -r all) */
static void repair_word(WalkCtx *c, uint64_t file_off, uint64_t val)
{
    uint8_t b[8];

    if (!c->repair) {
        return;
    }
    pcow_st64(b, val);
    if (pcow_persist_pwrite(c->img, file_off, b, 8) == 0) {
        c->w->fixed++;
    }
}

static bool mark_meta(WalkCtx *c, uint64_t off, uint64_t n, const char *what,
                      const PcowSnapshot *sn)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size;
    uint64_t k;
    char tb[300];

    if (off % cs || off < cs || off + n * cs > c->frontier ||
        off + n * cs < off) {
        pcow_problem(c->pr, -EINVAL, "%s%s at 0x%llx lies outside the image "
                     "(frontier 0x%llx)", table_name(sn, tb, sizeof(tb)),
                     what, (unsigned long long)off,
                     (unsigned long long)pcow_frontier(img));
        return false;
    }
    for (k = 0; k < n; k++) {
        uint8_t *cl = &c->w->cls[(off >> img->cluster_bits) + k];

        if ((*cl & PCOW_C_KIND) != PCOW_C_FREE) {
            pcow_problem(c->pr, -EINVAL, "%s%s at 0x%llx overlaps another "
                         "metadata cluster 0x%llx",
                         table_name(sn, tb, sizeof(tb)), what,
                         (unsigned long long)off,
                         (unsigned long long)(off + k * cs));
            return false;
        }
    }
    for (k = 0; k < n; k++) {
        c->w->cls[(off >> img->cluster_bits) + k] = PCOW_C_META;
    }
    c->w->meta_clusters += n;
    return true;
}

/* Check a map or source word; returns the data cluster index or 0 */
static uint64_t check_word(WalkCtx *c, uint64_t word, uint64_t gofs,
                           const PcowSnapshot *sn, bool is_source)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size;
    uint64_t flags = word & (cs - 1);
    uint64_t off = word & ~(cs - 1);
    const char *what = is_source ? "source of the L2 entry" : "L2 entry";
    char tb[300];

    if ((word & PCOW_HIGH_RESERVED) || (flags & ~PCOW_F_ALL) ||
        !(flags & PCOW_F_PRESENT)) {
        pcow_problem(c->pr, -EINVAL, "%s%s for guest offset 0x%llx has "
                     "reserved bits set: 0x%llx",
                     table_name(sn, tb, sizeof(tb)), what,
                     (unsigned long long)gofs, (unsigned long long)word);
        return 0;
    }
    if (is_source && (flags & PCOW_F_PARTIAL)) {
        pcow_problem(c->pr, -EINVAL, "%s%s for guest offset 0x%llx is "
                     "itself PARTIAL", table_name(sn, tb, sizeof(tb)), what,
                     (unsigned long long)gofs);
        return 0;
    }
    if (off < cs || off + cs > c->frontier) {
        pcow_problem(c->pr, -EINVAL, "%s%s for guest offset 0x%llx points "
                     "outside the image: 0x%llx (frontier 0x%llx)",
                     table_name(sn, tb, sizeof(tb)), what,
                     (unsigned long long)gofs, (unsigned long long)off,
                     (unsigned long long)pcow_frontier(img));
        return 0;
    }
    if ((c->w->cls[off >> img->cluster_bits] & PCOW_C_KIND) ==
        PCOW_C_META) {
        pcow_problem(c->pr, -EINVAL, "%s%s for guest offset 0x%llx points "
                     "at metadata cluster 0x%llx",
                     table_name(sn, tb, sizeof(tb)), what,
                     (unsigned long long)gofs, (unsigned long long)off);
        return 0;
    }
    return off >> img->cluster_bits;
}

static void mark_data(WalkCtx *c, uint64_t idx, uint8_t bit)
{
    uint8_t *cl = &c->w->cls[idx];

    if ((*cl & PCOW_C_KIND) == PCOW_C_FREE) {
        *cl |= PCOW_C_DATA;
        c->w->data_clusters++;
    }
    *cl |= bit;
}

static void walk_l2(WalkCtx *c, const uint64_t *t, uint64_t l2_off,
                    uint64_t first_v, const PcowSnapshot *sn)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size;
    uint32_t j;
    char tb[300];

    for (j = 0; j < img->l2_entries; j++) {
        const uint64_t *e = t + j * 4;
        uint64_t map = pcow_word(e);
        uint64_t gofs = (first_v + j) * cs;
        uint64_t eoff = l2_off + (uint64_t)j * PCOW_L2_ENTRY_SIZE;
        uint64_t idx, sidx;
        uint8_t *cl;

        if (pcow_word(e + 3)) {
            pcow_problem(c->pr, -EINVAL, "%sL2 entry for guest offset 0x%llx "
                         "has its reserved word set",
                         table_name(sn, tb, sizeof(tb)),
                         (unsigned long long)gofs);
            repair_word(c, eoff + 24, 0);
        }
        if (map == 0) {
            continue;
        }
        if (!sn && first_v + j >= c->vclusters) {
            c->w->stale++;
        }
        idx = check_word(c, map, gofs, sn, false);
        if (!idx) {
            repair_word(c, eoff, 0);
            continue;
        }
        if (sn && (map & PCOW_F_WRITABLE)) {
            pcow_problem(c->pr, -EINVAL, "%sL2 entry for guest offset 0x%llx "
                         "is WRITABLE in a snapshot",
                         table_name(sn, tb, sizeof(tb)),
                         (unsigned long long)gofs);
            repair_word(c, eoff, map & ~PCOW_F_WRITABLE);
        }
        cl = &c->w->cls[idx];
        if (*cl & (sn ? PCOW_C_SEEN : PCOW_C_ACTIVE)) {
            pcow_problem(c->pr, -EINVAL, "%sL2 entry for guest offset 0x%llx "
                         "maps cluster 0x%llx that another entry of the "
                         "same table maps", table_name(sn, tb, sizeof(tb)),
                         (unsigned long long)gofs,
                         (unsigned long long)(idx << img->cluster_bits));
            repair_word(c, eoff, 0);
            continue;
        }
        if (map & PCOW_F_PARTIAL) {
            uint64_t copied = pcow_word(e + 1);
            uint64_t source = pcow_word(e + 2);

            if (copied & ~img->units_mask) {
                pcow_problem(c->pr, -EINVAL, "%sL2 entry for guest offset "
                             "0x%llx has copied bits beyond its %u units",
                             table_name(sn, tb, sizeof(tb)),
                             (unsigned long long)gofs, img->units);
                repair_word(c, eoff + 8, copied & img->units_mask);
            }
            if (source) {
                sidx = check_word(c, source, gofs, sn, true);
                if (!sidx) {
                    repair_word(c, eoff, 0);
                    continue;
                }
                mark_data(c, sidx, sn ? PCOW_C_SNAP : PCOW_C_SOURCE);
            }
        }
        if (sn) {
            mark_data(c, idx, PCOW_C_SNAP | PCOW_C_SEEN);
            if (c->nseen == c->seen_cap) {
                size_t ncap = c->seen_cap ? c->seen_cap * 2 : 1024;
                uint64_t *ns = realloc(c->seen, ncap * sizeof(*ns));

                if (!ns) {
                    continue;
                }
                c->seen = ns;
                c->seen_cap = ncap;
            }
            c->seen[c->nseen++] = idx;
        } else {
            if ((*cl & PCOW_C_KIND) == PCOW_C_FREE) {
                c->w->active_clusters++;
            } else if (!(*cl & PCOW_C_ACTIVE)) {
                c->w->active_clusters++;
            }
            mark_data(c, idx, PCOW_C_ACTIVE);
            if (c->last_data && idx != c->last_data + 1) {
                c->w->fragmented++;
            }
            c->last_data = idx;
        }
    }
}

static int walk_snapshot(WalkCtx *c, const PcowSnapshot *sn, uint64_t *l1,
                         uint64_t *buf)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size;
    uint64_t l1_bytes = (uint64_t)sn->l1_size * 8;
    uint32_t i;
    int ret;
    char tb[300];

    ret = pcow_read_table(img, sn->l1_table_offset, l1, l1_bytes);
    if (ret < 0) {
        pcow_problem(c->pr, ret, "%scannot read its L1 table",
                     table_name(sn, tb, sizeof(tb)));
        return ret;
    }
    /* First every L2 table, so data entries can be told from metadata */
    for (i = 0; i < sn->l1_size; i++) {
        uint64_t e = pcow_le64(l1[i]);

        if (!e) {
            continue;
        }
        if ((e & (cs - 1)) || (e & PCOW_HIGH_RESERVED) ||
            !mark_meta(c, e, 1, "L2 table", sn)) {
            if (e & ((cs - 1) | PCOW_HIGH_RESERVED)) {
                pcow_problem(c->pr, -EINVAL, "%sL1 entry %u is invalid: "
                             "0x%llx", table_name(sn, tb, sizeof(tb)), i,
                             (unsigned long long)e);
            }
            repair_word(c, sn->l1_table_offset + i * 8ull, 0);
            l1[i] = 0;
        }
    }
    return 0;
    (void)buf;
}

static int walk_snapshot_l2(WalkCtx *c, const PcowSnapshot *sn,
                            const uint64_t *l1, uint64_t *buf)
{
    pcow_image *img = c->img;
    uint32_t i;
    size_t k;
    int ret;

    c->nseen = 0;
    for (i = 0; i < sn->l1_size; i++) {
        uint64_t e = pcow_le64(l1[i]);

        if (!e) {
            continue;
        }
        ret = pcow_read_table(img, e, buf, img->cluster_size);
        if (ret < 0) {
            pcow_problem(c->pr, ret, "cannot read L2 table at 0x%llx",
                         (unsigned long long)e);
            return ret;
        }
        walk_l2(c, buf, e, (uint64_t)i * img->l2_entries, sn);
    }
    for (k = 0; k < c->nseen; k++) {
        c->w->cls[c->seen[k]] &= ~PCOW_C_SEEN;
    }
    return 0;
}

void pcow_walk_free(PcowWalk *w)
{
    free(w->cls);
    memset(w, 0, sizeof(*w));
}

/*
 * Classify every cluster below the frontier, validating every table entry
 * on the way.  Problems go to @pr; unless pr->collect, the walk stops at
 * the first.  With @repair, bad entries are cleared on disk.
 */
int pcow_walk(pcow_image *img, PcowWalk *w, PcowProblems *pr, bool repair)
{
    WalkCtx c = { .img = img, .w = w, .pr = pr, .repair = repair };
    uint64_t cs = img->cluster_size;
    uint64_t **sl1 = NULL;
    uint64_t *buf = NULL;
    uint32_t i, s;
    int ret = 0;

    memset(w, 0, sizeof(*w));
    c.frontier = pcow_valid_end(img);
    c.vclusters = pcow_div_round_up(img->hdr.virtual_size, cs);
    w->nclusters = c.frontier >> img->cluster_bits;
    w->cls = calloc(w->nclusters ? w->nclusters : 1, 1);
    buf = malloc(cs);
    if (img->hdr.nb_snapshots) {
        sl1 = calloc(img->hdr.nb_snapshots, sizeof(*sl1));
    }
    if (!w->cls || !buf || (img->hdr.nb_snapshots && !sl1)) {
        pcow_problem(pr, -ENOMEM, "out of memory walking the tables");
        ret = -ENOMEM;
        goto out;
    }
    w->cls[0] = PCOW_C_META;
#define STOP() do { if (pr->count && !pr->collect) { goto out; } } while (0)
    if (img->hdr.nb_snapshots) {
        mark_meta(&c, img->hdr.snapshots_offset,
                  pcow_div_round_up(img->hdr.snapshots_size, cs),
                  "snapshot table", NULL);
        STOP();
    }
    mark_meta(&c, img->hdr.l1_table_offset,
              pcow_div_round_up((uint64_t)img->hdr.l1_size * 8, cs),
              "L1 table", NULL);
    STOP();
    for (s = 0; s < img->hdr.nb_snapshots; s++) {
        PcowSnapshot *sn = &img->snaps[s];

        if (mark_meta(&c, sn->l1_table_offset,
                      pcow_div_round_up((uint64_t)sn->l1_size * 8, cs),
                      "L1 table", sn)) {
            sl1[s] = malloc((uint64_t)sn->l1_size * 8);
            if (!sl1[s]) {
                pcow_problem(pr, -ENOMEM, "out of memory");
                ret = -ENOMEM;
                goto out;
            }
        }
        STOP();
    }
    /* Ring and in-flight reservations are in use, though unreferenced */
    for (i = 0; i < img->ring_count; i++) {
        uint64_t o = img->ring[(img->ring_head + i) % PCOW_RING_CAP];

        if ((o >> img->cluster_bits) < w->nclusters) {
            w->cls[o >> img->cluster_bits] |= PCOW_C_RING;
        }
    }
    for (i = 0; i < img->inflight_n; i++) {
        uint64_t o = img->inflight[i];

        if ((o >> img->cluster_bits) < w->nclusters) {
            w->cls[o >> img->cluster_bits] |= PCOW_C_RING;
        }
    }
    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t e = pcow_le64(img->l1[i]);

        if (e && img->l2[i] &&
            !mark_meta(&c, e & ~(cs - 1), 1, "L2 table", NULL)) {
            repair_word(&c, img->hdr.l1_table_offset + i * 8ull, 0);
        }
        STOP();
    }
    for (s = 0; s < img->hdr.nb_snapshots; s++) {
        if (sl1[s]) {
            ret = walk_snapshot(&c, &img->snaps[s], sl1[s], buf);
            if (ret < 0) {
                goto out;
            }
        }
        STOP();
    }
    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t e = pcow_le64(img->l1[i]);

        if (e && img->l2[i]) {
            walk_l2(&c, img->l2[i], e & ~(cs - 1),
                    (uint64_t)i * img->l2_entries, NULL);
        }
        STOP();
    }
    for (s = 0; s < img->hdr.nb_snapshots; s++) {
        if (sl1[s]) {
            ret = walk_snapshot_l2(&c, &img->snaps[s], sl1[s], buf);
            if (ret < 0) {
                goto out;
            }
        }
        STOP();
    }
#undef STOP
out:
    if (repair && w->fixed) {
        pcow_persist_barrier(img);
    }
    if (sl1) {
        for (s = 0; s < img->hdr.nb_snapshots; s++) {
            free(sl1[s]);
        }
        free(sl1);
    }
    free(c.seen);
    free(buf);
    return ret;
}

/* ---- free bitmap ------------------------------------------------------- */

static inline bool bm_test(const pcow_image *img, uint64_t i)
{
    return i < img->free_bm_bits &&
           (img->free_bm[i / 64] >> (i % 64)) & 1;
}

static inline void bm_clear(pcow_image *img, uint64_t i)
{
    if (bm_test(img, i)) {
        img->free_bm[i / 64] &= ~(1ull << (i % 64));
        img->free_count--;
    }
}

/*
 * Cover clusters [0, bits).  The bitmap is an anonymous mapping grown with
 * mremap(), a system call, because a failed copy-on-write frees its new
 * home from the SIGSEGV handler, and that cluster may lie beyond the
 * bitmap (allocated since the last reclaim): malloc/realloc must not run
 * there.  The capacity doubles, so this is rare.  New pages read as zero.
 */
static int bm_grow(pcow_image *img, uint64_t bits)
{
    uint64_t need = pcow_round_up(pcow_div_round_up(bits, 64) * 8, 4096);
    uint64_t len;
    void *p;

    if (bits <= img->free_bm_bits) {
        return 0;
    }
    if (need > img->free_bm_len) {
        len = need > 2 * img->free_bm_len ? need : 2 * img->free_bm_len;
        if (img->free_bm) {
            p = mremap(img->free_bm, img->free_bm_len, len, MREMAP_MAYMOVE);
        } else {
            p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        }
        if (p == MAP_FAILED) {
            return -ENOMEM;
        }
        img->free_bm = p;
        img->free_bm_len = len;
    }
    img->free_bm_bits = bits;
    return 0;
}

static void bm_set(pcow_image *img, uint64_t i)
{
    if (i < img->free_bm_bits && !bm_test(img, i)) {
        img->free_bm[i / 64] |= 1ull << (i % 64);
        img->free_count++;
        if (i < img->free_hint) {
            img->free_hint = i;
        }
    }
}

/* Lowest run of @n free clusters; UINT64_MAX if none */
static uint64_t bm_find(pcow_image *img, uint64_t n)
{
    uint64_t i = img->free_hint, run = 0, start = 0;

    if (img->free_count < n) {
        return UINT64_MAX;
    }
    while (i < img->free_bm_bits) {
        uint64_t word = img->free_bm[i / 64] >> (i % 64);

        if (run == 0 && word == 0) {
            i = (i | 63) + 1;       /* skip an all-used word */
            continue;
        }
        if (word & 1) {
            if (run++ == 0) {
                start = i;
            }
            if (run == n) {
                return start;
            }
        } else {
            run = 0;
        }
        i++;
    }
    return UINT64_MAX;
}

/*
 * Clusters a walk may put on the free list: those below the frontier.  In
 * check mode the walk also covers the file above a frontier that may be too
 * low; nothing there is handed out unless check raises the frontier.
 */
static uint64_t free_limit(pcow_image *img, const PcowWalk *w)
{
    uint64_t f = pcow_frontier(img) >> img->cluster_bits;

    return w->nclusters < f ? w->nclusters : f;
}

/* End of the highest cluster the walk found in use (or reserved) */
static uint64_t used_end(pcow_image *img, const PcowWalk *w)
{
    uint64_t h = w->nclusters ? w->nclusters - 1 : 0;

    while (h > 0 && (w->cls[h] & (PCOW_C_KIND | PCOW_C_RING)) ==
           PCOW_C_FREE) {
        h--;
    }
    return (h + 1) << img->cluster_bits;
}

uint64_t pcow_walk_used_end(pcow_image *img, const PcowWalk *w)
{
    return used_end(img, w);
}

int pcow_alloc_init(pcow_image *img, const PcowWalk *w)
{
    uint64_t i, lim = free_limit(img, w);

    img->free_bm = NULL;
    img->free_bm_len = 0;
    img->free_bm_bits = 0;
    img->free_count = 0;
    if (bm_grow(img, w->nclusters) < 0) {
        return -ENOMEM;
    }
    img->free_hint = w->nclusters;
    for (i = 1; i < lim; i++) {
        if ((w->cls[i] & (PCOW_C_KIND | PCOW_C_RING)) == PCOW_C_FREE) {
            bm_set(img, i);
        }
    }
    img->alloc_end = pcow_frontier(img);
    img->ring = calloc(PCOW_RING_CAP, sizeof(*img->ring));
    img->inflight = calloc(PCOW_RING_CAP, sizeof(*img->inflight));
    if (!img->ring || !img->inflight) {
        return -ENOMEM;
    }
    return 0;
}

void pcow_alloc_fini(pcow_image *img)
{
    if (img->free_bm) {
        munmap(img->free_bm, img->free_bm_len);
    }
    free(img->ring);
    free(img->inflight);
    img->free_bm = NULL;
    img->free_bm_len = 0;
    img->ring = NULL;
    img->inflight = NULL;
}

/* Punch runs of clusters set in @mark (a cls-sized byte array) */
static int punch_runs(pcow_image *img, const uint8_t *mark, uint64_t n)
{
    uint64_t i = 1, start;
    int ret;

    while (i < n) {
        if (!mark[i]) {
            i++;
            continue;
        }
        start = i;
        while (i < n && mark[i]) {
            i++;
        }
        ret = pcow_persist_punch(img, start << img->cluster_bits,
                                 (i - start) << img->cluster_bits);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Recovery and reclaim: normalise WRITABLE bits of the active layer, put
 * every unreferenced cluster on the free list and punch the ones that were
 * not already free (all of them with @punch_all).  Used by a read-write
 * open, close, and after snapshot delete/revert.
 */
int pcow_alloc_recover(pcow_image *img, bool punch_all, pcow_error *err)
{
    PcowProblems pr = { 0 };
    PcowWalk w;
    uint64_t cs = img->cluster_size;
    uint8_t *newly = NULL;
    uint64_t i, v;
    struct stat st;
    bool stored = false;
    int ret;

    pcow_lock(img);
    ret = pcow_walk(img, &w, &pr, false);
    if (ret == 0 && pr.count) {
        ret = pr.first_code ? pr.first_code : -EINVAL;
    }
    if (ret < 0) {
        pcow_unlock(img);
        pcow_walk_free(&w);
        return pcow_img_error(img, err, ret, "%s", pr.first);
    }
    /* WRITABLE exactly where no snapshot and no source shares the cluster */
    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t *t = img->l2[i];
        uint32_t j;

        if (!t || !img->l1[i]) {
            continue;
        }
        for (j = 0; j < img->l2_entries; j++) {
            uint64_t map = pcow_word(t + j * 4);
            uint64_t nm;
            bool shared;

            if (!(map & PCOW_F_PRESENT)) {
                continue;
            }
            shared = w.cls[map >> img->cluster_bits] &
                     (PCOW_C_SNAP | PCOW_C_SOURCE);
            nm = shared ? map & ~PCOW_F_WRITABLE : map | PCOW_F_WRITABLE;
            if (nm != map) {
                v = (uint64_t)i * img->l2_entries + j;
                pcow_persist_store64_nosync(img, t + j * 4,
                                            (pcow_le64(img->l1[i]) &
                                             ~(cs - 1)) + j * 32ull, nm);
                stored = true;
                (void)v;
            }
        }
        if (stored) {
            ret = pcow_persist_mapped(img, t, pcow_le64(img->l1[i]) &
                                      ~(cs - 1), cs);
            stored = false;
            if (ret < 0) {
                goto out;
            }
        }
    }
    ret = bm_grow(img, w.nclusters);
    if (ret < 0) {
        goto out;
    }
    newly = calloc(w.nclusters ? w.nclusters : 1, 1);
    if (!newly) {
        ret = -ENOMEM;
        goto out;
    }
    for (i = 1; i < w.nclusters; i++) {
        bool is_free = (w.cls[i] & (PCOW_C_KIND | PCOW_C_RING)) ==
                       PCOW_C_FREE;

        if (is_free && i < free_limit(img, &w) &&
            (punch_all || !bm_test(img, i))) {
            newly[i] = 1;
        }
        if (!is_free) {
            bm_clear(img, i);
        }
    }
    ret = punch_runs(img, newly, w.nclusters);
    if (ret < 0) {
        goto out;
    }
    for (i = 1; i < w.nclusters; i++) {
        if (newly[i]) {
            bm_set(img, i);
        }
    }
    /*
     * Nothing in flight: lower the frontier to the end of the highest used
     * cluster (it is an upper bound, so lowering it first is safe) and cut
     * the file there; blocks beyond it are unused reserve or leaks of an
     * interrupted reservation.
     */
    if (img->alloc_end == pcow_frontier(img) && img->inflight_n == 0 &&
        img->ring_count == 0) {
        uint64_t h = (used_end(img, &w) >> img->cluster_bits) - 1;

        if (((h + 1) << img->cluster_bits) < pcow_frontier(img)) {
            ret = pcow_persist_hot_store(img, PCOW_HOT_FRONTIER,
                                         (h + 1) << img->cluster_bits);
            if (ret < 0) {
                goto out;
            }
            for (i = h + 1; i < w.nclusters; i++) {
                bm_clear(img, i);
            }
            if (img->free_hint > h + 1) {
                img->free_hint = h + 1;
            }
            img->alloc_end = pcow_frontier(img);
        }
    }
    /* Never cut clusters in use above a frontier that is too low */
    if (img->alloc_end == pcow_frontier(img) && img->inflight_n == 0 &&
        used_end(img, &w) <= pcow_frontier(img) &&
        fstat(img->fd, &st) == 0 &&
        (uint64_t)st.st_size > pcow_frontier(img)) {
        ret = pcow_persist_truncate(img, pcow_frontier(img));
        if (ret < 0) {
            goto out;
        }
    }
    ret = pcow_persist_barrier(img);
out:
    pcow_unlock(img);
    free(newly);
    pcow_walk_free(&w);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "recovery failed: %s",
                              strerror(-ret));
    }
    return 0;
}

/* ---- cluster allocation ------------------------------------------------ */

static int raise_frontier_locked(pcow_image *img, uint64_t end)
{
    if (end > pcow_frontier(img)) {
        /* P-RESERVE-FRONTIER */
        return pcow_persist_hot_store(img, PCOW_HOT_FRONTIER, end);
    }
    return 0;
}

/*
 * check -r all: raise a frontier that lies below clusters in use to @end.
 * The clusters between stay off the free list (the next reclaim frees
 * what nothing uses); new allocations start at @end.
 */
int pcow_alloc_raise_frontier(pcow_image *img, uint64_t end)
{
    int ret;

    pcow_lock(img);
    ret = raise_frontier_locked(img, end);
    if (ret == 0 && img->alloc_end < end) {
        img->alloc_end = end;
    }
    pcow_unlock(img);
    return ret;
}

/*
 * check -r all: replace a frontier that is garbage (past the file and past
 * any use) with @end, the end of the highest cluster in use.
 */
int pcow_alloc_set_frontier(pcow_image *img, uint64_t end)
{
    int ret;

    pcow_lock(img);
    /* P-RESERVE-FRONTIER */
    ret = pcow_persist_hot_store(img, PCOW_HOT_FRONTIER, end);
    if (ret == 0) {
        img->alloc_end = end;
    }
    pcow_unlock(img);
    return ret;
}

/* Pick @n contiguous clusters (lowest free first); no I/O */
static uint64_t pick_locked(pcow_image *img, uint64_t n, bool *reused)
{
    uint64_t i = bm_find(img, n), k, off;

    if (i != UINT64_MAX) {
        for (k = 0; k < n; k++) {
            bm_clear(img, i + k);
        }
        if (i + n > img->free_hint) {
            img->free_hint = i + n;
        }
        *reused = true;
        return i << img->cluster_bits;
    }
    off = img->alloc_end;
    img->alloc_end += n << img->cluster_bits;
    *reused = false;
    return off;
}

/* Give back picked clusters that could not be made ready */
static void unpick_locked(pcow_image *img, uint64_t off, uint64_t n,
                          bool reused)
{
    uint64_t k;

    if (!reused && img->alloc_end == off + (n << img->cluster_bits)) {
        img->alloc_end = off;
        return;
    }
    for (k = 0; k < n; k++) {
        bm_set(img, (off >> img->cluster_bits) + k);
    }
}

/* Zeroed, allocated blocks for picked clusters; P-RESERVE-SPACE */
static int make_ready(pcow_image *img, uint64_t off, uint64_t len,
                      bool reused)
{
    int ret;

    if (reused) {
        /* Freed clusters were punched; punch again so they surely read 0 */
        ret = pcow_persist_punch(img, off, len);
        if (ret < 0) {
            return ret;
        }
    }
    ret = pcow_persist_allocate(img, off, len);
    if (ret < 0) {
        return ret;
    }
    return pcow_persist_barrier(img);
}

/* Synchronous allocation of @n contiguous zeroed clusters, lock held */
static int alloc_locked(pcow_image *img, uint64_t n, uint64_t *off)
{
    bool reused;
    uint64_t o = pick_locked(img, n, &reused);
    uint64_t len = n << img->cluster_bits;
    int ret;

    ret = make_ready(img, o, len, reused);
    if (ret == 0) {
        ret = raise_frontier_locked(img, o + len);
    }
    if (ret < 0) {
        if (reused) {
            pcow_persist_punch(img, o, len);
        }
        unpick_locked(img, o, n, reused);
        return ret == -EDQUOT ? -ENOSPC : ret;
    }
    *off = o;
    return 0;
}

int pcow_alloc_clusters(pcow_image *img, uint64_t n, uint64_t *off)
{
    int ret;

    pcow_lock(img);
    ret = alloc_locked(img, n, off);
    pcow_unlock(img);
    return ret;
}

/* One ready cluster: from the reserve, else synchronously */
static int take_locked(pcow_image *img, uint64_t *off)
{
    if (img->ring_count) {
        *off = img->ring[img->ring_head];
        img->ring_head = (img->ring_head + 1) % PCOW_RING_CAP;
        img->ring_count--;
        return 0;
    }
    return alloc_locked(img, 1, off);
}

/* Put a ready cluster back at the front of the reserve */
static void untake_locked(pcow_image *img, uint64_t off)
{
    if (img->ring_count == PCOW_RING_CAP) {
        return;     /* cannot happen right after a take; a leak at worst */
    }
    img->ring_head = (img->ring_head + PCOW_RING_CAP - 1) % PCOW_RING_CAP;
    img->ring[img->ring_head] = off;
    img->ring_count++;
}

int pcow_alloc_one(pcow_image *img, uint64_t *off)
{
    int ret;

    pcow_lock(img);
    ret = take_locked(img, off);
    pcow_unlock(img);
    return ret;
}

void pcow_free_clusters_locked(pcow_image *img, uint64_t off, uint64_t n)
{
    uint64_t first = off >> img->cluster_bits, k;

    if (bm_grow(img, first + n) < 0) {
        return;     /* no memory: leaked until the next reclaim */
    }
    for (k = 0; k < n; k++) {
        bm_set(img, first + k);
    }
}

int pcow_free_clusters(pcow_image *img, uint64_t off, uint64_t n)
{
    int ret;

    pcow_lock(img);
    ret = pcow_persist_punch(img, off, n << img->cluster_bits);
    if (ret == 0) {
        pcow_free_clusters_locked(img, off, n);
    }
    pcow_unlock(img);
    return ret;
}

int pcow_ring_drain(pcow_image *img)
{
    pcow_lock(img);
    /* The next reclaim finds them unreferenced, punches and frees them */
    img->ring_count = 0;
    img->ring_head = 0;
    pcow_unlock(img);
    return 0;
}

uint32_t pcow_reserve_count(pcow_image *img)
{
    uint32_t n;

    pcow_lock(img);
    n = img->ring_count;
    pcow_unlock(img);
    return n;
}

static void inflight_remove(pcow_image *img, uint64_t off)
{
    uint32_t i;

    for (i = 0; i < img->inflight_n; i++) {
        if (img->inflight[i] == off) {
            img->inflight[i] = img->inflight[--img->inflight_n];
            return;
        }
    }
}

uint32_t pcow_reserve_clusters(pcow_image *img, uint32_t count,
                               pcow_error *err)
{
    uint64_t picked[64];
    bool reused[64];
    uint64_t new_start = 0, new_n = 0, cs = img->cluster_size;
    uint32_t n = 0, i, space, total;
    int ret = 0;

    if (img->read_only) {
        pcow_img_error(img, err, -EROFS, "image is read-only");
        return 0;
    }
    if (count > 64) {
        count = 64;     /* batches; the caller loops for more */
    }
    pcow_lock(img);
    space = PCOW_RING_CAP - img->ring_count - img->inflight_n;
    if (count > space) {
        count = space;
    }
    for (n = 0; n < count; n++) {
        uint64_t i0 = bm_find(img, 1);

        if (i0 != UINT64_MAX) {
            bm_clear(img, i0);
            picked[n] = i0 << img->cluster_bits;
            reused[n] = true;
        } else {
            /* New clusters: one contiguous run from the allocation end */
            if (!new_n) {
                new_start = img->alloc_end;
            }
            picked[n] = img->alloc_end;
            img->alloc_end += cs;
            reused[n] = false;
            new_n++;
        }
        img->inflight[img->inflight_n++] = picked[n];
    }
    pcow_unlock(img);

    /* The slow part runs unlocked: faults keep using the ring meanwhile */
    for (i = 0; i < n && ret == 0; i++) {
        if (reused[i]) {
            ret = pcow_persist_punch(img, picked[i], cs);
            if (ret == 0) {
                ret = pcow_persist_allocate(img, picked[i], cs);
            }
        }
    }
    if (ret == 0 && new_n) {
        ret = pcow_persist_allocate(img, new_start, new_n * cs);
    }
    if (ret == 0 && n) {
        ret = pcow_persist_barrier(img);        /* P-RESERVE-SPACE */
    }

    pcow_lock(img);
    if (ret == 0 && new_n) {
        ret = raise_frontier_locked(img, new_start + new_n * cs);
    }
    for (i = 0; i < n; i++) {
        inflight_remove(img, picked[i]);
        if (ret == 0) {
            img->ring[(img->ring_head + img->ring_count) % PCOW_RING_CAP] =
                picked[i];
            img->ring_count++;
        } else if (reused[i]) {
            bm_set(img, picked[i] >> img->cluster_bits);
        }
    }
    if (ret < 0 && new_n &&
        img->alloc_end == new_start + new_n * cs) {
        img->alloc_end = new_start;
    }
    total = img->ring_count;
    pcow_unlock(img);
    if (ret < 0) {
        pcow_img_error(img, err, ret, "cannot reserve clusters: %s",
                       strerror(-ret));
    }
    return total;
}

/* ---- runtime operations ------------------------------------------------ */

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

    ret = take_locked(img, &off);
    if (ret < 0) {
        return ret;
    }
    ret = install_l2_locked(img, i, off, sync);
    if (ret < 0) {
        untake_locked(img, off);
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
        ret = take_locked(img, l2);
        if (ret < 0) {
            return ret;
        }
    }
    ret = take_locked(img, data);
    if (ret < 0 && need_l2) {
        untake_locked(img, *l2);
    }
    return ret;
}

static uint64_t entry_file_off(pcow_image *img, uint64_t v, unsigned word)
{
    uint64_t i = v / img->l2_entries;

    return (pcow_le64(img->l1[i]) & ~(img->cluster_size - 1)) +
           (v % img->l2_entries) * PCOW_L2_ENTRY_SIZE + word * 8;
}

int pcow_set_map_locked(pcow_image *img, uint64_t v, uint64_t map)
{
    uint64_t *e = pcow_l2_entry(img, v);

    if (!e) {
        return -EIO;
    }
    return pcow_persist_store64(img, e, entry_file_off(img, v, 0), map);
}

/*
 * Clear every active L2 entry of a virtual cluster at or beyond @vsize,
 * one persisted batch per L2 table.  Such entries are invisible, but a grow
 * would show them again: a shrink leaves them until it clears them after
 * its commit.  The clusters they held become unreferenced (reclaim frees
 * them).  *cleared receives the number of entries cleared.
 */
int pcow_clear_beyond(pcow_image *img, uint64_t vsize, uint64_t *cleared)
{
    uint64_t first = pcow_div_round_up(vsize, img->cluster_size);
    uint64_t i = first / img->l2_entries;
    int ret = 0;

    *cleared = 0;
    pcow_lock(img);
    for (; i < img->hdr.l1_size && ret == 0; i++) {
        uint64_t *t = img->l2[i];
        uint32_t j = i == first / img->l2_entries ? first % img->l2_entries
                                                  : 0;
        bool stored = false;

        if (!t || !img->l1[i]) {
            continue;
        }
        for (; j < img->l2_entries; j++) {
            if (pcow_word(t + j * 4)) {
                pcow_persist_store64_nosync(img, t + j * 4,
                                            entry_file_off(img, i *
                                                img->l2_entries + j, 0), 0);
                stored = true;
                (*cleared)++;
            }
        }
        if (stored) {
            ret = pcow_persist_mapped(img, t,
                                      entry_file_off(img, i * img->l2_entries,
                                                     0), img->cluster_size);
        }
    }
    pcow_unlock(img);
    return ret;
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
            untake_locked(img, off);
            untake_locked(img, l2off);
            pcow_unlock(img);
            return ret;
        }
        e = pcow_l2_entry(img, vcluster);
    }
    /* P-EXPAND-COMMIT */
    ret = store_word(img, e, entry_file_off(img, vcluster, 0),
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
                                           entry_file_off(img, v, 1),
                                           copied);
            }
        }
        if (ret < 0) {
            return ret;
        }
        if (whole || copied == img->units_mask) {
            /* P-COW-DONE: the source may now be unreferenced */
            ret = pcow_persist_store64(img, e, entry_file_off(img, v, 0),
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
            untake_locked(img, n);
            untake_locked(img, l2off);
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
        ret = pcow_persist_store64(img, e, entry_file_off(img, v, 0),
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
    pcow_persist_store64_nosync(img, e + 1, entry_file_off(img, v, 1),
                                1ull << u);
    pcow_persist_store64_nosync(img, e + 2, entry_file_off(img, v, 2), map);
    ret = pcow_persist_mapped(img, e + 1, entry_file_off(img, v, 1), 16);
    if (ret < 0) {
        goto fail;
    }
    /* P-COW-COMMIT */
    ret = pcow_persist_store64(img, e, entry_file_off(img, v, 0),
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
