/*
 * pcow-img: which processes have an image open now, and through which of
 * their images (info's "in use by")
 *
 * The /proc scan is here; whether a file a process holds is an overlay or
 * a clone of the image, and of which snapshot, is libpcow's answer (the
 * file opened without its chain and without a lock).  Matching is by
 * device and inode, so any name of the file counts.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcow-img.h"

/* The kernel's flag for a kernel thread (/proc/PID/stat field 9) */
#define IMG_PF_KTHREAD 0x00200000u

typedef struct FileId {
    dev_t dev;
    ino_t ino;
} FileId;

static bool same_file(const struct stat *st, const FileId *id)
{
    return st->st_dev == id->dev && st->st_ino == id->ino;
}

static void user_free(gpointer p)
{
    ImgUser *u = p;

    for (guint i = 0; i < u->uses->len; i++) {
        ImgUse *use = &g_array_index(u->uses, ImgUse, i);

        g_free(use->image);
    }
    g_array_free(u->uses, TRUE);
    g_free(u->comm);
    g_free(u);
}

/* /proc/PID/comm, without its newline; "?" once the process is gone */
static char *read_comm(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/comm", pid);
    char *comm = NULL;

    if (!g_file_get_contents(path, &comm, NULL, NULL)) {
        return g_strdup("?");
    }
    g_strchomp(comm);
    return comm;
}

/* A kernel thread holds no files: no need to inspect it */
static bool is_kernel_thread(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/stat", pid);
    g_autofree char *stat = NULL;
    const char *p;
    unsigned long flags;

    if (!g_file_get_contents(path, &stat, NULL, NULL)) {
        return false;
    }
    /* After "PID (COMM) ": state ppid pgrp session tty tpgid flags */
    p = strrchr(stat, ')');
    return p && sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %lu", &flags) == 1 &&
           (flags & IMG_PF_KTHREAD);
}

/*
 * Is the file a process holds at @link (known as @st) an overlay or a
 * clone of the image @id?  Asked of libpcow by the name the kernel gives
 * the file, which must still be this file (not renamed or deleted since).
 */
static bool classify(const char *link, const struct stat *st,
                     const FileId *id, ImgUse *use)
{
    g_autofree char *name = g_file_read_link(link, NULL);
    pcow_open_opts oo = {
        .flags = PCOW_OPEN_NO_BACKING | PCOW_OPEN_NO_LOCK,
    };
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_info info;
    struct stat now, base;
    bool ours;

    if (!name || name[0] != '/' || stat(name, &now) < 0 ||
        now.st_dev != st->st_dev || now.st_ino != st->st_ino ||
        !pcow_probe(name) || pcow_open(name, &oo, &img, &err) < 0) {
        return false;
    }
    pcow_get_info(img, &info);
    ours = info.backing_format == PCOW_BACKING_PCOW &&
           stat(info.backing_path, &base) == 0 && same_file(&base, id);
    if (ours) {
        use->image = g_strdup(name);
        use->snap_id = info.backing_snapshot_id;
        use->kind = use->snap_id ? IMG_USE_CLONE : IMG_USE_OVERLAY;
        use->snap_name[0] = '\0';
        if (use->snap_id &&
            pcow_backing_snapshot_name(img, use->snap_name,
                                       sizeof(use->snap_name), &err) < 0) {
            use->snap_name[0] = '\0';   /* deleted since: by id */
        }
    }
    pcow_close(img, NULL);
    return ours;
}

/*
 * The files process @pid holds: how many are the image, and its other
 * regular files (block devices too), each once.  -EACCES: not ours to
 * inspect; -ENOENT: it has exited.
 */
static int scan_fds(const char *pid, const FileId *id, unsigned *nimage,
                    GPtrArray *others)
{
    g_autofree char *dir = g_strdup_printf("/proc/%s/fd", pid);
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal, g_free,
                                                       NULL);
    DIR *d = opendir(dir);
    struct dirent *de;

    if (!d) {
        return errno == EACCES || errno == EPERM ? -EACCES : -ENOENT;
    }
    *nimage = 0;
    while ((de = readdir(d))) {
        g_autofree char *link = NULL;
        struct stat st;

        if (de->d_name[0] == '.') {
            continue;
        }
        link = g_strdup_printf("%s/%s", dir, de->d_name);
        /* Follows the link without opening: a FIFO cannot block */
        if (stat(link, &st) < 0) {
            continue;   /* closed meanwhile, or a dangling anon inode */
        }
        if (same_file(&st, id)) {
            (*nimage)++;
        } else if ((S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) &&
                   g_hash_table_add(seen, g_strdup_printf(
                                    "%ju:%ju", (uintmax_t)st.st_dev,
                                    (uintmax_t)st.st_ino))) {
            g_ptr_array_add(others, g_steal_pointer(&link));
        }
    }
    closedir(d);
    return 0;
}

/*
 * Does /proc hide other users' processes from us altogether (mounted with
 * hidepid=invisible or ptraceable)?  Then they cannot even be counted.
 */
static bool proc_hides_processes(void)
{
    g_autofree char *mi = NULL;
    g_auto(GStrv) lines = NULL;
    bool hides = false;

    if (geteuid() == 0 ||
        !g_file_get_contents("/proc/self/mountinfo", &mi, NULL, NULL)) {
        return false;
    }
    lines = g_strsplit(mi, "\n", -1);
    for (char **l = lines; *l; l++) {
        /* "ID PARENT DEV ROOT MOUNTPOINT ... - proc SOURCE OPTIONS" */
        g_auto(GStrv) f = g_strsplit(*l, " ", -1);
        const char *sep = strstr(*l, " - proc ");

        /* The last mount on /proc is the one we see */
        if (g_strv_length(f) > 4 && !strcmp(f[4], "/proc") && sep) {
            hides = strstr(sep, "hidepid=2") || strstr(sep, "hidepid=4") ||
                    strstr(sep, "hidepid=invisible") ||
                    strstr(sep, "hidepid=ptraceable");
        }
    }
    return hides;
}

/* One process: a user of the image, or NULL */
static ImgUser *inspect(const char *pid, const FileId *id, bool *denied)
{
    g_autoptr(GPtrArray) others = g_ptr_array_new_with_free_func(g_free);
    unsigned nimage = 0;
    ImgUser *u;
    int ret = scan_fds(pid, id, &nimage, others);

    *denied = ret == -EACCES && !is_kernel_thread(pid);
    if (ret < 0 || nimage == 0) {
        return NULL;
    }
    u = g_new0(ImgUser, 1);
    u->pid = atol(pid);
    u->comm = read_comm(pid);
    u->uses = g_array_new(FALSE, TRUE, sizeof(ImgUse));
    for (guint i = 0; i < others->len; i++) {
        ImgUse use = { 0 };
        struct stat st;

        if (stat(others->pdata[i], &st) == 0 &&
            classify(others->pdata[i], &st, id, &use)) {
            g_array_append_val(u->uses, use);
        }
    }
    /*
     * Each open image holds its own descriptor of its base: descriptors
     * of the image beyond its overlays' are the process's own opens.
     */
    if (nimage > u->uses->len) {
        ImgUse direct = { .kind = IMG_USE_DIRECT };

        g_array_append_val(u->uses, direct);
    }
    return u;
}

int img_users_scan(const char *path, ImgUsers *users)
{
    struct stat st;
    FileId id;
    DIR *d;
    struct dirent *de;
    pid_t self = getpid();

    users->users = g_ptr_array_new_with_free_func(user_free);
    users->uninspected = 0;
    users->hidden = proc_hides_processes();
    if (stat(path, &st) < 0) {
        return -errno;
    }
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    d = opendir("/proc");
    if (!d) {
        return -errno;
    }
    while ((de = readdir(d))) {
        ImgUser *u;
        bool denied;

        if (!g_ascii_isdigit(de->d_name[0]) || atol(de->d_name) == self) {
            continue;
        }
        u = inspect(de->d_name, &id, &denied);
        if (u) {
            g_ptr_array_add(users->users, u);
        }
        users->uninspected += denied;
    }
    closedir(d);
    return 0;
}

void img_users_free(ImgUsers *users)
{
    if (users->users) {
        g_ptr_array_free(users->users, TRUE);
        users->users = NULL;
    }
}

/* "clone /x/c1.pcow of snapshot 'gold'", "overlay /x/o.pcow", "directly" */
static char *use_str(const ImgUse *use)
{
    g_autofree char *eimg = NULL, *esn = NULL;

    if (use->kind == IMG_USE_DIRECT) {
        return g_strdup("directly");
    }
    eimg = pcow_escape_text(use->image);
    if (use->kind == IMG_USE_OVERLAY) {
        return g_strdup_printf("overlay %s", eimg);
    }
    if (!use->snap_name[0]) {
        return g_strdup_printf("clone %s of snapshot id %" PRIu64
                               " (not in the image)", eimg, use->snap_id);
    }
    esn = pcow_escape_text(use->snap_name);
    return g_strdup_printf("clone %s of snapshot '%s'", eimg, esn);
}

void img_users_human(const ImgUsers *users)
{
    unsigned n = users->uninspected;

    if (users->users->len == 0) {
        if (n) {
            printf("in use by: none found, but %u process%s could not be "
                   "inspected: run as root\n", n, n == 1 ? "" : "es");
        } else if (users->hidden) {
            printf("in use by: none found, but /proc hides other users' "
                   "processes (hidepid): run as root\n");
        }
        return;
    }
    printf("in use by:\n");
    for (guint i = 0; i < users->users->len; i++) {
        const ImgUser *u = users->users->pdata[i];
        g_autofree char *ecomm = pcow_escape_text(u->comm);

        printf("    pid %ld (%s):", (long)u->pid, ecomm);
        for (guint k = 0; k < u->uses->len; k++) {
            g_autofree char *s = use_str(&g_array_index(u->uses, ImgUse, k));

            printf("%s %s", k ? "," : "", s);
        }
        printf("\n");
    }
    if (n) {
        printf("    %u more process%s could not be inspected: run as root\n",
               n, n == 1 ? "" : "es");
    }
    if (users->hidden) {
        printf("    /proc hides other users' processes (hidepid): run as "
               "root\n");
    }
}

static const char *use_kind_name(ImgUseKind kind)
{
    return kind == IMG_USE_CLONE ? "clone" :
           kind == IMG_USE_OVERLAY ? "overlay" : "direct";
}

void img_users_json(ImgJson *j, const ImgUsers *users)
{
    json_begin_array(j, "in-use-by");
    for (guint i = 0; i < users->users->len; i++) {
        const ImgUser *u = users->users->pdata[i];

        json_begin_object(j, NULL);
        json_i64(j, "pid", u->pid);
        json_str(j, "command", u->comm);
        json_begin_array(j, "through");
        for (guint k = 0; k < u->uses->len; k++) {
            const ImgUse *use = &g_array_index(u->uses, ImgUse, k);

            json_begin_object(j, NULL);
            json_str(j, "type", use_kind_name(use->kind));
            if (use->image) {
                json_str(j, "filename", use->image);
            }
            if (use->kind == IMG_USE_CLONE) {
                char sid[24];

                snprintf(sid, sizeof(sid), "%" PRIu64, use->snap_id);
                json_str(j, "snapshot-id", sid);
                if (use->snap_name[0]) {
                    json_str(j, "snapshot-name", use->snap_name);
                }
            }
            json_end_object(j);
        }
        json_end_array(j);
        json_end_object(j);
    }
    json_end_array(j);
    json_u64(j, "in-use-uninspected", users->uninspected);
    json_bool(j, "in-use-hidden", users->hidden);
}
