/*
 * kv_clock.h: the one clock every timer reads.
 *
 * Release builds read CLOCK_REALTIME and nothing else.  Test builds
 * (KV_TEST_HOOKS defined at build time) add an offset that tests move forward
 * (24 h, 72 h, ...) without waiting; the hook does not exist in a release
 * build, so no request or file can move a production clock.
 */
#ifndef KV_CLOCK_H
#define KV_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Seconds since the Unix epoch. */
int64_t kv_clock_now(void);
/* Milliseconds since the Unix epoch. */
int64_t kv_clock_now_ms(void);
/* Monotonic milliseconds, for deadlines and benchmarks (never offset). */
int64_t kv_clock_mono_ms(void);
/* Formats t as 2026-11-22T10:00:00Z; out needs 21 bytes. */
void kv_clock_format(int64_t t, char *out, size_t cap);

#ifdef KV_TEST_HOOKS
/* Moves the vault's clock forward by seconds (test builds only). */
void kv_clock_advance(int64_t seconds);
int64_t kv_clock_offset(void);
#endif

#endif
