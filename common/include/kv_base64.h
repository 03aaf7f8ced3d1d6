/*
 * kv_base64.h: RFC 4648 base64 and base64url, strict decoding.
 * Decoding refuses characters outside the alphabet, misplaced padding and
 * non-zero trailing bits; base64url accepts input with or without '='.
 */
#ifndef KV_BASE64_H
#define KV_BASE64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

typedef enum {
    KV_B64_STD,    /* '+', '/', always padded on output, padding required on input */
    KV_B64_URL,    /* '-', '_', unpadded on output, padding optional on input */
} kv_b64_variant;

/* Bytes needed to encode n bytes, including the NUL. */
size_t kv_base64_encoded_len(size_t n, kv_b64_variant v);
/* Upper bound of decoded bytes for an n-char input. */
size_t kv_base64_decoded_max(size_t n);
/* Writes a NUL-terminated string; out_cap must be >= kv_base64_encoded_len. */
KV_RESULT kv_base64_encode(const uint8_t *in, size_t n, kv_b64_variant v, char *out,
                           size_t out_cap);
KV_RESULT kv_base64_decode(const char *in, size_t n, kv_b64_variant v, uint8_t *out,
                           size_t out_cap, size_t *out_len);

/* Lower-case hex of n bytes into out (2n+1 bytes). */
void kv_hex_encode(const uint8_t *in, size_t n, char *out);

#endif
