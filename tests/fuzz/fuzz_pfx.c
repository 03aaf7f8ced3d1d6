/* fuzz_pfx.c: pfx_open on arbitrary bytes, with a password and without. */
#include <stdint.h>
#include <stdlib.h>

#include "pfx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const passwords[] = {"fuzz", ""};
    for (size_t i = 0; i < 2; i++) {
        kv_secret pw = KV_SECRET_INIT, key = KV_SECRET_INIT;
        const char *p = passwords[i];
        size_t n = 0;
        while (p[n])
            n++;
        if (kv_failed(kv_secret_from(&pw, p, n))) abort();
        uint8_t *spki = NULL;
        size_t spki_len = 0;
        if (kv_ok(pfx_open(data, size, &pw, &key, &spki, &spki_len))) {
            /* Success means a real RSA-2048 key came out. */
            unsigned bits = 0;
            if (kv_failed(spki_rsa_bits(spki, spki_len, &bits)) || bits != 2048 || key.len == 0)
                abort();
        } else if (key.data != NULL || spki != NULL) {
            abort(); /* a failure must leave nothing behind */
        }
        free(spki);
        kv_secret_free(&key);
        kv_secret_free(&pw);
    }
    return 0;
}
