/*
 * libpcow: size parsing, error formatting, small helpers
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <ctype.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pcow-int.h"

int pcow_set_error(pcow_error *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err) {
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Same, prefixed with the image's name as every message must be */
int pcow_img_error(pcow_image *img, pcow_error *err, int code,
                   const char *fmt, ...)
{
    va_list ap;
    char buf[450];

    if (!err) {
        return code;
    }
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return pcow_set_error(err, code, "%s: %s", img->filename, buf);
}

void pcow_problem(PcowProblems *pr, int code, const char *fmt, ...)
{
    va_list ap;

    if (pr->count++ == 0) {
        pr->first_code = code;
        va_start(ap, fmt);
        vsnprintf(pr->first, sizeof(pr->first), fmt, ap);
        va_end(ap);
    }
}

uint64_t pcow_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int pcow_parse_size(const char *s, uint64_t *out)
{
    const char *p = s;
    uint64_t v = 0;
    unsigned shift = 0;
    bool digits = false;

    if (!s) {
        return -EINVAL;
    }
    while (isspace((unsigned char)*p)) {
        p++;
    }
    while (isdigit((unsigned char)*p)) {
        unsigned d = *p - '0';

        if (v > (UINT64_MAX - d) / 10) {
            return -EINVAL;
        }
        v = v * 10 + d;
        digits = true;
        p++;
    }
    if (!digits) {
        return -EINVAL;
    }
    switch (*p) {
    case 'b': case 'B':
        shift = 0;
        p++;
        break;
    case 'k': case 'K':
        shift = 10;
        p++;
        break;
    case 'm': case 'M':
        shift = 20;
        p++;
        break;
    case 'g': case 'G':
        shift = 30;
        p++;
        break;
    case 't': case 'T':
        shift = 40;
        p++;
        break;
    case 'p': case 'P':
        shift = 50;
        p++;
        break;
    case 'e': case 'E':
        shift = 60;
        p++;
        break;
    default:
        break;
    }
    /* Accept "64KiB"/"64KB" as well as "64K" */
    if (shift && (*p == 'i' || *p == 'I') && (p[1] == 'b' || p[1] == 'B')) {
        p += 2;
    } else if (shift && (*p == 'b' || *p == 'B')) {
        p++;
    }
    if (*p != '\0') {
        return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift)) {
        return -EINVAL;
    }
    *out = v << shift;
    return 0;
}

void pcow_lock(pcow_image *img)
{
    unsigned spins = 0;

    while (atomic_flag_test_and_set_explicit(&img->lock,
                                             memory_order_acquire)) {
        /* The holder may be in fdatasync (slow allocation): back off */
        if (++spins > 1000) {
            sched_yield();
        } else {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
}

void pcow_unlock(pcow_image *img)
{
    atomic_flag_clear_explicit(&img->lock, memory_order_release);
}
