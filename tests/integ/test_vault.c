/*
 * test_vault.c: the foundation end to end.  A real vaultd --dev (its own
 * SoftHSM token, private CA, LMDB file) on loopback with mTLS, driven through
 * libvaultclient as each dev principal: every operation, every bad input of
 * the foundation issue, restarts (clean and kill -9), token attributes and
 * start-up reconciliation checked directly against the token.
 */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "hsm.h"
#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "kv_base64.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_secret.h"
#include "kv_test.h"
#include "rpc_client.h"
#include "vaultclient.h"
#include "vaultd_proc.h"

#define URI(role) "spiffe://hsmvault.dev/" role
#define PASSWORD "correct horse battery staple"

static char tmp[256], state[300];
static vaultd_proc vd;
static vc *op, *ta, *ea, *sn, *au;

/* Ids made along the way. */
static char tenant[64], tenant2[64], tenant3[64], env_prod[64], env_sbx[64], env_t2[64];
static char db_prod[64], db_sbx[64], key_gen[64], key_up[64], key_t2[64], svc_fpr[80];
static uint8_t dek_prod[32], dek_sbx[32];

/* ---- small call helpers ------------------------------------------------ */

#define M(svc, name) "/hsmvault.v1." svc "/" name
#define CALL(c, method, req, type, out)                                                            \
    vc_call((c), (method), &(req).base, &hsmvault__v1__##type##__descriptor,                       \
            (ProtobufCMessage **)(out))

static kv_result create_tenant(vc *c, const char *name, const char *sub, char *id_out)
{
    char *contacts[] = {"secops@example.com", "dba@example.com"};
    Hsmvault__V1__CreateTenantRequest req = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    req.name = (char *)name;
    req.subscription_id = (char *)sub;
    req.n_admin_contacts = 2;
    req.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    kv_result r = CALL(c, M("Tenants", "CreateTenant"), req, tenant, &t);
    if (kv_ok(r) && id_out) snprintf(id_out, 64, "%s", t->id);
    if (kv_ok(r) && c == op && id_out == tenant)
        snprintf(svc_fpr, sizeof(svc_fpr), "%s", t->service_key_fingerprint);
    kv_pb_free(t ? &t->base : NULL);
    return r;
}

static kv_result bind(vc *c, const char *principal, Hsmvault__V1__Role role, const char *t,
                      const char *e)
{
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = (char *)principal;
    b.role = role;
    b.tenant_id = (char *)(t ? t : "");
    b.environment_id = (char *)(e ? e : "");
    Hsmvault__V1__BindRoleRequest req = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
    req.binding = &b;
    Hsmvault__V1__RoleBinding *out = NULL;
    kv_result r = CALL(c, M("Tenants", "BindRole"), req, role_binding, &out);
    kv_pb_free(out ? &out->base : NULL);
    return r;
}

static kv_result create_env(vc *c, const char *t, const char *name,
                            Hsmvault__V1__EnvironmentType ty, char *id_out)
{
    Hsmvault__V1__CreateEnvironmentRequest req = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    req.tenant_id = (char *)t;
    req.name = (char *)name;
    req.type = ty;
    Hsmvault__V1__Environment *e = NULL;
    kv_result r = CALL(c, M("Environments", "CreateEnvironment"), req, environment, &e);
    if (kv_ok(r)) {
        CHECK(e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_SERVICE_MANAGED);
        CHECK(e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE);
        if (id_out) snprintf(id_out, 64, "%s", e->id);
    }
    kv_pb_free(e ? &e->base : NULL);
    return r;
}

static Hsmvault__V1__Environment *get_env(const char *id)
{
    Hsmvault__V1__GetEnvironmentRequest req = HSMVAULT__V1__GET_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)id;
    Hsmvault__V1__Environment *e = NULL;
    CHECK_OK(CALL(op, M("Environments", "GetEnvironment"), req, environment, &e));
    return e;
}

static Hsmvault__V1__ListKeysResponse *list_keys(vc *c, const char *t)
{
    Hsmvault__V1__ListKeysRequest req = HSMVAULT__V1__LIST_KEYS_REQUEST__INIT;
    req.tenant_id = (char *)t;
    Hsmvault__V1__ListKeysResponse *l = NULL;
    CHECK_OK(CALL(c, M("TenantKeys", "ListKeys"), req, list_keys_response, &l));
    return l;
}

static size_t key_count(const char *t)
{
    Hsmvault__V1__ListKeysResponse *l = list_keys(ta, t);
    size_t n = l ? l->n_keys : 0;
    kv_pb_free(l ? &l->base : NULL);
    return n;
}

static Hsmvault__V1__KeyState key_state(const char *t, const char *key_id)
{
    Hsmvault__V1__KeyState s = HSMVAULT__V1__KEY_STATE__KEY_STATE_UNSPECIFIED;
    Hsmvault__V1__ListKeysResponse *l = list_keys(ta, t);
    for (size_t i = 0; l && i < l->n_keys; i++)
        if (strcmp(l->keys[i]->id, key_id) == 0) s = l->keys[i]->state;
    kv_pb_free(l ? &l->base : NULL);
    return s;
}

static size_t token_object_count(void)
{
    Hsmvault__V1__ListTokenObjectsRequest req = HSMVAULT__V1__LIST_TOKEN_OBJECTS_REQUEST__INIT;
    Hsmvault__V1__ListTokenObjectsResponse *l = NULL;
    CHECK_OK(CALL(au, M("Audit", "ListTokenObjects"), req, list_token_objects_response, &l));
    size_t n = l ? l->n_objects : 0;
    kv_pb_free(l ? &l->base : NULL);
    return n;
}

static kv_result upload(const char *t, const char *name, const uint8_t *pfx, size_t pfx_len,
                        const char *password, char *id_out)
{
    Hsmvault__V1__KeyMaterial m;
    hsmvault__v1__key_material__init(&m);
    m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_PFX;
    m.pfx.data = (uint8_t *)pfx;
    m.pfx.len = pfx_len;
    m.password.data = (uint8_t *)password;
    m.password.len = strlen(password);
    Hsmvault__V1__UploadKeyRequest req = HSMVAULT__V1__UPLOAD_KEY_REQUEST__INIT;
    req.tenant_id = (char *)t;
    req.name = (char *)name;
    req.material = &m;
    Hsmvault__V1__TenantKey *k = NULL;
    kv_result r = CALL(ta, M("TenantKeys", "UploadKey"), req, tenant_key, &k);
    if (kv_ok(r) && id_out) snprintf(id_out, 64, "%s", k->id);
    kv_pb_free(k ? &k->base : NULL);
    return r;
}

static kv_result upload_file(const char *t, const char *name, const char *file,
                             const char *password, char *id_out)
{
    char path[512];
    uint8_t *data = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/%s", tmp, file);
    if (kv_failed(kv_file_read(path, 1u << 20, &data, &len))) {
        fprintf(stderr, "fixture %s missing: %s\n", path, kv_error_msg());
        return kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "fixture missing");
    }
    kv_result r = upload(t, name, data, len, password, id_out);
    free(data);
    return r;
}

static kv_result activate(vc *c, const char *t, const char *key_id)
{
    Hsmvault__V1__ActivateKeyRequest req = HSMVAULT__V1__ACTIVATE_KEY_REQUEST__INIT;
    req.tenant_id = (char *)t;
    req.key_id = (char *)key_id;
    Hsmvault__V1__TenantKey *k = NULL;
    kv_result r = CALL(c, M("TenantKeys", "ActivateKey"), req, tenant_key, &k);
    if (kv_ok(r)) CHECK(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    kv_pb_free(k ? &k->base : NULL);
    return r;
}

/* Moves vaultd's clock forward (vaultd --dev, test builds), as the operator. */
static kv_result advance_clock(vc *c, int64_t seconds)
{
    Hsmvault__V1__AdvanceClockRequest req = HSMVAULT__V1__ADVANCE_CLOCK_REQUEST__INIT;
    req.seconds = seconds;
    Hsmvault__V1__AdvanceClockResponse *resp = NULL;
    kv_result r = CALL(c, "/hsmvault.v1.Testing/AdvanceClock", req, advance_clock_response, &resp);
    kv_pb_free(resp ? &resp->base : NULL);
    return r;
}

static kv_result unwrap_same(vc *c, const char *env, const char *db, const uint8_t expect[32])
{
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease = 0;
    kv_result r = vc_database_key_unwrap(c, env, db, &dek, &lease);
    if (kv_ok(r)) {
        CHECK(dek.len == 32 && memcmp(dek.data, expect, 32) == 0);
        CHECK(lease > 0);
    }
    kv_secret_free(&dek);
    return r;
}

/* Reads the first line of a small file made by a shell fixture. */
static void read_line(const char *file, char *out, size_t cap)
{
    char path[512];
    uint8_t *data = NULL;
    size_t len = 0;
    out[0] = '\0';
    snprintf(path, sizeof(path), "%s/%s", tmp, file);
    if (kv_failed(kv_file_read(path, 4096, &data, &len))) return;
    size_t n = 0;
    while (n < len && n + 1 < cap && data[n] != '\n') {
        out[n] = (char)data[n];
        n++;
    }
    out[n] = '\0';
    free(data);
}

/* ---- fixtures ------------------------------------------------------------ */

static void make_fixtures(void)
{
    /* Password files, then keys and PFX files made by the openssl CLI. */
    CHECK(kv_test_sh("cd %s && printf '%%s' '" PASSWORD "' > pw && umask 077 && "
                     "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k2048.pem "
                     "2>/dev/null && "
                     "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k2048b.pem "
                     "2>/dev/null && "
                     "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k2048c.pem "
                     "2>/dev/null && "
                     "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out k1024.pem "
                     "2>/dev/null && "
                     "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out k4096.pem "
                     "2>/dev/null && "
                     "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out kec.pem "
                     "2>/dev/null",
                     tmp) == 0);
    const char *keys[] = {"k2048", "k1024", "k4096", "kec"};
    for (size_t i = 0; i < 4; i++)
        CHECK(
            kv_test_sh(
                "cd %s && openssl req -x509 -new -key %s.pem -subj /CN=%s -days 30 -out %s.crt && "
                "openssl pkcs12 -export -inkey %s.pem -in %s.crt -passout file:pw -out %s.pfx",
                tmp, keys[i], keys[i], keys[i], keys[i], keys[i], keys[i]) == 0);
    /* A legacy (3DES/RC2) file, and one without a certificate. */
    CHECK(kv_test_sh(
              "cd %s && openssl req -x509 -new -key k2048b.pem -subj /CN=legacy -days 30 -out "
              "k2048b.crt && "
              "openssl pkcs12 -export -legacy -inkey k2048b.pem -in k2048b.crt -passout file:pw "
              "-out legacy.pfx && "
              "openssl pkcs12 -export -nocerts -inkey k2048c.pem -passout file:pw -out nocert.pfx",
              tmp) == 0);
    /* Garbage and a truncated PFX. */
    CHECK(
        kv_test_sh(
            "cd %s && head -c 3000 /dev/urandom > garbage.pfx && head -c 700 k2048.pfx > trunc.pfx",
            tmp) == 0);
}

/* ---- the scenario ---------------------------------------------------------- */

/* Starts vaultd on the test's state and opens a client per dev principal. */
static void start_all(void)
{
    CHECK(vaultd_proc_start(&vd, state));
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    ea = vaultd_proc_client(&vd, "environment-admin");
    sn = vaultd_proc_client(&vd, "storage-node");
    au = vaultd_proc_client(&vd, "auditor");
    CHECK(op && ta && ea && sn && au);
}

/* Closes every open client and stops vaultd cleanly (exit status 0). */
static void stop_all(void)
{
    vc **all[] = {&op, &ta, &ea, &sn, &au};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) {
        vc_close(*all[i]);
        *all[i] = NULL;
    }
    CHECK(vaultd_proc_stop(&vd) == 0);
}

static void test_start_and_whoami(void)
{
    start_all();
    CHECK(op && ta && ea && sn && au);

    Hsmvault__V1__WhoAmIRequest req = HSMVAULT__V1__WHO_AM_IREQUEST__INIT;
    Hsmvault__V1__WhoAmIResponse *w = NULL;
    CHECK_OK(CALL(op, M("Tenants", "WhoAmI"), req, who_am_iresponse, &w));
    if (w) {
        CHECK(strcmp(w->principal, URI("operator")) == 0);
        CHECK(w->n_bindings == 1 && w->bindings[0]->role == HSMVAULT__V1__ROLE__ROLE_OPERATOR);
    }
    kv_pb_free(w ? &w->base : NULL);
    w = NULL;
    /* A principal with no binding can still ask who it is. */
    CHECK_OK(CALL(ta, M("Tenants", "WhoAmI"), req, who_am_iresponse, &w));
    if (w) CHECK(strcmp(w->principal, URI("tenant-admin")) == 0 && w->n_bindings == 0);
    kv_pb_free(w ? &w->base : NULL);
}

static void test_tenants(void)
{
    CHECK_OK(create_tenant(op, "contoso", "3f2a9c1e-0b7d-4e55-9a1f-7c2d8e6b4a10", tenant));
    CHECK(strncmp(tenant, "tnt-", 4) == 0);
    CHECK(strlen(svc_fpr) == 64);
    CHECK_OK(create_tenant(op, "fabrikam", "8a1b2c3d-0000-4000-8000-000000000002", tenant2));
    CHECK_OK(create_tenant(op, "northwind", "8a1b2c3d-0000-4000-8000-000000000003", tenant3));

    /* Bad input, each with a precise code. */
    CHECK_ERR(create_tenant(op, "", "sub-1", NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(create_tenant(op, "x", "", NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(create_tenant(op, "x", "bad sub/id", NULL), KV_ERR_INVALID_ARGUMENT);
    /* An admin contact that would rewrite SMTP commands or mail headers. */
    {
        char *bad[] = {"a@example.com>,<evil@example.com"};
        Hsmvault__V1__CreateTenantRequest req = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
        req.name = "x";
        req.subscription_id = "sub-x";
        req.n_admin_contacts = 1;
        req.admin_contacts = bad;
        Hsmvault__V1__Tenant *t = NULL;
        CHECK_ERR(CALL(op, M("Tenants", "CreateTenant"), req, tenant, &t), KV_ERR_INVALID_ARGUMENT);
    }
    CHECK_ERR(create_tenant(ta, "mallory", "sub-2", NULL), KV_ERR_PERMISSION_DENIED);
    CHECK(strstr(kv_error_msg(), "tenant-admin") != NULL);
    CHECK_ERR(create_tenant(au, "mallory", "sub-2", NULL), KV_ERR_PERMISSION_DENIED);

    Hsmvault__V1__ListTenantsRequest lreq = HSMVAULT__V1__LIST_TENANTS_REQUEST__INIT;
    Hsmvault__V1__ListTenantsResponse *l = NULL;
    CHECK_OK(CALL(op, M("Tenants", "ListTenants"), lreq, list_tenants_response, &l));
    CHECK(l && l->n_tenants == 3);
    kv_pb_free(l ? &l->base : NULL);

    Hsmvault__V1__GetTenantRequest g = HSMVAULT__V1__GET_TENANT_REQUEST__INIT;
    g.tenant_id = "tnt-0000000000000000";
    Hsmvault__V1__Tenant *t = NULL;
    CHECK_ERR(CALL(op, M("Tenants", "GetTenant"), g, tenant, &t), KV_ERR_NOT_FOUND);
    CHECK(strstr(kv_error_msg(), "tnt-0000000000000000") != NULL);
    g.tenant_id = "../../etc";
    CHECK_ERR(CALL(op, M("Tenants", "GetTenant"), g, tenant, &t), KV_ERR_INVALID_ARGUMENT);

    /* Role bindings: the tenant admin for tenants 1 and 2 (not 3); the
     * environment admin for tenant 1; the storage node gets its
     * environment scope once the environments exist. */
    CHECK_OK(bind(op, URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, tenant, NULL));
    CHECK_OK(bind(op, URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, tenant2, NULL));
    CHECK_OK(bind(op, URI("environment-admin"), HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN, tenant,
                  NULL));
    CHECK_ERR(
        bind(op, URI("x"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, "tnt-0000000000000000", NULL),
        KV_ERR_NOT_FOUND);
    CHECK_ERR(bind(ta, URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_OPERATOR, NULL, NULL),
              KV_ERR_PERMISSION_DENIED);
}

static void test_environments_and_service_key_deks(void)
{
    CHECK_OK(create_env(op, tenant, "prod-eu",
                        HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION, env_prod));
    CHECK_OK(create_env(op, tenant, "sandbox-1",
                        HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX, env_sbx));
    CHECK_OK(create_env(op, tenant2, "t2-prod",
                        HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION, env_t2));
    CHECK_ERR(create_env(op, tenant, "no-type",
                         HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_UNSPECIFIED, NULL),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(create_env(op, "tnt-0000000000000000", "x",
                         HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX, NULL),
              KV_ERR_NOT_FOUND);
    CHECK_ERR(create_env(ea, tenant, "by-env-admin",
                         HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX, NULL),
              KV_ERR_PERMISSION_DENIED);

    /* The storage node is bound to both environments of tenant 1 (one
     * binding each) and to nothing in tenant 2. */
    CHECK_OK(
        bind(op, URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant, env_prod));
    CHECK_OK(bind(op, URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant, env_sbx));
    CHECK_ERR(
        bind(op, URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant2, env_prod),
        KV_ERR_INVALID_ARGUMENT);

    char id[64];
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease = 0;
    CHECK_OK(vc_database_key_create(sn, env_prod, "orders", id, sizeof(id), &dek, &lease));
    CHECK(dek.len == 32 && lease > 0);
    snprintf(db_prod, sizeof(db_prod), "%s", id);
    if (dek.len == 32) memcpy(dek_prod, dek.data, 32);
    kv_secret_free(&dek);
    CHECK_OK(vc_database_key_create(sn, env_sbx, "orders", id, sizeof(id), &dek, &lease));
    snprintf(db_sbx, sizeof(db_sbx), "%s", id);
    if (dek.len == 32) memcpy(dek_sbx, dek.data, 32);
    kv_secret_free(&dek);
    CHECK(memcmp(dek_prod, dek_sbx, 32) != 0);

    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));
    /* Same name twice in one environment; wrong environment; not bound. */
    CHECK_ERR(vc_database_key_create(sn, env_prod, "orders", id, sizeof(id), &dek, &lease),
              KV_ERR_ALREADY_EXISTS);
    CHECK_ERR(unwrap_same(sn, env_sbx, db_prod, dek_prod), KV_ERR_NOT_FOUND);
    CHECK_ERR(vc_database_key_create(sn, env_t2, "x", id, sizeof(id), &dek, &lease),
              KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(unwrap_same(sn, env_t2, db_prod, dek_prod), KV_ERR_PERMISSION_DENIED);
    /* Nobody but a storage node unwraps, the operator included. */
    CHECK_ERR(unwrap_same(op, env_prod, db_prod, dek_prod), KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(unwrap_same(ta, env_prod, db_prod, dek_prod), KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(unwrap_same(au, env_prod, db_prod, dek_prod), KV_ERR_PERMISSION_DENIED);
    kv_secret_free(&dek);

    /* Unwraps in flight together from one thread (vc_queue): each comes
     * back with its own tag, key or refusal. */
    vc_queue *q = NULL;
    CHECK_OK(vc_queue_open(&q));
    static const char *const tags[] = {"prod", "sbx", "foreign", "operator"};
    CHECK_OK(vc_queue_database_key_unwrap(q, sn, env_prod, db_prod, (void *)tags[0]));
    CHECK_OK(vc_queue_database_key_unwrap(q, sn, env_sbx, db_sbx, (void *)tags[1]));
    CHECK_OK(vc_queue_database_key_unwrap(q, sn, env_t2, db_prod, (void *)tags[2]));
    CHECK_OK(vc_queue_database_key_unwrap(q, op, env_prod, db_prod, (void *)tags[3]));
    CHECK(vc_queue_in_flight(q) == 4);
    int seen = 0;
    while (vc_queue_in_flight(q) > 0) {
        void *tag = NULL;
        kv_result r = vc_queue_next_database_key(q, &tag, &dek, &lease);
        if (tag == tags[0]) CHECK(kv_ok(r) && dek.len == 32 && !memcmp(dek.data, dek_prod, 32));
        if (tag == tags[1]) CHECK(kv_ok(r) && dek.len == 32 && !memcmp(dek.data, dek_sbx, 32));
        if (tag == tags[2] || tag == tags[3])
            CHECK(kv_failed(r) && kv_error_code() == KV_ERR_PERMISSION_DENIED);
        seen |= tag == tags[0]   ? 1
                : tag == tags[1] ? 2
                : tag == tags[2] ? 4
                : tag == tags[3] ? 8
                                 : 16;
        kv_secret_free(&dek);
    }
    CHECK(seen == 15);
    void *none = (void *)1;
    CHECK_ERR(vc_queue_next_database_key(q, &none, &dek, NULL), KV_ERR_FAILED_PRECONDITION);
    CHECK(none == NULL);
    vc_queue_close(q);
}

static void test_generate_key(void)
{
    Hsmvault__V1__GenerateKeyRequest req = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    req.tenant_id = tenant;
    req.name = "kek-2026";
    req.password.data = (uint8_t *)PASSWORD;
    req.password.len = strlen(PASSWORD);
    Hsmvault__V1__GenerateKeyResponse *g = NULL;

    /* Self-managed keys are off until the operator enables them. */
    CHECK_ERR(CALL(ta, M("TenantKeys", "GenerateKey"), req, generate_key_response, &g),
              KV_ERR_FAILED_PRECONDITION);
    Hsmvault__V1__EnableSelfManagedKeysRequest en =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    Hsmvault__V1__Tenant *t = NULL;
    en.tenant_id = tenant;
    CHECK_ERR(CALL(ta, M("Tenants", "EnableSelfManagedKeys"), en, tenant, &t),
              KV_ERR_PERMISSION_DENIED);
    CHECK_OK(CALL(op, M("Tenants", "EnableSelfManagedKeys"), en, tenant, &t));
    if (t) CHECK(t->self_managed_keys);
    kv_pb_free(t ? &t->base : NULL);
    t = NULL;
    en.tenant_id = tenant2;
    CHECK_OK(CALL(op, M("Tenants", "EnableSelfManagedKeys"), en, tenant, &t));
    kv_pb_free(t ? &t->base : NULL);

    /* Weak password, other roles, out of scope. */
    req.password.len = 3;
    CHECK_ERR(CALL(ta, M("TenantKeys", "GenerateKey"), req, generate_key_response, &g),
              KV_ERR_INVALID_ARGUMENT);
    req.password.len = strlen(PASSWORD);
    CHECK_ERR(CALL(op, M("TenantKeys", "GenerateKey"), req, generate_key_response, &g),
              KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(CALL(ea, M("TenantKeys", "GenerateKey"), req, generate_key_response, &g),
              KV_ERR_PERMISSION_DENIED);
    req.tenant_id = tenant3;
    CHECK_ERR(CALL(ta, M("TenantKeys", "GenerateKey"), req, generate_key_response, &g),
              KV_ERR_PERMISSION_DENIED);
    req.tenant_id = tenant;

    size_t objects_before = token_object_count();
    CHECK_OK(CALL(ta, M("TenantKeys", "GenerateKey"), req, generate_key_response, &g));
    if (g == NULL || g->key == NULL) return;
    /* The first key of a tenant activates by itself. */
    CHECK(g->key->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    CHECK(g->key->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_GENERATED);
    CHECK(g->key->bits == 2048);
    CHECK(strcmp(g->key->created_by, URI("tenant-admin")) == 0);
    CHECK(token_object_count() == objects_before + 2); /* private + public key */
    snprintf(key_gen, sizeof(key_gen), "%s", g->key->id);

    /* The PFX opens with the openssl CLI (no -legacy) and holds the public
     * key whose SHA-256 the vault reports as the fingerprint. */
    char path[512], fpr[80];
    snprintf(path, sizeof(path), "%s/generated.pfx", tmp);
    CHECK_OK(kv_file_write_new(path, g->pfx.data, g->pfx.len, 0600));
    CHECK(
        kv_test_sh(
            "cd %s && openssl pkcs12 -in generated.pfx -passin file:pw -nokeys -clcerts "
            "2>/dev/null | "
            "openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum > gen.fpr",
            tmp) == 0);
    read_line("gen.fpr", fpr, sizeof(fpr));
    CHECK(strncmp(fpr, g->key->fingerprint, 64) == 0);
    CHECK(kv_test_sh("cd %s && openssl pkcs12 -in generated.pfx -passin file:pw -info -noout > "
                     "gen.info 2>&1 && "
                     "grep -q 'PBES2, PBKDF2, AES-256-CBC, Iteration [0-9]*, PRF hmacWithSHA256' "
                     "gen.info && "
                     "grep -q 'MAC: sha256' gen.info",
                     tmp) == 0);
    CHECK(kv_test_sh(
              "cd %s && openssl pkcs12 -in generated.pfx -passin file:pw -nokeys -clcerts "
              "2>/dev/null | "
              "openssl x509 -noout -text | grep -q 'Signature Algorithm: sha256WithRSAEncryption'",
              tmp) == 0);
    /* The wrong password does not open it. */
    CHECK(kv_test_sh("cd %s && printf wrong > badpw && ! openssl pkcs12 -in generated.pfx -passin "
                     "file:badpw "
                     "-nokeys >/dev/null 2>&1",
                     tmp) == 0);
    kv_pb_free(&g->base);

    Hsmvault__V1__GetTenantRequest gt = HSMVAULT__V1__GET_TENANT_REQUEST__INIT;
    gt.tenant_id = tenant;
    t = NULL;
    CHECK_OK(CALL(ta, M("Tenants", "GetTenant"), gt, tenant, &t));
    if (t) CHECK(strcmp(t->active_key_id, key_gen) == 0);
    kv_pb_free(t ? &t->base : NULL);
}

static void test_upload_key(void)
{
    size_t keys_before = key_count(tenant);
    size_t objects_before = token_object_count();

    /* Every bad PFX: precise code, nothing changes (records or token). */
    CHECK_ERR(upload_file(tenant, "wrong-pw", "k2048.pfx", "not the password", NULL),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "password") != NULL);
    CHECK_ERR(upload_file(tenant, "rsa1024", "k1024.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "1024") != NULL);
    CHECK_ERR(upload_file(tenant, "rsa4096", "k4096.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "4096") != NULL);
    CHECK_ERR(upload_file(tenant, "ec", "kec.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "EC") != NULL);
    CHECK_ERR(upload_file(tenant, "garbage", "garbage.pfx", PASSWORD, NULL),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(upload_file(tenant, "trunc", "trunc.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(upload(tenant, "empty", (const uint8_t *)"", 0, PASSWORD, NULL),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(upload_file(tenant3, "scope", "k2048.pfx", PASSWORD, NULL), KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(upload_file("tnt-0000000000000000", "nf", "k2048.pfx", PASSWORD, NULL),
              KV_ERR_NOT_FOUND);
    /* A request larger than the server's message limit (4 MiB). */
    size_t big = 5u << 20;
    uint8_t *huge = calloc(1, big);
    CHECK_ERR(upload(tenant, "huge", huge, big, PASSWORD, NULL), KV_ERR_RESOURCE_EXHAUSTED);
    free(huge);
    CHECK(key_count(tenant) == keys_before);
    CHECK(token_object_count() == objects_before);

    /* Good files: modern, legacy, no certificate.  Later keys wait in
     * available; the same key twice is refused. */
    CHECK_OK(upload_file(tenant, "modern", "k2048.pfx", PASSWORD, key_up));
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    char legacy[64], nocert[64];
    CHECK_OK(upload_file(tenant, "legacy", "legacy.pfx", PASSWORD, legacy));
    CHECK_OK(upload_file(tenant, "nocert", "nocert.pfx", PASSWORD, nocert));
    CHECK(key_state(tenant, legacy) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    CHECK_ERR(upload_file(tenant, "again", "k2048.pfx", PASSWORD, NULL), KV_ERR_ALREADY_EXISTS);
    CHECK(key_count(tenant) == keys_before + 3);
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);

    /* The fingerprint matches the file's public key. */
    char fpr[80];
    CHECK(
        kv_test_sh("cd %s && openssl pkey -in k2048.pem -pubout -outform DER | sha256sum > up.fpr",
                   tmp) == 0);
    read_line("up.fpr", fpr, sizeof(fpr));
    Hsmvault__V1__ListKeysResponse *l = list_keys(au, tenant);
    for (size_t i = 0; l && i < l->n_keys; i++)
        if (strcmp(l->keys[i]->id, key_up) == 0)
            CHECK(strncmp(fpr, l->keys[i]->fingerprint, 64) == 0);
    kv_pb_free(l ? &l->base : NULL);

    /* Tenant 2's own key (tenant 2's first key: active). */
    CHECK_OK(upload_file(tenant2, "t2", "legacy.pfx", PASSWORD, key_t2));
    CHECK(key_state(tenant2, key_t2) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
}

static void test_apply_activate_return(void)
{
    Hsmvault__V1__ApplyKeyRequest ap = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    Hsmvault__V1__Environment *e = NULL;
    ap.environment_id = env_prod;
    CHECK_ERR(CALL(ta, M("Environments", "ApplyKey"), ap, environment, &e),
              KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(CALL(op, M("Environments", "ApplyKey"), ap, environment, &e),
              KV_ERR_PERMISSION_DENIED);
    ap.environment_id = env_t2; /* the environment admin is scoped to tenant 1 */
    CHECK_ERR(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e),
              KV_ERR_PERMISSION_DENIED);
    ap.environment_id = "env-0000000000000000";
    CHECK_ERR(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e), KV_ERR_NOT_FOUND);
    ap.environment_id = env_prod;
    CHECK_OK(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e));
    if (e) {
        CHECK(e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED);
        CHECK(strcmp(e->key_id, key_gen) == 0);
    }
    kv_pb_free(e ? &e->base : NULL);
    e = NULL;
    /* Re-wrapped under the tenant key: the same DEK bytes come back. */
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));

    /* Activation: another tenant's key, a deleted-looking id, wrong role. */
    CHECK_ERR(activate(ta, tenant, key_t2), KV_ERR_NOT_FOUND);
    CHECK_ERR(activate(ta, tenant, "key-0000000000000000"), KV_ERR_NOT_FOUND);
    CHECK_ERR(activate(ta, tenant, "not a key id"), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(activate(ta, tenant2, key_up), KV_ERR_NOT_FOUND);
    CHECK_ERR(activate(ea, tenant, key_up), KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(activate(ta, tenant, key_gen), KV_ERR_FAILED_PRECONDITION); /* already active */
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);

    /* No activation within 24 h of the last one (the generated key's own
     * activation): the refusal names the rule and when it clears. */
    CHECK_ERR(activate(ta, tenant, key_up), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "activation is blocked until") != NULL &&
          strstr(kv_error_msg(), "24 h") != NULL);
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    CHECK_ERR(advance_clock(ta, 24 * 3600), KV_ERR_PERMISSION_DENIED);
    CHECK_OK(advance_clock(op, 23 * 3600));
    CHECK_ERR(activate(ta, tenant, key_up), KV_ERR_FAILED_PRECONDITION);
    CHECK_OK(advance_clock(op, 3600));
    CHECK_OK(activate(ta, tenant, key_up));
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    CHECK_ERR(activate(ta, tenant, key_gen), KV_ERR_FAILED_PRECONDITION); /* 24 h again */
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    Hsmvault__V1__Environment *pe = get_env(env_prod);
    if (pe) CHECK(strcmp(pe->key_id, key_up) == 0);
    kv_pb_free(pe ? &pe->base : NULL);
    /* Only one active key per tenant. */
    Hsmvault__V1__ListKeysResponse *l = list_keys(ta, tenant);
    size_t active = 0;
    for (size_t i = 0; l && i < l->n_keys; i++)
        active += l->keys[i]->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE;
    CHECK(active == 1);
    kv_pb_free(l ? &l->base : NULL);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));

    /* A new database in a customer-managed environment. */
    char id[64];
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_OK(vc_database_key_create(sn, env_prod, "inventory", id, sizeof(id), &dek, &lease));
    uint8_t inv[32] = {0};
    if (dek.len == 32) memcpy(inv, dek.data, 32);
    kv_secret_free(&dek);
    CHECK_OK(unwrap_same(sn, env_prod, id, inv));

    /* Return to the service key: production needs its name typed back. */
    Hsmvault__V1__ReturnToServiceKeyRequest rt = HSMVAULT__V1__RETURN_TO_SERVICE_KEY_REQUEST__INIT;
    rt.environment_id = env_prod;
    CHECK_ERR(CALL(ea, M("Environments", "ReturnToServiceKey"), rt, environment, &e),
              KV_ERR_FAILED_PRECONDITION);
    rt.confirmation_name = "prod-us";
    CHECK_ERR(CALL(ea, M("Environments", "ReturnToServiceKey"), rt, environment, &e),
              KV_ERR_FAILED_PRECONDITION);
    pe = get_env(env_prod);
    if (pe) CHECK(pe->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED);
    kv_pb_free(pe ? &pe->base : NULL);
    rt.confirmation_name = "prod-eu";
    CHECK_OK(CALL(ea, M("Environments", "ReturnToServiceKey"), rt, environment, &e));
    if (e) CHECK(e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_SERVICE_MANAGED);
    kv_pb_free(e ? &e->base : NULL);
    e = NULL;
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_OK(unwrap_same(sn, env_prod, id, inv));
    /* And back to the tenant key for the rest of the test. */
    CHECK_OK(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e));
    kv_pb_free(e ? &e->base : NULL);
    e = NULL;
    /* A sandbox returns without confirmation. */
    ap.environment_id = env_sbx;
    CHECK_OK(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e));
    kv_pb_free(e ? &e->base : NULL);
    e = NULL;
    rt.environment_id = env_sbx;
    rt.confirmation_name = "";
    CHECK_OK(CALL(ea, M("Environments", "ReturnToServiceKey"), rt, environment, &e));
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));
}

/* Loads a profile for a role and swaps in other TLS files. */
static kv_result call_with(const char *cert, const char *key, const char *ca)
{
    char path[512];
    vc_profile p;
    snprintf(path, sizeof(path), "%s/clients/operator.conf", state);
    KV_GUARD(vc_profile_load(path, &p));
    if (cert) snprintf(p.cert, sizeof(p.cert), "%s", cert);
    if (key) snprintf(p.key, sizeof(p.key), "%s", key);
    if (ca) snprintf(p.ca, sizeof(p.ca), "%s", ca);
    p.timeout_ms = 5000;
    vc *c = NULL;
    KV_GUARD(vc_open(&p, &c));
    Hsmvault__V1__WhoAmIRequest req = HSMVAULT__V1__WHO_AM_IREQUEST__INIT;
    Hsmvault__V1__WhoAmIResponse *w = NULL;
    kv_result r = CALL(c, M("Tenants", "WhoAmI"), req, who_am_iresponse, &w);
    kv_pb_free(w ? &w->base : NULL);
    vc_close(c);
    return r;
}

static void test_handshake(void)
{
    /* A client certificate from another CA is refused at the handshake. */
    CHECK(
        kv_test_sh(
            "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
            "rogue-ca.key "
            "-out rogue-ca.pem -subj /CN=rogue-ca -days 2 2>/dev/null && "
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue.key "
            "-out rogue.csr "
            "-subj /CN=rogue 2>/dev/null && printf "
            "'subjectAltName=URI:spiffe://hsmvault.dev/operator\\n' > rogue.ext && "
            "openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial "
            "-extfile rogue.ext -days 2 -out rogue.pem 2>/dev/null",
            tmp) == 0);
    char cert[512], key[512], ca[512], path[512];
    snprintf(cert, sizeof(cert), "%s/rogue.pem", tmp);
    snprintf(key, sizeof(key), "%s/rogue.key", tmp);
    CHECK_ERR(call_with(cert, key, NULL), KV_ERR_UNAVAILABLE);
    /* A client trusting another CA refuses the server. */
    snprintf(ca, sizeof(ca), "%s/rogue-ca.pem", tmp);
    CHECK_ERR(call_with(NULL, NULL, ca), KV_ERR_UNAVAILABLE);
    /* The genuine profile still works. */
    CHECK_OK(call_with(NULL, NULL, NULL));

    /* No client certificate at all. */
    vc_profile p;
    snprintf(path, sizeof(path), "%s/clients/operator.conf", state);
    CHECK_OK(vc_profile_load(path, &p));
    rpc_client_config rc = {.target = p.target,
                            .ca_file = p.ca,
                            .cert_file = NULL,
                            .key_file = NULL,
                            .server_name = p.server_name[0] ? p.server_name : NULL};
    rpc_client *c = NULL;
    CHECK_OK(rpc_client_open(&rc, &c));
    if (c) {
        rpc_client_reply rep = {0};
        CHECK_ERR(rpc_client_call(c, M("Tenants", "WhoAmI"), (const uint8_t *)"", 0, 5000, &rep),
                  KV_ERR_UNAVAILABLE);
        rpc_client_close(c);
    }
    /* An unknown method answers UNIMPLEMENTED. */
    Hsmvault__V1__WhoAmIRequest req = HSMVAULT__V1__WHO_AM_IREQUEST__INIT;
    Hsmvault__V1__WhoAmIResponse *w = NULL;
    CHECK_ERR(CALL(op, "/hsmvault.v1.Tenants/DropTables", req, who_am_iresponse, &w),
              KV_ERR_UNIMPLEMENTED);
    /* Malformed request bytes. */
    rpc_client_config rc2 = {.target = p.target,
                             .ca_file = p.ca,
                             .cert_file = p.cert,
                             .key_file = p.key,
                             .server_name = p.server_name[0] ? p.server_name : NULL};
    CHECK_OK(rpc_client_open(&rc2, &c));
    if (c) {
        rpc_client_reply rep = {0};
        CHECK_ERR(rpc_client_call(c, M("Tenants", "GetTenant"), (const uint8_t *)"\x0a\xff\x01", 3,
                                  5000, &rep),
                  KV_ERR_INVALID_ARGUMENT);
        rpc_client_close(c);
    }
}

static void check_token_policy(const hsm_object_info *objs, size_t n, size_t *private_keys)
{
    *private_keys = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(objs[i].object_class, "private-key") != 0) continue;
        if (strncmp(objs[i].label, "hsmvault:audit/", 15) == 0) { /* the audit log's, sign only */
            CHECK(objs[i].sensitive && !objs[i].extractable && objs[i].can_sign &&
                  !objs[i].can_decrypt && !objs[i].can_unwrap);
            continue;
        }
        (*private_keys)++;
        CHECK(objs[i].sensitive && !objs[i].extractable && objs[i].is_private);
        CHECK(objs[i].can_decrypt && !objs[i].can_sign && !objs[i].can_wrap);
        if (!objs[i].sensitive || objs[i].extractable)
            fprintf(stderr, "policy violation: %s\n", objs[i].label);
    }
}

static void test_token_attributes_api(void)
{
    Hsmvault__V1__ListTokenObjectsRequest req = HSMVAULT__V1__LIST_TOKEN_OBJECTS_REQUEST__INIT;
    Hsmvault__V1__ListTokenObjectsResponse *l = NULL;
    CHECK_ERR(CALL(ta, M("Audit", "ListTokenObjects"), req, list_token_objects_response, &l),
              KV_ERR_PERMISSION_DENIED);
    CHECK_OK(CALL(au, M("Audit", "ListTokenObjects"), req, list_token_objects_response, &l));
    size_t priv = 0, service = 0;
    for (size_t i = 0; l && i < l->n_objects; i++) {
        Hsmvault__V1__TokenObject *o = l->objects[i];
        if (strcmp(o->object_class, "private-key") != 0) continue;
        if (strcmp(o->vault_role, "audit-checkpoint-key") == 0) { /* the audit log's */
            CHECK(o->sensitive && !o->extractable && o->can_sign && !o->can_decrypt);
            continue;
        }
        priv++;
        /* Every private key: sensitive, not extractable, private, decrypt
         * and unwrap only.  Keys generated in the token (service keys) were
         * never anything else; tenant keys came from a PFX (generated in
         * software for the admin's download, or uploaded), so PKCS#11
         * rightly reports them as not always-sensitive. */
        CHECK(o->sensitive && !o->extractable && o->private_);
        CHECK(o->can_decrypt && !o->can_sign && !o->can_wrap);
        CHECK(strcmp(o->vault_role, "unknown") != 0);
        if (strcmp(o->vault_role, "service-key") == 0) {
            CHECK(o->never_extractable && o->always_sensitive);
            service++;
        }
    }
    /* 3 service keys + tenant 1: generated, modern, legacy, nocert + tenant 2: one. */
    CHECK(priv == 8);
    CHECK(service == 3);
    kv_pb_free(l ? &l->base : NULL);
}

static hsm *open_token_directly(void)
{
    char conf[512], pin[512];
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", state);
    snprintf(pin, sizeof(pin), "%s/pin", state);
    setenv("SOFTHSM2_CONF", conf, 1);
    hsm_config cfg = {.module_path = getenv("HSMVAULT_SOFTHSM_MODULE"),
                      .token_label = "hsmvault-dev",
                      .pin_file = pin,
                      .sessions = 1};
    hsm *h = NULL;
    CHECK_OK(hsm_open(&cfg, &h));
    return h;
}

static void test_restart_and_reconcile(void)
{
    /* Clean stop (SIGTERM): exit status 0. */
    stop_all();

    /* With vaultd down: every private key in the token is sensitive and
     * never extractable; plant an orphan with the vault's label prefix (as a
     * crash between token create and commit leaves) and a foreign object. */
    hsm *h = open_token_directly();
    hsm_key_id orphan, foreign;
    uint8_t *spki = NULL;
    size_t spki_len = 0, n = 0, priv = 0;
    hsm_object_info *objs = NULL;
    if (h) {
        CHECK_OK(hsm_objects_list(h, &objs, &n));
        check_token_policy(objs, n, &priv);
        CHECK(priv == 8);
        free(objs);
        CHECK_OK(hsm_rsa_generate(h, "hsmvault:tnt-0000000000000000/key-orphan", 2048, &orphan,
                                  &spki, &spki_len));
        free(spki);
        CHECK_OK(hsm_rsa_generate(h, "someone-else:keep-me", 2048, &foreign, &spki, &spki_len));
        free(spki);
        hsm_close(h);
    }

    CHECK(vaultd_proc_start(&vd, state));
    sn = vaultd_proc_client(&vd, "storage-node");
    au = vaultd_proc_client(&vd, "auditor");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    /* Same DEKs after the restart. */
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);

    /* The orphan is gone, the foreign object is untouched. */
    h = open_token_directly();
    if (h) {
        bool exists = true;
        CHECK_OK(hsm_key_exists(h, &orphan, &exists));
        CHECK(!exists);
        CHECK_OK(hsm_key_exists(h, &foreign, &exists));
        CHECK(exists);
        CHECK_OK(hsm_key_destroy(h, &foreign));
        hsm_close(h);
    }

    /* kill -9 in the middle of life: nothing committed is lost. */
    char id[64];
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_OK(vc_database_key_create(sn, env_sbx, "after-restart", id, sizeof(id), &dek, &lease));
    uint8_t saved[32] = {0};
    if (dek.len == 32) memcpy(saved, dek.data, 32);
    kv_secret_free(&dek);
    vc_close(sn), vc_close(au), vc_close(ta);
    vaultd_proc_kill(&vd);
    CHECK(vaultd_proc_start(&vd, state));
    sn = vaultd_proc_client(&vd, "storage-node");
    CHECK_OK(unwrap_same(sn, env_sbx, id, saved));
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    vc_close(sn);
    sn = NULL;
    CHECK(vaultd_proc_stop(&vd) == 0);

    /* A state directory in use by a running vaultd is refused by a second. */
}

static void test_second_instance_refused(void)
{
    CHECK(vaultd_proc_start(&vd, state));
    char bin[512];
    vaultd_build_path(bin, sizeof(bin), "vault/vaultd");
    CHECK(kv_test_sh("%s --dev --state-dir %s --listen 127.0.0.1:0 >/dev/null 2>%s/second.err", bin,
                     state, tmp) != 0);
    CHECK(kv_test_sh("grep -qi 'in use\\|locked\\|another' %s/second.err", tmp) == 0);
    CHECK(vaultd_proc_stop(&vd) == 0);
}

/* kill -9 in the middle of an activation's re-wrap (a test hook dies right
 * after the first environment is committed): after restart the activation
 * finishes by itself and every DEK unwraps to the same bytes. */
static void test_activation_crash(void)
{
    CHECK(vaultd_proc_start(&vd, state));
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    ea = vaultd_proc_client(&vd, "environment-admin");
    sn = vaultd_proc_client(&vd, "storage-node");
    /* Two customer-managed environments, each with databases. */
    Hsmvault__V1__ApplyKeyRequest ap = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    Hsmvault__V1__Environment *e = NULL;
    ap.environment_id = env_sbx;
    CHECK_OK(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e));
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));
    /* The test clock's offset persists in the dev state directory, so the
     * 24 h rule still holds across the restarts below: move past it. */
    CHECK_OK(advance_clock(op, 3 * 24 * 3600));
    vc_close(op), vc_close(ta), vc_close(ea), vc_close(sn);
    op = ta = ea = sn = NULL;
    CHECK(vaultd_proc_stop(&vd) == 0);

    setenv("HSMVAULT_TEST_CRASH_AT", "activation-rewrap", 1);
    CHECK(vaultd_proc_start(&vd, state));
    unsetenv("HSMVAULT_TEST_CRASH_AT");
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    CHECK_ERR(activate(ta, tenant, key_gen), KV_ERR_UNAVAILABLE); /* vaultd died mid-way */
    int status = 0;
    CHECK(waitpid(vd.pid, &status, 0) == vd.pid && WIFSIGNALED(status) &&
          WTERMSIG(status) == SIGKILL);
    vd.pid = 0;
    vc_close(op), vc_close(ta);

    CHECK(vaultd_proc_start(&vd, state));
    ta = vaultd_proc_client(&vd, "tenant-admin");
    sn = vaultd_proc_client(&vd, "storage-node");
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    Hsmvault__V1__GetTenantRequest gt = HSMVAULT__V1__GET_TENANT_REQUEST__INIT;
    gt.tenant_id = tenant;
    Hsmvault__V1__Tenant *t = NULL;
    CHECK_OK(CALL(ta, M("Tenants", "GetTenant"), gt, tenant, &t));
    if (t) CHECK(strcmp(t->active_key_id, key_gen) == 0 && t->installing_key_id[0] == '\0');
    kv_pb_free(t ? &t->base : NULL);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));
    vc_close(ta), vc_close(sn);
    ta = sn = NULL;
    CHECK(vaultd_proc_stop(&vd) == 0);
    char log[512];
    snprintf(log, sizeof(log), "%s.log", state);
    CHECK(kv_test_sh("grep -q 'resuming the interrupted activation of key %s' %s", key_gen, log) ==
          0);
}

static kv_result roll_back(vc *c, const char *t)
{
    Hsmvault__V1__RollBackRequest req = HSMVAULT__V1__ROLL_BACK_REQUEST__INIT;
    req.tenant_id = (char *)t;
    Hsmvault__V1__TenantKey *k = NULL;
    kv_result r = CALL(c, M("TenantKeys", "RollBack"), req, tenant_key, &k);
    if (kv_ok(r)) CHECK(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    kv_pb_free(k ? &k->base : NULL);
    return r;
}

/* Seed 000's defence: within 72 h of an activation another tenant admin rolls
 * it back (the 24 h rule does not apply); the activator cannot; nothing to roll
 * back twice; the window closes after 72 h. */
static void test_rollback(void)
{
    CHECK(vaultd_proc_start(&vd, state));
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    sn = vaultd_proc_client(&vd, "storage-node");
    vc *ta2 = vaultd_proc_client(&vd, "tenant-admin-2");
    CHECK(ta2 != NULL);
    if (ta2 == NULL) return;
    CHECK_ERR(roll_back(ta2, tenant), KV_ERR_PERMISSION_DENIED); /* not bound yet */
    CHECK_OK(bind(op, URI("tenant-admin-2"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, tenant, NULL));
    CHECK_ERR(roll_back(op, tenant), KV_ERR_PERMISSION_DENIED);
    /* key_gen was activated (via the resumed activation) by tenant-admin. */
    CHECK_ERR(roll_back(ta, tenant), KV_ERR_PERMISSION_DENIED);
    CHECK(strstr(kv_error_msg(), "another tenant admin") != NULL);
    CHECK_OK(roll_back(ta2, tenant));
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    Hsmvault__V1__Environment *pe = get_env(env_prod);
    if (pe) CHECK(strcmp(pe->key_id, key_up) == 0);
    kv_pb_free(pe ? &pe->base : NULL);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_OK(unwrap_same(sn, env_sbx, db_sbx, dek_sbx));
    CHECK_ERR(roll_back(ta2, tenant), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "no activation to roll back") != NULL);

    /* A roll-back counts as an activation for the 24 h rule... */
    CHECK_ERR(activate(ta, tenant, key_gen), KV_ERR_FAILED_PRECONDITION);
    CHECK_OK(advance_clock(op, 25 * 3600));
    CHECK_OK(activate(ta, tenant, key_gen));
    /* ...and a roll-back is possible only within 72 h of the activation. */
    CHECK_OK(advance_clock(op, 72 * 3600));
    CHECK_ERR(roll_back(ta2, tenant), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "roll-back window closed") != NULL);
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    vc_close(ta2);
    vc_close(op), vc_close(ta), vc_close(sn);
    op = ta = sn = NULL;
    CHECK(vaultd_proc_stop(&vd) == 0);
}

/* A PFX fixture (password PASSWORD) as key material; *buf is freed by the caller. */
static kv_result pfx_material(const char *pfx_file, Hsmvault__V1__KeyMaterial *m, uint8_t **buf)
{
    char path[512];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/%s", tmp, pfx_file);
    KV_GUARD(kv_file_read(path, 1u << 20, buf, &len));
    hsmvault__v1__key_material__init(m);
    m->material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_PFX;
    m->pfx.data = *buf;
    m->pfx.len = len;
    m->password.data = (uint8_t *)PASSWORD;
    m->password.len = strlen(PASSWORD);
    return KV_SUCCESS;
}

static kv_result lock_tenant(vc *c, const char *t, const char *pfx_file, const char *confirmation,
                             size_t *n_locked)
{
    Hsmvault__V1__KeyMaterial m;
    uint8_t *pfx = NULL;
    KV_GUARD(pfx_material(pfx_file, &m, &pfx));
    Hsmvault__V1__LockTenantRequest req = HSMVAULT__V1__LOCK_TENANT_REQUEST__INIT;
    req.tenant_id = (char *)t;
    req.active_key = &m;
    req.confirmation = (char *)confirmation;
    Hsmvault__V1__LockTenantResponse *resp = NULL;
    kv_result r = CALL(c, M("TenantKeys", "LockTenant"), req, lock_tenant_response, &resp);
    if (kv_ok(r) && n_locked != NULL) *n_locked = resp->n_locked_environment_ids;
    kv_pb_free(resp ? &resp->base : NULL);
    free(pfx);
    return r;
}

static kv_result unlock_key(vc *c, const char *t, const char *key_id, const char *pfx_file)
{
    Hsmvault__V1__KeyMaterial m;
    uint8_t *pfx = NULL;
    KV_GUARD(pfx_material(pfx_file, &m, &pfx));
    Hsmvault__V1__UnlockKeyRequest req = HSMVAULT__V1__UNLOCK_KEY_REQUEST__INIT;
    req.tenant_id = (char *)t;
    req.key_id = (char *)key_id;
    req.key = &m;
    Hsmvault__V1__TenantKey *k = NULL;
    kv_result r = CALL(c, M("TenantKeys", "UnlockKey"), req, tenant_key, &k);
    if (kv_ok(r)) CHECK(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    kv_pb_free(k ? &k->base : NULL);
    free(pfx);
    return r;
}

static kv_result unlock_env(vc *c, const char *env)
{
    Hsmvault__V1__UnlockEnvironmentRequest req = HSMVAULT__V1__UNLOCK_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)env;
    Hsmvault__V1__Environment *e = NULL;
    kv_result r = CALL(c, M("Environments", "UnlockEnvironment"), req, environment, &e);
    if (kv_ok(r)) CHECK(e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ACTIVE);
    kv_pb_free(e ? &e->base : NULL);
    return r;
}

static bool token_has_key(const char *key_id)
{
    Hsmvault__V1__ListTokenObjectsRequest req = HSMVAULT__V1__LIST_TOKEN_OBJECTS_REQUEST__INIT;
    Hsmvault__V1__ListTokenObjectsResponse *l = NULL;
    bool found = false;
    CHECK_OK(CALL(au, M("Audit", "ListTokenObjects"), req, list_token_objects_response, &l));
    for (size_t i = 0; l && i < l->n_objects; i++)
        if (strstr(l->objects[i]->label, key_id) != NULL) found = true;
    kv_pb_free(l ? &l->base : NULL);
    return found;
}

/* Seed 001 step by step: lock refused within 72 h of a key change; lock
 * (active key presented again, confirmation typed back); nothing unwraps;
 * no key changes while locked; unlock refused for 1 h; unlock the key with
 * the same PFX; environments stay locked until unlocked one by one; the same
 * DEK bytes again; a locked environment left for 28 days is deleted. */
static void test_lock_unlock(void)
{
    start_all();

    /* A key change now (a newly generated key) blocks the lock for 72 h. */
    Hsmvault__V1__GenerateKeyRequest g = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    g.tenant_id = tenant;
    g.name = "spare";
    g.password.data = (uint8_t *)PASSWORD;
    g.password.len = strlen(PASSWORD);
    Hsmvault__V1__GenerateKeyResponse *gr = NULL;
    CHECK_OK(CALL(ta, M("TenantKeys", "GenerateKey"), g, generate_key_response, &gr));
    char spare[64] = "";
    if (gr != NULL && gr->key != NULL) snprintf(spare, sizeof(spare), "%s", gr->key->id);
    kv_pb_free(gr ? &gr->base : NULL);

    Hsmvault__V1__GetLockConfirmationRequest q = HSMVAULT__V1__GET_LOCK_CONFIRMATION_REQUEST__INIT;
    q.tenant_id = tenant;
    Hsmvault__V1__LockConfirmation *lc = NULL;
    CHECK_OK(CALL(ta, M("TenantKeys", "GetLockConfirmation"), q, lock_confirmation, &lc));
    char text[256] = "";
    if (lc != NULL) snprintf(text, sizeof(text), "%s", lc->text);
    kv_pb_free(lc ? &lc->base : NULL);
    CHECK(strcmp(text, "lock 2 environments of contoso") == 0);

    CHECK_ERR(lock_tenant(ta, tenant, "generated.pfx", text, NULL), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "lock is blocked until") != NULL &&
          strstr(kv_error_msg(), "72 h") != NULL);
    CHECK_OK(advance_clock(op, 72 * 3600));
    /* Wrong key, wrong text, wrong role: refused, nothing changes. */
    CHECK_ERR(lock_tenant(ta, tenant, "k2048.pfx", text, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "not the tenant's active key") != NULL);
    CHECK_ERR(lock_tenant(ta, tenant, "generated.pfx", "lock everything", NULL),
              KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), text) != NULL);
    CHECK_ERR(lock_tenant(op, tenant, "generated.pfx", text, NULL), KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(lock_tenant(ea, tenant, "generated.pfx", text, NULL), KV_ERR_PERMISSION_DENIED);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));

    size_t n_locked = 0;
    CHECK_OK(lock_tenant(ta, tenant, "generated.pfx", text, &n_locked));
    CHECK(n_locked == 2);
    /* Nothing unwraps in the locked environments, for anyone. */
    CHECK_ERR(unwrap_same(sn, env_prod, db_prod, dek_prod), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "locked") != NULL);
    CHECK_ERR(unwrap_same(sn, env_sbx, db_sbx, dek_sbx), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(unwrap_same(op, env_prod, db_prod, dek_prod), KV_ERR_PERMISSION_DENIED);
    char id[64];
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_ERR(vc_database_key_create(sn, env_prod, "during-lock", id, sizeof(id), &dek, &lease),
              KV_ERR_FAILED_PRECONDITION);
    /* The active key is locked, the available ones deleted: none in the token. */
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_LOCKED);
    CHECK(key_state(tenant, key_up) == HSMVAULT__V1__KEY_STATE__KEY_STATE_DELETED);
    CHECK(key_state(tenant, spare) == HSMVAULT__V1__KEY_STATE__KEY_STATE_DELETED);
    CHECK(!token_has_key(key_gen) && !token_has_key(key_up) && !token_has_key(spare));
    /* No key changes while environments are locked. */
    g.name = "during-lock";
    gr = NULL;
    CHECK_ERR(CALL(ta, M("TenantKeys", "GenerateKey"), g, generate_key_response, &gr),
              KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "locked environment") != NULL);
    CHECK_ERR(upload_file(tenant, "during-lock", "nocert.pfx", PASSWORD, NULL),
              KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(activate(ta, tenant, key_up), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(lock_tenant(ta, tenant, "generated.pfx", text, NULL), KV_ERR_FAILED_PRECONDITION);

    /* Unlock: refused for 1 h, then only with the same key; environments
     * stay locked until each is unlocked. */
    CHECK_ERR(unlock_key(ta, tenant, key_gen, "generated.pfx"), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "unlock is blocked until") != NULL);
    CHECK_ERR(unlock_env(ea, env_prod), KV_ERR_FAILED_PRECONDITION);
    CHECK_OK(advance_clock(op, 3600));
    CHECK_ERR(unlock_key(ta, tenant, key_gen, "k2048.pfx"), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(unlock_key(ta, tenant, key_up, "k2048.pfx"), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(unlock_env(ea, env_prod), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "unlock it first") != NULL);
    CHECK_OK(unlock_key(ta, tenant, key_gen, "generated.pfx"));
    CHECK(token_has_key(key_gen));
    CHECK_ERR(unwrap_same(sn, env_prod, db_prod, dek_prod), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(unlock_env(ta, env_prod), KV_ERR_PERMISSION_DENIED);
    CHECK_OK(unlock_env(ea, env_prod));
    CHECK_ERR(unlock_env(ea, env_prod), KV_ERR_FAILED_PRECONDITION); /* not locked any more */
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    CHECK_ERR(unwrap_same(sn, env_sbx, db_sbx, dek_sbx), KV_ERR_FAILED_PRECONDITION);

    /* The sandbox stays locked; 28 days later it is deleted with its DEKs. */
    CHECK_OK(advance_clock(op, 27 * 86400));
    Hsmvault__V1__Environment *e = get_env(env_sbx);
    if (e) CHECK(e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED);
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(advance_clock(op, 86400));
    e = get_env(env_sbx);
    if (e) CHECK(e->state == HSMVAULT__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_DELETED);
    kv_pb_free(e ? &e->base : NULL);
    CHECK_ERR(unlock_env(ea, env_sbx), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(unwrap_same(sn, env_sbx, db_sbx, dek_sbx), KV_ERR_FAILED_PRECONDITION);
    /* With no locked environment left, key changes are possible again. */
    g.name = "after-unlock";
    gr = NULL;
    CHECK_OK(CALL(ta, M("TenantKeys", "GenerateKey"), g, generate_key_response, &gr));
    kv_pb_free(gr ? &gr->base : NULL);

    /* And all of it survives a restart. */
    stop_all();
    CHECK(vaultd_proc_start(&vd, state));
    sn = vaultd_proc_client(&vd, "storage-node");
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    vc_close(sn);
    sn = NULL;
    CHECK(vaultd_proc_stop(&vd) == 0);
}

/* kill -9 between the lock's commit and the token deletions: start-up
 * reconciliation destroys the locked key's objects; the lock holds; unlock
 * brings the same DEK back. */
static void test_lock_crash(void)
{
    setenv("HSMVAULT_TEST_CRASH_AT", "lock-destroy", 1);
    CHECK(vaultd_proc_start(&vd, state));
    unsetenv("HSMVAULT_TEST_CRASH_AT");
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    CHECK_OK(advance_clock(op, 72 * 3600));
    CHECK_ERR(lock_tenant(ta, tenant, "generated.pfx", "lock 1 environment of contoso", NULL),
              KV_ERR_UNAVAILABLE);
    int status = 0;
    CHECK(waitpid(vd.pid, &status, 0) == vd.pid && WIFSIGNALED(status) &&
          WTERMSIG(status) == SIGKILL);
    vd.pid = 0;
    vc_close(op), vc_close(ta);

    start_all();
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_LOCKED);
    CHECK(!token_has_key(key_gen));
    CHECK_ERR(unwrap_same(sn, env_prod, db_prod, dek_prod), KV_ERR_FAILED_PRECONDITION);
    CHECK_OK(advance_clock(op, 3600));
    CHECK_OK(unlock_key(ta, tenant, key_gen, "generated.pfx"));
    CHECK_OK(unlock_env(ea, env_prod));
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    stop_all();
    char log[512];
    snprintf(log, sizeof(log), "%s.log", state);
    CHECK(kv_test_sh("grep -q 'its key is locked or deleted' %s", log) == 0);
}

static kv_result transfer(const char *method, const char *src, const char *dst, bool *allowed,
                          char *reason, size_t cap)
{
    Hsmvault__V1__AuthorizeTransferRequest req = HSMVAULT__V1__AUTHORIZE_TRANSFER_REQUEST__INIT;
    req.source_environment_id = (char *)src;
    req.target_environment_id = (char *)dst;
    Hsmvault__V1__AuthorizeTransferResponse *resp = NULL;
    kv_result r = CALL(sn, method, req, authorize_transfer_response, &resp);
    if (kv_ok(r)) {
        *allowed = resp->allowed;
        snprintf(reason, cap, "%s", resp->reason);
    }
    kv_pb_free(resp ? &resp->base : NULL);
    return r;
}

static kv_result reset_env(vc *c, const char *env, const char *confirm)
{
    Hsmvault__V1__ResetEnvironmentRequest req = HSMVAULT__V1__RESET_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)env;
    req.confirmation_name = (char *)confirm;
    Hsmvault__V1__Environment *e = NULL;
    kv_result r = CALL(c, M("Environments", "ResetEnvironment"), req, environment, &e);
    if (kv_ok(r)) CHECK(e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_SERVICE_MANAGED);
    kv_pb_free(e ? &e->base : NULL);
    return r;
}

/* Seed 001's environment database operations: restore into the same
 * environment or one with the same customer-managed key; copy only into
 * another one with that key; nothing into a locked environment; reset
 * replaces every DEK and returns the environment to the service key. */
static void test_restore_copy_reset(void)
{
    start_all();
    char qa[64] = "", qa_db[64] = "";
    CHECK_OK(
        create_env(op, tenant, "qa", HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX, qa));
    CHECK_OK(bind(op, URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant, qa));
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    uint8_t qa_dek[32] = {0};
    CHECK_OK(vc_database_key_create(sn, qa, "orders", qa_db, sizeof(qa_db), &dek, &lease));
    if (dek.len == 32) memcpy(qa_dek, dek.data, 32);
    kv_secret_free(&dek);

    bool allowed = true;
    char reason[512];
    const char *restore = M("Environments", "AuthorizeRestore"),
               *copy = M("Environments", "AuthorizeCopy");
    CHECK_OK(transfer(restore, env_prod, env_prod, &allowed, reason, sizeof(reason)));
    CHECK(allowed);
    CHECK_OK(transfer(restore, env_prod, qa, &allowed, reason, sizeof(reason)));
    CHECK(!allowed && strstr(reason, "customer-managed key") != NULL);
    CHECK_OK(transfer(copy, env_prod, env_prod, &allowed, reason, sizeof(reason)));
    CHECK(!allowed && strstr(reason, "another environment") != NULL);
    CHECK_OK(transfer(copy, env_prod, qa, &allowed, reason, sizeof(reason)));
    CHECK(!allowed);
    /* Apply the same key to qa: now both are allowed. */
    Hsmvault__V1__ApplyKeyRequest ap = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    Hsmvault__V1__Environment *e = NULL;
    ap.environment_id = qa;
    CHECK_OK(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e));
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(transfer(restore, env_prod, qa, &allowed, reason, sizeof(reason)));
    CHECK(allowed);
    CHECK_OK(transfer(copy, env_prod, qa, &allowed, reason, sizeof(reason)));
    CHECK(allowed);
    CHECK_OK(transfer(copy, qa, env_prod, &allowed, reason, sizeof(reason)));
    CHECK(allowed);
    /* Deleted environments, other tenants, unknown ids, other roles. */
    CHECK_OK(transfer(restore, env_prod, env_sbx, &allowed, reason, sizeof(reason)));
    CHECK(!allowed && strstr(reason, "deleted") != NULL);
    CHECK_ERR(transfer(copy, env_prod, env_t2, &allowed, reason, sizeof(reason)),
              KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(transfer(copy, env_prod, "env-0000000000000000", &allowed, reason, sizeof(reason)),
              KV_ERR_NOT_FOUND);
    Hsmvault__V1__AuthorizeTransferRequest tr = HSMVAULT__V1__AUTHORIZE_TRANSFER_REQUEST__INIT;
    tr.source_environment_id = env_prod;
    tr.target_environment_id = qa;
    Hsmvault__V1__AuthorizeTransferResponse *tresp = NULL;
    CHECK_ERR(CALL(ea, restore, tr, authorize_transfer_response, &tresp), KV_ERR_PERMISSION_DENIED);

    /* Locked environments: nothing restored, copied or reset into them. */
    CHECK_OK(advance_clock(op, 72 * 3600));
    CHECK_OK(lock_tenant(ta, tenant, "generated.pfx", "lock 2 environments of contoso", NULL));
    CHECK_OK(transfer(restore, env_prod, env_prod, &allowed, reason, sizeof(reason)));
    CHECK(!allowed && strstr(reason, "locked") != NULL);
    CHECK_OK(transfer(copy, qa, env_prod, &allowed, reason, sizeof(reason)));
    CHECK(!allowed && strstr(reason, "locked") != NULL);
    CHECK_ERR(reset_env(ea, qa, "qa"), KV_ERR_FAILED_PRECONDITION);
    CHECK_OK(advance_clock(op, 3600));
    CHECK_OK(unlock_key(ta, tenant, key_gen, "generated.pfx"));
    CHECK_OK(unlock_env(ea, env_prod));
    CHECK_OK(unlock_env(ea, qa));
    CHECK_OK(unwrap_same(sn, qa, qa_db, qa_dek));

    /* Reset: confirmation required; fresh DEKs on the service key; the old
     * DEK is gone for good. */
    CHECK_ERR(reset_env(ea, qa, ""), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(reset_env(ta, qa, "qa"), KV_ERR_PERMISSION_DENIED);
    CHECK_OK(reset_env(ea, qa, "qa"));
    CHECK_OK(vc_database_key_unwrap(sn, qa, qa_db, &dek, &lease));
    CHECK(dek.len == 32 && memcmp(dek.data, qa_dek, 32) != 0);
    kv_secret_free(&dek);
    CHECK_OK(transfer(copy, env_prod, qa, &allowed, reason, sizeof(reason)));
    CHECK(!allowed); /* qa is on the service key now */
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    stop_all();
}

static atomic_int unwrap_stop, unwrap_ok, unwrap_failed;

static void *unwrap_loop(void *arg)
{
    vc *c = arg;
    while (!atomic_load(&unwrap_stop)) {
        kv_secret dek = KV_SECRET_INIT;
        uint32_t lease;
        if (kv_ok(vc_database_key_unwrap(c, env_prod, db_prod, &dek, &lease)) && dek.len == 32 &&
            memcmp(dek.data, dek_prod, 32) == 0)
            atomic_fetch_add(&unwrap_ok, 1);
        else
            atomic_fetch_add(&unwrap_failed, 1);
        kv_secret_free(&dek);
    }
    return NULL;
}

/* The malicious-administrator sequence of seeds 000/001: an admin generates
 * a key, activates it (storage nodes keep unwrapping throughout the
 * re-wrap), and tries to lock the tenant with it at once: refused for 72 h;
 * another admin rolls the activation back; the lock with the rogue key is
 * then refused for good (it is not the active key). */
static void test_malicious_admin(void)
{
    start_all();
    vc *ta2 = vaultd_proc_client(&vd, "tenant-admin-2");
    vc *node2 = vaultd_proc_client(&vd, "storage-node");
    CHECK_OK(advance_clock(op, 25 * 3600));
    Hsmvault__V1__GenerateKeyRequest g = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    g.tenant_id = tenant;
    g.name = "rogue";
    g.password.data = (uint8_t *)PASSWORD;
    g.password.len = strlen(PASSWORD);
    Hsmvault__V1__GenerateKeyResponse *gr = NULL;
    CHECK_OK(CALL(ta, M("TenantKeys", "GenerateKey"), g, generate_key_response, &gr));
    char rogue[64] = "", path[512];
    if (gr != NULL && gr->key != NULL) {
        snprintf(rogue, sizeof(rogue), "%s", gr->key->id);
        snprintf(path, sizeof(path), "%s/rogue.pfx", tmp);
        CHECK_OK(kv_file_write_new(path, gr->pfx.data, gr->pfx.len, 0600));
    }
    kv_pb_free(gr ? &gr->base : NULL);

    /* Activation with a storage node unwrapping all the while. */
    pthread_t th;
    atomic_store(&unwrap_stop, 0);
    CHECK(pthread_create(&th, NULL, unwrap_loop, node2) == 0);
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    CHECK_OK(activate(ta, tenant, rogue));
    nanosleep(&pause, NULL);
    atomic_store(&unwrap_stop, 1);
    pthread_join(th, NULL);
    CHECK(atomic_load(&unwrap_ok) > 0 && atomic_load(&unwrap_failed) == 0);

    /* The lock comes at once: refused for 72 h after the key change. */
    CHECK_OK(advance_clock(op, 3600));
    CHECK_ERR(lock_tenant(ta, tenant, "rogue.pfx", "lock 1 environment of contoso", NULL),
              KV_ERR_FAILED_PRECONDITION);
    /* Another admin rolls the change back within the 72 h. */
    CHECK_OK(roll_back(ta2, tenant));
    CHECK(key_state(tenant, key_gen) == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    CHECK(key_state(tenant, rogue) == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    /* Later, the rogue key cannot lock the tenant: it is not the active key. */
    CHECK_OK(advance_clock(op, 73 * 3600));
    CHECK_ERR(lock_tenant(ta, tenant, "rogue.pfx", "lock 1 environment of contoso", NULL),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_OK(unwrap_same(sn, env_prod, db_prod, dek_prod));
    vc_close(ta2);
    vc_close(node2);
    stop_all();
}

/* Every key change of the scenario was mailed to the tenant's admin contacts
 * (vaultd --dev delivers into <state>/maildir/new). */
static void test_notifications_maildir(void)
{
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/maildir/new", state);
    const char *changes[] = {"was generated and is active as the tenant's first key",
                             "was uploaded; it is available",
                             "a key was activated: key",
                             "an activation was ROLLED BACK",
                             "the tenant was LOCKED with key",
                             "was unlocked and is active again",
                             "is now encrypted with the tenant key",
                             "was returned to the service key",
                             "was unlocked; its data is readable again"};
    for (size_t i = 0; i < KV_ARRAY_LEN(changes); i++) {
        int rc = kv_test_sh("grep -h '^What: ' %s/*.hsmvault | grep -q -F \"%s\"", dir, changes[i]);
        CHECK(rc == 0);
        if (rc != 0) fprintf(stderr, "no notification says: %s\n", changes[i]);
    }
    /* Recipients, sender, who and when, and no secret. */
    CHECK(kv_test_sh("grep -l 'To: secops@example.com, dba@example.com' %s/*.hsmvault | grep -q .",
                     dir) == 0);
    CHECK(
        kv_test_sh("grep -l 'Who:  spiffe://hsmvault.dev/tenant-admin-2' %s/*.hsmvault | grep -q .",
                   dir) == 0);
    CHECK(kv_test_sh("grep -q 'When: 20' %s/*.hsmvault", dir) == 0);
    CHECK(kv_test_sh("! grep -l -F '" PASSWORD "' %s/*.hsmvault", dir) == 0);
    /* Tenant 3 never had a key change: no message went to it. */
    CHECK(kv_test_sh("! grep -l 'tenant northwind' %s/*.hsmvault", dir) == 0);
}

int main(void)
{
    rpc_client_global_init();
    kv_test_tmpdir(tmp, sizeof(tmp), "vault");
    snprintf(state, sizeof(state), "%s/state", tmp);
    RUN(make_fixtures);
    RUN(test_start_and_whoami);
    if (op != NULL) {
        RUN(test_tenants);
        RUN(test_environments_and_service_key_deks);
        RUN(test_generate_key);
        RUN(test_upload_key);
        RUN(test_apply_activate_return);
        RUN(test_handshake);
        RUN(test_token_attributes_api);
        RUN(test_restart_and_reconcile);
        RUN(test_second_instance_refused);
        RUN(test_activation_crash);
        RUN(test_rollback);
        RUN(test_lock_unlock);
        RUN(test_lock_crash);
        RUN(test_restore_copy_reset);
        RUN(test_malicious_admin);
        RUN(test_notifications_maildir);
    }
    if (vd.pid > 0) vaultd_proc_kill(&vd);
    int rc = kv_test_finish();
    if (rc == 0)
        kv_test_rmtree(tmp);
    else
        fprintf(stderr, "state kept in %s\n", tmp);
    rpc_client_global_shutdown();
    return rc;
}
