/*
 * base64.c: strict RFC 4648 base64/base64url.  Must never read past n input
 * chars nor write past out_cap.
 */
#include "kv_base64.h"

static const char kv_b64_std[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char kv_b64_url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t kv_base64_encoded_len(size_t n, kv_b64_variant v)
{
    if (v == KV_B64_STD) return (n + 2) / 3 * 4 + 1;
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1) + 1;
}

size_t kv_base64_decoded_max(size_t n) { return n / 4 * 3 + 3; }

kv_result kv_base64_encode(const uint8_t *in, size_t n, kv_b64_variant v, char *out,
                           size_t out_cap)
{
    const char *abc = v == KV_B64_STD ? kv_b64_std : kv_b64_url;
    KV_ENSURE(out_cap >= kv_base64_encoded_len(n, v), KV_ERR_INTERNAL,
              "base64 output buffer too small");
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[w >> 18 & 63];
        out[o++] = abc[w >> 12 & 63];
        out[o++] = abc[w >> 6 & 63];
        out[o++] = abc[w & 63];
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)in[i] << 16;
        out[o++] = abc[w >> 18 & 63];
        out[o++] = abc[w >> 12 & 63];
        if (v == KV_B64_STD) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = abc[w >> 18 & 63];
        out[o++] = abc[w >> 12 & 63];
        out[o++] = abc[w >> 6 & 63];
        if (v == KV_B64_STD) out[o++] = '=';
    }
    out[o] = '\0';
    return KV_SUCCESS;
}

static int kv_b64_value(char ch, kv_b64_variant v)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (v == KV_B64_STD && ch == '+') return 62;
    if (v == KV_B64_STD && ch == '/') return 63;
    if (v == KV_B64_URL && ch == '-') return 62;
    if (v == KV_B64_URL && ch == '_') return 63;
    return -1;
}

kv_result kv_base64_decode(const char *in, size_t n, kv_b64_variant v, uint8_t *out,
                           size_t out_cap, size_t *out_len)
{
    size_t pad = 0;
    while (pad < 2 && n > pad && in[n - 1 - pad] == '=') pad++;
    size_t data_chars = n - pad;
    if (v == KV_B64_STD) {
        KV_ENSURE(n % 4 == 0, KV_ERR_INVALID_ARGUMENT,
                  "base64 length %zu is not a multiple of 4", n);
    } else if (pad > 0) {
        KV_ENSURE(n % 4 == 0, KV_ERR_INVALID_ARGUMENT,
                  "padded base64url length %zu is not a multiple of 4", n);
    }
    KV_ENSURE(data_chars % 4 != 1, KV_ERR_INVALID_ARGUMENT,
              "base64 input has an impossible length of %zu characters", data_chars);
    size_t need = data_chars / 4 * 3 + (data_chars % 4 == 0 ? 0 : data_chars % 4 - 1);
    KV_ENSURE(need <= out_cap, KV_ERR_INVALID_ARGUMENT,
              "base64 input decodes to %zu bytes, more than the %zu allowed", need, out_cap);
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < data_chars; i++) {
        int val = kv_b64_value(in[i], v);
        KV_ENSURE(val >= 0, KV_ERR_INVALID_ARGUMENT,
                  "invalid base64%s character at position %zu", v == KV_B64_URL ? "url" : "", i);
        acc = (acc << 6) | (uint32_t)val;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    KV_ENSURE(acc == 0, KV_ERR_INVALID_ARGUMENT, "base64 input has non-zero trailing bits");
    *out_len = o;
    return KV_SUCCESS;
}

void kv_hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}
