/*
 * Unit tests: clones, overlays of a template's snapshot (pcow_clone, the
 * header's backing_snapshot_id, HAS_CLONES, the template's lock)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "unit-common.h"

static TestDir td;
static char tpath[300], cpath[300], c2path[300];

static int setup(void **state)
{
    (void)state;
    td_init(&td, NULL);
    td_path(&td, "t.pcow", tpath, sizeof(tpath));
    td_path(&td, "c.pcow", cpath, sizeof(cpath));
    td_path(&td, "c2.pcow", c2path, sizeof(c2path));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    td_cleanup(&td);
    return 0;
}

static void revert(pcow_image *img, const char *name)
{
    pcow_error err = { 0 };

    assert_int_equal(pcow_snapshot_revert(img, name, &err), 0);
}

static void snap(pcow_image *img, const char *name)
{
    pcow_error err = { 0 };

    assert_int_equal(pcow_snapshot_create(img, name, NULL, &err), 0);
}

/*
 * A template: 0xaa over [0, 256K) in snapshot s1 (and, with @s2, 0x55 at
 * [0, 64K) in s2), then 0xbb at [0, 64K) in its active layer.
 */
static void mk_template(bool s2)
{
    pcow_image *t;

    mk_image(tpath, 1 * MiB, 64 * KiB, NULL, PCOW_BACKING_NONE);
    t = open_image(tpath, PCOW_OPEN_RDWR);
    write_bytes(t, 0, 256 * KiB, 0xaa);
    snap(t, "s1");
    if (s2) {
        write_bytes(t, 0, 64 * KiB, 0x55);
        snap(t, "s2");
    }
    write_bytes(t, 0, 64 * KiB, 0xbb);
    close_image(t);
}

static int do_clone(const char *snapshot, const char *path, pcow_error *err)
{
    return pcow_clone(tpath, snapshot, path, NULL, NULL, err);
}

static void clone_ok(const char *snapshot, const char *path)
{
    pcow_error err = { 0 };
    int ret = do_clone(snapshot, path, &err);

    if (ret < 0) {
        fprintf(stderr, "clone: %s\n", err.msg);
    }
    assert_int_equal(ret, 0);
}

/* The clone shows the snapshot, not the template's active layer */
static void test_clone_shows_snapshot(void **state)
{
    pcow_snapshot_info *sn = NULL;
    pcow_error err = { 0 };
    pcow_image *c, *t;
    pcow_info info;
    uint64_t id = 0;

    (void)state;
    mk_template(true);
    assert_int_equal(pcow_clone(tpath, "s1", cpath, NULL, &id, &err), 0);
    assert_int_equal(id, 1);
    c = open_image(cpath, PCOW_OPEN_RDWR);
    pcow_get_info(c, &info);
    assert_int_equal(info.virtual_size, 1 * MiB);
    assert_int_equal(info.backing_snapshot_id, 1);
    assert_string_equal(info.backing_snapshot_name, "s1");
    assert_string_equal(info.backing_file, "t.pcow");
    assert_true(info.incompatible_features & PCOW_INCOMPAT_BACKING_SNAPSHOT);
    expect_bytes(c, 0, 256 * KiB, 0xaa);
    expect_bytes(c, 256 * KiB, 64 * KiB, 0);
    /* Its writes are its own */
    write_bytes(c, 64 * KiB, 4 * KiB, 0xcc);
    close_image(c);

    /* Clone of s2 by id: sees s2 */
    clone_ok("2", c2path);
    c = open_image(c2path, 0);
    expect_bytes(c, 0, 64 * KiB, 0x55);
    expect_bytes(c, 64 * KiB, 4 * KiB, 0xaa);
    close_image(c);

    t = open_image(tpath, 0);
    expect_bytes(t, 0, 64 * KiB, 0xbb);
    expect_bytes(t, 64 * KiB, 4 * KiB, 0xaa);
    assert_int_equal(pcow_snapshot_list(t, &sn, &err), 2);
    assert_true(sn[0].has_clones);
    assert_true(sn[1].has_clones);
    free(sn);
    close_image(t);

    /* The header field and feature bit, at the spec's offsets */
    assert_int_equal(peek64(cpath, PCOW_H_BACKING_SNAP), 1);
    assert_int_equal(peek64(cpath, PCOW_H_INCOMPAT) &
                     PCOW_INCOMPAT_BACKING_SNAPSHOT,
                     PCOW_INCOMPAT_BACKING_SNAPSHOT);
}

/*
 * Writing and reverting the template while no clone runs leaves a clone's
 * view as it was: the snapshot's clusters are frozen, COW moves writes.
 */
static void test_template_changes_leave_clone(void **state)
{
    pcow_image *c, *t;

    (void)state;
    mk_template(false);
    clone_ok("s1", cpath);
    t = open_image(tpath, PCOW_OPEN_RDWR);
    write_bytes(t, 0, 256 * KiB, 0x11);
    write_bytes(t, 512 * KiB, 64 * KiB, 0x12);
    close_image(t);
    c = open_image(cpath, 0);
    expect_bytes(c, 0, 256 * KiB, 0xaa);
    expect_bytes(c, 512 * KiB, 64 * KiB, 0);
    close_image(c);

    t = open_image(tpath, PCOW_OPEN_RDWR);
    revert(t, "s1");
    write_bytes(t, 4 * KiB, 4 * KiB, 0x13);
    close_image(t);
    c = open_image(cpath, 0);
    expect_bytes(c, 0, 256 * KiB, 0xaa);
    close_image(c);
}

/* Extents of what the clone has not written point into the template */
static void test_extents_in_template(void **state)
{
    struct stat st_t, st_e;
    pcow_extent e;
    pcow_image *c;

    (void)state;
    mk_template(false);
    clone_ok("s1", cpath);
    c = open_image(cpath, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_get_extent(c, 128 * KiB, 64 * KiB, &e), 0);
    assert_int_equal(e.kind, PCOW_EXTENT_DATA);
    assert_false(e.writable);
    assert_int_equal(e.depth, 1);
    assert_int_equal(fstat(e.fd, &st_e), 0);
    assert_int_equal(stat(tpath, &st_t), 0);
    assert_true(st_e.st_ino == st_t.st_ino && st_e.st_dev == st_t.st_dev);
    close_image(c);
}

/* An open clone holds the template's read lock: no writer may open it */
static void test_open_clone_locks_template(void **state)
{
    pcow_image *c;
    char msg[512];

    (void)state;
    mk_template(true);
    clone_ok("s1", cpath);
    c = open_image(cpath, 0);
    assert_int_equal(open_fails(tpath, PCOW_OPEN_RDWR, msg, sizeof(msg)),
                     -EBUSY);
    assert_true(contains(msg, "t.pcow: image is in use by another process"));
    /* Another clone of the marked snapshot needs no write: allowed */
    clone_ok("s1", c2path);
    unlink(c2path);
    close_image(c);
    c = open_image(tpath, PCOW_OPEN_RDWR);
    close_image(c);
}

/*
 * pcow_lock_held_elsewhere: an open clone holds the template's lock; the
 * asking open's own lock and a NO_LOCK open do not count
 */
static void test_lock_held_elsewhere(void **state)
{
    pcow_image *t, *nl, *c;

    (void)state;
    mk_template(true);
    clone_ok("s1", cpath);
    t = open_image(tpath, 0);
    assert_int_equal(pcow_lock_held_elsewhere(t), 0);
    nl = open_image(tpath, PCOW_OPEN_NO_LOCK);
    assert_int_equal(pcow_lock_held_elsewhere(t), 0);
    assert_int_equal(pcow_lock_held_elsewhere(nl), 1);
    close_image(t);
    assert_int_equal(pcow_lock_held_elsewhere(nl), 0);
    c = open_image(cpath, 0);
    assert_int_equal(pcow_lock_held_elsewhere(nl), 1);
    assert_int_equal(pcow_lock_held_elsewhere(c), 0);
    close_image(c);
    assert_int_equal(pcow_lock_held_elsewhere(nl), 0);
    close_image(nl);
}

static void test_refusals(void **state)
{
    pcow_snapshot_info *sn = NULL;
    pcow_error err = { 0 };
    pcow_image *t, *c;
    struct stat st;

    (void)state;
    mk_template(true);
    /* No such snapshot: nothing made, nothing marked */
    assert_int_equal(do_clone("nope", cpath, &err), -ENOENT);
    assert_true(contains(err.msg, "snapshot 'nope' not found"));
    assert_int_equal(stat(cpath, &st), -1);
    /* The template in use by a writer */
    t = open_image(tpath, PCOW_OPEN_RDWR);
    assert_int_equal(do_clone("s1", cpath, &err), -EBUSY);
    assert_int_equal(err.kind, PCOW_ERR_IN_USE);
    assert_int_equal(stat(cpath, &st), -1);
    close_image(t);
    /* An unmarked snapshot while a clone holds the template */
    clone_ok("s1", cpath);
    c = open_image(cpath, 0);
    assert_int_equal(do_clone("s2", c2path, &err), -EBUSY);
    assert_int_equal(stat(c2path, &st), -1);
    close_image(c);
    /* NEW exists: left as it was */
    assert_int_equal(do_clone("s2", cpath, &err), -EEXIST);
    c = open_image(cpath, 0);
    expect_bytes(c, 0, 4 * KiB, 0xaa);
    close_image(c);
    t = open_image(tpath, 0);
    assert_int_equal(pcow_snapshot_list(t, &sn, &err), 2);
    assert_true(sn[0].has_clones);
    assert_false(sn[1].has_clones);
    free(sn);
    close_image(t);
    /* Not a pcow image */
    {
        char raw[300];
        int fd = open(td_path(&td, "raw", raw, sizeof(raw)),
                      O_RDWR | O_CREAT, 0644);

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 1 * MiB), 0);
        close(fd);
        assert_true(pcow_clone(raw, "1", c2path, NULL, NULL, &err) < 0);
        assert_int_equal(stat(c2path, &st), -1);
    }
}

/* A snapshot with clones is not deleted without force; then clones fail */
static void test_delete_refused(void **state)
{
    pcow_error err = { 0 };
    pcow_image *t;
    char msg[512];

    (void)state;
    mk_template(true);
    clone_ok("s1", cpath);
    t = open_image(tpath, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_snapshot_delete(t, "s1", &err), -EBUSY);
    assert_int_equal(err.kind, PCOW_ERR_HAS_CLONES);
    assert_true(contains(err.msg, "t.pcow: snapshot 's1' has clones (made "
                         "by pcow-img clone)"));
    assert_int_equal(pcow_snapshot_delete(t, "s2", &err), 0);
    assert_int_equal(pcow_snapshot_delete_flags(t, "s1",
                                                PCOW_SNAPSHOT_DELETE_FORCE,
                                                &err), 0);
    close_image(t);
    assert_int_equal(open_fails(cpath, 0, msg, sizeof(msg)), -ENOENT);
    assert_true(contains(msg, "c.pcow: base "));
    assert_true(contains(msg, "t.pcow has no snapshot with id 1"));
    assert_null(strchr(msg, '\n'));
    /* Without its chain it opens, and says which id it wants */
    t = open_image(cpath, PCOW_OPEN_NO_BACKING);
    assert_int_equal(pcow_backing_snapshot_name(t, msg, sizeof(msg), &err),
                     -ENOENT);
    close_image(t);
}

/* The field and its feature bit go together, with a pcow base only */
static void test_header_rules(void **state)
{
    uint64_t incompat;
    char msg[512];

    (void)state;
    mk_template(false);
    clone_ok("s1", cpath);
    incompat = peek64(cpath, PCOW_H_INCOMPAT);
    /* Bit cleared, id kept: an old reader's view is refused */
    patch_header64(cpath, PCOW_H_INCOMPAT,
                   incompat & ~PCOW_INCOMPAT_BACKING_SNAPSHOT);
    assert_int_equal(open_fails(cpath, 0, msg, sizeof(msg)), -EINVAL);
    assert_true(contains(msg, "invalid backing snapshot id 1"));
    /* Bit set, id 0 */
    patch_header64(cpath, PCOW_H_INCOMPAT, incompat);
    patch_header64(cpath, PCOW_H_BACKING_SNAP, 0);
    assert_int_equal(open_fails(cpath, 0, msg, sizeof(msg)), -EINVAL);
    /* Both cleared: an overlay of the active layer again (0xbb) */
    patch_header64(cpath, PCOW_H_INCOMPAT,
                   incompat & ~PCOW_INCOMPAT_BACKING_SNAPSHOT);
    {
        pcow_image *c = open_image(cpath, 0);

        expect_bytes(c, 0, 4 * KiB, 0xbb);
        close_image(c);
    }
}

/* The chain stamp tells a clone from an overlay of the active layer */
static void test_chain_stamp(void **state)
{
    char opath[300];
    pcow_image *c, *o;
    uint64_t a, b;

    (void)state;
    mk_template(true);
    clone_ok("s1", cpath);
    clone_ok("s2", c2path);
    c = open_image(cpath, 0);
    a = pcow_chain_stamp(c);
    close_image(c);
    c = open_image(c2path, 0);
    b = pcow_chain_stamp(c);
    close_image(c);
    assert_true(a != 0 && b != 0 && a != b);
    /* An overlay of the template's active layer: another chain */
    mk_image(td_path(&td, "o.pcow", opath, sizeof(opath)), 1 * MiB,
             64 * KiB, "t.pcow", PCOW_BACKING_PCOW);
    o = open_image(opath, 0);
    assert_true(pcow_chain_stamp(o) != a && pcow_chain_stamp(o) != b);
    close_image(o);
}

/*
 * A template whose snapshot "gold" holds 0xaa over [0, 256K) and @vmlen
 * bytes of VM state (pattern 7, VM clock 1234); its active layer moves on.
 */
static void mk_vm_template(uint64_t vmlen)
{
    uint8_t *vm = malloc(vmlen ? vmlen : 1);
    pcow_vm_state st = { .data = vm, .size = vmlen, .vm_clock_nsec = 1234 };
    pcow_error err = { 0 };
    pcow_image *t;

    assert_non_null(vm);
    fill_pattern(vm, vmlen, 7);
    mk_image(tpath, 1 * MiB, 64 * KiB, NULL, PCOW_BACKING_NONE);
    t = open_image(tpath, PCOW_OPEN_RDWR);
    write_bytes(t, 0, 256 * KiB, 0xaa);
    assert_int_equal(pcow_snapshot_create_vm(t, "gold", vmlen ? &st : NULL,
                                             NULL, &err), 0);
    write_bytes(t, 0, 64 * KiB, 0xbb);
    close_image(t);
    free(vm);
}

/* The origin's record and VM state, read from the open base */
static void test_clone_origin(void **state)
{
    uint8_t want[3000], got[3000];
    pcow_snapshot_info sn;
    pcow_error err = { 0 };
    pcow_image *c;

    (void)state;
    mk_vm_template(sizeof(want));
    fill_pattern(want, sizeof(want), 7);
    clone_ok("gold", cpath);
    c = open_image(cpath, PCOW_OPEN_RDWR);
    snap(c, "own");         /* the clone's own snapshots are not the origin */
    assert_int_equal(pcow_clone_origin(c, &sn, &err), 0);
    assert_string_equal(sn.name, "gold");
    assert_int_equal(sn.id, 1);
    assert_int_equal(sn.virtual_size, 1 * MiB);
    assert_int_equal(sn.vm_state_size, sizeof(want));
    assert_int_equal(sn.vm_clock_nsec, 1234);
    assert_int_equal(pcow_clone_origin_read_vm_state(c, 0, got, sizeof(got),
                                                     &err), 0);
    assert_memory_equal(got, want, sizeof(want));
    assert_int_equal(pcow_clone_origin_read_vm_state(c, 1000, got, 100,
                                                     &err), 0);
    assert_memory_equal(got, want + 1000, 100);
    assert_int_equal(pcow_clone_origin_read_vm_state(c, 2990, got, 100,
                                                     &err), -EINVAL);
    close_image(c);

    /* An origin without VM state (a snapshot taken without QEMU) */
    unlink(cpath);
    unlink(tpath);
    mk_vm_template(0);
    clone_ok("gold", cpath);
    c = open_image(cpath, 0);
    assert_int_equal(pcow_clone_origin(c, &sn, &err), 0);
    assert_int_equal(sn.vm_state_size, 0);
    assert_int_equal(pcow_clone_origin_read_vm_state(c, 0, got, 1, &err),
                     -ENODATA);
    close_image(c);
}

/*
 * pcow_clone_reset: what the clone wrote (also after a resize) is gone,
 * it reads the origin again at the origin's size, its own snapshots stay,
 * and what only the dropped layer held is freed (check: no leaks).
 */
static void test_clone_reset(void **state)
{
    pcow_error err = { 0 };
    pcow_info info;
    pcow_image *c;

    (void)state;
    mk_vm_template(100);
    clone_ok("gold", cpath);
    c = open_image(cpath, PCOW_OPEN_RDWR);
    /* Nothing written yet: the reset changes nothing that shows */
    assert_int_equal(pcow_clone_reset(c, &err), 0);
    expect_bytes(c, 0, 256 * KiB, 0xaa);
    write_bytes(c, 64 * KiB, 8 * KiB, 0xcc);
    snap(c, "own");
    assert_int_equal(pcow_resize(c, 2 * MiB, false, &err), 0);
    write_bytes(c, 0, 4 * KiB, 0xdd);
    write_bytes(c, 1536 * KiB, 64 * KiB, 0xee);
    assert_int_equal(pcow_clone_reset(c, &err), 0);
    pcow_get_info(c, &info);
    assert_int_equal(info.virtual_size, 1 * MiB);
    expect_bytes(c, 0, 256 * KiB, 0xaa);
    expect_bytes(c, 256 * KiB, 768 * KiB, 0);
    /* Writable again after the reset, and its own snapshot kept */
    write_bytes(c, 128 * KiB, 4 * KiB, 0x11);
    expect_bytes(c, 128 * KiB, 4 * KiB, 0x11);
    revert(c, "own");
    expect_bytes(c, 64 * KiB, 8 * KiB, 0xcc);
    expect_bytes(c, 0, 4 * KiB, 0xaa);
    /* Grown past the origin, then reset: the grown part goes */
    assert_int_equal(pcow_resize(c, 2 * MiB, false, &err), 0);
    assert_int_equal(pcow_clone_reset(c, &err), 0);
    expect_bytes(c, 64 * KiB, 8 * KiB, 0xaa);
    close_image(c);
    assert_int_equal(check_clean(cpath), 0);
    c = open_image(cpath, 0);
    pcow_get_info(c, &info);
    assert_int_equal(info.virtual_size, 1 * MiB);
    assert_int_equal(info.backing_limit, 0);
    expect_bytes(c, 0, 256 * KiB, 0xaa);
    close_image(c);
    /* The template is only read */
    c = open_image(tpath, 0);
    expect_bytes(c, 0, 64 * KiB, 0xbb);
    close_image(c);
    assert_int_equal(check_clean(tpath), 0);
}

/* Refused: not a clone, a clone without its base, a read-only clone */
static void test_clone_reset_refused(void **state)
{
    pcow_snapshot_info sn;
    pcow_error err = { 0 };
    pcow_image *c;

    (void)state;
    mk_vm_template(100);
    c = open_image(tpath, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_clone_reset(c, &err), -EINVAL);
    assert_true(contains(err.msg, "not a clone"));
    assert_int_equal(pcow_clone_origin(c, &sn, &err), -EINVAL);
    expect_bytes(c, 0, 64 * KiB, 0xbb);
    close_image(c);
    clone_ok("gold", cpath);
    c = open_image(cpath, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING);
    assert_int_equal(pcow_clone_reset(c, &err), -EINVAL);
    assert_true(contains(err.msg, "base is not open"));
    close_image(c);
    c = open_image(cpath, 0);
    assert_true(pcow_clone_reset(c, &err) < 0);
    assert_true(err.msg[0] != '\0');
    close_image(c);
    assert_int_equal(check_clean(cpath), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_clone_shows_snapshot, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_template_changes_leave_clone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_extents_in_template, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_clone_locks_template,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_held_elsewhere, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_header_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_stamp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clone_origin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clone_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clone_reset_refused, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
