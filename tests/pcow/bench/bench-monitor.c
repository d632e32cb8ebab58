/*
 * Image Monitor and libpcow benchmark (a command, not a test)
 *
 *   bench-monitor [--load] [--reps N] [DIR...]
 *                              default: /dev/shm and the current directory
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
 * The floors: in every repetition, the same round trips with nothing but
 * the kernel (a bare userfaultfd handler thread; a SIGSEGV handler that
 * only mprotect()s), and each latency figure divided by its floor
 * (ratio_of in the JSON names which).  The latency figures, floors and
 * ratios are the median of N repetitions (--reps, default 5), with the
 * smallest and largest in "spread".  --load runs a busy-looping process
 * on every online CPU for the whole run.
 *
 * The last line is one JSON object: {"dirs": [{"dir": D, "metrics":
 * {KEY: VALUE}, "spread": {KEY: {"n", "min", "max"}}}...], "ratio_of":
 * {RATIO: [FIGURE, FLOOR]}, "reps": N, "load": {"hogs": N, "pids": [...]}};
 * a figure that was not measured is null.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "pcow/monitor.h"

#define BENCH_NAME "bench-monitor"
#include "bench-util.h"

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
    /* the monitor's own time per fault (its statistics): what is left of
     * a figure above is waiting for and waking threads */
    M_EXP_B2B_POOL_HANDLER, M_COW_UNIT_HANDLER, M_HOLE_HANDLER,
    M_RAND_MON, M_RAND_RAW, M_RAND_RATIO,
    M_SEQ_MON, M_SEQ_RAW, M_SEQ_RATIO,
    M_64T_CREATE, M_64T_OPEN_RW, M_64T_ROUNDTRIP,
    M_1MR_LIB_RO, M_1MR_LIB_RW, M_1MR_MON, M_1MR_VMAS, M_1MR_LAZY,
    M_1MR_TOUCH_P50, M_1MR_TOUCH_P99,
    M_1MS_LIB_RO, M_1MS_LIB_RW, M_1MS_MON, M_1MS_VMAS, M_1MS_LAZY,
    M_1MS_TOUCH_P50, M_1MS_TOUCH_P99,
    /* the floors, measured in every repetition with the figures above */
    M_FLOOR_W_GAP_P50, M_FLOOR_W_GAP_P99,
    M_FLOOR_W_B2B_P50, M_FLOOR_W_B2B_P99,
    M_FLOOR_R_P50, M_FLOOR_R_P99,
    M_FLOOR_SEGV_P50, M_FLOOR_SEGV_P99,
    /* figure / floor, per repetition (see ratios[]) */
    M_R_EXP_PACED_POOL_P50, M_R_EXP_PACED_POOL_P99,
    M_R_EXP_PACED_NOPOOL_P50, M_R_EXP_PACED_NOPOOL_P99,
    M_R_EXP_B2B_POOL_P50, M_R_EXP_B2B_POOL_P99,
    M_R_EXP_B2B_NOPOOL_P50, M_R_EXP_B2B_NOPOOL_P99,
    M_R_COW_UNIT_P50, M_R_COW_UNIT_P99,
    M_R_COW_WHOLE_P50, M_R_COW_WHOLE_P99,
    M_R_COW_REST_P50, M_R_COW_REST_P99,
    M_R_HOLE_P50, M_R_HOLE_P99,
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
#define FUW "bare uffd, 1st store, UFFDIO_COPY 4K, "
#define FUR "FR floor: bare uffd, 1st read, UFFDIO_ZEROPAGE 4K, "
#define FSG "FS floor: bare SIGSEGV + mprotect of 4K, "

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
    [M_EXP_B2B_POOL_HANDLER] = { "expansion_b2b_pool_handler_mean_us",
                                 EXP "back to back, pool on: the uffd "
                                 "thread's own time, mean", "us" },
    [M_COW_UNIT_HANDLER] = { "cow_4k_unit_handler_mean_us",
                             "COW, one 4K unit: the handler's own time "
                             "(no signal delivery), mean", "us" },
    [M_HOLE_HANDLER] = { "hole_read_handler_mean_us",
                         "hole read fault: the uffd thread's own time, "
                         "mean", "us" },
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
    [M_FLOOR_W_GAP_P50] = { "floor_uffd_write_gap100us_p50_us",
                            "FW floor: " FUW "100 us gaps: p50", "us" },
    [M_FLOOR_W_GAP_P99] = { "floor_uffd_write_gap100us_p99_us",
                            "FW floor: " FUW "100 us gaps: p99", "us" },
    [M_FLOOR_W_B2B_P50] = { "floor_uffd_write_b2b_p50_us",
                            "FWB floor: " FUW "back to back: p50", "us" },
    [M_FLOOR_W_B2B_P99] = { "floor_uffd_write_b2b_p99_us",
                            "FWB floor: " FUW "back to back: p99", "us" },
    [M_FLOOR_R_P50] = { "floor_uffd_read_p50_us",
                        FUR "back to back: p50", "us" },
    [M_FLOOR_R_P99] = { "floor_uffd_read_p99_us",
                        FUR "back to back: p99", "us" },
    [M_FLOOR_SEGV_P50] = { "floor_sigsegv_mprotect_p50_us",
                           FSG "50 us gaps: p50", "us" },
    [M_FLOOR_SEGV_P99] = { "floor_sigsegv_mprotect_p99_us",
                           FSG "50 us gaps: p99", "us" },
    [M_R_EXP_PACED_POOL_P50] = { "expansion_gap100us_pool_p50_over_floor",
                                 EXP "100 us gaps, pool on: p50 / FW", "x" },
    [M_R_EXP_PACED_POOL_P99] = { "expansion_gap100us_pool_p99_over_floor",
                                 EXP "100 us gaps, pool on: p99 / FW", "x" },
    [M_R_EXP_PACED_NOPOOL_P50] = { "expansion_gap100us_nopool_p50_over_floor",
                                   EXP "100 us gaps, pool off: p50 / FW",
                                   "x" },
    [M_R_EXP_PACED_NOPOOL_P99] = { "expansion_gap100us_nopool_p99_over_floor",
                                   EXP "100 us gaps, pool off: p99 / FW",
                                   "x" },
    [M_R_EXP_B2B_POOL_P50] = { "expansion_b2b_pool_p50_over_floor",
                               EXP "back to back, pool on: p50 / FWB", "x" },
    [M_R_EXP_B2B_POOL_P99] = { "expansion_b2b_pool_p99_over_floor",
                               EXP "back to back, pool on: p99 / FWB", "x" },
    [M_R_EXP_B2B_NOPOOL_P50] = { "expansion_b2b_nopool_p50_over_floor",
                                 EXP "back to back, pool off: p50 / FWB",
                                 "x" },
    [M_R_EXP_B2B_NOPOOL_P99] = { "expansion_b2b_nopool_p99_over_floor",
                                 EXP "back to back, pool off: p99 / FWB",
                                 "x" },
    [M_R_COW_UNIT_P50] = { "cow_4k_unit_p50_over_floor",
                           "COW, copies one 4K unit: p50 / FS", "x" },
    [M_R_COW_UNIT_P99] = { "cow_4k_unit_p99_over_floor",
                           "COW, copies one 4K unit: p99 / FS", "x" },
    [M_R_COW_WHOLE_P50] = { "cow_whole_64k_cluster_p50_over_floor",
                            "COW, copies the whole 64K cluster: p50 / FS",
                            "x" },
    [M_R_COW_WHOLE_P99] = { "cow_whole_64k_cluster_p99_over_floor",
                            "COW, copies the whole 64K cluster: p99 / FS",
                            "x" },
    [M_R_COW_REST_P50] = { "cow_escalate_15_of_16_units_p50_over_floor",
                           "COW, copies the other 15 of 16 4K units: "
                           "p50 / FS", "x" },
    [M_R_COW_REST_P99] = { "cow_escalate_15_of_16_units_p99_over_floor",
                           "COW, copies the other 15 of 16 4K units: "
                           "p99 / FS", "x" },
    [M_R_HOLE_P50] = { "hole_read_p50_over_floor",
                       "hole read fault: p50 / FR", "x" },
    [M_R_HOLE_P99] = { "hole_read_p99_over_floor",
                       "hole read fault: p99 / FR", "x" },
};

/*
 * Each ratio: a figure over the floor measured the same way, in the same
 * repetition (FW, FWB, FR, FS in the labels: the floor rows).
 */
static const int ratios[][3] = {
    { M_R_EXP_PACED_POOL_P50, M_EXP_PACED_POOL_P50, M_FLOOR_W_GAP_P50 },
    { M_R_EXP_PACED_NOPOOL_P50, M_EXP_PACED_NOPOOL_P50, M_FLOOR_W_GAP_P50 },
    { M_R_EXP_B2B_POOL_P50, M_EXP_B2B_POOL_P50, M_FLOOR_W_B2B_P50 },
    { M_R_EXP_B2B_NOPOOL_P50, M_EXP_B2B_NOPOOL_P50, M_FLOOR_W_B2B_P50 },
    { M_R_COW_UNIT_P50, M_COW_UNIT_P50, M_FLOOR_SEGV_P50 },
    { M_R_COW_WHOLE_P50, M_COW_WHOLE_P50, M_FLOOR_SEGV_P50 },
    { M_R_COW_REST_P50, M_COW_REST_P50, M_FLOOR_SEGV_P50 },
    { M_R_HOLE_P50, M_HOLE_P50, M_FLOOR_R_P50 },
};

/*
 * Latency figures are measured in each of reps repetitions (floors
 * included); the result is the median, with the smallest and largest.
 */
#define MAXREPS 15

typedef struct result {
    double v[M_COUNT];
    double lo[M_COUNT];
    double hi[M_COUNT];
    int n[M_COUNT];             /* repetitions that measured it */
} result;

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
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

/* Mean of a monitor latency histogram, in us (NAN if empty). */
static double handler_mean_us(const pcow_latency *lat)
{
    return lat->count ? (double)lat->total_ns / lat->count / 1000.0 : NAN;
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
    if (pool && !gap_us) {
        res->v[M_EXP_B2B_POOL_HANDLER] =
            handler_mean_us(&st.expansion_latency);
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
    {
        pcow_monitor_stats st;

        pcow_monitor_get_stats(mon, &st);
        res->v[M_COW_UNIT_HANDLER] = handler_mean_us(&st.cow_latency);
    }
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
    pcow_monitor_stats st;
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
    pcow_monitor_get_stats(mon, &st);
    res->v[M_HOLE_HANDLER] = handler_mean_us(&st.hole_read_latency);
    mclose(mon);
    unlink(path);
    if (sum) {
        die("a hole did not read as zero", NULL);
    }
}

/*
 * The floors: what the kernel alone costs for the same round trips, with
 * the monitor's thread layout.  A bare userfaultfd handler thread (poll on
 * the uffd and a stop eventfd, read the events, one ioctl each) resolves a
 * missing fault on one 4 KiB page per 64 KiB, as the monitor's uffd thread
 * does for an expansion (UFFDIO_COPY: a writable page) or a hole read
 * (UFFDIO_ZEROPAGE); the faulting thread times its access as the
 * expansion and hole-read figures do.  For COW, a SIGSEGV handler that
 * only mprotect()s the 4 KiB page read-write (a VMA split, like the
 * monitor's mmap over one unit), timed like the COW figures.
 */
typedef struct floor_uffd {
    int uffd;
    int stop_efd;
    bool copy;
} floor_uffd;

static void *floor_uffd_thread(void *opaque)
{
    static const char zero[4096] __attribute__((aligned(4096)));
    floor_uffd *f = opaque;
    struct uffd_msg msgs[16];
    struct pollfd pfd[2] = {
        { .fd = f->uffd, .events = POLLIN },
        { .fd = f->stop_efd, .events = POLLIN },
    };

    for (;;) {
        ssize_t n;
        int i;

        if (poll(pfd, 2, -1) < 0) {
            continue;
        }
        if (pfd[1].revents) {
            return NULL;
        }
        n = read(f->uffd, msgs, sizeof(msgs));
        for (i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
            uint64_t page = msgs[i].arg.pagefault.address & ~4095ull;

            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
                continue;
            }
            if (f->copy) {
                struct uffdio_copy cp = { .dst = page,
                                          .src = (uintptr_t)zero,
                                          .len = 4096 };

                ioctl(f->uffd, UFFDIO_COPY, &cp);
            } else {
                struct uffdio_zeropage zp = {
                    .range = { .start = page, .len = 4096 } };

                ioctl(f->uffd, UFFDIO_ZEROPAGE, &zp);
            }
        }
    }
}

static int uffd_new(void)
{
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

    if (fd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

        if (dev >= 0) {
            fd = ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC | O_NONBLOCK);
            close(dev);
        }
    }
    return fd;
}

/* Bare uffd round trips: stores (@write) or reads, @gap_us apart. */
static void floor_uffd_run(bool write, int gap_us, double *p50, double *p99)
{
    uint64_t len = (uint64_t)NFAULTS * CL, lat[NFAULTS];
    struct uffdio_api api = { .api = UFFD_API };
    floor_uffd f = { .copy = write };
    struct uffdio_register reg;
    volatile char *p;
    pthread_t th;
    char sum = 0;
    int i;

    p = mmap(NULL, len, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    f.uffd = uffd_new();
    f.stop_efd = eventfd(0, EFD_CLOEXEC);
    if (p == MAP_FAILED || f.uffd < 0 || f.stop_efd < 0 ||
        ioctl(f.uffd, UFFDIO_API, &api) < 0) {
        die("floor: userfaultfd is not available", NULL);
    }
    madvise((void *)p, len, MADV_NOHUGEPAGE);   /* as the monitor's holes */
    reg = (struct uffdio_register){
        .range = { .start = (uintptr_t)p, .len = len },
        .mode = UFFDIO_REGISTER_MODE_MISSING };
    if (ioctl(f.uffd, UFFDIO_REGISTER, &reg) < 0 ||
        pthread_create(&th, NULL, floor_uffd_thread, &f)) {
        die("floor: cannot register or start the uffd thread", NULL);
    }
    pause_us(20000);
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        if (write) {
            p[(uint64_t)i * CL] = 1;
        } else {
            sum += p[(uint64_t)i * CL];
        }
        lat[i] = now_ns() - t0;
        if (gap_us) {
            pause_us(gap_us);
        }
    }
    eventfd_write(f.stop_efd, 1);
    pthread_join(th, NULL);
    close(f.stop_efd);
    close(f.uffd);
    munmap((void *)p, len);
    if (sum) {
        die("floor: a zero page did not read as zero", NULL);
    }
    percentiles(lat, NFAULTS, p50, p99, NULL);
}

static void floor_segv_handler(int sig, siginfo_t *info, void *ctx)
{
    uintptr_t page = (uintptr_t)info->si_addr & ~4095ul;

    (void)sig;
    (void)ctx;
    mprotect((void *)page, 4096, PROT_READ | PROT_WRITE);
}

/*
 * Bare SIGSEGV round trips.  The monitor's handler (if installed) is put
 * back afterwards; no monitor is open meanwhile.
 */
static void floor_segv_run(double *p50, double *p99)
{
    uint64_t len = (uint64_t)NFAULTS * CL, lat[NFAULTS];
    struct sigaction sa, old;
    volatile char *p;
    char sum = 0;
    int i;

    p = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        die("floor: mmap", NULL);
    }
    for (i = 0; i < NFAULTS; i++) {
        sum += p[(uint64_t)i * CL];    /* present, as a frozen cluster is */
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = floor_segv_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old) < 0) {
        die("floor: sigaction", NULL);
    }
    for (i = 0; i < NFAULTS; i++) {
        uint64_t t0 = now_ns();

        p[(uint64_t)i * CL] = 1;
        lat[i] = now_ns() - t0;
        pause_us(50);
    }
    sigaction(SIGSEGV, &old, NULL);
    munmap((void *)p, len);
    if (sum) {
        die("floor: anonymous memory did not read as zero", NULL);
    }
    percentiles(lat, NFAULTS, p50, p99, NULL);
}

static void bench_floors(result *res)
{
    floor_uffd_run(true, 100, &res->v[M_FLOOR_W_GAP_P50],
                   &res->v[M_FLOOR_W_GAP_P99]);
    floor_uffd_run(true, 0, &res->v[M_FLOOR_W_B2B_P50],
                   &res->v[M_FLOOR_W_B2B_P99]);
    floor_uffd_run(false, 0, &res->v[M_FLOOR_R_P50], &res->v[M_FLOOR_R_P99]);
    floor_segv_run(&res->v[M_FLOOR_SEGV_P50], &res->v[M_FLOOR_SEGV_P99]);
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

/*
 * PCOW_BENCH_ONLY=floor,expansion,libexpand,cow,hole,steady,64t,1m: a
 * subset (expansion, cow and hole measure the floors too).
 */
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* The latency figures of one repetition, floors first; then the ratios. */
static void run_rep(const char *dir, result *r)
{
    int i;

    if (want("floor") || want("expansion") || want("cow") || want("hole")) {
        fprintf(stderr, "[%s] floors...\n", dir);
        bench_floors(r);
    }
    if (want("expansion")) {
        fprintf(stderr, "[%s] expansion...\n", dir);
        bench_expansion(dir, true, 100, r, M_EXP_PACED_POOL_P50,
                        M_POOL_PACED_HITS);
        bench_expansion(dir, false, 100, r, M_EXP_PACED_NOPOOL_P50, 0);
        bench_expansion(dir, true, 0, r, M_EXP_B2B_POOL_P50,
                        M_POOL_B2B_HITS);
        bench_expansion(dir, false, 0, r, M_EXP_B2B_NOPOOL_P50, 0);
    }
    if (want("cow")) {
        fprintf(stderr, "[%s] cow...\n", dir);
        bench_cow(dir, r);
    }
    if (want("hole")) {
        fprintf(stderr, "[%s] hole reads...\n", dir);
        bench_hole_read(dir, r);
    }
    /* p50 over the floor's p50, p99 over the floor's p99 */
    for (i = 0; i < (int)(sizeof(ratios) / sizeof(ratios[0])); i++) {
        int j;

        for (j = 0; j < 2; j++) {
            r->v[ratios[i][0] + j] = r->v[ratios[i][1] + j] /
                                     r->v[ratios[i][2] + j];
        }
    }
}

/* Median, min and max over the repetitions that measured each figure. */
static void merge_reps(result *res, const result *reps, int nreps)
{
    int i, k;

    for (i = 0; i < M_COUNT; i++) {
        double v[MAXREPS];
        int n = 0;

        for (k = 0; k < nreps; k++) {
            if (isfinite(reps[k].v[i])) {
                v[n++] = reps[k].v[i];
            }
        }
        if (!n) {
            continue;
        }
        qsort(v, n, sizeof(v[0]), cmp_double);
        res->v[i] = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
        res->lo[i] = v[0];
        res->hi[i] = v[n - 1];
        res->n[i] = n;
    }
}

static void run_dir(const char *dir, result *res, bool do_1m, int nreps)
{
    static result reps[MAXREPS];
    int i, k;

    for (i = 0; i < M_COUNT; i++) {
        res->v[i] = res->lo[i] = res->hi[i] = NAN;
        res->n[i] = 0;
    }
    for (k = 0; k < nreps; k++) {
        for (i = 0; i < M_COUNT; i++) {
            reps[k].v[i] = NAN;
        }
        fprintf(stderr, "[%s] repetition %d of %d\n", dir, k + 1, nreps);
        run_rep(dir, &reps[k]);
    }
    merge_reps(res, reps, nreps);
    if (want("libexpand")) {
        fprintf(stderr, "[%s] libpcow expansion...\n", dir);
        bench_lib_expand(dir, res);
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

/*
 * --load: one busy-looping process per online CPU, each pinned to its
 * CPU, for the whole run; killed (and reaped) at the end.  They die with
 * the benchmark if it dies (PR_SET_PDEATHSIG).
 */
static pid_t hogs[1024];
static int nhogs;

static void hogs_stop(void)
{
    int i;

    for (i = 0; i < nhogs; i++) {
        kill(hogs[i], SIGKILL);
    }
    for (i = 0; i < nhogs; i++) {
        waitpid(hogs[i], NULL, 0);
    }
    nhogs = 0;
}

static void hogs_start(void)
{
    cpu_set_t online;
    pid_t parent = getpid();
    int cpu;

    if (sched_getaffinity(0, sizeof(online), &online) < 0) {
        die("--load: sched_getaffinity", NULL);
    }
    atexit(hogs_stop);
    for (cpu = 0; cpu < CPU_SETSIZE && nhogs < 1024; cpu++) {
        pid_t pid;

        if (!CPU_ISSET(cpu, &online)) {
            continue;
        }
        pid = fork();
        if (pid < 0) {
            die("--load: fork", NULL);
        }
        if (pid == 0) {
            cpu_set_t one;
            volatile uint64_t spin = 0;

            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) {
                _exit(0);
            }
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            sched_setaffinity(0, sizeof(one), &one);
            for (;;) {
                spin++;
            }
        }
        hogs[nhogs++] = pid;
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

static void print_table(const char **dirs, int ndirs, const result *res,
                        int nreps)
{
    int i, d;

    for (d = 0; d < ndirs; d++) {
        printf("# dir %d: %s\n", d + 1, dirs[d]);
    }
    printf("# latencies, floors and ratios: median of %d repetitions "
           "(min, max in the JSON's spread)%s\n", nreps,
           nhogs ? "; --load: a busy-loop process on every CPU" : "");
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

static void print_json(const char **dirs, int ndirs, const result *res,
                       int nreps)
{
    int i, d;

    printf("{\"dirs\": [");
    for (d = 0; d < ndirs; d++) {
        bool first = true;

        printf("%s{\"dir\": ", d ? ", " : "");
        json_str(dirs[d]);
        printf(", \"metrics\": {");
        for (i = 0; i < M_COUNT; i++) {
            printf("%s\"%s\": ", i ? ", " : "", metrics[i].key);
            json_value(&metrics[i], res[d].v[i]);
        }
        /* The repeated figures: over how many, smallest, largest. */
        printf("}, \"spread\": {");
        for (i = 0; i < M_COUNT; i++) {
            if (!res[d].n[i]) {
                continue;
            }
            printf("%s\"%s\": {\"n\": %d, \"min\": ", first ? "" : ", ",
                   metrics[i].key, res[d].n[i]);
            json_value(&metrics[i], res[d].lo[i]);
            printf(", \"max\": ");
            json_value(&metrics[i], res[d].hi[i]);
            printf("}");
            first = false;
        }
        printf("}}");
    }
    /* Which floor each ratio divides by */
    printf("], \"ratio_of\": {");
    for (i = 0; i < (int)(sizeof(ratios) / sizeof(ratios[0])); i++) {
        int j;

        for (j = 0; j < 2; j++) {
            printf("%s\"%s\": [\"%s\", \"%s\"]", i || j ? ", " : "",
                   metrics[ratios[i][0] + j].key,
                   metrics[ratios[i][1] + j].key,
                   metrics[ratios[i][2] + j].key);
        }
    }
    printf("}, \"reps\": %d, \"load\": {\"hogs\": %d, \"pids\": [", nreps,
           nhogs);
    for (i = 0; i < nhogs; i++) {
        printf("%s%d", i ? ", " : "", (int)hogs[i]);
    }
    printf("]}}\n");
}

static void usage(void)
{
    fprintf(stderr, "usage: bench-monitor [--load] [--reps N] [DIR...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *dflt[] = { "/dev/shm", "." };
    const char **dirs = dflt;
    int ndirs = 2;
    static result res[MAXDIRS];
    const char *all = getenv("PCOW_BENCH_1M");
    bool load = false;
    int nreps = 5;
    int d, a = 1;

    for (; a < argc && argv[a][0] == '-'; a++) {
        if (!strcmp(argv[a], "--load")) {
            load = true;
        } else if (!strcmp(argv[a], "--reps") && a + 1 < argc) {
            char *end;

            nreps = strtol(argv[++a], &end, 10);
            if (*end || nreps < 1 || nreps > MAXREPS) {
                fprintf(stderr, "bench-monitor: --reps: 1 to %d\n", MAXREPS);
                return 2;
            }
        } else {
            usage();
        }
    }
    if (a < argc) {
        dirs = (const char **)argv + a;
        ndirs = argc - a;
    }
    if (ndirs > MAXDIRS) {
        fprintf(stderr, "bench-monitor: at most %d directories\n", MAXDIRS);
        return 1;
    }
    if (load) {
        hogs_start();
    }
    for (d = 0; d < ndirs; d++) {
        /* 1M clusters = 4 GiB of data: tmpfs, or PCOW_BENCH_1M=all. */
        run_dir(dirs[d], &res[d], d == 0 || (all && !strcmp(all, "all")),
                nreps);
    }
    print_table(dirs, ndirs, res, nreps);
    print_json(dirs, ndirs, res, nreps);
    hogs_stop();
    return 0;
}
