/*
 * libpcow backing chain: opening bases read-only with shared locks, name
 * resolution, raw bases, loop and depth checks, rebase -u and resize
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-int.h"

int pcow_resolve_backing(const char *dir, const char *name, char *out,
                         size_t outlen)
{
    int n;

    /* Relative names are relative to the naming image's directory */
    if (name[0] == '/' || !dir || !dir[0]) {
        n = snprintf(out, outlen, "%s", name);
    } else {
        n = snprintf(out, outlen, "%s/%s", dir, name);
    }
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

typedef struct BaseHandle {
    pcow_image *image;
    int raw_fd;
    uint64_t raw_size;
    char path[4096];
} BaseHandle;

static int open_base(pcow_image *img, const char *name, uint32_t fmt,
                     PcowChain *chain, BaseHandle *bh, pcow_error *err)
{
    struct stat st;
    unsigned k;
    int ret;

    bh->image = NULL;
    bh->raw_fd = -1;
    bh->raw_size = 0;
    if (pcow_resolve_backing(img->dirname, name, bh->path,
                             sizeof(bh->path)) < 0) {
        return pcow_img_error(img, err, -ENAMETOOLONG, "backing file name "
                              "too long");
    }
    if (img->depth + 1 > PCOW_MAX_CHAIN_DEPTH) {
        return pcow_img_error(img, err, -ELOOP, "backing chain is deeper "
                              "than %d images", PCOW_MAX_CHAIN_DEPTH);
    }
    if (stat(bh->path, &st) < 0) {
        ret = -errno;
        return pcow_img_error(img, err, ret, "cannot open backing file '%s' "
                              "(%s): %s", name, bh->path, strerror(-ret));
    }
    for (k = 0; k < chain->n; k++) {
        if (chain->dev[k] == st.st_dev && chain->ino[k] == st.st_ino) {
            return pcow_img_error(img, err, -ELOOP, "backing chain loop: "
                                  "'%s' is already in the chain", bh->path);
        }
    }
    if (fmt == PCOW_FMT_PCOW) {
        if (!pcow_probe(bh->path)) {
            return pcow_img_error(img, err, -EINVAL, "backing file '%s' is "
                                  "not a pcow image (backing format pcow)",
                                  bh->path);
        }
        return pcow_open_internal(bh->path, PCOW_OPEN_BASE |
                                  (img->flags & PCOW_OPEN_NO_LOCK),
                                  NULL, NULL, chain, img->depth + 1, NULL,
                                  &bh->image, err);
    }
    if (pcow_probe(bh->path)) {
        return pcow_img_error(img, err, -EINVAL, "backing file '%s' is a "
                              "pcow image but the backing format is raw",
                              bh->path);
    }
    bh->raw_fd = open(bh->path, O_RDONLY | O_CLOEXEC);
    if (bh->raw_fd < 0) {
        ret = -errno;
        return pcow_img_error(img, err, ret, "cannot open backing file '%s':"
                              " %s", bh->path, strerror(-ret));
    }
    if (!(img->flags & PCOW_OPEN_NO_LOCK)) {
        struct flock fl = {
            .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0,
            .l_len = 1,
        };

        if (fcntl(bh->raw_fd, F_OFD_SETLK, &fl) < 0) {
            close(bh->raw_fd);
            bh->raw_fd = -1;
            return pcow_set_error(err, -EBUSY, "%s: image is in use by "
                                  "another process (use -U to inspect it "
                                  "read-only)", bh->path);
        }
    }
    if (fstat(bh->raw_fd, &st) < 0) {
        ret = -errno;
        close(bh->raw_fd);
        bh->raw_fd = -1;
        return pcow_img_error(img, err, ret, "cannot stat '%s'", bh->path);
    }
    bh->raw_size = st.st_size;
    return 0;
}

static void install_base(pcow_image *img, BaseHandle *bh)
{
    img->backing = bh->image;
    img->backing_raw_fd = bh->raw_fd;
    img->backing_raw_size = bh->raw_size;
    snprintf(img->backing_path, sizeof(img->backing_path), "%s", bh->path);
}

int pcow_backing_open(pcow_image *img, PcowChain *chain, pcow_error *err)
{
    BaseHandle bh;
    int ret;

    ret = open_base(img, img->hdr.backing_name, img->hdr.backing_format,
                    chain, &bh, err);
    if (ret < 0) {
        return ret;
    }
    install_base(img, &bh);
    return 0;
}

void pcow_backing_close(pcow_image *img)
{
    if (img->backing) {
        pcow_image_free(img->backing);
        img->backing = NULL;
    }
    if (img->backing_raw_fd >= 0) {
        close(img->backing_raw_fd);
        img->backing_raw_fd = -1;
    }
    img->backing_path[0] = '\0';
}

int pcow_set_backing(pcow_image *img, const char *backing_file,
                     pcow_backing_format fmt, pcow_error *err)
{
    PcowHeader h = img->hdr;
    BaseHandle bh = { .image = NULL, .raw_fd = -1 };
    bool open_new = !(img->flags & PCOW_OPEN_NO_BACKING);
    size_t len = backing_file ? strlen(backing_file) : 0;
    int ret;

    if (img->read_only) {
        return pcow_img_error(img, err, -EROFS, "image is read-only");
    }
    if (len > PCOW_MAX_BACKING_NAME || (backing_file && len == 0)) {
        return pcow_img_error(img, err, -ENAMETOOLONG, "backing file name "
                              "must be 1..%d bytes", PCOW_MAX_BACKING_NAME);
    }
    if (fmt > PCOW_BACKING_RAW) {
        return pcow_img_error(img, err, -EINVAL, "invalid backing format");
    }
    if (len && fmt == PCOW_BACKING_NONE) {
        char path[4096];

        if (pcow_resolve_backing(img->dirname, backing_file, path,
                                 sizeof(path)) < 0) {
            return pcow_img_error(img, err, -ENAMETOOLONG, "backing file "
                                  "name too long");
        }
        if (access(path, R_OK) < 0) {
            return pcow_img_error(img, err, -errno, "cannot open backing "
                                  "file '%s': %s", path, strerror(errno));
        }
        fmt = pcow_probe(path) ? PCOW_BACKING_PCOW : PCOW_BACKING_RAW;
    }
    if (len && open_new) {
        PcowChain chain = { .n = 1 };
        struct stat st;

        if (fstat(img->fd, &st) < 0) {
            return pcow_img_error(img, err, -errno, "cannot stat");
        }
        chain.dev[0] = st.st_dev;
        chain.ino[0] = st.st_ino;
        ret = open_base(img, backing_file, fmt, &chain, &bh, err);
        if (ret < 0) {
            return ret;
        }
    }
    h.backing_format = len ? fmt : PCOW_BACKING_NONE;
    h.backing_name_length = len;
    memset(h.backing_name, 0, sizeof(h.backing_name));
    if (len) {
        memcpy(h.backing_name, backing_file, len);
    }
    ret = pcow_header_commit(img, &h, err);       /* P-HEADER-COMMIT */
    if (ret < 0) {
        if (bh.image) {
            pcow_image_free(bh.image);
        }
        if (bh.raw_fd >= 0) {
            close(bh.raw_fd);
        }
        return ret;
    }
    pcow_lock(img);
    pcow_backing_close(img);
    if (len && open_new) {
        install_base(img, &bh);
    }
    pcow_unlock(img);
    return 0;
}

/*
 * Clear the active entries at or beyond @vsize (durably, P-RESIZE-CLEAR)
 * and give back the clusters only they held.
 */
static int drop_beyond(pcow_image *img, uint64_t vsize, pcow_error *err)
{
    uint64_t n;
    int ret = pcow_clear_beyond(img, vsize, &n);

    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot clear the mappings "
                              "beyond %llu bytes: %s",
                              (unsigned long long)vsize, strerror(-ret));
    }
    return n ? pcow_alloc_recover(img, false, err) : 0;
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
    uint64_t new_l1 = 0, new_l1c = 0;
    PcowProblems pr = { 0 };
    pcow_error gerr;
    int ret;

    if (img->read_only) {
        return pcow_img_error(img, err, -EROFS, "image is read-only");
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
    if (new_size > old_size) {
        /*
         * Nothing beyond the old end may show once the commit makes it
         * visible: a shrink interrupted after its commit leaves entries
         * there (open recovery clears them too; this grow must not rely
         * on it).
         */
        ret = drop_beyond(img, old_size, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (new_size > old_size && old_size % cs) {
        /*
         * Whatever lay beyond the old end in its cluster (left there by a
         * shrink) must read 0 once the header commit makes it visible, so
         * zero it durably first.  It is invisible until then; the tables
         * are still the old ones, so this comes before the L1 copy below.
         */
        uint64_t end = pcow_round_up(old_size, cs);

        img->hdr.virtual_size = new_size;
        ret = pcow_zero_range(img, old_size,
                              (end < new_size ? end : new_size) - old_size,
                              err);
        img->hdr.virtual_size = old_size;
        if (ret < 0) {
            return ret;
        }
    }
    if (need > h.l1_size) {
        uint8_t *buf;
        uint64_t chunk, pos, k, bytes = (uint64_t)h.l1_size * 8;

        new_l1c = pcow_div_round_up(need * 8, cs);
        ret = pcow_alloc_clusters(img, new_l1c, &new_l1);
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot allocate the new L1 "
                                  "table: %s", strerror(-ret));
        }
        buf = (uint8_t *)img->l1;
        /* New clusters read as zeros: copy only the non-zero parts */
        for (pos = 0; pos < bytes; pos += chunk) {
            chunk = bytes - pos < 4096 ? bytes - pos : 4096;
            for (k = 0; k < chunk; k++) {
                if (buf[pos + k]) {
                    ret = pcow_persist_pwrite(img, new_l1 + pos, buf + pos,
                                              chunk);
                    if (ret < 0) {
                        return pcow_img_error(img, err, ret, "cannot write "
                                              "the L1 table");
                    }
                    break;
                }
            }
        }
        ret = pcow_persist_barrier(img);        /* P-RESIZE-L1 */
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot write the L1 table");
        }
        h.l1_table_offset = new_l1;
        h.l1_size = need;
    }
    h.virtual_size = new_size;
    ret = pcow_header_commit(img, &h, err);
    if (ret < 0) {
        return ret;
    }
    if (new_l1) {
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
