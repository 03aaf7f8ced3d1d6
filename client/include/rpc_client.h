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
/* Wipes and frees (replies may carry keys). */
void rpc_client_reply_free(rpc_client_reply *r);

void rpc_client_global_init(void);
void rpc_client_global_shutdown(void);

#endif
