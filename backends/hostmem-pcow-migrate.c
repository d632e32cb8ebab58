/*
 * pcow images in live migration and save/restore
 *
 * Each pcow backend has a migration section, "pcow-image/ID", that says
 * what migration does with its image (the backend's migrate-data=):
 *
 *  - none (the default): the image holds the data; the destination (a
 *    second QEMU on shared storage, or a restore from a state file) maps
 *    the same image.  Nothing of the RAM block is sent.  At switchover,
 *    with the VM stopped and before any device state, the source makes
 *    the image durable, clears in-use and drops its lock (the handover,
 *    hostmem_pcow_release), and the section carries the state stamp the
 *    image was left with.  The destination has not opened the image yet
 *    (hostmem-pcow.c gives its RAM block a placeholder); it opens it
 *    when it reads the stamp, only if the image is clean and still has
 *    that stamp, and maps it over the placeholder before the devices
 *    that follow load.  A failed or cancelled migration, or cont after a
 *    completed one, takes the image back through bdrv_activate_all()
 *    (patches/0020), which fails if another process has it or wrote it
 *    meanwhile; the VM then stays stopped (patches/0021).
 *  - all: the destination has its own image of the same size; RAM
 *    migration sends everything but the holes (hostmem-pcow-rdm.c).
 *  - top: as all, but the destination is an overlay of the same base, so
 *    only the top image's clusters are sent; the section carries the
 *    base chain's stamp and the destination refuses another base before
 *    any page arrives.
 *
 * The section's first part (at setup) carries the mode and the virtual
 * size, so a mismatch fails before any page moves.  The section takes no
 * part in savevm/loadvm, which hostmem-pcow-vmsnap.c handles.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "exec/cpu-common.h"
#include "exec/memory.h"
#include "block/block.h"
#include "migration/misc.h"
#include "migration/migration.h"
#include "migration/register.h"
#include "migration/qemu-file-types.h"
#include "sysemu/hostmem.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "backends/hostmem-pcow.h"
#include "pcow/monitor.h"

#define PCOW_MIG_SETUP      1
#define PCOW_MIG_HANDOVER   2

typedef struct PcowMig {
    HostMemoryBackend *backend;
    HostMemPcow *pc;
    char *idstr;
    Notifier state_notifier;
    Notifier init_done;
    bool migrating;             /* an outgoing migration is under way */
    bool left_out;              /* RAM block made unmigratable by us */
    bool deferred;              /* incoming: expansion commits deferred */
} PcowMig;

static const char *const pcow_mig_names[] = {
    [HOSTMEM_PCOW_MIGRATE_NONE] = "none",
    [HOSTMEM_PCOW_MIGRATE_ALL] = "all",
    [HOSTMEM_PCOW_MIGRATE_TOP] = "top",
};

static RAMBlock *pcow_mig_block(PcowMig *m)
{
    return m->backend->mr.ram_block;
}

/*
 * An outgoing migration or the destination of one.  Not savevm/loadvm
 * (hostmem-pcow-vmsnap.c): savevm puts the migration state in "setup"
 * too, so the state notifier, which only a migration calls, says it.
 */
static bool pcow_mig_is_active(void *opaque)
{
    PcowMig *m = opaque;

    return m->migrating || runstate_check(RUN_STATE_INMIGRATE);
}

/* none: the RAM block stays out of RAM migration on both sides */
static void pcow_mig_leave_out(PcowMig *m, bool out)
{
    RAMBlock *rb = pcow_mig_block(m);

    if (hostmem_pcow_migrate_data(m->pc) != HOSTMEM_PCOW_MIGRATE_NONE ||
        !rb) {
        return;
    }
    if (out && qemu_ram_is_migratable(rb)) {
        qemu_ram_unset_migratable(rb);
        m->left_out = true;
    } else if (!out && m->left_out) {
        qemu_ram_set_migratable(rb);
        m->left_out = false;
    }
}

static void pcow_mig_state_changed(Notifier *n, void *data)
{
    PcowMig *m = container_of(n, PcowMig, state_notifier);
    MigrationState *s = data;

    if (migration_in_setup(s)) {
        m->migrating = true;
        pcow_mig_leave_out(m, true);
    } else if (migration_has_finished(s) || migration_has_failed(s)) {
        m->migrating = false;
        pcow_mig_leave_out(m, false);
    }
}

static uint64_t pcow_mig_chain_stamp(PcowMig *m)
{
    pcow_monitor *mon = hostmem_pcow_monitor(m->pc);

    return mon ? pcow_chain_stamp(pcow_monitor_image(mon)) : 0;
}

static int pcow_mig_save_setup(QEMUFile *f, void *opaque)
{
    PcowMig *m = opaque;
    HostMemPcowMigrate mode = hostmem_pcow_migrate_data(m->pc);
    uint64_t chain = 0;

    if (mode == HOSTMEM_PCOW_MIGRATE_NONE &&
        (migrate_postcopy_ram() || migrate_colo_enabled())) {
        /* Both run the guest on without taking a handed-over image back */
        error_report("memory backend '%s': pcow image '%s' is handed over "
                     "at switchover (migrate-data=none), which post-copy "
                     "and COLO cannot do", hostmem_pcow_id(m->pc),
                     hostmem_pcow_path(m->pc));
        return -ENOTSUP;
    }
    if (mode == HOSTMEM_PCOW_MIGRATE_TOP) {
        chain = pcow_mig_chain_stamp(m);
        if (!chain) {
            error_report("memory backend '%s': migrate-data=top needs an "
                         "image whose bases are pcow images with a known "
                         "state (pcow image '%s')", hostmem_pcow_id(m->pc),
                         hostmem_pcow_path(m->pc));
            return -EINVAL;
        }
    }
    qemu_put_byte(f, PCOW_MIG_SETUP);
    qemu_put_byte(f, mode);
    qemu_put_be64(f, hostmem_pcow_size(m->pc));
    qemu_put_be64(f, chain);
    return 0;
}

/* At switchover, the VM stopped, before any device state */
static int pcow_mig_save_complete(QEMUFile *f, void *opaque)
{
    PcowMig *m = opaque;
    Error *err = NULL;
    uint64_t stamp = 0;

    if (hostmem_pcow_migrate_data(m->pc) == HOSTMEM_PCOW_MIGRATE_NONE &&
        hostmem_pcow_release(m->pc, &stamp, &err) < 0) {
        error_report_err(err);
        return -EIO;
    }
    qemu_put_byte(f, PCOW_MIG_HANDOVER);
    qemu_put_be64(f, stamp);
    return 0;
}

/* Data clusters of the image's own (top) layer */
static uint64_t pcow_mig_top_data(PcowMig *m)
{
    pcow_monitor *mon = hostmem_pcow_monitor(m->pc);
    pcow_info info;

    if (!mon) {
        return 0;
    }
    pcow_get_info(pcow_monitor_image(mon), &info);
    return info.active_clusters;
}

static int pcow_mig_load_setup_part(PcowMig *m, QEMUFile *f)
{
    HostMemPcowMigrate mode = hostmem_pcow_migrate_data(m->pc);
    unsigned src_mode = qemu_get_byte(f);
    uint64_t size = qemu_get_be64(f);
    uint64_t chain = qemu_get_be64(f);
    const char *id = hostmem_pcow_id(m->pc);

    if (src_mode != mode) {
        error_report("memory backend '%s': the source migrates its pcow "
                     "image with migrate-data=%s, this side has "
                     "migrate-data=%s (both sides must agree)", id,
                     src_mode < ARRAY_SIZE(pcow_mig_names) ?
                     pcow_mig_names[src_mode] : "?", pcow_mig_names[mode]);
        return -EINVAL;
    }
    if (size != hostmem_pcow_size(m->pc)) {
        error_report("memory backend '%s': the source's pcow image has "
                     "virtual size %" PRIu64 ", '%s' has %" PRIu64, id,
                     size, hostmem_pcow_path(m->pc),
                     hostmem_pcow_size(m->pc));
        return -EINVAL;
    }
    if (mode == HOSTMEM_PCOW_MIGRATE_TOP &&
        chain != pcow_mig_chain_stamp(m)) {
        error_report("memory backend '%s': the bases of pcow image '%s' "
                     "are not the source's (migrate-data=top needs an "
                     "overlay of the same base, unchanged)", id,
                     hostmem_pcow_path(m->pc));
        return -EINVAL;
    }
    if (mode == HOSTMEM_PCOW_MIGRATE_TOP && pcow_mig_top_data(m)) {
        /* Its own data would show where the source reads the base */
        error_report("memory backend '%s': pcow image '%s' holds data of "
                     "its own (migrate-data=top needs a fresh overlay)", id,
                     hostmem_pcow_path(m->pc));
        return -EINVAL;
    }
    return 0;
}

/* A read-only image, open since start: clean then, with @stamp (known) */
static bool pcow_mig_ro_is(PcowMig *m, uint64_t stamp)
{
    pcow_monitor *mon = hostmem_pcow_monitor(m->pc);
    bool clean = false;

    return mon && stamp &&
           pcow_open_stamp(pcow_monitor_image(mon), &clean) == stamp && clean;
}

static int pcow_mig_load_handover(PcowMig *m, QEMUFile *f)
{
    uint64_t stamp = qemu_get_be64(f);
    Error *err = NULL;

    if (hostmem_pcow_migrate_data(m->pc) != HOSTMEM_PCOW_MIGRATE_NONE) {
        return 0;
    }
    if (hostmem_pcow_deferred(m->pc)) {
        if (hostmem_pcow_open_deferred(m->pc, stamp, &err) < 0) {
            error_report_err(err);
            return -EINVAL;
        }
        return 0;
    }
    if (!pcow_mig_ro_is(m, stamp)) {
        error_report("memory backend '%s': pcow image '%s' changed since "
                     "this state was saved", hostmem_pcow_id(m->pc),
                     hostmem_pcow_path(m->pc));
        return -EINVAL;
    }
    return 0;
}

static int pcow_mig_load_state(QEMUFile *f, void *opaque, int version_id)
{
    PcowMig *m = opaque;
    int part = qemu_get_byte(f);
    int ret;

    switch (part) {
    case PCOW_MIG_SETUP:
        ret = pcow_mig_load_setup_part(m, f);
        break;
    case PCOW_MIG_HANDOVER:
        ret = pcow_mig_load_handover(m, f);
        break;
    default:
        error_report("memory backend '%s': unknown pcow migration record %d",
                     hostmem_pcow_id(m->pc), part);
        return -EINVAL;
    }
    return ret ? ret : qemu_file_get_error(f);
}

/*
 * The destination leaves the RAM block out once the machine is made,
 * before any load starts (RAM migration's load setup and cleanup must see
 * the same set of blocks), so that a source that sends it is refused.
 */
static void pcow_mig_init_done(Notifier *n, void *data)
{
    PcowMig *m = container_of(n, PcowMig, init_done);

    if (runstate_check(RUN_STATE_INMIGRATE)) {
        pcow_mig_leave_out(m, true);
    }
}

/*
 * all/top: the incoming pages fill holes of the destination's image, a
 * burst of expansions that nobody needs durable one by one (a destination
 * that dies mid-migration leaves an image nobody uses): their commits are
 * deferred until pcow_mig_activate() makes the image durable at once,
 * before the guest may run.  The image is consistent throughout.
 */
static void pcow_mig_defer(PcowMig *m)
{
    pcow_monitor *mon = hostmem_pcow_monitor(m->pc);

    if (mon && hostmem_pcow_migrate_data(m->pc) != HOSTMEM_PCOW_MIGRATE_NONE) {
        pcow_monitor_defer_commits(mon, true, NULL);
        m->deferred = true;
    }
}

/*
 * The end of the burst: one barrier; the guest does not run without it.
 * Still deferred until it succeeded, so that a `cont` after a failed
 * activation asks again (and libpcow keeps refusing after a failure).
 */
static int pcow_mig_undefer(PcowMig *m, Error **errp)
{
    pcow_monitor *mon = hostmem_pcow_monitor(m->pc);
    pcow_error err = { 0 };
    int ret;

    if (!m->deferred || !mon) {
        return 0;
    }
    ret = pcow_monitor_defer_commits(mon, false, &err);
    if (ret < 0) {
        error_setg(errp, "memory backend '%s': cannot make the incoming "
                   "pcow image '%s' durable: %s", hostmem_pcow_id(m->pc),
                   hostmem_pcow_path(m->pc),
                   hostmem_pcow_error_why(&err, ret));
        return ret;
    }
    m->deferred = false;
    return 0;
}

static int pcow_mig_load_setup(QEMUFile *f, void *opaque)
{
    PcowMig *m = opaque;
    RAMBlock *rb = pcow_mig_block(m);

    if (hostmem_pcow_migrate_data(m->pc) == HOSTMEM_PCOW_MIGRATE_NONE &&
        rb && qemu_ram_is_migratable(rb)) {
        error_report("memory backend '%s': its device was added after the "
                     "machine was made, so an incoming migration cannot "
                     "leave its pcow image out (migrate-data=none)",
                     hostmem_pcow_id(m->pc));
        return -EINVAL;
    }
    pcow_mig_defer(m);
    return 0;
}

static int pcow_mig_load_cleanup(void *opaque)
{
    pcow_mig_leave_out(opaque, false);
    return 0;
}

static SaveVMHandlers pcow_mig_handlers = {
    .is_active = pcow_mig_is_active,
    .save_setup = pcow_mig_save_setup,
    .save_live_complete_precopy = pcow_mig_save_complete,
    .load_state = pcow_mig_load_state,
    .load_setup = pcow_mig_load_setup,
    .load_cleanup = pcow_mig_load_cleanup,
};

/*
 * bdrv_activate_all(): take a handed-over image back.  On a destination,
 * QEMU calls it once the stream is loaded, before the guest may run: an
 * image still waiting for its handover (the stream had no section for it:
 * a source without pcow, or a savevm stream) must not be run on.
 */
static int pcow_mig_activate(void *opaque, Error **errp)
{
    PcowMig *m = opaque;
    int incoming = migration_incoming_get_current()->state;

    /* cont before migrate-incoming (-incoming defer) only sets autostart */
    if (hostmem_pcow_deferred(m->pc) && incoming != MIGRATION_STATUS_NONE &&
        incoming != MIGRATION_STATUS_SETUP) {
        error_setg(errp, "memory backend '%s': the incoming state did not "
                   "hand over pcow image '%s' (its source had no such "
                   "backend with migrate-data=none): the guest cannot run",
                   hostmem_pcow_id(m->pc), hostmem_pcow_path(m->pc));
        return -ENOENT;
    }
    if (pcow_mig_undefer(m, errp) < 0) {
        return -EIO;
    }
    return hostmem_pcow_reacquire(m->pc, errp);
}

void *hostmem_pcow_mig_add(HostMemoryBackend *backend, HostMemPcow *pc)
{
    PcowMig *m = g_new0(PcowMig, 1);

    m->backend = backend;
    m->pc = pc;
    m->idstr = g_strdup_printf("pcow-image/%s", hostmem_pcow_id(pc));
    register_savevm_live(m->idstr, 0, 1, &pcow_mig_handlers, m);
    m->state_notifier.notify = pcow_mig_state_changed;
    add_migration_state_change_notifier(&m->state_notifier);
    m->init_done.notify = pcow_mig_init_done;
    qemu_add_machine_init_done_notifier(&m->init_done);
    bdrv_register_external_image(pcow_mig_activate, m);
    return m;
}

void hostmem_pcow_mig_del(void *opaque)
{
    PcowMig *m = opaque;

    if (!m) {
        return;
    }
    bdrv_unregister_external_image(m);
    remove_migration_state_change_notifier(&m->state_notifier);
    qemu_remove_machine_init_done_notifier(&m->init_done);
    unregister_savevm(NULL, m->idstr, m);
    g_free(m->idstr);
    g_free(m);
}
