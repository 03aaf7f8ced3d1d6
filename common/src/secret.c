/*
 * secret.c: locked, dump-excluded, never-reallocated buffers for secrets.
 * Must never copy secret bytes anywhere but into another kv_secret or the
 * caller's own buffer, and must wipe on every path.
 */
#define _GNU_SOURCE
#include "kv_secret.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void kv_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0) explicit_bzero(p, n);
}

bool kv_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a;
    const volatile uint8_t *y = b;
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (uint8_t)(x[i] ^ y[i]);
    return diff == 0;
}

/* One-page mappings are the common case (DEKs, passwords, PINs) and some
 * paths take one per request.  mmap + mlock + munmap each time costs syscalls
 * and, in a threaded process, a TLB shootdown on every munmap; so freed
 * one-page mappings are wiped and kept (still locked, still excluded from
 * dumps) for reuse, up to a small bound. */
#define SECRET_CACHE_MAX 64
static pthread_mutex_t secret_cache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    void *p;
    bool locked;
} secret_cache[SECRET_CACHE_MAX];
static size_t secret_cache_n;

static size_t page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (size_t)page : 4096;
}

static bool secret_cache_take(kv_secret *s)
{
    bool got = false;
    pthread_mutex_lock(&secret_cache_mu);
    if (secret_cache_n > 0) {
        secret_cache_n--;
        s->data = secret_cache[secret_cache_n].p;
        s->locked = secret_cache[secret_cache_n].locked;
        got = true;
    }
    pthread_mutex_unlock(&secret_cache_mu);
    return got;
}

static bool secret_cache_put(const kv_secret *s)
{
    bool kept = false;
    pthread_mutex_lock(&secret_cache_mu);
    if (secret_cache_n < SECRET_CACHE_MAX) {
        secret_cache[secret_cache_n].p = s->data;
        secret_cache[secret_cache_n].locked = s->locked;
        secret_cache_n++;
        kept = true;
    }
    pthread_mutex_unlock(&secret_cache_mu);
    return kept;
}

kv_result kv_secret_alloc(kv_secret *s, size_t cap)
{
    KV_ENSURE(s->data == NULL, KV_ERR_INTERNAL, "secret buffer allocated twice");
    KV_ENSURE(cap > 0 && cap <= KV_SECRET_MAX, KV_ERR_INVALID_ARGUMENT,
              "secret of %zu bytes is out of range (1..%u)", cap, KV_SECRET_MAX);
    size_t pg = page_size();
    size_t map_len = (cap + pg - 1) / pg * pg;
    if (map_len == pg && secret_cache_take(s)) {
        s->cap = cap;
        s->len = 0;
        s->map_len = map_len;
        return KV_SUCCESS;
    }
    void *p = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__,
                     "cannot allocate %zu bytes for a secret", cap);
        kv_error_detail("mmap: %s", strerror(errno));
        return KV_FAILURE;
    }
    /* Best effort: RLIMIT_MEMLOCK may be small for unprivileged users. */
    s->locked = mlock(p, map_len) == 0;
#ifdef MADV_DONTDUMP
    (void)madvise(p, map_len, MADV_DONTDUMP);
#endif
    s->data = p;
    s->cap = cap;
    s->len = 0;
    s->map_len = map_len;
    return KV_SUCCESS;
}

void kv_secret_free(kv_secret *s)
{
    if (s == NULL || s->data == NULL) return;
    kv_wipe(s->data, s->map_len);
    if (s->map_len == page_size() && secret_cache_put(s)) {
        memset(s, 0, sizeof(*s));
        return;
    }
    if (s->locked) munlock(s->data, s->map_len);
    munmap(s->data, s->map_len);
    memset(s, 0, sizeof(*s));
}

void kv_secret_freep(kv_secret *s)
{
    kv_secret_free(s);
}

void kv_secret_clear(kv_secret *s)
{
    if (s->data != NULL) kv_wipe(s->data, s->cap);
    s->len = 0;
}

kv_result kv_secret_set(kv_secret *s, const void *src, size_t n)
{
    KV_ENSURE(s->data != NULL, KV_ERR_INTERNAL, "secret buffer not allocated");
    KV_ENSURE(n <= s->cap, KV_ERR_INVALID_ARGUMENT,
              "secret of %zu bytes exceeds its %zu-byte buffer", n, s->cap);
    kv_secret_clear(s);
    if (n > 0) memcpy(s->data, src, n);
    s->len = n;
    return KV_SUCCESS;
}

kv_result kv_secret_from(kv_secret *s, const void *src, size_t n)
{
    KV_GUARD(kv_secret_alloc(s, n > 0 ? n : 1));
    return kv_secret_set(s, src, n);
}

static void kv_secret_trim_newline(kv_secret *s)
{
    if (s->len > 0 && s->data[s->len - 1] == '\n') {
        s->data[--s->len] = 0;
        if (s->len > 0 && s->data[s->len - 1] == '\r') s->data[--s->len] = 0;
    }
}

static kv_result kv_secret_read(kv_secret *s, int fd, size_t max, bool trim)
{
    KV_GUARD(kv_secret_alloc(s, max + 1));
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, s->data + got, s->cap - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            kv_secret_free(s);
            kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "cannot read secret: %s",
                         strerror(e));
            return KV_FAILURE;
        }
        if (n == 0) break;
        got += (size_t)n;
        if (got > max) {
            kv_secret_free(s);
            KV_BAIL(KV_ERR_INVALID_ARGUMENT, "secret input is longer than %zu bytes", max);
        }
    }
    s->len = got;
    if (trim) kv_secret_trim_newline(s);
    return KV_SUCCESS;
}

kv_result kv_secret_read_fd(kv_secret *s, int fd, size_t max)
{
    return kv_secret_read(s, fd, max, true);
}

static kv_result kv_secret_read_path(kv_secret *s, const char *path, size_t max, bool trim)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        KV_BAIL(errno == ENOENT ? KV_ERR_NOT_FOUND : KV_ERR_PERMISSION_DENIED,
                "cannot open secret file %s: %s", path, strerror(errno));
    }
    kv_result r = kv_secret_read(s, fd, max, trim);
    close(fd);
    if (kv_failed(r)) kv_error_context("secret file %s", path);
    return r;
}

kv_result kv_secret_read_file(kv_secret *s, const char *path, size_t max)
{
    return kv_secret_read_path(s, path, max, true);
}

kv_result kv_secret_read_file_exact(kv_secret *s, const char *path, size_t max)
{
    return kv_secret_read_path(s, path, max, false);
}
