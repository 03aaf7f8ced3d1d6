/*
 * ops_lock.c: the tenant-wide lock of seed 001 and its undoing.
 *
 * Lock: a tenant admin presents the active key again (PFX + password, or its
 * .byok file: same fingerprint) and types back the confirmation text the vault shows.  Refused
 * within lock_after_key_change (72 h) of any key change.  One commit marks
 * every active customer-managed environment locked, the active key locked and
 * every available key deleted; then their token objects are destroyed (a
 * crash in between is finished by start-up reconciliation, which destroys the
 * objects of locked and deleted keys).  From then on no DEK of those
 * environments unwraps, for anyone.
 *
 * Unlock: after unlock_after_lock (1 h) the same key is presented again (PFX
 * or .byok) and imported into the token as a new object (active again); then each environment is
 * unlocked one by one by an environment admin, and its old DEKs unwrap to the same bytes.  A locked
 * environment not unlocked within locked_environment_retention (28 days) is deleted with its DEKs.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

static bool vault_env_is_locked_of(const ProtobufCMessage *msg, const void *tenant_id)
{
    const EnvironmentRecord *e = (const EnvironmentRecord *)msg;
    return strcmp(e->tenant_id, tenant_id) == 0 &&
           e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED;
}

static bool vault_env_lockable_of(const ProtobufCMessage *msg, const void *tenant_id)
{
    const EnvironmentRecord *e = (const EnvironmentRecord *)msg;
    return strcmp(e->tenant_id, tenant_id) == 0 &&
           e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED &&
           e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE;
}

kv_result vault_no_locked_environments(vault *v, const char *tenant_id, const char *action)
{
    store_txn *t;
    store_list l = {0};
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        store_collect(t, STORE_ENVIRONMENTS, "", &hsmvault__store__environment_record__descriptor,
                      vault_env_is_locked_of, tenant_id, &l);
    store_read_end(t);
    if (kv_ok(r) && l.n > 0)
        r = kv_error_set(
            KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
            "cannot %s: tenant %s has %zu locked environment%s (first: %s); unlock or delete "
            "them first",
            action, tenant_id, l.n, l.n == 1 ? "" : "s",
            ((const EnvironmentRecord *)l.items[0])->id);
    store_list_free(&l);
    return r;
}

/* The text a tenant admin types back to lock: it names what is at stake, so a
 * confirmation made before the set of environments changed no longer fits. */
static void vault_lock_text(const TenantRecord *tr, size_t n_envs, char *out, size_t cap)
{
    snprintf(out, cap, "lock %zu environment%s of %s", n_envs, n_envs == 1 ? "" : "s", tr->name);
}

static void vault_fingerprint_hex(const uint8_t *fp, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", fp[i]);
}

VAULT_HANDLER(vault_rpc_get_lock_confirmation, Hsmvault__V1__GetLockConfirmationRequest,
              hsmvault__v1__get_lock_confirmation_request__descriptor)
static kv_result
vault_rpc_get_lock_confirmation_impl(vault *v, const rpc_ctx *ctx,
                                     const Hsmvault__V1__GetLockConfirmationRequest *req,
                                     rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "lock the tenant", &tr));
    store_txn *t;
    store_list envs = {0};
    kv_result r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        r = store_collect(t, STORE_ENVIRONMENTS, "",
                          &hsmvault__store__environment_record__descriptor, vault_env_lockable_of,
                          req->tenant_id, &envs);
        store_read_end(t);
    }
    if (kv_ok(r)) {
        char text[256];
        vault_lock_text(tr, envs.n, text, sizeof(text));
        Hsmvault__V1__LockConfirmation resp = HSMVAULT__V1__LOCK_CONFIRMATION__INIT;
        resp.text = text;
        r = vault_reply(reply, &resp.base, false);
    }
    store_list_free(&envs);
    kv_pb_free(&tr->base);
    return r;
}

typedef struct {
    vault *v;
    const char *tenant_id;
    const uint8_t *fingerprint;
    const char *confirmation;
    const char *principal;
    int64_t now;
    /* out */
    store_list locked_envs; /* EnvironmentRecords as locked */
    hsm_key_id *destroy;    /* token objects to destroy after the commit (every one: no cap) */
    size_t n_destroy, cap_destroy;
    char locked_key_id[VAULT_ID_MAX];
} vault_lock_ctx;

static kv_result vault_lock_commit(store_txn *t, void *arg)
{
    vault_lock_ctx *c = arg;
    TenantRecord *tr = NULL;
    KeyRecord *ak = NULL;
    store_list keys = {0};
    kv_result r = KV_SUCCESS;
    store_list_free(&c->locked_envs); /* the update may run again */
    c->n_destroy = 0;
    KV_GUARD(vault_get_tenant(t, c->tenant_id, &tr));
    KV_ENSURE_GOTO(tr->installing_key_id[0] == '\0', r, out, KV_ERR_FAILED_PRECONDITION,
                   "key %s is being activated; the tenant cannot be locked now",
                   tr->installing_key_id);
    KV_ENSURE_GOTO(tr->active_key_id[0] != '\0', r, out, KV_ERR_FAILED_PRECONDITION,
                   "tenant %s has no active key to lock with%s", c->tenant_id,
                   tr->locked_key_id[0] != '\0' ? " (it is locked already)" : "");
    KV_GUARD_GOTO(vault_get_key(t, c->tenant_id, tr->active_key_id, &ak), r, out);
    if (ak->fingerprint.len != KEY_FINGERPRINT_LEN ||
        memcmp(ak->fingerprint.data, c->fingerprint, KEY_FINGERPRINT_LEN) != 0) {
        char got[65], want[65];
        vault_fingerprint_hex(c->fingerprint, KEY_FINGERPRINT_LEN, got);
        vault_fingerprint_hex(ak->fingerprint.data,
                              ak->fingerprint.len < 32 ? ak->fingerprint.len : 32, want);
        KV_BAIL_GOTO(
            r, out, KV_ERR_INVALID_ARGUMENT,
            "the key presented (fingerprint %.16s...) is not the tenant's active key %s (%.16s...)",
            got, ak->id, want);
    }
    int64_t clears = tr->last_key_change_at + c->v->lock_after_key_change;
    if (c->now < clears) {
        char until[32], last[32];
        kv_clock_format(clears, until, sizeof(until));
        kv_clock_format(tr->last_key_change_at, last, sizeof(last));
        KV_BAIL_GOTO(r, out, KV_ERR_FAILED_PRECONDITION,
                     "lock is blocked until %s (%lld h after the key change of %s)", until,
                     (long long)(c->v->lock_after_key_change / 3600), last);
    }
    KV_GUARD_GOTO(store_collect(t, STORE_ENVIRONMENTS, "",
                                &hsmvault__store__environment_record__descriptor,
                                vault_env_lockable_of, c->tenant_id, &c->locked_envs),
                  r, out);
    char text[256];
    vault_lock_text(tr, c->locked_envs.n, text, sizeof(text));
    KV_ENSURE_GOTO(c->confirmation != NULL && strcmp(c->confirmation, text) == 0, r, out,
                   KV_ERR_FAILED_PRECONDITION, "the confirmation does not match; type exactly: %s",
                   text);

    for (size_t i = 0; i < c->locked_envs.n; i++) {
        EnvironmentRecord *e = (EnvironmentRecord *)c->locked_envs.items[i];
        e->state = HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED;
        e->locked_at = c->now;
        KV_GUARD_GOTO(store_put(t, STORE_ENVIRONMENTS, e->id, &e->base), r, out);
    }
    /* The active key is locked, every available key deleted: both leave the token. */
    char prefix[VAULT_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s/", c->tenant_id);
    KV_GUARD_GOTO(store_collect(t, STORE_KEYS, prefix, &hsmvault__store__key_record__descriptor,
                                NULL, NULL, &keys),
                  r, out);
    for (size_t i = 0; i < keys.n; i++) {
        KeyRecord *k = (KeyRecord *)keys.items[i];
        if (k->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE) continue;
        if (k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE)
            k->state = HSMVAULT__V1__KEY_STATE__KEY_STATE_LOCKED;
        else if (k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE)
            k->state = HSMVAULT__V1__KEY_STATE__KEY_STATE_DELETED;
        else
            continue;
        KV_GUARD_GOTO(vault_put_key(t, k), r, out);
        if (k->hsm_id.len != HSM_KEY_ID_LEN) continue;
        if (c->n_destroy == c->cap_destroy) {
            size_t cap = c->cap_destroy ? 2 * c->cap_destroy : 16;
            hsm_key_id *p = realloc(c->destroy, cap * sizeof(*p));
            KV_ENSURE_GOTO(p != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                           "out of memory locking the tenant");
            c->destroy = p;
            c->cap_destroy = cap;
        }
        memcpy(c->destroy[c->n_destroy++].bytes, k->hsm_id.data, HSM_KEY_ID_LEN);
    }
    snprintf(c->locked_key_id, sizeof(c->locked_key_id), "%s", ak->id);
    char *own_active = tr->active_key_id, *own_prev = tr->previous_active_key_id,
         *own_locked = tr->locked_key_id;
    tr->locked_key_id = c->locked_key_id;
    tr->active_key_id = "";
    tr->previous_active_key_id = ""; /* a lock is not rolled back */
    tr->locked_at = c->now;
    tr->last_key_change_at = c->now;
    r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
    tr->active_key_id = own_active;
    tr->previous_active_key_id = own_prev;
    tr->locked_key_id = own_locked;
    if (kv_ok(r)) {
        char change[512];
        snprintf(
            change, sizeof(change),
            "the tenant was LOCKED with key %s: %zu customer-managed environments are locked and "
            "unreadable, the active and available keys were deleted from the HSM",
            c->locked_key_id, c->locked_envs.n);
        r = vault_notify(t, tr, change, c->principal, c->now);
    }
out:
    store_list_free(&keys);
    if (ak != NULL) kv_pb_free(&ak->base);
    kv_pb_free(&tr->base);
    return r;
}

VAULT_HANDLER(vault_rpc_lock_tenant, Hsmvault__V1__LockTenantRequest,
              hsmvault__v1__lock_tenant_request__descriptor)
static kv_result vault_rpc_lock_tenant_impl(vault *v, const rpc_ctx *ctx,
                                            const Hsmvault__V1__LockTenantRequest *req,
                                            rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "lock the tenant", &tr));
    /* Only its fingerprint is needed: a .byok key is unwrapped into a
     * session object to read its public key, and destroyed. */
    vault_material m;
    uint8_t fp[KEY_FINGERPRINT_LEN];
    kv_result r = vault_material_open(v, tr, req->active_key, &m);
    kv_pb_free(&tr->base);
    KV_GUARD(r);
    memcpy(fp, m.fingerprint, sizeof(fp));
    vault_material_free(&m);
    vault_lock_ctx c = {.v = v,
                        .tenant_id = req->tenant_id,
                        .fingerprint = fp,
                        .confirmation = req->confirmation,
                        .principal = ctx->principal,
                        .now = kv_clock_now()};
    pthread_mutex_lock(&v->lifecycle);
    r = store_update(v->store, vault_lock_commit, &c);
    if (kv_ok(r)) {
        KV_LOG_WARN("tenant %s LOCKED by %s with key %s: %zu environments locked", req->tenant_id,
                    ctx->principal, c.locked_key_id, c.locked_envs.n);
        vault_test_crash_point(v, "lock-destroy");
        for (size_t i = 0; i < c.n_destroy; i++)
            if (kv_failed(hsm_key_destroy(v->hsm, &c.destroy[i])))
                kv_log_error_record(KV_LOG_ERROR,
                                    "lock: a key stays in the token until the next start-up");
    }
    pthread_mutex_unlock(&v->lifecycle);
    if (kv_ok(r)) {
        char **ids = calloc(c.locked_envs.n ? c.locked_envs.n : 1, sizeof(*ids));
        if (ids == NULL) {
            r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
        } else {
            for (size_t i = 0; i < c.locked_envs.n; i++)
                ids[i] = ((EnvironmentRecord *)c.locked_envs.items[i])->id;
            Hsmvault__V1__LockTenantResponse resp = HSMVAULT__V1__LOCK_TENANT_RESPONSE__INIT;
            resp.n_locked_environment_ids = c.locked_envs.n;
            resp.locked_environment_ids = ids;
            resp.unlock_not_before = c.now + v->unlock_after_lock;
            r = vault_reply(reply, &resp.base, false);
            free(ids);
        }
    }
    store_list_free(&c.locked_envs);
    free(c.destroy);
    return r;
}

typedef struct {
    const vault *v;
    const char *tenant_id;
    const char *key_id;
    const uint8_t *fingerprint;
    const hsm_key_id *new_hsm_id;
    const char *principal;
    int64_t now;
} vault_unlock_ctx;

/* Checks the unlock preconditions (and, with new_hsm_id, commits). */
static kv_result vault_unlock_key_commit(store_txn *t, void *arg)
{
    const vault_unlock_ctx *c = arg;
    TenantRecord *tr = NULL;
    KeyRecord *k = NULL;
    kv_result r = KV_SUCCESS;
    KV_GUARD(vault_get_tenant(t, c->tenant_id, &tr));
    KV_GUARD_GOTO(vault_get_key(t, c->tenant_id, c->key_id, &k), r, out);
    KV_ENSURE_GOTO(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_LOCKED &&
                       strcmp(tr->locked_key_id, k->id) == 0,
                   r, out, KV_ERR_FAILED_PRECONDITION,
                   "key %s is %s, not the key the tenant was locked with", k->id,
                   vault_key_state_name(k->state));
    KV_ENSURE_GOTO(
        k->fingerprint.len == KEY_FINGERPRINT_LEN &&
            memcmp(k->fingerprint.data, c->fingerprint, KEY_FINGERPRINT_LEN) == 0,
        r, out, KV_ERR_INVALID_ARGUMENT,
        "the key presented is not key %s (its fingerprint differs); present the key the tenant was "
        "locked with",
        k->id);
    int64_t clears = tr->locked_at + c->v->unlock_after_lock;
    if (c->now < clears) {
        char until[32], at[32];
        kv_clock_format(clears, until, sizeof(until));
        kv_clock_format(tr->locked_at, at, sizeof(at));
        KV_BAIL_GOTO(r, out, KV_ERR_FAILED_PRECONDITION,
                     "unlock is blocked until %s (%lld h after the lock of %s)", until,
                     (long long)(c->v->unlock_after_lock / 3600), at);
    }
    if (c->new_hsm_id == NULL) goto out; /* checks only */
    k->state = HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE;
    k->activated_at = c->now;
    ProtobufCBinaryData own_id = k->hsm_id;
    k->hsm_id.data = (uint8_t *)(uintptr_t)c->new_hsm_id->bytes; /* borrowed for the put */
    k->hsm_id.len = HSM_KEY_ID_LEN;
    r = vault_put_key(t, k);
    k->hsm_id = own_id;
    KV_GUARD_GOTO(r, r, out);
    char *own_active = tr->active_key_id, *own_locked = tr->locked_key_id;
    tr->active_key_id = k->id;
    tr->locked_key_id = "";
    tr->last_key_change_at = c->now;
    tr->last_activation_at = c->now;
    r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
    tr->active_key_id = own_active;
    tr->locked_key_id = own_locked;
    if (kv_ok(r)) {
        char change[512];
        snprintf(change, sizeof(change),
                 "key %s was unlocked and is active again; locked environments stay locked until "
                 "each is unlocked",
                 k->id);
        r = vault_notify(t, tr, change, c->principal, c->now);
    }
out:
    if (k != NULL) kv_pb_free(&k->base);
    kv_pb_free(&tr->base);
    return r;
}

VAULT_HANDLER(vault_rpc_unlock_key, Hsmvault__V1__UnlockKeyRequest,
              hsmvault__v1__unlock_key_request__descriptor)
static kv_result vault_rpc_unlock_key_impl(vault *v, const rpc_ctx *ctx,
                                           const Hsmvault__V1__UnlockKeyRequest *req,
                                           rpc_reply *reply)
{
    TenantRecord *tr = NULL;
    KV_GUARD(vault_key_admin_begin(v, ctx, req->tenant_id, "unlock keys", &tr));
    kv_result r = vault_check_id("key_id", req->key_id);
    vault_material m = {0};
    if (kv_ok(r)) r = vault_material_open(v, tr, req->key, &m);
    kv_pb_free(&tr->base);
    if (kv_failed(r)) {
        vault_material_free(&m);
        return r;
    }
    vault_unlock_ctx c = {.v = v,
                          .tenant_id = req->tenant_id,
                          .key_id = req->key_id,
                          .fingerprint = m.fingerprint,
                          .principal = ctx->principal,
                          .now = kv_clock_now()};
    pthread_mutex_lock(&v->lifecycle);
    /* Check first (no token object is made for a refused unlock), then
     * import the key (token object before the record naming it), commit. */
    r = store_update(v->store, vault_unlock_key_commit, &c);
    if (kv_ok(r)) {
        char label[128];
        snprintf(label, sizeof(label), VAULT_LABEL_PREFIX "%s/%s", req->tenant_id, req->key_id);
        r = vault_material_import(v, &m, label);
    }
    if (kv_ok(r)) {
        c.new_hsm_id = &m.hsm_id;
        r = store_update(v->store, vault_unlock_key_commit, &c);
    }
    if (kv_failed(r)) vault_material_discard(v, &m);
    pthread_mutex_unlock(&v->lifecycle);
    vault_material_free(&m);
    if (kv_ok(r)) {
        KV_LOG_WARN(
            "tenant %s: key %s unlocked by %s; its environments stay locked until each is unlocked",
            req->tenant_id, req->key_id, ctx->principal);
        r = vault_reply_key(v, req->tenant_id, req->key_id, reply);
    }
    return r;
}

typedef struct {
    const char *env_id;
    const char *principal;
} vault_env_unlock_ctx;

static kv_result vault_unlock_env_commit(store_txn *t, void *arg)
{
    const vault_env_unlock_ctx *c = arg;
    EnvironmentRecord *e = NULL;
    KeyRecord *k = NULL;
    kv_result r = KV_SUCCESS;
    KV_GUARD(vault_get_environment(t, c->env_id, &e));
    KV_ENSURE_GOTO(e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED, r, out,
                   KV_ERR_FAILED_PRECONDITION, "environment %s is not locked", e->id);
    KV_GUARD_GOTO(vault_get_key(t, e->tenant_id, e->kek_id, &k), r, out);
    KV_ENSURE_GOTO(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE, r, out,
                   KV_ERR_FAILED_PRECONDITION,
                   "the tenant key %s of environment %s is %s; a tenant admin must unlock it first "
                   "(vaultctl key "
                   "unlock)",
                   k->id, e->id, vault_key_state_name(k->state));
    e->state = HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE;
    e->locked_at = 0;
    r = store_put(t, STORE_ENVIRONMENTS, e->id, &e->base);
    if (kv_ok(r)) {
        TenantRecord *tr = NULL;
        KV_GUARD_GOTO(vault_get_tenant(t, e->tenant_id, &tr), r, out);
        char change[512];
        snprintf(change, sizeof(change),
                 "environment %s (%s) was unlocked; its data is readable again", e->name, e->id);
        r = vault_notify(t, tr, change, c->principal, kv_clock_now());
        kv_pb_free(&tr->base);
    }
out:
    if (k != NULL) kv_pb_free(&k->base);
    kv_pb_free(&e->base);
    return r;
}

VAULT_HANDLER(vault_rpc_unlock_environment, Hsmvault__V1__UnlockEnvironmentRequest,
              hsmvault__v1__unlock_environment_request__descriptor)
static kv_result
vault_rpc_unlock_environment_impl(vault *v, const rpc_ctx *ctx,
                                  const Hsmvault__V1__UnlockEnvironmentRequest *req,
                                  rpc_reply *reply)
{
    store_txn *t;
    EnvironmentRecord *e = NULL;
    KV_GUARD(vault_check_id("environment_id", req->environment_id));
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_ENVIRONMENT_ADMIN), NULL, NULL,
                                  "unlock environments");
    if (kv_ok(r)) r = vault_get_environment(t, req->environment_id, &e);
    if (kv_ok(r))
        r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_ENVIRONMENT_ADMIN), e->tenant_id,
                            e->id, "unlock environments");
    store_read_end(t);
    if (e != NULL) kv_pb_free(&e->base);
    e = NULL;
    KV_GUARD(r);
    vault_env_unlock_ctx c = {.env_id = req->environment_id, .principal = ctx->principal};
    pthread_mutex_lock(&v->lifecycle);
    r = store_update(v->store, vault_unlock_env_commit, &c);
    pthread_mutex_unlock(&v->lifecycle);
    KV_GUARD(r);
    KV_LOG_WARN("environment %s unlocked by %s", req->environment_id, ctx->principal);
    KV_GUARD(store_read_begin(v->store, &t));
    r = vault_get_environment(t, req->environment_id, &e);
    store_read_end(t);
    if (kv_ok(r)) {
        Hsmvault__V1__Environment api;
        vault_env_to_api(e, &api);
        r = vault_reply(reply, &api.base, false);
        kv_pb_free(&e->base);
    }
    return r;
}

/* ---- 28-day deletion ---------------------------------------------------- */

typedef struct {
    const char *env_id;
    int64_t now;
    int64_t retention;
    size_t deleted_dbs;
} vault_sweep_ctx;

static kv_result vault_sweep_env_commit(store_txn *t, void *arg)
{
    vault_sweep_ctx *c = arg;
    EnvironmentRecord *e = NULL;
    store_list dbs = {0};
    kv_result r = KV_SUCCESS;
    c->deleted_dbs = 0;
    KV_GUARD(vault_get_environment(t, c->env_id, &e));
    if (e->state != HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED ||
        c->now < e->locked_at + c->retention)
        goto out; /* unlocked meanwhile */
    char prefix[VAULT_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s/", e->id);
    KV_GUARD_GOTO(store_collect(t, STORE_DATABASES, prefix,
                                &hsmvault__store__database_record__descriptor, NULL, NULL, &dbs),
                  r, out);
    for (size_t i = 0; i < dbs.n; i++) {
        char key[2 * VAULT_ID_MAX];
        vault_db_store_key(e->id, ((const DatabaseRecord *)dbs.items[i])->id, key, sizeof(key));
        KV_GUARD_GOTO(store_del(t, STORE_DATABASES, key), r, out);
    }
    c->deleted_dbs = dbs.n;
    e->state = HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_DELETED;
    r = store_put(t, STORE_ENVIRONMENTS, e->id, &e->base);
out:
    store_list_free(&dbs);
    kv_pb_free(&e->base);
    return r;
}

static bool vault_env_expired(const ProtobufCMessage *msg, const void *arg)
{
    const EnvironmentRecord *e = (const EnvironmentRecord *)msg;
    const vault_sweep_ctx *c = arg;
    return e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED &&
           c->now >= e->locked_at + c->retention;
}

kv_result vault_sweep(vault *v)
{
    vault_sweep_ctx c = {.now = kv_clock_now(), .retention = v->locked_environment_retention};
    store_txn *t;
    store_list envs = {0};
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        store_collect(t, STORE_ENVIRONMENTS, "", &hsmvault__store__environment_record__descriptor,
                      vault_env_expired, &c, &envs);
    store_read_end(t);
    pthread_mutex_lock(&v->lifecycle);
    for (size_t i = 0; kv_ok(r) && i < envs.n; i++) {
        c.env_id = ((const EnvironmentRecord *)envs.items[i])->id;
        r = store_update(v->store, vault_sweep_env_commit, &c);
        if (kv_ok(r))
            KV_LOG_WARN("environment %s was locked for longer than %lld days: deleted with its %zu "
                        "database keys",
                        c.env_id, (long long)(v->locked_environment_retention / 86400),
                        c.deleted_dbs);
    }
    pthread_mutex_unlock(&v->lifecycle);
    store_list_free(&envs);
    /* BYOK import key versions past their validity leave the token too. */
    if (kv_ok(r)) r = vault_import_keys_sweep(v);
    return r;
}
