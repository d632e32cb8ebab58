/*
 * pcow-img commit: write an overlay's own data into its base, then empty
 * the overlay
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <unistd.h>

#include "pcow-img.h"

#define CHUNK (1u << 20)

typedef struct Range {
    uint64_t off, len;
} Range;

typedef struct CommitJob {
    const char *file;
    bool keep;                  /* -d: FILE is left as it is */
    bool progress;
    ImgBlk img;                 /* FILE, opened without its chain */
    ImgBlk base;
    bool have_img, have_base;
    pcow_info *info;            /* FILE's */
    GArray *ranges;             /* whole clusters of FILE to empty */
} CommitJob;

static const char commit_help[] =
"usage: pcow-img commit [-d] [-p] FILE\n"
"\n"
"Write the data FILE holds itself (its active layer) into its base image,\n"
"then empty FILE so that it reads through to the base again.  With -d FILE\n"
"is left as it is.  The base is opened read-write for the duration.\n"
"Other images based on the same base, and snapshots of FILE, see the\n"
"base's new content where they do not hold data themselves.\n";

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int commit_parse_options(int argc, char **argv, CommitJob *j)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hdpqf:", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(commit_help, stdout);
            return 1;
        case 'd':
            j->keep = true;
            break;
        case 'p':
            j->progress = true;
            break;
        case 'q':
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "commit: only pcow images have a base");
                return -1;
            }
            break;
        default:
            img_bad_option("commit", argv, c);
            return -1;
        }
    }
    if (argc - optind != 1) {
        img_usage_error("commit", "expecting one file name");
        return -1;
    }
    j->file = argv[optind];
    return 0;
}

/*
 * Open FILE without its chain, so that it holds no lock on the base, and
 * check all that could make a commit fail half-way before the base is
 * written.
 */
static int commit_open_file(CommitJob *j)
{
    pcow_error err = { 0 };
    int ret;

    if (img_require_pcow(j->file) < 0 ||
        img_blk_open(&j->img, j->file, IMG_FMT_PCOW, IMG_OPEN_NO_BACKING |
                     (j->keep ? 0 : IMG_OPEN_RDWR)) < 0) {
        return -1;
    }
    j->have_img = true;
    j->info = g_new0(pcow_info, 1);
    pcow_get_info(j->img.img, j->info);
    if (j->info->backing_format == PCOW_BACKING_NONE) {
        img_error(j->file, "image has no backing file to commit into");
        return -1;
    }
    if (j->info->backing_snapshot_id) {
        /*
         * Its base shows a snapshot; commit would write into the base's
         * active layer and leave the clone showing the snapshot again.
         */
        img_error(j->file, "a clone (its base is snapshot id %" PRIu64
                  " of %s) cannot be committed: the snapshot is frozen",
                  j->info->backing_snapshot_id, j->info->backing_file);
        return -1;
    }
    /*
     * A chain that leads back to FILE would otherwise fail on FILE's own
     * lock, reported as "in use by another process".
     */
    ret = pcow_check_backing(j->img.img, j->info->backing_file,
                             j->info->backing_format, &err);
    /*
     * FILE's limit is cleared after the base is written: know now that it
     * can be, or a failed commit would have changed the base.
     */
    if (ret == 0 && !j->keep && j->info->backing_limit) {
        ret = pcow_can_commit_header(j->img.img, &err);
    }
    if (ret < 0) {
        img_pcow_error(j->file, &err, ret);
        return -1;
    }
    return 0;
}

/* Open the base read-write; it grows to FILE's size (as qemu-img's does) */
static int commit_open_base(CommitJob *j)
{
    uint64_t size = j->img.size;
    ImgBlk *base = &j->base;
    int ret;

    if (img_blk_open(base, j->info->backing_path,
                     j->info->backing_format == PCOW_BACKING_RAW ?
                     IMG_FMT_RAW : IMG_FMT_PCOW, IMG_OPEN_RDWR) < 0) {
        return -1;
    }
    j->have_base = true;
    if (base->size >= size) {
        return 0;
    }
    if (base->fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };

        ret = pcow_resize(base->img, size, false, &err);
        if (ret < 0) {
            img_pcow_error(base->filename, &err, ret);
            return -1;
        }
    } else if (ftruncate(base->fd, size) < 0) {
        img_error(base->filename, "cannot grow to %" PRIu64 " bytes: %s",
                  size, strerror(errno));
        return -1;
    }
    base->size = size;
    return 0;
}

/*
 * Note the whole clusters around FILE's data at [off, end) for emptying
 * afterwards: once this data is in the base, the rest of each touched
 * cluster (data of FILE, also committed, or what FILE reads from the base)
 * reads the same from the base.  FILE is open without its chain, so
 * zeroing a whole cluster unmaps it instead of hiding the base.
 */
static void commit_note_clusters(CommitJob *j, uint64_t off, uint64_t end)
{
    uint64_t cs = pcow_cluster_size(j->img.img), size = j->img.size;
    GArray *ranges = j->ranges;
    Range *last = ranges->len ?
                  &g_array_index(ranges, Range, ranges->len - 1) : NULL;
    Range r;

    r.off = off & ~(cs - 1);
    r.len = MIN(DIV_ROUND_UP(end, cs) * cs, size) - r.off;
    if (last && last->off + last->len >= r.off) {
        last->len = MAX(last->off + last->len, r.off + r.len) - last->off;
    } else {
        g_array_append_val(ranges, r);
    }
}

/* FILE's own data at [off, end) into the base */
static int commit_copy_data(CommitJob *j, uint64_t off, uint64_t end,
                            uint8_t *buf)
{
    commit_note_clusters(j, off, end);
    while (off < end) {
        uint64_t n = MIN(end - off, CHUNK);

        if (img_blk_read(&j->img, off, buf, n) < 0 ||
            img_blk_write(&j->base, off, buf, n) < 0) {
            return -1;
        }
        off += n;
    }
    if (j->progress) {
        printf("    (%.2f/100%%)\r", 100.0 * off / j->img.size);
        fflush(stdout);
    }
    return 0;
}

/* Write what FILE holds itself into the base, and make it durable there */
static int commit_to_base(CommitJob *j)
{
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    uint64_t off = 0, size = j->img.size, limit = j->info->backing_limit;

    while (off < size) {
        pcow_extent ext;
        uint64_t end;
        int ret = pcow_get_extent(j->img.img, off, size - off, &ext);

        if (ret < 0) {
            img_error(j->file, "cannot get extent at offset %" PRIu64 ": %s",
                      off, strerror(-ret));
            return -1;
        }
        if (ext.length == 0) {
            img_error(j->file, "empty extent at offset %" PRIu64, off);
            return -1;
        }
        end = off + MIN(ext.length, size - off);
        if (ext.kind == PCOW_EXTENT_DATA && ext.depth == 0) {
            if (commit_copy_data(j, off, end, buf) < 0) {
                return -1;
            }
        } else if (limit && end > limit) {
            /*
             * Past FILE's backing limit the base does not show: FILE
             * reads zeros there, so the base must too.
             */
            uint64_t from = MAX(off, limit);

            if (img_blk_zero(&j->base, from, end - from) < 0) {
                return -1;
            }
        }
        off = end;
    }
    if (j->progress) {
        printf("    (100.00/100%%)\n");
    }
    /* The base must hold the data durably before FILE lets go of it. */
    if (img_blk_flush(&j->base) < 0) {
        return -1;
    }
    j->have_base = false;
    return img_blk_close(&j->base) < 0 ? -1 : 0;
}

/* Empty FILE where its data is now in the base */
static int commit_empty_file(CommitJob *j)
{
    if (j->info->backing_limit) {
        pcow_error err = { 0 };
        /* The base now reads what FILE shows past its limit: zeros */
        int ret = pcow_set_backing_limit(j->img.img, 0, &err);

        if (ret < 0) {
            img_pcow_error(j->file, &err, ret);
            return -1;
        }
    }
    for (guint i = 0; i < j->ranges->len; i++) {
        Range *r = &g_array_index(j->ranges, Range, i);

        if (img_blk_zero(&j->img, r->off, r->len) < 0) {
            return -1;
        }
    }
    return 0;
}

int img_commit(int argc, char **argv)
{
    CommitJob j = { 0 };
    int c, ret = EXIT_ERR;

    c = commit_parse_options(argc, argv, &j);
    if (c != 0) {
        return c > 0 ? EXIT_OK : EXIT_ERR;
    }
    j.ranges = g_array_new(FALSE, FALSE, sizeof(Range));
    if (commit_open_file(&j) == 0 && commit_open_base(&j) == 0 &&
        commit_to_base(&j) == 0 && (j.keep || commit_empty_file(&j) == 0)) {
        ret = EXIT_OK;
    }
    if (j.have_base) {
        img_blk_close(&j.base);
    }
    if (j.have_img) {
        j.have_img = false;
        if (img_blk_close(&j.img) < 0) {
            ret = EXIT_ERR;
        }
    }
    g_array_free(j.ranges, TRUE);
    g_free(j.info);
    if (ret == EXIT_OK) {
        printf("Image committed.\n");
    }
    return ret;
}
