/*
 * Seed corpus generator for the pcow fuzz target: small valid images (every
 * kind of entry, snapshots, one with VM state, bases, a clone of the base's
 * snapshot, slot B current) and
 * nearly valid ones (one rule broken each).  Bases are named "base" (pcow)
 * and "base.raw", which the fuzz entry point provides (fuzz-entry.h).
 *
 * Usage: fuzz-gen-corpus OUTDIR   (tests/pcow/fuzz/gen-corpus.sh runs it)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow/pcow.h"
#include "pcow-int.h"
#include "fuzz-entry.h"

static char out[1024], tmp[1024];

static void die(const char *what, const pcow_error *err)
{
    fprintf(stderr, "gen-corpus: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static void path(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

/* Create work image @name in tmp (next to the bases) */
static pcow_image *create(const char *name, uint64_t size, uint32_t cs,
                          uint32_t cu, const char *backing,
                          pcow_backing_format fmt)
{
    pcow_create_opts co = {
        .virtual_size = size, .cluster_size = cs, .cow_unit = cu,
        .backing_file = backing, .backing_format = fmt,
    };
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_error err = { 0 };
    pcow_image *img;
    char p[2048];

    path(p, sizeof(p), tmp, name);
    unlink(p);
    if (pcow_create(p, &co, &err) < 0 || pcow_open(p, &oo, &img, &err) < 0) {
        die(name, &err);
    }
    return img;
}

/*
 * Write through pcow_pwrite, making each cluster writable first one at a
 * time (pcow_pwrite itself reserves clusters in batches, which would make
 * the corpus files large)
 */
static void wr(pcow_image *img, uint64_t off, uint64_t len, int seed)
{
    uint64_t cs = pcow_cluster_size(img), c, fo;
    uint8_t *b = malloc(len);
    pcow_error err = { 0 };
    uint64_t i;

    for (c = off & ~(cs - 1); c < off + len; c += cs) {
        pcow_extent e;

        if (pcow_get_extent(img, c, cs, &e) < 0) {
            die("extent", NULL);
        }
        if (e.kind == PCOW_EXTENT_HOLE && e.length >= cs) {
            pcow_expand_cluster(img, c / cs, &fo);
        } else if (!e.writable || e.length < cs) {
            pcow_cow(img, c, true, &e);
        }
    }
    for (i = 0; i < len; i++) {
        b[i] = (uint8_t)(i * 13 + seed);
    }
    if (pcow_pwrite(img, off, b, len, &err) != (int64_t)len) {
        die("pwrite", &err);
    }
    free(b);
}

static void snap(pcow_image *img, const char *name)
{
    pcow_error err = { 0 };

    if (pcow_snapshot_create(img, name, NULL, &err) < 0) {
        die("snapshot", &err);
    }
}

/* A snapshot with @len bytes of VM state, as QEMU's savevm without a disk */
static void snap_vm(pcow_image *img, const char *name, uint64_t len)
{
    uint8_t *b = malloc(len);
    pcow_vm_state vm = { .data = b, .size = len, .vm_clock_nsec = 1 };
    pcow_error err = { 0 };
    uint64_t i;

    for (i = 0; i < len; i++) {
        b[i] = (uint8_t)(i * 7 + 1);
    }
    if (pcow_snapshot_create_vm(img, name, &vm, NULL, &err) < 0) {
        die("snapshot with VM state", &err);
    }
    free(b);
}

static void cow(pcow_image *img, uint64_t off)
{
    pcow_extent e;

    if (pcow_cow(img, off, false, &e) < 0) {
        die("cow", NULL);
    }
}

static void done(pcow_image *img)
{
    pcow_error err = { 0 };

    if (pcow_close(img, &err) < 0) {
        die("close", &err);
    }
}

/* Load work image @name, let @patch change it, save it as corpus @as */
typedef void (*Patch)(uint8_t *d, size_t *size);

static void emit(const char *name, const char *as, Patch patch)
{
    char p[2048];
    struct stat st;
    uint8_t *d;
    size_t size;
    int fd;

    path(p, sizeof(p), tmp, name);
    fd = open(p, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) < 0) {
        die(name, NULL);
    }
    size = st.st_size;
    d = calloc(1, size + 65536);
    if (!d || read(fd, d, size) != (ssize_t)size) {
        die(name, NULL);
    }
    close(fd);
    if (patch) {
        patch(d, &size);
    }
    path(p, sizeof(p), out, as);
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, d, size) != (ssize_t)size) {
        die(as, NULL);
    }
    close(fd);
    free(d);
}

/* ---- patches of a freshly created (slot A current) image -------------- */

static void fix_slot_a(uint8_t *d)
{
    uint32_t len = pcow_ld32(d + 8);

    pcow_st32(d + 12, 0);
    pcow_st32(d + 12, pcow_crc32c(0, d, len));
}

static uint64_t cs_of(const uint8_t *d)
{
    return 1ull << pcow_ld32(d + 48);
}

static uint64_t l1_of(const uint8_t *d)
{
    return pcow_ld64(d + 64);
}

static uint64_t l2_of(const uint8_t *d)
{
    return pcow_ld64(d + l1_of(d)) & ~(cs_of(d) - 1);
}

static void p_bad_crc(uint8_t *d, size_t *size)
{
    d[20] ^= 0x40;
}

static void p_truncated(uint8_t *d, size_t *size)
{
    *size = *size / 2;
}

static void p_short(uint8_t *d, size_t *size)
{
    *size = 3000;
}

static void p_l1_beyond(uint8_t *d, size_t *size)
{
    pcow_st64(d + l1_of(d) + 8, pcow_ld64(d + PCOW_HOT_FRONTIER) +
              cs_of(d) * 4);
}

static void p_l1_unaligned(uint8_t *d, size_t *size)
{
    pcow_st64(d + l1_of(d), l2_of(d) + 8);
}

static void p_dup_map(uint8_t *d, size_t *size)
{
    uint8_t *l2 = d + l2_of(d);

    pcow_st64(l2 + 32, pcow_ld64(l2));
}

static void p_map_meta(uint8_t *d, size_t *size)
{
    uint8_t *l2 = d + l2_of(d);

    pcow_st64(l2, l1_of(d) | PCOW_F_PRESENT | PCOW_F_WRITABLE);
}

static void p_map_reserved(uint8_t *d, size_t *size)
{
    uint8_t *l2 = d + l2_of(d);

    pcow_st64(l2, pcow_ld64(l2) | 0x10);
    pcow_st64(l2 + 24, 1);
}

static void p_partial_bad(uint8_t *d, size_t *size)
{
    uint8_t *l2 = d + l2_of(d);

    /* PARTIAL with copied bits beyond the units and a PARTIAL source */
    pcow_st64(l2, pcow_ld64(l2) | PCOW_F_PARTIAL);
    pcow_st64(l2 + 8, ~0ull);
    pcow_st64(l2 + 16, pcow_ld64(l2 + 32) | PCOW_F_PARTIAL);
}

static void p_frontier_beyond(uint8_t *d, size_t *size)
{
    pcow_st64(d + PCOW_HOT_FRONTIER, pcow_ld64(d + PCOW_HOT_FRONTIER) +
              cs_of(d) * 64);
}

static void p_cut_last_cluster(uint8_t *d, size_t *size)
{
    *size -= 512;       /* a copy cut inside its last cluster */
}

static void p_low_frontier(uint8_t *d, size_t *size)
{
    /* The last two clusters are in use but above the frontier */
    pcow_st64(d + PCOW_HOT_FRONTIER, pcow_ld64(d + PCOW_HOT_FRONTIER) -
              cs_of(d) * 2);
}

static void p_next_snapshot_id_0(uint8_t *d, size_t *size)
{
    pcow_st64(d + 96, 0);
    fix_slot_a(d);
}

static void p_generation_max(uint8_t *d, size_t *size)
{
    pcow_st64(d + 16, UINT64_MAX);
    fix_slot_a(d);
}

static void p_dirty_leaks(uint8_t *d, size_t *size)
{
    uint64_t f = pcow_ld64(d + PCOW_HOT_FRONTIER);

    /* Two allocated clusters nothing references, and in_use set */
    memset(d + f, 0x5a, cs_of(d) * 2);
    *size = f + cs_of(d) * 2;
    pcow_st64(d + PCOW_HOT_FRONTIER, *size);
    pcow_st64(d + PCOW_HOT_IN_USE, 0x1234567);
}

static void p_incompat(uint8_t *d, size_t *size)
{
    pcow_st64(d + 24, 1ull << 5);
    fix_slot_a(d);
}

/* A clone whose header lost its BACKING_SNAPSHOT bit (an old writer) */
static void p_clone_no_bit(uint8_t *d, size_t *size)
{
    pcow_st64(d + PCOW_H_INCOMPAT, pcow_ld64(d + PCOW_H_INCOMPAT) &
              ~PCOW_INCOMPAT_BACKING_SNAPSHOT);
    fix_slot_a(d);
}

/* A clone of a snapshot its base does not have */
static void p_clone_missing(uint8_t *d, size_t *size)
{
    pcow_st64(d + PCOW_H_BACKING_SNAP, 7);
    fix_slot_a(d);
}

static void p_big_l1(uint8_t *d, size_t *size)
{
    /* Largest L1 the format allows, mostly beyond the end of the file */
    pcow_st32(d + 72, PCOW_MAX_L1_SIZE);
    fix_slot_a(d);
}

static void p_snap_bad(uint8_t *d, size_t *size)
{
    int s = pcow_ld64(d + PCOW_SLOT_B + 16) > pcow_ld64(d + 16);
    uint8_t *slot = d + (s ? PCOW_SLOT_B : PCOW_SLOT_A);
    uint64_t so = pcow_ld64(slot + 80);

    /* Duplicate names, the table CRC left wrong */
    memcpy(d + so + 64 + pcow_round_up(pcow_ld32(d + so + 20), 8) + 64,
           d + so + 64, pcow_ld32(d + so + 20));
}

int main(int argc, char **argv)
{
    pcow_image *img;
    pcow_error err = { 0 };

    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    snprintf(out, sizeof(out), "%s", argv[1]);
    snprintf(tmp, sizeof(tmp), "/tmp/pcow-gen-XXXXXX");
    if (mkdir(out, 0755) < 0 && errno != EEXIST) {
        die(out, NULL);
    }
    if (!mkdtemp(tmp) || pcow_fuzz_setup(tmp) < 0) {
        die("setup", NULL);
    }

    /* Valid images */
    img = create("empty", 1 << 20, 4096, 0, NULL, PCOW_BACKING_NONE);
    done(img);
    emit("empty", "valid-empty-4k", NULL);
    emit("empty", "bad-crc", p_bad_crc);
    emit("empty", "bad-short", p_short);
    emit("empty", "bad-incompat-feature", p_incompat);
    emit("empty", "bad-frontier", p_frontier_beyond);
    emit("empty", "edge-max-l1", p_big_l1);
    emit("empty", "bad-next-snapshot-id", p_next_snapshot_id_0);
    emit("empty", "edge-generation-max", p_generation_max);

    img = create("big", 1ull << 40, 1 << 16, 0, NULL, PCOW_BACKING_NONE);
    done(img);
    emit("big", "valid-1t-64k", NULL);

    img = create("data", 1 << 20, 4096, 0, NULL, PCOW_BACKING_NONE);
    wr(img, 0, 3 * 4096, 1);
    wr(img, 600 * 1024, 5000, 2);
    done(img);
    emit("data", "valid-data-4k", NULL);
    emit("data", "bad-truncated", p_truncated);
    emit("data", "bad-l1-beyond", p_l1_beyond);
    emit("data", "bad-l1-unaligned", p_l1_unaligned);
    emit("data", "bad-dup-mapping", p_dup_map);
    emit("data", "bad-map-metadata", p_map_meta);
    emit("data", "bad-reserved-bits", p_map_reserved);
    emit("data", "bad-partial", p_partial_bad);
    emit("data", "leaky-dirty", p_dirty_leaks);
    emit("data", "bad-cut-last-cluster", p_cut_last_cluster);
    emit("data", "bad-low-frontier", p_low_frontier);

    img = create("snap", 256 * 1024, 8192, 4096, NULL, PCOW_BACKING_NONE);
    wr(img, 0, 4 * 8192, 3);
    snap(img, "one");
    cow(img, 8192 + 4096);          /* PARTIAL, source frozen */
    wr(img, 2 * 8192, 100, 4);      /* whole-cluster COW */
    snap(img, "two");
    wr(img, 5 * 8192, 8192, 5);
    done(img);
    emit("snap", "valid-snapshots-8k", NULL);
    emit("snap", "bad-snapshot-table", p_snap_bad);

    img = create("vm", 256 * 1024, 8192, 4096, NULL, PCOW_BACKING_NONE);
    wr(img, 0, 2 * 8192, 8);
    snap_vm(img, "vm", 3 * 8192 + 100);    /* the VM state extension */
    snap(img, "plain");
    wr(img, 4 * 8192, 8192, 9);     /* reuses the old snapshot table */
    done(img);
    emit("vm", "valid-vm-state-8k", NULL);

    img = create("over", 64 * 1024, 8192, 4096, "base", PCOW_BACKING_PCOW);
    cow(img, 8192 + 4096);          /* PARTIAL over the base */
    wr(img, 4 * 8192, 8192, 6);
    done(img);
    emit("over", "valid-backing-pcow", NULL);

    {
        /* A clone: the base's snapshot 1 (fuzz-entry.c makes it) */
        pcow_create_opts co = {
            .virtual_size = 1 << 20, .cluster_size = 4096,
            .backing_file = "base", .backing_format = PCOW_BACKING_PCOW,
            .backing_snapshot_id = 1,
        };
        pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
        char p[2048];

        path(p, sizeof(p), tmp, "clone");
        if (pcow_create(p, &co, &err) < 0 ||
            pcow_open(p, &oo, &img, &err) < 0) {
            die("clone", &err);
        }
        cow(img, 8192 + 100);       /* PARTIAL over the base's snapshot */
        done(img);
        emit("clone", "valid-clone-4k", NULL);
        emit("clone", "bad-clone-no-feature-bit", p_clone_no_bit);
        emit("clone", "edge-clone-missing-snapshot", p_clone_missing);
    }

    img = create("overraw", 64 * 1024, 4096, 0, "base.raw",
                 PCOW_BACKING_RAW);
    wr(img, 4096 + 100, 200, 7);
    done(img);
    emit("overraw", "valid-backing-raw", NULL);

    {
        /* Slot B current after one header commit */
        pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR |
                                       PCOW_OPEN_NO_BACKING };
        char p[2048];

        path(p, sizeof(p), tmp, "data");
        if (pcow_open(p, &oo, &img, &err) < 0) {
            die("open", &err);
        }
        snap(img, "b");
        done(img);
        emit("data", "valid-slot-b", NULL);
        /* An image that names itself as its base */
        path(p, sizeof(p), tmp, "overraw");
        if (pcow_open(p, &oo, &img, &err) < 0 ||
            pcow_set_backing(img, "input", PCOW_BACKING_PCOW, &err) < 0) {
            die("set_backing", &err);
        }
        done(img);
        emit("overraw", "edge-self-loop", NULL);
    }
    {
        char cmd[1200];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
        if (system(cmd) != 0) {
            return 1;
        }
    }
    return 0;
}
