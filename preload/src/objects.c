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
 * The tracer runs with the GIL held (CPython's contract; not installed on a
 * free-threaded build), so its samples go to the GIL live set with plain
 * stores. It allocates nothing, calls no Python API (tl_py_current reads the
 * frame; a new site's name is copied from the code object, as for any
 * allocation). Its fast path (tracer/handle) is a leaf that moves the gap and
 * reads one filter slot; every slow part takes the reentrancy guard and does
 * nothing when the shim itself is running (the guard) or is frozen.
 * Objects whose size CPython writes after reporting them (VAR: tuples, bytes,
 * str) are charged their least size and sized one event later when sampled.
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

static struct tl_objlayout L; /* filled at install */
/* Non-zero: every event takes tracer_slow (a pending object, a tracer to
 * chain, not active yet). Recomputed there; set where those change. */
static int obj_slow = 1;
#define TL_OB_TYPE 8 /* PyObject.ob_type on every 64-bit build with the GIL (checked at install) */
#define AT(base, off, type) (*(type *)((const char *)(base) + (off)))

static void credit_if_sampled(void *p)
{
    tl_entry_t entry;
    if (TL_UNLIKELY(tl_maybe_sampled(p, 1)) && tl_take(p, &entry, 1))
        tl_credit_free(p, entry, 1);
}

/* Charge an object to the line that made it: a sample taken on CHARGED bytes,
 * of SIZE bytes (more when its size was learnt after the decision). LOC: the
 * line read at its creation (NULL: now). Takes the guard. */
static void record_object(void *op, size_t size, size_t charged, const struct tl_pyloc *loc, uint32_t path)
{
    int guard = tl_guard;
    tl_guard = 1;
    struct tl_pyloc here;
    int py = 1;
    if (!loc) {
        py = tl_py_current(&here);
        loc = &here;
    }
    if (py > 0)
        tl_record_sampled(op, size, charged, loc, NULL, 1, path);
    else if (py < 0)
        tl_freeze();
    /* py == 0: made outside any Python frame (start-up, C threads): not charged */
    tl_guard = guard;
}

/* Rarely reached: a live sample may sit in the new object's block (freed
 * without a DESTROY event: its start, +16 or +32, one filter bucket), or the
 * sample point fell on the object. Returns 1 when it is sampled. */
static __attribute__((noinline)) int object_slow(void *op, size_t charged, size_t pre, int stale)
{
    if (stale) {
        int guard = tl_guard;
        tl_guard = 1;
        char *block = (char *)op - pre;
        for (size_t off = 0; off <= 32 && off < charged; off += 16)
            credit_if_sampled(block + off);
        tl_guard = guard;
    }
    return tl_gap <= 0 && tl_sample_hit(charged);
}

/* What an object of a type takes, read once per type: a direct-mapped cache
 * keyed by the type's address, so the hot path reads our few KiB, not three
 * cache lines of every type object. info: bits 0-15 the bytes charged to the
 * byte stream at creation (the whole size for FIXED; for VAR, whose size CPython
 * writes after the event, the least it can be: a tuple's header, a str's empty
 * ASCII form), 16-31 tp_itemsize (VAR; 0: a str), 32-39 the pre-header, 40-47
 * the kind, 48-63 tp_basicsize. A type freed and another made at its address
 * would keep the old entry: a misestimate, never a wrong read (only the
 * object's own header is read, and only up to 512 bytes are believed). */
enum { K_NONE = 0, K_FIXED = 1, K_VAR = 2, K_LONG = 3 };
#define TC_BITS 8
static struct {
    const void *tp;
    uint64_t info;
} tcache[1u << TC_BITS];

static inline size_t round8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static __attribute__((noinline)) uint64_t type_info(const char *tp)
{
    unsigned long flags = AT(tp, L.tp_flags, unsigned long);
    uint64_t pre = ((flags & L.gc_flag) ? 16 : 0) + ((flags & L.preheader_flags) ? 16 : 0);
    long base = AT(tp, L.tp_basicsize, long), item = AT(tp, L.tp_itemsize, long);
    uint64_t kind = K_NONE, charged = 0;
    if (tp == L.long_type) {
        kind = K_LONG;
    } else if (base > 0 && base <= TL_SMALL_MAX && item >= 0 && item <= TL_SMALL_MAX) {
        if (tp == L.str_type) {
            kind = K_VAR;
            item = 0;
            charged = round8(L.str_ascii_size + 1);
        } else {
            kind = item ? K_VAR : K_FIXED;
            charged = round8((size_t)base) + pre;
        }
        if (charged > TL_SMALL_MAX)
            kind = K_NONE;
    }
    uint64_t info = charged | ((uint64_t)item << 16) | (pre << 32) | (kind << 40) | ((uint64_t)base << 48);
    unsigned i = (unsigned)((uintptr_t)tp >> 5) & ((1u << TC_BITS) - 1); /* tslot */
    tcache[i].tp = tp;
    tcache[i].info = info;
    return info;
}

/* A sampled object whose size CPython writes after its creation event
 * (_PyObject_InitVar writes ob_size, PyUnicode_New a str's length and kind):
 * sized at the next event, before that event is handled (the GIL orders
 * events: nothing can have happened to it in between but a silent free, see
 * the top of the file). One slot for the process, protected by the GIL. */
static struct {
    void *op;
    uint64_t epoch; /* tl_unmap_epoch at creation */
    uint64_t info;  /* type_info */
    int have_loc;
    struct tl_pyloc loc;
    uint32_t path; /* its call path, read with loc (stacks.c) */
} pend;

static inline size_t str_size(const char *op)
{
    uint32_t state = AT(op, L.str_state, uint32_t);
    long len = AT(op, L.str_length, long);
    unsigned kind = (state >> L.str_kind_shift) & L.str_kind_mask;
    if (!((state >> L.str_compact_bit) & 1) || len < 0 || len > TL_SMALL_MAX || (kind != 1 && kind != 2 && kind != 4))
        return 0;
    return (((state >> L.str_ascii_bit) & 1) ? L.str_ascii_size : L.str_compact_size) + (size_t)(len + 1) * kind;
}

static __attribute__((noinline)) void settle_pending(void)
{
    void *op = pend.op;
    pend.op = NULL;
    /* Dropped: an munmap since (pymalloc may have given its arena back after a
     * silent free: not readable). Rare. */
    if (pend.epoch != __atomic_load_n(&tl_unmap_epoch, __ATOMIC_RELAXED))
        return;
    uint64_t info = pend.info;
    size_t charged = info & 0xffff, item = (info >> 16) & 0xffff, pre = (info >> 32) & 0xff, base = info >> 48;
    size_t size;
    if (item) {
        long n = AT(op, L.ob_size, long);
        if (n < 0)
            n = -n;
        if (n > TL_SMALL_MAX)
            return;
        size = base + item * (size_t)n;
    } else {
        size = str_size(op);
    }
    size = round8(size) + pre;
    if (size > TL_SMALL_MAX || size < charged)
        return; /* not a size it can have (or a raw block, the hooks'): drop the sample */
    if (pend.have_loc)
        record_object(op, size, charged, &pend.loc, pend.path);
}

/* A sampled object (or one whose block holds a stale sample): the slow part
 * of a creation event, out of line so that the fast path needs no frame. */
static __attribute__((noinline)) int create_slow(void *op, uint64_t info, size_t charged, int stale)
{
    if (tl_guard || !tl_active)
        return 0; /* inside the shim (or frozen): its own objects are not the program's */
    size_t pre = (info >> 32) & 0xff;
    if (!object_slow(op, charged, pre, stale))
        return 0;
    if (((info >> 40) & 0xff) != K_VAR) {
        record_object(op, charged, charged, NULL, TL_PATH_HERE);
        return 0;
    }
    /* Sampled, size not written yet. Not if it sits in the block the raw
     * domain just handed out (over 512 bytes: the hooks'; free() may unmap it
     * at once). Its line is read now. */
    if ((const char *)op - pre == (const char *)tl_last_raw)
        return 0;
    int guard = tl_guard;
    tl_guard = 1;
    pend.have_loc = tl_py_current(&pend.loc) > 0;
    pend.path = pend.have_loc ? tl_stack_here(&pend.loc) : 0;
    tl_guard = guard;
    pend.epoch = __atomic_load_n(&tl_unmap_epoch, __ATOMIC_RELAXED);
    pend.info = info;
    pend.op = op;
    obj_slow = 1;
    return 0;
}

static __attribute__((noinline)) int destroy_slow(void *op)
{
    if (tl_guard)
        return 0;
    tl_guard = 1;
    credit_if_sampled(op);
    tl_guard = 0;
    return 0;
}

/* The plain case of an event: active, outside the shim, nothing pending, the
 * type cached (slot I). A leaf: the slow parts are tail calls. The size
 * CPython asked the allocator for: tp_basicsize + tp_itemsize * |ob_size|
 * rounded to 8, plus the GC and managed pre-headers; an int 24 + 4 * ndigits
 * (its lv_tag, written before the event); a str its compact struct +
 * (length + 1) * kind (VAR: charged at the least now, its true size read at
 * the next event when sampled). */
static inline int handle(void *op, int event, unsigned i)
{
    if (event != EV_CREATE) {
        if (TL_UNLIKELY(tl_maybe_sampled(op, 1)))
            return destroy_slow(op);
        return 0;
    }
    uint64_t info = tcache[i].info;
    unsigned kind = (unsigned)(info >> 40) & 0xff;
    size_t charged = info & 0xffff;
    if (TL_UNLIKELY(kind == K_LONG)) {
        uintptr_t ndigits = AT(op, L.ob_size, uintptr_t) >> 3;
        charged = round8(24 + 4 * (ndigits ? (size_t)ndigits : 1));
        if (charged > TL_SMALL_MAX)
            return 0;
    } else if (TL_UNLIKELY(kind == K_NONE)) {
        return 0; /* bigger than pymalloc's blocks: a raw block, counted by the hooks */
    }
    int stale = tl_maybe_sampled((const char *)op - ((info >> 32) & 0xff), 1);
    tl_gap -= (int64_t)charged;
    if (TL_UNLIKELY(stale) | TL_UNLIKELY(tl_gap <= 0))
        return create_slow(op, info, charged, stale);
    return 0;
}

static inline unsigned tslot(const void *tp)
{
    return (unsigned)((uintptr_t)tp >> 5) & ((1u << TC_BITS) - 1);
}

/* Non-zero while the tracer we chain to runs on this thread. A tracer installed
 * after ours that chains back to us would call us again for the same event:
 * that call returns at once (see tl_objects_watch). Per thread: CPython's tracer
 * is the runtime's, and a subinterpreter with a GIL of its own calls it beside
 * the main interpreter's thread. */
static TL_TLS int chaining;

static int call_prev(void *op, int event)
{
    if (!prev_tracer)
        return 0;
    chaining = 1;
    int r = prev_tracer(op, event, prev_data);
    chaining = 0;
    return r;
}

/* Everything but the plain case: not active, inside the shim, a pending
 * object to size, a tracer to chain, an uncached type. */
static __attribute__((noinline)) int tracer_slow(void *op, int event)
{
    if (chaining)
        return 0; /* our own event, back through a tracer that chains to us */
    if (!tl_active || tl_guard) {
        if (pend.op == op)
            pend.op = NULL; /* going away while we do not look: never read it */
    } else {
        if (pend.op)
            settle_pending(); /* first: a DESTROY of it finds it counted (and maybe sampled) */
        if (event == EV_CREATE) {
            const char *tp = AT(op, L.ob_type, const char *);
            unsigned i = tslot(tp);
            if (tcache[i].tp != tp)
                type_info(tp);
            handle(op, event, i);
        } else if (event == EV_DESTROY && tl_maybe_sampled(op, 1)) {
            destroy_slow(op);
        }
    }
    obj_slow = pend.op != NULL || prev_tracer != NULL || !tl_active;
    return call_prev(op, event);
}

/* CPython calls this for every object it creates or destroys (GIL held). */
static int tracer(void *op, int event, void *data)
{
    (void)data;
#ifdef TL_TRACER_NOP /* measuring: what CPython's calls alone cost */
    (void)op;
    (void)event;
    return 0;
#endif
    /* A subinterpreter with a GIL of its own (3.12+) runs beside ours: the
     * pending slot, the type cache and the GIL counters are the main GIL's, so
     * its objects are left alone (passed on to any previous tracer). */
    if (TL_UNLIKELY(!tl_py_gil_exclusive()))
        return chaining ? 0 : call_prev(op, event);
    /* The fast path does not look at the guard: inside the shim it would only
     * move the gap; every slow part checks it. */
    if (event != EV_CREATE) {
        if (TL_UNLIKELY(obj_slow))
            return tracer_slow(op, event);
        if (TL_UNLIKELY(tl_maybe_sampled(op, 1)))
            return destroy_slow(op);
        return 0;
    }
    const char *tp = *(const char *const *)((const char *)op + TL_OB_TYPE); /* alive */
    unsigned i = tslot(tp);
    if (TL_UNLIKELY(obj_slow) | TL_UNLIKELY(tcache[i].tp != tp))
        return tracer_slow(op, event);
    return handle(op, event, i);
}

int tl_objects_install(void)
{
    if (tl_cfg.small_objects == 0 || tl_py_version_hex() < 0x030d0000 || tl_py_free_threaded() ||
        !tl_py_object_layout(&L))
        return 0;
    set_tracer = (int (*)(tl_reftracer, void *))tl_py_sym("PyRefTracer_SetTracer");
    get_tracer = (tl_reftracer(*)(void **))tl_py_sym("PyRefTracer_GetTracer");
    if (!set_tracer || !get_tracer)
        return 0;
    prev_tracer = get_tracer(&prev_data);
    if (prev_tracer == tracer)
        prev_tracer = NULL;
    if (L.ob_type != TL_OB_TYPE || set_tracer(tracer, NULL) != 0)
        return 0;
    obj_slow = 1;
    installed = 1;
    __atomic_or_fetch(&tl_hdr->flags, TL_FLAG_OBJECTS, __ATOMIC_RELAXED);
    return 1;
}

/* At the exit table: the interpreter tears everything down next; give the
 * tracer back (only if nobody replaced ours since). */
void tl_objects_uninstall(void)
{
    if (tl_small_pend)
        tl_small_pend_check();
    if (!installed)
        return;
    installed = 0;
    pend.op = NULL;
    void *d;
    if (get_tracer(&d) == tracer)
        set_tracer(prev_tracer, prev_data);
}

/* ---- another tool takes the tracer ------------------------------------------
 * CPython keeps one reference tracer. tracemalloc.start() (3.13+) sets its own
 * without chaining to ours, and tracemalloc.stop() leaves it there: ours would
 * hear of no destruction from then on, and every object sampled before would
 * stay live - a false leak at healthy lines. So each sample looks whether ours
 * is still the one (a call that reads two words of _PyRuntime); when it is
 * not, a pending call (run by the main thread with the GIL, like the tracer)
 * puts ours back in front, chained to the newcomer, which keeps working.
 * Objects destroyed between the two are missed (their samples stay live). */
static int rechain_queued;

static int rechain(void *arg)
{
    (void)arg;
    __atomic_store_n(&rechain_queued, 0, __ATOMIC_RELEASE);
    if (!installed)
        return 0;
    void *d;
    tl_reftracer cur = get_tracer(&d);
    if (cur == tracer)
        return 0;
    prev_tracer = cur;
    prev_data = d;
    obj_slow = 1;
    if (set_tracer(tracer, NULL) != 0) {
        installed = 0;
        tl_say("could not take CPython's reference tracer back from another tool; small objects are no "
               "longer tracked");
    }
    return 0;
}

void tl_objects_watch(void)
{
    void *d;
    if (!installed || get_tracer(&d) == tracer)
        return;
    if (!__atomic_exchange_n(&rechain_queued, 1, __ATOMIC_ACQ_REL) && tl_py_schedule(rechain, NULL) != 0)
        __atomic_store_n(&rechain_queued, 0, __ATOMIC_RELEASE);
}

/* ---- 3.9-3.12: the freelist flag -------------------------------------------
 * In small-object mode pymalloc's object domain is wrapped and small blocks
 * sampled. A sampled block's type is read at the next sample (by then CPython
 * has initialised it; its free would clear the pending pointer first, so the
 * block is alive when read) or at the exit table. Only compared against the
 * freelist types' addresses, never followed. */
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
