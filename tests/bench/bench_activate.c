/*
 * bench_activate.c: activation of a new tenant key with many databases.
 *
 *   build/tests/bench_activate [--databases N] [--callers C] [--unwrap-rate R]
 *
 * Starts a real vaultd --dev (4 workers, 4 token sessions), gives a tenant
 * one customer-managed environment with N databases (default 10000), then
 * activates a second key while C storage-node callers (default 2) keep
 * unwrapping, each at R unwraps per second (default 50: a node renewing many
 * leases; 0 = as fast as it can, which takes token time from the re-wrap).  Prints the seconds
 * until the key is active, the bound N / (raw C_Decrypt per second on the same token with the same
 * sessions, measured in the same run) and their ratio (target <= 1.3), and the unwraps answered
 * during the activation with their worst latency.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_common.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "kv_clock.h"
#include "kv_pb.h"
#include "kv_test.h"

#define SESSIONS 4
#define URI(role) "spiffe://hsmvault.dev/" role

static vaultd_proc vd;
static char tenant[64], env_id[64];
static char (*db_ids)[64];
static int n_dbs = 10000;
static atomic_int created;
static atomic_long unwrap_max_ms;
static int unwrap_rate = 50;

static void *create_worker(void *arg)
{
    vc *c = arg;
    for (;;) {
        int i = atomic_fetch_add(&created, 1);
        if (i >= n_dbs) break;
        char name[32];
        snprintf(name, sizeof(name), "db%05d", i);
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_failed(vc_database_key_create(c, env_id, name, db_ids[i], sizeof(db_ids[i]), &dek,
                                             &lease)))
            bench_die("create a database key");
        kv_secret_free(&dek);
    }
    return NULL;
}

static void *unwrap_worker(void *arg)
{
    vc *c = arg;
    long n = 0;
    unsigned i = (unsigned)rand();
    while (!atomic_load(&bench_stop)) {
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        int64_t t0 = kv_clock_mono_ms();
        if (kv_failed(
                vc_database_key_unwrap(c, env_id, db_ids[i++ % (unsigned)n_dbs], &dek, &lease)))
            bench_die("unwrap during the activation");
        int64_t ms = kv_clock_mono_ms() - t0;
        long prev = atomic_load(&unwrap_max_ms);
        while (ms > prev && !atomic_compare_exchange_weak(&unwrap_max_ms, &prev, ms)) {
        }
        kv_secret_free(&dek);
        n++;
        if (unwrap_rate > 0 && 1000 / unwrap_rate > ms)
            usleep((useconds_t)((1000 / unwrap_rate - ms) * 1000));
    }
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

static char *generate_key(vc *ta, const char *name)
{
    static char ids[2][64];
    static int k;
    Hsmvault__V1__GenerateKeyRequest g = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    g.tenant_id = tenant;
    g.name = (char *)name;
    g.password.data = (uint8_t *)"bench password 123";
    g.password.len = strlen("bench password 123");
    Hsmvault__V1__GenerateKeyResponse *r = NULL;
    if (kv_failed(vc_call(ta, "/hsmvault.v1.TenantKeys/GenerateKey", &g.base,
                          &hsmvault__v1__generate_key_response__descriptor,
                          (ProtobufCMessage **)&r)))
        bench_die("generate a key");
    char *id = ids[k++ % 2];
    snprintf(id, 64, "%s", r->key->id);
    kv_pb_free(&r->base);
    return id;
}

static double timed_call(vc *c, const char *method, ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *resp_d)
{
    ProtobufCMessage *resp = NULL;
    int64_t t0 = kv_clock_mono_ms();
    if (kv_failed(vc_call(c, method, req, resp_d, &resp))) bench_die(method);
    double s = (double)(kv_clock_mono_ms() - t0) / 1000.0;
    kv_pb_free(resp);
    return s;
}

int main(int argc, char **argv)
{
    int callers = 2;
    static const struct option opts[] = {{"databases", required_argument, NULL, 'd'},
                                         {"callers", required_argument, NULL, 'c'},
                                         {"unwrap-rate", required_argument, NULL, 'u'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'd')
            n_dbs = atoi(optarg);
        else if (ch == 'c')
            callers = atoi(optarg);
        else if (ch == 'u')
            unwrap_rate = atoi(optarg);
        else {
            fprintf(stderr,
                    "usage: bench_activate [--databases N] [--callers C] [--unwrap-rate R]\n");
            return 2;
        }
    }
    if (n_dbs < 1 || n_dbs > 1000000 || callers < 0 || callers > 64 || unwrap_rate < 0 ||
        unwrap_rate > 1000) {
        fprintf(stderr,
                "bench_activate: databases 1..1000000, callers 0..64, unwrap-rate 0..1000\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    db_ids = calloc((size_t)n_dbs, sizeof(*db_ids));
    char tmp[256], state[300];
    kv_test_tmpdir(tmp, sizeof(tmp), "bench-activate");
    snprintf(state, sizeof(state), "%s/state", tmp);
    const char *extra[] = {"--workers", "4", "--sessions", "4", NULL};
    if (db_ids == NULL || !vaultd_proc_start_args(&vd, state, extra)) return 1;
    vc *op = vaultd_proc_client(&vd, "operator");
    vc *ta = vaultd_proc_client(&vd, "tenant-admin");
    vc *ea = vaultd_proc_client(&vd, "environment-admin");
    if (op == NULL || ta == NULL || ea == NULL) return 1;
    bench_tenant(op, "bench", tenant);
    bench_environment(op, tenant, "bench-prod", env_id);
    bench_bind(op, URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant, env_id);
    bench_bind(op, URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, tenant, NULL);
    bench_bind(op, URI("environment-admin"), HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN, tenant,
               NULL);

    printf("bench_activate: %d databases, vaultd with 4 workers / 4 token sessions, %d unwrap "
           "callers at %d/s each\n",
           n_dbs, callers, unwrap_rate);
    int64_t t0 = kv_clock_mono_ms();
    void *makers[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        makers[i] = vaultd_proc_client(&vd, "storage-node");
        pthread_create(&th[i], NULL, create_worker, makers[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    printf("  set-up: %d database keys created in %.1f s\n", n_dbs,
           (double)(kv_clock_mono_ms() - t0) / 1000.0);

    /* The tenant's first key (active by itself), applied to the environment. */
    generate_key(ta, "first");
    Hsmvault__V1__ApplyKeyRequest ap = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    ap.environment_id = env_id;
    double apply_s = timed_call(ea, "/hsmvault.v1.Environments/ApplyKey", &ap.base,
                                &hsmvault__v1__environment__descriptor);
    printf("  apply the first key (service key -> tenant key): %.2f s\n", apply_s);

    /* A second key, 24 h later (dev clock), activated under load. */
    Hsmvault__V1__AdvanceClockRequest adv = HSMVAULT__V1__ADVANCE_CLOCK_REQUEST__INIT;
    adv.seconds = 25 * 3600;
    timed_call(op, "/hsmvault.v1.Testing/AdvanceClock", &adv.base,
               &hsmvault__v1__advance_clock_response__descriptor);
    char *second = generate_key(ta, "second");
    void *unwrappers[64];
    pthread_t uth[64];
    for (int i = 0; i < callers; i++)
        unwrappers[i] = vaultd_proc_client(&vd, "storage-node");
    atomic_store(&bench_stop, 0);
    atomic_store(&bench_done, 0);
    for (int i = 0; i < callers; i++)
        pthread_create(&uth[i], NULL, unwrap_worker, unwrappers[i]);
    Hsmvault__V1__ActivateKeyRequest act = HSMVAULT__V1__ACTIVATE_KEY_REQUEST__INIT;
    act.tenant_id = tenant;
    act.key_id = second;
    double activate_s = timed_call(ta, "/hsmvault.v1.TenantKeys/ActivateKey", &act.base,
                                   &hsmvault__v1__tenant_key__descriptor);
    atomic_store(&bench_stop, 1);
    for (int i = 0; i < callers; i++)
        pthread_join(uth[i], NULL);
    long unwraps = atomic_load(&bench_done);

    /* The reference, on the same token with the same number of sessions. */
    bench_raw raw;
    bench_raw_open(&raw, &vd, SESSIONS);
    void *rargs[SESSIONS];
    for (int i = 0; i < SESSIONS; i++)
        rargs[i] = &raw;
    bench_run(SESSIONS, bench_raw_worker, rargs, 0.5, 0);
    double rate = bench_run(SESSIONS, bench_raw_worker, rargs, 5.0, 0);
    bench_raw_close(&raw);
    double bound = (double)n_dbs / rate;
    printf("  activate the second key (%d DEKs re-wrapped): %.2f s until active\n", n_dbs,
           activate_s);
    printf("  raw C_Decrypt: %.0f decrypts/s (%d sessions) -> bound %d / %.0f = %.2f s\n", rate,
           SESSIONS, n_dbs, rate, bound);
    printf("  ratio activation / bound: %.2f (target <= 1.30)\n", activate_s / bound);
    printf("  unwraps answered during the activation: %ld (%.0f/s), worst latency %ld ms, none "
           "failed\n",
           unwraps, (double)unwraps / activate_s, atomic_load(&unwrap_max_ms));

    for (int i = 0; i < 8; i++)
        vc_close(makers[i]);
    for (int i = 0; i < callers; i++)
        vc_close(unwrappers[i]);
    vc_close(op), vc_close(ta), vc_close(ea);
    vaultd_proc_stop(&vd);
    if (getenv("BENCH_KEEP") == NULL) kv_test_rmtree(tmp);
    else printf("  state and vaultd log kept in %s\n", tmp);
    free(db_ids);
    return 0;
}
