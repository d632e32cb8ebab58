/*
 * The pcow Image Monitor (public API)
 *
 * Maps a pcow image into one contiguous range of host virtual memory of the
 * image's virtual size, so that a guest can use it as RAM/PM with plain
 * loads and stores.  Writes to holes are expanded through userfaultfd;
 * writes to frozen (snapshot or base) data are copied on write from a
 * SIGSEGV handler; a thread keeps a pool of pre-allocated clusters.
 * Plain C and pthreads, no QEMU types.  Any number of monitors per process.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_MONITOR_H
#define PCOW_MONITOR_H

#include "pcow/pcow.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pcow_monitor pcow_monitor;

#define PCOW_MONITOR_READONLY (1u << 0) /* map everything read-only */
#define PCOW_MONITOR_NO_POOL  (1u << 1) /* no pre-allocation thread */
#define PCOW_MONITOR_NO_LOCK  (1u << 2) /* tests only: share the image */
/*
 * What a fault that finds no space (ENOSPC, EDQUOT) does.  Default
 * ("stall"): it is held -- the faulting thread waits, in the kernel
 * (userfaultfd) or in the SIGSEGV handler -- and retried every
 * PCOW_MONITOR_RETRY_MS and on pcow_monitor_retry(), until space returns.
 * With NOSPACE_FAIL, the access gets SIGSEGV as for any other failure.
 */
#define PCOW_MONITOR_NOSPACE_FAIL (1u << 3)
#define PCOW_MONITOR_RETRY_MS 200
/* Open with PCOW_OPEN_EXPECT_STAMP and opts->expect_stamp (pcow.h) */
#define PCOW_MONITOR_EXPECT_STAMP (1u << 4)

typedef struct pcow_monitor_opts {
    unsigned flags;
    uint32_t pool_size;         /* clusters kept ready; 0: default (8) */
    uint32_t cow_escalate;      /* copy whole cluster after this many units;
                                 * 0: default, UINT32_MAX: never */
    uint64_t max_vmas;          /* 0: derive from vm.max_map_count */
    pcow_persist_hook hook;     /* optional, for tests; also runs in the
                                 * fault handlers: async-signal-safe */
    void *hook_opaque;
    /*
     * NULL, or where to map: the caller's own reservation of at least the
     * virtual size (a private anonymous mapping, say), which the monitor
     * replaces (MAP_FIXED), owns from then on and unmaps at close.  QEMU
     * gives a RAM block its address before an incoming migration says
     * which image state to map.  Page aligned, else -EINVAL ("cannot map
     * at ADDR: the address is not page aligned").  If the open fails the
     * range is still the caller's (a private anonymous mapping) to unmap.
     */
    void *addr;
    uint64_t addr_len;          /* its length: the open fails (-EINVAL)
                                 * unless the virtual size is this */
    uint64_t expect_stamp;      /* with PCOW_MONITOR_EXPECT_STAMP */
} pcow_monitor_opts;

#define PCOW_HIST_BUCKETS 32    /* log2 buckets of nanoseconds */

typedef struct pcow_latency {
    uint64_t count;
    uint64_t total_ns;
    uint64_t max_ns;
    uint64_t buckets[PCOW_HIST_BUCKETS];  /* bucket i: [2^i, 2^(i+1)) ns */
} pcow_latency;

typedef struct pcow_monitor_stats {
    uint64_t expansions;
    uint64_t cow_unit_faults;       /* 4 KiB (unit) copies */
    uint64_t cow_cluster_faults;    /* whole-cluster copies */
    uint64_t hole_read_faults;
    uint64_t pool_hits;
    uint64_t pool_misses;
    uint64_t errors;                /* faults that could not be served */
    uint64_t vmas;                  /* mappings the monitor holds now */
    /*
     * Mappings the image needs mapped whole (pcow_mapping_count(), as
     * pcow-img info's "VMAs needed"), counted at open and at each revert,
     * and whether the monitor maps data clusters lazily, on first touch,
     * because that is more than it maps at open (32768).
     */
    uint64_t vmas_needed;
    bool lazy;
    /*
     * Out of space: faults held now (clusters waiting to be expanded plus
     * threads waiting in a copy-on-write), episodes so far (an episode
     * runs from the first held fault until none is left), and the guest
     * offset of the first fault held in the last episode.
     */
    uint64_t held_faults;
    uint64_t nospace_episodes;
    uint64_t nospace_offset;
    pcow_latency expansion_latency;
    pcow_latency cow_latency;
    pcow_latency hole_read_latency;
} pcow_monitor_stats;

int pcow_monitor_open(const char *path, const pcow_monitor_opts *opts,
                      pcow_monitor **out, pcow_error *err);
/* Joins threads, makes everything durable, clears the in-use flag. */
int pcow_monitor_close(pcow_monitor *mon, pcow_error *err);

void *pcow_monitor_base(pcow_monitor *mon);
uint64_t pcow_monitor_size(pcow_monitor *mon);
pcow_image *pcow_monitor_image(pcow_monitor *mon);
/* Reads /proc/self/maps to recount the mappings: for reports only. */
void pcow_monitor_get_stats(pcow_monitor *mon, pcow_monitor_stats *stats);
/* held_faults of the statistics, cheaply.  Signal-safe. */
uint64_t pcow_monitor_held_faults(pcow_monitor *mon);
/* nospace_episodes (and nospace_offset if @offset), cheaply.  Signal-safe. */
uint64_t pcow_monitor_nospace_episodes(pcow_monitor *mon, uint64_t *offset);
/* Percentile (0..100) of a histogram, in nanoseconds (bucket midpoint). */
uint64_t pcow_latency_percentile(const pcow_latency *lat, double pct);

/*
 * Live snapshot: the caller stops every thread that writes the range (QEMU
 * pauses vCPUs); in-flight faults are drained, the image snapshot is taken,
 * and what was writable is write-protected again.  *@id (if not NULL)
 * receives the new snapshot's id.
 */
int pcow_monitor_snapshot_create(pcow_monitor *mon, const char *name,
                                 uint64_t *id, pcow_error *err);
/* The same, with @vm (NULL: none) stored in the image with the snapshot */
int pcow_monitor_snapshot_create_vm(pcow_monitor *mon, const char *name,
                                    const pcow_vm_state *vm, uint64_t *id,
                                    pcow_error *err);
int pcow_monitor_snapshot_delete(pcow_monitor *mon, const char *name_or_id,
                                 pcow_error *err);

/*
 * Revert the mapped image to snapshot @name (exact name) and map it again
 * at the same address, with every thread that touches the range stopped
 * (QEMU's loadvm): the range then reads as the snapshot.  The snapshot
 * must have the mapping's virtual size.
 */
int pcow_monitor_snapshot_revert(pcow_monitor *mon, const char *name,
                                 pcow_error *err);

/*
 * The same for a clone and its origin (pcow_clone_reset): the range then
 * reads as the template's snapshot the clone was made from, and what the
 * clone wrote is gone from every page.  On a clone that wrote nothing it
 * frees nothing and maps the same.  The origin must have the mapping's
 * virtual size; -EINVAL for an image that is not a clone, -EROFS for a
 * read-only one.
 */
int pcow_monitor_clone_reset(pcow_monitor *mon, pcow_error *err);

/*
 * Hand the image over (pcow_release()) while the caller keeps every
 * writer of the range stopped: the pool thread is joined, guest writes
 * made durable, the image released; *@stamp (if not NULL) receives the
 * stamp it leaves.  The mapping stays readable.  A fault that would write
 * the image while it is released is held until pcow_monitor_reacquire().
 * pcow_monitor_reacquire() takes it back (pcow_reacquire(): -EBUSY,
 * -ESTALE) and restarts the pool thread.  Returns 0 or -errno, @err set.
 * While released, data mappings are read-only (a write faults and is
 * held), held writes count in held_faults but open no out-of-space
 * episode, and pcow_monitor_close() writes nothing to the image.
 * Release: -EROFS for a read-only monitor, -EBADF if already released,
 * else pcow_release()'s errors.  Reacquire: -EINVAL if not released.
 */
int pcow_monitor_release(pcow_monitor *mon, uint64_t *stamp,
                         pcow_error *err);
int pcow_monitor_reacquire(pcow_monitor *mon, pcow_error *err);
bool pcow_monitor_released(pcow_monitor *mon);

/* Make guest writes durable (msync of the writable mappings / PM flush). */
int pcow_monitor_flush(pcow_monitor *mon, pcow_error *err);

/*
 * A burst of first writes ahead (an incoming live migration into a fresh
 * image), durable only at its end: @on defers the expansions' commits
 * (pcow_defer_commits()) and keeps a larger reserve ready (up to 64
 * clusters, 4 MiB), so that a fault costs no flush of its own; off makes
 * the image durable with one barrier and goes back to pool_size.  Returns
 * 0 (nothing for a read-only monitor) or -errno with @err set; once that
 * barrier failed, off keeps failing with its error (pcow_defer_commits()).
 */
int pcow_monitor_defer_commits(pcow_monitor *mon, bool on, pcow_error *err);

/*
 * Prefault the mapping for reading (QEMU's prealloc=on): page tables for
 * every data extent, so the guest's first reads take no fault.  Holes stay
 * holes and frozen data is not copied (the image stays thin).  Returns 0
 * (also when the kernel has no MADV_POPULATE_READ, before 5.14), -errno
 * with @err set when the image's mapping cannot be read, or 1 with @err
 * set when the kernel failed to prefault (a hint only: the rest is left to
 * the first touch).
 */
int pcow_monitor_prefault(pcow_monitor *mon, pcow_error *err);

/*
 * An eventfd (non-blocking) that becomes readable when an out-of-space
 * episode starts and again when it ends; read it to reset it, then look at
 * held_faults and nospace_episodes in the statistics.  -1 for read-only
 * monitors.  Owned by the monitor: do not close it.
 */
int pcow_monitor_event_fd(pcow_monitor *mon);

/* Retry the held faults now (after space was freed).  Signal-safe. */
void pcow_monitor_retry(pcow_monitor *mon);

/*
 * True while the calling thread serves a fault: in the monitor's SIGSEGV
 * handler (not the previous action it chains to), or in a monitor's
 * userfaultfd thread handling events.  For tests: an interposed malloc
 * checks it to prove that the fault paths allocate nothing.
 */
bool pcow_monitor_in_handler(void);

#ifdef __cplusplus
}
#endif

#endif /* PCOW_MONITOR_H */
