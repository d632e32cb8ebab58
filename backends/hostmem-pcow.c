/*
 * QEMU host memory backend glue for pcow images
 *
 * -object memory-backend-file,id=pm,mem-path=IMG,format=pcow,share=on
 *
 * The pcow Image Monitor maps the image into one contiguous range of host
 * virtual memory of the image's virtual size: allocated clusters are file
 * mappings, holes are anonymous memory served by userfaultfd, frozen data is
 * read-only and copied on write from a SIGSEGV handler.  QEMU gets that
 * range as an ordinary RAM block with a host pointer
 * (memory_region_init_ram_flags_ptr), so the guest's loads and stores go
 * straight to it through the MMU (EPT or the TCG softmmu TLB) with no
 * emulation.
 * QEMU's RAM code never allocates or unmaps a host-pointer block; the
 * monitor owns the mapping from open to close.
 *
 * The image is closed (everything durable, in-use flag cleared) when the
 * backend is finalized (object-del) or, since QEMU does not finalize
 * memory backends that devices use, from an exit notifier: quit, guest
 * poweroff, SIGTERM/SIGINT/SIGHUP and exit() on an error path all return
 * through exit() and so run it.
 *
 * Out of space (nospace=stall, the default): the monitor holds the faults
 * that find the host file system full and signals an eventfd once per
 * episode; its handler here, in the main loop, emits PCOW_IO_ERROR.  The
 * held faults complete by themselves when space returns (the monitor
 * retries every 200 ms; a VM that is continued retries at once).  A vCPU
 * blocked in a held fault cannot acknowledge a pause, so the VM is never
 * paused for it: stop and everything that pauses waits for space
 * (docs/pcow.rst, "Out of space").
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include <sys/mman.h>
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/queue.h"
#include "qemu/notify.h"
#include "qemu/main-loop.h"
#include "qemu/thread.h"
#include "qemu/madvise.h"
#include "exec/memory.h"
#include "exec/address-spaces.h"
#include "hw/boards.h"
#include "sysemu/sysemu.h"
#include "sysemu/hostmem.h"
#include "sysemu/runstate.h"
#include "qapi/qapi-events-pcow.h"
#include "backends/hostmem-pcow.h"
#include "pcow/monitor.h"

struct HostMemPcow {
    HostMemoryBackend *backend;
    pcow_monitor *mon;          /* NULL once closed */
    char *path;
    uint8_t *base;
    uint64_t size;
    bool readonly;
    bool nospace_fail;
    HostMemPcowMigrate migrate;
    unsigned mon_flags;         /* pcow_monitor_opts.flags */
    /*
     * migrate-data=none on an incoming migration's destination: the image
     * is opened only when the stream says which state it must be in
     * (hostmem_pcow_open_deferred); until then the RAM block is this
     * private anonymous placeholder, which the monitor then maps over.
     */
    bool deferred;
    bool incoming_open;         /* opened by hostmem_pcow_open_deferred */
    bool prealloc_pending;      /* prealloc=on asked while deferred */
    bool ran;                   /* the guest has run on this image */
    int event_fd;               /* the monitor's episode eventfd, or -1 */
    uint64_t episodes_reported;
    uint64_t episodes_resumed;
    VMChangeStateEntry *vm_change;
    QemuMutex lock;             /* flush (thread pool) against close */
    Notifier exit_notifier;
    void *vmsnap;               /* savevm/loadvm/delvm hooks */
    void *mig;                  /* migration section and handover */
    Object *rdm;                /* holes as discarded RAM, for migration */
    QLIST_ENTRY(HostMemPcow) next;
};

/* Every open pcow backend, for naming the image in KVM error messages. */
static QLIST_HEAD(, HostMemPcow) hostmem_pcow_list =
    QLIST_HEAD_INITIALIZER(hostmem_pcow_list);

bool hostmem_pcow_name_selects_pcow(const char *mem_path)
{
    return mem_path && g_str_has_suffix(mem_path, ".pcow");
}

const char *hostmem_pcow_error_msg(const pcow_error *perr, int ret)
{
    return perr->msg[0] ? perr->msg : strerror(-ret);
}

const char *hostmem_pcow_error_text(const pcow_error *perr, int ret)
{
    return perr->msg[perr->what] ? perr->msg + perr->what : strerror(-ret);
}

const char *hostmem_pcow_error_why(const pcow_error *perr, int ret)
{
    return perr->msg[perr->why] ? perr->msg + perr->why : strerror(-ret);
}

/*
 * The monitor's episode eventfd, written at an episode's start and end:
 * one PCOW_IO_ERROR and one PCOW_IO_RESUMED per episode.
 */
static void hostmem_pcow_episode(void *opaque)
{
    HostMemPcow *pc = opaque;
    uint64_t v, episodes, offset;
    char *id;

    if (read(pc->event_fd, &v, sizeof(v)) < 0 || !pc->mon) {
        return;
    }
    episodes = pcow_monitor_nospace_episodes(pc->mon, &offset);
    if (episodes != pc->episodes_reported) {
        pc->episodes_reported = episodes;
        id = host_memory_backend_get_name(pc->backend);
        error_report("pcow image '%s' (backend '%s'): the host file system "
                     "is full; guest writes wait for space (nospace=stall)",
                     pc->path, id);
        qapi_event_send_pcow_io_error(id, pc->path, offset, true,
                                      PCOW_NOSPACE_POLICY_STALL);
        g_free(id);
    }
    if (!pcow_monitor_held_faults(pc->mon) &&
        episodes != pc->episodes_resumed) {
        pc->episodes_resumed = episodes;
        info_report("pcow image '%s': space is back; the held guest writes "
                    "completed", pc->path);
        id = host_memory_backend_get_name(pc->backend);
        qapi_event_send_pcow_io_resumed(id, pc->path);
        g_free(id);
    }
}

/* The monitor's out-of-space episodes, once the image is open */
static void hostmem_pcow_watch_episodes(HostMemPcow *pc)
{
    pc->event_fd = pc->mon ? pcow_monitor_event_fd(pc->mon) : -1;
    if (pc->event_fd >= 0) {
        qemu_set_fd_handler(pc->event_fd, hostmem_pcow_episode, NULL, pc);
    }
}

/* A VM that is continued retries the held faults at once. */
static void hostmem_pcow_vm_change(void *opaque, bool running,
                                   RunState state)
{
    HostMemPcow *pc = opaque;

    if (running && pc->mon) {
        pc->ran = true;
        pcow_monitor_retry(pc->mon);
    }
}

static void hostmem_pcow_close(HostMemPcow *pc)
{
    pcow_error perr = { 0 };
    int ret;

    if (pc->event_fd >= 0) {
        qemu_set_fd_handler(pc->event_fd, NULL, NULL, NULL);
        pc->event_fd = -1;
    }
    qemu_mutex_lock(&pc->lock);
    if (!pc->mon) {
        qemu_mutex_unlock(&pc->lock);
        return;
    }
    if (pc->incoming_open && !pc->ran) {
        /*
         * An incoming migration that failed before the guest ran here
         * changed nothing: leave the image as the source handed it over,
         * so that the source can take it back.
         */
        pcow_keep_stamp(pcow_monitor_image(pc->mon));
    }
    ret = pcow_monitor_close(pc->mon, &perr);
    pc->mon = NULL;
    qemu_mutex_unlock(&pc->lock);
    if (ret < 0) {
        error_report("pcow: closing image '%s' failed: %s", pc->path,
                     hostmem_pcow_error_text(&perr, ret));
    }
}

static void hostmem_pcow_exit_notify(Notifier *n, void *data)
{
    HostMemPcow *pc = container_of(n, HostMemPcow, exit_notifier);

    hostmem_pcow_close(pc);
}

/*
 * The open pcow backend whose image, or a base of it, is the file at
 * @path (NULL if none): OFD locks conflict within one process too, and
 * "another process" would then be wrong.
 */
static HostMemPcow *hostmem_pcow_user(const char *path, bool *as_base)
{
    HostMemPcow *pc;

    QLIST_FOREACH(pc, &hostmem_pcow_list, next) {
        pcow_image *img = pc->mon ? pcow_monitor_image(pc->mon) : NULL;
        pcow_chain_role role = pcow_chain_role_of(img, path);

        if (role != PCOW_CHAIN_NONE) {
            *as_base = role == PCOW_CHAIN_BASE;
            return pc;
        }
    }
    return NULL;
}

/* The machine's default RAM backend, which -mem-path makes (share=off) */
static bool hostmem_pcow_is_default_ram(HostMemoryBackend *backend)
{
    MachineClass *mc = current_machine ? MACHINE_GET_CLASS(current_machine)
                                       : NULL;
    const char *id = object_get_canonical_path_component(OBJECT(backend));

    return mc && mc->default_ram_id && id && !strcmp(id, mc->default_ram_id);
}

/* The backend's properties that a pcow image refuses; sets *@align. */
static bool hostmem_pcow_check_opts(HostMemoryBackend *backend,
                                    const HostMemPcowOptions *opts,
                                    uint64_t *align, Error **errp)
{
    const char *path = opts->mem_path;

    if (!backend->share) {
        error_setg(errp, "pcow image '%s' needs share=on: with share=off "
                   "guest writes would never reach the image%s", path,
                   hostmem_pcow_is_default_ram(backend) ?
                   " (-mem-path cannot set it: use -object memory-backend-"
                   "file,id=ID,mem-path=IMG,share=on -machine "
                   "memory-backend=ID)" : "");
        return false;
    }
    if (opts->discard_data) {
        error_setg(errp, "discard-data=on is not supported with a pcow "
                   "image ('%s'): it would zero image data behind the "
                   "image's back", path);
        return false;
    }
    /* Same rules as file_ram_alloc() for raw files. */
    if (opts->align % qemu_real_host_page_size()) {
        error_setg(errp, "alignment 0x%" PRIx64
                   " must be multiples of page size 0x%zx",
                   opts->align, (size_t)qemu_real_host_page_size());
        return false;
    }
    if (opts->align && !is_power_of_2(opts->align)) {
        error_setg(errp, "alignment 0x%" PRIx64 " must be a power of two",
                   opts->align);
        return false;
    }
    *align = MAX(opts->align, qemu_real_host_page_size());
    return true;
}

/* pcow_monitor_open() failed with @ret: QEMU's message for it */
static void hostmem_pcow_open_error(const HostMemPcowOptions *opts, int ret,
                                    const pcow_error *perr, Error **errp)
{
    const char *path = opts->mem_path;
    bool as_base = false;
    HostMemPcow *user = ret == -EBUSY ? hostmem_pcow_user(path, &as_base)
                                      : NULL;

    if (user) {
        error_setg(errp, "pcow image '%s' is already in use by memory "
                   "backend '%s'%s in this process", path,
                   object_get_canonical_path_component(
                       OBJECT(user->backend)),
                   as_base ? " (as a base of its image)" : "");
        return;
    }
    /* Locked by another process: QEMU's own hint, from the code */
    if (perr->kind == PCOW_ERR_IN_USE) {
        error_setg(errp, "%s (another QEMU, or pcow-img writing it)",
                   perr->msg);
        return;
    }
    if (opts->format_from_name && ret != -ENOENT && !pcow_probe(path)) {
        error_setg(errp, "%s (format=pcow was chosen because the name "
                   "ends in .pcow; use format=raw for a raw file)",
                   hostmem_pcow_error_msg(perr, ret));
    } else {
        error_setg(errp, "%s", hostmem_pcow_error_msg(perr, ret));
    }
}

/* The image's virtual size against the backend's size= and the page */
static bool hostmem_pcow_check_size(HostMemoryBackend *backend,
                                    const char *path, uint64_t size,
                                    Error **errp)
{
    if (backend->size && backend->size != size) {
        error_setg(errp, "size=%" PRIu64 " does not match the virtual size "
                   "%" PRIu64 " of pcow image '%s' (omit size to take it "
                   "from the image)", backend->size, size, path);
        return false;
    }
    if (size % qemu_real_host_page_size()) {
        /* libpcow guarantees this; a RAM block needs whole pages. */
        error_setg(errp, "pcow image '%s': virtual size %" PRIu64
                   " is not a multiple of the page size", path, size);
        return false;
    }
    return true;
}

/* @backend->mr: RAM at the monitor's range */
static void hostmem_pcow_init_region(HostMemPcow *pc, uint64_t align)
{
    HostMemoryBackend *backend = pc->backend;
    char *name = host_memory_backend_get_name(backend);

    backend->size = pc->size;
    /*
     * RAM_START_CLEAN: no initial dirty marking, which would make QEMU's
     * dirty bitmaps resident (97.5 MiB per TiB of image); see
     * patches/0013-physmem-let-a-RAM-block-start-clean.patch.
     */
    memory_region_init_ram_flags_ptr(&backend->mr, OBJECT(backend), name,
                                     pc->size, RAM_START_CLEAN, pc->base);
    g_free(name);
    /*
     * ram_block_add() has just madvise(MADV_HUGEPAGE)d the whole range; the
     * monitor wants its anonymous (hole) mappings served with 4 KiB pages,
     * so that no huge zero page can stand in for what userfaultfd should
     * see.  This also covers the data mappings present now: DAX PMD
     * mappings would need 2 MiB runs, which 64 KiB clusters rarely give.
     * Mappings the monitor makes later start without either flag.
     */
    qemu_madvise(pc->base, pc->size, QEMU_MADV_NOHUGEPAGE);
    backend->mr.align = align;
    if (pc->readonly) {
        /*
         * Guest writes are dropped (TCG) or exit to QEMU (KVM read-only
         * memslot) and never reach the read-only mapping.
         */
        memory_region_set_readonly(&backend->mr, true);
    }
}

static HostMemPcowMigrate hostmem_pcow_parse_migrate(const char *s)
{
    if (s && !strcmp(s, "all")) {
        return HOSTMEM_PCOW_MIGRATE_ALL;
    }
    if (s && !strcmp(s, "top")) {
        return HOSTMEM_PCOW_MIGRATE_TOP;
    }
    return HOSTMEM_PCOW_MIGRATE_NONE;
}

/*
 * The destination of a migration that hands the image over: the source
 * holds its lock until switchover, so read only the geometry now (no
 * lock, no base) and give QEMU a placeholder range of that size.
 */
static bool hostmem_pcow_placeholder(HostMemPcow *pc,
                                     const HostMemPcowOptions *opts,
                                     uint64_t *cluster_size, Error **errp)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_NO_LOCK | PCOW_OPEN_NO_BACKING };
    pcow_error perr = { 0 };
    pcow_image *img;
    int ret;

    ret = pcow_open(pc->path, &oo, &img, &perr);
    if (ret < 0) {
        hostmem_pcow_open_error(opts, ret, &perr, errp);
        return false;
    }
    pc->size = pcow_virtual_size(img);
    *cluster_size = pcow_cluster_size(img);
    pcow_close(img, NULL);
    if (!hostmem_pcow_check_size(pc->backend, pc->path, pc->size, errp)) {
        return false;
    }
    pc->base = mmap(NULL, pc->size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pc->base == MAP_FAILED) {
        pc->base = NULL;
        error_setg_errno(errp, errno, "pcow image '%s': cannot reserve "
                         "%" PRIu64 " bytes of address space", pc->path,
                         pc->size);
        return false;
    }
    pc->deferred = true;
    return true;
}

/* Open and map the image now; false with @errp set */
static bool hostmem_pcow_open_now(HostMemPcow *pc,
                                  const HostMemPcowOptions *opts,
                                  uint64_t *cluster_size, Error **errp)
{
    pcow_monitor_opts mopts = { .flags = pc->mon_flags };
    pcow_monitor *mon = NULL;
    pcow_error perr = { 0 };
    int ret;

    ret = pcow_monitor_open(pc->path, &mopts, &mon, &perr);
    if (ret < 0) {
        hostmem_pcow_open_error(opts, ret, &perr, errp);
        return false;
    }
    if (!hostmem_pcow_check_size(pc->backend, pc->path,
                                 pcow_monitor_size(mon), errp)) {
        pcow_monitor_close(mon, NULL);
        return false;
    }
    pc->mon = mon;
    pc->base = pcow_monitor_base(mon);
    pc->size = pcow_monitor_size(mon);
    *cluster_size = pcow_cluster_size(pcow_monitor_image(mon));
    return true;
}

HostMemPcow *hostmem_pcow_alloc(HostMemoryBackend *backend,
                                const HostMemPcowOptions *opts,
                                Error **errp)
{
    HostMemPcow *pc;
    uint64_t align, cluster_size;
    bool ok;

    if (!hostmem_pcow_check_opts(backend, opts, &align, errp)) {
        return NULL;
    }
    pc = g_new0(HostMemPcow, 1);
    pc->backend = backend;
    pc->path = g_strdup(opts->mem_path);
    pc->readonly = opts->readonly;
    pc->nospace_fail = opts->nospace_fail;
    pc->migrate = hostmem_pcow_parse_migrate(opts->migrate_data);
    pc->mon_flags = (opts->readonly ? PCOW_MONITOR_READONLY : 0) |
                    (opts->nospace_fail ? PCOW_MONITOR_NOSPACE_FAIL : 0);
    pc->event_fd = -1;
    if (pc->migrate == HOSTMEM_PCOW_MIGRATE_NONE && !pc->readonly &&
        runstate_check(RUN_STATE_INMIGRATE)) {
        ok = hostmem_pcow_placeholder(pc, opts, &cluster_size, errp);
    } else {
        ok = hostmem_pcow_open_now(pc, opts, &cluster_size, errp);
    }
    if (!ok) {
        g_free(pc->path);
        g_free(pc);
        return NULL;
    }
    qemu_mutex_init(&pc->lock);
    hostmem_pcow_init_region(pc, align);

    hostmem_pcow_watch_episodes(pc);
    pc->vm_change = qemu_add_vm_change_state_handler(hostmem_pcow_vm_change,
                                                     pc);

    pc->exit_notifier.notify = hostmem_pcow_exit_notify;
    qemu_add_exit_notifier(&pc->exit_notifier);
    QLIST_INSERT_HEAD(&hostmem_pcow_list, pc, next);
    pc->vmsnap = hostmem_pcow_vmsnap_add(backend);
    pc->rdm = hostmem_pcow_rdm_add(backend, pc, cluster_size,
                                   pc->migrate == HOSTMEM_PCOW_MIGRATE_TOP);
    pc->mig = hostmem_pcow_mig_add(backend, pc);
    return pc;
}

void hostmem_pcow_prealloc(HostMemPcow *pc, Error **errp)
{
    pcow_error perr = { 0 };
    int ret;

    if (!pc->mon) {
        pc->prealloc_pending = pc->deferred;
        return;
    }
    /*
     * Prefault for reading only: writing would expand every hole (the image
     * would stop being thin) and copy every frozen cluster.  Allocated data
     * is already allocated on the host, so this only loads page tables.
     */
    ret = pcow_monitor_prefault(pc->mon, &perr);
    if (ret < 0) {
        error_setg(errp, "%s", hostmem_pcow_error_msg(&perr, ret));
    } else if (ret > 0) {
        /* prealloc is only a hint */
        warn_report("prealloc: %s; continuing without", perr.msg);
    }
}

HostMemPcow *hostmem_pcow_find(HostMemoryBackend *backend)
{
    HostMemPcow *pc;

    QLIST_FOREACH(pc, &hostmem_pcow_list, next) {
        if (pc->backend == backend) {
            return pc;
        }
    }
    return NULL;
}

pcow_monitor *hostmem_pcow_monitor(HostMemPcow *pc)
{
    return pc->mon;
}

const char *hostmem_pcow_path(HostMemPcow *pc)
{
    return pc->path;
}

bool hostmem_pcow_readonly(HostMemPcow *pc)
{
    return pc->readonly;
}

uint64_t hostmem_pcow_held_faults(HostMemPcow *pc)
{
    return pc->mon ? pcow_monitor_held_faults(pc->mon) : 0;
}

HostMemPcow *hostmem_pcow_any_held(void)
{
    HostMemPcow *pc;

    QLIST_FOREACH(pc, &hostmem_pcow_list, next) {
        if (hostmem_pcow_held_faults(pc)) {
            return pc;
        }
    }
    return NULL;
}

bool hostmem_pcow_nospace_fail(HostMemPcow *pc)
{
    return pc->nospace_fail;
}

int hostmem_pcow_flush(HostMemPcow *pc)
{
    pcow_error perr = { 0 };
    int ret = -EBADF;

    qemu_mutex_lock(&pc->lock);
    if (pc->mon) {
        ret = pcow_monitor_flush(pc->mon, &perr);
    }
    qemu_mutex_unlock(&pc->lock);
    if (ret < 0) {
        error_report_once("pcow image '%s': flush failed: %s", pc->path,
                          pc->mon ? hostmem_pcow_error_why(&perr, ret)
                                  : "image is closed");
    }
    return ret;
}

int hostmem_pcow_get_extent(HostMemPcow *pc, uint64_t offset,
                            uint64_t max_len, pcow_extent *ext)
{
    int ret = -EBADF;

    qemu_mutex_lock(&pc->lock);
    if (pc->mon) {
        ret = pcow_get_extent(pcow_monitor_image(pc->mon), offset, max_len,
                              ext);
    }
    qemu_mutex_unlock(&pc->lock);
    return ret;
}

const char *hostmem_pcow_id(HostMemPcow *pc)
{
    return object_get_canonical_path_component(OBJECT(pc->backend));
}

HostMemPcowMigrate hostmem_pcow_migrate_data(HostMemPcow *pc)
{
    return pc->migrate;
}

uint64_t hostmem_pcow_size(HostMemPcow *pc)
{
    return pc->size;
}

bool hostmem_pcow_deferred(HostMemPcow *pc)
{
    return pc->deferred;
}

/*
 * @errp for a libpcow/monitor failure of @what on @pc's image, naming the
 * image once: libpcow's message without its name (a base's stays)
 */
static int hostmem_pcow_fail(HostMemPcow *pc, const char *what, int ret,
                             const pcow_error *perr, Error **errp)
{
    error_setg(errp, "memory backend '%s': %s the pcow image '%s': %s",
               hostmem_pcow_id(pc), what, pc->path,
               hostmem_pcow_error_text(perr, ret));
    return ret;
}

int hostmem_pcow_release(HostMemPcow *pc, uint64_t *stamp, Error **errp)
{
    pcow_error perr = { 0 };
    int ret = 0;

    qemu_mutex_lock(&pc->lock);
    if (!pc->mon) {
        ret = -EBADF;
        pcow_set_error(&perr, ret, "the image is not open");
    } else if (pc->readonly) {
        *stamp = pcow_stamp(pcow_monitor_image(pc->mon));
    } else {
        ret = pcow_monitor_release(pc->mon, stamp, &perr);
    }
    qemu_mutex_unlock(&pc->lock);
    if (ret < 0) {
        return hostmem_pcow_fail(pc, "cannot hand over", ret, &perr, errp);
    }
    return 0;
}

/*
 * A destination that failed may still be exiting, its lock not yet
 * dropped: how long a take-back waits for it before it gives up.
 */
#define HOSTMEM_PCOW_REACQUIRE_WAIT_MS 5000

int hostmem_pcow_reacquire(HostMemPcow *pc, Error **errp)
{
    pcow_error perr = { 0 };
    int ret = 0, waited;

    for (waited = 0; ; waited += 50) {
        qemu_mutex_lock(&pc->lock);
        if (pc->mon && pcow_monitor_released(pc->mon)) {
            ret = pcow_monitor_reacquire(pc->mon, &perr);
        }
        qemu_mutex_unlock(&pc->lock);
        if (ret != -EBUSY || waited >= HOSTMEM_PCOW_REACQUIRE_WAIT_MS) {
            break;
        }
        g_usleep(50 * 1000);
    }
    if (ret < 0) {
        return hostmem_pcow_fail(pc, "cannot take back", ret, &perr, errp);
    }
    return 0;
}

int hostmem_pcow_open_deferred(HostMemPcow *pc, uint64_t stamp,
                               Error **errp)
{
    pcow_monitor_opts mopts = {
        .flags = pc->mon_flags | PCOW_MONITOR_EXPECT_STAMP,
        .addr = pc->base,
        .addr_len = pc->size,
        .expect_stamp = stamp,
    };
    pcow_monitor *mon = NULL;
    pcow_error perr = { 0 };
    int ret;

    if (!pc->deferred) {
        return 0;
    }
    ret = pcow_monitor_open(pc->path, &mopts, &mon, &perr);
    if (ret < 0) {
        return hostmem_pcow_fail(pc, "cannot open", ret, &perr, errp);
    }
    /* The monitor owns the placeholder range now. */
    qemu_mutex_lock(&pc->lock);
    pc->mon = mon;
    pc->deferred = false;
    pc->incoming_open = true;
    qemu_mutex_unlock(&pc->lock);
    hostmem_pcow_watch_episodes(pc);
    if (pc->prealloc_pending) {
        Error *err = NULL;

        pc->prealloc_pending = false;
        hostmem_pcow_prealloc(pc, &err);
        if (err) {
            warn_report_err(err);   /* a hint only: faults fill it in */
        }
    }
    return 0;
}

void hostmem_pcow_free(HostMemPcow *pc)
{
    if (!pc) {
        return;
    }
    hostmem_pcow_mig_del(pc->mig);
    hostmem_pcow_rdm_del(pc->rdm);
    hostmem_pcow_vmsnap_del(pc->vmsnap);
    hostmem_pcow_close(pc);
    if (pc->deferred) {
        munmap(pc->base, pc->size);
    }
    qemu_del_vm_change_state_handler(pc->vm_change);
    qemu_remove_exit_notifier(&pc->exit_notifier);
    QLIST_REMOVE(pc, next);
    qemu_mutex_destroy(&pc->lock);
    g_free(pc->path);
    g_free(pc);
}

void hostmem_pcow_report_kvm_efault(bool gpa_valid, uint64_t gpa)
{
    HostMemPcow *pc;
    GString *images;

    if (QLIST_EMPTY(&hostmem_pcow_list)) {
        return;
    }

    if (gpa_valid) {
        MemoryRegionSection sec = memory_region_find(get_system_memory(),
                                                     gpa, 1);
        HostMemPcow *found = NULL;

        if (sec.mr) {
            QLIST_FOREACH(pc, &hostmem_pcow_list, next) {
                if (sec.mr == &pc->backend->mr) {
                    found = pc;
                    break;
                }
            }
            if (found) {
                error_report("pcow: KVM could not fault in guest physical "
                             "address 0x%" PRIx64 " (offset 0x%" PRIx64
                             " of pcow image '%s'): this host kernel does "
                             "not let KVM map pcow-managed memory; run this "
                             "guest with accel=tcg", gpa,
                             (uint64_t)sec.offset_within_region,
                             found->path);
            }
            memory_region_unref(sec.mr);
        }
        return;
    }

    images = g_string_new(NULL);
    QLIST_FOREACH(pc, &hostmem_pcow_list, next) {
        g_string_append_printf(images, "%s'%s'", images->len ? ", " : "",
                               pc->path);
    }
    error_report("pcow: KVM_RUN failed with EFAULT (address not reported by "
                 "this kernel); this guest's memory includes pcow image(s) "
                 "%s, which this host kernel may not let KVM fault in; run "
                 "this guest with accel=tcg", images->str);
    g_string_free(images, true);
}
