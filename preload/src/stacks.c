/* SPDX-License-Identifier: MIT
 * stacks.c - call stacks of sampled allocations (issue 9; layout in trackleak_shm.h).
 *
 * Only a sampled allocation pays: its thread's Python frames are walked (our
 * own thread's, as pyframe.c does for the site), each (code, offset) is
 * interned as a frame record whose names and line are resolved once, while
 * the code object is alive (the frame executing it holds it), and the
 * sequence of frame numbers is interned as a path record. The path number
 * goes into the live-set entry, so the free credits the same path.
 *
 * Both tables live in the shared segment after the site records and are
 * bounded (TRACKLEAK_MAX_STACKS paths and as many frames). Records are never
 * given back: a path's frame numbers stay valid for the table's life, and the
 * site table's reclaim never touches them. A full table (or a neighbourhood
 * of the private index that is full) drops the path: header.dropped_stacks;
 * the sample still counts on its site.
 *
 * Lock-free like the site index (recorder.c): take a record with a CAS on the
 * shared count, fill it, publish state READY, then CAS it into the private
 * index. Two threads interning the same path at once may both fill a record;
 * the loser marks its own TL_SITE_FREE (readers skip it). No malloc; fork()
 * keeps both (the child's copy, counters zeroed: shm_table.c).
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>

#include "tl_internal.h"

struct tl_frame *tl_frames;
char *tl_stacks;

/* Linear probing at a load of at most 1/4 (the indexes have 4 slots per record): a run of 32
 * occupied slots, where a path would be dropped, has a chance of ~1e-9 per insert. */
#define PROBE 32
static uint64_t *frame_index; /* (hash32 << 32) | (record + 1); 0 empty */
static uint64_t *path_index;
static unsigned frame_bits, path_bits;

/* Per-thread cache of frame lookups: a loop samples from the same few frames. */
#define FCACHE 64
static TL_TLS struct {
    uint64_t addr, aux;
    uint32_t rec1; /* record + 1; 0 empty */
} fcache[FCACHE];

/* The thread's last path: a loop samples through the same frames again and again (exhaustive
 * mode samples every allocation), and comparing the walk with it is cheaper than interning. */
static TL_TLS struct {
    int n, truncated;
    uint32_t path; /* 0: none yet */
    struct tl_pyloc locs[TL_STACK_DEPTH_MAX];
} last;

static inline struct tl_stack *stack_at(uint32_t rec)
{
    return (struct tl_stack *)(tl_stacks + (size_t)rec * tl_hdr->stack_size);
}

static void *map_anon(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void tl_stacks_init(void)
{
    if (!tl_hdr || !tl_hdr->stack_capacity || !tl_hdr->frame_capacity || !tl_frames || !tl_stacks)
        return;
    for (frame_bits = 8; ((size_t)1 << frame_bits) < (size_t)tl_hdr->frame_capacity * 4; frame_bits++)
        ;
    for (path_bits = 8; ((size_t)1 << path_bits) < (size_t)tl_hdr->stack_capacity * 4; path_bits++)
        ;
    frame_index = map_anon(sizeof(uint64_t) << frame_bits);
    path_index = map_anon(sizeof(uint64_t) << path_bits);
    if (!frame_index || !path_index) {
        tl_say("cannot map its stack index (out of memory?); call stacks are off for this process");
        tl_hdr->stack_capacity = 0; /* (before any reader can rely on it: the constructor) */
        frame_index = path_index = NULL;
    }
}

/* Take a record number from a shared count bounded by CAP; -1 when full. */
static int64_t take_record(uint32_t *count, uint32_t cap)
{
    uint32_t n = __atomic_load_n(count, __ATOMIC_RELAXED);
    do {
        if (n >= cap)
            return -1;
    } while (!__atomic_compare_exchange_n(count, &n, n + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return n;
}

/* The frame record of LOC; -1 when it cannot have one. */
static int64_t frame_intern(const struct tl_pyloc *loc)
{
    uint64_t addr = loc->code, aux = ((uint64_t)loc->fp << 32) | loc->offset;
    unsigned c = (unsigned)((addr >> 4) ^ (addr >> 12) ^ aux ^ (aux >> 7)) & (FCACHE - 1);
    if (fcache[c].rec1 && fcache[c].addr == addr && fcache[c].aux == aux)
        return fcache[c].rec1 - 1;
    uint64_t h = tl_mix64(addr ^ (aux * 0x9e3779b97f4a7c15ull) ^ 0x5f);
    uint32_t tag = (uint32_t)(h >> 32);
    size_t mask = ((size_t)1 << frame_bits) - 1;
    int64_t mine = -1;
    for (int i = 0; i < PROBE; i++) {
        uint64_t *slot = &frame_index[(h + (uint64_t)i) & mask];
        uint64_t w = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (w == 0) {
            if (mine < 0) {
                mine = take_record(&tl_hdr->frame_count, tl_hdr->frame_capacity);
                if (mine < 0)
                    return -1;
                struct tl_frame *f = &tl_frames[mine];
                f->key_addr = addr;
                f->key_aux = aux;
                tl_py_describe_to(loc, f->function, f->file, &f->line);
                __atomic_store_n(&f->state, TL_SITE_READY, __ATOMIC_RELEASE);
            }
            uint64_t expect = 0, want = ((uint64_t)tag << 32) | (uint64_t)(mine + 1);
            if (__atomic_compare_exchange_n(slot, &expect, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                goto found;
            w = expect; /* another thread took the slot: is it this very key? */
        }
        if ((uint32_t)(w >> 32) != tag)
            continue;
        uint32_t rec = (uint32_t)w - 1;
        const struct tl_frame *f = &tl_frames[rec];
        if (f->key_addr == addr && f->key_aux == aux) {
            if (mine >= 0) /* made in a lost race */
                __atomic_store_n(&tl_frames[mine].state, TL_SITE_FREE, __ATOMIC_RELEASE);
            mine = rec;
            goto found;
        }
    }
    if (mine >= 0)
        __atomic_store_n(&tl_frames[mine].state, TL_SITE_FREE, __ATOMIC_RELEASE);
    return -1;
found:
    fcache[c].addr = addr;
    fcache[c].aux = aux;
    fcache[c].rec1 = (uint32_t)mine + 1;
    return mine;
}

static inline int same_path(const struct tl_stack *s, const uint32_t *fr, uint32_t n, uint32_t flags)
{
    return s->depth == n && s->flags == flags && memcmp(s->frames, fr, n * sizeof *fr) == 0;
}

/* The path record of FR[0..N) (+ 1); 0 when it cannot have one. */
static uint32_t path_intern(const uint32_t *fr, uint32_t n, uint32_t flags)
{
    uint64_t h = 0x243f6a8885a308d3ull ^ flags;
    for (uint32_t i = 0; i < n; i++)
        h = tl_mix64(h ^ fr[i]) + i;
    uint32_t tag = (uint32_t)(h >> 32);
    size_t mask = ((size_t)1 << path_bits) - 1;
    int64_t mine = -1;
    for (int i = 0; i < PROBE; i++) {
        uint64_t *slot = &path_index[(h + (uint64_t)i) & mask];
        uint64_t w = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (w == 0) {
            if (mine < 0) {
                mine = take_record(&tl_hdr->stack_count, tl_hdr->stack_capacity);
                if (mine < 0)
                    return 0;
                struct tl_stack *s = stack_at((uint32_t)mine);
                s->depth = n;
                s->flags = flags;
                s->hash = tag;
                memcpy(s->frames, fr, n * sizeof *fr);
                __atomic_store_n(&s->state, TL_SITE_READY, __ATOMIC_RELEASE);
            }
            uint64_t expect = 0, want = ((uint64_t)tag << 32) | (uint64_t)(mine + 1);
            if (__atomic_compare_exchange_n(slot, &expect, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                return (uint32_t)mine + 1;
            w = expect;
        }
        if ((uint32_t)(w >> 32) != tag)
            continue;
        uint32_t rec = (uint32_t)w - 1;
        if (same_path(stack_at(rec), fr, n, flags)) {
            if (mine >= 0)
                __atomic_store_n(&stack_at((uint32_t)mine)->state, TL_SITE_FREE, __ATOMIC_RELEASE);
            return rec + 1;
        }
    }
    if (mine >= 0)
        __atomic_store_n(&stack_at((uint32_t)mine)->state, TL_SITE_FREE, __ATOMIC_RELEASE);
    return 0;
}

uint32_t tl_stack_here(const struct tl_pyloc *site)
{
    if (!path_index || !tl_cfg.stack_depth)
        return 0;
    struct tl_pyloc locs[TL_STACK_DEPTH_MAX];
    uint32_t fr[TL_STACK_DEPTH_MAX];
    int truncated;
    int depth = (int)(tl_cfg.stack_depth < TL_STACK_DEPTH_MAX ? tl_cfg.stack_depth : TL_STACK_DEPTH_MAX);
    int n = tl_py_stack(locs, depth, &truncated);
    if (n <= 0)
        return 0;
    /* The path's innermost frame is the site's own (a site read earlier, objects.c's
     * pending object, must not get another line's path). */
    if (site && (locs[0].code != site->code || locs[0].offset != site->offset || locs[0].fp != site->fp))
        return 0;
    if (last.path && last.n == n && last.truncated == truncated && memcmp(last.locs, locs, (size_t)n * sizeof *locs) == 0)
        return last.path;
    for (int i = 0; i < n; i++) {
        int64_t rec = frame_intern(&locs[i]);
        if (rec < 0) {
            __atomic_add_fetch(&tl_hdr->dropped_stacks, 1, __ATOMIC_RELAXED);
            return 0;
        }
        fr[i] = (uint32_t)rec;
    }
    uint32_t path = path_intern(fr, (uint32_t)n, truncated ? TL_STACK_F_TRUNCATED : 0);
    if (!path) {
        __atomic_add_fetch(&tl_hdr->dropped_stacks, 1, __ATOMIC_RELAXED);
        return 0;
    }
    last.n = n;
    last.truncated = truncated;
    last.path = path;
    memcpy(last.locs, locs, (size_t)n * sizeof *locs);
    return path;
}

#define BUMP(s, field, v, gil)                                                                 \
    do {                                                                                       \
        uint64_t *f_ = &(s)->c[(gil) ? TL_C_GIL : TL_C_ATOMIC].field;                          \
        if (gil)                                                                               \
            __atomic_store_n(f_, __atomic_load_n(f_, __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED); \
        else                                                                                   \
            __atomic_add_fetch(f_, (v), __ATOMIC_RELAXED);                                     \
    } while (0)

void tl_stack_count(uint32_t path, uint64_t count_w, uint64_t bytes_w, int gil)
{
    if (!path || path > tl_hdr->stack_capacity)
        return;
    struct tl_stack *s = stack_at(path - 1);
    BUMP(s, est_count, count_w, gil);
    BUMP(s, est_bytes, bytes_w, gil);
}

void tl_stack_credit(uint32_t path, uint64_t count_w, uint64_t bytes_w, int gil)
{
    if (!path || path > tl_hdr->stack_capacity)
        return;
    struct tl_stack *s = stack_at(path - 1);
    BUMP(s, est_free_count, count_w, gil);
    BUMP(s, est_free_bytes, bytes_w, gil);
}
