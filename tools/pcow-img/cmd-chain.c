/*
 * pcow-img: rebase, commit
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <unistd.h>

#include "pcow-img.h"

#define CHUNK (1u << 20)
#define BLOCK 4096u

static pcow_backing_format to_backing_format(ImgFormat f)
{
    switch (f) {
    case IMG_FMT_PCOW:
        return PCOW_BACKING_PCOW;
    case IMG_FMT_RAW:
        return PCOW_BACKING_RAW;
    default:
        return PCOW_BACKING_NONE;
    }
}

/* ---------------------------------------------------------------- rebase */

/*
 * Safe rebase: make every range of @img that FILE does not allocate itself
 * read the same through @new_base (NULL: zeros) as it does now through the
 * old chain, by copying the old content into @img where they differ.
 */
static int rebase_copy(ImgBlk *img, ImgBlk *new_base, bool progress)
{
    g_autofree uint8_t *old_buf = g_malloc(CHUNK);
    g_autofree uint8_t *new_buf = g_malloc(CHUNK);
    uint64_t size = img->size, off = 0, copied = 0;
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
            uint64_t pnum = 0;
            int st = 1;

            if (ext.kind == PCOW_EXTENT_HOLE) {
                /* Old content is zeros: skip if the new base is too. */
                if (!new_base) {
                    off += n;
                    continue;
                }
                st = img_blk_status(new_base, off, n, &pnum);
                if (st < 0) {
                    return st;
                }
                if (st == 0) {
                    off += pnum;
                    continue;
                }
                n = pnum;
            }
            ret = img_blk_read(img, off, old_buf, n);
            if (ret < 0) {
                return ret;
            }
            if (new_base) {
                ret = img_blk_read(new_base, off, new_buf, n);
                if (ret < 0) {
                    return ret;
                }
            } else {
                memset(new_buf, 0, n);
            }
            for (uint64_t i = 0; i < n; ) {
                uint64_t j = i;

                /* A run of differing blocks is written with one call. */
                while (j < n) {
                    uint64_t bl = MIN(BLOCK - (off + j) % BLOCK, n - j);

                    if (memcmp(old_buf + j, new_buf + j, bl) == 0) {
                        break;
                    }
                    j += bl;
                }
                if (j > i) {
                    ret = img_blk_write(img, off + i, old_buf + i, j - i);
                    if (ret < 0) {
                        return ret;
                    }
                    copied += j - i;
                    i = j;
                }
                if (i < n) {
                    /* The block at i is the same in both: skip it. */
                    i += MIN(BLOCK - (off + i) % BLOCK, n - i);
                }
            }
            off += n;
            if (progress) {
                int pct = (int)(off * 100 / size);

                if (pct != last_pct) {
                    printf("    (%d.00/100%%)\r", pct);
                    fflush(stdout);
                    last_pct = pct;
                }
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

int img_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgFormat base_fmt = IMG_FMT_NONE;
    const char *base = NULL, *file;
    g_autofree char *resolved = NULL;
    bool unsafe = false, force_share = false, progress = false;
    ImgBlk img, nb;
    bool have_nb = false;
    pcow_error err = { 0 };
    int c, ret;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hub:F:Upf:q", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(rebase_help, stdout);
            return EXIT_OK;
        case 'u':
            unsafe = true;
            break;
        case 'b':
            base = optarg;
            break;
        case 'F':
            if (img_format_arg("-F", optarg, &base_fmt) < 0) {
                return EXIT_ERR;
            }
            break;
        case 'U':
            force_share = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "rebase: only pcow images have a base");
                return EXIT_ERR;
            }
            break;
        default:
            img_bad_option("rebase", argv, c);
            return EXIT_ERR;
        }
    }
    if (argc - optind != 1) {
        return img_usage_error("rebase", "expecting one file name");
    }
    file = argv[optind];
    if (!base) {
        return img_usage_error("rebase", "-b BASE is required (-b '' "
                               "removes the base)");
    }
    if (strlen(base) > PCOW_MAX_BACKING_NAME) {
        img_error(file, "backing file name longer than %d bytes",
                  PCOW_MAX_BACKING_NAME);
        return EXIT_ERR;
    }
    if (img_require_pcow(file) < 0) {
        return EXIT_ERR;
    }

    if (*base) {
        resolved = img_resolve_backing(file, base);
        if (access(resolved, F_OK) < 0) {
            if (!unsafe) {
                img_error(file, "cannot open new backing file '%s': %s",
                          resolved, strerror(errno));
                return EXIT_ERR;
            }
            if (base_fmt == IMG_FMT_NONE) {
                img_error(file, "new backing file '%s' does not exist: give "
                          "its format with -F", resolved);
                return EXIT_ERR;
            }
        } else if (base_fmt == IMG_FMT_NONE) {
            base_fmt = pcow_probe(resolved) ? IMG_FMT_PCOW : IMG_FMT_RAW;
        }
    } else if (base_fmt != IMG_FMT_NONE) {
        img_error(file, "-F given without a backing file");
        return EXIT_ERR;
    }

    if (img_blk_open(&img, file, IMG_FMT_PCOW, IMG_OPEN_RDWR |
                     (unsafe ? IMG_OPEN_NO_BACKING : 0)) < 0) {
        return EXIT_ERR;
    }
    if (!unsafe) {
        pcow_info *info = g_new0(pcow_info, 1);
        uint32_t nsn;

        /*
         * Snapshots read what they do not hold through the base too, and
         * their tables cannot be given copies: a safe rebase could not
         * keep their content.
         */
        pcow_get_info(img.img, info);
        nsn = info->nb_snapshots;
        g_free(info);
        if (nsn) {
            img_error(file, "has %u snapshot%s whose content would change; "
                      "delete %s or use -u", nsn, nsn > 1 ? "s" : "",
                      nsn > 1 ? "them" : "it");
            goto fail;
        }
        if (resolved) {
            /* Checked unlocked first: a loop would look like "in use" */
            ret = pcow_check_backing(img.img, base,
                                     to_backing_format(base_fmt), &err);
            if (ret < 0) {
                img_pcow_error(file, &err, ret);
                goto fail;
            }
            if (img_blk_open(&nb, resolved, base_fmt,
                             force_share ? IMG_OPEN_FORCE_SHARE : 0) < 0) {
                goto fail;
            }
            have_nb = true;
        }
        if (rebase_copy(&img, have_nb ? &nb : NULL, progress) < 0) {
            goto fail;
        }
        if (img_blk_flush(&img) < 0) {
            goto fail;
        }
    }

    ret = pcow_set_backing(img.img, *base ? base : NULL,
                           to_backing_format(base_fmt), &err);
    if (ret < 0) {
        img_pcow_error(file, &err, ret);
        goto fail;
    }
    if (have_nb) {
        img_blk_close(&nb);
    }
    if (img_blk_close(&img) < 0) {
        return EXIT_ERR;
    }
    return EXIT_OK;

fail:
    if (have_nb) {
        img_blk_close(&nb);
    }
    img_blk_close(&img);
    return EXIT_ERR;
}

/* ---------------------------------------------------------------- commit */

typedef struct Range {
    uint64_t off, len;
} Range;

static const char commit_help[] =
"usage: pcow-img commit [-d] [-p] FILE\n"
"\n"
"Write the data FILE holds itself (its active layer) into its base image,\n"
"then empty FILE so that it reads through to the base again.  With -d FILE\n"
"is left as it is.  The base is opened read-write for the duration.\n"
"Other images based on the same base, and snapshots of FILE, see the\n"
"base's new content where they do not hold data themselves.\n";

int img_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    bool keep = false, progress = false;
    const char *file;
    pcow_info *info = NULL;
    g_autofree uint8_t *buf = NULL;
    GArray *ranges = NULL;
    ImgBlk img, base;
    bool have_base = false;
    pcow_error err = { 0 };
    uint64_t off = 0, size, cs, total = 0;
    int c, ret;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hdpqf:", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(commit_help, stdout);
            return EXIT_OK;
        case 'd':
            keep = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "commit: only pcow images have a base");
                return EXIT_ERR;
            }
            break;
        default:
            img_bad_option("commit", argv, c);
            return EXIT_ERR;
        }
    }
    if (argc - optind != 1) {
        return img_usage_error("commit", "expecting one file name");
    }
    file = argv[optind];
    if (img_require_pcow(file) < 0) {
        return EXIT_ERR;
    }

    /*
     * FILE is opened without its chain, so that it holds no lock on the
     * base, which is then opened read-write on its own.
     */
    if (img_blk_open(&img, file, IMG_FMT_PCOW, IMG_OPEN_NO_BACKING |
                     (keep ? 0 : IMG_OPEN_RDWR)) < 0) {
        return EXIT_ERR;
    }
    info = g_new0(pcow_info, 1);
    pcow_get_info(img.img, info);
    if (info->backing_format == PCOW_BACKING_NONE) {
        img_error(file, "image has no backing file to commit into");
        goto fail;
    }
    /*
     * A chain that leads back to FILE would otherwise fail on FILE's own
     * lock, reported as "in use by another process".
     */
    ret = pcow_check_backing(img.img, info->backing_file,
                             info->backing_format, &err);
    if (ret < 0) {
        img_pcow_error(file, &err, ret);
        goto fail;
    }
    /*
     * FILE's limit is cleared after the base is written: know now that it
     * can be, or a failed commit would have changed the base.
     */
    if (!keep && info->backing_limit) {
        ret = pcow_can_commit_header(img.img, &err);
        if (ret < 0) {
            img_pcow_error(file, &err, ret);
            goto fail;
        }
    }
    if (img_blk_open(&base, info->backing_path,
                     info->backing_format == PCOW_BACKING_RAW ?
                     IMG_FMT_RAW : IMG_FMT_PCOW, IMG_OPEN_RDWR) < 0) {
        goto fail;
    }
    have_base = true;

    size = img.size;
    cs = pcow_cluster_size(img.img);
    if (base.size < size) {
        /* The base grows to the overlay's size (qemu-img does the same). */
        if (base.fmt == IMG_FMT_PCOW) {
            pcow_error err = { 0 };

            ret = pcow_resize(base.img, size, false, &err);
            if (ret < 0) {
                img_pcow_error(base.filename, &err, ret);
                goto fail;
            }
        } else if (ftruncate(base.fd, size) < 0) {
            img_error(base.filename, "cannot grow to %" PRIu64 " bytes: %s",
                      size, strerror(errno));
            goto fail;
        }
        base.size = size;
    }

    buf = g_malloc(CHUNK);
    ranges = g_array_new(FALSE, FALSE, sizeof(Range));
    while (off < size) {
        pcow_extent ext;
        uint64_t end;

        ret = pcow_get_extent(img.img, off, size - off, &ext);
        if (ret < 0) {
            img_error(file, "cannot get extent at offset %" PRIu64 ": %s",
                      off, strerror(-ret));
            goto fail;
        }
        if (ext.length == 0) {
            img_error(file, "empty extent at offset %" PRIu64, off);
            goto fail;
        }
        end = off + MIN(ext.length, size - off);
        if (ext.kind == PCOW_EXTENT_DATA && ext.depth == 0) {
            /*
             * Empty whole clusters afterwards: once this data is in the
             * base, the rest of each touched cluster (data of FILE, also
             * committed, or what FILE reads from the base) reads the same
             * from the base.  FILE is open without its chain, so zeroing a
             * whole cluster unmaps it instead of hiding the base.
             */
            Range r;
            Range *last = ranges->len ?
                          &g_array_index(ranges, Range, ranges->len - 1) :
                          NULL;

            r.off = off & ~(cs - 1);
            r.len = MIN(DIV_ROUND_UP(end, cs) * cs, size) - r.off;
            if (last && last->off + last->len >= r.off) {
                last->len = MAX(last->off + last->len, r.off + r.len) -
                            last->off;
            } else {
                g_array_append_val(ranges, r);
            }
            while (off < end) {
                uint64_t n = MIN(end - off, CHUNK);

                if (img_blk_read(&img, off, buf, n) < 0 ||
                    img_blk_write(&base, off, buf, n) < 0) {
                    goto fail;
                }
                total += n;
                off += n;
            }
            if (progress) {
                printf("    (%.2f/100%%)\r", 100.0 * off / size);
                fflush(stdout);
            }
        } else if (info->backing_limit && end > info->backing_limit) {
            /*
             * Past FILE's backing limit the base does not show: FILE
             * reads zeros there, so the base must too.
             */
            uint64_t from = MAX(off, info->backing_limit);

            if (img_blk_zero(&base, from, end - from) < 0) {
                goto fail;
            }
        }
        off = end;
    }
    if (progress) {
        printf("    (100.00/100%%)\n");
    }
    /* The base must hold the data durably before FILE lets go of it. */
    if (img_blk_flush(&base) < 0) {
        goto fail;
    }
    have_base = false;
    if (img_blk_close(&base) < 0) {
        goto fail;
    }

    if (!keep) {
        if (info->backing_limit) {
            pcow_error err = { 0 };

            /* The base now reads what FILE shows past its limit: zeros */
            ret = pcow_set_backing_limit(img.img, 0, &err);
            if (ret < 0) {
                img_pcow_error(file, &err, ret);
                goto fail;
            }
        }
        for (guint i = 0; i < ranges->len; i++) {
            Range *r = &g_array_index(ranges, Range, i);

            if (img_blk_zero(&img, r->off, r->len) < 0) {
                goto fail;
            }
        }
    }
    g_array_free(ranges, TRUE);
    g_free(info);
    if (img_blk_close(&img) < 0) {
        return EXIT_ERR;
    }
    printf("Image committed.\n");
    return EXIT_OK;

fail:
    if (ranges) {
        g_array_free(ranges, TRUE);
    }
    g_free(info);
    if (have_base) {
        img_blk_close(&base);
    }
    img_blk_close(&img);
    return EXIT_ERR;
}
