/* SPDX-License-Identifier: MIT */
/*
 * alloc_probes.bpf.c - uprobes on a target's libc allocator family (bcc).
 *
 * Per allocation >= TL_MIN_SIZE: find the site (the innermost Python frame's code object and
 * bytecode offset, else the native caller), count it, and sample it with probability
 * p(s) = 1 - exp(-s/R) (trackleak.sampling; the threshold table below), keeping the sample in
 * tl_live until freed, with its Horvitz-Thompson weights; the free (or the realloc move) credits
 * the site with exactly those weights. Only pointers and offsets are recorded; the agent turns
 * them into names (STYLE guideline 6).
 *
 * The entry points at the bottom are thin: each decodes its arguments and calls one of the
 * generic handlers (tl_alloc_enter, tl_alloc_return, tl_credit_free).
 */
#include <uapi/linux/ptrace.h>
#include "trackleak.h"

/* ===================== tunables (set by the agent with cflags -D) ===================== */
/* Sampling (agent/ebpf/thresholds.py computes these and fills tl_pslope before attaching):
 * an allocation of s bytes is sampled when bpf_get_prandom_u32() < thr(s), with
 * thr(s) = (s * tl_pslope[(s * TL_P_MULT) >> 32] + 2^(TL_P_SHIFT-1)) >> TL_P_SHIFT ~ p(s) * 2^32,
 * and always when s >= TL_P_MAX_BYTES (23 R). TL_SAMPLE_ALL: R = 0, every allocation sampled. */
#ifndef TL_SAMPLE_ALL
#define TL_SAMPLE_ALL 1
#endif
#ifndef TL_P_LEN
#define TL_P_LEN 1
#endif
#ifndef TL_P_MULT
#define TL_P_MULT 0ULL
#endif
#ifndef TL_P_MAX_BYTES
#define TL_P_MAX_BYTES 0ULL
#endif
#ifndef TL_P_SHIFT
#define TL_P_SHIFT 24
#endif
#ifndef TL_COUNT_ONE
#define TL_COUNT_ONE 1024          /* trackleak.sampling.COUNT_ONE: one allocation in est_count */
#endif
#define TL_P_ONE (1ULL << 32)
#ifndef TL_MIN_SIZE
#define TL_MIN_SIZE 500            /* smaller allocations are neither counted nor sampled */
#endif
#ifndef TL_TASK_FSBASE
#define TL_TASK_FSBASE -1          /* offsetof(struct task_struct, thread.fsbase), from BTF; -1: no Python frames */
#endif
#ifndef TL_NATIVE_STACKS
#define TL_NATIVE_STACKS 1         /* user stack ids for native sites: 0 never, 1 when the caller is
                                      inside the target's libc (strdup...: its caller is the site),
                                      2 always (~450 ns a call more) */
#endif
/* ====================================================================================== */

BPF_HASH(tl_targets, u32, struct tl_target, TL_MAX_TARGETS);
BPF_HASH(tl_sites, struct tl_site_key, struct tl_site_stats, TL_MAX_SITES);
BPF_HASH(tl_live, struct tl_live_key, struct tl_live_val, TL_MAX_LIVE);
BPF_HASH(tl_pending, u64, struct tl_pending, TL_MAX_PENDING);
BPF_HASH(tl_arena_pending, u64, struct tl_arena_pending, TL_MAX_ARENA_PENDING);
/* Site of an outer call that glibc relays to malloc itself (realloc(NULL, n), memalign with a
 * small alignment): the inner malloc probe uses it instead of walking again. */
BPF_HASH(tl_nested, u64, struct tl_site_key, TL_MAX_PENDING);
BPF_STACK_TRACE(tl_stacks, TL_MAX_STACKS);
BPF_PERCPU_ARRAY(tl_counters, u64, TL_CNT_MAX);
BPF_ARRAY(tl_pslope, u64, TL_P_LEN);    /* p(s)/s per size bucket, fixed point (see above) */

static __always_inline void tl_count(int index)
{
    u64 *v = tl_counters.lookup(&index);
    if (v)
        *v += 1;
}

static __always_inline u64 tl_read_ptr(u64 addr)
{
    u64 v = 0;
    if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
        return 0;
    return v;
}

/* ---- Python: thread state through the gilstate TSS key, then the innermost frame ---- */

/* The current thread's thread pointer (fs base; 0: unknown). */
static __always_inline u64 tl_fsbase(void)
{
#if TL_TASK_FSBASE < 0
    return 0;
#else
    u64 task = bpf_get_current_task();
    u64 fsbase = 0;
    if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), (void *)(task + TL_TASK_FSBASE)))
        return 0;
    return fsbase;
#endif
}

/* glibc's pthread_getspecific(key) for the current thread, from the thread pointer. */
static __always_inline u64 tl_pthread_getspecific(struct tl_target *t)
{
    u64 fsbase = tl_fsbase();
    if (!fsbase)
        return 0;
    u32 l2 = t->pthread_l2 ? t->pthread_l2 : 32;
    u64 block = tl_read_ptr(fsbase + t->pthread_specific + 8 * (t->py_key / l2));
    if (!block)
        return 0;
    return tl_read_ptr(block + (u64)(t->py_key % l2) * t->key_data_size + t->key_data_data);
}

/* 3.15+: the thread state is a static thread-local of the executable, at fsbase + tstate_tls. */
static __always_inline u64 tl_thread_local(struct tl_target *t)
{
    u64 fsbase = tl_fsbase();
    return fsbase ? tl_read_ptr(fsbase + t->tstate_tls) : 0;
}

/* The innermost frame of the current thread (0: none). */
static __always_inline u64 tl_py_top_frame(struct tl_target *t)
{
    u64 tstate = t->tstate_tls ? tl_thread_local(t) : tl_pthread_getspecific(t);
    if (!tstate)
        return 0;
    if (t->tstate_frame >= 0)
        return tl_read_ptr(tstate + t->tstate_frame);
    if (t->tstate_cframe >= 0) {
        u64 cframe = tl_read_ptr(tstate + t->tstate_cframe);
        return cframe ? tl_read_ptr(cframe + t->cframe_current_frame) : 0;
    }
    return tl_read_ptr(tstate + t->tstate_current_frame);
}

/* A frame's fixed fields are all within its first TL_FRAME_BUF bytes in every CPython the table
 * knows (3.9: f_lasti at 104; 3.11+: owner at 69..74): one read per frame instead of four. */
#define TL_FRAME_BUF 112
struct tl_frame_buf {
    u8 b[TL_FRAME_BUF];
};
BPF_PERCPU_ARRAY(tl_fbuf, struct tl_frame_buf, 1);

static __always_inline int tl_fits(s32 off, int size)
{
    return off >= 0 && off <= TL_FRAME_BUF - size;
}

/* 3.11+: the byte offset of instr in the frame's bytecode (-1: unknown). 3.14t: the thread's own
 * copy of the bytecode (frame tlbc_index into code co_tlbc), as in the site walk. */
static __always_inline s64 tl_py_instr_offset(struct tl_target *t, u64 frame, u64 code, u64 instr)
{
    u64 bytecode = code + t->code_adaptive;
    if (t->frame_tlbc_index >= 0 && t->code_tlbc >= 0 && code) {
        s32 index = 0;                     /* 3.14t: this thread's copy of the bytecode */
        bpf_probe_read_user(&index, sizeof(index), (void *)(frame + t->frame_tlbc_index));
        if (index > 0) {
            u64 array = tl_read_ptr(code + t->code_tlbc);
            s64 size = array ? (s64)tl_read_ptr(array) : 0;
            bytecode = index < size ? tl_read_ptr(array + 8 + 8 * (u64)index) : 0;
        }
    }
    return bytecode ? (s64)(instr - bytecode) : -1;
}

/* One frame: *previous always; 1 and *code, *offset when it runs code (0: a C-stack or
 * interpreter entry frame, or a frame not started yet: skip it). fb: a buffer for one read of
 * the frame's head (0, or a failed read: field by field). */
static __always_inline int tl_py_frame(struct tl_target *t, struct tl_frame_buf *fb, u64 frame, u64 *previous,
                                       u64 *code, u32 *offset)
{
    u64 c;
    s64 off;
    if (fb && tl_fits(t->frame_previous, 8) && tl_fits(t->frame_code, 8) &&
        (t->frame_owner < 0 || tl_fits(t->frame_owner, 1)) &&
        (t->frame_lasti >= 0 ? tl_fits(t->frame_lasti, 4) : tl_fits(t->frame_instr, 8)) &&
        !bpf_probe_read_user(fb->b, TL_FRAME_BUF, (void *)frame)) {
        u32 o = t->frame_previous;
        if (o > TL_FRAME_BUF - 8)
            return 0;
        *previous = *(u64 *)&fb->b[o];
        if (t->frame_owner >= 0) {
            o = t->frame_owner;
            if (o > TL_FRAME_BUF - 1)
                return 0;
            if (fb->b[o] >= (u8)t->owner_cstack)   /* C-stack / interpreter entry frame: no code */
                return 0;
        }
        o = t->frame_code;
        if (o > TL_FRAME_BUF - 8)
            return 0;
        c = *(u64 *)&fb->b[o] & ~t->code_tag_mask;
        if (t->frame_lasti >= 0) {
            o = t->frame_lasti;
            if (o > TL_FRAME_BUF - 4)
                return 0;
            off = (s64)(*(s32 *)&fb->b[o]) * t->lasti_mult;
        } else {
            o = t->frame_instr;
            if (o > TL_FRAME_BUF - 8)
                return 0;
            off = tl_py_instr_offset(t, frame, c, *(u64 *)&fb->b[o]);
        }
    } else {
        *previous = tl_read_ptr(frame + t->frame_previous);
        if (t->frame_owner >= 0) {
            u8 owner = 0;
            bpf_probe_read_user(&owner, 1, (void *)(frame + t->frame_owner));
            if (owner >= (u8)t->owner_cstack)      /* C-stack / interpreter entry frame: no code */
                return 0;
        }
        c = tl_read_ptr(frame + t->frame_code) & ~t->code_tag_mask;
        if (t->frame_lasti >= 0) {
            int lasti = -1;
            bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(frame + t->frame_lasti));
            off = (s64)lasti * t->lasti_mult;
        } else {
            u64 instr = tl_read_ptr(frame + t->frame_instr);
            off = tl_py_instr_offset(t, frame, c, instr);
        }
    }
    if (!c || off < 0 || off > 0x7fffffff)           /* frame not started yet: its caller */
        return 0;
    *code = c;
    *offset = (u32)off;
    return 1;
}

static __always_inline int tl_python_site(struct tl_target *t, struct tl_site_key *key)
{
    u64 frame = tl_py_top_frame(t);
    for (int i = 0; i < TL_PY_SKIP_MAX; i++) {     /* bounded loop (kernel >= 5.3) */
        if (!frame)
            return 0;
        u64 previous = 0, code = 0;
        u32 offset = 0;
        if (!tl_py_frame(t, 0, frame, &previous, &code, &offset)) {
            frame = previous;
            continue;
        }
        key->kind = TL_SITE_PYTHON;
        key->code = code;
        key->offset = offset;
        key->stack_id = -1;
        return 1;
    }
    return 0;
}

/* ---- Python call paths of sampled allocations (issue 9; struct tl_path) ---- */

#if TL_STACK_DEPTH > 0
BPF_F_TABLE("hash", u64, struct tl_path, tl_paths, TL_MAX_PATHS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(tl_path_scratch, struct tl_path, 1);   /* the path being built (too big for the stack) */
BPF_ARRAY(tl_path_zero, struct tl_path, 1);             /* never written: a stub's initial value */

#define TL_HASH_MUL 0x9e3779b97f4a7c15ULL

static __always_inline u64 tl_mix(u64 h, u64 v)
{
    h ^= v;
    h *= TL_HASH_MUL;
    return h ^ (h >> 29);
}

/* The same path (pid, flags, frames)? */
static __always_inline int tl_path_same(struct tl_path *a, struct tl_path *b)
{
    if (a->pid != b->pid || a->depth != b->depth || a->flags != b->flags)
        return 0;
    u32 depth = a->depth;
    for (u32 i = 0; i < TL_STACK_DEPTH; i++) {
        u32 j = i;
        asm volatile("" : "+r"(j));     /* keep the verifier's bound on j (clang merges the tests) */
        if (j >= depth || j >= TL_STACK_DEPTH)
            break;
        if (a->code[j] != b->code[j] || a->offset[j] != b->offset[j])
            return 0;
    }
    return 1;
}

/* Walk the current thread's Python frames (at most TL_STACK_DEPTH with code) into the scratch
 * path and find or insert it in tl_paths: its id, or 0 when it could not be stored (counted). */
static __always_inline u64 tl_python_path(struct tl_target *t, u32 pid)
{
    u32 zero = 0;
    struct tl_path *path = tl_path_scratch.lookup(&zero);
    if (!path)
        return 0;
    struct tl_frame_buf *fb = tl_fbuf.lookup(&zero);
    u64 frame = tl_py_top_frame(t);
    u16 flags = 0;
    u64 h = tl_mix(0x6a09e667f3bcc909ULL, pid);
    /* The frame count lives in the map value, not in a register: a register would be a known
     * constant in every iteration, and the verifier would explore each (iteration, count) pair
     * (quadratic in the depth: 32 did not load). Read back, it is just bounded. */
    path->depth = 0;
    for (int i = 0; i < TL_STACK_DEPTH + TL_PATH_SKIP_MAX; i++) {
        if (!frame)
            break;
        u64 previous = 0, code = 0;
        u32 offset = 0;
        if (!tl_py_frame(t, fb, frame, &previous, &code, &offset)) {
            frame = previous;
            continue;
        }
        u32 n = path->depth;
        if (n >= TL_STACK_DEPTH) {      /* one more frame with code: the path is cut */
            flags |= TL_PATH_TRUNCATED;
            frame = 0;
            break;
        }
        path->code[n] = code;
        path->offset[n] = offset;
        path->depth = n + 1;
        h = tl_mix(tl_mix(h, code), offset);
        frame = previous;
    }
    if (frame)                          /* walk bound reached (many entry frames): cut too */
        flags |= TL_PATH_TRUNCATED;
    u32 n = path->depth;
    if (!n)
        return 0;
    __builtin_memset(&path->st, 0, sizeof(path->st));
    path->pid = pid;
    path->flags = flags;
    h = tl_mix(tl_mix(h, n), flags);
    for (int k = 0; k < TL_PATH_PROBES; k++) {
        u64 id = h + k;
        if (!id)
            continue;                   /* 0 means "no path" */
        struct tl_path *have = tl_paths.lookup(&id);
        if (!have) {
            if (!tl_paths.insert(&id, path))   /* BPF_NOEXIST */
                return id;
            have = tl_paths.lookup(&id);       /* another CPU inserted it meanwhile */
            if (!have)
                break;                  /* full */
        }
        if (tl_path_same(have, path))
            return id;
        tl_count(TL_CNT_PATH_COLLISIONS);
    }
    tl_count(TL_CNT_PATHS_FULL);
    return 0;
}

/* The path entry of a sample (a zero stub when the agent deleted it meanwhile), or 0 (full). */
static __always_inline struct tl_path *tl_path_of(u64 id)
{
    struct tl_path *have = tl_paths.lookup(&id);
    if (have)
        return have;
    u32 zero = 0;
    struct tl_path *init = tl_path_zero.lookup(&zero);
    if (!init)
        return 0;
    return tl_paths.lookup_or_try_init(&id, init);
}
#endif

/* ---- sampling: p(s) = 1 - exp(-s/R), and the weights of a sample ---- */

/* 1 when an allocation of `size` bytes is sampled; then *w_count (TL_COUNT_ONE units) and
 * *w_bytes are 1/p and size/p for the p actually applied (thr / 2^32). */
static __always_inline int tl_sample(u64 size, u64 *w_count, u64 *w_bytes)
{
    u64 thr = TL_P_ONE;
#if !TL_SAMPLE_ALL
    if (size < TL_P_MAX_BYTES) {
        u32 i = (size * TL_P_MULT) >> 32;
        u64 *slope = tl_pslope.lookup(&i);
        if (!slope)
            return 0;
        thr = (size * *slope + (1ULL << (TL_P_SHIFT - 1))) >> TL_P_SHIFT;
        if ((u64)bpf_get_prandom_u32() >= thr)
            return 0;                   /* also when thr == 0: never */
    }
#endif
    if (thr >= TL_P_ONE) {
        *w_count = TL_COUNT_ONE;
        *w_bytes = size;
    } else {
        *w_count = (((u64)TL_COUNT_ONE << 32) + thr / 2) / thr;
        *w_bytes = ((size / thr) << 32) + (((size % thr) << 32) / thr);   /* size * 2^32 / thr */
    }
    return 1;
}

/* ---- generic handlers ---- */

/* The site of the current call: Python frame when there is one, else the native caller. */
static __always_inline void tl_site(struct pt_regs *ctx, struct tl_target *t, u32 pid, struct tl_site_key *key)
{
    key->pid = pid;
    if ((t->flags & TL_TARGET_PYTHON) && tl_python_site(t, key))
        return;
    if (t->flags & TL_TARGET_PYTHON)
        tl_count(TL_CNT_PY_NOFRAME);
    key->kind = TL_SITE_NATIVE;
    key->code = tl_read_ptr(PT_REGS_SP(ctx));  /* at entry, [sp] is the return address */
    key->offset = 0;
    key->stack_id = -1;
#if TL_NATIVE_STACKS
    if (TL_NATIVE_STACKS == 2 || (key->code >= t->wrap_lo && key->code < t->wrap_hi))
        key->stack_id = tl_stacks.get_stackid(ctx, BPF_F_USER_STACK | BPF_F_REUSE_STACKID);
#endif
}

static __always_inline void tl_credit_free(u32 pid, u64 addr)
{
    struct tl_live_key lk = {};
    lk.pid = pid;
    lk.addr = addr;
    struct tl_live_val *live = tl_live.lookup(&lk);
    if (!live)
        return;
    /* The agent deletes only entries with nothing live; if it raced with this sample, the free
     * goes to a fresh entry and carry + map still add up. */
    struct tl_site_stats zero = {};
    struct tl_site_stats *s = tl_sites.lookup_or_try_init(&live->site, &zero);
    if (s) {
        __sync_fetch_and_add(&s->sample_free_count, 1);
        __sync_fetch_and_add(&s->sample_free_bytes, live->size);
        __sync_fetch_and_add(&s->est_free_count, live->w_count);
        __sync_fetch_and_add(&s->est_free_bytes, live->w_bytes);
    }
#if TL_STACK_DEPTH > 0
    if (live->path) {
        struct tl_path *path = tl_path_of(live->path);
        if (path) {
            __sync_fetch_and_add(&path->st.sample_free_count, 1);
            __sync_fetch_and_add(&path->st.est_free_count, live->w_count);
            __sync_fetch_and_add(&path->st.est_free_bytes, live->w_bytes);
        }
    }
#endif
    tl_live.delete(&lk);
    tl_count(TL_CNT_FREES_MATCHED);
}

/* Count an allocation of `size` bytes at `key` and decide whether it is sampled: 1 and *p
 * filled when it is (the caller keeps *p until the allocator returns). */
static __always_inline int tl_record(struct tl_target *t, struct tl_site_key *key, u64 size, u64 memptr,
                                     struct tl_pending *p)
{
    struct tl_site_stats zero = {};
    struct tl_site_stats *s = tl_sites.lookup_or_try_init(key, &zero);
    if (!s) {
        tl_count(TL_CNT_SITES_FULL);
        return 0;
    }
    __sync_fetch_and_add(&s->count, 1);
    __sync_fetch_and_add(&s->total_bytes, size);
    if (size > s->peak_single)
        s->peak_single = size;          /* racy max: a lost update only lowers a peak */

    u64 w_count, w_bytes;
    if (!tl_sample(size, &w_count, &w_bytes))
        return 0;
    p->site = *key;
    p->size = size;
    p->memptr = memptr;
    p->w_count = w_count;
    p->w_bytes = w_bytes;
    p->path = 0;
#if TL_STACK_DEPTH > 0
    if (key->kind != TL_SITE_NATIVE)    /* sampled at a Python line: its call path */
        p->path = tl_python_path(t, key->pid);
#endif
    return 1;
}

/* Entry of an allocation of `size` bytes. `nested`: glibc will call malloc for it (then only
 * the site is remembered, for the inner malloc probe). */
static __always_inline int tl_alloc_enter(struct pt_regs *ctx, u64 size, u64 memptr, int nested)
{
    if (size < TL_MIN_SIZE)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    struct tl_target *t = tl_targets.lookup(&pid);
    if (!t)
        return 0;

    struct tl_site_key key = {};
    struct tl_site_key *outer = tl_nested.lookup(&id);
    if (outer) {
        key = *outer;
        tl_nested.delete(&id);
    } else {
        tl_site(ctx, t, pid, &key);
    }
    if (nested) {
        tl_nested.update(&id, &key);
        return 0;
    }
    struct tl_pending p = {};
    if (tl_record(t, &key, size, memptr, &p))
        if (tl_pending.update(&id, &p))
            tl_count(TL_CNT_PENDING_FULL);
    return 0;
}

/* The return of a sampled call (p) that gave `addr` (0: failed): a live block. */
static __always_inline void tl_made_live(u64 id, struct tl_pending *p, u64 addr)
{
    struct tl_site_stats zero = {};
    struct tl_site_stats *s = addr ? tl_sites.lookup_or_try_init(&p->site, &zero) : 0;
    if (addr && !s) {
        tl_count(TL_CNT_SITES_FULL);
    } else if (addr) {
        struct tl_live_key lk = {};
        lk.pid = id >> 32;
        lk.addr = addr;
        struct tl_live_val v = {};
        v.site = p->site;
        v.size = p->size;
        v.w_count = p->w_count;
        v.w_bytes = p->w_bytes;
        v.t_ns = bpf_ktime_get_ns();
        v.path = p->path;
        if (tl_live.update(&lk, &v)) {
            tl_count(TL_CNT_LIVE_FULL);
        } else {
            __sync_fetch_and_add(&s->sample_count, 1);
            __sync_fetch_and_add(&s->sample_total_bytes, p->size);
            __sync_fetch_and_add(&s->est_count, p->w_count);
            __sync_fetch_and_add(&s->est_bytes, p->w_bytes);
#if TL_STACK_DEPTH > 0
            struct tl_path *path = p->path ? tl_path_of(p->path) : 0;
            if (path) {
                __sync_fetch_and_add(&path->st.sample_count, 1);
                __sync_fetch_and_add(&path->st.est_count, p->w_count);
                __sync_fetch_and_add(&path->st.est_bytes, p->w_bytes);
            }
#endif
        }
    }
}

/* Return of any allocator: a sampled call becomes a live block. */
static __always_inline int tl_alloc_exit(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct tl_pending *p = tl_pending.lookup(&id);
    if (!p)
        return 0;
    u64 addr = PT_REGS_RC(ctx);
    if (p->memptr) {                    /* posix_memalign: 0 = success, result in *memptr */
        addr = addr == 0 ? tl_read_ptr(p->memptr) : 0;
    }
    tl_made_live(id, p, addr);
    tl_pending.delete(&id);
    return 0;
}

/* ---- pymalloc arenas (issue 10): rare, large, and a byte-weighted sample of where small
 * objects accumulate. Filtered to exactly the call obmalloc.c's _PyObject_ArenaMmap makes, from
 * the interpreter's own text, so glibc's malloc (which mmaps from inside libc) never matches. */

#define TL_PROT_RW 0x3                  /* PROT_READ | PROT_WRITE */
#define TL_MAP_PRIVATE_ANON 0x22        /* MAP_PRIVATE | MAP_ANONYMOUS */

static __always_inline int tl_arena_enter(struct pt_regs *ctx, u64 addr, u64 len, u64 prot, u64 flags, s32 fd)
{
    if (addr || prot != TL_PROT_RW || flags != TL_MAP_PRIVATE_ANON || fd != -1 || len < TL_MIN_SIZE)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    struct tl_target *t = tl_targets.lookup(&pid);
    if (!t || !t->arena_size || len != t->arena_size)
        return 0;
    u64 sp = PT_REGS_SP(ctx);
    u64 caller = tl_read_ptr(sp);       /* at entry, [sp] is the return address */
    if (caller < t->arena_lo || caller >= t->arena_hi)
        return 0;
    tl_count(TL_CNT_ARENAS);
    struct tl_site_key key = {};
    tl_site(ctx, t, pid, &key);
    if (key.kind == TL_SITE_PYTHON)
        key.kind = TL_SITE_ARENA;
    struct tl_arena_pending ap = {};
    if (tl_record(t, &key, len, 0, &ap.p)) {
        ap.sp = sp;
        if (tl_arena_pending.update(&id, &ap))
            tl_count(TL_CNT_PENDING_FULL);
    }
    return 0;
}

static __always_inline int tl_arena_exit(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct tl_arena_pending *ap = tl_arena_pending.lookup(&id);
    if (!ap)
        return 0;                       /* nearly every mmap return: not an arena */
    if (PT_REGS_SP(ctx) != ap->sp + 8)  /* another mmap (a stale entry): not this call's return */
        return 0;
    u64 addr = PT_REGS_RC(ctx);
    if (addr == (u64)-1)                /* MAP_FAILED */
        addr = 0;
    tl_made_live(id, &ap->p, addr);
    tl_arena_pending.delete(&id);
    return 0;
}

static __always_inline int tl_arena_free(u64 addr, u64 len)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct tl_target *t = tl_targets.lookup(&pid);
    if (!t || !t->arena_size || len != t->arena_size || !addr)
        return 0;
    tl_count(TL_CNT_ARENA_FREES);
    tl_credit_free(pid, addr);
    return 0;
}

static __always_inline int tl_free_enter(u64 addr)
{
    if (!addr)
        return 0;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (!tl_targets.lookup(&pid))
        return 0;
    tl_credit_free(pid, addr);
    return 0;
}

/* ---- entry points: decode arguments, call a handler ---- */

int tl_malloc_enter(struct pt_regs *ctx)
{
    return tl_alloc_enter(ctx, PT_REGS_PARM1(ctx), 0, 0);
}

int tl_calloc_enter(struct pt_regs *ctx)
{
    u64 n = PT_REGS_PARM1(ctx), size = PT_REGS_PARM2(ctx);
    return tl_alloc_enter(ctx, n * size, 0, 0);
}

int tl_realloc_enter(struct pt_regs *ctx)
{
    u64 old = PT_REGS_PARM1(ctx), size = PT_REGS_PARM2(ctx);
    if (old == 0)                       /* glibc: malloc(size) */
        return tl_alloc_enter(ctx, size, 0, 1);
    if (size == 0)                      /* glibc: free(old); its probe credits it */
        return 0;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (!tl_targets.lookup(&pid))
        return 0;
    tl_credit_free(pid, old);           /* moved or resized: the old block is gone */
    return tl_alloc_enter(ctx, size, 0, 0);
}

/* memalign(align, size) and aligned_alloc(align, size): one function in glibc */
int tl_memalign_enter(struct pt_regs *ctx)
{
    u64 align = PT_REGS_PARM1(ctx), size = PT_REGS_PARM2(ctx);
    return tl_alloc_enter(ctx, size, 0, align <= 16);   /* <= MALLOC_ALIGNMENT: relayed to malloc */
}

int tl_posix_memalign_enter(struct pt_regs *ctx)
{
    u64 memptr = PT_REGS_PARM1(ctx), align = PT_REGS_PARM2(ctx), size = PT_REGS_PARM3(ctx);
    if (align <= 16)                    /* relayed to malloc, which returns the pointer */
        return tl_alloc_enter(ctx, size, 0, 1);
    return tl_alloc_enter(ctx, size, memptr, 0);
}

int tl_valloc_enter(struct pt_regs *ctx)
{
    return tl_alloc_enter(ctx, PT_REGS_PARM1(ctx), 0, 0);
}

int tl_alloc_return(struct pt_regs *ctx)
{
    return tl_alloc_exit(ctx);
}

int tl_free(struct pt_regs *ctx)
{
    return tl_free_enter(PT_REGS_PARM1(ctx));
}

/* mmap(addr, len, prot, flags, fd, off) and munmap(addr, len): pymalloc arenas only */
int tl_mmap_enter(struct pt_regs *ctx)
{
    return tl_arena_enter(ctx, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
                          PT_REGS_PARM4(ctx), (s32)PT_REGS_PARM5(ctx));
}

int tl_mmap_return(struct pt_regs *ctx)
{
    return tl_arena_exit(ctx);
}

int tl_munmap(struct pt_regs *ctx)
{
    return tl_arena_free(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx));
}
