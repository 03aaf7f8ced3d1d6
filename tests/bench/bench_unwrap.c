/*
 * bench_unwrap.c: DEK unwraps per second through vaultd against raw
 * C_Decrypt on the same token, measured in the same run.
 *
 *   build/tests/bench_unwrap [--callers N] [--seconds S] [--rounds R] [--databases D]
 *                            [--sessions N] [--workers N] [--channels K]
 *                            [--queue-threads T] [--unwrap-workers U] [--no-audit-log]
 *                            [--audit-sync-ms MS]
 *
 * Starts a real vaultd --dev (default 4 workers, 4 token sessions) in a
 * temporary directory, creates D databases as the storage node, then:
 *   raw:   one thread per token session, RSA-2048 OAEP-SHA1 decrypts of a
 *          32-byte key in this process;
 *   vault: N concurrent callers in this process (separate from vaultd), each
 *          with its own mTLS channel, calling UnwrapDatabaseKey round-robin
 *          (--queue-threads T: T threads drive the N calls through vc_queue,
 *          one call in flight per channel).
 * The two paths alternate (which goes first alternates too) for R rounds of
 * S seconds each (default 10 x 2 s); prints each round with the CPU spent
 * per operation, the ratio of the mean rates, the median of the per-round
 * ratios, and the CPU ratio (raw CPU per decrypt over vaultd's + callers' CPU
 * per unwrap), then one RESULT line for machines.
 * --no-audit-log runs vaultd without its audit log (vaultd --dev --no-audit-log),
 * to compare against the default (audit log on); the RESULT line says which.
 * --audit-sync-ms passes vaultd's (default 10; 0: each unwrap waits for the
 * fdatasync of its audit record).
 * Not a test: nothing asserts on time.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_common.h"
#include "kv_test.h"

#define MAX_DBS 64

static vaultd_proc vd;
static char env_id[64], db_ids[MAX_DBS][64];
static int n_dbs = 8;

static void *vault_worker(void *arg)
{
    static atomic_uint next_start;
    vc *c = arg;
    long n = 0;
    unsigned i = atomic_fetch_add(&next_start, 1); /* callers start on different databases */
    while (!atomic_load(&bench_stop)) {
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_failed(
                vc_database_key_unwrap(c, env_id, db_ids[i++ % (unsigned)n_dbs], &dek, &lease)))
            bench_die("unwrap through vaultd");
        kv_secret_free(&dek);
        n++;
    }
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

/* A queue thread: keeps one unwrap in flight per channel it drives (arg:
 * NULL-terminated list of clients), collecting each as it finishes. */
static void *vault_queue_worker(void *arg)
{
    static atomic_uint next_start;
    vc **clients = arg;
    vc_queue *q = NULL;
    if (kv_failed(vc_queue_open(&q))) bench_die("open a call queue");
    unsigned i = atomic_fetch_add(&next_start, 1);
    for (size_t k = 0; clients[k] != NULL; k++)
        if (kv_failed(vc_queue_database_key_unwrap(q, clients[k], env_id,
                                                   db_ids[i++ % (unsigned)n_dbs], clients[k])))
            bench_die("start an unwrap");
    long n = 0;
    while (vc_queue_in_flight(q) > 0) {
        void *tag = NULL;
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_failed(vc_queue_next_database_key(q, &tag, &dek, &lease)))
            bench_die("unwrap through vaultd");
        kv_secret_free(&dek);
        n++;
        if (!atomic_load(&bench_stop) && kv_failed(vc_queue_database_key_unwrap(
                                             q, tag, env_id, db_ids[i++ % (unsigned)n_dbs], tag)))
            bench_die("start an unwrap");
    }
    vc_queue_close(q);
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int callers = 8, rounds = 10, sessions = 4, workers = 0, channels = 0, queue_threads = 0,
        unwrap_workers = 0, no_audit = 0, sync_ms = -1;
    double seconds = 2;
    static const struct option opts[] = {{"callers", required_argument, NULL, 'c'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"databases", required_argument, NULL, 'd'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"sessions", required_argument, NULL, 'S'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"channels", required_argument, NULL, 'C'},
                                         {"queue-threads", required_argument, NULL, 'Q'},
                                         {"unwrap-workers", required_argument, NULL, 'U'},
                                         {"no-audit-log", no_argument, NULL, 'A'},
                                         {"audit-sync-ms", required_argument, NULL, 'Y'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            callers = atoi(optarg);
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'd':
            n_dbs = atoi(optarg);
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'S':
            sessions = atoi(optarg);
            break;
        case 'w':
            workers = atoi(optarg);
            break;
        case 'C':
            channels = atoi(optarg);
            break;
        case 'Q':
            queue_threads = atoi(optarg);
            break;
        case 'U':
            unwrap_workers = atoi(optarg);
            break;
        case 'A':
            no_audit = 1;
            break;
        case 'Y':
            sync_ms = atoi(optarg);
            break;
        default:
            fprintf(stderr,
                    "usage: bench_unwrap [--callers N] [--seconds S] [--rounds R] [--databases D]\n"
                    "                    [--sessions N] [--workers N] [--channels K] "
                    "[--queue-threads T] [--unwrap-workers U] [--no-audit-log]\n"
                    "                    [--audit-sync-ms MS]\n");
            return 2;
        }
    }
    if (workers == 0) workers = sessions;
    if (channels == 0 || channels > callers) channels = callers;
    if (sessions < 1 || sessions > 64 || workers < 1 || workers > 64 || callers < 1 ||
        callers > 256 || seconds <= 0 || rounds < 1 || rounds > 100 || n_dbs < 1 ||
        n_dbs > MAX_DBS) {
        fprintf(stderr,
                "bench_unwrap: sessions/workers 1..64, callers 1..256, seconds > 0, rounds 1..100, "
                "databases 1..%d\n",
                MAX_DBS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char tmp[256], state[300], w_arg[16], s_arg[16], u_arg[16], y_arg[16];
    kv_test_tmpdir(tmp, sizeof(tmp), "bench");
    snprintf(state, sizeof(state), "%s/state", tmp);
    snprintf(w_arg, sizeof(w_arg), "%d", workers);
    snprintf(s_arg, sizeof(s_arg), "%d", sessions);
    snprintf(u_arg, sizeof(u_arg), "%d", unwrap_workers > 0 ? unwrap_workers : workers);
    snprintf(y_arg, sizeof(y_arg), "%d", sync_ms);
    const char *extra[] = {"--workers",
                           w_arg,
                           "--sessions",
                           s_arg,
                           "--unwrap-workers",
                           u_arg,
                           no_audit ? "--no-audit-log" : "--audit-sync-ms",
                           no_audit ? NULL : (sync_ms >= 0 ? y_arg : "10"),
                           NULL};
    if (!vaultd_proc_start_args(&vd, state, extra)) return 1;
    vc *op = vaultd_proc_client(&vd, "operator");
    vc *sn = vaultd_proc_client(&vd, "storage-node");
    if (op == NULL || sn == NULL) return 1;
    char tenant[64];
    bench_tenant(op, "bench", tenant);
    bench_environment(op, tenant, "bench-env", env_id);
    bench_bind(op, "spiffe://hsmvault.dev/storage-node", HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE,
               tenant, env_id);
    for (int i = 0; i < n_dbs; i++) {
        char name[32];
        snprintf(name, sizeof(name), "db%02d", i);
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_failed(vc_database_key_create(sn, env_id, name, db_ids[i], sizeof(db_ids[i]), &dek,
                                             &lease)))
            bench_die("create database key");
        kv_secret_free(&dek);
    }
    bench_raw raw;
    bench_raw_open(&raw, &vd, (unsigned)sessions);

    printf("bench_unwrap: RSA-2048 OAEP-SHA1 in SoftHSM, %ld CPUs, %d rounds of %.1f s per path\n",
           sysconf(_SC_NPROCESSORS_ONLN), rounds, seconds);
    printf("  raw:   %d threads on %d token sessions, C_Decrypt in this process\n", sessions,
           sessions);
    printf("  vault: %d callers (own mTLS channel each%s) -> vaultd with %d workers + %d for "
           "unwraps / %d sessions\n",
           callers, queue_threads > 0 ? ", driven by queue threads" : "", workers,
           unwrap_workers > 0 ? unwrap_workers : workers, sessions);
    void *raw_args[64], *args[256];
    for (int i = 0; i < sessions; i++)
        raw_args[i] = &raw;
    /* --channels K: the callers share K mTLS channels (default: one each). */
    for (int i = 0; i < callers; i++)
        if ((args[i] = i < channels ? vaultd_proc_client(&vd, "storage-node")
                                    : args[i % channels]) == NULL)
            return 1;
    /* Warm up both paths, then alternate them so drift in the machine's
     * speed hits both alike. */
    bench_run(sessions, bench_raw_worker, raw_args, 0.5, 0);
    /* --queue-threads T: the callers' calls are driven by T threads, each
     * keeping one call in flight per channel it owns (vc_queue). */
    int vault_threads = callers;
    void *(*vault_fn)(void *) = vault_worker;
    void *vault_args[256];
    static vc *groups[256][257];
    if (queue_threads > 0) {
        if (queue_threads > callers) queue_threads = callers;
        for (int i = 0; i < callers; i++) {
            int g = i % queue_threads, k = i / queue_threads;
            groups[g][k] = args[i];
            groups[g][k + 1] = NULL;
        }
        for (int g = 0; g < queue_threads; g++)
            vault_args[g] = groups[g];
        vault_threads = queue_threads;
        vault_fn = vault_queue_worker;
    } else {
        for (int i = 0; i < callers; i++)
            vault_args[i] = args[i];
    }
    bench_run(vault_threads, vault_fn, vault_args, 0.5, vd.pid);
    double raw_sum = 0, vault_sum = 0, raw_cpu_sum = 0, vault_cpu_sum = 0, raw_ops = 0,
           vault_ops = 0, ratios[100];
    for (int r = 0; r < rounds; r++) {
        /* Alternate which path goes first, so a drift in the machine's speed
         * within a round favours neither. */
        double raw_rate = 0, vault_rate = 0, raw_cpu = 0, vault_cpu = 0, client_cpu = 0;
        for (int half = 0; half < 2; half++) {
            if ((half == 0) == (r % 2 == 0)) {
                raw_rate = bench_run(sessions, bench_raw_worker, raw_args, seconds, 0);
                raw_cpu = bench_last_cpu_self / bench_last_ops;
                raw_cpu_sum += bench_last_cpu_self;
                raw_ops += bench_last_ops;
            } else {
                vault_rate = bench_run(vault_threads, vault_fn, vault_args, seconds, vd.pid);
                vault_cpu = bench_last_cpu_vaultd / bench_last_ops;
                client_cpu = bench_last_cpu_self / bench_last_ops;
                vault_cpu_sum += bench_last_cpu_vaultd + bench_last_cpu_self;
                vault_ops += bench_last_ops;
            }
        }
        ratios[r] = vault_rate / raw_rate;
        printf("  round %2d: raw %6.0f decrypts/s   vault %6.0f unwraps/s   ratio %.2f   "
               "CPU ms/op: raw %.2f, vaultd %.2f, callers %.2f\n",
               r + 1, raw_rate, vault_rate, ratios[r], raw_cpu * 1e3, vault_cpu * 1e3,
               client_cpu * 1e3);
        raw_sum += raw_rate;
        vault_sum += vault_rate;
    }
    qsort(ratios, (size_t)rounds, sizeof(ratios[0]), bench_cmp_double);
    double median =
        rounds % 2 ? ratios[rounds / 2] : (ratios[rounds / 2 - 1] + ratios[rounds / 2]) / 2;
    /* The CPU ratio: token CPU per decrypt over vaultd's + the callers' CPU per
     * unwrap; it barely moves when other load takes cores away. */
    double cpu_ratio = (raw_cpu_sum / raw_ops) / (vault_cpu_sum / vault_ops);
    printf(
        "  mean:     raw %6.0f decrypts/s   vault %6.0f unwraps/s   ratio %.2f (target >= 0.70)\n",
        raw_sum / rounds, vault_sum / rounds, vault_sum / raw_sum);
    printf("  rounds:   median ratio %.2f, lowest %.2f, highest %.2f; CPU ratio %.2f\n", median,
           ratios[0], ratios[rounds - 1], cpu_ratio);
    printf("RESULT bench_unwrap raw=%.0f vault=%.0f ratio=%.3f median=%.3f cpu_ratio=%.3f "
           "audit_log=%s audit_sync_ms=%d\n",
           raw_sum / rounds, vault_sum / rounds, vault_sum / raw_sum, median, cpu_ratio,
           no_audit ? "off" : "on", no_audit ? -1 : (sync_ms >= 0 ? sync_ms : 10));

    for (int i = 0; i < callers; i++)
        vc_close(args[i]);
    bench_raw_close(&raw);
    vc_close(op);
    vc_close(sn);
    vaultd_proc_stop(&vd);
    kv_test_rmtree(tmp);
    return 0;
}
