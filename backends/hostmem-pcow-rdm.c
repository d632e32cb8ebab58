/*
 * The holes of a pcow NVDIMM as QEMU "discarded" RAM
 *
 * Every pcow backend's RAM region gets a RamDiscardManager: populated is
 * what libpcow reports as data (allocated in the image, frozen in a
 * snapshot, or read from a base), discarded is a whole cluster that reads
 * as zeros with nothing allocated anywhere in the chain
 * (PCOW_EXTENT_HOLE).  Live migration then leaves the holes out of its
 * first pass (ramblock_dirty_bitmap_clear_discarded_pages in
 * migration/ram.c) instead of reading every page of the NVDIMM, which
 * makes the monitor serve a zero page for each.  A hole the guest writes
 * later is sent all the same: dirty logging, started before migration asks
 * us, marks the write.  The destination must read zeros in the holes: a
 * fresh image of the same size, or the same image (docs/pcow.rst, "VM
 * lifecycle").
 *
 * The 7.2 consumers and what they get (none of them maps less of the
 * NVDIMM into KVM or TCG: memory slots ignore a RamDiscardManager):
 *  - migration/ram.c: holes are not sent (precopy setup and postcopy
 *    recovery); ram_block_populate_read (background snapshot) and
 *    postcopy's ramblock_page_is_discarded never run for pcow RAM: both
 *    register the RAM with their own userfaultfd, which fails on the
 *    monitor's file mappings and on the holes it has registered itself.
 *  - softmmu/memory_mapping.c (dump-guest-memory): holes are left out of
 *    the dump, as zeros would be.
 *  - vfio and memory_get_xlat_addr (vIOMMU): vfio pins all guest RAM and
 *    disables RAM discards first; while anything has them disabled we
 *    report the whole region populated as one granule, so vfio maps it
 *    with one DMA mapping as without a manager, and a vIOMMU may map a
 *    hole.  vfio is 7.2's only listener, so listeners get the replay at
 *    their registration and no notifications after it (a hole that the
 *    guest fills would be one; migration does not need it).
 *  - virtio-mem would set its own manager on the region, which has one:
 *    it refuses a pcow memdev (patches/0016-virtio-mem-refuse-a-memdev-
 *    that-has-a-RamDiscardManager.patch).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/queue.h"
#include "qom/object.h"
#include "exec/memory.h"
#include "sysemu/hostmem.h"
#include "backends/hostmem-pcow.h"
#include "pcow/monitor.h"

#define TYPE_PCOW_RDM "pcow-ram-discard-manager"
OBJECT_DECLARE_SIMPLE_TYPE(PcowRdm, PCOW_RDM)

struct PcowRdm {
    Object parent_obj;
    HostMemoryBackend *backend;
    HostMemPcow *pc;
    uint64_t cluster_size;
    uint64_t size;              /* the image's virtual size */
    bool top_only;              /* migrate-data=top: bases' data too */
    QLIST_HEAD(, RamDiscardListener) listeners;
};

/* Runs of [start, end) of @s of one kind, for pcow_rdm_walk() */
typedef int (*PcowRdmRunFn)(MemoryRegionSection *s, bool hole, void *opaque);

/*
 * Holes are reported only while RAM discards are allowed: vfio (and SEV,
 * s390 PV) disable them because they pin or encrypt all guest RAM.
 */
static bool pcow_rdm_reports_holes(const PcowRdm *r)
{
    return !ram_block_discard_is_disabled();
}

/*
 * Not sent: a hole, and with top_only data the destination's base holds
 * (the destination is an overlay of the same base)
 */
static bool pcow_rdm_skips(const PcowRdm *r, const pcow_extent *ext)
{
    return ext->kind == PCOW_EXTENT_HOLE || (r->top_only && ext->depth > 0);
}

static int pcow_rdm_emit(const MemoryRegionSection *s, uint64_t a,
                         uint64_t b, bool hole, PcowRdmRunFn fn,
                         void *opaque)
{
    MemoryRegionSection tmp = *s;

    if (a >= b) {
        return 0;
    }
    tmp.offset_within_address_space += a - s->offset_within_region;
    tmp.offset_within_region = a;
    tmp.size = int128_make64(b - a);
    return fn(&tmp, hole, opaque);
}

/*
 * Call @fn for each maximal run of @s that is populated or a hole, in
 * order; stop at the first non-zero return and return it.  A hole is a
 * whole cluster (or the image's last, partial one) that libpcow reports
 * as PCOW_EXTENT_HOLE, or with top_only as data of a base (depth > 0: the
 * destination, an overlay of the same base, reads it from there); anything
 * else, and anything libpcow cannot answer for, is populated.
 */
static int pcow_rdm_walk(const PcowRdm *r, const MemoryRegionSection *s,
                         PcowRdmRunFn fn, void *opaque)
{
    const uint64_t start = s->offset_within_region;
    const uint64_t end = start + int128_get64(s->size);
    const uint64_t cs = r->cluster_size;
    /* Whole clusters around @s, so that a page of a hole reads as one */
    const uint64_t qend = MIN(ROUND_UP(end, cs), r->size);
    uint64_t pos = QEMU_ALIGN_DOWN(start, cs);
    uint64_t pop = start;       /* start of the populated run not emitted */
    pcow_extent ext;
    int ret;

    if (!pcow_rdm_reports_holes(r)) {
        return pcow_rdm_emit(s, start, end, false, fn, opaque);
    }
    while (pos < end) {
        uint64_t hs, he;

        if (hostmem_pcow_get_extent(r->pc, pos, qend - pos, &ext) < 0 ||
            ext.offset != pos || ext.length == 0) {
            break;              /* the rest counts as populated */
        }
        pos += ext.length;
        if (!pcow_rdm_skips(r, &ext)) {
            continue;
        }
        hs = MAX(ROUND_UP(ext.offset, cs), start);
        he = pos == r->size ? pos : QEMU_ALIGN_DOWN(pos, cs);
        he = MIN(he, end);
        if (hs >= he) {
            continue;
        }
        ret = pcow_rdm_emit(s, pop, hs, false, fn, opaque);
        if (!ret) {
            ret = pcow_rdm_emit(s, hs, he, true, fn, opaque);
        }
        if (ret) {
            return ret;
        }
        pop = he;
    }
    return pcow_rdm_emit(s, pop, end, false, fn, opaque);
}

static uint64_t pcow_rdm_get_min_granularity(const RamDiscardManager *rdm,
                                             const MemoryRegion *mr)
{
    const PcowRdm *r = PCOW_RDM(rdm);

    g_assert(mr == &r->backend->mr);
    /* One granule: vfio maps a populated run granule by granule */
    if (!pcow_rdm_reports_holes(r)) {
        return pow2ceil(r->size);
    }
    return r->cluster_size;
}

static int pcow_rdm_stop_at_hole(MemoryRegionSection *s, bool hole,
                                 void *opaque)
{
    return hole ? 1 : 0;
}

static bool pcow_rdm_is_populated(const RamDiscardManager *rdm,
                                  const MemoryRegionSection *s)
{
    const PcowRdm *r = PCOW_RDM(rdm);

    g_assert(s->mr == &r->backend->mr);
    return pcow_rdm_walk(r, s, pcow_rdm_stop_at_hole, NULL) == 0;
}

typedef struct PcowRdmReplay {
    const PcowRdm *r;
    ReplayRamPopulate populate;
    ReplayRamDiscard discard;
    void *opaque;
} PcowRdmReplay;

/*
 * A hole the guest filled while @s was being discarded (or, with top_only,
 * base data it copied into the image): migration's discard
 * cleared its bits, and under KVM its dirty log too (KVM_CLEAR_DIRTY_LOG),
 * possibly after the write had set them.  Mark what is no longer a hole
 * dirty, so that the next sync sends it; KVM logs an expansion that comes
 * after this query after that clear.
 */
static void pcow_rdm_redirty_filled(const PcowRdm *r, MemoryRegionSection *s)
{
    uint64_t pos = s->offset_within_region;
    const uint64_t end = pos + int128_get64(s->size);
    pcow_extent ext;

    while (pos < end) {
        if (hostmem_pcow_get_extent(r->pc, pos, end - pos, &ext) < 0 ||
            ext.offset != pos || ext.length == 0) {
            memory_region_set_dirty(s->mr, pos, end - pos);
            return;
        }
        if (!pcow_rdm_skips(r, &ext)) {
            memory_region_set_dirty(s->mr, pos, MIN(ext.length, end - pos));
        }
        pos += ext.length;
    }
}

static int pcow_rdm_replay_cb(MemoryRegionSection *s, bool hole,
                              void *opaque)
{
    PcowRdmReplay *rp = opaque;

    if (!hole && rp->populate) {
        return rp->populate(s, rp->opaque);
    }
    if (hole && rp->discard) {
        rp->discard(s, rp->opaque);
        pcow_rdm_redirty_filled(rp->r, s);
    }
    return 0;
}

static int pcow_rdm_replay(const RamDiscardManager *rdm,
                           MemoryRegionSection *s, ReplayRamPopulate populate,
                           ReplayRamDiscard discard, void *opaque)
{
    const PcowRdm *r = PCOW_RDM(rdm);
    PcowRdmReplay rp = { .r = r, .populate = populate, .discard = discard,
                         .opaque = opaque };

    g_assert(s->mr == &r->backend->mr);
    return pcow_rdm_walk(r, s, pcow_rdm_replay_cb, &rp);
}

static int pcow_rdm_replay_populated(const RamDiscardManager *rdm,
                                     MemoryRegionSection *s,
                                     ReplayRamPopulate replay_fn,
                                     void *opaque)
{
    return pcow_rdm_replay(rdm, s, replay_fn, NULL, opaque);
}

static void pcow_rdm_replay_discarded(const RamDiscardManager *rdm,
                                      MemoryRegionSection *s,
                                      ReplayRamDiscard replay_fn,
                                      void *opaque)
{
    pcow_rdm_replay(rdm, s, NULL, replay_fn, opaque);
}

static int pcow_rdm_notify_populate(MemoryRegionSection *s, void *opaque)
{
    RamDiscardListener *rdl = opaque;

    return rdl->notify_populate(rdl, s);
}

static int pcow_rdm_discard_populated(MemoryRegionSection *s, bool hole,
                                      void *opaque)
{
    RamDiscardListener *rdl = opaque;

    if (!hole) {
        rdl->notify_discard(rdl, s);
    }
    return 0;
}

static void pcow_rdm_register_listener(RamDiscardManager *rdm,
                                       RamDiscardListener *rdl,
                                       MemoryRegionSection *s)
{
    PcowRdm *r = PCOW_RDM(rdm);
    int ret;

    g_assert(s->mr == &r->backend->mr);
    rdl->section = memory_region_section_new_copy(s);
    QLIST_INSERT_HEAD(&r->listeners, rdl, next);
    ret = pcow_rdm_replay_populated(rdm, rdl->section,
                                    pcow_rdm_notify_populate, rdl);
    if (ret) {
        error_report("pcow image '%s': replaying its data to a RAM "
                     "discard listener failed: %s",
                     hostmem_pcow_path(r->pc), strerror(-ret));
    }
}

static void pcow_rdm_unregister_listener(RamDiscardManager *rdm,
                                         RamDiscardListener *rdl)
{
    PcowRdm *r = PCOW_RDM(rdm);

    g_assert(rdl->section->mr == &r->backend->mr);
    if (rdl->double_discard_supported) {
        rdl->notify_discard(rdl, rdl->section);
    } else {
        pcow_rdm_walk(r, rdl->section, pcow_rdm_discard_populated, rdl);
    }
    memory_region_section_free_copy(rdl->section);
    rdl->section = NULL;
    QLIST_REMOVE(rdl, next);
}

/*
 * Make @pc's RAM region report its holes as discarded.  Before the region
 * is mapped (memory_region_set_ram_discard_manager insists).
 */
Object *hostmem_pcow_rdm_add(HostMemoryBackend *backend, HostMemPcow *pc,
                             uint64_t cluster_size, bool top_only)
{
    PcowRdm *r = PCOW_RDM(object_new(TYPE_PCOW_RDM));

    r->backend = backend;
    r->pc = pc;
    r->cluster_size = cluster_size;
    r->top_only = top_only;
    r->size = memory_region_size(&backend->mr);
    QLIST_INIT(&r->listeners);
    memory_region_set_ram_discard_manager(&backend->mr,
                                          RAM_DISCARD_MANAGER(r));
    return OBJECT(r);
}

void hostmem_pcow_rdm_del(Object *obj)
{
    PcowRdm *r;

    if (!obj) {
        return;
    }
    r = PCOW_RDM(obj);
    /* Listeners come from mapping the region, which is gone by now */
    g_assert(QLIST_EMPTY(&r->listeners));
    memory_region_set_ram_discard_manager(&r->backend->mr, NULL);
    object_unref(obj);
}

static void pcow_rdm_class_init(ObjectClass *klass, void *data)
{
    RamDiscardManagerClass *rdmc = RAM_DISCARD_MANAGER_CLASS(klass);

    rdmc->get_min_granularity = pcow_rdm_get_min_granularity;
    rdmc->is_populated = pcow_rdm_is_populated;
    rdmc->replay_populated = pcow_rdm_replay_populated;
    rdmc->replay_discarded = pcow_rdm_replay_discarded;
    rdmc->register_listener = pcow_rdm_register_listener;
    rdmc->unregister_listener = pcow_rdm_unregister_listener;
}

static const TypeInfo pcow_rdm_info = {
    .name = TYPE_PCOW_RDM,
    .parent = TYPE_OBJECT,
    .instance_size = sizeof(PcowRdm),
    .class_init = pcow_rdm_class_init,
    .interfaces = (InterfaceInfo[]) {
        { TYPE_RAM_DISCARD_MANAGER },
        { }
    },
};

static void pcow_rdm_register_types(void)
{
    type_register_static(&pcow_rdm_info);
}

type_init(pcow_rdm_register_types)
