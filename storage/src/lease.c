/*
 * lease.c: DEK leases through the vault (docs/tdenode.md "Leases").
 *
 * A database's DEK is unwrapped by the vault when it is first used and
 * renewed (KeyAccess/RenewLease) halfway through each lease.  The node
 * never uses a DEK past the end of its lease: every use checks the clock.
 *   - The vault refuses (environment locked, key deleted, environment reset
 *     or deleted, binding removed): the DEK is wiped at once and every read
 *     and write answers FAILED_PRECONDITION naming the reason.
 *   - The vault cannot be reached: renewals are retried with backoff; the
 *     node serves until the lease ends, then wipes the DEK and answers
 *     UNAVAILABLE; it keeps retrying (backoff up to 30 s) and serves again
 *     as soon as an unwrap succeeds.
 * A refused database is retried too (every few seconds, and at most once a
 * second by requests), so the pages read back as soon as the environment is
 * unlocked.  The plaintext DEK lives only in the page_key's kv_secret.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "node.h"

#include "hsmvault/v1/key_access.pb-c.h"

/* Requests retry a refused or expired database at most this often. */
#define LEASE_REQUEST_RETRY_MS 1000
#define LEASE_RETRY_MIN_MS 250
#define LEASE_RETRY_MAX_MS 30000
/* Renewals in flight at once from the lease thread. */
#define LEASE_BATCH 64

const char *tde_db_state_name(tde_db_state s)
{
    switch (s) {
    case TDE_DB_CLOSED:
        return "closed";
    case TDE_DB_OPEN:
        return "open";
    case TDE_DB_REFUSED:
        return "refused";
    case TDE_DB_EXPIRED:
        return "expired";
    case TDE_DB_BROKEN:
        return "broken";
    }
    return "unknown";
}

/* Vault answers that mean "this key may not be used", as opposed to
 * "could not ask" (transport, deadline, token trouble: retried). */
static bool lease_is_refusal(kv_code code)
{
    return code == KV_ERR_FAILED_PRECONDITION || code == KV_ERR_NOT_FOUND ||
           code == KV_ERR_PERMISSION_DENIED || code == KV_ERR_INVALID_ARGUMENT ||
           code == KV_ERR_DATA_LOSS || code == KV_ERR_UNAUTHENTICATED;
}

kv_result tde_vault_unwrap(tde_node *n, const char *method, const char *env_id, const char *db_id,
                           page_key **key, Hsmvault__V1__DatabaseKey **reply)
{
    Hsmvault__V1__UnwrapDatabaseKeyRequest req = HSMVAULT__V1__UNWRAP_DATABASE_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)env_id;
    req.database_id = (char *)(uintptr_t)db_id;
    Hsmvault__V1__DatabaseKey *k = NULL;
    KV_GUARD(tde_vault_call(n, method, &req.base, &hsmvault__v1__database_key__descriptor,
                            (ProtobufCMessage **)&k));
    kv_result r = KV_SUCCESS;
    if (k->database == NULL || k->database->dek_version < 1 || k->dek.len != TDE_DEK_BYTES)
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                         "the vault returned a malformed database key");
    if (kv_ok(r)) r = page_key_new(k->dek.data, k->dek.len, k->database->dek_version, key);
    if (kv_failed(r)) {
        kv_pb_free(&k->base); /* wiped by the allocator */
        return r;
    }
    *reply = k;
    return KV_SUCCESS;
}

/* ---- state changes (db->lease_mu held) ----------------------------------- */

static int64_t lease_ms(const tde_db *db, uint32_t lease_seconds)
{
    uint32_t s = lease_seconds;
    if (s == 0 || s > db->node->cfg.max_lease_seconds) s = db->node->cfg.max_lease_seconds;
    return (int64_t)s * 1000;
}

static void lease_install_locked(tde_db *db, page_key *key, uint32_t lease_seconds,
                                 int64_t started_ms)
{
    int64_t ms = lease_ms(db, lease_seconds);
    page_key_unref(db->key);
    db->key = key;
    db->state = TDE_DB_OPEN;
    db->ever_open = true;
    db->reason[0] = '\0';
    db->reason_code = KV_OK;
    /* The lease counts from before the request was sent. */
    db->lease_expires_ms = started_ms + ms;
    db->renew_at_ms = started_ms + ms / 2;
    db->retry_at_ms = 0;
    db->backoff_ms = 0;
    db->lease_expires_wall = kv_clock_now() + ms / 1000;
}

static void lease_drop_locked(tde_db *db, tde_db_state state, kv_code code, const char *reason)
{
    if (db->key != NULL)
        KV_LOG_WARN("database %s (environment %s): DEK wiped: %s", db->db_id, db->env_id, reason);
    page_key_unref(db->key); /* the last reference wipes the DEK */
    db->key = NULL;
    db->state = state;
    db->reason_code = code;
    size_t n = strnlen(reason, sizeof(db->reason) - 1); /* cut to fit */
    memcpy(db->reason, reason, n);
    db->reason[n] = '\0';
    db->lease_expires_wall = 0;
}

/* A lease that ran out: the DEK is wiped and requests get UNAVAILABLE. */
static void lease_expire_locked(tde_db *db, int64_t now)
{
    if (db->state != TDE_DB_OPEN || now < db->lease_expires_ms) return;
    char reason[1024];
    snprintf(reason, sizeof(reason),
             "its DEK lease ended and the vault could not renew it (%s); retrying",
             db->reason[0] ? db->reason : "no answer");
    lease_drop_locked(db, TDE_DB_EXPIRED, KV_ERR_UNAVAILABLE, reason);
    db->retry_at_ms = now;
}

void tde_lease_install(tde_db *db, page_key *key, uint32_t lease_seconds, int64_t started_ms)
{
    pthread_mutex_lock(&db->lease_mu);
    lease_install_locked(db, key, lease_seconds, started_ms);
    pthread_mutex_unlock(&db->lease_mu);
}

void tde_lease_drop(tde_db *db, tde_db_state state, kv_code code, const char *reason)
{
    pthread_mutex_lock(&db->lease_mu);
    lease_drop_locked(db, state, code, reason);
    pthread_mutex_unlock(&db->lease_mu);
}

static unsigned lease_next_backoff(tde_db *db, unsigned cap_ms)
{
    unsigned b = db->backoff_ms == 0 ? LEASE_RETRY_MIN_MS : db->backoff_ms * 2;
    if (b > cap_ms) b = cap_ms;
    db->backoff_ms = b;
    return b;
}

/* Applies a failed unwrap or renewal (error record = the vault's answer). */
static void lease_failed_locked(tde_db *db, int64_t now)
{
    char reason[1024];
    kv_code code = kv_error_code();
    if (lease_is_refusal(code)) {
        snprintf(reason, sizeof(reason), "the vault refused its key: %s", kv_error_msg());
        lease_drop_locked(db, TDE_DB_REFUSED, KV_ERR_FAILED_PRECONDITION, reason);
        db->retry_at_ms = now + lease_next_backoff(db, 10000);
        return;
    }
    if (db->state == TDE_DB_OPEN && now < db->lease_expires_ms) {
        /* Keep serving; retry well before the lease ends. */
        int64_t left = db->lease_expires_ms - now;
        unsigned cap = (unsigned)(left / 4 > LEASE_RETRY_MIN_MS ? left / 4 : LEASE_RETRY_MIN_MS);
        db->retry_at_ms = now + lease_next_backoff(db, cap);
        snprintf(db->reason, sizeof(db->reason), "renewal failing: %s", kv_error_msg());
        db->reason_code = KV_OK;
        return;
    }
    snprintf(reason, sizeof(reason),
             db->ever_open
                 ? "its DEK lease ended and the vault cannot be reached to renew it (%s: %s); "
                   "retrying"
                 : "the vault cannot be reached to unwrap its DEK (%s: %s); retrying",
             kv_code_name(code), kv_error_msg());
    lease_drop_locked(db, TDE_DB_EXPIRED, KV_ERR_UNAVAILABLE, reason);
    db->retry_at_ms = now + lease_next_backoff(db, LEASE_RETRY_MAX_MS);
}

/* The error a request gets for a database that is not open. */
static kv_result lease_refusal(const tde_db *db)
{
    KV_BAIL(db->reason_code != KV_OK ? db->reason_code : KV_ERR_UNAVAILABLE,
            "database %s (environment %s) is unavailable: %s", db->db_id, db->env_id,
            db->reason[0] ? db->reason : "its key is not leased");
}

/* A successful unwrap: checks the DEK version against the local pages. */
static kv_result lease_apply_locked(tde_db *db, page_key *key,
                                    const Hsmvault__V1__DatabaseKey *reply, int64_t started)
{
    uint32_t v = reply->database->dek_version;
    if (v == db->dek_version) {
        if (db->key != NULL && !page_key_equals(db->key, reply->dek.data, reply->dek.len)) {
            page_key_unref(key);
            lease_drop_locked(db, TDE_DB_REFUSED, KV_ERR_DATA_LOSS,
                              "the vault returned another DEK for the same version");
            return lease_refusal(db);
        }
        lease_install_locked(db, key, reply->lease_seconds, started);
        db->removed = false;
        return KV_SUCCESS;
    }
    page_key_unref(key);
    char reason[1024];
    if (v > db->dek_version) {
        snprintf(reason, sizeof(reason),
                 "its environment was reset: the pages here are sealed under DEK version %u, "
                 "which no longer exists (now version %u); open the database again to start it "
                 "empty",
                 db->dek_version, v);
        lease_drop_locked(db, TDE_DB_REFUSED, KV_ERR_FAILED_PRECONDITION, reason);
    } else {
        snprintf(reason, sizeof(reason),
                 "the vault's DEK is version %u but the pages here are sealed under version %u", v,
                 db->dek_version);
        lease_drop_locked(db, TDE_DB_BROKEN, KV_ERR_DATA_LOSS, reason);
    }
    return lease_refusal(db);
}

/* An explicit open of a database reset in the vault: its old pages and
 * backups are unreadable for good; it starts again empty. */
static kv_result lease_restart_empty(tde_db *db, page_key *key,
                                     const Hsmvault__V1__DatabaseKey *reply, int64_t started)
{
    uint32_t v = reply->database->dek_version;
    char backups[PATH_MAX];
    kv_result r =
        tde_node_path(db->node, backups, sizeof(backups), "backups", db->env_id, db->db_id, NULL);
    pthread_rwlock_wrlock(&db->io);
    if (kv_ok(r)) r = tde_db_wipe_locked(db, v, 0);
    pthread_rwlock_unlock(&db->io);
    if (kv_ok(r)) r = tde_rmtree(backups);
    pthread_mutex_lock(&db->lease_mu);
    if (kv_ok(r)) {
        KV_LOG_WARN("database %s (environment %s) starts again empty under DEK version %u (its "
                    "environment was reset)",
                    db->db_id, db->env_id, v);
        lease_install_locked(db, key, reply->lease_seconds, started);
    } else {
        page_key_unref(key);
    }
    return r;
}

kv_result tde_lease_key(tde_db *db, bool explicit_open, page_key **out)
{
    pthread_mutex_lock(&db->lease_mu);
    kv_result r = KV_SUCCESS;
    for (;;) {
        int64_t now = kv_clock_mono_ms();
        lease_expire_locked(db, now);
        if (db->state == TDE_DB_OPEN) {
            page_key_ref(db->key);
            *out = db->key;
            break;
        }
        if (db->leasing) {
            pthread_cond_wait(&db->lease_cv, &db->lease_mu);
            continue;
        }
        bool refused_reset = db->state == TDE_DB_REFUSED && db->removed;
        if (db->state == TDE_DB_BROKEN ||
            (!explicit_open &&
             (refused_reset || (db->state != TDE_DB_CLOSED &&
                                now < db->last_attempt_ms + LEASE_REQUEST_RETRY_MS)))) {
            r = lease_refusal(db);
            break;
        }
        /* Ask the vault; others wait for this answer. */
        db->leasing = true;
        db->last_attempt_ms = now;
        pthread_mutex_unlock(&db->lease_mu);
        page_key *key = NULL;
        Hsmvault__V1__DatabaseKey *reply = NULL;
        int64_t started = kv_clock_mono_ms();
        kv_result u = tde_vault_unwrap(db->node, "/hsmvault.v1.KeyAccess/UnwrapDatabaseKey",
                                       db->env_id, db->db_id, &key, &reply);
        bool local_failure = false;
        if (kv_ok(u) && explicit_open && reply->database->dek_version > db->dek_version) {
            u = lease_restart_empty(db, key, reply, started); /* returns with lease_mu held */
            local_failure = kv_failed(u);
        } else {
            pthread_mutex_lock(&db->lease_mu);
            if (kv_ok(u))
                u = lease_apply_locked(db, key, reply, started);
            else
                lease_failed_locked(db, kv_clock_mono_ms());
        }
        db->leasing = false;
        if (db->state == TDE_DB_OPEN) db->ever_open = true;
        pthread_cond_broadcast(&db->lease_cv);
        kv_pb_free(reply ? &reply->base : NULL);
        if (kv_failed(u)) {
            /* The database's own words, with the vault's reason. */
            r = local_failure || db->state == TDE_DB_OPEN ? u : lease_refusal(db);
            break;
        }
        explicit_open = false;
    }
    pthread_mutex_unlock(&db->lease_mu);
    return r;
}

/* ---- the lease thread ------------------------------------------------------ */

typedef struct {
    tde_db *db;
    int64_t started;
} lease_call;

/* Collects what is due: renewals of open leases, retries of databases that
 * were open and lost their key; wipes leases that ran out. *wake: the next
 * time anything is due. */
static size_t lease_collect(tde_node *n, lease_call *calls, size_t max, int64_t *wake)
{
    tde_db **all = NULL;
    size_t count = 0, due = 0;
    if (kv_failed(tde_node_list(n, NULL, &all, &count))) return 0;
    int64_t now = kv_clock_mono_ms();
    for (size_t i = 0; i < count; i++) {
        tde_db *db = all[i];
        pthread_mutex_lock(&db->lease_mu);
        lease_expire_locked(db, now);
        int64_t at = INT64_MAX;
        if (db->state == TDE_DB_OPEN)
            at = db->retry_at_ms > db->renew_at_ms ? db->retry_at_ms : db->renew_at_ms;
        else if (db->ever_open && !db->removed &&
                 (db->state == TDE_DB_EXPIRED || db->state == TDE_DB_REFUSED))
            at = db->retry_at_ms;
        if (db->state == TDE_DB_OPEN && db->lease_expires_ms < *wake) *wake = db->lease_expires_ms;
        if (at <= now && !db->leasing && due < max) {
            db->leasing = true;
            calls[due++] = (lease_call){.db = db, .started = now};
        } else if (at < *wake) {
            *wake = at;
        }
        pthread_mutex_unlock(&db->lease_mu);
    }
    free(all);
    return due;
}

static void lease_finish(lease_call *c, kv_result r, Hsmvault__V1__DatabaseKey *reply)
{
    tde_db *db = c->db;
    page_key *key = NULL;
    if (kv_ok(r) && (reply->database == NULL || reply->database->dek_version < 1))
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                         "the vault returned a malformed database key");
    if (kv_ok(r))
        r = page_key_new(reply->dek.data, reply->dek.len, reply->database->dek_version, &key);
    pthread_mutex_lock(&db->lease_mu);
    bool was_open = db->state == TDE_DB_OPEN;
    if (kv_ok(r)) {
        if (kv_ok(lease_apply_locked(db, key, reply, c->started)) && !was_open)
            KV_LOG_INFO("database %s (environment %s): DEK leased again", db->db_id, db->env_id);
    } else {
        lease_failed_locked(db, kv_clock_mono_ms());
    }
    db->leasing = false;
    pthread_cond_broadcast(&db->lease_cv);
    pthread_mutex_unlock(&db->lease_mu);
}

/* Renews (or retries) the due databases concurrently through one queue. */
static void lease_run(tde_node *n, lease_call *calls, size_t count)
{
    vc_queue *q = NULL;
    kv_result r = vc_queue_open(&q);
    pthread_rwlock_rdlock(&n->vault_lock);
    size_t started = 0;
    for (size_t i = 0; i < count; i++) {
        tde_db *db = calls[i].db;
        Hsmvault__V1__UnwrapDatabaseKeyRequest req =
            HSMVAULT__V1__UNWRAP_DATABASE_KEY_REQUEST__INIT;
        req.environment_id = db->env_id;
        req.database_id = db->db_id;
        const char *method = db->key != NULL ? "/hsmvault.v1.KeyAccess/RenewLease"
                                             : "/hsmvault.v1.KeyAccess/UnwrapDatabaseKey";
        calls[i].started = kv_clock_mono_ms();
        kv_result s = kv_ok(r) ? vc_queue_call(q, n->vault, method, &req.base,
                                               &hsmvault__v1__database_key__descriptor, &calls[i])
                               : r;
        if (kv_ok(s))
            started++;
        else
            lease_finish(&calls[i], s, NULL);
    }
    bool transient = false;
    while (started > 0) {
        void *tag = NULL;
        ProtobufCMessage *resp = NULL;
        kv_result s = vc_queue_next(q, &tag, &resp);
        if (tag == NULL) break;
        started--;
        if (kv_failed(s) && !lease_is_refusal(kv_error_code())) transient = true;
        lease_finish(tag, s, (Hsmvault__V1__DatabaseKey *)resp);
        kv_pb_free(resp);
    }
    pthread_rwlock_unlock(&n->vault_lock);
    vc_queue_close(q);
    if (transient) tde_node_vault_refresh(n);
}

void *tde_lease_main(void *arg)
{
    tde_node *n = arg;
    lease_call calls[LEASE_BATCH];
    pthread_mutex_lock(&n->lease_mu);
    while (!n->stop) {
        pthread_mutex_unlock(&n->lease_mu);
        int64_t wake = kv_clock_mono_ms() + 1000;
        size_t due;
        while ((due = lease_collect(n, calls, LEASE_BATCH, &wake)) > 0)
            lease_run(n, calls, due);
        pthread_mutex_lock(&n->lease_mu);
        int64_t wait = wake - kv_clock_mono_ms();
        if (wait > 1000) wait = 1000;
        if (wait > 0 && !n->stop) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += wait / 1000;
            until.tv_nsec += (wait % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&n->lease_cv, &n->lease_mu, &until);
        }
    }
    pthread_mutex_unlock(&n->lease_mu);
    return NULL;
}
