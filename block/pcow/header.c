/*
 * libpcow header: the codec of slots A/B and their CRC-32C, picking the
 * current slot, the header commit (a structural change) and the hot line
 * (frontier, in-use flag) -- cf. qcow2.c's header code.  The image's life
 * (create, open, close, info) is image.c's.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
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
    pcow_st32(slot + PCOW_H_MAGIC, PCOW_MAGIC);
    pcow_st32(slot + PCOW_H_VERSION, h->version);
    pcow_st32(slot + PCOW_H_LENGTH, len);
    pcow_st64(slot + PCOW_H_GENERATION, h->generation);
    pcow_st64(slot + PCOW_H_INCOMPAT, h->incompatible_features);
    pcow_st64(slot + PCOW_H_COMPAT, h->compatible_features);
    pcow_st64(slot + PCOW_H_AUTOCLEAR, h->autoclear_features);
    pcow_st32(slot + PCOW_H_CLUSTER_BITS, h->cluster_bits);
    pcow_st32(slot + PCOW_H_COW_UNIT_BITS, h->cow_unit_bits);
    pcow_st64(slot + PCOW_H_VIRTUAL_SIZE, h->virtual_size);
    pcow_st64(slot + PCOW_H_L1_OFFSET, h->l1_table_offset);
    pcow_st32(slot + PCOW_H_L1_SIZE, h->l1_size);
    pcow_st32(slot + PCOW_H_NB_SNAPSHOTS, h->nb_snapshots);
    pcow_st64(slot + PCOW_H_SNAP_OFFSET, h->snapshots_offset);
    pcow_st32(slot + PCOW_H_SNAP_SIZE, h->snapshots_size);
    pcow_st32(slot + PCOW_H_SNAP_CRC, h->snapshots_crc32c);
    pcow_st64(slot + PCOW_H_NEXT_SNAP_ID, h->next_snapshot_id);
    pcow_st32(slot + PCOW_H_BACKING_FORMAT, h->backing_format);
    pcow_st32(slot + PCOW_H_BACKING_NAME_LEN, h->backing_name_length);
    pcow_st64(slot + PCOW_H_BACKING_LIMIT, h->backing_limit);
    pcow_st64(slot + PCOW_H_BACKING_SNAP, h->backing_snapshot_id);
    memcpy(slot + PCOW_H_BACKING_NAME, h->backing_name,
           h->backing_name_length);
    pcow_st32(slot + PCOW_H_CRC, pcow_crc32c(0, slot, len));
}

/* 0: valid; -EINVAL bad magic; -ENOTSUP bad version; -EBADMSG otherwise */
static int header_decode(const uint8_t *slot, PcowHeader *h)
{
    uint8_t tmp[PCOW_SLOT_SIZE];
    uint32_t len;

    if (pcow_ld32(slot + PCOW_H_MAGIC) != PCOW_MAGIC) {
        return -EINVAL;
    }
    h->version = pcow_ld32(slot + PCOW_H_VERSION);
    if (h->version != PCOW_VERSION) {
        return -ENOTSUP;
    }
    len = pcow_ld32(slot + PCOW_H_LENGTH);
    if (len < PCOW_HEADER_FIXED || len > PCOW_SLOT_SIZE || len % 8) {
        return -EBADMSG;
    }
    memcpy(tmp, slot, len);
    memset(tmp + PCOW_H_CRC, 0, 4);
    if (pcow_crc32c(0, tmp, len) != pcow_ld32(slot + PCOW_H_CRC)) {
        return -EBADMSG;
    }
    h->header_length = len;
    h->generation = pcow_ld64(slot + PCOW_H_GENERATION);
    h->incompatible_features = pcow_ld64(slot + PCOW_H_INCOMPAT);
    h->compatible_features = pcow_ld64(slot + PCOW_H_COMPAT);
    h->autoclear_features = pcow_ld64(slot + PCOW_H_AUTOCLEAR);
    h->cluster_bits = pcow_ld32(slot + PCOW_H_CLUSTER_BITS);
    h->cow_unit_bits = pcow_ld32(slot + PCOW_H_COW_UNIT_BITS);
    h->virtual_size = pcow_ld64(slot + PCOW_H_VIRTUAL_SIZE);
    h->l1_table_offset = pcow_ld64(slot + PCOW_H_L1_OFFSET);
    h->l1_size = pcow_ld32(slot + PCOW_H_L1_SIZE);
    h->nb_snapshots = pcow_ld32(slot + PCOW_H_NB_SNAPSHOTS);
    h->snapshots_offset = pcow_ld64(slot + PCOW_H_SNAP_OFFSET);
    h->snapshots_size = pcow_ld32(slot + PCOW_H_SNAP_SIZE);
    h->snapshots_crc32c = pcow_ld32(slot + PCOW_H_SNAP_CRC);
    h->next_snapshot_id = pcow_ld64(slot + PCOW_H_NEXT_SNAP_ID);
    h->backing_format = pcow_ld32(slot + PCOW_H_BACKING_FORMAT);
    h->backing_name_length = pcow_ld32(slot + PCOW_H_BACKING_NAME_LEN);
    h->backing_limit = pcow_ld64(slot + PCOW_H_BACKING_LIMIT);
    h->backing_snapshot_id = pcow_ld64(slot + PCOW_H_BACKING_SNAP);
    memset(h->backing_name, 0, sizeof(h->backing_name));
    if (h->backing_name_length <= PCOW_MAX_BACKING_NAME &&
        PCOW_HEADER_FIXED + h->backing_name_length <= len) {
        memcpy(h->backing_name, slot + PCOW_H_BACKING_NAME,
               h->backing_name_length);
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
    /* The bit is set exactly while there is an id, of a pcow base */
    if (!!h->backing_snapshot_id !=
        !!(h->incompatible_features & PCOW_INCOMPAT_BACKING_SNAPSHOT) ||
        (h->backing_snapshot_id && h->backing_format != PCOW_FMT_PCOW)) {
        snprintf(msg, msglen, "invalid backing snapshot id %llu (backing "
                 "format %u, feature bit %s)",
                 (unsigned long long)h->backing_snapshot_id,
                 h->backing_format,
                 h->incompatible_features & PCOW_INCOMPAT_BACKING_SNAPSHOT ?
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

/*
 * Decode both slots of @buf (cluster 0's first page) and pick the current
 * one (valid, highest generation) into @h; @file_size is checked against
 * the hot line.  Errors name the image.
 */
static int pick_slot(pcow_image *img, const uint8_t *buf,
                     uint64_t file_size, PcowHeader *h, int *slot,
                     pcow_error *err)
{
    PcowHeader a, b;
    int ra, rb;

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
        *h = a;
        *slot = 0;
    } else {
        *h = b;
        *slot = 1;
    }
    return 0;
}

/* Cluster 0's first page into @buf; zeros past the end of the file */
static int read_page0(pcow_image *img, uint8_t *buf, pcow_error *err)
{
    int n;

    memset(buf, 0, 4096);
    n = read_full(img->fd, buf, 4096, 0);
    if (n < 0) {
        return pcow_img_error(img, err, n, "cannot read header: %s",
                              strerror(-n));
    }
    return 0;
}

/*
 * Read both slots, pick the current one and check its fields; sets the
 * geometry derived from it and the hot line as read (frontier, in-use,
 * stamp).  Errors name the image.
 */
int pcow_header_read(pcow_image *img, uint64_t file_size, pcow_error *err)
{
    uint8_t buf[4096];
    char msg[300];
    int n;

    n = read_page0(img, buf, err);
    if (n == 0) {
        n = pick_slot(img, buf, file_size, &img->hdr, &img->cur_slot, err);
    }
    if (n < 0) {
        return n;
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
    img->open_clean = !img->was_dirty;
    img->open_stamp = pcow_ld64(buf + PCOW_HOT_STAMP);
    return 0;
}

int pcow_header_reread(pcow_image *img, PcowHeader *h,
                       uint8_t hot[PCOW_HOT_SIZE], pcow_error *err)
{
    uint8_t buf[4096];
    struct stat st;
    int slot, ret;

    if (fstat(img->fd, &st) < 0) {
        return pcow_img_error(img, err, -errno, "cannot stat: %s",
                              strerror(errno));
    }
    ret = read_page0(img, buf, err);
    if (ret == 0) {
        ret = pick_slot(img, buf, st.st_size, h, &slot, err);
    }
    if (ret == 0) {
        memcpy(hot, buf + PCOW_HOT_OFFSET, PCOW_HOT_SIZE);
    }
    return ret;
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
 * Our table mappings end where the file ends: after a truncation behind
 * our back (the lock is advisory) touching them raises SIGBUS.  With the
 * image lock held our own allocations, which only grow the file, cannot
 * race with the check.  Cluster 0's first page (the frontier) must be
 * there before the frontier itself is read from its mapping.
 */
int pcow_check_size_locked(pcow_image *img, pcow_error *err)
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
    ret = pcow_check_size_locked(img, err);
    pcow_unlock(img);
    return ret;
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

/*
 * Set the header's backing limit (0: none) and keep the incompatible
 * feature bit set exactly while the header or a snapshot has a limit.
 */
void pcow_header_set_limit(pcow_image *img, PcowHeader *h, uint64_t limit)
{
    bool any = limit != 0;
    uint32_t k;

    for (k = 0; k < img->hdr.nb_snapshots; k++) {
        any |= img->snaps[k].backing_limit != 0;
    }
    h->backing_limit = limit;
    if (any) {
        h->incompatible_features |= PCOW_INCOMPAT_BACKING_LIMIT;
    } else {
        h->incompatible_features &= ~PCOW_INCOMPAT_BACKING_LIMIT;
    }
}
