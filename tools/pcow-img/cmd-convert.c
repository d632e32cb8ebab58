/*
 * pcow-img convert: copy an image into a new (or existing) one
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-img.h"

#define CHUNK (1u << 20)
#define BLOCK IMG_BLOCK

/* --------------------------------------------------------------- convert */

typedef struct Convert {
    ImgBlk *src;
    ImgBlk *dst;
    ImgBlk *base;               /* -B: what DST reads where it is empty */
    bool fresh;                 /* DST was created by us: reads as zeros */
    bool progress;
    uint8_t *buf;
    uint8_t *base_buf;
    int last_pct;
    uint64_t written;
} Convert;

static void convert_progress(Convert *s, uint64_t off, bool done)
{
    int pct;

    if (!s->progress) {
        return;
    }
    pct = s->src->size ? (int)(off * 10000 / s->src->size) : 10000;
    if (done) {
        printf("    (100.00/100%%)\n");
    } else if (pct != s->last_pct) {
        printf("    (%d.%02d/100%%)\r", pct / 100, pct % 100);
        fflush(stdout);
        s->last_pct = pct;
    }
}

/* Write @len bytes of @data at @off, skipping blocks the base already has. */
static int convert_write(Convert *s, uint64_t off, const uint8_t *data,
                         uint64_t len)
{
    if (!s->base) {
        s->written += len;
        return img_blk_write(s->dst, off, data, len);
    }
    if (img_blk_read(s->base, off, s->base_buf, len) < 0) {
        return -EIO;
    }
    return img_blk_write_changed(s->dst, off, data, s->base_buf, len,
                                 &s->written);
}

/* Make DST read zeros over [off, off + len) (at most CHUNK bytes). */
static int convert_zero(Convert *s, uint64_t off, uint64_t len)
{
    if (len == 0) {
        return 0;
    }
    if (s->base) {
        /* Zeros must hide what the base has there. */
        g_autofree uint8_t *zeros = g_malloc0(len);

        return convert_write(s, off, zeros, len);
    }
    if (s->fresh) {
        return 0;
    }
    return img_blk_zero(s->dst, off, len);
}

static int convert_run(Convert *s)
{
    uint64_t off = 0, size = s->src->size;

    while (off < size) {
        uint64_t n = MIN(size - off, CHUNK - off % CHUNK);
        uint64_t pnum, i;
        int st = img_blk_status(s->src, off, n, &pnum);

        if (st < 0) {
            return st;
        }
        pnum = MIN(MAX(pnum, 1), n);
        if (st == 0) {
            int ret = convert_zero(s, off, pnum);

            if (ret < 0) {
                return ret;
            }
            off += pnum;
            convert_progress(s, off, false);
            continue;
        }
        if (img_blk_read(s->src, off, s->buf, pnum) < 0) {
            return -EIO;
        }
        /* Split into runs of non-zero and all-zero 4 KiB blocks. */
        for (i = 0; i < pnum; ) {
            uint64_t j = i;
            bool zero = img_is_zero(s->buf + i,
                                    MIN(BLOCK - (off + i) % BLOCK,
                                        pnum - i));
            int ret;

            while (j < pnum) {
                uint64_t bl = MIN(BLOCK - (off + j) % BLOCK, pnum - j);

                if (img_is_zero(s->buf + j, bl) != zero) {
                    break;
                }
                j += bl;
            }
            if (zero) {
                ret = convert_zero(s, off + i, j - i);
            } else {
                ret = convert_write(s, off + i, s->buf + i, j - i);
            }
            if (ret < 0) {
                return ret;
            }
            i = j;
        }
        off += pnum;
        convert_progress(s, off, false);
    }
    convert_progress(s, size, true);
    return 0;
}

static const char convert_help[] =
"usage: pcow-img convert [-p] [-n] [-U] [-f FMT] [-O FMT] [-o OPTIONS] "
"[-B BASE]\n"
"                        SRC DST\n"
"\n"
"Copy the guest-visible content of SRC into a new image DST.  Holes and\n"
"all-zero 4 KiB blocks are not written, so DST is as sparse as possible.\n"
"\n"
"  -f FMT      format of SRC (default: probed)\n"
"  -O FMT      format of DST: raw (default) or pcow\n"
"  -o OPTIONS  cluster_size=SIZE|auto, cow_unit=SIZE (pcow output)\n"
"  -B BASE     DST gets BASE as its base and holds only what differs\n"
"  -n          DST exists already: write into it (it is not created)\n"
"  -p          show progress\n"
"  -U          open SRC without a lock\n";

typedef struct ConvertArgs {
    ImgCreateOpts o;
    ImgFormat in_fmt, out_fmt, base_fmt;
    bool out_fmt_given;
    bool no_create;             /* -n: DST exists */
    bool progress;
    bool force_share;
    const char *base;           /* -B, NULL if none */
    const char *src_name, *dst_name;
} ConvertArgs;

/* The images of one convert; each is closed if open */
typedef struct ConvertImages {
    ImgBlk src, dst, base;
    bool have_src, have_dst, have_base;
    bool created;               /* DST is ours: removed on failure */
} ConvertImages;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int convert_parse_options(int argc, char **argv, ConvertArgs *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hpnf:O:o:B:F:Uq", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(convert_help, stdout);
            return 1;
        case 'p':
            a->progress = true;
            break;
        case 'n':
            a->no_create = true;
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &a->in_fmt) < 0) {
                return -1;
            }
            break;
        case 'O':
            if (img_format_arg("-O", optarg, &a->out_fmt) < 0) {
                return -1;
            }
            a->out_fmt_given = true;
            break;
        case 'o':
            if (img_parse_create_opts(NULL, optarg, &a->o) < 0) {
                return -1;
            }
            break;
        case 'B':
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
        case 'q':
            a->progress = false;
            break;
        default:
            img_bad_option("convert", argv, c);
            return -1;
        }
    }
    if (a->o.help) {
        img_print_create_opts_help();
        return 1;
    }
    return 0;
}

/* SRC, DST and the options that go together (or not) */
static int convert_check_args(int argc, char **argv, ConvertArgs *a)
{
    if (argc - optind != 2) {
        img_usage_error("convert", "expecting SRC and DST");
        return -1;
    }
    a->src_name = argv[optind];
    a->dst_name = argv[optind + 1];
    if (a->o.backing_file && !a->base) {
        a->base = a->o.backing_file;
    }
    if (a->base && !*a->base) {
        a->base = NULL;
    }
    if (a->base && a->no_create) {
        img_error(a->dst_name, "-B cannot be used with -n (use rebase on "
                  "the existing image)");
        return -1;
    }
    if (a->base && a->out_fmt != IMG_FMT_PCOW) {
        img_error(a->dst_name, "-B needs -O pcow (raw images have no base)");
        return -1;
    }
    if (!a->no_create && access(a->dst_name, F_OK) == 0) {
        img_error(a->dst_name, "file exists (remove it, or use -n to write "
                  "into it)");
        return -1;
    }
    if (a->no_create && access(a->dst_name, F_OK) < 0) {
        img_error(a->dst_name, "cannot open target: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* -n: DST exists; it must not be read by SRC and must be large enough */
static int convert_open_existing(const ConvertArgs *a, ConvertImages *im)
{
    bool itself;

    /* Checked before opening it: our own lock would say "in use" */
    if (img_blk_uses_file(&im->src, a->dst_name, &itself)) {
        if (itself) {
            img_error(a->dst_name, "source and target are the same file");
        } else {
            img_error(a->dst_name, "target is a backing file of the source "
                      "'%s': it would change while being read",
                      a->src_name);
        }
        return -1;
    }
    if (img_blk_open(&im->dst, a->dst_name, a->out_fmt_given ? a->out_fmt :
                     IMG_FMT_NONE, IMG_OPEN_RDWR) < 0) {
        return -1;
    }
    im->have_dst = true;
    if (im->dst.size < im->src.size) {
        img_error(a->dst_name, "target is smaller (%" PRIu64 " bytes) than "
                  "the source (%" PRIu64 " bytes)", im->dst.size,
                  im->src.size);
        return -1;
    }
    return 0;
}

/* A new pcow DST of SRC's size, on -B's base (opened to compare with) */
static int convert_create_pcow(const ConvertArgs *a, ConvertImages *im)
{
    pcow_create_request req = {
        .virtual_size = pcow_round_to_pages(im->src.size),
        .cluster_size = a->o.cluster_size,
        .cluster_size_auto = a->o.cluster_size_auto,
        .cow_unit = a->o.cow_unit,
        .backing_file = a->base,
    };
    pcow_error err = { 0 };
    int ret;

    if (a->base) {
        char *path = pcow_backing_path(a->dst_name, a->base);

        ret = img_blk_open(&im->base, path, a->base_fmt, a->force_share ?
                           IMG_OPEN_FORCE_SHARE : 0);
        free(path);
        if (ret < 0) {
            return -1;
        }
        im->have_base = true;
        req.backing_format = im->base.fmt == IMG_FMT_RAW ?
                             PCOW_BACKING_RAW : PCOW_BACKING_PCOW;
    }
    if (req.virtual_size == 0) {
        img_error(a->src_name, "source is empty: nothing to convert");
        return -1;
    }
    ret = pcow_create_image(a->dst_name, &req, NULL, &err);
    if (ret < 0) {
        img_pcow_error(a->dst_name, &err, ret);
        return -1;
    }
    im->created = true;
    if (img_blk_open(&im->dst, a->dst_name, IMG_FMT_PCOW,
                     IMG_OPEN_RDWR) < 0) {
        return -1;
    }
    im->have_dst = true;
    return 0;
}

/* A new raw DST of SRC's size */
static int convert_create_raw(const ConvertArgs *a, ConvertImages *im)
{
    uint64_t size = im->src.size;
    int fd = open(a->dst_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                  0644);

    if (fd < 0) {
        img_error(a->dst_name, "cannot create: %s", strerror(errno));
        return -1;
    }
    im->created = true;
    if (ftruncate(fd, size) < 0) {
        img_error(a->dst_name, "cannot set size to %" PRIu64 ": %s", size,
                  strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    if (img_blk_open(&im->dst, a->dst_name, IMG_FMT_RAW, IMG_OPEN_RDWR) < 0) {
        return -1;
    }
    im->have_dst = true;
    return 0;
}

/* Copy SRC into DST, then make DST durable and close it */
static int convert_copy(const ConvertArgs *a, ConvertImages *im)
{
    Convert s = {
        .src = &im->src,
        .dst = &im->dst,
        .base = im->have_base ? &im->base : NULL,
        .fresh = im->created,
        .progress = a->progress,
        .last_pct = -1,
    };
    int ret;

    s.buf = g_malloc(CHUNK);
    s.base_buf = g_malloc(CHUNK);
    ret = convert_run(&s);
    g_free(s.buf);
    g_free(s.base_buf);
    if (ret < 0 || img_blk_flush(&im->dst) < 0) {
        return -1;
    }
    im->have_dst = false;
    return img_blk_close(&im->dst) < 0 ? -1 : 0;
}

static void convert_close(const ConvertArgs *a, ConvertImages *im, bool ok)
{
    if (im->have_dst) {
        img_blk_close(&im->dst);
    }
    if (im->have_base) {
        img_blk_close(&im->base);
    }
    if (im->have_src) {
        img_blk_close(&im->src);
    }
    if (!ok && im->created) {
        /* Leave nothing half-written behind. */
        unlink(a->dst_name);
    }
}

int img_convert(int argc, char **argv)
{
    ConvertArgs a = {
        .in_fmt = IMG_FMT_NONE, .out_fmt = IMG_FMT_RAW,
        .base_fmt = IMG_FMT_NONE,
    };
    ConvertImages im = { 0 };
    int c, ret = EXIT_ERR;

    c = convert_parse_options(argc, argv, &a);
    if (c != 0) {
        ret = c > 0 ? EXIT_OK : EXIT_ERR;
        goto out;
    }
    if (convert_check_args(argc, argv, &a) < 0) {
        goto out;
    }
    if (img_blk_open(&im.src, a.src_name, a.in_fmt, a.force_share ?
                     IMG_OPEN_FORCE_SHARE : 0) < 0) {
        goto out;
    }
    im.have_src = true;
    if (a.no_create) {
        c = convert_open_existing(&a, &im);
    } else if (a.out_fmt == IMG_FMT_PCOW) {
        c = convert_create_pcow(&a, &im);
    } else {
        c = convert_create_raw(&a, &im);
    }
    if (c == 0 && convert_copy(&a, &im) == 0) {
        ret = EXIT_OK;
    }
    convert_close(&a, &im, ret == EXIT_OK);
out:
    img_create_opts_free(&a.o);
    return ret;
}
