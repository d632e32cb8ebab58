/*
 * libpcow image: create, open (validation, locking, recovery), close and
 * info -- the image's life, cf. qcow2.c's qcow2_do_open/qcow2_close.
 * Opening a base is backing.c's, which opens it as an image: the one
 * cycle between modules that stays (image <-> backing).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pcow-int.h"

/* Largest virtual size with clusters of 1 << @cbits */
static uint64_t max_virtual_size(uint32_t cbits)
{
    uint64_t by_l1 = (uint64_t)PCOW_MAX_L1_SIZE << (cbits + cbits - 5);

    return by_l1 < PCOW_MAX_VIRTUAL_SIZE ? by_l1 : PCOW_MAX_VIRTUAL_SIZE;
}

int pcow_geometry_for(uint64_t virtual_size, uint32_t cluster_size,
                      uint32_t cow_unit, pcow_geometry *g, pcow_error *err)
{
    uint32_t cs = cluster_size ? cluster_size :
                  1u << PCOW_DEFAULT_CLUSTER_BITS;
    uint32_t cu = cow_unit;
    uint32_t cbits;
    uint64_t max;

    if (cs & (cs - 1) || cs < (1u << PCOW_MIN_CLUSTER_BITS) ||
        cs > (1u << PCOW_MAX_CLUSTER_BITS)) {
        return pcow_set_error(err, -EINVAL, "invalid cluster size %u (must "
                              "be a power of two, 4K..2M)", cs);
    }
    cbits = __builtin_ctz(cs);
    if (!cu) {
        cu = cs / PCOW_MAX_COW_UNITS;
        if (cu < (1u << PCOW_MIN_COW_UNIT_BITS)) {
            cu = 1u << PCOW_MIN_COW_UNIT_BITS;
        }
    }
    if (cu & (cu - 1) || cu < (1u << PCOW_MIN_COW_UNIT_BITS) || cu > cs ||
        cs / cu > PCOW_MAX_COW_UNITS) {
        return pcow_set_error(err, -EINVAL, "invalid COW unit %u for "
                              "cluster size %u (must be a power of two, at "
                              "least 4K and 1/%d of the cluster)", cu, cs,
                              PCOW_MAX_COW_UNITS);
    }
    if (virtual_size == 0 || virtual_size % 4096) {
        return pcow_set_error(err, -EINVAL, "invalid virtual size %llu "
                              "(must be a non-zero multiple of 4096)",
                              (unsigned long long)virtual_size);
    }
    max = max_virtual_size(cbits);
    if (virtual_size > max_virtual_size(PCOW_MAX_CLUSTER_BITS)) {
        return pcow_set_error(err, -EFBIG, "virtual size %llu too large: "
                              "the format's limit is %llu",
                              (unsigned long long)virtual_size,
                              (unsigned long long)
                              max_virtual_size(PCOW_MAX_CLUSTER_BITS));
    }
    if (virtual_size > max) {
        return pcow_set_error(err, -EFBIG, "virtual size %llu too large for "
                              "cluster size %u (at most %llu; larger "
                              "clusters allow more)",
                              (unsigned long long)virtual_size, cs,
                              (unsigned long long)max);
    }
    if (g) {
        g->virtual_size = virtual_size;
        g->cluster_size = cs;
        g->cow_unit = cu;
        g->clusters = pcow_div_round_up(virtual_size, cs);
        g->l2_entries = cs / PCOW_L2_ENTRY_SIZE;
        g->l1_size = pcow_l1_size_for(virtual_size, cbits);
        g->empty_size = cs + pcow_round_up(g->l1_size * 8, cs);
        g->max_virtual_size = max;
    }
    return 0;
}

static int create_geometry(const char *path, uint64_t vsize,
                           const pcow_create_opts *opts, pcow_geometry *g,
                           pcow_error *err)
{
    pcow_error gerr;
    int ret = pcow_geometry_for(vsize, opts->cluster_size, opts->cow_unit, g,
                                &gerr);

    return ret < 0 ? pcow_set_file_error(err, ret, path, "%s", gerr.msg) : 0;
}

/*
 * Check the base of a new image, probe its format if not given and get its
 * size.  The new file already exists (@fd), so a chain that leads back to
 * its name is found as a loop.
 */
static int check_create_base(const char *path, int fd, const char *name,
                             pcow_backing_format *fmt, uint64_t *size,
                             pcow_error *err)
{
    PcowChain chain = { .n = 0 };
    char *tmp = strdup(path);
    uint32_t f = *fmt;
    struct stat st;
    int ret;

    if (!tmp) {
        return pcow_set_file_error(err, -ENOMEM, path, "out of memory");
    }
    if (fstat(fd, &st) < 0) {
        ret = -errno;
        free(tmp);
        return pcow_set_file_error(err, ret, path, "cannot stat: %s",
                                   strerror(-ret));
    }
    pcow_chain_push(&chain, &st);
    ret = pcow_check_base(path, dirname(tmp), name, &f, false, &chain, size,
                          err);
    free(tmp);
    *fmt = f;
    return ret;
}

/* A clone's base: a pcow image that holds the snapshot; its size */
static int create_snapshot_base(const char *path,
                                const pcow_create_opts *opts,
                                pcow_backing_format fmt, uint64_t *size,
                                pcow_error *err)
{
    char *tmp;
    int ret;

    if (fmt != PCOW_BACKING_PCOW) {
        return pcow_set_file_error(err, -EINVAL, path, "a backing snapshot "
                                   "needs a pcow backing file");
    }
    tmp = strdup(path);
    if (!tmp) {
        return pcow_set_file_error(err, -ENOMEM, path, "out of memory");
    }
    ret = pcow_base_snapshot_size(path, dirname(tmp), opts->backing_file,
                                  opts->backing_snapshot_id, size, err);
    free(tmp);
    return ret;
}

/* P-CREATE-BODY: cluster 0 and the (sparse) L1 table */
static int write_new_image(int fd, const char *path,
                           const pcow_create_opts *opts,
                           const pcow_geometry *g, pcow_backing_format fmt,
                           pcow_error *err)
{
    size_t name_len = fmt ? strlen(opts->backing_file) : 0;
    pcow_image tmp;
    PcowHeader h;
    uint8_t *c0;
    int ret;

    memset(&h, 0, sizeof(h));
    h.version = PCOW_VERSION;
    h.generation = 1;
    h.cluster_bits = __builtin_ctz(g->cluster_size);
    h.cow_unit_bits = __builtin_ctz(g->cow_unit);
    h.virtual_size = g->virtual_size;
    h.l1_table_offset = g->cluster_size;
    h.l1_size = g->l1_size;
    h.next_snapshot_id = 1;
    h.backing_format = fmt;
    h.backing_name_length = name_len;
    if (name_len && opts->backing_snapshot_id) {
        h.backing_snapshot_id = opts->backing_snapshot_id;
        h.incompatible_features |= PCOW_INCOMPAT_BACKING_SNAPSHOT;
    }
    if (name_len) {
        memcpy(h.backing_name, opts->backing_file, name_len);
    }

    c0 = calloc(1, 4096);
    if (!c0) {
        return pcow_set_file_error(err, -ENOMEM, path, "out of memory");
    }
    pcow_header_encode(&h, c0 + PCOW_SLOT_A);
    pcow_st64(c0 + PCOW_HOT_FRONTIER, g->empty_size);
    /* A fresh stamp: no saved state can belong to this image yet */
    pcow_st64(c0 + PCOW_HOT_STAMP, pcow_new_token());
    memset(&tmp, 0, sizeof(tmp));
    tmp.fd = fd;
    tmp.hook = opts->hook;
    tmp.hook_opaque = opts->hook_opaque;
    ret = pcow_persist_pwrite(&tmp, 0, c0, 4096);
    if (ret == 0) {
        ret = pcow_persist_truncate(&tmp, g->empty_size);
    }
    if (ret == 0) {
        ret = pcow_persist_barrier(&tmp);
    }
    free(c0);
    if (ret < 0) {
        return pcow_set_file_error(err, ret, path, "cannot write: %s",
                                   strerror(-ret));
    }
    return 0;
}

int pcow_create(const char *path, const pcow_create_opts *opts,
                pcow_error *err)
{
    pcow_backing_format fmt = PCOW_BACKING_NONE;
    uint64_t vsize, bsize = 0;
    bool size_from_base;
    pcow_geometry g;
    int fd, ret;

    if (!path || !opts) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    /* The geometry alone first (the size may still come from the base) */
    ret = create_geometry(path, 4096, opts, &g, err);
    if (ret < 0) {
        return ret;
    }
    vsize = opts->virtual_size;
    if (opts->backing_file) {
        size_t name_len = strlen(opts->backing_file);

        if (name_len == 0 || name_len > PCOW_MAX_BACKING_NAME) {
            return pcow_set_file_error(err, -ENAMETOOLONG, path, "backing file "
                                       "name must be 1..%d bytes",
                                       PCOW_MAX_BACKING_NAME);
        }
        fmt = opts->backing_format;
        if (fmt > PCOW_BACKING_RAW) {
            return pcow_set_file_error(err, -EINVAL, path,
                                       "invalid backing format");
        }
    } else if (opts->backing_format != PCOW_BACKING_NONE) {
        return pcow_set_file_error(err, -EINVAL, path, "backing format given "
                                   "without a backing file");
    }
    if (opts->backing_snapshot_id &&
        (!opts->backing_file || fmt == PCOW_BACKING_RAW)) {
        return pcow_set_file_error(err, -EINVAL, path, "a backing snapshot "
                                   "needs a pcow backing file");
    }
    size_from_base = vsize == 0 && opts->size_from_backing &&
                     opts->backing_file;
    if (!size_from_base) {
        ret = create_geometry(path, vsize, opts, &g, err);
        if (ret < 0) {
            return ret;
        }
    }

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        ret = -errno;
        return pcow_set_file_error(err, ret, path, "cannot create: %s",
                                   strerror(-ret));
    }
    if (opts->backing_file) {
        ret = check_create_base(path, fd, opts->backing_file, &fmt, &bsize,
                                err);
        if (ret == 0 && opts->backing_snapshot_id) {
            ret = create_snapshot_base(path, opts, fmt, &bsize, err);
        }
        if (ret == 0 && size_from_base) {
            ret = create_geometry(path, pcow_round_up(bsize, 4096), opts, &g,
                                  err);
        }
    }
    if (ret == 0) {
        ret = write_new_image(fd, path, opts, &g, fmt, err);
    }
    close(fd);
    if (ret < 0) {
        unlink(path);
    }
    return ret;
}

int pcow_take_lock(pcow_image *img, pcow_error *err)
{
    struct flock fl = {
        .l_type = img->read_only ? F_RDLCK : F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 1,
    };

    if (img->flags & PCOW_OPEN_NO_LOCK) {
        return 0;
    }
    if (fcntl(img->fd, F_OFD_SETLK, &fl) < 0) {
        if (errno == EAGAIN || errno == EACCES) {
            return pcow_set_file_error(err, -EBUSY, img->filename, "image is "
                                       "in use by another process");
        }
        return pcow_img_error(img, err, -errno, "cannot lock: %s",
                              strerror(errno));
    }
    return 0;
}

void pcow_drop_lock(pcow_image *img)
{
    struct flock fl = {
        .l_type = F_UNLCK,
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 1,
    };

    if (!(img->flags & PCOW_OPEN_NO_LOCK)) {
        fcntl(img->fd, F_OFD_SETLK, &fl);
    }
}

/*
 * Does another open of the image (any process, or another open in this
 * one) hold its lock?  Asked on this open's own descriptor: its own lock
 * never conflicts with the probe.  Traditional (per-process) locks on the
 * lock byte count too.
 */
int pcow_lock_held_elsewhere(pcow_image *img)
{
    struct flock fl = {
        .l_type = F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 1,
    };

    if (fcntl(img->fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

/*
 * The most an image of this geometry can use: cluster 0, the snapshot
 * table, and per layer (active and each snapshot) its L1 table, every L2
 * table, every data cluster and, with the VM state feature, the largest
 * VM state; twice that, plus the reserve ring, covers
 * what is in flight.  Saturates at UINT64_MAX.
 */
static uint64_t frontier_reach(pcow_image *img)
{
    uint64_t cs = img->cluster_size, layer, n;
    uint64_t vcl = pcow_div_round_up(img->hdr.virtual_size, cs);
    uint64_t l1cl = pcow_div_round_up((uint64_t)img->hdr.l1_size * 8, cs);

    layer = vcl + img->hdr.l1_size + l1cl;
    /* Snapshots are not read yet: allow each the largest VM state */
    if (img->hdr.incompatible_features & PCOW_INCOMPAT_VM_STATE) {
        layer += PCOW_MAX_VM_STATE >> img->cluster_bits;
    }
    if (__builtin_mul_overflow(layer, 1 + (uint64_t)img->hdr.nb_snapshots,
                               &n) ||
        __builtin_add_overflow(n, pcow_div_round_up(img->hdr.snapshots_size,
                                                    cs) + 1, &n) ||
        __builtin_mul_overflow(n, 2, &n) ||
        __builtin_add_overflow(n, PCOW_RING_CAP, &n) ||
        __builtin_mul_overflow(n, cs, &n)) {
        return UINT64_MAX;
    }
    return n;
}

static int check_frontier(pcow_image *img, uint64_t file_size,
                          pcow_error *err)
{
    uint64_t f = img->frontier_ro;
    uint64_t l1_end = img->hdr.l1_table_offset +
                      pcow_round_up((uint64_t)img->hdr.l1_size * 8,
                                    img->cluster_size);
    bool check = img->flags & PCOW_OPEN_CHECK;

    /* Check reports a malformed frontier; check -r all rewrites it */
    if ((f % img->cluster_size || f < img->cluster_size) && !check) {
        return pcow_img_error(img, err, -EINVAL, "frontier 0x%llx is not a "
                              "multiple of the cluster size",
                              (unsigned long long)f);
    }
    /*
     * Every cluster below the frontier lies in the file: a shorter file
     * lost data (a cut copy).  Only check reads it (read-only, to report
     * it) or, for check -r all, extends it; a writer would extend it and
     * make the loss look like zeros.
     */
    if (f > file_size && !(check && (img->read_only ||
                                     (img->flags & PCOW_OPEN_FIX_SHORT)))) {
        return pcow_img_error(img, err, -EINVAL, "file truncated: its size "
                              "0x%llx is below the frontier 0x%llx",
                              (unsigned long long)file_size,
                              (unsigned long long)f);
    }
    if (check) {
        img->check_end = file_size & ~(img->cluster_size - 1);
        /* Past the file and past any use: garbage, not a cut copy */
        img->frontier_wild = f > file_size && f > frontier_reach(img);
    }
    if (img->hdr.l1_table_offset == 0 ||
        img->hdr.l1_table_offset % img->cluster_size ||
        l1_end > pcow_valid_end(img) || l1_end < img->hdr.l1_table_offset) {
        return pcow_img_error(img, err, -EINVAL, "L1 table at 0x%llx (%u "
                              "entries) lies outside the image (frontier "
                              "0x%llx)",
                              (unsigned long long)img->hdr.l1_table_offset,
                              img->hdr.l1_size, (unsigned long long)f);
    }
    return 0;
}

static char *dup_dirname(const char *path)
{
    char *tmp = strdup(path);
    char *d;

    if (!tmp) {
        return NULL;
    }
    d = strdup(dirname(tmp));
    free(tmp);
    return d;
}

void pcow_image_free(pcow_image *img)
{
    if (!img) {
        return;
    }
    pcow_backing_close(img);
    pcow_tables_unload(img);
    pcow_alloc_fini(img);
    pcow_persist_fini(img);
    free(img->snaps);
    if (img->fd >= 0) {
        close(img->fd);     /* also drops the OFD lock */
    }
    free(img->filename);
    free(img->dirname);
    free(img);
}

/*
 * A writer session starts: its token is stored as in_use (and becomes the
 * stamp when the session closes cleanly or hands the image over).
 */
int pcow_start_session(pcow_image *img, pcow_error *err)
{
    int ret;

    /* P-OPEN-INUSE */
    img->in_use_token = pcow_new_token();
    img->keep_stamp = false;
    ret = pcow_persist_hot_store(img, PCOW_HOT_IN_USE, img->in_use_token);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot mark image in use: %s",
                              strerror(-ret));
    }
    return 0;
}

static int finish_rdwr_open(pcow_image *img, const PcowWalk *w,
                            pcow_error *err)
{
    int ret;

    ret = pcow_alloc_init(img, w);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot set up allocation: %s",
                              strerror(-ret));
    }
    if (!(img->flags & PCOW_OPEN_NO_RECOVER)) {
        /* P-OPEN-CLEAR: what a shrink cut by a crash left beyond the end */
        ret = pcow_reclaim_beyond(img, img->hdr.virtual_size, img->was_dirty,
                                  true, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (img->hdr.autoclear_features) {
        ret = pcow_header_commit(img, &img->hdr, err);
        if (ret < 0) {
            return ret;
        }
    }
    /* Recovery changed nothing a reader sees; a crashed writer may have */
    img->touched = img->was_dirty;
    return pcow_start_session(img, err);
}

/*
 * The first problem a table walk found, as the error of an open: the
 * image is corrupt unless the walk itself failed (memory, I/O).
 */
static int problems_error(const char *path, const PcowProblems *pr, int ret,
                          pcow_error *err)
{
    pcow_error_kind k = pcow_error_kind_of(ret);

    pcow_set_file_error(err, ret, path, "%s", pr->first);
    if (k == PCOW_ERR_INVALID || k == PCOW_ERR_LIMIT) {
        pcow_error_mark(err, PCOW_ERR_CORRUPT, ret);
    }
    return ret;
}

/* A new image structure for @path; nothing opened yet.  NULL: no memory */
static pcow_image *image_new(const char *path, unsigned flags,
                             pcow_persist_hook hook, void *opaque,
                             unsigned depth)
{
    pcow_image *img = calloc(1, sizeof(*img));

    if (!img) {
        return NULL;
    }
    img->fd = -1;
    img->backing_raw_fd = -1;
    img->flags = flags;
    img->read_only = !(flags & PCOW_OPEN_RDWR);
    img->hook = hook;
    img->hook_opaque = opaque;
    img->depth = depth;
    img->filename = strdup(path);
    img->dirname = dup_dirname(path);
    if (!img->filename || !img->dirname) {
        pcow_image_free(img);
        return NULL;
    }
    return img;
}

/* Open the file (joining @chain), lock it, read and check the header */
static int open_file(pcow_image *img, PcowChain *chain, struct stat *st,
                     pcow_error *err)
{
    uint64_t size;
    char why[256];
    int ret;

    /* An image is a regular file: it grows, and holes are punched in it */
    img->fd = pcow_open_data(img->filename,
                             img->read_only ? O_RDONLY : O_RDWR, false, st,
                             &size, why, sizeof(why));
    if (img->fd < 0) {
        return pcow_set_file_error(err, img->fd, img->filename,
                                   "cannot open: %s", why);
    }
    if (chain) {
        pcow_chain_push(chain, st);
    }
    ret = pcow_take_lock(img, err);
    if (ret == 0) {
        ret = pcow_header_read(img, st->st_size, err);
    }
    if (ret == 0) {
        ret = pcow_error_mark(err, PCOW_ERR_CORRUPT,
                              check_frontier(img, st->st_size, err));
    }
    return ret;
}

/*
 * PCOW_OPEN_EXPECT_STAMP: the image must be exactly as a saved state left
 * it -- closed cleanly with that stamp.  Checked before anything is
 * written, so a refused open leaves the file as it was.
 */
static int check_expected(pcow_image *img, uint64_t expect, pcow_error *err)
{
    if (!(img->flags & PCOW_OPEN_EXPECT_STAMP)) {
        return 0;
    }
    if (!img->open_clean) {
        return pcow_img_error(img, err, -ESTALE, "image was not closed "
                              "cleanly since this state was saved");
    }
    if (img->open_stamp != expect) {
        return pcow_img_error(img, err, -ESTALE, "image changed since this "
                              "state was saved");
    }
    return 0;
}

/*
 * Read-write: map the hot line, give a short file (check -r all) its lost
 * tail back as zeros, and allocate the blocks open maps shared.
 */
static int prepare_rdwr(pcow_image *img, const struct stat *st,
                        pcow_error *err)
{
    int ret = pcow_persist_init(img);

    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot map header: %s",
                              strerror(-ret));
    }
    if ((uint64_t)st->st_size < img->frontier_ro && !img->frontier_wild) {
        ret = pcow_persist_truncate(img, img->frontier_ro);
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot extend: %s",
                                  strerror(-ret));
        }
        img->short_size = st->st_size;
    }
    /*
     * P-OPEN-TABLES.  Cluster 0's first page (hot line) and the L1
     * table are mapped shared, and a store on a hole needs a block:
     * SIGBUS on a full disk.  The L1 table is often sparse; the first
     * page can hold a hole only on file systems with blocks smaller
     * than a page.  Allocate both now, when running out of space is
     * still a clean error (the L2 tables: pcow_tables_load).
     */
    ret = pcow_persist_allocate(img, 0, PCOW_HOT_OFFSET + PCOW_HOT_SIZE);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot allocate the header: "
                              "%s", strerror(-ret));
    }
    ret = pcow_persist_allocate(img, img->hdr.l1_table_offset,
                                pcow_round_up((uint64_t)img->hdr.l1_size * 8,
                                              img->cluster_size));
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot allocate the L1 table: "
                              "%s", strerror(-ret));
    }
    return 0;
}

/* Snapshot table, active tables, and the reference walk into @w */
static int load_tables(pcow_image *img, PcowProblems *pr, PcowWalk *w,
                       pcow_error *err)
{
    int ret = pcow_snapshots_load(img, pr);

    if (ret == 0) {
        ret = pcow_tables_load(img, pr);
    }
    if (ret == 0) {
        ret = pcow_walk(img, w, pr, false);
    }
    if (ret < 0) {
        return problems_error(img->filename, pr, ret, err);
    }
    if (pr->count && !pr->collect) {
        return problems_error(img->filename, pr, pr->first_code, err);
    }
    return 0;
}

/* The base chain; @chain already holds this image, or is NULL (a top) */
static int open_chain(pcow_image *img, PcowChain *chain,
                      const struct stat *st, pcow_error *err)
{
    PcowChain top = { .n = 0 };

    if (!chain) {
        pcow_chain_push(&top, st);
        chain = &top;
    }
    return pcow_backing_open(img, chain, err);
}

int pcow_open_internal(const char *path, unsigned flags,
                       pcow_persist_hook hook, void *opaque,
                       uint64_t expect_stamp, PcowChain *chain,
                       unsigned depth,
                       PcowProblems *pr, pcow_image **out,
                       pcow_error *err)
{
    PcowProblems local = { 0 };
    PcowWalk w = { 0 };
    pcow_image *img;
    struct stat st;
    int ret;

    *out = NULL;
    if (!pr) {
        pr = &local;
    }
    img = image_new(path, flags, hook, opaque, depth);
    if (!img) {
        ret = pcow_set_file_error(err, -ENOMEM, path, "out of memory");
        /* A base's open: its messages are not about the caller's image */
        return depth ? pcow_error_other_file(err, ret) : ret;
    }
    ret = open_file(img, chain, &st, err);
    if (ret == 0) {
        ret = check_expected(img, expect_stamp, err);
    }
    if (ret == 0 && !img->read_only) {
        ret = prepare_rdwr(img, &st, err);
    }
    if (ret == 0) {
        ret = load_tables(img, pr, &w, err);
    }
    if (ret == 0 && !(flags & PCOW_OPEN_NO_BACKING) &&
        img->hdr.backing_format) {
        ret = open_chain(img, chain, &st, err);
    }
    if (ret == 0 && !img->read_only) {
        /* Check mode found corruption: leave fixing to check */
        ret = pr->count ? pcow_alloc_init(img, &w)
                        : finish_rdwr_open(img, &w, err);
    }
    pcow_walk_free(&w);
    if (ret < 0) {
        pcow_image_free(img);
        /* A base's open: its messages are not about the caller's image */
        return depth ? pcow_error_other_file(err, ret) : ret;
    }
    *out = img;
    return 0;
}

int pcow_open(const char *path, const pcow_open_opts *opts,
              pcow_image **out, pcow_error *err)
{
    unsigned flags = opts ? opts->flags : 0;

    pcow_error_clear(err);
    if (!path || !out) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    flags &= PCOW_OPEN_RDWR | PCOW_OPEN_NO_LOCK | PCOW_OPEN_NO_BACKING |
             PCOW_OPEN_NO_RECOVER | PCOW_OPEN_EXPECT_STAMP;
    return pcow_open_internal(path, flags, opts ? opts->hook : NULL,
                              opts ? opts->hook_opaque : NULL,
                              opts ? opts->expect_stamp : 0, NULL, 0,
                              NULL, out, err);
}

/* See pcow.h, State stamps */
uint64_t pcow_stamp_to_leave(pcow_image *img)
{
    if (__atomic_load_n(&img->released, __ATOMIC_ACQUIRE)) {
        return img->left_stamp;
    }
    /* An image of unknown state (0) gets one at its first clean close */
    if ((img->keep_stamp && !__atomic_load_n(&img->wrote, __ATOMIC_RELAXED))
        || (!img->touched && img->open_stamp)) {
        return img->open_stamp;
    }
    return img->in_use_token;
}

/*
 * P-CLOSE-CLEAN stores the stamp first, then in_use 0, each durable: an
 * image that reads clean must carry the stamp of the session that wrote
 * it last.  A crash between the two leaves it in use, which a restore
 * refuses anyway; the other order could leave it clean with the old
 * stamp, and a state saved from the old contents would be accepted.
 */
static int store_clean(pcow_image *img, pcow_error *err)
{
    uint64_t stamp;
    int r;

    if (!img->in_use_token) {
        /* Check mode found problems and started no session: a new one */
        img->in_use_token = pcow_new_token();
    }
    stamp = pcow_stamp_to_leave(img);
    /* P-CLOSE-CLEAN */
    r = pcow_persist_hot_store(img, PCOW_HOT_STAMP, stamp);
    if (r == 0) {
        r = pcow_persist_hot_store(img, PCOW_HOT_IN_USE, 0);
    }
    if (r < 0) {
        return pcow_img_error(img, err, r, "cannot mark image clean: %s",
                              strerror(-r));
    }
    img->left_stamp = stamp;
    return 0;
}

int pcow_close_clean(pcow_image *img, pcow_error *err)
{
    /* Truncated behind our back: touch no table, leave it in use */
    int ret = pcow_check_file_size(img, err), r;
    /* Trimming changes nothing a reader sees */
    bool touched = img->touched, wrote = img->wrote;

    if (ret < 0) {
        return ret;
    }
    r = pcow_ring_drain(img);
    if (r < 0) {
        ret = pcow_img_error(img, err, r, "cannot release reserved "
                             "clusters: %s", strerror(-r));
    }
    if (!(img->flags & PCOW_OPEN_NO_RECOVER) && ret == 0) {
        /* P-CLOSE-TRIM: give back what COW and the reserve orphaned */
        ret = pcow_alloc_recover(img, false, err);
    }
    r = pcow_persist_barrier(img);
    if (r < 0 && ret == 0) {
        ret = pcow_img_error(img, err, r, "flush failed: %s", strerror(-r));
    }
    img->touched = touched;
    img->wrote = wrote;
    /*
     * A failed barrier or sync may have lost stores that this barrier
     * cannot bring back: made durable what it could, the image stays in
     * use, so that the next open recovers.
     */
    r = __atomic_load_n(&img->persist_error, __ATOMIC_RELAXED);
    if (r < 0 && ret == 0) {
        ret = pcow_img_error(img, err, r, "not marked clean: an earlier "
                             "flush failed (%s); the next open recovers",
                             strerror(-r));
    }
    /* Only when everything before is durable */
    return ret < 0 ? ret : store_clean(img, err);
}

int pcow_close(pcow_image *img, pcow_error *err)
{
    int ret = 0;

    if (!img) {
        return 0;
    }
    /* A released image is another process's now: write nothing */
    if (!img->read_only && img->c0 && !img->released) {
        ret = pcow_close_clean(img, err);
    }
    pcow_image_free(img);
    return ret;
}

const char *pcow_filename(pcow_image *img)
{
    return img->filename;
}

uint64_t pcow_virtual_size(pcow_image *img)
{
    return img->hdr.virtual_size;
}

uint32_t pcow_cluster_size(pcow_image *img)
{
    return img->cluster_size;
}

uint32_t pcow_cow_unit(pcow_image *img)
{
    return 1u << img->cow_unit_bits;
}

int pcow_fd(pcow_image *img)
{
    return img->fd;
}

pcow_image *pcow_backing(pcow_image *img)
{
    return img->backing;
}

int pcow_backing_raw_fd(pcow_image *img)
{
    return img->backing_raw_fd;
}

void pcow_get_info(pcow_image *img, pcow_info *info)
{
    PcowProblems pr = { .collect = true };
    PcowWalk w = { 0 };
    struct stat st;

    memset(info, 0, sizeof(*info));
    info->version = img->hdr.version;
    info->virtual_size = img->hdr.virtual_size;
    info->cluster_size = img->cluster_size;
    info->cow_unit = 1u << img->cow_unit_bits;
    info->incompatible_features = img->hdr.incompatible_features;
    info->compatible_features = img->hdr.compatible_features;
    info->autoclear_features = img->hdr.autoclear_features;
    info->generation = img->hdr.generation;
    memcpy(info->backing_file, img->hdr.backing_name,
           img->hdr.backing_name_length);
    info->backing_file[img->hdr.backing_name_length] = '\0';
    if (img->hdr.backing_format) {
        if (img->backing_path[0]) {
            snprintf(info->backing_path, sizeof(info->backing_path), "%s",
                     img->backing_path);
        } else {
            pcow_resolve_backing(img->dirname, info->backing_file,
                                 info->backing_path,
                                 sizeof(info->backing_path));
        }
    }
    info->backing_format = img->hdr.backing_format;
    info->backing_limit = img->hdr.backing_limit;
    info->backing_snapshot_id = img->hdr.backing_snapshot_id;
    if (img->backing && img->backing->view_snapshot_id) {
        snprintf(info->backing_snapshot_name,
                 sizeof(info->backing_snapshot_name), "%s",
                 img->backing->view_snapshot_name);
    }
    if (fstat(img->fd, &st) == 0) {
        info->file_size = st.st_size;
        info->disk_size = (uint64_t)st.st_blocks * 512;
    }
    pcow_lock(img);
    if (pcow_check_size_locked(img, NULL) < 0) {
        /* Truncated behind our back: report no counts rather than die */
        pcow_unlock(img);
        goto out;
    }
    info->frontier = pcow_frontier(img);
    if (pcow_walk(img, &w, &pr, false) == 0) {
        info->allocated_clusters = w.data_clusters;
        info->active_clusters = w.active_clusters;
        info->metadata_clusters = w.meta_clusters;
        info->vm_state_clusters = w.vm_state_clusters;
    }
    pcow_unlock(img);
    pcow_walk_free(&w);
out:
    info->nb_snapshots = img->hdr.nb_snapshots;
    info->was_dirty = img->was_dirty;
    info->read_only = img->read_only;
    info->persist_method = img->method;
}
