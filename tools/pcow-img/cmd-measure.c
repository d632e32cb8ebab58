/*
 * pcow-img measure: the file size a new image needs (libpcow's
 * pcow_measure() does the counting; this is the command line)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "pcow-img.h"

typedef struct MeasureArgs {
    ImgCreateOpts o;
    ImgFormat in_fmt, out_fmt;
    const char *size_str;
    const char *src;
    bool json;
    bool force_share;
} MeasureArgs;

static const char measure_help[] =
"usage: pcow-img measure [-O pcow|raw] [-o cluster_size=SIZE] "
"[--output=human|json]\n"
"                        (--size SIZE | [-f FMT] [-U] SRC)\n"
"\n"
"Print the file size a new image needs: 'required size' for the data of\n"
"SRC (or an empty image of SIZE), 'fully allocated size' when every\n"
"cluster is written.  A size or geometry create would refuse is refused.\n";

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int measure_parse_options(int argc, char **argv, MeasureArgs *a)
{
    enum { OPT_SIZE = 256, OPT_OUTPUT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "size", required_argument, NULL, OPT_SIZE },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hO:o:f:U", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(measure_help, stdout);
            return 1;
        case 'O':
            if (img_format_arg("-O", optarg, &a->out_fmt) < 0) {
                return -1;
            }
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &a->in_fmt) < 0) {
                return -1;
            }
            break;
        case 'o':
            if (img_parse_create_opts(NULL, optarg, &a->o) < 0) {
                return -1;
            }
            break;
        case 'U':
            a->force_share = true;
            break;
        case OPT_SIZE:
            a->size_str = optarg;
            break;
        case OPT_OUTPUT:
            if (strcmp(optarg, "json") == 0) {
                a->json = true;
            } else if (strcmp(optarg, "human") != 0) {
                img_error(NULL, "measure: --output must be human or json");
                return -1;
            }
            break;
        default:
            img_bad_option("measure", argv, c);
            return -1;
        }
    }
    return 0;
}

/* The positional arguments: exactly one of --size and SRC */
static int measure_check_args(int argc, char **argv, MeasureArgs *a,
                              uint64_t *size)
{
    if (argc - optind > 1) {
        img_usage_error("measure", "too many arguments");
        return -1;
    }
    a->src = argc - optind == 1 ? argv[optind] : NULL;
    if (!!a->src == !!a->size_str) {
        img_usage_error("measure", "give either --size SIZE or a source "
                        "image, not both");
        return -1;
    }
    if (a->size_str) {
        if (img_parse_size(NULL, "size", a->size_str, size) < 0) {
            return -1;
        }
        if (*size == 0) {
            img_error(NULL, "measure: size must be greater than 0");
            return -1;
        }
    }
    if (a->o.cluster_size_auto) {
        a->o.cluster_size = 0;  /* the default: no file to probe yet */
    }
    return 0;
}

static int source_status(void *opaque, uint64_t off, uint64_t max,
                         uint64_t *pnum)
{
    return img_blk_status(opaque, off, max, pnum);
}

static int source_read(void *opaque, uint64_t off, void *buf, uint64_t len)
{
    return img_blk_read(opaque, off, buf, len);
}

/* libpcow's measure of a pcow image of @size holding @b (NULL: nothing) */
static int measure_pcow(const MeasureArgs *a, ImgBlk *b, uint64_t size,
                        pcow_measure_result *res)
{
    pcow_measure_source src = {
        .size = b ? b->size : 0,
        .block_status = source_status,
        .read = source_read,
        .opaque = b,
    };
    pcow_error err = { 0 };
    int ret = pcow_measure(size, a->o.cluster_size, a->o.cow_unit,
                           b ? &src : NULL, res, &err);

    /*
     * A geometry error names no file; a callback's error was reported by
     * img_blk_* and leaves err clear.
     */
    if (ret < 0 && err.code) {
        img_error(a->src, "%s", err.msg);
    }
    return ret;
}

/* Measure the source image (whose size in whole pages convert would use) */
static int measure_source(const MeasureArgs *a, pcow_measure_result *res)
{
    ImgBlk b;
    uint64_t size;
    int ret;

    ret = img_blk_open(&b, a->src, a->in_fmt, a->force_share ?
                       IMG_OPEN_FORCE_SHARE : 0);
    if (ret < 0) {
        return ret;
    }
    size = pcow_round_to_pages(b.size);
    if (a->out_fmt == IMG_FMT_RAW) {
        /* Raw output needs only the size */
        res->required = size;
        res->fully_allocated = size;
    } else {
        ret = measure_pcow(a, &b, size, res);
    }
    img_blk_close(&b);
    return ret;
}

static void measure_print(const MeasureArgs *a,
                          const pcow_measure_result *res)
{
    if (a->json) {
        ImgJson j;

        json_init(&j);
        json_begin_object(&j, NULL);
        json_u64(&j, "required", res->required);
        json_u64(&j, "fully-allocated", res->fully_allocated);
        json_end_object(&j);
        json_print(&j);
    } else {
        printf("required size: %" PRIu64 "\n", res->required);
        printf("fully allocated size: %" PRIu64 "\n", res->fully_allocated);
    }
}

int img_measure(int argc, char **argv)
{
    MeasureArgs a = { .in_fmt = IMG_FMT_NONE, .out_fmt = IMG_FMT_PCOW };
    pcow_measure_result res = { 0 };
    uint64_t size = 0;
    int ret = EXIT_ERR, c;

    c = measure_parse_options(argc, argv, &a);
    if (c != 0) {
        ret = c > 0 ? EXIT_OK : EXIT_ERR;
        goto out;
    }
    if (a.o.help) {
        img_print_create_opts_help();
        ret = EXIT_OK;
        goto out;
    }
    if (measure_check_args(argc, argv, &a, &size) < 0) {
        goto out;
    }
    if (a.src) {
        c = measure_source(&a, &res);
    } else if (a.out_fmt == IMG_FMT_RAW) {
        res.required = size;
        res.fully_allocated = size;
        c = 0;
    } else {
        /* Whatever create would refuse, measure refuses too */
        c = measure_pcow(&a, NULL, size, &res);
    }
    if (c == 0) {
        measure_print(&a, &res);
        ret = EXIT_OK;
    }
out:
    img_create_opts_free(&a.o);
    return ret;
}
