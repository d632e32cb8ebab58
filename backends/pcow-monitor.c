/*
 * The pcow Image Monitor: lifecycle (open, close)
 *
 * Open builds a monitor in steps, each undone by free_monitor(): open the
 * image, plan the mapping (pcow-monitor-map.c), reserve and register the
 * range (pcow-monitor-uffd.c), map it, join the SIGSEGV dispatcher
 * (pcow-monitor-cow.c) and start the threads.  Close undoes it in the
 * order that keeps every handler away from a closed image.  Release and
 * reacquire hand the image over to another process and take it back
 * while the range stays mapped.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pcow-monitor-int.h"

#define MON_DEFAULT_POOL 8
#define MON_DEFAULT_ESCALATE 4
/* The reserve while commits are deferred: one fallocate and fdatasync
 * per half of it, at most 64 clusters (a reservation's batch), 4 MiB */
#define MON_BURST_BYTES (4u << 20)
#define MON_BURST_MAX 64u

static pcow_monitor *new_monitor(const char *path,
                                 const pcow_monitor_opts *opts)
{
    pcow_monitor *mon = calloc(1, sizeof(*mon));

    if (!mon) {
        return NULL;
    }
    mon->uffd = mon->stop_efd = mon->pool_efd = mon->pagemap_fd = -1;
    mon->retry_efd = mon->event_efd = -1;
    mon->held_lo = UINT64_MAX;
    mon->nospace_fail = opts->flags & PCOW_MONITOR_NOSPACE_FAIL;
    mon->slot = -1;
    pthread_mutex_init(&mon->fault_lock, NULL);
    snprintf(mon->name, sizeof(mon->name), "%s", path);
    mon->flags = opts->flags;
    mon->read_only = opts->flags & PCOW_MONITOR_READONLY;
    mon->pool_size = opts->pool_size ? opts->pool_size : MON_DEFAULT_POOL;
    atomic_store(&mon->pool_target, mon->pool_size);
    mon->cow_escalate = opts->cow_escalate ? opts->cow_escalate
                                           : MON_DEFAULT_ESCALATE;
    return mon;
}

/*
 * A failed open leaves the caller's reservation (opts->addr) a private
 * anonymous mapping again, the caller's to unmap; ours is unmapped.
 */
static void free_range(pcow_monitor *mon)
{
    if (!mon->base) {
        return;
    }
    if (mon->fixed_addr) {
        mmap(mon->base, mon->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
             MAP_NORESERVE | MAP_FIXED, -1, 0);
    } else {
        munmap(mon->base, mon->size);
    }
    mon->base = NULL;
}

static void free_monitor(pcow_monitor *mon)
{
    free_range(mon);
    if (mon->zero_map) {
        munmap(mon->zero_map, mon->map_bytes);
    }
    if (mon->mapped_map) {
        munmap(mon->mapped_map, mon->map_bytes);
    }
    if (mon->held_map) {
        munmap(mon->held_map, mon->map_bytes);
    }
    if (mon->uffd >= 0) {
        close(mon->uffd);
    }
    if (mon->stop_efd >= 0) {
        close(mon->stop_efd);
    }
    if (mon->pool_efd >= 0) {
        close(mon->pool_efd);
    }
    if (mon->retry_efd >= 0) {
        close(mon->retry_efd);
    }
    if (mon->event_efd >= 0) {
        close(mon->event_efd);
    }
    if (mon->pagemap_fd >= 0) {
        close(mon->pagemap_fd);
    }
    pthread_mutex_destroy(&mon->fault_lock);
    free(mon);
}

static int open_image(pcow_monitor *mon, const char *path,
                      const pcow_monitor_opts *opts, pcow_error *err)
{
    pcow_open_opts oo = { 0 };
    int r;

    oo.flags = mon->read_only ? 0 : PCOW_OPEN_RDWR;
    if (opts->flags & PCOW_MONITOR_NO_LOCK) {
        oo.flags |= PCOW_OPEN_NO_LOCK;
    }
    if (opts->flags & PCOW_MONITOR_EXPECT_STAMP) {
        oo.flags |= PCOW_OPEN_EXPECT_STAMP;
        oo.expect_stamp = opts->expect_stamp;
    }
    oo.hook = opts->hook;
    oo.hook_opaque = opts->hook_opaque;
    r = pcow_open(path, &oo, &mon->img, err);
    if (r < 0) {
        return r;
    }
    mon->size = pcow_virtual_size(mon->img);
    mon->cluster_size = pcow_cluster_size(mon->img);
    mon->cluster_bits = __builtin_ctz(mon->cluster_size);
    mon->nb_clusters = (mon->size + mon->cluster_size - 1) >>
                       mon->cluster_bits;
    mon->map_bytes = ((mon->nb_clusters + 63) / 64) * 8;
    return 0;
}

/* A per-cluster bitmap; pages appear where bits are set.  NULL if none. */
static uint64_t *new_map(pcow_monitor *mon)
{
    void *p = mmap(NULL, mon->map_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

    return p == MAP_FAILED ? NULL : p;
}

/*
 * The range, the eventfds, the per-cluster maps and the userfaultfd
 * registration.  Returns 0 or -errno (@err set where there is more to say
 * than the errno).
 */
static int reserve_range(pcow_monitor *mon, void *addr, uint64_t len,
                         pcow_error *err)
{
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

    if ((uintptr_t)addr % (uintptr_t)sysconf(_SC_PAGESIZE)) {
        return mon_error(mon, err, -EINVAL, "cannot map at %p: the address "
                         "is not page aligned", addr);
    }
    if (addr && len && len != mon->size) {
        /* MAP_FIXED past the reservation would replace others' mappings */
        return mon_error(mon, err, -EINVAL, "cannot map at %p: the image's "
                         "virtual size %" PRIu64 " is not the reservation's "
                         "%" PRIu64, addr, mon->size, len);
    }
    /* The caller's reservation: ours from here on */
    mon->fixed_addr = addr != NULL;
    mon->base = mmap(addr, mon->size, mon->read_only ? PROT_READ
                     : PROT_READ | PROT_WRITE,
                     flags | (addr ? MAP_FIXED : 0), -1, 0);
    if (mon->base == MAP_FAILED) {
        int e = errno;

        mon->base = NULL;
        return mon_error(mon, err, -e, "cannot reserve %" PRIu64 " bytes "
                         "of address space: %s", mon->size, strerror(e));
    }
    /* 4 KiB zero pages only: a huge zero page would bypass the scheme. */
    madvise(mon->base, mon->size, MADV_NOHUGEPAGE);
    mon->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    mon->pool_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (mon->stop_efd < 0 || mon->pool_efd < 0) {
        return -errno;
    }
    if (mon->read_only) {
        return 0;
    }
    mon->retry_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    mon->event_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (mon->retry_efd < 0 || mon->event_efd < 0) {
        return -errno;
    }
    mon->zero_map = new_map(mon);
    mon->mapped_map = new_map(mon);
    mon->held_map = new_map(mon);
    if (!mon->zero_map || !mon->mapped_map || !mon->held_map) {
        return -ENOMEM;
    }
    return mon_uffd_setup(mon, err);
}

static void stop_threads(pcow_monitor *mon)
{
    uint64_t one = 1;

    if (write(mon->stop_efd, &one, sizeof(one)) < 0) {
        /* cannot fail for a fresh eventfd */
    }
    if (mon->uffd_running) {
        pthread_join(mon->uffd_thread, NULL);
        mon->uffd_running = false;
    }
    if (mon->pool_running) {
        pthread_join(mon->pool_thread, NULL);
        mon->pool_running = false;
    }
}

/* The dispatcher slot and the threads, or none of them. */
static int start_serving(pcow_monitor *mon, pcow_error *err)
{
    int r = mon_dispatcher_register(mon, err);

    if (r < 0 || mon->read_only) {
        return r;
    }
    r = mon_uffd_start(mon, err);
    if (r == 0 && !(mon->flags & PCOW_MONITOR_NO_POOL)) {
        r = mon_pool_start(mon, err);
    }
    if (r < 0) {
        stop_threads(mon);
        mon_dispatcher_unregister(mon);
    }
    return r;
}

int pcow_monitor_open(const char *path, const pcow_monitor_opts *opts,
                      pcow_monitor **out, pcow_error *err)
{
    static const pcow_monitor_opts dflt;
    pcow_monitor *mon;
    int r;

    pcow_set_error(err, 0, "%s", "");
    *out = NULL;
    opts = opts ? opts : &dflt;
    mon = new_monitor(path, opts);
    if (!mon) {
        return -ENOMEM;
    }
    r = open_image(mon, path, opts, err);
    if (r < 0) {
        free_monitor(mon);
        return r;
    }
    r = mon_map_plan(mon, opts->max_vmas, err);
    if (r == 0) {
        r = reserve_range(mon, opts->addr, opts->addr_len, err);
    }
    if (r == 0) {
        r = mon_map_image(mon, err);
    }
    if (r == 0) {
        r = start_serving(mon, err);
    }
    if (r < 0) {
        if (err && !err->code) {
            mon_error(mon, err, r, "cannot map the image: %s", strerror(-r));
        }
        pcow_close(mon->img, NULL);
        free_monitor(mon);
        return r;
    }
    *out = mon;
    return 0;
}

int pcow_monitor_close(pcow_monitor *mon, pcow_error *err)
{
    int r, r2;

    if (!mon) {
        return 0;
    }
    stop_threads(mon);
    /* Released: the mappings are read-only and the image writes nothing */
    r = pcow_monitor_flush(mon, err);
    /* No handler may touch the image once it is closed. */
    mon_dispatcher_unregister(mon);
    munmap(mon->base, mon->size);
    mon->base = NULL;
    r2 = pcow_close(mon->img, r < 0 ? NULL : err);
    free_monitor(mon);
    return r < 0 ? r : r2;
}

/*
 * With fault_lock held and no COW handler running: a fault that comes
 * now sees @released and is held.  The image is released (or taken back)
 * after this, so the uffd thread and the handlers never find it changing
 * under them.
 */
static void set_released(pcow_monitor *mon, bool released)
{
    atomic_store(&mon->released, released);
    mon_dispatcher_drain(mon);
}

/* Guest writes durable, the image released, its data mapped read-only */
static int release_locked(pcow_monitor *mon, pcow_error *err)
{
    int r = pcow_monitor_flush(mon, err);

    if (r == 0) {
        r = pcow_release(mon->img, err);
    }
    if (r < 0) {
        return r;
    }
    /* A stray write now faults and is held instead of reaching the file */
    return mon_remap_data(mon, false, err);
}

int pcow_monitor_release(pcow_monitor *mon, uint64_t *stamp,
                         pcow_error *err)
{
    int r;

    if (mon->read_only) {
        return mon_error(mon, err, -EROFS, "image is read-only");
    }
    if (atomic_load(&mon->released)) {
        return mon_error(mon, err, -EBADF, "image is already handed over");
    }
    /* It allocates: its reserve goes back with the release's trim */
    mon_pool_stop(mon);
    pthread_mutex_lock(&mon->fault_lock);
    set_released(mon, true);
    r = release_locked(mon, err);
    if (r < 0 && !pcow_released(mon->img)) {
        set_released(mon, false);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    if (!atomic_load(&mon->released)) {
        /* Still ours: serve again what was held meanwhile */
        if (!(mon->flags & PCOW_MONITOR_NO_POOL)) {
            mon_pool_start(mon, NULL);
        }
        pcow_monitor_retry(mon);
    }
    if (r == 0 && stamp) {
        *stamp = pcow_stamp(mon->img);
    }
    return r;
}

int pcow_monitor_reacquire(pcow_monitor *mon, pcow_error *err)
{
    int r, r2 = 0;

    if (!atomic_load(&mon->released)) {
        return mon_error(mon, err, -EINVAL, "image was not handed over");
    }
    pthread_mutex_lock(&mon->fault_lock);
    r = pcow_reacquire(mon->img, err);
    if (r == 0) {
        /* Ours again: what the image owns is mapped writable again */
        r2 = mon_remap_data(mon, true, err);
        set_released(mon, false);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    if (r < 0) {
        return r;
    }
    if (!(mon->flags & PCOW_MONITOR_NO_POOL)) {
        r = mon_pool_start(mon, r2 < 0 ? NULL : err);
    }
    /* The faults held since the release: expand and copy them now */
    pcow_monitor_retry(mon);
    return r2 < 0 ? r2 : r;
}

int pcow_monitor_defer_commits(pcow_monitor *mon, bool on, pcow_error *err)
{
    uint32_t burst = MON_BURST_BYTES / mon->cluster_size;

    if (mon->read_only) {
        return 0;
    }
    burst = burst > MON_BURST_MAX ? MON_BURST_MAX : burst;
    burst = burst < mon->pool_size ? mon->pool_size : burst;
    atomic_store(&mon->pool_target, on ? burst : mon->pool_size);
    mon_kick_pool(mon);
    return pcow_defer_commits(mon->img, on, err);
}

bool pcow_monitor_released(pcow_monitor *mon)
{
    return atomic_load(&mon->released);
}

void *pcow_monitor_base(pcow_monitor *mon)
{
    return mon->base;
}

uint64_t pcow_monitor_size(pcow_monitor *mon)
{
    return mon->size;
}

pcow_image *pcow_monitor_image(pcow_monitor *mon)
{
    return mon->img;
}

int pcow_monitor_event_fd(pcow_monitor *mon)
{
    return mon->event_efd;
}

void pcow_monitor_retry(pcow_monitor *mon)
{
    uint64_t one = 1;

    if (mon->retry_efd >= 0 && write(mon->retry_efd, &one, sizeof(one)) < 0) {
        /* Counter saturated: a retry is due anyway. */
    }
    mon_cow_wake(mon);
}
