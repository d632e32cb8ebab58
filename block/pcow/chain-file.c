/*
 * libpcow: the files of an image's chain, for front ends
 *
 * The path a backing name stands for, as open and create resolve it.
 *
 * Which file of an open image's chain is a given path: front ends ask this
 * before they write a file (pcow-img convert/commit) or report a lock
 * conflict (QEMU's pcow backend): writing a file that an open image reads,
 * or locking it twice in one process, must be caught by identity (device
 * and inode), not by name.
 *
 * Which files an image reads: what a path-based confinement policy must
 * allow (pcow-img info; docs/pcow.rst, "Confined hosts").
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-int.h"

char *pcow_backing_path(const char *image_path, const char *backing_name)
{
    char *tmp = strdup(image_path);
    size_t len;
    char *out;

    if (!tmp) {
        return NULL;
    }
    len = strlen(image_path) + strlen(backing_name) + 2;
    out = malloc(len);
    if (out && pcow_resolve_backing(dirname(tmp), backing_name, out,
                                    len) < 0) {
        free(out);
        out = NULL;
    }
    free(tmp);
    return out;
}

static bool fd_is(int fd, const struct stat *want)
{
    struct stat st;

    return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == want->st_dev &&
           st.st_ino == want->st_ino;
}

pcow_chain_role pcow_chain_role_of(pcow_image *img, const char *path)
{
    struct stat want;
    pcow_image *layer;

    if (!img || stat(path, &want) < 0) {
        return PCOW_CHAIN_NONE;
    }
    for (layer = img; layer; layer = pcow_backing(layer)) {
        if (fd_is(pcow_fd(layer), &want)) {
            return layer == img ? PCOW_CHAIN_SELF : PCOW_CHAIN_BASE;
        }
        if (fd_is(pcow_backing_raw_fd(layer), &want)) {
            return PCOW_CHAIN_BASE;
        }
    }
    return PCOW_CHAIN_NONE;
}

/* The path of the file open at @fd, as the kernel names it */
static char *fd_path(int fd)
{
    char link[32], buf[PATH_MAX];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, buf, sizeof(buf) - 1);
    if (n <= 0 || buf[0] != '/') {
        return NULL;
    }
    buf[n] = '\0';
    return strdup(buf);
}

void pcow_chain_files_free(char **files)
{
    if (files) {
        for (char **f = files; *f; f++) {
            free(*f);
        }
        free(files);
    }
}

/* Fill @files (PCOW_MAX_CHAIN_DEPTH + 3 slots) from an open chain */
static int collect_files(pcow_image *img, char **files, pcow_error *err)
{
    int n = 0;

    for (pcow_image *layer = img; layer; layer = pcow_backing(layer)) {
        int fds[2] = { pcow_fd(layer), pcow_backing_raw_fd(layer) };

        for (int i = 0; i < 2 && fds[i] >= 0; i++) {
            files[n] = fd_path(fds[i]);
            if (!files[n]) {
                return pcow_img_error(layer, err, -EIO, "cannot name the "
                                      "file open at descriptor %d "
                                      "(/proc/self/fd)", fds[i]);
            }
            n++;
        }
    }
    return n;
}

int pcow_chain_files(const char *path, unsigned flags, char ***files,
                     pcow_error *err)
{
    pcow_open_opts oo = { .flags = flags & PCOW_OPEN_NO_LOCK };
    pcow_image *img;
    char **list;
    int n, ret;

    *files = NULL;
    ret = pcow_open(path, &oo, &img, err);
    if (ret < 0) {
        return ret;
    }
    list = calloc(PCOW_MAX_CHAIN_DEPTH + 3, sizeof(*list));
    n = list ? collect_files(img, list, err)
             : pcow_set_error(err, -ENOMEM, "out of memory");
    ret = pcow_close(img, n < 0 ? NULL : err);
    if (n < 0 || ret < 0) {
        pcow_chain_files_free(list);
        return n < 0 ? n : ret;
    }
    *files = list;
    return n;
}
