/*
 * test_hsm_byok.c: BYOK inside real SoftHSM tokens (no PKCS#11 mocks): import
 * keys of 2048/3072/4096 bits (unwrap only), .byok ciphertexts built in
 * software unwrapped into sensitive non-extractable token keys that then
 * decrypt DEKs, inspection without leaving objects, every bad ciphertext
 * with the token's objects counted before and after, and the admin's side:
 * a second token wrapping an extractable key with C_WrapKey.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "byok_wrap.h"
#include "hsm.h"
#include "kv_softhsm.h"
#include "kv_testkey.h"
#include "kv_test.h"

static kv_softhsm fx_vault, fx_admin;
static hsm *vault_tok, *admin_tok;

static hsm *open_token(const kv_softhsm *fx)
{
    hsm_config cfg = {fx->module_path, fx->label, fx->pin_file, 2};
    hsm *h = NULL;
    CHECK_OK(hsm_open(&cfg, &h));
    return h;
}

static size_t count_objects(hsm *h, size_t *secret_keys)
{
    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(h, &objs, &n));
    if (secret_keys != NULL) {
        *secret_keys = 0;
        for (size_t i = 0; i < n; i++)
            if (strcmp(objs[i].object_class, "secret-key") == 0) (*secret_keys)++;
    }
    free(objs);
    return n;
}

static const hsm_object_info *find_info(const hsm_object_info *objs, size_t n, const hsm_key_id *id,
                                        const char *cls)
{
    for (size_t i = 0; i < n; i++)
        if (objs[i].id_len == HSM_KEY_ID_LEN &&
            memcmp(objs[i].id, id->bytes, HSM_KEY_ID_LEN) == 0 &&
            strcmp(objs[i].object_class, cls) == 0)
            return &objs[i];
    return NULL;
}

/* Software RSA-OAEP SHA-1 under an SPKI (a DEK wrapped as the vault does). */
static bool oaep_sha1(const uint8_t *spki, size_t spki_len, const uint8_t *m, size_t n, uint8_t *ct,
                      size_t *ct_len)
{
    const unsigned char *p = spki;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)spki_len);
    EVP_PKEY_CTX *c = k ? EVP_PKEY_CTX_new(k, NULL) : NULL;
    bool ok = c != NULL && EVP_PKEY_encrypt_init(c) == 1 &&
              EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) == 1 &&
              EVP_PKEY_encrypt(c, ct, ct_len, m, n) == 1;
    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(k);
    return ok;
}

typedef struct {
    unsigned bits;
    hsm_key_id id;
    uint8_t *spki;
    size_t spki_len;
} import_key;

static void import_key_make(unsigned bits, import_key *ik)
{
    ik->bits = bits;
    char label[64];
    snprintf(label, sizeof(label), "hsmvault:import-test/%u", bits);
    CHECK_OK(hsm_import_key_generate(vault_tok, label, bits, &ik->id, &ik->spki, &ik->spki_len));
    /* unwrap only: no decrypt, no sign, never extractable */
    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(vault_tok, &objs, &n));
    const hsm_object_info *priv = find_info(objs, n, &ik->id, "private-key");
    CHECK(priv != NULL);
    if (priv != NULL) {
        CHECK(priv->bits == bits && priv->sensitive && !priv->extractable &&
              priv->never_extractable && priv->can_unwrap && !priv->can_decrypt &&
              !priv->can_sign && !priv->can_derive);
    }
    free(objs);
}

/* The pieces a blob is made of, for making bad ones. */
static uint8_t *wrap(const import_key *ik, const kv_secret *plain, size_t *len)
{
    uint8_t *ct = NULL;
    CHECK_OK(byok_wrap_soft(ik->spki, ik->spki_len, KV_BYOK_OAEP_SHA1, plain, &ct, len));
    return ct;
}

/* Unwraps ct; expects failure with code and a message containing want, and
 * the token's objects exactly as before. */
static void refused(const import_key *ik, const uint8_t *ct, size_t len, hsm_oaep_hash hash,
                    kv_code code, const char *want, int line)
{
    size_t secrets_before = 0, secrets_after = 0;
    size_t before = count_objects(vault_tok, &secrets_before);
    hsm_key_id id;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    kv_error_clear();
    kv_result r = hsm_byok_unwrap(vault_tok, &ik->id, hash, ct, len, 2048, HSM_BYOK_IMPORT,
                                  "hsmvault:t/bad", &id, &spki, &spki_len);
    bool ok = kv_failed(r) && kv_error_code() == code && strstr(kv_error_msg(), want) != NULL;
    if (!ok)
        fprintf(stderr, "line %d: wanted %s '%s', got %s: %s\n", line, kv_code_name(code), want,
                kv_ok(r) ? "success" : kv_code_name(kv_error_code()),
                kv_ok(r) ? "" : kv_error_msg());
    CHECK(ok);
    CHECK(spki == NULL);
    size_t after = count_objects(vault_tok, &secrets_after);
    if (after != before)
        fprintf(stderr, "line %d: %zu objects before, %zu after\n", line, before, after);
    CHECK(after == before && secrets_after == 0);
    free(spki);
}
#define REFUSED(ik, ct, len, code, want)                                                           \
    refused((ik), (ct), (len), HSM_OAEP_SHA1, (code), (want), __LINE__)

static void round_trip(const import_key *ik, EVP_PKEY *tenant)
{
    kv_secret p8 = KV_SECRET_INIT;
    kv_testkey_pkcs8(tenant, &p8);
    size_t want_len = 0, ct_len = 0;
    uint8_t *want = kv_testkey_spki(tenant, &want_len);
    uint8_t *ct = wrap(ik, &p8, &ct_len);
    CHECK(ct_len > ik->bits / 8 && (ct_len - ik->bits / 8) % 8 == 0);

    /* inspect: the public key comes out, nothing stays */
    size_t before = count_objects(vault_tok, NULL), secrets = 0;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    CHECK_OK(hsm_byok_unwrap(vault_tok, &ik->id, HSM_OAEP_SHA1, ct, ct_len, 2048, HSM_BYOK_INSPECT,
                             NULL, NULL, &spki, &spki_len));
    CHECK(spki_len == want_len && spki != NULL && memcmp(spki, want, want_len) == 0);
    CHECK(count_objects(vault_tok, &secrets) == before && secrets == 0);
    free(spki);

    /* import: a token key pair with the tenant key's public key */
    hsm_key_id id;
    CHECK_OK(hsm_byok_unwrap(vault_tok, &ik->id, HSM_OAEP_SHA1, ct, ct_len, 2048, HSM_BYOK_IMPORT,
                             "hsmvault:t/byok", &id, &spki, &spki_len));
    CHECK(spki_len == want_len && spki != NULL && memcmp(spki, want, want_len) == 0);
    CHECK(count_objects(vault_tok, &secrets) == before + 2 && secrets == 0);
    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(vault_tok, &objs, &n));
    const hsm_object_info *priv = find_info(objs, n, &id, "private-key");
    const hsm_object_info *pub = find_info(objs, n, &id, "public-key");
    CHECK(priv != NULL && pub != NULL);
    if (priv != NULL) {
        CHECK(priv->bits == 2048 && priv->sensitive && !priv->extractable && priv->can_decrypt &&
              priv->can_unwrap && !priv->can_sign && !priv->can_derive && priv->is_private);
        CHECK(strcmp(priv->label, "hsmvault:t/byok") == 0);
    }
    free(objs);

    /* the imported key unwraps a DEK wrapped under its public key */
    uint8_t dek[32], wrapped[512];
    size_t wlen = sizeof(wrapped);
    for (size_t i = 0; i < sizeof(dek); i++)
        dek[i] = (uint8_t)(0xa5 ^ i);
    CHECK(oaep_sha1(spki, spki_len, dek, sizeof(dek), wrapped, &wlen));
    kv_secret back = KV_SECRET_INIT;
    CHECK_OK(hsm_rsa_decrypt_oaep(vault_tok, &id, HSM_OAEP_SHA1, wrapped, wlen, &back));
    CHECK(back.len == sizeof(dek) && memcmp(back.data, dek, sizeof(dek)) == 0);
    kv_secret_free(&back);

    CHECK_OK(hsm_key_destroy(vault_tok, &id));
    CHECK(count_objects(vault_tok, NULL) == before);
    free(spki);
    free(ct);
    free(want);
    kv_secret_free(&p8);
}

static import_key ik2048, ik3072, ik4096, ik_other;
static EVP_PKEY *tenant2048;

static void test_round_trips(void)
{
    tenant2048 = kv_testkey_gen("RSA", 2048);
    CHECK(tenant2048 != NULL);
    import_key_make(2048, &ik2048);
    import_key_make(3072, &ik3072);
    import_key_make(4096, &ik4096);
    import_key_make(2048, &ik_other);
    round_trip(&ik2048, tenant2048);
    round_trip(&ik3072, tenant2048);
    round_trip(&ik4096, tenant2048);
    /* an import key cannot decrypt (only unwrap) */
    uint8_t ct[256];
    size_t ct_len = sizeof(ct);
    CHECK(oaep_sha1(ik2048.spki, ik2048.spki_len, (const uint8_t *)"x", 1, ct, &ct_len));
    kv_secret out = KV_SECRET_INIT;
    CHECK_ERR(hsm_rsa_decrypt_oaep(vault_tok, &ik2048.id, HSM_OAEP_SHA1, ct, ct_len, &out),
              KV_ERR_FAILED_PRECONDITION);
}

static void test_bad_ciphertexts(void)
{
    kv_secret p8 = KV_SECRET_INIT;
    kv_testkey_pkcs8(tenant2048, &p8);
    size_t len = 0;
    uint8_t *ct = wrap(&ik2048, &p8, &len);
    uint8_t *bad = malloc(len + 16);

    /* truncated by one byte: the KWP part is no longer a multiple of 8 */
    REFUSED(&ik2048, ct, len - 1, KV_ERR_INVALID_ARGUMENT, "multiple of 8");
    /* cut by 8: length fine, integrity check fails */
    REFUSED(&ik2048, ct, len - 8, KV_ERR_INVALID_ARGUMENT, "does not unwrap");
    /* only the RSA part, or less */
    REFUSED(&ik2048, ct, 256, KV_ERR_INVALID_ARGUMENT, "RSA part");
    REFUSED(&ik2048, ct, 100, KV_ERR_INVALID_ARGUMENT, "RSA part");
    REFUSED(&ik2048, ct, 256 + 8, KV_ERR_INVALID_ARGUMENT, "at least 16");
    /* one bit flipped in the RSA part: OAEP decoding fails */
    memcpy(bad, ct, len);
    bad[100] ^= 0x10;
    REFUSED(&ik2048, bad, len, KV_ERR_INVALID_ARGUMENT, "does not unwrap");
    /* one bit flipped in the KWP part: the RFC 5649 integrity check fails */
    memcpy(bad, ct, len);
    bad[256 + 40] ^= 0x01;
    REFUSED(&ik2048, bad, len, KV_ERR_INVALID_ARGUMENT, "does not unwrap");
    memcpy(bad, ct, len);
    bad[len - 1] ^= 0x80;
    REFUSED(&ik2048, bad, len, KV_ERR_INVALID_ARGUMENT, "does not unwrap");
    /* made for another import key of the same size */
    REFUSED(&ik_other, ct, len, KV_ERR_INVALID_ARGUMENT, "does not unwrap");
    /* made for a 2048-bit import key, presented to the 4096-bit one */
    REFUSED(&ik4096, ct, len, KV_ERR_INVALID_ARGUMENT, "");
    /* SHA-256 OAEP: SoftHSM 2.6.1 has only SHA-1; the message says so */
    if (!hsm_supports_oaep(vault_tok, HSM_OAEP_SHA256))
        refused(&ik2048, ct, len, HSM_OAEP_SHA256, KV_ERR_FAILED_PRECONDITION, "SHA-1 only",
                __LINE__);
    /* the import key is gone */
    import_key gone = ik_other;
    CHECK_OK(hsm_random(vault_tok, gone.id.bytes, sizeof(gone.id.bytes)));
    REFUSED(&gone, ct, len, KV_ERR_NOT_FOUND, "no import key");
    free(ct);
    kv_secret_free(&p8);

    /* targets that are not RSA-2048 */
    EVP_PKEY *ec = kv_testkey_gen("EC", 0), *rsa4096 = kv_testkey_gen("RSA", 4096),
             *rsa3072 = kv_testkey_gen("RSA", 3072);
    CHECK(ec != NULL && rsa4096 != NULL && rsa3072 != NULL);
    kv_testkey_pkcs8(ec, &p8);
    ct = wrap(&ik2048, &p8, &len);
    REFUSED(&ik2048, ct, len, KV_ERR_INVALID_ARGUMENT, "not an RSA private key");
    free(ct);
    kv_secret_free(&p8);
    kv_testkey_pkcs8(rsa4096, &p8);
    ct = wrap(&ik2048, &p8, &len);
    REFUSED(&ik2048, ct, len, KV_ERR_INVALID_ARGUMENT, "RSA-4096; only RSA-2048");
    free(ct);
    kv_secret_free(&p8);
    kv_testkey_pkcs8(rsa3072, &p8);
    ct = wrap(&ik4096, &p8, &len);
    REFUSED(&ik4096, ct, len, KV_ERR_INVALID_ARGUMENT, "RSA-3072; only RSA-2048");
    free(ct);
    kv_secret_free(&p8);
    /* not a key at all */
    CHECK_OK(kv_secret_alloc(&p8, 200));
    memset(p8.data, 0x42, 200);
    p8.len = 200;
    ct = wrap(&ik2048, &p8, &len);
    REFUSED(&ik2048, ct, len, KV_ERR_INVALID_ARGUMENT, "not an RSA private key");
    free(ct);
    kv_secret_free(&p8);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(rsa4096);
    EVP_PKEY_free(rsa3072);
    free(bad);
}

/* The admin's own token wraps an extractable key with C_WrapKey. */
static void test_admin_token_wrap(void)
{
    hsm_key_id src;
    uint8_t *src_spki = NULL, *ct = NULL, *spki = NULL;
    size_t src_len = 0, ct_len = 0, spki_len = 0, secrets = 0;
    unsigned bits = 0;
    CHECK_OK(
        hsm_rsa_generate_transferable(admin_tok, "tenant-key", 2048, &src, &src_spki, &src_len));
    size_t admin_before = count_objects(admin_tok, NULL);
    CHECK_OK(hsm_byok_wrap(admin_tok, "tenant-key", ik2048.spki, ik2048.spki_len, HSM_OAEP_SHA1,
                           &ct, &ct_len, &bits));
    CHECK(bits == 2048 && ct_len > 256 && (ct_len - 256) % 8 == 0);
    /* the session AES key and the import public key left with the session */
    CHECK(count_objects(admin_tok, &secrets) == admin_before && secrets == 0);
    size_t before = count_objects(vault_tok, NULL);
    hsm_key_id id;
    CHECK_OK(hsm_byok_unwrap(vault_tok, &ik2048.id, HSM_OAEP_SHA1, ct, ct_len, 2048,
                             HSM_BYOK_IMPORT, "hsmvault:t/from-admin", &id, &spki, &spki_len));
    CHECK(spki_len == src_len && memcmp(spki, src_spki, src_len) == 0);
    CHECK(count_objects(vault_tok, NULL) == before + 2);
    CHECK_OK(hsm_key_destroy(vault_tok, &id));
    free(ct);
    free(spki);
    ct = NULL;

    /* for a 3072-bit import key too */
    CHECK_OK(hsm_byok_wrap(admin_tok, "tenant-key", ik3072.spki, ik3072.spki_len, HSM_OAEP_SHA1,
                           &ct, &ct_len, &bits));
    CHECK_OK(hsm_byok_unwrap(vault_tok, &ik3072.id, HSM_OAEP_SHA1, ct, ct_len, 2048,
                             HSM_BYOK_INSPECT, NULL, NULL, &spki, &spki_len));
    CHECK(spki_len == src_len && memcmp(spki, src_spki, src_len) == 0);
    free(ct);
    free(spki);
    ct = NULL;

    /* refusals: unknown label, a non-extractable key, an ambiguous label,
     * an import key that is not an RSA public key */
    CHECK_ERR(hsm_byok_wrap(admin_tok, "no-such-key", ik2048.spki, ik2048.spki_len, HSM_OAEP_SHA1,
                            &ct, &ct_len, &bits),
              KV_ERR_NOT_FOUND);
    hsm_key_id fixed;
    uint8_t *s2 = NULL;
    size_t s2_len = 0;
    CHECK_OK(hsm_rsa_generate(admin_tok, "fixed-key", 2048, &fixed, &s2, &s2_len));
    free(s2);
    CHECK_ERR(hsm_byok_wrap(admin_tok, "fixed-key", ik2048.spki, ik2048.spki_len, HSM_OAEP_SHA1,
                            &ct, &ct_len, &bits),
              KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "not extractable") != NULL);
    CHECK_OK(hsm_rsa_generate_transferable(admin_tok, "tenant-key", 2048, &fixed, &s2, &s2_len));
    free(s2);
    CHECK_ERR(hsm_byok_wrap(admin_tok, "tenant-key", ik2048.spki, ik2048.spki_len, HSM_OAEP_SHA1,
                            &ct, &ct_len, &bits),
              KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "several") != NULL);
    uint8_t junk[40] = {0x30, 0x26};
    CHECK_ERR(hsm_byok_wrap(admin_tok, "fixed-key", junk, sizeof(junk), HSM_OAEP_SHA1, &ct, &ct_len,
                            &bits),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(count_objects(admin_tok, &secrets) == admin_before + 4 && secrets == 0);
    free(src_spki);
}

int main(void)
{
    char dir[256];
    kv_test_tmpdir(dir, sizeof(dir), "hsm-byok");
    CHECK_OK(kv_softhsm_setup(dir, "vault", &fx_vault));
    CHECK_OK(kv_softhsm_setup(dir, "admin", &fx_admin));
    vault_tok = open_token(&fx_vault);
    admin_tok = open_token(&fx_admin);
    if (vault_tok == NULL || admin_tok == NULL) return kv_test_finish();
    CHECK(!hsm_supports_rsa_aes_key_wrap(vault_tok) || true); /* either path must pass */
    RUN(test_round_trips);
    RUN(test_bad_ciphertexts);
    RUN(test_admin_token_wrap);
    EVP_PKEY_free(tenant2048);
    free(ik2048.spki);
    free(ik3072.spki);
    free(ik4096.spki);
    free(ik_other.spki);
    hsm_close(vault_tok);
    hsm_close(admin_tok);
    int rc = kv_test_finish();
    if (rc == 0) kv_test_rmtree(dir);
    return rc;
}
