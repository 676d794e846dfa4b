/* SPDX-License-Identifier: MIT
 * hooks_pymem.c - CPython's raw, mem and object allocator domains.
 *
 * Wrapped through PyMem_SetAllocator, not by interposing PyMem_* symbols:
 * that sees calls made inside libpython and inside static interpreters, and
 * pymalloc's small objects, without PYTHONMALLOC=malloc.
 *
 * When: wrapping is only supported once the interpreter is initialized, and
 * must happen with the GIL held. The first libc allocation after
 * Py_IsInitialized() turns true queues a pending call (Py_AddPendingCall:
 * no GIL needed to queue, no allocation); the main thread runs it between two
 * bytecodes, with the GIL, and wraps the three domains. Blocks allocated
 * before that are simply not sampled; freeing them later costs one lookup.
 *
 * Our allocator structs keep the previous allocator's ctx, so a thread that
 * reads the domain struct while it is being replaced (raw domain, no GIL)
 * calls a consistent pair either way: our functions use prev's ctx, except the
 * object domain's fast paths, which pass on the one they get (the same one).
 *
 * Which domains: the raw one always. pymalloc's (mem, object) only when
 * TRACKLEAK_MIN_SIZE lets small blocks count (see tl_config.pymalloc): on a
 * PGO-built interpreter (Debian's) wrapping them costs ~8% even when every
 * block is below the minimum, because the compiler's speculative inlining of
 * pymalloc no longer applies once the domain pointer is ours.
 *
 * Nested allocations are counted once: the hook holds the guard while the
 * wrapped allocator runs, so pymalloc -> PyMem_RawMalloc -> malloc inside it
 * passes straight through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <unistd.h>

#include "tl_internal.h"

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} tl_pymem_allocator; /* PyMemAllocatorEx, stable since 3.5 */

enum { DOM_RAW = 0, DOM_MEM = 1, DOM_OBJ = 2, DOM_N = 3 };
/* The mem and object domains may only be called with the GIL held (C API
 * contract); the raw domain may be called without it. Without a GIL (free-threaded
 * builds) or in a subinterpreter (maybe with a GIL of its own) that is not exclusion:
 * tl_py_gil_exclusive() says when it is. */
#define GIL_0 0
#define GIL_1 tl_py_gil_exclusive()
#define GIL_2 tl_py_gil_exclusive()

volatile int tl_pymem_wanted;
static tl_pymem_allocator prev[DOM_N];

/* Fast paths (small block, or inside the shim) are a compare and a tail call;
 * everything else is in the out-of-line slow functions. A free tests the
 * filter of both live sets at once (tl_maybe_sampled_any): which one its block
 * would be in (GIL_D) is only worked out when the filter says it may be
 * sampled. */
/* The ctx a fast path passes on. Ours is the previous allocator's (install),
 * so the one we are called with is that one, whichever struct the caller read;
 * the object domain's fast paths pass it on (one load fewer per call). */
#define CTX_0(ctx) prev[0].ctx
#define CTX_1(ctx) prev[1].ctx
#define CTX_2(ctx) (ctx)
#define DEFINE_DOMAIN_HOOKS(D)                                                                  \
    static __attribute__((noinline)) void *slow_malloc_##D(size_t size, void *ra)               \
    {                                                                                           \
        tl_guard = 1;                                                                           \
        void *p = prev[D].malloc(prev[D].ctx, size);                                            \
        tl_guard = 0;                                                                           \
        return tl_after_alloc(p, size, ra, GIL_##D);                                            \
    }                                                                                           \
    static void *hook_malloc_##D(void *ctx, size_t size)                                        \
    {                                                                                           \
        (void)ctx;                                                                              \
        if (TL_LIKELY(size < tl_cfg.min_size) || tl_guard)                                      \
            return prev[D].malloc(prev[D].ctx, size);                                           \
        return slow_malloc_##D(size, __builtin_return_address(0));                              \
    }                                                                                           \
    static void *hook_calloc_##D(void *ctx, size_t n, size_t size)                              \
    {                                                                                           \
        (void)ctx;                                                                              \
        if (tl_guard || n * size < tl_cfg.min_size)                                             \
            return prev[D].calloc(prev[D].ctx, n, size);                                        \
        tl_guard = 1;                                                                           \
        void *p = prev[D].calloc(prev[D].ctx, n, size);                                         \
        tl_guard = 0;                                                                           \
        return tl_after_alloc(p, p ? n * size : 0, __builtin_return_address(0), GIL_##D);       \
    }                                                                                           \
    static void *hook_realloc_##D(void *ctx, void *ptr, size_t size)                            \
    {                                                                                           \
        (void)ctx;                                                                              \
        if (D == DOM_OBJ && ptr && ptr == tl_small_pend)                                        \
            tl_small_pend = NULL;                                                               \
        if (tl_guard)                                                                           \
            return prev[D].realloc(prev[D].ctx, ptr, size);                                     \
        tl_entry_t entry;                                                                       \
        int had = ptr && tl_maybe_sampled_any(ptr) && tl_take(ptr, &entry, GIL_##D);            \
        tl_guard = 1;                                                                           \
        void *q = prev[D].realloc(prev[D].ctx, ptr, size);                                      \
        if (had) {                                                                              \
            if (q)                                                                              \
                tl_credit_free(ptr, entry, GIL_##D);                                            \
            else                                                                                \
                tl_put_back(ptr, entry, GIL_##D); /* failed: old block still there */           \
        }                                                                                       \
        tl_guard = 0;                                                                           \
        return tl_after_alloc(q, size, __builtin_return_address(0), GIL_##D);                   \
    }                                                                                           \
    static __attribute__((noinline)) void slow_free_##D(void *ptr)                              \
    {                                                                                           \
        tl_entry_t entry;                                                                       \
        /* (the pending block of small-object mode is a live sample: its free comes here) */   \
        if (D == DOM_OBJ && ptr == tl_small_pend && ptr)                                        \
            tl_small_pend = NULL;                                                               \
        if (!tl_guard && tl_take(ptr, &entry, GIL_##D)) {                                       \
            tl_guard = 1;                                                                       \
            tl_credit_free(ptr, entry, GIL_##D);                                                \
            tl_guard = 0;                                                                       \
        }                                                                                       \
        prev[D].free(prev[D].ctx, ptr);                                                         \
    }                                                                                           \
    static void hook_free_##D(void *ctx, void *ptr)                                             \
    {                                                                                           \
        (void)ctx;                                                                              \
        if (TL_LIKELY(!tl_maybe_sampled_any(ptr)))                                              \
            return prev[D].free(CTX_##D(ctx), ptr);                                             \
        slow_free_##D(ptr); /* a nested raw free finds nothing left to credit */                \
    }

DEFINE_DOMAIN_HOOKS(0)
DEFINE_DOMAIN_HOOKS(1)
DEFINE_DOMAIN_HOOKS(2)

/* ---- small-object mode on 3.9-3.12 -----------------------------------------
 * Blocks of the object domain (objects; before 3.13 a dict's keys table too)
 * under the minimum size are counted only when sampled. The mem domain
 * (container storage) stays as TRACKLEAK_PYMALLOC says: wrapping it too cost
 * more than it told (bench/run.py). Installed instead of hook_*_2 (no mode
 * test per call). Every PyObject_Malloc and PyObject_Free of the program comes
 * here, so the unsampled path is what counts:
 *   malloc: min-size compare, TLS subtract (initial-exec: no call), tail call;
 *   free:   filter hash, one load, tail call.
 * The sample decision is taken on the request before the block exists; the
 * guard is not looked at there (inside the shim it only moves the gap), the
 * slow parts check it.
 *
 * tl_small_pend (objects.c: the last sampled block, whose type is read at the
 * next sample) is only ever a block in the GIL live set, so its filter bucket
 * is non-zero until its free or realloc takes it: those reach the slow paths,
 * which clear it. A fork clears both (init.c). */
static __attribute__((noinline)) void *small_sample(void *ctx, size_t size, size_t n, void *ra)
{
    void *p = n ? prev[DOM_OBJ].calloc(ctx, n, size) : prev[DOM_OBJ].malloc(ctx, size);
    if (n)
        size *= n;
    if (!p || tl_guard || !tl_active || tl_disabled || !tl_sample_hit(size))
        return p;
    if (!tl_py_gil_exclusive())
        return p; /* a subinterpreter's own GIL: the pending slot is the main GIL's */
    if (tl_small_pend)
        tl_small_pend_check(); /* the previous sampled block: initialised long since */
    tl_guard = 1;
    /* Pending only when it went into the live set (it may have had no room:
     * a dropped sample), see above. Another thread's drop meanwhile only
     * makes this one not pending (no freelist flag from it). */
    uint64_t dropped = __atomic_load_n(&tl_hdr->dropped_samples, __ATOMIC_RELAXED);
    struct tl_site *s = tl_record_sampled(p, size, 0, NULL, ra, 1, TL_PATH_HERE);
    if (s && __atomic_load_n(&tl_hdr->dropped_samples, __ATOMIC_RELAXED) == dropped)
        tl_small_pend_set(p, size, s);
    tl_guard = 0;
    return p;
}

/* At or over the minimum size (pymalloc's 497-512 at the default): the full
 * path, or inside the shim a small block. */
static __attribute__((noinline)) void *small_big(void *ctx, size_t size, size_t n, void *ra)
{
    if (!tl_guard) {
        if (!n)
            return slow_malloc_2(size, ra);
        tl_guard = 1;
        void *p = prev[DOM_OBJ].calloc(ctx, n, size);
        tl_guard = 0;
        return tl_after_alloc(p, p ? n * size : 0, ra, GIL_2);
    }
    size_t bytes = n ? n * size : size;
    tl_gap -= (int64_t)bytes;
    if (TL_LIKELY(tl_gap > 0))
        return n ? prev[DOM_OBJ].calloc(prev[DOM_OBJ].ctx, n, size) : prev[DOM_OBJ].malloc(prev[DOM_OBJ].ctx, size);
    return small_sample(prev[DOM_OBJ].ctx, size, n, ra);
}

static void *small_malloc(void *ctx, size_t size)
{
    if (TL_UNLIKELY(size >= tl_cfg.min_size))
        return small_big(prev[DOM_OBJ].ctx, size, 0, __builtin_return_address(0));
    int64_t gap = tl_gap - (int64_t)size;
    tl_gap = gap;
    if (TL_UNLIKELY(gap <= 0))
        return small_sample(prev[DOM_OBJ].ctx, size, 0, __builtin_return_address(0));
    return prev[DOM_OBJ].malloc(CTX_2(ctx), size);
}

static void *small_calloc(void *ctx, size_t n, size_t size)
{
    if (TL_UNLIKELY(n == 0 || size == 0)) /* (nothing to sample: n == 0 means malloc to small_sample) */
        return prev[DOM_OBJ].calloc(prev[DOM_OBJ].ctx, n, size);
    size_t bytes;
    if (TL_UNLIKELY(__builtin_mul_overflow(n, size, &bytes))) /* (pymalloc refuses it) */
        return prev[DOM_OBJ].calloc(prev[DOM_OBJ].ctx, n, size);
    if (TL_UNLIKELY(bytes >= tl_cfg.min_size))
        return small_big(prev[DOM_OBJ].ctx, size, n, __builtin_return_address(0));
    int64_t gap = tl_gap - (int64_t)bytes;
    tl_gap = gap;
    if (TL_UNLIKELY(gap <= 0))
        return small_sample(prev[DOM_OBJ].ctx, size, n, __builtin_return_address(0));
    return prev[DOM_OBJ].calloc(CTX_2(ctx), n, size);
}

/* The raw domain remembers its last block per thread (tl_last_raw). */
TL_TLS void *tl_last_raw;
static void *raw_malloc(void *ctx, size_t size)
{
    return tl_last_raw = hook_malloc_0(ctx, size);
}
static void *raw_calloc(void *ctx, size_t n, size_t size)
{
    return tl_last_raw = hook_calloc_0(ctx, n, size);
}
static void *raw_realloc(void *ctx, void *ptr, size_t size)
{
    return tl_last_raw = hook_realloc_0(ctx, ptr, size);
}

/* ---- exit dump from Python's atexit ----------------------------------------
 * A dump after Py_FinalizeEx is too late twice over: module teardown has freed
 * every global (a leak looks healthy), and daemon threads still polling the GIL
 * of the deleted interpreter crash if exit takes longer than usual. So we
 * register a C function with the atexit module: it runs first thing in
 * finalization, with a live interpreter, and freezes the table there. */
typedef void *PyObj;
struct tl_methoddef {
    const char *name;
    PyObj (*meth)(PyObj, PyObj);
    int flags;
    const char *doc;
};
static void (*py_incref)(PyObj);

static PyObj atexit_dump(PyObj self, PyObj unused)
{
    (void)self;
    (void)unused;
    if (getpid() == tl_owner_pid) {
        tl_freeze();
        tl_objects_uninstall();
        tl_dump_at_exit();
    }
    PyObj none = dlsym(RTLD_DEFAULT, "_Py_NoneStruct");
    py_incref(none); /* Py_IncRef: right for immortal objects too */
    return none;
}

static struct tl_methoddef atexit_def = {"_trackleak_exit_dump", atexit_dump, 0x0004 /* METH_NOARGS */,
                                         "Write TrackLeak's exit table (registered by the preload shim)."};

static void register_atexit(void)
{
    PyObj (*import)(const char *) = (PyObj(*)(const char *))dlsym(RTLD_DEFAULT, "PyImport_ImportModule");
    PyObj (*getattr)(PyObj, const char *) = (PyObj(*)(PyObj, const char *))dlsym(RTLD_DEFAULT, "PyObject_GetAttrString");
    PyObj (*cfunc)(void *, PyObj, PyObj) = (PyObj(*)(void *, PyObj, PyObj))dlsym(RTLD_DEFAULT, "PyCFunction_NewEx");
    PyObj (*call1)(PyObj, PyObj, void *) =
        (PyObj(*)(PyObj, PyObj, void *))dlsym(RTLD_DEFAULT, "PyObject_CallFunctionObjArgs");
    void (*decref)(PyObj) = (void (*)(PyObj))dlsym(RTLD_DEFAULT, "Py_DecRef");
    void (*clear)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "PyErr_Clear");
    py_incref = (void (*)(PyObj))dlsym(RTLD_DEFAULT, "Py_IncRef");
    if (!import || !getattr || !cfunc || !call1 || !decref || !clear || !py_incref ||
        !dlsym(RTLD_DEFAULT, "_Py_NoneStruct"))
        return;
    PyObj mod = import("atexit");
    PyObj reg = mod ? getattr(mod, "register") : NULL;
    PyObj fn = reg ? cfunc(&atexit_def, NULL, NULL) : NULL;
    PyObj res = fn ? call1(reg, fn, NULL) : NULL;
    if (!res)
        clear(); /* no atexit: the destructor still dumps, later */
    if (res)
        decref(res);
    if (fn)
        decref(fn);
    if (reg)
        decref(reg);
    if (mod)
        decref(mod);
}

static int install(void *arg)
{
    (void)arg;
    void (*get)(int, tl_pymem_allocator *) = (void (*)(int, tl_pymem_allocator *))dlsym(RTLD_DEFAULT, "PyMem_GetAllocator");
    void (*set)(int, tl_pymem_allocator *) = (void (*)(int, tl_pymem_allocator *))dlsym(RTLD_DEFAULT, "PyMem_SetAllocator");
    if (!get || !set || tl_disabled)
        return 0;
    tl_pymem_allocator ours[DOM_N] = {
        {NULL, raw_malloc, raw_calloc, raw_realloc, hook_free_0},
        {NULL, hook_malloc_1, hook_calloc_1, hook_realloc_1, hook_free_1},
        {NULL, hook_malloc_2, hook_calloc_2, hook_realloc_2, hook_free_2},
    };
    tl_pymem_allocator small_obj = {NULL, small_malloc, small_calloc, hook_realloc_2, hook_free_2};
    tl_py_mark_up(); /* (tl_py_current works from here on: the tracer may need it at once) */
    /* Small objects (objects.c): the reference tracer on 3.13+; else, when asked
     * (TRACKLEAK_SMALL_OBJECTS=1), pymalloc's small blocks by samples. */
    int tracer = tl_objects_install();
    int small = !tracer && tl_cfg.small_objects == 1 && !tl_py_free_threaded();
    /* The mem and object domains are pymalloc's (blocks <= 512 bytes; larger
     * ones go on to the raw domain, which we always wrap). With the tracer on,
     * objects are its: the object domain stays unwrapped (counted once). A
     * free-threaded build serves both from mimalloc at every size, never through
     * the raw domain: wrapped always there, or its objects would not be seen. */
    int ft = tl_py_free_threaded();
    int want[DOM_N] = {1, tl_cfg.pymalloc || ft, (tl_cfg.pymalloc && !tracer) || small || ft};
    if (small)
        ours[DOM_OBJ] = small_obj;
    for (int d = 0; d < DOM_N; d++) {
        if (!want[d])
            continue;
        get(d, &prev[d]);
        ours[d].ctx = prev[d].ctx;
        set(d, &ours[d]);
    }
    if (small) {
        __atomic_or_fetch(&tl_hdr->flags, TL_FLAG_SMALL_BLOCKS, __ATOMIC_RELAXED);
    }
    __atomic_or_fetch(&tl_hdr->flags, TL_FLAG_PYMEM_HOOKED, __ATOMIC_RELAXED);
    int old = tl_guard;
    tl_guard = 1; /* what registering allocates is ours, not the user's */
    register_atexit();
    tl_guard = old;
    return 0;
}

void tl_pymem_maybe_install(void)
{
    if (tl_guard || !tl_py_initialized())
        return;
    if (!__atomic_exchange_n(&tl_pymem_wanted, 0, __ATOMIC_ACQ_REL))
        return;
    tl_guard = 1;
    if (tl_py_schedule(install, NULL) != 0)
        tl_pymem_wanted = 1; /* queue full: try again at a later allocation */
    tl_guard = 0;
}
