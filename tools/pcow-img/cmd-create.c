/*
 * pcow-img create: a new pcow image or raw file
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
    /* pcow sizes are whole pages; past a raw base's end is zero. */
    *size = pcow_round_to_pages(*size);
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
