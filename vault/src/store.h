/*
 * store.h: the vault's LMDB store.  Only store.c includes lmdb.h.
 *
 * Tables hold protobuf-encoded records (proto/hsmvault/store/records.proto):
 *   tenants      <tenant_id>                    TenantRecord
 *   keys         <tenant_id>/<key_id>           KeyRecord (tenant keys and service keys)
 *   environments <environment_id>               EnvironmentRecord
 *   databases    <environment_id>/<database_id> DatabaseRecord
 *   principals   <principal>                    PrincipalRecord
 *   meta         schema_version, ...            raw bytes
 *   outbox       <time>-<id>                    OutboxRecord (notifications to deliver)
 *   import_keys  <subscription_id>/<version>    ImportKeyRecord (BYOK import keys)
 *   audit_log    <seq, 20 digits>               AuditEntry (hash-chained audit records)
 *   audit_checkpoints <seq, 20 digits>          AuditCheckpointRecord (signed heads)
 *
 * Every state change is one write transaction (store_update), committed on
 * the thread that began it; MDB_MAP_FULL grows the map and retries the whole
 * update, so update functions must only touch the store (token work happens
 * before, outside the transaction).  Durable sync: no MDB_NOSYNC.
 */
#ifndef STORE_H
#define STORE_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

#include "kv_result.h"

typedef enum {
    STORE_TENANTS = 0,
    STORE_KEYS,
    STORE_ENVIRONMENTS,
    STORE_DATABASES,
    STORE_PRINCIPALS,
    STORE_META,
    STORE_OUTBOX,
    STORE_IMPORT_KEYS,       /* <subscription_id>/<version %010u>: ImportKeyRecord (BYOK) */
    STORE_AUDIT_LOG,         /* <seq %020llu>: AuditEntry */
    STORE_AUDIT_CHECKPOINTS, /* <seq %020llu>: AuditCheckpointRecord */
    STORE_AUDIT_STATE,       /* raw: "journal" = "<generation hex>:<records folded>" */
    STORE_TABLE_COUNT
} store_table;

typedef struct vault_store vault_store;
typedef struct store_txn store_txn;

/* Opens (creating if needed) the store in directory dir (mode 0700). */
KV_RESULT store_open(const char *dir, vault_store **out);
void store_close(vault_store *s);

/* Read-only snapshot; end it on the same thread. */
KV_RESULT store_read_begin(vault_store *s, store_txn **out);
void store_read_end(store_txn *t);

typedef kv_result (*store_update_fn)(store_txn *t, void *ctx);
/* Runs fn in one write transaction and commits it.  fn may run more than once
 * (after the map grows), so it must be free of side effects outside the
 * store.  If fn fails nothing is written. */
KV_RESULT store_update(vault_store *s, store_update_fn fn, void *ctx);

/* Gets key from table and unpacks it as desc (NOT_FOUND if absent, DATA_LOSS
 * if the stored bytes do not decode).  Free *out with kv_pb_free. */
KV_RESULT store_get(store_txn *t, store_table table, const char *key,
                    const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out);
KV_RESULT store_put(store_txn *t, store_table table, const char *key, const ProtobufCMessage *msg);
/* Deletes key; NOT_FOUND if absent. */
KV_RESULT store_del(store_txn *t, store_table table, const char *key);
KV_RESULT store_exists(store_txn *t, store_table table, const char *key, bool *exists);

/* Calls fn for every record whose key starts with prefix ("" for all), in key
 * order.  fn may keep the message by setting *msg = NULL (then it frees it
 * with kv_pb_free); otherwise it is freed after fn returns.  A failing fn
 * stops the scan and its error is returned. */
typedef kv_result (*store_scan_fn)(const char *key, ProtobufCMessage **msg, void *ctx);
KV_RESULT store_scan(store_txn *t, store_table table, const char *prefix,
                     const ProtobufCMessageDescriptor *desc, store_scan_fn fn, void *ctx);

/* Records gathered by store_collect; the list owns them until
 * store_list_free.  Items keep the scan's key order. */
typedef struct {
    ProtobufCMessage **items;
    size_t n, cap;
} store_list;
/* Keeps a record when it returns true (NULL keeps every record). */
typedef bool (*store_keep_fn)(const ProtobufCMessage *msg, const void *arg);
/* store_scan into out: every record under prefix that keep accepts. */
KV_RESULT store_collect(store_txn *t, store_table table, const char *prefix,
                        const ProtobufCMessageDescriptor *desc, store_keep_fn keep, const void *arg,
                        store_list *out);
void store_list_free(store_list *l);

/* Runs after a successful update fn, inside its transaction and before the
 * commit, whenever the transaction wrote a table other than the audit tables
 * (touched: bit 1u << table per table written).  The audit log uses it to
 * append the record of a state change to the change's own transaction.  It
 * may run more than once for one update (map growth), like fn. */
typedef kv_result (*store_commit_hook_fn)(store_txn *t, unsigned touched, void *arg);
void store_set_commit_hook(vault_store *s, store_commit_hook_fn fn, void *arg);
const char *store_table_name(store_table table);

/* The last record of table (in key order): its key into key (cap bytes) and
 * the record; NOT_FOUND when the table is empty. */
KV_RESULT store_last(store_txn *t, store_table table, char *key, size_t cap,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out);
/* store_scan from the first key >= from (to the end of the table). */
KV_RESULT store_scan_from(store_txn *t, store_table table, const char *from,
                          const ProtobufCMessageDescriptor *desc, store_scan_fn fn, void *ctx);

/* Raw string values (the meta and audit_state tables): out gets the value
 * NUL-terminated; DATA_LOSS if it does not fit in cap. */
KV_RESULT store_raw_get(store_txn *t, store_table table, const char *key, char *out, size_t cap);
KV_RESULT store_raw_put(store_txn *t, store_table table, const char *key, const char *value);
KV_RESULT store_meta_get(store_txn *t, const char *key, char *out, size_t cap);
KV_RESULT store_meta_put(store_txn *t, const char *key, const char *value);

/* Current map size in bytes (for tests of growth). */
size_t store_map_size(vault_store *s);
/* Test hook: forces the next map size (bytes) used at open. */
void store_set_initial_map_size(size_t bytes);

#endif
