/*
 * pcow-io-helper: write, verify and lock pcow images for the CLI tests
 *
 *   pcow-io-helper write  FILE OFFSET LENGTH BYTE   fill a range with BYTE
 *   pcow-io-helper verify FILE OFFSET LENGTH BYTE   check a range is BYTE
 *   pcow-io-helper hold   FILE [ro]                 keep the image open
 *                                                   (read-write by default)
 *                                                   until SIGTERM/SIGINT
 *   pcow-io-helper leak   FILE COUNT                reserve COUNT clusters
 *                                                   and exit without closing
 *                                                   (a crash: leaks, dirty)
 *   pcow-io-helper shrink-kill FILE SIZE            resize --shrink to SIZE
 *                                                   and raise SIGKILL right
 *                                                   after its header commit
 *   pcow-io-helper snapshot-any FILE NAME            create snapshot NAME
 *                                                   without the rule for new
 *                                                   names (an image made
 *                                                   elsewhere)
 *   pcow-io-helper snapshot-vm FILE NAME SIZE NSEC   create snapshot NAME
 *                                                   with SIZE bytes of VM
 *                                                   state (bytes 1, 2, ..)
 *                                                   and VM clock NSEC, as
 *                                                   QEMU's savevm does
 *
 * OFFSET and LENGTH take K/M/G suffixes; BYTE is 0..255 (0x.. allowed).
 * Exit status 0 on success, 1 on a mismatch or any error (one line on
 * stderr).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcow/pcow.h"
#include "pcow-int.h"

#define CHUNK (1u << 20)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    stop = 1;
}

static int parse_byte(const char *s, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *end || end == s || v > 255) {
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int open_image(const char *file, unsigned flags, pcow_image **img)
{
    pcow_open_opts oo = { .flags = flags };
    pcow_error err = { 0 };
    int ret = pcow_open(file, &oo, img, &err);

    if (ret < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n",
                err.msg[0] ? err.msg : strerror(-ret));
    }
    return ret;
}

static int close_image(pcow_image *img)
{
    pcow_error err = { 0 };
    int ret = pcow_close(img, &err);

    if (ret < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n",
                err.msg[0] ? err.msg : strerror(-ret));
    }
    return ret;
}

static int do_rw(bool write, const char *file, uint64_t off, uint64_t len,
                 unsigned byte)
{
    pcow_image *img;
    pcow_error err = { 0 };
    unsigned char *buf = malloc(CHUNK);
    int status = 0;

    if (!buf) {
        return 1;
    }
    if (open_image(file, write ? PCOW_OPEN_RDWR : 0, &img) < 0) {
        free(buf);
        return 1;
    }
    if (write) {
        memset(buf, byte, CHUNK);
    }
    while (len > 0 && status == 0) {
        uint64_t n = len < CHUNK ? len : CHUNK;
        int64_t ret;

        if (write) {
            ret = pcow_pwrite(img, off, buf, n, &err);
        } else {
            ret = pcow_pread(img, off, buf, n, &err);
        }
        if (ret < 0 || (uint64_t)ret != n) {
            fprintf(stderr, "pcow-io-helper: %s\n",
                    err.msg[0] ? err.msg : "short transfer");
            status = 1;
            break;
        }
        if (!write) {
            for (uint64_t i = 0; i < n; i++) {
                if (buf[i] != byte) {
                    fprintf(stderr, "pcow-io-helper: %s: offset %llu holds "
                            "0x%02x, expected 0x%02x\n", file,
                            (unsigned long long)(off + i), buf[i], byte);
                    status = 1;
                    break;
                }
            }
        }
        off += n;
        len -= n;
    }
    if (close_image(img) < 0) {
        status = 1;
    }
    free(buf);
    return status;
}

static int do_hold(const char *file, bool rw)
{
    struct sigaction sa = { .sa_handler = on_signal };
    pcow_image *img;
    sigset_t set, old;

    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, &old);

    if (open_image(file, rw ? PCOW_OPEN_RDWR : 0, &img) < 0) {
        return 1;
    }
    printf("holding %s\n", file);
    fflush(stdout);
    while (!stop) {
        sigsuspend(&old);
    }
    return close_image(img) < 0 ? 1 : 0;
}

static int do_leak(const char *file, const char *count_str)
{
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t count;
    uint32_t got;

    if (pcow_parse_size(count_str, &count) < 0 || count == 0 ||
        count > 1024) {
        fprintf(stderr, "pcow-io-helper: bad cluster count '%s'\n",
                count_str);
        return 1;
    }
    if (open_image(file, PCOW_OPEN_RDWR, &img) < 0) {
        return 1;
    }
    got = pcow_reserve_clusters(img, (uint32_t)count, &err);
    if (got < count) {
        fprintf(stderr, "pcow-io-helper: reserved only %u clusters: %s\n",
                got, err.msg);
        return 1;
    }
    /* Simulate a crash: no pcow_close(), the reserve is never used. */
    _exit(0);
}

/*
 * Persistence hook of shrink-kill: the header commit is a whole-slot write
 * then its persist (a SYNC of page 0, or a BARRIER); die by SIGKILL before
 * the next change reaches the file.
 */
typedef struct KillAfterCommit {
    int stage;              /* 0 waiting, 1 slot written, 2 committed */
} KillAfterCommit;

static void kill_after_commit(void *opaque, pcow_persist_op op,
                              uint64_t off, const void *data, uint64_t len)
{
    KillAfterCommit *k = opaque;

    (void)data;
    if (k->stage == 2) {
        raise(SIGKILL);
    }
    if (op == PCOW_OP_WRITE && (off == 0 || off == 1536) && len == 1536) {
        k->stage = 1;
    } else if ((op == PCOW_OP_BARRIER || op == PCOW_OP_SYNC) &&
               k->stage == 1) {
        k->stage = 2;
    }
}

static int do_shrink_kill(const char *file, const char *size_str)
{
    KillAfterCommit k = { 0 };
    pcow_open_opts oo = {
        .flags = PCOW_OPEN_RDWR, .hook = kill_after_commit, .hook_opaque = &k,
    };
    pcow_error err = { 0 };
    pcow_image *img;
    uint64_t size;

    if (pcow_parse_size(size_str, &size) < 0) {
        fprintf(stderr, "pcow-io-helper: bad size '%s'\n", size_str);
        return 1;
    }
    if (pcow_open(file, &oo, &img, &err) < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n", err.msg);
        return 1;
    }
    if (pcow_resize(img, size, true, &err) < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "pcow-io-helper: the shrink finished without a header "
            "commit\n");
    return 1;
}

static int do_snapshot_any(const char *file, const char *name)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_error err = { 0 };
    pcow_image *img = NULL;
    int ret;

    if (pcow_open(file, &oo, &img, &err) < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n", err.msg);
        return 1;
    }
    ret = pcow_snapshot_create_any_name(img, name, NULL, &err);
    if (ret < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n", err.msg);
    }
    return pcow_close(img, NULL) < 0 || ret < 0;
}

static int do_snapshot_vm(const char *file, const char *name,
                          const char *size_str, const char *clock_str)
{
    pcow_open_opts oo = { .flags = PCOW_OPEN_RDWR };
    pcow_vm_state vm = { 0 };
    pcow_error err = { 0 };
    pcow_image *img = NULL;
    uint8_t *buf;
    uint64_t i;
    int ret;

    if (pcow_parse_size(size_str, &vm.size) < 0 ||
        pcow_parse_size(clock_str, &vm.vm_clock_nsec) < 0) {
        fprintf(stderr, "pcow-io-helper: bad size or clock\n");
        return 1;
    }
    buf = malloc(vm.size ? vm.size : 1);
    if (!buf) {
        fprintf(stderr, "pcow-io-helper: out of memory\n");
        return 1;
    }
    for (i = 0; i < vm.size; i++) {
        buf[i] = i + 1;
    }
    vm.data = buf;
    if (pcow_open(file, &oo, &img, &err) < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n", err.msg);
        free(buf);
        return 1;
    }
    ret = pcow_snapshot_create_vm(img, name, &vm, NULL, &err);
    if (ret < 0) {
        fprintf(stderr, "pcow-io-helper: %s\n", err.msg);
    }
    free(buf);
    return pcow_close(img, NULL) < 0 || ret < 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: pcow-io-helper write|verify FILE OFFSET LENGTH "
            "BYTE\n       pcow-io-helper hold FILE [ro]\n"
            "       pcow-io-helper leak FILE COUNT\n"
            "       pcow-io-helper shrink-kill FILE SIZE\n"
            "       pcow-io-helper snapshot-any FILE NAME\n"
            "       pcow-io-helper snapshot-vm FILE NAME SIZE NSEC\n");
}

int main(int argc, char **argv)
{
    uint64_t off, len;
    unsigned byte;

    if (argc >= 3 && strcmp(argv[1], "hold") == 0) {
        return do_hold(argv[2], !(argc > 3 && strcmp(argv[3], "ro") == 0));
    }
    if (argc == 4 && strcmp(argv[1], "leak") == 0) {
        return do_leak(argv[2], argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "snapshot-any") == 0) {
        return do_snapshot_any(argv[2], argv[3]);
    }
    if (argc == 6 && strcmp(argv[1], "snapshot-vm") == 0) {
        return do_snapshot_vm(argv[2], argv[3], argv[4], argv[5]);
    }
    if (argc == 4 && strcmp(argv[1], "shrink-kill") == 0) {
        return do_shrink_kill(argv[2], argv[3]);
    }
    if (argc != 6 || (strcmp(argv[1], "write") && strcmp(argv[1], "verify"))) {
        usage();
        return 1;
    }
    if (pcow_parse_size(argv[3], &off) < 0 ||
        pcow_parse_size(argv[4], &len) < 0 || parse_byte(argv[5], &byte)) {
        usage();
        return 1;
    }
    return do_rw(strcmp(argv[1], "write") == 0, argv[2], off, len, byte);
}
