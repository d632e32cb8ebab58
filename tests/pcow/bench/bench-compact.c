/*
 * Compaction benchmark (a command, not a test): an image with many
 * clusters written in random order, measured before and after
 * pcow_compact()
 *
 *   bench-compact [--size BYTES] [--clusters N] [--runs R,...] [--set W] DIR
 *       defaults: a 64 GiB image (64 KiB clusters), 200000 clusters
 *       allocated as random runs of R = 1 and then of R = 16 clusters,
 *       working set W = 16384
 *
 * For each R: N clusters, in runs of R consecutive guest clusters at
 * random places,
 * are written one at a time in random order (so that neighbours in the
 * guest lie apart in the file), each with its first page set to a byte
 * derived from its index.  Then, before and after compaction:
 *   - vmas_needed: pcow_mapping_count(), what the monitor would map;
 *   - monitor_refused: pcow_monitor_open() with the budget from
 *     vm.max_map_count refuses the image (the message is printed); the
 *     rest is then measured with an explicit budget, as bench-monitor's
 *     1M-cluster figures are;
 *   - open_map_s: pcow_monitor_open() (count, budget, map), lazy: whether
 *     it mapped lazily (more than 32768 mappings), vmas_open: the
 *     mappings it holds after open;
 *   - first_touch p50/p99: the first read of W random allocated clusters
 *     (a lazy monitor maps each then), in us;
 *   - steady_mib_s: random 4 KiB reads over those W clusters, best of
 *     three 0.4 s rounds; vmas_steady: the mappings held then (adjacent
 *     clusters of one file range merge into one VMA in the kernel).
 * Every read is checked against the byte written.  W stays below the
 * kernel's vm.max_map_count even when each cluster is its own mapping.
 * The compaction itself: seconds, clusters and runs moved, file size and
 * disk use.  The last line is one JSON object, {"patterns": [...]}, one
 * object per R.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pcow/monitor.h"

#define BENCH_NAME "bench-compact"
#include "bench-util.h"

#define KiB 1024ull
#define GiB (KiB * KiB * KiB)
#define CLUSTER (64 * KiB)

typedef struct Bench {
    const char *dir;
    char path[4096];
    uint64_t size, n, run, set;
    uint64_t runs[8];           /* --runs */
    int nruns;
    uint64_t *vc;               /* the allocated clusters, in write order */
    uint64_t rng;
} Bench;

typedef struct Phase {
    uint64_t vmas_needed, vmas_open, vmas_steady;
    bool refused, lazy;
    double open_map_s, touch_p50, touch_p99, steady_mib_s;
} Phase;

/* One pattern (run length), measured */
typedef struct Result {
    uint64_t n, run, set;
    double fill_s, compact_s;
    pcow_compact_result res;
    uint64_t sz[4];             /* file size, disk use; before, after */
    Phase ph[2];
} Result;

static uint64_t rnd(Bench *b)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return b->rng;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);

    if (!p) {
        die("out of memory", NULL);
    }
    return p;
}

static void shuffle(Bench *b, uint64_t *v, uint64_t n)
{
    uint64_t i, j, t;

    for (i = n - 1; i > 0; i--) {
        j = rnd(b) % (i + 1);
        t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* N clusters in runs of b->run at random aligned places, shuffled */
static void pick_clusters(Bench *b)
{
    uint64_t slots = b->size / CLUSTER / b->run, nruns = b->n / b->run;
    uint64_t *slot = xmalloc(slots * sizeof(*slot)), i, k;

    if (nruns > slots) {
        die("more clusters than the image holds", NULL);
    }
    for (i = 0; i < slots; i++) {
        slot[i] = i;
    }
    shuffle(b, slot, slots);
    b->n = nruns * b->run;
    b->vc = xmalloc(b->n * sizeof(*b->vc));
    for (i = 0; i < nruns; i++) {
        for (k = 0; k < b->run; k++) {
            b->vc[i * b->run + k] = slot[i] * b->run + k;
        }
    }
    free(slot);
    shuffle(b, b->vc, b->n);
}

static uint8_t mark(uint64_t vc)
{
    return (uint8_t)(vc * 37 + 1) | 1;
}

static void fill_image(Bench *b)
{
    pcow_create_opts co = { .virtual_size = b->size, .cluster_size = CLUSTER };
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    static uint8_t page[4096];
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t i;

    unlink(b->path);
    if (pcow_create(b->path, &co, &err) < 0 ||
        pcow_open(b->path, &oo, &img, &err) < 0) {
        die("create", &err);
    }
    for (i = 0; i < b->n; i++) {
        memset(page, mark(b->vc[i]), sizeof(page));
        if (pcow_pwrite(img, b->vc[i] * CLUSTER, page, sizeof(page),
                        &err) < 0) {
            die("pwrite", &err);
        }
    }
    if (pcow_close(img, &err) < 0) {
        die("close", &err);
    }
}

static uint64_t vmas_needed(Bench *b)
{
    pcow_open_opts oo = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t n;

    if (pcow_open(b->path, &oo, &img, &err) < 0 ||
        pcow_mapping_count(img, &n, &err) < 0 || pcow_close(img, &err) < 0) {
        die("mapping count", &err);
    }
    return n;
}

/* With the budget vm.max_map_count leaves, else an explicit one */
static pcow_monitor *monitor_open(Bench *b, Phase *ph)
{
    pcow_monitor_opts mo = { 0 };
    pcow_monitor_stats st;
    pcow_error err = { 0 };
    pcow_monitor *mon;
    uint64_t t0 = now_ns();

    if (pcow_monitor_open(b->path, &mo, &mon, &err) < 0) {
        printf("# monitor refused it: %s\n", err.msg);
        ph->refused = true;
        mo.max_vmas = 4ull << 20;
        t0 = now_ns();
        if (pcow_monitor_open(b->path, &mo, &mon, &err) < 0) {
            die("monitor open", &err);
        }
    }
    ph->open_map_s = secs_since(t0);
    pcow_monitor_get_stats(mon, &st);
    ph->vmas_open = st.vmas;
    ph->lazy = ph->vmas_needed > 1 && st.vmas == 1;
    return mon;
}

static void check_byte(uint8_t got, uint64_t vc)
{
    if (got != mark(vc)) {
        fprintf(stderr, "bench-compact: cluster %" PRIu64 " reads 0x%02x, "
                "expected 0x%02x\n", vc, got, mark(vc));
        exit(1);
    }
}

/* First reads of the working set (the first W clusters written) */
static void first_touch(Bench *b, volatile uint8_t *p, Phase *ph)
{
    uint64_t *lat = xmalloc(b->set * sizeof(*lat)), i, t0;
    uint8_t v;

    for (i = 0; i < b->set; i++) {
        t0 = now_ns();
        v = p[b->vc[i] * CLUSTER];
        lat[i] = now_ns() - t0;
        check_byte(v, b->vc[i]);
    }
    percentiles(lat, b->set, &ph->touch_p50, &ph->touch_p99, NULL);
    free(lat);
}

/* Random 4 KiB reads of the first page of working-set clusters, MiB/s */
static double steady_round(Bench *b, const uint8_t *p)
{
    static uint8_t buf[4096];
    uint64_t t0 = now_ns(), bytes = 0, vc;
    int i;

    while (now_ns() - t0 < 400000000ull) {
        for (i = 0; i < 256; i++) {
            vc = b->vc[rnd(b) % b->set];
            memcpy(buf, p + vc * CLUSTER, sizeof(buf));
            check_byte(buf[4095], vc);
            bytes += sizeof(buf);
        }
    }
    return bytes / secs_since(t0) / (KiB * KiB);
}

static void measure(Bench *b, Phase *ph)
{
    pcow_monitor_stats st;
    pcow_monitor *mon;
    pcow_error err = { 0 };
    uint8_t *p;
    int r;

    memset(ph, 0, sizeof(*ph));
    ph->vmas_needed = vmas_needed(b);
    mon = monitor_open(b, ph);
    p = pcow_monitor_base(mon);
    first_touch(b, p, ph);
    for (r = 0; r < 3; r++) {
        double v = steady_round(b, p);

        ph->steady_mib_s = v > ph->steady_mib_s ? v : ph->steady_mib_s;
    }
    pcow_monitor_get_stats(mon, &st);
    ph->vmas_steady = st.vmas;
    if (pcow_monitor_close(mon, &err) < 0) {
        die("monitor close", &err);
    }
}

static void file_sizes(Bench *b, uint64_t *size, uint64_t *used)
{
    struct stat st;

    if (stat(b->path, &st) < 0) {
        die("stat", NULL);
    }
    *size = st.st_size;
    *used = (uint64_t)st.st_blocks * 512;
}

static double compact(Bench *b, pcow_compact_result *res)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t t0 = now_ns();

    if (pcow_open(b->path, &oo, &img, &err) < 0 ||
        pcow_compact(img, res, &err) < 0 || pcow_close(img, &err) < 0) {
        die("compact", &err);
    }
    return secs_since(t0);
}

static void print_phase(const char *name, const Phase *ph, bool last)
{
    printf("\"%s\": {\"vmas_needed\": %" PRIu64 ", \"monitor_refused\": %s, "
           "\"open_map_s\": %.4f, \"lazy\": %s, \"vmas_open\": %" PRIu64
           ", \"first_touch_p50_us\": %.2f, \"first_touch_p99_us\": %.2f, "
           "\"steady_mib_s\": %.1f, \"vmas_steady\": %" PRIu64 "}%s",
           name, ph->vmas_needed, ph->refused ? "true" : "false",
           ph->open_map_s, ph->lazy ? "true" : "false", ph->vmas_open,
           ph->touch_p50, ph->touch_p99, ph->steady_mib_s, ph->vmas_steady,
           last ? "" : ", ");
}

static void print_table(const Result *r)
{
    static const char *const name[] = { "before", "after" };
    const Phase *ph = r->ph;
    int i;

    printf("# %" PRIu64 " clusters in runs of %" PRIu64 ": compact %.2f s, "
           "%" PRIu64 " clusters in %" PRIu64 " runs moved\n", r->n, r->run,
           r->compact_s, r->res.clusters_moved, r->res.runs_moved);
    printf("# %-7s %12s %8s %10s %5s %10s %9s %9s %10s %11s\n", "", "needed",
           "refused", "open+map s", "lazy", "vmas open", "touch p50",
           "touch p99", "MiB/s", "vmas steady");
    for (i = 0; i < 2; i++) {
        printf("# %-7s %12" PRIu64 " %8s %10.4f %5s %10" PRIu64 " %9.2f "
               "%9.2f %10.1f %11" PRIu64 "\n", name[i], ph[i].vmas_needed,
               ph[i].refused ? "yes" : "no", ph[i].open_map_s,
               ph[i].lazy ? "yes" : "no", ph[i].vmas_open, ph[i].touch_p50,
               ph[i].touch_p99, ph[i].steady_mib_s, ph[i].vmas_steady);
    }
}

static void print_json(const Result *r, bool last)
{
    printf("{\"clusters\": %" PRIu64 ", \"run\": %" PRIu64 ", "
           "\"working_set\": %" PRIu64 ", \"fill_s\": %.2f, ", r->n, r->run,
           r->set, r->fill_s);
    print_phase("before", &r->ph[0], false);
    print_phase("after", &r->ph[1], false);
    printf("\"compact\": {\"seconds\": %.2f, \"clusters_moved\": %" PRIu64
           ", \"runs_moved\": %" PRIu64 ", \"file_size_before\": %" PRIu64
           ", \"file_size_after\": %" PRIu64 ", \"disk_use_before\": %"
           PRIu64 ", \"disk_use_after\": %" PRIu64 "}}%s", r->compact_s,
           r->res.clusters_moved, r->res.runs_moved, r->sz[0], r->sz[2],
           r->sz[1], r->sz[3], last ? "" : ", ");
}

static uint64_t arg_u64(const char *opt, const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 0);

    if (*end || v == 0) {
        fprintf(stderr, "bench-compact: %s: a positive number\n", opt);
        exit(2);
    }
    return v;
}

static void parse_runs(Bench *b, const char *list)
{
    char *copy = strdup(list), *tok, *save = NULL;

    b->nruns = 0;
    for (tok = strtok_r(copy, ",", &save); tok && b->nruns < 8;
         tok = strtok_r(NULL, ",", &save)) {
        b->runs[b->nruns++] = arg_u64("--runs", tok);
    }
    free(copy);
}

static void parse_args(int argc, char **argv, Bench *b)
{
    int a;

    for (a = 1; a + 1 < argc && argv[a][0] == '-'; a += 2) {
        uint64_t v = strcmp(argv[a], "--runs") ? arg_u64(argv[a], argv[a + 1])
                                               : 0;

        if (!strcmp(argv[a], "--size")) {
            b->size = v;
        } else if (!strcmp(argv[a], "--clusters")) {
            b->n = v;
        } else if (!strcmp(argv[a], "--runs")) {
            parse_runs(b, argv[a + 1]);
        } else if (!strcmp(argv[a], "--set")) {
            b->set = v;
        } else {
            a = argc;
        }
    }
    if (a != argc - 1 || b->size % CLUSTER) {
        fprintf(stderr, "usage: bench-compact [--size BYTES (64K multiple)] "
                "[--clusters N] [--runs R,...] [--set W] DIR\n");
        exit(2);
    }
    b->dir = argv[a];
}

static void run_pattern(Bench *b, uint64_t run, uint64_t n, uint64_t set,
                        Result *r)
{
    uint64_t t0;

    b->run = run;
    b->n = n;
    pick_clusters(b);
    b->set = set < b->n ? set : b->n;
    r->n = b->n;
    r->run = run;
    r->set = b->set;
    t0 = now_ns();
    fill_image(b);
    r->fill_s = secs_since(t0);
    file_sizes(b, &r->sz[0], &r->sz[1]);
    measure(b, &r->ph[0]);
    r->compact_s = compact(b, &r->res);
    file_sizes(b, &r->sz[2], &r->sz[3]);
    measure(b, &r->ph[1]);
    unlink(b->path);
    free(b->vc);
    print_table(r);
}

int main(int argc, char **argv)
{
    Bench b = { .size = 64 * GiB, .n = 200000, .set = 16384,
                .runs = { 1, 16 }, .nruns = 2,
                .rng = 0x2545f4914f6cdd1dull };
    Result r[8];
    int i;

    setvbuf(stdout, NULL, _IOLBF, 0);
    parse_args(argc, argv, &b);
    snprintf(b.path, sizeof(b.path), "%s/bench-compact.pcow", b.dir);
    printf("# %s: %" PRIu64 " bytes, %llu-byte clusters\n", b.path, b.size,
           CLUSTER);
    for (i = 0; i < b.nruns; i++) {
        run_pattern(&b, b.runs[i], b.n, b.set, &r[i]);
    }
    printf("{\"dir\": \"%s\", \"virtual_size\": %" PRIu64 ", "
           "\"cluster_size\": %llu, \"patterns\": [", b.dir, b.size,
           CLUSTER);
    for (i = 0; i < b.nruns; i++) {
        print_json(&r[i], i == b.nruns - 1);
    }
    printf("]}\n");
    return 0;
}
