/*
 * libpcow unit tests: state stamps (create, clean close, kept stamps,
 * PCOW_OPEN_EXPECT_STAMP, the chain stamp) and the handover of an image to
 * another process (pcow_release / pcow_reacquire).  OFD locks belong to
 * the open file description, so a second pcow_open in this process stands
 * for the other process.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "unit-common.h"

#define CS (64 * KiB)

static TestDir td;
static char path[512];

static int setup(void **state)
{
    td_init(&td, NULL);
    td_path(&td, "h.pcow", path, sizeof(path));
    mk_image(path, 64 * MiB, CS, NULL, PCOW_BACKING_NONE);
    return 0;
}

static int teardown(void **state)
{
    td_cleanup(&td);
    return 0;
}

static uint8_t *read_file(const char *p, size_t *len)
{
    struct stat st;
    uint8_t *buf;

    assert_int_equal(stat(p, &st), 0);
    buf = malloc(st.st_size ? st.st_size : 1);
    assert_non_null(buf);
    peek(p, 0, buf, st.st_size);
    *len = st.st_size;
    return buf;
}

/* The file is byte for byte @old (of @len bytes); frees @old */
static void expect_file(const char *p, uint8_t *old, size_t len)
{
    size_t now_len;
    uint8_t *now = read_file(p, &now_len);

    assert_int_equal(now_len, len);
    assert_memory_equal(now, old, len);
    free(now);
    free(old);
}

static int open_expect(const char *p, unsigned flags, uint64_t stamp,
                       pcow_image **img, pcow_error *err)
{
    pcow_open_opts o = {
        .flags = flags | PCOW_OPEN_EXPECT_STAMP,
        .expect_stamp = stamp,
    };

    *img = NULL;
    return pcow_open(p, &o, img, err);
}

static uint64_t file_stamp(const char *p)
{
    return peek64(p, PCOW_HOT_STAMP);
}

static void test_create_stamp(void **state)
{
    char p2[512];
    pcow_image *img;
    bool clean = false;
    uint64_t s1 = file_stamp(path), s2;

    td_path(&td, "h2.pcow", p2, sizeof(p2));
    mk_image(p2, 64 * MiB, CS, NULL, PCOW_BACKING_NONE);
    s2 = file_stamp(p2);
    assert_true(s1 != 0 && s2 != 0);
    assert_true(s1 != s2);
    /* The rest of the hot line stays zero */
    assert_int_equal(peek64(path, PCOW_HOT_STAMP + 8), 0);
    img = open_image(path, 0);
    assert_true(pcow_open_stamp(img, &clean) == s1);
    assert_true(clean);
    assert_true(pcow_stamp(img) == s1);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

static void test_close_stamp(void **state)
{
    uint64_t s0 = file_stamp(path), token;
    pcow_image *img;

    /* A session that changes nothing a reader sees keeps the stamp */
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_true(pcow_stamp(img) == s0);
    close_image(img);
    assert_true(file_stamp(path) == s0);

    /* A writer leaves its token: stamp = token, then in_use 0 */
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4096, 0x11);
    token = pcow_stamp(img);
    assert_true(token != s0 && token != 0);
    assert_true(token == img->in_use_token);
    assert_true(peek64(path, PCOW_HOT_IN_USE) == token);
    close_image(img);
    assert_true(file_stamp(path) == token);
    assert_int_equal(peek64(path, PCOW_HOT_IN_USE), 0);

    /* An image from before stamps (0) gets one at its next clean close */
    poke64(path, PCOW_HOT_STAMP, 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    close_image(img);
    assert_true(file_stamp(path) != 0);
    assert_int_equal(check_clean(path), 0);
}

static void test_expect_stamp(void **state)
{
    uint64_t s = file_stamp(path);
    pcow_error err = { 0 };
    pcow_image *img;
    uint8_t *before;
    size_t len;

    /* Match: opens read-write */
    assert_int_equal(open_expect(path, PCOW_OPEN_RDWR, s, &img, &err), 0);
    close_image(img);

    /* Mismatch: refused, nothing written */
    before = read_file(path, &len);
    assert_int_equal(open_expect(path, PCOW_OPEN_RDWR, s ^ 4, &img, &err),
                     -ESTALE);
    assert_null(img);
    assert_int_equal(err.code, -ESTALE);
    assert_int_equal(err.kind, PCOW_ERR_STALE);
    assert_true(contains(err.msg, path));
    assert_true(contains(err.msg, "image changed since this state was "
                         "saved"));
    expect_file(path, before, len);

    /* Not closed cleanly: refused even with the right stamp */
    poke64(path, PCOW_HOT_IN_USE, 12345);
    before = read_file(path, &len);
    assert_int_equal(open_expect(path, PCOW_OPEN_RDWR, s, &img, &err),
                     -ESTALE);
    assert_int_equal(err.kind, PCOW_ERR_STALE);
    assert_true(contains(err.msg, "image was not closed cleanly since this "
                         "state was saved"));
    expect_file(path, before, len);
    /* Read-only opens check it too */
    assert_int_equal(open_expect(path, 0, s, &img, &err), -ESTALE);
}

static void test_release_handover(void **state)
{
    pcow_error err = { 0 };
    pcow_image *a, *b;
    uint64_t s, foff;
    uint8_t *before;
    size_t len;
    char buf[16];

    a = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(a, 0, CS, 0x22);
    assert_false(pcow_released(a));
    assert_int_equal(pcow_release(a, &err), 0);
    assert_true(pcow_released(a));
    s = pcow_stamp(a);
    assert_true(s == file_stamp(path));
    assert_int_equal(peek64(path, PCOW_HOT_IN_USE), 0);
    assert_int_equal(check_clean(path), 0);

    /* Nothing writes through the released handle; reads still work */
    assert_int_equal(pcow_pwrite(a, 0, buf, sizeof(buf), &err), -EBADF);
    assert_true(contains(err.msg, "handed over"));
    assert_int_equal(err.kind, PCOW_ERR_READ_ONLY);
    assert_int_equal(pcow_zero_range(a, 0, CS, &err), -EBADF);
    assert_int_equal(pcow_snapshot_create(a, "s", NULL, &err), -EBADF);
    assert_int_equal(pcow_resize(a, 128 * MiB, false, &err), -EBADF);
    assert_int_equal(pcow_reserve_clusters(a, 4, &err), 0);
    assert_int_equal(err.code, -EBADF);
    assert_int_equal(pcow_expand_cluster(a, 5, &foff), -EBADF);
    assert_int_equal(pcow_cow(a, 0, false, &(pcow_extent){ 0 }), -EBADF);
    assert_int_equal(pcow_release(a, &err), -EBADF);
    expect_bytes(a, 0, CS, 0x22);

    /* The other process opens it, expecting the stamp left */
    assert_int_equal(open_expect(path, PCOW_OPEN_RDWR, s, &b, &err), 0);
    assert_int_equal(pcow_reacquire(a, &err), -EBUSY);
    assert_int_equal(err.kind, PCOW_ERR_IN_USE);
    assert_true(contains(err.msg, "image is in use by another process"));
    write_bytes(b, CS, CS, 0x33);
    close_image(b);

    /* It wrote: taking it back is refused, and a's close writes nothing */
    assert_int_equal(pcow_reacquire(a, &err), -ESTALE);
    assert_int_equal(err.kind, PCOW_ERR_STALE);
    assert_true(contains(err.msg, "image was changed by another process "
                         "since it was handed over"));
    assert_true(pcow_released(a));
    before = read_file(path, &len);
    close_image(a);
    expect_file(path, before, len);
    assert_int_equal(check_clean(path), 0);
    b = open_image(path, 0);
    expect_bytes(b, 0, CS, 0x22);
    expect_bytes(b, CS, CS, 0x33);
    close_image(b);
}

static void test_reacquire(void **state)
{
    pcow_error err = { 0 };
    pcow_image *a, *b;
    uint64_t s, frontier;

    a = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(a, 0, 8 * CS, 0x44);
    /* Free space below the frontier that the release trims and keeps */
    assert_int_equal(pcow_zero_range(a, 2 * CS, 4 * CS, &err), 0);
    assert_int_equal(pcow_release(a, &err), 0);
    s = pcow_stamp(a);
    frontier = peek64(path, PCOW_HOT_FRONTIER);

    /* A reader meanwhile changes nothing */
    b = open_image(path, 0);
    close_image(b);
    assert_int_equal(pcow_reacquire(a, &err), 0);
    assert_false(pcow_released(a));
    assert_true(pcow_stamp(a) != s);
    assert_true(peek64(path, PCOW_HOT_IN_USE) == pcow_stamp(a));
    /* Writes work again and reuse the freed clusters: once close gave
     * back the reserve, the file ends where the release left it */
    write_bytes(a, 20 * CS, 4 * CS, 0x55);
    write_bytes(a, 0, CS, 0x66);
    close_image(a);
    assert_int_equal(peek64(path, PCOW_HOT_FRONTIER), frontier);
    assert_int_equal(check_clean(path), 0);
    a = open_image(path, 0);
    expect_bytes(a, 0, CS, 0x66);
    expect_bytes(a, CS, CS, 0x44);
    expect_bytes(a, 2 * CS, 4 * CS, 0);
    expect_bytes(a, 6 * CS, 2 * CS, 0x44);
    expect_bytes(a, 20 * CS, 4 * CS, 0x55);
    close_image(a);
}

/* An incoming side that failed before its guest ran keeps the stamp */
static void test_keep_stamp(void **state)
{
    pcow_error err = { 0 };
    pcow_extent ext;
    pcow_image *a, *b;
    uint64_t s;

    a = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(a, 0, CS, 0x77);
    assert_int_equal(pcow_release(a, &err), 0);
    s = pcow_stamp(a);
    assert_int_equal(open_expect(path, PCOW_OPEN_RDWR, s, &b, &err), 0);
    /* It hands out writable extents (the monitor maps them) */
    assert_int_equal(pcow_get_extent(b, 0, CS, &ext), 0);
    assert_true(ext.writable);
    assert_true(pcow_stamp(b) != s);
    pcow_keep_stamp(b);
    assert_true(pcow_stamp(b) == s);
    close_image(b);
    assert_true(file_stamp(path) == s);
    assert_int_equal(pcow_reacquire(a, &err), 0);
    write_bytes(a, CS, CS, 0x78);
    assert_int_equal(pcow_snapshot_create(a, "back", NULL, &err), 0);
    write_bytes(a, 0, 4096, 0x79);
    close_image(a);
    assert_int_equal(check_clean(path), 0);
    /* A session that wrote through libpcow cannot keep the stamp */
    s = file_stamp(path);
    assert_int_equal(open_expect(path, PCOW_OPEN_RDWR, s, &b, &err), 0);
    write_bytes(b, 0, 4096, 0x7a);
    pcow_keep_stamp(b);
    assert_true(pcow_stamp(b) != s);
    close_image(b);
    assert_true(file_stamp(path) != s);
}

static void test_release_refused(void **state)
{
    pcow_error err = { 0 };
    pcow_image *img = open_image(path, 0);

    assert_int_equal(pcow_release(img, &err), -EROFS);
    assert_int_equal(pcow_reacquire(img, &err), -EINVAL);
    close_image(img);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_reacquire(img, &err), -EINVAL);
    assert_true(contains(err.msg, "not handed over"));
    close_image(img);
}

static uint64_t chain_stamp_of(const char *p)
{
    pcow_image *img = open_image(p, 0);
    uint64_t s = pcow_chain_stamp(img);

    close_image(img);
    return s;
}

static void test_chain_stamp(void **state)
{
    char base[512], other[512], o1[512], o2[512], o3[512], raw[512];
    pcow_image *img;
    uint64_t c1;
    int fd;

    td_path(&td, "base.pcow", base, sizeof(base));
    td_path(&td, "other.pcow", other, sizeof(other));
    td_path(&td, "o1.pcow", o1, sizeof(o1));
    td_path(&td, "o2.pcow", o2, sizeof(o2));
    td_path(&td, "o3.pcow", o3, sizeof(o3));
    td_path(&td, "raw.img", raw, sizeof(raw));
    mk_image(base, 64 * MiB, CS, NULL, PCOW_BACKING_NONE);
    mk_image(other, 64 * MiB, CS, NULL, PCOW_BACKING_NONE);
    mk_image(o1, 64 * MiB, CS, "base.pcow", PCOW_BACKING_PCOW);
    mk_image(o2, 64 * MiB, CS, "base.pcow", PCOW_BACKING_PCOW);
    mk_image(o3, 64 * MiB, CS, "other.pcow", PCOW_BACKING_PCOW);

    c1 = chain_stamp_of(o1);
    assert_true(c1 != 0);
    assert_true(chain_stamp_of(o2) == c1);
    assert_true(chain_stamp_of(o3) != c1);
    assert_int_equal(chain_stamp_of(base), 0);

    /* The base written: another chain state */
    img = open_image(base, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4096, 0x99);
    close_image(img);
    assert_true(chain_stamp_of(o1) != c1);
    assert_true(chain_stamp_of(o1) == chain_stamp_of(o2));

    /* A base whose state cannot be told: stamp 0, or not closed cleanly */
    poke64(base, PCOW_HOT_STAMP, 0);
    assert_int_equal(chain_stamp_of(o1), 0);
    poke64(base, PCOW_HOT_STAMP, 42);
    assert_true(chain_stamp_of(o1) != 0);
    poke64(base, PCOW_HOT_IN_USE, 7);
    assert_int_equal(chain_stamp_of(o1), 0);

    /* A raw base */
    fd = open(raw, O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 64 * MiB), 0);
    close(fd);
    unlink(o3);
    mk_image(o3, 64 * MiB, CS, "raw.img", PCOW_BACKING_RAW);
    assert_int_equal(chain_stamp_of(o3), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_stamp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_stamp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_stamp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_handover, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reacquire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_stamp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_chain_stamp, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
