/*
 * fuzz_pages_request.c: what tdenode does with the bytes of a Pages request
 * before it touches a database: the method table's dispatch, the protobuf
 * decoding of every request type through the wiping allocator, the id and
 * target checks and the grants, on a node with no databases, no vault and
 * no data directory.  Input: byte 0 picks the method, byte 1 the caller
 * (an engine grant for every environment, an admin grant for env-fuzz, or
 * no grant), the rest is the request.
 *
 * Methods that go on to the vault when the checks pass (CreateDatabase,
 * OpenDatabase, ResetEnvironment) are fuzzed only as the caller without a
 * grant; the rest stop at NOT_FOUND (no database, no backup) at the latest.
 * Whatever the input, a call either fails with a code or replies with bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_log.h"
#include "node.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const callers[] = {"spiffe://fuzz/engine", "spiffe://fuzz/admin",
                                      "spiffe://fuzz/nobody"};

static bool reaches_vault(const char *method)
{
    return strstr(method, "/CreateDatabase") != NULL || strstr(method, "/OpenDatabase") != NULL ||
           strstr(method, "/ResetEnvironment") != NULL;
}

static tde_node *fuzz_node(void)
{
    static tde_node n;
    static bool ready;
    if (ready) return &n;
    kv_log_set_level(KV_LOG_ERROR);
    tde_config_defaults(&n.cfg);
    snprintf(n.cfg.data_dir, sizeof(n.cfg.data_dir), "/nonexistent/tdenode-fuzz");
    n.cfg.grants[0] = (tde_grant){.role = TDE_ROLE_ENGINE};
    snprintf(n.cfg.grants[0].principal, sizeof(n.cfg.grants[0].principal), "%s", callers[0]);
    n.cfg.grants[1] = (tde_grant){.role = TDE_ROLE_ADMIN};
    snprintf(n.cfg.grants[1].principal, sizeof(n.cfg.grants[1].principal), "%s", callers[1]);
    snprintf(n.cfg.grants[1].environment_id, sizeof(n.cfg.grants[1].environment_id), "env-fuzz");
    n.cfg.n_grants = 2;
    n.lock_fd = -1;
    pthread_mutex_init(&n.mu, NULL);
    pthread_rwlock_init(&n.vault_lock, NULL);
    ready = true;
    return &n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t count = 0;
    const rpc_method *methods = tde_methods(&count);
    const rpc_method *m = &methods[data[0] % count];
    const char *caller = callers[data[1] % KV_ARRAY_LEN(callers)];
    if (reaches_vault(m->method) && caller != callers[2]) caller = callers[2];
    rpc_ctx ctx = {.principal = caller, .method = m->method, .deadline_mono_ms = INT64_MAX};
    rpc_reply reply = {0};
    kv_error_clear();
    kv_result r = m->fn(fuzz_node(), &ctx, data + 2, size - 2, &reply);
#ifdef FUZZ_TRACE
    fprintf(stderr, "%s as %s: %s %s\n", m->method, caller, kv_code_name(kv_error_code()),
            kv_failed(r) ? kv_error_msg() : "(reply)");
#endif
    if (kv_ok(r)) {
        if (reply.data == NULL) abort();
        if (reply.sensitive) kv_wipe(reply.data, reply.len);
        free(reply.data);
    } else if (kv_error_code() == KV_OK || reply.data != NULL) {
        abort();
    }
    return 0;
}
