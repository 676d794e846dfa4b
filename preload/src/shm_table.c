/* SPDX-License-Identifier: MIT
 * shm_table.c - the live table other processes read (layout: trackleak_shm.h).
 *
 * An anonymous memfd named "trackleak", mapped shared, fd closed at once: no
 * file in /dev/shm to clean up after a crash or an exec, nothing for another
 * user to pre-create. Readers find it in /proc/PID/maps and read it through
 * /proc/PID/mem (ptrace-read permission: the same user or root).
 *
 * fork(): the child would otherwise keep writing into its parent's table.
 * It gets a fresh memfd holding a copy (its heap, and so its live samples,
 * are copies of the parent's too), mapped over the same address so every
 * pointer into the table stays valid.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tl_internal.h"

/* Records: TRACKLEAK_MAX_SITES (config.c). The memfd is sized for all of them
 * at once, but its pages cost nothing until a record is first written. */
#define SITE_CAPACITY ((uint32_t)tl_cfg.max_sites)

struct tl_shm_header *tl_hdr;
struct tl_site *tl_sites;
static size_t seg_size;

static void *map_segment(void *at)
{
    int fd = memfd_create(TL_SHM_MEMFD_NAME, MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)seg_size) == 0)
        p = mmap(at, seg_size, PROT_READ | PROT_WRITE, MAP_SHARED | (at ? MAP_FIXED : 0), fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

/* Record 0 keeps the totals of the sites folded to make room (recorder.c,
 * "reclaim"). It is never handed out for a site: site_count starts at 1. */
static void init_other_record(void)
{
    struct tl_site *o = &tl_sites[0];
    memset(o, 0, sizeof *o);
    o->kind = TL_KIND_OTHER;
    strcpy(o->function, "[other sites]");
    strcpy(o->file, "[idle sites folded to make room]");
    __atomic_store_n(&o->state, TL_SITE_READY, __ATOMIC_RELEASE);
}

void tl_shm_init(void)
{
    seg_size = sizeof(struct tl_shm_header) + (size_t)SITE_CAPACITY * sizeof(struct tl_site);
    void *p = map_segment(NULL);
    if (!p) {
        tl_say("cannot create its shared table (memfd: %s); the table is kept private, "
               "so trackleak run and the agent cannot read it live",
               strerror(errno));
        p = mmap(NULL, seg_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return; /* tl_recorder_init disables tracking */
    }
    tl_hdr = p;
    tl_sites = (struct tl_site *)(tl_hdr + 1);
    memcpy(tl_hdr->magic, TL_SHM_MAGIC, sizeof tl_hdr->magic);
    tl_hdr->version = TL_SHM_VERSION;
    tl_hdr->header_size = sizeof(struct tl_shm_header);
    tl_hdr->site_size = sizeof(struct tl_site);
    tl_hdr->site_capacity = SITE_CAPACITY;
    tl_hdr->pid = getpid();
    tl_hdr->ppid = getppid();
    tl_hdr->start_time_ns = tl_now_ns(CLOCK_REALTIME);
    tl_hdr->sample_rate = tl_cfg.sample_rate;
    tl_hdr->sample_interval = tl_cfg.sample_interval;
    tl_hdr->min_size = tl_cfg.min_size > UINT32_MAX ? UINT32_MAX : (uint32_t)tl_cfg.min_size;
    tl_hdr->py_version_hex = tl_py_version_hex();
    tl_hdr->flags = tl_py_present() ? TL_FLAG_PYTHON : 0;
    init_other_record();
    tl_hdr->site_count = 1;
}

void tl_shm_after_fork_child(void)
{
    if (!tl_hdr)
        return;
    uint32_t n = tl_hdr->site_count;
    size_t used = sizeof(struct tl_shm_header) + (size_t)(n > SITE_CAPACITY ? SITE_CAPACITY : n) * sizeof(struct tl_site);
    void *copy = mmap(NULL, used, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
        tl_disabled = 1; /* cannot keep our table apart from the parent's: pass through */
        return;
    }
    memcpy(copy, tl_hdr, used);
    if (!map_segment(tl_hdr) &&
        mmap(tl_hdr, seg_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
             0) == MAP_FAILED) {
        tl_disabled = 1;
        munmap(copy, used);
        return;
    }
    memcpy(tl_hdr, copy, used);
    munmap(copy, used);
    /* The child's table covers what the child does: keep the sites (their
     * names and keys, which the private site index points at), zero the
     * counts. The parent's table already has everything before the fork, so
     * adding parent and children never counts anything twice. */
    for (uint32_t i = 0; i < n && i < SITE_CAPACITY; i++) {
        memset(tl_sites[i].c, 0, sizeof tl_sites[i].c);
        tl_sites[i].peak_single = 0;
    }
    tl_hdr->live_samples = tl_hdr->dropped_samples = tl_hdr->dropped_sites = tl_hdr->dropped_events = 0;
    tl_hdr->recycled_sites = 0;
    tl_hdr->update_time_ns = 0;
    tl_hdr->start_time_ns = tl_now_ns(CLOCK_REALTIME);
    tl_hdr->pid = getpid();
    tl_hdr->ppid = getppid();
    tl_hdr->flags |= TL_FLAG_FORKED;
}
