/*
 * node_config.c: tdenode's settings: a `key = value` config file
 * (docs/tdenode.md "Configuration"), or --dev, which takes everything from
 * a vaultd --dev state directory (its CA, the certificates vaultd --dev
 * issued for tdenode, the vault's address) and writes tdectl profiles.
 * Secrets never go in these files: they name key files.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_config.h"
#include "kv_file.h"
#include "node.h"

#define TDE_DEV_URI_PREFIX "spiffe://hsmvault.dev/"

void tde_config_defaults(tde_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:7444");
    c->workers = 4;
    c->max_lease_seconds = 60;
    c->checkpoint_pages = 1024;
    c->dek_write_limit = TDE_DEK_WRITE_LIMIT;
    c->max_message = 4u << 20;
    c->vault.timeout_ms = 5000;
    c->lock_memory = true;
    snprintf(c->dev_name, sizeof(c->dev_name), "tdenode");
}

kv_result tde_grant_parse(const char *value, tde_role role, tde_grant *out)
{
    memset(out, 0, sizeof(*out));
    out->role = role;
    const char *sp = strpbrk(value, " \t");
    size_t plen = sp != NULL ? (size_t)(sp - value) : strlen(value);
    KV_ENSURE(plen >= 1 && plen < sizeof(out->principal), KV_ERR_INVALID_ARGUMENT,
              "a grant is 'PRINCIPAL [ENVIRONMENT]' with a principal of 1 to %zu characters",
              sizeof(out->principal) - 1);
    memcpy(out->principal, value, plen);
    for (size_t i = 0; i < plen; i++)
        KV_ENSURE(value[i] > 0x20 && value[i] < 0x7f, KV_ERR_INVALID_ARGUMENT,
                  "a grant's principal must be printable ASCII");
    if (sp != NULL) {
        while (*sp == ' ' || *sp == '\t')
            sp++;
        if (*sp != '\0') {
            KV_GUARD(tde_check_id("a grant's environment", sp));
            snprintf(out->environment_id, sizeof(out->environment_id), "%s", sp);
        }
    }
    return KV_SUCCESS;
}

static kv_result tde_config_add_grant(tde_config *c, const char *value, tde_role role)
{
    KV_ENSURE(c->n_grants < TDE_GRANTS_MAX, KV_ERR_INVALID_ARGUMENT, "more than %d grants",
              TDE_GRANTS_MAX);
    KV_GUARD(tde_grant_parse(value, role, &c->grants[c->n_grants]));
    c->n_grants++;
    return KV_SUCCESS;
}

kv_result tde_config_set(const char *key, const char *value, void *arg)
{
    tde_config *c = arg;
    unsigned long n;
    int64_t d;
    static const struct {
        const char *key;
        size_t off, cap;
    } strs[] = {
#define S(k, field) {k, offsetof(tde_config, field), sizeof(((tde_config *)0)->field)}
        S("listen", listen),
        S("tls_ca", tls_ca),
        S("tls_cert", tls_cert),
        S("tls_key", tls_key),
        S("data_dir", data_dir),
        S("vault_target", vault.target),
        S("vault_server_name", vault.server_name),
        S("vault_ca", vault.ca),
        S("vault_cert", vault.cert),
        S("vault_key", vault.key),
#undef S
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(strs); i++)
        if (strcmp(key, strs[i].key) == 0)
            return kv_config_str(key, value, (char *)c + strs[i].off, strs[i].cap);
    if (strcmp(key, "engine") == 0) return tde_config_add_grant(c, value, TDE_ROLE_ENGINE);
    if (strcmp(key, "admin") == 0) return tde_config_add_grant(c, value, TDE_ROLE_ADMIN);
    if (strcmp(key, "workers") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1, 64, &n));
        c->workers = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "checkpoint_pages") == 0) {
        KV_GUARD(kv_config_uint(key, value, 64, 1u << 20, &n));
        c->checkpoint_pages = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "dek_write_limit") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1024, TDE_DEK_WRITE_LIMIT, &n));
        c->dek_write_limit = n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "max_message") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1u << 20, 64u << 20, &n));
        c->max_message = n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "max_lease") == 0) {
        KV_GUARD(kv_config_duration(key, value, 1, 3600, &d));
        c->max_lease_seconds = (unsigned)d;
        return KV_SUCCESS;
    }
    if (strcmp(key, "vault_timeout") == 0) {
        KV_GUARD(kv_config_duration(key, value, 1, 300, &d));
        c->vault.timeout_ms = d * 1000;
        return KV_SUCCESS;
    }
    if (strcmp(key, "lock_memory") == 0) {
        KV_ENSURE(strcmp(value, "yes") == 0 || strcmp(value, "no") == 0, KV_ERR_INVALID_ARGUMENT,
                  "lock_memory is yes or no");
        c->lock_memory = strcmp(value, "yes") == 0;
        return KV_SUCCESS;
    }
    KV_BAIL(KV_ERR_INVALID_ARGUMENT, "unknown setting '%s'", key);
}

kv_result tde_config_load(const char *path, tde_config *c)
{
    return kv_config_parse(path, tde_config_set, c);
}

kv_result tde_config_check(const tde_config *c)
{
    const struct {
        const char *name;
        const char *value;
    } required[] = {
        {"listen", c->listen},     {"tls_ca", c->tls_ca},         {"tls_cert", c->tls_cert},
        {"tls_key", c->tls_key},   {"data_dir", c->data_dir},     {"vault_target", c->vault.target},
        {"vault_ca", c->vault.ca}, {"vault_cert", c->vault.cert}, {"vault_key", c->vault.key},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(required); i++)
        KV_ENSURE(required[i].value[0] != '\0', KV_ERR_INVALID_ARGUMENT,
                  "the setting '%s' is required", required[i].name);
    KV_ENSURE(c->n_grants > 0, KV_ERR_INVALID_ARGUMENT,
              "no 'engine' or 'admin' grant: nobody could use this node");
    return KV_SUCCESS;
}

/* ---- --dev -------------------------------------------------------------------- */

static kv_result tde_dev_file(char *out, size_t cap, const char *state, const char *rel)
{
    KV_ENSURE(snprintf(out, cap, "%s/%s", state, rel) < (int)cap, KV_ERR_INVALID_ARGUMENT,
              "path too long under %s", state);
    struct stat st;
    KV_ENSURE(stat(out, &st) == 0, KV_ERR_FAILED_PRECONDITION,
              "%s is missing: start vaultd --dev (this version) on %s first; it issues tdenode's "
              "certificates",
              out, state);
    return KV_SUCCESS;
}

kv_result tde_config_dev(tde_config *c, const char *vault_state)
{
    char state[PATH_MAX];
    KV_ENSURE(realpath(vault_state, state) != NULL, KV_ERR_NOT_FOUND,
              "the vault state directory %s does not exist (start vaultd --dev --state-dir %s)",
              vault_state, vault_state);
    KV_GUARD(tde_dev_file(c->tls_ca, sizeof(c->tls_ca), state, "tls/ca.pem"));
    KV_GUARD(tde_dev_file(c->tls_cert, sizeof(c->tls_cert), state, "tls/tdenode.pem"));
    KV_GUARD(tde_dev_file(c->tls_key, sizeof(c->tls_key), state, "tls/tdenode.key"));
    KV_GUARD(tde_dev_file(c->vault.ca, sizeof(c->vault.ca), state, "tls/ca.pem"));
    KV_GUARD(tde_dev_file(c->vault.cert, sizeof(c->vault.cert), state, "tls/storage-node.pem"));
    KV_GUARD(tde_dev_file(c->vault.key, sizeof(c->vault.key), state, "tls/storage-node.key"));
    KV_GUARD(tde_dev_file(c->vault_addr_file, sizeof(c->vault_addr_file), state, "vaultd.addr"));
    uint8_t *addr = NULL;
    size_t len = 0;
    KV_GUARD(kv_file_read(c->vault_addr_file, 200, &addr, &len));
    snprintf(c->vault.target, sizeof(c->vault.target), "%.*s", (int)len, (const char *)addr);
    free(addr);
    c->vault.target[strcspn(c->vault.target, "\r\n")] = '\0';
    snprintf(c->vault.server_name, sizeof(c->vault.server_name), "localhost");
    if (c->data_dir[0] == '\0')
        KV_ENSURE(snprintf(c->data_dir, sizeof(c->data_dir), "%s/tdenode", state) <
                      (int)sizeof(c->data_dir),
                  KV_ERR_INVALID_ARGUMENT, "path too long under %s", state);
    KV_GUARD(tde_config_add_grant(c, TDE_DEV_URI_PREFIX "database-engine", TDE_ROLE_ENGINE));
    KV_GUARD(tde_config_add_grant(c, TDE_DEV_URI_PREFIX "tde-admin", TDE_ROLE_ADMIN));
    c->dev = true;
#ifdef KV_TEST_HOOKS
    c->test_hooks = true;
#endif
    return KV_SUCCESS;
}

kv_result tde_dev_publish(const tde_config *c, const char *vault_state, int port)
{
    char state[PATH_MAX], dir[PATH_MAX + 16];
    KV_ENSURE(realpath(vault_state, state) != NULL, KV_ERR_NOT_FOUND, "%s vanished", vault_state);
    snprintf(dir, sizeof(dir), "%s/clients", state);
    KV_GUARD(kv_file_mkdirs(dir, 0700));
    char host[128];
    snprintf(host, sizeof(host), "%s", c->listen);
    char *colon = strrchr(host, ':');
    if (colon != NULL) *colon = '\0';
    static const struct {
        const char *profile, *cert;
    } profiles[] = {{"engine", "database-engine"}, {"admin", "tde-admin"}};
    for (size_t i = 0; i < KV_ARRAY_LEN(profiles); i++) {
        char path[PATH_MAX + 160], text[4 * PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s-%s.conf", dir, c->dev_name, profiles[i].profile);
        int n = snprintf(text, sizeof(text),
                         "# tdectl profile: tdenode --dev as %s" TDE_DEV_URI_PREFIX "%s\n"
                         "target = %s:%d\nserver_name = localhost\nca = %s/tls/ca.pem\n"
                         "cert = %s/tls/%s.pem\nkey = %s/tls/%s.key\n",
                         "", profiles[i].cert, host, port, state, state, profiles[i].cert, state,
                         profiles[i].cert);
        KV_GUARD(kv_file_write_atomic(path, text, (size_t)n, 0600));
    }
    char path[PATH_MAX + 80], addr[160];
    snprintf(path, sizeof(path), "%s/%s.addr", state, c->dev_name);
    int n = snprintf(addr, sizeof(addr), "%s:%d\n", host, port);
    return kv_file_write_atomic(path, addr, (size_t)n, 0644);
}
