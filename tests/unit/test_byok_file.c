/*
 * test_byok_file.c: the admin's side of BYOK (byok_wrap.h, byok_file.h): the
 * import key file parser and writer, the key file loader, and the .byok file
 * made in software or inside a real SoftHSM token standing in for the
 * admin's HSM.  Every parser gets its negative cases; every .byok made here
 * is opened again with OpenSSL (the import key's private half) to the very
 * PKCS#8 of the key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "byok_file.h"
#include "hsm.h"
#include "kv_softhsm.h"
#include "kv_testkey.h"
#include "kv_test.h"

static char dir[256];

static kv_result parse_text(const char *text, byok_import_key *ik)
{
    return byok_import_key_parse((const uint8_t *)text, strlen(text), ik);
}

static void import_key_refused(const char *text, const char *want, int line)
{
    byok_import_key ik;
    kv_error_clear();
    kv_result r = parse_text(text, &ik);
    bool ok = kv_failed(r) && kv_error_code() == KV_ERR_INVALID_ARGUMENT &&
              strstr(kv_error_msg(), want) != NULL && ik.spki == NULL && ik.kid[0] == '\0';
    if (!ok)
        fprintf(stderr, "line %d: wanted '%s', got %s\n", line, want,
                kv_ok(r) ? "success" : kv_error_msg());
    CHECK(ok);
}
#define IK_REFUSED(text, want) import_key_refused((text), (want), __LINE__)

static void test_import_key_file(void)
{
    EVP_PKEY *k = kv_testkey_gen("RSA", 3072), *small = kv_testkey_gen("RSA", 1024),
             *ec = kv_testkey_gen("EC", 0);
    char *pem = kv_testkey_pub_pem(k), *small_pem = kv_testkey_pub_pem(small),
         *ec_pem = kv_testkey_pub_pem(ec);
    const char *kid = "hsmvault:subscriptions/sub-1/import-keys/4";
    char *text = NULL;
    size_t len = 0;
    CHECK_OK(byok_import_key_format(kid, "sub-1", 3072, pem, &text, &len));
    CHECK(len == strlen(text) && strstr(text, "# kid: hsmvault:subscriptions/sub-1/") != NULL);

    byok_import_key ik;
    CHECK_OK(byok_import_key_parse((const uint8_t *)text, len, &ik));
    CHECK(strcmp(ik.kid, kid) == 0 && strcmp(ik.subscription, "sub-1") == 0 && ik.bits == 3072);
    uint8_t *der = NULL;
    int n = i2d_PUBKEY(k, &der);
    CHECK(ik.spki != NULL && ik.spki_len == (size_t)n && memcmp(ik.spki, der, (size_t)n) == 0);
    OPENSSL_free(der);
    byok_import_key_free(&ik);
    CHECK(ik.spki == NULL);

    /* CRLF line ends; a plain PEM (no kid) */
    char buf[8192];
    snprintf(buf, sizeof(buf), "# kid: %s\r\n# bits: 3072\r\n%s", kid, pem);
    CHECK_OK(parse_text(buf, &ik));
    CHECK(strcmp(ik.kid, kid) == 0);
    byok_import_key_free(&ik);
    CHECK_OK(parse_text(pem, &ik));
    CHECK(ik.kid[0] == '\0' && ik.bits == 3072);
    const char *k_out = NULL;
    CHECK_ERR(byok_file_kid(&ik, NULL, &k_out), KV_ERR_INVALID_ARGUMENT);
    CHECK_OK(byok_file_kid(&ik, "given", &k_out));
    CHECK(strcmp(k_out, "given") == 0);
    byok_import_key_free(&ik);

    /* a kid given must agree with the file's */
    CHECK_OK(byok_import_key_parse((const uint8_t *)text, len, &ik));
    CHECK_OK(byok_file_kid(&ik, kid, &k_out));
    CHECK_ERR(byok_file_kid(&ik, "hsmvault:subscriptions/sub-2/import-keys/1", &k_out),
              KV_ERR_INVALID_ARGUMENT);
    byok_import_key_free(&ik);

    /* negatives */
    IK_REFUSED("", "at most");
    IK_REFUSED("# kid: x\n", "no PEM public key");
    IK_REFUSED("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "no PEM public key");
    snprintf(buf, sizeof(buf), "# bits: 2048\n%s", pem);
    IK_REFUSED(buf, "says 2048 bits but its key has 3072");
    snprintf(buf, sizeof(buf), "# bits: lots\n%s", pem);
    IK_REFUSED(buf, "'bits' line is not a size");
    snprintf(buf, sizeof(buf), "# bits: 1024\n%s", pem);
    IK_REFUSED(buf, "'bits' line is not a size");
    snprintf(buf, sizeof(buf), "# kid: a b\n%s", pem);
    IK_REFUSED(buf, "characters a key id cannot have");
    snprintf(buf, sizeof(buf), "# kid: \x01x\n%s", pem);
    IK_REFUSED(buf, "characters a key id cannot have");
    char long_kid[KV_BYOK_KID_MAX + 2];
    memset(long_kid, 'a', sizeof(long_kid) - 1);
    long_kid[sizeof(long_kid) - 1] = '\0';
    snprintf(buf, sizeof(buf), "# kid: %s\n%s", long_kid, pem);
    IK_REFUSED(buf, "longer than");
    snprintf(buf, sizeof(buf), "# subscription: %s\n%s",
             "s0123456789012345678901234567890123456789012345678901234567890123456789", pem);
    IK_REFUSED(buf, "longer than");
    IK_REFUSED(small_pem, "RSA-1024");
    IK_REFUSED(ec_pem, "not an RSA key");
    /* a private key is not an import key file */
    size_t klen = 0;
    char *priv = kv_testkey_file(k, "pkcs8", NULL, &klen);
    IK_REFUSED(priv, "no PEM public key");
    free(priv);
    /* over the size limit */
    char *big = malloc(BYOK_IMPORT_KEY_FILE_MAX + 2);
    memset(big, '#', BYOK_IMPORT_KEY_FILE_MAX + 1);
    big[BYOK_IMPORT_KEY_FILE_MAX + 1] = '\0';
    IK_REFUSED(big, "at most");
    free(big);

    free(text);
    free(pem);
    free(small_pem);
    free(ec_pem);
    EVP_PKEY_free(k);
    EVP_PKEY_free(small);
    EVP_PKEY_free(ec);
}

static void test_key_load(void)
{
    EVP_PKEY *k = kv_testkey_gen("RSA", 2048), *ec = kv_testkey_gen("EC", 0);
    kv_secret want = KV_SECRET_INIT, pw = KV_SECRET_INIT, wrong = KV_SECRET_INIT;
    kv_testkey_pkcs8(k, &want);
    CHECK_OK(kv_secret_from(&pw, "key file password", 17));
    CHECK_OK(kv_secret_from(&wrong, "not the password", 16));
    static const char *const forms[] = {"pkcs8", "traditional", "der", "encrypted"};
    for (size_t i = 0; i < KV_ARRAY_LEN(forms); i++) {
        size_t len = 0;
        char *f = kv_testkey_file(k, forms[i], "key file password", &len);
        kv_secret got = KV_SECRET_INIT;
        unsigned bits = 0;
        CHECK_OK(byok_key_load((const uint8_t *)f, len, i == 3 ? &pw : NULL, &got, &bits));
        CHECK(bits == 2048 && got.len == want.len && memcmp(got.data, want.data, want.len) == 0);
        kv_secret_free(&got);
        if (i == 3) {
            CHECK_ERR(byok_key_load((const uint8_t *)f, len, NULL, &got, &bits),
                      KV_ERR_INVALID_ARGUMENT);
            CHECK(strstr(kv_error_msg(), "encrypted: give its password") != NULL);
            CHECK_ERR(byok_key_load((const uint8_t *)f, len, &wrong, &got, &bits),
                      KV_ERR_INVALID_ARGUMENT);
            CHECK(strstr(kv_error_msg(), "does not open with this password") != NULL);
            CHECK(strstr(kv_error_msg(), "not the password") == NULL);
        }
        if (i == 2) { /* DER with a trailing byte */
            char *g = malloc(len + 1);
            memcpy(g, f, len);
            g[len] = 0;
            CHECK_ERR(byok_key_load((const uint8_t *)g, len + 1, NULL, &got, &bits),
                      KV_ERR_INVALID_ARGUMENT);
            free(g);
        }
        free(f);
    }
    /* an EC key loads but says it is not RSA */
    size_t len = 0;
    char *f = kv_testkey_file(ec, "pkcs8", NULL, &len);
    kv_secret got = KV_SECRET_INIT;
    unsigned bits = 99;
    CHECK_OK(byok_key_load((const uint8_t *)f, len, NULL, &got, &bits));
    CHECK(bits == 0);
    kv_secret_free(&got);
    free(f);
    /* not a key; empty; a public key */
    CHECK_ERR(byok_key_load((const uint8_t *)"hello", 5, NULL, &got, &bits),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "not a private key") != NULL);
    CHECK_ERR(byok_key_load((const uint8_t *)"", 0, NULL, &got, &bits), KV_ERR_INVALID_ARGUMENT);
    char *pem = kv_testkey_pub_pem(k);
    CHECK_ERR(byok_key_load((const uint8_t *)pem, strlen(pem), NULL, &got, &bits),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(got.data == NULL);
    free(pem);
    kv_secret_free(&want);
    kv_secret_free(&pw);
    kv_secret_free(&wrong);
    EVP_PKEY_free(k);
    EVP_PKEY_free(ec);
}

/* Opens a .byok file with the import key's private half, as the vault's
 * token would: the PKCS#8 inside must be want. */
static bool opens_to(EVP_PKEY *import_priv, const char *json, size_t len, const kv_secret *want,
                     kv_byok_hash hash)
{
    kv_byok b;
    if (kv_failed(kv_byok_parse((const uint8_t *)json, len, &b))) return false;
    size_t k = (size_t)EVP_PKEY_get_size(import_priv);
    const uint8_t *rsa = NULL, *kwp = NULL;
    size_t kwp_len = 0;
    bool ok = b.oaep_hash == hash && kv_ok(kv_byok_split(&b, k, &rsa, &kwp, &kwp_len));
    uint8_t aes[512], out[8192];
    size_t aes_len = sizeof(aes);
    int n = 0, m = 0;
    const EVP_MD *md = hash == KV_BYOK_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(import_priv, NULL);
    ok = ok && c != NULL && EVP_PKEY_decrypt_init(c) == 1 &&
         EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) == 1 &&
         EVP_PKEY_CTX_set_rsa_oaep_md(c, md) == 1 && EVP_PKEY_CTX_set_rsa_mgf1_md(c, md) == 1 &&
         EVP_PKEY_decrypt(c, aes, &aes_len, rsa, k) == 1 && aes_len == 32;
    EVP_PKEY_CTX_free(c);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX_set_flags(x, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    ok = ok && EVP_DecryptInit_ex(x, EVP_aes_256_wrap_pad(), NULL, aes, NULL) == 1 &&
         EVP_DecryptUpdate(x, out, &n, kwp, (int)kwp_len) == 1 &&
         EVP_DecryptFinal_ex(x, out + n, &m) == 1;
    EVP_CIPHER_CTX_free(x);
    ok = ok && (size_t)(n + m) == want->len && memcmp(out, want->data, want->len) == 0;
    kv_byok_free(&b);
    return ok;
}

static void test_file_from_key(void)
{
    EVP_PKEY *ik_priv = kv_testkey_gen("RSA", 2048), *tenant = kv_testkey_gen("RSA", 2048);
    EVP_PKEY *rsa3072 = kv_testkey_gen("RSA", 3072), *ec = kv_testkey_gen("EC", 0);
    char *pem = kv_testkey_pub_pem(ik_priv), *text = NULL;
    size_t len = 0;
    const char *kid = "hsmvault:subscriptions/sub-9/import-keys/1";
    CHECK_OK(byok_import_key_format(kid, "sub-9", 2048, pem, &text, &len));
    byok_import_key ik;
    CHECK_OK(byok_import_key_parse((const uint8_t *)text, len, &ik));
    kv_secret want = KV_SECRET_INIT, pw = KV_SECRET_INIT;
    kv_testkey_pkcs8(tenant, &want);
    CHECK_OK(kv_secret_from(&pw, "pw of the key", 13));

    for (int h = KV_BYOK_OAEP_SHA1; h <= KV_BYOK_OAEP_SHA256; h++) {
        size_t flen = 0, jlen = 0;
        char *f = kv_testkey_file(tenant, h == KV_BYOK_OAEP_SHA1 ? "encrypted" : "traditional",
                                  "pw of the key", &flen);
        char *json = NULL;
        CHECK_OK(byok_file_from_key(&ik, NULL, (kv_byok_hash)h, (const uint8_t *)f, flen,
                                    h == KV_BYOK_OAEP_SHA1 ? &pw : NULL, &json, &jlen));
        CHECK(json != NULL && strstr(json, kid) != NULL && strstr(json, "OpenSSL") != NULL);
        CHECK(opens_to(ik_priv, json, jlen, &want, (kv_byok_hash)h));
        /* nothing of the key in the clear in the file */
        CHECK(strstr(json, "PRIVATE") == NULL);
        free(json);
        free(f);
    }
    /* refused: not RSA-2048 (seed 001), not a key, a kid that disagrees */
    size_t flen = 0, jlen = 0;
    char *json = NULL;
    char *f = kv_testkey_file(rsa3072, "pkcs8", NULL, &flen);
    CHECK_ERR(byok_file_from_key(&ik, NULL, KV_BYOK_OAEP_SHA1, (const uint8_t *)f, flen, NULL,
                                 &json, &jlen),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "RSA-3072") != NULL && json == NULL);
    free(f);
    f = kv_testkey_file(ec, "pkcs8", NULL, &flen);
    CHECK_ERR(byok_file_from_key(&ik, NULL, KV_BYOK_OAEP_SHA1, (const uint8_t *)f, flen, NULL,
                                 &json, &jlen),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "not an RSA key") != NULL && json == NULL);
    free(f);
    CHECK_ERR(byok_file_from_key(&ik, NULL, KV_BYOK_OAEP_SHA1, (const uint8_t *)"junk", 4, NULL,
                                 &json, &jlen),
              KV_ERR_INVALID_ARGUMENT);
    f = kv_testkey_file(tenant, "pkcs8", NULL, &flen);
    CHECK_ERR(byok_file_from_key(&ik, "hsmvault:subscriptions/other/import-keys/1",
                                 KV_BYOK_OAEP_SHA1, (const uint8_t *)f, flen, NULL, &json, &jlen),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(json == NULL);
    free(f);

    byok_import_key_free(&ik);
    kv_secret_free(&want);
    kv_secret_free(&pw);
    free(text);
    free(pem);
    EVP_PKEY_free(ik_priv);
    EVP_PKEY_free(tenant);
    EVP_PKEY_free(rsa3072);
    EVP_PKEY_free(ec);
}

/* The admin's own token: keygen, wrap with C_WrapKey, and what is refused. */
static void test_file_from_token(void)
{
    kv_softhsm fx;
    CHECK_OK(kv_softhsm_setup(dir, "admin-hsm", &fx));
    kv_secret pin = KV_SECRET_INIT, bad_pin = KV_SECRET_INIT;
    CHECK_OK(kv_secret_from(&pin, KV_SOFTHSM_USER_PIN, strlen(KV_SOFTHSM_USER_PIN)));
    CHECK_OK(kv_secret_from(&bad_pin, "not-the-pin", 11));
    byok_token tok = {fx.module_path, fx.label, "tenant-key", &pin};

    uint8_t *spki = NULL;
    size_t spki_len = 0;
    CHECK_OK(byok_token_keygen(&tok, 2048, &spki, &spki_len));
    uint8_t *again = NULL;
    size_t again_len = 0;
    CHECK_ERR(byok_token_keygen(&tok, 2048, &again, &again_len), KV_ERR_ALREADY_EXISTS);
    CHECK_ERR(byok_token_keygen(&tok, 1024, &again, &again_len), KV_ERR_INVALID_ARGUMENT);
    byok_token big = {fx.module_path, fx.label, "big-key", &pin};
    CHECK_OK(byok_token_keygen(&big, 3072, &again, &again_len));
    free(again);

    EVP_PKEY *ik_priv = kv_testkey_gen("RSA", 4096);
    char *pem = kv_testkey_pub_pem(ik_priv), *text = NULL, *json = NULL;
    size_t len = 0, jlen = 0;
    CHECK_OK(byok_import_key_format("hsmvault:subscriptions/s/import-keys/3", "s", 4096, pem, &text,
                                    &len));
    byok_import_key ik;
    CHECK_OK(byok_import_key_parse((const uint8_t *)text, len, &ik));
    CHECK_OK(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &tok, &json, &jlen));
    CHECK(json != NULL && strstr(json, "PKCS#11 token 'admin-hsm'") != NULL);
    /* it opens to the token key's public half */
    kv_byok b;
    CHECK_OK(kv_byok_parse((const uint8_t *)json, jlen, &b));
    CHECK(b.ciphertext_len > 512 && (b.ciphertext_len - 512) % 8 == 0);
    kv_byok_free(&b);
    free(json);
    json = NULL;

    /* refused: a key that is not RSA-2048, an unknown label, a wrong PIN, a
     * module named by a relative path or missing, SHA-256 on SoftHSM 2.6.1 */
    CHECK_ERR(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &big, &json, &jlen),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "RSA-3072") != NULL);
    byok_token unknown = {fx.module_path, fx.label, "no-such-key", &pin};
    CHECK_ERR(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &unknown, &json, &jlen),
              KV_ERR_NOT_FOUND);
    byok_token wrong = {fx.module_path, fx.label, "tenant-key", &bad_pin};
    CHECK_ERR(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &wrong, &json, &jlen),
              KV_ERR_PERMISSION_DENIED);
    CHECK(strstr(kv_error_msg(), "not-the-pin") == NULL);
    byok_token rel = {"libsofthsm2.so", fx.label, "tenant-key", &pin};
    CHECK_ERR(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &rel, &json, &jlen),
              KV_ERR_INVALID_ARGUMENT);
    byok_token missing = {"/nonexistent/libpkcs11.so", fx.label, "tenant-key", &pin};
    CHECK_ERR(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &missing, &json, &jlen),
              KV_ERR_NOT_FOUND);
    byok_token other = {fx.module_path, "no-such-token", "tenant-key", &pin};
    CHECK(kv_failed(byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA1, &other, &json, &jlen)));
    kv_result r = byok_file_from_token(&ik, NULL, KV_BYOK_OAEP_SHA256, &tok, &json, &jlen);
    if (kv_failed(r)) { /* SoftHSM 2.6.1: OAEP is SHA-1 only */
        CHECK(kv_error_code() == KV_ERR_FAILED_PRECONDITION);
    } else {
        free(json);
    }
    CHECK(json == NULL || kv_ok(r));

    /* the admin's token holds its two key pairs and nothing else (no
     * session AES key or import public key stayed) */
    hsm_config cfg = {.module_path = fx.module_path, .token_label = fx.label, .sessions = 1};
    hsm *h = NULL;
    CHECK_OK(hsm_open_pin(&cfg, &pin, &h));
    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(h, &objs, &n));
    CHECK(n == 4);
    for (size_t i = 0; i < n; i++)
        if (strcmp(objs[i].object_class, "private-key") == 0)
            CHECK(objs[i].sensitive && objs[i].extractable);
    free(objs);
    hsm_close(h);

    byok_import_key_free(&ik);
    kv_secret_free(&pin);
    kv_secret_free(&bad_pin);
    free(text);
    free(pem);
    free(spki);
    EVP_PKEY_free(ik_priv);
}

int main(void)
{
    kv_test_tmpdir(dir, sizeof(dir), "byok-file");
    RUN(test_import_key_file);
    RUN(test_key_load);
    RUN(test_file_from_key);
    RUN(test_file_from_token);
    int rc = kv_test_finish();
    if (rc == 0) kv_test_rmtree(dir);
    return rc;
}
