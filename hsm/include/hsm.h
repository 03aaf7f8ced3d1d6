/*
 * hsm.h: the only interface to PKCS#11.  Nothing outside hsm/ includes a
 * PKCS#11 header; callers see keys by their CKA_ID (hsm_key_id), never by
 * object handle (SoftHSM renumbers handles when the last session closes).
 *
 * Threading: every function may be called from any thread; operations take a
 * session from a pool sized at open time and return it before they return.
 * Private keys this module creates are CKA_SENSITIVE=TRUE, CKA_EXTRACTABLE=FALSE,
 * CKA_TOKEN=TRUE, CKA_PRIVATE=TRUE.
 */
#ifndef HSM_H
#define HSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"
#include "kv_secret.h"

typedef struct hsm hsm;

#define HSM_KEY_ID_LEN 16
typedef struct {
    uint8_t bytes[HSM_KEY_ID_LEN];
} hsm_key_id;

typedef struct {
    const char *module_path; /* PKCS#11 module (.so), loaded with dlopen */
    const char *token_label; /* the token is found by label */
    const char *pin_file;    /* user PIN; read, used for C_Login, wiped */
    unsigned sessions;       /* pool size (worker threads); 0 means 4 */
} hsm_config;

typedef enum {
    HSM_OAEP_SHA1 = 1,   /* MGF1-SHA1, empty label */
    HSM_OAEP_SHA256 = 2, /* MGF1-SHA256, empty label */
} hsm_oaep_hash;

/* Initializes the first uninitialized token of the module (C_InitToken, then
 * C_InitPIN as SO) with the given label.  For --dev and tests; SOFTHSM2_CONF
 * must already point at the token directory.  Fails with ALREADY_EXISTS if a
 * token with that label exists. */
KV_RESULT hsm_token_init(const char *module_path, const char *label, const kv_secret *so_pin,
                         const kv_secret *user_pin);

KV_RESULT hsm_open(const hsm_config *cfg, hsm **out);
void hsm_close(hsm *h);

/* Mechanism probing results. */
bool hsm_supports_oaep(const hsm *h, hsm_oaep_hash hash);
bool hsm_supports_rsa_aes_key_wrap(const hsm *h);
bool hsm_supports_aes_key_wrap_pad(const hsm *h);
unsigned hsm_session_count(const hsm *h);

/* Generates an RSA key pair in the token; returns its id and the public key as
 * DER SubjectPublicKeyInfo (malloc'd).  The private key can decrypt and unwrap
 * only. */
KV_RESULT hsm_rsa_generate(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                           uint8_t **spki_der, size_t *spki_len);

/* Imports an RSA private key given as PKCS#8 DER (in a kv_secret) into the
 * token as a sensitive, non-extractable decrypt/unwrap key, plus its public key
 * object with the same id.  Returns the SPKI DER (malloc'd). */
KV_RESULT hsm_rsa_import_pkcs8(hsm *h, const char *label, const kv_secret *pkcs8_der,
                               hsm_key_id *id, uint8_t **spki_der, size_t *spki_len);

/* RSA-OAEP decrypt inside the token with the private key of id; the plaintext
 * goes into out (allocated by this call; caller frees with kv_secret_free).
 * A ciphertext that does not decrypt gives DATA_LOSS; a missing key NOT_FOUND. */
KV_RESULT hsm_rsa_decrypt_oaep(hsm *h, const hsm_key_id *id, hsm_oaep_hash hash,
                               const uint8_t *ct, size_t ct_len, kv_secret *out);

KV_RESULT hsm_random(hsm *h, uint8_t *out, size_t n);
/* Fills id with random bytes from the token. */
KV_RESULT hsm_key_id_new(hsm *h, hsm_key_id *id);

/* Whether any private-key object with this id exists. */
KV_RESULT hsm_key_exists(hsm *h, const hsm_key_id *id, bool *exists);
/* Destroys every object with this id (private and public); destroying an id
 * that has no objects succeeds (idempotent, for crash recovery). */
KV_RESULT hsm_key_destroy(hsm *h, const hsm_key_id *id);

typedef struct {
    char label[128];
    uint8_t id[64];
    size_t id_len;
    char object_class[24]; /* "private-key", "public-key", "secret-key", "certificate", "other" */
    char key_type[16];     /* "rsa", "aes", "ec", "generic-secret", "other" */
    unsigned bits;
    bool sensitive, extractable, never_extractable, always_sensitive, is_private;
    bool can_decrypt, can_encrypt, can_sign, can_verify, can_unwrap, can_wrap, can_derive;
} hsm_object_info;

/* Lists every object visible to the logged-in user; *objects is malloc'd. */
KV_RESULT hsm_objects_list(hsm *h, hsm_object_info **objects, size_t *count);

/* Hex of an id (2*HSM_KEY_ID_LEN+1 bytes). */
void hsm_key_id_hex(const hsm_key_id *id, char *out);

#endif
