/*
 * libpcow internal definitions, shared by the modules of block/pcow/
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_INT_H
#define PCOW_INT_H

#include <stdatomic.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "pcow/pcow.h"

/* On-disk layout (docs/pcow.rst) */
#define PCOW_MAGIC              0x574f4350u /* bytes "PCOW" read as LE u32 */
#define PCOW_SLOT_SIZE          1536
#define PCOW_SLOT_A             0
#define PCOW_SLOT_B             1536
#define PCOW_HOT_OFFSET         3072
#define PCOW_HOT_FRONTIER       3072
#define PCOW_HOT_IN_USE         3080
#define PCOW_HOT_SIZE           64
#define PCOW_HEADER_FIXED       128
#define PCOW_MAX_L1_SIZE        (1u << 22)
#define PCOW_L2_ENTRY_SIZE      32
#define PCOW_SNAP_FIXED         64
#define PCOW_MAX_SNAP_TABLE     (64u << 20)

#define PCOW_FMT_NONE           0
#define PCOW_FMT_PCOW           1
#define PCOW_FMT_RAW            2

/* Flags of an L2 map word */
#define PCOW_F_PRESENT          (1ull << 0)
#define PCOW_F_WRITABLE         (1ull << 1)
#define PCOW_F_PARTIAL          (1ull << 2)
#define PCOW_F_ALL              (PCOW_F_PRESENT | PCOW_F_WRITABLE | \
                                 PCOW_F_PARTIAL)
#define PCOW_HIGH_RESERVED      (0xffull << 56)

/* Known feature bits */
#define PCOW_INCOMPAT_BACKING_LIMIT (1ull << 0) /* backing_limit fields */
#define PCOW_INCOMPAT_KNOWN     PCOW_INCOMPAT_BACKING_LIMIT
#define PCOW_AUTOCLEAR_KNOWN    0ull

/* Reserve ring capacity (clusters made ready ahead of faults) */
#define PCOW_RING_CAP           4096

/* Internal open flags, above the public ones */
#define PCOW_OPEN_CHECK         (1u << 16)  /* count errors, do not fail */
#define PCOW_OPEN_BASE          (1u << 17)  /* opened as someone's base */
#define PCOW_OPEN_FIX_SHORT     (1u << 18)  /* check -r all: extend a file
                                               shorter than its frontier */

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

    /* persistence */
    pcow_persist_method method;
    uint64_t page_size;
    uint8_t *c0;            /* cluster 0 (first page) mapped, RDWR only */
    bool volatile_fs;       /* tmpfs: the page cache is the medium */
    void *sync_win;         /* PROT_NONE MAP_SHARED window for msync */
    uint64_t sync_win_len;
    uint64_t frontier_ro;   /* frontier as read, when c0 is not mapped */
    uint64_t check_end;     /* check mode: end of the whole clusters in the
                               file, to tell a low frontier from garbage */
    uint64_t short_size;    /* check -r all: the file size when open found
                               it below the frontier and extended it */
    bool frontier_wild;     /* check mode: frontier past the file and past
                               anything the image could use (garbage) */
    uint64_t in_use_token;

    /* active L1/L2: MAP_SHARED mappings (RDWR) or private copies (RO) */
    uint64_t *l1;
    size_t l1_len;          /* bytes mapped/allocated for l1 */
    uint64_t **l2;          /* l1_size pointers, preallocated at open */
    uint32_t l2_count;      /* entries of l2 (l1_size when loaded) */
    bool tables_mapped;

    /* snapshots (parsed table) */
    PcowSnapshot *snaps;

    /* allocation: bitmap of free clusters below the frontier */
    atomic_flag lock;
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

    /* backing chain */
    pcow_image *backing;
    int backing_raw_fd;
    uint64_t backing_raw_size;
    char backing_path[4096];
    unsigned depth;
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

static inline uint64_t pcow_round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static inline uint64_t pcow_div_round_up(uint64_t v, uint64_t d)
{
    return v / d + (v % d != 0);
}

/* Spinlock: async-signal-safe mutual exclusion of runtime operations */
void pcow_lock(pcow_image *img);
void pcow_unlock(pcow_image *img);

/* util.c */
/* Set err->kind to @kind when @ret is an error; returns @ret */
int pcow_error_mark(pcow_error *err, pcow_error_kind kind, int ret);
int pcow_img_error(pcow_image *img, pcow_error *err, int code,
                   const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void pcow_problem(PcowProblems *pr, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
uint64_t pcow_now_ns(void);
/*
 * pcow_snapshot_create() without the rule for new names (length only):
 * the tests make images "made elsewhere" with it, whose names hold
 * control characters that readers must escape.
 */
int pcow_snapshot_create_any_name(pcow_image *img, const char *name,
                                  uint64_t *id, pcow_error *err);
/*
 * Open @path (@oflags O_RDONLY or O_RDWR) for its data without ever
 * blocking, accepting only a regular file or, with @blk_ok, a block device.
 * *@size is the file's size (a block device's real size).  Returns the fd,
 * or a negative errno with the reason (one phrase) in @why.
 */
int pcow_open_data(const char *path, int oflags, bool blk_ok,
                   struct stat *st, uint64_t *size, char *why,
                   size_t whylen);

/* header.c */
bool pcow_probe_fd(int fd);
uint32_t pcow_crc32c(uint32_t crc, const void *buf, size_t len);
void pcow_header_encode(const PcowHeader *h, uint8_t *slot);
int pcow_header_can_commit(pcow_image *img, pcow_error *err);
int pcow_header_commit(pcow_image *img, const PcowHeader *h,
                       pcow_error *err);
uint64_t pcow_l1_size_for(uint64_t virtual_size, uint32_t cluster_bits);
uint64_t pcow_frontier(pcow_image *img);
uint64_t pcow_valid_end(pcow_image *img);
int pcow_open_internal(const char *path, unsigned flags,
                       pcow_persist_hook hook, void *opaque,
                       PcowChain *chain, unsigned depth,
                       PcowProblems *pr, pcow_image **out,
                       pcow_error *err);
void pcow_image_free(pcow_image *img);

/* persist.c: the only code that writes image files */
int pcow_persist_init(pcow_image *img);
/* storage.c: a successful MAP_SYNC mapping means CPU flushes persist */
bool pcow_map_sync_means_pmem(void);
void pcow_persist_fini(pcow_image *img);
int pcow_persist_pwrite(pcow_image *img, uint64_t off, const void *buf,
                        uint64_t len);
int pcow_persist_barrier(pcow_image *img);
int pcow_persist_sync_range(pcow_image *img, uint64_t off, uint64_t len);
int pcow_persist_store64(pcow_image *img, uint64_t *p, uint64_t file_off,
                         uint64_t val);
void pcow_persist_store64_nosync(pcow_image *img, uint64_t *p,
                                 uint64_t file_off, uint64_t val);
int pcow_persist_mapped(pcow_image *img, void *addr, uint64_t file_off,
                        uint64_t len);
int pcow_persist_allocate(pcow_image *img, uint64_t off, uint64_t len);
int pcow_persist_punch(pcow_image *img, uint64_t off, uint64_t len);
int pcow_persist_truncate(pcow_image *img, uint64_t size);
int pcow_persist_hot_store(pcow_image *img, unsigned hot_off, uint64_t val);
void *pcow_persist_map(pcow_image *img, uint64_t off, uint64_t len);
void pcow_persist_unmap(pcow_image *img, void *addr, uint64_t len);

/* mapping.c */
int pcow_tables_load(pcow_image *img, PcowProblems *pr);
void pcow_tables_unload(pcow_image *img);
int pcow_map_l2(pcow_image *img, uint32_t l1_idx, uint64_t off);
uint64_t *pcow_l2_entry(pcow_image *img, uint64_t vcluster);
int pcow_extent_locked(pcow_image *img, uint64_t offset, uint64_t max_len,
                       pcow_extent *ext);
uint64_t pcow_below_limit(pcow_image *img, uint64_t off, uint64_t len);
int pcow_read_below(pcow_image *img, uint64_t offset, void *buf,
                    uint64_t len);
int pcow_read_view(pcow_image *img, uint64_t off, void *buf, uint64_t len);
int pcow_read_table(pcow_image *img, uint64_t off, void *buf, uint64_t len);

/* alloc.c */
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
    uint64_t meta_clusters;
    uint64_t fragmented;
    uint64_t fixed;             /* entries repaired */
    uint64_t stale;             /* active entries beyond the virtual size */
} PcowWalk;

int pcow_walk(pcow_image *img, PcowWalk *w, PcowProblems *pr, bool repair);
void pcow_walk_free(PcowWalk *w);
uint64_t pcow_walk_used_end(pcow_image *img, const PcowWalk *w);
int pcow_alloc_raise_frontier(pcow_image *img, uint64_t end);
/* check -r all: set a garbage frontier to @end. Durable; takes the lock */
int pcow_alloc_set_frontier(pcow_image *img, uint64_t end);
int pcow_alloc_init(pcow_image *img, const PcowWalk *w);
void pcow_alloc_fini(pcow_image *img);
int pcow_alloc_recover(pcow_image *img, bool punch_free, pcow_error *err);
int pcow_alloc_clusters(pcow_image *img, uint64_t n, uint64_t *off);
int pcow_alloc_one(pcow_image *img, uint64_t *off);
int pcow_take_locked(pcow_image *img, uint64_t *off);
void pcow_untake_locked(pcow_image *img, uint64_t off);
void pcow_free_clusters_locked(pcow_image *img, uint64_t off, uint64_t n);
int pcow_free_clusters(pcow_image *img, uint64_t off, uint64_t n);
int pcow_ring_drain(pcow_image *img);
int pcow_new_l2_locked(pcow_image *img, uint32_t l1_idx, bool sync);
int pcow_expand_internal(pcow_image *img, uint64_t vcluster,
                         uint64_t *file_offset, bool sync);
int pcow_set_map_locked(pcow_image *img, uint64_t vcluster, uint64_t map);
int pcow_clear_beyond(pcow_image *img, uint64_t vsize, uint64_t *cleared);

/* snapshot.c */
int pcow_snapshots_load(pcow_image *img, PcowProblems *pr);
int pcow_snapshot_find(pcow_image *img, const char *name_or_id);
uint64_t pcow_snapshot_ids_check(pcow_image *img, PcowProblems *pr);
int pcow_snapshot_ids_repair(pcow_image *img, pcow_error *err);

/* backing.c */
int pcow_backing_open(pcow_image *img, PcowChain *chain, pcow_error *err);
int pcow_check_base(const char *owner, const char *dir, const char *name,
                    uint32_t *fmt, bool missing_ok, PcowChain *chain,
                    uint64_t *size, pcow_error *err);
void pcow_backing_close(pcow_image *img);
int pcow_resolve_backing(const char *dir, const char *name, char *out,
                         size_t outlen);

#endif /* PCOW_INT_H */
