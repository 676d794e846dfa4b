/* SPDX-License-Identifier: MIT
 * tl_internal.h - declarations shared by the shim's source files (not installed).
 *
 * Module map:
 *   hooks_libc.c   malloc-family interposers, dlsym bootstrap, _exit hook
 *   hooks_dl.c     dlsym/dlvsym interposers: allocator lookups through handles
 *   hooks_pymem.c  PyMem_SetAllocator wrappers (raw, mem, object domains)
 *   objects.c      small objects: CPython 3.13+'s reference tracer; freelist flag (3.9-3.12)
 *   pyframe.c      CPython runtime discovery; own thread's frame -> (code, offset); names
 *   recorder.c     reentrancy guard, byte-weighted sampling, site table, sampled live set
 *   shm_table.c    the memfd segment (layout in include/trackleak_shm.h), fork handling
 *   dumper.c       text table, JSON lines, event log; scheduling; never inside malloc
 *   config.c       environment parsing, banner, one-time warnings
 */
#ifndef TL_INTERNAL_H
#define TL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "trackleak_shm.h"

#define TL_LIKELY(x) __builtin_expect(!!(x), 1)
#define TL_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TL_HIDDEN __attribute__((visibility("hidden")))
#define TL_EXPORT __attribute__((visibility("default")))
#define TL_TLS __thread __attribute__((tls_model("initial-exec")))

/* ---- config.c ---------------------------------------------------------- */
/* pymalloc serves requests <= 512 bytes in 16-byte classes. Auto mode wraps
 * its domains when the minimum size leaves more than its top class (497-512)
 * to track; at the original default (500) it would add only that class. */
#define TL_PYMALLOC_AUTO_MAX 496
struct tl_config {
    unsigned dump_interval;  /* s */
    unsigned sample_rate;    /* TRACKLEAK_SAMPLE_RATE: 1 = every allocation */
    uint64_t sample_interval;/* mean bytes between samples (agent/sampling.py): TRACKLEAK_SAMPLE_BYTES,
                                else sample_rate KiB; 0 when sample_rate is 1 (exhaustive) */
    size_t min_size;         /* bytes */
    unsigned max_sites;      /* site records in the shared table (TRACKLEAK_MAX_SITES) */
    unsigned startup_delay;  /* s */
    int events;              /* MEMORY_PROFILER_EVENTS */
    int quiet;               /* TRACKLEAK_QUIET */
    int pymalloc;            /* wrap pymalloc's domains: TRACKLEAK_PYMALLOC, or
                                auto: when min_size <= TL_PYMALLOC_AUTO_MAX */
    int small_objects;       /* TRACKLEAK_SMALL_OBJECTS: -1 auto (the reference tracer where CPython
                                has one, 3.13+), 1 also on 3.9-3.12 (pymalloc wrapped, sampled), 0 off */
    char log_dir[512];       /* resolved at init; "" when file logging is off */
    char json_log[128];      /* text table file name (original name) */
    char jsonl_log[136];     /* JSON lines file name */
    char event_log[128];
};
extern struct tl_config tl_cfg TL_HIDDEN;
void tl_config_load(void) TL_HIDDEN;
/* TRACKLEAK_HANDOFF: the Unix datagram socket `trackleak run` listens on for
 * the descriptors of the tables (shm_table.c). "" when unset or refused. The
 * path must fit sockaddr_un through /proc/self/fd/N/ (see shm_table.c). */
#define TL_HANDOFF_PATH_MAX 108 /* sizeof(sun_path), NUL included */
#define TL_HANDOFF_NAME_MAX 64  /* the socket's own name (after the last '/') */
extern char tl_handoff_path[TL_HANDOFF_PATH_MAX] TL_HIDDEN;
void tl_banner(void) TL_HIDDEN;
/* One line on stderr, written with write(2); never allocates. */
void tl_say(const char *fmt, ...) TL_HIDDEN __attribute__((format(printf, 1, 2)));

struct tl_pyloc; /* pyframe.c */
/* ---- recorder.c -------------------------------------------------------- */
/* The per-thread reentrancy guard. initial-exec TLS: the shim is loaded at
 * start-up (LD_PRELOAD), so its TLS lives in the static block and reading it
 * never calls __tls_get_addr, which may itself call malloc. Non-zero means
 * "this thread is inside the shim": allocator calls pass straight through. */
extern TL_TLS int tl_guard;

extern volatile int tl_active TL_HIDDEN;   /* start-up delay over, tracking on */
extern volatile int tl_disabled TL_HIDDEN; /* gave up: pass-through only */
extern pid_t tl_owner_pid TL_HIDDEN;

void tl_recorder_init(void) TL_HIDDEN;
void tl_check_active(void) TL_HIDDEN;
void tl_freeze(void) TL_HIDDEN; /* stop counting; the table keeps its state */
/* A block came back from the allocator. Caller holds the guard. */
/* gil: the caller holds the GIL (PyMem/PyObject domains), so counters of the
 * site can be bumped without a locked instruction. */
void tl_record_alloc(void *p, size_t size, void *ret_addr, int gil) TL_HIDDEN;
/* Small blocks and objects are counted only when sampled (the per-thread gap
 * below is the one tl_record_alloc uses: one byte stream per thread).
 * tl_sample_hit: the gap ran out on SIZE bytes; 1 when they are sampled.
 * tl_record_sampled: count the sample (weights into COUNT/TOTAL); loc NULL:
 * read the frame now, RA names a native site. Caller holds the guard. */
extern TL_TLS int64_t tl_gap;
int tl_sample_hit(size_t size) TL_HIDDEN;
/* CHARGED: the bytes the sampling decision was made on when fewer than SIZE
 * (0: SIZE); the weights follow it (objects.c: a size learnt later). */
struct tl_site *tl_record_sampled(void *p, size_t size, size_t charged, const struct tl_pyloc *loc, void *ra,
                                  int gil) TL_HIDDEN;
/* Remove p from the sampled live set before the block is released.
 * Returns 1 and the entry (opaque) when p was sampled. */
int tl_take(void *p, uint64_t *entry, int gil) TL_HIDDEN;
void tl_put_back(void *p, uint64_t entry, int gil) TL_HIDDEN;
void tl_credit_free(void *p, uint64_t entry, int gil) TL_HIDDEN;
void tl_recorder_after_fork_child(void) TL_HIDDEN;

/* ---- pyframe.c --------------------------------------------------------- */
struct tl_pyloc {
    uintptr_t code;    /* code object address */
    uint32_t offset;   /* byte offset of the allocating instruction */
    uint32_t fp;       /* fingerprint of the code object (detects address reuse) */
};
void tl_py_discover(void) TL_HIDDEN;   /* constructor: find CPython symbols */
int tl_py_present(void) TL_HIDDEN;     /* a CPython runtime is linked in */
int tl_py_current(struct tl_pyloc *loc) TL_HIDDEN; /* 1: Python frame; 0: none; -1: finalizing */
void tl_py_describe(const struct tl_pyloc *loc, struct tl_site *site) TL_HIDDEN;
const char *tl_py_version_str(void) TL_HIDDEN;
uint32_t tl_py_version_hex(void) TL_HIDDEN;
int tl_py_schedule(int (*fn)(void *), void *arg) TL_HIDDEN; /* Py_AddPendingCall */
int tl_py_initialized(void) TL_HIDDEN;
void tl_py_mark_up(void) TL_HIDDEN;     /* the interpreter finished starting */
int tl_py_finalizing(void) TL_HIDDEN;   /* it was up and is now shutting down */
int tl_py_free_threaded(void) TL_HIDDEN; /* a --disable-gil build (3.13t, 3.14t) */
const char *tl_py_layout_source(void) TL_HIDDEN; /* "debug-offsets", "table" or "none" */
/* Do the callers of the mem/object domains exclude each other (one GIL), so their counters
 * may be bumped without a locked instruction? Not in a free-threaded build; not for a thread
 * of a subinterpreter (3.12+: it may have its own GIL). Stable per thread: a main-interpreter
 * thread always gets 1 (GIL builds), a subinterpreter's always 0, so a block is looked up in
 * the live set it was put in. */
extern int tl_py_gil_one TL_HIDDEN;
extern void *const volatile *tl_py_interp_head TL_HIDDEN; /* &_PyRuntime.interpreters.head */
extern void *tl_py_main_interp TL_HIDDEN;
int tl_py_current_interp_is_main(void) TL_HIDDEN;
static inline int tl_py_gil_exclusive(void)
{
    if (!tl_py_gil_one)
        return 0;
    if (TL_LIKELY(!tl_py_interp_head || *tl_py_interp_head == tl_py_main_interp))
        return 1;
    return tl_py_current_interp_is_main();
}
/* Where objects.c finds an object's size (CPython 3.13+): offsets into the
 * object, its type and a str; filled once by tl_py_object_layout (0: unknown). */
#define TL_SMALL_MAX 512 /* pymalloc's SMALL_REQUEST_THRESHOLD (3.9-3.13) */
struct tl_objlayout {
    size_t ob_type, ob_size, tp_basicsize, tp_itemsize, tp_flags;
    unsigned long gc_flag, preheader_flags;
    const void *str_type, *long_type;
    size_t str_state, str_length, str_ascii_size, str_compact_size;
    unsigned str_kind_shift, str_kind_mask, str_compact_bit, str_ascii_bit;
};
int tl_py_object_layout(struct tl_objlayout *l) TL_HIDDEN;
void *tl_py_sym(const char *name) TL_HIDDEN; /* dlsym(RTLD_DEFAULT) */

/* ---- hooks_libc.c / hooks_dl.c ------------------------------------------ */
/* found: what the real dlsym returned for name. The shim's own function when
 * name is one the shim interposes and found is the very function it wraps
 * (its dlsym(RTLD_NEXT) result); found itself otherwise. */
void *tl_libc_swap(const char *name, void *found) TL_HIDDEN;
/* Find the C library's dlsym/dlvsym (hooks_dl.c); idempotent, never allocates. */
void tl_dl_init(void) TL_HIDDEN;
extern volatile uint64_t tl_unmap_epoch TL_HIDDEN; /* moved by every munmap through the PLT */

/* ---- hooks_pymem.c ----------------------------------------------------- */
extern volatile int tl_pymem_wanted TL_HIDDEN; /* set until the hooks are installed */
/* The block the raw domain last handed to this thread: pymalloc passes requests
 * over 512 bytes on to it, so an object created there is not pymalloc's (objects.c). */
extern TL_TLS void *tl_last_raw;
void tl_pymem_maybe_install(void) TL_HIDDEN;   /* cheap; from the libc hooks */

/* ---- objects.c ---------------------------------------------------------- */
/* Called by the install pending call (GIL held): the reference tracer on
 * 3.13+ when TRACKLEAK_SMALL_OBJECTS allows. Returns 1 when installed. */
int tl_objects_install(void) TL_HIDDEN;
void tl_objects_uninstall(void) TL_HIDDEN; /* at the exit table (GIL held) */
void tl_objects_watch(void) TL_HIDDEN;     /* at each sample: ours still CPython's reference tracer? */
/* 3.9-3.12 small-object mode: a sampled pymalloc block whose type is only
 * known once CPython initialised it (at the next hook call of a GIL domain). */
extern void *volatile tl_small_pend TL_HIDDEN;
void tl_small_pend_set(void *p, size_t size, struct tl_site *s) TL_HIDDEN;
void tl_small_pend_check(void) TL_HIDDEN;

/* ---- shm_table.c ------------------------------------------------------- */
extern struct tl_shm_header *tl_hdr TL_HIDDEN;
extern struct tl_site *tl_sites TL_HIDDEN;
void tl_shm_init(void) TL_HIDDEN;
void tl_shm_after_fork_child(void) TL_HIDDEN;

/* ---- dumper.c ---------------------------------------------------------- */
void tl_dumper_init(void) TL_HIDDEN;
void tl_dump(const char *reason) TL_HIDDEN;       /* caller must not hold the guard */
void tl_dump_tick(void) TL_HIDDEN;                /* cheap: schedules a dump when due */
void tl_dump_at_exit(void) TL_HIDDEN;
void tl_dumper_after_fork_child(void) TL_HIDDEN;
void tl_event(int type, void *p, size_t size, uint32_t site) TL_HIDDEN;

/* ---- helpers ----------------------------------------------------------- */
uint64_t tl_now_ns(int clock) TL_HIDDEN;
static inline uint64_t tl_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* ---- shared by the libc and PyMem hooks ----------------------------------- */
/* Tail of every allocating hook: cheap checks first, the recorder under the guard. */
static inline void *tl_after_alloc(void *p, size_t size, void *ra, int gil)
{
    if (p && !tl_guard && size >= tl_cfg.min_size && !tl_disabled) {
        if (TL_UNLIKELY(!tl_active))
            tl_check_active();
        if (tl_active) {
            tl_guard = 1;
            tl_record_alloc(p, size, ra, gil);
            tl_guard = 0;
        }
    }
    return p;
}

/* The sample point falls on a small block or object of SIZE bytes (GIL held
 * or TLS only: no shared state). Cheap on purpose: one TLS subtract. */
static inline int tl_small_sampled(size_t size)
{
    tl_gap -= (int64_t)size;
    if (TL_LIKELY(tl_gap > 0))
        return 0;
    return tl_sample_hit(size);
}

/* Counting filter over the sampled live set: how many live samples hash to
 * each bucket. Zero (nearly every free) means "not sampled" without touching
 * the live set. Static, so it exists before the constructor runs. */
#define TL_FILTER_BITS 15
extern uint16_t tl_filter[2][1u << TL_FILTER_BITS] TL_HIDDEN; /* per live set, see recorder.c */
static inline uint16_t *tl_filter_slot(const void *p, int gil)
{
    /* Address-local: one bucket per 64-byte line of address space, so the
     * frees of one pool or heap run read the same few filter cache lines. */
    uint64_t a = (uint64_t)(uintptr_t)p;
    return &tl_filter[gil][((a >> 6) ^ (a >> 21) ^ (a >> 36)) & ((1u << TL_FILTER_BITS) - 1)];
}

/* Might p be a live sample? No means certainly not. */
static inline int tl_maybe_sampled(const void *p, int gil)
{
    return TL_UNLIKELY(__atomic_load_n(tl_filter_slot(p, gil), __ATOMIC_RELAXED) != 0);
}

/* Before a block is released: credit it if it was sampled. */
static inline void tl_before_free(void *p, int gil)
{
    uint64_t entry;
    if (tl_maybe_sampled(p, gil) && !tl_guard && tl_take(p, &entry, gil)) {
        tl_guard = 1;
        tl_credit_free(p, entry, gil);
        tl_guard = 0;
    }
}

#endif
