/*
 * kv_audit.h: the audit log's hash chain, checkpoints, verifier and export
 * file, shared by vaultd (which writes and verifies online) and vaultctl
 * (which verifies an export offline with only the checkpoint public key).
 *
 * A record is (seq, event bytes, prev, hash, hmac):
 *   hash = SHA-256("hsmvault-audit-record-v1" NUL || prev || seq (u64 BE) || event)
 *   hmac = HMAC-SHA256(token audit key, hash)     (online verification only)
 * The first record (seq 1) has prev = 32 zero bytes.  A checkpoint signs
 *   "hsmvault-audit-checkpoint-v1" NUL || seq (u64 BE) || head hash || time (i64 BE)
 * with RSASSA-PKCS1-v1_5 SHA-256 by the token's checkpoint key.
 *
 * Never put event contents in an error message: events are data to show,
 * not to trust (an export file is untrusted input).
 */
#ifndef KV_AUDIT_H
#define KV_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

#define KV_AUDIT_HASH_BYTES 32
#define KV_AUDIT_EVENT_MAX 8192
#define KV_AUDIT_SIG_MAX 1024
#define KV_AUDIT_CHECKPOINT_MSG_BYTES (29 + 8 + KV_AUDIT_HASH_BYTES + 8)
#define KV_AUDIT_EXPORT_MAX (256u << 20)
#define KV_AUDIT_EXPORT_MAGIC "hsmvault-audit-export 1"

typedef struct {
    uint64_t seq;
    uint8_t prev[KV_AUDIT_HASH_BYTES];
    uint8_t hash[KV_AUDIT_HASH_BYTES];
    uint8_t hmac[KV_AUDIT_HASH_BYTES];
    const uint8_t *event; /* borrowed (export: points into the parsed file's buffer) */
    size_t event_len;
} kv_audit_record;

typedef struct {
    uint64_t seq; /* the last record it covers */
    uint8_t head[KV_AUDIT_HASH_BYTES];
    int64_t time;
    const uint8_t *sig;
    size_t sig_len;
} kv_audit_checkpoint;

void kv_audit_record_hash(const uint8_t prev[KV_AUDIT_HASH_BYTES], uint64_t seq,
                          const uint8_t *event, size_t event_len, uint8_t out[KV_AUDIT_HASH_BYTES]);
void kv_audit_checkpoint_message(uint64_t seq, const uint8_t head[KV_AUDIT_HASH_BYTES],
                                 int64_t time, uint8_t out[KV_AUDIT_CHECKPOINT_MSG_BYTES]);

typedef enum {
    KV_AUDIT_OK = 0,
    KV_AUDIT_CHANGED,        /* a record's bytes no longer match its hash or HMAC */
    KV_AUDIT_REMOVED,        /* a sequence number is missing */
    KV_AUDIT_REORDERED,      /* records are out of sequence order */
    KV_AUDIT_INSERTED,       /* a record that does not belong to the chain */
    KV_AUDIT_TRUNCATED,      /* the log ends before its last checkpoint (or the token anchor) */
    KV_AUDIT_BAD_CHECKPOINT, /* a checkpoint's signature or head hash does not match */
} kv_audit_kind;
const char *kv_audit_kind_name(kv_audit_kind k);

typedef struct {
    kv_audit_kind kind;
    uint64_t seq; /* the first record (or checkpoint seq) found wrong; 0 when OK */
    char detail[256];
    uint64_t records, checkpoints; /* how many were checked */
    uint64_t first_seq, last_seq;
    uint64_t unsealed; /* records after the last checkpoint (not yet signed) */
} kv_audit_report;

/* Online HMAC check: true when r->hmac is the token's MAC of r->hash. */
typedef kv_result (*kv_audit_hmac_check_fn)(void *arg, const kv_audit_record *r, bool *ok);

typedef struct {
    const uint8_t *spki; /* checkpoint public key, DER SubjectPublicKeyInfo */
    size_t spki_len;
    bool from_genesis;                        /* recs start at seq 1 (prev must be zeros) */
    uint64_t anchor_seq;                      /* the token's latest checkpoint seq (0: none) */
    uint8_t anchor_head[KV_AUDIT_HASH_BYTES]; /* and the head hash it signed */
    kv_audit_hmac_check_fn hmac;              /* NULL: offline, MACs not checked */
    void *hmac_arg;
} kv_audit_verify_opts;

/* Verifies records (in stored order) and checkpoints; the first problem found
 * goes into *rep (kind != OK).  Fails only for bad arguments or an unusable
 * public key. */
KV_RESULT kv_audit_verify(const kv_audit_record *recs, size_t n, const kv_audit_checkpoint *cps,
                          size_t n_cps, const kv_audit_verify_opts *opts, kv_audit_report *rep);

/* ---- export file (text, one item per line; see docs/audit.md) ----
 *   hsmvault-audit-export 1
 *   record <seq> <prev hex> <hash hex> <hmac hex> <event base64>
 *   checkpoint <seq> <head hex> <time> <signature base64>
 *   end <records> <checkpoints>
 */
typedef struct {
    uint8_t *buf; /* owns the decoded events and signatures */
    kv_audit_record *recs;
    size_t n_recs;
    kv_audit_checkpoint *cps;
    size_t n_cps;
} kv_audit_export;

/* Appends one line to *text (malloc'd, grown as needed). */
KV_RESULT kv_audit_export_add_record(char **text, size_t *len, size_t *cap,
                                     const kv_audit_record *r);
KV_RESULT kv_audit_export_add_checkpoint(char **text, size_t *len, size_t *cap,
                                         const kv_audit_checkpoint *c);
KV_RESULT kv_audit_export_add_line(char **text, size_t *len, size_t *cap, const char *line);
/* Parses an export file: INVALID_ARGUMENT naming the line for anything
 * malformed (unknown item, bad hex/base64, oversized, missing or wrong end
 * line, trailing data). */
KV_RESULT kv_audit_export_parse(const uint8_t *data, size_t len, kv_audit_export *out);
void kv_audit_export_free(kv_audit_export *e);

/* The result-record journal (vaultd's <store>/audit.journal): result
 * records land here first, one pwrite each before the call's reply, and are
 * folded into the chain (store) in batches.  A file of fixed size:
 *   header (64 bytes): "HVAJ" | format 1 | 0 0 0 | generation u64 BE | zeros
 *   frame: "HVAR" | event length u32 BE | generation u64 BE | number u64 BE |
 *          SHA-256("hsmvault-audit-journal-v1" NUL || the 24 bytes before
 *          it || event) | event
 * Frames follow the header back to back, numbered from 1; the first one
 * that is not whole, not of this generation, out of number or damaged ends
 * the journal (a torn tail, or the old generation's frames after a reset). */
#define KV_AJ_HEADER 64
#define KV_AJ_FRAME_HEADER 56
#define KV_AJ_FRAME_MAX (KV_AJ_FRAME_HEADER + KV_AUDIT_EVENT_MAX)

void kv_aj_header(uint64_t generation, uint8_t out[KV_AJ_HEADER]);
/* DATA_LOSS if p does not start with a journal header. */
KV_RESULT kv_aj_header_parse(const uint8_t *p, size_t len, uint64_t *generation);
/* Frames event (1 to KV_AUDIT_EVENT_MAX bytes) as frame number of
 * generation into out (KV_AJ_FRAME_HEADER + n bytes); returns that size, or
 * 0 for an event of a bad size. */
size_t kv_aj_frame(uint64_t generation, uint64_t number, const uint8_t *event, size_t n,
                   uint8_t *out);
/* Each whole frame of the journal in buf (the file, header included), in
 * order: fn(arg, number, event, length); fn's failure stops the walk and is
 * returned.  *end is the offset after the last whole frame, *frames their
 * count.  DATA_LOSS if buf has no journal header. */
typedef kv_result (*kv_aj_fn)(void *arg, uint64_t number, const uint8_t *event, size_t n);
KV_RESULT kv_aj_scan(const uint8_t *buf, size_t len, uint64_t *generation, kv_aj_fn fn, void *arg,
                     size_t *end, uint64_t *frames);

/* PEM "PUBLIC KEY" -> SPKI DER (malloc'd) and back. */
KV_RESULT kv_audit_spki_from_pem(const char *pem, size_t len, uint8_t **der, size_t *der_len);
KV_RESULT kv_audit_spki_to_pem(const uint8_t *der, size_t der_len, char **pem);

#endif
