/*
 * authz.c: role and scope checks for every RPC (roles of DESIGN.md).
 * Must never allow a call that no binding of the principal covers.
 */
#include <stdio.h>
#include <string.h>

#include "kv_pb.h"
#include "vault.h"

static const char *vault_role_name(unsigned role)
{
    switch (role) {
    case HSMVAULT__V1__ROLE__ROLE_OPERATOR:
        return "operator";
    case HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN:
        return "tenant-admin";
    case HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN:
        return "environment-admin";
    case HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE:
        return "storage-node";
    case HSMVAULT__V1__ROLE__ROLE_AUDITOR:
        return "auditor";
    default:
        return "unknown";
    }
}

static bool vault_binding_covers(const Hsmvault__V1__RoleBinding *b, const char *tenant_id,
                                 const char *env_id)
{
    switch (b->role) {
    case HSMVAULT__V1__ROLE__ROLE_OPERATOR:
    case HSMVAULT__V1__ROLE__ROLE_AUDITOR:
        return true; /* global roles */
    case HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN:
        return tenant_id == NULL || strcmp(b->tenant_id, tenant_id) == 0;
    case HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN:
    case HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE:
        if (tenant_id != NULL && strcmp(b->tenant_id, tenant_id) != 0) return false;
        return env_id == NULL || b->environment_id[0] == '\0' ||
               strcmp(b->environment_id, env_id) == 0;
    default:
        return false;
    }
}

kv_result vault_authorize(store_txn *t, const char *principal, unsigned roles,
                          const char *tenant_id, const char *env_id, const char *action)
{
    PrincipalRecord *p = NULL;
    bool allowed = false;
    if (kv_ok(store_get(t, STORE_PRINCIPALS, principal,
                        &hsmvault__store__principal_record__descriptor, (ProtobufCMessage **)&p))) {
        for (size_t i = 0; i < p->n_bindings && !allowed; i++) {
            const Hsmvault__V1__RoleBinding *b = p->bindings[i];
            if ((roles & (1u << b->role)) && vault_binding_covers(b, tenant_id, env_id)) {
                allowed = true;
                vault_audit_note_role(b->role); /* the audit record names the granting role */
            }
        }
        kv_pb_free(&p->base);
    } else if (kv_error_code() != KV_ERR_NOT_FOUND) {
        return KV_FAILURE;
    }
    if (allowed) return KV_SUCCESS;
    char need[160] = "";
    size_t used = 0;
    for (unsigned r = 1; r <= HSMVAULT__V1__ROLE__ROLE_AUDITOR; r++) {
        if (!(roles & (1u << r))) continue;
        int w = snprintf(need + used, sizeof(need) - used, "%s%s", used ? " or " : "",
                         vault_role_name(r));
        if (w > 0 && (size_t)w < sizeof(need) - used) used += (size_t)w;
    }
    char scope[96] = "";
    if (env_id != NULL)
        snprintf(scope, sizeof(scope), " for environment %s", env_id);
    else if (tenant_id != NULL)
        snprintf(scope, sizeof(scope), " for tenant %s", tenant_id);
    KV_BAIL(KV_ERR_PERMISSION_DENIED, "%s may not %s: it needs the %s role%s", principal, action,
            need, scope);
}

typedef struct {
    const char *principal;
    const Hsmvault__V1__RoleBinding *add;
} vault_bind_ctx;

static kv_result vault_bind_update(store_txn *t, void *arg)
{
    vault_bind_ctx *c = arg;
    PrincipalRecord *p = NULL;
    PrincipalRecord fresh = HSMVAULT__STORE__PRINCIPAL_RECORD__INIT;
    kv_result r =
        store_get(t, STORE_PRINCIPALS, c->principal, &hsmvault__store__principal_record__descriptor,
                  (ProtobufCMessage **)&p);
    if (kv_failed(r) && kv_error_code() != KV_ERR_NOT_FOUND) return r;
    PrincipalRecord *cur = p != NULL ? p : &fresh;
    for (size_t i = 0; i < cur->n_bindings; i++) {
        const Hsmvault__V1__RoleBinding *b = cur->bindings[i];
        if (b->role == c->add->role && strcmp(b->tenant_id, c->add->tenant_id) == 0 &&
            strcmp(b->environment_id, c->add->environment_id) == 0) {
            kv_pb_free((ProtobufCMessage *)p);
            return KV_SUCCESS; /* already bound */
        }
    }
    KV_ENSURE(cur->n_bindings < 256, KV_ERR_RESOURCE_EXHAUSTED, "%s already has 256 role bindings",
              c->principal);
    Hsmvault__V1__RoleBinding *list[257];
    for (size_t i = 0; i < cur->n_bindings; i++)
        list[i] = cur->bindings[i];
    list[cur->n_bindings] = (Hsmvault__V1__RoleBinding *)(uintptr_t)c->add;
    PrincipalRecord next = HSMVAULT__STORE__PRINCIPAL_RECORD__INIT;
    next.principal = (char *)(uintptr_t)c->principal;
    next.n_bindings = cur->n_bindings + 1;
    next.bindings = list;
    r = store_put(t, STORE_PRINCIPALS, c->principal, &next.base);
    kv_pb_free((ProtobufCMessage *)p);
    return r;
}

kv_result vault_bind_role(vault *v, const char *principal, Hsmvault__V1__Role role,
                          const char *tenant_id, const char *environment_id)
{
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = (char *)(uintptr_t)principal;
    b.role = role;
    b.tenant_id = (char *)(uintptr_t)(tenant_id ? tenant_id : "");
    b.environment_id = (char *)(uintptr_t)(environment_id ? environment_id : "");
    vault_bind_ctx c = {.principal = principal, .add = &b};
    return store_update(v->store, vault_bind_update, &c);
}
