/*
 * pcow NVDIMMs in internal snapshots of the whole VM
 *
 * savevm/loadvm/delvm and the snapshot-save/-load/-delete jobs call these
 * hooks for every pcow backend (patches/0014-savevm-let-other-state-take-
 * part-in-internal-snapshots.patch): savevm takes a pcow snapshot with the
 * same tag while the VM is stopped and leaves the backend's RAM out of the
 * vmstate, because the image holds it; loadvm reverts the image and maps
 * it again before any vCPU runs; delvm deletes the snapshot.
 *
 * A VM without a block device for the vmstate keeps it in the image of the
 * first pcow backend that takes part (patches/0018-savevm-let-a-snapshot-
 * handler-keep-the-vmstate.patch): the snapshot stores it, loadvm reads
 * it back, delvm frees it with the snapshot.  The snapshot-save/-load
 * jobs name the backend that keeps it (vmstate=ID, patches/0024-savevm-
 * let-the-snapshot-jobs-name-a-handler-for-the-vmstate.patch).
 *
 * A clone (pcow-img clone TEMPLATE@SNAP) also answers to the name of its
 * *origin*, the template's snapshot it was made from, unless it has a
 * snapshot of that name itself: loadvm (and -loadvm) of that name read the
 * VM state from the template and revert the clone to the origin, which on
 * a clone that never ran frees and copies nothing; delvm and savevm of the
 * name are refused.  So a VM starts from a clone with -loadvm ORIGIN.
 * Precedence is per image: a loadvm that would take one image to its own
 * snapshot and another to its origin of the same name is refused.
 *
 * A read-only image takes no part, as a read-only drive: nobody can change
 * it while QEMU runs, so it gets no snapshot; its RAM is still left out of
 * the vmstate, which loadvm could not write into a read-only mapping.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "exec/cpu-common.h"
#include "exec/memory.h"
#include "migration/misc.h"
#include "migration/snapshot.h"
#include "sysemu/hostmem.h"
#include "sysemu/runstate.h"
#include "backends/hostmem-pcow.h"
#include "pcow/monitor.h"

typedef struct PcowVmSnap {
    HostMemoryBackend *backend;
    bool left_out;              /* made unmigratable by vmstate_begin */
    QLIST_ENTRY(PcowVmSnap) next;
} PcowVmSnap;

/* Every pcow backend's handler: loadvm compares what they answer to */
static QLIST_HEAD(, PcowVmSnap) vmsnap_list =
    QLIST_HEAD_INITIALIZER(vmsnap_list);

static HostMemPcow *vmsnap_pc(PcowVmSnap *vs)
{
    return hostmem_pcow_find(vs->backend);
}

static const char *vmsnap_id(PcowVmSnap *vs)
{
    return object_get_canonical_path_component(OBJECT(vs->backend));
}

static char *vmsnap_describe(void *opaque)
{
    PcowVmSnap *vs = opaque;

    return g_strdup_printf("pcow image '%s' (memory backend '%s')",
                           hostmem_pcow_path(vmsnap_pc(vs)), vmsnap_id(vs));
}

static bool vmsnap_takes_part(void *opaque)
{
    return !hostmem_pcow_readonly(vmsnap_pc(opaque));
}

/*
 * savevm, loadvm and delvm ask this before they change anything.  During a
 * migration, upstream refuses savevm; a revert would remap the NVDIMM
 * behind the dirty log (the destination keeps pages sent before it and
 * never receives clusters that were holes when the migration began), and
 * a delete changes the metadata the destination maps from.
 */
static bool vmsnap_can_snapshot(void *opaque, Error **errp)
{
    PcowVmSnap *vs = opaque;

    if (!migration_is_idle() || runstate_check(RUN_STATE_INMIGRATE)) {
        error_setg(errp, "memory backend '%s': no pcow snapshot can be "
                   "taken, loaded or deleted while a migration is in "
                   "progress", vmsnap_id(vs));
        return false;
    }
    if (!hostmem_pcow_monitor(vmsnap_pc(vs))) {
        g_autofree char *what = vmsnap_describe(vs);

        error_setg(errp, "%s is closed", what);
        return false;
    }
    /* A vCPU held for space cannot pause: vm_stop() would block QMP */
    if (runstate_is_running() && hostmem_pcow_held_faults(vmsnap_pc(vs))) {
        g_autofree char *what = vmsnap_describe(vs);

        error_setg(errp, "the guest waits for space on %s (out of space); "
                   "free space first", what);
        return false;
    }
    return true;
}

static pcow_image *vmsnap_img(PcowVmSnap *vs)
{
    return pcow_monitor_image(hostmem_pcow_monitor(vmsnap_pc(vs)));
}

/*
 * "pcow image 'a.pcow' (memory backend 'pm0'): cannot WHAT snapshot 's1':
 * why": the image and the operation once, libpcow's message without
 * them (pcow_error's why marks its cause)
 */
static int vmsnap_error(PcowVmSnap *vs, const char *what, const char *name,
                        int ret, const pcow_error *perr, Error **errp)
{
    g_autofree char *dev = vmsnap_describe(vs);
    char *shown = pcow_escape_text(name);     /* a tag may hold anything */

    error_setg(errp, "%s: cannot %s snapshot '%s': %s", dev, what,
               shown ? shown : name, hostmem_pcow_error_why(perr, ret));
    free(shown);
    return ret;
}

/*
 * Is @name the clone's origin (the template's snapshot it was made from)
 * rather than a snapshot of its own?  Its own take precedence.  If so,
 * *@sn describes the origin.
 */
static bool vmsnap_is_origin(PcowVmSnap *vs, const char *name,
                             pcow_snapshot_info *sn)
{
    pcow_image *img = vmsnap_img(vs);

    if (pcow_snapshot_lookup(img, name, false, 0, sn, NULL) == 0) {
        return false;
    }
    return pcow_clone_origin(img, sn, NULL) == 0 && !strcmp(sn->name, name);
}

/*
 * The snapshot table is read from memory, but touching the image's
 * mappings after a truncation behind our back raises SIGBUS: check the
 * file first, and fail naming the image rather than answer "no".
 */
static int vmsnap_has_snapshot(void *opaque, const char *name, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_image *img = pcow_monitor_image(hostmem_pcow_monitor(vmsnap_pc(vs)));
    pcow_error perr = { 0 };
    pcow_snapshot_info sn;
    int ret = pcow_check_file_size(img, &perr);

    if (ret == 0) {
        ret = pcow_snapshot_lookup(img, name, false, 0, &sn, &perr);
        if (ret == -ENOENT) {
            return vmsnap_is_origin(vs, name, &sn);
        }
    }
    if (ret < 0) {
        vmsnap_error(vs, "look up", name, ret, &perr, errp);
        return -1;
    }
    return 1;
}

static void vmsnap_vmstate_begin(void *opaque)
{
    PcowVmSnap *vs = opaque;
    RAMBlock *rb = vs->backend->mr.ram_block;

    vs->left_out = rb && qemu_ram_is_migratable(rb);
    if (vs->left_out) {
        qemu_ram_unset_migratable(rb);
    }
}

static void vmsnap_vmstate_end(void *opaque)
{
    PcowVmSnap *vs = opaque;

    if (vs->left_out) {
        qemu_ram_set_migratable(vs->backend->mr.ram_block);
        vs->left_out = false;
    }
}

typedef enum VmSnapAnswer {
    VMSNAP_NONE,            /* no such name, or takes no part */
    VMSNAP_OWN,             /* a snapshot of its own */
    VMSNAP_ORIGIN,          /* a clone made from the template's @name */
} VmSnapAnswer;

/* What @vs answers to @name; an image it cannot read reports itself */
static VmSnapAnswer vmsnap_answer(PcowVmSnap *vs, const char *name)
{
    pcow_snapshot_info sn;

    if (!vmsnap_takes_part(vs) || !hostmem_pcow_monitor(vmsnap_pc(vs)) ||
        pcow_check_file_size(vmsnap_img(vs), NULL) < 0) {
        return VMSNAP_NONE;
    }
    if (pcow_snapshot_lookup(vmsnap_img(vs), name, false, 0, &sn,
                             NULL) == 0) {
        return VMSNAP_OWN;
    }
    return vmsnap_is_origin(vs, name, &sn) ? VMSNAP_ORIGIN : VMSNAP_NONE;
}

/*
 * Own snapshots take precedence over the origin per image: if one image
 * has its own @name and another is a clone made from @name, a loadvm
 * would put together memory of two different snapshots (and the VM state
 * of one).  Refuse, naming both.
 */
static bool vmsnap_check_mix(PcowVmSnap *vs, const char *name, Error **errp)
{
    VmSnapAnswer mine = vmsnap_answer(vs, name);
    PcowVmSnap *o;

    QLIST_FOREACH(o, &vmsnap_list, next) {
        VmSnapAnswer theirs = mine == VMSNAP_NONE ? VMSNAP_NONE
                              : vmsnap_answer(o, name);

        if (theirs != VMSNAP_NONE && theirs != mine) {
            g_autofree char *own = vmsnap_describe(mine == VMSNAP_OWN ? vs
                                                                      : o);
            g_autofree char *clone = vmsnap_describe(mine == VMSNAP_OWN
                                                     ? o : vs);
            char *shown = pcow_escape_text(name);

            error_setg(errp, "snapshot '%s' is one of its own in %s but "
                       "the origin of the clone %s: refusing to load the "
                       "two together", shown ? shown : name, own, clone);
            free(shown);
            return false;
        }
    }
    return true;
}

/*
 * loadvm checks this before any block device is reverted: a snapshot
 * taken before the image was resized cannot be mapped at the NVDIMM's
 * size, and finding that out in goto_snapshot would leave the drives
 * reverted and the NVDIMM not.
 */
static bool vmsnap_can_goto(void *opaque, const char *name, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_monitor *mon = hostmem_pcow_monitor(vmsnap_pc(vs));
    pcow_error perr = { 0 };
    pcow_snapshot_info sn;
    int ret;

    if (!vmsnap_check_mix(vs, name, errp)) {
        return false;
    }
    ret = pcow_snapshot_lookup(pcow_monitor_image(mon), name, false, 0,
                               &sn, &perr);
    if (ret == -ENOENT && vmsnap_is_origin(vs, name, &sn)) {
        ret = 0;
    }
    if (ret == 0 && sn.virtual_size != pcow_monitor_size(mon)) {
        ret = pcow_set_error(&perr, -EINVAL, "its virtual size is %" PRIu64
                             ", the image's now %" PRIu64, sn.virtual_size,
                             pcow_monitor_size(mon));
    }
    if (ret < 0) {
        vmsnap_error(vs, "revert to", name, ret, &perr, errp);
        return false;
    }
    return true;
}

static int vmsnap_create(void *opaque, const char *name, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_error perr = { 0 };
    int ret = pcow_monitor_snapshot_create(
        hostmem_pcow_monitor(vmsnap_pc(vs)), name, NULL, &perr);

    return ret < 0 ? vmsnap_error(vs, "create", name, ret, &perr, errp) : 0;
}

/*
 * savevm of a VM that has no block device for the vmstate: the image
 * stores it with the snapshot, in the one commit that creates it.
 */
static int vmsnap_create_vmstate(void *opaque, const char *name,
                                 const void *buf, size_t len,
                                 uint64_t vm_clock_nsec, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_vm_state vm = { .data = buf, .size = len,
                         .vm_clock_nsec = vm_clock_nsec };
    pcow_error perr = { 0 };
    int ret = pcow_monitor_snapshot_create_vm(
        hostmem_pcow_monitor(vmsnap_pc(vs)), name, &vm, NULL, &perr);

    return ret < 0 ? vmsnap_error(vs, "create", name, ret, &perr, errp) : 0;
}

/* loadvm: the vmstate stored with @name, before anything is reverted */
static int vmsnap_load_vmstate(void *opaque, const char *name,
                               uint8_t **buf, size_t *len, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_image *img = vmsnap_img(vs);
    pcow_error perr = { 0 };
    pcow_snapshot_info sn;
    bool origin = vmsnap_is_origin(vs, name, &sn);
    int ret = 0;

    *buf = NULL;
    if (!origin) {
        ret = pcow_snapshot_lookup(img, name, false, 0, &sn, &perr);
    }
    if (ret == 0 && sn.vm_state_size == 0) {
        ret = pcow_set_error(&perr, -ENODATA, "%s", origin ?
                             "the template's snapshot holds no VM state "
                             "(taken without QEMU?)" : "it holds no VM state "
                             "(a snapshot taken beside a disk, or without "
                             "QEMU)");
    }
    if (ret == 0 && !(*buf = g_try_malloc(sn.vm_state_size))) {
        ret = pcow_set_error(&perr, -ENOMEM, "no memory for its %" PRIu64
                             " bytes of VM state", sn.vm_state_size);
    }
    if (ret == 0) {
        ret = origin ? pcow_clone_origin_read_vm_state(img, 0, *buf,
                                                       sn.vm_state_size,
                                                       &perr)
                     : pcow_snapshot_read_vm_state(img, name, 0, *buf,
                                                   sn.vm_state_size, &perr);
    }
    if (ret < 0) {
        g_free(*buf);
        *buf = NULL;
        return vmsnap_error(vs, "load the VM state of", name, ret, &perr,
                            errp);
    }
    *len = sn.vm_state_size;
    return 0;
}

/* A clone's origin: the clone is reverted to it (pcow_clone_reset) */
static int vmsnap_goto(void *opaque, const char *name, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_monitor *mon = hostmem_pcow_monitor(vmsnap_pc(vs));
    pcow_error perr = { 0 };
    pcow_snapshot_info sn;
    int ret = vmsnap_is_origin(vs, name, &sn)
              ? pcow_monitor_clone_reset(mon, &perr)
              : pcow_monitor_snapshot_revert(mon, name, &perr);

    return ret < 0 ? vmsnap_error(vs, "revert to", name, ret, &perr, errp)
                   : 0;
}

/*
 * The monitor deletes a snapshot with the image's writers stopped
 * (pcow/monitor.h): vm_snapshot_all_delete() stops the vCPUs once for all
 * backends (delvm, savevm overwriting a tag), savevm's own rollback runs
 * with the VM stopped already.  A clone's origin is not the clone's to
 * delete (nor to overwrite with savevm, which deletes first).
 */
static int vmsnap_delete(void *opaque, const char *name, Error **errp)
{
    PcowVmSnap *vs = opaque;
    pcow_error perr = { 0 };
    pcow_snapshot_info sn;
    int ret;

    if (vmsnap_is_origin(vs, name, &sn)) {
        pcow_info info;

        /* the base as libpcow resolved it, not as stored (relative) */
        pcow_get_info(vmsnap_img(vs), &info);
        ret = pcow_set_error(&perr, -EPERM, "it is the snapshot this clone "
                             "was made from (in %s)", info.backing_path[0]
                             ? info.backing_path : info.backing_file);
        return vmsnap_error(vs, "delete", name, ret, &perr, errp);
    }
    ret = pcow_monitor_snapshot_delete(hostmem_pcow_monitor(vmsnap_pc(vs)),
                                       name, &perr);
    return ret < 0 ? vmsnap_error(vs, "delete", name, ret, &perr, errp) : 0;
}

/* snapshot-save/-load vmstate=ID: the memory backend's id names it */
static bool vmsnap_is_named(void *opaque, const char *name)
{
    return !strcmp(vmsnap_id(opaque), name);
}

static const VMSnapshotOps vmsnap_ops = {
    .describe = vmsnap_describe,
    .takes_part = vmsnap_takes_part,
    .can_snapshot = vmsnap_can_snapshot,
    .has_snapshot = vmsnap_has_snapshot,
    .can_goto = vmsnap_can_goto,
    .vmstate_begin = vmsnap_vmstate_begin,
    .vmstate_end = vmsnap_vmstate_end,
    .create = vmsnap_create,
    .goto_snapshot = vmsnap_goto,
    .delete = vmsnap_delete,
    .create_vmstate = vmsnap_create_vmstate,
    .load_vmstate = vmsnap_load_vmstate,
    .is_named = vmsnap_is_named,
};

void *hostmem_pcow_vmsnap_add(HostMemoryBackend *backend)
{
    PcowVmSnap *vs = g_new0(PcowVmSnap, 1);

    vs->backend = backend;
    vm_snapshot_register(&vmsnap_ops, vs);
    QLIST_INSERT_HEAD(&vmsnap_list, vs, next);
    return vs;
}

void hostmem_pcow_vmsnap_del(void *vmsnap)
{
    if (vmsnap) {
        vm_snapshot_unregister(vmsnap);
        QLIST_REMOVE((PcowVmSnap *)vmsnap, next);
        g_free(vmsnap);
    }
}
