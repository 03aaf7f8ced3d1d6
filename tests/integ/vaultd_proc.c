/* vaultd_proc.c: real vaultd processes for tests (see vaultd_proc.h). */
#include "vaultd_proc.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ctest sets HSMVAULT_BUILD_DIR; a benchmark run by hand falls back to the
 * build directory it was compiled in. */
#ifndef HSMVAULT_DEFAULT_BUILD_DIR
#define HSMVAULT_DEFAULT_BUILD_DIR "."
#endif

void vaultd_build_path(char *out, size_t cap, const char *rel)
{
    const char *b = getenv("HSMVAULT_BUILD_DIR");
    snprintf(out, cap, "%s/%s", b && *b ? b : HSMVAULT_DEFAULT_BUILD_DIR, rel);
}

bool vaultd_proc_start(vaultd_proc *p, const char *state_dir)
{
    return vaultd_proc_start_args(p, state_dir, NULL);
}

bool test_proc_spawn(const char *bin, const char *const *argv, const char *log,
                     const char *ready_path, pid_t *pid_out)
{
    unlink(ready_path);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        if (freopen("/dev/null", "w", stdout) == NULL) _exit(127);
        execv(bin, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    *pid_out = pid;
    for (int i = 0; i < 600; i++) {
        struct stat st;
        if (stat(ready_path, &st) == 0) return true;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "%s exited during start-up; see %s\n", bin, log);
            *pid_out = 0;
            return false;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "%s did not start within 30 s; see %s\n", bin, log);
    test_proc_kill(pid_out);
    return false;
}

int test_proc_stop(pid_t *pid)
{
    if (*pid <= 0) return -1;
    kill(*pid, SIGTERM);
    int status = 0;
    waitpid(*pid, &status, 0);
    *pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void test_proc_kill(pid_t *pid)
{
    if (*pid <= 0) return;
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

bool vaultd_proc_start_args(vaultd_proc *p, const char *state_dir, const char *const *extra)
{
    char bin[512], addr[512], log[512];
    vaultd_build_path(bin, sizeof(bin), "vault/vaultd");
    snprintf(p->state_dir, sizeof(p->state_dir), "%s", state_dir);
    snprintf(addr, sizeof(addr), "%s/vaultd.addr", state_dir);
    snprintf(log, sizeof(log), "%s.log", state_dir);
    const char *argv[32] = {"vaultd", "--dev", "--state-dir", state_dir, "--listen", "127.0.0.1:0"};
    size_t n = 6;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n + 1 < 32; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return test_proc_spawn(bin, argv, log, addr, &p->pid);
}

int vaultd_proc_stop(vaultd_proc *p)
{
    return test_proc_stop(&p->pid);
}

void vaultd_proc_kill(vaultd_proc *p)
{
    test_proc_kill(&p->pid);
}

vc *vaultd_proc_client(const vaultd_proc *p, const char *role)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/clients/%s.conf", p->state_dir, role);
    vc_profile prof;
    vc *c = NULL;
    if (kv_failed(vc_profile_load(path, &prof)) || kv_failed(vc_open(&prof, &c))) {
        fprintf(stderr, "cannot open client %s: %s\n", role, kv_error_msg());
        return NULL;
    }
    return c;
}
