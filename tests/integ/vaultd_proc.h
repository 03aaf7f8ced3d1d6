/*
 * vaultd_proc.h: starts and stops a real vaultd --dev for integration tests
 * and benchmarks (loopback, port chosen by the kernel, private state dir).
 */
#ifndef VAULTD_PROC_H
#define VAULTD_PROC_H

#include <stdbool.h>
#include <sys/types.h>

#include "vaultclient.h"

typedef struct {
    char state_dir[256];
    pid_t pid;
} vaultd_proc;

/* Starts vaultd --dev on state_dir (created by the caller or by vaultd) and
 * waits until it serves (<state>/vaultd.addr exists). */
bool vaultd_proc_start(vaultd_proc *p, const char *state_dir);
/* The same with more vaultd arguments (NULL-terminated; may be NULL). */
bool vaultd_proc_start_args(vaultd_proc *p, const char *state_dir, const char *const *extra);
/* SIGTERM and wait; returns vaultd's exit status (0 on clean shutdown). */
int vaultd_proc_stop(vaultd_proc *p);
/* SIGKILL and wait. */
void vaultd_proc_kill(vaultd_proc *p);
/* Opens a client with the dev profile of a role ("operator", ...). */
vc *vaultd_proc_client(const vaultd_proc *p, const char *role);
/* Any test server: forks bin with argv (stderr appended to log, stdout to
 * /dev/null) and waits until ready_path exists (removed first). */
bool test_proc_spawn(const char *bin, const char *const *argv, const char *log,
                     const char *ready_path, pid_t *pid);
/* SIGTERM and wait (exit status, 128+signal) / SIGKILL and wait. */
int test_proc_stop(pid_t *pid);
void test_proc_kill(pid_t *pid);
/* Path of a build artefact (HSMVAULT_BUILD_DIR/rel). */
void vaultd_build_path(char *out, size_t cap, const char *rel);

#endif
