/*
 * libpcow unit tests: allocation, reserve ring, expansion, COW runtime ops,
 * concurrency, the hot path and open of a large image (their timings are
 * bench-monitor's, tests/pcow/bench/)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <pthread.h>

#include "unit-common.h"

static TestDir td;
static char path[512];

static int setup(void **state)
{
    td_init(&td, NULL);
    td_path(&td, "a.pcow", path, sizeof(path));
    return 0;
}

static int setup_shm(void **state)
{
    td_init(&td, "/dev/shm");
    td_path(&td, "a.pcow", path, sizeof(path));
    return 0;
}

static int teardown(void **state)
{
    char cmd[400];

    /* test_enospc's mount, if it failed before unmounting */
    snprintf(cmd, sizeof(cmd), "umount '%s/mnt' 2>/dev/null", td.dir);
    if (system(cmd)) {
        /* not mounted: the usual case */
    }
    td_cleanup(&td);
    return 0;
}

typedef struct Racer {
    pcow_image *img;
    pthread_barrier_t *bar;
    uint64_t vcluster;
    int ret;
    uint64_t off;
} Racer;

static void *race_expand(void *opaque)
{
    Racer *r = opaque;

    pthread_barrier_wait(r->bar);
    r->ret = pcow_expand_cluster(r->img, r->vcluster, &r->off);
    return NULL;
}

static void run_racers(pcow_image *img, Racer *r, int n)
{
    pthread_t th[64];
    pthread_barrier_t bar;
    int i;

    pthread_barrier_init(&bar, NULL, n);
    for (i = 0; i < n; i++) {
        r[i].img = img;
        r[i].bar = &bar;
        assert_int_equal(pthread_create(&th[i], NULL, race_expand, &r[i]),
                         0);
    }
    for (i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&bar);
}

static void test_concurrent_expand(void **state)
{
    Racer r[16];
    pcow_image *img;
    pcow_info info;
    int i, won = 0, round;

    mk_image(path, 4 * GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    for (round = 0; round < 2; round++) {
        /* Round 0 with an empty reserve (synchronous), round 1 with one */
        if (round == 1) {
            assert_true(pcow_reserve_clusters(img, 8, NULL) >= 8);
        }
        memset(r, 0, sizeof(r));
        for (i = 0; i < 16; i++) {
            r[i].vcluster = 100 + round;
        }
        run_racers(img, r, 16);
        won = 0;
        for (i = 0; i < 16; i++) {
            if (r[i].ret == 0) {
                won++;
            } else {
                assert_int_equal(r[i].ret, -EEXIST);
            }
            assert_int_equal(r[i].off, r[0].off);
        }
        assert_int_equal(won, 1);
    }
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 2);

    /* 16 threads, 16 different clusters, 4 of them sharing an L2 range */
    memset(r, 0, sizeof(r));
    for (i = 0; i < 16; i++) {
        r[i].vcluster = i < 4 ? 5000 + i : i * 2048 + 7;
    }
    run_racers(img, r, 16);
    for (i = 0; i < 16; i++) {
        int j;

        assert_int_equal(r[i].ret, 0);
        for (j = 0; j < i; j++) {
            assert_int_not_equal(r[i].off, r[j].off);
        }
    }
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 18);
    for (i = 0; i < 16; i++) {
        pcow_extent ext;

        assert_int_equal(pcow_get_extent(img, r[i].vcluster * 65536, 65536,
                                         &ext), 0);
        assert_int_equal(ext.kind, PCOW_EXTENT_DATA);
        assert_true(ext.writable);
        assert_int_equal(ext.file_offset, r[i].off);
    }
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 18);
    close_image(img);
}

typedef struct CowRacer {
    pcow_image *img;
    pthread_barrier_t *bar;
    uint64_t offset;
    bool whole;
    int ret;
    pcow_extent ext;
} CowRacer;

static void *race_cow(void *opaque)
{
    CowRacer *r = opaque;

    pthread_barrier_wait(r->bar);
    r->ret = pcow_cow(r->img, r->offset, r->whole, &r->ext);
    return NULL;
}

static void test_concurrent_cow(void **state)
{
    CowRacer r[16];
    pthread_t th[16];
    pthread_barrier_t bar;
    pcow_image *img;
    pcow_info info;
    int i, won = 0;

    mk_image(path, 64 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 0, 4 * 65536, 0x11);
    assert_int_equal(pcow_snapshot_create(img, "s", NULL, NULL), 0);
    /* All 16 threads COW the same unit: one copy */
    pthread_barrier_init(&bar, NULL, 16);
    for (i = 0; i < 16; i++) {
        r[i] = (CowRacer) { .img = img, .bar = &bar, .offset = 65536 + 8192 };
        pthread_create(&th[i], NULL, race_cow, &r[i]);
    }
    for (i = 0; i < 16; i++) {
        pthread_join(th[i], NULL);
        if (r[i].ret == 0) {
            won++;
        } else {
            assert_int_equal(r[i].ret, -EEXIST);
        }
        assert_int_equal(r[i].ext.offset, 65536 + 8192);
        assert_int_equal(r[i].ext.length, 4096);
        assert_true(r[i].ext.writable);
    }
    assert_int_equal(won, 1);
    assert_int_equal(pcow_cow_units_copied(img, 65536), 1);
    /* 16 threads COW 16 different units of cluster 2 */
    for (i = 0; i < 16; i++) {
        r[i] = (CowRacer) { .img = img, .bar = &bar,
                            .offset = 2 * 65536 + i * 4096 };
        pthread_create(&th[i], NULL, race_cow, &r[i]);
    }
    for (i = 0; i < 16; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(r[i].ret, 0);
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(pcow_cow_units_copied(img, 2 * 65536), 16);
    /* All units copied: the entry is a plain writable cluster again */
    {
        pcow_extent ext;

        assert_int_equal(pcow_get_extent(img, 2 * 65536, 65536, &ext), 0);
        assert_true(ext.writable);
        assert_int_equal(ext.length, 65536);
    }
    expect_bytes(img, 0, 4 * 65536, 0x11);
    pcow_get_info(img, &info);
    /* 4 frozen clusters + 2 new homes */
    assert_int_equal(info.allocated_clusters, 6);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

static void test_reserve_and_reuse(void **state)
{
    pcow_image *img;
    uint64_t off, first, frontier0;
    pcow_info info;
    uint32_t n;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    pcow_get_info(img, &info);
    frontier0 = info.frontier;
    n = pcow_reserve_clusters(img, 10, NULL);
    assert_int_equal(n, 10);
    assert_int_equal(pcow_reserve_count(img), 10);
    pcow_get_info(img, &info);
    assert_int_equal(info.frontier, frontier0 + 10 * 65536);
    /* The hot line holds the new frontier durably */
    assert_int_equal(peek64(path, PCOW_HOT_FRONTIER), frontier0 + 10 * 65536);
    assert_int_equal(pcow_expand_cluster(img, 0, &first), 0);
    /* L2 table and data cluster come from the reserve */
    assert_int_equal(pcow_reserve_count(img), 8);
    assert_int_equal(first, frontier0 + 65536);
    assert_int_equal(pcow_expand_cluster(img, 0, &off), -EEXIST);
    assert_int_equal(off, first);
    close_image(img);
    /* Unused reserve is given back at close */
    assert_int_equal(check_clean(path), 0);

    /* Freed clusters are reused lowest first */
    img = open_image(path, PCOW_OPEN_RDWR);
    write_bytes(img, 65536, 65536, 1);
    write_bytes(img, 2 * 65536, 65536, 2);
    write_bytes(img, 3 * 65536, 65536, 3);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 4);
    assert_int_equal(pcow_zero_range(img, 65536, 2 * 65536, NULL), 0);
    expect_bytes(img, 65536, 2 * 65536, 0);
    expect_bytes(img, 3 * 65536, 65536, 3);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, 2);
    assert_int_equal(pcow_expand_cluster(img, 500, &off), 0);
    assert_true(off < info.frontier);
    {
        uint64_t off2;

        assert_int_equal(pcow_expand_cluster(img, 501, &off2), 0);
        assert_int_equal(off2, off + 65536);
    }
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

static void test_runtime_errors(void **state)
{
    pcow_image *img;
    uint64_t off;
    pcow_extent ext;
    pcow_error err = { 0 };

    mk_image(path, 16 * MiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, 0);
    assert_int_equal(pcow_expand_cluster(img, 0, &off), -EROFS);
    assert_int_equal(pcow_cow(img, 0, false, &ext), -EROFS);
    assert_int_equal(pcow_reserve_clusters(img, 4, &err), 0);
    assert_true(err.code < 0);
    close_image(img);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_expand_cluster(img, 256, &off), -EINVAL);
    assert_int_equal(pcow_cow(img, 16 * MiB, false, &ext), -EINVAL);
    assert_int_equal(pcow_get_extent(img, 16 * MiB, 4096, &ext), -EINVAL);
    /* COW of a hole without a base copies zeros; then -EEXIST */
    assert_int_equal(pcow_cow(img, 4096, false, &ext), 0);
    assert_int_equal(ext.length, 4096);
    assert_int_equal(pcow_cow(img, 4096, false, &ext), -EEXIST);
    expect_bytes(img, 0, 65536, 0);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/* The hot path: expansion takes its cluster from the reserve */
static void test_expand_from_reserve(void **state)
{
    pcow_image *img;
    uint64_t off;
    uint32_t reserved;
    int i, n = 200;

    mk_image(path, 64 * GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    /* Pre-create the L2 table, fill the reserve */
    assert_int_equal(pcow_expand_cluster(img, 0, &off), 0);
    assert_true(pcow_reserve_clusters(img, 64, NULL) >= 64);
    while (pcow_reserve_count(img) < (uint32_t)n) {
        uint32_t before = pcow_reserve_count(img);

        assert_true(pcow_reserve_clusters(img, 64, NULL) > before);
    }
    reserved = pcow_reserve_count(img);
    for (i = 1; i <= n; i++) {
        assert_int_equal(pcow_expand_cluster(img, i, &off), 0);
    }
    assert_int_equal(pcow_reserve_count(img), reserved - n);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/*
 * Open of an image with 1M allocated clusters: tables are crafted with
 * pwrite (64 GiB of 64K clusters, sparse), then opened read-only and
 * read-write.
 */
static void test_open_1m_clusters(void **state)
{
    const uint64_t cs = 65536, nclusters = 1ull << 20;
    const uint64_t l2e = cs / 32, nl2 = nclusters / l2e;
    uint64_t l1_off = cs, l1_bytes, meta_start, data_start, frontier;
    uint64_t *l1, *l2;
    pcow_image *img;
    pcow_info info;
    uint64_t i, j;
    int fd;

    mk_image(path, nclusters * cs, cs, NULL, PCOW_BACKING_NONE);
    l1_bytes = pcow_round_up(pcow_l1_size_for(nclusters * cs, 16) * 8, cs);
    meta_start = l1_off + l1_bytes;
    data_start = meta_start + nl2 * cs;
    frontier = data_start + nclusters * cs;
    fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    l1 = calloc(nl2, 8);
    l2 = calloc(l2e * 4, 8);
    for (i = 0; i < nl2; i++) {
        l1[i] = meta_start + i * cs;
        for (j = 0; j < l2e; j++) {
            l2[j * 4] = (data_start + (i * l2e + j) * cs) | PCOW_F_PRESENT |
                        PCOW_F_WRITABLE;
        }
        assert_int_equal(pwrite(fd, l2, cs, meta_start + i * cs),
                         (ssize_t)cs);
    }
    assert_int_equal(pwrite(fd, l1, nl2 * 8, l1_off), (ssize_t)(nl2 * 8));
    assert_int_equal(ftruncate(fd, frontier), 0);
    close(fd);
    poke64(path, PCOW_HOT_FRONTIER, frontier);
    free(l1);
    free(l2);

    img = open_image(path, 0);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, nclusters);
    close_image(img);
    img = open_image(path, PCOW_OPEN_RDWR);
    pcow_get_info(img, &info);
    assert_int_equal(info.active_clusters, nclusters);
    assert_int_equal(info.metadata_clusters, nl2 + l1_bytes / cs);
    close_image(img);
}

/* A full disk: expansion fails with -ENOSPC and changes nothing */
static void test_enospc(void **state)
{
    char mnt[400], cmd[700];
    pcow_image *img;
    pcow_info before, after;
    uint64_t off, v;
    int ret = 0;

    td_path(&td, "mnt", mnt, sizeof(mnt));
    assert_int_equal(mkdir(mnt, 0755), 0);
    snprintf(cmd, sizeof(cmd), "mount -t tmpfs -o size=1M tmpfs '%s' "
             "2>/dev/null", mnt);
    if (geteuid() != 0 || system(cmd) != 0) {
        /* cmocka's skip still exits 0: under CI, where root is given, fail */
        const char *ci = getenv("CI");

        if (ci && (!strcmp(ci, "true") || !strcmp(ci, "1"))) {
            fail_msg("cannot mount a tmpfs (needs root), required under CI");
        }
        skip();
    }
    snprintf(path, sizeof(path), "%s/a.pcow", mnt);
    mk_image(path, 4 * GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    /* Spread over L2 ranges so some expansions also need an L2 table */
    for (v = 0; v < 64; v++) {
        pcow_get_info(img, &before);
        ret = pcow_expand_cluster(img, (v % 2) ? v : v * 2048, &off);
        if (ret < 0) {
            break;
        }
    }
    assert_int_equal(ret, -ENOSPC);
    pcow_get_info(img, &after);
    assert_int_equal(after.active_clusters, before.active_clusters);
    assert_int_equal(after.metadata_clusters, before.metadata_clusters);
    assert_int_equal(pcow_reserve_clusters(img, 4, NULL), 0);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    snprintf(cmd, sizeof(cmd), "umount '%s'", mnt);
    assert_int_equal(system(cmd), 0);
}

/* Persist operations an image reports (its hook) */
typedef struct OpCount {
    uint64_t writes, syncs, barriers;
    uint64_t f0, f1;        /* a SYNC covering [f0, f1) counts in covered */
    uint64_t covered;
} OpCount;

static void count_ops(void *opaque, pcow_persist_op op, uint64_t off,
                      const void *data, uint64_t len)
{
    OpCount *c = opaque;

    if (op == PCOW_OP_WRITE) {
        c->writes++;
    } else if (op == PCOW_OP_BARRIER) {
        c->barriers++;
    } else if (op == PCOW_OP_SYNC) {
        c->syncs++;
        c->covered += off <= c->f0 && off + len >= c->f1;
    }
}

static pcow_image *open_counted(OpCount *c)
{
    pcow_open_opts o = { .flags = PCOW_OPEN_RDWR, .hook = count_ops,
                         .hook_opaque = c };
    pcow_image *img = NULL;

    assert_int_equal(pcow_open(path, &o, &img, NULL), 0);
    return img;
}

/*
 * Deferred commits (an incoming migration): expansions persist nothing one
 * by one, their commits are visible at once, and turning deferral off is
 * one barrier; after it, commits persist each again.
 */
static void test_deferred_commits(void **state)
{
    OpCount c = { 0 };
    pcow_image *img;
    pcow_extent ext;
    uint64_t off;
    int i;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_counted(&c);
    assert_int_equal(pcow_reserve_clusters(img, 64, NULL), 64);
    assert_false(pcow_commits_deferred(img));
    assert_int_equal(pcow_defer_commits(img, true, NULL), 0);
    assert_true(pcow_commits_deferred(img));
    memset(&c, 0, sizeof(c));
    for (i = 0; i < 10; i++) {
        assert_int_equal(pcow_expand_cluster(img, i, &off), 0);
    }
    assert_int_equal(pcow_expand_cluster(img, 16383, &off), 0);
    assert_int_equal(c.syncs, 0);
    assert_int_equal(c.barriers, 0);
    assert_true(c.writes >= 11);
    assert_int_equal(pcow_get_extent(img, 16383 * 65536ull, 65536, &ext), 0);
    assert_int_equal(ext.kind, PCOW_EXTENT_DATA);
    assert_int_equal(pcow_defer_commits(img, false, NULL), 0);
    assert_false(pcow_commits_deferred(img));
    assert_int_equal(c.barriers, 1);
    assert_int_equal(pcow_expand_cluster(img, 20, &off), 0);
    assert_true(c.syncs >= 1);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/* A reserve miss while deferred makes a batch ready with one sync */
static void test_deferred_miss_batch(void **state)
{
    OpCount c = { 0 };
    pcow_image *img;
    uint64_t off;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_counted(&c);
    assert_int_equal(pcow_reserve_count(img), 0);
    assert_int_equal(pcow_defer_commits(img, true, NULL), 0);
    memset(&c, 0, sizeof(c));
    /* L2 table and data cluster: the first miss readies the batch */
    assert_int_equal(pcow_expand_cluster(img, 0, &off), 0);
    assert_int_equal(pcow_reserve_count(img), PCOW_DEFER_BATCH - 2);
    assert_int_equal(pcow_expand_cluster(img, 1, &off), 0);
    assert_int_equal(pcow_reserve_count(img), PCOW_DEFER_BATCH - 3);
    assert_int_equal(c.barriers, 0);
    assert_int_equal(pcow_defer_commits(img, false, NULL), 0);
    close_image(img);
    /* The unused rest of the batch is given back at close */
    assert_int_equal(check_clean(path), 0);
}

/*
 * A reservation of new clusters persists their run (and the frontier),
 * not the whole file: fdatasync would also write back the guest's dirty
 * pages of every other cluster.
 */
static void test_reserve_sync_range(void **state)
{
    OpCount c = { 0 };
    pcow_image *img;
    pcow_info info;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_counted(&c);
    pcow_get_info(img, &info);
    memset(&c, 0, sizeof(c));
    c.f0 = info.frontier;
    c.f1 = info.frontier + 8 * 65536;
    assert_int_equal(pcow_reserve_clusters(img, 8, NULL), 8);
    assert_int_equal(c.barriers, 0);
    assert_int_equal(c.covered, 1);
    assert_int_equal(peek64(path, PCOW_HOT_FRONTIER), c.f1);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

/*
 * Two reservations overlapping: the inner one (made from the outer's
 * hook, while the outer is outside the lock) picks the clusters above and
 * raises the frontier past the outer's run.  The outer must still persist
 * the frontier itself before its clusters reach the ring: with threads the
 * inner's sync could still be under way.
 */
typedef struct Nest {
    pcow_image *img;
    bool armed;
    bool inner_done;
    uint32_t inner_ret;
    uint64_t frontier_syncs;    /* after the inner reservation returned */
} Nest;

static void nest_ops(void *opaque, pcow_persist_op op, uint64_t off,
                     const void *data, uint64_t len)
{
    Nest *n = opaque;

    if (op == PCOW_OP_ALLOCATE && n->armed) {
        n->armed = false;
        n->inner_ret = pcow_reserve_clusters(n->img, 4, NULL);
        n->inner_done = true;
    } else if (op == PCOW_OP_SYNC && n->inner_done &&
               off <= PCOW_HOT_FRONTIER && off + len > PCOW_HOT_FRONTIER) {
        n->frontier_syncs++;
    }
}

static void test_reserve_frontier_each(void **state)
{
    Nest n = { 0 };
    pcow_open_opts o = { .flags = PCOW_OPEN_RDWR, .hook = nest_ops,
                         .hook_opaque = &n };
    pcow_info info;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    assert_int_equal(pcow_open(path, &o, &n.img, NULL), 0);
    pcow_get_info(n.img, &info);
    n.armed = true;
    assert_int_equal(pcow_reserve_clusters(n.img, 4, NULL), 8);
    assert_true(n.inner_done);
    assert_int_equal(n.inner_ret, 4);
    assert_int_equal(n.frontier_syncs, 1);
    assert_int_equal(peek64(path, PCOW_HOT_FRONTIER),
                     info.frontier + 8 * 65536);
    close_image(n.img);
    assert_int_equal(check_clean(path), 0);
}

/*
 * Close @img after a failed barrier: it fails with @code, one line naming
 * the image, and leaves the image in use, so that the next open recovers
 * it and marks it clean at its own close.
 */
static bool closes_dirty(pcow_image *img, int code)
{
    pcow_error err = { 0 };
    pcow_info info;
    bool dirty, recovered;

    assert_int_equal(pcow_close(img, &err), code);
    assert_true(contains(err.msg, path) &&
                contains(err.msg, "not marked clean"));
    assert_int_equal(strchr(err.msg, '\n'), NULL);
    img = open_image(path, 0);
    pcow_get_info(img, &info);
    dirty = info.was_dirty;
    close_image(img);
    img = open_image(path, PCOW_OPEN_RDWR);
    pcow_get_info(img, &info);
    recovered = info.was_dirty;
    close_image(img);
    assert_int_equal(check_clean(path), 0);
    img = open_image(path, 0);
    pcow_get_info(img, &info);
    close_image(img);
    return dirty && recovered && !info.was_dirty;
}

/*
 * The barrier that ends deferral failed (fdatasync on a pipe: EINVAL):
 * every later end of deferral fails with that error, though fdatasync
 * works again (after a write-back error a retry returns 0 with the pages
 * gone); deferral cannot be turned on again either.
 */
static void test_deferred_sticky_error(void **state)
{
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t off;
    int saved, p[2], i;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_reserve_clusters(img, 8, NULL), 8);
    assert_int_equal(pcow_defer_commits(img, true, NULL), 0);
    for (i = 0; i < 4; i++) {
        assert_int_equal(pcow_expand_cluster(img, i, &off), 0);
    }
    saved = dup(img->fd);
    assert_true(saved >= 0);
    assert_int_equal(pipe(p), 0);
    assert_true(dup2(p[0], img->fd) >= 0);
    assert_int_equal(pcow_defer_commits(img, false, &err), -EINVAL);
    assert_true(contains(err.msg, path));
    assert_true(dup2(saved, img->fd) >= 0);
    close(saved);
    close(p[0]);
    close(p[1]);
    assert_int_equal(pcow_flush(img, NULL), 0);
    memset(&err, 0, sizeof(err));
    assert_int_equal(pcow_defer_commits(img, false, &err), -EINVAL);
    assert_true(contains(err.msg, path) && contains(err.msg, "durable"));
    assert_int_equal(pcow_defer_commits(img, true, NULL), -EINVAL);
    assert_false(pcow_commits_deferred(img));
    assert_true(closes_dirty(img, -EINVAL));
}

/*
 * A failed flush (fdatasync on a pipe) followed by one that works: close
 * still leaves the image in use, as the pages the first lost are gone.
 */
static void test_failed_flush_not_clean(void **state)
{
    OpCount c = { 0 };
    pcow_error err = { 0 };
    uint8_t buf[4096];
    pcow_image *img;
    int saved, p[2];

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    fill_pattern(buf, sizeof(buf), 7);
    assert_int_equal(pcow_pwrite(img, 0, buf, sizeof(buf), NULL),
                     sizeof(buf));
    saved = dup(img->fd);
    assert_true(saved >= 0);
    assert_int_equal(pipe(p), 0);
    assert_true(dup2(p[0], img->fd) >= 0);
    assert_int_equal(pcow_flush(img, &err), -EINVAL);
    assert_true(dup2(saved, img->fd) >= 0);
    close(saved);
    close(p[0]);
    close(p[1]);
    assert_int_equal(pcow_flush(img, NULL), 0);
    /* Close still makes durable what it can: its barrier runs */
    c.barriers = 0;
    img->hook = count_ops;
    img->hook_opaque = &c;
    assert_true(closes_dirty(img, -EINVAL));
    assert_true(c.barriers >= 1);
}

/*
 * On PM (DAX + MAP_SYNC) nothing is deferred: the closing barrier would
 * not flush the CPU caches.  No DAX here: the method is set by hand.
 */
static void test_deferred_not_on_pmem(void **state)
{
    pcow_image *img;
    PcowSync was;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    was = img->sync;
    img->sync = PCOW_SYNC_PMEM;
    assert_int_equal(pcow_defer_commits(img, true, NULL), 0);
    assert_false(pcow_commits_deferred(img));
    img->sync = was;
    assert_int_equal(pcow_defer_commits(img, true, NULL), 0);
    assert_true(pcow_commits_deferred(img));
    assert_int_equal(pcow_defer_commits(img, false, NULL), 0);
    close_image(img);
}

/*
 * A deferred miss's batch never overfills the ring: in-flight
 * reservations (faked here) land in it later, an untake needs a slot.
 */
static void test_deferred_batch_fits_ring(void **state)
{
    pcow_image *img;
    uint64_t off;

    mk_image(path, GiB, 0, NULL, PCOW_BACKING_NONE);
    img = open_image(path, PCOW_OPEN_RDWR);
    assert_int_equal(pcow_defer_commits(img, true, NULL), 0);
    img->inflight_n = PCOW_RING_CAP - 4;
    /* L2 table and data cluster: the first miss readies what fits */
    assert_int_equal(pcow_expand_cluster(img, 0, &off), 0);
    assert_true(pcow_reserve_count(img) + img->inflight_n < PCOW_RING_CAP);
    img->inflight_n = 0;
    assert_int_equal(pcow_defer_commits(img, false, NULL), 0);
    close_image(img);
    assert_int_equal(check_clean(path), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_concurrent_expand, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_cow, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reserve_and_reuse, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_runtime_errors, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_enospc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_commits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_miss_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reserve_sync_range, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reserve_frontier_each, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_sticky_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_flush_not_clean, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_not_on_pmem, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_batch_fits_ring, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_expand_from_reserve, setup_shm,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_1m_clusters, setup_shm,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
