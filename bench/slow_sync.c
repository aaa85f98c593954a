/* Emulates a disk whose syncs are slow: every fsync/fdatasync/msync(MS_SYNC) first
 * sleeps SEMCACHE_BENCH_SYNC_DELAY_US microseconds, then does the real call.
 * Used only by bench/perf.py --sync-delay-ms (LD_PRELOAD into the measured processes);
 * the data still reaches the disk exactly as without it.
 *
 *   cc -shared -fPIC -O2 -o slow_sync.so bench/slow_sync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static long delay_us(void) {
    static long cached = -1;
    if (cached < 0) {
        const char *text = getenv("SEMCACHE_BENCH_SYNC_DELAY_US");
        cached = text ? atol(text) : 0;
    }
    return cached;
}

static void wait_like_a_slow_disk(void) {
    long us = delay_us();
    if (us > 0) {
        struct timespec t = {us / 1000000, (us % 1000000) * 1000};
        while (nanosleep(&t, &t) != 0) {
        }
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_like_a_slow_disk();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_like_a_slow_disk();
    return real(fd);
}

int msync(void *addr, size_t length, int flags) {
    static int (*real)(void *, size_t, int);
    if (!real) real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    if (flags & MS_SYNC) wait_like_a_slow_disk();
    return real(addr, length, flags);
}
