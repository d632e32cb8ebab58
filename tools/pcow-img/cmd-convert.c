/*
 * pcow-img: convert, compare
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
#define BLOCK 4096u

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
    uint64_t i = 0;

    if (!s->base) {
        s->written += len;
        return img_blk_write(s->dst, off, data, len);
    }
    if (img_blk_read(s->base, off, s->base_buf, len) < 0) {
        return -EIO;
    }
    while (i < len) {
        uint64_t j = i;

        while (j < len) {
            uint64_t bl = MIN(BLOCK - (off + j) % BLOCK, len - j);

            if (memcmp(data + j, s->base_buf + j, bl) == 0) {
                break;
            }
            j += bl;
        }
        if (j > i) {
            int ret = img_blk_write(s->dst, off + i, data + i, j - i);

            if (ret < 0) {
                return ret;
            }
            s->written += j - i;
            i = j;
        }
        if (i < len) {
            i += MIN(BLOCK - (off + i) % BLOCK, len - i);
        }
    }
    return 0;
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

int img_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgCreateOpts o = { 0 };
    ImgFormat in_fmt = IMG_FMT_NONE, out_fmt = IMG_FMT_RAW;
    ImgFormat base_fmt = IMG_FMT_NONE;
    bool no_create = false, progress = false, force_share = false;
    bool out_fmt_given = false, created = false;
    bool have_src = false, have_dst = false, have_base = false;
    const char *base = NULL, *src_name = NULL, *dst_name = NULL;
    g_autofree char *resolved = NULL;
    ImgBlk src, dst, base_blk;
    Convert s = { 0 };
    uint64_t size;
    int c, ret = EXIT_ERR;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hpnf:O:o:B:F:Uq", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(convert_help, stdout);
            return EXIT_OK;
        case 'p':
            progress = true;
            break;
        case 'n':
            no_create = true;
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &in_fmt) < 0) {
                goto out;
            }
            break;
        case 'O':
            if (img_format_arg("-O", optarg, &out_fmt) < 0) {
                goto out;
            }
            out_fmt_given = true;
            break;
        case 'o':
            if (img_parse_create_opts(NULL, optarg, &o) < 0) {
                goto out;
            }
            break;
        case 'B':
            base = optarg;
            break;
        case 'F':
            if (img_format_arg("-F", optarg, &base_fmt) < 0) {
                goto out;
            }
            break;
        case 'U':
            force_share = true;
            break;
        case 'q':
            progress = false;
            break;
        default:
            img_bad_option("convert", argv, c);
            goto out;
        }
    }
    if (o.help) {
        img_print_create_opts_help();
        ret = EXIT_OK;
        goto out;
    }
    if (argc - optind != 2) {
        img_usage_error("convert", "expecting SRC and DST");
        goto out;
    }
    src_name = argv[optind];
    dst_name = argv[optind + 1];
    if (o.backing_file && !base) {
        base = o.backing_file;
    }
    if (base && !*base) {
        base = NULL;
    }
    if (base && no_create) {
        img_error(dst_name, "-B cannot be used with -n (use rebase on the "
                  "existing image)");
        goto out;
    }
    if (base && out_fmt != IMG_FMT_PCOW) {
        img_error(dst_name, "-B needs -O pcow (raw images have no base)");
        goto out;
    }
    if (!no_create && access(dst_name, F_OK) == 0) {
        img_error(dst_name, "file exists (remove it, or use -n to write "
                  "into it)");
        goto out;
    }
    if (no_create && access(dst_name, F_OK) < 0) {
        img_error(dst_name, "cannot open target: %s", strerror(errno));
        goto out;
    }

    if (img_blk_open(&src, src_name, in_fmt, force_share ?
                     IMG_OPEN_FORCE_SHARE : 0) < 0) {
        goto out;
    }
    have_src = true;
    size = src.size;

    if (no_create) {
        bool itself;

        /* Checked before opening it: our own lock would say "in use" */
        if (img_blk_uses_file(&src, dst_name, &itself)) {
            if (itself) {
                img_error(dst_name, "source and target are the same file");
            } else {
                img_error(dst_name, "target is a backing file of the source "
                          "'%s': it would change while being read",
                          src_name);
            }
            goto out;
        }
        if (img_blk_open(&dst, dst_name, out_fmt_given ? out_fmt :
                         IMG_FMT_NONE, IMG_OPEN_RDWR) < 0) {
            goto out;
        }
        have_dst = true;
        if (dst.size < size) {
            img_error(dst_name, "target is smaller (%" PRIu64 " bytes) than "
                      "the source (%" PRIu64 " bytes)", dst.size, size);
            goto out;
        }
    } else if (out_fmt == IMG_FMT_PCOW) {
        pcow_create_opts co = { 0 };
        pcow_error err = { 0 };

        if (base) {
            resolved = img_resolve_backing(dst_name, base);
            if (img_blk_open(&base_blk, resolved, base_fmt, force_share ?
                             IMG_OPEN_FORCE_SHARE : 0) < 0) {
                goto out;
            }
            have_base = true;
            base_fmt = base_blk.fmt;
        }
        co.virtual_size = pcow_round_to_pages(size);
        if (co.virtual_size == 0) {
            img_error(src_name, "source is empty: nothing to convert");
            goto out;
        }
        if (o.cluster_size_auto) {
            pcow_storage_info si;
            g_autofree char *dir = g_path_get_dirname(dst_name);

            memset(&si, 0, sizeof(si));
            if (pcow_storage_probe(dir, &si, &err) == 0) {
                o.cluster_size = si.suggested_cluster_size;
            }
        }
        co.cluster_size = o.cluster_size;
        co.cow_unit = o.cow_unit;
        co.backing_file = base;
        co.backing_format = !base ? PCOW_BACKING_NONE :
                            base_fmt == IMG_FMT_RAW ? PCOW_BACKING_RAW :
                            PCOW_BACKING_PCOW;
        c = pcow_create(dst_name, &co, &err);
        if (c < 0) {
            img_pcow_error(dst_name, &err, c);
            goto out;
        }
        created = true;
        if (img_blk_open(&dst, dst_name, IMG_FMT_PCOW, IMG_OPEN_RDWR) < 0) {
            goto out;
        }
        have_dst = true;
    } else {
        int fd = open(dst_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                      0644);

        if (fd < 0) {
            img_error(dst_name, "cannot create: %s", strerror(errno));
            goto out;
        }
        created = true;
        if (ftruncate(fd, size) < 0) {
            img_error(dst_name, "cannot set size to %" PRIu64 ": %s", size,
                      strerror(errno));
            close(fd);
            goto out;
        }
        close(fd);
        if (img_blk_open(&dst, dst_name, IMG_FMT_RAW, IMG_OPEN_RDWR) < 0) {
            goto out;
        }
        have_dst = true;
    }

    s.src = &src;
    s.dst = &dst;
    s.base = have_base ? &base_blk : NULL;
    s.fresh = created;
    s.progress = progress;
    s.last_pct = -1;
    s.buf = g_malloc(CHUNK);
    s.base_buf = g_malloc(CHUNK);
    c = convert_run(&s);
    g_free(s.buf);
    g_free(s.base_buf);
    if (c < 0) {
        goto out;
    }
    if (img_blk_flush(&dst) < 0) {
        goto out;
    }
    have_dst = false;
    if (img_blk_close(&dst) < 0) {
        goto out;
    }
    ret = EXIT_OK;

out:
    if (have_dst) {
        img_blk_close(&dst);
    }
    if (have_base) {
        img_blk_close(&base_blk);
    }
    if (have_src) {
        img_blk_close(&src);
    }
    if (ret != EXIT_OK && created) {
        /* Leave nothing half-written behind. */
        unlink(dst_name);
    }
    img_create_opts_free(&o);
    return ret;
}

/* --------------------------------------------------------------- compare */

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

int img_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgFormat fa = IMG_FMT_NONE, fb = IMG_FMT_NONE;
    bool strict = false, force_share = false, quiet = false;
    g_autofree uint8_t *ba = NULL, *bb = NULL;
    ImgBlk a, b;
    uint64_t off = 0, common, where = 0;
    unsigned flags;
    int c, ret = CMP_ERR;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:sUqp", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(compare_help, stdout);
            return CMP_SAME;
        case 'f':
            if (img_format_arg("-f", optarg, &fa) < 0) {
                return CMP_ERR;
            }
            break;
        case 'F':
            if (img_format_arg("-F", optarg, &fb) < 0) {
                return CMP_ERR;
            }
            break;
        case 's':
            strict = true;
            break;
        case 'U':
            force_share = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'p':
            break;
        default:
            img_bad_option("compare", argv, c);
            return CMP_ERR;
        }
    }
    if (argc - optind != 2) {
        img_usage_error("compare", "expecting two file names");
        return CMP_ERR;
    }
    flags = force_share ? IMG_OPEN_FORCE_SHARE : 0;
    if (img_blk_open(&a, argv[optind], fa, flags) < 0) {
        return CMP_ERR;
    }
    if (img_blk_open(&b, argv[optind + 1], fb, flags) < 0) {
        img_blk_close(&a);
        return CMP_ERR;
    }
    ba = g_malloc(CHUNK);
    bb = g_malloc(CHUNK);

    if (strict && a.size != b.size) {
        if (!quiet) {
            printf("Strict mode: Image size mismatch!\n");
        }
        ret = CMP_DIFF;
        goto out;
    }
    common = MIN(a.size, b.size);
    while (off < common) {
        uint64_t n = MIN(common - off, CHUNK - off % CHUNK), pa, pb;
        int sa = img_blk_status(&a, off, n, &pa);
        int sb = img_blk_status(&b, off, n, &pb);

        if (sa < 0 || sb < 0) {
            goto out;
        }
        pa = MIN(MAX(pa, 1), n);
        pb = MIN(MAX(pb, 1), n);
        if (sa == 0 && sb == 0) {
            off += MIN(pa, pb);
            continue;
        }
        if (img_blk_read(&a, off, ba, n) < 0 ||
            img_blk_read(&b, off, bb, n) < 0) {
            goto out;
        }
        if (memcmp(ba, bb, n) != 0) {
            for (uint64_t i = 0; i < n; i++) {
                if (ba[i] != bb[i]) {
                    if (!quiet) {
                        printf("Content mismatch at offset %" PRIu64 "!\n",
                               off + i);
                    }
                    break;
                }
            }
            ret = CMP_DIFF;
            goto out;
        }
        off += n;
    }
    if (a.size != b.size) {
        ImgBlk *big = a.size > b.size ? &a : &b;
        int z;

        if (!quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        z = check_zero_tail(big, common, big->size, ba, &where);
        if (z < 0) {
            goto out;
        }
        if (z > 0) {
            if (!quiet) {
                printf("Content mismatch at offset %" PRIu64 "!\n", where);
            }
            ret = CMP_DIFF;
            goto out;
        }
    }
    if (!quiet) {
        printf("Images are identical.\n");
    }
    ret = CMP_SAME;

out:
    img_blk_close(&b);
    img_blk_close(&a);
    return ret;
}
