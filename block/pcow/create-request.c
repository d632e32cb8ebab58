/*
 * libpcow: a new image as a front end asks for it (pcow-img create), as
 * bdrv_img_create() serves qemu-img: the base is resolved and probed, the
 * size taken from it, the cluster size from the storage, the geometry
 * checked -- all before the file is made -- then pcow_create() makes it.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcow-int.h"

/* The storage @path will live on: the file if it exists, else its dir */
static int probe_new_file_storage(const char *path, pcow_storage_info *si)
{
    char *tmp;
    int ret;

    memset(si, 0, sizeof(*si));
    if (access(path, F_OK) == 0) {
        return pcow_storage_probe(path, si, NULL);
    }
    tmp = strdup(path);
    if (!tmp) {
        return -ENOMEM;
    }
    ret = pcow_storage_probe(dirname(tmp), si, NULL);
    free(tmp);
    return ret;
}

/* The size of the base for an image that takes it: whole pages, not 0 */
static int base_size(const char *path, const char *base_path,
                     pcow_backing_format fmt, uint64_t *size,
                     pcow_error *err)
{
    int ret;

    if (fmt == PCOW_BACKING_PCOW) {
        pcow_open_opts oo = { .flags = PCOW_OPEN_NO_BACKING };
        pcow_image *base;

        ret = pcow_open(base_path, &oo, &base, err);
        if (ret < 0) {
            return pcow_error_other_file(err, ret);
        }
        *size = pcow_virtual_size(base);
        pcow_close(base, NULL);     /* read-only: nothing to lose */
    } else {
        ret = pcow_open_data_file(base_path, O_RDONLY, true, size, err);
        if (ret < 0) {
            return pcow_error_other_file(err, ret);
        }
        close(ret);
    }
    /* Past a raw base's end reads as zeros */
    *size = pcow_round_to_pages(*size);
    if (*size == 0) {
        return pcow_set_file_error(err, -EINVAL, path, "backing file '%s' is "
                                   "empty: give a size", base_path);
    }
    return 0;
}

/*
 * Settle the base: its name fits, it can be read, its format (probed if
 * not given) and, when the request gives no size, the size.
 */
static int settle_base(const char *path, const pcow_create_request *req,
                       pcow_create_opts *co, pcow_error *err)
{
    char *tmp, base_path[4096];
    int ret;

    if (strlen(req->backing_file) > PCOW_MAX_BACKING_NAME) {
        return pcow_set_file_error(err, -ENAMETOOLONG, path, "backing file "
                                   "name longer than %d bytes",
                                   PCOW_MAX_BACKING_NAME);
    }
    tmp = strdup(path);
    if (!tmp) {
        return pcow_set_file_error(err, -ENOMEM, path, "out of memory");
    }
    ret = pcow_resolve_backing(dirname(tmp), req->backing_file, base_path,
                               sizeof(base_path));
    free(tmp);
    if (ret < 0 || access(base_path, R_OK) < 0) {
        ret = ret < 0 ? ret : -errno;
        return pcow_set_file_error(err, ret, path, "cannot open backing file "
                                   "'%s': %s", base_path, strerror(-ret));
    }
    co->backing_file = req->backing_file;
    co->backing_format = req->backing_format;
    if (co->backing_format == PCOW_BACKING_NONE) {
        co->backing_format = pcow_probe(base_path) ? PCOW_BACKING_PCOW :
                             PCOW_BACKING_RAW;
    }
    if (co->virtual_size == 0) {
        return base_size(path, base_path, co->backing_format,
                         &co->virtual_size, err);
    }
    return 0;
}

/* Cluster size and COW unit as pcow_create() will check them */
static int settle_geometry(const char *path, const pcow_create_request *req,
                           pcow_create_opts *co, pcow_error *err)
{
    uint32_t cs = req->cluster_size;
    pcow_storage_info si;
    pcow_geometry g;
    pcow_error gerr = { 0 };
    int ret;

    if (req->cluster_size_auto) {
        if (probe_new_file_storage(path, &si) == 0 &&
            si.suggested_cluster_size) {
            cs = si.suggested_cluster_size;
        } else {
            cs = 1u << PCOW_DEFAULT_CLUSTER_BITS;
        }
    }
    ret = pcow_geometry_for(co->virtual_size, cs, req->cow_unit, &g, &gerr);
    if (ret < 0) {
        return pcow_set_file_error(err, ret, path, "%s", gerr.msg);
    }
    co->cluster_size = g.cluster_size;
    co->cow_unit = g.cow_unit;
    return 0;
}

int pcow_create_image(const char *path, const pcow_create_request *req,
                      pcow_create_result *res, pcow_error *err)
{
    pcow_create_opts co = { .virtual_size = req->virtual_size };
    int ret;

    if (res) {
        memset(res, 0, sizeof(*res));
    }
    if (req->backing_file && req->backing_file[0]) {
        ret = settle_base(path, req, &co, err);
        if (ret < 0) {
            return ret;
        }
    } else if (req->backing_format != PCOW_BACKING_NONE) {
        return pcow_set_file_error(err, -EINVAL, path, "backing format given "
                                   "without a backing file");
    }
    ret = settle_geometry(path, req, &co, err);
    if (ret < 0) {
        return ret;
    }
    if (req->announce) {
        req->announce(req->opaque, &co);
    }
    ret = pcow_create(path, &co, err);
    if (ret == 0 && res) {
        res->opts = co;
        probe_new_file_storage(path, &res->storage);
    }
    return ret;
}
