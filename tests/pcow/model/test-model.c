/*
 * Model-based test of libpcow and pcow-img
 *
 * Seeded random operations -- writes, zero ranges, snapshot create/revert/
 * delete, resize (grow, shrink), commit, rebase (safe, -u), convert, writes
 * into bases, reopen, bad requests -- on a top image over no base, a raw
 * base, a pcow base or chains of two or three, for several cluster and COW
 * unit geometries.  After every step the top image is compared with a
 * shadow model (model.h) byte for byte and checked; see docs/pcow.rst,
 * "The model-based test".
 *
 * A time-bounded run must do enough steps of every kind (enough_steps).
 *
 * Environment:
 *   PCOW_MODEL_SECONDS  run episodes for this long (default 30)
 *   PCOW_MODEL_MIN_STEPS  steps a time-bounded run must do (300; 0: none)
 *   PCOW_MODEL_SEED     run the one episode of this seed
 *   PCOW_MODEL_OPS      operations per episode (default 150)
 *   PCOW_MODEL_REPLAY   file of operations to run (as printed on failure)
 *   PCOW_MODEL_MINIMIZE on failure, search a shorter failing sequence
 *   PCOW_MODEL_VERBOSE  print every operation
 *   PCOW_MODEL_KEEP     keep the test directory of a failed episode
 *   PCOW_MODEL_DIR      where to make test directories (default $TMPDIR,
 *                       else /tmp)
 *   PCOW_IMG            pcow-img (default: the one of this build)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "driver.h"

static const char *prog;

/* Steps a default run must do at least (see enough_steps) */
#define MIN_STEPS 300

uint64_t rng_next(Rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rng_below(Rng *r, uint64_t n)
{
    return rng_next(r) % n;
}

void fail(Ctx *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
    va_end(ap);
    longjmp(c->fail_jmp, 1);
}

void path_of(Ctx *c, const char *file, char *out)
{
    if (snprintf(out, PATH_MAX, "%s/%s", c->dir, file) >= PATH_MAX) {
        fail(c, "path too long: %s/%s", c->dir, file);
    }
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[PATH_MAX + 256];

    if (!d) {
        return;
    }
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    closedir(d);
    rmdir(dir);
}

static void free_layers(Ctx *c)
{
    for (unsigned i = 0; i < c->nlayers; i++) {
        m_free(c->layers[i]);
    }
    c->nlayers = 0;
    c->top = NULL;
}

/*
 * One episode: set up the images the seed chooses, then run @replay (or,
 * without it, generated operations until @maxops or @deadline).  Returns 0
 * or 1 (failed: c->msg, c->cur).
 */
static int run_episode(Ctx *c, uint64_t seed, const Op *replay,
                       unsigned maxops, double deadline)
{
    const char *base = getenv("PCOW_MODEL_DIR");
    char name[160];
    volatile int failed = 0;

    if (!base || !*base) {
        base = getenv("TMPDIR");
    }
    snprintf(c->dir, sizeof(c->dir), "%s/pcow-model-XXXXXX",
             base && *base ? base : "/tmp");
    if (!mkdtemp(c->dir)) {
        fprintf(stderr, "%s: mkdtemp %s: %s\n", prog, c->dir,
                strerror(errno));
        exit(2);
    }
    c->seed = seed;
    c->rng.s = seed;
    c->nops = 0;
    c->cur = 0;
    c->counter = 0;
    snprintf(c->desc, sizeof(c->desc), "setup");
    if (setjmp(c->fail_jmp) == 0) {
        setup_episode(c);
        if (c->verbose) {
            printf("seed %#" PRIx64 ": %s\n", seed, c->desc);
        }
        while (c->nops < maxops && (replay || now() < deadline)) {
            c->ops[c->nops] = replay ? replay[c->nops] : gen_op(c);
            c->cur = ++c->nops;
            op_name(&c->ops[c->cur - 1], name, sizeof(name));
            snprintf(c->desc, sizeof(c->desc), "%s", name);
            run_op(c, &c->ops[c->cur - 1]);
            c->kind_steps[c->ops[c->cur - 1].kind]++;
            if (c->verbose) {
                printf("  #%u %s\n", c->cur, c->desc);
            }
        }
    } else {
        failed = 1;
    }
    close_all(c);
    free_layers(c);
    if (failed && c->keep) {
        fprintf(stderr, "%s: kept %s\n", prog, c->dir);
    } else {
        remove_dir(c->dir);
    }
    return failed;
}

/* ------------------------------------------------------ minimizing */

static int fails_like(Ctx *c, uint64_t seed, const Op *ops, unsigned n,
                      uint8_t kind)
{
    bool v = c->verbose;
    bool k = c->keep;
    int r;

    c->verbose = c->keep = false;
    r = run_episode(c, seed, ops, n, 0);
    c->verbose = v;
    c->keep = k;
    return r && c->cur == n && c->ops[n - 1].kind == kind;
}

/* Drop chunks of operations while the same kind of step still fails */
static unsigned minimize(Ctx *c, uint64_t seed, Op *ops, unsigned n)
{
    Op *tmp = calloc(n, sizeof(Op));
    uint8_t kind = ops[n - 1].kind;

    for (unsigned chunk = n / 2 ? n / 2 : 1; ; chunk /= 2) {
        for (unsigned i = 0; i + 1 < n; ) {
            unsigned len = chunk < n - 1 - i ? chunk : n - 1 - i, m = 0;

            for (unsigned j = 0; j < n; j++) {
                if (j < i || j >= i + len) {
                    tmp[m++] = ops[j];
                }
            }
            if (fails_like(c, seed, tmp, m, kind)) {
                memcpy(ops, tmp, m * sizeof(Op));
                n = m;
            } else {
                i += len;
            }
        }
        if (chunk == 1) {
            break;
        }
    }
    free(tmp);
    return n;
}

static unsigned read_ops(const char *file, Op *ops)
{
    FILE *f = fopen(file, "r");
    char line[512], kind[32];
    unsigned long long a, b, c, d;
    unsigned n = 0;

    if (!f) {
        fprintf(stderr, "%s: %s: %s\n", prog, file, strerror(errno));
        exit(2);
    }
    while (n < MAX_OPS && fgets(line, sizeof(line), f)) {
        unsigned k;

        if (sscanf(line, " %31s a=%llx b=%llx c=%llx d=%llx", kind, &a, &b,
                   &c, &d) != 5) {
            continue;
        }
        for (k = 0; k < OP_COUNT && strcmp(op_names[k], kind); k++) {
        }
        if (k < OP_COUNT) {
            ops[n++] = (Op){ .kind = k, .a = a, .b = b, .c = c, .d = d };
        }
    }
    fclose(f);
    return n;
}

/* ------------------------------------------------------------- main */

static unsigned long env_ul(const char *name, unsigned long dflt)
{
    const char *s = getenv(name);

    return s && *s ? strtoul(s, NULL, 0) : dflt;
}

static const char *default_tool(void)
{
    static char p[PATH_MAX];
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    if (n <= 0) {
        return "pcow-img";
    }
    self[n] = '\0';
    /* build/tests/pcow/model/test-model -> build/tools/pcow-img/pcow-img */
    snprintf(p, sizeof(p), "%s/../../../tools/pcow-img/pcow-img",
             dirname(self));
    return p;
}

static void report(Ctx *c, uint64_t seed, const char *replay_file)
{
    printf("%s: FAILED: seed %#" PRIx64 ", step %u (%s): %s\n", prog, seed,
           c->cur, c->cur ? c->desc : "setup", c->msg);
    if (replay_file) {
        printf("%s: reproduce: PCOW_MODEL_SEED=%#" PRIx64 " PCOW_MODEL_REPLAY"
               "=%s PCOW_IMG=%s %s\n", prog, seed, replay_file, c->tool,
               prog);
    } else if (c->favour) {
        printf("%s: reproduce: the sequence below as a PCOW_MODEL_REPLAY "
               "file, with PCOW_MODEL_SEED=%#" PRIx64 " (generated favouring "
               "kinds not yet run: 0x%x)\n", prog, seed, c->favour);
    } else {
        printf("%s: reproduce: PCOW_MODEL_SEED=%#" PRIx64 " PCOW_MODEL_OPS=%u"
               " PCOW_IMG=%s %s\n", prog, seed, c->cur, c->tool, prog);
    }
}

/* Print the failing sequence (minimized on request) as a replay file */
static void dump_sequence(Ctx *c, uint64_t seed)
{
    unsigned n = c->cur;
    Op *ops = malloc((n ? n : 1) * sizeof(Op));
    char name[160];

    memcpy(ops, c->ops, n * sizeof(Op));
    if (n && env_ul("PCOW_MODEL_MINIMIZE", 0)) {
        printf("%s: minimizing %u steps...\n", prog, n);
        n = minimize(c, seed, ops, n);
    }
    printf("%s: failing sequence (%u steps; save as a PCOW_MODEL_REPLAY "
           "file):\n", prog, n);
    for (unsigned i = 0; i < n; i++) {
        op_name(&ops[i], name, sizeof(name));
        printf("  %s\n", name);
    }
    free(ops);
}

static void print_counts(const Ctx *c)
{
    static const char *const crash[CRASH_KINDS] = {
        "write", "zero", "grow", "shrink", "snapshot-c", "snapshot-d",
        "snapshot-a",
    };
    unsigned k;

    printf("%s: steps by kind:", prog);
    for (k = 0; k < OP_COUNT; k++) {
        printf(" %s %llu", op_names[k], c->kind_steps[k]);
    }
    printf("\n%s: crashes by change:", prog);
    for (k = 0; k < CRASH_KINDS; k++) {
        printf(" %s %llu", crash[k], c->crash_steps[k]);
    }
    printf("; crashed creates kept (id predicted): %llu\n",
           c->crash_snap_ids);
}

/* The kinds (bits) enough_steps misses; OP_CRASH for any crash change */
static uint32_t missing_kinds(const Ctx *c)
{
    uint32_t m = c->crash_snap_ids ? 0 : 1u << OP_CRASH;
    unsigned k;

    for (k = 0; k < OP_COUNT; k++) {
        m |= c->kind_steps[k] ? 0 : 1u << k;
    }
    for (k = 0; k < CRASH_KINDS; k++) {
        m |= c->crash_steps[k] ? 0 : 1u << OP_CRASH;
    }
    return m;
}

/*
 * A time-bounded run passes only if it did enough: MIN_STEPS steps, every
 * kind of operation and of crash at least once and one crashed snapshot
 * create kept (its id predicted), so that a run that did (almost) nothing
 * -- a slow setup, a deadline already past, a generator stuck on some
 * kinds -- cannot pass.  Rare kinds (commit-mid needs a chain of three)
 * may take more time: the run goes on past PCOW_MODEL_SECONDS, up to four
 * times it, until all have run, generating those twenty times likelier.
 * PCOW_MODEL_MIN_STEPS overrides the total (0: no minimum at all).
 * @say: print what is missing.
 */
static bool enough_steps(const Ctx *c, unsigned long long steps, bool say)
{
    static const char *const crash[CRASH_KINDS] = {
        "crash-write", "crash-zero", "crash-grow", "crash-shrink",
        "crash-snapshot-c", "crash-snapshot-d", "crash-snapshot-a",
    };
    unsigned long long min = env_ul("PCOW_MODEL_MIN_STEPS", MIN_STEPS);
    char missing[512] = "";
    size_t len = 0;
    unsigned k;

    if (!min) {
        return true;
    }
    for (k = 0; k < OP_COUNT + CRASH_KINDS + 1; k++) {
        bool none = k < OP_COUNT ? !c->kind_steps[k] :
                    k < OP_COUNT + CRASH_KINDS ?
                    !c->crash_steps[k - OP_COUNT] : !c->crash_snap_ids;
        const char *what = k < OP_COUNT ? op_names[k] :
                           k < OP_COUNT + CRASH_KINDS ?
                           crash[k - OP_COUNT] : "crash-snapshot-c kept";

        if (none && len < sizeof(missing)) {
            len += snprintf(missing + len, sizeof(missing) - len, " %s",
                            what);
        }
    }
    if (say && steps < min) {
        printf("%s: FAILED: %llu steps, at least %llu required\n", prog,
               steps, min);
    }
    if (say && len) {
        printf("%s: FAILED: no step of:%s\n", prog, missing);
    }
    return steps >= min && !len;
}

int main(int argc, char **argv)
{
    static Ctx ctx;
    Ctx *c = &ctx;
    const char *seed_env = getenv("PCOW_MODEL_SEED");
    const char *replay_file = getenv("PCOW_MODEL_REPLAY");
    unsigned long secs = env_ul("PCOW_MODEL_SECONDS", 30);
    unsigned maxops = env_ul("PCOW_MODEL_OPS", 150);
    double start = now(), deadline = start + secs;
    double overtime = start + 4 * secs;     /* see enough_steps */
    uint64_t seed;
    unsigned long long episodes = 0, steps = 0;
    Op *replay = NULL;

    prog = argv[0];
    c->tool = getenv("PCOW_IMG") && *getenv("PCOW_IMG") ?
              getenv("PCOW_IMG") : default_tool();
    c->verbose = env_ul("PCOW_MODEL_VERBOSE", 0);
    c->keep = env_ul("PCOW_MODEL_KEEP", 0);
    c->ops = calloc(MAX_OPS, sizeof(Op));
    c->buf = malloc(M_MAX_SIZE);
    c->buf2 = malloc(M_MAX_SIZE);
    if (access(c->tool, X_OK) < 0) {
        fprintf(stderr, "%s: %s: %s (set PCOW_IMG)\n", prog, c->tool,
                strerror(errno));
        return 1;
    }
    if (replay_file) {
        replay = calloc(MAX_OPS, sizeof(Op));
        maxops = read_ops(replay_file, replay);
    }
    if (maxops > MAX_OPS) {
        maxops = MAX_OPS;
    }
    if (seed_env && *seed_env) {
        seed = strtoull(seed_env, NULL, 0);
    } else {
        Rng r = { (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^
                  (uint64_t)(start * 1e9) };

        seed = rng_next(&r);
    }
    printf("%s: seed %#" PRIx64 ", %s\n", prog, seed,
           seed_env || replay ? "one episode" : "episodes until time is up");
    fflush(stdout);
    do {
        /* Past the deadline with a kind not yet run: whole episodes */
        double until = seed_env || replay ? 1e300 :
                       now() < deadline ? deadline : overtime;

        c->favour = until == overtime ? missing_kinds(c) : 0;
        /* commit-mid needs a pcow base over a base: a seed that sets one up
         * (setup_episode's first draw, chains "rp", "pp" or "rpp") */
        while ((c->favour & 1u << OP_COMMIT_MID) &&
               rng_below(&(Rng){ seed }, 6) < 3) {
            seed = rng_next(&(Rng){ seed });
        }

        if (run_episode(c, seed, replay, maxops, until)) {
            report(c, seed, replay_file);
            if (!replay) {
                dump_sequence(c, seed);
            }
            return 1;
        }
        episodes++;
        steps += c->nops;
        seed = rng_next(&(Rng){ seed });
    } while (!seed_env && !replay &&
             (now() < deadline || (!enough_steps(c, steps, false) &&
                                    now() < overtime)));
    printf("%s: %llu episodes, %llu steps, %llu pcow-img runs, %llu "
           "checks in %.1f s\n", prog, episodes, steps, c->tool_runs,
           c->checks, now() - start);
    print_counts(c);
    if (!seed_env && !replay && !enough_steps(c, steps, true)) {
        return 1;
    }
    printf("%s: passed\n", prog);
    return 0;
}
