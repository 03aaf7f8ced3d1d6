/*
 * ossl.h: small OpenSSL helpers shared by pfx.c and devca.c (vault_crypto
 * only; not an API).
 */
#ifndef OSSL_H
#define OSSL_H

#include <openssl/x509.h>

#include "kv_result.h"

/* Fails with code and msg; the newest OpenSSL reason goes to the error
 * detail and the OpenSSL error queue is emptied. */
kv_result ossl_fail(kv_code code, const char *file, int line, const char *msg);
#define OSSL_FAIL(code, msg) ossl_fail((code), __FILE__, __LINE__, (msg))

/* Adds an X.509v3 extension given in openssl.cnf syntax ("critical,CA:FALSE"). */
KV_RESULT ossl_add_ext(X509 *x, X509 *issuer, int nid, const char *value);
/* Sets a random positive 127-bit serial number. */
KV_RESULT ossl_random_serial(X509 *x);

#endif
