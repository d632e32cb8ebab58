/*
 * The pcow Image Monitor: SIGSEGV dispatcher and copy-on-write
 *
 * The only process-wide state of the monitor: a fixed-size, lock-free
 * registry of monitor ranges and the SIGSEGV action that was installed
 * before ours.  A write to a read-only cluster (snapshot-frozen, base, or
 * a not yet copied unit) raises SIGSEGV in the writing thread; the handler
 * copies the COW unit (or the whole cluster, see cow_escalate) through
 * pcow_cow(), maps the now writable data read-write over the place and
 * returns, so the store is retried.  Everything here is async-signal-safe:
 * atomics, syscalls and libpcow's signal-safe runtime calls only.
 *
 * Faults outside every registered range, reads, and faults we cannot serve
 * go to the previous action, so a real crash still crashes.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "pcow-monitor-int.h"

#define MON_SLOTS 64

typedef struct mon_slot {
    _Atomic(pcow_monitor *) mon;
    /* Handlers running on this slot; unregister waits for 0. */
    _Atomic int inflight;
    /*
     * Handlers waiting for space (not in inflight while they sleep, so
     * that snapshots and close do not wait for space), and the futex word
     * that mon_cow_wake() bumps to make them retry.
     */
    _Atomic uint32_t held;
    _Atomic uint32_t gen;
} mon_slot;

static mon_slot slots[MON_SLOTS];
static struct sigaction prev_action;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static bool installed;

/*
 * Fault handlers running in this thread (segv_handler, nested; the uffd
 * thread's event handling), so that a test can prove that nothing they
 * call allocates (pcow_monitor_in_handler).  Initial-exec: the handler
 * reaches it with one %fs-relative access, never through __tls_get_addr(),
 * which may allocate (a module loaded later, a thread's first access).
 */
__thread volatile unsigned mon_handler_depth MON_TLS_IE;

bool pcow_monitor_in_handler(void)
{
    return mon_handler_depth > 0;
}

/* Out of line: scripts/pcow-sigsafe.py allows its indirect call by name */
static __attribute__((noinline)) void chain(int sig, siginfo_t *info,
                                           void *ctx)
{
    struct sigaction dfl;

    if (prev_action.sa_flags & SA_SIGINFO) {
        prev_action.sa_sigaction(sig, info, ctx);
        return;
    }
    if (prev_action.sa_handler != SIG_DFL &&
        prev_action.sa_handler != SIG_IGN) {
        prev_action.sa_handler(sig);
        return;
    }
    /*
     * Default action (the kernel also forces it for an ignored fault):
     * reset and let the fault happen again, or re-raise one that was sent
     * (it stays pending until this handler returns).
     */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    if (info->si_code <= 0) {
        raise(sig);
    }
}

static bool is_write_fault(void *ctx)
{
#if defined(__x86_64__)
    ucontext_t *uc = ctx;

    return uc->uc_mcontext.gregs[REG_ERR] & 2;
#elif defined(__aarch64__)
    /* ESR is in the context's extension records; assume a write. */
    return true;
#else
    return true;
#endif
}

/*
 * Returns 0 when the fault was served and the access can be retried, else
 * -errno (reported and counted, unless the policy holds it).
 */
static int cow_fault(pcow_monitor *mon, uint64_t off)
{
    uint64_t t0 = mon_now_ns();
    pcow_extent ext;
    bool whole, hit;
    void *p;
    int r;

    if (mon->read_only) {
        atomic_fetch_add(&mon->st.errors, 1);
        mon_report(mon, "write to a read-only image at", off, -EROFS);
        return -EROFS;
    }
    if (atomic_load(&mon->released)) {
        return -EBADF;      /* held until the image is taken back */
    }
    whole = mon->cow_escalate != UINT32_MAX &&
            pcow_cow_units_copied(mon->img, off) >= mon->cow_escalate;
    hit = pcow_reserve_count(mon->img) > 0;
    memset(&ext, 0, sizeof(ext));
    r = pcow_cow(mon->img, off, whole, &ext);
    if (!mon_holds(mon, r)) {
        mon_pool_count(mon, hit);     /* not once per retry of a held one */
    }
    if (r == -EEXIST && ext.length == 0) {
        /* Another thread copied it and maps it now: retry the store. */
        return 0;
    }
    if (r < 0 && r != -EEXIST) {
        if (!mon_holds(mon, r)) {
            atomic_fetch_add(&mon->st.errors, 1);
            mon_report(mon, "cannot copy-on-write", off, r);
        }
        return r;
    }
    if (ext.kind != PCOW_EXTENT_DATA || !ext.writable || ext.length == 0 ||
        ext.offset > off || off - ext.offset >= ext.length) {
        atomic_fetch_add(&mon->st.errors, 1);
        mon_report(mon, "copy-on-write returned a bad extent at", off, -EIO);
        return -EIO;
    }
    if (!mon_vma_budget(mon, 2)) {
        atomic_fetch_add(&mon->st.errors, 1);
        mon_report(mon, "too many mappings (raise vm.max_map_count) at",
                   off, -ENOMEM);
        return -ENOMEM;
    }
    p = mmap(mon->base + ext.offset, ext.length, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_FIXED | MAP_POPULATE, ext.fd, ext.file_offset);
    if (p == MAP_FAILED) {
        atomic_fetch_add(&mon->st.errors, 1);
        r = -errno;
        mon_report(mon, "cannot map the copied data at", off, r);
        return r;
    }
    mon_kick_pool(mon);
    if (r == 0) {
        if (whole) {
            atomic_fetch_add(&mon->st.cow_cluster_faults, 1);
        } else {
            atomic_fetch_add(&mon->st.cow_unit_faults, 1);
        }
        mon_latency_add(&mon->st.cow_latency, mon_now_ns() - t0);
    }
    return 0;
}

void mon_cow_wake(pcow_monitor *mon)
{
    mon_slot *s;

    if (mon->slot < 0) {
        return;
    }
    s = &slots[mon->slot];
    atomic_fetch_add(&s->gen, 1);
    if (atomic_load(&s->held)) {
        syscall(SYS_futex, &s->gen, FUTEX_WAKE_PRIVATE, INT32_MAX,
                NULL, NULL, 0);
    }
}

/*
 * No space for the copy (policy stall), or the image released: wait on
 * the slot's futex until mon_cow_wake() or PCOW_MONITOR_RETRY_MS, and try
 * again; out of the slot's inflight count while asleep.  Returns 0 when
 * served, -ESTALE when the monitor went away meanwhile (the access is
 * retried and finds whatever is mapped there now), or another error.
 */
static int cow_hold(mon_slot *s, pcow_monitor *mon, uint64_t off, int r)
{
    struct timespec ts = { 0, PCOW_MONITOR_RETRY_MS * 1000000L };

    atomic_fetch_add(&s->held, 1);
    while (mon_holds(mon, r)) {
        uint32_t gen = atomic_load(&s->gen);

        /* Opens the episode once (also for a taken back image, full) */
        if (mon_holds_space(mon, r)) {
            mon_nospace_begin(mon, "no space: holding the copy-on-write at",
                              off);
        }

        atomic_fetch_sub(&s->inflight, 1);
        syscall(SYS_futex, &s->gen, FUTEX_WAIT_PRIVATE, gen, &ts, NULL, 0);
        atomic_fetch_add(&s->inflight, 1);
        if (atomic_load(&s->mon) != mon) {
            r = -ESTALE;
            break;
        }
        r = cow_fault(mon, off);
    }
    atomic_fetch_sub(&s->held, 1);
    return r;
}

static void segv_handler(int sig, siginfo_t *info, void *ctx)
{
    uintptr_t addr = (uintptr_t)info->si_addr;
    int saved_errno = errno;
    int i;

    mon_handler_depth++;
    /* Only faults (not kill/raise) can be ours. */
    if (info->si_code > 0) {
        for (i = 0; i < MON_SLOTS; i++) {
            mon_slot *s = &slots[i];
            pcow_monitor *mon;
            bool served = false;
            bool mine = false;

            atomic_fetch_add(&s->inflight, 1);
            mon = atomic_load(&s->mon);
            if (mon && addr >= (uintptr_t)mon->base &&
                addr - (uintptr_t)mon->base < mon->size) {
                mine = true;
                if (is_write_fault(ctx)) {
                    uint64_t off = addr - (uintptr_t)mon->base;
                    int r = cow_fault(mon, off);

                    if (mon_holds(mon, r)) {
                        r = cow_hold(s, mon, off, r);
                    }
                    served = r == 0 || r == -ESTALE;
                } else {
                    mon_report(mon, "unexpected read fault at",
                               addr - (uintptr_t)mon->base, -EFAULT);
                }
            }
            atomic_fetch_sub(&s->inflight, 1);
            if (mine) {
                if (served) {
                    mon_handler_depth--;
                    errno = saved_errno;
                    return;
                }
                break;
            }
        }
    }
    /* The previous action is not ours: it may allocate, or not return. */
    mon_handler_depth--;
    errno = saved_errno;
    chain(sig, info, ctx);
}

int mon_dispatcher_register(pcow_monitor *mon, pcow_error *err)
{
    int i;

    pthread_mutex_lock(&install_lock);
    if (!installed) {
        struct sigaction sa;

        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSEGV, &sa, &prev_action) < 0) {
            int e = errno;

            pthread_mutex_unlock(&install_lock);
            return mon_error(NULL, err, -e, "cannot install the SIGSEGV "
                             "handler: %s", strerror(e));
        }
        installed = true;
    }
    pthread_mutex_unlock(&install_lock);

    for (i = 0; i < MON_SLOTS; i++) {
        pcow_monitor *expected = NULL;

        /* Not a slot that a waiter of a closed monitor still counts in. */
        if (atomic_load(&slots[i].held) == 0 &&
            atomic_compare_exchange_strong(&slots[i].mon, &expected, mon)) {
            mon->slot = i;
            mon->cow_held = &slots[i].held;
            return 0;
        }
    }
    return mon_error(mon, err, -EMFILE, "too many images mapped in this "
                     "process (at most %d)", MON_SLOTS);
}

void mon_dispatcher_drain(pcow_monitor *mon)
{
    struct timespec ts = { 0, 10000 };

    if (mon->slot < 0) {
        return;
    }
    while (atomic_load(&slots[mon->slot].inflight) > 0) {
        nanosleep(&ts, NULL);
    }
}

void mon_dispatcher_unregister(pcow_monitor *mon)
{
    if (mon->slot < 0) {
        return;
    }
    atomic_store(&slots[mon->slot].mon, NULL);
    mon_dispatcher_drain(mon);
    mon->slot = -1;
}
