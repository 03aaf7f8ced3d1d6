/*
 * ops_pages.c: the Pages service tdenode serves to database engines and
 * backup tooling (proto/hsmvault/v1/pages.proto), over the existing server
 * adapter (vault_rpc: mTLS, principal from the client certificate).
 *
 * Who may call what (docs/tdenode.md "Authorization"): tdenode's config
 * grants principals of its CA the role `engine` (databases and page I/O) or
 * `admin` (that, plus backup, restore, copy, reset), for every environment
 * or one.  Anything else is PERMISSION_DENIED naming the principal, the
 * action and the grant it needs.
 *
 * Must never put page data in a log line or an error message, and always
 * mark replies that carry page data sensitive (wiped before free).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_base64.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "node.h"

/* ---- authorization ---------------------------------------------------------- */

static bool ops_allowed(const tde_node *n, const char *principal, tde_role need, const char *env_id)
{
    for (size_t i = 0; i < n->cfg.n_grants; i++) {
        const tde_grant *g = &n->cfg.grants[i];
        if (strcmp(g->principal, principal) != 0) continue;
        if (g->role != TDE_ROLE_ADMIN && g->role != need) continue;
        if (g->environment_id[0] == '\0' ||
            (env_id != NULL && strcmp(g->environment_id, env_id) == 0))
            return true;
    }
    return false;
}

static kv_result ops_authorize(const tde_node *n, const rpc_ctx *ctx, tde_role need,
                               const char *env_id, const char *action)
{
    if (ops_allowed(n, ctx->principal, need, env_id)) return KV_SUCCESS;
    KV_BAIL(KV_ERR_PERMISSION_DENIED,
            "principal %s may not %s on this node: it needs an '%s' grant%s%s in tdenode's "
            "configuration",
            ctx->principal, action, need == TDE_ROLE_ADMIN ? "admin" : "engine",
            env_id != NULL && env_id[0] ? " for environment " : "",
            env_id != NULL && env_id[0] ? env_id : "");
}

static kv_result ops_ref(const Hsmvault__V1__NodeDatabaseRef *ref, const char **env,
                         const char **db)
{
    KV_ENSURE(ref != NULL, KV_ERR_INVALID_ARGUMENT, "the request names no database");
    KV_GUARD(tde_check_id("environment_id", ref->environment_id));
    KV_GUARD(tde_check_id("database_id", ref->database_id));
    *env = ref->environment_id;
    *db = ref->database_id;
    return KV_SUCCESS;
}

/* Authorizes and finds the database a request names. */
static kv_result ops_db(tde_node *n, const rpc_ctx *ctx, const Hsmvault__V1__NodeDatabaseRef *ref,
                        tde_role need, const char *action, tde_db **db)
{
    const char *env, *id;
    KV_GUARD(ops_ref(ref, &env, &id));
    KV_GUARD(ops_authorize(n, ctx, need, env, action));
    return tde_node_find(n, env, id, db);
}

/* ---- replies ------------------------------------------------------------------ */

static void ops_db_to_api(tde_db *db, Hsmvault__V1__NodeDatabase *out)
{
    hsmvault__v1__node_database__init(out);
    out->environment_id = db->env_id;
    out->database_id = db->db_id;
    out->tenant_id = db->tenant_id;
    out->name = db->name;
    out->dek_version = db->dek_version;
    pthread_mutex_lock(&db->lease_mu);
    out->state = (char *)(uintptr_t)(db->removed ? "reset" : tde_db_state_name(db->state));
    out->reason = db->state == TDE_DB_OPEN ? "" : db->reason;
    out->lease_expires_at = db->state == TDE_DB_OPEN ? db->lease_expires_wall : 0;
    pthread_mutex_unlock(&db->lease_mu);
    out->page_span = tde_db_page_span(db);
    pthread_rwlock_rdlock(&db->io);
    if (db->attached) {
        out->pages_sealed = tde_nonce_used(&db->nonce);
        out->journal_pages = (uint32_t)tde_journal_count(&db->journal);
    }
    pthread_rwlock_unlock(&db->io);
    out->seal_limit = db->node->cfg.dek_write_limit;
}

static kv_result ops_reply(rpc_reply *reply, const ProtobufCMessage *msg, bool sensitive)
{
    KV_GUARD(kv_pb_pack(msg, &reply->data, &reply->len));
    reply->sensitive = sensitive;
    return KV_SUCCESS;
}

static kv_result ops_reply_db(rpc_reply *reply, tde_db *db)
{
    Hsmvault__V1__NodeDatabase api;
    ops_db_to_api(db, &api);
    return ops_reply(reply, &api.base, false);
}

/* ---- handlers --------------------------------------------------------------- */

typedef kv_result (*ops_fn)(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *req,
                            rpc_reply *reply);

static kv_result ops_create_database(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                     rpc_reply *reply)
{
    const Hsmvault__V1__CreateNodeDatabaseRequest *req = (const void *)m;
    KV_GUARD(tde_check_id("environment_id", req->environment_id));
    KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ENGINE, req->environment_id, "create databases"));
    tde_db *db = NULL;
    KV_GUARD(tde_node_create_db(n, req->environment_id, req->name, &db));
    KV_LOG_INFO("database %s (%s) created in environment %s by %s", db->db_id, db->name, db->env_id,
                ctx->principal);
    return ops_reply_db(reply, db);
}

static kv_result ops_open_database(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                   rpc_reply *reply)
{
    const char *env, *id;
    KV_GUARD(ops_ref((const void *)m, &env, &id));
    KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ENGINE, env, "open databases"));
    tde_db *db = NULL;
    KV_GUARD(tde_node_open_db(n, env, id, true, &db));
    return ops_reply_db(reply, db);
}

static kv_result ops_get_database(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                  rpc_reply *reply)
{
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, (const void *)m, TDE_ROLE_ENGINE, "read database status", &db));
    return ops_reply_db(reply, db);
}

static kv_result ops_list_databases(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                    rpc_reply *reply)
{
    const Hsmvault__V1__ListNodeDatabasesRequest *req = (const void *)m;
    if (req->environment_id[0] != '\0') {
        KV_GUARD(tde_check_id("environment_id", req->environment_id));
        KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ENGINE, req->environment_id, "list databases"));
    } else {
        bool any = false;
        for (size_t i = 0; i < n->cfg.n_grants && !any; i++)
            any = strcmp(n->cfg.grants[i].principal, ctx->principal) == 0;
        KV_ENSURE(any, KV_ERR_PERMISSION_DENIED,
                  "principal %s may not list databases on this node: it has no grant in "
                  "tdenode's configuration",
                  ctx->principal);
    }
    tde_db **all = NULL;
    size_t count = 0;
    KV_GUARD(tde_node_list(n, req->environment_id, &all, &count));
    Hsmvault__V1__NodeDatabase *apis = calloc(count ? count : 1, sizeof(*apis));
    Hsmvault__V1__NodeDatabase **ptrs = calloc(count ? count : 1, sizeof(*ptrs));
    kv_result r = apis != NULL && ptrs != NULL ? KV_SUCCESS
                                               : kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__,
                                                              __LINE__, "out of memory");
    size_t k = 0;
    for (size_t i = 0; kv_ok(r) && i < count; i++) {
        /* Only what the caller may see. */
        if (!ops_allowed(n, ctx->principal, TDE_ROLE_ENGINE, all[i]->env_id)) continue;
        ops_db_to_api(all[i], &apis[k]);
        ptrs[k] = &apis[k];
        k++;
    }
    if (kv_ok(r)) {
        Hsmvault__V1__ListNodeDatabasesResponse resp =
            HSMVAULT__V1__LIST_NODE_DATABASES_RESPONSE__INIT;
        resp.n_databases = k;
        resp.databases = ptrs;
        r = ops_reply(reply, &resp.base, false);
    }
    free(apis);
    free(ptrs);
    free(all);
    return r;
}

/* Reads count pages into one reply (page data: sensitive). */
static kv_result ops_read(tde_db *db, const uint64_t *numbers, size_t count, bool many,
                          rpc_reply *reply)
{
    KV_ENSURE(count >= 1 && count <= TDE_MAX_BATCH, KV_ERR_INVALID_ARGUMENT,
              "a read asks for 1 to %u pages, not %zu", TDE_MAX_BATCH, count);
    uint8_t *data = malloc(count * TDE_PAGE_DATA);
    Hsmvault__V1__Page *pages = calloc(count, sizeof(*pages));
    Hsmvault__V1__Page **ptrs = calloc(count, sizeof(*ptrs));
    kv_result r =
        data != NULL && pages != NULL && ptrs != NULL
            ? KV_SUCCESS
            : kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    for (size_t i = 0; kv_ok(r) && i < count; i++) {
        r = tde_db_read(db, numbers[i], data + i * TDE_PAGE_DATA);
        hsmvault__v1__page__init(&pages[i]);
        pages[i].number = numbers[i];
        pages[i].data = (ProtobufCBinaryData){TDE_PAGE_DATA, data + i * TDE_PAGE_DATA};
        ptrs[i] = &pages[i];
    }
    if (kv_ok(r) && many) {
        Hsmvault__V1__ReadPagesResponse resp = HSMVAULT__V1__READ_PAGES_RESPONSE__INIT;
        resp.n_pages = count;
        resp.pages = ptrs;
        r = ops_reply(reply, &resp.base, true);
    } else if (kv_ok(r)) {
        r = ops_reply(reply, &pages[0].base, true);
    }
    if (data != NULL) kv_wipe(data, count * TDE_PAGE_DATA);
    free(data);
    free(pages);
    free(ptrs);
    return r;
}

static kv_result ops_read_page(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                               rpc_reply *reply)
{
    const Hsmvault__V1__ReadPageRequest *req = (const void *)m;
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, req->database, TDE_ROLE_ENGINE, "read pages", &db));
    return ops_read(db, &req->number, 1, false, reply);
}

static kv_result ops_read_pages(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                rpc_reply *reply)
{
    const Hsmvault__V1__ReadPagesRequest *req = (const void *)m;
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, req->database, TDE_ROLE_ENGINE, "read pages", &db));
    return ops_read(db, req->numbers, req->n_numbers, true, reply);
}

static kv_result ops_write(tde_db *db, Hsmvault__V1__Page *const *pages, size_t count, bool flush,
                           rpc_reply *reply)
{
    KV_ENSURE(count >= 1 && count <= TDE_MAX_BATCH, KV_ERR_INVALID_ARGUMENT,
              "a write carries 1 to %u pages, not %zu", TDE_MAX_BATCH, count);
    uint64_t numbers[TDE_MAX_BATCH];
    const uint8_t *data[TDE_MAX_BATCH];
    for (size_t i = 0; i < count; i++) {
        KV_ENSURE(pages[i] != NULL && pages[i]->data.len == TDE_PAGE_DATA, KV_ERR_INVALID_ARGUMENT,
                  "page %llu: page data must be exactly %u bytes (8 KiB on disk less the %u-byte "
                  "header and %u-byte tag), not %zu",
                  pages[i] != NULL ? (unsigned long long)pages[i]->number : 0ull, TDE_PAGE_DATA,
                  TDE_PAGE_HEADER, TDE_PAGE_TAG, pages[i] != NULL ? pages[i]->data.len : 0);
        numbers[i] = pages[i]->number;
        data[i] = pages[i]->data.data;
    }
    KV_GUARD(tde_db_write(db, numbers, data, count, flush));
    Hsmvault__V1__WritePagesResponse resp = HSMVAULT__V1__WRITE_PAGES_RESPONSE__INIT;
    resp.pages_written = (uint32_t)count;
    resp.flushed = flush;
    return ops_reply(reply, &resp.base, false);
}

static kv_result ops_write_page(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                rpc_reply *reply)
{
    const Hsmvault__V1__WritePageRequest *req = (const void *)m;
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, req->database, TDE_ROLE_ENGINE, "write pages", &db));
    KV_ENSURE(req->page != NULL, KV_ERR_INVALID_ARGUMENT, "the request carries no page");
    Hsmvault__V1__Page *const pages[1] = {req->page};
    return ops_write(db, pages, 1, req->flush, reply);
}

static kv_result ops_write_pages(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                 rpc_reply *reply)
{
    const Hsmvault__V1__WritePagesRequest *req = (const void *)m;
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, req->database, TDE_ROLE_ENGINE, "write pages", &db));
    return ops_write(db, req->pages, req->n_pages, req->flush, reply);
}

static kv_result ops_flush(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                           rpc_reply *reply)
{
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, (const void *)m, TDE_ROLE_ENGINE, "flush databases", &db));
    KV_GUARD(tde_db_flush(db));
    Hsmvault__V1__FlushResponse resp = HSMVAULT__V1__FLUSH_RESPONSE__INIT;
    return ops_reply(reply, &resp.base, false);
}

static void ops_backup_to_api(const BackupManifest *b, Hsmvault__V1__NodeBackup *out, char hex[65])
{
    hsmvault__v1__node_backup__init(out);
    out->backup_id = b->backup_id;
    out->environment_id = b->environment_id;
    out->database_id = b->database_id;
    out->tenant_id = b->tenant_id;
    out->database_name = b->database_name;
    out->dek_version = b->dek_version;
    out->page_count = b->page_count;
    out->page_span = b->page_span;
    kv_hex_encode(b->pages_sha256.data, b->pages_sha256.len == 32 ? 32 : 0, hex);
    out->pages_sha256 = hex;
    out->created_at = b->created_at;
    out->created_by = b->created_by;
}

static kv_result ops_backup(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                            rpc_reply *reply)
{
    tde_db *db = NULL;
    KV_GUARD(ops_db(n, ctx, (const void *)m, TDE_ROLE_ADMIN, "back up databases", &db));
    BackupManifest *b = NULL;
    KV_GUARD(tde_backup_create(n, db, ctx->principal, false, &b, NULL, 0));
    Hsmvault__V1__NodeBackup api;
    char hex[65];
    ops_backup_to_api(b, &api, hex);
    kv_result r = ops_reply(reply, &api.base, false);
    kv_pb_free(&b->base);
    return r;
}

static kv_result ops_list_backups(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                                  rpc_reply *reply)
{
    const Hsmvault__V1__ListNodeBackupsRequest *req = (const void *)m;
    if (req->environment_id[0] != '\0')
        KV_GUARD(tde_check_id("environment_id", req->environment_id));
    if (req->database_id[0] != '\0') KV_GUARD(tde_check_id("database_id", req->database_id));
    KV_ENSURE(req->environment_id[0] != '\0' || req->database_id[0] == '\0',
              KV_ERR_INVALID_ARGUMENT, "a database id needs its environment id");
    KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ADMIN, req->environment_id, "list backups"));
    BackupManifest **all = NULL;
    size_t count = 0;
    KV_GUARD(tde_backup_list(n, req->environment_id, req->database_id, &all, &count));
    Hsmvault__V1__NodeBackup *apis = calloc(count ? count : 1, sizeof(*apis));
    Hsmvault__V1__NodeBackup **ptrs = calloc(count ? count : 1, sizeof(*ptrs));
    char(*hex)[65] = calloc(count ? count : 1, sizeof(*hex));
    kv_result r =
        apis != NULL && ptrs != NULL && hex != NULL
            ? KV_SUCCESS
            : kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    for (size_t i = 0; kv_ok(r) && i < count; i++) {
        ops_backup_to_api(all[i], &apis[i], hex[i]);
        ptrs[i] = &apis[i];
    }
    if (kv_ok(r)) {
        Hsmvault__V1__ListNodeBackupsResponse resp = HSMVAULT__V1__LIST_NODE_BACKUPS_RESPONSE__INIT;
        resp.n_backups = count;
        resp.backups = ptrs;
        r = ops_reply(reply, &resp.base, false);
    }
    for (size_t i = 0; i < count; i++)
        kv_pb_free(&all[i]->base);
    free(all);
    free(apis);
    free(ptrs);
    free(hex);
    return r;
}

/* The target of a restore or copy: an existing database id, or a new name. */
static kv_result ops_target(const char *env, const char *db, const char *name)
{
    KV_GUARD(tde_check_id("target_environment_id", env));
    KV_ENSURE((db[0] != '\0') != (name[0] != '\0'), KV_ERR_INVALID_ARGUMENT,
              "name the target with exactly one of target_database_id and new_database_name");
    if (db[0] != '\0') KV_GUARD(tde_check_id("target_database_id", db));
    return KV_SUCCESS;
}

static kv_result ops_restore(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                             rpc_reply *reply)
{
    const Hsmvault__V1__RestoreRequest *req = (const void *)m;
    KV_GUARD(tde_check_id("backup_id", req->backup_id));
    KV_GUARD(
        ops_target(req->target_environment_id, req->target_database_id, req->new_database_name));
    KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ADMIN, req->target_environment_id,
                           "restore into this environment"));
    BackupManifest *b = NULL;
    char dir[PATH_MAX];
    KV_GUARD(tde_backup_find(n, req->backup_id, &b, dir, sizeof(dir)));
    kv_result r = ops_authorize(n, ctx, TDE_ROLE_ADMIN, b->environment_id,
                                "restore backups of this environment");
    tde_db *db = NULL;
    if (kv_ok(r))
        r = tde_backup_restore(n, b, dir, false, req->target_environment_id,
                               req->target_database_id, req->new_database_name, &db);
    if (kv_ok(r)) {
        KV_LOG_INFO("backup %s restored into database %s (environment %s) by %s", b->backup_id,
                    db->db_id, db->env_id, ctx->principal);
        r = ops_reply_db(reply, db);
    }
    kv_pb_free(&b->base);
    return r;
}

static kv_result ops_copy(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                          rpc_reply *reply)
{
    const Hsmvault__V1__CopyRequest *req = (const void *)m;
    tde_db *src = NULL, *db = NULL;
    KV_GUARD(
        ops_db(n, ctx, req->source, TDE_ROLE_ADMIN, "copy databases of this environment", &src));
    KV_GUARD(
        ops_target(req->target_environment_id, req->target_database_id, req->new_database_name));
    KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ADMIN, req->target_environment_id,
                           "copy into this environment"));
    KV_GUARD(tde_db_copy(n, src, req->target_environment_id, req->target_database_id,
                         req->new_database_name, ctx->principal, &db));
    KV_LOG_INFO("database %s (environment %s) copied into %s (environment %s) by %s", src->db_id,
                src->env_id, db->db_id, db->env_id, ctx->principal);
    return ops_reply_db(reply, db);
}

static kv_result ops_reset(tde_node *n, const rpc_ctx *ctx, const ProtobufCMessage *m,
                           rpc_reply *reply)
{
    const Hsmvault__V1__NodeResetRequest *req = (const void *)m;
    KV_GUARD(tde_check_id("environment_id", req->environment_id));
    KV_GUARD(ops_authorize(n, ctx, TDE_ROLE_ADMIN, req->environment_id, "reset environments"));
    uint32_t dbs = 0, backups = 0;
    KV_GUARD(tde_env_reset(n, req->environment_id, req->confirmation_name, &dbs, &backups));
    KV_LOG_WARN("environment %s reset by %s: %u databases and %u backups deleted on this node",
                req->environment_id, ctx->principal, dbs, backups);
    Hsmvault__V1__NodeResetResponse resp = HSMVAULT__V1__NODE_RESET_RESPONSE__INIT;
    resp.databases_deleted = dbs;
    resp.backups_deleted = backups;
    return ops_reply(reply, &resp.base, false);
}

/* ---- the method table ---------------------------------------------------------- */

typedef struct {
    const char *method;
    const ProtobufCMessageDescriptor *req;
    ops_fn fn;
} ops_route;

#define P(name) "/hsmvault.v1.Pages/" name
static const ops_route ops_routes[] = {
    {P("CreateDatabase"), &hsmvault__v1__create_node_database_request__descriptor,
     ops_create_database},
    {P("OpenDatabase"), &hsmvault__v1__node_database_ref__descriptor, ops_open_database},
    {P("GetDatabase"), &hsmvault__v1__node_database_ref__descriptor, ops_get_database},
    {P("ListDatabases"), &hsmvault__v1__list_node_databases_request__descriptor,
     ops_list_databases},
    {P("ReadPage"), &hsmvault__v1__read_page_request__descriptor, ops_read_page},
    {P("WritePage"), &hsmvault__v1__write_page_request__descriptor, ops_write_page},
    {P("ReadPages"), &hsmvault__v1__read_pages_request__descriptor, ops_read_pages},
    {P("WritePages"), &hsmvault__v1__write_pages_request__descriptor, ops_write_pages},
    {P("Flush"), &hsmvault__v1__node_database_ref__descriptor, ops_flush},
    {P("Backup"), &hsmvault__v1__node_database_ref__descriptor, ops_backup},
    {P("ListBackups"), &hsmvault__v1__list_node_backups_request__descriptor, ops_list_backups},
    {P("Restore"), &hsmvault__v1__restore_request__descriptor, ops_restore},
    {P("Copy"), &hsmvault__v1__copy_request__descriptor, ops_copy},
    {P("ResetEnvironment"), &hsmvault__v1__node_reset_request__descriptor, ops_reset},
};
#undef P

/* One handler for every method: the route names the request type.  Requests
 * carry page data, so they are unpacked (and freed) through the wiping
 * allocator. */
static kv_result ops_dispatch(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t len,
                              rpc_reply *reply)
{
    const ops_route *route = NULL;
    for (size_t i = 0; i < KV_ARRAY_LEN(ops_routes) && route == NULL; i++)
        if (strcmp(ops_routes[i].method, ctx->method) == 0) route = &ops_routes[i];
    KV_ENSURE(route != NULL, KV_ERR_UNIMPLEMENTED, "unknown method");
    ProtobufCMessage *m = NULL;
    KV_GUARD(kv_pb_unpack(route->req, req, len, "Pages request", &m));
    kv_result r = route->fn((tde_node *)app, ctx, m, reply);
    kv_pb_free(m);
    return r;
}

const rpc_method *tde_methods(size_t *count)
{
    static rpc_method table[KV_ARRAY_LEN(ops_routes)];
    for (size_t i = 0; i < KV_ARRAY_LEN(ops_routes); i++)
        table[i] = (rpc_method){ops_routes[i].method, ops_dispatch};
    *count = KV_ARRAY_LEN(ops_routes);
    return table;
}
