/*
 * Allocation guard for the Image Monitor tests
 *
 * The monitor's SIGSEGV handler interrupts arbitrary code, maybe inside
 * malloc, so nothing it calls may allocate.  Linked into test-monitor,
 * this file checks every allocation and free of the process against
 * pcow_monitor_in_handler() and aborts (SIGABRT, one line on stderr) when
 * one happens inside the handler.  Without sanitizers it replaces malloc
 * and friends, forwarding to glibc's own entry points; under ASan, which
 * owns malloc, it installs ASan's allocation hooks instead.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcow/monitor.h"

static __thread bool reported;

static void check(const char *fn)
{
    static const char pre[] = "malloc-guard: ";
    static const char post[] = "() inside a monitor fault handler\n";

    if (!pcow_monitor_in_handler() || reported) {
        return;
    }
    reported = true;
    if (write(STDERR_FILENO, pre, sizeof(pre) - 1) < 0 ||
        write(STDERR_FILENO, fn, strlen(fn)) < 0 ||
        write(STDERR_FILENO, post, sizeof(post) - 1) < 0) {
        /* abort anyway */
    }
    /*
     * Not abort(): ASan precedes a noreturn call with stack bookkeeping
     * that allocates, which would come back here.
     */
    signal(SIGABRT, SIG_DFL);
    raise(SIGABRT);
}

#if defined(__SANITIZE_ADDRESS__)

int __sanitizer_install_malloc_and_free_hooks(
    void (*malloc_hook)(const volatile void *, size_t),
    void (*free_hook)(const volatile void *));

static void on_malloc(const volatile void *p, size_t n)
{
    check("malloc");
}

static void on_free(const volatile void *p)
{
    check("free");
}

__attribute__((constructor)) static void guard_init(void)
{
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}

#else

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);
void *__libc_memalign(size_t align, size_t n);
void *__libc_valloc(size_t n);
void *__libc_pvalloc(size_t n);

void *malloc(size_t n)
{
    check("malloc");
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    check("calloc");
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    check("realloc");
    return __libc_realloc(p, n);
}

void free(void *p)
{
    check("free");
    __libc_free(p);
}

void *memalign(size_t align, size_t n)
{
    check("memalign");
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    check("aligned_alloc");
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p;

    check("posix_memalign");
    if (align < sizeof(void *) || (align & (align - 1))) {
        return EINVAL;
    }
    p = __libc_memalign(align, n);
    if (!p) {
        return ENOMEM;
    }
    *out = p;
    return 0;
}

void *valloc(size_t n)
{
    check("valloc");
    return __libc_valloc(n);
}

void *pvalloc(size_t n)
{
    check("pvalloc");
    return __libc_pvalloc(n);
}

#endif
