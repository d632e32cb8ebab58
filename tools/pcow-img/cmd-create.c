/*
 * pcow-img: create, measure, resize
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

#define KiB (1ULL << 10)
#define GiB (1ULL << 30)

static bool all_digits(const char *s)
{
    if (!*s) {
        return false;
    }
    for (; *s; s++) {
        if (*s < '0' || *s > '9') {
            return false;
        }
    }
    return true;
}

/* Where would @file live: the file itself if it exists, else its dir. */
static int probe_storage(const char *file, pcow_storage_info *si)
{
    g_autofree char *dir = NULL;
    pcow_error err = { 0 };

    memset(si, 0, sizeof(*si));
    if (access(file, F_OK) == 0) {
        return pcow_storage_probe(file, si, &err);
    }
    dir = g_path_get_dirname(file);
    return pcow_storage_probe(dir, si, &err);
}

/* Size of the base image for "create -b BASE FILE" without a size. */
static int backing_size(const char *file, const char *resolved,
                        ImgFormat fmt, uint64_t *size)
{
    ImgBlk b;
    int ret;

    ret = img_blk_open(&b, resolved, fmt, IMG_OPEN_NO_BACKING);
    if (ret < 0) {
        return ret;
    }
    *size = b.size;
    img_blk_close(&b);
    /* pcow sizes are whole 4 KiB pages; past a raw base's end is zero. */
    *size = (*size + 4095) & ~4095ULL;
    if (*size == 0) {
        img_error(file, "backing file '%s' is empty: give a size",
                  resolved);
        return -EINVAL;
    }
    return 0;
}

static const char create_help[] =
"usage: pcow-img create [-q] [-f pcow|raw] [-o OPTIONS] [-b BASE "
"[-F pcow|raw]] FILE [SIZE]\n"
"       pcow-img create CLUSTER_KIB SIZE_GIB FILE [BASE]\n"
"\n"
"Create a new image FILE of SIZE bytes (K, M, G, T suffixes).  With -b the\n"
"image is an overlay of BASE (a name relative to FILE's directory) and SIZE\n"
"defaults to the base's size.  The second form is the original tool's:\n"
"'create 64 128 x.pcow' makes a 128 GiB image with 64 KiB clusters\n"
"(CLUSTER_KIB: 4..2048, a power of two; it has no default).\n"
"\n"
"  -f FMT        format of FILE: pcow (default) or raw\n"
"  -o OPTIONS    cluster_size=SIZE|auto, cow_unit=SIZE, backing_file=BASE,\n"
"                backing_fmt=FMT (-o help lists them)\n"
"  -b BASE       base (backing) image\n"
"  -F FMT        format of BASE (default: probed)\n"
"  -q            quiet: do not print the 'Formatting' line\n";

static int create_raw(const char *file, uint64_t size, bool quiet)
{
    int fd;

    if (!quiet) {
        g_autofree char *efile = img_escape_text(file);

        printf("Formatting '%s', fmt=raw size=%" PRIu64 "\n", efile, size);
    }
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        img_error(file, "cannot create: %s", strerror(errno));
        return EXIT_ERR;
    }
    if (ftruncate(fd, size) < 0 || fsync(fd) < 0) {
        img_error(file, "cannot set size: %s", strerror(errno));
        close(fd);
        unlink(file);
        return EXIT_ERR;
    }
    close(fd);
    return EXIT_OK;
}

int img_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "quiet", no_argument, NULL, 'q' },
        { NULL, 0, NULL, 0 },
    };
    ImgCreateOpts o = { 0 };
    ImgFormat fmt = IMG_FMT_PCOW;
    ImgFormat base_fmt = IMG_FMT_NONE;
    const char *file, *size_str = NULL;
    g_autofree char *base = NULL;
    g_autofree char *resolved = NULL;
    pcow_create_opts co = { 0 };
    pcow_storage_info si;
    pcow_geometry g;
    pcow_error err = { 0 };
    uint64_t size = 0;
    bool quiet = false;
    int nargs, ret = EXIT_ERR, c;
    char **pos;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hqf:o:b:F:u", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(create_help, stdout);
            img_create_opts_free(&o);
            return EXIT_OK;
        case 'q':
            quiet = true;
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &fmt) < 0) {
                goto out;
            }
            break;
        case 'o':
            if (img_parse_create_opts(NULL, optarg, &o) < 0) {
                goto out;
            }
            break;
        case 'b':
            g_free(o.backing_file);
            o.backing_file = g_strdup(optarg);
            break;
        case 'F':
            g_free(o.backing_fmt);
            o.backing_fmt = g_strdup(optarg);
            break;
        case 'u':
            /* qemu-img compatibility: accepted, the base is still checked */
            break;
        default:
            img_bad_option("create", argv, c);
            goto out;
        }
    }
    if (o.help) {
        img_print_create_opts_help();
        ret = EXIT_OK;
        goto out;
    }

    pos = argv + optind;
    nargs = argc - optind;
    if ((nargs == 3 || nargs == 4) && all_digits(pos[0]) &&
        all_digits(pos[1])) {
        /* Legacy: create CLUSTER_KIB SIZE_GIB FILE [BASE] */
        uint64_t ckib, sgib;

        file = pos[2];
        if (pcow_parse_size(pos[0], &ckib) < 0 || ckib > (1u << 21) ||
            pcow_parse_size(pos[1], &sgib) < 0 || sgib > (UINT64_MAX >> 30)) {
            img_error(file, "invalid legacy arguments '%s %s' (expected "
                      "cluster size in KiB and size in GiB)", pos[0], pos[1]);
            goto out;
        }
        if (ckib == 0) {
            /* 0 is not "the default" here: the form always names it */
            img_error(file, "invalid cluster size 0 KiB in the legacy form "
                      "(give 4..2048, a power of two)");
            goto out;
        }
        o.cluster_size = (uint32_t)(ckib * KiB);
        o.cluster_size_auto = false;
        size = sgib * GiB;
        if (size == 0) {
            img_error(file, "image size must be greater than 0");
            goto out;
        }
        if (nargs == 4) {
            g_free(o.backing_file);
            o.backing_file = g_strdup(pos[3]);
        }
    } else if (nargs == 1 || nargs == 2) {
        file = pos[0];
        size_str = nargs == 2 ? pos[1] : NULL;
    } else {
        img_usage_error("create", nargs == 0 ? "missing file name" :
                        "too many arguments");
        goto out;
    }

    if (size_str) {
        if (img_parse_size(file, "size", size_str, &size) < 0) {
            goto out;
        }
        if (size == 0) {
            img_error(file, "image size must be greater than 0");
            goto out;
        }
    }
    if (access(file, F_OK) == 0) {
        img_error(file, "file exists (remove it first; create never "
                  "overwrites an image)");
        goto out;
    }

    if (fmt == IMG_FMT_RAW) {
        if (o.backing_file) {
            img_error(file, "raw images cannot have a backing file");
            goto out;
        }
        if (!size_str) {
            img_usage_error("create", "missing size");
            goto out;
        }
        ret = create_raw(file, size, quiet);
        goto out;
    }

    if (o.backing_file && !*o.backing_file) {
        g_free(o.backing_file);
        o.backing_file = NULL;
    }
    if (o.backing_fmt &&
        img_format_arg("-F", o.backing_fmt, &base_fmt) < 0) {
        goto out;
    }
    if (o.backing_fmt && !o.backing_file) {
        img_error(file, "-F/backing_fmt given without a backing file");
        goto out;
    }
    if (o.backing_file) {
        base = g_strdup(o.backing_file);
        if (strlen(base) > PCOW_MAX_BACKING_NAME) {
            img_error(file, "backing file name longer than %d bytes",
                      PCOW_MAX_BACKING_NAME);
            goto out;
        }
        resolved = img_resolve_backing(file, base);
        if (access(resolved, R_OK) < 0) {
            img_error(file, "cannot open backing file '%s': %s", resolved,
                      strerror(errno));
            goto out;
        }
        if (base_fmt == IMG_FMT_NONE) {
            base_fmt = pcow_probe(resolved) ? IMG_FMT_PCOW : IMG_FMT_RAW;
        }
        if (!size_str && size == 0 &&
            backing_size(file, resolved, base_fmt, &size) < 0) {
            goto out;
        }
    } else if (size == 0) {
        img_usage_error("create", "missing size");
        goto out;
    }

    if (o.cluster_size_auto) {
        if (probe_storage(file, &si) == 0 && si.suggested_cluster_size) {
            o.cluster_size = si.suggested_cluster_size;
        } else {
            o.cluster_size = 1u << PCOW_DEFAULT_CLUSTER_BITS;
        }
    }
    /* Refuse here what pcow_create would refuse, before "Formatting" */
    c = pcow_geometry_for(size, o.cluster_size, o.cow_unit, &g, &err);
    if (c < 0) {
        img_pcow_error(file, &err, c);
        goto out;
    }

    co.virtual_size = size;
    co.cluster_size = g.cluster_size;
    co.cow_unit = g.cow_unit;
    co.backing_file = base;
    co.backing_format = base_fmt == IMG_FMT_PCOW ? PCOW_BACKING_PCOW :
                        base_fmt == IMG_FMT_RAW ? PCOW_BACKING_RAW :
                        PCOW_BACKING_NONE;

    if (!quiet) {
        g_autofree char *efile = img_escape_text(file);

        printf("Formatting '%s', fmt=pcow size=%" PRIu64
               " cluster_size=%u cow_unit=%u", efile, size, g.cluster_size,
               g.cow_unit);
        if (base) {
            g_autofree char *ebase = img_escape_text(base);

            printf(" backing_file=%s backing_fmt=%s", ebase,
                   img_format_name(base_fmt));
        }
        printf("\n");
    }

    c = pcow_create(file, &co, &err);
    if (c < 0) {
        img_pcow_error(file, &err, c);
        goto out;
    }

    if (probe_storage(file, &si) == 0 && si.on_dax && si.has_namespace &&
        si.namespace_align && si.namespace_align != g.cluster_size) {
        printf("Hint: '%s' is on DAX namespace %s (mode %s) aligned to %"
               PRIu64 " bytes, but its cluster size is %u; -o "
               "cluster_size=auto matches the namespace\n", file,
               si.namespace_name, si.namespace_mode, si.namespace_align,
               g.cluster_size);
    }
    ret = EXIT_OK;

out:
    img_create_opts_free(&o);
    return ret;
}

/* --------------------------------------------------------------- measure */

/* The geometry of the pcow image measure describes, as create checks it */
static int measure_geometry(const char *src, uint64_t size,
                            const ImgCreateOpts *o, pcow_geometry *g)
{
    pcow_error err = { 0 };
    int ret = pcow_geometry_for(size, o->cluster_size, o->cow_unit, g, &err);

    if (ret < 0) {
        img_pcow_error(src, &err, ret);
    }
    return ret;
}

static const char measure_help[] =
"usage: pcow-img measure [-O pcow|raw] [-o cluster_size=SIZE] "
"[--output=human|json]\n"
"                        (--size SIZE | [-f FMT] [-U] SRC)\n"
"\n"
"Print the file size a new image needs: 'required size' for the data of\n"
"SRC (or an empty image of SIZE), 'fully allocated size' when every\n"
"cluster is written.  A size or geometry create would refuse is refused.\n";

int img_measure(int argc, char **argv)
{
    enum { OPT_SIZE = 256, OPT_OUTPUT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "size", required_argument, NULL, OPT_SIZE },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgCreateOpts o = { 0 };
    ImgFormat in_fmt = IMG_FMT_NONE, out_fmt = IMG_FMT_PCOW;
    const char *size_str = NULL, *src = NULL;
    bool json = false, force_share = false;
    uint64_t size = 0, required, fully;
    uint64_t data_clusters = 0, l2_tables = 0;
    pcow_geometry g = { 0 };
    int c, ret = EXIT_ERR;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hO:o:f:U", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(measure_help, stdout);
            return EXIT_OK;
        case 'O':
            if (img_format_arg("-O", optarg, &out_fmt) < 0) {
                goto out;
            }
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &in_fmt) < 0) {
                goto out;
            }
            break;
        case 'o':
            if (img_parse_create_opts(NULL, optarg, &o) < 0) {
                goto out;
            }
            break;
        case 'U':
            force_share = true;
            break;
        case OPT_SIZE:
            size_str = optarg;
            break;
        case OPT_OUTPUT:
            if (strcmp(optarg, "json") == 0) {
                json = true;
            } else if (strcmp(optarg, "human") != 0) {
                img_error(NULL, "measure: --output must be human or json");
                goto out;
            }
            break;
        default:
            img_bad_option("measure", argv, c);
            goto out;
        }
    }
    if (o.help) {
        img_print_create_opts_help();
        ret = EXIT_OK;
        goto out;
    }
    if (argc - optind > 1) {
        img_usage_error("measure", "too many arguments");
        goto out;
    }
    src = argc - optind == 1 ? argv[optind] : NULL;
    if (!!src == !!size_str) {
        img_usage_error("measure", "give either --size SIZE or a source "
                        "image, not both");
        goto out;
    }
    if (size_str) {
        if (img_parse_size(NULL, "size", size_str, &size) < 0) {
            goto out;
        }
        if (size == 0) {
            img_error(NULL, "measure: size must be greater than 0");
            goto out;
        }
    }
    if (o.cluster_size_auto) {
        o.cluster_size = 0;     /* the default: no file to probe yet */
    }
    /* Whatever create would refuse, measure refuses too */
    if (out_fmt == IMG_FMT_PCOW && size_str &&
        measure_geometry(NULL, size, &o, &g) < 0) {
        goto out;
    }

    if (src) {
        ImgBlk b;
        g_autofree uint8_t *buf = NULL;
        uint64_t cs, off = 0, last_l2 = UINT64_MAX;

        if (img_blk_open(&b, src, in_fmt, force_share ?
                         IMG_OPEN_FORCE_SHARE : 0) < 0) {
            goto out;
        }
        /* convert makes an image of the source's size in whole pages */
        size = (b.size + 4095) & ~4095ULL;
        if (out_fmt == IMG_FMT_PCOW &&
            measure_geometry(src, size, &o, &g) < 0) {
            img_blk_close(&b);
            goto out;
        }
        cs = g.cluster_size;
        buf = g_malloc(cs);
        /*
         * A cluster is needed when it holds any non-zero 4 KiB block.  Raw
         * output needs only the size (cs is 0 then).
         */
        while (out_fmt == IMG_FMT_PCOW && off < b.size) {
            uint64_t pnum;
            int st = img_blk_status(&b, off, cs - off % cs, &pnum);
            bool need = false;

            if (st < 0) {
                img_blk_close(&b);
                goto out;
            }
            if (st == 1) {
                if (img_blk_read(&b, off, buf, pnum) < 0) {
                    img_blk_close(&b);
                    goto out;
                }
                need = !img_is_zero(buf, pnum);
            }
            if (need) {
                uint64_t v = off / cs;

                data_clusters++;
                if (v / g.l2_entries != last_l2) {
                    last_l2 = v / g.l2_entries;
                    l2_tables++;
                }
                off = (v + 1) * cs;     /* next cluster */
            } else {
                off += pnum;
            }
        }
        img_blk_close(&b);
    }

    if (out_fmt == IMG_FMT_RAW) {
        required = size;
        fully = size;
    } else {
        required = g.empty_size +
                   (l2_tables + data_clusters) * g.cluster_size;
        fully = g.empty_size + (g.l1_size + g.clusters) * g.cluster_size;
    }

    if (json) {
        ImgJson j;

        json_init(&j);
        json_begin_object(&j, NULL);
        json_u64(&j, "required", required);
        json_u64(&j, "fully-allocated", fully);
        json_end_object(&j);
        json_print(&j);
    } else {
        printf("required size: %" PRIu64 "\n", required);
        printf("fully allocated size: %" PRIu64 "\n", fully);
    }
    ret = EXIT_OK;
out:
    img_create_opts_free(&o);
    return ret;
}

/* ---------------------------------------------------------------- resize */

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
    if (b.fmt == IMG_FMT_PCOW && new_size % 4096) {
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
