/*
 * methods.c: the method table vaultd serves (every RPC of hsmvault.v1 that
 * this version implements; anything else answers UNIMPLEMENTED).
 */
#include <stdio.h>

#include "kv_clock.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "vault.h"

#define H(name)                                                                                    \
    kv_result name(void *app, const rpc_ctx *ctx, const uint8_t *b, size_t n, rpc_reply *reply)
H(vault_rpc_create_tenant);
H(vault_rpc_list_tenants);
H(vault_rpc_get_tenant);
H(vault_rpc_enable_self_managed);
H(vault_rpc_bind_role);
H(vault_rpc_unbind_role);
H(vault_rpc_list_bindings);
H(vault_rpc_whoami);
H(vault_rpc_generate_key);
H(vault_rpc_upload_key);
H(vault_rpc_list_keys);
H(vault_rpc_activate_key);
H(vault_rpc_roll_back);
H(vault_rpc_get_lock_confirmation);
H(vault_rpc_lock_tenant);
H(vault_rpc_unlock_key);
H(vault_rpc_unlock_environment);
H(vault_rpc_authorize_restore);
H(vault_rpc_authorize_copy);
H(vault_rpc_reset_environment);
H(vault_rpc_create_environment);
H(vault_rpc_list_environments);
H(vault_rpc_get_environment);
H(vault_rpc_apply_key);
H(vault_rpc_return_to_service_key);
H(vault_rpc_create_database_key);
H(vault_rpc_unwrap_database_key);
H(vault_rpc_renew_lease);
H(vault_rpc_list_databases);
H(vault_rpc_list_token_objects);
H(vault_rpc_reconcile);
H(vault_rpc_get_import_key);
H(vault_rpc_rotate_import_key);
H(vault_rpc_list_import_keys);
H(vault_rpc_read_log);
H(vault_rpc_export_log);
H(vault_rpc_verify_log);
H(vault_rpc_get_checkpoint_key);
#undef H

#ifdef KV_TEST_HOOKS
kv_result vault_rpc_advance_clock(void *app, const rpc_ctx *ctx, const uint8_t *b, size_t n,
                                  rpc_reply *reply);
VAULT_HANDLER(vault_rpc_advance_clock, Hsmvault__V1__AdvanceClockRequest,
              hsmvault__v1__advance_clock_request__descriptor)
static kv_result vault_rpc_advance_clock_impl(vault *v, const rpc_ctx *ctx,
                                              const Hsmvault__V1__AdvanceClockRequest *req,
                                              rpc_reply *reply)
{
    KV_ENSURE(v->test_hooks, KV_ERR_UNIMPLEMENTED, "the test clock exists only in vaultd --dev");
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_OPERATOR), NULL, NULL,
                                  "move the test clock");
    store_read_end(t);
    KV_GUARD(r);
    KV_ENSURE(req->seconds >= 0 && req->seconds <= 10LL * 365 * 86400, KV_ERR_INVALID_ARGUMENT,
              "seconds must be between 0 and ten years");
    kv_clock_advance(req->seconds);
    /* Persist the offset so timers keep their meaning across restarts. */
    if (v->clock_file[0] != '\0') {
        char text[32];
        int n = snprintf(text, sizeof(text), "%lld\n", (long long)kv_clock_offset());
        KV_GUARD(kv_file_write_atomic(v->clock_file, text, (size_t)n, 0600));
    }
    Hsmvault__V1__AdvanceClockResponse resp = HSMVAULT__V1__ADVANCE_CLOCK_RESPONSE__INIT;
    /* Timers that expired under the moved clock act now, not a minute later. */
    KV_GUARD(vault_sweep(v));
    vault_notifier_kick(v->notifier);
    resp.now = kv_clock_now();
    resp.offset = kv_clock_offset();
    return vault_reply(reply, &resp.base, false);
}
#endif

static const rpc_method vault_method_table[] = {
    {"/hsmvault.v1.Tenants/CreateTenant", vault_rpc_create_tenant},
    {"/hsmvault.v1.Tenants/ListTenants", vault_rpc_list_tenants},
    {"/hsmvault.v1.Tenants/GetTenant", vault_rpc_get_tenant},
    {"/hsmvault.v1.Tenants/EnableSelfManagedKeys", vault_rpc_enable_self_managed},
    {"/hsmvault.v1.Tenants/BindRole", vault_rpc_bind_role},
    {"/hsmvault.v1.Tenants/UnbindRole", vault_rpc_unbind_role},
    {"/hsmvault.v1.Tenants/ListRoleBindings", vault_rpc_list_bindings},
    {"/hsmvault.v1.Tenants/WhoAmI", vault_rpc_whoami},
    {"/hsmvault.v1.TenantKeys/GenerateKey", vault_rpc_generate_key},
    {"/hsmvault.v1.TenantKeys/UploadKey", vault_rpc_upload_key},
    {"/hsmvault.v1.TenantKeys/ListKeys", vault_rpc_list_keys},
    {"/hsmvault.v1.TenantKeys/ActivateKey", vault_rpc_activate_key},
    {"/hsmvault.v1.TenantKeys/RollBack", vault_rpc_roll_back},
    {"/hsmvault.v1.TenantKeys/GetLockConfirmation", vault_rpc_get_lock_confirmation},
    {"/hsmvault.v1.TenantKeys/LockTenant", vault_rpc_lock_tenant},
    {"/hsmvault.v1.TenantKeys/UnlockKey", vault_rpc_unlock_key},
    {"/hsmvault.v1.Environments/UnlockEnvironment", vault_rpc_unlock_environment},
    {"/hsmvault.v1.Environments/AuthorizeRestore", vault_rpc_authorize_restore},
    {"/hsmvault.v1.Environments/AuthorizeCopy", vault_rpc_authorize_copy},
    {"/hsmvault.v1.Environments/ResetEnvironment", vault_rpc_reset_environment},
    {"/hsmvault.v1.Environments/CreateEnvironment", vault_rpc_create_environment},
    {"/hsmvault.v1.Environments/ListEnvironments", vault_rpc_list_environments},
    {"/hsmvault.v1.Environments/GetEnvironment", vault_rpc_get_environment},
    {"/hsmvault.v1.Environments/ApplyKey", vault_rpc_apply_key},
    {"/hsmvault.v1.Environments/ReturnToServiceKey", vault_rpc_return_to_service_key},
    {"/hsmvault.v1.KeyAccess/CreateDatabaseKey", vault_rpc_create_database_key},
    {"/hsmvault.v1.KeyAccess/UnwrapDatabaseKey", vault_rpc_unwrap_database_key},
    {"/hsmvault.v1.KeyAccess/RenewLease", vault_rpc_renew_lease},
    {"/hsmvault.v1.KeyAccess/ListDatabases", vault_rpc_list_databases},
    {"/hsmvault.v1.Audit/ListTokenObjects", vault_rpc_list_token_objects},
    {"/hsmvault.v1.Audit/Reconcile", vault_rpc_reconcile},
    {"/hsmvault.v1.TenantKeys/GetImportKey", vault_rpc_get_import_key},
    {"/hsmvault.v1.Tenants/RotateImportKey", vault_rpc_rotate_import_key},
    {"/hsmvault.v1.Tenants/ListImportKeys", vault_rpc_list_import_keys},
    {"/hsmvault.v1.AuditLog/ReadLog", vault_rpc_read_log},
    {"/hsmvault.v1.AuditLog/ExportLog", vault_rpc_export_log},
    {"/hsmvault.v1.AuditLog/VerifyLog", vault_rpc_verify_log},
    {"/hsmvault.v1.AuditLog/GetCheckpointKey", vault_rpc_get_checkpoint_key},
#ifdef KV_TEST_HOOKS
    {"/hsmvault.v1.Testing/AdvanceClock", vault_rpc_advance_clock},
#endif
};

const rpc_method *vault_methods(size_t *count)
{
    *count = KV_ARRAY_LEN(vault_method_table);
    return vault_method_table;
}
