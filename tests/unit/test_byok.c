/*
 * test_byok.c: the strict JSON reader (kv_json) and the .byok format
 * (kv_byok): good files in their variants, and every kind of bad input:
 * malformed JSON, wrong or missing fields, repeated fields, bad base64url,
 * oversized input, every truncation of a good file, ciphertext splits.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_base64.h"
#include "kv_byok.h"
#include "kv_json.h"
#include "kv_test.h"

#define KID "hsmvault:subscriptions/sub-1/import-keys/1"

/* A ciphertext as long as an RSA-2048 part plus a 1240-byte KWP part. */
static uint8_t ct[256 + 1240];
static char ct_b64[2 * sizeof(ct)];
static char ct_b64_padded[2 * sizeof(ct)];

static void setup(void)
{
    for (size_t i = 0; i < sizeof(ct); i++)
        ct[i] = (uint8_t)(i * 7 + 3);
    CHECK_OK(kv_base64_encode(ct, sizeof(ct), KV_B64_URL, ct_b64, sizeof(ct_b64)));
    /* base64url with '=' padding: the same text padded to a multiple of 4 */
    snprintf(ct_b64_padded, sizeof(ct_b64_padded), "%s", ct_b64);
    while (strlen(ct_b64_padded) % 4 != 0)
        strcat(ct_b64_padded, "=");
    CHECK(strchr(ct_b64_padded, '=') != NULL); /* 1496 bytes: padding is needed */
}

static char *doc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *doc(const char *fmt, ...)
{
    static char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

static kv_result parse(const char *text, kv_byok *b)
{
    return kv_byok_parse((const uint8_t *)text, strlen(text), b);
}

/* Parses text, expects INVALID_ARGUMENT with a message containing want. */
static void refuse(const char *text, const char *want, int line)
{
    kv_byok b;
    kv_error_clear();
    kv_result r = parse(text, &b);
    if (kv_ok(r) || kv_error_code() != KV_ERR_INVALID_ARGUMENT ||
        strstr(kv_error_msg(), want) == NULL) {
        kv_test_failed++;
        fprintf(stderr, "line %d: expected INVALID_ARGUMENT with '%s', got %s: %s\n", line, want,
                kv_ok(r) ? "success" : kv_code_name(kv_error_code()),
                kv_ok(r) ? "" : kv_error_msg());
        if (kv_ok(r)) kv_byok_free(&b);
        return;
    }
    kv_test_passed++;
    /* a failure leaves nothing to free */
    CHECK(b.ciphertext == NULL && b.kid[0] == '\0');
}
#define REFUSE(text, want) refuse((text), (want), __LINE__)

#define GOOD_FMT                                                                                   \
    "{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":\"" KID "\",\"alg\":\"dir\","               \
    "\"enc\":\"CKM_RSA_AES_KEY_WRAP\"},\"ciphertext\":\"%s\",\"generator\":\"test 1.0\"}"

static void test_good(void)
{
    kv_byok b;
    CHECK_OK(parse(doc(GOOD_FMT, ct_b64), &b));
    CHECK(strcmp(b.kid, KID) == 0);
    CHECK(b.oaep_hash == KV_BYOK_OAEP_SHA1);
    CHECK(b.ciphertext_len == sizeof(ct) && memcmp(b.ciphertext, ct, sizeof(ct)) == 0);
    CHECK(strcmp(b.generator, "test 1.0") == 0);
    kv_byok_free(&b);
    CHECK(b.ciphertext == NULL);

    /* base64url with '=' padding is the same ciphertext */
    CHECK_OK(parse(doc(GOOD_FMT, ct_b64_padded), &b));
    CHECK(b.ciphertext_len == sizeof(ct) && memcmp(b.ciphertext, ct, sizeof(ct)) == 0);
    kv_byok_free(&b);

    /* whitespace, other member order, unknown fields of every JSON type,
     * escapes, generator absent, SHA-256 marked */
    CHECK_OK(parse(doc(" \r\n\t{ \"ciphertext\" : \"%s\" , \"x-extra\": [1, -2.5e+3, true, false, "
                       "null, {\"a\": [[]], \"b\": {}}, \"\\u00e9\\ud83d\\ude00\"],\n"
                       "\"header\": {\"enc\": \"CKM_RSA_AES_KEY_WRAP\", \"zip\": 0, \"oaep_hash\": "
                       "\"SHA-256\", \"alg\": \"d\\u0069r\", \"kid\": \"" KID "\"},"
                       "\"schema_version\": \"1.0.0\", \"n\": 0.5e-7 } \n",
                       ct_b64),
                   &b));
    CHECK(b.oaep_hash == KV_BYOK_OAEP_SHA256);
    CHECK(b.generator[0] == '\0');
    kv_byok_free(&b);

    /* explicit SHA-1, non-ASCII and control-escaped generator shown as '?' */
    CHECK_OK(
        parse(doc("{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":\"" KID
                  "\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\",\"oaep_hash\":\"SHA-1\"},"
                  "\"ciphertext\":\"%s\",\"generator\":\"HSM \\u00e9\\n\xc3\xa9 x\"}",
                  ct_b64),
              &b));
    CHECK(b.oaep_hash == KV_BYOK_OAEP_SHA1);
    CHECK(strcmp(b.generator, "HSM ??\??? x") == 0);
    kv_byok_free(&b);

    /* a very long generator is cut, not refused */
    char *long_gen = malloc(5000);
    memset(long_gen, 'g', 4999);
    long_gen[4999] = '\0';
    char *text = malloc(12000);
    snprintf(text, 12000,
             "{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":\"" KID
             "\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\"},\"ciphertext\":\"AAAA\","
             "\"generator\":\"%s\"}",
             long_gen);
    CHECK_OK(parse(text, &b));
    CHECK(strlen(b.generator) == KV_BYOK_GENERATOR_MAX);
    kv_byok_free(&b);
    free(text);
    free(long_gen);
}

static void test_malformed_json(void)
{
    REFUSE("", "empty");
    REFUSE("   ", "ends early");
    REFUSE("[]", "expected an object");
    REFUSE("\"x\"", "expected an object");
    REFUSE("{", "ends early");
    REFUSE("{\"schema_version\"", "ends early");
    REFUSE("{\"schema_version\" \"1.0.0\"}", "expected ':'");
    REFUSE("{\"schema_version\":\"1.0.0\",}", "trailing comma");
    REFUSE("{\"schema_version\":\"1.0.0\" \"x\":1}", "expected ',' or '}'");
    REFUSE("{'schema_version':'1.0.0'}", "expected a string");
    REFUSE("{/* c */\"schema_version\":\"1.0.0\"}", "expected a string");
    REFUSE("{\"x\":1,,\"y\":2}", "expected a string");
    REFUSE("{\"x\":01}", "leading zero");
    REFUSE("{\"x\":-}", "expected a digit");
    REFUSE("{\"x\":1.}", "after '.'");
    REFUSE("{\"x\":1e}", "exponent");
    REFUSE("{\"x\":+1}", "expected a value");
    REFUSE("{\"x\":tru}", "expected a value");
    REFUSE("{\"x\":nul}", "expected a value");
    REFUSE("{\"x\":[1,]}", "trailing comma");
    REFUSE("{\"x\":[1 2]}", "expected ',' or ']'");
    REFUSE("{\"x\":{\"a\" 1}}", "expected ':'");
    REFUSE("{\"x\":\"a\x01\"}", "control character");
    REFUSE("{\"x\":\"a\nb\"}", "control character");
    REFUSE("{\"x\":\"\\x\"}", "unknown escape");
    REFUSE("{\"x\":\"\\u12\"}", "four hex digits");
    REFUSE("{\"x\":\"\\u12g4\"}", "four hex digits");
    REFUSE("{\"x\":\"\\ud800\"}", "high surrogate");
    REFUSE("{\"x\":\"\\ud800\\u0041\"}", "high surrogate");
    REFUSE("{\"x\":\"\\udc00\"}", "lone low surrogate");
    REFUSE("{\"x\":\"\\u0000\"}", "\\u0000");
    REFUSE("{\"x\":\"\xc0\x80\"}", "UTF-8");         /* overlong NUL */
    REFUSE("{\"x\":\"\xe0\x80\xaf\"}", "UTF-8");     /* overlong '/' */
    REFUSE("{\"x\":\"\xed\xa0\x80\"}", "UTF-8");     /* encoded surrogate */
    REFUSE("{\"x\":\"\xf5\x80\x80\x80\"}", "UTF-8"); /* above U+10FFFF */
    REFUSE("{\"x\":\"\x80\"}", "UTF-8");             /* stray continuation */
    REFUSE("{\"x\":\"\xe2\x82\"}", "UTF-8");         /* truncated sequence */
    REFUSE("{\"x\":\"abc}", "not closed");
    REFUSE(doc(GOOD_FMT "x", ct_b64), "bytes after the document");
    REFUSE(doc(GOOD_FMT GOOD_FMT, ct_b64, ct_b64), "bytes after the document");

    /* nesting: 31 levels inside the document are fine, 33 are not */
    char deep[256];
    snprintf(deep, sizeof(deep), "{\"x\":");
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    strcat(deep, "1");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    REFUSE(deep, "nest too deeply");
}

static void test_fields(void)
{
    const char *hdr =
        "\"header\":{\"kid\":\"" KID "\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\"}";
    REFUSE(doc("{%s,\"ciphertext\":\"AAAA\"}", hdr), "schema_version is missing");
    REFUSE(doc("{\"schema_version\":\"1.0\",%s,\"ciphertext\":\"AAAA\"}", hdr),
           "schema_version must be \"1.0.0\"");
    REFUSE(doc("{\"schema_version\":1,%s,\"ciphertext\":\"AAAA\"}", hdr), "schema_version");
    REFUSE(doc("{\"schema_version\":\"1.0.0\",\"ciphertext\":\"AAAA\"}"), "header is missing");
    REFUSE(doc("{\"schema_version\":\"1.0.0\",%s}", hdr), "ciphertext is missing");
    REFUSE(doc("{\"schema_version\":\"1.0.0\",\"header\":[],\"ciphertext\":\"AAAA\"}"),
           "expected an object");
    REFUSE(doc("{\"schema_version\":\"1.0.0\",\"schema_version\":\"1.0.0\",%s,\"ciphertext\":"
               "\"AAAA\"}",
               hdr),
           "names schema_version twice");
    REFUSE(doc("{\"schema_version\":\"1.0.0\",%s,%s,\"ciphertext\":\"AAAA\"}", hdr, hdr),
           "names header twice");
    REFUSE(doc("{\"schema_version\":\"1.0.0\",%s,\"ciphertext\":\"AAAA\",\"ciphertext\":\"AAAA\"}",
               hdr),
           "names ciphertext twice");

#define H(fields)                                                                                  \
    doc("{\"schema_version\":\"1.0.0\",\"header\":{" fields "},\"ciphertext\":\"AAAA\"}")
    REFUSE(H("\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""), "header.kid is missing");
    REFUSE(H("\"kid\":\"" KID "\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""), "header.alg is missing");
    REFUSE(H("\"kid\":\"" KID "\",\"alg\":\"dir\""), "header.enc is missing");
    REFUSE(H("\"kid\":\"" KID "\",\"alg\":\"RSA-OAEP\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""),
           "header.alg must be \"dir\"");
    REFUSE(H("\"kid\":\"" KID "\",\"alg\":\"dir\",\"enc\":\"A256GCM\""),
           "header.enc must be \"CKM_RSA_AES_KEY_WRAP\"");
    REFUSE(H("\"kid\":\"" KID "\",\"alg\":\"DIR\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""),
           "header.alg must be");
    REFUSE(H("\"kid\":\"\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""),
           "header.kid must be");
    REFUSE(H("\"kid\":\"a\\tb\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""),
           "header.kid must be");
    REFUSE(H("\"kid\":\"\\u00e9\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""),
           "header.kid must be");
    REFUSE(H("\"kid\":7,\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""), "header.kid");
    REFUSE(H("\"kid\":\"" KID "\",\"kid\":\"" KID
             "\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\""),
           "names header.kid twice");
    REFUSE(H("\"kid\":\"" KID "\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\",\"oaep_hash\":"
             "\"SHA-512\""),
           "header.oaep_hash must be");
    REFUSE(H("\"kid\":\"" KID "\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\",\"oaep_hash\":"
             "\"sha256\""),
           "header.oaep_hash must be");
#undef H
    /* a kid longer than KV_BYOK_KID_MAX */
    char longkid[400];
    memset(longkid, 'k', 300);
    longkid[300] = '\0';
    REFUSE(doc("{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":\"%s\",\"alg\":\"dir\",\"enc\":"
               "\"CKM_RSA_AES_KEY_WRAP\"},\"ciphertext\":\"AAAA\"}",
               longkid),
           "at most 256");

#define C(text) doc("{\"schema_version\":\"1.0.0\",%s,\"ciphertext\":\"" text "\"}", hdr)
    REFUSE(C(""), "ciphertext is empty");
    REFUSE(C("AA+A"), "base64url"); /* standard alphabet */
    REFUSE(C("AA/A"), "base64url");
    REFUSE(C("AAAAA"), "base64url"); /* impossible length */
    REFUSE(C("AA=A"), "base64url");  /* misplaced padding */
    REFUSE(C("AAB"), "base64url");   /* non-zero trailing bits */
#undef C
    REFUSE(doc("{\"schema_version\":\"1.0.0\",%s,\"ciphertext\":null}", hdr), "ciphertext");
}

static void test_sizes(void)
{
    /* ciphertext over KV_BYOK_CIPHERTEXT_MAX decoded bytes */
    size_t big = KV_BYOK_CIPHERTEXT_MAX + 3;
    uint8_t *raw = calloc(1, big);
    char *b64 = malloc(kv_base64_encoded_len(big, KV_B64_URL));
    CHECK_OK(kv_base64_encode(raw, big, KV_B64_URL, b64, kv_base64_encoded_len(big, KV_B64_URL)));
    char *text = malloc(strlen(b64) + 512);
    sprintf(text, GOOD_FMT, b64);
    REFUSE(text, "ciphertext");
    free(text);
    free(b64);
    free(raw);

    /* a file of several MiB is refused before any parsing */
    size_t n = 3u << 20;
    char *huge = malloc(n + 1);
    memset(huge, ' ', n);
    huge[n] = '\0';
    memcpy(huge, "{\"schema_version\":\"1.0.0\"", 26);
    kv_byok b;
    CHECK_ERR(kv_byok_parse((const uint8_t *)huge, n, &b), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "at most 65536 bytes") != NULL);
    free(huge);
    CHECK_ERR(kv_byok_parse(NULL, 0, &b), KV_ERR_INVALID_ARGUMENT);
}

/* Every proper prefix of a good file is refused (and nothing crashes). */
static void test_truncations(void)
{
    const char *good = doc(GOOD_FMT, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    char *copy = strdup(good);
    size_t n = strlen(copy), refused = 0;
    for (size_t i = 0; i < n; i++) {
        kv_byok b;
        uint8_t *exact = malloc(i ? i : 1);
        memcpy(exact, copy, i);
        if (kv_failed(kv_byok_parse(exact, i, &b)) && kv_error_code() == KV_ERR_INVALID_ARGUMENT)
            refused++;
        else
            kv_byok_free(&b);
        free(exact);
    }
    CHECK(refused == n);
    kv_byok b;
    CHECK_OK(kv_byok_parse((const uint8_t *)copy, n, &b));
    kv_byok_free(&b);
    free(copy);
}

static void test_split(void)
{
    kv_byok b;
    CHECK_OK(parse(doc(GOOD_FMT, ct_b64), &b));
    const uint8_t *rsa, *kwp;
    size_t kwp_len = 0;
    CHECK_OK(kv_byok_split(&b, 256, &rsa, &kwp, &kwp_len));
    CHECK(rsa == b.ciphertext && kwp == b.ciphertext + 256 && kwp_len == 1240);
    /* for a 4096-bit import key the same blob is 512 + 984 */
    CHECK_OK(kv_byok_split(&b, 512, &rsa, &kwp, &kwp_len));
    CHECK(kwp_len == 984);
    /* a 3072-bit import key: 1496 - 384 = 1112, a multiple of 8 too */
    CHECK_OK(kv_byok_split(&b, 384, &rsa, &kwp, &kwp_len));
    size_t full = b.ciphertext_len;
    b.ciphertext_len = 256; /* only the RSA part */
    CHECK_ERR(kv_byok_split(&b, 256, &rsa, &kwp, &kwp_len), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "too short") != NULL);
    b.ciphertext_len = 100;
    CHECK_ERR(kv_byok_split(&b, 256, &rsa, &kwp, &kwp_len), KV_ERR_INVALID_ARGUMENT);
    b.ciphertext_len = 256 + 8; /* under the KWP minimum */
    CHECK_ERR(kv_byok_split(&b, 256, &rsa, &kwp, &kwp_len), KV_ERR_INVALID_ARGUMENT);
    b.ciphertext_len = full - 3; /* KWP part not a multiple of 8 */
    CHECK_ERR(kv_byok_split(&b, 256, &rsa, &kwp, &kwp_len), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "multiple of 8") != NULL);
    b.ciphertext_len = full;
    kv_byok_free(&b);
}

static void test_format(void)
{
    char *json = NULL;
    size_t len = 0;
    CHECK_OK(
        kv_byok_format(KID, KV_BYOK_OAEP_SHA1, ct, sizeof(ct), "vaultctl 0.1 \"x\"", &json, &len));
    CHECK(json != NULL && strlen(json) == len);
    CHECK(strstr(json, "oaep_hash") == NULL);
    kv_byok b;
    CHECK_OK(kv_byok_parse((const uint8_t *)json, len, &b));
    CHECK(strcmp(b.kid, KID) == 0 && b.oaep_hash == KV_BYOK_OAEP_SHA1);
    CHECK(b.ciphertext_len == sizeof(ct) && memcmp(b.ciphertext, ct, sizeof(ct)) == 0);
    CHECK(strcmp(b.generator, "vaultctl 0.1 \"x\"") == 0);
    kv_byok_free(&b);
    free(json);

    CHECK_OK(kv_byok_format("k\\\"", KV_BYOK_OAEP_SHA256, ct, 10, NULL, &json, &len));
    CHECK_OK(kv_byok_parse((const uint8_t *)json, len, &b));
    CHECK(strcmp(b.kid, "k\\\"") == 0 && b.oaep_hash == KV_BYOK_OAEP_SHA256);
    kv_byok_free(&b);
    free(json);

    CHECK_ERR(kv_byok_format("", KV_BYOK_OAEP_SHA1, ct, 10, NULL, &json, &len),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_byok_format("a\nb", KV_BYOK_OAEP_SHA1, ct, 10, NULL, &json, &len),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_byok_format(KID, KV_BYOK_OAEP_SHA1, ct, 0, NULL, &json, &len),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_byok_format(KID, (kv_byok_hash)9, ct, 10, NULL, &json, &len),
              KV_ERR_INVALID_ARGUMENT);
}

/* The reader used directly: names too long for the buffer, values. */
static void test_reader(void)
{
    const char *text = "{\"a-very-long-member-name\": {\"k\": \"v\"}, \"s\": \"\\u00e9\"}";
    kv_json j;
    char name[8], val[8];
    bool more;
    size_t len;
    kv_json_init(&j, text, strlen(text));
    CHECK_OK(kv_json_object_begin(&j));
    CHECK_OK(kv_json_object_next(&j, name, sizeof(name), &more));
    CHECK(more && name[0] == '\0'); /* too long: reported as "" */
    CHECK_OK(kv_json_skip(&j));
    CHECK_OK(kv_json_object_next(&j, name, sizeof(name), &more));
    CHECK(more && strcmp(name, "s") == 0);
    CHECK_OK(kv_json_string(&j, val, sizeof(val), &len));
    CHECK(len == 2 && (unsigned char)val[0] == 0xc3 && (unsigned char)val[1] == 0xa9);
    CHECK_OK(kv_json_object_next(&j, name, sizeof(name), &more));
    CHECK(!more);
    CHECK_OK(kv_json_end(&j));

    /* a string too long for its buffer is an error naming its size */
    const char *t2 = "{\"s\": \"0123456789\"}";
    kv_json_init(&j, t2, strlen(t2));
    CHECK_OK(kv_json_object_begin(&j));
    CHECK_OK(kv_json_object_next(&j, name, sizeof(name), &more));
    CHECK_ERR(kv_json_string(&j, val, sizeof(val), &len), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "10 bytes") != NULL);
    /* end before the object is closed */
    CHECK_ERR(kv_json_end(&j), KV_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    setup();
    RUN(test_good);
    RUN(test_malformed_json);
    RUN(test_fields);
    RUN(test_sizes);
    RUN(test_truncations);
    RUN(test_split);
    RUN(test_format);
    RUN(test_reader);
    return kv_test_finish();
}
