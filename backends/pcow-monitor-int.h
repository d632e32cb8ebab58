/*
 * The pcow Image Monitor: internal interfaces
 *
 * pcow-monitor.c       open/close, mapping, flush, snapshots, statistics
 * pcow-monitor-uffd.c  userfaultfd: hole reads and expansion (one thread)
 * pcow-monitor-cow.c   the process-wide SIGSEGV dispatcher and COW
 * pcow-monitor-pool.c  the cluster pre-allocation thread
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_MONITOR_INT_H
#define PCOW_MONITOR_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pcow/monitor.h"

/* Lock-free latency histogram; updated from signal handlers too. */
typedef struct mon_latency {
    _Atomic uint64_t count;
    _Atomic uint64_t total_ns;
    _Atomic uint64_t max_ns;
    _Atomic uint64_t buckets[PCOW_HIST_BUCKETS];
} mon_latency;

typedef struct mon_stats {
    _Atomic uint64_t expansions;
    _Atomic uint64_t cow_unit_faults;
    _Atomic uint64_t cow_cluster_faults;
    _Atomic uint64_t hole_read_faults;
    _Atomic uint64_t pool_hits;
    _Atomic uint64_t pool_misses;
    _Atomic uint64_t errors;
    mon_latency expansion_latency;
    mon_latency cow_latency;
    mon_latency hole_read_latency;
} mon_stats;

struct pcow_monitor {
    pcow_image *img;
    char *base;
    uint64_t size;
    uint32_t cluster_size;
    unsigned cluster_bits;
    uint64_t nb_clusters;
    unsigned flags;
    uint32_t pool_size;
    uint32_t cow_escalate;
    bool read_only;
    /*
     * Too many extents to map at open (each mmap costs 7-12 us here):
     * data clusters are mapped on first touch by the uffd thread.
     */
    bool lazy;

    /* Estimated VMAs in our range (upper bound) and the budget. */
    _Atomic uint64_t vmas;
    uint64_t max_vmas;

    int uffd;               /* -1 for read-only monitors */
    int stop_efd;           /* tells both threads to exit */
    int pool_efd;           /* fault paths kick the pool thread */
    int pagemap_fd;         /* /proc/self/pagemap for PAGEMAP_SCAN */
    pthread_t uffd_thread;
    pthread_t pool_thread;
    bool uffd_running;
    bool pool_running;

    /* Serialises the uffd thread against snapshot operations. */
    pthread_mutex_t fault_lock;

    /*
     * Per virtual cluster, touched only by the uffd thread (and snapshot
     * operations under fault_lock): answered with write-protected zero
     * pages / mapped to its data cluster.  NORESERVE: pages appear only
     * where faults happen.
     */
    uint64_t *zero_map;
    uint64_t *mapped_map;
    size_t map_bytes;

    _Atomic int pool_error;     /* last reservation error (negative errno) */
    int slot;                   /* dispatcher slot */

    mon_stats st;
    char name[256];             /* image file name for messages */
};

/* Helpers shared by the files (pcow-monitor.c). */
uint64_t mon_now_ns(void);
void mon_latency_add(mon_latency *lat, uint64_t ns);
void mon_kick_pool(pcow_monitor *mon);
/* Async-signal-safe one-line message on stderr. */
void mon_report(pcow_monitor *mon, const char *what, uint64_t offset,
                int err);
/* Account VMAs a new mapping may create; false when over budget. */
bool mon_vma_budget(pcow_monitor *mon, uint64_t add);

/* Map [off, off + len) as the image says (pcow-monitor.c). */
int64_t mon_map_range(pcow_monitor *mon, uint64_t off, uint64_t len,
                      bool count_only, pcow_error *err);

/* pcow-monitor-uffd.c */
int mon_uffd_open(pcow_error *err);
int mon_uffd_setup(pcow_monitor *mon, pcow_error *err);
int mon_uffd_start(pcow_monitor *mon, pcow_error *err);

/* pcow-monitor-cow.c */
/* Fault handlers this thread runs now (pcow_monitor_in_handler) */
extern __thread volatile unsigned mon_handler_depth;
int mon_dispatcher_register(pcow_monitor *mon, pcow_error *err);
void mon_dispatcher_unregister(pcow_monitor *mon);
/* Wait until no SIGSEGV handler runs for @mon. */
void mon_dispatcher_drain(pcow_monitor *mon);

/* pcow-monitor-pool.c */
int mon_pool_start(pcow_monitor *mon, pcow_error *err);

#endif /* PCOW_MONITOR_INT_H */
