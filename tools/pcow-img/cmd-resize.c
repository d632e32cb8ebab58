/*
 * pcow-img resize: set the virtual size of a pcow image or a raw file
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <unistd.h>

#include "pcow-img.h"

static const char resize_help[] =
"usage: pcow-img resize [--shrink] [-f pcow|raw] FILE [+|-]SIZE\n"
"\n"
"Set the virtual size of FILE to SIZE, or grow (+) or shrink (-) it by\n"
"SIZE.  Shrinking discards the data beyond the new end and needs --shrink.\n";

typedef struct ResizeArgs {
    ImgFormat fmt;
    const char *file;
    bool shrink;
    int sign;                   /* +SIZE 1, -SIZE -1, SIZE 0 */
    uint64_t delta;
} ResizeArgs;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int resize_parse_options(int argc, char **argv, ResizeArgs *a)
{
    enum { OPT_SHRINK = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "shrink", no_argument, NULL, OPT_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(resize_help, stdout);
            return 1;
        case 'f':
            if (img_format_arg("-f", optarg, &a->fmt) < 0) {
                return -1;
            }
            break;
        case OPT_SHRINK:
            a->shrink = true;
            break;
        default:
            img_bad_option("resize", argv, c);
            return -1;
        }
    }
    return 0;
}

/* FILE and [+|-]SIZE; without -f, FILE must be a pcow image */
static int resize_parse_args(int argc, char **argv, ResizeArgs *a)
{
    const char *size_str = NULL;
    int ret;

    /* A negative size would look like an option: take it out first. */
    if (argc >= 3 && argv[argc - 1][0] == '-' &&
        g_ascii_isdigit(argv[argc - 1][1])) {
        size_str = argv[--argc];
    }
    ret = resize_parse_options(argc, argv, a);
    if (ret != 0) {
        return ret;
    }
    if (size_str ? argc - optind != 1 : argc - optind != 2) {
        img_usage_error("resize", "expecting FILE and SIZE");
        return -1;
    }
    a->file = argv[optind];
    if (!size_str) {
        size_str = argv[optind + 1];
    }
    if (size_str[0] == '+' || size_str[0] == '-') {
        a->sign = size_str[0] == '+' ? 1 : -1;
        size_str++;
    }
    if (img_parse_size(a->file, "size", size_str, &a->delta) < 0) {
        return -1;
    }
    if (a->fmt == IMG_FMT_NONE && access(a->file, F_OK) == 0) {
        a->fmt = pcow_probe(a->file) ? IMG_FMT_PCOW : IMG_FMT_NONE;
        if (a->fmt == IMG_FMT_NONE) {
            img_error(a->file, "not a pcow image (bad magic); use -f raw "
                      "for a raw file");
            return -1;
        }
    }
    return 0;
}

/* The size asked for, from the current one; refused if not allowed */
static int resize_new_size(const ResizeArgs *a, const ImgBlk *b,
                           uint64_t *new_size)
{
    if (a->sign > 0) {
        *new_size = b->size + a->delta;
        if (*new_size < b->size) {
            img_error(a->file, "size too large");
            return -1;
        }
    } else if (a->sign < 0) {
        if (a->delta >= b->size) {
            img_error(a->file, "cannot shrink by %" PRIu64 " bytes: the "
                      "image is only %" PRIu64 " bytes", a->delta, b->size);
            return -1;
        }
        *new_size = b->size - a->delta;
    } else {
        *new_size = a->delta;
    }
    if (*new_size == 0) {
        img_error(a->file, "image size must be greater than 0");
        return -1;
    }
    if (b->fmt == IMG_FMT_PCOW && *new_size % PCOW_PAGE_SIZE) {
        img_error(a->file, "new size %" PRIu64 " is not a multiple of 4 KiB",
                  *new_size);
        return -1;
    }
    if (*new_size < b->size && !a->shrink) {
        img_error(a->file, "shrinking from %" PRIu64 " to %" PRIu64 " bytes "
                  "discards data: use --shrink", b->size, *new_size);
        return -1;
    }
    return 0;
}

static int resize_apply(const ResizeArgs *a, ImgBlk *b, uint64_t new_size)
{
    if (b->fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };
        int ret = pcow_resize(b->img, new_size, a->shrink, &err);

        if (ret < 0) {
            img_pcow_error(a->file, &err, ret);
            return -1;
        }
    } else if (ftruncate(b->fd, new_size) < 0) {
        img_error(a->file, "cannot resize: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int img_resize(int argc, char **argv)
{
    ResizeArgs a = { .fmt = IMG_FMT_NONE };
    uint64_t new_size;
    ImgBlk b;
    int ret;

    ret = resize_parse_args(argc, argv, &a);
    if (ret != 0) {
        return ret > 0 ? EXIT_OK : EXIT_ERR;
    }
    if (img_blk_open(&b, a.file, a.fmt, IMG_OPEN_RDWR |
                     IMG_OPEN_NO_BACKING) < 0) {
        return EXIT_ERR;
    }
    if (resize_new_size(&a, &b, &new_size) < 0 ||
        resize_apply(&a, &b, new_size) < 0) {
        img_blk_close(&b);
        return EXIT_ERR;
    }
    if (img_blk_close(&b) < 0) {
        return EXIT_ERR;
    }
    printf("Image resized.\n");
    return EXIT_OK;
}
