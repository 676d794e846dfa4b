/* SPDX-License-Identifier: MIT
 * config.c - the original TrackLeak's environment variables, same names,
 * meanings and defaults; a bad value gets one warning and the default.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tl_internal.h"

char tl_handoff_path[TL_HANDOFF_PATH_MAX];

struct tl_config tl_cfg = {
    .dump_interval = 300,
    .sample_rate = 50,
    .min_size = 500,
    .startup_delay = 10,
    .max_sites = 65536,
    .stack_depth = 32,
    .max_stacks = 16384,
};

void tl_say(const char *fmt, ...)
{
    char buf[768];
    int n = snprintf(buf, sizeof buf, "[trackleak] ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof buf - 2)
        len = sizeof buf - 2;
    buf[len++] = '\n';
    (void)!write(2, buf, len);
}

/* Parse an unsigned decimal integer in [lo, hi]; anything else keeps *out. */
static void env_uint(const char *name, unsigned long long lo, unsigned long long hi, unsigned long long *out)
{
    const char *v = getenv(name);
    if (!v)
        return;
    const char *s = v;
    while (*s == ' ' || *s == '\t')
        s++;
    char *end = NULL;
    errno = 0;
    unsigned long long x = (*s >= '0' && *s <= '9') ? strtoull(s, &end, 10) : 0;
    if (end)
        while (*end == ' ' || *end == '\t')
            end++;
    if (!end || *end || errno || x < lo || x > hi) {
        tl_say("ignoring %s=\"%.40s\": expected a whole number from %llu to %llu; using the default %llu", name, v, lo,
               hi, *out);
        return;
    }
    *out = x;
}

static void env_name(const char *name, char *dst, size_t cap)
{
    const char *v = getenv(name);
    if (!v)
        return;
    if (!*v || strchr(v, '/') || !strcmp(v, ".") || !strcmp(v, "..") || strlen(v) >= cap - 6) {
        tl_say("ignoring %s=\"%.40s\": expected a plain file name (no '/'); using %s", name, v, dst);
        return;
    }
    strcpy(dst, v);
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"));
}

/* A directory we may write logs into: a real directory (not a symlink), ours
 * or root's, not writable by others unless sticky. Created 0700 if missing. */
static int usable_dir(const char *path, const char **why)
{
    char tmp[sizeof tl_cfg.log_dir];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof tmp) {
        *why = "path too long";
        return 0;
    }
    /* mkdir -p */
    memcpy(tmp, path, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            (void)mkdir(tmp, 0755);
            *p = '/';
        }
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST) {
        *why = strerror(errno);
        return 0;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        *why = errno == ELOOP || errno == ENOTDIR ? "not a directory (or a symlink)" : strerror(errno);
        return 0;
    }
    struct stat st;
    int ok = fstat(fd, &st) == 0;
    close(fd);
    if (!ok || (st.st_uid != geteuid() && st.st_uid != 0)) {
        *why = "owned by another user";
        return 0;
    }
    if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX)) {
        *why = "writable by every user";
        return 0;
    }
    if (access(path, W_OK) != 0) {
        *why = "not writable";
        return 0;
    }
    return 1;
}

static void resolve_log_dir(void)
{
    const char *want = getenv("TRACKLEAK_LOG_DIR");
    if (!want || !*want)
        want = "/var/log/memory-profiler";
    const char *why = NULL;
    if (usable_dir(want, &why)) {
        snprintf(tl_cfg.log_dir, sizeof tl_cfg.log_dir, "%s", want);
        return;
    }
    char fallback[64];
    snprintf(fallback, sizeof fallback, "/tmp/trackleak");
    const char *why2 = NULL;
    if (!usable_dir(fallback, &why2)) {
        snprintf(fallback, sizeof fallback, "/tmp/trackleak-%u", (unsigned)geteuid());
        if (!usable_dir(fallback, &why2)) {
            tl_say("cannot use log directory %s (%s) nor %s (%s); not writing log files", want, why, fallback, why2);
            tl_cfg.log_dir[0] = '\0';
            return;
        }
    }
    tl_say("cannot use log directory %s (%s); using %s", want, why, fallback);
    snprintf(tl_cfg.log_dir, sizeof tl_cfg.log_dir, "%s", fallback);
}

/* TRACKLEAK_HANDOFF, set by `trackleak run`: untrusted like every variable.
 * An absolute path, short enough for sockaddr_un, a plain name after the last
 * '/', no control characters. Anything else: one warning, no handoff (the
 * reader can still find the table through /proc while the process lives). */
static void load_handoff(void)
{
    tl_handoff_path[0] = '\0';
    const char *v = getenv("TRACKLEAK_HANDOFF");
    if (!v || !*v)
        return;
    size_t n = strnlen(v, TL_HANDOFF_PATH_MAX);
    const char *name = strrchr(v, '/');
    int ok = v[0] == '/' && n < TL_HANDOFF_PATH_MAX && name && name[1] &&
             strlen(name + 1) <= TL_HANDOFF_NAME_MAX && strcmp(name + 1, ".") && strcmp(name + 1, "..");
    for (size_t i = 0; ok && i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            ok = 0;
    if (!ok) {
        tl_say("ignoring TRACKLEAK_HANDOFF=\"%.40s\": expected the absolute path of a socket (under %d bytes, "
               "a name of at most %d); this process's table is only readable while it runs",
               v, TL_HANDOFF_PATH_MAX, TL_HANDOFF_NAME_MAX);
        return;
    }
    memcpy(tl_handoff_path, v, n + 1);
}

void tl_config_load(void)
{
    unsigned long long v;
    v = tl_cfg.dump_interval;
    env_uint("TRACKLEAK_DUMP_INTERVAL", 1, 86400 * 365, &v);
    tl_cfg.dump_interval = (unsigned)v;
    v = tl_cfg.sample_rate;
    env_uint("TRACKLEAK_SAMPLE_RATE", 1, 1u << 30, &v);
    tl_cfg.sample_rate = (unsigned)v;
    /* Mean bytes between samples; agent/sampling.py interval_bytes() is the same rule. */
    v = 0;
    env_uint("TRACKLEAK_SAMPLE_BYTES", 0, 1ull << 40, &v);
    tl_cfg.sample_interval = v ? v : tl_cfg.sample_rate <= 1 ? 0 : (uint64_t)tl_cfg.sample_rate * 1024u;
    v = tl_cfg.min_size;
    env_uint("TRACKLEAK_MIN_SIZE", 0, 1ull << 40, &v);
    tl_cfg.min_size = (size_t)v;
    v = tl_cfg.max_sites;
    env_uint("TRACKLEAK_MAX_SITES", 64, 1u << 22, &v); /* 2^22: the live set's 24-bit record field */
    tl_cfg.max_sites = (unsigned)v;
    /* Call stacks of sampled allocations (agent/config.py stack_depth: the same default and bound). */
    v = tl_cfg.stack_depth;
    env_uint("TRACKLEAK_STACK_DEPTH", 0, UINT32_MAX, &v);
    if (v > TL_STACK_DEPTH_MAX) {
        tl_say("TRACKLEAK_STACK_DEPTH=%llu is more than %u frames; using %u", v, TL_STACK_DEPTH_MAX,
               TL_STACK_DEPTH_MAX);
        v = TL_STACK_DEPTH_MAX;
    }
    tl_cfg.stack_depth = (unsigned)v;
    v = tl_cfg.max_stacks;
    env_uint("TRACKLEAK_MAX_STACKS", 16, 1u << 22, &v);
    tl_cfg.max_stacks = (unsigned)v;
    v = tl_cfg.startup_delay;
    env_uint("TRACKLEAK_STARTUP_DELAY", 0, 86400 * 365, &v);
    tl_cfg.startup_delay = (unsigned)v;
    tl_cfg.events = env_flag("MEMORY_PROFILER_EVENTS");
    v = tl_cfg.min_size <= TL_PYMALLOC_AUTO_MAX;
    if (getenv("TRACKLEAK_PYMALLOC") && strcmp(getenv("TRACKLEAK_PYMALLOC"), "auto") != 0)
        env_uint("TRACKLEAK_PYMALLOC", 0, 1, &v);
    tl_cfg.pymalloc = (int)v;
    /* TRACKLEAK_SMALL_OBJECTS: auto (default) = the reference tracer where CPython has one
     * (3.13+); 1 = also on 3.9-3.12, by wrapping pymalloc (sampled); 0 = off. */
    tl_cfg.small_objects = -1;
    const char *so = getenv("TRACKLEAK_SMALL_OBJECTS");
    if (so && (!strcmp(so, "0") || !strcmp(so, "1")))
        tl_cfg.small_objects = so[0] - '0';
    else if (so && strcmp(so, "auto") != 0)
        tl_say("ignoring TRACKLEAK_SMALL_OBJECTS=\"%.40s\": expected auto, 0 or 1; using auto", so);
    tl_cfg.quiet = env_flag("TRACKLEAK_QUIET");
    strcpy(tl_cfg.json_log, "profiler.json");
    strcpy(tl_cfg.event_log, "events.log");
    env_name("TRACKLEAK_JSON_LOG", tl_cfg.json_log, sizeof tl_cfg.json_log);
    env_name("TRACKLEAK_EVENT_LOG", tl_cfg.event_log, sizeof tl_cfg.event_log);
    size_t n = strlen(tl_cfg.json_log);
    if (n > 5 && !strcmp(tl_cfg.json_log + n - 5, ".json"))
        snprintf(tl_cfg.jsonl_log, sizeof tl_cfg.jsonl_log, "%sl", tl_cfg.json_log);
    else
        snprintf(tl_cfg.jsonl_log, sizeof tl_cfg.jsonl_log, "%s.jsonl", tl_cfg.json_log);
    load_handoff();
    resolve_log_dir();
}

/* Print a URL without its credentials (user:password@). */
static void redact_url(const char *url, char *out, size_t cap)
{
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    const char *at = strchr(host, '@');
    const char *slash = strchr(host, '/');
    if (at && (!slash || at < slash))
        snprintf(out, cap, "%.*s***@%s", (int)(host - url), url, at + 1);
    else
        snprintf(out, cap, "%s", url);
}

void tl_banner(void)
{
    if (tl_cfg.quiet)
        return;
    const char *dir = tl_cfg.log_dir[0] ? tl_cfg.log_dir : "(none: file logging off)";
    tl_say("log_dir=%s", dir);
    tl_say("json_log=%s/%s", dir, tl_cfg.json_log);
    tl_say("event_log=%s/%s", dir, tl_cfg.event_log);
    tl_say("Configuration loaded:");
    char how[96];
    if (tl_cfg.sample_interval)
        snprintf(how, sizeof how, "byte-weighted: one sample per %llu bytes on average",
                 (unsigned long long)tl_cfg.sample_interval);
    else
        snprintf(how, sizeof how, "every allocation");
    tl_say("dump_interval=%us, sample_rate=1/%u (%s), min_size=%zu, startup_delay=%us", tl_cfg.dump_interval,
           tl_cfg.sample_rate, how, tl_cfg.min_size, tl_cfg.startup_delay);
    if (env_flag("ENABLE_ELASTICSEARCH")) {
        const char *url = getenv("ELASTICSEARCH_URL");
        char red[256];
        redact_url(url ? url : "(ELASTICSEARCH_URL not set)", red, sizeof red);
        const char *auth = getenv("ELASTICSEARCH_API_KEY") ? "api-key"
                           : getenv("ELASTICSEARCH_USERNAME") ? "basic"
                                                              : "none";
        const char *index = getenv("ELASTICSEARCH_INDEX");
        /* This process sends nothing itself: `trackleak run` ships its table (and says so in
         * TRACKLEAK_ES_SHIPPER); under bare LD_PRELOAD a host agent reading the table does. */
        const char *shipper = getenv("TRACKLEAK_ES_SHIPPER");
        tl_say("elasticsearch=enabled url=%s index=%s auth=%s (documents are shipped by %s)", red,
               index ? index : "trackleak-memory", auth,
               shipper && !strcmp(shipper, "trackleak-run")
                   ? "trackleak run"
                   : "a host agent (trackleak-agent) reading this process's table, when one runs here");
    } else {
        tl_say("elasticsearch=disabled");
    }
    const char *job = getenv("NOMAD_JOB_NAME");
    tl_say("job_name=%s", job && *job ? job : "unknown");
    if (tl_handoff_path[0])
        tl_say("handoff=%s", tl_handoff_path);
    const char *py = tl_py_version_str();
    int newpy = tl_py_version_hex() >= 0x030d0000;
    tl_say("pid=%d python=%s%s layout=%s pymalloc=%s small_objects=%s jsonl_log=%s/%s", (int)getpid(),
           py ? py : "none", tl_py_free_threaded() ? "t" : "", tl_py_layout_source(),
           !py ? "n/a" : tl_cfg.pymalloc || tl_py_free_threaded() ? "tracked" : "not tracked (min_size above its range)",
           !py || tl_cfg.small_objects == 0 ? "off"
           : tl_py_free_threaded()          ? "off (free-threaded build)"
           : newpy                          ? "reference tracer (sampled)"
           : tl_cfg.small_objects == 1      ? "pymalloc wrapped (sampled; freelist rows flagged)"
                                            : "off (TRACKLEAK_SMALL_OBJECTS=1 tracks them on this Python)",
           dir, tl_cfg.jsonl_log);
}
