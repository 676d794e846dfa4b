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
 *
 * Handoff: when TRACKLEAK_HANDOFF names the socket of `trackleak run`, each
 * new memfd (at start-up, and in a forked child) is sent there with
 * SCM_RIGHTS before it is closed here. The reader then holds its own
 * descriptor: the memfd outlives the process, so its table can still be read
 * after a SIGKILL. The path is used only through a descriptor of its
 * directory, checked to be ours and private (see handoff()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tl_internal.h"

/* Records: TRACKLEAK_MAX_SITES (config.c). The memfd is sized for all of them
 * at once, but its pages cost nothing until a record is first written. */
#define SITE_CAPACITY ((uint32_t)tl_cfg.max_sites)

struct tl_shm_header *tl_hdr;
struct tl_site *tl_sites;
static size_t seg_size;

/* Create the memfd and map it (at AT when given). Returns the mapping and
 * leaves the descriptor in *fdp (the caller hands it off, then closes it). */
static void *map_segment(void *at, int *fdp)
{
    *fdp = -1;
    int fd = memfd_create(TL_SHM_MEMFD_NAME, MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)seg_size) == 0)
        p = mmap(at, seg_size, PROT_READ | PROT_WRITE, MAP_SHARED | (at ? MAP_FIXED : 0), fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return NULL;
    }
    *fdp = fd;
    return p;
}

/* ---- handoff to trackleak run ---------------------------------------------
 * One datagram per table: this message, plus the memfd in SCM_RIGHTS. The
 * reader (agent/sources/handoff.py mirrors the struct) checks pid against the
 * kernel's SCM_CREDENTIALS and pid, ppid and start time against the header.
 *
 * Runs in the constructor and in a forked child (pthread_atfork), so it uses
 * only async-signal-safe calls, no malloc, everything on the stack. It never
 * blocks (non-blocking socket, MSG_DONTWAIT) and never raises SIGPIPE
 * (MSG_NOSIGNAL). Failures cost the handoff only: the reader still finds the
 * table through /proc while the process lives. */
#define TL_HANDOFF_MAGIC "TLHANDOF" /* 8 bytes, no NUL */
#define TL_HANDOFF_VERSION 1u
struct tl_handoff_msg {
    char magic[8];
    uint32_t version;
    int32_t pid;
    int32_t ppid;
    uint32_t reserved;
    uint64_t start_time_ns; /* header.start_time_ns of the table sent */
};
_Static_assert(sizeof(struct tl_handoff_msg) == 32, "handoff message layout");

static int handoff_said;

static size_t put_str(char *dst, size_t at, size_t cap, const char *s)
{
    while (*s && at + 1 < cap)
        dst[at++] = *s++;
    dst[at] = '\0';
    return at;
}

static size_t put_uint(char *dst, size_t at, size_t cap, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < (int)sizeof tmp);
    while (n > 0 && at + 1 < cap)
        dst[at++] = tmp[--n];
    dst[at] = '\0';
    return at;
}

/* Once per process (and its forks): the table may be lost if the process is
 * killed between two reads. write(2) only: safe in a forked child. */
static void handoff_say(const char *why, int err)
{
    if (handoff_said)
        return;
    handoff_said = 1;
    char buf[256];
    size_t n = put_str(buf, 0, sizeof buf, "[trackleak] cannot hand its table to trackleak run (");
    n = put_str(buf, n, sizeof buf, why);
    if (err) {
        n = put_str(buf, n, sizeof buf, ", errno ");
        n = put_uint(buf, n, sizeof buf, (unsigned long)err);
    }
    n = put_str(buf, n, sizeof buf, "); it is read live only, and lost if the process is killed between two reads\n");
    (void)!write(2, buf, n);
}

static void handoff(int memfd)
{
    if (!tl_handoff_path[0] || memfd < 0 || !tl_hdr)
        return;
    int saved_errno = errno;
    /* The socket's directory, pinned by a descriptor and checked: ours (or
     * root's) and writable by nobody else. The datagram then goes to
     * /proc/self/fd/DIRFD/NAME, so the directory cannot be swapped between
     * the check and the send (say, removed at the end of the run and made
     * again by another user to collect tables of processes left running). */
    const char *path = tl_handoff_path;
    const char *name = strrchr(path, '/'); /* config.c: absolute, name non-empty */
    char dir[TL_HANDOFF_PATH_MAX];
    size_t dlen = (size_t)(name - path);
    if (dlen == 0)
        dlen = 1; /* "/" */
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        if (errno != ENOENT) /* ENOENT: the run is over, nobody listens */
            handoff_say("its directory cannot be opened", errno);
        errno = saved_errno;
        return;
    }
    struct stat st;
    if (fstat(dfd, &st) != 0 || (st.st_uid != geteuid() && st.st_uid != 0) || (st.st_mode & (S_IWGRP | S_IWOTH))) {
        handoff_say("its directory is not private to this user", 0);
        close(dfd);
        errno = saved_errno;
        return;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = put_str(addr.sun_path, 0, sizeof addr.sun_path, "/proc/self/fd/");
    n = put_uint(addr.sun_path, n, sizeof addr.sun_path, (unsigned long)dfd);
    n = put_str(addr.sun_path, n, sizeof addr.sun_path, name); /* "/NAME" */
    if (n + 1 >= sizeof addr.sun_path) { /* cannot happen: config.c bounds the name */
        close(dfd);
        errno = saved_errno;
        return;
    }

    struct tl_handoff_msg msg;
    memset(&msg, 0, sizeof msg);
    memcpy(msg.magic, TL_HANDOFF_MAGIC, sizeof msg.magic);
    msg.version = TL_HANDOFF_VERSION;
    msg.pid = tl_hdr->pid;
    msg.ppid = tl_hdr->ppid;
    msg.start_time_ns = tl_hdr->start_time_ns;
    struct iovec iov = {.iov_base = &msg, .iov_len = sizeof msg};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr mh = {
        .msg_name = &addr,
        .msg_namelen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1),
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = ctl.buf,
        .msg_controllen = sizeof ctl.buf,
    };
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &memfd, sizeof(int));

    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) {
        handoff_say("no socket", errno);
    } else {
        if (sendmsg(s, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS)
                handoff_say("its queue is full", 0);
            else if (e != ENOENT && e != ECONNREFUSED) /* nobody listens any more: the run is over */
                handoff_say("send failed", e);
        }
        close(s);
    }
    close(dfd);
    errno = saved_errno;
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

/* Call stacks (stacks.c): frame records, then path records, after the sites. */
static size_t frames_off, stacks_off;
static uint32_t stack_cap, stack_size;
static void plan_stacks(void)
{
    frames_off = sizeof(struct tl_shm_header) + (size_t)SITE_CAPACITY * sizeof(struct tl_site);
    stack_cap = tl_cfg.stack_depth ? tl_cfg.max_stacks : 0;
    stack_size = (uint32_t)((sizeof(struct tl_stack) + 4u * tl_cfg.stack_depth + 7) & ~(size_t)7);
    stacks_off = frames_off + (size_t)stack_cap * sizeof(struct tl_frame);
    seg_size = stacks_off + (size_t)stack_cap * stack_size;
}

static void set_stack_pointers(void)
{
    tl_frames = stack_cap ? (struct tl_frame *)((char *)tl_hdr + frames_off) : NULL;
    tl_stacks = stack_cap ? (char *)tl_hdr + stacks_off : NULL;
}

void tl_shm_init(void)
{
    plan_stacks();
    int fd;
    void *p = map_segment(NULL, &fd);
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
    tl_hdr->frames_offset = frames_off;
    tl_hdr->stacks_offset = stacks_off;
    tl_hdr->frame_size = sizeof(struct tl_frame);
    tl_hdr->frame_capacity = stack_cap;
    tl_hdr->stack_size = stack_size;
    tl_hdr->stack_capacity = stack_cap;
    tl_hdr->stack_depth = stack_cap ? tl_cfg.stack_depth : 0;
    set_stack_pointers();
    init_other_record();
    tl_hdr->site_count = 1;
    handoff(fd); /* the header is complete: a reader may look at once */
    if (fd >= 0)
        close(fd);
}

void tl_shm_after_fork_child(void)
{
    if (!tl_hdr)
        return;
    uint32_t n = tl_hdr->site_count;
    size_t used = sizeof(struct tl_shm_header) + (size_t)(n > SITE_CAPACITY ? SITE_CAPACITY : n) * sizeof(struct tl_site);
    /* The frame and path records too (the private indexes, copied by fork, point at them). */
    uint32_t nf = stack_cap ? tl_hdr->frame_count : 0, ns = stack_cap ? tl_hdr->stack_count : 0;
    if (nf > stack_cap)
        nf = stack_cap;
    if (ns > stack_cap)
        ns = stack_cap;
    size_t fbytes = (size_t)nf * sizeof(struct tl_frame), sbytes = (size_t)ns * stack_size;
    void *copy = mmap(NULL, used + fbytes + sbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
        tl_disabled = 1; /* cannot keep our table apart from the parent's: pass through */
        return;
    }
    memcpy(copy, tl_hdr, used);
    memcpy((char *)copy + used, (char *)tl_hdr + frames_off, fbytes);
    memcpy((char *)copy + used + fbytes, (char *)tl_hdr + stacks_off, sbytes);
    int fd;
    if (!map_segment(tl_hdr, &fd) &&
        mmap(tl_hdr, seg_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
             0) == MAP_FAILED) {
        tl_disabled = 1;
        munmap(copy, used + fbytes + sbytes);
        return;
    }
    memcpy(tl_hdr, copy, used);
    memcpy((char *)tl_hdr + frames_off, (char *)copy + used, fbytes);
    memcpy((char *)tl_hdr + stacks_off, (char *)copy + used + fbytes, sbytes);
    munmap(copy, used + fbytes + sbytes);
    for (uint32_t i = 0; i < ns; i++) /* paths counted from the fork on, like the sites */
        memset(((struct tl_stack *)(tl_stacks + (size_t)i * stack_size))->c, 0, sizeof(struct tl_stack_counts) * 2);
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
    tl_hdr->dropped_stacks = 0;
    tl_hdr->update_time_ns = 0;
    tl_hdr->start_time_ns = tl_now_ns(CLOCK_REALTIME);
    tl_hdr->pid = getpid();
    tl_hdr->ppid = getppid();
    tl_hdr->flags |= TL_FLAG_FORKED;
    handoff(fd); /* before this child allocates anything the reader could miss */
    if (fd >= 0)
        close(fd);
}
