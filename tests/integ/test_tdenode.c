/*
 * test_tdenode.c: the storage node end to end.  A real vaultd --dev (short
 * leases) and a real tdenode --dev (its own data directory) on loopback with
 * mTLS, driven through libvaultclient as a database engine, a tdenode admin
 * and the vault's dev principals:
 *   pages and every bad input; tampering on disk (a flipped bit, a page moved
 *   or copied from another database, a torn page, a torn journal tail);
 *   kill -9 during writes and at crash points (mid-checkpoint, after an
 *   append), with every flushed write read back and no write counter reused;
 *   power cuts (the node under the power-loss shim, restarted on what its
 *   fsyncs made durable plus any mix of the rest, torn sectors included);
 *   a new tenant key activated under continuous I/O; backup, restore and
 *   copy allowed and refused; kill -9 during a backup; the tenant lock
 *   (reads refused within the lease, the same bytes after unlock); the vault
 *   unreachable (served until the lease ends, then refused, then back);
 *   environment reset; the per-DEK write limit; restarts.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/pages.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "kv_clock.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "page.h"
#include "powercut.h"
#include "rpc_client.h"
#include "tdenode_proc.h"
#include "vaultd_proc.h"

#define URI(role) "spiffe://hsmvault.dev/" role
#define PASSWORD "correct horse battery staple"
#define LEASE "3"
#define LEASE_MS 3000
#define TDE_MAX_BATCH_TEST 256 /* Pages: at most 256 pages a call */

static char tmp[256], state[300], data_dir[400];
static vaultd_proc vd;
static tdenode_proc tn;
static vc *op, *ta, *ea, *eng, *adm;
static char tenant[64], tenant2[64], prod[64], qa[64], env_t2[64];
static char key1[64], key2[64];
static uint8_t *pfx1, *pfx2;
static size_t pfx1_len, pfx2_len;
static char db_orders[64], db_tamper[64], db_other[64], db_crash[64];

/* ---- calls ------------------------------------------------------------------- */

#define M(svc, name) "/hsmvault.v1." svc "/" name
#define P(name) "/hsmvault.v1.Pages/" name

/* One call; the reply is freed unless out is given. */
static kv_result call(vc *c, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    ProtobufCMessage *resp = NULL;
    kv_result r = vc_call(c, method, req, desc, &resp);
    if (kv_ok(r) && out != NULL)
        *out = resp;
    else
        kv_pb_free(resp);
    return r;
}

static const char *const node_extra[] = {"--checkpoint-pages", "64", NULL};

static void node_start_with(const char *const *extra)
{
    CHECK(tdenode_proc_start(&tn, "storage/tdenode", state, "tdenode", extra));
    eng = tdenode_proc_client(&tn, "engine");
    adm = tdenode_proc_client(&tn, "admin");
    CHECK(eng != NULL && adm != NULL);
}

static void node_start(void)
{
    node_start_with(node_extra);
}

static void node_clients_close(void)
{
    vc_close(eng);
    vc_close(adm);
    eng = adm = NULL;
}

static void node_stop(void)
{
    node_clients_close();
    CHECK(tdenode_proc_stop(&tn) == 0);
}

static void vault_clients(void)
{
    op = vaultd_proc_client(&vd, "operator");
    ta = vaultd_proc_client(&vd, "tenant-admin");
    ea = vaultd_proc_client(&vd, "environment-admin");
    CHECK(op && ta && ea);
}

static void vault_clients_close(void)
{
    vc_close(op);
    vc_close(ta);
    vc_close(ea);
    op = ta = ea = NULL;
}

static kv_result advance_clock(int64_t seconds)
{
    Hsmvault__V1__AdvanceClockRequest req = HSMVAULT__V1__ADVANCE_CLOCK_REQUEST__INIT;
    req.seconds = seconds;
    return call(op, "/hsmvault.v1.Testing/AdvanceClock", &req.base,
                &hsmvault__v1__advance_clock_response__descriptor, NULL);
}

/* ---- page contents: (page, version) recognisable anywhere ------------------ */

static void fill(uint8_t *data, uint64_t page_no, uint32_t version)
{
    uint64_t x = page_no * 0x9E3779B97F4A7C15ull ^ ((uint64_t)version << 32 | version);
    for (size_t i = 0; i < TDE_PAGE_DATA; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(data + i, &x, TDE_PAGE_DATA - i < 8 ? TDE_PAGE_DATA - i : 8);
    }
    memcpy(data, &page_no, 8);
    memcpy(data + 8, &version, 4);
}

/* The version a page's data was filled with, or 0 if it is not such data. */
static uint32_t version_of(const uint8_t *data, uint64_t page_no)
{
    uint32_t v;
    memcpy(&v, data + 8, 4);
    uint8_t want[TDE_PAGE_DATA];
    fill(want, page_no, v);
    return memcmp(want, data, TDE_PAGE_DATA) == 0 ? v : 0;
}

static Hsmvault__V1__NodeDatabaseRef ref_of(const char *env, const char *db)
{
    Hsmvault__V1__NodeDatabaseRef r = HSMVAULT__V1__NODE_DATABASE_REF__INIT;
    r.environment_id = (char *)env;
    r.database_id = (char *)db;
    return r;
}

static kv_result create_db(vc *c, const char *env, const char *name, char id[64])
{
    Hsmvault__V1__CreateNodeDatabaseRequest req = HSMVAULT__V1__CREATE_NODE_DATABASE_REQUEST__INIT;
    req.environment_id = (char *)env;
    req.name = (char *)name;
    Hsmvault__V1__NodeDatabase *d = NULL;
    KV_GUARD(call(c, P("CreateDatabase"), &req.base, &hsmvault__v1__node_database__descriptor,
                  (ProtobufCMessage **)&d));
    snprintf(id, 64, "%s", d->database_id);
    CHECK(strcmp(d->state, "open") == 0 && d->dek_version >= 1 &&
          strcmp(d->tenant_id, tenant) == 0);
    kv_pb_free(&d->base);
    return KV_SUCCESS;
}

static kv_result get_db(vc *c, const char *env, const char *db, Hsmvault__V1__NodeDatabase **out)
{
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(env, db);
    return call(c, P("GetDatabase"), &ref.base, &hsmvault__v1__node_database__descriptor,
                (ProtobufCMessage **)out);
}

static kv_result open_db(vc *c, const char *env, const char *db, uint32_t *dek_version)
{
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(env, db);
    Hsmvault__V1__NodeDatabase *d = NULL;
    KV_GUARD(call(c, P("OpenDatabase"), &ref.base, &hsmvault__v1__node_database__descriptor,
                  (ProtobufCMessage **)&d));
    if (dek_version != NULL) *dek_version = d->dek_version;
    kv_pb_free(&d->base);
    return KV_SUCCESS;
}

/* Writes pages nums[0..n) filled with version as one batch. */
static kv_result write_pages(vc *c, const char *env, const char *db, const uint64_t *nums, size_t n,
                             uint32_t version, bool flush)
{
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(env, db);
    Hsmvault__V1__Page *pages = calloc(n, sizeof(*pages));
    Hsmvault__V1__Page **ptrs = calloc(n, sizeof(*ptrs));
    uint8_t *data = malloc(n * TDE_PAGE_DATA);
    for (size_t i = 0; i < n; i++) {
        hsmvault__v1__page__init(&pages[i]);
        fill(data + i * TDE_PAGE_DATA, nums[i], version);
        pages[i].number = nums[i];
        pages[i].data = (ProtobufCBinaryData){TDE_PAGE_DATA, data + i * TDE_PAGE_DATA};
        ptrs[i] = &pages[i];
    }
    Hsmvault__V1__WritePagesRequest req = HSMVAULT__V1__WRITE_PAGES_REQUEST__INIT;
    req.database = &ref;
    req.n_pages = n;
    req.pages = ptrs;
    req.flush = flush;
    kv_result r =
        call(c, P("WritePages"), &req.base, &hsmvault__v1__write_pages_response__descriptor, NULL);
    free(pages);
    free(ptrs);
    free(data);
    return r;
}

static kv_result write_range(vc *c, const char *env, const char *db, uint64_t first, size_t n,
                             uint32_t version, bool flush)
{
    uint64_t nums[TDE_MAX_BATCH_TEST];
    for (size_t i = 0; i < n; i++)
        nums[i] = first + i;
    return write_pages(c, env, db, nums, n, version, flush);
}

static kv_result read_page(vc *c, const char *env, const char *db, uint64_t num, uint8_t *out)
{
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(env, db);
    Hsmvault__V1__ReadPageRequest req = HSMVAULT__V1__READ_PAGE_REQUEST__INIT;
    req.database = &ref;
    req.number = num;
    Hsmvault__V1__Page *p = NULL;
    KV_GUARD(call(c, P("ReadPage"), &req.base, &hsmvault__v1__page__descriptor,
                  (ProtobufCMessage **)&p));
    kv_result r = KV_SUCCESS;
    if (p->number != num || p->data.len != TDE_PAGE_DATA)
        r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "bad page reply");
    else
        memcpy(out, p->data.data, TDE_PAGE_DATA);
    kv_pb_free(&p->base);
    return r;
}

/* The version page num reads back as (0: not our data). */
static kv_result read_version(vc *c, const char *env, const char *db, uint64_t num, uint32_t *v)
{
    uint8_t data[TDE_PAGE_DATA];
    KV_GUARD(read_page(c, env, db, num, data));
    *v = version_of(data, num);
    return KV_SUCCESS;
}

static bool expect_version(vc *c, const char *env, const char *db, uint64_t num, uint32_t want)
{
    uint32_t v = 0;
    kv_result r = read_version(c, env, db, num, &v);
    if (kv_failed(r) || v != want) {
        fprintf(stderr, "  page %llu: want version %u, got %u (%s)\n", (unsigned long long)num,
                want, v, kv_failed(r) ? kv_error_msg() : "read ok");
        return false;
    }
    return true;
}

static bool msg_has(const char *needle)
{
    if (strstr(kv_error_msg(), needle) != NULL) return true;
    fprintf(stderr, "  message '%s' lacks '%s'\n", kv_error_msg(), needle);
    return false;
}

/* ---- set-up through the vault -------------------------------------------------- */

static kv_result make_tenant(const char *name, const char *sub, char id[64])
{
    char *contacts[] = {"secops@example.com"};
    Hsmvault__V1__CreateTenantRequest req = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    req.name = (char *)name;
    req.subscription_id = (char *)sub;
    req.n_admin_contacts = 1;
    req.admin_contacts = contacts;
    Hsmvault__V1__Tenant *t = NULL;
    KV_GUARD(call(op, M("Tenants", "CreateTenant"), &req.base, &hsmvault__v1__tenant__descriptor,
                  (ProtobufCMessage **)&t));
    snprintf(id, 64, "%s", t->id);
    kv_pb_free(&t->base);
    Hsmvault__V1__EnableSelfManagedKeysRequest en =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    en.tenant_id = id;
    return call(op, M("Tenants", "EnableSelfManagedKeys"), &en.base,
                &hsmvault__v1__tenant__descriptor, NULL);
}

static kv_result make_env(const char *t, const char *name, Hsmvault__V1__EnvironmentType ty,
                          char id[64])
{
    Hsmvault__V1__CreateEnvironmentRequest req = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    req.tenant_id = (char *)t;
    req.name = (char *)name;
    req.type = ty;
    Hsmvault__V1__Environment *e = NULL;
    KV_GUARD(call(op, M("Environments", "CreateEnvironment"), &req.base,
                  &hsmvault__v1__environment__descriptor, (ProtobufCMessage **)&e));
    snprintf(id, 64, "%s", e->id);
    kv_pb_free(&e->base);
    return KV_SUCCESS;
}

static kv_result bind(const char *principal, Hsmvault__V1__Role role, const char *t)
{
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    b.principal = (char *)principal;
    b.role = role;
    b.tenant_id = (char *)t;
    b.environment_id = "";
    Hsmvault__V1__BindRoleRequest req = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
    req.binding = &b;
    return call(op, M("Tenants", "BindRole"), &req.base, &hsmvault__v1__role_binding__descriptor,
                NULL);
}

static kv_result generate_key(const char *name, char id[64], uint8_t **pfx, size_t *pfx_len)
{
    Hsmvault__V1__GenerateKeyRequest req = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    req.tenant_id = tenant;
    req.name = (char *)name;
    req.password = (ProtobufCBinaryData){strlen(PASSWORD), (uint8_t *)PASSWORD};
    Hsmvault__V1__GenerateKeyResponse *g = NULL;
    KV_GUARD(call(ta, M("TenantKeys", "GenerateKey"), &req.base,
                  &hsmvault__v1__generate_key_response__descriptor, (ProtobufCMessage **)&g));
    snprintf(id, 64, "%s", g->key->id);
    *pfx = malloc(g->pfx.len);
    memcpy(*pfx, g->pfx.data, g->pfx.len);
    *pfx_len = g->pfx.len;
    kv_pb_free(&g->base);
    return KV_SUCCESS;
}

static kv_result apply_key(const char *env)
{
    Hsmvault__V1__ApplyKeyRequest req = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    req.environment_id = (char *)env;
    return call(ea, M("Environments", "ApplyKey"), &req.base,
                &hsmvault__v1__environment__descriptor, NULL);
}

static kv_result activate(const char *key_id)
{
    Hsmvault__V1__ActivateKeyRequest req = HSMVAULT__V1__ACTIVATE_KEY_REQUEST__INIT;
    req.tenant_id = tenant;
    req.key_id = (char *)key_id;
    return call(ta, M("TenantKeys", "ActivateKey"), &req.base,
                &hsmvault__v1__tenant_key__descriptor, NULL);
}

static Hsmvault__V1__KeyMaterial material(uint8_t *pfx, size_t len)
{
    Hsmvault__V1__KeyMaterial m;
    hsmvault__v1__key_material__init(&m);
    m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_PFX;
    m.pfx = (ProtobufCBinaryData){len, pfx};
    m.password = (ProtobufCBinaryData){strlen(PASSWORD), (uint8_t *)PASSWORD};
    return m;
}

static kv_result lock_tenant(void)
{
    Hsmvault__V1__GetLockConfirmationRequest q = HSMVAULT__V1__GET_LOCK_CONFIRMATION_REQUEST__INIT;
    q.tenant_id = tenant;
    Hsmvault__V1__LockConfirmation *lc = NULL;
    KV_GUARD(call(ta, M("TenantKeys", "GetLockConfirmation"), &q.base,
                  &hsmvault__v1__lock_confirmation__descriptor, (ProtobufCMessage **)&lc));
    Hsmvault__V1__KeyMaterial m = material(pfx2, pfx2_len);
    Hsmvault__V1__LockTenantRequest req = HSMVAULT__V1__LOCK_TENANT_REQUEST__INIT;
    req.tenant_id = tenant;
    req.active_key = &m;
    req.confirmation = lc->text;
    kv_result r = call(ta, M("TenantKeys", "LockTenant"), &req.base,
                       &hsmvault__v1__lock_tenant_response__descriptor, NULL);
    kv_pb_free(&lc->base);
    return r;
}

static kv_result unlock_all(void)
{
    Hsmvault__V1__KeyMaterial m = material(pfx2, pfx2_len);
    Hsmvault__V1__UnlockKeyRequest req = HSMVAULT__V1__UNLOCK_KEY_REQUEST__INIT;
    req.tenant_id = tenant;
    req.key_id = key2;
    req.key = &m;
    KV_GUARD(call(ta, M("TenantKeys", "UnlockKey"), &req.base,
                  &hsmvault__v1__tenant_key__descriptor, NULL));
    const char *envs[] = {prod, qa};
    for (size_t i = 0; i < 2; i++) {
        Hsmvault__V1__UnlockEnvironmentRequest u = HSMVAULT__V1__UNLOCK_ENVIRONMENT_REQUEST__INIT;
        u.environment_id = (char *)envs[i];
        KV_GUARD(call(ea, M("Environments", "UnlockEnvironment"), &u.base,
                      &hsmvault__v1__environment__descriptor, NULL));
    }
    return KV_SUCCESS;
}

static void test_setup(void)
{
    kv_test_tmpdir(tmp, sizeof(tmp), "tdenode");
    snprintf(state, sizeof(state), "%s/vault", tmp);
    snprintf(data_dir, sizeof(data_dir), "%s/tdenode", state);
    static const char *const vault_extra[] = {"--lease-seconds", LEASE, NULL};
    CHECK(vaultd_proc_start_args(&vd, state, vault_extra));
    vault_clients();
    CHECK_OK(make_tenant("contoso", "3f2a9c1e-0b7d-4e55-9a1f-7c2d8e6b4a10", tenant));
    CHECK_OK(make_tenant("fabrikam", "9b1d4c2e-7a6f-4e11-8c3d-1f2e3d4c5b6a", tenant2));
    CHECK_OK(make_env(tenant, "prod", HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION,
                      prod));
    CHECK_OK(make_env(tenant, "qa", HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX, qa));
    CHECK_OK(
        make_env(tenant2, "t2", HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX, env_t2));
    CHECK_OK(bind(URI("tenant-admin"), HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN, tenant));
    CHECK_OK(bind(URI("environment-admin"), HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN, tenant));
    CHECK_OK(bind(URI("storage-node"), HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE, tenant));
    /* The tenant's first key is active at once; production is moved to it. */
    CHECK_OK(generate_key("kek-1", key1, &pfx1, &pfx1_len));
    CHECK_OK(apply_key(prod));
    node_start();
}

/* ---- pages and bad input ------------------------------------------------------------- */

static void test_pages(void)
{
    CHECK_OK(create_db(eng, prod, "orders", db_orders));
    CHECK_OK(write_range(eng, prod, db_orders, 0, 10, 1, true));
    uint64_t one = 100;
    CHECK_OK(write_pages(eng, prod, db_orders, &one, 1, 7, false));
    CHECK_OK(write_range(eng, prod, db_orders, 2, 3, 2, false)); /* newer versions of 2..4 */
    bool ok = true;
    for (uint64_t p = 0; p < 10; p++)
        ok &= expect_version(eng, prod, db_orders, p, p >= 2 && p <= 4 ? 2 : 1);
    CHECK(ok && expect_version(eng, prod, db_orders, 100, 7));
    /* Batch reads. */
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(prod, db_orders);
    uint64_t nums[3] = {1, 3, 100};
    Hsmvault__V1__ReadPagesRequest rr = HSMVAULT__V1__READ_PAGES_REQUEST__INIT;
    rr.database = &ref;
    rr.n_numbers = 3;
    rr.numbers = nums;
    Hsmvault__V1__ReadPagesResponse *resp = NULL;
    CHECK_OK(call(eng, P("ReadPages"), &rr.base, &hsmvault__v1__read_pages_response__descriptor,
                  (ProtobufCMessage **)&resp));
    if (resp != NULL) {
        CHECK(resp->n_pages == 3 && version_of(resp->pages[0]->data.data, 1) == 1 &&
              version_of(resp->pages[1]->data.data, 3) == 2 &&
              version_of(resp->pages[2]->data.data, 100) == 7);
        kv_pb_free(&resp->base);
    }
    Hsmvault__V1__FlushResponse *fr = NULL;
    CHECK_OK(call(eng, P("Flush"), &ref.base, &hsmvault__v1__flush_response__descriptor,
                  (ProtobufCMessage **)&fr));
    kv_pb_free(fr ? &fr->base : NULL);
    Hsmvault__V1__NodeDatabase *d = NULL;
    CHECK_OK(get_db(eng, prod, db_orders, &d));
    if (d != NULL) {
        CHECK(d->page_span == 101 && d->pages_sealed == 14 && d->seal_limit == 4294967296ull &&
              d->lease_expires_at > 0 && strcmp(d->name, "orders") == 0);
        kv_pb_free(&d->base);
    }

    /* Bad input: clear errors, nothing written. */
    uint8_t data[TDE_PAGE_DATA];
    CHECK_ERR(read_page(eng, prod, db_orders, 50, data), KV_ERR_NOT_FOUND);
    CHECK(msg_has("page 50") && msg_has("never been written"));
    CHECK_ERR(read_page(eng, prod, db_orders, 1ull << 32, data), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(read_page(eng, prod, "db-0000000000000000", 0, data), KV_ERR_NOT_FOUND);
    CHECK_ERR(read_page(eng, prod, "../../etc", 0, data), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(read_page(eng, "", db_orders, 0, data), KV_ERR_INVALID_ARGUMENT);
    Hsmvault__V1__Page short_page = HSMVAULT__V1__PAGE__INIT;
    short_page.number = 1;
    short_page.data = (ProtobufCBinaryData){100, data};
    Hsmvault__V1__WritePageRequest wr = HSMVAULT__V1__WRITE_PAGE_REQUEST__INIT;
    wr.database = &ref;
    wr.page = &short_page;
    CHECK_ERR(
        call(eng, P("WritePage"), &wr.base, &hsmvault__v1__write_pages_response__descriptor, NULL),
        KV_ERR_INVALID_ARGUMENT);
    CHECK(msg_has("exactly 8144 bytes"));
    wr.page = NULL;
    CHECK_ERR(
        call(eng, P("WritePage"), &wr.base, &hsmvault__v1__write_pages_response__descriptor, NULL),
        KV_ERR_INVALID_ARGUMENT);
    uint64_t big[TDE_MAX_BATCH_TEST + 1];
    for (size_t i = 0; i < KV_ARRAY_LEN(big); i++)
        big[i] = i;
    CHECK_ERR(write_pages(eng, prod, db_orders, big, KV_ARRAY_LEN(big), 9, false),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(expect_version(eng, prod, db_orders, 1, 1)); /* the refused batch wrote nothing */
    uint64_t far = 1ull << 33;
    CHECK_ERR(write_pages(eng, prod, db_orders, &far, 1, 9, false), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(create_db(eng, prod, "", data_dir), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(create_db(eng, env_t2, "elsewhere", data_dir), KV_ERR_PERMISSION_DENIED);
    CHECK(msg_has("storage-node")); /* the vault's refusal of the node, passed on */
    CHECK_ERR(create_db(eng, prod, "orders", data_dir), KV_ERR_ALREADY_EXISTS);
    CHECK_ERR(open_db(eng, prod, "db-0000000000000000", NULL), KV_ERR_NOT_FOUND);

    /* Malformed request bytes and unknown methods, straight through the adapter. */
    rpc_client *raw = NULL;
    char ca[512], cert[512], key[512], target[64] = "";
    snprintf(ca, sizeof(ca), "%s/tls/ca.pem", state);
    snprintf(cert, sizeof(cert), "%s/tls/database-engine.pem", state);
    snprintf(key, sizeof(key), "%s/tls/database-engine.key", state);
    char addr_path[512];
    snprintf(addr_path, sizeof(addr_path), "%s/tdenode.addr", state);
    uint8_t *addr = NULL;
    size_t addr_len = 0;
    CHECK_OK(kv_file_read(addr_path, 60, &addr, &addr_len));
    if (addr != NULL)
        snprintf(target, sizeof(target), "%.*s", (int)strcspn((char *)addr, "\n"), (char *)addr);
    free(addr);
    rpc_client_config rc = {.target = target,
                            .ca_file = ca,
                            .cert_file = cert,
                            .key_file = key,
                            .server_name = "localhost"};
    CHECK_OK(rpc_client_open(&rc, &raw));
    rpc_client_reply reply;
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    CHECK_ERR(rpc_client_call(raw, P("ReadPage"), junk, sizeof(junk), 5000, &reply),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(rpc_client_call(raw, P("Nope"), junk, 0, 5000, &reply), KV_ERR_UNIMPLEMENTED);
    rpc_client_close(raw);

    /* Who may call what: the engine is no admin; a certificate of the same CA
     * without a grant (the vault's operator) may do nothing here. */
    CHECK_ERR(call(eng, P("Backup"), &ref.base, &hsmvault__v1__node_backup__descriptor, NULL),
              KV_ERR_PERMISSION_DENIED);
    CHECK(msg_has("database-engine") && msg_has("'admin' grant"));
    vc_profile prof;
    char prof_path[512];
    snprintf(prof_path, sizeof(prof_path), "%s/clients/tdenode-engine.conf", state);
    CHECK_OK(vc_profile_load(prof_path, &prof));
    snprintf(prof.cert, sizeof(prof.cert), "%s/tls/operator.pem", state);
    snprintf(prof.key, sizeof(prof.key), "%s/tls/operator.key", state);
    vc *stranger = NULL;
    CHECK_OK(vc_open(&prof, &stranger));
    CHECK_ERR(read_page(stranger, prod, db_orders, 1, data), KV_ERR_PERMISSION_DENIED);
    CHECK(msg_has(URI("operator")));
    Hsmvault__V1__ListNodeDatabasesRequest ld = HSMVAULT__V1__LIST_NODE_DATABASES_REQUEST__INIT;
    CHECK_ERR(call(stranger, P("ListDatabases"), &ld.base,
                   &hsmvault__v1__list_node_databases_response__descriptor, NULL),
              KV_ERR_PERMISSION_DENIED);
    vc_close(stranger);
    Hsmvault__V1__ListNodeDatabasesResponse *all = NULL;
    CHECK_OK(call(eng, P("ListDatabases"), &ld.base,
                  &hsmvault__v1__list_node_databases_response__descriptor,
                  (ProtobufCMessage **)&all));
    CHECK(all != NULL && all->n_databases == 1);
    kv_pb_free(all ? &all->base : NULL);
}

/* ---- tampering with the files ------------------------------------------------------- */

static void db_file(char *out, size_t cap, const char *env, const char *db, const char *leaf)
{
    snprintf(out, cap, "%s/db/%s/%s/%s", data_dir, env, db, leaf);
}

static void file_patch(const char *path, off_t off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, bytes, n, off) == (ssize_t)n);
    if (fd >= 0) close(fd);
}

static void file_get(const char *path, off_t off, void *bytes, size_t n)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, bytes, n, off) == (ssize_t)n);
    if (fd >= 0) close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void test_tamper(void)
{
    CHECK_OK(create_db(eng, prod, "tamper", db_tamper));
    CHECK_OK(create_db(eng, prod, "other", db_other));
    /* 100 pages: the flush checkpoints them into the page file. */
    CHECK_OK(write_range(eng, prod, db_tamper, 0, 50, 1, true));
    CHECK_OK(write_range(eng, prod, db_tamper, 50, 50, 1, true));
    CHECK_OK(write_range(eng, prod, db_other, 0, 70, 1, true));
    /* Two batches in the journal: A flushed, B never flushed. */
    CHECK_OK(write_range(eng, prod, db_tamper, 100, 2, 1, true));
    CHECK_OK(write_range(eng, prod, db_tamper, 102, 2, 1, false));
    node_stop();

    char pages[600], other[600], journal[600];
    db_file(pages, sizeof(pages), prod, db_tamper, "pages");
    db_file(other, sizeof(other), prod, db_other, "pages");
    db_file(journal, sizeof(journal), prod, db_tamper, "journal");
    CHECK(file_size(pages) == 100 * 8192);
    uint8_t buf[TDE_PAGE_SIZE], flip;
    /* A flipped bit in page 5. */
    file_get(pages, 5 * 8192 + 1000, &flip, 1);
    flip ^= 0x10;
    file_patch(pages, 5 * 8192 + 1000, &flip, 1);
    /* Page 7's bytes copied over page 8. */
    file_get(pages, 7 * 8192, buf, sizeof(buf));
    file_patch(pages, 8 * 8192, buf, sizeof(buf));
    /* Page 2 of another database (same environment, same tenant key). */
    file_get(other, 2 * 8192, buf, sizeof(buf));
    file_patch(pages, 2 * 8192, buf, sizeof(buf));
    /* A torn page: its second 4 KiB never reached the disk. */
    memset(buf, 0, 4096);
    file_patch(pages, 10 * 8192 + 4096, buf, 4096);
    /* Batch B torn by a power cut: the journal ends inside its last record. */
    off_t jlen = file_size(journal);
    CHECK(jlen == 64 + 4 * (64 + 8192));
    CHECK(truncate(journal, jlen - 5000) == 0);

    node_start();
    uint8_t data[TDE_PAGE_DATA];
    CHECK_ERR(read_page(eng, prod, db_tamper, 5, data), KV_ERR_DATA_LOSS);
    CHECK(msg_has("page 5") && msg_has(db_tamper) && msg_has("failed authentication"));
    CHECK_ERR(read_page(eng, prod, db_tamper, 8, data), KV_ERR_DATA_LOSS);
    CHECK(msg_has("page 8 holds the sealed bytes of page 7"));
    CHECK_ERR(read_page(eng, prod, db_tamper, 2, data), KV_ERR_DATA_LOSS);
    CHECK(msg_has("page 2") && msg_has(db_tamper));
    CHECK_ERR(read_page(eng, prod, db_tamper, 10, data), KV_ERR_DATA_LOSS);
    CHECK(msg_has("page 10"));
    bool ok = true;
    for (uint64_t p = 0; p < 102; p++)
        if (p != 2 && p != 5 && p != 8 && p != 10) ok &= expect_version(eng, prod, db_tamper, p, 1);
    CHECK(ok);
    CHECK_ERR(read_page(eng, prod, db_tamper, 102, data), KV_ERR_NOT_FOUND);
    CHECK_ERR(read_page(eng, prod, db_tamper, 103, data), KV_ERR_NOT_FOUND);
    CHECK(kv_test_sh("grep -q 'dropped 2 journal records' %s", tn.log) == 0);
    CHECK(kv_test_sh("grep -q 'page 5 failed authentication' %s", tn.log) == 0);
    /* The other database is untouched; rewriting heals the damaged pages. */
    CHECK(expect_version(eng, prod, db_other, 2, 1));
    uint64_t bad[4] = {2, 5, 8, 10};
    CHECK_OK(write_pages(eng, prod, db_tamper, bad, 4, 3, true));
    for (size_t i = 0; i < 4; i++)
        CHECK(expect_version(eng, prod, db_tamper, bad[i], 3));
}

/* ---- kill -9 during writes ------------------------------------------------------------ */

#define CRASH_PAGES 200
static uint32_t acked[CRASH_PAGES]; /* version acknowledged after a flush, per page */
static uint32_t inflight_v;         /* the batch in flight when the node died */
static uint64_t inflight[16];
static size_t n_inflight;
static atomic_int writer_stop;
static uint32_t next_version = 100;

static void *crash_writer(void *arg)
{
    (void)arg;
    unsigned seed = 12345;
    while (!atomic_load(&writer_stop)) {
        uint32_t v = next_version++;
        uint64_t nums[16];
        for (size_t i = 0; i < 16; i++) {
            bool dup;
            do {
                seed = seed * 1103515245u + 12345u;
                nums[i] = (seed >> 8) % CRASH_PAGES;
                dup = false;
                for (size_t j = 0; j < i; j++)
                    dup |= nums[j] == nums[i];
            } while (dup);
        }
        memcpy(inflight, nums, sizeof(nums));
        n_inflight = 16;
        inflight_v = v;
        if (kv_failed(write_pages(eng, prod, db_crash, nums, 16, v, true))) break;
        for (size_t i = 0; i < 16; i++)
            acked[nums[i]] = v;
        n_inflight = 0;
    }
    return NULL;
}

/* Every page reads back as acknowledged, or as the batch in flight when the
 * node died (all of it or none: a batch is atomic); what came back becomes
 * the acknowledged state for the next round. */
static void crash_verify(const char *when)
{
    int bad = 0, landed = 0;
    uint32_t now[CRASH_PAGES];
    for (uint64_t p = 0; p < CRASH_PAGES; p++) {
        bool in_flight = false;
        for (size_t i = 0; i < n_inflight; i++)
            in_flight |= inflight[i] == p;
        uint32_t v = 0;
        uint8_t data[TDE_PAGE_DATA];
        kv_result r = read_page(eng, prod, db_crash, p, data);
        now[p] = 0;
        if (kv_failed(r) && kv_error_code() == KV_ERR_NOT_FOUND && acked[p] == 0) continue;
        if (kv_ok(r)) v = version_of(data, p);
        now[p] = v;
        if (in_flight && v == inflight_v) landed++;
        if (kv_failed(r) || v == 0 || (v != acked[p] && !(in_flight && v == inflight_v))) {
            if (bad++ < 5)
                fprintf(stderr,
                        "  %s: page %llu reads %s version %u, acknowledged %u (in flight: %zu "
                        "pages of version %u%s)\n",
                        when, (unsigned long long)p, kv_failed(r) ? kv_error_msg() : "ok", v,
                        acked[p], n_inflight, inflight_v, in_flight ? ", this one" : "");
        }
    }
    CHECK(bad == 0);
    CHECK(landed == 0 || landed == (int)n_inflight);
    fprintf(stderr, "  %s: %d pages checked; the batch in flight %s\n", when, CRASH_PAGES,
            n_inflight == 0 ? "(none)"
            : landed        ? "landed whole"
                            : "left no trace");
    memcpy(acked, now, sizeof(acked));
    n_inflight = 0;
}

/* Every sealed page in the database's files: no (epoch, counter) seals two
 * different pages (the same sealed page may sit in the journal and the page
 * file at once); returns the highest counter. */
typedef struct {
    uint64_t nonce, page_no;
    uint8_t tag[16];
} seen_page;

static uint64_t counters_on_disk(void)
{
    char pages[600], journal[600];
    db_file(pages, sizeof(pages), prod, db_crash, "pages");
    db_file(journal, sizeof(journal), prod, db_crash, "journal");
    size_t cap = 4096, n = 0;
    seen_page *seen = malloc(cap * sizeof(*seen));
    uint64_t max = 0;
    const char *files[2] = {pages, journal};
    for (int f = 0; f < 2; f++) {
        off_t size = file_size(files[f]);
        off_t start = f == 0 ? 0 : 64 + 64, step = f == 0 ? 8192 : 64 + 8192;
        for (off_t off = start; off + 8192 <= size; off += step) {
            uint8_t pg[TDE_PAGE_SIZE];
            page_header ph;
            file_get(files[f], off, pg, sizeof(pg));
            if (kv_failed(page_header_parse(pg, sizeof(pg), &ph))) continue;
            if (n == cap) seen = realloc(seen, (cap *= 2) * sizeof(*seen));
            seen[n].nonce = (uint64_t)ph.nonce_epoch << 40 ^ ph.counter;
            seen[n].page_no = ph.page_no;
            memcpy(seen[n].tag, pg + TDE_PAGE_SIZE - 16, 16);
            n++;
            if (ph.counter > max) max = ph.counter;
        }
    }
    int reused = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            reused += seen[i].nonce == seen[j].nonce &&
                      (seen[i].page_no != seen[j].page_no || memcmp(seen[i].tag, seen[j].tag, 16));
    CHECK(reused == 0 && n > 0);
    free(seen);
    kv_error_clear();
    return max;
}

static void crash_round(const char *crash_at, int run_ms)
{
    if (crash_at != NULL) {
        node_stop();
        setenv("TDENODE_TEST_CRASH_AT", crash_at, 1);
        node_start();
        unsetenv("TDENODE_TEST_CRASH_AT");
    }
    atomic_store(&writer_stop, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, crash_writer, NULL) == 0);
    if (crash_at == NULL) {
        struct timespec ts = {run_ms / 1000, (run_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        tdenode_proc_kill(&tn);
    } else {
        CHECK(tdenode_proc_wait_killed(&tn)); /* dies at its crash point */
    }
    atomic_store(&writer_stop, 1);
    pthread_join(th, NULL);
    node_clients_close();
    uint64_t max_before = counters_on_disk();
    node_start();
    crash_verify(crash_at != NULL ? crash_at : "kill -9");
    /* A write after the restart takes a counter above every one on disk. */
    uint64_t p = CRASH_PAGES + 1;
    CHECK_OK(write_pages(eng, prod, db_crash, &p, 1, next_version++, true));
    node_stop();
    uint64_t max_after = counters_on_disk();
    CHECK(max_after > max_before);
    node_start();
}

static void test_kill_during_writes(void)
{
    CHECK_OK(create_db(eng, prod, "crash", db_crash));
    crash_round(NULL, 1500);
    crash_round(NULL, 700);
    crash_round("checkpoint-in-place:40", 0);
    CHECK(kv_test_sh("grep -q \"test crash point 'checkpoint-in-place'\" %s", tn.log) == 0);
    crash_round("journal-append:25", 0);
    crash_round("checkpoint-synced:2", 0);
}

/* ---- power loss ------------------------------------------------------------------------ */

/* One power cut: tdenode runs under the power-loss shim (powercut.h) while
 * the crash writer writes and flushes; kill -9; then the node restarts on a
 * tree a power cut at that moment could have left (seed 0: only what the
 * fsyncs made durable; other seeds: any mix of the unsynced rest, torn
 * sectors included).  Every page acknowledged after a flush must read back
 * exactly, the batch in flight whole or not at all, and no write counter
 * seen on disk before the cut may be used again after it. */
static void power_cut_round(unsigned seed, int run_ms)
{
    const char *shim = powercut_shim_path();
    CHECK(shim != NULL);
    char store[400], real[450];
    snprintf(store, sizeof(store), "%s/powercut-%u", tmp, seed);
    snprintf(real, sizeof(real), "%s.before-cut-%u", data_dir, seed);
    CHECK(mkdir(store, 0700) == 0);
    node_stop();
    kv_test_preload_begin(shim);
    setenv("POWERCUT_ROOT", data_dir, 1);
    setenv("POWERCUT_STORE", store, 1);
    node_start();
    kv_test_preload_end();
    unsetenv("POWERCUT_ROOT");
    unsetenv("POWERCUT_STORE");

    atomic_store(&writer_stop, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, crash_writer, NULL) == 0);
    struct timespec ts = {run_ms / 1000, (run_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    tdenode_proc_kill(&tn);
    atomic_store(&writer_stop, 1);
    pthread_join(th, NULL);
    node_clients_close();
    uint64_t max_before = counters_on_disk(); /* what the cut may have lost, too */

    CHECK(rename(data_dir, real) == 0);
    CHECK(powercut_image(store, real, data_dir, seed));
    node_start();
    char when[64];
    snprintf(when, sizeof(when), "power cut (seed %u)", seed);
    crash_verify(when);
    uint64_t p = CRASH_PAGES + 1;
    CHECK_OK(write_pages(eng, prod, db_crash, &p, 1, next_version++, true));
    node_stop();
    CHECK(counters_on_disk() > max_before);
    node_start();
    kv_test_rmtree(real);
    kv_test_rmtree(store);
}

static void test_power_cut(void)
{
    power_cut_round(0, 900);
    power_cut_round(1, 700);
    power_cut_round(2, 1100);
    power_cut_round(3, 500);
}

/* ---- a new tenant key under continuous I/O --------------------------------------- */

static atomic_int io_stop, io_ok, io_failed;
static char io_fail_msg[512];

static void *io_loop(void *arg)
{
    const char *db = arg;
    uint32_t v = 500;
    while (!atomic_load(&io_stop)) {
        uint64_t p = (uint64_t)(v % 32);
        kv_result r = write_pages(eng, prod, db, &p, 1, v, (v % 8) == 0);
        uint32_t got = 0;
        if (kv_ok(r)) r = read_version(eng, prod, db, p, &got);
        if (kv_ok(r) && got == v) {
            atomic_fetch_add(&io_ok, 1);
        } else {
            if (atomic_fetch_add(&io_failed, 1) == 0)
                snprintf(io_fail_msg, sizeof(io_fail_msg), "%s", kv_error_msg());
        }
        v++;
    }
    return NULL;
}

static void test_activation_under_io(void)
{
    CHECK_OK(generate_key("kek-2", key2, &pfx2, &pfx2_len));
    CHECK_OK(advance_clock(24 * 3600)); /* seed 001: one activation per 24 h */
    atomic_store(&io_stop, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, io_loop, db_orders) == 0);
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    int before = atomic_load(&io_ok);
    CHECK_OK(activate(key2));
    int during = atomic_load(&io_ok);
    /* Keep going across at least two renewals under the new key. */
    ts = (struct timespec){LEASE_MS / 1000 + 1, 0};
    nanosleep(&ts, NULL);
    atomic_store(&io_stop, 1);
    pthread_join(th, NULL);
    fprintf(stderr,
            "  I/O during the activation: %d ok before, %d by its end, %d in all, %d failed%s%s\n",
            before, during, atomic_load(&io_ok), atomic_load(&io_failed),
            atomic_load(&io_failed) ? ": " : "", io_fail_msg);
    CHECK(atomic_load(&io_failed) == 0 && atomic_load(&io_ok) > during && before > 0);
    /* Nothing on the node changed: the same DEK (version 1) opens every page. */
    Hsmvault__V1__NodeDatabase *d = NULL;
    CHECK_OK(get_db(eng, prod, db_orders, &d));
    if (d != NULL) CHECK(d->dek_version == 1 && strcmp(d->state, "open") == 0);
    kv_pb_free(d ? &d->base : NULL);
    CHECK(expect_version(eng, prod, db_orders, 100, 7));
}

/* ---- backup, restore, copy ------------------------------------------------------------ */

static kv_result backup(vc *c, const char *env, const char *db, char id[64])
{
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(env, db);
    Hsmvault__V1__NodeBackup *b = NULL;
    KV_GUARD(call(c, P("Backup"), &ref.base, &hsmvault__v1__node_backup__descriptor,
                  (ProtobufCMessage **)&b));
    snprintf(id, 64, "%s", b->backup_id);
    CHECK(strcmp(b->database_id, db) == 0 && strlen(b->pages_sha256) == 64 &&
          strcmp(b->created_by, URI("tde-admin")) == 0);
    kv_pb_free(&b->base);
    return KV_SUCCESS;
}

static size_t backup_count(const char *env, const char *db)
{
    Hsmvault__V1__ListNodeBackupsRequest req = HSMVAULT__V1__LIST_NODE_BACKUPS_REQUEST__INIT;
    req.environment_id = (char *)env;
    req.database_id = (char *)db;
    Hsmvault__V1__ListNodeBackupsResponse *l = NULL;
    CHECK_OK(call(adm, P("ListBackups"), &req.base,
                  &hsmvault__v1__list_node_backups_response__descriptor, (ProtobufCMessage **)&l));
    size_t n = l ? l->n_backups : 0;
    kv_pb_free(l ? &l->base : NULL);
    return n;
}

static kv_result restore(const char *backup_id, const char *env, const char *db, const char *name,
                         char out_db[64])
{
    Hsmvault__V1__RestoreRequest req = HSMVAULT__V1__RESTORE_REQUEST__INIT;
    req.backup_id = (char *)backup_id;
    req.target_environment_id = (char *)env;
    req.target_database_id = (char *)(db ? db : "");
    req.new_database_name = (char *)(name ? name : "");
    Hsmvault__V1__NodeDatabase *d = NULL;
    KV_GUARD(call(adm, P("Restore"), &req.base, &hsmvault__v1__node_database__descriptor,
                  (ProtobufCMessage **)&d));
    if (out_db != NULL) snprintf(out_db, 64, "%s", d->database_id);
    kv_pb_free(&d->base);
    return KV_SUCCESS;
}

static kv_result copy_db(const char *env, const char *db, const char *to_env, const char *to_db,
                         const char *name, char out_db[64])
{
    Hsmvault__V1__NodeDatabaseRef src = ref_of(env, db);
    Hsmvault__V1__CopyRequest req = HSMVAULT__V1__COPY_REQUEST__INIT;
    req.source = &src;
    req.target_environment_id = (char *)to_env;
    req.target_database_id = (char *)(to_db ? to_db : "");
    req.new_database_name = (char *)(name ? name : "");
    Hsmvault__V1__NodeDatabase *d = NULL;
    KV_GUARD(call(adm, P("Copy"), &req.base, &hsmvault__v1__node_database__descriptor,
                  (ProtobufCMessage **)&d));
    if (out_db != NULL) snprintf(out_db, 64, "%s", d->database_id);
    kv_pb_free(&d->base);
    return KV_SUCCESS;
}

static char bk_orders[64], db_restored[64], db_qa_copy[64];

static void test_backup_restore_copy(void)
{
    /* Pages 0..9 at versions 1/2, 100 at 7, 0..31 rewritten by the I/O loop. */
    uint32_t at_backup[101] = {0};
    for (uint64_t p = 0; p <= 100; p++) {
        uint8_t data[TDE_PAGE_DATA];
        if (kv_ok(read_page(eng, prod, db_orders, p, data))) at_backup[p] = version_of(data, p);
    }
    kv_error_clear();
    CHECK_OK(backup(adm, prod, db_orders, bk_orders));
    CHECK(backup_count(prod, db_orders) == 1 && backup_count("", "") == 1);
    /* The backup holds sealed pages and no plaintext. */
    char path[700];
    snprintf(path, sizeof(path), "%s/backups/%s/%s/%s/pages", data_dir, prod, db_orders, bk_orders);
    uint8_t *bytes = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(path, 64u << 20, &bytes, &len));
    uint8_t plain[TDE_PAGE_DATA];
    fill(plain, 100, 7);
    bool leak = false;
    for (size_t off = 0; bytes != NULL && off + 64 <= len; off++)
        leak |= memcmp(bytes + off, plain + 100, 64) == 0;
    CHECK(!leak && len % 8192 == 0 && len > 0);
    free(bytes);

    /* Change the database, then restore it in place: the old pages return. */
    CHECK_OK(write_range(eng, prod, db_orders, 0, 5, 900, true));
    uint64_t new_page = 150;
    CHECK_OK(write_pages(eng, prod, db_orders, &new_page, 1, 900, true));
    CHECK_OK(restore(bk_orders, prod, db_orders, NULL, NULL));
    bool ok = true;
    for (uint64_t p = 0; p <= 100; p++)
        if (at_backup[p] != 0) ok &= expect_version(eng, prod, db_orders, p, at_backup[p]);
    CHECK(ok);
    uint8_t data[TDE_PAGE_DATA];
    CHECK_ERR(read_page(eng, prod, db_orders, 150, data), KV_ERR_NOT_FOUND);
    /* Into a new database of the same environment: re-sealed under its DEK. */
    CHECK_OK(restore(bk_orders, prod, NULL, "orders-restored", db_restored));
    CHECK(strcmp(db_restored, db_orders) != 0 && expect_version(eng, prod, db_restored, 100, 7) &&
          expect_version(eng, prod, db_restored, 3, at_backup[3]));
    /* qa is on the service key: neither restore nor copy may go there. */
    CHECK_ERR(restore(bk_orders, qa, NULL, "nope", NULL), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("the vault refuses this restore") && msg_has("customer-managed key"));
    CHECK_ERR(copy_db(prod, db_orders, qa, NULL, "nope", NULL), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("the vault refuses this copy"));
    /* A copy never goes into the environment it comes from. */
    CHECK_ERR(copy_db(prod, db_orders, prod, NULL, "nope", NULL), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("another environment"));
    /* Another tenant's environment: the vault does not even let the node ask. */
    CHECK_ERR(copy_db(prod, db_orders, env_t2, NULL, "nope", NULL), KV_ERR_PERMISSION_DENIED);
    /* Bad requests. */
    CHECK_ERR(restore("bk-0000000000000000", prod, NULL, "x", NULL), KV_ERR_NOT_FOUND);
    CHECK_ERR(restore(bk_orders, prod, db_orders, "both", NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(restore(bk_orders, prod, NULL, NULL, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(restore("../../x", prod, NULL, "x", NULL), KV_ERR_INVALID_ARGUMENT);
    Hsmvault__V1__RestoreRequest rq = HSMVAULT__V1__RESTORE_REQUEST__INIT;
    rq.backup_id = bk_orders;
    rq.target_environment_id = prod;
    rq.new_database_name = "by-engine";
    CHECK_ERR(call(eng, P("Restore"), &rq.base, &hsmvault__v1__node_database__descriptor, NULL),
              KV_ERR_PERMISSION_DENIED);

    /* With the same customer-managed key applied to qa, both are allowed. */
    CHECK_OK(apply_key(qa));
    CHECK_OK(copy_db(prod, db_orders, qa, NULL, "orders-qa", db_qa_copy));
    CHECK(expect_version(eng, qa, db_qa_copy, 100, 7));
    CHECK_OK(restore(bk_orders, qa, db_qa_copy, NULL, NULL));
    CHECK(expect_version(eng, qa, db_qa_copy, 3, at_backup[3]));
    /* The same sealed page does not open in the copy: it was re-sealed. */
    char a[600], b[600];
    db_file(a, sizeof(a), prod, db_orders, "pages");
    db_file(b, sizeof(b), qa, db_qa_copy, "pages");
    uint8_t pa[TDE_PAGE_SIZE], pb[TDE_PAGE_SIZE];
    CHECK_OK(write_range(eng, qa, db_qa_copy, 200, 64, 1, true)); /* checkpoint */
    CHECK_OK(write_range(eng, prod, db_orders, 200, 64, 1, true));
    file_get(a, 100 * 8192, pa, sizeof(pa));
    file_get(b, 100 * 8192, pb, sizeof(pb));
    CHECK(memcmp(pa + 32, pb + 32, 64) != 0);
}

static void test_kill_during_backup(void)
{
    node_stop();
    setenv("TDENODE_TEST_CRASH_AT", "backup-pages", 1);
    node_start();
    unsetenv("TDENODE_TEST_CRASH_AT");
    char id[64];
    CHECK_ERR(backup(adm, prod, db_orders, id), KV_ERR_UNAVAILABLE);
    CHECK(tdenode_proc_wait_killed(&tn));
    node_clients_close();
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/backups/%s/%s", data_dir, prod, db_orders);
    CHECK(kv_test_sh("ls %s | grep -q '\\.tmp$'", dir) == 0); /* the half backup */
    node_start();
    CHECK(kv_test_sh("ls %s | grep -q '\\.tmp$'", dir) != 0); /* swept */
    CHECK(backup_count(prod, db_orders) == 1);
    CHECK(expect_version(eng, prod, db_orders, 100, 7));
    CHECK_OK(backup(adm, prod, db_orders, id));
    CHECK(backup_count(prod, db_orders) == 2);
}

/* Reads page num until it succeeds or timeout_ms pass (after an unlock or a
 * vault restart the node takes the DEK again on its own or at the next try). */
static kv_result read_until_ok(const char *env, const char *db, uint64_t num, uint8_t *out,
                               int timeout_ms)
{
    int64_t start = kv_clock_mono_ms();
    kv_result r;
    while (kv_failed(r = read_page(eng, env, db, num, out)) &&
           kv_clock_mono_ms() - start < timeout_ms) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return r;
}

/* ---- the tenant lock ---------------------------------------------------------------- */

static void test_lock_and_unlock(void)
{
    uint8_t before[TDE_PAGE_DATA], after[TDE_PAGE_DATA];
    CHECK_OK(read_page(eng, prod, db_orders, 100, before));
    /* A third customer-managed environment that stays locked (and is
     * deleted 28 days later). */
    char legacy[64] = "", db_legacy[64] = "";
    CHECK_OK(make_env(tenant, "legacy", HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX,
                      legacy));
    CHECK_OK(apply_key(legacy));
    CHECK_OK(create_db(eng, legacy, "archive", db_legacy));
    CHECK_OK(write_range(eng, legacy, db_legacy, 0, 1, 1, true));
    CHECK_OK(advance_clock(72 * 3600)); /* seed 001: no lock within 72 h of a key change */
    CHECK_OK(lock_tenant());
    int64_t locked = kv_clock_mono_ms(), refused_at = 0;
    kv_code code = KV_OK;
    char msg[512] = "";
    /* The first refusal comes within one lease (renewals come at half of
     * it; on a loaded machine the lease's end may come first: UNAVAILABLE),
     * and the vault's reason follows. */
    while (kv_clock_mono_ms() - locked < 3 * LEASE_MS && code != KV_ERR_FAILED_PRECONDITION) {
        uint8_t d[TDE_PAGE_DATA];
        kv_result r = read_page(eng, prod, db_orders, 100, d);
        if (kv_failed(r)) {
            if (refused_at == 0) refused_at = kv_clock_mono_ms();
            code = kv_error_code();
            snprintf(msg, sizeof(msg), "%s", kv_error_msg());
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "  reads refused %lld ms after the lock: %s\n",
            (long long)(refused_at - locked), msg);
    CHECK(refused_at > 0 && refused_at - locked <= LEASE_MS + 500);
    CHECK(code == KV_ERR_FAILED_PRECONDITION && strstr(msg, "locked") != NULL &&
          strstr(msg, db_orders) != NULL);
    CHECK_ERR(write_range(eng, prod, db_orders, 0, 1, 1000, true), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("locked"));
    /* qa is customer-managed too: locked as well, even without traffic. */
    uint8_t d[TDE_PAGE_DATA];
    CHECK_ERR(read_page(eng, qa, db_qa_copy, 100, d), KV_ERR_FAILED_PRECONDITION);
    Hsmvault__V1__NodeDatabase *st = NULL;
    CHECK_OK(get_db(eng, prod, db_orders, &st));
    if (st != NULL)
        CHECK(strcmp(st->state, "refused") == 0 && strstr(st->reason, "locked") != NULL &&
              st->lease_expires_at == 0);
    kv_pb_free(st ? &st->base : NULL);
    char id[64];
    CHECK_ERR(backup(adm, prod, db_orders, id), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(restore(bk_orders, prod, db_orders, NULL, NULL), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("locked"));
    CHECK_ERR(create_db(eng, prod, "while-locked", id), KV_ERR_FAILED_PRECONDITION);
    /* Unlock (an hour later): key, then each environment; the same bytes. */
    CHECK_OK(advance_clock(3600));
    CHECK_OK(unlock_all());
    CHECK_OK(read_until_ok(prod, db_orders, 100, after, 5000));
    CHECK(memcmp(before, after, sizeof(before)) == 0);
    CHECK_OK(read_until_ok(qa, db_qa_copy, 100, d, 5000));
    CHECK(version_of(d, 100) == 7);
    CHECK_OK(write_range(eng, prod, db_orders, 300, 1, 1, true));
    /* The environment left locked: refused still, and after 28 days the
     * vault deletes it (its DEKs with it): refused for good. */
    CHECK_ERR(read_page(eng, legacy, db_legacy, 0, d), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("locked"));
    CHECK_OK(advance_clock(28 * 86400));
    struct timespec ts = {1, 100 * 1000 * 1000};
    nanosleep(&ts, NULL); /* past the once-a-second retry */
    CHECK_ERR(read_page(eng, legacy, db_legacy, 0, d), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("deleted"));
}

/* ---- the vault unreachable ---------------------------------------------------------- */

static void test_vault_unreachable(void)
{
    CHECK(expect_version(eng, prod, db_orders, 100, 7));
    vault_clients_close();
    vaultd_proc_kill(&vd);
    int64_t killed = kv_clock_mono_ms(), refused_at = 0;
    kv_code code = KV_OK;
    while (kv_clock_mono_ms() - killed < 3 * LEASE_MS) {
        uint8_t d[TDE_PAGE_DATA];
        if (kv_failed(read_page(eng, prod, db_orders, 100, d))) {
            refused_at = kv_clock_mono_ms();
            code = kv_error_code();
            break;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "  served %lld ms after the vault died, then: %s\n",
            (long long)(refused_at - killed), kv_error_msg());
    /* Served until the lease ended (at least what was left of it after the
     * last renewal, half a lease), then refused. */
    CHECK(refused_at > 0 && refused_at - killed >= LEASE_MS / 2 - 300 &&
          refused_at - killed <= LEASE_MS + 500);
    CHECK(code == KV_ERR_UNAVAILABLE && msg_has("cannot be reached"));
    static const char *const vault_extra[] = {"--lease-seconds", LEASE, NULL};
    CHECK(vaultd_proc_start_args(&vd, state, vault_extra)); /* another port: --dev follows it */
    vault_clients();
    int64_t back = kv_clock_mono_ms();
    kv_result r = KV_FAILURE;
    uint8_t d[TDE_PAGE_DATA];
    while (kv_clock_mono_ms() - back < 15000 &&
           kv_failed(r = read_page(eng, prod, db_orders, 100, d))) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "  serving again %lld ms after the vault restarted\n",
            (long long)(kv_clock_mono_ms() - back));
    CHECK_OK(r);
    CHECK(version_of(d, 100) == 7);
}

/* ---- reset -------------------------------------------------------------------------- */

static void test_reset(void)
{
    char id[64];
    CHECK_OK(backup(adm, qa, db_qa_copy, id));
    CHECK(backup_count(qa, "") == 1);
    Hsmvault__V1__NodeResetRequest req = HSMVAULT__V1__NODE_RESET_REQUEST__INIT;
    req.environment_id = qa;
    req.confirmation_name = "prod";
    CHECK_ERR(call(adm, P("ResetEnvironment"), &req.base,
                   &hsmvault__v1__node_reset_response__descriptor, NULL),
              KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("confirm"));
    CHECK(expect_version(eng, qa, db_qa_copy, 100, 7)); /* nothing happened */
    CHECK_ERR(call(eng, P("ResetEnvironment"), &req.base,
                   &hsmvault__v1__node_reset_response__descriptor, NULL),
              KV_ERR_PERMISSION_DENIED);
    req.confirmation_name = "qa";
    Hsmvault__V1__NodeResetResponse *resp = NULL;
    CHECK_OK(call(adm, P("ResetEnvironment"), &req.base,
                  &hsmvault__v1__node_reset_response__descriptor, (ProtobufCMessage **)&resp));
    if (resp != NULL) CHECK(resp->databases_deleted == 1 && resp->backups_deleted == 1);
    kv_pb_free(resp ? &resp->base : NULL);
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/db/%s/%s", data_dir, qa, db_qa_copy);
    CHECK(access(dir, F_OK) != 0);
    CHECK(backup_count(qa, "") == 0);
    uint8_t d[TDE_PAGE_DATA];
    CHECK_ERR(read_page(eng, qa, db_qa_copy, 100, d), KV_ERR_FAILED_PRECONDITION);
    CHECK(msg_has("reset"));
    /* Opened again: empty, under the fresh DEK (version 2), back on the service key. */
    uint32_t v = 0;
    CHECK_OK(open_db(eng, qa, db_qa_copy, &v));
    CHECK(v == 2);
    CHECK_ERR(read_page(eng, qa, db_qa_copy, 100, d), KV_ERR_NOT_FOUND);
    CHECK_OK(write_range(eng, qa, db_qa_copy, 0, 1, 1, true));
    CHECK(expect_version(eng, qa, db_qa_copy, 0, 1));
    /* A backup taken before the reset is gone with it; prod is untouched. */
    CHECK_ERR(restore(id, qa, db_qa_copy, NULL, NULL), KV_ERR_NOT_FOUND);
    CHECK(expect_version(eng, prod, db_orders, 100, 7));
}

/* ---- the AES-GCM limit, restarts -------------------------------------------------- */

static void test_write_limit_and_restart(void)
{
    node_stop();
    static const char *const limited[] = {"--checkpoint-pages", "64", "--dek-write-limit", "1024",
                                          NULL};
    node_start_with(limited);
    char db[64];
    CHECK_OK(create_db(eng, prod, "limit", db));
    for (int i = 0; i < 4; i++)
        CHECK_OK(write_range(eng, prod, db, (uint64_t)i * 256, 256, 1, i == 3));
    CHECK_ERR(write_range(eng, prod, db, 0, 1, 2, true), KV_ERR_RESOURCE_EXHAUSTED);
    CHECK(msg_has("limit") && msg_has("re-keyed") && msg_has(db));
    CHECK(expect_version(eng, prod, db, 1023, 1)); /* reads go on */
    node_stop();
    node_start();
    /* Everything survives a clean restart. */
    CHECK(expect_version(eng, prod, db, 5, 1) && expect_version(eng, prod, db_orders, 100, 7) &&
          expect_version(eng, prod, db_restored, 100, 7) &&
          expect_version(eng, prod, db_tamper, 5, 3));
    CHECK_OK(write_range(eng, prod, db, 0, 1, 2, true)); /* the limit was that node's setting */
    Hsmvault__V1__ListNodeDatabasesRequest ld = HSMVAULT__V1__LIST_NODE_DATABASES_REQUEST__INIT;
    Hsmvault__V1__ListNodeDatabasesResponse *all = NULL;
    CHECK_OK(call(eng, P("ListDatabases"), &ld.base,
                  &hsmvault__v1__list_node_databases_response__descriptor,
                  (ProtobufCMessage **)&all));
    CHECK(all != NULL && all->n_databases == 8);
    kv_pb_free(all ? &all->base : NULL);
    /* A second tdenode on the same data directory is refused. */
    tdenode_proc second;
    CHECK(!tdenode_proc_start(&second, "storage/tdenode", state, "second", node_extra));
    CHECK(kv_test_sh("grep -q 'another tdenode is using the data directory' %s", second.log) == 0);
}

int main(void)
{
    RUN(test_setup);
    if (kv_test_failed == 0) {
        RUN(test_pages);
        RUN(test_tamper);
        RUN(test_kill_during_writes);
        RUN(test_power_cut);
        RUN(test_activation_under_io);
        RUN(test_backup_restore_copy);
        RUN(test_kill_during_backup);
        RUN(test_lock_and_unlock);
        RUN(test_vault_unreachable);
        RUN(test_reset);
        RUN(test_write_limit_and_restart);
    }
    node_clients_close();
    tdenode_proc_kill(&tn);
    vault_clients_close();
    vaultd_proc_stop(&vd);
    if (kv_test_failed == 0) kv_test_rmtree(tmp);
    return kv_test_finish();
}
