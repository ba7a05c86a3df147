/* Grow resident memory as fast as one thread can: map 16 MiB at a time and write one
 * byte per page, so every page faults in (the kernel zeroes it) and counts in RSS.
 *
 *   alloc CAP_BYTES            grow until killed; exit 3 if CAP_BYTES is reached first
 *   alloc CAP_BYTES --rate     grow to CAP_BYTES, print "<bytes> <seconds>", exit 0
 *   ... --thp                  madvise(MADV_HUGEPAGE) each chunk: 2 MiB faults where THP
 *                              is "madvise" or "always" (the fastest growth a process gets)
 *
 * bench_launcher.py compiles this at run time (cc -O2) for the overshoot benchmark;
 * the cap keeps a launcher that fails to stop it from taking the machine down.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BYTES ((size_t)16 << 20)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: alloc CAP_BYTES [--rate] [--thp]\n");
        return 2;
    }
    size_t cap_bytes = strtoull(argv[1], NULL, 10);
    int rate = 0, thp = 0;
    for (int i = 2; i < argc; i++) {
        rate |= strcmp(argv[i], "--rate") == 0;
        thp |= strcmp(argv[i], "--thp") == 0;
    }
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    size_t total_bytes = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (total_bytes < cap_bytes) {
        volatile char *p = mmap(NULL, CHUNK_BYTES, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 4;
        }
#ifdef MADV_HUGEPAGE
        if (thp)
            madvise((void *)p, CHUNK_BYTES, MADV_HUGEPAGE);
#endif
        for (size_t i = 0; i < CHUNK_BYTES; i += page_bytes)
            p[i] = 1;
        total_bytes += CHUNK_BYTES;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!rate)
        return 3; /* nobody stopped us */
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%zu %.9f\n", total_bytes, seconds);
    return 0;
}
