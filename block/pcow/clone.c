/*
 * libpcow clones: a new image whose base is a snapshot of a template
 * (docs/interop/pcow-spec.rst, Backing snapshot; docs/pcow.rst, Clones).
 * The snapshot is marked HAS_CLONES in the template first (P-CLONE-LIST,
 * P-CLONE-COMMIT), then the clone is created (P-CREATE-BODY): a crash in
 * between leaves a marked snapshot without a clone, never a clone whose
 * snapshot could be deleted.
 *
 * A clone's *origin* is that snapshot: its VM state is where a VM started
 * from the clone resumes, and pcow_clone_reset() reverts the clone to it
 * (P-ORIGIN-TABLES, P-ORIGIN-COMMIT; docs/pcow.rst, Starting VMs from a
 * clone).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-int.h"

/*
 * @target as a path relative to the directory @dir (both absolute, no
 * symlinks): what create stores so that the pair can move together.
 */
static int relative_to(const char *dir, const char *target, char *out,
                       size_t outlen)
{
    size_t common = 0, i;
    size_t dlen = strlen(dir);
    int n = 0;

    /* The longest common prefix ending at a path component boundary */
    for (i = 0; dir[i] && dir[i] == target[i]; i++) {
        if (dir[i] == '/') {
            common = i + 1;
        }
    }
    if (!dir[i] && (target[i] == '/' || dlen == 1)) {
        common = dlen == 1 ? 1 : i + 1;
    }
    out[0] = '\0';
    /* One ".." per component of @dir below the common prefix */
    for (i = common; i < dlen; i++) {
        if (i == common || dir[i - 1] == '/') {
            n += snprintf(out + n, n < (int)outlen ? outlen - n : 0, "../");
        }
    }
    n += snprintf(out + n, n < (int)outlen ? outlen - n : 0, "%s",
                  target + common);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* The name @path's base @template gets: relative to @path's directory */
static int clone_backing_name(const char *template_path, const char *path,
                              char *out, size_t outlen, pcow_error *err)
{
    char tabs[PATH_MAX], dabs[PATH_MAX];
    char *tmp = strdup(path);
    int ret = 0;

    if (!tmp) {
        return pcow_set_file_error(err, -ENOMEM, path, "out of memory");
    }
    if (!realpath(template_path, tabs) || !realpath(dirname(tmp), dabs)) {
        ret = -errno;
        pcow_set_file_error(err, ret, path, "cannot resolve: %s",
                            strerror(-ret));
    } else if (relative_to(dabs, tabs, out, outlen) < 0 ||
               strlen(out) > PCOW_MAX_BACKING_NAME) {
        ret = pcow_set_file_error(err, -ENAMETOOLONG, path, "backing file name "
                                  "too long");
    }
    free(tmp);
    return ret;
}

/*
 * Open the template: read-only (a shared lock, as clones hold) when its
 * snapshot is marked already, else read-write to mark it.  *@k: the
 * snapshot's index.
 */
static int open_template(const char *template_path, const char *snapshot,
                         const pcow_clone_opts *opts, pcow_image **out,
                         int *k, pcow_error *err)
{
    pcow_open_opts o = { .flags = 0 };
    pcow_image *t;
    uint64_t id;
    int ret;

    ret = pcow_open(template_path, &o, &t, err);
    if (ret < 0) {
        return ret;
    }
    *k = pcow_snapshot_find(t, snapshot);
    if (*k < 0) {
        ret = pcow_img_error(t, err, -ENOENT, "snapshot '%s' not found",
                             snapshot);
        pcow_close(t, NULL);
        return ret;
    }
    if (t->snaps[*k].flags & PCOW_SNAP_F_HAS_CLONES) {
        *out = t;
        return 0;
    }
    id = t->snaps[*k].id;
    pcow_close(t, NULL);
    o.flags = PCOW_OPEN_RDWR;
    o.hook = opts ? opts->hook : NULL;
    o.hook_opaque = opts ? opts->hook_opaque : NULL;
    ret = pcow_open(template_path, &o, &t, err);
    if (ret < 0) {
        return ret;
    }
    /* By id: the name may have moved to another snapshot meanwhile */
    for (*k = 0; *k < (int)t->hdr.nb_snapshots; (*k)++) {
        if (t->snaps[*k].id == id) {
            *out = t;
            return 0;
        }
    }
    ret = pcow_img_error(t, err, -ENOENT, "snapshot '%s' not found",
                         snapshot);
    pcow_close(t, NULL);
    return ret;
}

int pcow_clone(const char *template_path, const char *snapshot,
               const char *path, const pcow_clone_opts *opts,
               uint64_t *snap_id, pcow_error *err)
{
    char name[PCOW_MAX_BACKING_NAME + 1];
    pcow_create_opts co = { 0 };
    pcow_image *t = NULL;
    bool marked = false;
    struct stat st;
    int k, ret;

    pcow_error_clear(err);
    if (!template_path || !snapshot || !path) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    if (lstat(path, &st) == 0) {
        return pcow_set_file_error(err, -EEXIST, path, "file exists");
    }
    ret = open_template(template_path, snapshot, opts, &t, &k, err);
    if (ret < 0) {
        return ret;
    }
    ret = clone_backing_name(template_path, path, name, sizeof(name), err);
    if (ret == 0 && !t->read_only) {
        ret = pcow_snapshot_set_clones(t, k, true, err); /* P-CLONE-* */
        marked = ret == 0;
    }
    if (ret == 0) {
        co.virtual_size = t->snaps[k].virtual_size;
        co.cluster_size = t->cluster_size;
        co.cow_unit = 1u << t->cow_unit_bits;
        co.backing_file = name;
        co.backing_format = PCOW_BACKING_PCOW;
        co.backing_snapshot_id = t->snaps[k].id;
        co.hook = opts ? opts->new_hook : NULL;
        co.hook_opaque = opts ? opts->new_hook_opaque : NULL;
        ret = pcow_create(path, &co, err);      /* P-CREATE-BODY */
    }
    if (ret < 0 && marked) {
        /* Nothing left behind: no clone, so no mark either */
        pcow_snapshot_set_clones(t, k, false, NULL);
    }
    if (ret == 0 && snap_id) {
        *snap_id = t->snaps[k].id;
    }
    if (ret < 0) {
        pcow_close(t, NULL);
    } else {
        ret = pcow_close(t, err);
    }
    return ret;
}

/*
 * Look snapshot backing_snapshot_id up in @img's base, opened without a
 * lock and without its chain: 1 found (name in @name), 0 the base has
 * none (@err says so), or a negative errno: the base did not open.
 */
int pcow_base_snapshot_lookup(pcow_image *img, char *name, size_t len,
                              pcow_error *err)
{
    uint64_t id = img->hdr.backing_snapshot_id;
    char path[4096];
    pcow_image *base;
    uint32_t k;
    int ret;

    if (pcow_resolve_backing(img->dirname, img->hdr.backing_name, path,
                             sizeof(path)) < 0) {
        return pcow_img_error(img, err, -ENAMETOOLONG, "backing file name "
                              "too long");
    }
    ret = pcow_open_internal(path, PCOW_OPEN_NO_LOCK | PCOW_OPEN_NO_BACKING |
                             PCOW_OPEN_BASE, NULL, NULL, 0, NULL, 1, NULL,
                             &base, err);
    if (ret < 0) {
        return ret;
    }
    pcow_img_error(img, err, -ENOENT, "base %s has no snapshot with id %llu",
                   path, (unsigned long long)id);
    ret = 0;
    for (k = 0; k < base->hdr.nb_snapshots; k++) {
        if (base->snaps[k].id == id) {
            snprintf(name, len, "%s", base->snaps[k].name);
            pcow_error_clear(err);
            ret = 1;
        }
    }
    pcow_image_free(base);
    return ret;
}

int pcow_backing_snapshot_name(pcow_image *img, char *name, size_t len,
                               pcow_error *err)
{
    int ret;

    if (!img->hdr.backing_snapshot_id) {
        return pcow_img_error(img, err, -EINVAL, "not a clone");
    }
    if (img->backing) {
        snprintf(name, len, "%s", img->backing->view_snapshot_name);
        return 0;
    }
    ret = pcow_base_snapshot_lookup(img, name, len, err);
    return ret == 0 ? -ENOENT : ret < 0 ? ret : 0;
}

/* The origin's record in the open base (*@sn), or a negative errno */
static int origin_of(pcow_image *img, const PcowSnapshot **sn,
                     pcow_error *err)
{
    pcow_image *b = img->backing;
    uint32_t k;

    pcow_error_clear(err);
    if (!img->hdr.backing_snapshot_id) {
        return pcow_img_error(img, err, -EINVAL, "not a clone");
    }
    if (!b || !b->view_snapshot_id) {
        return pcow_img_error(img, err, -EINVAL, "the clone's base is not "
                              "open");
    }
    for (k = 0; k < b->hdr.nb_snapshots; k++) {
        if (b->snaps[k].id == b->view_snapshot_id) {
            *sn = &b->snaps[k];
            return 0;
        }
    }
    return pcow_img_error(img, err, -ENOENT, "base %s has no snapshot with "
                          "id %llu", b->filename,
                          (unsigned long long)b->view_snapshot_id);
}

int pcow_clone_origin(pcow_image *img, pcow_snapshot_info *info,
                      pcow_error *err)
{
    const PcowSnapshot *sn;
    int ret;

    ret = origin_of(img, &sn, err);
    if (ret < 0) {
        return ret;
    }
    return pcow_snapshot_lookup(img->backing, NULL, true, sn->id, info, err);
}

int pcow_clone_origin_read_vm_state(pcow_image *img, uint64_t offset,
                                    void *buf, uint64_t len,
                                    pcow_error *err)
{
    const PcowSnapshot *sn;
    int ret;

    ret = origin_of(img, &sn, err);
    if (ret < 0) {
        return ret;
    }
    return pcow_snapshot_read_vm_state(img->backing, sn->name, offset, buf,
                                       len, err);
}

int pcow_clone_reset(pcow_image *img, pcow_error *err)
{
    PcowHeader h = img->hdr;
    const PcowSnapshot *sn;
    uint64_t l1_off, l1_size;
    int ret;

    ret = origin_of(img, &sn, err);
    if (ret < 0) {
        return ret;
    }
    ret = pcow_write_check(img, err);
    if (ret == 0) {
        ret = pcow_check_file_size(img, err);
    }
    if (ret == 0) {
        ret = pcow_header_can_commit(img, err);
    }
    if (ret < 0) {
        return ret;
    }
    l1_size = pcow_l1_size_for(sn->virtual_size, img->cluster_bits);
    /* P-ORIGIN-TABLES: the new L1, allocated zeroed, made durable */
    ret = pcow_alloc_clusters(img, pcow_div_round_up(l1_size * 8,
                                                     img->cluster_size),
                              &l1_off);
    if (ret == 0) {
        ret = pcow_persist_barrier(img);
    }
    if (ret < 0) {
        pcow_alloc_recover(img, false, NULL);
        return pcow_img_error(img, err, ret, "cannot revert to the origin: "
                              "%s", strerror(-ret));
    }
    h.l1_table_offset = l1_off;
    h.l1_size = l1_size;
    h.virtual_size = sn->virtual_size;
    pcow_header_set_limit(img, &h, 0);  /* the whole origin shows again */
    /* P-ORIGIN-COMMIT */
    return pcow_switch_active(img, &h, err);
}
