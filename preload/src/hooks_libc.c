/* SPDX-License-Identifier: MIT
 * hooks_libc.c - the libc allocator family, interposed through LD_PRELOAD.
 *
 * Each hook is thin: call the real function, then hand the result to the
 * recorder. Frees are recorded *before* the block is released, so another
 * thread cannot get the same address back and have its new sample removed.
 * The real functions come from dlsym(RTLD_NEXT); while dlsym itself allocates
 * we serve it from a static bootstrap arena whose blocks are never released.
 * dlsym is the shim's own (hooks_dl.c), which forwards RTLD_NEXT lookups to
 * the C library's dlsym with a jump: "next" is still relative to this file.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/syscall.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tl_internal.h"

static struct {
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t); /* only compared (tl_libc_swap); NULL before glibc 2.26 */
    void (*free)(void *);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    void (*exit_)(int) __attribute__((noreturn));
} real;

/* ---- bootstrap arena: serves dlsym's own allocations --------------------- */
static _Alignas(64) char boot_arena[64 * 1024];
static size_t boot_used;
static int resolving;

static int boot_owns(const void *p)
{
    return (const char *)p >= boot_arena && (const char *)p < boot_arena + sizeof boot_arena;
}

static void *boot_alloc(size_t size, size_t align)
{
    if (align < 16)
        align = 16;
    size_t start = (boot_used + sizeof(size_t) + align - 1) & ~(align - 1);
    if (start + size > sizeof boot_arena)
        return NULL;
    ((size_t *)(boot_arena + start))[-1] = size;
    boot_used = start + size;
    return boot_arena + start;
}

static size_t boot_size(const void *p) { return ((const size_t *)p)[-1]; }

static void resolve(void)
{
    resolving = 1;
    real.malloc = dlsym(RTLD_NEXT, "malloc");
    real.calloc = dlsym(RTLD_NEXT, "calloc");
    real.realloc = dlsym(RTLD_NEXT, "realloc");
    real.reallocarray = dlsym(RTLD_NEXT, "reallocarray");
    real.free = dlsym(RTLD_NEXT, "free");
    real.posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real.aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real.memalign = dlsym(RTLD_NEXT, "memalign");
    real.valloc = dlsym(RTLD_NEXT, "valloc");
    real.pvalloc = dlsym(RTLD_NEXT, "pvalloc");
    real.exit_ = dlsym(RTLD_NEXT, "_exit");
    resolving = 0;
    if (!real.malloc || !real.free || !real.calloc || !real.realloc) {
        static const char msg[] = "[trackleak] cannot find the real malloc; aborting\n";
        (void)!write(2, msg, sizeof msg - 1);
        abort();
    }
}

#define ENSURE_REAL(fallback)             \
    do {                                  \
        if (TL_UNLIKELY(!real.free)) {    \
            if (resolving)                \
                return fallback;          \
            resolve();                    \
        }                                 \
    } while (0)

TL_EXPORT void *malloc(size_t size)
{
    ENSURE_REAL(boot_alloc(size, 16));
    if (TL_UNLIKELY(tl_pymem_wanted))
        tl_pymem_maybe_install();
    return tl_after_alloc(real.malloc(size), size, __builtin_return_address(0), 0);
}

TL_EXPORT void *calloc(size_t n, size_t size)
{
    if (TL_UNLIKELY(!real.free)) {
        size_t total;
        if (__builtin_mul_overflow(n, size, &total))
            return NULL;
        if (resolving)
            return boot_alloc(total, 16); /* static storage is zeroed */
        resolve();
    }
    void *p = real.calloc(n, size);
    return tl_after_alloc(p, p ? n * size : 0, __builtin_return_address(0), 0);
}

TL_EXPORT void free(void *p)
{
    if (!p || TL_UNLIKELY(boot_owns(p)))
        return;
    ENSURE_REAL();
    tl_before_free(p, 0);
    real.free(p);
}

static void *realloc_impl(void *p, size_t size, void *ra)
{
    if (!p)
        return tl_after_alloc(real.malloc(size), size, ra, 0);
    if (TL_UNLIKELY(boot_owns(p))) {
        void *q = real.malloc(size);
        if (q) {
            size_t old = boot_size(p);
            memcpy(q, p, old < size ? old : size);
        }
        return tl_after_alloc(q, size, ra, 0);
    }
    tl_entry_t entry;
    int had = !tl_guard && tl_take(p, &entry, 0);
    void *q = real.realloc(p, size);
    if (!q && size != 0) {
        /* Failed: p is untouched and still ours. */
        if (had)
            tl_put_back(p, entry, 0);
        return NULL;
    }
    if (had) {
        tl_guard = 1;
        tl_credit_free(p, entry, 0);
        tl_guard = 0;
    }
    return q ? tl_after_alloc(q, size, ra, 0) : NULL;
}

TL_EXPORT void *realloc(void *p, size_t size)
{
    ENSURE_REAL(NULL);
    return realloc_impl(p, size, __builtin_return_address(0));
}

TL_EXPORT void *reallocarray(void *p, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    ENSURE_REAL(NULL);
    return realloc_impl(p, total, __builtin_return_address(0));
}

TL_EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    ENSURE_REAL(ENOMEM);
    int rc = real.posix_memalign(out, align, size);
    if (rc == 0)
        tl_after_alloc(*out, size, __builtin_return_address(0), 0);
    return rc;
}

TL_EXPORT void *aligned_alloc(size_t align, size_t size)
{
    ENSURE_REAL(boot_alloc(size, align));
    return tl_after_alloc(real.aligned_alloc(align, size), size, __builtin_return_address(0), 0);
}

TL_EXPORT void *memalign(size_t align, size_t size)
{
    ENSURE_REAL(boot_alloc(size, align));
    return tl_after_alloc(real.memalign(align, size), size, __builtin_return_address(0), 0);
}

TL_EXPORT void *valloc(size_t size)
{
    ENSURE_REAL(boot_alloc(size, 4096));
    return tl_after_alloc(real.valloc(size), size, __builtin_return_address(0), 0);
}

TL_EXPORT void *pvalloc(size_t size)
{
    ENSURE_REAL(boot_alloc(size, 4096));
    return tl_after_alloc(real.pvalloc(size), size, __builtin_return_address(0), 0);
}

/* os._exit() and multiprocessing children end here without running
 * destructors: write the final dump first (only in a process we own; a
 * vfork() child shares our memory and must not touch it). */
TL_EXPORT void _exit(int status)
{
    if (!real.exit_)
        resolve();
    if (!tl_guard && getpid() == tl_owner_pid)
        tl_dump_at_exit();
    real.exit_(status);
    __builtin_unreachable();
}

/* pymalloc gives its arenas back with munmap (through the PLT, so this
 * definition is the one it calls). objects.c reads some just-created objects
 * one tracer event later: an arena unmapped in between must not be read, so
 * every munmap moves this epoch. The system call itself, as glibc's wrapper. */
volatile uint64_t tl_unmap_epoch;
TL_EXPORT int munmap(void *addr, size_t len)
{
    __atomic_add_fetch(&tl_unmap_epoch, 1, __ATOMIC_RELAXED);
    return (int)syscall(SYS_munmap, addr, len);
}

/* For hooks_dl.c: a lookup through a library handle returned found for name.
 * Hand out our hook when found is exactly what that hook wraps. */
void *tl_libc_swap(const char *name, void *found)
{
    static const struct {
        const char *name;
        void *const *real; /* &real.x */
        void *hook;
    } swaps[] = {
        {"malloc", (void *const *)&real.malloc, (void *)malloc},
        {"calloc", (void *const *)&real.calloc, (void *)calloc},
        {"realloc", (void *const *)&real.realloc, (void *)realloc},
        {"reallocarray", (void *const *)&real.reallocarray, (void *)reallocarray},
        {"free", (void *const *)&real.free, (void *)free},
        {"posix_memalign", (void *const *)&real.posix_memalign, (void *)posix_memalign},
        {"aligned_alloc", (void *const *)&real.aligned_alloc, (void *)aligned_alloc},
        {"memalign", (void *const *)&real.memalign, (void *)memalign},
        {"valloc", (void *const *)&real.valloc, (void *)valloc},
        {"pvalloc", (void *const *)&real.pvalloc, (void *)pvalloc},
        {"_exit", (void *const *)&real.exit_, (void *)_exit},
    };
    if (!found || !name)
        return found;
    if (TL_UNLIKELY(!real.free)) {
        if (resolving)
            return found;
        resolve();
    }
    for (size_t i = 0; i < sizeof swaps / sizeof swaps[0]; i++)
        if (!strcmp(name, swaps[i].name))
            return *swaps[i].real == found ? swaps[i].hook : found;
    return found;
}
