/*
 * test_rpc.c: the RPC adapter end to end over loopback with real mTLS.
 *
 * Certificates are made with the openssl command line in a private temporary
 * directory; the real server (rpc_server.c) runs in this process on
 * 127.0.0.1:0 and the real client (rpc_client.c) calls it.  No mocks.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv_clock.h"
#include "kv_test.h"
#include "rpc_client.h"
#include "rpc_server.h"

#define ECHO "/test.Echo/Echo"
#define FAIL "/test.Echo/Fail"
#define SLOW "/test.Echo/Slow"
#define DEADLINE "/test.Echo/Deadline"
#define SECRET "/test.Echo/Secret"
#define EMPTY "/test.Echo/Empty"
#define SMALL_MAX (64 * 1024)
#define SLOW_MS 400
#define FAIL_MSG "tenant key is locked until 2030-01-01T00:00:00Z (seed 001: 72 h after a change)"

static char g_dir[256];
static _Atomic int g_echo_calls;
static _Atomic int g_slow_done;
static _Atomic int g_slow_deadline_hit;

static void msleep(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static const char *path_of(char *buf, size_t cap, const char *name)
{
    if (snprintf(buf, cap, "%s/%s", g_dir, name) >= (int)cap) {
        fprintf(stderr, "path too long: %s/%s\n", g_dir, name);
        abort();
    }
    return buf;
}

/* ---- handlers ----------------------------------------------------------- */

static kv_result reply_bytes(rpc_reply *reply, const void *a, size_t alen, const void *b,
                             size_t blen)
{
    reply->data = malloc(alen + blen + 1);
    KV_ENSURE(reply->data != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(reply->data, a, alen);
    if (blen > 0) memcpy(reply->data + alen, b, blen);
    reply->len = alen + blen;
    return KV_SUCCESS;
}

/* Replies "<principal>\n<request bytes>". */
static kv_result h_echo(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t req_len,
                        rpc_reply *reply)
{
    (void)app;
    atomic_fetch_add(&g_echo_calls, 1);
    char head[600];
    int n = snprintf(head, sizeof(head), "%s\n", ctx->principal);
    return reply_bytes(reply, head, (size_t)n, req, req_len);
}

static kv_result h_fail(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t req_len,
                        rpc_reply *reply)
{
    (void)app, (void)ctx, (void)req, (void)req_len, (void)reply;
    kv_error_set(KV_ERR_FAILED_PRECONDITION, __FILE__, __LINE__, "%s", FAIL_MSG);
    kv_error_detail("CKR_DETAIL_FOR_THE_LOG_ONLY");
    return KV_FAILURE;
}

static kv_result h_slow(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t req_len,
                        rpc_reply *reply)
{
    (void)app, (void)req, (void)req_len;
    msleep(SLOW_MS);
    kv_result r = rpc_ctx_check_deadline(ctx);
    if (kv_failed(r)) atomic_fetch_add(&g_slow_deadline_hit, 1);
    atomic_fetch_add(&g_slow_done, 1);
    KV_GUARD(r);
    return reply_bytes(reply, "done", 4, NULL, 0);
}

/* Replies with the milliseconds left before the caller's deadline. */
static kv_result h_deadline(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t req_len,
                            rpc_reply *reply)
{
    (void)app, (void)req, (void)req_len;
    char text[32];
    long long left = ctx->deadline_mono_ms == INT64_MAX
                         ? -1
                         : (long long)(ctx->deadline_mono_ms - kv_clock_mono_ms());
    int n = snprintf(text, sizeof(text), "%lld", left);
    return reply_bytes(reply, text, (size_t)n, NULL, 0);
}

static kv_result h_secret(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t req_len,
                          rpc_reply *reply)
{
    (void)app, (void)ctx, (void)req, (void)req_len;
    KV_GUARD(reply_bytes(reply, "k3y-bytes", 9, NULL, 0));
    reply->sensitive = true;
    return KV_SUCCESS;
}

static kv_result h_empty(void *app, const rpc_ctx *ctx, const uint8_t *req, size_t req_len,
                         rpc_reply *reply)
{
    (void)app, (void)ctx, (void)reply;
    KV_ENSURE(req != NULL && req_len == 0, KV_ERR_INVALID_ARGUMENT, "expected an empty request");
    return KV_SUCCESS;
}

static const rpc_method g_methods[] = {
    {SLOW, h_slow},         {ECHO, h_echo},     {FAIL, h_fail},
    {DEADLINE, h_deadline}, {SECRET, h_secret}, {EMPTY, h_empty},
};

/* ---- fixtures ----------------------------------------------------------- */

static int make_ca(const char *name)
{
    return kv_test_sh("cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                      "-nodes -keyout %s.key -out %s.pem -days 2 -subj /CN=%s "
                      "-addext basicConstraints=critical,CA:TRUE "
                      "-addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null",
                      g_dir, name, name, name);
}

/* ext: single-quoted openssl extension lines separated by spaces. */
static int make_leaf(const char *ca, const char *name, const char *subj, const char *ext)
{
    return kv_test_sh("cd '%s' && printf '%%s\\n' %s > %s.ext && "
                      "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                      "-keyout %s.key -out %s.csr -subj '%s' 2>/dev/null && "
                      "openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial "
                      "-out %s.pem -days 2 -extfile %s.ext 2>/dev/null",
                      g_dir, ext, name, name, name, subj, name, ca, ca, name, name);
}

static void make_certs(void)
{
    CHECK(make_ca("ca") == 0);
    CHECK(make_ca("otherca") == 0);
    CHECK(make_leaf("ca", "server", "/CN=rpc-test-server",
                    "'subjectAltName=DNS:localhost,IP:127.0.0.1' 'extendedKeyUsage=serverAuth'") ==
          0);
    CHECK(make_leaf("ca", "alice", "/CN=alice-cn",
                    "'subjectAltName=URI:spiffe://test/alice' 'extendedKeyUsage=clientAuth'") == 0);
    CHECK(make_leaf("ca", "bob", "/O=test/CN=bob", "'extendedKeyUsage=clientAuth'") == 0);
    CHECK(make_leaf("ca", "nocn", "/O=test/OU=no-common-name", "'extendedKeyUsage=clientAuth'") ==
          0);
    /* A CN outside printable ASCII (UTF-8 "café") is not a usable principal. */
    CHECK(kv_test_sh("cd '%s' && printf '%%s\\n' 'extendedKeyUsage=clientAuth' > cafe.ext && "
                     "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -utf8 "
                     "-keyout cafe.key -out cafe.csr -subj \"/CN=$(printf 'caf\\303\\251')\" "
                     "2>/dev/null && openssl x509 -req -in cafe.csr -CA ca.pem -CAkey ca.key "
                     "-CAcreateserial -out cafe.pem -days 2 -extfile cafe.ext 2>/dev/null",
                     g_dir) == 0);
    CHECK(make_leaf("otherca", "mallory", "/CN=mallory",
                    "'subjectAltName=URI:spiffe://test/alice' 'extendedKeyUsage=clientAuth'") == 0);
}

/* dedicated: NULL-terminated method paths with pools of their own (may be NULL). */
static kv_result server_start_dedicated(const char *listen, unsigned workers, size_t max_message,
                                        const char *const *dedicated, unsigned dedicated_workers,
                                        rpc_server **out)
{
    char ca[300], cert[300], key[300];
    rpc_server_config cfg = {.listen_addr = listen,
                             .ca_file = path_of(ca, sizeof(ca), "ca.pem"),
                             .cert_file = path_of(cert, sizeof(cert), "server.pem"),
                             .key_file = path_of(key, sizeof(key), "server.key"),
                             .workers = workers,
                             .dedicated = dedicated,
                             .dedicated_workers = dedicated_workers,
                             .max_message = max_message};
    return rpc_server_start(&cfg, g_methods, KV_ARRAY_LEN(g_methods), NULL, out);
}

static kv_result server_start(const char *listen, unsigned workers, size_t max_message,
                              rpc_server **out)
{
    return server_start_dedicated(listen, workers, max_message, NULL, 0, out);
}

/* who: "alice", "bob", "mallory" or NULL (no client certificate). */
static kv_result client_open(int port, const char *who, const char *server_name, size_t max_message,
                             rpc_client **out)
{
    char target[64], ca[300], cert[300], key[300], name[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    snprintf(name, sizeof(name), "%s.pem", who ? who : "none");
    path_of(cert, sizeof(cert), name);
    snprintf(name, sizeof(name), "%s.key", who ? who : "none");
    path_of(key, sizeof(key), name);
    rpc_client_config cfg = {.target = target,
                             .ca_file = path_of(ca, sizeof(ca), "ca.pem"),
                             .cert_file = who ? cert : NULL,
                             .key_file = who ? key : NULL,
                             .server_name = server_name,
                             .max_message = max_message};
    return rpc_client_open(&cfg, out);
}

static bool reply_is(const rpc_client_reply *r, const char *head, const void *body, size_t blen)
{
    size_t hlen = strlen(head);
    return r->data != NULL && r->len == hlen + blen && memcmp(r->data, head, hlen) == 0 &&
           (blen == 0 || memcmp(r->data + hlen, body, blen) == 0);
}

static rpc_server *g_server;
static int g_port;
static rpc_client *g_alice;

/* ---- tests -------------------------------------------------------------- */

static void test_echo_and_principals(void)
{
    static const uint8_t payload[] = {0, 1, 2, 'h', 'i', 0xff, '\n', 0};
    rpc_client_reply reply = {0};
    CHECK_OK(rpc_client_call(g_alice, ECHO, payload, sizeof(payload), 0, &reply));
    CHECK(reply_is(&reply, "spiffe://test/alice\n", payload, sizeof(payload)));
    rpc_client_reply_free(&reply);
    CHECK(reply.data == NULL && reply.len == 0);

    /* CN when there is no SAN URI; no name override: the IP SAN must match. */
    rpc_client *bob = NULL;
    CHECK_OK(client_open(g_port, "bob", NULL, 0, &bob));
    if (bob != NULL) {
        CHECK_OK(rpc_client_call(bob, ECHO, payload, 3, 5000, &reply));
        CHECK(reply_is(&reply, "bob\n", payload, 3));
        rpc_client_reply_free(&reply);
        rpc_client_close(bob);
    }

    /* Empty request and empty reply; sensitive reply. */
    CHECK_OK(rpc_client_call(g_alice, EMPTY, NULL, 0, 5000, &reply));
    CHECK(reply.data != NULL && reply.len == 0);
    rpc_client_reply_free(&reply);
    CHECK_OK(rpc_client_call(g_alice, SECRET, payload, 1, 5000, &reply));
    CHECK(reply_is(&reply, "k3y-bytes", NULL, 0));
    rpc_client_reply_free(&reply);

    /* A request just under the limit passes. */
    size_t big_len = SMALL_MAX - 1024;
    uint8_t *big = malloc(big_len);
    CHECK(big != NULL);
    if (big != NULL) {
        for (size_t i = 0; i < big_len; i++)
            big[i] = (uint8_t)(i * 7 + 3);
        CHECK_OK(rpc_client_call(g_alice, ECHO, big, big_len, 5000, &reply));
        CHECK(reply_is(&reply, "spiffe://test/alice\n", big, big_len));
        rpc_client_reply_free(&reply);
        free(big);
    }
}

static void test_errors(void)
{
    rpc_client_reply reply = {0};
    CHECK_ERR(rpc_client_call(g_alice, FAIL, (const uint8_t *)"x", 1, 5000, &reply),
              KV_ERR_FAILED_PRECONDITION);
    CHECK(strcmp(kv_error_msg(), FAIL_MSG) == 0);
    CHECK(strstr(kv_error_msg(), "CKR_DETAIL") == NULL);
    CHECK(strstr(kv_error_msg(), "test_rpc.c") == NULL);
    CHECK(reply.data == NULL && reply.len == 0);

    CHECK_ERR(rpc_client_call(g_alice, "/test.Echo/Nope", (const uint8_t *)"x", 1, 5000, &reply),
              KV_ERR_UNIMPLEMENTED);
    CHECK(strcmp(kv_error_msg(), "unknown method /test.Echo/Nope") == 0);

    /* A handler's own validation error comes through too. */
    CHECK_ERR(rpc_client_call(g_alice, EMPTY, (const uint8_t *)"x", 1, 5000, &reply),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(kv_error_msg(), "expected an empty request") == 0);

    /* Client-side argument checks. */
    CHECK_ERR(rpc_client_call(g_alice, "no-slash", (const uint8_t *)"x", 1, 5000, &reply),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(rpc_client_call(g_alice, ECHO, NULL, 5, 5000, &reply), KV_ERR_INVALID_ARGUMENT);
}

static void test_oversized(void)
{
    size_t len = SMALL_MAX + 4096;
    uint8_t *big = calloc(1, len);
    CHECK(big != NULL);
    if (big == NULL) return;
    rpc_client_reply reply = {0};
    int before = atomic_load(&g_echo_calls);
    /* Refused by the client's own send limit ... */
    CHECK_ERR(rpc_client_call(g_alice, ECHO, big, len, 5000, &reply), KV_ERR_RESOURCE_EXHAUSTED);
    /* ... and by the server's receive limit when the client allows more. */
    rpc_client *loose = NULL;
    CHECK_OK(client_open(g_port, "alice", "localhost", 1 << 20, &loose));
    if (loose != NULL) {
        CHECK_ERR(rpc_client_call(loose, ECHO, big, len, 5000, &reply), KV_ERR_RESOURCE_EXHAUSTED);
        CHECK(reply.data == NULL);
        /* The connection stays usable. */
        CHECK_OK(rpc_client_call(loose, ECHO, big, 10, 5000, &reply));
        rpc_client_reply_free(&reply);
        rpc_client_close(loose);
    }
    CHECK(atomic_load(&g_echo_calls) == before + 1);
    free(big);
}

static void test_deadlines(void)
{
    rpc_client_reply reply = {0};
    /* The handler sees the caller's deadline in kv_clock_mono_ms's base.  grpc-timeout on the wire
     * is rounded up to 3 significant digits, so the server may see up to ~1% more than was asked.
     */
    CHECK_OK(rpc_client_call(g_alice, DEADLINE, (const uint8_t *)"x", 1, 10000, &reply));
    if (reply.data != NULL) {
        long long left = atoll((const char *)reply.data);
        CHECK(left > 8000 && left <= 10150);
        if (!(left > 8000 && left <= 10150)) fprintf(stderr, "deadline left: %lld ms\n", left);
    }
    rpc_client_reply_free(&reply);

    /* Short deadline on a slow handler: the caller gets DEADLINE_EXCEEDED and
     * the handler's own check sees it too. */
    int done = atomic_load(&g_slow_done);
    int hit = atomic_load(&g_slow_deadline_hit);
    int64_t t0 = kv_clock_mono_ms();
    CHECK_ERR(rpc_client_call(g_alice, SLOW, (const uint8_t *)"x", 1, 150, &reply),
              KV_ERR_DEADLINE_EXCEEDED);
    CHECK(kv_clock_mono_ms() - t0 < SLOW_MS);
    for (int i = 0; i < 100 && atomic_load(&g_slow_done) == done; i++)
        msleep(20);
    CHECK(atomic_load(&g_slow_done) == done + 1);
    CHECK(atomic_load(&g_slow_deadline_hit) == hit + 1);

    /* A long enough deadline lets it finish. */
    CHECK_OK(rpc_client_call(g_alice, SLOW, (const uint8_t *)"x", 1, 5000, &reply));
    CHECK(reply_is(&reply, "done", NULL, 0));
    rpc_client_reply_free(&reply);
}

static void *slow_caller(void *arg)
{
    rpc_client *c = arg;
    rpc_client_reply reply = {0};
    kv_result r = rpc_client_call(c, SLOW, (const uint8_t *)"x", 1, 5000, &reply);
    rpc_client_reply_free(&reply);
    return (void *)(uintptr_t)kv_ok(r);
}

/* One worker busy: a queued call whose deadline passes never reaches its
 * handler. */
static void test_queued_past_deadline(void)
{
    rpc_server *one = NULL;
    CHECK_OK(server_start("127.0.0.1:0", 1, SMALL_MAX, &one));
    if (one == NULL) return;
    rpc_client *c = NULL;
    CHECK_OK(client_open(rpc_server_port(one), "alice", "localhost", SMALL_MAX, &c));
    if (c != NULL) {
        rpc_client_reply reply = {0};
        CHECK_OK(rpc_client_call(c, ECHO, (const uint8_t *)"warm", 4, 5000, &reply));
        rpc_client_reply_free(&reply);
        int before = atomic_load(&g_echo_calls);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, slow_caller, c) == 0);
        msleep(100);
        CHECK_ERR(rpc_client_call(c, ECHO, (const uint8_t *)"late", 4, 100, &reply),
                  KV_ERR_DEADLINE_EXCEEDED);
        void *ok = NULL;
        pthread_join(t, &ok);
        CHECK(ok == (void *)1);
        msleep(100);
        CHECK(atomic_load(&g_echo_calls) == before);
        /* The worker is free again. */
        CHECK_OK(rpc_client_call(c, ECHO, (const uint8_t *)"next", 4, 5000, &reply));
        CHECK(reply_is(&reply, "spiffe://test/alice\n", "next", 4));
        rpc_client_reply_free(&reply);
        rpc_client_close(c);
    }
    rpc_server_stop(one);
}

/* Dedicated methods: served by pools of their own with the request read
 * together with the call; a busy general pool does not hold them up. */
static void test_dedicated_pools(void)
{
    static const char *const hot[] = {ECHO, EMPTY, DEADLINE, NULL};
    rpc_server *srv = NULL;
    CHECK_OK(server_start_dedicated("127.0.0.1:0", 1, SMALL_MAX, hot, 1, &srv));
    if (srv == NULL) return;
    rpc_client *c = NULL;
    CHECK_OK(client_open(rpc_server_port(srv), "alice", "localhost", 1 << 20, &c));
    if (c != NULL) {
        static const uint8_t payload[] = {9, 0, 'x', 0xfe};
        rpc_client_reply reply = {0};
        CHECK_OK(rpc_client_call(c, ECHO, payload, sizeof(payload), 5000, &reply));
        CHECK(reply_is(&reply, "spiffe://test/alice\n", payload, sizeof(payload)));
        rpc_client_reply_free(&reply);
        /* An empty request message is a message, not a missing one. */
        CHECK_OK(rpc_client_call(c, EMPTY, NULL, 0, 5000, &reply));
        CHECK(reply.data != NULL && reply.len == 0);
        rpc_client_reply_free(&reply);
        CHECK_ERR(rpc_client_call(c, EMPTY, (const uint8_t *)"x", 1, 5000, &reply),
                  KV_ERR_INVALID_ARGUMENT);
        /* The deadline reaches the handler of a dedicated method too. */
        CHECK_OK(rpc_client_call(c, DEADLINE, (const uint8_t *)"x", 1, 10000, &reply));
        if (reply.data != NULL) {
            long long left = strtoll((const char *)reply.data, NULL, 10);
            CHECK(left > 8000 && left <= 10200);
        }
        rpc_client_reply_free(&reply);

        /* The general pool's only worker is busy for SLOW_MS: a dedicated
         * method still answers at once. */
        int slow_before = atomic_load(&g_slow_done);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, slow_caller, c) == 0);
        msleep(50);
        int64_t t0 = kv_clock_mono_ms();
        CHECK_OK(rpc_client_call(c, ECHO, (const uint8_t *)"fast", 4, 5000, &reply));
        int64_t dt = kv_clock_mono_ms() - t0;
        CHECK(reply_is(&reply, "spiffe://test/alice\n", "fast", 4));
        rpc_client_reply_free(&reply);
        CHECK(dt < SLOW_MS / 2);
        CHECK(atomic_load(&g_slow_done) == slow_before); /* the slow call was still running */
        void *ok = NULL;
        pthread_join(t, &ok);
        CHECK(ok == (void *)1);

        /* Too large for the server: refused before the handler, the
         * connection stays usable. */
        int before = atomic_load(&g_echo_calls);
        size_t len = SMALL_MAX + 4096;
        uint8_t *big = calloc(1, len);
        CHECK(big != NULL);
        if (big != NULL) {
            CHECK_ERR(rpc_client_call(c, ECHO, big, len, 5000, &reply), KV_ERR_RESOURCE_EXHAUSTED);
            free(big);
        }
        CHECK(atomic_load(&g_echo_calls) == before);
        CHECK_OK(rpc_client_call(c, ECHO, (const uint8_t *)"again", 5, 5000, &reply));
        rpc_client_reply_free(&reply);
        rpc_client_close(c);
    }
    rpc_server_stop(srv);

    /* A dedicated method must be in the table, and only once. */
    static const char *const unknown[] = {"/test.Echo/Nope", NULL};
    static const char *const twice[] = {ECHO, ECHO, NULL};
    srv = NULL;
    CHECK_ERR(server_start_dedicated("127.0.0.1:0", 1, 0, unknown, 1, &srv),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "/test.Echo/Nope") != NULL);
    CHECK_ERR(server_start_dedicated("127.0.0.1:0", 1, 0, twice, 1, &srv), KV_ERR_INVALID_ARGUMENT);
    CHECK(srv == NULL);
}

/* A queue keeps several calls in flight from one thread, on several
 * clients, and hands each back with its own tag and its own outcome. */
static void test_call_queue(void)
{
    rpc_client_queue *q = NULL;
    CHECK_OK(rpc_client_queue_open(&q));
    if (q == NULL) return;
    void *tag = (void *)1;
    rpc_client_reply reply = {0};
    CHECK_ERR(rpc_client_queue_next(q, &tag, &reply), KV_ERR_FAILED_PRECONDITION);
    CHECK(tag == NULL);

    rpc_client *bob = NULL;
    CHECK_OK(client_open(g_port, "bob", "localhost", SMALL_MAX, &bob));
    static int tags[6];
    if (bob != NULL) {
        CHECK_OK(
            rpc_client_queue_start(q, g_alice, ECHO, (const uint8_t *)"a0", 2, 5000, &tags[0]));
        CHECK_OK(rpc_client_queue_start(q, bob, ECHO, (const uint8_t *)"b1", 2, 5000, &tags[1]));
        CHECK_OK(rpc_client_queue_start(q, g_alice, FAIL, (const uint8_t *)"x", 1, 5000, &tags[2]));
        CHECK_OK(rpc_client_queue_start(q, bob, SECRET, (const uint8_t *)"x", 1, 5000, &tags[3]));
        CHECK_ERR(rpc_client_queue_start(q, g_alice, "no-slash", NULL, 0, 5000, &tags[4]),
                  KV_ERR_INVALID_ARGUMENT);
        CHECK(rpc_client_queue_in_flight(q) == 4);
        bool seen[4] = {false};
        for (int i = 0; i < 4; i++) {
            kv_result r = rpc_client_queue_next(q, &tag, &reply);
            int k = (int)((int *)tag - tags);
            CHECK(k >= 0 && k < 4 && !seen[k]);
            if (k < 0 || k >= 4) break;
            seen[k] = true;
            if (k == 0) CHECK(kv_ok(r) && reply_is(&reply, "spiffe://test/alice\n", "a0", 2));
            if (k == 1) CHECK(kv_ok(r) && reply_is(&reply, "bob\n", "b1", 2));
            if (k == 2)
                CHECK(kv_failed(r) && kv_error_code() == KV_ERR_FAILED_PRECONDITION &&
                      strcmp(kv_error_msg(), FAIL_MSG) == 0);
            if (k == 3) CHECK(kv_ok(r) && reply_is(&reply, "k3y-bytes", NULL, 0));
            rpc_client_reply_free(&reply);
        }
        CHECK(rpc_client_queue_in_flight(q) == 0);

        /* Closing with calls in flight cancels them instead of waiting. */
        CHECK_OK(rpc_client_queue_start(q, bob, SLOW, (const uint8_t *)"x", 1, 5000, &tags[5]));
        CHECK_OK(rpc_client_queue_start(q, bob, SLOW, (const uint8_t *)"x", 1, 5000, &tags[5]));
        int64_t t0 = kv_clock_mono_ms();
        rpc_client_queue_close(q);
        q = NULL;
        CHECK(kv_clock_mono_ms() - t0 < SLOW_MS);
        msleep(SLOW_MS * 2); /* let the server finish them before bob goes */
        rpc_client_close(bob);
    }
    rpc_client_queue_close(q);
}

static void test_handshake_refusals(void)
{
    rpc_client_reply reply = {0};
    int before = atomic_load(&g_echo_calls);

    rpc_client *anon = NULL;
    CHECK_OK(client_open(g_port, NULL, "localhost", SMALL_MAX, &anon));
    if (anon != NULL) {
        CHECK_ERR(rpc_client_call(anon, ECHO, (const uint8_t *)"x", 1, 10000, &reply),
                  KV_ERR_UNAVAILABLE);
        CHECK(reply.data == NULL);
        rpc_client_close(anon);
    }
    rpc_client *mallory = NULL;
    CHECK_OK(client_open(g_port, "mallory", "localhost", SMALL_MAX, &mallory));
    if (mallory != NULL) {
        CHECK_ERR(rpc_client_call(mallory, ECHO, (const uint8_t *)"x", 1, 10000, &reply),
                  KV_ERR_UNAVAILABLE);
        rpc_client_close(mallory);
    }
    /* Verified certificates without a usable principal: UNAUTHENTICATED. */
    static const char *const unusable[] = {"nocn", "cafe"};
    for (size_t i = 0; i < KV_ARRAY_LEN(unusable); i++) {
        rpc_client *c = NULL;
        CHECK_OK(client_open(g_port, unusable[i], "localhost", SMALL_MAX, &c));
        if (c == NULL) continue;
        CHECK_ERR(rpc_client_call(c, ECHO, (const uint8_t *)"x", 1, 10000, &reply),
                  KV_ERR_UNAUTHENTICATED);
        CHECK(strstr(kv_error_msg(), i == 0 ? "neither a SAN URI nor a CN" : "CN is not") != NULL);
        rpc_client_close(c);
    }
    /* The client checks the server too: a CA that did not sign it fails. */
    char target[64], ca[300], cert[300], key[300];
    snprintf(target, sizeof(target), "127.0.0.1:%d", g_port);
    rpc_client_config cfg = {.target = target,
                             .ca_file = path_of(ca, sizeof(ca), "otherca.pem"),
                             .cert_file = path_of(cert, sizeof(cert), "alice.pem"),
                             .key_file = path_of(key, sizeof(key), "alice.key"),
                             .server_name = "localhost"};
    rpc_client *wrong_ca = NULL;
    CHECK_OK(rpc_client_open(&cfg, &wrong_ca));
    if (wrong_ca != NULL) {
        CHECK_ERR(rpc_client_call(wrong_ca, ECHO, (const uint8_t *)"x", 1, 10000, &reply),
                  KV_ERR_UNAVAILABLE);
        rpc_client_close(wrong_ca);
    }
    /* A name the server certificate does not carry fails as well. */
    rpc_client *wrong_name = NULL;
    CHECK_OK(client_open(g_port, "alice", "vault.example.org", SMALL_MAX, &wrong_name));
    if (wrong_name != NULL) {
        CHECK_ERR(rpc_client_call(wrong_name, ECHO, (const uint8_t *)"x", 1, 10000, &reply),
                  KV_ERR_UNAVAILABLE);
        rpc_client_close(wrong_name);
    }
    CHECK(atomic_load(&g_echo_calls) == before);
}

#define N_THREADS 8
#define N_CALLS 200

static _Atomic int g_conc_ok;

static void *conc_worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint8_t buf[2048];
    for (int j = 0; j < N_CALLS; j++) {
        size_t len = (size_t)((j * 37 + id * 11) % (int)sizeof(buf)) + 1;
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)(id * 31 + j + k);
        rpc_client_reply reply = {0};
        if (kv_ok(rpc_client_call(g_alice, ECHO, buf, len, 10000, &reply)) &&
            reply_is(&reply, "spiffe://test/alice\n", buf, len))
            atomic_fetch_add(&g_conc_ok, 1);
        else
            fprintf(stderr, "thread %d call %d: %s: %s\n", id, j, kv_code_name(kv_error_code()),
                    kv_error_msg());
        rpc_client_reply_free(&reply);
    }
    return NULL;
}

static void test_concurrency(void)
{
    pthread_t t[N_THREADS];
    int64_t t0 = kv_clock_mono_ms();
    for (int i = 0; i < N_THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, conc_worker, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    int64_t dt = kv_clock_mono_ms() - t0;
    CHECK(atomic_load(&g_conc_ok) == N_THREADS * N_CALLS);
    fprintf(stderr, "%d calls from %d threads in %lld ms\n", N_THREADS * N_CALLS, N_THREADS,
            (long long)dt);
}

static void test_port_in_use(void)
{
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", g_port);
    rpc_server *second = NULL;
    CHECK_ERR(server_start(listen, 1, 0, &second), KV_ERR_UNAVAILABLE);
    CHECK(strstr(kv_error_msg(), listen) != NULL);
    CHECK(strstr(kv_error_msg(), "in use") != NULL);
    CHECK(second == NULL);
    /* The first server is unaffected. */
    rpc_client_reply reply = {0};
    CHECK_OK(rpc_client_call(g_alice, ECHO, (const uint8_t *)"still", 5, 5000, &reply));
    rpc_client_reply_free(&reply);
}

static void test_bad_config(void)
{
    char ca[300], cert[300], key[300], missing[300];
    rpc_server *s = NULL;
    rpc_server_config cfg = {.listen_addr = "127.0.0.1:0",
                             .ca_file = path_of(ca, sizeof(ca), "ca.pem"),
                             .cert_file = path_of(cert, sizeof(cert), "server.pem"),
                             .key_file = path_of(key, sizeof(key), "alice.key")};
    /* A key that does not belong to the certificate. */
    CHECK_ERR(rpc_server_start(&cfg, g_methods, KV_ARRAY_LEN(g_methods), NULL, &s),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "does not match") != NULL);
    cfg.key_file = path_of(missing, sizeof(missing), "missing.key");
    CHECK_ERR(rpc_server_start(&cfg, g_methods, KV_ARRAY_LEN(g_methods), NULL, &s),
              KV_ERR_NOT_FOUND);
    cfg.key_file = key;
    cfg.ca_file = path_of(ca, sizeof(ca), "alice.ext"); /* not PEM */
    path_of(key, sizeof(key), "server.key");
    CHECK_ERR(rpc_server_start(&cfg, g_methods, KV_ARRAY_LEN(g_methods), NULL, &s),
              KV_ERR_INVALID_ARGUMENT);
    path_of(ca, sizeof(ca), "ca.pem");
    static const rpc_method dup[] = {{ECHO, h_echo}, {FAIL, h_fail}, {ECHO, h_slow}};
    CHECK_ERR(rpc_server_start(&cfg, dup, KV_ARRAY_LEN(dup), NULL, &s), KV_ERR_INVALID_ARGUMENT);
    cfg.listen_addr = "256.1.1.1:0";
    CHECK_ERR(rpc_server_start(&cfg, g_methods, KV_ARRAY_LEN(g_methods), NULL, &s),
              KV_ERR_UNAVAILABLE);
    CHECK(s == NULL);

    rpc_client *c = NULL;
    rpc_client_config cc = {.target = "127.0.0.1:1", .ca_file = missing};
    CHECK_ERR(rpc_client_open(&cc, &c), KV_ERR_NOT_FOUND);
    CHECK(c == NULL);
}

/* Stop must not wait for an idle but connected client. */
static void test_stop_with_idle_client(void)
{
    rpc_client_reply reply = {0};
    CHECK_OK(rpc_client_call(g_alice, ECHO, (const uint8_t *)"last", 4, 5000, &reply));
    rpc_client_reply_free(&reply);
    int64_t t0 = kv_clock_mono_ms();
    rpc_server_stop(g_server);
    g_server = NULL;
    int64_t dt = kv_clock_mono_ms() - t0;
    fprintf(stderr, "rpc_server_stop took %lld ms\n", (long long)dt);
    CHECK(dt < 3000);
    CHECK_ERR(rpc_client_call(g_alice, ECHO, (const uint8_t *)"gone", 4, 3000, &reply),
              KV_ERR_UNAVAILABLE);
}

static void test_signals(void)
{
    /* rpc_signals_block ran first thing in main, so SIGTERM stays pending. */
    CHECK(raise(SIGTERM) == 0);
    CHECK(rpc_wait_signal() == SIGTERM);
    CHECK(raise(SIGINT) == 0);
    CHECK(rpc_wait_signal() == SIGINT);
}

int main(void)
{
    rpc_signals_block();
    rpc_global_init();
    kv_test_tmpdir(g_dir, sizeof(g_dir), "rpc");
    make_certs();

    RUN(test_bad_config);
    CHECK_OK(server_start("127.0.0.1:0", 4, SMALL_MAX, &g_server));
    if (g_server != NULL) {
        g_port = rpc_server_port(g_server);
        CHECK(g_port > 0);
        CHECK_OK(client_open(g_port, "alice", "localhost", SMALL_MAX, &g_alice));
    }
    if (g_alice != NULL) {
        RUN(test_echo_and_principals);
        RUN(test_errors);
        RUN(test_oversized);
        RUN(test_deadlines);
        RUN(test_handshake_refusals);
        RUN(test_concurrency);
        RUN(test_port_in_use);
        RUN(test_queued_past_deadline);
        RUN(test_dedicated_pools);
        RUN(test_call_queue);
        RUN(test_stop_with_idle_client);
    }
    RUN(test_signals);

    rpc_client_close(g_alice);
    rpc_server_stop(g_server);
    rpc_global_shutdown();
    kv_test_rmtree(g_dir);
    return kv_test_finish();
}
