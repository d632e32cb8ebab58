/*
 * Corpus replay (suite crash): runs the fuzz target's entry point
 * (fuzz-entry.h: pcow_open + pcow_check + pcow_get_extent over the range +
 * pcow_close, and recovery) on every file of the seed corpus and on
 * deterministic mutations of each: bit flips, random bytes, table words set
 * to interesting values, truncations.  A crash, a sanitizer report or a
 * broken error contract fails the test.
 *
 * Usage: fuzz-replay CORPUS_DIR [MUTATIONS_PER_FILE]
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz-entry.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const uint64_t interesting[] = {
    0, 1, 2, 3, 5, 7, 0x1000, 0x1001, 0x1003, 0x2000, 0x2003, 0x3000,
    0x3007, 0x4000, 0x4003, 0x8000, 0x10000, 0x100000, 0xc00, 0xfff,
    0x7fffffffffffffffull, 0xffffffffffffffffull, 1ull << 56, 1ull << 50,
    (1ull << 50) + 4096, 0xffffffffull, 0x100000000ull, 4096ull << 22,
};

static size_t mutate(uint8_t *d, size_t size, size_t cap)
{
    int edits = 1 + rnd() % 4, k;

    for (k = 0; k < edits && size; k++) {
        /* Half of the edits hit cluster 0: header slots and hot line */
        size_t span = (rnd() & 1) && size > 4096 ? 4096 : size;
        size_t pos = rnd() % span;

        switch (rnd() % 5) {
        case 0:
            d[pos] ^= 1u << (rnd() % 8);
            break;
        case 1:
            d[pos] = rnd();
            break;
        case 2:
        case 3: {
            uint64_t v = interesting[rnd() % (sizeof(interesting) /
                                              sizeof(interesting[0]))];
            int b;

            pos &= ~(size_t)7;
            for (b = 0; b < 8 && pos + b < size; b++) {
                d[pos + b] = v >> (8 * b);
            }
            break;
        }
        default:
            if (rnd() % 4 == 0) {
                size = pos;             /* truncate */
            } else if (size + 4096 <= cap) {
                memset(d + size, (int)(rnd() & 0xff), 4096);
                size += 4096;           /* grow */
            }
            break;
        }
    }
    return size;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    char dir[256], path[4096];
    char **names = NULL;
    size_t n = 0, i;
    unsigned long runs = 0;
    int per_file = argc > 2 ? atoi(argv[2]) : 48;
    struct dirent *de;
    DIR *dp;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR [MUTATIONS_PER_FILE]\n",
                argv[0]);
        return 2;
    }
    snprintf(dir, sizeof(dir), "%s/pcow-replay-XXXXXX", base);
    if (!mkdtemp(dir) || pcow_fuzz_setup(dir) < 0) {
        fprintf(stderr, "cannot set up %s\n", dir);
        return 2;
    }
    dp = opendir(argv[1]);
    if (!dp) {
        fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    while ((de = readdir(dp))) {
        if (de->d_name[0] != '.') {
            names = realloc(names, (n + 1) * sizeof(*names));
            names[n++] = strdup(de->d_name);
        }
    }
    closedir(dp);
    qsort(names, n, sizeof(*names), by_name);
    for (i = 0; i < n; i++) {
        struct stat st;
        uint8_t *orig, *buf;
        size_t cap;
        int fd, m;

        snprintf(path, sizeof(path), "%s/%s", argv[1], names[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            if (fd >= 0) {
                close(fd);
            }
            continue;
        }
        cap = st.st_size + 8 * 4096;
        orig = calloc(1, cap);
        buf = malloc(cap);
        if (!orig || !buf ||
            read(fd, orig, st.st_size) != (ssize_t)st.st_size) {
            fprintf(stderr, "cannot read %s\n", path);
            return 2;
        }
        close(fd);
        pcow_fuzz_one(dir, orig, st.st_size);
        runs++;
        for (m = 0; m < per_file; m++) {
            size_t size;

            memcpy(buf, orig, st.st_size);
            size = mutate(buf, st.st_size, cap);
            pcow_fuzz_one(dir, buf, size);
            runs++;
        }
        free(orig);
        free(buf);
        free(names[i]);
    }
    free(names);
    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    if (system(path) != 0) {
        fprintf(stderr, "cannot remove %s\n", dir);
    }
    printf("corpus files: %zu, inputs replayed: %lu, contract violations: 0\n",
           n, runs);
    return n ? 0 : 1;
}
