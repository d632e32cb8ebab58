/*
 * libpcow mapping: L1/L2 tables and extent resolution through the chain
 *
 * A read-write image keeps its active L1 table and every L2 table mapped
 * MAP_SHARED from the file, so that an aligned 8-byte store into the
 * mapping (made durable by persist.c) is a commit.  A read-only image keeps
 * private copies, so that nothing it reads can change under it or fault.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pcow-int.h"

int pcow_read_table(pcow_image *img, uint64_t off, void *buf, uint64_t len)
{
    uint8_t *p = buf;
    uint64_t done = 0;

    while (done < len) {
        ssize_t n = pread(img->fd, p + done, len - done, off + done);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            /* A table may end in a sparse tail beyond EOF: zeros */
            memset(p + done, 0, len - done);
            break;
        }
        done += n;
    }
    return 0;
}

static uint64_t l1_map_len(pcow_image *img)
{
    return pcow_round_up((uint64_t)img->hdr.l1_size * 8, 4096);
}

int pcow_map_l2_shared(pcow_image *img, uint32_t i, uint64_t off)
{
    uint64_t *t = pcow_persist_map(img, off, img->cluster_size);

    if (!t) {
        return -errno ? -errno : -ENOMEM;
    }
    __atomic_store_n(&img->l2[i], t, __ATOMIC_RELEASE);
    return 0;
}

/* Shared mapping (read-write), else a private copy (read-only) */
static int map_l2(pcow_image *img, uint32_t i, uint64_t off)
{
    uint64_t *t;
    int ret;

    if (img->tables_mapped) {
        return pcow_map_l2_shared(img, i, off);
    } else {
        t = malloc(img->cluster_size);
        if (!t) {
            return -ENOMEM;
        }
        ret = pcow_read_table(img, off, t, img->cluster_size);
        if (ret < 0) {
            free(t);
            return ret;
        }
    }
    __atomic_store_n(&img->l2[i], t, __ATOMIC_RELEASE);
    return 0;
}

static void unmap_l2(pcow_image *img, uint64_t *t)
{
    if (img->tables_mapped) {
        munmap(t, img->cluster_size);
    } else {
        free(t);
    }
}

void pcow_tables_unload(pcow_image *img)
{
    uint32_t i;

    if (img->l2) {
        for (i = 0; i < img->l2_count; i++) {
            if (img->l2[i]) {
                unmap_l2(img, img->l2[i]);
            }
        }
        free(img->l2);
        img->l2 = NULL;
    }
    if (img->l1) {
        if (img->tables_mapped) {
            munmap(img->l1, img->l1_len);
        } else {
            free(img->l1);
        }
        img->l1 = NULL;
    }
}

/* Check an L1 entry before its L2 table is mapped */
static bool l1_entry_ok(pcow_image *img, uint64_t e, uint64_t frontier)
{
    uint64_t off = e & ~(img->cluster_size - 1);

    return !(e & (img->cluster_size - 1)) && !(e & PCOW_HIGH_RESERVED) &&
           off >= img->cluster_size && off + img->cluster_size <= frontier;
}

int pcow_tables_load(pcow_image *img, PcowProblems *pr)
{
    uint64_t frontier = pcow_valid_end(img);
    uint64_t per_l2 = img->cluster_size * img->l2_entries;
    uint32_t i;
    int ret;

    img->tables_mapped = !img->read_only;
    img->l1_len = l1_map_len(img);
    if (img->tables_mapped) {
        img->l1 = pcow_persist_map(img, img->hdr.l1_table_offset,
                                   img->l1_len);
        if (!img->l1) {
            pcow_problem(pr, -ENOMEM, "cannot map the L1 table");
            return -ENOMEM;
        }
    } else {
        img->l1 = malloc(img->l1_len);
        if (!img->l1) {
            pcow_problem(pr, -ENOMEM, "out of memory for the L1 table");
            return -ENOMEM;
        }
        ret = pcow_read_table(img, img->hdr.l1_table_offset, img->l1,
                              img->l1_len);
        if (ret < 0) {
            pcow_problem(pr, ret, "cannot read the L1 table");
            return ret;
        }
    }
    img->l2 = calloc(img->hdr.l1_size, sizeof(*img->l2));
    img->l2_count = img->hdr.l1_size;
    if (!img->l2) {
        pcow_problem(pr, -ENOMEM, "out of memory for %u L2 pointers",
                     img->hdr.l1_size);
        return -ENOMEM;
    }
    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t e = pcow_le64(img->l1[i]);

        if (!e) {
            continue;
        }
        if (!l1_entry_ok(img, e, frontier)) {
            pcow_problem(pr, -EINVAL, "L1 entry %u (guest offset 0x%llx) "
                         "is invalid: 0x%llx", i,
                         (unsigned long long)(i * per_l2),
                         (unsigned long long)e);
            if (!pr->collect) {
                return -EINVAL;
            }
            continue;
        }
        if (img->tables_mapped) {
            /*
             * P-OPEN-TABLES: a table written through a shared mapping
             * must have its blocks: a page that is a hole (a sparse copy,
             * fallocate -d) needs one at the first store, and on a full
             * file system that store dies of SIGBUS.  Running out of
             * space here is a clean error instead.
             */
            ret = pcow_persist_allocate(img, e, img->cluster_size);
            if (ret < 0) {
                pcow_problem(pr, ret, "cannot allocate the L2 table at "
                             "0x%llx: %s", (unsigned long long)e,
                             strerror(-ret));
                return ret;
            }
        }
        ret = map_l2(img, i, e);
        if (ret < 0) {
            pcow_problem(pr, ret, "cannot load the L2 table at 0x%llx",
                         (unsigned long long)e);
            return ret;
        }
    }
    return 0;
}

uint64_t *pcow_l2_entry(pcow_image *img, uint64_t vcluster)
{
    uint64_t i = vcluster / img->l2_entries;
    uint64_t *t;

    if (i >= img->hdr.l1_size) {
        return NULL;
    }
    t = __atomic_load_n(&img->l2[i], __ATOMIC_ACQUIRE);
    if (!t) {
        return NULL;
    }
    return t + (vcluster % img->l2_entries) * PCOW_L2_WORDS;
}

static uint64_t entry_map(pcow_image *img, uint64_t v)
{
    uint64_t *e = pcow_l2_entry(img, v);

    return e ? pcow_word(e) : 0;
}

static int layer_extent(pcow_image *img, uint64_t off, uint64_t max,
                        unsigned depth, pcow_extent *ext);

/*
 * Bytes of [off, off + len) through which the backing chain may show: it
 * never does at or beyond the backing limit (what a shrink cut off).
 * Async-signal-safe.
 */
uint64_t pcow_below_limit(pcow_image *img, uint64_t off, uint64_t len)
{
    uint64_t limit = img->hdr.backing_limit;

    if (!limit || (off < limit && len <= limit - off)) {
        return len;
    }
    return off < limit ? limit - off : 0;
}

/* What the layers below @img show at [off, off + max) */
static int below_extent(pcow_image *img, uint64_t off, uint64_t max,
                        unsigned depth, pcow_extent *ext)
{
    uint64_t shown = pcow_below_limit(img, off, max);

    memset(ext, 0, sizeof(*ext));
    ext->offset = off;
    ext->length = shown ? shown : max;
    ext->kind = PCOW_EXTENT_HOLE;
    ext->fd = -1;
    ext->depth = depth;
    if (!shown) {
        return 0;       /* zeros: past the backing limit */
    }
    max = shown;
    if (img->backing) {
        return layer_extent(img->backing, off, max, depth + 1, ext);
    }
    if (img->backing_raw_fd >= 0) {
        uint64_t end = pcow_round_up(img->backing_raw_size, 4096);

        if (off >= end) {
            return 0;
        }
        ext->kind = PCOW_EXTENT_DATA;
        ext->fd = img->backing_raw_fd;
        ext->file_offset = off;
        ext->depth = depth + 1;
        if (ext->length > end - off) {
            ext->length = end - off;
        }
        ext->valid_length = img->backing_raw_size - off;
        if (ext->valid_length > ext->length) {
            ext->valid_length = ext->length;
        }
    }
    return 0;
}

/* Bytes from @off through the run of clusters this layer does not map */
static uint64_t hole_run(pcow_image *img, uint64_t off, uint64_t max)
{
    uint64_t cs = img->cluster_size;
    uint64_t per_l2 = cs * img->l2_entries;
    uint64_t pos = off & ~(cs - 1);
    uint64_t end = off + max;

    while (pos < end) {
        uint64_t i = pos / per_l2;

        if (i >= img->hdr.l1_size || !img->l2[i]) {
            pos = (i + 1) * per_l2;
            continue;
        }
        if (entry_map(img, pos / cs) != 0) {
            break;
        }
        pos += cs;
    }
    return (pos < end ? pos : end) - off;
}

/* One piece of what @img shows at @off, homogeneous in this layer */
static int layer_extent(pcow_image *img, uint64_t off, uint64_t max,
                        unsigned depth, pcow_extent *ext)
{
    uint64_t cs = img->cluster_size;
    uint64_t unit = 1ull << img->cow_unit_bits;
    uint64_t v, in, map, data, len;

    if (off >= img->hdr.virtual_size) {
        memset(ext, 0, sizeof(*ext));
        ext->offset = off;
        ext->length = max;
        ext->fd = -1;
        ext->depth = depth;
        return 0;
    }
    if (max > img->hdr.virtual_size - off) {
        max = img->hdr.virtual_size - off;
    }
    v = off >> img->cluster_bits;
    in = off & (cs - 1);
    map = entry_map(img, v);
    if (map == 0) {
        return below_extent(img, off, hole_run(img, off, max), depth, ext);
    }
    memset(ext, 0, sizeof(*ext));
    ext->offset = off;
    ext->depth = depth;
    ext->kind = PCOW_EXTENT_DATA;
    ext->fd = img->fd;
    data = map & ~(cs - 1);
    if (!pcow_entry_is_partial(pcow_entry_kind(map))) {
        uint64_t flags = map & PCOW_F_ALL;
        uint64_t next = v + 1;

        len = cs - in;
        /* Extend over clusters that continue the same file run */
        while (len < max) {
            uint64_t m = entry_map(img, next);

            if ((m & PCOW_F_ALL) != flags ||
                (m & ~(cs - 1)) != data + (next - v) * cs) {
                break;
            }
            len += cs;
            next++;
        }
        ext->length = len < max ? len : max;
        ext->valid_length = ext->length;
        ext->file_offset = data + in;
        ext->writable = depth == 0 && pcow_writable(img) == 0 &&
                        pcow_entry_is_ours(pcow_entry_kind(map));
        return 0;
    } else {
        uint64_t *e = pcow_l2_entry(img, v);
        uint64_t copied = pcow_word(e + PCOW_W_COPIED) & img->units_mask;
        uint64_t source = pcow_word(e + PCOW_W_SOURCE);
        unsigned u = in >> img->cow_unit_bits;
        bool is_copied = copied & (1ull << u);
        unsigned w = u + 1;

        while (w < img->units && !!(copied & (1ull << w)) == is_copied) {
            w++;
        }
        len = (uint64_t)w * unit - in;
        if (len > max) {
            len = max;
        }
        if (is_copied) {
            ext->length = len;
            ext->valid_length = len;
            ext->file_offset = data + in;
            ext->writable = depth == 0 && pcow_writable(img) == 0 &&
                            pcow_entry_is_ours(pcow_entry_kind(map));
            return 0;
        }
        if (pcow_entry_kind(source) != PCOW_ENTRY_HOLE) {
            ext->length = len;
            ext->valid_length = len;
            ext->file_offset = (source & ~(cs - 1)) + in;
            ext->writable = false;
            return 0;
        }
        return below_extent(img, off, len, depth, ext);
    }
}

static bool extent_joins(const pcow_extent *a, const pcow_extent *b)
{
    if (a->kind != b->kind) {
        return false;
    }
    if (a->kind == PCOW_EXTENT_HOLE) {
        return true;
    }
    return a->fd == b->fd && a->writable == b->writable &&
           a->depth == b->depth && a->valid_length == a->length &&
           a->file_offset + a->length == b->file_offset;
}

static int merged_extent(pcow_image *img, uint64_t off, uint64_t max,
                         pcow_extent *ext)
{
    pcow_extent n;
    int ret;

    ret = layer_extent(img, off, max, 0, ext);
    while (ret == 0 && ext->length < max) {
        ret = layer_extent(img, off + ext->length, max - ext->length, 0, &n);
        if (ret < 0 || n.length == 0 || !extent_joins(ext, &n)) {
            break;
        }
        ext->length += n.length;
        ext->valid_length += n.valid_length;
    }
    if (ext->kind == PCOW_EXTENT_HOLE) {
        ext->depth = 0;
        ext->fd = -1;
        ext->valid_length = 0;
        ext->file_offset = 0;
    }
    return ret;
}

int pcow_extent_locked(pcow_image *img, uint64_t offset, uint64_t max_len,
                       pcow_extent *ext)
{
    if (offset >= img->hdr.virtual_size || max_len == 0) {
        return -EINVAL;
    }
    if (max_len > img->hdr.virtual_size - offset) {
        max_len = img->hdr.virtual_size - offset;
    }
    return merged_extent(img, offset, max_len, ext);
}

int pcow_get_extent(pcow_image *img, uint64_t offset, uint64_t max_len,
                    pcow_extent *ext)
{
    int ret;

    pcow_lock(img);
    ret = pcow_extent_locked(img, offset, max_len, ext);
    pcow_unlock(img);
    if (ret == 0 && ext->writable) {
        /* The caller may write through a mapping of it */
        pcow_mark_touched(img);
    }
    return ret;
}

static int pread_zero(int fd, void *buf, uint64_t len, uint64_t off)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            memset(p, 0, len);
            return 0;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Read what an extent describes; async-signal-safe */
static int read_extent(const pcow_extent *ext, uint8_t *buf, uint64_t skip,
                       uint64_t len)
{
    if (ext->kind == PCOW_EXTENT_HOLE) {
        memset(buf, 0, len);
        return 0;
    }
    if (skip + len > ext->valid_length) {
        uint64_t valid = ext->valid_length > skip ?
                         ext->valid_length - skip : 0;

        if (valid > len) {
            valid = len;
        }
        memset(buf + valid, 0, len - valid);
        len = valid;
    }
    return len ? pread_zero(ext->fd, buf, len, ext->file_offset + skip) : 0;
}

/* Read [off, off+len) of @img's view without taking its lock */
static int read_view(pcow_image *img, uint64_t off, uint8_t *buf,
                     uint64_t len)
{
    pcow_extent ext;
    int ret;

    while (len > 0) {
        if (off >= img->hdr.virtual_size) {
            memset(buf, 0, len);
            return 0;
        }
        ret = layer_extent(img, off, len, 0, &ext);
        if (ret < 0) {
            return ret;
        }
        if (ext.length == 0) {
            return -EIO;
        }
        ret = read_extent(&ext, buf, 0, ext.length);
        if (ret < 0) {
            return ret;
        }
        buf += ext.length;
        off += ext.length;
        len -= ext.length;
    }
    return 0;
}

int pcow_read_below(pcow_image *img, uint64_t offset, void *buf,
                    uint64_t len)
{
    uint64_t shown = pcow_below_limit(img, offset, len);

    if (shown < len) {
        memset((uint8_t *)buf + shown, 0, len - shown);
        len = shown;
        if (!len) {
            return 0;
        }
    }
    if (img->backing) {
        return read_view(img->backing, offset, buf, len);
    }
    if (img->backing_raw_fd >= 0) {
        pcow_extent ext;
        uint8_t *p = buf;
        int ret = below_extent(img, offset, len, 0, &ext);

        if (ret < 0) {
            return ret;
        }
        ret = read_extent(&ext, p, 0, ext.length);
        if (ret == 0 && ext.length < len) {
            memset(p + ext.length, 0, len - ext.length);
        }
        return ret;
    }
    memset(buf, 0, len);
    return 0;
}

/* Locked read of the image's own view, for the tools' pread */
int pcow_read_view(pcow_image *img, uint64_t off, void *buf, uint64_t len)
{
    pcow_extent ext;
    uint8_t *p = buf;
    int ret;

    while (len > 0) {
        pcow_lock(img);
        ret = layer_extent(img, off, len, 0, &ext);
        pcow_unlock(img);
        if (ret < 0) {
            return ret;
        }
        if (ext.length == 0) {
            return -EIO;
        }
        ret = read_extent(&ext, p, 0, ext.length);
        if (ret < 0) {
            return ret;
        }
        p += ext.length;
        off += ext.length;
        len -= ext.length;
    }
    return 0;
}
