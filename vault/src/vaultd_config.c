/*
 * vaultd_config.c: vaultd's config file and defaults.
 */
#include "vaultd_config.h"

#include <stdio.h>
#include <string.h>

#include "kv_config.h"

#ifndef HSMVAULT_SOFTHSM_MODULE
#define HSMVAULT_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

void vaultd_config_defaults(vaultd_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->module, sizeof(c->module), "%s", HSMVAULT_SOFTHSM_MODULE);
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:7443");
    c->workers = 4;
    c->sessions = 0; /* = workers */
    c->lease_seconds = 60;
    c->max_message = 4u << 20;
    c->activation_cooldown = 24 * 3600;
    c->rollback_window = 72 * 3600;
    c->lock_after_key_change = 72 * 3600;
    c->unlock_after_lock = 3600;
    c->locked_environment_retention = 28 * 86400;
    c->import_key_validity = 7 * 86400;
    c->audit_checkpoint_every = 1000;
    c->audit_sync_ms = 10; /* VAULT_AUDIT_SYNC_MS */
}

static kv_result vaultd_config_set(const char *key, const char *value, void *arg)
{
    vaultd_config *c = arg;
    unsigned long n;
    if (strcmp(key, "module") == 0) return kv_config_str(key, value, c->module, sizeof(c->module));
    if (strcmp(key, "token_label") == 0)
        return kv_config_str(key, value, c->token_label, sizeof(c->token_label));
    if (strcmp(key, "pin_file") == 0)
        return kv_config_str(key, value, c->pin_file, sizeof(c->pin_file));
    if (strcmp(key, "listen") == 0) return kv_config_str(key, value, c->listen, sizeof(c->listen));
    if (strcmp(key, "tls_ca") == 0) return kv_config_str(key, value, c->tls_ca, sizeof(c->tls_ca));
    if (strcmp(key, "tls_cert") == 0)
        return kv_config_str(key, value, c->tls_cert, sizeof(c->tls_cert));
    if (strcmp(key, "tls_key") == 0)
        return kv_config_str(key, value, c->tls_key, sizeof(c->tls_key));
    if (strcmp(key, "state_dir") == 0)
        return kv_config_str(key, value, c->state_dir, sizeof(c->state_dir));
    if (strcmp(key, "bootstrap_operator") == 0)
        return kv_config_str(key, value, c->bootstrap_operator, sizeof(c->bootstrap_operator));
    if (strcmp(key, "workers") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1, 64, &n));
        c->workers = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "unwrap_workers") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1, 64, &n));
        c->unwrap_workers = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "sessions") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1, 256, &n));
        c->sessions = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "lease_seconds") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1, 3600, &n));
        c->lease_seconds = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "notify_smtp_url") == 0)
        return kv_config_str(key, value, c->notify_smtp_url, sizeof(c->notify_smtp_url));
    if (strcmp(key, "notify_from") == 0)
        return kv_config_str(key, value, c->notify_from, sizeof(c->notify_from));
    if (strcmp(key, "notify_maildir") == 0)
        return kv_config_str(key, value, c->notify_maildir, sizeof(c->notify_maildir));
    if (strcmp(key, "lock_after_key_change") == 0)
        return kv_config_duration(key, value, 0, 365LL * 86400, &c->lock_after_key_change);
    if (strcmp(key, "unlock_after_lock") == 0)
        return kv_config_duration(key, value, 0, 365LL * 86400, &c->unlock_after_lock);
    if (strcmp(key, "locked_environment_retention") == 0)
        return kv_config_duration(key, value, 3600, 10LL * 365 * 86400,
                                  &c->locked_environment_retention);
    if (strcmp(key, "rollback_window") == 0)
        return kv_config_duration(key, value, 0, 365LL * 86400, &c->rollback_window);
    if (strcmp(key, "activation_cooldown") == 0)
        return kv_config_duration(key, value, 0, 365LL * 86400, &c->activation_cooldown);
    if (strcmp(key, "import_key_validity") == 0)
        return kv_config_duration(key, value, 0, 365LL * 86400, &c->import_key_validity);
    if (strcmp(key, "audit_checkpoint_every") == 0) {
        KV_GUARD(kv_config_uint(key, value, 1, 1000000, &n));
        c->audit_checkpoint_every = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "audit_sync_ms") == 0) {
        KV_GUARD(kv_config_uint(key, value, 0, 1000, &n));
        c->audit_sync_ms = (unsigned)n;
        return KV_SUCCESS;
    }
    if (strcmp(key, "max_message") == 0) {
        KV_GUARD(kv_config_uint(key, value, 4096, 64ul << 20, &n));
        c->max_message = n;
        return KV_SUCCESS;
    }
    KV_BAIL(KV_ERR_INVALID_ARGUMENT, "unknown setting '%s'", key);
}

kv_result vaultd_config_load(const char *path, vaultd_config *c)
{
    return kv_config_parse(path, vaultd_config_set, c);
}

kv_result vaultd_config_check(const vaultd_config *c)
{
    const struct {
        const char *name;
        const char *value;
    } required[] = {
        {"module", c->module},   {"token_label", c->token_label}, {"pin_file", c->pin_file},
        {"listen", c->listen},   {"tls_ca", c->tls_ca},           {"tls_cert", c->tls_cert},
        {"tls_key", c->tls_key}, {"state_dir", c->state_dir},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(required); i++)
        KV_ENSURE(required[i].value[0] != '\0', KV_ERR_INVALID_ARGUMENT,
                  "the setting '%s' is required in the config file", required[i].name);
    return KV_SUCCESS;
}
