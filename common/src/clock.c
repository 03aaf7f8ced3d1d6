/*
 * clock.c: wall clock with a test-only offset.  Must never let anything but
 * a KV_TEST_HOOKS build move time.
 */
#include "kv_clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#ifdef KV_TEST_HOOKS
static _Atomic int64_t kv_clock_skew;
void kv_clock_advance(int64_t seconds) { atomic_fetch_add(&kv_clock_skew, seconds); }
int64_t kv_clock_offset(void) { return atomic_load(&kv_clock_skew); }
#define KV_SKEW() atomic_load(&kv_clock_skew)
#else
#define KV_SKEW() 0
#endif

int64_t kv_clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + KV_SKEW() * 1000;
}

int64_t kv_clock_now(void) { return kv_clock_now_ms() / 1000; }

int64_t kv_clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kv_clock_format(int64_t t, char *out, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}
