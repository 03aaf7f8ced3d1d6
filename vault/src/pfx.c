/*
 * pfx.c: PKCS#12 parsing and generation, RSA key checks, fingerprints and
 * software OAEP, with OpenSSL 3 (see pfx.h).
 *
 * Legacy PFX files (3DES / RC2-40, `openssl pkcs12 -export -legacy`) need the
 * legacy provider.  PKCS12_parse decrypts with the default library context,
 * so the legacy and default providers are loaded into it once; the legacy
 * provider only adds algorithms, and vaultd never chooses them for output.
 *
 * PBKDF2 iteration count for generated files: PFX_ITERATIONS below.  OpenSSL's
 * default (2048) is low for a file that leaves the vault; 100000 rounds of
 * HMAC-SHA256 cost ~40 ms here, paid once per key generation.
 */
#include "pfx.h"

#include "ossl.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PFX_ITERATIONS 100000
#define PFX_RSA_BITS 2048

static pthread_once_t providers_once = PTHREAD_ONCE_INIT;
static OSSL_PROVIDER *provider_legacy, *provider_default;
static int legacy_loaded;

static void providers_unload(void)
{
    if (provider_legacy != NULL) OSSL_PROVIDER_unload(provider_legacy);
    if (provider_default != NULL) OSSL_PROVIDER_unload(provider_default);
    provider_legacy = provider_default = NULL;
}

static void providers_load(void)
{
    /* Loading "legacy" explicitly stops the implicit default load: load both.
     * Unloaded at exit (before OpenSSL's own clean-up, registered earlier). */
    provider_legacy = OSSL_PROVIDER_load(NULL, "legacy");
    provider_default = OSSL_PROVIDER_load(NULL, "default");
    legacy_loaded = provider_legacy != NULL;
    atexit(providers_unload);
    ERR_clear_error();
}

/* The password as a NUL-terminated copy in a kv_secret. */
static kv_result password_cstr(const kv_secret *pw, kv_secret *out)
{
    size_t n = pw != NULL ? pw->len : 0;
    KV_ENSURE(n == 0 || memchr(pw->data, '\0', n) == NULL, KV_ERR_INVALID_ARGUMENT,
              "the password contains a NUL byte");
    KV_GUARD(kv_secret_alloc(out, n + 1));
    if (n > 0) memcpy(out->data, pw->data, n);
    out->data[n] = '\0';
    out->len = n;
    return KV_SUCCESS;
}

/* "RSA-1024", "EC (prime256v1)", "ED25519"... for messages. */
static void key_description(const EVP_PKEY *k, char *out, size_t cap)
{
    int id = EVP_PKEY_get_base_id(k);
    if (id == EVP_PKEY_RSA || id == EVP_PKEY_RSA_PSS) {
        snprintf(out, cap, "an RSA-%d key", EVP_PKEY_get_bits(k));
    } else if (id == EVP_PKEY_EC) {
        char curve[64] = "";
        size_t len = 0;
        if (!EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve),
                                            &len))
            snprintf(curve, sizeof(curve), "unknown curve");
        snprintf(out, cap, "an EC (%s) key", curve);
    } else {
        const char *name = EVP_PKEY_get0_type_name(k);
        snprintf(out, cap, "a %s key", name != NULL ? name : "non-RSA");
    }
    ERR_clear_error();
}

static kv_result check_rsa_2048(const EVP_PKEY *k, const char *where)
{
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA && EVP_PKEY_get_bits(k) == PFX_RSA_BITS)
        return KV_SUCCESS;
    char what[96];
    key_description(k, what, sizeof(what));
    KV_BAIL(KV_ERR_INVALID_ARGUMENT, "%s holds %s; only RSA-2048 keys are accepted", where, what);
}

/* i2d into a malloc'd buffer. */
static kv_result spki_der(EVP_PKEY *k, uint8_t **out, size_t *len)
{
    int n = i2d_PUBKEY(k, NULL);
    if (n <= 0) return OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the public key");
    uint8_t *buf = malloc((size_t)n), *p = buf;
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (i2d_PUBKEY(k, &p) != n) {
        free(buf);
        return OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the public key");
    }
    *out = buf;
    *len = (size_t)n;
    return KV_SUCCESS;
}

/* PKCS#8 DER of a private key straight into a kv_secret. */
static kv_result pkcs8_der(EVP_PKEY *k, kv_secret *out)
{
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(k);
    if (p8 == NULL) return OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the private key as PKCS#8");
    uint8_t *der = NULL;
    int n = i2d_PKCS8_PRIV_KEY_INFO(p8, &der);
    PKCS8_PRIV_KEY_INFO_free(p8);
    if (n <= 0) return OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the private key as PKCS#8");
    kv_result r = kv_secret_from(out, der, (size_t)n);
    OPENSSL_clear_free(der, (size_t)n);
    return r;
}

kv_result pfx_open(const uint8_t *pfx, size_t pfx_len, const kv_secret *password,
                   kv_secret *pkcs8_out, uint8_t **spki_out, size_t *spki_len)
{
    KV_ENSURE(pfx_len > 0, KV_ERR_INVALID_ARGUMENT, "the PFX file is empty");
    KV_ENSURE(pfx_len <= PFX_MAX_BYTES, KV_ERR_INVALID_ARGUMENT,
              "the PFX file is %zu bytes; the limit is %u bytes", pfx_len, PFX_MAX_BYTES);
    pthread_once(&providers_once, providers_load);
    ERR_clear_error();

    kv_secret pw = KV_SECRET_INIT;
    PKCS12 *p12 = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    STACK_OF(X509) *ca = NULL;
    kv_result r = KV_SUCCESS;

    KV_GUARD(password_cstr(password, &pw));
    const unsigned char *p = pfx;
    p12 = d2i_PKCS12(NULL, &p, (long)pfx_len);
    if (p12 == NULL) {
        r = OSSL_FAIL(
            KV_ERR_INVALID_ARGUMENT,
            "not a PKCS#12 (PFX) file, or a truncated one; export the key and its certificate "
            "as .pfx/.p12");
        goto out;
    }
    /* The MAC is the file's integrity check and how a wrong password is told
     * apart from a damaged file; a file without one is refused (OpenSSL 3.0's
     * PKCS12_parse cannot read one with a password anyway).  Try the empty
     * password both as "" and as NULL (tools encode it either way). */
    KV_ENSURE_GOTO(PKCS12_mac_present(p12), r, out, KV_ERR_INVALID_ARGUMENT,
                   "the PFX has no integrity MAC; export it again with a MAC (without -nomac)");
    {
        int ok = PKCS12_verify_mac(p12, (const char *)pw.data, (int)pw.len);
        if (!ok && pw.len == 0) ok = PKCS12_verify_mac(p12, NULL, 0);
        if (!ok) {
            ERR_clear_error();
            KV_BAIL_GOTO(
                r, out, KV_ERR_INVALID_ARGUMENT,
                "the PFX password is wrong (its integrity check failed); check the password "
                "and upload again");
        }
    }
    if (!PKCS12_parse(p12, (const char *)pw.data, &key, &cert, &ca)) {
        unsigned long e = ERR_peek_last_error();
        if (!legacy_loaded && e != 0 && ERR_GET_REASON(e) == ERR_R_UNSUPPORTED) {
            r = OSSL_FAIL(
                KV_ERR_FAILED_PRECONDITION,
                "the PFX uses a legacy cipher and OpenSSL's legacy provider is not available "
                "here; re-export it with AES (openssl pkcs12 -export without -legacy)");
        } else {
            r = OSSL_FAIL(
                KV_ERR_INVALID_ARGUMENT,
                "the PFX cannot be decrypted: the password is wrong or the file is damaged");
        }
        goto out;
    }
    KV_ENSURE_GOTO(key != NULL, r, out, KV_ERR_INVALID_ARGUMENT,
                   "the PFX holds no private key; export it with the private key included");
    KV_GUARD_GOTO(check_rsa_2048(key, "the PFX"), r, out);
    if (cert != NULL && X509_check_private_key(cert, key) != 1) {
        r = OSSL_FAIL(
            KV_ERR_INVALID_ARGUMENT,
            "the PFX's certificate does not match its private key; export the matching pair");
        goto out;
    }
    KV_GUARD_GOTO(pkcs8_der(key, pkcs8_out), r, out);
    r = spki_der(key, spki_out, spki_len);
    if (kv_failed(r)) kv_secret_free(pkcs8_out);
out:
    EVP_PKEY_free(key);
    X509_free(cert);
    sk_X509_pop_free(ca, X509_free);
    PKCS12_free(p12);
    kv_secret_free(&pw);
    ERR_clear_error();
    return r;
}

/* Subject CN check: printable ASCII, 1..64 characters. */
static kv_result check_common_name(const char *cn)
{
    size_t n = cn != NULL ? strlen(cn) : 0;
    KV_ENSURE(n >= 1 && n <= 64, KV_ERR_INVALID_ARGUMENT,
              "the certificate name must be 1 to 64 characters");
    for (size_t i = 0; i < n; i++)
        KV_ENSURE(cn[i] >= 0x20 && cn[i] < 0x7f, KV_ERR_INVALID_ARGUMENT,
                  "the certificate name must be printable ASCII");
    return KV_SUCCESS;
}

static kv_result self_signed_cert(EVP_PKEY *key, const char *cn, X509 **out)
{
    X509 *x = X509_new();
    KV_ENSURE(x != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    kv_result r = KV_SUCCESS;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, name) || X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 86400 + 2 * 86400) == NULL ||
        !X509_set_pubkey(x, key)) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot build the certificate");
        goto out;
    }
    KV_GUARD_GOTO(ossl_random_serial(x), r, out);
    KV_GUARD_GOTO(ossl_add_ext(x, x, NID_basic_constraints, "critical,CA:FALSE"), r, out);
    KV_GUARD_GOTO(ossl_add_ext(x, x, NID_key_usage, "critical,digitalSignature,keyEncipherment"), r,
                  out);
    KV_GUARD_GOTO(ossl_add_ext(x, x, NID_subject_key_identifier, "hash"), r, out);
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot sign the certificate");
        goto out;
    }
    *out = x;
    x = NULL;
out:
    X509_free(x);
    return r;
}

kv_result pfx_generate(const char *common_name, const kv_secret *password, uint8_t **pfx_out,
                       size_t *pfx_len, kv_secret *pkcs8_out, uint8_t **spki_out, size_t *spki_len)
{
    KV_GUARD(check_common_name(common_name));
    KV_ENSURE(password != NULL && password->len > 0, KV_ERR_INVALID_ARGUMENT,
              "a PFX password is required");
    pthread_once(&providers_once, providers_load);
    ERR_clear_error();

    kv_secret pw = KV_SECRET_INIT;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    PKCS12 *p12 = NULL;
    uint8_t *der = NULL;
    kv_result r = KV_SUCCESS;
    *pfx_out = NULL;
    *spki_out = NULL;

    KV_GUARD(password_cstr(password, &pw));
    key = EVP_RSA_gen(PFX_RSA_BITS);
    if (key == NULL) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "RSA-2048 key generation failed");
        goto out;
    }
    KV_GUARD_GOTO(self_signed_cert(key, common_name, &cert), r, out);
    /* AES-256-CBC under PBES2/PBKDF2; OpenSSL 3 uses hmacWithSHA256 as the
     * PRF for PBES2, and the MAC is set to SHA-256 explicitly. */
    p12 = PKCS12_create((const char *)pw.data, common_name, key, cert, NULL, NID_aes_256_cbc,
                        NID_aes_256_cbc, PFX_ITERATIONS, -1 /* no MAC yet */, 0);
    if (p12 == NULL ||
        !PKCS12_set_mac(p12, (const char *)pw.data, -1, NULL, 0, PFX_ITERATIONS, EVP_sha256())) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot build the PFX");
        goto out;
    }
    int n = i2d_PKCS12(p12, &der);
    if (n <= 0) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the PFX");
        goto out;
    }
    uint8_t *copy = malloc((size_t)n);
    KV_ENSURE_GOTO(copy != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(copy, der, (size_t)n);
    KV_GUARD_GOTO(pkcs8_der(key, pkcs8_out), r, fail_copy);
    r = spki_der(key, spki_out, spki_len);
    if (kv_failed(r)) {
        kv_secret_free(pkcs8_out);
        goto fail_copy;
    }
    *pfx_out = copy;
    *pfx_len = (size_t)n;
    goto out;
fail_copy:
    free(copy);
out:
    if (der != NULL) OPENSSL_free(der);
    PKCS12_free(p12);
    X509_free(cert);
    EVP_PKEY_free(key); /* frees (and clears) the private key */
    kv_secret_free(&pw);
    ERR_clear_error();
    return r;
}

kv_result key_fingerprint(const uint8_t *spki, size_t spki_len, uint8_t out[KEY_FINGERPRINT_LEN])
{
    unsigned int n = 0;
    if (!EVP_Digest(spki, spki_len, out, &n, EVP_sha256(), NULL) || n != KEY_FINGERPRINT_LEN)
        return OSSL_FAIL(KV_ERR_INTERNAL, "SHA-256 failed");
    return KV_SUCCESS;
}

static kv_result spki_parse(const uint8_t *spki, size_t spki_len, EVP_PKEY **out)
{
    KV_ENSURE(spki_len > 0 && spki_len < 16384, KV_ERR_INVALID_ARGUMENT,
              "bad public key length %zu", spki_len);
    const unsigned char *p = spki;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (k == NULL || p != spki + spki_len) {
        EVP_PKEY_free(k);
        return OSSL_FAIL(KV_ERR_INVALID_ARGUMENT, "not a DER SubjectPublicKeyInfo");
    }
    *out = k;
    return KV_SUCCESS;
}

kv_result rsa_oaep_encrypt(const uint8_t *spki, size_t spki_len, int sha256, const uint8_t *msg,
                           size_t msg_len, uint8_t **ct, size_t *ct_len)
{
    EVP_PKEY *k = NULL;
    KV_GUARD(spki_parse(spki, spki_len, &k));
    kv_result r = KV_SUCCESS;
    EVP_PKEY_CTX *c = NULL;
    uint8_t *buf = NULL;
    size_t n = 0;
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "the key is not an RSA key");
        goto out;
    }
    const EVP_MD *md = sha256 ? EVP_sha256() : EVP_sha1();
    c = EVP_PKEY_CTX_new(k, NULL);
    if (c == NULL || EVP_PKEY_encrypt_init(c) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(c, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(c, md) <= 0 ||
        EVP_PKEY_encrypt(c, NULL, &n, msg, msg_len) <= 0) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "RSA-OAEP set-up failed");
        goto out;
    }
    buf = malloc(n);
    KV_ENSURE_GOTO(buf != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (EVP_PKEY_encrypt(c, buf, &n, msg, msg_len) <= 0) {
        free(buf);
        r = OSSL_FAIL(KV_ERR_INTERNAL, "RSA-OAEP encryption failed");
        goto out;
    }
    *ct = buf;
    *ct_len = n;
out:
    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(k);
    return r;
}

kv_result spki_rsa_bits(const uint8_t *spki, size_t spki_len, unsigned *bits)
{
    EVP_PKEY *k = NULL;
    KV_GUARD(spki_parse(spki, spki_len, &k));
    int id = EVP_PKEY_get_base_id(k);
    int b = EVP_PKEY_get_bits(k);
    EVP_PKEY_free(k);
    KV_ENSURE(id == EVP_PKEY_RSA, KV_ERR_INVALID_ARGUMENT, "the public key is not an RSA key");
    *bits = (unsigned)b;
    return KV_SUCCESS;
}

kv_result spki_to_pem(const uint8_t *spki, size_t spki_len, char **pem)
{
    EVP_PKEY *k = NULL;
    KV_GUARD(spki_parse(spki, spki_len, &k));
    BIO *b = BIO_new(BIO_s_mem());
    kv_result r = KV_SUCCESS;
    char *data = NULL;
    long n;
    if (b == NULL || !PEM_write_bio_PUBKEY(b, k) || (n = BIO_get_mem_data(b, &data)) <= 0) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot write the public key as PEM");
        goto out;
    }
    char *s = malloc((size_t)n + 1);
    KV_ENSURE_GOTO(s != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    *pem = s;
out:
    BIO_free(b);
    EVP_PKEY_free(k);
    return r;
}
