/*
 * Image Monitor benchmark (a command, not a test)
 *
 *   bench-monitor [DIR...]     default: /dev/shm and the current directory
 *
 * For each directory, side by side: expansion latency with and without the
 * pre-allocation pool, 4 KiB vs whole-cluster COW, hole-read faults,
 * steady-state bandwidth in the mapped range vs a plain mmap of a raw file,
 * and open+map time / VMA count for an image with 1M allocated clusters
 * (4 KiB clusters) in random and in sequential allocation order.
 * Latencies are measured in the faulting thread, around the first store.
 * The last line is one JSON object (values of the first directory).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#define CL (64 * KiB)
#define NFAULTS 2000

typedef struct result {
    double exp_pool_p50, exp_pool_p99, exp_nopool_p50, exp_nopool_p99;
    double cow4k_p50, cow4k_p99, cowcl_p50, cowcl_p99;
    double hole_p50, hole_p99;
    double rand4k_mon, rand4k_raw, seq1m_mon, seq1m_raw;
    double open_rand_s, open_seq_s;
    uint64_t vmas_rand, vmas_seq;
    uint64_t pool_hits, pool_misses;
    bool have_1m;
} result;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void die(const char *what, const pcow_error *err)
{
    fprintf(stderr, "bench-monitor: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static double pct_us(uint64_t *v, int n, double pct)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    return v[(int)((n - 1) * pct / 100.0)] / 1000.0;
}

static void create(const char *path, uint64_t size, uint32_t cluster)
{
    pcow_create_opts co = { .virtual_size = size, .cluster_size = cluster };
    pcow_error err = { 0 };

    unlink(path);
    if (pcow_create(path, &co, &err) < 0) {
        die("create", &err);
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

/* First stores to NFAULTS holes, pausing so the pool can refill. */
static void bench_expansion(const char *dir, bool pool, double *p50,
                            double *p99, result *res)
{
    char path[4096];
    uint64_t lat[NFAULTS];
    pcow_monitor *mon;
    pcow_monitor_stats st;
    volatile char *p;
    int i;

    snprintf(path, sizeof(path), "%s/bench-exp.pcow", dir);
    create(path, (uint64_t)NFAULTS * CL, CL);
    mon = mopen(path, pool ? 0 : PCOW_MONITOR_NO_POOL, 0);
    p = pcow_monitor_base(mon);
    pause_us(20000);
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        p[(uint64_t)i * CL] = 1;
        lat[i] = now_ns() - t0;
        pause_us(100);
    }
    *p50 = pct_us(lat, NFAULTS, 50);
    *p99 = pct_us(lat, NFAULTS, 99);
    if (pool) {
        pcow_monitor_get_stats(mon, &st);
        res->pool_hits = st.pool_hits;
        res->pool_misses = st.pool_misses;
    }
    mclose(mon);
    unlink(path);
}

static void bench_cow(const char *dir, result *res)
{
    char path[4096];
    uint64_t lat[NFAULTS];
    uint64_t lat2[NFAULTS];
    pcow_monitor *mon;
    pcow_error err = { 0 };
    char *p;
    int i;

    snprintf(path, sizeof(path), "%s/bench-cow.pcow", dir);
    create(path, (uint64_t)NFAULTS * CL, CL);
    mon = mopen(path, 0, 1);
    p = pcow_monitor_base(mon);
    for (i = 0; i < NFAULTS; i++) {
        memset(p + (uint64_t)i * CL, i, CL);
    }
    if (pcow_monitor_snapshot_create(mon, "bench", &err) < 0) {
        die("snapshot", &err);
    }
    pause_us(20000);
    /* cow_escalate 1: the first write copies a unit, the second the rest. */
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        ((volatile char *)p)[(uint64_t)i * CL] = 1;
        lat[i] = now_ns() - t0;
        pause_us(50);
        t0 = now_ns();
        ((volatile char *)p)[(uint64_t)i * CL + 8 * 4096] = 1;
        lat2[i] = now_ns() - t0;
        pause_us(50);
    }
    res->cow4k_p50 = pct_us(lat, NFAULTS, 50);
    res->cow4k_p99 = pct_us(lat, NFAULTS, 99);
    res->cowcl_p50 = pct_us(lat2, NFAULTS, 50);
    res->cowcl_p99 = pct_us(lat2, NFAULTS, 99);
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
    create(path, (uint64_t)NFAULTS * CL, CL);
    mon = mopen(path, 0, 0);
    p = pcow_monitor_base(mon);
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        sum += p[(uint64_t)i * CL];
        lat[i] = now_ns() - t0;
    }
    res->hole_p50 = pct_us(lat, NFAULTS, 50);
    res->hole_p99 = pct_us(lat, NFAULTS, 99);
    mclose(mon);
    unlink(path);
    if (sum) {
        fprintf(stderr, "bench-monitor: a hole did not read as zero\n");
        exit(1);
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
            uint64_t off;

            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            off = (x % (size / 4096)) * 4096;
            if (i & 1) {
                memcpy(p + off, buf, 4096);
            } else {
                memcpy(buf, p + off, 4096);
            }
            bytes += 4096;
        }
    }
    return bytes / ((now_ns() - t0) / 1e9) / MiB;
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
    return bytes / ((now_ns() - t0) / 1e9) / MiB;
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
    create(path, size, CL);
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
    res->rand4k_mon = res->rand4k_raw = res->seq1m_mon = res->seq1m_raw = 0;
    for (round = 0; round < 3; round++) {
        res->rand4k_raw = fmax(res->rand4k_raw, bw_rand4k(r, size));
        res->rand4k_mon = fmax(res->rand4k_mon, bw_rand4k(p, size));
        res->seq1m_raw = fmax(res->seq1m_raw, bw_seq1m(r, size));
        res->seq1m_mon = fmax(res->seq1m_mon, bw_seq1m(p, size));
    }
    munmap(r, size);
    close(fd);
    unlink(raw);
    mclose(mon);
    unlink(path);
}

static uint64_t read_max_map_count(void)
{
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    unsigned long long v = 65530;

    if (f) {
        if (fscanf(f, "%llu", &v) != 1) {
            v = 65530;
        }
        fclose(f);
    }
    return v;
}

static int write_max_map_count(uint64_t v)
{
    FILE *f = fopen("/proc/sys/vm/max_map_count", "w");
    int r;

    if (!f) {
        return -1;
    }
    r = fprintf(f, "%llu\n", (unsigned long long)v) < 0 ? -1 : 0;
    return fclose(f) ? -1 : r;
}

/*
 * 1M allocated 4 KiB clusters, allocated in random or sequential order
 * through libpcow, then time pcow_monitor_open (validation + mapping).
 */
static void bench_1m(const char *dir, bool random_order, double *secs,
                     uint64_t *vmas)
{
    const uint64_t n = 1 << 20;
    char path[4096];
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_monitor_opts mo = { .flags = PCOW_MONITOR_NO_POOL };
    pcow_monitor_stats st;
    pcow_image *img;
    pcow_error err = { 0 };
    pcow_monitor *mon;
    uint32_t *order = malloc(n * sizeof(*order));
    uint64_t saved = read_max_map_count(), i, t0;
    char buf[4096];
    int r;

    snprintf(path, sizeof(path), "%s/bench-1m.pcow", dir);
    create(path, n * 4096, 4096);
    for (i = 0; i < n; i++) {
        order[i] = i;
    }
    if (random_order) {
        uint64_t x = 0x2545f4914f6cdd1dull;

        for (i = n - 1; i > 0; i--) {
            uint64_t j;
            uint32_t t;

            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            j = x % (i + 1);
            t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
    memset(buf, 0x5a, sizeof(buf));
    if (pcow_open(path, &oo, &img, &err) < 0) {
        die("open 1m", &err);
    }
    if (random_order) {
        for (i = 0; i < n; i++) {
            if (pcow_pwrite(img, (uint64_t)order[i] * 4096, buf, 8, &err) < 0) {
                die("pwrite 1m", &err);
            }
        }
    } else {
        /* Sequential: large writes allocate in order. */
        static char big[4 * MiB];

        memset(big, 0x5a, sizeof(big));
        for (i = 0; i < n * 4096; i += sizeof(big)) {
            if (pcow_pwrite(img, i, big, sizeof(big), &err) < 0) {
                die("pwrite 1m", &err);
            }
        }
    }
    if (pcow_close(img, &err) < 0) {
        die("close 1m", &err);
    }
    free(order);
    t0 = now_ns();
    r = pcow_monitor_open(path, &mo, &mon, &err);
    if (r == -ENOMEM && geteuid() == 0) {
        /* Expected with 1M random clusters: the error names the sysctl. */
        printf("  (%s)\n", err.msg);
        if (write_max_map_count(saved + 2 * n + 65536) == 0) {
            t0 = now_ns();
            r = pcow_monitor_open(path, &mo, &mon, &err);
        }
    }
    if (r < 0) {
        write_max_map_count(saved);
        die("monitor open 1m", &err);
    }
    *secs = (now_ns() - t0) / 1e9;
    pcow_monitor_get_stats(mon, &st);
    *vmas = st.vmas;
    mclose(mon);
    if (read_max_map_count() != saved) {
        write_max_map_count(saved);
    }
    unlink(path);
}

/* PCOW_BENCH_ONLY=expansion,cow,hole,steady,1m runs a subset. */
static bool want(const char *what)
{
    const char *only = getenv("PCOW_BENCH_ONLY");

    return !only || strstr(only, what);
}

static void run_dir(const char *dir, result *res, bool do_1m)
{
    memset(res, 0, sizeof(*res));
    if (!want("expansion")) {
        goto cow;
    }
    fprintf(stderr, "[%s] expansion...\n", dir);
    bench_expansion(dir, true, &res->exp_pool_p50, &res->exp_pool_p99, res);
    bench_expansion(dir, false, &res->exp_nopool_p50, &res->exp_nopool_p99,
                    res);
cow:
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
    if (do_1m && want("1m")) {
        fprintf(stderr, "[%s] 1M clusters (random)...\n", dir);
        bench_1m(dir, true, &res->open_rand_s, &res->vmas_rand);
        fprintf(stderr, "[%s] 1M clusters (sequential)...\n", dir);
        bench_1m(dir, false, &res->open_seq_s, &res->vmas_seq);
        res->have_1m = true;
    }
}

int main(int argc, char **argv)
{
    const char *dflt[] = { "/dev/shm", "." };
    const char **dirs = argc > 1 ? (const char **)argv + 1 : dflt;
    int ndirs = argc > 1 ? argc - 1 : 2;
    result res[8];
    int i;

    if (ndirs > 8) {
        ndirs = 8;
    }
    for (i = 0; i < ndirs; i++) {
        /* 1M clusters = 4 GiB of data: tmpfs, or PCOW_BENCH_1M=all. */
        bool do_1m = i == 0 || (getenv("PCOW_BENCH_1M") &&
                                !strcmp(getenv("PCOW_BENCH_1M"), "all"));

        run_dir(dirs[i], &res[i], do_1m);
    }

#define ROW2(label, field_a, field_b, unit)                                  \
    do {                                                                     \
        printf("%-34s", label);                                              \
        for (i = 0; i < ndirs; i++) {                                        \
            printf(" %9.2f %9.2f %6.2fx", res[i].field_a, res[i].field_b,   \
                   res[i].field_b > 0 ? res[i].field_a / res[i].field_b : 0);\
        }                                                                    \
        printf("  %s\n", unit);                                              \
    } while (0)

    printf("%-34s", "");
    for (i = 0; i < ndirs; i++) {
        printf(" %-28.28s", dirs[i]);
    }
    printf("\n%-34s", "measure (a vs b, ratio a/b)");
    for (i = 0; i < ndirs; i++) {
        printf(" %9s %9s %7s", "a", "b", "a/b");
    }
    printf("\n");
    ROW2("expansion p50: pool on / off", exp_pool_p50, exp_nopool_p50, "us");
    ROW2("expansion p99: pool on / off", exp_pool_p99, exp_nopool_p99, "us");
    ROW2("COW p50: 4 KiB / 64 KiB cluster", cow4k_p50, cowcl_p50, "us");
    ROW2("COW p99: 4 KiB / 64 KiB cluster", cow4k_p99, cowcl_p99, "us");
    ROW2("hole read p50 / p99", hole_p50, hole_p99, "us");
    ROW2("rand 4 KiB r/w: pcow / raw mmap", rand4k_mon, rand4k_raw, "MiB/s");
    ROW2("seq 1 MiB r/w: pcow / raw mmap", seq1m_mon, seq1m_raw, "MiB/s");
    printf("%-34s", "1M clusters open+map s: rand/seq");
    for (i = 0; i < ndirs; i++) {
        if (res[i].have_1m) {
            printf(" %9.3f %9.3f %7s", res[i].open_rand_s, res[i].open_seq_s,
                   "");
        } else {
            printf(" %9s %9s %7s", "-", "-", "");
        }
    }
    printf("\n%-34s", "1M clusters VMAs: rand/seq");
    for (i = 0; i < ndirs; i++) {
        if (res[i].have_1m) {
            printf(" %9" PRIu64 " %9" PRIu64 " %7s", res[i].vmas_rand,
                   res[i].vmas_seq, "");
        } else {
            printf(" %9s %9s %7s", "-", "-", "");
        }
    }
    printf("\n%-34s", "pool hits / misses (pool on)");
    for (i = 0; i < ndirs; i++) {
        printf(" %9" PRIu64 " %9" PRIu64 " %7s", res[i].pool_hits,
               res[i].pool_misses, "");
    }
    printf("\n");
    printf("{\"expansion_p50_us\": %.2f, \"expansion_p99_us\": %.2f, "
           "\"cow4k_p50_us\": %.2f, \"cow4k_p99_us\": %.2f, "
           "\"cow_cluster_p50_us\": %.2f, \"hole_read_p50_us\": %.2f, "
           "\"steady_rand4k_ratio\": %.3f, \"steady_seq1m_ratio\": %.3f, "
           "\"open_1m_clusters_s\": %.3f, \"vmas_1m_random\": %" PRIu64 "}\n",
           res[0].exp_pool_p50, res[0].exp_pool_p99, res[0].cow4k_p50,
           res[0].cow4k_p99, res[0].cowcl_p50, res[0].hole_p50,
           res[0].rand4k_mon / res[0].rand4k_raw,
           res[0].seq1m_mon / res[0].seq1m_raw,
           fmax(res[0].open_rand_s, res[0].open_seq_s), res[0].vmas_rand);
    return 0;
}
