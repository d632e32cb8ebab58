/*
 * libpcow internal definitions, shared by the modules of block/pcow/
 * (in the manner of qcow2.h): the on-disk layout by name, tied to the
 * spec's tables by static assertions; the map entry classifier; the
 * persist method; the image structure; and a one-line contract for each
 * internal function, module by module.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_INT_H
#define PCOW_INT_H

#include <stdatomic.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "pcow/pcow.h"

/* Older C libraries lack the DAX mapping flags (persist.c, storage.c) */
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

/* On-disk layout (docs/interop/pcow-spec.rst) */
#define PCOW_MAGIC              0x574f4350u /* bytes "PCOW" read as LE u32 */
#define PCOW_SLOT_SIZE          1536
#define PCOW_SLOT_A             0
#define PCOW_SLOT_B             1536
#define PCOW_HOT_OFFSET         3072
#define PCOW_HOT_FRONTIER       3072    /* u64 */
#define PCOW_HOT_IN_USE         3080    /* u64 in_use */
#define PCOW_HOT_STAMP          3088    /* u64 */
#define PCOW_HOT_SIZE           64
#define PCOW_HEADER_FIXED       128

/*
 * Header slot fields: the table of docs/interop/pcow-spec.rst, "Header
 * slots", offset by offset.  pcow_header_encode() and header_decode() use
 * these names only.
 */
#define PCOW_H_MAGIC            0   /* u32 */
#define PCOW_H_VERSION          4   /* u32 */
#define PCOW_H_LENGTH           8   /* u32 header_length */
#define PCOW_H_CRC              12  /* u32 header_crc32c */
#define PCOW_H_GENERATION       16  /* u64 */
#define PCOW_H_INCOMPAT         24  /* u64 incompatible_features */
#define PCOW_H_COMPAT           32  /* u64 compatible_features */
#define PCOW_H_AUTOCLEAR        40  /* u64 autoclear_features */
#define PCOW_H_CLUSTER_BITS     48  /* u32 */
#define PCOW_H_COW_UNIT_BITS    52  /* u32 */
#define PCOW_H_VIRTUAL_SIZE     56  /* u64 */
#define PCOW_H_L1_OFFSET        64  /* u64 l1_table_offset */
#define PCOW_H_L1_SIZE          72  /* u32 */
#define PCOW_H_NB_SNAPSHOTS     76  /* u32 */
#define PCOW_H_SNAP_OFFSET      80  /* u64 snapshots_offset */
#define PCOW_H_SNAP_SIZE        88  /* u32 snapshots_size */
#define PCOW_H_SNAP_CRC         92  /* u32 snapshots_crc32c */
#define PCOW_H_NEXT_SNAP_ID     96  /* u64 next_snapshot_id */
#define PCOW_H_BACKING_FORMAT   104 /* u32 */
#define PCOW_H_BACKING_NAME_LEN 108 /* u32 backing_name_length */
#define PCOW_H_BACKING_LIMIT    112 /* u64 */
#define PCOW_H_BACKING_SNAP     120 /* u64 backing_snapshot_id */
#define PCOW_H_BACKING_NAME     128 /* name bytes, zero padded to 8 */

/* Each field follows the one before, as in the spec's table */
_Static_assert(PCOW_H_VERSION == PCOW_H_MAGIC + 4, "header layout");
_Static_assert(PCOW_H_LENGTH == PCOW_H_VERSION + 4, "header layout");
_Static_assert(PCOW_H_CRC == PCOW_H_LENGTH + 4, "header layout");
_Static_assert(PCOW_H_GENERATION == PCOW_H_CRC + 4, "header layout");
_Static_assert(PCOW_H_INCOMPAT == PCOW_H_GENERATION + 8, "header layout");
_Static_assert(PCOW_H_COMPAT == PCOW_H_INCOMPAT + 8, "header layout");
_Static_assert(PCOW_H_AUTOCLEAR == PCOW_H_COMPAT + 8, "header layout");
_Static_assert(PCOW_H_CLUSTER_BITS == PCOW_H_AUTOCLEAR + 8, "header layout");
_Static_assert(PCOW_H_COW_UNIT_BITS == PCOW_H_CLUSTER_BITS + 4,
               "header layout");
_Static_assert(PCOW_H_VIRTUAL_SIZE == PCOW_H_COW_UNIT_BITS + 4,
               "header layout");
_Static_assert(PCOW_H_L1_OFFSET == PCOW_H_VIRTUAL_SIZE + 8, "header layout");
_Static_assert(PCOW_H_L1_SIZE == PCOW_H_L1_OFFSET + 8, "header layout");
_Static_assert(PCOW_H_NB_SNAPSHOTS == PCOW_H_L1_SIZE + 4, "header layout");
_Static_assert(PCOW_H_SNAP_OFFSET == PCOW_H_NB_SNAPSHOTS + 4,
               "header layout");
_Static_assert(PCOW_H_SNAP_SIZE == PCOW_H_SNAP_OFFSET + 8, "header layout");
_Static_assert(PCOW_H_SNAP_CRC == PCOW_H_SNAP_SIZE + 4, "header layout");
_Static_assert(PCOW_H_NEXT_SNAP_ID == PCOW_H_SNAP_CRC + 4, "header layout");
_Static_assert(PCOW_H_BACKING_FORMAT == PCOW_H_NEXT_SNAP_ID + 8,
               "header layout");
_Static_assert(PCOW_H_BACKING_NAME_LEN == PCOW_H_BACKING_FORMAT + 4,
               "header layout");
_Static_assert(PCOW_H_BACKING_LIMIT == PCOW_H_BACKING_NAME_LEN + 4,
               "header layout");
_Static_assert(PCOW_H_BACKING_SNAP == PCOW_H_BACKING_LIMIT + 8,
               "header layout");
_Static_assert(PCOW_H_BACKING_NAME == PCOW_H_BACKING_SNAP + 8,
               "header layout");
/* 8-aligned u64 fields; the fixed part, then the longest name, fit a slot */
_Static_assert(PCOW_H_GENERATION % 8 == 0 && PCOW_H_VIRTUAL_SIZE % 8 == 0 &&
               PCOW_H_NEXT_SNAP_ID % 8 == 0 && PCOW_H_BACKING_LIMIT % 8 == 0,
               "header alignment");
_Static_assert(PCOW_H_BACKING_NAME == PCOW_HEADER_FIXED, "header size");
_Static_assert(PCOW_HEADER_FIXED + ((PCOW_MAX_BACKING_NAME + 7) & ~7) <=
               PCOW_SLOT_SIZE, "longest header fits its slot");
/* Cluster 0: slot A, slot B, the hot line, all in the smallest cluster */
_Static_assert(PCOW_SLOT_B == PCOW_SLOT_A + PCOW_SLOT_SIZE, "slot layout");
_Static_assert(PCOW_HOT_OFFSET == PCOW_SLOT_B + PCOW_SLOT_SIZE, "hot line");
_Static_assert(PCOW_HOT_OFFSET % 64 == 0, "hot line is one cache line");
_Static_assert(PCOW_HOT_FRONTIER == PCOW_HOT_OFFSET &&
               PCOW_HOT_IN_USE == PCOW_HOT_OFFSET + 8 &&
               PCOW_HOT_STAMP == PCOW_HOT_OFFSET + 16, "hot line fields");
_Static_assert(PCOW_HOT_OFFSET + PCOW_HOT_SIZE <=
               (1u << PCOW_MIN_CLUSTER_BITS), "cluster 0 holds the header");
#define PCOW_MAX_L1_SIZE        (1u << 22)
#define PCOW_L2_ENTRY_SIZE      32
#define PCOW_SNAP_FIXED         64
#define PCOW_MAX_SNAP_TABLE     (64u << 20)

/*
 * Snapshot record fields: docs/interop/pcow-spec.rst, "Snapshot table".
 * The record is PCOW_SNAP_FIXED bytes, then the name padded to 8.
 */
#define PCOW_S_ID               0   /* u64 */
#define PCOW_S_L1_OFFSET        8   /* u64 l1_table_offset */
#define PCOW_S_L1_SIZE          16  /* u32 */
#define PCOW_S_NAME_LEN         20  /* u32 name_length */
#define PCOW_S_VIRTUAL_SIZE     24  /* u64 */
#define PCOW_S_DATE_SEC         32  /* u64 */
#define PCOW_S_DATE_NSEC        40  /* u32 */
#define PCOW_S_EXTRA_LEN        44  /* u32 extra_length, 0 or PCOW_SX_SIZE */
#define PCOW_S_BACKING_LIMIT    48  /* u64 */
#define PCOW_S_FLAGS            56  /* u64 snapshot flags */
#define PCOW_S_NAME             64  /* name bytes, zero padded to 8 */

_Static_assert(PCOW_S_L1_OFFSET == PCOW_S_ID + 8 &&
               PCOW_S_L1_SIZE == PCOW_S_L1_OFFSET + 8 &&
               PCOW_S_NAME_LEN == PCOW_S_L1_SIZE + 4 &&
               PCOW_S_VIRTUAL_SIZE == PCOW_S_NAME_LEN + 4 &&
               PCOW_S_DATE_SEC == PCOW_S_VIRTUAL_SIZE + 8 &&
               PCOW_S_DATE_NSEC == PCOW_S_DATE_SEC + 8 &&
               PCOW_S_EXTRA_LEN == PCOW_S_DATE_NSEC + 4 &&
               PCOW_S_BACKING_LIMIT == PCOW_S_EXTRA_LEN + 4 &&
               PCOW_S_FLAGS == PCOW_S_BACKING_LIMIT + 8 &&
               PCOW_S_NAME == PCOW_S_FLAGS + 8, "snapshot record");
_Static_assert(PCOW_S_NAME == PCOW_SNAP_FIXED, "snapshot record size");

/*
 * The VM state extension of a record (spec, "VM state"): after the name's
 * padding, when extra_length is PCOW_SX_SIZE.  Offsets within it.
 */
#define PCOW_SX_VM_STATE_OFFSET 0   /* u64, first cluster of the VM state */
#define PCOW_SX_VM_STATE_SIZE   8   /* u64, bytes: 1 .. PCOW_MAX_VM_STATE */
#define PCOW_SX_VM_CLOCK_NSEC   16  /* u64 */
#define PCOW_SX_SIZE            24
_Static_assert(PCOW_SX_VM_STATE_SIZE == PCOW_SX_VM_STATE_OFFSET + 8 &&
               PCOW_SX_VM_CLOCK_NSEC == PCOW_SX_VM_STATE_SIZE + 8 &&
               PCOW_SX_SIZE == PCOW_SX_VM_CLOCK_NSEC + 8,
               "snapshot record extension");

/* Snapshot flags (record offset 56) */
#define PCOW_SNAP_F_HAS_CLONES  (1ull << 0) /* images use it as their base */

#define PCOW_FMT_NONE           0
#define PCOW_FMT_PCOW           1
#define PCOW_FMT_RAW            2

/* An L2 entry: PCOW_L2_WORDS little-endian u64 words (spec, Mapping) */
#define PCOW_W_MAP              0   /* file offset | flags */
#define PCOW_W_COPIED           1   /* PARTIAL: bitmap of copied COW units */
#define PCOW_W_SOURCE           2   /* PARTIAL: map word of the other units */
#define PCOW_W_RESERVED         3   /* zero */
#define PCOW_L2_WORDS           4
_Static_assert(PCOW_L2_WORDS * 8 == PCOW_L2_ENTRY_SIZE, "L2 entry size");

/* Flags of an L2 map word */
#define PCOW_F_PRESENT          (1ull << 0)
#define PCOW_F_WRITABLE         (1ull << 1)
#define PCOW_F_PARTIAL          (1ull << 2)
#define PCOW_F_ALL              (PCOW_F_PRESENT | PCOW_F_WRITABLE | \
                                 PCOW_F_PARTIAL)
#define PCOW_HIGH_RESERVED      (0xffull << 56)

/*
 * What a map word stands for: the table of map states in
 * docs/interop/pcow-spec.rst (Mapping: L1 and L2 tables).  By the flags
 * alone; whether the word is valid at all is the walk's to say.
 */
typedef enum PcowEntryKind {
    PCOW_ENTRY_HOLE,            /* 0: the base (below the limit) or zeros */
    PCOW_ENTRY_FROZEN,          /* PRESENT: shared, a write copies it */
    PCOW_ENTRY_OWNED,           /* PRESENT|WRITABLE: ours, read-write */
    PCOW_ENTRY_PARTIAL,         /* PRESENT|WRITABLE|PARTIAL: copied units
                                   read-write, the rest from the source */
    PCOW_ENTRY_PARTIAL_FROZEN,  /* PRESENT|PARTIAL: as above, frozen */
} PcowEntryKind;

/* Async-signal-safe; no lock needed (pure) */
static inline PcowEntryKind pcow_entry_kind(uint64_t map)
{
    if (!(map & PCOW_F_PRESENT)) {
        return PCOW_ENTRY_HOLE;
    }
    if (map & PCOW_F_PARTIAL) {
        return map & PCOW_F_WRITABLE ? PCOW_ENTRY_PARTIAL
                                     : PCOW_ENTRY_PARTIAL_FROZEN;
    }
    return map & PCOW_F_WRITABLE ? PCOW_ENTRY_OWNED : PCOW_ENTRY_FROZEN;
}

/* Has the entry a copied bitmap and a source (words 1 and 2)? */
static inline bool pcow_entry_is_partial(PcowEntryKind k)
{
    return k == PCOW_ENTRY_PARTIAL || k == PCOW_ENTRY_PARTIAL_FROZEN;
}

/* Does the active layer own (some of) the cluster: WRITABLE? */
static inline bool pcow_entry_is_ours(PcowEntryKind k)
{
    return k == PCOW_ENTRY_OWNED || k == PCOW_ENTRY_PARTIAL;
}

/* Known feature bits */
#define PCOW_INCOMPAT_BACKING_LIMIT (1ull << 0) /* backing_limit fields */
#define PCOW_INCOMPAT_VM_STATE  (1ull << 1) /* snapshots with VM state */
#define PCOW_INCOMPAT_BACKING_SNAPSHOT (1ull << 2) /* base is a snapshot */
#define PCOW_INCOMPAT_KNOWN     (PCOW_INCOMPAT_BACKING_LIMIT | \
                                 PCOW_INCOMPAT_VM_STATE | \
                                 PCOW_INCOMPAT_BACKING_SNAPSHOT)
#define PCOW_AUTOCLEAR_KNOWN    0ull

/* Reserve ring capacity (clusters made ready ahead of faults) */
#define PCOW_RING_CAP           4096
/* Clusters a reserve miss makes ready while commits are deferred */
#define PCOW_DEFER_BATCH        32

/* Internal open flags, above the public ones */
#define PCOW_OPEN_CHECK         (1u << 16)  /* count errors, do not fail */
#define PCOW_OPEN_BASE          (1u << 17)  /* opened as someone's base */
#define PCOW_OPEN_FIX_SHORT     (1u << 18)  /* check -r all: extend a file
                                               shorter than its frontier */

/*
 * How an image's persists are made durable, chosen once at open by
 * pcow_persist_init() (persist.c describes each).  0 for an image that
 * writes nothing but whole-file barriers (create's scratch image).
 */
typedef enum PcowSync {
    PCOW_SYNC_MSYNC_TEMP = 0,   /* page cache, msync of a temporary map */
    PCOW_SYNC_MSYNC,            /* page cache, msync through a window */
    PCOW_SYNC_PMEM,             /* DAX + MAP_SYNC: CPU flush + fence */
    PCOW_SYNC_TMPFS,            /* tmpfs: the page cache is the medium */
} PcowSync;

typedef struct PcowHeader {
    uint32_t version;
    uint32_t header_length;
    uint64_t generation;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t cluster_bits;
    uint32_t cow_unit_bits;
    uint64_t virtual_size;
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint32_t snapshots_size;
    uint32_t snapshots_crc32c;
    uint64_t next_snapshot_id;
    uint32_t backing_format;
    uint32_t backing_name_length;
    uint64_t backing_limit;     /* 0: none; else base shows only below it */
    uint64_t backing_snapshot_id; /* 0: the base's active layer; else the
                                     base's snapshot of that id (a clone) */
    char backing_name[PCOW_MAX_BACKING_NAME + 1];
} PcowHeader;

typedef struct PcowSnapshot {
    uint64_t id;
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint64_t virtual_size;
    uint64_t date_sec;
    uint32_t date_nsec;
    uint64_t backing_limit;     /* the header's at creation */
    uint64_t vm_state_offset;   /* 0: no VM state */
    uint64_t vm_state_size;
    uint64_t vm_clock_nsec;
    uint64_t flags;             /* PCOW_SNAP_F_*; unknown bits kept */
    bool vm_state_bad;          /* the walk found its clusters unusable */
    char name[PCOW_MAX_SNAPSHOT_NAME + 1];
} PcowSnapshot;

/* Identity of a file in a backing chain, for loop detection */
typedef struct PcowChain {
    dev_t dev[PCOW_MAX_CHAIN_DEPTH + 2];
    ino_t ino[PCOW_MAX_CHAIN_DEPTH + 2];
    unsigned n;
} PcowChain;

/* Collected problems of a table walk (open fails on the first; check counts) */
typedef struct PcowProblems {
    bool collect;           /* keep going after a problem */
    uint64_t count;
    int first_code;
    char first[512];
} PcowProblems;

struct pcow_image {
    char *filename;         /* as given, used in messages */
    char *dirname;          /* for resolving the backing name */
    int fd;
    unsigned flags;
    bool read_only;
    bool was_dirty;
    pcow_persist_hook hook;
    void *hook_opaque;

    PcowHeader hdr;
    int cur_slot;           /* 0: A, 1: B */
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint32_t cow_unit_bits;
    uint32_t units;         /* COW units per cluster */
    uint64_t units_mask;
    uint32_t l2_entries;
    uint64_t l2_words;      /* 64-bit words per L2 table */

    /* persistence (persist.c), chosen once at open */
    pcow_persist_method method; /* as reported: PMEM or MSYNC */
    PcowSync sync;          /* how persists are made durable */
    uint64_t page_size;
    uint8_t *c0;            /* cluster 0 (first page) mapped, RDWR only */
    void *sync_win;         /* PCOW_SYNC_MSYNC: PROT_NONE shared window */
    uint64_t sync_win_len;
    uint64_t frontier_ro;   /* frontier as read, when c0 is not mapped */
    uint64_t check_end;     /* check mode: end of the whole clusters in the
                               file, to tell a low frontier from garbage */
    uint64_t short_size;    /* check -r all: the file size when open found
                               it below the frontier and extended it */
    bool frontier_wild;     /* check mode: frontier past the file and past
                               anything the image could use (garbage) */
    uint64_t in_use_token;  /* this session's, 0 before P-OPEN-INUSE */
    /*
     * State stamps (handover.c): the hot line's stamp and whether in_use
     * was 0 when this handle opened the image; keep_stamp: a release or
     * clean close leaves open_stamp, not the token; released: handed over
     * (pcow_release), so nothing may write until pcow_reacquire, which
     * expects left_stamp, what the release stored, and no other change.
     */
    uint64_t open_stamp;
    bool open_clean;
    bool keep_stamp;
    bool released;          /* __atomic: fault handlers read it */
    uint64_t left_stamp;
    /*
     * This session may have changed what a reader sees: a table word or
     * data written, or a writable extent handed out (the Image Monitor
     * writes through its mappings).  Open bookkeeping and recovery do not
     * count; a session that opened a dirty image or was taken back does.
     */
    bool touched;           /* __atomic: set from fault handlers too */
    /*
     * This session wrote a table word or data through libpcow (a subset
     * of touched): a kept stamp would then describe another image.
     */
    bool wrote;             /* __atomic */

    /* active L1/L2: MAP_SHARED mappings (RDWR) or private copies (RO) */
    uint64_t *l1;
    size_t l1_len;          /* bytes mapped/allocated for l1 */
    uint64_t **l2;          /* l1_size pointers, preallocated at open */
    uint32_t l2_count;      /* entries of l2 (l1_size when loaded) */
    bool tables_mapped;

    /* snapshots (parsed table) */
    PcowSnapshot *snaps;

    /* allocation: bitmap of free clusters below the frontier */
    uint32_t lock;          /* pcow_lock: 0 free, 1 held, 2 contended */
    uint64_t *free_bm;      /* anonymous mapping (grown in signal context) */
    uint64_t free_bm_len;   /* bytes mapped */
    uint64_t free_bm_bits;
    uint64_t free_hint;
    uint64_t free_count;
    uint64_t alloc_end;     /* next never-used cluster offset */
    uint64_t *ring;
    uint64_t *inflight;     /* picked by a reservation, not yet in ring */
    uint32_t inflight_n;
    uint32_t ring_head;
    uint32_t ring_count;
    /*
     * pcow_defer_commits(): expansions store their commit without
     * persisting it (read and changed under the lock).
     */
    bool defer_commits;
    int defer_error;        /* its closing barrier failed: -errno, sticky */
    /*
     * The first barrier or sync that failed (-errno, __atomic, sticky):
     * after a write-back error a retried fdatasync() returns 0 with the
     * pages gone, so close must not mark the image clean (persist.c).
     */
    int persist_error;

    /* backing chain */
    pcow_image *backing;
    int backing_raw_fd;
    uint64_t backing_raw_size;
    char backing_path[4096];
    unsigned depth;
    /* A clone's base: the snapshot it shows (snapshot.c), else 0 */
    uint64_t view_snapshot_id;
    char view_snapshot_name[PCOW_MAX_SNAPSHOT_NAME + 1];
};

/* Little-endian helpers */
static inline uint64_t pcow_le64(uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return v;
#else
    return __builtin_bswap64(v);
#endif
}

static inline uint32_t pcow_ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t pcow_ld64(const uint8_t *p)
{
    return (uint64_t)pcow_ld32(p) | (uint64_t)pcow_ld32(p + 4) << 32;
}

/*
 * Does @buf, the first @len bytes of a file, hold the magic of either
 * header slot?  PCOW_PROBE_BYTES are enough.  Also used by the patched
 * QEMU file driver (patches/0012) to keep qemu-img & co off pcow images.
 */
#define PCOW_PROBE_BYTES        (PCOW_SLOT_B + 4)

static inline bool pcow_probe_buf(const uint8_t *buf, size_t len)
{
    return (len >= 4 && pcow_ld32(buf) == PCOW_MAGIC) ||
           (len >= PCOW_PROBE_BYTES &&
            pcow_ld32(buf + PCOW_SLOT_B) == PCOW_MAGIC);
}

static inline void pcow_st32(uint8_t *p, uint32_t v)
{
    p[0] = v;
    p[1] = v >> 8;
    p[2] = v >> 16;
    p[3] = v >> 24;
}

static inline void pcow_st64(uint8_t *p, uint64_t v)
{
    pcow_st32(p, v);
    pcow_st32(p + 4, v >> 32);
}

/* File offset of word @word of the L2 entry of virtual cluster @v */
static inline uint64_t pcow_entry_file_off(pcow_image *img, uint64_t v,
                                           unsigned word)
{
    uint64_t i = v / img->l2_entries;

    return (pcow_le64(img->l1[i]) & ~(img->cluster_size - 1)) +
           (v % img->l2_entries) * PCOW_L2_ENTRY_SIZE + word * 8;
}

/* Table words live in shared mappings: load them atomically */
static inline uint64_t pcow_word(const uint64_t *p)
{
    return pcow_le64(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

/* All @len bytes at @p are zero; pure, signal-safe (memcmp only) */
static inline bool pcow_is_zero(const void *p, size_t len)
{
    const uint8_t *b = p;

    return len == 0 || (b[0] == 0 && memcmp(b, b + 1, len - 1) == 0);
}

static inline uint64_t pcow_round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static inline uint64_t pcow_div_round_up(uint64_t v, uint64_t d)
{
    return v / d + (v % d != 0);
}

/*
 * Function contracts, one line each (cf. qcow2.h).  Tags:
 *   durable   what it changed is on the medium when it returns 0 (a
 *             persist point of the spec, or a barrier); "not durable":
 *             until the next barrier
 *   sig-safe  async-signal-safe: no allocation, no stdio, no lock but the
 *             image spinlock; may run in the monitor's SIGSEGV handler
 *   lock      takes the image spinlock itself (pcow_lock)
 *   locked    the caller holds the image spinlock
 *   -         neither: single-threaded use (open, close, structural
 *             operations, which the caller serialises)
 *   pure      no I/O and no shared state: it reads and writes only its
 *             arguments (and fills its pcow_error, if it has one)
 * Errors are negative errnos; functions with a pcow_error fill it too.
 */

/* util.c */
void pcow_lock(pcow_image *img);            /* sig-safe; spins, futex */
void pcow_unlock(pcow_image *img);          /* sig-safe */
/* No error in @err (if not NULL): code 0, PCOW_ERR_NONE, empty.  sig-safe */
void pcow_error_clear(pcow_error *err);
/* Set err->kind to @kind when @ret is an error; returns @ret.  sig-safe */
int pcow_error_mark(pcow_error *err, pcow_error_kind kind, int ret);
/* pcow_set_error() with the image's name first, as every message has;
 * err->what past it unless @img is a base (depth > 0) */
int pcow_img_error(pcow_image *img, pcow_error *err, int code,
                   const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* @err (if @ret < 0) is about another file than the caller gave, a base:
 * what and why 0.  Returns @ret.  sig-safe */
static inline int pcow_error_other_file(pcow_error *err, int ret)
{
    if (err && ret < 0) {
        err->what = err->why = 0;
    }
    return ret;
}
/* Same for "FILE: @op: CAUSE": err->why marks the cause, so that a front
 * end stating the operation itself states it once */
int pcow_img_op_error(pcow_image *img, pcow_error *err, int code,
                      const char *op, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Count a problem of a walk, keep the first message.  Not sig-safe */
void pcow_problem(PcowProblems *pr, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
uint64_t pcow_now_ns(void);                 /* sig-safe: CLOCK_MONOTONIC */
/* A fresh non-zero token (getrandom, else time and pid).  - */
uint64_t pcow_new_token(void);
/* 0 if @img may be written: -EROFS read-only, -EBADF released.  sig-safe */
int pcow_writable(pcow_image *img);
/* pcow_writable() with the error message in @err.  - */
int pcow_write_check(pcow_image *img, pcow_error *err);
/*
 * Open @path (@oflags O_RDONLY or O_RDWR) for its data without ever
 * blocking, accepting only a regular file or, with @blk_ok, a block device.
 * *@size is the file's size (a block device's real size).  Returns the fd,
 * or a negative errno with the reason (one phrase) in @why.
 */
int pcow_open_data(const char *path, int oflags, bool blk_ok,
                   struct stat *st, uint64_t *size, char *why,
                   size_t whylen);

/* header.c: codec, CRC, header commit, hot line */
uint32_t pcow_crc32c(uint32_t crc, const void *buf, size_t len); /* sig-safe */
uint64_t pcow_l1_size_for(uint64_t virtual_size, uint32_t cluster_bits);
/* Encode @h into a PCOW_SLOT_SIZE slot, CRC included.  Pure */
void pcow_header_encode(const PcowHeader *h, uint8_t *slot);
/* Pick and check the current slot, set the geometry.  - */
int pcow_header_read(pcow_image *img, uint64_t file_size, pcow_error *err);
/* The current slot's header and the hot line as the file holds them now
   (pread; @img unchanged).  - */
int pcow_header_reread(pcow_image *img, PcowHeader *h,
                       uint8_t hot[PCOW_HOT_SIZE], pcow_error *err);
/* Could a header commit happen (generation not at its maximum)?  Pure */
int pcow_header_can_commit(pcow_image *img, pcow_error *err);
/* Write @h, generation + 1, to the other slot.  durable (P-xxx-COMMIT); - */
int pcow_header_commit(pcow_image *img, const PcowHeader *h,
                       pcow_error *err);
/* Set @h's backing limit and the feature bit that goes with it.  Pure */
void pcow_header_set_limit(pcow_image *img, PcowHeader *h, uint64_t limit);
uint64_t pcow_frontier(pcow_image *img);    /* sig-safe: hot line load */
uint64_t pcow_valid_end(pcow_image *img);   /* sig-safe: where entries
                                               may point */
/* Does the file still reach the frontier (fstat)?  locked */
int pcow_check_size_locked(pcow_image *img, pcow_error *err);
bool pcow_probe_fd(int fd);                 /* reads 3 KiB; - */

/* image.c: create, open, close, info */
/*
 * Open @path as an image (@flags: public and internal PCOW_OPEN_*;
 * @expect_stamp with PCOW_OPEN_EXPECT_STAMP); a base joins @chain at
 * @depth; @pr collects problems in check mode.  -
 */
int pcow_open_internal(const char *path, unsigned flags,
                       pcow_persist_hook hook, void *opaque,
                       uint64_t expect_stamp, PcowChain *chain,
                       unsigned depth,
                       PcowProblems *pr, pcow_image **out,
                       pcow_error *err);
/*
 * pcow_check() with a persistence hook on the image it opens (the crash
 * harness records a repair's writes with it).  durable
 */
int pcow_check_hooked(const char *path, unsigned repair, bool force_share,
                      pcow_persist_hook hook, void *opaque,
                      pcow_check_result *res, pcow_error *err);
/* Release everything, closing the base chain; no persist.  - */
void pcow_image_free(pcow_image *img);
/* The image's OFD lock (none with PCOW_OPEN_NO_LOCK): -EBUSY if another
   process holds it.  - */
int pcow_take_lock(pcow_image *img, pcow_error *err);
void pcow_drop_lock(pcow_image *img);       /* F_UNLCK; - */
/* P-OPEN-INUSE: a new session token stored as in_use.  durable; - */
int pcow_start_session(pcow_image *img, pcow_error *err);
/*
 * The durable part of close and release: file size check, reserve
 * drained, P-CLOSE-TRIM, barrier, P-CLOSE-CLEAN (stamp, then in_use 0).
 * On failure the image stays in use (and locked).  durable; -
 */
int pcow_close_clean(pcow_image *img, pcow_error *err);

/* The stamp a release or clean close leaves now.  Pure */
uint64_t pcow_stamp_to_leave(pcow_image *img);

/* handover.c: state stamps, release and reacquire (the public calls) */

/* This session may have changed what a reader sees.  sig-safe */
static inline void pcow_mark_touched(pcow_image *img)
{
    __atomic_store_n(&img->touched, true, __ATOMIC_RELAXED);
}

/* This session wrote data or a table word.  sig-safe */
static inline void pcow_mark_wrote(pcow_image *img)
{
    pcow_mark_touched(img);
    __atomic_store_n(&img->wrote, true, __ATOMIC_RELAXED);
}

/* persist.c: the only code that writes image files; all report to the hook */
int pcow_persist_init(pcow_image *img);     /* choose img->sync once; - */
void pcow_persist_fini(pcow_image *img);    /* - */
/* storage.c: a successful MAP_SYNC mapping means CPU flushes persist */
bool pcow_map_sync_means_pmem(void);
int pcow_persist_pwrite(pcow_image *img, uint64_t off, const void *buf,
                        uint64_t len);      /* not durable; sig-safe */
int pcow_persist_barrier(pcow_image *img);  /* durable: fdatasync; sig-safe */
/* msync(MS_SYNC) of a caller's mapping; a failure is kept.  Not sig-safe */
int pcow_persist_msync(pcow_image *img, void *addr, uint64_t len);
/* The range written by pwrite: durable, nothing else; sig-safe */
int pcow_persist_sync_range(pcow_image *img, uint64_t off, uint64_t len);
/* One aligned word of a shared table mapping: durable; sig-safe */
int pcow_persist_store64(pcow_image *img, uint64_t *p, uint64_t file_off,
                         uint64_t val);
/* The same, not durable (a later pcow_persist_mapped); sig-safe */
void pcow_persist_store64_nosync(pcow_image *img, uint64_t *p,
                                 uint64_t file_off, uint64_t val);
/* [addr, addr + len) of a shared mapping: durable; sig-safe */
int pcow_persist_mapped(pcow_image *img, void *addr, uint64_t file_off,
                        uint64_t len);
/* Blocks for [off, off + len), reading zeros: not durable; sig-safe */
int pcow_persist_allocate(pcow_image *img, uint64_t off, uint64_t len);
/* Deallocate, reading zeros: not durable; sig-safe */
int pcow_persist_punch(pcow_image *img, uint64_t off, uint64_t len);
int pcow_persist_truncate(pcow_image *img, uint64_t size);  /* not durable */
/* A hot line word (frontier, in-use): durable; sig-safe */
int pcow_persist_hot_store(pcow_image *img, unsigned hot_off, uint64_t val);
/* pcow_persist_hot_store() in two halves: the store (not durable), and the
   persist of what the word holds now (a sync of its page); sig-safe */
void pcow_persist_hot_set(pcow_image *img, unsigned hot_off, uint64_t val);
int pcow_persist_hot_sync(pcow_image *img, unsigned hot_off);
/* Shared read-write mapping of a table range; sig-safe (mmap) */
void *pcow_persist_map(pcow_image *img, uint64_t off, uint64_t len);
void pcow_persist_unmap(pcow_image *img, void *addr, uint64_t len);

/* mapping.c: table mappings, extents, reads through the chain */
/* Map the active L1 and every L2 table (read-only: copies).  - */
int pcow_tables_load(pcow_image *img, PcowProblems *pr);
void pcow_tables_unload(pcow_image *img);   /* - */
/* Map the L2 table at @off for L1 index @l1_idx (read-write).  sig-safe */
int pcow_map_l2_shared(pcow_image *img, uint32_t l1_idx, uint64_t off);
/* The active entry of @vcluster, NULL without an L2 table.  sig-safe */
uint64_t *pcow_l2_entry(pcow_image *img, uint64_t vcluster);
int pcow_extent_locked(pcow_image *img, uint64_t offset, uint64_t max_len,
                       pcow_extent *ext);   /* locked; sig-safe */
/* Bytes of [off, off + len) where the base may show.  Pure; sig-safe */
uint64_t pcow_below_limit(pcow_image *img, uint64_t off, uint64_t len);
/* What the layers below show at @offset (pread).  sig-safe */
int pcow_read_below(pcow_image *img, uint64_t offset, void *buf,
                    uint64_t len);
/* The image's own view, extent by extent.  lock */
int pcow_read_view(pcow_image *img, uint64_t off, void *buf, uint64_t len);
/* pread of a table, zeros past EOF.  sig-safe */
int pcow_read_table(pcow_image *img, uint64_t off, void *buf, uint64_t len);

/* walk.c: the reference walk and validation */
#define PCOW_C_KIND      0x03
#define PCOW_C_FREE      0x00
#define PCOW_C_META      0x01
#define PCOW_C_DATA      0x02
#define PCOW_C_ACTIVE    0x04    /* mapped by the active layer */
#define PCOW_C_SNAP      0x08    /* referenced by a snapshot (map/source) */
#define PCOW_C_SOURCE    0x10    /* referenced by an active source word */
#define PCOW_C_SEEN      0x20    /* walk-local: seen in the current table */
#define PCOW_C_RING      0x40    /* in the reserve ring */

typedef struct PcowWalk {
    uint8_t *cls;               /* one byte per cluster below frontier */
    uint64_t nclusters;
    uint64_t data_clusters;
    uint64_t active_clusters;
    uint64_t meta_clusters;     /* tables (VM state not included) */
    uint64_t vm_state_clusters;
    uint64_t fragmented;
    uint64_t fixed;             /* entries repaired */
    uint64_t stale;             /* active entries beyond the virtual size */
} PcowWalk;

/* Classify every cluster, validate every entry; @repair clears bad ones
   (durable).  Allocates; locked or single-threaded */
int pcow_walk(pcow_image *img, PcowWalk *w, PcowProblems *pr, bool repair);
void pcow_walk_free(PcowWalk *w);
/* End of the highest cluster in use or reserved.  Pure */
uint64_t pcow_walk_used_end(pcow_image *img, const PcowWalk *w);

/* alloc.c: free bitmap, reserve ring, allocation, recovery */
/* Free bitmap and ring from a walk.  Allocates; - */
int pcow_alloc_init(pcow_image *img, const PcowWalk *w);
void pcow_alloc_fini(pcow_image *img);      /* - */
/* Normalise WRITABLE, free and punch the unreferenced, lower the frontier.
   durable; lock */
int pcow_alloc_recover(pcow_image *img, bool punch_free, pcow_error *err);
/* check -r all: raise a too low frontier to @end.  durable; lock */
int pcow_alloc_raise_frontier(pcow_image *img, uint64_t end);
/* check -r all: set a garbage frontier to @end.  durable; lock */
int pcow_alloc_set_frontier(pcow_image *img, uint64_t end);
/* @n contiguous zeroed clusters.  durable (P-RESERVE-*); lock */
int pcow_alloc_clusters(pcow_image *img, uint64_t n, uint64_t *off);
/* One zeroed cluster, from the reserve first.  durable; lock */
int pcow_alloc_one(pcow_image *img, uint64_t *off);
/* The same, for the runtime: durable; locked; sig-safe */
int pcow_take_locked(pcow_image *img, uint64_t *off);
/* Back to the front of the reserve.  locked; sig-safe */
void pcow_untake_locked(pcow_image *img, uint64_t off);
/* Onto the free list (no punch).  locked; sig-safe (mremap) */
void pcow_free_clusters_locked(pcow_image *img, uint64_t off, uint64_t n);
/* Punch and free.  Not durable; lock */
int pcow_free_clusters(pcow_image *img, uint64_t off, uint64_t n);
int pcow_ring_drain(pcow_image *img);       /* forget the reserve; lock */
/* Clear the active entries at or beyond @vsize.  durable; lock */
int pcow_clear_beyond(pcow_image *img, uint64_t vsize, uint64_t *cleared);
/* pcow_clear_beyond, then pcow_alloc_recover (if any cleared, or
   @always).  durable; lock */
int pcow_reclaim_beyond(pcow_image *img, uint64_t vsize, bool punch_all,
                        bool always, pcow_error *err);

/* runtime.c: expansion and COW (the public pcow_expand_cluster/pcow_cow) */
/* A new empty L2 table for L1 index @l1_idx.  durable if @sync; locked;
   sig-safe */
int pcow_new_l2_locked(pcow_image *img, uint32_t l1_idx, bool sync);
/* pcow_expand_cluster(), durable only with @sync.  lock; sig-safe */
int pcow_expand_internal(pcow_image *img, uint64_t vcluster,
                         uint64_t *file_offset, bool sync);
/* Store an active entry's map word.  durable; locked; sig-safe */
int pcow_set_map_locked(pcow_image *img, uint64_t vcluster, uint64_t map);

/* snapshot.c */
/* Parse and check the snapshot table.  Allocates; - */
int pcow_snapshots_load(pcow_image *img, PcowProblems *pr);
/*
 * Make @img (a base, read-only) show its snapshot @id instead of its
 * active layer: that snapshot's tables, virtual size and backing limit.
 * -ENOENT naming @owner, @img and the id.  -
 */
int pcow_snapshot_view(pcow_image *img, uint64_t id, const char *owner,
                       pcow_error *err);
/* Set (@on) or clear HAS_CLONES of snapshot @k.  durable (P-CLONE-*); - */
int pcow_snapshot_set_clones(pcow_image *img, uint32_t k, bool on,
                             pcow_error *err);
/*
 * The active layer becomes the one @h describes (a revert, a clone reset:
 * its new L1 is durable already): commit @h, reload the tables, free the
 * old active tables and what only they referenced.  durable (the caller's
 * P-xxx-COMMIT); -
 */
int pcow_switch_active(pcow_image *img, const PcowHeader *h,
                       pcow_error *err);
/* Index of the snapshot named @name_or_id, else of that id; -1.  Pure */
int pcow_snapshot_find(pcow_image *img, const char *name_or_id);
/* Report bad or duplicate ids; returns how many.  Pure */
uint64_t pcow_snapshot_ids_check(pcow_image *img, PcowProblems *pr);
/*
 * check -r all: renumber bad ids, drop the VM state the walk found
 * unusable (vm_state_bad).  durable (header commit); -
 */
int pcow_snapshot_ids_repair(pcow_image *img, pcow_error *err);
/* Does any snapshot's VM state need that repair?  Pure */
bool pcow_snapshot_vm_state_bad(pcow_image *img);
/*
 * pcow_snapshot_create() without the rule for new names (length only):
 * the tests make images "made elsewhere" with it, whose names hold
 * control characters that readers must escape.  durable; -
 */
int pcow_snapshot_create_any_name(pcow_image *img, const char *name,
                                  uint64_t *id, pcow_error *err);

/* backing.c: the chain below an image */
void pcow_chain_push(PcowChain *c, const struct stat *st);  /* pure */
/* A chain holding @img itself (fstat), to check a base against.  - */
int pcow_chain_start(pcow_image *img, PcowChain *c, pcow_error *err);
/* Open the base (an image, or a raw file) under a shared lock.  - */
int pcow_backing_open(pcow_image *img, PcowChain *chain, pcow_error *err);
/* Can @name (relative to @dir) be @owner's base: kind, format, loops?  - */
int pcow_check_base(const char *owner, const char *dir, const char *name,
                    uint32_t *fmt, bool missing_ok, PcowChain *chain,
                    uint64_t *size, pcow_error *err);
/* The virtual size of snapshot @id of base @name (relative to @dir).  - */
int pcow_base_snapshot_size(const char *owner, const char *dir,
                            const char *name, uint64_t id, uint64_t *size,
                            pcow_error *err);
/* clone.c: is a clone's snapshot in its base?  1, 0 (no: @err says so),
   or -errno when the base does not open.  - */
int pcow_base_snapshot_lookup(pcow_image *img, char *name, size_t len,
                              pcow_error *err);
/* Close the base chain; locked if the image is shared with faults */
void pcow_backing_close(pcow_image *img);
/* @name relative to @dir (absolute names as they are).  Pure */
int pcow_resolve_backing(const char *dir, const char *name, char *out,
                         size_t outlen);

#endif /* PCOW_INT_H */
