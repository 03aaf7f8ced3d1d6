/*
 * ops_environments.c: the Environments service: the operator creates
 * environments (on the tenant's service key); environment admins apply the
 * tenant's active key and return to the service key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "vault.h"

#define ENV_READERS                                                                                \
    (ROLE_BIT(ROLE_OPERATOR) | ROLE_BIT(ROLE_AUDITOR) | ROLE_BIT(ROLE_TENANT_ADMIN) |              \
     ROLE_BIT(ROLE_ENVIRONMENT_ADMIN))

static kv_result vault_put_env(store_txn *t, void *arg)
{
    const EnvironmentRecord *e = arg;
    return store_put(t, STORE_ENVIRONMENTS, e->id, &e->base);
}

VAULT_HANDLER(vault_rpc_create_environment, Hsmvault__V1__CreateEnvironmentRequest,
              hsmvault__v1__create_environment_request__descriptor)
static kv_result
vault_rpc_create_environment_impl(vault *v, const rpc_ctx *ctx,
                                  const Hsmvault__V1__CreateEnvironmentRequest *req,
                                  rpc_reply *reply)
{
    store_txn *t;
    TenantRecord *tr = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR), NULL, NULL,
                                  "create environments");
    if (kv_ok(r)) r = vault_get_tenant(t, req->tenant_id, &tr);
    store_read_end(t);
    KV_GUARD(r);
    r = vault_check_text("name", req->name, 128);
    if (kv_ok(r) && req->type != HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION &&
        req->type != HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX)
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "type must be production or sandbox");
    if (kv_ok(r)) {
        char env_id[VAULT_ID_MAX];
        vault_new_id("env", env_id);
        EnvironmentRecord e = HSMVAULT__STORE__ENVIRONMENT_RECORD__INIT;
        e.id = env_id;
        e.tenant_id = tr->id;
        e.name = req->name;
        e.type = req->type;
        /* New environments are encrypted with the tenant's service key. */
        e.encryption = HSMVAULT__V1__ENCRYPTION__ENCRYPTION_SERVICE_MANAGED;
        e.state = HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE;
        e.kek_id = tr->service_key_id;
        e.created_at = kv_clock_now();
        r = store_update(v->store, vault_put_env, &e);
        if (kv_ok(r)) {
            KV_LOG_INFO("environment %s (%s) created in tenant %s by %s", env_id, req->name, tr->id,
                        ctx->principal);
            Hsmvault__V1__Environment api;
            vault_env_to_api(&e, &api);
            r = vault_reply(reply, &api.base, false);
        }
    }
    kv_pb_free(&tr->base);
    return r;
}

static bool vault_env_of_tenant(const ProtobufCMessage *msg, const void *tenant_id)
{
    return strcmp(((const EnvironmentRecord *)msg)->tenant_id, tenant_id) == 0;
}

VAULT_HANDLER(vault_rpc_list_environments, Hsmvault__V1__ListEnvironmentsRequest,
              hsmvault__v1__list_environments_request__descriptor)
static kv_result vault_rpc_list_environments_impl(vault *v, const rpc_ctx *ctx,
                                                  const Hsmvault__V1__ListEnvironmentsRequest *req,
                                                  rpc_reply *reply)
{
    store_txn *t;
    TenantRecord *tr = NULL;
    store_list l = {0};
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, ENV_READERS, NULL, NULL, "list environments");
    if (kv_ok(r)) r = vault_get_tenant(t, req->tenant_id, &tr);
    if (kv_ok(r))
        r = vault_authorize(t, ctx->principal, ENV_READERS, req->tenant_id, NULL,
                            "list environments");
    if (kv_ok(r))
        r = store_collect(t, STORE_ENVIRONMENTS, "",
                          &hsmvault__store__environment_record__descriptor, vault_env_of_tenant,
                          req->tenant_id, &l);
    store_read_end(t);
    Hsmvault__V1__Environment *apis = calloc(l.n ? l.n : 1, sizeof(*apis));
    Hsmvault__V1__Environment **ptrs = calloc(l.n ? l.n : 1, sizeof(*ptrs));
    if (kv_ok(r) && (apis == NULL || ptrs == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    if (kv_ok(r)) {
        for (size_t i = 0; i < l.n; i++) {
            vault_env_to_api((const EnvironmentRecord *)l.items[i], &apis[i]);
            ptrs[i] = &apis[i];
        }
        Hsmvault__V1__ListEnvironmentsResponse resp =
            HSMVAULT__V1__LIST_ENVIRONMENTS_RESPONSE__INIT;
        resp.n_environments = l.n;
        resp.environments = ptrs;
        r = vault_reply(reply, &resp.base, false);
    }
    store_list_free(&l);
    free(apis);
    free(ptrs);
    if (tr != NULL) kv_pb_free(&tr->base);
    return r;
}

/* Loads an environment after a role check, then checks the scope. */
static kv_result vault_env_begin(vault *v, const rpc_ctx *ctx, const char *env_id, unsigned roles,
                                 const char *action, EnvironmentRecord **env, TenantRecord **tenant)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, roles, NULL, NULL, action);
    if (kv_ok(r)) r = vault_get_environment(t, env_id, env);
    if (kv_ok(r)) r = vault_authorize(t, ctx->principal, roles, (*env)->tenant_id, env_id, action);
    if (kv_ok(r) && tenant != NULL) r = vault_get_tenant(t, (*env)->tenant_id, tenant);
    store_read_end(t);
    if (kv_failed(r) && *env != NULL) {
        kv_pb_free(&(*env)->base);
        *env = NULL;
    }
    return r;
}

VAULT_HANDLER(vault_rpc_get_environment, Hsmvault__V1__GetEnvironmentRequest,
              hsmvault__v1__get_environment_request__descriptor)
static kv_result vault_rpc_get_environment_impl(vault *v, const rpc_ctx *ctx,
                                                const Hsmvault__V1__GetEnvironmentRequest *req,
                                                rpc_reply *reply)
{
    EnvironmentRecord *e = NULL;
    KV_GUARD(vault_env_begin(v, ctx, req->environment_id, ENV_READERS | ROLE_BIT(ROLE_STORAGE_NODE),
                             "read this environment", &e, NULL));
    Hsmvault__V1__Environment api;
    vault_env_to_api(e, &api);
    kv_result r = vault_reply(reply, &api.base, false);
    kv_pb_free(&e->base);
    return r;
}

/* Moves an environment to another KEK (apply: the active tenant key; return:
 * the service key), re-wrapping its DEKs. */
static kv_result vault_env_move(vault *v, const rpc_ctx *ctx, const EnvironmentRecord *e,
                                const char *kek_id, Hsmvault__V1__Encryption enc, rpc_reply *reply)
{
    store_txn *t;
    KeyRecord *kek = NULL;
    EnvironmentRecord *after = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_get_key(t, e->tenant_id, kek_id, &kek);
    store_read_end(t);
    KV_GUARD(r);
    r = vault_rewrap_environment(v, e->id, kek, enc, ctx->principal);
    if (kv_ok(r)) r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        r = vault_get_environment(t, e->id, &after);
        store_read_end(t);
    }
    if (kv_ok(r)) {
        KV_LOG_INFO("environment %s moved to key %s (%s) by %s", e->id, kek_id,
                    enc == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED
                        ? "customer-managed"
                        : "service-managed",
                    ctx->principal);
        Hsmvault__V1__Environment api;
        vault_env_to_api(after, &api);
        r = vault_reply(reply, &api.base, false);
        kv_pb_free(&after->base);
    }
    kv_pb_free(&kek->base);
    return r;
}

static kv_result vault_env_must_be_active(const EnvironmentRecord *e)
{
    KV_ENSURE(e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE,
              KV_ERR_FAILED_PRECONDITION, "environment %s is %s", e->id,
              e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED ? "locked"
                                                                                    : "deleted");
    return KV_SUCCESS;
}

VAULT_HANDLER(vault_rpc_apply_key, Hsmvault__V1__ApplyKeyRequest,
              hsmvault__v1__apply_key_request__descriptor)
static kv_result vault_rpc_apply_key_impl(vault *v, const rpc_ctx *ctx,
                                          const Hsmvault__V1__ApplyKeyRequest *req,
                                          rpc_reply *reply)
{
    EnvironmentRecord *e = NULL;
    TenantRecord *tr = NULL;
    KV_GUARD(vault_env_begin(v, ctx, req->environment_id, ROLE_BIT(ROLE_ENVIRONMENT_ADMIN),
                             "apply keys to this environment", &e, &tr));
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = vault_env_must_be_active(e);
    if (kv_ok(r) && tr->active_key_id[0] == '\0')
        r = kv_error_set(
            KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
            "tenant %s has no active key; a tenant admin must generate or upload one first",
            tr->id);
    if (kv_ok(r) && e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED &&
        strcmp(e->kek_id, tr->active_key_id) == 0)
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "environment %s is already encrypted with the active key %s", e->id,
                         tr->active_key_id);
    if (kv_ok(r))
        r = vault_env_move(v, ctx, e, tr->active_key_id,
                           HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED, reply);
    pthread_mutex_unlock(&v->lifecycle);
    kv_pb_free(&e->base);
    kv_pb_free(&tr->base);
    return r;
}

VAULT_HANDLER(vault_rpc_return_to_service_key, Hsmvault__V1__ReturnToServiceKeyRequest,
              hsmvault__v1__return_to_service_key_request__descriptor)
static kv_result
vault_rpc_return_to_service_key_impl(vault *v, const rpc_ctx *ctx,
                                     const Hsmvault__V1__ReturnToServiceKeyRequest *req,
                                     rpc_reply *reply)
{
    EnvironmentRecord *e = NULL;
    TenantRecord *tr = NULL;
    KV_GUARD(vault_env_begin(v, ctx, req->environment_id, ROLE_BIT(ROLE_ENVIRONMENT_ADMIN),
                             "return this environment to the service key", &e, &tr));
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = vault_env_must_be_active(e);
    if (kv_ok(r) && e->encryption != HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED)
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "environment %s already uses the service key", e->id);
    /* seed 001: a production environment is confirmed by typing its name */
    if (kv_ok(r) && e->type == HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION &&
        strcmp(req->confirmation_name, e->name) != 0)
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "environment %s is a production environment: confirm by giving its name "
                         "'%s' as the confirmation",
                         e->id, e->name);
    if (kv_ok(r))
        r = vault_env_move(v, ctx, e, tr->service_key_id,
                           HSMVAULT__V1__ENCRYPTION__ENCRYPTION_SERVICE_MANAGED, reply);
    pthread_mutex_unlock(&v->lifecycle);
    kv_pb_free(&e->base);
    kv_pb_free(&tr->base);
    return r;
}

/* ---- restore, copy, reset (seed 001 "Environment database operations") --- */

/* Restore: into the environment the backup came from, or another one
 * encrypted with the same customer-managed key.  Copy: only into another
 * environment encrypted with the same customer-managed key.  Service-managed
 * environments keep to their tenant's service key the same way.  Neither
 * into or out of a locked or deleted environment. */
static void vault_transfer_verdict(const EnvironmentRecord *src, const EnvironmentRecord *dst,
                                   bool copy, bool *allowed, char *reason, size_t cap)
{
    *allowed = false;
    const char *op = copy ? "copy" : "restore";
    if (dst->state != HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE) {
        snprintf(reason, cap, "cannot %s into environment %s: it is %s", op, dst->id,
                 dst->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED
                     ? "locked"
                     : "deleted");
        return;
    }
    if (src->state != HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE) {
        snprintf(reason, cap, "cannot %s from environment %s: it is %s", op, src->id,
                 src->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED
                     ? "locked"
                     : "deleted");
        return;
    }
    bool same_env = strcmp(src->id, dst->id) == 0;
    if (copy && same_env) {
        snprintf(reason, cap, "a copy goes into another environment, not into %s itself", src->id);
        return;
    }
    if (!copy && same_env) {
        *allowed = true;
        snprintf(reason, cap, "restore into the environment the backup was taken from");
        return;
    }
    bool cm = src->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED;
    if (strcmp(src->tenant_id, dst->tenant_id) != 0 || src->encryption != dst->encryption ||
        strcmp(src->kek_id, dst->kek_id) != 0) {
        if (cm)
            snprintf(reason, cap,
                     "environment %s is encrypted with customer-managed key %s; environment %s is "
                     "not encrypted with "
                     "that key (apply it there first)",
                     src->id, src->kek_id, dst->id);
        else
            snprintf(reason, cap, "environments %s and %s are not encrypted with the same key",
                     src->id, dst->id);
        return;
    }
    *allowed = true;
    snprintf(reason, cap, "both environments are encrypted with %s key %s",
             cm ? "customer-managed" : "service", src->kek_id);
}

static kv_result vault_authorize_transfer(vault *v, const rpc_ctx *ctx,
                                          const Hsmvault__V1__AuthorizeTransferRequest *req,
                                          bool copy, rpc_reply *reply)
{
    const char *action = copy ? "authorize copies" : "authorize restores";
    EnvironmentRecord *src = NULL, *dst = NULL;
    KV_GUARD(vault_env_begin(v, ctx, req->source_environment_id, ROLE_BIT(ROLE_STORAGE_NODE),
                             action, &src, NULL));
    kv_result r = vault_env_begin(v, ctx, req->target_environment_id, ROLE_BIT(ROLE_STORAGE_NODE),
                                  action, &dst, NULL);
    if (kv_ok(r)) {
        char reason[512];
        bool allowed;
        vault_transfer_verdict(src, dst, copy, &allowed, reason, sizeof(reason));
        KV_LOG_INFO("%s from %s into %s for %s: %s (%s)", copy ? "copy" : "restore", src->id,
                    dst->id, ctx->principal, allowed ? "allowed" : "refused", reason);
        Hsmvault__V1__AuthorizeTransferResponse resp =
            HSMVAULT__V1__AUTHORIZE_TRANSFER_RESPONSE__INIT;
        resp.allowed = allowed;
        resp.reason = reason;
        r = vault_reply(reply, &resp.base, false);
    }
    kv_pb_free(&src->base);
    if (dst != NULL) kv_pb_free(&dst->base);
    return r;
}

VAULT_HANDLER(vault_rpc_authorize_restore, Hsmvault__V1__AuthorizeTransferRequest,
              hsmvault__v1__authorize_transfer_request__descriptor)
static kv_result vault_rpc_authorize_restore_impl(vault *v, const rpc_ctx *ctx,
                                                  const Hsmvault__V1__AuthorizeTransferRequest *req,
                                                  rpc_reply *reply)
{
    return vault_authorize_transfer(v, ctx, req, false, reply);
}

VAULT_HANDLER(vault_rpc_authorize_copy, Hsmvault__V1__AuthorizeTransferRequest,
              hsmvault__v1__authorize_transfer_request__descriptor)
static kv_result vault_rpc_authorize_copy_impl(vault *v, const rpc_ctx *ctx,
                                               const Hsmvault__V1__AuthorizeTransferRequest *req,
                                               rpc_reply *reply)
{
    return vault_authorize_transfer(v, ctx, req, true, reply);
}

typedef struct {
    const char *env_id;
    const char *service_key_id;
    DatabaseRecord *fresh; /* new DEKs, one per database, same ids */
    size_t n;
} vault_reset_ctx;

static kv_result vault_reset_commit(store_txn *t, void *arg)
{
    const vault_reset_ctx *c = arg;
    EnvironmentRecord *e = NULL;
    KV_GUARD(vault_get_environment(t, c->env_id, &e));
    kv_result r = vault_env_must_be_active(e);
    for (size_t i = 0; kv_ok(r) && i < c->n; i++) {
        char key[2 * VAULT_ID_MAX];
        vault_db_store_key(c->env_id, c->fresh[i].id, key, sizeof(key));
        r = store_put(t, STORE_DATABASES, key, &c->fresh[i].base);
    }
    if (kv_ok(r)) {
        char *own = e->kek_id;
        e->kek_id = (char *)(uintptr_t)c->service_key_id;
        e->encryption = HSMVAULT__V1__ENCRYPTION__ENCRYPTION_SERVICE_MANAGED;
        r = store_put(t, STORE_ENVIRONMENTS, e->id, &e->base);
        e->kek_id = own;
    }
    kv_pb_free(&e->base);
    return r;
}

/* Reset: the environment's DEKs are replaced by fresh ones under the service
 * key, so its data and backups can no longer be read by anyone; the old
 * wrapped DEKs are overwritten in the same commit. */
VAULT_HANDLER(vault_rpc_reset_environment, Hsmvault__V1__ResetEnvironmentRequest,
              hsmvault__v1__reset_environment_request__descriptor)
static kv_result vault_rpc_reset_environment_impl(vault *v, const rpc_ctx *ctx,
                                                  const Hsmvault__V1__ResetEnvironmentRequest *req,
                                                  rpc_reply *reply)
{
    EnvironmentRecord *e = NULL;
    TenantRecord *tr = NULL;
    KeyRecord *svc = NULL;
    store_list dbs = {0};
    vault_reset_ctx c = {.env_id = req->environment_id};
    KV_GUARD(vault_env_begin(v, ctx, req->environment_id,
                             ROLE_BIT(ROLE_ENVIRONMENT_ADMIN) | ROLE_BIT(ROLE_STORAGE_NODE),
                             "reset this environment", &e, &tr));
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = vault_env_must_be_active(e);
    if (kv_ok(r) && strcmp(req->confirmation_name, e->name) != 0)
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "a reset deletes the data and backups of environment %s: confirm by "
                         "giving its name '%s'",
                         e->id, e->name);
    store_txn *t = NULL;
    if (kv_ok(r)) r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        char prefix[VAULT_ID_MAX + 2];
        snprintf(prefix, sizeof(prefix), "%s/", e->id);
        r = vault_get_key(t, tr->id, tr->service_key_id, &svc);
        if (kv_ok(r))
            r = store_collect(t, STORE_DATABASES, prefix,
                              &hsmvault__store__database_record__descriptor, NULL, NULL, &dbs);
        store_read_end(t);
    }
    if (kv_ok(r)) {
        c.fresh = calloc(dbs.n ? dbs.n : 1, sizeof(*c.fresh));
        if (c.fresh == NULL)
            r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    }
    for (size_t i = 0; kv_ok(r) && i < dbs.n; i++) {
        const DatabaseRecord *old = (const DatabaseRecord *)dbs.items[i];
        uint8_t dek[VAULT_DEK_BYTES];
        c.fresh[i] = *old;
        c.fresh[i].wrapped_dek.data = NULL;
        c.fresh[i].wrapped_dek.len = 0;
        c.fresh[i].dek_version = old->dek_version + 1;
        c.n = i + 1;
        r = hsm_random(v->hsm, dek, sizeof(dek));
        if (kv_ok(r)) r = vault_wrap_dek(v, svc, dek, sizeof(dek), &c.fresh[i]);
        kv_wipe(dek, sizeof(dek));
    }
    if (kv_ok(r)) r = store_update(v->store, vault_reset_commit, &c);
    pthread_mutex_unlock(&v->lifecycle);
    if (kv_ok(r)) {
        KV_LOG_WARN(
            "environment %s reset by %s: %zu database keys replaced, back on the service key",
            e->id, ctx->principal, c.n);
        r = store_read_begin(v->store, &t);
        EnvironmentRecord *now = NULL;
        if (kv_ok(r)) {
            r = vault_get_environment(t, e->id, &now);
            store_read_end(t);
        }
        if (kv_ok(r)) {
            Hsmvault__V1__Environment api;
            vault_env_to_api(now, &api);
            r = vault_reply(reply, &api.base, false);
            kv_pb_free(&now->base);
        }
    }
    for (size_t i = 0; c.fresh != NULL && i < c.n; i++)
        free(c.fresh[i].wrapped_dek.data);
    free(c.fresh);
    store_list_free(&dbs);
    if (svc != NULL) kv_pb_free(&svc->base);
    kv_pb_free(&e->base);
    kv_pb_free(&tr->base);
    return r;
}
