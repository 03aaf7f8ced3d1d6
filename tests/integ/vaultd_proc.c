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

bool vaultd_proc_start_args(vaultd_proc *p, const char *state_dir, const char *const *extra)
{
    char bin[512], addr[512], log[512];
    vaultd_build_path(bin, sizeof(bin), "vault/vaultd");
    snprintf(p->state_dir, sizeof(p->state_dir), "%s", state_dir);
    snprintf(addr, sizeof(addr), "%s/vaultd.addr", state_dir);
    snprintf(log, sizeof(log), "%s.log", state_dir);
    unlink(addr);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        if (freopen("/dev/null", "w", stdout) == NULL) _exit(127);
        const char *argv[32] = {"vaultd",  "--dev",    "--state-dir",
                                state_dir, "--listen", "127.0.0.1:0"};
        size_t n = 6;
        for (size_t i = 0; extra != NULL && extra[i] != NULL && n + 1 < 32; i++)
            argv[n++] = extra[i];
        argv[n] = NULL;
        execv(bin, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    p->pid = pid;
    for (int i = 0; i < 600; i++) {
        struct stat st;
        if (stat(addr, &st) == 0) return true;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "vaultd exited during start-up; see %s\n", log);
            p->pid = 0;
            return false;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "vaultd did not start within 30 s; see %s\n", log);
    vaultd_proc_kill(p);
    return false;
}

int vaultd_proc_stop(vaultd_proc *p)
{
    if (p->pid <= 0) return -1;
    kill(p->pid, SIGTERM);
    int status = 0;
    waitpid(p->pid, &status, 0);
    p->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void vaultd_proc_kill(vaultd_proc *p)
{
    if (p->pid <= 0) return;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
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
