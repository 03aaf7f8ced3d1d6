/*
 * ops_keys.c: the TenantKeys service (tenant-admin): generate a key (returned
 * as a password-protected PFX), upload a PFX or a .byok file, list and
 * activate keys.  Presented keys reach the token through vault_material
 * (material.c); the token copy is sensitive and never extractable.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

static bool vault_key_is_live(const KeyRecord *k)
{
    return k->source != HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE &&
           k->state != HSMVAULT__V1__KEY_STATE__KEY_STATE_DELETED;
}

typedef struct {
    const uint8_t *fingerprint;
    const char *dup_id; /* set when the fingerprint is already a live key */
    char dup_buf[VAULT_ID_MAX];
    size_t live; /* live tenant keys */
} vault_key_scan;

static kv_result vault_scan_keys(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    vault_key_scan *s = arg;
    const KeyRecord *k = (const KeyRecord *)*msg;
    if (!vault_key_is_live(k)) return KV_SUCCESS;
    s->live++;
    if (s->fingerprint != NULL && k->fingerprint.len == KEY_FINGERPRINT_LEN &&
        memcmp(k->fingerprint.data, s->fingerprint, KEY_FINGERPRINT_LEN) == 0) {
        snprintf(s->dup_buf, sizeof(s->dup_buf), "%s", k->id);
        s->dup_id = s->dup_buf;
    }
    return KV_SUCCESS;
}

/* Checks that the caller may manage keys of the tenant and that the tenant
 * has self-managed keys; loads the tenant. */
kv_result vault_key_admin_begin(vault *v, const rpc_ctx *ctx, const char *tenant_id,
                                const char *action, TenantRecord **tenant)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    /* role first, so a caller without it learns nothing about tenants */
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_TENANT_ADMIN), NULL, NULL, action);
    if (kv_ok(r)) r = vault_get_tenant(t, tenant_id, tenant);
    if (kv_ok(r))
        r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_TENANT_ADMIN), tenant_id, NULL,
                            action);
    store_read_end(t);
    if (kv_failed(r) && *tenant == NULL) return r;
    if (kv_ok(r) && !(*tenant)->self_managed_keys) {
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "self-managed keys are not enabled for tenant %s; an operator must enable "
                         "them first (vaultctl tenant enable-self-managed)",
                         tenant_id);
    }
    if (kv_failed(r)) {
        kv_pb_free(&(*tenant)->base);
        *tenant = NULL;
    }
    return r;
}

typedef struct {
    KeyRecord *key;
    const char *tenant_id;
    bool activated; /* out: first key, activated by itself */
} vault_add_key_ctx;

static kv_result vault_add_key_commit(store_txn *t, void *arg)
{
    vault_add_key_ctx *c = arg;
    TenantRecord *tr = NULL;
    KV_GUARD(vault_get_tenant(t, c->tenant_id, &tr));
    char prefix[VAULT_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s/", c->tenant_id);
    vault_key_scan s = {.fingerprint = c->key->fingerprint.data};
    kv_result r = store_scan(t, STORE_KEYS, prefix, &hsmvault__store__key_record__descriptor,
                             vault_scan_keys, &s);
    if (kv_ok(r) && s.dup_id != NULL)
        r = kv_error_set(KV_ERR_ALREADY_EXISTS, __FILE__, __LINE__,
                         "this key is already key %s of tenant %s", s.dup_id, c->tenant_id);
    /* seed 001: the first key uploaded or generated is activated by itself */
    c->activated = s.live == 0;
    c->key->state = c->activated ? HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE
                                 : HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE;
    c->key->activated_at = c->activated ? c->key->created_at : 0;
    char k[2 * VAULT_ID_MAX];
    vault_key_store_key(c->tenant_id, c->key->id, k, sizeof(k));
    if (kv_ok(r)) r = store_put(t, STORE_KEYS, k, &c->key->base);
    if (kv_ok(r) && c->activated) {
        char *own = tr->active_key_id;
        tr->active_key_id = c->key->id;
        tr->last_activation_at = c->key->created_at;
        tr->last_key_change_at = c->key->created_at;
        r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
        tr->active_key_id = own;
    } else if (kv_ok(r)) {
        tr->last_key_change_at = c->key->created_at;
        r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
    }
    if (kv_ok(r)) {
        char change[512], fp[17] = "";
        for (size_t i = 0; i < 8 && i < c->key->fingerprint.len; i++)
            snprintf(fp + 2 * i, 3, "%02x", c->key->fingerprint.data[i]);
        snprintf(change, sizeof(change), "key %s (%s, fingerprint %s...) was %s%s", c->key->name,
                 c->key->id, fp,
                 c->key->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_GENERATED ? "generated"
                                                                                  : "uploaded",
                 c->activated ? " and is active as the tenant's first key"
                              : "; it is available, not active");
        r = vault_notify(t, tr, change, c->key->created_by, c->key->created_at);
    }
    kv_pb_free(&tr->base);
    return r;
}

/* Commits the key record of a key now in the token (m), named key_id; on
 * any failure the token key is destroyed again.  Caller holds v->lifecycle. */
static kv_result vault_add_tenant_key(vault *v, const rpc_ctx *ctx, const char *tenant_id,
                                      const char *key_id, const char *name, vault_material *m,
                                      rpc_reply *reply, const uint8_t *pfx, size_t pfx_len)
{
    KeyRecord key = HSMVAULT__STORE__KEY_RECORD__INIT;
    key.id = (char *)(uintptr_t)key_id;
    key.tenant_id = (char *)(uintptr_t)tenant_id;
    key.name = (char *)(uintptr_t)name;
    key.source = m->source;
    key.hsm_id = (ProtobufCBinaryData){HSM_KEY_ID_LEN, m->hsm_id.bytes};
    key.spki_der = (ProtobufCBinaryData){m->spki_len, m->spki};
    key.fingerprint = (ProtobufCBinaryData){sizeof(m->fingerprint), m->fingerprint};
    key.created_at = kv_clock_now();
    key.created_by = (char *)(uintptr_t)ctx->principal;
    key.bits = 2048;
    key.import_kid = m->import_kid;
    vault_add_key_ctx c = {.key = &key, .tenant_id = tenant_id};
    kv_result r = store_update(v->store, vault_add_key_commit, &c);
    if (kv_failed(r)) {
        vault_material_discard(v, m);
        return r;
    }
    char fp_hex[65];
    Hsmvault__V1__TenantKey api;
    vault_key_to_api(&key, &api, fp_hex);
    KV_LOG_INFO("tenant %s: key %s (%s, fingerprint %s) added by %s%s", tenant_id, key_id,
                m->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_GENERATED ? "generated"
                : m->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_BYOK    ? "uploaded .byok"
                                                                            : "uploaded PFX",
                fp_hex, ctx->principal, c.activated ? "; activated as the tenant's first key" : "");
    if (pfx != NULL) {
        Hsmvault__V1__GenerateKeyResponse resp = HSMVAULT__V1__GENERATE_KEY_RESPONSE__INIT;
        resp.key = &api;
        resp.pfx = (ProtobufCBinaryData){pfx_len, (uint8_t *)(uintptr_t)pfx};
        return vault_reply(reply, &resp.base, true);
    }
    return vault_reply(reply, &api.base, false);
}

/* Imports opened material as a new key of the tenant and commits it. */
static kv_result vault_add_material(vault *v, const rpc_ctx *ctx, const char *tenant_id,
                                    const char *name, vault_material *m, rpc_reply *reply,
                                    const uint8_t *pfx, size_t pfx_len)
{
    char key_id[VAULT_ID_MAX], label[128];
    vault_new_id("key", key_id);
    snprintf(label, sizeof(label), VAULT_LABEL_PREFIX "%s/%s", tenant_id, key_id);
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = vault_material_import(v, m, label);
    if (kv_ok(r)) r = vault_add_tenant_key(v, ctx, tenant_id, key_id, name, m, reply, pfx, pfx_len);
    pthread_mutex_unlock(&v->lifecycle);
    return r;
}

static kv_result vault_password(const ProtobufCBinaryData *pw, kv_secret *out)
{
    KV_ENSURE(pw->len >= VAULT_PASSWORD_MIN && pw->len <= VAULT_PASSWORD_MAX,
              KV_ERR_INVALID_ARGUMENT, "the password must be %d to %d bytes long",
              VAULT_PASSWORD_MIN, VAULT_PASSWORD_MAX);
    return kv_secret_from(out, pw->data, pw->len);
}

VAULT_HANDLER(vault_rpc_generate_key, Hsmvault__V1__GenerateKeyRequest,
              hsmvault__v1__generate_key_request__descriptor)
static kv_result vault_rpc_generate_key_impl(vault *v, const rpc_ctx *ctx,
                                             const Hsmvault__V1__GenerateKeyRequest *req,
                                             rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "generate keys", &tr));
    kv_secret pw = KV_SECRET_INIT, pkcs8 = KV_SECRET_INIT;
    uint8_t *pfx = NULL, *spki = NULL;
    size_t pfx_len = 0, spki_len = 0;
    vault_material m = {0};
    kv_result r = vault_check_text("name", req->name, 128);
    if (kv_ok(r)) r = vault_no_locked_environments(v, req->tenant_id, "generate keys");
    if (kv_ok(r)) r = vault_password(&req->password, &pw);
    if (kv_ok(r)) {
        char cn[160];
        snprintf(cn, sizeof(cn), "hsmvault tenant key %s", req->name);
        r = pfx_generate(cn, &pw, &pfx, &pfx_len, &pkcs8, &spki, &spki_len);
    }
    if (kv_ok(r)) {
        r = vault_material_from_pkcs8(&pkcs8, spki, spki_len,
                                      HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_GENERATED, &m);
        spki = NULL; /* m owns it now, also on failure */
    }
    if (kv_ok(r))
        r = vault_add_material(v, ctx, req->tenant_id, req->name, &m, reply, pfx, pfx_len);
    vault_material_free(&m);
    kv_secret_free(&pw);
    kv_secret_free(&pkcs8);
    kv_pb_buf_free(pfx, pfx_len);
    free(spki);
    kv_pb_free(&tr->base);
    return r;
}

VAULT_HANDLER(vault_rpc_upload_key, Hsmvault__V1__UploadKeyRequest,
              hsmvault__v1__upload_key_request__descriptor)
static kv_result vault_rpc_upload_key_impl(vault *v, const rpc_ctx *ctx,
                                           const Hsmvault__V1__UploadKeyRequest *req,
                                           rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "upload keys", &tr));
    vault_material m = {0};
    kv_result r = vault_check_text("name", req->name, 128);
    if (kv_ok(r)) r = vault_no_locked_environments(v, req->tenant_id, "upload keys");
    if (kv_ok(r)) r = vault_material_open(v, tr, req->material, &m);
    if (kv_ok(r)) r = vault_add_material(v, ctx, req->tenant_id, req->name, &m, reply, NULL, 0);
    vault_material_free(&m);
    kv_pb_free(&tr->base);
    return r;
}

static bool vault_is_tenant_key(const ProtobufCMessage *msg, const void *arg)
{
    (void)arg;
    return ((const KeyRecord *)msg)->source != HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE;
}

VAULT_HANDLER(vault_rpc_list_keys, Hsmvault__V1__ListKeysRequest,
              hsmvault__v1__list_keys_request__descriptor)
static kv_result vault_rpc_list_keys_impl(vault *v, const rpc_ctx *ctx,
                                          const Hsmvault__V1__ListKeysRequest *req,
                                          rpc_reply *reply)
{
    store_txn *t;
    store_list l = {0};
    TenantRecord *tr = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_TENANT_ADMIN) | ROLE_BIT(ROLE_AUDITOR),
                        NULL, NULL, "list keys");
    if (kv_ok(r)) r = vault_get_tenant(t, req->tenant_id, &tr);
    if (kv_ok(r))
        r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_TENANT_ADMIN) | ROLE_BIT(ROLE_AUDITOR),
                            req->tenant_id, NULL, "list keys");
    char prefix[VAULT_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s/", req->tenant_id);
    if (kv_ok(r))
        r = store_collect(t, STORE_KEYS, prefix, &hsmvault__store__key_record__descriptor,
                          vault_is_tenant_key, NULL, &l);
    store_read_end(t);
    Hsmvault__V1__TenantKey *apis = calloc(l.n ? l.n : 1, sizeof(*apis));
    Hsmvault__V1__TenantKey **ptrs = calloc(l.n ? l.n : 1, sizeof(*ptrs));
    char(*fps)[65] = calloc(l.n ? l.n : 1, sizeof(*fps));
    if (kv_ok(r) && (apis == NULL || ptrs == NULL || fps == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    if (kv_ok(r)) {
        for (size_t i = 0; i < l.n; i++) {
            vault_key_to_api((const KeyRecord *)l.items[i], &apis[i], fps[i]);
            ptrs[i] = &apis[i];
        }
        Hsmvault__V1__ListKeysResponse resp = HSMVAULT__V1__LIST_KEYS_RESPONSE__INIT;
        resp.n_keys = l.n;
        resp.keys = ptrs;
        r = vault_reply(reply, &resp.base, false);
    }
    store_list_free(&l);
    free(apis);
    free(ptrs);
    free(fps);
    if (tr != NULL) kv_pb_free(&tr->base);
    return r;
}

/*
 * Activation runs in three kinds of commits, so that kill -9 anywhere leaves
 * a state start-up (or activating the same key again) finishes:
 *   begin:  the key goes available -> installing and the tenant names it;
 *   rewrap: each customer-managed environment's DEKs move under the key, one
 *           environment per commit (unwraps keep working throughout: every
 *           database record names the key its DEK is wrapped under);
 *   finish: installing -> active, the previous active key -> available.
 * The caller holds v->lifecycle.
 */
typedef struct {
    const vault *v;
    const char *tenant_id;
    const char *key_id; /* activation: the key; roll-back: filled in by the begin step */
    const char *principal;
    int64_t now;
    bool rollback;
    char rollback_key[VAULT_ID_MAX];
} vault_activate_ctx;

const char *vault_key_state_name(Hsmvault__V1__KeyState s)
{
    static const char *const names[] = {"unspecified", "available", "installing",
                                        "active",      "locked",    "deleted"};
    return (unsigned)s < KV_ARRAY_LEN(names) ? names[s] : "unknown";
}

kv_result vault_put_key(store_txn *t, const KeyRecord *k)
{
    char sk[2 * VAULT_ID_MAX];
    vault_key_store_key(k->tenant_id, k->id, sk, sizeof(sk));
    return store_put(t, STORE_KEYS, sk, &k->base);
}

/* Marks nk installing and names it (and who asked, and why) in the tenant. */
static kv_result vault_install(store_txn *t, TenantRecord *tr, KeyRecord *nk, const char *principal,
                               bool rollback)
{
    KV_ENSURE(principal != NULL && principal[0] != '\0', KV_ERR_INTERNAL,
              "an activation without a principal");
    nk->state = HSMVAULT__V1__KEY_STATE__KEY_STATE_INSTALLING;
    KV_GUARD(vault_put_key(t, nk));
    char *own_id = tr->installing_key_id, *own_by = tr->installing_by;
    tr->installing_key_id = nk->id;
    tr->installing_by = (char *)(uintptr_t)principal;
    tr->installing_is_rollback = rollback;
    kv_result r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
    tr->installing_key_id = own_id;
    tr->installing_by = own_by;
    return r;
}

static kv_result vault_activate_begin(store_txn *t, void *arg)
{
    const vault_activate_ctx *c = arg;
    TenantRecord *tr = NULL;
    KeyRecord *nk = NULL;
    kv_result r = KV_SUCCESS;
    KV_GUARD(vault_get_tenant(t, c->tenant_id, &tr));
    KV_GUARD_GOTO(vault_get_key(t, c->tenant_id, c->key_id, &nk), r, out);
    if (tr->installing_key_id[0] != '\0') {
        /* Activating the key being installed again resumes it; another key waits. */
        KV_ENSURE_GOTO(strcmp(tr->installing_key_id, c->key_id) == 0, r, out,
                       KV_ERR_FAILED_PRECONDITION,
                       "key %s is being activated; wait until it is active", tr->installing_key_id);
        goto out;
    }
    KV_ENSURE_GOTO(nk->source != HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE, r, out,
                   KV_ERR_FAILED_PRECONDITION,
                   "key %s is the tenant's service key and cannot be activated", c->key_id);
    KV_ENSURE_GOTO(nk->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE, r, out,
                   KV_ERR_FAILED_PRECONDITION,
                   "key %s is %s; only an available key can be activated", c->key_id,
                   vault_key_state_name(nk->state));
    if (tr->last_activation_at > 0 && c->v->activation_cooldown > 0 &&
        c->now < tr->last_activation_at + c->v->activation_cooldown) {
        char until[32], last[32];
        kv_clock_format(tr->last_activation_at + c->v->activation_cooldown, until, sizeof(until));
        kv_clock_format(tr->last_activation_at, last, sizeof(last));
        KV_BAIL_GOTO(r, out, KV_ERR_FAILED_PRECONDITION,
                     "activation is blocked until %s (%lld h after the activation of %s)", until,
                     (long long)(c->v->activation_cooldown / 3600), last);
    }
    r = vault_install(t, tr, nk, c->principal, false);
out:
    kv_pb_free(&tr->base);
    if (nk != NULL) kv_pb_free(&nk->base);
    return r;
}

static kv_result vault_activate_finish_commit(store_txn *t, void *arg)
{
    const vault_activate_ctx *c = arg;
    TenantRecord *tr = NULL;
    KeyRecord *nk = NULL, *old = NULL;
    kv_result r = KV_SUCCESS;
    KV_GUARD(vault_get_tenant(t, c->tenant_id, &tr));
    KV_GUARD_GOTO(vault_get_key(t, c->tenant_id, c->key_id, &nk), r, out);
    KV_ENSURE_GOTO(strcmp(tr->installing_key_id, c->key_id) == 0 &&
                       nk->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_INSTALLING,
                   r, out, KV_ERR_ABORTED, "the activation of key %s changed under it; retry",
                   c->key_id);
    if (tr->active_key_id[0] != '\0' && strcmp(tr->active_key_id, c->key_id) != 0) {
        KV_GUARD_GOTO(vault_get_key(t, c->tenant_id, tr->active_key_id, &old), r, out);
        old->state = HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE;
        KV_GUARD_GOTO(vault_put_key(t, old), r, out);
    }
    nk->state = HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE;
    nk->activated_at = c->now;
    KV_GUARD_GOTO(vault_put_key(t, nk), r, out);
    /* After an activation the old key is what a roll-back returns to; after
     * a roll-back there is nothing to roll back to. */
    char *own_active = tr->active_key_id, *own_installing = tr->installing_key_id,
         *own_prev = tr->previous_active_key_id, *own_last_by = tr->last_activated_by,
         *own_by = tr->installing_by;
    bool rollback = tr->installing_is_rollback;
    tr->previous_active_key_id = rollback ? "" : own_active;
    tr->last_activated_by = own_by;
    tr->active_key_id = nk->id;
    tr->installing_key_id = "";
    tr->installing_by = "";
    tr->installing_is_rollback = false;
    tr->last_activation_at = c->now;
    tr->last_key_change_at = c->now;
    r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
    tr->active_key_id = own_active;
    tr->installing_key_id = own_installing;
    tr->previous_active_key_id = own_prev;
    tr->last_activated_by = own_last_by;
    tr->installing_by = own_by;
    if (kv_ok(r)) {
        char change[512];
        snprintf(change, sizeof(change), "%s: key %s (%s) is now the active key%s%s%s",
                 rollback ? "an activation was ROLLED BACK" : "a key was activated", nk->name,
                 nk->id, old != NULL ? "; the previous active key " : "",
                 old != NULL ? old->id : "", old != NULL ? " is available" : "");
        r = vault_notify(t, tr, change, own_by, c->now);
    }
out:
    kv_pb_free(&tr->base);
    if (nk != NULL) kv_pb_free(&nk->base);
    if (old != NULL) kv_pb_free(&old->base);
    return r;
}

static bool vault_is_cm_env_of(const ProtobufCMessage *msg, const void *tenant_id)
{
    const EnvironmentRecord *e = (const EnvironmentRecord *)msg;
    return strcmp(e->tenant_id, tenant_id) == 0 &&
           e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED &&
           e->state != HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_DELETED;
}

/* The rewrap and finish steps for an installing key; *out gets the key as
 * committed.  Idempotent: DEKs already under the key are left as they are. */
static kv_result vault_activate_finish(vault *v, const char *tenant_id, const char *key_id,
                                       KeyRecord **out)
{
    store_txn *t = NULL;
    store_list envs = {0};
    KeyRecord *nk = NULL;
    kv_result r = KV_SUCCESS;
    KV_GUARD(store_read_begin(v->store, &t));
    r = vault_get_key(t, tenant_id, key_id, &nk);
    if (kv_ok(r))
        r = store_collect(t, STORE_ENVIRONMENTS, "",
                          &hsmvault__store__environment_record__descriptor, vault_is_cm_env_of,
                          tenant_id, &envs);
    store_read_end(t);
    KV_GUARD_GOTO(r, r, out);
    for (size_t i = 0; i < envs.n; i++) {
        const EnvironmentRecord *e = (const EnvironmentRecord *)envs.items[i];
        KV_GUARD_GOTO(
            vault_rewrap_environment(v, e->id, nk,
                                     HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED, NULL),
            r, out);
        vault_test_crash_point(v, "activation-rewrap");
    }
    vault_activate_ctx c = {
        .v = v, .tenant_id = tenant_id, .key_id = key_id, .now = kv_clock_now()};
    KV_GUARD_GOTO(store_update(v->store, vault_activate_finish_commit, &c), r, out);
    KV_LOG_INFO("tenant %s: key %s is active (%zu customer-managed environments re-wrapped)",
                tenant_id, key_id, envs.n);
    KV_GUARD_GOTO(store_read_begin(v->store, &t), r, out);
    r = vault_get_key(t, tenant_id, key_id, out);
    store_read_end(t);
out:
    store_list_free(&envs);
    if (nk != NULL) kv_pb_free(&nk->base);
    return r;
}

static bool vault_is_installing(const ProtobufCMessage *msg, const void *arg)
{
    (void)arg;
    return ((const TenantRecord *)msg)->installing_key_id[0] != '\0';
}

kv_result vault_resume_activations(vault *v)
{
    store_txn *t = NULL;
    store_list tenants = {0};
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = store_collect(t, STORE_TENANTS, "", &hsmvault__store__tenant_record__descriptor,
                                vault_is_installing, NULL, &tenants);
    store_read_end(t);
    pthread_mutex_lock(&v->lifecycle);
    for (size_t i = 0; kv_ok(r) && i < tenants.n; i++) {
        const TenantRecord *tr = (const TenantRecord *)tenants.items[i];
        KV_LOG_WARN("tenant %s: resuming the interrupted activation of key %s", tr->id,
                    tr->installing_key_id);
        KeyRecord *k = NULL;
        r = vault_activate_finish(v, tr->id, tr->installing_key_id, &k);
        if (k != NULL) kv_pb_free(&k->base);
    }
    pthread_mutex_unlock(&v->lifecycle);
    store_list_free(&tenants);
    return r;
}

VAULT_HANDLER(vault_rpc_activate_key, Hsmvault__V1__ActivateKeyRequest,
              hsmvault__v1__activate_key_request__descriptor)
static kv_result vault_rpc_activate_key_impl(vault *v, const rpc_ctx *ctx,
                                             const Hsmvault__V1__ActivateKeyRequest *req,
                                             rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KeyRecord *done = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "activate keys", &tr));
    kv_pb_free(&tr->base);
    KV_GUARD(vault_no_locked_environments(v, req->tenant_id, "activate keys"));
    KV_GUARD(vault_check_id("key_id", req->key_id));
    pthread_mutex_lock(&v->lifecycle);
    vault_activate_ctx c = {.v = v,
                            .tenant_id = req->tenant_id,
                            .key_id = req->key_id,
                            .principal = ctx->principal,
                            .now = kv_clock_now()};
    kv_result r = store_update(v->store, vault_activate_begin, &c);
    if (kv_ok(r)) {
        KV_LOG_INFO("tenant %s: key %s installing (activation by %s)", req->tenant_id, req->key_id,
                    ctx->principal);
        r = vault_activate_finish(v, req->tenant_id, req->key_id, &done);
    }
    pthread_mutex_unlock(&v->lifecycle);
    if (done != NULL) kv_pb_free(&done->base);
    if (kv_ok(r))
        r = vault_reply_key(v, req->tenant_id, c.key_id != NULL ? c.key_id : c.rollback_key, reply);
    return r;
}

/* Roll-back (seed 000): within the roll-back window after an activation, a
 * tenant admin other than the one who activated makes the previous key active
 * again.  The 24 h activation rule does not apply. */
static kv_result vault_rollback_begin(store_txn *t, void *arg)
{
    vault_activate_ctx *c = arg;
    TenantRecord *tr = NULL;
    KeyRecord *pk = NULL;
    kv_result r = KV_SUCCESS;
    KV_GUARD(vault_get_tenant(t, c->tenant_id, &tr));
    KV_ENSURE_GOTO(tr->installing_key_id[0] == '\0', r, out, KV_ERR_FAILED_PRECONDITION,
                   "key %s is being activated; wait until it is active", tr->installing_key_id);
    KV_ENSURE_GOTO(tr->previous_active_key_id[0] != '\0', r, out, KV_ERR_FAILED_PRECONDITION,
                   "tenant %s has no activation to roll back", c->tenant_id);
    if (c->now >= tr->last_activation_at + c->v->rollback_window) {
        char until[32], last[32];
        kv_clock_format(tr->last_activation_at + c->v->rollback_window, until, sizeof(until));
        kv_clock_format(tr->last_activation_at, last, sizeof(last));
        KV_BAIL_GOTO(r, out, KV_ERR_FAILED_PRECONDITION,
                     "the roll-back window closed at %s (%lld h after the activation of %s)", until,
                     (long long)(c->v->rollback_window / 3600), last);
    }
    KV_ENSURE_GOTO(
        strcmp(tr->last_activated_by, c->principal) != 0, r, out, KV_ERR_PERMISSION_DENIED,
        "%s activated the current key and cannot roll it back; another tenant admin must",
        c->principal);
    KV_GUARD_GOTO(vault_get_key(t, c->tenant_id, tr->previous_active_key_id, &pk), r, out);
    KV_ENSURE_GOTO(pk->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE, r, out,
                   KV_ERR_FAILED_PRECONDITION,
                   "the previous key %s is %s and cannot become active again", pk->id,
                   vault_key_state_name(pk->state));
    snprintf(c->rollback_key, sizeof(c->rollback_key), "%s", pk->id);
    r = vault_install(t, tr, pk, c->principal, true);
out:
    kv_pb_free(&tr->base);
    if (pk != NULL) kv_pb_free(&pk->base);
    return r;
}

VAULT_HANDLER(vault_rpc_roll_back, Hsmvault__V1__RollBackRequest,
              hsmvault__v1__roll_back_request__descriptor)
static kv_result vault_rpc_roll_back_impl(vault *v, const rpc_ctx *ctx,
                                          const Hsmvault__V1__RollBackRequest *req,
                                          rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KeyRecord *done = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "roll back key changes", &tr));
    kv_pb_free(&tr->base);
    pthread_mutex_lock(&v->lifecycle);
    vault_activate_ctx c = {.v = v,
                            .tenant_id = req->tenant_id,
                            .principal = ctx->principal,
                            .now = kv_clock_now(),
                            .rollback = true};
    kv_result r = store_update(v->store, vault_rollback_begin, &c);
    if (kv_ok(r)) {
        KV_LOG_INFO("tenant %s: roll-back to key %s by %s", req->tenant_id, c.rollback_key,
                    ctx->principal);
        r = vault_activate_finish(v, req->tenant_id, c.rollback_key, &done);
    }
    pthread_mutex_unlock(&v->lifecycle);
    if (done != NULL) kv_pb_free(&done->base);
    if (kv_ok(r))
        r = vault_reply_key(v, req->tenant_id, c.key_id != NULL ? c.key_id : c.rollback_key, reply);
    return r;
}
