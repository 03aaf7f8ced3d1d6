/*
 * hsm_internal.h: what the files of hsm/ share (the handle, the session pool,
 * CK_RV naming, object lookup).  Private to hsm/: nothing outside this
 * directory may include it, and it must never expose an object handle
 * beyond one call (SoftHSM renumbers handles when the last session closes).
 */
#ifndef HSM_INTERNAL_H
#define HSM_INTERNAL_H

#include <p11-kit/pkcs11.h>
#include <pthread.h>

#include "hsm.h"

/* A loaded PKCS#11 module shared by every handle of the process (module.c). */
typedef struct hsm_module hsm_module;

/* Idle sessions and the lazily probed facts that need a session.  Kept in its
 * own allocation so the const accessors of hsm.h can still use it. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    CK_SESSION_HANDLE *idle; /* stack of idle sessions */
    size_t idle_count;
    size_t live; /* sessions owned by the pool (idle or in use) */
    size_t cap;
    int oaep_sha256; /* probe result: 0 not probed yet, 1 supported, -1 not */
} hsm_pool;

/* Object handles of private keys by CKA_ID, so a decrypt does not search the
 * token each time (C_FindObjects costs ~15% of a SoftHSM decrypt).  An entry
 * is dropped when its key is destroyed through this handle, and when the
 * token says the handle is no longer valid (destroyed elsewhere). */
#define HSM_HANDLE_CACHE 64
typedef struct {
    pthread_mutex_t mu;
    struct {
        hsm_key_id id;
        CK_OBJECT_HANDLE handle;
        bool used;
    } e[HSM_HANDLE_CACHE];
    unsigned next;
} hsm_handle_cache;

struct hsm {
    hsm_module *module;
    hsm_handle_cache *handles;
    CK_FUNCTION_LIST_PTR p11;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE anchor; /* open for the handle's life: keeps the login */
    bool anchor_open;
    hsm_pool *pool;
    char label[33];
    bool has_oaep, has_rsa_keygen, has_rsa_aes_key_wrap, has_aes_key_wrap_pad;
};

/* Template booleans: each function declares its own `yes`/`no` (templates
 * take non-const pointers). */
#define HSM_TRUE (&yes)
#define HSM_FALSE (&no)

/* --- module.c --- */
KV_RESULT hsm_module_load(const char *path, hsm_module **out, CK_FUNCTION_LIST_PTR *p11);
void hsm_module_unload(hsm_module *m);
/* Finds the slot whose token carries label; NOT_FOUND names the labels seen. */
KV_RESULT hsm_slot_find(CK_FUNCTION_LIST_PTR p11, const char *label, CK_SLOT_ID *slot);

/* --- rv.c --- */
const char *hsm_rv_name(CK_RV rv);
/* Records "token error in <call>" as UNAVAILABLE with the CK_RV in the detail. */
kv_result hsm_rv_error(CK_RV rv, const char *call, const char *file, int line);
#define HSM_RV_FAIL(rv, call) hsm_rv_error((rv), (call), __FILE__, __LINE__)

/* --- session.c --- */
/* Takes an idle session from the pool, waiting while all are busy. */
KV_RESULT hsm_session_acquire(const hsm *h, CK_SESSION_HANDLE *s);
/* Returns a session.  reset=true closes it and opens a fresh one in its
 * place: for a session that may be left with an active operation. */
void hsm_session_release(const hsm *h, CK_SESSION_HANDLE s, bool reset);

/* --- object.c --- */
/* Finds the first object with CKA_ID == id and CKA_CLASS == cls. */
bool hsm_handle_lookup(const hsm *h, const hsm_key_id *id, CK_OBJECT_HANDLE *out);
void hsm_handle_remember(const hsm *h, const hsm_key_id *id, CK_OBJECT_HANDLE handle);
void hsm_handle_forget(const hsm *h, const hsm_key_id *id);
KV_RESULT hsm_object_find(const hsm *h, CK_SESSION_HANDLE s, const hsm_key_id *id,
                          CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj, bool *found);
/* Finds the one object of class cls labelled label: NOT_FOUND when there is
 * none, FAILED_PRECONDITION when the label is ambiguous. */
KV_RESULT hsm_object_find_label(const hsm *h, CK_SESSION_HANDLE s, const char *label,
                                CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj);

/* --- rsa.c --- */
/* Whether the token round-trips RSA-OAEP with SHA-256 (see rsa.c). */
bool hsm_rsa_probe_oaep_sha256(const hsm *h);
/* OAEP parameters for hash with MGF1 of the same hash and an empty label. */
void hsm_oaep_params(hsm_oaep_hash hash, CK_RSA_PKCS_OAEP_PARAMS *p);

/* CKA_LABEL of the keys we create; hsm_object_info.label holds 127 bytes. */
#define HSM_KEY_LABEL_MAX 127u
#define HSM_RSA_BITS_MIN 2048u
#define HSM_RSA_BITS_MAX 8192u
#define HSM_RSA_BYTES_MAX (HSM_RSA_BITS_MAX / 8)

/* What a generated RSA private key may do. */
typedef enum {
    HSM_RSA_USE_KEK,      /* tenant/service key: decrypt and unwrap, never extractable */
    HSM_RSA_USE_IMPORT,   /* BYOK import key: unwrap only, never extractable */
    HSM_RSA_USE_TRANSFER, /* a key in an admin's own token: extractable, to be wrapped */
    HSM_RSA_USE_SIGN,     /* audit checkpoint key: sign only, never extractable */
} hsm_rsa_usage;
KV_RESULT hsm_rsa_generate_usage(hsm *h, const char *label, unsigned bits, hsm_rsa_usage usage,
                                 hsm_key_id *id, uint8_t **spki_der, size_t *spki_len);
KV_RESULT hsm_key_label_check(const char *label);
/* Moves the OpenSSL error queue into the detail of the current record. */
void hsm_openssl_detail(void);
/* DER SubjectPublicKeyInfo of the RSA public key (n, e), big-endian bytes. */
KV_RESULT hsm_rsa_spki(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                       uint8_t **der, size_t *der_len);
/* Reads CKA_MODULUS and CKA_PUBLIC_EXPONENT of obj and encodes the SPKI. */
KV_RESULT hsm_rsa_spki_from_token(const hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                  uint8_t **der, size_t *der_len);
/* Public n and e of an OpenSSL RSA key as big-endian bytes (malloc'd). */
struct evp_pkey_st;
KV_RESULT hsm_rsa_public_bytes(const struct evp_pkey_st *pkey, uint8_t **n, size_t *n_len,
                               uint8_t **e, size_t *e_len);
/* Creates an RSA public key object (encrypt/wrap) on the token (token=true)
 * or as a session object; id NULL: no CKA_ID and no label. */
KV_RESULT hsm_rsa_public_create(const hsm *h, CK_SESSION_HANDLE s, const hsm_key_id *id,
                                const char *label, const uint8_t *n, size_t n_len, const uint8_t *e,
                                size_t e_len, bool token, CK_OBJECT_HANDLE *pub);

#endif
