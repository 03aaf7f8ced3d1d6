/*
 * byok_wrap.h: the admin's side of BYOK in software (OpenSSL): the import key
 * file vaultctl downloads, loading a tenant key file, and building the .byok
 * ciphertext in process for admins without a vendor tool.
 *
 * Key material is held only in kv_secret buffers (and OpenSSL objects freed
 * with their clearing free); the ephemeral AES key is random from OpenSSL's
 * private DRBG and wiped after use.  Never logs or prints key bytes.
 */
#ifndef BYOK_WRAP_H
#define BYOK_WRAP_H

#include <stddef.h>
#include <stdint.h>

#include "kv_byok.h"
#include "kv_result.h"
#include "kv_secret.h"

/* An import key file as `vaultctl key import-key` writes it: comment lines
 * ("# kid: ...", "# subscription: ...", "# bits: ...") before the PEM public
 * key, so the openssl command line reads the same file (it skips text before
 * -----BEGIN).  A plain PEM public key is accepted too (kid then empty). */
#define BYOK_IMPORT_KEY_FILE_MAX (16u * 1024u)
typedef struct {
    char kid[KV_BYOK_KID_MAX + 1];
    char subscription[65];
    unsigned bits;
    uint8_t *spki; /* DER SubjectPublicKeyInfo, malloc'd */
    size_t spki_len;
} byok_import_key;

KV_RESULT byok_import_key_parse(const uint8_t *text, size_t len, byok_import_key *out);
void byok_import_key_free(byok_import_key *k);
/* The file's text (malloc'd, NUL-terminated). */
KV_RESULT byok_import_key_format(const char *kid, const char *subscription, unsigned bits,
                                 const char *pem, char **out, size_t *out_len);

/* Loads a private key file: PEM (PKCS#8, encrypted PKCS#8 with password,
 * traditional "RSA PRIVATE KEY") or DER PKCS#8.  Outputs PKCS#8 DER in a
 * kv_secret (allocated here) and the RSA size in bits (0: not an RSA key). */
KV_RESULT byok_key_load(const uint8_t *file, size_t len, const kv_secret *password,
                        kv_secret *pkcs8, unsigned *rsa_bits);

/* ct = RSA-OAEP(import public key, fresh AES-256 key) || AES key wrap with
 * padding (RFC 5649) of plain.  *ct is malloc'd. */
KV_RESULT byok_wrap_soft(const uint8_t *import_spki, size_t spki_len, kv_byok_hash hash,
                         const kv_secret *plain, uint8_t **ct, size_t *ct_len);

#endif
