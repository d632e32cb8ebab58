/*
 * pcow-img: offline management of pcow images (shared declarations)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_IMG_H
#define PCOW_IMG_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <glib.h>

#include "pcow/pcow.h"

/* Exit codes shared by all subcommands (check and compare have their own). */
#define EXIT_OK    0
#define EXIT_ERR   1

#ifndef DIV_ROUND_UP
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#endif

/* ---------------------------------------------------------------- errors */

/*
 * Print "pcow-img: FILE: MESSAGE" (or "pcow-img: MESSAGE" when @file is
 * NULL) as one line on stderr.
 */
void img_error(const char *file, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/*
 * Report a libpcow failure: its message, which names the file it is about
 * (plus pcow-img's advice for the error's kind), else "FILE: strerror".
 * The few libpcow messages that name no file (pcow_geometry_for,
 * pcow_measure, pcow_snapshot_name_check) go through img_error(FILE, ...).
 */
void img_pcow_error(const char *file, const pcow_error *err, int ret);
/* Warning: "pcow-img: warning: ..." on stderr. */
void img_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* ----------------------------------------------------------- formatting */

/*
 * Names from images are printed through libpcow's pcow_escape_text()
 * (control characters and bytes that are not UTF-8 as \xHH; --output=json
 * is the machine form).  Its result is malloc'd, so g_autofree frees it.
 */
/* "128 GiB", "1.5 MiB", "196 KiB"; the result must be g_free'd. */
char *img_size_to_str(uint64_t val);
/* "YYYY-MM-DD hh:mm:ss" (local time) into @buf of at least 20 bytes. */
void img_format_date(char *buf, size_t len, uint64_t sec);

/* Parse a size with pcow_parse_size; report errors naming @what. */
int img_parse_size(const char *file, const char *what, const char *s,
                   uint64_t *out);

/* --output=human|json of info, check and map; errors are reported */
int img_parse_output(const char *cmd, const char *arg, bool *json);
/* The snapshot table of info and "snapshot -l" */
void img_print_snapshot_table(const pcow_snapshot_info *sn, int n);

/* --------------------------------------------------------------- -o opts */

typedef struct ImgCreateOpts {
    uint32_t cluster_size;      /* 0: default */
    bool cluster_size_auto;
    uint32_t cow_unit;          /* 0: default */
    char *backing_file;
    char *backing_fmt;
    bool help;
} ImgCreateOpts;

/* Parse "cluster_size=64K,cow_unit=4K" (may be called repeatedly). */
int img_parse_create_opts(const char *file, const char *optstr,
                          ImgCreateOpts *o);
void img_create_opts_free(ImgCreateOpts *o);
void img_print_create_opts_help(void);

/* --------------------------------------------------------------- formats */

typedef enum ImgFormat {
    IMG_FMT_NONE = 0,
    IMG_FMT_PCOW,
    IMG_FMT_RAW,
} ImgFormat;

/* The base format libpcow stores for @fmt (NONE for IMG_FMT_NONE) */
pcow_backing_format img_backing_format(ImgFormat fmt);
/* "pcow" / "raw" -> format; IMG_FMT_NONE for anything else. */
ImgFormat img_format_parse(const char *name);
const char *img_format_name(ImgFormat fmt);
/* Parse -f/-F/-O arguments, reporting unknown names. */
int img_format_arg(const char *opt_name, const char *value, ImgFormat *out);

/*
 * A block device: either a pcow image or a raw file, accessed by byte
 * offsets.  Reads past the end of a raw file return zeros.
 */
typedef struct ImgBlk {
    char *filename;
    ImgFormat fmt;
    pcow_image *img;            /* pcow */
    int fd;                     /* raw */
    uint64_t size;
    bool writable;
} ImgBlk;

#define IMG_OPEN_RDWR        (1u << 0)
#define IMG_OPEN_FORCE_SHARE (1u << 1)
#define IMG_OPEN_NO_BACKING  (1u << 2)

/*
 * Open @path as @fmt (IMG_FMT_NONE: probe, pcow if it has pcow magic,
 * else raw).  Errors are reported; returns 0 or a negative errno.
 */
int img_blk_open(ImgBlk *b, const char *path, ImgFormat fmt, unsigned flags);
/*
 * Is @path the file of @b (*@itself set) or one of its bases?  Writing it
 * while @b is read would change what is read.
 */
bool img_blk_uses_file(ImgBlk *b, const char *path, bool *itself);
/* Close; errors are reported and returned. */
int img_blk_close(ImgBlk *b);
int img_blk_read(ImgBlk *b, uint64_t off, void *buf, uint64_t len);
int img_blk_write(ImgBlk *b, uint64_t off, const void *buf, uint64_t len);
/* Blocks compared by the copying commands (convert -B, rebase) */
#define IMG_BLOCK 4096u
/*
 * Write the IMG_BLOCK blocks of @data that differ from @ref (both @len
 * bytes at @off), runs of them with one call; *@written (if not NULL)
 * grows by the bytes written.
 */
int img_blk_write_changed(ImgBlk *b, uint64_t off, const uint8_t *data,
                          const uint8_t *ref, uint64_t len,
                          uint64_t *written);
/* Make the range read as zeros, deallocating where possible. */
int img_blk_zero(ImgBlk *b, uint64_t off, uint64_t len);
int img_blk_flush(ImgBlk *b);
/*
 * Is [off, off + *pnum) data or a hole?  *pnum receives the length of the
 * run (at most @max).  Returns 1 for data, 0 for a hole (reads as zeros,
 * nothing allocated), negative errno on error.
 */
int img_blk_status(ImgBlk *b, uint64_t off, uint64_t max, uint64_t *pnum);

/* Is the buffer all zeros? */
bool img_is_zero(const void *buf, size_t len);

/*
 * Check that @file exists and has pcow magic; errors are reported.
 * Returns 0 or a negative errno.
 */
int img_require_pcow(const char *file);


/* ------------------------------------------------------------------ json */

typedef struct ImgJson {
    GString *s;
    int depth;
    bool need_comma[32];
} ImgJson;

/*
 * Append @str as a quoted JSON string: controls (C0, DEL, C1) as \uXXXX
 * (or \n \t \r), each byte that is not UTF-8 as \ufffd, the rest as is.
 */
void json_escape(GString *s, const char *str);
void json_init(ImgJson *j);
/* Finish and print to stdout (with a trailing newline); frees the buffer. */
void json_print(ImgJson *j);
void json_begin_object(ImgJson *j, const char *key);
void json_end_object(ImgJson *j);
void json_begin_array(ImgJson *j, const char *key);
void json_end_array(ImgJson *j);
void json_str(ImgJson *j, const char *key, const char *val);
void json_u64(ImgJson *j, const char *key, uint64_t val);
void json_i64(ImgJson *j, const char *key, int64_t val);
void json_bool(ImgJson *j, const char *key, bool val);

/* ------------------------------------------------------- option parsing */

/*
 * Report an unknown option or a missing argument from getopt_long (called
 * on '?' or ':'), as one line.
 */
void img_bad_option(const char *cmd, char **argv, int c);
/* "pcow-img CMD: expecting N file names" style error; returns EXIT_ERR. */
int img_usage_error(const char *cmd, const char *msg);

/* ------------------------------------------------- who uses an image */

typedef enum ImgUseKind {
    IMG_USE_DIRECT,             /* the process opened the image itself */
    IMG_USE_OVERLAY,            /* through an overlay of its active layer */
    IMG_USE_CLONE,              /* through a clone of one of its snapshots */
} ImgUseKind;

typedef struct ImgUse {
    ImgUseKind kind;
    char *image;                /* the overlay or clone, NULL: directly */
    uint64_t snap_id;           /* a clone's snapshot */
    char snap_name[PCOW_MAX_SNAPSHOT_NAME + 1]; /* "": not in the image */
} ImgUse;

typedef struct ImgUser {
    pid_t pid;
    char *comm;                 /* /proc/PID/comm */
    GArray *uses;               /* ImgUse */
} ImgUser;

typedef struct ImgUsers {
    GPtrArray *users;           /* ImgUser, by pid */
    unsigned uninspected;       /* processes /proc would not show us */
    bool hidden;                /* /proc hides other users' (hidepid) */
} ImgUsers;

/*
 * The processes (other than this one) that have the image at @path open
 * now, from /proc/PID/fd, and through which of their images.  0, or a
 * negative errno when @path or /proc cannot be read; free with
 * img_users_free() either way.
 */
int img_users_scan(pcow_image *img, ImgUsers *users);
void img_users_free(ImgUsers *users);
/* info's "in use by" block (nothing when no process uses the image) */
void img_users_human(const ImgUsers *users);
/* JSON "in-use-by" (an array), "in-use-uninspected", "in-use-hidden" */
void img_users_json(ImgJson *j, const ImgUsers *users);

/* --------------------------------------------------------- subcommands */

int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_check(int argc, char **argv);
int img_snapshot(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_clone(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_compact(int argc, char **argv);
int img_map(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_compare(int argc, char **argv);

#endif /* PCOW_IMG_H */
