/*
 * pcow-img: info, check, map
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

static int parse_output(const char *cmd, const char *arg, bool *json)
{
    if (strcmp(arg, "json") == 0) {
        *json = true;
    } else if (strcmp(arg, "human") == 0) {
        *json = false;
    } else {
        img_error(NULL, "%s: --output must be 'human' or 'json', not '%s'",
                  cmd, arg);
        return -EINVAL;
    }
    return 0;
}

/* ------------------------------------------------------------------ info */

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
        g_autofree char *emsg = img_escape_text(err.msg);

        printf("chain files: unknown (%s)\n", emsg);
    } else {
        printf("chain files:");
        for (int i = 0; i < n; i++) {
            g_autofree char *ef = img_escape_text(files[i]);

            printf("%s %s", i ? "," : "", ef);
        }
        printf("\n");
    }
    pcow_chain_files_free(n >= 0 ? files : NULL);
}

/* Print the snapshot table (shared with "snapshot -l"). */
void img_print_snapshot_table(const pcow_snapshot_info *sn, int n);

void img_print_snapshot_table(const pcow_snapshot_info *sn, int n)
{
    printf("%-9s %-16s %8s%20s%16s%8s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (int i = 0; i < n; i++) {
        g_autofree char *name = img_escape_text(sn[i].name);
        char date[32], id[24];

        img_format_date(date, sizeof(date), sn[i].date_sec);
        snprintf(id, sizeof(id), "%" PRIu64, sn[i].id);
        printf("%-9s %-16s %8s%20s%16s%8s\n", id, name, "0 B", date,
               "0000:00:00.000", "--");
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
            g_autofree char *epath = img_escape_text(path);

            vs = img_size_to_str(size);
            ds = img_size_to_str((uint64_t)st.st_blocks * 512);
            printf("image: %s\nfile format: raw\n", epath);
            printf("virtual size: %s (%" PRIu64 " bytes)\n", vs, size);
            printf("disk size: %s\n", ds);
        }
        return 0;
    }

    {
        pcow_open_opts oo = { 0 };
        pcow_error err = { 0 };
        pcow_image *img;
        pcow_info *info = g_new0(pcow_info, 1);
        pcow_snapshot_info *sn = NULL;
        pcow_storage_info si;
        bool have_si;
        int nsn, ret;

        oo.flags = PCOW_OPEN_NO_BACKING |
                   (force_share ? PCOW_OPEN_NO_LOCK : 0);
        ret = pcow_open(path, &oo, &img, &err);
        if (ret < 0) {
            img_pcow_error(path, &err, ret);
            g_free(info);
            return ret;
        }
        pcow_get_info(img, info);
        nsn = pcow_snapshot_list(img, &sn, &err);
        if (nsn < 0) {
            img_pcow_error(path, &err, nsn);
            pcow_close(img, &err);
            g_free(info);
            return nsn;
        }
        memset(&si, 0, sizeof(si));
        have_si = pcow_storage_probe(path, &si, &err) == 0;

        if (j) {
            json_begin_object(j, NULL);
            json_u64(j, "virtual-size", info->virtual_size);
            json_str(j, "filename", path);
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
            }
            chain_files(path, force_share, j);
            if (nsn > 0) {
                json_begin_array(j, "snapshots");
                for (int i = 0; i < nsn; i++) {
                    char id[24];

                    snprintf(id, sizeof(id), "%" PRIu64, sn[i].id);
                    json_begin_object(j, NULL);
                    json_str(j, "id", id);
                    json_str(j, "name", sn[i].name);
                    json_u64(j, "vm-state-size", 0);
                    json_u64(j, "date-sec", sn[i].date_sec);
                    json_u64(j, "date-nsec", sn[i].date_nsec);
                    json_u64(j, "vm-clock-sec", 0);
                    json_u64(j, "vm-clock-nsec", 0);
                    json_u64(j, "virtual-size", sn[i].virtual_size);
                    json_u64(j, "clusters", sn[i].clusters);
                    json_end_object(j);
                }
                json_end_array(j);
            }
            json_begin_object(j, "format-specific");
            json_str(j, "type", "pcow");
            json_begin_object(j, "data");
            json_u64(j, "version", info->version);
            json_u64(j, "cow-unit", info->cow_unit);
            json_u64(j, "incompatible-features",
                     info->incompatible_features);
            json_u64(j, "compatible-features", info->compatible_features);
            json_u64(j, "autoclear-features", info->autoclear_features);
            json_u64(j, "generation", info->generation);
            json_u64(j, "allocated-clusters", info->allocated_clusters);
            json_u64(j, "active-clusters", info->active_clusters);
            json_u64(j, "metadata-clusters", info->metadata_clusters);
            json_u64(j, "file-size", info->file_size);
            json_str(j, "persistence", persist_name(info->persist_method));
            if (have_si) {
                storage_json(j, &si);
            }
            json_end_object(j);
            json_end_object(j);
            json_end_object(j);
        } else {
            g_autofree char *vs = img_size_to_str(info->virtual_size);
            g_autofree char *ds = img_size_to_str(info->disk_size);
            g_autofree char *epath = img_escape_text(path);
            g_autofree char *ebf = img_escape_text(info->backing_file);
            g_autofree char *ebp = img_escape_text(info->backing_path);

            printf("image: %s\n", epath);
            printf("file format: pcow\n");
            printf("virtual size: %s (%" PRIu64 " bytes)\n", vs,
                   info->virtual_size);
            printf("disk size: %s\n", ds);
            printf("cluster_size: %u\n", info->cluster_size);
            if (info->backing_format != PCOW_BACKING_NONE) {
                if (strcmp(info->backing_file, info->backing_path)) {
                    printf("backing file: %s (actual path: %s)\n", ebf,
                           ebp);
                } else {
                    printf("backing file: %s\n", ebf);
                }
                printf("backing file format: %s\n",
                       backing_fmt_name(info->backing_format));
                if (info->backing_limit) {
                    printf("backing limit: %" PRIu64 " (beyond it, what "
                           "the image does not hold reads as zeros)\n",
                           info->backing_limit);
                }
            }
            chain_files(path, force_share, NULL);
            if (nsn > 0) {
                printf("Snapshot list:\n");
                img_print_snapshot_table(sn, nsn);
            }
            printf("Format specific information:\n");
            printf("    version: %u\n", info->version);
            printf("    cow unit: %u\n", info->cow_unit);
            printf("    dirty flag: %s\n", info->was_dirty ? "yes" : "no");
            printf("    allocated clusters: %" PRIu64 " (active layer %"
                   PRIu64 ", metadata %" PRIu64 ")\n",
                   info->allocated_clusters, info->active_clusters,
                   info->metadata_clusters);
            printf("    persistence: %s\n",
                   persist_name(info->persist_method));
            if (have_si) {
                storage_human(&si);
            }
        }

        if (info->backing_format != PCOW_BACKING_NONE) {
            *next = g_strdup(info->backing_path);
            *next_fmt = info->backing_format == PCOW_BACKING_RAW ?
                        IMG_FMT_RAW : IMG_FMT_PCOW;
        }
        free(sn);
        g_free(info);
        ret = pcow_close(img, &err);
        if (ret < 0) {
            img_pcow_error(path, &err, ret);
            g_free(*next);
            *next = NULL;
            return ret;
        }
    }
    return 0;
}

static const char info_help[] =
"usage: pcow-img info [--output=human|json] [--backing-chain] [-U] [-f FMT] "
"FILE\n"
"\n"
"Describe FILE: sizes, cluster size, COW unit, base image, snapshots,\n"
"dirty flag and the storage under it (file system, DAX, NVDIMM namespace,\n"
"persistence method).\n"
"\n"
"  --output=FMT     human (default) or json\n"
"  --backing-chain  describe every image of the backing chain\n"
"  -U, --force-share  take no lock (inspect the image of a running VM)\n";

int img_info(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_CHAIN };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_CHAIN },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    bool json = false, chain = false, force_share = false;
    ImgFormat fmt = IMG_FMT_NONE;
    g_autofree char *path = NULL;
    GHashTable *seen;
    ImgJson j;
    int c, depth = 0, ret = EXIT_OK;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hUf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(info_help, stdout);
            return EXIT_OK;
        case 'U':
            force_share = true;
            break;
        case 'f':
            if (img_format_arg("-f", optarg, &fmt) < 0) {
                return EXIT_ERR;
            }
            break;
        case OPT_OUTPUT:
            if (parse_output("info", optarg, &json) < 0) {
                return EXIT_ERR;
            }
            break;
        case OPT_CHAIN:
            chain = true;
            break;
        default:
            img_bad_option("info", argv, c);
            return EXIT_ERR;
        }
    }
    if (argc - optind != 1) {
        return img_usage_error("info", "expecting one file name");
    }
    path = g_strdup(argv[optind]);

    if (json) {
        json_init(&j);
        if (chain) {
            json_begin_array(&j, NULL);
        }
    }
    seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    while (path) {
        char *next = NULL;
        ImgFormat next_fmt;
        struct stat st;

        if (stat(path, &st) == 0) {
            char *key = g_strdup_printf("%ju:%ju", (uintmax_t)st.st_dev,
                                        (uintmax_t)st.st_ino);

            if (!g_hash_table_add(seen, key)) {
                img_error(path, "backing chain has a loop");
                ret = EXIT_ERR;
                break;
            }
        }
        if (depth > 0 && !json) {
            printf("\n");
        }
        if (info_one(path, fmt, force_share, json ? &j : NULL, &next,
                     &next_fmt) < 0) {
            ret = EXIT_ERR;
            break;
        }
        g_free(path);
        path = chain ? next : (g_free(next), NULL);
        fmt = next_fmt;
        if (++depth > PCOW_MAX_CHAIN_DEPTH + 1) {
            img_error(argv[optind], "backing chain deeper than %d",
                      PCOW_MAX_CHAIN_DEPTH);
            ret = EXIT_ERR;
            break;
        }
    }
    g_hash_table_destroy(seen);
    if (json) {
        if (chain) {
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

/* ----------------------------------------------------------------- check */

static const char check_help[] =
"usage: pcow-img check [-r leaks|all] [--output=human|json] [-U] FILE\n"
"\n"
"Check the consistency of FILE; with -r, repair leaks (leaks) or leaks\n"
"and errors (all).  Exit status: 0 no problem, 1 the check could not be\n"
"completed, 2 corruptions, 3 leaked clusters only.\n";

int img_check(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "repair", required_argument, NULL, 'r' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    bool json = false, force_share = false, quiet = false;
    unsigned repair = 0;
    pcow_check_result res;
    pcow_error err = { 0 };
    uint64_t corruptions, leaks;
    const char *file;
    int c, ret;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hr:Uqf:", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(check_help, stdout);
            return EXIT_OK;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                repair = PCOW_REPAIR_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                repair = PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS;
            } else {
                img_error(NULL, "check: -r must be 'leaks' or 'all', not "
                          "'%s'", optarg);
                return EXIT_ERR;
            }
            break;
        case 'U':
            force_share = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "check: only pcow images can be checked");
                return EXIT_ERR;
            }
            break;
        case OPT_OUTPUT:
            if (parse_output("check", optarg, &json) < 0) {
                return EXIT_ERR;
            }
            break;
        default:
            img_bad_option("check", argv, c);
            return EXIT_ERR;
        }
    }
    if (argc - optind != 1) {
        return img_usage_error("check", "expecting one file name");
    }
    file = argv[optind];
    if (repair && force_share) {
        img_error(file, "-r and -U cannot be combined (repair needs the "
                  "image's write lock)");
        return EXIT_ERR;
    }
    if (img_require_pcow(file) < 0) {
        return EXIT_ERR;
    }

    memset(&res, 0, sizeof(res));
    ret = pcow_check(file, repair, force_share, &res, &err);
    if (ret < 0 && res.corruptions == 0) {
        img_pcow_error(file, &err, ret);
        return EXIT_ERR;
    }
    /* After a repair, corruptions and leaks are what is left. */
    corruptions = res.corruptions;
    leaks = res.leaks;

    if (json) {
        ImgJson j;

        json_init(&j);
        json_begin_object(&j, NULL);
        json_str(&j, "filename", file);
        json_str(&j, "format", "pcow");
        json_u64(&j, "check-errors", 0);
        json_u64(&j, "image-end-offset", res.image_end_offset);
        json_u64(&j, "total-clusters", res.total_clusters);
        json_u64(&j, "allocated-clusters", res.allocated_clusters);
        json_u64(&j, "fragmented-clusters", res.fragmented_clusters);
        json_u64(&j, "compressed-clusters", 0);
        json_u64(&j, "corruptions", corruptions);
        json_u64(&j, "leaks", leaks);
        json_u64(&j, "stale-mappings", res.stale_entries);
        json_u64(&j, "corruptions-fixed", res.corruptions_fixed);
        json_u64(&j, "leaks-fixed", res.leaks_fixed);
        if (res.first_problem[0]) {
            json_str(&j, "first-problem", res.first_problem);
        }
        json_end_object(&j);
        json_print(&j);
    } else if (!quiet) {
        if (res.leaks_fixed || res.corruptions_fixed) {
            printf("The following inconsistencies were found and repaired:"
                   "\n\n    %" PRIu64 " leaked clusters\n    %" PRIu64
                   " corruptions\n\nDouble checking the fixed image now...\n",
                   res.leaks_fixed, res.corruptions_fixed);
        }
        if (corruptions == 0 && leaks == 0) {
            printf("No errors were found on the image.\n");
        }
        if (corruptions) {
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n", corruptions);
            if (res.first_problem[0]) {
                g_autofree char *fp = img_escape_text(res.first_problem);

                printf("First problem: %s\n", fp);
            }
        }
        if (leaks) {
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   leaks);
            if (res.stale_entries) {
                printf("Of those, %" PRIu64 " are still mapped beyond the "
                       "virtual size (a shrink was interrupted); they "
                       "never show, and a repair or the next read-write "
                       "open clears them.\n", res.stale_entries);
            }
        }
        if (res.total_clusters) {
            printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% "
                   "fragmented, 0.00%% compressed clusters\n",
                   res.allocated_clusters, res.total_clusters,
                   100.0 * res.allocated_clusters / res.total_clusters,
                   res.allocated_clusters ?
                   100.0 * res.fragmented_clusters / res.allocated_clusters :
                   0.0);
        }
        if (res.image_end_offset) {
            printf("Image end offset: %" PRIu64 "\n", res.image_end_offset);
        }
    }

    if (corruptions) {
        return 2;
    }
    if (leaks) {
        return 3;
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------------- map */

typedef struct MapEntry {
    uint64_t start, length, offset;
    unsigned depth;
    bool data;
    const char *filename;
} MapEntry;

static void map_emit(const MapEntry *e, bool json, bool *first)
{
    if (json) {
        GString *s = g_string_new(NULL);

        g_string_append_printf(s, "%s{ \"start\": %" PRIu64 ", \"length\": %"
                               PRIu64 ", \"depth\": %u, \"present\": %s, "
                               "\"zero\": %s, \"data\": %s",
                               *first ? "[" : ",\n", e->start, e->length,
                               e->depth, e->data ? "true" : "false",
                               e->data ? "false" : "true",
                               e->data ? "true" : "false");
        if (e->data) {
            g_string_append_printf(s, ", \"offset\": %" PRIu64
                                   ", \"filename\": ", e->offset);
            json_escape(s, e->filename);
        }
        g_string_append(s, "}");
        fputs(s->str, stdout);
        g_string_free(s, TRUE);
    } else if (e->data) {
        g_autofree char *name = img_escape_text(e->filename);

        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
               e->start, e->length, e->offset, name);
    }
    *first = false;
}

static const char map_help[] =
"usage: pcow-img map [--output=human|json] [-U] FILE\n"
"\n"
"Print how the guest-visible range of FILE maps to files: for each extent\n"
"its start, length, depth in the backing chain (0 = FILE), whether it holds\n"
"data or reads as zeros, and where the data is.\n";

int img_map(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    bool json = false, force_share = false, first = true, have = false;
    GPtrArray *names;
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img, *it;
    const char *file;
    MapEntry cur = { 0 };
    uint64_t off = 0, size;
    int c, ret = EXIT_OK;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hUf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(map_help, stdout);
            return EXIT_OK;
        case 'U':
            force_share = true;
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "map: only pcow images can be mapped");
                return EXIT_ERR;
            }
            break;
        case OPT_OUTPUT:
            if (parse_output("map", optarg, &json) < 0) {
                return EXIT_ERR;
            }
            break;
        default:
            img_bad_option("map", argv, c);
            return EXIT_ERR;
        }
    }
    if (argc - optind != 1) {
        return img_usage_error("map", "expecting one file name");
    }
    file = argv[optind];
    if (img_require_pcow(file) < 0) {
        return EXIT_ERR;
    }
    oo.flags = force_share ? PCOW_OPEN_NO_LOCK : 0;
    c = pcow_open(file, &oo, &img, &err);
    if (c < 0) {
        img_pcow_error(file, &err, c);
        return EXIT_ERR;
    }

    /* File names by depth; a raw base is named by the last pcow level. */
    names = g_ptr_array_new_with_free_func(g_free);
    for (it = img; it; it = pcow_backing(it)) {
        g_ptr_array_add(names, g_strdup(pcow_filename(it)));
        if (!pcow_backing(it) && pcow_backing_raw_fd(it) >= 0) {
            pcow_info *info = g_new0(pcow_info, 1);

            pcow_get_info(it, info);
            g_ptr_array_add(names, g_strdup(info->backing_path));
            g_free(info);
        }
    }

    size = pcow_virtual_size(img);
    if (!json) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    }
    while (off < size) {
        pcow_extent ext;
        MapEntry e = { 0 };

        c = pcow_get_extent(img, off, size - off, &ext);
        if (c < 0) {
            img_error(file, "cannot get extent at offset %" PRIu64 ": %s",
                      off, strerror(-c));
            ret = EXIT_ERR;
            break;
        }
        if (ext.length == 0) {
            img_error(file, "empty extent at offset %" PRIu64, off);
            ret = EXIT_ERR;
            break;
        }
        e.start = off;
        e.length = MIN(ext.length, size - off);
        e.depth = ext.depth;
        e.data = ext.kind == PCOW_EXTENT_DATA;
        e.offset = ext.file_offset;
        e.filename = e.depth < names->len ?
                     g_ptr_array_index(names, e.depth) : "?";
        /* Merge with the previous extent when nothing changes. */
        if (have && cur.data == e.data && cur.depth == e.depth &&
            cur.start + cur.length == e.start &&
            (!e.data || (cur.offset + cur.length == e.offset &&
                         cur.filename == e.filename))) {
            cur.length += e.length;
        } else {
            if (have) {
                map_emit(&cur, json, &first);
            }
            cur = e;
            have = true;
        }
        off += e.length;
    }
    if (ret == EXIT_OK) {
        if (have) {
            map_emit(&cur, json, &first);
        }
        if (json) {
            printf(first ? "[]\n" : "]\n");
        }
    }
    g_ptr_array_free(names, TRUE);
    c = pcow_close(img, &err);
    if (c < 0) {
        img_pcow_error(file, &err, c);
        ret = EXIT_ERR;
    }
    return ret;
}
