/*
 * kv_testkey.h: throwaway keys made with OpenSSL for the BYOK tests, in the
 * encodings the tests feed to the code under test.
 */
#ifndef KV_TESTKEY_H
#define KV_TESTKEY_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kv_secret.h"

/* "RSA" of bits, or "EC" (P-256; bits ignored). */
EVP_PKEY *kv_testkey_gen(const char *type, unsigned bits);
/* k's private key as PKCS#8 DER, in a kv_secret allocated here. */
void kv_testkey_pkcs8(EVP_PKEY *k, kv_secret *out);
/* k's public key as DER SubjectPublicKeyInfo (malloc'd). */
uint8_t *kv_testkey_spki(EVP_PKEY *k, size_t *len);
/* k's public key as PEM text (malloc'd, NUL-terminated). */
char *kv_testkey_pub_pem(EVP_PKEY *k);
/* k as a private key file: "pkcs8" PEM, "traditional" PEM, "der" PKCS#8, or
 * "encrypted" PKCS#8 PEM (AES-256-CBC) under password (malloc'd, NUL added). */
char *kv_testkey_file(EVP_PKEY *k, const char *form, const char *password, size_t *len);

#endif
