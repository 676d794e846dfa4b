/* SPDX-License-Identifier: MIT
 * test_recorder.c - the recorder, site table, live set, fork copy and dumper
 * driven through their C API, without LD_PRELOAD and without Python.
 * Built with ASan + UBSan by tests/integration/test_recorder_c.py (the hook
 * layer is not linked: these tests own malloc). Prints "N passed, M failed".
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tl_internal.h"

static int passed, failed;

/* objects.c is not linked (it needs the hook layer); the recorder calls this at each sample. */
void tl_objects_watch(void) {}
#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (cond) {                                                                         \
            passed++;                                                                       \
        } else {                                                                            \
            failed++;                                                                       \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                          \
            printf(__VA_ARGS__);                                                            \
            printf("\n");                                                                   \
        }                                                                                   \
    } while (0)

/* Two "allocating functions": their addresses are the return addresses. */
__attribute__((noinline)) void site_alpha(void) { __asm__ volatile("nop; nop; nop; nop; nop; nop; nop; nop"); }
__attribute__((noinline)) void site_beta(void) { __asm__ volatile("nop; nop; nop; nop; nop; nop; nop; nop"); }
#define RA_ALPHA ((void *)((char *)site_alpha + 1))
#define RA_BETA ((void *)((char *)site_beta + 1))

static struct tl_site *site_named(const char *fn)
{
    for (uint32_t i = 0; i < tl_hdr->site_count; i++)
        if (tl_sites[i].state == TL_SITE_READY && strcmp(tl_sites[i].function, fn) == 0 &&
            (tl_sites[i].c[0].count || tl_sites[i].c[1].count))
            return &tl_sites[i];
    return NULL;
}

static uint64_t total(const struct tl_site *s, size_t field_off)
{
    return *(const uint64_t *)((const char *)&s->c[0] + field_off) + *(const uint64_t *)((const char *)&s->c[1] + field_off);
}
#define SUM(s, f) total((s), offsetof(struct tl_counts, f))

static void record(void *p, size_t size, void *ra, int gil)
{
    tl_guard = 1;
    tl_record_alloc(p, size, ra, gil);
    tl_guard = 0;
}

static int release(void *p, int gil)
{
    tl_entry_t e;
    if (!tl_take(p, &e, gil))
        return 0;
    tl_credit_free(p, e, gil);
    return 1;
}

static void test_counts_and_retention(void)
{
    /* GIVEN 1000 blocks from alpha (kept) and 1000 from beta (all freed), exhaustive sampling */
    static char arena[2000][64];
    for (int i = 0; i < 1000; i++) {
        record(arena[i], 600, RA_ALPHA, 0);
        record(arena[1000 + i], 700, RA_BETA, i & 1); /* both kinds of writer on one site */
    }
    for (int i = 0; i < 1000; i++)
        CHECK(release(arena[1000 + i], i & 1), "block %d of beta not found in its live set", i);
    struct tl_site *a = site_named("site_alpha"), *b = site_named("site_beta");
    CHECK(a && b, "sites named by dladdr (alpha=%p beta=%p)", (void *)a, (void *)b);
    if (!a || !b)
        return;
    CHECK(SUM(a, count) == 1000 && SUM(a, total_bytes) == 600000, "alpha count %lu", (unsigned long)SUM(a, count));
    CHECK(SUM(a, sample_count) == 1000 && SUM(a, sample_free_bytes) == 0, "alpha kept everything");
    CHECK(SUM(b, count) == 1000 && SUM(b, sample_bytes) == 700000 && SUM(b, sample_free_bytes) == 700000,
          "beta freed everything: free bytes %lu", (unsigned long)SUM(b, sample_free_bytes));
    CHECK(a->peak_single == 600 && b->peak_single == 700, "peaks");
    /* AND a block is credited once: a second free finds nothing */
    CHECK(!release(arena[1000], 0) && !release(arena[1000], 1), "double credit");
    /* AND an unknown pointer is not found */
    CHECK(!release((void *)0x12340, 0), "unknown pointer found");
    for (int i = 0; i < 1000; i++)
        release(arena[i], 0);
}

static void test_live_set_churn_stays_bounded(void)
{
    /* Millions of insert/take cycles over a small neighbourhood: tombstones are
     * reused, nothing is dropped, every block is found. */
    static char blocks[256][16];
    uint64_t dropped0 = tl_hdr->dropped_samples;
    int lost = 0;
    for (int round = 0; round < 4000; round++) {
        for (int i = 0; i < 256; i++)
            record(blocks[i], 16, RA_ALPHA, round & 1);
        for (int i = 0; i < 256; i++)
            lost += !release(blocks[i], round & 1);
    }
    CHECK(lost == 0, "%d blocks not found", lost);
    CHECK(tl_hdr->dropped_samples == dropped0, "dropped %lu", (unsigned long)(tl_hdr->dropped_samples - dropped0));
}

/* The free paths test both live sets' filter counters of a bucket with one
 * load (tl_maybe_sampled_any): a sample in either set must make it non-zero,
 * and taking the last one must bring it back to zero. */
static void test_filter_pair(void)
{
    static char blocks[64][48];
    int missed = 0, stuck = 0;
    for (int gil = 0; gil < 2; gil++) {
        for (int i = 0; i < 64; i++)
            record(blocks[i], 48, RA_ALPHA, gil);
        for (int i = 0; i < 64; i++)
            missed += !tl_maybe_sampled_any(blocks[i]) || !tl_maybe_sampled(blocks[i], gil);
        for (int i = 0; i < 64; i++)
            release(blocks[i], gil);
        for (int i = 0; i < 64; i++)
            stuck += tl_maybe_sampled_any(blocks[i]);
    }
    CHECK(missed == 0, "%d live samples not seen by the filter", missed);
    CHECK(stuck == 0, "%d buckets still set after every sample was taken", stuck);
}

static void test_realloc_put_back(void)
{
    static char blk[64];
    tl_entry_t e;
    record(blk, 900, RA_BETA, 0);
    CHECK(tl_take(blk, &e, 0), "taken");
    tl_put_back(blk, e, 0); /* a failed realloc: still live */
    CHECK(release(blk, 0), "found again after put_back");
}

#define THREADS 8
#define PER_THREAD 20000
static void *thread_main(void *arg)
{
    char *mine = calloc(PER_THREAD, 32);
    (void)arg;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < PER_THREAD; i++)
            record(mine + 32 * i, 32, RA_ALPHA, 0);
        for (int i = 0; i < PER_THREAD; i++)
            if (!release(mine + 32 * i, 0))
                return (void *)1;
    }
    free(mine);
    return NULL;
}

static void test_threads(void)
{
    struct tl_site *a = site_named("site_alpha");
    uint64_t c0 = SUM(a, sample_count), f0 = SUM(a, sample_free_count);
    pthread_t t[THREADS];
    int bad = 0;
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, thread_main, NULL);
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += r != NULL;
    }
    CHECK(bad == 0, "%d threads lost a sample", bad);
    uint64_t dc = SUM(a, sample_count) - c0, df = SUM(a, sample_free_count) - f0;
    CHECK(dc == (uint64_t)THREADS * PER_THREAD * 5 && df == dc, "samples %lu freed %lu", (unsigned long)dc,
          (unsigned long)df);
}

static void test_fork_child_counts_from_zero(void)
{
    struct tl_site *a = site_named("site_alpha");
    uint64_t parent_count = SUM(a, count);
    static char blk[64];
    record(blk, 800, RA_ALPHA, 0); /* live in the parent */
    pid_t pid = fork();
    if (pid == 0) {
        /* what init.c's atfork handler does */
        tl_recorder_after_fork_child();
        tl_shm_after_fork_child();
        tl_dumper_after_fork_child();
        int ok = SUM(a, count) == 0 && tl_hdr->pid == getpid() && (tl_hdr->flags & TL_FLAG_FORKED) &&
                 strcmp(a->function, "site_alpha") == 0 && !release(blk, 0);
        record(blk + 16, 800, RA_ALPHA, 0);
        ok = ok && SUM(a, count) == 1;
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child view after fork (status %d)", st);
    CHECK(SUM(a, count) == parent_count + 1, "parent's table untouched by the child");
    CHECK(release(blk, 0), "parent still owns its sample");
}

/* Byte-weighted sampling (agent/sampling.py): the live estimate of kept blocks is
 * within its standard error of the truth, and freeing every block brings it back
 * to exactly zero (a free takes back what its allocation added). */
__attribute__((noinline)) void site_gamma(void) { __asm__ volatile("nop; nop; nop; nop; nop; nop; nop; nop"); }
#define RA_GAMMA ((void *)((char *)site_gamma + 1))
static void test_sampled_weights(void)
{
    enum { N = 100000, SIZE = 256 };
    static char blocks[N][16];
    uint64_t saved = tl_cfg.sample_interval;
    tl_cfg.sample_interval = 4096; /* p(256) = 1 - exp(-1/16): ~6 % sampled */
    for (int i = 0; i < N; i++)
        record(blocks[i], SIZE, RA_GAMMA, i & 1);
    struct tl_site *g = site_named("site_gamma");
    CHECK(g != NULL, "site_gamma");
    if (g) {
        double live = (double)(SUM(g, est_bytes) - SUM(g, est_free_bytes));
        double truth = (double)N * SIZE, sigma = sqrt(4096.0 * truth);
        CHECK(fabs(live - truth) < 5 * sigma, "live %.0f, truth %.0f, sigma %.0f", live, truth, sigma);
        double n = (double)(SUM(g, est_count) - SUM(g, est_free_count)) / TL_COUNT_ONE;
        CHECK(fabs(n - N) < 5 * sqrt((double)N * 16), "live count %.0f of %d", n, N);
        uint64_t samples = SUM(g, sample_count);
        CHECK(samples > 5000 && samples < 7100, "samples %lu (expected ~6060)", (unsigned long)samples);
    }
    for (int i = 0; i < N; i++)
        release(blocks[i], i & 1);
    if (g)
        CHECK(SUM(g, est_bytes) == SUM(g, est_free_bytes) && SUM(g, est_count) == SUM(g, est_free_count),
              "all freed: live back to exactly 0");
    tl_cfg.sample_interval = saved;
}

/* The table runs short (TRACKLEAK_MAX_SITES=256 in main): threads keep making
 * one-shot sites that hold nothing; idle records are folded into "other sites"
 * and reused, a site made after the churn still gets a record, and the counts
 * add up (folded + still in records + not attributed = allocations made). */
#define CHURN_THREADS 4
#define CHURN_SITES 3000
static void *churn_main(void *arg)
{
    uintptr_t base = 0x10000000u + (uintptr_t)arg * 0x1000000u;
    static __thread char blk[64];
    for (int i = 0; i < CHURN_SITES; i++) {
        record(blk, 600, (void *)(base + (uintptr_t)i * 16), 0);
        release(blk, 0);
        if (i % 100 == 99)
            usleep(20000); /* let records go idle: passes run at most every 5-100 ms */
    }
    return NULL;
}

static void test_reclaim_under_threads(void)
{
    uint64_t before = 0;
    for (uint32_t i = 0; i < tl_hdr->site_count; i++)
        if (tl_sites[i].state == TL_SITE_READY || tl_sites[i].state == TL_SITE_RETIRED)
            before += SUM(&tl_sites[i], count);
    uint64_t dropped0 = tl_hdr->dropped_sites;
    pthread_t t[CHURN_THREADS];
    for (intptr_t i = 0; i < CHURN_THREADS; i++)
        pthread_create(&t[i], NULL, churn_main, (void *)i);
    for (int i = 0; i < CHURN_THREADS; i++)
        pthread_join(t[i], NULL);
    usleep(120000);
    static char blk[64];
    for (int i = 0; i < 50; i++) { /* a new site after the churn: gets a record */
        record(blk, 600, RA_GAMMA + 7, 0);
        release(blk, 0);
        usleep(2000);
    }
    CHECK(tl_hdr->recycled_sites > 0, "no record was given back");
    CHECK(tl_sites[0].kind == TL_KIND_OTHER && SUM(&tl_sites[0], count) > 0, "other sites holds the folded totals");
    uint64_t after = 0;
    int found_new = 0;
    for (uint32_t i = 0; i < tl_hdr->site_count; i++) {
        const struct tl_site *s = &tl_sites[i];
        if (s->state == TL_SITE_READY || s->state == TL_SITE_RETIRED) {
            after += SUM(s, count);
            found_new |= s->key_addr == (uint64_t)(uintptr_t)(RA_GAMMA + 7) && SUM(s, count) > 0;
        }
    }
    CHECK(found_new, "the site made after the churn has a record");
    uint64_t made = (uint64_t)CHURN_THREADS * CHURN_SITES + 50, dropped = tl_hdr->dropped_sites - dropped0;
    /* (a thread preempted between its lookup and its bump across a whole fold may move one
     * allocation to another record: still counted; none may vanish beyond that) */
    CHECK(after - before + dropped <= made && after - before + dropped + 4 >= made,
          "counted %lu + not attributed %lu of %lu made", (unsigned long)(after - before), (unsigned long)dropped,
          (unsigned long)made);
}

static void test_dump_files(const char *dir)
{
    tl_dump("interval");
    char path[600], line[8192];
    snprintf(path, sizeof path, "%s/profiler.jsonl", dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "no %s", path);
    if (!f)
        return;
    int found = 0;
    while (fgets(line, sizeof line, f))
        found += strstr(line, "\"function\":\"site_alpha\"") != NULL && strstr(line, "\"reason\":\"interval\"") != NULL;
    fclose(f);
    CHECK(found == 1, "site_alpha in the JSON dump (%d)", found);
    snprintf(path, sizeof path, "%s/profiler.json", dir);
    f = fopen(path, "r");
    CHECK(f && fgets(line, sizeof line, f) && strncmp(line, "FUNCTION", 8) == 0, "text table header");
    if (f)
        fclose(f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s LOG_DIR\n", argv[0]);
        return 2;
    }
    setenv("TRACKLEAK_LOG_DIR", argv[1], 1);
    setenv("TRACKLEAK_STARTUP_DELAY", "0", 1);
    setenv("TRACKLEAK_SAMPLE_RATE", "1", 1);
    setenv("TRACKLEAK_MIN_SIZE", "0", 1);
    setenv("TRACKLEAK_QUIET", "1", 1);
    setenv("TRACKLEAK_MAX_SITES", "256", 1);
    tl_config_load();
    tl_py_discover();
    tl_shm_init();
    tl_recorder_init();
    tl_dumper_init();
    CHECK(tl_active && !tl_py_present(), "active, no Python");
    test_counts_and_retention();
    if (!site_named("site_alpha")) {
        for (uint32_t i = 0; i < tl_hdr->site_count; i++)
            printf("site %u: state %u kind %u %s %s count %lu\n", i, tl_sites[i].state, tl_sites[i].kind,
                   tl_sites[i].function, tl_sites[i].file, (unsigned long)tl_sites[i].c[0].count);
        printf("%d passed, %d failed (stopped: no site)\n", passed, failed);
        return 1;
    }
    test_live_set_churn_stays_bounded();
    test_filter_pair();
    test_realloc_put_back();
    test_threads();
    test_fork_child_counts_from_zero();
    test_sampled_weights();
    test_dump_files(argv[1]);
    test_reclaim_under_threads();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
