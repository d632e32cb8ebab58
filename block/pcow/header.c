/*
 * libpcow header: slots A/B, CRC-32C, hot line, validation, create,
 * open/close, feature bits and locking
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pcow-int.h"

/* CRC-32C (Castagnoli), reflected polynomial 0x82f63b78 */
static uint32_t crc32c_entry(uint32_t i)
{
    uint32_t c = i;
    int k;

    for (k = 0; k < 8; k++) {
        c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return c;
}

uint32_t pcow_crc32c(uint32_t crc, const void *buf, size_t len)
{
    /*
     * The table is computed on first use; the computation is idempotent so
     * concurrent first users at worst compute it twice.  Not global state in
     * the sense that matters: it is a constant.
     */
    static uint32_t table[256];
    static int ready;
    const uint8_t *p = buf;

    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        uint32_t i;

        for (i = 0; i < 256; i++) {
            __atomic_store_n(&table[i], crc32c_entry(i), __ATOMIC_RELAXED);
        }
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    crc = ~crc;
    while (len--) {
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

uint64_t pcow_l1_size_for(uint64_t virtual_size, uint32_t cluster_bits)
{
    uint64_t per_l2 = (1ull << cluster_bits) *
                      ((1ull << cluster_bits) / PCOW_L2_ENTRY_SIZE);

    return pcow_div_round_up(virtual_size, per_l2);
}

static uint32_t header_length_for(uint32_t name_len)
{
    return PCOW_HEADER_FIXED + pcow_round_up(name_len, 8);
}

void pcow_header_encode(const PcowHeader *h, uint8_t *slot)
{
    uint32_t len = header_length_for(h->backing_name_length);

    memset(slot, 0, PCOW_SLOT_SIZE);
    pcow_st32(slot + 0, PCOW_MAGIC);
    pcow_st32(slot + 4, h->version);
    pcow_st32(slot + 8, len);
    pcow_st64(slot + 16, h->generation);
    pcow_st64(slot + 24, h->incompatible_features);
    pcow_st64(slot + 32, h->compatible_features);
    pcow_st64(slot + 40, h->autoclear_features);
    pcow_st32(slot + 48, h->cluster_bits);
    pcow_st32(slot + 52, h->cow_unit_bits);
    pcow_st64(slot + 56, h->virtual_size);
    pcow_st64(slot + 64, h->l1_table_offset);
    pcow_st32(slot + 72, h->l1_size);
    pcow_st32(slot + 76, h->nb_snapshots);
    pcow_st64(slot + 80, h->snapshots_offset);
    pcow_st32(slot + 88, h->snapshots_size);
    pcow_st32(slot + 92, h->snapshots_crc32c);
    pcow_st64(slot + 96, h->next_snapshot_id);
    pcow_st32(slot + 104, h->backing_format);
    pcow_st32(slot + 108, h->backing_name_length);
    pcow_st64(slot + 112, h->backing_limit);
    memcpy(slot + 128, h->backing_name, h->backing_name_length);
    pcow_st32(slot + 12, pcow_crc32c(0, slot, len));
}

/* 0: valid; -EINVAL bad magic; -ENOTSUP bad version; -EBADMSG otherwise */
static int header_decode(const uint8_t *slot, PcowHeader *h)
{
    uint8_t tmp[PCOW_SLOT_SIZE];
    uint32_t len;

    if (pcow_ld32(slot) != PCOW_MAGIC) {
        return -EINVAL;
    }
    h->version = pcow_ld32(slot + 4);
    if (h->version != PCOW_VERSION) {
        return -ENOTSUP;
    }
    len = pcow_ld32(slot + 8);
    if (len < PCOW_HEADER_FIXED || len > PCOW_SLOT_SIZE || len % 8) {
        return -EBADMSG;
    }
    memcpy(tmp, slot, len);
    memset(tmp + 12, 0, 4);
    if (pcow_crc32c(0, tmp, len) != pcow_ld32(slot + 12)) {
        return -EBADMSG;
    }
    h->header_length = len;
    h->generation = pcow_ld64(slot + 16);
    h->incompatible_features = pcow_ld64(slot + 24);
    h->compatible_features = pcow_ld64(slot + 32);
    h->autoclear_features = pcow_ld64(slot + 40);
    h->cluster_bits = pcow_ld32(slot + 48);
    h->cow_unit_bits = pcow_ld32(slot + 52);
    h->virtual_size = pcow_ld64(slot + 56);
    h->l1_table_offset = pcow_ld64(slot + 64);
    h->l1_size = pcow_ld32(slot + 72);
    h->nb_snapshots = pcow_ld32(slot + 76);
    h->snapshots_offset = pcow_ld64(slot + 80);
    h->snapshots_size = pcow_ld32(slot + 88);
    h->snapshots_crc32c = pcow_ld32(slot + 92);
    h->next_snapshot_id = pcow_ld64(slot + 96);
    h->backing_format = pcow_ld32(slot + 104);
    h->backing_name_length = pcow_ld32(slot + 108);
    h->backing_limit = pcow_ld64(slot + 112);
    memset(h->backing_name, 0, sizeof(h->backing_name));
    if (h->backing_name_length <= PCOW_MAX_BACKING_NAME &&
        PCOW_HEADER_FIXED + h->backing_name_length <= len) {
        memcpy(h->backing_name, slot + 128, h->backing_name_length);
    }
    return 0;
}

/* Field checks of a decoded header; message without the file name */
static int header_check(const PcowHeader *h, char *msg, size_t msglen)
{
    uint64_t need;
    int bit;

    if (h->incompatible_features & ~PCOW_INCOMPAT_KNOWN) {
        bit = __builtin_ctzll(h->incompatible_features &
                              ~PCOW_INCOMPAT_KNOWN);
        snprintf(msg, msglen, "unknown incompatible feature bit %d", bit);
        return -ENOTSUP;
    }
    if (h->cluster_bits < PCOW_MIN_CLUSTER_BITS ||
        h->cluster_bits > PCOW_MAX_CLUSTER_BITS) {
        snprintf(msg, msglen, "invalid cluster_bits %u (must be 12..21)",
                 h->cluster_bits);
        return -EINVAL;
    }
    if (h->cow_unit_bits < PCOW_MIN_COW_UNIT_BITS ||
        h->cow_unit_bits > h->cluster_bits ||
        h->cluster_bits - h->cow_unit_bits > 6) {
        snprintf(msg, msglen, "invalid cow_unit_bits %u for cluster_bits %u",
                 h->cow_unit_bits, h->cluster_bits);
        return -EINVAL;
    }
    if (h->virtual_size == 0 || h->virtual_size % 4096) {
        snprintf(msg, msglen, "invalid virtual size %llu (must be a "
                 "non-zero multiple of 4096)",
                 (unsigned long long)h->virtual_size);
        return -EINVAL;
    }
    need = pcow_l1_size_for(h->virtual_size, h->cluster_bits);
    if (need > PCOW_MAX_L1_SIZE || h->virtual_size > PCOW_MAX_VIRTUAL_SIZE) {
        snprintf(msg, msglen, "virtual size %llu too large for cluster "
                 "size %llu", (unsigned long long)h->virtual_size,
                 1ull << h->cluster_bits);
        return -EFBIG;
    }
    if (h->l1_size < need || h->l1_size > PCOW_MAX_L1_SIZE) {
        snprintf(msg, msglen, "L1 size %u out of range (%llu..%u)",
                 h->l1_size, (unsigned long long)need, PCOW_MAX_L1_SIZE);
        return -EINVAL;
    }
    if (h->backing_name_length > PCOW_MAX_BACKING_NAME ||
        PCOW_HEADER_FIXED + pcow_round_up(h->backing_name_length, 8) >
        h->header_length) {
        snprintf(msg, msglen, "invalid backing name length %u",
                 h->backing_name_length);
        return -EINVAL;
    }
    if (h->backing_format > PCOW_FMT_RAW ||
        (h->backing_format == PCOW_FMT_NONE) !=
        (h->backing_name_length == 0)) {
        snprintf(msg, msglen, "invalid backing format %u (name length %u)",
                 h->backing_format, h->backing_name_length);
        return -EINVAL;
    }
    if (h->backing_limit &&
        (!(h->incompatible_features & PCOW_INCOMPAT_BACKING_LIMIT) ||
         h->backing_limit % 4096 || h->backing_limit > h->virtual_size)) {
        snprintf(msg, msglen, "invalid backing limit %llu (virtual size "
                 "%llu, feature bit %s)",
                 (unsigned long long)h->backing_limit,
                 (unsigned long long)h->virtual_size,
                 h->incompatible_features & PCOW_INCOMPAT_BACKING_LIMIT ?
                 "set" : "not set");
        return -EINVAL;
    }
    if (memchr(h->backing_name, '\0', h->backing_name_length)) {
        snprintf(msg, msglen, "backing name contains a NUL byte");
        return -EINVAL;
    }
    if ((h->nb_snapshots == 0) != (h->snapshots_offset == 0) ||
        (h->nb_snapshots == 0) != (h->snapshots_size == 0)) {
        snprintf(msg, msglen, "inconsistent snapshot table (%u snapshots "
                 "at 0x%llx, %u bytes)", h->nb_snapshots,
                 (unsigned long long)h->snapshots_offset,
                 h->snapshots_size);
        return -EINVAL;
    }
    return 0;
}

/*
 * The generation never wraps: a commit of generation 0 after 2^64-1 would
 * lose to the stale slot, which names tables that may already be freed.
 */
int pcow_header_can_commit(pcow_image *img, pcow_error *err)
{
    if (img->hdr.generation == UINT64_MAX) {
        return pcow_img_error(img, err, -EOVERFLOW, "header generation is "
                              "at its maximum (%llu): no structural change "
                              "is possible; copy the image to a new one",
                              (unsigned long long)img->hdr.generation);
    }
    return 0;
}

/* Structural change: write the whole new header into the other slot */
int pcow_header_commit(pcow_image *img, const PcowHeader *h,
                       pcow_error *err)
{
    uint8_t slot[PCOW_SLOT_SIZE];
    PcowHeader nh = *h;
    int other = !img->cur_slot;
    int ret;

    ret = pcow_header_can_commit(img, err);
    if (ret < 0) {
        return ret;
    }
    nh.version = PCOW_VERSION;
    nh.generation = img->hdr.generation + 1;
    nh.header_length = header_length_for(nh.backing_name_length);
    /* A writer clears autoclear bits it does not know */
    nh.autoclear_features &= PCOW_AUTOCLEAR_KNOWN;
    pcow_header_encode(&nh, slot);
    ret = pcow_persist_pwrite(img, other ? PCOW_SLOT_B : PCOW_SLOT_A,
                              slot, PCOW_SLOT_SIZE);
    if (ret == 0) {
        ret = pcow_persist_sync_range(img, 0, 4096);
    }
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "header commit failed: %s",
                              strerror(-ret));
    }
    img->hdr = nh;
    img->cur_slot = other;
    return 0;
}

uint64_t pcow_frontier(pcow_image *img)
{
    if (img->c0) {
        return pcow_word((uint64_t *)(img->c0 + PCOW_HOT_FRONTIER));
    }
    return img->frontier_ro;
}

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, off + done);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            break;
        }
        done += n;
    }
    return done;
}

bool pcow_probe_fd(int fd)
{
    uint8_t buf[PCOW_PROBE_BYTES];
    int n = read_full(fd, buf, sizeof(buf), 0);

    return n > 0 && pcow_probe_buf(buf, n);
}

bool pcow_probe(const char *path)
{
    struct stat st;
    uint64_t size;
    char why[256];
    int fd = pcow_open_data(path, O_RDONLY, true, &st, &size, why,
                            sizeof(why));
    bool ret;

    if (fd < 0) {
        return false;
    }
    ret = pcow_probe_fd(fd);
    close(fd);
    return ret;
}

/* Largest virtual size with clusters of 1 << @cbits */
static uint64_t max_virtual_size(uint32_t cbits)
{
    uint64_t by_l1 = (uint64_t)PCOW_MAX_L1_SIZE << (cbits + cbits - 5);

    return by_l1 < PCOW_MAX_VIRTUAL_SIZE ? by_l1 : PCOW_MAX_VIRTUAL_SIZE;
}

int pcow_geometry_for(uint64_t virtual_size, uint32_t cluster_size,
                      uint32_t cow_unit, pcow_geometry *g, pcow_error *err)
{
    uint32_t cs = cluster_size ? cluster_size :
                  1u << PCOW_DEFAULT_CLUSTER_BITS;
    uint32_t cu = cow_unit;
    uint32_t cbits;
    uint64_t max;

    if (cs & (cs - 1) || cs < (1u << PCOW_MIN_CLUSTER_BITS) ||
        cs > (1u << PCOW_MAX_CLUSTER_BITS)) {
        return pcow_set_error(err, -EINVAL, "invalid cluster size %u (must "
                              "be a power of two, 4K..2M)", cs);
    }
    cbits = __builtin_ctz(cs);
    if (!cu) {
        cu = cs / PCOW_MAX_COW_UNITS;
        if (cu < (1u << PCOW_MIN_COW_UNIT_BITS)) {
            cu = 1u << PCOW_MIN_COW_UNIT_BITS;
        }
    }
    if (cu & (cu - 1) || cu < (1u << PCOW_MIN_COW_UNIT_BITS) || cu > cs ||
        cs / cu > PCOW_MAX_COW_UNITS) {
        return pcow_set_error(err, -EINVAL, "invalid COW unit %u for "
                              "cluster size %u (must be a power of two, at "
                              "least 4K and 1/%d of the cluster)", cu, cs,
                              PCOW_MAX_COW_UNITS);
    }
    if (virtual_size == 0 || virtual_size % 4096) {
        return pcow_set_error(err, -EINVAL, "invalid virtual size %llu "
                              "(must be a non-zero multiple of 4096)",
                              (unsigned long long)virtual_size);
    }
    max = max_virtual_size(cbits);
    if (virtual_size > max_virtual_size(PCOW_MAX_CLUSTER_BITS)) {
        return pcow_set_error(err, -EFBIG, "virtual size %llu too large: "
                              "the format's limit is %llu",
                              (unsigned long long)virtual_size,
                              (unsigned long long)
                              max_virtual_size(PCOW_MAX_CLUSTER_BITS));
    }
    if (virtual_size > max) {
        return pcow_set_error(err, -EFBIG, "virtual size %llu too large for "
                              "cluster size %u (at most %llu; larger "
                              "clusters allow more)",
                              (unsigned long long)virtual_size, cs,
                              (unsigned long long)max);
    }
    if (g) {
        g->virtual_size = virtual_size;
        g->cluster_size = cs;
        g->cow_unit = cu;
        g->clusters = pcow_div_round_up(virtual_size, cs);
        g->l2_entries = cs / PCOW_L2_ENTRY_SIZE;
        g->l1_size = pcow_l1_size_for(virtual_size, cbits);
        g->empty_size = cs + pcow_round_up(g->l1_size * 8, cs);
        g->max_virtual_size = max;
    }
    return 0;
}

static int create_geometry(const char *path, uint64_t vsize,
                           const pcow_create_opts *opts, pcow_geometry *g,
                           pcow_error *err)
{
    pcow_error gerr;
    int ret = pcow_geometry_for(vsize, opts->cluster_size, opts->cow_unit, g,
                                &gerr);

    return ret < 0 ? pcow_set_error(err, ret, "%s: %s", path, gerr.msg) : 0;
}

/*
 * Check the base of a new image, probe its format if not given and get its
 * size.  The new file already exists (@fd), so a chain that leads back to
 * its name is found as a loop.
 */
static int check_create_base(const char *path, int fd, const char *name,
                             pcow_backing_format *fmt, uint64_t *size,
                             pcow_error *err)
{
    PcowChain chain = { .n = 1 };
    char *tmp = strdup(path);
    uint32_t f = *fmt;
    struct stat st;
    int ret;

    if (!tmp) {
        return pcow_set_error(err, -ENOMEM, "%s: out of memory", path);
    }
    if (fstat(fd, &st) < 0) {
        ret = -errno;
        free(tmp);
        return pcow_set_error(err, ret, "%s: cannot stat: %s", path,
                              strerror(-ret));
    }
    chain.dev[0] = st.st_dev;
    chain.ino[0] = st.st_ino;
    ret = pcow_check_base(path, dirname(tmp), name, &f, false, &chain, size,
                          err);
    free(tmp);
    *fmt = f;
    return ret;
}

/* P-CREATE-BODY: cluster 0 and the (sparse) L1 table */
static int write_new_image(int fd, const char *path,
                           const pcow_create_opts *opts,
                           const pcow_geometry *g, pcow_backing_format fmt,
                           pcow_error *err)
{
    size_t name_len = fmt ? strlen(opts->backing_file) : 0;
    pcow_image tmp;
    PcowHeader h;
    uint8_t *c0;
    int ret;

    memset(&h, 0, sizeof(h));
    h.version = PCOW_VERSION;
    h.generation = 1;
    h.cluster_bits = __builtin_ctz(g->cluster_size);
    h.cow_unit_bits = __builtin_ctz(g->cow_unit);
    h.virtual_size = g->virtual_size;
    h.l1_table_offset = g->cluster_size;
    h.l1_size = g->l1_size;
    h.next_snapshot_id = 1;
    h.backing_format = fmt;
    h.backing_name_length = name_len;
    if (name_len) {
        memcpy(h.backing_name, opts->backing_file, name_len);
    }

    c0 = calloc(1, 4096);
    if (!c0) {
        return pcow_set_error(err, -ENOMEM, "%s: out of memory", path);
    }
    pcow_header_encode(&h, c0 + PCOW_SLOT_A);
    pcow_st64(c0 + PCOW_HOT_FRONTIER, g->empty_size);
    memset(&tmp, 0, sizeof(tmp));
    tmp.fd = fd;
    tmp.hook = opts->hook;
    tmp.hook_opaque = opts->hook_opaque;
    ret = pcow_persist_pwrite(&tmp, 0, c0, 4096);
    if (ret == 0) {
        ret = pcow_persist_truncate(&tmp, g->empty_size);
    }
    if (ret == 0) {
        ret = pcow_persist_barrier(&tmp);
    }
    free(c0);
    if (ret < 0) {
        return pcow_set_error(err, ret, "%s: cannot write: %s", path,
                              strerror(-ret));
    }
    return 0;
}

int pcow_create(const char *path, const pcow_create_opts *opts,
                pcow_error *err)
{
    pcow_backing_format fmt = PCOW_BACKING_NONE;
    uint64_t vsize, bsize = 0;
    bool size_from_base;
    pcow_geometry g;
    int fd, ret;

    if (!path || !opts) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    /* The geometry alone first (the size may still come from the base) */
    ret = create_geometry(path, 4096, opts, &g, err);
    if (ret < 0) {
        return ret;
    }
    vsize = opts->virtual_size;
    if (opts->backing_file) {
        size_t name_len = strlen(opts->backing_file);

        if (name_len == 0 || name_len > PCOW_MAX_BACKING_NAME) {
            return pcow_set_error(err, -ENAMETOOLONG, "%s: backing file name "
                                  "must be 1..%d bytes", path,
                                  PCOW_MAX_BACKING_NAME);
        }
        fmt = opts->backing_format;
        if (fmt > PCOW_BACKING_RAW) {
            return pcow_set_error(err, -EINVAL, "%s: invalid backing format",
                                  path);
        }
    } else if (opts->backing_format != PCOW_BACKING_NONE) {
        return pcow_set_error(err, -EINVAL, "%s: backing format given "
                              "without a backing file", path);
    }
    size_from_base = vsize == 0 && opts->size_from_backing &&
                     opts->backing_file;
    if (!size_from_base) {
        ret = create_geometry(path, vsize, opts, &g, err);
        if (ret < 0) {
            return ret;
        }
    }

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        ret = -errno;
        return pcow_set_error(err, ret, "%s: cannot create: %s", path,
                              strerror(-ret));
    }
    if (opts->backing_file) {
        ret = check_create_base(path, fd, opts->backing_file, &fmt, &bsize,
                                err);
        if (ret == 0 && size_from_base) {
            ret = create_geometry(path, pcow_round_up(bsize, 4096), opts, &g,
                                  err);
        }
    }
    if (ret == 0) {
        ret = write_new_image(fd, path, opts, &g, fmt, err);
    }
    close(fd);
    if (ret < 0) {
        unlink(path);
    }
    return ret;
}

static int take_lock(pcow_image *img, pcow_error *err)
{
    struct flock fl = {
        .l_type = img->read_only ? F_RDLCK : F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 1,
    };

    if (img->flags & PCOW_OPEN_NO_LOCK) {
        return 0;
    }
    if (fcntl(img->fd, F_OFD_SETLK, &fl) < 0) {
        if (errno == EAGAIN || errno == EACCES) {
            return pcow_set_error(err, -EBUSY, "%s: image is in use by "
                                  "another process", img->filename);
        }
        return pcow_img_error(img, err, -errno, "cannot lock: %s",
                              strerror(errno));
    }
    return 0;
}

static int read_header(pcow_image *img, uint64_t file_size, pcow_error *err)
{
    uint8_t buf[4096];
    PcowHeader a, b;
    int ra, rb, n;
    char msg[300];

    memset(buf, 0, sizeof(buf));
    n = read_full(img->fd, buf, sizeof(buf), 0);
    if (n < 0) {
        return pcow_img_error(img, err, n, "cannot read header: %s",
                              strerror(-n));
    }
    ra = header_decode(buf + PCOW_SLOT_A, &a);
    rb = header_decode(buf + PCOW_SLOT_B, &b);
    if (ra == -EINVAL && rb == -EINVAL) {
        return pcow_img_error(img, err, -EINVAL, "not a pcow image "
                              "(bad magic)");
    }
    if (file_size < PCOW_HOT_OFFSET + PCOW_HOT_SIZE) {
        return pcow_error_mark(err, PCOW_ERR_CORRUPT,
                               pcow_img_error(img, err, -EINVAL, "file is "
                                              "truncated (%llu bytes)",
                                              (unsigned long long)file_size));
    }
    if (ra && rb) {
        if (ra == -ENOTSUP || rb == -ENOTSUP) {
            return pcow_img_error(img, err, -ENOTSUP, "unsupported version "
                                  "%u", ra == -ENOTSUP ? a.version :
                                  b.version);
        }
        return pcow_error_mark(err, PCOW_ERR_CORRUPT,
                               pcow_img_error(img, err, -EINVAL, "header "
                                              "corrupt (no slot with a "
                                              "valid checksum)"));
    }
    if (ra == 0 && (rb != 0 || a.generation >= b.generation)) {
        img->hdr = a;
        img->cur_slot = 0;
    } else {
        img->hdr = b;
        img->cur_slot = 1;
    }
    n = header_check(&img->hdr, msg, sizeof(msg));
    if (n < 0) {
        pcow_img_error(img, err, n, "%s", msg);
        return n == -ENOTSUP ? n : pcow_error_mark(err, PCOW_ERR_CORRUPT, n);
    }
    img->cluster_bits = img->hdr.cluster_bits;
    img->cluster_size = 1ull << img->cluster_bits;
    img->cow_unit_bits = img->hdr.cow_unit_bits;
    img->units = 1u << (img->cluster_bits - img->cow_unit_bits);
    img->units_mask = img->units == 64 ? ~0ull : (1ull << img->units) - 1;
    img->l2_entries = img->cluster_size / PCOW_L2_ENTRY_SIZE;
    img->l2_words = img->cluster_size / 8;
    img->frontier_ro = pcow_ld64(buf + PCOW_HOT_FRONTIER);
    img->was_dirty = pcow_ld64(buf + PCOW_HOT_IN_USE) != 0;
    return 0;
}

/*
 * Where table entries may point: below the frontier; in check mode also
 * into whole clusters of the file above it, so that check can tell a
 * frontier that is too low (repaired by raising it) from garbage.
 */
uint64_t pcow_valid_end(pcow_image *img)
{
    uint64_t f = img->frontier_wild ? 0 : pcow_frontier(img);

    return img->check_end > f ? img->check_end : f;
}

/*
 * The most an image of this geometry can use: cluster 0, the snapshot
 * table, and per layer (active and each snapshot) its L1 table, every L2
 * table and every data cluster; twice that, plus the reserve ring, covers
 * what is in flight.  Saturates at UINT64_MAX.
 */
static uint64_t frontier_reach(pcow_image *img)
{
    uint64_t cs = img->cluster_size, layer, n;
    uint64_t vcl = pcow_div_round_up(img->hdr.virtual_size, cs);
    uint64_t l1cl = pcow_div_round_up((uint64_t)img->hdr.l1_size * 8, cs);

    layer = vcl + img->hdr.l1_size + l1cl;
    if (__builtin_mul_overflow(layer, 1 + (uint64_t)img->hdr.nb_snapshots,
                               &n) ||
        __builtin_add_overflow(n, pcow_div_round_up(img->hdr.snapshots_size,
                                                    cs) + 1, &n) ||
        __builtin_mul_overflow(n, 2, &n) ||
        __builtin_add_overflow(n, PCOW_RING_CAP, &n) ||
        __builtin_mul_overflow(n, cs, &n)) {
        return UINT64_MAX;
    }
    return n;
}

static int check_frontier(pcow_image *img, uint64_t file_size,
                          pcow_error *err)
{
    uint64_t f = img->frontier_ro;
    uint64_t l1_end = img->hdr.l1_table_offset +
                      pcow_round_up((uint64_t)img->hdr.l1_size * 8,
                                    img->cluster_size);
    bool check = img->flags & PCOW_OPEN_CHECK;

    /* Check reports a malformed frontier; check -r all rewrites it */
    if ((f % img->cluster_size || f < img->cluster_size) && !check) {
        return pcow_img_error(img, err, -EINVAL, "frontier 0x%llx is not a "
                              "multiple of the cluster size",
                              (unsigned long long)f);
    }
    /*
     * Every cluster below the frontier lies in the file: a shorter file
     * lost data (a cut copy).  Only check reads it (read-only, to report
     * it) or, for check -r all, extends it; a writer would extend it and
     * make the loss look like zeros.
     */
    if (f > file_size && !(check && (img->read_only ||
                                     (img->flags & PCOW_OPEN_FIX_SHORT)))) {
        return pcow_img_error(img, err, -EINVAL, "file truncated: its size "
                              "0x%llx is below the frontier 0x%llx",
                              (unsigned long long)file_size,
                              (unsigned long long)f);
    }
    if (check) {
        img->check_end = file_size & ~(img->cluster_size - 1);
        /* Past the file and past any use: garbage, not a cut copy */
        img->frontier_wild = f > file_size && f > frontier_reach(img);
    }
    if (img->hdr.l1_table_offset == 0 ||
        img->hdr.l1_table_offset % img->cluster_size ||
        l1_end > pcow_valid_end(img) || l1_end < img->hdr.l1_table_offset) {
        return pcow_img_error(img, err, -EINVAL, "L1 table at 0x%llx (%u "
                              "entries) lies outside the image (frontier "
                              "0x%llx)",
                              (unsigned long long)img->hdr.l1_table_offset,
                              img->hdr.l1_size, (unsigned long long)f);
    }
    return 0;
}

static char *dup_dirname(const char *path)
{
    char *tmp = strdup(path);
    char *d;

    if (!tmp) {
        return NULL;
    }
    d = strdup(dirname(tmp));
    free(tmp);
    return d;
}

void pcow_image_free(pcow_image *img)
{
    if (!img) {
        return;
    }
    pcow_backing_close(img);
    pcow_tables_unload(img);
    pcow_alloc_fini(img);
    pcow_persist_fini(img);
    free(img->snaps);
    if (img->fd >= 0) {
        close(img->fd);     /* also drops the OFD lock */
    }
    free(img->filename);
    free(img->dirname);
    free(img);
}

static int finish_rdwr_open(pcow_image *img, const PcowWalk *w,
                            pcow_error *err)
{
    struct timespec ts;
    uint64_t token;
    int ret;

    ret = pcow_alloc_init(img, w);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot set up allocation: %s",
                              strerror(-ret));
    }
    if (!(img->flags & PCOW_OPEN_NO_RECOVER)) {
        uint64_t n;

        /* P-OPEN-CLEAR: what a shrink cut by a crash left beyond the end */
        ret = pcow_clear_beyond(img, img->hdr.virtual_size, &n);
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot clear the mappings "
                                  "beyond the virtual size: %s",
                                  strerror(-ret));
        }
        ret = pcow_alloc_recover(img, img->was_dirty, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (img->hdr.autoclear_features) {
        ret = pcow_header_commit(img, &img->hdr, err);
        if (ret < 0) {
            return ret;
        }
    }
    /* P-OPEN-INUSE */
    clock_gettime(CLOCK_REALTIME, &ts);
    token = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^
            ((uint64_t)ts.tv_sec << 20);
    img->in_use_token = token | 1;
    ret = pcow_persist_hot_store(img, PCOW_HOT_IN_USE, img->in_use_token);
    if (ret < 0) {
        return pcow_img_error(img, err, ret, "cannot mark image in use: %s",
                              strerror(-ret));
    }
    return 0;
}

/*
 * The first problem a table walk found, as the error of an open: the
 * image is corrupt unless the walk itself failed (memory, I/O).
 */
static int problems_error(const char *path, const PcowProblems *pr, int ret,
                          pcow_error *err)
{
    pcow_error_kind k = pcow_error_kind_of(ret);

    pcow_set_error(err, ret, "%s: %s", path, pr->first);
    if (k == PCOW_ERR_INVALID || k == PCOW_ERR_LIMIT) {
        pcow_error_mark(err, PCOW_ERR_CORRUPT, ret);
    }
    return ret;
}

int pcow_open_internal(const char *path, unsigned flags,
                       pcow_persist_hook hook, void *opaque,
                       PcowChain *chain, unsigned depth,
                       PcowProblems *pr, pcow_image **out,
                       pcow_error *err)
{
    PcowProblems local = { 0 };
    PcowWalk w = { 0 };
    pcow_image *img;
    struct stat st;
    uint64_t size;
    char why[256];
    int ret;

    *out = NULL;
    if (!pr) {
        pr = &local;
    }
    img = calloc(1, sizeof(*img));
    if (!img) {
        return pcow_set_error(err, -ENOMEM, "%s: out of memory", path);
    }
    atomic_flag_clear(&img->lock);
    img->fd = -1;
    img->backing_raw_fd = -1;
    img->flags = flags;
    img->read_only = !(flags & PCOW_OPEN_RDWR);
    img->hook = hook;
    img->hook_opaque = opaque;
    img->depth = depth;
    img->filename = strdup(path);
    img->dirname = dup_dirname(path);
    if (!img->filename || !img->dirname) {
        ret = pcow_set_error(err, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    /* An image is a regular file: it grows, and holes are punched in it */
    img->fd = pcow_open_data(path, img->read_only ? O_RDONLY : O_RDWR, false,
                             &st, &size, why, sizeof(why));
    if (img->fd < 0) {
        ret = img->fd;
        pcow_set_error(err, ret, "%s: cannot open: %s", path, why);
        goto fail;
    }
    if (chain) {
        chain->dev[chain->n] = st.st_dev;
        chain->ino[chain->n] = st.st_ino;
        chain->n++;
    }
    ret = take_lock(img, err);
    if (ret < 0) {
        goto fail;
    }
    ret = read_header(img, st.st_size, err);
    if (ret < 0) {
        goto fail;
    }
    ret = pcow_error_mark(err, PCOW_ERR_CORRUPT,
                          check_frontier(img, st.st_size, err));
    if (ret < 0) {
        goto fail;
    }
    if (!img->read_only) {
        ret = pcow_persist_init(img);
        if (ret < 0) {
            ret = pcow_img_error(img, err, ret, "cannot map header: %s",
                                 strerror(-ret));
            goto fail;
        }
        /* check -r all: a short file gets its lost tail back, as zeros */
        if ((uint64_t)st.st_size < img->frontier_ro && !img->frontier_wild) {
            ret = pcow_persist_truncate(img, img->frontier_ro);
            if (ret < 0) {
                ret = pcow_img_error(img, err, ret, "cannot extend: %s",
                                     strerror(-ret));
                goto fail;
            }
            img->short_size = st.st_size;
        }
    }
    if (!img->read_only) {
        /*
         * P-OPEN-TABLES.  Cluster 0's first page (hot line) and the L1
         * table are mapped shared, and a store on a hole needs a block:
         * SIGBUS on a full disk.  The L1 table is often sparse; the first
         * page can hold a hole only on file systems with blocks smaller
         * than a page.  Allocate both now, when running out of space is
         * still a clean error (the L2 tables: pcow_tables_load).
         */
        ret = pcow_persist_allocate(img, 0, PCOW_HOT_OFFSET + PCOW_HOT_SIZE);
        if (ret < 0) {
            ret = pcow_img_error(img, err, ret, "cannot allocate the header: "
                                 "%s", strerror(-ret));
            goto fail;
        }
        ret = pcow_persist_allocate(img, img->hdr.l1_table_offset,
                                    pcow_round_up((uint64_t)img->hdr.l1_size
                                                  * 8, img->cluster_size));
        if (ret < 0) {
            ret = pcow_img_error(img, err, ret, "cannot allocate the L1 "
                                 "table: %s", strerror(-ret));
            goto fail;
        }
    }
    ret = pcow_snapshots_load(img, pr);
    if (ret < 0) {
        problems_error(path, pr, ret, err);
        goto fail;
    }
    ret = pcow_tables_load(img, pr);
    if (ret < 0) {
        problems_error(path, pr, ret, err);
        goto fail;
    }
    ret = pcow_walk(img, &w, pr, false);
    if (ret < 0) {
        problems_error(path, pr, ret, err);
        goto fail;
    }
    if (pr->count && !pr->collect) {
        ret = problems_error(path, pr, pr->first_code, err);
        goto fail;
    }
    if (!(flags & PCOW_OPEN_NO_BACKING) && img->hdr.backing_format) {
        PcowChain local_chain = { .n = 0 };

        if (!chain) {
            local_chain.dev[0] = st.st_dev;
            local_chain.ino[0] = st.st_ino;
            local_chain.n = 1;
            chain = &local_chain;
        }
        ret = pcow_backing_open(img, chain, err);
        if (ret < 0) {
            goto fail;
        }
    }
    if (!img->read_only) {
        if (pr->count) {
            /* Check mode found corruption: leave fixing to check */
            ret = pcow_alloc_init(img, &w);
            if (ret < 0) {
                goto fail;
            }
        } else {
            ret = finish_rdwr_open(img, &w, err);
            if (ret < 0) {
                goto fail;
            }
        }
    }
    pcow_walk_free(&w);
    *out = img;
    return 0;

fail:
    pcow_walk_free(&w);
    pcow_image_free(img);
    return ret;
}

int pcow_open(const char *path, const pcow_open_opts *opts,
              pcow_image **out, pcow_error *err)
{
    unsigned flags = opts ? opts->flags : 0;

    if (err) {
        err->code = 0;
        err->kind = PCOW_ERR_NONE;
        err->msg[0] = '\0';
    }
    if (!path || !out) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    flags &= PCOW_OPEN_RDWR | PCOW_OPEN_NO_LOCK | PCOW_OPEN_NO_BACKING |
             PCOW_OPEN_NO_RECOVER;
    return pcow_open_internal(path, flags, opts ? opts->hook : NULL,
                              opts ? opts->hook_opaque : NULL, NULL, 0,
                              NULL, out, err);
}

int pcow_close(pcow_image *img, pcow_error *err)
{
    int ret = 0, r;

    if (!img) {
        return 0;
    }
    if (!img->read_only && img->c0) {
        /* Truncated behind our back: touch no table, leave it in use */
        ret = pcow_check_file_size(img, err);
    }
    if (!img->read_only && img->c0 && ret == 0) {
        r = pcow_ring_drain(img);
        if (r < 0 && ret == 0) {
            ret = pcow_img_error(img, err, r, "cannot release reserved "
                                 "clusters: %s", strerror(-r));
        }
        if (!(img->flags & PCOW_OPEN_NO_RECOVER) && ret == 0) {
            /* P-CLOSE-TRIM: give back what COW and the reserve orphaned */
            r = pcow_alloc_recover(img, false, err);
            if (r < 0) {
                ret = r;
            }
        }
        r = pcow_persist_barrier(img);
        if (r < 0 && ret == 0) {
            ret = pcow_img_error(img, err, r, "flush failed: %s",
                                 strerror(-r));
        }
        /* P-CLOSE-CLEAN, only when everything before is durable */
        if (ret == 0) {
            r = pcow_persist_hot_store(img, PCOW_HOT_IN_USE, 0);
            if (r < 0) {
                ret = pcow_img_error(img, err, r, "cannot mark image clean: "
                                     "%s", strerror(-r));
            }
        }
    }
    pcow_image_free(img);
    return ret;
}

const char *pcow_filename(pcow_image *img)
{
    return img->filename;
}

uint64_t pcow_virtual_size(pcow_image *img)
{
    return img->hdr.virtual_size;
}

uint32_t pcow_cluster_size(pcow_image *img)
{
    return img->cluster_size;
}

uint32_t pcow_cow_unit(pcow_image *img)
{
    return 1u << img->cow_unit_bits;
}

int pcow_fd(pcow_image *img)
{
    return img->fd;
}

pcow_image *pcow_backing(pcow_image *img)
{
    return img->backing;
}

int pcow_backing_raw_fd(pcow_image *img)
{
    return img->backing_raw_fd;
}

/*
 * Our table mappings end where the file ends: after a truncation behind
 * our back (the lock is advisory) touching them raises SIGBUS.  With the
 * image lock held our own allocations, which only grow the file, cannot
 * race with the check.  Cluster 0's first page (the frontier) must be
 * there before the frontier itself is read from its mapping.
 */
static int check_size_locked(pcow_image *img, pcow_error *err)
{
    struct stat st;
    uint64_t f;

    if (fstat(img->fd, &st) < 0) {
        return pcow_img_error(img, err, -errno, "cannot stat: %s",
                              strerror(errno));
    }
    f = (uint64_t)st.st_size < 4096 ? 4096 : pcow_frontier(img);
    if ((uint64_t)st.st_size < f) {
        pcow_img_error(img, err, -EIO, "file truncated behind our back: "
                       "its size 0x%llx is below %s0x%llx; metadata past "
                       "its end is gone, check the image once closed",
                       (unsigned long long)st.st_size,
                       f == 4096 ? "" : "the frontier ",
                       (unsigned long long)f);
        return pcow_error_mark(err, PCOW_ERR_CORRUPT, -EIO);
    }
    return 0;
}

int pcow_check_file_size(pcow_image *img, pcow_error *err)
{
    int ret;

    pcow_lock(img);
    ret = check_size_locked(img, err);
    pcow_unlock(img);
    return ret;
}

void pcow_get_info(pcow_image *img, pcow_info *info)
{
    PcowProblems pr = { .collect = true };
    PcowWalk w = { 0 };
    struct stat st;

    memset(info, 0, sizeof(*info));
    info->version = img->hdr.version;
    info->virtual_size = img->hdr.virtual_size;
    info->cluster_size = img->cluster_size;
    info->cow_unit = 1u << img->cow_unit_bits;
    info->incompatible_features = img->hdr.incompatible_features;
    info->compatible_features = img->hdr.compatible_features;
    info->autoclear_features = img->hdr.autoclear_features;
    info->generation = img->hdr.generation;
    memcpy(info->backing_file, img->hdr.backing_name,
           img->hdr.backing_name_length);
    info->backing_file[img->hdr.backing_name_length] = '\0';
    if (img->hdr.backing_format) {
        if (img->backing_path[0]) {
            snprintf(info->backing_path, sizeof(info->backing_path), "%s",
                     img->backing_path);
        } else {
            pcow_resolve_backing(img->dirname, info->backing_file,
                                 info->backing_path,
                                 sizeof(info->backing_path));
        }
    }
    info->backing_format = img->hdr.backing_format;
    info->backing_limit = img->hdr.backing_limit;
    if (fstat(img->fd, &st) == 0) {
        info->file_size = st.st_size;
        info->disk_size = (uint64_t)st.st_blocks * 512;
    }
    pcow_lock(img);
    if (check_size_locked(img, NULL) < 0) {
        /* Truncated behind our back: report no counts rather than die */
        pcow_unlock(img);
        goto out;
    }
    info->frontier = pcow_frontier(img);
    if (pcow_walk(img, &w, &pr, false) == 0) {
        info->allocated_clusters = w.data_clusters;
        info->active_clusters = w.active_clusters;
        info->metadata_clusters = w.meta_clusters;
    }
    pcow_unlock(img);
    pcow_walk_free(&w);
out:
    info->nb_snapshots = img->hdr.nb_snapshots;
    info->was_dirty = img->was_dirty;
    info->read_only = img->read_only;
    info->persist_method = img->method;
}
