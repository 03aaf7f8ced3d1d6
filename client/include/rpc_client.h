/*
 * rpc_client.h: the client side of the RPC adapter over gRPC C core.  Only
 * rpc_client.c includes gRPC headers.
 *
 * mTLS: the client presents its certificate and verifies the server's against
 * the configured CA.  One client may be used by many threads at once.  A
 * failed call sets the error record to the gRPC status code and message the
 * server sent (or UNAVAILABLE / DEADLINE_EXCEEDED from the transport).
 */
#ifndef RPC_CLIENT_H
#define RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

typedef struct rpc_client rpc_client;

typedef struct {
    const char *target;      /* "127.0.0.1:7443" */
    const char *ca_file;     /* PEM: CA for the server certificate */
    const char *cert_file;   /* PEM: client certificate */
    const char *key_file;    /* PEM: client private key */
    const char *server_name; /* TLS name override (e.g. "localhost"); may be NULL */
    size_t max_message;      /* 0 means 4 MiB */
} rpc_client_config;

typedef struct {
    uint8_t *data; /* malloc'd; free with rpc_client_reply_free */
    size_t len;
} rpc_client_reply;

KV_RESULT rpc_client_open(const rpc_client_config *cfg, rpc_client **out);
void rpc_client_close(rpc_client *c);
/* One unary call.  timeout_ms <= 0 means 30 s. */
KV_RESULT rpc_client_call(rpc_client *c, const char *method, const uint8_t *req, size_t req_len,
                          int64_t timeout_ms, rpc_client_reply *reply);
/* Several calls in flight from one thread (one completion queue): start
 * calls on any clients, then collect each as it finishes.  A queue belongs to
 * the thread that uses it. */
typedef struct rpc_client_queue rpc_client_queue;
KV_RESULT rpc_client_queue_open(rpc_client_queue **out);
/* Starts a call (timeout_ms <= 0: 30 s); its result comes out of
 * rpc_client_queue_next with tag.  The request bytes are copied. */
KV_RESULT rpc_client_queue_start(rpc_client_queue *q, rpc_client *c, const char *method,
                                 const uint8_t *req, size_t req_len, int64_t timeout_ms, void *tag);
/* Calls started and not yet collected. */
size_t rpc_client_queue_in_flight(const rpc_client_queue *q);
/* Waits for the next call to finish: sets *tag to its tag and returns its
 * reply (KV_SUCCESS) or its error as rpc_client_call would.
 * FAILED_PRECONDITION (and *tag NULL) when no call is in flight. */
KV_RESULT rpc_client_queue_next(rpc_client_queue *q, void **tag, rpc_client_reply *reply);
/* Cancels the calls in flight: each still comes out of rpc_client_queue_next
 * (CANCELLED), promptly. */
void rpc_client_queue_cancel(rpc_client_queue *q);
/* Cancels the calls still in flight, waits for them and frees the queue. */
void rpc_client_queue_close(rpc_client_queue *q);

/* Wipes and frees (replies may carry keys). */
void rpc_client_reply_free(rpc_client_reply *r);

void rpc_client_global_init(void);
void rpc_client_global_shutdown(void);

#endif
