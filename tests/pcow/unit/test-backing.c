/*
 * libpcow unit tests: backing chains (depth 8, raw bases, relative and
 * absolute names, loops, missing bases, depth limit), set_backing, resize,
 * file kinds (FIFO, directory, socket, character device)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <sys/socket.h>
#include <sys/un.h>

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

/*
 * Chain of depth 8: level k writes byte 0x10+k into cluster k and into the
 * first unit of cluster 20; every level then sees its own and all lower
 * levels' clusters.
 */
static void test_chain_depth8(void **state)
{
    char p[9][512], name[16];
    pcow_image *img;
    pcow_extent ext;
    int k, j;

    for (k = 0; k <= 8; k++) {
        snprintf(name, sizeof(name), "l%d.pcow", k);
        td_path(&td, name, p[k], sizeof(p[k]));
        if (k == 0) {
            mk_image(p[k], 32 * MiB, 0, NULL, PCOW_BACKING_NONE);
        } else {
            char base[16];

            snprintf(base, sizeof(base), "l%d.pcow", k - 1);
            mk_image(p[k], 32 * MiB, 0, base, PCOW_BACKING_PCOW);
        }
        img = open_image(p[k], PCOW_OPEN_RDWR);
        write_bytes(img, k * 65536ull, 65536, 0x10 + k);
        write_bytes(img, 20 * 65536ull + k * 4096, 4096, 0x10 + k);
        close_image(img);
    }
    for (k = 0; k <= 8; k++) {
        img = open_image(p[k], 0);
        for (j = 0; j <= 8; j++) {
            expect_bytes(img, j * 65536ull, 65536, j <= k ? 0x10 + j : 0);
            expect_bytes(img, 20 * 65536ull + j * 4096, 4096,
                         j <= k ? 0x10 + j : 0);
            if (j <= k) {
                assert_int_equal(pcow_get_extent(img, j * 65536ull, 65536,
                                                 &ext), 0);
                assert_int_equal(ext.kind, PCOW_EXTENT_DATA);
                assert_int_equal(ext.depth, k - j);
                assert_int_equal(ext.writable, false);
            }
        }
        expect_bytes(img, 9 * 65536ull, 65536, 0);
        close_image(img);
    }
    /* A writer on the top: COW of base data, the base untouched */
    img = open_image(p[8], PCOW_OPEN_RDWR);
    assert_int_equal(pcow_get_extent(img, 0, 65536, &ext), 0);
    assert_int_equal(ext.depth, 8);
    write_bytes(img, 4096, 100, 0x77);
    expect_bytes(img, 0, 4096, 0x10);
    expect_bytes(img, 4096, 100, 0x77);
    expect_bytes(img, 4196, 65536 - 4196, 0x10);
    assert_int_equal(pcow_cow_units_copied(img, 0), 1);
    /* The base cannot be opened for writing while the chain holds it */
    {
        char msg[512];

        open_fails(p[0], PCOW_OPEN_RDWR, msg, sizeof(msg));
        assert_true(contains(msg, "in use"));
    }
    close_image(img);
    img = open_image(p[0], 0);
    expect_bytes(img, 0, 65536, 0x10);
    close_image(img);
    assert_int_equal(check_clean(p[8]), 0);
}

static void test_raw_base(void **state)
{
    char raw[512], ov[512];
    uint8_t *buf = malloc(MiB), *got = malloc(MiB);
    pcow_image *img;
    pcow_extent ext;
    pcow_error err = { 0 };
    int fd;

    td_path(&td, "base.raw", raw, sizeof(raw));
    td_path(&td, "ov.pcow", ov, sizeof(ov));
    fill_pattern(buf, MiB, 7);
    fd = open(raw, O_CREAT | O_RDWR, 0644);
    /* Not a multiple of 4096: the tail reads as zeros */
    assert_int_equal(write(fd, buf, MiB - 100), (ssize_t)(MiB - 100));
    close(fd);
    {
        pcow_create_opts o = {
            .backing_file = "base.raw",
            .size_from_backing = true,
        };

        assert_int_equal(pcow_create(ov, &o, &err), 0);
    }
    img = open_image(ov, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_virtual_size(img), MiB);
    assert_true(pcow_backing_raw_fd(img) >= 0);
    assert_null(pcow_backing(img));
    assert_int_equal(pcow_get_extent(img, 0, MiB, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_DATA);
    assert_int_equal(ext.fd, pcow_backing_raw_fd(img));
    assert_int_equal(ext.depth, 1);
    assert_int_equal(ext.length, MiB);
    assert_int_equal(ext.valid_length, MiB - 100);
    memset(buf + MiB - 100, 0, 100);
    assert_int_equal(pcow_pread(img, 0, got, MiB, &err), (int64_t)MiB);
    assert_memory_equal(got, buf, MiB);
    /* COW from the raw base, unit and whole cluster */
    write_bytes(img, 65536 + 4096, 10, 0xee);
    memset(buf + 65536 + 4096, 0xee, 10);
    write_bytes(img, MiB - 65536, 65536, 0xdd);
    memset(buf + MiB - 65536, 0xdd, 65536);
    close_image(img);
    img = open_image(ov, 0);
    assert_int_equal(pcow_pread(img, 0, got, MiB, &err), (int64_t)MiB);
    assert_memory_equal(got, buf, MiB);
    close_image(img);
    /* The raw base was never written */
    fd = open(raw, O_RDONLY);
    assert_int_equal(pread(fd, got, 10, 65536 + 4096), 10);
    close(fd);
    assert_int_not_equal(got[0], 0xee);
    /* Wrong declared format: create refuses it, leaving no file */
    {
        pcow_create_opts o = {
            .virtual_size = MiB, .backing_file = "ov.pcow",
            .backing_format = PCOW_BACKING_RAW,
        };
        char ov2[512];

        td_path(&td, "ov2.pcow", ov2, sizeof(ov2));
        assert_int_equal(pcow_create(ov2, &o, &err), -EINVAL);
        assert_true(contains(err.msg, "backing format is raw"));
        assert_int_equal(access(ov2, F_OK), -1);
        o.backing_file = "base.raw";
        o.backing_format = PCOW_BACKING_PCOW;
        assert_int_equal(pcow_create(ov2, &o, &err), -EINVAL);
        assert_true(contains(err.msg, "not a pcow image"));
        assert_int_equal(access(ov2, F_OK), -1);
    }
    /* ... and open, when the files were swapped afterwards */
    {
        char msg[512], ov2[512], other[512];

        td_path(&td, "ov2.pcow", ov2, sizeof(ov2));
        td_path(&td, "other", other, sizeof(other));
        assert_int_equal(link(raw, other), 0);
        mk_image(ov2, MiB, 0, "other", PCOW_BACKING_RAW);
        assert_int_equal(rename(ov, other), 0);
        open_fails(ov2, 0, msg, sizeof(msg));
        assert_true(contains(msg, "backing format is raw"));
        unlink(ov2);
        mk_image(ov2, MiB, 0, "other", PCOW_BACKING_PCOW);
        assert_int_equal(rename(raw, other), 0);
        open_fails(ov2, 0, msg, sizeof(msg));
        assert_true(contains(msg, "not a pcow image"));
    }
    free(buf);
    free(got);
}

static void test_names(void **state)
{
    char sub[512], base[512], ov[512], ov2[512], abs_name[600], msg[512];
    pcow_image *img;
    pcow_info info;

    td_path(&td, "sub", sub, sizeof(sub));
    assert_int_equal(mkdir(sub, 0755), 0);
    td_path(&td, "base.pcow", base, sizeof(base));
    td_path(&td, "sub/ov.pcow", ov, sizeof(ov));
    td_path(&td, "sub/ov2.pcow", ov2, sizeof(ov2));
    mk_image(base, 8 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(base, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4096, 0x42);
    close_image(img);
    /* Relative to the overlay's directory, with ".." */
    mk_image(ov, 8 * MiB, 0, "../base.pcow", PCOW_BACKING_PCOW);
    img = open_image(ov, 0);
    expect_bytes(img, 0, 4096, 0x42);
    pcow_get_info(img, &info);
    assert_string_equal(info.backing_file, "../base.pcow");
    assert_true(contains(info.backing_path, "sub/../base.pcow"));
    assert_int_equal(info.backing_format, PCOW_BACKING_PCOW);
    close_image(img);
    /* Absolute */
    snprintf(abs_name, sizeof(abs_name), "%s", base);
    mk_image(ov2, 8 * MiB, 0, abs_name, PCOW_BACKING_NONE);    /* probed */
    img = open_image(ov2, 0);
    expect_bytes(img, 0, 4096, 0x42);
    pcow_get_info(img, &info);
    assert_int_equal(info.backing_format, PCOW_BACKING_PCOW);
    close_image(img);
    /* NO_BACKING: the base is not opened, unallocated reads as zeros */
    img = open_image(ov2, PCOW_OPEN_NO_BACKING);
    assert_null(pcow_backing(img));
    expect_bytes(img, 0, 4096, 0);
    close_image(img);
    /* Missing base */
    assert_int_equal(unlink(base), 0);
    open_fails(ov, 0, msg, sizeof(msg));
    assert_true(contains(msg, "ov.pcow"));
    assert_true(contains(msg, "../base.pcow"));
    open_fails(ov2, 0, msg, sizeof(msg));
    assert_true(contains(msg, "base.pcow"));
}

static void test_loops_and_depth(void **state)
{
    char a[512], b[512], c[512], msg[512], name[32], prev[32];
    pcow_image *img;
    pcow_error err = { 0 };
    int k;

    td_path(&td, "a.pcow", a, sizeof(a));
    td_path(&td, "b.pcow", b, sizeof(b));
    mk_image(a, 8 * MiB, 0, NULL, PCOW_BACKING_NONE);
    mk_image(b, 8 * MiB, 0, "a.pcow", PCOW_BACKING_PCOW);
    /* Self loop refused by set_backing */
    img = open_image(a, PCOW_OPEN_RDWR);
    assert_true(pcow_set_backing(img, "a.pcow", PCOW_BACKING_PCOW,
                                 &err) < 0);
    assert_true(contains(err.msg, "loop"));
    close_image(img);
    /* A -> B -> A: refused with NO_BACKING (rebase -u) too */
    img = open_image(a, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING);
    assert_int_equal(pcow_set_backing(img, "b.pcow", PCOW_BACKING_PCOW,
                                      &err), -ELOOP);
    assert_true(contains(err.msg, "loop"));
    assert_int_equal(pcow_set_backing(img, "a.pcow", PCOW_BACKING_PCOW,
                                      &err), -ELOOP);
    assert_true(contains(err.msg, "the image itself"));
    close_image(img);
    /* A loop made by renaming files behind the library's back: C -> B */
    td_path(&td, "c.pcow", c, sizeof(c));
    mk_image(c, 8 * MiB, 0, "b.pcow", PCOW_BACKING_PCOW);
    assert_int_equal(rename(c, a), 0);
    open_fails(a, 0, msg, sizeof(msg));
    assert_true(contains(msg, "loop"));
    open_fails(b, 0, msg, sizeof(msg));
    assert_true(contains(msg, "loop"));
    /* Remove the base again */
    img = open_image(a, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING);
    assert_int_equal(pcow_set_backing(img, NULL, PCOW_BACKING_NONE, &err),
                     0);
    close_image(img);
    img = open_image(b, 0);
    close_image(img);

    /* Depth 64 opens, 65 does not */
    snprintf(prev, sizeof(prev), "c0.pcow");
    td_path(&td, prev, a, sizeof(a));
    mk_image(a, MiB, 4096, NULL, PCOW_BACKING_NONE);
    for (k = 1; k <= 65; k++) {
        snprintf(name, sizeof(name), "c%d.pcow", k);
        td_path(&td, name, a, sizeof(a));
        mk_image(a, MiB, 4096, prev, PCOW_BACKING_PCOW);
        snprintf(prev, sizeof(prev), "%s", name);
    }
    td_path(&td, "c64.pcow", a, sizeof(a));
    img = open_image(a, 0);
    expect_bytes(img, 0, 4096, 0);
    close_image(img);
    td_path(&td, "c65.pcow", a, sizeof(a));
    open_fails(a, 0, msg, sizeof(msg));
    assert_true(contains(msg, "deeper than 64"));
}

static void test_set_backing(void **state)
{
    char a[512], b[512], ov[512];
    pcow_image *img;
    pcow_error err = { 0 };

    td_path(&td, "a.pcow", a, sizeof(a));
    td_path(&td, "b.pcow", b, sizeof(b));
    td_path(&td, "ov.pcow", ov, sizeof(ov));
    mk_image(a, 8 * MiB, 0, NULL, PCOW_BACKING_NONE);
    mk_image(b, 8 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(a, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4096, 0xaa);
    close_image(img);
    img = open_image(b, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4096, 0xbb);
    close_image(img);
    mk_image(ov, 8 * MiB, 0, "a.pcow", PCOW_BACKING_PCOW);
    img = open_image(ov, PCOW_OPEN_RDWR);
    expect_bytes(img, 0, 4096, 0xaa);
    assert_true(pcow_set_backing(img, "nope.pcow", PCOW_BACKING_PCOW,
                                 &err) < 0);
    expect_bytes(img, 0, 4096, 0xaa);
    assert_int_equal(pcow_set_backing(img, "b.pcow", PCOW_BACKING_PCOW,
                                      &err), 0);
    expect_bytes(img, 0, 4096, 0xbb);
    close_image(img);
    img = open_image(ov, 0);
    expect_bytes(img, 0, 4096, 0xbb);
    close_image(img);
}

static void test_resize(void **state)
{
    char a[512];
    pcow_image *img;
    pcow_error err = { 0 };
    pcow_info info;

    td_path(&td, "a.pcow", a, sizeof(a));
    mk_image(a, 8 * MiB + 8192, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(a, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 8 * MiB + 8192, 0x33);
    /* Growing past one L2 table's reach moves the L1 table */
    assert_int_equal(pcow_resize(img, 4 * GiB, false, &err), 0);
    assert_int_equal(pcow_virtual_size(img), 4 * GiB);
    expect_bytes(img, 0, 8 * MiB + 8192, 0x33);
    /* The rest of the old last cluster reads as zeros */
    expect_bytes(img, 8 * MiB + 8192, 65536 - 8192, 0);
    write_bytes(img, 4 * GiB - 4096, 4096, 0x44);
    assert_int_equal(pcow_resize(img, 2 * GiB, false, &err), -EINVAL);
    assert_true(contains(err.msg, "shrink"));
    assert_int_equal(pcow_resize(img, 4 * MiB, true, &err), 0);
    expect_bytes(img, 0, 4 * MiB, 0x33);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 64);
    assert_int_equal(pcow_resize(img, 16 * MiB, false, &err), 0);
    expect_bytes(img, 4 * MiB, 12 * MiB, 0);
    assert_int_equal(pcow_resize(img, 100, false, &err), -EINVAL);
    assert_int_equal(pcow_resize(img, 2 * PCOW_MAX_VIRTUAL_SIZE, false,
                                 &err), -EFBIG);
    close_image(img);
    assert_int_equal(check_clean(a), 0);
    img = open_image(a, 0);
    assert_int_equal(pcow_virtual_size(img), 16 * MiB);
    expect_bytes(img, 0, 4 * MiB, 0x33);
    close_image(img);
}

/* Creating Y over X, whose base is a missing "y.pcow", would close a loop */
static void test_create_loop(void **state)
{
    char x[512], y[512];
    pcow_create_opts o = {
        .virtual_size = MiB, .backing_file = "x.pcow",
        .backing_format = PCOW_BACKING_PCOW,
    };
    pcow_error err = { 0 };
    pcow_image *img;

    td_path(&td, "x.pcow", x, sizeof(x));
    td_path(&td, "y.pcow", y, sizeof(y));
    mk_image(y, MiB, 0, NULL, PCOW_BACKING_NONE);
    mk_image(x, MiB, 0, "y.pcow", PCOW_BACKING_PCOW);
    assert_int_equal(unlink(y), 0);
    assert_int_equal(pcow_create(y, &o, &err), -ELOOP);
    assert_true(contains(err.msg, "backing chain loop"));
    assert_true(contains(err.msg, "the image itself"));
    assert_int_equal(access(y, F_OK), -1);
    o.size_from_backing = true;
    o.virtual_size = 0;
    assert_int_equal(pcow_create(y, &o, &err), -ELOOP);
    assert_int_equal(access(y, F_OK), -1);
    /* The public check finds the same, without taking locks */
    mk_image(y, MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(y, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING);
    assert_int_equal(pcow_check_backing(img, "x.pcow", PCOW_BACKING_PCOW,
                                        &err), -ELOOP);
    assert_true(contains(err.msg, "the image itself"));
    assert_int_equal(pcow_check_backing(img, "y.pcow", PCOW_BACKING_NONE,
                                        &err), -ELOOP);
    assert_int_equal(pcow_check_backing(img, "nope.pcow", PCOW_BACKING_PCOW,
                                        &err), -ENOENT);
    close_image(img);
}

static void make_socket(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int s = socket(AF_UNIX, SOCK_STREAM, 0);

    assert_true(s >= 0);
    assert_true(strlen(path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(s);
}

/*
 * Anything but a regular file (or a block device as a raw base) is refused
 * at once with one line naming what it is; a FIFO used to hang open(2).
 */
static void test_file_kinds(void **state)
{
    static const pcow_backing_format fmts[] = {
        PCOW_BACKING_NONE, PCOW_BACKING_PCOW, PCOW_BACKING_RAW,
    };
    char fifo[512], dir[512], sock[512], raw[512], ov[512], msg[512];
    const char *kinds[] = { fifo, dir, sock, "/dev/null", "/dev/zero" };
    pcow_create_opts o = { .virtual_size = MiB };
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t size;
    unsigned i, j, f;
    int fd;

    alarm(60);      /* a blocking open(2) fails the test, not hangs it */
    td_path(&td, "fifo", fifo, sizeof(fifo));
    td_path(&td, "dir", dir, sizeof(dir));
    td_path(&td, "sock", sock, sizeof(sock));
    td_path(&td, "base.raw", raw, sizeof(raw));
    td_path(&td, "ov.pcow", ov, sizeof(ov));
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(mkdir(dir, 0700), 0);
    make_socket(sock);
    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        assert_false(pcow_probe(kinds[i]));
        open_fails(kinds[i], 0, msg, sizeof(msg));
        assert_true(contains(msg, ", not a regular file"));
        open_fails(kinds[i], PCOW_OPEN_RDWR, msg, sizeof(msg));
        assert_true(contains(msg, ", not a regular file"));
        assert_true(pcow_open_data_file(kinds[i], O_RDONLY, true, &size,
                                        &err) < 0);
        assert_true(contains(err.msg, "not a regular file or block device"));
        for (f = 0; f < 3; f++) {
            o.backing_file = kinds[i];
            o.backing_format = fmts[f];
            assert_true(pcow_create(ov, &o, &err) < 0);
            assert_true(contains(err.msg, ", not a regular file"));
            assert_null(strchr(err.msg, '\n'));
            assert_int_equal(access(ov, F_OK), -1);
        }
    }
    assert_true(contains(err.msg, "a character device"));
    {
        pcow_storage_info si;

        assert_int_equal(pcow_storage_probe(dir, &si, &err), 0);
        for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            if (kinds[i] != dir) {
                assert_int_equal(pcow_storage_probe(kinds[i], &si, &err),
                                 -EINVAL);
                assert_true(contains(err.msg, "not a regular file"));
            }
        }
    }
    open_fails(fifo, 0, msg, sizeof(msg));
    assert_true(contains(msg, "a FIFO"));
    open_fails(dir, 0, msg, sizeof(msg));
    assert_true(contains(msg, "a directory"));
    open_fails(sock, 0, msg, sizeof(msg));
    assert_true(contains(msg, "a socket"));

    /* set_backing (rebase -u and safe rebase) */
    mk_image(ov, MiB, 0, NULL, PCOW_BACKING_NONE);
    for (j = 0; j < 2; j++) {
        img = open_image(ov, PCOW_OPEN_RDWR |
                         (j ? PCOW_OPEN_NO_BACKING : 0));
        for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            for (f = 0; f < 3; f++) {
                assert_true(pcow_set_backing(img, kinds[i], fmts[f],
                                             &err) < 0);
                assert_true(contains(err.msg, ", not a regular file"));
            }
        }
        close_image(img);
    }
    img = open_image(ov, 0);
    assert_null(pcow_backing(img));
    assert_int_equal(pcow_backing_raw_fd(img), -1);
    close_image(img);

    /* A base replaced by a FIFO later: open fails at once */
    fd = open(raw, O_CREAT | O_RDWR, 0644);
    assert_int_equal(ftruncate(fd, MiB), 0);
    close(fd);
    assert_int_equal(unlink(ov), 0);
    mk_image(ov, MiB, 0, "base.raw", PCOW_BACKING_RAW);
    fd = pcow_open_data_file(raw, O_RDONLY, false, &size, &err);
    assert_true(fd >= 0);
    assert_int_equal(size, MiB);
    assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    close(fd);
    assert_int_equal(unlink(raw), 0);
    assert_int_equal(mkfifo(raw, 0600), 0);
    open_fails(ov, 0, msg, sizeof(msg));
    assert_true(contains(msg, "a FIFO, not a regular file or block device"));
    assert_true(contains(msg, "ov.pcow"));
    alarm(0);
}

/* The base of @ov: 16 MiB of 0xbb, pcow or raw */
static void mk_base(const char *path, bool raw)
{
    if (raw) {
        uint8_t *buf = malloc(16 * MiB);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

        assert_non_null(buf);
        assert_true(fd >= 0);
        memset(buf, 0xbb, 16 * MiB);
        assert_int_equal(write(fd, buf, 16 * MiB), 16 * MiB);
        close(fd);
        free(buf);
    } else {
        pcow_image *img;

        mk_image(path, 16 * MiB, 0, NULL, PCOW_BACKING_NONE);
        img = open_image(path, PCOW_OPEN_RDWR);
        write_bytes(img, 0, 16 * MiB, 0xbb);
        close_image(img);
    }
}

/*
 * Shrink then grow an overlay: the cut range reads zeros as it does in a
 * standalone image, never the base; a snapshot keeps its own view.
 */
static void overlay_cut(bool raw)
{
    const uint64_t cut = 8 * MiB + 12 * KiB;   /* inside a 64 KiB cluster */
    char b[512], ov[512];
    pcow_image *img;
    pcow_error err = { 0 };
    pcow_extent ext;
    pcow_info info;
    char msg[512];

    td_path(&td, raw ? "b.raw" : "b.pcow", b, sizeof(b));
    td_path(&td, "ov.pcow", ov, sizeof(ov));
    mk_base(b, raw);
    mk_image(ov, 16 * MiB, 0, raw ? "b.raw" : "b.pcow",
             raw ? PCOW_BACKING_RAW : PCOW_BACKING_PCOW);
    img = open_image(ov, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4096, 0x01);
    assert_int_equal(pcow_snapshot_create(img, "whole", NULL, &err), 0);
    assert_int_equal(pcow_resize(img, cut, true, &err), 0);
    assert_int_equal(pcow_resize(img, 16 * MiB, false, &err), 0);
    expect_bytes(img, 0, 4096, 0x01);
    expect_bytes(img, 4096, cut - 4096, 0xbb);
    expect_bytes(img, cut, 16 * MiB - cut, 0);
    assert_int_equal(pcow_get_extent(img, cut, 16 * MiB - cut, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_HOLE);
    assert_int_equal(ext.length, 16 * MiB - cut);
    pcow_get_info(img, &info);
    assert_int_equal(info.backing_limit, cut);
    assert_int_equal(info.incompatible_features, 1);
    /* Writes there copy zeros, not the base */
    write_bytes(img, cut - 100, 200, 0x02);
    write_bytes(img, 12 * MiB + 5, 5, 0x03);
    expect_bytes(img, cut - 4096, 4096 - 100, 0xbb);
    expect_bytes(img, cut + 100, 12 * MiB + 5 - cut - 100, 0);
    expect_bytes(img, 12 * MiB + 10, 4 * MiB - 10, 0);
    assert_int_equal(pcow_snapshot_create(img, "cut", NULL, &err), 0);
    close_image(img);
    assert_int_equal(check_clean(ov), 0);

    img = open_image(ov, PCOW_OPEN_RDWR);
    expect_bytes(img, cut + 100, 12 * MiB + 5 - cut - 100, 0);
    /* The snapshot taken before the cut shows the base there again */
    assert_int_equal(pcow_snapshot_revert(img, "whole", &err), 0);
    expect_bytes(img, 4096, 16 * MiB - 4096, 0xbb);
    pcow_get_info(img, &info);
    assert_int_equal(info.backing_limit, 0);
    assert_int_equal(pcow_snapshot_revert(img, "cut", &err), 0);
    expect_bytes(img, 12 * MiB + 10, 4 * MiB - 10, 0);
    /* Without a base there is nothing to hide; a new limit is checked */
    assert_int_equal(pcow_set_backing_limit(img, 100, &err), -EINVAL);
    assert_int_equal(pcow_snapshot_delete(img, "cut", &err), 0);
    assert_int_equal(pcow_snapshot_delete(img, "whole", &err), 0);
    assert_int_equal(pcow_set_backing(img, NULL, PCOW_BACKING_NONE, &err),
                     0);
    pcow_get_info(img, &info);
    assert_int_equal(info.backing_limit, 0);
    assert_int_equal(info.incompatible_features, 0);
    close_image(img);
    assert_int_equal(check_clean(ov), 0);

    /* A limit needs its feature bit and lies within the virtual size */
    unlink(ov);
    mk_image(ov, 16 * MiB, 0, raw ? "b.raw" : "b.pcow",
             raw ? PCOW_BACKING_RAW : PCOW_BACKING_PCOW);
    patch_header64(ov, 112, 8192);
    open_fails(ov, 0, msg, sizeof(msg));
    assert_true(contains(msg, "backing limit"));
    patch_header64(ov, 24, 1);
    patch_header64(ov, 112, 32 * MiB);
    open_fails(ov, 0, msg, sizeof(msg));
    assert_true(contains(msg, "backing limit"));
    patch_header64(ov, 112, 8192);
    img = open_image(ov, 0);
    expect_bytes(img, 0, 8192, 0xbb);
    expect_bytes(img, 8192, 16 * MiB - 8192, 0);
    close_image(img);
    unlink(ov);
    unlink(b);
}

static void test_overlay_cut_pcow(void **state)
{
    overlay_cut(false);
}

static void test_overlay_cut_raw(void **state)
{
    overlay_cut(true);
}

/*
 * Grow an overlay opened without its chain whose old end lies in a frozen
 * cluster: zeroing the tail copies on write from the base, so the library
 * opens the base for it (before, the copy read zeros below the old end).
 */
static void test_overlay_cut_no_backing(void **state)
{
    const uint64_t cut = 8 * MiB + 12 * KiB;
    char b[512], ov[512];
    pcow_image *img;
    pcow_error err = { 0 };

    td_path(&td, "b.pcow", b, sizeof(b));
    td_path(&td, "ov.pcow", ov, sizeof(ov));
    mk_base(b, false);
    mk_image(ov, 16 * MiB, 0, "b.pcow", PCOW_BACKING_PCOW);
    img = open_image(ov, PCOW_OPEN_RDWR);
    write_bytes(img, 8 * MiB + 4096, 4096, 0x01);  /* PARTIAL over base */
    write_bytes(img, 8 * MiB + 16 * KiB, 4096, 0x02);
    assert_int_equal(pcow_snapshot_create(img, "s", NULL, &err), 0);
    close_image(img);
    img = open_image(ov, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING);
    assert_int_equal(pcow_resize(img, cut, true, &err), 0);
    assert_int_equal(pcow_resize(img, 16 * MiB, false, &err), 0);
    close_image(img);
    img = open_image(ov, 0);
    expect_bytes(img, 0, 8 * MiB + 4096, 0xbb);
    expect_bytes(img, 8 * MiB + 4096, 4096, 0x01);
    expect_bytes(img, 8 * MiB + 8192, 4096, 0xbb);
    expect_bytes(img, cut, 16 * MiB - cut, 0);
    close_image(img);
    assert_int_equal(check_clean(ov), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chain_depth8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_base, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loops_and_depth, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_set_backing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_kinds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlay_cut_pcow, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_overlay_cut_raw, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_overlay_cut_no_backing, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
