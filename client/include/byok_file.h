/*
 * byok_file.h: making a .byok file on the admin's side, as `vaultctl byok`
 * does: for an import key (the file `vaultctl key import-key` downloads),
 * from a tenant key file wrapped in process with OpenSSL, or from a key in
 * the admin's own PKCS#11 token wrapped there with C_WrapKey (the way vendor
 * BYOK tools work; the key must be extractable in that token).
 *
 * Only RSA-2048 tenant keys are wrapped (seed 001): the vault refuses any
 * other, and refusing here says so before anything is uploaded.  Key bytes
 * live in kv_secret buffers and are wiped; the PIN and the key file's
 * password are used and not kept.
 */
#ifndef BYOK_FILE_H
#define BYOK_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "byok_wrap.h"
#include "kv_byok.h"
#include "kv_result.h"
#include "kv_secret.h"

/* The tenant key size the vault accepts (seed 001). */
#define BYOK_TENANT_KEY_BITS 2048u

/* The admin's own token.  module_path must be an absolute path to the
 * PKCS#11 module (no library search path is consulted). */
typedef struct {
    const char *module_path;
    const char *token_label;
    const char *key_label; /* CKA_LABEL of the key pair */
    const kv_secret *pin;  /* the user PIN */
} byok_token;

/* The kid written into the file: the import key file's own, or kid_override
 * (which must agree with the file's when the file names one).  NULL override
 * and no kid in the file is INVALID_ARGUMENT. */
KV_RESULT byok_file_kid(const byok_import_key *ik, const char *kid_override, const char **kid);

/* A .byok file (JSON, malloc'd and NUL-terminated) for ik holding the key in
 * key_file (PEM or DER; password if it is encrypted, else NULL). */
KV_RESULT byok_file_from_key(const byok_import_key *ik, const char *kid_override, kv_byok_hash hash,
                             const uint8_t *key_file, size_t key_file_len,
                             const kv_secret *password, char **json, size_t *json_len);

/* The same for the key labelled tok->key_label in the admin's token. */
KV_RESULT byok_file_from_token(const byok_import_key *ik, const char *kid_override,
                               kv_byok_hash hash, const byok_token *tok, char **json,
                               size_t *json_len);

/* Generates an RSA key pair labelled tok->key_label in the admin's token,
 * sensitive but extractable (so that it can be wrapped for transfer); refuses
 * a label that is already in use.  *spki (malloc'd) is its public key. */
KV_RESULT byok_token_keygen(const byok_token *tok, unsigned bits, uint8_t **spki, size_t *spki_len);

#endif
