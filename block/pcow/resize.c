/*
 * libpcow resize: grow (a larger L1 table, the backing limit) and shrink
 * (clearing what lies beyond the new end after the commit) -- cf.
 * qcow2_co_truncate.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "pcow-int.h"

/*
 * Clear the active entries at or beyond @vsize (durably, P-RESIZE-CLEAR)
 * and give back the clusters only they held.
 */
static int drop_beyond(pcow_image *img, uint64_t vsize, pcow_error *err)
{
    return pcow_reclaim_beyond(img, vsize, false, false, err);
}

/* Open the backing chain of an image opened without it */
static int open_chain(pcow_image *img, pcow_error *err)
{
    PcowChain chain;
    int ret = pcow_chain_start(img, &chain, err);

    return ret < 0 ? ret : pcow_backing_open(img, &chain, err);
}

/*
 * Before a grow from @old_size (inside a cluster) commits: zero what a
 * shrink left of this image's own data past the old end in that cluster.
 * A hole there needs nothing: it reads zeros, or the base, which the new
 * backing limit @limit hides past the old end.  Invisible until the
 * commit.
 */
static int zero_tail(pcow_image *img, uint64_t old_size, uint64_t new_size,
                     uint64_t limit, pcow_error *err)
{
    uint64_t cs = img->cluster_size, end = pcow_round_up(old_size, cs);
    PcowHeader saved = img->hdr;
    bool opened = false;
    uint64_t *e, map;
    int ret;

    pcow_lock(img);
    e = pcow_l2_entry(img, old_size / cs);
    map = e ? pcow_word(e) : 0;
    pcow_unlock(img);
    if (!map) {
        return 0;
    }
    if (img->hdr.backing_format != PCOW_FMT_NONE && !img->backing &&
        img->backing_raw_fd < 0 &&
        pcow_entry_kind(map) != PCOW_ENTRY_OWNED) {
        /* Copy on write may read the base: open it for the time being */
        ret = open_chain(img, err);
        if (ret < 0) {
            return ret;
        }
        opened = true;
    }
    img->hdr.virtual_size = new_size;
    img->hdr.backing_limit = limit;
    ret = pcow_zero_range(img, old_size,
                          (end < new_size ? end : new_size) - old_size, err);
    img->hdr.virtual_size = saved.virtual_size;
    img->hdr.backing_limit = saved.backing_limit;
    if (opened) {
        pcow_lock(img);
        pcow_backing_close(img);
        pcow_unlock(img);
    }
    return ret;
}

/* P-RESIZE-L1: a larger copy of the L1 table in new clusters */
static int grow_l1(pcow_image *img, uint64_t need, PcowHeader *h,
                   pcow_error *err)
{
    uint64_t cs = img->cluster_size, chunk, pos, k, off;
    uint64_t bytes = (uint64_t)h->l1_size * 8;
    uint8_t *buf = (uint8_t *)img->l1;
    int ret;

    ret = pcow_alloc_clusters(img, pcow_div_round_up(need * 8, cs), &off);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot allocate the new L1 "
                              "table: %s", strerror(-ret));
    }
    /* New clusters read as zeros: copy only the non-zero parts */
    for (pos = 0; pos < bytes; pos += chunk) {
        chunk = bytes - pos < 4096 ? bytes - pos : 4096;
        for (k = 0; k < chunk && !buf[pos + k]; k++) {
        }
        if (k < chunk) {
            ret = pcow_persist_pwrite(img, off + pos, buf + pos, chunk);
            if (ret < 0) {
                return pcow_img_error(img, err, ret, "cannot write the L1 "
                                      "table");
            }
        }
    }
    ret = pcow_persist_barrier(img);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot write the L1 table");
    }
    h->l1_table_offset = off;
    h->l1_size = need;
    return 0;
}

int pcow_resize(pcow_image *img, uint64_t new_size, bool shrink,
                pcow_error *err)
{
    PcowHeader h = img->hdr;
    uint64_t cs = img->cluster_size;
    uint64_t old_size = img->hdr.virtual_size;
    uint64_t need = pcow_l1_size_for(new_size, img->cluster_bits);
    uint64_t old_l1 = img->hdr.l1_table_offset;
    uint64_t old_l1c = pcow_div_round_up((uint64_t)h.l1_size * 8, cs);
    PcowProblems pr = { 0 };
    pcow_error gerr;
    int ret;

    ret = pcow_write_check(img, err);
    if (ret < 0) {
        return ret;
    }
    ret = pcow_header_can_commit(img, err);
    if (ret < 0) {
        return ret;
    }
    ret = pcow_geometry_for(new_size, cs, 1u << img->cow_unit_bits, NULL,
                            &gerr);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "%s", gerr.msg);
    }
    if (new_size < old_size && !shrink) {
        return pcow_img_error(img, err, -EINVAL, "shrinking from %llu to "
                              "%llu bytes needs the shrink option",
                              (unsigned long long)old_size,
                              (unsigned long long)new_size);
    }
    if (new_size == old_size) {
        return 0;
    }
    h.virtual_size = new_size;
    if (new_size > old_size && h.backing_format != PCOW_FMT_NONE &&
        (!h.backing_limit || h.backing_limit > old_size)) {
        /* The grown range reads zeros, not what the base holds there */
        pcow_header_set_limit(img, &h, old_size);
    } else if (h.backing_limit > new_size) {
        pcow_header_set_limit(img, &h, new_size);
    }
    if (new_size > old_size) {
        /*
         * Nothing beyond the old end may show once the commit makes it
         * visible: a shrink interrupted after its commit leaves entries
         * there (open recovery clears them too; this grow must not rely
         * on it), a shrink into a cluster its data in the rest of it.
         */
        ret = drop_beyond(img, old_size, err);
        if (ret == 0 && old_size % cs) {
            ret = zero_tail(img, old_size, new_size, h.backing_limit, err);
        }
        if (ret == 0 && need > h.l1_size) {
            ret = grow_l1(img, need, &h, err);
        }
        if (ret < 0) {
            return ret;
        }
    }
    ret = pcow_header_commit(img, &h, err);    /* P-HEADER-COMMIT */
    if (ret < 0) {
        return ret;
    }
    if (h.l1_table_offset != old_l1) {
        /* Switch the in-memory tables to the new L1 */
        pcow_lock(img);
        pcow_tables_unload(img);
        ret = pcow_tables_load(img, &pr);
        pcow_unlock(img);
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "%s", pr.first);
        }
        ret = pcow_free_clusters(img, old_l1, old_l1c);
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot free the old L1");
        }
    }
    if (new_size < old_size) {
        /* After the commit: a crash before it keeps the old size intact */
        ret = drop_beyond(img, new_size, err);
        if (ret < 0) {
            return ret;
        }
    }
    return pcow_persist_barrier(img);
}
