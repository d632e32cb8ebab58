/*
 * pcow-img clone: a new image whose base is a snapshot of a template
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "pcow-img.h"

static const char clone_help[] =
"usage: pcow-img clone [-q] [-f pcow] TEMPLATE@SNAPSHOT NEW\n"
"\n"
"Create NEW, a pcow image whose base is snapshot SNAPSHOT (a name, else an\n"
"id in decimal) of the pcow image TEMPLATE: NEW shows what the snapshot\n"
"holds and keeps its own writes.  NEW gets the snapshot's virtual size and\n"
"TEMPLATE's cluster size; its base is stored relative to NEW's directory.\n"
"The snapshot is marked as having clones, so 'snapshot -d' refuses it.\n"
"Only the last '@' of the first argument separates TEMPLATE from SNAPSHOT.\n";

typedef struct CloneArgs {
    const char *spec;
    const char *file;
    bool quiet;
} CloneArgs;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int clone_parse(int argc, char **argv, CloneArgs *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hqf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(clone_help, stdout);
            return 1;
        case 'q':
            a->quiet = true;
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "clone: only pcow images have snapshots");
                return -1;
            }
            break;
        default:
            img_bad_option("clone", argv, c);
            return -1;
        }
    }
    if (argc - optind != 2) {
        img_usage_error("clone", "expecting TEMPLATE@SNAPSHOT and NEW");
        return -1;
    }
    a->spec = argv[optind];
    a->file = argv[optind + 1];
    return 0;
}

int img_clone(int argc, char **argv)
{
    CloneArgs a = { 0 };
    pcow_error err = { 0 };
    g_autofree char *tmpl = NULL;
    const char *at;
    uint64_t id;
    int ret;

    ret = clone_parse(argc, argv, &a);
    if (ret != 0) {
        return ret > 0 ? EXIT_OK : EXIT_ERR;
    }
    at = strrchr(a.spec, '@');
    if (!at || at == a.spec || !at[1]) {
        img_error(a.spec, "expected TEMPLATE@SNAPSHOT");
        return EXIT_ERR;
    }
    tmpl = g_strndup(a.spec, at - a.spec);
    if (img_require_pcow(tmpl) < 0) {
        return EXIT_ERR;
    }
    ret = pcow_clone(tmpl, at + 1, a.file, NULL, &id, &err);
    if (ret < 0) {
        img_pcow_error(a.file, &err, ret);
        return EXIT_ERR;
    }
    if (!a.quiet) {
        g_autofree char *ef = pcow_escape_text(a.file);
        g_autofree char *et = pcow_escape_text(tmpl);

        printf("Cloned %s: an overlay of snapshot %" PRIu64 " of %s\n", ef,
               id, et);
    }
    return EXIT_OK;
}
