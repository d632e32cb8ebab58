/*
 * The pcow Image Monitor: internal interfaces
 *
 * One job per file; each calls only files below it in this list, so the
 * monitor has no call cycle:
 *
 * pcow-monitor.c           lifecycle: open, close, handover, accessors
 * pcow-monitor-snapshot.c  live snapshots (create, delete, revert)
 * pcow-monitor-uffd.c      userfaultfd: hole reads, expansion, lazy mapping
 * pcow-monitor-cow.c       the process-wide SIGSEGV dispatcher and COW
 * pcow-monitor-pool.c      the cluster pre-allocation thread
 * pcow-monitor-map.c       the mapping: budget, map, remap, flush, prefault
 * pcow-monitor-stats.c     statistics, reports, errors, /proc parsing
 *
 * Contracts below: "signal-safe" means async-signal-safe (callable from
 * the SIGSEGV handler and the uffd thread, which must not allocate);
 * "fault_lock" means the caller holds mon->fault_lock; nothing here makes
 * data durable unless it says so.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_MONITOR_INT_H
#define PCOW_MONITOR_INT_H

#include <errno.h>
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

/* Expanded clusters whose rest is populated when the uffd thread idles,
 * MON_POPULATE_STEP bytes at a time */
#define MON_POPULATE_Q 64
#define MON_POPULATE_STEP (16 * 1024)

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
    /* Clusters the pool keeps ready now: pool_size, more while commits
     * are deferred (a burst of expansions: pcow_monitor_defer_commits) */
    _Atomic uint32_t pool_target;
    uint32_t cow_escalate;
    bool read_only;
    /*
     * Too many extents to map at open (an mmap costs microseconds):
     * data clusters are mapped on first touch by the uffd thread.
     */
    bool lazy;

    /* Estimated VMAs in our range (upper bound) and the budget. */
    _Atomic uint64_t vmas;
    uint64_t max_vmas;
    uint64_t vmas_needed;   /* pcow_mapping_count at open or revert */

    int uffd;               /* -1 for read-only monitors */
    int stop_efd;           /* tells both threads to exit */
    int pool_efd;           /* fault paths kick the pool thread */
    int pagemap_fd;         /* /proc/self/pagemap for PAGEMAP_SCAN */
    pthread_t uffd_thread;
    pthread_t pool_thread;
    bool uffd_running;
    bool pool_running;
    _Atomic bool pool_stop;     /* the pool thread exits (a release) */
    bool fixed_addr;            /* mapped at the caller's opts->addr */
    /*
     * Handed over (pcow_monitor_release): the image is another process's.
     * Faults that would write it are held (as for space) until
     * pcow_monitor_reacquire(); data is mapped read-only meanwhile.
     */
    _Atomic bool released;

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

    /*
     * Out of space (policy stall): clusters whose expansion is held
     * (held_map, touched by the uffd thread only, from held_lo on), the
     * threads waiting in a COW (*cow_held, in the dispatcher's static
     * slot: a waiter may outlive the monitor), and the episode.
     */
    bool nospace_fail;
    int retry_efd;              /* wakes the uffd thread to retry now */
    int event_efd;              /* episode start/end, for the user */
    uint64_t *held_map;
    uint64_t held_lo;

    /*
     * Expanded clusters whose page tables the uffd thread fills in later,
     * when no fault waits (pcow-monitor-uffd.c): a ring of the guest
     * offsets where each one's population goes on, the newest just before
     * populate_top; uffd thread only, under fault_lock.
     */
    uint64_t populate_q[MON_POPULATE_Q];
    unsigned populate_top;
    unsigned populate_n;
    _Atomic uint64_t uffd_held;
    _Atomic uint32_t *cow_held;
    _Atomic bool episode;
    _Atomic uint64_t episodes;
    _Atomic uint64_t episode_offset;
    int slot;                   /* dispatcher slot */

    mon_stats st;
    char name[256];             /* image file name for messages */
};

static inline bool test_bit64(const uint64_t *map, uint64_t i)
{
    return map[i / 64] & (1ull << (i % 64));
}

static inline void set_bit64(uint64_t *map, uint64_t i)
{
    map[i / 64] |= 1ull << (i % 64);
}

static inline void clear_bit64(uint64_t *map, uint64_t i)
{
    map[i / 64] &= ~(1ull << (i % 64));
}

/* pcow-monitor-stats.c: calls nothing else of the monitor */
/* Monotonic clock.  Signal-safe. */
uint64_t mon_now_ns(void);
/* Count one latency in @lat.  Signal-safe, lock-free. */
void mon_latency_add(mon_latency *lat, uint64_t ns);
/* One line "pcow-monitor: IMAGE: WHAT guest offset 0x..: ERR" on stderr.
 * Signal-safe (its own formatter; no stdio, no strerror). */
void mon_report(pcow_monitor *mon, const char *what, uint64_t offset,
                int err);
/* pcow_set_file_error() (code, kind, message, err->what) with the image's
 * name, pcow_set_error() if @mon is NULL; nothing if @err is NULL.  Returns
 * @code.  Not signal-safe (vsnprintf). */
int mon_error(pcow_monitor *mon, pcow_error *err, int code,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* A decimal number from a /proc file, @dflt if unreadable.  Not
 * signal-safe (strtoull). */
uint64_t mon_proc_read_u64(const char *path, uint64_t dflt);
/* Mappings of this process starting in [lo, hi), all with lo == hi == 0
 * (/proc/self/maps).  Not signal-safe (64 KiB of stack). */
uint64_t mon_proc_count_maps(uintptr_t lo, uintptr_t hi);

/* Is @r an out-of-space error that the policy holds (stall)? */
static inline bool mon_holds_space(pcow_monitor *mon, int r)
{
    return !mon->nospace_fail && (r == -ENOSPC || r == -EDQUOT);
}
/* Is @r the error of a released image (-EBADF): held until reacquired? */
static inline bool mon_holds_released(pcow_monitor *mon, int r)
{
    return r == -EBADF && atomic_load(&mon->released);
}
/* Is the fault that failed with @r held (space or a release)?
 * Signal-safe. */
static inline bool mon_holds(pcow_monitor *mon, int r)
{
    return mon_holds_space(mon, r) || mon_holds_released(mon, r);
}
/* A fault served with (@hit) or without a reserved cluster.  Signal-safe. */
static inline void mon_pool_count(pcow_monitor *mon, bool hit)
{
    atomic_fetch_add(hit ? &mon->st.pool_hits : &mon->st.pool_misses, 1);
}
/* A fault at @offset is held for space: opens the episode unless one is
 * open (one report, the user's eventfd, the uffd thread's retry timer).
 * Signal-safe. */
void mon_nospace_begin(pcow_monitor *mon, const char *what, uint64_t offset);
/* Ends the episode if one is open and no fault is held.  Signal-safe. */
void mon_nospace_end(pcow_monitor *mon);

/* pcow-monitor-map.c: calls stats */
/* Account @add VMAs a new mapping may create; false when over budget.
 * Signal-safe, lock-free. */
bool mon_vma_budget(pcow_monitor *mon, uint64_t add);
/* Give back @sub of what mon_vma_budget counted for a mapping not made.
 * Signal-safe, lock-free. */
void mon_vma_unbudget(pcow_monitor *mon, uint64_t sub);
/* Read-only (or @prot) anonymous memory over [off, off + len).  Returns
 * 0 or -errno.  Signal-safe (one mmap). */
int mon_map_anon(pcow_monitor *mon, uint64_t off, uint64_t len, int prot);
/* Map [off, off + len) as the image says (pcow_mapping_count counts the
 * same mappings without making them).
 * Returns the number of mappings or -errno (@err set if not NULL).
 * Signal-safe with @err NULL (the uffd thread's lazy mapping); the caller
 * serialises it against remaps (open, or the uffd thread). */
int64_t mon_map_range(pcow_monitor *mon, uint64_t off, uint64_t len,
                      pcow_error *err);
/* At open: the VMA budget (@max_vmas, 0: from vm.max_map_count), the
 * mappings the image needs against it, and eager or lazy mapping.
 * Returns 0 or -errno with @err set.  Not signal-safe. */
int mon_map_plan(pcow_monitor *mon, uint64_t max_vmas, pcow_error *err);
/* At open, after mon_map_plan and the uffd registration: map the image
 * (nothing when lazy).  Returns 0 or -errno with @err set. */
int mon_map_image(pcow_monitor *mon, pcow_error *err);
/* Give every data mapping the image's writability now: after a snapshot
 * everything mapped is frozen; after a delete some becomes ours.
 * fault_lock.  Returns 0 or -errno with @err set. */
int mon_remap_data(pcow_monitor *mon, bool make_writable, pcow_error *err);

/* After a revert: the whole range one hole again (unregistered: the
 * caller registers it with mon_uffd_register, then maps it with
 * mon_map_image), the per-cluster maps cleared, the mappings counted
 * against the budget.  fault_lock.  Returns 0 or -errno with @err set. */
int mon_map_reset(pcow_monitor *mon, pcow_error *err);

/* pcow-monitor-pool.c: calls stats */
/* Wake the pre-allocation thread if the reserve runs low.  Signal-safe
 * (an eventfd write). */
void mon_kick_pool(pcow_monitor *mon);
/* Start the pre-allocation thread.  Returns 0 or -errno with @err set. */
int mon_pool_start(pcow_monitor *mon, pcow_error *err);
/* Stop it and wait until it exits (a reservation in flight completes);
 * nothing if it does not run.  Not signal-safe. */
void mon_pool_stop(pcow_monitor *mon);

/* pcow-monitor-cow.c: calls map, pool, stats */
/* Fault handlers this thread runs now (pcow_monitor_in_handler); read in
 * the SIGSEGV handler, so never through __tls_get_addr(). */
#define MON_TLS_IE __attribute__((tls_model("initial-exec")))
extern __thread volatile unsigned mon_handler_depth MON_TLS_IE;
/* Install the SIGSEGV handler once per process and take a slot for @mon.
 * Returns 0 or -errno with @err set.  Takes the install lock. */
int mon_dispatcher_register(pcow_monitor *mon, pcow_error *err);
/* Leave the slot and wait for the handlers running for @mon. */
void mon_dispatcher_unregister(pcow_monitor *mon);
/* Wake the threads waiting for space in a COW, to retry now.
 * Signal-safe (a futex wake). */
void mon_cow_wake(pcow_monitor *mon);
/* Wait until no SIGSEGV handler runs for @mon (sleeps). */
void mon_dispatcher_drain(pcow_monitor *mon);

/* pcow-monitor-uffd.c: calls cow (handler depth), pool, map, stats */
/* Open a userfaultfd and register the reserved range MISSING|WP.
 * Returns 0 or -errno with @err set. */
int mon_uffd_setup(pcow_monitor *mon, pcow_error *err);
/* Register the whole range (MISSING|WP) again after it was replaced by
 * mon_map_reset().  Returns 0 or -errno with @err set. */
int mon_uffd_register(pcow_monitor *mon, pcow_error *err);
/* Start the thread that serves the faults (takes fault_lock per batch).
 * Returns 0 or -errno with @err set. */
int mon_uffd_start(pcow_monitor *mon, pcow_error *err);

#endif /* PCOW_MONITOR_INT_H */
