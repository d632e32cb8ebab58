/*
 * libpcow allocation: the free-cluster bitmap, the reserve ring, cluster
 * allocation and recovery/reclaim (cf. qcow2-refcount.c)
 *
 * Clusters below the frontier are free or in use as the reference walk
 * found them; the frontier (hot line) bounds what the file may hold.  The
 * *_locked primitives that the runtime module (runtime.c) calls from a
 * signal handler allocate no memory: the bitmap grows with mremap().
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

/* WRITABLE exactly where no snapshot and no source shares the cluster */
static int normalise_writable_locked(pcow_image *img, const PcowWalk *w)
{
    uint64_t cs = img->cluster_size;
    uint32_t i, j;
    int ret;

    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t *t = img->l2[i];
        uint64_t l2off;
        bool stored = false;

        if (!t || !img->l1[i]) {
            continue;
        }
        l2off = pcow_le64(img->l1[i]) & ~(cs - 1);
        for (j = 0; j < img->l2_entries; j++) {
            uint64_t map = pcow_word(t + j * PCOW_L2_WORDS);
            uint64_t nm;
            bool shared;

            if (pcow_entry_kind(map) == PCOW_ENTRY_HOLE) {
                continue;
            }
            shared = w->cls[map >> img->cluster_bits] &
                     (PCOW_C_SNAP | PCOW_C_SOURCE);
            nm = shared ? map & ~PCOW_F_WRITABLE : map | PCOW_F_WRITABLE;
            if (nm != map) {
                pcow_persist_store64_nosync(img, t + j * PCOW_L2_WORDS,
                                            l2off + j * PCOW_L2_ENTRY_SIZE,
                                            nm);
                stored = true;
            }
        }
        if (stored) {
            ret = pcow_persist_mapped(img, t, l2off, cs);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/*
 * Every unreferenced cluster onto the free list; punch the ones that were
 * not free already (all of them with @punch_all).
 */
static int reclaim_free_locked(pcow_image *img, const PcowWalk *w,
                               bool punch_all)
{
    uint8_t *newly;
    uint64_t i;
    int ret = bm_grow(img, w->nclusters);

    if (ret < 0) {
        return ret;
    }
    newly = calloc(w->nclusters ? w->nclusters : 1, 1);
    if (!newly) {
        return -ENOMEM;
    }
    for (i = 1; i < w->nclusters; i++) {
        bool is_free = (w->cls[i] & (PCOW_C_KIND | PCOW_C_RING)) ==
                       PCOW_C_FREE;

        if (is_free && i < free_limit(img, w) &&
            (punch_all || !bm_test(img, i))) {
            newly[i] = 1;
        }
        if (!is_free) {
            bm_clear(img, i);
        }
    }
    ret = punch_runs(img, newly, w->nclusters);
    for (i = 1; i < w->nclusters && ret == 0; i++) {
        if (newly[i]) {
            bm_set(img, i);
        }
    }
    free(newly);
    return ret;
}

/*
 * Nothing in flight: lower the frontier to the end of the highest used
 * cluster (it is an upper bound, so lowering it first is safe) and cut
 * the file there; blocks beyond it are unused reserve or leaks of an
 * interrupted reservation.
 */
static int trim_frontier_locked(pcow_image *img, const PcowWalk *w)
{
    uint64_t end = pcow_walk_used_end(img, w), i;
    struct stat st;
    int ret;

    if (img->alloc_end == pcow_frontier(img) && img->inflight_n == 0 &&
        img->ring_count == 0 && end < pcow_frontier(img)) {
        ret = pcow_persist_hot_store(img, PCOW_HOT_FRONTIER, end);
        if (ret < 0) {
            return ret;
        }
        for (i = end >> img->cluster_bits; i < w->nclusters; i++) {
            bm_clear(img, i);
        }
        if (img->free_hint > (end >> img->cluster_bits)) {
            img->free_hint = end >> img->cluster_bits;
        }
        img->alloc_end = pcow_frontier(img);
    }
    /* Never cut clusters in use above a frontier that is too low */
    if (img->alloc_end == pcow_frontier(img) && img->inflight_n == 0 &&
        end <= pcow_frontier(img) && fstat(img->fd, &st) == 0 &&
        (uint64_t)st.st_size > pcow_frontier(img)) {
        return pcow_persist_truncate(img, pcow_frontier(img));
    }
    return 0;
}

/*
 * Recovery and reclaim: normalise WRITABLE bits of the active layer, put
 * every unreferenced cluster on the free list and punch the ones that were
 * not already free (all of them with @punch_all), lower the frontier.
 * Used by a read-write open, close, and after snapshot delete/revert.
 */
int pcow_alloc_recover(pcow_image *img, bool punch_all, pcow_error *err)
{
    PcowProblems pr = { 0 };
    PcowWalk w;
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
    ret = normalise_writable_locked(img, &w);
    if (ret == 0) {
        ret = reclaim_free_locked(img, &w, punch_all);
    }
    if (ret == 0) {
        ret = trim_frontier_locked(img, &w);
    }
    if (ret == 0) {
        ret = pcow_persist_barrier(img);
    }
    pcow_unlock(img);
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
 * The same for a reservation, whose clusters are in flight: the store under
 * the lock, its persist (a disk flush) outside, so that expansions taking
 * reserved clusters meanwhile do not wait for it.  While clusters are in
 * flight nothing lowers the frontier (trim_frontier_locked).
 */
static int raise_frontier(pcow_image *img, uint64_t end)
{
    pcow_lock(img);
    if (end > pcow_frontier(img)) {
        pcow_persist_hot_set(img, PCOW_HOT_FRONTIER, end);
    }
    pcow_unlock(img);
    /*
     * P-RESERVE-FRONTIER: always, even if a later reservation stored a
     * higher frontier: its sync may still be under way, and our clusters
     * must not reach the ring before a frontier >= @end is durable.
     */
    return pcow_persist_hot_sync(img, PCOW_HOT_FRONTIER);
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

/*
 * Zeroed, allocated blocks for picked clusters; P-RESERVE-SPACE.  A ranged
 * sync (the blocks, the file's metadata, a disk flush), not fdatasync: that
 * would also write back the guest's dirty pages of the whole image.
 */
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
    return pcow_persist_sync_range(img, off, len);
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

/*
 * One ready cluster: from the reserve, else synchronously.  While commits
 * are deferred (a burst of expansions that outruns the pool thread) a miss
 * makes PCOW_DEFER_BATCH clusters ready at once and reserves the rest: one
 * fallocate and sync instead of one per cluster.
 */
int pcow_take_locked(pcow_image *img, uint64_t *off)
{
    uint64_t n = img->defer_commits ? PCOW_DEFER_BATCH : 1, k, space;
    int ret;

    if (img->ring_count) {
        *off = img->ring[img->ring_head];
        img->ring_head = (img->ring_head + 1) % PCOW_RING_CAP;
        img->ring_count--;
        return 0;
    }
    /*
     * The rest of the batch joins the ring, where the in-flight
     * reservations and an untake must still fit
     */
    space = PCOW_RING_CAP - img->inflight_n;
    n = n > space ? (space ? space : 1) : n;
    ret = alloc_locked(img, n, off);
    if (ret == -ENOSPC && n > 1) {
        n = 1;
        ret = alloc_locked(img, n, off);    /* the last clusters */
    }
    for (k = 1; ret == 0 && k < n; k++) {
        img->ring[(img->ring_head + img->ring_count) % PCOW_RING_CAP] =
            *off + (k << img->cluster_bits);
        img->ring_count++;
    }
    return ret;
}

/* Put a ready cluster back at the front of the reserve */
void pcow_untake_locked(pcow_image *img, uint64_t off)
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
    ret = pcow_take_locked(img, off);
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
    bool any_reused = false;
    int ret = 0;

    if (pcow_writable(img) < 0) {
        pcow_write_check(img, err);
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
            any_reused = true;
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
        /* P-RESERVE-SPACE: as make_ready(); scattered reused ones: all */
        ret = any_reused ? pcow_persist_barrier(img)
                         : pcow_persist_sync_range(img, new_start, new_n * cs);
    }

    if (ret == 0 && new_n) {
        ret = raise_frontier(img, new_start + new_n * cs);
    }
    pcow_lock(img);
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
        uint64_t l2off;
        bool stored = false;

        if (!t || !img->l1[i]) {
            continue;
        }
        l2off = pcow_le64(img->l1[i]) & ~(img->cluster_size - 1);
        for (; j < img->l2_entries; j++) {
            if (pcow_word(t + j * PCOW_L2_WORDS)) {
                pcow_persist_store64_nosync(img, t + j * PCOW_L2_WORDS,
                                            l2off + j * PCOW_L2_ENTRY_SIZE,
                                            0);
                stored = true;
                (*cleared)++;
            }
        }
        if (stored) {
            ret = pcow_persist_mapped(img, t, l2off, img->cluster_size);
        }
    }
    pcow_unlock(img);
    return ret;
}

/*
 * Clear the active entries at or beyond @vsize, then reclaim (recovery:
 * unreferenced clusters go back to the free list, punched; every free one
 * with @punch_all).  Without @always, reclaim only if entries were cleared.
 */
int pcow_reclaim_beyond(pcow_image *img, uint64_t vsize, bool punch_all,
                        bool always, pcow_error *err)
{
    uint64_t n;
    int ret = pcow_clear_beyond(img, vsize, &n);

    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot clear the mappings "
                              "beyond %llu bytes: %s",
                              (unsigned long long)vsize, strerror(-ret));
    }
    return n || always ? pcow_alloc_recover(img, punch_all, err) : 0;
}
