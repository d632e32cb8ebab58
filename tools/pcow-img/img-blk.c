/*
 * pcow-img: byte access to pcow images and raw files
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-img.h"

int img_blk_open(ImgBlk *b, const char *path, ImgFormat fmt, unsigned flags)
{
    memset(b, 0, sizeof(*b));
    b->fd = -1;
    b->writable = flags & IMG_OPEN_RDWR;

    if (access(path, F_OK) < 0) {
        img_error(path, "cannot open: %s", strerror(errno));
        return -errno;
    }
    if (fmt == IMG_FMT_NONE) {
        fmt = pcow_probe(path) ? IMG_FMT_PCOW : IMG_FMT_RAW;
    }
    b->fmt = fmt;
    b->filename = g_strdup(path);

    if (fmt == IMG_FMT_PCOW) {
        pcow_open_opts oo = { 0 };
        pcow_error err = { 0 };
        int ret;

        if (flags & IMG_OPEN_RDWR) {
            oo.flags |= PCOW_OPEN_RDWR;
        }
        if (flags & IMG_OPEN_FORCE_SHARE) {
            oo.flags |= PCOW_OPEN_NO_LOCK;
        }
        if (flags & IMG_OPEN_NO_BACKING) {
            oo.flags |= PCOW_OPEN_NO_BACKING;
        }
        ret = pcow_open(path, &oo, &b->img, &err);
        if (ret < 0) {
            img_pcow_error(path, &err, ret);
            g_free(b->filename);
            b->filename = NULL;
            return ret;
        }
        b->size = pcow_virtual_size(b->img);
    } else {
        pcow_error err = { 0 };
        int fd;

        /*
         * Written as raw, a pcow image is lost: resize would truncate it,
         * convert -n overwrite its header.  Reading it as raw is harmless.
         */
        if ((flags & IMG_OPEN_RDWR) && pcow_probe(path)) {
            img_error(path, "is a pcow image: refusing to write it as raw");
            g_free(b->filename);
            b->filename = NULL;
            return -EINVAL;
        }
        fd = pcow_open_data_file(path, flags & IMG_OPEN_RDWR ? O_RDWR :
                                 O_RDONLY, true, &b->size, &err);
        if (fd < 0) {
            img_pcow_error(path, &err, fd);
            g_free(b->filename);
            b->filename = NULL;
            return fd;
        }
        b->fd = fd;
    }
    return 0;
}

bool img_blk_uses_file(ImgBlk *b, const char *path, bool *itself)
{
    pcow_chain_role role;
    struct stat want, st;

    *itself = false;
    if (!b->img) {
        *itself = stat(path, &want) == 0 && fstat(b->fd, &st) == 0 &&
                  st.st_dev == want.st_dev && st.st_ino == want.st_ino;
        return *itself;
    }
    role = pcow_chain_role_of(b->img, path);
    *itself = role == PCOW_CHAIN_SELF;
    return role != PCOW_CHAIN_NONE;
}

int img_blk_close(ImgBlk *b)
{
    int ret = 0;

    if (b->img) {
        pcow_error err = { 0 };

        ret = pcow_close(b->img, &err);
        if (ret < 0) {
            img_pcow_error(b->filename, &err, ret);
        }
        b->img = NULL;
    }
    if (b->fd >= 0) {
        if (b->writable && fsync(b->fd) < 0) {
            ret = -errno;
            img_error(b->filename, "cannot sync: %s", strerror(errno));
        }
        if (close(b->fd) < 0 && ret == 0) {
            ret = -errno;
            img_error(b->filename, "cannot close: %s", strerror(errno));
        }
        b->fd = -1;
    }
    g_free(b->filename);
    b->filename = NULL;
    return ret;
}

int img_blk_read(ImgBlk *b, uint64_t off, void *buf, uint64_t len)
{
    uint8_t *p = buf;

    if (b->fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };
        uint64_t n = len;
        int64_t ret;

        /* Past the end of the image reads as zeros (like a raw file). */
        if (off >= b->size) {
            memset(p, 0, len);
            return 0;
        }
        if (n > b->size - off) {
            n = b->size - off;
            memset(p + n, 0, len - n);
        }
        ret = pcow_pread(b->img, off, p, n, &err);
        if (ret < 0) {
            img_pcow_error(b->filename, &err, (int)ret);
            return (int)ret;
        }
        if ((uint64_t)ret < n) {
            memset(p + ret, 0, n - ret);
        }
        return 0;
    }

    while (len > 0) {
        ssize_t r = pread(b->fd, p, len, off);

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            img_error(b->filename, "read error at offset %" PRIu64 ": %s",
                      off, strerror(errno));
            return -errno;
        }
        if (r == 0) {
            memset(p, 0, len);
            break;
        }
        p += r;
        off += r;
        len -= r;
    }
    return 0;
}

int img_blk_write(ImgBlk *b, uint64_t off, const void *buf, uint64_t len)
{
    const uint8_t *p = buf;

    if (b->fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };
        int64_t ret = pcow_pwrite(b->img, off, p, len, &err);

        if (ret < 0) {
            img_pcow_error(b->filename, &err, (int)ret);
            return (int)ret;
        }
        if ((uint64_t)ret != len) {
            img_error(b->filename, "short write at offset %" PRIu64, off);
            return -EIO;
        }
        return 0;
    }

    while (len > 0) {
        ssize_t r = pwrite(b->fd, p, len, off);

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            img_error(b->filename, "write error at offset %" PRIu64 ": %s",
                      off, strerror(errno));
            return -errno;
        }
        p += r;
        off += r;
        len -= r;
    }
    return 0;
}

int img_blk_write_changed(ImgBlk *b, uint64_t off, const uint8_t *data,
                          const uint8_t *ref, uint64_t len,
                          uint64_t *written)
{
    uint64_t i = 0;

    while (i < len) {
        uint64_t j = i;

        /* A run of differing blocks is written with one call. */
        while (j < len) {
            uint64_t bl = MIN(IMG_BLOCK - (off + j) % IMG_BLOCK, len - j);

            if (memcmp(data + j, ref + j, bl) == 0) {
                break;
            }
            j += bl;
        }
        if (j > i) {
            int ret = img_blk_write(b, off + i, data + i, j - i);

            if (ret < 0) {
                return ret;
            }
            if (written) {
                *written += j - i;
            }
            i = j;
        }
        if (i < len) {
            /* The block at i is the same in both: skip it. */
            i += MIN(IMG_BLOCK - (off + i) % IMG_BLOCK, len - i);
        }
    }
    return 0;
}

int img_blk_zero(ImgBlk *b, uint64_t off, uint64_t len)
{
    if (len == 0) {
        return 0;
    }
    if (b->fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };
        int ret = pcow_zero_range(b->img, off, len, &err);

        if (ret < 0) {
            img_pcow_error(b->filename, &err, ret);
        }
        return ret;
    }

    if (off >= b->size) {
        return 0;
    }
    if (len > b->size - off) {
        len = b->size - off;
    }
    if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  off, len) == 0) {
        return 0;
    }
    /* No hole punching here (block device, old file system): write. */
    {
        g_autofree uint8_t *zeros = g_malloc0(1 << 20);

        while (len > 0) {
            uint64_t n = MIN(len, 1 << 20);
            int ret = img_blk_write(b, off, zeros, n);

            if (ret < 0) {
                return ret;
            }
            off += n;
            len -= n;
        }
    }
    return 0;
}

int img_blk_flush(ImgBlk *b)
{
    if (b->fmt == IMG_FMT_PCOW) {
        pcow_error err = { 0 };
        int ret = pcow_flush(b->img, &err);

        if (ret < 0) {
            img_pcow_error(b->filename, &err, ret);
        }
        return ret;
    }
    if (fsync(b->fd) < 0) {
        img_error(b->filename, "cannot sync: %s", strerror(errno));
        return -errno;
    }
    return 0;
}

int img_blk_status(ImgBlk *b, uint64_t off, uint64_t max, uint64_t *pnum)
{
    if (off >= b->size) {
        *pnum = max;
        return 0;
    }
    if (max > b->size - off) {
        max = b->size - off;
    }

    if (b->fmt == IMG_FMT_PCOW) {
        pcow_extent ext;
        int ret = pcow_get_extent(b->img, off, max, &ext);

        if (ret < 0) {
            img_error(b->filename, "cannot get extent at offset %" PRIu64
                      ": %s", off, strerror(-ret));
            return ret;
        }
        *pnum = MIN(ext.length, max);
        if (*pnum == 0) {
            *pnum = MIN(max, 4096);
            return 1;
        }
        if (ext.kind == PCOW_EXTENT_HOLE) {
            return 0;
        }
        return 1;
    } else {
        off_t data = lseek(b->fd, off, SEEK_DATA);
        off_t hole;

        if (data < 0) {
            if (errno == ENXIO) {
                /* Only a hole up to the end of the file. */
                *pnum = max;
                return 0;
            }
            /* SEEK_DATA unsupported: everything is data. */
            *pnum = max;
            return 1;
        }
        if ((uint64_t)data > off) {
            *pnum = MIN((uint64_t)data - off, max);
            return 0;
        }
        hole = lseek(b->fd, off, SEEK_HOLE);
        if (hole < 0 || (uint64_t)hole <= off) {
            *pnum = max;
        } else {
            *pnum = MIN((uint64_t)hole - off, max);
        }
        return 1;
    }
}
