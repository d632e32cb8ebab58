/*
 * pcow-img compare: do two images show the same content?
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <getopt.h>
#include <string.h>

#include "pcow-img.h"

#define CHUNK (1u << 20)

#define CMP_SAME 0
#define CMP_DIFF 1
#define CMP_ERR  2

/* Is [off, off + len) of @b all zero?  *where receives the first non-zero */
static int check_zero_tail(ImgBlk *b, uint64_t off, uint64_t end,
                           uint8_t *buf, uint64_t *where)
{
    while (off < end) {
        uint64_t n = MIN(end - off, CHUNK - off % CHUNK), pnum;
        int st = img_blk_status(b, off, n, &pnum);

        if (st < 0) {
            return st;
        }
        pnum = MIN(MAX(pnum, 1), n);
        if (st == 1) {
            if (img_blk_read(b, off, buf, pnum) < 0) {
                return -EIO;
            }
            for (uint64_t i = 0; i < pnum; i++) {
                if (buf[i]) {
                    *where = off + i;
                    return 1;
                }
            }
        }
        off += pnum;
    }
    return 0;
}

static const char compare_help[] =
"usage: pcow-img compare [-s] [-U] [-f FMT] [-F FMT] A B\n"
"\n"
"Compare the guest-visible content of two images.  Exit status: 0 the\n"
"same, 1 different (the first differing offset is printed), 2 error.\n"
"Without -s, images of different sizes are the same when the extra part\n"
"of the larger one reads as zeros.\n";

typedef struct CompareArgs {
    ImgFormat fa, fb;
    bool strict, force_share, quiet;
} CompareArgs;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int compare_parse_options(int argc, char **argv, CompareArgs *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:sUqp", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(compare_help, stdout);
            return 1;
        case 'f':
            if (img_format_arg("-f", optarg, &a->fa) < 0) {
                return -1;
            }
            break;
        case 'F':
            if (img_format_arg("-F", optarg, &a->fb) < 0) {
                return -1;
            }
            break;
        case 's':
            a->strict = true;
            break;
        case 'U':
            a->force_share = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'p':
            break;
        default:
            img_bad_option("compare", argv, c);
            return -1;
        }
    }
    if (argc - optind != 2) {
        img_usage_error("compare", "expecting two file names");
        return -1;
    }
    return 0;
}

/* Compare [0, common): CMP_SAME, CMP_DIFF (*where set) or CMP_ERR */
static int compare_common(ImgBlk *a, ImgBlk *b, uint64_t common,
                          uint8_t *ba, uint8_t *bb, uint64_t *where)
{
    uint64_t off = 0;

    while (off < common) {
        uint64_t n = MIN(common - off, CHUNK - off % CHUNK), pa, pb;
        int sa = img_blk_status(a, off, n, &pa);
        int sb = img_blk_status(b, off, n, &pb);

        if (sa < 0 || sb < 0) {
            return CMP_ERR;
        }
        pa = MIN(MAX(pa, 1), n);
        pb = MIN(MAX(pb, 1), n);
        if (sa == 0 && sb == 0) {
            off += MIN(pa, pb);
            continue;
        }
        if (img_blk_read(a, off, ba, n) < 0 ||
            img_blk_read(b, off, bb, n) < 0) {
            return CMP_ERR;
        }
        if (memcmp(ba, bb, n) != 0) {
            uint64_t i = 0;

            while (ba[i] == bb[i]) {
                i++;
            }
            *where = off + i;
            return CMP_DIFF;
        }
        off += n;
    }
    return CMP_SAME;
}

static int compare_images(const CompareArgs *c, ImgBlk *a, ImgBlk *b)
{
    g_autofree uint8_t *ba = g_malloc(CHUNK);
    g_autofree uint8_t *bb = g_malloc(CHUNK);
    uint64_t common = MIN(a->size, b->size), where = 0;
    ImgBlk *big = a->size > b->size ? a : b;
    int ret;

    if (c->strict && a->size != b->size) {
        if (!c->quiet) {
            printf("Strict mode: Image size mismatch!\n");
        }
        return CMP_DIFF;
    }
    ret = compare_common(a, b, common, ba, bb, &where);
    if (ret == CMP_SAME && a->size != b->size) {
        if (!c->quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        ret = check_zero_tail(big, common, big->size, ba, &where);
        ret = ret < 0 ? CMP_ERR : ret > 0 ? CMP_DIFF : CMP_SAME;
    }
    if (c->quiet || ret == CMP_ERR) {
        return ret;
    }
    if (ret == CMP_DIFF) {
        printf("Content mismatch at offset %" PRIu64 "!\n", where);
    } else {
        printf("Images are identical.\n");
    }
    return ret;
}

int img_compare(int argc, char **argv)
{
    CompareArgs c = { .fa = IMG_FMT_NONE, .fb = IMG_FMT_NONE };
    unsigned flags;
    ImgBlk a, b;
    int ret;

    ret = compare_parse_options(argc, argv, &c);
    if (ret != 0) {
        return ret > 0 ? CMP_SAME : CMP_ERR;
    }
    flags = c.force_share ? IMG_OPEN_FORCE_SHARE : 0;
    if (img_blk_open(&a, argv[optind], c.fa, flags) < 0) {
        return CMP_ERR;
    }
    if (img_blk_open(&b, argv[optind + 1], c.fb, flags) < 0) {
        img_blk_close(&a);
        return CMP_ERR;
    }
    ret = compare_images(&c, &a, &b);
    img_blk_close(&b);
    img_blk_close(&a);
    return ret;
}
