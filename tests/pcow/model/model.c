/*
 * Shadow model of pcow images for the model-based test (see model.h)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static void *xcalloc(size_t n)
{
    void *p = calloc(1, n);

    if (!p) {
        fprintf(stderr, "test-model: out of memory\n");
        abort();
    }
    return p;
}

static bool is_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static const char *st_name(uint8_t st)
{
    return st == ST_OWNED ? "owned" : st == ST_MAYBE ? "maybe" : "not held";
}

MLayer *m_new_raw(const char *file, uint64_t size)
{
    MLayer *l = xcalloc(sizeof(*l));

    snprintf(l->file, sizeof(l->file), "%s", file);
    l->raw = true;
    l->v.size = size;
    l->v.own = xcalloc(M_MAX_SIZE);
    return l;
}

MLayer *m_new_pcow(const char *file, uint64_t size, uint32_t cs, uint32_t cu,
                   MLayer *below)
{
    MLayer *l = xcalloc(sizeof(*l));

    snprintf(l->file, sizeof(l->file), "%s", file);
    l->cs = cs;
    l->cu = cu;
    l->below = below;
    l->v.size = size;
    l->v.own = xcalloc(M_MAX_SIZE);
    l->v.st = xcalloc(M_MAX_BLOCKS);
    l->next_id = 1;
    return l;
}

static void view_free(MView *v)
{
    free(v->own);
    free(v->st);
    v->own = NULL;
    v->st = NULL;
}

static void view_copy(MView *dst, const MView *src)
{
    if (!dst->own) {
        dst->own = xcalloc(M_MAX_SIZE);
        dst->st = xcalloc(M_MAX_BLOCKS);
    }
    dst->size = src->size;
    dst->limit = src->limit;
    memcpy(dst->own, src->own, M_MAX_SIZE);
    if (src->st) {
        memcpy(dst->st, src->st, M_MAX_BLOCKS);
    }
}

void m_free(MLayer *l)
{
    if (!l) {
        return;
    }
    for (unsigned i = 0; i < l->nsnaps; i++) {
        view_free(&l->snaps[i].v);
    }
    view_free(&l->v);
    free(l);
}

void m_assign(MLayer *dst, const MLayer *src)
{
    unsigned i;

    for (i = src->nsnaps; i < dst->nsnaps; i++) {
        view_free(&dst->snaps[i].v);
    }
    for (i = 0; i < src->nsnaps; i++) {
        MView v = dst->snaps[i].v;

        if (i >= dst->nsnaps) {
            v.own = NULL;
        }
        dst->snaps[i] = src->snaps[i];
        dst->snaps[i].v = v;
        view_copy(&dst->snaps[i].v, &src->snaps[i].v);
    }
    dst->nsnaps = src->nsnaps;
    dst->next_id = src->next_id;
    dst->below = src->below;
    dst->cs = src->cs;
    dst->cu = src->cu;
    dst->raw = src->raw;
    memcpy(dst->file, src->file, sizeof(dst->file));
    view_copy(&dst->v, &src->v);
}

MLayer *m_clone(const MLayer *src)
{
    MLayer *l = xcalloc(sizeof(*l));

    m_assign(l, src);
    return l;
}

void m_view_block(const MLayer *l, const MView *v, uint64_t blk,
                  uint8_t *out)
{
    uint64_t off = blk * MB_SIZE;

    if (off >= v->size) {
        memset(out, 0, MB_SIZE);
    } else if (l->raw) {
        uint64_t n = v->size - off < MB_SIZE ? v->size - off : MB_SIZE;

        memcpy(out, v->own + off, n);
        memset(out + n, 0, MB_SIZE - n);
    } else if (v->st[blk] == ST_NOT) {
        m_under(l, v, blk, out);
    } else {
        memcpy(out, v->own + off, MB_SIZE);
    }
}

void m_below_block(const MLayer *l, uint64_t blk, uint8_t *out)
{
    if (!l->below) {
        memset(out, 0, MB_SIZE);
    } else {
        m_view_block(l->below, &l->below->v, blk, out);
    }
}

void m_under(const MLayer *l, const MView *v, uint64_t blk, uint8_t *out)
{
    if (v->limit && blk * MB_SIZE >= v->limit) {
        memset(out, 0, MB_SIZE);
    } else {
        m_below_block(l, blk, out);
    }
}

void m_content(const MLayer *l, uint8_t *out)
{
    uint64_t nblk = (l->v.size + MB_SIZE - 1) / MB_SIZE;

    for (uint64_t b = 0; b < nblk; b++) {
        m_view_block(l, &l->v, b, out + b * MB_SIZE);
    }
}

/*
 * A write to a cluster may copy every unit of it (expansion, whole-cluster
 * copy on write): what the layer did not hold there, it may hold now.
 */
static void touch_clusters(MLayer *l, uint64_t off, uint64_t len)
{
    uint64_t per = l->cs / MB_SIZE;

    for (uint64_t c = off / l->cs; c <= (off + len - 1) / l->cs; c++) {
        for (uint64_t b = c * per; b < (c + 1) * per; b++) {
            if (b * MB_SIZE >= l->v.size) {
                break;
            }
            if (l->v.st[b] == ST_NOT) {
                m_under(l, &l->v, b, l->v.own + b * MB_SIZE);
                l->v.st[b] = ST_MAYBE;
            }
        }
    }
}

/* Make block @b OWNED with its current content, before a partial write */
static void take_block(MLayer *l, uint64_t b)
{
    if (l->v.st[b] == ST_NOT) {
        m_under(l, &l->v, b, l->v.own + b * MB_SIZE);
    }
    l->v.st[b] = ST_OWNED;
}

void m_write(MLayer *l, uint64_t off, uint64_t len, const uint8_t *data)
{
    if (len == 0) {
        return;
    }
    for (uint64_t b = off / MB_SIZE; b <= (off + len - 1) / MB_SIZE; b++) {
        take_block(l, b);
    }
    memcpy(l->v.own + off, data, len);
    touch_clusters(l, off, len);
}

/*
 * The range reads zeros afterwards.  "Deallocating what it can": a block
 * that then reads like the layer below may be held or not; any other
 * block must be held.
 */
void m_zero(MLayer *l, uint64_t off, uint64_t len)
{
    uint8_t below[MB_SIZE];

    if (len == 0) {
        return;
    }
    for (uint64_t b = off / MB_SIZE; b <= (off + len - 1) / MB_SIZE; b++) {
        uint64_t bs = b * MB_SIZE;
        uint64_t s = off > bs ? off : bs;
        uint64_t e = off + len < bs + MB_SIZE ? off + len : bs + MB_SIZE;

        take_block(l, b);
        memset(l->v.own + s, 0, e - s);
        m_under(l, &l->v, b, below);
        if (memcmp(l->v.own + bs, below, MB_SIZE) == 0) {
            l->v.st[b] = ST_MAYBE;
        }
    }
    touch_clusters(l, off, len);
}

/*
 * Growing shows zeros in the new range, whatever the base holds there: an
 * image with a base gets (or keeps a lower) backing limit at the old size.
 * Shrinking lowers the limit.
 */
void m_resize(MLayer *l, uint64_t size)
{
    uint64_t old = l->v.size;

    for (uint64_t b = old / MB_SIZE; b < size / MB_SIZE; b++) {
        memset(l->v.own + b * MB_SIZE, 0, MB_SIZE);
        l->v.st[b] = ST_NOT;
    }
    for (uint64_t b = size / MB_SIZE; b < old / MB_SIZE; b++) {
        memset(l->v.own + b * MB_SIZE, 0, MB_SIZE);
        l->v.st[b] = ST_NOT;
    }
    if (size > old && l->below && (!l->v.limit || l->v.limit > old)) {
        l->v.limit = old;
    } else if (size < old && l->v.limit > size) {
        l->v.limit = size;
    }
    l->v.size = size;
    if (size > old && old % l->cs) {
        /* Zeroing the new part of a cluster cut by the old end writes it */
        touch_clusters(l, old, 1);
    }
}

void m_raw_truncate(MLayer *l, uint64_t size)
{
    if (size < l->v.size) {
        memset(l->v.own + size, 0, l->v.size - size);
    }
    l->v.size = size;
}

void m_raw_write(MLayer *l, uint64_t off, uint64_t len, const uint8_t *data)
{
    memcpy(l->v.own + off, data, len);
    if (off + len > l->v.size) {
        l->v.size = off + len;
    }
}

/*
 * Block @blk of @b reads @data after a commit that may or may not have
 * written it there (written, or zeroed past the image's backing limit):
 * whatever does not read like the layer below @b must be held.
 */
static void maybe_write(MLayer *b, uint64_t blk, const uint8_t *data)
{
    uint8_t cur[MB_SIZE];

    m_view_block(b, &b->v, blk, cur);
    if (memcmp(cur, data, MB_SIZE) || b->v.st[blk] != ST_OWNED) {
        m_under(b, &b->v, blk, cur);
        memcpy(b->v.own + blk * MB_SIZE, data, MB_SIZE);
        b->v.st[blk] = memcmp(cur, data, MB_SIZE) ? ST_OWNED : ST_MAYBE;
    }
    touch_clusters(b, blk * MB_SIZE, MB_SIZE);
}

void m_commit(MLayer *l, bool keep)
{
    MLayer *b = l->below;
    uint64_t nblk = l->v.size / MB_SIZE;

    if (b->v.size < l->v.size) {
        if (b->raw) {
            m_raw_truncate(b, l->v.size);
        } else {
            m_resize(b, l->v.size);
        }
    }
    for (uint64_t k = 0; k < nblk; k++) {
        const uint8_t *data = l->v.own + k * MB_SIZE;
        static const uint8_t zero_block[MB_SIZE];

        if (l->v.st[k] == ST_NOT) {
            if (!l->v.limit || k * MB_SIZE < l->v.limit) {
                continue;
            }
            /* Past the limit the image shows zeros: so must the base */
            data = zero_block;
        }
        if (b->raw) {
            memcpy(b->v.own + k * MB_SIZE, data, MB_SIZE);
        } else if (l->v.st[k] == ST_OWNED) {
            m_write(b, k * MB_SIZE, MB_SIZE, data);
        } else {
            maybe_write(b, k, data);
        }
    }
    if (!keep) {
        memset(l->v.st, ST_NOT, M_MAX_BLOCKS);
        memset(l->v.own, 0, M_MAX_SIZE);
        l->v.limit = 0;
    }
}

void m_rebase_safe(MLayer *l, MLayer *nb)
{
    uint8_t *cur = malloc(M_MAX_SIZE);
    uint8_t under[MB_SIZE];

    /* What it shows now, then what a block it does not hold will show */
    m_content(l, cur);
    m_rebase_unsafe(l, nb);
    for (uint64_t k = 0; k < l->v.size / MB_SIZE; k++) {
        if (l->v.st[k] == ST_OWNED) {
            continue;
        }
        m_under(l, &l->v, k, under);
        memcpy(l->v.own + k * MB_SIZE, cur + k * MB_SIZE, MB_SIZE);
        l->v.st[k] = memcmp(cur + k * MB_SIZE, under, MB_SIZE) ?
                     ST_OWNED : ST_MAYBE;
    }
    free(cur);
}

void m_rebase_unsafe(MLayer *l, MLayer *nb)
{
    l->below = nb;
    if (!nb) {
        l->v.limit = 0;     /* no base: nothing to hide */
    }
}

uint64_t m_snap_create(MLayer *l, const char *name)
{
    MSnap *s = &l->snaps[l->nsnaps++];

    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->id = l->next_id++;       /* ids are never reused */
    view_copy(&s->v, &l->v);
    return s->id;
}

void m_snap_revert(MLayer *l, unsigned idx)
{
    view_copy(&l->v, &l->snaps[idx].v);
}

void m_snap_delete(MLayer *l, unsigned idx)
{
    view_free(&l->snaps[idx].v);
    memmove(&l->snaps[idx], &l->snaps[idx + 1],
            (l->nsnaps - idx - 1) * sizeof(MSnap));
    l->nsnaps--;
}

MLayer *m_converted(const char *file, const MLayer *src, bool raw,
                    uint32_t cs, uint32_t cu, MLayer *base)
{
    uint64_t size = (src->v.size + MB_SIZE - 1) / MB_SIZE * MB_SIZE;
    uint8_t bb[MB_SIZE];
    MLayer *l;

    if (raw) {
        l = m_new_raw(file, src->v.size);
        m_content(src, l->v.own);
        return l;
    }
    l = m_new_pcow(file, size, cs, cu, base);
    m_content(src, l->v.own);
    /* Blocks that differ from what is below are written, the rest may be */
    for (uint64_t k = 0; k < size / MB_SIZE; k++) {
        m_below_block(l, k, bb);
        l->v.st[k] = memcmp(bb, l->v.own + k * MB_SIZE, MB_SIZE) ?
                     ST_OWNED : ST_MAYBE;
    }
    return l;
}

static int mismatch(const MLayer *l, uint64_t blk, const uint8_t *exp,
                    const uint8_t *actual, const uint8_t *below,
                    char *why, size_t whylen)
{
    uint64_t i = 0;

    while (i < MB_SIZE && exp[i] == actual[i]) {
        i++;
    }
    if (i == MB_SIZE) {
        i = 0;      /* MAYBE: neither alternative, report against `own` */
        while (i < MB_SIZE && exp[i] == actual[i]) {
            i++;
        }
    }
    snprintf(why, whylen, "%s: offset 0x%llx: expected 0x%02x, read 0x%02x "
             "(block %s by %s%s)", l->file,
             (unsigned long long)(blk * MB_SIZE + i), exp[i], actual[i],
             l->raw ? "held" : st_name(l->v.st[blk]),
             l->raw ? "the raw file" : "this layer",
             below && memcmp(actual, below, MB_SIZE) == 0 ?
             "; the read matches the layer below" :
             below && is_zero(actual, MB_SIZE) ? "; the read is zeros" : "");
    return -1;
}

int m_verify(MLayer *l, const uint8_t *actual, char *why, size_t whylen)
{
    uint64_t nblk = (l->v.size + MB_SIZE - 1) / MB_SIZE;
    uint8_t exp[MB_SIZE], below[MB_SIZE];

    for (uint64_t k = 0; k < nblk; k++) {
        const uint8_t *a = actual + k * MB_SIZE;
        uint64_t n = l->v.size - k * MB_SIZE;
        uint8_t *own = l->v.own + k * MB_SIZE;

        n = n < MB_SIZE ? n : MB_SIZE;
        if (l->raw) {
            if (memcmp(a, own, n)) {
                memcpy(exp, own, n);
                memcpy(exp + n, a + n, MB_SIZE - n);
                return mismatch(l, k, exp, a, NULL, why, whylen);
            }
            continue;
        }
        m_under(l, &l->v, k, below);
        switch (l->v.st[k]) {
        case ST_OWNED:
            if (memcmp(a, own, MB_SIZE)) {
                return mismatch(l, k, own, a, below, why, whylen);
            }
            break;
        case ST_NOT:
            if (memcmp(a, below, MB_SIZE)) {
                return mismatch(l, k, below, a, NULL, why, whylen);
            }
            break;
        default:
            if (memcmp(a, own, MB_SIZE) == 0) {
                if (memcmp(own, below, MB_SIZE)) {
                    l->v.st[k] = ST_OWNED;
                }
            } else if (memcmp(a, below, MB_SIZE) == 0) {
                l->v.st[k] = ST_NOT;
            } else {
                return mismatch(l, k, own, a, below, why, whylen);
            }
        }
    }
    return 0;
}
