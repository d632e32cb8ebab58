/*
 * pcow-img map: how the guest-visible range maps to files
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <getopt.h>
#include <string.h>

#include "pcow-img.h"

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
        g_autofree char *name = pcow_escape_text(e->filename);

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

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int map_parse_options(int argc, char **argv, bool *json,
                             bool *force_share)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hUf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(map_help, stdout);
            return 1;
        case 'U':
            *force_share = true;
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "map: only pcow images can be mapped");
                return -1;
            }
            break;
        case OPT_OUTPUT:
            if (img_parse_output("map", optarg, json) < 0) {
                return -1;
            }
            break;
        default:
            img_bad_option("map", argv, c);
            return -1;
        }
    }
    if (argc - optind != 1) {
        img_usage_error("map", "expecting one file name");
        return -1;
    }
    return 0;
}

/* File names by depth; a raw base is named by the last pcow level. */
static GPtrArray *map_chain_names(pcow_image *img)
{
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    pcow_image *it;

    for (it = img; it; it = pcow_backing(it)) {
        g_ptr_array_add(names, g_strdup(pcow_filename(it)));
        if (!pcow_backing(it) && pcow_backing_raw_fd(it) >= 0) {
            pcow_info *info = g_new0(pcow_info, 1);

            pcow_get_info(it, info);
            g_ptr_array_add(names, g_strdup(info->backing_path));
            g_free(info);
        }
    }
    return names;
}

/* Print the extents of @img, each as long as nothing changes */
static int map_print(pcow_image *img, const char *file, bool json)
{
    g_autoptr(GPtrArray) names = map_chain_names(img);
    uint64_t off = 0, size = pcow_virtual_size(img);
    bool first = true, have = false;
    MapEntry cur = { 0 };

    if (!json) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    }
    while (off < size) {
        pcow_extent ext;
        MapEntry e = { 0 };
        int ret = pcow_get_extent(img, off, size - off, &ext);

        if (ret < 0) {
            img_error(file, "cannot get extent at offset %" PRIu64 ": %s",
                      off, strerror(-ret));
            return -1;
        }
        if (ext.length == 0) {
            img_error(file, "empty extent at offset %" PRIu64, off);
            return -1;
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
    if (have) {
        map_emit(&cur, json, &first);
    }
    if (json) {
        printf(first ? "[]\n" : "]\n");
    }
    return 0;
}

int img_map(int argc, char **argv)
{
    bool json = false, force_share = false;
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    const char *file;
    int c, ret = EXIT_OK;

    c = map_parse_options(argc, argv, &json, &force_share);
    if (c != 0) {
        return c > 0 ? EXIT_OK : EXIT_ERR;
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
    if (map_print(img, file, json) < 0) {
        ret = EXIT_ERR;
    }
    c = pcow_close(img, &err);
    if (c < 0) {
        img_pcow_error(file, &err, c);
        ret = EXIT_ERR;
    }
    return ret;
}
