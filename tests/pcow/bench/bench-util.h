/*
 * Helpers the bench programs share: a monotonic clock and a fatal error.
 * Define BENCH_NAME (the program's name, for messages) before including.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_BENCH_UTIL_H
#define PCOW_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "pcow/pcow.h"

static inline uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static inline double secs_since(uint64_t t0)
{
    return (now_ns() - t0) / 1e9;
}

/* A bench program, not the library: it may exit */
static inline void die(const char *what, const pcow_error *err)
{
    fprintf(stderr, BENCH_NAME ": %s%s%s\n", what, err ? ": " : "",
            err ? err->msg : "");
    exit(1);
}

#endif /* PCOW_BENCH_UTIL_H */
