/*
 * kv_json.h: a small strict JSON (RFC 8259) pull reader over untrusted bytes,
 * for the few JSON documents the vault reads (.byok files).  No allocation:
 * the reader walks a kv_cursor and decodes strings into caller buffers.
 *
 * Strict: one value per document, no comments, no trailing commas, no
 * leading zeros, no control characters or invalid UTF-8 in strings, no lone
 * surrogates, and no "\u0000" (the strings become C strings, and a NUL would
 * let "kid\u0000x" compare equal to "kid").  Nesting is limited to
 * KV_JSON_DEPTH_MAX.  Every error is INVALID_ARGUMENT naming the byte offset;
 * messages never echo the input.
 *
 * Use: kv_json_object_begin, then kv_json_object_next until *more is false,
 * reading each member's value with kv_json_string / kv_json_object_begin or
 * dropping it with kv_json_skip; finish with kv_json_end.
 */
#ifndef KV_JSON_H
#define KV_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "kv_cursor.h"
#include "kv_result.h"

#define KV_JSON_DEPTH_MAX 32

typedef struct {
    kv_cursor c;
    unsigned depth;                  /* objects opened by kv_json_object_begin, not yet closed */
    bool started[KV_JSON_DEPTH_MAX]; /* per open object: a member was read (',' comes next) */
} kv_json;

void kv_json_init(kv_json *j, const void *data, size_t len);
/* Expects an object ('{') as the next value. */
KV_RESULT kv_json_object_begin(kv_json *j);
/* Reads the next member name of the current object and its ':' (*more =
 * true), or the closing '}' (*more = false).  A name longer than cap-1 bytes
 * comes back as "" with *more = true: callers treat it as unknown and skip
 * its value. */
KV_RESULT kv_json_object_next(kv_json *j, char *name, size_t cap, bool *more);
/* Reads a string value, decoded to UTF-8 and NUL-terminated; *len (may be
 * NULL) excludes the NUL.  A string of more than cap-1 bytes is refused
 * (what names it is the caller's context). */
KV_RESULT kv_json_string(kv_json *j, char *out, size_t cap, size_t *len);
/* The same, but a longer string is cut to its first cap-1 bytes (for
 * informational text); *full_len (may be NULL) is the decoded length. */
KV_RESULT kv_json_string_prefix(kv_json *j, char *out, size_t cap, size_t *full_len);
/* Skips the next value of any type, checking that it is well formed. */
KV_RESULT kv_json_skip(kv_json *j);
/* Only whitespace may follow the document. */
KV_RESULT kv_json_end(kv_json *j);

#endif
