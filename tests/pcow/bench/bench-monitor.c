/*
 * Image Monitor and libpcow benchmark (a command, not a test)
 *
 *   bench-monitor [DIR...]     default: /dev/shm and the current directory
 *
 * For each directory: expansion latency (first store to a hole) with and
 * without the pre-allocation pool, with 100 us gaps and back to back;
 * libpcow's pcow_expand_cluster() from a full reserve; COW of a 4 KiB unit,
 * of a whole 64 KiB cluster and of the 15 units left after escalation;
 * hole-read faults; steady-state bandwidth against a plain mmap of a raw
 * file; create and open of a 64 TiB image.  In the first directory (or all
 * of them with PCOW_BENCH_1M=all): an image with 1M allocated 4 KiB
 * clusters, allocated in random and in sequential order, opened by libpcow
 * and by the monitor.  Latencies are measured in the faulting thread,
 * around the first access.  Each figure's table label and JSON key name
 * what was measured; the benchmark checks that claim (e.g. how many COW
 * units were copied) and fails if it does not hold.
 *
 * The last line is one JSON object: {"dirs": [{"dir": D, "metrics":
 * {KEY: VALUE}}...]}; a figure that was not measured is null.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pcow/monitor.h"

#define KiB 1024ull
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)
#define TiB (1024 * GiB)
#define CL (64 * KiB)
#define NFAULTS 2000
#define NEXPAND 1000
#define MAXDIRS 8

/* Every figure; a value stays NAN (JSON null) unless it was measured. */
enum {
    M_EXP_PACED_POOL_P50, M_EXP_PACED_POOL_P99,
    M_EXP_PACED_NOPOOL_P50, M_EXP_PACED_NOPOOL_P99,
    M_EXP_B2B_POOL_P50, M_EXP_B2B_POOL_P99, M_EXP_B2B_POOL_MEAN,
    M_EXP_B2B_NOPOOL_P50, M_EXP_B2B_NOPOOL_P99, M_EXP_B2B_NOPOOL_MEAN,
    M_POOL_PACED_HITS, M_POOL_PACED_MISSES,
    M_POOL_B2B_HITS, M_POOL_B2B_MISSES,
    M_LIB_EXP_N, M_LIB_EXP_MEAN, M_LIB_EXP_P50, M_LIB_EXP_P99,
    M_COW_UNIT_P50, M_COW_UNIT_P99,
    M_COW_WHOLE_P50, M_COW_WHOLE_P99,
    M_COW_REST_P50, M_COW_REST_P99,
    M_HOLE_P50, M_HOLE_P99,
    M_RAND_MON, M_RAND_RAW, M_RAND_RATIO,
    M_SEQ_MON, M_SEQ_RAW, M_SEQ_RATIO,
    M_64T_CREATE, M_64T_OPEN_RW, M_64T_ROUNDTRIP,
    M_1MR_LIB_RO, M_1MR_LIB_RW, M_1MR_MON, M_1MR_VMAS, M_1MR_LAZY,
    M_1MR_TOUCH_P50, M_1MR_TOUCH_P99,
    M_1MS_LIB_RO, M_1MS_LIB_RW, M_1MS_MON, M_1MS_VMAS, M_1MS_LAZY,
    M_1MS_TOUCH_P50, M_1MS_TOUCH_P99,
    M_COUNT
};

typedef struct metric {
    const char *key;    /* JSON key */
    const char *label;  /* table row: says exactly what was measured */
    const char *unit;   /* "us", "s", "MiB/s", "x", "count", "bool" */
} metric;

#define EXP "expansion (1st store to a hole, 64K cl), "
#define R1M "1M 4K clusters, random alloc order: "
#define S1M "1M 4K clusters, sequential alloc order: "

static const metric metrics[M_COUNT] = {
    [M_EXP_PACED_POOL_P50] = { "expansion_gap100us_pool_p50_us",
                               EXP "100 us gaps, pool on: p50", "us" },
    [M_EXP_PACED_POOL_P99] = { "expansion_gap100us_pool_p99_us",
                               EXP "100 us gaps, pool on: p99", "us" },
    [M_EXP_PACED_NOPOOL_P50] = { "expansion_gap100us_nopool_p50_us",
                                 EXP "100 us gaps, pool off: p50", "us" },
    [M_EXP_PACED_NOPOOL_P99] = { "expansion_gap100us_nopool_p99_us",
                                 EXP "100 us gaps, pool off: p99", "us" },
    [M_EXP_B2B_POOL_P50] = { "expansion_b2b_pool_p50_us",
                             EXP "back to back, pool on: p50", "us" },
    [M_EXP_B2B_POOL_P99] = { "expansion_b2b_pool_p99_us",
                             EXP "back to back, pool on: p99", "us" },
    [M_EXP_B2B_POOL_MEAN] = { "expansion_b2b_pool_mean_us",
                              EXP "back to back, pool on: mean", "us" },
    [M_EXP_B2B_NOPOOL_P50] = { "expansion_b2b_nopool_p50_us",
                               EXP "back to back, pool off: p50", "us" },
    [M_EXP_B2B_NOPOOL_P99] = { "expansion_b2b_nopool_p99_us",
                               EXP "back to back, pool off: p99", "us" },
    [M_EXP_B2B_NOPOOL_MEAN] = { "expansion_b2b_nopool_mean_us",
                                EXP "back to back, pool off: mean", "us" },
    [M_POOL_PACED_HITS] = { "pool_gap100us_hits",
                            "pool hits, expansion with 100 us gaps", "count" },
    [M_POOL_PACED_MISSES] = { "pool_gap100us_misses",
                              "pool misses, expansion with 100 us gaps",
                              "count" },
    [M_POOL_B2B_HITS] = { "pool_b2b_hits",
                          "pool hits, expansion back to back", "count" },
    [M_POOL_B2B_MISSES] = { "pool_b2b_misses",
                            "pool misses, expansion back to back", "count" },
    [M_LIB_EXP_N] = { "lib_expand_reserve_calls",
                      "libpcow pcow_expand_cluster, full reserve: calls "
                      "timed", "count" },
    [M_LIB_EXP_MEAN] = { "lib_expand_reserve_mean_us",
                         "libpcow pcow_expand_cluster, full reserve: mean",
                         "us" },
    [M_LIB_EXP_P50] = { "lib_expand_reserve_p50_us",
                        "libpcow pcow_expand_cluster, full reserve: p50",
                        "us" },
    [M_LIB_EXP_P99] = { "lib_expand_reserve_p99_us",
                        "libpcow pcow_expand_cluster, full reserve: p99",
                        "us" },
    [M_COW_UNIT_P50] = { "cow_4k_unit_p50_us",
                         "COW, 1st store to a frozen 64K cluster, copies "
                         "one 4K unit: p50", "us" },
    [M_COW_UNIT_P99] = { "cow_4k_unit_p99_us",
                         "COW, 1st store to a frozen 64K cluster, copies "
                         "one 4K unit: p99", "us" },
    [M_COW_WHOLE_P50] = { "cow_whole_64k_cluster_p50_us",
                          "COW, 1st store, 64K COW unit: copies the whole "
                          "64K cluster: p50", "us" },
    [M_COW_WHOLE_P99] = { "cow_whole_64k_cluster_p99_us",
                          "COW, 1st store, 64K COW unit: copies the whole "
                          "64K cluster: p99", "us" },
    [M_COW_REST_P50] = { "cow_escalate_15_of_16_units_p50_us",
                         "COW, 2nd store, cow_escalate 1: copies the other "
                         "15 of 16 4K units: p50", "us" },
    [M_COW_REST_P99] = { "cow_escalate_15_of_16_units_p99_us",
                         "COW, 2nd store, cow_escalate 1: copies the other "
                         "15 of 16 4K units: p99", "us" },
    [M_HOLE_P50] = { "hole_read_p50_us", "hole read fault: p50", "us" },
    [M_HOLE_P99] = { "hole_read_p99_us", "hole read fault: p99", "us" },
    [M_RAND_MON] = { "steady_rand4k_pcow_MiBps",
                     "steady 4K random r/w, pcow monitor mapping", "MiB/s" },
    [M_RAND_RAW] = { "steady_rand4k_raw_MiBps",
                     "steady 4K random r/w, plain mmap of a raw file",
                     "MiB/s" },
    [M_RAND_RATIO] = { "steady_rand4k_pcow_over_raw",
                       "steady 4K random r/w, pcow / raw", "x" },
    [M_SEQ_MON] = { "steady_seq1m_pcow_MiBps",
                    "steady 1M sequential r/w, pcow monitor mapping",
                    "MiB/s" },
    [M_SEQ_RAW] = { "steady_seq1m_raw_MiBps",
                    "steady 1M sequential r/w, plain mmap of a raw file",
                    "MiB/s" },
    [M_SEQ_RATIO] = { "steady_seq1m_pcow_over_raw",
                      "steady 1M sequential r/w, pcow / raw", "x" },
    [M_64T_CREATE] = { "create_64tib_s", "pcow_create of a 64 TiB image",
                       "s" },
    [M_64T_OPEN_RW] = { "open_rw_64tib_s",
                        "pcow_open read-write of the empty 64 TiB image",
                        "s" },
    [M_64T_ROUNDTRIP] = { "roundtrip_64tib_s",
                          "64 TiB: open rw, 2 writes, close, open ro, "
                          "3 reads, close", "s" },
    [M_1MR_LIB_RO] = { "lib_open_ro_1m_random_s",
                       R1M "pcow_open read-only", "s" },
    [M_1MR_LIB_RW] = { "lib_open_rw_1m_random_s",
                       R1M "pcow_open read-write", "s" },
    [M_1MR_MON] = { "monitor_open_1m_random_s",
                    R1M "pcow_monitor_open, max_vmas 4M", "s" },
    [M_1MR_VMAS] = { "monitor_open_1m_random_vmas",
                     R1M "mappings after monitor open", "count" },
    [M_1MR_LAZY] = { "monitor_open_1m_random_lazy",
                     R1M "monitor maps lazily, on first touch",
                     "bool" },
    [M_1MR_TOUCH_P50] = { "monitor_1m_random_first_read_p50_us",
                          R1M "first read of a cluster after open: p50",
                          "us" },
    [M_1MR_TOUCH_P99] = { "monitor_1m_random_first_read_p99_us",
                          R1M "first read of a cluster after open: p99",
                          "us" },
    [M_1MS_LIB_RO] = { "lib_open_ro_1m_sequential_s",
                       S1M "pcow_open read-only", "s" },
    [M_1MS_LIB_RW] = { "lib_open_rw_1m_sequential_s",
                       S1M "pcow_open read-write", "s" },
    [M_1MS_MON] = { "monitor_open_1m_sequential_s",
                    S1M "pcow_monitor_open, max_vmas 4M", "s" },
    [M_1MS_VMAS] = { "monitor_open_1m_sequential_vmas",
                     S1M "mappings after monitor open", "count" },
    [M_1MS_LAZY] = { "monitor_open_1m_sequential_lazy",
                     S1M "monitor maps lazily, on first touch",
                     "bool" },
    [M_1MS_TOUCH_P50] = { "monitor_1m_sequential_first_read_p50_us",
                          S1M "first read of a cluster after open: p50",
                          "us" },
    [M_1MS_TOUCH_P99] = { "monitor_1m_sequential_first_read_p99_us",
                          S1M "first read of a cluster after open: p99",
                          "us" },
};

typedef struct result {
    double v[M_COUNT];
} result;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static double secs_since(uint64_t t0)
{
    return (now_ns() - t0) / 1e9;
}

static void die(const char *what, const pcow_error *err)
{
    fprintf(stderr, "bench-monitor: %s%s%s\n", what, err ? ": " : "",
            err ? err->msg : "");
    exit(1);
}

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Sorts @v: p50 and p99 (and the mean) of n nanosecond samples, in us. */
static void percentiles(uint64_t *v, int n, double *p50, double *p99,
                        double *mean)
{
    uint64_t sum = 0;
    int i;

    qsort(v, n, sizeof(*v), cmp_u64);
    for (i = 0; i < n; i++) {
        sum += v[i];
    }
    *p50 = v[(n - 1) / 2] / 1000.0;
    *p99 = v[(int)((n - 1) * 0.99)] / 1000.0;
    if (mean) {
        *mean = sum / 1000.0 / n;
    }
}

static void create(const char *path, uint64_t size, uint32_t cluster,
                   uint32_t unit)
{
    pcow_create_opts co = { .virtual_size = size, .cluster_size = cluster,
                            .cow_unit = unit };
    pcow_error err = { 0 };

    unlink(path);
    if (pcow_create(path, &co, &err) < 0) {
        die("create", &err);
    }
}

static pcow_image *iopen(const char *path, unsigned flags)
{
    pcow_open_opts oo = { .flags = flags };
    pcow_image *img;
    pcow_error err = { 0 };

    if (pcow_open(path, &oo, &img, &err) < 0) {
        die("open", &err);
    }
    return img;
}

static void iclose(pcow_image *img)
{
    pcow_error err = { 0 };

    if (pcow_close(img, &err) < 0) {
        die("close", &err);
    }
}

static pcow_monitor *mopen(const char *path, unsigned flags, uint32_t esc)
{
    pcow_monitor_opts mo = { .flags = flags, .cow_escalate = esc };
    pcow_monitor *mon;
    pcow_error err = { 0 };

    if (pcow_monitor_open(path, &mo, &mon, &err) < 0) {
        die("monitor open", &err);
    }
    return mon;
}

static void mclose(pcow_monitor *mon)
{
    pcow_error err = { 0 };

    if (pcow_monitor_close(mon, &err) < 0) {
        die("monitor close", &err);
    }
}

static void pause_us(int us)
{
    struct timespec ts = { 0, us * 1000 };

    nanosleep(&ts, NULL);
}

/*
 * First stores to NFAULTS holes, @gap_us apart (0: back to back; with the
 * pool, gaps let the pool thread refill between faults).
 */
static void bench_expansion(const char *dir, bool pool, int gap_us,
                            result *res, int m_p50, int m_hits)
{
    char path[4096];
    uint64_t lat[NFAULTS];
    pcow_monitor *mon;
    pcow_monitor_stats st;
    volatile char *p;
    double mean;
    int i;

    snprintf(path, sizeof(path), "%s/bench-exp.pcow", dir);
    create(path, (uint64_t)NFAULTS * CL, CL, 0);
    mon = mopen(path, pool ? 0 : PCOW_MONITOR_NO_POOL, 0);
    p = pcow_monitor_base(mon);
    pause_us(20000);
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        p[(uint64_t)i * CL] = 1;
        lat[i] = now_ns() - t0;
        if (gap_us) {
            pause_us(gap_us);
        }
    }
    percentiles(lat, NFAULTS, &res->v[m_p50], &res->v[m_p50 + 1], &mean);
    if (!gap_us) {
        res->v[m_p50 + 2] = mean;
    }
    pcow_monitor_get_stats(mon, &st);
    if (st.expansions != NFAULTS) {
        fprintf(stderr, "bench-monitor: %llu expansions, expected %d\n",
                (unsigned long long)st.expansions, NFAULTS);
        exit(1);
    }
    if (pool) {
        res->v[m_hits] = st.pool_hits;
        res->v[m_hits + 1] = st.pool_misses;
    }
    mclose(mon);
    unlink(path);
}

/* libpcow alone (no fault): expansion from a full reserve, per call. */
static void bench_lib_expand(const char *dir, result *res)
{
    char path[4096];
    uint64_t lat[NEXPAND], off;
    pcow_image *img;
    int i, n = NEXPAND;

    snprintf(path, sizeof(path), "%s/bench-libexp.pcow", dir);
    create(path, 64 * GiB, CL, 0);
    img = iopen(path, PCOW_OPEN_RDWR);
    /* Cluster 0 creates the L2 table the timed calls use. */
    if (pcow_expand_cluster(img, 0, &off) < 0) {
        die("expand", NULL);
    }
    while (pcow_reserve_count(img) < (uint32_t)n) {
        uint32_t before = pcow_reserve_count(img);

        if (pcow_reserve_clusters(img, 64, NULL) <= before) {
            n = before;     /* the reserve is full: time that many */
            break;
        }
    }
    for (i = 0; i < n; i++) {
        uint64_t t0 = now_ns();

        if (pcow_expand_cluster(img, i + 1, &off) < 0) {
            die("expand", NULL);
        }
        lat[i] = now_ns() - t0;
    }
    res->v[M_LIB_EXP_N] = n;
    percentiles(lat, n, &res->v[M_LIB_EXP_P50], &res->v[M_LIB_EXP_P99],
                &res->v[M_LIB_EXP_MEAN]);
    iclose(img);
    unlink(path);
}

/* Every cluster of the image must have @units COW units copied. */
static void check_units(pcow_monitor *mon, unsigned units, const char *what)
{
    pcow_image *img = pcow_monitor_image(mon);
    int i;

    for (i = 0; i < NFAULTS; i++) {
        unsigned n = pcow_cow_units_copied(img, (uint64_t)i * CL);

        if (n != units) {
            fprintf(stderr, "bench-monitor: %s: cluster %d has %u units "
                    "copied, expected %u\n", what, i, n, units);
            exit(1);
        }
    }
}

/* A written image with a snapshot, so that every cluster is frozen. */
static pcow_monitor *frozen(const char *path, uint32_t unit, uint32_t esc)
{
    pcow_monitor *mon;
    pcow_error err = { 0 };
    char *p;
    int i;

    create(path, (uint64_t)NFAULTS * CL, CL, unit);
    mon = mopen(path, 0, esc);
    p = pcow_monitor_base(mon);
    for (i = 0; i < NFAULTS; i++) {
        memset(p + (uint64_t)i * CL, i, CL);
    }
    if (pcow_monitor_snapshot_create(mon, "bench", NULL, &err) < 0) {
        die("snapshot", &err);
    }
    pause_us(20000);
    return mon;
}

/* One store at byte @at of every cluster, timed. */
static void cow_pass(pcow_monitor *mon, uint64_t at, double *p50,
                     double *p99)
{
    uint64_t lat[NFAULTS];
    volatile char *p = pcow_monitor_base(mon);
    int i;

    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        p[(uint64_t)i * CL + at] = 1;
        lat[i] = now_ns() - t0;
        pause_us(50);
    }
    percentiles(lat, NFAULTS, p50, p99, NULL);
}

static void bench_cow(const char *dir, result *res)
{
    char path[4096];
    pcow_monitor *mon;

    snprintf(path, sizeof(path), "%s/bench-cow.pcow", dir);
    /* cow_escalate 1: the 1st store copies a unit, the 2nd the other 15. */
    mon = frozen(path, 4 * KiB, 1);
    cow_pass(mon, 0, &res->v[M_COW_UNIT_P50], &res->v[M_COW_UNIT_P99]);
    check_units(mon, 1, "4 KiB COW");
    cow_pass(mon, 8 * 4096, &res->v[M_COW_REST_P50],
             &res->v[M_COW_REST_P99]);
    check_units(mon, CL / (4 * KiB), "escalated COW");
    mclose(mon);
    /* A 64 KiB COW unit: the 1st store copies the whole cluster. */
    mon = frozen(path, CL, 0);
    cow_pass(mon, 0, &res->v[M_COW_WHOLE_P50], &res->v[M_COW_WHOLE_P99]);
    if (pcow_cow_unit(pcow_monitor_image(mon)) != CL) {
        die("the image's COW unit is not 64 KiB", NULL);
    }
    check_units(mon, 1, "whole-cluster COW");
    mclose(mon);
    unlink(path);
}

static void bench_hole_read(const char *dir, result *res)
{
    char path[4096];
    uint64_t lat[NFAULTS];
    pcow_monitor *mon;
    volatile char *p;
    char sum = 0;
    int i;

    snprintf(path, sizeof(path), "%s/bench-hole.pcow", dir);
    create(path, (uint64_t)NFAULTS * CL, CL, 0);
    mon = mopen(path, 0, 0);
    p = pcow_monitor_base(mon);
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        sum += p[(uint64_t)i * CL];
        lat[i] = now_ns() - t0;
    }
    percentiles(lat, NFAULTS, &res->v[M_HOLE_P50], &res->v[M_HOLE_P99],
                NULL);
    mclose(mon);
    unlink(path);
    if (sum) {
        die("a hole did not read as zero", NULL);
    }
}

/* MiB/s of 4 KiB random read+write and 1 MiB sequential read+write. */
static double bw_rand4k(char *p, uint64_t size)
{
    static char buf[4096];
    uint64_t x = 88172645463325252ull;
    uint64_t t0 = now_ns(), bytes = 0;
    int i;

    while (now_ns() - t0 < 400000000ull) {
        for (i = 0; i < 256; i++) {
            uint64_t off = (xorshift(&x) % (size / 4096)) * 4096;

            if (i & 1) {
                memcpy(p + off, buf, 4096);
            } else {
                memcpy(buf, p + off, 4096);
            }
            bytes += 4096;
        }
    }
    return bytes / secs_since(t0) / MiB;
}

static double bw_seq1m(char *p, uint64_t size)
{
    static char buf[MiB];
    uint64_t t0 = now_ns(), bytes = 0, off = 0;
    int i = 0;

    while (now_ns() - t0 < 400000000ull) {
        if (i++ & 1) {
            memcpy(p + off, buf, MiB);
        } else {
            memcpy(buf, p + off, MiB);
        }
        bytes += MiB;
        off = (off + MiB) % size;
    }
    return bytes / secs_since(t0) / MiB;
}

static void bench_steady(const char *dir, result *res)
{
    char path[4096], raw[4096];
    uint64_t size = 256 * MiB;
    pcow_monitor *mon;
    char *p, *r;
    int fd, round;

    snprintf(path, sizeof(path), "%s/bench-steady.pcow", dir);
    snprintf(raw, sizeof(raw), "%s/bench-steady.raw", dir);
    create(path, size, CL, 0);
    mon = mopen(path, 0, 0);
    p = pcow_monitor_base(mon);
    memset(p, 1, size);
    fd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, size) < 0) {
        die("raw file", NULL);
    }
    r = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == MAP_FAILED) {
        die("raw mmap", NULL);
    }
    memset(r, 1, size);
    /* Best of three, alternating, to tame noise on a shared machine. */
    res->v[M_RAND_MON] = res->v[M_RAND_RAW] = 0;
    res->v[M_SEQ_MON] = res->v[M_SEQ_RAW] = 0;
    for (round = 0; round < 3; round++) {
        res->v[M_RAND_RAW] = fmax(res->v[M_RAND_RAW], bw_rand4k(r, size));
        res->v[M_RAND_MON] = fmax(res->v[M_RAND_MON], bw_rand4k(p, size));
        res->v[M_SEQ_RAW] = fmax(res->v[M_SEQ_RAW], bw_seq1m(r, size));
        res->v[M_SEQ_MON] = fmax(res->v[M_SEQ_MON], bw_seq1m(p, size));
    }
    res->v[M_RAND_RATIO] = res->v[M_RAND_MON] / res->v[M_RAND_RAW];
    res->v[M_SEQ_RATIO] = res->v[M_SEQ_MON] / res->v[M_SEQ_RAW];
    munmap(r, size);
    close(fd);
    unlink(raw);
    mclose(mon);
    unlink(path);
}

static void expect_fill(pcow_image *img, uint64_t off, uint64_t len, int c)
{
    static char buf[64 * KiB];
    pcow_error err = { 0 };
    uint64_t i;

    if (pcow_pread(img, off, buf, len, &err) < 0) {
        die("pread 64 TiB", &err);
    }
    for (i = 0; i < len; i++) {
        if (buf[i] != (char)c) {
            die("64 TiB image: wrong data read back", NULL);
        }
    }
}

/* A 64 TiB image (64 KiB clusters): its 4 MiB L1 table stays sparse. */
static void bench_64t(const char *dir, result *res)
{
    char path[4096], buf[4096];
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t t0;

    snprintf(path, sizeof(path), "%s/bench-64t.pcow", dir);
    unlink(path);
    t0 = now_ns();
    create(path, 64 * TiB, 0, 0);
    res->v[M_64T_CREATE] = secs_since(t0);
    t0 = now_ns();
    img = iopen(path, PCOW_OPEN_RDWR);
    res->v[M_64T_OPEN_RW] = secs_since(t0);
    iclose(img);
    t0 = now_ns();
    img = iopen(path, PCOW_OPEN_RDWR);
    memset(buf, 0x5a, sizeof(buf));
    if (pcow_pwrite(img, 64 * TiB - 4096, buf, 4096, &err) < 0) {
        die("pwrite 64 TiB", &err);
    }
    memset(buf, 0xa5, sizeof(buf));
    if (pcow_pwrite(img, 0, buf, 4096, &err) < 0) {
        die("pwrite 64 TiB", &err);
    }
    iclose(img);
    img = iopen(path, 0);
    expect_fill(img, 64 * TiB - 4096, 4096, 0x5a);
    expect_fill(img, 0, 4096, 0xa5);
    expect_fill(img, 32 * TiB, 64 * KiB, 0);
    iclose(img);
    res->v[M_64T_ROUNDTRIP] = secs_since(t0);
    unlink(path);
}

/* 1M allocated 4 KiB clusters, in random or sequential order. */
static void make_1m(const char *path, bool random_order)
{
    const uint64_t n = 1 << 20;
    static char big[4 * MiB];
    pcow_error err = { 0 };
    pcow_image *img;
    uint32_t *order;
    uint64_t i, x = 0x2545f4914f6cdd1dull;

    create(path, n * 4096, 4096, 0);
    img = iopen(path, PCOW_OPEN_RDWR);
    memset(big, 0x5a, sizeof(big));
    if (!random_order) {
        /* Large writes allocate in order. */
        for (i = 0; i < n * 4096; i += sizeof(big)) {
            if (pcow_pwrite(img, i, big, sizeof(big), &err) < 0) {
                die("pwrite 1m", &err);
            }
        }
        iclose(img);
        return;
    }
    order = malloc(n * sizeof(*order));
    if (!order) {
        die("out of memory", NULL);
    }
    for (i = 0; i < n; i++) {
        order[i] = i;
    }
    for (i = n - 1; i > 0; i--) {
        uint64_t j = xorshift(&x) % (i + 1);
        uint32_t t = order[i];

        order[i] = order[j];
        order[j] = t;
    }
    for (i = 0; i < n; i++) {
        if (pcow_pwrite(img, (uint64_t)order[i] * 4096, big, 8, &err) < 0) {
            die("pwrite 1m", &err);
        }
    }
    free(order);
    iclose(img);
}

/*
 * Times libpcow's open (read-only, read-write) and the monitor's, then the
 * first read of NFAULTS random clusters.  m: the first of the 7 figures.
 */
static void bench_1m(const char *dir, bool random_order, result *res, int m)
{
    const uint64_t n = 1 << 20;
    /*
     * The monitor refuses an image whose mappings would not all fit under
     * vm.max_map_count (1M random clusters: 1M mappings, the default limit
     * is 65530).  A budget in the options lifts that check without
     * touching the machine's sysctl; the reads below map few clusters.
     */
    pcow_monitor_opts mo = { .flags = PCOW_MONITOR_NO_POOL,
                             .max_vmas = 4 << 20 };
    pcow_monitor_stats st;
    pcow_error err = { 0 };
    pcow_monitor *mon;
    uint64_t lat[NFAULTS], t0, vmas, x = 0x9e3779b97f4a7c15ull;
    char path[4096];
    volatile char *p;
    int i;

    snprintf(path, sizeof(path), "%s/bench-1m.pcow", dir);
    make_1m(path, random_order);
    t0 = now_ns();
    iclose(iopen(path, 0));
    res->v[m] = secs_since(t0);
    t0 = now_ns();
    iclose(iopen(path, PCOW_OPEN_RDWR));
    res->v[m + 1] = secs_since(t0);
    t0 = now_ns();
    if (pcow_monitor_open(path, &mo, &mon, &err) < 0) {
        die("monitor open 1m", &err);
    }
    res->v[m + 2] = secs_since(t0);
    pcow_monitor_get_stats(mon, &st);
    vmas = st.vmas;
    res->v[m + 3] = vmas;
    p = pcow_monitor_base(mon);
    for (i = 0; i < NFAULTS; i++) {
        uint64_t c = xorshift(&x) % n;
        char v;

        t0 = now_ns();
        v = p[c * 4096];
        lat[i] = now_ns() - t0;
        if (v != 0x5a) {
            die("1M clusters: wrong data read through the monitor", NULL);
        }
    }
    percentiles(lat, NFAULTS, &res->v[m + 5], &res->v[m + 6], NULL);
    /* Lazy mapping: the reads above added mappings. */
    pcow_monitor_get_stats(mon, &st);
    res->v[m + 4] = st.vmas > vmas;
    mclose(mon);
    unlink(path);
}

/* PCOW_BENCH_ONLY=expansion,libexpand,cow,hole,steady,64t,1m: a subset. */
static bool want(const char *what)
{
    const char *only = getenv("PCOW_BENCH_ONLY");
    size_t len = strlen(what);
    const char *s;

    if (!only) {
        return true;
    }
    for (s = only; *s; s += strcspn(s, ",")) {
        s += *s == ',';
        if (!strncmp(s, what, len) && (s[len] == ',' || !s[len])) {
            return true;
        }
    }
    return false;
}

static void run_dir(const char *dir, result *res, bool do_1m)
{
    int i;

    for (i = 0; i < M_COUNT; i++) {
        res->v[i] = NAN;
    }
    if (want("expansion")) {
        fprintf(stderr, "[%s] expansion...\n", dir);
        bench_expansion(dir, true, 100, res, M_EXP_PACED_POOL_P50,
                        M_POOL_PACED_HITS);
        bench_expansion(dir, false, 100, res, M_EXP_PACED_NOPOOL_P50, 0);
        bench_expansion(dir, true, 0, res, M_EXP_B2B_POOL_P50,
                        M_POOL_B2B_HITS);
        bench_expansion(dir, false, 0, res, M_EXP_B2B_NOPOOL_P50, 0);
    }
    if (want("libexpand")) {
        fprintf(stderr, "[%s] libpcow expansion...\n", dir);
        bench_lib_expand(dir, res);
    }
    if (want("cow")) {
        fprintf(stderr, "[%s] cow...\n", dir);
        bench_cow(dir, res);
    }
    if (want("hole")) {
        fprintf(stderr, "[%s] hole reads...\n", dir);
        bench_hole_read(dir, res);
    }
    if (want("steady")) {
        fprintf(stderr, "[%s] steady state...\n", dir);
        bench_steady(dir, res);
    }
    if (want("64t")) {
        fprintf(stderr, "[%s] 64 TiB image...\n", dir);
        bench_64t(dir, res);
    }
    if (do_1m && want("1m")) {
        fprintf(stderr, "[%s] 1M clusters (random)...\n", dir);
        bench_1m(dir, true, res, M_1MR_LIB_RO);
        fprintf(stderr, "[%s] 1M clusters (sequential)...\n", dir);
        bench_1m(dir, false, res, M_1MS_LIB_RO);
    }
}

/* A JSON string: escapes what JSON requires (paths may hold anything). */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = *s;

        if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c < 0x20 || c >= 0x7f) {
            printf("\\u%04x", c);   /* bytes, not UTF-8: stays valid JSON */
        } else {
            putchar(c);
        }
    }
    putchar('"');
}

static void json_value(const metric *mt, double v)
{
    if (!isfinite(v)) {
        printf("null");
    } else if (!strcmp(mt->unit, "bool")) {
        printf(v ? "true" : "false");
    } else if (!strcmp(mt->unit, "count")) {
        printf("%.0f", v);
    } else {
        printf("%.4g", v);
    }
}

static void print_table(const char **dirs, int ndirs, const result *res)
{
    int i, d;

    for (d = 0; d < ndirs; d++) {
        printf("# dir %d: %s\n", d + 1, dirs[d]);
    }
    printf("#%-71s", " figure");
    for (d = 0; d < ndirs; d++) {
        char col[16];

        snprintf(col, sizeof(col), "dir %d", d + 1);
        printf(" %10s", col);
    }
    printf("\n");
    for (i = 0; i < M_COUNT; i++) {
        bool any = false;

        for (d = 0; d < ndirs; d++) {
            any |= !isnan(res[d].v[i]);
        }
        if (!any) {
            continue;
        }
        printf("%-72s", metrics[i].label);
        for (d = 0; d < ndirs; d++) {
            double v = res[d].v[i];

            if (isnan(v)) {
                printf(" %10s", "-");
            } else if (!strcmp(metrics[i].unit, "bool")) {
                printf(" %10s", v ? "yes" : "no");
            } else {
                printf(" %10.4g", v);
            }
        }
        printf("  %s\n", strcmp(metrics[i].unit, "bool") ? metrics[i].unit
                                                         : "");
    }
}

static void print_json(const char **dirs, int ndirs, const result *res)
{
    int i, d;

    printf("{\"dirs\": [");
    for (d = 0; d < ndirs; d++) {
        printf("%s{\"dir\": ", d ? ", " : "");
        json_str(dirs[d]);
        printf(", \"metrics\": {");
        for (i = 0; i < M_COUNT; i++) {
            printf("%s\"%s\": ", i ? ", " : "", metrics[i].key);
            json_value(&metrics[i], res[d].v[i]);
        }
        printf("}}");
    }
    printf("]}\n");
}

int main(int argc, char **argv)
{
    const char *dflt[] = { "/dev/shm", "." };
    const char **dirs = argc > 1 ? (const char **)argv + 1 : dflt;
    int ndirs = argc > 1 ? argc - 1 : 2;
    static result res[MAXDIRS];
    const char *all = getenv("PCOW_BENCH_1M");
    int d;

    if (ndirs > MAXDIRS) {
        fprintf(stderr, "bench-monitor: at most %d directories\n", MAXDIRS);
        return 1;
    }
    for (d = 0; d < ndirs; d++) {
        /* 1M clusters = 4 GiB of data: tmpfs, or PCOW_BENCH_1M=all. */
        run_dir(dirs[d], &res[d], d == 0 || (all && !strcmp(all, "all")));
    }
    print_table(dirs, ndirs, res);
    print_json(dirs, ndirs, res);
    return 0;
}
