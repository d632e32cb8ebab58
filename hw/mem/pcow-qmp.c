/*
 * QMP and HMP commands for pcow memory backends
 *
 * query-pcow / info pcow: image, backing chain, sizes, snapshots and the
 * Image Monitor's fault statistics of every memory-backend-file with
 * format=pcow.  pcow-snapshot-create / pcow_snapshot_create: live internal
 * snapshot; the vCPUs are stopped as for savevm while the Image Monitor
 * drains its in-flight faults, freezes the mapping and write-protects it.
 * pcow-snapshot-delete: the same pause while the mapping is made writable
 * again.  pcow-snapshot-revert always fails: a running guest's memory is
 * reverted offline with pcow-img (see qapi/pcow.json for why).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-pcow.h"
#include "qapi/qmp/qdict.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "migration/misc.h"
#include "qom/object.h"
#include "sysemu/hostmem.h"
#include "sysemu/runstate.h"
#include "backends/hostmem-pcow.h"
#include "pcow/monitor.h"
#include "trace.h"

typedef struct PcowBackendRef {
    HostMemoryBackend *backend;
    HostMemPcow *pc;
    pcow_monitor *mon;
} PcowBackendRef;

/*
 * Was the image truncated behind QEMU's back (the lock is advisory)?  Then
 * its metadata mappings raise SIGBUS: check before touching them.
 */
static bool pcow_backend_check_size(const char *id, HostMemPcow *pc,
                                    pcow_monitor *mon, Error **errp)
{
    pcow_error perr = { 0 };
    int ret = pcow_check_file_size(pcow_monitor_image(mon), &perr);

    if (ret < 0) {
        error_setg(errp, "pcow image '%s' (memory backend '%s'): %s",
                   hostmem_pcow_path(pc), id,
                   hostmem_pcow_error_text(&perr, ret));
        return false;
    }
    return true;
}

/* @s as it may be printed: libpcow's rule (control characters as \xHH) */
static char *pcow_printable(const char *s)
{
    char *e = pcow_escape_text(s);
    char *r = g_strdup(e ? e : "?");

    free(e);
    return r;
}

/*
 * A snapshot command that is refused must not pause the guest, so this
 * runs before vm_stop().  As savevm, refuse while a migration runs: the
 * destination takes over the image at switchover and its mapping is set
 * up from the metadata as it was read at open.  Refuse while any pcow
 * backend holds faults for space: a vCPU held in one cannot pause, so
 * vm_stop() would block QMP until space returns.
 */
static bool pcow_snapshot_allowed(PcowBackendRef *ref, const char *id,
                                  Error **errp)
{
    HostMemPcow *held = NULL;

    if (!migration_is_idle() || runstate_check(RUN_STATE_INMIGRATE)) {
        error_setg(errp, "memory backend '%s': no pcow snapshot can be "
                   "taken or deleted while a migration is in progress",
                   id);
        return false;
    }
    if (runstate_is_running() && (held = hostmem_pcow_any_held())) {
        error_setg(errp, "memory backend '%s': the guest waits for space "
                   "on pcow image '%s' (out of space); free space first",
                   id, hostmem_pcow_path(held));
        return false;
    }
    /* Not pcow_get_info: it walks every table under the fault path's lock */
    if (hostmem_pcow_readonly(ref->pc)) {
        error_setg(errp, "pcow image '%s' (memory backend '%s') is "
                   "read-only", hostmem_pcow_path(ref->pc), id);
        return false;
    }
    return true;
}

/* The open pcow backend whose id is @id. */
static bool pcow_backend_lookup(const char *id, PcowBackendRef *ref,
                                Error **errp)
{
    Object *obj = object_resolve_path_component(object_get_objects_root(),
                                                id);

    if (!obj || !object_dynamic_cast(obj, TYPE_MEMORY_BACKEND)) {
        error_setg(errp, "no memory backend with id '%s'", id);
        return false;
    }
    ref->backend = MEMORY_BACKEND(obj);
    ref->pc = hostmem_pcow_find(ref->backend);
    if (!ref->pc) {
        error_setg(errp, "memory backend '%s' does not map a pcow image "
                   "(format=pcow)", id);
        return false;
    }
    ref->mon = hostmem_pcow_monitor(ref->pc);
    if (!ref->mon) {
        error_setg(errp, "the pcow image of memory backend '%s' is closed",
                   id);
        return false;
    }
    return true;
}

static PcowSnapshotInfo *pcow_qmp_snapshot(const pcow_snapshot_info *sn,
                                            uint32_t cluster_size)
{
    PcowSnapshotInfo *s = g_new0(PcowSnapshotInfo, 1);

    s->id = sn->id;
    s->name = g_strdup(sn->name);
    s->date_sec = sn->date_sec;
    s->date_nsec = sn->date_nsec;
    s->virtual_size = sn->virtual_size;
    s->allocated_bytes = sn->clusters * cluster_size;
    return s;
}

static PcowLatency *pcow_latency_info(const pcow_latency *lat)
{
    PcowLatency *l = g_new0(PcowLatency, 1);

    l->count = lat->count;
    l->max_ns = lat->max_ns;
    if (lat->count) {
        l->p50_ns = pcow_latency_percentile(lat, 50);
        l->p99_ns = pcow_latency_percentile(lat, 99);
    }
    return l;
}

static PcowStatistics *pcow_statistics(pcow_monitor *mon)
{
    PcowStatistics *st = g_new0(PcowStatistics, 1);
    pcow_monitor_stats ms;

    pcow_monitor_get_stats(mon, &ms);
    st->expansions = ms.expansions;
    st->cow_unit_faults = ms.cow_unit_faults;
    st->cow_cluster_faults = ms.cow_cluster_faults;
    st->hole_read_faults = ms.hole_read_faults;
    st->pool_hits = ms.pool_hits;
    st->pool_misses = ms.pool_misses;
    st->errors = ms.errors;
    st->vmas = ms.vmas;
    st->vmas_needed = ms.vmas_needed;
    st->lazy_mapping = ms.lazy;
    st->held_faults = ms.held_faults;
    st->nospace_episodes = ms.nospace_episodes;
    st->expansion_latency = pcow_latency_info(&ms.expansion_latency);
    st->cow_latency = pcow_latency_info(&ms.cow_latency);
    st->hole_read_latency = pcow_latency_info(&ms.hole_read_latency);
    return st;
}

static PcowInfo *pcow_qmp_info(const char *id, HostMemPcow *pc,
                               pcow_monitor *mon)
{
    pcow_image *img = pcow_monitor_image(mon);
    PcowInfo *info = g_new0(PcowInfo, 1);
    PcowBackingImageList **chain_tail = &info->backing_chain;
    PcowSnapshotInfoList **sn_tail = &info->snapshots;
    pcow_snapshot_info *sn = NULL;
    pcow_error perr = { 0 };
    pcow_info pi;
    pcow_image *layer;
    int n, i;

    pcow_get_info(img, &pi);
    info->id = g_strdup(id);
    info->filename = g_strdup(hostmem_pcow_path(pc));
    info->read_only = pi.read_only;
    info->virtual_size = pi.virtual_size;
    info->cluster_size = pi.cluster_size;
    info->allocated_bytes = pi.allocated_clusters * pi.cluster_size;
    info->active_bytes = pi.active_clusters * pi.cluster_size;
    info->disk_size = pi.disk_size;

    /* Nearest base first; a raw base ends the chain. */
    for (layer = img; layer; layer = pcow_backing(layer)) {
        pcow_info li;
        PcowBackingImage *b;

        if (layer == img) {
            li = pi;
        } else {
            pcow_get_info(layer, &li);
        }
        if (li.backing_format == PCOW_BACKING_NONE) {
            break;
        }
        b = g_new0(PcowBackingImage, 1);
        b->filename = g_strdup(li.backing_path[0] ? li.backing_path
                                                  : li.backing_file);
        b->format = li.backing_format == PCOW_BACKING_RAW
                    ? PCOW_IMAGE_FORMAT_RAW : PCOW_IMAGE_FORMAT_PCOW;
        QAPI_LIST_APPEND(chain_tail, b);
    }

    n = pcow_snapshot_list(img, &sn, &perr);
    for (i = 0; i < n; i++) {
        QAPI_LIST_APPEND(sn_tail, pcow_qmp_snapshot(&sn[i], pi.cluster_size));
    }
    free(sn);

    info->nospace = hostmem_pcow_nospace_fail(pc) ? PCOW_NOSPACE_POLICY_FAIL
                                                  : PCOW_NOSPACE_POLICY_STALL;
    info->statistics = pcow_statistics(mon);
    return info;
}

typedef struct PcowQueryState {
    PcowInfoList *head;
    PcowInfoList **tail;
    Error **errp;
} PcowQueryState;

static int pcow_query_one(Object *obj, void *opaque)
{
    PcowQueryState *qs = opaque;
    HostMemPcow *pc;
    pcow_monitor *mon;

    if (!object_dynamic_cast(obj, TYPE_MEMORY_BACKEND)) {
        return 0;
    }
    pc = hostmem_pcow_find(MEMORY_BACKEND(obj));
    mon = pc ? hostmem_pcow_monitor(pc) : NULL;
    if (mon) {
        const char *id = object_get_canonical_path_component(obj);

        if (!pcow_backend_check_size(id, pc, mon, qs->errp)) {
            return 1;
        }
        QAPI_LIST_APPEND(qs->tail, pcow_qmp_info(id, pc, mon));
    }
    return 0;
}

PcowInfoList *qmp_query_pcow(Error **errp)
{
    PcowQueryState qs = { .head = NULL, .tail = &qs.head, .errp = errp };

    if (object_child_foreach(object_get_objects_root(), pcow_query_one,
                             &qs)) {
        qapi_free_PcowInfoList(qs.head);
        return NULL;
    }
    return qs.head;
}

/*
 * Stop the vCPUs as savevm does (vm_stop() also quiesces block devices, so
 * no DMA into guest memory is in flight), returning whether they ran.
 */
static bool pcow_pause_guest(void)
{
    bool was_running = runstate_is_running();

    if (was_running) {
        vm_stop(RUN_STATE_SAVE_VM);
    }
    return was_running;
}

static void pcow_resume_guest(bool was_running)
{
    if (was_running) {
        vm_start();
    }
}

PcowSnapshotCreateResult *qmp_pcow_snapshot_create(const char *id,
                                                   const char *name,
                                                   Error **errp)
{
    PcowSnapshotCreateResult *res;
    PcowBackendRef ref;
    pcow_snapshot_info *sn = NULL, found;
    pcow_error perr = { 0 };
    int64_t t0, t1, t2, t3;
    uint64_t new_id = 0;
    bool was_running;
    int ret, n, i;

    if (!pcow_backend_lookup(id, &ref, errp) ||
        !pcow_backend_check_size(id, ref.pc, ref.mon, errp) ||
        !pcow_snapshot_allowed(&ref, id, errp)) {
        return NULL;
    }
    if (pcow_snapshot_name_check(name, &perr) < 0) {
        error_setg(errp, "memory backend '%s': %s", id, perr.msg);
        return NULL;
    }
    if (pcow_snapshot_lookup(pcow_monitor_image(ref.mon), name, false, 0,
                             &found, NULL) == 0) {
        error_setg(errp, "pcow image '%s' (memory backend '%s'): snapshot "
                   "'%s' already exists (id %" PRIu64 ")",
                   hostmem_pcow_path(ref.pc), id, name, found.id);
        return NULL;
    }

    t0 = get_clock();
    was_running = pcow_pause_guest();
    t1 = get_clock();
    ret = pcow_monitor_snapshot_create(ref.mon, name, &new_id, &perr);
    t2 = get_clock();
    pcow_resume_guest(was_running);
    t3 = get_clock();

    trace_pcow_snapshot_create(id, name, ret, was_running ? t3 - t0 : 0,
                               t2 - t1);
    if (ret < 0) {
        g_autofree char *ename = pcow_printable(name);

        error_setg(errp, "pcow image '%s' (memory backend '%s'): cannot "
                   "create snapshot '%s': %s", hostmem_pcow_path(ref.pc), id,
                   ename, hostmem_pcow_error_why(&perr, ret));
        return NULL;
    }

    res = g_new0(PcowSnapshotCreateResult, 1);
    res->pause_ns = was_running ? t3 - t0 : 0;
    n = pcow_snapshot_list(pcow_monitor_image(ref.mon), &sn, &perr);
    for (i = n - 1; i >= 0; i--) {
        if (sn[i].id == new_id) {
            res->snapshot = pcow_qmp_snapshot(
                &sn[i], pcow_cluster_size(pcow_monitor_image(ref.mon)));
            break;
        }
    }
    free(sn);
    if (!res->snapshot) {
        /* Cannot happen: it was just created; still return a valid reply. */
        res->snapshot = g_new0(PcowSnapshotInfo, 1);
        res->snapshot->name = g_strdup(name);
    }
    return res;
}

void qmp_pcow_snapshot_delete(const char *id, bool has_name,
                              const char *name, bool has_snapshot_id,
                              uint64_t snapshot_id, Error **errp)
{
    PcowBackendRef ref;
    pcow_snapshot_info sn;
    pcow_error perr = { 0 };
    bool was_running;
    int64_t t0;
    int ret;

    if (!pcow_backend_lookup(id, &ref, errp) ||
        !pcow_backend_check_size(id, ref.pc, ref.mon, errp) ||
        !pcow_snapshot_allowed(&ref, id, errp)) {
        return;
    }
    if (!has_name && !has_snapshot_id) {
        error_setg(errp, "give the snapshot's name or snapshot-id");
        return;
    }
    /* Exact: a name is never taken for an id (name=2 is the name "2") */
    ret = pcow_snapshot_lookup(pcow_monitor_image(ref.mon),
                               has_name ? name : NULL, has_snapshot_id,
                               snapshot_id, &sn, &perr);
    if (ret < 0) {
        g_autofree char *msg = pcow_printable(perr.msg);

        error_setg(errp, "memory backend '%s': %s", id, msg);
        return;
    }

    /*
     * Deleting remaps clusters that became the image's own writable again;
     * do that with the vCPUs stopped, as for create.  Names are unique and
     * libpcow matches a name before an id, so sn.name is this snapshot.
     */
    t0 = get_clock();
    was_running = pcow_pause_guest();
    ret = pcow_monitor_snapshot_delete(ref.mon, sn.name, &perr);
    pcow_resume_guest(was_running);

    trace_pcow_snapshot_delete(id, sn.name, ret,
                               was_running ? get_clock() - t0 : 0);
    if (ret < 0) {
        g_autofree char *ename = pcow_printable(sn.name);

        error_setg(errp, "pcow image '%s' (memory backend '%s'): cannot "
                   "delete snapshot '%s' (id %" PRIu64 "): %s",
                   hostmem_pcow_path(ref.pc), id, ename, sn.id,
                   hostmem_pcow_error_why(&perr, ret));
    }
}

void qmp_pcow_snapshot_revert(const char *id, const char *name, Error **errp)
{
    PcowBackendRef ref;

    if (!pcow_backend_lookup(id, &ref, errp)) {
        return;
    }
    error_setg(errp, "reverting the memory of a running guest is not "
               "supported: the rest of the guest's state would not match "
               "it; revert offline: stop the VM, then run "
               "'pcow-img snapshot -a %s %s' and start the VM again",
               name, hostmem_pcow_path(ref.pc));
}

/* HMP */

static void hmp_pcow_latency(Monitor *mon, const char *what,
                             const PcowLatency *l)
{
    if (!l->count) {
        monitor_printf(mon, "    %-12s -\n", what);
        return;
    }
    monitor_printf(mon, "    %-12s %" PRIu64 " faults, p50 %.1f us, "
                   "p99 %.1f us, max %.1f us\n", what, l->count,
                   l->p50_ns / 1000.0, l->p99_ns / 1000.0, l->max_ns / 1000.0);
}

void hmp_info_pcow(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;
    PcowInfoList *list = qmp_query_pcow(&err), *l;

    if (hmp_handle_error(mon, err)) {
        return;
    }
    if (!list) {
        monitor_printf(mon, "No pcow memory backends\n");
        return;
    }
    for (l = list; l; l = l->next) {
        PcowInfo *p = l->value;
        PcowStatistics *st = p->statistics;
        g_autofree char *vs = size_to_str(p->virtual_size);
        g_autofree char *cs = size_to_str(p->cluster_size);
        g_autofree char *as = size_to_str(p->allocated_bytes);
        g_autofree char *ds = size_to_str(p->disk_size);
        PcowBackingImageList *b;
        PcowSnapshotInfoList *s;

        monitor_printf(mon, "%s: %s (%s)\n", p->id, p->filename,
                       p->read_only ? "read-only" : "read-write");
        monitor_printf(mon, "  virtual size %s, cluster %s, allocated %s, "
                       "disk %s\n", vs, cs, as, ds);
        monitor_printf(mon, "  backing chain:");
        if (!p->backing_chain) {
            monitor_printf(mon, " none");
        }
        for (b = p->backing_chain; b; b = b->next) {
            monitor_printf(mon, "%s %s (%s)", b == p->backing_chain ? "" : ",",
                           b->value->filename,
                           PcowImageFormat_str(b->value->format));
        }
        monitor_printf(mon, "\n");
        if (!p->snapshots) {
            monitor_printf(mon, "  snapshots: none\n");
        } else {
            monitor_printf(mon, "  snapshots:\n    %-6s %-24s %-19s %s\n",
                           "ID", "NAME", "DATE", "ALLOCATED");
        }
        for (s = p->snapshots; s; s = s->next) {
            g_autoptr(GDateTime) dt =
                g_date_time_new_from_unix_local(s->value->date_sec);
            g_autofree char *date = dt ? g_date_time_format(
                dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
            g_autofree char *sa = size_to_str(s->value->allocated_bytes);

            g_autofree char *ename = pcow_printable(s->value->name);

            monitor_printf(mon, "    %-6" PRIu64 " %-24s %-19s %s\n",
                           s->value->id, ename, date, sa);
        }
        monitor_printf(mon, "  faults: %" PRIu64 " expansions, %" PRIu64
                       " COW units, %" PRIu64 " COW clusters, %" PRIu64
                       " hole reads, %" PRIu64 " errors\n",
                       st->expansions, st->cow_unit_faults,
                       st->cow_cluster_faults, st->hole_read_faults,
                       st->errors);
        if (st->held_faults) {
            monitor_printf(mon, "  out of space: %" PRIu64 " faults held "
                           "(vCPUs stalled) until space is freed\n",
                           st->held_faults);
        }
        monitor_printf(mon, "  on no space: %s; %" PRIu64 " episodes\n",
                       PcowNospacePolicy_str(p->nospace),
                       st->nospace_episodes);
        monitor_printf(mon, "  pool: %" PRIu64 " hits, %" PRIu64 " misses; "
                       "%" PRIu64 " mappings (%" PRIu64 " needed%s)\n",
                       st->pool_hits, st->pool_misses, st->vmas,
                       st->vmas_needed,
                       st->lazy_mapping ? ", mapped lazily" : "");
        monitor_printf(mon, "  latency:\n");
        hmp_pcow_latency(mon, "expansion", st->expansion_latency);
        hmp_pcow_latency(mon, "cow", st->cow_latency);
        hmp_pcow_latency(mon, "hole read", st->hole_read_latency);
    }
    qapi_free_PcowInfoList(list);
}

void hmp_pcow_snapshot_create(Monitor *mon, const QDict *qdict)
{
    const char *id = qdict_get_str(qdict, "id");
    const char *name = qdict_get_str(qdict, "name");
    Error *err = NULL;
    PcowSnapshotCreateResult *res = qmp_pcow_snapshot_create(id, name, &err);

    if (hmp_handle_error(mon, err)) {
        return;
    }
    monitor_printf(mon, "snapshot '%s' (id %" PRIu64 ") of memory backend "
                   "'%s' created; guest paused %.3f ms\n", res->snapshot->name,
                   res->snapshot->id, id, res->pause_ns / 1e6);
    qapi_free_PcowSnapshotCreateResult(res);
}

void hmp_pcow_snapshot_delete(Monitor *mon, const QDict *qdict)
{
    const char *snapshot = qdict_get_str(qdict, "snapshot");
    bool by_id = qdict_get_try_bool(qdict, "by_id", false);
    uint64_t snapshot_id = 0;
    Error *err = NULL;

    /* -i: the argument is a snapshot id; otherwise it is a name, always */
    if (by_id && qemu_strtou64(snapshot, NULL, 10, &snapshot_id) < 0) {
        error_setg(&err, "-i: '%s' is not a snapshot id", snapshot);
    } else {
        qmp_pcow_snapshot_delete(qdict_get_str(qdict, "id"), !by_id,
                                 snapshot, by_id, snapshot_id, &err);
    }
    hmp_handle_error(mon, err);
}
