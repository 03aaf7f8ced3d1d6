/*
 * fuzz_page.c: the page header parser and page_open on arbitrary bytes,
 * with the fixed key and identity the seed corpus was sealed with.  A page
 * that opens must re-seal to exactly the input (so only an authentic page
 * can ever open); one that fails must leave zeros, never plaintext.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "page.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The corpus's key and identity (tests/fuzz/corpus/page/README). */
static const uint8_t fuzz_dek[32] = "hsmvault fuzz page key, 32 bytes";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    page_header h;
    kv_result hr = page_header_parse(data, size, &h);
    if (size < TDE_PAGE_SIZE) return 0;
    page_identity id;
    page_key *k = NULL;
    if (kv_failed(page_identity_make("tenant-fuzz", "env-fuzz", "db-fuzz", &id)) ||
        kv_failed(page_key_new(fuzz_dek, 32, kv_ok(hr) ? h.dek_version : 1, &k)))
        abort();
    uint64_t expect[2] = {kv_ok(hr) ? h.page_no : 0, 3};
    for (size_t i = 0; i < 2; i++) {
        uint8_t out[TDE_PAGE_DATA], again[TDE_PAGE_SIZE];
        page_header got;
        memset(out, 0xAA, sizeof(out));
        if (kv_ok(page_open(k, &id, expect[i], data, out, &got))) {
            if (kv_failed(page_seal(k, &id, &got, out, again)) ||
                memcmp(again, data, TDE_PAGE_SIZE) != 0)
                abort();
        } else {
            for (size_t j = 0; j < sizeof(out); j++)
                if (out[j] != 0 && out[j] != 0xAA) abort();
        }
    }
    page_key_unref(k);
    return 0;
}
