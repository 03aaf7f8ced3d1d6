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
    r = vault_rewrap_environment(v, e->id, kek, enc);
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
