/*
 * Image Monitor tests: test-monitor CASE
 *
 * Each case is registered as its own meson test (suite 'monitor').
 * Exit 0 = pass, 77 = skipped (reason printed), anything else = fail.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include "mon-test.h"

#define MiB (1024 * 1024ull)
#define KiB 1024ull
#define CL (64 * KiB)

static pcow_monitor *open_mon(const char *path, unsigned flags,
                              uint32_t escalate)
{
    pcow_monitor_opts mo = { .flags = flags, .cow_escalate = escalate };
    pcow_monitor *mon;
    pcow_error err = { 0 };

    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    return mon;
}

static void close_mon(pcow_monitor *mon)
{
    pcow_error err = { 0 };

    CHECK_OK(pcow_monitor_close(mon, &err), &err);
}

static void stats(pcow_monitor *mon, pcow_monitor_stats *s)
{
    pcow_monitor_get_stats(mon, s);
}

/* Write @len bytes of pattern @tag at @off through the mapping + shadow. */
static void put(pcow_monitor *mon, uint8_t *shadow, uint64_t off,
                uint64_t len, uint32_t tag)
{
    uint8_t *p = (uint8_t *)pcow_monitor_base(mon) + off;

    fill(shadow + off, off, len, tag);
    memcpy(p, shadow + off, len);
}

static void verify_mapping(pcow_monitor *mon, const uint8_t *shadow)
{
    const uint8_t *p = pcow_monitor_base(mon);
    uint64_t size = pcow_monitor_size(mon);
    uint64_t i;

    if (memcmp(p, shadow, size)) {
        for (i = 0; i < size && p[i] == shadow[i]; i++) {
        }
        fprintf(stderr, "mapping mismatch at 0x%" PRIx64 ": %02x != %02x\n",
                i, p[i], shadow[i]);
        exit(1);
    }
}

/* --- hole reads allocate nothing ---------------------------------------- */
static int t_hole_read(void)
{
    const char *dir = test_dir("hole");
    char path[4200];
    uint64_t size = 256 * MiB;
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_info before, after;
    uint64_t du0, du1, i;
    volatile uint8_t *p;
    uint64_t sum = 0;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    pcow_get_info(pcow_monitor_image(mon), &before);
    du0 = disk_usage(path);
    p = pcow_monitor_base(mon);
    for (i = 0; i < size; i += 512) {
        sum += p[i];
    }
    CHECK_EQ(sum, 0);
    stats(mon, &s);
    printf("hole reads %" PRIu64 " expansions %" PRIu64 " errors %"
           PRIu64 " p50 %" PRIu64 " ns\n", s.hole_read_faults, s.expansions,
           s.errors, pcow_latency_percentile(&s.hole_read_latency, 50));
    CHECK_EQ(s.hole_read_faults, size / CL);
    CHECK_EQ(s.expansions, 0);
    pcow_get_info(pcow_monitor_image(mon), &after);
    CHECK_EQ(after.active_clusters, before.active_clusters);
    CHECK_EQ(after.allocated_clusters, before.allocated_clusters);
    du1 = disk_usage(path);
    CHECK_EQ(du1, du0);
    /* Now a write after the read must expand, not go to anonymous memory. */
    p[5 * CL + 17] = 0x5a;
    stats(mon, &s);
    CHECK_EQ(s.expansions, 1);
    close_mon(mon);
    image_info(path, &after);
    CHECK_EQ(after.active_clusters, 1);
    check_clean(path);
    {
        uint8_t *shadow = calloc(1, size);

        shadow[5 * CL + 17] = 0x5a;
        verify_image(path, shadow, size);
        free(shadow);
    }
    return 0;
}

/* --- expansion, reopen and verify every byte ---------------------------- */
static int t_expand(void)
{
    const char *dir = test_dir("expand");
    char path[4200];
    uint64_t size = 64 * MiB;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_info info;
    int i;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    for (i = 0; i < 100; i++) {
        uint64_t off = ((uint64_t)i * 7919 % (size / CL)) * CL + i * 8;

        put(mon, shadow, off, 1000, i + 1);
    }
    /* Spanning two clusters in one memcpy. */
    put(mon, shadow, 10 * MiB - 100, 300, 1000);
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK(s.expansions >= 100);
    CHECK_EQ(s.errors, 0);
    CHECK(s.expansion_latency.count == s.expansions);
    printf("expansions %" PRIu64 " p50 %" PRIu64 " ns pool hits %" PRIu64
           " misses %" PRIu64 " vmas %" PRIu64 "\n", s.expansions,
           pcow_latency_percentile(&s.expansion_latency, 50), s.pool_hits,
           s.pool_misses, s.vmas);
    close_mon(mon);
    image_info(path, &info);
    CHECK_EQ(info.active_clusters, s.expansions);
    check_clean(path);
    verify_image(path, shadow, size);
    /* Reopen the monitor: the data comes back mapped. */
    mon = open_mon(path, PCOW_MONITOR_READONLY, 0);
    verify_mapping(mon, shadow);
    close_mon(mon);
    free(shadow);
    return 0;
}

/* --- copy-on-write: 4 KiB units, escalation, whole cluster -------------- */
static int t_cow(void)
{
    const char *dir = test_dir("cow");
    char path[4200];
    uint64_t size = 16 * MiB;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    int i;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    for (i = 0; i < 8; i++) {
        put(mon, shadow, (uint64_t)i * CL, CL, 10 + i);
    }
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s1", NULL, &err), &err);
    /* Cluster 0: one 4 KiB unit. */
    put(mon, shadow, 4096 + 100, 50, 100);
    stats(mon, &s);
    CHECK_EQ(s.cow_unit_faults, 1);
    CHECK_EQ(s.cow_cluster_faults, 0);
    verify_mapping(mon, shadow);
    /* Cluster 1: units 0..3 one by one, the 5th write escalates. */
    for (i = 0; i < 4; i++) {
        put(mon, shadow, CL + i * 4096 + 8, 8, 200 + i);
    }
    stats(mon, &s);
    CHECK_EQ(s.cow_unit_faults, 5);
    put(mon, shadow, CL + 9 * 4096, 8, 300);
    stats(mon, &s);
    CHECK_EQ(s.cow_cluster_faults, 1);
    /* The rest of cluster 1 is writable now: no more faults. */
    put(mon, shadow, CL + 12 * 4096, 4096, 301);
    stats(mon, &s);
    CHECK_EQ(s.cow_cluster_faults, 1);
    CHECK_EQ(s.cow_unit_faults, 5);
    /* A store spanning two frozen clusters (2 and 3). */
    put(mon, shadow, 4 * CL - 10, 20, 400);
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK_EQ(s.errors, 0);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);

    /* Never escalating: every unit is its own copy, 16 make it whole. */
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, UINT32_MAX);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s2", NULL, &err), &err);
    for (i = 0; i < 16; i++) {
        put(mon, shadow, 5 * CL + i * 4096, 1, 500 + i);
    }
    stats(mon, &s);
    CHECK_EQ(s.cow_unit_faults, 16);
    CHECK_EQ(s.cow_cluster_faults, 0);
    verify_mapping(mon, shadow);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    return 0;
}

/* --- live snapshot then write; delete makes it writable again ----------- */
static int t_snapshot(void)
{
    const char *dir = test_dir("snap");
    char path[4200];
    uint64_t size = 16 * MiB;
    uint8_t *shadow = calloc(1, size);
    uint8_t *old = malloc(size);
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    int i;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    for (i = 0; i < 32; i++) {
        put(mon, shadow, (uint64_t)i * 3 * CL + i, 3000, i + 1);
    }
    memcpy(old, shadow, size);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "before", NULL, &err), &err);
    for (i = 0; i < 32; i++) {
        put(mon, shadow, (uint64_t)i * 3 * CL + 2 * i, 100, 1000 + i);
    }
    /* Holes after the snapshot still expand. */
    put(mon, shadow, 15 * MiB, 5000, 77);
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK(s.cow_unit_faults + s.cow_cluster_faults >= 32);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "middle", NULL, &err), &err);
    put(mon, shadow, 3 * CL, 10, 2000);
    CHECK_OK(pcow_monitor_snapshot_delete(mon, "middle", &err), &err);
    stats(mon, &s);
    {
        uint64_t faults = s.cow_unit_faults + s.cow_cluster_faults;

        /* Written after "middle": writable again without a fault. */
        put(mon, shadow, 3 * CL + 20, 10, 2001);
        stats(mon, &s);
        CHECK_EQ(s.cow_unit_faults + s.cow_cluster_faults, faults);
    }
    verify_mapping(mon, shadow);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    /* The snapshot holds the old content. */
    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    CHECK_OK(pcow_snapshot_revert(img, "before", &err), &err);
    CHECK_OK(pcow_close(img, &err), &err);
    verify_image(path, old, size);
    check_clean(path);
    free(shadow);
    free(old);
    return 0;
}

/* --- revert a mapped image (loadvm): the range reads the snapshot ------ */
static int t_revert(void)
{
    const char *dir = test_dir("revert");
    char path[4200];
    uint64_t size = 16 * MiB;
    uint8_t *shadow = calloc(1, size);
    uint8_t *old = malloc(size);
    const uint8_t *p;
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    uint64_t faults;
    int i;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    p = pcow_monitor_base(mon);
    for (i = 0; i < 16; i++) {
        put(mon, shadow, (uint64_t)i * 4 * CL + i, 3000, i + 1);
    }
    memcpy(old, shadow, size);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s1", NULL, &err), &err);
    /* After s1: copies of frozen data, expanded holes, a hole read */
    for (i = 0; i < 16; i++) {
        put(mon, shadow, (uint64_t)i * 4 * CL + 2 * i, 100, 1000 + i);
        put(mon, shadow, (uint64_t)i * 4 * CL + 2 * CL, 200, 3000 + i);
    }
    CHECK_EQ(p[12 * MiB], 0);
    verify_mapping(mon, shadow);

    /* An unknown snapshot changes nothing */
    CHECK(pcow_monitor_snapshot_revert(mon, "nope", &err) == -ENOENT);
    CHECK(strstr(err.msg, "nope") != NULL);
    verify_mapping(mon, shadow);

    CHECK_OK(pcow_monitor_snapshot_revert(mon, "s1", &err), &err);
    memcpy(shadow, old, size);
    verify_mapping(mon, shadow);
    /* s1's data is frozen again: writes copy on write */
    stats(mon, &s);
    faults = s.cow_unit_faults + s.cow_cluster_faults;
    put(mon, shadow, 5 * 4 * CL + 7, 50, 5000);
    /* Holes expanded before the revert are holes again, and expand again */
    CHECK_EQ(p[3 * 4 * CL + 2 * CL], 0);
    put(mon, shadow, 3 * 4 * CL + 2 * CL, 300, 5001);
    put(mon, shadow, 12 * MiB, 300, 5002);
    stats(mon, &s);
    CHECK(s.cow_unit_faults + s.cow_cluster_faults > faults);
    CHECK_EQ(s.errors, 0);
    verify_mapping(mon, shadow);
    /* Again from the reverted state: a revert is repeatable */
    CHECK_OK(pcow_monitor_snapshot_revert(mon, "s1", &err), &err);
    verify_mapping(mon, old);
    memcpy(shadow, old, size);
    put(mon, shadow, 9 * MiB, 4000, 6000);
    verify_mapping(mon, shadow);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    free(old);
    return 0;
}

/*
 * --- savevm without a disk: a live snapshot with VM state -------------
 * The snapshot is taken as any live one (writes after it copy on write),
 * its VM state reads back while the image is mapped and after a revert
 * (loadvm), and the delete gives its clusters back: no leak.
 */
static int t_vm_state(void)
{
    const char *dir = test_dir("vm-state");
    char path[4200];
    uint64_t size = 16 * MiB, len = 3 * CL + 123, i;
    uint8_t *shadow = calloc(1, size), *old = malloc(size);
    uint8_t *vm = malloc(len), *got = malloc(len);
    pcow_vm_state vs = { .data = vm, .size = len, .vm_clock_nsec = 42 };
    pcow_snapshot_info sn;
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    pcow_image *img;

    for (i = 0; i < len; i++) {
        vm[i] = (uint8_t)(i * 31 + 7);
    }
    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    img = pcow_monitor_image(mon);
    for (i = 0; i < 8; i++) {
        put(mon, shadow, i * 2 * CL + i, 3000, i + 1);
    }
    memcpy(old, shadow, size);
    CHECK_OK(pcow_monitor_snapshot_create_vm(mon, "s1", &vs, NULL, &err),
             &err);
    for (i = 0; i < 8; i++) {
        put(mon, shadow, i * 2 * CL + 10, 100, 100 + i);
    }
    stats(mon, &s);
    CHECK(s.cow_unit_faults + s.cow_cluster_faults >= 8);
    CHECK_OK(pcow_snapshot_lookup(img, "s1", false, 0, &sn, &err), &err);
    CHECK_EQ(sn.vm_state_size, len);
    CHECK_EQ(sn.vm_clock_nsec, 42);
    CHECK_OK(pcow_snapshot_read_vm_state(img, "s1", 0, got, len, &err),
             &err);
    CHECK(memcmp(got, vm, len) == 0);
    CHECK_OK(pcow_monitor_snapshot_revert(mon, "s1", &err), &err);
    verify_mapping(mon, old);
    memset(got, 0, len);
    CHECK_OK(pcow_snapshot_read_vm_state(img, "s1", 0, got, len, &err),
             &err);
    CHECK(memcmp(got, vm, len) == 0);
    CHECK_OK(pcow_monitor_snapshot_delete(mon, "s1", &err), &err);
    CHECK(pcow_snapshot_read_vm_state(img, "s1", 0, got, 1, &err) ==
          -ENOENT);
    close_mon(mon);
    check_clean(path);
    verify_image(path, old, size);
    free(shadow);
    free(old);
    free(vm);
    free(got);
    return 0;
}

/* --- base chain (pcow and raw bases) then write ------------------------- */
static int t_base(void)
{
    const char *dir = test_dir("base");
    char raw[4200], b1[4200], b2[4200], top[4200];
    uint64_t size = 8 * MiB;
    uint64_t raw_len = 3 * MiB + 1234;      /* shorter than the image */
    uint8_t *shadow = calloc(1, size);
    pcow_monitor *mon;
    pcow_monitor_stats s;
    int fd, i;

    snprintf(raw, sizeof(raw), "%s/base.raw", dir);
    snprintf(b1, sizeof(b1), "%s/b1.pcow", dir);
    snprintf(b2, sizeof(b2), "%s/b2.pcow", dir);
    snprintf(top, sizeof(top), "%s/top.pcow", dir);
    fill(shadow, 0, raw_len, 1);
    fd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, shadow, raw_len) == (ssize_t)raw_len);
    close(fd);
    make_image(b1, size, CL, "base.raw", PCOW_BACKING_RAW);
    mon = open_mon(b1, 0, 0);
    put(mon, shadow, 1 * MiB, 200000, 2);   /* COW over raw data */
    put(mon, shadow, 5 * MiB, 100000, 3);   /* beyond the raw EOF */
    close_mon(mon);
    make_image(b2, size, CL, "b1.pcow", PCOW_BACKING_PCOW);
    mon = open_mon(b2, 0, 0);
    put(mon, shadow, 1 * MiB + 50000, 10, 4);
    put(mon, shadow, 7 * MiB, 10, 5);       /* hole at every depth */
    close_mon(mon);
    make_image(top, size, CL, "b2.pcow", PCOW_BACKING_PCOW);
    mon = open_mon(top, 0, 0);
    verify_mapping(mon, shadow);
    for (i = 0; i < 64; i++) {
        put(mon, shadow, (uint64_t)i * 131072 + 4000, 200, 100 + i);
    }
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK_EQ(s.errors, 0);
    CHECK(s.cow_unit_faults + s.cow_cluster_faults > 0);
    CHECK(s.expansions > 0);
    close_mon(mon);
    check_clean(top);
    check_clean(b1);
    verify_image(top, shadow, size);
    mon = open_mon(top, PCOW_MONITOR_READONLY, 0);
    verify_mapping(mon, shadow);
    close_mon(mon);
    free(shadow);
    return 0;
}

/*
 * --- a shrunk and regrown overlay: the base never shows in the cut range --
 * Over a raw and over a pcow base, the cut ending inside a cluster: the
 * mapping shows zeros past the old end (the straddling cluster too), and
 * writes there expand or copy zeros, never base data.
 */
static void cut_overlay(const char *dir, const char *base,
                        pcow_backing_format fmt, uint8_t *shadow,
                        uint64_t size)
{
    uint64_t cut = 3 * MiB + 12 * KiB;      /* inside a 64 KiB cluster */
    char top[4200];
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING };

    snprintf(top, sizeof(top), "%s/top-%s.pcow", dir,
             fmt == PCOW_BACKING_RAW ? "raw" : "pcow");
    make_image(top, size, CL, base, fmt);
    mon = open_mon(top, 0, 0);
    put(mon, shadow, 1 * MiB, 5000, 7);     /* own data below the cut */
    put(mon, shadow, 6 * MiB, 5000, 8);     /* own data the cut drops */
    close_mon(mon);
    CHECK_OK(pcow_open(top, &oo, &img, &err), &err);
    CHECK_OK(pcow_resize(img, cut, true, &err), &err);
    CHECK_OK(pcow_resize(img, size, false, &err), &err);
    CHECK_OK(pcow_close(img, &err), &err);
    memset(shadow + cut, 0, size - cut);

    mon = open_mon(top, 0, 0);
    verify_mapping(mon, shadow);
    put(mon, shadow, cut - 100, 300, 9);    /* across the cut: COW */
    put(mon, shadow, 5 * MiB + 7, 10, 10);  /* expansion past it */
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK_EQ(s.errors, 0);
    close_mon(mon);
    check_clean(top);
    verify_image(top, shadow, size);
    mon = open_mon(top, PCOW_MONITOR_READONLY, 0);
    verify_mapping(mon, shadow);
    close_mon(mon);
}

static int t_base_cut(void)
{
    const char *dir = test_dir("base-cut");
    char raw[4200], b1[4200];
    uint64_t size = 8 * MiB;
    uint8_t *data = malloc(size), *shadow = malloc(size);
    pcow_monitor *mon;
    int fd;

    CHECK(data && shadow);
    snprintf(raw, sizeof(raw), "%s/base.raw", dir);
    snprintf(b1, sizeof(b1), "%s/b1.pcow", dir);
    fill(data, 0, size, 1);
    fd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, data, size) == (ssize_t)size);
    close(fd);
    memcpy(shadow, data, size);
    cut_overlay(dir, "base.raw", PCOW_BACKING_RAW, shadow, size);

    make_image(b1, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(b1, 0, 0);
    put(mon, data, 0, size, 2);
    close_mon(mon);
    memcpy(shadow, data, size);
    cut_overlay(dir, "b1.pcow", PCOW_BACKING_PCOW, shadow, size);
    free(data);
    free(shadow);
    return 0;
}

/* --- 16 threads on the same and on different clusters ------------------- */
#define NTHREADS 16

typedef struct thr_arg {
    pcow_monitor *mon;
    uint8_t *shadow;
    int id;
    int phase;
    pthread_barrier_t *bar;
} thr_arg;

static void *thr_main(void *opaque)
{
    thr_arg *a = opaque;
    uint8_t *p = pcow_monitor_base(a->mon);
    int c;

    pthread_barrier_wait(a->bar);
    for (c = 0; c < 64; c++) {
        uint64_t off;

        if (a->phase == 0) {
            /* Same 64 clusters for everyone, own 4 KiB slice of each. */
            off = (uint64_t)c * CL + (uint64_t)a->id * 4096;
        } else {
            /* Own clusters. */
            off = (uint64_t)(64 + a->id * 64 + c) * CL + 64;
        }
        fill(a->shadow + off, off, 4000, a->id * 1000 + c + a->phase);
        memcpy(p + off, a->shadow + off, 4000);
    }
    return NULL;
}

static void run_threads(pcow_monitor *mon, uint8_t *shadow, int phase)
{
    pthread_t th[NTHREADS];
    thr_arg args[NTHREADS];
    pthread_barrier_t bar;
    int i;

    pthread_barrier_init(&bar, NULL, NTHREADS);
    for (i = 0; i < NTHREADS; i++) {
        args[i] = (thr_arg){ mon, shadow, i, phase, &bar };
        CHECK(pthread_create(&th[i], NULL, thr_main, &args[i]) == 0);
    }
    for (i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&bar);
}

static int t_threads(void)
{
    const char *dir = test_dir("threads");
    char path[4200];
    uint64_t size = 128 * MiB;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_info info;
    pcow_error err = { 0 };
    int round;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    for (round = 0; round < 3; round++) {
        run_threads(mon, shadow, 0);
        run_threads(mon, shadow, 1);
        verify_mapping(mon, shadow);
        pcow_get_info(pcow_monitor_image(mon), &info);
        CHECK_EQ(info.active_clusters, 64 + NTHREADS * 64);
        stats(mon, &s);
        if (round == 0) {
            CHECK_EQ(s.expansions, 64 + NTHREADS * 64);
        }
        /* Next round: everyone COWs the same frozen clusters. */
        {
            char name[16];

            snprintf(name, sizeof(name), "r%d", round);
            CHECK_OK(pcow_monitor_snapshot_create(mon, name, NULL, &err), &err);
        }
    }
    stats(mon, &s);
    CHECK_EQ(s.errors, 0);
    printf("expansions %" PRIu64 " cow units %" PRIu64 " clusters %" PRIu64
           "\n", s.expansions, s.cow_unit_faults, s.cow_cluster_faults);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    return 0;
}

/* --- two monitors in one process ---------------------------------------- */
static int t_two(void)
{
    const char *dir = test_dir("two");
    char pa[4200], pb[4200];
    uint64_t size = 8 * MiB;
    uint8_t *sa = calloc(1, size), *sb = calloc(1, size);
    pcow_monitor *ma, *mb;
    pcow_error err = { 0 };
    int i;

    snprintf(pa, sizeof(pa), "%s/a.pcow", dir);
    snprintf(pb, sizeof(pb), "%s/b.pcow", dir);
    make_image(pa, size, CL, NULL, PCOW_BACKING_NONE);
    make_image(pb, size, 4096, NULL, PCOW_BACKING_NONE);
    ma = open_mon(pa, 0, 0);
    mb = open_mon(pb, 0, 0);
    for (i = 0; i < 50; i++) {
        put(ma, sa, (uint64_t)i * 100003 % (size - 100), 100, i);
        put(mb, sb, (uint64_t)i * 70001 % (size - 100), 100, 100 + i);
    }
    CHECK_OK(pcow_monitor_snapshot_create(ma, "x", NULL, &err), &err);
    CHECK_OK(pcow_monitor_snapshot_create(mb, "y", NULL, &err), &err);
    for (i = 0; i < 50; i++) {
        put(ma, sa, (uint64_t)i * 100003 % (size - 100) + 7, 10, 200 + i);
        put(mb, sb, (uint64_t)i * 70001 % (size - 100) + 7, 10, 300 + i);
    }
    verify_mapping(ma, sa);
    verify_mapping(mb, sb);
    close_mon(ma);
    /* The other one keeps working after the first is gone. */
    put(mb, sb, 3 * MiB, 5000, 999);
    verify_mapping(mb, sb);
    close_mon(mb);
    check_clean(pa);
    check_clean(pb);
    verify_image(pa, sa, size);
    verify_image(pb, sb, size);
    free(sa);
    free(sb);
    return 0;
}

/* --- a SIGSEGV that is not ours still kills (and chains) ---------------- */
static void prev_handler(int sig, siginfo_t *si, void *ctx)
{
    _exit(42);
}

static int t_foreign_segv(void)
{
    const char *dir = test_dir("segv");
    char path[4200];
    int variant;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, 4 * MiB, CL, NULL, PCOW_BACKING_NONE);
    for (variant = 0; variant < 4; variant++) {
        pid_t pid = fork();
        int st;

        CHECK(pid >= 0);
        if (pid == 0) {
            pcow_monitor *mon;
            char *ro;

            if (variant == 3) {
                struct sigaction sa = { 0 };

                sa.sa_sigaction = prev_handler;
                sa.sa_flags = SA_SIGINFO;
                sigaction(SIGSEGV, &sa, NULL);
            }
            mon = open_mon(path, variant == 2 ? PCOW_MONITOR_READONLY : 0, 0);
            ((char *)pcow_monitor_base(mon))[100] = 1;  /* ours: fine */
            if (variant == 2) {
                _exit(3);       /* must not get here: read-only image */
            }
            ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
            if (variant == 0 || variant == 3) {
                *(volatile char *)ro = 1;       /* foreign write */
            } else {
                raise(SIGSEGV);                 /* sent, not a fault */
            }
            _exit(4);
        }
        CHECK(waitpid(pid, &st, 0) == pid);
        if (variant == 3) {
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42);
        } else {
            if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV)) {
                fprintf(stderr, "variant %d: status 0x%x\n", variant, st);
                exit(1);
            }
        }
    }
    return 0;
}

/*
 * --- failed copy-on-write: reported, chained, nothing allocated ---------
 *
 * Every allocation of this binary is checked by malloc-guard.c: inside
 * the SIGSEGV handler it aborts.  Each variant runs in a child that makes
 * one COW fail and must end in the previous SIGSEGV action (exit 42), not
 * in SIGABRT; the image must then recover clean with everything that was
 * stored.  RLIMIT_FSIZE stands in for a full disk without needing root: a
 * write or fallocate at or beyond the limit fails with EFBIG.
 */
enum {
    CF_GUARD,       /* self-test: an allocation in the handler is caught */
    CF_GUARD_UFFD,  /* self-test: the same in the userfaultfd thread */
    CF_FULL,        /* no room for the cluster's new home */
    CF_UNIT,        /* a unit copy fails after its new home was taken */
    CF_WHOLE,       /* escalation of a frozen PARTIAL cluster fails */
    CF_OWN,         /* completing our own PARTIAL cluster fails */
    CF_COUNT
};

static const char *const cf_names[CF_COUNT] = {
    "guard self-test", "guard self-test (uffd)", "disk full", "unit copy fails",
    "whole-cluster copy fails", "own PARTIAL completion fails",
};

static void cf_chained(int sig, siginfo_t *si, void *ctx)
{
    _exit(42);
}

/* Only for the self-tests: a persistence hook that allocates once armed */
static volatile bool cf_armed;

static void cf_alloc_hook(void *opaque, pcow_persist_op op, uint64_t off,
                          const void *data, uint64_t len)
{
    if (cf_armed && pcow_monitor_in_handler()) {
        void *volatile p = malloc(16);

        free(p);
    }
}

static void cf_child(const char *path, int variant, uint8_t *shadow)
{
    pcow_monitor_opts mo = {
        .flags = PCOW_MONITOR_NO_POOL,
        .cow_escalate = 1,
        .hook = variant <= CF_GUARD_UFFD ? cf_alloc_hook : NULL,
    };
    static const uint64_t target[CF_COUNT] = {
        2 * CL + 100, 200 * CL, 1 * CL + 5 * 4096, 1 * CL + 5 * 4096,
        2 * CL + 7 * 4096, 3 * CL + 7 * 4096,
    };
    struct sigaction sa = { 0 };
    struct rlimit rl;
    struct stat st;
    pcow_monitor *mon;
    pcow_error err = { 0 };
    int i;

    sa.sa_sigaction = cf_chained;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
    signal(SIGXFSZ, SIG_IGN);
    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    for (i = 0; i < 8; i++) {
        put(mon, shadow, (uint64_t)i * CL, CL, 700 + i);
    }
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s1", NULL, &err), &err);
    if (variant <= CF_GUARD_UFFD) {
        /* A COW (expansion) calls the hook in the SIGSEGV (uffd) handler */
        cf_armed = true;
        ((volatile uint8_t *)pcow_monitor_base(mon))[target[variant]] = 1;
        _exit(3);
    }
    /* Cluster 2: PARTIAL over its frozen self, then frozen too */
    put(mon, shadow, 2 * CL + 100, 8, 710);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s2", NULL, &err), &err);
    /*
     * 100 expansions move the allocation end well past the free bitmap
     * sized at the last reclaim: a cluster freed there must not grow it
     * with realloc in the handler.
     */
    for (i = 16; i < 116; i++) {
        put(mon, shadow, (uint64_t)i * CL + 8 * i, 8, 720 + i);
    }
    CHECK(stat(path, &st) == 0);
    if (variant != CF_FULL) {
        /* Ready clusters at and beyond the limit set below */
        CHECK(pcow_reserve_clusters(pcow_monitor_image(mon), 4, &err) == 4);
    }
    if (variant == CF_OWN) {
        /* Unit 0 of cluster 3 copied into a reserved cluster */
        put(mon, shadow, 3 * CL + 16, 8, 730);
    }
    rl.rlim_cur = rl.rlim_max = st.st_size;
    CHECK(setrlimit(RLIMIT_FSIZE, &rl) == 0);
    ((volatile uint8_t *)pcow_monitor_base(mon))[target[variant]] = 0x5a;
    _exit(3);       /* the store must not have succeeded */
}

static int t_cow_fail(void)
{
    const char *dir = test_dir("cowfail");
    uint64_t size = 16 * MiB;
    char path[4200];
    uint8_t *shadow;
    int variant;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    /* Shared with the children: what they stored before the failure */
    shadow = mmap(NULL, size, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(shadow != MAP_FAILED);
    for (variant = 0; variant < CF_COUNT; variant++) {
        pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
        pcow_error err = { 0 };
        pcow_image *img;
        char out[8192];
        ssize_t n, total = 0;
        int pipefd[2];
        pid_t pid;
        int st;

        memset(shadow, 0, size);
        make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
        CHECK(pipe(pipefd) == 0);
        pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(pipefd[0]);
            dup2(pipefd[1], 2);
            cf_child(path, variant, shadow);
        }
        close(pipefd[1]);
        while ((n = read(pipefd[0], out + total,
                         sizeof(out) - 1 - total)) > 0) {
            total += n;
        }
        close(pipefd[0]);
        out[total] = 0;
        CHECK(waitpid(pid, &st, 0) == pid);
        printf("%s: status 0x%x, stderr: %s", cf_names[variant], st, out);
        if (variant <= CF_GUARD_UFFD) {
            CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
            CHECK(strstr(out, "malloc-guard: malloc() inside") != NULL);
        } else {
            CHECK(strstr(out, "malloc-guard") == NULL);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42);
            CHECK(strstr(out, "cannot copy-on-write") != NULL);
            CHECK(strstr(out, path) != NULL);
        }
        /* Recovery reclaims what the failed copy left; nothing is lost */
        CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
        CHECK_OK(pcow_close(img, &err), &err);
        check_clean(path);
        if (variant > CF_GUARD_UFFD) {
            verify_image(path, shadow, size);
        }
    }
    munmap(shadow, size);
    return 0;
}

/* --- disk full during expansion, policy fail ----------------------------- */
static int t_disk_full(void)
{
    char dir[] = "/tmp/pcow-mon-full-XXXXXX";
    char path[4200];
    int pipefd[2];
    char out[4096];
    ssize_t n, total = 0;
    pid_t pid;
    int st;

    if (geteuid() != 0 || !mkdtemp(dir)) {
        printf("SKIP: needs root to mount a small tmpfs\n");
        return 77;
    }
    if (mount("pcowfull", dir, "tmpfs", 0, "size=1m") < 0) {
        printf("SKIP: cannot mount tmpfs: %s\n", strerror(errno));
        rmdir(dir);
        return 77;
    }
    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, 64 * MiB, CL, NULL, PCOW_BACKING_NONE);
    CHECK(pipe(pipefd) == 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pcow_monitor *mon;
        char *p;
        int i;

        dup2(pipefd[1], 2);
        /* Policy fail: today's behaviour, the access gets its signal */
        mon = open_mon(path, PCOW_MONITOR_NOSPACE_FAIL, 0);
        p = pcow_monitor_base(mon);
        for (i = 0; i < 1024; i++) {
            p[(uint64_t)i * CL] = 1;
        }
        _exit(5);               /* 64 MiB can not fit into 1 MiB */
    }
    close(pipefd[1]);
    while ((n = read(pipefd[0], out + total, sizeof(out) - 1 - total)) > 0) {
        total += n;
    }
    out[total] = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    printf("child: status 0x%x, stderr: %s", st, out);
    CHECK(WIFSIGNALED(st));
    CHECK(strstr(out, "no space left") != NULL);
    CHECK(strstr(out, path) != NULL);
    {
        /* Recover leaks with a read-write open, then it must be clean. */
        pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
        pcow_image *img;
        pcow_error err = { 0 };

        CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
        CHECK_OK(pcow_close(img, &err), &err);
    }
    check_clean(path);
    umount(dir);
    rmdir(dir);
    return 0;
}

/*
 * --- disk full, policy stall: faults wait for space ----------------------
 *
 * 16 threads write 4 clusters each of an image on a small tmpfs that a
 * filler file has filled up.  Their faults must be held (threads blocked,
 * the process alive, one episode on the event fd), and once space returns
 * every thread must finish with its data in the mapping and the image.
 * Hole variant: expansions through userfaultfd, space back by remounting
 * the tmpfs larger.  COW variant: the clusters are frozen by a snapshot,
 * so the faults are copy-on-writes in the SIGSEGV handler; space back by
 * removing the filler.
 */
#define NS_CLUSTERS 4

typedef struct ns_arg {
    pcow_monitor *mon;
    uint8_t *shadow;
    int id;
    _Atomic int *done;
} ns_arg;

static uint64_t ns_off(int id, int c)
{
    return (uint64_t)(id * NS_CLUSTERS + c) * CL + (uint64_t)id * 64 + 100;
}

static void *ns_thread(void *opaque)
{
    ns_arg *a = opaque;
    uint8_t *p = pcow_monitor_base(a->mon);
    int c;

    for (c = 0; c < NS_CLUSTERS; c++) {
        uint64_t off = ns_off(a->id, c);

        fill(a->shadow + off, off, 4000, 9000 + a->id * 16 + c);
        memcpy(p + off, a->shadow + off, 4000);
    }
    atomic_fetch_add(a->done, 1);
    return NULL;
}

/* Mount a tmpfs of @size at a new directory in @dir; 77 if not root. */
static int ns_mount(char *dir, const char *size)
{
    char opts[64];

    if (geteuid() != 0 || !mkdtemp(dir)) {
        printf("SKIP: needs root to mount a small tmpfs\n");
        return 77;
    }
    snprintf(opts, sizeof(opts), "size=%s", size);
    if (mount("pcownospace", dir, "tmpfs", 0, opts) < 0) {
        printf("SKIP: cannot mount tmpfs: %s\n", strerror(errno));
        rmdir(dir);
        return 77;
    }
    return 0;
}

/* Fill the file system of @dir up with @dir/filler (until ENOSPC). */
static void ns_fill(const char *dir)
{
    static char buf[64 * KiB];
    char path[4200];
    size_t chunk = sizeof(buf);
    int fd;

    snprintf(path, sizeof(path), "%s/filler", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    memset(buf, 0xf1, sizeof(buf));
    while (chunk >= 4096) {
        if (write(fd, buf, chunk) < 0) {
            CHECK(errno == ENOSPC);
            chunk /= 2;
        }
    }
    close(fd);
}

static bool ns_event(pcow_monitor *mon)
{
    struct pollfd pfd = { .fd = pcow_monitor_event_fd(mon), .events = POLLIN };
    uint64_t v;

    if (poll(&pfd, 1, 5000) != 1) {
        return false;
    }
    CHECK(read(pfd.fd, &v, sizeof(v)) == sizeof(v));
    return true;
}

/* The end of a full-disk test: the mapping and the clean image hold @shadow */
static void nospace_finish(pcow_monitor *mon, const char *path,
                           uint8_t *shadow, uint64_t size, const char *dir)
{
    verify_mapping(mon, shadow);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    umount(dir);
    rmdir(dir);
}

static int nospace_stall(bool cow)
{
    char dir[] = "/tmp/pcow-mon-nospace-XXXXXX";
    char path[4200], cmd[4300];
    uint64_t size = 16 * MiB;
    uint8_t *shadow = calloc(1, size);
    pthread_t th[NTHREADS];
    ns_arg args[NTHREADS];
    _Atomic int done = 0;
    pcow_monitor_stats s;
    pcow_monitor *mon;
    pcow_error err = { 0 };
    int i, r;

    r = ns_mount(dir, "1m");
    if (r) {
        return r;
    }
    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    if (cow) {
        /* Everything the threads write is frozen: room for that first */
        CHECK(mount(NULL, dir, NULL, MS_REMOUNT, "size=16m") == 0);
        for (i = 0; i < NTHREADS * NS_CLUSTERS; i++) {
            put(mon, shadow, (uint64_t)i * CL, CL, 500 + i);
        }
        CHECK_OK(pcow_monitor_snapshot_create(mon, "s1", NULL, &err), &err);
    }
    ns_fill(dir);
    alarm(120);
    for (i = 0; i < NTHREADS; i++) {
        args[i] = (ns_arg){ mon, shadow, i, &done };
        CHECK(pthread_create(&th[i], NULL, ns_thread, &args[i]) == 0);
    }
    /* The episode starts, the faults are held, nobody dies */
    CHECK(ns_event(mon));
    usleep(3 * PCOW_MONITOR_RETRY_MS * 1000);
    stats(mon, &s);
    printf("held %" PRIu64 " faults, %d of %d threads done, episodes %"
           PRIu64 ", first at 0x%" PRIx64 "\n", s.held_faults,
           atomic_load(&done), NTHREADS, s.nospace_episodes,
           s.nospace_offset);
    CHECK(s.held_faults > 0);
    CHECK(atomic_load(&done) < NTHREADS);
    CHECK_EQ(s.nospace_episodes, 1);
    CHECK_EQ(s.errors, 0);
    /* Space comes back: every thread finishes by itself */
    if (cow) {
        snprintf(cmd, sizeof(cmd), "%s/filler", dir);
        CHECK(unlink(cmd) == 0);
    } else {
        CHECK(mount(NULL, dir, NULL, MS_REMOUNT, "size=16m") == 0);
    }
    for (i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
    }
    alarm(0);
    CHECK_EQ(atomic_load(&done), NTHREADS);
    CHECK(ns_event(mon));       /* the episode ended */
    stats(mon, &s);
    printf("after: held %" PRIu64 ", episodes %" PRIu64 ", expansions %"
           PRIu64 ", cow units %" PRIu64 " clusters %" PRIu64 "\n",
           s.held_faults, s.nospace_episodes, s.expansions,
           s.cow_unit_faults, s.cow_cluster_faults);
    CHECK_EQ(s.held_faults, 0);
    CHECK_EQ(s.nospace_episodes, 1);
    CHECK_EQ(s.errors, 0);
    nospace_finish(mon, path, shadow, size, dir);
    return 0;
}

static int t_nospace_hole(void)
{
    return nospace_stall(false);
}

static int t_nospace_cow(void)
{
    return nospace_stall(true);
}

/*
 * A long stall must not use up the VMA budget: every retry of a held
 * expansion used to count two mappings that were never made, so once
 * space came back the expansion failed with "too many mappings" and the
 * writer died of SIGSEGV.  No statistics are read while the fault is held
 * (reading them recounts the mappings and would hide the leak).
 */
static void *nb_thread(void *opaque)
{
    ns_arg *a = opaque;
    uint8_t *p = pcow_monitor_base(a->mon);
    int c;

    for (c = 0; c < NS_CLUSTERS; c++) {
        uint64_t off = (uint64_t)c * CL + 300;

        fill(a->shadow + off, off, 4000, 7000 + c);
        memcpy(p + off, a->shadow + off, 4000);
    }
    atomic_fetch_add(a->done, 1);
    return NULL;
}

static int t_nospace_budget(void)
{
    char dir[] = "/tmp/pcow-mon-nsbudget-XXXXXX";
    char path[4200];
    uint64_t size = 16 * MiB;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor_opts mo = { .flags = PCOW_MONITOR_NO_POOL,
                             .cow_escalate = 0, .max_vmas = 16 };
    pcow_monitor_stats s;
    pcow_monitor *mon;
    pcow_error err = { 0 };
    _Atomic int done = 0;
    ns_arg arg;
    pthread_t th;
    int r;

    r = ns_mount(dir, "1m");
    if (r) {
        return r;
    }
    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    ns_fill(dir);
    alarm(120);
    arg = (ns_arg){ mon, shadow, 0, &done };
    CHECK(pthread_create(&th, NULL, nb_thread, &arg) == 0);
    CHECK(ns_event(mon));
    /* 20 retries: 40 mappings counted before, with a budget of 16 */
    usleep(20 * PCOW_MONITOR_RETRY_MS * 1000);
    CHECK_EQ(atomic_load(&done), 0);
    CHECK(mount(NULL, dir, NULL, MS_REMOUNT, "size=16m") == 0);
    pthread_join(th, NULL);
    alarm(0);
    CHECK_EQ(atomic_load(&done), 1);
    stats(mon, &s);
    printf("after the stall: %" PRIu64 " expansions, %" PRIu64 " errors, %"
           PRIu64 " mappings, pool %" PRIu64 " hits %" PRIu64 " misses\n",
           s.expansions, s.errors, s.vmas, s.pool_hits, s.pool_misses);
    CHECK_EQ(s.expansions, NS_CLUSTERS);
    /* Retries of a held fault are not pool misses (no pool: all miss) */
    CHECK_EQ(s.pool_hits + s.pool_misses, NS_CLUSTERS);
    CHECK_EQ(s.errors, 0);
    nospace_finish(mon, path, shadow, size, dir);
    return 0;
}

/* --- kill -9 in the middle of expansions and COWs ----------------------- */
typedef struct progress {
    uint32_t seq;
} progress;

static uint64_t crash_off(uint32_t seq, uint64_t size)
{
    return (uint64_t)seq * 2654435761u % (size / 4096) * 4096;
}

static int t_crash(void)
{
    const char *dir = test_dir("crash");
    char path[4200];
    uint64_t size = 32 * MiB;
    int iter;
    uint32_t base_seq = 0;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    for (iter = 0; iter < 20; iter++) {
        int pfd[2];
        pid_t pid;
        uint32_t last = UINT32_MAX, v;
        struct timespec ts = { 0, (iter % 5) * 100000 };
        pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
        pcow_image *img;
        pcow_error err = { 0 };
        pcow_check_result res;
        uint8_t buf[64];
        uint32_t seq;
        int st;

        CHECK(pipe(pfd) == 0);
        pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            pcow_monitor *mon;
            uint8_t *p;

            close(pfd[0]);
            mon = open_mon(path, iter % 2 ? PCOW_MONITOR_NO_POOL : 0, 0);
            p = pcow_monitor_base(mon);
            if (iter % 3 == 2) {
                pcow_error e2 = { 0 };
                char name[32];

                /* Frozen data: the writes below are COWs. */
                snprintf(name, sizeof(name), "crash%d", iter);
                CHECK_OK(pcow_monitor_snapshot_create(mon, name, NULL, &e2),
                         &e2);
            }
            for (seq = base_seq;; seq++) {
                uint64_t off = crash_off(seq, size);
                uint32_t j;

                for (j = 0; j < 64; j++) {
                    p[off + j] = pattern(seq, j);
                }
                CHECK(write(pfd[1], &seq, 4) == 4);
            }
        }
        close(pfd[1]);
        /* Kill after a varying number of completed faults, mid-stream. */
        for (seq = 0; seq < 50 + (uint32_t)iter * 37 % 400; seq++) {
            if (read(pfd[0], &v, 4) != 4) {
                break;
            }
            last = v;
        }
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        while (read(pfd[0], &v, 4) == 4) {
            last = v;
        }
        close(pfd[0]);
        CHECK(waitpid(pid, &st, 0) == pid);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        /* Check as found (leaks allowed), then after recovery: clean. */
        memset(&res, 0, sizeof(res));
        CHECK(pcow_check(path, 0, false, &res, &err) >= 0 ||
              res.corruptions == 0);
        CHECK_EQ(res.corruptions, 0);
        CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
        if (last != UINT32_MAX) {
            /* Everything reported (and not overwritten later) is there. */
            for (seq = base_seq; seq <= last; seq++) {
                uint64_t off = crash_off(seq, size);
                uint32_t later, j;
                bool overwritten = false;

                for (later = seq + 1; later <= last + 1; later++) {
                    if (crash_off(later, size) == off) {
                        overwritten = true;
                    }
                }
                if (overwritten) {
                    continue;
                }
                CHECK(pcow_pread(img, off, buf, 64, &err) == 64);
                for (j = 0; j < 64; j++) {
                    if (buf[j] != pattern(seq, j)) {
                        fprintf(stderr, "iter %d: seq %u (last %u) lost at "
                                "0x%" PRIx64 "\n", iter, seq, last, off);
                        exit(1);
                    }
                }
            }
            base_seq = last + 2;
        }
        CHECK_OK(pcow_close(img, &err), &err);
        check_clean(path);
        printf("iter %d: %u writes survived\n", iter,
               last == UINT32_MAX ? 0 : last + 1);
    }
    return 0;
}

/* --- what mem-path may be: never blocks, refuses what is not an image -- */
static int t_file_kinds(void)
{
    const char *dir = test_dir("kinds");
    char fifo[4200], sub[4200], raw[4200], img[4200];
    const char *bad[] = { fifo, sub, "/dev/zero" };
    pcow_monitor_opts mo = { 0 };
    pcow_monitor *mon;
    pcow_error err;
    unsigned i, ro;
    int fd;

    alarm(60);      /* a blocking open(2) fails the test instead of hanging */
    snprintf(fifo, sizeof(fifo), "%s/fifo.pcow", dir);
    snprintf(sub, sizeof(sub), "%s/dir.pcow", dir);
    snprintf(raw, sizeof(raw), "%s/base.raw", dir);
    snprintf(img, sizeof(img), "%s/img.pcow", dir);
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(mkdir(sub, 0700) == 0);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (ro = 0; ro < 2; ro++) {
            memset(&err, 0, sizeof(err));
            mon = NULL;
            mo.flags = ro ? PCOW_MONITOR_READONLY : 0;
            CHECK(pcow_monitor_open(bad[i], &mo, &mon, &err) < 0);
            CHECK(mon == NULL);
            printf("%s\n", err.msg);
            CHECK(strstr(err.msg, bad[i]) != NULL);
            CHECK(strstr(err.msg, ", not a regular file") != NULL);
        }
    }
    /* An image whose raw base was replaced by a FIFO */
    fd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && ftruncate(fd, MiB) == 0);
    close(fd);
    make_image(img, MiB, CL, "base.raw", PCOW_BACKING_RAW);
    CHECK(unlink(raw) == 0 && mkfifo(raw, 0600) == 0);
    mo.flags = 0;
    CHECK(pcow_monitor_open(img, &mo, &mon, &err) < 0);
    printf("%s\n", err.msg);
    CHECK(strstr(err.msg, "a FIFO, not a regular file or block device"));
    alarm(0);
    return 0;
}

/* --- a block device (loop device) as raw base --------------------------- */
static char loop_dev[64];

static void detach_loop(void)
{
    char cmd[128];

    if (loop_dev[0]) {
        snprintf(cmd, sizeof(cmd), "losetup -d %s", loop_dev);
        if (system(cmd) != 0) {
            fprintf(stderr, "cannot detach %s\n", loop_dev);
        }
        loop_dev[0] = 0;
    }
}

static int t_blockdev_base(void)
{
    const char *dir = test_dir("blockdev");
    char raw[4200], top[4200], cmd[4300];
    uint64_t size = 8 * MiB, raw_len = 3 * MiB;
    uint8_t *shadow = calloc(1, size), *dev = malloc(raw_len);
    pcow_monitor *mon;
    FILE *p;
    int fd, i;

    snprintf(raw, sizeof(raw), "%s/dev.raw", dir);
    snprintf(top, sizeof(top), "%s/top.pcow", dir);
    fill(shadow, 0, raw_len, 7);
    fd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, shadow, raw_len) == (ssize_t)raw_len);
    close(fd);
    snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", raw);
    p = geteuid() == 0 ? popen(cmd, "r") : NULL;
    if (!p || !fgets(loop_dev, sizeof(loop_dev), p) ||
        strncmp(loop_dev, "/dev/", 5)) {
        loop_dev[0] = 0;
        if (p) {
            pclose(p);
        }
        printf("SKIP: no loop device (needs root and losetup)\n");
        return 77;
    }
    pclose(p);
    loop_dev[strcspn(loop_dev, "\n")] = 0;
    atexit(detach_loop);

    /* st_size of a block device is 0: the base used to read as zeros */
    make_image(top, size, CL, loop_dev, PCOW_BACKING_RAW);
    mon = open_mon(top, 0, 0);
    verify_mapping(mon, shadow);
    for (i = 0; i < 40; i++) {
        put(mon, shadow, (uint64_t)i * 200000 + 3000, 300, 50 + i);
    }
    verify_mapping(mon, shadow);
    close_mon(mon);
    check_clean(top);
    verify_image(top, shadow, size);
    mon = open_mon(top, PCOW_MONITOR_READONLY, 0);
    verify_mapping(mon, shadow);
    close_mon(mon);
    /* The device was only read */
    fill(shadow, 0, raw_len, 7);
    fd = open(loop_dev, O_RDONLY);
    CHECK(fd >= 0);
    CHECK(pread(fd, dev, raw_len, 0) == (ssize_t)raw_len);
    close(fd);
    CHECK(memcmp(dev, shadow, raw_len) == 0);
    detach_loop();
    free(shadow);
    free(dev);
    return 0;
}

/* Is the page at @p mapped in this process's page table? (pagemap bit 63) */
static bool page_present(const void *p)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t e = 0;

    CHECK(fd >= 0);
    CHECK(pread(fd, &e, 8, (uintptr_t)p / 4096 * 8) == 8);
    close(fd);
    return e >> 63;
}

static void check_present(const uint8_t *base, uint64_t off, uint64_t len,
                          bool want)
{
    uint64_t o;

    for (o = off; o < off + len; o += 4096) {
        if (page_present(base + o) != want) {
            fprintf(stderr, "page at 0x%" PRIx64 " is %spresent\n", o,
                    want ? "not " : "");
            exit(1);
        }
    }
}

/*
 * --- prefault (QEMU's prealloc=on): data mapped, the image stays thin ----
 * Over a raw base that ends inside a cluster, with frozen and active data:
 * every data page gets its page table entry, no hole and nothing past the
 * raw base's end is touched, and nothing is expanded or copied.
 */
static int t_prefault(void)
{
    const char *dir = test_dir("prefault");
    char raw[4200], top[4200];
    uint64_t size = 8 * MiB;
    uint64_t raw_len = 3 * MiB + 1234;
    uint8_t *shadow = calloc(1, size);
    pcow_error err = { 0 };
    pcow_monitor_stats s;
    pcow_monitor *mon;
    pcow_info before, after;
    uint8_t *base;
    int fd;

    snprintf(raw, sizeof(raw), "%s/base.raw", dir);
    snprintf(top, sizeof(top), "%s/top.pcow", dir);
    fill(shadow, 0, raw_len, 1);
    fd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, shadow, raw_len) == (ssize_t)raw_len);
    close(fd);
    make_image(top, size, CL, "base.raw", PCOW_BACKING_RAW);
    mon = open_mon(top, PCOW_MONITOR_NO_POOL, 0);
    put(mon, shadow, 1 * MiB + 100, 10, 2);     /* COW over raw data */
    put(mon, shadow, 5 * MiB, 10, 3);           /* expanded, then frozen */
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s", NULL, &err), &err);
    close_mon(mon);
    mon = open_mon(top, PCOW_MONITOR_NO_POOL, 0);
    put(mon, shadow, 6 * MiB, 10, 4);           /* active */
    close_mon(mon);

    mon = open_mon(top, PCOW_MONITOR_NO_POOL, 0);
    base = pcow_monitor_base(mon);
    pcow_get_info(pcow_monitor_image(mon), &before);
    CHECK(!page_present(base));
    CHECK_EQ(pcow_monitor_prefault(mon, &err), 0);
    check_present(base, 0, 3 * MiB + 4096, true);
    check_present(base, 5 * MiB, CL, true);
    check_present(base, 6 * MiB, CL, true);
    check_present(base, 3 * MiB + 4096, CL - 4096, false);
    check_present(base, 4 * MiB, MiB, false);
    check_present(base, 7 * MiB, MiB, false);
    stats(mon, &s);
    CHECK_EQ(s.expansions, 0);
    CHECK_EQ(s.cow_unit_faults + s.cow_cluster_faults, 0);
    CHECK_EQ(s.hole_read_faults, 0);
    CHECK_EQ(s.errors, 0);
    pcow_get_info(pcow_monitor_image(mon), &after);
    CHECK_EQ(after.allocated_clusters, before.allocated_clusters);
    verify_mapping(mon, shadow);
    close_mon(mon);
    check_clean(top);
    free(shadow);
    return 0;
}

/* --- deferred commits: an incoming migration's burst of expansions ----- */
static _Atomic uint64_t df_commit_syncs, df_barriers;

/* Runs in the uffd and pool threads: counters only */
static void df_hook(void *opaque, pcow_persist_op op, uint64_t off,
                    const void *data, uint64_t len)
{
    /* A commit's persist is its table page; a reservation's covers its
     * clusters (64 KiB and more), the frontier's is page 0 */
    if (op == PCOW_OP_SYNC && len == 4096 && off != 0) {
        atomic_fetch_add(&df_commit_syncs, 1);
    } else if (op == PCOW_OP_BARRIER) {
        atomic_fetch_add(&df_barriers, 1);
    }
}

static int t_defer(void)
{
    const char *dir = test_dir("defer");
    char path[4200];
    uint64_t size = 64 * MiB, b0;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor_opts mo = { .hook = df_hook };
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    int i;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    CHECK_OK(pcow_monitor_defer_commits(mon, true, &err), &err);
    CHECK(pcow_commits_deferred(pcow_monitor_image(mon)));
    /* The pool keeps a burst's reserve: 64 clusters of 64 KiB, not 8 */
    for (i = 0; i < 1000 &&
         pcow_reserve_count(pcow_monitor_image(mon)) < 64; i++) {
        usleep(10000);
    }
    CHECK(pcow_reserve_count(pcow_monitor_image(mon)) >= 64);
    atomic_store(&df_commit_syncs, 0);
    atomic_store(&df_barriers, 0);
    for (i = 0; i < 300; i++) {
        put(mon, shadow, (uint64_t)i * CL + i, 3000, i + 1);
    }
    stats(mon, &s);
    CHECK_EQ(s.expansions, 300);
    /* No commit persisted one by one, none flushed the whole file */
    CHECK_EQ(atomic_load(&df_commit_syncs), 0);
    b0 = atomic_load(&df_barriers);
    CHECK_EQ(b0, 0);
    verify_mapping(mon, shadow);
    /* The end of the burst: one barrier, then commits persist at once */
    CHECK_OK(pcow_monitor_defer_commits(mon, false, &err), &err);
    CHECK(!pcow_commits_deferred(pcow_monitor_image(mon)));
    CHECK_EQ(atomic_load(&df_barriers), 1);
    put(mon, shadow, 700 * CL, 100, 999);
    CHECK(atomic_load(&df_commit_syncs) >= 1);
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    return 0;
}

/*
 * --- flush-fail: a failed msync of guest data keeps the image dirty ------
 * The kernel reports a write-back error to one sync of the file only: if
 * the monitor's msync of the guest's mapping sees it, a later flush
 * succeeds although stores are lost.  So that failure must keep close
 * from marking the image clean, and a release must refuse.  Here msync
 * fails with ENOMEM: a page of the range (a hole nobody touches) is
 * unmapped by hand, then mapped again.
 */
static int t_flush_fail(void)
{
    const char *dir = test_dir("flush-fail");
    char path[4200];
    uint64_t size = 4 * MiB;
    uint8_t *shadow = calloc(1, size), *hole;
    pcow_monitor *mon;
    pcow_image *img;
    pcow_error err = { 0 };
    pcow_info info;
    uint64_t stamp;

    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    CHECK_OK(pcow_monitor_open(path, NULL, &mon, &err), &err);
    put(mon, shadow, 0, 3000, 1);
    hole = (uint8_t *)pcow_monitor_base(mon) + size - 4096;
    CHECK_EQ(munmap(hole, 4096), 0);
    /* A front end stating "cannot create snapshot" keeps the step's words */
    CHECK_EQ(pcow_monitor_snapshot_create(mon, "s1", NULL, &err), -ENOMEM);
    CHECK(strstr(err.msg + err.why, "flush failed"));
    memset(&err, 0, sizeof(err));
    CHECK_EQ(pcow_monitor_flush(mon, &err), -ENOMEM);
    CHECK(strstr(err.msg, path) && !strchr(err.msg, '\n'));
    CHECK(mmap(hole, 4096, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == hole);
    CHECK_OK(pcow_monitor_flush(mon, &err), &err);
    memset(&err, 0, sizeof(err));
    CHECK_EQ(pcow_monitor_release(mon, &stamp, &err), -ENOMEM);
    CHECK(strstr(err.msg, "cannot hand the image over"));
    /* Still this process's: writes go on, then close leaves it in use */
    put(mon, shadow, CL, 100, 2);
    memset(&err, 0, sizeof(err));
    CHECK_EQ(pcow_monitor_close(mon, &err), -ENOMEM);
    CHECK(strstr(err.msg, "not marked clean") && strstr(err.msg, path));
    CHECK_OK(pcow_open(path, NULL, &img, &err), &err);
    pcow_get_info(img, &info);
    CHECK(info.was_dirty);
    pcow_close(img, NULL);
    /* What close could make durable is there; a recovering open cleans */
    verify_image(path, shadow, size);
    {
        pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };

        CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
        CHECK_OK(pcow_close(img, &err), &err);
    }
    check_clean(path);
    free(shadow);
    return 0;
}

/*
 * --- populate: an expanded cluster's page tables come after the wake ----
 * The uffd thread fills them in when no fault waits; a burst of
 * expansions overflows its queue (the guest's touches fault those pages
 * in), and a revert right after the burst turns queued clusters back into
 * holes, which it must skip: populating a hole from the uffd thread would
 * wait for itself (the writes after the revert would hang).
 */
static int t_populate(void)
{
    const char *dir = test_dir("populate");
    char path[4200];
    uint64_t size = 32 * MiB, n = size / CL;
    uint8_t *shadow = calloc(1, size);
    pcow_error err = { 0 };
    pcow_monitor *mon;
    uint8_t *base;
    uint64_t i;
    int round, tries;

    alarm(120);         /* a hang fails, by SIGALRM */
    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    base = pcow_monitor_base(mon);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "empty", NULL, &err), &err);
    base[7 * CL + 4096] = 1;
    shadow[7 * CL + 4096] = 1;
    for (tries = 0; tries < 200; tries++) {
        for (i = 0; i < CL && page_present(base + 7 * CL + i); i += 4096) {
        }
        if (i == CL) {
            break;
        }
        usleep(10000);
    }
    check_present(base, 7 * CL, CL, true);
    verify_mapping(mon, shadow);
    for (round = 0; round < 3; round++) {
        /* one store per cluster, back to back: more than the queue holds */
        for (i = 0; i < n; i++) {
            base[i * CL + 8] = round + 2;
        }
        CHECK_OK(pcow_monitor_snapshot_revert(mon, "empty", &err), &err);
        memset(shadow, 0, size);
        verify_mapping(mon, shadow);
        put(mon, shadow, 3 * CL + 5, 3 * 4096, round + 10);
        verify_mapping(mon, shadow);
    }
    close_mon(mon);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    return 0;
}

/* pcow_mapping_count() of @path, what the monitor plans to map */
static uint64_t mappings_needed(const char *path)
{
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t n;

    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    CHECK_OK(pcow_mapping_count(img, &n, &err), &err);
    CHECK_OK(pcow_close(img, &err), &err);
    return n;
}

/*
 * A monitor on @path that reads it all: the statistics then (vmas from
 * /proc, vmas_needed, lazy) must say it needs @needed mappings, holds
 * as many and maps lazily or not as @lazy says.
 */
static void check_mappings(const char *path, const uint8_t *shadow,
                           uint64_t needed, bool lazy)
{
    pcow_monitor *mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    pcow_monitor_stats s;

    stats(mon, &s);
    CHECK_EQ(s.vmas_needed, needed);
    CHECK_EQ(s.lazy, lazy);
    CHECK_EQ(s.vmas, lazy ? 1 : needed);
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK_EQ(s.vmas, needed);
    close_mon(mon);
}

/*
 * Clusters written out of guest order: the monitor holds the mappings
 * libpcow counts, about one per cluster; after compact, as many as
 * there are guest runs and holes between them, with the same content,
 * whether it maps them at open or on first touch.
 */
static int t_compact(void)
{
    static const uint8_t order[] = { 9, 2, 40, 5, 3, 41, 8, 4, 6, 20,
                                     7, 42, 21, 43, 22 };
    const char *dir = test_dir("compact");
    uint64_t size = 8 * MiB, before;
    uint8_t *shadow = calloc(1, size);
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_compact_result res;
    pcow_error err = { 0 };
    pcow_monitor *mon;
    pcow_image *img;
    char path[4200];
    size_t i;

    CHECK(shadow);
    snprintf(path, sizeof(path), "%s/c.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    for (i = 0; i < sizeof(order); i++) {
        put(mon, shadow, order[i] * CL, CL, order[i] + 1);
    }
    close_mon(mon);
    before = mappings_needed(path);
    CHECK(before > 7);
    check_mappings(path, shadow, before, false);

    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    CHECK_OK(pcow_compact(img, &res, &err), &err);
    CHECK_OK(pcow_close(img, &err), &err);
    CHECK_EQ(res.mappings_before, before);
    /* Three runs (2-9, 20-22, 40-43) and four holes around them */
    CHECK_EQ(mappings_needed(path), 7);
    check_mappings(path, shadow, 7, false);
    /* Mapped cluster by cluster on first touch, the kernel merges them */
    setenv("PCOW_MONITOR_EAGER_MAX", "4", 1);
    check_mappings(path, shadow, 7, true);
    unsetenv("PCOW_MONITOR_EAGER_MAX");
    verify_image(path, shadow, size);
    check_clean(path);
    free(shadow);
    return 0;
}

/* --- opts.addr: the caller's reservation --------------------------------- */
static int t_addr(void)
{
    const char *dir = test_dir("addr");
    uint64_t size = 8 * MiB;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor_opts mo = { .flags = PCOW_MONITOR_NO_POOL };
    pcow_monitor *mon;
    pcow_error err = { 0 };
    char path[4200];
    uint8_t *res;

    CHECK(shadow);
    snprintf(path, sizeof(path), "%s/a.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    res = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
               MAP_NORESERVE, -1, 0);
    CHECK(res != MAP_FAILED);

    /* Not page aligned: refused, the reservation left alone */
    mo.addr = res + 100;
    CHECK_EQ(pcow_monitor_open(path, &mo, &mon, &err), -EINVAL);
    CHECK(strstr(err.msg, "not page aligned"));
    CHECK(msync(res, 4096, MS_ASYNC) == 0);

    /* A reservation of another length: refused before mapping anything */
    mo.addr = res;
    mo.addr_len = size / 2;
    CHECK_EQ(pcow_monitor_open(path, &mo, &mon, &err), -EINVAL);
    CHECK(strstr(err.msg, "is not the reservation's"));
    CHECK(msync(res, 4096, MS_ASYNC) == 0);
    mo.addr_len = size;

    /* At the reservation: data there, holes read zeros */
    mo.addr = res;
    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    CHECK(pcow_monitor_base(mon) == res);
    put(mon, shadow, 3 * CL + 10, 2 * CL, 7);
    CHECK(res[3 * CL + 10] == shadow[3 * CL + 10]);
    CHECK(res[CL] == 0 && res[size - 1] == 0);
    verify_mapping(mon, shadow);
    close_mon(mon);
    /* The monitor owned it: unmapped at close */
    CHECK(msync(res, 4096, MS_ASYNC) < 0 && errno == ENOMEM);
    check_clean(path);
    verify_image(path, shadow, size);

    /* Reopened at the same address, as an incoming migration would */
    res = mmap(res, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
               MAP_NORESERVE | MAP_FIXED, -1, 0);
    CHECK(res != MAP_FAILED);
    mo.flags = 0;
    CHECK_OK(pcow_monitor_open(path, &mo, &mon, &err), &err);
    CHECK(pcow_monitor_base(mon) == res);
    verify_mapping(mon, shadow);
    close_mon(mon);
    free(shadow);
    return 0;
}

/* --- hand over (release) and take back (reacquire) ---------------------- */
typedef struct ho_arg {
    pcow_monitor *mon;
    uint8_t *shadow;
    uint64_t off;
    uint32_t tag;
    _Atomic int *done;
} ho_arg;

static void *ho_writer(void *opaque)
{
    ho_arg *a = opaque;

    put(a->mon, a->shadow, a->off, 4096, a->tag);
    atomic_fetch_add(a->done, 1);
    return NULL;
}

static uint64_t stamp_of(const char *path, bool *clean)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_NO_LOCK };
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t s;

    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    s = pcow_open_stamp(img, clean);
    pcow_close(img, NULL);
    return s;
}

/*
 * Writers to a hole (uffd), a frozen cluster (COW) and an owned one (its
 * mapping was made read-only by the release) wait for the reacquire
 */
static void held_writes(pcow_monitor *mon, uint8_t *shadow)
{
    static const uint64_t offs[] = { 10 * CL, 4 * CL + 8192, 6 * CL + 100 };
    pthread_t th[3];
    ho_arg args[3];
    _Atomic int done = 0;
    pcow_monitor_stats s;
    pcow_error err = { 0 };
    int i;

    alarm(60);
    for (i = 0; i < 3; i++) {
        args[i] = (ho_arg){ mon, shadow, offs[i], 900 + i, &done };
        CHECK(pthread_create(&th[i], NULL, ho_writer, &args[i]) == 0);
    }
    usleep(3 * PCOW_MONITOR_RETRY_MS * 1000 / 2);
    stats(mon, &s);
    printf("released: %d of 3 writers done, %" PRIu64 " faults held\n",
           atomic_load(&done), s.held_faults);
    CHECK_EQ(atomic_load(&done), 0);
    CHECK(s.held_faults >= 2);
    CHECK_EQ(s.nospace_episodes, 0);
    CHECK_OK(pcow_monitor_reacquire(mon, &err), &err);
    CHECK(!pcow_monitor_released(mon));
    for (i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
    }
    alarm(0);
    CHECK_EQ(atomic_load(&done), 3);
    stats(mon, &s);
    CHECK_EQ(s.held_faults, 0);
    CHECK_EQ(s.errors, 0);
}

static int t_handover(void)
{
    const char *dir = test_dir("handover");
    uint64_t size = 16 * MiB, stamp, s2;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor_opts mo = { 0 };
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_monitor *mon, *mon2;
    pcow_error err = { 0 };
    pcow_image *img;
    char path[4200];
    bool clean;
    int i;

    CHECK(shadow);
    snprintf(path, sizeof(path), "%s/h.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, 0, 0);
    for (i = 0; i < 5; i++) {
        put(mon, shadow, (uint64_t)i * CL, CL, 800 + i);
    }
    CHECK_OK(pcow_monitor_snapshot_create(mon, "s1", NULL, &err), &err);
    put(mon, shadow, 0, 4096, 810);     /* a unit of cluster 0 ours again */
    put(mon, shadow, 6 * CL, CL, 811);  /* cluster 6 ours, mapped writable */

    /* The pool holds reserved clusters: the release must not leak them */
    for (i = 0; i < 200 && !pcow_reserve_count(pcow_monitor_image(mon));
         i++) {
        usleep(10000);
    }
    CHECK(pcow_reserve_count(pcow_monitor_image(mon)) > 0);

    /* Released: durable, clean (no leak), the stamp it left; readable */
    CHECK_OK(pcow_monitor_release(mon, &stamp, &err), &err);
    CHECK_EQ(pcow_reserve_count(pcow_monitor_image(mon)), 0);
    CHECK(pcow_monitor_released(mon));
    CHECK_EQ(stamp_of(path, &clean), stamp);
    CHECK(clean);
    check_clean(path);
    verify_image(path, shadow, size);
    verify_mapping(mon, shadow);
    CHECK_EQ(pcow_monitor_release(mon, NULL, &err), -EBADF);

    /* Another process takes it, expecting that stamp, and gives it back
     * unchanged (an incoming migration that failed before its guest ran) */
    mo.flags = PCOW_MONITOR_EXPECT_STAMP;
    mo.expect_stamp = stamp ^ 1;
    CHECK_EQ(pcow_monitor_open(path, &mo, &mon2, &err), -ESTALE);
    CHECK(strstr(err.msg, "image changed since this state was saved"));
    mo.expect_stamp = stamp;
    CHECK_OK(pcow_monitor_open(path, &mo, &mon2, &err), &err);
    CHECK_EQ(pcow_monitor_reacquire(mon, &err), -EBUSY);
    verify_mapping(mon2, shadow);
    pcow_keep_stamp(pcow_monitor_image(mon2));
    close_mon(mon2);
    CHECK_EQ(stamp_of(path, NULL), stamp);

    /* Writes while released wait; taken back, they complete */
    held_writes(mon, shadow);
    put(mon, shadow, 12 * CL, CL, 950);
    verify_mapping(mon, shadow);

    /* Released again and changed by another writer: not taken back */
    CHECK_OK(pcow_monitor_release(mon, &s2, &err), &err);
    CHECK(s2 != stamp);
    CHECK_OK(pcow_open(path, &oo, &img, &err), &err);
    CHECK_EQ(pcow_pwrite(img, 13 * CL, shadow, 4096, &err), 4096);
    memcpy(shadow + 13 * CL, shadow, 4096);
    CHECK_OK(pcow_close(img, &err), &err);
    CHECK_EQ(pcow_monitor_reacquire(mon, &err), -ESTALE);
    CHECK(strstr(err.msg, "changed by another process"));
    CHECK(pcow_monitor_released(mon));
    s2 = stamp_of(path, NULL);
    close_mon(mon);
    CHECK_EQ(stamp_of(path, NULL), s2);     /* the close wrote nothing */
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    return 0;
}

/*
 * A guest that only rewrites data the image already owns goes through no
 * libpcow write, yet it changes what a reader sees: the session must leave
 * a new stamp (libpcow marks the session when it hands out a writable
 * extent), or a state saved before would be restored onto it.
 */
static int t_stamp_written(void)
{
    const char *dir = test_dir("stamp-written");
    uint64_t size = 16 * MiB, s0;
    uint8_t *shadow = calloc(1, size);
    pcow_monitor *mon;
    char path[4200];

    CHECK(shadow);
    snprintf(path, sizeof(path), "%s/w.pcow", dir);
    make_image(path, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    put(mon, shadow, 0, CL, 700);
    close_mon(mon);
    s0 = stamp_of(path, NULL);
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    close_mon(mon);
    printf("a session that maps the image writable: stamp %#" PRIx64
           " -> %#" PRIx64 "\n", s0, stamp_of(path, NULL));
    CHECK(stamp_of(path, NULL) != s0);
    s0 = stamp_of(path, NULL);
    mon = open_mon(path, PCOW_MONITOR_NO_POOL, 0);
    memset(pcow_monitor_base(mon) + 100, 0x5a, 100);    /* owned data */
    memset(shadow + 100, 0x5a, 100);
    close_mon(mon);
    CHECK(stamp_of(path, NULL) != s0);
    check_clean(path);
    verify_image(path, shadow, size);
    free(shadow);
    return 0;
}

/*
 * --- clones: two monitors on two clones of one template snapshot ---------
 * Both map the snapshot's clusters MAP_SHARED from the template file: the
 * same page-cache pages (the same PFN in /proc/self/pagemap, which shows
 * PFNs to root only: else that part is skipped and said so).  Writes copy
 * into each clone alone; the template stays as it was.
 */
static uint64_t pfn_of(int pm, const void *addr)
{
    uint64_t e = 0;

    CHECK(pread(pm, &e, 8, (uintptr_t)addr / 4096 * 8) == 8);
    return (e & (1ull << 63)) ? e & ((1ull << 55) - 1) : 0;
}

/* Pages of [0, len) mapped to the same page frame in both mappings */
static uint64_t shared_pages(int pm, const uint8_t *a, const uint8_t *b,
                             uint64_t len, uint64_t *known)
{
    volatile uint8_t sink = 0;
    uint64_t off, same = 0;

    *known = 0;
    for (off = 0; off < len; off += 4096) {
        uint64_t pa, pb;

        sink += a[off] + b[off];            /* fault both in */
        pa = pfn_of(pm, a + off);
        pb = pfn_of(pm, b + off);
        if (pa && pb) {
            (*known)++;
            same += pa == pb;
        }
    }
    (void)sink;
    return same;
}

static int t_clones(void)
{
    const char *dir = test_dir("clones");
    char tp[4200], c1[4200], c2[4200];
    uint64_t size = 8 * MiB, data = 2 * MiB, known, same;
    uint8_t *snap = calloc(1, size), *active, *s1, *s2;
    pcow_monitor *ma, *mb;
    pcow_monitor_stats sa, sb;
    pcow_error err = { 0 };
    int pm;

    snprintf(tp, sizeof(tp), "%s/t.pcow", dir);
    snprintf(c1, sizeof(c1), "%s/c1.pcow", dir);
    snprintf(c2, sizeof(c2), "%s/c2.pcow", dir);
    make_image(tp, size, CL, NULL, PCOW_BACKING_NONE);
    ma = open_mon(tp, 0, 0);
    put(ma, snap, 0, data, 1);
    CHECK_OK(pcow_monitor_snapshot_create(ma, "gold", NULL, &err), &err);
    active = malloc(size);
    memcpy(active, snap, size);
    put(ma, active, 0, 64 * KiB, 2);        /* the template moves on */
    close_mon(ma);
    CHECK_OK(pcow_clone(tp, "gold", c1, NULL, NULL, &err), &err);
    CHECK_OK(pcow_clone(tp, "gold", c2, NULL, NULL, &err), &err);

    ma = open_mon(c1, 0, 0);
    mb = open_mon(c2, 0, 0);
    verify_mapping(ma, snap);
    verify_mapping(mb, snap);
    pm = open("/proc/self/pagemap", O_RDONLY);
    CHECK(pm >= 0);
    same = shared_pages(pm, pcow_monitor_base(ma), pcow_monitor_base(mb),
                        data, &known);
    if (known) {
        printf("clones: %" PRIu64 " of %" PRIu64 " template pages mapped "
               "by both monitors are the same page frame\n", same, known);
        CHECK_EQ(same, data / 4096);
    } else {
        printf("clones: pagemap shows no PFNs here (not root): page "
               "sharing not measured\n");
    }

    /* Writes copy into each clone alone */
    s1 = malloc(size);
    s2 = malloc(size);
    memcpy(s1, snap, size);
    memcpy(s2, snap, size);
    put(ma, s1, 4 * KiB, 100, 3);
    put(mb, s2, 8 * KiB, 100, 4);
    put(ma, s1, 3 * MiB, 100, 5);           /* a hole in the template */
    verify_mapping(ma, s1);
    verify_mapping(mb, s2);
    stats(ma, &sa);
    stats(mb, &sb);
    CHECK_EQ(sa.errors + sb.errors, 0);
    CHECK(sa.cow_unit_faults + sa.cow_cluster_faults >= 1);
    CHECK(sb.cow_unit_faults + sb.cow_cluster_faults >= 1);
    if (known) {
        same = shared_pages(pm, pcow_monitor_base(ma), pcow_monitor_base(mb),
                            data, &known);
        printf("clones: after one write in each, %" PRIu64 " of %" PRIu64
               " pages still shared; COW units copied: %" PRIu64 " and %"
               PRIu64 "\n", same, known, sa.cow_unit_faults,
               sb.cow_unit_faults);
        CHECK_EQ(same, data / 4096 - 2);
    }
    close(pm);
    close_mon(ma);
    close_mon(mb);
    check_clean(c1);
    check_clean(c2);
    check_clean(tp);
    verify_image(c1, s1, size);
    verify_image(c2, s2, size);
    verify_image(tp, active, size);
    free(snap);
    free(active);
    free(s1);
    free(s2);
    return 0;
}

/*
 * --- clone reset (loadvm of a clone's origin on a running clone) -------
 * A fresh clone reset copies and expands nothing; after writes, the reset
 * range reads the template's snapshot again, and writes copy anew.
 */
static int t_clone_reset(void)
{
    const char *dir = test_dir("clone-reset");
    char tp[4200], c1[4200];
    uint64_t size = 8 * MiB;
    uint8_t *snap = calloc(1, size), *shadow = malloc(size);
    pcow_monitor *mon;
    pcow_monitor_stats s;
    pcow_error err = { 0 };

    snprintf(tp, sizeof(tp), "%s/t.pcow", dir);
    snprintf(c1, sizeof(c1), "%s/c1.pcow", dir);
    make_image(tp, size, CL, NULL, PCOW_BACKING_NONE);
    mon = open_mon(tp, 0, 0);
    put(mon, snap, 0, 2 * MiB, 1);
    CHECK_OK(pcow_monitor_snapshot_create(mon, "gold", NULL, &err), &err);
    /* Not a clone: refused, the mapping unchanged */
    CHECK(pcow_monitor_clone_reset(mon, &err) == -EINVAL);
    CHECK(strstr(err.msg, "not a clone") != NULL);
    verify_mapping(mon, snap);
    close_mon(mon);
    CHECK_OK(pcow_clone(tp, "gold", c1, NULL, NULL, &err), &err);

    mon = open_mon(c1, 0, 0);
    CHECK_OK(pcow_monitor_clone_reset(mon, &err), &err);
    verify_mapping(mon, snap);
    stats(mon, &s);
    CHECK_EQ(s.expansions + s.cow_unit_faults + s.cow_cluster_faults, 0);
    memcpy(shadow, snap, size);
    put(mon, shadow, 4 * KiB, 100, 2);      /* COW from the template */
    put(mon, shadow, 5 * MiB, 100, 3);      /* a hole expanded */
    verify_mapping(mon, shadow);
    CHECK_OK(pcow_monitor_clone_reset(mon, &err), &err);
    verify_mapping(mon, snap);
    stats(mon, &s);
    CHECK_EQ(s.errors, 0);
    memcpy(shadow, snap, size);
    put(mon, shadow, 4 * KiB, 100, 4);      /* frozen again: copies again */
    verify_mapping(mon, shadow);
    stats(mon, &s);
    CHECK(s.cow_unit_faults + s.cow_cluster_faults >= 2);
    close_mon(mon);
    check_clean(c1);
    check_clean(tp);
    verify_image(c1, shadow, size);
    free(snap);
    free(shadow);
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(void);
} cases[] = {
    { "hole-read", t_hole_read },
    { "expand", t_expand },
    { "cow", t_cow },
    { "snapshot", t_snapshot },
    { "revert", t_revert },
    { "vm-state", t_vm_state },
    { "base", t_base },
    { "base-cut", t_base_cut },
    { "threads", t_threads },
    { "two-monitors", t_two },
    { "foreign-segv", t_foreign_segv },
    { "cow-fail", t_cow_fail },
    { "disk-full", t_disk_full },
    { "nospace-hole", t_nospace_hole },
    { "nospace-cow", t_nospace_cow },
    { "nospace-budget", t_nospace_budget },
    { "crash", t_crash },
    { "file-kinds", t_file_kinds },
    { "blockdev-base", t_blockdev_base },
    { "prefault", t_prefault },
    { "populate", t_populate },
    { "defer", t_defer },
    { "flush-fail", t_flush_fail },
    { "compact", t_compact },
    { "addr", t_addr },
    { "handover", t_handover },
    { "stamp-written", t_stamp_written },
    { "clones", t_clones },
    { "clone-reset", t_clone_reset },
};

int main(int argc, char **argv)
{
    size_t i;

    setvbuf(stdout, NULL, _IONBF, 0);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (argc > 1 && !strcmp(argv[1], cases[i].name)) {
            int r = cases[i].fn();

            if (r == 0) {
                printf("%s: ok\n", cases[i].name);
            }
            return r;
        }
    }
    fprintf(stderr, "usage: %s CASE  (", argv[0]);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fprintf(stderr, "%s%s", i ? " " : "", cases[i].name);
    }
    fprintf(stderr, ")\n");
    return 2;
}
