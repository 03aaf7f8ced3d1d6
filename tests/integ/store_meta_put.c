/*
 * store_meta_put.c: test helper: store_meta_put DIR KEY VALUE writes one meta
 * entry into the vault store in DIR (vaultd stopped), in one store_update.
 * integ_token_audit uses it to give a store the audit log's key ids the way
 * the audit log does.
 */
#include <stdio.h>

#include "store.h"

typedef struct {
    const char *key, *value;
} meta_put;

static kv_result put(store_txn *t, void *ctx)
{
    const meta_put *m = ctx;
    return store_meta_put(t, m->key, m->value);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: store_meta_put DIR KEY VALUE\n");
        return 2;
    }
    vault_store *s = NULL;
    meta_put m = {argv[2], argv[3]};
    kv_result r = store_open(argv[1], &s);
    if (kv_ok(r)) r = store_update(s, put, &m);
    if (s != NULL) store_close(s);
    if (kv_failed(r)) {
        fprintf(stderr, "store_meta_put: %s\n", kv_error_msg());
        return 1;
    }
    return 0;
}
