/* kv_testkey.c: throwaway keys for the BYOK tests (kv_testkey.h). */
#include "kv_testkey.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kv_test.h"

EVP_PKEY *kv_testkey_gen(const char *type, unsigned bits)
{
    if (strcmp(type, "EC") == 0) return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
}

void kv_testkey_pkcs8(EVP_PKEY *k, kv_secret *out)
{
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(k);
    int n = i2d_PKCS8_PRIV_KEY_INFO(p8, NULL);
    CHECK_OK(kv_secret_alloc(out, (size_t)n));
    unsigned char *q = out->data;
    out->len = (size_t)i2d_PKCS8_PRIV_KEY_INFO(p8, &q);
    PKCS8_PRIV_KEY_INFO_free(p8);
}

uint8_t *kv_testkey_spki(EVP_PKEY *k, size_t *len)
{
    int n = i2d_PUBKEY(k, NULL);
    uint8_t *b = malloc((size_t)n), *q = b;
    *len = (size_t)i2d_PUBKEY(k, &q);
    return b;
}

/* The bytes written to a memory BIO (malloc'd, NUL added); frees the BIO. */
static char *kv_testkey_bio_text(BIO *b, size_t *len)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    char *out = calloc(1, (size_t)n + 1);
    memcpy(out, p, (size_t)n);
    if (len != NULL) *len = (size_t)n;
    BIO_free(b);
    return out;
}

char *kv_testkey_pub_pem(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, k);
    return kv_testkey_bio_text(b, NULL);
}

char *kv_testkey_file(EVP_PKEY *k, const char *form, const char *password, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (strcmp(form, "pkcs8") == 0)
        PEM_write_bio_PKCS8PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    else if (strcmp(form, "traditional") == 0)
        PEM_write_bio_PrivateKey_traditional(b, k, NULL, NULL, 0, NULL, NULL);
    else if (strcmp(form, "der") == 0)
        i2d_PKCS8PrivateKey_bio(b, k, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PKCS8PrivateKey(b, k, EVP_aes_256_cbc(), NULL, 0, NULL,
                                      (void *)(uintptr_t)password);
    return kv_testkey_bio_text(b, len);
}
