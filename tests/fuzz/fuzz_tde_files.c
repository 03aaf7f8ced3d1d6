/*
 * fuzz_tde_files.c: the parsers of tdenode's own files on arbitrary bytes:
 * record files (database meta, backup manifests) with their field checks,
 * write-counter slots, journal record headers, and grant lines of the
 * config.  Whatever parses must pass its own checks again.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kv_pb.h"
#include "node.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ProtobufCMessage *m = NULL;
    if (kv_ok(tde_record_parse(data, size, TDE_RECORD_META,
                               &hsmvault__tde__database_meta__descriptor, &m))) {
        if (kv_ok(tde_meta_check((const DatabaseMeta *)m)) &&
            ((const DatabaseMeta *)m)->dek_version < 1)
            abort();
        kv_pb_free(m);
    }
    if (kv_ok(tde_record_parse(data, size, TDE_RECORD_MANIFEST,
                               &hsmvault__tde__backup_manifest__descriptor, &m))) {
        const BackupManifest *b = (const BackupManifest *)m;
        if (kv_ok(tde_manifest_check(b)) &&
            (b->pages_sha256.len != 32 || b->page_count > b->page_span))
            abort();
        kv_pb_free(m);
    }
    tde_nonce_slot s;
    if (kv_ok(tde_nonce_slot_parse(data, size, &s)) && (s.seq < 1 || s.dek_version < 1)) abort();
    tde_jrec_header h;
    if (kv_ok(tde_jrec_header_parse(data, size, &h)) && h.page_no > TDE_MAX_PAGE_NO) abort();
    char line[1024];
    size_t n = size < sizeof(line) - 1 ? size : sizeof(line) - 1;
    memcpy(line, data, n);
    line[n] = '\0';
    tde_grant g;
    if (kv_ok(tde_grant_parse(line, TDE_ROLE_ENGINE, &g)) && g.principal[0] == '\0') abort();
    if (kv_ok(tde_check_id("fuzz", line)) && (strlen(line) == 0 || strchr(line, '/') != NULL))
        abort();
    kv_error_clear();
    return 0;
}
