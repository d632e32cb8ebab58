/*
 * The pcow Image Monitor: holes, through userfaultfd
 *
 * Holes are private anonymous memory registered MISSING|WP (THP off).
 * A read of a hole gets UFFDIO_ZEROPAGE over the whole cluster, then
 * UFFDIO_WRITEPROTECT: no memory, nothing allocated in the image, and the
 * uffd-wp bit turns a later write into a WP event instead of a silent copy
 * into anonymous memory.  A write (MISSING|WRITE, or WP after a read)
 * expands the cluster (pcow_expand_cluster), maps it read-write over the
 * hole, populates the faulting page, wakes, then populates the rest.  A
 * write racing in between the ZEROPAGE and the WRITEPROTECT is found with
 * PAGEMAP_SCAN and its cluster expanded at once (copying what was written;
 * without PAGEMAP_SCAN a read gets one zero page by UFFDIO_COPY in WP
 * mode, atomic).  Why
 * this and not the alternatives (WP_UNPOPULATED markers, MAP_POPULATE,
 * kicking the pool before the wake), with the measurements that decided
 * it: docs/benchmarks.rst, "Image Monitor design measurements".
 *
 * One thread per monitor reads the uffd and handles events in order, so a
 * cluster is expanded once however many threads fault on it; duplicate and
 * late events find the cluster mapped (mapped_map) and only wake.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "pcow-monitor-int.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* PAGEMAP_SCAN (Linux 6.7); Debian 12's headers predate it. */
struct mon_page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct mon_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};

#define MON_PAGEMAP_SCAN _IOWR('f', 16, struct mon_pm_scan_arg)
#define MON_PAGE_IS_PRESENT (1 << 3)
#define MON_PAGE_IS_PFNZERO (1 << 5)

static int cluster_written(pcow_monitor *mon, char *addr, uint64_t len,
                           struct mon_page_region *vec, int nvec);

/* The last cluster may be shorter (virtual size is 4 KiB aligned). */
static inline uint64_t cluster_len(pcow_monitor *mon, uint64_t vc)
{
    uint64_t start = vc << mon->cluster_bits;

    return mon->size - start < mon->cluster_size ? mon->size - start
                                                 : mon->cluster_size;
}

static int uffd_open(pcow_error *err)
{
    int fd, dev;
    int flags = O_CLOEXEC | O_NONBLOCK;

    /* Full mode (not UFFD_USER_MODE_ONLY): KVM's gup faults must reach us. */
    fd = syscall(SYS_userfaultfd, flags);
    if (fd >= 0) {
        return fd;
    }
    dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        close(dev);
        if (fd >= 0) {
            return fd;
        }
    }
    return mon_error(NULL, err, -EPERM, "userfaultfd is not available to "
                     "this process (%s); grant access to /dev/userfaultfd "
                     "(chmod/ACL for the QEMU user) or set sysctl "
                     "vm.unprivileged_userfaultfd=1", strerror(errno));
}

int mon_uffd_setup(pcow_monitor *mon, pcow_error *err)
{
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP,
    };
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)mon->base, .len = mon->size },
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
    };
    int fd = uffd_open(err);
    int e;

    if (fd < 0) {
        return fd;
    }
    mon->uffd = fd;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        goto fail;
    }
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
        goto fail;
    }
    if (!(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT)) ||
        !(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE))) {
        errno = ENOTSUP;
        goto fail;
    }
    /* PAGEMAP_SCAN detects the ZEROPAGE/WRITEPROTECT race; probe it. */
    mon->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (mon->pagemap_fd >= 0) {
        struct mon_page_region vec[1];

        if (cluster_written(mon, mon->base, 4096, vec, 1) < 0) {
            close(mon->pagemap_fd);
            mon->pagemap_fd = -1;
        }
    }
    return 0;

fail:
    e = errno;
    return mon_error(mon, err, -e, "cannot register the image range with "
                     "userfaultfd (MISSING|WP on anonymous memory): %s",
                     strerror(e));
}

static void wake_range(pcow_monitor *mon, char *addr, uint64_t len)
{
    struct uffdio_range r = { .start = (uintptr_t)addr, .len = len };

    ioctl(mon->uffd, UFFDIO_WAKE, &r);
}

/*
 * Last resort for a hole we cannot expand (disk full, VMA budget): make it
 * read-only zero memory.  The blocked writer retries, gets SIGSEGV, and
 * the COW handler tries once more synchronously; if that fails too the
 * access gets its fatal signal -- never silent anonymous memory.
 */
static void fail_hole(pcow_monitor *mon, char *addr, uint64_t vc, int r)
{
    atomic_fetch_add(&mon->st.errors, 1);
    mon_report(mon, "cannot expand the hole at", vc << mon->cluster_bits, r);
    mon_map_anon(mon, vc << mon->cluster_bits, cluster_len(mon, vc),
                 PROT_READ);
    wake_range(mon, addr, cluster_len(mon, vc));
}

/*
 * No space for @vc's expansion (policy stall), or the image is released
 * (@r -EBADF): hold the fault.  Nothing is woken: the writers stay blocked
 * in the kernel, every other fault is served, and retry_held() expands
 * the cluster once space returns or the image is taken back.
 */
static void hold_hole(pcow_monitor *mon, uint64_t vc, int r)
{
    if (!test_bit64(mon->held_map, vc)) {
        set_bit64(mon->held_map, vc);
        atomic_fetch_add(&mon->uffd_held, 1);
        if (vc < mon->held_lo) {
            mon->held_lo = vc;
        }
    }
    if (mon_holds_space(mon, r)) {
        mon_nospace_begin(mon, "no space: holding the write fault at",
                          vc << mon->cluster_bits);
    }
}

/*
 * Give virtual cluster @vc its data cluster and map it read-write.
 * @copy (@ncopy regions) are anonymous pages that a racing writer put into
 * a zero page: copy them into the new cluster first.  Only those: touching
 * a missing page of the range here would wait for this very thread.
 */
static void expand(pcow_monitor *mon, uint64_t vc, uint64_t fault_addr,
                   const struct mon_page_region *copy, int ncopy)
{
    char *addr = mon->base + (vc << mon->cluster_bits);
    uint64_t len = cluster_len(mon, vc);
    uint64_t t0 = mon_now_ns();
    uint64_t foff;
    bool hit;
    void *p;
    int r;

    if (test_bit64(mon->mapped_map, vc)) {
        wake_range(mon, addr, len);
        return;
    }
    if (!mon_vma_budget(mon, 2)) {
        fail_hole(mon, addr, vc, -ENOMEM);
        return;
    }
    hit = pcow_reserve_count(mon->img) > 0;
    /* Released: the image is another process's until taken back */
    r = atomic_load(&mon->released) ? -EBADF
                                    : pcow_expand_cluster(mon->img, vc, &foff);
    if (mon_holds(mon, r)) {
        /* Nothing mapped: a long stall's retries must not use it up */
        mon_vma_unbudget(mon, 2);
        hold_hole(mon, vc, r);
        return;
    }
    mon_pool_count(mon, hit);
    if (r < 0 && r != -EEXIST) {
        fail_hole(mon, addr, vc, r);
        return;
    }
    if (ncopy > 0) {
        int i;

        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
                 pcow_fd(mon->img), foff);
        if (p == MAP_FAILED) {
            fail_hole(mon, addr, vc, -errno);
            return;
        }
        for (i = 0; i < ncopy; i++) {
            uint64_t start = copy[i].start - (uintptr_t)addr;

            memcpy((char *)p + start, addr + start,
                   copy[i].end - copy[i].start);
        }
        munmap(p, len);
    }
    p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
             pcow_fd(mon->img), foff);
    if (p == MAP_FAILED) {
        fail_hole(mon, addr, vc, -errno);
        return;
    }
    /* The faulting page now, the rest of the cluster after the wake. */
    if (fault_addr) {
        madvise((void *)(uintptr_t)(fault_addr & ~4095ull), 4096,
                MADV_POPULATE_WRITE);
    }
    set_bit64(mon->mapped_map, vc);
    /* Count before the wake, so the woken thread sees its own fault. */
    if (r == 0) {
        atomic_fetch_add(&mon->st.expansions, 1);
        mon_latency_add(&mon->st.expansion_latency, mon_now_ns() - t0);
    }
    wake_range(mon, addr, len);
    /*
     * Page tables for the rest of the cluster, so the guest does not take
     * a fault per page: later, when no fault waits (populate_idle()), not
     * before the next fault, which would wait for it (docs/benchmarks.rst,
     * "Image Monitor design measurements").  A full queue forgets its oldest
     * cluster: the guest's own accesses fault those pages in.
     */
    mon->populate_q[mon->populate_top] = vc << mon->cluster_bits;
    mon->populate_top = (mon->populate_top + 1) % MON_POPULATE_Q;
    if (mon->populate_n < MON_POPULATE_Q) {
        mon->populate_n++;
    }
    /* Refill after the wake: its mmap/msync would contend with ours. */
    mon_kick_pool(mon);
}

/*
 * The uffd thread has no event to read: populate the next MON_POPULATE_STEP
 * bytes of the newest queued cluster, then look for events again, so that
 * a fault waits for one step at most (racing the cluster's own user is
 * harmless).  Only while the cluster is still mapped to its data (a revert
 * clears mapped_map and puts a hole there, whose population would wait for
 * this very thread); a cluster frozen since is read-only, and
 * MADV_POPULATE_WRITE fails on it, nothing more.
 */
static void populate_idle(pcow_monitor *mon)
{
    pthread_mutex_lock(&mon->fault_lock);
    mon_handler_depth++;
    if (mon->populate_n > 0) {
        unsigned newest = (mon->populate_top + MON_POPULATE_Q - 1) %
                          MON_POPULATE_Q;
        uint64_t *at = &mon->populate_q[newest];
        uint64_t vc = *at >> mon->cluster_bits;
        uint64_t end = (vc << mon->cluster_bits) + cluster_len(mon, vc);
        uint64_t len = end - *at < MON_POPULATE_STEP ? end - *at
                                                      : MON_POPULATE_STEP;

        if (test_bit64(mon->mapped_map, vc)) {
            madvise(mon->base + *at, len, MADV_POPULATE_WRITE);
        }
        *at += len;
        if (*at >= end || !test_bit64(mon->mapped_map, vc)) {
            mon->populate_top = newest;
            mon->populate_n--;
        }
    }
    mon_handler_depth--;
    pthread_mutex_unlock(&mon->fault_lock);
}

/*
 * Pages of the cluster that are present and not the zero page: written
 * by a racing thread before the WRITEPROTECT.  Returns the number of
 * regions in @vec (0: none), or -errno.
 */
static int cluster_written(pcow_monitor *mon, char *addr, uint64_t len,
                           struct mon_page_region *vec, int nvec)
{
    struct mon_pm_scan_arg arg = {
        .size = sizeof(arg),
        .start = (uintptr_t)addr,
        .end = (uintptr_t)addr + len,
        .vec = (uintptr_t)vec,
        .vec_len = nvec,
        .category_inverted = MON_PAGE_IS_PFNZERO,
        .category_mask = MON_PAGE_IS_PRESENT | MON_PAGE_IS_PFNZERO,
        .return_mask = MON_PAGE_IS_PRESENT | MON_PAGE_IS_PFNZERO,
    };
    int n = ioctl(mon->pagemap_fd, MON_PAGEMAP_SCAN, &arg);

    return n < 0 ? -errno : n;
}

/*
 * Fallback without PAGEMAP_SCAN (kernels before 6.7): install the faulting
 * page as a private zero page already write-protected (UFFDIO_COPY
 * MODE_WP, atomic, so there is no race), at the cost of a host page per
 * page read.
 */
static void hole_read_copy(pcow_monitor *mon, uint64_t addr)
{
    static const char zero[4096] __attribute__((aligned(4096)));
    struct uffdio_copy cp = {
        .dst = addr & ~4095ull,
        .src = (uintptr_t)zero,
        .len = 4096,
        .mode = UFFDIO_COPY_MODE_WP,
    };

    if (ioctl(mon->uffd, UFFDIO_COPY, &cp) < 0) {
        /* EEXIST: another event populated it; wake the waiters. */
        wake_range(mon, (char *)(uintptr_t)(addr & ~4095ull), 4096);
    }
}

static void hole_read(pcow_monitor *mon, uint64_t vc, uint64_t fault_addr)
{
    char *addr = mon->base + (vc << mon->cluster_bits);
    uint64_t len = cluster_len(mon, vc);
    uint64_t t0 = mon_now_ns();
    struct uffdio_zeropage zp = {
        .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
    };
    struct uffdio_writeprotect wp = {
        .range = { .start = (uintptr_t)addr, .len = len },
        .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };
    struct mon_page_region written[16];
    uint64_t done = 0;
    int n;

    if (test_bit64(mon->mapped_map, vc) || test_bit64(mon->zero_map, vc)) {
        wake_range(mon, addr, len);
        return;
    }
    if (mon->pagemap_fd < 0) {
        hole_read_copy(mon, fault_addr);
        goto out;
    }
    /* Pages already present (EEXIST) are skipped page by page. */
    while (done < len) {
        zp.range.start = (uintptr_t)addr + done;
        zp.range.len = len - done;
        zp.zeropage = 0;
        if (ioctl(mon->uffd, UFFDIO_ZEROPAGE, &zp) == 0) {
            break;
        }
        if (errno == EAGAIN && zp.zeropage > 0) {
            done += zp.zeropage;
        } else if (errno == EEXIST || errno == EAGAIN) {
            done += 4096;
        } else {
            break;
        }
    }
    ioctl(mon->uffd, UFFDIO_WRITEPROTECT, &wp);
    set_bit64(mon->zero_map, vc);
    n = cluster_written(mon, addr, len, written, 16);
    if (n != 0) {
        /* n < 0 cannot happen (probed at setup); expanding is safe. */
        expand(mon, vc, 0, written, n > 0 ? n : 0);
        return;
    }
out:
    atomic_fetch_add(&mon->st.hole_read_faults, 1);
    mon_latency_add(&mon->st.hole_read_latency, mon_now_ns() - t0);
    wake_range(mon, addr, len);
}

/*
 * Lazy monitors: the first touch of a cluster that is not a pure hole
 * maps it as the image says (data read-write or read-only, base zeros).
 * Returns false for a hole, which the normal paths handle.
 */
static bool map_lazy(pcow_monitor *mon, uint64_t vc)
{
    char *addr = mon->base + (vc << mon->cluster_bits);
    uint64_t len = cluster_len(mon, vc);
    pcow_extent ext;

    if (pcow_get_extent(mon->img, vc << mon->cluster_bits, len, &ext) < 0 ||
        (ext.kind == PCOW_EXTENT_HOLE && ext.length >= len)) {
        return false;
    }
    if (!mon_vma_budget(mon, 3) ||
        mon_map_range(mon, vc << mon->cluster_bits, len, NULL) < 0) {
        /* Inaccessible, never zeros over data: the access gets SIGSEGV. */
        atomic_fetch_add(&mon->st.errors, 1);
        mon_report(mon, "cannot map the data at", vc << mon->cluster_bits,
                   -ENOMEM);
        mon_map_anon(mon, vc << mon->cluster_bits, len, PROT_NONE);
        wake_range(mon, addr, len);
        return true;
    }
    set_bit64(mon->mapped_map, vc);
    wake_range(mon, addr, len);
    return true;
}

static void handle_fault(pcow_monitor *mon, const struct uffd_msg *msg)
{
    uint64_t addr = msg->arg.pagefault.address;
    uint64_t off = addr - (uintptr_t)mon->base;
    uint64_t vc;

    if (addr < (uintptr_t)mon->base || off >= mon->size) {
        return;
    }
    vc = off >> mon->cluster_bits;
    if (mon->lazy && !test_bit64(mon->mapped_map, vc) &&
        !test_bit64(mon->zero_map, vc) && map_lazy(mon, vc)) {
        return;
    }
    if (msg->arg.pagefault.flags &
        (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) {
        /* Held: retry_held() expands it and wakes this writer too */
        if (!test_bit64(mon->held_map, vc)) {
            expand(mon, vc, addr, NULL, 0);
        }
    } else {
        hole_read(mon, vc, addr);
    }
}

/*
 * Expand the held clusters, in order, until one finds no space again (the
 * rest would not either).  fault_lock.
 */
static void retry_held(pcow_monitor *mon)
{
    struct mon_page_region written[16];
    uint64_t vc;

    for (vc = mon->held_lo; vc < mon->nb_clusters &&
         atomic_load(&mon->uffd_held); vc++) {
        int n = 0;

        if (!mon->held_map[vc / 64]) {
            vc |= 63;
            continue;
        }
        if (!test_bit64(mon->held_map, vc)) {
            continue;
        }
        clear_bit64(mon->held_map, vc);
        atomic_fetch_sub(&mon->uffd_held, 1);
        /* A read made it zero pages first: keep what a racer wrote. */
        if (test_bit64(mon->zero_map, vc) && mon->pagemap_fd >= 0) {
            n = cluster_written(mon, mon->base + (vc << mon->cluster_bits),
                                cluster_len(mon, vc), written, 16);
        }
        expand(mon, vc, 0, written, n > 0 ? n : 0);
        if (test_bit64(mon->held_map, vc)) {
            break;
        }
    }
    if (!atomic_load(&mon->uffd_held)) {
        mon->held_lo = UINT64_MAX;
    }
}

/* Timer tick or pcow_monitor_retry() during an out-of-space episode. */
static void retry_tick(pcow_monitor *mon)
{
    uint64_t v;
    /* Drain a kick; EAGAIN when the timer fired instead */
    ssize_t r = read(mon->retry_efd, &v, sizeof(v));

    (void)r;
    pthread_mutex_lock(&mon->fault_lock);
    mon_handler_depth++;
    retry_held(mon);
    mon_handler_depth--;
    pthread_mutex_unlock(&mon->fault_lock);
    mon_cow_wake(mon);
    mon_nospace_end(mon);
}

static void *uffd_thread(void *opaque)
{
    pcow_monitor *mon = opaque;
    struct uffd_msg msgs[16];
    struct pollfd pfd[3] = {
        { .fd = mon->uffd, .events = POLLIN },
        { .fd = mon->stop_efd, .events = POLLIN },
        { .fd = mon->retry_efd, .events = POLLIN },
    };

    uint64_t next_retry = 0;

    for (;;) {
        int timeout = -1;
        ssize_t n;
        int i;

        /* While faults wait for space: retry on time, however busy. */
        if (atomic_load(&mon->episode)) {
            uint64_t now = mon_now_ns();

            if (next_retry && now >= next_retry) {
                retry_tick(mon);
                now = mon_now_ns();
                next_retry = 0;
            }
            if (!next_retry) {
                next_retry = now + PCOW_MONITOR_RETRY_MS * 1000000ull;
            }
            timeout = (next_retry - now) / 1000000 + 1;
        }
        /* Queued populations: look for events without sleeping. */
        if (mon->populate_n > 0) {
            timeout = 0;
        }
        if (poll(pfd, 3, timeout) < 0) {
            continue;
        }
        if (pfd[1].revents) {
            break;
        }
        if (pfd[2].revents) {
            retry_tick(mon);
        }
        if (!pfd[0].revents) {
            if (mon->populate_n > 0) {
                populate_idle(mon);
            }
            continue;
        }
        n = read(mon->uffd, msgs, sizeof(msgs));
        if (n <= 0) {
            continue;
        }
        pthread_mutex_lock(&mon->fault_lock);
        /*
         * The faulting threads are blocked wherever they touched the
         * range, maybe holding locks: allocate nothing here either.
         */
        mon_handler_depth++;
        for (i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
                handle_fault(mon, &msgs[i]);
            }
        }
        mon_handler_depth--;
        pthread_mutex_unlock(&mon->fault_lock);
    }
    return NULL;
}

int mon_uffd_register(pcow_monitor *mon, pcow_error *err)
{
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)mon->base, .len = mon->size },
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
    };

    if (ioctl(mon->uffd, UFFDIO_REGISTER, &reg) < 0) {
        int e = errno;

        return mon_error(mon, err, -e, "cannot register the image range "
                         "with userfaultfd again: %s", strerror(e));
    }
    /* Writers held for space sleep on the old range: fault again. */
    wake_range(mon, mon->base, mon->size);
    return 0;
}

int mon_uffd_start(pcow_monitor *mon, pcow_error *err)
{
    int r = pthread_create(&mon->uffd_thread, NULL, uffd_thread, mon);

    if (r) {
        return mon_error(mon, err, -r, "cannot start the expansion thread: "
                         "%s", strerror(r));
    }
    mon->uffd_running = true;
    return 0;
}
