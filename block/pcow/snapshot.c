/*
 * libpcow snapshots: table parsing, create, list, revert, delete
 *
 * Each operation writes new tables into new clusters, persists them, and
 * commits with a header write (docs/interop/pcow-spec.rst, persist points
 * P-SNAP-*, P-REVERT-*, P-DELETE-*).  Old clusters are reclaimed afterwards
 * by the reference walk, so a crash at any point leaves old or new state
 * plus leaks.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pcow-int.h"

/* "FILE: cannot VERB snapshot 'NAME': errno text", the cause marked */
static int snap_op_error(pcow_image *img, pcow_error *err, int code,
                         const char *verb, const char *name)
{
    char op[PCOW_MAX_SNAPSHOT_NAME + 64];

    snprintf(op, sizeof(op), "cannot %s snapshot '%s'", verb, name);
    return pcow_img_op_error(img, err, code, op, "%s", strerror(-code));
}

static uint32_t record_len(uint32_t name_len, uint32_t extra_len)
{
    return PCOW_SNAP_FIXED + pcow_round_up(name_len, 8) + extra_len;
}

/* The VM state extension after the name, if @extra_len says there is one */
static bool vm_state_decode(pcow_image *img, PcowSnapshot *sn,
                            const uint8_t *x, uint32_t extra_len,
                            PcowProblems *pr)
{
    if (extra_len == 0) {
        return true;
    }
    if (extra_len != PCOW_SX_SIZE ||
        !(img->hdr.incompatible_features & PCOW_INCOMPAT_VM_STATE)) {
        pcow_problem(pr, -EINVAL, "snapshot '%s' has an invalid extra "
                     "length %u", sn->name, extra_len);
        return false;
    }
    sn->vm_state_offset = pcow_ld64(x + PCOW_SX_VM_STATE_OFFSET);
    sn->vm_state_size = pcow_ld64(x + PCOW_SX_VM_STATE_SIZE);
    sn->vm_clock_nsec = pcow_ld64(x + PCOW_SX_VM_CLOCK_NSEC);
    if (sn->vm_state_size == 0 || sn->vm_state_size > PCOW_MAX_VM_STATE ||
        sn->vm_state_offset < img->cluster_size ||
        sn->vm_state_offset % img->cluster_size) {
        pcow_problem(pr, -EINVAL, "snapshot '%s' has an invalid VM state "
                     "(%llu bytes at 0x%llx)", sn->name,
                     (unsigned long long)sn->vm_state_size,
                     (unsigned long long)sn->vm_state_offset);
        return false;
    }
    return true;
}

/*
 * Decode and check snapshot record @k at @pos of the table @buf into
 * img->snaps[k].  Returns its length, 0 after reporting a problem.
 */
static uint32_t record_decode(pcow_image *img, const uint8_t *buf,
                              uint32_t pos, uint32_t k, PcowProblems *pr)
{
    PcowHeader *h = &img->hdr;
    PcowSnapshot *sn = &img->snaps[k];
    const uint8_t *r = buf + pos;
    uint32_t nl, xl, need, j;

    if (pos + PCOW_SNAP_FIXED > h->snapshots_size) {
        pcow_problem(pr, -EINVAL, "snapshot table truncated at record "
                     "%u", k);
        return 0;
    }
    nl = pcow_ld32(r + PCOW_S_NAME_LEN);
    xl = pcow_ld32(r + PCOW_S_EXTRA_LEN);
    if (nl == 0 || nl > PCOW_MAX_SNAPSHOT_NAME ||
        pos + record_len(nl, 0) > h->snapshots_size) {
        pcow_problem(pr, -EINVAL, "snapshot record %u has an invalid "
                     "name length %u", k, nl);
        return 0;
    }
    if (xl > h->snapshots_size - pos - record_len(nl, 0)) {
        pcow_problem(pr, -EINVAL, "snapshot record %u has an invalid "
                     "extra length %u", k, xl);
        return 0;
    }
    sn->id = pcow_ld64(r + PCOW_S_ID);
    sn->l1_table_offset = pcow_ld64(r + PCOW_S_L1_OFFSET);
    sn->l1_size = pcow_ld32(r + PCOW_S_L1_SIZE);
    sn->virtual_size = pcow_ld64(r + PCOW_S_VIRTUAL_SIZE);
    sn->date_sec = pcow_ld64(r + PCOW_S_DATE_SEC);
    sn->date_nsec = pcow_ld32(r + PCOW_S_DATE_NSEC);
    sn->backing_limit = pcow_ld64(r + PCOW_S_BACKING_LIMIT);
    sn->flags = pcow_ld64(r + PCOW_S_FLAGS);
    memcpy(sn->name, r + PCOW_S_NAME, nl);
    sn->name[nl] = '\0';
    if (memchr(sn->name, '\0', nl)) {
        pcow_problem(pr, -EINVAL, "snapshot record %u: name contains a "
                     "NUL byte", k);
        return 0;
    }
    if (!vm_state_decode(img, sn, r + record_len(nl, 0), xl, pr)) {
        return 0;
    }
    if (sn->virtual_size == 0 || sn->virtual_size % 4096) {
        pcow_problem(pr, -EINVAL, "snapshot '%s' has an invalid virtual "
                     "size %llu", sn->name,
                     (unsigned long long)sn->virtual_size);
        return 0;
    }
    if (sn->backing_limit &&
        (!(h->incompatible_features & PCOW_INCOMPAT_BACKING_LIMIT) ||
         sn->backing_limit % 4096 ||
         sn->backing_limit > sn->virtual_size)) {
        pcow_problem(pr, -EINVAL, "snapshot '%s' has an invalid backing "
                     "limit %llu", sn->name,
                     (unsigned long long)sn->backing_limit);
        return 0;
    }
    need = pcow_l1_size_for(sn->virtual_size, img->cluster_bits) >
           PCOW_MAX_L1_SIZE ? UINT32_MAX :
           pcow_l1_size_for(sn->virtual_size, img->cluster_bits);
    if (sn->l1_size < need || sn->l1_size > PCOW_MAX_L1_SIZE) {
        pcow_problem(pr, -EINVAL, "snapshot '%s' has an invalid L1 size "
                     "%u", sn->name, sn->l1_size);
        return 0;
    }
    for (j = 0; j < k; j++) {
        if (!strcmp(img->snaps[j].name, sn->name)) {
            pcow_problem(pr, -EINVAL, "duplicate snapshot name '%s'",
                         sn->name);
            return 0;
        }
    }
    return record_len(nl, xl);
}

int pcow_snapshots_load(pcow_image *img, PcowProblems *pr)
{
    PcowHeader *h = &img->hdr;
    uint64_t cs = img->cluster_size;
    uint64_t frontier = pcow_valid_end(img);
    uint8_t *buf;
    uint32_t pos = 0, k;
    int ret;

    free(img->snaps);
    img->snaps = NULL;
    if (h->nb_snapshots == 0) {
        return pcow_snapshot_ids_check(img, pr) && !pr->collect ? -EINVAL : 0;
    }
    if (h->snapshots_offset % cs || h->snapshots_offset < cs ||
        h->snapshots_size > PCOW_MAX_SNAP_TABLE ||
        h->snapshots_offset + pcow_round_up(h->snapshots_size, cs) >
        frontier ||
        (uint64_t)h->nb_snapshots * PCOW_SNAP_FIXED > h->snapshots_size) {
        pcow_problem(pr, -EINVAL, "snapshot table at 0x%llx (%u bytes, %u "
                     "snapshots) is out of range",
                     (unsigned long long)h->snapshots_offset,
                     h->snapshots_size, h->nb_snapshots);
        return -EINVAL;
    }
    buf = malloc(h->snapshots_size);
    img->snaps = calloc(h->nb_snapshots, sizeof(*img->snaps));
    if (!buf || !img->snaps) {
        free(buf);
        pcow_problem(pr, -ENOMEM, "out of memory for the snapshot table");
        return -ENOMEM;
    }
    ret = pcow_read_table(img, h->snapshots_offset, buf, h->snapshots_size);
    if (ret < 0) {
        pcow_problem(pr, ret, "cannot read the snapshot table");
        goto out;
    }
    ret = -EINVAL;
    if (pcow_crc32c(0, buf, h->snapshots_size) != h->snapshots_crc32c) {
        pcow_problem(pr, -EINVAL, "snapshot table checksum mismatch");
        goto out;
    }
    for (k = 0; k < h->nb_snapshots; k++) {
        uint32_t len = record_decode(img, buf, pos, k, pr);

        if (!len) {
            goto out;
        }
        pos += len;
    }
    if (pos != h->snapshots_size) {
        pcow_problem(pr, -EINVAL, "snapshot table has %u trailing bytes",
                     h->snapshots_size - pos);
        goto out;
    }
    /* Check mode loads the table anyway: check -r all renumbers */
    ret = pcow_snapshot_ids_check(img, pr) && !pr->collect ? -EINVAL : 0;
out:
    free(buf);
    return ret;
}

/*
 * Snapshot ids are 1 .. next_snapshot_id - 1 and unique; next_snapshot_id
 * is at least 1.  Returns the number of problems reported to @pr.
 */
uint64_t pcow_snapshot_ids_check(pcow_image *img, PcowProblems *pr)
{
    uint64_t next = img->hdr.next_snapshot_id, n = 0;
    uint32_t k, j;

    if (next == 0) {
        pcow_problem(pr, -EINVAL, "invalid next_snapshot_id 0 (snapshot "
                     "ids start at 1)");
        n++;
    }
    for (k = 0; k < img->hdr.nb_snapshots && img->snaps; k++) {
        const PcowSnapshot *sn = &img->snaps[k];

        if (sn->id == 0 || sn->id >= next) {
            pcow_problem(pr, -EINVAL, "snapshot '%s' has an invalid id %llu "
                         "(next_snapshot_id %llu)", sn->name,
                         (unsigned long long)sn->id,
                         (unsigned long long)next);
            n++;
            continue;
        }
        for (j = 0; j < k; j++) {
            if (img->snaps[j].id == sn->id) {
                pcow_problem(pr, -EINVAL, "duplicate snapshot id %llu",
                             (unsigned long long)sn->id);
                n++;
                break;
            }
        }
    }
    return n;
}

int pcow_snapshot_find(pcow_image *img, const char *name_or_id)
{
    char *end;
    unsigned long long id;
    uint32_t k;

    for (k = 0; k < img->hdr.nb_snapshots; k++) {
        if (!strcmp(img->snaps[k].name, name_or_id)) {
            return k;
        }
    }
    id = strtoull(name_or_id, &end, 10);
    if (*name_or_id && !*end) {
        for (k = 0; k < img->hdr.nb_snapshots; k++) {
            if (img->snaps[k].id == id) {
                return k;
            }
        }
    }
    return -ENOENT;
}

static uint32_t extra_len(const PcowSnapshot *sn)
{
    return sn->vm_state_size ? PCOW_SX_SIZE : 0;
}

/* Serialise @snaps into a new table, allocated and persisted (P-*-LIST) */
static int write_table(pcow_image *img, const PcowSnapshot *snaps,
                       uint32_t n, PcowHeader *h)
{
    uint64_t cs = img->cluster_size;
    uint32_t size = 0, pos = 0, k;
    uint64_t off;
    uint8_t *buf;
    int ret;

    /* The feature bit is set exactly while a record has VM state */
    h->incompatible_features &= ~PCOW_INCOMPAT_VM_STATE;
    for (k = 0; k < n; k++) {
        size += record_len(strlen(snaps[k].name), extra_len(&snaps[k]));
        if (snaps[k].vm_state_size) {
            h->incompatible_features |= PCOW_INCOMPAT_VM_STATE;
        }
    }
    h->nb_snapshots = n;
    h->snapshots_size = size;
    h->snapshots_offset = 0;
    h->snapshots_crc32c = 0;
    if (n == 0) {
        return 0;
    }
    if (size > PCOW_MAX_SNAP_TABLE) {
        return -EFBIG;
    }
    buf = calloc(1, size);
    if (!buf) {
        return -ENOMEM;
    }
    for (k = 0; k < n; k++) {
        uint8_t *r = buf + pos;
        uint32_t nl = strlen(snaps[k].name);

        pcow_st64(r + PCOW_S_ID, snaps[k].id);
        pcow_st64(r + PCOW_S_L1_OFFSET, snaps[k].l1_table_offset);
        pcow_st32(r + PCOW_S_L1_SIZE, snaps[k].l1_size);
        pcow_st32(r + PCOW_S_NAME_LEN, nl);
        pcow_st64(r + PCOW_S_VIRTUAL_SIZE, snaps[k].virtual_size);
        pcow_st64(r + PCOW_S_DATE_SEC, snaps[k].date_sec);
        pcow_st32(r + PCOW_S_DATE_NSEC, snaps[k].date_nsec);
        pcow_st64(r + PCOW_S_BACKING_LIMIT, snaps[k].backing_limit);
        pcow_st64(r + PCOW_S_FLAGS, snaps[k].flags);
        memcpy(r + PCOW_S_NAME, snaps[k].name, nl);
        if (snaps[k].vm_state_size) {
            uint8_t *x = r + record_len(nl, 0);

            pcow_st32(r + PCOW_S_EXTRA_LEN, PCOW_SX_SIZE);
            pcow_st64(x + PCOW_SX_VM_STATE_OFFSET, snaps[k].vm_state_offset);
            pcow_st64(x + PCOW_SX_VM_STATE_SIZE, snaps[k].vm_state_size);
            pcow_st64(x + PCOW_SX_VM_CLOCK_NSEC, snaps[k].vm_clock_nsec);
        }
        pos += record_len(nl, extra_len(&snaps[k]));
    }
    ret = pcow_alloc_clusters(img, pcow_div_round_up(size, cs), &off);
    if (ret == 0) {
        ret = pcow_persist_pwrite(img, off, buf, size);
    }
    if (ret == 0) {
        ret = pcow_persist_barrier(img);
    }
    if (ret == 0) {
        h->snapshots_offset = off;
        h->snapshots_crc32c = pcow_crc32c(0, buf, size);
    }
    free(buf);
    return ret;
}

/* Write the non-zero 4K chunks of an L1 table into fresh (zero) clusters */
static int write_l1(pcow_image *img, uint64_t off, const uint64_t *l1,
                    uint32_t l1_size)
{
    uint64_t bytes = (uint64_t)l1_size * 8, pos;
    const uint8_t *b = (const uint8_t *)l1;
    int ret;

    for (pos = 0; pos < bytes; pos += 4096) {
        uint64_t chunk = bytes - pos < 4096 ? bytes - pos : 4096;
        uint64_t k;

        for (k = 0; k < chunk / 8; k++) {
            if (l1[pos / 8 + k]) {
                break;
            }
        }
        if (k == chunk / 8) {
            continue;
        }
        ret = pcow_persist_pwrite(img, off + pos, b + pos, chunk);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Copy a set of tables (given as L1 array + a way to read each L2) into
 * newly allocated clusters, clearing WRITABLE.  Returns the new L1 offset.
 */
static int copy_tables(pcow_image *img, const uint64_t *src_l1,
                       uint32_t l1_size, uint64_t **src_l2,
                       uint64_t *new_l1_off)
{
    uint64_t cs = img->cluster_size;
    uint64_t *nl1 = calloc(l1_size ? l1_size : 1, 8);
    uint64_t *buf = malloc(cs);
    uint32_t i, j;
    int ret = -ENOMEM;

    if (!nl1 || !buf) {
        goto out;
    }
    for (i = 0; i < l1_size; i++) {
        uint64_t e = pcow_le64(src_l1[i]), off;

        if (!e || (src_l2 && !src_l2[i])) {
            continue;
        }
        if (src_l2) {
            memcpy(buf, src_l2[i], cs);
        } else {
            ret = pcow_read_table(img, e, buf, cs);
            if (ret < 0) {
                goto out;
            }
        }
        for (j = 0; j < img->l2_entries; j++) {
            uint64_t *m = &buf[j * PCOW_L2_WORDS + PCOW_W_MAP];

            *m = pcow_le64(pcow_le64(*m) & ~PCOW_F_WRITABLE);
        }
        ret = pcow_alloc_one(img, &off);
        if (ret == 0) {
            ret = pcow_persist_pwrite(img, off, buf, cs);
        }
        if (ret < 0) {
            goto out;
        }
        nl1[i] = pcow_le64(off);
    }
    ret = pcow_alloc_clusters(img, pcow_div_round_up((uint64_t)l1_size * 8,
                                                     cs), new_l1_off);
    if (ret == 0) {
        ret = write_l1(img, *new_l1_off, nl1, l1_size);
    }
    if (ret == 0) {
        ret = pcow_persist_barrier(img);
    }
out:
    free(nl1);
    free(buf);
    return ret;
}

int pcow_snapshot_name_check(const char *name, pcow_error *err)
{
    size_t nl = name ? strlen(name) : 0, i;

    if (nl == 0 || nl > PCOW_MAX_SNAPSHOT_NAME) {
        return pcow_set_error(err, -EINVAL, "snapshot name must be 1..%d "
                              "bytes", PCOW_MAX_SNAPSHOT_NAME);
    }
    for (i = 0; i < nl; i++) {
        unsigned char c = name[i];

        if (c < 0x20 || c == 0x7f) {
            return pcow_set_error(err, -EINVAL, "snapshot name must not "
                                  "contain control characters (byte 0x%02x "
                                  "at offset %zu)", c, i);
        }
    }
    return 0;
}

/*
 * Length of the valid UTF-8 character at @p (@rest bytes), storing it in
 * *c; 0 if the bytes there are not valid UTF-8 (overlong forms and
 * surrogates included).
 */
static int utf8_char(const unsigned char *p, size_t rest, uint32_t *c)
{
    static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    int n, k;

    if (p[0] < 0x80) {
        *c = p[0];
        return 1;
    }
    n = p[0] >= 0xf0 && p[0] < 0xf8 ? 4 : p[0] >= 0xe0 && p[0] < 0xf0 ? 3 :
        p[0] >= 0xc0 && p[0] < 0xe0 ? 2 : 0;
    if (n == 0 || (size_t)n > rest) {
        return 0;
    }
    *c = p[0] & (0x7f >> n);
    for (k = 1; k < n; k++) {
        if ((p[k] & 0xc0) != 0x80) {
            return 0;
        }
        *c = (*c << 6) | (p[k] & 0x3f);
    }
    if (*c < min[n] || *c > 0x10ffff || (*c >= 0xd800 && *c < 0xe000)) {
        return 0;
    }
    return n;
}

char *pcow_escape_text(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t rest = strlen(s), o = 0;
    char *out = malloc(rest * 4 + 1);      /* at worst \xHH per byte */

    if (!out) {
        return NULL;
    }
    while (rest) {
        uint32_t c;
        int n = utf8_char(p, rest, &c), k;

        if (n == 0 || c < 0x20 || (c >= 0x7f && c < 0xa0)) {
            /* All of its bytes; invalid UTF-8 goes one byte at a time */
            n = n ? n : 1;
            for (k = 0; k < n; k++) {
                snprintf(out + o, 5, "\\x%02x", p[k]);
                o += 4;
            }
        } else {
            memcpy(out + o, p, n);
            o += n;
        }
        p += n;
        rest -= n;
    }
    out[o] = '\0';
    return out;
}

int pcow_snapshot_lookup(pcow_image *img, const char *name, bool has_id,
                         uint64_t id, pcow_snapshot_info *info,
                         pcow_error *err)
{
    uint32_t k;

    for (k = 0; k < img->hdr.nb_snapshots; k++) {
        const PcowSnapshot *sn = &img->snaps[k];

        if ((!name || !strcmp(sn->name, name)) && (!has_id || sn->id == id)) {
            memset(info, 0, sizeof(*info));
            info->id = sn->id;
            snprintf(info->name, sizeof(info->name), "%s", sn->name);
            info->virtual_size = sn->virtual_size;
            info->date_sec = sn->date_sec;
            info->date_nsec = sn->date_nsec;
            info->vm_state_size = sn->vm_state_size;
            info->vm_clock_nsec = sn->vm_clock_nsec;
            return 0;
        }
    }
    if (name && has_id) {
        return pcow_img_error(img, err, -ENOENT, "no snapshot with id %llu "
                              "and name '%s'", (unsigned long long)id, name);
    }
    if (has_id) {
        return pcow_img_error(img, err, -ENOENT, "no snapshot with id %llu",
                              (unsigned long long)id);
    }
    return pcow_img_error(img, err, -ENOENT, "no snapshot named '%s'",
                          name ? name : "");
}

/* Before a snapshot operation writes anything: can it commit at all? */
static int check_rw(pcow_image *img, pcow_error *err)
{
    int ret;

    ret = pcow_write_check(img, err);
    if (ret < 0) {
        return ret;
    }
    ret = pcow_check_file_size(img, err);
    if (ret < 0) {
        return ret;
    }
    return pcow_header_can_commit(img, err);
}

/* Clear WRITABLE in every active entry (one persisted batch per table) */
static int freeze_active(pcow_image *img)
{
    uint64_t cs = img->cluster_size;
    uint32_t i, j;
    int ret;

    for (i = 0; i < img->hdr.l1_size; i++) {
        uint64_t *t = img->l2[i];
        bool any = false;

        if (!t || !img->l1[i]) {
            continue;
        }
        for (j = 0; j < img->l2_entries; j++) {
            uint64_t map = pcow_word(t + j * PCOW_L2_WORDS);

            if (pcow_entry_is_ours(pcow_entry_kind(map))) {
                pcow_persist_store64_nosync(img, t + j * PCOW_L2_WORDS,
                                            (pcow_le64(img->l1[i]) &
                                             ~(cs - 1)) +
                                            j * PCOW_L2_ENTRY_SIZE,
                                            map & ~PCOW_F_WRITABLE);
                any = true;
            }
        }
        if (any) {
            ret = pcow_persist_mapped(img, t, pcow_le64(img->l1[i]) &
                                      ~(cs - 1), cs);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

int pcow_snapshot_create(pcow_image *img, const char *name, uint64_t *id,
                         pcow_error *err)
{
    return pcow_snapshot_create_vm(img, name, NULL, id, err);
}

static int create_snapshot(pcow_image *img, const char *name,
                           const pcow_vm_state *vm, uint64_t *id,
                           pcow_error *err);

int pcow_snapshot_create_vm(pcow_image *img, const char *name,
                            const pcow_vm_state *vm, uint64_t *id,
                            pcow_error *err)
{
    int ret = pcow_snapshot_name_check(name, err);

    return ret < 0 ? ret : create_snapshot(img, name, vm, id, err);
}

int pcow_snapshot_create_any_name(pcow_image *img, const char *name,
                                  uint64_t *id, pcow_error *err)
{
    return create_snapshot(img, name, NULL, id, err);
}

/* Can snapshot @name be created (with @vm)?  Nothing written yet */
static int create_check(pcow_image *img, const char *name,
                        const pcow_vm_state *vm, pcow_error *err)
{
    size_t nl = name ? strlen(name) : 0;
    uint32_t i;
    int ret = check_rw(img, err);

    if (ret < 0) {
        return ret;
    }
    if (nl == 0 || nl > PCOW_MAX_SNAPSHOT_NAME) {
        return pcow_img_error(img, err, -EINVAL, "snapshot name must be "
                              "1..%d bytes", PCOW_MAX_SNAPSHOT_NAME);
    }
    if (vm && (vm->size == 0 || vm->size > PCOW_MAX_VM_STATE || !vm->data)) {
        return pcow_img_error(img, err, -EINVAL, "VM state of %llu bytes: "
                              "it must be 1 .. %llu bytes",
                              (unsigned long long)vm->size,
                              (unsigned long long)PCOW_MAX_VM_STATE);
    }
    if (img->hdr.next_snapshot_id == UINT64_MAX) {
        /* The new id must stay below next_snapshot_id, which cannot grow */
        return pcow_img_error(img, err, -EOVERFLOW, "no snapshot id left "
                              "(next_snapshot_id is at its maximum)");
    }
    for (i = 0; i < img->hdr.nb_snapshots; i++) {
        if (!strcmp(img->snaps[i].name, name)) {
            return pcow_img_error(img, err, -EEXIST, "snapshot '%s' already "
                                  "exists", name);
        }
    }
    return 0;
}

/* P-SNAP-VMSTATE: the VM state in new contiguous clusters, made durable */
static int write_vm_state(pcow_image *img, const pcow_vm_state *vm,
                          PcowSnapshot *sn)
{
    uint64_t off;
    int ret = pcow_alloc_clusters(img, pcow_div_round_up(vm->size,
                                                         img->cluster_size),
                                  &off);

    if (ret == 0) {
        ret = pcow_persist_pwrite(img, off, vm->data, vm->size);
    }
    if (ret == 0) {
        ret = pcow_persist_barrier(img);
    }
    if (ret == 0) {
        sn->vm_state_offset = off;
        sn->vm_state_size = vm->size;
        sn->vm_clock_nsec = vm->vm_clock_nsec;
    }
    return ret;
}

static int create_snapshot(pcow_image *img, const char *name,
                           const pcow_vm_state *vm, uint64_t *id,
                           pcow_error *err)
{
    PcowHeader h = img->hdr;
    PcowSnapshot *ns;
    struct timespec ts;
    uint64_t old_off = h.snapshots_offset, cs = img->cluster_size;
    uint64_t old_n = pcow_div_round_up(h.snapshots_size, cs);
    uint64_t l1_off;
    uint32_t n = h.nb_snapshots;
    int ret;

    ret = create_check(img, name, vm, err);
    if (ret < 0) {
        return ret;
    }
    ns = calloc(n + 1, sizeof(*ns));
    if (!ns) {
        return pcow_img_error(img, err, -ENOMEM, "out of memory");
    }
    if (n) {
        memcpy(ns, img->snaps, n * sizeof(*ns));
    }
    /* P-SNAP-TABLES */
    ret = copy_tables(img, img->l1, img->hdr.l1_size, img->l2, &l1_off);
    if (ret == 0 && vm) {
        ret = write_vm_state(img, vm, &ns[n]);  /* P-SNAP-VMSTATE */
    }
    if (ret < 0) {
        goto fail;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    ns[n].id = h.next_snapshot_id;
    ns[n].l1_table_offset = l1_off;
    ns[n].l1_size = h.l1_size;
    ns[n].virtual_size = h.virtual_size;
    ns[n].date_sec = ts.tv_sec;
    ns[n].date_nsec = ts.tv_nsec;
    ns[n].backing_limit = h.backing_limit;
    memcpy(ns[n].name, name, strlen(name) + 1);
    /* P-SNAP-LIST */
    ret = write_table(img, ns, n + 1, &h);
    if (ret < 0) {
        goto fail;
    }
    /* P-SNAP-FREEZE: the active layer now shares every data cluster */
    ret = freeze_active(img);
    if (ret < 0) {
        goto fail;
    }
    h.next_snapshot_id++;
    ret = pcow_header_commit(img, &h, err);     /* P-SNAP-COMMIT */
    if (ret < 0) {
        free(ns);
        return ret;
    }
    free(img->snaps);
    img->snaps = ns;
    if (id) {
        *id = ns[n].id;
    }
    if (old_off) {
        ret = pcow_free_clusters(img, old_off, old_n);
        if (ret < 0) {
            return pcow_img_error(img, err, ret, "cannot free the old "
                                  "snapshot table: %s", strerror(-ret));
        }
    }
    return 0;

fail:
    free(ns);
    /* Give back what was written, and undo needless freezing */
    pcow_alloc_recover(img, false, NULL);
    return snap_op_error(img, err, ret, "create", name);
}

/*
 * check -r all: a snapshot whose id is 0, 2^64-1 or a duplicate gets a new
 * id above all others, and next_snapshot_id goes above every id.  Valid
 * ids keep their value: users name snapshots by id.  A VM state the walk
 * found unusable is dropped (the snapshot's tables stay).
 */
bool pcow_snapshot_vm_state_bad(pcow_image *img)
{
    uint32_t k;

    for (k = 0; k < img->hdr.nb_snapshots && img->snaps; k++) {
        if (img->snaps[k].vm_state_bad) {
            return true;
        }
    }
    return false;
}

/* The lowest id >= 1 that no kept record holds (n < 2^32: one exists) */
static uint64_t lowest_free_id(const PcowSnapshot *ns, const bool *keep,
                               uint32_t n)
{
    uint64_t id = 1;
    uint32_t j;

    for (j = 0; j < n; j++) {
        if (keep[j] && ns[j].id == id) {
            id++;
            j = UINT32_MAX;     /* rescan: ++ wraps to 0 */
        }
    }
    return id;
}

int pcow_snapshot_ids_repair(pcow_image *img, pcow_error *err)
{
    PcowHeader h = img->hdr;
    uint64_t old_off = h.snapshots_offset;
    uint64_t old_n = pcow_div_round_up(h.snapshots_size, img->cluster_size);
    uint32_t n = h.nb_snapshots, k, j;
    uint64_t next = h.next_snapshot_id ? h.next_snapshot_id : 1;
    PcowSnapshot *ns = calloc(n ? n : 1, sizeof(*ns));
    bool *keep = calloc(n ? n : 1, sizeof(*keep));
    bool renumber = false;
    int ret = 0;

    if (!ns || !keep) {
        ret = pcow_img_error(img, err, -ENOMEM, "out of memory");
        goto out;
    }
    for (k = 0; k < n; k++) {
        ns[k] = img->snaps[k];
        keep[k] = ns[k].id != 0 && ns[k].id != UINT64_MAX;
        for (j = 0; j < k && keep[k]; j++) {
            keep[k] = !(keep[j] && ns[j].id == ns[k].id);
        }
        if (keep[k] && ns[k].id >= next) {
            next = ns[k].id + 1;
        }
    }
    for (k = 0; k < n; k++) {
        if (ns[k].vm_state_bad) {
            /* Its clusters are not its own: the snapshot loses its VM state */
            ns[k].vm_state_offset = ns[k].vm_state_size = 0;
            ns[k].vm_clock_nsec = 0;
            ns[k].vm_state_bad = false;
            renumber = true;
        }
        if (keep[k]) {
            continue;
        }
        /*
         * Ids above all others ran out: repair then reuses the lowest id no
         * snapshot holds, rather than leave the image unopenable.
         */
        ns[k].id = next == UINT64_MAX ? lowest_free_id(ns, keep, n) : next++;
        keep[k] = true;
        renumber = true;
    }
    if (renumber) {
        ret = write_table(img, ns, n, &h);
        if (ret < 0) {
            pcow_alloc_recover(img, false, NULL);
            ret = pcow_img_error(img, err, ret, "cannot write the snapshot "
                                 "table: %s", strerror(-ret));
            goto out;
        }
    }
    h.next_snapshot_id = next;
    ret = pcow_header_commit(img, &h, err);
    if (ret < 0 || !renumber) {
        goto out;
    }
    memcpy(img->snaps, ns, n * sizeof(*ns));
    ret = pcow_free_clusters(img, old_off, old_n);
    if (ret < 0) {
        ret = pcow_img_error(img, err, ret, "cannot free the old snapshot "
                             "table: %s", strerror(-ret));
    }
out:
    free(ns);
    free(keep);
    return ret;
}

static int find_or_fail(pcow_image *img, const char *name_or_id,
                        pcow_error *err)
{
    int k = name_or_id ? pcow_snapshot_find(img, name_or_id) : -ENOENT;

    if (k < 0) {
        return pcow_img_error(img, err, -ENOENT, "snapshot '%s' not found",
                              name_or_id ? name_or_id : "");
    }
    return k;
}

/* The index of the snapshot to revert to or delete, if the image can */
static int find_writable(pcow_image *img, const char *name_or_id,
                         pcow_error *err)
{
    int ret = check_rw(img, err);

    return ret < 0 ? ret : find_or_fail(img, name_or_id, err);
}

int pcow_snapshot_revert(pcow_image *img, const char *name_or_id,
                         pcow_error *err)
{
    PcowHeader h = img->hdr;
    PcowSnapshot sn;
    uint64_t *l1 = NULL, l1_off;
    int k, ret;

    k = find_writable(img, name_or_id, err);
    if (k < 0) {
        return k;
    }
    sn = img->snaps[k];
    l1 = calloc(sn.l1_size ? sn.l1_size : 1, 8);
    if (!l1) {
        return pcow_img_error(img, err, -ENOMEM, "out of memory");
    }
    ret = pcow_read_table(img, sn.l1_table_offset, l1, sn.l1_size * 8ull);
    if (ret == 0) {
        /* P-REVERT-TABLES */
        ret = copy_tables(img, l1, sn.l1_size, NULL, &l1_off);
    }
    free(l1);
    if (ret < 0) {
        pcow_alloc_recover(img, false, NULL);
        return snap_op_error(img, err, ret, "revert to", sn.name);
    }
    h.l1_table_offset = l1_off;
    h.l1_size = sn.l1_size;
    h.virtual_size = sn.virtual_size;
    h.backing_limit = sn.backing_limit;     /* the base as it showed then */
    /* P-REVERT-COMMIT */
    return pcow_switch_active(img, &h, err);
}

int pcow_switch_active(pcow_image *img, const PcowHeader *h,
                       pcow_error *err)
{
    PcowProblems pr = { 0 };
    int ret = pcow_header_commit(img, h, err);

    if (ret < 0) {
        return ret;
    }
    pcow_lock(img);
    pcow_tables_unload(img);
    ret = pcow_tables_load(img, &pr);
    pcow_unlock(img);
    if (ret < 0 || pr.count) {
        return pcow_img_error(img, err, ret < 0 ? ret : -EINVAL, "%s",
                              pr.first);
    }
    /* Free the old active tables and what only they referenced */
    return pcow_alloc_recover(img, false, err);
}

int pcow_snapshot_delete(pcow_image *img, const char *name_or_id,
                         pcow_error *err)
{
    return pcow_snapshot_delete_flags(img, name_or_id, 0, err);
}

int pcow_snapshot_delete_flags(pcow_image *img, const char *name_or_id,
                               unsigned flags, pcow_error *err)
{
    PcowHeader h = img->hdr;
    PcowSnapshot *ns;
    uint32_t n = h.nb_snapshots, i, m = 0;
    int k, ret;

    k = find_writable(img, name_or_id, err);
    if (k < 0) {
        return k;
    }
    /* Its clusters would be reused under the clones that read them */
    if ((img->snaps[k].flags & PCOW_SNAP_F_HAS_CLONES) &&
        !(flags & PCOW_SNAPSHOT_DELETE_FORCE)) {
        pcow_img_error(img, err, -EBUSY, "snapshot '%s' has clones (made "
                       "by pcow-img clone); deleting it breaks them",
                       img->snaps[k].name);
        return pcow_error_mark(err, PCOW_ERR_HAS_CLONES, -EBUSY);
    }
    ns = calloc(n, sizeof(*ns));
    if (!ns) {
        return pcow_img_error(img, err, -ENOMEM, "out of memory");
    }
    for (i = 0; i < n; i++) {
        if ((int)i != k) {
            ns[m++] = img->snaps[i];
        }
    }
    ret = write_table(img, ns, m, &h);          /* P-DELETE-LIST */
    if (ret < 0) {
        free(ns);
        pcow_alloc_recover(img, false, NULL);
        return snap_op_error(img, err, ret, "delete", img->snaps[k].name);
    }
    ret = pcow_header_commit(img, &h, err);     /* P-DELETE-COMMIT */
    if (ret < 0) {
        free(ns);
        return ret;
    }
    free(img->snaps);
    img->snaps = m ? ns : NULL;
    if (!m) {
        free(ns);
    }
    /* Free tables, data and the old list; P-DELETE-UNFREEZE */
    return pcow_alloc_recover(img, false, err);
}

static uint64_t count_clusters(pcow_image *img, const PcowSnapshot *sn)
{
    uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, 8);
    uint64_t *buf = malloc(img->cluster_size);
    uint64_t n = 0;
    uint32_t i, j;

    if (l1 && buf &&
        pcow_read_table(img, sn->l1_table_offset, l1,
                        sn->l1_size * 8ull) == 0) {
        for (i = 0; i < sn->l1_size; i++) {
            uint64_t e = pcow_le64(l1[i]);

            if (!e || pcow_read_table(img, e, buf, img->cluster_size) < 0) {
                continue;
            }
            for (j = 0; j < img->l2_entries; j++) {
                if (pcow_le64(buf[j * PCOW_L2_WORDS]) & PCOW_F_PRESENT) {
                    n++;
                }
            }
        }
    }
    free(l1);
    free(buf);
    return n;
}

int pcow_snapshot_list(pcow_image *img, pcow_snapshot_info **list,
                       pcow_error *err)
{
    uint32_t n = img->hdr.nb_snapshots, k;
    pcow_snapshot_info *l;

    *list = NULL;
    l = calloc(n ? n : 1, sizeof(*l));
    if (!l) {
        return pcow_img_error(img, err, -ENOMEM, "out of memory");
    }
    for (k = 0; k < n; k++) {
        const PcowSnapshot *sn = &img->snaps[k];

        l[k].id = sn->id;
        snprintf(l[k].name, sizeof(l[k].name), "%s", sn->name);
        l[k].virtual_size = sn->virtual_size;
        l[k].date_sec = sn->date_sec;
        l[k].date_nsec = sn->date_nsec;
        l[k].clusters = count_clusters(img, sn);
        l[k].vm_state_size = sn->vm_state_size;
        l[k].vm_clock_nsec = sn->vm_clock_nsec;
        l[k].has_clones = !!(sn->flags & PCOW_SNAP_F_HAS_CLONES);
    }
    *list = l;
    return n;
}

int pcow_snapshot_read_vm_state(pcow_image *img, const char *name,
                                uint64_t offset, void *buf, uint64_t len,
                                pcow_error *err)
{
    const PcowSnapshot *sn = NULL;
    uint32_t k;
    int ret;

    for (k = 0; k < img->hdr.nb_snapshots; k++) {
        if (!strcmp(img->snaps[k].name, name)) {
            sn = &img->snaps[k];
        }
    }
    if (!sn) {
        return pcow_img_error(img, err, -ENOENT, "no snapshot named '%s'",
                              name);
    }
    if (!sn->vm_state_size) {
        return pcow_img_error(img, err, -ENODATA, "snapshot '%s' has no VM "
                              "state", name);
    }
    if (offset > sn->vm_state_size || len > sn->vm_state_size - offset) {
        return pcow_img_error(img, err, -EINVAL, "snapshot '%s': %llu bytes "
                              "at %llu lie past the end of its VM state "
                              "(%llu bytes)", name, (unsigned long long)len,
                              (unsigned long long)offset,
                              (unsigned long long)sn->vm_state_size);
    }
    ret = pcow_read_table(img, sn->vm_state_offset + offset, buf, len);
    if (ret < 0) {
        return snap_op_error(img, err, ret, "read the VM state of", name);
    }
    return 0;
}

/* See pcow-int.h: a clone's base shows the snapshot, read-only */
int pcow_snapshot_view(pcow_image *img, uint64_t id, const char *owner,
                       pcow_error *err)
{
    PcowProblems pr = { 0 };
    const PcowSnapshot *sn = NULL;
    uint32_t k;
    int ret;

    for (k = 0; k < img->hdr.nb_snapshots; k++) {
        if (img->snaps[k].id == id) {
            sn = &img->snaps[k];
        }
    }
    if (!sn) {
        return pcow_set_file_error(err, -ENOENT, owner, "base %s has no "
                                   "snapshot with id %llu", img->filename,
                                   (unsigned long long)id);
    }
    if (!img->read_only) {
        return pcow_img_error(img, err, -EINVAL, "a snapshot view is "
                              "read-only");
    }
    pcow_tables_unload(img);
    img->hdr.l1_table_offset = sn->l1_table_offset;
    img->hdr.l1_size = sn->l1_size;
    img->hdr.virtual_size = sn->virtual_size;
    img->hdr.backing_limit = sn->backing_limit;
    img->view_snapshot_id = id;
    snprintf(img->view_snapshot_name, sizeof(img->view_snapshot_name), "%s",
             sn->name);
    /* The walk at open checked these tables already */
    ret = pcow_tables_load(img, &pr);
    if (ret < 0 || pr.count) {
        return pcow_img_error(img, err, ret < 0 ? ret : -EINVAL,
                              "snapshot %llu: %s", (unsigned long long)id,
                              pr.first);
    }
    return 0;
}

/*
 * P-CLONE-LIST, P-CLONE-COMMIT: set or clear HAS_CLONES on snapshot @k
 * with a new snapshot table and a header commit.
 */
int pcow_snapshot_set_clones(pcow_image *img, uint32_t k, bool on,
                             pcow_error *err)
{
    PcowHeader h = img->hdr;
    uint32_t n = h.nb_snapshots;
    PcowSnapshot *ns;
    int ret = check_rw(img, err);

    if (ret < 0) {
        return ret;
    }
    if (k >= n) {
        return pcow_img_error(img, err, -EINVAL, "no snapshot %u", k);
    }
    ns = malloc(n * sizeof(*ns));
    if (!ns) {
        return pcow_img_error(img, err, -ENOMEM, "out of memory");
    }
    memcpy(ns, img->snaps, n * sizeof(*ns));
    ns[k].flags = on ? ns[k].flags | PCOW_SNAP_F_HAS_CLONES
                     : ns[k].flags & ~PCOW_SNAP_F_HAS_CLONES;
    ret = write_table(img, ns, n, &h);          /* P-CLONE-LIST */
    if (ret < 0) {
        free(ns);
        pcow_alloc_recover(img, false, NULL);
        return snap_op_error(img, err, ret, "mark", img->snaps[k].name);
    }
    ret = pcow_header_commit(img, &h, err);     /* P-CLONE-COMMIT */
    if (ret < 0) {
        free(ns);
        return ret;
    }
    free(img->snaps);
    img->snaps = ns;
    /* Free the old list */
    return pcow_alloc_recover(img, false, err);
}
