/*
 * Helpers for the Image Monitor tests
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef MON_TEST_H
#define MON_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow/monitor.h"

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

#define CHECK_OK(expr, errp)                                               \
    do {                                                                   \
        int r_ = (expr);                                                   \
        const pcow_error *e_ = (errp);                                     \
        if (r_ < 0) {                                                      \
            fprintf(stderr, "%s:%d: %s = %d (%s): %s\n", __FILE__,         \
                    __LINE__, #expr, r_, strerror(-r_),                    \
                    e_ ? e_->msg : "");                                    \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

#define CHECK_EQ(a, b)                                                     \
    do {                                                                   \
        uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                   \
        if (a_ != b_) {                                                    \
            fprintf(stderr, "%s:%d: %s == %" PRIu64 ", expected %s == %"   \
                    PRIu64 "\n", __FILE__, __LINE__, #a, a_, #b, b_);      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static char test_dir_path[4096];
static pid_t test_dir_owner;

static int test_dir_rm_one(const char *path, const struct stat *st, int flag,
                           struct FTW *ftw)
{
    return remove(path) < 0 ? -1 : 0;
}

/* At exit of the process that made it (not of a forked child) */
static void test_dir_remove(void)
{
    if (getpid() == test_dir_owner && !getenv("PCOW_KEEP_TEST_DIR")) {
        nftw(test_dir_path, test_dir_rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    }
}

/*
 * A fresh directory for one test (under PCOW_TEST_DIR, else /var/tmp),
 * removed with everything in it when the test exits, pass or fail
 * (PCOW_KEEP_TEST_DIR=1 keeps it).
 */
static inline const char *test_dir(const char *name)
{
    const char *t = getenv("PCOW_TEST_DIR");

    snprintf(test_dir_path, sizeof(test_dir_path), "%s/pcow-mon-%s-XXXXXX",
             t ? t : "/var/tmp", name);
    if (!mkdtemp(test_dir_path)) {
        perror("mkdtemp");
        exit(1);
    }
    if (!test_dir_owner) {
        test_dir_owner = getpid();
        atexit(test_dir_remove);
    }
    return test_dir_path;
}

static inline void make_image(const char *path, uint64_t size,
                              uint32_t cluster, const char *backing,
                              pcow_backing_format fmt)
{
    pcow_create_opts co = {
        .virtual_size = size,
        .cluster_size = cluster,
        .backing_file = backing,
        .backing_format = fmt,
    };
    pcow_error err = { 0 };

    unlink(path);
    CHECK_OK(pcow_create(path, &co, &err), &err);
}

static inline void image_info(const char *path, pcow_info *info)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_NO_LOCK };
    pcow_image *img;
    pcow_error err = { 0 };

    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    pcow_get_info(img, info);
    pcow_close(img, NULL);
}

/* Deterministic content for (tag, byte offset). */
static inline uint8_t pattern(uint32_t tag, uint64_t off)
{
    uint64_t x = (off / 8) * 0x9e3779b97f4a7c15ull +
                 tag * 0xbf58476d1ce4e5b9ull;

    x ^= x >> 31;
    return (uint8_t)(x >> (8 * (off % 8)));
}

static inline void fill(uint8_t *p, uint64_t off, uint64_t len, uint32_t tag)
{
    uint64_t i;

    for (i = 0; i < len; i++) {
        p[i] = pattern(tag, off + i);
    }
}

/* Read the whole image through libpcow and compare with @shadow. */
static inline void verify_image(const char *path, const uint8_t *shadow,
                                uint64_t size)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_NO_LOCK };
    pcow_image *img;
    pcow_error err = { 0 };
    uint8_t *buf = malloc(1 << 20);
    uint64_t off;

    CHECK(buf);
    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    for (off = 0; off < size; off += 1 << 20) {
        uint64_t n = size - off < (1 << 20) ? size - off : (1 << 20);
        int64_t r = pcow_pread(img, off, buf, n, &err);

        CHECK_OK((int)(r < 0 ? r : 0), &err);
        if (memcmp(buf, shadow + off, n)) {
            uint64_t i;

            for (i = 0; i < n && buf[i] == shadow[off + i]; i++) {
            }
            fprintf(stderr, "%s: mismatch at 0x%" PRIx64 ": %02x != %02x\n",
                    path, off + i, buf[i], shadow[off + i]);
            exit(1);
        }
    }
    pcow_close(img, NULL);
    free(buf);
}

static inline void check_clean(const char *path)
{
    pcow_check_result res;
    pcow_error err = { 0 };
    int r;

    memset(&res, 0, sizeof(res));
    r = pcow_check(path, 0, false, &res, &err);
    if (r < 0 || res.corruptions || res.leaks) {
        fprintf(stderr, "%s: check: r=%d corruptions=%" PRIu64 " leaks=%"
                PRIu64 " %s %s\n", path, r, res.corruptions, res.leaks,
                res.first_problem, err.msg);
        exit(1);
    }
}

static inline uint64_t disk_usage(const char *path)
{
    struct stat st;

    CHECK(stat(path, &st) == 0);
    return (uint64_t)st.st_blocks * 512;
}

#endif /* MON_TEST_H */
