/*
 * journal.c: a database's write-ahead journal of sealed pages (node.h).
 *
 *   file header (64 bytes): "HVJH" | format 1 | 0 0 0 | generation u64 | zeros
 *   record (64 + 8192 bytes): "HVTJ" | flags (1: last of its batch) | 0 0 0 |
 *                             generation u64 | seq u64 | page number u64 |
 *                             zeros | the sealed page
 *
 * Recovery keeps the longest prefix of complete, committed batches whose
 * records carry this journal's generation, consecutive sequence numbers and
 * a page that opens (checked by the caller with the DEK), and cuts the file
 * after it: a batch torn by a crash was never acknowledged after a flush.
 *
 * Must never index a record before its bytes are in the file, nor keep a
 * record whose batch is incomplete.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_log.h"
#include "node.h"

#define JFLAG_COMMIT 1u

static void j_put_be(uint8_t *p, uint64_t v)
{
    for (size_t i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * (7 - i)));
}

static uint64_t j_get_be(const uint8_t *p)
{
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static off_t j_offset(uint64_t record)
{
    return (off_t)(TDE_JFILE_HEADER + record * TDE_JREC);
}

kv_result tde_jrec_header_parse(const uint8_t *p, size_t len, tde_jrec_header *out)
{
    KV_ENSURE(p != NULL && len >= TDE_JREC_HEADER, KV_ERR_DATA_LOSS, "journal record truncated");
    KV_ENSURE(memcmp(p, "HVTJ", 4) == 0 && (p[4] & ~JFLAG_COMMIT) == 0 && p[5] == 0 && p[6] == 0 &&
                  p[7] == 0,
              KV_ERR_DATA_LOSS, "not a journal record");
    for (size_t i = 32; i < TDE_JREC_HEADER; i++)
        KV_ENSURE(p[i] == 0, KV_ERR_DATA_LOSS, "journal record with reserved bytes set");
    tde_jrec_header h = {.commit = (p[4] & JFLAG_COMMIT) != 0,
                         .generation = j_get_be(p + 8),
                         .seq = j_get_be(p + 16),
                         .page_no = j_get_be(p + 24)};
    KV_ENSURE(h.page_no <= TDE_MAX_PAGE_NO, KV_ERR_DATA_LOSS, "journal record for page %llu",
              (unsigned long long)h.page_no);
    *out = h;
    return KV_SUCCESS;
}

/* ---- the index ------------------------------------------------------------ */

static size_t j_slot(const tde_journal *j, uint64_t page_no)
{
    uint64_t h = (page_no + 1) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (j->cap - 1);
}

static void j_index_put(tde_journal *j, uint64_t page_no, uint32_t record)
{
    size_t i = j_slot(j, page_no);
    while (j->keys[i] != 0 && j->keys[i] != page_no + 1)
        i = (i + 1) & (j->cap - 1);
    if (j->keys[i] == 0) {
        j->keys[i] = page_no + 1;
        j->used++;
    }
    j->vals[i] = record;
    if (page_no + 1 > j->max_page_plus1) j->max_page_plus1 = page_no + 1;
}

/* Makes room for more entries: the table doubles (rehash) while it would be
 * more than half full, so a database written little costs little memory. */
static kv_result j_index_reserve(tde_journal *j, size_t more)
{
    while ((j->used + more) * 2 > j->cap) {
        size_t cap = j->cap * 2;
        uint64_t *keys = calloc(cap, sizeof(*keys));
        uint32_t *vals = calloc(cap, sizeof(*vals));
        if (keys == NULL || vals == NULL) {
            free(keys);
            free(vals);
            KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory for the journal index");
        }
        uint64_t *old_keys = j->keys;
        uint32_t *old_vals = j->vals;
        size_t old_cap = j->cap;
        j->keys = keys;
        j->vals = vals;
        j->cap = cap;
        j->used = 0;
        for (size_t i = 0; i < old_cap; i++)
            if (old_keys[i] != 0) j_index_put(j, old_keys[i] - 1, old_vals[i]);
        free(old_keys);
        free(old_vals);
    }
    return KV_SUCCESS;
}

static void j_index_clear(tde_journal *j)
{
    if (j->cap > 1024) { /* give a big index back after a checkpoint */
        uint64_t *keys = calloc(64, sizeof(*keys));
        uint32_t *vals = calloc(64, sizeof(*vals));
        if (keys != NULL && vals != NULL) {
            free(j->keys);
            free(j->vals);
            j->keys = keys;
            j->vals = vals;
            j->cap = 64;
        } else {
            free(keys);
            free(vals);
        }
    }
    memset(j->keys, 0, j->cap * sizeof(*j->keys));
    j->used = 0;
    j->max_page_plus1 = 0;
}

/* ---- file ------------------------------------------------------------------ */

static kv_result j_write_header(tde_journal *j)
{
    uint8_t h[TDE_JFILE_HEADER] = {0};
    memcpy(h, "HVJH", 4);
    h[4] = 1;
    j_put_be(h + 8, j->generation);
    KV_GUARD(tde_pwrite_all(j->fd, h, sizeof(h), 0, "the journal"));
    return KV_SUCCESS;
}

kv_result tde_journal_reset(tde_journal *j)
{
    KV_ENSURE(getrandom(&j->generation, sizeof(j->generation), 0) == (ssize_t)sizeof(j->generation),
              KV_ERR_UNAVAILABLE, "the kernel random source failed");
    KV_ENSURE(ftruncate(j->fd, 0) == 0, KV_ERR_UNAVAILABLE, "cannot truncate the journal: %s",
              strerror(errno));
    KV_GUARD(j_write_header(j));
    KV_ENSURE(fdatasync(j->fd) == 0, KV_ERR_UNAVAILABLE, "cannot sync the journal: %s",
              strerror(errno));
    j->records = 0;
    j_index_clear(j);
    return KV_SUCCESS;
}

static kv_result j_read_header(tde_journal *j, bool *valid)
{
    uint8_t h[TDE_JFILE_HEADER];
    size_t got = 0;
    KV_GUARD(tde_pread_upto(j->fd, h, sizeof(h), 0, &got, "the journal"));
    *valid = got == sizeof(h) && memcmp(h, "HVJH", 4) == 0 && h[4] == 1;
    for (size_t i = 16; *valid && i < sizeof(h); i++)
        *valid = h[i] == 0;
    if (*valid) j->generation = j_get_be(h + 8);
    return KV_SUCCESS;
}

/* Scans the records, indexing committed batches; *keep = records kept. */
static kv_result j_recover(tde_journal *j, tde_journal_check_fn check, void *arg, uint64_t *keep)
{
    uint8_t *rec = malloc(TDE_JREC);
    KV_ENSURE(rec != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    uint64_t committed = 0, k = 0;
    kv_result r = KV_SUCCESS;
    for (;; k++) {
        size_t got = 0;
        r = tde_pread_upto(j->fd, rec, TDE_JREC, j_offset(k), &got, "the journal");
        if (kv_failed(r) || got < TDE_JREC) break;
        tde_jrec_header h;
        if (kv_failed(tde_jrec_header_parse(rec, TDE_JREC_HEADER, &h)) ||
            h.generation != j->generation || h.seq != k ||
            kv_failed(check(arg, h.page_no, rec + TDE_JREC_HEADER)))
            break;
        if (h.commit) {
            for (uint64_t i = committed; i <= k; i++) {
                size_t g = 0;
                uint8_t hb[TDE_JREC_HEADER];
                r = tde_pread_upto(j->fd, hb, sizeof(hb), j_offset(i), &g, "the journal");
                if (kv_ok(r)) r = j_index_reserve(j, 1);
                if (kv_failed(r)) break;
                j_index_put(j, j_get_be(hb + 24), (uint32_t)i);
            }
            if (kv_failed(r)) break;
            committed = k + 1;
        }
    }
    kv_wipe(rec, TDE_JREC);
    free(rec);
    if (kv_ok(r)) kv_error_clear(); /* the record that ended the scan is not an error */
    *keep = committed;
    return r;
}

kv_result tde_journal_open(tde_journal *j, const char *path, size_t capacity,
                           tde_journal_check_fn check, void *arg, uint64_t *dropped)
{
    memset(j, 0, sizeof(*j));
    j->fd = -1;
    pthread_mutex_init(&j->mu, NULL);
    j->capacity = capacity;
    *dropped = 0;
    j->cap = 64; /* grows with the pages written (j_index_reserve) */
    j->keys = calloc(j->cap, sizeof(*j->keys));
    j->vals = calloc(j->cap, sizeof(*j->vals));
    kv_result r = KV_SUCCESS;
    KV_ENSURE_GOTO(j->keys != NULL && j->vals != NULL, r, fail, KV_ERR_RESOURCE_EXHAUSTED,
                   "out of memory for the journal index");
    j->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    KV_ENSURE_GOTO(j->fd >= 0, r, fail, KV_ERR_UNAVAILABLE, "cannot open %s: %s", path,
                   strerror(errno));
    struct stat st;
    KV_ENSURE_GOTO(fstat(j->fd, &st) == 0, r, fail, KV_ERR_UNAVAILABLE, "cannot stat %s", path);
    bool valid = false;
    KV_GUARD_GOTO(j_read_header(j, &valid), r, fail);
    if (!valid) {
        /* Empty, or a header torn while a checkpointed journal was being
         * emptied: nothing in it is needed. */
        if (st.st_size > 0)
            KV_LOG_WARN("%s: no valid journal header; starting an empty journal", path);
        KV_GUARD_GOTO(tde_journal_reset(j), r, fail);
        return KV_SUCCESS;
    }
    uint64_t keep = 0;
    KV_GUARD_GOTO(j_recover(j, check, arg, &keep), r, fail);
    j->records = keep;
    off_t end = j_offset(keep);
    if (st.st_size > end) {
        *dropped = ((uint64_t)(st.st_size - end) + TDE_JREC - 1) / TDE_JREC;
        KV_ENSURE_GOTO(ftruncate(j->fd, end) == 0 && fdatasync(j->fd) == 0, r, fail,
                       KV_ERR_UNAVAILABLE, "cannot cut the torn end of %s: %s", path,
                       strerror(errno));
    }
    return KV_SUCCESS;
fail:
    tde_journal_close(j);
    return r;
}

kv_result tde_journal_append(tde_journal *j, uint8_t *recs, size_t n, const uint64_t *page_nos)
{
    KV_ENSURE(n >= 1, KV_ERR_INTERNAL, "empty journal batch");
    kv_result r = KV_SUCCESS;
    pthread_mutex_lock(&j->mu);
    if (j->records + n > j->capacity) {
        r = kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "the journal is full");
        goto out;
    }
    r = j_index_reserve(j, n);
    if (kv_failed(r)) goto out;
    for (size_t i = 0; i < n; i++) {
        uint8_t *h = recs + i * TDE_JREC;
        memset(h, 0, TDE_JREC_HEADER);
        memcpy(h, "HVTJ", 4);
        h[4] = i + 1 == n ? JFLAG_COMMIT : 0;
        j_put_be(h + 8, j->generation);
        j_put_be(h + 16, j->records + i);
        j_put_be(h + 24, page_nos[i]);
    }
    off_t at = j_offset(j->records);
    r = tde_pwrite_all(j->fd, recs, n * TDE_JREC, at, "the journal");
    if (kv_failed(r)) {
        /* Leave no partial batch behind for the next append to follow. */
        if (ftruncate(j->fd, at) != 0) KV_LOG_ERROR("cannot cut a failed journal write");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        j_index_put(j, page_nos[i], (uint32_t)(j->records + i));
    j->records += n;
out:
    pthread_mutex_unlock(&j->mu);
    return r;
}

off_t tde_journal_find(tde_journal *j, uint64_t page_no)
{
    off_t off = -1;
    pthread_mutex_lock(&j->mu);
    if (j->used > 0) {
        size_t i = j_slot(j, page_no);
        while (j->keys[i] != 0) {
            if (j->keys[i] == page_no + 1) {
                off = j_offset(j->vals[i]) + (off_t)TDE_JREC_HEADER;
                break;
            }
            i = (i + 1) & (j->cap - 1);
        }
    }
    pthread_mutex_unlock(&j->mu);
    return off;
}

size_t tde_journal_count(tde_journal *j)
{
    pthread_mutex_lock(&j->mu);
    size_t n = (size_t)j->records;
    pthread_mutex_unlock(&j->mu);
    return n;
}

bool tde_journal_full(tde_journal *j, size_t more)
{
    pthread_mutex_lock(&j->mu);
    bool full = j->records + more > j->capacity;
    pthread_mutex_unlock(&j->mu);
    return full;
}

kv_result tde_journal_sync(tde_journal *j)
{
    KV_ENSURE(fdatasync(j->fd) == 0, KV_ERR_UNAVAILABLE, "cannot sync the journal: %s",
              strerror(errno));
    return KV_SUCCESS;
}

typedef struct {
    uint64_t page_no;
    uint32_t record;
} j_entry;

static int j_entry_cmp(const void *a, const void *b)
{
    const j_entry *x = a, *y = b;
    return x->page_no < y->page_no ? -1 : x->page_no > y->page_no;
}

kv_result tde_journal_each(tde_journal *j, kv_result (*fn)(void *arg, uint64_t page_no, off_t off),
                           void *arg)
{
    pthread_mutex_lock(&j->mu);
    j_entry *e = malloc((j->used ? j->used : 1) * sizeof(*e));
    size_t n = 0;
    for (size_t i = 0; e != NULL && i < j->cap; i++)
        if (j->keys[i] != 0) e[n++] = (j_entry){j->keys[i] - 1, j->vals[i]};
    pthread_mutex_unlock(&j->mu);
    KV_ENSURE(e != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    /* In page order: the page file is then written front to back. */
    qsort(e, n, sizeof(*e), j_entry_cmp);
    kv_result r = KV_SUCCESS;
    for (size_t i = 0; i < n && kv_ok(r); i++)
        r = fn(arg, e[i].page_no, j_offset(e[i].record) + (off_t)TDE_JREC_HEADER);
    free(e);
    return r;
}

void tde_journal_close(tde_journal *j)
{
    if (j->keys == NULL && j->fd < 0) return;
    if (j->fd >= 0) close(j->fd);
    pthread_mutex_destroy(&j->mu);
    free(j->keys);
    free(j->vals);
    j->keys = NULL;
    j->vals = NULL;
    j->fd = -1;
}
