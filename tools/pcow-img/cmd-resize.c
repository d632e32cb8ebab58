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

int img_resize(int argc, char **argv)
{
    enum { OPT_SHRINK = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "shrink", no_argument, NULL, OPT_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    ImgFormat fmt = IMG_FMT_NONE;
    const char *file, *size_str;
    bool shrink = false;
    uint64_t delta, new_size;
    ImgBlk b;
    int c, sign = 0, ret;

    /* A negative size would look like an option: take it out first. */
    if (argc >= 3 && argv[argc - 1][0] == '-' &&
        g_ascii_isdigit(argv[argc - 1][1])) {
        size_str = argv[--argc];
    } else {
        size_str = NULL;
    }

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(resize_help, stdout);
            return EXIT_OK;
        case 'f':
            if (img_format_arg("-f", optarg, &fmt) < 0) {
                return EXIT_ERR;
            }
            break;
        case OPT_SHRINK:
            shrink = true;
            break;
        default:
            img_bad_option("resize", argv, c);
            return EXIT_ERR;
        }
    }
    if (size_str ? argc - optind != 1 : argc - optind != 2) {
        return img_usage_error("resize", "expecting FILE and SIZE");
    }
    file = argv[optind];
    if (!size_str) {
        size_str = argv[optind + 1];
    }
    if (size_str[0] == '+' || size_str[0] == '-') {
        sign = size_str[0] == '+' ? 1 : -1;
        size_str++;
    }
    if (img_parse_size(file, "size", size_str, &delta) < 0) {
        return EXIT_ERR;
    }

    if (fmt == IMG_FMT_NONE && access(file, F_OK) == 0) {
        fmt = pcow_probe(file) ? IMG_FMT_PCOW : IMG_FMT_NONE;
        if (fmt == IMG_FMT_NONE) {
            img_error(file, "not a pcow image (bad magic); use -f raw for "
                      "a raw file");
            return EXIT_ERR;
        }
    }
    if (img_blk_open(&b, file, fmt, IMG_OPEN_RDWR |
                     IMG_OPEN_NO_BACKING) < 0) {
        return EXIT_ERR;
    }

    if (sign > 0) {
        new_size = b.size + delta;
        if (new_size < b.size) {
            img_error(file, "size too large");
            goto fail;
        }
    } else if (sign < 0) {
        if (delta >= b.size) {
            img_error(file, "cannot shrink by %" PRIu64 " bytes: the image "
                      "is only %" PRIu64 " bytes", delta, b.size);
            goto fail;
        }
        new_size = b.size - delta;
    } else {
        new_size = delta;
    }
    if (new_size == 0) {
        img_error(file, "image size must be greater than 0");
        goto fail;
    }
    if (b.fmt == IMG_FMT_PCOW && new_size % PCOW_PAGE_SIZE) {
        img_error(file, "new size %" PRIu64 " is not a multiple of 4 KiB",
                  new_size);
        goto fail;
    }
    if (new_size < b.size && !shrink) {
        img_error(file, "shrinking from %" PRIu64 " to %" PRIu64 " bytes "
                  "discards data: use --shrink", b.size, new_size);
        goto fail;
    }

    if (b.fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };

        ret = pcow_resize(b.img, new_size, shrink, &err);
        if (ret < 0) {
            img_pcow_error(file, &err, ret);
            goto fail;
        }
    } else if (ftruncate(b.fd, new_size) < 0) {
        img_error(file, "cannot resize: %s", strerror(errno));
        goto fail;
    }
    if (img_blk_close(&b) < 0) {
        return EXIT_ERR;
    }
    printf("Image resized.\n");
    return EXIT_OK;

fail:
    img_blk_close(&b);
    return EXIT_ERR;
}
