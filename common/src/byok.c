/*
 * byok.c: reading and writing the .byok transfer file (kv_byok.h) with the
 * strict reader of kv_json.h.  Untrusted input: every field is bounded, every
 * failure is INVALID_ARGUMENT naming the field, nothing half-parsed survives
 * a failure, and no message echoes the ciphertext.
 */
#include "kv_byok.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_base64.h"
#include "kv_json.h"

#define BYOK_NAME_MAX 64
/* Base64url of KV_BYOK_CIPHERTEXT_MAX bytes, padded, plus the NUL. */
#define BYOK_CT_TEXT_MAX ((KV_BYOK_CIPHERTEXT_MAX + 2) / 3 * 4 + 1)
#define BYOK_SHORT_MAX 64

const char *kv_byok_hash_name(kv_byok_hash h)
{
    return h == KV_BYOK_OAEP_SHA256 ? "SHA-256" : "SHA-1";
}

/* A string member that must hold exactly want. */
static kv_result byok_expect_text(kv_json *j, const char *field, const char *want)
{
    char v[BYOK_SHORT_MAX];
    kv_result r = kv_json_string(j, v, sizeof(v), NULL);
    if (kv_failed(r)) {
        kv_error_context("%s", field);
        return r;
    }
    KV_ENSURE(strcmp(v, want) == 0, KV_ERR_INVALID_ARGUMENT,
              "%s must be \"%s\"; this file is not in the supported .byok format", field, want);
    return KV_SUCCESS;
}

static bool byok_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) return false;
    return true;
}

/* One known member of a JSON object: its reader, and the message when a
 * required member is missing (NULL: optional). */
typedef kv_result (*byok_member_fn)(kv_json *j, kv_byok *out);
typedef struct {
    const char *name; /* as in the file */
    const char *path; /* as in messages */
    byok_member_fn read;
    const char *missing;
} byok_member;

#define BYOK_MEMBERS_MAX 4

/* Reads an object whose known members are m[0..n); unknown members are
 * skipped (ignored), a known one given twice is refused. */
static kv_result byok_object(kv_json *j, kv_byok *out, const byok_member *m, size_t n)
{
    bool seen[BYOK_MEMBERS_MAX] = {false};
    char name[BYOK_NAME_MAX];
    bool more;
    KV_GUARD(kv_json_object_begin(j));
    for (;;) {
        KV_GUARD(kv_json_object_next(j, name, sizeof(name), &more));
        if (!more) break;
        size_t i = 0;
        while (i < n && strcmp(name, m[i].name) != 0)
            i++;
        if (i == n) {
            KV_GUARD(kv_json_skip(j));
            continue;
        }
        KV_ENSURE(!seen[i], KV_ERR_INVALID_ARGUMENT, "the .byok file names %s twice", m[i].path);
        seen[i] = true;
        KV_GUARD(m[i].read(j, out));
    }
    for (size_t i = 0; i < n; i++)
        KV_ENSURE(seen[i] || m[i].missing == NULL, KV_ERR_INVALID_ARGUMENT, "%s is missing%s",
                  m[i].path, m[i].missing);
    return KV_SUCCESS;
}

static kv_result byok_kid(kv_json *j, kv_byok *out)
{
    kv_result r = kv_json_string(j, out->kid, sizeof(out->kid), NULL);
    if (kv_failed(r)) {
        kv_error_context("header.kid");
        return r;
    }
    KV_ENSURE(out->kid[0] != '\0' && byok_printable(out->kid), KV_ERR_INVALID_ARGUMENT,
              "header.kid must be a non-empty printable ASCII key id");
    return KV_SUCCESS;
}

static kv_result byok_alg(kv_json *j, kv_byok *out)
{
    (void)out;
    return byok_expect_text(j, "header.alg", KV_BYOK_ALG);
}

static kv_result byok_enc(kv_json *j, kv_byok *out)
{
    (void)out;
    return byok_expect_text(j, "header.enc", KV_BYOK_ENC);
}

static kv_result byok_hash(kv_json *j, kv_byok *out)
{
    char v[BYOK_SHORT_MAX];
    kv_result r = kv_json_string(j, v, sizeof(v), NULL);
    if (kv_failed(r)) {
        kv_error_context("header.oaep_hash");
        return r;
    }
    if (strcmp(v, "SHA-1") == 0)
        out->oaep_hash = KV_BYOK_OAEP_SHA1;
    else if (strcmp(v, "SHA-256") == 0)
        out->oaep_hash = KV_BYOK_OAEP_SHA256;
    else
        KV_BAIL(KV_ERR_INVALID_ARGUMENT,
                "header.oaep_hash must be \"SHA-1\" or \"SHA-256\" (or absent: SHA-1)");
    return KV_SUCCESS;
}

static const byok_member byok_header_members[] = {
    {"kid", "header.kid", byok_kid, ": the .byok file must name the import key it was made for"},
    {"alg", "header.alg", byok_alg, " (it must be \"" KV_BYOK_ALG "\")"},
    {"enc", "header.enc", byok_enc, " (it must be \"" KV_BYOK_ENC "\")"},
    {"oaep_hash", "header.oaep_hash", byok_hash, NULL},
};

static kv_result byok_header(kv_json *j, kv_byok *out)
{
    return byok_object(j, out, byok_header_members, KV_ARRAY_LEN(byok_header_members));
}

static kv_result byok_schema(kv_json *j, kv_byok *out)
{
    (void)out;
    return byok_expect_text(j, "schema_version", KV_BYOK_SCHEMA_VERSION);
}

static kv_result byok_ciphertext(kv_json *j, kv_byok *out)
{
    char *text = malloc(BYOK_CT_TEXT_MAX);
    uint8_t *ct = malloc(KV_BYOK_CIPHERTEXT_MAX);
    size_t n = 0, ct_len = 0;
    kv_result r = KV_SUCCESS;
    KV_ENSURE_GOTO(text != NULL && ct != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    r = kv_json_string(j, text, BYOK_CT_TEXT_MAX, &n);
    if (kv_failed(r)) {
        kv_error_context("ciphertext (at most %u bytes of key material)", KV_BYOK_CIPHERTEXT_MAX);
        goto out;
    }
    r = kv_base64_decode(text, n, KV_B64_URL, ct, KV_BYOK_CIPHERTEXT_MAX, &ct_len);
    if (kv_failed(r)) {
        kv_error_context("ciphertext is not base64url");
        goto out;
    }
    KV_ENSURE_GOTO(ct_len > 0, r, out, KV_ERR_INVALID_ARGUMENT, "ciphertext is empty");
    out->ciphertext = ct;
    out->ciphertext_len = ct_len;
    ct = NULL;
out:
    free(text);
    free(ct);
    return r;
}

static kv_result byok_generator(kv_json *j, kv_byok *out)
{
    char v[KV_BYOK_GENERATOR_MAX + 1];
    kv_result r = kv_json_string_prefix(j, v, sizeof(v), NULL);
    if (kv_failed(r)) {
        kv_error_context("generator");
        return r;
    }
    size_t i = 0;
    for (; v[i] != '\0' && i < KV_BYOK_GENERATOR_MAX; i++) {
        unsigned char ch = (unsigned char)v[i];
        out->generator[i] = ch >= 0x20 && ch <= 0x7e ? (char)ch : '?';
    }
    out->generator[i] = '\0';
    return KV_SUCCESS;
}

static const byok_member byok_members[] = {
    {"schema_version", "schema_version", byok_schema,
     " (it must be \"" KV_BYOK_SCHEMA_VERSION "\")"},
    {"header", "header", byok_header, ""},
    {"ciphertext", "ciphertext", byok_ciphertext, ""},
    {"generator", "generator", byok_generator, NULL},
};

kv_result kv_byok_parse(const uint8_t *data, size_t len, kv_byok *out)
{
    KV_ENSURE(out != NULL, KV_ERR_INTERNAL, "kv_byok_parse: no output");
    memset(out, 0, sizeof(*out));
    KV_ENSURE(data != NULL && len > 0, KV_ERR_INVALID_ARGUMENT, "the .byok file is empty");
    KV_ENSURE(len <= KV_BYOK_FILE_MAX, KV_ERR_INVALID_ARGUMENT,
              "the .byok file is %zu bytes; a .byok file is at most %u bytes", len,
              KV_BYOK_FILE_MAX);
    out->oaep_hash = KV_BYOK_OAEP_SHA1;
    kv_json j;
    kv_json_init(&j, data, len);
    kv_result r = byok_object(&j, out, byok_members, KV_ARRAY_LEN(byok_members));
    if (kv_ok(r)) r = kv_json_end(&j);
    if (kv_failed(r)) {
        kv_error_context("not a valid .byok file");
        kv_byok_free(out);
    }
    return r;
}

void kv_byok_free(kv_byok *b)
{
    if (b == NULL) return;
    free(b->ciphertext);
    memset(b, 0, sizeof(*b));
}

kv_result kv_byok_split(const kv_byok *b, size_t modulus_len, const uint8_t **rsa_part,
                        const uint8_t **kwp_part, size_t *kwp_len)
{
    KV_ENSURE(b != NULL && b->ciphertext != NULL && modulus_len > 0, KV_ERR_INTERNAL,
              "kv_byok_split: missing argument");
    KV_ENSURE(b->ciphertext_len > modulus_len, KV_ERR_INVALID_ARGUMENT,
              "the ciphertext is %zu bytes: too short for the %zu-byte RSA part of the import "
              "key plus a wrapped key",
              b->ciphertext_len, modulus_len);
    size_t rest = b->ciphertext_len - modulus_len;
    KV_ENSURE(rest >= KV_BYOK_KWP_MIN && rest % 8 == 0, KV_ERR_INVALID_ARGUMENT,
              "the wrapped key after the %zu-byte RSA part is %zu bytes; AES key wrap with "
              "padding (RFC 5649) gives a multiple of 8, at least %u: the ciphertext is "
              "truncated or was made for an import key of another size",
              modulus_len, rest, KV_BYOK_KWP_MIN);
    *rsa_part = b->ciphertext;
    *kwp_part = b->ciphertext + modulus_len;
    *kwp_len = rest;
    return KV_SUCCESS;
}

/* Appends text as a JSON string body; only printable ASCII is allowed. */
static kv_result byok_check_field(const char *field, const char *v, size_t max)
{
    KV_ENSURE(v != NULL && v[0] != '\0' && strlen(v) <= max && byok_printable(v),
              KV_ERR_INVALID_ARGUMENT, "%s must be 1 to %zu printable ASCII characters", field,
              max);
    return KV_SUCCESS;
}

/* Writes v escaped for a JSON string (printable ASCII: only '"' and '\'). */
static size_t byok_escape(const char *v, char *out)
{
    size_t n = 0;
    for (; *v; v++) {
        if (*v == '"' || *v == '\\') out[n++] = '\\';
        out[n++] = *v;
    }
    out[n] = '\0';
    return n;
}

kv_result kv_byok_format(const char *kid, kv_byok_hash hash, const uint8_t *ct, size_t ct_len,
                         const char *generator, char **json, size_t *json_len)
{
    KV_GUARD(byok_check_field("kid", kid, KV_BYOK_KID_MAX));
    if (generator != NULL)
        KV_GUARD(byok_check_field("generator", generator, KV_BYOK_GENERATOR_MAX));
    KV_ENSURE(ct != NULL && ct_len > 0 && ct_len <= KV_BYOK_CIPHERTEXT_MAX, KV_ERR_INVALID_ARGUMENT,
              "the ciphertext must be 1 to %u bytes", KV_BYOK_CIPHERTEXT_MAX);
    KV_ENSURE(hash == KV_BYOK_OAEP_SHA1 || hash == KV_BYOK_OAEP_SHA256, KV_ERR_INVALID_ARGUMENT,
              "unknown OAEP hash %d", (int)hash);
    char kid_esc[2 * KV_BYOK_KID_MAX + 1], gen_esc[2 * KV_BYOK_GENERATOR_MAX + 1];
    byok_escape(kid, kid_esc);
    byok_escape(generator != NULL ? generator : "hsmvault", gen_esc);
    size_t b64_cap = kv_base64_encoded_len(ct_len, KV_B64_URL);
    size_t cap = b64_cap + strlen(kid_esc) + strlen(gen_esc) + 256;
    char *b64 = malloc(b64_cap), *doc = malloc(cap);
    kv_result r = KV_SUCCESS;
    KV_ENSURE_GOTO(b64 != NULL && doc != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    KV_GUARD_GOTO(kv_base64_encode(ct, ct_len, KV_B64_URL, b64, b64_cap), r, out);
    int n =
        snprintf(doc, cap,
                 "{\n"
                 "  \"schema_version\": \"" KV_BYOK_SCHEMA_VERSION "\",\n"
                 "  \"header\": {\n"
                 "    \"kid\": \"%s\",\n"
                 "    \"alg\": \"" KV_BYOK_ALG "\",\n"
                 "    \"enc\": \"" KV_BYOK_ENC "\"%s\n"
                 "  },\n"
                 "  \"ciphertext\": \"%s\",\n"
                 "  \"generator\": \"%s\"\n"
                 "}\n",
                 kid_esc, hash == KV_BYOK_OAEP_SHA256 ? ",\n    \"oaep_hash\": \"SHA-256\"" : "",
                 b64, gen_esc);
    KV_ENSURE_GOTO(n > 0 && (size_t)n < cap, r, out, KV_ERR_INTERNAL,
                   "the .byok document does not fit its buffer");
    *json = doc;
    *json_len = (size_t)n;
    doc = NULL;
out:
    free(b64);
    free(doc);
    return r;
}
