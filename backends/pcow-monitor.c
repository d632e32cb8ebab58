/*
 * The pcow Image Monitor: open, mapping, flush, live snapshots, statistics
 *
 * The whole virtual range is reserved with one anonymous mapping, which is
 * registered with userfaultfd once: whatever is not mapped over it is a
 * hole.  Data is then mapped over it with MAP_FIXED, one mmap per maximal
 * extent (pcow_get_extent), read-write where the active layer owns it,
 * read-only where a snapshot or a base does (COW on write, see
 * pcow-monitor-cow.c).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "pcow-monitor-int.h"

#define MON_DEFAULT_POOL 8
#define MON_DEFAULT_ESCALATE 4
/* VMAs left for the rest of the process (QEMU, libraries, threads). */
#define MON_VMA_MARGIN 4096
/* More mappings than this are made lazily (see pcow_monitor_open). */
#define MON_EAGER_MAX 32768

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

/*
 * Wake the pre-allocation thread once the reserve is down to half of
 * pool_size, not after every fault: it then refills several clusters with
 * one fallocate, one fdatasync and one frontier store, and its wake-ups
 * (and the eventfd write here) compete with the faults a quarter as often.
 */
void mon_kick_pool(pcow_monitor *mon)
{
    uint64_t one = 1;

    if (mon->pool_efd >= 0 &&
        pcow_reserve_count(mon->img) <= mon->pool_size / 2) {
        if (write(mon->pool_efd, &one, sizeof(one)) < 0) {
            /* Counter saturated: the thread is awake anyway. */
        }
    }
}

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

static const char *errno_name(int e)
{
    switch (e) {
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

bool mon_vma_budget(pcow_monitor *mon, uint64_t add)
{
    return atomic_fetch_add(&mon->vmas, add) + add <= mon->max_vmas;
}

static uint64_t read_u64_file(const char *path, uint64_t dflt)
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

/* Mappings in [lo, hi) (all of them with lo == hi == 0). */
static uint64_t count_maps(uintptr_t lo, uintptr_t hi)
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

/*
 * Map [off, off + len) as the image says.  With @count_only, only count
 * the mappings it would take.  Returns the number of mappings or -errno.
 */
int64_t mon_map_range(pcow_monitor *mon, uint64_t off, uint64_t len,
                      bool count_only, pcow_error *err)
{
    uint64_t end = off + len;
    int64_t maps = 0;
    bool prev_hole = false;

    while (off < end) {
        pcow_extent ext;
        int prot;
        void *p;
        int r = pcow_get_extent(mon->img, off, end - off, &ext);

        if (r < 0 || ext.length == 0 || ext.offset != off ||
            ext.length > end - off) {
            if (err) {
                err->code = r < 0 ? r : -EIO;
                snprintf(err->msg, sizeof(err->msg),
                         "%s: cannot read the mapping at guest offset "
                         "0x%" PRIx64 ": %s", mon->name, off,
                         strerror(r < 0 ? -r : EIO));
            }
            return r < 0 ? r : -EIO;
        }
        if (ext.kind == PCOW_EXTENT_HOLE) {
            uint64_t cs = mon->cluster_size;
            uint64_t e = off + ext.length;
            uint64_t hs = (off + cs - 1) & ~(cs - 1);
            uint64_t he = e == mon->size ? e : e & ~(cs - 1);

            /*
             * Only whole clusters stay uffd holes (the reservation is
             * registered).  A cluster that is partly base data (a raw
             * base ending inside it) is base data as a whole: its hole
             * part reads zeros read-only and a write copies on write.
             */
            if (hs >= he) {
                hs = he = e;
            }
            if (hs > off) {
                maps++;
                prev_hole = false;
                if (!count_only && !mon->read_only &&
                    mmap(mon->base + off, hs - off, PROT_READ,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
                         MAP_NORESERVE, -1, 0) == MAP_FAILED) {
                    goto fail;
                }
            }
            if (he > hs) {
                maps += !prev_hole;
                prev_hole = true;
            }
            if (e > he) {
                maps++;
                prev_hole = false;
                if (!count_only && !mon->read_only &&
                    mmap(mon->base + he, e - he, PROT_READ,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
                         MAP_NORESERVE, -1, 0) == MAP_FAILED) {
                    goto fail;
                }
            }
            off = e;
            continue;
        }
        prev_hole = false;
        maps++;
        if (count_only) {
            off += ext.length;
            continue;
        }
        prot = ext.writable && !mon->read_only ? PROT_READ | PROT_WRITE
                                               : PROT_READ;
        if (ext.valid_length < ext.length) {
            /* Raw base shorter than the image: zeros past its EOF. */
            uint64_t valid = (ext.valid_length + 4095) & ~4095ull;

            if (valid > ext.length) {
                valid = ext.length;
            }
            if (valid) {
                p = mmap(mon->base + off, valid, PROT_READ,
                         MAP_SHARED | MAP_FIXED, ext.fd, ext.file_offset);
                if (p == MAP_FAILED) {
                    goto fail;
                }
            }
            if (valid < ext.length) {
                maps++;
                p = mmap(mon->base + off + valid, ext.length - valid,
                         PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
                         MAP_NORESERVE, -1, 0);
                if (p == MAP_FAILED) {
                    goto fail;
                }
            }
        } else {
            p = mmap(mon->base + off, ext.length, prot,
                     MAP_SHARED | MAP_FIXED, ext.fd, ext.file_offset);
            if (p == MAP_FAILED) {
                goto fail;
            }
        }
        off += ext.length;
        continue;
fail:
        if (err) {
            err->code = -errno;
            snprintf(err->msg, sizeof(err->msg),
                     "%s: cannot map guest offset 0x%" PRIx64 " (%s)%s",
                     mon->name, off, strerror(errno),
                     errno == ENOMEM ? "; raise vm.max_map_count" : "");
        }
        return -errno;
    }
    return maps;
}

/* PCOW_MONITOR_EAGER_MAX overrides it (tests exercise both ways). */
static uint64_t eager_max(void)
{
    const char *e = getenv("PCOW_MONITOR_EAGER_MAX");

    return e ? strtoull(e, NULL, 0) : MON_EAGER_MAX;
}

static void free_monitor(pcow_monitor *mon)
{
    if (mon->base) {
        munmap(mon->base, mon->size);
    }
    if (mon->zero_map) {
        munmap(mon->zero_map, mon->map_bytes);
    }
    if (mon->mapped_map) {
        munmap(mon->mapped_map, mon->map_bytes);
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
    if (mon->pagemap_fd >= 0) {
        close(mon->pagemap_fd);
    }
    pthread_mutex_destroy(&mon->fault_lock);
    free(mon);
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

int pcow_monitor_open(const char *path, const pcow_monitor_opts *opts,
                      pcow_monitor **out, pcow_error *err)
{
    pcow_monitor_opts dflt = { 0 };
    pcow_open_opts oo = { 0 };
    pcow_monitor *mon;
    uint64_t limit;
    int64_t maps;
    int r;

    if (err) {
        err->code = 0;
        err->msg[0] = 0;
    }
    *out = NULL;
    if (!opts) {
        opts = &dflt;
    }
    mon = calloc(1, sizeof(*mon));
    if (!mon) {
        return -ENOMEM;
    }
    mon->uffd = mon->stop_efd = mon->pool_efd = mon->pagemap_fd = -1;
    mon->slot = -1;
    pthread_mutex_init(&mon->fault_lock, NULL);
    snprintf(mon->name, sizeof(mon->name), "%s", path);
    mon->flags = opts->flags;
    mon->read_only = opts->flags & PCOW_MONITOR_READONLY;
    mon->pool_size = opts->pool_size ? opts->pool_size : MON_DEFAULT_POOL;
    mon->cow_escalate = opts->cow_escalate ? opts->cow_escalate
                                           : MON_DEFAULT_ESCALATE;

    oo.flags = mon->read_only ? 0 : PCOW_OPEN_RDWR;
    if (opts->flags & PCOW_MONITOR_NO_LOCK) {
        oo.flags |= PCOW_OPEN_NO_LOCK;
    }
    oo.hook = opts->hook;
    oo.hook_opaque = opts->hook_opaque;
    r = pcow_open(path, &oo, &mon->img, err);
    if (r < 0) {
        free_monitor(mon);
        return r;
    }
    mon->size = pcow_virtual_size(mon->img);
    mon->cluster_size = pcow_cluster_size(mon->img);
    mon->cluster_bits = __builtin_ctz(mon->cluster_size);
    mon->nb_clusters = (mon->size + mon->cluster_size - 1) >>
                       mon->cluster_bits;
    mon->map_bytes = ((mon->nb_clusters + 63) / 64) * 8;

    /* Budget: what vm.max_map_count leaves after the rest of the process. */
    if (opts->max_vmas) {
        limit = opts->max_vmas;
    } else {
        uint64_t sys = read_u64_file("/proc/sys/vm/max_map_count", 65530);
        uint64_t used = count_maps(0, 0) + MON_VMA_MARGIN;

        limit = sys > used ? sys - used : 0;
    }
    mon->max_vmas = limit;

    maps = mon_map_range(mon, 0, mon->size, true, err);
    if (maps < 0) {
        goto fail_img;
    }
    if ((uint64_t)maps > limit) {
        r = -ENOMEM;
        if (err) {
            err->code = r;
            snprintf(err->msg, sizeof(err->msg),
                     "%s: mapping the image needs %" PRId64 " mappings but "
                     "only %" PRIu64 " are left under vm.max_map_count; "
                     "raise it (sysctl vm.max_map_count=%" PRIu64 ")",
                     mon->name, maps, limit,
                     read_u64_file("/proc/sys/vm/max_map_count", 65530) +
                     maps - limit + 65536);
        }
        goto fail_img;
    }
    atomic_store(&mon->vmas, maps);

    mon->base = mmap(NULL, mon->size, mon->read_only ? PROT_READ
                     : PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mon->base == MAP_FAILED) {
        mon->base = NULL;
        r = -errno;
        if (err) {
            err->code = r;
            snprintf(err->msg, sizeof(err->msg),
                     "%s: cannot reserve %" PRIu64 " bytes of address space:"
                     " %s", mon->name, mon->size, strerror(errno));
        }
        goto fail_img;
    }
    /* 4 KiB zero pages only: a huge zero page would bypass the scheme. */
    madvise(mon->base, mon->size, MADV_NOHUGEPAGE);
    mon->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    mon->pool_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (mon->stop_efd < 0 || mon->pool_efd < 0) {
        r = -errno;
        goto fail_img;
    }
    if (!mon->read_only) {
        mon->zero_map = mmap(NULL, mon->map_bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                             -1, 0);
        mon->mapped_map = mmap(NULL, mon->map_bytes, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                               -1, 0);
        if (mon->zero_map == MAP_FAILED || mon->mapped_map == MAP_FAILED) {
            r = -ENOMEM;
            goto fail_img;
        }
        r = mon_uffd_setup(mon, err);
        if (r < 0) {
            goto fail_img;
        }
    }
    /*
     * Mapping costs 7-12 us per mmap on the test machine: 1M random
     * clusters took 16.7 s to map at open.  Past MON_EAGER_MAX mappings
     * the uffd thread maps each data cluster on its first touch instead.
     */
    mon->lazy = !mon->read_only && (uint64_t)maps > eager_max();
    if (mon->lazy) {
        atomic_store(&mon->vmas, 1);
    } else {
        maps = mon_map_range(mon, 0, mon->size, false, err);
        if (maps < 0) {
            r = maps;
            goto fail_img;
        }
    }
    r = mon_dispatcher_register(mon, err);
    if (r < 0) {
        goto fail_img;
    }
    if (!mon->read_only) {
        r = mon_uffd_start(mon, err);
        if (r < 0) {
            goto fail_threads;
        }
        if (!(mon->flags & PCOW_MONITOR_NO_POOL)) {
            r = mon_pool_start(mon, err);
            if (r < 0) {
                goto fail_threads;
            }
        }
    }
    *out = mon;
    return 0;

fail_threads:
    stop_threads(mon);
    mon_dispatcher_unregister(mon);
fail_img:
    if (err && !err->code) {
        err->code = r;
        snprintf(err->msg, sizeof(err->msg), "%s: cannot map the image: %s",
                 path, strerror(-r));
    }
    pcow_close(mon->img, NULL);
    free_monitor(mon);
    return r;
}

int pcow_monitor_flush(pcow_monitor *mon, pcow_error *err)
{
    int r = 0;

    if (mon->read_only) {
        return 0;
    }
    /* msync skips anonymous parts; this also covers PM (DAX) files. */
    if (msync(mon->base, mon->size, MS_SYNC) < 0) {
        r = -errno;
        if (err) {
            err->code = r;
            snprintf(err->msg, sizeof(err->msg), "%s: msync: %s", mon->name,
                     strerror(errno));
        }
        return r;
    }
    return pcow_flush(mon->img, err);
}

int pcow_monitor_close(pcow_monitor *mon, pcow_error *err)
{
    int r, r2;

    if (!mon) {
        return 0;
    }
    stop_threads(mon);
    r = pcow_monitor_flush(mon, err);
    /* No handler may touch the image once it is closed. */
    mon_dispatcher_unregister(mon);
    munmap(mon->base, mon->size);
    mon->base = NULL;
    r2 = pcow_close(mon->img, r < 0 ? NULL : err);
    free_monitor(mon);
    return r < 0 ? r : r2;
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

void pcow_monitor_get_stats(pcow_monitor *mon, pcow_monitor_stats *s)
{
    uint64_t exact = count_maps((uintptr_t)mon->base,
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

/*
 * Lazy monitors: only clusters already mapped are changed; the others get
 * the right protection when they are first touched.  mapped_map is stable:
 * the caller holds fault_lock.
 */
static int remap_lazy(pcow_monitor *mon, const pcow_extent *ext,
                      bool make_writable, pcow_error *err)
{
    uint64_t off = ext->offset;
    uint64_t end = ext->offset + ext->length;

    while (off < end) {
        uint64_t vc = off >> mon->cluster_bits;
        uint64_t next = (vc + 1) << mon->cluster_bits;
        int r = 0;

        if (next > end) {
            next = end;
        }
        if (mon->mapped_map[vc / 64] & (1ull << (vc % 64))) {
            if (!make_writable && !ext->writable) {
                r = mprotect(mon->base + off, next - off, PROT_READ);
            } else if (make_writable && ext->writable) {
                void *p = mmap(mon->base + off, next - off,
                               PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                               ext->fd, ext->file_offset +
                               (off - ext->offset));

                r = p == MAP_FAILED ? -1 : 0;
            }
            if (r < 0) {
                if (err) {
                    err->code = -errno;
                    snprintf(err->msg, sizeof(err->msg),
                             "%s: cannot remap guest offset 0x%" PRIx64
                             ": %s", mon->name, off, strerror(errno));
                }
                return -errno;
            }
        }
        off = next;
    }
    return 0;
}

/*
 * Apply the image's current writability to every data mapping: after a
 * snapshot everything mapped is frozen; after a delete some becomes ours.
 */
static int remap_data(pcow_monitor *mon, bool make_writable, pcow_error *err)
{
    uint64_t off = 0;

    while (off < mon->size) {
        pcow_extent ext;
        int r = pcow_get_extent(mon->img, off, mon->size - off, &ext);

        if (r < 0 || ext.length == 0) {
            if (err) {
                err->code = r < 0 ? r : -EIO;
                snprintf(err->msg, sizeof(err->msg),
                         "%s: cannot read the mapping at 0x%" PRIx64,
                         mon->name, off);
            }
            return r < 0 ? r : -EIO;
        }
        if (ext.kind == PCOW_EXTENT_DATA && mon->lazy) {
            r = remap_lazy(mon, &ext, make_writable, err);
            if (r < 0) {
                return r;
            }
        } else if (ext.kind == PCOW_EXTENT_DATA) {
            if (!make_writable && !ext.writable) {
                r = mprotect(mon->base + off, ext.length, PROT_READ);
            } else if (make_writable && ext.writable) {
                void *p = mmap(mon->base + off, ext.length,
                               PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                               ext.fd, ext.file_offset);

                r = p == MAP_FAILED ? -1 : 0;
            }
            if (r < 0) {
                r = -errno;
                if (err) {
                    err->code = r;
                    snprintf(err->msg, sizeof(err->msg),
                             "%s: cannot remap guest offset 0x%" PRIx64
                             ": %s", mon->name, off, strerror(-r));
                }
                return r;
            }
        }
        off += ext.length;
    }
    return 0;
}

int pcow_monitor_snapshot_create(pcow_monitor *mon, const char *name,
                                 uint64_t *id, pcow_error *err)
{
    int r;

    if (mon->read_only) {
        if (err) {
            err->code = -EROFS;
            snprintf(err->msg, sizeof(err->msg), "%s: image is read-only",
                     mon->name);
        }
        return -EROFS;
    }
    /* Fail before the flush touches the image if it was truncated */
    r = pcow_check_file_size(mon->img, err);
    if (r < 0) {
        return r;
    }
    /* Writers are paused by the caller; drain the faults in flight. */
    pthread_mutex_lock(&mon->fault_lock);
    mon_dispatcher_drain(mon);
    r = pcow_monitor_flush(mon, err);
    if (r == 0) {
        r = pcow_snapshot_create(mon->img, name, id, err);
    }
    if (r == 0) {
        r = remap_data(mon, false, err);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    return r;
}

int pcow_monitor_snapshot_delete(pcow_monitor *mon, const char *name_or_id,
                                 pcow_error *err)
{
    int r;

    if (mon->read_only) {
        if (err) {
            err->code = -EROFS;
            snprintf(err->msg, sizeof(err->msg), "%s: image is read-only",
                     mon->name);
        }
        return -EROFS;
    }
    pthread_mutex_lock(&mon->fault_lock);
    mon_dispatcher_drain(mon);
    r = pcow_snapshot_delete(mon->img, name_or_id, err);
    if (r == 0) {
        r = remap_data(mon, true, err);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    return r;
}
