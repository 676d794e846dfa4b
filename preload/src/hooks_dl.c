/* SPDX-License-Identifier: MIT
 * hooks_dl.c - dlsym/dlvsym interposers: allocator lookups through a library
 * handle get the shim's functions.
 *
 * LD_PRELOAD puts the shim first in the global scope, so direct calls to
 * malloc and friends reach it. A lookup through a handle does not search the
 * global scope: dlsym(dlopen("libc.so.6"), "malloc") -- ctypes.CDLL("libc.so.6"),
 * cffi's ffi.dlopen("c") -- searches libc's own scope and returns glibc's
 * malloc. A leak through such a handle would be missed, and a free through it
 * of a block the shim saw allocated (strdup's malloc) would leave a false leak.
 *
 * Policy: a lookup of an allocator-family name (allocator_name() below) from
 * a real handle is redirected to the shim's function when, and only when, the
 * real lookup returned the very function the shim wraps (the address it got
 * from dlsym(RTLD_NEXT), see tl_libc_swap in hooks_libc.c). Everything else is
 * returned untouched:
 *   - another allocator a program dlopens on purpose (tcmalloc, jemalloc, a
 *     private pool exporting "malloc") is a different address: the program
 *     gets that allocator, not us;
 *   - jemalloc/tcmalloc preloaded after the shim or linked into the program is
 *     what the shim's RTLD_NEXT finds, so the shim wraps it: a handle lookup
 *     that returns it gets the shim (which forwards to it), one that returns
 *     glibc's malloc gets glibc's, as without the shim;
 *   - an allocator preloaded before the shim takes every direct call and the
 *     shim wraps glibc: the same rule applies (only glibc's functions are
 *     redirected), nothing is made worse.
 *   - RTLD_NEXT and RTLD_DEFAULT lookups are never redirected. RTLD_NEXT comes
 *     from interposers (a malloc wrapper asking for the next malloc): handing
 *     it the shim's malloc, whose own next is that wrapper, would loop
 *     forever. RTLD_DEFAULT already finds the shim through the global scope.
 *
 * Every other lookup is forwarded with a tail call (a jump): glibc's dlsym
 * finds its caller from its return address (RTLD_NEXT: "the object after the
 * caller's"; RTLD_DEFAULT: the caller's namespace and scope), so the return
 * address it sees must still be our caller's. Redirected lookups (real handle,
 * allocator name) are plain calls: for a real handle glibc uses the caller
 * only for LD_AUDIT's symbind notification.
 *
 * Finding glibc's dlsym without calling dlsym: dlsym(RTLD_NEXT, "dlsym") from
 * here would return... this function. Instead we walk the loaded objects with
 * dl_iterate_phdr and look "dlsym"/"dlvsym" up in the dynamic symbol table of
 * the C library (libc.so.6 since glibc 2.34, libdl.so.2 before; musl's
 * ld-musl/libc.so), through its GNU or SysV hash table, preferring the default
 * version (dlsym@@GLIBC_2.34 over the compat dlsym@GLIBC_2.2.5; on glibc they
 * are one address anyway). No allocation, no lock but dl_iterate_phdr's own
 * (recursive) one; done at the first call (the shim's own bootstrap calls
 * dlsym(RTLD_NEXT) in the first malloc, so before any user code), racing
 * threads compute the same pointers. If the C library's dlsym is not found
 * the hook cannot forward: it says so once and returns NULL (the shim's own
 * bootstrap then stops with its "cannot find the real malloc" message). On
 * such a system build with CC="cc -DTL_NO_DL_HOOK": no dlsym is exported and
 * the shim works as it did before this file.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <string.h>

#include "tl_internal.h"

#ifndef TL_NO_DL_HOOK

typedef void *(*dlsym_fn)(void *, const char *);
typedef void *(*dlvsym_fn)(void *, const char *, const char *);

static dlsym_fn real_dlsym;
static dlvsym_fn real_dlvsym;
static int dl_looked; /* the walk ran (found or not) */
static int dl_warned;

/* ---- a read-only look-up in a loaded object's dynamic symbol table ------- */

/* [p, p + len) lies in one of the object's loaded segments (and, with exec,
 * an executable one): never dereference what a corrupt table points at. */
static int in_object(const struct dl_phdr_info *info, uintptr_t p, size_t len, int exec)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || (exec && !(ph->p_flags & PF_X)))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (p >= lo && p <= hi && len <= hi - p)
            return 1;
    }
    return 0;
}

struct symtab {
    const ElfW(Sym) *sym;
    const char *str;
    size_t strsz;
    const ElfW(Half) *versym; /* may be NULL */
    const uint32_t *gnu_hash; /* one of these two */
    const uint32_t *sysv_hash;
};

/* glibc relocates most d_ptr entries in place (they hold addresses), some
 * targets and the vDSO leave them as offsets: an offset is below the base. */
static uintptr_t dyn_addr(const struct dl_phdr_info *info, ElfW(Addr) v)
{
    return v >= info->dlpi_addr ? (uintptr_t)v : info->dlpi_addr + (uintptr_t)v;
}

static int load_symtab(const struct dl_phdr_info *info, struct symtab *t)
{
    const ElfW(Dyn) *dyn = NULL;
    size_t ndyn = 0;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) {
            dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
            ndyn = info->dlpi_phdr[i].p_memsz / sizeof *dyn;
        }
    if (!dyn || !in_object(info, (uintptr_t)dyn, ndyn * sizeof *dyn, 0))
        return 0;
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
        uintptr_t a = dyn_addr(info, dyn[i].d_un.d_ptr);
        switch (dyn[i].d_tag) {
        case DT_SYMTAB: t->sym = (const ElfW(Sym) *)a; break;
        case DT_STRTAB: t->str = (const char *)a; break;
        case DT_STRSZ: t->strsz = dyn[i].d_un.d_val; break;
        case DT_VERSYM: t->versym = (const ElfW(Half) *)a; break;
        case DT_GNU_HASH: t->gnu_hash = (const uint32_t *)a; break;
        case DT_HASH: t->sysv_hash = (const uint32_t *)a; break;
        default: break;
        }
    }
    if (!t->sym || !t->str || !t->strsz || !in_object(info, (uintptr_t)t->str, t->strsz, 0))
        return 0;
    if (t->versym && !in_object(info, (uintptr_t)t->versym, sizeof *t->versym, 0))
        t->versym = NULL;
    if (t->gnu_hash && !in_object(info, (uintptr_t)t->gnu_hash, 16, 0))
        t->gnu_hash = NULL;
    if (t->sysv_hash && !in_object(info, (uintptr_t)t->sysv_hash, 8, 0))
        t->sysv_hash = NULL;
    return t->gnu_hash || t->sysv_hash;
}

/* Symbol idx is a defined function named name? 2: default version, 1: a
 * hidden (compat) version, 0: no. */
static int sym_matches(const struct dl_phdr_info *info, const struct symtab *t, uint32_t idx,
                       const char *name, size_t len)
{
    const ElfW(Sym) *s = &t->sym[idx];
    if (!in_object(info, (uintptr_t)s, sizeof *s, 0))
        return 0;
    if (s->st_shndx == SHN_UNDEF || s->st_value == 0 || ELF64_ST_TYPE(s->st_info) /* same in ELF32 */ != STT_FUNC)
        return 0;
    if (s->st_name >= t->strsz || t->strsz - s->st_name <= len)
        return 0;
    if (memcmp(t->str + s->st_name, name, len + 1) != 0)
        return 0;
    if (!in_object(info, info->dlpi_addr + s->st_value, 1, 1))
        return 0;
    if (t->versym) {
        const ElfW(Half) *v = &t->versym[idx];
        if (!in_object(info, (uintptr_t)v, sizeof *v, 0))
            return 0;
        if (*v & 0x8000)
            return 1;
    }
    return 2;
}

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (; *s; s++)
        h = h * 33 + (unsigned char)*s;
    return h;
}

static uint32_t sysv_hash(const char *s)
{
    uint32_t h = 0, g;
    for (; *s; s++) {
        h = (h << 4) + (unsigned char)*s;
        g = h & 0xf0000000u;
        if (g)
            h ^= g >> 24;
        h &= ~g;
    }
    return h;
}

/* Address of the defined function name in the object, default version first. */
static void *lookup(const struct dl_phdr_info *info, const char *name)
{
    struct symtab t;
    if (!load_symtab(info, &t))
        return NULL;
    size_t len = strlen(name);
    uint32_t best = 0;
    int best_rank = 0;
    if (t.gnu_hash) {
        const uint32_t *h = t.gnu_hash;
        uint32_t nbuckets = h[0], symoffset = h[1], bloom_size = h[2];
        const uint32_t *buckets = h + 4 + bloom_size * (sizeof(ElfW(Addr)) / 4);
        if (!nbuckets || !in_object(info, (uintptr_t)buckets, nbuckets * 4, 0))
            return NULL;
        const uint32_t *chain = buckets + nbuckets;
        uint32_t hash = gnu_hash(name);
        uint32_t idx = buckets[hash % nbuckets];
        if (idx < symoffset)
            return NULL;
        for (int guard = 0; guard < 1 << 20; guard++, idx++) {
            const uint32_t *c = &chain[idx - symoffset];
            if (!in_object(info, (uintptr_t)c, 4, 0))
                break;
            if ((*c | 1) == (hash | 1)) {
                int r = sym_matches(info, &t, idx, name, len);
                if (r > best_rank) {
                    best_rank = r;
                    best = idx;
                    if (r == 2)
                        break;
                }
            }
            if (*c & 1)
                break;
        }
    } else {
        const uint32_t *h = t.sysv_hash;
        uint32_t nbucket = h[0], nchain = h[1];
        if (!nbucket || !in_object(info, (uintptr_t)(h + 2), ((size_t)nbucket + nchain) * 4, 0))
            return NULL;
        const uint32_t *chain = h + 2 + nbucket;
        int guard = 0;
        for (uint32_t idx = h[2 + sysv_hash(name) % nbucket]; idx && idx < nchain && guard < 1 << 20;
             idx = chain[idx], guard++) {
            int r = sym_matches(info, &t, idx, name, len);
            if (r > best_rank) {
                best_rank = r;
                best = idx;
                if (r == 2)
                    break;
            }
        }
    }
    return best_rank ? (void *)(info->dlpi_addr + t.sym[best].st_value) : NULL;
}

/* ---- finding the C library among the loaded objects ---------------------- */

enum { LIB_LIBC, LIB_LIBDL, LIB_MUSL, LIB_N };

struct found {
    void *dlsym[LIB_N];
    void *dlvsym[LIB_N];
};

static int which_lib(const char *path)
{
    const char *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : path;
    if (!base || !*base)
        return -1;
    if (!strncmp(base, "libc.so", 7))
        return LIB_LIBC;
    if (!strncmp(base, "libdl.so", 8))
        return LIB_LIBDL;
    if (!strncmp(base, "ld-musl-", 8) || !strncmp(base, "libc.musl-", 10))
        return LIB_MUSL;
    return -1;
}

static int walk_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct found *f = arg;
    if (size < offsetof(struct dl_phdr_info, dlpi_phnum) + sizeof info->dlpi_phnum)
        return 0;
    int lib = which_lib(info->dlpi_name);
    if (lib < 0 || f->dlsym[lib])
        return 0;
    /* Never ourselves (a shim renamed libc.so.something would be odd, but). */
    if (in_object(info, (uintptr_t)&walk_cb, 1, 1))
        return 0;
    f->dlsym[lib] = lookup(info, "dlsym");
    f->dlvsym[lib] = lookup(info, "dlvsym");
    return 0;
}

static void find_real(void)
{
    struct found f;
    memset(&f, 0, sizeof f);
    dl_iterate_phdr(walk_cb, &f);
    /* glibc >= 2.34 defines dlsym in libc.so.6 (libdl.so.2 is an empty stub);
     * older ones in libdl.so.2. dlsym and dlvsym come from the same object. */
    for (int lib = 0; lib < LIB_N; lib++)
        if (f.dlsym[lib]) {
            __atomic_store_n(&real_dlvsym, (dlvsym_fn)f.dlvsym[lib], __ATOMIC_RELEASE);
            __atomic_store_n(&real_dlsym, (dlsym_fn)f.dlsym[lib], __ATOMIC_RELEASE);
            break;
        }
    __atomic_store_n(&dl_looked, 1, __ATOMIC_RELEASE);
}

static void not_found(const char *what)
{
    if (!__atomic_exchange_n(&dl_warned, 1, __ATOMIC_RELAXED))
        tl_say("cannot find the C library's %s (dl_iterate_phdr walk found none); lookups through it "
               "return NULL: rebuild the shim with CC=\"cc -DTL_NO_DL_HOOK\" on this system",
               what);
}

void tl_dl_init(void)
{
    if (!__atomic_load_n(&dl_looked, __ATOMIC_ACQUIRE))
        find_real();
}

/* ---- the hooks ----------------------------------------------------------- */

/* Names of the functions hooks_libc.c interposes. _exit belongs: the shim
 * writes its exit dump there, and a program ending through a libc handle's
 * _exit (rare) would otherwise leave no final table. strdup, getline, ... need
 * nothing: glibc's internal calls to malloc go through its PLT to the shim. */
static int allocator_name(const char *n)
{
    switch (n[0]) {
    case 'm': return !strcmp(n, "malloc") || !strcmp(n, "memalign");
    case 'c': return !strcmp(n, "calloc");
    case 'r': return !strcmp(n, "realloc") || !strcmp(n, "reallocarray");
    case 'f': return !strcmp(n, "free");
    case 'p': return !strcmp(n, "posix_memalign") || !strcmp(n, "pvalloc");
    case 'a': return !strcmp(n, "aligned_alloc");
    case 'v': return !strcmp(n, "valloc");
    case '_': return !strcmp(n, "_exit");
    default: return 0;
    }
}

static inline int redirectable(void *handle, const char *name)
{
    /* dlfcn.h declares name nonnull, and the compiler would drop the check:
     * hide the pointer's provenance so a NULL passes on to the real dlsym. */
    __asm__("" : "+r"(name));
    return handle != RTLD_NEXT && handle != RTLD_DEFAULT && name && allocator_name(name);
}

static __attribute__((noinline)) void *dlsym_slow(void)
{
    tl_dl_init();
    dlsym_fn fn = __atomic_load_n(&real_dlsym, __ATOMIC_ACQUIRE);
    if (!fn)
        not_found("dlsym");
    return (void *)fn;
}

static __attribute__((noinline)) void *dlvsym_slow(void)
{
    tl_dl_init();
    dlvsym_fn fn = __atomic_load_n(&real_dlvsym, __ATOMIC_ACQUIRE);
    if (!fn)
        not_found("dlvsym");
    return (void *)fn;
}

static __attribute__((noinline)) void *dlsym_redirect(dlsym_fn fn, void *handle, const char *name)
{
    return tl_libc_swap(name, fn(handle, name));
}

static __attribute__((noinline)) void *dlvsym_redirect(dlvsym_fn fn, void *handle, const char *name,
                                                        const char *version)
{
    return tl_libc_swap(name, fn(handle, name, version));
}

/* Keep the forwarding call a jump: nothing of ours may be live after it.
 * Checked on the built object (see tests/integration/test_shim_dlsym.py). */
TL_EXPORT void *dlsym(void *handle, const char *name)
{
    dlsym_fn fn = __atomic_load_n(&real_dlsym, __ATOMIC_ACQUIRE);
    if (TL_UNLIKELY(!fn)) {
        fn = (dlsym_fn)dlsym_slow();
        if (!fn)
            return NULL;
    }
    if (TL_UNLIKELY(redirectable(handle, name)))
        return dlsym_redirect(fn, handle, name);
    return fn(handle, name);
}

TL_EXPORT void *dlvsym(void *handle, const char *name, const char *version)
{
    dlvsym_fn fn = __atomic_load_n(&real_dlvsym, __ATOMIC_ACQUIRE);
    if (TL_UNLIKELY(!fn)) {
        fn = (dlvsym_fn)dlvsym_slow();
        if (!fn)
            return NULL;
    }
    if (TL_UNLIKELY(redirectable(handle, name)))
        return dlvsym_redirect(fn, handle, name, version);
    return fn(handle, name, version);
}

#else  /* TL_NO_DL_HOOK */

void tl_dl_init(void) {}

#endif
