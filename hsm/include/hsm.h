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
/* The same with the user PIN given (read from stdin or a prompt) instead of
 * cfg->pin_file; the PIN is used for C_Login and not kept. */
KV_RESULT hsm_open_pin(const hsm_config *cfg, const kv_secret *pin, hsm **out);
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
KV_RESULT hsm_rsa_decrypt_oaep(hsm *h, const hsm_key_id *id, hsm_oaep_hash hash, const uint8_t *ct,
                               size_t ct_len, kv_secret *out);

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

/* ---- BYOK key transfer (byok.c) ----
 * The .byok ciphertext is RSA-OAEP(import public key, AES-256 key) followed
 * by the AES key wrap with padding (RFC 5649) of the target key as PKCS#8.
 * Both directions run inside a token: the target key is never in this
 * process's memory in plaintext. */

/* Generates an import key (BYOK key-exchange key): an RSA pair whose private
 * key can only unwrap (no decrypt, sign or derive) and is never extractable. */
KV_RESULT hsm_import_key_generate(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                                  uint8_t **spki_der, size_t *spki_len);

/* Generates an RSA pair in an admin's own token whose private key is
 * sensitive but extractable, so that hsm_byok_wrap can wrap it for transfer.
 * Never for the vault's token. */
KV_RESULT hsm_rsa_generate_transferable(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                                        uint8_t **spki_der, size_t *spki_len);

typedef enum {
    HSM_BYOK_IMPORT,  /* the target becomes a token key pair (new id, label) */
    HSM_BYOK_INSPECT, /* the target is a session object, destroyed before return */
} hsm_byok_mode;

/* Unwraps a .byok ciphertext under the import key import_id.  With
 * CKM_RSA_AES_KEY_WRAP when the token lists it, else C_UnwrapKey(RSA-OAEP)
 * into a session AES key (sensitive, not extractable, unwrap only) and
 * C_UnwrapKey(CKM_AES_KEY_WRAP_PAD) straight into the target key; the AES key
 * is destroyed on every path.  The target is created CKA_SENSITIVE, not
 * extractable, decrypt/unwrap only.  It must be an RSA key of exactly
 * required_bits bits; anything else is destroyed and refused.
 * Outputs the target's SPKI (malloc'd) and, for IMPORT, its id.
 * Errors: INVALID_ARGUMENT for a ciphertext that does not unwrap (wrong
 * import key, integrity check failed, not an RSA PKCS#8 key, wrong size);
 * FAILED_PRECONDITION when the token cannot use hash; NOT_FOUND for a
 * missing import key; UNAVAILABLE for token trouble.  Nothing stays behind
 * in the token on failure. */
KV_RESULT hsm_byok_unwrap(hsm *h, const hsm_key_id *import_id, hsm_oaep_hash hash,
                          const uint8_t *ct, size_t ct_len, unsigned required_bits,
                          hsm_byok_mode mode, const char *label, hsm_key_id *id, uint8_t **spki_der,
                          size_t *spki_len);

/* Wraps the private key labelled key_label (RSA, extractable) of this token
 * for the import public key import_spki: C_WrapKey with CKM_RSA_AES_KEY_WRAP
 * when listed, else a session AES-256 key wrapped with RSA-OAEP and the
 * target wrapped with CKM_AES_KEY_WRAP_PAD (session objects destroyed on every
 * path).  *ct is malloc'd; *key_bits is the wrapped key's size. */
KV_RESULT hsm_byok_wrap(hsm *h, const char *key_label, const uint8_t *import_spki,
                        size_t import_spki_len, hsm_oaep_hash hash, uint8_t **ct, size_t *ct_len,
                        unsigned *key_bits);

/* ---- audit log keys (audit_keys.c) ---- */
#define HSM_HMAC_BYTES 32
#define HSM_DATA_MAX 1024
/* Generates a 256-bit generic secret key for CKM_SHA256_HMAC: sensitive,
 * never extractable, sign/verify only. */
KV_RESULT hsm_hmac_generate(hsm *h, const char *label, hsm_key_id *id);
/* n HMAC-SHA256 of items of item_len bytes (in: n * item_len bytes) into
 * macs (n * HSM_HMAC_BYTES), on one token session. */
KV_RESULT hsm_hmac_sha256_many(hsm *h, const hsm_key_id *id, const uint8_t *in, size_t n,
                               size_t item_len, uint8_t *macs);
/* A session of its own for a stream of MACs under one key (the audit
 * writer's): no wait for the pool, and where the token allows C_CopyObject
 * a session-object copy of the key (CKA_TOKEN false, no CKA_ID, still
 * sensitive and unextractable, gone when the session closes), because
 * SoftHSM checks a token object's file on every use (measured: 19 us a MAC
 * on the token object, 6 us on the copy).  One thread at a time. */
typedef struct hsm_mac_session hsm_mac_session;
KV_RESULT hsm_mac_session_open(hsm *h, const hsm_key_id *id, hsm_mac_session **out);
/* As hsm_hmac_sha256_many, on the session; the first MAC of each call uses
 * the token object (so a key deleted from the token fails the call).  After
 * a failure the session is unusable: close it (and open a new one). */
KV_RESULT hsm_mac_session_many(hsm_mac_session *m, const uint8_t *in, size_t n, size_t item_len,
                               uint8_t *macs);
/* Closes the session (destroying the copy); NULL is fine. */
void hsm_mac_session_close(hsm_mac_session *m);
/* HMAC-SHA256 of data under the token key id. */
KV_RESULT hsm_hmac_sha256(hsm *h, const hsm_key_id *id, const uint8_t *data, size_t len,
                          uint8_t mac[HSM_HMAC_BYTES]);
/* Generates an RSA key pair whose private key can only sign (never
 * extractable); returns the public key as SPKI DER (malloc'd). */
KV_RESULT hsm_sign_key_generate(hsm *h, const char *label, unsigned bits, hsm_key_id *id,
                                uint8_t **spki_der, size_t *spki_len);
/* RSASSA-PKCS1-v1_5 with SHA-256 (CKM_SHA256_RSA_PKCS) by the private key id;
 * *sig is malloc'd. */
KV_RESULT hsm_rsa_sign_sha256(hsm *h, const hsm_key_id *id, const uint8_t *data, size_t len,
                              uint8_t **sig, size_t *sig_len);
/* SPKI DER of the RSA public key object with this id (malloc'd). */
KV_RESULT hsm_public_key_spki(hsm *h, const hsm_key_id *id, uint8_t **spki_der, size_t *spki_len);
/* Replaces the private token data object labelled label (CKO_DATA, no
 * CKA_ID): the new object is created before the old ones are destroyed.
 * Reading returns the value that sorts highest (bytewise) when a crash left
 * several; NOT_FOUND if there is none. */
KV_RESULT hsm_data_put(hsm *h, const char *label, const uint8_t *value, size_t len);
KV_RESULT hsm_data_get(hsm *h, const char *label, uint8_t *value, size_t cap, size_t *len);

/* Hex of an id (2*HSM_KEY_ID_LEN+1 bytes). */
void hsm_key_id_hex(const hsm_key_id *id, char *out);

#endif
