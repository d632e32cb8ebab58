/*
 * libpcow backing chain: opening bases read-only with shared locks, name
 * resolution, raw bases, loop and depth checks, rebase -u.  A base is
 * opened as an image (image.c), which opens its own base here: the one
 * cycle between modules that stays (image <-> backing).
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

/* Add the file @st describes to @c */
void pcow_chain_push(PcowChain *c, const struct stat *st)
{
    c->dev[c->n] = st->st_dev;
    c->ino[c->n] = st->st_ino;
    c->n++;
}

/* A chain that starts with @img itself, for checking a base of it */
int pcow_chain_start(pcow_image *img, PcowChain *c, pcow_error *err)
{
    struct stat st;

    c->n = 0;
    if (fstat(img->fd, &st) < 0) {
        return pcow_img_error(img, err, -errno, "cannot stat: %s",
                              strerror(errno));
    }
    pcow_chain_push(c, &st);
    return 0;
}

/*
 * Check one level of a chain: @path exists as a file of the right kind in
 * format *@fmt (NONE: probed and set), and is not in @chain, to which it is
 * then added.  @chain->dev/ino[@self] is @owner's own file; @parent, if not
 * NULL, is the image that names @path.  Returns the open fd.
 */
static int check_level(const char *owner, const char *name,
                       const char *path, const char *parent, unsigned self,
                       uint32_t *fmt, PcowChain *chain, uint64_t *size,
                       pcow_error *err)
{
    struct stat st;
    char why[256];
    unsigned k;
    bool magic;
    int fd;

    /* A raw base may be a block device; an image never is */
    fd = pcow_open_data(path, O_RDONLY, *fmt != PCOW_FMT_PCOW, &st, size,
                        why, sizeof(why));
    if (fd < 0) {
        return pcow_set_file_error(err, fd, owner, "cannot open backing file "
                                   "'%s' (%s): %s", name, path, why);
    }
    for (k = 0; k < chain->n; k++) {
        if (chain->dev[k] == st.st_dev && chain->ino[k] == st.st_ino) {
            close(fd);
            return pcow_set_file_error(err, -ELOOP, owner, "backing chain "
                                       "loop: '%s'%s%s%s is %s", path,
                                       parent ? ", the base of '" : "",
                                       parent ? parent : "",
                                       parent ? "'," : "",
                                       k == self ? "the image itself" :
                                       "already in the chain");
        }
    }
    magic = pcow_probe_fd(fd);
    if (*fmt == PCOW_FMT_NONE) {
        *fmt = magic ? PCOW_FMT_PCOW : PCOW_FMT_RAW;
    }
    if (*fmt == PCOW_FMT_PCOW && !magic) {
        close(fd);
        return pcow_set_file_error(err, -EINVAL, owner, "backing file '%s' is "
                                   "not a pcow image (backing format pcow)",
                                   path);
    }
    if (*fmt == PCOW_FMT_RAW && magic) {
        close(fd);
        return pcow_set_file_error(err, -EINVAL, owner, "backing file '%s' is "
                                   "a pcow image but the backing format is raw",
                                   path);
    }
    if (*fmt == PCOW_FMT_PCOW && S_ISBLK(st.st_mode)) {
        close(fd);
        return pcow_set_file_error(err, -EINVAL, owner, "backing file '%s' is "
                                   "a block device: only a raw base can be one",
                                   path);
    }
    chain->dev[chain->n] = st.st_dev;
    chain->ino[chain->n] = st.st_ino;
    chain->n++;
    return fd;
}

/*
 * Check @name (relative to @dir) as a base in format *@fmt of @owner, whose
 * chain so far is @chain: the base itself fully (a missing one only if
 * @missing_ok), then its chain as far as it exists and opens, for loops
 * only: those are found by device and inode, without any lock, so a loop
 * is never mistaken for a lock conflict.  *@size: the base's size.
 */
int pcow_check_base(const char *owner, const char *dir, const char *name,
                    uint32_t *fmt, bool missing_ok, PcowChain *chain,
                    uint64_t *size, pcow_error *err)
{
    char path[4096], next_dir[4096], next_name[PCOW_MAX_BACKING_NAME + 1];
    char parent[4096] = "";
    uint32_t f = *fmt;
    uint64_t sz = 0;
    unsigned level;
    int fd;

    if (pcow_resolve_backing(dir, name, path, sizeof(path)) < 0) {
        return pcow_set_file_error(err, -ENAMETOOLONG, owner, "backing file "
                                   "name too long");
    }
    for (level = 0; chain->n < PCOW_MAX_CHAIN_DEPTH + 2; level++) {
        pcow_image *base;
        pcow_error lerr;
        int ret;

        fd = check_level(owner, name, path, level ? parent : NULL, 0, &f,
                         chain, &sz, &lerr);
        if (fd == -ELOOP || (fd < 0 && level == 0 &&
                             !(missing_ok && fd == -ENOENT))) {
            if (err) {
                *err = lerr;
            }
            return fd;
        }
        if (level == 0) {
            *fmt = f;
            if (size) {
                *size = sz;
            }
        }
        if (fd < 0) {
            return 0;       /* missing (or unreadable) below: nothing more */
        }
        close(fd);
        if (f == PCOW_FMT_RAW) {
            return 0;
        }
        ret = pcow_open_internal(path, PCOW_OPEN_NO_LOCK |
                                 PCOW_OPEN_NO_BACKING | PCOW_OPEN_BASE,
                                 NULL, NULL, 0, NULL, 1, NULL, &base,
                                 level ? NULL : err);
        if (ret < 0) {
            return level == 0 ? ret : 0;
        }
        if (level == 0 && size) {
            *size = base->hdr.virtual_size;
        }
        f = base->hdr.backing_format;
        snprintf(next_dir, sizeof(next_dir), "%s", base->dirname);
        memcpy(next_name, base->hdr.backing_name,
               base->hdr.backing_name_length);
        next_name[base->hdr.backing_name_length] = '\0';
        pcow_image_free(base);
        snprintf(parent, sizeof(parent), "%s", path);
        if (f == PCOW_FMT_NONE ||
            pcow_resolve_backing(next_dir, next_name, path,
                                 sizeof(path)) < 0) {
            return 0;
        }
        name = next_name;
    }
    return 0;
}

int pcow_check_backing(pcow_image *img, const char *backing_file,
                       pcow_backing_format fmt, pcow_error *err)
{
    PcowChain chain;
    uint32_t f = fmt;
    int ret;

    if (!img || !backing_file || !*backing_file || fmt > PCOW_BACKING_RAW) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    ret = pcow_chain_start(img, &chain, err);
    if (ret < 0) {
        return ret;
    }
    return pcow_check_base(img->filename, img->dirname, backing_file, &f,
                           false, &chain, NULL, err);
}

typedef struct BaseHandle {
    pcow_image *image;
    int raw_fd;
    uint64_t raw_size;
    char path[4096];
} BaseHandle;

static int open_base(pcow_image *img, const char *name, uint32_t fmt,
                     uint64_t snap_id, PcowChain *chain, BaseHandle *bh,
                     pcow_error *err)
{
    int fd, ret;

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
    /* @img itself is the last file recorded in @chain */
    fd = check_level(img->filename, name, bh->path, NULL, chain->n - 1, &fmt,
                     chain, &bh->raw_size, err);
    if (fd < 0) {
        return fd;
    }
    if (fmt == PCOW_FMT_PCOW) {
        close(fd);
        /* It records itself in @chain again: take this level back out */
        chain->n--;
        ret = pcow_open_internal(bh->path, PCOW_OPEN_BASE |
                                 (img->flags & PCOW_OPEN_NO_LOCK),
                                 NULL, NULL, 0, chain, img->depth + 1, NULL,
                                 &bh->image, err);
        if (ret == 0 && snap_id) {
            /* A clone: the base shows that snapshot, not its active layer */
            ret = pcow_snapshot_view(bh->image, snap_id, img->filename, err);
            if (ret < 0) {
                pcow_image_free(bh->image);
                bh->image = NULL;
            }
        }
        return ret;
    }
    bh->raw_fd = fd;
    if (!(img->flags & PCOW_OPEN_NO_LOCK)) {
        struct flock fl = {
            .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0,
            .l_len = 1,
        };

        if (fcntl(bh->raw_fd, F_OFD_SETLK, &fl) < 0) {
            close(bh->raw_fd);
            bh->raw_fd = -1;
            /* about the base: not the image the caller gave */
            return pcow_set_error(err, -EBUSY, "%s: image is in use by "
                                  "another process", bh->path);
        }
    }
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
                    img->hdr.backing_snapshot_id, chain, &bh, err);
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

int pcow_set_backing_limit(pcow_image *img, uint64_t limit, pcow_error *err)
{
    PcowHeader h = img->hdr;

    if (pcow_writable(img) < 0) {
        return pcow_write_check(img, err);
    }
    if (limit % 4096 || limit > h.virtual_size) {
        return pcow_img_error(img, err, -EINVAL, "invalid backing limit "
                              "%llu", (unsigned long long)limit);
    }
    if (limit == h.backing_limit) {
        return 0;
    }
    pcow_header_set_limit(img, &h, limit);
    return pcow_header_commit(img, &h, err);   /* P-HEADER-COMMIT */
}

int pcow_can_commit_header(pcow_image *img, pcow_error *err)
{
    if (pcow_writable(img) < 0) {
        return pcow_write_check(img, err);
    }
    return pcow_header_can_commit(img, err);
}

int pcow_set_backing(pcow_image *img, const char *backing_file,
                     pcow_backing_format fmt, pcow_error *err)
{
    PcowHeader h = img->hdr;
    BaseHandle bh = { .image = NULL, .raw_fd = -1 };
    bool open_new = !(img->flags & PCOW_OPEN_NO_BACKING);
    size_t len = backing_file ? strlen(backing_file) : 0;
    int ret;

    if (pcow_writable(img) < 0) {
        return pcow_write_check(img, err);
    }
    if (len > PCOW_MAX_BACKING_NAME || (backing_file && len == 0)) {
        return pcow_img_error(img, err, -ENAMETOOLONG, "backing file name "
                              "must be 1..%d bytes", PCOW_MAX_BACKING_NAME);
    }
    if (fmt > PCOW_BACKING_RAW) {
        return pcow_img_error(img, err, -EINVAL, "invalid backing format");
    }
    if (len) {
        PcowChain chain;
        uint32_t f = fmt;

        ret = pcow_chain_start(img, &chain, err);
        if (ret < 0) {
            return ret;
        }
        /* Unsafe (NO_BACKING): a named format may refer to a future file */
        ret = pcow_check_base(img->filename, img->dirname, backing_file, &f,
                              !open_new && fmt != PCOW_BACKING_NONE, &chain,
                              NULL, err);
        if (ret < 0) {
            return ret;
        }
        fmt = f;
        if (open_new) {
            chain.n = 1;
            ret = open_base(img, backing_file, fmt, 0, &chain, &bh, err);
            if (ret < 0) {
                return ret;
            }
        }
    }
    h.backing_format = len ? fmt : PCOW_BACKING_NONE;
    h.backing_name_length = len;
    /* A new base reference is to the base's active layer */
    h.backing_snapshot_id = 0;
    h.incompatible_features &= ~PCOW_INCOMPAT_BACKING_SNAPSHOT;
    if (!len) {
        /* No base: nothing to hide any more */
        pcow_header_set_limit(img, &h, 0);
    }
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
 * The virtual size of snapshot @id of the pcow image @name (relative to
 * @dir), the base of @owner: read without a lock and without its chain
 * (the caller holds the lock that matters).  -ENOENT if it has none.
 */
int pcow_base_snapshot_size(const char *owner, const char *dir,
                            const char *name, uint64_t id, uint64_t *size,
                            pcow_error *err)
{
    char path[4096];
    pcow_image *base;
    uint32_t k;
    int ret;

    if (pcow_resolve_backing(dir, name, path, sizeof(path)) < 0) {
        return pcow_set_file_error(err, -ENAMETOOLONG, owner, "backing file "
                                   "name too long");
    }
    ret = pcow_open_internal(path, PCOW_OPEN_NO_LOCK | PCOW_OPEN_NO_BACKING |
                             PCOW_OPEN_BASE, NULL, NULL, 0, NULL, 1, NULL,
                             &base, err);
    if (ret < 0) {
        return ret;
    }
    ret = pcow_set_file_error(err, -ENOENT, owner, "base %s has no snapshot "
                              "with id %llu", path, (unsigned long long)id);
    for (k = 0; k < base->hdr.nb_snapshots; k++) {
        if (base->snaps[k].id == id) {
            *size = base->snaps[k].virtual_size;
            pcow_error_clear(err);
            ret = 0;
        }
    }
    pcow_image_free(base);
    return ret;
}
