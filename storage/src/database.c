/*
 * database.c: one database's files on the node and its page I/O: the page
 * file (page N at N * 8 KiB), the journal (writes since the last
 * checkpoint), the write counter; reads, atomic batch writes, flush,
 * checkpoints (node.h).
 *
 * Durability: a write is in the journal (page cache) when acknowledged and
 * durable once a Flush (fdatasync of the journal) returns.  The page file is
 * written only by a checkpoint, from a journal made durable first, and is
 * fdatasync'd before the journal is emptied: a torn in-place write is
 * repaired by the replay; a torn journal tail is cut at recovery.
 *
 * Must never return page bytes that did not open under the database's DEK
 * and identity, never seal two pages with the same counter value, and never
 * write the page file from an unsynced journal.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_clock.h"
#include "kv_file.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "kv_secret.h"
#include "node.h"

static kv_result db_file(const tde_db *db, const char *leaf, char *out, size_t cap)
{
    KV_ENSURE(snprintf(out, cap, "%s/%s", db->dir, leaf) < (int)cap, KV_ERR_INVALID_ARGUMENT,
              "path too long under %s", db->dir);
    return KV_SUCCESS;
}

void tde_db_error_context(const tde_db *db)
{
    kv_error_context("database %s (environment %s)", db->db_id, db->env_id);
}

kv_result tde_db_new(tde_node *n, const DatabaseMeta *m, tde_db **out)
{
    KV_GUARD(tde_check_id("environment_id", m->environment_id));
    KV_GUARD(tde_check_id("database_id", m->database_id));
    tde_db *db = calloc(1, sizeof(*db));
    KV_ENSURE(db != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    db->node = n;
    db->pages_fd = -1;
    db->journal.fd = -1;
    db->nonce.fd = -1;
    snprintf(db->tenant_id, sizeof(db->tenant_id), "%s", m->tenant_id);
    snprintf(db->env_id, sizeof(db->env_id), "%s", m->environment_id);
    snprintf(db->db_id, sizeof(db->db_id), "%s", m->database_id);
    snprintf(db->name, sizeof(db->name), "%s", m->name);
    db->dek_version = m->dek_version;
    db->created_at = m->created_at;
    pthread_rwlock_init(&db->io, NULL);
    pthread_mutex_init(&db->hold_mu, NULL);
    pthread_cond_init(&db->hold_cv, NULL);
    pthread_mutex_init(&db->lease_mu, NULL);
    pthread_cond_init(&db->lease_cv, NULL);
    db->state = TDE_DB_CLOSED;
    kv_result r = tde_node_path(n, db->dir, sizeof(db->dir), "db", db->env_id, db->db_id, NULL);
    /* A damaged meta still gets an entry (BROKEN) so requests name it. */
    if (kv_ok(r) && m->tenant_id[0] != '\0')
        r = page_identity_make(db->tenant_id, db->env_id, db->db_id, &db->identity);
    if (kv_failed(r)) {
        tde_db_free(db);
        return r;
    }
    *out = db;
    return KV_SUCCESS;
}

void tde_db_free(tde_db *db)
{
    if (db == NULL) return;
    if (db->pages_fd >= 0) close(db->pages_fd);
    tde_journal_close(&db->journal);
    tde_nonce_close(&db->nonce);
    page_key_unref(db->key);
    pthread_rwlock_destroy(&db->io);
    pthread_mutex_destroy(&db->hold_mu);
    pthread_cond_destroy(&db->hold_cv);
    pthread_mutex_destroy(&db->lease_mu);
    pthread_cond_destroy(&db->lease_cv);
    free(db);
}

kv_result tde_db_load(tde_node *n, const char *dir, tde_db **out)
{
    char path[PATH_MAX];
    KV_ENSURE(snprintf(path, sizeof(path), "%s/meta", dir) < (int)sizeof(path),
              KV_ERR_INVALID_ARGUMENT, "path too long: %s", dir);
    DatabaseMeta *m = NULL;
    KV_GUARD(tde_record_read(path, TDE_RECORD_META, &hsmvault__tde__database_meta__descriptor,
                             (ProtobufCMessage **)&m));
    kv_result r = tde_meta_check(m);
    if (kv_ok(r)) r = tde_db_new(n, m, out);
    /* The meta must describe the directory it sits in. */
    if (kv_ok(r) && strcmp((*out)->dir, dir) != 0) {
        tde_db_free(*out);
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                         "%s describes database %s of environment %s, not this directory", path,
                         m->database_id, m->environment_id);
    }
    kv_pb_free(&m->base);
    return r;
}

/* ---- attach: open the files, recover the journal ------------------------- */

typedef struct {
    tde_db *db;
    page_key *key;
    uint8_t scratch[TDE_PAGE_DATA];
} db_check_arg;

static kv_result db_check_page(void *arg, uint64_t page_no, const uint8_t *page)
{
    db_check_arg *a = arg;
    kv_result r = page_open(a->key, &a->db->identity, page_no, page, a->scratch, NULL);
    kv_wipe(a->scratch, sizeof(a->scratch));
    return r;
}

static size_t db_journal_capacity(const tde_db *db)
{
    return 4u * db->node->cfg.checkpoint_pages + TDE_MAX_BATCH;
}

/* The highest write counter in the page file and the journal + 1 (for a
 * counter file that was lost: the new one starts above every used value). */
static kv_result db_scan_counter(tde_db *db, uint64_t *next)
{
    uint64_t best = 0;
    struct stat st;
    KV_ENSURE(fstat(db->pages_fd, &st) == 0, KV_ERR_UNAVAILABLE, "cannot stat the page file");
    uint8_t h[TDE_PAGE_HEADER];
    for (off_t off = 0; off + (off_t)TDE_PAGE_SIZE <= st.st_size; off += TDE_PAGE_SIZE) {
        size_t got = 0;
        page_header ph;
        KV_GUARD(tde_pread_upto(db->pages_fd, h, sizeof(h), off, &got, "the page file"));
        if (got == sizeof(h) && kv_ok(page_header_parse(h, got, &ph)) && ph.counter + 1 > best)
            best = ph.counter + 1;
    }
    for (uint64_t i = 0; i < db->journal.records; i++) {
        size_t got = 0;
        page_header ph;
        off_t off = (off_t)(TDE_JFILE_HEADER + i * TDE_JREC + TDE_JREC_HEADER);
        KV_GUARD(tde_pread_upto(db->journal.fd, h, sizeof(h), off, &got, "the journal"));
        if (got == sizeof(h) && kv_ok(page_header_parse(h, got, &ph)) && ph.counter + 1 > best)
            best = ph.counter + 1;
    }
    kv_error_clear();
    *next = best;
    return KV_SUCCESS;
}

static kv_result db_open_counter(tde_db *db)
{
    char path[PATH_MAX];
    KV_GUARD(db_file(db, "nonce", path, sizeof(path)));
    uint64_t limit = db->node->cfg.dek_write_limit;
    kv_result r = tde_nonce_load(&db->nonce, path, limit);
    if (kv_ok(r) && db->nonce.dek_version == db->dek_version) return KV_SUCCESS;
    if (kv_ok(r)) tde_nonce_close(&db->nonce);
    if (kv_failed(r) && kv_error_code() != KV_ERR_NOT_FOUND && kv_error_code() != KV_ERR_DATA_LOSS)
        return r;
    /* Lost or damaged: start a new epoch above every counter on disk. */
    uint64_t next = 0;
    KV_GUARD(db_scan_counter(db, &next));
    KV_LOG_WARN("database %s: write counter file missing or damaged; a new one starts at %llu "
                "with a fresh nonce epoch",
                db->db_id, (unsigned long long)next);
    unlink(path);
    return tde_nonce_create(&db->nonce, path, db->dek_version, next, limit);
}

kv_result tde_db_attach_locked(tde_db *db, page_key *key)
{
    if (db->attached) return KV_SUCCESS;
    char path[PATH_MAX];
    KV_GUARD(db_file(db, "pages.restore", path, sizeof(path)));
    unlink(path); /* a restore a crash interrupted: the old pages stand */
    KV_GUARD(db_file(db, "pages", path, sizeof(path)));
    db->pages_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    KV_ENSURE(db->pages_fd >= 0, KV_ERR_UNAVAILABLE, "cannot open %s: %s", path, strerror(errno));
    KV_GUARD(db_file(db, "journal", path, sizeof(path)));
    db_check_arg *arg = malloc(sizeof(*arg));
    KV_ENSURE(arg != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    arg->db = db;
    arg->key = key;
    uint64_t dropped = 0;
    kv_result r =
        tde_journal_open(&db->journal, path, db_journal_capacity(db), db_check_page, arg, &dropped);
    free(arg);
    if (kv_ok(r) && dropped > 0)
        KV_LOG_WARN("database %s: dropped %llu journal records of a batch that was never flushed "
                    "(torn or incomplete at a crash)",
                    db->db_id, (unsigned long long)dropped);
    if (kv_ok(r)) r = db_open_counter(db);
    if (kv_ok(r)) r = tde_fsync_dir(db->dir); /* the page file and journal may be new */
    if (kv_failed(r)) {
        tde_journal_close(&db->journal);
        close(db->pages_fd);
        db->pages_fd = -1;
        return r;
    }
    db->attached = true;
    KV_LOG_INFO("database %s (environment %s) attached: %zu journal pages recovered", db->db_id,
                db->env_id, tde_journal_count(&db->journal));
    return KV_SUCCESS;
}

/* Takes db->io shared with the files attached (attaching under the key). */
kv_result tde_db_io_shared(tde_db *db, page_key *key)
{
    pthread_rwlock_rdlock(&db->io);
    if (db->attached) return KV_SUCCESS;
    pthread_rwlock_unlock(&db->io);
    pthread_rwlock_wrlock(&db->io);
    kv_result r = db->removed ? kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                                             "its environment was reset; open it again")
                              : tde_db_attach_locked(db, key);
    pthread_rwlock_unlock(&db->io);
    if (kv_failed(r)) {
        tde_db_error_context(db);
        return r;
    }
    return tde_db_io_shared(db, key);
}

kv_result tde_db_wipe_locked(tde_db *db, uint32_t dek_version, uint64_t counter_start)
{
    if (db->pages_fd >= 0) close(db->pages_fd);
    db->pages_fd = -1;
    tde_journal_close(&db->journal);
    tde_nonce_close(&db->nonce);
    db->attached = false;
    static const char *const leaves[] = {"pages", "journal", "nonce", "pages.restore"};
    char path[PATH_MAX];
    KV_GUARD(kv_file_mkdirs(db->dir, 0700));
    for (size_t i = 0; i < KV_ARRAY_LEN(leaves); i++) {
        KV_GUARD(db_file(db, leaves[i], path, sizeof(path)));
        KV_ENSURE(unlink(path) == 0 || errno == ENOENT, KV_ERR_UNAVAILABLE, "cannot delete %s: %s",
                  path, strerror(errno));
    }
    DatabaseMeta m = HSMVAULT__TDE__DATABASE_META__INIT;
    m.format = 1;
    m.tenant_id = db->tenant_id;
    m.environment_id = db->env_id;
    m.database_id = db->db_id;
    m.name = db->name;
    m.dek_version = dek_version;
    m.created_at = db->created_at ? db->created_at : kv_clock_now();
    KV_GUARD(db_file(db, "meta", path, sizeof(path)));
    KV_GUARD(tde_record_write(path, TDE_RECORD_META, &m.base));
    KV_GUARD(db_file(db, "nonce", path, sizeof(path)));
    KV_GUARD(tde_nonce_create(&db->nonce, path, dek_version, counter_start,
                              db->node->cfg.dek_write_limit));
    tde_nonce_close(&db->nonce); /* loaded again at attach */
    db->dek_version = dek_version;
    db->created_at = m.created_at;
    db->removed = false;
    return tde_fsync_up(db->dir, db->node->cfg.data_dir);
}

/* ---- I/O ------------------------------------------------------------------ */

static kv_result db_check_page_no(const tde_db *db, uint64_t page_no)
{
    KV_ENSURE(page_no <= TDE_MAX_PAGE_NO, KV_ERR_INVALID_ARGUMENT,
              "page number %llu of database %s is out of range (0 to %llu)",
              (unsigned long long)page_no, db->db_id, (unsigned long long)TDE_MAX_PAGE_NO);
    return KV_SUCCESS;
}

/* Reads the sealed bytes of page_no (db->io held): from the journal if it
 * was written since the last checkpoint, else from the page file (a hole or
 * past the end reads as blank). */
static kv_result db_read_sealed(tde_db *db, uint64_t page_no, uint8_t *sealed)
{
    off_t off = tde_journal_find(&db->journal, page_no);
    int fd = off >= 0 ? db->journal.fd : db->pages_fd;
    if (off < 0) off = (off_t)(page_no * TDE_PAGE_SIZE);
    size_t got = 0;
    KV_GUARD(tde_pread_upto(fd, sealed, TDE_PAGE_SIZE, off, &got, "a page"));
    if (got < TDE_PAGE_SIZE) memset(sealed + got, 0, TDE_PAGE_SIZE - got);
    return KV_SUCCESS;
}

kv_result tde_db_read(tde_db *db, uint64_t page_no, uint8_t *data)
{
    KV_GUARD(db_check_page_no(db, page_no));
    page_key *key = NULL;
    KV_GUARD(tde_lease_key(db, false, &key));
    kv_result r = tde_db_io_shared(db, key);
    uint8_t sealed[TDE_PAGE_SIZE];
    if (kv_ok(r)) {
        r = db_read_sealed(db, page_no, sealed);
        pthread_rwlock_unlock(&db->io);
    }
    if (kv_ok(r) && page_is_blank(sealed))
        r = kv_error_set(KV_ERR_NOT_FOUND, __FILE__, __LINE__,
                         "page %llu of database %s (environment %s) has never been written",
                         (unsigned long long)page_no, db->db_id, db->env_id);
    else if (kv_ok(r) && kv_failed(page_open(key, &db->identity, page_no, sealed, data, NULL))) {
        r = KV_FAILURE;
        tde_db_error_context(db);
        KV_LOG_ERROR("%s", kv_error_msg());
    }
    page_key_unref(key);
    return r;
}

void tde_db_hold_checkpoints(tde_db *db, bool hold)
{
    pthread_mutex_lock(&db->hold_mu);
    if (hold)
        db->checkpoint_hold++;
    else if (--db->checkpoint_hold == 0)
        pthread_cond_broadcast(&db->hold_cv);
    pthread_mutex_unlock(&db->hold_mu);
}

static bool db_checkpoints_held(tde_db *db)
{
    pthread_mutex_lock(&db->hold_mu);
    bool held = db->checkpoint_hold > 0;
    pthread_mutex_unlock(&db->hold_mu);
    return held;
}

static kv_result db_copy_in_place(void *arg, uint64_t page_no, off_t off)
{
    tde_db *db = arg;
    uint8_t page[TDE_PAGE_SIZE];
    size_t got = 0;
    KV_GUARD(tde_pread_upto(db->journal.fd, page, sizeof(page), off, &got, "the journal"));
    KV_ENSURE(got == sizeof(page), KV_ERR_DATA_LOSS, "the journal of database %s is short",
              db->db_id);
    KV_GUARD(tde_pwrite_all(db->pages_fd, page, sizeof(page), (off_t)(page_no * TDE_PAGE_SIZE),
                            "the page file"));
    tde_node_test_crash_point(db->node, "checkpoint-in-place");
    return KV_SUCCESS;
}

kv_result tde_db_checkpoint_locked(tde_db *db)
{
    if (!db->attached || tde_journal_count(&db->journal) == 0) return KV_SUCCESS;
    /* The page file is written in place only from a durable journal. */
    KV_GUARD(tde_journal_sync(&db->journal));
    KV_GUARD(tde_journal_each(&db->journal, db_copy_in_place, db));
    KV_ENSURE(fdatasync(db->pages_fd) == 0, KV_ERR_UNAVAILABLE,
              "cannot sync the page file of database %s: %s", db->db_id, strerror(errno));
    tde_node_test_crash_point(db->node, "checkpoint-synced");
    return tde_journal_reset(&db->journal);
}

/* A checkpoint with db->io taken here; waits for backups reading the page
 * file to finish first. */
void tde_db_io_exclusive(tde_db *db)
{
    for (;;) {
        pthread_mutex_lock(&db->hold_mu);
        while (db->checkpoint_hold > 0)
            pthread_cond_wait(&db->hold_cv, &db->hold_mu);
        pthread_mutex_unlock(&db->hold_mu);
        pthread_rwlock_wrlock(&db->io);
        /* A backup holds checkpoints off only while it holds io shared, so
         * none can have started between the two. */
        if (!db_checkpoints_held(db)) return;
        pthread_rwlock_unlock(&db->io);
    }
}

static kv_result db_checkpoint(tde_db *db)
{
    tde_db_io_exclusive(db);
    kv_result r = tde_db_checkpoint_locked(db);
    pthread_rwlock_unlock(&db->io);
    if (kv_failed(r)) tde_db_error_context(db);
    return r;
}

kv_result tde_db_write(tde_db *db, const uint64_t *page_nos, const uint8_t *const *data, size_t n,
                       bool flush)
{
    KV_ENSURE(n >= 1 && n <= TDE_MAX_BATCH, KV_ERR_INVALID_ARGUMENT,
              "a write carries 1 to %u pages, not %zu", TDE_MAX_BATCH, n);
    for (size_t i = 0; i < n; i++)
        KV_GUARD(db_check_page_no(db, page_nos[i]));
    page_key *key = NULL;
    KV_GUARD(tde_lease_key(db, false, &key));
    uint8_t *recs = NULL;
    kv_result r = tde_db_io_shared(db, key);
    if (kv_ok(r)) pthread_rwlock_unlock(&db->io); /* attached; the counter is open */
    uint32_t epoch = 0;
    uint64_t first = 0;
    if (kv_ok(r)) r = tde_nonce_take(&db->nonce, (uint32_t)n, &epoch, &first);
    if (kv_ok(r)) {
        recs = malloc(n * TDE_JREC);
        if (recs == NULL)
            r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    }
    for (size_t i = 0; kv_ok(r) && i < n; i++) {
        page_header h = {.format = TDE_PAGE_FORMAT,
                         .dek_version = page_key_version(key),
                         .nonce_epoch = epoch,
                         .counter = first + i,
                         .page_no = page_nos[i]};
        r = page_seal(key, &db->identity, &h, data[i], recs + i * TDE_JREC + TDE_JREC_HEADER);
    }
    while (kv_ok(r)) {
        pthread_rwlock_rdlock(&db->io);
        if (!db->attached) { /* reset or wiped meanwhile */
            pthread_rwlock_unlock(&db->io);
            r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                             "it was reset while the write was being sealed");
            break;
        }
        if (!tde_journal_full(&db->journal, n)) {
            r = tde_journal_append(&db->journal, recs, n, page_nos);
            pthread_rwlock_unlock(&db->io);
            break;
        }
        pthread_rwlock_unlock(&db->io);
        r = db_checkpoint(db);
    }
    free(recs);
    page_key_unref(key);
    if (kv_failed(r)) {
        tde_db_error_context(db);
        return r;
    }
    tde_node_test_crash_point(db->node, "journal-append");
    if (!flush) return KV_SUCCESS;
    return tde_db_flush(db);
}

/* A database not attached since this process started may still have
 * journal writes of the previous one in the page cache (killed before a
 * flush): they are synced by path, no key needed. */
static kv_result db_sync_detached(const tde_db *db)
{
    char path[PATH_MAX];
    KV_GUARD(db_file(db, "journal", path, sizeof(path)));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return KV_SUCCESS; /* nothing written yet */
    int rc = fdatasync(fd);
    int e = errno;
    close(fd);
    KV_ENSURE(rc == 0, KV_ERR_UNAVAILABLE, "cannot sync %s: %s", path, strerror(e));
    return KV_SUCCESS;
}

kv_result tde_db_flush(tde_db *db)
{
    pthread_rwlock_rdlock(&db->io);
    kv_result r = db->attached  ? tde_journal_sync(&db->journal)
                  : db->removed ? KV_SUCCESS
                                : db_sync_detached(db);
    bool due = kv_ok(r) && db->attached &&
               tde_journal_count(&db->journal) >= db->node->cfg.checkpoint_pages;
    pthread_rwlock_unlock(&db->io);
    if (kv_failed(r)) {
        tde_db_error_context(db);
        return r;
    }
    tde_node_test_crash_point(db->node, "flushed");
    /* The flush is done: a checkpoint failing now loses nothing. */
    if (due && !db_checkpoints_held(db) && kv_failed(db_checkpoint(db)))
        kv_log_error_record(KV_LOG_ERROR, "checkpoint after a flush (retried at the next one)");
    return KV_SUCCESS;
}

uint64_t tde_db_page_span(tde_db *db)
{
    uint64_t span = 0;
    pthread_rwlock_rdlock(&db->io);
    struct stat st;
    if (db->attached && fstat(db->pages_fd, &st) == 0)
        span = ((uint64_t)st.st_size + TDE_PAGE_SIZE - 1) / TDE_PAGE_SIZE;
    if (db->attached) {
        pthread_mutex_lock(&db->journal.mu);
        if (db->journal.max_page_plus1 > span) span = db->journal.max_page_plus1;
        pthread_mutex_unlock(&db->journal.mu);
    }
    pthread_rwlock_unlock(&db->io);
    return span;
}
