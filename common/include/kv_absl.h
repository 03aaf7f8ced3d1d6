/*
 * kv_absl.h: one process-wide setting of the Abseil library that gRPC runs
 * on.  Neither adapter needs more of Abseil than this.
 */
#ifndef KV_ABSL_H
#define KV_ABSL_H

/* Debian builds Abseil without NDEBUG, which leaves absl::Mutex's deadlock
 * detector on: every lock gRPC takes then updates a process-wide lock graph
 * under a global mutex (measured: 2-3% of vaultd's and a client's CPU per
 * call, and contention between threads).  Turns it off, as release builds of
 * Abseil have it; a no-op where the library or the symbol is absent.  Call
 * before the first gRPC call of the process; idempotent, thread-safe. */
void kv_absl_deadlock_detection_off(void);

#endif
