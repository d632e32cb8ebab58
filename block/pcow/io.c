/*
 * libpcow byte I/O for tools: pread, pwrite (allocating / copying on
 * write as the guest path would), zero_range, flush
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pcow-int.h"

static int check_range(pcow_image *img, uint64_t offset, uint64_t len,
                       pcow_error *err)
{
    if (offset > img->hdr.virtual_size ||
        len > img->hdr.virtual_size - offset) {
        return pcow_img_error(img, err, -EINVAL, "range 0x%llx+0x%llx "
                              "beyond the virtual size 0x%llx",
                              (unsigned long long)offset,
                              (unsigned long long)len,
                              (unsigned long long)img->hdr.virtual_size);
    }
    return 0;
}

int64_t pcow_pread(pcow_image *img, uint64_t offset, void *buf, uint64_t len,
                   pcow_error *err)
{
    int ret = check_range(img, offset, len, err);

    if (ret < 0) {
        return ret;
    }
    if (len == 0) {
        return 0;
    }
    ret = pcow_read_view(img, offset, buf, len);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "read at 0x%llx failed: %s",
                              (unsigned long long)offset, strerror(-ret));
    }
    return len;
}

/* Does the layer below show only zeros in virtual cluster @v? */
static bool below_is_hole(pcow_image *img, uint64_t v)
{
    pcow_extent ext;
    uint64_t start = v * img->cluster_size;
    uint64_t len = pcow_below_limit(img, start, img->cluster_size);
    pcow_image *b = img->backing;

    if ((!b && img->backing_raw_fd < 0) || len == 0) {
        return true;
    }
    if (b) {
        if (start >= b->hdr.virtual_size) {
            return true;
        }
        if (pcow_get_extent(b, start, len, &ext) < 0) {
            return false;
        }
        return ext.kind == PCOW_EXTENT_HOLE &&
               ext.length >= (len < b->hdr.virtual_size - start ?
                              len : b->hdr.virtual_size - start);
    }
    return start >= img->backing_raw_size;
}

/* Make the place at @off writable in the active layer */
static int make_writable(pcow_image *img, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size;
    uint64_t v = off / cs, fo;
    uint64_t *e;
    uint64_t map;
    pcow_extent ext;
    int ret;

    /* Reserve in batches: one fallocate and fdatasync for many clusters */
    if (pcow_reserve_count(img) < 4) {
        pcow_reserve_clusters(img, 64, NULL);
    }
    pcow_lock(img);
    e = pcow_l2_entry(img, v);
    map = e ? pcow_word(e) : 0;
    pcow_unlock(img);
    if (map == 0 && below_is_hole(img, v)) {
        /* Bulk writes: the commits are made durable by the next barrier */
        ret = pcow_expand_internal(img, v, &fo, false);
        return ret == -EEXIST ? 0 : ret;
    }
    /* The whole cluster is rewritten: copying it first is still correct */
    ret = pcow_cow(img, off, (off % cs) == 0 && len >= cs, &ext);
    return ret == -EEXIST ? 0 : ret;
}

int64_t pcow_pwrite(pcow_image *img, uint64_t offset, const void *buf,
                    uint64_t len, pcow_error *err)
{
    const uint8_t *p = buf;
    uint64_t done = 0;
    pcow_extent ext;
    int ret;

    ret = pcow_write_check(img, err);
    if (ret < 0) {
        return ret;
    }
    ret = check_range(img, offset, len, err);
    if (ret < 0) {
        return ret;
    }
    while (done < len) {
        uint64_t off = offset + done;
        uint64_t n;

        ret = pcow_get_extent(img, off, len - done, &ext);
        if (ret < 0) {
            break;
        }
        if (ext.kind == PCOW_EXTENT_DATA && ext.writable && ext.depth == 0) {
            n = ext.length;
            ret = pcow_persist_pwrite(img, ext.file_offset, p + done, n);
            if (ret < 0) {
                break;
            }
            done += n;
            continue;
        }
        n = img->cluster_size - off % img->cluster_size;
        ret = make_writable(img, off, n < len - done ? n : len - done);
        if (ret < 0) {
            break;
        }
    }
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "write at 0x%llx failed: %s",
                              (unsigned long long)(offset + done),
                              strerror(-ret));
    }
    return len;
}

static int write_zeros(pcow_image *img, uint64_t off, uint64_t len,
                       pcow_error *err)
{
    static const uint8_t zero[65536];

    while (len > 0) {
        uint64_t n = len < sizeof(zero) ? len : sizeof(zero);
        int64_t r = pcow_pwrite(img, off, zero, n, err);

        if (r < 0) {
            return r;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* Make virtual cluster @v read as zeros, deallocating where possible */
static int zero_cluster(pcow_image *img, uint64_t v)
{
    uint64_t cs = img->cluster_size;
    uint64_t *e, map, data, n;
    int ret;

    pcow_lock(img);
    e = pcow_l2_entry(img, v);
    map = e ? pcow_word(e) : 0;
    data = map & ~(cs - 1);
    if (below_is_hole(img, v)) {
        if (map) {
            /* Unmap; copied/source are meaningless once PARTIAL is gone */
            ret = pcow_set_map_locked(img, v, 0);
            if (ret == 0 && pcow_entry_is_ours(pcow_entry_kind(map))) {
                ret = pcow_persist_punch(img, data, cs);
                if (ret == 0) {
                    pcow_free_clusters_locked(img, data, 1);
                }
            }
        } else {
            ret = 0;
        }
        pcow_unlock(img);
        return ret;
    }
    if (pcow_entry_kind(map) == PCOW_ENTRY_OWNED) {
        /* Our own cluster: deallocate its blocks but keep it ready */
        ret = pcow_persist_punch(img, data, cs);
        if (ret == 0) {
            ret = pcow_persist_allocate(img, data, cs);
        }
        if (ret == 0) {
            ret = pcow_persist_barrier(img);
        }
        pcow_unlock(img);
        return ret;
    }
    pcow_unlock(img);
    /* The base shows data here: give the cluster a zeroed home */
    ret = pcow_alloc_one(img, &n);
    if (ret < 0) {
        return ret;
    }
    pcow_lock(img);
    if (!e) {
        ret = pcow_new_l2_locked(img, v / img->l2_entries, true);
    }
    if (ret == 0) {
        ret = pcow_set_map_locked(img, v, n | PCOW_F_PRESENT |
                                  PCOW_F_WRITABLE);
    }
    if (ret == 0 && pcow_entry_is_ours(pcow_entry_kind(map))) {
        ret = pcow_persist_punch(img, data, cs);
        if (ret == 0) {
            pcow_free_clusters_locked(img, data, 1);
        }
    }
    pcow_unlock(img);
    return ret;
}

int pcow_zero_range(pcow_image *img, uint64_t offset, uint64_t len,
                    pcow_error *err)
{
    uint64_t cs = img->cluster_size;
    uint64_t end = offset + len;
    uint64_t pos = offset;
    int ret;

    ret = pcow_write_check(img, err);
    if (ret < 0) {
        return ret;
    }
    ret = check_range(img, offset, len, err);
    if (ret < 0 || len == 0) {
        return ret;
    }
    while (pos < end) {
        uint64_t v = pos / cs;
        uint64_t cstart = v * cs;
        uint64_t cend = cstart + cs;
        uint64_t i = v / img->l2_entries;
        uint64_t seg_end;

        if (cend > img->hdr.virtual_size) {
            cend = img->hdr.virtual_size;   /* a cluster cut by the end */
        }
        seg_end = end < cend ? end : cend;
        /* Skip whole unallocated L2 ranges quickly when there is no base */
        if (!img->l2[i] && !img->backing && img->backing_raw_fd < 0) {
            pos = (i + 1) * img->l2_entries * cs;
            continue;
        }
        if (pos == cstart && seg_end == cend) {
            ret = zero_cluster(img, v);
            if (ret < 0) {
                return pcow_img_error(img, err, ret, "cannot zero cluster "
                                      "at 0x%llx: %s",
                                      (unsigned long long)cstart,
                                      strerror(-ret));
            }
        } else {
            ret = write_zeros(img, pos, seg_end - pos, err);
            if (ret < 0) {
                return ret;
            }
        }
        pos = seg_end;
    }
    ret = pcow_persist_barrier(img);
    if (ret < 0) {
        return pcow_img_op_error(img, err, ret, "flush failed", "%s",
                                 strerror(-ret));
    }
    return 0;
}

int pcow_flush(pcow_image *img, pcow_error *err)
{
    int ret;

    if (pcow_writable(img) < 0) {
        return 0;       /* nothing to flush; a released image is durable */
    }
    ret = pcow_persist_barrier(img);
    if (ret < 0) {
        return pcow_img_op_error(img, err, ret, "flush failed", "%s",
                                 strerror(-ret));
    }
    return 0;
}

int pcow_flush_mapping(pcow_image *img, void *addr, uint64_t len,
                       pcow_error *err)
{
    int ret;

    if (pcow_writable(img) < 0) {
        return 0;       /* as pcow_flush() */
    }
    ret = pcow_persist_msync(img, addr, len);
    if (ret < 0) {
        return pcow_img_op_error(img, err, ret, "flush failed", "msync: %s",
                                 strerror(-ret));
    }
    return pcow_flush(img, err);
}

/*
 * Ending deferral fails for good once its barrier failed: after a write-back
 * error a retried fdatasync() reports success although the pages it could
 * not write are gone, so a retry must not make the image look durable.
 */
static int defer_failed(pcow_image *img, int code, pcow_error *err)
{
    return pcow_img_op_error(img, err, code, "deferred commits could not "
                             "be made durable", "%s", strerror(-code));
}

int pcow_defer_commits(pcow_image *img, bool on, pcow_error *err)
{
    bool was;
    int ret;

    pcow_lock(img);
    ret = img->defer_error;
    was = img->defer_commits;
    /*
     * Not on PM (DAX + MAP_SYNC): a commit's persist is a cache line flush
     * there, nothing to save, and the closing barrier (fdatasync) would not
     * flush the CPU caches of the table mappings.
     */
    if (ret == 0) {
        img->defer_commits = on && !img->read_only &&
                             img->sync != PCOW_SYNC_PMEM;
    }
    pcow_unlock(img);
    if (ret < 0) {
        return defer_failed(img, ret, err);
    }
    if (on || pcow_writable(img) < 0) {
        return 0;
    }
    if (!was) {
        return pcow_flush(img, err);
    }
    /* Every deferred store was made under the lock, so before the barrier */
    ret = pcow_persist_barrier(img);
    if (ret < 0) {
        pcow_lock(img);
        img->defer_error = ret;
        pcow_unlock(img);
        return defer_failed(img, ret, err);
    }
    return 0;
}

bool pcow_commits_deferred(pcow_image *img)
{
    bool on;

    pcow_lock(img);
    on = img->defer_commits;
    pcow_unlock(img);
    return on;
}
