/*
 * kv_byok.h: the .byok file (the Azure Key Vault BYOK transfer format), read
 * from untrusted bytes and written by vaultctl.  Format only: no crypto here.
 *
 *   {
 *     "schema_version": "1.0.0",
 *     "header": { "kid": "<import key id>", "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP",
 *                 "oaep_hash": "SHA-256" },          <- optional, ours (docs/byok.md)
 *     "ciphertext": "<base64url>",
 *     "generator": "<tool name and version; source HSM>"
 *   }
 *
 * ciphertext = RSA-OAEP(import public key, AES-256 key) || AES key wrap with
 * padding (RFC 5649) of the target key as PKCS#8 DER.  OAEP is SHA-1 with
 * MGF1-SHA-1 and an empty label (the published spec) unless header.oaep_hash
 * says "SHA-256" (SHA-256 with MGF1-SHA-256, as AWS-style tools make them).
 * Unknown fields are ignored; generator is informational; a missing or wrong
 * schema_version, alg or enc is refused, and so is a repeated known field.
 */
#ifndef KV_BYOK_H
#define KV_BYOK_H

#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

/* A .byok file larger than this is refused before it is parsed. */
#define KV_BYOK_FILE_MAX (64u * 1024u)
/* Decoded ciphertext: an RSA-8192 wrap of the AES key plus the KWP of an
 * RSA-8192 PKCS#8 fit; anything larger is not a key. */
#define KV_BYOK_CIPHERTEXT_MAX (16u * 1024u)
#define KV_BYOK_KID_MAX 256
#define KV_BYOK_GENERATOR_MAX 128
/* RFC 5649: the wrapped form is a multiple of 8 bytes, at least 16. */
#define KV_BYOK_KWP_MIN 16

#define KV_BYOK_SCHEMA_VERSION "1.0.0"
#define KV_BYOK_ALG "dir"
#define KV_BYOK_ENC "CKM_RSA_AES_KEY_WRAP"

typedef enum {
    KV_BYOK_OAEP_SHA1 = 1,   /* the published spec; also when oaep_hash is absent */
    KV_BYOK_OAEP_SHA256 = 2, /* header.oaep_hash = "SHA-256" */
} kv_byok_hash;

typedef struct {
    char kid[KV_BYOK_KID_MAX + 1];
    kv_byok_hash oaep_hash;
    uint8_t *ciphertext; /* malloc'd; wrapped, so not secret */
    size_t ciphertext_len;
    /* printable ASCII, anything else shown as '?', cut at KV_BYOK_GENERATOR_MAX */
    char generator[KV_BYOK_GENERATOR_MAX + 1];
} kv_byok;

/* Parses a .byok file.  On failure *out holds nothing to free (and is
 * zeroed); on success free it with kv_byok_free. */
KV_RESULT kv_byok_parse(const uint8_t *data, size_t len, kv_byok *out);
void kv_byok_free(kv_byok *b);

/* Splits the ciphertext for an import key whose modulus is modulus_len
 * bytes: the RSA part is exactly modulus_len bytes, the rest (the KWP part)
 * a multiple of 8 and at least KV_BYOK_KWP_MIN bytes.  Pointers into b. */
KV_RESULT kv_byok_split(const kv_byok *b, size_t modulus_len, const uint8_t **rsa_part,
                        const uint8_t **kwp_part, size_t *kwp_len);

/* Writes a .byok file (NUL-terminated JSON, malloc'd, *json_len without the
 * NUL).  kid and generator must be printable ASCII (generator may be NULL);
 * hash SHA-1 writes no oaep_hash field. */
KV_RESULT kv_byok_format(const char *kid, kv_byok_hash hash, const uint8_t *ct, size_t ct_len,
                         const char *generator, char **json, size_t *json_len);

const char *kv_byok_hash_name(kv_byok_hash h);

#endif
