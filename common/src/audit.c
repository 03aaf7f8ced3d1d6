/*
 * audit.c: the audit log's hash chain, checkpoint encoding, verifier and
 * export file (kv_audit.h).  The verifier and the parser take untrusted
 * bytes: every length is checked before use and nothing from an event is
 * copied into a message.
 */
#include "kv_audit.h"
#include "kv_cursor.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kv_base64.h"
#include "kv_cursor.h"

static const char kv_audit_record_tag[] = "hsmvault-audit-record-v1";
static const char kv_audit_checkpoint_tag[] = "hsmvault-audit-checkpoint-v1";

static void kv_audit_be64(uint64_t v, uint8_t out[8])
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

void kv_audit_record_hash(const uint8_t prev[KV_AUDIT_HASH_BYTES], uint64_t seq,
                          const uint8_t *event, size_t event_len, uint8_t out[KV_AUDIT_HASH_BYTES])
{
    uint8_t s[8];
    kv_audit_be64(seq, s);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned n = 0;
    if (c == NULL || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(c, kv_audit_record_tag, sizeof(kv_audit_record_tag)) != 1 ||
        EVP_DigestUpdate(c, prev, KV_AUDIT_HASH_BYTES) != 1 || EVP_DigestUpdate(c, s, 8) != 1 ||
        (event_len > 0 && EVP_DigestUpdate(c, event, event_len) != 1) ||
        EVP_DigestFinal_ex(c, out, &n) != 1 || n != KV_AUDIT_HASH_BYTES)
        memset(out, 0xff, KV_AUDIT_HASH_BYTES); /* never matches a real hash */
    EVP_MD_CTX_free(c);
}

/* ---- the result-record journal ---- */

static const char kv_aj_tag[] = "hsmvault-audit-journal-v1";

void kv_aj_header(uint64_t generation, uint8_t out[KV_AJ_HEADER])
{
    memset(out, 0, KV_AJ_HEADER);
    memcpy(out, "HVAJ", 4);
    out[4] = 1;
    kv_audit_be64(generation, out + 8);
}

kv_result kv_aj_header_parse(const uint8_t *p, size_t len, uint64_t *generation)
{
    KV_ENSURE(p != NULL && len >= KV_AJ_HEADER && memcmp(p, "HVAJ", 4) == 0, KV_ERR_DATA_LOSS,
              "not an audit journal (no header)");
    KV_ENSURE(p[4] == 1 && p[5] == 0 && p[6] == 0 && p[7] == 0, KV_ERR_DATA_LOSS,
              "audit journal of an unknown format %u", (unsigned)p[4]);
    kv_cursor c;
    kv_cursor_init(&c, p + 8, 8);
    return kv_cursor_read_u64be(&c, generation); /* 8 bytes are there */
}

/* The checksum of a frame: its first 24 bytes and its event. */
static bool kv_aj_sum(const uint8_t head[24], const uint8_t *event, size_t n, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned got = 0;
    bool ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(c, kv_aj_tag, sizeof(kv_aj_tag)) == 1 &&
              EVP_DigestUpdate(c, head, 24) == 1 && EVP_DigestUpdate(c, event, n) == 1 &&
              EVP_DigestFinal_ex(c, out, &got) == 1 && got == 32;
    EVP_MD_CTX_free(c);
    return ok;
}

size_t kv_aj_frame(uint64_t generation, uint64_t number, const uint8_t *event, size_t n,
                   uint8_t *out)
{
    if (event == NULL || n == 0 || n > KV_AUDIT_EVENT_MAX) return 0;
    kv_writer w;
    kv_writer_init(&w, out, 24);
    if (kv_failed(kv_writer_write(&w, "HVAR", 4)) ||
        kv_failed(kv_writer_write_u32be(&w, (uint32_t)n)) ||
        kv_failed(kv_writer_write_u64be(&w, generation)) ||
        kv_failed(kv_writer_write_u64be(&w, number)) || !kv_aj_sum(out, event, n, out + 24))
        return 0;
    memcpy(out + KV_AJ_FRAME_HEADER, event, n);
    return KV_AJ_FRAME_HEADER + n;
}

kv_result kv_aj_scan(const uint8_t *buf, size_t len, uint64_t *generation, kv_aj_fn fn, void *arg,
                     size_t *end, uint64_t *frames)
{
    KV_GUARD(kv_aj_header_parse(buf, len, generation));
    kv_cursor c;
    kv_cursor_init(&c, buf, len);
    KV_GUARD(kv_cursor_skip(&c, KV_AJ_HEADER)); /* parsed above: it is there */
    uint64_t count = 0;
    /* What does not hold ends the journal, silently (a torn or old tail). */
    while (kv_cursor_remaining(&c) >= KV_AJ_FRAME_HEADER) {
        kv_cursor f = c;
        const uint8_t *head = NULL, *sum = NULL, *event = NULL;
        uint32_t n = 0;
        uint64_t gen = 0, number = 0;
        /* The frame header is all there: these reads cannot fail. */
        KV_GUARD(kv_cursor_take(&f, 4, &head));
        KV_GUARD(kv_cursor_read_u32be(&f, &n));
        KV_GUARD(kv_cursor_read_u64be(&f, &gen));
        KV_GUARD(kv_cursor_read_u64be(&f, &number));
        KV_GUARD(kv_cursor_take(&f, 32, &sum));
        if (memcmp(head, "HVAR", 4) != 0 || n == 0 || n > KV_AUDIT_EVENT_MAX ||
            kv_cursor_remaining(&f) < n || gen != *generation || number != count + 1)
            break;
        KV_GUARD(kv_cursor_take(&f, n, &event));
        uint8_t want[32];
        if (!kv_aj_sum(head, event, n, want) || CRYPTO_memcmp(want, sum, 32) != 0) break;
        if (fn != NULL) KV_GUARD(fn(arg, number, event, n));
        count++;
        c = f;
    }
    *end = c.off;
    *frames = count;
    return KV_SUCCESS;
}

void kv_audit_checkpoint_message(uint64_t seq, const uint8_t head[KV_AUDIT_HASH_BYTES],
                                 int64_t time, uint8_t out[KV_AUDIT_CHECKPOINT_MSG_BYTES])
{
    memcpy(out, kv_audit_checkpoint_tag, sizeof(kv_audit_checkpoint_tag));
    kv_audit_be64(seq, out + 29);
    memcpy(out + 37, head, KV_AUDIT_HASH_BYTES);
    kv_audit_be64((uint64_t)time, out + 37 + KV_AUDIT_HASH_BYTES);
}

const char *kv_audit_kind_name(kv_audit_kind k)
{
    static const char *const names[] = {"ok",       "changed",   "removed",       "reordered",
                                        "inserted", "truncated", "bad-checkpoint"};
    return (unsigned)k < KV_ARRAY_LEN(names) ? names[k] : "unknown";
}

static int kv_audit_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* How many records carry seq (sorted list). */
static size_t kv_audit_count(const uint64_t *sorted, size_t n, uint64_t seq)
{
    const uint64_t *p = bsearch(&seq, sorted, n, sizeof(*sorted), kv_audit_u64_cmp);
    if (p == NULL) return 0;
    const uint64_t *lo = p, *hi = p;
    while (lo > sorted && lo[-1] == seq)
        lo--;
    while (hi + 1 < sorted + n && hi[1] == seq)
        hi++;
    return (size_t)(hi - lo) + 1;
}

__attribute__((format(printf, 4, 5))) static void
kv_audit_find(kv_audit_report *rep, kv_audit_kind kind, uint64_t seq, const char *fmt, ...)
{
    if (rep->kind != KV_AUDIT_OK) return; /* the first finding stands */
    rep->kind = kind;
    rep->seq = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->detail, sizeof(rep->detail), fmt, ap);
    va_end(ap);
}

static kv_result kv_audit_sig_ok(EVP_PKEY *pk, const kv_audit_checkpoint *c, bool *ok)
{
    uint8_t msg[KV_AUDIT_CHECKPOINT_MSG_BYTES];
    kv_audit_checkpoint_message(c->seq, c->head, c->time, msg);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    KV_ENSURE(m != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    *ok = EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, pk) == 1 &&
          EVP_DigestVerify(m, c->sig, c->sig_len, msg, sizeof(msg)) == 1;
    EVP_MD_CTX_free(m);
    return KV_SUCCESS;
}

/* The chain walk: sequence, links, hashes and (online) MACs. */
static kv_result kv_audit_walk(const kv_audit_record *recs, size_t n, const uint64_t *sorted,
                               const kv_audit_verify_opts *o, kv_audit_report *rep, size_t *good)
{
    static const uint8_t zero[KV_AUDIT_HASH_BYTES];
    uint64_t expected = o->from_genesis ? 1 : recs[0].seq;
    const uint8_t *prev = o->from_genesis ? zero : recs[0].prev;
    *good = 0;
    for (size_t i = 0; i < n; i++) {
        const kv_audit_record *e = &recs[i];
        uint8_t h[KV_AUDIT_HASH_BYTES];
        if (e->seq != expected) {
            if (e->seq > expected && kv_audit_count(sorted, n, expected) > 0)
                kv_audit_find(rep, KV_AUDIT_REORDERED, expected,
                              "record %" PRIu64 " is stored after record %" PRIu64, expected,
                              e->seq);
            else if (e->seq > expected)
                kv_audit_find(rep, KV_AUDIT_REMOVED, expected,
                              "records %" PRIu64 " to %" PRIu64 " are missing", expected,
                              e->seq - 1);
            else if (kv_audit_count(sorted, n, e->seq) > 1)
                kv_audit_find(rep, KV_AUDIT_INSERTED, e->seq,
                              "a second record %" PRIu64 " follows record %" PRIu64, e->seq,
                              expected - 1);
            else
                kv_audit_find(rep, KV_AUDIT_REORDERED, e->seq,
                              "record %" PRIu64 " is stored after record %" PRIu64, e->seq,
                              expected - 1);
            return KV_SUCCESS;
        }
        kv_audit_record_hash(e->prev, e->seq, e->event, e->event_len, h);
        if (CRYPTO_memcmp(h, e->hash, sizeof(h)) != 0) {
            kv_audit_find(rep, KV_AUDIT_CHANGED, e->seq,
                          "record %" PRIu64 " does not match its hash", e->seq);
            return KV_SUCCESS;
        }
        if (CRYPTO_memcmp(e->prev, prev, KV_AUDIT_HASH_BYTES) != 0) {
            /* It hashes right but names another predecessor: the record
             * before it was replaced, or this one was put in. */
            kv_audit_find(rep, i == 0 ? KV_AUDIT_CHANGED : KV_AUDIT_INSERTED, e->seq,
                          "record %" PRIu64 " does not link to the record before it", e->seq);
            return KV_SUCCESS;
        }
        if (o->hmac != NULL) {
            bool ok = false;
            KV_GUARD(o->hmac(o->hmac_arg, e, &ok));
            if (!ok) {
                kv_audit_find(rep, KV_AUDIT_CHANGED, e->seq,
                              "record %" PRIu64
                              " does not carry the vault's HMAC (changed or forged without the "
                              "token's audit key)",
                              e->seq);
                return KV_SUCCESS;
            }
        }
        prev = e->hash;
        expected++;
        *good = i + 1;
    }
    return KV_SUCCESS;
}

kv_result kv_audit_verify(const kv_audit_record *recs, size_t n, const kv_audit_checkpoint *cps,
                          size_t n_cps, const kv_audit_verify_opts *o, kv_audit_report *rep)
{
    KV_ENSURE(o != NULL && rep != NULL && (recs != NULL || n == 0) && (cps != NULL || n_cps == 0),
              KV_ERR_INVALID_ARGUMENT, "kv_audit_verify: missing argument");
    memset(rep, 0, sizeof(*rep));
    snprintf(rep->detail, sizeof(rep->detail), "ok");
    const unsigned char *p = o->spki;
    EVP_PKEY *pk = o->spki != NULL ? d2i_PUBKEY(NULL, &p, (long)o->spki_len) : NULL;
    KV_ENSURE(pk != NULL, KV_ERR_INVALID_ARGUMENT,
              "the checkpoint public key is not a DER SubjectPublicKeyInfo");
    kv_result r = KV_SUCCESS;
    uint64_t *sorted = malloc((n ? n : 1) * sizeof(*sorted));
    KV_ENSURE_GOTO(sorted != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++)
        sorted[i] = recs[i].seq;
    qsort(sorted, n, sizeof(*sorted), kv_audit_u64_cmp);
    size_t good = 0;
    if (n > 0) KV_GUARD_GOTO(kv_audit_walk(recs, n, sorted, o, rep, &good), r, out);
    rep->records = n;
    rep->checkpoints = n_cps;
    rep->first_seq = n ? recs[0].seq : 0;
    rep->last_seq = n ? recs[n - 1].seq : 0;
    uint64_t last_cp = 0;
    for (size_t i = 0; i < n_cps && rep->kind == KV_AUDIT_OK; i++) {
        const kv_audit_checkpoint *c = &cps[i];
        bool ok = false;
        KV_GUARD_GOTO(kv_audit_sig_ok(pk, c, &ok), r, out);
        if (!ok || c->seq < last_cp) {
            kv_audit_find(rep, KV_AUDIT_BAD_CHECKPOINT, c->seq, "checkpoint %" PRIu64 " %s", c->seq,
                          ok ? "is out of order" : "does not carry a valid signature");
            break;
        }
        last_cp = c->seq;
        if (n == 0 || c->seq < recs[0].seq) continue; /* before this export's range */
        if (c->seq > recs[0].seq + good - 1) {
            /* The walk stopped before it (a finding already stands) or the
             * log ends before it. */
            kv_audit_find(rep, KV_AUDIT_TRUNCATED, recs[0].seq + good,
                          "the log ends at record %" PRIu64 " but checkpoint %" PRIu64
                          " covers records up to %" PRIu64,
                          rep->last_seq, c->seq, c->seq);
            break;
        }
        const kv_audit_record *e = &recs[c->seq - recs[0].seq];
        if (CRYPTO_memcmp(e->hash, c->head, KV_AUDIT_HASH_BYTES) != 0) {
            uint64_t from =
                i > 0 && cps[i - 1].seq >= recs[0].seq ? cps[i - 1].seq + 1 : recs[0].seq;
            kv_audit_find(rep, KV_AUDIT_CHANGED, from,
                          "records %" PRIu64 " to %" PRIu64
                          " were rewritten: the chain does not reach checkpoint %" PRIu64
                          "'s signed head",
                          from, c->seq, c->seq);
        }
    }
    /* The token's anchor names the latest checkpoint the vault wrote: the
     * record it covers must still be here with the same hash (deleting the
     * tail and the last checkpoint, or rewriting the log after it, shows). */
    if (rep->kind == KV_AUDIT_OK && o->anchor_seq > 0) {
        uint64_t first = n ? recs[0].seq : 0;
        if (n == 0 || o->anchor_seq > recs[0].seq + good - 1 || o->anchor_seq > last_cp)
            kv_audit_find(rep, KV_AUDIT_TRUNCATED,
                          o->anchor_seq > rep->last_seq ? rep->last_seq + 1 : last_cp + 1,
                          "the token's anchor names checkpoint %" PRIu64
                          " but the log's last checkpoint is %" PRIu64
                          " and its last record %" PRIu64 ": records and checkpoints were removed",
                          o->anchor_seq, last_cp, rep->last_seq);
        else if (o->anchor_seq >= first && CRYPTO_memcmp(recs[o->anchor_seq - first].hash,
                                                         o->anchor_head, KV_AUDIT_HASH_BYTES) != 0)
            kv_audit_find(rep, KV_AUDIT_CHANGED, o->anchor_seq,
                          "record %" PRIu64 " is not the one the token's anchor sealed: the log "
                          "was truncated and written again",
                          o->anchor_seq);
    }
    rep->unsealed = rep->last_seq > last_cp ? rep->last_seq - last_cp : 0;
out:
    free(sorted);
    EVP_PKEY_free(pk);
    return r;
}

/* ---- export file ---- */

kv_result kv_audit_export_add_line(char **text, size_t *len, size_t *cap, const char *line)
{
    size_t n = strlen(line);
    if (*len + n + 2 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (*len + n + 2 > c)
            c *= 2;
        KV_ENSURE(c <= KV_AUDIT_EXPORT_MAX, KV_ERR_RESOURCE_EXHAUSTED,
                  "the export exceeds %u MiB; export a smaller range", KV_AUDIT_EXPORT_MAX >> 20);
        char *p = realloc(*text, c);
        KV_ENSURE(p != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        *text = p;
        *cap = c;
    }
    memcpy(*text + *len, line, n);
    (*text)[*len + n] = '\n';
    *len += n + 1;
    (*text)[*len] = '\0';
    return KV_SUCCESS;
}

kv_result kv_audit_export_add_record(char **text, size_t *len, size_t *cap,
                                     const kv_audit_record *r)
{
    KV_ENSURE(r->event_len > 0 && r->event_len <= KV_AUDIT_EVENT_MAX, KV_ERR_INVALID_ARGUMENT,
              "record %" PRIu64 " has an event of %zu bytes", r->seq, r->event_len);
    char prev[65], hash[65], mac[65];
    kv_hex_encode(r->prev, 32, prev);
    kv_hex_encode(r->hash, 32, hash);
    kv_hex_encode(r->hmac, 32, mac);
    size_t b64 = kv_base64_encoded_len(r->event_len, KV_B64_STD);
    char *line = malloc(b64 + 256);
    KV_ENSURE(line != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    int w = snprintf(line, 256, "record %" PRIu64 " %s %s %s ", r->seq, prev, hash, mac);
    kv_result res = kv_base64_encode(r->event, r->event_len, KV_B64_STD, line + w, b64);
    if (kv_ok(res)) res = kv_audit_export_add_line(text, len, cap, line);
    free(line);
    return res;
}

kv_result kv_audit_export_add_checkpoint(char **text, size_t *len, size_t *cap,
                                         const kv_audit_checkpoint *c)
{
    KV_ENSURE(c->sig_len > 0 && c->sig_len <= KV_AUDIT_SIG_MAX, KV_ERR_INVALID_ARGUMENT,
              "checkpoint %" PRIu64 " has a signature of %zu bytes", c->seq, c->sig_len);
    char head[65], line[256 + 2 * KV_AUDIT_SIG_MAX];
    kv_hex_encode(c->head, 32, head);
    int w = snprintf(line, 256, "checkpoint %" PRIu64 " %s %" PRId64 " ", c->seq, head, c->time);
    KV_GUARD(kv_base64_encode(c->sig, c->sig_len, KV_B64_STD, line + w, sizeof(line) - (size_t)w));
    return kv_audit_export_add_line(text, len, cap, line);
}

/* A field of a line: up to the next space (or the end of the line). */
static kv_result kv_audit_field(kv_cursor *c, const char **f, size_t *n, bool last, size_t lineno)
{
    size_t start = c->off, end = start;
    while (end < c->len && c->data[end] != ' ')
        end++;
    KV_ENSURE(end > start, KV_ERR_INVALID_ARGUMENT, "export line %zu: a field is missing or empty",
              lineno);
    KV_ENSURE(last == (end == c->len), KV_ERR_INVALID_ARGUMENT, "export line %zu: %s", lineno,
              last ? "unexpected trailing field" : "too few fields");
    *f = (const char *)c->data + start;
    *n = end - start;
    c->off = end < c->len ? end + 1 : end;
    return KV_SUCCESS;
}

static kv_result kv_audit_u64_field(kv_cursor *c, bool last, size_t lineno, uint64_t *out,
                                    bool allow_sign)
{
    const char *f;
    size_t n;
    KV_GUARD(kv_audit_field(c, &f, &n, last, lineno));
    size_t i = 0;
    bool neg = false;
    if (allow_sign && n > 1 && f[0] == '-') neg = true, i = 1;
    KV_ENSURE(n - i <= 19, KV_ERR_INVALID_ARGUMENT, "export line %zu: number out of range", lineno);
    uint64_t v = 0;
    for (; i < n; i++) {
        KV_ENSURE(f[i] >= '0' && f[i] <= '9', KV_ERR_INVALID_ARGUMENT,
                  "export line %zu: not a decimal number", lineno);
        v = v * 10 + (uint64_t)(f[i] - '0');
    }
    KV_ENSURE(v <= (uint64_t)INT64_MAX, KV_ERR_INVALID_ARGUMENT,
              "export line %zu: number out of range", lineno);
    *out = neg ? (uint64_t)(-(int64_t)v) : v;
    return KV_SUCCESS;
}

static int kv_audit_hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

static kv_result kv_audit_hash_field(kv_cursor *c, size_t lineno, uint8_t out[32])
{
    const char *f;
    size_t n;
    KV_GUARD(kv_audit_field(c, &f, &n, false, lineno));
    KV_ENSURE(n == 64, KV_ERR_INVALID_ARGUMENT,
              "export line %zu: a hash must be 64 lower-case hex digits", lineno);
    for (size_t i = 0; i < 32; i++) {
        int hi = kv_audit_hexval(f[2 * i]), lo = kv_audit_hexval(f[2 * i + 1]);
        KV_ENSURE(hi >= 0 && lo >= 0, KV_ERR_INVALID_ARGUMENT,
                  "export line %zu: a hash must be 64 lower-case hex digits", lineno);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return KV_SUCCESS;
}

static kv_result kv_audit_b64_field(kv_cursor *c, size_t lineno, size_t max, uint8_t **pool,
                                    size_t *used, const uint8_t **out, size_t *out_len)
{
    const char *f;
    size_t n;
    KV_GUARD(kv_audit_field(c, &f, &n, true, lineno));
    KV_ENSURE(n <= kv_base64_encoded_len(max, KV_B64_STD), KV_ERR_INVALID_ARGUMENT,
              "export line %zu: a value is larger than %zu bytes", lineno, max);
    size_t got = 0;
    if (kv_failed(
            kv_base64_decode(f, n, KV_B64_STD, *pool + *used, kv_base64_decoded_max(n), &got)) ||
        got == 0 || got > max)
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "export line %zu: bad base64 value", lineno);
    *out = *pool + *used;
    *out_len = got;
    *used += got;
    return KV_SUCCESS;
}

static kv_result kv_audit_grow(void **p, size_t *cap, size_t n, size_t item)
{
    if (n < *cap) return KV_SUCCESS;
    size_t c = *cap ? *cap * 2 : 64;
    void *q = realloc(*p, c * item);
    KV_ENSURE(q != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    *p = q;
    *cap = c;
    return KV_SUCCESS;
}

kv_result kv_audit_export_parse(const uint8_t *data, size_t len, kv_audit_export *out)
{
    memset(out, 0, sizeof(*out));
    KV_ENSURE(data != NULL || len == 0, KV_ERR_INVALID_ARGUMENT, "no export data");
    KV_ENSURE(len <= KV_AUDIT_EXPORT_MAX, KV_ERR_INVALID_ARGUMENT,
              "the export file is larger than %u MiB", KV_AUDIT_EXPORT_MAX >> 20);
    kv_result r = KV_SUCCESS;
    size_t rec_cap = 0, cp_cap = 0, used = 0, lineno = 0;
    bool ended = false;
    /* Decoded bytes are never longer than their base64: one pool of len. */
    out->buf = malloc(len ? len : 1);
    KV_ENSURE_GOTO(out->buf != NULL, r, fail, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    size_t off = 0;
    while (off < len) {
        lineno++;
        const uint8_t *nl = memchr(data + off, '\n', len - off);
        KV_ENSURE_GOTO(nl != NULL, r, fail, KV_ERR_INVALID_ARGUMENT,
                       "export line %zu: not terminated by a newline", lineno);
        kv_cursor c;
        kv_cursor_init(&c, data + off, (size_t)(nl - (data + off)));
        off = (size_t)(nl - data) + 1;
        KV_ENSURE_GOTO(!ended, r, fail, KV_ERR_INVALID_ARGUMENT,
                       "export line %zu: data after the end line", lineno);
        if (lineno == 1) {
            KV_ENSURE_GOTO(c.len == strlen(KV_AUDIT_EXPORT_MAGIC) &&
                               memcmp(c.data, KV_AUDIT_EXPORT_MAGIC, c.len) == 0,
                           r, fail, KV_ERR_INVALID_ARGUMENT,
                           "not an hsmvault audit export (line 1 must be '%s')",
                           KV_AUDIT_EXPORT_MAGIC);
            continue;
        }
        const char *kw;
        size_t kn;
        KV_GUARD_GOTO(kv_audit_field(&c, &kw, &kn, false, lineno), r, fail);
        if (kn == 6 && memcmp(kw, "record", 6) == 0) {
            KV_GUARD_GOTO(
                kv_audit_grow((void **)&out->recs, &rec_cap, out->n_recs, sizeof(*out->recs)), r,
                fail);
            kv_audit_record *e = &out->recs[out->n_recs];
            memset(e, 0, sizeof(*e));
            KV_GUARD_GOTO(kv_audit_u64_field(&c, false, lineno, &e->seq, false), r, fail);
            KV_GUARD_GOTO(kv_audit_hash_field(&c, lineno, e->prev), r, fail);
            KV_GUARD_GOTO(kv_audit_hash_field(&c, lineno, e->hash), r, fail);
            KV_GUARD_GOTO(kv_audit_hash_field(&c, lineno, e->hmac), r, fail);
            KV_GUARD_GOTO(kv_audit_b64_field(&c, lineno, KV_AUDIT_EVENT_MAX, &out->buf, &used,
                                             &e->event, &e->event_len),
                          r, fail);
            out->n_recs++;
        } else if (kn == 10 && memcmp(kw, "checkpoint", 10) == 0) {
            KV_GUARD_GOTO(kv_audit_grow((void **)&out->cps, &cp_cap, out->n_cps, sizeof(*out->cps)),
                          r, fail);
            kv_audit_checkpoint *cp = &out->cps[out->n_cps];
            memset(cp, 0, sizeof(*cp));
            uint64_t t;
            KV_GUARD_GOTO(kv_audit_u64_field(&c, false, lineno, &cp->seq, false), r, fail);
            KV_GUARD_GOTO(kv_audit_hash_field(&c, lineno, cp->head), r, fail);
            KV_GUARD_GOTO(kv_audit_u64_field(&c, false, lineno, &t, true), r, fail);
            cp->time = (int64_t)t;
            KV_GUARD_GOTO(kv_audit_b64_field(&c, lineno, KV_AUDIT_SIG_MAX, &out->buf, &used,
                                             &cp->sig, &cp->sig_len),
                          r, fail);
            out->n_cps++;
        } else if (kn == 3 && memcmp(kw, "end", 3) == 0) {
            uint64_t nr, nc;
            KV_GUARD_GOTO(kv_audit_u64_field(&c, false, lineno, &nr, false), r, fail);
            KV_GUARD_GOTO(kv_audit_u64_field(&c, true, lineno, &nc, false), r, fail);
            KV_ENSURE_GOTO(nr == out->n_recs && nc == out->n_cps, r, fail, KV_ERR_INVALID_ARGUMENT,
                           "export line %zu: the end line counts %" PRIu64 " records and %" PRIu64
                           " checkpoints but the file has %zu and %zu",
                           lineno, nr, nc, out->n_recs, out->n_cps);
            ended = true;
        } else {
            KV_BAIL_GOTO(r, fail, KV_ERR_INVALID_ARGUMENT,
                         "export line %zu: unknown item (expected record, checkpoint or end)",
                         lineno);
        }
    }
    KV_ENSURE_GOTO(lineno > 0, r, fail, KV_ERR_INVALID_ARGUMENT, "the export file is empty");
    KV_ENSURE_GOTO(ended, r, fail, KV_ERR_INVALID_ARGUMENT,
                   "the export file has no end line (truncated?)");
    return KV_SUCCESS;
fail:
    kv_audit_export_free(out);
    return r;
}

void kv_audit_export_free(kv_audit_export *e)
{
    free(e->buf);
    free(e->recs);
    free(e->cps);
    memset(e, 0, sizeof(*e));
}

kv_result kv_audit_spki_from_pem(const char *pem, size_t len, uint8_t **der, size_t *der_len)
{
    KV_ENSURE(len > 0 && len < 65536, KV_ERR_INVALID_ARGUMENT,
              "the public key file is empty or too large");
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    KV_ENSURE(b != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    KV_ENSURE(pk != NULL, KV_ERR_INVALID_ARGUMENT,
              "the public key file is not a PEM 'PUBLIC KEY' (get it with vaultctl audit key)");
    int n = i2d_PUBKEY(pk, NULL);
    uint8_t *buf = n > 0 ? malloc((size_t)n) : NULL;
    unsigned char *p = buf;
    if (buf == NULL || i2d_PUBKEY(pk, &p) != n) {
        free(buf);
        EVP_PKEY_free(pk);
        KV_BAIL(KV_ERR_INTERNAL, "cannot encode the public key");
    }
    EVP_PKEY_free(pk);
    *der = buf;
    *der_len = (size_t)n;
    return KV_SUCCESS;
}

kv_result kv_audit_spki_to_pem(const uint8_t *der, size_t der_len, char **pem)
{
    const unsigned char *p = der;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)der_len);
    KV_ENSURE(pk != NULL, KV_ERR_INVALID_ARGUMENT, "not a DER SubjectPublicKeyInfo");
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n = 0;
    if (b != NULL && PEM_write_bio_PUBKEY(b, pk) == 1) n = BIO_get_mem_data(b, &data);
    char *out = n > 0 ? malloc((size_t)n + 1) : NULL;
    if (out != NULL) {
        memcpy(out, data, (size_t)n);
        out[n] = '\0';
    }
    BIO_free(b);
    EVP_PKEY_free(pk);
    KV_ENSURE(out != NULL, KV_ERR_RESOURCE_EXHAUSTED, "cannot encode the public key as PEM");
    *pem = out;
    return KV_SUCCESS;
}
