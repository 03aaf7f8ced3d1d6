/*
 * fuzz_byok.c: kv_byok_parse on arbitrary bytes.  A success must describe a
 * file that writes back (kv_byok_format) and parses again to the same
 * fields; a failure must leave nothing behind.  Splits for every import key
 * size run on whatever parsed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kv_byok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kv_byok b;
    if (kv_failed(kv_byok_parse(data, size, &b))) {
        if (b.ciphertext != NULL || b.kid[0] != '\0') abort();
        return 0;
    }
    if (b.kid[0] == '\0' || b.ciphertext == NULL || b.ciphertext_len == 0 ||
        b.ciphertext_len > KV_BYOK_CIPHERTEXT_MAX || strlen(b.generator) > KV_BYOK_GENERATOR_MAX)
        abort();
    static const size_t moduli[] = {256, 384, 512};
    for (size_t i = 0; i < 3; i++) {
        const uint8_t *rsa, *kwp;
        size_t kwp_len;
        if (kv_ok(kv_byok_split(&b, moduli[i], &rsa, &kwp, &kwp_len)) &&
            (rsa != b.ciphertext || kwp_len % 8 != 0 || kwp_len + moduli[i] != b.ciphertext_len))
            abort();
    }
    char *json = NULL;
    size_t len = 0;
    if (kv_ok(kv_byok_format(b.kid, b.oaep_hash, b.ciphertext, b.ciphertext_len,
                             b.generator[0] ? b.generator : NULL, &json, &len))) {
        kv_byok again;
        if (kv_failed(kv_byok_parse((const uint8_t *)json, len, &again))) abort();
        if (strcmp(again.kid, b.kid) != 0 || again.oaep_hash != b.oaep_hash ||
            again.ciphertext_len != b.ciphertext_len ||
            memcmp(again.ciphertext, b.ciphertext, b.ciphertext_len) != 0)
            abort();
        kv_byok_free(&again);
        free(json);
    } else if (strlen(b.kid) <= KV_BYOK_KID_MAX) {
        abort(); /* a parsed kid is always printable ASCII: it must write back */
    }
    kv_byok_free(&b);
    return 0;
}
