/*
 * tdenode_proc.h: starts and stops a real tdenode --dev beside a
 * vaultd --dev for integration tests and benchmarks (loopback, port chosen
 * by the kernel).
 */
#ifndef TDENODE_PROC_H
#define TDENODE_PROC_H

#include <stdbool.h>
#include <sys/types.h>

#include "vaultclient.h"

typedef struct {
    char vault_state[256];
    char name[64]; /* --dev-name: <state>/<name>.addr, clients/<name>-*.conf */
    char log[400];
    pid_t pid;
} tdenode_proc;

/* Starts build/<binary> (e.g. "storage/tdenode") --dev --vault-state
 * vault_state --dev-name name --listen 127.0.0.1:0 plus extra
 * (NULL-terminated, may be NULL) and waits until it serves.  Its log goes
 * to <vault_state>.<name>.log. */
bool tdenode_proc_start(tdenode_proc *p, const char *binary, const char *vault_state,
                        const char *name, const char *const *extra);
/* SIGTERM and wait; its exit status (0: clean). */
int tdenode_proc_stop(tdenode_proc *p);
/* SIGKILL and wait. */
void tdenode_proc_kill(tdenode_proc *p);
/* Waits for a process that is to die by itself (a crash point): true if it
 * was killed by SIGKILL. */
bool tdenode_proc_wait_killed(tdenode_proc *p);
/* A client with the dev profile "engine" or "admin". */
vc *tdenode_proc_client(const tdenode_proc *p, const char *role);

#endif
