/*
 * Model-based test: the operations, on real images and on the model
 *
 * Every operation is applied to the images (libpcow for what the library
 * offers, pcow-img for commit, rebase, convert and check) and to the model;
 * run_op() then compares the top image with the model and checks it.
 * Operations that change a base also compare and check that base.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver.h"

#define TOP "t.pcow"

/* ------------------------------------------------------------ layers */

static MLayer *add_layer(Ctx *c, MLayer *l)
{
    if (c->nlayers == MAX_LAYERS) {
        fail(c, "too many layers (test bug)");
    }
    c->layers[c->nlayers++] = l;
    return l;
}

/* Forget and delete every layer the top image no longer reaches. */
static void gc_layers(Ctx *c)
{
    unsigned n = 0;

    for (unsigned i = 0; i < c->nlayers; i++) {
        MLayer *l = c->layers[i];
        bool used = false;

        for (MLayer *u = c->top; u; u = u->below) {
            used |= u == l;
        }
        if (used) {
            c->layers[n++] = l;
        } else {
            char p[PATH_MAX];

            path_of(c, l->file, p);
            unlink(p);
            m_free(l);
        }
    }
    c->nlayers = n;
}

static void new_name(Ctx *c, char *out, const char *prefix, bool raw)
{
    snprintf(out, M_NAME_MAX, "%s%u.%s", prefix, ++c->counter,
             raw ? "raw" : "pcow");
}

static void pick_geometry(Rng *r, uint32_t *cs, uint32_t *cu)
{
    static const unsigned cbits[] = { 12, 12, 16, 16, 16, 21 };
    unsigned cb = cbits[rng_below(r, 6)];
    unsigned lo = cb - 6 < 12 ? 12 : cb - 6;

    *cs = 1u << cb;
    *cu = 1u << (lo + rng_below(r, cb - lo + 1));
}

/* A virtual size: a multiple of 4 KiB, often of the cluster, often small */
static uint64_t pick_size(Rng *r, uint32_t cs)
{
    switch (rng_below(r, 4)) {
    case 0:
        return cs * (1 + rng_below(r, M_MAX_SIZE / cs));
    case 1:
        return MB_SIZE * (1 + rng_below(r, 64));
    default:
        return MB_SIZE * (1 + rng_below(r, M_MAX_BLOCKS));
    }
}

/*
 * A range of a layer of @size bytes: a few bytes, aligned blocks, up to
 * 256 KiB anywhere, whole clusters, or up to two clusters anywhere.
 */
static void pick_range(uint64_t size, uint32_t cs, uint64_t a, uint64_t b,
                       uint64_t *off, uint64_t *len)
{
    uint64_t x = b >> 8;

    switch (b % 5) {
    case 0:
        *off = a % size;
        *len = 1 + x % 64;
        break;
    case 1:
        *off = a % size / MB_SIZE * MB_SIZE;
        *len = MB_SIZE * (1 + x % 8);
        break;
    case 2:
        *off = a % size;
        *len = 1 + x % (256 << 10);
        break;
    case 3:
        *off = a % size / cs * cs;
        *len = cs * (1 + x % 2);
        break;
    default:
        *off = a % size;
        *len = 1 + x % (2ull * cs);
        break;
    }
    if (*len > size - *off) {
        *len = size - *off;
    }
}

/* Data to write: random, one byte value, zeros or offset-dependent */
static void fill(uint64_t seed, uint64_t off, uint8_t *p, uint64_t len)
{
    Rng r = { seed };
    unsigned kind = rng_below(&r, 4);
    uint8_t v = 1 + rng_below(&r, 255);

    for (uint64_t i = 0; i < len; i++) {
        switch (kind) {
        case 0:
            p[i] = (i & 7) ? (uint8_t)(p[i - 1] * 13 + 7) :
                   (uint8_t)rng_next(&r);
            break;
        case 1:
            p[i] = v;
            break;
        case 2:
            p[i] = 0;
            break;
        default:
            p[i] = (uint8_t)((off + i) * 31 / 7) ^ v;
            break;
        }
    }
}

/* ------------------------------------------------------------ images */

static bool one_line(const char *s)
{
    return s[0] && !strchr(s, '\n');
}

static pcow_image *open_image(Ctx *c, const char *file, unsigned flags)
{
    pcow_open_opts o = { .flags = flags };
    pcow_error err = { 0 };
    pcow_image *img = NULL;
    char p[PATH_MAX];
    int ret;

    path_of(c, file, p);
    ret = pcow_open(p, &o, &img, &err);
    if (ret < 0) {
        fail(c, "open %s: %s", file, err.msg);
    }
    return img;
}

static void close_image(Ctx *c, pcow_image **img, const char *file)
{
    pcow_error err = { 0 };
    int ret = pcow_close(*img, &err);

    *img = NULL;
    if (ret < 0) {
        fail(c, "close %s: %s", file, err.msg);
    }
}

/* A closed pcow image must check clean: no corruption, no leak. */
static void check_closed(Ctx *c, const MLayer *l)
{
    pcow_check_result res;
    pcow_error err = { 0 };
    char p[PATH_MAX];
    int ret;

    if (l->raw) {
        return;
    }
    path_of(c, l->file, p);
    ret = pcow_check(p, 0, false, &res, &err);
    c->checks++;
    if (ret < 0 || res.corruptions || res.leaks) {
        fail(c, "check %s: ret %d, %llu corruptions, %llu leaks: %s%s",
             l->file, ret, (unsigned long long)res.corruptions,
             (unsigned long long)res.leaks, res.first_problem, err.msg);
    }
}

/* The open top image: what is on disk so far has no corruption. */
static void check_open(Ctx *c)
{
    pcow_check_result res;
    pcow_error err = { 0 };
    char p[PATH_MAX];
    int ret;

    if (pcow_flush(c->img, &err) < 0) {
        fail(c, "flush: %s", err.msg);
    }
    path_of(c, TOP, p);
    ret = pcow_check(p, 0, true, &res, &err);
    c->checks++;
    if (ret < 0 || res.corruptions) {
        fail(c, "check (open image): ret %d, %llu corruptions: %s%s", ret,
             (unsigned long long)res.corruptions, res.first_problem,
             err.msg);
    }
}

static void read_raw(Ctx *c, const char *file, uint64_t size, uint8_t *buf)
{
    char p[PATH_MAX];
    struct stat st;
    int fd;

    path_of(c, file, p);
    fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        fail(c, "%s: %s", file, strerror(errno));
    }
    if ((uint64_t)st.st_size != size) {
        close(fd);
        fail(c, "%s: size %llu, expected %llu", file,
             (unsigned long long)st.st_size, (unsigned long long)size);
    }
    if (pread(fd, buf, size, 0) != (ssize_t)size) {
        close(fd);
        fail(c, "%s: short read", file);
    }
    close(fd);
}

static void read_pcow(Ctx *c, pcow_image *img, const MLayer *l, uint8_t *buf)
{
    pcow_error err = { 0 };

    if (pcow_virtual_size(img) != l->v.size) {
        fail(c, "%s: virtual size %llu, expected %llu", l->file,
             (unsigned long long)pcow_virtual_size(img),
             (unsigned long long)l->v.size);
    }
    if (pcow_pread(img, 0, buf, l->v.size, &err) != (int64_t)l->v.size) {
        fail(c, "%s: read: %s", l->file, err.msg);
    }
}

/* Compare what @l shows (read through libpcow or the file) with the model */
static void verify_layer(Ctx *c, MLayer *l)
{
    char why[512];

    if (l->raw) {
        read_raw(c, l->file, l->v.size, c->buf);
    } else if (l == c->top && c->img) {
        read_pcow(c, c->img, l, c->buf);
    } else {
        c->aux = open_image(c, l->file, 0);
        read_pcow(c, c->aux, l, c->buf);
        close_image(c, &c->aux, l->file);
    }
    if (m_verify(l, c->buf, why, sizeof(why)) < 0) {
        fail(c, "content differs from the model: %s", why);
    }
}

/* Verify and check @l and everything below it, bottom first. */
static void verify_down(Ctx *c, MLayer *l)
{
    if (!l) {
        return;
    }
    verify_down(c, l->below);
    verify_layer(c, l);
    if (l != c->top || !c->img) {
        check_closed(c, l);
    }
}

/* The VM state of snapshot @name: @len bytes of a pattern of its name */
static uint8_t *vm_bytes(const char *name, uint64_t len)
{
    uint8_t *b = malloc(len ? len : 1);
    uint64_t x = 0x9e3779b97f4a7c15ull, i;

    for (i = 0; name[i]; i++) {
        x = (x ^ (uint8_t)name[i]) * 0x100000001b3ull;
    }
    for (i = 0; b && i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[i] = x;
    }
    return b;
}

/* Snapshot @s's VM state in the image is the one it was created with */
static void verify_vm_state(Ctx *c, const MSnap *s, uint64_t size)
{
    pcow_error err = { 0 };
    uint8_t *want, *got;
    bool same;

    if (size != s->vm_size) {
        fail(c, "snapshot '%s' has %llu bytes of VM state, expected %llu",
             s->name, (unsigned long long)size,
             (unsigned long long)s->vm_size);
    }
    if (!size) {
        return;
    }
    want = vm_bytes(s->name, size);
    got = malloc(size);
    if (!want || !got ||
        pcow_snapshot_read_vm_state(c->img, s->name, 0, got, size,
                                    &err) < 0) {
        free(want);
        free(got);
        fail(c, "VM state of snapshot '%s': %s", s->name, err.msg);
    }
    same = !memcmp(want, got, size);
    free(want);
    free(got);
    if (!same) {
        fail(c, "snapshot '%s' does not hold its VM state any more",
             s->name);
    }
}

/* The image's snapshot list, sizes and VM states against the model's */
static void verify_meta(Ctx *c)
{
    pcow_snapshot_info *list = NULL;
    pcow_error err = { 0 };
    MLayer *t = c->top;
    int n = pcow_snapshot_list(c->img, &list, &err);

    if (n < 0) {
        fail(c, "snapshot list: %s", err.msg);
    }
    if ((unsigned)n != t->nsnaps) {
        free(list);
        fail(c, "%d snapshots, the model has %u", n, t->nsnaps);
    }
    for (int i = 0; i < n; i++) {
        const MSnap *s = &t->snaps[i];

        if (strcmp(list[i].name, s->name) || list[i].id != s->id ||
            list[i].virtual_size != s->v.size) {
            fail(c, "snapshot %d is '%s' id %llu size %llu, expected '%s' "
                 "id %llu size %llu", i, list[i].name,
                 (unsigned long long)list[i].id,
                 (unsigned long long)list[i].virtual_size, s->name,
                 (unsigned long long)s->id, (unsigned long long)s->v.size);
        }
        verify_vm_state(c, s, list[i].vm_state_size);
    }
    free(list);
}

static void open_top(Ctx *c)
{
    c->img = open_image(c, TOP, PCOW_OPEN_RDWR);
}

static void close_top(Ctx *c)
{
    if (c->img) {
        close_image(c, &c->img, TOP);
        check_closed(c, c->top);
    }
}

void close_all(Ctx *c)
{
    if (c->aux) {
        pcow_close(c->aux, NULL);
        c->aux = NULL;
    }
    if (c->img) {
        pcow_close(c->img, NULL);
        c->img = NULL;
    }
}

/* -------------------------------------------------------------- pcow-img */

/*
 * Run pcow-img in the test directory with the given arguments (NULL
 * terminated); stderr goes to c->tool_err.  Returns the exit status.
 */
static int vtool(Ctx *c, va_list ap)
{
    const char *argv[32];
    char errp[PATH_MAX], cmd[512] = "";
    unsigned n = 0;
    ssize_t len;
    pid_t pid;
    int st, fd;

    argv[n++] = c->tool;
    while (n < 31 && (argv[n] = va_arg(ap, const char *))) {
        size_t l = strlen(cmd);

        snprintf(cmd + l, sizeof(cmd) - l, " %s", argv[n++]);
    }
    argv[n] = NULL;
    if (c->verbose) {
        printf("    pcow-img%s\n", cmd);
    }
    path_of(c, ".stderr", errp);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        fd = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || chdir(c->dir) < 0 || dup2(fd, 2) < 0) {
            _exit(126);
        }
        fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        alarm(300);     /* a hang is a failure, not a stuck test */
        execv(c->tool, (char *const *)argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &st, 0) < 0) {
        fail(c, "cannot run pcow-img: %s", strerror(errno));
    }
    c->tool_runs++;
    fd = open(errp, O_RDONLY);
    len = fd < 0 ? 0 : read(fd, c->tool_err, sizeof(c->tool_err) - 1);
    c->tool_err[len > 0 ? len : 0] = '\0';
    if (fd >= 0) {
        close(fd);
    }
    if (len > 0 && c->tool_err[len - 1] == '\n') {
        c->tool_err[len - 1] = '\0';
    }
    if (WIFSIGNALED(st)) {
        fail(c, "pcow-img%s: killed by signal %d", cmd, WTERMSIG(st));
    }
    return WEXITSTATUS(st);
}

static void tool_ok(Ctx *c, ...)
{
    va_list ap;
    int st;

    va_start(ap, c);
    st = vtool(c, ap);
    va_end(ap);
    if (st != 0) {
        fail(c, "pcow-img exited %d: %s", st, c->tool_err);
    }
}

/* The command must be refused: exit status 1, one line on stderr */
static void tool_refused(Ctx *c, ...)
{
    va_list ap;
    int st;

    va_start(ap, c);
    st = vtool(c, ap);
    va_end(ap);
    if (st != 1 || !one_line(c->tool_err)) {
        fail(c, "pcow-img should refuse with one line and exit 1; exit %d: "
             "%s", st, c->tool_err);
    }
}

/* ----------------------------------------------------- making layers */

static void raw_pwrite(Ctx *c, MLayer *l, uint64_t off, uint64_t len,
                       const uint8_t *data)
{
    char p[PATH_MAX];
    int fd;

    path_of(c, l->file, p);
    fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || pwrite(fd, data, len, off) != (ssize_t)len) {
        fail(c, "%s: write: %s", l->file, strerror(errno));
    }
    close(fd);
    m_raw_write(l, off, len, data);
}

/* @n random writes and zero ranges into layer @l (its file is closed) */
static void scribble(Ctx *c, MLayer *l, Rng *r, unsigned n)
{
    pcow_error err = { 0 };

    if (!l->raw) {
        c->aux = open_image(c, l->file, PCOW_OPEN_RDWR);
    }
    for (unsigned i = 0; i < n; i++) {
        uint64_t off, len, seed = rng_next(r);
        uint32_t cs = l->raw ? 65536 : l->cs;
        uint64_t lim = l->raw && rng_below(r, 8) == 0 ? M_MAX_SIZE :
                       l->v.size;
        bool zero = !l->raw && rng_below(r, 4) == 0;

        if (lim == 0) {
            lim = MB_SIZE;
        }
        pick_range(lim, cs, rng_next(r), rng_next(r), &off, &len);
        fill(seed, off, c->buf2, len);
        if (l->raw) {
            raw_pwrite(c, l, off, len, c->buf2);
        } else if (zero) {
            if (pcow_zero_range(c->aux, off, len, &err) < 0) {
                fail(c, "%s: zero: %s", l->file, err.msg);
            }
            m_zero(l, off, len);
        } else {
            if (pcow_pwrite(c->aux, off, c->buf2, len, &err) !=
                (int64_t)len) {
                fail(c, "%s: write: %s", l->file, err.msg);
            }
            m_write(l, off, len, c->buf2);
        }
    }
    if (!l->raw) {
        close_image(c, &c->aux, l->file);
    }
}

static MLayer *make_raw(Ctx *c, Rng *r)
{
    char name[M_NAME_MAX], p[PATH_MAX];
    uint64_t size = rng_below(r, 2) ? pick_size(r, MB_SIZE) :
                    1 + rng_below(r, M_MAX_SIZE);
    MLayer *l;
    int fd;

    new_name(c, name, "b", true);
    path_of(c, name, p);
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, size) < 0) {
        fail(c, "%s: %s", name, strerror(errno));
    }
    close(fd);
    l = add_layer(c, m_new_raw(name, size));
    scribble(c, l, r, 1 + rng_below(r, 12));
    return l;
}

static void create_pcow(Ctx *c, const char *name, uint64_t size, uint32_t cs,
                        uint32_t cu, const MLayer *below, bool from_base)
{
    pcow_create_opts o = {
        .virtual_size = from_base ? 0 : size,
        .cluster_size = cs,
        .cow_unit = cu,
        .backing_file = below ? below->file : NULL,
        .backing_format = !below ? PCOW_BACKING_NONE :
                          below->raw ? PCOW_BACKING_RAW : PCOW_BACKING_PCOW,
        .size_from_backing = from_base,
    };
    pcow_error err = { 0 };
    char p[PATH_MAX];

    path_of(c, name, p);
    if (pcow_create(p, &o, &err) < 0) {
        fail(c, "create %s: %s", name, err.msg);
    }
}

/* A snapshot of base @l (never reverted: bases show their active layer) */
static void base_snapshot(Ctx *c, MLayer *l)
{
    pcow_snapshot_info *list = NULL;
    pcow_error err = { 0 };
    char name[M_NAME_MAX];
    uint64_t id, want;
    int n;

    snprintf(name, sizeof(name), "s%u", ++c->counter);
    c->aux = open_image(c, l->file, PCOW_OPEN_RDWR);
    if (pcow_snapshot_create(c->aux, name, NULL, &err) < 0 ||
        (n = pcow_snapshot_list(c->aux, &list, &err)) < 1) {
        fail(c, "%s: snapshot: %s", l->file, err.msg);
    }
    id = list[n - 1].id;
    free(list);
    want = m_snap_create(l, name);
    if (id != want) {
        fail(c, "%s: new snapshot id %llu, the model expects %llu", l->file,
             (unsigned long long)id, (unsigned long long)want);
    }
    close_image(c, &c->aux, l->file);
}

/* A pcow layer over @below with some data (and maybe a snapshot) */
static MLayer *make_pcow(Ctx *c, Rng *r, MLayer *below, const char *name)
{
    char gen[M_NAME_MAX];
    uint32_t cs, cu;
    uint64_t size;
    bool from_base;
    MLayer *l;

    pick_geometry(r, &cs, &cu);
    size = pick_size(r, cs);
    from_base = below && below->v.size % MB_SIZE == 0 && rng_below(r, 2);
    if (from_base) {
        size = below->v.size;
    }
    if (!name) {
        new_name(c, gen, "b", false);
        name = gen;
    }
    create_pcow(c, name, size, cs, cu, below, from_base);
    l = add_layer(c, m_new_pcow(name, size, cs, cu, below));
    if (strcmp(name, TOP) != 0) {
        scribble(c, l, r, 1 + rng_below(r, 10));
        if (rng_below(r, 2)) {
            /* Frozen clusters: a commit into this base copies on write */
            base_snapshot(c, l);
            scribble(c, l, r, rng_below(r, 6));
        }
    }
    return l;
}

void setup_episode(Ctx *c)
{
    /* none, raw, pcow, pcow>raw, pcow>pcow, pcow>pcow>raw */
    static const char *const chains[] = {
        "", "r", "p", "rp", "pp", "rpp",
    };
    const char *ch = chains[rng_below(&c->rng, 6)];
    MLayer *below = NULL;

    for (const char *k = ch; *k; k++) {
        below = *k == 'r' ? make_raw(c, &c->rng) :
                make_pcow(c, &c->rng, below, NULL);
    }
    c->top = make_pcow(c, &c->rng, below, TOP);
    verify_down(c, c->top);
    open_top(c);
    snprintf(c->desc, sizeof(c->desc), "setup: top %llu bytes, cluster %u, "
             "COW unit %u, chain '%s'",
             (unsigned long long)c->top->v.size, c->top->cs, c->top->cu, ch);
}

/* -------------------------------------------------------- the operations */

static void op_write(Ctx *c, const Op *op, bool zero)
{
    MLayer *t = c->top;
    pcow_error err = { 0 };
    uint64_t off, len;

    pick_range(t->v.size, t->cs, op->a, op->b, &off, &len);
    snprintf(c->desc, sizeof(c->desc), "%s 0x%llx+0x%llx",
             zero ? "zero" : "write", (unsigned long long)off,
             (unsigned long long)len);
    if (zero) {
        if (pcow_zero_range(c->img, off, len, &err) < 0) {
            fail(c, "zero: %s", err.msg);
        }
        m_zero(t, off, len);
        return;
    }
    fill(op->d, off, c->buf2, len);
    if (pcow_pwrite(c->img, off, c->buf2, len, &err) != (int64_t)len) {
        fail(c, "write: %s", err.msg);
    }
    m_write(t, off, len, c->buf2);
}

static void op_snap_create(Ctx *c, bool tool)
{
    MLayer *t = c->top;
    pcow_snapshot_info *list = NULL;
    pcow_error err = { 0 };
    char name[M_NAME_MAX];
    uint64_t id, want, vm_size = 0;
    int n;

    if (t->nsnaps == M_MAX_SNAPS) {
        snprintf(c->desc, sizeof(c->desc), "snapshot -c: skipped (full)");
        return;
    }
    snprintf(name, sizeof(name), "s%u", ++c->counter);
    if (!tool && c->counter % 2) {
        /* Every other one holds VM state, of sizes around a cluster */
        vm_size = (uint64_t)c->counter * 7919 % (3 * t->cs) + 1;
    }
    snprintf(c->desc, sizeof(c->desc), "snapshot -c %s%s", name,
             tool ? " (pcow-img)" : vm_size ? " (VM state)" : "");
    if (tool) {
        close_top(c);
        tool_ok(c, "snapshot", "-c", name, TOP, NULL);
        open_top(c);
    } else {
        uint8_t *b = vm_bytes(name, vm_size);
        pcow_vm_state vm = { .data = b, .size = vm_size };
        int ret = pcow_snapshot_create_vm(c->img, name, vm_size ? &vm : NULL,
                                          NULL, &err);

        free(b);
        if (ret < 0) {
            fail(c, "snapshot create: %s", err.msg);
        }
    }
    n = pcow_snapshot_list(c->img, &list, &err);
    if (n != (int)t->nsnaps + 1 || strcmp(list[n - 1].name, name)) {
        free(list);
        fail(c, "snapshot list after create: %d entries", n);
    }
    /* It takes next_snapshot_id: ids are never reused */
    id = list[n - 1].id;
    free(list);
    want = m_snap_create(t, name);
    t->snaps[t->nsnaps - 1].vm_size = vm_size;
    if (id != want) {
        fail(c, "new snapshot id %llu, the model expects %llu",
             (unsigned long long)id, (unsigned long long)want);
    }
}

/* Revert to or delete a snapshot, by name or by id */
static void op_snap(Ctx *c, const Op *op, bool revert)
{
    MLayer *t = c->top;
    pcow_error err = { 0 };
    char key[M_NAME_MAX];
    unsigned i;
    int ret;

    if (!t->nsnaps) {
        snprintf(c->desc, sizeof(c->desc), "snapshot: skipped (none)");
        return;
    }
    i = op->a % t->nsnaps;
    if (op->b % 3 == 0) {
        snprintf(key, sizeof(key), "%llu", (unsigned long long)t->snaps[i].id);
    } else {
        snprintf(key, sizeof(key), "%s", t->snaps[i].name);
    }
    snprintf(c->desc, sizeof(c->desc), "snapshot %s %s (%s)%s",
             revert ? "-a" : "-d", key, t->snaps[i].name,
             op->c % 4 == 0 ? " (pcow-img)" : "");
    if (op->c % 4 == 0) {
        close_top(c);
        tool_ok(c, "snapshot", revert ? "-a" : "-d", key, TOP, NULL);
    } else {
        ret = revert ? pcow_snapshot_revert(c->img, key, &err) :
              pcow_snapshot_delete(c->img, key, &err);
        if (ret < 0) {
            fail(c, "snapshot %s: %s", revert ? "revert" : "delete",
                 err.msg);
        }
    }
    if (revert) {
        m_snap_revert(t, i);
    } else {
        m_snap_delete(t, i);
    }
}

static void op_resize(Ctx *c, const Op *op, bool grow)
{
    MLayer *t = c->top;
    uint64_t nb = t->v.size / MB_SIZE, size;
    pcow_error err = { 0 };

    if (grow ? nb == M_MAX_BLOCKS : nb == 1) {
        snprintf(c->desc, sizeof(c->desc), "resize: skipped");
        return;
    }
    if (grow) {
        size = (nb + 1 + op->a % (M_MAX_BLOCKS - nb)) * MB_SIZE;
    } else {
        size = (1 + op->a % (nb - 1)) * MB_SIZE;
    }
    if (op->b % 3 == 0 && size / t->cs * t->cs > (grow ? t->v.size : 0)) {
        size = size / t->cs * t->cs;      /* often a whole cluster */
    }
    snprintf(c->desc, sizeof(c->desc), "resize %s%llu (from %llu)",
             grow ? "" : "--shrink ", (unsigned long long)size,
             (unsigned long long)t->v.size);
    if (pcow_resize(c->img, size, !grow, &err) < 0) {
        fail(c, "resize: %s", err.msg);
    }
    m_resize(t, size);
}

/*
 * After commit the top image reads through to its base again: it holds
 * nothing in its virtual size.  (A cluster cut by the end may keep data
 * past the end: invisible, and zeroed by a later grow.)
 */
static void check_emptied(Ctx *c)
{
    uint64_t off = 0, size = c->top->v.size;
    pcow_extent ext;
    int ret = 0;

    c->aux = open_image(c, TOP, PCOW_OPEN_NO_BACKING);
    while (off < size && ret == 0) {
        ret = pcow_get_extent(c->aux, off, size - off, &ext);
        if (ret == 0 && ext.kind == PCOW_EXTENT_DATA && ext.depth == 0) {
            ret = -EEXIST;
        } else if (ret == 0) {
            off += ext.length ? ext.length : size;
        }
    }
    close_image(c, &c->aux, TOP);
    if (ret) {
        fail(c, "after commit: %s at 0x%llx", ret == -EEXIST ?
             "the image still holds data" : strerror(-ret),
             (unsigned long long)off);
    }
}

/* commit [-d]: of the top image (mid: of its base) into the layer below */
static void op_commit(Ctx *c, const Op *op, bool mid)
{
    MLayer *l = mid ? c->top->below : c->top;
    bool keep = op->a % 3 == 0;

    if (!l || !l->below || l->raw) {
        snprintf(c->desc, sizeof(c->desc), "commit: skipped (no base)");
        return;
    }
    snprintf(c->desc, sizeof(c->desc), "commit %s%s (into %s)",
             keep ? "-d " : "", l->file, l->below->file);
    close_top(c);
    if (keep) {
        tool_ok(c, "commit", "-d", l->file, NULL);
    } else {
        tool_ok(c, "commit", l->file, NULL);
    }
    m_commit(l, keep);
    verify_down(c, c->top);
    if (!keep && !mid) {
        check_emptied(c);
    }
}

/* The new base of a rebase; NULL: none */
static MLayer *rebase_target(Ctx *c, const Op *op, Rng *r)
{
    MLayer *b = c->top->below, *nb;
    char name[M_NAME_MAX], opt[64];
    uint32_t cs, cu;
    bool raw;

    switch (op->a % 6) {
    case 1:
    case 2:     /* a copy of the current base, same content */
        if (!b) {
            return NULL;
        }
        raw = op->a % 6 == 1;
        pick_geometry(r, &cs, &cu);
        new_name(c, name, "b", raw);
        snprintf(opt, sizeof(opt), "cluster_size=%u,cow_unit=%u", cs, cu);
        if (raw) {
            tool_ok(c, "convert", "-O", "raw", b->file, name, NULL);
        } else {
            tool_ok(c, "convert", "-O", "pcow", "-o", opt, b->file, name,
                    NULL);
        }
        nb = add_layer(c, m_converted(name, b, raw, cs, cu, NULL));
        verify_down(c, nb);
        return nb;
    case 3:
        return make_raw(c, r);
    case 4:
        return make_pcow(c, r, NULL, NULL);
    case 5:     /* skip the base: its own base */
        return b ? b->below : NULL;
    default:
        return NULL;
    }
}

static void op_rebase(Ctx *c, const Op *op)
{
    MLayer *t = c->top, *nb;
    bool unsafe = op->b % 3 == 0, with_fmt = op->c % 8 >= 4;
    const char *name, *fmt;
    Rng r = { op->d };

    close_top(c);
    nb = rebase_target(c, op, &r);
    name = nb ? nb->file : "";
    fmt = !nb || !with_fmt ? NULL : nb->raw ? "raw" : "pcow";
    snprintf(c->desc, sizeof(c->desc), "rebase %s%s%s -b '%s'",
             unsafe ? "-u " : "", fmt ? "-F " : "", fmt ? fmt : "", name);
    if (!unsafe && t->nsnaps && op->c % 4 < 2) {
        /* Delete them all, with pcow-img: then a safe rebase may run */
        while (t->nsnaps) {
            tool_ok(c, "snapshot", "-d", t->snaps[0].name, TOP, NULL);
            m_snap_delete(t, 0);
        }
    }
    if (!unsafe && t->nsnaps) {
        /* Refused: snapshots read through the base too */
        tool_refused(c, "rebase", "-b", name, TOP, NULL);
        gc_layers(c);
        return;
    }
    if (unsafe && fmt) {
        tool_ok(c, "rebase", "-u", "-F", fmt, "-b", name, TOP, NULL);
    } else if (unsafe) {
        tool_ok(c, "rebase", "-u", "-b", name, TOP, NULL);
    } else if (fmt) {
        tool_ok(c, "rebase", "-F", fmt, "-b", name, TOP, NULL);
    } else {
        tool_ok(c, "rebase", "-b", name, TOP, NULL);
    }
    if (unsafe) {
        m_rebase_unsafe(t, nb);
    } else {
        m_rebase_safe(t, nb);
    }
    gc_layers(c);
}

/*
 * convert: to raw (compared), to pcow (compared; often it then replaces
 * the top image), or to pcow over the top's base (-B).
 */
static void op_convert(Ctx *c, const Op *op)
{
    MLayer *t = c->top, *base = op->a % 4 == 2 ? t->below : NULL, *nl;
    bool raw = op->a % 4 == 0, adopt = op->a % 4 != 3;
    char name[M_NAME_MAX], opt[64];
    Rng r = { op->d };
    uint32_t cs, cu;

    pick_geometry(&r, &cs, &cu);
    close_top(c);
    new_name(c, name, "c", raw);
    snprintf(opt, sizeof(opt), "cluster_size=%u,cow_unit=%u", cs, cu);
    snprintf(c->desc, sizeof(c->desc), "convert -O %s%s%s%s",
             raw ? "raw" : "pcow -o ", raw ? "" : opt, base ? " -B " : "",
             base ? base->file : "");
    if (raw) {
        tool_ok(c, "convert", "-O", "raw", TOP, name, NULL);
    } else if (base) {
        tool_ok(c, "convert", "-O", "pcow", "-o", opt, "-B", base->file, TOP,
                name, NULL);
    } else {
        tool_ok(c, "convert", "-O", "pcow", "-o", opt, TOP, name, NULL);
    }
    nl = add_layer(c, m_converted(name, t, raw, cs, cu, base));
    verify_down(c, nl);
    if (raw || !adopt) {
        gc_layers(c);
        return;
    }
    {
        char from[PATH_MAX], to[PATH_MAX];

        path_of(c, name, from);
        path_of(c, TOP, to);
        if (rename(from, to) < 0) {
            fail(c, "rename: %s", strerror(errno));
        }
        snprintf(nl->file, sizeof(nl->file), "%s", TOP);
        snprintf(t->file, sizeof(t->file), "%s", ".gone");
        c->top = nl;
        gc_layers(c);
    }
}

/* Write into a base (the top image closed): the top sees it where it
 * holds nothing itself */
static void op_base(Ctx *c, const Op *op, bool resize)
{
    unsigned depth = 0;
    MLayer *l;
    Rng r = { op->d };

    for (l = c->top->below; l; l = l->below) {
        depth++;
    }
    if (!depth) {
        snprintf(c->desc, sizeof(c->desc), "base: skipped (none)");
        return;
    }
    depth = 1 + op->a % depth;
    for (l = c->top; depth--; ) {
        l = l->below;
    }
    close_top(c);
    if (!resize) {
        snprintf(c->desc, sizeof(c->desc), "write into base %s", l->file);
        scribble(c, l, &r, 1 + op->b % 4);
    } else if (l->raw) {
        uint64_t size = 1 + op->b % M_MAX_SIZE;
        char p[PATH_MAX];

        snprintf(c->desc, sizeof(c->desc), "truncate base %s to %llu",
                 l->file, (unsigned long long)size);
        path_of(c, l->file, p);
        if (truncate(p, size) < 0) {
            fail(c, "truncate %s: %s", l->file, strerror(errno));
        }
        m_raw_truncate(l, size);
    } else {
        uint64_t size = MB_SIZE * (1 + op->b % M_MAX_BLOCKS);
        pcow_error err = { 0 };

        snprintf(c->desc, sizeof(c->desc), "resize base %s to %llu",
                 l->file, (unsigned long long)size);
        c->aux = open_image(c, l->file, PCOW_OPEN_RDWR);
        if (pcow_resize(c->aux, size, true, &err) < 0) {
            fail(c, "resize %s: %s", l->file, err.msg);
        }
        close_image(c, &c->aux, l->file);
        m_resize(l, size);
    }
    verify_down(c, c->top);
}

static void expect_error(Ctx *c, int ret, const pcow_error *err,
                         const char *what)
{
    if (ret >= 0 || !one_line(err->msg)) {
        fail(c, "%s: expected a one-line error, got %d '%s'", what, ret,
             err->msg);
    }
}

/* Bad requests: refused with one line, nothing changed */
static void op_probe(Ctx *c, const Op *op)
{
    MLayer *t = c->top;
    pcow_error err = { 0 };
    char name[300];

    switch (op->a % 6) {
    case 0:
        snprintf(c->desc, sizeof(c->desc), "probe: revert/delete unknown");
        expect_error(c, pcow_snapshot_revert(c->img, "nosuch", &err), &err,
                     "revert of an unknown snapshot");
        expect_error(c, pcow_snapshot_delete(c->img, "999999", &err), &err,
                     "delete of an unknown snapshot id");
        break;
    case 1:
        snprintf(c->desc, sizeof(c->desc), "probe: bad snapshot names");
        memset(name, 'n', 256);
        name[256] = '\0';
        expect_error(c, pcow_snapshot_create(c->img, name, NULL, &err), &err,
                     "snapshot name of 256 bytes");
        expect_error(c, pcow_snapshot_create(c->img, "", NULL, &err), &err,
                     "empty snapshot name");
        if (t->nsnaps) {
            expect_error(c, pcow_snapshot_create(c->img, t->snaps[0].name, NULL,
                                                 &err), &err,
                         "duplicate snapshot name");
        }
        break;
    case 2:
        snprintf(c->desc, sizeof(c->desc), "probe: shrink without flag");
        if (t->v.size > MB_SIZE) {
            expect_error(c, pcow_resize(c->img, t->v.size - MB_SIZE, false,
                                        &err), &err, "shrink without flag");
        }
        expect_error(c, pcow_resize(c->img, t->v.size + 1, false, &err),
                     &err, "unaligned size");
        break;
    case 3:
        snprintf(c->desc, sizeof(c->desc), "probe: I/O beyond the end");
        memset(c->buf2, 0xee, 2);
        expect_error(c, pcow_pwrite(c->img, t->v.size - 1, c->buf2, 2,
                                    &err), &err, "write beyond the end");
        expect_error(c, pcow_zero_range(c->img, t->v.size, MB_SIZE, &err),
                     &err, "zero beyond the end");
        break;
    case 4:
        snprintf(c->desc, sizeof(c->desc), "probe: commit/rebase refused");
        close_top(c);
        if (!t->below) {
            tool_refused(c, "commit", TOP, NULL);
        }
        tool_refused(c, "rebase", "-b", "nosuch.pcow", TOP, NULL);
        break;
    default:
        snprintf(c->desc, sizeof(c->desc), "probe: convert onto itself");
        close_top(c);
        tool_refused(c, "convert", "-O", "pcow", TOP, TOP, NULL);
        break;
    }
}

/* pcow-img check; the content through convert -O raw, and compare */
static void op_tool_check(Ctx *c)
{
    char name[M_NAME_MAX];
    MLayer *l;

    snprintf(c->desc, sizeof(c->desc), "pcow-img check; convert -O raw; "
             "compare");
    close_top(c);
    tool_ok(c, "check", TOP, NULL);
    new_name(c, name, "v", true);
    tool_ok(c, "convert", TOP, name, NULL);
    l = add_layer(c, m_converted(name, c->top, true, 0, 0, NULL));
    verify_layer(c, l);
    tool_ok(c, "compare", "-s", TOP, name, NULL);
    gc_layers(c);
}

/*
 * A process that dies without closing.  A child opens the top image and
 * makes one change: a write or a zero range (killed after it), or a grow,
 * shrink, snapshot create, delete or revert, killed at the change's Nth
 * durable write (through the persistence hook: before that write is made)
 * or after it.  What the child wrote is in the page cache.  The image then
 * shows the old state or, once the commit was made, the new one: never a
 * mix; check finds no corruption (leaks are allowed), the read-write open
 * recovers it, and after a close it checks clean.
 */
typedef struct Kill {
    unsigned seen, at;          /* at 0: never */
} Kill;

static void kill_hook(void *opaque, pcow_persist_op op, uint64_t offset,
                      const void *data, uint64_t len)
{
    Kill *k = opaque;

    if (++k->seen == k->at) {
        kill(getpid(), SIGKILL);
    }
}

static int crash_child(Ctx *c, const char *p, unsigned kind, uint64_t off,
                       uint64_t len, uint64_t size, const char *name,
                       unsigned at)
{
    Kill k = { 0 };
    pcow_open_opts o = {
        .flags = PCOW_OPEN_RDWR, .hook = kill_hook, .hook_opaque = &k,
    };
    pcow_image *img;
    bool ok;

    if (pcow_open(p, &o, &img, NULL) < 0) {
        return 1;
    }
    k.at = at;      /* only the change is cut, not the open */
    switch (kind) {
    case 0:
        ok = pcow_pwrite(img, off, c->buf2, len, NULL) == (int64_t)len;
        break;
    case 1:
        ok = pcow_zero_range(img, off, len, NULL) == 0;
        break;
    case 2:
    case 3:
        ok = pcow_resize(img, size, true, NULL) == 0;
        break;
    case 4:
        ok = pcow_snapshot_create(img, name, NULL, NULL) == 0;
        break;
    case 5:
        ok = pcow_snapshot_delete(img, name, NULL) == 0;
        break;
    default:
        ok = pcow_snapshot_revert(img, name, NULL) == 0;
        break;
    }
    if (ok) {
        kill(getpid(), SIGKILL);
    }
    return 2;
}

/* Apply change @kind to the model */
static void crash_model(Ctx *c, MLayer *t, unsigned kind, uint64_t off,
                        uint64_t len, uint64_t size, const char *name,
                        unsigned idx)
{
    switch (kind) {
    case 0:
        m_write(t, off, len, c->buf2);
        break;
    case 1:
        m_zero(t, off, len);
        break;
    case 2:
    case 3:
        m_resize(t, size);
        break;
    case 4:
        m_snap_create(t, name);     /* verify_meta compares the id */
        break;
    case 5:
        m_snap_delete(t, idx);
        break;
    default:
        m_snap_revert(t, idx);
        break;
    }
}

/* Which state does the crashed image show?  Returns true: the new one */
static bool crash_outcome(Ctx *c, MLayer *t, const MLayer *old,
                          unsigned kind)
{
    pcow_snapshot_info *list = NULL;
    pcow_error err = { 0 };
    char why[512];
    MLayer *try;
    bool isnew;
    int n;

    c->aux = open_image(c, TOP, 0);
    n = pcow_snapshot_list(c->aux, &list, &err);
    if (n < 0) {
        fail(c, "snapshot list after the crash: %s", err.msg);
    }
    free(list);
    if (n != (int)t->nsnaps && n != (int)old->nsnaps) {
        fail(c, "%d snapshots after the crash, expected %u or %u", n,
             old->nsnaps, t->nsnaps);
    }
    if (kind >= 4 && kind <= 5) {
        isnew = n == (int)t->nsnaps;
    } else {
        /* By content: write, zero, resize, revert */
        read_pcow(c, c->aux, pcow_virtual_size(c->aux) == t->v.size ? t :
                  old, c->buf);
        try = m_clone(t);
        isnew = pcow_virtual_size(c->aux) == t->v.size &&
                m_verify(try, c->buf, why, sizeof(why)) == 0;
        m_free(try);
    }
    close_image(c, &c->aux, TOP);
    return isnew;
}

static void op_crash(Ctx *c, const Op *op)
{
    static const char *const what[] = {
        "write", "zero", "grow", "shrink", "snapshot -c", "snapshot -d",
        "snapshot -a",
    };
    MLayer *t = c->top, *old;
    unsigned kind = op->c % CRASH_KINDS, idx = 0, at;
    uint64_t off, len, size, old_size, nb = t->v.size / MB_SIZE;
    pcow_check_result res;
    pcow_error err = { 0 };
    char name[M_NAME_MAX], p[PATH_MAX];
    pid_t pid;
    int st;

    if ((kind == 4 && t->nsnaps == M_MAX_SNAPS) || (kind > 4 && !t->nsnaps)) {
        kind = 0;
    }
    /* Most changes make a few durable writes; snapshots more */
    at = kind < 2 || op->c % 32 < 8 ? 0 :
         1 + (op->b % 3 ? (op->b >> 2) % 10 : (op->b >> 2) % 64);
    pick_range(t->v.size, t->cs, op->a, op->b, &off, &len);
    fill(op->d, off, c->buf2, len);
    size = kind == 2 && nb < M_MAX_BLOCKS ?
           (nb + 1 + op->a % (M_MAX_BLOCKS - nb)) * MB_SIZE :
           kind == 3 && nb > 1 ? (1 + op->a % (nb - 1)) * MB_SIZE :
           t->v.size;
    if (kind >= 5) {
        idx = op->a % t->nsnaps;
        snprintf(name, sizeof(name), "%s", t->snaps[idx].name);
    } else {
        snprintf(name, sizeof(name), "s%u", ++c->counter);
    }
    snprintf(c->desc, sizeof(c->desc), "crash %s %s (0x%llx+0x%llx, size "
             "%llu, %s)", at ? "in" : "after", what[kind],
             (unsigned long long)off, (unsigned long long)len,
             (unsigned long long)size, name);
    close_top(c);
    path_of(c, TOP, p);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        _exit(crash_child(c, p, kind, off, len, size, name, at));
    }
    if (pid < 0 || waitpid(pid, &st, 0) < 0 ||
        !WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
        fail(c, "crash child: status 0x%x", st);
    }
    if (pcow_check(p, 0, false, &res, &err) < 0 || res.corruptions) {
        fail(c, "check after the crash: %llu corruptions: %s%s",
             (unsigned long long)res.corruptions, res.first_problem,
             err.msg);
    }
    old = m_clone(t);
    old_size = t->v.size;
    crash_model(c, t, kind, off, len, size, name, idx);
    if (!crash_outcome(c, t, old, kind)) {
        if (!at) {
            m_free(old);
            fail(c, "the change is not there after the crash");
        }
        m_assign(t, old);
    } else if (kind == 4) {
        c->crash_snap_ids++;    /* a predicted id verify_meta compares */
    }
    m_free(old);
    /* Read-only before the recovery, then the read-write open recovers */
    verify_layer(c, t);
    open_top(c);
    verify_layer(c, t);
    if (kind == 3 && t->v.size < old_size && op->d % 2) {
        /* Grow back: the cut range must read zeros (issue 9, defect 2) */
        if (pcow_resize(c->img, old_size, false, &err) < 0) {
            fail(c, "grow after the crash: %s", err.msg);
        }
        m_resize(t, old_size);
        verify_layer(c, t);
    }
    close_top(c);
    c->crash_steps[kind]++;
}

/* ----------------------------------------------------------- dispatch */

const char *const op_names[OP_COUNT] = {
    "write", "zero", "snap-create", "snap-revert", "snap-delete", "grow",
    "shrink", "commit", "commit-mid", "rebase", "convert", "base-write",
    "base-resize", "reopen", "probe", "tool-check", "crash",
};

void op_name(const Op *op, char *out, size_t len)
{
    snprintf(out, len, "%s a=%#llx b=%#llx c=%#llx d=%#llx",
             op->kind < OP_COUNT ? op_names[op->kind] : "?",
             (unsigned long long)op->a, (unsigned long long)op->b,
             (unsigned long long)op->c, (unsigned long long)op->d);
}

/* Can operation @k do anything in the current state? */
static bool applicable(const Ctx *c, unsigned k)
{
    const MLayer *t = c->top, *b = t->below;

    switch (k) {
    case OP_SNAP_CREATE:
        return t->nsnaps < M_MAX_SNAPS;
    case OP_SNAP_REVERT:
    case OP_SNAP_DELETE:
        return t->nsnaps > 0;
    case OP_GROW:
        return t->v.size < M_MAX_SIZE;
    case OP_SHRINK:
        return t->v.size > MB_SIZE;
    case OP_COMMIT:
    case OP_BASE_WRITE:
    case OP_BASE_RESIZE:
        return b;
    case OP_COMMIT_MID:
        return b && !b->raw && b->below;
    default:
        return true;
    }
}

Op gen_op(Ctx *c)
{
    static const unsigned weight[OP_COUNT] = {
        [OP_WRITE] = 30, [OP_ZERO] = 8, [OP_SNAP_CREATE] = 5,
        [OP_SNAP_REVERT] = 4, [OP_SNAP_DELETE] = 3, [OP_GROW] = 3,
        [OP_SHRINK] = 3, [OP_COMMIT] = 3, [OP_COMMIT_MID] = 1,
        [OP_REBASE] = 3, [OP_CONVERT] = 2, [OP_BASE_WRITE] = 3,
        [OP_BASE_RESIZE] = 1, [OP_REOPEN] = 3, [OP_PROBE] = 2,
        [OP_TOOL_CHECK] = 1, [OP_CRASH] = 2,
    };
    unsigned w[OP_COUNT], total = 0, k, x;
    Op op;

    for (k = 0; k < OP_COUNT; k++) {
        /* Past the time, kinds not yet run are far likelier */
        w[k] = !applicable(c, k) ? 0 :
               weight[k] * (c->favour & (1u << k) ? 20 : 1);
        total += w[k];
    }
    x = rng_below(&c->rng, total);
    for (k = 0; x >= w[k]; k++) {
        x -= w[k];
    }
    op.kind = k;
    op.a = rng_next(&c->rng);
    op.b = rng_next(&c->rng);
    op.c = rng_next(&c->rng);
    op.d = rng_next(&c->rng);
    return op;
}

void run_op(Ctx *c, const Op *op)
{
    switch (op->kind) {
    case OP_WRITE:
    case OP_ZERO:
        op_write(c, op, op->kind == OP_ZERO);
        break;
    case OP_SNAP_CREATE:
        op_snap_create(c, op->c % 4 == 0);
        break;
    case OP_SNAP_REVERT:
    case OP_SNAP_DELETE:
        op_snap(c, op, op->kind == OP_SNAP_REVERT);
        break;
    case OP_GROW:
    case OP_SHRINK:
        op_resize(c, op, op->kind == OP_GROW);
        break;
    case OP_COMMIT:
    case OP_COMMIT_MID:
        op_commit(c, op, op->kind == OP_COMMIT_MID);
        break;
    case OP_REBASE:
        op_rebase(c, op);
        break;
    case OP_CONVERT:
        op_convert(c, op);
        break;
    case OP_BASE_WRITE:
    case OP_BASE_RESIZE:
        op_base(c, op, op->kind == OP_BASE_RESIZE);
        break;
    case OP_REOPEN:
        snprintf(c->desc, sizeof(c->desc), "close, check, reopen");
        close_top(c);
        break;
    case OP_PROBE:
        op_probe(c, op);
        break;
    case OP_CRASH:
        op_crash(c, op);
        break;
    default:
        op_tool_check(c);
        break;
    }
    /* After every step: the top image against the model, and check */
    if (!c->img) {
        open_top(c);
    }
    verify_layer(c, c->top);
    verify_meta(c);
    check_open(c);
}
