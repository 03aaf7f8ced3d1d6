/*
 * ops_tenants.c: the Tenants service (operator): tenants, the self-managed
 * keys flag, role bindings; WhoAmI for everyone.
 * A tenant's service key is created in the token before the commit that
 * names it, and destroyed again if that commit fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

#define VAULT_MAX_CONTACTS 32

static kv_result vault_check_subscription(const char *sub)
{
    KV_ENSURE(sub != NULL && sub[0] != '\0', KV_ERR_INVALID_ARGUMENT,
              "subscription_id is required");
    size_t n = strlen(sub);
    KV_ENSURE(n <= 64, KV_ERR_INVALID_ARGUMENT,
              "subscription_id is %zu characters; the limit is 64", n);
    for (size_t i = 0; i < n; i++) {
        char c = sub[i];
        KV_ENSURE((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-',
                  KV_ERR_INVALID_ARGUMENT,
                  "subscription_id may hold only letters, digits and '-' (position %zu)", i);
    }
    return KV_SUCCESS;
}

static kv_result vault_check_contact(const char *c)
{
    KV_GUARD(vault_check_text("admin contact", c, 254));
    const char *at = strchr(c, '@');
    /* The address goes into SMTP commands and mail headers: none of the
     * characters that would change their meaning. */
    KV_ENSURE(at != NULL && at != c && at[1] != '\0' && strchr(at + 1, '@') == NULL &&
                  strpbrk(c, " <>,;:\"()[]\\") == NULL,
              KV_ERR_INVALID_ARGUMENT, "admin contact '%s' is not an email address", c);
    return KV_SUCCESS;
}

typedef struct {
    TenantRecord *tenant;
    KeyRecord *key;
} vault_new_tenant;

static kv_result vault_create_tenant_commit(store_txn *t, void *arg)
{
    vault_new_tenant *c = arg;
    char k[2 * VAULT_ID_MAX];
    vault_key_store_key(c->tenant->id, c->key->id, k, sizeof(k));
    KV_GUARD(store_put(t, STORE_KEYS, k, &c->key->base));
    return store_put(t, STORE_TENANTS, c->tenant->id, &c->tenant->base);
}

VAULT_HANDLER(vault_rpc_create_tenant, Hsmvault__V1__CreateTenantRequest,
              hsmvault__v1__create_tenant_request__descriptor)
static kv_result vault_rpc_create_tenant_impl(vault *v, const rpc_ctx *ctx,
                                              const Hsmvault__V1__CreateTenantRequest *req,
                                              rpc_reply *reply)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR), NULL, NULL, "create tenants");
    store_read_end(t);
    KV_GUARD(r);
    KV_GUARD(vault_check_text("name", req->name, 128));
    KV_GUARD(vault_check_subscription(req->subscription_id));
    KV_ENSURE(req->n_admin_contacts >= 1 && req->n_admin_contacts <= VAULT_MAX_CONTACTS,
              KV_ERR_INVALID_ARGUMENT, "a tenant needs 1 to %d admin contacts (got %zu)",
              VAULT_MAX_CONTACTS, req->n_admin_contacts);
    for (size_t i = 0; i < req->n_admin_contacts; i++)
        KV_GUARD(vault_check_contact(req->admin_contacts[i]));

    char tenant_id[VAULT_ID_MAX], key_id[VAULT_ID_MAX], label[128];
    vault_new_id("tnt", tenant_id);
    vault_new_id("key", key_id);
    snprintf(label, sizeof(label), VAULT_LABEL_PREFIX "%s/%s", tenant_id, key_id);

    hsm_key_id hid;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    uint8_t fp[KEY_FINGERPRINT_LEN];
    pthread_mutex_lock(&v->lifecycle);
    r = hsm_rsa_generate(v->hsm, label, 2048, &hid, &spki, &spki_len);
    if (kv_failed(r)) goto out;
    KV_GUARD_GOTO(key_fingerprint(spki, spki_len, fp), r, destroy);

    int64_t now = kv_clock_now();
    KeyRecord key = HSMVAULT__STORE__KEY_RECORD__INIT;
    key.id = key_id;
    key.tenant_id = tenant_id;
    key.name = (char *)"service key";
    key.state = HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE;
    key.source = HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE;
    key.hsm_id = (ProtobufCBinaryData){HSM_KEY_ID_LEN, hid.bytes};
    key.spki_der = (ProtobufCBinaryData){spki_len, spki};
    key.fingerprint = (ProtobufCBinaryData){sizeof(fp), fp};
    key.created_at = now;
    key.activated_at = now;
    key.created_by = (char *)(uintptr_t)ctx->principal;
    key.bits = 2048;

    TenantRecord tenant = HSMVAULT__STORE__TENANT_RECORD__INIT;
    tenant.id = tenant_id;
    tenant.name = req->name;
    tenant.subscription_id = req->subscription_id;
    tenant.n_admin_contacts = req->n_admin_contacts;
    tenant.admin_contacts = req->admin_contacts;
    tenant.created_at = now;
    tenant.service_key_id = key_id;

    vault_new_tenant c = {.tenant = &tenant, .key = &key};
    KV_GUARD_GOTO(store_update(v->store, vault_create_tenant_commit, &c), r, destroy);
    KV_LOG_INFO("tenant %s created by %s with service key %s", tenant_id, ctx->principal, key_id);

    Hsmvault__V1__Tenant api;
    vault_tenant_to_api(&tenant, &api);
    char fp_hex[65];
    kv_hex_encode(fp, sizeof(fp), fp_hex);
    api.service_key_fingerprint = fp_hex;
    r = vault_reply(reply, &api.base, false);
    goto out;
destroy : {
    kv_error_record saved;
    kv_error_save(&saved);
    if (kv_failed(hsm_key_destroy(v->hsm, &hid)))
        kv_log_error_record(KV_LOG_WARN, "removing the new service key");
    kv_error_restore(&saved);
}
out:
    pthread_mutex_unlock(&v->lifecycle);
    free(spki);
    return r;
}

typedef struct {
    Hsmvault__V1__Tenant **items;
    TenantRecord **records;
    size_t n, cap;
} vault_tenant_list;

static kv_result vault_collect_tenant(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    vault_tenant_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        TenantRecord **rp = realloc(l->records, cap * sizeof(*rp));
        KV_ENSURE(rp != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        l->records = rp;
        Hsmvault__V1__Tenant **ip = realloc(l->items, cap * sizeof(*ip));
        KV_ENSURE(ip != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        l->items = ip;
        l->cap = cap;
    }
    l->records[l->n] = (TenantRecord *)*msg;
    l->items[l->n] = NULL;
    l->n++;
    *msg = NULL;
    return KV_SUCCESS;
}

VAULT_HANDLER(vault_rpc_list_tenants, Hsmvault__V1__ListTenantsRequest,
              hsmvault__v1__list_tenants_request__descriptor)
static kv_result vault_rpc_list_tenants_impl(vault *v, const rpc_ctx *ctx,
                                             const Hsmvault__V1__ListTenantsRequest *req,
                                             rpc_reply *reply)
{
    (void)req;
    store_txn *t;
    vault_tenant_list l = {0};
    Hsmvault__V1__Tenant *apis = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR) | ROLE_BIT(ROLE_AUDITOR), NULL,
                        NULL, "list tenants");
    if (kv_ok(r))
        r = store_scan(t, STORE_TENANTS, "", &hsmvault__store__tenant_record__descriptor,
                       vault_collect_tenant, &l);
    store_read_end(t);
    if (kv_ok(r)) {
        apis = calloc(l.n ? l.n : 1, sizeof(*apis));
        if (apis == NULL)
            r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    }
    if (kv_ok(r)) {
        for (size_t i = 0; i < l.n; i++) {
            vault_tenant_to_api(l.records[i], &apis[i]);
            l.items[i] = &apis[i];
        }
        Hsmvault__V1__ListTenantsResponse resp = HSMVAULT__V1__LIST_TENANTS_RESPONSE__INIT;
        resp.n_tenants = l.n;
        resp.tenants = l.items;
        r = vault_reply(reply, &resp.base, false);
    }
    for (size_t i = 0; i < l.n; i++)
        kv_pb_free(&l.records[i]->base);
    free(l.records);
    free(l.items);
    free(apis);
    return r;
}

VAULT_HANDLER(vault_rpc_get_tenant, Hsmvault__V1__GetTenantRequest,
              hsmvault__v1__get_tenant_request__descriptor)
static kv_result vault_rpc_get_tenant_impl(vault *v, const rpc_ctx *ctx,
                                           const Hsmvault__V1__GetTenantRequest *req,
                                           rpc_reply *reply)
{
    store_txn *t;
    TenantRecord *tr = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal,
                        ROLE_BIT(ROLE_OPERATOR) | ROLE_BIT(ROLE_AUDITOR) |
                            ROLE_BIT(ROLE_TENANT_ADMIN) | ROLE_BIT(ROLE_ENVIRONMENT_ADMIN),
                        req->tenant_id, NULL, "read this tenant");
    if (kv_ok(r)) r = vault_get_tenant(t, req->tenant_id, &tr);
    store_read_end(t);
    KV_GUARD(r);
    Hsmvault__V1__Tenant api;
    vault_tenant_to_api(tr, &api);
    r = vault_reply(reply, &api.base, false);
    kv_pb_free(&tr->base);
    return r;
}

static kv_result vault_enable_commit(store_txn *t, void *arg)
{
    TenantRecord **out = arg;
    TenantRecord *tr = NULL;
    KV_GUARD(vault_get_tenant(t, (*out)->id, &tr));
    tr->self_managed_keys = true;
    kv_result r = store_put(t, STORE_TENANTS, tr->id, &tr->base);
    if (kv_ok(r)) {
        kv_pb_free(&(*out)->base);
        *out = tr;
    } else {
        kv_pb_free(&tr->base);
    }
    return r;
}

VAULT_HANDLER(vault_rpc_enable_self_managed, Hsmvault__V1__EnableSelfManagedKeysRequest,
              hsmvault__v1__enable_self_managed_keys_request__descriptor)
static kv_result
vault_rpc_enable_self_managed_impl(vault *v, const rpc_ctx *ctx,
                                   const Hsmvault__V1__EnableSelfManagedKeysRequest *req,
                                   rpc_reply *reply)
{
    store_txn *t;
    TenantRecord *tr = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR), NULL, NULL,
                                  "enable self-managed keys");
    if (kv_ok(r)) r = vault_get_tenant(t, req->tenant_id, &tr);
    store_read_end(t);
    KV_GUARD(r);
    r = store_update(v->store, vault_enable_commit, &tr);
    if (kv_ok(r)) {
        KV_LOG_INFO("tenant %s: self-managed keys enabled by %s", tr->id, ctx->principal);
        Hsmvault__V1__Tenant api;
        vault_tenant_to_api(tr, &api);
        r = vault_reply(reply, &api.base, false);
    }
    kv_pb_free(&tr->base);
    return r;
}

static kv_result vault_check_binding(store_txn *t, const Hsmvault__V1__RoleBinding *b)
{
    KV_ENSURE(b != NULL, KV_ERR_INVALID_ARGUMENT, "binding is required");
    KV_GUARD(vault_check_text("principal", b->principal, 256));
    switch (b->role) {
    case HSMVAULT__V1__ROLE__ROLE_OPERATOR:
    case HSMVAULT__V1__ROLE__ROLE_AUDITOR:
        KV_ENSURE(b->tenant_id[0] == '\0' && b->environment_id[0] == '\0', KV_ERR_INVALID_ARGUMENT,
                  "operator and auditor are global roles: give no tenant or environment");
        return KV_SUCCESS;
    case HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN:
        KV_ENSURE(b->environment_id[0] == '\0', KV_ERR_INVALID_ARGUMENT,
                  "tenant-admin is scoped to a tenant: give no environment");
        break;
    case HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN:
    case HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE:
        break;
    default:
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "unknown role %d", b->role);
    }
    TenantRecord *tr = NULL;
    KV_GUARD(vault_get_tenant(t, b->tenant_id, &tr));
    kv_pb_free(&tr->base);
    if (b->environment_id[0] != '\0') {
        EnvironmentRecord *e = NULL;
        KV_GUARD(vault_get_environment(t, b->environment_id, &e));
        bool same = strcmp(e->tenant_id, b->tenant_id) == 0;
        kv_pb_free(&e->base);
        KV_ENSURE(same, KV_ERR_INVALID_ARGUMENT, "environment %s does not belong to tenant %s",
                  b->environment_id, b->tenant_id);
    }
    return KV_SUCCESS;
}

VAULT_HANDLER(vault_rpc_bind_role, Hsmvault__V1__BindRoleRequest,
              hsmvault__v1__bind_role_request__descriptor)
static kv_result vault_rpc_bind_role_impl(vault *v, const rpc_ctx *ctx,
                                          const Hsmvault__V1__BindRoleRequest *req,
                                          rpc_reply *reply)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR), NULL, NULL, "bind roles");
    if (kv_ok(r)) r = vault_check_binding(t, req->binding);
    store_read_end(t);
    KV_GUARD(r);
    const Hsmvault__V1__RoleBinding *b = req->binding;
    KV_GUARD(vault_bind_role(v, b->principal, b->role, b->tenant_id, b->environment_id));
    KV_LOG_INFO("%s bound %s to role %d (tenant '%s', environment '%s')", ctx->principal,
                b->principal, b->role, b->tenant_id, b->environment_id);
    return vault_reply(reply, &b->base, false);
}

typedef struct {
    const Hsmvault__V1__RoleBinding *del;
    bool removed;
} vault_unbind_ctx;

static kv_result vault_unbind_commit(store_txn *t, void *arg)
{
    vault_unbind_ctx *c = arg;
    PrincipalRecord *p = NULL;
    c->removed = false;
    kv_result r =
        store_get(t, STORE_PRINCIPALS, c->del->principal,
                  &hsmvault__store__principal_record__descriptor, (ProtobufCMessage **)&p);
    if (kv_failed(r)) return kv_error_code() == KV_ERR_NOT_FOUND ? KV_SUCCESS : r;
    size_t keep = 0;
    for (size_t i = 0; i < p->n_bindings; i++) {
        Hsmvault__V1__RoleBinding *b = p->bindings[i];
        if (b->role == c->del->role && strcmp(b->tenant_id, c->del->tenant_id) == 0 &&
            strcmp(b->environment_id, c->del->environment_id) == 0) {
            kv_pb_free(&b->base);
            c->removed = true;
        } else {
            p->bindings[keep++] = b;
        }
    }
    p->n_bindings = keep;
    if (c->removed) r = store_put(t, STORE_PRINCIPALS, p->principal, &p->base);
    kv_pb_free(&p->base);
    return r;
}

VAULT_HANDLER(vault_rpc_unbind_role, Hsmvault__V1__UnbindRoleRequest,
              hsmvault__v1__unbind_role_request__descriptor)
static kv_result vault_rpc_unbind_role_impl(vault *v, const rpc_ctx *ctx,
                                            const Hsmvault__V1__UnbindRoleRequest *req,
                                            rpc_reply *reply)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR), NULL, NULL, "unbind roles");
    store_read_end(t);
    KV_GUARD(r);
    KV_ENSURE(req->binding != NULL, KV_ERR_INVALID_ARGUMENT, "binding is required");
    KV_GUARD(vault_check_text("principal", req->binding->principal, 256));
    KV_ENSURE(strcmp(req->binding->principal, ctx->principal) != 0 ||
                  req->binding->role != HSMVAULT__V1__ROLE__ROLE_OPERATOR,
              KV_ERR_FAILED_PRECONDITION, "an operator cannot remove its own operator role");
    vault_unbind_ctx c = {.del = req->binding};
    KV_GUARD(store_update(v->store, vault_unbind_commit, &c));
    Hsmvault__V1__UnbindRoleResponse resp = HSMVAULT__V1__UNBIND_ROLE_RESPONSE__INIT;
    resp.removed = c.removed;
    return vault_reply(reply, &resp.base, false);
}

typedef struct {
    Hsmvault__V1__RoleBinding **items;
    PrincipalRecord **records;
    size_t n_items, n_records, cap_items, cap_records;
    const char *only;
} vault_binding_list;

static kv_result vault_collect_bindings(const char *key, ProtobufCMessage **msg, void *arg)
{
    vault_binding_list *l = arg;
    if (l->only != NULL && l->only[0] != '\0' && strcmp(key, l->only) != 0) return KV_SUCCESS;
    PrincipalRecord *p = (PrincipalRecord *)*msg;
    if (l->n_records == l->cap_records) {
        size_t cap = l->cap_records ? l->cap_records * 2 : 16;
        PrincipalRecord **np = realloc(l->records, cap * sizeof(*np));
        KV_ENSURE(np != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        l->records = np;
        l->cap_records = cap;
    }
    l->records[l->n_records++] = p;
    *msg = NULL;
    for (size_t i = 0; i < p->n_bindings; i++) {
        if (l->n_items == l->cap_items) {
            size_t cap = l->cap_items ? l->cap_items * 2 : 16;
            Hsmvault__V1__RoleBinding **ni = realloc(l->items, cap * sizeof(*ni));
            KV_ENSURE(ni != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
            l->items = ni;
            l->cap_items = cap;
        }
        l->items[l->n_items++] = p->bindings[i];
    }
    return KV_SUCCESS;
}

static kv_result vault_reply_bindings(vault_binding_list *l, const char *principal,
                                      rpc_reply *reply, bool whoami)
{
    kv_result r;
    if (whoami) {
        Hsmvault__V1__WhoAmIResponse resp = HSMVAULT__V1__WHO_AM_IRESPONSE__INIT;
        resp.principal = (char *)(uintptr_t)principal;
        resp.n_bindings = l->n_items;
        resp.bindings = l->items;
        r = vault_reply(reply, &resp.base, false);
    } else {
        Hsmvault__V1__ListRoleBindingsResponse resp =
            HSMVAULT__V1__LIST_ROLE_BINDINGS_RESPONSE__INIT;
        resp.n_bindings = l->n_items;
        resp.bindings = l->items;
        r = vault_reply(reply, &resp.base, false);
    }
    for (size_t i = 0; i < l->n_records; i++)
        kv_pb_free(&l->records[i]->base);
    free(l->records);
    free(l->items);
    return r;
}

VAULT_HANDLER(vault_rpc_list_bindings, Hsmvault__V1__ListRoleBindingsRequest,
              hsmvault__v1__list_role_bindings_request__descriptor)
static kv_result vault_rpc_list_bindings_impl(vault *v, const rpc_ctx *ctx,
                                              const Hsmvault__V1__ListRoleBindingsRequest *req,
                                              rpc_reply *reply)
{
    store_txn *t;
    vault_binding_list l = {.only = req->principal};
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR) | ROLE_BIT(ROLE_AUDITOR), NULL,
                        NULL, "list role bindings");
    if (kv_ok(r))
        r = store_scan(t, STORE_PRINCIPALS, "", &hsmvault__store__principal_record__descriptor,
                       vault_collect_bindings, &l);
    store_read_end(t);
    kv_result rr = vault_reply_bindings(&l, ctx->principal, reply, false);
    if (kv_failed(r)) {
        if (reply->data != NULL) free(reply->data);
        reply->data = NULL;
        return r;
    }
    return rr;
}

VAULT_HANDLER(vault_rpc_whoami, Hsmvault__V1__WhoAmIRequest,
              hsmvault__v1__who_am_irequest__descriptor)
static kv_result vault_rpc_whoami_impl(vault *v, const rpc_ctx *ctx,
                                       const Hsmvault__V1__WhoAmIRequest *req, rpc_reply *reply)
{
    (void)req;
    store_txn *t;
    vault_binding_list l = {.only = ctx->principal};
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        store_scan(t, STORE_PRINCIPALS, ctx->principal,
                   &hsmvault__store__principal_record__descriptor, vault_collect_bindings, &l);
    store_read_end(t);
    kv_result rr = vault_reply_bindings(&l, ctx->principal, reply, true);
    if (kv_failed(r)) {
        free(reply->data);
        reply->data = NULL;
        return r;
    }
    return rr;
}
