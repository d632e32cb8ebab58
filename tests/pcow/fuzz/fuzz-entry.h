/*
 * The open + check entry point shared by the libFuzzer target (fuzz-open.c)
 * and the corpus replay test (replay-corpus.c)
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef PCOW_FUZZ_ENTRY_H
#define PCOW_FUZZ_ENTRY_H

#include <stddef.h>
#include <stdint.h>

/*
 * Make @dir a private directory for pcow_fuzz_one(): it holds the input
 * file and two bases an input may name ("base", a pcow image, and
 * "base.raw").  Returns 0 or a negative errno.
 */
int pcow_fuzz_setup(const char *dir);

/*
 * Write @data as an image file and run it through pcow_open (read-only,
 * then with its chain when it names one of the bases or itself),
 * pcow_get_extent over the whole virtual size, pcow_pread, pcow_check
 * (plain, then repairing), a read-write open + close; then the same again
 * with the CRCs of the header slots and the snapshot table made right, so
 * that mutations reach past the checksums.  Aborts when a libpcow call
 * breaks its contract (an error without a negative errno and a message,
 * an extent that does not advance); memory errors are the sanitizers'.
 */
void pcow_fuzz_one(const char *dir, const uint8_t *data, size_t size);

#endif
