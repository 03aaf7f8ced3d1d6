/*
 * fuzz_import_key.c: byok_import_key_parse (the import key file vaultctl
 * reads before wrapping a key for it) on arbitrary bytes.  A failure leaves
 * nothing behind; a success yields an RSA public key of 2048 to 8192 bits
 * whose SPKI decodes again, the size its file claimed, and a kid and
 * subscription of printable ASCII without spaces.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "byok_wrap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_text(const char *s)
{
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    byok_import_key ik;
    if (kv_failed(byok_import_key_parse(data, size, &ik))) {
        if (ik.spki != NULL || ik.kid[0] != '\0' || ik.bits != 0) abort();
        return 0;
    }
    if (ik.spki == NULL || ik.bits < 2048 || ik.bits > 8192) abort();
    const unsigned char *p = ik.spki;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)ik.spki_len);
    if (k == NULL || p != ik.spki + ik.spki_len || EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA ||
        (unsigned)EVP_PKEY_get_bits(k) != ik.bits)
        abort();
    EVP_PKEY_free(k);
    check_text(ik.kid);
    check_text(ik.subscription);
    byok_import_key_free(&ik);
    return 0;
}
