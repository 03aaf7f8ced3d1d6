/*
 * vaultclient.h: libvaultclient, the C API over the RPC adapter.  vaultctl and
 * tdenode use only this (and rpc_client.h underneath).
 *
 * Requests and replies are protobuf-c messages of hsmvault.v1.  Replies are
 * unpacked through the wiping allocator: free them with kv_pb_free, which
 * wipes DEKs and PFX bytes.  Errors carry the server's gRPC code and message.
 */
#ifndef VAULTCLIENT_H
#define VAULTCLIENT_H

#include <limits.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

#include "kv_result.h"
#include "kv_secret.h"

typedef struct vc vc;

/* A connection profile (a vaultctl profile file: target, server_name, ca,
 * cert, key). */
typedef struct {
    char target[256];
    char server_name[128];
    char ca[PATH_MAX];
    char cert[PATH_MAX];
    char key[PATH_MAX];
    int64_t timeout_ms; /* 0: 30 s */
} vc_profile;

KV_RESULT vc_profile_load(const char *path, vc_profile *p);
KV_RESULT vc_open(const vc_profile *p, vc **out);
void vc_close(vc *c);

/* One unary call: packs req, calls method ("/hsmvault.v1.Tenants/WhoAmI"),
 * unpacks the reply as resp_desc. */
KV_RESULT vc_call(vc *c, const char *method, const ProtobufCMessage *req,
                  const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp);

/* Storage-node conveniences: the DEK lands in a kv_secret (allocated here). */
KV_RESULT vc_database_key_create(vc *c, const char *environment_id, const char *name,
                                 char *database_id, size_t id_cap, kv_secret *dek,
                                 uint32_t *lease_seconds);
KV_RESULT vc_database_key_unwrap(vc *c, const char *environment_id, const char *database_id,
                                 kv_secret *dek, uint32_t *lease_seconds);

/* Several calls in flight from one thread, on any clients (e.g. a storage
 * node opening many databases at once): start calls, then collect each as it
 * finishes.  A queue belongs to the thread that uses it. */
typedef struct vc_queue vc_queue;
KV_RESULT vc_queue_open(vc_queue **out);
/* Cancels and collects what is still in flight, then frees the queue. */
void vc_queue_close(vc_queue *q);
size_t vc_queue_in_flight(const vc_queue *q);
/* Starts req on c; its reply, unpacked as resp_desc, comes out of
 * vc_queue_next with tag. */
KV_RESULT vc_queue_call(vc_queue *q, vc *c, const char *method, const ProtobufCMessage *req,
                        const ProtobufCMessageDescriptor *resp_desc, void *tag);
/* Waits for the next call to finish: its tag and its reply (free with
 * kv_pb_free) or its error.  FAILED_PRECONDITION (*tag NULL) if none is in
 * flight. */
KV_RESULT vc_queue_next(vc_queue *q, void **tag, ProtobufCMessage **resp);
/* Storage-node conveniences over the two above. */
KV_RESULT vc_queue_database_key_unwrap(vc_queue *q, vc *c, const char *environment_id,
                                       const char *database_id, void *tag);
KV_RESULT vc_queue_next_database_key(vc_queue *q, void **tag, kv_secret *dek, uint32_t *lease);

#endif
