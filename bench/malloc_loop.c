/* SPDX-License-Identifier: MIT */
/* malloc_loop.c - per-call cost of allocator probes: N malloc(size)/free pairs, timed in process.
 * Prints "ready", waits for a line, runs, prints "ns_per_pair <float>", waits for a line, exits. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    char line[16];
    struct timespec a, b;

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    if (!fgets(line, sizeof line, stdin))
        return 1;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(size);
        free(p);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("ns_per_pair %.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    fgets(line, sizeof line, stdin);
    return 0;
}
