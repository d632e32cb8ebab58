/*
 * libpcow reference walk and validation (cf. qcow2-refcount.c's check)
 *
 * There is no refcount on disk: open walks every table once and classifies
 * each cluster below the frontier (docs/interop/pcow-spec.rst, Reference
 * rules), validating every table entry on the way.  The allocation module
 * builds its free bitmap from the result; check counts and repairs with it.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcow-int.h"

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
        const uint64_t *e = t + j * PCOW_L2_WORDS;
        uint64_t map = pcow_word(e);
        uint64_t gofs = (first_v + j) * cs;
        uint64_t eoff = l2_off + (uint64_t)j * PCOW_L2_ENTRY_SIZE;
        uint64_t idx, sidx;
        uint8_t *cl;

        if (pcow_word(e + PCOW_W_RESERVED)) {
            pcow_problem(c->pr, -EINVAL, "%sL2 entry for guest offset 0x%llx "
                         "has its reserved word set",
                         table_name(sn, tb, sizeof(tb)),
                         (unsigned long long)gofs);
            repair_word(c, eoff + PCOW_W_RESERVED * 8, 0);
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
            uint64_t copied = pcow_word(e + PCOW_W_COPIED);
            uint64_t source = pcow_word(e + PCOW_W_SOURCE);

            if (copied & ~img->units_mask) {
                pcow_problem(c->pr, -EINVAL, "%sL2 entry for guest offset "
                             "0x%llx has copied bits beyond its %u units",
                             table_name(sn, tb, sizeof(tb)),
                             (unsigned long long)gofs, img->units);
                repair_word(c, eoff + PCOW_W_COPIED * 8,
                            copied & img->units_mask);
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

/* Stop at the first problem, unless collecting them all */
static bool stop(const WalkCtx *c)
{
    return c->pr->count && !c->pr->collect;
}

/* The snapshot table and every L1 table; read snapshot L1s into @sl1 */
static int walk_tables_meta(WalkCtx *c, uint64_t **sl1)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size;
    uint32_t s;

    if (img->hdr.nb_snapshots) {
        mark_meta(c, img->hdr.snapshots_offset,
                  pcow_div_round_up(img->hdr.snapshots_size, cs),
                  "snapshot table", NULL);
        if (stop(c)) {
            return 0;
        }
    }
    mark_meta(c, img->hdr.l1_table_offset,
              pcow_div_round_up((uint64_t)img->hdr.l1_size * 8, cs),
              "L1 table", NULL);
    for (s = 0; s < img->hdr.nb_snapshots && !stop(c); s++) {
        PcowSnapshot *sn = &img->snaps[s];

        if (mark_meta(c, sn->l1_table_offset,
                      pcow_div_round_up((uint64_t)sn->l1_size * 8, cs),
                      "L1 table", sn)) {
            sl1[s] = malloc((uint64_t)sn->l1_size * 8);
            if (!sl1[s]) {
                pcow_problem(c->pr, -ENOMEM, "out of memory");
                return -ENOMEM;
            }
        }
    }
    return 0;
}

/* Ring and in-flight reservations are in use, though unreferenced */
static void walk_reserved(pcow_image *img, PcowWalk *w)
{
    uint32_t i;

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
}

/*
 * Every L2 table (active, then the snapshots'), so that data entries can
 * be told from metadata; then every entry of them.
 */
static int walk_layers(WalkCtx *c, uint64_t **sl1, uint64_t *buf)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size;
    uint32_t i, s;
    int ret;

    for (i = 0; i < img->hdr.l1_size && !stop(c); i++) {
        uint64_t e = pcow_le64(img->l1[i]);

        if (e && img->l2[i] &&
            !mark_meta(c, e & ~(cs - 1), 1, "L2 table", NULL)) {
            repair_word(c, img->hdr.l1_table_offset + i * 8ull, 0);
        }
    }
    for (s = 0; s < img->hdr.nb_snapshots && !stop(c); s++) {
        if (sl1[s]) {
            ret = walk_snapshot(c, &img->snaps[s], sl1[s], buf);
            if (ret < 0) {
                return ret;
            }
        }
    }
    for (i = 0; i < img->hdr.l1_size && !stop(c); i++) {
        uint64_t e = pcow_le64(img->l1[i]);

        if (e && img->l2[i]) {
            walk_l2(c, img->l2[i], e & ~(cs - 1),
                    (uint64_t)i * img->l2_entries, NULL);
        }
    }
    for (s = 0; s < img->hdr.nb_snapshots && !stop(c); s++) {
        if (sl1[s]) {
            ret = walk_snapshot_l2(c, &img->snaps[s], sl1[s], buf);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/*
 * Each snapshot's VM state: contiguous clusters that only it references.
 * Walked last, so that a VM state over a table or data cluster is the one
 * found wrong (check -r all drops it; the snapshot's data stays).
 */
static void walk_vm_states(WalkCtx *c)
{
    pcow_image *img = c->img;
    uint64_t cs = img->cluster_size, n, k, first;
    uint32_t s;
    char tb[300];

    for (s = 0; s < img->hdr.nb_snapshots && !stop(c); s++) {
        PcowSnapshot *sn = &img->snaps[s];

        sn->vm_state_bad = false;
        if (!sn->vm_state_size) {
            continue;
        }
        n = pcow_div_round_up(sn->vm_state_size, cs);
        first = sn->vm_state_offset >> img->cluster_bits;
        if (sn->vm_state_offset > c->frontier ||
            n * cs > c->frontier - sn->vm_state_offset) {
            pcow_problem(c->pr, -EINVAL, "%sVM state at 0x%llx (%llu bytes) "
                         "lies outside the image (frontier 0x%llx)",
                         table_name(sn, tb, sizeof(tb)),
                         (unsigned long long)sn->vm_state_offset,
                         (unsigned long long)sn->vm_state_size,
                         (unsigned long long)pcow_frontier(img));
            sn->vm_state_bad = true;
            continue;
        }
        for (k = 0; k < n; k++) {
            if ((c->w->cls[first + k] & PCOW_C_KIND) != PCOW_C_FREE) {
                pcow_problem(c->pr, -EINVAL, "%sVM state at 0x%llx overlaps "
                             "cluster 0x%llx, which is in use",
                             table_name(sn, tb, sizeof(tb)),
                             (unsigned long long)sn->vm_state_offset,
                             (unsigned long long)((first + k) * cs));
                sn->vm_state_bad = true;
                break;
            }
        }
        if (sn->vm_state_bad) {
            continue;
        }
        for (k = 0; k < n; k++) {
            c->w->cls[first + k] = PCOW_C_META;     /* not data: one owner */
        }
        c->w->vm_state_clusters += n;
    }
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
    uint32_t s;
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
    ret = walk_tables_meta(&c, sl1);
    if (ret == 0 && !stop(&c)) {
        walk_reserved(img, w);
        ret = walk_layers(&c, sl1, buf);
    }
    if (ret == 0 && !stop(&c)) {
        walk_vm_states(&c);
    }
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

/* End of the highest cluster the walk found in use (or reserved) */
uint64_t pcow_walk_used_end(pcow_image *img, const PcowWalk *w)
{
    uint64_t h = w->nclusters ? w->nclusters - 1 : 0;

    while (h > 0 && (w->cls[h] & (PCOW_C_KIND | PCOW_C_RING)) ==
           PCOW_C_FREE) {
        h--;
    }
    return (h + 1) << img->cluster_bits;
}
