/*
 * libpcow unit tests: snapshot create, list, revert, delete
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "unit-common.h"

static TestDir td;
static char path[512];

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

static void snap(pcow_image *img, const char *name)
{
    pcow_error err = { 0 };
    int ret = pcow_snapshot_create(img, name, NULL, &err);

    if (ret < 0) {
        fprintf(stderr, "snapshot create: %s\n", err.msg);
    }
    assert_int_equal(ret, 0);
}

static void revert(pcow_image *img, const char *name)
{
    pcow_error err = { 0 };
    int ret = pcow_snapshot_revert(img, name, &err);

    if (ret < 0) {
        fprintf(stderr, "snapshot revert: %s\n", err.msg);
    }
    assert_int_equal(ret, 0);
}

static void del(pcow_image *img, const char *name)
{
    pcow_error err = { 0 };
    int ret = pcow_snapshot_delete(img, name, &err);

    if (ret < 0) {
        fprintf(stderr, "snapshot delete: %s\n", err.msg);
    }
    assert_int_equal(ret, 0);
}

static void test_create_revert(void **state)
{
    pcow_image *img;
    pcow_extent ext;
    pcow_info info;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 3 * 65536, 0x01);
    snap(img, "one");
    /* The active layer is frozen: same data, not writable */
    assert_int_equal(pcow_get_extent(img, 0, 3 * 65536, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_DATA);
    assert_false(ext.writable);
    assert_int_equal(ext.length, 3 * 65536);
    write_bytes(img, 4096, 4096, 0x02);           /* unit COW */
    write_bytes(img, 65536, 65536, 0x03);         /* whole cluster */
    write_bytes(img, 10 * MiB, 65536, 0x04);      /* a new cluster */
    snap(img, "two");
    write_bytes(img, 0, 65536, 0x05);
    expect_bytes(img, 0, 65536, 0x05);

    revert(img, "one");
    expect_bytes(img, 0, 3 * 65536, 0x01);
    expect_bytes(img, 10 * MiB, 65536, 0x00);
    revert(img, "two");
    expect_bytes(img, 0, 4096, 0x01);
    expect_bytes(img, 4096, 4096, 0x02);
    expect_bytes(img, 8192, 65536 - 8192, 0x01);
    expect_bytes(img, 65536, 65536, 0x03);
    expect_bytes(img, 2 * 65536, 65536, 0x01);
    expect_bytes(img, 10 * MiB, 65536, 0x04);
    /* Revert by id; other snapshots are kept */
    revert(img, "1");
    expect_bytes(img, 0, 3 * 65536, 0x01);
    pcow_get_info(img, &info);
    assert_int_equal(info.nb_snapshots, 2);
    /* Writing after revert does not change the snapshot */
    write_bytes(img, 0, 65536, 0x06);
    revert(img, "one");
    expect_bytes(img, 0, 65536, 0x01);
    close_image(img);
    assert_int_equal(check_clean(path), 0);

    img = open_image(path, 0);
    expect_bytes(img, 0, 3 * 65536, 0x01);
    close_image(img);
}

static void test_list(void **state)
{
    pcow_image *img;
    pcow_snapshot_info *l;
    pcow_error err = { 0 };
    time_t now = time(NULL);
    pcow_snapshot_info one;
    uint64_t id;
    int n;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 2 * 65536, 0x01);
    snap(img, "a");
    write_bytes(img, 5 * 65536, 65536, 0x01);
    snap(img, "b");
    assert_int_equal(pcow_snapshot_create(img, "a", NULL, &err), -EEXIST);
    assert_int_equal(err.kind, PCOW_ERR_EXISTS);
    assert_int_equal(pcow_snapshot_create(img, "", NULL, &err), -EINVAL);
    assert_int_equal(err.kind, PCOW_ERR_INVALID);
    /* The new id comes back: no look-up by name needed */
    id = 0;
    assert_int_equal(pcow_snapshot_create(img, "tmp", &id, &err), 0);
    assert_int_equal(id, 3);
    assert_int_equal(pcow_snapshot_delete(img, "tmp", &err), 0);
    assert_int_equal(pcow_snapshot_lookup(img, "tmp", false, 0, &one, &err),
                     -ENOENT);
    assert_int_equal(err.kind, PCOW_ERR_NOT_FOUND);
    n = pcow_snapshot_list(img, &l, &err);
    assert_int_equal(n, 2);
    assert_int_equal(l[0].id, 1);
    assert_string_equal(l[0].name, "a");
    assert_int_equal(l[0].clusters, 2);
    assert_int_equal(l[1].id, 2);
    assert_string_equal(l[1].name, "b");
    assert_int_equal(l[1].clusters, 3);
    assert_int_equal(l[1].virtual_size, 64 * MiB);
    assert_true(l[1].date_sec >= (uint64_t)now - 5 &&
                l[1].date_sec <= (uint64_t)now + 5);
    free(l);
    del(img, "a");
    snap(img, "c");
    n = pcow_snapshot_list(img, &l, &err);
    assert_int_equal(n, 2);
    /* Ids are never reused */
    assert_int_equal(l[1].id, 4);
    free(l);
    assert_int_equal(pcow_snapshot_delete(img, "a", &err), -ENOENT);
    assert_true(contains(err.msg, "not found"));
    assert_int_equal(pcow_snapshot_revert(img, "77", &err), -ENOENT);
    close_image(img);

    /* Read-only image refuses changes */
    img = open_image(path, 0);
    assert_int_equal(pcow_snapshot_create(img, "x", NULL, &err), -EROFS);
    n = pcow_snapshot_list(img, &l, &err);
    assert_int_equal(n, 2);
    free(l);
    close_image(img);
}

static void test_delete_returns_space(void **state)
{
    pcow_image *img;
    pcow_info info;
    struct stat st1, st2;
    uint64_t off;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 16 * 65536, 0x01);
    snap(img, "s");
    write_bytes(img, 0, 16 * 65536, 0x02);     /* 16 new homes */
    pcow_get_info(img, &info);
    assert_int_equal(info.allocated_clusters, 32);
    close_image(img);
    assert_int_equal(stat(path, &st1), 0);

    img = open_image(path, PCOW_OPEN_RDWR);
    del(img, "s");
    pcow_get_info(img, &info);
    assert_int_equal(info.allocated_clusters, 16);
    assert_int_equal(info.nb_snapshots, 0);
    expect_bytes(img, 0, 16 * 65536, 0x02);
    /* The active clusters are writable again: no COW needed */
    {
        pcow_extent ext;

        assert_int_equal(pcow_get_extent(img, 0, 16 * 65536, &ext), 0);
        assert_true(ext.writable);
    }
    /* Freed clusters are reused, lowest first, before the frontier moves */
    assert_int_equal(pcow_expand_cluster(img, 500, &off), 0);
    assert_true(off < info.frontier);
    close_image(img);
    assert_int_equal(stat(path, &st2), 0);
    assert_true(st2.st_blocks < st1.st_blocks);
    assert_true((uint64_t)(st1.st_blocks - st2.st_blocks) * 512 >=
                15 * 65536);
    assert_int_equal(check_clean(path), 0);
}

static void test_delete_middle_keeps_others(void **state)
{
    pcow_image *img;
    int k;
    char name[16];

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    for (k = 0; k < 5; k++) {
        write_bytes(img, 0, 2 * 65536, 0x10 + k);
        write_bytes(img, (k + 4) * 65536, 4096, 0x20 + k);
        snprintf(name, sizeof(name), "s%d", k);
        snap(img, name);
    }
    del(img, "s1");
    del(img, "s3");
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    for (k = 4; k >= 0; k -= 2) {
        int j;

        snprintf(name, sizeof(name), "s%d", k);
        revert(img, name);
        expect_bytes(img, 0, 2 * 65536, 0x10 + k);
        for (j = 0; j < 5; j++) {
            expect_bytes(img, (j + 4) * 65536, 4096, j <= k ? 0x20 + j : 0);
        }
    }
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

static void test_snapshot_of_partial(void **state)
{
    pcow_image *img;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 65536, 0x01);
    snap(img, "a");
    write_bytes(img, 8192, 4096, 0x02);       /* PARTIAL: 1 unit copied */
    assert_int_equal(pcow_cow_units_copied(img, 0), 1);
    snap(img, "b");                           /* frozen PARTIAL */
    write_bytes(img, 0, 4096, 0x03);          /* whole-cluster COW */
    assert_int_equal(pcow_cow_units_copied(img, 0), 16);
    expect_bytes(img, 0, 4096, 0x03);
    expect_bytes(img, 4096, 4096, 0x01);
    expect_bytes(img, 8192, 4096, 0x02);
    expect_bytes(img, 12288, 65536 - 12288, 0x01);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    revert(img, "b");
    expect_bytes(img, 0, 8192, 0x01);
    expect_bytes(img, 8192, 4096, 0x02);
    del(img, "a");
    expect_bytes(img, 8192, 4096, 0x02);
    expect_bytes(img, 12288, 4096, 0x01);
    revert(img, "b");
    expect_bytes(img, 0, 8192, 0x01);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/* Issue 16 item 4: one rule for new names, one escape for old ones */
static void test_name_rules(void **state)
{
    static const char *const bad[] = {
        "a\nb", "\x1b[2J", "tab\there", "del\x7f", "\x01", "end\r",
    };
    pcow_image *img;
    pcow_snapshot_info *l;
    pcow_error err = { 0 };
    char *e;
    size_t i;

    mk_image(path, 4 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&err, 0, sizeof(err));
        assert_int_equal(pcow_snapshot_name_check(bad[i], &err), -EINVAL);
        assert_int_equal(pcow_snapshot_create(img, bad[i], NULL, &err),
                         -EINVAL);
        assert_true(contains(err.msg, "control characters"));
        assert_null(strchr(err.msg, '\n'));
    }
    assert_int_equal(pcow_snapshot_list(img, &l, &err), 0);
    free(l);
    assert_int_equal(pcow_snapshot_name_check("caf\xc3\xa9 \xe2\x9c\x93 x",
                                              &err), 0);
    snap(img, "caf\xc3\xa9");
    /* Images made elsewhere may hold them; printing escapes them */
    assert_int_equal(pcow_snapshot_create_any_name(img, "x\ny", NULL, &err),
                     0);
    close_image(img);

    e = pcow_escape_text("a\nb\x1b[1m\x7f\xc2\x9b\xff\xc3\xa9\xe2\x9c\x93"
                         "\xc0\xaf\xed\xa0\x80");
    assert_string_equal(e, "a\\x0ab\\x1b[1m\\x7f\\xc2\\x9b\\xff\xc3\xa9"
                        "\xe2\x9c\x93\\xc0\\xaf\\xed\\xa0\\x80");
    free(e);
    e = pcow_escape_text("");
    assert_string_equal(e, "");
    free(e);
}

/* Issue 16 item 5: a name never stands for an id */
static void test_lookup_exact(void **state)
{
    pcow_image *img;
    pcow_snapshot_info sn;
    pcow_error err = { 0 };

    mk_image(path, 4 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    snap(img, "first");             /* id 1 */
    snap(img, "1");                 /* id 2, named "1" */
    assert_int_equal(pcow_snapshot_lookup(img, "1", false, 0, &sn, &err), 0);
    assert_int_equal(sn.id, 2);
    assert_int_equal(pcow_snapshot_lookup(img, NULL, true, 1, &sn, &err), 0);
    assert_string_equal(sn.name, "first");
    assert_int_equal(pcow_snapshot_lookup(img, "first", true, 1, &sn, &err),
                     0);
    assert_int_equal(pcow_snapshot_lookup(img, "1", true, 1, &sn, &err),
                     -ENOENT);
    assert_int_equal(pcow_snapshot_lookup(img, "2", false, 0, &sn, &err),
                     -ENOENT);
    assert_true(contains(err.msg, "no snapshot named '2'"));
    assert_int_equal(pcow_snapshot_lookup(img, NULL, true, 7, &sn, &err),
                     -ENOENT);
    assert_true(contains(err.msg, "no snapshot with id 7"));
    close_image(img);
}

/*
 * The file truncated behind our back (issue 16): the table mappings now
 * end at 4 KiB and touching them would raise SIGBUS.  Snapshot operations
 * and info must answer an error naming the image instead.
 */
static void test_truncated_behind_our_back(void **state)
{
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_info info;
    int fd;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 3 * 65536, 0x01);
    snap(img, "one");
    assert_int_equal(pcow_check_file_size(img, &err), 0);
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    close(fd);

    assert_int_equal(pcow_check_file_size(img, &err), -EIO);
    assert_true(contains(err.msg, path));
    assert_true(contains(err.msg, "truncated"));
    memset(&err, 0, sizeof(err));
    assert_int_equal(pcow_snapshot_create(img, "two", NULL, &err), -EIO);
    assert_true(contains(err.msg, path) && contains(err.msg, "truncated"));
    assert_int_equal(pcow_snapshot_delete(img, "one", &err), -EIO);
    assert_int_equal(pcow_snapshot_revert(img, "one", &err), -EIO);
    pcow_get_info(img, &info);
    assert_int_equal(info.file_size, 4096);
    assert_int_equal(info.allocated_clusters, 0);
    /* Below the first page even the frontier is gone */
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 0), 0);
    close(fd);
    assert_int_equal(pcow_check_file_size(img, &err), -EIO);
    assert_true(contains(err.msg, "below 0x1000"));
    pcow_get_info(img, &info);
    /* Close touches nothing and says why */
    memset(&err, 0, sizeof(err));
    assert_int_equal(pcow_close(img, &err), -EIO);
    assert_true(contains(err.msg, "truncated"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_revert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_returns_space, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_delete_middle_keeps_others,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_of_partial, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_name_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_behind_our_back,
                                        setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
