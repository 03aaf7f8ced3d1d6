/*
 * kv_pb.h: protobuf-c helpers shared by vaultd and the client.
 *
 * kv_pb_wiping_allocator: messages that carry passwords, PFX files or DEKs
 * are unpacked and freed through it, so their heap copies are wiped.
 * kv_pb_unpack/kv_pb_pack: bounded unpack of untrusted bytes into a message
 * (INVALID_ARGUMENT on malformed input) and packing into a malloc'd buffer.
 */
#ifndef KV_PB_H
#define KV_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

extern ProtobufCAllocator kv_pb_wiping_allocator;

/* Unpacks len bytes as a message of type desc; *out is freed with
 * kv_pb_free.  Every unpack goes through the wiping allocator. */
KV_RESULT kv_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                       const char *what, ProtobufCMessage **out);
void kv_pb_free(ProtobufCMessage *msg);
/* Packs msg into a malloc'd buffer (*len bytes; a zero-length message gets a
 * 1-byte allocation so *data is never NULL). */
KV_RESULT kv_pb_pack(const ProtobufCMessage *msg, uint8_t **data, size_t *len);
/* Wipes and frees a packed buffer. */
void kv_pb_buf_free(uint8_t *data, size_t len);

#endif
