/* SPDX-License-Identifier: MIT
 *
 * trackleak_shm.h - THE layout of the live table a preloaded process exposes.
 *
 * Every preloaded process maps one memfd named "trackleak" (visible in
 * /proc/PID/maps as "/memfd:trackleak (deleted)"). Readers (trackleak run, the
 * agent) find it there and read it through /proc/PID/mem without stopping the
 * target. Python mirrors this file in agent/layout.py; a test compiles a probe
 * against this header and checks the mirror field by field. Change a field:
 * bump TL_SHM_VERSION.
 *
 * Concurrency: the segment is written by many threads with relaxed atomics and
 * read by other processes with no lock. A writer takes a record (a given-back
 * one, else the next index: header.site_count), fills key and names, then sets
 * state = TL_SITE_READY with a release store. Counters only grow while a
 * record is READY or RETIRED. When the table runs short, records of sites that
 * hold nothing live and stayed idle are RETIRED (out of the writers' index),
 * then FREE: their counters added to record 0 (TL_KIND_OTHER, "other
 * sites") and the record given back. A reader counts READY and RETIRED
 * records, skips the others, clamps everything, and treats the whole segment
 * as hostile input (it may belong to any process).
 */
#ifndef TRACKLEAK_SHM_H
#define TRACKLEAK_SHM_H

#include <stdint.h>

#define TL_SHM_MAGIC "TRKLEAK\0" /* 8 bytes, NUL included */
#define TL_SHM_VERSION 5u /* 4: site.flags, header flags OBJECTS and SMALL_BLOCKS; 5: call stacks */
#define TL_SHM_MEMFD_NAME "trackleak"

#define TL_FUNC_MAX 128 /* bytes incl. NUL; longer names are cut */
#define TL_FILE_MAX 256 /* bytes incl. NUL; longer paths keep their tail */

/* header.flags */
#define TL_FLAG_PYTHON 0x1u         /* the process has a CPython runtime */
#define TL_FLAG_PYMEM_HOOKED 0x2u   /* PyMem/PyObject allocators are wrapped */
#define TL_FLAG_ACTIVE 0x4u         /* start-up delay is over; tracking */
#define TL_FLAG_PY_UNSUPPORTED 0x8u /* CPython version without offsets: native only */
#define TL_FLAG_FORKED 0x10u        /* a forked child: counts start at the fork */
#define TL_FLAG_FROZEN 0x20u        /* the interpreter began finalizing: counts frozen there */
#define TL_FLAG_OBJECTS 0x40u       /* objects <= 512 bytes counted through CPython's reference tracer (3.13+) */
#define TL_FLAG_SMALL_BLOCKS 0x80u  /* pymalloc blocks under min_size counted by samples (3.9-3.12 small-object mode) */

/* site.flags */
#define TL_SITE_F_FREELIST 0x1u /* a sample here was an object of a type CPython recycles through a freelist
                                   (dict, tuple, list, float) while only the allocator was watched (3.9-3.12):
                                   the line that made it may not be the line that holds it */

/* site.state */
#define TL_SITE_EMPTY 0u
#define TL_SITE_RESERVED 1u
#define TL_SITE_READY 2u
#define TL_SITE_RETIRED 3u /* idle, nothing live: out of the index, still counted, folded later */
#define TL_SITE_FREE 4u    /* folded into the TL_KIND_OTHER record: skip it (it may be reused) */

/* site.kind */
#define TL_KIND_PYTHON 1u /* function/file/line of a Python frame */
#define TL_KIND_NATIVE 2u /* caller of the allocator: symbol / ELF object */
#define TL_KIND_OTHER 3u  /* record 0: the totals of sites folded to make room */

struct tl_shm_header {
    char magic[8];          /* TL_SHM_MAGIC */
    uint32_t version;       /* TL_SHM_VERSION */
    uint32_t header_size;   /* sizeof(struct tl_shm_header) */
    uint32_t site_size;     /* sizeof(struct tl_site) */
    uint32_t site_capacity; /* records that follow the header */
    uint32_t site_count;    /* records handed out so far (<= capacity) */
    uint32_t flags;         /* TL_FLAG_* */
    int32_t pid;            /* owner (updated in a forked child) */
    int32_t ppid;
    uint64_t start_time_ns; /* CLOCK_REALTIME when tracking of this process began */
    uint64_t update_time_ns;/* CLOCK_REALTIME of the last dump (0: none yet) */
    uint32_t sample_rate;   /* TRACKLEAK_SAMPLE_RATE (1 in N) */
    uint32_t min_size;      /* TRACKLEAK_MIN_SIZE */
    uint32_t py_version_hex;/* PY_VERSION_HEX of the runtime, 0 if none */
    uint32_t reserved0;
    uint64_t live_samples;     /* sampled blocks not yet freed, as of update_time_ns */
    uint64_t dropped_samples;  /* samples not kept: live set full */
    uint64_t dropped_sites;    /* allocations not attributed: site table full */
    uint64_t dropped_events;   /* event-log records lost: ring full */
    uint64_t sample_interval;  /* mean bytes between samples (R); 0: every allocation is sampled */
    uint64_t recycled_sites;   /* idle records folded into the TL_KIND_OTHER one and given back */
    /* Call stacks (below: struct tl_frame, struct tl_stack); capacities 0: no stacks. */
    uint64_t frames_offset;    /* byte offset of frame record 0 from the start of the segment */
    uint64_t stacks_offset;    /* byte offset of path record 0 */
    uint32_t frame_size;       /* sizeof(struct tl_frame) */
    uint32_t frame_capacity;
    uint32_t frame_count;      /* frame records handed out (<= capacity); never given back */
    uint32_t stack_size;       /* bytes of one path record: sizeof(struct tl_stack) + 4 * stack_depth, to 8 */
    uint32_t stack_capacity;
    uint32_t stack_count;      /* path records handed out (<= capacity); never given back */
    uint32_t stack_depth;      /* frames a path keeps (TRACKLEAK_STACK_DEPTH; 0: no stacks) */
    uint32_t reserved1;
    uint64_t dropped_stacks;   /* samples whose path could not be kept (frame or path table full) */
    uint64_t reserved[2];      /* (the header is 192 bytes: records start on a cache line) */
};

/* Sampling (agent/sampling.py has the full statement): a tracked allocation of s
 * bytes is sampled with probability p(s) = 1 - exp(-s / sample_interval). A sample
 * stands for 1/p(s) allocations and s/p(s) bytes; the est_* counters add those
 * weights (counts in TL_COUNT_ONE units) when the sample is taken and again, the
 * same amounts, when it is freed, so live = est - est_free is an unbiased estimate
 * of what the site allocated and still holds. With sample_interval 0 (every
 * allocation sampled) the weights are exactly 1 and s: est_* stay 0 and readers
 * take live from sample_* (count - free_count, bytes - free_bytes). */
#define TL_COUNT_ONE 1024u

/* The counters of a site, kept twice (tl_site.c): c[TL_C_ATOMIC] is updated
 * with locked adds by any thread; c[TL_C_GIL] with plain adds, and only by
 * threads that hold the GIL (CPython's mem and object domains), which never
 * run at the same time. Mixing the two kinds of writer on one counter would
 * lose updates; two copies keep both cheap and exact. Readers add them up. */
#define TL_C_ATOMIC 0
#define TL_C_GIL 1
struct tl_counts {
    uint64_t count;             /* tracked allocations */
    uint64_t total_bytes;
    uint64_t sample_count;      /* sampled allocations */
    uint64_t sample_bytes;
    uint64_t sample_free_count; /* sampled allocations since freed */
    uint64_t sample_free_bytes;
    uint64_t est_count;         /* sum of 1/p(s) over samples, in TL_COUNT_ONE units */
    uint64_t est_bytes;         /* sum of s/p(s) over samples */
    uint64_t est_free_count;    /* the same for the samples since freed */
    uint64_t est_free_bytes;
};

struct tl_site {
    uint32_t state;  /* TL_SITE_* ; read with acquire */
    uint32_t kind;   /* TL_KIND_* */
    uint32_t line;   /* source line (Python); 0 for native */
    uint32_t flags;  /* TL_SITE_F_* (set with atomic or) */
    uint64_t key_addr;  /* code object address (Python) or return address (native) */
    uint64_t key_aux;   /* instruction byte offset (low 32 bits) | code fingerprint (high 32 bits); 0 for native */
    uint64_t reserved1[4];
    /* At offset 64 of a 64-byte aligned record: each copy's hot counters (count,
     * total_bytes, sample_count, sample_bytes) share one cache line. */
    struct tl_counts c[2];      /* see struct tl_counts */
    uint64_t peak_single;       /* largest single allocation */
    char function[TL_FUNC_MAX]; /* NUL-terminated UTF-8 */
    char file[TL_FILE_MAX];     /* NUL-terminated UTF-8 */
    uint64_t reserved2[3];      /* (a record is 640 bytes: ten cache lines) */
};

/* ---- call stacks (issue 9) -----------------------------------------------
 * After the site records: frame_capacity frame records, then stack_capacity path
 * records (offsets and sizes in the header). Only sampled allocations record a
 * path: the calling thread's Python frames, innermost first, at most
 * stack_depth of them (a deeper stack keeps its innermost and is TRUNCATED).
 *
 * A frame record is one (code object, instruction offset) with its function,
 * file and line resolved once, while the code object is alive; frame records
 * and path records are never recycled (unlike sites), so a path's frame
 * numbers stay valid for the table's life. A full table drops the path
 * (header.dropped_stacks); the sample still counts on its site, and readers
 * show what no path covers as the site's own one-frame stack.
 *
 * A path's counters are the Horvitz-Thompson weights of the samples taken on
 * it (est_*: 1/p in TL_COUNT_ONE units, s/p bytes; with sample_interval 0 the
 * weights are exactly TL_COUNT_ONE and s), added again to est_free_* when the
 * sample is freed; two copies as for sites (TL_C_ATOMIC, TL_C_GIL). Its frame
 * 0 is the site's own frame: readers attach the path to the row whose
 * (function, file, line) it names. Publication as for sites: fill, then
 * state = TL_SITE_READY with release; TL_SITE_FREE marks a record a writer
 * gave up (a lost race): skip it. */
#define TL_STACK_DEPTH_MAX 128u
#define TL_STACK_F_TRUNCATED 0x1u /* the thread had more frames than stack_depth: the outermost were cut */

struct tl_frame {
    uint32_t state;   /* TL_SITE_READY when filled */
    uint32_t line;
    uint64_t key_addr; /* code object address */
    uint64_t key_aux;  /* instruction byte offset | code fingerprint << 32 (as a site's) */
    char function[TL_FUNC_MAX];
    char file[TL_FILE_MAX];
};

struct tl_stack_counts {
    uint64_t est_count; /* sum of 1/p over the samples taken on this path, TL_COUNT_ONE units */
    uint64_t est_bytes;
    uint64_t est_free_count;
    uint64_t est_free_bytes;
};

struct tl_stack {
    uint32_t state;   /* TL_SITE_READY when filled; TL_SITE_FREE: abandoned, skip */
    uint32_t depth;   /* frames used (1..stack_depth) */
    uint32_t flags;   /* TL_STACK_F_* */
    uint32_t hash;
    struct tl_stack_counts c[2];
    uint32_t frames[]; /* frame record numbers, innermost (the site's own frame) first */
};

#endif /* TRACKLEAK_SHM_H */
