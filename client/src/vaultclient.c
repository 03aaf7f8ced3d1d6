/*
 * vaultclient.c: libvaultclient.  Must never leave a request (passwords,
 * PFX) or a reply (DEKs) in memory unwiped.
 */
#include "vaultclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsmvault/v1/key_access.pb-c.h"
#include "kv_config.h"
#include "kv_pb.h"
#include "rpc_client.h"

struct vc {
    rpc_client *rpc;
    int64_t timeout_ms;
};

static kv_result vc_profile_set(const char *key, const char *value, void *arg)
{
    vc_profile *p = arg;
    if (strcmp(key, "target") == 0) return kv_config_str(key, value, p->target, sizeof(p->target));
    if (strcmp(key, "server_name") == 0)
        return kv_config_str(key, value, p->server_name, sizeof(p->server_name));
    if (strcmp(key, "ca") == 0) return kv_config_str(key, value, p->ca, sizeof(p->ca));
    if (strcmp(key, "cert") == 0) return kv_config_str(key, value, p->cert, sizeof(p->cert));
    if (strcmp(key, "key") == 0) return kv_config_str(key, value, p->key, sizeof(p->key));
    if (strcmp(key, "timeout_ms") == 0) {
        unsigned long v;
        KV_GUARD(kv_config_uint(key, value, 1, 3600000, &v));
        p->timeout_ms = (int64_t)v;
        return KV_SUCCESS;
    }
    KV_BAIL(KV_ERR_INVALID_ARGUMENT, "unknown profile setting '%s'", key);
}

kv_result vc_profile_load(const char *path, vc_profile *p)
{
    memset(p, 0, sizeof(*p));
    KV_GUARD(kv_config_parse(path, vc_profile_set, p));
    KV_ENSURE(p->target[0] && p->ca[0] && p->cert[0] && p->key[0], KV_ERR_INVALID_ARGUMENT,
              "profile %s needs target, ca, cert and key", path);
    return KV_SUCCESS;
}

kv_result vc_open(const vc_profile *p, vc **out)
{
    vc *c = calloc(1, sizeof(*c));
    KV_ENSURE(c != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    rpc_client_config rc = {.target = p->target,
                            .ca_file = p->ca,
                            .cert_file = p->cert,
                            .key_file = p->key,
                            .server_name = p->server_name[0] ? p->server_name : NULL};
    if (kv_failed(rpc_client_open(&rc, &c->rpc))) {
        free(c);
        return KV_FAILURE;
    }
    c->timeout_ms = p->timeout_ms;
    *out = c;
    return KV_SUCCESS;
}

void vc_close(vc *c)
{
    if (c == NULL) return;
    rpc_client_close(c->rpc);
    free(c);
}

kv_result vc_call(vc *c, const char *method, const ProtobufCMessage *req,
                  const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    KV_GUARD(kv_pb_pack(req, &buf, &len));
    rpc_client_reply reply = {0};
    kv_result r = rpc_client_call(c->rpc, method, buf, len, c->timeout_ms, &reply);
    kv_pb_buf_free(buf, len); /* requests may carry passwords */
    KV_GUARD(r);
    r = kv_pb_unpack(resp_desc, reply.data, reply.len, "reply", resp);
    rpc_client_reply_free(&reply);
    return r;
}

static kv_result vc_take_dek(Hsmvault__V1__DatabaseKey *k, kv_secret *dek, uint32_t *lease)
{
    KV_ENSURE(k->dek.len == 32, KV_ERR_DATA_LOSS, "the vault returned a %zu-byte DEK", k->dek.len);
    KV_GUARD(kv_secret_from(dek, k->dek.data, k->dek.len));
    if (lease != NULL) *lease = k->lease_seconds;
    return KV_SUCCESS;
}

kv_result vc_database_key_create(vc *c, const char *environment_id, const char *name,
                                 char *database_id, size_t id_cap, kv_secret *dek, uint32_t *lease)
{
    Hsmvault__V1__CreateDatabaseKeyRequest req = HSMVAULT__V1__CREATE_DATABASE_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)environment_id;
    req.database_name = (char *)(uintptr_t)name;
    Hsmvault__V1__DatabaseKey *k = NULL;
    KV_GUARD(vc_call(c, "/hsmvault.v1.KeyAccess/CreateDatabaseKey", &req.base,
                     &hsmvault__v1__database_key__descriptor, (ProtobufCMessage **)&k));
    kv_result r = KV_SUCCESS;
    if (k->database == NULL)
        r = kv_error_set(KV_ERR_DATA_LOSS, __FILE__, __LINE__, "the vault returned no database");
    else if (snprintf(database_id, id_cap, "%s", k->database->id) >= (int)id_cap)
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "database id buffer too small");
    if (kv_ok(r)) r = vc_take_dek(k, dek, lease);
    kv_pb_free(&k->base);
    return r;
}

kv_result vc_database_key_unwrap(vc *c, const char *environment_id, const char *database_id,
                                 kv_secret *dek, uint32_t *lease)
{
    Hsmvault__V1__UnwrapDatabaseKeyRequest req = HSMVAULT__V1__UNWRAP_DATABASE_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)environment_id;
    req.database_id = (char *)(uintptr_t)database_id;
    Hsmvault__V1__DatabaseKey *k = NULL;
    KV_GUARD(vc_call(c, "/hsmvault.v1.KeyAccess/UnwrapDatabaseKey", &req.base,
                     &hsmvault__v1__database_key__descriptor, (ProtobufCMessage **)&k));
    kv_result r = vc_take_dek(k, dek, lease);
    kv_pb_free(&k->base);
    return r;
}

/* ---- several calls in flight from one thread ---------------------------- */

struct vc_queue {
    rpc_client_queue *rpc;
};

/* What a queued call must remember until it is collected. */
typedef struct {
    void *tag;
    const ProtobufCMessageDescriptor *resp_desc;
} vc_queued;

kv_result vc_queue_open(vc_queue **out)
{
    vc_queue *q = calloc(1, sizeof(*q));
    KV_ENSURE(q != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (kv_failed(rpc_client_queue_open(&q->rpc))) {
        free(q);
        return KV_FAILURE;
    }
    *out = q;
    return KV_SUCCESS;
}

void vc_queue_close(vc_queue *q)
{
    if (q == NULL) return;
    /* Cancel and collect what is still in flight so every bookkeeping entry
     * is freed. */
    rpc_client_queue_cancel(q->rpc);
    while (rpc_client_queue_in_flight(q->rpc) > 0) {
        void *t = NULL;
        rpc_client_reply reply;
        if (kv_ok(rpc_client_queue_next(q->rpc, &t, &reply))) rpc_client_reply_free(&reply);
        free(t);
    }
    rpc_client_queue_close(q->rpc);
    free(q);
}

size_t vc_queue_in_flight(const vc_queue *q)
{
    return q != NULL ? rpc_client_queue_in_flight(q->rpc) : 0;
}

kv_result vc_queue_call(vc_queue *q, vc *c, const char *method, const ProtobufCMessage *req,
                        const ProtobufCMessageDescriptor *resp_desc, void *tag)
{
    KV_ENSURE(q != NULL && c != NULL && resp_desc != NULL, KV_ERR_INVALID_ARGUMENT,
              "no queue, client or reply type");
    vc_queued *e = malloc(sizeof(*e));
    KV_ENSURE(e != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    e->tag = tag;
    e->resp_desc = resp_desc;
    uint8_t *buf = NULL;
    size_t len = 0;
    kv_result r = kv_pb_pack(req, &buf, &len);
    if (kv_ok(r)) {
        r = rpc_client_queue_start(q->rpc, c->rpc, method, buf, len, c->timeout_ms, e);
        kv_pb_buf_free(buf, len); /* requests may carry passwords */
    }
    if (kv_failed(r)) free(e);
    return r;
}

kv_result vc_queue_next(vc_queue *q, void **tag, ProtobufCMessage **resp)
{
    KV_ENSURE(q != NULL && tag != NULL && resp != NULL, KV_ERR_INVALID_ARGUMENT,
              "no queue, tag or reply");
    *tag = NULL;
    *resp = NULL;
    void *t = NULL;
    rpc_client_reply reply = {0};
    kv_result r = rpc_client_queue_next(q->rpc, &t, &reply);
    vc_queued *e = t;
    if (e == NULL) return r; /* nothing was in flight */
    *tag = e->tag;
    if (kv_ok(r)) r = kv_pb_unpack(e->resp_desc, reply.data, reply.len, "reply", resp);
    rpc_client_reply_free(&reply);
    free(e);
    return r;
}

kv_result vc_queue_database_key_unwrap(vc_queue *q, vc *c, const char *environment_id,
                                       const char *database_id, void *tag)
{
    Hsmvault__V1__UnwrapDatabaseKeyRequest req = HSMVAULT__V1__UNWRAP_DATABASE_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)environment_id;
    req.database_id = (char *)(uintptr_t)database_id;
    return vc_queue_call(q, c, "/hsmvault.v1.KeyAccess/UnwrapDatabaseKey", &req.base,
                         &hsmvault__v1__database_key__descriptor, tag);
}

kv_result vc_queue_next_database_key(vc_queue *q, void **tag, kv_secret *dek, uint32_t *lease)
{
    Hsmvault__V1__DatabaseKey *k = NULL;
    KV_GUARD(vc_queue_next(q, tag, (ProtobufCMessage **)&k));
    kv_result r = vc_take_dek(k, dek, lease);
    kv_pb_free(&k->base);
    return r;
}
