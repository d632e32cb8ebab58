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

typedef struct CreateArgs {
    ImgCreateOpts o;
    ImgFormat fmt;
    const char *file;
    const char *size_str;
    uint64_t size;
    bool quiet;
} CreateArgs;

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

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int create_parse_options(int argc, char **argv, CreateArgs *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "quiet", no_argument, NULL, 'q' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hqf:o:b:F:u", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(create_help, stdout);
            return 1;
        case 'q':
            a->quiet = true;
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &a->fmt) < 0) {
                return -1;
            }
            break;
        case 'o':
            if (img_parse_create_opts(NULL, optarg, &a->o) < 0) {
                return -1;
            }
            break;
        case 'b':
            g_free(a->o.backing_file);
            a->o.backing_file = g_strdup(optarg);
            break;
        case 'F':
            g_free(a->o.backing_fmt);
            a->o.backing_fmt = g_strdup(optarg);
            break;
        case 'u':
            /* qemu-img compatibility: accepted, the base is still checked */
            break;
        default:
            img_bad_option("create", argv, c);
            return -1;
        }
    }
    if (a->o.help) {
        img_print_create_opts_help();
        return 1;
    }
    return 0;
}

/* The original tool's form: create CLUSTER_KIB SIZE_GIB FILE [BASE] */
static int create_parse_legacy(char **pos, int nargs, CreateArgs *a)
{
    uint64_t ckib, sgib;

    a->file = pos[2];
    /* (1 << 21 KiB keeps the cluster size in 32 bits; libpcow checks it) */
    if (pcow_parse_size(pos[0], &ckib) < 0 || ckib > (1u << 21) ||
        pcow_parse_size(pos[1], &sgib) < 0 || sgib > (UINT64_MAX >> 30)) {
        img_error(a->file, "invalid legacy arguments '%s %s' (expected "
                  "cluster size in KiB and size in GiB)", pos[0], pos[1]);
        return -1;
    }
    if (ckib == 0) {
        /* 0 is not "the default" here: the form always names it */
        img_error(a->file, "invalid cluster size 0 KiB in the legacy form "
                  "(give %u..%u, a power of two)",
                  1u << (PCOW_MIN_CLUSTER_BITS - 10),
                  1u << (PCOW_MAX_CLUSTER_BITS - 10));
        return -1;
    }
    a->o.cluster_size = (uint32_t)(ckib * KiB);
    a->o.cluster_size_auto = false;
    a->size = sgib * GiB;
    if (a->size == 0) {
        img_error(a->file, "image size must be greater than 0");
        return -1;
    }
    if (nargs == 4) {
        g_free(a->o.backing_file);
        a->o.backing_file = g_strdup(pos[3]);
    }
    return 0;
}

/* FILE and SIZE (either form); never an existing file */
static int create_parse_args(int argc, char **argv, CreateArgs *a)
{
    char **pos = argv + optind;
    int nargs = argc - optind;

    if ((nargs == 3 || nargs == 4) && all_digits(pos[0]) &&
        all_digits(pos[1])) {
        if (create_parse_legacy(pos, nargs, a) < 0) {
            return -1;
        }
    } else if (nargs == 1 || nargs == 2) {
        a->file = pos[0];
        a->size_str = nargs == 2 ? pos[1] : NULL;
    } else {
        img_usage_error("create", nargs == 0 ? "missing file name" :
                        "too many arguments");
        return -1;
    }
    if (a->size_str) {
        if (img_parse_size(a->file, "size", a->size_str, &a->size) < 0) {
            return -1;
        }
        if (a->size == 0) {
            img_error(a->file, "image size must be greater than 0");
            return -1;
        }
    }
    if (access(a->file, F_OK) == 0) {
        img_error(a->file, "file exists (remove it first; create never "
                  "overwrites an image)");
        return -1;
    }
    return 0;
}

static int create_raw(const CreateArgs *a)
{
    int fd;

    if (a->o.backing_file) {
        img_error(a->file, "raw images cannot have a backing file");
        return EXIT_ERR;
    }
    if (!a->size_str) {
        img_usage_error("create", "missing size");
        return EXIT_ERR;
    }
    if (!a->quiet) {
        g_autofree char *efile = pcow_escape_text(a->file);

        printf("Formatting '%s', fmt=raw size=%" PRIu64 "\n", efile,
               a->size);
    }
    fd = open(a->file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        img_error(a->file, "cannot create: %s", strerror(errno));
        return EXIT_ERR;
    }
    if (ftruncate(fd, a->size) < 0 || fsync(fd) < 0) {
        img_error(a->file, "cannot set size: %s", strerror(errno));
        close(fd);
        unlink(a->file);
        return EXIT_ERR;
    }
    close(fd);
    return EXIT_OK;
}

/* "Formatting ..." once libpcow has settled and checked everything */
static void announce_formatting(void *opaque, const pcow_create_opts *co)
{
    const CreateArgs *a = opaque;
    g_autofree char *efile = pcow_escape_text(a->file);

    if (a->quiet) {
        return;
    }
    printf("Formatting '%s', fmt=pcow size=%" PRIu64
           " cluster_size=%u cow_unit=%u", efile, co->virtual_size,
           co->cluster_size, co->cow_unit);
    if (co->backing_file) {
        g_autofree char *ebase = pcow_escape_text(co->backing_file);

        printf(" backing_file=%s backing_fmt=%s", ebase,
               co->backing_format == PCOW_BACKING_PCOW ? "pcow" : "raw");
    }
    printf("\n");
}

/* On a DAX namespace whose alignment the cluster size does not match */
static void hint_namespace_align(const char *file,
                                 const pcow_storage_info *si,
                                 uint32_t cluster_size)
{
    if (si->on_dax && si->has_namespace && si->namespace_align &&
        si->namespace_align != cluster_size) {
        printf("Hint: '%s' is on DAX namespace %s (mode %s) aligned to %"
               PRIu64 " bytes, but its cluster size is %u; -o "
               "cluster_size=auto matches the namespace\n", file,
               si->namespace_name, si->namespace_mode, si->namespace_align,
               cluster_size);
    }
}

/* The request for libpcow: -F and a size (or a base to take it from) */
static int create_request(const CreateArgs *a, pcow_create_request *req)
{
    ImgFormat base_fmt = IMG_FMT_NONE;
    bool has_base = a->o.backing_file && *a->o.backing_file;

    if (a->o.backing_fmt &&
        img_format_arg("-F", a->o.backing_fmt, &base_fmt) < 0) {
        return -1;
    }
    if (a->o.backing_fmt && !has_base) {
        img_error(a->file, "-F/backing_fmt given without a backing file");
        return -1;
    }
    if (!has_base && a->size == 0) {
        img_usage_error("create", "missing size");
        return -1;
    }
    memset(req, 0, sizeof(*req));
    req->virtual_size = a->size;
    req->cluster_size = a->o.cluster_size;
    req->cluster_size_auto = a->o.cluster_size_auto;
    req->cow_unit = a->o.cow_unit;
    req->backing_file = has_base ? a->o.backing_file : NULL;
    req->backing_format = img_backing_format(base_fmt);
    req->announce = announce_formatting;
    req->opaque = (void *)a;
    return 0;
}

static int create_pcow(const CreateArgs *a)
{
    pcow_create_request req;
    pcow_create_result res;
    pcow_error err = { 0 };
    int ret;

    if (create_request(a, &req) < 0) {
        return EXIT_ERR;
    }
    ret = pcow_create_image(a->file, &req, &res, &err);
    if (ret < 0) {
        img_pcow_error(a->file, &err, ret);
        return EXIT_ERR;
    }
    hint_namespace_align(a->file, &res.storage, res.opts.cluster_size);
    return EXIT_OK;
}

int img_create(int argc, char **argv)
{
    CreateArgs a = { .fmt = IMG_FMT_PCOW };
    int ret = EXIT_ERR, c;

    c = create_parse_options(argc, argv, &a);
    if (c != 0) {
        ret = c > 0 ? EXIT_OK : EXIT_ERR;
        goto out;
    }
    if (create_parse_args(argc, argv, &a) < 0) {
        goto out;
    }
    if (a.fmt == IMG_FMT_RAW) {
        ret = create_raw(&a);
    } else {
        ret = create_pcow(&a);
    }
out:
    img_create_opts_free(&a.o);
    return ret;
}
