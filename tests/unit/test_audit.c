/*
 * test_audit.c: the audit log's chain, verifier and export file (kv_audit.h)
 * with checkpoints signed by a software RSA key, each kind of tampering
 * detected and named at the right record, the export parser's negative cases;
 * and the token side (hsm audit_keys.c) against a real SoftHSM token: HMAC
 * key, sign-only checkpoint key whose signatures OpenSSL verifies, the
 * anchor data object.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "hsm.h"
#include "kv_audit.h"
#include "kv_softhsm.h"
#include "kv_test.h"

#define N 12

static EVP_PKEY *sign_key;
static uint8_t *spki;
static size_t spki_len;

typedef struct {
    kv_audit_record recs[N + 2];
    size_t n;
    uint8_t events[N + 2][32];
    kv_audit_checkpoint cps[4];
    uint8_t sigs[4][512];
    size_t n_cps;
} chain;

static void sign_checkpoint(chain *c, size_t rec_index)
{
    kv_audit_checkpoint *cp = &c->cps[c->n_cps];
    cp->seq = c->recs[rec_index].seq;
    memcpy(cp->head, c->recs[rec_index].hash, 32);
    cp->time = 1700000000 + (int64_t)rec_index;
    uint8_t msg[KV_AUDIT_CHECKPOINT_MSG_BYTES];
    kv_audit_checkpoint_message(cp->seq, cp->head, cp->time, msg);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    size_t len = sizeof(c->sigs[0]);
    CHECK(EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, sign_key) == 1 &&
          EVP_DigestSign(m, c->sigs[c->n_cps], &len, msg, sizeof(msg)) == 1);
    EVP_MD_CTX_free(m);
    cp->sig = c->sigs[c->n_cps];
    cp->sig_len = len;
    c->n_cps++;
}

/* N records, checkpoints after records 4 and 8 (seq 5, 9) and at the end. */
static void chain_make(chain *c)
{
    memset(c, 0, sizeof(*c));
    uint8_t prev[32] = {0};
    for (size_t i = 0; i < N; i++) {
        kv_audit_record *r = &c->recs[i];
        r->seq = i + 1;
        snprintf((char *)c->events[i], sizeof(c->events[i]), "event number %zu", i + 1);
        r->event = c->events[i];
        r->event_len = strlen((char *)c->events[i]);
        memcpy(r->prev, prev, 32);
        kv_audit_record_hash(prev, r->seq, r->event, r->event_len, r->hash);
        memcpy(prev, r->hash, 32);
    }
    c->n = N;
    sign_checkpoint(c, 4);
    sign_checkpoint(c, 8);
    sign_checkpoint(c, N - 1);
}

static kv_audit_report verify(const chain *c, uint64_t anchor)
{
    kv_audit_report rep;
    kv_audit_verify_opts o = {
        .spki = spki, .spki_len = spki_len, .from_genesis = true, .anchor_seq = anchor};
    if (anchor > 0) { /* the anchor names the original chain's record */
        chain orig;
        chain_make(&orig);
        memcpy(o.anchor_head, orig.recs[anchor - 1].hash, 32);
    }
    CHECK_OK(kv_audit_verify(c->recs, c->n, c->cps, c->n_cps, &o, &rep));
    return rep;
}

#define EXPECT(c, anchor, want_kind, want_seq)                                                     \
    do {                                                                                           \
        kv_audit_report rep_ = verify((c), (anchor));                                              \
        CHECK(rep_.kind == (want_kind));                                                           \
        CHECK(rep_.seq == (want_seq));                                                             \
        if (rep_.kind != (want_kind) || rep_.seq != (want_seq))                                    \
            fprintf(stderr, "   got %s at %llu: %s\n", kv_audit_kind_name(rep_.kind),              \
                    (unsigned long long)rep_.seq, rep_.detail);                                    \
    } while (0)

static void test_intact(void)
{
    chain c;
    chain_make(&c);
    EXPECT(&c, 0, KV_AUDIT_OK, 0);
    EXPECT(&c, N, KV_AUDIT_OK, 0);
    kv_audit_report rep = verify(&c, 0);
    CHECK(rep.records == N && rep.checkpoints == 3 && rep.unsealed == 0);
    /* Records after the last checkpoint are reported as unsealed. */
    c.n_cps = 2;
    rep = verify(&c, 0);
    CHECK(rep.kind == KV_AUDIT_OK && rep.unsealed == N - 9);
}

static void test_edit(void)
{
    chain c;
    chain_make(&c);
    c.events[6][0] ^= 1; /* record 7 */
    EXPECT(&c, 0, KV_AUDIT_CHANGED, 7);
    /* Edited and its hash recomputed: the next record no longer links. */
    chain_make(&c);
    c.events[6][0] ^= 1;
    kv_audit_record_hash(c.recs[6].prev, 7, c.recs[6].event, c.recs[6].event_len, c.recs[6].hash);
    EXPECT(&c, 0, KV_AUDIT_INSERTED, 8);
    /* The whole chain after it rewritten consistently: the checkpoint catches it. */
    for (size_t i = 7; i < N; i++) {
        memcpy(c.recs[i].prev, c.recs[i - 1].hash, 32);
        kv_audit_record_hash(c.recs[i].prev, c.recs[i].seq, c.recs[i].event, c.recs[i].event_len,
                             c.recs[i].hash);
    }
    EXPECT(&c, 0, KV_AUDIT_CHANGED, 6);
    /* A forged checkpoint signature. */
    chain_make(&c);
    c.sigs[1][10] ^= 1;
    EXPECT(&c, 0, KV_AUDIT_BAD_CHECKPOINT, 9);
}

static void test_delete(void)
{
    chain c;
    chain_make(&c);
    memmove(&c.recs[3], &c.recs[4], (N - 4) * sizeof(c.recs[0])); /* record 4 gone */
    c.n--;
    EXPECT(&c, 0, KV_AUDIT_REMOVED, 4);
    chain_make(&c);
    memmove(&c.recs[0], &c.recs[1], (N - 1) * sizeof(c.recs[0])); /* the first */
    c.n--;
    EXPECT(&c, 0, KV_AUDIT_REMOVED, 1);
}

static void test_swap(void)
{
    chain c;
    chain_make(&c);
    kv_audit_record t = c.recs[2];
    c.recs[2] = c.recs[3];
    c.recs[3] = t;
    EXPECT(&c, 0, KV_AUDIT_REORDERED, 3);
}

static void test_insert(void)
{
    chain c;
    chain_make(&c);
    /* A replayed copy of record 3 after record 5. */
    memmove(&c.recs[6], &c.recs[5], (N - 5) * sizeof(c.recs[0]));
    c.recs[5] = c.recs[2];
    c.n++;
    EXPECT(&c, 0, KV_AUDIT_INSERTED, 3);
    /* A forged record 6 that links to record 5 (the real 6.. follow). */
    chain_make(&c);
    memmove(&c.recs[6], &c.recs[5], (N - 5) * sizeof(c.recs[0]));
    kv_audit_record *f = &c.recs[5];
    static const uint8_t forged[] = "forged event";
    f->seq = 6;
    f->event = forged;
    f->event_len = sizeof(forged) - 1;
    memcpy(f->prev, c.recs[4].hash, 32);
    kv_audit_record_hash(f->prev, 6, f->event, f->event_len, f->hash);
    c.n++;
    EXPECT(&c, 0, KV_AUDIT_INSERTED, 6);
}

static void test_truncate(void)
{
    chain c;
    chain_make(&c);
    c.n = 10; /* records 11, 12 gone; the last checkpoint names 12 */
    EXPECT(&c, 0, KV_AUDIT_TRUNCATED, 11);
    /* The tail and the last checkpoint gone: only the anchor tells. */
    c.n = 9;
    c.n_cps = 2;
    EXPECT(&c, 0, KV_AUDIT_OK, 0);
    EXPECT(&c, N, KV_AUDIT_TRUNCATED, 10);
    /* Truncated and written again past the anchor: its record changed. */
    chain_make(&c);
    c.events[N - 1][0] ^= 1;
    kv_audit_record_hash(c.recs[N - 1].prev, N, c.recs[N - 1].event, c.recs[N - 1].event_len,
                         c.recs[N - 1].hash);
    c.n_cps = 2;
    sign_checkpoint(&c, N - 1);
    EXPECT(&c, 0, KV_AUDIT_OK, 0);
    EXPECT(&c, N, KV_AUDIT_CHANGED, N);
}

static kv_result hmac_reject_7(void *arg, const kv_audit_record *r, bool *ok)
{
    (void)arg;
    *ok = r->seq != 7;
    return KV_SUCCESS;
}

static void test_hmac(void)
{
    chain c;
    chain_make(&c);
    kv_audit_report rep;
    kv_audit_verify_opts o = {
        .spki = spki, .spki_len = spki_len, .from_genesis = true, .hmac = hmac_reject_7};
    CHECK_OK(kv_audit_verify(c.recs, c.n, c.cps, c.n_cps, &o, &rep));
    CHECK(rep.kind == KV_AUDIT_CHANGED && rep.seq == 7);
    o.spki_len = 10;
    CHECK_ERR(kv_audit_verify(c.recs, c.n, c.cps, c.n_cps, &o, &rep), KV_ERR_INVALID_ARGUMENT);
}

static char *export_of(const chain *c, size_t *len)
{
    char *text = NULL;
    size_t cap = 0;
    *len = 0;
    CHECK_OK(kv_audit_export_add_line(&text, len, &cap, KV_AUDIT_EXPORT_MAGIC));
    for (size_t i = 0; i < c->n; i++)
        CHECK_OK(kv_audit_export_add_record(&text, len, &cap, &c->recs[i]));
    for (size_t i = 0; i < c->n_cps; i++)
        CHECK_OK(kv_audit_export_add_checkpoint(&text, len, &cap, &c->cps[i]));
    char end[64];
    snprintf(end, sizeof(end), "end %zu %zu", c->n, c->n_cps);
    CHECK_OK(kv_audit_export_add_line(&text, len, &cap, end));
    return text;
}

static void test_export_roundtrip(void)
{
    chain c;
    chain_make(&c);
    size_t len;
    char *text = export_of(&c, &len);
    kv_audit_export ex;
    CHECK_OK(kv_audit_export_parse((const uint8_t *)text, len, &ex));
    CHECK(ex.n_recs == N && ex.n_cps == 3);
    kv_audit_report rep;
    kv_audit_verify_opts o = {.spki = spki, .spki_len = spki_len, .from_genesis = true};
    CHECK_OK(kv_audit_verify(ex.recs, ex.n_recs, ex.cps, ex.n_cps, &o, &rep));
    CHECK(rep.kind == KV_AUDIT_OK);
    CHECK(ex.recs[4].event_len == c.recs[4].event_len &&
          memcmp(ex.recs[4].event, c.recs[4].event, c.recs[4].event_len) == 0);
    kv_audit_export_free(&ex);
    /* A range export (records 5..12) verifies without genesis. */
    chain r;
    chain_make(&r);
    memmove(&r.recs[0], &r.recs[4], (N - 4) * sizeof(r.recs[0]));
    r.n = N - 4;
    o.from_genesis = false;
    CHECK_OK(kv_audit_verify(r.recs, r.n, r.cps, r.n_cps, &o, &rep));
    CHECK(rep.kind == KV_AUDIT_OK);
    free(text);
}

static void expect_parse_fails(const char *text, const char *what)
{
    kv_audit_export ex;
    kv_error_clear();
    kv_result r = kv_audit_export_parse((const uint8_t *)text, strlen(text), &ex);
    CHECK(kv_failed(r) && kv_error_code() == KV_ERR_INVALID_ARGUMENT);
    CHECK(ex.recs == NULL && ex.cps == NULL && ex.buf == NULL);
    if (kv_ok(r)) fprintf(stderr, "   parsed: %s\n", what);
}

static void test_export_negative(void)
{
    chain c;
    chain_make(&c);
    c.n = 2;
    c.n_cps = 0;
    size_t len;
    char *good = export_of(&c, &len);
    char buf[4096];
    expect_parse_fails("", "empty");
    expect_parse_fails("hsmvault-audit-export 2\nend 0 0\n", "wrong version");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\n", "no end line");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nend 0 0", "no final newline");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nend 1 0\n", "wrong count");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nend 0 0\nend 0 0\n", "after end");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nend 0 0 0\n", "trailing field");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nbogus 1\nend 0 0\n", "unknown item");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nend 99999999999999999999 0\n", "overflow");
    expect_parse_fails(KV_AUDIT_EXPORT_MAGIC "\nend -1 0\n", "negative");
    /* Truncated: every prefix of a good file that cuts a line fails. */
    for (size_t cut = 1; cut < len; cut += 7) {
        if (good[cut - 1] == '\n') continue;
        memcpy(buf, good, cut);
        buf[cut] = '\0';
        expect_parse_fails(buf, "truncated");
    }
    /* A record with a short hash, bad hex, bad base64, an empty event. */
    snprintf(buf, sizeof(buf), KV_AUDIT_EXPORT_MAGIC "\nrecord 1 00 00 00 AAAA\nend 1 0\n");
    expect_parse_fails(buf, "short hash");
    char z[65];
    memset(z, '0', 64);
    z[64] = '\0';
    char zx[65];
    memcpy(zx, z, 65);
    zx[3] = 'G';
    snprintf(buf, sizeof(buf), KV_AUDIT_EXPORT_MAGIC "\nrecord 1 %s %s %s AAAA\nend 1 0\n", zx, z,
             z);
    expect_parse_fails(buf, "bad hex");
    snprintf(buf, sizeof(buf), KV_AUDIT_EXPORT_MAGIC "\nrecord 1 %s %s %s A*AA\nend 1 0\n", z, z,
             z);
    expect_parse_fails(buf, "bad base64");
    snprintf(buf, sizeof(buf), KV_AUDIT_EXPORT_MAGIC "\nrecord 1 %s %s %s\nend 1 0\n", z, z, z);
    expect_parse_fails(buf, "missing event");
    snprintf(buf, sizeof(buf), KV_AUDIT_EXPORT_MAGIC "\ncheckpoint 1 %s x AAAA\nend 0 1\n", z);
    expect_parse_fails(buf, "bad time");
    /* An oversized event (8,196 bytes of base64 zeros). */
    size_t b64 = (KV_AUDIT_EVENT_MAX / 3 + 2) * 4;
    char *huge = malloc(b64 + 512);
    int w = snprintf(huge, 512, KV_AUDIT_EXPORT_MAGIC "\nrecord 1 %s %s %s ", z, z, z);
    memset(huge + w, 'A', b64);
    snprintf(huge + w + b64, 512, "\nend 1 0\n");
    expect_parse_fails(huge, "oversized event");
    free(huge);
    free(good);
}

/* ---- the token side ---- */

static void test_hsm_audit_keys(void)
{
    char dir[256];
    kv_test_tmpdir(dir, sizeof(dir), "audit");
    kv_softhsm t;
    CHECK_OK(kv_softhsm_setup(dir, "audit", &t));
    hsm_config cfg = {t.module_path, t.label, t.pin_file, 2};
    hsm *h = NULL;
    CHECK_OK(hsm_open(&cfg, &h));
    if (h == NULL) return;
    hsm_key_id mac_id, sig_id;
    CHECK_OK(hsm_hmac_generate(h, "hsmvault:audit/hmac-key", &mac_id));
    uint8_t m1[32], m2[32], m3[32];
    CHECK_OK(hsm_hmac_sha256(h, &mac_id, (const uint8_t *)"abc", 3, m1));
    CHECK_OK(hsm_hmac_sha256(h, &mac_id, (const uint8_t *)"abc", 3, m2));
    CHECK_OK(hsm_hmac_sha256(h, &mac_id, (const uint8_t *)"abd", 3, m3));
    CHECK(memcmp(m1, m2, 32) == 0 && memcmp(m1, m3, 32) != 0);
    uint8_t *pub = NULL, *pub2 = NULL, *sig = NULL;
    size_t pub_len = 0, pub2_len = 0, sig_len = 0;
    CHECK_OK(
        hsm_sign_key_generate(h, "hsmvault:audit/checkpoint-key", 2048, &sig_id, &pub, &pub_len));
    CHECK_OK(hsm_public_key_spki(h, &sig_id, &pub2, &pub2_len));
    CHECK(pub_len == pub2_len && memcmp(pub, pub2, pub_len) == 0);
    /* A checkpoint signed in the token verifies with kv_audit_verify. */
    chain c;
    chain_make(&c);
    uint8_t msg[KV_AUDIT_CHECKPOINT_MSG_BYTES];
    kv_audit_checkpoint_message(c.cps[2].seq, c.cps[2].head, c.cps[2].time, msg);
    CHECK_OK(hsm_rsa_sign_sha256(h, &sig_id, msg, sizeof(msg), &sig, &sig_len));
    c.cps[2].sig = sig;
    c.cps[2].sig_len = sig_len;
    c.n_cps = 3;
    kv_audit_report rep;
    kv_audit_verify_opts o = {.spki = pub, .spki_len = pub_len, .from_genesis = true};
    c.n_cps = 0;
    c.cps[0] = c.cps[2];
    c.n_cps = 1;
    CHECK_OK(kv_audit_verify(c.recs, c.n, c.cps, c.n_cps, &o, &rep));
    CHECK(rep.kind == KV_AUDIT_OK);
    /* The keys are sensitive, never extractable, and only sign. */
    hsm_object_info *objs = NULL;
    size_t n = 0;
    CHECK_OK(hsm_objects_list(h, &objs, &n));
    size_t seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(objs[i].id, mac_id.bytes, HSM_KEY_ID_LEN) == 0) {
            CHECK(objs[i].sensitive && !objs[i].extractable && objs[i].can_sign &&
                  !objs[i].can_decrypt && !objs[i].can_encrypt && !objs[i].can_unwrap);
            seen++;
        }
        if (memcmp(objs[i].id, sig_id.bytes, HSM_KEY_ID_LEN) == 0 &&
            strcmp(objs[i].object_class, "private-key") == 0) {
            CHECK(objs[i].sensitive && !objs[i].extractable && objs[i].can_sign &&
                  !objs[i].can_decrypt && !objs[i].can_unwrap);
            seen++;
        }
    }
    CHECK(seen == 2);
    free(objs);
    /* The RSA decrypt path refuses the sign-only key. */
    kv_secret out = KV_SECRET_INIT;
    uint8_t ct[256] = {1};
    CHECK(kv_failed(hsm_rsa_decrypt_oaep(h, &sig_id, HSM_OAEP_SHA1, ct, sizeof(ct), &out)));
    /* The anchor: absent, written, replaced. */
    uint8_t v[64];
    size_t vlen = 0;
    CHECK_ERR(hsm_data_get(h, "hsmvault:audit/anchor", v, sizeof(v), &vlen), KV_ERR_NOT_FOUND);
    CHECK_OK(hsm_data_put(h, "hsmvault:audit/anchor", (const uint8_t *)"\x00\x01", 2));
    CHECK_OK(hsm_data_put(h, "hsmvault:audit/anchor", (const uint8_t *)"\x00\x02", 2));
    CHECK_OK(hsm_data_get(h, "hsmvault:audit/anchor", v, sizeof(v), &vlen));
    CHECK(vlen == 2 && v[1] == 2);
    CHECK_ERR(hsm_data_put(h, "hsmvault:audit/anchor", v, 0), KV_ERR_INVALID_ARGUMENT);
    free(pub);
    free(pub2);
    free(sig);
    /* The writer's MAC session: the same MACs as the token object, no
     * object in the token listing, and a key deleted from the token stops
     * it at the next call. */
    hsm_mac_session *ms = NULL;
    objs = NULL;
    CHECK_OK(hsm_objects_list(h, &objs, &n));
    free(objs);
    CHECK_OK(hsm_mac_session_open(h, &mac_id, &ms));
    uint8_t items[3][3] = {{'a', 'b', 'c'}, {'a', 'b', 'd'}, {'a', 'b', 'c'}}, macs[3][32];
    CHECK_OK(hsm_mac_session_many(ms, &items[0][0], 3, 3, &macs[0][0]));
    CHECK(memcmp(macs[0], m1, 32) == 0 && memcmp(macs[1], m3, 32) == 0 &&
          memcmp(macs[2], m1, 32) == 0);
    objs = NULL;
    size_t n2 = 0;
    CHECK_OK(hsm_objects_list(h, &objs, &n2));
    CHECK(n2 == n); /* the session copy is not a token object */
    free(objs);
    CHECK_OK(hsm_key_destroy(h, &mac_id));
    CHECK(kv_failed(hsm_mac_session_many(ms, &items[0][0], 2, 3, &macs[0][0])));
    hsm_mac_session_close(ms);
    CHECK(kv_failed(hsm_mac_session_open(h, &mac_id, &ms)));
    hsm_close(h);
    kv_test_rmtree(dir);
}

/* ---- the result-record journal ---- */

typedef struct {
    uint64_t numbers[8];
    size_t lens[8], n;
} aj_seen;

static kv_result aj_collect(void *arg, uint64_t number, const uint8_t *ev, size_t n)
{
    aj_seen *s = arg;
    (void)ev;
    if (s->n < 8) {
        s->numbers[s->n] = number;
        s->lens[s->n] = n;
    }
    s->n++;
    return KV_SUCCESS;
}

/* A journal of 3 frames (events of 5, 300 and 1 bytes) after the header. */
static size_t aj_make(uint8_t *buf, uint64_t gen)
{
    uint8_t ev[300];
    memset(ev, 'e', sizeof(ev));
    kv_aj_header(gen, buf);
    size_t at = KV_AJ_HEADER;
    at += kv_aj_frame(gen, 1, ev, 5, buf + at);
    at += kv_aj_frame(gen, 2, ev, 300, buf + at);
    at += kv_aj_frame(gen, 3, ev, 1, buf + at);
    return at;
}

static size_t aj_count(const uint8_t *buf, size_t len, size_t *end)
{
    aj_seen s = {.n = 0};
    uint64_t gen = 0, frames = 0;
    CHECK_OK(kv_aj_scan(buf, len, &gen, aj_collect, &s, end, &frames));
    CHECK(frames == s.n);
    for (size_t i = 0; i < s.n && i < 8; i++)
        CHECK(s.numbers[i] == i + 1);
    return s.n;
}

static void test_journal(void)
{
    uint8_t buf[4096] = {0}, copy[4096];
    size_t len = aj_make(buf, 0x1122334455667788ull), end = 0;
    size_t f1 = KV_AJ_HEADER + KV_AJ_FRAME_HEADER + 5, f2 = f1 + KV_AJ_FRAME_HEADER + 300;
    CHECK(len == f2 + KV_AJ_FRAME_HEADER + 1);
    /* Whole, and followed by zeros (the preallocated rest of the file). */
    CHECK(aj_count(buf, sizeof(buf), &end) == 3 && end == len);
    uint64_t gen = 0, frames = 0;
    CHECK_OK(kv_aj_header_parse(buf, len, &gen));
    CHECK(gen == 0x1122334455667788ull);
    /* A torn tail: every cut inside the last frame keeps the first two. */
    for (size_t cut = f2; cut < len; cut++)
        CHECK(aj_count(buf, cut, &end) == 2 && end == f2);
    /* A flipped bit anywhere in frame 2 ends the journal after frame 1. */
    for (size_t at = f1; at < f2; at += 7) {
        memcpy(copy, buf, sizeof(buf));
        copy[at] ^= 0x10;
        CHECK(aj_count(copy, sizeof(copy), &end) == 1 && end == f1);
    }
    /* Frames of another generation (the old ones after a reset) do not count. */
    memcpy(copy, buf, sizeof(buf));
    kv_aj_header(0x99, copy);
    CHECK(aj_count(copy, sizeof(copy), &end) == 0 && end == KV_AJ_HEADER);
    /* Out of order: frame 2 where 1 should be. */
    uint8_t ev[4] = "abcd";
    kv_aj_header(7, copy);
    size_t at = KV_AJ_HEADER + kv_aj_frame(7, 2, ev, 4, copy + KV_AJ_HEADER);
    memset(copy + at, 0, sizeof(copy) - at);
    CHECK(aj_count(copy, sizeof(copy), &end) == 0);
    /* Bad sizes are refused when framing. */
    CHECK(kv_aj_frame(7, 1, ev, 0, copy) == 0);
    CHECK(kv_aj_frame(7, 1, NULL, 4, copy) == 0);
    static uint8_t big[KV_AUDIT_EVENT_MAX + 1], out[KV_AJ_FRAME_MAX + 64];
    CHECK(kv_aj_frame(7, 1, big, sizeof(big), out) == 0);
    CHECK(kv_aj_frame(7, 1, big, KV_AUDIT_EVENT_MAX, out) == KV_AJ_FRAME_MAX);
    /* A length field past the end, or above the limit, ends the journal. */
    memcpy(copy, buf, sizeof(buf));
    copy[KV_AJ_HEADER + 4] = 0xff;
    CHECK(aj_count(copy, sizeof(copy), &end) == 0);
    /* No header: DATA_LOSS; unknown format: DATA_LOSS. */
    CHECK_ERR(kv_aj_scan(buf, KV_AJ_HEADER - 1, &gen, NULL, NULL, &end, &frames), KV_ERR_DATA_LOSS);
    memcpy(copy, buf, sizeof(buf));
    copy[4] = 2;
    CHECK_ERR(kv_aj_scan(copy, sizeof(copy), &gen, NULL, NULL, &end, &frames), KV_ERR_DATA_LOSS);
    memset(copy, 0, sizeof(copy));
    CHECK_ERR(kv_aj_header_parse(copy, sizeof(copy), &gen), KV_ERR_DATA_LOSS);
}

int main(void)
{
    EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    CHECK(kc != NULL && EVP_PKEY_keygen_init(kc) == 1 &&
          EVP_PKEY_CTX_set_rsa_keygen_bits(kc, 2048) == 1 && EVP_PKEY_generate(kc, &sign_key) == 1);
    EVP_PKEY_CTX_free(kc);
    int n = i2d_PUBKEY(sign_key, NULL);
    spki = malloc((size_t)n);
    unsigned char *p = spki;
    i2d_PUBKEY(sign_key, &p);
    spki_len = (size_t)n;
    RUN(test_intact);
    RUN(test_edit);
    RUN(test_delete);
    RUN(test_swap);
    RUN(test_insert);
    RUN(test_truncate);
    RUN(test_hmac);
    RUN(test_export_roundtrip);
    RUN(test_export_negative);
    RUN(test_hsm_audit_keys);
    RUN(test_journal);
    free(spki);
    EVP_PKEY_free(sign_key);
    return kv_test_finish();
}
