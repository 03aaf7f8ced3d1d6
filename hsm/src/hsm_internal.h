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

/* --- rsa.c --- */
/* Whether the token round-trips RSA-OAEP with SHA-256 (see rsa.c). */
bool hsm_rsa_probe_oaep_sha256(const hsm *h);

#endif
