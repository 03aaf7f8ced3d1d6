/*
 * test_page.c: the page format and its crypto (storage/include/page.h):
 * round trips, the documented layout checked against an independent
 * AES-256-GCM computation, and every tamper case of the issue (a flipped bit
 * anywhere, a page moved to another offset, copied to another database,
 * environment or tenant, sealed under another DEK or DEK version), each a
 * DATA_LOSS that names the page and returns no plaintext.
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_test.h"
#include "page.h"

static const uint8_t dek_a[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static uint8_t dek_b[32];

static page_identity id_main;

static void fill(uint8_t *data, unsigned seed)
{
    for (size_t i = 0; i < TDE_PAGE_DATA; i++)
        data[i] = (uint8_t)(i * 31u + seed * 7u + (i >> 8));
}

static page_header hdr(uint64_t page_no, uint64_t counter, uint32_t version)
{
    page_header h = {.format = TDE_PAGE_FORMAT,
                     .dek_version = version,
                     .nonce_epoch = 0x5eed1234u,
                     .counter = counter,
                     .page_no = page_no};
    return h;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0) return false;
    return true;
}

static void test_round_trip(void)
{
    page_key *k = NULL;
    CHECK_OK(page_key_new(dek_a, 32, 1, &k));
    if (k == NULL) return;
    uint8_t data[TDE_PAGE_DATA], back[TDE_PAGE_DATA], page[TDE_PAGE_SIZE];
    fill(data, 1);
    page_header h = hdr(7, 42, 1), got;
    CHECK_OK(page_seal(k, &id_main, &h, data, page));
    CHECK(memcmp(page, TDE_PAGE_MAGIC, 4) == 0);
    /* The plaintext appears nowhere in the sealed page. */
    bool found = false;
    for (size_t i = 0; i + 64 <= TDE_PAGE_SIZE && !found; i++)
        found = memcmp(page + i, data, 64) == 0;
    CHECK(!found);
    CHECK(!page_is_blank(page));
    CHECK_OK(page_open(k, &id_main, 7, page, back, &got));
    CHECK(memcmp(back, data, sizeof(data)) == 0);
    CHECK(got.page_no == 7 && got.counter == 42 && got.dek_version == 1 &&
          got.nonce_epoch == 0x5eed1234u && got.format == TDE_PAGE_FORMAT);
    /* A new counter gives another ciphertext of the same data. */
    uint8_t page2[TDE_PAGE_SIZE];
    h.counter = 43;
    CHECK_OK(page_seal(k, &id_main, &h, data, page2));
    CHECK(memcmp(page + TDE_PAGE_HEADER, page2 + TDE_PAGE_HEADER,
                 TDE_PAGE_SIZE - TDE_PAGE_HEADER) != 0);
    CHECK_OK(page_open(k, &id_main, 7, page2, back, NULL));
    CHECK(memcmp(back, data, sizeof(data)) == 0);
    CHECK(!page_cipher_is_copy());
    CHECK(page_key_version(k) == 1);
    CHECK(page_key_equals(k, dek_a, 32) && !page_key_equals(k, dek_b, 32) &&
          !page_key_equals(k, dek_a, 31));
    page_key_unref(k);
}

/* The layout page.h documents, recomputed with a fresh EVP context:
 * nonce = header[12..24), AAD = identity digest || page number || header. */
static void test_documented_layout(void)
{
    page_key *k = NULL;
    CHECK_OK(page_key_new(dek_a, 32, 3, &k));
    if (k == NULL) return;
    uint8_t data[TDE_PAGE_DATA], page[TDE_PAGE_SIZE];
    fill(data, 9);
    page_header h = hdr(0x0102030405060708ull, 0x1112131415161718ull, 3);
    CHECK_OK(page_seal(k, &id_main, &h, data, page));
    static const uint8_t want_hdr[32] = {
        'H',  'V',  'T',  'P',  1,    0,    0,    0,    0, 0, 0, 3, 0x5e, 0xed, 0x12, 0x34,
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 1, 2, 3, 4, 5,    6,    7,    8};
    CHECK(memcmp(page, want_hdr, 32) == 0);
    uint8_t aad[72];
    memcpy(aad, id_main.digest, 32);
    memcpy(aad + 32, want_hdr + 24, 8);
    memcpy(aad + 40, want_hdr, 32);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    uint8_t ct[TDE_PAGE_DATA], tag[16];
    int n = 0, f = 0;
    CHECK(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, dek_a, want_hdr + 12) == 1);
    CHECK(EVP_EncryptUpdate(ctx, NULL, &n, aad, sizeof(aad)) == 1);
    CHECK(EVP_EncryptUpdate(ctx, ct, &n, data, TDE_PAGE_DATA) == 1);
    CHECK(EVP_EncryptFinal_ex(ctx, ct + n, &f) == 1);
    CHECK(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1);
    EVP_CIPHER_CTX_free(ctx);
    CHECK(memcmp(page + 32, ct, TDE_PAGE_DATA) == 0);
    CHECK(memcmp(page + 32 + TDE_PAGE_DATA, tag, 16) == 0);
    /* The identity digest is SHA-256 over the documented encoding. */
    static const char enc[] = "hsmvault tde page identity v1\0\x06tenant\x03"
                              "env\x08"
                              "database";
    uint8_t d[32];
    unsigned dl = 0;
    CHECK(EVP_Digest(enc, sizeof(enc) - 1, d, &dl, EVP_sha256(), NULL) == 1);
    page_identity ti;
    CHECK_OK(page_identity_make("tenant", "env", "database", &ti));
    CHECK(memcmp(ti.digest, d, 32) == 0);
    page_key_unref(k);
}

/* Expects page_open to fail with DATA_LOSS naming page_no, data zeroed. */
static void expect_loss(page_key *k, const page_identity *id, uint64_t page_no, const uint8_t *page,
                        const char *needle)
{
    uint8_t out[TDE_PAGE_DATA];
    memset(out, 0xAA, sizeof(out));
    page_header h = {0};
    CHECK_ERR(page_open(k, id, page_no, page, out, &h), KV_ERR_DATA_LOSS);
    char want[64];
    snprintf(want, sizeof(want), "page %llu", (unsigned long long)page_no);
    CHECK(strstr(kv_error_msg(), want) != NULL);
    if (needle != NULL && strstr(kv_error_msg(), needle) == NULL) {
        fprintf(stderr, "  message '%s' lacks '%s'\n", kv_error_msg(), needle);
        CHECK(false);
    }
    bool untouched = true;
    for (size_t i = 0; i < sizeof(out); i++)
        untouched = untouched && out[i] == 0xAA;
    CHECK(all_zero(out, sizeof(out)) || untouched);
    CHECK(h.page_no == 0 && h.counter == 0); /* header untouched on failure */
}

static void test_every_bit_flip(void)
{
    page_key *k = NULL;
    CHECK_OK(page_key_new(dek_a, 32, 1, &k));
    if (k == NULL) return;
    uint8_t data[TDE_PAGE_DATA], page[TDE_PAGE_SIZE], out[TDE_PAGE_DATA];
    fill(data, 2);
    page_header h = hdr(11, 1000, 1);
    CHECK_OK(page_seal(k, &id_main, &h, data, page));
    /* One bit in every byte of the page (a different bit each time). */
    int failures = 0, leaks = 0;
    for (size_t i = 0; i < TDE_PAGE_SIZE; i++) {
        page[i] ^= (uint8_t)(1u << (i % 8));
        memset(out, 0xAA, sizeof(out));
        kv_error_clear();
        if (kv_failed(page_open(k, &id_main, 11, page, out, NULL)) &&
            kv_error_code() == KV_ERR_DATA_LOSS)
            failures++;
        /* Either nothing written (header rejected) or zeros: never plaintext. */
        if (!all_zero(out, sizeof(out)) && out[0] != 0xAA) leaks++;
        page[i] ^= (uint8_t)(1u << (i % 8));
    }
    CHECK(failures == (int)TDE_PAGE_SIZE);
    CHECK(leaks == 0);
    CHECK_OK(page_open(k, &id_main, 11, page, out, NULL));
    CHECK(memcmp(out, data, sizeof(data)) == 0);
    /* Torn writes: the second half (or only the tag sector) from an older
     * version of the same page. */
    uint8_t older[TDE_PAGE_SIZE], torn[TDE_PAGE_SIZE];
    page_header ho = hdr(11, 999, 1);
    uint8_t data_old[TDE_PAGE_DATA];
    fill(data_old, 3);
    CHECK_OK(page_seal(k, &id_main, &ho, data_old, older));
    memcpy(torn, page, 4096);
    memcpy(torn + 4096, older + 4096, 4096);
    expect_loss(k, &id_main, 11, torn, "failed authentication");
    memcpy(torn, older, 4096);
    memcpy(torn + 4096, page + 4096, 4096);
    expect_loss(k, &id_main, 11, torn, "failed authentication");
    memcpy(torn, page, TDE_PAGE_SIZE);
    memset(torn + 4096, 0, 4096); /* the second sector never reached the disk */
    expect_loss(k, &id_main, 11, torn, "failed authentication");
    page_key_unref(k);
}

static void test_moved_and_copied(void)
{
    page_key *k = NULL, *k_other = NULL, *k_v2 = NULL;
    CHECK_OK(page_key_new(dek_a, 32, 1, &k));
    CHECK_OK(page_key_new(dek_b, 32, 1, &k_other));
    CHECK_OK(page_key_new(dek_a, 32, 2, &k_v2));
    if (k == NULL || k_other == NULL || k_v2 == NULL) return;
    uint8_t data[TDE_PAGE_DATA], page[TDE_PAGE_SIZE];
    fill(data, 4);
    page_header h = hdr(5, 77, 1);
    CHECK_OK(page_seal(k, &id_main, &h, data, page));

    /* To another offset of the same database. */
    expect_loss(k, &id_main, 6, page, "holds the sealed bytes of page 5");
    /* ...with its header's page number rewritten to match: the tag fails. */
    uint8_t moved[TDE_PAGE_SIZE];
    memcpy(moved, page, sizeof(moved));
    moved[31] = 6;
    expect_loss(k, &id_main, 6, moved, "failed authentication");

    /* Into another database, environment or tenant (same key bytes even). */
    page_identity other_db, other_env, other_tenant;
    CHECK_OK(page_identity_make("tenant-1", "env-1", "db-2", &other_db));
    CHECK_OK(page_identity_make("tenant-1", "env-2", "db-1", &other_env));
    CHECK_OK(page_identity_make("tenant-2", "env-1", "db-1", &other_tenant));
    expect_loss(k, &other_db, 5, page, "failed authentication");
    expect_loss(k, &other_env, 5, page, "failed authentication");
    expect_loss(k, &other_tenant, 5, page, "failed authentication");

    /* Under another DEK (same version) or another version of the DEK. */
    expect_loss(k_other, &id_main, 5, page, "failed authentication");
    expect_loss(k_v2, &id_main, 5, page, "DEK version 1");
    uint8_t relabelled[TDE_PAGE_SIZE];
    memcpy(relabelled, page, sizeof(relabelled));
    relabelled[11] = 2; /* header now claims version 2 */
    expect_loss(k_v2, &id_main, 5, relabelled, "failed authentication");

    /* Not a page at all: blank, garbage header, unknown format, reserved bits. */
    uint8_t blank[TDE_PAGE_SIZE] = {0};
    CHECK(page_is_blank(blank));
    expect_loss(k, &id_main, 5, blank, "not a sealed page");
    uint8_t bad[TDE_PAGE_SIZE];
    memcpy(bad, page, sizeof(bad));
    bad[4] = 2;
    expect_loss(k, &id_main, 5, bad, "unknown page format 2");
    memcpy(bad, page, sizeof(bad));
    bad[6] = 1;
    expect_loss(k, &id_main, 5, bad, "reserved");
    memcpy(bad, page, sizeof(bad));
    memset(bad + 8, 0, 4);
    expect_loss(k, &id_main, 5, bad, "DEK version 0");
    page_key_unref(k);
    page_key_unref(k_other);
    page_key_unref(k_v2);
}

static void test_header_parser(void)
{
    uint8_t buf[TDE_PAGE_HEADER];
    page_header h = hdr(UINT64_MAX, UINT64_MAX, UINT32_MAX), back;
    h.nonce_epoch = UINT32_MAX;
    page_header_encode(&h, buf);
    CHECK_OK(page_header_parse(buf, sizeof(buf), &back));
    CHECK(back.page_no == UINT64_MAX && back.counter == UINT64_MAX &&
          back.dek_version == UINT32_MAX && back.nonce_epoch == UINT32_MAX);
    for (size_t n = 0; n < TDE_PAGE_HEADER; n++)
        CHECK_ERR(page_header_parse(buf, n, &back), KV_ERR_DATA_LOSS);
    CHECK_ERR(page_header_parse(NULL, 32, &back), KV_ERR_DATA_LOSS);
    buf[0] = 'X';
    CHECK_ERR(page_header_parse(buf, sizeof(buf), &back), KV_ERR_DATA_LOSS);
}

static void test_bad_arguments(void)
{
    page_key *k = NULL;
    CHECK_ERR(page_key_new(dek_a, 16, 1, &k), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(page_key_new(NULL, 32, 1, &k), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(page_key_new(dek_a, 32, 0, &k), KV_ERR_INVALID_ARGUMENT);
    CHECK(k == NULL);
    page_identity id;
    char long_id[TDE_ID_MAX + 2];
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    CHECK_ERR(page_identity_make("", "e", "d", &id), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(page_identity_make("t", NULL, "d", &id), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(page_identity_make("t", "e", long_id, &id), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(page_identity_make("t", "e\n", "d", &id), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(page_identity_make("t", "e", "d d", &id), KV_ERR_INVALID_ARGUMENT);
    long_id[TDE_ID_MAX] = '\0';
    CHECK_OK(page_identity_make("t", "e", long_id, &id));
    /* Sealing with a header of another DEK version is a caller bug. */
    CHECK_OK(page_key_new(dek_a, 32, 1, &k));
    if (k == NULL) return;
    uint8_t data[TDE_PAGE_DATA] = {0}, page[TDE_PAGE_SIZE];
    page_header h = hdr(1, 1, 2);
    CHECK_ERR(page_seal(k, &id_main, &h, data, page), KV_ERR_INTERNAL);
    page_key_unref(k);
}

/* Many threads on one key: the context pool hands each its own context. */
typedef struct {
    page_key *k;
    unsigned seed;
    int bad;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    uint8_t data[TDE_PAGE_DATA], back[TDE_PAGE_DATA], page[TDE_PAGE_SIZE];
    for (unsigned i = 0; i < 400; i++) {
        fill(data, a->seed + i);
        page_header h = hdr(i, (uint64_t)a->seed << 32 | i, 1);
        if (kv_failed(page_seal(a->k, &id_main, &h, data, page)) ||
            kv_failed(page_open(a->k, &id_main, i, page, back, NULL)) ||
            memcmp(back, data, sizeof(data)) != 0)
            a->bad++;
    }
    return NULL;
}

static void test_threads(void)
{
    page_key *k = NULL;
    CHECK_OK(page_key_new(dek_a, 32, 1, &k));
    if (k == NULL) return;
    pthread_t th[8];
    worker_arg args[8];
    for (unsigned i = 0; i < 8; i++) {
        args[i] = (worker_arg){.k = k, .seed = i + 1};
        page_key_ref(k);
        CHECK(pthread_create(&th[i], NULL, worker, &args[i]) == 0);
    }
    page_key_unref(k); /* the workers hold the last references */
    for (unsigned i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].bad == 0);
        page_key_unref(k);
    }
}

int main(void)
{
    for (size_t i = 0; i < 32; i++)
        dek_b[i] = (uint8_t)(0xF0 ^ i);
    CHECK_OK(page_identity_make("tenant-1", "env-1", "db-1", &id_main));
    RUN(test_round_trip);
    RUN(test_documented_layout);
    RUN(test_every_bit_flip);
    RUN(test_moved_and_copied);
    RUN(test_header_parser);
    RUN(test_bad_arguments);
    RUN(test_threads);
    return kv_test_finish();
}
