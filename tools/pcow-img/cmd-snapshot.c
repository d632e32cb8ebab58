/*
 * pcow-img: snapshot
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcow-img.h"

static const char snapshot_help[] =
"usage: pcow-img snapshot [-U] -l FILE\n"
"       pcow-img snapshot -c NAME | -a NAME | -d NAME FILE\n"
"\n"
"  -l        list the snapshots of FILE\n"
"  -c NAME   create a snapshot of the current content (1..255 bytes, no\n"
"            control characters)\n"
"  -a NAME   apply (revert to) a snapshot\n"
"  -d NAME   delete a snapshot; its space is given back.  A snapshot with\n"
"            clones (pcow-img clone) is refused: they would break\n"
"  --force   with -d: delete a snapshot that has clones all the same\n"
"  -U        with -l: take no lock\n"
"\n"
"-a and -d take the snapshot named NAME if there is one, else the one whose\n"
"id is NAME in decimal (a name wins over an id).\n";

enum {
    SN_NONE, SN_LIST, SN_CREATE, SN_APPLY, SN_DELETE,
};

typedef struct SnapshotArgs {
    int action;
    const char *name;           /* NULL with -l */
    const char *file;
    bool force_share, quiet, force;
} SnapshotArgs;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int snapshot_parse_options(int argc, char **argv, SnapshotArgs *a)
{
    enum { OPT_FORCE = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { "force", no_argument, NULL, OPT_FORCE },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hlc:a:d:Uqf:", longopts,
                            NULL)) != -1) {
        int want = SN_NONE;

        switch (c) {
        case 'h':
            fputs(snapshot_help, stdout);
            return 1;
        case 'l':
            want = SN_LIST;
            break;
        case 'c':
            want = SN_CREATE;
            break;
        case 'a':
            want = SN_APPLY;
            break;
        case 'd':
            want = SN_DELETE;
            break;
        case 'U':
            a->force_share = true;
            continue;
        case 'q':
            a->quiet = true;
            continue;
        case OPT_FORCE:
            a->force = true;
            continue;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "snapshot: only pcow images have "
                          "snapshots");
                return -1;
            }
            continue;
        default:
            img_bad_option("snapshot", argv, c);
            return -1;
        }
        if (a->action != SN_NONE) {
            img_usage_error("snapshot", "give only one of -l, -c, -a, -d");
            return -1;
        }
        a->action = want;
        a->name = want == SN_LIST ? NULL : optarg;
    }
    return 0;
}

/* FILE, and what goes with the action (checked before FILE is opened) */
static int snapshot_check_args(int argc, char **argv, SnapshotArgs *a)
{
    if (a->action == SN_NONE) {
        img_usage_error("snapshot", "one of -l, -c, -a, -d is required");
        return -1;
    }
    if (argc - optind != 1) {
        img_usage_error("snapshot", "expecting one file name");
        return -1;
    }
    a->file = argv[optind];
    if (a->force && a->action != SN_DELETE) {
        img_error(a->file, "--force is only allowed with -d");
        return -1;
    }
    if (a->force_share && a->action != SN_LIST) {
        img_error(a->file, "-U is only allowed with -l");
        return -1;
    }
    if (a->name && !*a->name) {
        img_error(a->file, "snapshot name must not be empty");
        return -1;
    }
    if (a->name && strlen(a->name) > PCOW_MAX_SNAPSHOT_NAME) {
        img_error(a->file, "snapshot name longer than %d bytes",
                  PCOW_MAX_SNAPSHOT_NAME);
        return -1;
    }
    if (img_require_pcow(a->file) < 0) {
        return -1;
    }
    if (a->action == SN_CREATE) {
        pcow_error err = { 0 };

        /* libpcow's rule for new names; its message names no file */
        if (pcow_snapshot_name_check(a->name, &err) < 0) {
            img_error(a->file, "%s", err.msg);
            return -1;
        }
    }
    return 0;
}

static int snapshot_run(pcow_image *img, const SnapshotArgs *a,
                        pcow_error *err)
{
    pcow_snapshot_info *sn = NULL;
    int ret = 0;

    switch (a->action) {
    case SN_LIST:
        ret = pcow_snapshot_list(img, &sn, err);
        /* Like qemu-img: nothing at all when there are no snapshots. */
        if (ret > 0 && !a->quiet) {
            printf("Snapshot list:\n");
            img_print_snapshot_table(sn, ret);
        }
        free(sn);
        break;
    case SN_CREATE:
        ret = pcow_snapshot_create(img, a->name, NULL, err);
        break;
    case SN_APPLY:
        ret = pcow_snapshot_revert(img, a->name, err);
        break;
    case SN_DELETE:
        ret = pcow_snapshot_delete_flags(img, a->name,
                                         a->force ?
                                         PCOW_SNAPSHOT_DELETE_FORCE : 0,
                                         err);
        break;
    }
    return ret;
}

int img_snapshot(int argc, char **argv)
{
    SnapshotArgs a = { .action = SN_NONE };
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    int ret;

    ret = snapshot_parse_options(argc, argv, &a);
    if (ret != 0) {
        return ret > 0 ? EXIT_OK : EXIT_ERR;
    }
    if (snapshot_check_args(argc, argv, &a) < 0) {
        return EXIT_ERR;
    }
    if (a.action == SN_LIST) {
        oo.flags = PCOW_OPEN_NO_BACKING |
                   (a.force_share ? PCOW_OPEN_NO_LOCK : 0);
    } else {
        oo.flags = PCOW_OPEN_RDWR;
    }
    ret = pcow_open(a.file, &oo, &img, &err);
    if (ret < 0) {
        img_pcow_error(a.file, &err, ret);
        return EXIT_ERR;
    }
    ret = snapshot_run(img, &a, &err);
    if (ret < 0) {
        img_pcow_error(a.file, &err, ret);
        pcow_close(img, &err);
        return EXIT_ERR;
    }
    ret = pcow_close(img, &err);
    if (ret < 0) {
        img_pcow_error(a.file, &err, ret);
        return EXIT_ERR;
    }
    return EXIT_OK;
}
