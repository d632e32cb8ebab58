/*
 * libpcow: size parsing, error formatting, small helpers
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "pcow-int.h"

pcow_error_kind pcow_error_kind_of(int code)
{
    switch (-code) {
    case 0:
        return PCOW_ERR_NONE;
    case EINVAL: case EISDIR: case ENAMETOOLONG: case ERANGE:
        return PCOW_ERR_INVALID;
    case EBUSY:
        return PCOW_ERR_IN_USE;
    case EBADMSG: case EUCLEAN:
        return PCOW_ERR_CORRUPT;
    case ENOTSUP:
        return PCOW_ERR_UNSUPPORTED;
    case ENOENT:
        return PCOW_ERR_NOT_FOUND;
    case EEXIST:
        return PCOW_ERR_EXISTS;
    case ENOSPC: case EDQUOT:
        return PCOW_ERR_NO_SPACE;
    case EROFS:
        return PCOW_ERR_READ_ONLY;
    case ELOOP:
        return PCOW_ERR_LOOP;
    case EFBIG: case EOVERFLOW:
        return PCOW_ERR_LIMIT;
    case ENOMEM:
        return PCOW_ERR_NO_MEMORY;
    case ESTALE:
        return PCOW_ERR_STALE;
    default:
        return PCOW_ERR_IO;
    }
}

/* The text first: an argument may be @err->msg itself */
static int set_error_v(pcow_error *err, int code, const char *file,
                       const char *op, const char *fmt, va_list ap)
{
    const unsigned last = sizeof(err->msg) - 1;
    char text[sizeof(err->msg)];
    unsigned n;

    vsnprintf(text, sizeof(text), fmt, ap);
    err->code = code;
    err->kind = pcow_error_kind_of(code);
    n = file ? snprintf(err->msg, sizeof(err->msg), "%s: ", file) : 0;
    err->what = n < last ? n : last;
    n = op ? snprintf(err->msg + err->what, sizeof(err->msg) - err->what,
                      "%s: ", op) : 0;
    err->why = err->what + n < last ? err->what + n : last;
    snprintf(err->msg + err->why, sizeof(err->msg) - err->why, "%s", text);
    return code;
}

int pcow_set_error(pcow_error *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err) {
        va_start(ap, fmt);
        set_error_v(err, code, NULL, NULL, fmt, ap);
        va_end(ap);
    }
    return code;
}

int pcow_set_file_error(pcow_error *err, int code, const char *file,
                        const char *fmt, ...)
{
    va_list ap;

    if (err) {
        va_start(ap, fmt);
        set_error_v(err, code, file, NULL, fmt, ap);
        va_end(ap);
    }
    return code;
}

void pcow_error_clear(pcow_error *err)
{
    if (err) {
        err->code = 0;
        err->kind = PCOW_ERR_NONE;
        err->what = err->why = 0;
        err->msg[0] = '\0';
    }
}

int pcow_error_mark(pcow_error *err, pcow_error_kind kind, int ret)
{
    if (err && ret < 0) {
        err->kind = kind;
    }
    return ret;
}

/* "@img's name: [@op: ]TEXT"; a base (depth > 0) is not the image the
 * caller gave: what and why stay 0 */
static int img_error_v(pcow_image *img, pcow_error *err, int code,
                       const char *op, const char *fmt, va_list ap)
{
    if (err) {
        set_error_v(err, code, img->filename, op, fmt, ap);
        if (img->depth > 0) {
            pcow_error_other_file(err, code);
        }
    }
    return code;
}

int pcow_img_error(pcow_image *img, pcow_error *err, int code,
                   const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    img_error_v(img, err, code, NULL, fmt, ap);
    va_end(ap);
    return code;
}

int pcow_error_as_step(pcow_error *err, int ret)
{
    if (err && ret < 0) {
        err->why = err->what;
    }
    return ret;
}

/* Same, "FILE: @op: CAUSE" with why past @op */
int pcow_img_op_error(pcow_image *img, pcow_error *err, int code,
                      const char *op, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    img_error_v(img, err, code, op, fmt, ap);
    va_end(ap);
    return code;
}

void pcow_problem(PcowProblems *pr, int code, const char *fmt, ...)
{
    va_list ap;

    if (pr->count++ == 0) {
        pr->first_code = code;
        va_start(ap, fmt);
        vsnprintf(pr->first, sizeof(pr->first), fmt, ap);
        va_end(ap);
    }
}

static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode)) {
        return "a directory";
    }
    if (S_ISFIFO(mode)) {
        return "a FIFO";
    }
    if (S_ISSOCK(mode)) {
        return "a socket";
    }
    if (S_ISCHR(mode)) {
        return "a character device";
    }
    if (S_ISBLK(mode)) {
        return "a block device";
    }
    return "a special file";
}

static bool kind_ok(const struct stat *st, bool blk_ok, char *why,
                    size_t whylen)
{
    if (S_ISREG(st->st_mode) || (blk_ok && S_ISBLK(st->st_mode))) {
        return true;
    }
    snprintf(why, whylen, "%s, not a regular file%s",
             file_kind(st->st_mode), blk_ok ? " or block device" : "");
    return false;
}

int pcow_open_data(const char *path, int oflags, bool blk_ok,
                   struct stat *st, uint64_t *size, char *why,
                   size_t whylen)
{
    int fd, fl, e;

    /*
     * Look before opening: open(2) of a FIFO waits for a writer forever,
     * and opening some character devices has side effects.
     */
    if (stat(path, st) < 0) {
        e = errno;
        snprintf(why, whylen, "%s", strerror(e));
        return -e;
    }
    if (!kind_ok(st, blk_ok, why, whylen)) {
        return S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
    }
    /* O_NONBLOCK: the file may have been replaced since the stat */
    fd = open(path, oflags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        e = errno;
        snprintf(why, whylen, "%s", strerror(e));
        return -e;
    }
    if (fstat(fd, st) < 0) {
        goto fail_errno;
    }
    if (!kind_ok(st, blk_ok, why, whylen)) {
        close(fd);
        return S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        goto fail_errno;
    }
    *size = st->st_size;
    if (S_ISBLK(st->st_mode)) {
        /* st_size is 0 for a block device: ask the device */
        if (ioctl(fd, BLKGETSIZE64, size) < 0) {
            off_t end = lseek(fd, 0, SEEK_END);

            if (end < 0) {
                goto fail_errno;
            }
            *size = end;
        }
    }
    return fd;

fail_errno:
    e = errno;
    snprintf(why, whylen, "%s", strerror(e));
    close(fd);
    return -e;
}

int pcow_open_data_file(const char *path, int oflags, bool allow_blockdev,
                        uint64_t *size, pcow_error *err)
{
    struct stat st;
    char why[256];
    int fd;

    if (!path || !size || (oflags & O_ACCMODE) == O_WRONLY ||
        (oflags & ~(O_ACCMODE | O_CLOEXEC))) {
        return pcow_set_error(err, -EINVAL, "invalid arguments");
    }
    fd = pcow_open_data(path, oflags & O_ACCMODE, allow_blockdev, &st, size,
                        why, sizeof(why));
    if (fd < 0) {
        return pcow_set_file_error(err, fd, path, "cannot open: %s", why);
    }
    return fd;
}

uint64_t pcow_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int pcow_parse_size(const char *s, uint64_t *out)
{
    const char *p = s;
    uint64_t v = 0;
    unsigned shift = 0;
    bool digits = false;

    if (!s) {
        return -EINVAL;
    }
    while (isspace((unsigned char)*p)) {
        p++;
    }
    while (isdigit((unsigned char)*p)) {
        unsigned d = *p - '0';

        if (v > (UINT64_MAX - d) / 10) {
            return -EINVAL;
        }
        v = v * 10 + d;
        digits = true;
        p++;
    }
    if (!digits) {
        return -EINVAL;
    }
    switch (*p) {
    case 'b': case 'B':
        shift = 0;
        p++;
        break;
    case 'k': case 'K':
        shift = 10;
        p++;
        break;
    case 'm': case 'M':
        shift = 20;
        p++;
        break;
    case 'g': case 'G':
        shift = 30;
        p++;
        break;
    case 't': case 'T':
        shift = 40;
        p++;
        break;
    case 'p': case 'P':
        shift = 50;
        p++;
        break;
    case 'e': case 'E':
        shift = 60;
        p++;
        break;
    default:
        break;
    }
    /* Accept "64KiB"/"64KB" as well as "64K" */
    if (shift && (*p == 'i' || *p == 'I') && (p[1] == 'b' || p[1] == 'B')) {
        p += 2;
    } else if (shift && (*p == 'b' || *p == 'B')) {
        p++;
    }
    if (*p != '\0') {
        return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift)) {
        return -EINVAL;
    }
    *out = v << shift;
    return 0;
}

/*
 * The image lock: 0 free, 1 held, 2 held with (maybe) waiters.  The holder
 * may be in msync/fdatasync for milliseconds (a copy-on-write made durable
 * under the lock), so after a short spin a waiter sleeps in FUTEX_WAIT and
 * is woken by the unlock: not sched_yield (it kept a whole CPU busy), not
 * a nanosleep backoff (each sleep is rounded up to the timer slack; see
 * docs/benchmarks.rst, "Floors").  Raw futex system calls:
 * async-signal-safe.
 */
static void lock_futex(uint32_t *word, int op, uint32_t val)
{
    syscall(SYS_futex, word, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

void pcow_lock(pcow_image *img)
{
    uint32_t c = 0;
    unsigned spins;

    for (spins = 0; spins < 1000; spins++) {
        c = __atomic_load_n(&img->lock, __ATOMIC_RELAXED);
        if (c == 0 &&
            __atomic_compare_exchange_n(&img->lock, &c, 1, false,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            return;
        }
        if (c == 2) {
            break;              /* others sleep already: join them */
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    /* Mark it contended; whoever releases it then wakes one sleeper */
    while (__atomic_exchange_n(&img->lock, 2, __ATOMIC_ACQUIRE) != 0) {
        lock_futex(&img->lock, FUTEX_WAIT, 2);
    }
}

void pcow_unlock(pcow_image *img)
{
    if (__atomic_exchange_n(&img->lock, 0, __ATOMIC_RELEASE) == 2) {
        lock_futex(&img->lock, FUTEX_WAKE, 1);
    }
}

/*
 * In-use tokens and state stamps: random where the kernel offers it (a
 * stamp must change with every writer session, in any process on any
 * host sharing the storage), else time and pid mixed.  Never 0.
 */
uint64_t pcow_new_token(void)
{
    struct timespec ts;
    uint64_t t = 0;

    if (getrandom(&t, sizeof(t), GRND_NONBLOCK) != sizeof(t)) {
        clock_gettime(CLOCK_REALTIME, &ts);
        t = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^
            ((uint64_t)ts.tv_sec << 20);
    }
    return t | 1;
}

/* Writes refused: a read-only or a released (handed over) image */
int pcow_writable(pcow_image *img)
{
    if (img->read_only) {
        return -EROFS;
    }
    return __atomic_load_n(&img->released, __ATOMIC_ACQUIRE) ? -EBADF : 0;
}

int pcow_write_check(pcow_image *img, pcow_error *err)
{
    int ret = pcow_writable(img);

    if (ret == -EROFS) {
        return pcow_img_error(img, err, ret, "image is read-only");
    }
    if (ret < 0) {
        /* Like a read-only handle until it is taken back */
        pcow_img_error(img, err, ret, "image was handed over to another "
                       "process (released): nothing is written until it "
                       "is taken back");
        return pcow_error_mark(err, PCOW_ERR_READ_ONLY, ret);
    }
    return 0;
}
