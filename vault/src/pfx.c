/*
 * pfx.c: PKCS#12 parsing and generation, RSA key checks, fingerprints and
 * software OAEP, with OpenSSL 3 (see pfx.h).
 *
 * Must never: put a password or key byte into an error message or detail,
 * leave key bytes in an unwiped buffer, or leave OpenSSL errors queued for the
 * next caller.
 *
 * Library context.  Legacy PFX files (`openssl pkcs12 -export -legacy`: RC2-40
 * for the certificates, 3DES for the key) need the legacy provider.  It is
 * loaded, with the default provider, once into a dedicated OSSL_LIB_CTX used
 * only for decrypting PFX contents, so the rest of the process (TLS, OAEP,
 * generation) keeps the default context and can never pick a legacy algorithm.
 * PKCS12_parse cannot take a library context in OpenSSL 3.0, so pfx_open walks
 * the safes itself with the _ex functions; that also lets it count the key
 * bags (PKCS12_parse silently keeps the first of several) and notice a
 * certificate that does not match the key (PKCS12_parse moves it to the chain).
 * The MAC (HMAC under the PKCS#12 KDF) is checked with the default context,
 * which has every MAC digest a PFX uses.
 *
 * Cost bound.  Every KDF iteration count comes from the untrusted file; their
 * sum is capped (PFX_MAX_KDF_ITERATIONS) before any key derivation, so a
 * hostile file cannot pin a CPU for minutes.
 *
 * PBKDF2 iteration count for generated files: PFX_ITERATIONS.  OpenSSL's
 * default (2048) is low for a file that leaves the vault; 100000 rounds of
 * HMAC-SHA256 cost ~40 ms here and are applied to the key, the certificate
 * safe and the MAC (~0.2 s per generation, next to ~0.1-0.5 s of RSA keygen).
 */
#include "pfx.h"

#include "ossl.h"

#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
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
/* Sum of all KDF iterations one PFX may ask for (MAC + safes + key bag):
 * room for 600000-round files from current tools, ~1-2 s of CPU at most. */
#define PFX_MAX_KDF_ITERATIONS 3000000L
/* Nesting of safeContentsBag bags followed (real files use none). */
#define PFX_MAX_BAG_DEPTH 3

static pthread_once_t providers_once = PTHREAD_ONCE_INIT;
static OSSL_LIB_CTX *pfx_libctx;
static OSSL_PROVIDER *provider_legacy, *provider_default;

static void providers_unload(void)
{
    if (provider_legacy != NULL) OSSL_PROVIDER_unload(provider_legacy);
    if (provider_default != NULL) OSSL_PROVIDER_unload(provider_default);
    OSSL_LIB_CTX_free(pfx_libctx);
    provider_legacy = provider_default = NULL;
    pfx_libctx = NULL;
}

static void providers_load(void)
{
    /* OpenSSL's own atexit clean-up is registered first, so ours runs before it. */
    OPENSSL_init_crypto(0, NULL);
    pfx_libctx = OSSL_LIB_CTX_new();
    if (pfx_libctx != NULL) {
        provider_default = OSSL_PROVIDER_load(pfx_libctx, "default");
        provider_legacy = OSSL_PROVIDER_load(pfx_libctx, "legacy"); /* may be absent */
    }
    atexit(providers_unload);
    ERR_clear_error();
}

/* The password as a NUL-terminated copy in a kv_secret. */
static kv_result password_cstr(const kv_secret *pw, kv_secret *out)
{
    size_t n = pw != NULL ? pw->len : 0;
    KV_ENSURE(n == 0 || memchr(pw->data, '\0', n) == NULL, KV_ERR_INVALID_ARGUMENT,
              "the password contains a NUL byte");
    KV_ENSURE(n < 1024, KV_ERR_INVALID_ARGUMENT, "the password is longer than 1023 bytes");
    KV_GUARD(kv_secret_alloc(out, n + 1));
    if (n > 0) memcpy(out->data, pw->data, n);
    out->data[n] = '\0';
    out->len = n;
    return KV_SUCCESS;
}

/* "an RSA-1024 key", "an EC (prime256v1) key", "a ED25519 key"... */
static void key_description(const EVP_PKEY *k, char *out, size_t cap)
{
    int id = EVP_PKEY_get_base_id(k);
    if (id == EVP_PKEY_RSA || id == EVP_PKEY_RSA_PSS) {
        snprintf(out, cap, "an %s-%d key", id == EVP_PKEY_RSA ? "RSA" : "RSA-PSS",
                 EVP_PKEY_get_bits(k));
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

/* PKCS#8 DER of a private key straight into an exactly sized kv_secret; the
 * OpenSSL copies are wiped (PKCS8_PRIV_KEY_INFO_free cleanses its octets). */
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

/* What pfx_open collects while walking the safes. */
typedef struct {
    const char *pass; /* NULL or NUL-terminated; the variant the MAC accepted */
    int pass_len;
    long kdf_budget; /* iterations still allowed */
    int keys;        /* key bags seen */
    EVP_PKEY *key;   /* the first key, decrypted */
    STACK_OF(X509) * certs;
} pfx_walk;

static kv_result damaged(void)
{
    return OSSL_FAIL(KV_ERR_INVALID_ARGUMENT,
                     "not a PKCS#12 (PFX) file, or a damaged one: its contents do not decode");
}

/* Iterations of a PBE AlgorithmIdentifier (PKCS#12 PBE, PBES1 or PBES2). */
static kv_result pbe_iterations(const X509_ALGOR *alg, long *iter)
{
    const ASN1_OBJECT *oid = NULL;
    int ptype = 0;
    const void *pval = NULL;
    X509_ALGOR_get0(&oid, &ptype, &pval, alg);
    long n = -1;
    if (ptype == V_ASN1_SEQUENCE && OBJ_obj2nid(oid) == NID_pbes2) {
        PBE2PARAM *p2 = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter);
        if (p2 != NULL && p2->keyfunc != NULL &&
            OBJ_obj2nid(p2->keyfunc->algorithm) == NID_id_pbkdf2) {
            PBKDF2PARAM *kdf =
                ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), p2->keyfunc->parameter);
            if (kdf != NULL && kdf->iter != NULL) n = ASN1_INTEGER_get(kdf->iter);
            PBKDF2PARAM_free(kdf);
        }
        PBE2PARAM_free(p2);
    } else if (ptype == V_ASN1_SEQUENCE) {
        PBEPARAM *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBEPARAM), alg->parameter);
        if (p != NULL && p->iter != NULL) n = ASN1_INTEGER_get(p->iter);
        PBEPARAM_free(p);
    }
    if (n < 1) return damaged(); /* also: unknown scheme, negative or huge count */
    *iter = n;
    return KV_SUCCESS;
}

static kv_result spend_iterations(pfx_walk *w, long iter)
{
    KV_ENSURE(iter <= w->kdf_budget, KV_ERR_INVALID_ARGUMENT,
              "the PFX asks for more than %ld password-hashing iterations in total; export it "
              "again with a lower iteration count",
              (long)PFX_MAX_KDF_ITERATIONS);
    w->kdf_budget -= iter;
    return KV_SUCCESS;
}

/* A decryption failure after the MAC accepted the password: an algorithm this
 * OpenSSL cannot run (legacy provider missing), or a file damaged before its
 * MAC was computed. */
static kv_result undecryptable(void)
{
    if (provider_legacy == NULL)
        return OSSL_FAIL(
            KV_ERR_FAILED_PRECONDITION,
            "the PFX cannot be decrypted here: it probably uses a legacy cipher (RC2/3DES) and "
            "OpenSSL's legacy provider is not available; export it again with AES "
            "(openssl pkcs12 -export without -legacy)");
    return OSSL_FAIL(KV_ERR_INVALID_ARGUMENT,
                     "the PFX password is right but its contents cannot be decrypted: the file "
                     "is damaged or uses an unsupported cipher");
}

static kv_result walk_bags(pfx_walk *w, const STACK_OF(PKCS12_SAFEBAG) * bags, int depth);

static kv_result walk_bag(pfx_walk *w, const PKCS12_SAFEBAG *bag, int depth)
{
    switch (PKCS12_SAFEBAG_get_nid(bag)) {
    case NID_keyBag:
    case NID_pkcs8ShroudedKeyBag: {
        if (++w->keys > 1) return KV_SUCCESS; /* counted, never decrypted */
        PKCS8_PRIV_KEY_INFO *p8 = NULL;
        if (PKCS12_SAFEBAG_get_nid(bag) == NID_keyBag) {
            const PKCS8_PRIV_KEY_INFO *plain = PKCS12_SAFEBAG_get0_p8inf(bag);
            if (plain == NULL) return damaged();
            w->key = EVP_PKCS82PKEY_ex(plain, pfx_libctx, NULL);
        } else {
            const X509_SIG *sig = PKCS12_SAFEBAG_get0_pkcs8(bag);
            const X509_ALGOR *alg = NULL;
            long iter = 0;
            if (sig == NULL) return damaged();
            X509_SIG_get0(sig, &alg, NULL);
            KV_GUARD(pbe_iterations(alg, &iter));
            KV_GUARD(spend_iterations(w, iter));
            p8 = PKCS12_decrypt_skey_ex(bag, w->pass, w->pass_len, pfx_libctx, NULL);
            if (p8 == NULL) return undecryptable();
            w->key = EVP_PKCS82PKEY_ex(p8, pfx_libctx, NULL);
            PKCS8_PRIV_KEY_INFO_free(p8); /* cleanses the key octets */
        }
        if (w->key == NULL)
            return OSSL_FAIL(KV_ERR_INVALID_ARGUMENT,
                             "the PFX's private key is of a kind this server cannot read; only "
                             "RSA-2048 keys are accepted");
        return KV_SUCCESS;
    }
    case NID_certBag: {
        if (PKCS12_SAFEBAG_get_bag_nid(bag) != NID_x509Certificate) return KV_SUCCESS;
        X509 *x = PKCS12_SAFEBAG_get1_cert(bag);
        if (x == NULL) return damaged();
        if (!sk_X509_push(w->certs, x)) {
            X509_free(x);
            return OSSL_FAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        return KV_SUCCESS;
    }
    case NID_safeContentsBag:
        KV_ENSURE(depth < PFX_MAX_BAG_DEPTH, KV_ERR_INVALID_ARGUMENT,
                  "the PFX nests its contents more than %d levels deep", PFX_MAX_BAG_DEPTH);
        return walk_bags(w, PKCS12_SAFEBAG_get0_safes(bag), depth + 1);
    default:
        return KV_SUCCESS; /* CRL and secret bags carry nothing we use */
    }
}

static kv_result walk_bags(pfx_walk *w, const STACK_OF(PKCS12_SAFEBAG) * bags, int depth)
{
    for (int i = 0; i < sk_PKCS12_SAFEBAG_num(bags); i++)
        KV_GUARD(walk_bag(w, sk_PKCS12_SAFEBAG_value(bags, i), depth));
    return KV_SUCCESS;
}

/* One element of the AuthenticatedSafe: plain data, or password-encrypted
 * data decrypted in pfx_libctx (so RC2-40 works with the legacy provider). */
static kv_result walk_safe(pfx_walk *w, PKCS7 *p7)
{
    STACK_OF(PKCS12_SAFEBAG) *bags = NULL;
    int nid = OBJ_obj2nid(p7->type);
    if (nid == NID_pkcs7_data) {
        bags = PKCS12_unpack_p7data(p7);
        if (bags == NULL) return damaged();
    } else if (nid == NID_pkcs7_encrypted) {
        PKCS7_ENCRYPT *enc = p7->d.encrypted;
        if (enc == NULL || enc->enc_data == NULL || enc->enc_data->algorithm == NULL ||
            enc->enc_data->enc_data == NULL)
            return damaged();
        long iter = 0;
        KV_GUARD(pbe_iterations(enc->enc_data->algorithm, &iter));
        KV_GUARD(spend_iterations(w, iter));
        bags = PKCS12_item_decrypt_d2i_ex(enc->enc_data->algorithm, ASN1_ITEM_rptr(PKCS12_SAFEBAGS),
                                          w->pass, w->pass_len, enc->enc_data->enc_data, 1,
                                          pfx_libctx, NULL);
        if (bags == NULL) return undecryptable();
    } else {
        /* envelopedData (public-key privacy mode) and anything else */
        KV_BAIL(KV_ERR_INVALID_ARGUMENT,
                "the PFX uses public-key encryption for its contents; export it with a password");
    }
    kv_result r = walk_bags(w, bags, 0);
    sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
    return r;
}

/* Checks the MAC and picks the password variant it accepts.  An empty
 * password is encoded by tools either as no bytes (NULL) or as the two-byte
 * BMP terminator (""): both are tried, as PKCS12_parse does. */
static kv_result verify_mac(pfx_walk *w, PKCS12 *p12, const kv_secret *pw)
{
    /* The MAC is the file's integrity check and the only way to tell a wrong
     * password from a damaged file; a file without one is refused rather
     * than decrypted blind (CBC without a MAC is malleable). */
    KV_ENSURE(PKCS12_mac_present(p12), KV_ERR_INVALID_ARGUMENT,
              "the PFX has no integrity MAC; export it again with a MAC (without -nomac)");
    const ASN1_INTEGER *iter = NULL;
    PKCS12_get0_mac(NULL, NULL, NULL, &iter, p12);
    long n = iter != NULL ? ASN1_INTEGER_get(iter) : 1; /* absent: DEFAULT 1 */
    if (n < 1) return damaged();
    KV_GUARD(spend_iterations(w, n));
    if (pw->len == 0) {
        if (PKCS12_verify_mac(p12, NULL, 0)) {
            w->pass = NULL;
            w->pass_len = 0;
            ERR_clear_error();
            return KV_SUCCESS;
        }
        KV_GUARD(spend_iterations(w, n));
    }
    if (PKCS12_verify_mac(p12, (const char *)pw->data, (int)pw->len)) {
        w->pass = (const char *)pw->data;
        w->pass_len = (int)pw->len;
        ERR_clear_error();
        return KV_SUCCESS;
    }
    /* A MAC mismatch returns 0 with an empty error queue; a MAC that cannot
     * be computed (unknown digest, bad parameters) queues an error. */
    if (ERR_peek_error() == 0) {
        KV_BAIL(KV_ERR_INVALID_ARGUMENT,
                "the PFX password is wrong (its integrity check failed); check the password and "
                "upload again");
    }
    /* The MAC could not even be computed: unknown digest or bad parameters. */
    return OSSL_FAIL(KV_ERR_INVALID_ARGUMENT,
                     "the PFX's integrity MAC uses an unsupported or damaged algorithm");
}

kv_result pfx_open(const uint8_t *pfx, size_t pfx_len, const kv_secret *password,
                   kv_secret *pkcs8_out, uint8_t **spki_out, size_t *spki_len)
{
    KV_ENSURE(pfx_len > 0, KV_ERR_INVALID_ARGUMENT, "the PFX file is empty");
    KV_ENSURE(pfx_len <= PFX_MAX_BYTES, KV_ERR_INVALID_ARGUMENT,
              "the PFX file is %zu bytes; the limit is %u bytes", pfx_len, PFX_MAX_BYTES);
    pthread_once(&providers_once, providers_load);
    ERR_clear_error();
    KV_ENSURE(pfx_libctx != NULL && provider_default != NULL, KV_ERR_INTERNAL,
              "OpenSSL's default provider cannot be loaded; PFX files cannot be read");

    kv_secret pw = KV_SECRET_INIT;
    PKCS12 *p12 = NULL;
    STACK_OF(PKCS7) *safes = NULL;
    X509 *cert = NULL;
    pfx_walk w = {.kdf_budget = PFX_MAX_KDF_ITERATIONS};
    kv_result r = KV_SUCCESS;

    KV_GUARD(password_cstr(password, &pw));
    w.certs = sk_X509_new_null();
    if (w.certs == NULL) {
        r = OSSL_FAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    const unsigned char *p = pfx;
    p12 = d2i_PKCS12(NULL, &p, (long)pfx_len);
    if (p12 == NULL) {
        r = OSSL_FAIL(
            KV_ERR_INVALID_ARGUMENT,
            "not a PKCS#12 (PFX) file, or a truncated one; export the key and its certificate "
            "as .pfx/.p12");
        goto out;
    }
    KV_ENSURE_GOTO(p == pfx + pfx_len, r, out, KV_ERR_INVALID_ARGUMENT,
                   "not a PKCS#12 (PFX) file: %zu bytes follow its end",
                   pfx_len - (size_t)(p - pfx));
    KV_GUARD_GOTO(verify_mac(&w, p12, &pw), r, out);
    safes = PKCS12_unpack_authsafes(p12);
    if (safes == NULL) {
        r = damaged();
        goto out;
    }
    for (int i = 0; i < sk_PKCS7_num(safes); i++)
        KV_GUARD_GOTO(walk_safe(&w, sk_PKCS7_value(safes, i)), r, out);

    KV_ENSURE_GOTO(w.keys > 0, r, out, KV_ERR_INVALID_ARGUMENT,
                   "the PFX holds no private key; export it with the private key included");
    KV_ENSURE_GOTO(w.keys == 1, r, out, KV_ERR_INVALID_ARGUMENT,
                   "the PFX holds %d private keys; export a PFX with exactly one", w.keys);
    KV_GUARD_GOTO(check_rsa_2048(w.key, "the PFX"), r, out);
    /* The certificate is optional, but a PFX whose certificates all belong to
     * other keys is a wrong export: refuse it rather than guess. */
    for (int i = 0; i < sk_X509_num(w.certs) && cert == NULL; i++) {
        X509 *x = sk_X509_value(w.certs, i);
        if (X509_check_private_key(x, w.key) == 1) cert = x;
    }
    ERR_clear_error();
    KV_ENSURE_GOTO(sk_X509_num(w.certs) == 0 || cert != NULL, r, out, KV_ERR_INVALID_ARGUMENT,
                   "the PFX's certificate does not match its private key; export the matching "
                   "pair");
    KV_GUARD_GOTO(pkcs8_der(w.key, pkcs8_out), r, out);
    r = spki_der(w.key, spki_out, spki_len);
    if (kv_failed(r)) kv_secret_free(pkcs8_out);
out:
    EVP_PKEY_free(w.key); /* frees (and clears) the private key */
    sk_X509_pop_free(w.certs, X509_free);
    sk_PKCS7_pop_free(safes, PKCS7_free);
    PKCS12_free(p12);
    kv_secret_free(&pw);
    ERR_clear_error();
    return r;
}

/* Subject CN check: printable ASCII, 1..64 characters (the X.520 upper bound). */
static kv_result check_common_name(const char *cn)
{
    size_t n = cn != NULL ? strnlen(cn, 65) : 0;
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
    /* 10 years: 3650 days plus the two or three leap days on the way. */
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
    ERR_clear_error();

    kv_secret pw = KV_SECRET_INIT;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    PKCS12 *p12 = NULL;
    uint8_t *der = NULL;
    kv_result r = KV_SUCCESS;

    KV_GUARD(password_cstr(password, &pw));
    /* Generation uses the default library context: never a legacy algorithm. */
    key = EVP_RSA_gen(PFX_RSA_BITS); /* e = 65537 */
    if (key == NULL) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "RSA-2048 key generation failed");
        goto out;
    }
    KV_GUARD_GOTO(self_signed_cert(key, common_name, &cert), r, out);
    /* NID_aes_256_cbc selects PBES2: PBKDF2 with OpenSSL 3's default PRF
     * hmacWithSHA256 and AES-256-CBC, for the key bag and the certificate
     * safe (checked with `openssl pkcs12 -info` in test_pfx.c).  The MAC is
     * added separately to make it HMAC-SHA256 (PKCS12_create's is SHA-1). */
    p12 = PKCS12_create((const char *)pw.data, common_name, key, cert, NULL, NID_aes_256_cbc,
                        NID_aes_256_cbc, PFX_ITERATIONS, -1 /* no MAC yet */, 0);
    if (p12 == NULL ||
        !PKCS12_set_mac(p12, (const char *)pw.data, -1, NULL, 0, PFX_ITERATIONS, EVP_sha256())) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot build the PFX");
        goto out;
    }
    int n = i2d_PKCS12(p12, NULL);
    if (n <= 0 || (size_t)n > PFX_MAX_BYTES) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the PFX");
        goto out;
    }
    der = malloc((size_t)n);
    KV_ENSURE_GOTO(der != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    uint8_t *wp = der;
    if (i2d_PKCS12(p12, &wp) != n) {
        r = OSSL_FAIL(KV_ERR_INTERNAL, "cannot encode the PFX");
        goto out;
    }
    KV_GUARD_GOTO(pkcs8_der(key, pkcs8_out), r, out);
    r = spki_der(key, spki_out, spki_len);
    if (kv_failed(r)) {
        kv_secret_free(pkcs8_out);
        goto out;
    }
    *pfx_out = der; /* outputs are set only on success */
    *pfx_len = (size_t)n;
    der = NULL;
out:
    free(der);
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

struct rsa_pub {
    EVP_PKEY *key;
};

kv_result rsa_pub_open(const uint8_t *spki, size_t spki_len, rsa_pub **out)
{
    EVP_PKEY *k = NULL;
    KV_GUARD(spki_parse(spki, spki_len, &k));
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
        EVP_PKEY_free(k);
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "the key is not an RSA key");
    }
    rsa_pub *p = malloc(sizeof(*p));
    if (p == NULL) {
        EVP_PKEY_free(k);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    p->key = k;
    *out = p;
    return KV_SUCCESS;
}

void rsa_pub_free(rsa_pub *p)
{
    if (p == NULL) return;
    EVP_PKEY_free(p->key);
    free(p);
}

kv_result rsa_pub_encrypt(const rsa_pub *pub, int sha256, const uint8_t *msg, size_t msg_len,
                          uint8_t **ct, size_t *ct_len)
{
    kv_result r = KV_SUCCESS;
    uint8_t *buf = NULL;
    size_t n = 0;
    const EVP_MD *md = sha256 ? EVP_sha256() : EVP_sha1();
    /* A context per call: the key is shared between threads, contexts are not. */
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pub->key, NULL);
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
    return r;
}

kv_result rsa_oaep_encrypt(const uint8_t *spki, size_t spki_len, int sha256, const uint8_t *msg,
                           size_t msg_len, uint8_t **ct, size_t *ct_len)
{
    rsa_pub *p = NULL;
    KV_GUARD(rsa_pub_open(spki, spki_len, &p));
    kv_result r = rsa_pub_encrypt(p, sha256, msg, msg_len, ct, ct_len);
    rsa_pub_free(p);
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
