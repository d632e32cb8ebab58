/*
 * libFuzzer target: pcow_open + pcow_check + pcow_get_extent over arbitrary
 * bytes (see fuzz-entry.h).  Built with -Dfuzz=true; run it with
 * tests/pcow/fuzz/run-fuzz.sh MINUTES.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz-entry.h"

static char dir[256];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void cleanup(void)
{
    const char *names[] = { "input", "base", "base.raw" };
    char p[320];
    unsigned i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    snprintf(dir, sizeof(dir), "%s/pcow-fuzz-%d", base, (int)getpid());
    if (mkdir(dir, 0700) < 0 || pcow_fuzz_setup(dir) < 0) {
        fprintf(stderr, "cannot set up %s\n", dir);
        exit(1);
    }
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pcow_fuzz_one(dir, data, size);
    return 0;
}
