/*
 * Helpers shared by the libpcow unit tests (cmocka)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_UNIT_COMMON_H
#define PCOW_UNIT_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pcow/pcow.h"
#include "pcow-int.h"

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

typedef struct TestDir {
    char dir[256];
} TestDir;

static inline void td_init(TestDir *td, const char *base)
{
    snprintf(td->dir, sizeof(td->dir), "%s/pcow-unit-XXXXXX",
             base ? base : "/tmp");
    assert_non_null(mkdtemp(td->dir));
}

static inline void td_cleanup(TestDir *td)
{
    char cmd[300];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", td->dir);
    assert_int_equal(system(cmd), 0);
}

static inline const char *td_path(TestDir *td, const char *name,
                                  char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", td->dir, name);
    return buf;
}

static inline void mk_image(const char *path, uint64_t size, uint32_t cs,
                            const char *backing, pcow_backing_format fmt)
{
    pcow_create_opts o = {
        .virtual_size = size,
        .cluster_size = cs,
        .backing_file = backing,
        .backing_format = fmt,
    };
    pcow_error err = { 0 };
    int ret = pcow_create(path, &o, &err);

    if (ret < 0) {
        fprintf(stderr, "create %s: %s\n", path, err.msg);
    }
    assert_int_equal(ret, 0);
}

static inline pcow_image *open_image(const char *path, unsigned flags)
{
    pcow_open_opts o = { .flags = flags };
    pcow_error err = { 0 };
    pcow_image *img = NULL;
    int ret = pcow_open(path, &o, &img, &err);

    if (ret < 0) {
        fprintf(stderr, "open %s: %s\n", path, err.msg);
    }
    assert_int_equal(ret, 0);
    assert_non_null(img);
    return img;
}

/* Open that must fail; returns the message */
static inline int open_fails(const char *path, unsigned flags, char *msg,
                             size_t len)
{
    pcow_open_opts o = { .flags = flags };
    pcow_error err = { 0 };
    pcow_image *img = NULL;
    int ret = pcow_open(path, &o, &img, &err);

    assert_true(ret < 0);
    assert_null(img);
    snprintf(msg, len, "%s", err.msg);
    return ret;
}

static inline void close_image(pcow_image *img)
{
    pcow_error err = { 0 };
    int ret = pcow_close(img, &err);

    if (ret < 0) {
        fprintf(stderr, "close: %s\n", err.msg);
    }
    assert_int_equal(ret, 0);
}

static inline void fill_pattern(uint8_t *buf, uint64_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    uint64_t i;

    for (i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x;
    }
}

static inline void write_bytes(pcow_image *img, uint64_t off, uint64_t len,
                               int byte)
{
    uint8_t *buf = malloc(len);
    pcow_error err = { 0 };

    assert_non_null(buf);
    memset(buf, byte, len);
    assert_int_equal(pcow_pwrite(img, off, buf, len, &err), (int64_t)len);
    free(buf);
}

/* Every byte of [off, off+len) equals @byte */
static inline void expect_bytes(pcow_image *img, uint64_t off, uint64_t len,
                                int byte)
{
    uint8_t *buf = malloc(len);
    pcow_error err = { 0 };
    uint64_t i;

    assert_non_null(buf);
    assert_int_equal(pcow_pread(img, off, buf, len, &err), (int64_t)len);
    for (i = 0; i < len; i++) {
        if (buf[i] != (uint8_t)byte) {
            fprintf(stderr, "offset 0x%llx: 0x%02x, expected 0x%02x\n",
                    (unsigned long long)(off + i), buf[i], byte & 0xff);
            fail();
        }
    }
    free(buf);
}

/* Patch bytes of a file */
static inline void poke(const char *path, uint64_t off, const void *buf,
                        size_t len)
{
    int fd = open(path, O_RDWR);

    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

static inline void peek(const char *path, uint64_t off, void *buf,
                        size_t len)
{
    int fd = open(path, O_RDONLY);

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

static inline void poke64(const char *path, uint64_t off, uint64_t v)
{
    uint8_t b[8];

    pcow_st64(b, v);
    poke(path, off, b, 8);
}

static inline uint64_t peek64(const char *path, uint64_t off)
{
    uint8_t b[8];

    peek(path, off, b, 8);
    return pcow_ld64(b);
}

/* Rewrite the current header slot (A, generation 1) with a fixed CRC */
static inline void patch_header32(const char *path, unsigned field,
                                  uint32_t v)
{
    uint8_t slot[PCOW_SLOT_SIZE];
    uint32_t len;

    peek(path, PCOW_SLOT_A, slot, sizeof(slot));
    pcow_st32(slot + field, v);
    len = pcow_ld32(slot + 8);
    memset(slot + 12, 0, 4);
    pcow_st32(slot + 12, pcow_crc32c(0, slot, len));
    poke(path, PCOW_SLOT_A, slot, sizeof(slot));
}

static inline void patch_header64(const char *path, unsigned field,
                                  uint64_t v)
{
    uint8_t slot[PCOW_SLOT_SIZE];
    uint32_t len;

    peek(path, PCOW_SLOT_A, slot, sizeof(slot));
    pcow_st64(slot + field, v);
    len = pcow_ld32(slot + 8);
    memset(slot + 12, 0, 4);
    pcow_st32(slot + 12, pcow_crc32c(0, slot, len));
    poke(path, PCOW_SLOT_A, slot, sizeof(slot));
}

static inline bool contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle)) {
        fprintf(stderr, "'%s' does not contain '%s'\n", hay, needle);
        return false;
    }
    return true;
}

static inline uint64_t check_clean(const char *path)
{
    pcow_check_result r;
    pcow_error err = { 0 };

    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    if (r.corruptions || r.leaks) {
        fprintf(stderr, "check %s: %llu corruptions, %llu leaks: %s\n", path,
                (unsigned long long)r.corruptions,
                (unsigned long long)r.leaks, r.first_problem);
    }
    return r.corruptions + r.leaks;
}

static inline double now_sec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif /* PCOW_UNIT_COMMON_H */
