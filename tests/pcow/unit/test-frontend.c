/*
 * libpcow unit tests: the front-end API at the end of pcow.h (measure,
 * page rounding, create requests, a file's role in a chain) and the
 * error offsets front ends print from (pcow_error what and why)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "unit-common.h"

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

/* A source in memory: blocks of 4 KiB, status "data" where @data says */
typedef struct MemSource {
    const uint8_t *buf;
    uint64_t size;
    int fail_at;        /* status call number that fails, or -1 */
    int calls;
} MemSource;

static int mem_status(void *opaque, uint64_t off, uint64_t max,
                      uint64_t *pnum)
{
    MemSource *m = opaque;

    if (m->calls++ == m->fail_at) {
        return -EIO;
    }
    *pnum = max < 4096 - off % 4096 ? max : 4096 - off % 4096;
    return 1;
}

static int mem_read(void *opaque, uint64_t off, void *buf, uint64_t len)
{
    MemSource *m = opaque;

    memcpy(buf, m->buf + off, len);
    return 0;
}

static void test_round_to_pages(void **state)
{
    assert_int_equal(pcow_round_to_pages(0), 0);
    assert_int_equal(pcow_round_to_pages(1), PCOW_PAGE_SIZE);
    assert_int_equal(pcow_round_to_pages(4096), 4096);
    assert_int_equal(pcow_round_to_pages(4097), 8192);
    assert_int_equal(pcow_round_to_pages(UINT64_MAX), 0);
}

static void test_measure_empty(void **state)
{
    char path[512];
    pcow_measure_result r;
    pcow_error err = { 0 };
    struct stat st;

    /* An empty image is exactly what create makes */
    assert_int_equal(pcow_measure(GiB, 0, 0, NULL, &r, &err), 0);
    td_path(&td, "e.pcow", path, sizeof(path));
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(r.required, (uint64_t)st.st_size);
    assert_int_equal(r.geometry.cluster_size, 64 * KiB);
    /* header cluster + L1 (one cluster) + 1 GiB of L2 tables and data */
    assert_int_equal(r.fully_allocated,
                     2 * 64 * KiB + (GiB / (64 * KiB)) * 64 * KiB +
                     r.geometry.l1_size * 64 * KiB);

    /* What create refuses, measure refuses, with a message */
    assert_int_equal(pcow_measure(5000, 0, 0, NULL, &r, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    memset(&err, 0, sizeof(err));
    assert_int_equal(pcow_measure(GiB, 3072, 0, NULL, &r, &err), -EINVAL);
    assert_true(err.msg[0] != '\0');
}

static void test_measure_source(void **state)
{
    uint64_t size = 8 * MiB, cs = 64 * KiB;
    uint8_t *buf = calloc(1, size);
    MemSource m = { .buf = buf, .size = size, .fail_at = -1 };
    pcow_measure_source src = {
        .size = size, .block_status = mem_status, .read = mem_read,
        .opaque = &m,
    };
    pcow_measure_result r, empty;
    pcow_error err = { 0 };

    assert_non_null(buf);
    assert_int_equal(pcow_measure(size, cs, 0, NULL, &empty, &err), 0);
    /* All zeros: nothing needed beyond the empty image */
    assert_int_equal(pcow_measure(size, cs, 0, &src, &r, &err), 0);
    assert_int_equal(r.required, empty.required);
    /* Two bytes in one cluster, one in another: two clusters, one L2 */
    buf[5] = 1;
    buf[cs - 1] = 1;
    buf[3 * cs + 4096] = 1;
    assert_int_equal(pcow_measure(size, cs, 0, &src, &r, &err), 0);
    assert_int_equal(r.required, empty.required + 3 * cs);
    assert_int_equal(r.fully_allocated, empty.fully_allocated);
    /* A callback's error comes back as it is; err is left alone */
    m.calls = 0;
    m.fail_at = 2;
    memset(&err, 0, sizeof(err));
    assert_int_equal(pcow_measure(size, cs, 0, &src, &r, &err), -EIO);
    assert_int_equal(err.code, 0);
    free(buf);
}

static void count_announce(void *opaque, const pcow_create_opts *co)
{
    pcow_create_opts *seen = opaque;

    assert_int_equal(seen->virtual_size, 0);    /* called once */
    *seen = *co;
}

static void test_create_request(void **state)
{
    char base[512], raw[512], top[512], path[512];
    pcow_create_opts seen = { 0 };
    pcow_create_request req = {
        .backing_file = "base.pcow", .announce = count_announce,
        .opaque = &seen,
    };
    pcow_create_result res;
    pcow_error err = { 0 };
    struct stat st;
    int fd;

    td_path(&td, "base.pcow", base, sizeof(base));
    td_path(&td, "empty.raw", raw, sizeof(raw));
    td_path(&td, "top.pcow", top, sizeof(top));
    mk_image(base, 3 * MiB, 0, NULL, PCOW_BACKING_NONE);

    /* Size and format from the base; the announced options are used */
    assert_int_equal(pcow_create_image(top, &req, &res, &err), 0);
    assert_int_equal(seen.virtual_size, 3 * MiB);
    assert_int_equal(seen.backing_format, PCOW_BACKING_PCOW);
    assert_int_equal(seen.cluster_size, 64 * KiB);
    assert_int_equal(seen.cow_unit, 4 * KiB);
    assert_int_equal(res.opts.virtual_size, 3 * MiB);
    assert_string_equal(res.opts.backing_file, "base.pcow");

    /* An empty raw base gives no size: refused before any file */
    fd = open(raw, O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    close(fd);
    req.backing_file = "empty.raw";
    req.announce = NULL;
    td_path(&td, "e.pcow", path, sizeof(path));
    assert_int_equal(pcow_create_image(path, &req, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "is empty: give a size"));
    assert_int_equal(stat(path, &st), -1);

    /* A missing base names the new file and the path tried */
    req.backing_file = "nosuch.pcow";
    assert_int_equal(pcow_create_image(path, &req, NULL, &err), -ENOENT);
    assert_int_equal(strncmp(err.msg, path, strlen(path)), 0);
    assert_non_null(strstr(err.msg, "nosuch.pcow"));
    assert_int_equal(stat(path, &st), -1);

    /* A format without a base, a bad geometry: refused */
    req.backing_file = NULL;
    req.backing_format = PCOW_BACKING_RAW;
    req.virtual_size = MiB;
    assert_int_equal(pcow_create_image(path, &req, NULL, &err), -EINVAL);
    req.backing_format = PCOW_BACKING_NONE;
    req.cluster_size = 3072;
    assert_int_equal(pcow_create_image(path, &req, NULL, &err), -EINVAL);
    assert_int_equal(stat(path, &st), -1);

    /* auto follows the storage (or the default); the size is kept */
    req.cluster_size = 0;
    req.cluster_size_auto = true;
    assert_int_equal(pcow_create_image(path, &req, &res, &err), 0);
    assert_int_equal(res.opts.virtual_size, MiB);
    assert_true(res.opts.cluster_size >= 4 * KiB);
}

static void test_backing_path(void **state)
{
    struct {
        const char *image, *name, *want;
    } cases[] = {
        { "top.pcow", "base.pcow", "./base.pcow" },
        { "a/b/top.pcow", "../base.pcow", "a/b/../base.pcow" },
        { "a/top.pcow", "/abs/base.raw", "/abs/base.raw" },
        { "/d/top.pcow", "sub/base.pcow", "/d/sub/base.pcow" },
    };

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char *p = pcow_backing_path(cases[k].image, cases[k].name);

        assert_non_null(p);
        assert_string_equal(p, cases[k].want);
        free(p);
    }
}

static void test_chain_role(void **state)
{
    char base[512], raw[512], top[512], other[512], alias[512];
    pcow_image *img;
    int fd;

    td_path(&td, "base.raw", raw, sizeof(raw));
    td_path(&td, "mid.pcow", base, sizeof(base));
    td_path(&td, "top.pcow", top, sizeof(top));
    td_path(&td, "other.pcow", other, sizeof(other));
    td_path(&td, "alias.pcow", alias, sizeof(alias));
    fd = open(raw, O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, MiB), 0);
    close(fd);
    mk_image(base, MiB, 0, "base.raw", PCOW_BACKING_RAW);
    mk_image(top, MiB, 0, "mid.pcow", PCOW_BACKING_PCOW);
    mk_image(other, MiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(link(top, alias), 0);

    img = open_image(top, 0);
    assert_int_equal(pcow_chain_role_of(img, top), PCOW_CHAIN_SELF);
    assert_int_equal(pcow_chain_role_of(img, alias), PCOW_CHAIN_SELF);
    assert_int_equal(pcow_chain_role_of(img, base), PCOW_CHAIN_BASE);
    assert_int_equal(pcow_chain_role_of(img, raw), PCOW_CHAIN_BASE);
    assert_int_equal(pcow_chain_role_of(img, other), PCOW_CHAIN_NONE);
    assert_int_equal(pcow_chain_role_of(img, "/no/such/file"),
                     PCOW_CHAIN_NONE);
    assert_int_equal(pcow_chain_role_of(NULL, top), PCOW_CHAIN_NONE);
    assert_int_equal(pcow_close(img, NULL), 0);
}

/*
 * @err names @file once, first, and err->what and err->why point past
 * "@file: " and past "@file: @op: " (@op NULL: none stated)
 */
static void expect_offsets(const pcow_error *err, const char *file,
                           const char *op)
{
    size_t n = strlen(file) + 2;

    fprintf(stderr, "msg '%s' what %u why %u\n", err->msg, err->what,
            err->why);
    assert_int_equal(strncmp(err->msg, file, n - 2), 0);
    assert_int_equal(err->what, n);
    assert_null(strstr(err->msg + err->what, file));
    if (op) {
        assert_int_equal(strncmp(err->msg + n, op, strlen(op)), 0);
        n += strlen(op) + 2;
    }
    assert_int_equal(err->why, n);
    assert_true(err->msg[err->why] != '\0');
    assert_null(strchr(err->msg, '\n'));
}

static void test_error_offsets(void **state)
{
    pcow_error err = { 0 };
    char path[512], base[512];
    pcow_image *img;
    int saved, p[2];

    /* No file named: both 0 */
    memset(&err, 0xff, sizeof(err));
    assert_int_equal(pcow_set_error(&err, -EINVAL, "bad %d", 1), -EINVAL);
    assert_string_equal(err.msg, "bad 1");
    assert_int_equal(err.what, 0);
    assert_int_equal(err.why, 0);
    pcow_set_file_error(&err, -EIO, "x.pcow", "cannot %s", "read");
    assert_string_equal(err.msg, "x.pcow: cannot read");
    expect_offsets(&err, "x.pcow", NULL);
    pcow_error_clear(&err);
    assert_int_equal(err.what + err.why, 0);

    /* The image the call was given, whatever fails */
    td_path(&td, "none.pcow", path, sizeof(path));
    assert_int_equal(pcow_open(path, NULL, &img, &err), -ENOENT);
    expect_offsets(&err, path, NULL);
    td_path(&td, "a.pcow", path, sizeof(path));
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header32(path, 4, 2);
    assert_int_equal(pcow_open(path, NULL, &img, &err), -ENOTSUP);
    expect_offsets(&err, path, NULL);

    /* An operation stated by the library: why past it */
    unlink(path);
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    saved = dup(pcow_fd(img));
    assert_int_equal(pipe(p), 0);
    assert_true(dup2(p[0], pcow_fd(img)) >= 0);
    assert_int_equal(pcow_flush(img, &err), -EINVAL);
    expect_offsets(&err, path, "flush failed");
    assert_string_equal(err.msg + err.why, strerror(EINVAL));
    assert_true(dup2(saved, pcow_fd(img)) >= 0);
    close(saved);
    close(p[0]);
    close(p[1]);
    pcow_close(img, NULL);      /* not clean after that flush: recovers */

    /* A base's message is not about the image the caller gave: what 0 */
    td_path(&td, "base.pcow", base, sizeof(base));
    td_path(&td, "top.pcow", path, sizeof(path));
    mk_image(base, GiB, 0, NULL, PCOW_BACKING_NONE);
    mk_image(path, GiB, 0, base, PCOW_BACKING_PCOW);
    patch_header32(base, 4, 2);
    assert_int_equal(pcow_open(path, NULL, &img, &err), -ENOTSUP);
    assert_true(contains(err.msg, base));
    assert_int_equal(err.what, 0);
    assert_int_equal(err.why, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_to_pages),
        cmocka_unit_test_setup_teardown(test_measure_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_measure_source, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_create_request, setup,
                                        teardown),
        cmocka_unit_test(test_backing_path),
        cmocka_unit_test_setup_teardown(test_chain_role, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_offsets, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
