/*
 * rpc_server.h: the server side of the RPC adapter over gRPC C core.  Only
 * rpc_server.c includes gRPC headers.
 *
 * mTLS only: the server requires and verifies a client certificate against
 * the configured CA; the principal is the certificate's SAN URI, else its CN.
 * Several worker threads, each with its own completion queue, serve one call
 * at a time each.  Unknown methods answer UNIMPLEMENTED.  Handlers get the
 * request bytes and return response bytes; a failed handler's error record
 * (code + message) becomes the gRPC status.
 */
#ifndef RPC_SERVER_H
#define RPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

typedef struct rpc_server rpc_server;

typedef struct {
    const char *principal;    /* SAN URI, else CN; never NULL in a handler */
    const char *method;       /* "/hsmvault.v1.TenantKeys/GenerateKey" */
    int64_t deadline_mono_ms; /* CLOCK_MONOTONIC ms; INT64_MAX when none */
} rpc_ctx;

typedef struct {
    uint8_t *data; /* malloc'd by the handler; freed by the adapter */
    size_t len;
    bool sensitive; /* wipe before free (carries key material) */
} rpc_reply;

typedef kv_result (*rpc_handler_fn)(void *app, const rpc_ctx *ctx, const uint8_t *req,
                                    size_t req_len, rpc_reply *reply);

typedef struct {
    const char *method; /* full path */
    rpc_handler_fn fn;
} rpc_method;

/* Runs around every handler call (e.g. the audit log): must call fn (or
 * refuse) and may replace its result. */
typedef kv_result (*rpc_around_fn)(void *app, rpc_handler_fn fn, const rpc_ctx *ctx,
                                   const uint8_t *req, size_t req_len, rpc_reply *reply);

typedef struct {
    const char *listen_addr; /* "127.0.0.1:7443"; port 0 picks a free port */
    const char *ca_file;     /* PEM: CA that client certificates must chain to */
    const char *cert_file;   /* PEM: server certificate (chain) */
    const char *key_file;    /* PEM: server private key */
    unsigned workers;        /* worker threads of the general pool; 0 means 4 */
    /* Hot paths (e.g. DEK unwraps), NULL-terminated list of method paths of
     * the table (may be NULL): each is served by a pool of its own, so slow
     * calls of other methods never hold it up, and its request is read
     * together with the call (one completion-queue round trip less). */
    const char *const *dedicated;
    unsigned dedicated_workers; /* per dedicated method; 0 means the same as workers */
    size_t max_message;         /* max send/receive message bytes; 0 means 4 MiB */
    rpc_around_fn around;       /* NULL: handlers are called directly */
} rpc_server_config;

/* Binds, starts the workers and returns; *out runs until rpc_server_stop. */
KV_RESULT rpc_server_start(const rpc_server_config *cfg, const rpc_method *methods,
                           size_t n_methods, void *app, rpc_server **out);
/* The bound port (useful with port 0). */
int rpc_server_port(const rpc_server *s);
/* Shuts down: stops accepting, cancels calls in flight after a grace period,
 * joins the workers and frees everything. */
void rpc_server_stop(rpc_server *s);

/* KV_ERR_DEADLINE_EXCEEDED if the caller's deadline has passed. */
KV_RESULT rpc_ctx_check_deadline(const rpc_ctx *ctx);

/* Blocks SIGINT/SIGTERM in the calling thread (call before rpc_global_init and
 * before starting any thread) and waits for one of them in rpc_wait_signal. */
void rpc_signals_block(void);
int rpc_wait_signal(void);

/* grpc_init()/grpc_shutdown() wrappers, so callers need no gRPC header. */
void rpc_global_init(void);
void rpc_global_shutdown(void);

#endif
