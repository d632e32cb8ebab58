/*
 * pcow-img: which processes have an image open now, and through which of
 * their images (info's "in use by")
 *
 * The /proc scan is here; whether a file a process holds is an overlay or
 * a clone of the image, and of which snapshot, is libpcow's answer (the
 * file opened without its chain and without a lock).
 *
 * A process's descriptors are identified from /proc/PID/fdinfo (mount id
 * and inode), never by stat() or open() of the file: a file on a hung NFS
 * mount or behind a stopped FUSE daemon would block info.  Only the other
 * files of a process that holds the image, on local file systems, are
 * opened to classify them.  Nobody holding the image's lock skips the scan.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "pcow-img.h"

/* The kernel's flag for a kernel thread (/proc/PID/stat field 9) */
#define IMG_PF_KTHREAD 0x00200000u

/* A file as /proc/PID/fdinfo names it; dev from the mount's mountinfo */
typedef struct FileId {
    int mnt_id;
    dev_t dev;
    uint64_t ino;
} FileId;

/* A mount, from some process's /proc/PID/mountinfo */
typedef struct MountDesc {
    dev_t dev;
    bool remote;                /* network or FUSE: may hang, never touched */
    bool subvols;               /* btrfs: inode numbers repeat per subvolume */
    bool known;                 /* false: in no mountinfo read (pipefs...) */
} MountDesc;

typedef struct Scan {
    FileId id;                  /* the image, from /proc/self/fdinfo */
    struct stat st;             /* the image, fstat() of our descriptor */
    GHashTable *mounts;         /* mount id (global) -> MountDesc */
} Scan;

/* A descriptor of a process that holds the image: what may be classified */
typedef struct FdDesc {
    char *fd;
    FileId id;
} FdDesc;

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

/* Network and FUSE file systems: touching their files may block */
static bool fs_is_remote(const char *type)
{
    static const char *const remote[] = {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "afs",
        "lustre", "virtiofs", "gfs2", "ocfs2", "orangefs", "coda", NULL,
    };

    if (g_str_has_prefix(type, "fuse")) {
        return true;
    }
    return g_strv_contains(remote, type);
}

/*
 * Learn the mounts of @pid's mount namespace from /proc/PID/mountinfo
 * (text the kernel has, nothing asked of a file system).  Mount ids are
 * system-wide, so one read serves every process of that namespace.
 */
static void load_mounts(Scan *s, const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/mountinfo", pid);
    g_autofree char *mi = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(path, &mi, NULL, NULL)) {
        return;
    }
    lines = g_strsplit(mi, "\n", -1);
    for (char **l = lines; *l; l++) {
        /* "ID PARENT MAJ:MIN ROOT MOUNTPOINT ... - FSTYPE SOURCE OPTS" */
        const char *sep = strstr(*l, " - ");
        unsigned maj, min;
        int id;
        char type[64];
        MountDesc *m;

        if (!sep || sscanf(*l, "%d %*d %u:%u", &id, &maj, &min) != 3 ||
            sscanf(sep, " - %63s", type) != 1 ||
            g_hash_table_contains(s->mounts, GINT_TO_POINTER(id))) {
            continue;
        }
        m = g_new0(MountDesc, 1);
        m->dev = makedev(maj, min);
        m->remote = fs_is_remote(type);
        m->subvols = !strcmp(type, "btrfs");
        m->known = true;
        g_hash_table_insert(s->mounts, GINT_TO_POINTER(id), m);
    }
}

/* The mount @mnt_id, seen in @pid's namespace; NULL if none says */
static const MountDesc *mount_of(Scan *s, const char *pid, int mnt_id)
{
    MountDesc *m = g_hash_table_lookup(s->mounts, GINT_TO_POINTER(mnt_id));

    if (!m) {
        load_mounts(s, pid);
        m = g_hash_table_lookup(s->mounts, GINT_TO_POINTER(mnt_id));
    }
    if (!m) {
        /* pipefs, sockfs, anon inodes: remember the miss */
        m = g_new0(MountDesc, 1);
        g_hash_table_insert(s->mounts, GINT_TO_POINTER(mnt_id), m);
    }
    return m->known ? m : NULL;
}

/* Descriptor @fd of @pid ("self" too), from its fdinfo alone */
static bool fd_id(Scan *s, const char *pid, const char *fd, FileId *id)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/fdinfo/%s", pid, fd);
    g_autofree char *text = NULL;
    const char *p, *q;
    const MountDesc *m;

    if (!g_file_get_contents(path, &text, NULL, NULL) ||
        !(p = strstr(text, "\nmnt_id:")) || !(q = strstr(text, "\nino:"))) {
        return false;
    }
    id->mnt_id = atoi(p + 8);
    id->ino = g_ascii_strtoull(q + 5, NULL, 10);
    m = mount_of(s, pid, id->mnt_id);
    id->dev = m ? m->dev : 0;
    return m != NULL;
}

static bool same_id(const FileId *a, const FileId *b)
{
    return a->ino == b->ino && (a->mnt_id == b->mnt_id || a->dev == b->dev);
}

/*
 * On btrfs, one mount shows subvolumes that number their inodes alike:
 * tell them apart by stat() through the descriptor's link, now known to
 * be a file of a local file system (it cannot hang).
 */
static bool same_subvol(Scan *s, const char *pid, const char *fd)
{
    g_autofree char *link = g_strdup_printf("/proc/%s/fd/%s", pid, fd);
    struct stat st;

    return stat(link, &st) == 0 && st.st_dev == s->st.st_dev &&
           st.st_ino == s->st.st_ino;
}

/* Is the file we opened as @fd the file @want? */
static bool own_fd_is(Scan *s, int fd, const FileId *want)
{
    char num[16];
    FileId id;

    snprintf(num, sizeof(num), "%d", fd);
    return fd_id(s, "self", num, &id) && same_id(&id, want);
}

/* Does the file at @path name the image?  Checked on our own descriptor */
static bool path_is_image(Scan *s, const char *path)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    bool same;

    if (fd < 0) {
        return false;
    }
    same = own_fd_is(s, fd, &s->id);
    close(fd);
    return same;
}

/*
 * Is descriptor @fd of @pid (known as @fid, on a local file system) an
 * overlay or a clone of the image?  Asked of libpcow by the name the
 * kernel gives the file, which must still be this regular file.
 */
static bool classify(Scan *s, const char *pid, const FdDesc *fdd,
                     ImgUse *use)
{
    g_autofree char *link = g_strdup_printf("/proc/%s/fd/%s", pid, fdd->fd);
    g_autofree char *name = g_file_read_link(link, NULL);
    pcow_open_opts oo = {
        .flags = PCOW_OPEN_NO_BACKING | PCOW_OPEN_NO_LOCK,
    };
    pcow_error err = { 0 };
    pcow_image *img;
    pcow_info info;
    struct stat st;
    bool ours;
    int fd;

    if (!name || name[0] != '/') {
        return false;
    }
    /* O_PATH: no device's or FIFO's open runs before we know the type */
    fd = open(name, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    ours = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
           own_fd_is(s, fd, &fdd->id);
    close(fd);
    if (!ours || !pcow_probe(name) || pcow_open(name, &oo, &img, &err) < 0) {
        return false;
    }
    pcow_get_info(img, &info);
    ours = info.backing_format == PCOW_BACKING_PCOW &&
           path_is_image(s, info.backing_path);
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

static void fd_desc_free(gpointer p)
{
    FdDesc *f = p;

    g_free(f->fd);
    g_free(f);
}

/*
 * The files process @pid holds, from /proc/PID/fdinfo: how many are the
 * image, and its other files on local file systems, each once.
 * -EACCES: not ours to inspect; -ENOENT: it has exited.
 */
static int scan_fds(Scan *s, const char *pid, unsigned *nimage,
                    GPtrArray *others)
{
    g_autofree char *dir = g_strdup_printf("/proc/%s/fdinfo", pid);
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
        FileId id;
        const MountDesc *m;

        if (de->d_name[0] == '.' || !fd_id(s, pid, de->d_name, &id)) {
            continue;   /* closed meanwhile, or a pipe, socket, anon inode */
        }
        m = mount_of(s, pid, id.mnt_id);
        if (same_id(&id, &s->id)) {
            *nimage += !m->subvols || same_subvol(s, pid, de->d_name);
            continue;
        }
        if (m && !m->remote &&
            g_hash_table_add(seen, g_strdup_printf("%ju:%" PRIu64,
                                                   (uintmax_t)id.dev,
                                                   id.ino))) {
            FdDesc *f = g_new0(FdDesc, 1);

            f->fd = g_strdup(de->d_name);
            f->id = id;
            g_ptr_array_add(others, f);
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
static ImgUser *inspect(Scan *s, const char *pid, bool *denied)
{
    g_autoptr(GPtrArray) others = g_ptr_array_new_with_free_func(
                                      fd_desc_free);
    unsigned nimage = 0;
    ImgUser *u;
    int ret = scan_fds(s, pid, &nimage, others);

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

        if (classify(s, pid, others->pdata[i], &use)) {
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

/* Every process but this one */
static void scan_processes(Scan *s, ImgUsers *users)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    pid_t self = getpid();

    if (!d) {
        return;
    }
    while ((de = readdir(d))) {
        ImgUser *u;
        bool denied;

        if (!g_ascii_isdigit(de->d_name[0]) || atol(de->d_name) == self) {
            continue;
        }
        u = inspect(s, de->d_name, &denied);
        if (u) {
            g_ptr_array_add(users->users, u);
        }
        users->uninspected += denied;
    }
    closedir(d);
}

int img_users_scan(pcow_image *img, ImgUsers *users)
{
    Scan s = { 0 };
    char num[16];
    int held;

    users->users = g_ptr_array_new_with_free_func(user_free);
    users->uninspected = 0;
    users->hidden = false;
    /*
     * Every libpcow open holds the image's lock (a clone's or overlay's
     * open holds its base's): none held, nobody running depends on it.
     */
    held = pcow_lock_held_elsewhere(img);
    if (held <= 0) {
        return held;
    }
    users->hidden = proc_hides_processes();
    s.mounts = g_hash_table_new_full(NULL, NULL, NULL, g_free);
    load_mounts(&s, "self");
    snprintf(num, sizeof(num), "%d", pcow_fd(img));
    if (fstat(pcow_fd(img), &s.st) < 0 || !fd_id(&s, "self", num, &s.id)) {
        g_hash_table_destroy(s.mounts);
        return -ENOENT;
    }
    scan_processes(&s, users);
    g_hash_table_destroy(s.mounts);
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
    /* Root is refused only by ptrace rules (another namespace's init...) */
    const char *why = geteuid() ? ": run as root" : " (no ptrace access)";

    if (users->users->len == 0) {
        if (n) {
            printf("in use by: none found, but %u process%s could not be "
                   "inspected%s\n", n, n == 1 ? "" : "es", why);
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
        printf("    %u more process%s could not be inspected%s\n",
               n, n == 1 ? "" : "es", why);
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
