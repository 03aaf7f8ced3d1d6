/* bench_common.c: see bench_common.h. */
#include "bench_common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "kv_clock.h"
#include "kv_pb.h"
#include "pfx.h"

atomic_int bench_stop;
atomic_long bench_done;
double bench_last_ops, bench_last_cpu_self, bench_last_cpu_vaultd;

void bench_die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, kv_error_msg());
    exit(1);
}

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double cpu_of(int pid)
{
    if (pid <= 0) return 0;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* fields after "(comm)" */
    unsigned long long ut = 0, st = 0;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

double bench_run(int n, void *(*fn)(void *), void **args, double seconds, int vaultd_pid)
{
    pthread_t th[256];
    if (n > 256) n = 256;
    atomic_store(&bench_stop, 0);
    atomic_store(&bench_done, 0);
    double c0 = cpu_self(), v0 = cpu_of(vaultd_pid);
    int64_t t0 = kv_clock_mono_ms();
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, fn, args ? args[i] : NULL);
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&bench_stop, 1);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    int64_t t1 = kv_clock_mono_ms();
    bench_last_ops = (double)atomic_load(&bench_done);
    bench_last_cpu_self = cpu_self() - c0;
    bench_last_cpu_vaultd = cpu_of(vaultd_pid) - v0;
    return bench_last_ops * 1000.0 / (double)(t1 - t0);
}

void bench_raw_open(bench_raw *r, const vaultd_proc *vd, unsigned sessions)
{
    char conf[512], pin[512];
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", vd->state_dir);
    snprintf(pin, sizeof(pin), "%s/pin", vd->state_dir);
    setenv("SOFTHSM2_CONF", conf, 1);
    hsm_config cfg = {.module_path = getenv("HSMVAULT_SOFTHSM_MODULE"),
                      .token_label = "hsmvault-dev",
                      .pin_file = pin,
                      .sessions = sessions};
    if (cfg.module_path == NULL) cfg.module_path = "/usr/lib/softhsm/libsofthsm2.so";
    memset(r, 0, sizeof(*r));
    if (kv_failed(hsm_open(&cfg, &r->tok))) bench_die("open the token");
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    if (kv_failed(hsm_rsa_generate(r->tok, "bench:raw-reference", 2048, &r->key, &spki, &spki_len)))
        bench_die("generate the reference key");
    uint8_t dek[32];
    if (kv_failed(hsm_random(r->tok, dek, sizeof(dek)))) bench_die("random");
    if (kv_failed(rsa_oaep_encrypt(spki, spki_len, 0, dek, sizeof(dek), &r->ct, &r->ct_len)))
        bench_die("encrypt");
    free(spki);
}

void *bench_raw_worker(void *arg)
{
    bench_raw *r = arg;
    long n = 0;
    while (!atomic_load(&bench_stop)) {
        kv_secret out = KV_SECRET_INIT;
        if (kv_failed(hsm_rsa_decrypt_oaep(r->tok, &r->key, HSM_OAEP_SHA1, r->ct, r->ct_len, &out)))
            bench_die("raw decrypt");
        kv_secret_free(&out);
        n++;
    }
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

void bench_raw_close(bench_raw *r)
{
    if (r->tok == NULL) return;
    if (kv_failed(hsm_key_destroy(r->tok, &r->key)))
        fprintf(stderr, "bench: the reference key was not destroyed: %s\n", kv_error_msg());
    hsm_close(r->tok);
    free(r->ct);
    memset(r, 0, sizeof(*r));
}

void bench_tenant(vc *op, const char *name, char tenant_id[64])
{
    char *contacts[] = {"bench@example.com"};
    Hsmvault__V1__CreateTenantRequest ct = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    ct.name = (char *)name;
    ct.subscription_id = "bench-sub";
    ct.n_admin_contacts = 1;
    ct.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Tenants/CreateTenant", &ct.base,
                          &hsmvault__v1__tenant__descriptor, (ProtobufCMessage **)&t)))
        bench_die("create tenant");
    snprintf(tenant_id, 64, "%s", t->id);
    kv_pb_free(&t->base);
    Hsmvault__V1__EnableSelfManagedKeysRequest en =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    en.tenant_id = tenant_id;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Tenants/EnableSelfManagedKeys", &en.base,
                          &hsmvault__v1__tenant__descriptor, (ProtobufCMessage **)&t)))
        bench_die("enable self-managed keys");
    kv_pb_free(&t->base);
}

void bench_environment(vc *op, const char *tenant_id, const char *name, char env_id[64])
{
    Hsmvault__V1__CreateEnvironmentRequest ce = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    ce.tenant_id = (char *)tenant_id;
    ce.name = (char *)name;
    ce.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION;
    Hsmvault__V1__Environment *e = NULL;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Environments/CreateEnvironment", &ce.base,
                          &hsmvault__v1__environment__descriptor, (ProtobufCMessage **)&e)))
        bench_die("create environment");
    snprintf(env_id, 64, "%s", e->id);
    kv_pb_free(&e->base);
}

void bench_bind(vc *op, const char *principal, Hsmvault__V1__Role role, const char *tenant_id,
                const char *env_id)
{
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = (char *)principal;
    b.role = role;
    b.tenant_id = (char *)tenant_id;
    b.environment_id = (char *)(env_id ? env_id : "");
    Hsmvault__V1__BindRoleRequest br = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
    br.binding = &b;
    Hsmvault__V1__RoleBinding *out = NULL;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Tenants/BindRole", &br.base,
                          &hsmvault__v1__role_binding__descriptor, (ProtobufCMessage **)&out)))
        bench_die("bind a role");
    kv_pb_free(&out->base);
}
