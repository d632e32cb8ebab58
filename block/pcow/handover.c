/*
 * libpcow state stamps and handover: which state of an image a saved VM
 * state belongs to (the hot line's stamp), handing a read-write image over
 * to another process (pcow_release) and taking it back (pcow_reacquire),
 * for save/restore and live migration on shared storage.  The durable
 * part of a release is close's (image.c, pcow_close_clean).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <string.h>

#include "pcow-int.h"

static bool is_released(pcow_image *img)
{
    return __atomic_load_n(&img->released, __ATOMIC_ACQUIRE);
}

uint64_t pcow_stamp(pcow_image *img)
{
    return img->read_only ? img->open_stamp : pcow_stamp_to_leave(img);
}

uint64_t pcow_open_stamp(pcow_image *img, bool *clean)
{
    if (clean) {
        *clean = img->open_clean;
    }
    return img->open_stamp;
}

bool pcow_released(pcow_image *img)
{
    return is_released(img);
}

void pcow_keep_stamp(pcow_image *img)
{
    img->keep_stamp = true;
}

int pcow_release(pcow_image *img, pcow_error *err)
{
    int ret = pcow_write_check(img, err);

    if (ret < 0) {
        return ret;
    }
    if (!img->c0) {
        /* Check mode with problems: no session to hand over */
        return pcow_img_error(img, err, -EINVAL, "image is not open for "
                              "writing");
    }
    ret = __atomic_load_n(&img->persist_error, __ATOMIC_RELAXED);
    if (ret < 0) {
        /* Stores may be lost: only a close and a recovering open help */
        return pcow_img_error(img, err, ret, "cannot hand the image over: "
                              "an earlier flush failed (%s); close it (the "
                              "next open recovers it) before another "
                              "process may use it", strerror(-ret));
    }
    /* P-CLOSE-TRIM, P-CLOSE-CLEAN: the stamp and in_use 0 are durable */
    ret = pcow_close_clean(img, err);
    if (ret < 0) {
        return ret;
    }
    __atomic_store_n(&img->released, true, __ATOMIC_RELEASE);
    pcow_drop_lock(img);
    return 0;
}

/*
 * Did anyone open the image for writing since we released it?  Every
 * writer session stores its own in_use token and, on a clean close, that
 * token as the stamp (unless it kept the stamp: then it changed nothing a
 * reader can see); a structural change raises the header generation.
 */
static int check_untouched(pcow_image *img, pcow_error *err)
{
    uint8_t hot[PCOW_HOT_SIZE];
    PcowHeader h;
    int ret = pcow_header_reread(img, &h, hot, err);

    if (ret < 0) {
        return ret;
    }
    if (pcow_ld64(hot + PCOW_HOT_IN_USE - PCOW_HOT_OFFSET) != 0 ||
        pcow_ld64(hot + PCOW_HOT_STAMP - PCOW_HOT_OFFSET) !=
        img->left_stamp || h.generation != img->hdr.generation) {
        return pcow_img_error(img, err, -ESTALE, "image was changed by "
                              "another process since it was handed over");
    }
    return 0;
}

int pcow_reacquire(pcow_image *img, pcow_error *err)
{
    int ret;

    if (!is_released(img)) {
        return pcow_img_error(img, err, -EINVAL, "image was not handed "
                              "over");
    }
    ret = pcow_take_lock(img, err);
    if (ret < 0) {
        return ret;
    }
    ret = check_untouched(img, err);
    if (ret == 0) {
        /* Touch no mapping of a file cut behind our back */
        ret = pcow_check_file_size(img, err);
    }
    if (ret == 0) {
        /* The reserve was drained and trimmed: allocation starts afresh;
         * writable mappings made before the release may write again */
        __atomic_store_n(&img->released, false, __ATOMIC_RELEASE);
        pcow_mark_touched(img);
        ret = pcow_start_session(img, err);
        if (ret < 0) {
            __atomic_store_n(&img->released, true, __ATOMIC_RELEASE);
        }
    }
    if (ret < 0) {
        pcow_drop_lock(img);
    }
    return ret;
}

/* 64-bit FNV-1a over the bytes of @v, little-endian */
static uint64_t fold64(uint64_t h, uint64_t v)
{
    int i;

    for (i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 0x100000001b3ull;
    }
    return h;
}

/*
 * Each base's stamp and virtual size, from depth 1 down.  A base that is
 * raw, not open (PCOW_OPEN_NO_BACKING), of stamp 0 or not closed cleanly
 * (a writer was in it or died in it) cannot be told: 0.
 */
uint64_t pcow_chain_stamp(pcow_image *img)
{
    uint64_t h = 0xcbf29ce484222325ull;
    pcow_image *b;

    if (img->hdr.backing_format == PCOW_FMT_NONE) {
        return 0;
    }
    for (b = img; b->hdr.backing_format != PCOW_FMT_NONE; b = b->backing) {
        pcow_image *base = b->backing;

        if (b->hdr.backing_format != PCOW_FMT_PCOW || !base ||
            !base->open_stamp || !base->open_clean) {
            return 0;
        }
        h = fold64(fold64(h, base->open_stamp), base->hdr.virtual_size);
        if (b->hdr.backing_snapshot_id) {
            /* A clone: which snapshot of the base it shows */
            h = fold64(h, b->hdr.backing_snapshot_id);
        }
    }
    return h ? h : 1;
}
