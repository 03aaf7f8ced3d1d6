/*
 * node.c: the node: its data directory (locked against a second tdenode),
 * the table of databases found there, the vault client, and how a database
 * comes to the node (created in the vault, or opened from it).
 *
 * Must never let two tdenode processes share a data directory (their write
 * counters would collide), and never keep a database whose files do not
 * describe themselves (a damaged meta is BROKEN, answered DATA_LOSS).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "kv_clock.h"
#include "kv_file.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "node.h"

#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"

kv_result tde_node_path(const tde_node *n, char *out, size_t cap, const char *sub,
                        const char *env_id, const char *db_id, const char *leaf)
{
    int w = snprintf(out, cap, "%s/%s%s%s%s%s%s%s", n->cfg.data_dir, sub, env_id ? "/" : "",
                     env_id ? env_id : "", db_id ? "/" : "", db_id ? db_id : "", leaf ? "/" : "",
                     leaf ? leaf : "");
    KV_ENSURE(w > 0 && (size_t)w < cap, KV_ERR_INVALID_ARGUMENT, "path too long under %s",
              n->cfg.data_dir);
    return KV_SUCCESS;
}

void tde_node_test_crash_point(const tde_node *n, const char *point)
{
    if (!n->cfg.test_hooks) return;
    static atomic_int hits;
    const char *want = getenv("TDENODE_TEST_CRASH_AT");
    if (want == NULL) return;
    size_t len = strlen(point);
    if (strncmp(want, point, len) != 0 || (want[len] != '\0' && want[len] != ':')) return;
    int nth = want[len] == ':' ? atoi(want + len + 1) : 1;
    if (atomic_fetch_add(&hits, 1) + 1 < nth) return;
    KV_LOG_WARN("test crash point '%s' reached: dying like kill -9", point);
    kill(getpid(), SIGKILL);
}

/* ---- the table (sorted by environment, then database) -------------------- */

static int node_cmp(const char *env_a, const char *db_a, const tde_db *b)
{
    int c = strcmp(env_a, b->env_id);
    return c != 0 ? c : strcmp(db_a, b->db_id);
}

/* Index of (env, db) or where it would go; *found. n->mu held. */
static size_t node_slot(const tde_node *n, const char *env_id, const char *db_id, bool *found)
{
    size_t lo = 0, hi = n->n_dbs;
    *found = false;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = node_cmp(env_id, db_id, n->dbs[mid]);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static kv_result node_add_locked(tde_node *n, tde_db *db)
{
    bool found;
    size_t at = node_slot(n, db->env_id, db->db_id, &found);
    KV_ENSURE(!found, KV_ERR_ALREADY_EXISTS, "database %s is already on this node", db->db_id);
    if (n->n_dbs == n->cap_dbs) {
        size_t cap = n->cap_dbs ? 2 * n->cap_dbs : 64;
        tde_db **p = realloc(n->dbs, cap * sizeof(*p));
        KV_ENSURE(p != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        n->dbs = p;
        n->cap_dbs = cap;
    }
    memmove(&n->dbs[at + 1], &n->dbs[at], (n->n_dbs - at) * sizeof(*n->dbs));
    n->dbs[at] = db;
    n->n_dbs++;
    return KV_SUCCESS;
}

kv_result tde_node_find(tde_node *n, const char *env_id, const char *db_id, tde_db **out)
{
    KV_GUARD(tde_check_id("environment_id", env_id));
    KV_GUARD(tde_check_id("database_id", db_id));
    pthread_mutex_lock(&n->mu);
    bool found;
    size_t at = node_slot(n, env_id, db_id, &found);
    if (found) *out = n->dbs[at];
    pthread_mutex_unlock(&n->mu);
    KV_ENSURE(found, KV_ERR_NOT_FOUND,
              "database %s of environment %s is not on this node (create or open it first)", db_id,
              env_id);
    return KV_SUCCESS;
}

kv_result tde_node_list(tde_node *n, const char *env_id, tde_db ***out, size_t *count)
{
    pthread_mutex_lock(&n->mu);
    tde_db **all = malloc((n->n_dbs ? n->n_dbs : 1) * sizeof(*all));
    size_t k = 0;
    for (size_t i = 0; all != NULL && i < n->n_dbs; i++)
        if (env_id == NULL || env_id[0] == '\0' || strcmp(n->dbs[i]->env_id, env_id) == 0)
            all[k++] = n->dbs[i];
    pthread_mutex_unlock(&n->mu);
    KV_ENSURE(all != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    *out = all;
    *count = k;
    return KV_SUCCESS;
}

/* ---- the vault ------------------------------------------------------------ */

static kv_result node_vault_connect(tde_node *n, const char *target)
{
    vc_profile p = n->cfg.vault;
    snprintf(p.target, sizeof(p.target), "%s", target);
    vc *c = NULL;
    KV_GUARD(vc_open(&p, &c));
    pthread_rwlock_wrlock(&n->vault_lock);
    vc *old = n->vault;
    n->vault = c;
    snprintf(n->vault_target, sizeof(n->vault_target), "%s", target);
    pthread_rwlock_unlock(&n->vault_lock);
    vc_close(old);
    return KV_SUCCESS;
}

void tde_node_vault_refresh(tde_node *n)
{
    if (n->cfg.vault_addr_file[0] == '\0') return;
    uint8_t *data = NULL;
    size_t len = 0;
    if (kv_failed(kv_file_read(n->cfg.vault_addr_file, 255, &data, &len))) {
        kv_error_clear();
        return;
    }
    char target[256];
    snprintf(target, sizeof(target), "%.*s", (int)len, (const char *)data);
    free(data);
    target[strcspn(target, "\r\n")] = '\0';
    pthread_rwlock_rdlock(&n->vault_lock);
    bool same = strcmp(target, n->vault_target) == 0;
    pthread_rwlock_unlock(&n->vault_lock);
    if (same || target[0] == '\0') return;
    if (kv_ok(node_vault_connect(n, target)))
        KV_LOG_INFO("dev: the vault moved to %s; reconnected", target);
    else
        kv_log_error_record(KV_LOG_WARN, "reconnecting to the vault");
}

kv_result tde_vault_call(tde_node *n, const char *method, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp)
{
    for (int attempt = 0;; attempt++) {
        pthread_rwlock_rdlock(&n->vault_lock);
        kv_result r = vc_call(n->vault, method, req, desc, resp);
        pthread_rwlock_unlock(&n->vault_lock);
        if (kv_ok(r) || attempt > 0 || kv_error_code() != KV_ERR_UNAVAILABLE ||
            n->cfg.vault_addr_file[0] == '\0')
            return r;
        kv_error_record saved;
        kv_error_save(&saved);
        char before[256];
        pthread_rwlock_rdlock(&n->vault_lock);
        snprintf(before, sizeof(before), "%s", n->vault_target);
        pthread_rwlock_unlock(&n->vault_lock);
        tde_node_vault_refresh(n);
        pthread_rwlock_rdlock(&n->vault_lock);
        bool moved = strcmp(before, n->vault_target) != 0;
        pthread_rwlock_unlock(&n->vault_lock);
        if (!moved) {
            kv_error_restore(&saved);
            return r;
        }
    }
}

/* ---- start-up ------------------------------------------------------------- */

/* A database whose files cannot be read: kept so requests name it. */
static void node_add_broken(tde_node *n, const char *env_id, const char *db_id)
{
    char why[KV_ERROR_MSG_MAX];
    snprintf(why, sizeof(why), "its files on this node are damaged: %s", kv_error_msg());
    KV_LOG_ERROR("database %s (environment %s): %s", db_id, env_id, why);
    DatabaseMeta m = HSMVAULT__TDE__DATABASE_META__INIT;
    m.environment_id = (char *)(uintptr_t)env_id;
    m.database_id = (char *)(uintptr_t)db_id;
    m.tenant_id = "";
    m.name = "";
    m.dek_version = 1;
    tde_db *db = NULL;
    if (kv_failed(tde_db_new(n, &m, &db))) return;
    db->state = TDE_DB_BROKEN;
    db->reason_code = KV_ERR_DATA_LOSS;
    snprintf(db->reason, sizeof(db->reason), "%s", why);
    if (kv_failed(node_add_locked(n, db))) tde_db_free(db);
}

static kv_result node_scan(tde_node *n)
{
    char root[PATH_MAX];
    KV_GUARD(tde_node_path(n, root, sizeof(root), "db", NULL, NULL, NULL));
    DIR *envs = opendir(root);
    KV_ENSURE(envs != NULL, KV_ERR_UNAVAILABLE, "cannot read %s: %s", root, strerror(errno));
    struct dirent *e;
    while ((e = readdir(envs)) != NULL) {
        if (kv_failed(tde_check_id("environment", e->d_name))) continue;
        char env_dir[PATH_MAX];
        if (kv_failed(tde_node_path(n, env_dir, sizeof(env_dir), "db", e->d_name, NULL, NULL)))
            continue;
        DIR *dbs = opendir(env_dir);
        struct dirent *d;
        while (dbs != NULL && (d = readdir(dbs)) != NULL) {
            if (kv_failed(tde_check_id("database", d->d_name))) continue;
            char dir[PATH_MAX];
            tde_db *db = NULL;
            if (kv_ok(tde_node_path(n, dir, sizeof(dir), "db", e->d_name, d->d_name, NULL)) &&
                kv_ok(tde_db_load(n, dir, &db))) {
                if (kv_failed(node_add_locked(n, db))) tde_db_free(db);
            } else {
                node_add_broken(n, e->d_name, d->d_name);
            }
        }
        if (dbs != NULL) closedir(dbs);
    }
    closedir(envs);
    kv_error_clear();
    KV_LOG_INFO("%zu databases in %s", n->n_dbs, n->cfg.data_dir);
    return KV_SUCCESS;
}

kv_result tde_node_open(const tde_config *cfg, tde_node **out)
{
    tde_node *n = calloc(1, sizeof(*n));
    KV_ENSURE(n != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    n->cfg = *cfg;
    n->lock_fd = -1;
    pthread_mutex_init(&n->mu, NULL);
    pthread_rwlock_init(&n->vault_lock, NULL);
    pthread_mutex_init(&n->lease_mu, NULL);
    pthread_cond_init(&n->lease_cv, NULL);
    kv_result r = KV_SUCCESS;
    static const char *const subs[] = {"db", "backups", "tmp"};
    char path[PATH_MAX];
    KV_GUARD_GOTO(kv_file_mkdirs(cfg->data_dir, 0700), r, fail);
    for (size_t i = 0; i < KV_ARRAY_LEN(subs); i++) {
        KV_GUARD_GOTO(tde_node_path(n, path, sizeof(path), subs[i], NULL, NULL, NULL), r, fail);
        KV_GUARD_GOTO(kv_file_mkdirs(path, 0700), r, fail);
    }
    KV_GUARD_GOTO(tde_node_path(n, path, sizeof(path), "tdenode.lock", NULL, NULL, NULL), r, fail);
    n->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    KV_ENSURE_GOTO(n->lock_fd >= 0, r, fail, KV_ERR_UNAVAILABLE, "cannot open %s: %s", path,
                   strerror(errno));
    KV_ENSURE_GOTO(flock(n->lock_fd, LOCK_EX | LOCK_NB) == 0, r, fail, KV_ERR_FAILED_PRECONDITION,
                   "another tdenode is using the data directory %s", cfg->data_dir);
    KV_GUARD_GOTO(node_vault_connect(n, cfg->vault.target), r, fail);
    KV_GUARD_GOTO(node_scan(n), r, fail);
    tde_backup_sweep(n);
    *out = n;
    return KV_SUCCESS;
fail:
    tde_node_close(n);
    return r;
}

kv_result tde_node_start(tde_node *n)
{
    int e = pthread_create(&n->lease_thread, NULL, tde_lease_main, n);
    KV_ENSURE(e == 0, KV_ERR_RESOURCE_EXHAUSTED, "cannot start the lease thread: %s", strerror(e));
    n->lease_running = true;
    return KV_SUCCESS;
}

void tde_node_close(tde_node *n)
{
    if (n == NULL) return;
    if (n->lease_running) {
        pthread_mutex_lock(&n->lease_mu);
        n->stop = true;
        pthread_cond_broadcast(&n->lease_cv);
        pthread_mutex_unlock(&n->lease_mu);
        pthread_join(n->lease_thread, NULL);
    }
    for (size_t i = 0; i < n->n_dbs; i++) {
        tde_db *db = n->dbs[i];
        if (db->attached && kv_failed(tde_journal_sync(&db->journal)))
            kv_log_error_record(KV_LOG_ERROR, "syncing a journal at shutdown");
        tde_db_free(db);
    }
    free(n->dbs);
    vc_close(n->vault);
    if (n->lock_fd >= 0) close(n->lock_fd);
    pthread_mutex_destroy(&n->mu);
    pthread_rwlock_destroy(&n->vault_lock);
    pthread_mutex_destroy(&n->lease_mu);
    pthread_cond_destroy(&n->lease_cv);
    free(n);
}

/* ---- databases coming to the node ------------------------------------------ */

/* The tenant of an environment, as the vault says (GetEnvironment). */
static kv_result node_env_tenant(tde_node *n, const char *env_id, char tenant[TDE_ID_MAX + 1])
{
    Hsmvault__V1__GetEnvironmentRequest req = HSMVAULT__V1__GET_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)env_id;
    Hsmvault__V1__Environment *e = NULL;
    KV_GUARD(tde_vault_call(n, "/hsmvault.v1.Environments/GetEnvironment", &req.base,
                            &hsmvault__v1__environment__descriptor, (ProtobufCMessage **)&e));
    kv_result r = tde_check_id("the vault's tenant id", e->tenant_id);
    if (kv_ok(r)) snprintf(tenant, TDE_ID_MAX + 1, "%s", e->tenant_id);
    kv_pb_free(&e->base);
    return r;
}

/* Makes the local files of a database the vault just gave a key for, and
 * adds it (or, if another request added it meanwhile, returns that one). */
static kv_result node_adopt(tde_node *n, const char *tenant, const Hsmvault__V1__DatabaseKey *k,
                            page_key *key, int64_t started, tde_db **out)
{
    DatabaseMeta m = HSMVAULT__TDE__DATABASE_META__INIT;
    m.format = 1;
    m.tenant_id = (char *)(uintptr_t)tenant;
    m.environment_id = k->database->environment_id;
    m.database_id = k->database->id;
    m.name = k->database->name;
    m.dek_version = k->database->dek_version;
    m.created_at = kv_clock_now();
    kv_result r = tde_meta_check(&m);
    if (kv_failed(r)) {
        page_key_unref(key);
        KV_BAIL(KV_ERR_INTERNAL, "the vault described database %s in a way this node cannot keep",
                k->database->id);
    }
    pthread_mutex_lock(&n->mu);
    bool found;
    size_t at = node_slot(n, m.environment_id, m.database_id, &found);
    if (found) {
        *out = n->dbs[at];
        pthread_mutex_unlock(&n->mu);
        page_key_unref(key);
        return KV_SUCCESS;
    }
    tde_db *db = NULL;
    r = tde_db_new(n, &m, &db);
    if (kv_ok(r)) {
        db->created_at = m.created_at;
        pthread_rwlock_wrlock(&db->io);
        r = tde_db_wipe_locked(db, m.dek_version, 0);
        if (kv_ok(r)) r = tde_db_attach_locked(db, key);
        pthread_rwlock_unlock(&db->io);
    }
    if (kv_ok(r)) r = node_add_locked(n, db);
    pthread_mutex_unlock(&n->mu);
    if (kv_failed(r)) {
        tde_db_free(db);
        page_key_unref(key);
        return r;
    }
    tde_lease_install(db, key, k->lease_seconds, started);
    KV_LOG_INFO("database %s (%s) of environment %s now on this node (DEK version %u)", db->db_id,
                db->name, db->env_id, db->dek_version);
    *out = db;
    return KV_SUCCESS;
}

kv_result tde_node_create_db(tde_node *n, const char *env_id, const char *name, tde_db **out)
{
    KV_GUARD(tde_check_id("environment_id", env_id));
    size_t len = name != NULL ? strnlen(name, TDE_NAME_MAX + 1) : 0;
    KV_ENSURE(len >= 1 && len <= TDE_NAME_MAX, KV_ERR_INVALID_ARGUMENT,
              "a database name is 1 to %u characters", TDE_NAME_MAX);
    char tenant[TDE_ID_MAX + 1];
    KV_GUARD(node_env_tenant(n, env_id, tenant));
    Hsmvault__V1__CreateDatabaseKeyRequest req = HSMVAULT__V1__CREATE_DATABASE_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)env_id;
    req.database_name = (char *)(uintptr_t)name;
    Hsmvault__V1__DatabaseKey *k = NULL;
    int64_t started = kv_clock_mono_ms();
    KV_GUARD(tde_vault_call(n, "/hsmvault.v1.KeyAccess/CreateDatabaseKey", &req.base,
                            &hsmvault__v1__database_key__descriptor, (ProtobufCMessage **)&k));
    page_key *key = NULL;
    kv_result r = KV_SUCCESS;
    if (k->database == NULL || k->database->dek_version < 1)
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                         "the vault returned a malformed database key");
    if (kv_ok(r)) r = page_key_new(k->dek.data, k->dek.len, k->database->dek_version, &key);
    if (kv_ok(r)) r = node_adopt(n, tenant, k, key, started, out);
    kv_pb_free(&k->base);
    return r;
}

kv_result tde_node_open_db(tde_node *n, const char *env_id, const char *db_id, bool explicit_open,
                           tde_db **out)
{
    tde_db *db = NULL;
    if (kv_ok(tde_node_find(n, env_id, db_id, &db))) {
        page_key *key = NULL;
        KV_GUARD(tde_lease_key(db, explicit_open, &key));
        page_key_unref(key);
        *out = db;
        return KV_SUCCESS;
    }
    if (kv_error_code() != KV_ERR_NOT_FOUND) return KV_FAILURE;
    /* Known to the vault, not (yet) here: it starts empty on this node. */
    page_key *key = NULL;
    Hsmvault__V1__DatabaseKey *k = NULL;
    int64_t started = kv_clock_mono_ms();
    KV_GUARD(
        tde_vault_unwrap(n, "/hsmvault.v1.KeyAccess/UnwrapDatabaseKey", env_id, db_id, &key, &k));
    char tenant[TDE_ID_MAX + 1];
    kv_result r =
        strcmp(k->database->environment_id, env_id) == 0 && strcmp(k->database->id, db_id) == 0
            ? node_env_tenant(n, env_id, tenant)
            : kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__,
                           "the vault answered for another database");
    if (kv_ok(r))
        r = node_adopt(n, tenant, k, key, started, out);
    else
        page_key_unref(key);
    kv_pb_free(&k->base);
    return r;
}
