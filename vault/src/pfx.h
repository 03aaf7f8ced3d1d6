/*
 * pfx.h: PKCS#12 (PFX) parsing and generation, RSA key checks and
 * fingerprints, with OpenSSL 3.
 *
 * Parsing takes untrusted bytes: every failure is a clear INVALID_ARGUMENT
 * that never echoes the password or key bytes.  Private keys leave this module
 * only as PKCS#8 DER inside a kv_secret, to be imported into the token and
 * wiped.
 */
#ifndef PFX_H
#define PFX_H

#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"
#include "kv_secret.h"

#define PFX_MAX_BYTES (64u * 1024u)
#define KEY_FINGERPRINT_LEN 32

/* Opens a PFX (modern AES/PBES2 or legacy 3DES/RC2), requires exactly one
 * RSA-2048 private key (a certificate is optional; if present its public key
 * must match).  Outputs the key as PKCS#8 DER (kv_secret, allocated here) and
 * its SPKI DER (malloc'd).
 * Errors: wrong password -> INVALID_ARGUMENT "the PFX password is wrong ...";
 * not RSA-2048 -> INVALID_ARGUMENT naming the type and size found;
 * garbage/truncated -> INVALID_ARGUMENT "not a PKCS#12 (PFX) file ...". */
KV_RESULT pfx_open(const uint8_t *pfx, size_t pfx_len, const kv_secret *password,
                   kv_secret *pkcs8_out, uint8_t **spki_der, size_t *spki_len);

/* Generates an RSA-2048 key and a PFX holding it with a self-signed
 * certificate (subject CN = common_name, SHA-256 signature, 10-year validity),
 * encrypted with AES-256-CBC and PBKDF2-HMAC-SHA256 with a SHA-256 MAC under
 * password (iteration count documented in pfx.c).  Outputs the PFX
 * (malloc'd), the key as PKCS#8 DER (kv_secret) and the SPKI DER (malloc'd). */
KV_RESULT pfx_generate(const char *common_name, const kv_secret *password, uint8_t **pfx,
                       size_t *pfx_len, kv_secret *pkcs8_out, uint8_t **spki_der, size_t *spki_len);

/* SHA-256 of an SPKI DER. */
KV_RESULT key_fingerprint(const uint8_t *spki_der, size_t spki_len,
                          uint8_t out[KEY_FINGERPRINT_LEN]);

/* RSA-OAEP encryption in software under an SPKI public key (wrapping a DEK).
 * sha256 selects SHA-256/MGF1-SHA256, else SHA-1/MGF1-SHA1; empty label.
 * *ct is malloc'd. */
KV_RESULT rsa_oaep_encrypt(const uint8_t *spki_der, size_t spki_len, int sha256, const uint8_t *msg,
                           size_t msg_len, uint8_t **ct, size_t *ct_len);

/* The same with the public key parsed once (re-wrapping many DEKs under one
 * key); an rsa_pub may be shared by threads. */
typedef struct rsa_pub rsa_pub;
KV_RESULT rsa_pub_open(const uint8_t *spki_der, size_t spki_len, rsa_pub **out);
KV_RESULT rsa_pub_encrypt(const rsa_pub *pub, int sha256, const uint8_t *msg, size_t msg_len,
                          uint8_t **ct, size_t *ct_len);
void rsa_pub_free(rsa_pub *pub);

/* Bits of the RSA key in an SPKI, or an error if it is not RSA. */
KV_RESULT spki_rsa_bits(const uint8_t *spki_der, size_t spki_len, unsigned *bits);

/* PEM of an SPKI (malloc'd, NUL-terminated). */
KV_RESULT spki_to_pem(const uint8_t *spki_der, size_t spki_len, char **pem);

#endif
