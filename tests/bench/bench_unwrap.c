/*
 * bench_unwrap.c: DEK unwraps per second through vaultd against raw
 * C_Decrypt RSA-OAEP on the same token, measured in the same run.
 *
 *   build/tests/bench_unwrap [--callers N] [--seconds S] [--rounds R] [--databases D]
 *
 * Starts a real vaultd --dev (4 workers, 4 token sessions) in a temporary
 * directory, creates D databases as the storage node, then:
 *   raw:   4 threads, one token session each (the vault's session count),
 *          RSA-2048 OAEP-SHA1 decrypts of a 32-byte key in this process;
 *   vault: N concurrent callers in this process (separate from vaultd), each
 *          with its own mTLS channel, calling UnwrapDatabaseKey round-robin.
 * The two paths alternate for R rounds (default 3 x 5 s each); prints each
 * round and the ratio of the means.  Not a test: nothing asserts on time.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hsm.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "kv_clock.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "pfx.h"
#include "vaultd_proc.h"

#define MAX_DBS 64

static vaultd_proc vd;
static char env_id[64], db_ids[MAX_DBS][64];
static int n_dbs = 8;
static int sessions = 4, workers = 0; /* workers 0: one per session */
static atomic_int stop;
static atomic_long done;

static hsm *tok;
static hsm_key_id raw_key;
static uint8_t *raw_ct;
static size_t raw_ct_len;

#define DIE(...)                                                                                   \
    do {                                                                                           \
        fprintf(stderr, "bench_unwrap: " __VA_ARGS__);                                             \
        fprintf(stderr, ": %s\n", kv_error_msg());                                                 \
        exit(1);                                                                                   \
    } while (0)

static void *raw_worker(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load(&stop)) {
        kv_secret out = KV_SECRET_INIT;
        if (kv_failed(hsm_rsa_decrypt_oaep(tok, &raw_key, HSM_OAEP_SHA1, raw_ct, raw_ct_len, &out)))
            DIE("raw decrypt");
        kv_secret_free(&out);
        n++;
    }
    atomic_fetch_add(&done, n);
    return NULL;
}

static void *vault_worker(void *arg)
{
    static atomic_uint next_start;
    vc *c = arg;
    long n = 0;
    unsigned i = atomic_fetch_add(&next_start, 1); /* callers start on different databases */
    while (!atomic_load(&stop)) {
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_failed(
                vc_database_key_unwrap(c, env_id, db_ids[i++ % (unsigned)n_dbs], &dek, &lease)))
            DIE("unwrap through vaultd");
        kv_secret_free(&dek);
        n++;
    }
    atomic_fetch_add(&done, n);
    return NULL;
}

/* CPU seconds used so far by this process and by vaultd. */
static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double cpu_vaultd(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)vd.pid);
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

static double last_ops, last_cpu_self, last_cpu_vaultd;

/* Runs n threads of fn(args[i]) for seconds; returns operations per second
 * and leaves the operation count and CPU seconds spent in last_*. */
static double run(int n, void *(*fn)(void *), void **args, double seconds)
{
    pthread_t th[256];
    atomic_store(&stop, 0);
    atomic_store(&done, 0);
    double c0 = cpu_self(), v0 = cpu_vaultd();
    int64_t t0 = kv_clock_mono_ms();
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, fn, args ? args[i] : NULL);
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&stop, 1);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    int64_t t1 = kv_clock_mono_ms();
    last_ops = (double)atomic_load(&done);
    last_cpu_self = cpu_self() - c0;
    last_cpu_vaultd = cpu_vaultd() - v0;
    return (double)atomic_load(&done) * 1000.0 / (double)(t1 - t0);
}

static void setup_vault(vc *op, vc *sn)
{
    char *contacts[] = {"bench@example.com"};
    Hsmvault__V1__CreateTenantRequest ct = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    ct.name = "bench";
    ct.subscription_id = "bench-sub";
    ct.n_admin_contacts = 1;
    ct.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Tenants/CreateTenant", &ct.base,
                          &hsmvault__v1__tenant__descriptor, (ProtobufCMessage **)&t)))
        DIE("create tenant");
    Hsmvault__V1__CreateEnvironmentRequest ce = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    ce.tenant_id = t->id;
    ce.name = "bench-env";
    ce.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION;
    Hsmvault__V1__Environment *e = NULL;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Environments/CreateEnvironment", &ce.base,
                          &hsmvault__v1__environment__descriptor, (ProtobufCMessage **)&e)))
        DIE("create environment");
    snprintf(env_id, sizeof(env_id), "%s", e->id);
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = "spiffe://hsmvault.dev/storage-node";
    b.role = HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE;
    b.tenant_id = t->id;
    b.environment_id = e->id;
    Hsmvault__V1__BindRoleRequest br = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
    br.binding = &b;
    Hsmvault__V1__RoleBinding *out = NULL;
    if (kv_failed(vc_call(op, "/hsmvault.v1.Tenants/BindRole", &br.base,
                          &hsmvault__v1__role_binding__descriptor, (ProtobufCMessage **)&out)))
        DIE("bind storage node");
    kv_pb_free(&out->base);
    kv_pb_free(&e->base);
    kv_pb_free(&t->base);
    for (int i = 0; i < n_dbs; i++) {
        char name[32];
        snprintf(name, sizeof(name), "db%02d", i);
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_failed(vc_database_key_create(sn, env_id, name, db_ids[i], sizeof(db_ids[i]), &dek,
                                             &lease)))
            DIE("create database key");
        kv_secret_free(&dek);
    }
}

static void setup_raw(void)
{
    char conf[512], pin[512];
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", vd.state_dir);
    snprintf(pin, sizeof(pin), "%s/pin", vd.state_dir);
    setenv("SOFTHSM2_CONF", conf, 1);
    hsm_config cfg = {.module_path = getenv("HSMVAULT_SOFTHSM_MODULE"),
                      .token_label = "hsmvault-dev",
                      .pin_file = pin,
                      .sessions = sessions};
    if (cfg.module_path == NULL) cfg.module_path = "/usr/lib/softhsm/libsofthsm2.so";
    if (kv_failed(hsm_open(&cfg, &tok))) DIE("open the token");
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    if (kv_failed(hsm_rsa_generate(tok, "bench:raw-reference", 2048, &raw_key, &spki, &spki_len)))
        DIE("generate the reference key");
    uint8_t dek[32];
    if (kv_failed(hsm_random(tok, dek, sizeof(dek)))) DIE("random");
    if (kv_failed(rsa_oaep_encrypt(spki, spki_len, 0, dek, sizeof(dek), &raw_ct, &raw_ct_len)))
        DIE("encrypt");
    free(spki);
}

int main(int argc, char **argv)
{
    int callers = 8, rounds = 3;
    double seconds = 5;
    static const struct option opts[] = {{"callers", required_argument, NULL, 'c'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"databases", required_argument, NULL, 'd'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"sessions", required_argument, NULL, 'S'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'c')
            callers = atoi(optarg);
        else if (ch == 's')
            seconds = atof(optarg);
        else if (ch == 'd')
            n_dbs = atoi(optarg);
        else if (ch == 'r')
            rounds = atoi(optarg);
        else if (ch == 'S')
            sessions = atoi(optarg);
        else if (ch == 'w')
            workers = atoi(optarg);
        else {
            fprintf(stderr,
                    "usage: bench_unwrap [--callers N] [--seconds S] [--rounds R] [--databases D]\n"
                    "                    [--sessions N] [--workers N]\n");
            return 2;
        }
    }
    if (workers == 0) workers = sessions;
    if (sessions < 1 || sessions > 64 || workers < 1 || workers > 64 || callers < 1 ||
        callers > 256 || seconds <= 0 || rounds < 1 || rounds > 100 || n_dbs < 1 ||
        n_dbs > MAX_DBS) {
        fprintf(stderr,
                "bench_unwrap: callers 1..256, seconds > 0, rounds 1..100, databases 1..%d\n",
                MAX_DBS);
        return 2;
    }
    char tmp[256], state[300];
    kv_test_tmpdir(tmp, sizeof(tmp), "bench");
    snprintf(state, sizeof(state), "%s/state", tmp);
    char w_arg[16], s_arg[16];
    snprintf(w_arg, sizeof(w_arg), "%d", workers);
    snprintf(s_arg, sizeof(s_arg), "%d", sessions);
    const char *extra[] = {"--workers", w_arg, "--sessions", s_arg, NULL};
    if (!vaultd_proc_start_args(&vd, state, extra)) return 1;
    vc *op = vaultd_proc_client(&vd, "operator");
    vc *sn = vaultd_proc_client(&vd, "storage-node");
    if (op == NULL || sn == NULL) return 1;
    setup_vault(op, sn);
    setup_raw();

    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("bench_unwrap: RSA-2048 OAEP-SHA1 in SoftHSM, %ld CPUs, %d rounds of %.1f s per path\n",
           cpus, rounds, seconds);
    printf("  raw:   %d threads on %d token sessions, C_Decrypt in this process\n", sessions,
           sessions);
    printf("  vault: %d callers (own mTLS channel each) -> vaultd with %d workers / %d sessions\n",
           callers, workers, sessions);
    void *args[256];
    for (int i = 0; i < callers; i++) {
        args[i] = vaultd_proc_client(&vd, "storage-node");
        if (args[i] == NULL) return 1;
    }
    /* Warm up both paths, then alternate them so drift in the machine's
     * speed hits both alike. */
    run(sessions, raw_worker, NULL, 0.5);
    run(callers, vault_worker, args, 0.5);
    double raw_sum = 0, vault_sum = 0;
    for (int r = 0; r < rounds; r++) {
        double raw = run(sessions, raw_worker, NULL, seconds);
        double raw_cpu = last_cpu_self / last_ops;
        double vault = run(callers, vault_worker, args, seconds);
        double vault_cpu = last_cpu_vaultd / last_ops, client_cpu = last_cpu_self / last_ops;
        printf("  round %d: raw %7.0f decrypts/s   vault %7.0f unwraps/s   ratio %.2f   "
               "CPU ms/op: raw %.2f, vaultd %.2f, callers %.2f\n",
               r + 1, raw, vault, vault / raw, raw_cpu * 1e3, vault_cpu * 1e3, client_cpu * 1e3);
        raw_sum += raw;
        vault_sum += vault;
    }
    printf(
        "  mean:    raw %7.0f decrypts/s   vault %7.0f unwraps/s   ratio %.2f (target >= 0.70)\n",
        raw_sum / rounds, vault_sum / rounds, vault_sum / raw_sum);

    for (int i = 0; i < callers; i++)
        vc_close(args[i]);
    if (kv_failed(hsm_key_destroy(tok, &raw_key)))
        fprintf(stderr, "bench_unwrap: reference key not destroyed: %s\n", kv_error_msg());
    hsm_close(tok);
    free(raw_ct);
    vc_close(op);
    vc_close(sn);
    vaultd_proc_stop(&vd);
    kv_test_rmtree(tmp);
    return 0;
}
