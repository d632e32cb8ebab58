/*
 * The pcow Image Monitor: cluster pre-allocation thread
 *
 * Keeps pool_size zeroed, durable clusters in the image's reserve so that
 * an expansion or COW only commits an entry.  It sleeps on an eventfd that
 * the fault paths write (async-signal-safe), never polls, never exits the
 * process: ENOSPC is recorded and retried with a back-off, and the fault
 * path then allocates synchronously (and reports ENOSPC itself if the disk
 * really is full).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "pcow-monitor-int.h"

/*
 * Wake the pre-allocation thread once the reserve is down to half of
 * pool_size, not after every fault: it then refills several clusters with
 * one fallocate, one fdatasync and one frontier store, and its wake-ups
 * (and the eventfd write here) compete with the faults less often.
 */
void mon_kick_pool(pcow_monitor *mon)
{
    uint64_t one = 1;

    if (mon->pool_efd >= 0 &&
        pcow_reserve_count(mon->img) <= atomic_load(&mon->pool_target) / 2) {
        if (write(mon->pool_efd, &one, sizeof(one)) < 0) {
            /* Counter saturated: the thread is awake anyway. */
        }
    }
}

static void *pool_thread(void *opaque)
{
    pcow_monitor *mon = opaque;
    struct pollfd pfd[2] = {
        { .fd = mon->pool_efd, .events = POLLIN },
        { .fd = mon->stop_efd, .events = POLLIN },
    };
    int backoff_ms = 0;

    for (;;) {
        uint64_t v;
        uint32_t have = pcow_reserve_count(mon->img);
        uint32_t target = atomic_load(&mon->pool_target);
        int timeout = -1;

        if (have < target) {
            pcow_error err = { 0 };

            have = pcow_reserve_clusters(mon->img, target - have, &err);
            if (err.code < 0) {
                /* Back off (10 ms .. 1 s) instead of spinning on ENOSPC. */
                atomic_store(&mon->pool_error, err.code);
                backoff_ms = backoff_ms ? backoff_ms * 2 : 10;
                if (backoff_ms > 1000) {
                    backoff_ms = 1000;
                }
            } else {
                atomic_store(&mon->pool_error, 0);
                backoff_ms = 0;
            }
            /*
             * Still at or below the kick's mark (batches of 64): go on, or
             * back off; else sleep until the next kick, so that each
             * refill takes at least half of the target.
             */
            timeout = have > target / 2 ? -1 : backoff_ms;
        }
        if (poll(pfd, 2, timeout) < 0 && errno != EINTR) {
            break;
        }
        if (pfd[1].revents || atomic_load(&mon->pool_stop)) {
            break;
        }
        if (pfd[0].revents) {
            if (read(mon->pool_efd, &v, sizeof(v)) < 0) {
                /* EAGAIN: another wake-up consumed it; fine. */
            }
        }
    }
    return NULL;
}

int mon_pool_start(pcow_monitor *mon, pcow_error *err)
{
    int r;

    atomic_store(&mon->pool_stop, false);
    r = pthread_create(&mon->pool_thread, NULL, pool_thread, mon);

    if (r) {
        return mon_error(mon, err, -r, "cannot start the pre-allocation "
                         "thread: %s", strerror(r));
    }
    mon->pool_running = true;
    return 0;
}

void mon_pool_stop(pcow_monitor *mon)
{
    uint64_t one = 1;

    if (!mon->pool_running) {
        return;
    }
    atomic_store(&mon->pool_stop, true);
    if (write(mon->pool_efd, &one, sizeof(one)) < 0) {
        /* Counter saturated: the thread is awake anyway. */
    }
    pthread_join(mon->pool_thread, NULL);
    mon->pool_running = false;
}
