/*
 * page.h: the on-disk page format of tdenode and its crypto (AES-256-GCM
 * through OpenSSL EVP, which uses AES-NI).  Pure: no files, no gRPC, no
 * vault; everything the node writes to disk as a page goes through here.
 *
 * A page is TDE_PAGE_SIZE (8 KiB) on disk:
 *
 *   offset  size  field (integers big-endian)
 *        0     4  magic "HVTP"
 *        4     1  format version (TDE_PAGE_FORMAT)
 *        5     3  reserved, zero
 *        8     4  DEK version the page is sealed under (>= 1)
 *       12     4  nonce epoch (random per counter file, see nonce.c)
 *       16     8  write counter (the DEK's invocation counter)
 *       24     8  page number
 *       32  8144  ciphertext of the page's data (TDE_PAGE_DATA bytes)
 *     8176    16  GCM tag
 *
 * The GCM nonce is bytes 12..23 (epoch || counter).  The AAD is the
 * identity digest (tenant, environment, database), the page number the
 * caller asked for, and the 32-byte header: a page copied to another offset
 * or another database, any flipped bit, or a page sealed under another DEK
 * fails to open with DATA_LOSS, and its bytes are never returned.
 *
 * A page of all zero bytes is "blank" (never written: a hole of the page
 * file).
 */
#ifndef TDE_PAGE_H
#define TDE_PAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

#define TDE_PAGE_SIZE 8192u
#define TDE_PAGE_HEADER 32u
#define TDE_PAGE_TAG 16u
#define TDE_PAGE_DATA (TDE_PAGE_SIZE - TDE_PAGE_HEADER - TDE_PAGE_TAG) /* 8144 */
#define TDE_PAGE_FORMAT 1u
#define TDE_DEK_BYTES 32u
#define TDE_PAGE_MAGIC "HVTP"
/* Ids of tenants, environments and databases are at most this long. */
#define TDE_ID_MAX 64u

typedef struct {
    uint8_t format;       /* TDE_PAGE_FORMAT */
    uint32_t dek_version; /* >= 1 */
    uint32_t nonce_epoch;
    uint64_t counter; /* write counter: the nonce's invocation field */
    uint64_t page_no;
} page_header;

/* Where a page belongs: SHA-256 over the tenant, environment and database
 * ids (length-prefixed, domain-separated).  Computed once per database. */
typedef struct {
    uint8_t digest[32];
} page_identity;

/* A leased DEK ready for sealing and opening: the key bytes in a kv_secret
 * (locked, excluded from core dumps) and a pool of OpenSSL contexts keyed
 * with it, shared by any number of threads.  Reference counted: the last
 * page_key_unref wipes the key and frees (OpenSSL wipes) the contexts. */
typedef struct page_key page_key;

/* Ids: 1..TDE_ID_MAX printable ASCII bytes each. */
KV_RESULT page_identity_make(const char *tenant_id, const char *environment_id,
                             const char *database_id, page_identity *out);

/* dek: TDE_DEK_BYTES bytes (copied into locked memory; the caller wipes its
 * own copy).  dek_version >= 1. */
KV_RESULT page_key_new(const uint8_t *dek, size_t dek_len, uint32_t dek_version, page_key **out);
void page_key_ref(page_key *k);
void page_key_unref(page_key *k);
uint32_t page_key_version(const page_key *k);
/* Constant-time: does k hold exactly these key bytes? */
bool page_key_equals(const page_key *k, const uint8_t *dek, size_t dek_len);

/* Writes the 32-byte header. */
void page_header_encode(const page_header *h, uint8_t out[TDE_PAGE_HEADER]);
/* Parses the plaintext header of a page (len >= TDE_PAGE_HEADER; only the
 * first TDE_PAGE_HEADER bytes are read).  DATA_LOSS for anything that is not
 * a header of this format; nothing is written to *h on failure. */
KV_RESULT page_header_parse(const uint8_t *in, size_t len, page_header *h);

/* Seals TDE_PAGE_DATA bytes of data as the page h describes into out
 * (TDE_PAGE_SIZE bytes).  h->dek_version must be the key's; the caller owns
 * nonce uniqueness (h->nonce_epoch, h->counter never repeat for a DEK).
 * data and out must not overlap. */
KV_RESULT page_seal(page_key *k, const page_identity *id, const page_header *h, const uint8_t *data,
                    uint8_t *out);

/* Opens the page stored at page number expect_page_no: checks the header,
 * then the tag, then writes TDE_PAGE_DATA bytes to data and the header to
 * *h (may be NULL).  DATA_LOSS naming the page when anything is wrong: in
 * that case data holds zeros, never partial plaintext. */
KV_RESULT page_open(page_key *k, const page_identity *id, uint64_t expect_page_no,
                    const uint8_t *in, uint8_t *data, page_header *h);

/* All TDE_PAGE_SIZE bytes zero (a page never written). */
bool page_is_blank(const uint8_t *in);

/* True in the bench-only build whose "cipher" is a copy (never shipped). */
bool page_cipher_is_copy(void);

#endif
