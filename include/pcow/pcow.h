/*
 * libpcow: the pcow image format driver (public API)
 *
 * pcow ("PM copy-on-write") is an image format for virtual persistent
 * memory.  The on-disk format is specified in docs/interop/pcow-spec.rst;
 * this header is the library's contract with pcow-img, the Image Monitor
 * and QEMU.
 *
 * Conventions:
 * - Functions return 0 (or a non-negative count) on success and a negative
 *   errno value on failure; when @err is not NULL it receives that errno,
 *   the kind of error (pcow_error_kind) and a one-line, human-readable
 *   message naming the file and the problem.  Messages are neutral: a front
 *   end adds its own advice from the kind, never by matching the text.
 * - No function calls exit() or abort() on bad input.  There is no global
 *   state: any number of images may be open in one process.
 * - Functions marked "async-signal-safe" may be called from a SIGSEGV
 *   handler: they take no locks other than the image's own metadata
 *   spinlock, allocate no memory and use only async-signal-safe syscalls.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_PCOW_H
#define PCOW_PCOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PCOW_VERSION 1

#define PCOW_MIN_CLUSTER_BITS 12    /* 4 KiB */
#define PCOW_MAX_CLUSTER_BITS 21    /* 2 MiB */
#define PCOW_DEFAULT_CLUSTER_BITS 16 /* 64 KiB */
#define PCOW_MIN_COW_UNIT_BITS 12   /* 4 KiB */
#define PCOW_MAX_COW_UNITS 64       /* COW units per cluster (bitmap width) */
#define PCOW_MAX_BACKING_NAME 1023
#define PCOW_MAX_SNAPSHOT_NAME 255
#define PCOW_MAX_CHAIN_DEPTH 64
#define PCOW_MAX_VIRTUAL_SIZE (1ull << 50) /* 1 PiB */
#define PCOW_MAX_VM_STATE (1ull << 40)  /* VM state of one snapshot: 1 TiB */

/* What went wrong, for front ends to choose their advice by */
typedef enum pcow_error_kind {
    PCOW_ERR_NONE = 0,
    PCOW_ERR_INVALID,       /* bad argument or request (EINVAL, ...) */
    PCOW_ERR_IN_USE,        /* locked by another process (EBUSY) */
    PCOW_ERR_CORRUPT,       /* the image or a base is damaged */
    PCOW_ERR_UNSUPPORTED,   /* version or feature unknown here (ENOTSUP) */
    PCOW_ERR_NOT_FOUND,     /* file or snapshot (ENOENT) */
    PCOW_ERR_EXISTS,        /* file or snapshot (EEXIST) */
    PCOW_ERR_NO_SPACE,      /* disk full or quota (ENOSPC) */
    PCOW_ERR_READ_ONLY,     /* image opened read-only (EROFS) */
    PCOW_ERR_LOOP,          /* backing chain loops (ELOOP) */
    PCOW_ERR_LIMIT,         /* a format limit (EFBIG, EOVERFLOW) */
    PCOW_ERR_NO_MEMORY,     /* ENOMEM */
    PCOW_ERR_IO,            /* a system call failed (EIO and the rest) */
    /*
     * The image is not in the state the caller expects (ESTALE): it was
     * changed, or not closed cleanly, since a VM state was saved or since
     * it was handed over (PCOW_OPEN_EXPECT_STAMP, pcow_reacquire()).
     */
    PCOW_ERR_STALE,
    /*
     * The snapshot has clones (pcow_clone): deleting it would break them
     * (PCOW_SNAPSHOT_DELETE_FORCE does it anyway).
     */
    PCOW_ERR_HAS_CLONES,
} pcow_error_kind;

typedef struct pcow_error {
    int code;               /* negative errno, 0 if no error */
    pcow_error_kind kind;   /* PCOW_ERR_NONE if no error */
    /*
     * Offsets into msg, 0 <= what <= why <= strlen(msg).  what: where the
     * message's own text starts, past the "FILE: " naming the image the
     * call was given (opened, created or worked on); 0 if msg does not
     * begin with that name (no prefix, or another file's, e.g. a base's).
     * why: where the cause starts, past the operation the message states
     * ("cannot create snapshot 'NAME': "); what if it states none.  A
     * front end that names the image, or the image and the operation,
     * itself prints msg + what, or msg + why: never comparing text.
     */
    unsigned what;
    unsigned why;
    char msg[512];
} pcow_error;

/*
 * Fill @err (if not NULL): @code (a negative errno), the kind that errno
 * stands for (pcow_error_kind_of) and the formatted one-line message;
 * what and why 0.  Returns @code.  For front ends too: one helper sets
 * every error.
 */
int pcow_set_error(pcow_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/*
 * @err (if @ret < 0) came from a step of the caller's larger operation
 * (the flush before a snapshot): why = what, so that a front end stating
 * the larger operation keeps the step's own words.  Returns @ret.
 */
int pcow_error_as_step(pcow_error *err, int ret);
/*
 * pcow_set_error() of "@file: MESSAGE", @file being the image the call
 * was given: what and why point past "@file: ".
 */
int pcow_set_file_error(pcow_error *err, int code, const char *file,
                        const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The kind a negative errno stands for when nothing more is known */
pcow_error_kind pcow_error_kind_of(int code);

typedef struct pcow_image pcow_image;

typedef enum pcow_backing_format {
    PCOW_BACKING_NONE = 0,
    PCOW_BACKING_PCOW = 1,
    PCOW_BACKING_RAW = 2,
} pcow_backing_format;

/* How durable writes are made durable (docs/interop/pcow-spec.rst,
 * Persistence) */
typedef enum pcow_persist_method {
    PCOW_PERSIST_MSYNC = 0,     /* page cache: msync/fdatasync */
    PCOW_PERSIST_PMEM = 1,      /* real PM (DAX + MAP_SYNC): CPU flush+fence */
} pcow_persist_method;

/*
 * Persistence hook: every change to an image file that libpcow makes goes
 * through the persistence module, which reports it here before it is made,
 * and reports BARRIER or SYNC once what they name is durable.  The
 * crash-point harness records this stream and replays prefixes of it.
 */
typedef enum pcow_persist_op {
    PCOW_OP_WRITE = 1,      /* bytes written at offset */
    PCOW_OP_BARRIER = 2,    /* everything before is durable (fdatasync) */
    PCOW_OP_TRUNCATE = 3,   /* file size set to offset */
    PCOW_OP_ALLOCATE = 4,   /* fallocate(offset, len): reads as zero */
    PCOW_OP_PUNCH = 5,      /* punch hole (offset, len): reads as zero */
    PCOW_OP_SYNC = 6,       /* ranged sync (offset, len): what was written
                             * inside the range before is durable, nothing
                             * else (msync of a range, pmem_persist) */
} pcow_persist_op;

typedef void (*pcow_persist_hook)(void *opaque, pcow_persist_op op,
                                  uint64_t offset, const void *data,
                                  uint64_t len);

typedef struct pcow_create_opts {
    uint64_t virtual_size;      /* bytes, multiple of 4096, > 0 */
    uint32_t cluster_size;      /* 0: default (64 KiB) */
    uint32_t cow_unit;          /* 0: default (4 KiB, or cluster/64) */
    const char *backing_file;   /* NULL: none; stored as given */
    pcow_backing_format backing_format; /* NONE with a file: probe */
    bool size_from_backing;     /* virtual_size 0: take the base's size
                                 * (the snapshot's, with one below) */
    /*
     * 0: the base's active layer.  Else the id of the base's snapshot the
     * new image is an overlay of (a clone; the base must be pcow and hold
     * it).  pcow_clone() is the way to make one: it marks the snapshot.
     */
    uint64_t backing_snapshot_id;
    pcow_persist_hook hook;     /* optional, for tests */
    void *hook_opaque;
} pcow_create_opts;

/* Open flags */
#define PCOW_OPEN_RDWR       (1u << 0) /* read-write (exclusive lock) */
#define PCOW_OPEN_NO_LOCK    (1u << 1) /* -U: take no lock at all */
#define PCOW_OPEN_NO_BACKING (1u << 2) /* do not open the backing chain */
#define PCOW_OPEN_NO_RECOVER (1u << 3) /* RDWR: do not reclaim leaks */
/*
 * Refuse the open with -ESTALE, before anything is written, unless the
 * image is clean (in_use 0) and its stamp is expect_stamp (see "State
 * stamps" below): a restore or an incoming migration that must find the
 * image exactly as the saved state left it.  Kind PCOW_ERR_STALE; the
 * message is "FILE: image changed since this state was saved", or "FILE:
 * image was not closed cleanly since this state was saved".
 */
#define PCOW_OPEN_EXPECT_STAMP (1u << 4)

typedef struct pcow_open_opts {
    unsigned flags;
    pcow_persist_hook hook;
    void *hook_opaque;
    uint64_t expect_stamp;      /* with PCOW_OPEN_EXPECT_STAMP */
} pcow_open_opts;

int pcow_create(const char *path, const pcow_create_opts *opts,
                pcow_error *err);

/*
 * The geometry of a new image, checked exactly as pcow_create() and
 * pcow_resize() check it: @cluster_size and @cow_unit 0 select the
 * defaults; the virtual size must be a non-zero multiple of 4096 within
 * what the cluster size can map.  -EINVAL or -EFBIG with a message that
 * names no file.  Tools use it to refuse what create would refuse and to
 * size images (measure).  @g may be NULL.
 */
typedef struct pcow_geometry {
    uint64_t virtual_size;
    uint32_t cluster_size;
    uint32_t cow_unit;
    uint64_t clusters;          /* virtual clusters */
    uint64_t l2_entries;        /* virtual clusters one L2 table maps */
    uint64_t l1_size;           /* L1 entries */
    uint64_t empty_size;        /* file size of the new, empty image */
    uint64_t max_virtual_size;  /* largest virtual size of this geometry */
} pcow_geometry;

int pcow_geometry_for(uint64_t virtual_size, uint32_t cluster_size,
                      uint32_t cow_unit, pcow_geometry *g, pcow_error *err);
int pcow_open(const char *path, const pcow_open_opts *opts,
              pcow_image **out, pcow_error *err);
/*
 * Makes everything durable, clears the in-use flag, releases locks.  A file
 * truncated behind our back (see pcow_check_file_size) is left as it is,
 * in use, with that error; so is an image after any failed barrier or
 * sync of this session (the error's code; "not marked clean": the next
 * open recovers).  The image is freed all the same.
 */
int pcow_close(pcow_image *img, pcow_error *err);

/*
 * State stamps: which state of an image a saved VM state, a migration or
 * a handed-over image belongs to.  The hot line's stamp is the in-use
 * token of the writer session that last closed the image cleanly or
 * handed it over (pcow_release()); each read-write open starts a session
 * with a new token, so any writer in between changes it.  A session
 * that cannot have changed what a reader sees -- it wrote no data and no
 * table, handed out no writable extent (pcow_get_extent: the Image
 * Monitor writes through such mappings), and found the image closed
 * cleanly -- leaves the stamp it found (unless that is 0): a refused
 * operation leaves the file as it was.  pcow_create() gives a new image
 * a fresh stamp; 0 means unknown (an image written before stamps
 * existed, until its next clean close).  Tokens are random, never 0.
 *
 * pcow_stamp(): read-write, what a release or a clean close would leave
 * now (this session's token once it may have changed what a reader sees;
 * after a release, the stamp it left); read-only, the stamp stored at
 * open.  pcow_open_stamp(): the stamp the image had when this handle
 * opened it, and (if @clean) whether in_use was 0 then.
 */
uint64_t pcow_stamp(pcow_image *img);
uint64_t pcow_open_stamp(pcow_image *img, bool *clean);

/*
 * Hand a read-write image over to another process (live migration on
 * shared storage, save to a file): everything durable, the reserve given
 * back, stamp = this session's token, in_use 0 (the persist points of
 * close), then the lock is dropped.  The handle stays valid for reading
 * (and its file mappings stay); nothing is written until pcow_reacquire()
 * succeeds, and pcow_close() of a released image writes nothing.
 * Durable on return.  Returns 0 or -errno with @err set: -EROFS for a
 * read-only image, -EBADF if already released; on another failure the
 * image stays this session's (locked, in use).  After any failed barrier
 * or sync of this session (pcow_flush, pcow_flush_mapping, ending
 * deferral) every release fails with that error ("cannot hand the image
 * over"): only pcow_close() and a recovering open make it usable
 * elsewhere.  While released, every
 * writing call (pcow_pwrite, pcow_zero_range, pcow_expand_cluster,
 * pcow_cow, pcow_reserve_clusters, snapshots, resize, rebase, compact)
 * fails with -EBADF, kind PCOW_ERR_READ_ONLY ("FILE: image was handed
 * over to another process (released): nothing is written until it is
 * taken back"), pcow_flush() returns 0 and extents are not writable.
 */
int pcow_release(pcow_image *img, pcow_error *err);
/*
 * Take a released image back: -EBUSY if another process holds it now
 * (kind PCOW_ERR_IN_USE, "FILE: image is in use by another process"),
 * -ESTALE if anyone changed it since the release (stamp, in_use or header
 * generation differ; kind PCOW_ERR_STALE, "FILE: image was changed by
 * another process since it was handed over"; the lock is dropped again),
 * -EINVAL if it was not released; else the lock again and a new session
 * (P-OPEN-INUSE, a new token).  Returns 0 or -errno with @err set.
 */
int pcow_reacquire(pcow_image *img, pcow_error *err);
bool pcow_released(pcow_image *img);
/*
 * This session changed nothing a reader can see (an incoming migration
 * that failed before its guest ran): a later release or clean close
 * leaves the stamp found at open instead of this session's token.
 * Ignored once the session wrote data or a table word through libpcow
 * (a snapshot made, a revert, an expansion): the caller vouches only for
 * writes libpcow cannot see (through its writable extents).
 */
void pcow_keep_stamp(pcow_image *img);
/*
 * The identity of the backing chain below @img: a fold (64-bit FNV-1a) of
 * each base's stamp, virtual size and, for a clone's base, the snapshot
 * id it shows, top to bottom.  0 if @img has no
 * base or was opened with PCOW_OPEN_NO_BACKING, or a base is raw, has
 * stamp 0 or was not closed cleanly (its state cannot be told).
 */
uint64_t pcow_chain_stamp(pcow_image *img);

/*
 * Is this file a pcow image (magic of either header slot)?  No validation;
 * false for anything but a regular file or block device.  Never blocks.
 */
bool pcow_probe(const char *path);

/*
 * Open @path for its data (@oflags: O_RDONLY or O_RDWR; the fd is always
 * O_CLOEXEC) without ever blocking -- open(2) of a FIFO would wait forever.
 * Only a regular file is accepted, or with @allow_blockdev a block device;
 * *@size receives the size (a block device's real size, which st_size does
 * not give).  Returns the fd or a negative errno.  pcow images themselves
 * are opened this way (regular files only).
 */
int pcow_open_data_file(const char *path, int oflags, bool allow_blockdev,
                        uint64_t *size, pcow_error *err);

typedef struct pcow_info {
    uint32_t version;
    uint64_t virtual_size;
    uint32_t cluster_size;
    uint32_t cow_unit;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint64_t generation;
    char backing_file[PCOW_MAX_BACKING_NAME + 1];   /* as stored */
    char backing_path[4096];                        /* resolved */
    pcow_backing_format backing_format;
    uint64_t backing_limit;     /* 0, or: the base shows only below it */
    uint64_t backing_snapshot_id;   /* a clone: the base's snapshot, else 0 */
    /* its name, when the base is open (not PCOW_OPEN_NO_BACKING), else "" */
    char backing_snapshot_name[PCOW_MAX_SNAPSHOT_NAME + 1];
    uint64_t file_size;         /* st_size */
    uint64_t disk_size;         /* st_blocks * 512 */
    uint64_t allocated_clusters;    /* data clusters referenced by any table */
    uint64_t active_clusters;       /* data clusters of the active layer */
    uint64_t metadata_clusters;     /* tables */
    uint64_t vm_state_clusters;     /* VM state of snapshots */
    uint64_t frontier;
    uint32_t nb_snapshots;
    bool was_dirty;             /* in-use flag was set at open (crash) */
    bool read_only;
    pcow_persist_method persist_method;
} pcow_info;

/*
 * The file still holds everything below the frontier (fstat, under the
 * image lock)?  -EIO naming the image if it was truncated behind our back
 * (locks are advisory): touching the table mappings would raise SIGBUS.
 * Management paths of a long-running process (QEMU's QMP commands) call
 * it first; a truncation racing with the call is not caught.
 */
int pcow_check_file_size(pcow_image *img, pcow_error *err);
/* After such a truncation: the cluster counts and frontier stay 0. */
void pcow_get_info(pcow_image *img, pcow_info *info);
const char *pcow_filename(pcow_image *img);
uint64_t pcow_virtual_size(pcow_image *img);
uint32_t pcow_cluster_size(pcow_image *img);
uint32_t pcow_cow_unit(pcow_image *img);
int pcow_fd(pcow_image *img);
/*
 * 1 if another open of the image (another process, or another open in
 * this one) holds its lock (every open takes one, except with
 * PCOW_OPEN_NO_LOCK), 0 if none does, or a negative errno.
 */
int pcow_lock_held_elsewhere(pcow_image *img);
/* The backing image (NULL if none or a raw base) and a raw base's fd. */
pcow_image *pcow_backing(pcow_image *img);
int pcow_backing_raw_fd(pcow_image *img);

/*
 * Extents: what the guest sees at a virtual offset.  An extent never crosses
 * a change of kind, writability, file or file contiguity; it is as long as
 * possible otherwise (up to @max_len bytes).  Used by the Image Monitor to
 * map the image with as few mappings as possible, by `map` and by `convert`.
 */
typedef enum pcow_extent_kind {
    PCOW_EXTENT_HOLE = 0,   /* reads as zeros, nothing allocated anywhere */
    PCOW_EXTENT_DATA = 1,   /* data at (fd, file_offset) */
} pcow_extent_kind;

typedef struct pcow_extent {
    uint64_t offset;        /* guest-visible start */
    uint64_t length;
    pcow_extent_kind kind;
    bool writable;          /* data owned by the active layer of this image */
    int fd;                 /* DATA: file that holds it (this image or a base) */
    uint64_t file_offset;   /* DATA: offset in that file */
    unsigned depth;         /* 0 = this image, 1 = its base, ... */
    uint64_t valid_length;  /* DATA from a raw base: bytes before its EOF */
} pcow_extent;

int pcow_get_extent(pcow_image *img, uint64_t offset, uint64_t max_len,
                    pcow_extent *ext);

/* Byte I/O for tools (convert, commit, compare, tests).  Not signal-safe. */
int64_t pcow_pread(pcow_image *img, uint64_t offset, void *buf, uint64_t len,
                   pcow_error *err);
int64_t pcow_pwrite(pcow_image *img, uint64_t offset, const void *buf,
                    uint64_t len, pcow_error *err);
/* Make [offset, offset+len) read as zeros, deallocating what it can. */
int pcow_zero_range(pcow_image *img, uint64_t offset, uint64_t len,
                    pcow_error *err);
int pcow_flush(pcow_image *img, pcow_error *err);
/*
 * Write back [addr, addr+len) of the caller's MAP_SHARED mapping of the
 * image's file (the extents' fd) with msync(MS_SYNC), then pcow_flush().
 * A failure counts as a failed flush of the image: it is not marked
 * clean at close (the kernel reports a write-back error to one sync
 * only, so a later flush of the same file can succeed).  Durable on
 * return.  Not signal-safe.
 */
int pcow_flush_mapping(pcow_image *img, void *addr, uint64_t len,
                       pcow_error *err);
/*
 * Deferred commits, for a burst of expansions that nobody needs durable
 * one by one (an incoming live migration filling a fresh image): while
 * on, pcow_expand_cluster() stores its commits (P-EXPAND-L1,
 * P-EXPAND-COMMIT) as pcow_pwrite() does, without persisting each; the
 * image stays consistent at every point, only durability waits.  Turning
 * it off persists everything with one barrier (as pcow_flush()).  If that
 * barrier fails, deferral stays off and every later call (on or off)
 * fails with the same error: a retried fdatasync() can succeed although
 * the write-back lost pages.  Copy-on-write is never deferred, nor is
 * anything on PM (DAX + MAP_SYNC: a commit's persist is a cache line
 * flush, and the barrier would not flush the CPU caches): on is a no-op
 * there.  Returns 0 or -errno with @err set; 0 and nothing else for a
 * read-only or released image.
 */
int pcow_defer_commits(pcow_image *img, bool on, pcow_error *err);
bool pcow_commits_deferred(pcow_image *img);

/*
 * Runtime operations for the Image Monitor, serialised by the image's
 * metadata spinlock.  All but pcow_reserve_clusters() are
 * async-signal-safe, including their failure paths.
 *
 * pcow_reserve_clusters(): move up to @count zeroed, durable clusters into
 *   the image's reserve (called by the pre-allocation thread, never from a
 *   handler: it formats @err; may block on fallocate/fdatasync).  Returns
 *   how many are in the reserve now.
 * pcow_expand_cluster(): give the hole at virtual cluster @vcluster a zeroed
 *   data cluster and commit it; takes from the reserve, else allocates
 *   synchronously.  *file_offset receives the cluster's offset.  -EEXIST if
 *   the cluster was already allocated (another thread won): *file_offset is
 *   still set.  -ENOSPC when the disk is full: nothing changed.
 * pcow_cow(): make the COW unit(s) containing virtual byte @offset writable
 *   in the active layer: allocates the cluster's new home if needed, copies
 *   the unit (or, with @whole_cluster, every not yet copied unit), makes the
 *   data then the entry durable.  On return *ext describes the writable
 *   range now at that place (unit or cluster).  -EEXIST if already writable.
 */
uint32_t pcow_reserve_clusters(pcow_image *img, uint32_t count,
                               pcow_error *err);
uint32_t pcow_reserve_count(pcow_image *img);
int pcow_expand_cluster(pcow_image *img, uint64_t vcluster,
                        uint64_t *file_offset);
int pcow_cow(pcow_image *img, uint64_t offset, bool whole_cluster,
             pcow_extent *ext);
/* How many units of the cluster holding @offset were copied so far. */
unsigned pcow_cow_units_copied(pcow_image *img, uint64_t offset);

/* Snapshots */
typedef struct pcow_snapshot_info {
    uint64_t id;
    char name[PCOW_MAX_SNAPSHOT_NAME + 1];
    uint64_t virtual_size;
    uint64_t date_sec;
    uint32_t date_nsec;
    uint64_t clusters;          /* data clusters its table references */
    uint64_t vm_state_size;     /* bytes of VM state stored with it, or 0 */
    uint64_t vm_clock_nsec;     /* the VM's clock then (with VM state) */
    bool has_clones;            /* pcow_clone() made overlays of it */
} pcow_snapshot_info;

/* Returns the count; *list is malloc'd (free with free()). */
int pcow_snapshot_list(pcow_image *img, pcow_snapshot_info **list,
                       pcow_error *err);
/* *@id (if not NULL) receives the new snapshot's id. */
int pcow_snapshot_create(pcow_image *img, const char *name, uint64_t *id,
                         pcow_error *err);
/*
 * A snapshot with a VM's state (QEMU's savevm when no disk can hold it):
 * @size bytes at @data, 1 .. PCOW_MAX_VM_STATE, and the VM clock.  The
 * state is written into clusters of the image and the one header commit
 * that creates the snapshot makes it part of it: after a crash there is
 * either the snapshot with its whole VM state or neither.
 */
typedef struct pcow_vm_state {
    const void *data;
    uint64_t size;
    uint64_t vm_clock_nsec;
} pcow_vm_state;
/* pcow_snapshot_create() with @vm (NULL: none) stored with the snapshot */
int pcow_snapshot_create_vm(pcow_image *img, const char *name,
                            const pcow_vm_state *vm, uint64_t *id,
                            pcow_error *err);
/*
 * Read @len bytes at @offset of the VM state of the snapshot named @name
 * (exact name).  0; -ENOENT (no such snapshot), -ENODATA (it has no VM
 * state) or -EINVAL (past its end), with a message; -errno of the read.
 */
int pcow_snapshot_read_vm_state(pcow_image *img, const char *name,
                                uint64_t offset, void *buf, uint64_t len,
                                pcow_error *err);
/*
 * The rule for new snapshot names (pcow_snapshot_create() applies it):
 * 1..PCOW_MAX_SNAPSHOT_NAME bytes, none a control character (below 0x20,
 * or 0x7f), since names end up in tables and on terminals.  0 or -EINVAL.
 */
int pcow_snapshot_name_check(const char *name, pcow_error *err);
/*
 * @s for printing: each control character (C0, DEL, C1) and each byte that
 * is not part of valid UTF-8 becomes \xHH.  For names from images made
 * elsewhere.  malloc'd (free()), NULL when out of memory.
 */
char *pcow_escape_text(const char *s);
/*
 * Exact lookup: by @name (if not NULL) and/or by @id (if @has_id); with
 * both, the snapshot must match both.  A name never stands for an id.
 * Fills *info except info->clusters.  0, or -ENOENT with a message.
 */
int pcow_snapshot_lookup(pcow_image *img, const char *name, bool has_id,
                         uint64_t id, pcow_snapshot_info *info,
                         pcow_error *err);
/*
 * @name_or_id: the snapshot named so if there is one, else the one whose
 * id is @name_or_id in decimal (pcow-img snapshot -a/-d).
 */
int pcow_snapshot_revert(pcow_image *img, const char *name_or_id,
                         pcow_error *err);
/*
 * A snapshot that has clones (pcow_clone) is refused with -EBUSY, kind
 * PCOW_ERR_IN_USE: "FILE: snapshot 'S' has clones (made by pcow-img
 * clone); deleting it breaks them", unless @flags holds
 * PCOW_SNAPSHOT_DELETE_FORCE.  pcow_snapshot_delete() passes no flags.
 */
#define PCOW_SNAPSHOT_DELETE_FORCE (1u << 0)
int pcow_snapshot_delete(pcow_image *img, const char *name_or_id,
                         pcow_error *err);
int pcow_snapshot_delete_flags(pcow_image *img, const char *name_or_id,
                               unsigned flags, pcow_error *err);

/*
 * Clones (docs/interop/pcow-spec.rst, Backing snapshot): make @path a new
 * image whose base is snapshot @snapshot (name, else decimal id) of the
 * pcow image @template, with the snapshot's virtual size and the cluster
 * geometry of the template.  The base is stored as @template's path
 * relative to @path's directory.  The snapshot is marked HAS_CLONES first
 * (a header commit of the template, which needs the template's write lock
 * unless it is marked already), so it cannot be deleted without force.
 * Refused with nothing left behind: @path exists (-EEXIST), no such
 * snapshot (-ENOENT), the template is in use (-EBUSY), or @template is
 * not a pcow image.  *@snap_id (if not NULL) receives the snapshot's id.
 */
typedef struct pcow_clone_opts {
    pcow_persist_hook hook;         /* the template's writes (for tests) */
    void *hook_opaque;
    pcow_persist_hook new_hook;     /* the new image's writes */
    void *new_hook_opaque;
} pcow_clone_opts;

/*
 * The name of the base's snapshot a clone shows (info->backing_snapshot_id
 * not 0), read from the base when it is not open (PCOW_OPEN_NO_BACKING),
 * without a lock.  0; -ENOENT with a message when the base has no such
 * snapshot; -EINVAL if @img is not a clone.
 */
int pcow_backing_snapshot_name(pcow_image *img, char *name, size_t len,
                               pcow_error *err);

int pcow_clone(const char *template_path, const char *snapshot,
               const char *path, const pcow_clone_opts *opts,
               uint64_t *snap_id, pcow_error *err);

/*
 * A clone's *origin*: the snapshot of its base it was made from, as
 * pcow_snapshot_lookup() describes it (name, virtual size, VM state size
 * and VM clock).  The base must be open (not PCOW_OPEN_NO_BACKING).
 * 0; -EINVAL if @img is not a clone or its base is not open; -ENOENT if
 * the base no longer has the snapshot.
 */
int pcow_clone_origin(pcow_image *img, pcow_snapshot_info *info,
                      pcow_error *err);
/*
 * Read @len bytes at @offset of the VM state the origin holds (savevm
 * stored it there), as pcow_snapshot_read_vm_state() does for a snapshot
 * of @img itself: -ENODATA when the origin holds none.
 */
int pcow_clone_origin_read_vm_state(pcow_image *img, uint64_t offset,
                                    void *buf, uint64_t len,
                                    pcow_error *err);
/*
 * Revert a clone to its origin: the active layer is dropped (a new
 * all-zero L1 for the origin's virtual size, one header commit, then the
 * old active tables and what only they referenced are freed), so every
 * read falls through to the origin again.  The clone's own snapshots stay;
 * the virtual size becomes the origin's.  -EINVAL if @img is not a clone
 * or its base is not open; the errors of a snapshot revert otherwise.
 */
int pcow_clone_reset(pcow_image *img, pcow_error *err);

/* Backing chain */
/*
 * Rewrite the backing reference only (rebase -u).  A base that exists must
 * be a regular file (a raw one may be a block device) in the format given,
 * and must not lead back to @img (-ELOOP); unless @img was opened with
 * PCOW_OPEN_NO_BACKING it must exist and its whole chain opens.
 */
int pcow_set_backing(pcow_image *img, const char *backing_file,
                     pcow_backing_format fmt, pcow_error *err);
/*
 * Could @backing_file (relative to @img's directory; @fmt NONE: probed) be
 * @img's base?  It must exist and be a regular file (a raw base may be a
 * block device) in that format, and following its chain as far as it
 * exists must never reach @img or a file twice (-ELOOP).  Takes no locks,
 * so it reports a loop as a loop, not as a lock conflict.
 */
int pcow_check_backing(pcow_image *img, const char *backing_file,
                       pcow_backing_format fmt, pcow_error *err);
/*
 * Growing an image with a base sets its backing limit to the old size (if
 * lower than the limit it has): the grown range reads zeros, never what
 * the base holds there (docs/interop/pcow-spec.rst, Backing limit).
 */
int pcow_resize(pcow_image *img, uint64_t new_size, bool shrink,
                pcow_error *err);
/*
 * Set the offset from which the base no longer shows through (0: it shows
 * everywhere).  For commit, once the base itself reads zeros there; like
 * rebase -u it changes what the image shows if used otherwise.
 */
int pcow_set_backing_limit(pcow_image *img, uint64_t limit,
                           pcow_error *err);

/*
 * Bounded mappings (docs/interop/pcow-spec.rst, Compact).
 * pcow_mapping_count(): how many mappings (VMAs) the Image Monitor needs
 * to map the whole image eagerly, counted extent by extent as it maps.
 * pcow_compact(): move the active layer's own data clusters so that each
 * run of consecutive guest clusters lies back to back in the file, in
 * guest order, and maps as one mapping.  Guest content is unchanged; a
 * crash at any point leaves every cluster at its old or its new home.
 * @img must be open read-write with its lock, must have been closed
 * cleanly before (-EUCLEAN: repair it first) and must have no snapshots
 * (-ENOTSUP: their shared clusters are not moved).
 */
typedef struct pcow_compact_result {
    uint64_t clusters_moved;    /* data clusters copied to a new home */
    uint64_t runs_moved;        /* guest runs they formed */
    uint64_t mappings_before;   /* pcow_mapping_count() before */
    uint64_t mappings_after;    /* and after */
} pcow_compact_result;

int pcow_mapping_count(pcow_image *img, uint64_t *count, pcow_error *err);
int pcow_compact(pcow_image *img, pcow_compact_result *res,
                 pcow_error *err);

/*
 * Can @img take a structural change (a header commit) now?  0, or why not
 * (read-only, or the header generation at its maximum).  For tools that
 * must know before they change another file (commit writes the base first).
 */
int pcow_can_commit_header(pcow_image *img, pcow_error *err);

/* Consistency check and repair */
#define PCOW_REPAIR_LEAKS   (1u << 0)
#define PCOW_REPAIR_ERRORS  (1u << 1)

typedef struct pcow_check_result {
    uint64_t corruptions;       /* errors that make data unreliable */
    uint64_t leaks;             /* clusters that hold space but no data */
    uint64_t stale_entries;     /* of those: mappings beyond the virtual
                                   size (a shrink cut short), in leaks */
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;
    uint64_t allocated_clusters;
    uint64_t total_clusters;    /* virtual size in clusters */
    uint64_t fragmented_clusters;
    uint64_t vm_state_clusters; /* holding snapshots' VM state */
    uint64_t image_end_offset;
    char first_problem[512];    /* first corruption found, one line */
} pcow_check_result;

/* Opens @path itself (read-only unless repairing); see qemu-img's codes. */
int pcow_check(const char *path, unsigned repair, bool force_share,
               pcow_check_result *res, pcow_error *err);

/* Storage under an image (libndctl) */
typedef struct pcow_storage_info {
    bool on_dax;                /* MAP_SYNC mapping works */
    bool is_pmem;               /* libpmem says CPU flush is enough */
    bool has_namespace;         /* an NVDIMM namespace was found */
    char fs_type[32];
    char block_device[64];      /* e.g. "pmem0" */
    char namespace_name[64];    /* e.g. "namespace0.0" */
    char namespace_mode[32];    /* fsdax, raw, devdax, sector */
    uint64_t namespace_size;
    uint64_t namespace_align;
    pcow_persist_method persist_method;
    uint32_t suggested_cluster_size;
} pcow_storage_info;

int pcow_storage_probe(const char *path, pcow_storage_info *si,
                       pcow_error *err);

/* Parse "64K", "1G", "128" (bytes) ... ; -EINVAL on junk or overflow. */
int pcow_parse_size(const char *s, uint64_t *out);

/*
 * ==================================================================
 * Format knowledge for front ends: sizes, measure, create requests,
 * chain files.  (Kept together at the end of this header:
 * block/pcow/measure.c, block/pcow/create-request.c and
 * block/pcow/chain-file.c.)  Tools ask these instead of deriving the
 * format's rules themselves.
 * ==================================================================
 */

/* Virtual sizes are whole pages of this many bytes. */
#define PCOW_PAGE_SIZE 4096u

/*
 * @size rounded up to whole pages: the size of an image made from data of
 * @size bytes (convert, create -b).  0 when that overflows, which
 * pcow_geometry_for() refuses.
 */
uint64_t pcow_round_to_pages(uint64_t size);

/*
 * The data to measure, read through the caller's callbacks (a raw file or
 * a pcow image: the library does not care).  @block_status: 1 when
 * [off, off + *pnum) may hold data, 0 when it reads as zeros, *pnum at
 * most @max; @read fills @buf.  Negative errno on failure (the callback
 * reports it).
 */
typedef struct pcow_measure_source {
    uint64_t size;
    int (*block_status)(void *opaque, uint64_t off, uint64_t max,
                        uint64_t *pnum);
    int (*read)(void *opaque, uint64_t off, void *buf, uint64_t len);
    void *opaque;
} pcow_measure_source;

typedef struct pcow_measure_result {
    uint64_t required;          /* file size for @src's non-zero clusters */
    uint64_t fully_allocated;   /* file size with every cluster written */
    pcow_geometry geometry;     /* of the image measured */
} pcow_measure_result;

/*
 * The file size a new image of @virtual_size (geometry as for
 * pcow_geometry_for(), which refuses what create refuses) needs to hold
 * @src, or nothing (@src NULL).  A cluster is needed when any of its bytes
 * is not zero.  Geometry errors set @err (naming no file); a callback's
 * error is returned as it is and @err is left untouched.  Reads only.
 */
int pcow_measure(uint64_t virtual_size, uint32_t cluster_size,
                 uint32_t cow_unit, const pcow_measure_source *src,
                 pcow_measure_result *res, pcow_error *err);

/*
 * A new image as a front end asks for it (pcow-img create): what the
 * request leaves open is settled as qemu-img's bdrv_img_create() does.
 */
typedef struct pcow_create_request {
    uint64_t virtual_size;      /* 0: the base's size, in whole pages */
    uint32_t cluster_size;      /* 0: default */
    bool cluster_size_auto;     /* the storage's suggestion, else default */
    uint32_t cow_unit;          /* 0: default */
    const char *backing_file;   /* NULL or "": none; stored as given,
                                 * relative to the new image's directory */
    pcow_backing_format backing_format; /* NONE: probed */
    /*
     * Optional: called once everything is settled and checked, just
     * before the file is made, with the options pcow_create() gets
     * (pcow-img prints its "Formatting ..." line here).
     */
    void (*announce)(void *opaque, const pcow_create_opts *opts);
    void *opaque;
} pcow_create_request;

typedef struct pcow_create_result {
    pcow_create_opts opts;      /* what pcow_create() was given */
    pcow_storage_info storage;  /* what the image is on (zeroed: unknown) */
} pcow_create_result;

/*
 * Resolve and check the base (its name's length, that it can be read, its
 * format), take the size from it if none is given, choose the cluster size
 * (auto: from the storage), check the geometry, then pcow_create().  @res
 * may be NULL.  Every error names @path.
 */
int pcow_create_image(const char *path, const pcow_create_request *req,
                      pcow_create_result *res, pcow_error *err);

/*
 * The path @backing_name stands for as the base of the image at
 * @image_path: relative names are relative to the image's directory, as
 * open and create resolve them.  malloc'd (free()); NULL without memory.
 */
char *pcow_backing_path(const char *image_path, const char *backing_name);

typedef enum pcow_chain_role {
    PCOW_CHAIN_NONE = 0,        /* not a file of the chain (or no such file) */
    PCOW_CHAIN_SELF = 1,        /* @img's own file */
    PCOW_CHAIN_BASE = 2,        /* a base image's file, or a raw base */
} pcow_chain_role;

/*
 * Is the file at @path (any name of it: compared by device and inode)
 * @img's own file or a file of its backing chain?  @img may be NULL
 * (PCOW_CHAIN_NONE).  Takes no locks; not signal-safe (stat).
 */
pcow_chain_role pcow_chain_role_of(pcow_image *img, const char *path);

/*
 * The files the image at @path reads, top first: the image, then each base
 * down its chain (the last may be raw).  Each is the absolute path of the
 * file libpcow opened, symlinks resolved: the set a path-based confinement
 * policy (AppArmor) must allow.  Opens @path read-only with its chain and
 * closes it; @flags may hold PCOW_OPEN_NO_LOCK (take no lock).  Returns
 * the number of files and sets *@files to a NULL-terminated array (free it
 * with pcow_chain_files_free()), or a negative errno with @err set.
 */
int pcow_chain_files(const char *path, unsigned flags, char ***files,
                     pcow_error *err);
void pcow_chain_files_free(char **files);

#ifdef __cplusplus
}
#endif

#endif /* PCOW_PCOW_H */
