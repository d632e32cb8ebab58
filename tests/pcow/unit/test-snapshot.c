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

/* A VM state of @len bytes: a pattern seeded with @seed */
static uint8_t *vm_bytes(uint64_t len, uint64_t seed)
{
    uint8_t *b = malloc(len);

    assert_non_null(b);
    fill_pattern(b, len, seed);
    return b;
}

static void snap_vm(pcow_image *img, const char *name, const uint8_t *data,
                    uint64_t len, uint64_t clock)
{
    pcow_vm_state vm = { .data = data, .size = len, .vm_clock_nsec = clock };
    pcow_error err = { 0 };
    int ret = pcow_snapshot_create_vm(img, name, &vm, NULL, &err);

    if (ret < 0) {
        fprintf(stderr, "snapshot create with VM state: %s\n", err.msg);
    }
    assert_int_equal(ret, 0);
}

static void expect_vm(pcow_image *img, const char *name, const uint8_t *data,
                      uint64_t len)
{
    uint8_t *got = malloc(len);
    pcow_error err = { 0 };

    assert_non_null(got);
    assert_int_equal(pcow_snapshot_read_vm_state(img, name, 0, got, len,
                                                 &err), 0);
    assert_memory_equal(got, data, len);
    free(got);
}

#define REPAIR_ALL (PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS)

static uint64_t check_result(const char *path, unsigned repair,
                             pcow_check_result *r)
{
    pcow_error err = { 0 };

    assert_int_equal(pcow_check(path, repair, false, r, &err), 0);
    return r->corruptions;
}

/*
 * savevm without a disk: the VM state is stored with the snapshot, read
 * back whole or in part, kept by a revert, freed by the delete; the
 * feature bit is set exactly while a snapshot has VM state.
 */
static void test_vm_state(void **state)
{
    const uint64_t len = 200 * KiB + 7, clock = 3723004000000ull;
    uint8_t *vm = vm_bytes(len, 1), part[100];
    pcow_error err = { 0 };
    pcow_snapshot_info *l, one;
    pcow_check_result r;
    pcow_info info;
    pcow_image *img;
    int n;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 2 * 65536, 0x01);
    snap(img, "plain");
    pcow_get_info(img, &info);
    assert_int_equal(info.incompatible_features, 0);
    snap_vm(img, "vm", vm, len, clock);
    write_bytes(img, 0, 65536, 0x02);
    pcow_get_info(img, &info);
    assert_int_equal(info.incompatible_features, 2);
    assert_int_equal(info.vm_state_clusters, 4);    /* 200 KiB + 7 */
    n = pcow_snapshot_list(img, &l, &err);
    assert_int_equal(n, 2);
    assert_int_equal(l[0].vm_state_size, 0);
    assert_int_equal(l[0].vm_clock_nsec, 0);
    assert_int_equal(l[1].vm_state_size, len);
    assert_int_equal(l[1].vm_clock_nsec, clock);
    free(l);
    assert_int_equal(pcow_snapshot_lookup(img, "vm", false, 0, &one, &err),
                     0);
    assert_int_equal(one.vm_state_size, len);
    expect_vm(img, "vm", vm, len);
    assert_int_equal(pcow_snapshot_read_vm_state(img, "vm", len - 100, part,
                                                 100, &err), 0);
    assert_memory_equal(part, vm + len - 100, 100);
    assert_int_equal(pcow_snapshot_read_vm_state(img, "vm", len - 99, part,
                                                 100, &err), -EINVAL);
    assert_true(contains(err.msg, "past the end"));
    assert_int_equal(pcow_snapshot_read_vm_state(img, "plain", 0, part, 1,
                                                 &err), -ENODATA);
    assert_true(contains(err.msg, "no VM state"));
    assert_int_equal(pcow_snapshot_read_vm_state(img, "none", 0, part, 1,
                                                 &err), -ENOENT);
    close_image(img);
    assert_int_equal(check_result(path, 0, &r), 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.vm_state_clusters, 4);

    /* Kept across close, and by a revert to it or to another snapshot */
    img = open_image(path, PCOW_OPEN_RDWR);
    expect_vm(img, "vm", vm, len);
    revert(img, "vm");
    expect_bytes(img, 0, 2 * 65536, 0x01);
    revert(img, "plain");
    expect_vm(img, "vm", vm, len);
    close_image(img);
    assert_int_equal(check_clean(path), 0);

    /* The delete gives its clusters back and clears the feature bit */
    img = open_image(path, PCOW_OPEN_RDWR);
    del(img, "vm");
    pcow_get_info(img, &info);
    assert_int_equal(info.incompatible_features, 0);
    assert_int_equal(info.vm_state_clusters, 0);
    assert_int_equal(info.allocated_clusters, 2);
    close_image(img);
    assert_int_equal(check_result(path, 0, &r), 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.vm_state_clusters, 0);
    free(vm);
}

/* Bad VM state requests change nothing */
static void test_vm_state_refused(void **state)
{
    uint8_t b[16] = { 1 };
    pcow_vm_state none = { .data = b, .size = 0 };
    pcow_vm_state huge = { .data = b, .size = PCOW_MAX_VM_STATE + 1 };
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_info info;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    snap_vm(img, "s", b, sizeof(b), 1);
    assert_int_equal(pcow_snapshot_create_vm(img, "a", &none, NULL, &err),
                     -EINVAL);
    assert_int_equal(pcow_snapshot_create_vm(img, "a", &huge, NULL, &err),
                     -EINVAL);
    assert_int_equal(pcow_snapshot_create_vm(img, "s", &none, NULL, &err),
                     -EINVAL);
    assert_int_equal(pcow_snapshot_create_vm(img, "x\n", &huge, NULL, &err),
                     -EINVAL);
    pcow_get_info(img, &info);
    assert_int_equal(info.nb_snapshots, 1);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/* The current header slot (higher generation) into @slot; its offset */
static uint64_t current_slot(const char *file, uint8_t *slot)
{
    uint8_t other[PCOW_SLOT_SIZE];

    peek(file, PCOW_SLOT_A, slot, PCOW_SLOT_SIZE);
    peek(file, PCOW_SLOT_B, other, sizeof(other));
    if (pcow_ld32(other) == PCOW_MAGIC &&
        pcow_ld64(other + PCOW_H_GENERATION) >
        pcow_ld64(slot + PCOW_H_GENERATION)) {
        memcpy(slot, other, sizeof(other));
        return PCOW_SLOT_B;
    }
    return PCOW_SLOT_A;
}

/* The u64 at @rec_off of the snapshot table */
static uint64_t peek_snap_table(const char *file, uint64_t rec_off)
{
    uint8_t slot[PCOW_SLOT_SIZE];

    current_slot(file, slot);
    return peek64(file, pcow_ld64(slot + PCOW_H_SNAP_OFFSET) + rec_off);
}

/*
 * Store @val at @rec_off of the snapshot table, fixing both checksums: a
 * crafted corruption that only the walk can find.
 */
static void patch_snap_table(const char *file, uint64_t rec_off,
                             uint64_t val)
{
    uint8_t slot[PCOW_SLOT_SIZE], *t;
    uint64_t cur = current_slot(file, slot), so;
    uint32_t ss, hl;

    so = pcow_ld64(slot + PCOW_H_SNAP_OFFSET);
    ss = pcow_ld32(slot + PCOW_H_SNAP_SIZE);
    t = malloc(ss);
    assert_non_null(t);
    peek(file, so, t, ss);
    pcow_st64(t + rec_off, val);
    poke(file, so, t, ss);
    pcow_st32(slot + PCOW_H_SNAP_CRC, pcow_crc32c(0, t, ss));
    hl = pcow_ld32(slot + PCOW_H_LENGTH);
    pcow_st32(slot + PCOW_H_CRC, 0);
    pcow_st32(slot + PCOW_H_CRC, pcow_crc32c(0, slot, hl));
    poke(file, cur, slot, sizeof(slot));
    free(t);
}

/*
 * A VM state over a cluster in use is a corruption that open refuses;
 * check -r all drops the VM state and keeps the snapshot's data.  A VM
 * state past the file is found too.
 */
static void test_vm_state_corrupt(void **state)
{
    uint8_t *vm = vm_bytes(100 * KiB, 2);
    /* Record 0, name "s": the extension follows the 8-byte padded name */
    const uint64_t x = PCOW_SNAP_FIXED + 8;
    pcow_check_result r;
    pcow_image *img;
    pcow_info info;
    char msg[512];
    uint64_t l1;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 65536, 0x05);
    snap_vm(img, "s", vm, 100 * KiB, 9);
    pcow_get_info(img, &info);
    close_image(img);
    assert_int_equal(check_clean(path), 0);

    /* Over the snapshot's own L1 table */
    l1 = peek_snap_table(path, PCOW_S_L1_OFFSET);
    patch_snap_table(path, x + PCOW_SX_VM_STATE_OFFSET, l1);
    assert_true(open_fails(path, PCOW_OPEN_RDWR, msg, sizeof(msg)) < 0);
    assert_true(contains(msg, "VM state"));
    assert_true(contains(msg, "in use"));
    assert_true(check_result(path, 0, &r) > 0);
    assert_true(contains(r.first_problem, "VM state"));
    assert_int_equal(check_result(path, REPAIR_ALL, &r), 0);
    assert_true(r.corruptions_fixed > 0);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, PCOW_OPEN_RDWR);
    pcow_get_info(img, &info);
    assert_int_equal(info.nb_snapshots, 1);
    assert_int_equal(info.incompatible_features, 0);    /* none left */
    revert(img, "s");
    expect_bytes(img, 0, 65536, 0x05);
    /* Past the end of the file */
    del(img, "s");
    snap_vm(img, "s", vm, 100 * KiB, 9);
    close_image(img);
    patch_snap_table(path, x + PCOW_SX_VM_STATE_OFFSET, 1ull << 40);
    assert_true(open_fails(path, 0, msg, sizeof(msg)) < 0);
    assert_true(contains(msg, "outside the image"));
    assert_int_equal(check_result(path, REPAIR_ALL, &r), 0);
    assert_int_equal(check_clean(path), 0);
    /* An extension without the feature bit: refused by the table parser */
    img = open_image(path, PCOW_OPEN_RDWR);
    del(img, "s");
    snap_vm(img, "s", vm, 100 * KiB, 9);
    close_image(img);
    patch_snap_table(path, x + PCOW_SX_VM_STATE_SIZE, 0);
    assert_true(open_fails(path, 0, msg, sizeof(msg)) < 0);
    assert_true(contains(msg, "invalid VM state"));
    free(vm);
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
        cmocka_unit_test_setup_teardown(test_vm_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vm_state_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_vm_state_corrupt, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
