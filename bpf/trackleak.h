/* SPDX-License-Identifier: MIT */
/*
 * trackleak.h - the types the BPF programs and the agent share (STYLE guideline 1).
 *
 * The agent never re-types these: bcc derives ctypes for every map's key and value
 * from this file (b["tl_sites"].Key etc.), and fills struct tl_target field by name.
 */
#ifndef TRACKLEAK_BPF_H
#define TRACKLEAK_BPF_H

/* ---- limits (sizes of the maps; overridable with -D like the tunables) ---- */
#ifndef TL_MAX_TARGETS
#define TL_MAX_TARGETS 64          /* processes attached at once */
#endif
#ifndef TL_MAX_SITES
#define TL_MAX_SITES 65536         /* distinct allocation sites over all targets */
#endif
#ifndef TL_MAX_LIVE
#define TL_MAX_LIVE 262144         /* sampled blocks not yet freed, all targets */
#endif
#ifndef TL_MAX_PENDING
#define TL_MAX_PENDING 16384       /* threads between an allocator's entry and return */
#endif
#ifndef TL_MAX_ARENA_PENDING
#define TL_MAX_ARENA_PENDING 1024  /* threads between an arena mmap's entry and return */
#endif
#ifndef TL_MAX_STACKS
#define TL_MAX_STACKS 16384        /* distinct native user stacks */
#endif
#ifndef TL_STACK_DEPTH
#define TL_STACK_DEPTH 32          /* Python frames per sampled call path (0: no paths); -D from
                                      --stack-depth (at most 128) */
#endif
#ifndef TL_MAX_PATHS
#define TL_MAX_PATHS 16384         /* distinct Python call paths, all targets (not preallocated) */
#endif
#define TL_PY_SKIP_MAX 4           /* shim frames skipped to reach a Python frame */
#define TL_PATH_SKIP_MAX 16        /* frames without code (C-stack entry frames) a path walk may
                                      step over besides its TL_STACK_DEPTH frames */
#define TL_PATH_PROBES 4           /* ids tried for one path (id = hash, hash + 1, ...) */
#if TL_STACK_DEPTH > 0
#define TL_PATH_SLOTS TL_STACK_DEPTH
#else
#define TL_PATH_SLOTS 1
#endif

/* struct tl_path.flags */
#define TL_PATH_TRUNCATED 1        /* deeper than TL_STACK_DEPTH: the outermost frames were cut */

/* struct tl_target.flags */
#define TL_TARGET_PYTHON 1         /* walk Python frames (offsets below are valid) */

/* struct tl_site_key.kind */
#define TL_SITE_NATIVE 0           /* code = allocator's return address, stack_id = user stack */
#define TL_SITE_PYTHON 1           /* code = PyCodeObject *, offset = bytecode byte offset */
#define TL_SITE_ARENA 2            /* as TL_SITE_PYTHON, for a pymalloc arena the line's allocation
                                      forced (the agent shows it in the same row as the line's
                                      malloc samples; a separate key only to count arenas apart) */

/* tl_counters indexes (the first three are what could not be tracked; the agent shows them) */
#define TL_CNT_SITES_FULL 0        /* allocations not counted: tl_sites full */
#define TL_CNT_LIVE_FULL 1         /* samples dropped: tl_live full */
#define TL_CNT_PENDING_FULL 2      /* samples dropped: tl_pending full */
#define TL_CNT_PY_NOFRAME 3        /* Python target, no Python frame on this thread */
#define TL_CNT_FREES_MATCHED 4     /* frees of sampled blocks (arenas' munmap included) */
#define TL_CNT_ARENAS 5            /* pymalloc arenas seen allocated (counted at their site) */
#define TL_CNT_ARENA_FREES 6       /* munmap of an arena-sized block (freed arenas, sampled or not) */
#define TL_CNT_PATHS_FULL 7        /* samples without a call path: tl_paths full (or every probed id
                                      taken by another path) */
#define TL_CNT_PATH_COLLISIONS 8   /* a path's hash id held another path: the next id was tried */
#define TL_CNT_MAX 10

/*
 * Per-target configuration, written by the agent before probes are attached.
 * Offsets are bytes; -1 means "not in this CPython version". The Python offsets come from
 * bpf/offsets/cpython.json (3.13+: the interpreter's own _Py_DebugOffsets); the glibc ones
 * from libc's _thread_db_* descriptors.
 */
struct tl_target {
    __u32 flags;
    __u32 py_key;                  /* pthread key of CPython's gilstate TSS (autoTSSkey) */
    /* glibc: pthread_getspecific(key) = specific[key / l2][key % l2].data, from the thread pointer */
    __s32 pthread_specific;
    __u32 pthread_l2;
    __u32 key_data_size;
    __s32 key_data_data;
    /* thread state -> innermost frame */
    __s32 tstate_frame;            /* 3.9/3.10: tstate->frame */
    __s32 tstate_cframe;           /* 3.11/3.12: tstate->cframe->current_frame */
    __s32 cframe_current_frame;
    __s32 tstate_current_frame;    /* 3.13+ */
    /* frames */
    __s32 frame_previous;
    __s32 frame_code;
    __s32 frame_lasti;             /* 3.9/3.10: f_lasti */
    __s32 lasti_mult;              /* bytes per f_lasti unit: 1 (3.9) or 2 (3.10) */
    __s32 frame_instr;             /* 3.11+: prev_instr / instr_ptr */
    __s32 frame_owner;             /* 3.12+: owner byte, to skip C-stack shim frames */
    __s32 owner_cstack;            /* frames with owner >= this have no code (C stack, interpreter
                                      entry: FRAME_OWNED_BY_CSTACK / _INTERPRETER), -1 = none */
    __s32 code_adaptive;           /* 3.11+: offsetof(PyCodeObject, co_code_adaptive) */
    __u64 code_tag_mask;           /* bits to clear from the frame's code pointer (tagged refs) */
    __s64 tstate_tls;              /* 3.15+: thread state at fsbase + this (a static thread-local);
                                      0: through the gilstate key (py_key) */
    /* native: callers in [wrap_lo, wrap_hi) (the libc text) are wrappers; walk the user stack */
    __u64 wrap_lo;
    __u64 wrap_hi;
    /* pymalloc arenas (0 = not watched): mmap(NULL, arena_size, PROT_READ|PROT_WRITE,
     * MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) called from [arena_lo, arena_hi) (the interpreter's text:
     * so never glibc's malloc, which mmaps large chunks from inside libc) is a new arena;
     * munmap(addr, arena_size) releases one. arena_size: bpf/offsets/cpython.json */
    __u64 arena_size;
    __u64 arena_lo;
    __u64 arena_hi;
    /* 3.14t: a thread may run its own copy of a code object's bytecode (thread-local bytecode):
     * instr points into entries[frame->tlbc_index] of code->co_tlbc (a _PyCodeArray: Py_ssize_t
     * size, char *entries[]; entries[0] is co_code_adaptive). -1: no such copies (GIL builds) */
    __s32 frame_tlbc_index;
    __s32 code_tlbc;
};

struct tl_site_key {
    __u32 pid;
    __u32 kind;                    /* TL_SITE_* */
    __u64 code;
    __u32 offset;
    __s32 stack_id;                /* native sites only; -1 otherwise */
};

/*
 * Per-site statistics: the counts of a trackleak.table.Row. The est_* sums are the
 * Horvitz-Thompson weights of the samples (trackleak.sampling): a sample of s bytes drawn with
 * probability p adds 1/p allocations (in TL_COUNT_ONE units) and s/p bytes; its free subtracts
 * exactly what it added (the weights travel in tl_live_val). Live = est_* - est_free_*.
 * The agent may delete an entry that holds nothing live and carry its totals (row = carry + map).
 */
struct tl_site_stats {
    __u64 count;                   /* every allocation >= TL_MIN_SIZE */
    __u64 total_bytes;
    __u64 sample_count;            /* sampled with p(s) = 1 - exp(-s/R), address known */
    __u64 sample_total_bytes;
    __u64 sample_free_count;       /* sampled blocks freed since (free, realloc move) */
    __u64 sample_free_bytes;
    __u64 peak_single;
    __u64 est_count;               /* sum of 1/p over samples, TL_COUNT_ONE units */
    __u64 est_bytes;               /* sum of s/p over samples */
    __u64 est_free_count;          /* the same sums over the samples freed since */
    __u64 est_free_bytes;
};

struct tl_live_key {
    __u32 pid;
    __u32 pad;
    __u64 addr;
};

struct tl_live_val {
    struct tl_site_key site;
    __u64 size;
    __u64 w_count;                 /* the sample's weights (credited back by its free) */
    __u64 w_bytes;
    __u64 t_ns;                    /* bpf_ktime_get_ns() when sampled (CLOCK_MONOTONIC): the host
                                    * agent's duty cycle tells a sample's age from it */
    __u64 path;                    /* tl_paths id of its Python call path (0: none); its free
                                    * credits that path */
};

/* Between an allocator's entry and its return, for sampled calls only. */
struct tl_pending {
    struct tl_site_key site;
    __u64 size;
    __u64 memptr;                  /* posix_memalign: where the result is stored */
    __u64 w_count;
    __u64 w_bytes;
    __u64 path;                    /* tl_paths id (0: none) */
};

/* Between an arena mmap's entry and its return (its own map: glibc's malloc calls mmap inside a
 * sampled malloc, whose tl_pending entry the mmap return must not take). */
struct tl_arena_pending {
    struct tl_pending p;
    __u64 sp;                      /* stack pointer at entry: at the return it is sp + 8, which
                                    * tells this call's return from any other mmap return */
};

/*
 * A Python call path of sampled allocations (issue 9): tl_paths, keyed by an id = a 64-bit hash
 * of (pid, frames, flags), or the next id when that one holds another path (contents compared:
 * two different paths never share an entry). Frames innermost first: code[0]/offset[0] is the
 * allocation's own site (code object, bytecode byte offset as in struct tl_site_key). The
 * counters are the Horvitz-Thompson weights of the samples taken on this path, as in struct
 * tl_site_stats; a free credits the path its sample was taken on (tl_live_val.path).
 * An entry with depth 0 is a stub: a free (or a sampled return) found its path's entry gone (the
 * agent deleted it, idle and holding nothing, in a race) and credited a fresh zero entry at the
 * same id; the agent knows the id's path from before. The agent deletes idle entries that hold
 * nothing and carries their totals (like tl_sites).
 */
struct tl_path_stats {
    __u64 sample_count;
    __u64 sample_free_count;
    __u64 est_count;               /* TL_COUNT_ONE units */
    __u64 est_bytes;
    __u64 est_free_count;
    __u64 est_free_bytes;
};

struct tl_path {
    struct tl_path_stats st;
    __u32 pid;
    __u16 depth;                   /* frames in code[]/offset[]; 0: a stub */
    __u16 flags;                   /* TL_PATH_* */
    __u64 code[TL_PATH_SLOTS];     /* PyCodeObject * per frame, innermost first */
    __u32 offset[TL_PATH_SLOTS];   /* bytecode byte offset per frame */
};

#endif /* TRACKLEAK_BPF_H */
