/*
 * nonce.c: the per-DEK write counter whose reservations are durable before
 * use, so an AES-GCM nonce (epoch || counter) never repeats for a DEK,
 * across crashes and restarts too (node.h, docs/tdenode.md "Nonces").
 *
 * The file holds two 48-byte slots, at 0 and at 4096 (separate sectors):
 *   "HVTN" | format 1 | 0 0 0 | seq u64 | dek_version u32 | epoch u32 |
 *   reserved u64 | first 16 bytes of SHA-256 of the 32 bytes before
 * A new reservation goes to the slot not written last, then fdatasync; a torn
 * slot write leaves the other slot, whose reservation was never exceeded.
 * Loading resumes at the newest valid slot's reservation: every value below
 * it may have been used, none above it was.  If the other slot is damaged
 * (not merely never written) it may have been the newer one: loading then
 * skips what one more reservation could have covered.
 *
 * Must never hand out a value that is not below a durable reservation, nor
 * one at or past the DEK's limit.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "kv_log.h"
#include "node.h"

#define NONCE_SLOT_B 4096
#define NONCE_BLOCK 4096u
/* The most values one tde_nonce_take hands out (a batch, a restore chunk). */
#define NONCE_TAKE_MAX 256u

static void nonce_put_be(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static uint64_t nonce_get_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static bool nonce_digest(const uint8_t *p, uint8_t out[32])
{
    unsigned int len = 0;
    return EVP_Digest(p, 32, out, &len, EVP_sha256(), NULL) == 1 && len == 32;
}

kv_result tde_nonce_slot_parse(const uint8_t *p, size_t len, tde_nonce_slot *out)
{
    KV_ENSURE(p != NULL && len >= TDE_NONCE_SLOT_LEN, KV_ERR_DATA_LOSS, "counter slot truncated");
    KV_ENSURE(memcmp(p, "HVTN", 4) == 0 && p[4] == 1 && p[5] == 0 && p[6] == 0 && p[7] == 0,
              KV_ERR_DATA_LOSS, "not a counter slot");
    uint8_t d[32];
    KV_ENSURE(nonce_digest(p, d), KV_ERR_INTERNAL, "SHA-256 failed");
    KV_ENSURE(memcmp(d, p + 32, 16) == 0, KV_ERR_DATA_LOSS, "counter slot checksum mismatch");
    tde_nonce_slot s = {.seq = nonce_get_be(p + 8, 8),
                        .dek_version = (uint32_t)nonce_get_be(p + 16, 4),
                        .epoch = (uint32_t)nonce_get_be(p + 20, 4),
                        .reserved = nonce_get_be(p + 24, 8)};
    KV_ENSURE(s.seq >= 1 && s.dek_version >= 1, KV_ERR_DATA_LOSS, "counter slot out of range");
    *out = s;
    return KV_SUCCESS;
}

static kv_result nonce_write_slot(tde_nonce *n, uint64_t seq, uint64_t reserved)
{
    uint8_t p[TDE_NONCE_SLOT_LEN], d[32];
    memcpy(p, "HVTN", 4);
    p[4] = 1;
    p[5] = p[6] = p[7] = 0;
    nonce_put_be(p + 8, seq, 8);
    nonce_put_be(p + 16, n->dek_version, 4);
    nonce_put_be(p + 20, n->epoch, 4);
    nonce_put_be(p + 24, reserved, 8);
    KV_ENSURE(nonce_digest(p, d), KV_ERR_INTERNAL, "SHA-256 failed");
    memcpy(p + 32, d, 16);
    KV_GUARD(tde_pwrite_all(n->fd, p, sizeof(p), (seq % 2) ? 0 : NONCE_SLOT_B,
                            "the write counter file"));
    KV_ENSURE(fdatasync(n->fd) == 0, KV_ERR_UNAVAILABLE, "cannot sync the write counter file: %s",
              strerror(errno));
    return KV_SUCCESS;
}

static void nonce_init(tde_nonce *n, uint64_t limit)
{
    memset(n, 0, sizeof(*n));
    n->fd = -1;
    pthread_mutex_init(&n->mu, NULL);
    n->limit = limit;
    n->block = NONCE_BLOCK;
    n->live = true;
}

kv_result tde_nonce_create(tde_nonce *n, const char *path, uint32_t dek_version, uint64_t start,
                           uint64_t limit)
{
    nonce_init(n, limit);
    n->dek_version = dek_version;
    if (getrandom(&n->epoch, sizeof(n->epoch), 0) != (ssize_t)sizeof(n->epoch)) {
        tde_nonce_close(n);
        KV_BAIL(KV_ERR_UNAVAILABLE, "the kernel random source failed");
    }
    n->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (n->fd < 0) {
        int e = errno;
        tde_nonce_close(n);
        KV_BAIL(KV_ERR_UNAVAILABLE, "cannot create %s: %s", path, strerror(e));
    }
    n->next = n->reserved = start;
    n->seq = 1;
    kv_result r = nonce_write_slot(n, 1, start);
    if (kv_ok(r)) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        r = tde_fsync_dir(dirname(dir));
    }
    if (kv_failed(r)) {
        tde_nonce_close(n);
        unlink(path);
    }
    return r;
}

kv_result tde_nonce_load(tde_nonce *n, const char *path, uint64_t limit)
{
    nonce_init(n, limit);
    n->fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (n->fd < 0) {
        int e = errno;
        tde_nonce_close(n);
        KV_BAIL(e == ENOENT ? KV_ERR_NOT_FOUND : KV_ERR_UNAVAILABLE, "cannot open %s: %s", path,
                strerror(e));
    }
    tde_nonce_slot best = {0}, s;
    bool found = false, damaged = false;
    for (int i = 0; i < 2; i++) {
        uint8_t p[TDE_NONCE_SLOT_LEN];
        size_t got = 0;
        kv_result r = tde_pread_upto(n->fd, p, sizeof(p), i ? NONCE_SLOT_B : 0, &got, path);
        if (kv_failed(r)) {
            tde_nonce_close(n);
            return r;
        }
        if (kv_ok(tde_nonce_slot_parse(p, got, &s))) {
            if (!found || s.seq > best.seq) best = s;
            found = true;
            continue;
        }
        /* Never written (a new file has one slot) or damaged. */
        for (size_t j = 0; j < got; j++)
            damaged |= p[j] != 0;
    }
    kv_error_clear();
    if (!found) {
        tde_nonce_close(n);
        KV_BAIL(KV_ERR_DATA_LOSS, "%s holds no valid write-counter reservation", path);
    }
    /* A damaged slot may have been the newer one, with values of it used:
     * skip past the most one reservation can add. */
    if (damaged) {
        uint64_t skip = NONCE_BLOCK + NONCE_TAKE_MAX;
        uint64_t room = limit > best.reserved ? limit - best.reserved : 0;
        best.reserved += room < skip ? room : skip;
        best.seq++;
    }
    n->dek_version = best.dek_version;
    n->epoch = best.epoch;
    n->seq = best.seq;
    n->next = n->reserved = best.reserved;
    if (damaged) {
        /* Make the skip durable before anything is handed out. */
        kv_result r = nonce_write_slot(n, n->seq, n->reserved);
        if (kv_failed(r)) {
            tde_nonce_close(n);
            return r;
        }
    }
    return KV_SUCCESS;
}

kv_result tde_nonce_take(tde_nonce *n, uint32_t count, uint32_t *epoch, uint64_t *first)
{
    KV_ENSURE(count >= 1 && count <= NONCE_TAKE_MAX, KV_ERR_INTERNAL,
              "taking %u counter values at once", count);
    kv_result r = KV_SUCCESS;
    pthread_mutex_lock(&n->mu);
    if (n->next > n->limit || count > n->limit - n->next) {
        r = kv_error_set(
            KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__,
            "the DEK has sealed %llu pages, the AES-GCM limit of this node is %llu: "
            "writes are refused until the database is re-keyed (restore a backup of it "
            "into a new database, see docs/tdenode.md)",
            (unsigned long long)n->next, (unsigned long long)n->limit);
    } else {
        if (n->next + count > n->reserved) {
            uint64_t want = n->next + count;
            uint64_t upto = n->limit - want > n->block ? want + n->block : n->limit;
            r = nonce_write_slot(n, n->seq + 1, upto);
            if (kv_ok(r)) {
                n->seq++;
                n->reserved = upto;
                if (upto >= n->limit / 10 * 9)
                    KV_LOG_WARN("a DEK has sealed %llu of its %llu pages (the AES-GCM limit): "
                                "re-key its database before writes are refused (docs/tdenode.md)",
                                (unsigned long long)n->next, (unsigned long long)n->limit);
            }
        }
        if (kv_ok(r)) {
            *first = n->next;
            *epoch = n->epoch;
            n->next += count;
        }
    }
    pthread_mutex_unlock(&n->mu);
    return r;
}

uint64_t tde_nonce_used(tde_nonce *n)
{
    pthread_mutex_lock(&n->mu);
    uint64_t v = n->next;
    pthread_mutex_unlock(&n->mu);
    return v;
}

void tde_nonce_close(tde_nonce *n)
{
    if (!n->live) return;
    if (n->fd >= 0) close(n->fd);
    n->fd = -1;
    pthread_mutex_destroy(&n->mu);
    n->live = false;
}
