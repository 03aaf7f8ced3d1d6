/*
 * test_roles.c: the role matrix, table-driven.  The one written matrix is
 * docs/roles.md; this test parses its table, checks that it names exactly the
 * RPCs vaultd serves, then calls every RPC as every role (plus a principal
 * with no binding) against a real vaultd --dev and checks each verdict:
 * a "-" cell must be PERMISSION_DENIED, any other cell must not be.
 *
 * Requests are filled from their protobuf descriptors with ids that are in
 * the callers' scopes, and with values that make allowed calls stop after
 * the authorization check wherever a call would be destructive (a wrong
 * confirmation, an unknown key id, material that is not a PFX).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "rpc_client.h"
#include "vault.h"
#include "vaultclient.h"
#include "vaultd_proc.h"

#define URI(role) "spiffe://hsmvault.dev/" role
#define N_ROLES 5

/* Columns of docs/roles.md, in order, and the dev principal playing each. */
static const char *const role_names[N_ROLES] = {"operator", "tenant-admin", "environment-admin",
                                                "storage-node", "auditor"};

typedef struct {
    char method[128]; /* "/hsmvault.v1.Tenants/GetTenant" */
    bool allowed[N_ROLES];
    bool anyone;
} matrix_row;

static matrix_row rows[64];
static size_t n_rows;

static char tenant[64], env_id[64], db_id[64];

/* ---- docs/roles.md ------------------------------------------------------ */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* One table line: "| Svc/A, B | cell | cell | ... |" (a rpc cell may name
 * several methods of one service and carry a note in parentheses). */
static void parse_row(char *line)
{
    char *cells[8];
    int n = 0;
    char *p = line + 1;
    while (n < 8) {
        char *bar = strchr(p, '|');
        if (bar == NULL) break;
        *bar = '\0';
        cells[n++] = trim(p);
        p = bar + 1;
    }
    if (n < 2 || strchr(cells[0], '/') == NULL || strncmp(cells[0], "---", 3) == 0) return;
    char *paren = strchr(cells[0], '(');
    if (paren != NULL) *paren = '\0';
    char service[64];
    char *slash = strchr(cells[0], '/');
    snprintf(service, sizeof(service), "%.*s", (int)(slash - cells[0]), cells[0]);
    bool anyone = strstr(cells[1], "anyone") != NULL;
    char *save = NULL;
    for (char *name = strtok_r(slash + 1, ",", &save); name != NULL && n_rows < KV_ARRAY_LEN(rows);
         name = strtok_r(NULL, ",", &save)) {
        matrix_row *r = &rows[n_rows++];
        snprintf(r->method, sizeof(r->method), "/hsmvault.v1.%s/%s", service, trim(name));
        r->anyone = anyone;
        for (int i = 0; i < N_ROLES; i++)
            r->allowed[i] =
                anyone || (i + 1 < n && cells[i + 1][0] != '\0' && strcmp(cells[i + 1], "-") != 0);
    }
}

static void load_matrix(void)
{
    char path[512];
    const char *src = getenv("HSMVAULT_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s/docs/roles.md", src != NULL ? src : "..");
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(path, 1u << 20, &data, &len));
    if (data == NULL) return;
    char *text = malloc(len + 1);
    memcpy(text, data, len);
    text[len] = '\0';
    free(data);
    bool header_ok = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(
                line,
                "| RPC | operator | tenant-admin | environment-admin | storage-node | auditor |",
                78) == 0) {
            header_ok = true;
            continue;
        }
        if (header_ok && line[0] == '|') {
            char copy[1024];
            snprintf(copy, sizeof(copy), "%s", line);
            parse_row(copy);
        }
    }
    CHECK(header_ok);
    free(text);
}

static const matrix_row *row_of(const char *method)
{
    for (size_t i = 0; i < n_rows; i++)
        if (strcmp(rows[i].method, method) == 0) return &rows[i];
    return NULL;
}

/* ---- requests filled from descriptors ---------------------------------- */

static char *const contact = "matrix@example.com";
static char *contacts[] = {contact};
static uint8_t not_a_pfx[] = "this is not a PKCS#12 file";
static uint8_t password[] = "correct horse battery staple";
static int serial;

static void fill(ProtobufCMessage *m);

static char *string_for(const char *field)
{
    static char names[64][48];
    if (strcmp(field, "tenant_id") == 0) return tenant;
    if (strstr(field, "environment_id") != NULL) return env_id;
    if (strcmp(field, "database_id") == 0) return db_id;
    if (strcmp(field, "key_id") == 0) return "key-0000000000000000";
    if (strcmp(field, "subscription_id") == 0) return "matrix-sub";
    if (strcmp(field, "principal") == 0) return URI("matrix-nobody");
    if (strstr(field, "confirmation") != NULL) return "not the confirmation";
    /* names: unique, so allowed creations never collide */
    char *n = names[serial++ % 64];
    snprintf(n, 48, "matrix-%d", serial);
    return n;
}

static void fill_field(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    void *p = (char *)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            *(size_t *)((char *)m + f->quantifier_offset) = 1;
            *(char ***)p = contacts;
        }
        return;
    }
    if (f->quantifier_offset != 0 && f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        /* oneof material: the PFX arm */
        if (strcmp(f->name, "pfx") != 0) return;
        *(uint32_t *)((char *)m + f->quantifier_offset) = f->id;
    }
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
        *(char **)p = string_for(f->name);
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = p;
        if (strcmp(f->name, "password") == 0) {
            b->data = password;
            b->len = sizeof(password) - 1;
        } else {
            b->data = not_a_pfx;
            b->len = sizeof(not_a_pfx) - 1;
        }
        break;
    }
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *e = f->descriptor;
        /* environment type: sandbox; role: tenant-admin (bound to the tenant) */
        int v = strcmp(e->name, "hsmvault.v1.EnvironmentType") == 0
                    ? HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX
                    : HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN;
        *(int *)p = v;
        break;
    }
    case PROTOBUF_C_TYPE_INT64:
        *(int64_t *)p = 1;
        break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *d = f->descriptor;
        ProtobufCMessage *sub = calloc(1, d->sizeof_message);
        d->message_init(sub);
        fill(sub);
        if (strcmp(d->name, "hsmvault.v1.RoleBinding") == 0)
            ((Hsmvault__V1__RoleBinding *)sub)->environment_id = "";
        *(ProtobufCMessage **)p = sub;
        break;
    }
    default:
        break;
    }
}

static void fill(ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++)
        fill_field(m, &d->fields[i]);
}

static void free_filled(ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED) continue;
        ProtobufCMessage *sub = *(ProtobufCMessage **)((char *)m + f->offset);
        if (sub != NULL) {
            free_filled(sub);
            free(sub);
        }
    }
}

typedef struct {
    const char *method;
    const ProtobufCMessageDescriptor *req;
} method_desc;

/* Request type of every RPC (the proto names them; protobuf-c keeps no
 * registry by name). */
static const method_desc requests[] = {
    {"/hsmvault.v1.Tenants/CreateTenant", &hsmvault__v1__create_tenant_request__descriptor},
    {"/hsmvault.v1.Tenants/ListTenants", &hsmvault__v1__list_tenants_request__descriptor},
    {"/hsmvault.v1.Tenants/GetTenant", &hsmvault__v1__get_tenant_request__descriptor},
    {"/hsmvault.v1.Tenants/EnableSelfManagedKeys",
     &hsmvault__v1__enable_self_managed_keys_request__descriptor},
    {"/hsmvault.v1.Tenants/BindRole", &hsmvault__v1__bind_role_request__descriptor},
    {"/hsmvault.v1.Tenants/UnbindRole", &hsmvault__v1__unbind_role_request__descriptor},
    {"/hsmvault.v1.Tenants/ListRoleBindings",
     &hsmvault__v1__list_role_bindings_request__descriptor},
    {"/hsmvault.v1.Tenants/WhoAmI", &hsmvault__v1__who_am_irequest__descriptor},
    {"/hsmvault.v1.TenantKeys/GenerateKey", &hsmvault__v1__generate_key_request__descriptor},
    {"/hsmvault.v1.TenantKeys/UploadKey", &hsmvault__v1__upload_key_request__descriptor},
    {"/hsmvault.v1.TenantKeys/ListKeys", &hsmvault__v1__list_keys_request__descriptor},
    {"/hsmvault.v1.TenantKeys/ActivateKey", &hsmvault__v1__activate_key_request__descriptor},
    {"/hsmvault.v1.TenantKeys/RollBack", &hsmvault__v1__roll_back_request__descriptor},
    {"/hsmvault.v1.TenantKeys/GetLockConfirmation",
     &hsmvault__v1__get_lock_confirmation_request__descriptor},
    {"/hsmvault.v1.TenantKeys/LockTenant", &hsmvault__v1__lock_tenant_request__descriptor},
    {"/hsmvault.v1.TenantKeys/UnlockKey", &hsmvault__v1__unlock_key_request__descriptor},
    {"/hsmvault.v1.Environments/CreateEnvironment",
     &hsmvault__v1__create_environment_request__descriptor},
    {"/hsmvault.v1.Environments/ListEnvironments",
     &hsmvault__v1__list_environments_request__descriptor},
    {"/hsmvault.v1.Environments/GetEnvironment",
     &hsmvault__v1__get_environment_request__descriptor},
    {"/hsmvault.v1.Environments/ApplyKey", &hsmvault__v1__apply_key_request__descriptor},
    {"/hsmvault.v1.Environments/ReturnToServiceKey",
     &hsmvault__v1__return_to_service_key_request__descriptor},
    {"/hsmvault.v1.Environments/UnlockEnvironment",
     &hsmvault__v1__unlock_environment_request__descriptor},
    {"/hsmvault.v1.Environments/AuthorizeRestore",
     &hsmvault__v1__authorize_transfer_request__descriptor},
    {"/hsmvault.v1.Environments/AuthorizeCopy",
     &hsmvault__v1__authorize_transfer_request__descriptor},
    {"/hsmvault.v1.Environments/ResetEnvironment",
     &hsmvault__v1__reset_environment_request__descriptor},
    {"/hsmvault.v1.KeyAccess/CreateDatabaseKey",
     &hsmvault__v1__create_database_key_request__descriptor},
    {"/hsmvault.v1.KeyAccess/UnwrapDatabaseKey",
     &hsmvault__v1__unwrap_database_key_request__descriptor},
    {"/hsmvault.v1.KeyAccess/RenewLease", &hsmvault__v1__unwrap_database_key_request__descriptor},
    {"/hsmvault.v1.KeyAccess/ListDatabases", &hsmvault__v1__list_databases_request__descriptor},
    {"/hsmvault.v1.Audit/ListTokenObjects", &hsmvault__v1__list_token_objects_request__descriptor},
    {"/hsmvault.v1.Audit/Reconcile", &hsmvault__v1__reconcile_request__descriptor},
    {"/hsmvault.v1.Testing/AdvanceClock", &hsmvault__v1__advance_clock_request__descriptor},
    {"/hsmvault.v1.TenantKeys/GetImportKey", &hsmvault__v1__get_import_key_request__descriptor},
    {"/hsmvault.v1.Tenants/RotateImportKey", &hsmvault__v1__rotate_import_key_request__descriptor},
    {"/hsmvault.v1.Tenants/ListImportKeys", &hsmvault__v1__list_import_keys_request__descriptor},
    {"/hsmvault.v1.AuditLog/ReadLog", &hsmvault__v1__read_log_request__descriptor},
    {"/hsmvault.v1.AuditLog/ExportLog", &hsmvault__v1__export_log_request__descriptor},
    {"/hsmvault.v1.AuditLog/VerifyLog", &hsmvault__v1__verify_log_request__descriptor},
    {"/hsmvault.v1.AuditLog/GetCheckpointKey",
     &hsmvault__v1__get_checkpoint_key_request__descriptor},
};

static const ProtobufCMessageDescriptor *request_of(const char *method)
{
    for (size_t i = 0; i < KV_ARRAY_LEN(requests); i++)
        if (strcmp(requests[i].method, method) == 0) return requests[i].req;
    return NULL;
}

/* ---- the test ----------------------------------------------------------- */

static void test_matrix_covers_every_rpc(void)
{
    size_t n = 0;
    const rpc_method *served = vault_methods(&n);
    CHECK(n_rows >= 30);
    for (size_t i = 0; i < n; i++) {
        bool documented = row_of(served[i].method) != NULL;
        CHECK(documented);
        if (!documented) fprintf(stderr, "docs/roles.md lacks %s\n", served[i].method);
        CHECK(request_of(served[i].method) != NULL);
    }
    for (size_t i = 0; i < n_rows; i++) {
        bool is_served = false;
        for (size_t j = 0; j < n; j++)
            is_served |= strcmp(served[j].method, rows[i].method) == 0;
        CHECK(is_served);
        if (!is_served)
            fprintf(stderr, "docs/roles.md names %s, which vaultd does not serve\n",
                    rows[i].method);
    }
}

static kv_result setup_call(vc *c, const char *method, ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_d, ProtobufCMessage **resp)
{
    return vc_call(c, method, req, resp_d, resp);
}

static void test_every_rpc_as_every_role(const vaultd_proc *vd)
{
    vc *clients[N_ROLES + 1];
    for (int i = 0; i < N_ROLES; i++)
        clients[i] = vaultd_proc_client(vd, role_names[i]);
    clients[N_ROLES] =
        vaultd_proc_client(vd, "tenant-admin-2"); /* never bound: a principal with no role */
    for (int i = 0; i <= N_ROLES; i++)
        CHECK(clients[i] != NULL);
    vc *op = clients[0];

    /* A tenant (self-managed keys on), an environment and a database, with
     * the tenant admin and environment admin bound to the tenant and the
     * storage node to the environment. */
    Hsmvault__V1__CreateTenantRequest ct = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    ct.name = "matrix";
    ct.subscription_id = "matrix-sub";
    ct.n_admin_contacts = 1;
    ct.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    CHECK_OK(setup_call(op, "/hsmvault.v1.Tenants/CreateTenant", &ct.base,
                        &hsmvault__v1__tenant__descriptor, (ProtobufCMessage **)&t));
    if (t == NULL) return;
    snprintf(tenant, sizeof(tenant), "%s", t->id);
    kv_pb_free(&t->base);
    Hsmvault__V1__EnableSelfManagedKeysRequest en =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    en.tenant_id = tenant;
    CHECK_OK(setup_call(op, "/hsmvault.v1.Tenants/EnableSelfManagedKeys", &en.base,
                        &hsmvault__v1__tenant__descriptor, (ProtobufCMessage **)&t));
    kv_pb_free(t ? &t->base : NULL);
    Hsmvault__V1__CreateEnvironmentRequest ce = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    ce.tenant_id = tenant;
    ce.name = "matrix-env";
    ce.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX;
    Hsmvault__V1__Environment *e = NULL;
    CHECK_OK(setup_call(op, "/hsmvault.v1.Environments/CreateEnvironment", &ce.base,
                        &hsmvault__v1__environment__descriptor, (ProtobufCMessage **)&e));
    if (e == NULL) return;
    snprintf(env_id, sizeof(env_id), "%s", e->id);
    kv_pb_free(&e->base);
    const struct {
        const char *principal;
        Hsmvault__V1__Role role;
        const char *env;
    } binds[] = {{URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, ""},
                 {URI("environment-admin"), HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN, ""},
                 {URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, env_id}};
    for (size_t i = 0; i < 3; i++) {
        Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
        b.principal = (char *)binds[i].principal;
        b.role = binds[i].role;
        b.tenant_id = tenant;
        b.environment_id = (char *)binds[i].env;
        Hsmvault__V1__BindRoleRequest br = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
        br.binding = &b;
        Hsmvault__V1__RoleBinding *out = NULL;
        CHECK_OK(setup_call(op, "/hsmvault.v1.Tenants/BindRole", &br.base,
                            &hsmvault__v1__role_binding__descriptor, (ProtobufCMessage **)&out));
        kv_pb_free(out ? &out->base : NULL);
    }
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_OK(vc_database_key_create(clients[3], env_id, "matrix-db", db_id, sizeof(db_id), &dek,
                                    &lease));
    kv_secret_free(&dek);

    /* Every RPC as every role.  Only the status matters: replies are read
     * loosely (as a WhoAmIResponse), never checked. */
    int checked = 0;
    for (size_t i = 0; i < n_rows; i++) {
        const matrix_row *row = &rows[i];
        const ProtobufCMessageDescriptor *d = request_of(row->method);
        if (d == NULL) continue;
        for (int who = 0; who <= N_ROLES; who++) {
            ProtobufCMessage *req = calloc(1, d->sizeof_message);
            d->message_init(req);
            fill(req);
            ProtobufCMessage *resp = NULL;
            kv_error_clear();
            kv_result r = vc_call(clients[who], row->method, req,
                                  &hsmvault__v1__who_am_iresponse__descriptor, &resp);
            bool denied = kv_failed(r) && kv_error_code() == KV_ERR_PERMISSION_DENIED;
            bool want_allowed = who < N_ROLES ? row->allowed[who] : row->anyone;
            const char *name = who < N_ROLES ? role_names[who] : "(no role)";
            if (want_allowed == denied) {
                kv_test_failed++;
                fprintf(stderr, "role matrix: %s as %s: expected %s, got %s: %s\n", row->method,
                        name, want_allowed ? "allowed" : "PERMISSION_DENIED",
                        kv_ok(r) ? "OK" : kv_code_name(kv_error_code()),
                        kv_ok(r) ? "" : kv_error_msg());
            } else {
                kv_test_passed++;
            }
            checked++;
            kv_pb_free(resp);
            free_filled(req);
            free(req);
        }
    }
    fprintf(stderr, "   %d verdicts over %zu RPCs and %d principals\n", checked, n_rows,
            N_ROLES + 1);
    CHECK(checked == (int)n_rows * (N_ROLES + 1));
    for (int i = 0; i <= N_ROLES; i++)
        vc_close(clients[i]);
}

int main(void)
{
    char tmp[256], state[300];
    rpc_client_global_init();
    RUN(load_matrix);
    RUN(test_matrix_covers_every_rpc);
    kv_test_tmpdir(tmp, sizeof(tmp), "roles");
    snprintf(state, sizeof(state), "%s/state", tmp);
    vaultd_proc vd = {0};
    CHECK(vaultd_proc_start(&vd, state));
    if (vd.pid > 0) {
        fprintf(stderr, "-- test_every_rpc_as_every_role\n");
        test_every_rpc_as_every_role(&vd);
        CHECK(vaultd_proc_stop(&vd) == 0);
    }
    int rc = kv_test_finish();
    if (rc == 0)
        kv_test_rmtree(tmp);
    else
        fprintf(stderr, "state kept in %s\n", tmp);
    rpc_client_global_shutdown();
    return rc;
}
