/*
 * libpcow unit tests: the format at its edges (issue 9 defects 3, 4, 9,
 * 10): header generation and snapshot id limits, a file shorter than its
 * frontier, a frontier below clusters in use
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "unit-common.h"

static TestDir td;
static char path[512];

static int setup(void **state)
{
    td_init(&td, NULL);
    td_path(&td, "f.pcow", path, sizeof(path));
    return 0;
}

static int teardown(void **state)
{
    td_cleanup(&td);
    return 0;
}

/* Offset of the current header slot (the valid one, highest generation) */
static uint64_t cur_slot(void)
{
    pcow_image *img = open_image(path, PCOW_OPEN_NO_RECOVER);
    uint64_t off = img->cur_slot ? PCOW_SLOT_B : PCOW_SLOT_A;

    close_image(img);
    return off;
}

static void patch_cur64(unsigned field, uint64_t v)
{
    uint8_t slot[PCOW_SLOT_SIZE];
    uint64_t off = cur_slot();

    peek(path, off, slot, sizeof(slot));
    pcow_st64(slot + field, v);
    pcow_st32(slot + 12, 0);
    pcow_st32(slot + 12, pcow_crc32c(0, slot, pcow_ld32(slot + 8)));
    poke(path, off, slot, sizeof(slot));
}

static uint8_t *read_file(size_t *len)
{
    struct stat st;
    uint8_t *buf;

    assert_int_equal(stat(path, &st), 0);
    buf = malloc(st.st_size);
    assert_non_null(buf);
    peek(path, 0, buf, st.st_size);
    *len = st.st_size;
    return buf;
}

static pcow_check_result do_check(unsigned repair)
{
    pcow_check_result r;
    pcow_error err = { 0 };

    assert_int_equal(pcow_check(path, repair, false, &r, &err), 0);
    return r;
}

static void test_generation_limit(void **state)
{
    pcow_image *img;
    pcow_error err = { 0 };
    uint8_t *before, *after;
    size_t blen, alen;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 65536, 1);
    assert_int_equal(pcow_snapshot_create(img, "s", NULL, &err), 0);
    write_bytes(img, 0, 65536, 2);
    close_image(img);
    patch_cur64(16, UINT64_MAX);
    before = read_file(&blen);

    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_revert(img, "s", &err), -EOVERFLOW);
    assert_true(contains(err.msg, "generation"));
    assert_int_equal(pcow_snapshot_create(img, "t", NULL, &err), -EOVERFLOW);
    assert_int_equal(pcow_snapshot_delete(img, "s", &err), -EOVERFLOW);
    assert_int_equal(pcow_resize(img, 128 * MiB, false, &err), -EOVERFLOW);
    expect_bytes(img, 0, 65536, 2);
    close_image(img);

    /* Refused before anything was written: the file is byte-identical */
    after = read_file(&alen);
    assert_int_equal(alen, blen);
    assert_memory_equal(before, after, blen);
    free(before);
    free(after);
    assert_int_equal(check_clean(path), 0);
}

static void test_snapshot_ids(void **state)
{
    pcow_snapshot_info *list;
    pcow_check_result r;
    pcow_image *img;
    pcow_error err = { 0 };
    char msg[512];

    /* next_snapshot_id 0: refused at open, repaired by check -r all */
    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header64(path, 96, 0);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "next_snapshot_id"));
    r = do_check(0);
    assert_int_equal(r.corruptions, 1);
    r = do_check((PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS));
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_create(img, "a", NULL, &err), 0);
    assert_int_equal(pcow_snapshot_create(img, "b", NULL, &err), 0);
    assert_int_equal(pcow_snapshot_list(img, &list, &err), 2);
    assert_int_equal(list[0].id, 1);
    assert_int_equal(list[1].id, 2);
    free(list);
    close_image(img);

    /* Ids used up: create refused, nothing changed */
    patch_cur64(96, UINT64_MAX);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_create(img, "c", NULL, &err), -EOVERFLOW);
    assert_true(contains(err.msg, "snapshot id"));
    assert_int_equal(pcow_snapshot_list(img, &list, &err), 2);
    free(list);
    close_image(img);
    assert_int_equal(check_clean(path), 0);

    /* An id at or above next_snapshot_id: kept, next_snapshot_id raised */
    patch_cur64(96, 2);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "invalid id 2"));
    r = do_check((PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS));
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    assert_int_equal(pcow_snapshot_list(img, &list, &err), 2);
    assert_int_equal(list[0].id, 1);
    assert_int_equal(list[1].id, 2);
    assert_int_equal(img->hdr.next_snapshot_id, 3);
    free(list);
    close_image(img);
}

static void test_short_file(void **state)
{
    pcow_check_result r;
    pcow_image *img;
    struct stat st;
    char msg[512];
    off_t size;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 3 * 65536, 9);
    close_image(img);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, peek64(path, PCOW_HOT_FRONTIER));
    size = st.st_size - 512;
    assert_int_equal(truncate(path, size), 0);

    /* Refused by every open; a writer does not extend the file */
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "truncated"));
    open_fails(path, PCOW_OPEN_RDWR, msg, sizeof(msg));
    assert_true(contains(msg, "truncated"));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, size);

    r = do_check(0);
    assert_int_equal(r.corruptions, 1);
    assert_true(contains(r.first_problem, "truncated"));
    r = do_check(PCOW_REPAIR_LEAKS);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, size);

    /* check -r all extends it; the lost tail reads as zeros */
    r = do_check((PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS));
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    expect_bytes(img, 0, 3 * 65536 - 512, 9);
    expect_bytes(img, 3 * 65536 - 512, 512, 0);
    close_image(img);
}

static void test_low_frontier(void **state)
{
    pcow_check_result r;
    pcow_image *img;
    uint64_t frontier;
    char msg[512];

    mk_image(path, 256 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 3 * 65536, 0x0a);
    write_bytes(img, 200 * MiB, 65536, 0x0b);   /* a second L2 table */
    close_image(img);
    frontier = peek64(path, PCOW_HOT_FRONTIER);
    poke64(path, PCOW_HOT_FRONTIER, frontier - 3 * 65536);

    open_fails(path, PCOW_OPEN_RDWR, msg, sizeof(msg));
    r = do_check(0);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(r.leaks, 0);
    assert_true(contains(r.first_problem, "frontier"));
    r = do_check((PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS));
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(peek64(path, PCOW_HOT_FRONTIER), frontier);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    expect_bytes(img, 0, 3 * 65536, 0x0a);
    expect_bytes(img, 200 * MiB, 65536, 0x0b);
    close_image(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_generation_limit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_low_frontier, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
