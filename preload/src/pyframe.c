/* SPDX-License-Identifier: MIT
 * pyframe.c - the only file that knows CPython's structures.
 *
 * The shim links no libpython: it finds the runtime with dlsym(RTLD_DEFAULT)
 * (symbols of a shared libpython, or of a statically linked python binary),
 * picks the struct offsets for the running minor version from the table
 * generated from real interpreters (bpf/offsets/cpython.json), and reads its
 * own thread's frames without the GIL:
 *
 *   PyGILState_GetThisThreadState()  - the thread's state through the gilstate
 *       thread-specific key: set for the thread's whole life, unlike the
 *       "current" slot, which CPython clears whenever the thread releases the
 *       GIL (a C extension allocating outside the GIL still gets its line);
 *   tstate -> innermost frame -> (code object, instruction offset).
 *
 * Layouts: for 3.13+ the interpreter describes itself in _Py_DebugOffsets, at the
 * start of _PyRuntime (cookie "xdebugpy", PY_VERSION_HEX, free-threaded flag, then
 * the offsets): the fields it describes are read from there (the running build's
 * own values, a free-threaded build's too); the table (cpython.json) says where in
 * that struct each one is (its layout changes between minors) and gives what it does
 * not describe (the gilstate key's place, str state bits, frame owner values). A
 * version or build the table does not know gets one message and native rows.
 *
 * Only the owning thread pushes and pops its frames, and we run on that
 * thread, so the chain is stable while we read it. Names and the line number
 * are resolved once per new site (tl_py_describe): the code object is alive
 * then, because the frame executing it is.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tl_internal.h"
#include "trackleak_pyoffsets.h"

#define AT(base, off, type) (*(type *)((const char *)(base) + (off)))

static struct {
    int present;                        /* CPython symbols found */
    volatile int up;                    /* was initialized (finalization detection) */
    int have_key;                       /* tss_key valid: skip PyGILState_GetThisThreadState */
    pthread_key_t tss_key;              /* the gilstate key (fixed once the runtime is up) */
    const struct tl_pyoffsets *o;       /* NULL: version without offsets; else &layout */
    struct tl_pyoffsets layout;         /* the table's entry, debug offsets applied */
    const char *runtime;                /* &_PyRuntime */
    int free_threaded;                  /* a --disable-gil build */
    int debug_offsets;                  /* fields taken from _Py_DebugOffsets */
    uint32_t version_hex;
    char version[32];
    int (*is_initialized)(void);
    void *(*this_thread_state)(void);
    int (*addr2line)(void *code, int byte_offset);
    int (*add_pending_call)(int (*)(void *), void *);
    void *code_type;
    void *unicode_type;
    void *long_type;
} rt;

int tl_py_gil_one = 1;
void *const volatile *tl_py_interp_head;
void *tl_py_main_interp;

void *tl_py_sym(const char *name) { return dlsym(RTLD_DEFAULT, name); }

int tl_py_present(void) { return rt.present; }
int tl_py_free_threaded(void) { return rt.free_threaded; }
const char *tl_py_layout_source(void)
{
    return !rt.o ? "none" : rt.debug_offsets ? "debug-offsets" : "table";
}

/* A subinterpreter exists (3.12+: it may have its own GIL): is the calling thread's
 * current interpreter the main one? Its thread state is read through the unchecked
 * accessor (a thread-local read in CPython). */
static void *(*current_tstate)(void); /* found in tl_py_mark_up, before the hooks are installed */
int tl_py_current_interp_is_main(void)
{
    const char *ts = current_tstate ? current_tstate() : NULL;
    return ts && rt.o && AT(ts, rt.o->tstate_interp, void *) == tl_py_main_interp;
}
const char *tl_py_version_str(void) { return rt.present ? rt.version : NULL; }
uint32_t tl_py_version_hex(void) { return rt.version_hex; }
int tl_py_initialized(void) { return rt.present && rt.is_initialized(); }
/* Called from the install pending call (runtime up, GIL held): read the
 * gilstate key out of _PyRuntime once, so each allocation costs one
 * pthread_getspecific instead of three nested calls. */
void tl_py_mark_up(void)
{
    const char *runtime = rt.runtime;
    current_tstate = (void *(*)(void))dlsym(RTLD_DEFAULT, "PyThreadState_GetUnchecked"); /* 3.13+ */
    if (!current_tstate)
        current_tstate = (void *(*)(void))dlsym(RTLD_DEFAULT, "_PyThreadState_UncheckedGet");
    if (rt.o && runtime && rt.o->runtime_interpreters_head >= 0) {
        /* New interpreters are pushed at the head: while it is the main one, there is no
         * subinterpreter, and mem/object domain callers exclude each other (one GIL). */
        tl_py_main_interp = AT(runtime, rt.o->runtime_interpreters_head, void *);
        tl_py_interp_head = (void *const volatile *)(runtime + rt.o->runtime_interpreters_head);
    }
    if (rt.o && runtime && rt.o->runtime_autotsskey >= 0) {
        const char *tss = runtime + rt.o->runtime_autotsskey;
        if (AT(tss, 0, int) == 1) { /* Py_tss_t._is_initialized */
            rt.tss_key = AT(tss, rt.o->tss_key, pthread_key_t);
            /* Trust it only if it gives what CPython's own accessor gives. */
            rt.have_key = pthread_getspecific(rt.tss_key) == rt.this_thread_state();
        }
    }
    rt.up = 1;
}
int tl_py_finalizing(void) { return rt.up && !rt.is_initialized(); }

int tl_py_schedule(int (*fn)(void *), void *arg)
{
    if (!rt.present || !rt.add_pending_call || !rt.is_initialized())
        return -1;
    return rt.add_pending_call(fn, arg);
}

/* "3.9 to 3.15, 3.13t": the keys of the table, for the messages. */
static void supported(char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < TL_PYOFFSETS_COUNT && n + 16 < cap; i++) {
        const struct tl_pyoffsets *e = &tl_pyoffsets_table[i];
        n += (size_t)snprintf(buf + n, cap - n, "%s%d.%d%s", n ? ", " : "", e->major, e->minor,
                              e->free_threaded ? "t" : "");
    }
}

/* The interpreter's _Py_DebugOffsets header: 1 when present and of this version. */
static int debug_header(int major, int minor, int *free_threaded)
{
    /* cookie, version and free_threaded open the struct in every minor that has it (3.13+;
     * the table's debug.version / debug.free_threaded say 8 and 16) */
    if (!rt.runtime || rt.version_hex < 0x030D0000 || memcmp(rt.runtime, "xdebugpy", 8) != 0)
        return 0;
    uint64_t v = AT(rt.runtime, 8, uint64_t);
    if ((int)(v >> 24) != major || (int)((v >> 16) & 0xff) != minor)
        return 0;
    *free_threaded = AT(rt.runtime, 16, uint64_t) != 0;
    return 1;
}

static void find_layout(int major, int minor)
{
    char known[160];
    int ft = 0;
    int have_debug = debug_header(major, minor, &ft);
    rt.free_threaded = ft;
    if (ft)
        tl_py_gil_one = 0; /* no GIL: no caller of any domain excludes another */
    const struct tl_pyoffsets *e = tl_pyoffsets_find(major, minor, ft);
    if (!e) {
        supported(known, sizeof known);
        if (ft)
            tl_say("Python %st (free-threaded) is not supported: this TrackLeak has no layout for it "
                   "(supported: %s); allocations are attributed to native code, not to Python lines",
                   rt.version, known);
        else if (rt.version_hex >= 0x030D0000 && !have_debug)
            tl_say("Python %s has no frame layout in this build (supported: %s) and describes none "
                   "itself (no _Py_DebugOffsets); allocations are attributed to native code, not to "
                   "Python lines",
                   rt.version, known);
        else
            tl_say("Python %s has no frame layout in this build (supported: %s); allocations are "
                   "attributed to native code, not to Python lines",
                   rt.version, known);
        return;
    }
    rt.layout = *e;
    if (have_debug) {
        /* Each field the interpreter describes, from its own _Py_DebugOffsets; a field the
         * table says this build lacks (-1: e.g. tlbc_index, 0 there without free threading)
         * stays absent. */
        for (int i = 0; i < TL_PYOFFSETS_DEBUG_COUNT; i++) {
            int *field = (int *)((char *)&rt.layout + tl_pyoffsets_debug_map[i].field);
            int position = *(const int *)((const char *)e + tl_pyoffsets_debug_map[i].position);
            if (position < 0 || *field < 0)
                continue;
            uint64_t v = AT(rt.runtime, position, uint64_t);
            if (v > (1u << 20)) {
                tl_say("Python %s: implausible _Py_DebugOffsets (%llu at byte %d); allocations are "
                       "attributed to native code, not to Python lines",
                       rt.version, (unsigned long long)v, position);
                return;
            }
            *field = (int)v;
        }
        rt.debug_offsets = 1;
    } else if (rt.version_hex >= 0x030D0000) {
        tl_say("Python %s: no _Py_DebugOffsets found; using the built-in table", rt.version);
    }
    rt.o = &rt.layout;
}

void tl_py_discover(void)
{
    rt.is_initialized = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    rt.this_thread_state = (void *(*)(void))dlsym(RTLD_DEFAULT, "PyGILState_GetThisThreadState");
    rt.addr2line = (int (*)(void *, int))dlsym(RTLD_DEFAULT, "PyCode_Addr2Line");
    rt.add_pending_call = (int (*)(int (*)(void *), void *))dlsym(RTLD_DEFAULT, "Py_AddPendingCall");
    rt.code_type = dlsym(RTLD_DEFAULT, "PyCode_Type");
    rt.unicode_type = dlsym(RTLD_DEFAULT, "PyUnicode_Type");
    rt.long_type = dlsym(RTLD_DEFAULT, "PyLong_Type");
    if (!rt.is_initialized || !rt.this_thread_state || !rt.addr2line || !rt.code_type || !rt.unicode_type)
        return; /* not a Python process (or an embedding we cannot see) */
    rt.present = 1;

    /* Py_Version (3.11+) is a constant; older versions only have
     * Py_GetVersion(), which formats into a static buffer. */
    const unsigned long *pv = dlsym(RTLD_DEFAULT, "Py_Version");
    int major = 0, minor = 0, micro = 0;
    if (pv) {
        rt.version_hex = (uint32_t)*pv;
        major = (int)(rt.version_hex >> 24);
        minor = (int)((rt.version_hex >> 16) & 0xff);
        micro = (int)((rt.version_hex >> 8) & 0xff);
    } else {
        const char *(*get_version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "Py_GetVersion");
        if (get_version && sscanf(get_version(), "%d.%d.%d", &major, &minor, &micro) >= 2)
            rt.version_hex = ((uint32_t)major << 24) | ((uint32_t)minor << 16) | ((uint32_t)micro << 8);
    }
    snprintf(rt.version, sizeof rt.version, "%d.%d.%d", major, minor, micro);
    rt.runtime = dlsym(RTLD_DEFAULT, "_PyRuntime");
    find_layout(major, minor);
}

/* Distinguishes a code object from one allocated later at the same address
 * (names are interned strings, so their addresses identify them). Cheap on
 * purpose: it is computed for every tracked allocation. */
static inline uint32_t code_fingerprint(const char *code, const struct tl_pyoffsets *o)
{
    uint64_t x = AT(code, o->code_co_name, uintptr_t) ^ (AT(code, o->code_co_filename, uintptr_t) << 9) ^
                 ((uint64_t)AT(code, o->code_co_firstlineno, int) << 40);
    return (uint32_t)(x >> 4) ^ (uint32_t)(x >> 36);
}

/* The calling thread's innermost frame (NULL: none). */
static inline const char *top_frame(const struct tl_pyoffsets *o)
{
    const char *ts = rt.have_key ? pthread_getspecific(rt.tss_key) : rt.this_thread_state();
    if (!ts)
        return NULL;
    if (o->tstate_frame >= 0)
        return AT(ts, o->tstate_frame, const char *);
    if (o->tstate_cframe >= 0) {
        const char *cframe = AT(ts, o->tstate_cframe, const char *);
        return cframe ? AT(cframe, o->cframe_current_frame, const char *) : NULL;
    }
    return AT(ts, o->tstate_current_frame, const char *);
}

/* FRAME's (code, offset); 0 for a frame without code (C-stack or interpreter entry). */
static inline int frame_loc(const char *frame, const struct tl_pyoffsets *o, struct tl_pyloc *loc)
{
    if (o->frame_owner_cstack >= 0 && AT(frame, o->frame_owner, unsigned char) >= o->frame_owner_cstack)
        return 0; /* no code: a C-stack or interpreter entry frame (3.12+) */
    /* 3.14+: f_executable is a _PyStackRef, a pointer with tag bits */
    const char *code = (const char *)(AT(frame, o->frame_code, uintptr_t) & ~(uintptr_t)o->frame_code_tag_bits);
    if (!code || AT(code, o->object_ob_type, void *) != rt.code_type)
        return 0;
    long off;
    if (o->frame_lasti >= 0) {
        off = AT(frame, o->frame_lasti, int);
        if (o->frame_lasti_is_index == 1)
            off *= 2;
    } else {
        const char *bytecode = code + o->code_co_code_adaptive;
        if (o->frame_tlbc_index >= 0 && o->code_co_tlbc >= 0) {
            /* 3.14t: the thread may run its own copy of the bytecode, entries[tlbc_index]
             * of co_tlbc (a _PyCodeArray: Py_ssize_t size, char *entries[]) */
            int32_t index = AT(frame, o->frame_tlbc_index, int32_t);
            const char *array = AT(code, o->code_co_tlbc, const char *);
            if (array && index > 0 && index < AT(array, 0, long))
                bytecode = AT(array, 8 + 8 * (long)index, const char *);
        }
        off = AT(frame, o->frame_instr, const char *) - bytecode;
    }
    loc->code = (uintptr_t)code;
    loc->offset = off < 0 ? 0 : (uint32_t)off;
    loc->fp = code_fingerprint(code, o);
    return 1;
}

int tl_py_current(struct tl_pyloc *loc)
{
    const struct tl_pyoffsets *o = rt.o;
    if (!rt.present || !rt.is_initialized())
        return rt.up ? -1 : 0;
    if (!o)
        return 0;
    const char *frame = top_frame(o);
    for (int depth = 0; frame && depth < 16; depth++, frame = AT(frame, o->frame_previous, const char *))
        if (frame_loc(frame, o, loc))
            return 1;
    return 0;
}

/* The calling thread's Python frames, innermost first, at most MAX of them
 * (*truncated: it has more). Only the owning thread pushes and pops them and
 * we run on it, so the chain is stable while we read it; the walk is bounded
 * anyway (frames without code count against the bound too). Returns how
 * many; 0 without Python frames, -1 when the interpreter is finalizing. */
int tl_py_stack(struct tl_pyloc *out, int max, int *truncated)
{
    const struct tl_pyoffsets *o = rt.o;
    *truncated = 0;
    if (!rt.present || !rt.is_initialized())
        return rt.up ? -1 : 0;
    if (!o || max <= 0)
        return 0;
    const char *frame = top_frame(o);
    int n = 0;
    struct tl_pyloc extra;
    int steps = 0;
    for (; frame && steps < 4 * max + 64; steps++, frame = AT(frame, o->frame_previous, const char *)) {
        if (n < max) {
            n += frame_loc(frame, o, &out[n]);
        } else if (frame_loc(frame, o, &extra)) {
            *truncated = 1;
            break;
        }
    }
    if (frame && !*truncated)
        *truncated = 1; /* the bound stopped the walk: outer frames may be missing */
    return n;
}

/* Copy a str object's text as UTF-8 (compact strings only; CPython makes
 * every identifier and file name compact). keep_tail: cut at the front. */
static void copy_str(char *dst, size_t cap, const char *obj, int keep_tail)
{
    const struct tl_pyoffsets *o = rt.o;
    static const char unknown[] = "?";
    if (!obj || AT(obj, o->object_ob_type, void *) != rt.unicode_type) {
        memcpy(dst, unknown, sizeof unknown);
        return;
    }
    uint32_t state = AT(obj, o->unicode_state, uint32_t);
    long len = AT(obj, o->unicode_length, long);
    unsigned kind = (state >> o->unicode_state_kind_shift) & ((1u << o->unicode_state_kind_bits) - 1);
    if (!((state >> o->unicode_state_compact_bit) & 1) || len < 0 || (kind != 1 && kind != 2 && kind != 4)) {
        memcpy(dst, unknown, sizeof unknown);
        return;
    }
    int ascii = (state >> o->unicode_state_ascii_bit) & 1;
    const unsigned char *data =
        (const unsigned char *)obj + (ascii ? o->unicode_asciiobject_size : o->unicode_compact_size);
    char tmp[1024];
    size_t n = 0;
    long start = 0;
    if (keep_tail && len > (long)cap - 1)
        start = len - ((long)cap - 4);
    for (long i = start; i < len && n + 4 < sizeof tmp; i++) {
        uint32_t c = kind == 1 ? data[i] : kind == 2 ? ((const uint16_t *)data)[i] : ((const uint32_t *)data)[i];
        if (c < 0x80) {
            tmp[n++] = (char)c;
        } else if (c < 0x800) {
            tmp[n++] = (char)(0xc0 | (c >> 6));
            tmp[n++] = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            tmp[n++] = (char)(0xe0 | (c >> 12));
            tmp[n++] = (char)(0x80 | ((c >> 6) & 0x3f));
            tmp[n++] = (char)(0x80 | (c & 0x3f));
        } else {
            tmp[n++] = (char)(0xf0 | (c >> 18));
            tmp[n++] = (char)(0x80 | ((c >> 12) & 0x3f));
            tmp[n++] = (char)(0x80 | ((c >> 6) & 0x3f));
            tmp[n++] = (char)(0x80 | (c & 0x3f));
        }
    }
    size_t off = 0, prefix = 0;
    if (start > 0 || n > cap - 1) {
        /* Keep the tail of a long path, starting on a character boundary. */
        if (keep_tail) {
            memcpy(dst, "...", 3);
            prefix = 3;
            off = n > cap - 1 - prefix ? n - (cap - 1 - prefix) : 0;
            while (off < n && ((unsigned char)tmp[off] & 0xc0) == 0x80)
                off++;
        } else {
            n = cap - 1;
            while (n > 0 && ((unsigned char)tmp[n] & 0xc0) == 0x80)
                n--;
        }
    }
    memcpy(dst + prefix, tmp + off, n - off);
    dst[prefix + n - off] = '\0';
}

void tl_py_describe_to(const struct tl_pyloc *loc, char *function, char *file, uint32_t *line_out)
{
    const struct tl_pyoffsets *o = rt.o;
    const char *code = (const char *)loc->code;
    int qual = o->code_co_qualname >= 0 ? o->code_co_qualname : o->code_co_name;
    copy_str(function, TL_FUNC_MAX, AT(code, qual, const char *), 0);
    copy_str(file, TL_FILE_MAX, AT(code, o->code_co_filename, const char *), 1);
    /* PyCode_Addr2Line only reads the code object's immutable line table. */
    int line = rt.addr2line((void *)code, (int)loc->offset);
    *line_out = line > 0 ? (uint32_t)line : (uint32_t)AT(code, o->code_co_firstlineno, int);
}

void tl_py_describe(const struct tl_pyloc *loc, struct tl_site *site)
{
    tl_py_describe_to(loc, site->function, site->file, &site->line);
}

/* ---- object sizes (objects.c, CPython 3.13+) -----------------------------
 * What objects.c needs to size an object, read once. PyTypeObject's first
 * fields have had the same offsets since 3.8 on 64-bit builds (the test
 * test_type_object_offsets reads them back through ctypes on every local
 * interpreter); the str fields come from the generated per-version table. */
int tl_py_object_layout(struct tl_objlayout *l)
{
    const struct tl_pyoffsets *o = rt.o;
    if (!o || !rt.unicode_type || !rt.long_type)
        return 0;
    l->ob_type = (size_t)o->object_ob_type;
    l->ob_size = 16;      /* PyVarObject.ob_size; PyLongObject's lv_tag (3.12+) */
    l->tp_basicsize = 32;
    l->tp_itemsize = 40;
    l->tp_flags = 168;
    l->gc_flag = 1UL << 14;                 /* Py_TPFLAGS_HAVE_GC: a 16-byte GC header before */
    l->preheader_flags = (1UL << 3) | (1UL << 4); /* MANAGED_WEAKREF | MANAGED_DICT: 16 more */
    l->str_type = rt.unicode_type;
    l->long_type = rt.long_type;
    l->str_state = (size_t)o->unicode_state;
    l->str_length = (size_t)o->unicode_length;
    l->str_kind_shift = (unsigned)o->unicode_state_kind_shift;
    l->str_kind_mask = (1u << o->unicode_state_kind_bits) - 1;
    l->str_compact_bit = (unsigned)o->unicode_state_compact_bit;
    l->str_ascii_bit = (unsigned)o->unicode_state_ascii_bit;
    l->str_ascii_size = (size_t)o->unicode_asciiobject_size;
    l->str_compact_size = (size_t)o->unicode_compact_size;
    return 1;
}
