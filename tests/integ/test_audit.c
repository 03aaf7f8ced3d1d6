/*
 * test_audit.c: the audit log end to end against a real vaultd --dev (real
 * SoftHSM token, real LMDB file, mTLS): allowed and refused calls recorded
 * with principal, role, ids and key fingerprint; the PFX password of a
 * generate absent from the store file and the log; kill -9 between a change
 * and its result record loses nothing; and tampering done directly on the
 * store file while vaultd is stopped (edit, delete, swap, insert, truncate,
 * truncate with the last checkpoint) reported by VerifyLog with its kind and
 * record.
 */
#define _GNU_SOURCE /* memmem */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hsmvault/store/records.pb-c.h"
#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "kv_audit.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "store.h"
#include "vaultclient.h"
#include "vaultd_proc.h"

#define URI(role) "spiffe://hsmvault.dev/" role
#define PASSWORD "audit-test-pfx-password-7f3a91"
#define M(svc, name) "/hsmvault.v1." svc "/" name
#define CALL(c, method, req, type, out)                                                            \
    vc_call((c), (method), &(req).base, &hsmvault__v1__##type##__descriptor,                       \
            (ProtobufCMessage **)(out))

typedef Hsmvault__Store__AuditEntry AuditEntry;

static char tmp[256], state[300], store_dir[320], backup[340], data_file[340];
static vaultd_proc vd;
static char tenant[64], env_id[64], db_id[64], key_id[64];

static Hsmvault__V1__ReadLogResponse *read_log(vc *c, const char *principal, const char *op)
{
    Hsmvault__V1__ReadLogRequest req = HSMVAULT__V1__READ_LOG_REQUEST__INIT;
    req.principal = (char *)(principal ? principal : "");
    req.operation = (char *)(op ? op : "");
    req.limit = 5000;
    Hsmvault__V1__ReadLogResponse *r = NULL;
    kv_result res = CALL(c, M("AuditLog", "ReadLog"), req, read_log_response, &r);
    CHECK_OK(res);
    return kv_ok(res) ? r : NULL;
}

static Hsmvault__V1__VerifyLogResponse *verify_log(void)
{
    vc *au = vaultd_proc_client(&vd, "auditor");
    Hsmvault__V1__VerifyLogRequest req = HSMVAULT__V1__VERIFY_LOG_REQUEST__INIT;
    Hsmvault__V1__VerifyLogResponse *r = NULL;
    CHECK_OK(CALL(au, M("AuditLog", "VerifyLog"), req, verify_log_response, &r));
    vc_close(au);
    return r;
}

static bool file_contains(const char *path, const char *needle)
{
    uint8_t *data = NULL;
    size_t len = 0;
    if (kv_failed(kv_file_read(path, 1u << 30, &data, &len))) return false;
    bool found = memmem(data, len, needle, strlen(needle)) != NULL;
    free(data);
    return found;
}

static void setup_and_operate(void)
{
    vc *op = vaultd_proc_client(&vd, "operator");
    vc *ta = vaultd_proc_client(&vd, "tenant-admin");
    vc *sn = vaultd_proc_client(&vd, "storage-node");
    vc *au = vaultd_proc_client(&vd, "auditor");
    char *contacts[] = {"secops@example.com"};
    Hsmvault__V1__CreateTenantRequest ct = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    ct.name = "contoso";
    ct.subscription_id = "11111111-2222-3333-4444-555555555555";
    ct.n_admin_contacts = 1;
    ct.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    CHECK_OK(CALL(op, M("Tenants", "CreateTenant"), ct, tenant, &t));
    if (t) snprintf(tenant, sizeof(tenant), "%s", t->id);
    kv_pb_free(t ? &t->base : NULL);
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = URI("tenant-admin");
    b.role = HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN;
    b.tenant_id = tenant;
    Hsmvault__V1__BindRoleRequest br = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
    br.binding = &b;
    Hsmvault__V1__RoleBinding *bo = NULL;
    CHECK_OK(CALL(op, M("Tenants", "BindRole"), br, role_binding, &bo));
    kv_pb_free(bo ? &bo->base : NULL);
    Hsmvault__V1__EnableSelfManagedKeysRequest en =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    en.tenant_id = tenant;
    CHECK_OK(CALL(op, M("Tenants", "EnableSelfManagedKeys"), en, tenant, &t));
    kv_pb_free(t ? &t->base : NULL);
    /* A key operation whose request carries a password. */
    Hsmvault__V1__GenerateKeyRequest gk = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    gk.tenant_id = tenant;
    gk.name = "audited-key";
    gk.password.data = (uint8_t *)PASSWORD;
    gk.password.len = strlen(PASSWORD);
    Hsmvault__V1__GenerateKeyResponse *g = NULL;
    CHECK_OK(CALL(ta, M("TenantKeys", "GenerateKey"), gk, generate_key_response, &g));
    char fp[80] = "";
    if (g) {
        snprintf(key_id, sizeof(key_id), "%s", g->key->id);
        snprintf(fp, sizeof(fp), "%s", g->key->fingerprint);
    }
    kv_pb_free(g ? &g->base : NULL);
    /* An environment, a database, an unwrap. */
    Hsmvault__V1__CreateEnvironmentRequest ce = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    ce.tenant_id = tenant;
    ce.name = "prod";
    ce.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION;
    Hsmvault__V1__Environment *e = NULL;
    CHECK_OK(CALL(op, M("Environments", "CreateEnvironment"), ce, environment, &e));
    if (e) snprintf(env_id, sizeof(env_id), "%s", e->id);
    kv_pb_free(e ? &e->base : NULL);
    b.principal = URI("storage-node");
    b.role = HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE;
    b.environment_id = env_id;
    CHECK_OK(CALL(op, M("Tenants", "BindRole"), br, role_binding, &bo));
    kv_pb_free(bo ? &bo->base : NULL);
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease;
    CHECK_OK(vc_database_key_create(sn, env_id, "db1", db_id, sizeof(db_id), &dek, &lease));
    kv_secret_free(&dek);
    CHECK_OK(vc_database_key_unwrap(sn, env_id, db_id, &dek, &lease));
    kv_secret_free(&dek);
    /* Refused calls. */
    Hsmvault__V1__ReadLogRequest rl = HSMVAULT__V1__READ_LOG_REQUEST__INIT;
    Hsmvault__V1__ReadLogResponse *lr = NULL;
    CHECK_ERR(CALL(ta, M("AuditLog", "ReadLog"), rl, read_log_response, &lr),
              KV_ERR_PERMISSION_DENIED);
    CHECK_ERR(vc_database_key_unwrap(ta, env_id, db_id, &dek, &lease), KV_ERR_PERMISSION_DENIED);

    /* What the log says. */
    Hsmvault__V1__ReadLogResponse *l = read_log(au, URI("tenant-admin"), "ReadLog");
    CHECK(l != NULL && l->n_records == 1);
    if (l && l->n_records == 1) {
        const Hsmvault__V1__AuditRecord *r = l->records[0];
        CHECK(r->status_code == KV_ERR_PERMISSION_DENIED && strcmp(r->phase, "result") == 0);
        CHECK(strcmp(r->role, "") == 0 && strstr(r->message, "needs the") != NULL);
    }
    kv_pb_free(l ? &l->base : NULL);
    l = read_log(au, URI("tenant-admin"), "UnwrapDatabaseKey");
    CHECK(l != NULL && l->n_records == 1 && l->records[0]->status_code == KV_ERR_PERMISSION_DENIED);
    kv_pb_free(l ? &l->base : NULL);
    l = read_log(au, NULL, "/hsmvault.v1.TenantKeys/GenerateKey");
    size_t change = 0, result = 0;
    for (size_t i = 0; l && i < l->n_records; i++) {
        const Hsmvault__V1__AuditRecord *r = l->records[i];
        CHECK(strcmp(r->tenant_id, tenant) == 0 && strcmp(r->role, "tenant-admin") == 0);
        if (strcmp(r->phase, "change") == 0) change++;
        if (strcmp(r->phase, "result") == 0) {
            result++;
            CHECK(strcmp(r->key_id, key_id) == 0 && strcmp(r->key_fingerprint, fp) == 0);
            CHECK(r->call_id == l->records[0]->call_id);
        }
    }
    CHECK(change >= 1 && result == 1);
    kv_pb_free(l ? &l->base : NULL);
    l = read_log(au, URI("storage-node"), "UnwrapDatabaseKey");
    CHECK(l != NULL && l->n_records == 1);
    if (l && l->n_records == 1) {
        const Hsmvault__V1__AuditRecord *r = l->records[0];
        CHECK(strcmp(r->environment_id, env_id) == 0 && strcmp(r->database_id, db_id) == 0);
        CHECK(strcmp(r->tenant_id, tenant) == 0 && strlen(r->key_fingerprint) == 64);
        CHECK(strcmp(r->role, "storage-node") == 0 && r->status_code == 0);
    }
    kv_pb_free(l ? &l->base : NULL);
    /* The auditor cannot change anything (the role matrix checks every
     * RPC; here one write). */
    CHECK_ERR(CALL(au, M("Tenants", "CreateTenant"), ct, tenant, &t), KV_ERR_PERMISSION_DENIED);
    Hsmvault__V1__VerifyLogResponse *v = verify_log();
    CHECK(v != NULL && v->ok && v->records > 10 && v->unsealed == 0 && v->anchor_seq > 0);
    kv_pb_free(v ? &v->base : NULL);
    vc_close(op), vc_close(ta), vc_close(sn), vc_close(au);
}

static void test_no_secrets(void)
{
    CHECK(!file_contains(data_file, PASSWORD));
    char log[320];
    snprintf(log, sizeof(log), "%s.log", state);
    CHECK(!file_contains(log, PASSWORD));
    CHECK(file_contains(data_file, URI("tenant-admin"))); /* the records are there */
}

/* Restarts vaultd so that it dies (SIGKILL) at the test crash point. */
static void restart_with_crash_point(const char *point)
{
    CHECK(vaultd_proc_stop(&vd) == 0);
    setenv("HSMVAULT_TEST_CRASH_AT", point, 1);
    CHECK(vaultd_proc_start(&vd, state));
    unsetenv("HSMVAULT_TEST_CRASH_AT");
}

/* After the call that was to reach the crash point (died: it failed as
 * such a call does): vaultd died by SIGKILL (else it is killed now and the
 * check fails). */
static void expect_crashed(bool died)
{
    CHECK(died);
    if (!died) {
        vaultd_proc_kill(&vd);
        return;
    }
    int status = 0;
    CHECK(waitpid(vd.pid, &status, 0) == vd.pid && WIFSIGNALED(status) &&
          WTERMSIG(status) == SIGKILL);
    vd.pid = 0;
}

/* kill -9 after the change committed, before the result record. */
static void test_crash_between_change_and_result(void)
{
    restart_with_crash_point("audit-before-result");
    vc *op = vaultd_proc_client(&vd, "operator");
    Hsmvault__V1__CreateTenantRequest ct = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    char *contacts[] = {"secops@example.com"};
    ct.name = "fabrikam";
    ct.subscription_id = "99999999-2222-3333-4444-555555555555";
    ct.n_admin_contacts = 1;
    ct.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    kv_error_clear();
    kv_result r = CALL(op, M("Tenants", "CreateTenant"), ct, tenant, &t);
    if (kv_ok(r)) kv_pb_free(t ? &t->base : NULL);
    expect_crashed(kv_failed(r) && kv_error_code() == KV_ERR_UNAVAILABLE);
    vc_close(op);
    CHECK(vaultd_proc_start(&vd, state));
    vc *au = vaultd_proc_client(&vd, "auditor");
    Hsmvault__V1__ReadLogResponse *l = read_log(au, URI("operator"), "CreateTenant");
    /* The last CreateTenant record is the crashed call's change record,
     * naming the tables it wrote; no result record follows for it. */
    CHECK(l != NULL && l->n_records >= 3);
    if (l && l->n_records >= 3) {
        const Hsmvault__V1__AuditRecord *last = l->records[l->n_records - 1];
        CHECK(strcmp(last->phase, "change") == 0 && last->n_tables >= 1);
        CHECK(strcmp(last->tables[0], "tenants") == 0);
        for (size_t i = 0; i + 1 < l->n_records; i++)
            CHECK(l->records[i]->call_id != last->call_id);
    }
    kv_pb_free(l ? &l->base : NULL);
    vc_close(au);
    vc *op2 = vaultd_proc_client(&vd, "operator");
    Hsmvault__V1__ListTenantsRequest lt = HSMVAULT__V1__LIST_TENANTS_REQUEST__INIT;
    Hsmvault__V1__ListTenantsResponse *ts = NULL;
    CHECK_OK(CALL(op2, M("Tenants", "ListTenants"), lt, list_tenants_response, &ts));
    bool found = false;
    for (size_t i = 0; ts && i < ts->n_tenants; i++)
        found = found || strcmp(ts->tenants[i]->name, "fabrikam") == 0;
    CHECK(found);
    kv_pb_free(ts ? &ts->base : NULL);
    vc_close(op2);
    Hsmvault__V1__VerifyLogResponse *v = verify_log();
    CHECK(v != NULL && v->ok);
    kv_pb_free(v ? &v->base : NULL);
}

/* kill -9 after a call's result record reached the journal, before it was
 * folded into the log (and before the reply): the next start folds it. */
static void test_crash_after_journal_append(void)
{
    restart_with_crash_point("audit-journal-appended");
    vc *op = vaultd_proc_client(&vd, "operator");
    Hsmvault__V1__ListTenantsRequest lt = HSMVAULT__V1__LIST_TENANTS_REQUEST__INIT;
    Hsmvault__V1__ListTenantsResponse *ts = NULL;
    kv_error_clear();
    kv_result r = CALL(op, M("Tenants", "ListTenants"), lt, list_tenants_response, &ts);
    if (kv_ok(r)) kv_pb_free(ts ? &ts->base : NULL);
    expect_crashed(kv_failed(r));
    vc_close(op);
    char log[320];
    snprintf(log, sizeof(log), "%s.log", state);
    CHECK(!file_contains(log, "from the journal into the log"));
    CHECK(vaultd_proc_start(&vd, state));
    CHECK(file_contains(log, "folded 1 result records from the journal into the log"));
    vc *au = vaultd_proc_client(&vd, "auditor");
    Hsmvault__V1__ReadLogResponse *l = read_log(au, URI("operator"), "ListTenants");
    CHECK(l != NULL && l->n_records >= 1);
    if (l && l->n_records >= 1) {
        const Hsmvault__V1__AuditRecord *last = l->records[l->n_records - 1];
        CHECK(strcmp(last->phase, "result") == 0 && strcmp(last->status, "OK") == 0);
    }
    kv_pb_free(l ? &l->base : NULL);
    vc_close(au);
    Hsmvault__V1__VerifyLogResponse *v = verify_log();
    CHECK(v != NULL && v->ok);
    kv_pb_free(v ? &v->base : NULL);
}

/* The generation in the journal file's header (0: unreadable). */
static uint64_t journal_generation(void)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/audit.journal", store_dir);
    uint8_t h[KV_AJ_HEADER];
    uint64_t gen = 0;
    FILE *f = fopen(path, "rb");
    if (f != NULL && fread(h, 1, sizeof(h), f) == sizeof(h) &&
        kv_failed(kv_aj_header_parse(h, sizeof(h), &gen)))
        kv_error_clear();
    if (f != NULL) fclose(f);
    return gen;
}

/* A small journal (64 KiB: reset every couple of hundred records) under
 * 1000 calls, then kill -9: every answered call's record is in the log
 * after the restart, and the chain verifies across the resets.  Run with
 * the default sync interval and with --audit-sync-ms 0 (the syncer thread
 * beside the writer's folds and resets). */
static void journal_resets(const char *const *extra)
{
    Hsmvault__V1__VerifyLogResponse *v = verify_log();
    uint64_t before = v ? v->records : 0;
    kv_pb_free(v ? &v->base : NULL);
    CHECK(vaultd_proc_stop(&vd) == 0);
    setenv("HSMVAULT_TEST_AUDIT_JOURNAL_BYTES", "65536", 1);
    CHECK(vaultd_proc_start_args(&vd, state, extra));
    uint64_t gen0 = journal_generation();
    vc *op = vaultd_proc_client(&vd, "operator");
    int answered = 0;
    for (int i = 0; i < 1000; i++) {
        Hsmvault__V1__ListTenantsRequest lt = HSMVAULT__V1__LIST_TENANTS_REQUEST__INIT;
        Hsmvault__V1__ListTenantsResponse *ts = NULL;
        if (kv_ok(CALL(op, M("Tenants", "ListTenants"), lt, list_tenants_response, &ts)))
            answered++;
        kv_pb_free(ts ? &ts->base : NULL);
    }
    CHECK(answered == 1000);
    uint64_t gen1 = journal_generation();
    CHECK(gen0 != 0 && gen1 != 0 && gen1 != gen0); /* it was reset on the way */
    vc_close(op);
    vaultd_proc_kill(&vd);
    CHECK(vaultd_proc_start(&vd, state));
    unsetenv("HSMVAULT_TEST_AUDIT_JOURNAL_BYTES");
    v = verify_log();
    CHECK(v != NULL && v->ok && v->records >= before + 1 + 1000);
    if (v && !(v->ok && v->records >= before + 1001))
        fprintf(stderr, "   %llu records before, %llu after 1000 calls: %s %s\n",
                (unsigned long long)before, (unsigned long long)v->records, v->kind, v->detail);
    kv_pb_free(v ? &v->base : NULL);
}

static void test_journal_resets(void)
{
    journal_resets(NULL);
    static const char *const strict[] = {"--audit-sync-ms", "0", NULL};
    journal_resets(strict);
}

/* ---- a disk error on the journal ---- */

static kv_result list_tenants(vc *op)
{
    Hsmvault__V1__ListTenantsRequest lt = HSMVAULT__V1__LIST_TENANTS_REQUEST__INIT;
    Hsmvault__V1__ListTenantsResponse *ts = NULL;
    kv_error_clear();
    kv_result r = CALL(op, M("Tenants", "ListTenants"), lt, list_tenants_response, &ts);
    kv_pb_free(ts ? &ts->base : NULL);
    return r;
}

static bool refused_unrecorded(kv_result r)
{
    return kv_failed(r) && kv_error_code() == KV_ERR_UNAVAILABLE &&
           strstr(kv_error_msg(), "audit log cannot be written") != NULL;
}

/* Starts vaultd with tests/lib/syncfail_shim.c preloaded: fsync/fdatasync
 * of audit.journal fail with EIO while the trigger file exists. */
static void start_with_syncfail(const char *trigger, const char *const *extra)
{
    kv_test_preload_begin(SYNCFAIL_SHIM);
    setenv("SYNCFAIL_NAME", "audit.journal", 1);
    setenv("SYNCFAIL_TRIGGER", trigger, 1);
    CHECK(vaultd_proc_start_args(&vd, state, extra));
    kv_test_preload_end();
    unsetenv("SYNCFAIL_NAME");
    unsetenv("SYNCFAIL_TRIGGER");
}

/* The journal's fdatasync fails (EIO): from then on every call is refused
 * with UNAVAILABLE, also once the disk works again, until a restart; the
 * restart folds what the journal holds and the chain verifies.  In the
 * default mode the call appended just before the failing sync was answered
 * (its record is in the journal, within audit_sync_ms of reaching the
 * disk); with --audit-sync-ms 0 that call itself is refused. */
static void sync_fails(const char *const *extra, bool strict)
{
    char trigger[400];
    snprintf(trigger, sizeof(trigger), "%s/syncfail", tmp);
    Hsmvault__V1__VerifyLogResponse *v = verify_log();
    uint64_t before = v ? v->records : 0;
    kv_pb_free(v ? &v->base : NULL);
    CHECK(vaultd_proc_stop(&vd) == 0);
    start_with_syncfail(trigger, extra);
    vc *op = vaultd_proc_client(&vd, "operator");
    uint64_t answered = 0;
    CHECK_OK(list_tenants(op));
    answered++;
    usleep(100 * 1000); /* the writer's round for it is over */
    FILE *f = fopen(trigger, "w");
    CHECK(f != NULL);
    if (f != NULL) fclose(f);
    kv_result r = list_tenants(op);
    if (strict) {
        CHECK(refused_unrecorded(r));
    } else {
        CHECK_OK(r);
        answered++;
        usleep(100 * 1000); /* its sync fails */
    }
    for (int i = 0; i < 3; i++)
        CHECK(refused_unrecorded(list_tenants(op)));
    CHECK(unlink(trigger) == 0);
    CHECK(refused_unrecorded(list_tenants(op))); /* a failed sync is not retried */
    vc_close(op);
    /* A clean stop still ends (its shutdown checkpoint covers what was folded). */
    CHECK(vaultd_proc_stop(&vd) == 0);
    CHECK(vaultd_proc_start(&vd, state));
    v = verify_log();
    CHECK(v != NULL && v->ok && v->records >= before + answered);
    kv_pb_free(v ? &v->base : NULL);
}

static void test_sync_fails(void)
{
    sync_fails(NULL, false);
    static const char *const strict[] = {"--audit-sync-ms", "0", NULL};
    sync_fails(strict, true);
}

/* ---- tampering with the store file while vaultd is stopped ---- */

typedef enum { T_EDIT, T_DELETE, T_SWAP, T_INSERT, T_TRUNCATE, T_TRUNCATE_CHECKPOINT } tamper_kind;

static void key_of(uint64_t seq, char out[24])
{
    snprintf(out, 24, "%020llu", (unsigned long long)seq);
}

static AuditEntry *entry_get(store_txn *t, uint64_t seq)
{
    char k[24];
    key_of(seq, k);
    ProtobufCMessage *m = NULL;
    CHECK_OK(store_get(t, STORE_AUDIT_LOG, k, &hsmvault__store__audit_entry__descriptor, &m));
    return (AuditEntry *)m;
}

typedef struct {
    tamper_kind kind;
    uint64_t head, prev_cp, last_cp;
} tamper_ctx;

static kv_result checkpoint_seen(const char *key, ProtobufCMessage **msg, void *arg)
{
    (void)key;
    tamper_ctx *c = arg;
    c->prev_cp = c->last_cp;
    c->last_cp = ((const Hsmvault__Store__AuditCheckpointRecord *)*msg)->seq;
    return KV_SUCCESS;
}

static kv_result tamper_update(store_txn *t, void *arg)
{
    tamper_ctx *c = arg;
    char k[24], k2[40];
    AuditEntry *a = NULL, *b = NULL;
    switch (c->kind) {
    case T_EDIT: /* one byte of record 3's event */
        a = entry_get(t, 3);
        if (a) a->event.data[a->event.len / 2] ^= 0x01;
        key_of(3, k);
        if (a) KV_GUARD(store_put(t, STORE_AUDIT_LOG, k, &a->base));
        break;
    case T_DELETE:
        key_of(4, k);
        KV_GUARD(store_del(t, STORE_AUDIT_LOG, k));
        break;
    case T_SWAP: /* the values of records 5 and 6 */
        a = entry_get(t, 5);
        b = entry_get(t, 6);
        key_of(5, k);
        if (a && b) KV_GUARD(store_put(t, STORE_AUDIT_LOG, k, &b->base));
        key_of(6, k);
        if (a && b) KV_GUARD(store_put(t, STORE_AUDIT_LOG, k, &a->base));
        break;
    case T_INSERT: /* a copy of record 2 stored between 7 and 8 */
        a = entry_get(t, 2);
        key_of(7, k);
        snprintf(k2, sizeof(k2), "%sx", k);
        if (a) KV_GUARD(store_put(t, STORE_AUDIT_LOG, k2, &a->base));
        break;
    case T_TRUNCATE: /* the last three records (the last checkpoint stays) */
        for (uint64_t s = c->head - 2; s <= c->head; s++) {
            key_of(s, k);
            KV_GUARD(store_del(t, STORE_AUDIT_LOG, k));
        }
        break;
    case T_TRUNCATE_CHECKPOINT: /* everything after the second-last checkpoint */
        for (uint64_t s = c->prev_cp + 1; s <= c->head; s++) {
            key_of(s, k);
            KV_GUARD(store_del(t, STORE_AUDIT_LOG, k));
        }
        key_of(c->last_cp, k);
        KV_GUARD(store_del(t, STORE_AUDIT_CHECKPOINTS, k));
        break;
    }
    kv_pb_free(a ? &a->base : NULL);
    kv_pb_free(b ? &b->base : NULL);
    return KV_SUCCESS;
}

static void test_tamper(tamper_kind kind, const char *want_kind, uint64_t want_seq_or_0)
{
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(backup, 1u << 30, &data, &len));
    remove(data_file);
    CHECK_OK(kv_file_write_new(data_file, data, len, 0600));
    free(data);
    vault_store *s = NULL;
    CHECK_OK(store_open(store_dir, &s));
    if (s == NULL) return;
    tamper_ctx c = {.kind = kind};
    store_txn *t;
    CHECK_OK(store_read_begin(s, &t));
    char k[32];
    ProtobufCMessage *m = NULL;
    CHECK_OK(store_last(t, STORE_AUDIT_LOG, k, sizeof(k), &hsmvault__store__audit_entry__descriptor,
                        &m));
    c.head = m ? ((AuditEntry *)m)->seq : 0;
    kv_pb_free(m);
    CHECK_OK(store_scan(t, STORE_AUDIT_CHECKPOINTS, "",
                        &hsmvault__store__audit_checkpoint_record__descriptor, checkpoint_seen,
                        &c));
    store_read_end(t);
    CHECK(c.last_cp == c.head && c.prev_cp > 0 && c.prev_cp < c.head);
    CHECK_OK(store_update(s, tamper_update, &c));
    store_close(s);
    uint64_t want = want_seq_or_0;
    if (kind == T_TRUNCATE) want = c.head - 2;
    if (kind == T_TRUNCATE_CHECKPOINT) want = c.prev_cp + 1;
    CHECK(vaultd_proc_start(&vd, state));
    Hsmvault__V1__VerifyLogResponse *v = verify_log();
    CHECK(v != NULL && !v->ok && strcmp(v->kind, want_kind) == 0 && v->seq == want);
    if (v && (v->ok || strcmp(v->kind, want_kind) != 0 || v->seq != want))
        fprintf(stderr, "   tamper %d: want %s at %llu, got %s at %llu: %s\n", kind, want_kind,
                (unsigned long long)want, v->kind, (unsigned long long)v->seq, v->detail);
    kv_pb_free(v ? &v->base : NULL);
    CHECK(vaultd_proc_stop(&vd) == 0);
}

static void test_tampering(void)
{
    CHECK(vaultd_proc_stop(&vd) == 0); /* writes the shutdown checkpoint */
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(data_file, 1u << 30, &data, &len));
    CHECK_OK(kv_file_write_new(backup, data, len, 0600));
    free(data);
    test_tamper(T_EDIT, "changed", 3);
    test_tamper(T_DELETE, "removed", 4);
    test_tamper(T_SWAP, "reordered", 5);
    test_tamper(T_INSERT, "inserted", 2);
    test_tamper(T_TRUNCATE, "truncated", 0);
    test_tamper(T_TRUNCATE_CHECKPOINT, "truncated", 0);
    /* vaultd said so at start-up too (the store ends before the anchor). */
    char log[320];
    snprintf(log, sizeof(log), "%s.log", state);
    CHECK(file_contains(log, "records were removed; run vaultctl audit verify"));
}

int main(void)
{
    kv_test_tmpdir(tmp, sizeof(tmp), "audit");
    snprintf(state, sizeof(state), "%s/state", tmp);
    snprintf(store_dir, sizeof(store_dir), "%s/store", state);
    snprintf(data_file, sizeof(data_file), "%s/data.mdb", store_dir);
    snprintf(backup, sizeof(backup), "%s/data.mdb.orig", tmp);
    if (!vaultd_proc_start(&vd, state)) return 1;
    RUN(setup_and_operate);
    RUN(test_no_secrets);
    RUN(test_crash_between_change_and_result);
    RUN(test_crash_after_journal_append);
    RUN(test_journal_resets);
    RUN(test_sync_fails);
    RUN(test_tampering);
    if (vd.pid > 0) vaultd_proc_stop(&vd);
    int rc = kv_test_finish();
    if (rc == 0) kv_test_rmtree(tmp);
    return rc;
}
