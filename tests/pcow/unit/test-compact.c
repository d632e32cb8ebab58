/*
 * libpcow compaction (block/pcow/compact.c): guest content unchanged,
 * one data extent per guest run afterwards, check clean, and the images
 * it refuses.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "unit-common.h"

#define CS (64 * KiB)
#define VSIZE (64 * MiB)

static TestDir td;

static int setup(void **state)
{
    td_init(&td, NULL);
    return 0;
}

static int teardown(void **state)
{
    td_cleanup(&td);
    return 0;
}

/* Guest runs [first, first + n) of clusters, none touching another */
static const uint64_t runs[][2] = {
    { 3, 20 }, { 30, 1 }, { 40, 64 }, { 200, 2 }, { 300, 130 }, { 1000, 7 },
};
#define NRUNS (sizeof(runs) / sizeof(runs[0]))

/* Write every cluster of the runs alone, in a shuffled order */
static void write_shuffled(pcow_image *img, unsigned seed)
{
    uint64_t v[512], n = 0, i, j, t;
    uint8_t *buf = malloc(CS);
    pcow_error err = { 0 };
    size_t r;

    assert_non_null(buf);
    for (r = 0; r < NRUNS; r++) {
        for (i = 0; i < runs[r][1]; i++) {
            v[n++] = runs[r][0] + i;
        }
    }
    srand(seed);
    for (i = n - 1; i > 0; i--) {
        j = rand() % (i + 1);
        t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
    for (i = 0; i < n; i++) {
        fill_pattern(buf, CS, v[i] + 1);
        /* Zero pages inside and at the start: copies skip them */
        if (v[i] % 3 == 0) {
            memset(buf + 4096, 0, CS - 3 * 4096);
        } else if (v[i] % 3 == 1) {
            memset(buf, 0, 2 * 4096);
        }
        assert_int_equal(pcow_pwrite(img, v[i] * CS, buf, CS, &err),
                         (int64_t)CS);
    }
    free(buf);
}

static uint8_t *read_all(pcow_image *img)
{
    uint64_t size = pcow_virtual_size(img);
    uint8_t *buf = malloc(size);
    pcow_error err = { 0 };

    assert_non_null(buf);
    assert_int_equal(pcow_pread(img, 0, buf, size, &err), (int64_t)size);
    return buf;
}

static uint64_t data_extents(pcow_image *img)
{
    uint64_t off = 0, n = 0, size = pcow_virtual_size(img);
    pcow_extent ext;

    while (off < size) {
        assert_int_equal(pcow_get_extent(img, off, size - off, &ext), 0);
        n += ext.kind == PCOW_EXTENT_DATA;
        off += ext.length;
    }
    return n;
}

static uint64_t mappings(pcow_image *img)
{
    pcow_error err = { 0 };
    uint64_t n = 0;

    assert_int_equal(pcow_mapping_count(img, &n, &err), 0);
    return n;
}

static void expect_clean(const char *path)
{
    pcow_check_result res;
    pcow_error err = { 0 };

    memset(&res, 0, sizeof(res));
    assert_int_equal(pcow_check(path, 0, false, &res, &err), 0);
    assert_int_equal(res.corruptions, 0);
    assert_int_equal(res.leaks, 0);
}

static void make_shuffled(const char *path, unsigned seed)
{
    pcow_image *img;

    mk_image(path, VSIZE, CS, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_shuffled(img, seed);
    close_image(img);
}

static void test_compact_runs(void **state)
{
    char path[300];
    pcow_compact_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    uint8_t *before, *after;

    td_path(&td, "c.pcow", path, sizeof(path));
    make_shuffled(path, 7);
    img = open_image(path, PCOW_OPEN_RDWR);
    before = read_all(img);
    assert_true(data_extents(img) > NRUNS * 4);
    assert_int_equal(pcow_compact(img, &res, &err), 0);
    /* One data extent per guest run, a hole between and around them */
    assert_int_equal(data_extents(img), NRUNS);
    assert_int_equal(mappings(img), 2 * NRUNS + 1);
    assert_int_equal(res.mappings_after, 2 * NRUNS + 1);
    assert_true(res.mappings_before > res.mappings_after);
    assert_int_equal(res.runs_moved, NRUNS - 1);    /* { 30, 1 } stays */
    after = read_all(img);
    assert_memory_equal(before, after, VSIZE);
    free(after);
    close_image(img);
    expect_clean(path);

    /* Reopened: the same content; compacting again moves nothing */
    img = open_image(path, PCOW_OPEN_RDWR);
    after = read_all(img);
    assert_memory_equal(before, after, VSIZE);
    assert_int_equal(pcow_compact(img, &res, &err), 0);
    assert_int_equal(res.clusters_moved, 0);
    assert_int_equal(res.mappings_before, 2 * NRUNS + 1);
    close_image(img);
    expect_clean(path);
    free(after);
    free(before);
}

/*
 * An overlay whose writes copied parts of base clusters (PARTIAL
 * entries): those stay where they are, the rest is compacted, the view
 * through the base is unchanged.
 */
static void test_compact_overlay(void **state)
{
    char base[300], top[300];
    pcow_compact_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    uint8_t *before, *after;
    uint64_t partial_at;

    td_path(&td, "base.pcow", base, sizeof(base));
    td_path(&td, "top.pcow", top, sizeof(top));
    make_shuffled(base, 3);
    mk_image(top, VSIZE, CS, "base.pcow", PCOW_BACKING_PCOW);
    img = open_image(top, PCOW_OPEN_RDWR);
    write_shuffled(img, 11);
    close_image(img);
    /*
     * A single unit over the base: a PARTIAL entry, right after the run
     * { 1000, 7 }, so that compacting the run would take it along
     */
    img = open_image(top, PCOW_OPEN_RDWR);
    {
        pcow_extent ext;

        assert_int_equal(pcow_cow(img, 1007 * CS, false, &ext), 0);
        assert_int_equal(pcow_get_extent(img, 1007 * CS, CS, &ext), 0);
        partial_at = ext.file_offset;
    }
    before = read_all(img);
    assert_int_equal(pcow_compact(img, &res, &err), 0);
    assert_true(res.clusters_moved > 0);
    assert_true(res.mappings_after < res.mappings_before);
    assert_int_equal(pcow_cow_units_copied(img, 1007 * CS), 1);
    {
        pcow_extent ext;

        assert_int_equal(pcow_get_extent(img, 1007 * CS, CS, &ext), 0);
        assert_int_equal(ext.file_offset, partial_at);  /* not moved */
    }
    after = read_all(img);
    assert_memory_equal(before, after, VSIZE);
    close_image(img);
    expect_clean(top);
    free(after);
    free(before);
}

static void expect_refused(const char *path, unsigned flags, int code,
                           const char *what)
{
    pcow_compact_result res;
    pcow_error err = { 0 };
    pcow_image *img = open_image(path, flags);
    uint8_t *before = read_all(img), *after;

    assert_int_equal(pcow_compact(img, &res, &err), code);
    assert_non_null(strstr(err.msg, what));
    assert_null(strchr(err.msg, '\n'));
    assert_int_equal(res.clusters_moved, 0);
    after = read_all(img);
    assert_memory_equal(before, after, VSIZE);
    close_image(img);
    free(after);
    free(before);
}

static void test_compact_refuses(void **state)
{
    char path[300];
    pcow_error err = { 0 };
    pcow_image *img;

    td_path(&td, "r.pcow", path, sizeof(path));
    make_shuffled(path, 5);
    expect_refused(path, 0, -EROFS, "read-only");

    /* Dirty: a writer died; the in-use token is still set */
    poke64(path, PCOW_HOT_IN_USE, 0x1234);
    expect_refused(path, PCOW_OPEN_RDWR, -EUCLEAN, "not closed cleanly");

    /* Snapshots share clusters: refused, nothing moved */
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_create(img, "s1", NULL, &err), 0);
    close_image(img);
    expect_refused(path, PCOW_OPEN_RDWR, -ENOTSUP, "1 snapshot;");
    expect_clean(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_compact_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compact_overlay, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_compact_refuses, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
