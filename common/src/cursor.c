/*
 * cursor.c: bounded reads of untrusted bytes and bounded writes.
 * Must never read or write outside [data, data+len) / [data, data+cap).
 */
#include "kv_cursor.h"

#include <string.h>

void kv_cursor_init(kv_cursor *c, const void *data, size_t len)
{
    c->data = data;
    c->len = data != NULL ? len : 0;
    c->off = 0;
}

size_t kv_cursor_remaining(const kv_cursor *c) { return c->len - c->off; }

kv_result kv_cursor_take(kv_cursor *c, size_t n, const uint8_t **out)
{
    KV_ENSURE(n <= kv_cursor_remaining(c), KV_ERR_INVALID_ARGUMENT,
              "input truncated: need %zu bytes at offset %zu, %zu left", n, c->off,
              kv_cursor_remaining(c));
    *out = c->data + c->off;
    c->off += n;
    return KV_SUCCESS;
}

kv_result kv_cursor_read(kv_cursor *c, void *out, size_t n)
{
    const uint8_t *p;
    KV_GUARD(kv_cursor_take(c, n, &p));
    if (n > 0) memcpy(out, p, n);
    return KV_SUCCESS;
}

kv_result kv_cursor_skip(kv_cursor *c, size_t n)
{
    const uint8_t *p;
    return kv_cursor_take(c, n, &p);
}

kv_result kv_cursor_read_u8(kv_cursor *c, uint8_t *out) { return kv_cursor_read(c, out, 1); }

static uint64_t kv_load_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

kv_result kv_cursor_read_u16be(kv_cursor *c, uint16_t *out)
{
    const uint8_t *p;
    KV_GUARD(kv_cursor_take(c, 2, &p));
    *out = (uint16_t)kv_load_be(p, 2);
    return KV_SUCCESS;
}

kv_result kv_cursor_read_u32be(kv_cursor *c, uint32_t *out)
{
    const uint8_t *p;
    KV_GUARD(kv_cursor_take(c, 4, &p));
    *out = (uint32_t)kv_load_be(p, 4);
    return KV_SUCCESS;
}

kv_result kv_cursor_read_u64be(kv_cursor *c, uint64_t *out)
{
    const uint8_t *p;
    KV_GUARD(kv_cursor_take(c, 8, &p));
    *out = kv_load_be(p, 8);
    return KV_SUCCESS;
}

kv_result kv_cursor_expect_end(const kv_cursor *c)
{
    KV_ENSURE(kv_cursor_remaining(c) == 0, KV_ERR_INVALID_ARGUMENT,
              "%zu unexpected trailing bytes at offset %zu", kv_cursor_remaining(c), c->off);
    return KV_SUCCESS;
}

void kv_writer_init(kv_writer *w, void *buf, size_t cap)
{
    w->data = buf;
    w->cap = buf != NULL ? cap : 0;
    w->len = 0;
}

kv_result kv_writer_write(kv_writer *w, const void *src, size_t n)
{
    KV_ENSURE(n <= w->cap - w->len, KV_ERR_RESOURCE_EXHAUSTED,
              "output buffer full: %zu bytes do not fit in %zu left", n, w->cap - w->len);
    if (n > 0) memcpy(w->data + w->len, src, n);
    w->len += n;
    return KV_SUCCESS;
}

static kv_result kv_writer_write_be(kv_writer *w, uint64_t v, size_t n)
{
    uint8_t b[8];
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    return kv_writer_write(w, b, n);
}

kv_result kv_writer_write_u8(kv_writer *w, uint8_t v) { return kv_writer_write_be(w, v, 1); }
kv_result kv_writer_write_u16be(kv_writer *w, uint16_t v) { return kv_writer_write_be(w, v, 2); }
kv_result kv_writer_write_u32be(kv_writer *w, uint32_t v) { return kv_writer_write_be(w, v, 4); }
kv_result kv_writer_write_u64be(kv_writer *w, uint64_t v) { return kv_writer_write_be(w, v, 8); }
