/*
 * pb.c: wiping allocator and bounded pack/unpack for protobuf-c messages.
 * Must never free message memory without wiping it first.
 */
#include "kv_pb.h"

#include <stdlib.h>
#include <string.h>

#include "kv_secret.h"

/* Each block carries its size in a 16-byte header so free can wipe it. */
#define KV_PB_HDR 16

static void *kv_pb_alloc(void *data, size_t size)
{
    (void)data;
    if (size > SIZE_MAX - KV_PB_HDR) return NULL;
    uint8_t *p = malloc(size + KV_PB_HDR);
    if (p == NULL) return NULL;
    memcpy(p, &size, sizeof(size));
    return p + KV_PB_HDR;
}

static void kv_pb_dealloc(void *data, void *ptr)
{
    (void)data;
    if (ptr == NULL) return;
    uint8_t *p = (uint8_t *)ptr - KV_PB_HDR;
    size_t size;
    memcpy(&size, p, sizeof(size));
    kv_wipe(ptr, size);
    free(p);
}

ProtobufCAllocator kv_pb_wiping_allocator = {
    .alloc = kv_pb_alloc,
    .free = kv_pb_dealloc,
    .allocator_data = NULL,
};

kv_result kv_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                       const char *what, ProtobufCMessage **out)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &kv_pb_wiping_allocator, len, data);
    KV_ENSURE(m != NULL, KV_ERR_INVALID_ARGUMENT, "malformed %s: not a valid %s message", what,
              desc->name);
    *out = m;
    return KV_SUCCESS;
}

void kv_pb_free(ProtobufCMessage *msg)
{
    if (msg != NULL) protobuf_c_message_free_unpacked(msg, &kv_pb_wiping_allocator);
}

kv_result kv_pb_pack(const ProtobufCMessage *msg, uint8_t **data, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n > 0 ? n : 1);
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory packing %s",
              msg->descriptor->name);
    size_t w = protobuf_c_message_pack(msg, buf);
    if (w != n) {
        free(buf);
        KV_BAIL(KV_ERR_INTERNAL, "packing %s wrote %zu of %zu bytes", msg->descriptor->name, w, n);
    }
    *data = buf;
    *len = n;
    return KV_SUCCESS;
}

void kv_pb_buf_free(uint8_t *data, size_t len)
{
    if (data == NULL) return;
    kv_wipe(data, len);
    free(data);
}
