/*
 * vaultd_config.h: vaultd's settings, from a config file or made by --dev.
 */
#ifndef VAULTD_CONFIG_H
#define VAULTD_CONFIG_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

typedef struct {
    char module[PATH_MAX]; /* PKCS#11 module path */
    char token_label[33];
    char pin_file[PATH_MAX];
    char listen[128];
    char tls_ca[PATH_MAX]; /* CA for client certificates */
    char tls_cert[PATH_MAX];
    char tls_key[PATH_MAX];
    char state_dir[PATH_MAX];     /* the LMDB store lives in <state_dir>/store */
    char bootstrap_operator[257]; /* principal given the operator role at start */
    unsigned workers;
    unsigned unwrap_workers; /* storage nodes' unwraps have their own; 0 = workers */
    unsigned sessions;
    unsigned lease_seconds;
    size_t max_message;
    int64_t activation_cooldown; /* seconds between two activations of a tenant's keys */
    char notify_smtp_url[512];   /* SMTP relay for notifications */
    char notify_from[256];
    char notify_maildir[PATH_MAX]; /* deliver into a maildir instead (--dev default) */
    int64_t lock_after_key_change;
    int64_t unlock_after_lock;
    int64_t locked_environment_retention;
    int64_t rollback_window; /* seconds after an activation during which another admin may roll it
                                back */
    int64_t import_key_validity;     /* BYOK: an older import key version is accepted this long */
    unsigned audit_checkpoint_every; /* audit records between signed checkpoints */
    unsigned audit_sync_ms; /* result records fdatasync'd within this; 0: before each reply */
} vaultd_config;

void vaultd_config_defaults(vaultd_config *c);
KV_RESULT vaultd_config_load(const char *path, vaultd_config *c);
/* Checks that every required setting is present. */
KV_RESULT vaultd_config_check(const vaultd_config *c);

/* --dev: creates (or reuses) everything under c->state_dir: a SoftHSM token,
 * a private CA with server and client certificates, vaultctl profiles. */
KV_RESULT vaultd_dev_prepare(vaultd_config *c);
/* Writes <state>/clients/<name>.conf for every dev principal and
 * <state>/vaultd.addr once the real port is known. */
KV_RESULT vaultd_dev_publish(const vaultd_config *c, int port);

/* --dev in test builds: restores the test clock's offset from
 * <state>/test-clock-offset (if any) and names that file in path. */
KV_RESULT vaultd_dev_clock(const vaultd_config *c, char *path, size_t cap);

/* The dev principals: name and SAN URI. */
#define VAULTD_DEV_URI_PREFIX "spiffe://hsmvault.dev/"
#define VAULTD_DEV_PRINCIPALS 6
extern const char *const vaultd_dev_principals[VAULTD_DEV_PRINCIPALS];

#endif
