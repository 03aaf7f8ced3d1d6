/*
 * test_material.c: a presented .byok file is refused before any token call
 * when its kid does not bind it to the tenant.  The vault here has NO token
 * (hsm NULL) over a real LMDB store: any token call would fail with
 * "hsm_...: missing argument", so every refusal below that names the kid,
 * the import key version or the file itself proves the order of the checks
 * (seed/issue 4: a blob for another subscription is refused before any
 * token call).  Nothing is left in the material after a failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_byok.h"
#include "kv_clock.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "store.h"
#include "vault.h"

static vault v;
static vault_store *store;

static kv_result put_import_key(store_txn *t, void *arg)
{
    const ImportKeyRecord *k = arg;
    char key[96];
    snprintf(key, sizeof(key), "%s/%010u", k->subscription_id, k->version);
    return store_put(t, STORE_IMPORT_KEYS, key, &k->base);
}

static void add_import_key(const char *sub, uint32_t version, int64_t superseded_at)
{
    uint8_t id[HSM_KEY_ID_LEN] = {1, 2, 3};
    ImportKeyRecord k = HSMVAULT__STORE__IMPORT_KEY_RECORD__INIT;
    k.subscription_id = (char *)sub;
    k.version = version;
    k.hsm_id = (ProtobufCBinaryData){sizeof(id), id};
    k.bits = 2048;
    k.created_at = 1;
    k.created_by = "test";
    k.superseded_at = superseded_at;
    CHECK_OK(store_update(store, put_import_key, &k));
}

/* A well-formed .byok for kid with ct_len ciphertext bytes. */
static char *file_for(const char *kid, size_t ct_len, kv_byok_hash hash, size_t *len)
{
    uint8_t *ct = calloc(1, ct_len);
    char *json = NULL;
    CHECK_OK(kv_byok_format(kid, hash, ct, ct_len, NULL, &json, len));
    free(ct);
    return json;
}

static void refused(const TenantRecord *tr, const char *doc, size_t len, const char *password,
                    kv_code code, const char *want, int line)
{
    Hsmvault__V1__KeyMaterial m;
    hsmvault__v1__key_material__init(&m);
    m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_BYOK;
    m.byok = (ProtobufCBinaryData){len, (uint8_t *)(uintptr_t)doc};
    if (password) m.password = (ProtobufCBinaryData){strlen(password), (uint8_t *)password};
    vault_material out;
    kv_error_clear();
    kv_result r = vault_material_open(&v, tr, &m, &out);
    bool ok = kv_failed(r) && kv_error_code() == code && strstr(kv_error_msg(), want) != NULL &&
              strstr(kv_error_msg(), "hsm_") == NULL;
    if (!ok)
        fprintf(stderr, "line %d: wanted %s '%s', got %s: %s\n", line, kv_code_name(code), want,
                kv_ok(r) ? "success" : kv_code_name(kv_error_code()),
                kv_ok(r) ? "" : kv_error_msg());
    CHECK(ok);
    CHECK(out.spki == NULL && out.byok.ciphertext == NULL && out.pkcs8.data == NULL &&
          !out.in_token);
}
#define REFUSED(doc, len, code, want) refused(&tr, (doc), (len), NULL, (code), (want), __LINE__)

static void test_binding_before_token(void)
{
    TenantRecord tr = HSMVAULT__STORE__TENANT_RECORD__INIT;
    tr.id = "tnt-0000000000000001";
    tr.subscription_id = "sub-a";
    /* sub-a: version 1 replaced 30 days ago (retired), version 2 current;
     * sub-b: version 1 current */
    int64_t now = kv_clock_now();
    add_import_key("sub-a", 1, now - 30 * 86400);
    add_import_key("sub-a", 2, 0);
    add_import_key("sub-b", 1, 0);
    size_t len;
    char *doc;

    /* another subscription's import key: refused by its kid */
    doc =
        file_for("hsmvault:subscriptions/sub-b/import-keys/1", 256 + 1232, KV_BYOK_OAEP_SHA1, &len);
    REFUSED(doc, len, KV_ERR_INVALID_ARGUMENT, "made for an import key of subscription sub-b");
    free(doc);
    /* a version never issued, a retired one, a kid that is not ours */
    doc =
        file_for("hsmvault:subscriptions/sub-a/import-keys/7", 256 + 1232, KV_BYOK_OAEP_SHA1, &len);
    REFUSED(doc, len, KV_ERR_NOT_FOUND, "never issued");
    free(doc);
    doc =
        file_for("hsmvault:subscriptions/sub-a/import-keys/1", 256 + 1232, KV_BYOK_OAEP_SHA1, &len);
    REFUSED(doc, len, KV_ERR_FAILED_PRECONDITION, "current import key (version 2)");
    free(doc);
    const char *not_ours[] = {"https://myvault.vault.azure.net/keys/kek/1",
                              "hsmvault:subscriptions//import-keys/1",
                              "hsmvault:subscriptions/sub-a/import-keys/0",
                              "hsmvault:subscriptions/sub-a/import-keys/01",
                              "hsmvault:subscriptions/sub-a/import-keys/99999999999",
                              "hsmvault:subscriptions/sub a/import-keys/1",
                              "hsmvault:subscriptions/sub-a/import-keys/1x",
                              "hsmvault:subscriptions/sub-a/import-keys/"};
    for (size_t i = 0; i < KV_ARRAY_LEN(not_ours); i++) {
        doc = file_for(not_ours[i], 256 + 1232, KV_BYOK_OAEP_SHA1, &len);
        REFUSED(doc, len, KV_ERR_INVALID_ARGUMENT, "not an hsmvault import key id");
        free(doc);
    }
    /* the current version, but a ciphertext that cannot fit its modulus */
    doc = file_for("hsmvault:subscriptions/sub-a/import-keys/2", 200, KV_BYOK_OAEP_SHA1, &len);
    REFUSED(doc, len, KV_ERR_INVALID_ARGUMENT, "too short");
    free(doc);
    doc =
        file_for("hsmvault:subscriptions/sub-a/import-keys/2", 256 + 1233, KV_BYOK_OAEP_SHA1, &len);
    REFUSED(doc, len, KV_ERR_INVALID_ARGUMENT, "multiple of 8");
    free(doc);
    /* SHA-256 OAEP where the token (here: none) cannot unwrap it */
    doc = file_for("hsmvault:subscriptions/sub-a/import-keys/2", 256 + 1232, KV_BYOK_OAEP_SHA256,
                   &len);
    REFUSED(doc, len, KV_ERR_INVALID_ARGUMENT, "SHA-1 only");
    /* a password sent with a .byok file */
    refused(&tr, doc, len, "pw", KV_ERR_INVALID_ARGUMENT, "has no password", __LINE__);
    free(doc);
    /* not a .byok file; a file of several MiB */
    REFUSED("{\"schema_version\": 1}", 21, KV_ERR_INVALID_ARGUMENT, "schema_version");
    size_t huge = 5u << 20;
    char *big = calloc(1, huge);
    REFUSED(big, huge, KV_ERR_INVALID_ARGUMENT, "at most 65536 bytes");
    free(big);
    /* no material at all */
    Hsmvault__V1__KeyMaterial none;
    hsmvault__v1__key_material__init(&none);
    vault_material out;
    CHECK_ERR(vault_material_open(&v, &tr, &none, &out), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(vault_material_open(&v, &tr, NULL, &out), KV_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    char dir[256];
    kv_test_tmpdir(dir, sizeof(dir), "material");
    CHECK_OK(store_open(dir, &store));
    if (store == NULL) return kv_test_finish();
    CHECK_OK(vault_init(&v, NULL, store, 60)); /* no token: see the header comment */
    RUN(test_binding_before_token);
    vault_fini(&v);
    store_close(store);
    int rc = kv_test_finish();
    if (rc == 0) kv_test_rmtree(dir);
    return rc;
}
