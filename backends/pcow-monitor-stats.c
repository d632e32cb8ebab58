/*
 * The pcow Image Monitor: statistics and reports
 *
 * Fault counters and latency histograms (lock-free: the fault handlers
 * update them), the async-signal-safe one-line report the handlers print,
 * the error helper of the other paths, and the /proc parsing behind the
 * mapping budget and the statistics.  Calls nothing else of the monitor.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pcow-monitor-int.h"

uint64_t mon_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void mon_latency_add(mon_latency *lat, uint64_t ns)
{
    unsigned b = ns ? 63 - __builtin_clzll(ns) : 0;
    uint64_t max = atomic_load(&lat->max_ns);

    if (b >= PCOW_HIST_BUCKETS) {
        b = PCOW_HIST_BUCKETS - 1;
    }
    atomic_fetch_add(&lat->count, 1);
    atomic_fetch_add(&lat->total_ns, ns);
    atomic_fetch_add(&lat->buckets[b], 1);
    while (ns > max &&
           !atomic_compare_exchange_weak(&lat->max_ns, &max, ns)) {
        /* max reloaded by the failed exchange */
    }
}

/* The signal-safe formatter: no stdio, no locale, no allocation. */
static char *fmt_hex(char *p, uint64_t v)
{
    char tmp[16];
    int n = 0;

    *p++ = '0';
    *p++ = 'x';
    do {
        tmp[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    while (n) {
        *p++ = tmp[--n];
    }
    return p;
}

static char *fmt_str(char *p, char *end, const char *s)
{
    while (*s && p < end) {
        *p++ = *s++;
    }
    return p;
}

/* strerror() is not async-signal-safe: the errors the fault paths see. */
static const char *errno_name(int e)
{
    switch (e) {
    case 0: return "done";
    case ENOSPC: return "no space left on device";
    case EROFS: return "read-only";
    case EIO: return "I/O error";
    case ENOMEM: return "out of memory or mappings";
    case EINVAL: return "invalid argument";
    case EEXIST: return "exists";
    case EFAULT: return "bad address";
    case EDQUOT: return "disk quota exceeded";
    case EFBIG: return "file too large";
    default: return "error";
    }
}

void mon_report(pcow_monitor *mon, const char *what, uint64_t offset,
                int err)
{
    char buf[512];
    char *p = buf;
    char *end = buf + sizeof(buf) - 64;

    p = fmt_str(p, end, "pcow-monitor: ");
    p = fmt_str(p, end, mon->name);
    p = fmt_str(p, end, ": ");
    p = fmt_str(p, end, what);
    p = fmt_str(p, end, " guest offset ");
    p = fmt_hex(p, offset);
    p = fmt_str(p, end, ": ");
    p = fmt_str(p, end, errno_name(-err));
    *p++ = '\n';
    if (write(STDERR_FILENO, buf, p - buf) < 0) {
        /* nowhere left to report to */
    }
}

static void efd_signal(int fd)
{
    uint64_t one = 1;

    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
        /* Counter saturated: the reader is due anyway. */
    }
}

void mon_nospace_begin(pcow_monitor *mon, const char *what, uint64_t offset)
{
    bool closed = false;

    if (!atomic_compare_exchange_strong(&mon->episode, &closed, true)) {
        return;
    }
    atomic_store(&mon->episode_offset, offset);
    atomic_fetch_add(&mon->episodes, 1);
    mon_report(mon, what, offset, -ENOSPC);
    efd_signal(mon->event_efd);
    /* The uffd thread retries on a timer while the episode is open. */
    efd_signal(mon->retry_efd);
}

void mon_nospace_end(pcow_monitor *mon)
{
    bool open = true;

    if (pcow_monitor_held_faults(mon) ||
        !atomic_compare_exchange_strong(&mon->episode, &open, false)) {
        return;
    }
    mon_report(mon, "space is back; resumed the faults held since",
               atomic_load(&mon->episode_offset), 0);
    efd_signal(mon->event_efd);
    /*
     * A fault held between the check and the close found the episode open
     * and did not report: open a new one for it (all seq_cst, so either it
     * sees the episode closed or this sees its count).
     */
    if (pcow_monitor_held_faults(mon)) {
        mon_nospace_begin(mon, "no space again: holding the fault at",
                          atomic_load(&mon->episode_offset));
    }
}

int mon_error(pcow_monitor *mon, pcow_error *err, int code,
              const char *fmt, ...)
{
    char buf[sizeof(err->msg)];
    va_list ap;

    if (!err) {
        return code;
    }
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* The image's name marked (err->what): front ends strip no text */
    return mon ? pcow_set_file_error(err, code, mon->name, "%s", buf)
               : pcow_set_error(err, code, "%s", buf);
}

uint64_t mon_proc_read_u64(const char *path, uint64_t dflt)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0) {
        return dflt;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return dflt;
    }
    buf[n] = 0;
    return strtoull(buf, NULL, 10);
}

uint64_t mon_proc_count_maps(uintptr_t lo, uintptr_t hi)
{
    char buf[65536];
    uint64_t count = 0;
    bool line_start = true;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0) {
        return 0;
    }
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        ssize_t i;

        for (i = 0; i < n; i++) {
            if (line_start && (lo == hi)) {
                count++;
            } else if (line_start) {
                uintptr_t a = 0;
                ssize_t j = i;

                /* Lines can straddle reads only past the address. */
                while (j < n && buf[j] != '-') {
                    char c = buf[j++];

                    a = a * 16 + (c <= '9' ? c - '0' : c - 'a' + 10);
                }
                if (a >= lo && a < hi) {
                    count++;
                }
            }
            line_start = buf[i] == '\n';
        }
    }
    close(fd);
    return count;
}

static void copy_latency(pcow_latency *dst, mon_latency *src)
{
    int i;

    dst->count = atomic_load(&src->count);
    dst->total_ns = atomic_load(&src->total_ns);
    dst->max_ns = atomic_load(&src->max_ns);
    for (i = 0; i < PCOW_HIST_BUCKETS; i++) {
        dst->buckets[i] = atomic_load(&src->buckets[i]);
    }
}

uint64_t pcow_monitor_held_faults(pcow_monitor *mon)
{
    return atomic_load(&mon->uffd_held) +
           (mon->cow_held ? atomic_load(mon->cow_held) : 0);
}

uint64_t pcow_monitor_nospace_episodes(pcow_monitor *mon, uint64_t *offset)
{
    if (offset) {
        *offset = atomic_load(&mon->episode_offset);
    }
    return atomic_load(&mon->episodes);
}

void pcow_monitor_get_stats(pcow_monitor *mon, pcow_monitor_stats *s)
{
    uint64_t exact = mon_proc_count_maps((uintptr_t)mon->base,
                                         (uintptr_t)mon->base + mon->size);

    /* Re-base the estimate on the truth (merges make it pessimistic). */
    atomic_store(&mon->vmas, exact);
    memset(s, 0, sizeof(*s));
    s->expansions = atomic_load(&mon->st.expansions);
    s->cow_unit_faults = atomic_load(&mon->st.cow_unit_faults);
    s->cow_cluster_faults = atomic_load(&mon->st.cow_cluster_faults);
    s->hole_read_faults = atomic_load(&mon->st.hole_read_faults);
    s->pool_hits = atomic_load(&mon->st.pool_hits);
    s->pool_misses = atomic_load(&mon->st.pool_misses);
    s->errors = atomic_load(&mon->st.errors);
    s->vmas = exact;
    s->vmas_needed = mon->vmas_needed;
    s->lazy = mon->lazy;
    s->held_faults = pcow_monitor_held_faults(mon);
    s->nospace_episodes = pcow_monitor_nospace_episodes(mon,
                                                        &s->nospace_offset);
    copy_latency(&s->expansion_latency, &mon->st.expansion_latency);
    copy_latency(&s->cow_latency, &mon->st.cow_latency);
    copy_latency(&s->hole_read_latency, &mon->st.hole_read_latency);
}

uint64_t pcow_latency_percentile(const pcow_latency *lat, double pct)
{
    uint64_t total = 0;
    uint64_t want;
    uint64_t seen = 0;
    int i;

    for (i = 0; i < PCOW_HIST_BUCKETS; i++) {
        total += lat->buckets[i];
    }
    if (!total) {
        return 0;
    }
    want = (uint64_t)(pct / 100.0 * total + 0.5);
    if (want < 1) {
        want = 1;
    }
    if (want > total) {
        want = total;
    }
    for (i = 0; i < PCOW_HIST_BUCKETS; i++) {
        seen += lat->buckets[i];
        if (seen >= want) {
            return (1ull << i) + (1ull << i) / 2;
        }
    }
    return 0;
}
