/*
 * audit.c: the vault's audit log.  Every RPC, allowed or refused, gets a
 * "result" record (time, principal, granted role, method, ids, key
 * fingerprint, status); every store transaction that changes state gets a
 * "change" record inside that same transaction (store commit hook), so a
 * crash can never leave a committed change without its record.  Records are
 * hash-chained (kv_audit.h), MACed by the token's audit HMAC key, and sealed
 * by checkpoints that the token's checkpoint key signs; the latest checkpoint
 * is also anchored in a private token data object.
 *
 * Fail closed: a call whose result record cannot be made durable answers
 * UNAVAILABLE instead of its reply.  Result records are group-committed: one
 * writer thread appends every pending record in one transaction (one fsync)
 * and wakes the callers.
 *
 * Must never record a secret: events are filled from an allow-list of id
 * fields of the request and reply (never passwords, PFX bytes, PINs or keys)
 * and from the error record, whose messages never carry secrets.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "kv_audit.h"
#include "kv_file.h"
#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "vault.h"

#include "hsmvault/store/records.pb-c.h"

typedef Hsmvault__Store__AuditEvent AuditEvent;
typedef Hsmvault__Store__AuditEntry AuditEntry;
typedef Hsmvault__Store__AuditCheckpointRecord AuditCheckpointRecord;

#define AUDIT_ANCHOR_LABEL VAULT_AUDIT_ANCHOR_LABEL
#define AUDIT_JOURNAL_MARK "journal" /* audit_state: how far the journal is folded */
#define AUDIT_JOURNAL_BYTES (4u << 20)
#define AUDIT_ID_MAX 64
/* audit_sync_ms 0: how long the writer gathers synced records for one fold. */
#define AUDIT_FOLD_MS 10

/* What one RPC call has gathered for its records. */
typedef struct {
    const rpc_ctx *ctx;
    uint64_t call_id;
    unsigned role; /* 0: none granted (yet) */
    char tenant_id[AUDIT_ID_MAX], environment_id[AUDIT_ID_MAX], key_id[AUDIT_ID_MAX],
        database_id[AUDIT_ID_MAX];
    char fingerprint[65];
} audit_call;

/* A result record in the journal, waiting for the fold into the chain. */
typedef struct audit_pending {
    uint64_t number; /* its journal frame */
    size_t len;
    struct audit_pending *next;
    uint8_t event[]; /* a copy */
} audit_pending;

typedef struct vault_audit vault_audit;
struct vault_audit {
    vault *v;
    hsm_key_id hmac_id, sign_id;
    unsigned checkpoint_every;
    unsigned sync_ms; /* 0: every call waits for the fdatasync of its record */
    pthread_mutex_t mu;
    pthread_cond_t work;     /* the writer: records, a round asked, or stop */
    pthread_cond_t synced;   /* callers: frames synced, a round ended, or broken */
    pthread_cond_t unsynced; /* the syncer (sync_ms 0): a frame appended, or stop */
    /* One fdatasync of the journal at a time (audit_journal_sync). */
    pthread_mutex_t sync_mu;
    int sync_errno; /* under sync_mu: the first failure, sticky */
    /* Under mu: the journal and what waits for the fold. */
    int jfd;
    size_t jcap, jtail;
    uint64_t jgen, jnext, jsynced;
    audit_pending *head, *tail;
    uint64_t rounds_asked, rounds_done;
    bool broken; /* a record could not be made durable or folded: calls are refused */
    kv_error_record broken_err;
    bool stop;
    pthread_t writer, syncer;
    bool writer_running, syncer_running;
    hsm_mac_session *macs;   /* the writer's */
    pthread_mutex_t seal_mu; /* one checkpoint at a time; anchor only moves forward */
    uint64_t anchored;
    bool anchor_seen;
    _Atomic uint64_t next_call_id;
};

static _Thread_local audit_call *audit_cur;
static _Thread_local const char *audit_task; /* internal work outside RPCs */

void vault_audit_seq_key(uint64_t seq, char out[24])
{
    snprintf(out, 24, "%020" PRIu64, seq);
}

static const char *audit_role_name(unsigned role)
{
    static const char *const names[] = {
        "", "operator", "tenant-admin", "environment-admin", "storage-node", "auditor"};
    return role < KV_ARRAY_LEN(names) ? names[role] : "unknown";
}

void vault_audit_note_role(unsigned role)
{
    if (audit_cur != NULL && audit_cur->role == 0) audit_cur->role = role;
}

void vault_audit_task(const char *task)
{
    audit_task = task;
}

/* ---- ids from messages (allow-list) ---- */

static void audit_copy_id(char *dst, const char *src)
{
    if (dst[0] == '\0' && src != NULL && src[0] != '\0' && strlen(src) < AUDIT_ID_MAX)
        snprintf(dst, AUDIT_ID_MAX, "%s", src);
}

/* Where field `name` of a message of type d goes: the four id fields, and
 * "id" of the four entity messages. */
static char *audit_id_slot(audit_call *c, const ProtobufCMessageDescriptor *d, const char *name)
{
    if (strcmp(name, "tenant_id") == 0) return c->tenant_id;
    if (strcmp(name, "environment_id") == 0) return c->environment_id;
    if (strcmp(name, "key_id") == 0) return c->key_id;
    if (strcmp(name, "database_id") == 0) return c->database_id;
    if (strcmp(name, "id") != 0) return NULL;
    if (d == &hsmvault__v1__tenant__descriptor) return c->tenant_id;
    if (d == &hsmvault__v1__tenant_key__descriptor) return c->key_id;
    if (d == &hsmvault__v1__environment__descriptor) return c->environment_id;
    if (d == &hsmvault__v1__database__descriptor) return c->database_id;
    return NULL;
}

static void audit_ids_from(audit_call *c, const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->label == PROTOBUF_C_LABEL_REPEATED) continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id)
            continue;
        const void *at = (const char *)m + f->offset;
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            char *slot = audit_id_slot(c, d, f->name);
            if (slot != NULL) audit_copy_id(slot, *(char *const *)at);
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && depth < 2) {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)at;
            if (sub != NULL) audit_ids_from(c, sub, depth + 1);
        }
    }
}

/* The request and reply types of a method path, from the service
 * descriptors of hsmvault.v1. */
static const ProtobufCMethodDescriptor *audit_method(const char *path)
{
    static const ProtobufCServiceDescriptor *const services[] = {
        &hsmvault__v1__tenants__descriptor,      &hsmvault__v1__tenant_keys__descriptor,
        &hsmvault__v1__environments__descriptor, &hsmvault__v1__key_access__descriptor,
        &hsmvault__v1__audit__descriptor,        &hsmvault__v1__audit_log__descriptor,
        &hsmvault__v1__testing__descriptor,
    };
    const char *slash = path != NULL && path[0] == '/' ? strchr(path + 1, '/') : NULL;
    if (slash == NULL) return NULL;
    size_t svc_len = (size_t)(slash - path - 1);
    for (size_t i = 0; i < KV_ARRAY_LEN(services); i++) {
        const ProtobufCServiceDescriptor *s = services[i];
        if (strlen(s->name) == svc_len && memcmp(s->name, path + 1, svc_len) == 0)
            return protobuf_c_service_descriptor_get_method_by_name(s, slash + 1);
    }
    return NULL;
}

static void audit_ids_from_bytes(audit_call *c, const ProtobufCMessageDescriptor *d,
                                 const uint8_t *b, size_t n)
{
    if (d == NULL) return;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &kv_pb_wiping_allocator, n, b);
    if (m == NULL) return;
    audit_ids_from(c, m, 0);
    kv_pb_free(m);
}

/* The fingerprint of the key a call used: the named key, else the
 * environment's current key. */
static void audit_fingerprint(vault *v, audit_call *c)
{
    store_txn *t;
    if (kv_failed(store_read_begin(v->store, &t))) return;
    KeyRecord *k = NULL;
    EnvironmentRecord *e = NULL;
    const char *tenant = c->tenant_id, *key = c->key_id;
    if (key[0] == '\0' && c->environment_id[0] != '\0' &&
        kv_ok(vault_get_environment(t, c->environment_id, &e))) {
        tenant = e->tenant_id;
        key = e->kek_id;
        audit_copy_id(c->tenant_id, e->tenant_id);
    }
    if (tenant[0] != '\0' && key[0] != '\0' && kv_ok(vault_get_key(t, tenant, key, &k)) &&
        k->fingerprint.len == 32)
        kv_hex_encode(k->fingerprint.data, 32, c->fingerprint);
    kv_pb_free((ProtobufCMessage *)k);
    kv_pb_free((ProtobufCMessage *)e);
    store_read_end(t);
    kv_error_clear();
}

/* Packs an event of call c (NULL: vaultd's own work). */
static kv_result audit_event_pack(const audit_call *c, const char *phase, unsigned touched,
                                  kv_code code, const char *message, uint8_t **out, size_t *len)
{
    AuditEvent e = HSMVAULT__STORE__AUDIT_EVENT__INIT;
    char rpc[160];
    char *tables[STORE_TABLE_COUNT];
    size_t n_tables = 0;
    e.time_ms = kv_clock_now_ms();
    e.phase = (char *)(uintptr_t)phase;
    if (c != NULL) {
        e.principal = (char *)(uintptr_t)c->ctx->principal;
        e.role = (char *)(uintptr_t)audit_role_name(c->role);
        e.rpc = (char *)(uintptr_t)c->ctx->method;
        e.tenant_id = (char *)(uintptr_t)c->tenant_id;
        e.environment_id = (char *)(uintptr_t)c->environment_id;
        e.key_id = (char *)(uintptr_t)c->key_id;
        e.database_id = (char *)(uintptr_t)c->database_id;
        e.key_fingerprint = (char *)(uintptr_t)c->fingerprint;
        e.call_id = c->call_id;
    } else {
        snprintf(rpc, sizeof(rpc), "internal/%s", audit_task != NULL ? audit_task : "background");
        e.principal = "vaultd";
        e.rpc = rpc;
    }
    for (unsigned i = 0; i < STORE_TABLE_COUNT; i++)
        if (touched & (1u << i)) tables[n_tables++] = (char *)(uintptr_t)store_table_name(i);
    e.n_tables = n_tables;
    e.tables = tables;
    e.status_code = (uint32_t)code;
    e.status = (char *)(uintptr_t)kv_code_name(code);
    e.message = (char *)(uintptr_t)(message != NULL ? message : "");
    return kv_pb_pack(&e.base, out, len);
}

/* ---- appending (inside a write transaction) ---- */

kv_result vault_audit_head(store_txn *t, uint64_t *seq, uint8_t hash[32])
{
    char key[32];
    AuditEntry *last = NULL;
    kv_result r = store_last(t, STORE_AUDIT_LOG, key, sizeof(key),
                             &hsmvault__store__audit_entry__descriptor, (ProtobufCMessage **)&last);
    if (kv_failed(r)) {
        if (kv_error_code() != KV_ERR_NOT_FOUND) return r;
        kv_error_clear();
        *seq = 0;
        memset(hash, 0, 32);
        return KV_SUCCESS;
    }
    bool ok = last->hash.len == 32;
    if (ok) {
        *seq = last->seq;
        memcpy(hash, last->hash.data, 32);
    }
    kv_pb_free(&last->base);
    KV_ENSURE(ok, KV_ERR_DATA_LOSS, "the audit log's last record is damaged");
    return KV_SUCCESS;
}

static kv_result audit_put_entry(store_txn *t, uint64_t seq, const uint8_t *ev, size_t n,
                                 const uint8_t prev[32], const uint8_t hash[32],
                                 const uint8_t mac[32])
{
    KV_ENSURE(n > 0 && n <= KV_AUDIT_EVENT_MAX, KV_ERR_INTERNAL, "audit event of %zu bytes", n);
    AuditEntry e = HSMVAULT__STORE__AUDIT_ENTRY__INIT;
    e.seq = seq;
    e.event.data = (uint8_t *)(uintptr_t)ev;
    e.event.len = n;
    e.prev_hash.data = (uint8_t *)(uintptr_t)prev;
    e.prev_hash.len = 32;
    e.hash.data = (uint8_t *)(uintptr_t)hash;
    e.hash.len = 32;
    e.hmac.data = (uint8_t *)(uintptr_t)mac;
    e.hmac.len = 32;
    char key[24];
    vault_audit_seq_key(seq, key);
    return store_put(t, STORE_AUDIT_LOG, key, &e.base);
}

/* Appends one record after (seq, prev). */
static kv_result audit_append_one(vault_audit *a, store_txn *t, const uint8_t *ev, size_t n,
                                  uint64_t seq, const uint8_t prev[32])
{
    uint8_t hash[32], mac[32];
    kv_audit_record_hash(prev, seq + 1, ev, n, hash);
    KV_GUARD(hsm_hmac_sha256(a->v->hsm, &a->hmac_id, hash, 32, mac));
    return audit_put_entry(t, seq + 1, ev, n, prev, hash, mac);
}

/* The store commit hook: the change record joins the change's transaction. */
static kv_result audit_commit_hook(store_txn *t, unsigned touched, void *arg)
{
    vault_audit *a = arg;
    uint8_t *ev = NULL;
    size_t n = 0;
    const char *msg = audit_cur == NULL ? "" : "state change committed with this record";
    KV_GUARD(audit_event_pack(audit_cur, "change", touched, KV_OK, msg, &ev, &n));
    uint64_t seq;
    uint8_t prev[32];
    kv_result r = vault_audit_head(t, &seq, prev);
    if (kv_ok(r)) r = audit_append_one(a, t, ev, n, seq, prev);
    kv_pb_buf_free(ev, n);
    if (kv_failed(r))
        kv_error_context("the audit record of this change cannot be written, so the change was "
                         "not made");
    return r;
}

typedef struct {
    vault_audit *a;
    audit_pending *batch;
    /* The journal mark the transaction leaves: the batch's generation and
     * last frame, or a new generation and 0 when the journal is reset. */
    uint64_t mark_gen, mark_frame;
} audit_fold_ctx;

/* MACs of n hashes: on the writer's own session (a session copy of the key),
 * else on the pool. */
static kv_result audit_macs(vault_audit *a, const uint8_t *hashes, size_t n, uint8_t *macs)
{
    if (a->macs == NULL && kv_failed(hsm_mac_session_open(a->v->hsm, &a->hmac_id, &a->macs))) {
        kv_log_error_record(KV_LOG_WARN, "opening the audit writer's token session");
        a->macs = NULL;
    }
    if (a->macs != NULL) {
        if (kv_ok(hsm_mac_session_many(a->macs, hashes, n, 32, macs))) return KV_SUCCESS;
        kv_log_error_record(KV_LOG_WARN, "MACs on the audit writer's token session");
        hsm_mac_session_close(a->macs);
        a->macs = NULL;
    }
    return hsm_hmac_sha256_many(a->v->hsm, &a->hmac_id, hashes, n, 32, macs);
}

/* Folds journal records into the chain, with the journal position they
 * reach, in one transaction (only audit tables: no change record). */
static kv_result audit_fold_update(store_txn *t, void *arg)
{
    audit_fold_ctx *c = arg;
    uint64_t seq;
    uint8_t prev[32];
    KV_GUARD(vault_audit_head(t, &seq, prev));
    size_t n = 0;
    for (const audit_pending *p = c->batch; p != NULL; p = p->next)
        n++;
    char mark[48];
    snprintf(mark, sizeof(mark), "%016" PRIx64 ":%" PRIu64, c->mark_gen, c->mark_frame);
    if (n == 0) return store_raw_put(t, STORE_AUDIT_STATE, AUDIT_JOURNAL_MARK, mark);
    /* Hashes first (the chain), then every MAC in one go. */
    uint8_t(*hashes)[32] = malloc(n * 2 * 32);
    KV_ENSURE(hashes != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory writing audit records");
    uint8_t(*macs)[32] = hashes + n;
    uint64_t s = seq;
    uint8_t link[32];
    memcpy(link, prev, 32);
    size_t i = 0;
    for (const audit_pending *p = c->batch; p != NULL; p = p->next, i++) {
        kv_audit_record_hash(link, ++s, p->event, p->len, hashes[i]);
        memcpy(link, hashes[i], 32);
    }
    kv_result r = audit_macs(c->a, &hashes[0][0], n, &macs[0][0]);
    i = 0;
    for (const audit_pending *p = c->batch; kv_ok(r) && p != NULL; p = p->next, i++)
        r = audit_put_entry(t, seq + 1 + i, p->event, p->len, i == 0 ? prev : hashes[i - 1],
                            hashes[i], macs[i]);
    free(hashes);
    if (kv_ok(r)) r = store_raw_put(t, STORE_AUDIT_STATE, AUDIT_JOURNAL_MARK, mark);
    return r;
}

static void audit_pending_free(audit_pending *p)
{
    while (p != NULL) {
        audit_pending *next = p->next;
        OPENSSL_cleanse(p->event, p->len);
        free(p);
        p = next;
    }
}

/* ---- checkpoints ---- */

typedef struct {
    vault_audit *a;
    bool force;
    uint64_t seq; /* out: the checkpoint written (0: none needed) */
    uint8_t head[32];
} audit_seal_ctx;

static kv_result audit_last_checkpoint(store_txn *t, uint64_t *seq)
{
    char key[32];
    AuditCheckpointRecord *cp = NULL;
    kv_result r =
        store_last(t, STORE_AUDIT_CHECKPOINTS, key, sizeof(key),
                   &hsmvault__store__audit_checkpoint_record__descriptor, (ProtobufCMessage **)&cp);
    if (kv_failed(r)) {
        if (kv_error_code() != KV_ERR_NOT_FOUND) return r;
        kv_error_clear();
        *seq = 0;
        return KV_SUCCESS;
    }
    *seq = cp->seq;
    kv_pb_free(&cp->base);
    return KV_SUCCESS;
}

static kv_result audit_seal_update(store_txn *t, void *arg)
{
    audit_seal_ctx *c = arg;
    c->seq = 0;
    uint64_t head, last_cp;
    uint8_t hash[32];
    KV_GUARD(vault_audit_head(t, &head, hash));
    KV_GUARD(audit_last_checkpoint(t, &last_cp));
    /* A head below the last checkpoint means records were removed: never
     * seal such a log (verification reports it). */
    if (head <= last_cp || (!c->force && head - last_cp < c->a->checkpoint_every))
        return KV_SUCCESS;
    AuditCheckpointRecord cp = HSMVAULT__STORE__AUDIT_CHECKPOINT_RECORD__INIT;
    cp.seq = head;
    cp.time = kv_clock_now();
    cp.head_hash.data = hash;
    cp.head_hash.len = 32;
    uint8_t msg[KV_AUDIT_CHECKPOINT_MSG_BYTES];
    kv_audit_checkpoint_message(cp.seq, hash, cp.time, msg);
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    KV_GUARD(hsm_rsa_sign_sha256(c->a->v->hsm, &c->a->sign_id, msg, sizeof(msg), &sig, &sig_len));
    cp.signature.data = sig;
    cp.signature.len = sig_len;
    char key[24];
    vault_audit_seq_key(head, key);
    kv_result r = store_put(t, STORE_AUDIT_CHECKPOINTS, key, &cp.base);
    free(sig);
    if (kv_ok(r)) {
        c->seq = head;
        memcpy(c->head, hash, 32);
    }
    return r;
}

/* Writes a checkpoint if one is due (force: whenever records are unsealed),
 * then moves the token anchor to it (after the commit: the anchor may lag
 * the store after a crash, never lead it). */
static kv_result audit_seal(vault_audit *a, bool force)
{
    pthread_mutex_lock(&a->seal_mu);
    audit_seal_ctx c = {.a = a, .force = force};
    kv_result r = store_update(a->v->store, audit_seal_update, &c);
    if (kv_ok(r) && c.seq > a->anchored) {
        uint8_t anchor[40];
        for (int i = 0; i < 8; i++)
            anchor[i] = (uint8_t)(c.seq >> (56 - 8 * i));
        memcpy(anchor + 8, c.head, 32);
        r = hsm_data_put(a->v->hsm, AUDIT_ANCHOR_LABEL, anchor, sizeof(anchor));
        if (kv_ok(r)) a->anchored = c.seq;
    }
    pthread_mutex_unlock(&a->seal_mu);
    return r;
}

static kv_result audit_anchor_read(vault_audit *a, uint64_t *seq, uint8_t head[32])
{
    uint8_t anchor[64];
    size_t n = 0;
    *seq = 0;
    memset(head, 0, 32);
    kv_result r = hsm_data_get(a->v->hsm, AUDIT_ANCHOR_LABEL, anchor, sizeof(anchor), &n);
    if (kv_failed(r)) {
        if (kv_error_code() != KV_ERR_NOT_FOUND) return r;
        kv_error_clear();
        return KV_SUCCESS;
    }
    KV_ENSURE(n == 40, KV_ERR_DATA_LOSS, "the token's audit anchor is damaged (%zu bytes)", n);
    a->anchor_seen = true;
    for (int i = 0; i < 8; i++)
        *seq = *seq << 8 | anchor[i];
    memcpy(head, anchor + 8, 32);
    return KV_SUCCESS;
}

/* ---- the journal and its writer ---- */

/* Marks the log broken (under mu): from now on every call is refused. */
static void audit_break(vault_audit *a, const char *what)
{
    kv_log_error_record(KV_LOG_ERROR, what);
    if (!a->broken) {
        kv_error_context("%s", what);
        kv_error_save(&a->broken_err);
    }
    a->broken = true;
    pthread_cond_broadcast(&a->synced);
}

static kv_result audit_new_generation(uint64_t *gen)
{
    KV_ENSURE(RAND_bytes((unsigned char *)gen, sizeof(*gen)) == 1, KV_ERR_INTERNAL,
              "no randomness for the audit journal");
    return KV_SUCCESS;
}

/* Starts generation gen over the whole journal (under mu, every frame
 * folded, the store's mark already at gen:0): frames of the old generation
 * no longer count.  The header needs no sync of its own: the next fdatasync
 * covers it, and until then the old header names a generation the mark no
 * longer has, whose frames recovery ignores. */
static kv_result audit_journal_reset(vault_audit *a, uint64_t gen)
{
    uint8_t h[KV_AJ_HEADER];
    kv_aj_header(gen, h);
    KV_ENSURE(pwrite(a->jfd, h, sizeof(h), 0) == (ssize_t)sizeof(h), KV_ERR_UNAVAILABLE,
              "cannot write the audit journal: %s", strerror(errno));
    a->jgen = gen;
    a->jtail = KV_AJ_HEADER;
    a->jnext = 1;
    a->jsynced = 0;
    return KV_SUCCESS;
}

/* fdatasync of the journal, by the writer or the syncer, one at a time: a
 * writeback error is reported once per open file and the failed pages may
 * be marked clean, so a sync after a failed one proves nothing: the first
 * failure sticks.  Returns 0 or the errno. */
static int audit_journal_sync(vault_audit *a)
{
    pthread_mutex_lock(&a->sync_mu);
    if (a->sync_errno == 0 && fdatasync(a->jfd) != 0) a->sync_errno = errno ? errno : EIO;
    int e = a->sync_errno;
    pthread_mutex_unlock(&a->sync_mu);
    return e;
}

/* Marks the log broken after a failed journal sync (mu held). */
static void audit_sync_failed(vault_audit *a, int e)
{
    kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot sync the audit journal: %s",
                 strerror(e));
    audit_break(a, "the audit journal could not be synced (its records stay in the journal for "
                   "the next start)");
}

/* One round of the writer (mu held on entry and exit): fdatasync the
 * journal, wake the callers waiting for it, fold what it holds into the
 * chain.  When the journal is half full the round keeps mu throughout and
 * ends with a reset (appends wait a few milliseconds). */
static void audit_round(vault_audit *a)
{
    bool reset = a->jtail > a->jcap / 2 || a->jtail + KV_AJ_FRAME_MAX > a->jcap;
    audit_pending *batch = a->head;
    a->head = a->tail = NULL;
    uint64_t upto = a->jnext - 1, gen = a->jgen, ticket = a->rounds_asked;
    /* Once broken, nothing more is folded: the mark must not pass the batch
     * that failed, whose frames the next start folds from the journal. */
    bool broken = a->broken;
    if (!reset) pthread_mutex_unlock(&a->mu);
    int e = audit_journal_sync(a);
    if (!reset) pthread_mutex_lock(&a->mu);
    if (e != 0)
        audit_sync_failed(a, e); /* before any caller can take the broadcast for success */
    else if (gen == a->jgen && upto > a->jsynced)
        a->jsynced = upto;
    pthread_cond_broadcast(&a->synced);
    if (!reset) pthread_mutex_unlock(&a->mu);
    kv_result r = KV_SUCCESS;
    audit_fold_ctx c = {.a = a, .batch = batch, .mark_gen = gen};
    for (const audit_pending *p = batch; p != NULL; p = p->next)
        c.mark_frame = p->number;
    if (e != 0)
        broken = true; /* already marked */
    else if (reset && kv_ok(r = audit_new_generation(&c.mark_gen)))
        c.mark_frame = 0;
    if (kv_ok(r) && !broken && (batch != NULL || reset))
        r = store_update(a->v->store, audit_fold_update, &c);
    audit_pending_free(batch);
    if (!reset) pthread_mutex_lock(&a->mu);
    if (kv_failed(r))
        audit_break(a, "the audit journal could not be folded into the log (its records stay "
                       "in the journal for the next start)");
    else if (reset && !broken && kv_failed(audit_journal_reset(a, c.mark_gen)))
        audit_break(a, "the audit journal could not be reset");
    a->rounds_done = ticket;
    pthread_cond_broadcast(&a->synced);
}

static void audit_deadline(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts); /* work's clock: a wall-clock step changes nothing */
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    ts->tv_sec += ms / 1000 + ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

static void *audit_writer_main(void *arg)
{
    vault_audit *a = arg;
    vault_audit_task("audit-writer");
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (a->head == NULL && !a->stop && a->rounds_asked == a->rounds_done)
            pthread_cond_wait(&a->work, &a->mu);
        if (a->head == NULL && a->stop && a->rounds_asked == a->rounds_done) break;
        /* Gather for sync_ms (sync_ms 0: the syncer makes frames durable,
         * the writer folds every AUDIT_FOLD_MS) unless someone waits for a
         * round. */
        if (!a->stop && a->rounds_asked == a->rounds_done) {
            struct timespec dl;
            audit_deadline(&dl, a->sync_ms > 0 ? a->sync_ms : AUDIT_FOLD_MS);
            while (!a->stop && a->rounds_asked == a->rounds_done &&
                   pthread_cond_timedwait(&a->work, &a->mu, &dl) == 0) {
            }
        }
        bool folded = a->head != NULL;
        audit_round(a);
        if (folded && !a->broken) {
            pthread_mutex_unlock(&a->mu);
            if (kv_failed(audit_seal(a, false)))
                kv_log_error_record(KV_LOG_ERROR, "writing an audit checkpoint");
            pthread_mutex_lock(&a->mu);
        }
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* sync_ms 0: makes appended frames durable as soon as they are written, apart
 * from the fold, so that no caller waits for an LMDB commit.  Group commit:
 * one fdatasync covers every frame appended while the previous one ran. */
static void *audit_syncer_main(void *arg)
{
    vault_audit *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->stop && !a->broken && a->jsynced + 1 >= a->jnext)
            pthread_cond_wait(&a->unsynced, &a->mu);
        /* On stop the writer's last rounds sync whatever is left. */
        if (a->stop || a->broken) break;
        uint64_t upto = a->jnext - 1, gen = a->jgen;
        pthread_mutex_unlock(&a->mu);
        int e = audit_journal_sync(a);
        pthread_mutex_lock(&a->mu);
        if (e != 0) {
            audit_sync_failed(a, e);
            break;
        }
        /* A reset meanwhile folded these frames and renumbered the journal. */
        if (gen == a->jgen && upto > a->jsynced) a->jsynced = upto;
        pthread_cond_broadcast(&a->synced);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* Asks the writer for a round and waits for it (mu held): every record
 * appended before is then durable and folded. */
static kv_result audit_round_wait(vault_audit *a)
{
    uint64_t ticket = ++a->rounds_asked;
    pthread_cond_signal(&a->work);
    while (a->rounds_done < ticket && !a->broken)
        pthread_cond_wait(&a->synced, &a->mu);
    if (a->broken) {
        kv_error_restore(&a->broken_err);
        return KV_FAILURE;
    }
    return KV_SUCCESS;
}

/* Every result record written so far, folded into the chain (for readers). */
kv_result vault_audit_flush(vault *v)
{
    vault_audit *a = v->audit;
    KV_ENSURE(a != NULL, KV_ERR_FAILED_PRECONDITION,
              "the audit log is off in this vaultd (--no-audit-log)");
    pthread_mutex_lock(&a->mu);
    kv_result r = a->writer_running && !a->stop ? audit_round_wait(a) : KV_SUCCESS;
    pthread_mutex_unlock(&a->mu);
    return r;
}

/* Appends a result record to the journal before the call's reply (one
 * pwrite: it survives a crash of vaultd at once), and with sync_ms 0 waits
 * for the fdatasync that makes it survive power loss too. */
static kv_result audit_append(vault_audit *a, const uint8_t *ev, size_t n)
{
    KV_ENSURE(n > 0 && n <= KV_AUDIT_EVENT_MAX, KV_ERR_INTERNAL, "audit event of %zu bytes", n);
    audit_pending *p = malloc(sizeof(*p) + n);
    uint8_t frame[KV_AJ_FRAME_MAX];
    kv_result r = KV_SUCCESS;
    KV_ENSURE_GOTO(p != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED,
                   "out of memory writing an audit record");
    memcpy(p->event, ev, n);
    p->len = n;
    p->next = NULL;
    pthread_mutex_lock(&a->mu);
    while (!a->broken && !a->stop && a->jtail + KV_AJ_FRAME_HEADER + n > a->jcap)
        (void)audit_round_wait(a); /* full: the round resets it */
    if (a->stop && !a->broken) {
        pthread_mutex_unlock(&a->mu);
        r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__,
                         "the audit log is closed (vaultd is shutting down)");
        goto out;
    }
    if (a->broken) {
        kv_error_restore(&a->broken_err);
        pthread_mutex_unlock(&a->mu);
        r = KV_FAILURE;
        goto out;
    }
    p->number = a->jnext;
    size_t len = kv_aj_frame(a->jgen, p->number, ev, n, frame);
    ssize_t w = len > 0 ? pwrite(a->jfd, frame, len, (off_t)a->jtail) : -1;
    if (w != (ssize_t)len || len == 0) {
        kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot write the audit journal: %s",
                     w < 0 ? strerror(errno) : "short write");
        audit_break(a, "appending to the audit journal");
        kv_error_restore(&a->broken_err);
        pthread_mutex_unlock(&a->mu);
        r = KV_FAILURE;
        goto out;
    }
    a->jtail += len;
    a->jnext++;
    bool was_idle = a->head == NULL;
    if (a->tail != NULL)
        a->tail->next = p;
    else
        a->head = p;
    a->tail = p;
    uint64_t gen = a->jgen, number = p->number;
    p = NULL; /* the writer's now */
    if (was_idle) pthread_cond_signal(&a->work);
    if (a->sync_ms == 0) pthread_cond_signal(&a->unsynced);
    while (a->sync_ms == 0 && !a->broken && a->jgen == gen && a->jsynced < number)
        pthread_cond_wait(&a->synced, &a->mu);
    if (a->sync_ms == 0 && a->broken) {
        kv_error_restore(&a->broken_err);
        r = KV_FAILURE;
    }
    pthread_mutex_unlock(&a->mu);
out:
    free(p);
    return r;
}

kv_result vault_audit_around(void *app, rpc_handler_fn fn, const rpc_ctx *ctx, const uint8_t *req,
                             size_t req_len, rpc_reply *reply)
{
    vault *v = app;
    vault_audit *a = v->audit;
    if (a == NULL) return fn(app, ctx, req, req_len, reply);
    audit_call c;
    memset(&c, 0, sizeof(c));
    c.ctx = ctx;
    c.call_id = atomic_fetch_add(&a->next_call_id, 1);
    const ProtobufCMethodDescriptor *md = audit_method(ctx->method);
    audit_ids_from_bytes(&c, md ? md->input : NULL, req, req_len);
    audit_cur = &c;
    kv_result r = fn(app, ctx, req, req_len, reply);
    audit_cur = NULL;
    /* Test hook: the change (if any) committed with its record, the result
     * record not yet written. */
    if (kv_ok(r)) vault_test_crash_point(v, "audit-before-result");
    kv_error_record err;
    kv_error_save(&err);
    kv_code code = kv_failed(r) ? err.code : KV_OK;
    if (kv_ok(r) && md != NULL) audit_ids_from_bytes(&c, md->output, reply->data, reply->len);
    audit_fingerprint(v, &c);
    uint8_t *ev = NULL;
    size_t n = 0;
    kv_result ar = audit_event_pack(&c, "result", 0, code, kv_failed(r) ? err.msg : "", &ev, &n);
    if (kv_ok(ar)) ar = audit_append(a, ev, n);
    /* Test hook: the result record in the journal, not yet in the log. */
    if (kv_ok(ar)) vault_test_crash_point(v, "audit-journal-appended");
    kv_pb_buf_free(ev, n);
    if (kv_failed(ar)) {
        /* Fail closed: no reply leaves without its record. */
        KV_LOG_ERROR("rpc %s principal=%s: the audit record cannot be written (%s); the reply is "
                     "withheld",
                     ctx->method, ctx->principal, kv_error_msg());
        if (reply->data != NULL) {
            if (reply->sensitive) OPENSSL_cleanse(reply->data, reply->len);
            free(reply->data);
        }
        memset(reply, 0, sizeof(*reply));
        KV_BAIL(KV_ERR_UNAVAILABLE,
                "the audit log cannot be written, so the call's result is withheld%s; retry "
                "when the vault's store and token are healthy",
                kv_ok(r) ? " (any change it made is recorded)" : "");
    }
    if (kv_failed(r)) kv_error_restore(&err);
    return r;
}

/* ---- start-up: the token objects and the meta ids ---- */

typedef struct {
    char hmac_hex[2 * HSM_KEY_ID_LEN + 1], sign_hex[2 * HSM_KEY_ID_LEN + 1];
} audit_ids;

static kv_result audit_ids_update(store_txn *t, void *arg)
{
    audit_ids *ids = arg;
    KV_GUARD(store_meta_put(t, VAULT_META_AUDIT_HMAC_ID, ids->hmac_hex));
    return store_meta_put(t, VAULT_META_AUDIT_SIGN_ID, ids->sign_hex);
}

static kv_result audit_parse_id(const char *hex, hsm_key_id *id)
{
    KV_ENSURE(strlen(hex) == 2 * HSM_KEY_ID_LEN, KV_ERR_DATA_LOSS,
              "the store's audit key id '%.40s' is malformed", hex);
    for (size_t i = 0; i < HSM_KEY_ID_LEN; i++) {
        unsigned b;
        KV_ENSURE(sscanf(hex + 2 * i, "%2x", &b) == 1, KV_ERR_DATA_LOSS,
                  "the store's audit key id is malformed");
        id->bytes[i] = (uint8_t)b;
    }
    return KV_SUCCESS;
}

static kv_result audit_keys_ensure(vault_audit *a)
{
    vault *v = a->v;
    store_txn *t;
    audit_ids ids;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r1 = store_meta_get(t, VAULT_META_AUDIT_HMAC_ID, ids.hmac_hex, sizeof(ids.hmac_hex));
    kv_code c1 = kv_error_code();
    kv_result r2 = store_meta_get(t, VAULT_META_AUDIT_SIGN_ID, ids.sign_hex, sizeof(ids.sign_hex));
    kv_code c2 = kv_error_code();
    store_read_end(t);
    if (kv_ok(r1) && kv_ok(r2)) {
        KV_GUARD(audit_parse_id(ids.hmac_hex, &a->hmac_id));
        KV_GUARD(audit_parse_id(ids.sign_hex, &a->sign_id));
        return KV_SUCCESS;
    }
    KV_ENSURE((kv_failed(r1) && c1 == KV_ERR_NOT_FOUND) &&
                  (kv_failed(r2) && c2 == KV_ERR_NOT_FOUND),
              KV_ERR_DATA_LOSS,
              "the store names only one of the two audit keys; restore the store from backup");
    /* First start: token objects before the commit that names them (an
     * interrupted start leaves orphans that reconcile removes). */
    KV_GUARD(hsm_hmac_generate(v->hsm, VAULT_AUDIT_HMAC_LABEL, &a->hmac_id));
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    KV_GUARD(
        hsm_sign_key_generate(v->hsm, VAULT_AUDIT_SIGN_LABEL, 2048, &a->sign_id, &spki, &spki_len));
    free(spki);
    /* An empty anchor (seq 0) from the start: a missing one later is an
     * error, never silently replaced. */
    static const uint8_t empty_anchor[40];
    KV_GUARD(hsm_data_put(v->hsm, AUDIT_ANCHOR_LABEL, empty_anchor, sizeof(empty_anchor)));
    hsm_key_id_hex(&a->hmac_id, ids.hmac_hex);
    hsm_key_id_hex(&a->sign_id, ids.sign_hex);
    KV_GUARD(store_update(v->store, audit_ids_update, &ids));
    KV_LOG_INFO("audit log: created the token's audit HMAC key %s and checkpoint key %s",
                ids.hmac_hex, ids.sign_hex);
    return KV_SUCCESS;
}

/* ---- start-up: the journal ---- */

typedef struct {
    audit_pending *head, *tail;
    uint64_t skip; /* frames already folded */
    size_t n;
} audit_recover_ctx;

static kv_result audit_recover_one(void *arg, uint64_t number, const uint8_t *ev, size_t n)
{
    audit_recover_ctx *c = arg;
    if (number <= c->skip) return KV_SUCCESS;
    audit_pending *p = malloc(sizeof(*p) + n);
    KV_ENSURE(p != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory reading the audit journal");
    memcpy(p->event, ev, n);
    p->len = n;
    p->number = number;
    p->next = NULL;
    if (c->tail != NULL)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
    c->n++;
    return KV_SUCCESS;
}

/* How far the journal was folded: the generation and the last frame. */
static kv_result audit_journal_mark(vault *v, bool *have, uint64_t *gen, uint64_t *folded)
{
    char mark[48];
    store_txn *t;
    *have = false;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = store_raw_get(t, STORE_AUDIT_STATE, AUDIT_JOURNAL_MARK, mark, sizeof(mark));
    kv_code code = kv_error_code();
    store_read_end(t);
    if (kv_failed(r)) {
        if (code != KV_ERR_NOT_FOUND) return r;
        kv_error_clear();
        return KV_SUCCESS;
    }
    KV_ENSURE(sscanf(mark, "%16" SCNx64 ":%" SCNu64, gen, folded) == 2, KV_ERR_DATA_LOSS,
              "the store's audit journal mark '%.40s' is malformed", mark);
    *have = true;
    return KV_SUCCESS;
}

/* Folds what a journal left by an unclean stop holds beyond the mark. */
static kv_result audit_journal_recover(vault_audit *a, const char *path)
{
    bool have = false;
    uint64_t mark_gen = 0, folded = 0;
    KV_GUARD(audit_journal_mark(a->v, &have, &mark_gen, &folded));
    uint8_t *buf = NULL;
    size_t len = 0;
    KV_GUARD(kv_file_read(path, 16 * AUDIT_JOURNAL_BYTES, &buf, &len));
    kv_result r = KV_SUCCESS;
    uint64_t gen = 0, frames = 0;
    size_t end = 0;
    audit_recover_ctx c = {0};
    if (kv_failed(kv_aj_header_parse(buf, len, &gen))) {
        /* Written only at creation and at resets, after every frame was
         * folded: nothing in it is lost, but say so. */
        KV_LOG_ERROR("audit log: %s has no valid header (%s); it is replaced", path,
                     kv_error_msg());
        kv_error_clear();
    } else {
        /* Only the generation the store's mark names continues this log:
         * another one was reset past (or belongs to another copy of the
         * store, e.g. one restored from a backup). */
        c.skip = folded;
        r = kv_aj_scan(buf, len, &gen, have && gen == mark_gen ? audit_recover_one : NULL, &c, &end,
                       &frames);
        if (kv_ok(r) && (!have || gen != mark_gen) && frames > 0)
            KV_LOG_WARN("audit log: %s holds %" PRIu64 " records of journal generation %016" PRIx64
                        ", which this store's log does not continue (its mark: %s): folded before "
                        "a reset that a stop interrupted, or from another copy of the store; they "
                        "are not folded again",
                        path, frames, gen, have ? "another generation" : "none");
    }
    free(buf);
    if (kv_ok(r) && c.head != NULL) {
        audit_fold_ctx fc = {
            .a = a, .batch = c.head, .mark_gen = gen, .mark_frame = c.tail->number};
        r = store_update(a->v->store, audit_fold_update, &fc);
        if (kv_ok(r))
            KV_LOG_WARN("audit log: folded %zu result records from the journal into the log "
                        "(vaultd had stopped without closing it)",
                        c.n);
    }
    audit_pending_free(c.head);
    return r;
}

/* A journal file of bytes written with zeros (so that appends and
 * fdatasync never change its size or allocation), made durable. */
static kv_result audit_journal_create(const char *path, size_t bytes, int *out)
{
    uint8_t *zeros = calloc(1, bytes);
    KV_ENSURE(zeros != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory creating %s", path);
    kv_result r = kv_file_write_atomic(path, zeros, bytes, 0600);
    free(zeros);
    KV_GUARD(r);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    KV_ENSURE(fd >= 0, KV_ERR_UNAVAILABLE, "cannot open %s: %s", path, strerror(errno));
    *out = fd;
    return KV_SUCCESS;
}

/* Opens the journal: folds what an unclean stop left in it, then starts a
 * new generation. */
static kv_result audit_journal_open(vault_audit *a, const char *path, size_t bytes)
{
    a->jcap = bytes;
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    KV_ENSURE(fd >= 0 || errno == ENOENT, KV_ERR_UNAVAILABLE, "cannot open %s: %s", path,
              strerror(errno));
    if (fd >= 0) {
        kv_result r = audit_journal_recover(a, path);
        struct stat st;
        if (kv_ok(r) && (fstat(fd, &st) != 0 || st.st_size != (off_t)a->jcap)) {
            close(fd);
            fd = -1;
        }
        if (kv_failed(r)) {
            close(fd);
            kv_error_context("recovering the audit journal %s", path);
            return r;
        }
    }
    if (fd < 0) KV_GUARD(audit_journal_create(path, a->jcap, &fd));
    a->jfd = fd;
    audit_fold_ctx mark = {.a = a};
    KV_GUARD(audit_new_generation(&mark.mark_gen));
    KV_GUARD(store_update(a->v->store, audit_fold_update, &mark));
    KV_GUARD(audit_journal_reset(a, mark.mark_gen));
    KV_ENSURE(fdatasync(fd) == 0, KV_ERR_UNAVAILABLE, "cannot sync %s: %s", path, strerror(errno));
    return KV_SUCCESS;
}

/* The writer's last rounds fold whatever is pending. */
static void audit_threads_stop(vault_audit *a)
{
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_signal(&a->work);
    pthread_cond_signal(&a->unsynced);
    pthread_mutex_unlock(&a->mu);
    if (a->syncer_running) pthread_join(a->syncer, NULL);
    if (a->writer_running) pthread_join(a->writer, NULL);
    a->syncer_running = a->writer_running = false;
}

kv_result vault_audit_open(vault *v, const vault_audit_config *cfg)
{
    vault_audit *a = calloc(1, sizeof(*a));
    KV_ENSURE(a != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    a->v = v;
    a->jfd = -1;
    a->checkpoint_every =
        cfg->checkpoint_every > 0 ? cfg->checkpoint_every : VAULT_AUDIT_CHECKPOINT_EVERY;
    a->sync_ms = cfg->sync_ms;
    atomic_init(&a->next_call_id, (uint64_t)kv_clock_now_ms() << 16);
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->seal_mu, NULL);
    pthread_mutex_init(&a->sync_mu, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(&a->work, &monotonic);
    pthread_condattr_destroy(&monotonic);
    pthread_cond_init(&a->synced, NULL);
    pthread_cond_init(&a->unsynced, NULL);
    kv_result r = audit_keys_ensure(a);
    size_t jbytes = cfg->journal_bytes ? cfg->journal_bytes : AUDIT_JOURNAL_BYTES;
    if (kv_ok(r) && (jbytes < 16384 || jbytes > 16 * AUDIT_JOURNAL_BYTES))
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "audit journal of %zu bytes: 16 KiB to 64 MiB", jbytes);
    if (kv_ok(r)) r = audit_journal_open(a, cfg->journal_path, jbytes);
    uint8_t anchor_head[32];
    if (kv_ok(r)) r = audit_anchor_read(a, &a->anchored, anchor_head);
    if (kv_ok(r) && a->anchored > 0) {
        /* A log shorter than the token's anchor lost records (or was
         * rewritten): say so at once; VerifyLog names the first one. */
        store_txn *t;
        uint64_t last = 0;
        uint8_t hash[32];
        if (kv_ok(store_read_begin(v->store, &t))) {
            if (kv_failed(vault_audit_head(t, &last, hash))) kv_error_clear();
            store_read_end(t);
        }
        if (last < a->anchored)
            KV_LOG_ERROR("audit log: the store ends at record %" PRIu64 " but the token's anchor "
                         "names checkpoint %" PRIu64 ": records were removed; run vaultctl audit "
                         "verify",
                         last, a->anchored);
    }
    if (kv_ok(r) && !a->anchor_seen)
        KV_LOG_ERROR("audit log: the token has no anchor object (%s); it was removed, so online "
                     "verification cannot detect a truncated log until the next checkpoint",
                     AUDIT_ANCHOR_LABEL);
    if (kv_ok(r) && pthread_create(&a->writer, NULL, audit_writer_main, a) != 0)
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__,
                         "cannot start the audit writer thread");
    else if (kv_ok(r))
        a->writer_running = true;
    if (kv_ok(r) && a->sync_ms == 0) {
        if (pthread_create(&a->syncer, NULL, audit_syncer_main, a) != 0)
            r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__,
                             "cannot start the audit journal syncer thread");
        else
            a->syncer_running = true;
    }
    if (kv_failed(r)) {
        audit_threads_stop(a);
        kv_error_context("opening the audit log");
        if (a->jfd >= 0) close(a->jfd);
        hsm_mac_session_close(a->macs);
        pthread_mutex_destroy(&a->mu);
        pthread_mutex_destroy(&a->seal_mu);
        pthread_mutex_destroy(&a->sync_mu);
        pthread_cond_destroy(&a->work);
        pthread_cond_destroy(&a->synced);
        pthread_cond_destroy(&a->unsynced);
        free(a);
        return r;
    }
    v->audit = a;
    store_set_commit_hook(v->store, audit_commit_hook, a);
    return KV_SUCCESS;
}

void vault_audit_close(vault *v)
{
    vault_audit *a = v->audit;
    if (a == NULL) return;
    audit_threads_stop(a);
    vault_audit_task("shutdown");
    /* The shutdown checkpoint seals every record written. */
    if (kv_failed(audit_seal(a, true)))
        kv_log_error_record(KV_LOG_ERROR, "writing the shutdown audit checkpoint");
    store_set_commit_hook(v->store, NULL, NULL);
    v->audit = NULL;
    audit_pending_free(a->head); /* only after a failure: they stay in the journal */
    if (a->jfd >= 0) close(a->jfd);
    hsm_mac_session_close(a->macs);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->seal_mu);
    pthread_mutex_destroy(&a->sync_mu);
    pthread_cond_destroy(&a->work);
    pthread_cond_destroy(&a->synced);
    pthread_cond_destroy(&a->unsynced);
    free(a);
}

/* ---- shared by the Audit service (audit_ops.c) ---- */

kv_result vault_audit_seal(vault *v)
{
    KV_GUARD(vault_audit_flush(v));
    return audit_seal(v->audit, true);
}

kv_result vault_audit_public_key(vault *v, uint8_t **spki, size_t *spki_len)
{
    KV_ENSURE(v->audit != NULL, KV_ERR_FAILED_PRECONDITION,
              "the audit log is off in this vaultd (--no-audit-log)");
    return hsm_public_key_spki(v->hsm, &v->audit->sign_id, spki, spki_len);
}

kv_result vault_audit_anchor(vault *v, uint64_t *seq, uint8_t head[32])
{
    KV_ENSURE(v->audit != NULL, KV_ERR_FAILED_PRECONDITION,
              "the audit log is off in this vaultd (--no-audit-log)");
    return audit_anchor_read(v->audit, seq, head);
}

kv_result vault_audit_hmac_check(void *arg, const kv_audit_record *r, bool *ok)
{
    vault *v = arg;
    uint8_t mac[32];
    KV_GUARD(hsm_hmac_sha256(v->hsm, &v->audit->hmac_id, r->hash, 32, mac));
    *ok = CRYPTO_memcmp(mac, r->hmac, 32) == 0;
    return KV_SUCCESS;
}
