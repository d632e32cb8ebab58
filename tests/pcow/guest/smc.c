/*
 * Run code from a DAX mapping of a file (on an NVDIMM, under TCG) and
 * modify it between runs: self-modifying code from guest persistent memory.
 *
 * smc FILE ROUNDS: maps FILE (created, 2 pages) with MAP_SYNC, which only a
 * DAX mapping accepts, so the code is the NVDIMM's memory itself.  Each
 * round stores "mov $N, %eax; ret" into the first page (its immediate only,
 * after the first round) and calls it; the call must return N.  A stale
 * translation (TCG missed the store to code it had translated) returns the
 * previous N.  Prints "SMC-OK ROUNDS" or "SMC-FAIL ..." and exits 0 or 1.
 *
 * Built static by tests/pcow/e2e/test-guest-exec.py for the test guest.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

int main(int argc, char **argv)
{
    int fd, rounds, i;
    volatile unsigned char *code;
    int (*fn)(void);

    if (argc != 3) {
        fprintf(stderr, "usage: smc FILE ROUNDS\n");
        return 2;
    }
    rounds = atoi(argv[2]);
    fd = open(argv[1], O_RDWR | O_CREAT, 0755);
    if (fd < 0 || ftruncate(fd, 8192) < 0) {
        printf("SMC-FAIL open/ftruncate %s: %m\n", argv[1]);
        return 1;
    }
    code = mmap(NULL, 8192, PROT_READ | PROT_WRITE | PROT_EXEC,
                MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
    if (code == MAP_FAILED) {
        printf("SMC-FAIL mmap MAP_SYNC (not DAX?): %m\n");
        return 1;
    }
    fn = (int (*)(void))code;
    for (i = 1; i <= rounds; i++) {
        int want = 0x1000 + i, got;

        if (i == 1) {
            code[0] = 0xb8;                 /* mov $imm32, %eax */
            code[5] = 0xc3;                 /* ret */
        }
        memcpy((void *)(code + 1), &want, 4);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        got = fn();
        if (got != want) {
            printf("SMC-FAIL round %d: code returned %#x, wrote %#x\n",
                   i, got, want);
            return 1;
        }
    }
    if (msync((void *)code, 8192, MS_SYNC) < 0) {
        printf("SMC-FAIL msync: %m\n");
        return 1;
    }
    printf("SMC-OK %d\n", rounds);
    return 0;
}
