/*
 * audit_keys.c: the token side of the audit log: an HMAC-SHA256 key that
 * authenticates every record, an RSA key pair whose private half signs
 * checkpoints, and a private data object that anchors the latest checkpoint.
 *
 * The HMAC key and the signing key are CKA_SENSITIVE, never extractable and
 * usable for signing/verifying only.  Nothing here may log or return key
 * material; only MACs, signatures and public keys leave the token.
 */
#include "hsm_internal.h"

#include <stdlib.h>
#include <string.h>

/* Finds the object of class cls with this id (cached handle for the HMAC key,
 * which is used on every record). */
static kv_result hsm_audit_object(const hsm *h, CK_SESSION_HANDLE s, const hsm_key_id *id,
                                  CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj)
{
    bool found = false;
    KV_GUARD(hsm_object_find(h, s, id, cls, obj, &found));
    char hex[2 * HSM_KEY_ID_LEN + 1];
    hsm_key_id_hex(id, hex);
    KV_ENSURE(found, KV_ERR_NOT_FOUND, "token '%s' has no %s with id %s", h->label,
              cls == CKO_SECRET_KEY ? "secret key" : "private/public key", hex);
    return KV_SUCCESS;
}

kv_result hsm_hmac_generate(hsm *h, const char *label, hsm_key_id *id)
{
    KV_ENSURE(h != NULL && id != NULL, KV_ERR_INVALID_ARGUMENT,
              "hsm_hmac_generate: missing argument");
    KV_GUARD(hsm_key_label_check(label));
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG value_len = HSM_HMAC_BYTES;
    hsm_key_id new_id;
    KV_GUARD(hsm_key_id_new(h, &new_id));
    char label_buf[HSM_KEY_LABEL_MAX + 1] = "";
    CK_ULONG label_len = label ? (CK_ULONG)strlen(label) : 0;
    if (label) memcpy(label_buf, label, label_len);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, HSM_TRUE, 1},
        {CKA_PRIVATE, HSM_TRUE, 1},
        {CKA_SENSITIVE, HSM_TRUE, 1},
        {CKA_EXTRACTABLE, HSM_FALSE, 1},
        {CKA_SIGN, HSM_TRUE, 1},
        {CKA_VERIFY, HSM_TRUE, 1},
        {CKA_ENCRYPT, HSM_FALSE, 1},
        {CKA_DECRYPT, HSM_FALSE, 1},
        {CKA_WRAP, HSM_FALSE, 1},
        {CKA_UNWRAP, HSM_FALSE, 1},
        {CKA_DERIVE, HSM_FALSE, 1},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
        {CKA_ID, new_id.bytes, sizeof(new_id.bytes)},
        {CKA_LABEL, label_buf, label_len},
    };
    CK_ULONG n = KV_ARRAY_LEN(t) - (label_len ? 0 : 1);
    CK_MECHANISM mech = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE key;
    CK_SESSION_HANDLE s;
    KV_GUARD(hsm_session_acquire(h, &s));
    CK_RV rv = h->p11->C_GenerateKey(s, &mech, t, n, &key);
    hsm_session_release(h, s, false);
    if (rv != CKR_OK) {
        HSM_RV_FAIL(rv, "C_GenerateKey");
        kv_error_context("generating the audit HMAC key in token '%s'", h->label);
        return KV_FAILURE;
    }
    *id = new_id;
    return KV_SUCCESS;
}

kv_result hsm_hmac_sha256_many(hsm *h, const hsm_key_id *id, const uint8_t *in, size_t n,
                               size_t item_len, uint8_t *macs)
{
    KV_ENSURE(h != NULL && id != NULL && (in != NULL || n == 0) && (macs != NULL || n == 0),
              KV_ERR_INVALID_ARGUMENT, "hsm_hmac_sha256_many: missing argument");
    if (n == 0) return KV_SUCCESS;
    kv_result r = KV_SUCCESS;
    CK_MECHANISM mech = {CKM_SHA256_HMAC, NULL, 0};
    CK_OBJECT_HANDLE key = 0;
    CK_SESSION_HANDLE s;
    KV_GUARD(hsm_session_acquire(h, &s));
    for (size_t i = 0; i < n; i++) {
        bool cached = hsm_handle_lookup(h, id, &key);
        CK_RV rv = CKR_KEY_HANDLE_INVALID;
        if (cached) rv = h->p11->C_SignInit(s, &mech, key);
        if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
            if (cached) hsm_handle_forget(h, id);
            KV_GUARD_GOTO(hsm_audit_object(h, s, id, CKO_SECRET_KEY, &key), r, out);
            rv = h->p11->C_SignInit(s, &mech, key);
            if (rv == CKR_OK) hsm_handle_remember(h, id, key);
        }
        if (rv != CKR_OK) {
            r = HSM_RV_FAIL(rv, "C_SignInit(CKM_SHA256_HMAC)");
            goto out;
        }
        CK_ULONG mac_len = HSM_HMAC_BYTES;
        rv = h->p11->C_Sign(s, (CK_BYTE_PTR)(uintptr_t)(in + i * item_len), (CK_ULONG)item_len,
                            macs + i * HSM_HMAC_BYTES, &mac_len);
        if (rv != CKR_OK || mac_len != HSM_HMAC_BYTES) {
            r = HSM_RV_FAIL(rv != CKR_OK ? rv : CKR_GENERAL_ERROR, "C_Sign(CKM_SHA256_HMAC)");
            goto out;
        }
    }
out:
    hsm_session_release(h, s, kv_failed(r));
    return r;
}

struct hsm_mac_session {
    hsm *h;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key, token_key;
};

kv_result hsm_mac_session_open(hsm *h, const hsm_key_id *id, hsm_mac_session **out)
{
    KV_ENSURE(h != NULL && id != NULL && out != NULL, KV_ERR_INVALID_ARGUMENT,
              "hsm_mac_session_open: missing argument");
    hsm_mac_session *m = calloc(1, sizeof(*m));
    KV_ENSURE(m != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    m->h = h;
    CK_RV rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION, NULL, NULL, &m->s);
    if (rv != CKR_OK) {
        free(m);
        return HSM_RV_FAIL(rv, "C_OpenSession");
    }
    kv_result r = hsm_audit_object(h, m->s, id, CKO_SECRET_KEY, &m->token_key);
    if (kv_failed(r)) {
        (void)h->p11->C_CloseSession(m->s);
        free(m);
        return r;
    }
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_TOKEN, HSM_FALSE, 1}, {CKA_ID, NULL, 0}};
    rv = h->p11->C_CopyObject(m->s, m->token_key, t, KV_ARRAY_LEN(t), &m->key);
    if (rv != CKR_OK) m->key = m->token_key; /* not copyable here: the token object serves */
    *out = m;
    return KV_SUCCESS;
}

kv_result hsm_mac_session_many(hsm_mac_session *m, const uint8_t *in, size_t n, size_t item_len,
                               uint8_t *macs)
{
    KV_ENSURE(m != NULL && (in != NULL || n == 0) && (macs != NULL || n == 0),
              KV_ERR_INVALID_ARGUMENT, "hsm_mac_session_many: missing argument");
    CK_MECHANISM mech = {CKM_SHA256_HMAC, NULL, 0};
    for (size_t i = 0; i < n; i++) {
        /* The first MAC of each call on the token object itself: a key
         * deleted from the token stops the stream here, copy or not. */
        CK_RV rv = m->h->p11->C_SignInit(m->s, &mech, i == 0 ? m->token_key : m->key);
        if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_SignInit(CKM_SHA256_HMAC)");
        CK_ULONG mac_len = HSM_HMAC_BYTES;
        rv = m->h->p11->C_Sign(m->s, (CK_BYTE_PTR)(uintptr_t)(in + i * item_len),
                               (CK_ULONG)item_len, macs + i * HSM_HMAC_BYTES, &mac_len);
        if (rv != CKR_OK || mac_len != HSM_HMAC_BYTES)
            return HSM_RV_FAIL(rv != CKR_OK ? rv : CKR_GENERAL_ERROR, "C_Sign(CKM_SHA256_HMAC)");
    }
    return KV_SUCCESS;
}

void hsm_mac_session_close(hsm_mac_session *m)
{
    if (m == NULL) return;
    (void)m->h->p11->C_CloseSession(m->s); /* destroys the session copy */
    free(m);
}

kv_result hsm_hmac_sha256(hsm *h, const hsm_key_id *id, const uint8_t *data, size_t len,
                          uint8_t mac[HSM_HMAC_BYTES])
{
    KV_ENSURE(data != NULL || len == 0, KV_ERR_INVALID_ARGUMENT, "hsm_hmac_sha256: no data");
    static const uint8_t empty[1];
    return hsm_hmac_sha256_many(h, id, len ? data : empty, 1, len, mac);
}

kv_result hsm_sign_key_generate(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                                uint8_t **spki_der, size_t *spki_len)
{
    return hsm_rsa_generate_usage(h, label, bits, HSM_RSA_USE_SIGN, id, spki_der, spki_len);
}

kv_result hsm_rsa_sign_sha256(hsm *h, const hsm_key_id *id, const uint8_t *data, size_t len,
                              uint8_t **sig, size_t *sig_len)
{
    KV_ENSURE(h != NULL && id != NULL && (data != NULL || len == 0) && sig != NULL &&
                  sig_len != NULL,
              KV_ERR_INVALID_ARGUMENT, "hsm_rsa_sign_sha256: missing argument");
    kv_result r = KV_SUCCESS;
    CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_OBJECT_HANDLE key = 0;
    CK_SESSION_HANDLE s;
    uint8_t *buf = malloc(HSM_RSA_BYTES_MAX);
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    KV_GUARD_GOTO(hsm_session_acquire(h, &s), r, done);
    KV_GUARD_GOTO(hsm_audit_object(h, s, id, CKO_PRIVATE_KEY, &key), r, out);
    CK_RV rv = h->p11->C_SignInit(s, &mech, key);
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_SignInit(CKM_SHA256_RSA_PKCS)");
        goto out;
    }
    CK_ULONG n = HSM_RSA_BYTES_MAX;
    rv = h->p11->C_Sign(s, (CK_BYTE_PTR)(uintptr_t)data, (CK_ULONG)len, buf, &n);
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_Sign(CKM_SHA256_RSA_PKCS)");
        goto out;
    }
    *sig = buf;
    *sig_len = n;
    buf = NULL;
out:
    hsm_session_release(h, s, kv_failed(r));
done:
    free(buf);
    return r;
}

kv_result hsm_public_key_spki(hsm *h, const hsm_key_id *id, uint8_t **spki_der, size_t *spki_len)
{
    KV_ENSURE(h != NULL && id != NULL && spki_der != NULL && spki_len != NULL,
              KV_ERR_INVALID_ARGUMENT, "hsm_public_key_spki: missing argument");
    CK_OBJECT_HANDLE pub = 0;
    CK_SESSION_HANDLE s;
    KV_GUARD(hsm_session_acquire(h, &s));
    kv_result r = hsm_audit_object(h, s, id, CKO_PUBLIC_KEY, &pub);
    if (kv_ok(r)) r = hsm_rsa_spki_from_token(h, s, pub, spki_der, spki_len);
    hsm_session_release(h, s, kv_failed(r));
    return r;
}

/* The data objects labelled label (at most cap). */
static kv_result hsm_data_find(const hsm *h, CK_SESSION_HANDLE s, const char *label,
                               CK_OBJECT_HANDLE *objs, CK_ULONG cap, CK_ULONG *n)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)(uintptr_t)label, (CK_ULONG)strlen(label)},
    };
    CK_RV rv = h->p11->C_FindObjectsInit(s, t, KV_ARRAY_LEN(t));
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_FindObjectsInit");
    rv = h->p11->C_FindObjects(s, objs, cap, n);
    CK_RV rv2 = h->p11->C_FindObjectsFinal(s);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_FindObjects");
    if (rv2 != CKR_OK) return HSM_RV_FAIL(rv2, "C_FindObjectsFinal");
    return KV_SUCCESS;
}

#define HSM_DATA_COPIES 8

kv_result hsm_data_put(hsm *h, const char *label, const uint8_t *value, size_t len)
{
    KV_ENSURE(h != NULL && label != NULL && label[0] != '\0' && value != NULL && len > 0 &&
                  len <= HSM_DATA_MAX,
              KV_ERR_INVALID_ARGUMENT, "hsm_data_put: bad argument");
    KV_GUARD(hsm_key_label_check(label));
    CK_BBOOL yes = CK_TRUE;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE old[HSM_DATA_COPIES], obj = 0;
    CK_ULONG n_old = 0;
    KV_GUARD(hsm_session_acquire(h, &s));
    /* A token's CKA_VALUE is read-only after creation (SoftHSM): create the
     * new object, then destroy the old ones, so a crash in between leaves
     * two (hsm_data_get takes the highest), never none. */
    kv_result r = hsm_data_find(h, s, label, old, HSM_DATA_COPIES, &n_old);
    if (kv_ok(r)) {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_TOKEN, HSM_TRUE, 1},
            {CKA_PRIVATE, HSM_TRUE, 1},
            {CKA_LABEL, (void *)(uintptr_t)label, (CK_ULONG)strlen(label)},
            {CKA_VALUE, (void *)(uintptr_t)value, (CK_ULONG)len},
        };
        CK_RV rv = h->p11->C_CreateObject(s, t, KV_ARRAY_LEN(t), &obj);
        if (rv != CKR_OK) r = HSM_RV_FAIL(rv, "C_CreateObject(CKO_DATA)");
    }
    for (CK_ULONG i = 0; kv_ok(r) && i < n_old; i++) {
        CK_RV rv = h->p11->C_DestroyObject(s, old[i]);
        if (rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID)
            r = HSM_RV_FAIL(rv, "C_DestroyObject(CKO_DATA)");
    }
    hsm_session_release(h, s, kv_failed(r));
    return r;
}

kv_result hsm_data_get(hsm *h, const char *label, uint8_t *value, size_t cap, size_t *len)
{
    KV_ENSURE(h != NULL && label != NULL && value != NULL && len != NULL && cap <= HSM_DATA_MAX,
              KV_ERR_INVALID_ARGUMENT, "hsm_data_get: bad argument");
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE objs[HSM_DATA_COPIES];
    CK_ULONG n = 0;
    uint8_t buf[HSM_DATA_MAX];
    size_t best = 0;
    bool found = false;
    KV_GUARD(hsm_session_acquire(h, &s));
    kv_result r = hsm_data_find(h, s, label, objs, HSM_DATA_COPIES, &n);
    for (CK_ULONG i = 0; kv_ok(r) && i < n; i++) {
        CK_ATTRIBUTE t[] = {{CKA_VALUE, buf, (CK_ULONG)cap}};
        CK_RV rv = h->p11->C_GetAttributeValue(s, objs[i], t, 1);
        if (rv != CKR_OK) {
            r = HSM_RV_FAIL(rv, "C_GetAttributeValue(CKA_VALUE)");
            break;
        }
        size_t got = t[0].ulValueLen;
        int cmp = found ? memcmp(buf, value, got < best ? got : best) : 1;
        if (!found || cmp > 0 || (cmp == 0 && got > best)) {
            memcpy(value, buf, got);
            best = got;
            found = true;
        }
    }
    hsm_session_release(h, s, kv_failed(r));
    KV_GUARD(r);
    KV_ENSURE(found, KV_ERR_NOT_FOUND, "token '%s' has no data object labelled '%s'", h->label,
              label);
    *len = best;
    return KV_SUCCESS;
}
