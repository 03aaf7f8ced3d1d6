/*
 * material.c: a presented key (KeyMaterial) to a token key, the one path for
 * upload, lock and unlock, for PFX and .byok alike (vault.h).
 *
 * PFX: pfx_open gives PKCS#8 (kv_secret, wiped on free) and the SPKI;
 * importing is hsm_rsa_import_pkcs8.  BYOK: the file is parsed (kv_byok), its
 * kid bound to the tenant's subscription before any token call, then the
 * token unwraps it: into a session object to read the public key (open), or
 * straight into a token key (import).  The BYOK target never exists in this
 * process's memory.  Every failure leaves no token object behind.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_log.h"
#include "kv_pb.h"
#include "pfx.h"
#include "vault.h"

/* seed 001: tenant keys are RSA-2048 */
#define VAULT_TENANT_KEY_BITS 2048u

static kv_result vault_material_pfx(const Hsmvault__V1__KeyMaterial *m, vault_material *out)
{
    KV_ENSURE(m->password.len <= VAULT_PASSWORD_MAX, KV_ERR_INVALID_ARGUMENT,
              "the password is longer than %d bytes", VAULT_PASSWORD_MAX);
    kv_secret pw = KV_SECRET_INIT;
    KV_GUARD(kv_secret_from(&pw, m->password.data, m->password.len));
    kv_result r = pfx_open(m->pfx.data, m->pfx.len, &pw, &out->pkcs8, &out->spki, &out->spki_len);
    kv_secret_free(&pw);
    out->source = HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_PFX;
    return r;
}

static kv_result vault_material_byok(vault *v, const TenantRecord *tr,
                                     const Hsmvault__V1__KeyMaterial *m, vault_material *out)
{
    out->source = HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_BYOK;
    KV_ENSURE(m->password.len == 0, KV_ERR_INVALID_ARGUMENT,
              "a .byok file has no password; send none");
    KV_GUARD(kv_byok_parse(m->byok.data, m->byok.len, &out->byok));
    ImportKeyRecord *ik = NULL;
    KV_GUARD(vault_import_key_resolve(v, tr, out->byok.kid, &ik));
    snprintf(out->import_kid, sizeof(out->import_kid), "%s", out->byok.kid);
    memcpy(out->import_hsm_id.bytes, ik->hsm_id.data, HSM_KEY_ID_LEN);
    const uint8_t *rsa, *kwp;
    size_t kwp_len;
    kv_result r = kv_byok_split(&out->byok, ik->bits / 8, &rsa, &kwp, &kwp_len);
    if (kv_failed(r)) kv_error_context("import key %s is RSA-%u", out->import_kid, ik->bits);
    kv_pb_free(&ik->base);
    KV_GUARD(r);
    out->import_hash = out->byok.oaep_hash == KV_BYOK_OAEP_SHA256 ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1;
    KV_ENSURE(out->import_hash == HSM_OAEP_SHA1 || hsm_supports_oaep(v->hsm, HSM_OAEP_SHA256),
              KV_ERR_INVALID_ARGUMENT,
              "the .byok file uses RSA-OAEP with SHA-256 (header.oaep_hash), but this vault's "
              "token unwraps RSA-OAEP with SHA-1 only: wrap the key with SHA-1 OAEP (the published "
              "format: no oaep_hash field)");
    /* Inside the token, as a session object: only its public key comes out. */
    return hsm_byok_unwrap(v->hsm, &out->import_hsm_id, out->import_hash, out->byok.ciphertext,
                           out->byok.ciphertext_len, VAULT_TENANT_KEY_BITS, HSM_BYOK_INSPECT, NULL,
                           NULL, &out->spki, &out->spki_len);
}

kv_result vault_material_open(vault *v, const TenantRecord *tr, const Hsmvault__V1__KeyMaterial *m,
                              vault_material *out)
{
    memset(out, 0, sizeof(*out));
    KV_ENSURE(m != NULL && m->material_case != HSMVAULT__V1__KEY_MATERIAL__MATERIAL__NOT_SET,
              KV_ERR_INVALID_ARGUMENT,
              "the key is required: a PFX file with its password, or a .byok file");
    kv_result r = m->material_case == HSMVAULT__V1__KEY_MATERIAL__MATERIAL_BYOK
                      ? vault_material_byok(v, tr, m, out)
                      : vault_material_pfx(m, out);
    if (kv_ok(r)) r = key_fingerprint(out->spki, out->spki_len, out->fingerprint);
    if (kv_failed(r)) vault_material_free(out);
    return r;
}

kv_result vault_material_from_pkcs8(kv_secret *pkcs8, uint8_t *spki, size_t spki_len,
                                    Hsmvault__V1__KeySource source, vault_material *out)
{
    memset(out, 0, sizeof(*out));
    out->source = source;
    out->pkcs8 = *pkcs8;
    *pkcs8 = (kv_secret)KV_SECRET_INIT;
    out->spki = spki;
    out->spki_len = spki_len;
    kv_result r = key_fingerprint(spki, spki_len, out->fingerprint);
    if (kv_failed(r)) vault_material_free(out);
    return r;
}

kv_result vault_material_import(vault *v, vault_material *m, const char *label)
{
    KV_ENSURE(!m->in_token, KV_ERR_INTERNAL, "this key is in the token already");
    uint8_t *tok_spki = NULL;
    size_t tok_len = 0;
    if (m->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_BYOK)
        KV_GUARD(hsm_byok_unwrap(v->hsm, &m->import_hsm_id, m->import_hash, m->byok.ciphertext,
                                 m->byok.ciphertext_len, VAULT_TENANT_KEY_BITS, HSM_BYOK_IMPORT,
                                 label, &m->hsm_id, &tok_spki, &tok_len));
    else
        KV_GUARD(hsm_rsa_import_pkcs8(v->hsm, label, &m->pkcs8, &m->hsm_id, &tok_spki, &tok_len));
    m->in_token = true;
    kv_secret_free(&m->pkcs8); /* the token has its copy now */
    bool same = tok_len == m->spki_len && memcmp(tok_spki, m->spki, tok_len) == 0;
    free(tok_spki);
    if (!same) {
        kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__,
                     "the token holds a different public key than the one presented");
        vault_material_discard(v, m);
        return KV_FAILURE;
    }
    return KV_SUCCESS;
}

void vault_material_discard(vault *v, vault_material *m)
{
    if (!m->in_token) return;
    kv_error_record saved;
    kv_error_save(&saved);
    if (kv_failed(hsm_key_destroy(v->hsm, &m->hsm_id)))
        kv_log_error_record(KV_LOG_WARN, "removing a key of a failed change from the token "
                                         "(start-up reconciliation removes it otherwise)");
    m->in_token = false;
    kv_error_restore(&saved);
}

void vault_material_free(vault_material *m)
{
    kv_secret_free(&m->pkcs8);
    kv_byok_free(&m->byok);
    free(m->spki);
    m->spki = NULL;
    m->spki_len = 0;
}
