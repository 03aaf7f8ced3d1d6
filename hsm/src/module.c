/*
 * module.c: loading a PKCS#11 module, C_Initialize/C_Finalize, finding a
 * token by label, and first-time token initialization.
 *
 * A module is loaded only from a configured path (never from the
 * environment).  PKCS#11 initialization is per process, so loaded modules
 * are shared and reference counted: only the last user calls C_Finalize, and
 * never when something else in the process had initialized the module
 * first.  Must never log or format a PIN.
 */
#include "hsm_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hsm_module {
    struct hsm_module *next;
    void *dl;
    CK_FUNCTION_LIST_PTR p11;
    unsigned users;
    bool initialized_here; /* we called C_Initialize, so we C_Finalize */
};

static pthread_mutex_t hsm_modules_mu = PTHREAD_MUTEX_INITIALIZER;
static hsm_module *hsm_modules;

kv_result hsm_module_load(const char *path, hsm_module **out, CK_FUNCTION_LIST_PTR *p11)
{
    kv_result r = KV_SUCCESS;
    void *dl = NULL;
    hsm_module *m = NULL;
    CK_FUNCTION_LIST_PTR fl = NULL;

    KV_ENSURE(path != NULL && path[0] == '/', KV_ERR_INVALID_ARGUMENT,
              "PKCS#11 module path must be absolute (got %s)", path ? path : "(none)");
    pthread_mutex_lock(&hsm_modules_mu);
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *why = dlerror();
        KV_BAIL_GOTO(r, out, KV_ERR_UNAVAILABLE, "cannot load PKCS#11 module %s: %s", path,
                     why ? why : "dlopen failed");
    }
    /* POSIX guarantees that a dlsym result converts to a function pointer. */
    CK_C_GetFunctionList get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    KV_ENSURE_GOTO(get_list != NULL, r, out, KV_ERR_UNAVAILABLE,
                   "%s is not a PKCS#11 module (no C_GetFunctionList)", path);
    CK_RV rv = get_list(&fl);
    if (rv != CKR_OK || fl == NULL) {
        r = HSM_RV_FAIL(rv, "C_GetFunctionList");
        goto out;
    }
    for (hsm_module *it = hsm_modules; it != NULL; it = it->next) {
        if (it->p11 == fl) {
            it->users++;
            *out = it;
            *p11 = fl;
            goto out; /* the entry keeps its own dlopen reference; drop ours */
        }
    }
    m = calloc(1, sizeof(*m));
    KV_ENSURE_GOTO(m != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    /* OS locking: with NULL arguments SoftHSM's mutexes are no-ops. */
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    rv = fl->C_Initialize(&args);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        m->initialized_here = false; /* someone else in the process owns it */
    } else if (rv == CKR_OK) {
        m->initialized_here = true;
    } else {
        r = HSM_RV_FAIL(rv, "C_Initialize");
        kv_error_context("PKCS#11 module %s", path);
        goto out;
    }
    m->dl = dl;
    m->p11 = fl;
    m->users = 1;
    m->next = hsm_modules;
    hsm_modules = m;
    dl = NULL;
    *out = m;
    *p11 = fl;
    m = NULL;
out:
    if (dl != NULL) dlclose(dl);
    free(m);
    pthread_mutex_unlock(&hsm_modules_mu);
    return r;
}

void hsm_module_unload(hsm_module *m)
{
    if (m == NULL) return;
    pthread_mutex_lock(&hsm_modules_mu);
    if (--m->users == 0) {
        for (hsm_module **pp = &hsm_modules; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == m) {
                *pp = m->next;
                break;
            }
        }
        if (m->initialized_here) (void)m->p11->C_Finalize(NULL);
        dlclose(m->dl);
        free(m);
    }
    pthread_mutex_unlock(&hsm_modules_mu);
}

/* Token labels are 32 bytes padded with spaces; this trims the padding. */
static void hsm_label_from_token(const CK_UTF8CHAR label[32], char out[33])
{
    size_t n = 32;
    memcpy(out, label, 32);
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '\0'))
        n--;
    out[n] = '\0';
}

static kv_result hsm_slot_list(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID **slots, CK_ULONG *count)
{
    CK_ULONG n = 0;
    CK_SLOT_ID *list = NULL;
    /* The list can grow between the two calls (SoftHSM adds a free slot
     * after C_InitToken); retry on CKR_BUFFER_TOO_SMALL. */
    for (int attempt = 0; attempt < 4; attempt++) {
        CK_RV rv = p11->C_GetSlotList(CK_TRUE, NULL, &n);
        if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_GetSlotList");
        free(list);
        list = calloc(n ? n : 1, sizeof(*list));
        KV_ENSURE(list != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        rv = p11->C_GetSlotList(CK_TRUE, list, &n);
        if (rv == CKR_BUFFER_TOO_SMALL) continue;
        if (rv != CKR_OK) {
            free(list);
            return HSM_RV_FAIL(rv, "C_GetSlotList");
        }
        *slots = list;
        *count = n;
        return KV_SUCCESS;
    }
    free(list);
    KV_BAIL(KV_ERR_UNAVAILABLE, "PKCS#11 slot list keeps changing");
}

kv_result hsm_slot_find(CK_FUNCTION_LIST_PTR p11, const char *label, CK_SLOT_ID *slot)
{
    kv_result r = KV_SUCCESS;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    char seen[KV_ERROR_MSG_MAX / 2] = "";
    size_t seen_len = 0;

    KV_GUARD(hsm_slot_list(p11, &slots, &n));
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        CK_RV rv = p11->C_GetTokenInfo(slots[i], &info);
        if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_TOKEN_NOT_RECOGNIZED) continue;
        if (rv != CKR_OK) {
            r = HSM_RV_FAIL(rv, "C_GetTokenInfo");
            goto out;
        }
        if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
        char name[33];
        hsm_label_from_token(info.label, name);
        if (strcmp(name, label) == 0) {
            *slot = slots[i];
            goto out;
        }
        if (seen_len < sizeof(seen)) {
            int w = snprintf(seen + seen_len, sizeof(seen) - seen_len, "%s'%s'",
                             seen_len ? ", " : "", name);
            if (w > 0) seen_len += (size_t)w;
        }
    }
    KV_BAIL_GOTO(r, out, KV_ERR_NOT_FOUND, "no PKCS#11 token labelled '%s' (tokens found: %s)",
                 label, seen_len ? seen : "none");
out:
    free(slots);
    return r;
}

static kv_result hsm_token_check_label(const char *label)
{
    KV_ENSURE(label != NULL && label[0] != '\0', KV_ERR_INVALID_ARGUMENT,
              "a token label is required");
    size_t n = strlen(label);
    KV_ENSURE(n <= 32, KV_ERR_INVALID_ARGUMENT, "token label is %zu bytes; at most 32 allowed", n);
    KV_ENSURE(label[n - 1] != ' ', KV_ERR_INVALID_ARGUMENT,
              "token label must not end with a space (labels are space-padded)");
    return KV_SUCCESS;
}

/* C_Login as SO, C_InitPIN, C_Logout on a fresh session of slot. */
static kv_result hsm_token_set_user_pin(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot,
                                        const kv_secret *so_pin, const kv_secret *user_pin)
{
    kv_result r = KV_SUCCESS;
    CK_SESSION_HANDLE s;
    CK_RV rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) return HSM_RV_FAIL(rv, "C_OpenSession");
    rv = p11->C_Login(s, CKU_SO, so_pin->data, so_pin->len);
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_Login (SO)");
        goto out;
    }
    rv = p11->C_InitPIN(s, user_pin->data, user_pin->len);
    if (rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID) {
        KV_BAIL_GOTO(r, logout, KV_ERR_INVALID_ARGUMENT,
                     "the token refused the user PIN (%s): check its length and characters",
                     hsm_rv_name(rv));
    }
    if (rv != CKR_OK) r = HSM_RV_FAIL(rv, "C_InitPIN");
logout:
    (void)p11->C_Logout(s);
out:
    (void)p11->C_CloseSession(s);
    return r;
}

kv_result hsm_token_init(const char *module_path, const char *label, const kv_secret *so_pin,
                         const kv_secret *user_pin)
{
    kv_result r = KV_SUCCESS;
    hsm_module *m = NULL;
    CK_FUNCTION_LIST_PTR p11 = NULL;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    CK_SLOT_ID slot = 0;
    bool have_free = false;

    KV_GUARD(hsm_token_check_label(label));
    KV_ENSURE(so_pin != NULL && so_pin->data != NULL && so_pin->len > 0 && user_pin != NULL &&
                  user_pin->data != NULL && user_pin->len > 0,
              KV_ERR_INVALID_ARGUMENT, "token init needs an SO PIN and a user PIN");
    KV_GUARD(hsm_module_load(module_path, &m, &p11));

    if (kv_ok(hsm_slot_find(p11, label, &slot))) {
        KV_BAIL_GOTO(r, out, KV_ERR_ALREADY_EXISTS, "a PKCS#11 token labelled '%s' already exists",
                     label);
    }
    if (kv_error_code() != KV_ERR_NOT_FOUND) {
        r = KV_FAILURE;
        goto out;
    }
    kv_error_clear();

    KV_GUARD_GOTO(hsm_slot_list(p11, &slots, &n), r, out);
    for (CK_ULONG i = 0; i < n && !have_free; i++) {
        CK_TOKEN_INFO info;
        if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
        if (!(info.flags & CKF_TOKEN_INITIALIZED)) {
            slot = slots[i];
            have_free = true;
        }
    }
    KV_ENSURE_GOTO(have_free, r, out, KV_ERR_FAILED_PRECONDITION,
                   "the PKCS#11 module has no uninitialized token to label '%s'", label);

    CK_UTF8CHAR padded[32];
    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, strlen(label));
    CK_RV rv = p11->C_InitToken(slot, so_pin->data, so_pin->len, padded);
    if (rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID) {
        KV_BAIL_GOTO(r, out, KV_ERR_INVALID_ARGUMENT,
                     "the token refused the SO PIN (%s): check its length and characters",
                     hsm_rv_name(rv));
    }
    if (rv != CKR_OK) {
        r = HSM_RV_FAIL(rv, "C_InitToken");
        goto out;
    }
    /* SoftHSM renumbers slots after C_InitToken: look the token up again. */
    KV_GUARD_GOTO(hsm_slot_find(p11, label, &slot), r, out);
    KV_GUARD_GOTO(hsm_token_set_user_pin(p11, slot, so_pin, user_pin), r, out);
out:
    if (kv_failed(r)) kv_error_context("initializing token '%s'", label ? label : "");
    free(slots);
    hsm_module_unload(m);
    return r;
}
