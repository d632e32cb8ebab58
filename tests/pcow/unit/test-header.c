/*
 * libpcow unit tests: header, create, open validation, locking, util
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

static void test_crc32c(void **state)
{
    /* The standard check value of CRC-32C */
    assert_int_equal(pcow_crc32c(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(pcow_crc32c(0, "", 0), 0);
    /* Incremental use gives the same result */
    assert_int_equal(pcow_crc32c(pcow_crc32c(0, "1234", 4), "56789", 5),
                     0xe3069283u);
}

static void test_parse_size(void **state)
{
    uint64_t v;

    assert_int_equal(pcow_parse_size("128", &v), 0);
    assert_int_equal(v, 128);
    assert_int_equal(pcow_parse_size("64K", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(pcow_parse_size("1G", &v), 0);
    assert_int_equal(v, GiB);
    assert_int_equal(pcow_parse_size("64T", &v), 0);
    assert_int_equal(v, 64 * TiB);
    assert_int_equal(pcow_parse_size("2P", &v), 0);
    assert_int_equal(v, 2ull << 50);
    assert_int_equal(pcow_parse_size("3m", &v), 0);
    assert_int_equal(v, 3 * MiB);
    assert_int_equal(pcow_parse_size("", &v), -EINVAL);
    assert_int_equal(pcow_parse_size("abc", &v), -EINVAL);
    assert_int_equal(pcow_parse_size("12Q", &v), -EINVAL);
    assert_int_equal(pcow_parse_size("1K2", &v), -EINVAL);
    assert_int_equal(pcow_parse_size("99999999999999999999999", &v),
                     -EINVAL);
    assert_int_equal(pcow_parse_size("16E", &v), -EINVAL);
    assert_int_equal(pcow_parse_size(NULL, &v), -EINVAL);
}

static void test_create_small_file(void **state)
{
    struct stat st;
    pcow_image *img;
    pcow_info info;

    mk_image(path, 128 * GiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size <= (off_t)MiB);
    assert_true(pcow_probe(path));
    img = open_image(path, 0);
    pcow_get_info(img, &info);
    assert_int_equal(info.virtual_size, 128 * GiB);
    assert_int_equal(info.cluster_size, 64 * KiB);
    assert_int_equal(info.cow_unit, 4 * KiB);
    assert_int_equal(info.version, 1);
    assert_int_equal(info.generation, 1);
    assert_int_equal(info.allocated_clusters, 0);
    assert_false(info.was_dirty);
    assert_true(info.read_only);
    assert_int_equal(pcow_virtual_size(img), 128 * GiB);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/* A 64 TiB image is created sparse, and both of its ends work */
static void test_create_64t_sparse(void **state)
{
    struct stat st;
    pcow_image *img;

    mk_image(path, 64 * TiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(stat(path, &st), 0);
    /* The 4 MiB L1 table is a sparse region */
    assert_true((uint64_t)st.st_blocks * 512 <= 64 * KiB);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 64 * TiB - 4096, 4096, 0x5a);
    write_bytes(img, 0, 4096, 0xa5);
    close_image(img);
    img = open_image(path, 0);
    expect_bytes(img, 64 * TiB - 4096, 4096, 0x5a);
    expect_bytes(img, 0, 4096, 0xa5);
    expect_bytes(img, 32 * TiB, 65536, 0);
    close_image(img);
}

static void test_create_errors(void **state)
{
    pcow_create_opts o = { .virtual_size = 0 };
    pcow_error err = { 0 };
    struct stat st;

    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    assert_true(contains(err.msg, "a.pcow"));
    o.virtual_size = 4000;
    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    o.virtual_size = 2000 * TiB;
    o.cluster_size = MiB;
    assert_int_equal(pcow_create(path, &o, &err), -EFBIG);
    o.virtual_size = 64 * TiB;
    o.cluster_size = 4096;      /* L1 would need > 1 << 22 entries */
    assert_int_equal(pcow_create(path, &o, &err), -EFBIG);
    o.virtual_size = GiB;
    o.cluster_size = 3072;
    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    o.cluster_size = 4 * MiB;
    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    o.cluster_size = 2048;
    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    o.cluster_size = 2 * MiB;
    o.cow_unit = 4096;          /* 512 units > 64 */
    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    o.cow_unit = 3 * 4096;
    assert_int_equal(pcow_create(path, &o, &err), -EINVAL);
    o.cow_unit = 0;
    o.backing_file = "missing.pcow";
    assert_true(pcow_create(path, &o, &err) < 0);
    assert_true(contains(err.msg, "missing.pcow"));
    assert_int_equal(stat(path, &st), -1);
    /* Defaults: 2M clusters get 32K COW units */
    o.backing_file = NULL;
    assert_int_equal(pcow_create(path, &o, &err), 0);
    {
        pcow_image *img = open_image(path, 0);

        assert_int_equal(pcow_cluster_size(img), 2 * MiB);
        assert_int_equal(pcow_cow_unit(img), 32 * KiB);
        close_image(img);
    }
    /* O_EXCL */
    assert_int_equal(pcow_create(path, &o, &err), -EEXIST);
}

static void test_open_errors(void **state)
{
    char msg[512];
    uint8_t zero[64] = { 0 };
    int fd;

    /* Missing file */
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "a.pcow"));
    /* Not a pcow image */
    fd = open(path, O_CREAT | O_RDWR, 0644);
    assert_int_equal(write(fd, "hello world, this is not an image", 33), 33);
    close(fd);
    assert_false(pcow_probe(path));
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "not a pcow image"));
    unlink(path);

    /* Truncated inside cluster 0 */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(truncate(path, 2000), 0);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "truncated") || contains(msg, "corrupt"));
    unlink(path);

    /* Truncated below the frontier */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    {
        pcow_image *img = open_image(path, PCOW_OPEN_RDWR);

        write_bytes(img, 0, 3 * 65536 * 4, 1);
        close_image(img);
    }
    assert_int_equal(truncate(path, 65536 * 2), 0);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "frontier"));
    unlink(path);

    /* Bad CRC */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    poke(path, 60, "\x01", 1);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "header corrupt"));
    assert_true(contains(msg, "a.pcow"));
    unlink(path);

    /* Bad version */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header32(path, 4, 2);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "version"));
    unlink(path);

    /* Unknown incompatible feature: named */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header64(path, 24, 1ull << 5);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "incompatible feature bit 5"));
    unlink(path);

    /* Unknown compatible feature: ignored */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header64(path, 32, 1ull << 9);
    close_image(open_image(path, 0));
    unlink(path);

    /* Cluster bits out of range */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header32(path, 48, 22);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "cluster_bits"));
    unlink(path);

    /* COW unit bits giving more than 64 units */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header32(path, 52, 9);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "cow_unit_bits"));
    unlink(path);

    /* Virtual size 0, unaligned, too large */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header64(path, 56, 0);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "virtual size"));
    patch_header64(path, 56, GiB + 100);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "virtual size"));
    patch_header64(path, 56, 1ull << 60);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "too large"));
    /* Virtual size larger than the L1 table covers */
    patch_header64(path, 56, 1024 * GiB);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "L1 size"));
    unlink(path);

    /* L1 table out of range */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header64(path, 64, 1ull << 40);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "L1 table"));
    patch_header64(path, 64, 100);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "L1 table"));
    unlink(path);

    /* Backing name length beyond the header / format without a name */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    patch_header32(path, 108, 2000);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "backing name length"));
    patch_header32(path, 108, 0);
    patch_header32(path, 104, 1);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "backing format"));
    patch_header32(path, 104, 7);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "backing format"));
    unlink(path);

    /* Frontier not cluster aligned */
    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    poke64(path, PCOW_HOT_FRONTIER, 65536 * 2 + 512);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "frontier"));
    poke(path, PCOW_HOT_FRONTIER, zero, 8);
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "frontier"));
    unlink(path);
}

static void test_header_slots(void **state)
{
    pcow_image *img;
    pcow_info info;
    uint8_t slot[PCOW_SLOT_SIZE];

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    /* A structural change commits generation 2 into slot B */
    assert_int_equal(pcow_resize(img, 2 * GiB, false, NULL), 0);
    pcow_get_info(img, &info);
    assert_int_equal(info.generation, 2);
    close_image(img);
    peek(path, PCOW_SLOT_B, slot, sizeof(slot));
    assert_memory_equal(slot, "PCOW", 4);    /* the spec's bytes */
    assert_int_equal(pcow_ld64(slot + 16), 2);
    img = open_image(path, 0);
    assert_int_equal(pcow_virtual_size(img), 2 * GiB);
    close_image(img);

    /* A torn slot B: slot A (generation 1, 1 GiB) is current again */
    poke(path, PCOW_SLOT_B + 70, "\xff\xff", 2);
    img = open_image(path, 0);
    assert_int_equal(pcow_virtual_size(img), GiB);
    pcow_get_info(img, &info);
    assert_int_equal(info.generation, 1);
    close_image(img);

    /* The next commit goes to the slot that is not current */
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_resize(img, 3 * GiB, false, NULL), 0);
    close_image(img);
    img = open_image(path, 0);
    assert_int_equal(pcow_virtual_size(img), 3 * GiB);
    close_image(img);
    peek(path, PCOW_SLOT_A, slot, sizeof(slot));
    assert_int_equal(pcow_ld64(slot + 16), 1);

    /* Both slots bad */
    poke(path, PCOW_SLOT_A + 70, "\xff\xff", 2);
    poke(path, PCOW_SLOT_B + 70, "\xff\xff", 2);
    {
        char msg[512];

        pcow_open_opts o = { 0 };
        pcow_error err = { 0 };
        pcow_image *x = NULL;

        open_fails(path, 0, msg, sizeof(msg));
        assert_true(contains(msg, "header corrupt"));
        assert_int_equal(pcow_open(path, &o, &x, &err), -EINVAL);
        assert_int_equal(err.kind, PCOW_ERR_CORRUPT);
    }
}

static void test_locking(void **state)
{
    pcow_image *w, *r, *u;
    char msg[512];
    int ret;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    w = open_image(path, PCOW_OPEN_RDWR);
    /* OFD locks conflict between open file descriptions of one process */
    ret = open_fails(path, PCOW_OPEN_RDWR, msg, sizeof(msg));
    assert_int_equal(ret, -EBUSY);
    /* Neutral: the front end adds its advice from the kind */
    assert_true(contains(msg, "a.pcow: image is in use by another process"));
    /* (not just "-U": the random test directory may hold that) */
    assert_false(strstr(msg, "use -U"));
    {
        pcow_open_opts o = { .flags = PCOW_OPEN_RDWR };
        pcow_error err = { 0 };
        pcow_image *x = NULL;

        assert_int_equal(pcow_open(path, &o, &x, &err), -EBUSY);
        assert_int_equal(err.kind, PCOW_ERR_IN_USE);
        assert_int_equal(err.code, -EBUSY);
    }
    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, "in use"));
    u = open_image(path, PCOW_OPEN_NO_LOCK);
    close_image(u);
    close_image(w);

    /* Readers share; a writer is refused while one reads */
    r = open_image(path, 0);
    u = open_image(path, 0);
    open_fails(path, PCOW_OPEN_RDWR, msg, sizeof(msg));
    assert_true(contains(msg, "in use"));
    close_image(r);
    close_image(u);
    w = open_image(path, PCOW_OPEN_RDWR);
    close_image(w);
}

static void test_dirty_flag(void **state)
{
    pcow_image *img;
    pcow_info info;
    pid_t pid;
    int status;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_not_equal(peek64(path, PCOW_HOT_IN_USE), 0);
    close_image(img);
    assert_int_equal(peek64(path, PCOW_HOT_IN_USE), 0);

    /* A writer that dies without closing leaves the image dirty */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pcow_open_opts o = { .flags = PCOW_OPEN_RDWR };
        pcow_image *c;

        if (pcow_open(path, &o, &c, NULL) < 0) {
            _exit(1);
        }
        pcow_reserve_clusters(c, 8, NULL);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(WEXITSTATUS(status), 0);
    img = open_image(path, 0);
    pcow_get_info(img, &info);
    assert_true(info.was_dirty);
    close_image(img);
    /* The reserved clusters are leaks until a read-write open */
    assert_true(check_clean(path) > 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    pcow_get_info(img, &info);
    assert_true(info.was_dirty);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    pcow_get_info(img, &info);
    assert_false(info.was_dirty);
    close_image(img);
}

static void test_accessors(void **state)
{
    pcow_image *img;
    pcow_create_opts o = {
        .virtual_size = 16 * MiB,
        .cluster_size = 16 * KiB,
        .cow_unit = 8 * KiB,
    };

    assert_int_equal(pcow_create(path, &o, NULL), 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_string_equal(pcow_filename(img), path);
    assert_int_equal(pcow_cluster_size(img), 16 * KiB);
    assert_int_equal(pcow_cow_unit(img), 8 * KiB);
    assert_true(pcow_fd(img) >= 0);
    assert_null(pcow_backing(img));
    assert_int_equal(pcow_backing_raw_fd(img), -1);
    close_image(img);
}

/*
 * pcow_geometry_for and pcow_create both give the result the spec's limits
 * give (docs/interop/pcow-spec.rst: cluster 4K..2M, COW unit >= 4K and
 * >= 1/64 cluster, 2^22 L1 entries, 1 PiB), and the geometry matches the
 * image made.
 */
static void test_geometry(void **state)
{
    static const struct {
        uint64_t size;
        uint32_t cs, cu;
        int ret;
    } cases[] = {
        { GiB, 0, 0, 0 }, { 0, 0, 0, -EINVAL }, { 5000, 0, 0, -EINVAL },
        { 512 * TiB, 0, 0, 0 }, { 513 * TiB, 0, 0, -EFBIG },
        { 1024 * TiB, 2 * MiB, 0, 0 }, { 1025 * TiB, 2 * MiB, 0, -EFBIG },
        { 2 * TiB, 4096, 0, 0 }, { 2 * TiB + 4096, 4096, 0, -EFBIG },
        { GiB, 3072, 0, -EINVAL }, { GiB, 4 * MiB, 0, -EINVAL },
        { GiB, 2 * MiB, 4096, -EINVAL }, { GiB, 64 * KiB, 2048, -EINVAL },
        { GiB, 64 * KiB, 16 * KiB, 0 }, { 4096, 4096, 4096, 0 },
    };
    size_t k;

    for (k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        pcow_create_opts o = {
            .virtual_size = cases[k].size, .cluster_size = cases[k].cs,
            .cow_unit = cases[k].cu,
        };
        pcow_error err = { 0 };
        pcow_geometry g;
        struct stat st;
        int want = cases[k].ret;

        assert_int_equal(pcow_geometry_for(o.virtual_size, o.cluster_size,
                                           o.cow_unit, &g, &err), want);
        assert_true(want == 0 || err.msg[0] != '\0');
        memset(&err, 0, sizeof(err));
        assert_int_equal(pcow_create(path, &o, &err), want);
        if (want == 0) {
            pcow_image *img = open_image(path, 0);

            assert_int_equal(stat(path, &st), 0);
            assert_int_equal(g.empty_size, st.st_size);
            assert_int_equal(g.cluster_size, pcow_cluster_size(img));
            assert_int_equal(g.cow_unit, pcow_cow_unit(img));
            assert_true(g.max_virtual_size >= o.virtual_size);
            close_image(img);
            unlink(path);
        } else {
            assert_true(err.msg[0] != '\0');
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test_setup_teardown(test_create_small_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_create_64t_sparse, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_geometry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dirty_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accessors, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
