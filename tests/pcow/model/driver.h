/*
 * Model-based test: shared declarations of the driver (test-model.c,
 * model-ops.c).  The driver runs seeded random operations on real images,
 * through libpcow and pcow-img, applies the same operations to the shadow
 * model (model.h) and compares after every step.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_MODEL_DRIVER_H
#define PCOW_MODEL_DRIVER_H

#include <limits.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>

#include "pcow/pcow.h"
#include "model.h"

#define MAX_LAYERS  16
#define MAX_OPS     100000

typedef enum OpKind {
    OP_WRITE, OP_ZERO, OP_SNAP_CREATE, OP_SNAP_REVERT, OP_SNAP_DELETE,
    OP_GROW, OP_SHRINK, OP_COMMIT, OP_COMMIT_MID, OP_REBASE, OP_CONVERT,
    OP_BASE_WRITE, OP_BASE_RESIZE, OP_REOPEN, OP_PROBE, OP_TOOL_CHECK,
    OP_CRASH, OP_COUNT
} OpKind;

/* What a crash step cuts: write, zero, grow, shrink, snapshot -c/-d/-a */
#define CRASH_KINDS 7

/* One operation; its parameters are fitted to the state when it runs. */
typedef struct Op {
    uint8_t kind;
    uint64_t a, b, c, d;
} Op;

typedef struct Rng {
    uint64_t s;
} Rng;

typedef struct Ctx {
    uint64_t seed;
    Rng rng;
    char dir[PATH_MAX];
    const char *tool;           /* pcow-img */
    bool verbose, keep;

    MLayer *layers[MAX_LAYERS]; /* every layer with a file */
    unsigned nlayers;
    MLayer *top;                /* "t.pcow" */
    pcow_image *img;            /* the top image, open read-write, or NULL */
    pcow_image *aux;            /* another image open for an operation */
    unsigned counter;           /* file and snapshot names */

    Op *ops;                    /* the operations run so far */
    unsigned nops, cur;
    char desc[256];             /* what the current operation does */
    char msg[2048];             /* failure */
    char tool_err[1024];        /* stderr of the last pcow-img */
    jmp_buf fail_jmp;
    uint8_t *buf, *buf2;        /* M_MAX_SIZE each */
    unsigned long long tool_runs, checks;
    unsigned long long kind_steps[OP_COUNT];    /* steps done, per kind */
    unsigned long long crash_steps[CRASH_KINDS]; /* crash steps, per change */
    unsigned long long crash_snap_ids;  /* crashed creates that took */
    uint32_t favour;            /* past the time: kinds (bits) yet to run */
} Ctx;

/* test-model.c */
uint64_t rng_next(Rng *r);
uint64_t rng_below(Rng *r, uint64_t n);
void fail(Ctx *c, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));
void path_of(Ctx *c, const char *file, char *out);

/* model-ops.c */
void setup_episode(Ctx *c);
Op gen_op(Ctx *c);
void run_op(Ctx *c, const Op *op);
extern const char *const op_names[OP_COUNT];
void op_name(const Op *op, char *out, size_t len);
void close_all(Ctx *c);

#endif /* PCOW_MODEL_DRIVER_H */
