/*
 * vaultd_main.c: the vault server.  `vaultd --dev` runs on the embedded
 * default; `vaultd --config FILE` runs from a config file.  Translates
 * results into exit codes; never prints a secret.
 */
#include <getopt.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hsm.h"
#include "kv_log.h"
#include "rpc_server.h"
#include "store.h"
#include "vault.h"
#include "vaultd_config.h"

/* Deletes expired locked environments once a minute (and at shutdown stops). */
typedef struct {
    vault *v;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
} vaultd_sweeper;

static void *vaultd_sweeper_main(void *arg)
{
    vaultd_sweeper *s = arg;
    vault_audit_task("sweep");
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 60;
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
        if (s->stop) break;
        pthread_mutex_unlock(&s->mu);
        if (kv_failed(vault_sweep(s->v)))
            kv_log_error_record(KV_LOG_ERROR, "sweeping locked environments");
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: vaultd --dev [--state-dir DIR] [--listen ADDR]\n"
        "       vaultd --config FILE\n"
        "\n"
        "Runs the hsmvault key vault: tenant keys in a PKCS#11 token, served over gRPC with mTLS.\n"
        "\n"
        "  --dev              embedded default: a SoftHSM token, a private CA, client "
        "certificates\n"
        "                     and vaultctl profiles under the state directory (created on first\n"
        "                     start, reused after)\n"
        "  --state-dir DIR    state directory for --dev (default ./hsmvault-dev)\n"
        "  --listen ADDR      listen address (default 127.0.0.1:7443; port 0 picks a free port)\n"
        "  --config FILE      production: module, token_label, pin_file, listen, tls_ca,\n"
        "                     tls_cert, tls_key, state_dir, bootstrap_operator, workers,\n"
        "                     unwrap_workers, sessions, lease_seconds, max_message, "
        "activation_cooldown,\n"
        "                     rollback_window, lock_after_key_change, unlock_after_lock,\n"
        "                     locked_environment_retention, import_key_validity,\n"
        "                     audit_checkpoint_every, audit_sync_ms\n"
        "                     (see docs/operations.md)\n"
        "  --workers N        worker threads (default 4)\n"
        "  --unwrap-workers N worker threads that serve only storage nodes' unwraps\n"
        "                     (default: as many as --workers)\n"
        "  --sessions N       token sessions in the pool (default: one per worker)\n"
        "  --lease-seconds N  how long storage nodes may use an unwrapped DEK before they\n"
        "                     renew it (default 60; 1 to 3600)\n"
        "  --smtp URL         deliver key-change notifications to this SMTP relay\n"
        "                     (smtp://host:port; --dev default: <state>/maildir)\n"
        "  --audit-checkpoint-every N  audit records between signed checkpoints (default 1000)\n"
        "  --audit-sync-ms N  result records reach the disk (fdatasync) within N ms; 0: before\n"
        "                     each reply (default 10; 0 to 1000; docs/audit.md)\n"
        "  --no-audit-log     --dev only, for benchmarks: run without the audit log\n"
        "  --verbose          debug logging\n"
        "  --help             this text\n"
        "\n"
        "Exit codes: 0 clean shutdown (SIGTERM/SIGINT), 1 start-up failure, 2 usage error.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dev", no_argument, NULL, 'd'},
        {"state-dir", required_argument, NULL, 's'},
        {"listen", required_argument, NULL, 'l'},
        {"config", required_argument, NULL, 'c'},
        {"workers", required_argument, NULL, 'w'},
        {"sessions", required_argument, NULL, 'S'},
        {"smtp", required_argument, NULL, 'm'},
        {"verbose", no_argument, NULL, 'v'},
        {"unwrap-workers", required_argument, NULL, 'u'},
        {"lease-seconds", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {"no-audit-log", no_argument, NULL, 'A'},
        {"audit-checkpoint-every", required_argument, NULL, 'C'},
        {"audit-sync-ms", required_argument, NULL, 'Y'},
        {NULL, 0, NULL, 0},
    };
    vaultd_config cfg;
    vaultd_config_defaults(&cfg);
    bool dev = false, no_audit = false;
    long checkpoint_every = 0, sync_ms = -1;
    char *end = NULL;
    const char *config_path = NULL, *listen = NULL, *state_dir = NULL, *smtp = NULL;
    long workers = 0, sessions = 0, unwrap_workers = 0, lease_seconds = 0;
    int ch;
    kv_log_set_ident("vaultd");
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            dev = true;
            break;
        case 's':
            state_dir = optarg;
            break;
        case 'l':
            listen = optarg;
            break;
        case 'c':
            config_path = optarg;
            break;
        case 'w':
            workers = strtol(optarg, NULL, 10);
            break;
        case 'S':
            sessions = strtol(optarg, NULL, 10);
            break;
        case 'u':
            unwrap_workers = strtol(optarg, NULL, 10);
            break;
        case 'm':
            smtp = optarg;
            break;
        case 'L':
            lease_seconds = strtol(optarg, NULL, 10);
            if (lease_seconds < 1 || lease_seconds > 3600) {
                fprintf(stderr, "vaultd: --lease-seconds must be from 1 to 3600\n");
                return 2;
            }
            break;
        case 'v':
            kv_log_set_level(KV_LOG_DEBUG);
            break;
        case 'A':
            no_audit = true;
            break;
        case 'C':
            checkpoint_every = strtol(optarg, NULL, 10);
            if (checkpoint_every < 1 || checkpoint_every > 1000000) {
                fprintf(stderr, "vaultd: --audit-checkpoint-every must be from 1 to 1000000\n");
                return 2;
            }
            break;
        case 'Y':
            sync_ms = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || sync_ms < 0 || sync_ms > 1000) {
                fprintf(stderr, "vaultd: --audit-sync-ms must be from 0 to 1000\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || dev == (config_path != NULL)) {
        fprintf(stderr, "vaultd: give exactly one of --dev or --config FILE (see --help)\n");
        return 2;
    }
    if (no_audit && !dev) {
        fprintf(stderr, "vaultd: --no-audit-log is for --dev benchmarks only\n");
        return 2;
    }
    if (workers < 0 || workers > 64 || sessions < 0 || sessions > 64 || unwrap_workers < 0 ||
        unwrap_workers > 64) {
        fprintf(stderr,
                "vaultd: --workers, --unwrap-workers and --sessions must be from 1 to 64\n");
        return 2;
    }
    /* Signals are taken by sigwait in this thread only: block them before
     * gRPC or any other thread starts. */
    rpc_signals_block();

    hsm *h = NULL;
    vault_store *store = NULL;
    rpc_server *server = NULL;
    vault v;
    bool vault_ready = false;
    int rc = 1;
    if (config_path != NULL && kv_failed(vaultd_config_load(config_path, &cfg))) goto fail;
    if (state_dir != NULL) snprintf(cfg.state_dir, sizeof(cfg.state_dir), "%s", state_dir);
    if (listen != NULL) snprintf(cfg.listen, sizeof(cfg.listen), "%s", listen);
    if (workers > 0) cfg.workers = (unsigned)workers;
    if (sessions > 0) cfg.sessions = (unsigned)sessions;
    if (unwrap_workers > 0) cfg.unwrap_workers = (unsigned)unwrap_workers;
    if (lease_seconds > 0) cfg.lease_seconds = (unsigned)lease_seconds;
    if (cfg.unwrap_workers == 0) cfg.unwrap_workers = cfg.workers;
    if (smtp != NULL) snprintf(cfg.notify_smtp_url, sizeof(cfg.notify_smtp_url), "%s", smtp);
    if (dev && kv_failed(vaultd_dev_prepare(&cfg))) goto fail;
    if (kv_failed(vaultd_config_check(&cfg))) goto fail;

    hsm_config hc = {.module_path = cfg.module,
                     .token_label = cfg.token_label,
                     .pin_file = cfg.pin_file,
                     .sessions = cfg.sessions ? cfg.sessions : cfg.workers};
    if (kv_failed(hsm_open(&hc, &h))) goto fail;
    char store_dir[PATH_MAX + 8];
    snprintf(store_dir, sizeof(store_dir), "%s/store", cfg.state_dir);
    if (kv_failed(store_open(store_dir, &store))) goto fail;
    if (kv_failed(vault_init(&v, h, store, cfg.lease_seconds))) goto fail;
    v.test_hooks = dev;
    v.activation_cooldown = cfg.activation_cooldown;
    v.rollback_window = cfg.rollback_window;
    v.lock_after_key_change = cfg.lock_after_key_change;
    v.unlock_after_lock = cfg.unlock_after_lock;
    v.locked_environment_retention = cfg.locked_environment_retention;
    v.import_key_validity = cfg.import_key_validity;
#ifdef KV_TEST_HOOKS
    if (dev && kv_failed(vaultd_dev_clock(&cfg, v.clock_file, sizeof(v.clock_file)))) goto fail;
#endif
    vault_ready = true;
    if (checkpoint_every > 0) cfg.audit_checkpoint_every = (unsigned)checkpoint_every;
    if (sync_ms >= 0) cfg.audit_sync_ms = (unsigned)sync_ms;
    char journal[PATH_MAX + 32];
    snprintf(journal, sizeof(journal), "%s/audit.journal", store_dir);
    vault_audit_config acfg = {.checkpoint_every = cfg.audit_checkpoint_every,
                               .sync_ms = cfg.audit_sync_ms,
                               .journal_path = journal};
#ifdef KV_TEST_HOOKS
    /* Test hook (--dev only): a small journal, reset every few hundred calls. */
    const char *jbytes = getenv("HSMVAULT_TEST_AUDIT_JOURNAL_BYTES");
    if (dev && jbytes != NULL) acfg.journal_bytes = (size_t)strtoul(jbytes, NULL, 10);
#endif
    /* The audit log first: every later change (start-up reconcile and sweep
     * included) is recorded. */
    if (no_audit)
        KV_LOG_WARN("the audit log is OFF (--no-audit-log): for benchmarks only");
    else if (kv_failed(vault_audit_open(&v, &acfg)))
        goto fail;
    vault_audit_task("startup");
    if (kv_failed(vault_reconcile(&v))) goto fail;
    if (kv_failed(vault_resume_activations(&v)))
        kv_log_error_record(KV_LOG_ERROR,
                            "an interrupted activation could not be finished; it is retried by "
                            "activating the same key again");
    if (kv_failed(vault_sweep(&v)))
        kv_log_error_record(KV_LOG_ERROR, "deleting expired locked environments");
    if (dev && cfg.notify_smtp_url[0] == '\0' && cfg.notify_maildir[0] == '\0' &&
        snprintf(cfg.notify_maildir, sizeof(cfg.notify_maildir), "%s/maildir", cfg.state_dir) >=
            (int)sizeof(cfg.notify_maildir)) {
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "state directory path too long");
        goto fail;
    }
    vault_notify_config nc = {
        .smtp_url = cfg.notify_smtp_url, .from = cfg.notify_from, .maildir = cfg.notify_maildir};
    if (kv_failed(vault_notifier_start(store, &nc, &v.notifier))) goto fail;
    if (cfg.bootstrap_operator[0] != '\0' &&
        kv_failed(vault_bind_role(&v, cfg.bootstrap_operator, HSMVAULT__V1__ROLE__ROLE_OPERATOR,
                                  NULL, NULL)))
        goto fail;
    if (dev && kv_failed(vault_bind_role(&v, VAULTD_DEV_URI_PREFIX "auditor",
                                         HSMVAULT__V1__ROLE__ROLE_AUDITOR, NULL, NULL)))
        goto fail;

    vault_audit_task(NULL);
    rpc_global_init();
    size_t n_methods;
    const rpc_method *methods = vault_methods(&n_methods);
    /* Storage nodes' unwraps get workers of their own: a slow admin call
     * (an activation re-wrapping 10,000 DEKs) never takes them away. */
    static const char *const hot_methods[] = {"/hsmvault.v1.KeyAccess/UnwrapDatabaseKey", NULL};
    rpc_server_config sc = {.listen_addr = cfg.listen,
                            .ca_file = cfg.tls_ca,
                            .cert_file = cfg.tls_cert,
                            .key_file = cfg.tls_key,
                            .workers = cfg.workers,
                            .dedicated = hot_methods,
                            .dedicated_workers = cfg.unwrap_workers,
                            .max_message = cfg.max_message,
                            .around = vault_audit_around};
    if (kv_failed(rpc_server_start(&sc, methods, n_methods, &v, &server))) goto fail_grpc;
    int port = rpc_server_port(server);
    if (dev && kv_failed(vaultd_dev_publish(&cfg, port))) goto fail_grpc;
    KV_LOG_INFO("listening on %s (port %d) with %u workers (and %u for unwraps), %u token "
                "sessions",
                cfg.listen, port, cfg.workers, cfg.unwrap_workers, hsm_session_count(h));
    if (dev) {
        printf("vaultd --dev is running: state in %s, listening on port %d\n"
               "Point vaultctl at it with a profile, e.g.:\n"
               "  export VAULTCTL_CONFIG=%s/clients/operator.conf\n"
               "  vaultctl whoami\n"
               "Profiles for tenant-admin, environment-admin, storage-node and auditor are beside "
               "it.\n",
               cfg.state_dir, port, cfg.state_dir);
        fflush(stdout);
    }
    vaultd_sweeper sweeper = {
        .v = &v, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    pthread_t sweeper_thread;
    bool sweeping = pthread_create(&sweeper_thread, NULL, vaultd_sweeper_main, &sweeper) == 0;
    int sig = rpc_wait_signal();
    if (sweeping) {
        pthread_mutex_lock(&sweeper.mu);
        sweeper.stop = true;
        pthread_cond_signal(&sweeper.cv);
        pthread_mutex_unlock(&sweeper.mu);
        pthread_join(sweeper_thread, NULL);
    }
    KV_LOG_INFO("signal %d: shutting down", sig);
    rpc_server_stop(server);
    server = NULL;
    rc = 0;
fail_grpc:
    if (server != NULL) rpc_server_stop(server);
    rpc_global_shutdown();
fail:
    if (rc != 0) kv_log_error_record(KV_LOG_ERROR, "vaultd cannot start");
    if (vault_ready) vault_notifier_stop(v.notifier);
    if (vault_ready) vault_audit_close(&v);
    if (vault_ready) vault_fini(&v);
    store_close(store);
    hsm_close(h);
    return rc;
}
