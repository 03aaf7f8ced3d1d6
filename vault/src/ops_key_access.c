/*
 * ops_key_access.c: the KeyAccess service (storage nodes): create a database
 * DEK (random from the token, wrapped under the environment's KEK) and unwrap
 * it inside the token, only for environments the node is bound to.
 * The plaintext DEK exists only in a kv_secret and the (wiped) reply.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "vault.h"

typedef struct {
    DatabaseRecord *db;
    const char *name;
} vault_new_db_ctx;

static kv_result vault_scan_db_name(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    const vault_new_db_ctx *c = arg;
    const DatabaseRecord *d = (const DatabaseRecord *)*msg;
    KV_ENSURE(strcmp(d->name, c->name) != 0, KV_ERR_ALREADY_EXISTS,
              "environment %s already has a database named '%s' (%s)", d->environment_id, d->name,
              d->id);
    return KV_SUCCESS;
}

static kv_result vault_new_db_commit(store_txn *t, void *arg)
{
    vault_new_db_ctx *c = arg;
    EnvironmentRecord *e = NULL;
    KV_GUARD(vault_get_environment(t, c->db->environment_id, &e));
    /* The KEK must not have moved since the DEK was wrapped. */
    bool same = strcmp(e->kek_id, c->db->kek_id) == 0 &&
                e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE;
    kv_pb_free(&e->base);
    KV_ENSURE(same, KV_ERR_ABORTED, "environment %s changed while the database key was made; retry",
              c->db->environment_id);
    char prefix[VAULT_ID_MAX + 2], k[2 * VAULT_ID_MAX];
    snprintf(prefix, sizeof(prefix), "%s/", c->db->environment_id);
    KV_GUARD(store_scan(t, STORE_DATABASES, prefix, &hsmvault__store__database_record__descriptor,
                        vault_scan_db_name, c));
    vault_db_store_key(c->db->environment_id, c->db->id, k, sizeof(k));
    return store_put(t, STORE_DATABASES, k, &c->db->base);
}

static kv_result vault_reply_dek(vault *v, const DatabaseRecord *db, const kv_secret *dek,
                                 rpc_reply *reply)
{
    Hsmvault__V1__Database api;
    vault_db_to_api(db, &api);
    Hsmvault__V1__DatabaseKey resp = HSMVAULT__V1__DATABASE_KEY__INIT;
    resp.database = &api;
    resp.dek = (ProtobufCBinaryData){dek->len, dek->data};
    resp.lease_seconds = v->lease_seconds;
    return vault_reply(reply, &resp.base, true);
}

/* Role check, environment load and scope check for a storage node. */
static kv_result vault_node_env(store_txn *t, const rpc_ctx *ctx, const char *env_id,
                                const char *action, EnvironmentRecord **env)
{
    KV_GUARD(vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_STORAGE_NODE), NULL, NULL, action));
    KV_GUARD(vault_get_environment(t, env_id, env));
    kv_result r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_STORAGE_NODE), (*env)->tenant_id,
                                  env_id, action);
    if (kv_ok(r) && (*env)->state != HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE)
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "environment %s is %s: its database keys cannot be used", env_id,
                         (*env)->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED
                             ? "locked"
                             : "deleted");
    if (kv_failed(r)) {
        kv_pb_free(&(*env)->base);
        *env = NULL;
    }
    return r;
}

VAULT_HANDLER(vault_rpc_create_database_key, Hsmvault__V1__CreateDatabaseKeyRequest,
              hsmvault__v1__create_database_key_request__descriptor)
static kv_result
vault_rpc_create_database_key_impl(vault *v, const rpc_ctx *ctx,
                                   const Hsmvault__V1__CreateDatabaseKeyRequest *req,
                                   rpc_reply *reply)
{
    store_txn *t;
    EnvironmentRecord *e = NULL;
    KeyRecord *kek = NULL;
    kv_secret dek = KV_SECRET_INIT;
    KV_GUARD(vault_check_text("database_name", req->database_name, 128));
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        r = vault_node_env(t, ctx, req->environment_id, "create database keys", &e);
        if (kv_ok(r)) r = vault_get_key(t, e->tenant_id, e->kek_id, &kek);
        store_read_end(t);
    }
    if (kv_ok(r)) r = kv_secret_alloc(&dek, VAULT_DEK_BYTES);
    if (kv_ok(r)) r = hsm_random(v->hsm, dek.data, VAULT_DEK_BYTES);
    if (kv_ok(r)) {
        dek.len = VAULT_DEK_BYTES;
        char db_id[VAULT_ID_MAX];
        vault_new_id("db", db_id);
        DatabaseRecord db = HSMVAULT__STORE__DATABASE_RECORD__INIT;
        db.id = db_id;
        db.environment_id = e->id;
        db.name = req->database_name;
        db.dek_version = 1;
        db.created_at = kv_clock_now();
        r = vault_wrap_dek(v, kek, dek.data, dek.len, &db);
        if (kv_ok(r)) {
            vault_new_db_ctx c = {.db = &db, .name = req->database_name};
            r = store_update(v->store, vault_new_db_commit, &c);
        }
        if (kv_ok(r)) {
            KV_LOG_INFO("database %s (%s) created in environment %s by %s under key %s", db_id,
                        req->database_name, e->id, ctx->principal, kek->id);
            r = vault_reply_dek(v, &db, &dek, reply);
        }
        free(db.wrapped_dek.data);
    }
    pthread_mutex_unlock(&v->lifecycle);
    kv_secret_free(&dek);
    if (e != NULL) kv_pb_free(&e->base);
    if (kek != NULL) kv_pb_free(&kek->base);
    return r;
}

static kv_result vault_unwrap(vault *v, const rpc_ctx *ctx,
                              const Hsmvault__V1__UnwrapDatabaseKeyRequest *req, rpc_reply *reply)
{
    store_txn *t;
    EnvironmentRecord *e = NULL;
    DatabaseRecord *db = NULL;
    KeyRecord *kek = NULL;
    kv_secret dek = KV_SECRET_INIT;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_node_env(t, ctx, req->environment_id, "unwrap database keys", &e);
    if (kv_ok(r)) r = vault_get_database(t, e->id, req->database_id, &db);
    if (kv_ok(r)) r = vault_get_key(t, e->tenant_id, db->kek_id, &kek);
    store_read_end(t);
    if (kv_ok(r)) r = rpc_ctx_check_deadline(ctx);
    if (kv_ok(r)) r = vault_unwrap_dek(v, kek, db, &dek);
    if (kv_ok(r)) r = vault_reply_dek(v, db, &dek, reply);
    kv_secret_free(&dek);
    if (e != NULL) kv_pb_free(&e->base);
    if (db != NULL) kv_pb_free(&db->base);
    if (kek != NULL) kv_pb_free(&kek->base);
    return r;
}

VAULT_HANDLER(vault_rpc_unwrap_database_key, Hsmvault__V1__UnwrapDatabaseKeyRequest,
              hsmvault__v1__unwrap_database_key_request__descriptor)
static kv_result
vault_rpc_unwrap_database_key_impl(vault *v, const rpc_ctx *ctx,
                                   const Hsmvault__V1__UnwrapDatabaseKeyRequest *req,
                                   rpc_reply *reply)
{
    return vault_unwrap(v, ctx, req, reply);
}

VAULT_HANDLER(vault_rpc_renew_lease, Hsmvault__V1__UnwrapDatabaseKeyRequest,
              hsmvault__v1__unwrap_database_key_request__descriptor)
static kv_result vault_rpc_renew_lease_impl(vault *v, const rpc_ctx *ctx,
                                            const Hsmvault__V1__UnwrapDatabaseKeyRequest *req,
                                            rpc_reply *reply)
{
    /* A renewal is a fresh unwrap: it fails exactly when the key may no
     * longer be used (environment locked, key deleted). */
    return vault_unwrap(v, ctx, req, reply);
}

VAULT_HANDLER(vault_rpc_list_databases, Hsmvault__V1__ListDatabasesRequest,
              hsmvault__v1__list_databases_request__descriptor)
static kv_result vault_rpc_list_databases_impl(vault *v, const rpc_ctx *ctx,
                                               const Hsmvault__V1__ListDatabasesRequest *req,
                                               rpc_reply *reply)
{
    store_txn *t;
    EnvironmentRecord *e = NULL;
    store_list l = {0};
    unsigned roles =
        ROLE_BIT(ROLE_STORAGE_NODE) | ROLE_BIT(ROLE_ENVIRONMENT_ADMIN) | ROLE_BIT(ROLE_AUDITOR);
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, roles, NULL, NULL, "list databases");
    if (kv_ok(r)) r = vault_get_environment(t, req->environment_id, &e);
    if (kv_ok(r))
        r = vault_authorize(t, ctx->principal, roles, e->tenant_id, e->id, "list databases");
    char prefix[VAULT_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s/", req->environment_id);
    if (kv_ok(r))
        r = store_collect(t, STORE_DATABASES, prefix, &hsmvault__store__database_record__descriptor,
                          NULL, NULL, &l);
    store_read_end(t);
    Hsmvault__V1__Database *apis = calloc(l.n ? l.n : 1, sizeof(*apis));
    Hsmvault__V1__Database **ptrs = calloc(l.n ? l.n : 1, sizeof(*ptrs));
    if (kv_ok(r) && (apis == NULL || ptrs == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    if (kv_ok(r)) {
        for (size_t i = 0; i < l.n; i++) {
            vault_db_to_api((const DatabaseRecord *)l.items[i], &apis[i]);
            ptrs[i] = &apis[i];
        }
        Hsmvault__V1__ListDatabasesResponse resp = HSMVAULT__V1__LIST_DATABASES_RESPONSE__INIT;
        resp.n_databases = l.n;
        resp.databases = ptrs;
        r = vault_reply(reply, &resp.base, false);
    }
    store_list_free(&l);
    free(apis);
    free(ptrs);
    if (e != NULL) kv_pb_free(&e->base);
    return r;
}
