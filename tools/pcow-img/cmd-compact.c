/*
 * pcow-img compact: move an image's data clusters into guest order, so
 * that the Image Monitor maps it with one mapping per guest run
 * (libpcow's pcow_compact does the work)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "pcow-img.h"

typedef struct CompactArgs {
    const char *file;
    bool quiet;
    bool json;
} CompactArgs;

static const char compact_help[] =
"usage: pcow-img compact [-q] [--output=human|json] FILE\n"
"\n"
"Move the data clusters FILE holds itself so that each run of consecutive\n"
"guest clusters lies back to back in the file, in guest order: a running\n"
"VM then maps the image with one mapping (VMA) per run instead of about\n"
"one per cluster.  The guest content does not change, and a crash leaves\n"
"every cluster at its old or its new place.  FILE must not be in use,\n"
"must have been closed cleanly and must have no snapshots.\n";

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int compact_parse_args(int argc, char **argv, CompactArgs *a)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(compact_help, stdout);
            return 1;
        case 'q':
            a->quiet = true;
            break;
        case OPT_OUTPUT:
            if (img_parse_output("compact", optarg, &a->json) < 0) {
                return -1;
            }
            break;
        default:
            img_bad_option("compact", argv, c);
            return -1;
        }
    }
    if (argc - optind != 1) {
        img_usage_error("compact", "expecting one file name");
        return -1;
    }
    a->file = argv[optind];
    return 0;
}

static void compact_print(const CompactArgs *a, const pcow_compact_result *r)
{
    ImgJson j;

    if (a->json) {
        json_init(&j);
        json_begin_object(&j, NULL);
        json_u64(&j, "clusters-moved", r->clusters_moved);
        json_u64(&j, "runs-moved", r->runs_moved);
        json_u64(&j, "vmas-before", r->mappings_before);
        json_u64(&j, "vmas-after", r->mappings_after);
        json_end_object(&j);
        json_print(&j);
    } else if (!a->quiet) {
        printf("Image compacted: %" PRIu64 " clusters in %" PRIu64
               " runs moved; VMAs needed: %" PRIu64 " before, %" PRIu64
               " now.\n", r->clusters_moved, r->runs_moved,
               r->mappings_before, r->mappings_after);
    }
}

int img_compact(int argc, char **argv)
{
    CompactArgs a = { 0 };
    pcow_compact_result r;
    pcow_error err = { 0 };
    ImgBlk b;
    int ret;

    ret = compact_parse_args(argc, argv, &a);
    if (ret != 0) {
        return ret > 0 ? EXIT_OK : EXIT_ERR;
    }
    if (img_require_pcow(a.file) < 0 ||
        img_blk_open(&b, a.file, IMG_FMT_PCOW, IMG_OPEN_RDWR) < 0) {
        return EXIT_ERR;
    }
    ret = pcow_compact(b.img, &r, &err);
    if (ret == -EUCLEAN) {
        img_error(NULL, "%s; repair it with 'pcow-img check -r all' first",
                  err.msg);
    } else if (ret < 0) {
        img_pcow_error(a.file, &err, ret);
    }
    if (img_blk_close(&b) < 0 || ret < 0) {
        return EXIT_ERR;
    }
    compact_print(&a, &r);
    return EXIT_OK;
}
