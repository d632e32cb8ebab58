/*
 * The pcow Image Monitor: live snapshots (create, delete, revert)
 *
 * The caller has stopped every thread that writes the range (QEMU pauses
 * the vCPUs).  Under fault_lock (the uffd thread waits) and once the COW
 * handlers in flight are drained, the image snapshot is taken or deleted
 * and the mapping is given the image's new writability.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <inttypes.h>

#include "pcow-monitor-int.h"

int pcow_monitor_snapshot_create(pcow_monitor *mon, const char *name,
                                 uint64_t *id, pcow_error *err)
{
    return pcow_monitor_snapshot_create_vm(mon, name, NULL, id, err);
}

int pcow_monitor_snapshot_create_vm(pcow_monitor *mon, const char *name,
                                    const pcow_vm_state *vm, uint64_t *id,
                                    pcow_error *err)
{
    int r;

    if (mon->read_only) {
        return mon_error(mon, err, -EROFS, "image is read-only");
    }
    /* Fail before the flush touches the image if it was truncated */
    r = pcow_check_file_size(mon->img, err);
    if (r < 0) {
        return r;
    }
    pthread_mutex_lock(&mon->fault_lock);
    mon_dispatcher_drain(mon);
    /* The flush's failure is a step of the snapshot: say which */
    r = pcow_error_as_step(err, pcow_monitor_flush(mon, err));
    if (r == 0) {
        r = pcow_snapshot_create_vm(mon->img, name, vm, id, err);
    }
    if (r == 0) {
        r = mon_remap_data(mon, false, err);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    return r;
}

int pcow_monitor_snapshot_delete(pcow_monitor *mon, const char *name_or_id,
                                 pcow_error *err)
{
    int r;

    if (mon->read_only) {
        return mon_error(mon, err, -EROFS, "image is read-only");
    }
    pthread_mutex_lock(&mon->fault_lock);
    mon_dispatcher_drain(mon);
    r = pcow_snapshot_delete(mon->img, name_or_id, err);
    if (r == 0) {
        r = mon_remap_data(mon, true, err);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    return r;
}

/*
 * After a revert: the whole range is replaced by one hole and mapped again
 * as the image now says, so that holes read zeros and what was written
 * since is gone from every page.  fault_lock held.
 */
static int mon_remap_all(pcow_monitor *mon, pcow_error *err)
{
    int r = mon_map_reset(mon, err);

    if (r == 0) {
        r = mon_uffd_register(mon, err);
    }
    return r < 0 ? r : mon_map_image(mon, err);
}

/*
 * The guest's memory becomes the snapshot's: the whole range is replaced
 * by one hole and mapped again as the reverted image says, so that holes
 * read zeros and what was written since is gone from every page.
 */
int pcow_monitor_snapshot_revert(pcow_monitor *mon, const char *name,
                                 pcow_error *err)
{
    pcow_snapshot_info sn;
    int r;

    if (mon->read_only) {
        return mon_error(mon, err, -EROFS, "image is read-only");
    }
    r = pcow_snapshot_lookup(mon->img, name, false, 0, &sn, err);
    if (r < 0) {
        return r;
    }
    if (sn.virtual_size != mon->size) {
        return mon_error(mon, err, -EINVAL, "snapshot '%s' has virtual size "
                         "%" PRIu64 ", the mapping %" PRIu64, name,
                         sn.virtual_size, mon->size);
    }
    pthread_mutex_lock(&mon->fault_lock);
    mon_dispatcher_drain(mon);
    r = pcow_snapshot_revert(mon->img, name, err);
    if (r == 0) {
        r = mon_remap_all(mon, err);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    return r;
}

int pcow_monitor_clone_reset(pcow_monitor *mon, pcow_error *err)
{
    pcow_snapshot_info sn;
    int r;

    if (mon->read_only) {
        return mon_error(mon, err, -EROFS, "image is read-only");
    }
    r = pcow_clone_origin(mon->img, &sn, err);
    if (r < 0) {
        return r;
    }
    if (sn.virtual_size != mon->size) {
        return mon_error(mon, err, -EINVAL, "the clone's origin '%s' has "
                         "virtual size %" PRIu64 ", the mapping %" PRIu64,
                         sn.name, sn.virtual_size, mon->size);
    }
    pthread_mutex_lock(&mon->fault_lock);
    mon_dispatcher_drain(mon);
    r = pcow_clone_reset(mon->img, err);
    if (r == 0) {
        r = mon_remap_all(mon, err);
    }
    pthread_mutex_unlock(&mon->fault_lock);
    return r;
}
