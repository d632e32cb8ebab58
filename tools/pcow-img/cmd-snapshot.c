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

void img_print_snapshot_table(const pcow_snapshot_info *sn, int n);

static const char snapshot_help[] =
"usage: pcow-img snapshot [-U] -l FILE\n"
"       pcow-img snapshot -c NAME | -a NAME | -d NAME FILE\n"
"\n"
"  -l        list the snapshots of FILE\n"
"  -c NAME   create a snapshot of the current content (1..255 bytes, no\n"
"            control characters)\n"
"  -a NAME   apply (revert to) a snapshot\n"
"  -d NAME   delete a snapshot; its space is given back\n"
"  -U        with -l: take no lock\n"
"\n"
"-a and -d take the snapshot named NAME if there is one, else the one whose\n"
"id is NAME in decimal (a name wins over an id).\n";

enum {
    SN_NONE, SN_LIST, SN_CREATE, SN_APPLY, SN_DELETE,
};

int img_snapshot(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    const char *name = NULL, *file;
    bool force_share = false, quiet = false;
    int action = SN_NONE, c, ret;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hlc:a:d:Uqf:", longopts,
                            NULL)) != -1) {
        int want = SN_NONE;

        switch (c) {
        case 'h':
            fputs(snapshot_help, stdout);
            return EXIT_OK;
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
            force_share = true;
            continue;
        case 'q':
            quiet = true;
            continue;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "snapshot: only pcow images have "
                          "snapshots");
                return EXIT_ERR;
            }
            continue;
        default:
            img_bad_option("snapshot", argv, c);
            return EXIT_ERR;
        }
        if (action != SN_NONE) {
            return img_usage_error("snapshot", "give only one of -l, -c, "
                                   "-a, -d");
        }
        action = want;
        name = want == SN_LIST ? NULL : optarg;
    }
    if (action == SN_NONE) {
        return img_usage_error("snapshot", "one of -l, -c, -a, -d is "
                               "required");
    }
    if (argc - optind != 1) {
        return img_usage_error("snapshot", "expecting one file name");
    }
    file = argv[optind];
    if (force_share && action != SN_LIST) {
        img_error(file, "-U is only allowed with -l");
        return EXIT_ERR;
    }
    if (name && !*name) {
        img_error(file, "snapshot name must not be empty");
        return EXIT_ERR;
    }
    if (name && strlen(name) > PCOW_MAX_SNAPSHOT_NAME) {
        img_error(file, "snapshot name longer than %d bytes",
                  PCOW_MAX_SNAPSHOT_NAME);
        return EXIT_ERR;
    }
    if (img_require_pcow(file) < 0) {
        return EXIT_ERR;
    }

    if (action == SN_LIST) {
        oo.flags = PCOW_OPEN_NO_BACKING |
                   (force_share ? PCOW_OPEN_NO_LOCK : 0);
    } else {
        oo.flags = PCOW_OPEN_RDWR;
    }
    ret = pcow_open(file, &oo, &img, &err);
    if (ret < 0) {
        img_pcow_error(file, &err, ret);
        return EXIT_ERR;
    }

    switch (action) {
    case SN_LIST: {
        pcow_snapshot_info *sn = NULL;

        ret = pcow_snapshot_list(img, &sn, &err);
        /* Like qemu-img: nothing at all when there are no snapshots. */
        if (ret > 0 && !quiet) {
            printf("Snapshot list:\n");
            img_print_snapshot_table(sn, ret);
        }
        free(sn);
        break;
    }
    case SN_CREATE:
        ret = pcow_snapshot_create(img, name, NULL, &err);
        break;
    case SN_APPLY:
        ret = pcow_snapshot_revert(img, name, &err);
        break;
    case SN_DELETE:
        ret = pcow_snapshot_delete(img, name, &err);
        break;
    }
    if (ret < 0) {
        img_pcow_error(file, &err, ret);
        pcow_close(img, &err);
        return EXIT_ERR;
    }
    ret = pcow_close(img, &err);
    if (ret < 0) {
        img_pcow_error(file, &err, ret);
        return EXIT_ERR;
    }
    return EXIT_OK;
}
