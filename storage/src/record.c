/*
 * record.c: tdenode's small record files (database meta, backup manifests):
 * a checksummed envelope around a protobuf record, written atomically.
 *
 *   "HVTR" | kind u8 | 0 0 0 | length u32 BE | protobuf | SHA-256 of all before
 *
 * What is read back is untrusted: the envelope goes through a bounded
 * cursor, the protobuf through the bounded unpacker, the fields through the
 * checks below.  A damaged file is DATA_LOSS naming it, never half-used.
 */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "kv_cursor.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "node.h"

#define TDE_RECORD_MAX (64u * 1024u)

static kv_result tde_sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    KV_ENSURE(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == 32, KV_ERR_INTERNAL,
              "SHA-256 failed");
    return KV_SUCCESS;
}

kv_result tde_record_write(const char *path, uint8_t kind, const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    KV_ENSURE(n <= TDE_RECORD_MAX, KV_ERR_INTERNAL, "record for %s is %zu bytes", path, n);
    size_t total = 12 + n + 32;
    uint8_t *buf = malloc(total);
    KV_ENSURE(buf != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    kv_writer w;
    kv_writer_init(&w, buf, total);
    kv_result r = kv_writer_write(&w, "HVTR", 4);
    if (kv_ok(r)) r = kv_writer_write_u8(&w, kind);
    if (kv_ok(r)) r = kv_writer_write(&w, "\0\0\0", 3);
    if (kv_ok(r)) r = kv_writer_write_u32be(&w, (uint32_t)n);
    if (kv_ok(r) && protobuf_c_message_pack(msg, buf + w.len) != n)
        r = kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "packing a record failed");
    if (kv_ok(r)) r = tde_sha256(buf, 12 + n, buf + 12 + n);
    if (kv_ok(r)) r = kv_file_write_atomic(path, buf, total, 0600);
    free(buf);
    return r;
}

kv_result tde_record_parse(const uint8_t *data, size_t len, uint8_t kind,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    kv_cursor c;
    kv_cursor_init(&c, data, len);
    const uint8_t *magic, *body, *sum;
    uint8_t k = 0, pad[3];
    uint32_t n = 0;
    kv_result r = kv_cursor_take(&c, 4, &magic);
    if (kv_ok(r)) r = kv_cursor_read_u8(&c, &k);
    if (kv_ok(r)) r = kv_cursor_read(&c, pad, 3);
    if (kv_ok(r)) r = kv_cursor_read_u32be(&c, &n);
    KV_ENSURE(kv_ok(r) && memcmp(magic, "HVTR", 4) == 0 && pad[0] == 0 && pad[1] == 0 &&
                  pad[2] == 0,
              KV_ERR_DATA_LOSS, "not a tdenode record file (bad header)");
    KV_ENSURE(k == kind, KV_ERR_DATA_LOSS, "record of kind %u where kind %u belongs", k, kind);
    KV_ENSURE(n <= TDE_RECORD_MAX, KV_ERR_DATA_LOSS, "record length %u is out of range", n);
    r = kv_cursor_take(&c, n, &body);
    if (kv_ok(r)) r = kv_cursor_take(&c, 32, &sum);
    if (kv_ok(r)) r = kv_cursor_expect_end(&c);
    KV_ENSURE(kv_ok(r), KV_ERR_DATA_LOSS, "record file truncated or with trailing bytes");
    uint8_t want[32];
    KV_GUARD(tde_sha256(data, 12 + (size_t)n, want));
    KV_ENSURE(memcmp(want, sum, 32) == 0, KV_ERR_DATA_LOSS, "record file checksum mismatch");
    if (kv_failed(kv_pb_unpack(desc, body, n, "record", out)))
        KV_BAIL(KV_ERR_DATA_LOSS, "record file holds a malformed %s", desc->short_name);
    return KV_SUCCESS;
}

kv_result tde_record_read(const char *path, uint8_t kind, const ProtobufCMessageDescriptor *desc,
                          ProtobufCMessage **out)
{
    uint8_t *data = NULL;
    size_t len = 0;
    KV_GUARD(kv_file_read(path, TDE_RECORD_MAX + 64, &data, &len));
    kv_result r = tde_record_parse(data, len, kind, desc, out);
    free(data);
    if (kv_failed(r)) kv_error_context("%s", path);
    return r;
}

kv_result tde_check_id(const char *what, const char *id)
{
    size_t n = id != NULL ? strnlen(id, TDE_ID_MAX + 1) : 0;
    KV_ENSURE(n >= 1 && n <= TDE_ID_MAX, KV_ERR_INVALID_ARGUMENT,
              "%s must be an id of 1 to %u characters", what, TDE_ID_MAX);
    KV_ENSURE(strcmp(id, ".") != 0 && strcmp(id, "..") != 0, KV_ERR_INVALID_ARGUMENT,
              "%s '%s' is not an id", what, id);
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        KV_ENSURE((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.',
                  KV_ERR_INVALID_ARGUMENT, "%s may hold only letters, digits, '-', '_' and '.'",
                  what);
    }
    return KV_SUCCESS;
}

/* The same checks on what came from disk: a failure there is DATA_LOSS. */
static kv_result tde_stored_id(const char *what, const char *id)
{
    if (kv_ok(tde_check_id(what, id))) return KV_SUCCESS;
    KV_BAIL(KV_ERR_DATA_LOSS, "damaged record: %s is not a valid id", what);
}

static kv_result tde_stored_name(const char *name)
{
    size_t n = name != NULL ? strnlen(name, TDE_NAME_MAX + 1) : 0;
    KV_ENSURE(n >= 1 && n <= TDE_NAME_MAX, KV_ERR_DATA_LOSS, "damaged record: bad database name");
    for (size_t i = 0; i < n; i++)
        KV_ENSURE((unsigned char)name[i] >= 0x20 && name[i] != 0x7f, KV_ERR_DATA_LOSS,
                  "damaged record: bad database name");
    return KV_SUCCESS;
}

kv_result tde_meta_check(const DatabaseMeta *m)
{
    KV_ENSURE(m->format == 1, KV_ERR_DATA_LOSS, "database meta of unknown format %u", m->format);
    KV_GUARD(tde_stored_id("tenant_id", m->tenant_id));
    KV_GUARD(tde_stored_id("environment_id", m->environment_id));
    KV_GUARD(tde_stored_id("database_id", m->database_id));
    KV_GUARD(tde_stored_name(m->name));
    KV_ENSURE(m->dek_version >= 1, KV_ERR_DATA_LOSS, "damaged record: DEK version 0");
    return KV_SUCCESS;
}

kv_result tde_manifest_check(const BackupManifest *m)
{
    KV_ENSURE(m->format == 1, KV_ERR_DATA_LOSS, "backup manifest of unknown format %u", m->format);
    KV_GUARD(tde_stored_id("backup_id", m->backup_id));
    KV_GUARD(tde_stored_id("tenant_id", m->tenant_id));
    KV_GUARD(tde_stored_id("environment_id", m->environment_id));
    KV_GUARD(tde_stored_id("database_id", m->database_id));
    KV_GUARD(tde_stored_name(m->database_name));
    KV_ENSURE(m->dek_version >= 1, KV_ERR_DATA_LOSS, "damaged manifest: DEK version 0");
    KV_ENSURE(m->pages_sha256.len == 32, KV_ERR_DATA_LOSS, "damaged manifest: no pages checksum");
    KV_ENSURE(m->page_span <= TDE_MAX_PAGE_NO + 1 && m->page_count <= m->page_span,
              KV_ERR_DATA_LOSS, "damaged manifest: %llu pages in a span of %llu",
              (unsigned long long)m->page_count, (unsigned long long)m->page_span);
    KV_ENSURE(m->pages_bytes == m->page_count * TDE_PAGE_SIZE, KV_ERR_DATA_LOSS,
              "damaged manifest: %llu bytes for %llu pages", (unsigned long long)m->pages_bytes,
              (unsigned long long)m->page_count);
    return KV_SUCCESS;
}
