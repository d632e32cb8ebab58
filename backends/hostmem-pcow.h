/*
 * QEMU host memory backend glue for pcow images
 *
 * memory-backend-file with format=pcow maps a pcow image through the pcow
 * Image Monitor (include/pcow/monitor.h) and hands the monitor's range to
 * QEMU as a RAM block with a host pointer.  hostmem-file.c, virtio-pmem.c
 * and kvm-all.c call these functions (see patches/); everything
 * pcow-specific lives in backends/hostmem-pcow.c.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#ifndef BACKENDS_HOSTMEM_PCOW_H
#define BACKENDS_HOSTMEM_PCOW_H

#include "sysemu/hostmem.h"

typedef struct HostMemPcow HostMemPcow;

/* memory-backend-file properties that matter to the pcow glue */
typedef struct HostMemPcowOptions {
    const char *mem_path;
    uint64_t align;         /* 0: host page size */
    bool readonly;
    bool discard_data;
    bool format_from_name;  /* format= not given, chosen by the .pcow name */
    bool nospace_fail;      /* nospace=fail: no space kills the access */
    const char *migrate_data;   /* "none", "all" or "top" */
} HostMemPcowOptions;

/* What migration and save send of the image (migrate-data=) */
typedef enum HostMemPcowMigrate {
    HOSTMEM_PCOW_MIGRATE_NONE,  /* the image holds it: handed over */
    HOSTMEM_PCOW_MIGRATE_ALL,   /* everything but holes */
    HOSTMEM_PCOW_MIGRATE_TOP,   /* the top image's clusters only */
} HostMemPcowMigrate;

/*
 * Does @mem_path name a pcow image by its name alone (ends in ".pcow")?
 * Used when the format property is not given: libvirt's domain XML has no
 * way to pass format=pcow, so the file name selects the format.
 */
bool hostmem_pcow_name_selects_pcow(const char *mem_path);

/*
 * Open the image, check the backend's properties against it and initialise
 * @backend->mr as RAM at the monitor's host address.  Sets backend->size to
 * the image's virtual size.  Returns NULL with @errp set on failure.
 */
HostMemPcow *hostmem_pcow_alloc(HostMemoryBackend *backend,
                                const HostMemPcowOptions *opts,
                                Error **errp);

/*
 * prealloc=on for a pcow image: prefault the page tables of allocated data
 * only.  Holes stay holes (touching them would allocate every cluster of a
 * thin image); frozen data is prefaulted for reading, never written.
 */
void hostmem_pcow_prealloc(HostMemPcow *pc, Error **errp);

/*
 * The message of a libpcow/monitor error for the user: @perr's, or
 * strerror(-@ret) when the call left none.
 */
struct pcow_error;
const char *hostmem_pcow_error_msg(const struct pcow_error *perr, int ret);
/*
 * The same for a line that names the image already: without the image's
 * name (pcow_error's what).  _why: for a line that also states the
 * operation: the cause alone (pcow_error's why).  No text is compared.
 */
const char *hostmem_pcow_error_text(const struct pcow_error *perr, int ret);
const char *hostmem_pcow_error_why(const struct pcow_error *perr, int ret);

/* The pcow state of @backend, or NULL if it is not a pcow backend. */
HostMemPcow *hostmem_pcow_find(HostMemoryBackend *backend);

/*
 * The Image Monitor of @pc (NULL once the image is closed) and the image's
 * path, for the QMP/HMP commands of hw/mem/pcow-qmp.c, which run in the
 * main thread with the BQL held, as object-del and exit (which close it) do.
 */
struct pcow_monitor *hostmem_pcow_monitor(HostMemPcow *pc);
const char *hostmem_pcow_path(HostMemPcow *pc);
bool hostmem_pcow_readonly(HostMemPcow *pc);
/* Faults held for space now (0 when closed); any thread. */
uint64_t hostmem_pcow_held_faults(HostMemPcow *pc);
/* A backend with faults held for space, NULL if none; main thread (BQL). */
HostMemPcow *hostmem_pcow_any_held(void);
bool hostmem_pcow_nospace_fail(HostMemPcow *pc);

/*
 * Make the guest's writes to the image durable (virtio-pmem flush).  May be
 * called from any thread, without the BQL.  Returns 0 or -errno.
 */
int hostmem_pcow_flush(HostMemPcow *pc);

/*
 * Take part in savevm/loadvm/delvm (backends/hostmem-pcow-vmsnap.c):
 * returns the handle that hostmem_pcow_vmsnap_del() takes (NULL: nothing).
 */
void *hostmem_pcow_vmsnap_add(HostMemoryBackend *backend);
void hostmem_pcow_vmsnap_del(void *vmsnap);

/*
 * The extent of the image at @offset (pcow_get_extent), against close:
 * -EBADF once the image is closed.  Any thread.
 */
struct pcow_extent;
int hostmem_pcow_get_extent(HostMemPcow *pc, uint64_t offset,
                            uint64_t max_len, struct pcow_extent *ext);

/*
 * Report the image's holes to QEMU as discarded RAM of @backend's region
 * (backends/hostmem-pcow-rdm.c), so that migration does not send them;
 * with @top_only also what the image's bases hold (migrate-data=top):
 * returns the manager, which hostmem_pcow_rdm_del() takes (NULL: nothing).
 */
Object *hostmem_pcow_rdm_add(HostMemoryBackend *backend, HostMemPcow *pc,
                             uint64_t cluster_size, bool top_only);
void hostmem_pcow_rdm_del(Object *rdm);

/*
 * Migration (backends/hostmem-pcow-migrate.c): the section that carries
 * the image's identity and hands it over; returns the handle that
 * hostmem_pcow_mig_del() takes.
 */
void *hostmem_pcow_mig_add(HostMemoryBackend *backend, HostMemPcow *pc);
void hostmem_pcow_mig_del(void *mig);

/*
 * The image handover, with the BQL held (the release runs in the
 * migration thread, the rest in the main thread; see
 * pcow_monitor_release() in include/pcow/monitor.h):
 *  - hostmem_pcow_release(): the VM is stopped; make everything durable,
 *    clear in-use, drop the lock; *@stamp is what the image keeps.
 *  - hostmem_pcow_reacquire(): take a released image back (nothing to do
 *    if it is not released).  Fails if another process has it or wrote
 *    it meanwhile.
 *  - hostmem_pcow_open_deferred(): an incoming migration's destination
 *    with migrate-data=none did not open its image at start (the source
 *    holds it); open and map it now at the RAM block's address, if it
 *    is clean and has @stamp.
 * Each returns 0 or -errno with @errp set naming backend and image.
 */
int hostmem_pcow_release(HostMemPcow *pc, uint64_t *stamp, Error **errp);
int hostmem_pcow_reacquire(HostMemPcow *pc, Error **errp);
int hostmem_pcow_open_deferred(HostMemPcow *pc, uint64_t stamp,
                               Error **errp);
bool hostmem_pcow_deferred(HostMemPcow *pc);
HostMemPcowMigrate hostmem_pcow_migrate_data(HostMemPcow *pc);
uint64_t hostmem_pcow_size(HostMemPcow *pc);
/* "memory backend 'pm0'", for messages */
const char *hostmem_pcow_id(HostMemPcow *pc);

/* Close the image (flush, clear its in-use flag) and free @pc. */
void hostmem_pcow_free(HostMemPcow *pc);

/*
 * KVM_RUN failed with EFAULT.  If @gpa_valid, @gpa is the guest physical
 * address KVM could not fault in.  Prints an error naming the pcow image
 * when the address (or, without an address, any memory of the guest) is
 * pcow-managed; prints nothing otherwise.  Called with the BQL held.
 */
void hostmem_pcow_report_kvm_efault(bool gpa_valid, uint64_t gpa);

#endif
