/*
 * test_byok.c: BYOK end to end against a real vaultd --dev (its SoftHSM
 * token, LMDB store, mTLS on loopback), driven through libvaultclient:
 * import key download and rotation (2048, 3072, 4096), a .byok file made by
 * the openssl command line alone (deploy/byok-openssl.sh) imported, activated
 * and wrapping/unwrapping DEKs, files made in software and inside a second
 * SoftHSM token (the admin's own HSM, C_WrapKey), every bad input of the
 * issue with the token's objects counted before and after, a blob for
 * another subscription refused, lock and unlock with a .byok-presented key,
 * older import key versions accepted for their validity then retired, and
 * restarts (clean and kill -9 between token object and commit).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <openssl/sha.h>

#include "byok_wrap.h"
#include "hsm.h"
#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "kv_base64.h"
#include "kv_byok.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_softhsm.h"
#include "kv_test.h"
#include "rpc_client.h"
#include "vaultclient.h"
#include "vaultd_proc.h"

#define URI(role) "spiffe://hsmvault.dev/" role
#define M(svc, name) "/hsmvault.v1." svc "/" name
#define CALL(c, method, req, type, out)                                                            \
    vc_call((c), (method), &(req).base, &hsmvault__v1__##type##__descriptor,                       \
            (ProtobufCMessage **)(out))

static char tmp[256], state[300], src_dir[512];
static vaultd_proc vd;
static vc *op, *ta, *ea, *sn, *au;
static char tenant_a[64], tenant_b[64], tenant_c[64], env_a[64], db1[64], db2[64];
static char key_cli[64]; /* the key uploaded from the openssl-made file (active) */
static uint8_t dek1[32], dek2[32];

/* ---- helpers ------------------------------------------------------------- */

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmp, name);
}

static bool read_tmp(const char *name, uint8_t **data, size_t *len)
{
    char p[512];
    path_of(p, sizeof(p), name);
    if (kv_ok(kv_file_read(p, 8u << 20, data, len))) return true;
    fprintf(stderr, "cannot read %s: %s\n", p, kv_error_msg());
    return false;
}

static bool write_tmp(const char *name, const void *data, size_t len)
{
    char p[512];
    path_of(p, sizeof(p), name);
    return kv_ok(kv_file_write_atomic(p, data, len, 0600));
}

static kv_result advance_clock(int64_t seconds)
{
    Hsmvault__V1__AdvanceClockRequest req = HSMVAULT__V1__ADVANCE_CLOCK_REQUEST__INIT;
    req.seconds = seconds;
    Hsmvault__V1__AdvanceClockResponse *resp = NULL;
    kv_result r = CALL(op, M("Testing", "AdvanceClock"), req, advance_clock_response, &resp);
    kv_pb_free(resp ? &resp->base : NULL);
    return r;
}

static Hsmvault__V1__ListTokenObjectsResponse *token_objects(void)
{
    Hsmvault__V1__ListTokenObjectsRequest req = HSMVAULT__V1__LIST_TOKEN_OBJECTS_REQUEST__INIT;
    Hsmvault__V1__ListTokenObjectsResponse *l = NULL;
    CHECK_OK(CALL(au, M("Audit", "ListTokenObjects"), req, list_token_objects_response, &l));
    return l;
}

/* Every token object, and those the vault names import keys (of kid_prefix). */
static size_t token_count(size_t *import_objs, const char *kid_prefix)
{
    Hsmvault__V1__ListTokenObjectsResponse *l = token_objects();
    size_t n = l ? l->n_objects : 0, imports = 0;
    for (size_t i = 0; l && i < n; i++)
        if (strcmp(l->objects[i]->vault_role, "import-key") == 0 &&
            (kid_prefix == NULL ||
             strncmp(l->objects[i]->vault_key_id, kid_prefix, strlen(kid_prefix)) == 0))
            imports++;
    if (import_objs != NULL) *import_objs = imports;
    kv_pb_free(l ? &l->base : NULL);
    return n;
}

static kv_result create_tenant(const char *name, const char *sub, char *id)
{
    char *contacts[] = {"secops@example.com"};
    Hsmvault__V1__CreateTenantRequest req = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    req.name = (char *)name;
    req.subscription_id = (char *)sub;
    req.n_admin_contacts = 1;
    req.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    kv_result r = CALL(op, M("Tenants", "CreateTenant"), req, tenant, &t);
    if (kv_ok(r)) snprintf(id, 64, "%s", t->id);
    kv_pb_free(t ? &t->base : NULL);
    if (kv_failed(r)) return r;
    Hsmvault__V1__EnableSelfManagedKeysRequest en =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    en.tenant_id = id;
    r = CALL(op, M("Tenants", "EnableSelfManagedKeys"), en, tenant, &t);
    kv_pb_free(t ? &t->base : NULL);
    return r;
}

static kv_result bind(const char *principal, Hsmvault__V1__Role role, const char *t, const char *e)
{
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = (char *)principal;
    b.role = role;
    b.tenant_id = (char *)t;
    b.environment_id = (char *)(e ? e : "");
    Hsmvault__V1__BindRoleRequest req = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
    req.binding = &b;
    Hsmvault__V1__RoleBinding *out = NULL;
    kv_result r = CALL(op, M("Tenants", "BindRole"), req, role_binding, &out);
    kv_pb_free(out ? &out->base : NULL);
    return r;
}

/* Downloads the tenant's import key into <tmp>/<file> the way vaultctl
 * writes it; returns its kid/bits/version. */
static bool import_key_file(const char *tenant, const char *file, char *kid, unsigned *bits,
                            unsigned *version)
{
    Hsmvault__V1__GetImportKeyRequest req = HSMVAULT__V1__GET_IMPORT_KEY_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    Hsmvault__V1__ImportKey *k = NULL;
    kv_result r = CALL(ta, M("TenantKeys", "GetImportKey"), req, import_key, &k);
    CHECK_OK(r);
    if (kv_failed(r)) return false;
    char *text = NULL;
    size_t len = 0;
    CHECK_OK(byok_import_key_format(k->kid, k->subscription_id, k->bits, k->public_key_pem, &text,
                                    &len));
    bool ok = text != NULL && write_tmp(file, text, len);
    CHECK(strcmp(k->state, "current") == 0 && k->valid_until == 0);
    if (kid) snprintf(kid, KV_BYOK_KID_MAX + 1, "%s", k->kid);
    if (bits) *bits = k->bits;
    if (version) *version = k->version;
    free(text);
    kv_pb_free(&k->base);
    return ok;
}

/* A .byok file made in software (byok_wrap) for the import key file ik of
 * the key file key (PEM). */
static char *byok_soft(const char *ik, const char *key, kv_byok_hash hash, size_t *len)
{
    uint8_t *ik_text = NULL, *key_text = NULL, *ct = NULL;
    size_t ik_len = 0, key_len = 0, ct_len = 0;
    char *json = NULL;
    byok_import_key imp;
    kv_secret p8 = KV_SECRET_INIT;
    unsigned bits = 0;
    if (read_tmp(ik, &ik_text, &ik_len) && read_tmp(key, &key_text, &key_len) &&
        kv_ok(byok_import_key_parse(ik_text, ik_len, &imp))) {
        if (kv_ok(byok_key_load(key_text, key_len, NULL, &p8, &bits)) &&
            kv_ok(byok_wrap_soft(imp.spki, imp.spki_len, hash, &p8, &ct, &ct_len)))
            CHECK_OK(kv_byok_format(imp.kid, hash, ct, ct_len, "test_byok", &json, len));
        byok_import_key_free(&imp);
    }
    CHECK(json != NULL);
    kv_secret_free(&p8);
    free(ct);
    free(ik_text);
    free(key_text);
    return json;
}

/* The openssl command line alone: deploy/byok-openssl.sh. */
static char *byok_cli(const char *ik, const char *key, const char *out, const char *hash,
                      size_t *len)
{
    CHECK(kv_test_sh("cd %s && sh %s/deploy/byok-openssl.sh %s %s %s %s", tmp, src_dir, ik, key,
                     out, hash) == 0);
    uint8_t *data = NULL;
    if (!read_tmp(out, &data, len)) return NULL;
    return (char *)data;
}

static kv_result upload(const char *tenant, const char *name, const void *byok, size_t len,
                        const char *password, char *id_out, Hsmvault__V1__TenantKey **key_out)
{
    Hsmvault__V1__KeyMaterial m;
    hsmvault__v1__key_material__init(&m);
    m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_BYOK;
    m.byok = (ProtobufCBinaryData){len, (uint8_t *)(uintptr_t)byok};
    if (password != NULL)
        m.password = (ProtobufCBinaryData){strlen(password), (uint8_t *)(uintptr_t)password};
    Hsmvault__V1__UploadKeyRequest req = HSMVAULT__V1__UPLOAD_KEY_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    req.name = (char *)name;
    req.material = &m;
    Hsmvault__V1__TenantKey *k = NULL;
    kv_result r = CALL(ta, M("TenantKeys", "UploadKey"), req, tenant_key, &k);
    if (kv_ok(r) && id_out) snprintf(id_out, 64, "%s", k->id);
    if (key_out != NULL)
        *key_out = k;
    else
        kv_pb_free(k ? &k->base : NULL);
    return r;
}

/* Expects the upload to fail with code and a message holding want, and the
 * token's objects to be exactly as many as before. */
static void refused(const char *tenant, const void *byok, size_t len, const char *password,
                    kv_code code, const char *want, int line)
{
    size_t before = token_count(NULL, NULL);
    kv_error_clear();
    kv_result r = upload(tenant, "bad", byok, len, password, NULL, NULL);
    bool ok = kv_failed(r) && kv_error_code() == code && strstr(kv_error_msg(), want) != NULL;
    if (!ok)
        fprintf(stderr, "line %d: wanted %s with '%s', got %s: %s\n", line, kv_code_name(code),
                want, kv_ok(r) ? "success" : kv_code_name(kv_error_code()),
                kv_ok(r) ? "" : kv_error_msg());
    CHECK(ok);
    size_t after = token_count(NULL, NULL);
    if (after != before)
        fprintf(stderr, "line %d: %zu token objects before, %zu after\n", line, before, after);
    CHECK(after == before);
}
#define REFUSED(t, b, n, code, want) refused((t), (b), (n), NULL, (code), (want), __LINE__)

/* Hex SHA-256 of the DER public key of a PEM key file (the fingerprint). */
static void fingerprint_of(const char *key, char hex[65])
{
    char out[80];
    snprintf(out, sizeof(out), "%s.fp", key);
    hex[0] = '\0';
    CHECK(kv_test_sh("cd %s && openssl pkey -in %s -pubout -outform DER 2>/dev/null | "
                     "openssl dgst -sha256 -r | cut -c1-64 > %s",
                     tmp, key, out) == 0);
    uint8_t *d = NULL;
    size_t n = 0;
    if (read_tmp(out, &d, &n) && n >= 64) {
        memcpy(hex, d, 64);
        hex[64] = '\0';
    }
    free(d);
}

static kv_result unwrap_same(const char *env, const char *db, const uint8_t want[32])
{
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease = 0;
    kv_result r = vc_database_key_unwrap(sn, env, db, &dek, &lease);
    if (kv_ok(r)) CHECK(dek.len == 32 && memcmp(dek.data, want, 32) == 0);
    kv_secret_free(&dek);
    return r;
}

/* Replaces the JSON text `from` with `to` (once) in a copy of doc. */
static char *edit(const char *doc, const char *from, const char *to, size_t *len)
{
    const char *at = strstr(doc, from);
    CHECK(at != NULL);
    if (at == NULL) return NULL;
    size_t n = strlen(doc) - strlen(from) + strlen(to);
    char *out = malloc(n + 1);
    size_t head = (size_t)(at - doc);
    memcpy(out, doc, head);
    strcpy(out + head, to);
    strcat(out, at + strlen(from));
    *len = n;
    return out;
}

/* The same file with its ciphertext changed by fn (on the decoded bytes). */
typedef size_t (*ct_edit_fn)(uint8_t *ct, size_t len);
static char *edit_ciphertext(const char *doc, ct_edit_fn fn, size_t *out_len)
{
    kv_byok b;
    CHECK_OK(kv_byok_parse((const uint8_t *)doc, strlen(doc), &b));
    if (b.ciphertext == NULL) return NULL;
    uint8_t *ct = malloc(b.ciphertext_len + 64);
    memcpy(ct, b.ciphertext, b.ciphertext_len);
    size_t n = fn(ct, b.ciphertext_len);
    char *json = NULL;
    CHECK_OK(kv_byok_format(b.kid, b.oaep_hash, ct, n, NULL, &json, out_len));
    free(ct);
    kv_byok_free(&b);
    return json;
}
static size_t cut_one(uint8_t *ct, size_t n)
{
    (void)ct;
    return n - 1;
}
static size_t cut_eight(uint8_t *ct, size_t n)
{
    (void)ct;
    return n - 8;
}
static size_t rsa_only(uint8_t *ct, size_t n)
{
    (void)ct;
    (void)n;
    return 256;
}
static size_t shorter_than_modulus(uint8_t *ct, size_t n)
{
    (void)ct;
    (void)n;
    return 100;
}
static size_t flip_kwp(uint8_t *ct, size_t n)
{
    ct[256 + 100] ^= 0x04;
    return n;
}
static size_t flip_rsa(uint8_t *ct, size_t n)
{
    ct[17] ^= 0x80;
    return n;
}

/* ---- the tests ---------------------------------------------------------- */

static void test_setup(void)
{
    CHECK_OK(create_tenant("alpha", "sub-a", tenant_a));
    CHECK_OK(create_tenant("bravo", "sub-b", tenant_b));
    CHECK_OK(create_tenant("charlie", "sub-c", tenant_c));
    for (int i = 0; i < 3; i++)
        CHECK_OK(bind(URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN,
                      i == 0   ? tenant_a
                      : i == 1 ? tenant_b
                               : tenant_c,
                      NULL));
    Hsmvault__V1__CreateEnvironmentRequest ce = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    ce.tenant_id = tenant_a;
    ce.name = "alpha-prod";
    ce.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION;
    Hsmvault__V1__Environment *e = NULL;
    CHECK_OK(CALL(op, M("Environments", "CreateEnvironment"), ce, environment, &e));
    if (e) snprintf(env_a, sizeof(env_a), "%s", e->id);
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(
        bind(URI("environment-admin"), HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN, tenant_a, NULL));
    CHECK_OK(bind(URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant_a, env_a));
    /* a DEK on the service key, re-wrapped when the BYOK key is applied */
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_OK(vc_database_key_create(sn, env_a, "db1", db1, sizeof(db1), &dek, &lease));
    if (dek.len == 32) memcpy(dek1, dek.data, 32);
    kv_secret_free(&dek);
    /* tenant keys made by the openssl command line */
    CHECK(kv_test_sh("cd %s && umask 077 && for k in t1 t2 t3 t4 t5 t6 t7; do openssl genpkey "
                     "-algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $k.pem 2>/dev/null || "
                     "exit 1; done && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 "
                     "-out t4096.pem 2>/dev/null && openssl genpkey -algorithm EC -pkeyopt "
                     "ec_paramgen_curve:P-256 -out tec.pem 2>/dev/null",
                     tmp) == 0);
}

static void test_import_key_download(void)
{
    char kid[KV_BYOK_KID_MAX + 1];
    unsigned bits = 0, version = 0;
    size_t before = token_count(NULL, NULL), imports = 0;
    CHECK(import_key_file(tenant_a, "ik-a1.pem", kid, &bits, &version));
    CHECK(strcmp(kid, "hsmvault:subscriptions/sub-a/import-keys/1") == 0);
    CHECK(bits == 2048 && version == 1);
    /* one key pair, named by the vault as an import key; unwrap only */
    CHECK(token_count(&imports, "hsmvault:subscriptions/sub-a/") == before + 2 && imports == 2);
    Hsmvault__V1__ListTokenObjectsResponse *l = token_objects();
    int privs = 0;
    for (size_t i = 0; l && i < l->n_objects; i++) {
        const Hsmvault__V1__TokenObject *o = l->objects[i];
        if (strcmp(o->vault_key_id, kid) != 0 || strcmp(o->object_class, "private-key") != 0)
            continue;
        privs++;
        CHECK(strcmp(o->vault_role, "import-key") == 0 && strcmp(o->vault_state, "current") == 0);
        CHECK(o->sensitive && !o->extractable && o->never_extractable && o->can_unwrap &&
              !o->can_decrypt && !o->can_sign && o->bits == 2048);
        CHECK(strcmp(o->label, kid) == 0);
    }
    CHECK(privs == 1);
    kv_pb_free(l ? &l->base : NULL);
    /* downloading again gives the same version and makes nothing */
    CHECK(import_key_file(tenant_a, "ik-a1-again.pem", kid, &bits, &version));
    CHECK(version == 1 && token_count(NULL, NULL) == before + 2);
    CHECK(import_key_file(tenant_b, "ik-b1.pem", kid, NULL, &version));
    CHECK(strcmp(kid, "hsmvault:subscriptions/sub-b/import-keys/1") == 0);
    /* the file names the subscription and is a PEM openssl reads */
    CHECK(kv_test_sh("cd %s && grep -q '^# subscription: sub-a$' ik-a1.pem && openssl pkey "
                     "-pubin -in ik-a1.pem -noout 2>/dev/null",
                     tmp) == 0);
    /* a tenant without self-managed keys gets no import key */
    char *contacts[] = {"x@example.com"};
    Hsmvault__V1__CreateTenantRequest ct = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    ct.name = "delta";
    ct.subscription_id = "sub-d";
    ct.n_admin_contacts = 1;
    ct.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    CHECK_OK(CALL(op, M("Tenants", "CreateTenant"), ct, tenant, &t));
    if (t != NULL) {
        CHECK_OK(bind(URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, t->id, NULL));
        Hsmvault__V1__GetImportKeyRequest req = HSMVAULT__V1__GET_IMPORT_KEY_REQUEST__INIT;
        req.tenant_id = t->id;
        Hsmvault__V1__ImportKey *k = NULL;
        CHECK_ERR(CALL(ta, M("TenantKeys", "GetImportKey"), req, import_key, &k),
                  KV_ERR_FAILED_PRECONDITION);
        kv_pb_free(&t->base);
    }
}

/* deploy/byok-openssl.sh: imported as the tenant's first key (active),
 * applied to an environment, wrapping and unwrapping DEKs. */
static void test_openssl_cli_blob(void)
{
    size_t len = 0, before = token_count(NULL, NULL);
    char *doc = byok_cli("ik-a1.pem", "t1.pem", "t1.byok", "", &len);
    CHECK(doc != NULL && strstr(doc, "\"kid\": \"hsmvault:subscriptions/sub-a/import-keys/1\""));
    Hsmvault__V1__TenantKey *k = NULL;
    CHECK_OK(upload(tenant_a, "from openssl", doc, len, NULL, key_cli, &k));
    char fp[65];
    fingerprint_of("t1.pem", fp);
    if (k != NULL) {
        CHECK(k->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_BYOK);
        CHECK(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE); /* the first key */
        CHECK(strcmp(k->fingerprint, fp) == 0 && k->bits == 2048);
        CHECK(strcmp(k->import_kid, "hsmvault:subscriptions/sub-a/import-keys/1") == 0);
        kv_pb_free(&k->base);
    }
    /* a key pair in the token: sensitive, never extractable, decrypt/unwrap */
    CHECK(token_count(NULL, NULL) == before + 2);
    Hsmvault__V1__ListTokenObjectsResponse *l = token_objects();
    for (size_t i = 0; l && i < l->n_objects; i++) {
        const Hsmvault__V1__TokenObject *o = l->objects[i];
        if (strcmp(o->vault_key_id, key_cli) != 0 || strcmp(o->object_class, "private-key") != 0)
            continue;
        CHECK(strcmp(o->vault_role, "tenant-key") == 0 && o->sensitive && !o->extractable &&
              o->can_decrypt && o->can_unwrap && !o->can_sign && o->bits == 2048);
    }
    kv_pb_free(l ? &l->base : NULL);
    /* apply: the DEK made on the service key moves under the BYOK key */
    Hsmvault__V1__ApplyKeyRequest ap = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    ap.environment_id = env_a;
    Hsmvault__V1__Environment *e = NULL;
    CHECK_OK(CALL(ea, M("Environments", "ApplyKey"), ap, environment, &e));
    if (e)
        CHECK(e->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED &&
              strcmp(e->key_id, key_cli) == 0);
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(unwrap_same(env_a, db1, dek1));
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_OK(vc_database_key_create(sn, env_a, "db2", db2, sizeof(db2), &dek, &lease));
    if (dek.len == 32) memcpy(dek2, dek.data, 32);
    kv_secret_free(&dek);
    CHECK_OK(unwrap_same(env_a, db2, dek2));
    /* the same key again: already a key of the tenant, nothing left behind */
    refused(tenant_a, doc, len, NULL, KV_ERR_ALREADY_EXISTS, "already key", __LINE__);
    free(doc);
}

static void test_bad_inputs(void)
{
    size_t len = 0, n = 0;
    char *good = byok_cli("ik-a1.pem", "t2.pem", "t2.byok", "", &len);
    if (good == NULL) return;
    char *bad;
#define EDIT_REFUSED(from, to, code, want)                                                         \
    do {                                                                                           \
        bad = edit(good, (from), (to), &n);                                                        \
        if (bad) REFUSED(tenant_a, bad, n, (code), (want));                                        \
        free(bad);                                                                                 \
    } while (0)
    /* malformed JSON; wrong or missing fields */
    REFUSED(tenant_a, good, len - 3, KV_ERR_INVALID_ARGUMENT, "malformed JSON");
    REFUSED(tenant_a, "{", 1, KV_ERR_INVALID_ARGUMENT, "malformed JSON");
    REFUSED(tenant_a, "", 0, KV_ERR_INVALID_ARGUMENT, "");
    EDIT_REFUSED("\"alg\": \"dir\"", "\"alg\": \"RSA-OAEP-256\"", KV_ERR_INVALID_ARGUMENT,
                 "header.alg must be \"dir\"");
    EDIT_REFUSED("\"enc\": \"CKM_RSA_AES_KEY_WRAP\"", "\"enc\": \"A256KW\"",
                 KV_ERR_INVALID_ARGUMENT, "header.enc must be");
    EDIT_REFUSED("\"schema_version\": \"1.0.0\"", "\"schema_version\": \"2.0.0\"",
                 KV_ERR_INVALID_ARGUMENT, "schema_version must be");
    EDIT_REFUSED("\"schema_version\": \"1.0.0\",", "", KV_ERR_INVALID_ARGUMENT,
                 "schema_version is missing");
    EDIT_REFUSED("\"alg\": \"dir\",", "", KV_ERR_INVALID_ARGUMENT, "header.alg is missing");
    /* unknown or foreign kid */
    EDIT_REFUSED("import-keys/1", "import-keys/99", KV_ERR_NOT_FOUND, "never issued");
    EDIT_REFUSED("hsmvault:subscriptions/sub-a/import-keys/1",
                 "https://myvault.vault.azure.net/keys/kek/0123", KV_ERR_INVALID_ARGUMENT,
                 "not an hsmvault import key id");
    EDIT_REFUSED("sub-a", "sub-b", KV_ERR_INVALID_ARGUMENT,
                 "made for an import key of subscription sub-b");
    /* ciphertext: truncated, too short, KWP not a multiple of 8, bits flipped */
    struct {
        ct_edit_fn fn;
        const char *want;
    } cts[] = {
        {cut_one, "multiple of 8"},    {shorter_than_modulus, "too short"},
        {rsa_only, "too short"},       {cut_eight, "does not unwrap"},
        {flip_kwp, "does not unwrap"}, {flip_rsa, "does not unwrap"},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(cts); i++) {
        bad = edit_ciphertext(good, cts[i].fn, &n);
        if (bad) refused(tenant_a, bad, n, NULL, KV_ERR_INVALID_ARGUMENT, cts[i].want, __LINE__);
        free(bad);
    }
    /* a password with a .byok file */
    refused(tenant_a, good, len, "some password", KV_ERR_INVALID_ARGUMENT, "has no password",
            __LINE__);
    /* SHA-256 OAEP: SoftHSM 2.6.1 has SHA-1 only, and the message says so */
    char *sha = byok_cli("ik-a1.pem", "t2.pem", "t2-sha256.byok", "sha256", &n);
    if (sha) REFUSED(tenant_a, sha, n, KV_ERR_INVALID_ARGUMENT, "SHA-1 only");
    free(sha);
    /* targets that are no RSA-2048 key: EC, RSA-4096, not a key at all */
    char *ec = byok_cli("ik-a1.pem", "tec.pem", "tec.byok", "", &n);
    if (ec) REFUSED(tenant_a, ec, n, KV_ERR_INVALID_ARGUMENT, "not an RSA private key");
    free(ec);
    char *big = byok_cli("ik-a1.pem", "t4096.pem", "t4096.byok", "", &n);
    if (big) REFUSED(tenant_a, big, n, KV_ERR_INVALID_ARGUMENT, "RSA-4096; only RSA-2048");
    free(big);
    /* not a key: 300 random bytes wrapped with the same openssl commands */
    CHECK(kv_test_sh(
              "cd %s && openssl rand -out junk.bin 300 && openssl rand -out junk.aes 32 && "
              "openssl pkeyutl -encrypt -pubin -inkey ik-a1.pem -in junk.aes -out junk.rsa "
              "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 "
              "&& openssl enc -id-aes256-wrap-pad -K $(od -An -tx1 junk.aes | tr -d ' \\n') -iv "
              "A65959A6 -in junk.bin -out junk.kwp && printf '{\"schema_version\":\"1.0.0\","
              "\"header\":{\"kid\":\"hsmvault:subscriptions/sub-a/import-keys/1\",\"alg\":\"dir\","
              "\"enc\":\"CKM_RSA_AES_KEY_WRAP\"},\"ciphertext\":\"%%s\"}' $(cat junk.rsa junk.kwp "
              "| openssl base64 -A | tr '+/' '-_') > junk.byok",
              tmp) == 0);
    uint8_t *junk = NULL;
    if (read_tmp("junk.byok", &junk, &n))
        REFUSED(tenant_a, junk, n, KV_ERR_INVALID_ARGUMENT, "not an RSA private key");
    free(junk);
    /* a file of several MiB */
    size_t huge_len = 3u << 20;
    char *huge = malloc(huge_len);
    memset(huge, ' ', huge_len);
    memcpy(huge, good, len);
    REFUSED(tenant_a, huge, huge_len, KV_ERR_INVALID_ARGUMENT, "at most 65536 bytes");
    free(huge);
    /* a blob made for another subscription's import key: refused by its kid,
     * before any token call (and that import key is not this tenant's) */
    char *foreign = byok_cli("ik-b1.pem", "t2.pem", "t2-for-b.byok", "", &n);
    if (foreign)
        REFUSED(tenant_a, foreign, n, KV_ERR_INVALID_ARGUMENT,
                "made for an import key of subscription sub-b");
    /* ... and it imports where it belongs */
    char id[64];
    if (foreign) CHECK_OK(upload(tenant_b, "b's key", foreign, n, NULL, id, NULL));
    free(foreign);
    free(good);
#undef EDIT_REFUSED
}

/* Made in software (vaultctl byok wrap --key) and in a second SoftHSM token,
 * the admin's own HSM (vaultctl byok wrap --pkcs11-module). */
static void test_software_and_token_blobs(void)
{
    size_t len = 0;
    char *doc = byok_soft("ik-a1.pem", "t3.pem", KV_BYOK_OAEP_SHA1, &len);
    Hsmvault__V1__TenantKey *k = NULL;
    char id[64], fp[65];
    if (doc) CHECK_OK(upload(tenant_a, "soft", doc, len, NULL, id, &k));
    fingerprint_of("t3.pem", fp);
    if (k) {
        CHECK(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_AVAILABLE &&
              strcmp(k->fingerprint, fp) == 0);
        kv_pb_free(&k->base);
        k = NULL;
    }
    free(doc);

    /* the admin's token: an extractable key generated there, C_WrapKey */
    char admin_dir[300], conf_saved[512] = "";
    snprintf(admin_dir, sizeof(admin_dir), "%s/admin-hsm", tmp);
    const char *conf = getenv("SOFTHSM2_CONF");
    if (conf) snprintf(conf_saved, sizeof(conf_saved), "%s", conf);
    kv_softhsm fx;
    CHECK(kv_test_sh("mkdir -p %s", admin_dir) == 0);
    CHECK_OK(kv_softhsm_setup(admin_dir, "admin-hsm", &fx));
    hsm_config cfg = {fx.module_path, fx.label, fx.pin_file, 1};
    hsm *h = NULL;
    CHECK_OK(hsm_open(&cfg, &h));
    uint8_t *ik_text = NULL, *src_spki = NULL, *ct = NULL;
    size_t ik_len = 0, src_len = 0, ct_len = 0;
    byok_import_key imp = {0};
    hsm_key_id src;
    unsigned bits = 0;
    char *json = NULL;
    if (h != NULL && read_tmp("ik-a1.pem", &ik_text, &ik_len) &&
        kv_ok(byok_import_key_parse(ik_text, ik_len, &imp))) {
        CHECK_OK(hsm_rsa_generate_transferable(h, "tenant-key", 2048, &src, &src_spki, &src_len));
        CHECK_OK(hsm_byok_wrap(h, "tenant-key", imp.spki, imp.spki_len, HSM_OAEP_SHA1, &ct, &ct_len,
                               &bits));
        CHECK(bits == 2048);
        if (ct)
            CHECK_OK(
                kv_byok_format(imp.kid, KV_BYOK_OAEP_SHA1, ct, ct_len, "SoftHSM", &json, &len));
    }
    if (json) CHECK_OK(upload(tenant_a, "from the admin's HSM", json, len, NULL, id, &k));
    if (k && src_spki) {
        uint8_t d[32];
        char hex[65];
        SHA256(src_spki, src_len, d);
        kv_hex_encode(d, 32, hex);
        CHECK(strcmp(k->fingerprint, hex) == 0);
        kv_pb_free(&k->base);
    }
    free(json);
    free(ct);
    free(src_spki);
    free(ik_text);
    byok_import_key_free(&imp);
    hsm_close(h);
    if (conf_saved[0]) setenv("SOFTHSM2_CONF", conf_saved, 1);
}

static void test_rotation(void)
{
    char kid[KV_BYOK_KID_MAX + 1];
    unsigned bits = 0, version = 0;
    size_t imports = 0;
    /* operator: 4096 bits, then 3072 */
    Hsmvault__V1__RotateImportKeyRequest rq = HSMVAULT__V1__ROTATE_IMPORT_KEY_REQUEST__INIT;
    rq.tenant_id = tenant_a;
    rq.bits = 1024;
    Hsmvault__V1__ImportKey *k = NULL;
    size_t before = token_count(NULL, NULL);
    CHECK_ERR(CALL(op, M("Tenants", "RotateImportKey"), rq, import_key, &k),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(token_count(NULL, NULL) == before);
    rq.bits = 4096;
    CHECK_OK(CALL(op, M("Tenants", "RotateImportKey"), rq, import_key, &k));
    if (k) CHECK(k->version == 2 && k->bits == 4096 && strcmp(k->state, "current") == 0);
    kv_pb_free(k ? &k->base : NULL);
    CHECK(import_key_file(tenant_a, "ik-a2.pem", kid, &bits, &version));
    CHECK(version == 2 && bits == 4096 &&
          strcmp(kid, "hsmvault:subscriptions/sub-a/import-keys/2") == 0);
    /* round trip with the 4096-bit import key */
    size_t len = 0;
    char *doc = byok_cli("ik-a2.pem", "t4.pem", "t4.byok", "", &len);
    char id[64];
    if (doc) CHECK_OK(upload(tenant_a, "via 4096", doc, len, NULL, id, NULL));
    free(doc);
    /* version 1 is still accepted for its validity */
    doc = byok_soft("ik-a1.pem", "t5.pem", KV_BYOK_OAEP_SHA1, &len);
    if (doc) CHECK_OK(upload(tenant_a, "via previous", doc, len, NULL, id, NULL));
    free(doc);
    rq.bits = 3072;
    CHECK_OK(CALL(op, M("Tenants", "RotateImportKey"), rq, import_key, &k));
    kv_pb_free(k ? &k->base : NULL);
    CHECK(import_key_file(tenant_a, "ik-a3.pem", kid, &bits, &version));
    CHECK(version == 3 && bits == 3072);
    doc = byok_soft("ik-a3.pem", "t6.pem", KV_BYOK_OAEP_SHA1, &len);
    if (doc) CHECK_OK(upload(tenant_a, "via 3072", doc, len, NULL, id, NULL));
    free(doc);
    /* three versions, six token objects; states as documented */
    CHECK(token_count(&imports, "hsmvault:subscriptions/sub-a/") > 0 && imports == 6);
    Hsmvault__V1__ListImportKeysRequest lr = HSMVAULT__V1__LIST_IMPORT_KEYS_REQUEST__INIT;
    lr.tenant_id = tenant_a;
    Hsmvault__V1__ListImportKeysResponse *l = NULL;
    CHECK_OK(CALL(au, M("Tenants", "ListImportKeys"), lr, list_import_keys_response, &l));
    if (l) {
        CHECK(l->n_import_keys == 3);
        for (size_t i = 0; i < l->n_import_keys; i++) {
            const Hsmvault__V1__ImportKey *ik = l->import_keys[i];
            CHECK(ik->version == i + 1);
            CHECK(strcmp(ik->state, i < 2 ? "previous" : "current") == 0);
            CHECK((ik->valid_until > 0) == (i < 2));
        }
        kv_pb_free(&l->base);
    }
    /* bits 0 keeps the current size; the first version of sub-c is 2048 */
    rq.tenant_id = tenant_c;
    rq.bits = 0;
    CHECK_OK(CALL(op, M("Tenants", "RotateImportKey"), rq, import_key, &k));
    if (k) CHECK(k->version == 1 && k->bits == 2048);
    kv_pb_free(k ? &k->base : NULL);
    CHECK(import_key_file(tenant_c, "ik-c1.pem", kid, &bits, &version));
    CHECK(version == 1 && bits == 2048);
}

static kv_result lock_with(const char *tenant, const void *byok, size_t len)
{
    Hsmvault__V1__GetLockConfirmationRequest gq = HSMVAULT__V1__GET_LOCK_CONFIRMATION_REQUEST__INIT;
    gq.tenant_id = (char *)tenant;
    Hsmvault__V1__LockConfirmation *lc = NULL;
    kv_result r = CALL(ta, M("TenantKeys", "GetLockConfirmation"), gq, lock_confirmation, &lc);
    if (kv_failed(r)) return r;
    Hsmvault__V1__KeyMaterial m;
    hsmvault__v1__key_material__init(&m);
    m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_BYOK;
    m.byok = (ProtobufCBinaryData){len, (uint8_t *)(uintptr_t)byok};
    Hsmvault__V1__LockTenantRequest req = HSMVAULT__V1__LOCK_TENANT_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    req.active_key = &m;
    req.confirmation = lc->text;
    Hsmvault__V1__LockTenantResponse *resp = NULL;
    r = CALL(ta, M("TenantKeys", "LockTenant"), req, lock_tenant_response, &resp);
    kv_pb_free(resp ? &resp->base : NULL);
    kv_pb_free(&lc->base);
    return r;
}

/* Lock and unlock ask for the active key again: presented as .byok files. */
static void test_lock_unlock_byok(void)
{
    CHECK_OK(advance_clock(73 * 3600)); /* seed 001: no lock within 72 h of a key change */
    size_t len = 0, n = 0;
    uint8_t *active = NULL, *other = NULL;
    CHECK(read_tmp("t1.byok", &active, &len)); /* made for import key version 1 */
    CHECK(read_tmp("t2-for-b.byok", &other, &n));
    /* another key's file (and one for another subscription): refused, no change */
    size_t before = token_count(NULL, NULL);
    char *t3 = byok_soft("ik-a3.pem", "t3.pem", KV_BYOK_OAEP_SHA1, &n);
    CHECK_ERR(lock_with(tenant_a, t3, n), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "not the tenant's active key") != NULL);
    free(t3);
    CHECK(token_count(NULL, NULL) == before);
    CHECK_OK(unwrap_same(env_a, db1, dek1));
    /* the active key's own file: locked */
    CHECK_OK(lock_with(tenant_a, active, len));
    kv_error_clear();
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK(kv_failed(vc_database_key_unwrap(sn, env_a, db1, &dek, &lease)));
    kv_secret_free(&dek);
    /* every tenant key of A left the token; its import keys stay */
    size_t imports = 0, after = token_count(&imports, "hsmvault:subscriptions/sub-a/");
    CHECK(after < before && imports == 6);
    /* unlock after 1 h with the same key wrapped again for the current import key */
    CHECK_OK(advance_clock(2 * 3600));
    char *again = byok_cli("ik-a3.pem", "t1.pem", "t1-v3.byok", "", &n);
    Hsmvault__V1__KeyMaterial m;
    hsmvault__v1__key_material__init(&m);
    m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_BYOK;
    Hsmvault__V1__UnlockKeyRequest ur = HSMVAULT__V1__UNLOCK_KEY_REQUEST__INIT;
    ur.tenant_id = tenant_a;
    ur.key_id = key_cli;
    ur.key = &m;
    Hsmvault__V1__TenantKey *k = NULL;
    /* the wrong key first: refused, nothing imported */
    char *wrong = byok_soft("ik-a3.pem", "t7.pem", KV_BYOK_OAEP_SHA1, &n);
    m.byok = (ProtobufCBinaryData){strlen(wrong), (uint8_t *)wrong};
    size_t locked_count = token_count(NULL, NULL);
    CHECK_ERR(CALL(ta, M("TenantKeys", "UnlockKey"), ur, tenant_key, &k), KV_ERR_INVALID_ARGUMENT);
    CHECK(token_count(NULL, NULL) == locked_count);
    free(wrong);
    m.byok = (ProtobufCBinaryData){strlen(again), (uint8_t *)again};
    CHECK_OK(CALL(ta, M("TenantKeys", "UnlockKey"), ur, tenant_key, &k));
    if (k) CHECK(k->state == HSMVAULT__V1__KEY_STATE__KEY_STATE_ACTIVE);
    kv_pb_free(k ? &k->base : NULL);
    CHECK(token_count(NULL, NULL) == locked_count + 2); /* a new token key pair */
    Hsmvault__V1__UnlockEnvironmentRequest ue = HSMVAULT__V1__UNLOCK_ENVIRONMENT_REQUEST__INIT;
    ue.environment_id = env_a;
    Hsmvault__V1__Environment *e = NULL;
    CHECK_OK(CALL(ea, M("Environments", "UnlockEnvironment"), ue, environment, &e));
    kv_pb_free(e ? &e->base : NULL);
    CHECK_OK(unwrap_same(env_a, db1, dek1));
    CHECK_OK(unwrap_same(env_a, db2, dek2));
    free(again);
    free(active);
    free(other);
}

/* Past their validity, older versions are retired and leave the token. */
static void test_retire(void)
{
    CHECK_OK(advance_clock(8 * 86400)); /* the sweep runs after the clock moves */
    size_t imports = 0;
    token_count(&imports, "hsmvault:subscriptions/sub-a/");
    CHECK(imports == 2); /* only version 3 */
    Hsmvault__V1__ListImportKeysRequest lr = HSMVAULT__V1__LIST_IMPORT_KEYS_REQUEST__INIT;
    lr.tenant_id = tenant_a;
    Hsmvault__V1__ListImportKeysResponse *l = NULL;
    CHECK_OK(CALL(ta, M("Tenants", "ListImportKeys"), lr, list_import_keys_response, &l));
    if (l && l->n_import_keys == 3) {
        CHECK(strcmp(l->import_keys[0]->state, "retired") == 0);
        CHECK(strcmp(l->import_keys[1]->state, "retired") == 0);
        CHECK(strcmp(l->import_keys[2]->state, "current") == 0);
    }
    kv_pb_free(l ? &l->base : NULL);
    size_t n = 0;
    char *doc = byok_soft("ik-a1.pem", "t7.pem", KV_BYOK_OAEP_SHA1, &n);
    if (doc)
        refused(tenant_a, doc, n, NULL, KV_ERR_FAILED_PRECONDITION, "no longer accepted (since",
                __LINE__);
    if (doc)
        refused(tenant_a, doc, n, NULL, KV_ERR_FAILED_PRECONDITION,
                "for the current import key (version 3)", __LINE__);
    free(doc);
    doc = byok_soft("ik-a3.pem", "t7.pem", KV_BYOK_OAEP_SHA1, &n);
    char id[64];
    if (doc) CHECK_OK(upload(tenant_a, "via current", doc, n, NULL, id, NULL));
    free(doc);
}

static void clients_close(void)
{
    vc_close(op), vc_close(ta), vc_close(ea), vc_close(sn), vc_close(au);
    op = ta = ea = sn = au = NULL;
}

static void clients_open(void)
{
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    ea = vaultd_proc_client(&vd, "environment-admin");
    sn = vaultd_proc_client(&vd, "storage-node");
    au = vaultd_proc_client(&vd, "auditor");
    CHECK(op && ta && ea && sn && au);
}

/* Restarts: import keys are not orphans; a crash between the token object
 * and the commit leaves an orphan that start-up reconciliation removes. */
static void test_restarts(void)
{
    size_t imports_before = 0, before = token_count(&imports_before, NULL);
    clients_close();
    CHECK(vaultd_proc_stop(&vd) == 0);
    CHECK(vaultd_proc_start(&vd, state));
    clients_open();
    size_t imports = 0;
    CHECK(token_count(&imports, NULL) == before && imports == imports_before);
    CHECK_OK(unwrap_same(env_a, db1, dek1));

    clients_close();
    CHECK(vaultd_proc_stop(&vd) == 0);
    setenv("HSMVAULT_TEST_CRASH_AT", "import-key-create", 1);
    CHECK(vaultd_proc_start(&vd, state));
    unsetenv("HSMVAULT_TEST_CRASH_AT");
    op = vaultd_proc_client(&vd, "operator");
    Hsmvault__V1__RotateImportKeyRequest rq = HSMVAULT__V1__ROTATE_IMPORT_KEY_REQUEST__INIT;
    rq.tenant_id = tenant_a;
    Hsmvault__V1__ImportKey *k = NULL;
    CHECK_ERR(CALL(op, M("Tenants", "RotateImportKey"), rq, import_key, &k), KV_ERR_UNAVAILABLE);
    int status = 0;
    CHECK(waitpid(vd.pid, &status, 0) == vd.pid && WIFSIGNALED(status) &&
          WTERMSIG(status) == SIGKILL);
    vd.pid = 0;
    vc_close(op);
    op = NULL;
    CHECK(vaultd_proc_start(&vd, state));
    clients_open();
    CHECK(token_count(&imports, NULL) == before && imports == imports_before);
    char kid[KV_BYOK_KID_MAX + 1];
    unsigned version = 0;
    CHECK(import_key_file(tenant_a, "ik-a3-again.pem", kid, NULL, &version));
    CHECK(version == 3);
    char log[512];
    snprintf(log, sizeof(log), "%s.log", state);
    CHECK(kv_test_sh("grep -q 'reconcile: removed token object .hsmvault:subscriptions/sub-a/"
                     "import-keys/4' %s",
                     log) == 0);
    /* the next rotation takes version 4 */
    CHECK_OK(CALL(op, M("Tenants", "RotateImportKey"), rq, import_key, &k));
    if (k) CHECK(k->version == 4 && k->bits == 3072);
    kv_pb_free(k ? &k->base : NULL);
}

int main(void)
{
    rpc_client_global_init();
    const char *src = getenv("HSMVAULT_SOURCE_DIR");
    char *abs = realpath(src ? src : ".", NULL); /* the test cds into its directory */
    snprintf(src_dir, sizeof(src_dir), "%s", abs ? abs : ".");
    free(abs);
    kv_test_tmpdir(tmp, sizeof(tmp), "byok");
    snprintf(state, sizeof(state), "%s/state", tmp);
    CHECK(vaultd_proc_start(&vd, state));
    if (vd.pid <= 0) return kv_test_finish();
    clients_open();
    RUN(test_setup);
    RUN(test_import_key_download);
    RUN(test_openssl_cli_blob);
    RUN(test_bad_inputs);
    RUN(test_software_and_token_blobs);
    RUN(test_rotation);
    RUN(test_lock_unlock_byok);
    RUN(test_retire);
    RUN(test_restarts);
    clients_close();
    CHECK(vaultd_proc_stop(&vd) == 0);
    int rc = kv_test_finish();
    if (rc == 0)
        kv_test_rmtree(tmp);
    else
        fprintf(stderr, "state kept in %s\n", tmp);
    rpc_client_global_shutdown();
    return rc;
}
