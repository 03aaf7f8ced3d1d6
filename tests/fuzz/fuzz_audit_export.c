/*
 * fuzz_audit_export.c: kv_audit_export_parse on arbitrary bytes, then the
 * offline verifier on whatever parsed (a fixed public key: signatures fail,
 * the walk runs).  A success must describe records and checkpoints within
 * the format's limits and write back to a file that parses to the same
 * items; a failure must leave nothing behind.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kv_audit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A real RSA public key (made once) so the walk and the signature checks
 * run on whatever parsed; an unusable key must fail cleanly too. */
static uint8_t *fuzz_spki;
static size_t fuzz_spki_len;

static void fuzz_key_once(void)
{
    if (fuzz_spki != NULL) return;
    EVP_PKEY *k = EVP_RSA_gen(2048);
    int n = k ? i2d_PUBKEY(k, NULL) : 0;
    if (n <= 0) abort();
    fuzz_spki = malloc((size_t)n);
    unsigned char *p = fuzz_spki;
    if (fuzz_spki == NULL || i2d_PUBKEY(k, &p) != n) abort();
    fuzz_spki_len = (size_t)n;
    EVP_PKEY_free(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kv_audit_export ex;
    if (kv_failed(kv_audit_export_parse(data, size, &ex))) {
        if (ex.recs != NULL || ex.cps != NULL || ex.buf != NULL) abort();
        return 0;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    if (kv_failed(kv_audit_export_add_line(&text, &len, &cap, KV_AUDIT_EXPORT_MAGIC))) abort();
    for (size_t i = 0; i < ex.n_recs; i++) {
        if (ex.recs[i].event_len == 0 || ex.recs[i].event_len > KV_AUDIT_EVENT_MAX) abort();
        if (kv_failed(kv_audit_export_add_record(&text, &len, &cap, &ex.recs[i]))) abort();
    }
    for (size_t i = 0; i < ex.n_cps; i++) {
        if (ex.cps[i].sig_len == 0 || ex.cps[i].sig_len > KV_AUDIT_SIG_MAX) abort();
        if (kv_failed(kv_audit_export_add_checkpoint(&text, &len, &cap, &ex.cps[i]))) abort();
    }
    char end[64];
    snprintf(end, sizeof(end), "end %zu %zu", ex.n_recs, ex.n_cps);
    if (kv_failed(kv_audit_export_add_line(&text, &len, &cap, end))) abort();
    kv_audit_export again;
    if (kv_failed(kv_audit_export_parse((const uint8_t *)text, len, &again))) abort();
    if (again.n_recs != ex.n_recs || again.n_cps != ex.n_cps) abort();
    for (size_t i = 0; i < ex.n_recs; i++)
        if (again.recs[i].seq != ex.recs[i].seq ||
            again.recs[i].event_len != ex.recs[i].event_len ||
            memcmp(again.recs[i].event, ex.recs[i].event, ex.recs[i].event_len) != 0 ||
            memcmp(again.recs[i].hash, ex.recs[i].hash, 32) != 0)
            abort();
    kv_audit_report rep;
    static const uint8_t not_a_key[] = {0x30, 0x03, 0x02, 0x01, 0x00};
    kv_audit_verify_opts o = {.spki = not_a_key, .spki_len = sizeof(not_a_key)};
    if (kv_ok(kv_audit_verify(ex.recs, ex.n_recs, ex.cps, ex.n_cps, &o, &rep))) abort();
    fuzz_key_once();
    o.spki = fuzz_spki;
    o.spki_len = fuzz_spki_len;
    o.from_genesis = ex.n_recs > 0 && ex.recs[0].seq == 1;
    if (kv_failed(kv_audit_verify(ex.recs, ex.n_recs, ex.cps, ex.n_cps, &o, &rep))) abort();
    /* Nobody else's key signed these checkpoints. */
    if (ex.n_cps > 0 && ex.n_recs > 0 && rep.kind == KV_AUDIT_OK) abort();
    if (rep.kind != KV_AUDIT_OK && rep.detail[0] == '\0') abort();
    kv_audit_export_free(&again);
    kv_audit_export_free(&ex);
    free(text);
    return 0;
}
