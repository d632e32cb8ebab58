/*
 * libpcow unit tests: byte I/O (pread/pwrite/zero_range/flush), extents
 * (maximal merging, kinds, writability), storage probe, the image lock's
 * waiting
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <time.h>

#include "unit-common.h"

static TestDir td;
static char path[512];

#define CS 65536ull

static int setup(void **state)
{
    td_init(&td, NULL);
    td_path(&td, "a.pcow", path, sizeof(path));
    return 0;
}

static int teardown(void **state)
{
    td_cleanup(&td);
    return 0;
}

/* 1 GiB image, 2000 random writes of random sizes, mirrored in memory */
static void test_random_roundtrip(void **state)
{
    const uint64_t size = GiB;
    const int nwrites = 2000;
    uint64_t *offs = calloc(nwrites, 8), *lens = calloc(nwrites, 8);
    uint8_t *buf = malloc(256 * KiB), *got = malloc(256 * KiB);
    pcow_image *img;
    pcow_error err = { 0 };
    uint64_t x = 12345;
    int i, j;

    mk_image(path, size, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    for (i = 0; i < nwrites; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        lens[i] = 1 + (x >> 33) % (200 * KiB);
        offs[i] = (x >> 7) % (size - lens[i]);
        fill_pattern(buf, lens[i], i);
        assert_int_equal(pcow_pwrite(img, offs[i], buf, lens[i], &err),
                         (int64_t)lens[i]);
    }
    assert_int_equal(pcow_flush(img, &err), 0);
    close_image(img);
    img = open_image(path, 0);
    /* The last write covering a byte wins: check each write's survivors */
    for (i = 0; i < nwrites; i++) {
        fill_pattern(buf, lens[i], i);
        assert_int_equal(pcow_pread(img, offs[i], got, lens[i], &err),
                         (int64_t)lens[i]);
        for (j = i + 1; j < nwrites; j++) {
            uint64_t a = offs[j] > offs[i] ? offs[j] : offs[i];
            uint64_t b = offs[j] + lens[j] < offs[i] + lens[i] ?
                         offs[j] + lens[j] : offs[i] + lens[i];

            if (a < b) {
                /* Overwritten later: take the reader's bytes as truth */
                memcpy(buf + (a - offs[i]), got + (a - offs[i]), b - a);
            }
        }
        assert_memory_equal(got, buf, lens[i]);
    }
    /* Never-written regions read as zeros: find one */
    {
        pcow_extent ext;
        uint64_t off = 0;
        int holes = 0;

        while (off < size) {
            assert_int_equal(pcow_get_extent(img, off, size - off, &ext), 0);
            assert_int_equal(ext.offset, off);
            assert_true(ext.length > 0);
            if (ext.kind == PCOW_EXTENT_HOLE && holes++ < 20) {
                uint64_t n = ext.length < 64 * KiB ? ext.length : 64 * KiB;

                expect_bytes(img, off, n, 0);
            }
            off += ext.length;
        }
        assert_true(holes > 0);
    }
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    free(offs);
    free(lens);
    free(buf);
    free(got);
}

static void test_extents(void **state)
{
    pcow_image *img;
    pcow_extent ext;
    uint64_t off;

    mk_image(path, 256 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    /* Empty image: one hole over everything */
    assert_int_equal(pcow_get_extent(img, 0, 256 * MiB, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_HOLE);
    assert_int_equal(ext.length, 256 * MiB);
    assert_int_equal(pcow_get_extent(img, 4096, 8192, &ext), 0);
    assert_int_equal(ext.offset, 4096);
    assert_int_equal(ext.length, 8192);
    /* Four clusters written in order are contiguous in the file: merged */
    write_bytes(img, 10 * CS, 4 * CS, 1);
    assert_int_equal(pcow_get_extent(img, 10 * CS, 100 * CS, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_DATA);
    assert_int_equal(ext.length, 4 * CS);
    assert_true(ext.writable);
    assert_int_equal(ext.fd, pcow_fd(img));
    assert_int_equal(ext.depth, 0);
    off = ext.file_offset;
    /* Starting inside: offsets shift */
    assert_int_equal(pcow_get_extent(img, 11 * CS + 100, 100 * CS, &ext), 0);
    assert_int_equal(ext.file_offset, off + CS + 100);
    assert_int_equal(ext.length, 3 * CS - 100);
    /* A hole run up to the data */
    assert_int_equal(pcow_get_extent(img, 0, 256 * MiB, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_HOLE);
    assert_int_equal(ext.length, 10 * CS);
    /* Out of order: not contiguous, not merged */
    write_bytes(img, 21 * CS, CS, 2);
    write_bytes(img, 20 * CS, CS, 2);
    assert_int_equal(pcow_get_extent(img, 20 * CS, 2 * CS, &ext), 0);
    assert_int_equal(ext.length, CS);
    /* Frozen and writable do not merge */
    assert_int_equal(pcow_snapshot_create(img, "s", NULL, NULL), 0);
    write_bytes(img, 12 * CS, CS, 3);
    assert_int_equal(pcow_get_extent(img, 10 * CS, 4 * CS, &ext), 0);
    assert_false(ext.writable);
    assert_int_equal(ext.length, 2 * CS);
    assert_int_equal(pcow_get_extent(img, 12 * CS, 4 * CS, &ext), 0);
    assert_true(ext.writable);
    assert_int_equal(ext.length, CS);
    /* PARTIAL: copied unit writable, the rest frozen from the source */
    write_bytes(img, 13 * CS + 4096, 4096, 4);
    assert_int_equal(pcow_get_extent(img, 13 * CS, CS, &ext), 0);
    assert_false(ext.writable);
    assert_int_equal(ext.length, 4096);
    assert_int_equal(ext.file_offset, off + 3 * CS);
    assert_int_equal(pcow_get_extent(img, 13 * CS + 4096, CS, &ext), 0);
    assert_true(ext.writable);
    assert_int_equal(ext.length, 4096);
    assert_int_equal(pcow_get_extent(img, 13 * CS + 8192, CS, &ext), 0);
    assert_false(ext.writable);
    assert_int_equal(ext.length, CS - 8192);
    assert_int_equal(ext.file_offset, off + 3 * CS + 8192);
    expect_bytes(img, 13 * CS, 4096, 1);
    expect_bytes(img, 13 * CS + 4096, 4096, 4);
    expect_bytes(img, 13 * CS + 8192, CS - 8192, 1);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

static void test_zero_range(void **state)
{
    pcow_image *img;
    pcow_info info;
    pcow_extent ext;
    pcow_error err = { 0 };
    char base[512];

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 8 * CS, 7);
    assert_int_equal(pcow_zero_range(img, 100, 3 * CS, &err), 0);
    expect_bytes(img, 0, 100, 7);
    expect_bytes(img, 100, 3 * CS, 0);
    expect_bytes(img, 3 * CS + 100, 5 * CS - 100, 7);
    pcow_get_info(img, &info);
    /* Clusters 1 and 2 were wholly zeroed: deallocated */
    assert_int_equal(info.active_clusters, 6);
    assert_int_equal(pcow_get_extent(img, CS, CS, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_HOLE);
    assert_int_equal(pcow_zero_range(img, 63 * MiB, 2 * MiB, &err),
                     -EINVAL);
    assert_int_equal(pcow_zero_range(img, 0, 64 * MiB, &err), 0);
    expect_bytes(img, 0, 8 * CS, 0);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 0);
    close_image(img);
    assert_int_equal(check_clean(path), 0);

    /* Over a base, zeroing must hide the base's data */
    snprintf(base, sizeof(base), "%s", path);
    td_path(&td, "ov.pcow", path, sizeof(path));
    img = open_image(base, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4 * CS, 9);
    close_image(img);
    mk_image(path, 64 * MiB, 0, "a.pcow", PCOW_BACKING_PCOW);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, CS, 100, 1);
    assert_int_equal(pcow_zero_range(img, 0, 3 * CS, &err), 0);
    expect_bytes(img, 0, 3 * CS, 0);
    expect_bytes(img, 3 * CS, CS, 9);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    img = open_image(base, 0);
    expect_bytes(img, 0, 4 * CS, 9);
    close_image(img);
}

static void test_io_errors(void **state)
{
    pcow_image *img;
    pcow_error err = { 0 };
    uint8_t b[16];

    mk_image(path, 16 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, 0);
    assert_int_equal(pcow_pwrite(img, 0, b, 16, &err), -EROFS);
    assert_true(contains(err.msg, "a.pcow"));
    assert_int_equal(pcow_zero_range(img, 0, 16, &err), -EROFS);
    assert_int_equal(pcow_pread(img, 16 * MiB - 8, b, 16, &err), -EINVAL);
    assert_true(contains(err.msg, "beyond"));
    assert_int_equal(pcow_pread(img, 16 * MiB, b, 0, &err), 0);
    close_image(img);
}

static void test_storage_probe(void **state)
{
    pcow_storage_info si;
    pcow_error err = { 0 };
    char shm[512];
    TestDir t2;

    mk_image(path, 16 * MiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(pcow_storage_probe(path, &si, &err), 0);
    assert_true(si.fs_type[0] != '\0');
    assert_int_equal(si.suggested_cluster_size, 64 * KiB);
    assert_false(si.on_dax && !si.is_pmem && si.persist_method ==
                 PCOW_PERSIST_PMEM);
    td_init(&t2, "/dev/shm");
    td_path(&t2, "b.pcow", shm, sizeof(shm));
    mk_image(shm, 16 * MiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(pcow_storage_probe(shm, &si, &err), 0);
    assert_string_equal(si.fs_type, "tmpfs");
    assert_false(si.on_dax);
    assert_false(si.has_namespace);
    assert_int_equal(si.persist_method, PCOW_PERSIST_MSYNC);
    td_cleanup(&t2);
    /* A file not yet created: its directory is probed */
    td_path(&td, "new.pcow", shm, sizeof(shm));
    assert_int_equal(pcow_storage_probe(shm, &si, &err), 0);
    assert_int_equal(pcow_storage_probe("/nonexistent/dir/x", &si, &err),
                     -ENOENT);
}

static int lock_held;

static void *hold_lock(void *opaque)
{
    pcow_image *img = opaque;
    struct timespec ts = { 0, 300 * 1000 * 1000 };

    pcow_lock(img);
    __atomic_store_n(&lock_held, 1, __ATOMIC_RELEASE);
    nanosleep(&ts, NULL);       /* as a holder in msync would */
    pcow_unlock(img);
    return NULL;
}

/*
 * A waiter for the image lock sleeps while the holder sleeps: it must not
 * take a CPU (it did: sched_yield in a loop, about the whole 300 ms on an
 * idle CPU).  Its own CPU time, not a wall-clock figure, is checked.
 */
static void test_lock_wait_sleeps(void **state)
{
    pcow_image img;
    pthread_t t;
    struct timespec a, b;
    double cpu;

    memset(&img, 0, sizeof(img));
    assert_int_equal(pthread_create(&t, NULL, hold_lock, &img), 0);
    while (!__atomic_load_n(&lock_held, __ATOMIC_ACQUIRE)) {
        sched_yield();
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    pcow_lock(&img);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    pcow_unlock(&img);
    pthread_join(t, NULL);
    cpu = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    print_message("waiter's CPU time over a 300 ms hold: %.1f ms\n",
                  cpu * 1e3);
    assert_true(cpu < 0.050);
}

static struct timespec unlocked_at;

static void *hold_then_unlock(void *opaque)
{
    pcow_image *img = opaque;
    struct timespec ts = { 0, 50 * 1000 * 1000 };

    pcow_lock(img);
    __atomic_store_n(&lock_held, 1, __ATOMIC_RELEASE);
    nanosleep(&ts, NULL);
    clock_gettime(CLOCK_MONOTONIC, &unlocked_at);
    pcow_unlock(img);
    return NULL;
}

/*
 * A waiter gets the lock when it is released, not when a timer it set
 * expires: with a backoff of nanosleeps each rounded up to the thread's
 * timer slack (50 us by default; 1 s here), a hole-read fault waited
 * 68 us instead of 11.  The waiter must have the lock well within 0.5 s.
 */
static void test_lock_wakes_at_unlock(void **state)
{
    pcow_image img;
    pthread_t t;
    struct timespec got;
    unsigned long old_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    double lat;

    memset(&img, 0, sizeof(img));
    __atomic_store_n(&lock_held, 0, __ATOMIC_RELEASE);
    assert_int_equal(prctl(PR_SET_TIMERSLACK, 1000000000ul, 0, 0, 0), 0);
    assert_int_equal(pthread_create(&t, NULL, hold_then_unlock, &img), 0);
    while (!__atomic_load_n(&lock_held, __ATOMIC_ACQUIRE)) {
        sched_yield();
    }
    pcow_lock(&img);
    clock_gettime(CLOCK_MONOTONIC, &got);
    pcow_unlock(&img);
    pthread_join(t, NULL);
    prctl(PR_SET_TIMERSLACK, old_slack, 0, 0, 0);
    lat = (got.tv_sec - unlocked_at.tv_sec) +
          (got.tv_nsec - unlocked_at.tv_nsec) / 1e9;
    print_message("waiter got the lock %.3f ms after the unlock "
                  "(timer slack 1 s)\n", lat * 1e3);
    assert_true(lat < 0.5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_random_roundtrip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_extents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_storage_probe, setup, teardown),
        cmocka_unit_test(test_lock_wait_sleeps),
        cmocka_unit_test(test_lock_wakes_at_unlock),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
