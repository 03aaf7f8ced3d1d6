/*
 * node.h: tdenode's internals (not an API): the node, its databases, their
 * files (page file, journal, nonce counter), DEK leases through the vault,
 * backups.  Database engines reach all of it through the Pages service
 * (ops_pages.c); nothing here includes gRPC.
 *
 * Data directory (docs/tdenode.md):
 *   tdenode.lock                         one tdenode per directory (flock)
 *   db/<environment>/<database>/meta     the database's identity (record.c)
 *                              /pages    page N at N * 8 KiB (holes: never written)
 *                              /journal  sealed pages written since the last checkpoint
 *                              /nonce    the DEK's write-counter reservations
 *   backups/<environment>/<database>/<backup>/{manifest,pages}
 *
 * Locking: node->mu guards the database table; db->io (rwlock) is held
 * shared by reads and writes and exclusively by checkpoints, restores and
 * resets; db->lease_mu guards the lease state; the journal and the nonce
 * counter have their own mutexes.  Order: node->mu, db->io, db->lease_mu,
 * journal/nonce.
 */
#ifndef TDE_NODE_H
#define TDE_NODE_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "kv_result.h"
#include "page.h"
#include "rpc_server.h"
#include "vaultclient.h"

#include "hsmvault/tde/records.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"
#include "hsmvault/v1/pages.pb-c.h"

typedef Hsmvault__Tde__DatabaseMeta DatabaseMeta;
typedef Hsmvault__Tde__BackupManifest BackupManifest;

/* Page numbers 0 .. 2^32 - 1 (32 TiB of pages per database). */
#define TDE_MAX_PAGE_NO 0xFFFFFFFFull
/* Pages per batch read or write. */
#define TDE_MAX_BATCH 256u
#define TDE_NAME_MAX 128u
/* AES-GCM: at most 2^32 seals under one DEK (docs/tdenode.md, "Nonces"). */
#define TDE_DEK_WRITE_LIMIT (1ull << 32)

/* ---- record files (record.c): meta and backup manifests ---------------- */

#define TDE_RECORD_META 1
#define TDE_RECORD_MANIFEST 2
/* A record file: "HVTR", kind, 3 zero bytes, u32 length, protobuf, SHA-256
 * of everything before it.  Written atomically (temp + rename + fsync). */
KV_RESULT tde_record_write(const char *path, uint8_t kind, const ProtobufCMessage *msg);
KV_RESULT tde_record_read(const char *path, uint8_t kind, const ProtobufCMessageDescriptor *desc,
                          ProtobufCMessage **out);
/* The parser behind tde_record_read (untrusted bytes; fuzzed). */
KV_RESULT tde_record_parse(const uint8_t *data, size_t len, uint8_t kind,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out);
/* Field checks of what the parsers return (DATA_LOSS naming the field). */
KV_RESULT tde_meta_check(const DatabaseMeta *m);
KV_RESULT tde_manifest_check(const BackupManifest *m);
/* Ids we put in paths: 1..TDE_ID_MAX of [A-Za-z0-9._-], not "." or "..". */
KV_RESULT tde_check_id(const char *what, const char *id);

/* ---- the nonce counter (nonce.c) ---------------------------------------- */

/* Reservations of the DEK's write counter, persisted (fdatasync) before any
 * value of them is used: after a crash the counter resumes above everything
 * that may have been used, so a nonce never repeats for a DEK. */
typedef struct {
    int fd;
    pthread_mutex_t mu;
    uint32_t dek_version;
    uint32_t epoch;    /* random per counter file: the nonce's fixed field */
    uint64_t next;     /* next value to hand out */
    uint64_t reserved; /* values below this are covered by a durable reservation */
    uint64_t seq;      /* generation of the slot written last */
    uint64_t limit;    /* hard limit of seals under this DEK */
    uint64_t block;    /* values reserved per fdatasync */
    bool live;
} tde_nonce;

/* A slot as stored (tde_nonce_slot_parse is fuzzed). */
typedef struct {
    uint64_t seq;
    uint32_t dek_version;
    uint32_t epoch;
    uint64_t reserved;
} tde_nonce_slot;
#define TDE_NONCE_SLOT_LEN 48u

/* Creates path (must not exist) for a DEK whose counter starts at start
 * (0 for a new DEK; a restored database continues above its backup's). */
KV_RESULT tde_nonce_create(tde_nonce *n, const char *path, uint32_t dek_version, uint64_t start,
                           uint64_t limit);
/* Loads path; the counter resumes at the newest valid reservation. */
KV_RESULT tde_nonce_load(tde_nonce *n, const char *path, uint64_t limit);
/* Hands out count consecutive counter values (*first ...), reserving and
 * persisting more first when needed.  RESOURCE_EXHAUSTED at the limit. */
KV_RESULT tde_nonce_take(tde_nonce *n, uint32_t count, uint32_t *epoch, uint64_t *first);
uint64_t tde_nonce_used(tde_nonce *n);
void tde_nonce_close(tde_nonce *n);
KV_RESULT tde_nonce_slot_parse(const uint8_t *p, size_t len, tde_nonce_slot *out);

/* ---- the journal (journal.c) ------------------------------------------- */

/* Sealed pages are appended here (one pwrite per batch, the batch's last
 * record marked commit); Flush is one fdatasync of this file; a checkpoint
 * copies the newest version of each page into the page file, fdatasyncs it
 * and starts an empty journal.  A torn or partial batch at the end is
 * dropped at recovery (it was never acknowledged after a flush); the page
 * file is written in place only from a durable journal, so a torn in-place
 * write is repaired by the replay. */
#define TDE_JREC_HEADER 64u
#define TDE_JREC (TDE_JREC_HEADER + TDE_PAGE_SIZE)
#define TDE_JFILE_HEADER 64u

typedef struct {
    int fd;
    pthread_mutex_t mu;
    uint64_t generation; /* random per empty journal: records of older ones never count */
    uint64_t records;    /* complete records after the file header */
    size_t capacity;     /* records before a checkpoint is required */
    /* page number -> record index of its newest version (open addressing) */
    uint64_t *keys; /* page_no + 1; 0 = empty */
    uint32_t *vals;
    size_t cap, used;
    uint64_t max_page_plus1; /* highest page number in the journal + 1 */
} tde_journal;

/* Checks one recovered record's sealed page (the page key's page_open). */
typedef kv_result (*tde_journal_check_fn)(void *arg, uint64_t page_no, const uint8_t *page);

/* Opens (creating if absent) and recovers: complete committed batches whose
 * pages pass check are kept and indexed; the first bad record and all after
 * it are cut off (*dropped counts them).  capacity: records before the
 * writer must checkpoint. */
KV_RESULT tde_journal_open(tde_journal *j, const char *path, size_t capacity,
                           tde_journal_check_fn check, void *arg, uint64_t *dropped);
/* Appends n records laid out in recs (TDE_JREC each, sealed page after the
 * header space), page numbers in page_nos; RESOURCE_EXHAUSTED if they do not
 * fit (checkpoint first). */
KV_RESULT tde_journal_append(tde_journal *j, uint8_t *recs, size_t n, const uint64_t *page_nos);
/* File offset of the newest sealed page_no in the journal, or -1. */
off_t tde_journal_find(tde_journal *j, uint64_t page_no);
size_t tde_journal_count(tde_journal *j);
bool tde_journal_full(tde_journal *j, size_t more);
KV_RESULT tde_journal_sync(tde_journal *j);
/* Calls fn for the newest version of every page (offsets into the file). */
KV_RESULT tde_journal_each(tde_journal *j, kv_result (*fn)(void *arg, uint64_t page_no, off_t off),
                           void *arg);
/* Starts an empty journal (new generation), durable on return. */
KV_RESULT tde_journal_reset(tde_journal *j);
void tde_journal_close(tde_journal *j);
/* Parses a record header (fuzzed): magic, flags, generation, seq, page. */
typedef struct {
    bool commit;
    uint64_t generation, seq, page_no;
} tde_jrec_header;
KV_RESULT tde_jrec_header_parse(const uint8_t *p, size_t len, tde_jrec_header *out);

/* ---- the node and its databases ---------------------------------------- */

typedef enum {
    TDE_DB_CLOSED = 0, /* known on disk, no DEK yet */
    TDE_DB_OPEN,       /* DEK leased */
    TDE_DB_REFUSED,    /* the vault refused the DEK (lock, deletion, reset) */
    TDE_DB_EXPIRED,    /* the lease ran out and the vault could not be reached */
    TDE_DB_BROKEN,     /* local files unreadable (DATA_LOSS) */
} tde_db_state;

typedef enum { TDE_ROLE_ENGINE = 1, TDE_ROLE_ADMIN = 2 } tde_role;

typedef struct {
    char principal[512];
    tde_role role;
    char environment_id[TDE_ID_MAX + 1]; /* "" : any environment */
} tde_grant;

#define TDE_GRANTS_MAX 64

typedef struct {
    char listen[128];
    char tls_ca[PATH_MAX]; /* CA of the database engines' certificates */
    char tls_cert[PATH_MAX];
    char tls_key[PATH_MAX];
    vc_profile vault;               /* how tdenode reaches vaultd (storage-node identity) */
    char vault_addr_file[PATH_MAX]; /* --dev: re-read when the vault moves */
    char data_dir[PATH_MAX];
    unsigned workers;
    unsigned max_lease_seconds; /* never hold a DEK longer than this without renewal */
    unsigned checkpoint_pages;  /* checkpoint after a flush once the journal holds this many */
    uint64_t dek_write_limit;
    size_t max_message;
    tde_grant grants[TDE_GRANTS_MAX];
    size_t n_grants;
    char dev_name[65]; /* --dev: <state>/<name>.addr and clients/<name>-{engine,admin}.conf */
    bool lock_memory;  /* mlockall (OpenSSL's key schedules stay out of swap) */
    bool dev;          /* --dev */
    bool test_hooks;   /* --dev in a test build: crash points */
} tde_config;

typedef struct tde_node tde_node;

typedef struct tde_db {
    tde_node *node;
    char tenant_id[TDE_ID_MAX + 1];
    char env_id[TDE_ID_MAX + 1];
    char db_id[TDE_ID_MAX + 1];
    char name[TDE_NAME_MAX + 1];
    char dir[PATH_MAX];
    int64_t created_at;
    uint32_t dek_version; /* what the local pages are sealed under */
    page_identity identity;

    pthread_rwlock_t io;
    bool attached; /* files open, journal recovered (needs the DEK once) */
    int pages_fd;
    tde_journal journal;
    tde_nonce nonce;
    unsigned checkpoint_hold; /* backups reading the page file (under io) */
    pthread_mutex_t hold_mu;
    pthread_cond_t hold_cv;

    pthread_mutex_t lease_mu;
    pthread_cond_t lease_cv;
    page_key *key; /* NULL unless OPEN */
    tde_db_state state;
    kv_code reason_code;
    char reason[600];
    int64_t lease_expires_ms; /* monotonic */
    int64_t renew_at_ms;
    int64_t retry_at_ms;     /* the lease thread's next try (backoff) */
    int64_t last_attempt_ms; /* a request's last unwrap (requests retry once a second) */
    unsigned backoff_ms;
    bool leasing;               /* an unwrap is in flight (others wait for it) */
    bool removed;               /* reset: files gone until it is opened again */
    bool ever_open;             /* had a lease once (the lease thread retries it) */
    int64_t lease_expires_wall; /* for status: Unix seconds */
} tde_db;

struct tde_node {
    tde_config cfg;
    int lock_fd;
    pthread_rwlock_t vault_lock; /* guards the vault client (replaced when the vault moves) */
    vc *vault;
    char vault_target[256];
    pthread_mutex_t mu; /* the table */
    tde_db **dbs;
    size_t n_dbs, cap_dbs;
    pthread_t lease_thread;
    bool lease_running;
    pthread_mutex_t lease_mu;
    pthread_cond_t lease_cv;
    bool stop;
};

/* node.c */
KV_RESULT tde_node_open(const tde_config *cfg, tde_node **out);
/* Starts the lease thread (renewals, retries). */
KV_RESULT tde_node_start(tde_node *n);
void tde_node_close(tde_node *n);
/* The database (env, db) this node keeps, or NOT_FOUND. */
KV_RESULT tde_node_find(tde_node *n, const char *env_id, const char *db_id, tde_db **out);
/* Finds or attaches (env, db): a database the vault knows but this node has
 * no files for starts empty.  explicit: an engine's OpenDatabase (a reset
 * database starts again empty; an implicit open refuses instead). */
KV_RESULT tde_node_open_db(tde_node *n, const char *env_id, const char *db_id, bool explicit_open,
                           tde_db **out);
/* Creates a database in the vault (a new DEK) and on this node. */
KV_RESULT tde_node_create_db(tde_node *n, const char *env_id, const char *name, tde_db **out);
/* Calls vaultd; FAILED on transport or vault errors (code as sent). */
KV_RESULT tde_vault_call(tde_node *n, const char *method, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp);
/* --dev: the vault moved (vaultd restarted on another port): reconnect. */
void tde_node_vault_refresh(tde_node *n);
/* Snapshot of the table (each db stays valid until the node closes). */
KV_RESULT tde_node_list(tde_node *n, const char *env_id, tde_db ***out, size_t *count);
void tde_node_test_crash_point(const tde_node *n, const char *point);
/* <data>/<sub>/<env>[/<db>[/<leaf>]] */
KV_RESULT tde_node_path(const tde_node *n, char *out, size_t cap, const char *sub,
                        const char *env_id, const char *db_id, const char *leaf);

/* database.c */
KV_RESULT tde_db_load(tde_node *n, const char *dir, tde_db **out);
KV_RESULT tde_db_new(tde_node *n, const DatabaseMeta *m, tde_db **out);
void tde_db_free(tde_db *db);
/* Opens the files and recovers the journal with key (db->io exclusive). */
KV_RESULT tde_db_attach_locked(tde_db *db, page_key *key);
/* Deletes the database's local pages, journal and counter and starts it
 * again empty under dek_version (db->io exclusive). */
KV_RESULT tde_db_wipe_locked(tde_db *db, uint32_t dek_version, uint64_t counter_start);
KV_RESULT tde_db_read(tde_db *db, uint64_t page_no, uint8_t *data);
/* Writes n pages (data TDE_PAGE_DATA bytes each) as one atomic batch. */
KV_RESULT tde_db_write(tde_db *db, const uint64_t *page_nos, const uint8_t *const *data, size_t n,
                       bool flush);
KV_RESULT tde_db_flush(tde_db *db);
/* Journal into the page file (db->io exclusive). */
KV_RESULT tde_db_checkpoint_locked(tde_db *db);
uint64_t tde_db_page_span(tde_db *db);
/* Takes db->io shared with the files attached (attaching with key). */
KV_RESULT tde_db_io_shared(tde_db *db, page_key *key);
/* Takes db->io exclusively once no backup holds checkpoints off. */
void tde_db_io_exclusive(tde_db *db);
/* Prefixes the error record with the database's name (for DATA_LOSS etc). */
void tde_db_error_context(const tde_db *db);
void tde_db_hold_checkpoints(tde_db *db, bool hold);

/* lease.c */
/* A reference to the database's leased DEK, leasing it first if needed;
 * FAILED_PRECONDITION (refused) / UNAVAILABLE (expired, vault unreachable)
 * naming the database and the reason otherwise. */
KV_RESULT tde_lease_key(tde_db *db, bool explicit_open, page_key **key);
/* Installs a freshly unwrapped key (from CreateDatabaseKey). */
void tde_lease_install(tde_db *db, page_key *key, uint32_t lease_seconds, int64_t started_ms);
/* Drops the key (wiped) and records why. */
void tde_lease_drop(tde_db *db, tde_db_state state, kv_code code, const char *reason);
/* The lease thread. */
void *tde_lease_main(void *arg);
/* Unwraps (env, db) through the vault: a new key, the database as the vault
 * sees it (free with kv_pb_free) and the lease length. */
KV_RESULT tde_vault_unwrap(tde_node *n, const char *method, const char *env_id, const char *db_id,
                           page_key **key, Hsmvault__V1__DatabaseKey **reply);
const char *tde_db_state_name(tde_db_state s);

/* backup.c */
/* Backs up db: a consistent snapshot of its sealed pages, each checked
 * under its DEK, and a manifest; scratch: into <data>/tmp (for a copy) and
 * *dir_out names it.  Free *out with kv_pb_free. */
KV_RESULT tde_backup_create(tde_node *n, tde_db *db, const char *principal, bool scratch,
                            BackupManifest **out, char *dir_out, size_t dir_cap);
/* Finds a backup by id: its manifest (checked) and directory. */
KV_RESULT tde_backup_find(tde_node *n, const char *backup_id, BackupManifest **out, char *dir,
                          size_t dir_cap);
KV_RESULT tde_backup_list(tde_node *n, const char *env_id, const char *db_id, BackupManifest ***out,
                          size_t *count);
/* Re-seals the backup in dir into the target database (an existing one,
 * overwritten, or a new one named new_name), after the vault's
 * AuthorizeRestore unless copy_authorized (a copy asked AuthorizeCopy). */
KV_RESULT tde_backup_restore(tde_node *n, const BackupManifest *b, const char *dir,
                             bool copy_authorized, const char *target_env, const char *target_db,
                             const char *new_name, tde_db **out);
KV_RESULT tde_db_copy(tde_node *n, tde_db *src, const char *target_env, const char *target_db,
                      const char *new_name, const char *principal, tde_db **out);
/* The vault's ResetEnvironment, then the environment's pages and backups
 * on this node are deleted. */
KV_RESULT tde_env_reset(tde_node *n, const char *env_id, const char *confirmation,
                        uint32_t *databases, uint32_t *backups);
/* Start-up: removes backups a crash left half-written and scratch copies. */
void tde_backup_sweep(tde_node *n);

/* ops_pages.c */
const rpc_method *tde_methods(size_t *count);

/* node_config.c */
void tde_config_defaults(tde_config *c);
KV_RESULT tde_config_load(const char *path, tde_config *c);
/* One `key = value` setting (arg: the tde_config); also command-line options. */
KV_RESULT tde_config_set(const char *key, const char *value, void *arg);
/* --dev: everything from a vaultd --dev state directory. */
KV_RESULT tde_config_dev(tde_config *c, const char *vault_state);
KV_RESULT tde_config_check(const tde_config *c);
/* --dev: tdectl profiles and tdenode.addr once the port is known. */
KV_RESULT tde_dev_publish(const tde_config *c, const char *vault_state, int port);
KV_RESULT tde_grant_parse(const char *value, tde_role role, tde_grant *out);

/* Small helpers shared by the files. */
KV_RESULT tde_rmtree(const char *path);
/* dir/name, or INVALID_ARGUMENT when it does not fit. */
KV_RESULT tde_path_join(char *out, size_t cap, const char *dir, const char *name);
KV_RESULT tde_fsync_dir(const char *path);
/* fsync of dir and each parent up to root (a directory just made must be
 * named durably by its parent, and so on). */
KV_RESULT tde_fsync_up(const char *dir, const char *root);
void tde_random_id(const char *prefix, char *out, size_t cap);
/* pread/pwrite of exactly n bytes (a short read returns the count). */
KV_RESULT tde_pwrite_all(int fd, const void *buf, size_t n, off_t off, const char *what);
KV_RESULT tde_pread_upto(int fd, void *buf, size_t n, off_t off, size_t *got, const char *what);

#endif
