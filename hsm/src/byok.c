/*
 * byok.c: BYOK key transfer inside tokens.  On the vault's token: import
 * keys (unwrap only) and the unwrap of a .byok ciphertext straight into a
 * sensitive, non-extractable token key.  On an admin's own token: the wrap of
 * an extractable key for an import key (what vendor BYOK tools do).
 *
 * Must never bring the target key or the ephemeral AES key into this
 * process's memory, never leave the AES key or a refused target behind in
 * the token, and never accept a target that is not RSA of the required size.
 *
 * Two mechanisms (PKCS#11 2.40 sec. 2.1.21): CKM_RSA_AES_KEY_WRAP does both
 * steps in one call; tokens without it (SoftHSM 2.6.1) run the same steps as
 * CKM_RSA_PKCS_OAEP into a session AES key, then CKM_AES_KEY_WRAP_PAD.  The
 * CKM_RSA_AES_KEY_WRAP path cannot run on SoftHSM 2.6.1 and is untested here.
 */
#include "hsm_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* PKCS#11 2.40 CK_RSA_AES_KEY_WRAP_PARAMS (p11-kit's header lacks it). */
typedef struct {
    CK_ULONG ulAESKeyBits;
    CK_RSA_PKCS_OAEP_PARAMS *pOAEPParams;
} hsm_rsa_aes_key_wrap_params;

#define HSM_BYOK_AES_BITS 256u
/* A .byok ciphertext larger than this is not a key. */
#define HSM_BYOK_CT_MAX (64u * 1024u)
#define HSM_KWP_MIN 16u

kv_result hsm_import_key_generate(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                                  uint8_t **spki_der, size_t *spki_len)
{
    return hsm_rsa_generate_usage(h, label, bits, HSM_RSA_USE_IMPORT, id, spki_der, spki_len);
}

static const char *hsm_hash_name(hsm_oaep_hash hash)
{
    return hash == HSM_OAEP_SHA256 ? "SHA-256" : "SHA-1";
}

/* CKA_MODULUS of obj: its length in bytes and its exact size in bits. */
static kv_result hsm_rsa_modulus_size(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                      size_t *bytes, unsigned *bits)
{
    uint8_t n[HSM_RSA_BYTES_MAX];
    CK_ATTRIBUTE a = {CKA_MODULUS, NULL, 0};
    CK_RV rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetAttributeValue (CKA_MODULUS)");
    KV_ENSURE(a.ulValueLen > 0 && a.ulValueLen <= sizeof(n), KV_ERR_INVALID_ARGUMENT,
              "the RSA modulus is %lu bytes; at most %u bits are supported",
              (unsigned long)a.ulValueLen, HSM_RSA_BITS_MAX);
    a.pValue = n;
    rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetAttributeValue (CKA_MODULUS)");
    size_t i = 0;
    while (i < a.ulValueLen && n[i] == 0)
        i++;
    unsigned b = (unsigned)(a.ulValueLen - i) * 8;
    for (uint8_t top = i < a.ulValueLen ? n[i] : 0; b > 0 && !(top & 0x80); top <<= 1)
        b--;
    *bytes = a.ulValueLen;
    *bits = b;
    return KV_SUCCESS;
}

static void hsm_destroy_quietly(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *obj,
                                bool *live)
{
    if (*live) (void)h->p11->C_DestroyObject(s, *obj);
    *live = false;
}

/* Classifies a failed C_UnwrapKey.  step names what was unwrapped. */
static kv_result hsm_byok_unwrap_failed(const hsm *h, CK_RV rv, const char *step,
                                        hsm_oaep_hash hash)
{
    switch (rv) {
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_ARGUMENTS_BAD:
        kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                     "token '%s' cannot unwrap %s with RSA-OAEP %s; it supports %s", h->label, step,
                     hsm_hash_name(hash),
                     hsm_supports_oaep(h, HSM_OAEP_SHA256) ? "SHA-1 and SHA-256" : "SHA-1 only");
        break;
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_TYPE_INCONSISTENT:
        kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                     "the import key cannot unwrap %s", step);
        break;
    case CKR_WRAPPED_KEY_LEN_RANGE:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                     "%s has a length the token refuses: the ciphertext is truncated or corrupted",
                     step);
        break;
    /* SoftHSM 2.6.1: a failed OAEP decoding or KWP integrity check is
     * CKR_GENERAL_ERROR; a PKCS#8 that is not an RSA key CKR_FUNCTION_FAILED.
     * Other modules answer WRAPPED_KEY_INVALID / ENCRYPTED_DATA_INVALID. */
    case CKR_GENERAL_ERROR:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_ENCRYPTED_DATA_INVALID:
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                     "%s does not unwrap: the file was made for another import key, or its "
                     "ciphertext is corrupted (integrity check failed)",
                     step);
        break;
    case CKR_FUNCTION_FAILED:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_DATA_INVALID:
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                     "%s is not an RSA private key in PKCS#8 form", step);
        break;
    default:
        return HSM_RV_FAIL(rv, "C_UnwrapKey");
    }
    kv_error_detail("C_UnwrapKey returned %s", hsm_rv_name(rv));
    return KV_FAILURE;
}

/* C_UnwrapKey of the target RSA private key with mech under key. */
static kv_result hsm_byok_unwrap_target(const hsm *h, CK_SESSION_HANDLE s, CK_MECHANISM *mech,
                                        CK_OBJECT_HANDLE key, uint8_t *wrapped, size_t len,
                                        bool token, const hsm_key_id *id, const char *label,
                                        hsm_oaep_hash hash, CK_OBJECT_HANDLE *out)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE, on_token = token ? CK_TRUE : CK_FALSE;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_RSA;
    hsm_key_id idc = *id;
    CK_ULONG label_len = label ? (CK_ULONG)strlen(label) : 0;
    char label_buf[HSM_KEY_LABEL_MAX + 1] = "";
    if (label) memcpy(label_buf, label, label_len);
    /* the template hsm_rsa_import_pkcs8 makes */
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},    {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &on_token, 1},         {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_SENSITIVE, HSM_TRUE, 1},      {CKA_EXTRACTABLE, HSM_FALSE, 1},
        {CKA_DECRYPT, HSM_TRUE, 1},        {CKA_UNWRAP, HSM_TRUE, 1},
        {CKA_SIGN, HSM_FALSE, 1},          {CKA_SIGN_RECOVER, HSM_FALSE, 1},
        {CKA_DERIVE, HSM_FALSE, 1},        {CKA_ID, idc.bytes, sizeof(idc.bytes)},
        {CKA_LABEL, label_buf, label_len},
    };
    CK_ULONG n = KV_ARRAY_LEN(t) - (label_len ? 0 : 1);
    CK_RV rv = h->p11->C_UnwrapKey(s, mech, key, wrapped, len, t, n, out);
    if (rv != CKR_OK) return hsm_byok_unwrap_failed(h, rv, "the wrapped key", hash);
    return KV_SUCCESS;
}

/* The fallback's first step: the ephemeral AES key as a session object. */
static kv_result hsm_byok_unwrap_aes(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE import,
                                     hsm_oaep_hash hash, uint8_t *wrapped, size_t len,
                                     CK_OBJECT_HANDLE *aes)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, HSM_FALSE, 1},      {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_SENSITIVE, HSM_TRUE, 1},   {CKA_EXTRACTABLE, HSM_FALSE, 1},
        {CKA_UNWRAP, HSM_TRUE, 1},      {CKA_WRAP, HSM_FALSE, 1},
        {CKA_ENCRYPT, HSM_FALSE, 1},    {CKA_DECRYPT, HSM_FALSE, 1},
        {CKA_SIGN, HSM_FALSE, 1},       {CKA_VERIFY, HSM_FALSE, 1},
        {CKA_DERIVE, HSM_FALSE, 1},
    };
    CK_RSA_PKCS_OAEP_PARAMS params;
    hsm_oaep_params(hash, &params);
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    CK_RV rv = h->p11->C_UnwrapKey(s, &mech, import, wrapped, len, t, KV_ARRAY_LEN(t), aes);
    if (rv != CKR_OK)
        return hsm_byok_unwrap_failed(h, rv, "the RSA part of the ciphertext (the AES key)", hash);
    /* The format carries AES-256.  A token that reports the length must say 32. */
    CK_ULONG value_len = 0;
    CK_ATTRIBUTE a = {CKA_VALUE_LEN, &value_len, sizeof(value_len)};
    rv = h->p11->C_GetAttributeValue(s, *aes, &a, 1);
    if (rv == CKR_OK && a.ulValueLen == sizeof(value_len) && value_len != 0 &&
        value_len != HSM_BYOK_AES_BITS / 8) {
        (void)h->p11->C_DestroyObject(s, *aes);
        KV_BAIL(KV_ERR_INVALID_ARGUMENT,
                "the RSA part of the ciphertext holds a %lu-bit AES key; the .byok format uses "
                "AES-256",
                (unsigned long)value_len * 8);
    }
    return KV_SUCCESS;
}

kv_result hsm_byok_unwrap(hsm *h, const hsm_key_id *import_id, hsm_oaep_hash hash,
                          const uint8_t *ct, size_t ct_len, unsigned required_bits,
                          hsm_byok_mode mode, const char *label, hsm_key_id *id, uint8_t **spki_der,
                          size_t *spki_len)
{
    KV_ENSURE(h != NULL && import_id != NULL && ct != NULL && spki_der != NULL &&
                  spki_len != NULL && (mode == HSM_BYOK_INSPECT || id != NULL),
              KV_ERR_INVALID_ARGUMENT, "hsm_byok_unwrap: missing argument");
    KV_ENSURE(hash == HSM_OAEP_SHA1 || hash == HSM_OAEP_SHA256, KV_ERR_INVALID_ARGUMENT,
              "unknown OAEP hash %d", (int)hash);
    KV_ENSURE(ct_len > 0 && ct_len <= HSM_BYOK_CT_MAX, KV_ERR_INVALID_ARGUMENT,
              "a BYOK ciphertext of %zu bytes is out of range", ct_len);
    KV_GUARD(hsm_key_label_check(label));
    KV_ENSURE(hash == HSM_OAEP_SHA1 || hsm_supports_oaep(h, HSM_OAEP_SHA256),
              KV_ERR_FAILED_PRECONDITION,
              "token '%s' cannot unwrap RSA-OAEP with SHA-256; it supports SHA-1 only: make the "
              ".byok file with SHA-1 OAEP (the published format, no oaep_hash field)",
              h->label);
    KV_ENSURE(h->has_rsa_aes_key_wrap || (h->has_oaep && h->has_aes_key_wrap_pad),
              KV_ERR_FAILED_PRECONDITION,
              "token '%s' has neither CKM_RSA_AES_KEY_WRAP nor CKM_RSA_PKCS_OAEP with "
              "CKM_AES_KEY_WRAP_PAD: it cannot import .byok files",
              h->label);

    kv_result r = KV_SUCCESS;
    char hex[2 * HSM_KEY_ID_LEN + 1];
    hsm_key_id_hex(import_id, hex);
    hsm_key_id new_id = {{0}};
    if (mode == HSM_BYOK_IMPORT) KV_GUARD(hsm_key_id_new(h, &new_id));
    uint8_t *buf = malloc(ct_len); /* C_UnwrapKey takes non-const bytes */
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(buf, ct, ct_len);
    CK_OBJECT_HANDLE import = 0, aes = 0, target = 0, pub = 0;
    bool have_aes = false, have_target = false, found = false;
    uint8_t *spki = NULL;
    size_t der_len = 0, k = 0;
    unsigned bits = 0;
    bool token = mode == HSM_BYOK_IMPORT;
    CK_SESSION_HANDLE s;

    KV_GUARD_GOTO(hsm_session_acquire(h, &s), r, done);
    KV_GUARD_GOTO(hsm_object_find(h, s, import_id, CKO_PRIVATE_KEY, &import, &found), r, out);
    KV_ENSURE_GOTO(found, r, out, KV_ERR_NOT_FOUND, "no import key %s in token '%s'", hex,
                   h->label);
    KV_GUARD_GOTO(hsm_rsa_modulus_size(h, s, import, &k, &bits), r, out);

    if (h->has_rsa_aes_key_wrap) {
        /* One call: the token splits, unwraps the AES key and discards it. */
        CK_RSA_PKCS_OAEP_PARAMS oaep;
        hsm_oaep_params(hash, &oaep);
        hsm_rsa_aes_key_wrap_params p = {HSM_BYOK_AES_BITS, &oaep};
        CK_MECHANISM mech = {CKM_RSA_AES_KEY_WRAP, &p, sizeof(p)};
        KV_GUARD_GOTO(hsm_byok_unwrap_target(h, s, &mech, import, buf, ct_len, token, &new_id,
                                             label, hash, &target),
                      r, out);
        have_target = true;
    } else {
        KV_ENSURE_GOTO(ct_len > k && (ct_len - k) % 8 == 0 && ct_len - k >= HSM_KWP_MIN, r, out,
                       KV_ERR_INVALID_ARGUMENT,
                       "the ciphertext is %zu bytes: it must be the %zu-byte RSA part and an AES "
                       "key wrap (a multiple of 8, at least %u bytes)",
                       ct_len, k, HSM_KWP_MIN);
        KV_GUARD_GOTO(hsm_byok_unwrap_aes(h, s, import, hash, buf, k, &aes), r, out);
        have_aes = true;
        CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
        r = hsm_byok_unwrap_target(h, s, &kwp, aes, buf + k, ct_len - k, token, &new_id, label,
                                   hash, &target);
        have_target = kv_ok(r);
        hsm_destroy_quietly(h, s, &aes, &have_aes); /* its only use is over */
        KV_GUARD_GOTO(r, r, out);
    }
    /* seed 001: the tenant key must be RSA of the required size */
    KV_GUARD_GOTO(hsm_rsa_modulus_size(h, s, target, &k, &bits), r, out);
    KV_ENSURE_GOTO(bits == required_bits, r, out, KV_ERR_INVALID_ARGUMENT,
                   "the key in the .byok file is RSA-%u; only RSA-%u keys are accepted", bits,
                   required_bits);
    KV_GUARD_GOTO(hsm_rsa_spki_from_token(h, s, target, &spki, &der_len), r, out);
    if (mode == HSM_BYOK_IMPORT) {
        /* the public key object next to it, as hsm_rsa_import_pkcs8 makes */
        uint8_t n[HSM_RSA_BYTES_MAX], e[64];
        CK_ATTRIBUTE t[] = {{CKA_MODULUS, n, sizeof(n)}, {CKA_PUBLIC_EXPONENT, e, sizeof(e)}};
        CK_RV rv = h->p11->C_GetAttributeValue(s, target, t, 2);
        if (rv != CKR_OK) {
            r = HSM_RV_FAIL(rv, "C_GetAttributeValue");
            goto out;
        }
        KV_GUARD_GOTO(hsm_rsa_public_create(h, s, &new_id, label, n, t[0].ulValueLen, e,
                                            t[1].ulValueLen, true, &pub),
                      r, out);
        *id = new_id;
    } else {
        hsm_destroy_quietly(h, s, &target, &have_target); /* inspected only */
    }
    *spki_der = spki;
    *spki_len = der_len;
    spki = NULL;
    have_target = false; /* kept */
out:
    hsm_destroy_quietly(h, s, &aes, &have_aes);
    hsm_destroy_quietly(h, s, &target, &have_target);
    /* Always a fresh session: closing it destroys any session object a
     * failed destroy could have left. */
    hsm_session_release(h, s, true);
done:
    if (kv_failed(r)) kv_error_context("importing a .byok key into token '%s'", h->label);
    free(spki);
    free(buf);
    return r;
}

/* --- the admin's side: wrap a key for an import key --- */

/* C_WrapKey into a malloc'd buffer (size query first). */
static kv_result hsm_wrap(const hsm *h, CK_SESSION_HANDLE s, CK_MECHANISM *mech,
                          CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key, const char *step,
                          uint8_t **out, size_t *out_len)
{
    CK_ULONG len = 0;
    CK_RV rv = h->p11->C_WrapKey(s, mech, wrapping, key, NULL, &len);
    if (rv == CKR_OK) {
        KV_ENSURE(len > 0 && len <= HSM_BYOK_CT_MAX, KV_ERR_UNAVAILABLE,
                  "the token reports a wrapped size of %lu bytes", (unsigned long)len);
        *out = malloc(len);
        KV_ENSURE(*out != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        rv = h->p11->C_WrapKey(s, mech, wrapping, key, *out, &len);
        if (rv != CKR_OK) {
            free(*out);
            *out = NULL;
        }
    }
    switch (rv) {
    case CKR_OK:
        *out_len = len;
        return KV_SUCCESS;
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_KEY_NOT_WRAPPABLE:
        KV_BAIL(KV_ERR_FAILED_PRECONDITION,
                "token '%s' does not let %s be wrapped (it must be extractable)", h->label, step);
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_ARGUMENTS_BAD:
        kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                     "token '%s' cannot wrap %s with the mechanism asked for (RSA-OAEP with "
                     "SHA-256 needs a token that has it; try SHA-1)",
                     h->label, step);
        kv_error_detail("C_WrapKey returned %s", hsm_rv_name(rv));
        return KV_FAILURE;
    default:
        return HSM_RV_FAIL(rv, "C_WrapKey");
    }
}

/* The import key from its SPKI: n and e bytes. */
static kv_result hsm_spki_rsa(const uint8_t *spki, size_t len, uint8_t **n, size_t *n_len,
                              uint8_t **e, size_t *e_len)
{
    const unsigned char *p = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)len);
    if (pkey == NULL || p != spki + len || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA ||
        EVP_PKEY_get_bits(pkey) < (int)HSM_RSA_BITS_MIN) {
        EVP_PKEY_free(pkey);
        hsm_openssl_detail();
        KV_BAIL(KV_ERR_INVALID_ARGUMENT,
                "the import key is not an RSA public key of %u bits or "
                "more",
                HSM_RSA_BITS_MIN);
    }
    kv_result r = hsm_rsa_public_bytes(pkey, n, n_len, e, e_len);
    EVP_PKEY_free(pkey);
    return r;
}

/* The key to wrap: RSA and extractable. */
static kv_result hsm_byok_source_key(const hsm *h, CK_SESSION_HANDLE s, const char *key_label,
                                     CK_OBJECT_HANDLE *key, unsigned *bits)
{
    KV_GUARD(hsm_object_find_label(h, s, key_label, CKO_PRIVATE_KEY, key));
    CK_KEY_TYPE kt = 0;
    CK_BBOOL extractable = CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_EXTRACTABLE, &extractable, sizeof(extractable)}};
    CK_RV rv = h->p11->C_GetAttributeValue(s, *key, t, 2);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetAttributeValue");
    KV_ENSURE(kt == CKK_RSA, KV_ERR_INVALID_ARGUMENT,
              "the key '%s' in token '%s' is not an RSA key", key_label, h->label);
    KV_ENSURE(extractable == CK_TRUE, KV_ERR_FAILED_PRECONDITION,
              "the key '%s' in token '%s' is not extractable, so no C_WrapKey can export it; "
              "make the key with CKA_EXTRACTABLE (vaultctl byok keygen does)",
              key_label, h->label);
    size_t bytes = 0;
    return hsm_rsa_modulus_size(h, s, *key, &bytes, bits);
}

/* The fallback wrap: a session AES-256 key wraps the target (KWP), the
 * import key wraps the AES key (OAEP); ct = rsa part || kwp part. */
static kv_result hsm_byok_wrap_two_step(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                                        CK_OBJECT_HANDLE key, hsm_oaep_hash hash, uint8_t **ct,
                                        size_t *ct_len)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG value_len = HSM_BYOK_AES_BITS / 8;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
        {CKA_TOKEN, HSM_FALSE, 1},
        {CKA_SENSITIVE, HSM_TRUE, 1},
        {CKA_EXTRACTABLE, HSM_TRUE, 1},
        {CKA_WRAP, HSM_TRUE, 1},
        {CKA_UNWRAP, HSM_FALSE, 1},
        {CKA_ENCRYPT, HSM_FALSE, 1},
        {CKA_DECRYPT, HSM_FALSE, 1},
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE aes = 0;
    CK_RV rv = h->p11->C_GenerateKey(s, &gen, t, KV_ARRAY_LEN(t), &aes);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GenerateKey (AES-256)");
    uint8_t *kwp = NULL, *rsa = NULL;
    size_t kwp_len = 0, rsa_len = 0;
    CK_MECHANISM kwp_mech = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS oaep;
    hsm_oaep_params(hash, &oaep);
    CK_MECHANISM oaep_mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    kv_result r = hsm_wrap(h, s, &kwp_mech, aes, key, "the key", &kwp, &kwp_len);
    if (kv_ok(r)) r = hsm_wrap(h, s, &oaep_mech, pub, aes, "the AES key", &rsa, &rsa_len);
    (void)h->p11->C_DestroyObject(s, aes);
    if (kv_ok(r)) {
        *ct = malloc(rsa_len + kwp_len);
        if (*ct == NULL) {
            r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
        } else {
            memcpy(*ct, rsa, rsa_len);
            memcpy(*ct + rsa_len, kwp, kwp_len);
            *ct_len = rsa_len + kwp_len;
        }
    }
    free(kwp);
    free(rsa);
    return r;
}

kv_result hsm_byok_wrap(hsm *h, const char *key_label, const uint8_t *import_spki,
                        size_t import_spki_len, hsm_oaep_hash hash, uint8_t **ct, size_t *ct_len,
                        unsigned *key_bits)
{
    KV_ENSURE(h != NULL && key_label != NULL && import_spki != NULL && ct != NULL &&
                  ct_len != NULL && key_bits != NULL,
              KV_ERR_INVALID_ARGUMENT, "hsm_byok_wrap: missing argument");
    KV_ENSURE(hash == HSM_OAEP_SHA1 || hash == HSM_OAEP_SHA256, KV_ERR_INVALID_ARGUMENT,
              "unknown OAEP hash %d", (int)hash);
    KV_ENSURE(h->has_rsa_aes_key_wrap || (h->has_oaep && h->has_aes_key_wrap_pad),
              KV_ERR_FAILED_PRECONDITION,
              "token '%s' has neither CKM_RSA_AES_KEY_WRAP nor CKM_RSA_PKCS_OAEP with "
              "CKM_AES_KEY_WRAP_PAD: it cannot make .byok files",
              h->label);
    uint8_t *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    KV_GUARD(hsm_spki_rsa(import_spki, import_spki_len, &n, &n_len, &e, &e_len));
    kv_result r = KV_SUCCESS;
    CK_OBJECT_HANDLE key = 0, pub = 0;
    bool have_pub = false;
    CK_SESSION_HANDLE s;
    KV_GUARD_GOTO(hsm_session_acquire(h, &s), r, done);
    KV_GUARD_GOTO(hsm_byok_source_key(h, s, key_label, &key, key_bits), r, out);
    KV_GUARD_GOTO(hsm_rsa_public_create(h, s, NULL, NULL, n, n_len, e, e_len, false, &pub), r, out);
    have_pub = true;
    if (h->has_rsa_aes_key_wrap) {
        CK_RSA_PKCS_OAEP_PARAMS oaep;
        hsm_oaep_params(hash, &oaep);
        hsm_rsa_aes_key_wrap_params p = {HSM_BYOK_AES_BITS, &oaep};
        CK_MECHANISM mech = {CKM_RSA_AES_KEY_WRAP, &p, sizeof(p)};
        r = hsm_wrap(h, s, &mech, pub, key, "the key", ct, ct_len);
    } else {
        r = hsm_byok_wrap_two_step(h, s, pub, key, hash, ct, ct_len);
    }
out:
    hsm_destroy_quietly(h, s, &pub, &have_pub);
    hsm_session_release(h, s, true); /* session objects go with the session */
done:
    if (kv_failed(r)) kv_error_context("wrapping key '%s' in token '%s'", key_label, h->label);
    free(n);
    free(e);
    return r;
}
