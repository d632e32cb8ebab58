/*
 * libpcow consistency check: corruptions (the reference rules are broken)
 * versus leaks (clusters that hold blocks but no data), and repair
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-int.h"

/* Clusters in [start, end) by SEEK_DATA (file systems without FIEMAP) */
static uint64_t count_seek_data(pcow_image *img, uint64_t start,
                                uint64_t end)
{
    uint64_t cs = img->cluster_size, n = 0;
    off_t pos = start;

    while ((uint64_t)pos < end) {
        off_t data = lseek(img->fd, pos, SEEK_DATA);
        off_t hole;

        if (data < 0 || (uint64_t)data >= end) {
            break;
        }
        hole = lseek(img->fd, data, SEEK_HOLE);
        if (hole < 0 || (uint64_t)hole > end) {
            hole = end;
        }
        n += (pcow_round_up(hole, cs) - ((uint64_t)data & ~(cs - 1))) / cs;
        pos = pcow_round_up(hole, cs);
    }
    return n;
}

/*
 * Clusters in [start, end) that still hold blocks.  FIEMAP, because
 * SEEK_DATA does not report fallocated (unwritten) extents on ext4/xfs,
 * and those are exactly what a leaked reservation holds.
 */
static uint64_t count_allocated(pcow_image *img, uint64_t start,
                                uint64_t end)
{
    enum { NEXT = 64 };
    union {
        struct fiemap fm;
        uint8_t raw[sizeof(struct fiemap) +
                    NEXT * sizeof(struct fiemap_extent)];
    } u;
    uint64_t cs = img->cluster_size, n = 0, pos = start, last = UINT64_MAX;

    while (pos < end) {
        unsigned k;

        memset(&u, 0, sizeof(u));
        u.fm.fm_start = pos;
        u.fm.fm_length = end - pos;
        u.fm.fm_extent_count = NEXT;
        if (ioctl(img->fd, FS_IOC_FIEMAP, &u.fm) < 0) {
            return count_seek_data(img, pos, end) + n;
        }
        if (u.fm.fm_mapped_extents == 0) {
            break;
        }
        for (k = 0; k < u.fm.fm_mapped_extents; k++) {
            struct fiemap_extent *fe = &u.fm.fm_extents[k];
            uint64_t a = fe->fe_logical > pos ? fe->fe_logical : pos;
            uint64_t b = fe->fe_logical + fe->fe_length;
            uint64_t c;

            if (b > end) {
                b = end;
            }
            /* Count each cluster once even if extents share it */
            for (c = a & ~(cs - 1); c < b; c += cs) {
                if (c != last) {
                    n++;
                    last = c;
                }
            }
            pos = b;
            if (fe->fe_flags & FIEMAP_EXTENT_LAST) {
                return n;
            }
        }
    }
    return n;
}

static uint64_t count_leaks(pcow_image *img, const PcowWalk *w)
{
    uint64_t cs = img->cluster_size, i = 1, start, leaks = 0;
    uint64_t frontier = w->nclusters << img->cluster_bits;
    struct stat st;

    while (i < w->nclusters) {
        if ((w->cls[i] & (PCOW_C_KIND | PCOW_C_RING)) != PCOW_C_FREE) {
            i++;
            continue;
        }
        start = i;
        while (i < w->nclusters &&
               (w->cls[i] & (PCOW_C_KIND | PCOW_C_RING)) == PCOW_C_FREE) {
            i++;
        }
        leaks += count_allocated(img, start * cs, i * cs);
    }
    if (fstat(img->fd, &st) == 0 && (uint64_t)st.st_size > frontier) {
        leaks += count_allocated(img, frontier, st.st_size);
    }
    return leaks;
}

/* WRITABLE on a cluster a snapshot or a source shares: COW would be lost */
static uint64_t count_bad_writable(pcow_image *img, const PcowWalk *w,
                                   PcowProblems *pr)
{
    uint64_t n = 0;
    uint32_t i, j;

    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t *t = img->l2[i];

        if (!t || !img->l1[i]) {
            continue;
        }
        for (j = 0; j < img->l2_entries; j++) {
            uint64_t map = pcow_word(t + j * PCOW_L2_WORDS);
            uint64_t idx = map >> img->cluster_bits;

            /* The raw bit: check judges words that may be invalid */
            if ((map & PCOW_F_WRITABLE) && idx < w->nclusters &&
                (w->cls[idx] & (PCOW_C_SNAP | PCOW_C_SOURCE))) {
                pcow_problem(pr, -EINVAL, "L2 entry for guest offset 0x%llx "
                             "is WRITABLE but cluster 0x%llx is shared",
                             (unsigned long long)(((uint64_t)i *
                                                   img->l2_entries + j) *
                                                  img->cluster_size),
                             (unsigned long long)(idx << img->cluster_bits));
                n++;
            }
        }
    }
    return n;
}

/*
 * Rules of the whole file: it is not shorter than the frontier, and the
 * frontier lies above every cluster in use (check mode walks the whole
 * file, so it sees clusters in use above a frontier that is too low).
 */
static void check_extent(pcow_image *img, const PcowWalk *w,
                         PcowProblems *pr)
{
    uint64_t f = pcow_frontier(img), end = pcow_walk_used_end(img, w);
    uint64_t cs = img->cluster_size, i, lost = 0;
    struct stat st;

    if (img->frontier_wild) {
        pcow_problem(pr, -EINVAL, "frontier 0x%llx lies past the file and "
                     "past anything the image can use",
                     (unsigned long long)f);
        return;
    }
    if (fstat(img->fd, &st) == 0 && (uint64_t)st.st_size < f) {
        for (i = st.st_size / cs; i < w->nclusters; i++) {
            lost += (w->cls[i] & PCOW_C_KIND) != PCOW_C_FREE;
        }
        pcow_problem(pr, -EINVAL, "file truncated: its size 0x%llx is below "
                     "the frontier 0x%llx (%llu clusters in use reach past "
                     "its end)", (unsigned long long)st.st_size,
                     (unsigned long long)f, (unsigned long long)lost);
    }
    if (f % cs || f < cs) {
        pcow_problem(pr, -EINVAL, "frontier 0x%llx is not a multiple of the "
                     "cluster size", (unsigned long long)f);
    } else if (end > f) {
        pcow_problem(pr, -EINVAL, "frontier 0x%llx is too low: clusters up "
                     "to 0x%llx are in use", (unsigned long long)f,
                     (unsigned long long)end);
    }
}

static uint64_t scan(pcow_image *img, PcowWalk *w, PcowProblems *pr)
{
    uint32_t i;

    pcow_walk_free(w);
    memset(pr, 0, sizeof(*pr));
    pr->collect = true;
    /* L1 entries open refused to map count as corruptions too */
    for (i = 0; i < img->hdr.l1_size; i++) {
        if (img->l1[i] && !img->l2[i]) {
            pcow_problem(pr, -EINVAL, "L1 entry %u is invalid: 0x%llx", i,
                         (unsigned long long)pcow_le64(img->l1[i]));
        }
    }
    pcow_snapshot_ids_check(img, pr);
    if (pcow_walk(img, w, pr, false) < 0) {
        return pr->count ? pr->count : 1;
    }
    check_extent(img, w, pr);
    count_bad_writable(img, w, pr);
    return pr->count;
}

/* check -r all, first: what a table walk cannot repair */
static void repair_extent_and_ids(pcow_image *img, const PcowWalk *w)
{
    PcowProblems pr = { .collect = true };
    uint64_t end = pcow_walk_used_end(img, w), f = pcow_frontier(img);
    uint64_t cs = img->cluster_size;

    /*
     * Before anything allocates: replace a frontier that is garbage, raise
     * one that is too low, round a malformed one up to a whole cluster.
     */
    if (img->frontier_wild) {
        pcow_alloc_set_frontier(img, end > cs ? end : cs);
        img->frontier_wild = false;
    } else {
        if (f % cs || f < cs) {
            f = f < cs ? cs : pcow_round_up(f, cs);
            end = end > f ? end : f;
        }
        if (end > pcow_frontier(img)) {
            pcow_alloc_raise_frontier(img, end);
        }
    }
    if (pcow_snapshot_ids_check(img, &pr) ||
        pcow_snapshot_vm_state_bad(img)) {
        pcow_snapshot_ids_repair(img, NULL);
    }
}

/*
 * A clone's snapshot must be in its base (a base that does not open is
 * not this image's problem, as for any overlay).  Repair cannot bring it
 * back.  Returns the problems found (0 or 1).
 */
static uint64_t check_clone_base(pcow_image *img, pcow_check_result *res,
                                 uint64_t found)
{
    char name[PCOW_MAX_SNAPSHOT_NAME + 1];
    pcow_error e;

    if (!img->hdr.backing_snapshot_id ||
        pcow_base_snapshot_lookup(img, name, sizeof(name), &e) != 0) {
        return 0;
    }
    if (!found) {
        snprintf(res->first_problem, sizeof(res->first_problem), "%s",
                 e.msg);
    }
    return 1;
}

int pcow_check(const char *path, unsigned repair, bool force_share,
               pcow_check_result *res, pcow_error *err)
{
    return pcow_check_hooked(path, repair, force_share, NULL, NULL, res, err);
}

int pcow_check_hooked(const char *path, unsigned repair, bool force_share,
                      pcow_persist_hook hook, void *opaque,
                      pcow_check_result *res, pcow_error *err)
{
    PcowProblems pr = { .collect = true };
    PcowWalk w = { 0 };
    pcow_image *img;
    unsigned flags = PCOW_OPEN_NO_BACKING | PCOW_OPEN_CHECK;
    uint64_t found;
    uint32_t i;
    int ret;

    memset(res, 0, sizeof(*res));
    pcow_error_clear(err);
    if (repair) {
        flags |= PCOW_OPEN_RDWR | PCOW_OPEN_NO_RECOVER;
    }
    if (repair & PCOW_REPAIR_ERRORS) {
        flags |= PCOW_OPEN_FIX_SHORT;
    }
    if (force_share) {
        flags |= PCOW_OPEN_NO_LOCK;
    }
    ret = pcow_open_internal(path, flags, hook, opaque, 0, NULL, 0, &pr,
                             &img, err);
    if (ret < 0) {
        if (ret == -EINVAL || ret == -ENOTSUP || ret == -EFBIG ||
            ret == -EBADMSG) {
            /* The structure itself is broken: nothing more to count */
            res->corruptions = pr.count ? pr.count : 1;
            snprintf(res->first_problem, sizeof(res->first_problem), "%s",
                     err ? err->msg : "image is corrupt");
            return 0;
        }
        return ret;
    }
    found = scan(img, &w, &pr);
    if (found) {
        snprintf(res->first_problem, sizeof(res->first_problem), "%s: %.400s",
                 path, pr.first);
    }
    found += check_clone_base(img, res, found);
    if (img->short_size) {
        /* Open already repaired this one: the file was extended */
        snprintf(res->first_problem, sizeof(res->first_problem), "%s: file "
                 "truncated: its size 0x%llx was below the frontier 0x%llx",
                 path, (unsigned long long)img->short_size,
                 (unsigned long long)pcow_frontier(img));
        res->corruptions_fixed = 1;
    }
    res->corruptions = found + res->corruptions_fixed;
    if (found && (repair & PCOW_REPAIR_ERRORS)) {
        PcowWalk fw;
        PcowProblems fpr = { .collect = true };

        repair_extent_and_ids(img, &w);
        for (i = 0; i < img->hdr.l1_size; i++) {
            if (img->l1[i] && !img->l2[i]) {
                pcow_persist_store64(img, &img->l1[i],
                                     img->hdr.l1_table_offset + i * 8ull, 0);
            }
        }
        /* Clear the entries that break the rules, then fix WRITABLE bits */
        pcow_walk(img, &fw, &fpr, true);
        pcow_walk_free(&fw);
        found = scan(img, &w, &pr);
        if (found && pcow_alloc_recover(img, false, NULL) == 0) {
            found = scan(img, &w, &pr);
        }
        /* Repair cannot bring a clone's snapshot back */
        found += check_clone_base(img, res, found);
        res->corruptions_fixed = res->corruptions - found;
    }
    res->corruptions = found;
    /*
     * Entries beyond the virtual size (a shrink cut by a crash) are
     * invisible but hold their clusters: leaks, not corruption.
     */
    res->stale_entries = w.stale;
    res->leaks = count_leaks(img, &w) + w.stale;
    if (res->leaks && (repair & PCOW_REPAIR_LEAKS) && res->corruptions == 0) {
        ret = pcow_reclaim_beyond(img, img->hdr.virtual_size, true, true,
                                  err);
        if (ret == 0) {
            scan(img, &w, &pr);
            found = count_leaks(img, &w) + w.stale;
            res->leaks_fixed = res->leaks - found;
            res->leaks = found;
            res->stale_entries = w.stale;
        }
    }
    res->allocated_clusters = w.data_clusters;
    res->total_clusters = pcow_div_round_up(img->hdr.virtual_size,
                                            img->cluster_size);
    res->fragmented_clusters = w.fragmented;
    res->vm_state_clusters = w.vm_state_clusters;
    res->image_end_offset = pcow_frontier(img);
    pcow_walk_free(&w);
    ret = pcow_close(img, NULL);
    return 0;
}
