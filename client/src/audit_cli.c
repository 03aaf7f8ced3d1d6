/*
 * audit_cli.c: vaultctl audit log | export | verify | key (docs/audit.md).
 * The export file is written 0600 and never over an existing file; offline
 * verification needs only the export and the checkpoint public key.  Audit
 * records carry no secrets; this file prints ids, names and statuses only.
 */
#include "audit_cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "hsmvault/v1/audit.pb-c.h"
#include "kv_audit.h"
#include "kv_clock.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "print.h"

#define AUDIT_PAGE 1000

/* Seconds since the epoch, or an ISO date ("2026-12-02" or
 * "2026-12-02T18:40:00Z"); *ms in milliseconds. */
static int audit_parse_time(const char *opt, const char *s, int64_t *ms)
{
    if (s == NULL) {
        *ms = 0;
        return EXIT_OK;
    }
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == 0 && end != s && *end == '\0' && v >= 0 && v < 100000000000LL) {
        *ms = v * 1000;
        return EXIT_OK;
    }
    int y, mo, d, h = 0, mi = 0, se = 0;
    char z = 0, tail = 0;
    int n = sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%c%c", &y, &mo, &d, &h, &mi, &se, &z, &tail);
    if (!((n == 3 && strlen(s) == 10) || (n == 7 && z == 'Z')) || mo < 1 || mo > 12 || d < 1 ||
        d > 31 || h > 23 || mi > 59 || se > 60)
        return cli_usage_error("%s takes epoch seconds or a UTC time like 2026-12-02T18:40:00Z, "
                               "not '%s'",
                               opt, s);
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = se};
    *ms = (int64_t)timegm(&tm) * 1000;
    return EXIT_OK;
}

static int audit_parse_seq(const char *opt, const char *s, uint64_t *out)
{
    *out = 0;
    if (s == NULL) return EXIT_OK;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v == 0)
        return cli_usage_error("%s takes a record number (1 or more), not '%s'", opt, s);
    *out = v;
    return EXIT_OK;
}

static void audit_print_record(const Hsmvault__V1__AuditRecord *r)
{
    char when[32];
    kv_clock_format(r->time_ms / 1000, when, sizeof(when));
    const char *op = strrchr(r->rpc, '/');
    char ids[192] = "";
    size_t used = 0;
    const char *names[] = {"tenant", "env", "key", "db"};
    const char *vals[] = {r->tenant_id, r->environment_id, r->key_id, r->database_id};
    for (size_t i = 0; i < 4; i++)
        if (vals[i][0] != '\0' && used < sizeof(ids)) {
            int w = snprintf(ids + used, sizeof(ids) - used, "%s%s=%s", used ? " " : "", names[i],
                             vals[i]);
            if (w > 0) used += (size_t)w;
        }
    printf("%6" PRIu64 " %s %-6s %-40s %-17s %-22s %-18s %s%s%.16s%s%s\n", r->seq, when, r->phase,
           r->principal, r->role[0] ? r->role : "-", op ? op + 1 : r->rpc, r->status, ids,
           r->key_fingerprint[0] ? " fp=" : "", r->key_fingerprint,
           r->message[0] && r->status_code != 0 ? " : " : "",
           r->status_code != 0 ? r->message : "");
}

int audit_cli_log(vc *c, const audit_cli_args *a)
{
    Hsmvault__V1__ReadLogRequest req = HSMVAULT__V1__READ_LOG_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)(a->tenant ? a->tenant : "");
    req.principal = (char *)(uintptr_t)(a->principal ? a->principal : "");
    req.operation = (char *)(uintptr_t)(a->operation ? a->operation : "");
    int rc = audit_parse_time("--since", a->since, &req.since_ms);
    if (rc == EXIT_OK) rc = audit_parse_time("--until", a->until, &req.until_ms);
    if (rc != EXIT_OK) return rc;
    if (a->until != NULL && strlen(a->until) == 10)
        req.until_ms += 86400 * 1000 - 1; /* whole day */
    req.limit = AUDIT_PAGE;
    /* All pages; --json prints them as one ReadLogResponse. */
    Hsmvault__V1__ReadLogResponse **pages = NULL;
    size_t n_pages = 0, total = 0;
    rc = EXIT_OK;
    if (!a->json)
        printf("%6s %-20s %-6s %-40s %-17s %-22s %-18s %s\n", "SEQ", "TIME", "PHASE", "PRINCIPAL",
               "ROLE", "OPERATION", "STATUS", "IDS");
    for (;;) {
        Hsmvault__V1__ReadLogResponse *p = NULL;
        if (kv_failed(vc_call(c, "/hsmvault.v1.AuditLog/ReadLog", &req.base,
                              &hsmvault__v1__read_log_response__descriptor,
                              (ProtobufCMessage **)&p))) {
            rc = cli_fail();
            break;
        }
        if (!a->json)
            for (size_t i = 0; i < p->n_records; i++)
                audit_print_record(p->records[i]);
        total += p->n_records;
        bool more = p->more;
        req.after_seq = p->next_after_seq;
        Hsmvault__V1__ReadLogResponse **np = realloc(pages, (n_pages + 1) * sizeof(*np));
        if (np == NULL) {
            kv_pb_free(&p->base);
            fprintf(stderr, "vaultctl: out of memory\n");
            rc = EXIT_ERROR;
            break;
        }
        pages = np;
        pages[n_pages++] = p;
        if (!more) break;
    }
    if (rc == EXIT_OK && a->json) {
        Hsmvault__V1__AuditRecord **all = calloc(total ? total : 1, sizeof(*all));
        if (all == NULL) {
            rc = EXIT_ERROR;
        } else {
            size_t k = 0;
            for (size_t i = 0; i < n_pages; i++)
                for (size_t j = 0; j < pages[i]->n_records; j++)
                    all[k++] = pages[i]->records[j];
            Hsmvault__V1__ReadLogResponse out = HSMVAULT__V1__READ_LOG_RESPONSE__INIT;
            out.n_records = total;
            out.records = all;
            out.next_after_seq = req.after_seq;
            print_message(stdout, &out.base, true);
            free(all);
        }
    } else if (rc == EXIT_OK) {
        printf("%zu records.\n", total);
    }
    for (size_t i = 0; i < n_pages; i++)
        kv_pb_free(&pages[i]->base);
    free(pages);
    return rc;
}

int audit_cli_export(vc *c, const audit_cli_args *a)
{
    if (a->out == NULL) return cli_usage_error("%s is required", "--out FILE");
    Hsmvault__V1__ExportLogRequest req = HSMVAULT__V1__EXPORT_LOG_REQUEST__INIT;
    int rc = audit_parse_seq("--from", a->from, &req.from_seq);
    if (rc == EXIT_OK) rc = audit_parse_seq("--to", a->to, &req.to_seq);
    if (rc != EXIT_OK) return rc;
    if (req.to_seq != 0 && req.from_seq > req.to_seq)
        return cli_usage_error("--from %s is after --to %s", a->from, a->to);
    req.limit = AUDIT_PAGE;
    char *text = NULL;
    size_t len = 0, cap = 0, n_recs = 0, n_cps = 0;
    kv_result r = kv_audit_export_add_line(&text, &len, &cap, KV_AUDIT_EXPORT_MAGIC);
    uint64_t last_cp = 0;
    while (kv_ok(r)) {
        Hsmvault__V1__ExportLogResponse *p = NULL;
        r = vc_call(c, "/hsmvault.v1.AuditLog/ExportLog", &req.base,
                    &hsmvault__v1__export_log_response__descriptor, (ProtobufCMessage **)&p);
        if (kv_failed(r)) break;
        /* The first page pins the range's end at the head sealed for it. */
        if (req.to_seq == 0) req.to_seq = p->head_seq ? p->head_seq : 1;
        for (size_t i = 0; i < p->n_records && kv_ok(r); i++) {
            const Hsmvault__V1__ExportedRecord *e = p->records[i];
            kv_audit_record rec = {
                .seq = e->seq, .event = e->event.data, .event_len = e->event.len};
            if (e->prev_hash.len != 32 || e->hash.len != 32 || e->hmac.len != 32) {
                r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__,
                                 "record %" PRIu64 " came with damaged hashes; run audit verify",
                                 e->seq);
                break;
            }
            memcpy(rec.prev, e->prev_hash.data, 32);
            memcpy(rec.hash, e->hash.data, 32);
            memcpy(rec.hmac, e->hmac.data, 32);
            r = kv_audit_export_add_record(&text, &len, &cap, &rec);
            n_recs++;
        }
        for (size_t i = 0; i < p->n_checkpoints && kv_ok(r); i++) {
            const Hsmvault__V1__ExportedCheckpoint *cp = p->checkpoints[i];
            if (cp->seq <= last_cp) continue; /* pages overlap at their edges */
            kv_audit_checkpoint ck = {.seq = cp->seq,
                                      .time = cp->time,
                                      .sig = cp->signature.data,
                                      .sig_len = cp->signature.len};
            if (cp->head_hash.len == 32) memcpy(ck.head, cp->head_hash.data, 32);
            r = kv_audit_export_add_checkpoint(&text, &len, &cap, &ck);
            last_cp = cp->seq;
            n_cps++;
        }
        bool more = p->more;
        req.from_seq = p->next_from_seq;
        kv_pb_free(&p->base);
        if (!more) break;
    }
    if (kv_ok(r)) {
        char end[64];
        snprintf(end, sizeof(end), "end %zu %zu", n_recs, n_cps);
        r = kv_audit_export_add_line(&text, &len, &cap, end);
    }
    if (kv_ok(r)) r = kv_file_write_new(a->out, text, len, 0600);
    free(text);
    if (kv_failed(r)) return cli_fail();
    char nr[32], nc[32];
    snprintf(nr, sizeof(nr), "%zu", n_recs);
    snprintf(nc, sizeof(nc), "%zu", n_cps);
    print_pair out[] = {{"file", a->out, false}, {"records", nr, true}, {"checkpoints", nc, true}};
    print_pairs(stdout, out, KV_ARRAY_LEN(out), a->json);
    return EXIT_OK;
}

static int audit_report(bool json, bool ok, const char *kind, uint64_t seq, const char *detail,
                        uint64_t records, uint64_t checkpoints, uint64_t unsealed)
{
    char s[32], nr[32], nc[32], nu[32];
    snprintf(s, sizeof(s), "%" PRIu64, seq);
    snprintf(nr, sizeof(nr), "%" PRIu64, records);
    snprintf(nc, sizeof(nc), "%" PRIu64, checkpoints);
    snprintf(nu, sizeof(nu), "%" PRIu64, unsealed);
    print_pair out[] = {{"result", ok ? "OK" : "FAILED", false},
                        {"kind", kind, false},
                        {"seq", s, true},
                        {"detail", detail, false},
                        {"records", nr, true},
                        {"checkpoints", nc, true},
                        {"unsealed", nu, true}};
    print_pairs(stdout, out, KV_ARRAY_LEN(out), json);
    if (!ok)
        fprintf(stderr,
                "vaultctl: the audit log failed verification: %s at record %" PRIu64 ": %s\n", kind,
                seq, detail);
    return ok ? EXIT_OK : EXIT_ERROR;
}

int audit_cli_verify(vc *c, const audit_cli_args *a)
{
    if (c != NULL) {
        Hsmvault__V1__VerifyLogRequest req = HSMVAULT__V1__VERIFY_LOG_REQUEST__INIT;
        Hsmvault__V1__VerifyLogResponse *v = NULL;
        if (kv_failed(vc_call(c, "/hsmvault.v1.AuditLog/VerifyLog", &req.base,
                              &hsmvault__v1__verify_log_response__descriptor,
                              (ProtobufCMessage **)&v)))
            return cli_fail();
        int rc = audit_report(a->json, v->ok, v->kind, v->seq, v->detail, v->records,
                              v->checkpoints, v->unsealed);
        kv_pb_free(&v->base);
        return rc;
    }
    if (a->file == NULL || a->public_key == NULL)
        return cli_usage_error("offline verification needs %s",
                               "--file EXPORT and --public-key PEM");
    uint8_t *data = NULL, *pem = NULL, *spki = NULL;
    size_t len = 0, pem_len = 0, spki_len = 0;
    kv_audit_export ex = {0};
    kv_audit_report rep;
    kv_result r = kv_file_read(a->file, KV_AUDIT_EXPORT_MAX, &data, &len);
    if (kv_ok(r)) r = kv_file_read(a->public_key, 65536, &pem, &pem_len);
    if (kv_ok(r)) r = kv_audit_spki_from_pem((const char *)pem, pem_len, &spki, &spki_len);
    if (kv_ok(r)) r = kv_audit_export_parse(data, len, &ex);
    if (kv_ok(r)) {
        kv_audit_verify_opts o = {.spki = spki,
                                  .spki_len = spki_len,
                                  .from_genesis = ex.n_recs > 0 && ex.recs[0].seq == 1};
        r = kv_audit_verify(ex.recs, ex.n_recs, ex.cps, ex.n_cps, &o, &rep);
    }
    int rc = kv_ok(r)
                 ? audit_report(a->json, rep.kind == KV_AUDIT_OK, kv_audit_kind_name(rep.kind),
                                rep.seq, rep.detail, rep.records, rep.checkpoints, rep.unsealed)
                 : cli_fail();
    kv_audit_export_free(&ex);
    free(data);
    free(pem);
    free(spki);
    return rc;
}

int audit_cli_key(vc *c, const audit_cli_args *a)
{
    Hsmvault__V1__GetCheckpointKeyRequest req = HSMVAULT__V1__GET_CHECKPOINT_KEY_REQUEST__INIT;
    Hsmvault__V1__GetCheckpointKeyResponse *k = NULL;
    if (kv_failed(vc_call(c, "/hsmvault.v1.AuditLog/GetCheckpointKey", &req.base,
                          &hsmvault__v1__get_checkpoint_key_response__descriptor,
                          (ProtobufCMessage **)&k)))
        return cli_fail();
    int rc = EXIT_OK;
    if (a->out != NULL) {
        if (kv_failed(
                kv_file_write_new(a->out, k->public_key_pem, strlen(k->public_key_pem), 0644)))
            rc = cli_fail();
        else {
            print_pair out[] = {{"file", a->out, false}, {"fingerprint", k->fingerprint, false}};
            print_pairs(stdout, out, KV_ARRAY_LEN(out), a->json);
        }
    } else if (a->json) {
        print_message(stdout, &k->base, true);
    } else {
        fputs(k->public_key_pem, stdout);
    }
    kv_pb_free(&k->base);
    return rc;
}
