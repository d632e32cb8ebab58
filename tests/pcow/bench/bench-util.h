/*
 * Helpers the bench programs share: a monotonic clock, latency
 * percentiles and a fatal error.
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

static inline int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Sorts @v: p50 and p99 (and the mean) of n nanosecond samples, in us. */
static inline void percentiles(uint64_t *v, size_t n, double *p50,
                               double *p99, double *mean)
{
    uint64_t sum = 0;
    size_t i;

    if (n == 0) {
        *p50 = *p99 = 0;
        if (mean) {
            *mean = 0;
        }
        return;
    }
    qsort(v, n, sizeof(*v), cmp_u64);
    for (i = 0; i < n; i++) {
        sum += v[i];
    }
    *p50 = v[(n - 1) / 2] / 1000.0;
    *p99 = v[(size_t)((n - 1) * 0.99)] / 1000.0;
    if (mean) {
        *mean = sum / 1000.0 / n;
    }
}

/* A bench program, not the library: it may exit */
static inline void die(const char *what, const pcow_error *err)
{
    fprintf(stderr, BENCH_NAME ": %s%s%s\n", what, err ? ": " : "",
            err ? err->msg : "");
    exit(1);
}

#endif /* PCOW_BENCH_UTIL_H */
