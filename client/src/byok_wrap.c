/*
 * byok_wrap.c: software BYOK for the admin (byok_wrap.h): the import key
 * file, tenant key files, and the RSA-OAEP + AES-KWP ciphertext.  Files are
 * the admin's own but still parsed with bounds; key material stays in
 * kv_secret or OpenSSL objects freed with clearing frees.
 */
#include "byok_wrap.h"

#include "kv_ossl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define BYOK_AES_KEY_BYTES 32

/* Copies the value of a "# name: value" line into out. */
static kv_result byok_header_value(const char *line, size_t n, const char *name, char *out,
                                   size_t cap, bool *matched)
{
    size_t nl = strlen(name);
    *matched = n > nl + 4 && memcmp(line, "# ", 2) == 0 && memcmp(line + 2, name, nl) == 0 &&
               line[2 + nl] == ':';
    if (!*matched) return KV_SUCCESS;
    const char *v = line + 3 + nl;
    size_t vn = n - 3 - nl;
    while (vn > 0 && *v == ' ')
        v++, vn--;
    KV_ENSURE(vn > 0 && vn < cap, KV_ERR_INVALID_ARGUMENT,
              "the import key file's '%s' line is empty or longer than %zu characters", name,
              cap - 1);
    for (size_t i = 0; i < vn; i++)
        KV_ENSURE(v[i] > 0x20 && v[i] < 0x7f, KV_ERR_INVALID_ARGUMENT,
                  "the import key file's '%s' line holds characters a key id cannot have", name);
    memcpy(out, v, vn);
    out[vn] = '\0';
    return KV_SUCCESS;
}

static kv_result byok_import_key_headers(const char *text, size_t len, byok_import_key *out)
{
    const char *p = text, *end = text + len;
    while (p < end && !(end - p >= 5 && memcmp(p, "-----", 5) == 0)) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl != NULL ? nl : end) - p);
        if (n > 0 && p[n - 1] == '\r') n--;
        bool m = false;
        char bits[16] = "";
        KV_GUARD(byok_header_value(p, n, "kid", out->kid, sizeof(out->kid), &m));
        if (!m)
            KV_GUARD(byok_header_value(p, n, "subscription", out->subscription,
                                       sizeof(out->subscription), &m));
        if (!m) KV_GUARD(byok_header_value(p, n, "bits", bits, sizeof(bits), &m));
        if (m && bits[0] != '\0') {
            char *stop = NULL;
            unsigned long b = strtoul(bits, &stop, 10);
            KV_ENSURE(stop != NULL && *stop == '\0' && b >= 2048 && b <= 8192,
                      KV_ERR_INVALID_ARGUMENT, "the import key file's 'bits' line is not a size");
            out->bits = (unsigned)b;
        }
        p = nl != NULL ? nl + 1 : end;
    }
    return KV_SUCCESS;
}

kv_result byok_import_key_parse(const uint8_t *text, size_t len, byok_import_key *out)
{
    memset(out, 0, sizeof(*out));
    KV_ENSURE(text != NULL && len > 0 && len <= BYOK_IMPORT_KEY_FILE_MAX, KV_ERR_INVALID_ARGUMENT,
              "an import key file is a PEM public key of at most %u bytes",
              BYOK_IMPORT_KEY_FILE_MAX);
    kv_result r = byok_import_key_headers((const char *)text, len, out);
    BIO *bio = kv_ok(r) ? BIO_new_mem_buf(text, (int)len) : NULL;
    EVP_PKEY *pkey = bio != NULL ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    if (kv_ok(r) && pkey == NULL) {
        r = kv_error_set(
            KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
            "the import key file holds no PEM public key (-----BEGIN PUBLIC KEY-----)");
        kv_ossl_detail();
    }
    if (kv_ok(r) && EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA)
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "the import key is not an RSA key");
    /* below 2048 bits the transfer would be weaker than the RSA-2048 key it
     * carries (the vault makes 2048, 3072 and 4096-bit import keys) */
    if (kv_ok(r) && (EVP_PKEY_get_bits(pkey) < 2048 || EVP_PKEY_get_bits(pkey) > 8192))
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "the import key is RSA-%d; import keys are 2048 to 8192 bits",
                         EVP_PKEY_get_bits(pkey));
    if (kv_ok(r)) {
        unsigned bits = (unsigned)EVP_PKEY_get_bits(pkey);
        if (out->bits != 0 && out->bits != bits)
            r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                             "the import key file says %u bits but its key has %u", out->bits,
                             bits);
        out->bits = bits;
    }
    int n = kv_ok(r) ? i2d_PUBKEY(pkey, NULL) : -1;
    if (kv_ok(r) && (n <= 0 || (out->spki = malloc((size_t)n)) == NULL))
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__,
                         "cannot encode the import key");
    if (kv_ok(r)) {
        unsigned char *q = out->spki;
        out->spki_len = (size_t)i2d_PUBKEY(pkey, &q);
    }
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    if (kv_failed(r)) {
        kv_error_context("reading the import key file");
        byok_import_key_free(out);
    }
    return r;
}

void byok_import_key_free(byok_import_key *k)
{
    if (k == NULL) return;
    free(k->spki);
    memset(k, 0, sizeof(*k));
}

kv_result byok_import_key_format(const char *kid, const char *subscription, unsigned bits,
                                 const char *pem, char **out, size_t *out_len)
{
    size_t cap = strlen(kid) + strlen(subscription) + strlen(pem) + 512;
    char *buf = malloc(cap);
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    int n = snprintf(buf, cap,
                     "# hsmvault import key (BYOK key-exchange key): wrap your key for it with\n"
                     "# vaultctl byok wrap, or with the openssl recipe of docs/byok.md.\n"
                     "# kid: %s\n"
                     "# subscription: %s\n"
                     "# bits: %u\n"
                     "%s",
                     kid, subscription, bits, pem);
    if (n <= 0 || (size_t)n >= cap) {
        free(buf);
        KV_BAIL(KV_ERR_INTERNAL, "the import key file does not fit its buffer");
    }
    *out = buf;
    *out_len = (size_t)n;
    return KV_SUCCESS;
}

typedef struct {
    const kv_secret *password;
    bool asked;
} byok_pw;

static int byok_pw_cb(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    byok_pw *pw = u;
    pw->asked = true;
    if (pw->password == NULL || pw->password->data == NULL || size <= 0 ||
        pw->password->len > (size_t)size)
        return 0;
    memcpy(buf, pw->password->data, pw->password->len);
    return (int)pw->password->len;
}

kv_result byok_key_load(const uint8_t *file, size_t len, const kv_secret *password,
                        kv_secret *pkcs8, unsigned *rsa_bits)
{
    KV_ENSURE(file != NULL && len > 0 && len < (1u << 20), KV_ERR_INVALID_ARGUMENT,
              "the key file is empty or too large");
    byok_pw pw = {.password = password};
    EVP_PKEY *pkey = NULL;
    BIO *bio = BIO_new_mem_buf(file, (int)len);
    if (bio != NULL) pkey = PEM_read_bio_PrivateKey(bio, NULL, byok_pw_cb, &pw);
    BIO_free(bio);
    if (pkey == NULL && !pw.asked) {
        ERR_clear_error();
        const unsigned char *p = file;
        pkey = d2i_AutoPrivateKey(NULL, &p, (long)len);
        if (pkey != NULL && p != file + len) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
    }
    if (pkey == NULL) {
        kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "%s",
                     pw.asked && (password == NULL || password->data == NULL)
                         ? "the key file is encrypted: give its password (--password-file, "
                           "--password-stdin or the prompt)"
                     : pw.asked ? "the key file does not open with this password"
                                : "the key file is not a private key (PEM or PKCS#8 DER)");
        kv_ossl_detail();
        return KV_FAILURE;
    }
    *rsa_bits = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA ? (unsigned)EVP_PKEY_get_bits(pkey) : 0;
    kv_result r = KV_SUCCESS;
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(pkey);
    int n = p8 != NULL ? i2d_PKCS8_PRIV_KEY_INFO(p8, NULL) : -1;
    if (n <= 0) {
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                         "the key cannot be encoded as PKCS#8");
        kv_ossl_detail();
    }
    if (kv_ok(r)) r = kv_secret_alloc(pkcs8, (size_t)n);
    if (kv_ok(r)) {
        unsigned char *q = pkcs8->data;
        pkcs8->len = (size_t)i2d_PKCS8_PRIV_KEY_INFO(p8, &q);
    }
    PKCS8_PRIV_KEY_INFO_free(p8); /* clears its key octets */
    EVP_PKEY_free(pkey);
    return r;
}

/* RSA-OAEP encryption of the AES key under the import key. */
static kv_result byok_oaep(const uint8_t *spki, size_t spki_len, kv_byok_hash hash,
                           const kv_secret *aes, uint8_t **out, size_t *out_len)
{
    const unsigned char *p = spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)spki_len);
    EVP_PKEY_CTX *ctx = NULL;
    kv_result r = KV_SUCCESS;
    size_t n = 0;
    const EVP_MD *md = hash == KV_BYOK_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();
    KV_ENSURE_GOTO(pub != NULL && p == spki + spki_len && EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA,
                   r, out, KV_ERR_INVALID_ARGUMENT, "the import key is not an RSA public key");
    ctx = EVP_PKEY_CTX_new(pub, NULL);
    KV_ENSURE_GOTO(ctx != NULL && EVP_PKEY_encrypt_init(ctx) == 1 &&
                       EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
                       EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) == 1 &&
                       EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) == 1 &&
                       EVP_PKEY_encrypt(ctx, NULL, &n, aes->data, aes->len) == 1,
                   r, out, KV_ERR_INTERNAL, "RSA-OAEP under the import key failed");
    *out = malloc(n);
    KV_ENSURE_GOTO(*out != NULL, r, out, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (EVP_PKEY_encrypt(ctx, *out, &n, aes->data, aes->len) != 1) {
        free(*out);
        *out = NULL;
        KV_BAIL_GOTO(r, out, KV_ERR_INTERNAL, "RSA-OAEP under the import key failed");
    }
    *out_len = n;
out:
    if (kv_failed(r)) kv_ossl_detail();
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pub);
    return r;
}

/* RFC 5649 AES key wrap with padding of plain under aes. */
static kv_result byok_kwp(const kv_secret *aes, const kv_secret *plain, uint8_t *out,
                          size_t *out_len)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    kv_result r = KV_SUCCESS;
    if (ctx != NULL) EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    KV_ENSURE_GOTO(ctx != NULL &&
                       EVP_EncryptInit_ex(ctx, EVP_aes_256_wrap_pad(), NULL, aes->data, NULL) ==
                           1 &&
                       EVP_EncryptUpdate(ctx, out, &n, plain->data, (int)plain->len) == 1 &&
                       EVP_EncryptFinal_ex(ctx, out + n, &m) == 1,
                   r, out, KV_ERR_INTERNAL, "AES key wrap with padding failed");
    *out_len = (size_t)(n + m);
out:
    if (kv_failed(r)) kv_ossl_detail();
    EVP_CIPHER_CTX_free(ctx); /* clears the key schedule */
    return r;
}

kv_result byok_wrap_soft(const uint8_t *import_spki, size_t spki_len, kv_byok_hash hash,
                         const kv_secret *plain, uint8_t **ct, size_t *ct_len)
{
    KV_ENSURE(import_spki != NULL && plain != NULL && plain->data != NULL && plain->len > 0 &&
                  plain->len <= KV_BYOK_CIPHERTEXT_MAX / 2 && ct != NULL && ct_len != NULL,
              KV_ERR_INVALID_ARGUMENT, "byok_wrap_soft: missing or oversized argument");
    kv_secret aes = KV_SECRET_INIT;
    uint8_t *rsa = NULL, *buf = NULL;
    size_t rsa_len = 0, kwp_len = 0;
    kv_result r = kv_secret_alloc(&aes, BYOK_AES_KEY_BYTES);
    if (kv_ok(r) && RAND_priv_bytes(aes.data, BYOK_AES_KEY_BYTES) != 1)
        r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "no randomness for the AES key");
    aes.len = BYOK_AES_KEY_BYTES;
    if (kv_ok(r)) r = byok_oaep(import_spki, spki_len, hash, &aes, &rsa, &rsa_len);
    /* KWP output: the input padded to a multiple of 8, plus 8 */
    size_t cap = rsa_len + (plain->len + 7) / 8 * 8 + 8;
    if (kv_ok(r) && (buf = malloc(cap)) == NULL)
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
    if (kv_ok(r)) {
        memcpy(buf, rsa, rsa_len);
        r = byok_kwp(&aes, plain, buf + rsa_len, &kwp_len);
    }
    kv_secret_free(&aes);
    free(rsa);
    if (kv_failed(r)) {
        free(buf);
        return r;
    }
    *ct = buf;
    *ct_len = rsa_len + kwp_len;
    return KV_SUCCESS;
}
