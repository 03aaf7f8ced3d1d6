/*
 * json.c: the strict JSON pull reader of kv_json.h.  Every byte is read
 * through the cursor (bounds checked before use); recursion (kv_json_skip)
 * is bounded by KV_JSON_DEPTH_MAX.  Must never write past a caller buffer,
 * never accept what RFC 8259 refuses, and never put input bytes in a message.
 */
#include "kv_json.h"

#include <string.h>

static kv_result json_error(const kv_json *j, const char *what)
{
    return kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                        "malformed JSON at byte %zu: %s", j->c.off, what);
}

static bool json_peek(const kv_json *j, uint8_t *ch)
{
    if (kv_cursor_remaining(&j->c) == 0) return false;
    *ch = j->c.data[j->c.off];
    return true;
}

/* Takes the next byte; the caller has checked the document does not end. */
static uint8_t json_take(kv_json *j)
{
    return j->c.data[j->c.off++];
}

static void json_ws(kv_json *j)
{
    uint8_t ch;
    while (json_peek(j, &ch) && (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'))
        j->c.off++;
}

/* Skips whitespace and peeks at the next byte, which must exist. */
static kv_result json_next(kv_json *j, uint8_t *ch)
{
    *ch = 0;
    json_ws(j);
    if (!json_peek(j, ch)) return json_error(j, "the document ends early");
    return KV_SUCCESS;
}

void kv_json_init(kv_json *j, const void *data, size_t len)
{
    memset(j, 0, sizeof(*j));
    kv_cursor_init(&j->c, data, len);
}

/* --- strings --- */

static int json_hex(uint8_t ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static kv_result json_u16(kv_json *j, unsigned *out)
{
    const uint8_t *p;
    if (kv_failed(kv_cursor_take(&j->c, 4, &p))) return json_error(j, "a \\u escape is truncated");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = json_hex(p[i]);
        if (d < 0) {
            j->c.off -= 4;
            return json_error(j, "a \\u escape needs four hex digits");
        }
        v = v << 4 | (unsigned)d;
    }
    *out = v;
    return KV_SUCCESS;
}

/* Appends code point cp as UTF-8 to out (when it fits; *n counts anyway). */
static void json_put_utf8(unsigned cp, char *out, size_t cap, size_t *n)
{
    uint8_t b[4];
    size_t k;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        k = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xc0 | cp >> 6);
        b[1] = (uint8_t)(0x80 | (cp & 0x3f));
        k = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xe0 | cp >> 12);
        b[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        b[2] = (uint8_t)(0x80 | (cp & 0x3f));
        k = 3;
    } else {
        b[0] = (uint8_t)(0xf0 | cp >> 18);
        b[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
        b[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        b[3] = (uint8_t)(0x80 | (cp & 0x3f));
        k = 4;
    }
    for (size_t i = 0; i < k; i++, (*n)++)
        if (out != NULL && *n < cap) out[*n] = (char)b[i];
}

static kv_result json_escape(kv_json *j, char *out, size_t cap, size_t *n)
{
    if (kv_cursor_remaining(&j->c) == 0) return json_error(j, "a string ends inside an escape");
    uint8_t e = json_take(j);
    unsigned cp;
    switch (e) {
    case '"':
    case '\\':
    case '/':
        cp = e;
        break;
    case 'b':
        cp = '\b';
        break;
    case 'f':
        cp = '\f';
        break;
    case 'n':
        cp = '\n';
        break;
    case 'r':
        cp = '\r';
        break;
    case 't':
        cp = '\t';
        break;
    case 'u':
        KV_GUARD(json_u16(j, &cp));
        if (cp >= 0xdc00 && cp <= 0xdfff) return json_error(j, "a lone low surrogate");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            unsigned lo;
            const uint8_t *p;
            if (kv_failed(kv_cursor_take(&j->c, 2, &p)) || p[0] != '\\' || p[1] != 'u')
                return json_error(j, "a high surrogate without its low half");
            KV_GUARD(json_u16(j, &lo));
            if (lo < 0xdc00 || lo > 0xdfff)
                return json_error(j, "a high surrogate without its low half");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0) return json_error(j, "\\u0000 is not accepted in strings");
        break;
    default:
        j->c.off--;
        return json_error(j, "an unknown escape in a string");
    }
    json_put_utf8(cp, out, cap, n);
    return KV_SUCCESS;
}

/* Checks one raw UTF-8 sequence starting with lead (already taken). */
static kv_result json_utf8(kv_json *j, uint8_t lead, char *out, size_t cap, size_t *n)
{
    size_t more;
    unsigned cp, min;
    if (lead >= 0xc2 && lead <= 0xdf) {
        more = 1, cp = lead & 0x1fu, min = 0x80;
    } else if (lead >= 0xe0 && lead <= 0xef) {
        more = 2, cp = lead & 0x0fu, min = 0x800;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        more = 3, cp = lead & 0x07u, min = 0x10000;
    } else {
        j->c.off--;
        return json_error(j, "invalid UTF-8 in a string");
    }
    const uint8_t *p;
    if (kv_failed(kv_cursor_take(&j->c, more, &p))) return json_error(j, "truncated UTF-8");
    for (size_t i = 0; i < more; i++) {
        if ((p[i] & 0xc0) != 0x80) return json_error(j, "invalid UTF-8 in a string");
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return json_error(j, "invalid UTF-8 in a string");
    json_put_utf8(cp, out, cap, n);
    return KV_SUCCESS;
}

/* Reads a string (the opening quote is next).  Decodes into out while it
 * fits in cap bytes (out may be NULL); *n is the full decoded length. */
static kv_result json_string_raw(kv_json *j, char *out, size_t cap, size_t *n)
{
    uint8_t ch;
    KV_GUARD(json_next(j, &ch));
    if (ch != '"') return json_error(j, "expected a string");
    j->c.off++;
    *n = 0;
    for (;;) {
        if (kv_cursor_remaining(&j->c) == 0) return json_error(j, "a string is not closed");
        ch = json_take(j);
        if (ch == '"') return KV_SUCCESS;
        if (ch == '\\') {
            KV_GUARD(json_escape(j, out, cap, n));
        } else if (ch < 0x20) {
            j->c.off--;
            return json_error(j, "a control character in a string");
        } else if (ch < 0x80) {
            if (out != NULL && *n < cap) out[*n] = (char)ch;
            (*n)++;
        } else {
            KV_GUARD(json_utf8(j, ch, out, cap, n));
        }
    }
}

kv_result kv_json_string(kv_json *j, char *out, size_t cap, size_t *len)
{
    KV_ENSURE(out != NULL && cap > 0, KV_ERR_INTERNAL, "kv_json_string: no buffer");
    size_t start = j->c.off, n = 0;
    KV_GUARD(json_string_raw(j, out, cap - 1, &n));
    if (n > cap - 1) {
        j->c.off = start;
        out[0] = '\0';
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "the string at byte %zu is %zu bytes; at most %zu allowed",
                start, n, cap - 1);
    }
    out[n] = '\0';
    if (len != NULL) *len = n;
    return KV_SUCCESS;
}

kv_result kv_json_string_prefix(kv_json *j, char *out, size_t cap, size_t *full_len)
{
    KV_ENSURE(out != NULL && cap > 0, KV_ERR_INTERNAL, "kv_json_string_prefix: no buffer");
    size_t n = 0;
    KV_GUARD(json_string_raw(j, out, cap - 1, &n));
    out[n < cap - 1 ? n : cap - 1] = '\0';
    if (full_len != NULL) *full_len = n;
    return KV_SUCCESS;
}

/* --- objects --- */

kv_result kv_json_object_begin(kv_json *j)
{
    uint8_t ch;
    KV_GUARD(json_next(j, &ch));
    if (ch != '{') return json_error(j, "expected an object");
    if (j->depth >= KV_JSON_DEPTH_MAX) return json_error(j, "objects nest too deeply");
    j->c.off++;
    j->started[j->depth++] = false;
    return KV_SUCCESS;
}

kv_result kv_json_object_next(kv_json *j, char *name, size_t cap, bool *more)
{
    KV_ENSURE(j->depth > 0 && name != NULL && cap > 0, KV_ERR_INTERNAL,
              "kv_json_object_next outside an object");
    uint8_t ch;
    KV_GUARD(json_next(j, &ch));
    if (ch == '}') {
        j->c.off++;
        j->depth--;
        *more = false;
        name[0] = '\0';
        return KV_SUCCESS;
    }
    if (j->started[j->depth - 1]) {
        if (ch != ',') return json_error(j, "expected ',' or '}' after a member");
        j->c.off++;
        KV_GUARD(json_next(j, &ch));
        if (ch == '}') return json_error(j, "a trailing comma before '}'");
    }
    size_t n = 0;
    KV_GUARD(json_string_raw(j, name, cap - 1, &n));
    name[n <= cap - 1 ? n : 0] = '\0';
    KV_GUARD(json_next(j, &ch));
    if (ch != ':') return json_error(j, "expected ':' after a member name");
    j->c.off++;
    j->started[j->depth - 1] = true;
    *more = true;
    return KV_SUCCESS;
}

/* --- skipping --- */

static kv_result json_literal(kv_json *j, const char *word)
{
    size_t n = strlen(word);
    const uint8_t *p;
    if (kv_failed(kv_cursor_take(&j->c, n, &p)) || memcmp(p, word, n) != 0)
        return json_error(j, "expected a value");
    return KV_SUCCESS;
}

static bool json_digit(const kv_json *j)
{
    uint8_t ch;
    return json_peek(j, &ch) && ch >= '0' && ch <= '9';
}

static kv_result json_number(kv_json *j)
{
    uint8_t ch;
    if (json_peek(j, &ch) && ch == '-') j->c.off++;
    if (!json_digit(j)) return json_error(j, "expected a digit");
    if (json_take(j) != '0')
        while (json_digit(j))
            j->c.off++;
    if (json_peek(j, &ch) && ch == '.') {
        j->c.off++;
        if (!json_digit(j)) return json_error(j, "expected a digit after '.'");
        while (json_digit(j))
            j->c.off++;
    }
    if (json_peek(j, &ch) && (ch == 'e' || ch == 'E')) {
        j->c.off++;
        if (json_peek(j, &ch) && (ch == '+' || ch == '-')) j->c.off++;
        if (!json_digit(j)) return json_error(j, "expected a digit in an exponent");
        while (json_digit(j))
            j->c.off++;
    }
    if (json_peek(j, &ch) && ch >= '0' && ch <= '9') return json_error(j, "a leading zero");
    return KV_SUCCESS;
}

static kv_result json_skip_at(kv_json *j, unsigned depth);

/* Skips the rest of an array or object whose opening bracket was taken. */
static kv_result json_skip_container(kv_json *j, unsigned depth, bool object)
{
    uint8_t close = object ? '}' : ']', ch;
    if (depth >= KV_JSON_DEPTH_MAX) return json_error(j, "values nest too deeply");
    KV_GUARD(json_next(j, &ch));
    if (ch == close) {
        j->c.off++;
        return KV_SUCCESS;
    }
    for (;;) {
        if (object) {
            size_t n;
            KV_GUARD(json_string_raw(j, NULL, 0, &n));
            KV_GUARD(json_next(j, &ch));
            if (ch != ':') return json_error(j, "expected ':' after a member name");
            j->c.off++;
        }
        KV_GUARD(json_skip_at(j, depth + 1));
        KV_GUARD(json_next(j, &ch));
        j->c.off++;
        if (ch == close) return KV_SUCCESS;
        if (ch != ',') {
            j->c.off--;
            return json_error(j, object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
        KV_GUARD(json_next(j, &ch));
        if (ch == close) return json_error(j, "a trailing comma");
    }
}

static kv_result json_skip_at(kv_json *j, unsigned depth)
{
    uint8_t ch;
    size_t n;
    KV_GUARD(json_next(j, &ch));
    switch (ch) {
    case '"':
        return json_string_raw(j, NULL, 0, &n);
    case '{':
    case '[':
        j->c.off++;
        return json_skip_container(j, depth, ch == '{');
    case 't':
        return json_literal(j, "true");
    case 'f':
        return json_literal(j, "false");
    case 'n':
        return json_literal(j, "null");
    default:
        if (ch == '-' || (ch >= '0' && ch <= '9')) return json_number(j);
        return json_error(j, "expected a value");
    }
}

kv_result kv_json_skip(kv_json *j)
{
    return json_skip_at(j, j->depth);
}

kv_result kv_json_end(kv_json *j)
{
    KV_ENSURE(j->depth == 0, KV_ERR_INVALID_ARGUMENT, "malformed JSON: %u objects are not closed",
              j->depth);
    json_ws(j);
    if (kv_cursor_remaining(&j->c) != 0) return json_error(j, "bytes after the document");
    return KV_SUCCESS;
}
