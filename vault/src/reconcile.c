/*
 * reconcile.c: keeps the token and the store in agreement.  At start-up
 * orphan objects (labelled hsmvault:*, named by no key record and no BYOK
 * import key record: left by a crash between token create and store
 * commit) are destroyed, and keys the
 * store names but the token lacks are reported.  The Audit service uses the
 * same matching, read-only, for ListTokenObjects and Reconcile.
 * Must never destroy an object that a key record names, nor one whose label
 * is not ours.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "vault.h"

static const KeyRecord *vault_key_by_hsm_id(const store_list *l, const uint8_t *id, size_t id_len)
{
    for (size_t i = 0; i < l->n; i++) {
        const KeyRecord *k = (const KeyRecord *)l->items[i];
        if (k->hsm_id.len == id_len && memcmp(k->hsm_id.data, id, id_len) == 0) return k;
    }
    return NULL;
}

static bool vault_key_expected_in_token(const KeyRecord *k)
{
    return k->state != HSMVAULT__V1__KEY_STATE__KEY_STATE_DELETED &&
           k->state != HSMVAULT__V1__KEY_STATE__KEY_STATE_LOCKED;
}

/* Loads every key record, every import key record and every token object. */
static kv_result vault_inventory(vault *v, store_list *keys, store_list *imports,
                                 hsm_object_info **objs, size_t *n_objs)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = store_collect(t, STORE_KEYS, "", &hsmvault__store__key_record__descriptor, NULL,
                                NULL, keys);
    if (kv_ok(r)) r = vault_import_keys_collect(t, imports);
    store_read_end(t);
    if (kv_ok(r)) r = hsm_objects_list(v->hsm, objs, n_objs);
    if (kv_failed(r)) {
        store_list_free(keys);
        store_list_free(imports);
    }
    return r;
}

/* A private key object with this id is in the listing. */
static bool vault_token_has_private(const hsm_object_info *objs, size_t n, const uint8_t *id,
                                    size_t id_len)
{
    for (size_t j = 0; j < n; j++)
        if (objs[j].id_len == id_len && memcmp(objs[j].id, id, id_len) == 0 &&
            strcmp(objs[j].object_class, "private-key") == 0)
            return true;
    return false;
}

kv_result vault_reconcile(vault *v)
{
    store_list keys = {0}, imports = {0};
    hsm_object_info *objs = NULL;
    size_t n_objs = 0;
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = vault_inventory(v, &keys, &imports, &objs, &n_objs);
    if (kv_failed(r)) goto out;
    unsigned removed = 0, missing = 0;
    for (size_t i = 0; i < n_objs; i++) {
        const hsm_object_info *o = &objs[i];
        if (strncmp(o->label, VAULT_LABEL_PREFIX, strlen(VAULT_LABEL_PREFIX)) != 0) continue;
        const KeyRecord *k = vault_key_by_hsm_id(&keys, o->id, o->id_len);
        if (k != NULL && vault_key_expected_in_token(k)) continue;
        const ImportKeyRecord *ik = vault_import_key_by_hsm_id(&imports, o->id, o->id_len);
        if (ik != NULL && !ik->retired) continue;
        if (o->id_len != HSM_KEY_ID_LEN) continue;
        if (vault_audit_names_object(v, o->id, o->id_len)) continue; /* the audit log's keys */
        hsm_key_id id;
        memcpy(id.bytes, o->id, HSM_KEY_ID_LEN);
        char hex[2 * HSM_KEY_ID_LEN + 1];
        hsm_key_id_hex(&id, hex);
        KV_GUARD_GOTO(hsm_key_destroy(v->hsm, &id), r, out);
        removed++;
        KV_LOG_WARN("reconcile: removed token object '%s' (id %s, %s): %s", o->label, hex,
                    o->object_class,
                    ik != NULL  ? "its import key version is retired"
                    : k == NULL ? "no key record names it (left by an interrupted change)"
                                : "its key is locked or deleted");
    }
    for (size_t i = 0; i < keys.n; i++) {
        const KeyRecord *k = (const KeyRecord *)keys.items[i];
        if (!vault_key_expected_in_token(k)) continue;
        if (!vault_token_has_private(objs, n_objs, k->hsm_id.data, k->hsm_id.len)) {
            missing++;
            KV_LOG_ERROR(
                "reconcile: key %s of tenant %s is missing from the token; DEKs under it cannot "
                "be unwrapped until it is restored",
                k->id, k->tenant_id);
        }
    }
    for (size_t i = 0; i < imports.n; i++) {
        const ImportKeyRecord *ik = (const ImportKeyRecord *)imports.items[i];
        if (ik->retired || vault_token_has_private(objs, n_objs, ik->hsm_id.data, ik->hsm_id.len))
            continue;
        missing++;
        KV_LOG_ERROR("reconcile: import key version %u of subscription %s is missing from the "
                     "token; .byok files made for it cannot be imported (rotate the import key)",
                     ik->version, ik->subscription_id);
    }
    v->missing_keys = missing;
    KV_LOG_INFO(
        "reconcile: %zu key records, %zu token objects, %u orphans removed, %u keys missing",
        keys.n, n_objs, removed, missing);
out:
    pthread_mutex_unlock(&v->lifecycle);
    free(objs);
    store_list_free(&keys);
    store_list_free(&imports);
    return r;
}

static const char *vault_key_role(const KeyRecord *k)
{
    return k->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE ? "service-key" : "tenant-key";
}

static const char *vault_state_name(Hsmvault__V1__KeyState s)
{
    static const char *const names[] = {"unspecified", "available", "installing",
                                        "active",      "locked",    "deleted"};
    return (unsigned)s < KV_ARRAY_LEN(names) ? names[s] : "unknown";
}

VAULT_HANDLER(vault_rpc_list_token_objects, Hsmvault__V1__ListTokenObjectsRequest,
              hsmvault__v1__list_token_objects_request__descriptor)
static kv_result vault_rpc_list_token_objects_impl(vault *v, const rpc_ctx *ctx,
                                                   const Hsmvault__V1__ListTokenObjectsRequest *req,
                                                   rpc_reply *reply)
{
    (void)req;
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r =
        vault_authorize(t, ctx->principal, ROLE_BIT(ROLE_AUDITOR) | ROLE_BIT(ROLE_OPERATOR), NULL,
                        NULL, "audit the token");
    store_read_end(t);
    KV_GUARD(r);
    store_list keys = {0}, imports = {0};
    hsm_object_info *objs = NULL;
    size_t n = 0;
    KV_GUARD(vault_inventory(v, &keys, &imports, &objs, &n));
    char(*kids)[KV_BYOK_KID_MAX + 1] = calloc(n ? n : 1, sizeof(*kids));
    int64_t now = kv_clock_now();
    Hsmvault__V1__TokenObject *items = calloc(n ? n : 1, sizeof(*items));
    Hsmvault__V1__TokenObject **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    char(*hex)[2 * 64 + 1] = calloc(n ? n : 1, sizeof(*hex));
    if (items == NULL || ptrs == NULL || hex == NULL || kids == NULL) {
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const hsm_object_info *o = &objs[i];
        Hsmvault__V1__TokenObject *it = &items[i];
        hsmvault__v1__token_object__init(it);
        kv_hex_encode(o->id, o->id_len, hex[i]);
        it->label = (char *)(uintptr_t)o->label;
        it->id_hex = hex[i];
        it->object_class = (char *)(uintptr_t)o->object_class;
        it->key_type = (char *)(uintptr_t)o->key_type;
        it->bits = o->bits;
        it->sensitive = o->sensitive;
        it->extractable = o->extractable;
        it->never_extractable = o->never_extractable;
        it->always_sensitive = o->always_sensitive;
        it->private_ = o->is_private;
        it->can_decrypt = o->can_decrypt;
        it->can_encrypt = o->can_encrypt;
        it->can_sign = o->can_sign;
        it->can_unwrap = o->can_unwrap;
        it->can_wrap = o->can_wrap;
        const KeyRecord *k = vault_key_by_hsm_id(&keys, o->id, o->id_len);
        it->vault_tenant_id = k ? k->tenant_id : (char *)"";
        it->vault_key_id = k ? k->id : (char *)"";
        it->vault_role = (char *)(uintptr_t)(k ? vault_key_role(k) : "unknown");
        it->vault_state = (char *)(uintptr_t)(k ? vault_state_name(k->state) : "");
        const ImportKeyRecord *ik =
            k ? NULL : vault_import_key_by_hsm_id(&imports, o->id, o->id_len);
        if (ik != NULL) {
            vault_import_kid(ik->subscription_id, ik->version, kids[i], sizeof(kids[i]));
            it->vault_key_id = kids[i];
            it->vault_role = "import-key";
            it->vault_state = (char *)(uintptr_t)vault_import_key_state(v, ik, now);
        }
        if (k == NULL && ik == NULL && vault_audit_names_object(v, o->id, o->id_len))
            it->vault_role = "audit-key"; /* docs/audit.md */
        if (strcmp(o->label, VAULT_AUDIT_ANCHOR_LABEL) == 0) it->vault_role = "audit-anchor";
        ptrs[i] = it;
    }
    Hsmvault__V1__ListTokenObjectsResponse resp = HSMVAULT__V1__LIST_TOKEN_OBJECTS_RESPONSE__INIT;
    resp.n_objects = n;
    resp.objects = ptrs;
    r = vault_reply(reply, &resp.base, false);
out:
    free(items);
    free(ptrs);
    free(hex);
    free(kids);
    free(objs);
    store_list_free(&keys);
    store_list_free(&imports);
    return r;
}
