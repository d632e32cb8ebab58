/*
 * The open + check entry point shared by the libFuzzer target and the
 * corpus replay test (see fuzz-entry.h)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcow/pcow.h"
#include "pcow-int.h"
#include "fuzz-entry.h"

#define MAX_EXTENTS 100000
#define READ_MAX (256 * 1024)

static void contract(bool ok, const char *what, int ret, const char *msg)
{
    if (!ok) {
        fprintf(stderr, "pcow fuzz: contract broken by %s: ret %d, '%s'\n",
                what, ret, msg ? msg : "");
        abort();
    }
}

/* A failing call returns a negative errno and says why */
static void check_error(const char *what, int ret, const pcow_error *err)
{
    contract(ret >= -4095, what, ret, err->msg);
    if (ret < 0) {
        contract(err->msg[0] != '\0', what, ret, err->msg);
    }
}

static void walk_extents(pcow_image *img)
{
    uint64_t size = pcow_virtual_size(img), off = 0;
    unsigned n = 0;

    while (off < size && n++ < MAX_EXTENTS) {
        pcow_extent e;
        int ret = pcow_get_extent(img, off, size - off, &e);

        contract(ret == 0, "pcow_get_extent", ret, NULL);
        contract(e.offset == off && e.length > 0 &&
                 e.length <= size - off, "pcow_get_extent (extent)", 0,
                 NULL);
        contract(e.kind == PCOW_EXTENT_HOLE || e.fd >= 0,
                 "pcow_get_extent (fd)", 0, NULL);
        off += e.length;
    }
}

static void read_some(pcow_image *img)
{
    static uint8_t buf[READ_MAX];
    uint64_t size = pcow_virtual_size(img);
    uint64_t len = size < READ_MAX ? size : READ_MAX;
    pcow_error err = { 0 };
    int64_t r;

    r = pcow_pread(img, 0, buf, len, &err);
    check_error("pcow_pread", r < 0 ? (int)r : 0, &err);
    if (size > len) {
        r = pcow_pread(img, size - len, buf, len, &err);
        check_error("pcow_pread (end)", r < 0 ? (int)r : 0, &err);
    }
}

static bool known_base(const char *name)
{
    return !strcmp(name, "base") || !strcmp(name, "base.raw") ||
           !strcmp(name, "input") || !strcmp(name, "./input");
}

/*
 * An image that check -r all says it repaired must open, read-only and
 * read-write, and check clean afterwards (leaks it could not reclaim
 * excepted)
 */
static void check_repaired(const char *path, uint64_t leaks_left)
{
    pcow_open_opts o = { .flags = PCOW_OPEN_NO_BACKING };
    pcow_check_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    int ret;

    ret = pcow_open(path, &o, &img, &err);
    contract(ret == 0, "pcow_open (after a repair)", ret, err.msg);
    walk_extents(img);
    read_some(img);
    pcow_close(img, NULL);
    ret = pcow_check(path, 0, false, &res, &err);
    contract(ret == 0 && res.corruptions == 0 && res.leaks <= leaks_left,
             "pcow_check (after a repair)", ret,
             ret < 0 ? err.msg : res.first_problem);
    o.flags = PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING;
    ret = pcow_open(path, &o, &img, &err);
    contract(ret == 0, "pcow_open (rdwr, after a repair)", ret, err.msg);
    ret = pcow_close(img, &err);
    check_error("pcow_close (rdwr, after a repair)", ret, &err);
}

static void run(const char *path)
{
    pcow_open_opts o = { .flags = PCOW_OPEN_NO_BACKING };
    pcow_check_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_info *info;
    bool chain = false, opened;
    int ret;

    ret = pcow_open(path, &o, &img, &err);
    check_error("pcow_open", ret, &err);
    opened = ret == 0;
    if (ret == 0) {
        info = malloc(sizeof(*info));
        if (info) {
            pcow_get_info(img, info);
            chain = info->backing_format != PCOW_BACKING_NONE &&
                    known_base(info->backing_file);
            free(info);
        }
        walk_extents(img);
        read_some(img);
        ret = pcow_close(img, &err);
        check_error("pcow_close", ret, &err);
    }
    if (chain) {
        o.flags = 0;
        ret = pcow_open(path, &o, &img, &err);
        check_error("pcow_open (chain)", ret, &err);
        if (ret == 0) {
            walk_extents(img);
            read_some(img);
            pcow_close(img, NULL);
        }
    }
    memset(&res, 0, sizeof(res));
    ret = pcow_check(path, 0, false, &res, &err);
    check_error("pcow_check", ret, &err);
    /* What check calls sound, open accepts */
    contract(ret < 0 || res.corruptions || opened, "pcow_check (clean, but "
             "pcow_open refused it)", ret, err.msg);
    if (ret < 0 || res.corruptions == 0) {
        /* Recovery of what opens: leaks reclaimed, WRITABLE normalised */
        o.flags = PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING;
        ret = pcow_open(path, &o, &img, &err);
        check_error("pcow_open (rdwr)", ret, &err);
        if (ret == 0) {
            walk_extents(img);
            ret = pcow_close(img, &err);
            check_error("pcow_close (rdwr)", ret, &err);
        }
        return;
    }
    /* Corrupt but parseable: repair it, then it must open */
    ret = pcow_check(path, PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS, false,
                     &res, &err);
    check_error("pcow_check (repair)", ret, &err);
    if (ret == 0 && res.corruptions == 0) {
        check_repaired(path, res.leaks);
    }
}

/* Make the CRCs right: of the snapshot table, then of each slot */
static bool fix_crcs(uint8_t *d, size_t size)
{
    bool changed = false;
    int s;

    for (s = 0; s < 2; s++) {
        uint8_t *slot = d + (s ? PCOW_SLOT_B : PCOW_SLOT_A);
        uint32_t len, crc;

        if ((size_t)(slot - d) + PCOW_SLOT_SIZE > size ||
            pcow_ld32(slot) != PCOW_MAGIC) {
            continue;
        }
        len = pcow_ld32(slot + 8);
        if (len < PCOW_HEADER_FIXED || len > PCOW_SLOT_SIZE) {
            continue;
        }
        {
            uint64_t so = pcow_ld64(slot + 80);
            uint32_t ss = pcow_ld32(slot + 88);

            if (ss && so < size && ss <= size - so) {
                crc = pcow_crc32c(0, d + so, ss);
                if (pcow_ld32(slot + 92) != crc) {
                    pcow_st32(slot + 92, crc);
                    changed = true;
                }
            }
        }
        crc = pcow_ld32(slot + 12);
        pcow_st32(slot + 12, 0);
        pcow_st32(slot + 12, pcow_crc32c(0, slot, len));
        changed |= pcow_ld32(slot + 12) != crc;
    }
    return changed;
}

static int write_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t done = 0;

    if (fd < 0) {
        return -errno;
    }
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);

        if (n <= 0) {
            close(fd);
            return -EIO;
        }
        done += n;
    }
    close(fd);
    return 0;
}

void pcow_fuzz_one(const char *dir, const uint8_t *data, size_t size)
{
    char path[4096];
    uint8_t *copy;

    snprintf(path, sizeof(path), "%s/input", dir);
    if (write_file(path, data, size) < 0) {
        abort();
    }
    run(path);
    copy = malloc(size ? size : 1);
    if (!copy) {
        return;
    }
    memcpy(copy, data, size);
    if (fix_crcs(copy, size)) {
        if (write_file(path, copy, size) < 0) {
            abort();
        }
        run(path);
    }
    free(copy);
}

int pcow_fuzz_setup(const char *dir)
{
    pcow_create_opts co = { .virtual_size = 1 << 20, .cluster_size = 4096 };
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_error err = { 0 };
    pcow_image *img;
    uint8_t buf[8192];
    char path[4096];
    int ret, i;

    for (i = 0; i < (int)sizeof(buf); i++) {
        buf[i] = i * 7 + 1;
    }
    snprintf(path, sizeof(path), "%s/base", dir);
    unlink(path);
    ret = pcow_create(path, &co, &err);
    if (ret == 0) {
        ret = pcow_open(path, &oo, &img, &err);
    }
    if (ret == 0) {
        pcow_pwrite(img, 8192, buf, sizeof(buf), &err);
        /* Snapshot id 1, the base of the clone seeds */
        pcow_snapshot_create(img, "s", NULL, &err);
        ret = pcow_close(img, &err);
    }
    if (ret < 0) {
        fprintf(stderr, "pcow fuzz setup: %s\n", err.msg);
        return ret;
    }
    snprintf(path, sizeof(path), "%s/base.raw", dir);
    return write_file(path, buf, sizeof(buf));
}
