/*
 * test_hsm.c: unit tests for hsm/ against a real SoftHSM token in a temporary
 * directory (no PKCS#11 mocks): token init, open errors, mechanism probing,
 * RSA generate/import, OAEP decrypt, key attributes, destroy, the session
 * pool under threads, and persistence across close/reopen.
 * Must never depend on a token outside its temporary directory.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "hsm.h"
#include "kv_softhsm.h"
#include "kv_test.h"

static kv_softhsm fx; /* the token most tests use */

static hsm_config fx_config(unsigned sessions)
{
    return (hsm_config){fx.module_path, fx.label, fx.pin_file, sessions};
}

static hsm *fx_open(unsigned sessions)
{
    hsm_config cfg = fx_config(sessions);
    hsm *h = NULL;
    CHECK_OK(hsm_open(&cfg, &h));
    return h;
}

/* RSA-OAEP encryption in software, as the vault wraps DEKs. */
static bool oaep_encrypt(const uint8_t *spki, size_t spki_len, hsm_oaep_hash hash,
                         const uint8_t *msg, size_t msg_len, uint8_t *ct, size_t *ct_len)
{
    const unsigned char *p = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (pkey == NULL) return false;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
    const EVP_MD *md = hash == HSM_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();
    bool ok = ctx != NULL && EVP_PKEY_encrypt_init(ctx) == 1 &&
              EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
              EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) == 1 &&
              EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) == 1 &&
              EVP_PKEY_encrypt(ctx, ct, ct_len, msg, msg_len) == 1;
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return ok;
}

static bool spki_is_rsa(const uint8_t *spki, size_t len, int bits)
{
    const unsigned char *p = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)len);
    bool ok = pkey != NULL && p == spki + len && EVP_PKEY_is_a(pkey, "RSA") &&
              EVP_PKEY_get_bits(pkey) == bits;
    EVP_PKEY_free(pkey);
    return ok;
}

/* Encrypts 32 bytes to the key and checks the token decrypts them back. */
static void check_round_trip(hsm *h, const hsm_key_id *id, const uint8_t *spki, size_t spki_len,
                             hsm_oaep_hash hash)
{
    uint8_t msg[32], ct[512];
    size_t ct_len = sizeof(ct);
    CHECK_OK(hsm_random(h, msg, sizeof(msg)));
    CHECK(oaep_encrypt(spki, spki_len, hash, msg, sizeof(msg), ct, &ct_len));
    kv_secret pt = KV_SECRET_INIT;
    CHECK_OK(hsm_rsa_decrypt_oaep(h, id, hash, ct, ct_len, &pt));
    CHECK(pt.len == sizeof(msg) && kv_ct_equal(pt.data, msg, sizeof(msg)));
    kv_secret_free(&pt);
}

/* hsm_token_init on a directory with no token yet; runs while no other handle
 * is open so SoftHSM reads this directory's config. */
static void test_token_init(void)
{
    char dir[256];
    kv_softhsm t;
    kv_test_tmpdir(dir, sizeof(dir), "hsm-init");
    CHECK_OK(kv_softhsm_configure(dir, &t));
    kv_secret so = KV_SECRET_INIT, user = KV_SECRET_INIT;
    CHECK_OK(kv_secret_from(&so, "so-pin-1234", 11));
    CHECK_OK(kv_secret_from(&user, "user-pin-1234", 13));

    CHECK_OK(hsm_token_init(t.module_path, "fresh", &so, &user));
    CHECK_ERR(hsm_token_init(t.module_path, "fresh", &so, &user), KV_ERR_ALREADY_EXISTS);
    CHECK(strstr(kv_error_msg(), "fresh") != NULL);
    /* SoftHSM offers a new free slot after each init. */
    CHECK_OK(hsm_token_init(t.module_path, "second", &so, &user));
    CHECK_ERR(hsm_token_init(t.module_path, "", &so, &user), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(hsm_token_init(t.module_path, "a-label-that-is-longer-than-32-bytes", &so, &user),
              KV_ERR_INVALID_ARGUMENT);

    /* The user PIN set by C_InitPIN opens the token. */
    CHECK_OK(kv_softhsm_write_pin(t.pin_file, "user-pin-1234"));
    hsm_config cfg = {t.module_path, "fresh", t.pin_file, 1};
    hsm *h = NULL;
    CHECK_OK(hsm_open(&cfg, &h));
    CHECK(h != NULL && hsm_session_count(h) == 1);
    /* token_init while a handle is open shares the initialized module. */
    CHECK_ERR(hsm_token_init(t.module_path, "second", &so, &user), KV_ERR_ALREADY_EXISTS);
    hsm_close(h);

    kv_secret_free(&so);
    kv_secret_free(&user);
    kv_test_rmtree(dir);
}

static void test_open_errors(void)
{
    hsm_config cfg = fx_config(1);
    hsm *h = NULL;
    char bad_pin[512];
    snprintf(bad_pin, sizeof(bad_pin), "%s/wrong-pin", fx.dir);
    CHECK_OK(kv_softhsm_write_pin(bad_pin, "not-the-pin"));
    cfg.pin_file = bad_pin;
    CHECK_ERR(hsm_open(&cfg, &h), KV_ERR_PERMISSION_DENIED);
    CHECK(strstr(kv_error_msg(), bad_pin) != NULL);
    CHECK(strstr(kv_error_msg(), "not-the-pin") == NULL);
    CHECK(strstr(kv_error_detail_str(), "CKR_PIN_INCORRECT") != NULL);
    CHECK(h == NULL);

    cfg = fx_config(1);
    cfg.token_label = "no-such-token";
    CHECK_ERR(hsm_open(&cfg, &h), KV_ERR_NOT_FOUND);
    CHECK(strstr(kv_error_msg(), "no-such-token") != NULL);
    CHECK(strstr(kv_error_msg(), "'unit'") != NULL); /* lists the labels found */

    cfg = fx_config(1);
    cfg.module_path = "/nonexistent/libpkcs11.so";
    CHECK_ERR(hsm_open(&cfg, &h), KV_ERR_UNAVAILABLE);
    cfg.module_path = "relative/lib.so";
    CHECK_ERR(hsm_open(&cfg, &h), KV_ERR_INVALID_ARGUMENT);

    cfg = fx_config(1);
    cfg.pin_file = "/nonexistent/pin";
    CHECK_ERR(hsm_open(&cfg, &h), KV_ERR_NOT_FOUND);
    cfg = fx_config(1000);
    CHECK_ERR(hsm_open(&cfg, &h), KV_ERR_INVALID_ARGUMENT);
    CHECK(h == NULL);
}

static void test_mechanisms(void)
{
    hsm *h = fx_open(0);
    if (h == NULL) return;
    CHECK(hsm_session_count(h) == 4); /* 0 means 4 */
    CHECK(hsm_supports_oaep(h, HSM_OAEP_SHA1));
    CHECK(hsm_supports_aes_key_wrap_pad(h));
    bool sha256 = hsm_supports_oaep(h, HSM_OAEP_SHA256);
    CHECK(hsm_supports_oaep(h, HSM_OAEP_SHA256) == sha256); /* cached, stable */
    fprintf(stderr, "   token: OAEP-SHA256 %s, RSA-AES key wrap %s\n", sha256 ? "yes" : "no",
            hsm_supports_rsa_aes_key_wrap(h) ? "yes" : "no");

    /* The probe agrees with what decryption does. */
    hsm_key_id id;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    CHECK_OK(hsm_rsa_generate(h, "probe-check", 2048, &id, &spki, &spki_len));
    if (sha256) {
        check_round_trip(h, &id, spki, spki_len, HSM_OAEP_SHA256);
    } else {
        uint8_t msg[32] = {1}, ct[512];
        size_t ct_len = sizeof(ct);
        CHECK(oaep_encrypt(spki, spki_len, HSM_OAEP_SHA256, msg, sizeof(msg), ct, &ct_len));
        kv_secret pt = KV_SECRET_INIT;
        CHECK_ERR(hsm_rsa_decrypt_oaep(h, &id, HSM_OAEP_SHA256, ct, ct_len, &pt),
                  KV_ERR_UNIMPLEMENTED);
        CHECK(pt.data == NULL);
        /* The session that failed is still good for SHA-1. */
        check_round_trip(h, &id, spki, spki_len, HSM_OAEP_SHA1);
    }
    CHECK_OK(hsm_key_destroy(h, &id));
    free(spki);
    hsm_close(h);
}

static hsm_key_id gen_id;      /* generated in test_generate, used later */
static uint8_t *gen_spki;      /* its SPKI */
static size_t gen_spki_len;

static void test_generate_decrypt(void)
{
    hsm *h = fx_open(2);
    if (h == NULL) return;
    CHECK_ERR(hsm_rsa_generate(h, "small", 1024, &gen_id, &gen_spki, &gen_spki_len),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_OK(hsm_rsa_generate(h, "tenant-key-1", 2048, &gen_id, &gen_spki, &gen_spki_len));
    CHECK(gen_spki != NULL && spki_is_rsa(gen_spki, gen_spki_len, 2048));
    bool exists = false;
    CHECK_OK(hsm_key_exists(h, &gen_id, &exists));
    CHECK(exists);

    check_round_trip(h, &gen_id, gen_spki, gen_spki_len, HSM_OAEP_SHA1);

    uint8_t msg[32], ct[512];
    size_t ct_len = sizeof(ct);
    memset(msg, 0xa5, sizeof(msg));
    CHECK(oaep_encrypt(gen_spki, gen_spki_len, HSM_OAEP_SHA1, msg, sizeof(msg), ct, &ct_len));
    CHECK(ct_len == 256);
    kv_secret pt = KV_SECRET_INIT;
    ct[100] ^= 0x01; /* flipped bit */
    CHECK_ERR(hsm_rsa_decrypt_oaep(h, &gen_id, HSM_OAEP_SHA1, ct, ct_len, &pt), KV_ERR_DATA_LOSS);
    CHECK(pt.data == NULL);
    ct[100] ^= 0x01;
    CHECK_ERR(hsm_rsa_decrypt_oaep(h, &gen_id, HSM_OAEP_SHA1, ct, ct_len - 1, &pt),
              KV_ERR_DATA_LOSS);
    CHECK_ERR(hsm_rsa_decrypt_oaep(h, &gen_id, HSM_OAEP_SHA1, ct, 0, &pt),
              KV_ERR_INVALID_ARGUMENT);
    /* After the failures every pooled session still works. */
    for (int i = 0; i < 3; i++) {
        CHECK_OK(hsm_rsa_decrypt_oaep(h, &gen_id, HSM_OAEP_SHA1, ct, ct_len, &pt));
        CHECK(pt.len == sizeof(msg) && kv_ct_equal(pt.data, msg, sizeof(msg)));
        kv_secret_free(&pt);
    }

    hsm_key_id missing;
    CHECK_OK(hsm_key_id_new(h, &missing));
    CHECK_OK(hsm_key_exists(h, &missing, &exists));
    CHECK(!exists);
    CHECK_ERR(hsm_rsa_decrypt_oaep(h, &missing, HSM_OAEP_SHA1, ct, ct_len, &pt),
              KV_ERR_NOT_FOUND);
    char hex[2 * HSM_KEY_ID_LEN + 1];
    hsm_key_id_hex(&missing, hex);
    CHECK(strstr(kv_error_msg(), hex) != NULL);
    hsm_close(h);
}

static kv_result pkcs8_of(EVP_PKEY *pkey, kv_secret *out)
{
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(pkey);
    unsigned char *der = NULL;
    int len = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &der) : -1;
    PKCS8_PRIV_KEY_INFO_free(p8);
    KV_ENSURE(len > 0, KV_ERR_INTERNAL, "cannot encode PKCS#8");
    kv_result r = kv_secret_from(out, der, (size_t)len);
    OPENSSL_clear_free(der, (size_t)len);
    return r;
}

static hsm_key_id imp_id;

static void test_import(void)
{
    hsm *h = fx_open(2);
    if (h == NULL) return;
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    CHECK(pkey != NULL);
    kv_secret der = KV_SECRET_INIT;
    CHECK_OK(pkcs8_of(pkey, &der));
    uint8_t *spki = NULL, *want = NULL;
    size_t spki_len = 0;
    CHECK_OK(hsm_rsa_import_pkcs8(h, "imported-1", &der, &imp_id, &spki, &spki_len));
    int want_len = i2d_PUBKEY(pkey, &want);
    CHECK(want_len > 0 && (size_t)want_len == spki_len && memcmp(want, spki, spki_len) == 0);
    check_round_trip(h, &imp_id, spki, spki_len, HSM_OAEP_SHA1);

    /* Negative inputs: truncated, trailing byte, garbage, wrong key type,
     * too small.  None may leave an object behind. */
    size_t before = 0, after = 0;
    hsm_object_info *objs = NULL;
    CHECK_OK(hsm_objects_list(h, &objs, &before));
    free(objs);
    hsm_key_id id;
    uint8_t *s2 = NULL;
    size_t s2_len = 0;
    kv_secret bad = KV_SECRET_INIT;
    CHECK_OK(kv_secret_from(&bad, der.data, der.len - 1));
    CHECK_ERR(hsm_rsa_import_pkcs8(h, "x", &bad, &id, &s2, &s2_len), KV_ERR_INVALID_ARGUMENT);
    kv_secret_free(&bad);
    CHECK_OK(kv_secret_alloc(&bad, der.len + 1));
    CHECK_OK(kv_secret_set(&bad, der.data, der.len));
    bad.data[bad.len++] = 0;
    CHECK_ERR(hsm_rsa_import_pkcs8(h, "x", &bad, &id, &s2, &s2_len), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "trailing") != NULL);
    kv_secret_free(&bad);
    CHECK_OK(kv_secret_from(&bad, "\x30\x03\x02\x01\x00", 5));
    CHECK_ERR(hsm_rsa_import_pkcs8(h, "x", &bad, &id, &s2, &s2_len), KV_ERR_INVALID_ARGUMENT);
    kv_secret_free(&bad);
    CHECK_ERR(hsm_rsa_import_pkcs8(h, "x", &bad, &id, &s2, &s2_len), KV_ERR_INVALID_ARGUMENT);

    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CHECK(ec != NULL && kv_ok(pkcs8_of(ec, &bad)));
    CHECK_ERR(hsm_rsa_import_pkcs8(h, "x", &bad, &id, &s2, &s2_len), KV_ERR_INVALID_ARGUMENT);
    kv_secret_free(&bad);
    EVP_PKEY_free(ec);
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    CHECK(small != NULL && kv_ok(pkcs8_of(small, &bad)));
    CHECK_ERR(hsm_rsa_import_pkcs8(h, "x", &bad, &id, &s2, &s2_len), KV_ERR_INVALID_ARGUMENT);
    kv_secret_free(&bad);
    EVP_PKEY_free(small);
    CHECK(s2 == NULL);
    CHECK_OK(hsm_objects_list(h, &objs, &after));
    free(objs);
    CHECK(after == before);

    OPENSSL_free(want);
    free(spki);
    kv_secret_free(&der);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    hsm_close(h);
}

static bool id_is(const hsm_object_info *o, const hsm_key_id *id)
{
    return o->id_len == HSM_KEY_ID_LEN && memcmp(o->id, id->bytes, HSM_KEY_ID_LEN) == 0;
}

static void test_objects_list(void)
{
    hsm *h = fx_open(1);
    if (h == NULL) return;
    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(h, &objs, &n));
    int privs = 0, gen_seen = 0, imp_seen = 0;
    for (size_t i = 0; i < n; i++) {
        const hsm_object_info *o = &objs[i];
        if (strcmp(o->object_class, "private-key") == 0) {
            privs++;
            CHECK(o->sensitive && !o->extractable && o->is_private);
            CHECK(o->can_decrypt && o->can_unwrap && !o->can_sign && !o->can_derive);
            CHECK(strcmp(o->key_type, "rsa") == 0 && o->bits >= 2048);
            if (id_is(o, &gen_id)) {
                gen_seen++;
                /* Generated in the token: never left it in the clear. */
                CHECK(o->never_extractable && o->always_sensitive);
                CHECK(strcmp(o->label, "tenant-key-1") == 0 && o->bits == 2048);
            }
            if (id_is(o, &imp_id)) {
                imp_seen++;
                CHECK(strcmp(o->label, "imported-1") == 0);
            }
        } else if (strcmp(o->object_class, "public-key") == 0) {
            CHECK(o->can_encrypt && o->can_wrap && !o->can_verify && o->bits >= 2048);
            if (id_is(o, &gen_id)) gen_seen++;
            if (id_is(o, &imp_id)) imp_seen++;
        }
    }
    CHECK(privs >= 2);
    CHECK(gen_seen == 2 && imp_seen == 2);
    free(objs);
    hsm_close(h);
}

static void test_destroy(void)
{
    hsm *h = fx_open(1);
    if (h == NULL) return;
    bool exists = true;
    CHECK_OK(hsm_key_exists(h, &imp_id, &exists));
    CHECK(exists);
    CHECK_OK(hsm_key_destroy(h, &imp_id));
    CHECK_OK(hsm_key_exists(h, &imp_id, &exists));
    CHECK(!exists);
    uint8_t ct[256] = {1};
    kv_secret pt = KV_SECRET_INIT;
    CHECK_ERR(hsm_rsa_decrypt_oaep(h, &imp_id, HSM_OAEP_SHA1, ct, sizeof(ct), &pt),
              KV_ERR_NOT_FOUND);
    CHECK_OK(hsm_key_destroy(h, &imp_id)); /* idempotent */

    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(h, &objs, &n));
    for (size_t i = 0; i < n; i++)
        CHECK(!id_is(&objs[i], &imp_id)); /* public key gone too */
    free(objs);
    hsm_close(h);
}

static void test_random(void)
{
    hsm *h = fx_open(1);
    if (h == NULL) return;
    uint8_t a[32], b[32];
    CHECK_OK(hsm_random(h, a, sizeof(a)));
    CHECK_OK(hsm_random(h, b, sizeof(b)));
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    CHECK_OK(hsm_random(h, a, 0));
    hsm_key_id x, y;
    CHECK_OK(hsm_key_id_new(h, &x));
    CHECK_OK(hsm_key_id_new(h, &y));
    CHECK(memcmp(x.bytes, y.bytes, HSM_KEY_ID_LEN) != 0);
    hsm_key_id fixed = {{0x00, 0x01, 0xab, 0xff}};
    char hex[2 * HSM_KEY_ID_LEN + 1];
    hsm_key_id_hex(&fixed, hex);
    CHECK(strcmp(hex, "0001abff000000000000000000000000") == 0);
    hsm_close(h);
}

typedef struct {
    hsm *h;
    const uint8_t *ct;
    size_t ct_len;
    const uint8_t *msg;
    int ok;
} decrypt_job;

#define THREAD_ROUNDS 25

static void *decrypt_worker(void *arg)
{
    decrypt_job *j = arg;
    for (int i = 0; i < THREAD_ROUNDS; i++) {
        kv_secret pt = KV_SECRET_INIT;
        if (kv_ok(hsm_rsa_decrypt_oaep(j->h, &gen_id, HSM_OAEP_SHA1, j->ct, j->ct_len, &pt)) &&
            pt.len == 32 && kv_ct_equal(pt.data, j->msg, 32))
            j->ok++;
        kv_secret_free(&pt);
    }
    return NULL;
}

static void test_threads(void)
{
    hsm *h = fx_open(2);
    if (h == NULL) return;
    CHECK(hsm_session_count(h) == 2);
    uint8_t msg[32], ct[512];
    size_t ct_len = sizeof(ct);
    memset(msg, 0x3c, sizeof(msg));
    CHECK(oaep_encrypt(gen_spki, gen_spki_len, HSM_OAEP_SHA1, msg, sizeof(msg), ct, &ct_len));
    pthread_t t[4];
    decrypt_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (decrypt_job){h, ct, ct_len, msg, 0};
        CHECK(pthread_create(&t[i], NULL, decrypt_worker, &jobs[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(jobs[i].ok == THREAD_ROUNDS);
    }
    CHECK(hsm_session_count(h) == 2);
    hsm_close(h);
}

/* Two handles on one token in one process share the module and the login;
 * closing one leaves the other working. */
static void test_two_handles(void)
{
    hsm *a = fx_open(1);
    hsm *b = fx_open(1);
    if (a == NULL || b == NULL) {
        hsm_close(a);
        hsm_close(b);
        return;
    }
    hsm_close(a);
    check_round_trip(b, &gen_id, gen_spki, gen_spki_len, HSM_OAEP_SHA1);
    hsm_close(b);
}

static void test_reopen(void)
{
    /* Every handle is closed here: the module is finalized and reloaded. */
    hsm *h = fx_open(1);
    if (h == NULL) return;
    bool exists = false;
    CHECK_OK(hsm_key_exists(h, &gen_id, &exists));
    CHECK(exists);
    check_round_trip(h, &gen_id, gen_spki, gen_spki_len, HSM_OAEP_SHA1);
    CHECK_OK(hsm_key_destroy(h, &gen_id));
    hsm_close(h);
}

int main(void)
{
    RUN(test_token_init);

    char dir[256];
    kv_test_tmpdir(dir, sizeof(dir), "hsm-unit");
    kv_result r = kv_softhsm_setup(dir, "unit", &fx);
    CHECK_OK(r);
    if (kv_ok(r)) {
        RUN(test_open_errors);
        RUN(test_mechanisms);
        RUN(test_generate_decrypt);
        RUN(test_import);
        RUN(test_objects_list);
        RUN(test_destroy);
        RUN(test_random);
        RUN(test_threads);
        RUN(test_two_handles);
        RUN(test_reopen);
    }
    free(gen_spki);
    kv_test_rmtree(dir);
    return kv_test_finish();
}
