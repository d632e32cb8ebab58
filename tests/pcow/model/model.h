/*
 * Shadow model of pcow images for the model-based test (test-model.c)
 *
 * The model knows what the guest must see, from the documented semantics
 * only (docs/interop/pcow-spec.rst, docs/pcow.rst, the pcow-img help
 * texts), never from libpcow's internals.  Each pcow layer keeps, per
 * 4 KiB block, whether the layer holds the block itself:
 *
 *   OWNED  the layer holds it (it was written): reads `own`, whatever lies
 *          below;
 *   NOT    the layer does not hold it: reads the layer below (zeros past
 *          the end of the layer below, without one, or at and beyond the
 *          view's backing limit, docs/interop/pcow-spec.rst "Backing
 *          limit");
 *   MAYBE  the semantics allow either (e.g. a write copies a whole COW unit
 *          or cluster, of which this block is a bystander).  `own` was
 *          equal to what was below when the block became MAYBE.  While the
 *          layer below still reads `own` there, both read the same.  Once
 *          it differs, the block must read either `own` or the layer below
 *          as a whole, and the first comparison settles it (OWNED or NOT).
 *
 * Raw layers are plain bytes.  Snapshots are copies of a layer's view.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_MODEL_H
#define PCOW_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MB_SIZE         4096u                   /* model block */
#define M_MAX_SIZE      (8ull << 20)            /* largest virtual size */
#define M_MAX_BLOCKS    (M_MAX_SIZE / MB_SIZE)
#define M_MAX_SNAPS     6
#define M_NAME_MAX      32

enum { ST_NOT = 0, ST_MAYBE = 1, ST_OWNED = 2 };

/* What one layer (or one of its snapshots) shows */
typedef struct MView {
    uint64_t size;          /* virtual size (raw: file size, any value) */
    uint64_t limit;         /* backing limit: 0, or where the base ends */
    uint8_t *own;           /* M_MAX_SIZE bytes; zero past size */
    uint8_t *st;            /* per block; pcow only */
} MView;

typedef struct MSnap {
    char name[M_NAME_MAX];
    uint64_t id;
    uint64_t vm_size;       /* bytes of VM state (vm_bytes()), or 0 */
    MView v;
} MSnap;

typedef struct MLayer MLayer;
struct MLayer {
    char file[M_NAME_MAX];  /* base name in the test directory */
    bool raw;
    uint32_t cs, cu;        /* pcow: cluster size, COW unit */
    MView v;                /* the active layer */
    MLayer *below;          /* NULL: none */
    MSnap snaps[M_MAX_SNAPS];
    unsigned nsnaps;
    uint64_t next_id;       /* the image's next_snapshot_id: the id the
                             * next snapshot takes (1 in a new image) */
};

MLayer *m_new_raw(const char *file, uint64_t size);
MLayer *m_new_pcow(const char *file, uint64_t size, uint32_t cs, uint32_t cu,
                   MLayer *below);
void m_free(MLayer *l);
/* A deep copy of @src (same file, same layer below), and copying back */
MLayer *m_clone(const MLayer *src);
void m_assign(MLayer *dst, const MLayer *src);

/* What the layer below @l shows in block @blk (zeros past its end). */
void m_below_block(const MLayer *l, uint64_t blk, uint8_t *out);
/* What view @v of @l shows in block @blk where it holds nothing. */
void m_under(const MLayer *l, const MView *v, uint64_t blk, uint8_t *out);
/* What view @v of @l shows in block @blk (MAYBE: `own`). */
void m_view_block(const MLayer *l, const MView *v, uint64_t blk,
                  uint8_t *out);
/* The active content [0, size) of @l into @out. */
void m_content(const MLayer *l, uint8_t *out);

/* Operations on the active layer; ranges are within the size. */
void m_write(MLayer *l, uint64_t off, uint64_t len, const uint8_t *data);
void m_zero(MLayer *l, uint64_t off, uint64_t len);
void m_resize(MLayer *l, uint64_t size);
/* The data @l may hold goes into its base; then @l holds nothing (!keep). */
void m_commit(MLayer *l, bool keep);
/* Safe rebase: content kept, @nb (may be NULL) becomes the base. */
void m_rebase_safe(MLayer *l, MLayer *nb);
/* rebase -u: only the base changes (none: the backing limit goes too). */
void m_rebase_unsafe(MLayer *l, MLayer *nb);
/* The new snapshot takes next_id, as the spec says; returns that id */
uint64_t m_snap_create(MLayer *l, const char *name);
void m_snap_revert(MLayer *l, unsigned idx);
void m_snap_delete(MLayer *l, unsigned idx);
/* A standalone layer with what @src shows, as `convert` writes it. */
MLayer *m_converted(const char *file, const MLayer *src, bool raw,
                    uint32_t cs, uint32_t cu, MLayer *base);

/* Raw layers: write (may extend) and truncate. */
void m_raw_write(MLayer *l, uint64_t off, uint64_t len, const uint8_t *data);
void m_raw_truncate(MLayer *l, uint64_t size);

/*
 * Compare what was read from the active layer (@actual, the whole size)
 * with the model.  Settles MAYBE blocks that can be settled.  Returns 0,
 * or -1 with a one-line description of the first difference in @why.
 */
int m_verify(MLayer *l, const uint8_t *actual, char *why, size_t whylen);

#endif /* PCOW_MODEL_H */
