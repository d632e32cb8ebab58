/*
 * libpcow unit tests: check (corruptions vs leaks, repair), crafted
 * corrupt images refused at open, and crash consistency: every prefix of
 * the persistence stream of a workload gives an image that opens and,
 * after a read-write open and close, checks clean.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
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

/* Image with clusters 0..3 written; returns the L2 table offset */
static uint64_t mk_populated(void)
{
    pcow_image *img;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4 * CS, 0x5a);
    close_image(img);
    return peek64(path, CS) & ~(CS - 1);
}

static uint64_t l2e(uint64_t l2, unsigned v, unsigned word)
{
    return l2 + v * 32ull + word * 8;
}

/* Open refuses with @needle in the message; check counts a corruption */
static void expect_corrupt(const char *needle)
{
    pcow_check_result r;
    pcow_error err = { 0 };
    char msg[512];

    open_fails(path, 0, msg, sizeof(msg));
    assert_true(contains(msg, needle));
    assert_true(contains(msg, "a.pcow: "));
    open_fails(path, PCOW_OPEN_RDWR, msg, sizeof(msg));
    assert_true(contains(msg, needle));
    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    assert_true(r.corruptions >= 1);
    assert_true(contains(r.first_problem, needle));
}

static void test_clean(void **state)
{
    pcow_check_result r;
    pcow_error err = { 0 };

    mk_populated();
    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.allocated_clusters, 4);
    assert_int_equal(r.total_clusters, 1024);
    assert_int_equal(r.fragmented_clusters, 0);
    assert_int_equal(r.image_end_offset, peek64(path, PCOW_HOT_FRONTIER));
    assert_int_equal(pcow_check("/nonexistent/x.pcow", 0, false, &r, &err),
                     -ENOENT);
}

/* pcow_check() clears @err on entry: a kind left by a failure goes too */
static void test_error_reset(void **state)
{
    pcow_check_result r;
    pcow_error err = { 0 };

    mk_populated();
    assert_int_equal(pcow_check("/nonexistent/x.pcow", 0, false, &r, &err),
                     -ENOENT);
    assert_int_equal(err.kind, PCOW_ERR_NOT_FOUND);
    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    assert_int_equal(err.code, 0);
    assert_int_equal(err.kind, PCOW_ERR_NONE);
    assert_string_equal(err.msg, "");
}

static void test_corrupt_entries(void **state)
{
    uint64_t l2 = mk_populated();
    uint64_t frontier = peek64(path, PCOW_HOT_FRONTIER);
    uint64_t map1 = peek64(path, l2e(l2, 1, 0));
    char want[200];

    /* Points at a metadata cluster (the L2 table itself) */
    poke64(path, l2e(l2, 1, 0), l2 | PCOW_F_PRESENT | PCOW_F_WRITABLE);
    snprintf(want, sizeof(want), "L2 entry for guest offset 0x10000 points "
             "at metadata cluster 0x%llx", (unsigned long long)l2);
    expect_corrupt(want);
    /* ... at cluster 0 / beyond the frontier */
    poke64(path, l2e(l2, 1, 0), PCOW_F_PRESENT);
    expect_corrupt("points outside the image");
    poke64(path, l2e(l2, 1, 0), frontier | PCOW_F_PRESENT);
    expect_corrupt("points outside the image");
    /* Reserved flag bits and high bits */
    poke64(path, l2e(l2, 1, 0), map1 | 0x40);
    expect_corrupt("reserved bits");
    poke64(path, l2e(l2, 1, 0), map1 | (1ull << 60));
    expect_corrupt("reserved bits");
    /* Offset without PRESENT */
    poke64(path, l2e(l2, 1, 0), map1 & ~PCOW_F_PRESENT);
    expect_corrupt("reserved bits");
    /* Mapped twice */
    poke64(path, l2e(l2, 1, 0), peek64(path, l2e(l2, 0, 0)));
    expect_corrupt("same table maps");
    poke64(path, l2e(l2, 1, 0), map1);
    /* PARTIAL: copied bits beyond the units, a PARTIAL source */
    poke64(path, l2e(l2, 1, 1), 1ull << 40);
    poke64(path, l2e(l2, 1, 0), map1 | PCOW_F_PARTIAL);
    expect_corrupt("copied bits");
    poke64(path, l2e(l2, 1, 1), 1);
    poke64(path, l2e(l2, 1, 2), peek64(path, l2e(l2, 2, 0)) |
           PCOW_F_PARTIAL);
    expect_corrupt("itself PARTIAL");
    poke64(path, l2e(l2, 1, 2), l2 | PCOW_F_PRESENT);
    expect_corrupt("metadata cluster");
    /* Reserved word */
    poke64(path, l2e(l2, 1, 0), map1);
    poke64(path, l2e(l2, 1, 3), 7);
    expect_corrupt("reserved word");
    poke64(path, l2e(l2, 1, 3), 0);
    /* L1 entry misaligned / out of range / at the L1 table itself */
    poke64(path, CS, l2 + 8);
    expect_corrupt("L1 entry 0");
    poke64(path, CS, frontier);
    expect_corrupt("L1 entry 0");
    poke64(path, CS, CS);
    expect_corrupt("overlaps");
    poke64(path, CS, l2);
    assert_int_equal(check_clean(path), 0);
    close_image(open_image(path, 0));
}

static void test_corrupt_snapshots(void **state)
{
    uint64_t l2 = mk_populated(), soff;
    pcow_image *img;
    uint8_t slot[PCOW_SLOT_SIZE];
    int cur;

    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_create(img, "s1", NULL, NULL), 0);
    assert_int_equal(pcow_snapshot_create(img, "s2", NULL, NULL), 0);
    close_image(img);
    /* Generation 3 is in slot A again */
    peek(path, PCOW_SLOT_A, slot, sizeof(slot));
    assert_int_equal(pcow_ld64(slot + 16), 3);
    cur = 0;
    (void)cur;
    soff = pcow_ld64(slot + 80);
    assert_int_not_equal(soff, 0);
    /* Table CRC */
    {
        uint8_t b = 0;

        peek(path, soff + 64, &b, 1);
        b ^= 0xff;
        poke(path, soff + 64, &b, 1);
        expect_corrupt("snapshot table checksum");
        b ^= 0xff;
        poke(path, soff + 64, &b, 1);
    }
    /* Table out of range */
    patch_header64(path, 80, 1ull << 40);
    expect_corrupt("snapshot table");
    patch_header64(path, 80, soff);
    /* Duplicate name: rename s2 to s1 and fix the CRC */
    {
        uint32_t size = pcow_ld32(slot + 88);
        uint8_t *t = malloc(size);

        peek(path, soff, t, size);
        assert_int_equal(t[64 + 8 + 64 + 1], '2');
        t[64 + 8 + 64 + 1] = '1';
        poke(path, soff, t, size);
        patch_header32(path, 92, pcow_crc32c(0, t, size));
        expect_corrupt("duplicate snapshot name 's1'");
        t[64 + 8 + 64 + 1] = '2';
        /* Duplicate id */
        pcow_st64(t + 72, 1);
        poke(path, soff, t, size);
        patch_header32(path, 92, pcow_crc32c(0, t, size));
        expect_corrupt("duplicate snapshot id 1");
        pcow_st64(t + 72, 2);
        poke(path, soff, t, size);
        patch_header32(path, 92, pcow_crc32c(0, t, size));
        free(t);
    }
    assert_int_equal(check_clean(path), 0);
    /* WRITABLE in a snapshot's L2 table */
    {
        uint8_t t[80];
        uint64_t sl1, sl2;

        peek(path, soff, t, sizeof(t));
        sl1 = pcow_ld64(t + 8);
        sl2 = peek64(path, sl1);
        assert_int_not_equal(sl2, l2);
        poke64(path, sl2, peek64(path, sl2) | PCOW_F_WRITABLE);
        expect_corrupt("snapshot 's1': L2 entry for guest offset 0x0 is "
                       "WRITABLE in a snapshot");
        poke64(path, sl2, peek64(path, sl2) & ~PCOW_F_WRITABLE);
    }
    assert_int_equal(check_clean(path), 0);
}

static void test_leaks_and_repair(void **state)
{
    uint64_t l2 = mk_populated(), map1;
    pcow_check_result r;
    pcow_error err = { 0 };
    pcow_image *img;
    uint8_t buf[CS];
    pid_t pid;
    int status;

    /* A writer dies with a full reserve: leaks */
    pid = fork();
    if (pid == 0) {
        pcow_open_opts o = { .flags = PCOW_OPEN_RDWR };
        pcow_image *c;

        if (pcow_open(path, &o, &c, NULL) < 0 ||
            pcow_reserve_clusters(c, 5, NULL) != 5) {
            _exit(1);
        }
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.leaks, 5);
    assert_int_equal(pcow_check(path, PCOW_REPAIR_LEAKS, false, &r, &err),
                     0);
    assert_int_equal(r.leaks_fixed, 5);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(check_clean(path), 0);

    /* Repair of errors: an out-of-range entry is cleared */
    map1 = peek64(path, l2e(l2, 1, 0));
    poke64(path, l2e(l2, 1, 0), (1ull << 40) | PCOW_F_PRESENT);
    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(pcow_check(path, PCOW_REPAIR_ERRORS |
                                PCOW_REPAIR_LEAKS, false, &r, &err), 0);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(r.corruptions, 0);
    /* The cluster it used to map is now a leak, and was repaired */
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.leaks_fixed, 1);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    expect_bytes(img, 0, CS, 0x5a);
    expect_bytes(img, CS, CS, 0);
    expect_bytes(img, 2 * CS, 2 * CS, 0x5a);
    close_image(img);
    (void)map1;
    (void)buf;

    /* A WRITABLE entry shared with a snapshot is a corruption; repaired */
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_create(img, "s", NULL, NULL), 0);
    close_image(img);
    l2 = peek64(path, CS) & ~(CS - 1);
    poke64(path, l2e(l2, 0, 0), peek64(path, l2e(l2, 0, 0)) |
           PCOW_F_WRITABLE);
    assert_int_equal(pcow_check(path, 0, false, &r, &err), 0);
    assert_int_equal(r.corruptions, 1);
    assert_true(contains(r.first_problem, "WRITABLE but cluster"));
    assert_int_equal(pcow_check(path, PCOW_REPAIR_ERRORS, false, &r, &err),
                     0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(check_clean(path), 0);
    /* Locked image: check refuses unless forced */
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_check(path, 0, false, &r, &err), -EBUSY);
    assert_int_equal(pcow_check(path, 0, true, &r, &err), 0);
    assert_int_equal(r.corruptions, 0);
    close_image(img);
}

/* ---- crash consistency ------------------------------------------------ */

typedef struct Rec {
    pcow_persist_op op;
    uint64_t off, len;
    uint8_t *data;
} Rec;

typedef struct Stream {
    Rec *r;
    size_t n, cap;
} Stream;

static void record(void *opaque, pcow_persist_op op, uint64_t off,
                   const void *data, uint64_t len)
{
    Stream *s = opaque;
    Rec *r;

    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->r = realloc(s->r, s->cap * sizeof(*s->r));
    }
    r = &s->r[s->n++];
    r->op = op;
    r->off = off;
    r->len = len;
    r->data = NULL;
    if (op == PCOW_OP_WRITE) {
        r->data = malloc(len);
        memcpy(r->data, data, len);
    }
}

static void copy_file(const char *from, const char *to)
{
    char cmd[1200];

    snprintf(cmd, sizeof(cmd), "cp --sparse=always '%s' '%s'", from, to);
    assert_int_equal(system(cmd), 0);
}

static void replay(const char *file, const Stream *s, size_t n)
{
    int fd = open(file, O_RDWR);
    size_t i;

    assert_true(fd >= 0);
    for (i = 0; i < n; i++) {
        const Rec *r = &s->r[i];

        switch (r->op) {
        case PCOW_OP_WRITE:
            assert_int_equal(pwrite(fd, r->data, r->len, r->off),
                             (ssize_t)r->len);
            break;
        case PCOW_OP_TRUNCATE:
            assert_int_equal(ftruncate(fd, r->off), 0);
            break;
        case PCOW_OP_ALLOCATE:
            assert_int_equal(fallocate(fd, 0, r->off, r->len), 0);
            break;
        case PCOW_OP_PUNCH:
            assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE |
                                       FALLOC_FL_KEEP_SIZE, r->off, r->len),
                             0);
            break;
        default:
            break;
        }
    }
    close(fd);
}

static void workload(pcow_image *img)
{
    pcow_extent ext;
    uint64_t off;

    write_bytes(img, 0, 2 * CS, 0x01);              /* expansions */
    assert_int_equal(pcow_snapshot_create(img, "s1", NULL, NULL), 0);
    assert_true(pcow_reserve_clusters(img, 4, NULL) >= 4);
    assert_int_equal(pcow_cow(img, 4096, false, &ext), 0);
    assert_int_equal(pcow_cow(img, 8192, false, &ext), 0);
    assert_int_equal(pcow_cow(img, CS, true, &ext), 0);
    assert_int_equal(pcow_expand_cluster(img, 40, &off), 0);
    write_bytes(img, 200 * CS, 100, 0x02);          /* new L2 table */
    assert_int_equal(pcow_snapshot_create(img, "s2", NULL, NULL), 0);
    write_bytes(img, 0, 4096, 0x03);                /* frozen PARTIAL */
    assert_int_equal(pcow_snapshot_delete(img, "s1", NULL), 0);
    assert_int_equal(pcow_zero_range(img, 40 * CS, CS, NULL), 0);
    assert_int_equal(pcow_snapshot_revert(img, "s2", NULL), 0);
    assert_int_equal(pcow_resize(img, 2 * GiB, false, NULL), 0);
    assert_int_equal(pcow_snapshot_delete(img, "s2", NULL), 0);
}

static void workload_base(pcow_image *img)
{
    pcow_extent ext;
    int k;

    /* Unit COWs of base data into holes, then completing a cluster */
    for (k = 0; k < 16; k++) {
        assert_int_equal(pcow_cow(img, 3 * CS + k * 4096, false, &ext), 0);
    }
    assert_int_equal(pcow_cow(img, 5 * CS + 4096, false, &ext), 0);
    assert_int_equal(pcow_cow(img, 5 * CS, true, &ext), 0);
    write_bytes(img, 7 * CS + 100, 10, 0x07);
    assert_int_equal(pcow_snapshot_create(img, "s", NULL, NULL), 0);
    write_bytes(img, 7 * CS + 9000, 10, 0x08);
    assert_int_equal(pcow_zero_range(img, 3 * CS, CS, NULL), 0);
}

static void run_crash_prefixes(void (*work)(pcow_image *), bool with_base)
{
    char orig[512], copy[512], base[512];
    Stream s = { 0 };
    pcow_open_opts o = { .flags = PCOW_OPEN_RDWR, .hook = record };
    pcow_image *img;
    uint8_t *final = malloc(16 * CS), *got = malloc(16 * CS);
    size_t p;

    td_path(&td, "orig.pcow", orig, sizeof(orig));
    td_path(&td, "copy.pcow", copy, sizeof(copy));
    if (with_base) {
        uint8_t *b = malloc(MiB);
        int fd;

        td_path(&td, "base.raw", base, sizeof(base));
        fill_pattern(b, MiB, 99);
        fd = open(base, O_CREAT | O_RDWR, 0644);
        assert_int_equal(write(fd, b, MiB), (ssize_t)MiB);
        close(fd);
        free(b);
        mk_image(path, 64 * MiB, 0, "base.raw", PCOW_BACKING_RAW);
    } else {
        mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    }
    copy_file(path, orig);
    o.hook_opaque = &s;
    assert_int_equal(pcow_open(path, &o, &img, NULL), 0);
    work(img);
    assert_int_equal(pcow_pread(img, 0, final, 16 * CS, NULL),
                     (int64_t)(16 * CS));
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    assert_true(s.n > 20);
    fprintf(stderr, "replaying %zu prefixes\n", s.n + 1);

    for (p = 0; p <= s.n; p++) {
        pcow_image *c;
        pcow_error err = { 0 };
        pcow_open_opts ro = { .flags = 0 };

        unlink(copy);
        copy_file(orig, copy);
        replay(copy, &s, p);
        if (pcow_open(copy, &ro, &c, &err) < 0) {
            fprintf(stderr, "prefix %zu/%zu: %s\n", p, s.n, err.msg);
            fail();
        }
        close_image(c);
        c = open_image(copy, PCOW_OPEN_RDWR);
        if (p == s.n) {
            /* The whole stream gives the final content */
            assert_int_equal(pcow_pread(c, 0, got, 16 * CS, NULL),
                             (int64_t)(16 * CS));
            assert_memory_equal(got, final, 16 * CS);
        }
        close_image(c);
        if (check_clean(copy)) {
            fprintf(stderr, "prefix %zu/%zu not clean after recovery\n", p,
                    s.n);
            fail();
        }
    }
    for (p = 0; p < s.n; p++) {
        free(s.r[p].data);
    }
    free(s.r);
    free(final);
    free(got);
}

static void test_crash_prefixes(void **state)
{
    run_crash_prefixes(workload, false);
}

static void test_crash_prefixes_base(void **state)
{
    run_crash_prefixes(workload_base, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_clean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_entries, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_snapshots, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_leaks_and_repair, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_crash_prefixes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_crash_prefixes_base, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
