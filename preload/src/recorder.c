/* SPDX-License-Identifier: MIT
 * recorder.c - the part every hook calls: sampling, sites, the sampled live set.
 *
 * Lock-free throughout (CAS on fixed-size open-addressing tables), so a hook
 * can never deadlock, not even against a thread that fork() or a signal
 * interrupted half-way. Nothing here allocates through the hooked path.
 *
 * Site table: a private index (key -> site record number) over the shared
 * records in tl_sites. A site is keyed by the code object and the allocating
 * instruction's offset (Python) or the allocator's return address (native);
 * names and line are resolved once, when the key is first seen.
 *
 * Live set: the sampled blocks not yet freed, pointer -> (site, size). Probing
 * is bounded, so a lookup costs at most TL_PROBE slots; a free first checks a
 * small counting filter and usually stops there.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "tl_internal.h"

TL_TLS int tl_guard;
/* Sampling (agent/sampling.py): sample points fall on the stream of tracked bytes
 * with exponential gaps of mean tl_cfg.sample_interval. gap is the bytes this
 * thread may still allocate before the next point; rng is 0 until seeded (a new
 * thread, a forked child). */
TL_TLS int64_t tl_gap; /* shared with the inline fast path of small blocks and objects (tl_internal.h) */
static TL_TLS uint64_t rng;
static TL_TLS uint32_t tick_countdown; /* samples until this thread looks at the clock */

/* Per-thread cache in front of the site index: a loop allocates from the same
 * few instructions again and again. Entries point at site records, which are
 * never freed or moved (a forked child keeps them at the same address). */
#define TCACHE_SIZE 64
static TL_TLS struct {
    uint64_t addr, aux;
    struct tl_site *site;
} tcache[TCACHE_SIZE];
static TL_TLS uint64_t tcache_epoch; /* site_epoch when this thread's cache was last valid */

volatile int tl_active;
volatile int tl_disabled;
pid_t tl_owner_pid;
static volatile int initialized;
static uint64_t activate_at_ns;

#define TL_PROBE 16
static unsigned index_bits; /* site index slots: 2^index_bits >= 4x the site records */
#define LIVE_BITS 20  /* live-set slots */
#define TOMB ((uint64_t)1) /* freed; reusable */
#define BUSY ((uint64_t)2) /* being filled */
#define META_SITE_BITS 24
#define META_MAX_SIZE (((uint64_t)1 << (64 - META_SITE_BITS - 1)) - 1)
/* The size field of a sample (meta >> META_SITE_BITS): its bytes, or, with
 * META_CHARGED set, an object sampled on fewer bytes than it has (objects.c:
 * its size was not known yet): bits 0-31 its bytes, 32-38 the charged bytes / 8.
 * Its weights come from the charged size (what its inclusion probability was). */
#define META_CHARGED ((uint64_t)1 << (64 - META_SITE_BITS - 1))
static inline uint64_t field_bytes(uint64_t f)
{
    return (f & META_CHARGED) ? (f & 0xffffffffu) : f;
}

static uint64_t *site_index; /* (hash32 << 32) | (record + 1), 0 = empty, IDX_TOMB = removed */
#define IDX_TOMB UINT64_MAX

/* Making room (see "reclaim" below). Private to the process, like the index. */
static volatile uint64_t site_epoch;  /* bumped when records leave the index: caches drop them */
static uint32_t *free_ring;           /* given-back record numbers */
static uint64_t free_head, free_tail; /* consumers CAS head; the one reclaimer advances tail */
static uint64_t *idle_count;          /* per record: its count at the previous pass */
static volatile int reclaiming;       /* one pass at a time */
static uint64_t next_pass_ns;         /* passes are at least RECLAIM_GAP_NS apart */
static uint32_t pass_cursor;          /* where the next pass starts */
#define RECLAIM_GAP_NS 100000000ull   /* 100 ms between passes */
#define URGENT_GAP_NS 5000000ull      /* 5 ms when the table is full and a new site waits */
#define RECLAIM_CHUNK 8192u           /* records per pass: a pass costs ~100 us, wherever it runs */
struct live_slot {
    uint64_t key;  /* block address; 0 empty, 1 tombstone */
    uint64_t meta; /* size << 24 | site record */
};
/* Two live sets: [1] for blocks of the GIL domains (pymalloc's mem and object
 * domains: allocated and freed only by GIL holders, so plain loads and stores
 * suffice), [0] for everything else (any thread: compare-and-swap). A block
 * is freed through the domain that allocated it (C API contract), so each
 * sample is found in the set that holds it. */
static struct live_slot *live[2];
uint16_t tl_filter[2][1u << TL_FILTER_BITS];

uint64_t tl_now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *map_anon(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void tl_recorder_init(void)
{
    tl_owner_pid = getpid();
    for (index_bits = 10; ((size_t)1 << index_bits) < (size_t)tl_cfg.max_sites * 4; index_bits++)
        ;
    site_index = map_anon(sizeof(uint64_t) << index_bits);
    live[0] = map_anon(sizeof(struct live_slot) << LIVE_BITS);
    live[1] = map_anon(sizeof(struct live_slot) << LIVE_BITS);
    if (tl_hdr) {
        free_ring = map_anon(sizeof(uint32_t) * tl_hdr->site_capacity);
        idle_count = map_anon(sizeof(uint64_t) * tl_hdr->site_capacity);
    }
    if (!site_index || !live[0] || !live[1] || !tl_hdr || !free_ring || !idle_count) {
        tl_say("cannot map its tables (out of memory?); not tracking this process");
        tl_disabled = 1;
        return;
    }
    activate_at_ns = tl_now_ns(CLOCK_MONOTONIC_COARSE) + (uint64_t)tl_cfg.startup_delay * 1000000000ull;
    initialized = 1;
    tl_check_active();
}

void tl_check_active(void)
{
    if (!initialized || tl_disabled || tl_active)
        return;
    if (tl_cfg.startup_delay == 0 || tl_now_ns(CLOCK_MONOTONIC_COARSE) >= activate_at_ns) {
        __atomic_or_fetch(&tl_hdr->flags, TL_FLAG_ACTIVE, __ATOMIC_RELAXED);
        tl_active = 1;
    }
}

/* Py_FinalizeEx clears Py_IsInitialized() before it tears down modules, so
 * the first hook that sees it cleared stops counting: the exit table shows
 * what the program still held when it ended, not what finalization freed. */
void tl_freeze(void)
{
    tl_disabled = 1;
    tl_active = 0;
    __atomic_or_fetch(&tl_hdr->flags, TL_FLAG_FROZEN, __ATOMIC_RELAXED);
}

void tl_recorder_after_fork_child(void)
{
    tl_owner_pid = getpid();
    rng = 0; /* the parent's thread goes on drawing the same numbers: reseed */
    reclaiming = 0; /* a pass another thread was running is not running here */
    /* Blocks sampled before the fork belong to the parent's table (see
     * tl_shm_after_fork_child): forget them, their frees are not ours. */
    memset(tl_filter, 0, sizeof tl_filter);
    for (int g = 0; g < 2; g++)
        if (live[g] && mmap(live[g], sizeof(struct live_slot) << LIVE_BITS, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
            tl_disabled = 1;
}

/* ---- sites ---------------------------------------------------------------- */

static void site_describe_native(void *ra, struct tl_site *s)
{
    Dl_info info;
    const char *fn = NULL, *file = NULL;
    /* dladdr takes the loader's recursive lock and never calls malloc; we hold
     * no lock of ours here, so it cannot deadlock. */
    if (ra && dladdr(ra, &info)) {
        fn = info.dli_sname;
        file = info.dli_fname;
    }
    if (fn)
        strncpy(s->function, fn, TL_FUNC_MAX - 1);
    else if (file)
        snprintf(s->function, TL_FUNC_MAX, "[%s+0x%lx]", strrchr(file, '/') ? strrchr(file, '/') + 1 : file,
                 (unsigned long)((char *)ra - (char *)info.dli_fbase));
    else
        snprintf(s->function, TL_FUNC_MAX, "[0x%lx]", (unsigned long)ra);
    if (file && *file)
        strncpy(s->file, file, TL_FILE_MAX - 1);
    else
        strncpy(s->file, "[unknown]", TL_FILE_MAX - 1);
    s->line = 0;
}

static void reclaim_maybe(int urgent);

/* A given-back record number, or -1. */
static int64_t free_pop(void)
{
    uint64_t h = __atomic_load_n(&free_head, __ATOMIC_ACQUIRE);
    while (h < __atomic_load_n(&free_tail, __ATOMIC_ACQUIRE)) {
        uint32_t rec = __atomic_load_n(&free_ring[h % tl_hdr->site_capacity], __ATOMIC_RELAXED);
        if (__atomic_compare_exchange_n(&free_head, &h, h + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return rec;
    }
    return -1;
}

static struct tl_site *site_take(void)
{
    /* Record 0 is the "other sites" one (tl_shm_init): never handed out. */
    uint32_t cap = tl_hdr->site_capacity;
    uint32_t n = __atomic_load_n(&tl_hdr->site_count, __ATOMIC_RELAXED);
    if (n >= cap * 7 / 8)
        reclaim_maybe(0); /* running short: give back idle records (rate-limited) */
    int64_t rec = free_pop();
    if (rec < 0 && n >= cap) {
        reclaim_maybe(1); /* full: a site is waiting for a record now */
        rec = free_pop();
    }
    if (rec >= 0) {
        struct tl_site *s = &tl_sites[rec];
        __atomic_store_n(&s->state, TL_SITE_RESERVED, __ATOMIC_RELEASE);
        memset(s->c, 0, sizeof s->c);
        s->peak_single = 0;
        memset(s->function, 0, sizeof s->function);
        memset(s->file, 0, sizeof s->file);
        return s;
    }
    do {
        if (n >= cap)
            return NULL;
    } while (!__atomic_compare_exchange_n(&tl_hdr->site_count, &n, n + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return &tl_sites[n];
}

static struct tl_site *site_new(uint32_t kind, uint64_t addr, uint64_t aux, const struct tl_pyloc *loc, void *ra)
{
    struct tl_site *s = site_take();
    if (!s) {
        __atomic_add_fetch(&tl_hdr->dropped_sites, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    s->kind = kind;
    s->key_addr = addr;
    s->key_aux = aux;
    if (kind == TL_KIND_PYTHON)
        tl_py_describe(loc, s);
    else
        site_describe_native(ra, s);
    __atomic_store_n(&s->state, TL_SITE_READY, __ATOMIC_RELEASE);
    return s;
}

static inline uint64_t site_hash(uint32_t kind, uint64_t addr, uint64_t aux)
{
    return tl_mix64(addr ^ (aux * 0x9e3779b97f4a7c15ull) ^ kind);
}

static struct tl_site *site_lookup(uint32_t kind, uint64_t addr, uint64_t aux, const struct tl_pyloc *loc, void *ra)
{
    uint64_t h = site_hash(kind, addr, aux);
    uint32_t tag = (uint32_t)(h >> 32);
    size_t mask = ((size_t)1 << index_bits) - 1;
    struct tl_site *mine = NULL;
    uint64_t *tomb = NULL; /* first removed slot on the chain: reused for a new key */
    for (int i = 0; i <= TL_PROBE; i++) {
        uint64_t *slot = i < TL_PROBE ? &site_index[(h + (uint64_t)i) & mask] : NULL;
        uint64_t w = slot ? __atomic_load_n(slot, __ATOMIC_ACQUIRE) : 0;
        if (w == IDX_TOMB) {
            if (!tomb)
                tomb = slot;
            continue;
        }
        if (w == 0) {
            /* End of the chain: the key is not there. Take the first removed
             * slot, else this empty one (none left: the neighbourhood is full). */
            uint64_t *at = tomb ? tomb : slot;
            if (!at)
                break;
            if (!mine && !(mine = site_new(kind, addr, aux, loc, ra)))
                return NULL;
            uint64_t want = ((uint64_t)tag << 32) | (uint64_t)(mine - tl_sites + 1);
            uint64_t expect = tomb ? IDX_TOMB : 0;
            if (__atomic_compare_exchange_n(at, &expect, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                return mine;
            /* Another thread took that slot first: look again from the start
             * (it may have put this very key there). */
            tomb = NULL;
            i = -1;
            continue;
        }
        if ((uint32_t)(w >> 32) != tag)
            continue;
        struct tl_site *s = &tl_sites[(uint32_t)w - 1];
        /* key_aux carries the code object's fingerprint, so a code object
         * freed and replaced at the same address is a different key. */
        if (s->key_addr == addr && s->key_aux == aux && s->kind == kind) {
            if (mine) /* made in a lost race: give it back as an empty record */
                __atomic_store_n(&mine->state, TL_SITE_RETIRED, __ATOMIC_RELEASE);
            return s;
        }
    }
    /* Neighbourhood full: count the loss instead of guessing a site. */
    if (mine)
        __atomic_store_n(&mine->state, TL_SITE_RETIRED, __ATOMIC_RELEASE);
    __atomic_add_fetch(&tl_hdr->dropped_sites, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* Take record REC out of the index (the reclaimer only). */
static void index_remove(const struct tl_site *s, uint32_t rec)
{
    uint64_t h = site_hash(s->kind, s->key_addr, s->key_aux);
    uint64_t want = ((uint64_t)(uint32_t)(h >> 32) << 32) | (uint64_t)(rec + 1);
    size_t mask = ((size_t)1 << index_bits) - 1;
    for (int i = 0; i < TL_PROBE; i++) {
        uint64_t *slot = &site_index[(h + (uint64_t)i) & mask];
        uint64_t w = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (w == 0)
            return;
        if (w == want) {
            __atomic_compare_exchange_n(slot, &w, IDX_TOMB, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
            return;
        }
    }
}

/* ---- reclaim: give back the records of idle sites that hold nothing ------- */
/*
 * When the table is 7/8 full, allocating threads run a pass at most every
 * RECLAIM_GAP_NS (one at a time; a pass never allocates and never waits). A
 * READY site with no sampled block live whose count did not move since the
 * previous pass is RETIRED: taken out of the index (new allocations there get
 * a new record) and every thread's cache is dropped (site_epoch). A RETIRED
 * site still idle at the next pass is folded: its counters are added to the
 * "other sites" record, it becomes FREE and its number goes on the free ring.
 * A RETIRED site that moved (a thread still held it) stays RETIRED and keeps
 * counting: nothing is lost, readers merge it with its successor by name.
 */
static uint64_t counts_sum(const struct tl_site *s, int field_off)
{
    uint64_t v = 0;
    for (int c = 0; c < 2; c++)
        v += __atomic_load_n((const uint64_t *)((const char *)&s->c[c] + field_off), __ATOMIC_RELAXED);
    return v;
}
#define SUM(s, field) counts_sum((s), (int)offsetof(struct tl_counts, field))

static void fold_into_other(const struct tl_site *s)
{
    struct tl_site *o = &tl_sites[0];
    uint64_t *dst = (uint64_t *)&o->c[TL_C_ATOMIC];
    for (size_t f = 0; f < sizeof(struct tl_counts) / sizeof(uint64_t); f++)
        for (int c = 0; c < 2; c++)
            __atomic_add_fetch(&dst[f], __atomic_load_n(&((const uint64_t *)&s->c[c])[f], __ATOMIC_RELAXED),
                               __ATOMIC_RELAXED);
    uint64_t pk = s->peak_single, cur = __atomic_load_n(&o->peak_single, __ATOMIC_RELAXED);
    while (pk > cur && !__atomic_compare_exchange_n(&o->peak_single, &cur, pk, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

static void reclaim_pass(void)
{
    uint32_t n = __atomic_load_n(&tl_hdr->site_count, __ATOMIC_ACQUIRE);
    if (n > tl_hdr->site_capacity)
        n = tl_hdr->site_capacity;
    int retired = 0;
    if (pass_cursor < 1 || pass_cursor >= n)
        pass_cursor = 1; /* record 0 is "other sites" */
    uint32_t end = n - pass_cursor > RECLAIM_CHUNK ? pass_cursor + RECLAIM_CHUNK : n;
    for (uint32_t i = pass_cursor; i < end; i++) {
        struct tl_site *s = &tl_sites[i];
        uint32_t st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
        if (st != TL_SITE_READY && st != TL_SITE_RETIRED)
            continue;
        uint64_t count = SUM(s, count);
        if (count == 0 && st == TL_SITE_READY)
            continue; /* being born: its first allocation is on its way */
        int idle = count == idle_count[i] && SUM(s, sample_count) == SUM(s, sample_free_count);
        idle_count[i] = count;
        if (!idle)
            continue;
        if (st == TL_SITE_READY) {
            index_remove(s, i);
            __atomic_store_n(&s->state, TL_SITE_RETIRED, __ATOMIC_RELEASE);
            retired = 1;
        } else {
            __atomic_store_n(&s->state, TL_SITE_FREE, __ATOMIC_RELEASE);
            fold_into_other(s);
            idle_count[i] = 0;
            uint64_t t = __atomic_load_n(&free_tail, __ATOMIC_RELAXED);
            __atomic_store_n(&free_ring[t % tl_hdr->site_capacity], i, __ATOMIC_RELAXED);
            __atomic_store_n(&free_tail, t + 1, __ATOMIC_RELEASE);
            __atomic_add_fetch(&tl_hdr->recycled_sites, 1, __ATOMIC_RELAXED);
        }
    }
    pass_cursor = end;
    if (retired)
        __atomic_add_fetch(&site_epoch, 1, __ATOMIC_RELEASE);
}

/* URGENT: the table is full and a site waits for a record; then "idle" means
 * no allocation for 5 ms instead of 100: making room comes first. */
static void reclaim_maybe(int urgent)
{
    uint64_t now = tl_now_ns(CLOCK_MONOTONIC_COARSE);
    uint64_t next = __atomic_load_n(&next_pass_ns, __ATOMIC_RELAXED);
    uint64_t early = RECLAIM_GAP_NS - URGENT_GAP_NS;
    if (now < (urgent ? (next > early ? next - early : 0) : next))
        return;
    int expect = 0;
    if (!__atomic_compare_exchange_n(&reclaiming, &expect, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&next_pass_ns, now + RECLAIM_GAP_NS, __ATOMIC_RELAXED);
    reclaim_pass();
    __atomic_store_n(&reclaiming, 0, __ATOMIC_RELEASE);
}

/* ---- live set ------------------------------------------------------------- */

/* Address-local hash: blocks allocated together (same pool, same heap run) land
 * a few slots apart, so alloc/free bursts stay in a few cache lines. The
 * factor 5 leaves gaps between neighbouring blocks: without it a run of
 * adjacent 16-byte objects fills a run of adjacent slots and probing for a
 * free one exceeds TL_PROBE. High bits fold in so regions 16 MiB apart differ. */
static inline uint64_t ptr_hash(const void *p)
{
    uint64_t a = (uint64_t)(uintptr_t)p;
    return ((a >> 4) ^ (a >> 24) ^ (a >> 44)) * 5;
}

static int live_insert(void *p, uint64_t meta, int gil)
{
    uint64_t h = ptr_hash(p);
    uint16_t *f = tl_filter_slot(p, gil);
    uint16_t n = __atomic_load_n(f, __ATOMIC_RELAXED);
    if (n == UINT16_MAX)
        return 0;
    if (gil)
        __atomic_store_n(f, n + 1, __ATOMIC_RELAXED);
    else
        __atomic_add_fetch(f, 1, __ATOMIC_RELAXED);
    size_t mask = ((size_t)1 << LIVE_BITS) - 1;
    struct live_slot *set = live[gil];
    for (int i = 0; i < TL_PROBE; i++) {
        struct live_slot *s = &set[(h + (uint64_t)i) & mask];
        uint64_t k = __atomic_load_n(&s->key, __ATOMIC_RELAXED);
        if (gil) {
            if (k != 0 && k != TOMB)
                continue;
            s->meta = meta;
            __atomic_store_n(&s->key, (uint64_t)(uintptr_t)p, __ATOMIC_RELAXED);
            return 1;
        }
        /* Claim with BUSY, fill, then publish the key: a slot's meta is only
         * ever written by the thread that owns it. */
        while (k == 0 || k == TOMB) {
            if (__atomic_compare_exchange_n(&s->key, &k, BUSY, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                __atomic_store_n(&s->meta, meta, __ATOMIC_RELAXED);
                __atomic_store_n(&s->key, (uint64_t)(uintptr_t)p, __ATOMIC_RELEASE);
                return 1;
            }
        }
    }
    if (gil)
        __atomic_store_n(f, __atomic_load_n(f, __ATOMIC_RELAXED) - 1, __ATOMIC_RELAXED);
    else
        __atomic_sub_fetch(f, 1, __ATOMIC_RELAXED);
    return 0;
}

int tl_take(void *p, uint64_t *entry, int gil)
{
    if (TL_UNLIKELY(!initialized))
        return 0;
    uint16_t *f = tl_filter_slot(p, gil);
    if (TL_LIKELY(__atomic_load_n(f, __ATOMIC_RELAXED) == 0) || tl_disabled)
        return 0;
    if (TL_UNLIKELY(tl_py_finalizing())) {
        tl_freeze();
        return 0;
    }
    uint64_t h = ptr_hash(p);
    size_t mask = ((size_t)1 << LIVE_BITS) - 1;
    uint64_t key = (uint64_t)(uintptr_t)p;
    struct live_slot *set = live[gil];
    for (int i = 0; i < TL_PROBE; i++) {
        struct live_slot *s = &set[(h + (uint64_t)i) & mask];
        uint64_t k = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
        if (k == 0)
            return 0; /* slots never return to empty, so the chain ends here */
        if (k != key)
            continue;
        uint64_t meta = __atomic_load_n(&s->meta, __ATOMIC_RELAXED);
        if (gil) {
            __atomic_store_n(&s->key, TOMB, __ATOMIC_RELAXED);
            __atomic_store_n(f, __atomic_load_n(f, __ATOMIC_RELAXED) - 1, __ATOMIC_RELAXED);
        } else {
            if (!__atomic_compare_exchange_n(&s->key, &k, TOMB, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
                continue;
            __atomic_sub_fetch(f, 1, __ATOMIC_RELAXED);
        }
        *entry = meta;
        return 1;
    }
    return 0;
}

void tl_put_back(void *p, uint64_t entry, int gil)
{
    if (!live_insert(p, entry, gil)) {
        /* No room to put it back: count it as freed rather than lose it. */
        tl_credit_free(p, entry, gil);
        __atomic_add_fetch(&tl_hdr->dropped_samples, 1, __ATOMIC_RELAXED);
    }
}

/* Counter bump into the site's copy for this kind of writer (struct
 * tl_counts): a plain add under the GIL, a locked add otherwise. Readers in
 * other processes see whole 8-byte values either way. */
#define BUMP(site, field, v, gil)                                                              \
    do {                                                                                       \
        uint64_t *f_ = &(site)->c[(gil) ? TL_C_GIL : TL_C_ATOMIC].field;                      \
        if (gil)                                                                               \
            __atomic_store_n(f_, __atomic_load_n(f_, __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED); \
        else                                                                                   \
            __atomic_add_fetch(f_, (v), __ATOMIC_RELAXED);                                     \
    } while (0)

/* ---- sampling ------------------------------------------------------------- */

static void seed_rng(void)
{
    uint64_t x = tl_now_ns(CLOCK_MONOTONIC) ^ ((uint64_t)(uintptr_t)&tl_gap << 17) ^ ((uint64_t)getpid() << 40);
    static uint64_t threads;
    x ^= __atomic_add_fetch(&threads, 0x9e3779b97f4a7c15ull, __ATOMIC_RELAXED);
    x = tl_mix64(x);
    rng = x ? x : 0x2545f4914f6cdd1dull;
}

/* xorshift64*: fast, good enough to place sample points. */
static inline uint64_t next_random(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1dull;
}

/* An exponential gap of mean sample_interval bytes: -R ln(U), U uniform in (0, 1]. */
static int64_t next_gap(void)
{
    double u = (double)((next_random() >> 11) + 1) * 0x1.0p-53;
    double g = -(double)tl_cfg.sample_interval * log(u);
    if (g < 1.0)
        return 1;
    if (g > 0x1.0p62)
        return INT64_C(1) << 62;
    return (int64_t)g;
}

/* What one sample of SIZE bytes stands for: 1/p allocations (in TL_COUNT_ONE
 * units) and size/p bytes, p = 1 - exp(-size / R). Deterministic in size, so the
 * free of a sample takes back exactly what its allocation added. */
static void weights(uint64_t field, uint64_t *count_w, uint64_t *bytes_w)
{
    uint64_t r = tl_cfg.sample_interval;
    uint64_t size = field_bytes(field), charged = (field & META_CHARGED) ? ((field >> 32) & 0x7f) * 8 : size;
    if (!r || !size) {
        *count_w = size ? TL_COUNT_ONE : 0;
        *bytes_w = size;
        return;
    }
    double p = -expm1(-(double)charged / (double)r);
    if (p <= 0.0) { /* not reachable for size >= 1 and r < 2^62; stay finite anyway */
        *count_w = *bytes_w = 0;
        return;
    }
    *count_w = (uint64_t)((double)TL_COUNT_ONE / p + 0.5);
    *bytes_w = (uint64_t)((double)size / p + 0.5);
}

void tl_credit_free(void *p, uint64_t entry, int gil)
{
    uint32_t rec = (uint32_t)(entry & ((1u << META_SITE_BITS) - 1));
    uint64_t field = entry >> META_SITE_BITS, size = field_bytes(field);
    if (rec >= tl_hdr->site_capacity)
        return;
    struct tl_site *s = &tl_sites[rec];
    BUMP(s, sample_free_count, 1, gil);
    BUMP(s, sample_free_bytes, size, gil);
    if (tl_cfg.sample_interval) {
        uint64_t wc, wb;
        weights(field, &wc, &wb);
        BUMP(s, est_free_count, wc, gil);
        BUMP(s, est_free_bytes, wb, gil);
    }
    if (TL_UNLIKELY(tl_cfg.events))
        tl_event(2, p, size, rec);
}

/* ---- the hot path ---------------------------------------------------------- */

/* The sample point fell on (or before the end of) an allocation of SIZE bytes
 * counted only by samples; tl_gap <= 0. Draws the next gap; returns 1 when the
 * allocation is sampled (0 only for a new thread, whose first point is drawn
 * here: see tl_small_sampled in tl_internal.h). */
int tl_sample_hit(size_t size)
{
    if (TL_UNLIKELY(!rng)) { /* first allocation of this thread: draw where its first point is */
        seed_rng();
        tl_gap = next_gap() - (int64_t)size;
        if (tl_gap > 0)
            return 0;
    }
    tl_gap = next_gap(); /* memoryless: the next point is a fresh draw from here */
    return 1;
}

/* The site of the calling thread's allocation: its Python line, else RA's
 * native caller. NULL when the table is full; *frozen set when the interpreter
 * is finalizing. */
static struct tl_site *site_here(const struct tl_pyloc *given, void *ra, int *frozen)
{
    struct tl_pyloc loc;
    int py;
    if (given) {
        loc = *given;
        py = 1;
    } else {
        py = tl_py_current(&loc);
    }
    *frozen = 0;
    if (TL_UNLIKELY(py < 0)) {
        *frozen = 1;
        return NULL;
    }
    uint32_t kind = py ? TL_KIND_PYTHON : TL_KIND_NATIVE;
    uint64_t addr = py ? loc.code : (uint64_t)(uintptr_t)ra;
    uint64_t aux = py ? ((uint64_t)loc.fp << 32) | loc.offset : 0;
    unsigned slot = (unsigned)((addr >> 4) ^ (addr >> 12) ^ aux) & (TCACHE_SIZE - 1);
    if (TL_UNLIKELY(tcache_epoch != site_epoch)) { /* records left the index: forget them */
        memset(tcache, 0, sizeof tcache);
        tcache_epoch = site_epoch;
    }
    struct tl_site *s = tcache[slot].site;
    if (!s || tcache[slot].addr != addr || tcache[slot].aux != aux || s->kind != kind) {
        s = site_lookup(kind, addr, aux, py ? &loc : NULL, ra);
        if (TL_UNLIKELY(!s))
            return NULL;
        tcache[slot].addr = addr;
        tcache[slot].aux = aux;
        tcache[slot].site = s;
    }
    return s;
}

static inline void bump_peak(struct tl_site *s, uint64_t size)
{
    uint64_t peak = __atomic_load_n(&s->peak_single, __ATOMIC_RELAXED);
    while (size > peak &&
           !__atomic_compare_exchange_n(&s->peak_single, &peak, size, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* A sample taken: into the live set, its weights onto the site. */
static void take_sample(struct tl_site *s, void *p, uint64_t field, int gil)
{
    uint64_t rec = (uint64_t)(s - tl_sites);
    uint64_t sz = field_bytes(field);
    size_t size = sz;
    if (!live_insert(p, (field << META_SITE_BITS) | rec, gil)) {
        __atomic_add_fetch(&tl_hdr->dropped_samples, 1, __ATOMIC_RELAXED);
        return;
    }
    BUMP(s, sample_count, 1, gil);
    BUMP(s, sample_bytes, sz, gil);
    if (tl_cfg.sample_interval) { /* exhaustive: weights are 1 and size, readers use sample_* */
        uint64_t wc, wb;
        weights(field, &wc, &wb);
        BUMP(s, est_count, wc, gil);
        BUMP(s, est_bytes, wb, gil);
    }
    if (TL_UNLIKELY(tl_cfg.events))
        tl_event(1, p, size, (uint32_t)rec);
    tl_objects_watch();
    if (TL_UNLIKELY(tick_countdown == 0)) {
        tick_countdown = 64; /* look at the clock every 64 samples */
        tl_dump_tick();
    } else {
        tick_countdown--;
    }
}

/* ---- the hot path ---------------------------------------------------------- */

void tl_record_alloc(void *p, size_t size, void *ra, int gil)
{
    uint64_t stale;
    int frozen;
    /* The allocator handed out an address we still hold as a live sample: that
     * block was freed where we could not see it (a library bound to the real
     * free with RTLD_DEEPBIND or in another namespace). Credit it now rather
     * than keep a phantom leak. */
    if (tl_cfg.sample_interval && TL_UNLIKELY(tl_maybe_sampled(p, gil)) && tl_take(p, &stale, gil))
        tl_credit_free(p, stale, gil); /* (sampled mode only: in exhaustive mode the filter is dense
                                          and this lookup would cost ~7 % on every allocation) */
    struct tl_site *s = site_here(NULL, ra, &frozen);
    if (TL_UNLIKELY(!s)) {
        if (frozen)
            tl_freeze();
        return;
    }
    BUMP(s, count, 1, gil);
    BUMP(s, total_bytes, size, gil);
    bump_peak(s, size);
    if (TL_LIKELY(tl_cfg.sample_interval)) {
        tl_gap -= (int64_t)size;
        if (TL_LIKELY(tl_gap > 0))
            return;
        if (!tl_sample_hit(size))
            return;
    }
    take_sample(s, p, size > META_MAX_SIZE ? META_MAX_SIZE : size, gil);
}

/* A small block or object counted only through its samples (objects of CPython
 * 3.13+ through the reference tracer, pymalloc blocks in small-object mode):
 * the sample point fell on it. COUNT and TOTAL get the sample's weights (1/p
 * allocations, size/p bytes: the estimate of what the unsampled ones added),
 * exact in exhaustive mode. Caller holds the guard. */
struct tl_site *tl_record_sampled(void *p, size_t size, size_t charged, const struct tl_pyloc *loc, void *ra,
                                  int gil)
{
    int frozen;
    struct tl_site *s = site_here(loc, ra, &frozen);
    if (TL_UNLIKELY(!s)) {
        if (frozen)
            tl_freeze();
        return NULL;
    }
    uint64_t field = size > META_MAX_SIZE ? META_MAX_SIZE : size;
    if (charged && charged != size && size <= 0xffffffffu && charged <= 127 * 8)
        field = META_CHARGED | ((uint64_t)(charged / 8) << 32) | size;
    uint64_t wc = TL_COUNT_ONE, wb = size;
    if (tl_cfg.sample_interval)
        weights(field, &wc, &wb);
    BUMP(s, count, (wc + TL_COUNT_ONE / 2) / TL_COUNT_ONE, gil);
    BUMP(s, total_bytes, wb, gil);
    bump_peak(s, size);
    take_sample(s, p, field, gil);
    return s;
}
