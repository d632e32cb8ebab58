/*
 * pcow-img info: describe an image (or its whole backing chain)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-img.h"

/* What pcow-img info says of one pcow image */
typedef struct PcowDesc {
    const char *path;
    bool force_share;
    pcow_info *info;
    pcow_snapshot_info *sn;
    int nsn;
    pcow_storage_info si;
    bool have_si;
    uint64_t vmas;              /* mappings the Image Monitor needs */
    int vmas_ret;               /* 0, or why they are unknown: */
    pcow_error vmas_err;
    uint64_t stamp;             /* the hot line's state stamp, 0: unknown */
    char snap_name[PCOW_MAX_SNAPSHOT_NAME + 1]; /* a clone's base snapshot */
    ImgUsers users;             /* the processes that have it open */
    int users_ret;              /* 0, or why they are unknown */
} PcowDesc;

static const char *persist_name(pcow_persist_method m)
{
    return m == PCOW_PERSIST_PMEM ? "CPU cache flush (libpmem)" :
                                    "msync/fdatasync";
}

static const char *backing_fmt_name(pcow_backing_format f)
{
    switch (f) {
    case PCOW_BACKING_PCOW:
        return "pcow";
    case PCOW_BACKING_RAW:
        return "raw";
    default:
        return "";
    }
}

/*
 * "chain files": every file the image reads, from the library.  A chain
 * that cannot be opened (a base missing) is reported, not fatal: info
 * still describes the image.
 */
static void chain_files(const char *path, bool force_share, ImgJson *j)
{
    pcow_error err = { 0 };
    char **files;
    int n = pcow_chain_files(path, force_share ? PCOW_OPEN_NO_LOCK : 0,
                             &files, &err);

    if (j) {
        if (n >= 0) {
            json_begin_array(j, "chain-files");
            for (int i = 0; i < n; i++) {
                json_str(j, NULL, files[i]);
            }
            json_end_array(j);
        }
    } else if (n < 0) {
        g_autofree char *emsg = pcow_escape_text(err.msg);

        printf("chain files: unknown (%s)\n", emsg);
    } else {
        printf("chain files:");
        for (int i = 0; i < n; i++) {
            g_autofree char *ef = pcow_escape_text(files[i]);

            printf("%s %s", i ? "," : "", ef);
        }
        printf("\n");
    }
    pcow_chain_files_free(n >= 0 ? files : NULL);
}

/*
 * The mappings (VMAs) the Image Monitor needs for the image, counted by
 * libpcow through the whole chain: @img was opened without it, so an
 * overlay is opened again with its bases.  A base that cannot be opened
 * leaves the count unknown.
 */
static void count_vmas(PcowDesc *d, pcow_image *img)
{
    pcow_open_opts oo = {
        .flags = d->force_share ? PCOW_OPEN_NO_LOCK : 0,
    };
    pcow_image *chain = NULL;

    if (d->info->backing_format == PCOW_BACKING_NONE) {
        d->vmas_ret = pcow_mapping_count(img, &d->vmas, &d->vmas_err);
        return;
    }
    d->vmas_ret = pcow_open(d->path, &oo, &chain, &d->vmas_err);
    if (d->vmas_ret == 0) {
        d->vmas_ret = pcow_mapping_count(chain, &d->vmas, &d->vmas_err);
        pcow_close(chain, NULL);
    }
}

static void storage_json(ImgJson *j, const pcow_storage_info *si)
{
    json_begin_object(j, "storage");
    json_str(j, "file-system", si->fs_type);
    json_bool(j, "dax", si->on_dax);
    json_bool(j, "pmem", si->is_pmem);
    if (si->block_device[0]) {
        json_str(j, "block-device", si->block_device);
    }
    if (si->has_namespace) {
        json_begin_object(j, "namespace");
        json_str(j, "name", si->namespace_name);
        json_str(j, "mode", si->namespace_mode);
        json_u64(j, "size", si->namespace_size);
        json_u64(j, "align", si->namespace_align);
        json_end_object(j);
    }
    json_str(j, "persistence", persist_name(si->persist_method));
    if (si->suggested_cluster_size) {
        json_u64(j, "suggested-cluster-size", si->suggested_cluster_size);
    }
    json_end_object(j);
}

static void storage_human(const pcow_storage_info *si)
{
    printf("    storage:\n");
    printf("        file system: %s\n", si->fs_type[0] ? si->fs_type : "?");
    printf("        dax: %s\n", si->on_dax ? "yes" : "no");
    if (si->block_device[0]) {
        printf("        block device: %s\n", si->block_device);
    }
    if (si->has_namespace) {
        g_autofree char *sz = img_size_to_str(si->namespace_size);

        printf("        namespace: %s\n", si->namespace_name);
        printf("        namespace mode: %s\n", si->namespace_mode);
        printf("        namespace size: %s\n", sz);
        printf("        namespace align: %" PRIu64 "\n",
               si->namespace_align);
    } else {
        printf("        namespace: none\n");
    }
    printf("        persistence: %s\n", persist_name(si->persist_method));
    if (si->suggested_cluster_size) {
        printf("        suggested cluster size: %u\n",
               si->suggested_cluster_size);
    }
}

static int info_raw(const char *path, ImgJson *j)
{
    struct stat st;
    g_autofree char *vs = NULL, *ds = NULL;
    pcow_error err = { 0 };
    uint64_t size;
    int fd;

    /* st_size is 0 for a block device: take the real size */
    fd = pcow_open_data_file(path, O_RDONLY, true, &size, &err);
    if (fd < 0) {
        img_pcow_error(path, &err, fd);
        return fd;
    }
    if (fstat(fd, &st) < 0) {
        int e = errno;

        img_error(path, "cannot stat: %s", strerror(e));
        close(fd);
        return -e;
    }
    close(fd);
    if (j) {
        json_begin_object(j, NULL);
        json_u64(j, "virtual-size", size);
        json_str(j, "filename", path);
        json_str(j, "format", "raw");
        json_u64(j, "actual-size", (uint64_t)st.st_blocks * 512);
        json_bool(j, "dirty-flag", false);
        json_end_object(j);
    } else {
        g_autofree char *epath = pcow_escape_text(path);

        vs = img_size_to_str(size);
        ds = img_size_to_str((uint64_t)st.st_blocks * 512);
        printf("image: %s\nfile format: raw\n", epath);
        printf("virtual size: %s (%" PRIu64 " bytes)\n", vs, size);
        printf("disk size: %s\n", ds);
    }
    return 0;
}

static void snapshots_json(ImgJson *j, const pcow_snapshot_info *sn, int n)
{
    json_begin_array(j, "snapshots");
    for (int i = 0; i < n; i++) {
        char id[24];

        snprintf(id, sizeof(id), "%" PRIu64, sn[i].id);
        json_begin_object(j, NULL);
        json_str(j, "id", id);
        json_str(j, "name", sn[i].name);
        json_u64(j, "vm-state-size", sn[i].vm_state_size);
        json_u64(j, "date-sec", sn[i].date_sec);
        json_u64(j, "date-nsec", sn[i].date_nsec);
        json_u64(j, "vm-clock-sec", sn[i].vm_clock_nsec / 1000000000);
        json_u64(j, "vm-clock-nsec", sn[i].vm_clock_nsec % 1000000000);
        json_u64(j, "virtual-size", sn[i].virtual_size);
        json_u64(j, "clusters", sn[i].clusters);
        json_bool(j, "has-clones", sn[i].has_clones);
        json_end_object(j);
    }
    json_end_array(j);
}

/* "format-specific": pcow's own fields */
static void format_specific_json(ImgJson *j, const PcowDesc *d)
{
    const pcow_info *info = d->info;
    char stamp[20];

    snprintf(stamp, sizeof(stamp), "0x%016" PRIx64, d->stamp);

    json_begin_object(j, "format-specific");
    json_str(j, "type", "pcow");
    json_begin_object(j, "data");
    json_u64(j, "version", info->version);
    json_u64(j, "cow-unit", info->cow_unit);
    json_u64(j, "incompatible-features", info->incompatible_features);
    json_u64(j, "compatible-features", info->compatible_features);
    json_u64(j, "autoclear-features", info->autoclear_features);
    json_u64(j, "generation", info->generation);
    /* A string: JSON readers lose the low bits of 64-bit numbers */
    json_str(j, "state-stamp", stamp);
    json_u64(j, "allocated-clusters", info->allocated_clusters);
    json_u64(j, "active-clusters", info->active_clusters);
    json_u64(j, "metadata-clusters", info->metadata_clusters);
    json_u64(j, "vm-state-clusters", info->vm_state_clusters);
    json_u64(j, "file-size", info->file_size);
    if (d->vmas_ret == 0) {
        json_u64(j, "vmas-needed", d->vmas);
    }
    json_str(j, "persistence", persist_name(info->persist_method));
    if (d->have_si) {
        storage_json(j, &d->si);
    }
    json_end_object(j);
    json_end_object(j);
}

static void info_pcow_json(ImgJson *j, const PcowDesc *d)
{
    const pcow_info *info = d->info;

    json_begin_object(j, NULL);
    json_u64(j, "virtual-size", info->virtual_size);
    json_str(j, "filename", d->path);
    json_u64(j, "cluster-size", info->cluster_size);
    json_str(j, "format", "pcow");
    json_u64(j, "actual-size", info->disk_size);
    json_bool(j, "dirty-flag", info->was_dirty);
    if (info->backing_format != PCOW_BACKING_NONE) {
        json_str(j, "backing-filename", info->backing_file);
        json_str(j, "full-backing-filename", info->backing_path);
        json_str(j, "backing-filename-format",
                 backing_fmt_name(info->backing_format));
        if (info->backing_limit) {
            json_u64(j, "backing-limit", info->backing_limit);
        }
        if (info->backing_snapshot_id) {
            char id[24];

            snprintf(id, sizeof(id), "%" PRIu64, info->backing_snapshot_id);
            json_str(j, "backing-snapshot-id", id);
            if (d->snap_name[0]) {
                json_str(j, "backing-snapshot-name", d->snap_name);
            }
        }
    }
    chain_files(d->path, d->force_share, j);
    if (d->nsn > 0) {
        snapshots_json(j, d->sn, d->nsn);
    }
    if (d->users_ret == 0) {
        img_users_json(j, &d->users);
    }
    format_specific_json(j, d);
    json_end_object(j);
}

static void backing_human(const PcowDesc *d)
{
    const pcow_info *info = d->info;
    g_autofree char *ebf = pcow_escape_text(info->backing_file);
    g_autofree char *ebp = pcow_escape_text(info->backing_path);
    g_autofree char *esn = pcow_escape_text(d->snap_name);
    g_autofree char *snap = NULL;

    if (info->backing_snapshot_id) {
        /* A clone: the base shows one of its snapshots */
        snap = d->snap_name[0] ?
               g_strdup_printf(" (snapshot %s, id %" PRIu64 ")", esn,
                               info->backing_snapshot_id) :
               g_strdup_printf(" (snapshot id %" PRIu64 ", not found in the base)",
                               info->backing_snapshot_id);
    }
    if (strcmp(info->backing_file, info->backing_path)) {
        printf("backing file: %s%s (actual path: %s)\n", ebf,
               snap ? snap : "", ebp);
    } else {
        printf("backing file: %s%s\n", ebf, snap ? snap : "");
    }
    printf("backing file format: %s\n",
           backing_fmt_name(info->backing_format));
    if (info->backing_limit) {
        printf("backing limit: %" PRIu64 " (beyond it, what the image does "
               "not hold reads as zeros)\n", info->backing_limit);
    }
}

/*
 * Which snapshots are clones' bases (pcow-img clone): delete refuses them.
 * The template does not record its clones, so "in use by" shows only the
 * running ones.
 */
static void clones_human(const PcowDesc *d)
{
    for (int i = 0; i < d->nsn; i++) {
        g_autofree char *en = pcow_escape_text(d->sn[i].name);

        if (d->sn[i].has_clones) {
            printf("snapshot %s (id %" PRIu64 "): clones: yes (a template: "
                   "pcow-img clone made overlays of it; clones not open "
                   "now may exist, the template does not list them)\n", en,
                   d->sn[i].id);
        }
    }
}

static void users_human(const PcowDesc *d)
{
    if (d->users_ret < 0) {
        printf("in use by: unknown (cannot read /proc: %s)\n",
               strerror(-d->users_ret));
    } else {
        img_users_human(&d->users);
    }
}

static void info_pcow_human(const PcowDesc *d)
{
    const pcow_info *info = d->info;
    g_autofree char *vs = img_size_to_str(info->virtual_size);
    g_autofree char *ds = img_size_to_str(info->disk_size);
    g_autofree char *epath = pcow_escape_text(d->path);

    printf("image: %s\n", epath);
    printf("file format: pcow\n");
    printf("virtual size: %s (%" PRIu64 " bytes)\n", vs,
           info->virtual_size);
    printf("disk size: %s\n", ds);
    printf("cluster_size: %u\n", info->cluster_size);
    if (info->backing_format != PCOW_BACKING_NONE) {
        backing_human(d);
    }
    chain_files(d->path, d->force_share, NULL);
    if (d->nsn > 0) {
        printf("Snapshot list:\n");
        img_print_snapshot_table(d->sn, d->nsn);
        clones_human(d);
    }
    users_human(d);
    printf("Format specific information:\n");
    printf("    version: %u\n", info->version);
    printf("    cow unit: %u\n", info->cow_unit);
    printf("    dirty flag: %s\n", info->was_dirty ? "yes" : "no");
    if (d->stamp) {
        printf("    state stamp: 0x%016" PRIx64 "\n", d->stamp);
    } else {
        printf("    state stamp: unknown\n");
    }
    printf("    allocated clusters: %" PRIu64 " (active layer %" PRIu64
           ", metadata %" PRIu64 ")\n", info->allocated_clusters,
           info->active_clusters, info->metadata_clusters);
    if (info->vm_state_clusters) {
        printf("    VM state clusters: %" PRIu64 "\n",
               info->vm_state_clusters);
    }
    if (d->vmas_ret == 0) {
        printf("    VMAs needed: %" PRIu64 "\n", d->vmas);
    } else {
        g_autofree char *emsg = pcow_escape_text(d->vmas_err.msg);

        printf("    VMAs needed: unknown (%s)\n", emsg);
    }
    printf("    persistence: %s\n", persist_name(info->persist_method));
    if (d->have_si) {
        storage_human(&d->si);
    }
}

/* Describe the pcow image at @path; its base's path and format on return */
static int info_pcow(const char *path, bool force_share, ImgJson *j,
                     char **next, ImgFormat *next_fmt)
{
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    PcowDesc d = { .path = path, .force_share = force_share };
    int ret;

    oo.flags = PCOW_OPEN_NO_BACKING | (force_share ? PCOW_OPEN_NO_LOCK : 0);
    ret = pcow_open(path, &oo, &img, &err);
    if (ret < 0) {
        img_pcow_error(path, &err, ret);
        return ret;
    }
    d.info = g_new0(pcow_info, 1);
    pcow_get_info(img, d.info);
    d.stamp = pcow_open_stamp(img, NULL);
    if (d.info->backing_snapshot_id &&
        pcow_backing_snapshot_name(img, d.snap_name, sizeof(d.snap_name),
                                   &err) < 0) {
        d.snap_name[0] = '\0';     /* shown as not in the base */
    }
    d.nsn = pcow_snapshot_list(img, &d.sn, &err);
    if (d.nsn < 0) {
        img_pcow_error(path, &err, d.nsn);
        pcow_close(img, &err);
        g_free(d.info);
        return d.nsn;
    }
    d.have_si = pcow_storage_probe(path, &d.si, &err) == 0;
    count_vmas(&d, img);
    d.users_ret = img_users_scan(img, &d.users);
    if (j) {
        info_pcow_json(j, &d);
    } else {
        info_pcow_human(&d);
    }
    if (d.info->backing_format != PCOW_BACKING_NONE) {
        *next = g_strdup(d.info->backing_path);
        *next_fmt = d.info->backing_format == PCOW_BACKING_RAW ?
                    IMG_FMT_RAW : IMG_FMT_PCOW;
    }
    img_users_free(&d.users);
    free(d.sn);
    g_free(d.info);
    ret = pcow_close(img, &err);
    if (ret < 0) {
        img_pcow_error(path, &err, ret);
        g_free(*next);
        *next = NULL;
    }
    return ret;
}

/*
 * Describe one image of a chain.  On success *next receives the resolved
 * path of its base (NULL if none) and *next_fmt its format.
 */
static int info_one(const char *path, ImgFormat fmt, bool force_share,
                    ImgJson *j, char **next, ImgFormat *next_fmt)
{
    *next = NULL;
    *next_fmt = IMG_FMT_NONE;

    if (fmt == IMG_FMT_NONE) {
        int ret = img_require_pcow(path);

        if (ret < 0) {
            return ret;
        }
        fmt = IMG_FMT_PCOW;
    }
    if (fmt == IMG_FMT_RAW) {
        return info_raw(path, j);
    }
    return info_pcow(path, force_share, j, next, next_fmt);
}

static const char info_help[] =
"usage: pcow-img info [--output=human|json] [--backing-chain] [-U] [-f FMT] "
"FILE\n"
"\n"
"Describe FILE: sizes, cluster size, COW unit, base image, snapshots,\n"
"dirty flag, the storage under it (file system, DAX, NVDIMM namespace,\n"
"persistence method) and the processes that have it open now (in use by).\n"
"\n"
"  --output=FMT     human (default) or json\n"
"  --backing-chain  describe every image of the backing chain\n"
"  -U, --force-share  take no lock (inspect the image of a running VM)\n";

typedef struct InfoArgs {
    bool json, chain, force_share;
    ImgFormat fmt;
    const char *file;
} InfoArgs;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int info_parse_options(int argc, char **argv, InfoArgs *a)
{
    enum { OPT_OUTPUT = 256, OPT_CHAIN };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_CHAIN },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hUf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(info_help, stdout);
            return 1;
        case 'U':
            a->force_share = true;
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &a->fmt) < 0) {
                return -1;
            }
            break;
        case OPT_OUTPUT:
            if (img_parse_output("info", optarg, &a->json) < 0) {
                return -1;
            }
            break;
        case OPT_CHAIN:
            a->chain = true;
            break;
        default:
            img_bad_option("info", argv, c);
            return -1;
        }
    }
    if (argc - optind != 1) {
        img_usage_error("info", "expecting one file name");
        return -1;
    }
    a->file = argv[optind];
    return 0;
}

/* Has this file been described already (a loop)?  By device and inode */
static bool info_seen(GHashTable *seen, const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 &&
           !g_hash_table_add(seen, g_strdup_printf("%ju:%ju",
                                                   (uintmax_t)st.st_dev,
                                                   (uintmax_t)st.st_ino));
}

/* FILE, and with --backing-chain each of its bases in turn */
static int info_chain(const InfoArgs *a, ImgJson *j)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal, g_free,
                                                       NULL);
    g_autofree char *path = g_strdup(a->file);
    ImgFormat fmt = a->fmt;
    int depth = 0;

    while (path) {
        char *next = NULL;

        if (info_seen(seen, path)) {
            img_error(path, "backing chain has a loop");
            return -1;
        }
        if (depth > 0 && !j) {
            printf("\n");
        }
        if (info_one(path, fmt, a->force_share, j, &next, &fmt) < 0) {
            return -1;
        }
        g_free(path);
        path = a->chain ? next : (g_free(next), NULL);
        if (++depth > PCOW_MAX_CHAIN_DEPTH + 1) {
            img_error(a->file, "backing chain deeper than %d",
                      PCOW_MAX_CHAIN_DEPTH);
            return -1;
        }
    }
    return 0;
}

int img_info(int argc, char **argv)
{
    InfoArgs a = { .fmt = IMG_FMT_NONE };
    ImgJson j;
    int ret;

    ret = info_parse_options(argc, argv, &a);
    if (ret != 0) {
        return ret > 0 ? EXIT_OK : EXIT_ERR;
    }
    if (a.json) {
        json_init(&j);
        if (a.chain) {
            json_begin_array(&j, NULL);
        }
    }
    ret = info_chain(&a, a.json ? &j : NULL) < 0 ? EXIT_ERR : EXIT_OK;
    if (a.json) {
        if (a.chain) {
            json_end_array(&j);
        }
        if (ret == EXIT_OK) {
            json_print(&j);
        } else {
            g_string_free(j.s, TRUE);
        }
    }
    return ret;
}
