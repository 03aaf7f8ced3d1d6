/*
 * audit_ops.c: the AuditLog service: read the audit log with filters, export
 * a range with its checkpoints, verify the whole log online (chain, HMACs in
 * the token, checkpoint signatures, the token anchor) and hand out the
 * checkpoint public key.  Auditors and operators (DESIGN.md: HSM operators
 * audit the log) may call it; nothing here changes vault state (the only
 * writes are the audit log's own checkpoints).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "kv_audit.h"
#include "kv_base64.h"
#include "kv_pb.h"
#include "vault.h"

#include "hsmvault/store/records.pb-c.h"

typedef Hsmvault__Store__AuditEvent AuditEvent;
typedef Hsmvault__Store__AuditEntry AuditEntry;
typedef Hsmvault__Store__AuditCheckpointRecord AuditCheckpointRecord;

#define AUDIT_READ_DEFAULT 500
#define AUDIT_READ_MAX 5000
#define AUDIT_EXPORT_DEFAULT 1000
#define AUDIT_EXPORT_MAX 5000
#define AUDIT_SCAN_BUDGET 200000 /* records examined per ReadLog call */

static kv_result audit_authorize(vault *v, const rpc_ctx *ctx, const char *action)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(
        t, ctx->principal, ROLE_BIT(ROLE_AUDITOR) | ROLE_BIT(ROLE_OPERATOR), NULL, NULL, action);
    store_read_end(t);
    KV_GUARD(r);
    KV_ENSURE(v->audit != NULL, KV_ERR_FAILED_PRECONDITION,
              "the audit log is off in this vaultd (started with --no-audit-log)");
    return KV_SUCCESS;
}

/* ---- ReadLog ---- */

typedef struct {
    const Hsmvault__V1__ReadLogRequest *req;
    uint32_t limit;
    store_list events; /* decoded AuditEvent, parallel to seqs */
    uint64_t *seqs;
    size_t cap;
    uint64_t last_seen;
    size_t scanned;
    bool more;
} audit_read_ctx;

static bool audit_op_matches(const char *rpc, const char *op)
{
    if (op[0] == '\0') return true;
    if (strcmp(rpc, op) == 0) return true;
    const char *last = strrchr(rpc, '/');
    return last != NULL && strcmp(last + 1, op) == 0;
}

static kv_result audit_read_one(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    audit_read_ctx *c = arg;
    if (c->events.n >= c->limit || c->scanned >= AUDIT_SCAN_BUDGET) {
        c->more = true;
        KV_BAIL(KV_ERR_OUT_OF_RANGE, "page full"); /* stops the scan */
    }
    c->scanned++;
    const AuditEntry *e = (const AuditEntry *)*msg;
    c->last_seen = e->seq;
    ProtobufCMessage *ev = NULL;
    KV_ENSURE(kv_ok(kv_pb_unpack(&hsmvault__store__audit_event__descriptor, e->event.data,
                                 e->event.len, "audit event", &ev)),
              KV_ERR_DATA_LOSS, "audit record %" PRIu64 " does not decode; run audit verify",
              e->seq);
    const AuditEvent *a = (const AuditEvent *)ev;
    const Hsmvault__V1__ReadLogRequest *q = c->req;
    bool keep = (q->tenant_id[0] == '\0' || strcmp(a->tenant_id, q->tenant_id) == 0) &&
                (q->principal[0] == '\0' || strcmp(a->principal, q->principal) == 0) &&
                audit_op_matches(a->rpc, q->operation) &&
                (q->since_ms == 0 || a->time_ms >= q->since_ms) &&
                (q->until_ms == 0 || a->time_ms <= q->until_ms);
    if (!keep) {
        kv_pb_free(ev);
        return KV_SUCCESS;
    }
    if (c->events.n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        ProtobufCMessage **items = realloc(c->events.items, cap * sizeof(*items));
        uint64_t *seqs = items ? realloc(c->seqs, cap * sizeof(*seqs)) : NULL;
        if (items) c->events.items = items;
        if (seqs) c->seqs = seqs;
        if (items == NULL || seqs == NULL) {
            kv_pb_free(ev);
            KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory reading the audit log");
        }
        c->cap = c->events.cap = cap;
    }
    c->seqs[c->events.n] = e->seq;
    c->events.items[c->events.n++] = ev;
    return KV_SUCCESS;
}

static void audit_event_to_api(uint64_t seq, const AuditEvent *e, Hsmvault__V1__AuditRecord *r)
{
    hsmvault__v1__audit_record__init(r);
    r->seq = seq;
    r->time_ms = e->time_ms;
    r->principal = e->principal;
    r->role = e->role;
    r->rpc = e->rpc;
    r->phase = e->phase;
    r->tenant_id = e->tenant_id;
    r->environment_id = e->environment_id;
    r->key_id = e->key_id;
    r->database_id = e->database_id;
    r->key_fingerprint = e->key_fingerprint;
    r->status_code = e->status_code;
    r->status = e->status;
    r->message = e->message;
    r->n_tables = e->n_tables;
    r->tables = e->tables;
    r->call_id = e->call_id;
}

VAULT_HANDLER(vault_rpc_read_log, Hsmvault__V1__ReadLogRequest,
              hsmvault__v1__read_log_request__descriptor)
static kv_result vault_rpc_read_log_impl(vault *v, const rpc_ctx *ctx,
                                         const Hsmvault__V1__ReadLogRequest *req, rpc_reply *reply)
{
    KV_GUARD(audit_authorize(v, ctx, "read the audit log"));
    KV_GUARD(vault_audit_flush(v)); /* result records still in the journal too */
    KV_ENSURE(req->limit <= AUDIT_READ_MAX, KV_ERR_INVALID_ARGUMENT,
              "limit %u is above %u; page with after_seq", req->limit, AUDIT_READ_MAX);
    KV_ENSURE(req->until_ms == 0 || req->since_ms <= req->until_ms, KV_ERR_INVALID_ARGUMENT,
              "since is after until");
    KV_ENSURE(req->after_seq < UINT64_MAX, KV_ERR_INVALID_ARGUMENT, "after_seq is out of range");
    audit_read_ctx c = {.req = req,
                        .limit = req->limit ? req->limit : AUDIT_READ_DEFAULT,
                        .last_seen = req->after_seq};
    char from[24];
    vault_audit_seq_key(req->after_seq + 1, from);
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = store_scan_from(t, STORE_AUDIT_LOG, from,
                                  &hsmvault__store__audit_entry__descriptor, audit_read_one, &c);
    store_read_end(t);
    if (kv_failed(r) && c.more) r = KV_SUCCESS;
    Hsmvault__V1__AuditRecord *recs = calloc(c.events.n ? c.events.n : 1, sizeof(*recs));
    Hsmvault__V1__AuditRecord **ptrs = calloc(c.events.n ? c.events.n : 1, sizeof(*ptrs));
    if (kv_ok(r) && (recs == NULL || ptrs == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    if (kv_ok(r)) {
        for (size_t i = 0; i < c.events.n; i++) {
            audit_event_to_api(c.seqs[i], (const AuditEvent *)c.events.items[i], &recs[i]);
            ptrs[i] = &recs[i];
        }
        Hsmvault__V1__ReadLogResponse resp = HSMVAULT__V1__READ_LOG_RESPONSE__INIT;
        resp.n_records = c.events.n;
        resp.records = ptrs;
        resp.more = c.more;
        resp.next_after_seq = c.more && c.events.n > 0 ? c.seqs[c.events.n - 1] : c.last_seen;
        if (c.more && c.scanned >= AUDIT_SCAN_BUDGET) resp.next_after_seq = c.last_seen;
        r = vault_reply(reply, &resp.base, false);
    }
    free(recs);
    free(ptrs);
    free(c.seqs);
    c.events.cap = c.cap;
    store_list_free(&c.events);
    return r;
}

/* ---- ExportLog and VerifyLog: raw entries and checkpoints ---- */

typedef struct {
    store_list entries, checkpoints;
} audit_raw;

static void audit_raw_free(audit_raw *raw)
{
    store_list_free(&raw->entries);
    store_list_free(&raw->checkpoints);
}

typedef struct {
    store_list *list;
    uint64_t to;
    size_t limit;
    bool more;
} audit_range_ctx;

static kv_result audit_range_one(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    audit_range_ctx *c = arg;
    /* Entries and checkpoints both start with field 1 = seq. */
    uint64_t seq = (*msg)->descriptor == &hsmvault__store__audit_entry__descriptor
                       ? ((const AuditEntry *)*msg)->seq
                       : ((const AuditCheckpointRecord *)*msg)->seq;
    if ((c->to != 0 && seq > c->to) || c->list->n >= c->limit) {
        c->more = c->list->n >= c->limit && (c->to == 0 || seq <= c->to);
        KV_BAIL(KV_ERR_OUT_OF_RANGE, "range done");
    }
    store_list *l = c->list;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        ProtobufCMessage **p = realloc(l->items, cap * sizeof(*p));
        KV_ENSURE(p != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory reading the audit log");
        l->items = p;
        l->cap = cap;
    }
    l->items[l->n++] = *msg;
    *msg = NULL;
    return KV_SUCCESS;
}

/* Entries from..to (to 0: the end; at most limit) and the checkpoints whose
 * seq lies in the range read. */
static kv_result audit_raw_read(store_txn *t, uint64_t from, uint64_t to, size_t limit,
                                audit_raw *raw, bool *more)
{
    char key[24];
    vault_audit_seq_key(from, key);
    audit_range_ctx c = {.list = &raw->entries, .to = to, .limit = limit};
    kv_result r = store_scan_from(t, STORE_AUDIT_LOG, key,
                                  &hsmvault__store__audit_entry__descriptor, audit_range_one, &c);
    if (kv_failed(r) && kv_error_code() != KV_ERR_OUT_OF_RANGE) return r;
    *more = c.more;
    uint64_t last =
        raw->entries.n ? ((const AuditEntry *)raw->entries.items[raw->entries.n - 1])->seq : to;
    audit_range_ctx cc = {.list = &raw->checkpoints, .to = *more ? last : to, .limit = SIZE_MAX};
    r = store_scan_from(t, STORE_AUDIT_CHECKPOINTS, key,
                        &hsmvault__store__audit_checkpoint_record__descriptor, audit_range_one,
                        &cc);
    if (kv_failed(r) && kv_error_code() != KV_ERR_OUT_OF_RANGE) return r;
    kv_error_clear();
    return KV_SUCCESS;
}

VAULT_HANDLER(vault_rpc_export_log, Hsmvault__V1__ExportLogRequest,
              hsmvault__v1__export_log_request__descriptor)
static kv_result vault_rpc_export_log_impl(vault *v, const rpc_ctx *ctx,
                                           const Hsmvault__V1__ExportLogRequest *req,
                                           rpc_reply *reply)
{
    KV_GUARD(audit_authorize(v, ctx, "export the audit log"));
    KV_ENSURE(req->limit <= AUDIT_EXPORT_MAX, KV_ERR_INVALID_ARGUMENT,
              "limit %u is above %u; page with from_seq", req->limit, AUDIT_EXPORT_MAX);
    uint64_t from = req->from_seq ? req->from_seq : 1;
    KV_ENSURE(req->to_seq == 0 || req->to_seq >= from, KV_ERR_INVALID_ARGUMENT,
              "to_seq %" PRIu64 " is before from_seq %" PRIu64, req->to_seq, from);
    /* Seal what is written so far: the export ends on a signed checkpoint. */
    KV_GUARD(vault_audit_seal(v));
    audit_raw raw = {0};
    bool more = false;
    uint64_t head = 0;
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    uint8_t head_hash[32];
    kv_result r = vault_audit_head(t, &head, head_hash);
    if (kv_ok(r))
        r = audit_raw_read(t, from, req->to_seq, req->limit ? req->limit : AUDIT_EXPORT_DEFAULT,
                           &raw, &more);
    store_read_end(t);
    size_t n = raw.entries.n, m = raw.checkpoints.n;
    Hsmvault__V1__ExportedRecord *recs = calloc(n ? n : 1, sizeof(*recs));
    Hsmvault__V1__ExportedRecord **rp = calloc(n ? n : 1, sizeof(*rp));
    Hsmvault__V1__ExportedCheckpoint *cps = calloc(m ? m : 1, sizeof(*cps));
    Hsmvault__V1__ExportedCheckpoint **cpp = calloc(m ? m : 1, sizeof(*cpp));
    if (kv_ok(r) && (recs == NULL || rp == NULL || cps == NULL || cpp == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    if (kv_ok(r)) {
        for (size_t i = 0; i < n; i++) {
            const AuditEntry *e = (const AuditEntry *)raw.entries.items[i];
            hsmvault__v1__exported_record__init(&recs[i]);
            recs[i].seq = e->seq;
            recs[i].event = e->event;
            recs[i].prev_hash = e->prev_hash;
            recs[i].hash = e->hash;
            recs[i].hmac = e->hmac;
            rp[i] = &recs[i];
        }
        for (size_t i = 0; i < m; i++) {
            const AuditCheckpointRecord *c =
                (const AuditCheckpointRecord *)raw.checkpoints.items[i];
            hsmvault__v1__exported_checkpoint__init(&cps[i]);
            cps[i].seq = c->seq;
            cps[i].head_hash = c->head_hash;
            cps[i].time = c->time;
            cps[i].signature = c->signature;
            cpp[i] = &cps[i];
        }
        Hsmvault__V1__ExportLogResponse resp = HSMVAULT__V1__EXPORT_LOG_RESPONSE__INIT;
        resp.n_records = n;
        resp.records = rp;
        resp.n_checkpoints = m;
        resp.checkpoints = cpp;
        resp.more = more;
        resp.next_from_seq = n ? ((const AuditEntry *)raw.entries.items[n - 1])->seq + 1 : from;
        resp.head_seq = head;
        r = vault_reply(reply, &resp.base, false);
    }
    free(recs);
    free(rp);
    free(cps);
    free(cpp);
    audit_raw_free(&raw);
    return r;
}

/* The stored entries and checkpoints as the verifier's views (borrowed). */
static kv_result audit_views(const audit_raw *raw, kv_audit_record **recs,
                             kv_audit_checkpoint **cps)
{
    *recs = calloc(raw->entries.n ? raw->entries.n : 1, sizeof(**recs));
    *cps = calloc(raw->checkpoints.n ? raw->checkpoints.n : 1, sizeof(**cps));
    KV_ENSURE(*recs != NULL && *cps != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < raw->entries.n; i++) {
        const AuditEntry *e = (const AuditEntry *)raw->entries.items[i];
        kv_audit_record *o = &(*recs)[i];
        o->seq = e->seq;
        /* A damaged field (wrong length) is left zero: the hash check fails. */
        if (e->prev_hash.len == 32) memcpy(o->prev, e->prev_hash.data, 32);
        if (e->hash.len == 32) memcpy(o->hash, e->hash.data, 32);
        if (e->hmac.len == 32) memcpy(o->hmac, e->hmac.data, 32);
        o->event = e->event.data;
        o->event_len = e->event.len;
    }
    for (size_t i = 0; i < raw->checkpoints.n; i++) {
        const AuditCheckpointRecord *c = (const AuditCheckpointRecord *)raw->checkpoints.items[i];
        kv_audit_checkpoint *o = &(*cps)[i];
        o->seq = c->seq;
        if (c->head_hash.len == 32) memcpy(o->head, c->head_hash.data, 32);
        o->time = c->time;
        o->sig = c->signature.data;
        o->sig_len = c->signature.len;
    }
    return KV_SUCCESS;
}

kv_result vault_audit_verify_store(vault *v, kv_audit_report *rep, uint64_t *anchor)
{
    KV_GUARD(vault_audit_seal(v));
    /* The anchor first: it never leads the store, so a snapshot taken after
     * it holds at least what it names. */
    uint8_t anchor_head[32];
    KV_GUARD(vault_audit_anchor(v, anchor, anchor_head));
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    KV_GUARD(vault_audit_public_key(v, &spki, &spki_len));
    audit_raw raw = {0};
    bool more = false;
    kv_audit_record *recs = NULL;
    kv_audit_checkpoint *cps = NULL;
    store_txn *t;
    kv_result r = store_read_begin(v->store, &t);
    if (kv_ok(r)) {
        r = audit_raw_read(t, 1, 0, SIZE_MAX, &raw, &more);
        store_read_end(t);
    }
    if (kv_ok(r)) r = audit_views(&raw, &recs, &cps);
    if (kv_ok(r)) {
        kv_audit_verify_opts o = {.spki = spki,
                                  .spki_len = spki_len,
                                  .from_genesis = true,
                                  .anchor_seq = *anchor,
                                  .hmac = vault_audit_hmac_check,
                                  .hmac_arg = v};
        memcpy(o.anchor_head, anchor_head, 32);
        r = kv_audit_verify(recs, raw.entries.n, cps, raw.checkpoints.n, &o, rep);
    }
    free(recs);
    free(cps);
    free(spki);
    audit_raw_free(&raw);
    return r;
}

VAULT_HANDLER(vault_rpc_verify_log, Hsmvault__V1__VerifyLogRequest,
              hsmvault__v1__verify_log_request__descriptor)
static kv_result vault_rpc_verify_log_impl(vault *v, const rpc_ctx *ctx,
                                           const Hsmvault__V1__VerifyLogRequest *req,
                                           rpc_reply *reply)
{
    (void)req;
    KV_GUARD(audit_authorize(v, ctx, "verify the audit log"));
    kv_audit_report rep;
    uint64_t anchor = 0;
    KV_GUARD(vault_audit_verify_store(v, &rep, &anchor));
    Hsmvault__V1__VerifyLogResponse resp = HSMVAULT__V1__VERIFY_LOG_RESPONSE__INIT;
    resp.ok = rep.kind == KV_AUDIT_OK;
    resp.kind = (char *)(uintptr_t)kv_audit_kind_name(rep.kind);
    resp.seq = rep.seq;
    resp.detail = rep.detail;
    resp.records = rep.records;
    resp.checkpoints = rep.checkpoints;
    resp.unsealed = rep.unsealed;
    resp.anchor_seq = anchor;
    return vault_reply(reply, &resp.base, false);
}

VAULT_HANDLER(vault_rpc_get_checkpoint_key, Hsmvault__V1__GetCheckpointKeyRequest,
              hsmvault__v1__get_checkpoint_key_request__descriptor)
static kv_result vault_rpc_get_checkpoint_key_impl(vault *v, const rpc_ctx *ctx,
                                                   const Hsmvault__V1__GetCheckpointKeyRequest *req,
                                                   rpc_reply *reply)
{
    (void)req;
    KV_GUARD(audit_authorize(v, ctx, "read the audit checkpoint key"));
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    KV_GUARD(vault_audit_public_key(v, &spki, &spki_len));
    char *pem = NULL;
    uint8_t fp[SHA256_DIGEST_LENGTH];
    char fp_hex[2 * SHA256_DIGEST_LENGTH + 1];
    SHA256(spki, spki_len, fp);
    kv_hex_encode(fp, sizeof(fp), fp_hex);
    kv_result r = kv_audit_spki_to_pem(spki, spki_len, &pem);
    free(spki);
    KV_GUARD(r);
    Hsmvault__V1__GetCheckpointKeyResponse resp = HSMVAULT__V1__GET_CHECKPOINT_KEY_RESPONSE__INIT;
    resp.public_key_pem = pem;
    resp.fingerprint = fp_hex;
    r = vault_reply(reply, &resp.base, false);
    free(pem);
    return r;
}
