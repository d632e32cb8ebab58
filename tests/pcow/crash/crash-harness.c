/*
 * pcow crash-point harness
 *
 * Records, through the persistence hook of libpcow (pcow_persist_hook), the
 * ordered stream of durable operations that an operation on a working copy
 * makes (WRITE with its bytes, BARRIER, TRUNCATE, ALLOCATE, PUNCH), then
 * rebuilds the image file(s) as a crash could have left them and checks
 * every such crash state.
 *
 * Crash states.  The stream is cut after every operation P (every prefix).
 * A BARRIER of file F (fdatasync) makes everything F received before it
 * durable.  A SYNC of F over a range (msync of a range, pmem_persist of
 * cache lines) makes durable only the WRITE, ALLOCATE and PUNCH parts that
 * lie inside its range: an operation it covers in part is split at the
 * range's ends (model_syncs()), and the parts outside stay pending, as do
 * TRUNCATEs.  An operation not yet made durable is *pending*: a crash may
 * have kept any subset of them (the disk or the CPU caches reorder
 * unflushed writes, as PMDK's pmreorder models it).  So for a cut after a
 * non-barrier operation P we check, with P itself applied (nothing to
 * apply for a SYNC, whose cut is skipped when it adds no state):
 *   - every subset of the other pending operations when there are at most
 *     FULL_SUBSET_MAX of them (this includes the plain prefix),
 *   - otherwise the prefix and RANDOM_SUBSETS_MID random subsets, and where
 *     the epoch ends (the file's next operation is a BARRIER or SYNC) also each
 *     single pending operation dropped and RANDOM_SUBSETS random subsets;
 *   - and, when P is a WRITE of at least 1 KiB, two torn versions of it
 *     (only its first half, only its second half, at 512-byte boundaries),
 *     on top of the full prefix.
 * Subsets are applied in stream order: a crash loses writes, it does not
 * reorder two writes of the same bytes.  Aligned 8-byte stores (the commit
 * stores of libpcow) are never torn.
 *
 * Checks of each crash state (see check_state()):
 *   1. pcow_open read-only succeeds (for create: may fail cleanly before the
 *      create's barrier);
 *   2. pcow_check reports 0 corruptions (leaks allowed; the state after the
 *      whole stream, which ends with a clean close, must have no leaks);
 *   3. the guest-visible view (virtual size, every byte, which 4 KiB pages
 *      this image owns, the snapshot names) is one the operation may show:
 *      every step k of a scenario records its view V_k after it returned;
 *      a crash state that applied everything up to stream index L and
 *      nothing at or after stream index H must show, for each chunk of the
 *      step's granularity, the content of one V_k with lo <= k <= hi, lo
 *      the last step that ended at or before L (its writes had completed
 *      durably: they must be present), hi the first step that ended at or
 *      after H.  Granularity per step:
 *        ATOMIC (whole image)  create, reserve, expansion, COW (content is
 *                              unchanged), snapshot create/revert/delete,
 *                              set_backing, resize, commit, compact,
 *                              flush, close;
 *        COW unit              pcow_pwrite and pcow_zero_range: every COW
 *                              unit of the range shows old or new content;
 *        512 bytes             in torn states of non-atomic steps;
 *   4. after a read-write open + close: pcow_check reports 0 corruptions and
 *      0 leaks, and the view is exactly the one read before recovery;
 *   5. for snapshot scenarios: every snapshot still holds the content it was
 *      created with (checked by reverting a copy to it), in every state of
 *      a snapshot operation and in every SNAP_SAMPLE-th state otherwise;
 *   6. for the resize scenario: the state, grown to GROW_CHECK_SIZE after a
 *      read-write open and after one with PCOW_OPEN_NO_RECOVER, reads zeros
 *      beyond its virtual size (nothing a cut shrink left comes back).
 * The check-repair scenarios (check -r all of a damaged image, whose cut
 * states cannot all open) check each state instead with
 * check_repair_state(): refused only with a corruption counted, the
 * repaired content when it opens, and a second repair that leaves it
 * clean, with that content and the snapshot's.
 * Before enumerating, the harness replays the whole stream onto the
 * before-image and compares the result with the real file byte for byte:
 * libpcow must report every change it makes through the hook.
 *
 * Usage: crash-harness [-v] [-k] [SCENARIO...]
 *   -v  print every failing state in full, -k keep the work directory.
 *   PCOW_CRASH_DIR: where to work (default /dev/shm, else $TMPDIR, /tmp).
 * Prints "crash states checked: N, failures: F"; exit 0 iff F == 0.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>

#include "pcow/pcow.h"
#include "pcow-int.h"       /* pcow_check_hooked */

#define KiB (1024ull)
#define MiB (1024ull * KiB)

#define MAX_FILES 2
#define MAX_STEPS 32
#define MAX_SNAPS 8
#define PAGE 4096ull
#define SECTOR 512ull
#define ATOMIC UINT64_MAX
#define FULL_SUBSET_MAX 5
#define RANDOM_SUBSETS 8
#define RANDOM_SUBSETS_MID 1
#define SNAP_SAMPLE 4
#define TORN_MIN 1024
#define MAX_REPORTS 12

/* ---- recording ---------------------------------------------------------- */

typedef struct Op {
    int file;
    pcow_persist_op op;
    uint64_t off;
    uint64_t len;
    uint8_t *data;
    size_t durable_at;      /* index of the BARRIER/SYNC that persists it */
} Op;

typedef struct Rec {
    Op *ops;
    size_t n, cap;
    bool on;
} Rec;

typedef struct HookTag {
    Rec *rec;
    int file;
} HookTag;

static bool verbose;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2),
                                                     noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "crash-harness: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void rec_hook(void *opaque, pcow_persist_op op, uint64_t off,
                     const void *data, uint64_t len)
{
    HookTag *t = opaque;
    Rec *r = t->rec;
    Op *o;

    if (!r->on) {
        return;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->ops = realloc(r->ops, r->cap * sizeof(*r->ops));
        if (!r->ops) {
            die("out of memory recording");
        }
    }
    o = &r->ops[r->n++];
    o->file = t->file;
    o->op = op;
    o->off = off;
    o->len = len;
    o->data = NULL;
    if (op == PCOW_OP_WRITE) {
        o->data = xmalloc(len);
        memcpy(o->data, data, len);
    }
}

static void rec_free(Rec *r)
{
    size_t i;

    for (i = 0; i < r->n; i++) {
        free(r->ops[i].data);
    }
    free(r->ops);
    memset(r, 0, sizeof(*r));
}

/* ---- views: what the guest sees ---------------------------------------- */

typedef struct View {
    bool ok;
    uint64_t vsize;
    uint8_t *content;       /* vsize bytes */
    uint8_t *owned;         /* per 4 KiB page: data of this image (depth 0) */
    char snaps[1024];       /* snapshot names, comma separated */
    uint64_t cap;           /* bytes allocated for content (reused) */
} View;

static void view_free(View *v)
{
    free(v->content);
    free(v->owned);
    memset(v, 0, sizeof(*v));
}

static uint64_t fnv(const uint8_t *p, uint64_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;

    while (len--) {
        h = (h ^ *p++) * 0x100000001b3ull;
    }
    return h;
}

/* Read everything @img shows; 0 or a negative errno (message in @why) */
static int view_of_image(pcow_image *img, View *v, char *why, size_t wlen)
{
    pcow_snapshot_info *sl = NULL;
    pcow_error err = { 0 };
    uint64_t off;
    int64_t r;
    int n, k;

    v->ok = false;
    v->snaps[0] = '\0';
    v->vsize = pcow_virtual_size(img);
    if (v->cap < v->vsize) {
        /* Buffers are reused from state to state: no page faults */
        free(v->content);
        free(v->owned);
        v->content = xmalloc(v->vsize);
        v->owned = xmalloc(v->vsize / PAGE + 1);
        v->cap = v->vsize;
    }
    memset(v->owned, 0, v->vsize / PAGE + 1);
    r = pcow_pread(img, 0, v->content, v->vsize, &err);
    if (r != (int64_t)v->vsize) {
        snprintf(why, wlen, "pread failed: %s", err.msg);
        return r < 0 ? (int)r : -EIO;
    }
    for (off = 0; off < v->vsize;) {
        pcow_extent e;
        int ret = pcow_get_extent(img, off, v->vsize - off, &e);

        if (ret < 0 || e.length == 0 || e.offset != off) {
            snprintf(why, wlen, "get_extent(0x%" PRIx64 ") failed: %d", off,
                     ret);
            return ret < 0 ? ret : -EIO;
        }
        if (e.kind == PCOW_EXTENT_DATA && e.depth == 0) {
            uint64_t p;

            for (p = off / PAGE; p < (off + e.length + PAGE - 1) / PAGE; p++) {
                v->owned[p] = 1;
            }
        }
        off += e.length;
    }
    n = pcow_snapshot_list(img, &sl, &err);
    if (n < 0) {
        snprintf(why, wlen, "snapshot_list failed: %s", err.msg);
        return n;
    }
    for (k = 0; k < n; k++) {
        size_t l = strlen(v->snaps);
        uint64_t vh = 0;

        if (sl[k].vm_state_size) {
            /* A snapshot shows with its whole VM state, or not at all */
            uint8_t *b = xmalloc(sl[k].vm_state_size);

            if (pcow_snapshot_read_vm_state(img, sl[k].name, 0, b,
                                            sl[k].vm_state_size, &err) < 0) {
                snprintf(why, wlen, "VM state of '%s': %s", sl[k].name,
                         err.msg);
                free(b);
                free(sl);
                return -EIO;
            }
            vh = fnv(b, sl[k].vm_state_size) ^ sl[k].vm_clock_nsec;
            free(b);
        }
        if (vh) {
            snprintf(v->snaps + l, sizeof(v->snaps) - l, "%s=%016" PRIx64
                     ",", sl[k].name, vh);
        } else {
            snprintf(v->snaps + l, sizeof(v->snaps) - l, "%s,", sl[k].name);
        }
    }
    free(sl);
    v->ok = true;
    return 0;
}

static int view_read(const char *path, unsigned flags, View *v, char *why,
                     size_t wlen)
{
    pcow_open_opts o = { .flags = flags };
    pcow_error err = { 0 };
    pcow_image *img;
    int ret;

    v->ok = false;
    ret = pcow_open(path, &o, &img, &err);
    if (ret < 0) {
        snprintf(why, wlen, "open failed (%d): %s", ret, err.msg);
        return ret;
    }
    ret = view_of_image(img, v, why, wlen);
    pcow_close(img, NULL);
    return ret;
}

/* ---- files --------------------------------------------------------------- */

static void path_join(char *out, size_t len, const char *dir, const char *f)
{
    if ((size_t)snprintf(out, len, "%s/%s", dir, f) >= len) {
        die("path too long: %s/%s", dir, f);
    }
}

/* Copy @src to @dst keeping holes (leak counting looks at allocation) */
static void copy_sparse(const char *src, const char *dst)
{
    static uint8_t buf[1 << 16];
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int out;
    off_t size, pos = 0;

    if (in < 0) {
        die("open %s: %s", src, strerror(errno));
    }
    unlink(dst);
    out = open(dst, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        die("create %s: %s", dst, strerror(errno));
    }
    size = lseek(in, 0, SEEK_END);
    while (pos < size) {
        off_t d = lseek(in, pos, SEEK_DATA);
        off_t h;

        if (d < 0) {
            break;
        }
        h = lseek(in, d, SEEK_HOLE);
        if (h < 0 || h > size) {
            h = size;
        }
        while (d < h) {
            size_t n = h - d < (off_t)sizeof(buf) ? (size_t)(h - d) :
                       sizeof(buf);
            ssize_t got = pread(in, buf, n, d);

            if (got <= 0 || pwrite(out, buf, got, d) != got) {
                die("copy %s: %s", src, strerror(errno));
            }
            d += got;
        }
        pos = h;
    }
    if (ftruncate(out, size) < 0) {
        die("truncate %s: %s", dst, strerror(errno));
    }
    close(in);
    close(out);
}

static bool files_equal(const char *a, const char *b, char *why,
                        size_t wlen)
{
    static uint8_t ba[1 << 16], bb[1 << 16];
    int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
    struct stat sa, sb;
    uint64_t pos = 0;
    bool eq = false;

    if (fa < 0 || fb < 0 || fstat(fa, &sa) < 0 || fstat(fb, &sb) < 0) {
        snprintf(why, wlen, "cannot open %s or %s", a, b);
        goto out;
    }
    if (sa.st_size != sb.st_size) {
        snprintf(why, wlen, "size %lld != %lld", (long long)sa.st_size,
                 (long long)sb.st_size);
        goto out;
    }
    while (pos < (uint64_t)sa.st_size) {
        ssize_t na = pread(fa, ba, sizeof(ba), pos);
        ssize_t nb = pread(fb, bb, sizeof(bb), pos);

        if (na <= 0 || na != nb || memcmp(ba, bb, na)) {
            uint64_t i = 0;

            while (na > 0 && (ssize_t)i < na && ba[i] == bb[i]) {
                i++;
            }
            snprintf(why, wlen, "content differs at 0x%" PRIx64, pos + i);
            goto out;
        }
        pos += na;
    }
    eq = true;
out:
    if (fa >= 0) {
        close(fa);
    }
    if (fb >= 0) {
        close(fb);
    }
    return eq;
}

/* torn: 0 whole, 1 first half only, 2 second half only */
static void apply_op(int fd, const Op *o, int torn)
{
    int ret = 0;

    switch (o->op) {
    case PCOW_OP_WRITE: {
        /* Tear at a 512-byte boundary of the file, near the middle */
        uint64_t half = ((o->off + o->len / 2) & ~(SECTOR - 1)) - o->off;
        uint64_t off = o->off, len = o->len;
        const uint8_t *p = o->data;

        if (torn == 1) {
            len = half;
        } else if (torn == 2) {
            off += half;
            p += half;
            len -= half;
        }
        if (len && pwrite(fd, p, len, off) != (ssize_t)len) {
            ret = -1;
        }
        break;
    }
    case PCOW_OP_TRUNCATE:
        ret = ftruncate(fd, o->off);
        break;
    case PCOW_OP_ALLOCATE:
        ret = fallocate(fd, 0, o->off, o->len);
        if (ret < 0 && errno == EOPNOTSUPP) {
            struct stat st;

            ret = fstat(fd, &st);
            if (ret == 0 && (uint64_t)st.st_size < o->off + o->len) {
                ret = ftruncate(fd, o->off + o->len);
            }
        }
        break;
    case PCOW_OP_PUNCH:
        ret = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        o->off, o->len);
        break;
    case PCOW_OP_BARRIER:
    case PCOW_OP_SYNC:
        break;
    }
    if (ret < 0) {
        die("replaying op %d at 0x%" PRIx64 ": %s", o->op, o->off,
            strerror(errno));
    }
}

/* ---- scenarios ----------------------------------------------------------- */

typedef struct Step {
    size_t mark;            /* ops recorded when the step had returned */
    uint64_t gran;          /* ATOMIC or a chunk size */
    View v;
    char what[64];
} Step;

typedef struct SnapExpect {
    char name[64];
    uint64_t hash;
    uint64_t vsize;
} SnapExpect;

struct CState;

typedef struct Scen {
    char name[48];
    char dir[256], work[300], before[300], state[300];
    const char *files[MAX_FILES];   /* tracked (written) files */
    int nfiles;
    const char *view;               /* file whose view is checked */
    HookTag tags[MAX_FILES];
    Rec rec;
    Step steps[MAX_STEPS];
    int nsteps;
    bool create;                    /* state 0 has no image yet */
    bool verify_snaps;
    SnapExpect snap[MAX_SNAPS];
    int nsnap;
    uint64_t rng;
    uint64_t states, failures;
    uint64_t reverts_checked;
    View scratch[2];                /* views of crash states, reused */
    /* check -r: states are checked against this content (see t_repair) */
    bool repair;
    View want;
    /* optional scenario-specific check of each crash state (see t_resize) */
    void (*extra)(struct Scen *s, const struct CState *cs, const View *v);
} Scen;

static char root[256];
static uint64_t total_states, total_failures;

static uint64_t rnd(Scen *s)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return s->rng;
}

static void fill(uint8_t *buf, uint64_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1, i;

    for (i = 0; i < len; i++) {
        if (i % 8 == 0) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        buf[i] = x >> (8 * (i % 8));
    }
}

static void wpath(Scen *s, const char *f, char *out, size_t len)
{
    path_join(out, len, s->work, f);
}

static void scen_init(Scen *s, const char *name)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    path_join(s->dir, sizeof(s->dir), root, name);
    path_join(s->work, sizeof(s->work), s->dir, "work");
    path_join(s->before, sizeof(s->before), s->dir, "before");
    path_join(s->state, sizeof(s->state), s->dir, "state");
    if (mkdir(s->dir, 0755) < 0 || mkdir(s->work, 0755) < 0 ||
        mkdir(s->before, 0755) < 0 || mkdir(s->state, 0755) < 0) {
        die("mkdir %s: %s", s->dir, strerror(errno));
    }
    s->rng = fnv((const uint8_t *)name, strlen(name)) | 1;
    s->rec.on = false;
}

static void track(Scen *s, const char *file)
{
    s->tags[s->nfiles].rec = &s->rec;
    s->tags[s->nfiles].file = s->nfiles;
    s->files[s->nfiles++] = file;
    if (!s->view) {
        s->view = file;
    }
}

static HookTag *tag_of(Scen *s, const char *file)
{
    int i;

    for (i = 0; i < s->nfiles; i++) {
        if (!strcmp(s->files[i], file)) {
            return &s->tags[i];
        }
    }
    die("%s is not tracked", file);
}

/* Setup helpers: no hook */
static void mk(Scen *s, const char *f, uint64_t size, uint32_t cs,
               uint32_t cu, const char *backing, pcow_backing_format fmt)
{
    pcow_create_opts o = {
        .virtual_size = size, .cluster_size = cs, .cow_unit = cu,
        .backing_file = backing, .backing_format = fmt,
    };
    pcow_error err = { 0 };
    char p[512];

    wpath(s, f, p, sizeof(p));
    if (pcow_create(p, &o, &err) < 0) {
        die("create %s: %s", p, err.msg);
    }
}

static void mk_raw(Scen *s, const char *f, uint64_t size, uint64_t seed)
{
    uint8_t *buf = xmalloc(size);
    char p[512];
    int fd;

    wpath(s, f, p, sizeof(p));
    fill(buf, size, seed);
    fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || pwrite(fd, buf, size, 0) != (ssize_t)size) {
        die("write %s", p);
    }
    close(fd);
    free(buf);
}

/* Open a work file; with the hook when it is tracked */
static pcow_image *op_open(Scen *s, const char *f, unsigned flags)
{
    pcow_open_opts o = { .flags = flags };
    pcow_error err = { 0 };
    pcow_image *img;
    char p[512];
    int i;

    for (i = 0; i < s->nfiles; i++) {
        if (!strcmp(s->files[i], f)) {
            o.hook = rec_hook;
            o.hook_opaque = &s->tags[i];
        }
    }
    wpath(s, f, p, sizeof(p));
    if (pcow_open(p, &o, &img, &err) < 0) {
        die("open %s: %s", p, err.msg);
    }
    return img;
}

static void op_close(pcow_image *img)
{
    pcow_error err = { 0 };

    if (pcow_close(img, &err) < 0) {
        die("close: %s", err.msg);
    }
}

static void op_write(pcow_image *img, uint64_t off, uint64_t len,
                     uint64_t seed)
{
    uint8_t *buf = xmalloc(len);
    pcow_error err = { 0 };

    fill(buf, len, seed);
    if (pcow_pwrite(img, off, buf, len, &err) != (int64_t)len) {
        die("pwrite 0x%" PRIx64 "+0x%" PRIx64 ": %s", off, len, err.msg);
    }
    free(buf);
}

static void op_flush(pcow_image *img)
{
    pcow_error err = { 0 };

    if (pcow_flush(img, &err) < 0) {
        die("flush: %s", err.msg);
    }
}

static void op_defer(pcow_image *img, bool on)
{
    pcow_error err = { 0 };

    if (pcow_defer_commits(img, on, &err) < 0) {
        die("defer commits %s: %s", on ? "on" : "off", err.msg);
    }
}

static void op_cow(pcow_image *img, uint64_t off, bool whole)
{
    pcow_extent e;
    int ret = pcow_cow(img, off, whole, &e);

    if (ret < 0 && ret != -EEXIST) {
        die("cow 0x%" PRIx64 ": %s", off, strerror(-ret));
    }
}

static void op_expand(pcow_image *img, uint64_t v)
{
    uint64_t fo;
    int ret = pcow_expand_cluster(img, v, &fo);

    if (ret < 0) {
        die("expand %" PRIu64 ": %s", v, strerror(-ret));
    }
}

static void op_snap(pcow_image *img, char what, const char *name)
{
    pcow_error err = { 0 };
    int ret;

    switch (what) {
    case 'c':
        ret = pcow_snapshot_create(img, name, NULL, &err);
        break;
    case 'a':
        ret = pcow_snapshot_revert(img, name, &err);
        break;
    default:
        ret = pcow_snapshot_delete(img, name, &err);
        break;
    }
    if (ret < 0) {
        die("snapshot -%c %s: %s", what, name, err.msg);
    }
}

/* Snapshot @name with @len bytes of VM state (pattern @seed) */
static void op_snap_vm(pcow_image *img, const char *name, uint64_t len,
                       uint64_t seed)
{
    uint8_t *b = xmalloc(len);
    pcow_vm_state vm = { .data = b, .size = len, .vm_clock_nsec = seed };
    pcow_error err = { 0 };

    fill(b, len, seed);
    if (pcow_snapshot_create_vm(img, name, &vm, NULL, &err) < 0) {
        die("snapshot -c %s with VM state: %s", name, err.msg);
    }
    free(b);
}

/* Remember what snapshot @name must hold: the view of @img right now */
static void expect_snap(Scen *s, pcow_image *img, const char *name)
{
    SnapExpect *e = &s->snap[s->nsnap++];
    char why[256];
    View v = { 0 };

    if (view_of_image(img, &v, why, sizeof(why)) < 0) {
        die("%s", why);
    }
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->hash = fnv(v.content, v.vsize);
    e->vsize = v.vsize;
    view_free(&v);
    s->verify_snaps = true;
}

static void live_view(Scen *s, View *v)
{
    char p[512], why[600];

    wpath(s, s->view, p, sizeof(p));
    if (view_read(p, PCOW_OPEN_NO_LOCK, v, why, sizeof(why)) < 0) {
        die("%s: reading the live view: %s", s->name, why);
    }
}

/* Everything is set up: remember the files and the view, start recording */
static void scen_start(Scen *s)
{
    char p[512], q[512];
    struct stat st;
    int i;

    for (i = 0; i < s->nfiles; i++) {
        wpath(s, s->files[i], p, sizeof(p));
        path_join(q, sizeof(q), s->before, s->files[i]);
        if (s->create && stat(p, &st) < 0) {
            int fd = open(q, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

            if (fd < 0) {
                die("create %s", q);
            }
            close(fd);
        } else {
            copy_sparse(p, q);
        }
    }
    s->nsteps = 1;
    s->steps[0].mark = 0;
    s->steps[0].gran = ATOMIC;
    snprintf(s->steps[0].what, sizeof(s->steps[0].what), "before");
    if (!s->create) {
        live_view(s, &s->steps[0].v);
    }
    s->rec.on = true;
}

/* Untracked files (bases) are shared with the crash states by hard links */
static void link_untracked(Scen *s)
{
    char p[512], q[512];
    FILE *ls;
    char cmd[700], name[256];

    snprintf(cmd, sizeof(cmd), "ls -1 '%s'", s->work);
    ls = popen(cmd, "r");
    if (!ls) {
        die("popen");
    }
    while (fgets(name, sizeof(name), ls)) {
        bool tracked = false;
        int i;

        name[strcspn(name, "\n")] = '\0';
        for (i = 0; i < s->nfiles; i++) {
            tracked |= !strcmp(s->files[i], name);
        }
        if (tracked) {
            continue;
        }
        wpath(s, name, p, sizeof(p));
        path_join(q, sizeof(q), s->state, name);
        if (link(p, q) < 0) {
            copy_sparse(p, q);
        }
    }
    pclose(ls);
}

static void step(Scen *s, uint64_t gran, const char *what)
{
    Step *st = &s->steps[s->nsteps++];

    if (s->nsteps > MAX_STEPS) {
        die("too many steps");
    }
    st->mark = s->rec.n;
    st->gran = gran;
    snprintf(st->what, sizeof(st->what), "%s", what);
    live_view(s, &st->v);
}

/* A crash state: which ops of the stream are applied */
typedef struct CState {
    size_t p;               /* ops [0, p) considered; p - 1 is applied */
    uint8_t *applied;       /* per op */
    int torn;               /* op p - 1: 0 whole, 1/2 a half */
    char desc[128];
} CState;

static void build_state(Scen *s, const CState *cs)
{
    int fd[MAX_FILES];
    char p[512], q[512];
    size_t i;
    int f;

    for (f = 0; f < s->nfiles; f++) {
        path_join(p, sizeof(p), s->before, s->files[f]);
        path_join(q, sizeof(q), s->state, s->files[f]);
        copy_sparse(p, q);
        fd[f] = open(q, O_RDWR | O_CLOEXEC);
        if (fd[f] < 0) {
            die("open %s", q);
        }
    }
    for (i = 0; i < cs->p; i++) {
        if (cs->applied[i]) {
            apply_op(fd[s->rec.ops[i].file], &s->rec.ops[i],
                     i == cs->p - 1 ? cs->torn : 0);
        }
    }
    for (f = 0; f < s->nfiles; f++) {
        close(fd[f]);
    }
}

static bool views_equal(const View *a, const View *b)
{
    return a->ok == b->ok && a->vsize == b->vsize &&
           !strcmp(a->snaps, b->snaps) &&
           !memcmp(a->content, b->content, a->vsize) &&
           !memcmp(a->owned, b->owned, a->vsize / PAGE);
}

/* Is @v a view steps lo..hi allow, at granularity @gran? */
static bool view_allowed(Scen *s, const View *v, int lo, int hi,
                         uint64_t gran, char *why, size_t wlen)
{
    bool cand[MAX_STEPS] = { false };
    bool any = false;
    uint64_t c, pg;
    int k;

    for (k = lo; k <= hi; k++) {
        const View *e = &s->steps[k].v;

        cand[k] = e->ok && e->vsize == v->vsize && !strcmp(e->snaps, v->snaps);
        any |= cand[k];
    }
    if (!any) {
        snprintf(why, wlen, "virtual size %" PRIu64 " / snapshots '%s' match "
                 "no allowed state (steps %d..%d: %s .. %s)", v->vsize,
                 v->snaps, lo, hi, s->steps[lo].what, s->steps[hi].what);
        return false;
    }
    if (gran == ATOMIC) {
        for (k = lo; k <= hi; k++) {
            if (cand[k] && views_equal(v, &s->steps[k].v)) {
                return true;
            }
        }
        for (k = lo; k <= hi; k++) {
            const View *e = &s->steps[k].v;

            if (cand[k]) {
                for (c = 0; c < v->vsize && e->content[c] == v->content[c];
                     c++) {
                }
                for (pg = 0; pg < v->vsize / PAGE &&
                     e->owned[pg] == v->owned[pg]; pg++) {
                }
                snprintf(why, wlen, "view is neither of steps %d..%d "
                         "(%s .. %s): vs step %d first byte differs at "
                         "0x%" PRIx64 ", ownership at page 0x%" PRIx64, lo,
                         hi, s->steps[lo].what, s->steps[hi].what, k, c,
                         (uint64_t)(pg * PAGE));
                break;
            }
        }
        return false;
    }
    for (c = 0; c < v->vsize; c += gran) {
        uint64_t n = v->vsize - c < gran ? v->vsize - c : gran;
        bool ok = false;

        for (k = lo; k <= hi && !ok; k++) {
            ok = cand[k] && !memcmp(v->content + c, s->steps[k].v.content + c,
                                    n);
        }
        if (!ok) {
            snprintf(why, wlen, "guest bytes 0x%" PRIx64 "+0x%" PRIx64
                     " match none of steps %d..%d (%s .. %s)", c, n, lo, hi,
                     s->steps[lo].what, s->steps[hi].what);
            return false;
        }
    }
    for (pg = 0; pg < v->vsize / PAGE; pg++) {
        bool ok = false;

        for (k = lo; k <= hi && !ok; k++) {
            ok = cand[k] && s->steps[k].v.owned[pg] == v->owned[pg];
        }
        if (!ok) {
            snprintf(why, wlen, "ownership of page 0x%" PRIx64 " (%d) "
                     "matches none of steps %d..%d", (uint64_t)(pg * PAGE),
                     v->owned[pg],
                     lo, hi);
            return false;
        }
    }
    return true;
}

static void fail(Scen *s, const CState *cs, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(Scen *s, const CState *cs, const char *fmt, ...)
{
    va_list ap;

    s->failures++;
    if (s->failures > MAX_REPORTS && !verbose) {
        return;
    }
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s [%s]: ", s->name, cs->desc);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* Every snapshot holds what it held when it was created */
static bool verify_snapshots(Scen *s, const View *v, const CState *cs)
{
    char p[512], q[512], name[64];
    const char *n = v->snaps;

    path_join(p, sizeof(p), s->state, s->view);
    path_join(q, sizeof(q), s->state, "revert-check");
    while (*n) {
        size_t l = strcspn(n, ",="); /* the name, without its VM state */
        SnapExpect *e = NULL;
        pcow_error err = { 0 };
        pcow_image *img;
        View rv = { 0 };
        char why[600];
        int k;

        snprintf(name, sizeof(name), "%.*s", (int)l, n);
        n += strcspn(n, ",");
        n += *n == ',';
        for (k = 0; k < s->nsnap; k++) {
            if (!strcmp(s->snap[k].name, name)) {
                e = &s->snap[k];
            }
        }
        if (!e) {
            fail(s, cs, "unexpected snapshot '%s'", name);
            return false;
        }
        copy_sparse(p, q);
        if (pcow_open(q, &(pcow_open_opts){ .flags = PCOW_OPEN_RDWR }, &img,
                      &err) < 0 ||
            pcow_snapshot_revert(img, name, &err) < 0) {
            fail(s, cs, "revert to '%s' failed: %s", name, err.msg);
            return false;
        }
        if (view_of_image(img, &rv, why, sizeof(why)) < 0) {
            pcow_close(img, NULL);
            fail(s, cs, "after revert to '%s': %s", name, why);
            view_free(&rv);
            return false;
        }
        pcow_close(img, NULL);
        s->reverts_checked++;
        if (rv.vsize != e->vsize || fnv(rv.content, rv.vsize) != e->hash) {
            fail(s, cs, "snapshot '%s' does not hold its content any more",
                 name);
            view_free(&rv);
            return false;
        }
        view_free(&rv);
    }
    unlink(q);
    return true;
}

static void check_repair_state(Scen *s, const CState *cs, bool final);

static void check_state(Scen *s, const CState *cs, int lo, int hi,
                        uint64_t gran, bool final)
{
    pcow_check_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    View *v = &s->scratch[0], *v2 = &s->scratch[1];
    char p[512], why[1400];
    int ret;

    s->states++;
    build_state(s, cs);
    if (s->repair) {
        check_repair_state(s, cs, final);
        return;
    }
    path_join(p, sizeof(p), s->state, s->view);

    /* 1. read-only open, and the view */
    ret = view_read(p, 0, v, why, sizeof(why));
    if (ret < 0) {
        if (s->create && lo == 0) {
            /* A crash inside create may leave no image: check must cope */
            memset(&res, 0, sizeof(res));
            ret = pcow_check(p, 0, false, &res, &err);
            if (ret < 0 && ret != -EINVAL) {
                /* a clean error return is all we ask */
            }
            return;
        }
        fail(s, cs, "%s", why);
        return;
    }
    /* 2. check: no corruption (leaks allowed) */
    memset(&res, 0, sizeof(res));
    ret = pcow_check(p, 0, false, &res, &err);
    if (ret < 0 || res.corruptions) {
        fail(s, cs, "check: ret %d, %" PRIu64 " corruptions: %s %s", ret,
             res.corruptions, res.first_problem, err.msg);
        return;
    }
    if (final && res.leaks) {
        fail(s, cs, "%" PRIu64 " leaks after a clean close", res.leaks);
        return;
    }
    /* 3. the view is one the operation may show */
    if (!view_allowed(s, v, lo, hi, gran, why, sizeof(why))) {
        fail(s, cs, "%s", why);
        return;
    }
    /* 4. recovery: read-write open + close, then clean and the same view */
    ret = pcow_open(p, &(pcow_open_opts){ .flags = PCOW_OPEN_RDWR }, &img,
                    &err);
    if (ret < 0) {
        fail(s, cs, "read-write open failed: %s", err.msg);
        return;
    }
    ret = pcow_close(img, &err);
    if (ret < 0) {
        fail(s, cs, "close after recovery failed: %s", err.msg);
        return;
    }
    memset(&res, 0, sizeof(res));
    ret = pcow_check(p, 0, false, &res, &err);
    if (ret < 0 || res.corruptions || res.leaks) {
        fail(s, cs, "check after recovery: ret %d, %" PRIu64 " corruptions, "
             "%" PRIu64 " leaks: %s", ret, res.corruptions, res.leaks,
             res.first_problem);
        return;
    }
    ret = view_read(p, 0, v2, why, sizeof(why));
    if (ret < 0) {
        fail(s, cs, "after recovery: %s", why);
        return;
    }
    if (!views_equal(v, v2)) {
        fail(s, cs, "recovery changed the guest-visible view");
        return;
    }
    /*
     * 5. snapshots hold their content: in every state of a snapshot
     * operation, in every SNAP_SAMPLE-th state of the others
     */
    if (s->verify_snaps && (strstr(s->steps[hi].what, "snapshot") ||
                            s->states % SNAP_SAMPLE == 0)) {
        verify_snapshots(s, v, cs);
    }
    if (s->extra) {
        s->extra(s, cs, v);
    }
}

/* Steps allowed for a state applying all of [0, first_missing) and
 * nothing at or after @p */
static void bounds(Scen *s, size_t first_missing, size_t p, int *lo, int *hi)
{
    int k, a = 0, b = s->nsteps - 1;

    for (k = 0; k < s->nsteps; k++) {
        if (s->steps[k].mark <= first_missing) {
            a = k;
        }
    }
    for (k = s->nsteps - 1; k >= 0; k--) {
        if (s->steps[k].mark >= p) {
            b = k;
        }
    }
    *lo = a < b ? a : b;
    *hi = a < b ? b : a;
}

static uint64_t range_gran(Scen *s, int lo, int hi, bool torn)
{
    uint64_t g = ATOMIC;
    int k;

    for (k = lo + 1; k <= hi; k++) {
        if (s->steps[k].gran < g) {
            g = s->steps[k].gran;
        }
    }
    if (torn && g != ATOMIC && g > SECTOR) {
        g = SECTOR;
    }
    return g;
}

static bool is_sync(const Op *o)
{
    return o->op == PCOW_OP_BARRIER || o->op == PCOW_OP_SYNC;
}

static void check_applied(Scen *s, CState *cs)
{
    size_t fm = 0;
    int lo, hi;

    while (fm < cs->p && (cs->applied[fm] || is_sync(&s->rec.ops[fm])) &&
           !(cs->torn && fm == cs->p - 1)) {
        fm++;
    }
    bounds(s, fm, cs->p, &lo, &hi);
    check_state(s, cs, lo, hi, range_gran(s, lo, hi, cs->torn != 0),
                cs->p == s->rec.n && fm == cs->p);
}

/* Replay the whole stream: it must give exactly the real files */
static void verify_stream(Scen *s)
{
    CState cs = { .p = s->rec.n };
    char p[512], q[512], why[1200];
    int f;

    cs.applied = xmalloc(s->rec.n ? s->rec.n : 1);
    memset(cs.applied, 1, s->rec.n);
    build_state(s, &cs);
    free(cs.applied);
    for (f = 0; f < s->nfiles; f++) {
        wpath(s, s->files[f], p, sizeof(p));
        path_join(q, sizeof(q), s->state, s->files[f]);
        if (!files_equal(p, q, why, sizeof(why))) {
            s->failures++;
            fprintf(stderr, "FAIL %s: replaying the recorded stream does not "
                    "give %s: %s (a change bypassed the persistence hook)\n",
                    s->name, s->files[f], why);
        }
    }
}

/* A change confined to a range, which a ranged SYNC can make durable */
static bool is_ranged(const Op *o)
{
    return o->op == PCOW_OP_WRITE || o->op == PCOW_OP_ALLOCATE ||
           o->op == PCOW_OP_PUNCH;
}

/* Split op @i of the stream in two at file offset @at */
static void split_op(Scen *s, size_t i, uint64_t at)
{
    Rec *r = &s->rec;
    uint64_t k = at - r->ops[i].off;
    Op *a, *b;
    int st;

    if (r->n == r->cap) {
        r->cap *= 2;
        r->ops = realloc(r->ops, r->cap * sizeof(*r->ops));
        if (!r->ops) {
            die("out of memory splitting");
        }
    }
    memmove(&r->ops[i + 2], &r->ops[i + 1], (r->n - i - 1) * sizeof(Op));
    r->n++;
    a = &r->ops[i];
    b = &r->ops[i + 1];
    *b = *a;
    b->off = at;
    b->len = a->len - k;
    a->len = k;
    if (a->data) {
        b->data = xmalloc(b->len);
        memcpy(b->data, a->data + k, b->len);
    }
    for (st = 0; st < s->nsteps; st++) {
        if (s->steps[st].mark > i) {
            s->steps[st].mark++;
        }
    }
}

/*
 * Which BARRIER or SYNC makes each operation durable: a BARRIER everything
 * of its file before it, a SYNC only the ranged operations of its file
 * inside its range.  One that a SYNC covers in part is split first, so
 * that every part is inside or outside.
 */
static void model_syncs(Scen *s)
{
    Rec *r = &s->rec;
    size_t i, j;

    for (i = 0; i < r->n; i++) {
        r->ops[i].durable_at = SIZE_MAX;
    }
    for (j = 0; j < r->n; j++) {
        Op sy = r->ops[j];

        if (!is_sync(&sy)) {
            continue;
        }
        for (i = 0; i < j; i++) {
            Op *o = &r->ops[i];
            uint64_t end = o->off + o->len;

            if (o->file != sy.file || is_sync(o) ||
                o->durable_at != SIZE_MAX) {
                continue;
            }
            if (sy.op == PCOW_OP_SYNC) {
                if (!is_ranged(o) || end <= sy.off ||
                    o->off >= sy.off + sy.len) {
                    continue;
                }
                if (o->off < sy.off) {
                    /* The part before the range stays pending */
                    split_op(s, i, sy.off);
                    j++;
                    continue;
                }
                if (end > sy.off + sy.len) {
                    split_op(s, i, sy.off + sy.len);
                    j++;
                }
            }
            r->ops[i].durable_at = j;
        }
    }
}

/*
 * The sync model on a made-up stream: a SYNC inside a write splits it and
 * persists only its middle; a BARRIER persists the rest of its file.
 */
static void model_self_test(void)
{
    static const struct {
        int file;
        pcow_persist_op op;
        uint64_t off, len;
    } in[] = {
        { 0, PCOW_OP_WRITE, 0x0, 0x3000 },
        { 0, PCOW_OP_WRITE, 0x5000, 0x8 },
        { 0, PCOW_OP_TRUNCATE, 0x9000, 0 },
        { 1, PCOW_OP_WRITE, 0x1000, 0x1000 },
        { 0, PCOW_OP_SYNC, 0x1000, 0x1000 },
        { 0, PCOW_OP_BARRIER, 0, 0 },
    };
    /* off, len, durable_at of the stream after model_syncs() */
    static const uint64_t want[][3] = {
        { 0x0, 0x1000, 7 }, { 0x1000, 0x1000, 6 }, { 0x2000, 0x1000, 7 },
        { 0x5000, 0x8, 7 }, { 0x9000, 0, 7 }, { 0x1000, 0x1000, SIZE_MAX },
        { 0x1000, 0x1000, SIZE_MAX }, { 0, 0, SIZE_MAX },
    };
    Scen *s = xmalloc(sizeof(*s));
    uint8_t buf[0x3000];
    HookTag t[2];
    size_t i;

    memset(s, 0, sizeof(*s));
    s->rec.on = true;
    t[0] = (HookTag){ &s->rec, 0 };
    t[1] = (HookTag){ &s->rec, 1 };
    fill(buf, sizeof(buf), 1);
    for (i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        rec_hook(&t[in[i].file], in[i].op, in[i].off, buf, in[i].len);
        if (i == 1) {
            s->steps[s->nsteps++].mark = s->rec.n;
        }
    }
    model_syncs(s);
    if (s->rec.n != 8 || s->steps[0].mark != 4 ||
        memcmp(s->rec.ops[1].data, buf + 0x1000, 0x1000) ||
        memcmp(s->rec.ops[2].data, buf + 0x2000, 0x1000)) {
        die("sync model self-test: bad split (%zu ops)", s->rec.n);
    }
    for (i = 0; i < 8; i++) {
        const Op *o = &s->rec.ops[i];

        if (is_sync(o)) {
            continue;
        }
        if (o->off != want[i][0] || o->len != want[i][1] ||
            o->durable_at != want[i][2]) {
            die("sync model self-test: op %zu is 0x%" PRIx64 "+0x%" PRIx64
                " durable at %zu", i, o->off, o->len, o->durable_at);
        }
    }
    rec_free(&s->rec);
    free(s);
}

static void scen_finish(Scen *s)
{
    size_t n, p, i, k;
    size_t *pend;
    CState cs;

    s->rec.on = false;
    link_untracked(s);
    verify_stream(s);
    model_syncs(s);
    n = s->rec.n;
    pend = xmalloc((n + 1) * sizeof(size_t));
    cs.applied = xmalloc(n + 1);
    if (getenv("PCOW_CRASH_DUMP")) {
        static const char *names[] = { "?", "WRITE", "BARRIER", "TRUNCATE",
                                       "ALLOCATE", "PUNCH", "SYNC" };

        for (i = 0; i < n; i++) {
            const Op *o = &s->rec.ops[i];

            for (k = 1; k < (size_t)s->nsteps; k++) {
                if (s->steps[k].mark == i) {
                    printf("    -- after step %zu: %s\n", k,
                           s->steps[k].what);
                }
            }
            printf("    %4zu f%d %-8s 0x%" PRIx64 " +0x%" PRIx64 "\n", i,
                   o->file, names[o->op], o->off, o->len);
        }
    }

    /* The state before anything happened */
    cs.p = 0;
    cs.torn = 0;
    snprintf(cs.desc, sizeof(cs.desc), "before");
    check_applied(s, &cs);

    for (p = 1; p <= n; p++) {
        const Op *last = &s->rec.ops[p - 1];
        size_t m = 0;

        if (last->op == PCOW_OP_BARRIER) {
            continue;
        }
        /*
         * A SYNC adds states only when the op before it stays pending;
         * otherwise its states are among those of the cut before it.
         */
        if (last->op == PCOW_OP_SYNC &&
            (p < 2 || is_sync(&s->rec.ops[p - 2]) ||
             s->rec.ops[p - 2].durable_at < p)) {
            continue;
        }
        /* pending: not made durable by a BARRIER/SYNC before the cut */
        for (i = 0; i + 1 < p; i++) {
            const Op *o = &s->rec.ops[i];

            if (!is_sync(o) && o->durable_at >= p) {
                pend[m++] = i;
            }
        }
        memset(cs.applied, 1, p);
        cs.p = p;
        cs.torn = 0;
        if (m <= FULL_SUBSET_MAX) {
            uint64_t mask;

            for (mask = 0; mask < (1ull << m); mask++) {
                for (k = 0; k < m; k++) {
                    cs.applied[pend[k]] = !((mask >> k) & 1);
                }
                snprintf(cs.desc, sizeof(cs.desc), "op %zu/%zu, %zu pending, "
                         "dropped mask 0x%" PRIx64, p, n, m, mask);
                check_applied(s, &cs);
            }
        } else {
            /* Long epoch: reorderings in full only where it ends */
            bool epoch_end = p == n;
            int r, nr;

            for (i = p; i < n && !epoch_end; i++) {
                if (s->rec.ops[i].file == last->file) {
                    epoch_end = is_sync(&s->rec.ops[i]);
                    break;
                }
            }
            snprintf(cs.desc, sizeof(cs.desc), "op %zu/%zu prefix", p, n);
            check_applied(s, &cs);
            for (k = 0; epoch_end && k < m; k++) {
                cs.applied[pend[k]] = 0;
                snprintf(cs.desc, sizeof(cs.desc), "op %zu/%zu, op %zu "
                         "dropped", p, n, pend[k]);
                check_applied(s, &cs);
                cs.applied[pend[k]] = 1;
            }
            nr = epoch_end ? RANDOM_SUBSETS : RANDOM_SUBSETS_MID;
            for (r = 0; r < nr; r++) {
                for (k = 0; k < m; k++) {
                    cs.applied[pend[k]] = rnd(s) & 1;
                }
                snprintf(cs.desc, sizeof(cs.desc), "op %zu/%zu, random "
                         "subset %d of %zu pending", p, n, r, m);
                check_applied(s, &cs);
            }
            for (k = 0; k < m; k++) {
                cs.applied[pend[k]] = 1;
            }
        }
        if (last->op == PCOW_OP_WRITE && last->len >= TORN_MIN) {
            for (cs.torn = 1; cs.torn <= 2; cs.torn++) {
                snprintf(cs.desc, sizeof(cs.desc), "op %zu/%zu torn (%s half "
                         "of 0x%" PRIx64 "+0x%" PRIx64 ")", p, n,
                         cs.torn == 1 ? "first" : "second", last->off,
                         last->len);
                check_applied(s, &cs);
            }
        }
    }
    free(cs.applied);
    free(pend);
    printf("  %-16s %5" PRIu64 " crash states, %3zu ops, %2d steps%s, "
           "failures: %" PRIu64 "\n", s->name, s->states, n, s->nsteps - 1,
           s->verify_snaps ? ", snapshots verified" : "", s->failures);
    fflush(stdout);
    total_states += s->states;
    total_failures += s->failures;
    for (k = 0; k < (size_t)s->nsteps; k++) {
        view_free(&s->steps[k].v);
    }
    view_free(&s->scratch[0]);
    view_free(&s->scratch[1]);
    view_free(&s->want);
    rec_free(&s->rec);
}

/* ---- the scenarios -------------------------------------------------------- */

/* Create, plain and over a base */
static void scen_create(Scen *s, bool with_base)
{
    pcow_create_opts o = { 0 };
    pcow_error err = { 0 };
    char p[512];

    if (with_base) {
        mk(s, "base", 1 * MiB, 4096, 0, NULL, PCOW_BACKING_NONE);
    }
    track(s, "img");
    s->create = true;
    scen_start(s);
    o.virtual_size = with_base ? 0 : 4 * MiB;
    o.cluster_size = with_base ? 4096 : 64 * KiB;
    o.backing_file = with_base ? "base" : NULL;
    o.backing_format = with_base ? PCOW_BACKING_PCOW : PCOW_BACKING_NONE;
    o.size_from_backing = with_base;
    o.hook = rec_hook;
    o.hook_opaque = tag_of(s, "img");
    wpath(s, "img", p, sizeof(p));
    if (pcow_create(p, &o, &err) < 0) {
        die("create: %s", err.msg);
    }
    step(s, ATOMIC, "create");
    scen_finish(s);
}

static void t_create(Scen *s)
{
    scen_create(s, false);
}

static void t_create_base(Scen *s)
{
    scen_create(s, true);
}

/* Pre-allocation: new clusters and reused (freed, punched) ones */
static void t_reserve(Scen *s)
{
    pcow_image *img;
    pcow_error err = { 0 };

    track(s, "img");
    mk(s, "img", 2 * MiB, 4096, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, 16 * 4096, 1);
    if (pcow_zero_range(img, 4 * 4096, 4 * 4096, &err) < 0) {
        die("zero_range: %s", err.msg);
    }
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    pcow_reserve_clusters(img, 6, &err);
    step(s, ATOMIC, "reserve 6 (reuse)");
    pcow_reserve_clusters(img, 8, &err);
    step(s, ATOMIC, "reserve 8 (new)");
    op_expand(img, 100);
    step(s, ATOMIC, "expand from reserve");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/* Expansion of holes, with new L2 tables, and guest writes into them */
static void t_expand(Scen *s)
{
    uint64_t cs = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    op_expand(img, 3);
    step(s, ATOMIC, "expand 3 (new L2)");
    op_write(img, 3 * cs + 100, 5000, 2);
    step(s, 4096, "pwrite into 3");
    op_expand(img, 5);
    step(s, ATOMIC, "expand 5");
    op_expand(img, 300);
    step(s, ATOMIC, "expand 300 (3rd L2)");
    op_write(img, 300 * cs + 2048, 2 * cs, 3);
    step(s, 4096, "pwrite 300..302");
    op_flush(img);
    step(s, ATOMIC, "flush");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * Deferred commits (an incoming migration): expansions whose commits
 * persist nothing of their own (P-EXPAND-L1, P-EXPAND-COMMIT), a reserve
 * miss that readies a batch (P-RESERVE-SPACE over its run), writes into
 * them, the one barrier that ends the deferral, then a persisted commit
 */
static void t_expand_deferred(Scen *s)
{
    uint64_t cs = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    op_defer(img, true);
    op_expand(img, 3);
    step(s, ATOMIC, "deferred expand 3 (new L2, a batch)");
    op_write(img, 3 * cs + 100, 5000, 2);
    step(s, 4096, "pwrite into 3..4");
    op_expand(img, 5);
    step(s, ATOMIC, "deferred expand 5");
    op_expand(img, 300);
    step(s, ATOMIC, "deferred expand 300 (3rd L2)");
    op_write(img, 300 * cs + 2048, 2 * cs, 3);
    step(s, 4096, "pwrite 300..302");
    op_defer(img, false);
    step(s, ATOMIC, "end of deferral (barrier)");
    op_expand(img, 6);
    step(s, ATOMIC, "expand 6 (persisted)");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/* COW from a pcow base: unit by unit up to P-COW-DONE, partial + whole,
 * whole directly, and guest writes */
static void t_cow_base(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;

    mk(s, "base", 1 * MiB, 64 * KiB, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "base", PCOW_OPEN_RDWR);
    op_write(img, 0, 160 * KiB, 10);
    op_close(img);
    track(s, "img");
    mk(s, "img", 1 * MiB, cs, u, "base", PCOW_BACKING_PCOW);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    op_cow(img, cs, false);
    step(s, ATOMIC, "cow c1 u0 (new L2)");
    op_write(img, cs + 100, 3000, 11);
    step(s, u, "pwrite c1 u0");
    op_cow(img, cs + 2 * u, false);
    step(s, ATOMIC, "cow c1 u2");
    op_cow(img, cs + 1 * u, false);
    step(s, ATOMIC, "cow c1 u1");
    op_cow(img, cs + 3 * u, false);
    step(s, ATOMIC, "cow c1 u3 (done)");
    op_cow(img, 2 * cs + u, false);
    step(s, ATOMIC, "cow c2 u1");
    op_cow(img, 2 * cs, true);
    step(s, ATOMIC, "cow c2 whole rest");
    op_cow(img, 3 * cs, true);
    step(s, ATOMIC, "cow c3 whole");
    op_write(img, 3 * cs + 1000, cs + 9000, 12);
    step(s, u, "pwrite c3..c4");
    op_flush(img);
    step(s, ATOMIC, "flush");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/* COW from a raw base, one-unit clusters and 8-unit clusters */
static void t_cow_raw(Scen *s)
{
    pcow_image *img, *img2;

    mk_raw(s, "base.raw", 200 * KiB + 512, 20);
    track(s, "img");
    track(s, "img2");
    mk(s, "img", 256 * KiB, 4096, 0, "base.raw", PCOW_BACKING_RAW);
    mk(s, "img2", 512 * KiB, 32 * KiB, 4096, "base.raw", PCOW_BACKING_RAW);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    img2 = op_open(s, "img2", PCOW_OPEN_RDWR);
    scen_start(s);
    op_cow(img, 5 * 4096, false);
    step(s, ATOMIC, "cow 4K cluster");
    op_write(img, 50 * 4096 - 10, 30, 21);
    step(s, 4096, "pwrite across the base's EOF");
    op_close(img);
    step(s, ATOMIC, "close img");
    /* img2 is not the view: only its consistency is checked */
    op_cow(img2, 6 * 32 * KiB + 4096, false);
    op_cow(img2, 6 * 32 * KiB, true);
    op_write(img2, 5 * 32 * KiB, 3 * 32 * KiB, 22);
    op_close(img2);
    step(s, ATOMIC, "img2 cow + pwrite + close");
    scen_finish(s);
}

/* COW from snapshot-frozen clusters, including a frozen PARTIAL one */
static void t_cow_snap(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 1 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, 6 * cs, 30);
    expect_snap(s, img, "s1");
    op_snap(img, 'c', "s1");
    op_cow(img, 4 * cs + u, false);
    op_write(img, 4 * cs + u, u, 31);
    expect_snap(s, img, "s2");
    op_snap(img, 'c', "s2");
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    op_cow(img, cs + u, false);
    step(s, ATOMIC, "cow frozen c1 u1");
    op_write(img, cs + u, u, 32);
    step(s, u, "pwrite c1 u1");
    op_cow(img, 2 * cs, true);
    step(s, ATOMIC, "cow frozen c2 whole");
    op_cow(img, 4 * cs + 2 * u, false);
    step(s, ATOMIC, "cow frozen PARTIAL c4");
    op_write(img, 0, 3 * cs + 5000, 33);
    step(s, u, "pwrite c0..c3");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/* One pwrite over holes, own, frozen, PARTIAL and base clusters */
static void t_pwrite(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;
    pcow_error err = { 0 };

    mk(s, "base", 1 * MiB, 16 * KiB, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "base", PCOW_OPEN_RDWR);
    op_write(img, 4 * cs, 4 * cs, 40);
    op_close(img);
    track(s, "img");
    mk(s, "img", 1 * MiB, cs, u, "base", PCOW_BACKING_PCOW);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 1 * cs, 2 * cs, 41);
    expect_snap(s, img, "s1");
    op_snap(img, 'c', "s1");
    op_write(img, 1 * cs, 100, 42);             /* c1: own again (COW) */
    op_cow(img, 5 * cs + u, false);             /* c5: PARTIAL over base */
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    /* c0 hole, c1 own, c2 frozen, c3 hole, c4 base, c5 PARTIAL, c6 base */
    op_write(img, 0x1800, 7 * cs - 0x2000, 43);
    step(s, u, "pwrite c0..c6");
    op_flush(img);
    step(s, ATOMIC, "flush");
    if (pcow_zero_range(img, 2 * cs, 3 * cs + 4096, &err) < 0) {
        die("zero_range: %s", err.msg);
    }
    step(s, u, "zero_range c2..c5");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

static void snap_image(Scen *s, pcow_image *img, uint64_t cs, uint64_t u)
{
    op_write(img, 0, 5 * cs, 50);
    expect_snap(s, img, "s1");
    op_snap(img, 'c', "s1");
    op_cow(img, 2 * cs + u, false);             /* PARTIAL, source frozen */
    op_write(img, 2 * cs + u, u, 51);
    op_write(img, 4 * cs, cs, 52);
    op_write(img, 8 * cs, 2 * cs, 53);
}

static void t_snap_create(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    snap_image(s, img, cs, u);
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    expect_snap(s, img, "s2");
    op_snap(img, 'c', "s2");
    step(s, ATOMIC, "snapshot -c s2");
    op_write(img, 8 * cs + 1000, 3 * cs, 54);
    step(s, u, "pwrite (COW)");
    expect_snap(s, img, "s3");
    op_snap(img, 'c', "s3");
    step(s, ATOMIC, "snapshot -c s3");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

static void t_snap_revert(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    snap_image(s, img, cs, u);
    expect_snap(s, img, "s2");
    op_snap(img, 'c', "s2");
    op_write(img, 0, 3 * cs, 55);
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    op_snap(img, 'a', "s1");
    step(s, ATOMIC, "snapshot -a s1");
    op_write(img, 6 * cs, 4 * cs, 56);
    step(s, u, "pwrite (reuses freed)");
    op_flush(img);
    step(s, ATOMIC, "flush");
    op_snap(img, 'a', "s2");
    step(s, ATOMIC, "snapshot -a s2");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

static void t_snap_delete(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    snap_image(s, img, cs, u);
    expect_snap(s, img, "s2");
    op_snap(img, 'c', "s2");
    op_write(img, 0, 2 * cs, 57);
    expect_snap(s, img, "s3");
    op_snap(img, 'c', "s3");
    op_write(img, cs, 2 * cs, 58);
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    op_snap(img, 'd', "s2");
    step(s, ATOMIC, "snapshot -d s2");
    op_write(img, 10 * cs, 2 * cs, 59);
    step(s, u, "pwrite (reuses freed)");
    op_snap(img, 'd', "s1");
    step(s, ATOMIC, "snapshot -d s1");
    op_snap(img, 'd', "s3");
    step(s, ATOMIC, "snapshot -d s3 (last)");
    op_write(img, 0, 3 * cs, 60);
    step(s, u, "pwrite (writable again)");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * Snapshots with VM state (savevm without a disk): P-SNAP-VMSTATE before
 * the commit, the feature bit set by the first and cleared with the last
 * delete, the VM state kept by a revert.  A snapshot's view includes a
 * hash of its VM state, so a state must show it whole or not at all.
 */
static void t_snap_vm_state(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    snap_image(s, img, cs, u);
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    expect_snap(s, img, "s2");
    op_snap_vm(img, "s2", 3 * cs + 100, 61);
    step(s, ATOMIC, "snapshot -c s2 (VM state)");
    op_write(img, 8 * cs + 1000, 2 * cs, 62);
    step(s, u, "pwrite (COW)");
    expect_snap(s, img, "s3");
    op_snap_vm(img, "s3", cs / 2, 63);
    step(s, ATOMIC, "snapshot -c s3 (VM state)");
    op_snap(img, 'a', "s2");
    step(s, ATOMIC, "snapshot -a s2 (VM state kept)");
    op_snap(img, 'd', "s2");
    step(s, ATOMIC, "snapshot -d s2 (VM state freed)");
    op_snap(img, 'd', "s3");
    step(s, ATOMIC, "snapshot -d s3 (last VM state)");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * Hand over and take back: a release (P-CLOSE-TRIM gives back the reserve
 * and the clusters a zeroing freed, P-CLOSE-CLEAN stores the stamp, then
 * in_use 0), a reacquire (P-OPEN-INUSE), a write that reuses what the
 * release trimmed, and the close.
 */
static void t_release(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_image *img;
    pcow_error err = { 0 };

    track(s, "img");
    mk(s, "img", 2 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, 8 * cs, 80);
    if (pcow_zero_range(img, 2 * cs, 3 * cs, &err) < 0) {
        die("zero_range: %s", err.msg);
    }
    scen_start(s);
    op_write(img, 10 * cs, 2 * cs, 81);
    step(s, u, "pwrite");
    if (pcow_release(img, &err) < 0) {
        die("release: %s", err.msg);
    }
    step(s, ATOMIC, "release");
    if (pcow_reacquire(img, &err) < 0) {
        die("reacquire: %s", err.msg);
    }
    step(s, ATOMIC, "reacquire");
    op_write(img, 20 * cs, 3 * cs, 82);
    step(s, u, "pwrite (reuses trimmed)");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * libpcow has no commit function: pcow-img commit copies the overlay's own
 * data into the base through the base's write path, flushes and closes the
 * base, then empties the touched clusters of the overlay.  The same
 * sequence here, both files recorded in one stream; the overlay's view
 * (through its chain) must never change.
 */
static void t_commit(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB, off, size;
    pcow_image *top, *base;
    pcow_error err = { 0 };
    uint8_t *buf = xmalloc(cs);

    track(s, "top");
    track(s, "base");
    mk(s, "base", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    base = op_open(s, "base", PCOW_OPEN_RDWR);
    op_write(base, 0, 8 * cs, 70);
    op_close(base);
    mk(s, "top", 1 * MiB, cs, u, "base", PCOW_BACKING_PCOW);
    top = op_open(s, "top", PCOW_OPEN_RDWR);
    op_write(top, cs, 2 * cs, 71);              /* whole clusters */
    op_write(top, 5 * cs + u, 100, 72);         /* PARTIAL over base */
    op_write(top, 12 * cs, cs, 73);             /* beyond the base's data */
    op_close(top);
    top = op_open(s, "top", PCOW_OPEN_RDWR | PCOW_OPEN_NO_BACKING);
    base = op_open(s, "base", PCOW_OPEN_RDWR);
    scen_start(s);
    size = pcow_virtual_size(top);
    for (off = 0; off < size;) {
        pcow_extent e;

        if (pcow_get_extent(top, off, size - off, &e) < 0) {
            die("extent");
        }
        if (e.kind == PCOW_EXTENT_DATA && e.depth == 0) {
            uint64_t p;

            for (p = off; p < off + e.length; p += cs) {
                uint64_t n = off + e.length - p < cs ? off + e.length - p : cs;

                if (pcow_pread(top, p, buf, n, &err) != (int64_t)n ||
                    pcow_pwrite(base, p, buf, n, &err) != (int64_t)n) {
                    die("commit copy: %s", err.msg);
                }
            }
        }
        off += e.length;
    }
    step(s, ATOMIC, "commit: data into base");
    op_flush(base);
    op_close(base);
    step(s, ATOMIC, "commit: base flushed");
    for (off = 0; off < size; off += cs) {
        pcow_extent e;

        if (pcow_get_extent(top, off, cs, &e) < 0) {
            die("extent");
        }
        if (!(e.kind == PCOW_EXTENT_HOLE && e.length == cs)) {
            if (pcow_zero_range(top, off, cs, &err) < 0) {
                die("zero_range: %s", err.msg);
            }
        }
    }
    /* Content stays; ownership goes cluster by cluster */
    step(s, cs, "commit: overlay emptied");
    op_close(top);
    step(s, ATOMIC, "close");
    free(buf);
    scen_finish(s);
}

/* rebase -u: set_backing to a raw base, to none, back to the pcow base */
static void t_rebase(Scen *s)
{
    uint64_t cs = 16 * KiB;
    pcow_image *img;
    pcow_error err = { 0 };

    mk(s, "base1", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "base1", PCOW_OPEN_RDWR);
    op_write(img, 0, 10 * cs, 80);
    op_close(img);
    mk_raw(s, "base2.raw", 1 * MiB, 81);
    track(s, "img");
    mk(s, "img", 1 * MiB, cs, 0, "base1", PCOW_BACKING_PCOW);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 2 * cs, cs, 82);
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    if (pcow_set_backing(img, "base2.raw", PCOW_BACKING_RAW, &err) < 0) {
        die("set_backing: %s", err.msg);
    }
    step(s, ATOMIC, "rebase -u raw");
    if (pcow_set_backing(img, NULL, PCOW_BACKING_NONE, &err) < 0) {
        die("set_backing: %s", err.msg);
    }
    step(s, ATOMIC, "rebase -u none");
    if (pcow_set_backing(img, "base1", PCOW_BACKING_PCOW, &err) < 0) {
        die("set_backing: %s", err.msg);
    }
    step(s, ATOMIC, "rebase -u pcow");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

#define GROW_CHECK_SIZE (24 * MiB)

/*
 * Whatever a crash left beyond the virtual size must never come back: grow
 * the crash state (rebuilt, before any recovery) and read zeros past its old
 * end.  Twice: after a normal read-write open (open recovery may clean up)
 * and with PCOW_OPEN_NO_RECOVER (the grow alone must make it zeros).
 */
static void grow_reads_zeros(Scen *s, const CState *cs, const View *v)
{
    static const unsigned flags[2] = {
        PCOW_OPEN_RDWR, PCOW_OPEN_RDWR | PCOW_OPEN_NO_RECOVER,
    };
    uint64_t len = GROW_CHECK_SIZE - v->vsize, c;
    uint8_t *buf;
    char p[512];
    int k;

    if (v->vsize >= GROW_CHECK_SIZE) {
        die("grow check: view already %" PRIu64 " bytes", v->vsize);
    }
    buf = xmalloc(len);
    path_join(p, sizeof(p), s->state, s->view);
    for (k = 0; k < 2; k++) {
        pcow_open_opts o = { .flags = flags[k] };
        pcow_error err = { 0 };
        pcow_image *img;

        build_state(s, cs);
        if (pcow_open(p, &o, &img, &err) < 0) {
            fail(s, cs, "grow check: open failed: %s", err.msg);
            break;
        }
        if (pcow_resize(img, GROW_CHECK_SIZE, false, &err) < 0 ||
            pcow_pread(img, v->vsize, buf, len, &err) != (int64_t)len) {
            fail(s, cs, "grow check: %s", err.msg);
            pcow_close(img, NULL);
            break;
        }
        pcow_close(img, NULL);
        for (c = 0; c < len && !buf[c]; c++) {
        }
        if (c < len) {
            fail(s, cs, "after a grow from %" PRIu64 " to %llu bytes%s, "
                 "guest byte 0x%" PRIx64 " is 0x%02x, not 0: data from "
                 "beyond the old end came back", v->vsize, GROW_CHECK_SIZE,
                 k ? " (open without recovery)" : "", v->vsize + c, buf[c]);
            break;
        }
    }
    free(buf);
}

/*
 * Grow with a new L1 table, shrink into a cluster, grow again; every crash
 * state, grown further, must read zeros beyond its virtual size
 */
static void t_resize(Scen *s)
{
    uint64_t cs = 16 * KiB;
    pcow_image *img;
    pcow_error err = { 0 };

    track(s, "img");
    mk(s, "img", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, 1 * MiB, 90);
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    s->extra = grow_reads_zeros;
    scen_start(s);
    if (pcow_resize(img, 20 * MiB, false, &err) < 0) {
        die("resize: %s", err.msg);
    }
    step(s, ATOMIC, "grow to 20M (new L1)");
    op_write(img, 20 * MiB - 3 * cs, 3 * cs, 91);
    step(s, 4096, "pwrite at the end");
    if (pcow_resize(img, 1 * MiB - 12 * KiB, true, &err) < 0) {
        die("resize: %s", err.msg);
    }
    step(s, ATOMIC, "shrink into a cluster");
    if (pcow_resize(img, 2 * MiB, false, &err) < 0) {
        die("resize: %s", err.msg);
    }
    step(s, ATOMIC, "grow to 2M");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * The same for an overlay over a pcow base full of data: a shrink into a
 * cluster, a grow (the base must not show past the cut, in any state), a
 * write there, a snapshot, a grow beyond the base
 */
static void t_resize_overlay(Scen *s)
{
    uint64_t cs = 16 * KiB;
    pcow_image *img;
    pcow_error err = { 0 };

    mk(s, "base", 2 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "base", PCOW_OPEN_RDWR);
    op_write(img, 0, 2 * MiB, 92);
    op_close(img);
    track(s, "img");
    mk(s, "img", 2 * MiB, cs, 4096, "base", PCOW_BACKING_PCOW);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 1 * MiB - 8 * KiB, 4 * KiB, 93);  /* in the cut cluster */
    op_write(img, 1536 * KiB, 4 * KiB, 94);         /* cut off */
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    s->extra = grow_reads_zeros;
    scen_start(s);
    if (pcow_resize(img, 1 * MiB - 4 * KiB, true, &err) < 0) {
        die("resize: %s", err.msg);
    }
    step(s, ATOMIC, "shrink into a cluster");
    if (pcow_resize(img, 2 * MiB, false, &err) < 0) {
        die("resize: %s", err.msg);
    }
    step(s, ATOMIC, "grow to 2M (backing limit)");
    op_write(img, 1 * MiB - 2 * KiB, 8 * KiB, 95);
    step(s, 4096, "pwrite across the cut");
    expect_snap(s, img, "s1");
    op_snap(img, 'c', "s1");
    step(s, ATOMIC, "snapshot -c s1");
    if (pcow_resize(img, 4 * MiB, false, &err) < 0) {
        die("resize: %s", err.msg);
    }
    step(s, ATOMIC, "grow to 4M");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * Compaction of clusters written out of guest order: every entry shows
 * its old or its new home (the same data), then a write reuses the freed
 * old homes
 */
static void t_compact(Scen *s)
{
    static const uint8_t order[] = { 9, 2, 40, 5, 3, 41, 8, 4, 6, 20,
                                     7, 42, 21, 43, 22 };
    uint64_t cs = 16 * KiB;
    pcow_compact_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    size_t i;

    track(s, "img");
    mk(s, "img", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    for (i = 0; i < sizeof(order); i++) {
        op_write(img, order[i] * cs, cs, 100 + order[i]);
    }
    op_close(img);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    scen_start(s);
    if (pcow_compact(img, &res, &err) < 0) {
        die("compact: %s", err.msg);
    }
    if (res.runs_moved != 3 || res.mappings_after != 7) {
        die("compact moved %" PRIu64 " runs, mappings %" PRIu64 " -> %"
            PRIu64, res.runs_moved, res.mappings_before,
            res.mappings_after);
    }
    step(s, ATOMIC, "compact");
    op_write(img, 50 * cs, 4 * cs, 120);
    step(s, 4096, "pwrite (reuses freed)");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/* The content the repair keeps: @v must show exactly it */
static bool shows_want(Scen *s, const CState *cs, const View *v,
                       const char *when)
{
    uint64_t i;

    if (v->vsize != s->want.vsize) {
        fail(s, cs, "%s: virtual size %" PRIu64 ", expected %" PRIu64, when,
             v->vsize, s->want.vsize);
        return false;
    }
    for (i = 0; i < v->vsize; i++) {
        if (v->content[i] != s->want.content[i]) {
            fail(s, cs, "%s: data lost or wrong at 0x%" PRIx64, when, i);
            return false;
        }
    }
    return true;
}

/*
 * A cut of check -r: open refuses it only while check counts a corruption
 * and shows the intact data when it opens; repairing it again gives a
 * clean image with that data; a read-write open keeps it clean.
 */
static void check_repair_state(Scen *s, const CState *cs, bool final)
{
    pcow_check_result res;
    pcow_error err = { 0 };
    pcow_image *img;
    View *v = &s->scratch[0];
    char p[512], why[1400];
    int ret, oret;

    path_join(p, sizeof(p), s->state, s->view);
    memset(&res, 0, sizeof(res));
    ret = pcow_check(p, 0, false, &res, &err);
    if (ret < 0) {
        fail(s, cs, "check failed: %s", err.msg);
        return;
    }
    oret = view_read(p, 0, v, why, sizeof(why));
    if (oret < 0 && !res.corruptions) {
        fail(s, cs, "refused without a corruption: %s", why);
        return;
    }
    if (oret == 0 && (res.corruptions || !shows_want(s, cs, v, "opened"))) {
        if (res.corruptions) {
            fail(s, cs, "opens, but check counts %" PRIu64 " corruptions: %s",
                 res.corruptions, res.first_problem);
        }
        return;
    }
    if (final && (res.corruptions || res.leaks)) {
        fail(s, cs, "after the whole repair: %" PRIu64 " corruptions, %"
             PRIu64 " leaks", res.corruptions, res.leaks);
        return;
    }
    /* Repair again: it must finish the job */
    memset(&res, 0, sizeof(res));
    ret = pcow_check(p, PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS, false, &res,
                     &err);
    if (ret < 0 || res.corruptions || res.leaks) {
        fail(s, cs, "check -r all again: ret %d, %" PRIu64 " corruptions, %"
             PRIu64 " leaks: %s %s", ret, res.corruptions, res.leaks,
             res.first_problem, err.msg);
        return;
    }
    memset(&res, 0, sizeof(res));
    ret = pcow_check(p, 0, false, &res, &err);
    if (ret < 0 || res.corruptions || res.leaks) {
        fail(s, cs, "check after the second repair: %" PRIu64 " corruptions,"
             " %" PRIu64 " leaks: %s", res.corruptions, res.leaks,
             res.first_problem);
        return;
    }
    if (view_read(p, 0, v, why, sizeof(why)) < 0) {
        fail(s, cs, "after the second repair: %s", why);
        return;
    }
    if (!shows_want(s, cs, v, "after the second repair") ||
        !verify_snapshots(s, v, cs)) {
        return;
    }
    ret = pcow_open(p, &(pcow_open_opts){ .flags = PCOW_OPEN_RDWR }, &img,
                    &err);
    if (ret < 0 || pcow_close(img, &err) < 0) {
        fail(s, cs, "read-write open after the repair: %s", err.msg);
        return;
    }
    memset(&res, 0, sizeof(res));
    ret = pcow_check(p, 0, false, &res, &err);
    if (ret < 0 || res.corruptions || res.leaks) {
        fail(s, cs, "check after a read-write open: %" PRIu64 " corruptions,"
             " %" PRIu64 " leaks", res.corruptions, res.leaks);
    }
}

/* The current header slot of the image open as @fd (higher generation) */
static uint64_t current_slot(int fd)
{
    uint8_t a[8], b[8];

    if (pread(fd, a, 8, PCOW_SLOT_A + PCOW_H_GENERATION) != 8 ||
        pread(fd, b, 8, PCOW_SLOT_B + PCOW_H_GENERATION) != 8) {
        die("cannot read the header slots");
    }
    return pcow_ld64(b) > pcow_ld64(a) ? PCOW_SLOT_B : PCOW_SLOT_A;
}

static uint64_t rd64(int fd, uint64_t off)
{
    uint8_t b[8];

    if (pread(fd, b, 8, off) != 8) {
        die("cannot read 0x%" PRIx64, off);
    }
    return pcow_ld64(b);
}

static void wr64(int fd, uint64_t off, uint64_t v)
{
    uint8_t b[8];

    pcow_st64(b, v);
    if (pwrite(fd, b, 8, off) != 8) {
        die("cannot write 0x%" PRIx64, off);
    }
}

/* Store @val at @rec_off of the snapshot table, CRCs made right */
static void damage_snapshot_table(int fd, uint64_t slot, uint64_t rec_off,
                                  uint64_t val)
{
    uint8_t h[PCOW_SLOT_SIZE], *t;
    uint64_t so;
    uint32_t ss, hl;

    if (pread(fd, h, sizeof(h), slot) != sizeof(h)) {
        die("cannot read the header");
    }
    so = pcow_ld64(h + PCOW_H_SNAP_OFFSET);
    ss = pcow_ld32(h + PCOW_H_SNAP_SIZE);
    hl = pcow_ld32(h + PCOW_H_LENGTH);
    t = xmalloc(ss);
    if (pread(fd, t, ss, so) != (ssize_t)ss) {
        die("cannot read the snapshot table");
    }
    pcow_st64(t + rec_off, val);
    pcow_st32(h + PCOW_H_SNAP_CRC, pcow_crc32c(0, t, ss));
    pcow_st32(h + PCOW_H_CRC, 0);
    pcow_st32(h + PCOW_H_CRC, pcow_crc32c(0, h, hl));
    if (pwrite(fd, t, ss, so) != (ssize_t)ss ||
        pwrite(fd, h, sizeof(h), slot) != sizeof(h)) {
        die("cannot write the damage");
    }
    free(t);
}

/* Give the only snapshot id 0 (CRCs made right: only the id is wrong) */
static void damage_snapshot_id(int fd, uint64_t slot)
{
    damage_snapshot_table(fd, slot, PCOW_S_ID, 0);
}

/* Record check -r all of the damaged image @p, then check every cut */
static void repair_and_finish(Scen *s, const char *p, uint64_t min_fixed,
                              bool leaks)
{
    pcow_check_result res;
    pcow_error err = { 0 };

    if (pcow_check(p, 0, false, &res, &err) < 0 ||
        res.corruptions < min_fixed) {
        die("%s: the damage is not seen: %" PRIu64 " corruptions %s", p,
            res.corruptions, err.msg);
    }
    s->repair = true;
    s->create = true;       /* the damaged image does not open: no view */
    scen_start(s);
    if (pcow_check_hooked(p, PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS, false,
                          rec_hook, tag_of(s, "img"), &res, &err) < 0 ||
        res.corruptions || res.leaks || res.corruptions_fixed < min_fixed ||
        (leaks && !res.leaks_fixed)) {
        die("check -r all: %s: %" PRIu64 " corruptions (%" PRIu64 " fixed), "
            "%" PRIu64 " leaks (%" PRIu64 " fixed)", err.msg, res.corruptions,
            res.corruptions_fixed, res.leaks, res.leaks_fixed);
    }
    step(s, ATOMIC, "check -r all");
    if (s->steps[1].v.vsize != s->want.vsize ||
        memcmp(s->steps[1].v.content, s->want.content, s->want.vsize)) {
        die("check -r all lost data it did not have to");
    }
    scen_finish(s);
}

/*
 * check -r all of a damaged, leaky image (docs/interop/pcow-spec.rst,
 * "Check and repair"): a frontier below clusters in use (raised), a
 * snapshot id 0 (a new id: P-SNAP-LIST, P-HEADER-COMMIT), a map word with
 * a reserved bit (cleared, its cluster reclaimed), a cluster no table
 * references any more but that holds data (punched), blocks past
 * everything in use (cut).  Every cut of the repair's writes must be
 * refused by open only while check counts a corruption, show exactly the
 * intact data when it opens, and be repaired again to a clean image that
 * holds that data and the snapshot's.
 */
static void t_repair(Scen *s)
{
    const uint64_t cs = 4096, nc = 12;
    pcow_image *img;
    uint64_t slot, l2, k;
    uint8_t junk[4096];
    char p[512];
    int fd;

    track(s, "img");
    mk(s, "img", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, nc * cs, 71);
    expect_snap(s, img, "s");
    op_snap(img, 'c', "s");
    op_write(img, 0, nc * cs, 72);      /* copies: its own clusters again */
    op_close(img);
    live_view(s, &s->want);
    /* Clusters 2 and 5 lose their data: the repair cannot keep it */
    memset(s->want.content + 2 * cs, 0, cs);
    memset(s->want.content + 5 * cs, 0, cs);

    /* Damage it through the format */
    wpath(s, "img", p, sizeof(p));
    fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        die("open %s", p);
    }
    slot = current_slot(fd);
    l2 = rd64(fd, rd64(fd, slot + PCOW_H_L1_OFFSET)) & ~(cs - 1) &
         ((1ull << 56) - 1);
    wr64(fd, l2 + 5 * 32, rd64(fd, l2 + 5 * 32) | 1ull << 3); /* reserved */
    wr64(fd, l2 + 2 * 32, 0);           /* cluster 2: referenced by none */
    /* The frontier below the last two clusters in use */
    wr64(fd, PCOW_HOT_FRONTIER, rd64(fd, PCOW_HOT_FRONTIER) - 2 * cs);
    damage_snapshot_id(fd, slot);
    memset(junk, 0x5a, sizeof(junk));
    for (k = 0; k < 2; k++) {           /* blocks past everything */
        if (pwrite(fd, junk, cs, lseek(fd, 0, SEEK_END)) != (ssize_t)cs) {
            die("%s: cannot append", p);
        }
    }
    close(fd);

    repair_and_finish(s, p, 3, true);
}

/*
 * check -r all of a file cut short (the last cluster in use is gone): the
 * file is extended at open, and what was lost reads as zeros
 */
static void t_repair_short(Scen *s)
{
    const uint64_t cs = 4096, nc = 12;
    uint64_t v, last = 0, lastv = 0;
    pcow_image *img;
    char p[512];

    track(s, "img");
    mk(s, "img", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, nc * cs, 73);
    op_close(img);
    live_view(s, &s->want);
    img = op_open(s, "img", PCOW_OPEN_NO_LOCK);
    for (v = 0; v < nc; v++) {
        pcow_extent e;

        if (pcow_get_extent(img, v * cs, cs, &e) < 0 ||
            e.kind != PCOW_EXTENT_DATA) {
            die("cluster %" PRIu64 " is not allocated", v);
        }
        if (e.file_offset >= last) {
            last = e.file_offset;
            lastv = v;
        }
    }
    op_close(img);
    memset(s->want.content + lastv * cs, 0, cs);
    wpath(s, "img", p, sizeof(p));
    if (truncate(p, last) < 0) {
        die("truncate %s: %s", p, strerror(errno));
    }
    repair_and_finish(s, p, 1, false);
}

/*
 * check -r all of a VM state over clusters in use (its offset moved onto
 * the snapshot's own L1 table): the snapshot loses its VM state in a new
 * snapshot table and header commit (P-SNAP-LIST, P-HEADER-COMMIT); its
 * data and the active layer's stay.
 */
static void t_repair_vm_state(Scen *s)
{
    const uint64_t cs = 4096;
    pcow_image *img;
    uint64_t slot, l1;
    char p[512];
    int fd;

    track(s, "img");
    mk(s, "img", 1 * MiB, cs, 0, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "img", PCOW_OPEN_RDWR);
    op_write(img, 0, 8 * cs, 76);
    expect_snap(s, img, "s");
    op_snap_vm(img, "s", 3 * cs + 10, 77);
    op_write(img, 0, 2 * cs, 78);
    op_close(img);
    live_view(s, &s->want);

    wpath(s, "img", p, sizeof(p));
    fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        die("open %s", p);
    }
    slot = current_slot(fd);
    l1 = rd64(fd, rd64(fd, slot + PCOW_H_SNAP_OFFSET) + PCOW_S_L1_OFFSET);
    /* Record 0, name "s" padded to 8: the extension follows */
    damage_snapshot_table(fd, slot, PCOW_SNAP_FIXED + 8 +
                          PCOW_SX_VM_STATE_OFFSET, l1);
    close(fd);
    repair_and_finish(s, p, 1, false);
}

/*
 * Clone (pcow_clone): P-CLONE-LIST and P-CLONE-COMMIT in the template, then
 * P-CREATE-BODY of the clone, then the clone's own writes.  Each state's
 * clone, if it opens, shows the snapshot (or what it wrote), and its
 * template is consistent and has the snapshot marked HAS_CLONES: a crash
 * never leaves a clone whose snapshot could be deleted.
 */
static void clone_template_ok(Scen *s, const CState *cs, const View *v)
{
    pcow_check_result res;
    pcow_error err = { 0 };
    pcow_image *t;
    char p[512];
    int k;

    (void)v;
    path_join(p, sizeof(p), s->state, "tmpl");
    memset(&res, 0, sizeof(res));
    if (pcow_check(p, 0, false, &res, &err) < 0 || res.corruptions) {
        fail(s, cs, "template: check: %s %s", res.first_problem, err.msg);
        return;
    }
    if (pcow_open(p, &(pcow_open_opts){ .flags = PCOW_OPEN_NO_BACKING }, &t,
                  &err) < 0) {
        fail(s, cs, "template: open: %s", err.msg);
        return;
    }
    k = pcow_snapshot_find(t, "s1");
    if (k < 0 || !(t->snaps[k].flags & PCOW_SNAP_F_HAS_CLONES)) {
        fail(s, cs, "a clone opens but its snapshot is %s",
             k < 0 ? "gone" : "not marked HAS_CLONES");
    }
    pcow_close(t, NULL);
}

static void t_clone(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_clone_opts co = { 0 };
    pcow_error err = { 0 };
    pcow_image *img;
    char tp[512], cp[512];

    track(s, "clone");
    track(s, "tmpl");
    mk(s, "tmpl", 1 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "tmpl", PCOW_OPEN_RDWR);
    op_write(img, 0, 10 * cs, 90);
    op_snap(img, 'c', "s1");
    op_write(img, 2 * cs, 3 * cs, 91);       /* the active layer moves on */
    op_snap(img, 'c', "s2");
    op_close(img);
    s->create = true;
    s->extra = clone_template_ok;
    scen_start(s);
    co.hook = rec_hook;
    co.hook_opaque = tag_of(s, "tmpl");
    co.new_hook = rec_hook;
    co.new_hook_opaque = tag_of(s, "clone");
    wpath(s, "tmpl", tp, sizeof(tp));
    wpath(s, "clone", cp, sizeof(cp));
    if (pcow_clone(tp, "s1", cp, &co, NULL, &err) < 0) {
        die("clone: %s", err.msg);
    }
    step(s, ATOMIC, "clone tmpl@s1");
    img = op_open(s, "clone", PCOW_OPEN_RDWR);
    op_write(img, cs + 1000, 2 * cs, 92);   /* COW over the template */
    step(s, u, "pwrite (COW from the template's snapshot)");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

/*
 * Clone reset (pcow_clone_reset): P-ORIGIN-TABLES, P-ORIGIN-COMMIT, then
 * the old active layer freed.  Every state shows what the clone wrote or
 * the origin again, never a mix; the clone's own snapshot keeps its
 * content; the template is only read.
 */
static void op_reset(pcow_image *img)
{
    pcow_error err = { 0 };

    if (pcow_clone_reset(img, &err) < 0) {
        die("clone reset: %s", err.msg);
    }
}

static void t_clone_reset(Scen *s)
{
    uint64_t cs = 16 * KiB, u = 4 * KiB;
    pcow_error err = { 0 };
    pcow_image *img;
    char tp[512], cp[512];

    track(s, "clone");
    mk(s, "tmpl", 1 * MiB, cs, u, NULL, PCOW_BACKING_NONE);
    img = op_open(s, "tmpl", PCOW_OPEN_RDWR);
    op_write(img, 0, 10 * cs, 93);
    op_snap(img, 'c', "s1");
    op_write(img, 2 * cs, 3 * cs, 94);
    op_close(img);
    wpath(s, "tmpl", tp, sizeof(tp));
    wpath(s, "clone", cp, sizeof(cp));
    if (pcow_clone(tp, "s1", cp, NULL, NULL, &err) < 0) {
        die("clone: %s", err.msg);
    }
    img = op_open(s, "clone", PCOW_OPEN_RDWR);
    op_write(img, cs + 1000, 2 * cs, 95);
    expect_snap(s, img, "own");
    op_snap(img, 'c', "own");
    op_write(img, 0, 4 * cs, 96);           /* COW over its own snapshot */
    op_write(img, 12 * cs, 2 * cs, 97);     /* and over holes */
    op_close(img);
    img = op_open(s, "clone", PCOW_OPEN_RDWR);
    scen_start(s);
    op_reset(img);
    step(s, ATOMIC, "clone reset");
    op_write(img, 3 * cs, 2 * cs, 98);
    step(s, u, "pwrite (reuses freed)");
    op_reset(img);
    step(s, ATOMIC, "clone reset again");
    op_close(img);
    step(s, ATOMIC, "close");
    scen_finish(s);
}

typedef struct Test {
    const char *name;
    void (*fn)(Scen *s);
} Test;

static const Test tests[] = {
    { "create", t_create },
    { "create-base", t_create_base },
    { "reserve", t_reserve },
    { "expand", t_expand },
    { "expand-deferred", t_expand_deferred },
    { "cow-base", t_cow_base },
    { "cow-raw", t_cow_raw },
    { "cow-snapshot", t_cow_snap },
    { "pwrite", t_pwrite },
    { "snapshot-create", t_snap_create },
    { "snapshot-revert", t_snap_revert },
    { "snapshot-delete", t_snap_delete },
    { "snapshot-vm-state", t_snap_vm_state },
    { "release", t_release },
    { "commit", t_commit },
    { "rebase", t_rebase },
    { "resize", t_resize },
    { "resize-overlay", t_resize_overlay },
    { "compact", t_compact },
    { "clone", t_clone },
    { "clone-reset", t_clone_reset },
    { "check-repair", t_repair },
    { "check-repair-short", t_repair_short },
    { "check-repair-vm-state", t_repair_vm_state },
};

static void pick_root(void)
{
    const char *env = getenv("PCOW_CRASH_DIR");
    const char *base = env;

    if (!base) {
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" :
               getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    }
    snprintf(root, sizeof(root), "%s/pcow-crash-XXXXXX", base);
    if (!mkdtemp(root)) {
        die("mkdtemp %s: %s", root, strerror(errno));
    }
}

int main(int argc, char **argv)
{
    bool keep = false;
    struct timespec t0, t1;
    size_t i;
    int c, k, ran = 0;

    while ((c = getopt(argc, argv, "vkh")) != -1) {
        switch (c) {
        case 'v':
            verbose = true;
            break;
        case 'k':
            keep = true;
            break;
        default:
            printf("usage: %s [-v] [-k] [SCENARIO...]\nscenarios:", argv[0]);
            for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
                printf(" %s", tests[i].name);
            }
            printf("\n");
            return c == 'h' ? 0 : 2;
        }
    }
    model_self_test();
    pick_root();
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("pcow crash-point harness (work directory %s)\n", root);
    for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        bool want = optind == argc;
        Scen *s;

        for (k = optind; k < argc; k++) {
            want |= !strcmp(argv[k], tests[i].name);
        }
        if (!want) {
            continue;
        }
        s = xmalloc(sizeof(*s));
        scen_init(s, tests[i].name);
        tests[i].fn(s);
        free(s);
        ran++;
    }
    if (!ran) {
        die("no such scenario");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!keep) {
        char cmd[300];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
        if (system(cmd) != 0) {
            fprintf(stderr, "cannot remove %s\n", root);
        }
    }
    printf("time: %.1f s\n", (t1.tv_sec - t0.tv_sec) +
           (t1.tv_nsec - t0.tv_nsec) / 1e9);
    printf("crash states checked: %" PRIu64 ", failures: %" PRIu64 "\n",
           total_states, total_failures);
    return total_failures ? 1 : 0;
}
