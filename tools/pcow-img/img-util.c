/*
 * pcow-img: errors, formatting, -o options, JSON output
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pcow-img.h"

/* ---------------------------------------------------------------- errors */

/* Names in messages come from images: keep every message one safe line */
static void print_escaped_line(const char *prefix, const char *file,
                               const char *fmt, va_list ap)
{
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    g_autofree char *emsg = pcow_escape_text(msg);
    g_autofree char *efile = file ? pcow_escape_text(file) : NULL;

    fflush(stdout);
    if (!emsg || (file && !efile)) {
        fprintf(stderr, "pcow-img: out of memory\n");
    } else if (file) {
        fprintf(stderr, "pcow-img: %s%s: %s\n", prefix, efile, emsg);
    } else {
        fprintf(stderr, "pcow-img: %s%s\n", prefix, emsg);
    }
}

void img_error(const char *file, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    print_escaped_line("", file, fmt, ap);
    va_end(ap);
}

void img_warn(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    print_escaped_line("warning: ", NULL, fmt, ap);
    va_end(ap);
}

void img_pcow_error(const char *file, const pcow_error *err, int ret)
{
    const char *hint;

    if (!err || !err->msg[0]) {
        img_error(file, "%s", strerror(ret < 0 ? -ret : EIO));
        return;
    }
    /* Locked, most likely by the QEMU that runs a guest on it. */
    hint = err->kind == PCOW_ERR_IN_USE ?
           " (use -U to inspect it read-only); for a running VM use QMP "
           "pcow-snapshot-create, pcow-snapshot-delete or query-pcow" :
           err->kind == PCOW_ERR_HAS_CLONES ?
           " (snapshot --force -d deletes it all the same)" : "";
    /* libpcow's message names its file; img_error escapes line breaks */
    img_error(NULL, "%s%s", err->msg, hint);
}

/* ----------------------------------------------------------- formatting */

/* Next character of @p (@rest bytes): its length, 0 if @p is not UTF-8 */
static int utf8_char(const char *p, size_t rest, gunichar *c)
{
    *c = g_utf8_get_char_validated(p, rest);
    if (*c == (gunichar)-1 || *c == (gunichar)-2) {
        return 0;
    }
    return g_unichar_to_utf8(*c, NULL);
}

/* C0 controls, DEL and C1 controls (as pcow_escape_text() escapes them) */
static bool is_control(gunichar c)
{
    return c < 0x20 || (c >= 0x7f && c < 0xa0);
}

char *img_size_to_str(uint64_t val)
{
    static const char *const suffixes[] = {
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    };
    int i = 0;

    /* Switch to the next unit once the integer part reaches 1000. */
    while (i < 6 && (double)val >= 1000.0 * (double)(1ULL << (10 * i))) {
        i++;
    }
    return g_strdup_printf("%0.3g %sB",
                           (double)val / (double)(1ULL << (10 * i)),
                           suffixes[i]);
}

void img_format_date(char *buf, size_t len, uint64_t sec)
{
    time_t t = (time_t)sec;
    struct tm tm;

    if (!localtime_r(&t, &tm)) {
        g_strlcpy(buf, "?", len);
        return;
    }
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

void img_print_snapshot_table(const pcow_snapshot_info *sn, int n)
{
    printf("%-9s %-16s %8s%20s%16s%8s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (int i = 0; i < n; i++) {
        g_autofree char *name = pcow_escape_text(sn[i].name);
        g_autofree char *vmsize = img_size_to_str(sn[i].vm_state_size);
        uint64_t secs = sn[i].vm_clock_nsec / 1000000000;
        char date[32], id[24], clock[32];

        img_format_date(date, sizeof(date), sn[i].date_sec);
        snprintf(id, sizeof(id), "%" PRIu64, sn[i].id);
        /* As qemu-img: hours:minutes:seconds.milliseconds of the VM clock */
        snprintf(clock, sizeof(clock), "%04" PRIu64 ":%02u:%02u.%03u",
                 secs / 3600, (unsigned)(secs / 60 % 60),
                 (unsigned)(secs % 60),
                 (unsigned)(sn[i].vm_clock_nsec / 1000000 % 1000));
        printf("%-9s %-16s %8s%20s%16s%8s\n", id, name, vmsize, date,
               clock, "--");
    }
}

int img_parse_size(const char *file, const char *what, const char *s,
                   uint64_t *out)
{
    if (!s || !*s || pcow_parse_size(s, out) < 0) {
        img_error(file, "invalid %s '%s' (expected a number with an "
                  "optional K, M, G or T suffix)", what, s ? s : "");
        return -EINVAL;
    }
    return 0;
}

int img_parse_output(const char *cmd, const char *arg, bool *json)
{
    if (strcmp(arg, "json") == 0) {
        *json = true;
    } else if (strcmp(arg, "human") == 0) {
        *json = false;
    } else {
        img_error(NULL, "%s: --output must be 'human' or 'json', not '%s'",
                  cmd, arg);
        return -EINVAL;
    }
    return 0;
}

/* --------------------------------------------------------------- -o opts */

void img_print_create_opts_help(void)
{
    printf("Supported options (-o):\n"
           "  backing_file=<file>   name of the base image\n"
           "  backing_fmt=<fmt>     format of the base image (pcow or raw)\n"
           "  cluster_size=<size>   4K .. 2M, power of two (default 64K),\n"
           "                        or 'auto' to follow the storage's "
           "alignment\n"
           "  cow_unit=<size>       copy-on-write granularity (default 4K)\n");
}

static int parse_u32_size(const char *file, const char *what, const char *v,
                          uint32_t *out)
{
    uint64_t n;

    if (img_parse_size(file, what, v, &n) < 0) {
        return -EINVAL;
    }
    if (n == 0 || n > UINT32_MAX) {
        img_error(file, "invalid %s '%s'", what, v);
        return -EINVAL;
    }
    *out = (uint32_t)n;
    return 0;
}

int img_parse_create_opts(const char *file, const char *optstr,
                          ImgCreateOpts *o)
{
    g_auto(GStrv) items = g_strsplit(optstr, ",", -1);

    for (int i = 0; items[i]; i++) {
        char *item = items[i];
        char *eq = strchr(item, '=');
        const char *val;

        if (!*item) {
            continue;
        }
        if (strcmp(item, "help") == 0 || strcmp(item, "?") == 0) {
            o->help = true;
            continue;
        }
        if (!eq) {
            img_error(file, "invalid option '%s' in -o (expected key=value)",
                      item);
            return -EINVAL;
        }
        *eq = '\0';
        val = eq + 1;
        if (strcmp(item, "cluster_size") == 0) {
            if (strcmp(val, "auto") == 0) {
                o->cluster_size_auto = true;
                o->cluster_size = 0;
            } else {
                o->cluster_size_auto = false;
                if (parse_u32_size(file, "cluster size", val,
                                   &o->cluster_size) < 0) {
                    return -EINVAL;
                }
            }
        } else if (strcmp(item, "cow_unit") == 0) {
            if (parse_u32_size(file, "COW unit", val, &o->cow_unit) < 0) {
                return -EINVAL;
            }
        } else if (strcmp(item, "backing_file") == 0) {
            g_free(o->backing_file);
            o->backing_file = g_strdup(val);
        } else if (strcmp(item, "backing_fmt") == 0) {
            g_free(o->backing_fmt);
            o->backing_fmt = g_strdup(val);
        } else {
            img_error(file, "unknown option '%s' in -o (try -o help)", item);
            return -EINVAL;
        }
    }
    return 0;
}

void img_create_opts_free(ImgCreateOpts *o)
{
    g_free(o->backing_file);
    g_free(o->backing_fmt);
    memset(o, 0, sizeof(*o));
}

/* --------------------------------------------------------------- formats */

ImgFormat img_format_parse(const char *name)
{
    if (strcmp(name, "pcow") == 0) {
        return IMG_FMT_PCOW;
    }
    if (strcmp(name, "raw") == 0) {
        return IMG_FMT_RAW;
    }
    return IMG_FMT_NONE;
}

pcow_backing_format img_backing_format(ImgFormat fmt)
{
    switch (fmt) {
    case IMG_FMT_PCOW:
        return PCOW_BACKING_PCOW;
    case IMG_FMT_RAW:
        return PCOW_BACKING_RAW;
    default:
        return PCOW_BACKING_NONE;
    }
}

const char *img_format_name(ImgFormat fmt)
{
    switch (fmt) {
    case IMG_FMT_PCOW:
        return "pcow";
    case IMG_FMT_RAW:
        return "raw";
    default:
        return "none";
    }
}

int img_format_arg(const char *opt_name, const char *value, ImgFormat *out)
{
    ImgFormat f = img_format_parse(value);

    if (f == IMG_FMT_NONE) {
        img_error(NULL, "unknown format '%s' for %s (supported: pcow, raw)",
                  value, opt_name);
        return -EINVAL;
    }
    *out = f;
    return 0;
}

int img_require_pcow(const char *file)
{
    pcow_error err = { 0 };
    uint64_t size;
    int fd;

    /* What it is first: a FIFO or a directory is not "bad magic" */
    fd = pcow_open_data_file(file, O_RDONLY, false, &size, &err);
    if (fd < 0) {
        img_pcow_error(file, &err, fd);
        return fd;
    }
    close(fd);
    if (!pcow_probe(file)) {
        img_error(file, "not a pcow image (bad magic)");
        return -EINVAL;
    }
    return 0;
}

bool img_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    const uint64_t *q;
    size_t i = 0;

    /* Byte by byte up to an 8-byte boundary, then words. */
    while (i < len && ((uintptr_t)(p + i) & 7)) {
        if (p[i++]) {
            return false;
        }
    }
    q = (const uint64_t *)(p + i);
    for (; i + 32 <= len; i += 32, q += 4) {
        if (q[0] | q[1] | q[2] | q[3]) {
            return false;
        }
    }
    for (; i < len; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------ json */

void json_init(ImgJson *j)
{
    memset(j, 0, sizeof(*j));
    j->s = g_string_new(NULL);
}

void json_print(ImgJson *j)
{
    fputs(j->s->str, stdout);
    fputc('\n', stdout);
    g_string_free(j->s, TRUE);
    j->s = NULL;
}

void json_escape(GString *s, const char *str)
{
    size_t rest = strlen(str);
    const char *p = str;

    g_string_append_c(s, '"');
    while (rest) {
        gunichar c;
        int n = utf8_char(p, rest, &c);

        if (n == 0) {
            /* Not UTF-8: JSON cannot carry the byte; U+FFFD stands for it */
            g_string_append(s, "\\ufffd");
            n = 1;
        } else if (c == '"' || c == '\\') {
            g_string_append_c(s, '\\');
            g_string_append_c(s, c);
        } else if (c == '\n') {
            g_string_append(s, "\\n");
        } else if (c == '\t') {
            g_string_append(s, "\\t");
        } else if (c == '\r') {
            g_string_append(s, "\\r");
        } else if (is_control(c)) {
            g_string_append_printf(s, "\\u%04x", c);
        } else {
            g_string_append_len(s, p, n);
        }
        p += n;
        rest -= n;
    }
    g_string_append_c(s, '"');
}

/* Comma, newline, indentation and "key": before a value. */
static void json_member(ImgJson *j, const char *key)
{
    if (j->depth > 0) {
        if (j->need_comma[j->depth]) {
            g_string_append_c(j->s, ',');
        }
        g_string_append_c(j->s, '\n');
        for (int i = 0; i < j->depth; i++) {
            g_string_append(j->s, "    ");
        }
    }
    if (key) {
        json_escape(j->s, key);
        g_string_append(j->s, ": ");
    }
    j->need_comma[j->depth] = true;
}

static void json_open(ImgJson *j, const char *key, char c)
{
    json_member(j, key);
    g_string_append_c(j->s, c);
    g_assert(j->depth + 1 < (int)G_N_ELEMENTS(j->need_comma));
    j->depth++;
    j->need_comma[j->depth] = false;
}

static void json_close(ImgJson *j, char c)
{
    bool had_members = j->need_comma[j->depth];

    j->depth--;
    if (had_members) {
        g_string_append_c(j->s, '\n');
        for (int i = 0; i < j->depth; i++) {
            g_string_append(j->s, "    ");
        }
    }
    g_string_append_c(j->s, c);
}

void json_begin_object(ImgJson *j, const char *key)
{
    json_open(j, key, '{');
}

void json_end_object(ImgJson *j)
{
    json_close(j, '}');
}

void json_begin_array(ImgJson *j, const char *key)
{
    json_open(j, key, '[');
}

void json_end_array(ImgJson *j)
{
    json_close(j, ']');
}

void json_str(ImgJson *j, const char *key, const char *val)
{
    json_member(j, key);
    json_escape(j->s, val);
}

void json_u64(ImgJson *j, const char *key, uint64_t val)
{
    json_member(j, key);
    g_string_append_printf(j->s, "%" G_GUINT64_FORMAT, val);
}

void json_i64(ImgJson *j, const char *key, int64_t val)
{
    json_member(j, key);
    g_string_append_printf(j->s, "%" G_GINT64_FORMAT, val);
}

void json_bool(ImgJson *j, const char *key, bool val)
{
    json_member(j, key);
    g_string_append(j->s, val ? "true" : "false");
}

/* ------------------------------------------------------- option parsing */

void img_bad_option(const char *cmd, char **argv, int c)
{
    const char *arg = argv[optind - 1];

    if (c == ':') {
        img_error(NULL, "%s: option '%s' requires an argument (try "
                  "'pcow-img %s --help')", cmd, arg, cmd);
    } else if (optopt && !(arg[0] == '-' && arg[1] == '-')) {
        img_error(NULL, "%s: unknown option '-%c' (try 'pcow-img %s "
                  "--help')", cmd, optopt, cmd);
    } else {
        img_error(NULL, "%s: unknown option '%s' (try 'pcow-img %s "
                  "--help')", cmd, arg, cmd);
    }
}

int img_usage_error(const char *cmd, const char *msg)
{
    img_error(NULL, "%s: %s (try 'pcow-img %s --help')", cmd, msg, cmd);
    return EXIT_ERR;
}
