/*
 * store.c: LMDB environment, transactions and protobuf records.
 * Must never keep a transaction across threads, write outside store_update,
 * or trust a value read back from disk (it is unpacked with bounds checks and
 * a decode failure is DATA_LOSS naming the table and key).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_file.h"
#include "kv_log.h"
#include "kv_pb.h"

#define STORE_KEY_MAX 480 /* LMDB's default max key size is 511 */
#define STORE_SCHEMA_VERSION "1"

static const char *const store_table_names[STORE_TABLE_COUNT] = {
    "tenants", "keys",        "environments", "databases",         "principals",  "meta",
    "outbox",  "import_keys", "audit_log",    "audit_checkpoints", "audit_state",
};

static size_t store_initial_map = 64u << 20;

struct vault_store {
    MDB_env *env;
    MDB_dbi dbi[STORE_TABLE_COUNT];
    size_t map_size;
    /* Readers and writers hold it shared; growing the map holds it exclusive
     * (mdb_env_set_mapsize needs no transaction active in the process). */
    pthread_rwlock_t resize_lock;
    int lock_fd; /* flock'd: one vaultd per store */
    store_commit_hook_fn hook;
    void *hook_arg;
};

struct store_txn {
    vault_store *store;
    MDB_txn *txn;
    int map_full;     /* set when a put hit MDB_MAP_FULL */
    unsigned touched; /* 1u << table for every table written */
};

#define STORE_AUDIT_TABLES                                                                         \
    ((1u << STORE_AUDIT_LOG) | (1u << STORE_AUDIT_CHECKPOINTS) | (1u << STORE_AUDIT_STATE))

void store_set_commit_hook(vault_store *s, store_commit_hook_fn fn, void *arg)
{
    s->hook = fn;
    s->hook_arg = arg;
}

const char *store_table_name(store_table table)
{
    return (unsigned)table < STORE_TABLE_COUNT ? store_table_names[table] : "unknown";
}

static kv_result store_mdb_error(int rc, const char *what)
{
    kv_code code = KV_ERR_UNAVAILABLE;
    if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_INVALID)
        code = KV_ERR_DATA_LOSS;
    if (rc == MDB_MAP_FULL) code = KV_ERR_RESOURCE_EXHAUSTED;
    kv_error_set(code, __FILE__, __LINE__, "vault store: %s failed", what);
    kv_error_detail("lmdb: %s (%d)", mdb_strerror(rc), rc);
    return KV_FAILURE;
}

void store_set_initial_map_size(size_t bytes)
{
    store_initial_map = bytes;
}
size_t store_map_size(vault_store *s)
{
    return s->map_size;
}

kv_result store_open(const char *dir, vault_store **out)
{
    KV_GUARD(kv_file_mkdirs(dir, 0700));
    vault_store *s = calloc(1, sizeof(*s));
    KV_ENSURE(s != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory opening the store");
    s->lock_fd = -1;
    pthread_rwlock_init(&s->resize_lock, NULL);
    kv_result r = KV_SUCCESS;
    MDB_txn *txn = NULL;
    /* LMDB would let a second process share the file, but the vault's
     * lifecycle serialisation is per process: refuse a second vaultd. */
    char lock_path[PATH_MAX];
    KV_ENSURE_GOTO(snprintf(lock_path, sizeof(lock_path), "%s/vaultd.lock", dir) <
                       (int)sizeof(lock_path),
                   r, fail, KV_ERR_INVALID_ARGUMENT, "store path too long: %s", dir);
    s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    KV_ENSURE_GOTO(s->lock_fd >= 0, r, fail, KV_ERR_UNAVAILABLE, "cannot open %s: %s", lock_path,
                   strerror(errno));
    KV_ENSURE_GOTO(flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0, r, fail, KV_ERR_FAILED_PRECONDITION,
                   "the store in %s is in use by another vaultd; stop it first", dir);
    int rc = mdb_env_create(&s->env);
    if (rc != 0) KV_GUARD_GOTO(store_mdb_error(rc, "creating the environment"), r, fail);
    mdb_env_set_maxdbs(s->env, STORE_TABLE_COUNT + 2);
    s->map_size = store_initial_map;
    rc = mdb_env_set_mapsize(s->env, s->map_size);
    if (rc != 0) KV_GUARD_GOTO(store_mdb_error(rc, "setting the map size"), r, fail);
    rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600);
    if (rc != 0) {
        store_mdb_error(rc, "opening");
        kv_error_context("%s", dir);
        r = KV_FAILURE;
        goto fail;
    }
    /* The file may be larger than our initial map (it grew in an earlier run). */
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize > s->map_size)
        s->map_size = info.me_mapsize;
    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0) KV_GUARD_GOTO(store_mdb_error(rc, "beginning the set-up transaction"), r, fail);
    for (int i = 0; i < STORE_TABLE_COUNT; i++) {
        rc = mdb_dbi_open(txn, store_table_names[i], MDB_CREATE, &s->dbi[i]);
        if (rc != 0) KV_GUARD_GOTO(store_mdb_error(rc, "opening a table"), r, fail);
    }
    MDB_val k = {.mv_size = strlen("schema_version"),
                 .mv_data = (void *)(uintptr_t) "schema_version"};
    MDB_val v;
    rc = mdb_get(txn, s->dbi[STORE_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        v.mv_size = strlen(STORE_SCHEMA_VERSION);
        v.mv_data = (void *)(uintptr_t)STORE_SCHEMA_VERSION;
        rc = mdb_put(txn, s->dbi[STORE_META], &k, &v, 0);
        if (rc != 0) KV_GUARD_GOTO(store_mdb_error(rc, "writing the schema version"), r, fail);
    } else if (rc == 0) {
        if (v.mv_size != strlen(STORE_SCHEMA_VERSION) ||
            memcmp(v.mv_data, STORE_SCHEMA_VERSION, v.mv_size) != 0) {
            KV_BAIL_GOTO(r, fail, KV_ERR_FAILED_PRECONDITION,
                         "the store in %s has schema version %.*s; this vaultd reads version %s",
                         dir, (int)(v.mv_size < 16 ? v.mv_size : 16), (const char *)v.mv_data,
                         STORE_SCHEMA_VERSION);
        }
    } else {
        KV_GUARD_GOTO(store_mdb_error(rc, "reading the schema version"), r, fail);
    }
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) KV_GUARD_GOTO(store_mdb_error(rc, "committing the set-up transaction"), r, fail);
    *out = s;
    return KV_SUCCESS;
fail:
    if (txn != NULL) mdb_txn_abort(txn);
    if (s->env != NULL) mdb_env_close(s->env);
    if (s->lock_fd >= 0) close(s->lock_fd);
    pthread_rwlock_destroy(&s->resize_lock);
    free(s);
    return r;
}

void store_close(vault_store *s)
{
    if (s == NULL) return;
    mdb_env_close(s->env);
    close(s->lock_fd);
    pthread_rwlock_destroy(&s->resize_lock);
    free(s);
}

kv_result store_read_begin(vault_store *s, store_txn **out)
{
    store_txn *t = calloc(1, sizeof(*t));
    KV_ENSURE(t != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    pthread_rwlock_rdlock(&s->resize_lock);
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t->txn);
    if (rc != 0) {
        pthread_rwlock_unlock(&s->resize_lock);
        free(t);
        return store_mdb_error(rc, "beginning a read transaction");
    }
    t->store = s;
    *out = t;
    return KV_SUCCESS;
}

void store_read_end(store_txn *t)
{
    if (t == NULL) return;
    mdb_txn_abort(t->txn);
    pthread_rwlock_unlock(&t->store->resize_lock);
    free(t);
}

static kv_result store_grow(vault_store *s)
{
    pthread_rwlock_wrlock(&s->resize_lock);
    size_t next = s->map_size * 2;
    int rc = mdb_env_set_mapsize(s->env, next);
    if (rc == 0) s->map_size = next;
    pthread_rwlock_unlock(&s->resize_lock);
    if (rc != 0) return store_mdb_error(rc, "growing the map");
    KV_LOG_INFO("vault store map grown to %zu KiB", next >> 10);
    return KV_SUCCESS;
}

kv_result store_update(vault_store *s, store_update_fn fn, void *ctx)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        store_txn t = {.store = s};
        pthread_rwlock_rdlock(&s->resize_lock);
        int rc = mdb_txn_begin(s->env, NULL, 0, &t.txn);
        if (rc != 0) {
            pthread_rwlock_unlock(&s->resize_lock);
            return store_mdb_error(rc, "beginning a write transaction");
        }
        kv_result r = fn(&t, ctx);
        /* The audit record of the change joins the change's transaction. */
        if (kv_ok(r) && s->hook != NULL && (t.touched & ~STORE_AUDIT_TABLES) != 0)
            r = s->hook(&t, t.touched, s->hook_arg);
        if (kv_failed(r)) {
            mdb_txn_abort(t.txn);
            pthread_rwlock_unlock(&s->resize_lock);
            if (!t.map_full) return r;
        } else {
            rc = mdb_txn_commit(t.txn);
            pthread_rwlock_unlock(&s->resize_lock);
            if (rc == 0) return KV_SUCCESS;
            if (rc != MDB_MAP_FULL) return store_mdb_error(rc, "committing");
        }
        KV_GUARD(store_grow(s));
    }
    KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "vault store: the map could not grow enough for one update");
}

static kv_result store_key(const char *key, MDB_val *k)
{
    size_t n = strlen(key);
    KV_ENSURE(n > 0 && n <= STORE_KEY_MAX, KV_ERR_INVALID_ARGUMENT,
              "store key of %zu bytes is out of range", n);
    k->mv_size = n;
    k->mv_data = (void *)(uintptr_t)key;
    return KV_SUCCESS;
}

kv_result store_get(store_txn *t, store_table table, const char *key,
                    const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    MDB_val k, v;
    KV_GUARD(store_key(key, &k));
    int rc = mdb_get(t->txn, t->store->dbi[table], &k, &v);
    if (rc == MDB_NOTFOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "%s has no record %s", store_table_names[table], key);
    if (rc != 0) return store_mdb_error(rc, "reading");
    ProtobufCMessage *m =
        protobuf_c_message_unpack(desc, &kv_pb_wiping_allocator, v.mv_size, v.mv_data);
    KV_ENSURE(m != NULL, KV_ERR_DATA_LOSS, "vault store: record %s in %s does not decode as %s",
              key, store_table_names[table], desc->name);
    *out = m;
    return KV_SUCCESS;
}

kv_result store_exists(store_txn *t, store_table table, const char *key, bool *exists)
{
    MDB_val k, v;
    KV_GUARD(store_key(key, &k));
    int rc = mdb_get(t->txn, t->store->dbi[table], &k, &v);
    if (rc != 0 && rc != MDB_NOTFOUND) return store_mdb_error(rc, "reading");
    *exists = rc == 0;
    return KV_SUCCESS;
}

kv_result store_put(store_txn *t, store_table table, const char *key, const ProtobufCMessage *msg)
{
    MDB_val k, v;
    KV_GUARD(store_key(key, &k));
    size_t n = protobuf_c_message_get_packed_size(msg);
    v.mv_size = n;
    v.mv_data = NULL;
    /* MDB_RESERVE: pack straight into the page, no intermediate copy. */
    int rc = mdb_put(t->txn, t->store->dbi[table], &k, &v, MDB_RESERVE);
    if (rc == MDB_MAP_FULL) t->map_full = 1;
    t->touched |= 1u << table;
    if (rc != 0) return store_mdb_error(rc, "writing");
    size_t w = protobuf_c_message_pack(msg, v.mv_data);
    KV_ENSURE(w == n, KV_ERR_INTERNAL, "packing %s wrote %zu of %zu bytes", msg->descriptor->name,
              w, n);
    return KV_SUCCESS;
}

kv_result store_del(store_txn *t, store_table table, const char *key)
{
    MDB_val k;
    KV_GUARD(store_key(key, &k));
    int rc = mdb_del(t->txn, t->store->dbi[table], &k, NULL);
    t->touched |= 1u << table;
    if (rc == MDB_NOTFOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "%s has no record %s", store_table_names[table], key);
    if (rc != 0) return store_mdb_error(rc, "deleting");
    return KV_SUCCESS;
}

/* Scans from the first key >= start (start "" : the first key) while keys
 * begin with prefix. */
static kv_result store_scan_range(store_txn *t, store_table table, const char *start,
                                  const char *prefix, const ProtobufCMessageDescriptor *desc,
                                  store_scan_fn fn, void *ctx)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->store->dbi[table], &cur);
    if (rc != 0) return store_mdb_error(rc, "opening a cursor");
    size_t plen = strlen(prefix), slen = strlen(start);
    MDB_val k = {.mv_size = slen, .mv_data = (void *)(uintptr_t)start};
    MDB_val v;
    kv_result r = KV_SUCCESS;
    rc = slen > 0 ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
                  : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    char keybuf[STORE_KEY_MAX + 1];
    while (rc == 0) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0) break;
        if (k.mv_size > STORE_KEY_MAX) {
            KV_BAIL_GOTO(r, out, KV_ERR_DATA_LOSS, "vault store: oversized key in %s",
                         store_table_names[table]);
        }
        memcpy(keybuf, k.mv_data, k.mv_size);
        keybuf[k.mv_size] = '\0';
        ProtobufCMessage *m =
            protobuf_c_message_unpack(desc, &kv_pb_wiping_allocator, v.mv_size, v.mv_data);
        if (m == NULL) {
            KV_BAIL_GOTO(r, out, KV_ERR_DATA_LOSS,
                         "vault store: record %s in %s does not decode as %s", keybuf,
                         store_table_names[table], desc->name);
        }
        r = fn(keybuf, &m, ctx);
        kv_pb_free(m);
        if (kv_failed(r)) goto out;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc != 0 && rc != MDB_NOTFOUND) r = store_mdb_error(rc, "scanning");
out:
    mdb_cursor_close(cur);
    return r;
}

kv_result store_scan(store_txn *t, store_table table, const char *prefix,
                     const ProtobufCMessageDescriptor *desc, store_scan_fn fn, void *ctx)
{
    return store_scan_range(t, table, prefix, prefix, desc, fn, ctx);
}

kv_result store_scan_from(store_txn *t, store_table table, const char *from,
                          const ProtobufCMessageDescriptor *desc, store_scan_fn fn, void *ctx)
{
    return store_scan_range(t, table, from, "", desc, fn, ctx);
}

kv_result store_last(store_txn *t, store_table table, char *key, size_t cap,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->store->dbi[table], &cur);
    if (rc != 0) return store_mdb_error(rc, "opening a cursor");
    MDB_val k, v;
    kv_result r = KV_SUCCESS;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc == MDB_NOTFOUND) {
        r = kv_error_set(KV_ERR_NOT_FOUND, __FILE__, __LINE__, "%s is empty",
                         store_table_names[table]);
    } else if (rc != 0) {
        r = store_mdb_error(rc, "reading the last record");
    } else if (k.mv_size >= cap) {
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__, "vault store: oversized key in %s",
                         store_table_names[table]);
    } else {
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = '\0';
        *out = protobuf_c_message_unpack(desc, &kv_pb_wiping_allocator, v.mv_size, v.mv_data);
        if (*out == NULL)
            r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                             "vault store: record %s in %s does not decode as %s", key,
                             store_table_names[table], desc->name);
    }
    mdb_cursor_close(cur);
    return r;
}

kv_result store_raw_get(store_txn *t, store_table table, const char *key, char *out, size_t cap)
{
    MDB_val k, v;
    KV_ENSURE((unsigned)table < STORE_TABLE_COUNT, KV_ERR_INTERNAL, "no table %d", (int)table);
    KV_GUARD(store_key(key, &k));
    int rc = mdb_get(t->txn, t->store->dbi[table], &k, &v);
    if (rc == MDB_NOTFOUND)
        KV_BAIL(KV_ERR_NOT_FOUND, "%s has no record %s", store_table_names[table], key);
    if (rc != 0) return store_mdb_error(rc, "reading");
    KV_ENSURE(v.mv_size < cap, KV_ERR_DATA_LOSS, "vault store: %s %s is %zu bytes",
              store_table_names[table], key, v.mv_size);
    memcpy(out, v.mv_data, v.mv_size);
    out[v.mv_size] = '\0';
    return KV_SUCCESS;
}

kv_result store_raw_put(store_txn *t, store_table table, const char *key, const char *value)
{
    MDB_val k, v;
    KV_ENSURE((unsigned)table < STORE_TABLE_COUNT, KV_ERR_INTERNAL, "no table %d", (int)table);
    KV_GUARD(store_key(key, &k));
    v.mv_size = strlen(value);
    v.mv_data = (void *)(uintptr_t)value;
    int rc = mdb_put(t->txn, t->store->dbi[table], &k, &v, 0);
    if (rc == MDB_MAP_FULL) t->map_full = 1;
    t->touched |= 1u << table;
    if (rc != 0) return store_mdb_error(rc, "writing");
    return KV_SUCCESS;
}

kv_result store_meta_get(store_txn *t, const char *key, char *out, size_t cap)
{
    return store_raw_get(t, STORE_META, key, out, cap);
}

kv_result store_meta_put(store_txn *t, const char *key, const char *value)
{
    return store_raw_put(t, STORE_META, key, value);
}

typedef struct {
    store_list *list;
    store_keep_fn keep;
    const void *arg;
} store_collect_ctx;

static kv_result store_collect_one(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    store_collect_ctx *c = arg;
    store_list *l = c->list;
    if (c->keep != NULL && !c->keep(*msg, c->arg)) return KV_SUCCESS;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        ProtobufCMessage **p = realloc(l->items, cap * sizeof(*p));
        KV_ENSURE(p != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory listing %s",
                  (*msg)->descriptor->name);
        l->items = p;
        l->cap = cap;
    }
    l->items[l->n++] = *msg;
    *msg = NULL;
    return KV_SUCCESS;
}

kv_result store_collect(store_txn *t, store_table table, const char *prefix,
                        const ProtobufCMessageDescriptor *desc, store_keep_fn keep, const void *arg,
                        store_list *out)
{
    store_collect_ctx c = {.list = out, .keep = keep, .arg = arg};
    return store_scan(t, table, prefix, desc, store_collect_one, &c);
}

void store_list_free(store_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        kv_pb_free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof(*l));
}
