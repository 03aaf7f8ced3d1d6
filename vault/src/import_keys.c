/*
 * import_keys.c: BYOK import keys (key-exchange keys), one current version
 * per subscription, and their RPCs: TenantKeys/GetImportKey (tenant-admin:
 * download; the first version is made on first use), Tenants/RotateImportKey
 * (operator: a new version of 2048, 3072 or 4096 bits) and
 * Tenants/ListImportKeys.
 *
 * An import key's private half only unwraps (hsm_import_key_generate) and is
 * never extractable.  Token object before the commit that names it (a crash
 * in between leaves an orphan that start-up reconciliation removes); a
 * version past its validity is retired by a commit first, then destroyed.
 * Must never accept a kid of another subscription, nor a retired version.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

#define VAULT_KID_PREFIX VAULT_LABEL_PREFIX "subscriptions/"
#define VAULT_KID_MIDDLE "/import-keys/"
#define VAULT_IMPORT_KEY_BITS_DEFAULT 2048u

void vault_import_kid(const char *subscription_id, uint32_t version, char *out, size_t cap)
{
    snprintf(out, cap, VAULT_KID_PREFIX "%s" VAULT_KID_MIDDLE "%" PRIu32, subscription_id, version);
}

static void vault_import_store_key(const char *subscription_id, uint32_t version, char *out,
                                   size_t cap)
{
    snprintf(out, cap, "%s/%010" PRIu32, subscription_id, version);
}

/* Parses a kid of ours into its subscription (at most 64 characters) and
 * version; anything else is not an hsmvault import key id. */
static kv_result vault_kid_parse(const char *kid, char sub[65], uint32_t *version)
{
    size_t pn = strlen(VAULT_KID_PREFIX);
    const char *p = kid + pn, *mid = NULL;
    if (strncmp(kid, VAULT_KID_PREFIX, pn) == 0) mid = strstr(p, VAULT_KID_MIDDLE);
    size_t sn = mid != NULL ? (size_t)(mid - p) : 0;
    const char *v = mid != NULL ? mid + strlen(VAULT_KID_MIDDLE) : NULL;
    bool ok = mid != NULL && sn > 0 && sn <= 64 && v[0] >= '1' && v[0] <= '9' && strlen(v) <= 10;
    for (size_t i = 0; ok && i < sn; i++)
        ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
             (p[i] >= '0' && p[i] <= '9') || p[i] == '-';
    uint64_t n = 0;
    for (const char *d = v; ok && *d; d++) {
        ok = *d >= '0' && *d <= '9';
        n = n * 10 + (uint64_t)(*d - '0');
    }
    KV_ENSURE(ok && n <= UINT32_MAX, KV_ERR_INVALID_ARGUMENT,
              "header.kid is not an hsmvault import key id (" VAULT_KID_PREFIX
              "<subscription-id>" VAULT_KID_MIDDLE "<version>); download the import key with "
              "vaultctl key import-key and wrap the key for it");
    memcpy(sub, p, sn);
    sub[sn] = '\0';
    *version = (uint32_t)n;
    return KV_SUCCESS;
}

const char *vault_import_key_state(const vault *v, const ImportKeyRecord *k, int64_t now)
{
    if (k->superseded_at == 0) return "current";
    if (k->retired || now >= k->superseded_at + v->import_key_validity) return "retired";
    return "previous";
}

static int64_t vault_import_key_valid_until(const vault *v, const ImportKeyRecord *k)
{
    return k->superseded_at == 0 ? 0 : k->superseded_at + v->import_key_validity;
}

kv_result vault_import_keys_collect(store_txn *t, store_list *out)
{
    return store_collect(t, STORE_IMPORT_KEYS, "", &hsmvault__store__import_key_record__descriptor,
                         NULL, NULL, out);
}

const ImportKeyRecord *vault_import_key_by_hsm_id(const store_list *l, const uint8_t *id,
                                                  size_t id_len)
{
    for (size_t i = 0; i < l->n; i++) {
        const ImportKeyRecord *k = (const ImportKeyRecord *)l->items[i];
        if (k->hsm_id.len == id_len && memcmp(k->hsm_id.data, id, id_len) == 0) return k;
    }
    return NULL;
}

/* The newest version of a subscription's import key, or NULL (*out). */
static kv_result vault_import_key_latest(store_txn *t, const char *sub, ImportKeyRecord **out)
{
    char prefix[80];
    snprintf(prefix, sizeof(prefix), "%s/", sub);
    store_list l = {0};
    *out = NULL;
    KV_GUARD(store_collect(t, STORE_IMPORT_KEYS, prefix,
                           &hsmvault__store__import_key_record__descriptor, NULL, NULL, &l));
    if (l.n > 0) { /* keys sort by zero-padded version: the last is the newest */
        *out = (ImportKeyRecord *)l.items[l.n - 1];
        l.items[l.n - 1] = NULL;
        l.n--;
    }
    store_list_free(&l);
    return KV_SUCCESS;
}

kv_result vault_import_key_resolve(vault *v, const TenantRecord *tr, const char *kid,
                                   ImportKeyRecord **out)
{
    char sub[65], key[96];
    uint32_t version = 0;
    KV_GUARD(vault_kid_parse(kid, sub, &version));
    /* The binding: a blob made for another subscription is refused here,
     * before any token call (and its import key could not unwrap it). */
    KV_ENSURE(strcmp(sub, tr->subscription_id) == 0, KV_ERR_INVALID_ARGUMENT,
              "the .byok file was made for an import key of subscription %s, but tenant %s "
              "belongs to subscription %s: wrap the key for this tenant's import key "
              "(vaultctl key import-key --tenant %s)",
              sub, tr->id, tr->subscription_id, tr->id);
    vault_import_store_key(sub, version, key, sizeof(key));
    store_txn *t;
    ImportKeyRecord *k = NULL, *latest = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        store_get(t, STORE_IMPORT_KEYS, key, &hsmvault__store__import_key_record__descriptor,
                  (ProtobufCMessage **)&k);
    if (kv_failed(r) && kv_error_code() == KV_ERR_NOT_FOUND)
        r = kv_error_set(KV_ERR_NOT_FOUND, __FILE__, __LINE__,
                         "subscription %s has no import key version %" PRIu32
                         ": the .byok file names an import key this vault never issued",
                         sub, version);
    if (kv_ok(r) && strcmp(vault_import_key_state(v, k, kv_clock_now()), "retired") == 0) {
        char when[32];
        kv_clock_format(vault_import_key_valid_until(v, k), when, sizeof(when));
        kv_result lr = vault_import_key_latest(t, sub, &latest);
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "import key version %" PRIu32 " of subscription %s was replaced and is "
                         "no longer accepted (since %s): wrap the key again for the current "
                         "import key%s%" PRIu32 "%s (vaultctl key import-key)",
                         version, sub, when, kv_ok(lr) && latest ? " (version " : "",
                         kv_ok(lr) && latest ? latest->version : 0, kv_ok(lr) && latest ? ")" : "");
    }
    store_read_end(t);
    if (latest != NULL) kv_pb_free(&latest->base);
    if (kv_failed(r)) {
        if (k != NULL) kv_pb_free(&k->base);
        return r;
    }
    KV_ENSURE(k->hsm_id.len == HSM_KEY_ID_LEN, KV_ERR_DATA_LOSS,
              "import key record %s has no token id", key);
    *out = k;
    return KV_SUCCESS;
}

/* ---- creating a version ---- */

typedef struct {
    ImportKeyRecord *key;       /* the new version */
    uint32_t expected_previous; /* 0: none */
} vault_import_commit_ctx;

static kv_result vault_import_key_commit(store_txn *t, void *arg)
{
    vault_import_commit_ctx *c = arg;
    ImportKeyRecord *prev = NULL;
    KV_GUARD(vault_import_key_latest(t, c->key->subscription_id, &prev));
    kv_result r = KV_SUCCESS;
    uint32_t got = prev != NULL ? prev->version : 0;
    KV_ENSURE_GOTO(got == c->expected_previous, r, out, KV_ERR_ABORTED,
                   "the import key of subscription %s changed meanwhile; retry",
                   c->key->subscription_id);
    char key[96];
    if (prev != NULL && prev->superseded_at == 0) {
        prev->superseded_at = c->key->created_at;
        vault_import_store_key(prev->subscription_id, prev->version, key, sizeof(key));
        KV_GUARD_GOTO(store_put(t, STORE_IMPORT_KEYS, key, &prev->base), r, out);
    }
    vault_import_store_key(c->key->subscription_id, c->key->version, key, sizeof(key));
    r = store_put(t, STORE_IMPORT_KEYS, key, &c->key->base);
out:
    if (prev != NULL) kv_pb_free(&prev->base);
    return r;
}

/* Makes the next version for sub (bits; 0 keeps the current size).
 * Caller holds v->lifecycle.  *out is the committed record. */
static kv_result vault_import_key_create(vault *v, const char *sub, unsigned bits,
                                         const char *principal, ImportKeyRecord **out)
{
    store_txn *t;
    ImportKeyRecord *prev = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_import_key_latest(t, sub, &prev);
    store_read_end(t);
    KV_GUARD(r);
    uint32_t prev_version = prev != NULL ? prev->version : 0;
    if (bits == 0) bits = prev != NULL ? prev->bits : VAULT_IMPORT_KEY_BITS_DEFAULT;
    if (prev != NULL) kv_pb_free(&prev->base);
    KV_ENSURE(prev_version < UINT32_MAX, KV_ERR_RESOURCE_EXHAUSTED,
              "subscription %s has used every import key version", sub);
    char kid[KV_BYOK_KID_MAX + 1];
    vault_import_kid(sub, prev_version + 1, kid, sizeof(kid));
    hsm_key_id hid;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    KV_GUARD(hsm_import_key_generate(v->hsm, kid, bits, &hid, &spki, &spki_len));
    vault_test_crash_point(v, "import-key-create");
    ImportKeyRecord k = HSMVAULT__STORE__IMPORT_KEY_RECORD__INIT;
    k.subscription_id = (char *)(uintptr_t)sub;
    k.version = prev_version + 1;
    k.hsm_id = (ProtobufCBinaryData){HSM_KEY_ID_LEN, hid.bytes};
    k.spki_der = (ProtobufCBinaryData){spki_len, spki};
    k.bits = bits;
    k.created_at = kv_clock_now();
    k.created_by = (char *)(uintptr_t)principal;
    vault_import_commit_ctx c = {.key = &k, .expected_previous = prev_version};
    r = store_update(v->store, vault_import_key_commit, &c);
    if (kv_failed(r)) {
        kv_error_record saved;
        kv_error_save(&saved);
        if (kv_failed(hsm_key_destroy(v->hsm, &hid)))
            kv_log_error_record(KV_LOG_WARN, "removing the new import key");
        kv_error_restore(&saved);
        free(spki);
        return r;
    }
    KV_LOG_INFO("import key %s (RSA-%u) created by %s%s", kid, bits, principal,
                prev_version > 0 ? "; the previous version stays accepted for its validity" : "");
    free(spki);
    char key[96];
    vault_import_store_key(sub, k.version, key, sizeof(key));
    KV_GUARD(store_read_begin(v->store, &t));
    r = store_get(t, STORE_IMPORT_KEYS, key, &hsmvault__store__import_key_record__descriptor,
                  (ProtobufCMessage **)out);
    store_read_end(t);
    return r;
}

/* ---- retiring versions ---- */

typedef struct {
    const vault *v;
    int64_t now;
    hsm_key_id *destroy;
    size_t n, cap;
} vault_import_sweep_ctx;

static kv_result vault_import_sweep_commit(store_txn *t, void *arg)
{
    vault_import_sweep_ctx *c = arg;
    store_list l = {0};
    c->n = 0; /* the update may run again */
    KV_GUARD(vault_import_keys_collect(t, &l));
    kv_result r = KV_SUCCESS;
    for (size_t i = 0; i < l.n && kv_ok(r); i++) {
        ImportKeyRecord *k = (ImportKeyRecord *)l.items[i];
        if (k->retired || strcmp(vault_import_key_state(c->v, k, c->now), "retired") != 0) continue;
        k->retired = true;
        char key[96];
        vault_import_store_key(k->subscription_id, k->version, key, sizeof(key));
        r = store_put(t, STORE_IMPORT_KEYS, key, &k->base);
        if (kv_ok(r) && k->hsm_id.len == HSM_KEY_ID_LEN) {
            if (c->n == c->cap) {
                size_t cap = c->cap ? 2 * c->cap : 8;
                hsm_key_id *p = realloc(c->destroy, cap * sizeof(*p));
                if (p == NULL) {
                    r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__,
                                     "out of memory");
                    break;
                }
                c->destroy = p;
                c->cap = cap;
            }
            memcpy(c->destroy[c->n++].bytes, k->hsm_id.data, HSM_KEY_ID_LEN);
        }
    }
    store_list_free(&l);
    return r;
}

/* Whether some version is due to retire (a read, so the minute timer
 * writes nothing when there is nothing to do). */
static kv_result vault_import_keys_due(vault *v, int64_t now, bool *due)
{
    store_txn *t;
    store_list l = {0};
    *due = false;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_import_keys_collect(t, &l);
    store_read_end(t);
    for (size_t i = 0; kv_ok(r) && i < l.n && !*due; i++) {
        const ImportKeyRecord *k = (const ImportKeyRecord *)l.items[i];
        *due = !k->retired && strcmp(vault_import_key_state(v, k, now), "retired") == 0;
    }
    store_list_free(&l);
    return r;
}

kv_result vault_import_keys_sweep(vault *v)
{
    vault_import_sweep_ctx c = {.v = v, .now = kv_clock_now()};
    bool due = false;
    KV_GUARD(vault_import_keys_due(v, c.now, &due));
    if (!due) return KV_SUCCESS;
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = store_update(v->store, vault_import_sweep_commit, &c);
    /* committed: the objects are no longer named; a failed destroy is
     * finished by the next start-up's reconciliation */
    for (size_t i = 0; kv_ok(r) && i < c.n; i++) {
        char hex[2 * HSM_KEY_ID_LEN + 1];
        hsm_key_id_hex(&c.destroy[i], hex);
        if (kv_failed(hsm_key_destroy(v->hsm, &c.destroy[i])))
            kv_log_error_record(KV_LOG_ERROR, "retiring an import key");
        else
            KV_LOG_INFO("import key %s retired: past its validity, destroyed in the token", hex);
    }
    pthread_mutex_unlock(&v->lifecycle);
    free(c.destroy);
    return r;
}

/* ---- RPCs ---- */

/* Replies with one import key (PEM made from the stored SPKI). */
static kv_result vault_import_key_to_api(const vault *v, const ImportKeyRecord *k, int64_t now,
                                         Hsmvault__V1__ImportKey *api,
                                         char kid[KV_BYOK_KID_MAX + 1], char **pem)
{
    hsmvault__v1__import_key__init(api);
    KV_GUARD(spki_to_pem(k->spki_der.data, k->spki_der.len, pem));
    vault_import_kid(k->subscription_id, k->version, kid, KV_BYOK_KID_MAX + 1);
    api->kid = kid;
    api->subscription_id = k->subscription_id;
    api->public_key_pem = *pem;
    api->bits = k->bits;
    api->version = k->version;
    api->created_at = k->created_at;
    api->state = (char *)(uintptr_t)vault_import_key_state(v, k, now);
    api->valid_until = vault_import_key_valid_until(v, k);
    return KV_SUCCESS;
}

static kv_result vault_reply_import_key(vault *v, const ImportKeyRecord *k, rpc_reply *reply)
{
    Hsmvault__V1__ImportKey api;
    char kid[KV_BYOK_KID_MAX + 1];
    char *pem = NULL;
    kv_result r = vault_import_key_to_api(v, k, kv_clock_now(), &api, kid, &pem);
    if (kv_ok(r)) r = vault_reply(reply, &api.base, false);
    free(pem);
    return r;
}

VAULT_HANDLER(vault_rpc_get_import_key, Hsmvault__V1__GetImportKeyRequest,
              hsmvault__v1__get_import_key_request__descriptor)
static kv_result vault_rpc_get_import_key_impl(vault *v, const rpc_ctx *ctx,
                                               const Hsmvault__V1__GetImportKeyRequest *req,
                                               rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "download the import key", &tr));
    store_txn *t;
    ImportKeyRecord *k = NULL;
    kv_result r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        r = vault_import_key_latest(t, tr->subscription_id, &k);
        store_read_end(t);
    }
    if (kv_ok(r) && k == NULL) {
        /* The first download makes version 1 (2048 bits); an operator
         * rotates to another size with Tenants/RotateImportKey. */
        pthread_mutex_lock(&v->lifecycle);
        r = store_read_begin(v->store, &t);
        if (kv_ok(r)) {
            r = vault_import_key_latest(t, tr->subscription_id, &k);
            store_read_end(t);
        }
        if (kv_ok(r) && k == NULL)
            r = vault_import_key_create(v, tr->subscription_id, 0, ctx->principal, &k);
        pthread_mutex_unlock(&v->lifecycle);
    }
    if (kv_ok(r)) r = vault_reply_import_key(v, k, reply);
    if (k != NULL) kv_pb_free(&k->base);
    kv_pb_free(&tr->base);
    return r;
}

/* Operator (and for listing: auditor, the tenant's admins) on a tenant. */
static kv_result vault_import_key_tenant(vault *v, const rpc_ctx *ctx, const char *tenant_id,
                                         unsigned roles, const char *action, TenantRecord **tr)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, roles, NULL, NULL, action);
    if (kv_ok(r)) r = vault_check_id("tenant_id", tenant_id);
    if (kv_ok(r)) r = vault_get_tenant(t, tenant_id, tr);
    if (kv_ok(r)) r = vault_authorize(t, ctx->principal, roles, tenant_id, NULL, action);
    store_read_end(t);
    if (kv_failed(r) && *tr != NULL) {
        kv_pb_free(&(*tr)->base);
        *tr = NULL;
    }
    return r;
}

VAULT_HANDLER(vault_rpc_rotate_import_key, Hsmvault__V1__RotateImportKeyRequest,
              hsmvault__v1__rotate_import_key_request__descriptor)
static kv_result vault_rpc_rotate_import_key_impl(vault *v, const rpc_ctx *ctx,
                                                  const Hsmvault__V1__RotateImportKeyRequest *req,
                                                  rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_import_key_tenant(v, ctx, req->tenant_id, ROLE_BIT(ROLE_OPERATOR),
                                     "rotate import keys", &tr));
    kv_result r = KV_SUCCESS;
    if (req->bits != 0 && req->bits != 2048 && req->bits != 3072 && req->bits != 4096)
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "an import key is 2048, 3072 or 4096 bits, not %" PRIu32, req->bits);
    ImportKeyRecord *k = NULL;
    if (kv_ok(r)) {
        pthread_mutex_lock(&v->lifecycle);
        r = vault_import_key_create(v, tr->subscription_id, req->bits, ctx->principal, &k);
        pthread_mutex_unlock(&v->lifecycle);
    }
    if (kv_ok(r)) r = vault_reply_import_key(v, k, reply);
    if (k != NULL) kv_pb_free(&k->base);
    kv_pb_free(&tr->base);
    return r;
}

VAULT_HANDLER(vault_rpc_list_import_keys, Hsmvault__V1__ListImportKeysRequest,
              hsmvault__v1__list_import_keys_request__descriptor)
static kv_result vault_rpc_list_import_keys_impl(vault *v, const rpc_ctx *ctx,
                                                 const Hsmvault__V1__ListImportKeysRequest *req,
                                                 rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_import_key_tenant(v, ctx, req->tenant_id,
                                     ROLE_BIT(ROLE_OPERATOR) | ROLE_BIT(ROLE_AUDITOR) |
                                         ROLE_BIT(ROLE_TENANT_ADMIN),
                                     "list import keys", &tr));
    char prefix[80];
    snprintf(prefix, sizeof(prefix), "%s/", tr->subscription_id);
    store_txn *t;
    store_list l = {0};
    kv_result r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        r = store_collect(t, STORE_IMPORT_KEYS, prefix,
                          &hsmvault__store__import_key_record__descriptor, NULL, NULL, &l);
        store_read_end(t);
    }
    size_t n = l.n ? l.n : 1;
    Hsmvault__V1__ImportKey *apis = calloc(n, sizeof(*apis));
    Hsmvault__V1__ImportKey **ptrs = calloc(n, sizeof(*ptrs));
    char(*kids)[KV_BYOK_KID_MAX + 1] = calloc(n, sizeof(*kids));
    char **pems = calloc(n, sizeof(*pems));
    if (kv_ok(r) && (apis == NULL || ptrs == NULL || kids == NULL || pems == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    int64_t now = kv_clock_now();
    for (size_t i = 0; kv_ok(r) && i < l.n; i++) {
        r = vault_import_key_to_api(v, (const ImportKeyRecord *)l.items[i], now, &apis[i], kids[i],
                                    &pems[i]);
        ptrs[i] = &apis[i];
    }
    if (kv_ok(r)) {
        Hsmvault__V1__ListImportKeysResponse resp = HSMVAULT__V1__LIST_IMPORT_KEYS_RESPONSE__INIT;
        resp.n_import_keys = l.n;
        resp.import_keys = ptrs;
        r = vault_reply(reply, &resp.base, false);
    }
    for (size_t i = 0; pems != NULL && i < l.n; i++)
        free(pems[i]);
    free(pems);
    free(kids);
    free(ptrs);
    free(apis);
    store_list_free(&l);
    kv_pb_free(&tr->base);
    return r;
}
