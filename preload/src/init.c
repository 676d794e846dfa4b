/* SPDX-License-Identifier: MIT
 * init.c - start-up, fork and exit.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <unistd.h>

#include "tl_internal.h"

static void after_fork_child(void)
{
    tl_recorder_after_fork_child();
    tl_small_pend = NULL; /* the filter was cleared: its free would not clear it (hooks_pymem.c) */
    tl_shm_after_fork_child();
    tl_dumper_after_fork_child();
}

__attribute__((constructor(101))) static void tl_init(void)
{
    tl_guard = 1; /* the shim's own start-up allocations are not the user's */
    tl_config_load();
    tl_py_discover();
    tl_shm_init();
    tl_recorder_init();
    tl_dumper_init();
    tl_banner();
    pthread_atfork(NULL, NULL, after_fork_child);
    if (tl_py_present())
        tl_pymem_wanted = 1;
    tl_guard = 0;
}

__attribute__((destructor(101))) static void tl_fini(void)
{
    if (getpid() == tl_owner_pid)
        tl_dump_at_exit();
}
