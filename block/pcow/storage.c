/*
 * libpcow storage probe: what lies under an image file (file system, DAX,
 * the NVDIMM namespace found with libndctl) and a suggested cluster size
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <libpmem.h>
#include <limits.h>
#include <ndctl/libndctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "pcow-int.h"

/*
 * A MAP_SYNC mapping succeeded: the file system is DAX and synchronous page
 * faults keep its metadata consistent, so a CPU cache flush is enough to make
 * stores durable.  libpmem's pmem_map_file() decides the same way;
 * pmem_is_pmem() cannot be asked, it only knows mappings libpmem made.
 * PMEM_IS_PMEM_FORCE (libpmem's own override) is honoured.
 */
bool pcow_map_sync_means_pmem(void)
{
    const char *force = getenv("PMEM_IS_PMEM_FORCE");

    return force ? atoi(force) != 0 : true;
}

static const char *fs_name(long type)
{
    switch ((unsigned long)type) {
    case 0xef53:
        return "ext4";
    case 0x58465342:
        return "xfs";
    case 0x01021994:
        return "tmpfs";
    case 0x9123683e:
        return "btrfs";
    case 0x6969:
        return "nfs";
    case 0x794c7630:
        return "overlayfs";
    case 0x65735546:
        return "fuse";
    case 0x2fc12fc1:
        return "zfs";
    case 0xf2f52010:
        return "f2fs";
    default:
        return "unknown";
    }
}

/* The block device (e.g. "pmem0") holding st_dev, from sysfs */
static bool block_device_of(dev_t dev, char *out, size_t outlen)
{
    char link[64], target[PATH_MAX], part[PATH_MAX + 16];
    char *base;
    ssize_t n;
    struct stat st;

    snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(dev),
             minor(dev));
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0) {
        return false;
    }
    target[n] = '\0';
    /* A partition (pmem0p1) is a subdirectory of its disk (pmem0) */
    snprintf(part, sizeof(part), "%s/partition", link);
    if (stat(part, &st) == 0) {
        char *slash = strrchr(target, '/');

        if (slash) {
            *slash = '\0';
        }
    }
    base = strrchr(target, '/');
    snprintf(out, outlen, "%.63s", base ? base + 1 : target);
    return true;
}

static const char *mode_name(enum ndctl_namespace_mode m)
{
    switch (m) {
    case NDCTL_NS_MODE_FSDAX:
        return "fsdax";
    case NDCTL_NS_MODE_SECTOR:
        return "sector";
    case NDCTL_NS_MODE_RAW:
        return "raw";
    case NDCTL_NS_MODE_DEVDAX:
        return "devdax";
    default:
        return "unknown";
    }
}

static void find_namespace(pcow_storage_info *si)
{
    struct ndctl_ctx *ctx;
    struct ndctl_bus *bus;
    struct ndctl_region *region;
    struct ndctl_namespace *ns;

    if (ndctl_new(&ctx) < 0) {
        return;
    }
    ndctl_bus_foreach(ctx, bus) {
        ndctl_region_foreach(bus, region) {
            ndctl_namespace_foreach(region, ns) {
                const char *bdev = ndctl_namespace_get_block_device(ns);
                struct ndctl_pfn *ns_pfn = ndctl_namespace_get_pfn(ns);
                enum ndctl_namespace_mode mode;

                /* An fsdax namespace's block device belongs to its pfn */
                if ((!bdev || !*bdev) && ns_pfn) {
                    bdev = ndctl_pfn_get_block_device(ns_pfn);
                }

                if (!bdev || strcmp(bdev, si->block_device)) {
                    continue;
                }
                si->has_namespace = true;
                snprintf(si->namespace_name, sizeof(si->namespace_name),
                         "%s", ndctl_namespace_get_devname(ns));
                mode = ndctl_namespace_get_mode(ns);
                snprintf(si->namespace_mode, sizeof(si->namespace_mode),
                         "%s", mode_name(mode));
                si->namespace_size = ndctl_namespace_get_size(ns);
                if (mode == NDCTL_NS_MODE_FSDAX) {
                    struct ndctl_pfn *pfn = ndctl_namespace_get_pfn(ns);

                    if (pfn) {
                        si->namespace_align = ndctl_pfn_get_align(pfn);
                        if (!si->namespace_size) {
                            si->namespace_size = ndctl_pfn_get_size(pfn);
                        }
                    }
                }
                goto done;
            }
        }
    }
done:
    ndctl_unref(ctx);
}

int pcow_storage_probe(const char *path, pcow_storage_info *si,
                       pcow_error *err)
{
    struct statfs sfs;
    struct stat st;
    uint64_t align;
    int fd;

    memset(si, 0, sizeof(*si));
    si->persist_method = PCOW_PERSIST_MSYNC;
    si->suggested_cluster_size = 1u << PCOW_DEFAULT_CLUSTER_BITS;
    /*
     * Look first: open(2) of a FIFO would block forever, and nothing but a
     * regular file, directory or block device holds an image.  O_NONBLOCK
     * in case it was replaced since.
     */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) &&
        !S_ISDIR(st.st_mode) && !S_ISBLK(st.st_mode)) {
        return pcow_set_file_error(err, -EINVAL, path, "not a regular file, "
                                   "directory or block device");
    }
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        /* A file about to be created: probe its directory */
        char *tmp = strdup(path);

        if (!tmp) {
            return pcow_set_error(err, -ENOMEM, "out of memory");
        }
        fd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        free(tmp);
        if (fd < 0) {
            return pcow_set_file_error(err, -errno, path, "cannot open: %s",
                                       strerror(errno));
        }
    }
    if (fstatfs(fd, &sfs) == 0) {
        snprintf(si->fs_type, sizeof(si->fs_type), "%s",
                 fs_name(sfs.f_type));
    }
    if (fstat(fd, &st) < 0) {
        int e = -errno;

        close(fd);
        return pcow_set_file_error(err, e, path, "cannot stat");
    }
    if (S_ISREG(st.st_mode) && st.st_size >= 4096) {
        /* MAP_SYNC is refused unless the file system is DAX-capable */
        void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED_VALIDATE | MAP_SYNC,
                       fd, 0);

        if (p != MAP_FAILED) {
            si->on_dax = true;
            si->is_pmem = pcow_map_sync_means_pmem();
            munmap(p, 4096);
        }
    }
    close(fd);
    if (si->on_dax && si->is_pmem) {
        si->persist_method = PCOW_PERSIST_PMEM;
    }
    if (block_device_of(st.st_dev, si->block_device,
                        sizeof(si->block_device)) &&
        !strncmp(si->block_device, "pmem", 4)) {
        find_namespace(si);
    }
    align = si->namespace_align;
    if (si->has_namespace && align) {
        if (align < (1u << PCOW_MIN_CLUSTER_BITS)) {
            align = 1u << PCOW_MIN_CLUSTER_BITS;
        }
        if (align > (1u << PCOW_MAX_CLUSTER_BITS)) {
            align = 1u << PCOW_MAX_CLUSTER_BITS;
        }
        si->suggested_cluster_size = align;
    }
    return 0;
}
