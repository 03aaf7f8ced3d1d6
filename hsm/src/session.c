/*
 * session.c: opening a token (anchor session, login, mechanism probe) and the
 * session pool every operation borrows from.
 *
 * A PKCS#11 session is used by one thread at a time, so operations take a
 * session from the pool and give it back before they return.  The anchor
 * session stays open for the life of the handle: when a token's last session
 * closes SoftHSM logs out and renumbers object handles.  The PIN is read from
 * its file, used for C_Login and wiped at once; it must never be logged.
 */
#include "hsm_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_log.h"

/* Upper bound for the pool: more sessions than this help no token. */
#define HSM_SESSIONS_MAX 64u
#define HSM_SESSIONS_DEFAULT 4u
/* A PIN file larger than this is not a PIN file. */
#define HSM_PIN_MAX 256u

static kv_result hsm_session_open(const hsm *h, CK_SESSION_HANDLE *s)
{
    CK_RV rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_OpenSession");
    return KV_SUCCESS;
}

kv_result hsm_session_acquire(const hsm *h, CK_SESSION_HANDLE *s)
{
    hsm_pool *p = h->pool;
    pthread_mutex_lock(&p->mu);
    while (p->idle_count == 0 && p->live > 0)
        pthread_cond_wait(&p->cv, &p->mu);
    if (p->idle_count == 0) {
        pthread_mutex_unlock(&p->mu);
        KV_BAIL(KV_ERR_UNAVAILABLE, "no usable session to PKCS#11 token '%s'", h->label);
    }
    *s = p->idle[--p->idle_count];
    pthread_mutex_unlock(&p->mu);
    return KV_SUCCESS;
}

void hsm_session_release(const hsm *h, CK_SESSION_HANDLE s, bool reset)
{
    hsm_pool *p = h->pool;
    bool keep = true;
    if (reset) {
        /* Closing ends any operation left active on the session; the anchor
         * keeps the token logged in meanwhile. */
        (void)h->p11->C_CloseSession(s);
        kv_error_record saved;
        kv_error_save(&saved);
        if (kv_failed(hsm_session_open(h, &s))) {
            kv_log_error_record(KV_LOG_WARN, "reopening a PKCS#11 session; the pool shrinks");
            keep = false;
        }
        kv_error_restore(&saved);
    }
    pthread_mutex_lock(&p->mu);
    if (keep) {
        p->idle[p->idle_count++] = s;
    } else {
        p->live--;
    }
    /* Broadcast: when the pool shrinks to nothing, every waiter must wake. */
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static kv_result hsm_login(hsm *h, const char *pin_file, const kv_secret *given)
{
    kv_secret pin = KV_SECRET_INIT;
    KV_ENSURE(pin_file != NULL || (given != NULL && given->data != NULL), KV_ERR_INVALID_ARGUMENT,
              "a PIN file is required");
    if (given != NULL && given->data != NULL) {
        KV_ENSURE(given->len <= HSM_PIN_MAX, KV_ERR_INVALID_ARGUMENT,
                  "the PIN is longer than %u bytes", HSM_PIN_MAX);
        KV_GUARD(kv_secret_from(&pin, given->data, given->len));
        pin_file = NULL;
    } else {
        KV_GUARD(kv_secret_read_file(&pin, pin_file, HSM_PIN_MAX));
    }
    CK_RV rv = h->p11->C_Login(h->anchor, CKU_USER, pin.data, pin.len);
    kv_secret_free(&pin);
    switch (rv) {
    case CKR_OK:
    case CKR_USER_ALREADY_LOGGED_IN: /* login is per application, not per session */
        return KV_SUCCESS;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
        kv_error_set(KV_ERR_PERMISSION_DENIED, __FILE__, __LINE__,
                     "token '%s' rejected the user PIN%s%s", h->label,
                     pin_file != NULL ? " in " : "", pin_file != NULL ? pin_file : "");
        kv_error_detail("C_Login returned %s", hsm_rv_name(rv));
        return KV_FAILURE;
    case CKR_PIN_LOCKED:
        kv_error_set(KV_ERR_PERMISSION_DENIED, __FILE__, __LINE__,
                     "the user PIN of token '%s' is locked (too many wrong PINs); the token "
                     "officer must reset it",
                     h->label);
        kv_error_detail("C_Login returned %s", hsm_rv_name(rv));
        return KV_FAILURE;
    case CKR_USER_PIN_NOT_INITIALIZED:
        KV_BAIL(KV_ERR_FAILED_PRECONDITION, "token '%s' has no user PIN yet (run C_InitPIN)",
                h->label);
    default:
        return HSM_RV_FAIL(rv, "C_Login");
    }
}

static kv_result hsm_mechanisms_probe(hsm *h)
{
    CK_ULONG n = 0;
    CK_RV rv = h->p11->C_GetMechanismList(h->slot, NULL, &n);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetMechanismList");
    CK_MECHANISM_TYPE *list = calloc(n ? n : 1, sizeof(*list));
    KV_ENSURE(list != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    rv = h->p11->C_GetMechanismList(h->slot, list, &n);
    if (rv != CKR_OK) {
        free(list);
        return HSM_RV_FAIL(rv, "C_GetMechanismList");
    }
    for (CK_ULONG i = 0; i < n; i++) {
        switch (list[i]) {
        case CKM_RSA_PKCS_OAEP:
            h->has_oaep = true;
            break;
        case CKM_RSA_PKCS_KEY_PAIR_GEN:
            h->has_rsa_keygen = true;
            break;
        case CKM_RSA_AES_KEY_WRAP:
            h->has_rsa_aes_key_wrap = true;
            break;
        case CKM_AES_KEY_WRAP_PAD:
            h->has_aes_key_wrap_pad = true;
            break;
        default:
            break;
        }
    }
    free(list);
    return KV_SUCCESS;
}

static kv_result hsm_pool_create(hsm *h, unsigned sessions)
{
    hsm_pool *p = calloc(1, sizeof(*p));
    KV_ENSURE(p != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    p->idle = calloc(sessions, sizeof(*p->idle));
    if (p->idle == NULL) {
        free(p);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    p->cap = sessions;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    h->pool = p;
    for (unsigned i = 0; i < sessions; i++) {
        KV_GUARD(hsm_session_open(h, &p->idle[p->idle_count]));
        p->idle_count++;
        p->live++;
    }
    return KV_SUCCESS;
}

static void hsm_pool_destroy(hsm *h)
{
    hsm_pool *p = h->pool;
    if (p == NULL) return;
    /* hsm_close's contract: no operation is in flight, so all are idle. */
    for (size_t i = 0; i < p->idle_count; i++)
        (void)h->p11->C_CloseSession(p->idle[i]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->idle);
    free(p);
    h->pool = NULL;
}

kv_result hsm_open(const hsm_config *cfg, hsm **out)
{
    return hsm_open_pin(cfg, NULL, out);
}

kv_result hsm_open_pin(const hsm_config *cfg, const kv_secret *pin, hsm **out)
{
    kv_result r = KV_SUCCESS;
    hsm *h = NULL;

    KV_ENSURE(cfg != NULL && out != NULL, KV_ERR_INVALID_ARGUMENT, "hsm_open: no config");
    KV_ENSURE(cfg->token_label != NULL && cfg->token_label[0] != '\0' &&
                  strlen(cfg->token_label) <= 32,
              KV_ERR_INVALID_ARGUMENT, "token label must be 1 to 32 bytes");
    unsigned sessions = cfg->sessions ? cfg->sessions : HSM_SESSIONS_DEFAULT;
    KV_ENSURE(sessions <= HSM_SESSIONS_MAX, KV_ERR_INVALID_ARGUMENT,
              "%u PKCS#11 sessions requested; at most %u allowed", sessions, HSM_SESSIONS_MAX);

    h = calloc(1, sizeof(*h));
    KV_ENSURE(h != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    h->handles = calloc(1, sizeof(*h->handles));
    if (h->handles == NULL) {
        free(h);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    pthread_mutex_init(&h->handles->mu, NULL);
    snprintf(h->label, sizeof(h->label), "%s", cfg->token_label);
    KV_GUARD_GOTO(hsm_module_load(cfg->module_path, &h->module, &h->p11), r, out);
    KV_GUARD_GOTO(hsm_slot_find(h->p11, h->label, &h->slot), r, out);
    KV_GUARD_GOTO(hsm_session_open(h, &h->anchor), r, out);
    h->anchor_open = true;
    KV_GUARD_GOTO(hsm_login(h, cfg->pin_file, pin), r, out);
    KV_GUARD_GOTO(hsm_mechanisms_probe(h), r, out);
    KV_GUARD_GOTO(hsm_pool_create(h, sessions), r, out);
    *out = h;
    h = NULL;
out:
    if (kv_failed(r)) kv_error_context("opening PKCS#11 token '%s'", cfg->token_label);
    hsm_close(h);
    return r;
}

void hsm_close(hsm *h)
{
    if (h == NULL) return;
    hsm_pool_destroy(h);
    /* No C_Logout: another handle of this process may share the login.
     * Closing the token's last session logs out by itself. */
    if (h->anchor_open) (void)h->p11->C_CloseSession(h->anchor);
    hsm_module_unload(h->module);
    if (h->handles != NULL) pthread_mutex_destroy(&h->handles->mu);
    free(h->handles);
    free(h);
}

bool hsm_supports_oaep(const hsm *h, hsm_oaep_hash hash)
{
    if (h == NULL || !h->has_oaep) return false;
    switch (hash) {
    case HSM_OAEP_SHA1:
        return true;
    case HSM_OAEP_SHA256:
        return hsm_rsa_probe_oaep_sha256(h);
    }
    return false;
}

bool hsm_supports_rsa_aes_key_wrap(const hsm *h)
{
    return h != NULL && h->has_rsa_aes_key_wrap;
}

bool hsm_supports_aes_key_wrap_pad(const hsm *h)
{
    return h != NULL && h->has_aes_key_wrap_pad;
}

unsigned hsm_session_count(const hsm *h)
{
    if (h == NULL || h->pool == NULL) return 0;
    pthread_mutex_lock(&h->pool->mu);
    unsigned n = (unsigned)h->pool->live;
    pthread_mutex_unlock(&h->pool->mu);
    return n;
}
