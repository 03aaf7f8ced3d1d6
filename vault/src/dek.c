/*
 * dek.c: wrapping DEKs under a KEK (software RSA-OAEP with the public key),
 * unwrapping them inside the token, and re-wrapping an environment.
 * Must never keep a plaintext DEK outside a kv_secret, nor write a re-wrapped
 * DEK without checking it unwraps to the same bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

static hsm_oaep_hash vault_alg_hash(Hsmvault__V1__WrapAlgorithm alg)
{
    return alg == HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA256 ? HSM_OAEP_SHA256
                                                                               : HSM_OAEP_SHA1;
}

kv_result vault_wrap_dek(vault *v, const KeyRecord *kek, const uint8_t *dek, size_t dek_len,
                         DatabaseRecord *db)
{
    uint8_t *ct = NULL;
    size_t ct_len = 0;
    int sha256 = v->wrap_hash == HSM_OAEP_SHA256;
    KV_GUARD(rsa_oaep_encrypt(kek->spki_der.data, kek->spki_der.len, sha256, dek, dek_len, &ct,
                              &ct_len));
    db->wrapped_dek.data = ct;
    db->wrapped_dek.len = ct_len;
    db->wrap_alg = sha256 ? HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA256
                          : HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA1;
    db->kek_id = kek->id;
    return KV_SUCCESS;
}

kv_result vault_unwrap_dek(vault *v, const KeyRecord *kek, const DatabaseRecord *db, kv_secret *dek)
{
    KV_ENSURE(kek->hsm_id.len == HSM_KEY_ID_LEN, KV_ERR_DATA_LOSS,
              "key %s has a damaged token id in the store", kek->id);
    KV_ENSURE(db->wrap_alg == HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA1 ||
                  db->wrap_alg == HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA256,
              KV_ERR_DATA_LOSS, "database %s has an unknown wrap algorithm %d", db->id,
              db->wrap_alg);
    hsm_key_id id;
    memcpy(id.bytes, kek->hsm_id.data, HSM_KEY_ID_LEN);
    kv_result r = hsm_rsa_decrypt_oaep(v->hsm, &id, vault_alg_hash(db->wrap_alg),
                                       db->wrapped_dek.data, db->wrapped_dek.len, dek);
    if (kv_failed(r)) {
        if (kv_error_code() == KV_ERR_NOT_FOUND)
            KV_BAIL(KV_ERR_FAILED_PRECONDITION,
                    "the key %s that wraps database %s is not in the token (deleted or locked)",
                    kek->id, db->id);
        kv_error_context("unwrapping the DEK of database %s", db->id);
        return r;
    }
    if (dek->len != VAULT_DEK_BYTES) {
        kv_secret_free(dek);
        KV_BAIL(KV_ERR_DATA_LOSS, "the DEK of database %s unwrapped to %zu bytes, not %d", db->id,
                dek->len, VAULT_DEK_BYTES);
    }
    return KV_SUCCESS;
}

typedef struct {
    const char *env_id;
    const char *new_kek_id;
    Hsmvault__V1__Encryption encryption;
    store_list *old;       /* DatabaseRecords as read */
    DatabaseRecord *fresh; /* re-wrapped, same order */
} vault_rewrap_ctx;

static const KeyRecord *vault_find_cached(KeyRecord *const *cache, size_t n, const char *id)
{
    for (size_t j = 0; j < n; j++)
        if (strcmp(cache[j]->id, id) == 0) return cache[j];
    return NULL;
}

static kv_result vault_rewrap_commit(store_txn *t, void *arg)
{
    vault_rewrap_ctx *c = arg;
    EnvironmentRecord *env = NULL;
    KV_GUARD(vault_get_environment(t, c->env_id, &env));
    char key[2 * VAULT_ID_MAX];
    kv_result r = KV_SUCCESS;
    for (size_t i = 0; i < c->old->n; i++) {
        vault_db_store_key(c->env_id, c->fresh[i].id, key, sizeof(key));
        KV_GUARD_GOTO(store_put(t, STORE_DATABASES, key, &c->fresh[i].base), r, out);
    }
    char *own_kek_id = env->kek_id;
    env->kek_id = (char *)(uintptr_t)c->new_kek_id; /* borrowed for the put */
    env->encryption = c->encryption;
    r = store_put(t, STORE_ENVIRONMENTS, env->id, &env->base);
    env->kek_id = own_kek_id;
out:
    kv_pb_free(&env->base);
    return r;
}

kv_result vault_rewrap_environment(vault *v, const char *env_id, const KeyRecord *new_kek,
                                   Hsmvault__V1__Encryption encryption)
{
    store_list list = {0};
    size_t first_changed = SIZE_MAX; /* first DEK not yet under new_kek */
    KeyRecord *kek_cache[8] = {0};
    size_t n_cache = 0;
    DatabaseRecord *fresh = NULL;
    kv_secret dek = KV_SECRET_INIT;
    kv_secret check = KV_SECRET_INIT;
    store_txn *t = NULL;
    kv_result r = KV_SUCCESS;
    char prefix[VAULT_ID_MAX + 2];
    snprintf(prefix, sizeof(prefix), "%s/", env_id);

    EnvironmentRecord *env = NULL;
    KV_GUARD(store_read_begin(v->store, &t));
    KV_GUARD_GOTO(vault_get_environment(t, env_id, &env), r, out);
    const char *tenant_id_copy = env->tenant_id;
    KV_GUARD_GOTO(store_collect(t, STORE_DATABASES, prefix,
                                &hsmvault__store__database_record__descriptor, NULL, NULL, &list),
                  r, out);
    fresh = calloc(list.n ? list.n : 1, sizeof(*fresh));
    KV_ENSURE_GOTO(fresh != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory re-wrapping");
    for (size_t i = 0; i < list.n; i++) {
        const DatabaseRecord *db = (DatabaseRecord *)list.items[i];
        if (strcmp(db->kek_id, new_kek->id) == 0) {
            /* Already under the new key (a resumed activation): keep as is. */
            fresh[i] = *db;
            fresh[i].wrapped_dek.data = malloc(db->wrapped_dek.len ? db->wrapped_dek.len : 1);
            KV_ENSURE_GOTO(fresh[i].wrapped_dek.data != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                           "out of memory re-wrapping");
            memcpy(fresh[i].wrapped_dek.data, db->wrapped_dek.data, db->wrapped_dek.len);
            continue;
        }
        const KeyRecord *old = vault_find_cached(kek_cache, n_cache, db->kek_id);
        if (old == NULL) {
            KV_ENSURE_GOTO(n_cache < KV_ARRAY_LEN(kek_cache), r, out, KV_ERR_INTERNAL,
                           "environment %s has DEKs under too many keys", env_id);
            KV_GUARD_GOTO(vault_get_key(t, tenant_id_copy, db->kek_id, &kek_cache[n_cache]), r,
                          out);
            old = kek_cache[n_cache++];
        }
        KV_GUARD_GOTO(vault_unwrap_dek(v, old, db, &dek), r, out);
        if (first_changed == SIZE_MAX) first_changed = i;
        fresh[i] = *db;
        fresh[i].wrapped_dek.data = NULL;
        fresh[i].wrapped_dek.len = 0;
        KV_GUARD_GOTO(vault_wrap_dek(v, new_kek, dek.data, dek.len, &fresh[i]), r, out);
        fresh[i].kek_id = new_kek->id;
        kv_secret_free(&dek);
    }
    /* Prove the new wrapping before committing it: the first re-wrapped DEK
     * must unwrap under the new key in the token to the same bytes. */
    if (first_changed < list.n) {
        const DatabaseRecord *db0 = (const DatabaseRecord *)list.items[first_changed];
        const KeyRecord *old = vault_find_cached(kek_cache, n_cache, db0->kek_id);
        KV_ENSURE_GOTO(old != NULL, r, out, KV_ERR_INTERNAL, "re-wrap lost the key of database %s",
                       db0->id);
        KV_GUARD_GOTO(vault_unwrap_dek(v, old, db0, &dek), r, out);
        KV_GUARD_GOTO(vault_unwrap_dek(v, new_kek, &fresh[first_changed], &check), r, out);
        KV_ENSURE_GOTO(check.len == dek.len && kv_ct_equal(check.data, dek.data, dek.len), r, out,
                       KV_ERR_INTERNAL,
                       "re-wrapped DEK of database %s does not match; nothing changed", db0->id);
    }
    store_read_end(t);
    t = NULL;
    vault_rewrap_ctx c = {.env_id = env_id,
                          .new_kek_id = new_kek->id,
                          .encryption = encryption,
                          .old = &list,
                          .fresh = fresh};
    r = store_update(v->store, vault_rewrap_commit, &c);
    if (kv_ok(r))
        KV_LOG_INFO("environment %s: %zu DEKs re-wrapped under key %s", env_id, list.n,
                    new_kek->id);
out:
    kv_secret_free(&dek);
    kv_secret_free(&check);
    if (env != NULL) kv_pb_free(&env->base);
    store_read_end(t);
    for (size_t i = 0; i < n_cache; i++)
        kv_pb_free(&kek_cache[i]->base);
    for (size_t i = 0; fresh != NULL && i < list.n; i++)
        free(fresh[i].wrapped_dek.data);
    free(fresh);
    store_list_free(&list);
    return r;
}
