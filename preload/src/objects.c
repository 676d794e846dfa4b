/* SPDX-License-Identifier: MIT
 * objects.c - small objects at the line that made them (issue 10).
 *
 * CPython keeps freelists (dict, tuple, list, float, ...): an object freed at
 * one line goes back to its type's freelist and is handed to the next line
 * that needs one, without any allocator call. Watching only the allocator, a
 * healthy line that builds and drops a dict each time allocates every block
 * that a leaking line next to it ends up keeping.
 *
 * CPython 3.13+: the reference tracer (PyRefTracer_SetTracer) is told of every
 * object's creation (freelist reuse included: _Py_NewReference) and
 * destruction (_Py_Dealloc). Each creation of an object of at most
 * TL_SMALL_MAX bytes goes on the thread's sampling byte stream (the gap of
 * recorder.c: one rule with the allocator hooks); a sample is charged to the
 * creating Python line and credited at its destruction. Larger objects are raw
 * domain blocks (pymalloc passes them on), which the allocator hooks count:
 * nothing is counted twice because the object domain is not wrapped while
 * the tracer is on (hooks_pymem.c).
 *
 * The tracer runs with the GIL held (CPython's contract), so its samples go to
 * the GIL live set with plain stores. It allocates nothing, calls no Python
 * API (tl_py_current reads the frame; a new site's name is copied from the
 * code object, as for any allocation), and takes the reentrancy guard.
 *
 * DESTROY is not always reported: CPython 3.13.0 frees objects from the
 * interpreter loop without telling the tracer (gh-130382; the specialised
 * decrefs too). Such an object's memory is soon reused, by the freelist or by
 * pymalloc, for a new object, whose creation is reported: any live sample
 * inside the new object's block is stale and credited then. What is reused
 * for non-objects (container storage) stays counted until an object takes it.
 */
#define _GNU_SOURCE
#include <stddef.h>

#include "tl_internal.h"

typedef int (*tl_reftracer)(void *op, int event, void *data);
enum { EV_CREATE = 0, EV_DESTROY = 1 };

static tl_reftracer prev_tracer; /* the one we replaced (chained) */
static void *prev_data;
static int (*set_tracer)(tl_reftracer, void *);
static tl_reftracer (*get_tracer)(void **);
static int installed;

static void credit_if_sampled(void *p)
{
    uint64_t entry;
    if (TL_UNLIKELY(tl_maybe_sampled(p, 1)) && tl_take(p, &entry, 1))
        tl_credit_free(p, entry, 1);
}

/* One object's size known: on the thread's byte stream; a sample is charged to
 * LOC (read at its creation). Caller holds the guard. */
static void count_object(void *op, size_t size, size_t pre, const struct tl_pyloc *loc, int have_loc)
{
    /* A live sample inside this block was freed without a DESTROY event. */
    char *block = (char *)op - pre;
    for (size_t off = 0; off < size && off <= 32; off += 16)
        credit_if_sampled(block + off);
    if (!tl_small_sampled(size))
        return;
    struct tl_pyloc here;
    int py = 1;
    if (!have_loc) {
        py = tl_py_current(&here);
        loc = &here;
    }
    if (py > 0)
        tl_record_sampled(op, size, loc, NULL, 1);
    else if (py < 0)
        tl_freeze();
    /* py == 0: made outside any Python frame (start-up, C threads): not charged */
}

/* The object whose size CPython writes after its creation event (VAR, STR):
 * sized at the next event, whichever thread has it (the GIL orders events:
 * nothing can have happened to the object in between but a silent free, see
 * the top of the file). One slot for the process, protected by the GIL. */
static struct {
    void *op;
    const void *owner;      /* &tl_gap of the creating thread */
    uint64_t epoch;         /* tl_unmap_epoch at creation */
    int shape, have_loc;
    struct tl_objshape sh;
    struct tl_pyloc loc;    /* read at creation when a sample could fall on it */
} pend;

static void settle_pending(void)
{
    void *op = pend.op;
    pend.op = NULL;
    /* Dropped (not counted): created by another thread (its byte stream is its
     * own), or an munmap since (pymalloc may have given its arena back after a
     * silent free: not readable). Both rare. */
    if (pend.owner != (const void *)&tl_gap || pend.epoch != __atomic_load_n(&tl_unmap_epoch, __ATOMIC_RELAXED))
        return;
    size_t size = tl_py_object_late_size(op, pend.shape, &pend.sh);
    if (size)
        count_object(op, size, pend.sh.pre, &pend.loc, pend.have_loc);
}

static void on_create(void *op)
{
    struct tl_objshape sh;
    int shape = tl_py_object_shape(op, &sh);
    if (shape == TL_OBJ_NONE)
        return; /* bigger than pymalloc's blocks: a raw block, counted by the hooks */
    if (shape == TL_OBJ_FIXED) {
        count_object(op, sh.size, sh.pre, NULL, 0);
        return;
    }
    /* VAR, STR: made in a block the raw domain just handed out (over 512
     * bytes)? Then it is the hooks', and may be unmapped by free() at once. */
    if ((char *)op - sh.pre == (char *)tl_last_raw)
        return;
    pend.op = op;
    pend.owner = &tl_gap;
    pend.epoch = __atomic_load_n(&tl_unmap_epoch, __ATOMIC_RELAXED);
    pend.shape = shape;
    pend.sh = sh;
    /* Its size is at most TL_SMALL_MAX: unless the gap is that short, no sample
     * point can fall on it and its line is not needed. */
    pend.have_loc = tl_gap <= TL_SMALL_MAX && tl_py_current(&pend.loc) > 0;
}

static int tracer(void *op, int event, void *data)
{
    (void)data;
    if (TL_LIKELY(tl_active) && !tl_guard) {
        tl_guard = 1;
        if (pend.op)
            settle_pending(); /* first: a DESTROY of it finds it counted (and maybe sampled) */
        if (event == EV_CREATE)
            on_create(op);
        else if (event == EV_DESTROY)
            credit_if_sampled(op);
        tl_guard = 0;
    } else if (pend.op == op) {
        pend.op = NULL; /* going away while we do not look: never read it */
    }
    return prev_tracer ? prev_tracer(op, event, prev_data) : 0;
}

int tl_objects_install(void)
{
    if (tl_cfg.small_objects == 0 || tl_py_version_hex() < 0x030d0000)
        return 0;
    set_tracer = (int (*)(tl_reftracer, void *))tl_py_sym("PyRefTracer_SetTracer");
    get_tracer = (tl_reftracer(*)(void **))tl_py_sym("PyRefTracer_GetTracer");
    if (!set_tracer || !get_tracer)
        return 0;
    prev_tracer = get_tracer(&prev_data);
    if (prev_tracer == tracer)
        prev_tracer = NULL;
    if (set_tracer(tracer, NULL) != 0)
        return 0;
    installed = 1;
    __atomic_or_fetch(&tl_hdr->flags, TL_FLAG_OBJECTS, __ATOMIC_RELAXED);
    return 1;
}

/* At the exit table: the interpreter tears everything down next; give the
 * tracer back (only if nobody replaced ours since). */
void tl_objects_uninstall(void)
{
    if (!installed)
        return;
    installed = 0;
    pend.op = NULL;
    void *d;
    if (get_tracer(&d) == tracer)
        set_tracer(prev_tracer, prev_data);
}

/* ---- 3.9-3.12: the freelist flag -------------------------------------------
 * In small-object mode pymalloc's domains are wrapped and small blocks
 * sampled. A sampled block's type is read at the next call of a GIL-domain
 * hook (the object is initialised right after its allocation returns; its
 * free would clear the pending pointer first, so the block is alive when
 * read). Only compared against the freelist types' addresses, never followed. */
void *volatile tl_small_pend;
static size_t pend_size;
static struct tl_site *pend_site;
static void *fl_float, *fl_gc[3]; /* float (no GC header); dict, tuple, list (GC header: type at +24) */
static int fl_init;

void tl_small_pend_set(void *p, size_t size, struct tl_site *s)
{
    if (!s)
        return;
    if (!fl_init) {
        fl_float = tl_py_sym("PyFloat_Type");
        fl_gc[0] = tl_py_sym("PyDict_Type");
        fl_gc[1] = tl_py_sym("PyTuple_Type");
        fl_gc[2] = tl_py_sym("PyList_Type");
        fl_init = 1;
    }
    pend_size = size;
    pend_site = s;
    tl_small_pend = p;
}

void tl_small_pend_check(void)
{
    const char *p = tl_small_pend;
    tl_small_pend = NULL;
    if (!p || !pend_site)
        return;
    void *t0 = pend_size >= 16 ? *(void *const *)(p + 8) : NULL;
    void *t1 = pend_size >= 32 ? *(void *const *)(p + 24) : NULL;
    /* A float freed before this check is in the float freelist, whose link is
     * kept in ob_type: a request of exactly sizeof(PyFloatObject) (24 bytes, no
     * GC header) from the object domain is a float in practice (an int is 28,
     * every GC object has 16 bytes of header on top). */
    int fl = (t0 && t0 == fl_float) || pend_size == 24 ||
             (t1 && (t1 == fl_gc[0] || t1 == fl_gc[1] || t1 == fl_gc[2]));
    if (fl)
        __atomic_or_fetch(&pend_site->flags, TL_SITE_F_FREELIST, __ATOMIC_RELAXED);
}
