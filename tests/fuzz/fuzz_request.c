/*
 * fuzz_request.c: what vaultd does with request bytes before any handler
 * logic: protobuf decoding of every request type of the API through the
 * wiping allocator, and the base64 decoders used on text input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "kv_base64.h"
#include "kv_pb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const requests[] = {
    &hsmvault__v1__create_tenant_request__descriptor,
    &hsmvault__v1__get_tenant_request__descriptor,
    &hsmvault__v1__bind_role_request__descriptor,
    &hsmvault__v1__generate_key_request__descriptor,
    &hsmvault__v1__upload_key_request__descriptor,
    &hsmvault__v1__activate_key_request__descriptor,
    &hsmvault__v1__create_environment_request__descriptor,
    &hsmvault__v1__return_to_service_key_request__descriptor,
    &hsmvault__v1__create_database_key_request__descriptor,
    &hsmvault__v1__unwrap_database_key_request__descriptor,
    &hsmvault__v1__list_token_objects_request__descriptor,
    &hsmvault__v1__reconcile_request__descriptor,
    &hsmvault__v1__advance_clock_request__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
        ProtobufCMessage *m = NULL;
        if (kv_ok(kv_pb_unpack(requests[i], data, size, "request", &m))) {
            /* Whatever decodes must re-encode. */
            uint8_t *out = NULL;
            size_t out_len = 0;
            if (kv_failed(kv_pb_pack(m, &out, &out_len))) abort();
            kv_pb_buf_free(out, out_len);
        }
        kv_pb_free(m);
    }
    if (size <= 4096) {
        uint8_t out[4096];
        size_t n = 0;
        /* Whatever decodes must fit and re-encode to the same length class. */
        if (kv_ok(kv_base64_decode((const char *)data, size, KV_B64_STD, out, sizeof(out), &n)) &&
            n > sizeof(out))
            abort();
        if (kv_ok(kv_base64_decode((const char *)data, size, KV_B64_URL, out, sizeof(out), &n)) &&
            n > sizeof(out))
            abort();
    }
    return 0;
}
