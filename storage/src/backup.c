/*
 * backup.c: backups, restore, copy and reset on the node (seed 001's
 * environment database operations, decided by the vault).
 *
 * A backup is a consistent snapshot of a database's sealed pages (the
 * journal is checkpointed first and checkpoints are held off while the page
 * file is read; writes go on into the journal meanwhile), every page checked
 * under the DEK on the way, plus a manifest: no plaintext, no key.  It is
 * written under <id>.tmp and renamed into place once complete, so a crash
 * leaves no half backup (swept at start-up).
 *
 * Restore and copy re-seal every page under the target database's DEK and
 * identity (a page copied verbatim to another database would not open), into
 * a new page file that replaces the target's in one rename.  The vault's
 * AuthorizeRestore / AuthorizeCopy decide what is allowed.  Reset is the
 * vault's ResetEnvironment (fresh DEKs), then the environment's pages and
 * backups here are deleted.
 *
 * Must never write a page that did not open under the source DEK, never
 * replace a target's pages before the new file is durable, and never keep
 * plaintext beyond the buffer of the page being re-sealed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
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

#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"

/* Pages read or written per system call when streaming a page file. */
#define BK_CHUNK 128u

/* ---- start-up sweep ----------------------------------------------------------- */

static bool bk_is_tmp(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".tmp") == 0;
}

void tde_backup_sweep(tde_node *n)
{
    char root[PATH_MAX], path[PATH_MAX * 2];
    if (kv_ok(tde_node_path(n, root, sizeof(root), "tmp", NULL, NULL, NULL))) {
        DIR *d = opendir(root);
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            if (kv_failed(tde_path_join(path, sizeof(path), root, e->d_name)) ||
                kv_failed(tde_rmtree(path)))
                kv_log_error_record(KV_LOG_WARN, "sweeping tmp");
        }
        if (d != NULL) closedir(d);
    }
    if (kv_failed(tde_node_path(n, root, sizeof(root), "backups", NULL, NULL, NULL))) return;
    DIR *envs = opendir(root);
    struct dirent *e;
    while (envs != NULL && (e = readdir(envs)) != NULL) {
        if (kv_failed(tde_check_id("environment", e->d_name))) continue;
        char env_dir[PATH_MAX];
        if (kv_failed(tde_path_join(env_dir, sizeof(env_dir), root, e->d_name))) continue;
        DIR *dbs = opendir(env_dir);
        struct dirent *d;
        while (dbs != NULL && (d = readdir(dbs)) != NULL) {
            if (kv_failed(tde_check_id("database", d->d_name))) continue;
            char db_dir[PATH_MAX];
            if (kv_failed(tde_path_join(db_dir, sizeof(db_dir), env_dir, d->d_name))) continue;
            DIR *bks = opendir(db_dir);
            struct dirent *b;
            while (bks != NULL && (b = readdir(bks)) != NULL) {
                if (!bk_is_tmp(b->d_name)) continue;
                if (kv_failed(tde_path_join(path, sizeof(path), db_dir, b->d_name))) continue;
                KV_LOG_WARN("removing %s: a backup a crash interrupted", path);
                if (kv_failed(tde_rmtree(path)))
                    kv_log_error_record(KV_LOG_WARN, "removing an interrupted backup");
            }
            if (bks != NULL) closedir(bks);
        }
        if (dbs != NULL) closedir(dbs);
    }
    if (envs != NULL) closedir(envs);
    kv_error_clear();
}

/* ---- backup ----------------------------------------------------------------- */

typedef struct {
    EVP_MD_CTX *sha;
    int out_fd;
    uint64_t count, span;
    off_t out_off;
} bk_copy;

/* Copies the non-blank pages of db's page file (db->io shared, checkpoints
 * held) into c->out_fd, each checked under key. */
static kv_result bk_copy_pages(tde_db *db, page_key *key, bk_copy *c)
{
    struct stat st;
    KV_ENSURE(fstat(db->pages_fd, &st) == 0, KV_ERR_UNAVAILABLE, "cannot stat the page file");
    uint64_t slots = (uint64_t)st.st_size / TDE_PAGE_SIZE;
    uint8_t *buf = malloc(BK_CHUNK * TDE_PAGE_SIZE);
    uint8_t *plain = malloc(TDE_PAGE_DATA);
    kv_result r = buf != NULL && plain != NULL ? KV_SUCCESS
                                               : kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__,
                                                              __LINE__, "out of memory");
    for (uint64_t at = 0; kv_ok(r) && at < slots; at += BK_CHUNK) {
        size_t got = 0;
        r = tde_pread_upto(db->pages_fd, buf, BK_CHUNK * TDE_PAGE_SIZE, (off_t)(at * TDE_PAGE_SIZE),
                           &got, "the page file");
        for (size_t i = 0; kv_ok(r) && i < got / TDE_PAGE_SIZE; i++) {
            const uint8_t *page = buf + i * TDE_PAGE_SIZE;
            if (page_is_blank(page)) continue;
            r = page_open(key, &db->identity, at + i, page, plain, NULL);
            kv_wipe(plain, TDE_PAGE_DATA);
            if (kv_ok(r))
                r = tde_pwrite_all(c->out_fd, page, TDE_PAGE_SIZE, c->out_off, "a backup");
            if (kv_ok(r) && EVP_DigestUpdate(c->sha, page, TDE_PAGE_SIZE) != 1)
                r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "SHA-256 failed");
            c->out_off += TDE_PAGE_SIZE;
            c->count++;
            c->span = at + i + 1;
        }
        if (kv_ok(r) && at == 0) tde_node_test_crash_point(db->node, "backup-pages");
    }
    free(buf);
    free(plain);
    return r;
}

kv_result tde_backup_create(tde_node *n, tde_db *db, const char *principal, bool scratch,
                            BackupManifest **out, char *dir_out, size_t dir_cap)
{
    page_key *key = NULL;
    KV_GUARD(tde_lease_key(db, false, &key));
    char id[40], final_dir[PATH_MAX], work[PATH_MAX + 8], path[PATH_MAX + 32];
    tde_random_id("bk", id, sizeof(id));
    kv_result r = scratch ? tde_node_path(n, final_dir, sizeof(final_dir), "tmp", id, NULL, NULL)
                          : tde_node_path(n, final_dir, sizeof(final_dir), "backups", db->env_id,
                                          db->db_id, id);
    snprintf(work, sizeof(work), "%s%s", final_dir, scratch ? "" : ".tmp");
    if (kv_ok(r)) r = kv_file_mkdirs(work, 0700);
    bk_copy c = {.out_fd = -1, .sha = EVP_MD_CTX_new()};
    if (kv_ok(r) && (c.sha == NULL || EVP_DigestInit_ex(c.sha, EVP_sha256(), NULL) != 1))
        r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "SHA-256 failed");
    snprintf(path, sizeof(path), "%s/pages", work);
    if (kv_ok(r)) {
        c.out_fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (c.out_fd < 0)
            r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot create %s: %s", path,
                             strerror(errno));
    }
    uint64_t counter_high = 0;
    if (kv_ok(r)) {
        /* A point in time: the journal into the page file, then the page
         * file read with checkpoints held off (writes go on meanwhile). */
        r = tde_db_io_shared(db, key); /* attached */
        if (kv_ok(r)) pthread_rwlock_unlock(&db->io);
    }
    if (kv_ok(r)) {
        tde_db_io_exclusive(db);
        r = tde_db_checkpoint_locked(db);
        if (kv_ok(r)) {
            counter_high = tde_nonce_used(&db->nonce);
            tde_db_hold_checkpoints(db, true);
        }
        pthread_rwlock_unlock(&db->io);
        if (kv_ok(r)) {
            pthread_rwlock_rdlock(&db->io);
            r = db->attached ? bk_copy_pages(db, key, &c)
                             : kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                                            "it was reset during the backup");
            pthread_rwlock_unlock(&db->io);
            tde_db_hold_checkpoints(db, false);
        }
    }
    uint8_t sha[32];
    unsigned sha_len = 0;
    if (kv_ok(r) && (fdatasync(c.out_fd) != 0 || EVP_DigestFinal_ex(c.sha, sha, &sha_len) != 1))
        r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot finish the backup: %s",
                         strerror(errno));
    if (c.out_fd >= 0) close(c.out_fd);
    EVP_MD_CTX_free(c.sha);
    if (kv_ok(r)) {
        BackupManifest m = HSMVAULT__TDE__BACKUP_MANIFEST__INIT;
        m.format = 1;
        m.backup_id = id;
        m.tenant_id = db->tenant_id;
        m.environment_id = db->env_id;
        m.database_id = db->db_id;
        m.database_name = db->name;
        m.dek_version = page_key_version(key);
        m.page_count = c.count;
        m.page_span = c.span;
        m.pages_sha256 = (ProtobufCBinaryData){32, sha};
        m.pages_bytes = c.count * TDE_PAGE_SIZE;
        m.counter_high = counter_high;
        m.created_at = kv_clock_now();
        m.created_by = (char *)(uintptr_t)principal;
        snprintf(path, sizeof(path), "%s/manifest", work);
        r = tde_record_write(path, TDE_RECORD_MANIFEST, &m.base);
    }
    if (kv_ok(r) && !scratch) {
        if (rename(work, final_dir) != 0)
            r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot rename %s: %s", work,
                             strerror(errno));
        char parent[PATH_MAX];
        if (kv_ok(r))
            r = tde_node_path(n, parent, sizeof(parent), "backups", db->env_id, db->db_id, NULL);
        if (kv_ok(r)) r = tde_fsync_up(parent, n->cfg.data_dir);
    }
    if (kv_ok(r)) {
        snprintf(path, sizeof(path), "%s/manifest", final_dir);
        r = tde_record_read(path, TDE_RECORD_MANIFEST, &hsmvault__tde__backup_manifest__descriptor,
                            (ProtobufCMessage **)out);
    }
    page_key_unref(key);
    if (kv_failed(r)) {
        kv_error_record saved;
        kv_error_save(&saved);
        if (kv_failed(tde_rmtree(work))) kv_log_error_record(KV_LOG_WARN, "removing a backup");
        kv_error_restore(&saved);
        kv_error_context("backing up database %s (environment %s)", db->db_id, db->env_id);
        return r;
    }
    if (dir_out != NULL) snprintf(dir_out, dir_cap, "%s", final_dir);
    KV_LOG_INFO("backup %s of database %s: %llu pages", id, db->db_id, (unsigned long long)c.count);
    return KV_SUCCESS;
}

/* ---- finding backups ----------------------------------------------------------- */

/* Loads and checks the manifest in dir: it must describe that directory. */
static kv_result bk_load(tde_node *n, const char *dir, const char *env, const char *db,
                         const char *id, BackupManifest **out)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/manifest", dir);
    BackupManifest *m = NULL;
    KV_GUARD(tde_record_read(path, TDE_RECORD_MANIFEST, &hsmvault__tde__backup_manifest__descriptor,
                             (ProtobufCMessage **)&m));
    kv_result r = tde_manifest_check(m);
    if (kv_ok(r) && (strcmp(m->environment_id, env) != 0 || strcmp(m->database_id, db) != 0 ||
                     strcmp(m->backup_id, id) != 0))
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                         "%s describes another backup than its directory", path);
    (void)n;
    if (kv_failed(r)) {
        kv_pb_free(&m->base);
        return r;
    }
    *out = m;
    return KV_SUCCESS;
}

typedef kv_result (*bk_visit_fn)(void *arg, const char *dir, BackupManifest *m, bool *stop);

/* Calls fn for every complete backup (env/db may be "" for all). */
static kv_result bk_walk(tde_node *n, const char *env_id, const char *db_id, bk_visit_fn fn,
                         void *arg)
{
    char root[PATH_MAX];
    KV_GUARD(tde_node_path(n, root, sizeof(root), "backups", NULL, NULL, NULL));
    DIR *envs = opendir(root);
    KV_ENSURE(envs != NULL, KV_ERR_UNAVAILABLE, "cannot read %s: %s", root, strerror(errno));
    kv_result r = KV_SUCCESS;
    bool stop = false;
    struct dirent *e;
    while (kv_ok(r) && !stop && (e = readdir(envs)) != NULL) {
        if (kv_failed(tde_check_id("environment", e->d_name)) ||
            (env_id[0] != '\0' && strcmp(env_id, e->d_name) != 0))
            continue;
        char env_dir[PATH_MAX];
        if (kv_failed(tde_path_join(env_dir, sizeof(env_dir), root, e->d_name))) continue;
        DIR *dbs = opendir(env_dir);
        struct dirent *d;
        while (kv_ok(r) && !stop && dbs != NULL && (d = readdir(dbs)) != NULL) {
            if (kv_failed(tde_check_id("database", d->d_name)) ||
                (db_id[0] != '\0' && strcmp(db_id, d->d_name) != 0))
                continue;
            char db_dir[PATH_MAX];
            if (kv_failed(tde_path_join(db_dir, sizeof(db_dir), env_dir, d->d_name))) continue;
            DIR *bks = opendir(db_dir);
            struct dirent *b;
            while (kv_ok(r) && !stop && bks != NULL && (b = readdir(bks)) != NULL) {
                if (bk_is_tmp(b->d_name) || kv_failed(tde_check_id("backup", b->d_name))) continue;
                char dir[PATH_MAX];
                if (kv_failed(tde_path_join(dir, sizeof(dir), db_dir, b->d_name))) continue;
                BackupManifest *m = NULL;
                if (kv_failed(bk_load(n, dir, e->d_name, d->d_name, b->d_name, &m))) {
                    kv_log_error_record(KV_LOG_WARN, "skipping a damaged backup");
                    continue;
                }
                r = fn(arg, dir, m, &stop);
            }
            if (bks != NULL) closedir(bks);
        }
        if (dbs != NULL) closedir(dbs);
    }
    closedir(envs);
    if (kv_ok(r)) kv_error_clear();
    return r;
}

typedef struct {
    const char *id;
    BackupManifest *found;
    char *dir;
    size_t cap;
} bk_find_arg;

static kv_result bk_find_visit(void *arg, const char *dir, BackupManifest *m, bool *stop)
{
    bk_find_arg *a = arg;
    if (strcmp(m->backup_id, a->id) != 0) {
        kv_pb_free(&m->base);
        return KV_SUCCESS;
    }
    a->found = m;
    snprintf(a->dir, a->cap, "%s", dir);
    *stop = true;
    return KV_SUCCESS;
}

kv_result tde_backup_find(tde_node *n, const char *backup_id, BackupManifest **out, char *dir,
                          size_t dir_cap)
{
    KV_GUARD(tde_check_id("backup_id", backup_id));
    bk_find_arg a = {.id = backup_id, .dir = dir, .cap = dir_cap};
    KV_GUARD(bk_walk(n, "", "", bk_find_visit, &a));
    KV_ENSURE(a.found != NULL, KV_ERR_NOT_FOUND, "backup %s is not on this node", backup_id);
    *out = a.found;
    return KV_SUCCESS;
}

typedef struct {
    BackupManifest **items;
    size_t n, cap;
} bk_list_arg;

static kv_result bk_list_visit(void *arg, const char *dir, BackupManifest *m, bool *stop)
{
    (void)dir, (void)stop;
    bk_list_arg *a = arg;
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 16;
        BackupManifest **p = realloc(a->items, cap * sizeof(*p));
        if (p == NULL) {
            kv_pb_free(&m->base);
            KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        a->items = p;
        a->cap = cap;
    }
    a->items[a->n++] = m;
    return KV_SUCCESS;
}

kv_result tde_backup_list(tde_node *n, const char *env_id, const char *db_id, BackupManifest ***out,
                          size_t *count)
{
    bk_list_arg a = {0};
    kv_result r = bk_walk(n, env_id, db_id, bk_list_visit, &a);
    if (kv_failed(r)) {
        for (size_t i = 0; i < a.n; i++)
            kv_pb_free(&a.items[i]->base);
        free(a.items);
        return r;
    }
    *out = a.items;
    *count = a.n;
    return KV_SUCCESS;
}

/* ---- restore / copy -------------------------------------------------------------- */

/* Asks the vault whether pages may move from src_env into dst_env. */
static kv_result bk_authorize(tde_node *n, bool copy, const char *src_env, const char *dst_env)
{
    Hsmvault__V1__AuthorizeTransferRequest req = HSMVAULT__V1__AUTHORIZE_TRANSFER_REQUEST__INIT;
    req.source_environment_id = (char *)(uintptr_t)src_env;
    req.target_environment_id = (char *)(uintptr_t)dst_env;
    Hsmvault__V1__AuthorizeTransferResponse *resp = NULL;
    KV_GUARD(tde_vault_call(n,
                            copy ? "/hsmvault.v1.Environments/AuthorizeCopy"
                                 : "/hsmvault.v1.Environments/AuthorizeRestore",
                            &req.base, &hsmvault__v1__authorize_transfer_response__descriptor,
                            (ProtobufCMessage **)&resp));
    kv_result r = KV_SUCCESS;
    if (!resp->allowed)
        r = kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__,
                         "the vault refuses this %s: %s", copy ? "copy" : "restore", resp->reason);
    kv_pb_free(&resp->base);
    return r;
}

/* The DEK the backup's pages are sealed under (the source database's,
 * leased here or unwrapped for the restore). */
static kv_result bk_source_key(tde_node *n, const BackupManifest *b, const char *dir,
                               page_key **key)
{
    tde_db *src = NULL;
    if (kv_ok(tde_node_find(n, b->environment_id, b->database_id, &src)) && !src->removed) {
        KV_GUARD(tde_lease_key(src, false, key));
    } else {
        Hsmvault__V1__DatabaseKey *reply = NULL;
        KV_GUARD(tde_vault_unwrap(n, "/hsmvault.v1.KeyAccess/UnwrapDatabaseKey", b->environment_id,
                                  b->database_id, key, &reply));
        kv_pb_free(&reply->base);
    }
    uint32_t v = page_key_version(*key);
    if (v == b->dek_version) return KV_SUCCESS;
    page_key_unref(*key);
    *key = NULL;
    if (v > b->dek_version) {
        /* Sealed under a DEK that no longer exists. */
        if (kv_failed(tde_rmtree(dir))) kv_log_error_record(KV_LOG_WARN, "deleting a dead backup");
        KV_BAIL(KV_ERR_FAILED_PRECONDITION,
                "backup %s is sealed under DEK version %u of database %s, which no longer exists "
                "(its environment was reset; the DEK is now version %u): it can never be read and "
                "was deleted",
                b->backup_id, b->dek_version, b->database_id, v);
    }
    KV_BAIL(KV_ERR_DATA_LOSS, "backup %s claims DEK version %u; the vault has only version %u",
            b->backup_id, b->dek_version, v);
}

/* Checks the backup's pages file against its manifest (size, SHA-256). */
static kv_result bk_verify(const BackupManifest *b, int fd)
{
    struct stat st;
    KV_ENSURE(fstat(fd, &st) == 0, KV_ERR_UNAVAILABLE, "cannot stat a backup");
    KV_ENSURE((uint64_t)st.st_size == b->pages_bytes, KV_ERR_DATA_LOSS,
              "backup %s: its pages file is %lld bytes, the manifest says %llu", b->backup_id,
              (long long)st.st_size, (unsigned long long)b->pages_bytes);
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    uint8_t *buf = malloc(BK_CHUNK * TDE_PAGE_SIZE);
    kv_result r =
        sha != NULL && buf != NULL && EVP_DigestInit_ex(sha, EVP_sha256(), NULL) == 1
            ? KV_SUCCESS
            : kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    for (off_t at = 0; kv_ok(r) && at < st.st_size;) {
        size_t got = 0;
        r = tde_pread_upto(fd, buf, BK_CHUNK * TDE_PAGE_SIZE, at, &got, "a backup");
        if (kv_ok(r) && got == 0) break;
        if (kv_ok(r) && EVP_DigestUpdate(sha, buf, got) != 1)
            r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "SHA-256 failed");
        at += (off_t)got;
    }
    uint8_t d[32];
    unsigned dl = 0;
    if (kv_ok(r) && (EVP_DigestFinal_ex(sha, d, &dl) != 1 || memcmp(d, b->pages_sha256.data, 32)))
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                         "backup %s: its pages file does not match the manifest's checksum",
                         b->backup_id);
    EVP_MD_CTX_free(sha);
    free(buf);
    return r;
}

typedef struct {
    page_key *src_key, *dst_key;
    page_identity src_id;
    tde_db *dst;
    int in_fd, out_fd;
    uint64_t pages;
} bk_reseal;

/* Re-seals every page of the backup into out_fd under the target's DEK. */
static kv_result bk_reseal_pages(bk_reseal *s, const BackupManifest *b)
{
    uint8_t *in = malloc(BK_CHUNK * TDE_PAGE_SIZE), *out = malloc(TDE_PAGE_SIZE);
    uint8_t *plain = malloc(TDE_PAGE_DATA);
    kv_result r =
        in != NULL && out != NULL && plain != NULL
            ? KV_SUCCESS
            : kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    for (uint64_t at = 0; kv_ok(r) && at < b->page_count; at += BK_CHUNK) {
        size_t got = 0;
        r = tde_pread_upto(s->in_fd, in, BK_CHUNK * TDE_PAGE_SIZE, (off_t)(at * TDE_PAGE_SIZE),
                           &got, "a backup");
        size_t count = got / TDE_PAGE_SIZE;
        uint32_t epoch = 0;
        uint64_t first = 0;
        if (kv_ok(r) && count > 0)
            r = tde_nonce_take(&s->dst->nonce, (uint32_t)count, &epoch, &first);
        for (size_t i = 0; kv_ok(r) && i < count; i++) {
            const uint8_t *page = in + i * TDE_PAGE_SIZE;
            page_header h;
            r = page_header_parse(page, TDE_PAGE_SIZE, &h);
            if (kv_ok(r)) r = page_open(s->src_key, &s->src_id, h.page_no, page, plain, NULL);
            page_header nh = {.format = TDE_PAGE_FORMAT,
                              .dek_version = page_key_version(s->dst_key),
                              .nonce_epoch = epoch,
                              .counter = first + i,
                              .page_no = h.page_no};
            if (kv_ok(r)) r = page_seal(s->dst_key, &s->dst->identity, &nh, plain, out);
            kv_wipe(plain, TDE_PAGE_DATA);
            if (kv_ok(r))
                r = tde_pwrite_all(s->out_fd, out, TDE_PAGE_SIZE,
                                   (off_t)(h.page_no * TDE_PAGE_SIZE), "the restored page file");
            s->pages++;
        }
        if (kv_ok(r) && at == 0) tde_node_test_crash_point(s->dst->node, "restore-reseal");
    }
    if (kv_failed(r)) kv_error_context("backup %s", b->backup_id);
    if (plain != NULL) kv_wipe(plain, TDE_PAGE_DATA);
    free(in);
    free(out);
    free(plain);
    return r;
}

/* Swaps the re-sealed file in: the target's journal into its old pages
 * first (so a crash before the rename leaves the old database whole), then
 * one rename (so a crash after it leaves the new one). */
static kv_result bk_install(tde_db *dst, const char *tmp_path)
{
    char path[PATH_MAX + 8];
    snprintf(path, sizeof(path), "%s/pages", dst->dir);
    tde_db_io_exclusive(dst);
    kv_result r = tde_db_checkpoint_locked(dst);
    if (kv_ok(r) && rename(tmp_path, path) != 0)
        r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot rename %s: %s", tmp_path,
                         strerror(errno));
    if (kv_ok(r)) r = tde_fsync_dir(dst->dir);
    if (kv_ok(r)) {
        int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot open %s: %s", path,
                             strerror(errno));
        } else {
            close(dst->pages_fd);
            dst->pages_fd = fd;
        }
    }
    pthread_rwlock_unlock(&dst->io);
    return r;
}

kv_result tde_backup_restore(tde_node *n, const BackupManifest *b, const char *dir,
                             bool copy_authorized, const char *target_env, const char *target_db,
                             const char *new_name, tde_db **out)
{
    char path[PATH_MAX + 16], tmp_path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/pages", dir);
    bk_reseal s = {.in_fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), .out_fd = -1};
    KV_ENSURE(s.in_fd >= 0, KV_ERR_DATA_LOSS, "backup %s has no pages file: %s", b->backup_id,
              strerror(errno));
    kv_result r = bk_verify(b, s.in_fd);
    if (kv_ok(r) && !copy_authorized) r = bk_authorize(n, false, b->environment_id, target_env);
    if (kv_ok(r))
        r = page_identity_make(b->tenant_id, b->environment_id, b->database_id, &s.src_id);
    if (kv_ok(r)) r = bk_source_key(n, b, dir, &s.src_key);
    if (kv_ok(r))
        r = target_db[0] != '\0' ? tde_node_open_db(n, target_env, target_db, true, &s.dst)
                                 : tde_node_create_db(n, target_env, new_name, &s.dst);
    if (kv_ok(r)) r = tde_lease_key(s.dst, false, &s.dst_key);
    if (kv_ok(r)) {
        r = tde_db_io_shared(s.dst, s.dst_key); /* attached: its counter is open */
        if (kv_ok(r)) pthread_rwlock_unlock(&s.dst->io);
    }
    if (kv_ok(r)) {
        snprintf(tmp_path, sizeof(tmp_path), "%s/pages.restore", s.dst->dir);
        s.out_fd = open(tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (s.out_fd < 0)
            r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot create %s: %s",
                             tmp_path, strerror(errno));
    }
    if (kv_ok(r)) r = bk_reseal_pages(&s, b);
    if (kv_ok(r) && fdatasync(s.out_fd) != 0)
        r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot sync %s: %s", tmp_path,
                         strerror(errno));
    if (s.out_fd >= 0) close(s.out_fd);
    if (kv_ok(r))
        r = bk_install(s.dst, tmp_path);
    else if (s.out_fd >= 0)
        unlink(tmp_path);
    close(s.in_fd);
    page_key_unref(s.src_key);
    page_key_unref(s.dst_key);
    if (kv_failed(r)) return r;
    KV_LOG_INFO("%llu pages of backup %s re-sealed into database %s (environment %s)",
                (unsigned long long)s.pages, b->backup_id, s.dst->db_id, s.dst->env_id);
    *out = s.dst;
    return KV_SUCCESS;
}

kv_result tde_db_copy(tde_node *n, tde_db *src, const char *target_env, const char *target_db,
                      const char *new_name, const char *principal, tde_db **out)
{
    KV_GUARD(bk_authorize(n, true, src->env_id, target_env));
    BackupManifest *b = NULL;
    char dir[PATH_MAX];
    KV_GUARD(tde_backup_create(n, src, principal, true, &b, dir, sizeof(dir)));
    kv_result r = tde_backup_restore(n, b, dir, true, target_env, target_db, new_name, out);
    kv_error_record saved;
    kv_error_save(&saved);
    if (kv_failed(tde_rmtree(dir))) kv_log_error_record(KV_LOG_WARN, "removing a scratch copy");
    kv_error_restore(&saved);
    kv_pb_free(&b->base);
    return r;
}

/* ---- reset ------------------------------------------------------------------------ */

static kv_result bk_count_visit(void *arg, const char *dir, BackupManifest *m, bool *stop)
{
    (void)dir, (void)stop;
    (*(uint32_t *)arg)++;
    kv_pb_free(&m->base);
    return KV_SUCCESS;
}

kv_result tde_env_reset(tde_node *n, const char *env_id, const char *confirmation,
                        uint32_t *databases, uint32_t *backups)
{
    Hsmvault__V1__ResetEnvironmentRequest req = HSMVAULT__V1__RESET_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)env_id;
    req.confirmation_name = (char *)(uintptr_t)(confirmation != NULL ? confirmation : "");
    Hsmvault__V1__Environment *e = NULL;
    KV_GUARD(tde_vault_call(n, "/hsmvault.v1.Environments/ResetEnvironment", &req.base,
                            &hsmvault__v1__environment__descriptor, (ProtobufCMessage **)&e));
    kv_pb_free(&e->base);
    /* The old DEKs are gone: what follows deletes unreadable bytes.  A crash
     * here leaves them to the next open (reset detected, started empty). */
    tde_node_test_crash_point(n, "reset-vault");
    *databases = 0;
    *backups = 0;
    KV_GUARD(bk_walk(n, env_id, "", bk_count_visit, backups));
    tde_db **dbs = NULL;
    size_t count = 0;
    KV_GUARD(tde_node_list(n, env_id, &dbs, &count));
    kv_result r = KV_SUCCESS;
    for (size_t i = 0; i < count && kv_ok(r); i++) {
        tde_db *db = dbs[i];
        char reason[200];
        snprintf(reason, sizeof(reason),
                 "its environment was reset: its pages and backups were deleted; open it again "
                 "to start it empty");
        pthread_mutex_lock(&db->lease_mu);
        db->removed = true;
        pthread_mutex_unlock(&db->lease_mu);
        tde_lease_drop(db, TDE_DB_REFUSED, KV_ERR_FAILED_PRECONDITION, reason);
        tde_db_io_exclusive(db);
        if (db->pages_fd >= 0) close(db->pages_fd);
        db->pages_fd = -1;
        tde_journal_close(&db->journal);
        tde_nonce_close(&db->nonce);
        db->attached = false;
        r = tde_rmtree(db->dir);
        pthread_rwlock_unlock(&db->io);
        (*databases)++;
    }
    free(dbs);
    char path[PATH_MAX];
    if (kv_ok(r)) r = tde_node_path(n, path, sizeof(path), "backups", env_id, NULL, NULL);
    if (kv_ok(r)) r = tde_rmtree(path);
    return r;
}
