/*
 * bench_common.h: what the benchmarks share: the raw token reference
 * (C_Decrypt RSA-OAEP on the vault's own dev token), timed thread runs with
 * CPU accounting, and tenant set-up through the API.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdatomic.h>
#include <stdint.h>

#include "hsm.h"
#include "hsmvault/v1/types.pb-c.h"
#include "vaultclient.h"
#include "vaultd_proc.h"

extern atomic_int bench_stop;  /* workers loop until it is set */
extern atomic_long bench_done; /* workers add their operation counts */
/* After bench_run: operations, and CPU seconds of this process and of vaultd. */
extern double bench_last_ops, bench_last_cpu_self, bench_last_cpu_vaultd;

/* Prints what failed with the error record and exits 1. */
void bench_die(const char *what) __attribute__((noreturn));

/* Runs n threads of fn(args[i]) (args may be NULL) for seconds; returns
 * operations per second.  vaultd_pid (0: none) is charged in bench_last_cpu_vaultd. */
double bench_run(int n, void *(*fn)(void *), void **args, double seconds, int vaultd_pid);

/* The raw reference: an RSA-2048 key generated in the dev token of vd (label
 * "bench:raw-reference", outside the vault's label space) and one OAEP-SHA1
 * ciphertext of a 32-byte key under it. */
typedef struct {
    hsm *tok;
    hsm_key_id key;
    uint8_t *ct;
    size_t ct_len;
} bench_raw;

void bench_raw_open(bench_raw *r, const vaultd_proc *vd, unsigned sessions);
/* Thread body for bench_run: C_Decrypt in a loop (arg: the bench_raw). */
void *bench_raw_worker(void *arg);
void bench_raw_close(bench_raw *r);

/* Set-up through the API, as the dev operator. */
void bench_tenant(vc *op, const char *name, char tenant_id[64]);
void bench_environment(vc *op, const char *tenant_id, const char *name, char env_id[64]);
void bench_bind(vc *op, const char *principal, Hsmvault__V1__Role role, const char *tenant_id,
                const char *env_id);

#endif
