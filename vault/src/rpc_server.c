/*
 * rpc_server.c: the server side of the RPC adapter over the gRPC C core
 * (Debian libgrpc 1.51).  The only vault file that includes gRPC headers.
 *
 * What it does: mTLS-only listener, fixed pools of worker threads (one
 * completion queue each, one call at a time each): a general pool on generic
 * request_call with dispatch by method path, and a pool per dedicated (hot)
 * method on registered calls whose request comes with the call, principal from the client
 * certificate, the call deadline handed to handlers, and the error record turned into a status.
 *
 * What it must never do: serve a call without a verified client certificate,
 * send an error's detail/file/line to a client (only the human message), keep
 * request bytes (they may carry passwords or PFX files) or sensitive reply
 * bytes in freed memory, or let one slow client hold a worker forever.
 */
#include "rpc_server.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "kv_absl.h"
#include "kv_clock.h"
#include "kv_file.h"
#include "kv_log.h"
#include "kv_secret.h"

#define RPC_DEFAULT_WORKERS 4u
#define RPC_MAX_WORKERS 256u
#define RPC_DEFAULT_MAX_MESSAGE ((size_t)4 << 20)
/* PEM inputs: a CA bundle or a certificate chain is far below this. */
#define RPC_PEM_MAX ((size_t)1 << 20)
/* Principals go into logs, audit records and role bindings. */
#define RPC_PRINCIPAL_MAX 512
/* Grace period for calls in flight at shutdown before they are cancelled. */
#define RPC_SHUTDOWN_GRACE_MS 5000
/* How long a worker waits for a client to deliver its request or half-close
 * after the call arrived: a client that opens a stream and never sends would
 * otherwise hold a worker for as long as its (possibly infinite) deadline. */
#define RPC_IO_TIMEOUT_MS 30000
/* Untrusted method paths echoed in an UNIMPLEMENTED message are cut here. */
#define RPC_METHOD_ECHO_MAX 200

typedef struct {
    char *path; /* owned copy */
    size_t len;
    rpc_handler_fn fn;
    void *registered; /* dedicated methods: gRPC's handle, NULL otherwise */
} rpc_route;

typedef struct {
    rpc_server *server;
    grpc_completion_queue *cq;
    /* NULL: serves every method that has no pool of its own (one generic
     * request outstanding, so a call only ever goes to an idle worker);
     * else serves only this dedicated method (one registered request). */
    const rpc_route *route;
    pthread_t thread;
    bool started;
} rpc_worker;

/* Parsing the peer's certificate costs more than the rest of a small call;
 * a connection's certificate is the same for every call on it, so the
 * principal derived from an exact PEM is remembered (a small table replaced
 * round-robin; the PEM is compared in full, never by hash alone). */
#define RPC_PRINCIPAL_CACHE 32
#define RPC_PRINCIPAL_CACHE_PEM_MAX 8192

typedef struct {
    char *pem; /* malloc'd copy, NULL when empty */
    size_t len;
    char principal[RPC_PRINCIPAL_MAX];
} rpc_principal_entry;

typedef struct {
    pthread_mutex_t mu;
    rpc_principal_entry e[RPC_PRINCIPAL_CACHE];
    unsigned next;
} rpc_principal_cache;

struct rpc_server {
    grpc_server *server;
    rpc_principal_cache principals;
    grpc_completion_queue *shutdown_cq;
    rpc_worker *workers;
    unsigned n_workers;
    rpc_route *routes; /* sorted by path for bsearch */
    size_t n_routes;
    void *app;
    rpc_around_fn around;
    int port;
    bool grpc_ref; /* holds one grpc_init() reference */
};

/* Distinct tags: each worker has at most one operation outstanding on its
 * completion queue, the tag only guards against surprises. */
/* grpc_arg.key is a plain char *: keep the names in writable arrays so no
 * string literal loses its const-ness (clean under -Wwrite-strings). */
static char rpc_arg_max_recv[] = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
static char rpc_arg_max_send[] = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
static char rpc_arg_reuseport[] = GRPC_ARG_ALLOW_REUSEPORT;
static char rpc_arg_compression[] = GRPC_ARG_ENABLE_PER_MESSAGE_COMPRESSION;
static char rpc_arg_bdp_probe[] = GRPC_ARG_HTTP2_BDP_PROBE;
static char rpc_tag_request;
static char rpc_tag_recv;
static char rpc_tag_send;
static char rpc_tag_shutdown;

/* ---- small helpers ---------------------------------------------------- */

static int rpc_route_cmp(const void *a, const void *b)
{
    const rpc_route *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->path, y->path, n);
    if (c != 0) return c;
    return x->len < y->len ? -1 : x->len > y->len ? 1 : 0;
}

static const rpc_route *rpc_route_find(const rpc_server *s, const uint8_t *path, size_t len)
{
    size_t lo = 0, hi = s->n_routes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const rpc_route *r = &s->routes[mid];
        size_t n = r->len < len ? r->len : len;
        int c = memcmp(r->path, path, n);
        if (c == 0) c = r->len < len ? -1 : r->len > len ? 1 : 0;
        if (c == 0) return r;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static gpr_timespec rpc_deadline_in_ms(int64_t ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Slice destructors for reply bytes handed to gRPC without a copy: gRPC
 * calls them when it drops its last reference. */
static void rpc_free_wiped(void *p, size_t len)
{
    kv_wipe(p, len);
    free(p);
}

/* Copies a received message out of gRPC's buffers into malloc'd memory
 * (one spare byte so an empty message is still a valid pointer), wiping
 * gRPC's copy as it goes. */
static kv_result rpc_bb_take(grpc_byte_buffer *bb, uint8_t **out, size_t *out_len)
{
    size_t len = grpc_byte_buffer_length(bb);
    uint8_t *buf = malloc(len + 1);
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte request", len);
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb)) {
        free(buf);
        KV_BAIL(KV_ERR_INTERNAL, "cannot read the request message");
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
    *out = buf;
    *out_len = off;
    return KV_SUCCESS;
}

/* ---- principal -------------------------------------------------------- */

/* Copies an identity string out of the certificate: 1..RPC_PRINCIPAL_MAX-1
 * bytes of printable ASCII.  Control characters would forge log lines and
 * non-ASCII would make role bindings ambiguous (look-alike characters). */
static bool rpc_principal_copy(const unsigned char *p, int n, char out[RPC_PRINCIPAL_MAX])
{
    if (p == NULL || n <= 0 || n >= RPC_PRINCIPAL_MAX) return false;
    for (int i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e) return false;
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    return true;
}

/* First SAN URI, else the subject CN, of the verified client certificate. */
/* The principal named by a PEM certificate: its first SAN URI, else its CN. */
static kv_result rpc_principal_parse(const char *pem, size_t pem_len, char out[RPC_PRINCIPAL_MAX])
{
    kv_result r = KV_SUCCESS;
    BIO *bio = NULL;
    X509 *cert = NULL;
    GENERAL_NAMES *sans = NULL;
    unsigned char *cn_utf8 = NULL;
    bio = BIO_new_mem_buf(pem, (int)pem_len);
    KV_ENSURE_GOTO(bio != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    KV_ENSURE_GOTO(cert != NULL, r, out, KV_ERR_UNAUTHENTICATED,
                   "cannot parse the client certificate");

    sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_URI) continue;
        const ASN1_IA5STRING *uri = gn->d.uniformResourceIdentifier;
        KV_ENSURE_GOTO(rpc_principal_copy(ASN1_STRING_get0_data(uri), ASN1_STRING_length(uri), out),
                       r, out, KV_ERR_UNAUTHENTICATED,
                       "the client certificate's URI is not a usable principal "
                       "(empty, too long or not printable ASCII)");
        goto out;
    }

    const X509_NAME *subject = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    KV_ENSURE_GOTO(idx >= 0, r, out, KV_ERR_UNAUTHENTICATED,
                   "the client certificate has neither a SAN URI nor a CN");
    const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    int n = ASN1_STRING_to_UTF8(&cn_utf8, cn);
    KV_ENSURE_GOTO(rpc_principal_copy(cn_utf8, n, out), r, out, KV_ERR_UNAUTHENTICATED,
                   "the client certificate's CN is not a usable principal "
                   "(empty, too long or not printable ASCII)");
out:
    ERR_clear_error();
    OPENSSL_free(cn_utf8);
    GENERAL_NAMES_free(sans);
    X509_free(cert);
    BIO_free(bio);
    return r;
}

static bool rpc_principal_cached(rpc_principal_cache *c, const char *pem, size_t len,
                                 char out[RPC_PRINCIPAL_MAX])
{
    bool hit = false;
    pthread_mutex_lock(&c->mu);
    for (unsigned i = 0; i < RPC_PRINCIPAL_CACHE && !hit; i++) {
        const rpc_principal_entry *e = &c->e[i];
        if (e->pem != NULL && e->len == len && memcmp(e->pem, pem, len) == 0) {
            memcpy(out, e->principal, RPC_PRINCIPAL_MAX);
            hit = true;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

static void rpc_principal_remember(rpc_principal_cache *c, const char *pem, size_t len,
                                   const char principal[RPC_PRINCIPAL_MAX])
{
    if (len > RPC_PRINCIPAL_CACHE_PEM_MAX) return;
    char *copy = malloc(len);
    if (copy == NULL) return;
    memcpy(copy, pem, len);
    pthread_mutex_lock(&c->mu);
    rpc_principal_entry *e = &c->e[c->next];
    c->next = (c->next + 1) % RPC_PRINCIPAL_CACHE;
    free(e->pem);
    e->pem = copy;
    e->len = len;
    memcpy(e->principal, principal, RPC_PRINCIPAL_MAX);
    pthread_mutex_unlock(&c->mu);
}

static void rpc_principal_cache_free(rpc_principal_cache *c)
{
    for (unsigned i = 0; i < RPC_PRINCIPAL_CACHE; i++)
        free(c->e[i].pem);
    pthread_mutex_destroy(&c->mu);
}

/* The caller's principal, from the verified peer certificate gRPC holds. */
static kv_result rpc_principal_of(rpc_server *s, grpc_call *call, char out[RPC_PRINCIPAL_MAX])
{
    kv_result r = KV_SUCCESS;
    grpc_auth_context *auth = grpc_call_auth_context(call);
    KV_ENSURE(auth != NULL, KV_ERR_UNAUTHENTICATED, "no authenticated peer");
    grpc_auth_property_iterator it =
        grpc_auth_context_find_properties_by_name(auth, GRPC_X509_PEM_CERT_PROPERTY_NAME);
    const grpc_auth_property *prop = grpc_auth_property_iterator_next(&it);
    KV_ENSURE_GOTO(prop != NULL && prop->value != NULL && prop->value_length > 0 &&
                       prop->value_length < RPC_PEM_MAX,
                   r, out, KV_ERR_UNAUTHENTICATED, "the client presented no certificate");
    if (!rpc_principal_cached(&s->principals, prop->value, prop->value_length, out)) {
        KV_GUARD_GOTO(rpc_principal_parse(prop->value, prop->value_length, out), r, out);
        rpc_principal_remember(&s->principals, prop->value, prop->value_length, out);
    }
out:
    grpc_auth_context_release(auth);
    return r;
}

/* ---- one call --------------------------------------------------------- */

/* Waits for the one operation outstanding on the worker's queue.  If the
 * client stalls past RPC_IO_TIMEOUT_MS the call is cancelled, which completes
 * the operation (unsuccessfully) promptly. */
static bool rpc_worker_wait(rpc_worker *w, grpc_call *call, void *tag)
{
    bool cancelled = false;
    for (;;) {
        gpr_timespec until =
            cancelled ? gpr_inf_future(GPR_CLOCK_MONOTONIC) : rpc_deadline_in_ms(RPC_IO_TIMEOUT_MS);
        grpc_event ev = grpc_completion_queue_next(w->cq, until, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT) {
            KV_LOG_WARN("rpc: client stalled for %d ms; cancelling the call", RPC_IO_TIMEOUT_MS);
            grpc_call_cancel_with_status(call, GRPC_STATUS_DEADLINE_EXCEEDED,
                                         "request not received in time", NULL);
            cancelled = true;
            continue;
        }
        if (ev.type == GRPC_QUEUE_SHUTDOWN) return false; /* cannot happen mid-call */
        if (ev.tag != tag) {
            KV_LOG_ERROR("rpc: unexpected completion on a worker queue");
            continue;
        }
        return ev.success != 0;
    }
}

/* Turns a deadline into the ms base of kv_clock_mono_ms().  gRPC does not
 * promise that GPR_CLOCK_MONOTONIC is CLOCK_MONOTONIC (some releases offset
 * it; on this 1.51 build they agree) and the deadline may come in another
 * clock type, so convert the time left, never the absolute value. */
static int64_t rpc_deadline_mono_ms(gpr_timespec deadline)
{
    if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0) return INT64_MAX;
    gpr_timespec left = gpr_time_sub(deadline, gpr_now(deadline.clock_type));
    int64_t now = kv_clock_mono_ms();
    if (left.tv_sec >= (INT64_MAX - now) / 1000 - 1) return INT64_MAX;
    if (left.tv_sec < -(int64_t)1000000000) return now - (int64_t)1000000000 * 1000;
    return now + left.tv_sec * 1000 + left.tv_nsec / 1000000;
}

/* Runs the dispatch for one received request (route NULL: unknown method);
 * on return either *reply holds the handler's bytes (KV_SUCCESS) or the error
 * record says why not. */
static kv_result rpc_dispatch(rpc_server *s, grpc_call *call, const rpc_route *route,
                              const char *method, gpr_timespec deadline, const uint8_t *req,
                              size_t req_len, char principal[RPC_PRINCIPAL_MAX], rpc_reply *reply)
{
    KV_GUARD(rpc_principal_of(s, call, principal));
    KV_ENSURE(route != NULL, KV_ERR_UNIMPLEMENTED, "unknown method %.*s", RPC_METHOD_ECHO_MAX,
              method);
    rpc_ctx ctx = {.principal = principal,
                   .method = route->path,
                   .deadline_mono_ms = rpc_deadline_mono_ms(deadline)};
    KV_GUARD(rpc_ctx_check_deadline(&ctx));
    kv_error_clear();
    kv_result r = s->around != NULL ? s->around(s->app, route->fn, &ctx, req, req_len, reply)
                                    : route->fn(s->app, &ctx, req, req_len, reply);
    if (kv_failed(r)) {
        if (kv_error_code() == KV_OK) /* a handler bug: failed without a record */
            kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "internal error");
        return KV_FAILURE;
    }
    KV_ENSURE(reply->data != NULL || reply->len == 0, KV_ERR_INTERNAL,
              "internal error: the handler returned no reply bytes");
    return KV_SUCCESS;
}

static void rpc_reply_discard(rpc_reply *reply)
{
    if (reply->data != NULL) {
        if (reply->sensitive) kv_wipe(reply->data, reply->len);
        free(reply->data);
    }
    memset(reply, 0, sizeof(*reply));
}

/* Serves one call: route is its method (NULL: unknown); when request_read,
 * req_bb is the request message that came with the call (dedicated methods,
 * NULL if there was none), else the message is received here.  Takes
 * ownership of req_bb. */
static void rpc_serve(rpc_worker *w, grpc_call *call, const rpc_route *route, const uint8_t *path,
                      size_t path_len, gpr_timespec deadline, bool request_read,
                      grpc_byte_buffer *req_bb)
{
    rpc_server *s = w->server;
    uint8_t *req = NULL;
    size_t req_len = 0;
    rpc_reply reply = {0};
    char principal[RPC_PRINCIPAL_MAX] = "-";
    char method[RPC_METHOD_ECHO_MAX + 1];
    size_t mlen = path_len > RPC_METHOD_ECHO_MAX ? RPC_METHOD_ECHO_MAX : path_len;
    memcpy(method, path, mlen);
    method[mlen] = '\0';

    if (!request_read) {
        grpc_op recv = {.op = GRPC_OP_RECV_MESSAGE};
        recv.data.recv_message.recv_message = &req_bb;
        if (grpc_call_start_batch(call, &recv, 1, &rpc_tag_recv, NULL) != GRPC_CALL_OK) {
            KV_LOG_ERROR("rpc %s: cannot start receiving the request", method);
            return;
        }
        if (!rpc_worker_wait(w, call, &rpc_tag_recv)) {
            /* Cancelled before the request arrived: too large (gRPC answered
             * RESOURCE_EXHAUSTED itself), deadline, or the client went away. */
            if (req_bb != NULL) grpc_byte_buffer_destroy(req_bb);
            return;
        }
    }

    kv_result r;
    if (req_bb == NULL) {
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "the call carried no request message");
    } else {
        r = rpc_bb_take(req_bb, &req, &req_len);
        grpc_byte_buffer_destroy(req_bb);
    }
    if (kv_ok(r))
        r = rpc_dispatch(s, call, route, method, deadline, req, req_len, principal, &reply);
    if (req != NULL) {
        kv_wipe(req, req_len); /* requests may carry passwords or PFX files */
        free(req);
    }

    grpc_status_code status = GRPC_STATUS_OK;
    grpc_slice details;
    grpc_byte_buffer *resp_bb = NULL;
    if (kv_ok(r)) {
        grpc_slice body;
        if (reply.len == 0) {
            rpc_reply_discard(&reply);
            body = grpc_empty_slice();
        } else {
            /* gRPC owns the bytes from here; the destructor wipes them when
             * the transport is done, so no copy outlives the call unwiped. */
            body = reply.sensitive ? grpc_slice_new_with_len(reply.data, reply.len, rpc_free_wiped)
                                   : grpc_slice_new(reply.data, reply.len, free);
            memset(&reply, 0, sizeof(reply));
        }
        resp_bb = grpc_raw_byte_buffer_create(&body, 1);
        grpc_slice_unref(body);
        details = grpc_empty_slice();
    } else {
        kv_code code = kv_error_code();
        status = (code > KV_OK && code <= KV_ERR_UNAUTHENTICATED) ? (grpc_status_code)code
                                                                  : GRPC_STATUS_UNKNOWN;
        const char *detail = kv_error_detail_str();
        KV_LOG_INFO("rpc %s principal=%s failed: %s: %s%s%s (%s:%d)", method, principal,
                    kv_code_name(code), kv_error_msg(), detail[0] ? "; " : "", detail,
                    kv_error_file(), kv_error_line());
        /* Only the human message goes to the client, never detail or line. */
        details = grpc_slice_from_copied_string(kv_error_msg());
        rpc_reply_discard(&reply);
    }

    int cancelled = 0;
    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (resp_bb != NULL) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = resp_bb;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = status;
    ops[n++].data.send_status_from_server.status_details = &details;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &cancelled;
    if (grpc_call_start_batch(call, ops, n, &rpc_tag_send, NULL) == GRPC_CALL_OK)
        (void)rpc_worker_wait(w, call, &rpc_tag_send);
    else
        KV_LOG_ERROR("rpc %s: cannot start sending the reply", method);
    grpc_slice_unref(details);
    if (resp_bb != NULL) grpc_byte_buffer_destroy(resp_bb);
}

/* Asks gRPC for the worker's next call and waits for it.  Returns false when
 * the server is shutting down. */
static bool rpc_worker_next_call(rpc_worker *w, grpc_call **call, grpc_call_details *details,
                                 gpr_timespec *deadline, grpc_metadata_array *md,
                                 grpc_byte_buffer **payload)
{
    rpc_server *s = w->server;
    grpc_call_error e =
        w->route == NULL
            ? grpc_server_request_call(s->server, call, details, md, w->cq, w->cq, &rpc_tag_request)
            : grpc_server_request_registered_call(s->server, w->route->registered, call, deadline,
                                                  md, payload, w->cq, w->cq, &rpc_tag_request);
    if (e != GRPC_CALL_OK) return false;
    grpc_event ev;
    do {
        ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    } while (ev.type == GRPC_OP_COMPLETE && ev.tag != &rpc_tag_request);
    if (ev.type == GRPC_OP_COMPLETE && ev.success) {
        if (w->route == NULL) *deadline = details->deadline;
        return true;
    }
    /* Only a shutdown fails a request; a payload that came anyway is ours. */
    if (*payload != NULL) grpc_byte_buffer_destroy(*payload);
    *payload = NULL;
    return false;
}

static void *rpc_worker_main(void *arg)
{
    rpc_worker *w = arg;
    rpc_server *s = w->server;
    for (;;) {
        grpc_call *call = NULL;
        grpc_call_details details;
        grpc_metadata_array md;
        gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
        grpc_byte_buffer *payload = NULL;
        grpc_call_details_init(&details);
        grpc_metadata_array_init(&md);
        bool got = rpc_worker_next_call(w, &call, &details, &deadline, &md, &payload);
        if (got) {
            if (w->route != NULL)
                rpc_serve(w, call, w->route, (const uint8_t *)w->route->path, w->route->len,
                          deadline, true, payload);
            else
                rpc_serve(w, call,
                          rpc_route_find(s, GRPC_SLICE_START_PTR(details.method),
                                         GRPC_SLICE_LENGTH(details.method)),
                          GRPC_SLICE_START_PTR(details.method), GRPC_SLICE_LENGTH(details.method),
                          deadline, false, NULL);
            grpc_call_unref(call);
        }
        grpc_metadata_array_destroy(&md);
        grpc_call_details_destroy(&details);
        if (!got) break; /* the server is shutting down */
    }
    /* Drain until rpc_server_stop shuts this queue down. */
    while (grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    return NULL;
}

/* ---- start / stop ----------------------------------------------------- */

/* Parses the PEM inputs ourselves so a bad file gets a precise message;
 * gRPC would only fail the bind with "port 0". */
static kv_result rpc_tls_check(const rpc_server_config *cfg, const uint8_t *ca, size_t ca_len,
                               const uint8_t *cert, size_t cert_len, const uint8_t *key,
                               size_t key_len)
{
    kv_result r = KV_SUCCESS;
    BIO *bio = NULL;
    X509 *x = NULL;
    EVP_PKEY *pk = NULL;

    bio = BIO_new_mem_buf(ca, (int)ca_len);
    KV_ENSURE_GOTO(bio != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    KV_ENSURE_GOTO(x != NULL, r, out, KV_ERR_INVALID_ARGUMENT,
                   "%s holds no PEM certificate (client CA)", cfg->ca_file);
    X509_free(x);
    x = NULL;
    BIO_free(bio);

    bio = BIO_new_mem_buf(cert, (int)cert_len);
    KV_ENSURE_GOTO(bio != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    KV_ENSURE_GOTO(x != NULL, r, out, KV_ERR_INVALID_ARGUMENT,
                   "%s holds no PEM certificate (server certificate)", cfg->cert_file);
    BIO_free(bio);
    bio = NULL;

    bio = BIO_new_mem_buf(key, (int)key_len);
    KV_ENSURE_GOTO(bio != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    KV_ENSURE_GOTO(pk != NULL, r, out, KV_ERR_INVALID_ARGUMENT,
                   "%s holds no unencrypted PEM private key", cfg->key_file);
    KV_ENSURE_GOTO(X509_check_private_key(x, pk) == 1, r, out, KV_ERR_INVALID_ARGUMENT,
                   "the key in %s does not match the certificate in %s", cfg->key_file,
                   cfg->cert_file);
out:
    ERR_clear_error();
    EVP_PKEY_free(pk);
    X509_free(x);
    BIO_free(bio);
    return r;
}

static kv_result rpc_routes_build(rpc_server *s, const rpc_method *methods, size_t n)
{
    KV_ENSURE(n == 0 || methods != NULL, KV_ERR_INVALID_ARGUMENT, "no method table");
    s->routes = calloc(n ? n : 1, sizeof(*s->routes));
    KV_ENSURE(s->routes != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++) {
        KV_ENSURE(methods[i].method != NULL && methods[i].method[0] == '/' && methods[i].fn != NULL,
                  KV_ERR_INVALID_ARGUMENT, "method table entry %zu is incomplete", i);
        s->routes[i].path = strdup(methods[i].method);
        KV_ENSURE(s->routes[i].path != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
        s->routes[i].len = strlen(methods[i].method);
        s->routes[i].fn = methods[i].fn;
        s->n_routes = i + 1;
    }
    qsort(s->routes, s->n_routes, sizeof(*s->routes), rpc_route_cmp);
    for (size_t i = 1; i < s->n_routes; i++)
        KV_ENSURE(rpc_route_cmp(&s->routes[i - 1], &s->routes[i]) != 0, KV_ERR_INVALID_ARGUMENT,
                  "method %s is in the table twice", s->routes[i].path);
    return KV_SUCCESS;
}

/* Frees a server whose workers never started or have been joined. */
static void rpc_server_free(rpc_server *s)
{
    if (s->server != NULL) grpc_server_destroy(s->server);
    for (unsigned i = 0; s->workers != NULL && i < s->n_workers; i++)
        if (s->workers[i].cq != NULL) grpc_completion_queue_destroy(s->workers[i].cq);
    if (s->shutdown_cq != NULL) grpc_completion_queue_destroy(s->shutdown_cq);
    for (size_t i = 0; i < s->n_routes; i++)
        free(s->routes[i].path);
    free(s->routes);
    free(s->workers);
    rpc_principal_cache_free(&s->principals);
    if (s->grpc_ref) grpc_shutdown();
    free(s);
}

/* Stops a server that was started (listening, workers possibly running). */
static void rpc_server_halt(rpc_server *s)
{
    grpc_server_shutdown_and_notify(s->server, s->shutdown_cq, &rpc_tag_shutdown);
    grpc_event ev =
        grpc_completion_queue_next(s->shutdown_cq, rpc_deadline_in_ms(RPC_SHUTDOWN_GRACE_MS), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        KV_LOG_WARN("rpc: calls still running after %d ms; cancelling them", RPC_SHUTDOWN_GRACE_MS);
        grpc_server_cancel_all_calls(s->server);
        ev = grpc_completion_queue_next(s->shutdown_cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    }
    /* Every call is finished now: no worker has an operation in flight. */
    for (unsigned i = 0; i < s->n_workers; i++)
        if (s->workers[i].cq != NULL) grpc_completion_queue_shutdown(s->workers[i].cq);
    for (unsigned i = 0; i < s->n_workers; i++)
        if (s->workers[i].started) pthread_join(s->workers[i].thread, NULL);
    grpc_completion_queue_shutdown(s->shutdown_cq);
    while (grpc_completion_queue_next(s->shutdown_cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
}

kv_result rpc_server_start(const rpc_server_config *cfg, const rpc_method *methods,
                           size_t n_methods, void *app, rpc_server **out)
{
    KV_ENSURE(cfg != NULL && out != NULL, KV_ERR_INVALID_ARGUMENT, "no server configuration");
    KV_ENSURE(cfg->listen_addr != NULL && cfg->listen_addr[0] != '\0', KV_ERR_INVALID_ARGUMENT,
              "no listen address");
    KV_ENSURE(cfg->ca_file != NULL && cfg->cert_file != NULL && cfg->key_file != NULL,
              KV_ERR_INVALID_ARGUMENT,
              "mTLS needs a client CA file, a server certificate file and a key file");
    unsigned workers = cfg->workers ? cfg->workers : RPC_DEFAULT_WORKERS;
    unsigned dedicated_workers = cfg->dedicated_workers ? cfg->dedicated_workers : workers;
    KV_ENSURE(workers <= RPC_MAX_WORKERS && dedicated_workers <= RPC_MAX_WORKERS,
              KV_ERR_INVALID_ARGUMENT, "%u workers requested (limit %u)",
              workers > dedicated_workers ? workers : dedicated_workers, RPC_MAX_WORKERS);
    size_t max_message = cfg->max_message ? cfg->max_message : RPC_DEFAULT_MAX_MESSAGE;
    KV_ENSURE(max_message <= INT_MAX, KV_ERR_INVALID_ARGUMENT, "max message size %zu is above %d",
              max_message, INT_MAX);

    kv_result r = KV_SUCCESS;
    uint8_t *ca = NULL, *cert = NULL, *key = NULL;
    size_t ca_len = 0, cert_len = 0, key_len = 0;
    grpc_server_credentials *creds = NULL;
    rpc_server *s = calloc(1, sizeof(*s));
    KV_ENSURE(s != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    pthread_mutex_init(&s->principals.mu, NULL);
    s->app = app;
    s->around = cfg->around;
    kv_absl_deadlock_detection_off();
    grpc_init();
    s->grpc_ref = true;

    KV_GUARD_GOTO(rpc_routes_build(s, methods, n_methods), r, fail);
    KV_GUARD_GOTO(kv_file_read(cfg->ca_file, RPC_PEM_MAX, &ca, &ca_len), r, fail);
    KV_GUARD_GOTO(kv_file_read(cfg->cert_file, RPC_PEM_MAX, &cert, &cert_len), r, fail);
    KV_GUARD_GOTO(kv_file_read(cfg->key_file, RPC_PEM_MAX, &key, &key_len), r, fail);
    KV_GUARD_GOTO(rpc_tls_check(cfg, ca, ca_len, cert, cert_len, key, key_len), r, fail);

    grpc_ssl_pem_key_cert_pair pair = {.private_key = (const char *)key,
                                       .cert_chain = (const char *)cert};
    /* gRPC copies the PEM strings; ours are wiped right after. */
    creds = grpc_ssl_server_credentials_create_ex(
        (const char *)ca, &pair, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
        NULL);
    kv_wipe(key, key_len);
    free(key);
    key = NULL;
    KV_ENSURE_GOTO(creds != NULL, r, fail, KV_ERR_INVALID_ARGUMENT,
                   "gRPC refused the TLS configuration (%s, %s, %s)", cfg->ca_file, cfg->cert_file,
                   cfg->key_file);

    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_max_recv, .value.integer = (int)max_message},
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_max_send, .value.integer = (int)max_message},
        /* Two servers must never share a port silently. */
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_reuseport, .value.integer = 0},
        /* Replies carry keys next to caller-chosen bytes: never compressed
         * (no CRIME-style length oracle), and no work spent trying. */
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_compression, .value.integer = 0},
        /* Messages are a few hundred bytes: no bandwidth-delay probing pings. */
        {.type = GRPC_ARG_INTEGER, .key = rpc_arg_bdp_probe, .value.integer = 0},
    };
    grpc_channel_args chargs = {.num_args = KV_ARRAY_LEN(args), .args = args};
    s->server = grpc_server_create(&chargs, NULL);
    KV_ENSURE_GOTO(s->server != NULL, r, fail, KV_ERR_INTERNAL, "cannot create the gRPC server");

    /* Dedicated methods are registered with gRPC (request read with the
     * call) and get a pool of their own; the rest share the general pool. */
    unsigned n_workers = workers;
    for (size_t i = 0; cfg->dedicated != NULL && cfg->dedicated[i] != NULL; i++) {
        rpc_route *route = (rpc_route *)rpc_route_find(s, (const uint8_t *)cfg->dedicated[i],
                                                       strlen(cfg->dedicated[i]));
        KV_ENSURE_GOTO(route != NULL && route->registered == NULL, r, fail, KV_ERR_INVALID_ARGUMENT,
                       "dedicated method %s is not in the method table or is listed twice",
                       cfg->dedicated[i]);
        route->registered = grpc_server_register_method(
            s->server, route->path, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        KV_ENSURE_GOTO(route->registered != NULL, r, fail, KV_ERR_INTERNAL,
                       "gRPC refused to register %s", route->path);
        n_workers += dedicated_workers;
    }
    KV_ENSURE_GOTO(n_workers <= RPC_MAX_WORKERS, r, fail, KV_ERR_INVALID_ARGUMENT,
                   "%u worker threads in all (limit %u)", n_workers, RPC_MAX_WORKERS);
    s->workers = calloc(n_workers, sizeof(*s->workers));
    KV_ENSURE_GOTO(s->workers != NULL, r, fail, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    s->n_workers = n_workers;
    for (unsigned i = 0, next = workers; i < s->n_routes; i++) {
        for (unsigned k = 0; s->routes[i].registered != NULL && k < dedicated_workers; k++)
            s->workers[next++].route = &s->routes[i];
    }
    for (unsigned i = 0; i < n_workers; i++) {
        s->workers[i].server = s;
        s->workers[i].cq = grpc_completion_queue_create_for_next(NULL);
        KV_ENSURE_GOTO(s->workers[i].cq != NULL, r, fail, KV_ERR_RESOURCE_EXHAUSTED,
                       "cannot create a completion queue");
        grpc_server_register_completion_queue(s->server, s->workers[i].cq, NULL);
    }
    s->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
    KV_ENSURE_GOTO(s->shutdown_cq != NULL, r, fail, KV_ERR_RESOURCE_EXHAUSTED,
                   "cannot create a completion queue");
    grpc_server_register_completion_queue(s->server, s->shutdown_cq, NULL);

    s->port = grpc_server_add_http2_port(s->server, cfg->listen_addr, creds);
    grpc_server_credentials_release(creds);
    creds = NULL;
    KV_ENSURE_GOTO(s->port > 0, r, fail, KV_ERR_UNAVAILABLE,
                   "cannot listen on %s: the address is in use or not available here",
                   cfg->listen_addr);

    grpc_server_start(s->server);
    for (unsigned i = 0; i < n_workers; i++) {
        int e = pthread_create(&s->workers[i].thread, NULL, rpc_worker_main, &s->workers[i]);
        if (e != 0) {
            KV_BAIL_GOTO(r, fail, KV_ERR_RESOURCE_EXHAUSTED, "cannot start worker thread %u: %s", i,
                         strerror(e));
        }
        s->workers[i].started = true;
    }
    free(ca);
    free(cert);
    *out = s;
    return KV_SUCCESS;

fail:
    if (s->server != NULL && s->shutdown_cq != NULL) {
        /* grpc_server_destroy needs a completed shutdown, started or not. */
        kv_error_record saved;
        kv_error_save(&saved);
        rpc_server_halt(s);
        kv_error_restore(&saved);
    }
    if (creds != NULL) grpc_server_credentials_release(creds);
    if (key != NULL) {
        kv_wipe(key, key_len);
        free(key);
    }
    free(ca);
    free(cert);
    rpc_server_free(s);
    return r;
}

int rpc_server_port(const rpc_server *s)
{
    return s != NULL ? s->port : 0;
}

void rpc_server_stop(rpc_server *s)
{
    if (s == NULL) return;
    rpc_server_halt(s);
    rpc_server_free(s);
}

kv_result rpc_ctx_check_deadline(const rpc_ctx *ctx)
{
    if (ctx == NULL || ctx->deadline_mono_ms == INT64_MAX) return KV_SUCCESS;
    KV_ENSURE(kv_clock_mono_ms() < ctx->deadline_mono_ms, KV_ERR_DEADLINE_EXCEEDED,
              "the caller's deadline has passed");
    return KV_SUCCESS;
}

/* ---- process plumbing ------------------------------------------------- */

void rpc_signals_block(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* A peer closing a socket must never kill the process. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
}

int rpc_wait_signal(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    return sig;
}

/* gRPC's own log lines (handshake failures, bind errors) go through kv_log,
 * escaped and on one line like every other vaultd line.  A failed client
 * handshake is the client's problem: a warning, not an error. */
static void rpc_grpc_log(gpr_log_func_args *a)
{
    kv_log_level level = a->severity == GPR_LOG_SEVERITY_ERROR  ? KV_LOG_WARN
                         : a->severity == GPR_LOG_SEVERITY_INFO ? KV_LOG_INFO
                                                                : KV_LOG_DEBUG;
    kv_log(level, "grpc: %s", a->message != NULL ? a->message : "");
}

void rpc_global_init(void)
{
    kv_absl_deadlock_detection_off();
    gpr_set_log_function(rpc_grpc_log);
    grpc_init();
}

void rpc_global_shutdown(void)
{
    grpc_shutdown();
}
