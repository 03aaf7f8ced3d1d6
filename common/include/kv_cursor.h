/*
 * kv_cursor.h: a bounds-checked reader over untrusted bytes (requests, PFX,
 * BYOK blobs, LMDB values, pages) and a fixed-capacity writer.
 *
 * Rules: every read checks the requested length against the remaining bytes
 * before touching memory; a failed read moves nothing; parsers finish with
 * kv_cursor_expect_end so trailing bytes are an error.
 */
#ifndef KV_CURSOR_H
#define KV_CURSOR_H

#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

typedef struct {
    const uint8_t *data;
    size_t len;
    size_t off;
} kv_cursor;

void kv_cursor_init(kv_cursor *c, const void *data, size_t len);
size_t kv_cursor_remaining(const kv_cursor *c);
KV_RESULT kv_cursor_read(kv_cursor *c, void *out, size_t n);
/* Points *out at the next n bytes (no copy) and advances. */
KV_RESULT kv_cursor_take(kv_cursor *c, size_t n, const uint8_t **out);
KV_RESULT kv_cursor_skip(kv_cursor *c, size_t n);
KV_RESULT kv_cursor_read_u8(kv_cursor *c, uint8_t *out);
KV_RESULT kv_cursor_read_u16be(kv_cursor *c, uint16_t *out);
KV_RESULT kv_cursor_read_u32be(kv_cursor *c, uint32_t *out);
KV_RESULT kv_cursor_read_u64be(kv_cursor *c, uint64_t *out);
KV_RESULT kv_cursor_expect_end(const kv_cursor *c);

typedef struct {
    uint8_t *data;
    size_t cap;
    size_t len;
} kv_writer;

void kv_writer_init(kv_writer *w, void *buf, size_t cap);
KV_RESULT kv_writer_write(kv_writer *w, const void *src, size_t n);
KV_RESULT kv_writer_write_u8(kv_writer *w, uint8_t v);
KV_RESULT kv_writer_write_u16be(kv_writer *w, uint16_t v);
KV_RESULT kv_writer_write_u32be(kv_writer *w, uint32_t v);
KV_RESULT kv_writer_write_u64be(kv_writer *w, uint64_t v);

#endif
