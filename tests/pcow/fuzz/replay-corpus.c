/*
 * Corpus replay (suite fuzz): every file of the seed corpus first meets
 * the oracle for its kind, named by the prefix of its file name:
 *
 *   valid-*   opens read-only, alone and with its base (the replay
 *             directory provides "base" and "base.raw"); check finds no
 *             corruption and no leak; opens read-write; still checks clean.
 *   bad-*     refused: pcow_open fails, read-only and read-write, with a
 *             negative errno and a message; the file is left byte for byte
 *             as it was; check counts at least one corruption.
 *   leaky-*   opens; check finds leaks but no corruption; check -r leaks
 *             reclaims every one; then it checks clean and opens.
 *   edge-*    at a limit of the format: each has its outcome pinned from
 *             the spec in edge_cases[] (opens, or refused with which errno
 *             and error kind; alone and with its chain; what a snapshot
 *             create does); check agrees (clean, or a corruption).
 *   regress-* inputs a fuzzer once broke libpcow with: the contract below.
 *
 * A file with any other name fails the test, so that each has a stated
 * expectation.  Then every file, and deterministic mutations of each (bit
 * flips, random bytes, table words set to interesting values,
 * truncations), goes through the fuzz target's entry point (fuzz-entry.h:
 * open, extents, reads, check, repair; a repaired image must reopen and
 * check clean).  A crash, a sanitizer report or a broken contract fails
 * the test.
 *
 * Usage: fuzz-replay CORPUS_DIR [MUTATIONS_PER_FILE]
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow/pcow.h"
#include "fuzz-entry.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const uint64_t interesting[] = {
    0, 1, 2, 3, 5, 7, 0x1000, 0x1001, 0x1003, 0x2000, 0x2003, 0x3000,
    0x3007, 0x4000, 0x4003, 0x8000, 0x10000, 0x100000, 0xc00, 0xfff,
    0x7fffffffffffffffull, 0xffffffffffffffffull, 1ull << 56, 1ull << 50,
    (1ull << 50) + 4096, 0xffffffffull, 0x100000000ull, 4096ull << 22,
};

static size_t mutate(uint8_t *d, size_t size, size_t cap)
{
    int edits = 1 + rnd() % 4, k;

    for (k = 0; k < edits && size; k++) {
        /* Half of the edits hit cluster 0: header slots and hot line */
        size_t span = (rnd() & 1) && size > 4096 ? 4096 : size;
        size_t pos = rnd() % span;

        switch (rnd() % 5) {
        case 0:
            d[pos] ^= 1u << (rnd() % 8);
            break;
        case 1:
            d[pos] = rnd();
            break;
        case 2:
        case 3: {
            uint64_t v = interesting[rnd() % (sizeof(interesting) /
                                              sizeof(interesting[0]))];
            int b;

            pos &= ~(size_t)7;
            for (b = 0; b < 8 && pos + b < size; b++) {
                d[pos + b] = v >> (8 * b);
            }
            break;
        }
        default:
            if (rnd() % 4 == 0) {
                size = pos;             /* truncate */
            } else if (size + 4096 <= cap) {
                memset(d + size, (int)(rnd() & 0xff), 4096);
                size += 4096;           /* grow */
            }
            break;
        }
    }
    return size;
}

/* ---- the oracle ------------------------------------------------------ */

static int oracle_failures;

static bool expect(bool ok, const char *name, const char *what,
                   const char *why)
{
    if (!ok) {
        printf("FAIL %s: %s%s%s\n", name, what, why && *why ? ": " : "",
               why ? why : "");
        oracle_failures++;
    }
    return ok;
}

/* pcow_open + pcow_close; a refusal must come with an errno and a message */
static int try_open(const char *path, unsigned flags, pcow_error *err)
{
    pcow_open_opts o = { .flags = flags };
    pcow_image *img;
    int ret;

    memset(err, 0, sizeof(*err));
    ret = pcow_open(path, &o, &img, err);
    if (ret == 0) {
        ret = pcow_close(img, err);
    } else if (ret >= 0 || err->msg[0] == '\0') {
        snprintf(err->msg, sizeof(err->msg), "refused without a message");
        ret = 1;
    }
    return ret;
}

static bool same_file(const char *path, const uint8_t *data, size_t size)
{
    struct stat st;
    uint8_t *now;
    bool same;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0 || (size_t)st.st_size != size) {
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    now = malloc(size ? size : 1);
    same = now && read(fd, now, size) == (ssize_t)size &&
           memcmp(now, data, size) == 0;
    free(now);
    close(fd);
    return same;
}

static void oracle_valid(const char *name, const char *path)
{
    pcow_check_result res;
    pcow_error err;
    int ret;

    ret = try_open(path, PCOW_OPEN_NO_BACKING, &err);
    expect(ret == 0, name, "open (read-only)", err.msg);
    ret = try_open(path, 0, &err);
    expect(ret == 0, name, "open with its base", err.msg);
    ret = pcow_check(path, 0, false, &res, &err);
    expect(ret == 0 && res.corruptions == 0 && res.leaks == 0, name,
           "check clean", ret < 0 ? err.msg : res.first_problem);
    ret = try_open(path, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING, &err);
    expect(ret == 0, name, "open (read-write)", err.msg);
    ret = pcow_check(path, 0, false, &res, &err);
    expect(ret == 0 && res.corruptions == 0 && res.leaks == 0, name,
           "check clean after a read-write open",
           ret < 0 ? err.msg : res.first_problem);
}

static void oracle_bad(const char *name, const char *path,
                       const uint8_t *data, size_t size)
{
    pcow_check_result res;
    pcow_error err;
    int ret;

    ret = try_open(path, PCOW_OPEN_NO_BACKING, &err);
    expect(ret < 0, name, "refused (read-only open)",
           ret ? err.msg : "it opened");
    ret = try_open(path, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING, &err);
    expect(ret < 0, name, "refused (read-write open)",
           ret ? err.msg : "it opened");
    ret = pcow_check(path, 0, false, &res, &err);
    expect(ret == 0 && res.corruptions > 0, name, "check counts a corruption",
           ret < 0 ? err.msg : "none counted");
    expect(same_file(path, data, size), name,
           "file unchanged by the refused opens and the check", NULL);
}

static void oracle_leaky(const char *name, const char *path)
{
    pcow_check_result res;
    pcow_error err;
    uint64_t leaks;
    int ret;

    ret = try_open(path, PCOW_OPEN_NO_BACKING, &err);
    expect(ret == 0, name, "open (read-only)", err.msg);
    ret = pcow_check(path, 0, false, &res, &err);
    leaks = res.leaks;
    if (!expect(ret == 0 && res.corruptions == 0 && leaks > 0, name,
                "check finds leaks and no corruption",
                ret < 0 ? err.msg : res.first_problem)) {
        return;
    }
    ret = pcow_check(path, PCOW_REPAIR_LEAKS, false, &res, &err);
    expect(ret == 0 && res.leaks_fixed == leaks && res.leaks == 0, name,
           "check -r leaks reclaims them all", ret < 0 ? err.msg : NULL);
    ret = pcow_check(path, 0, false, &res, &err);
    expect(ret == 0 && res.corruptions == 0 && res.leaks == 0, name,
           "check clean after the repair",
           ret < 0 ? err.msg : res.first_problem);
    ret = try_open(path, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING, &err);
    expect(ret == 0, name, "open (read-write) after the repair", err.msg);
}

/*
 * Each edge-* file's outcome, pinned from docs/interop/pcow-spec.rst, so
 * that a change of behaviour at a limit fails the replay.
 */
typedef struct edge_case {
    const char *name;
    int open_code;              /* 0: opens alone (read-only, read-write) */
    pcow_error_kind open_kind;  /* the kind of the refusal */
    int chain_code;             /* open with its chain: 0 or this errno */
    pcow_error_kind chain_kind;
    int commit_code;            /* a snapshot create: 0 or this errno */
    pcow_error_kind commit_kind;
    bool check_corrupt;         /* opens alone, yet check counts one */
} edge_case;

static const edge_case edge_cases[] = {
    /*
     * "Header slots": at generation 2^64-1 the image stays valid and
     * readable; every structural change is refused before it writes
     * ("header generation is at its maximum": EOVERFLOW, a limit).
     */
    { "edge-generation-max", 0, PCOW_ERR_NONE, 0, PCOW_ERR_NONE,
      -EOVERFLOW, PCOW_ERR_LIMIT },
    /*
     * l1_size 1 << 22 is within its bounds, but "File layout" and
     * "Reference rules": every table lies in clusters below the frontier.
     * An L1 table past it is refused as corrupt (open validation).
     */
    { "edge-max-l1", -EINVAL, PCOW_ERR_CORRUPT, -EINVAL, PCOW_ERR_CORRUPT,
      0, PCOW_ERR_NONE },
    /*
     * "Open validation": the backing chain has no loops.  Alone it opens;
     * with its chain (itself) it is refused with ELOOP.
     */
    { "edge-self-loop", 0, PCOW_ERR_NONE, -ELOOP, PCOW_ERR_LOOP,
      0, PCOW_ERR_NONE },
    /*
     * "Backing snapshot": a clone whose base has no snapshot of its id
     * opens alone; with its chain it is refused (ENOENT, naming base and
     * id), and check counts it (the id must exist in the base).
     */
    { "edge-clone-missing-snapshot", 0, PCOW_ERR_NONE, -ENOENT,
      PCOW_ERR_NOT_FOUND, 0, PCOW_ERR_NONE, true },
};

/* @what opened (want 0) or was refused with @want and @kind */
static void expect_outcome(const char *name, const char *what, int ret,
                           const pcow_error *err, int want,
                           pcow_error_kind kind)
{
    char why[600];

    if (want == 0) {
        expect(ret == 0, name, what, ret ? err->msg : NULL);
        return;
    }
    snprintf(why, sizeof(why), "got %d kind %d (%s), expected %d kind %d",
             ret, ret < 0 ? (int)err->kind : 0, ret ? err->msg : "opened",
             want, kind);
    expect(ret == want && err->kind == kind, name, what, why);
}

/* A snapshot create on a read-write open: @c's outcome, file as it was */
static void edge_commit(const edge_case *c, const char *path)
{
    pcow_open_opts o = { .flags = PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING };
    pcow_error err = { 0 };
    pcow_image *img;
    int ret;

    if (pcow_open(path, &o, &img, &err) < 0) {
        expect(false, c->name, "open (read-write)", err.msg);
        return;
    }
    ret = pcow_snapshot_create(img, "edge", NULL, &err);
    expect_outcome(c->name, "snapshot create", ret, &err, c->commit_code,
                   c->commit_kind);
    if (pcow_close(img, &err) < 0) {
        expect(false, c->name, "close after the snapshot create", err.msg);
    }
}

static void oracle_edge(const char *name, const char *path)
{
    const edge_case *c = NULL;
    pcow_check_result res;
    pcow_error err;
    size_t i;
    int ret;

    for (i = 0; i < sizeof(edge_cases) / sizeof(edge_cases[0]); i++) {
        if (!strcmp(edge_cases[i].name, name)) {
            c = &edge_cases[i];
        }
    }
    if (!expect(c != NULL, name, "an expected outcome in edge_cases[]",
                NULL)) {
        return;
    }
    ret = try_open(path, PCOW_OPEN_NO_BACKING, &err);
    expect_outcome(name, "open (read-only)", ret, &err, c->open_code,
                   c->open_kind);
    ret = try_open(path, PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING, &err);
    expect_outcome(name, "open (read-write)", ret, &err, c->open_code,
                   c->open_kind);
    ret = try_open(path, 0, &err);
    expect_outcome(name, "open with its chain", ret, &err, c->chain_code,
                   c->chain_kind);
    if (c->open_code == 0) {
        edge_commit(c, path);
    }
    ret = pcow_check(path, 0, false, &res, &err);
    if (c->open_code == 0 && !c->check_corrupt) {
        expect(ret == 0 && res.corruptions == 0 && res.leaks == 0, name,
               "check clean", ret < 0 ? err.msg : res.first_problem);
    } else {
        expect(ret == 0 && res.corruptions > 0, name,
               "check counts a corruption", ret < 0 ? err.msg : NULL);
    }
}

/* Apply the oracle of @name's kind to @data, written as @dir/input */
static void oracle(const char *dir, const char *name, const uint8_t *data,
                   size_t size)
{
    char path[4096];
    int before = oracle_failures, fd;

    snprintf(path, sizeof(path), "%s/input", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size || close(fd) < 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    if (!strncmp(name, "valid-", 6)) {
        oracle_valid(name, path);
    } else if (!strncmp(name, "bad-", 4)) {
        oracle_bad(name, path, data, size);
    } else if (!strncmp(name, "leaky-", 6)) {
        oracle_leaky(name, path);
    } else if (!strncmp(name, "edge-", 5)) {
        oracle_edge(name, path);
    } else if (strncmp(name, "regress-", 8)) {
        expect(false, name, "a known prefix (valid-, bad-, leaky-, edge-, "
               "regress-)", NULL);
    }
    if (oracle_failures == before) {
        printf("ok   %s\n", name);
    }
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    char dir[256], path[4096];
    char **names = NULL;
    size_t n = 0, i;
    unsigned long runs = 0;
    int per_file = argc > 2 ? atoi(argv[2]) : 48;
    struct dirent *de;
    DIR *dp;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR [MUTATIONS_PER_FILE]\n",
                argv[0]);
        return 2;
    }
    snprintf(dir, sizeof(dir), "%s/pcow-replay-XXXXXX", base);
    if (!mkdtemp(dir) || pcow_fuzz_setup(dir) < 0) {
        fprintf(stderr, "cannot set up %s\n", dir);
        return 2;
    }
    dp = opendir(argv[1]);
    if (!dp) {
        fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    while ((de = readdir(dp))) {
        if (de->d_name[0] != '.') {
            names = realloc(names, (n + 1) * sizeof(*names));
            names[n++] = strdup(de->d_name);
        }
    }
    closedir(dp);
    qsort(names, n, sizeof(*names), by_name);
    for (i = 0; i < n; i++) {
        struct stat st;
        uint8_t *orig, *buf;
        size_t cap;
        int fd, m;

        snprintf(path, sizeof(path), "%s/%s", argv[1], names[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            if (fd >= 0) {
                close(fd);
            }
            continue;
        }
        cap = st.st_size + 8 * 4096;
        orig = calloc(1, cap);
        buf = malloc(cap);
        if (!orig || !buf ||
            read(fd, orig, st.st_size) != (ssize_t)st.st_size) {
            fprintf(stderr, "cannot read %s\n", path);
            return 2;
        }
        close(fd);
        oracle(dir, names[i], orig, st.st_size);
        pcow_fuzz_one(dir, orig, st.st_size);
        runs++;
        for (m = 0; m < per_file; m++) {
            size_t size;

            memcpy(buf, orig, st.st_size);
            size = mutate(buf, st.st_size, cap);
            pcow_fuzz_one(dir, buf, size);
            runs++;
        }
        free(orig);
        free(buf);
        free(names[i]);
    }
    free(names);
    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    if (system(path) != 0) {
        fprintf(stderr, "cannot remove %s\n", dir);
    }
    printf("corpus files: %zu, inputs replayed: %lu, oracle failures: %d, "
           "contract violations: 0\n", n, runs, oracle_failures);
    if (!n) {
        fprintf(stderr, "%s: no corpus files\n", argv[1]);
    }
    return n && !oracle_failures ? 0 : 1;
}
