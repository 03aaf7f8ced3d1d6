/*
 * test_tde_files.c: tdenode's files, on real files in a temporary
 * directory: record files (meta, manifests) and their checks, the write
 * counter (reservations durable before use, a kill -9 child never followed
 * by a reused value, damaged slots, the hard limit), the journal (atomic
 * batches, torn tails, foreign generations, the index), ids and grants.
 * Every parser gets truncation, corruption and trailing-byte cases.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kv_file.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "node.h"

static char dir[256];

static void path_of(char *out, size_t cap, const char *leaf)
{
    snprintf(out, cap, "%s/%s", dir, leaf);
}

/* Damages one byte for certain: a fixed junk value would leave a byte that
 * already held it (a random epoch byte, 1 time in 256) intact. */
static bool flip_byte(int fd, off_t off)
{
    uint8_t b = 0;
    if (pread(fd, &b, 1, off) != 1) return false;
    b ^= 0x5a;
    return pwrite(fd, &b, 1, off) == 1;
}

/* ---- record files ----------------------------------------------------------- */

static DatabaseMeta meta_fixture(void)
{
    DatabaseMeta m = HSMVAULT__TDE__DATABASE_META__INIT;
    m.format = 1;
    m.tenant_id = "tnt-0123456789abcdef";
    m.environment_id = "env-0123456789abcdef";
    m.database_id = "db-0123456789abcdef";
    m.name = "orders";
    m.dek_version = 3;
    m.created_at = 1700000000;
    return m;
}

static void test_records(void)
{
    char path[512];
    path_of(path, sizeof(path), "meta");
    DatabaseMeta m = meta_fixture();
    CHECK_OK(tde_record_write(path, TDE_RECORD_META, &m.base));
    DatabaseMeta *back = NULL;
    CHECK_OK(tde_record_read(path, TDE_RECORD_META, &hsmvault__tde__database_meta__descriptor,
                             (ProtobufCMessage **)&back));
    if (back != NULL) {
        CHECK(strcmp(back->database_id, m.database_id) == 0 && back->dek_version == 3);
        CHECK_OK(tde_meta_check(back));
        kv_pb_free(&back->base);
    }
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(path, 4096, &data, &len));
    if (data == NULL) return;
    ProtobufCMessage *out = NULL;
    const ProtobufCMessageDescriptor *d = &hsmvault__tde__database_meta__descriptor;
    /* Every truncation, every flipped byte, trailing bytes, the other kind. */
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        kv_error_clear();
        if (kv_ok(tde_record_parse(data, n, TDE_RECORD_META, d, &out)) ||
            kv_error_code() != KV_ERR_DATA_LOSS)
            bad++;
    }
    for (size_t i = 0; i < len; i++) {
        data[i] ^= 0x01;
        kv_error_clear();
        if (kv_ok(tde_record_parse(data, len, TDE_RECORD_META, d, &out)) ||
            kv_error_code() != KV_ERR_DATA_LOSS)
            bad++;
        data[i] ^= 0x01;
    }
    CHECK(bad == 0);
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, data, len);
    longer[len] = 0;
    CHECK_ERR(tde_record_parse(longer, len + 1, TDE_RECORD_META, d, &out), KV_ERR_DATA_LOSS);
    free(longer);
    CHECK_ERR(tde_record_parse(data, len, TDE_RECORD_MANIFEST, d, &out), KV_ERR_DATA_LOSS);
    CHECK(strstr(kv_error_msg(), "kind") != NULL);
    /* A length field beyond the limit. */
    data[8] = 0x7f;
    CHECK_ERR(tde_record_parse(data, len, TDE_RECORD_META, d, &out), KV_ERR_DATA_LOSS);
    free(data);
    CHECK_ERR(tde_record_read("/nonexistent/meta", TDE_RECORD_META, d, &out), KV_ERR_NOT_FOUND);

    /* Field checks. */
    m.format = 2;
    CHECK_ERR(tde_meta_check(&m), KV_ERR_DATA_LOSS);
    m = meta_fixture();
    m.dek_version = 0;
    CHECK_ERR(tde_meta_check(&m), KV_ERR_DATA_LOSS);
    m = meta_fixture();
    m.database_id = "../x";
    CHECK_ERR(tde_meta_check(&m), KV_ERR_DATA_LOSS);
    m = meta_fixture();
    m.name = "";
    CHECK_ERR(tde_meta_check(&m), KV_ERR_DATA_LOSS);
    m = meta_fixture();
    m.name = "bad\nname";
    CHECK_ERR(tde_meta_check(&m), KV_ERR_DATA_LOSS);

    uint8_t sha[32] = {0};
    BackupManifest b = HSMVAULT__TDE__BACKUP_MANIFEST__INIT;
    b.format = 1;
    b.backup_id = "bk-0123456789abcdef";
    b.tenant_id = m.tenant_id;
    b.environment_id = m.environment_id;
    b.database_id = m.database_id;
    b.database_name = "orders";
    b.dek_version = 1;
    b.page_count = 2;
    b.page_span = 10;
    b.pages_bytes = 2 * TDE_PAGE_SIZE;
    b.pages_sha256 = (ProtobufCBinaryData){32, sha};
    CHECK_OK(tde_manifest_check(&b));
    b.pages_bytes = 3;
    CHECK_ERR(tde_manifest_check(&b), KV_ERR_DATA_LOSS);
    b.pages_bytes = 2 * TDE_PAGE_SIZE;
    b.page_count = 11;
    CHECK_ERR(tde_manifest_check(&b), KV_ERR_DATA_LOSS);
    b.page_count = 2;
    b.pages_sha256.len = 31;
    CHECK_ERR(tde_manifest_check(&b), KV_ERR_DATA_LOSS);
    b.pages_sha256.len = 32;
    b.page_span = TDE_MAX_PAGE_NO + 2;
    CHECK_ERR(tde_manifest_check(&b), KV_ERR_DATA_LOSS);
}

static void test_ids_and_grants(void)
{
    CHECK_OK(tde_check_id("x", "env-0123456789abcdef"));
    CHECK_OK(tde_check_id("x", "a.b_c-D9"));
    const char *bad[] = {"", ".", "..", "a/b", "a b", "é", "a\n", NULL};
    for (size_t i = 0; i < KV_ARRAY_LEN(bad); i++)
        CHECK_ERR(tde_check_id("x", bad[i]), KV_ERR_INVALID_ARGUMENT);
    char long_id[TDE_ID_MAX + 2];
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    CHECK_ERR(tde_check_id("x", long_id), KV_ERR_INVALID_ARGUMENT);
    tde_grant g;
    CHECK_OK(tde_grant_parse("spiffe://x/engine", TDE_ROLE_ENGINE, &g));
    CHECK(strcmp(g.principal, "spiffe://x/engine") == 0 && g.environment_id[0] == '\0');
    CHECK_OK(tde_grant_parse("spiffe://x/engine \t env-1", TDE_ROLE_ADMIN, &g));
    CHECK(strcmp(g.environment_id, "env-1") == 0 && g.role == TDE_ROLE_ADMIN);
    CHECK_ERR(tde_grant_parse("", TDE_ROLE_ENGINE, &g), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(tde_grant_parse("p env/../x", TDE_ROLE_ENGINE, &g), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(tde_grant_parse("p e1 e2", TDE_ROLE_ENGINE, &g), KV_ERR_INVALID_ARGUMENT);
}

/* ---- the write counter -------------------------------------------------------- */

static void test_nonce(void)
{
    char path[512];
    path_of(path, sizeof(path), "nonce");
    tde_nonce n;
    CHECK_OK(tde_nonce_create(&n, path, 2, 100, 1u << 20));
    tde_nonce_close(&n);
    tde_nonce other;
    CHECK_ERR(tde_nonce_create(&other, path, 2, 0, 1u << 20), KV_ERR_UNAVAILABLE); /* exists */
    CHECK_OK(tde_nonce_load(&n, path, 1u << 20));
    uint32_t epoch = 0, epoch2 = 0;
    uint64_t first = 0, second = 0;
    CHECK_OK(tde_nonce_take(&n, 10, &epoch, &first));
    CHECK_OK(tde_nonce_take(&n, 1, &epoch2, &second));
    CHECK(first == 100 && second == 110 && epoch == epoch2 && tde_nonce_used(&n) == 111);
    CHECK_ERR(tde_nonce_take(&n, 0, &epoch, &first), KV_ERR_INTERNAL);
    CHECK_ERR(tde_nonce_take(&n, 257, &epoch, &first), KV_ERR_INTERNAL);
    tde_nonce_close(&n);
    /* After a restart the counter resumes above everything reserved. */
    CHECK_OK(tde_nonce_load(&n, path, 1u << 20));
    CHECK(n.dek_version == 2 && n.epoch == epoch);
    CHECK_OK(tde_nonce_take(&n, 1, &epoch2, &second));
    CHECK(second >= 111 && epoch2 == epoch);
    uint64_t resumed = second;
    tde_nonce_close(&n);

    /* A damaged slot might have been the newer one: skip what it could hold. */
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size >= 4096 + TDE_NONCE_SLOT_LEN);
    int fd = open(path, O_RDWR);
    uint8_t slot[TDE_NONCE_SLOT_LEN];
    CHECK(pread(fd, slot, sizeof(slot), 4096) == (ssize_t)sizeof(slot));
    tde_nonce_slot parsed;
    CHECK_OK(tde_nonce_slot_parse(slot, sizeof(slot), &parsed));
    off_t newer = parsed.seq % 2 ? 0 : 4096;
    CHECK(flip_byte(fd, newer + 20));
    close(fd);
    CHECK_OK(tde_nonce_load(&n, path, 1u << 20));
    CHECK_OK(tde_nonce_take(&n, 1, &epoch2, &second));
    CHECK(second >= resumed + 4096);
    tde_nonce_close(&n);
    /* Both slots damaged: DATA_LOSS, nothing handed out. */
    fd = open(path, O_RDWR);
    CHECK(flip_byte(fd, 20) && flip_byte(fd, 4096 + 20));
    close(fd);
    CHECK_ERR(tde_nonce_load(&n, path, 1u << 20), KV_ERR_DATA_LOSS);

    /* Slot parser: truncation, checksum, magic, zero seq or version. */
    for (size_t k = 0; k < sizeof(slot); k++)
        CHECK_ERR(tde_nonce_slot_parse(slot, k, &parsed), KV_ERR_DATA_LOSS);
    uint8_t s2[TDE_NONCE_SLOT_LEN];
    memcpy(s2, slot, sizeof(s2));
    s2[0] = 'X';
    CHECK_ERR(tde_nonce_slot_parse(s2, sizeof(s2), &parsed), KV_ERR_DATA_LOSS);
    memcpy(s2, slot, sizeof(s2));
    s2[40] ^= 1;
    CHECK_ERR(tde_nonce_slot_parse(s2, sizeof(s2), &parsed), KV_ERR_DATA_LOSS);

    /* The hard limit: exactly limit values, then RESOURCE_EXHAUSTED. */
    path_of(path, sizeof(path), "nonce-limit");
    CHECK_OK(tde_nonce_create(&n, path, 1, 0, 1024));
    for (int i = 0; i < 4; i++)
        CHECK_OK(tde_nonce_take(&n, 256, &epoch, &first));
    CHECK_ERR(tde_nonce_take(&n, 1, &epoch, &first), KV_ERR_RESOURCE_EXHAUSTED);
    CHECK(strstr(kv_error_msg(), "limit") != NULL);
    tde_nonce_close(&n);
    CHECK_OK(tde_nonce_load(&n, path, 1024));
    CHECK_ERR(tde_nonce_take(&n, 1, &epoch, &first), KV_ERR_RESOURCE_EXHAUSTED);
    tde_nonce_close(&n);
}

/* A child takes counter values as fast as it can and reports each one it
 * was handed; it is killed -9 at some point; the parent's next value is
 * above everything the child reported (and everything it could have used). */
static void test_nonce_kill9(void)
{
    char path[512];
    path_of(path, sizeof(path), "nonce-kill");
    tde_nonce n;
    CHECK_OK(tde_nonce_create(&n, path, 1, 0, UINT64_MAX / 2));
    tde_nonce_close(&n);
    for (int round = 0; round < 3; round++) {
        int fds[2];
        CHECK(pipe(fds) == 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            tde_nonce c;
            if (kv_failed(tde_nonce_load(&c, path, UINT64_MAX / 2))) _exit(1);
            for (;;) {
                uint32_t e;
                uint64_t v;
                if (kv_failed(tde_nonce_take(&c, 7, &e, &v))) _exit(1);
                v += 6;
                if (write(fds[1], &v, sizeof(v)) != (ssize_t)sizeof(v)) _exit(1);
            }
        }
        close(fds[1]);
        usleep(30000 + 40000 * (useconds_t)round);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        uint64_t v, max = 0, count = 0;
        while (read(fds[0], &v, sizeof(v)) == (ssize_t)sizeof(v)) {
            if (v > max) max = v;
            count++;
        }
        close(fds[0]);
        CHECK(count > 0);
        uint32_t e;
        uint64_t next = 0;
        CHECK_OK(tde_nonce_load(&n, path, UINT64_MAX / 2));
        CHECK_OK(tde_nonce_take(&n, 1, &e, &next));
        CHECK(next > max);
        tde_nonce_close(&n);
    }
}

/* ---- the journal ------------------------------------------------------------- */

static int check_calls;
static uint64_t reject_page = UINT64_MAX;

/* The check the node does with page_open; here: the sealed bytes carry the
 * page number in their first 8 bytes. */
static kv_result check_page(void *arg, uint64_t page_no, const uint8_t *page)
{
    (void)arg;
    check_calls++;
    uint64_t p;
    memcpy(&p, page, 8);
    KV_ENSURE(p == page_no && page_no != reject_page, KV_ERR_DATA_LOSS, "bad page");
    return KV_SUCCESS;
}

static kv_result append(tde_journal *j, const uint64_t *pages, size_t n, uint8_t fill)
{
    uint8_t *recs = calloc(n, TDE_JREC);
    for (size_t i = 0; i < n; i++) {
        memset(recs + i * TDE_JREC + TDE_JREC_HEADER, fill, TDE_PAGE_SIZE);
        memcpy(recs + i * TDE_JREC + TDE_JREC_HEADER, &pages[i], 8);
    }
    kv_result r = tde_journal_append(j, recs, n, pages);
    free(recs);
    return r;
}

static uint8_t fill_at(tde_journal *j, uint64_t page_no)
{
    off_t off = tde_journal_find(j, page_no);
    uint8_t b = 0;
    if (off < 0 || pread(j->fd, &b, 1, off + 100) != 1) return 0;
    return b;
}

static void test_journal(void)
{
    char path[512];
    path_of(path, sizeof(path), "journal");
    tde_journal j;
    uint64_t dropped = 99;
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    CHECK(dropped == 0 && tde_journal_count(&j) == 0 && tde_journal_find(&j, 1) < 0);
    uint64_t a[3] = {1, 2, 3}, b[2] = {2, 9};
    CHECK_OK(append(&j, a, 3, 0x11));
    CHECK_OK(append(&j, b, 2, 0x22));
    CHECK(tde_journal_count(&j) == 5 && fill_at(&j, 1) == 0x11 && fill_at(&j, 2) == 0x22 &&
          fill_at(&j, 9) == 0x22 && j.max_page_plus1 == 10);
    CHECK(tde_journal_find(&j, 4) < 0);
    CHECK_OK(tde_journal_sync(&j));
    tde_journal_close(&j);

    /* Recovery keeps both committed batches. */
    check_calls = 0;
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    CHECK(dropped == 0 && tde_journal_count(&j) == 5 && check_calls == 5 && fill_at(&j, 2) == 0x22);
    /* A third batch torn inside its second record: the whole batch goes. */
    uint64_t c[3] = {4, 5, 6};
    CHECK_OK(append(&j, c, 3, 0x33));
    tde_journal_close(&j);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK(truncate(path, st.st_size - TDE_JREC - 100) == 0);
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    CHECK(dropped == 2 && tde_journal_count(&j) == 5 && tde_journal_find(&j, 4) < 0 &&
          fill_at(&j, 9) == 0x22);
    CHECK(stat(path, &st) == 0 && st.st_size == (off_t)(TDE_JFILE_HEADER + 5 * TDE_JREC));
    /* A batch whose page fails the check (e.g. sealed under another key). */
    uint64_t d1[2] = {7, 8};
    CHECK_OK(append(&j, d1, 2, 0x44));
    tde_journal_close(&j);
    reject_page = 8;
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    reject_page = UINT64_MAX;
    CHECK(dropped == 2 && tde_journal_find(&j, 7) < 0 && tde_journal_count(&j) == 5);
    /* A record header flipped: the scan stops there, before its batch. */
    tde_journal_close(&j);
    int fd = open(path, O_RDWR);
    uint8_t x = 'X';
    CHECK(pwrite(fd, &x, 1, TDE_JFILE_HEADER + 3 * TDE_JREC) == 1);
    close(fd);
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    CHECK(dropped == 2 && tde_journal_count(&j) == 3 && fill_at(&j, 2) == 0x11 &&
          tde_journal_find(&j, 9) < 0);

    /* Full, then reset: a new generation, old records never come back. */
    CHECK(!tde_journal_full(&j, 61) && tde_journal_full(&j, 62));
    uint64_t many[62];
    for (size_t i = 0; i < 62; i++)
        many[i] = 100 + i;
    CHECK_ERR(append(&j, many, 62, 0x55), KV_ERR_RESOURCE_EXHAUSTED);
    CHECK(tde_journal_count(&j) == 3); /* nothing of the refused batch */
    uint64_t gen = j.generation;
    CHECK_OK(tde_journal_reset(&j));
    CHECK(j.generation != gen && tde_journal_count(&j) == 0 && tde_journal_find(&j, 1) < 0);
    CHECK_OK(append(&j, a, 1, 0x66));
    tde_journal_close(&j);
    /* Records of an older generation behind a new header do not count. */
    fd = open(path, O_RDWR);
    uint8_t rec[TDE_JREC] = {0};
    memcpy(rec, "HVTJ", 4);
    rec[4] = 1;
    memcpy(rec + 8, &gen, 8); /* wrong byte order and generation alike */
    CHECK(pwrite(fd, rec, sizeof(rec), TDE_JFILE_HEADER + TDE_JREC) == (ssize_t)sizeof(rec));
    close(fd);
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    CHECK(dropped == 1 && tde_journal_count(&j) == 1 && fill_at(&j, 1) == 0x66);
    tde_journal_close(&j);
    /* A damaged file header: an empty journal (it held only checkpointed pages). */
    fd = open(path, O_RDWR);
    CHECK(pwrite(fd, &x, 1, 0) == 1);
    close(fd);
    CHECK_OK(tde_journal_open(&j, path, 64, check_page, NULL, &dropped));
    CHECK(tde_journal_count(&j) == 0);
    tde_journal_close(&j);

    /* The index grows with the pages written, and recovers the same. */
    path_of(path, sizeof(path), "journal-big");
    CHECK_OK(tde_journal_open(&j, path, 4096, check_page, NULL, &dropped));
    uint64_t batch[256];
    for (uint64_t k = 0; k < 12; k++) {
        for (size_t i = 0; i < 256; i++)
            batch[i] = k * 1000 + i;
        CHECK_OK(append(&j, batch, 256, (uint8_t)(k + 1)));
    }
    int missing = 0;
    for (uint64_t k = 0; k < 12; k++)
        for (size_t i = 0; i < 256; i++)
            missing += fill_at(&j, k * 1000 + i) != (uint8_t)(k + 1);
    CHECK(missing == 0 && j.cap >= 2 * 12 * 256);
    tde_journal_close(&j);
    CHECK_OK(tde_journal_open(&j, path, 4096, check_page, NULL, &dropped));
    missing = 0;
    for (uint64_t k = 0; k < 12; k++)
        for (size_t i = 0; i < 256; i++)
            missing += fill_at(&j, k * 1000 + i) != (uint8_t)(k + 1);
    CHECK(missing == 0 && dropped == 0 && tde_journal_count(&j) == 12 * 256);
    CHECK_OK(tde_journal_reset(&j));
    CHECK(j.cap == 64 && tde_journal_find(&j, 5) < 0);
    tde_journal_close(&j);

    /* The record header parser. */
    uint8_t h[TDE_JREC_HEADER] = {0};
    memcpy(h, "HVTJ", 4);
    h[4] = 1;
    tde_jrec_header jh;
    CHECK_OK(tde_jrec_header_parse(h, sizeof(h), &jh));
    CHECK(jh.commit && jh.page_no == 0);
    for (size_t k = 0; k < sizeof(h); k++)
        CHECK_ERR(tde_jrec_header_parse(h, k, &jh), KV_ERR_DATA_LOSS);
    h[4] = 2;
    CHECK_ERR(tde_jrec_header_parse(h, sizeof(h), &jh), KV_ERR_DATA_LOSS);
    h[4] = 0;
    h[40] = 1;
    CHECK_ERR(tde_jrec_header_parse(h, sizeof(h), &jh), KV_ERR_DATA_LOSS);
    h[40] = 0;
    memset(h + 24, 0xff, 8); /* page number 2^64 - 1 */
    CHECK_ERR(tde_jrec_header_parse(h, sizeof(h), &jh), KV_ERR_DATA_LOSS);
}

int main(void)
{
    kv_test_tmpdir(dir, sizeof(dir), "tde-files");
    RUN(test_records);
    RUN(test_ids_and_grants);
    RUN(test_nonce);
    RUN(test_nonce_kill9);
    RUN(test_journal);
    if (kv_test_failed == 0) kv_test_rmtree(dir);
    return kv_test_finish();
}
