/*
 * byok_file.c: the admin's .byok file (byok_file.h): kid, wrap in software
 * or in the admin's own token, JSON.  Must never write a key other than an
 * RSA-2048 one, never keep the PIN or the key file's password, and never let
 * key bytes out of kv_secret buffers (software) or the token (C_WrapKey).
 */
#include "byok_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "hsm.h"

/* "hsmvault vaultctl; <source>" cut to the format's limit, printable only. */
static void byok_generator(const char *source, char out[KV_BYOK_GENERATOR_MAX + 1])
{
    static const char prefix[] = "hsmvault vaultctl; ";
    size_t n = sizeof(prefix) - 1, m = strlen(source);
    if (m > KV_BYOK_GENERATOR_MAX - n) m = KV_BYOK_GENERATOR_MAX - n;
    memcpy(out, prefix, n);
    memcpy(out + n, source, m);
    out[n + m] = '\0';
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) *p = '?';
}

kv_result byok_file_kid(const byok_import_key *ik, const char *kid_override, const char **kid)
{
    if (kid_override != NULL && kid_override[0] != '\0') {
        KV_ENSURE(ik->kid[0] == '\0' || strcmp(ik->kid, kid_override) == 0, KV_ERR_INVALID_ARGUMENT,
                  "the import key file names kid '%s', not the kid given; leave the kid out",
                  ik->kid);
        *kid = kid_override;
        return KV_SUCCESS;
    }
    KV_ENSURE(ik->kid[0] != '\0', KV_ERR_INVALID_ARGUMENT,
              "the import key file names no kid (it is a plain PEM key): download it with "
              "`vaultctl key import-key`, or give the kid");
    *kid = ik->kid;
    return KV_SUCCESS;
}

/* seed 001: the vault takes RSA-2048 tenant keys only. */
static kv_result byok_check_tenant_key(unsigned rsa_bits)
{
    KV_ENSURE(rsa_bits != 0, KV_ERR_INVALID_ARGUMENT,
              "the key is not an RSA key; hsmvault tenant keys are RSA-%u", BYOK_TENANT_KEY_BITS);
    KV_ENSURE(rsa_bits == BYOK_TENANT_KEY_BITS, KV_ERR_INVALID_ARGUMENT,
              "the key is RSA-%u; hsmvault tenant keys are RSA-%u", rsa_bits, BYOK_TENANT_KEY_BITS);
    return KV_SUCCESS;
}

kv_result byok_file_from_key(const byok_import_key *ik, const char *kid_override, kv_byok_hash hash,
                             const uint8_t *key_file, size_t key_file_len,
                             const kv_secret *password, char **json, size_t *json_len)
{
    const char *kid = NULL;
    KV_GUARD(byok_file_kid(ik, kid_override, &kid));
    kv_secret pkcs8 = KV_SECRET_INIT;
    unsigned bits = 0;
    uint8_t *ct = NULL;
    size_t ct_len = 0;
    KV_GUARD(byok_key_load(key_file, key_file_len, password, &pkcs8, &bits));
    kv_result r = byok_check_tenant_key(bits);
    if (kv_ok(r)) r = byok_wrap_soft(ik->spki, ik->spki_len, hash, &pkcs8, &ct, &ct_len);
    kv_secret_free(&pkcs8);
    if (kv_ok(r)) {
        char gen[KV_BYOK_GENERATOR_MAX + 1];
        byok_generator(OpenSSL_version(OPENSSL_VERSION), gen);
        r = kv_byok_format(kid, hash, ct, ct_len, gen, json, json_len);
    }
    free(ct);
    return r;
}

/* Opens the admin's token with its PIN (one session is plenty). */
static kv_result byok_token_open(const byok_token *tok, hsm **h)
{
    KV_ENSURE(tok != NULL && tok->module_path != NULL && tok->token_label != NULL &&
                  tok->key_label != NULL && tok->pin != NULL,
              KV_ERR_INVALID_ARGUMENT,
              "the PKCS#11 module, token label, key label and PIN are "
              "required");
    /* OpenSSH's rule: a module is named by its full path, never searched for. */
    KV_ENSURE(tok->module_path[0] == '/', KV_ERR_INVALID_ARGUMENT,
              "give the PKCS#11 module as an absolute path (got '%s')", tok->module_path);
    struct stat st;
    KV_ENSURE(stat(tok->module_path, &st) == 0 && S_ISREG(st.st_mode), KV_ERR_NOT_FOUND,
              "no PKCS#11 module at %s", tok->module_path);
    hsm_config cfg = {
        .module_path = tok->module_path, .token_label = tok->token_label, .sessions = 1};
    return hsm_open_pin(&cfg, tok->pin, h);
}

kv_result byok_file_from_token(const byok_import_key *ik, const char *kid_override,
                               kv_byok_hash hash, const byok_token *tok, char **json,
                               size_t *json_len)
{
    const char *kid = NULL;
    KV_GUARD(byok_file_kid(ik, kid_override, &kid));
    hsm *h = NULL;
    KV_GUARD(byok_token_open(tok, &h));
    uint8_t *ct = NULL;
    size_t ct_len = 0;
    unsigned bits = 0;
    kv_result r = hsm_byok_wrap(h, tok->key_label, ik->spki, ik->spki_len,
                                hash == KV_BYOK_OAEP_SHA256 ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1, &ct,
                                &ct_len, &bits);
    hsm_close(h);
    if (kv_ok(r)) r = byok_check_tenant_key(bits);
    if (kv_ok(r)) {
        char source[KV_BYOK_GENERATOR_MAX + 64];
        snprintf(source, sizeof(source), "PKCS#11 token '%.64s' (C_WrapKey)", tok->token_label);
        char gen[KV_BYOK_GENERATOR_MAX + 1];
        byok_generator(source, gen);
        r = kv_byok_format(kid, hash, ct, ct_len, gen, json, json_len);
    }
    free(ct);
    return r;
}

kv_result byok_token_keygen(const byok_token *tok, unsigned bits, uint8_t **spki, size_t *spki_len)
{
    KV_ENSURE(bits == 2048 || bits == 3072 || bits == 4096, KV_ERR_INVALID_ARGUMENT,
              "an RSA key of 2048, 3072 or 4096 bits (got %u)", bits);
    hsm *h = NULL;
    KV_GUARD(byok_token_open(tok, &h));
    hsm_object_info *objs = NULL;
    size_t n = 0;
    kv_result r = hsm_objects_list(h, &objs, &n);
    for (size_t i = 0; kv_ok(r) && i < n; i++)
        if (strcmp(objs[i].label, tok->key_label) == 0)
            r = kv_error_set(KV_ERR_ALREADY_EXISTS, __FILE__, __LINE__,
                             "token '%s' already has a key labelled '%s'; choose another label",
                             tok->token_label, tok->key_label);
    free(objs);
    hsm_key_id id;
    if (kv_ok(r)) r = hsm_rsa_generate_transferable(h, tok->key_label, bits, &id, spki, spki_len);
    hsm_close(h);
    return r;
}
