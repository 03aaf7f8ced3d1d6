/* tdenode_proc.c: real tdenode processes for tests (see tdenode_proc.h). */
#include "tdenode_proc.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vaultd_proc.h"

bool tdenode_proc_start(tdenode_proc *p, const char *binary, const char *vault_state,
                        const char *name, const char *const *extra)
{
    char bin[512], addr[512];
    vaultd_build_path(bin, sizeof(bin), binary);
    snprintf(p->vault_state, sizeof(p->vault_state), "%s", vault_state);
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->log, sizeof(p->log), "%s.%s.log", vault_state, name);
    snprintf(addr, sizeof(addr), "%s/%s.addr", vault_state, name);
    const char *argv[40] = {"tdenode",    "--dev", "--vault-state", vault_state,
                            "--dev-name", name,    "--listen",      "127.0.0.1:0"};
    size_t n = 8;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n + 1 < 40; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return test_proc_spawn(bin, argv, p->log, addr, &p->pid);
}

int tdenode_proc_stop(tdenode_proc *p)
{
    return test_proc_stop(&p->pid);
}

void tdenode_proc_kill(tdenode_proc *p)
{
    test_proc_kill(&p->pid);
}

bool tdenode_proc_wait_killed(tdenode_proc *p)
{
    if (p->pid <= 0) return false;
    int status = 0;
    for (int i = 0; i < 600; i++) {
        pid_t w = waitpid(p->pid, &status, WNOHANG);
        if (w == p->pid) {
            p->pid = 0;
            return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    tdenode_proc_kill(p);
    return false;
}

vc *tdenode_proc_client(const tdenode_proc *p, const char *role)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/clients/%s-%s.conf", p->vault_state, p->name, role);
    vc_profile prof;
    vc *c = NULL;
    if (kv_failed(vc_profile_load(path, &prof)) || kv_failed(vc_open(&prof, &c))) {
        fprintf(stderr, "cannot open tdenode client %s: %s\n", role, kv_error_msg());
        return NULL;
    }
    return c;
}
