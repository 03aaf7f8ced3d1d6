/*
 * page.c: sealing and opening 8 KiB pages with AES-256-GCM (see page.h).
 *
 * Must never return plaintext of a page that failed authentication (the
 * output is wiped before the error), never keep the DEK outside its
 * kv_secret, and never seal with a header the caller did not give (the
 * nonce is the header's epoch and counter, so uniqueness stays with the
 * counter file).
 *
 * Speed: EVP contexts are keyed once per leased DEK and pooled; a seal or an
 * open then costs one IV set, one AAD update, the payload and the tag (the
 * page benchmark compares this with `openssl speed`'s bulk rate).
 *
 * Built twice: the product library, and (TDE_PAGE_COPY_CIPHER) a bench-only
 * library whose "cipher" is a copy, to measure what encryption costs the
 * node.  That variant is never installed or shipped.
 */
#include "page.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kv_ossl.h"
#include "kv_secret.h"

/* Contexts kept per key; more threads than this simply make and free some. */
#define PAGE_POOL_MAX 64u
/* AAD: identity digest, expected page number, header. */
#define PAGE_AAD_LEN (32u + 8u + TDE_PAGE_HEADER)

struct page_key {
    kv_secret dek;
    uint32_t version;
    atomic_int refs;
    pthread_mutex_t mu;
    EVP_CIPHER_CTX *pool[2][PAGE_POOL_MAX]; /* [0] open, [1] seal */
    unsigned n_pool[2];
};

static EVP_CIPHER *page_cipher;
static pthread_once_t page_cipher_once = PTHREAD_ONCE_INIT;

static void page_cipher_fetch(void)
{
    page_cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

bool page_cipher_is_copy(void)
{
#ifdef TDE_PAGE_COPY_CIPHER
    return true;
#else
    return false;
#endif
}

static kv_result page_ossl_fail(const char *what)
{
    kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "page crypto: %s failed", what);
    kv_ossl_detail();
    return KV_FAILURE;
}

static void page_put_be(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static uint64_t page_get_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* ---- identity ------------------------------------------------------------ */

static kv_result page_check_id(const char *what, const char *id, size_t *len)
{
    size_t n = id != NULL ? strnlen(id, TDE_ID_MAX + 1) : 0;
    KV_ENSURE(n >= 1 && n <= TDE_ID_MAX, KV_ERR_INVALID_ARGUMENT,
              "a %s id must be 1 to %u characters", what, TDE_ID_MAX);
    for (size_t i = 0; i < n; i++)
        KV_ENSURE(id[i] > 0x20 && id[i] < 0x7f, KV_ERR_INVALID_ARGUMENT,
                  "a %s id must be visible ASCII", what);
    *len = n;
    return KV_SUCCESS;
}

kv_result page_identity_make(const char *tenant_id, const char *environment_id,
                             const char *database_id, page_identity *out)
{
    static const char domain[] = "hsmvault tde page identity v1";
    const char *ids[3] = {tenant_id, environment_id, database_id};
    static const char *const names[3] = {"tenant", "environment", "database"};
    uint8_t buf[sizeof(domain) + 3 * (1 + TDE_ID_MAX)];
    size_t off = 0;
    memcpy(buf, domain, sizeof(domain)); /* with its NUL: a separator */
    off = sizeof(domain);
    for (size_t i = 0; i < 3; i++) {
        size_t n = 0;
        KV_GUARD(page_check_id(names[i], ids[i], &n));
        buf[off++] = (uint8_t)n;
        memcpy(buf + off, ids[i], n);
        off += n;
    }
    unsigned int dlen = 0;
    if (EVP_Digest(buf, off, out->digest, &dlen, EVP_sha256(), NULL) != 1 || dlen != 32)
        return page_ossl_fail("SHA-256 of the page identity");
    return KV_SUCCESS;
}

/* ---- keys ---------------------------------------------------------------- */

kv_result page_key_new(const uint8_t *dek, size_t dek_len, uint32_t dek_version, page_key **out)
{
    KV_ENSURE(dek != NULL && dek_len == TDE_DEK_BYTES, KV_ERR_INVALID_ARGUMENT,
              "a page key is %u bytes, not %zu", TDE_DEK_BYTES, dek_len);
    KV_ENSURE(dek_version >= 1, KV_ERR_INVALID_ARGUMENT, "DEK versions start at 1");
    pthread_once(&page_cipher_once, page_cipher_fetch);
    if (page_cipher == NULL) return page_ossl_fail("fetching AES-256-GCM");
    page_key *k = calloc(1, sizeof(*k));
    KV_ENSURE(k != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (kv_failed(kv_secret_from(&k->dek, dek, dek_len))) {
        free(k);
        return KV_FAILURE;
    }
    k->version = dek_version;
    atomic_init(&k->refs, 1);
    pthread_mutex_init(&k->mu, NULL);
    *out = k;
    return KV_SUCCESS;
}

void page_key_ref(page_key *k)
{
    atomic_fetch_add(&k->refs, 1);
}

void page_key_unref(page_key *k)
{
    if (k == NULL || atomic_fetch_sub(&k->refs, 1) != 1) return;
    for (int enc = 0; enc < 2; enc++)
        for (unsigned i = 0; i < k->n_pool[enc]; i++)
            EVP_CIPHER_CTX_free(k->pool[enc][i]); /* OpenSSL wipes the key schedule */
    pthread_mutex_destroy(&k->mu);
    kv_secret_free(&k->dek);
    free(k);
}

uint32_t page_key_version(const page_key *k)
{
    return k->version;
}

bool page_key_equals(const page_key *k, const uint8_t *dek, size_t dek_len)
{
    return dek_len == k->dek.len && kv_ct_equal(k->dek.data, dek, dek_len);
}

#ifndef TDE_PAGE_COPY_CIPHER
/* A context keyed with k for sealing (enc 1) or opening (enc 0). */
static kv_result page_ctx_take(page_key *k, int enc, EVP_CIPHER_CTX **out)
{
    EVP_CIPHER_CTX *ctx = NULL;
    pthread_mutex_lock(&k->mu);
    if (k->n_pool[enc] > 0) ctx = k->pool[enc][--k->n_pool[enc]];
    pthread_mutex_unlock(&k->mu);
    if (ctx == NULL) {
        ctx = EVP_CIPHER_CTX_new();
        if (ctx == NULL) return page_ossl_fail("allocating a cipher context");
        if (EVP_CipherInit_ex2(ctx, page_cipher, k->dek.data, NULL, enc, NULL) != 1) {
            EVP_CIPHER_CTX_free(ctx);
            return page_ossl_fail("keying AES-256-GCM");
        }
    }
    *out = ctx;
    return KV_SUCCESS;
}

static void page_ctx_give(page_key *k, int enc, EVP_CIPHER_CTX *ctx)
{
    pthread_mutex_lock(&k->mu);
    if (k->n_pool[enc] < PAGE_POOL_MAX) {
        k->pool[enc][k->n_pool[enc]++] = ctx;
        ctx = NULL;
    }
    pthread_mutex_unlock(&k->mu);
    EVP_CIPHER_CTX_free(ctx);
}
#endif

/* ---- header -------------------------------------------------------------- */

void page_header_encode(const page_header *h, uint8_t out[TDE_PAGE_HEADER])
{
    memcpy(out, TDE_PAGE_MAGIC, 4);
    out[4] = h->format;
    out[5] = out[6] = out[7] = 0;
    page_put_be(out + 8, h->dek_version, 4);
    page_put_be(out + 12, h->nonce_epoch, 4);
    page_put_be(out + 16, h->counter, 8);
    page_put_be(out + 24, h->page_no, 8);
}

kv_result page_header_parse(const uint8_t *in, size_t len, page_header *h)
{
    KV_ENSURE(in != NULL && len >= TDE_PAGE_HEADER, KV_ERR_DATA_LOSS,
              "a page is truncated: %zu bytes, the header alone is %u", in != NULL ? len : 0,
              TDE_PAGE_HEADER);
    KV_ENSURE(memcmp(in, TDE_PAGE_MAGIC, 4) == 0, KV_ERR_DATA_LOSS,
              "not a sealed page (no page header)");
    KV_ENSURE(in[4] == TDE_PAGE_FORMAT, KV_ERR_DATA_LOSS,
              "unknown page format %u (this node reads %u)", in[4], TDE_PAGE_FORMAT);
    KV_ENSURE(in[5] == 0 && in[6] == 0 && in[7] == 0, KV_ERR_DATA_LOSS,
              "damaged page header (reserved bytes set)");
    uint32_t version = (uint32_t)page_get_be(in + 8, 4);
    KV_ENSURE(version >= 1, KV_ERR_DATA_LOSS, "damaged page header (DEK version 0)");
    h->format = in[4];
    h->dek_version = version;
    h->nonce_epoch = (uint32_t)page_get_be(in + 12, 4);
    h->counter = page_get_be(in + 16, 8);
    h->page_no = page_get_be(in + 24, 8);
    return KV_SUCCESS;
}

bool page_is_blank(const uint8_t *in)
{
    /* A sealed page starts with its magic: the common case costs 4 bytes. */
    if ((in[0] | in[1] | in[2] | in[3]) != 0) return false;
    /* Word at a time; pages are 8 KiB so this is no hot path's bottleneck. */
    uint64_t acc = 0;
    for (size_t i = 0; i < TDE_PAGE_SIZE; i += 8) {
        uint64_t w;
        memcpy(&w, in + i, 8);
        acc |= w;
    }
    return acc == 0;
}

static void page_aad(const page_identity *id, uint64_t page_no, const uint8_t *header,
                     uint8_t aad[PAGE_AAD_LEN])
{
    memcpy(aad, id->digest, 32);
    page_put_be(aad + 32, page_no, 8);
    memcpy(aad + 40, header, TDE_PAGE_HEADER);
}

/* ---- seal / open --------------------------------------------------------- */

/* One AES-256-GCM pass over a page's payload: sealing (enc 1) writes out and
 * the tag; opening (enc 0) writes out and checks the tag (in constant time,
 * inside EVP_DecryptFinal_ex).  *authentic reports the tag check; a failure
 * of OpenSSL itself is an error. */
#ifndef TDE_PAGE_COPY_CIPHER
static kv_result page_gcm(page_key *k, int enc, const uint8_t *iv, const uint8_t *aad,
                          const uint8_t *in, uint8_t *out, uint8_t tag[TDE_PAGE_TAG],
                          bool *authentic)
{
    EVP_CIPHER_CTX *ctx = NULL;
    KV_GUARD(page_ctx_take(k, enc, &ctx));
    int n = 0, fin = 0;
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TDE_PAGE_TAG),
        OSSL_PARAM_construct_end()};
    bool ran = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc) == 1 &&
               EVP_CipherUpdate(ctx, NULL, &n, aad, (int)PAGE_AAD_LEN) == 1 &&
               EVP_CipherUpdate(ctx, out, &n, in, (int)TDE_PAGE_DATA) == 1 &&
               n == (int)TDE_PAGE_DATA && (enc || EVP_CIPHER_CTX_set_params(ctx, params) == 1);
    bool fin_ok = ran && EVP_CipherFinal_ex(ctx, out + n, &fin) == 1 && fin == 0;
    if (enc) ran = fin_ok && EVP_CIPHER_CTX_get_params(ctx, params) == 1;
    page_ctx_give(k, enc, ctx);
    if (!ran) return page_ossl_fail(enc ? "AES-256-GCM sealing" : "AES-256-GCM opening");
    if (!fin_ok) ERR_clear_error(); /* a failed tag check leaves nothing worth logging */
    *authentic = fin_ok;
    return KV_SUCCESS;
}
#endif

kv_result page_seal(page_key *k, const page_identity *id, const page_header *h, const uint8_t *data,
                    uint8_t *out)
{
    KV_ENSURE(h->format == TDE_PAGE_FORMAT && h->dek_version == k->version, KV_ERR_INTERNAL,
              "page %llu: sealing with header version %u under DEK version %u",
              (unsigned long long)h->page_no, h->dek_version, k->version);
    page_header_encode(h, out);
    uint8_t aad[PAGE_AAD_LEN];
    page_aad(id, h->page_no, out, aad);
    uint8_t *ct = out + TDE_PAGE_HEADER;
    uint8_t *tag = out + TDE_PAGE_HEADER + TDE_PAGE_DATA;
#ifdef TDE_PAGE_COPY_CIPHER
    (void)aad;
    memcpy(ct, data, TDE_PAGE_DATA);
    memset(tag, 0, TDE_PAGE_TAG);
    return KV_SUCCESS;
#else
    bool done = false;
    if (kv_failed(page_gcm(k, 1, out + 12, aad, data, ct, tag, &done))) {
        kv_wipe(out, TDE_PAGE_SIZE);
        return KV_FAILURE;
    }
    return KV_SUCCESS;
#endif
}

kv_result page_open(page_key *k, const page_identity *id, uint64_t expect_page_no,
                    const uint8_t *in, uint8_t *data, page_header *h)
{
    page_header hdr;
    kv_result r = page_header_parse(in, TDE_PAGE_SIZE, &hdr);
    if (kv_failed(r)) {
        kv_error_context("page %llu", (unsigned long long)expect_page_no);
        return r;
    }
    /* Hints from the plaintext header (the tag would fail anyway). */
    KV_ENSURE(hdr.page_no == expect_page_no, KV_ERR_DATA_LOSS,
              "page %llu holds the sealed bytes of page %llu (copied or moved); not returned",
              (unsigned long long)expect_page_no, (unsigned long long)hdr.page_no);
    KV_ENSURE(hdr.dek_version == k->version, KV_ERR_DATA_LOSS,
              "page %llu is sealed under DEK version %u, the database's key is version %u; "
              "not returned",
              (unsigned long long)expect_page_no, hdr.dek_version, k->version);
    uint8_t aad[PAGE_AAD_LEN];
    page_aad(id, expect_page_no, in, aad);
    const uint8_t *ct = in + TDE_PAGE_HEADER;
    bool authentic = false;
#ifdef TDE_PAGE_COPY_CIPHER
    (void)aad;
    memcpy(data, ct, TDE_PAGE_DATA);
    authentic = true;
#else
    uint8_t tag[TDE_PAGE_TAG];
    memcpy(tag, in + TDE_PAGE_HEADER + TDE_PAGE_DATA, TDE_PAGE_TAG);
    if (kv_failed(page_gcm(k, 0, in + 12, aad, ct, data, tag, &authentic))) {
        kv_wipe(data, TDE_PAGE_DATA);
        return KV_FAILURE;
    }
#endif
    if (!authentic) {
        kv_wipe(data, TDE_PAGE_DATA);
        KV_BAIL(KV_ERR_DATA_LOSS,
                "page %llu failed authentication (modified, torn by an interrupted write, or "
                "sealed for another database or key); not returned",
                (unsigned long long)expect_page_no);
    }
    if (h != NULL) *h = hdr;
    return KV_SUCCESS;
}
