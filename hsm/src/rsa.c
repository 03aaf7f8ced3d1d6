/*
 * rsa.c: RSA key pairs in the token (generate, import from PKCS#8), RSA-OAEP
 * decryption inside the token, and the OAEP-SHA256 capability probe.
 *
 * Private keys are created CKA_SENSITIVE, not extractable, decrypt/unwrap
 * only.  Imported key material passes through memory only in kv_secret or
 * OpenSSL-owned buffers freed with BN_clear_free; it must never be logged,
 * copied to an ordinary heap buffer, or left behind in a half-created key.
 */
#include "hsm_internal.h"

#include "kv_ossl.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

void hsm_openssl_detail(void)
{
    kv_ossl_detail();
}

kv_result hsm_key_label_check(const char *label)
{
    if (label == NULL) return KV_SUCCESS;
    size_t n = strlen(label);
    KV_ENSURE(n <= HSM_KEY_LABEL_MAX, KV_ERR_INVALID_ARGUMENT,
              "key label is %zu bytes; at most %u allowed", n, HSM_KEY_LABEL_MAX);
    return KV_SUCCESS;
}

kv_result hsm_rsa_spki(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                       uint8_t **der, size_t *der_len)
{
    kv_result r = KV_SUCCESS;
    BIGNUM *bn_n = BN_bin2bn(n, (int)n_len, NULL);
    BIGNUM *bn_e = BN_bin2bn(e, (int)e_len, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    uint8_t *buf = NULL;

    KV_ENSURE_GOTO(bn_n != NULL && bn_e != NULL && bld != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                   "out of memory");
    KV_ENSURE_GOTO(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) == 1 &&
                       OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) == 1 &&
                       (params = OSSL_PARAM_BLD_to_param(bld)) != NULL,
                   r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    KV_ENSURE_GOTO(ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
                       EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1,
                   r, out, KV_ERR_INTERNAL, "the token returned an unusable RSA public key");
    int len = i2d_PUBKEY(pkey, NULL);
    KV_ENSURE_GOTO(len > 0, r, out, KV_ERR_INTERNAL, "cannot encode the RSA public key");
    buf = malloc((size_t)len);
    KV_ENSURE_GOTO(buf != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    unsigned char *p = buf;
    KV_ENSURE_GOTO(i2d_PUBKEY(pkey, &p) == len, r, out, KV_ERR_INTERNAL,
                   "cannot encode the RSA public key");
    *der = buf;
    *der_len = (size_t)len;
    buf = NULL;
out:
    if (kv_failed(r)) hsm_openssl_detail();
    free(buf);
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return r;
}

kv_result hsm_rsa_spki_from_token(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                  uint8_t **der, size_t *der_len)
{
    kv_result r = KV_SUCCESS;
    CK_ATTRIBUTE t[] = {{CKA_MODULUS, NULL, 0}, {CKA_PUBLIC_EXPONENT, NULL, 0}};
    CK_RV rv = h->p11->C_GetAttributeValue(s, obj, t, 2);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetAttributeValue");
    KV_ENSURE(t[0].ulValueLen > 0 && t[0].ulValueLen <= HSM_RSA_BYTES_MAX && t[1].ulValueLen > 0 &&
                  t[1].ulValueLen <= 64,
              KV_ERR_UNAVAILABLE, "the token returned a malformed RSA public key");
    t[0].pValue = malloc(t[0].ulValueLen);
    t[1].pValue = malloc(t[1].ulValueLen);
    KV_ENSURE_GOTO(t[0].pValue != NULL && t[1].pValue != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                   "out of memory");
    rv = h->p11->C_GetAttributeValue(s, obj, t, 2);
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_GetAttributeValue");
        goto out;
    }
    r = hsm_rsa_spki(t[0].pValue, t[0].ulValueLen, t[1].pValue, t[1].ulValueLen, der, der_len);
out:
    free(t[0].pValue);
    free(t[1].pValue);
    return r;
}

/* Destroys objects created by a call that is failing (no partial state). */
static void hsm_rsa_undo(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, bool has_priv,
                         CK_OBJECT_HANDLE pub, bool has_pub)
{
    if (has_priv) (void)h->p11->C_DestroyObject(s, priv);
    if (has_pub) (void)h->p11->C_DestroyObject(s, pub);
}

kv_result hsm_rsa_generate_usage(hsm *h, const char *label, unsigned bits, hsm_rsa_usage usage,
                                 hsm_key_id *id, uint8_t **spki_der, size_t *spki_len)
{
    KV_ENSURE(h != NULL && id != NULL && spki_der != NULL && spki_len != NULL,
              KV_ERR_INVALID_ARGUMENT, "hsm_rsa_generate: missing argument");
    KV_ENSURE(bits >= HSM_RSA_BITS_MIN && bits <= HSM_RSA_BITS_MAX && bits % 8 == 0,
              KV_ERR_INVALID_ARGUMENT, "RSA key size %u is not supported (%u to %u bits)", bits,
              HSM_RSA_BITS_MIN, HSM_RSA_BITS_MAX);
    KV_GUARD(hsm_key_label_check(label));
    KV_ENSURE(h->has_rsa_keygen, KV_ERR_UNIMPLEMENTED, "token '%s' cannot generate RSA key pairs",
              h->label);

    kv_result r = KV_SUCCESS;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sign = usage == HSM_RSA_USE_SIGN ? CK_TRUE : CK_FALSE;
    CK_BBOOL decrypt = usage == HSM_RSA_USE_IMPORT || sign ? CK_FALSE : CK_TRUE;
    CK_BBOOL unwrap = sign ? CK_FALSE : CK_TRUE;
    CK_BBOOL extractable = usage == HSM_RSA_USE_TRANSFER ? CK_TRUE : CK_FALSE;
    hsm_key_id new_id;
    KV_GUARD(hsm_key_id_new(h, &new_id));
    CK_ULONG modulus_bits = bits;
    CK_BYTE exponent[] = {0x01, 0x00, 0x01}; /* 65537 */
    CK_ULONG label_len = label ? (CK_ULONG)strlen(label) : 0;
    char label_buf[HSM_KEY_LABEL_MAX + 1] = "";
    if (label) memcpy(label_buf, label, label_len);
    /* CKA_LABEL is last in both templates: dropped when there is no label. */
    CK_ATTRIBUTE pub_t[] = {
        {CKA_TOKEN, HSM_TRUE, 1},
        {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_ENCRYPT, &decrypt, 1},
        {CKA_WRAP, &unwrap, 1},
        {CKA_VERIFY, &sign, 1},
        {CKA_VERIFY_RECOVER, HSM_FALSE, 1},
        {CKA_MODULUS_BITS, &modulus_bits, sizeof(modulus_bits)},
        {CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)},
        {CKA_ID, new_id.bytes, sizeof(new_id.bytes)},
        {CKA_LABEL, label_buf, label_len},
    };
    CK_ATTRIBUTE priv_t[] = {
        {CKA_TOKEN, HSM_TRUE, 1},
        {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_SENSITIVE, HSM_TRUE, 1},
        {CKA_EXTRACTABLE, &extractable, 1},
        {CKA_DECRYPT, &decrypt, 1},
        {CKA_UNWRAP, &unwrap, 1},
        {CKA_SIGN, &sign, 1},
        {CKA_SIGN_RECOVER, HSM_FALSE, 1},
        {CKA_DERIVE, HSM_FALSE, 1},
        {CKA_ID, new_id.bytes, sizeof(new_id.bytes)},
        {CKA_LABEL, label_buf, label_len},
    };
    CK_ULONG pub_n = KV_ARRAY_LEN(pub_t) - (label_len ? 0 : 1);
    CK_ULONG priv_n = KV_ARRAY_LEN(priv_t) - (label_len ? 0 : 1);
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    bool made = false;
    CK_SESSION_HANDLE s;

    KV_GUARD(hsm_session_acquire(h, &s));
    CK_RV rv = h->p11->C_GenerateKeyPair(s, &mech, pub_t, pub_n, priv_t, priv_n, &pub, &priv);
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_GenerateKeyPair");
        goto out;
    }
    made = true;
    KV_GUARD_GOTO(hsm_rsa_spki_from_token(h, s, pub, spki_der, spki_len), r, out);
    *id = new_id;
out:
    if (kv_failed(r)) {
        if (made) hsm_rsa_undo(h, s, priv, true, pub, true);
        kv_error_context("generating an RSA-%u key in token '%s'", bits, h->label);
    }
    hsm_session_release(h, s, false);
    return r;
}

kv_result hsm_rsa_generate(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                           uint8_t **spki_der, size_t *spki_len)
{
    return hsm_rsa_generate_usage(h, label, bits, HSM_RSA_USE_KEK, id, spki_der, spki_len);
}

kv_result hsm_rsa_generate_transferable(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                                        uint8_t **spki_der, size_t *spki_len)
{
    return hsm_rsa_generate_usage(h, label, bits, HSM_RSA_USE_TRANSFER, id, spki_der, spki_len);
}

/* --- import --- */

/* The RSA components PKCS#11 needs, in template order after the public two. */
static const char *const hsm_rsa_private_params[] = {
    OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,   OSSL_PKEY_PARAM_RSA_FACTOR2,
    OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
};
static const CK_ATTRIBUTE_TYPE hsm_rsa_private_attrs[] = {
    CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
};
#define HSM_RSA_NPRIV 6

/* Parses a PKCS#8 PrivateKeyInfo holding a plain RSA key; nothing may trail. */
static kv_result hsm_rsa_pkcs8_parse(const kv_secret *der, EVP_PKEY **out)
{
    KV_ENSURE(der != NULL && der->data != NULL && der->len > 0 && der->len < (1u << 20),
              KV_ERR_INVALID_ARGUMENT, "no PKCS#8 private key given");
    const unsigned char *p = der->data;
    PKCS8_PRIV_KEY_INFO *p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)der->len);
    if (p8 == NULL) {
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                     "the private key is not PKCS#8 DER");
        hsm_openssl_detail();
        return KV_FAILURE;
    }
    bool trailing = p != der->data + der->len;
    EVP_PKEY *pkey = trailing ? NULL : EVP_PKCS82PKEY(p8);
    PKCS8_PRIV_KEY_INFO_free(p8); /* its key octets are wiped on free */
    if (trailing) {
        ERR_clear_error();
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "the PKCS#8 private key has trailing bytes");
    }
    if (pkey == NULL) {
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                     "the PKCS#8 private key cannot be decoded");
        hsm_openssl_detail();
        return KV_FAILURE;
    }
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        EVP_PKEY_free(pkey);
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "the PKCS#8 private key is not an RSA key");
    }
    int bits = EVP_PKEY_get_bits(pkey);
    if (bits < (int)HSM_RSA_BITS_MIN || bits > (int)HSM_RSA_BITS_MAX) {
        EVP_PKEY_free(pkey);
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "RSA key size %d is not supported (%u to %u bits)", bits,
                HSM_RSA_BITS_MIN, HSM_RSA_BITS_MAX);
    }
    *out = pkey;
    return KV_SUCCESS;
}

kv_result hsm_rsa_public_bytes(const EVP_PKEY *pkey, uint8_t **n, size_t *n_len, uint8_t **e,
                               size_t *e_len)
{
    kv_result r = KV_SUCCESS;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    KV_ENSURE_GOTO(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &bn_n) == 1 &&
                       EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &bn_e) == 1,
                   r, out, KV_ERR_INVALID_ARGUMENT, "the RSA key has no public part");
    *n_len = (size_t)BN_num_bytes(bn_n);
    *e_len = (size_t)BN_num_bytes(bn_e);
    *n = malloc(*n_len ? *n_len : 1);
    *e = malloc(*e_len ? *e_len : 1);
    if (*n == NULL || *e == NULL) {
        free(*n);
        free(*e);
        *n = *e = NULL;
        KV_BAIL_GOTO(r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    BN_bn2bin(bn_n, *n);
    BN_bn2bin(bn_e, *e);
out:
    if (kv_failed(r)) ERR_clear_error();
    BN_free(bn_n);
    BN_free(bn_e);
    return r;
}

/* Private components into one kv_secret; attrs point into it. */
static kv_result hsm_rsa_private_bytes(const EVP_PKEY *pkey, kv_secret *buf,
                                       CK_ATTRIBUTE attrs[HSM_RSA_NPRIV])
{
    kv_result r = KV_SUCCESS;
    BIGNUM *bn[HSM_RSA_NPRIV] = {0};
    size_t total = 0;
    for (int i = 0; i < HSM_RSA_NPRIV; i++) {
        KV_ENSURE_GOTO(EVP_PKEY_get_bn_param(pkey, hsm_rsa_private_params[i], &bn[i]) == 1, r, out,
                       KV_ERR_INVALID_ARGUMENT, "the RSA private key lacks its CRT components");
        total += (size_t)BN_num_bytes(bn[i]);
    }
    KV_GUARD_GOTO(kv_secret_alloc(buf, total ? total : 1), r, out);
    size_t off = 0;
    for (int i = 0; i < HSM_RSA_NPRIV; i++) {
        size_t len = (size_t)BN_num_bytes(bn[i]);
        BN_bn2bin(bn[i], buf->data + off);
        attrs[i] = (CK_ATTRIBUTE){hsm_rsa_private_attrs[i], buf->data + off, len};
        off += len;
    }
    buf->len = off;
out:
    if (kv_failed(r)) ERR_clear_error();
    for (int i = 0; i < HSM_RSA_NPRIV; i++)
        BN_clear_free(bn[i]);
    return r;
}

kv_result hsm_rsa_public_create(const hsm *h, CK_SESSION_HANDLE s, const hsm_key_id *id,
                                const char *label, const uint8_t *n, size_t n_len, const uint8_t *e,
                                size_t e_len, bool token, CK_OBJECT_HANDLE *pub)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE, on_token = token ? CK_TRUE : CK_FALSE;
    CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY;
    CK_KEY_TYPE key_type = CKK_RSA;
    hsm_key_id idc;
    uint8_t *nc = malloc(n_len ? n_len : 1), *ec = malloc(e_len ? e_len : 1);
    if (nc == NULL || ec == NULL) {
        free(nc);
        free(ec);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(nc, n, n_len);
    memcpy(ec, e, e_len);
    CK_ULONG label_len = label ? (CK_ULONG)strlen(label) : 0;
    char label_buf[HSM_KEY_LABEL_MAX + 1] = "";
    if (label_len > HSM_KEY_LABEL_MAX) label_len = HSM_KEY_LABEL_MAX;
    if (label) memcpy(label_buf, label, label_len);
    CK_ATTRIBUTE pub_t[] = {
        {CKA_CLASS, &pub_class, sizeof(pub_class)},
        {CKA_KEY_TYPE, &key_type, sizeof(key_type)},
        {CKA_TOKEN, &on_token, 1},
        {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_ENCRYPT, HSM_TRUE, 1},
        {CKA_WRAP, HSM_TRUE, 1},
        {CKA_VERIFY, HSM_FALSE, 1},
        {CKA_VERIFY_RECOVER, HSM_FALSE, 1},
        {CKA_MODULUS, nc, n_len},
        {CKA_PUBLIC_EXPONENT, ec, e_len},
        {CKA_ID, idc.bytes, sizeof(idc.bytes)},
        {CKA_LABEL, label_buf, label_len},
    };
    /* no id: drop CKA_ID and CKA_LABEL; no label: drop CKA_LABEL */
    CK_ULONG count = KV_ARRAY_LEN(pub_t) - (id == NULL ? 2 : (label_len ? 0 : 1));
    if (id != NULL) idc = *id;
    CK_RV rv = h->p11->C_CreateObject(s, pub_t, count, pub);
    free(nc);
    free(ec);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_CreateObject (public key)");
    return KV_SUCCESS;
}

kv_result hsm_rsa_import_pkcs8(hsm *h, const char *label, const kv_secret *pkcs8_der,
                               hsm_key_id *id, uint8_t **spki_der, size_t *spki_len)
{
    KV_ENSURE(h != NULL && id != NULL && spki_der != NULL && spki_len != NULL,
              KV_ERR_INVALID_ARGUMENT, "hsm_rsa_import_pkcs8: missing argument");
    KV_GUARD(hsm_key_label_check(label));

    kv_result r = KV_SUCCESS;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    EVP_PKEY *pkey = NULL;
    uint8_t *n = NULL, *e = NULL, *spki = NULL;
    size_t n_len = 0, e_len = 0, der_len = 0;
    kv_secret priv_bytes = KV_SECRET_INIT;
    CK_ATTRIBUTE priv_parts[HSM_RSA_NPRIV];
    CK_SESSION_HANDLE s;
    bool have_session = false, have_priv = false;
    CK_OBJECT_HANDLE priv = 0, pub = 0;
    hsm_key_id new_id;
    CK_OBJECT_CLASS priv_class = CKO_PRIVATE_KEY;
    CK_KEY_TYPE key_type = CKK_RSA;
    CK_ULONG label_len = label ? (CK_ULONG)strlen(label) : 0;
    char label_buf[HSM_KEY_LABEL_MAX + 1] = "";
    if (label) memcpy(label_buf, label, label_len);

    KV_GUARD_GOTO(hsm_rsa_pkcs8_parse(pkcs8_der, &pkey), r, out);
    KV_GUARD_GOTO(hsm_rsa_public_bytes(pkey, &n, &n_len, &e, &e_len), r, out);
    KV_GUARD_GOTO(hsm_rsa_private_bytes(pkey, &priv_bytes, priv_parts), r, out);
    EVP_PKEY_free(pkey); /* OpenSSL clears the private components on free */
    pkey = NULL;
    /* The SPKI first: a key we could not describe is not imported. */
    KV_GUARD_GOTO(hsm_rsa_spki(n, n_len, e, e_len, &spki, &der_len), r, out);
    KV_GUARD_GOTO(hsm_key_id_new(h, &new_id), r, out);

    CK_ATTRIBUTE priv_t[] = {
        {CKA_CLASS, &priv_class, sizeof(priv_class)},
        {CKA_KEY_TYPE, &key_type, sizeof(key_type)},
        {CKA_TOKEN, HSM_TRUE, 1},
        {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_SENSITIVE, HSM_TRUE, 1},
        {CKA_EXTRACTABLE, HSM_FALSE, 1},
        {CKA_DECRYPT, HSM_TRUE, 1},
        {CKA_UNWRAP, HSM_TRUE, 1},
        {CKA_SIGN, HSM_FALSE, 1},
        {CKA_SIGN_RECOVER, HSM_FALSE, 1},
        {CKA_DERIVE, HSM_FALSE, 1},
        {CKA_ID, new_id.bytes, sizeof(new_id.bytes)},
        {CKA_MODULUS, n, n_len},
        {CKA_PUBLIC_EXPONENT, e, e_len},
        priv_parts[0],
        priv_parts[1],
        priv_parts[2],
        priv_parts[3],
        priv_parts[4],
        priv_parts[5],
        {CKA_LABEL, label_buf, label_len},
    };
    CK_ULONG priv_n = KV_ARRAY_LEN(priv_t) - (label_len ? 0 : 1);

    KV_GUARD_GOTO(hsm_session_acquire(h, &s), r, out);
    have_session = true;
    CK_RV rv = h->p11->C_CreateObject(s, priv_t, priv_n, &priv);
    kv_wipe(priv_t, sizeof(priv_t)); /* only pointers, but they point at the key */
    kv_secret_free(&priv_bytes);     /* the token has its copy now */
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_CreateObject (private key)");
        goto out;
    }
    have_priv = true;
    KV_GUARD_GOTO(hsm_rsa_public_create(h, s, &new_id, label, n, n_len, e, e_len, true, &pub), r,
                  out);
    *id = new_id;
    *spki_der = spki;
    *spki_len = der_len;
    spki = NULL;
out:
    if (kv_failed(r)) {
        if (have_session) hsm_rsa_undo(h, s, priv, have_priv, 0, false);
        kv_error_context("importing an RSA key into token '%s'", h->label);
    }
    if (have_session) hsm_session_release(h, s, false);
    kv_wipe(priv_parts, sizeof(priv_parts));
    kv_secret_free(&priv_bytes);
    EVP_PKEY_free(pkey);
    free(spki);
    free(n);
    free(e);
    return r;
}

/* --- OAEP --- */

void hsm_oaep_params(hsm_oaep_hash hash, CK_RSA_PKCS_OAEP_PARAMS *p)
{
    memset(p, 0, sizeof(*p));
    p->hashAlg = hash == HSM_OAEP_SHA256 ? CKM_SHA256 : CKM_SHA_1;
    p->mgf = hash == HSM_OAEP_SHA256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
    p->source = CKZ_DATA_SPECIFIED; /* empty label */
    p->pSourceData = NULL;
    p->ulSourceDataLen = 0;
}

kv_result hsm_rsa_decrypt_oaep(hsm *h, const hsm_key_id *id, hsm_oaep_hash hash, const uint8_t *ct,
                               size_t ct_len, kv_secret *out)
{
    KV_ENSURE(h != NULL && id != NULL && out != NULL && ct != NULL, KV_ERR_INVALID_ARGUMENT,
              "hsm_rsa_decrypt_oaep: missing argument");
    KV_ENSURE(hash == HSM_OAEP_SHA1 || hash == HSM_OAEP_SHA256, KV_ERR_INVALID_ARGUMENT,
              "unknown OAEP hash %d", (int)hash);
    KV_ENSURE(ct_len > 0 && ct_len <= HSM_RSA_BYTES_MAX, KV_ERR_INVALID_ARGUMENT,
              "RSA ciphertext of %zu bytes is out of range", ct_len);

    kv_result r = KV_SUCCESS;
    char hex[2 * HSM_KEY_ID_LEN + 1];
    uint8_t ct_copy[HSM_RSA_BYTES_MAX]; /* C_Decrypt takes a non-const pointer */
    kv_secret plain = KV_SECRET_INIT;
    CK_RSA_PKCS_OAEP_PARAMS params;
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    CK_OBJECT_HANDLE key = 0;
    CK_SESSION_HANDLE s;
    bool found = false, reset = false;

    hsm_key_id_hex(id, hex);
    memcpy(ct_copy, ct, ct_len);
    hsm_oaep_params(hash, &params);
    /* Room for the largest modulus: a token checks the output buffer against
     * the key's modulus length before it looks at the ciphertext length
     * (SoftHSM answers CKR_BUFFER_TOO_SMALL to a short ciphertext otherwise). */
    KV_GUARD(kv_secret_alloc(&plain, HSM_RSA_BYTES_MAX));
    KV_GUARD_GOTO(hsm_session_acquire(h, &s), r, done);
    bool cached = hsm_handle_lookup(h, id, &key);
    CK_RV rv = CKR_KEY_HANDLE_INVALID;
    if (cached) rv = h->p11->C_DecryptInit(s, &mech, key);
    if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
        /* Not known yet, or destroyed behind our back: search the token. */
        if (cached) hsm_handle_forget(h, id);
        KV_GUARD_GOTO(hsm_object_find(h, s, id, CKO_PRIVATE_KEY, &key, &found), r, out);
        KV_ENSURE_GOTO(found, r, out, KV_ERR_NOT_FOUND, "no private key %s in token '%s'", hex,
                       h->label);
        rv = h->p11->C_DecryptInit(s, &mech, key);
        if (rv == CKR_OK) hsm_handle_remember(h, id, key);
    }
    switch (rv) {
    case CKR_OK:
        break;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_ARGUMENTS_BAD:
        kv_error_set(KV_ERR_UNIMPLEMENTED, __FILE__, __LINE__,
                     "token '%s' cannot RSA-OAEP decrypt with %s", h->label,
                     hash == HSM_OAEP_SHA256 ? "SHA-256" : "SHA-1");
        kv_error_detail("C_DecryptInit returned %s", hsm_rv_name(rv));
        r = KV_FAILURE;
        goto out;
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_TYPE_INCONSISTENT:
        kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                     "key %s is not an RSA decryption key", hex);
        kv_error_detail("C_DecryptInit returned %s", hsm_rv_name(rv));
        r = KV_FAILURE;
        goto out;
    default:
        r = HSM_RV_FAIL(rv, "C_DecryptInit");
        goto out;
    }
    CK_ULONG len = plain.cap;
    rv = h->p11->C_Decrypt(s, ct_copy, ct_len, plain.data, &len);
    switch (rv) {
    case CKR_OK:
        KV_ENSURE_GOTO(len <= plain.cap, r, out, KV_ERR_INTERNAL,
                       "the token overran the plaintext buffer");
        plain.len = len;
        break;
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    /* SoftHSM 2.6.1 reports a failed OAEP decoding (wrong key, corrupted
     * ciphertext) as CKR_GENERAL_ERROR; other modules use FUNCTION_FAILED.
     * C_DecryptInit has just accepted key and mechanism, so here both mean
     * the ciphertext does not decrypt.  The detail keeps the real CK_RV. */
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
        kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                     "the ciphertext does not decrypt under key %s", hex);
        kv_error_detail("C_Decrypt returned %s", hsm_rv_name(rv));
        r = KV_FAILURE;
        goto out;
    default:
        /* CKR_BUFFER_TOO_SMALL leaves the operation active: reset. */
        reset = true;
        r = HSM_RV_FAIL(rv, "C_Decrypt");
        goto out;
    }
    *out = plain;
    plain = (kv_secret)KV_SECRET_INIT;
out:
    hsm_session_release(h, s, reset);
done:
    if (kv_failed(r) && kv_error_code() != KV_ERR_DATA_LOSS)
        kv_error_context("decrypting with key %s", hex);
    kv_secret_free(&plain);
    return r;
}

/* --- capability probe --- */

/* Encrypts and decrypts a fixed block with RSA-OAEP SHA-256 under a
 * throwaway session key pair (CKA_TOKEN=FALSE) on a session of its own, so
 * nothing outlives the probe: closing the session destroys the keys and any
 * operation a failure left active.  Returns 1 (round trip works), -1 (the
 * token refuses the parameters: definitive) or 0 (could not tell). */
static int hsm_rsa_probe_run(const hsm *h)
{
    CK_SESSION_HANDLE s;
    CK_RV rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) return 0;
    int result = 0;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    /* 1024 bits keeps the probe fast; it tests the mechanism, not the key. */
    static const CK_ULONG sizes[] = {1024, 2048};
    for (size_t i = 0; i < KV_ARRAY_LEN(sizes); i++) {
        CK_ULONG bits = sizes[i];
        CK_ATTRIBUTE pub_t[] = {
            {CKA_TOKEN, HSM_FALSE, 1},
            {CKA_ENCRYPT, HSM_TRUE, 1},
            {CKA_MODULUS_BITS, &bits, sizeof(bits)},
            {CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)},
        };
        CK_ATTRIBUTE priv_t[] = {
            {CKA_TOKEN, HSM_FALSE, 1},
            {CKA_SENSITIVE, HSM_TRUE, 1},
            {CKA_DECRYPT, HSM_TRUE, 1},
        };
        rv = h->p11->C_GenerateKeyPair(s, &gen, pub_t, KV_ARRAY_LEN(pub_t), priv_t,
                                       KV_ARRAY_LEN(priv_t), &pub, &priv);
        if (rv != CKR_KEY_SIZE_RANGE) break;
    }
    if (rv != CKR_OK) goto out;

    CK_RSA_PKCS_OAEP_PARAMS params;
    hsm_oaep_params(HSM_OAEP_SHA256, &params);
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    CK_BYTE msg[32], ct[256], back[256];
    CK_ULONG ct_len = sizeof(ct), back_len = sizeof(back);
    memset(msg, 0x5a, sizeof(msg));
    rv = h->p11->C_EncryptInit(s, &mech, pub);
    if (rv == CKR_OK) rv = h->p11->C_Encrypt(s, msg, sizeof(msg), ct, &ct_len);
    if (rv == CKR_OK) rv = h->p11->C_DecryptInit(s, &mech, priv);
    if (rv == CKR_OK) rv = h->p11->C_Decrypt(s, ct, ct_len, back, &back_len);
    if (rv == CKR_OK) {
        result = back_len == sizeof(msg) && memcmp(back, msg, sizeof(msg)) == 0 ? 1 : -1;
    } else if (rv == CKR_MECHANISM_INVALID || rv == CKR_MECHANISM_PARAM_INVALID ||
               rv == CKR_ARGUMENTS_BAD) {
        result = -1;
    }
out:
    (void)h->p11->C_CloseSession(s);
    return result;
}

bool hsm_rsa_probe_oaep_sha256(const hsm *h)
{
    hsm_pool *p = h->pool;
    pthread_mutex_lock(&p->mu);
    int known = p->oaep_sha256;
    pthread_mutex_unlock(&p->mu);
    if (known != 0) return known > 0;
    /* Two threads may probe at once; both reach the same answer. */
    int result = hsm_rsa_probe_run(h);
    if (result != 0) {
        pthread_mutex_lock(&p->mu);
        p->oaep_sha256 = result;
        pthread_mutex_unlock(&p->mu);
    }
    return result > 0;
}
