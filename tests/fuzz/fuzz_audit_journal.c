/*
 * fuzz_audit_journal.c: kv_aj_scan on arbitrary bytes (vaultd reads its
 * audit journal back after an unclean stop).  Whatever it accepts must be
 * frames in order from 1, within the file and the event limit, ending where
 * it says; framing each accepted event again must give back the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kv_audit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    const uint8_t *base;
    size_t size, at;
    uint64_t gen, expect;
} fuzz_aj;

static kv_result fuzz_aj_one(void *arg, uint64_t number, const uint8_t *ev, size_t n)
{
    fuzz_aj *f = arg;
    if (number != f->expect || n == 0 || n > KV_AUDIT_EVENT_MAX) abort();
    if (ev != f->base + f->at + KV_AJ_FRAME_HEADER || f->at + KV_AJ_FRAME_HEADER + n > f->size)
        abort();
    static uint8_t again[KV_AJ_FRAME_MAX];
    size_t len = kv_aj_frame(f->gen, number, ev, n, again);
    if (len != KV_AJ_FRAME_HEADER + n || memcmp(again, f->base + f->at, len) != 0) abort();
    f->at += len;
    f->expect++;
    return KV_SUCCESS;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_aj f = {.base = data, .size = size, .at = KV_AJ_HEADER, .expect = 1};
    if (kv_failed(kv_aj_header_parse(data, size, &f.gen))) {
        kv_error_clear();
        return 0;
    }
    size_t end = 0;
    uint64_t frames = 0, gen = 0;
    if (kv_failed(kv_aj_scan(data, size, &gen, fuzz_aj_one, &f, &end, &frames))) abort();
    if (gen != f.gen || end != f.at || frames != f.expect - 1 || end > size) abort();
    return 0;
}
