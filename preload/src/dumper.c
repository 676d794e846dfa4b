/* SPDX-License-Identifier: MIT
 * dumper.c - everything that formats or writes. Never runs inside malloc.
 *
 * Who calls tl_dump():
 *   - Python processes: a pending call (Py_AddPendingCall) that the main
 *     thread runs between bytecodes, holding the GIL. No thread of ours:
 *     CPython 3.12+ warns on every fork() in a process with a second thread.
 *     Unless the main thread stays blocked in C while other threads allocate:
 *     then (multi-threaded already) the dump thread takes over.
 *   - Other processes: no thread either. A thread the program did not ask for
 *     breaks programs that change credentials: glibc broadcasts setuid/setgid
 *     to every thread and aborts when one differs (seen: `setpriv --reuid`
 *     preloaded died with SIGABRT 1 run in 2). The interval dump is written by
 *     the allocating thread whose sample finds it due (the dump allocates
 *     nothing and holds no lock of the allocator's), so a process that stops
 *     allocating writes its next table at exit; the live table is current.
 *   - Every process: at exit (destructor) and in _exit() (os._exit).
 * Files are opened per dump with O_NOFOLLOW in a checked directory, mode 0600,
 * and written with one write(2) each, so processes sharing a file (forked
 * children) never interleave and every line names its pid. A failed write is
 * reported once; then file logging stops and the live table carries on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tl_internal.h"

/* ---- growable output buffer (mmap, never the hooked heap) ---------------- */
struct obuf {
    char *p;
    size_t len, cap;
    int failed;
};

static void ob_reserve(struct obuf *b, size_t more)
{
    if (b->failed || b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more + 1)
        cap *= 2;
    void *n = b->p ? mremap(b->p, b->cap, cap, MREMAP_MAYMOVE)
                   : mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (n == MAP_FAILED) {
        b->failed = 1;
        return;
    }
    b->p = n;
    b->cap = cap;
}

static void ob_printf(struct obuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ob_printf(struct obuf *b, const char *fmt, ...)
{
    for (int tries = 0; tries < 2; tries++) {
        ob_reserve(b, 256);
        if (b->failed)
            return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        ob_reserve(b, (size_t)n + 1);
    }
}

static void ob_json_str(struct obuf *b, const char *s)
{
    ob_reserve(b, strlen(s) * 6 + 2);
    if (b->failed)
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            *o++ = '\\';
            *o++ = (char)*c;
        } else if (*c < 0x20) {
            o += sprintf(o, "\\u%04x", *c);
        } else {
            *o++ = (char)*c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

static void ob_free(struct obuf *b)
{
    if (b->p)
        munmap(b->p, b->cap);
    memset(b, 0, sizeof *b);
}

/* ---- files ----------------------------------------------------------------- */
static int files_off; /* a write failed: stop writing files */

static void append_file(const char *name, const char *data, size_t len)
{
    if (files_off || !tl_cfg.log_dir[0] || !len)
        return;
    int dfd = open(tl_cfg.log_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int fd = dfd < 0 ? -1 : openat(dfd, name, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    int err = errno;
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        fd = -1;
        err = EINVAL;
    }
    if (dfd >= 0)
        close(dfd);
    if (fd < 0) {
        files_off = 1;
        tl_say("cannot open %s/%s (%s); log files are off for this process, the live table still works",
               tl_cfg.log_dir, name, err == ELOOP ? "it is a symlink; refusing to follow it" : strerror(err));
        return;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            files_off = 1;
            tl_say("cannot write %s/%s (%s); log files are off for this process", tl_cfg.log_dir, name,
                   n < 0 ? strerror(errno) : "short write");
            break;
        }
        done += (size_t)n;
    }
    close(fd);
}

/* ---- rows: sites merged by (kind, function, file, line) ------------------ */
struct row {
    const struct tl_site *s; /* names and line */
    uint64_t count, total, scount, sbytes, sfree, sfcount, peak;
    uint64_t est_c, est_b, est_fc, est_fb; /* weights (trackleak_shm.h): live = est - est_free */
    uint32_t flags;                        /* TL_SITE_F_* of the merged records */
};

/* The order of places (function, file, line): of sites, of frames, of a path's leaf. */
static int cmp_place(const char *fa, const char *ma, uint32_t la, const char *fb, const char *mb, uint32_t lb)
{
    int c = strcmp(fa, fb);
    if (c)
        return c;
    c = strcmp(ma, mb);
    if (c)
        return c;
    return la < lb ? -1 : la > lb;
}

static int cmp_site_key(const void *a, const void *b)
{
    const struct tl_site *x = *(const struct tl_site *const *)a, *y = *(const struct tl_site *const *)b;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return cmp_place(x->function, x->file, x->line, y->function, y->file, y->line);
}

static int cmp_row_bytes(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    return x->total < y->total ? 1 : x->total > y->total ? -1 : 0;
}

/* In-place heap sort. Not qsort: glibc's qsort may call malloc, and a dump
 * can run from _exit() in a signal handler that interrupted malloc. */
static void heap_sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    char *a = base, tmp[sizeof(struct row) > sizeof(void *) ? sizeof(struct row) : sizeof(void *)];
#define EL(i) (a + (i) * size)
#define SWAP(i, j) (memcpy(tmp, EL(i), size), memcpy(EL(i), EL(j), size), memcpy(EL(j), tmp, size))
    for (size_t end = n, start = n / 2; end > 1;) {
        size_t root;
        if (start > 0) {
            root = --start;
        } else {
            SWAP(0, end - 1);
            end--;
            root = 0;
        }
        for (size_t child; (child = 2 * root + 1) < end; root = child) {
            if (child + 1 < end && cmp(EL(child), EL(child + 1)) < 0)
                child++;
            if (cmp(EL(root), EL(child)) >= 0)
                break;
            SWAP(root, child);
        }
    }
#undef SWAP
#undef EL
}

/* Returns the number of rows written into *out (mmap'd; caller unmaps). */
static size_t collect_rows(struct row **out, size_t *bytes)
{
    uint32_t n = __atomic_load_n(&tl_hdr->site_count, __ATOMIC_ACQUIRE);
    if (n > tl_hdr->site_capacity)
        n = tl_hdr->site_capacity;
    *out = NULL;
    *bytes = (size_t)n * (sizeof(struct row) + sizeof(void *)) + 4096;
    void *mem = mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return 0;
    const struct tl_site **idx = mem;
    struct row *rows = (struct row *)(idx + n);
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct tl_site *s = &tl_sites[i];
        uint32_t st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
        if ((st == TL_SITE_READY || st == TL_SITE_RETIRED) && (s->c[0].count || s->c[1].count))
            idx[k++] = s;
    }
    heap_sort(idx, k, sizeof *idx, cmp_site_key);
    size_t r = 0;
    for (size_t i = 0; i < k; i++) {
        const struct tl_site *s = idx[i];
        if (!r || cmp_site_key(&rows[r - 1].s, &idx[i]) != 0)
            rows[r++] = (struct row){.s = s};
        struct row *w = &rows[r - 1];
        for (int c = 0; c < 2; c++) {
            w->count += __atomic_load_n(&s->c[c].count, __ATOMIC_RELAXED);
            w->total += __atomic_load_n(&s->c[c].total_bytes, __ATOMIC_RELAXED);
            w->scount += __atomic_load_n(&s->c[c].sample_count, __ATOMIC_RELAXED);
            w->sbytes += __atomic_load_n(&s->c[c].sample_bytes, __ATOMIC_RELAXED);
            w->sfree += __atomic_load_n(&s->c[c].sample_free_bytes, __ATOMIC_RELAXED);
            w->sfcount += __atomic_load_n(&s->c[c].sample_free_count, __ATOMIC_RELAXED);
            w->est_c += __atomic_load_n(&s->c[c].est_count, __ATOMIC_RELAXED);
            w->est_b += __atomic_load_n(&s->c[c].est_bytes, __ATOMIC_RELAXED);
            w->est_fc += __atomic_load_n(&s->c[c].est_free_count, __ATOMIC_RELAXED);
            w->est_fb += __atomic_load_n(&s->c[c].est_free_bytes, __ATOMIC_RELAXED);
        }
        w->flags |= __atomic_load_n(&s->flags, __ATOMIC_RELAXED);
        uint64_t pk = __atomic_load_n(&s->peak_single, __ATOMIC_RELAXED);
        if (pk > w->peak)
            w->peak = pk;
    }
    uint64_t live = 0;
    for (uint32_t i = 0; i < n; i++)
        for (int c = 0; c < 2; c++)
            live += tl_sites[i].c[c].sample_count - tl_sites[i].c[c].sample_free_count;
    __atomic_store_n(&tl_hdr->live_samples, live, __ATOMIC_RELAXED);
    for (size_t i = 0; i < r; i++)
        if (rows[i].sfree > rows[i].sbytes)
            rows[i].sfree = rows[i].sbytes; /* counters read at slightly different times */
    heap_sort(rows, r, sizeof *rows, cmp_row_bytes);
    /* Move rows to the front of the mapping so the caller can index them. */
    memmove(mem, rows, r * sizeof *rows);
    *out = mem;
    return r;
}

/* Estimated bytes and allocations made at the site and still live (0 when the
 * counters, read at slightly different times, cross). */
static uint64_t live_bytes(const struct row *w)
{
    if (!tl_cfg.sample_interval) /* every allocation sampled: exact, from the samples */
        return w->sbytes > w->sfree ? w->sbytes - w->sfree : 0;
    return w->est_b > w->est_fb ? w->est_b - w->est_fb : 0;
}
static uint64_t live_count(const struct row *w)
{
    if (!tl_cfg.sample_interval)
        return w->scount > w->sfcount ? w->scount - w->sfcount : 0;
    return w->est_c > w->est_fc ? (w->est_c - w->est_fc + TL_COUNT_ONE / 2) / TL_COUNT_ONE : 0;
}

/* RET%: the share of the bytes allocated here that are still held, from the
 * live-bytes estimate (agent/table.py kept_pct: the same rule); -1 when nothing
 * was sampled. */
static double retention(const struct row *w)
{
    if (!w->scount || !w->total)
        return -1.0;
    uint64_t live = live_bytes(w);
    return 100.0 * (double)(live < w->total ? live : w->total) / (double)w->total;
}

/* ---- call paths (stacks.c), attached to the rows they end at ---------------
 * Paths sorted by the names of their frames, innermost first: the paths of a
 * row (leaf = the row's function, file, line) are one run, and paths with the
 * same names (a race's duplicate record, a code object made again) are
 * neighbours, merged when written (readers refuse a row with two stacks of
 * the same frames). */
struct paths {
    uint32_t *idx; /* path record numbers */
    size_t n, bytes;
};

static inline const struct tl_stack *path_at(uint32_t i)
{
    return (const struct tl_stack *)(tl_stacks + (size_t)i * tl_hdr->stack_size);
}

static int cmp_frame(uint32_t a, uint32_t b)
{
    if (a == b)
        return 0;
    const struct tl_frame *x = &tl_frames[a], *y = &tl_frames[b];
    return cmp_place(x->function, x->file, x->line, y->function, y->file, y->line);
}

static int cmp_path(const void *a, const void *b)
{
    const struct tl_stack *x = path_at(*(const uint32_t *)a), *y = path_at(*(const uint32_t *)b);
    uint32_t n = x->depth < y->depth ? x->depth : y->depth;
    for (uint32_t i = 0; i < n; i++) {
        int c = cmp_frame(x->frames[i], y->frames[i]);
        if (c)
            return c;
    }
    return x->depth < y->depth ? -1 : x->depth > y->depth;
}

/* Does path I end at the row's site? <0: it sorts before, >0 after. */
static int cmp_leaf(uint32_t i, const struct tl_site *s)
{
    const struct tl_frame *f = &tl_frames[path_at(i)->frames[0]];
    return cmp_place(f->function, f->file, f->line, s->function, s->file, s->line);
}

static void collect_paths(struct paths *ps)
{
    ps->idx = NULL;
    ps->n = 0;
    uint32_t cap = tl_hdr->stack_capacity, nf = __atomic_load_n(&tl_hdr->frame_count, __ATOMIC_ACQUIRE);
    uint32_t n = __atomic_load_n(&tl_hdr->stack_count, __ATOMIC_ACQUIRE);
    if (!cap || !tl_stacks || !tl_frames)
        return;
    if (n > cap)
        n = cap;
    if (nf > tl_hdr->frame_capacity)
        nf = tl_hdr->frame_capacity;
    ps->bytes = (size_t)n * sizeof(uint32_t) + 4096;
    void *mem = mmap(NULL, ps->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return;
    ps->idx = mem;
    for (uint32_t i = 0; i < n; i++) {
        const struct tl_stack *p = path_at(i);
        if (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != TL_SITE_READY || !p->depth ||
            p->depth > tl_hdr->stack_depth || !(p->c[0].est_count || p->c[1].est_count))
            continue;
        int ok = 1;
        for (uint32_t k = 0; k < p->depth && ok; k++)
            ok = p->frames[k] < nf && __atomic_load_n(&tl_frames[p->frames[k]].state, __ATOMIC_ACQUIRE) == TL_SITE_READY;
        if (ok)
            ps->idx[ps->n++] = i;
    }
    heap_sort(ps->idx, ps->n, sizeof *ps->idx, cmp_path);
}

static void format_stacks(struct obuf *b, const struct paths *ps, const struct tl_site *s)
{
    /* the first path ending at s (binary search: lower bound) */
    size_t lo = 0, hi = ps->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_leaf(ps->idx[mid], s) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    ob_printf(b, ",\"stacks\":[");
    int first = 1;
    for (size_t i = lo; i < ps->n && cmp_leaf(ps->idx[i], s) == 0;) {
        const struct tl_stack *p = path_at(ps->idx[i]);
        uint64_t c = 0, by = 0, fc = 0, fb = 0;
        int truncated = 0;
        size_t j = i;
        for (; j < ps->n && (j == i || cmp_path(&ps->idx[i], &ps->idx[j]) == 0); j++) {
            const struct tl_stack *q = path_at(ps->idx[j]);
            for (int k = 0; k < 2; k++) {
                c += __atomic_load_n(&q->c[k].est_count, __ATOMIC_RELAXED);
                by += __atomic_load_n(&q->c[k].est_bytes, __ATOMIC_RELAXED);
                fc += __atomic_load_n(&q->c[k].est_free_count, __ATOMIC_RELAXED);
                fb += __atomic_load_n(&q->c[k].est_free_bytes, __ATOMIC_RELAXED);
            }
            truncated |= (q->flags & TL_STACK_F_TRUNCATED) != 0;
        }
        i = j;
        ob_printf(b, first ? "{\"frames\":[" : ",{\"frames\":[");
        first = 0;
        for (uint32_t k = p->depth; k-- > 0;) { /* outermost first */
            const struct tl_frame *f = &tl_frames[p->frames[k]];
            ob_printf(b, k + 1 == p->depth ? "[" : ",[");
            ob_json_str(b, f->function);
            ob_printf(b, ",");
            ob_json_str(b, f->file);
            ob_printf(b, ",%u]", f->line);
        }
        ob_printf(b, "],\"live_bytes\":%llu,\"live_count\":%llu,\"total_bytes\":%llu,\"count\":%llu%s}",
                  (unsigned long long)(by > fb ? by - fb : 0),
                  (unsigned long long)(c > fc ? (c - fc + TL_COUNT_ONE / 2) / TL_COUNT_ONE : 0),
                  (unsigned long long)by, (unsigned long long)((c + TL_COUNT_ONE / 2) / TL_COUNT_ONE),
                  truncated ? ",\"truncated\":true" : "");
    }
    ob_printf(b, "]");
}

#define MB(x) ((double)(x) / (1024.0 * 1024.0))
#define JSON_ROWS_MAX 5000
#define TEXT_ROWS 20

static void format_text(struct obuf *b, const struct row *rows, size_t n, long now, const char *reason)
{
    ob_printf(b, "%-30s %8s %10s %8s %12s %8s %-16s | %s\n", "FUNCTION", "COUNT", "TOTAL_MB", "SAMPLES", "SAMPLE_MB",
              "LINE", "FREED_MB(RET%)", "FILE");
    ob_printf(b, "------------------------------ -------- ---------- -------- ------------ -------- ---------------- | -----\n");
    for (size_t i = 0; i < n && i < TEXT_ROWS; i++) {
        const struct row *w = &rows[i];
        char freed[48];
        double ret = retention(w);
        if (ret < 0)
            snprintf(freed, sizeof freed, "%.2f(n/a)", MB(w->sfree));
        else
            snprintf(freed, sizeof freed, "%.2f(%.1f%%)", MB(w->sfree), ret);
        char fn[TL_FUNC_MAX + 8];
        snprintf(fn, sizeof fn, (w->flags & TL_SITE_F_FREELIST) ? "%.26s (?)" : "%s", w->s->function);
        ob_printf(b, "%-30.30s %8llu %10.2f %8llu %12.2f %8u %-16s | %s\n", fn,
                  (unsigned long long)w->count, MB(w->total), (unsigned long long)w->scount, MB(w->sbytes),
                  w->s->line, freed, w->s->file);
    }
    /* Small objects (objects.c): the marker's meaning, or that they were not tracked. */
    int marked = 0;
    for (size_t i = 0; i < n && i < TEXT_ROWS; i++)
        marked |= (rows[i].flags & TL_SITE_F_FREELIST) != 0;
    if (marked)
        ob_printf(b, "--- (?) after a FUNCTION: objects CPython recycles through freelists were sampled there while only "
                     "the allocator was watched (CPython < 3.13): the line that keeps them may be another ---\n");
    uint32_t fl = __atomic_load_n(&tl_hdr->flags, __ATOMIC_RELAXED);
    if ((fl & TL_FLAG_PYMEM_HOOKED) && !(fl & (TL_FLAG_OBJECTS | TL_FLAG_SMALL_BLOCKS)) && tl_cfg.min_size > 0)
        ob_printf(b, "--- objects under %zu bytes are not tracked on this Python (before 3.13): "
                     "TRACKLEAK_SMALL_OBJECTS=1 tracks them ---\n", tl_cfg.min_size);
    /* Losses are said here too (the original's footer, unchanged when there are none). */
    if (tl_hdr->dropped_sites || tl_hdr->dropped_samples || tl_hdr->recycled_sites)
        ob_printf(b,
                  "--- not attributed (site table full): %llu allocations; samples not kept (live set full): "
                  "%llu; idle sites folded into [other sites]: %llu ---\n",
                  (unsigned long long)tl_hdr->dropped_sites, (unsigned long long)tl_hdr->dropped_samples,
                  (unsigned long long)tl_hdr->recycled_sites);
    if (tl_hdr->dropped_stacks)
        ob_printf(b, "--- call paths not kept (stack table full: TRACKLEAK_MAX_STACKS): %llu samples, counted on "
                     "their line alone ---\n",
                  (unsigned long long)tl_hdr->dropped_stacks);
    ob_printf(b, "--- dump at %ld (%zu functions, hash %u/%u) pid=%d reason=%s ---\n", now, n,
              tl_hdr->site_count > tl_hdr->site_capacity ? tl_hdr->site_capacity : tl_hdr->site_count,
              tl_hdr->site_capacity, (int)getpid(), reason);
}

static void format_json(struct obuf *b, const struct row *rows, size_t n, long now, const char *reason,
                        const struct paths *ps)
{
    const char *py = tl_py_version_str();
    uint64_t start_s = tl_hdr->start_time_ns / 1000000000ull;
    ob_printf(b,
              "{\"format\":\"trackleak-dump\",\"version\":1,\"pid\":%d,\"ppid\":%d,\"timestamp\":%ld,"
              "\"reason\":\"%s\",\"elapsed_seconds\":%ld,\"sample_rate\":%u,\"sample_interval\":%llu,"
              "\"min_size\":%zu,\"python\":",
              (int)getpid(), (int)getppid(), now, reason, now - (long)start_s, tl_cfg.sample_rate,
              (unsigned long long)tl_cfg.sample_interval, tl_cfg.min_size);
    if (py)
        ob_json_str(b, py);
    else
        ob_printf(b, "null");
    ob_printf(b,
              ",\"truncated\":%zu,\"dropped\":{\"samples\":%llu,\"sites\":%llu,\"events\":%llu,"
              "\"recycled_sites\":%llu,\"stacks\":%llu},\"stack_depth\":%u,\"sites\":[",
              n > JSON_ROWS_MAX ? n - JSON_ROWS_MAX : 0, (unsigned long long)tl_hdr->dropped_samples,
              (unsigned long long)tl_hdr->dropped_sites, (unsigned long long)tl_hdr->dropped_events,
              (unsigned long long)tl_hdr->recycled_sites, (unsigned long long)tl_hdr->dropped_stacks,
              tl_hdr->stack_capacity ? tl_hdr->stack_depth : 0);
    for (size_t i = 0; i < n && i < JSON_ROWS_MAX; i++) {
        const struct row *w = &rows[i];
        ob_printf(b, i ? ",{\"function\":" : "{\"function\":");
        ob_json_str(b, w->s->function);
        ob_printf(b, ",\"file\":");
        ob_json_str(b, w->s->file);
        ob_printf(b,
                  ",\"line\":%u,\"count\":%llu,\"total_bytes\":%llu,\"sample_count\":%llu,"
                  "\"sample_total_bytes\":%llu,\"sample_free_bytes\":%llu,\"retention_pct\":",
                  w->s->line, (unsigned long long)w->count, (unsigned long long)w->total,
                  (unsigned long long)w->scount, (unsigned long long)w->sbytes, (unsigned long long)w->sfree);
        double ret = retention(w);
        if (ret < 0)
            ob_printf(b, "null");
        else
            ob_printf(b, "%.1f", ret);
        ob_printf(b, ",\"peak_single\":%llu,\"avg_size\":%llu,\"native\":%s,\"live_bytes\":%llu,\"live_count\":%llu,"
                     "\"misattributed\":%s}",
                  (unsigned long long)w->peak, (unsigned long long)(w->count ? w->total / w->count : 0),
                  w->s->kind == TL_KIND_NATIVE ? "true" : "false", (unsigned long long)live_bytes(w),
                  (unsigned long long)live_count(w), (w->flags & TL_SITE_F_FREELIST) ? "true" : "false");
        if (ps->idx && w->s->kind == TL_KIND_PYTHON) {
            b->len--; /* reopen the row: its call paths */
            format_stacks(b, ps, w->s);
            ob_printf(b, "}");
        }
    }
    ob_printf(b, "]}\n");
}

/* ---- events ring: filled by the hooks, drained here ----------------------- */
#define EV_BITS 16
struct ev {
    uint64_t seq;
    uint64_t ptr, size, ts;
    uint32_t type, site;
};
static struct ev *ring;
static uint64_t ring_head, ring_tail;

void tl_event(int type, void *p, size_t size, uint32_t site)
{
    if (!ring)
        return;
    const uint64_t mask = (1u << EV_BITS) - 1;
    uint64_t pos = __atomic_load_n(&ring_head, __ATOMIC_RELAXED);
    for (;;) {
        struct ev *e = &ring[pos & mask];
        int64_t dif = (int64_t)__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) - (int64_t)pos;
        if (dif == 0) {
            if (__atomic_compare_exchange_n(&ring_head, &pos, pos + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                e->ptr = (uint64_t)(uintptr_t)p;
                e->size = size;
                e->type = (uint32_t)type;
                e->site = site;
                e->ts = (uint64_t)time(NULL);
                __atomic_store_n(&e->seq, pos + 1, __ATOMIC_RELEASE);
                return;
            }
        } else if (dif < 0) {
            __atomic_add_fetch(&tl_hdr->dropped_events, 1, __ATOMIC_RELAXED);
            return;
        } else {
            pos = __atomic_load_n(&ring_head, __ATOMIC_RELAXED);
        }
    }
}

static void drain_events(void)
{
    if (!ring)
        return;
    const uint64_t mask = (1u << EV_BITS) - 1;
    struct obuf b = {0};
    int pid = (int)getpid();
    for (;;) {
        uint64_t pos = ring_tail;
        struct ev *e = &ring[pos & mask];
        if ((int64_t)__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) - (int64_t)(pos + 1) != 0)
            break;
        if (e->type == 1 && e->site < tl_hdr->site_capacity) {
            const struct tl_site *s = &tl_sites[e->site];
            ob_printf(&b, "{\"event_type\":1,\"ptr\":\"0x%llx\",\"size\":%llu,\"function\":",
                      (unsigned long long)e->ptr, (unsigned long long)e->size);
            ob_json_str(&b, s->function);
            ob_printf(&b, ",\"file\":");
            ob_json_str(&b, s->file);
            ob_printf(&b, ",\"line\":%u,\"timestamp\":\"%llu\",\"pid\":%d}\n", s->line, (unsigned long long)e->ts, pid);
        } else {
            ob_printf(&b, "{\"event_type\":2,\"ptr\":\"0x%llx\",\"timestamp\":\"%llu\",\"pid\":%d}\n",
                      (unsigned long long)e->ptr, (unsigned long long)e->ts, pid);
        }
        __atomic_store_n(&e->seq, pos + mask + 1, __ATOMIC_RELEASE);
        ring_tail = pos + 1;
        if (b.len > (1u << 20)) {
            append_file(tl_cfg.event_log, b.p, b.len);
            b.len = 0;
        }
    }
    append_file(tl_cfg.event_log, b.p, b.len);
    ob_free(&b);
}

/* ---- the dump ------------------------------------------------------------- */
static int dumping; /* try-lock: a dump never waits for another */

void tl_dump(const char *reason)
{
    if (!tl_hdr || __atomic_exchange_n(&dumping, 1, __ATOMIC_ACQUIRE))
        return;
    int saved_errno = errno;
    int old_guard = tl_guard;
    tl_guard = 1; /* anything we allocate (stdio) is not the user's */
    drain_events();
    struct row *rows;
    size_t rows_bytes;
    size_t n = collect_rows(&rows, &rows_bytes);
    long now = (long)time(NULL);
    struct obuf b = {0};
    format_text(&b, rows ? rows : NULL, rows ? n : 0, now, reason);
    if (!b.failed)
        append_file(tl_cfg.json_log, b.p, b.len);
    b.len = 0;
    struct paths ps;
    collect_paths(&ps);
    format_json(&b, rows, rows ? n : 0, now, reason, &ps);
    if (!b.failed)
        append_file(tl_cfg.jsonl_log, b.p, b.len);
    ob_free(&b);
    if (ps.idx)
        munmap(ps.idx, ps.bytes);
    if (rows)
        munmap(rows, rows_bytes);
    __atomic_store_n(&tl_hdr->update_time_ns, tl_now_ns(CLOCK_REALTIME), __ATOMIC_RELAXED);
    tl_guard = old_guard;
    errno = saved_errno;
    __atomic_store_n(&dumping, 0, __ATOMIC_RELEASE);
}

static int exit_dumped;

void tl_dump_at_exit(void)
{
    if (!tl_hdr || __atomic_exchange_n(&exit_dumped, 1, __ATOMIC_ACQ_REL))
        return;
    tl_dump("exit");
}

/* ---- scheduling ------------------------------------------------------------ */
static uint64_t next_due_ns; /* CLOCK_MONOTONIC */
static int pending_queued;
static pid_t thread_pid; /* pid in which the native dumper thread runs */

static uint64_t period_ns(void)
{
    /* Events are drained every second; tables every dump interval. */
    return (tl_cfg.events ? 1ull : (uint64_t)tl_cfg.dump_interval) * 1000000000ull;
}

static uint64_t next_table_ns; /* CLOCK_MONOTONIC */

static int pending_dump(void *arg)
{
    (void)arg;
    __atomic_store_n(&pending_queued, 0, __ATOMIC_RELEASE);
    uint64_t now = tl_now_ns(CLOCK_MONOTONIC);
    /* The coarse clock that scheduled us may run a few ms behind. */
    if (now + 20000000ull >= next_table_ns) {
        next_table_ns = now + (uint64_t)tl_cfg.dump_interval * 1000000000ull;
        tl_dump("interval");
    } else {
        int old = tl_guard;
        tl_guard = 1;
        drain_events();
        tl_guard = old;
    }
    return 0;
}

static void *dumper_thread(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec ts = {.tv_sec = 1, .tv_nsec = 0};
        nanosleep(&ts, NULL);
        if (getpid() != thread_pid)
            return NULL;
        uint64_t now = tl_now_ns(CLOCK_MONOTONIC);
        if (now >= next_table_ns) {
            next_table_ns = now + (uint64_t)tl_cfg.dump_interval * 1000000000ull;
            tl_dump("interval");
        } else if (tl_cfg.events) {
            int old = tl_guard;
            tl_guard = 1;
            drain_events();
            tl_guard = old;
        }
    }
    return NULL;
}

/* Start the dump thread of this process (once per pid). */
static void start_dump_thread(void)
{
    pid_t me = tl_owner_pid;
    if (__atomic_load_n(&thread_pid, __ATOMIC_RELAXED) == me || __atomic_exchange_n(&thread_pid, me, __ATOMIC_ACQ_REL) == me)
        return;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&t, &attr, dumper_thread, NULL) != 0)
        tl_say("cannot start its dump thread; only the exit dump will be written");
    pthread_attr_destroy(&attr);
}

static uint64_t queued_at_ns; /* when the pending dump still waiting was queued */

void tl_dump_tick(void)
{
    if (tl_py_present() && __atomic_load_n(&thread_pid, __ATOMIC_RELAXED) == tl_owner_pid) {
        start_dump_thread(); /* no-op once it runs */
        return;
    }
    uint64_t now = tl_now_ns(CLOCK_MONOTONIC_COARSE);
    uint64_t due = __atomic_load_n(&next_due_ns, __ATOMIC_RELAXED);
    if (now < due ||
        !__atomic_compare_exchange_n(&next_due_ns, &due, now + period_ns(), 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    if (!tl_py_present()) { /* not Python: this thread writes it, now (see the top of this file) */
        pending_dump(NULL);
        return;
    }
    if (!__atomic_exchange_n(&pending_queued, 1, __ATOMIC_ACQ_REL)) {
        queued_at_ns = now;
        if (tl_py_schedule(pending_dump, NULL) != 0)
            __atomic_store_n(&pending_queued, 0, __ATOMIC_RELEASE);
    } else if (now - queued_at_ns >= period_ns()) {
        /* The main thread has run no bytecode for a whole period (blocked in C,
         * e.g. in join()) while other threads allocate: the process is
         * multi-threaded already, so a dump thread changes nothing for the
         * fork() warning. From now on it writes the interval dumps. */
        start_dump_thread();
    }
}

void tl_dumper_init(void)
{
    uint64_t now = tl_now_ns(CLOCK_MONOTONIC);
    next_due_ns = now + period_ns();
    next_table_ns = now + (uint64_t)tl_cfg.dump_interval * 1000000000ull;
    if (tl_cfg.events) {
        ring = mmap(NULL, sizeof(struct ev) << EV_BITS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (ring == MAP_FAILED) {
            ring = NULL;
            tl_say("cannot map the event buffer; MEMORY_PROFILER_EVENTS is off");
            return;
        }
        for (uint64_t i = 0; i < (1u << EV_BITS); i++)
            ring[i].seq = i;
    }
}

void tl_dumper_after_fork_child(void)
{
    __atomic_store_n(&dumping, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pending_queued, 0, __ATOMIC_RELAXED);
    exit_dumped = 0;
    if (ring) {
        /* The parent's events are the parent's to write. */
        for (uint64_t i = 0; i < (1u << EV_BITS); i++)
            ring[i].seq = i;
        ring_head = ring_tail = 0;
    }
}
