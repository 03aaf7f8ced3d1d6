/*
 * tdenode_main.c: the TDE storage node.  `tdenode --dev --vault-state DIR`
 * runs beside a vaultd --dev; `tdenode --config FILE` runs from a config
 * file.  Translates results into exit codes; never prints a key or a page.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "kv_log.h"
#include "node.h"
#include "rpc_server.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tdenode --dev --vault-state DIR [--data-dir DIR] [--listen ADDR]\n"
            "       tdenode --config FILE\n"
            "\n"
            "Serves database engines 8 KiB pages sealed with AES-256-GCM under per-database\n"
            "keys leased from vaultd, over gRPC with mTLS (service hsmvault.v1.Pages).\n"
            "\n"
            "  --dev                beside a vaultd --dev: its CA, the certificates it issued for\n"
            "                       tdenode, its address; grants database-engine (engine) and\n"
            "                       tde-admin (admin); writes tdectl profiles to DIR/clients/\n"
            "  --vault-state DIR    the vaultd --dev state directory\n"
            "  --data-dir DIR       where pages live (--dev default: DIR/tdenode)\n"
            "  --listen ADDR        listen address (default 127.0.0.1:7444; port 0 picks one)\n"
            "  --config FILE        production settings (docs/tdenode.md \"Configuration\")\n"
            "  --workers N          RPC worker threads (default 4)\n"
            "  --checkpoint-pages N checkpoint the journal after a flush once it holds N pages\n"
            "  --dek-write-limit N  refuse writes once a DEK sealed N pages (default 2^32)\n"
            "  --max-lease SECONDS  never hold a DEK longer without renewal (default 60)\n"
            "  --dev-name NAME      --dev: publish NAME.addr and clients/NAME-{engine,admin}.conf\n"
            "                       (default tdenode; for several nodes on one vault)\n"
            "  --verbose            debug logging\n"
            "  --help               this text\n"
            "\n"
            "Exit codes: 0 clean shutdown (SIGTERM/SIGINT), 1 start-up failure, 2 usage error.\n");
}

/* Keeps OpenSSL's AES key schedules (derived from leased DEKs) out of swap
 * and every secret out of core dumps. */
static void tdenode_harden(const tde_config *c)
{
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; /* three files per open database */
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!c->lock_memory) return;
#if defined(__SANITIZE_ADDRESS__)
    KV_LOG_WARN("memory not locked: a sanitizer build maps terabytes of shadow memory");
#else
    bool may =
        geteuid() == 0 || (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur == RLIM_INFINITY);
    if (may && mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0) return;
    KV_LOG_WARN("memory not locked (mlockall needs CAP_IPC_LOCK or LimitMEMLOCK=infinity): DEKs "
                "stay in locked memory, but OpenSSL's key schedules could reach swap; disable "
                "swap or raise the limit (lock_memory = no silences this)");
#endif
}

/* Options that are config settings: applied after the config file, checked
 * by the same code (docs/tdenode.md "Configuration"). */
static const struct {
    const char *option, *setting;
} tdenode_setting_opts[] = {
    {"data-dir", "data_dir"},
    {"listen", "listen"},
    {"workers", "workers"},
    {"checkpoint-pages", "checkpoint_pages"},
    {"dek-write-limit", "dek_write_limit"},
    {"max-lease", "max_lease"},
};
#define TDENODE_OPTS KV_ARRAY_LEN(tdenode_setting_opts)

int main(int argc, char **argv)
{
    enum { O_DEV = 256, O_STATE, O_CONFIG, O_NAME, O_VERBOSE, O_HELP, O_SETTING = 512 };
    struct option opts[TDENODE_OPTS + 7];
    size_t k = 0;
    for (; k < TDENODE_OPTS; k++)
        opts[k] = (struct option){tdenode_setting_opts[k].option, required_argument, NULL,
                                  O_SETTING + (int)k};
    opts[k++] = (struct option){"dev", no_argument, NULL, O_DEV};
    opts[k++] = (struct option){"vault-state", required_argument, NULL, O_STATE};
    opts[k++] = (struct option){"config", required_argument, NULL, O_CONFIG};
    opts[k++] = (struct option){"dev-name", required_argument, NULL, O_NAME};
    opts[k++] = (struct option){"verbose", no_argument, NULL, O_VERBOSE};
    opts[k++] = (struct option){"help", no_argument, NULL, O_HELP};
    opts[k] = (struct option){NULL, 0, NULL, 0};
    tde_config cfg;
    tde_config_defaults(&cfg);
    bool dev = false;
    const char *config_path = NULL, *vault_state = NULL, *dev_name = NULL;
    const char *settings[TDENODE_OPTS] = {NULL};
    int ch;
    kv_log_set_ident("tdenode");
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch >= O_SETTING && ch < O_SETTING + (int)TDENODE_OPTS)
            settings[ch - O_SETTING] = optarg;
        else if (ch == O_DEV)
            dev = true;
        else if (ch == O_STATE)
            vault_state = optarg;
        else if (ch == O_CONFIG)
            config_path = optarg;
        else if (ch == O_NAME)
            dev_name = optarg;
        else if (ch == O_VERBOSE)
            kv_log_set_level(KV_LOG_DEBUG);
        else {
            usage(ch == O_HELP ? stdout : stderr);
            return ch == O_HELP ? 0 : 2;
        }
    }
    if (optind != argc || dev == (config_path != NULL) || (dev && vault_state == NULL)) {
        fprintf(stderr, "tdenode: give --dev --vault-state DIR or --config FILE (see --help)\n");
        return 2;
    }
    if (dev_name != NULL) {
        if (kv_failed(tde_check_id("--dev-name", dev_name))) {
            fprintf(stderr, "tdenode: %s\n", kv_error_msg());
            return 2;
        }
        snprintf(cfg.dev_name, sizeof(cfg.dev_name), "%s", dev_name);
    }
    rpc_signals_block();

    tde_node *node = NULL;
    rpc_server *server = NULL;
    int rc = 1;
    if (config_path != NULL && kv_failed(tde_config_load(config_path, &cfg))) goto fail;
    for (size_t i = 0; i < TDENODE_OPTS; i++)
        if (settings[i] != NULL &&
            kv_failed(tde_config_set(tdenode_setting_opts[i].setting, settings[i], &cfg))) {
            kv_error_context("--%s", tdenode_setting_opts[i].option);
            goto fail;
        }
    if (dev && kv_failed(tde_config_dev(&cfg, vault_state))) goto fail;
    if (kv_failed(tde_config_check(&cfg))) goto fail;
    tdenode_harden(&cfg);
    if (kv_failed(tde_node_open(&cfg, &node))) goto fail;

    rpc_global_init();
    size_t n_methods;
    const rpc_method *methods = tde_methods(&n_methods);
    rpc_server_config sc = {.listen_addr = cfg.listen,
                            .ca_file = cfg.tls_ca,
                            .cert_file = cfg.tls_cert,
                            .key_file = cfg.tls_key,
                            .workers = cfg.workers,
                            .max_message = cfg.max_message};
    if (kv_failed(rpc_server_start(&sc, methods, n_methods, node, &server))) goto fail_grpc;
    int port = rpc_server_port(server);
    if (dev && kv_failed(tde_dev_publish(&cfg, vault_state, port))) goto fail_grpc;
    if (kv_failed(tde_node_start(node))) goto fail_grpc;
    KV_LOG_INFO("listening on %s (port %d), %u workers, data in %s, vault at %s", cfg.listen, port,
                cfg.workers, cfg.data_dir, cfg.vault.target);
    if (dev) {
        printf("tdenode --dev is running: data in %s, listening on port %d\n"
               "Point tdectl at it with a profile, e.g.:\n"
               "  export TDECTL_CONFIG=%s/clients/%s-engine.conf\n"
               "  tdectl db list\n",
               cfg.data_dir, port, vault_state, cfg.dev_name);
        fflush(stdout);
    }
    int sig = rpc_wait_signal();
    KV_LOG_INFO("signal %d: shutting down", sig);
    rpc_server_stop(server);
    server = NULL;
    rc = 0;
fail_grpc:
    if (server != NULL) rpc_server_stop(server);
    rpc_global_shutdown();
fail:
    if (rc != 0) kv_log_error_record(KV_LOG_ERROR, "tdenode cannot start");
    tde_node_close(node);
    return rc;
}
