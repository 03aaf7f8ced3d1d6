/*
 * object.c: token objects by CKA_ID: lookup, existence, destruction, the
 * audit listing, key ids and token randomness.
 *
 * Object handles live only inside one call: every call finds its objects by
 * CKA_ID again.  Must never read a sensitive attribute (the listing asks only
 * for public attributes and flags).
 */
#include "hsm_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal: up to max handles. */
static kv_result hsm_objects_find(const hsm *h, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                                  CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *found)
{
    CK_RV rv = h->p11->C_FindObjectsInit(s, tmpl, n);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_FindObjectsInit");
    rv = h->p11->C_FindObjects(s, objs, max, found);
    CK_RV rv_final = h->p11->C_FindObjectsFinal(s);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_FindObjects");
    if (rv_final != CKR_OK) return HSM_RV_FAIL(rv_final, "C_FindObjectsFinal");
    return KV_SUCCESS;
}

bool hsm_handle_lookup(const hsm *h, const hsm_key_id *id, CK_OBJECT_HANDLE *out)
{
    hsm_handle_cache *c = h->handles;
    bool hit = false;
    pthread_mutex_lock(&c->mu);
    for (unsigned i = 0; i < HSM_HANDLE_CACHE && !hit; i++) {
        if (c->e[i].used && memcmp(c->e[i].id.bytes, id->bytes, HSM_KEY_ID_LEN) == 0) {
            *out = c->e[i].handle;
            hit = true;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void hsm_handle_remember(const hsm *h, const hsm_key_id *id, CK_OBJECT_HANDLE handle)
{
    hsm_handle_cache *c = h->handles;
    pthread_mutex_lock(&c->mu);
    unsigned slot = c->next;
    for (unsigned i = 0; i < HSM_HANDLE_CACHE; i++)
        if (c->e[i].used && memcmp(c->e[i].id.bytes, id->bytes, HSM_KEY_ID_LEN) == 0) slot = i;
    if (slot == c->next) c->next = (c->next + 1) % HSM_HANDLE_CACHE;
    c->e[slot].id = *id;
    c->e[slot].handle = handle;
    c->e[slot].used = true;
    pthread_mutex_unlock(&c->mu);
}

void hsm_handle_forget(const hsm *h, const hsm_key_id *id)
{
    hsm_handle_cache *c = h->handles;
    pthread_mutex_lock(&c->mu);
    for (unsigned i = 0; i < HSM_HANDLE_CACHE; i++)
        if (c->e[i].used && memcmp(c->e[i].id.bytes, id->bytes, HSM_KEY_ID_LEN) == 0)
            c->e[i].used = false;
    pthread_mutex_unlock(&c->mu);
}

kv_result hsm_object_find(const hsm *h, CK_SESSION_HANDLE s, const hsm_key_id *id,
                          CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj, bool *found)
{
    hsm_key_id idc = *id; /* the template needs non-const pointers */
    CK_ATTRIBUTE tmpl[] = {
        {CKA_ID, idc.bytes, sizeof(idc.bytes)},
        {CKA_CLASS, &cls, sizeof(cls)},
    };
    CK_ULONG n = 0;
    KV_GUARD(hsm_objects_find(h, s, tmpl, KV_ARRAY_LEN(tmpl), obj, 1, &n));
    *found = n > 0;
    return KV_SUCCESS;
}

kv_result hsm_object_find_label(const hsm *h, CK_SESSION_HANDLE s, const char *label,
                                CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj)
{
    KV_ENSURE(label != NULL && label[0] != '\0' && strlen(label) < 256, KV_ERR_INVALID_ARGUMENT,
              "a key label of 1 to 255 bytes is required");
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", label);
    CK_ATTRIBUTE tmpl[] = {
        {CKA_LABEL, buf, (CK_ULONG)strlen(buf)},
        {CKA_CLASS, &cls, sizeof(cls)},
    };
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    KV_GUARD(hsm_objects_find(h, s, tmpl, KV_ARRAY_LEN(tmpl), found, 2, &n));
    KV_ENSURE(n > 0, KV_ERR_NOT_FOUND, "token '%s' has no %s labelled '%s'", h->label,
              cls == CKO_PRIVATE_KEY ? "private key" : "object", label);
    KV_ENSURE(n == 1, KV_ERR_FAILED_PRECONDITION,
              "token '%s' has several %s labelled '%s'; give each key a label of its own", h->label,
              cls == CKO_PRIVATE_KEY ? "private keys" : "objects", label);
    *obj = found[0];
    return KV_SUCCESS;
}

kv_result hsm_key_exists(hsm *h, const hsm_key_id *id, bool *exists)
{
    KV_ENSURE(h != NULL && id != NULL && exists != NULL, KV_ERR_INVALID_ARGUMENT,
              "hsm_key_exists: missing argument");
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE obj;
    bool found = false;
    KV_GUARD(hsm_session_acquire(h, &s));
    kv_result r = hsm_object_find(h, s, id, CKO_PRIVATE_KEY, &obj, &found);
    hsm_session_release(h, s, kv_failed(r));
    KV_GUARD(r);
    *exists = found;
    return KV_SUCCESS;
}

/* Destroying is repeated until no object with the id is left, so a key pair
 * half destroyed by a crash is finished off by the next call. */
#define HSM_DESTROY_BATCH 32
#define HSM_DESTROY_ROUNDS 64

kv_result hsm_key_destroy(hsm *h, const hsm_key_id *id)
{
    KV_ENSURE(h != NULL && id != NULL, KV_ERR_INVALID_ARGUMENT,
              "hsm_key_destroy: missing argument");
    kv_result r = KV_SUCCESS;
    hsm_key_id idc = *id;
    CK_ATTRIBUTE tmpl[] = {{CKA_ID, idc.bytes, sizeof(idc.bytes)}};
    CK_SESSION_HANDLE s;
    char hex[2 * HSM_KEY_ID_LEN + 1];
    hsm_key_id_hex(id, hex);

    hsm_handle_forget(h, id);
    KV_GUARD(hsm_session_acquire(h, &s));
    for (int round = 0; round < HSM_DESTROY_ROUNDS; round++) {
        CK_OBJECT_HANDLE objs[HSM_DESTROY_BATCH];
        CK_ULONG n = 0;
        KV_GUARD_GOTO(hsm_objects_find(h, s, tmpl, KV_ARRAY_LEN(tmpl), objs, HSM_DESTROY_BATCH, &n),
                      r, out);
        if (n == 0) goto out;
        for (CK_ULONG i = 0; i < n; i++) {
            CK_RV rv = h->p11->C_DestroyObject(s, objs[i]);
            /* Gone already (another thread destroyed it): that is the goal. */
            if (rv == CKR_OK || rv == CKR_OBJECT_HANDLE_INVALID) continue;
            r = HSM_RV_FAIL(rv, "C_DestroyObject");
            goto out;
        }
    }
    KV_BAIL_GOTO(r, out, KV_ERR_UNAVAILABLE, "objects with id %s keep reappearing", hex);
out:
    if (kv_failed(r)) kv_error_context("destroying key %s", hex);
    hsm_session_release(h, s, kv_failed(r));
    return r;
}

kv_result hsm_random(hsm *h, uint8_t *out, size_t n)
{
    KV_ENSURE(h != NULL && (out != NULL || n == 0), KV_ERR_INVALID_ARGUMENT,
              "hsm_random: missing argument");
    if (n == 0) return KV_SUCCESS;
    CK_SESSION_HANDLE s;
    KV_GUARD(hsm_session_acquire(h, &s));
    CK_RV rv = h->p11->C_GenerateRandom(s, out, n);
    hsm_session_release(h, s, false);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GenerateRandom");
    return KV_SUCCESS;
}

kv_result hsm_key_id_new(hsm *h, hsm_key_id *id)
{
    KV_ENSURE(id != NULL, KV_ERR_INVALID_ARGUMENT, "hsm_key_id_new: missing argument");
    return hsm_random(h, id->bytes, sizeof(id->bytes));
}

void hsm_key_id_hex(const hsm_key_id *id, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < HSM_KEY_ID_LEN; i++) {
        out[2 * i] = digits[id->bytes[i] >> 4];
        out[2 * i + 1] = digits[id->bytes[i] & 0x0f];
    }
    out[2 * HSM_KEY_ID_LEN] = '\0';
}

/* --- listing --- */

/* Reads a variable-length public attribute, truncated to cap; *len is 0 when
 * the object has no such attribute. */
static kv_result hsm_attr_bytes(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                CK_ATTRIBUTE_TYPE type, void *buf, size_t cap, size_t *len,
                                size_t *full_len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    *len = 0;
    if (full_len) *full_len = 0;
    CK_RV rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE) return KV_SUCCESS;
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetAttributeValue");
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0) return KV_SUCCESS;
    if (full_len) *full_len = a.ulValueLen;
    uint8_t *tmp = malloc(a.ulValueLen);
    KV_ENSURE(tmp != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    a.pValue = tmp;
    rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) {
        free(tmp);
        return HSM_RV_FAIL(rv, "C_GetAttributeValue");
    }
    size_t take = a.ulValueLen < cap ? a.ulValueLen : cap;
    if (buf != NULL) memcpy(buf, tmp, take);
    *len = take;
    free(tmp);
    return KV_SUCCESS;
}

static const char *hsm_class_name(CK_OBJECT_CLASS c)
{
    switch (c) {
    case CKO_PRIVATE_KEY:
        return "private-key";
    case CKO_PUBLIC_KEY:
        return "public-key";
    case CKO_SECRET_KEY:
        return "secret-key";
    case CKO_CERTIFICATE:
        return "certificate";
    default:
        return "other";
    }
}

static const char *hsm_key_type_name(CK_KEY_TYPE k)
{
    switch (k) {
    case CKK_RSA:
        return "rsa";
    case CKK_AES:
        return "aes";
    case CKK_EC:
        return "ec";
    case CKK_GENERIC_SECRET:
        return "generic-secret";
    default:
        return "other";
    }
}

/* Fills info from obj.  *gone is set when the object vanished meanwhile. */
static kv_result hsm_object_describe(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                     hsm_object_info *info, bool *gone)
{
    CK_OBJECT_CLASS cls = (CK_OBJECT_CLASS)-1;
    CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
    CK_ULONG modulus_bits = 0, value_len = 0;
    enum { SENS, EXTR, NEVER, ALWAYS, PRIV, DEC, ENC, SIGN, VERIFY, UNWRAP, WRAP, DERIVE, NBOOL };
    CK_BBOOL b[NBOOL];
    memset(b, 0, sizeof(b));
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_MODULUS_BITS, &modulus_bits, sizeof(modulus_bits)},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
        {CKA_SENSITIVE, &b[SENS], 1},
        {CKA_EXTRACTABLE, &b[EXTR], 1},
        {CKA_NEVER_EXTRACTABLE, &b[NEVER], 1},
        {CKA_ALWAYS_SENSITIVE, &b[ALWAYS], 1},
        {CKA_PRIVATE, &b[PRIV], 1},
        {CKA_DECRYPT, &b[DEC], 1},
        {CKA_ENCRYPT, &b[ENC], 1},
        {CKA_SIGN, &b[SIGN], 1},
        {CKA_VERIFY, &b[VERIFY], 1},
        {CKA_UNWRAP, &b[UNWRAP], 1},
        {CKA_WRAP, &b[WRAP], 1},
        {CKA_DERIVE, &b[DERIVE], 1},
    };
    *gone = false;
    memset(info, 0, sizeof(*info));
    /* PKCS#11 2.40 sec. 5.7: with TYPE_INVALID/SENSITIVE every other attribute
     * is still returned and the missing ones get CK_UNAVAILABLE_INFORMATION. */
    CK_RV rv = h->p11->C_GetAttributeValue(s, obj, t, KV_ARRAY_LEN(t));
    if (rv == CKR_OBJECT_HANDLE_INVALID) {
        *gone = true;
        return KV_SUCCESS;
    }
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
        return HSM_RV_FAIL(rv, "C_GetAttributeValue");
    bool has[KV_ARRAY_LEN(t)];
    for (size_t i = 0; i < KV_ARRAY_LEN(t); i++)
        has[i] = t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION;

    bool is_key = false;
    snprintf(info->object_class, sizeof(info->object_class), "%s",
             has[0] ? hsm_class_name(cls) : "other");
    if (has[0]) is_key = cls == CKO_PRIVATE_KEY || cls == CKO_PUBLIC_KEY || cls == CKO_SECRET_KEY;
    snprintf(info->key_type, sizeof(info->key_type), "%s",
             is_key && has[1] ? hsm_key_type_name(kt) : "other");
    bool *flags[NBOOL] = {
        [SENS] = &info->sensitive,          [EXTR] = &info->extractable,
        [NEVER] = &info->never_extractable, [ALWAYS] = &info->always_sensitive,
        [PRIV] = &info->is_private,         [DEC] = &info->can_decrypt,
        [ENC] = &info->can_encrypt,         [SIGN] = &info->can_sign,
        [VERIFY] = &info->can_verify,       [UNWRAP] = &info->can_unwrap,
        [WRAP] = &info->can_wrap,           [DERIVE] = &info->can_derive,
    };
    for (int i = 0; i < NBOOL; i++)
        *flags[i] = has[4 + i] && b[i] == CK_TRUE;

    if (is_key && has[1] && kt == CKK_RSA) {
        if (has[2]) {
            info->bits = (unsigned)modulus_bits;
        } else {
            size_t mlen = 0, full = 0;
            KV_GUARD(hsm_attr_bytes(h, s, obj, CKA_MODULUS, NULL, 0, &mlen, &full));
            info->bits = (unsigned)(full * 8);
        }
    } else if (is_key && has[3]) {
        info->bits = (unsigned)(value_len * 8);
    }

    size_t len = 0;
    KV_GUARD(
        hsm_attr_bytes(h, s, obj, CKA_LABEL, info->label, sizeof(info->label) - 1, &len, NULL));
    info->label[len] = '\0';
    KV_GUARD(hsm_attr_bytes(h, s, obj, CKA_ID, info->id, sizeof(info->id), &info->id_len, NULL));
    return KV_SUCCESS;
}

/* The audit listing needs every handle first: C_GetAttributeValue may not run
 * while a find operation is active on the same session. */
static kv_result hsm_objects_all(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE **objs,
                                 size_t *count)
{
    kv_result r = KV_SUCCESS;
    CK_OBJECT_HANDLE *list = NULL;
    size_t n = 0, cap = 0;
    /* Token objects only: session objects (the audit writer's key copy,
     * transient keys of an import) are not the token's contents. */
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE on_token = {CKA_TOKEN, HSM_TRUE, 1};
    CK_RV rv = h->p11->C_FindObjectsInit(s, &on_token, 1);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_FindObjectsInit");
    for (;;) {
        if (cap - n < 64) {
            size_t ncap = cap ? cap * 2 : 128;
            CK_OBJECT_HANDLE *grown = realloc(list, ncap * sizeof(*list));
            KV_ENSURE_GOTO(grown != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
            list = grown;
            cap = ncap;
        }
        CK_ULONG got = 0;
        rv = h->p11->C_FindObjects(s, list + n, 64, &got);
        if (rv != CKR_OK) {
            r = HSM_RV_FAIL(rv, "C_FindObjects");
            goto out;
        }
        if (got == 0) break;
        n += got;
    }
out:
    rv = h->p11->C_FindObjectsFinal(s);
    if (kv_ok(r) && rv != CKR_OK) r = HSM_RV_FAIL(rv, "C_FindObjectsFinal");
    if (kv_failed(r)) {
        free(list);
        return r;
    }
    *objs = list;
    *count = n;
    return r;
}

kv_result hsm_objects_list(hsm *h, hsm_object_info **objects, size_t *count)
{
    KV_ENSURE(h != NULL && objects != NULL && count != NULL, KV_ERR_INVALID_ARGUMENT,
              "hsm_objects_list: missing argument");
    kv_result r = KV_SUCCESS;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE *objs = NULL;
    size_t n = 0, kept = 0;
    hsm_object_info *infos = NULL;

    KV_GUARD(hsm_session_acquire(h, &s));
    KV_GUARD_GOTO(hsm_objects_all(h, s, &objs, &n), r, out);
    infos = calloc(n ? n : 1, sizeof(*infos));
    KV_ENSURE_GOTO(infos != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++) {
        bool gone = false;
        KV_GUARD_GOTO(hsm_object_describe(h, s, objs[i], &infos[kept], &gone), r, out);
        if (!gone) kept++;
    }
    *objects = infos;
    *count = kept;
    infos = NULL;
out:
    if (kv_failed(r)) kv_error_context("listing the objects of token '%s'", h->label);
    hsm_session_release(h, s, kv_failed(r));
    free(infos);
    free(objs);
    return r;
}
