/*
 * dek.c: wrapping DEKs under a KEK (software RSA-OAEP with the public key),
 * unwrapping them inside the token, and re-wrapping an environment.
 * Must never keep a plaintext DEK outside a kv_secret, nor write a re-wrapped
 * DEK without checking it unwraps to the same bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

static hsm_oaep_hash vault_alg_hash(Hsmvault__V1__WrapAlgorithm alg)
{
    return alg == HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA256 ? HSM_OAEP_SHA256
                                                                               : HSM_OAEP_SHA1;
}

/* Records a wrapped DEK (ct, malloc'd) and how it was wrapped in db. */
static void vault_set_wrapped(const vault *v, const KeyRecord *kek, uint8_t *ct, size_t ct_len,
                              DatabaseRecord *db)
{
    db->wrapped_dek.data = ct;
    db->wrapped_dek.len = ct_len;
    db->wrap_alg = v->wrap_hash == HSM_OAEP_SHA256
                       ? HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA256
                       : HSMVAULT__V1__WRAP_ALGORITHM__WRAP_ALGORITHM_RSA_OAEP_SHA1;
    db->kek_id = kek->id;
}

kv_result vault_wrap_dek(vault *v, const KeyRecord *kek, const uint8_t *dek, size_t dek_len,
                         DatabaseRecord *db)
{
    uint8_t *ct = NULL;
    size_t ct_len = 0;
    KV_GUARD(rsa_oaep_encrypt(kek->spki_der.data, kek->spki_der.len,
                              v->wrap_hash == HSM_OAEP_SHA256, dek, dek_len, &ct, &ct_len));
    vault_set_wrapped(v, kek, ct, ct_len, db);
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
    store_list *old;        /* DatabaseRecords as read */
    DatabaseRecord *fresh;  /* re-wrapped, same order */
    const char *changed_by; /* apply/return: who, for the notification; NULL: none */
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
    if (kv_ok(r) && c->changed_by != NULL) {
        TenantRecord *tr = NULL;
        KV_GUARD_GOTO(vault_get_tenant(t, env->tenant_id, &tr), r, out);
        char change[512];
        if (c->encryption == HSMVAULT__V1__ENCRYPTION__ENCRYPTION_CUSTOMER_MANAGED)
            snprintf(change, sizeof(change),
                     "environment %s (%s) is now encrypted with the tenant key %s", env->name,
                     env->id, c->new_kek_id);
        else
            snprintf(change, sizeof(change), "environment %s (%s) was returned to the service key",
                     env->name, env->id);
        r = vault_notify(t, tr, change, c->changed_by, kv_clock_now());
        kv_pb_free(&tr->base);
    }
out:
    kv_pb_free(&env->base);
    return r;
}

/* The token work of a re-wrap, shared by a few threads: each DEK is
 * unwrapped in the token under its current key and wrapped in software under
 * the new one.  One token session is left to the RPC workers so storage nodes
 * keep being answered during an activation. */
typedef struct {
    vault *v;
    const KeyRecord *new_kek;
    const rsa_pub *new_pub;     /* new_kek's public key, parsed once */
    const KeyRecord **olds;     /* per item: its current key, NULL if already under new_kek */
    const DatabaseRecord **dbs; /* per item */
    DatabaseRecord *fresh;      /* per item: the result */
    size_t n;
    atomic_size_t next;
    atomic_bool failed;
    pthread_mutex_t mu;
    kv_error_record err; /* the first failure, re-raised by the caller */
} vault_rewrap_work;

static void *vault_rewrap_worker(void *arg)
{
    vault_rewrap_work *w = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&w->next, 1);
        if (i >= w->n || atomic_load(&w->failed)) break;
        if (w->olds[i] == NULL) continue;
        kv_secret dek = KV_SECRET_INIT;
        kv_result r = vault_unwrap_dek(w->v, w->olds[i], w->dbs[i], &dek);
        uint8_t *ct = NULL;
        size_t ct_len = 0;
        if (kv_ok(r))
            r = rsa_pub_encrypt(w->new_pub, w->v->wrap_hash == HSM_OAEP_SHA256, dek.data, dek.len,
                                &ct, &ct_len);
        if (kv_ok(r)) vault_set_wrapped(w->v, w->new_kek, ct, ct_len, &w->fresh[i]);
        kv_secret_free(&dek);
        if (kv_failed(r)) {
            pthread_mutex_lock(&w->mu);
            if (!atomic_exchange(&w->failed, true)) kv_error_save(&w->err);
            pthread_mutex_unlock(&w->mu);
            break;
        }
        w->fresh[i].kek_id = w->new_kek->id;
    }
    return NULL;
}

static kv_result vault_rewrap_parallel(vault_rewrap_work *w)
{
    unsigned sessions = hsm_session_count(w->v->hsm);
    unsigned n_threads = sessions > 1 ? sessions - 1 : 1;
    if (n_threads > 16) n_threads = 16;
    if (n_threads > w->n) n_threads = w->n > 0 ? (unsigned)w->n : 1;
    pthread_t th[16];
    unsigned started = 0;
    pthread_mutex_init(&w->mu, NULL);
    for (unsigned i = 1; i < n_threads; i++)
        if (pthread_create(&th[started], NULL, vault_rewrap_worker, w) == 0) started++;
    vault_rewrap_worker(w); /* this thread works too */
    for (unsigned i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&w->mu);
    if (atomic_load(&w->failed)) {
        kv_error_restore(&w->err);
        return KV_FAILURE;
    }
    return KV_SUCCESS;
}

kv_result vault_rewrap_environment(vault *v, const char *env_id, const KeyRecord *new_kek,
                                   Hsmvault__V1__Encryption encryption, const char *changed_by)
{
    store_list list = {0};
    size_t first_changed = SIZE_MAX; /* first DEK not yet under new_kek */
    KeyRecord *kek_cache[8] = {0};
    size_t n_cache = 0;
    DatabaseRecord *fresh = NULL;
    const KeyRecord **olds = NULL;
    rsa_pub *pub = NULL;
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
    olds = calloc(list.n ? list.n : 1, sizeof(*olds));
    KV_ENSURE_GOTO(fresh != NULL && olds != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                   "out of memory re-wrapping");
    /* Which key each DEK is under now (looked up once per key). */
    for (size_t i = 0; i < list.n; i++) {
        const DatabaseRecord *db = (DatabaseRecord *)list.items[i];
        fresh[i] = *db;
        fresh[i].wrapped_dek.data = NULL;
        fresh[i].wrapped_dek.len = 0;
        if (strcmp(db->kek_id, new_kek->id) == 0) {
            /* Already under the new key (a resumed activation): keep as is. */
            fresh[i].wrapped_dek.data = malloc(db->wrapped_dek.len ? db->wrapped_dek.len : 1);
            KV_ENSURE_GOTO(fresh[i].wrapped_dek.data != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                           "out of memory re-wrapping");
            memcpy(fresh[i].wrapped_dek.data, db->wrapped_dek.data, db->wrapped_dek.len);
            fresh[i].wrapped_dek.len = db->wrapped_dek.len;
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
        olds[i] = old;
        if (first_changed == SIZE_MAX) first_changed = i;
    }
    store_read_end(t);
    t = NULL;
    vault_rewrap_work w = {.v = v,
                           .new_kek = new_kek,
                           .olds = olds,
                           .dbs = (const DatabaseRecord **)(void *)list.items,
                           .fresh = fresh,
                           .n = list.n};
    KV_GUARD_GOTO(rsa_pub_open(new_kek->spki_der.data, new_kek->spki_der.len, &pub), r, out);
    w.new_pub = pub;
    KV_GUARD_GOTO(vault_rewrap_parallel(&w), r, out);
    /* Prove the new wrapping before committing it: the first re-wrapped DEK
     * must unwrap under the new key in the token to the same bytes. */
    if (first_changed < list.n) {
        const DatabaseRecord *db0 = (const DatabaseRecord *)list.items[first_changed];
        KV_GUARD_GOTO(vault_unwrap_dek(v, olds[first_changed], db0, &dek), r, out);
        KV_GUARD_GOTO(vault_unwrap_dek(v, new_kek, &fresh[first_changed], &check), r, out);
        KV_ENSURE_GOTO(check.len == dek.len && kv_ct_equal(check.data, dek.data, dek.len), r, out,
                       KV_ERR_INTERNAL,
                       "re-wrapped DEK of database %s does not match; nothing changed", db0->id);
    }
    vault_rewrap_ctx c = {.env_id = env_id,
                          .new_kek_id = new_kek->id,
                          .encryption = encryption,
                          .old = &list,
                          .fresh = fresh,
                          .changed_by = changed_by};
    r = store_update(v->store, vault_rewrap_commit, &c);
    if (kv_ok(r))
        KV_LOG_INFO("environment %s: %zu DEKs re-wrapped under key %s", env_id, list.n,
                    new_kek->id);
out:
    store_read_end(t);
    kv_secret_free(&dek);
    kv_secret_free(&check);
    if (env != NULL) kv_pb_free(&env->base);
    for (size_t i = 0; i < n_cache; i++)
        kv_pb_free(&kek_cache[i]->base);
    for (size_t i = 0; fresh != NULL && i < list.n; i++)
        free(fresh[i].wrapped_dek.data);
    free(fresh);
    free(olds);
    rsa_pub_free(pub);
    store_list_free(&list);
    return r;
}
