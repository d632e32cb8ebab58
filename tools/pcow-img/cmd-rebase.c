/*
 * pcow-img rebase: give an image another base (or none), keeping what the
 * guest sees unless -u
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <unistd.h>

#include "pcow-img.h"

#define CHUNK (1u << 20)

typedef struct RebaseArgs {
    ImgFormat base_fmt;
    const char *base;           /* as given; "" removes the base */
    char *path;                 /* where it is (NULL for "") */
    const char *file;
    bool unsafe, force_share, progress;
} RebaseArgs;

/* Snapshots of @img (their tables read through the base too) */
static uint32_t snapshot_count(ImgBlk *img)
{
    pcow_info *info = g_new0(pcow_info, 1);
    uint32_t n;

    pcow_get_info(img->img, info);
    n = info->nb_snapshots;
    g_free(info);
    return n;
}

static void rebase_progress(uint64_t off, uint64_t size, int *last_pct)
{
    int pct = (int)(off * 100 / size);

    if (pct != *last_pct) {
        printf("    (%d.00/100%%)\r", pct);
        fflush(stdout);
        *last_pct = pct;
    }
}

/*
 * [off, off + *n) of @img is not its own data (@hole: reads zeros): copy
 * into @img what differs between what it reads now (old chain) and what
 * @new_base (NULL: zeros) holds.  1 when there was nothing to compare
 * (*@n may shrink to a run the new base has nothing in), 0 when done.
 */
static int rebase_copy_range(ImgBlk *img, ImgBlk *new_base, bool hole,
                             uint64_t off, uint64_t *n, uint8_t *old_buf,
                             uint8_t *new_buf)
{
    uint64_t pnum = 0;
    int ret;

    if (hole) {
        /* Old content is zeros: skip if the new base is too. */
        if (!new_base) {
            return 1;
        }
        ret = img_blk_status(new_base, off, *n, &pnum);
        if (ret < 0) {
            return ret;
        }
        *n = pnum;
        if (ret == 0) {
            return 1;
        }
    }
    ret = img_blk_read(img, off, old_buf, *n);
    if (ret < 0) {
        return ret;
    }
    if (new_base) {
        ret = img_blk_read(new_base, off, new_buf, *n);
        if (ret < 0) {
            return ret;
        }
    } else {
        memset(new_buf, 0, *n);
    }
    return img_blk_write_changed(img, off, old_buf, new_buf, *n, NULL);
}

/*
 * Safe rebase: make every range of @img that FILE does not allocate itself
 * read the same through @new_base (NULL: zeros) as it does now through the
 * old chain, by copying the old content into @img where they differ.
 */
static int rebase_copy(ImgBlk *img, ImgBlk *new_base, bool progress)
{
    g_autofree uint8_t *old_buf = g_malloc(CHUNK);
    g_autofree uint8_t *new_buf = g_malloc(CHUNK);
    uint64_t size = img->size, off = 0;
    int last_pct = -1;

    while (off < size) {
        pcow_extent ext;
        uint64_t end;
        int ret = pcow_get_extent(img->img, off, size - off, &ext);

        if (ret < 0) {
            img_error(img->filename, "cannot get extent at offset %" PRIu64
                      ": %s", off, strerror(-ret));
            return ret;
        }
        if (ext.length == 0) {
            img_error(img->filename, "empty extent at offset %" PRIu64, off);
            return -EIO;
        }
        end = off + MIN(ext.length, size - off);
        if (ext.kind == PCOW_EXTENT_DATA && ext.depth == 0) {
            /* FILE's own data: the base does not matter. */
            off = end;
            continue;
        }
        while (off < end) {
            uint64_t n = MIN(end - off, CHUNK - off % CHUNK);

            ret = rebase_copy_range(img, new_base,
                                    ext.kind == PCOW_EXTENT_HOLE, off, &n,
                                    old_buf, new_buf);
            if (ret < 0) {
                return ret;
            }
            off += n;
            if (progress && ret == 0) {
                rebase_progress(off, size, &last_pct);
            }
        }
    }
    if (progress) {
        printf("    (100.00/100%%)\n");
    }
    return 0;
}

static const char rebase_help[] =
"usage: pcow-img rebase [-u] [-U] [-p] -b BASE [-F pcow|raw] FILE\n"
"\n"
"Change the base image of FILE to BASE (a name relative to FILE's\n"
"directory; '' removes the base).  Without -u the guest-visible content\n"
"is kept: every range FILE does not hold itself and that differs between\n"
"the old and the new base is first copied into FILE (refused when FILE\n"
"has snapshots, whose content could not be kept).  With -u (unsafe) only\n"
"the reference changes; the old base need not exist, nor the new one\n"
"(then give -F).  A base is a regular file (a raw one may be a block\n"
"device), and a base that leads back to FILE is refused as a loop.\n";

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int rebase_parse_options(int argc, char **argv, RebaseArgs *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hub:F:Upf:q", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(rebase_help, stdout);
            return 1;
        case 'u':
            a->unsafe = true;
            break;
        case 'b':
            a->base = optarg;
            break;
        case 'F':
            if (img_format_arg("-F", optarg, &a->base_fmt) < 0) {
                return -1;
            }
            break;
        case 'U':
            a->force_share = true;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "rebase: only pcow images have a base");
                return -1;
            }
            break;
        default:
            img_bad_option("rebase", argv, c);
            return -1;
        }
    }
    return 0;
}

/* FILE, and the new base: where it is and its format */
static int rebase_check_args(int argc, char **argv, RebaseArgs *a)
{
    if (argc - optind != 1) {
        img_usage_error("rebase", "expecting one file name");
        return -1;
    }
    a->file = argv[optind];
    if (!a->base) {
        img_usage_error("rebase", "-b BASE is required (-b '' "
                        "removes the base)");
        return -1;
    }
    if (strlen(a->base) > PCOW_MAX_BACKING_NAME) {
        img_error(a->file, "backing file name longer than %d bytes",
                  PCOW_MAX_BACKING_NAME);
        return -1;
    }
    if (img_require_pcow(a->file) < 0) {
        return -1;
    }
    if (!*a->base) {
        if (a->base_fmt != IMG_FMT_NONE) {
            img_error(a->file, "-F given without a backing file");
            return -1;
        }
        return 0;
    }
    a->path = pcow_backing_path(a->file, a->base);
    if (access(a->path, F_OK) < 0) {
        if (!a->unsafe) {
            img_error(a->file, "cannot open new backing file '%s': %s",
                      a->path, strerror(errno));
            return -1;
        }
        if (a->base_fmt == IMG_FMT_NONE) {
            img_error(a->file, "new backing file '%s' does not exist: give "
                      "its format with -F", a->path);
            return -1;
        }
    } else if (a->base_fmt == IMG_FMT_NONE) {
        a->base_fmt = pcow_probe(a->path) ? IMG_FMT_PCOW : IMG_FMT_RAW;
    }
    return 0;
}

/*
 * Without -u: FILE must have no snapshots, the new base no loop; then
 * copy into FILE what would change.
 */
static int rebase_keep_content(const RebaseArgs *a, ImgBlk *img)
{
    pcow_error err = { 0 };
    ImgBlk nb;
    bool have_nb = false;
    uint32_t nsn = snapshot_count(img);
    int ret;

    /*
     * Snapshots read what they do not hold through the base too, and
     * their tables cannot be given copies: a safe rebase could not keep
     * their content.
     */
    if (nsn) {
        img_error(a->file, "has %u snapshot%s whose content would change; "
                  "delete %s or use -u", nsn, nsn > 1 ? "s" : "",
                  nsn > 1 ? "them" : "it");
        return -1;
    }
    if (a->path) {
        /* Checked unlocked first: a loop would look like "in use" */
        ret = pcow_check_backing(img->img, a->base,
                                 img_backing_format(a->base_fmt), &err);
        if (ret < 0) {
            img_pcow_error(a->file, &err, ret);
            return -1;
        }
        if (img_blk_open(&nb, a->path, a->base_fmt, a->force_share ?
                         IMG_OPEN_FORCE_SHARE : 0) < 0) {
            return -1;
        }
        have_nb = true;
    }
    ret = rebase_copy(img, have_nb ? &nb : NULL, a->progress);
    if (ret == 0) {
        ret = img_blk_flush(img);
    }
    if (have_nb) {
        img_blk_close(&nb);
    }
    return ret < 0 ? -1 : 0;
}

int img_rebase(int argc, char **argv)
{
    RebaseArgs a = { .base_fmt = IMG_FMT_NONE };
    pcow_error err = { 0 };
    ImgBlk img;
    int c, ret = EXIT_ERR;

    c = rebase_parse_options(argc, argv, &a);
    if (c != 0) {
        return c > 0 ? EXIT_OK : EXIT_ERR;
    }
    if (rebase_check_args(argc, argv, &a) < 0) {
        goto out;
    }
    if (img_blk_open(&img, a.file, IMG_FMT_PCOW, IMG_OPEN_RDWR |
                     (a.unsafe ? IMG_OPEN_NO_BACKING : 0)) < 0) {
        goto out;
    }
    if (!a.unsafe && rebase_keep_content(&a, &img) < 0) {
        img_blk_close(&img);
        goto out;
    }
    c = pcow_set_backing(img.img, *a.base ? a.base : NULL,
                         img_backing_format(a.base_fmt), &err);
    if (c < 0) {
        img_pcow_error(a.file, &err, c);
        img_blk_close(&img);
        goto out;
    }
    if (img_blk_close(&img) == 0) {
        ret = EXIT_OK;
    }
out:
    free(a.path);
    return ret;
}
