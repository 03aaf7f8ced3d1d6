/*
 * vault.c: vaultd's core state, ids, input checks, record lookups and
 * record-to-API conversions shared by the handler files.
 * Must never put request secrets into an error message.
 */
#include "vault.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "kv_base64.h"
#include "kv_log.h"
#include "kv_pb.h"

kv_result vault_init(vault *v, hsm *h, vault_store *s, unsigned lease_seconds)
{
    memset(v, 0, sizeof(*v));
    v->hsm = h;
    v->store = s;
    v->lease_seconds = lease_seconds > 0 ? lease_seconds : 60;
    v->activation_cooldown = 24 * 3600;
    v->rollback_window = 72 * 3600;
    v->lock_after_key_change = 72 * 3600;
    v->unlock_after_lock = 3600;
    v->locked_environment_retention = 28 * 86400;
    v->import_key_validity = VAULT_IMPORT_KEY_VALIDITY_DEFAULT;
    /* Prefer the strongest OAEP the token unwraps; record it in every blob. */
    v->wrap_hash = hsm_supports_oaep(h, HSM_OAEP_SHA256) ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1;
    pthread_mutex_init(&v->lifecycle, NULL);
    KV_LOG_INFO("DEKs are wrapped with RSA-OAEP-%s",
                v->wrap_hash == HSM_OAEP_SHA256 ? "SHA256" : "SHA1");
    return KV_SUCCESS;
}

void vault_fini(vault *v)
{
    pthread_mutex_destroy(&v->lifecycle);
}

void vault_new_id(const char *prefix, char out[VAULT_ID_MAX])
{
    uint8_t rnd[8];
    /* Ids are names, not secrets: the kernel CSPRNG is plenty. */
    while (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
    }
    char hex[17];
    kv_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(out, VAULT_ID_MAX, "%s-%s", prefix, hex);
}

kv_result vault_check_id(const char *field, const char *value)
{
    KV_ENSURE(value != NULL && value[0] != '\0', KV_ERR_INVALID_ARGUMENT, "%s is required", field);
    size_t n = strlen(value);
    KV_ENSURE(n < VAULT_ID_MAX, KV_ERR_INVALID_ARGUMENT, "%s is %zu characters; ids are at most %d",
              field, n, VAULT_ID_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char c = value[i];
        KV_ENSURE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-',
                  KV_ERR_INVALID_ARGUMENT,
                  "%s has a character that is not allowed in an id (a-z, 0-9, '-') at position %zu",
                  field, i);
    }
    return KV_SUCCESS;
}

kv_result vault_check_text(const char *field, const char *value, size_t max)
{
    KV_ENSURE(value != NULL && value[0] != '\0', KV_ERR_INVALID_ARGUMENT, "%s is required", field);
    size_t n = strlen(value);
    KV_ENSURE(n <= max, KV_ERR_INVALID_ARGUMENT, "%s is %zu bytes; the limit is %zu", field, n,
              max);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        KV_ENSURE(c >= 0x20 && c != 0x7f, KV_ERR_INVALID_ARGUMENT,
                  "%s has a control character at position %zu", field, i);
    }
    return KV_SUCCESS;
}

void vault_key_store_key(const char *tenant_id, const char *key_id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", tenant_id, key_id);
}

void vault_db_store_key(const char *env_id, const char *db_id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", env_id, db_id);
}

kv_result vault_get_tenant(store_txn *t, const char *tenant_id, TenantRecord **out)
{
    KV_GUARD(vault_check_id("tenant_id", tenant_id));
    kv_result r = store_get(t, STORE_TENANTS, tenant_id,
                            &hsmvault__store__tenant_record__descriptor, (ProtobufCMessage **)out);
    if (kv_failed(r) && kv_error_code() == KV_ERR_NOT_FOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "tenant %s does not exist", tenant_id);
    return r;
}

kv_result vault_get_key(store_txn *t, const char *tenant_id, const char *key_id, KeyRecord **out)
{
    KV_GUARD(vault_check_id("key_id", key_id));
    char k[2 * VAULT_ID_MAX];
    vault_key_store_key(tenant_id, key_id, k, sizeof(k));
    kv_result r = store_get(t, STORE_KEYS, k, &hsmvault__store__key_record__descriptor,
                            (ProtobufCMessage **)out);
    if (kv_failed(r) && kv_error_code() == KV_ERR_NOT_FOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "key %s does not exist in tenant %s", key_id, tenant_id);
    return r;
}

kv_result vault_get_environment(store_txn *t, const char *env_id, EnvironmentRecord **out)
{
    KV_GUARD(vault_check_id("environment_id", env_id));
    kv_result r =
        store_get(t, STORE_ENVIRONMENTS, env_id, &hsmvault__store__environment_record__descriptor,
                  (ProtobufCMessage **)out);
    if (kv_failed(r) && kv_error_code() == KV_ERR_NOT_FOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "environment %s does not exist", env_id);
    return r;
}

kv_result vault_get_database(store_txn *t, const char *env_id, const char *db_id,
                             DatabaseRecord **out)
{
    KV_GUARD(vault_check_id("database_id", db_id));
    char k[2 * VAULT_ID_MAX];
    vault_db_store_key(env_id, db_id, k, sizeof(k));
    kv_result r = store_get(t, STORE_DATABASES, k, &hsmvault__store__database_record__descriptor,
                            (ProtobufCMessage **)out);
    if (kv_failed(r) && kv_error_code() == KV_ERR_NOT_FOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "database %s does not exist in environment %s", db_id, env_id);
    return r;
}

kv_result vault_reply(rpc_reply *reply, const ProtobufCMessage *msg, bool sensitive)
{
    KV_GUARD(kv_pb_pack(msg, &reply->data, &reply->len));
    reply->sensitive = sensitive;
    return KV_SUCCESS;
}

void vault_tenant_to_api(const TenantRecord *r, Hsmvault__V1__Tenant *out)
{
    hsmvault__v1__tenant__init(out);
    out->id = r->id;
    out->name = r->name;
    out->subscription_id = r->subscription_id;
    out->n_admin_contacts = r->n_admin_contacts;
    out->admin_contacts = r->admin_contacts;
    out->self_managed_keys = r->self_managed_keys;
    out->created_at = r->created_at;
    out->active_key_id = r->active_key_id;
    out->installing_key_id = r->installing_key_id;
    out->locked_key_id = r->locked_key_id;
    out->locked_at = r->locked_at;
}

void vault_key_to_api(const KeyRecord *r, Hsmvault__V1__TenantKey *out, char fp_hex[65])
{
    hsmvault__v1__tenant_key__init(out);
    fp_hex[0] = '\0';
    if (r->fingerprint.len == 32) kv_hex_encode(r->fingerprint.data, 32, fp_hex);
    out->id = r->id;
    out->tenant_id = r->tenant_id;
    out->name = r->name;
    out->state = r->state;
    out->source = r->source;
    out->fingerprint = fp_hex;
    out->created_at = r->created_at;
    out->activated_at = r->activated_at;
    out->created_by = r->created_by;
    out->bits = r->bits;
    out->import_kid = r->import_kid;
}

void vault_env_to_api(const EnvironmentRecord *r, Hsmvault__V1__Environment *out)
{
    hsmvault__v1__environment__init(out);
    out->id = r->id;
    out->tenant_id = r->tenant_id;
    out->name = r->name;
    out->type = r->type;
    out->encryption = r->encryption;
    out->state = r->state;
    out->key_id = r->kek_id;
    out->created_at = r->created_at;
    out->locked_at = r->locked_at;
}

void vault_db_to_api(const DatabaseRecord *r, Hsmvault__V1__Database *out)
{
    hsmvault__v1__database__init(out);
    out->id = r->id;
    out->environment_id = r->environment_id;
    out->name = r->name;
    out->dek_version = r->dek_version;
    out->created_at = r->created_at;
}

void vault_test_crash_point(const vault *v, const char *point)
{
#ifdef KV_TEST_HOOKS
    const char *want = getenv("HSMVAULT_TEST_CRASH_AT");
    if (v->test_hooks && want != NULL && strcmp(want, point) == 0) {
        KV_LOG_WARN("test hook: dying at %s", point);
        raise(SIGKILL);
    }
#else
    (void)v;
    (void)point;
#endif
}

kv_result vault_reply_key(vault *v, const char *tenant_id, const char *key_id, rpc_reply *reply)
{
    store_txn *t;
    KeyRecord *k = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_get_key(t, tenant_id, key_id, &k);
    store_read_end(t);
    KV_GUARD(r);
    char fp_hex[65];
    Hsmvault__V1__TenantKey api;
    vault_key_to_api(k, &api, fp_hex);
    r = vault_reply(reply, &api.base, false);
    kv_pb_free(&k->base);
    return r;
}
