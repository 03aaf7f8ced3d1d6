/*
 * vault.h: vaultd's core: the token, the store, policy and the RPC handlers.
 *
 * Ordering rule for every change that involves the token: token objects are
 * created before the store commit that names them (a crash leaves at most an
 * orphan object, removed by vault_reconcile at start-up), and destroyed only
 * after the commit that stops naming them.
 */
#ifndef VAULT_H
#define VAULT_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "hsm.h"
#include "kv_audit.h"
#include "kv_byok.h"
#include "kv_result.h"
#include "rpc_server.h"
#include "notify.h"
#include "store.h"

#include "hsmvault/store/records.pb-c.h"
#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "hsmvault/v1/types.pb-c.h"

typedef Hsmvault__Store__TenantRecord TenantRecord;
typedef Hsmvault__Store__KeyRecord KeyRecord;
typedef Hsmvault__Store__EnvironmentRecord EnvironmentRecord;
typedef Hsmvault__Store__DatabaseRecord DatabaseRecord;
typedef Hsmvault__Store__PrincipalRecord PrincipalRecord;
typedef Hsmvault__Store__ImportKeyRecord ImportKeyRecord;

#define VAULT_ID_MAX 32
#define VAULT_LABEL_PREFIX "hsmvault:"
#define VAULT_DEK_BYTES 32
#define VAULT_PASSWORD_MIN 8
#define VAULT_PASSWORD_MAX 1024

/* The audit log's token objects (audit.c creates them at first start): an
 * HMAC key for the records and an RSA key pair that signs checkpoints.  Their
 * CKA_IDs, as hex, are in the meta table under the VAULT_META_AUDIT_* keys;
 * reconcile and the token audit match objects by that id, never by label. */
#define VAULT_AUDIT_HMAC_LABEL "hsmvault:audit/hmac-key"
#define VAULT_AUDIT_SIGN_LABEL "hsmvault:audit/checkpoint-key"
/* The latest checkpoint's seq and head, a private data object (no CKA_ID). */
#define VAULT_AUDIT_ANCHOR_LABEL "hsmvault:audit/anchor"
#define VAULT_META_AUDIT_HMAC_ID "audit_hmac_key_id"
#define VAULT_META_AUDIT_SIGN_ID "audit_checkpoint_key_id"

struct vault_audit;

typedef struct {
    hsm *hsm;
    vault_store *store;
    struct vault_audit *audit; /* NULL: audit log off (vaultd --dev --no-audit-log, benches) */
    unsigned lease_seconds;
    int64_t activation_cooldown; /* seconds; no activation sooner after the last one */
    int64_t rollback_window; /* seconds after an activation during which it can be rolled back */
    int64_t lock_after_key_change;        /* no lock sooner than this after a key change */
    int64_t unlock_after_lock;            /* no unlock sooner than this after the lock */
    int64_t locked_environment_retention; /* a locked environment is deleted after this */
    struct vault_notifier *notifier;      /* delivers the outbox; may be NULL */
    bool test_hooks;         /* --dev only: Testing/AdvanceClock answers (non-release builds) */
    char clock_file[4096];   /* --dev: where the test clock offset persists across restarts */
    hsm_oaep_hash wrap_hash; /* strongest OAEP hash the token can unwrap */
    /* Serializes changes that create or destroy token objects or re-wrap
     * DEKs; unwraps and reads never take it. */
    pthread_mutex_t lifecycle;
    unsigned missing_keys;       /* found by the last reconcile */
    int64_t import_key_validity; /* an older import key version is accepted this long (seconds) */
} vault;

KV_RESULT vault_init(vault *v, hsm *h, vault_store *s, unsigned lease_seconds);
void vault_fini(vault *v);

/* Start-up reconciliation of token and store (reconcile.c, the same findings
 * as the read-only Audit/Reconcile): hsmvault:* objects no record wants
 * (orphans, objects of locked/deleted keys and retired import keys) are
 * destroyed; keys the store names but the token lacks are logged and counted;
 * other findings (foreign objects, policy violations) are logged. */
KV_RESULT vault_reconcile(vault *v);
/* Tenant-admin key management: role + scope check, self-managed keys on;
 * loads the tenant (free with kv_pb_free). */
KV_RESULT vault_key_admin_begin(vault *v, const rpc_ctx *ctx, const char *tenant_id,
                                const char *action, TenantRecord **tenant);
/* FAILED_PRECONDITION naming them if the tenant has locked environments. */
KV_RESULT vault_no_locked_environments(vault *v, const char *tenant_id, const char *action);
/* A presented key (KeyMaterial: a PFX with its password, or a .byok file),
 * the one path from material to a token key for upload, lock and unlock
 * (material.c).  Opening checks it and yields its public key and fingerprint;
 * importing makes it a token key.  A PFX key passes through this process as
 * PKCS#8 in a kv_secret (wiped); a .byok key exists only inside the token
 * (opening unwraps it into a session object to read its public key). */
typedef struct {
    Hsmvault__V1__KeySource source;
    uint8_t fingerprint[32];
    uint8_t *spki; /* DER SubjectPublicKeyInfo, malloc'd */
    size_t spki_len;
    kv_secret pkcs8; /* PFX or generated: the key, until imported */
    kv_byok byok;    /* BYOK: the parsed file */
    hsm_key_id import_hsm_id;
    hsm_oaep_hash import_hash;
    char import_kid[KV_BYOK_KID_MAX + 1];
    bool in_token; /* after vault_material_import: hsm_id names the token key */
    hsm_key_id hsm_id;
} vault_material;
/* Checks the material of tenant tr (a .byok file must name an import key of
 * tr's subscription: refused before any token call otherwise). */
KV_RESULT vault_material_open(vault *v, const TenantRecord *tr, const Hsmvault__V1__KeyMaterial *m,
                              vault_material *out);
/* Material from a key made here (generate): takes pkcs8 and spki. */
KV_RESULT vault_material_from_pkcs8(kv_secret *pkcs8, uint8_t *spki, size_t spki_len,
                                    Hsmvault__V1__KeySource source, vault_material *out);
/* Creates the token key (label) from opened material; the token's public key
 * must be the one opened.  Caller holds v->lifecycle. */
KV_RESULT vault_material_import(vault *v, vault_material *m, const char *label);
/* Destroys the token key of a failed change (keeps the error record). */
void vault_material_discard(vault *v, vault_material *m);
void vault_material_free(vault_material *m);

/* ---- BYOK import keys (import_keys.c) ---- */
#define VAULT_IMPORT_KEY_VALIDITY_DEFAULT (7 * 86400)
/* "hsmvault:subscriptions/<subscription-id>/import-keys/<version>" */
void vault_import_kid(const char *subscription_id, uint32_t version, char *out, size_t cap);
/* The import key a .byok kid names, for a blob uploaded to tenant tr: it must
 * name tr's subscription (INVALID_ARGUMENT otherwise), exist (NOT_FOUND) and
 * still be accepted (FAILED_PRECONDITION once retired).  Store only. */
KV_RESULT vault_import_key_resolve(vault *v, const TenantRecord *tr, const char *kid,
                                   ImportKeyRecord **out);
/* Every import key record, for reconcile and the token listing. */
KV_RESULT vault_import_keys_collect(store_txn *t, store_list *out);
/* The record in l whose token objects carry this CKA_ID, or NULL. */
const ImportKeyRecord *vault_import_key_by_hsm_id(const store_list *l, const uint8_t *id,
                                                  size_t id_len);
/* "current", "previous" (still accepted) or "retired". */
const char *vault_import_key_state(const vault *v, const ImportKeyRecord *k, int64_t now);
/* Retires versions past their validity (commit), then destroys their token
 * objects.  With vault_sweep. */
KV_RESULT vault_import_keys_sweep(vault *v);
KV_RESULT vault_put_key(store_txn *t, const KeyRecord *k);
const char *vault_key_state_name(Hsmvault__V1__KeyState s);
/* Deletes locked environments past their retention (their DEKs destroyed
 * for good).  Start-up, a background timer, and after the test clock moves. */
KV_RESULT vault_sweep(vault *v);

/* Test hook (vaultd --dev in non-release builds): dies like kill -9 when
 * $HSMVAULT_TEST_CRASH_AT names this point. */
void vault_test_crash_point(const vault *v, const char *point);

/* Finishes every activation a crash interrupted (tenants with an installing
 * key).  Start-up, after reconcile. */
KV_RESULT vault_resume_activations(vault *v);

/* Gives principal a role binding (idempotent); used to bootstrap operators. */
KV_RESULT vault_bind_role(vault *v, const char *principal, Hsmvault__V1__Role role,
                          const char *tenant_id, const char *environment_id);

/* ---- audit log (audit.c, audit_ops.c; docs/audit.md) ---- */
#define VAULT_AUDIT_CHECKPOINT_EVERY 1000 /* records between signed checkpoints */
#define VAULT_AUDIT_SYNC_MS 10 /* default longest wait before result records are fdatasync'd */
typedef struct {
    unsigned checkpoint_every; /* 0: VAULT_AUDIT_CHECKPOINT_EVERY */
    unsigned sync_ms;          /* 0: each call waits for the fdatasync of its result record */
    const char *journal_path;  /* <store>/audit.journal */
    size_t journal_bytes;      /* 0: the default (4 MiB); tests shrink it to force resets */
} vault_audit_config;
/* Creates the audit keys at first start (token objects, then the meta ids),
 * folds into the log what an unclean stop left in the journal, starts the
 * journal writer and hooks every store transaction. */
KV_RESULT vault_audit_open(vault *v, const vault_audit_config *cfg);
/* Every result record written so far, made durable and folded into the
 * log (readers call it first). */
KV_RESULT vault_audit_flush(vault *v);
/* Stops the writer and writes the shutdown checkpoint. */
void vault_audit_close(vault *v);
/* rpc_around_fn: records every call's result (fail closed). */
KV_RESULT vault_audit_around(void *app, rpc_handler_fn fn, const rpc_ctx *ctx, const uint8_t *req,
                             size_t req_len, rpc_reply *reply);
/* The role that granted the current call (vault_authorize). */
void vault_audit_note_role(unsigned role);
/* Names the internal work of this thread for records of changes outside an
 * RPC ("sweep", "startup"); NULL: "background". */
void vault_audit_task(const char *task);
/* Flushes, then writes a checkpoint over every record. */
KV_RESULT vault_audit_seal(vault *v);
/* The audit tables' key of seq (20 decimal digits). */
void vault_audit_seq_key(uint64_t seq, char out[24]);
/* The last record's seq and hash (0 and zeros for an empty log). */
KV_RESULT vault_audit_head(store_txn *t, uint64_t *seq, uint8_t hash[32]);
KV_RESULT vault_audit_public_key(vault *v, uint8_t **spki, size_t *spki_len);
KV_RESULT vault_audit_anchor(vault *v, uint64_t *seq, uint8_t head[32]);
/* kv_audit_hmac_check_fn over the token's audit key (arg: the vault). */
KV_RESULT vault_audit_hmac_check(void *arg, const kv_audit_record *r, bool *ok);
/* Seals, then verifies the whole stored log online (HMACs, signatures,
 * anchor); the anchor's checkpoint seq goes to *anchor. */
KV_RESULT vault_audit_verify_store(vault *v, kv_audit_report *rep, uint64_t *anchor);

/* The method table served by vaultd. */
const rpc_method *vault_methods(size_t *count);

/* ---- shared by the handler files ---- */

/* New random id "<prefix>-<16 hex>". */
void vault_new_id(const char *prefix, char out[VAULT_ID_MAX]);
KV_RESULT vault_check_id(const char *field, const char *value);
KV_RESULT vault_check_text(const char *field, const char *value, size_t max);

/* Role bitmask for authz. */
#define ROLE_BIT(r) (1u << (HSMVAULT__V1__ROLE__##r))
/* Allows the call if principal holds one of roles with a scope covering
 * tenant_id/environment_id (NULL: any scope, for role-only checks).
 * PERMISSION_DENIED names the principal, the action and the role needed. */
KV_RESULT vault_authorize(store_txn *t, const char *principal, unsigned roles,
                          const char *tenant_id, const char *environment_id, const char *action);

/* Store lookups (free with kv_pb_free). */
KV_RESULT vault_get_tenant(store_txn *t, const char *tenant_id, TenantRecord **out);
KV_RESULT vault_get_key(store_txn *t, const char *tenant_id, const char *key_id, KeyRecord **out);
KV_RESULT vault_get_environment(store_txn *t, const char *env_id, EnvironmentRecord **out);
KV_RESULT vault_get_database(store_txn *t, const char *env_id, const char *db_id,
                             DatabaseRecord **out);
void vault_key_store_key(const char *tenant_id, const char *key_id, char *out, size_t cap);
void vault_db_store_key(const char *env_id, const char *db_id, char *out, size_t cap);

/* DEK wrapping. */
KV_RESULT vault_wrap_dek(vault *v, const KeyRecord *kek, const uint8_t *dek, size_t dek_len,
                         DatabaseRecord *db);
KV_RESULT vault_unwrap_dek(vault *v, const KeyRecord *kek, const DatabaseRecord *db,
                           kv_secret *dek);
/* Re-wraps every DEK of an environment under new_kek (token decrypts outside
 * any transaction, then one commit that also sets the environment's kek_id and
 * encryption).  Caller holds v->lifecycle. */
KV_RESULT vault_rewrap_environment(vault *v, const char *env_id, const KeyRecord *new_kek,
                                   Hsmvault__V1__Encryption encryption, const char *changed_by);

/* Replies with a tenant key as stored now. */
KV_RESULT vault_reply_key(vault *v, const char *tenant_id, const char *key_id, rpc_reply *reply);
/* Packs msg into the reply. */
KV_RESULT vault_reply(rpc_reply *reply, const ProtobufCMessage *msg, bool sensitive);

/* Record -> API conversions; the API message borrows the record's strings. */
void vault_tenant_to_api(const TenantRecord *r, Hsmvault__V1__Tenant *out);
void vault_key_to_api(const KeyRecord *r, Hsmvault__V1__TenantKey *out, char fp_hex[65]);
void vault_env_to_api(const EnvironmentRecord *r, Hsmvault__V1__Environment *out);
void vault_db_to_api(const DatabaseRecord *r, Hsmvault__V1__Database *out);

/* Defines handler `name` that unpacks a request of type ReqType (protobuf-c
 * descriptor desc) through the wiping allocator and calls name##_impl. */
#define VAULT_HANDLER(name, ReqType, desc)                                                         \
    static kv_result name##_impl(vault *v, const rpc_ctx *ctx, const ReqType *req,                 \
                                 rpc_reply *reply);                                                \
    kv_result name(void *app, const rpc_ctx *ctx, const uint8_t *b, size_t n, rpc_reply *reply);   \
    kv_result name(void *app, const rpc_ctx *ctx, const uint8_t *b, size_t n, rpc_reply *reply)    \
    {                                                                                              \
        ProtobufCMessage *m = NULL;                                                                \
        KV_GUARD(kv_pb_unpack(&(desc), b, n, #name " request", &m));                               \
        kv_result r = name##_impl((vault *)app, ctx, (const ReqType *)m, reply);                   \
        kv_pb_free(m);                                                                             \
        return r;                                                                                  \
    }

#endif
