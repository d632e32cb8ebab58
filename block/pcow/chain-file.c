/*
 * libpcow: which file of an open image's chain is a given path
 *
 * Front ends ask this before they write a file (pcow-img convert/commit)
 * or report a lock conflict (QEMU's pcow backend): writing a file that an
 * open image reads, or locking it twice in one process, must be caught by
 * identity (device and inode), not by name.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <sys/stat.h>

#include "pcow-int.h"

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
