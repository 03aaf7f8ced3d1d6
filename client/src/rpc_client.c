/*
 * rpc_client.c: the client side of the RPC adapter over the gRPC C core
 * (Debian libgrpc 1.51).  The only client file that includes gRPC headers.
 *
 * One channel per client, shared by every thread; each synchronous call has
 * its own pluck completion queue, so calls from different threads never
 * meet.  A queue (rpc_client_queue) lets one thread keep many calls in
 * flight, on any clients, and collect them as they finish.
 *
 * What it must never do: connect without verifying the server against the
 * configured CA, keep the private key PEM or request/reply bytes (which may
 * carry passwords, PFX files or DEKs) in freed memory unwiped, or turn a
 * failed call into anything but the status code and message that came back.
 */
#include "rpc_client.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "kv_absl.h"
#include "kv_file.h"
#include "kv_secret.h"

#define RPC_DEFAULT_MAX_MESSAGE ((size_t)4 << 20)
#define RPC_DEFAULT_TIMEOUT_MS 30000
#define RPC_PEM_MAX ((size_t)1 << 20)
#define RPC_METHOD_MAX 512

struct rpc_client {
    grpc_channel *channel;
    char *server_name; /* owned; referenced by the channel args at creation */
};

/* grpc_arg.key is a plain char *: keep the names in writable arrays so no
 * string literal loses its const-ness (clean under -Wwrite-strings). */
static char rpc_arg_max_recv[] = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
static char rpc_arg_max_send[] = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
static char rpc_arg_name_override[] = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
static char rpc_arg_compression[] = GRPC_ARG_ENABLE_PER_MESSAGE_COMPRESSION;
static char rpc_arg_bdp_probe[] = GRPC_ARG_HTTP2_BDP_PROBE;

static void rpc_free_wiped(void *p, size_t len)
{
    kv_wipe(p, len);
    free(p);
}

kv_result rpc_client_open(const rpc_client_config *cfg, rpc_client **out)
{
    KV_ENSURE(cfg != NULL && out != NULL, KV_ERR_INVALID_ARGUMENT, "no client configuration");
    KV_ENSURE(cfg->target != NULL && cfg->target[0] != '\0', KV_ERR_INVALID_ARGUMENT,
              "no server address");
    KV_ENSURE(cfg->ca_file != NULL, KV_ERR_INVALID_ARGUMENT,
              "no CA file to verify the server with");
    KV_ENSURE(cfg->key_file == NULL || cfg->cert_file != NULL, KV_ERR_INVALID_ARGUMENT,
              "a client key needs its certificate");
    size_t max_message = cfg->max_message ? cfg->max_message : RPC_DEFAULT_MAX_MESSAGE;
    KV_ENSURE(max_message <= INT_MAX, KV_ERR_INVALID_ARGUMENT, "max message size %zu is above %d",
              max_message, INT_MAX);

    kv_result r = KV_SUCCESS;
    uint8_t *ca = NULL, *cert = NULL, *key = NULL;
    size_t ca_len = 0, cert_len = 0, key_len = 0;
    rpc_client *c = calloc(1, sizeof(*c));
    KV_ENSURE(c != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    /* Reference counted: the client works whether or not the caller ran
     * rpc_client_global_init. */
    kv_absl_deadlock_detection_off();
    grpc_init();

    KV_GUARD_GOTO(kv_file_read(cfg->ca_file, RPC_PEM_MAX, &ca, &ca_len), r, fail);
    if (cfg->key_file != NULL) {
        KV_GUARD_GOTO(kv_file_read(cfg->cert_file, RPC_PEM_MAX, &cert, &cert_len), r, fail);
        KV_GUARD_GOTO(kv_file_read(cfg->key_file, RPC_PEM_MAX, &key, &key_len), r, fail);
    }
    if (cfg->server_name != NULL) {
        c->server_name = strdup(cfg->server_name);
        KV_ENSURE_GOTO(c->server_name != NULL, r, fail, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }

    grpc_ssl_pem_key_cert_pair pair = {.private_key = (const char *)key,
                                       .cert_chain = (const char *)cert};
    /* gRPC copies the PEM strings; ours are wiped right after. */
    grpc_channel_credentials *creds =
        grpc_ssl_credentials_create((const char *)ca, key != NULL ? &pair : NULL, NULL, NULL);
    if (key != NULL) kv_wipe(key, key_len);
    KV_ENSURE_GOTO(creds != NULL, r, fail, KV_ERR_INVALID_ARGUMENT,
                   "gRPC refused the TLS configuration (%s)", cfg->ca_file);

    /* As on the server: no compression of messages that carry passwords or
     * keys, no bandwidth probing for messages this small.  The name override,
     * when there is one, comes last. */
    grpc_arg args[5] = {
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_max_recv, .value.integer = (int)max_message},
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_max_send, .value.integer = (int)max_message},
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_compression, .value.integer = 0},
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_bdp_probe, .value.integer = 0},
        {.type = GRPC_ARG_STRING, .key = rpc_arg_name_override, .value.string = c->server_name},
    };
    grpc_channel_args chargs = {.num_args = c->server_name != NULL ? 5 : 4, .args = args};
    c->channel = grpc_channel_create(cfg->target, creds, &chargs);
    grpc_channel_credentials_release(creds);
    KV_ENSURE_GOTO(c->channel != NULL, r, fail, KV_ERR_INVALID_ARGUMENT,
                   "cannot create a channel to %s", cfg->target);
    free(ca);
    free(cert);
    free(key);
    *out = c;
    return KV_SUCCESS;

fail:
    if (key != NULL) kv_wipe(key, key_len);
    free(key);
    free(ca);
    free(cert);
    free(c->server_name);
    free(c);
    grpc_shutdown();
    return r;
}

void rpc_client_close(rpc_client *c)
{
    if (c == NULL) return;
    grpc_channel_destroy(c->channel);
    free(c->server_name);
    free(c);
    grpc_shutdown();
}

/* Copies the reply out of gRPC's buffers, wiping them as it goes. */
static kv_result rpc_reply_take(grpc_byte_buffer *bb, rpc_client_reply *reply)
{
    size_t len = grpc_byte_buffer_length(bb);
    uint8_t *buf = malloc(len + 1);
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte reply", len);
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb)) {
        free(buf);
        KV_BAIL(KV_ERR_INTERNAL, "cannot read the reply message");
    }
    size_t off = 0;
    grpc_slice slice;
    while (grpc_byte_buffer_reader_next(&reader, &slice)) {
        size_t n = GRPC_SLICE_LENGTH(slice);
        uint8_t *p = GRPC_SLICE_START_PTR(slice);
        if (n > len - off) n = len - off; /* cannot happen: length() is the sum */
        memcpy(buf + off, p, n);
        kv_wipe(p, GRPC_SLICE_LENGTH(slice));
        off += n;
        grpc_slice_unref(slice);
    }
    grpc_byte_buffer_reader_destroy(&reader);
    buf[off] = 0;
    reply->data = buf;
    reply->len = off;
    return KV_SUCCESS;
}

/* One unary call's gRPC state, from start to result.  Sync calls keep it on
 * the stack with a pluck queue of their own; queued calls malloc it and it
 * is its own completion tag. */
typedef struct rpc_call_state {
    grpc_call *call;
    grpc_byte_buffer *send_bb, *recv_bb;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string;
    void *tag;                          /* the caller's, for queued calls */
    struct rpc_call_state *prev, *next; /* a queue's calls in flight */
    char method[RPC_METHOD_MAX];
} rpc_call_state;

/* Checks the arguments, then creates the call on cq and starts its one batch
 * (tag: st).  On failure nothing is left to clean up. */
static kv_result rpc_call_start(rpc_client *c, const char *method, const uint8_t *req,
                                size_t req_len, int64_t timeout_ms, grpc_completion_queue *cq,
                                rpc_call_state *st)
{
    KV_ENSURE(c != NULL, KV_ERR_INVALID_ARGUMENT, "no client");
    KV_ENSURE(method != NULL && method[0] == '/' && strlen(method) < RPC_METHOD_MAX,
              KV_ERR_INVALID_ARGUMENT, "a method path must start with '/'");
    KV_ENSURE(req != NULL || req_len == 0, KV_ERR_INVALID_ARGUMENT, "no request bytes");
    if (timeout_ms <= 0) timeout_ms = RPC_DEFAULT_TIMEOUT_MS;
    void *tag = st->tag;
    memset(st, 0, sizeof(*st));
    st->tag = tag;
    snprintf(st->method, sizeof(st->method), "%s", method);

    /* The request goes to gRPC as our own wiped-on-release copy: the caller's
     * buffer may be freed as soon as we return, gRPC may hold it longer. */
    grpc_slice body;
    if (req_len == 0) {
        body = grpc_empty_slice();
    } else {
        uint8_t *copy = malloc(req_len);
        KV_ENSURE(copy != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte request",
                  req_len);
        memcpy(copy, req, req_len);
        body = grpc_slice_new_with_len(copy, req_len, rpc_free_wiped);
    }
    st->send_bb = grpc_raw_byte_buffer_create(&body, 1);
    grpc_slice_unref(body);

    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    grpc_slice method_slice = grpc_slice_from_copied_string(method);
    st->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method_slice,
                                        NULL, deadline, NULL);
    grpc_slice_unref(method_slice);
    grpc_metadata_array_init(&st->initial_md);
    grpc_metadata_array_init(&st->trailing_md);
    st->status = GRPC_STATUS_UNKNOWN;
    st->details = grpc_empty_slice();

    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = st->send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &st->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &st->recv_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &st->trailing_md;
    ops[5].data.recv_status_on_client.status = &st->status;
    ops[5].data.recv_status_on_client.status_details = &st->details;
    ops[5].data.recv_status_on_client.error_string = &st->error_string;

    grpc_call_error e = st->call != NULL
                            ? grpc_call_start_batch(st->call, ops, KV_ARRAY_LEN(ops), st, NULL)
                            : GRPC_CALL_ERROR;
    if (e != GRPC_CALL_OK) {
        kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "cannot start the call to %s", method);
        kv_error_detail("grpc_call_start_batch: %s", grpc_call_error_to_string(e));
        if (st->call != NULL) grpc_call_unref(st->call);
        grpc_byte_buffer_destroy(st->send_bb);
        grpc_metadata_array_destroy(&st->initial_md);
        grpc_metadata_array_destroy(&st->trailing_md);
        return KV_FAILURE;
    }
    return KV_SUCCESS;
}

/* Turns a completed call into its result (reply or error record) and frees
 * its gRPC state.  completed: the batch's completion said success. */
static kv_result rpc_call_finish(rpc_call_state *st, bool completed, rpc_client_reply *reply)
{
    kv_result r = KV_SUCCESS;
    memset(reply, 0, sizeof(*reply));
    if (!completed) {
        r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "the call to %s did not complete",
                         st->method);
    } else if (st->status != GRPC_STATUS_OK) {
        kv_code code = (st->status > GRPC_STATUS_OK && st->status <= GRPC_STATUS_UNAUTHENTICATED)
                           ? (kv_code)st->status
                           : KV_ERR_UNKNOWN;
        r = kv_error_set(code, __FILE__, __LINE__, "%.*s", (int)GRPC_SLICE_LENGTH(st->details),
                         (const char *)GRPC_SLICE_START_PTR(st->details));
        if (st->error_string != NULL) kv_error_detail("%s: %s", st->method, st->error_string);
    } else if (st->recv_bb == NULL) {
        r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__,
                         "the server sent no reply message for %s", st->method);
    } else {
        r = rpc_reply_take(st->recv_bb, reply);
    }
    if (st->recv_bb != NULL) grpc_byte_buffer_destroy(st->recv_bb);
    grpc_byte_buffer_destroy(st->send_bb);
    grpc_slice_unref(st->details);
    gpr_free((void *)(uintptr_t)st->error_string);
    grpc_metadata_array_destroy(&st->initial_md);
    grpc_metadata_array_destroy(&st->trailing_md);
    grpc_call_unref(st->call);
    return r;
}

kv_result rpc_client_call(rpc_client *c, const char *method, const uint8_t *req, size_t req_len,
                          int64_t timeout_ms, rpc_client_reply *reply)
{
    KV_ENSURE(reply != NULL, KV_ERR_INVALID_ARGUMENT, "no reply");
    memset(reply, 0, sizeof(*reply));
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    KV_ENSURE(cq != NULL, KV_ERR_RESOURCE_EXHAUSTED, "cannot create a completion queue");
    rpc_call_state st = {0};
    kv_result r = rpc_call_start(c, method, req, req_len, timeout_ms, cq, &st);
    if (kv_ok(r)) {
        /* The call's own deadline bounds this wait. */
        grpc_event ev =
            grpc_completion_queue_pluck(cq, &st, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        r = rpc_call_finish(&st, ev.type == GRPC_OP_COMPLETE && ev.success, reply);
    }
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, &st, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    return r;
}

/* ---- several calls in flight from one thread ---------------------------- */

struct rpc_client_queue {
    grpc_completion_queue *cq;
    rpc_call_state *in_flight; /* list of started, unfinished calls */
    size_t n_in_flight;
};

kv_result rpc_client_queue_open(rpc_client_queue **out)
{
    rpc_client_queue *q = calloc(1, sizeof(*q));
    KV_ENSURE(q != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    grpc_init();
    q->cq = grpc_completion_queue_create_for_next(NULL);
    if (q->cq == NULL) {
        grpc_shutdown();
        free(q);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "cannot create a completion queue");
    }
    *out = q;
    return KV_SUCCESS;
}

kv_result rpc_client_queue_start(rpc_client_queue *q, rpc_client *c, const char *method,
                                 const uint8_t *req, size_t req_len, int64_t timeout_ms, void *tag)
{
    KV_ENSURE(q != NULL, KV_ERR_INVALID_ARGUMENT, "no queue");
    rpc_call_state *st = malloc(sizeof(*st));
    KV_ENSURE(st != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    st->tag = tag;
    if (kv_failed(rpc_call_start(c, method, req, req_len, timeout_ms, q->cq, st))) {
        free(st);
        return KV_FAILURE;
    }
    st->prev = NULL;
    st->next = q->in_flight;
    if (q->in_flight != NULL) q->in_flight->prev = st;
    q->in_flight = st;
    q->n_in_flight++;
    return KV_SUCCESS;
}

size_t rpc_client_queue_in_flight(const rpc_client_queue *q)
{
    return q != NULL ? q->n_in_flight : 0;
}

kv_result rpc_client_queue_next(rpc_client_queue *q, void **tag, rpc_client_reply *reply)
{
    KV_ENSURE(q != NULL && tag != NULL && reply != NULL, KV_ERR_INVALID_ARGUMENT,
              "no queue, tag or reply");
    memset(reply, 0, sizeof(*reply));
    *tag = NULL;
    KV_ENSURE(q->n_in_flight > 0, KV_ERR_FAILED_PRECONDITION, "no call is in flight");
    /* Every call has a deadline, so this wait ends. */
    grpc_event ev = grpc_completion_queue_next(q->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    KV_ENSURE(ev.type == GRPC_OP_COMPLETE && ev.tag != NULL, KV_ERR_INTERNAL,
              "the completion queue failed");
    rpc_call_state *st = ev.tag;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        q->in_flight = st->next;
    if (st->next != NULL) st->next->prev = st->prev;
    q->n_in_flight--;
    *tag = st->tag;
    kv_result r = rpc_call_finish(st, ev.success != 0, reply);
    free(st);
    return r;
}

void rpc_client_queue_cancel(rpc_client_queue *q)
{
    for (rpc_call_state *st = q != NULL ? q->in_flight : NULL; st != NULL; st = st->next)
        grpc_call_cancel(st->call, NULL);
}

void rpc_client_queue_close(rpc_client_queue *q)
{
    if (q == NULL) return;
    rpc_client_queue_cancel(q);
    while (q->n_in_flight > 0) {
        void *tag;
        rpc_client_reply reply;
        if (kv_ok(rpc_client_queue_next(q, &tag, &reply))) rpc_client_reply_free(&reply);
    }
    grpc_completion_queue_shutdown(q->cq);
    while (grpc_completion_queue_next(q->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(q->cq);
    free(q);
    grpc_shutdown();
}

void rpc_client_reply_free(rpc_client_reply *r)
{
    if (r == NULL) return;
    if (r->data != NULL) {
        kv_wipe(r->data, r->len);
        free(r->data);
    }
    r->data = NULL;
    r->len = 0;
}

void rpc_client_global_init(void)
{
    kv_absl_deadlock_detection_off();
    grpc_init();
}

void rpc_client_global_shutdown(void)
{
    grpc_shutdown();
}
