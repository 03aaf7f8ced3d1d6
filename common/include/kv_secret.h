/*
 * kv_secret.h: the one type that holds secret bytes (PINs, passwords, DEKs,
 * private-key material in transit).
 *
 * Storage is its own mmap'd pages: locked in RAM where the limit allows,
 * excluded from core dumps, never reallocated (capacity is fixed at
 * allocation), wiped on free and on every reset.  Compare with kv_ct_equal.
 * Never pass the bytes to a log or error function.
 */
#ifndef KV_SECRET_H
#define KV_SECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

typedef struct {
    uint8_t *data;  /* NULL until kv_secret_alloc */
    size_t len;     /* bytes in use */
    size_t cap;     /* fixed capacity */
    size_t map_len; /* bytes mapped (page multiple) */
    bool locked;    /* mlock succeeded */
} kv_secret;

#define KV_SECRET_INIT {0}
/* Upper bound for one secret: passwords, PINs and keys are far smaller. */
#define KV_SECRET_MAX (1u << 20)

KV_RESULT kv_secret_alloc(kv_secret *s, size_t cap);
/* Wipes, unlocks and unmaps; safe on a zeroed or already freed secret. */
void kv_secret_free(kv_secret *s);
/* For KV_DEFER. */
void kv_secret_freep(kv_secret *s);
/* Copies n bytes in (n <= cap), replacing the contents. */
KV_RESULT kv_secret_set(kv_secret *s, const void *src, size_t n);
/* Allocates cap=n and copies n bytes in. */
KV_RESULT kv_secret_from(kv_secret *s, const void *src, size_t n);
/* Reads a whole file (a PIN or password file) into s, dropping one trailing
 * newline (\n or \r\n).  Refuses files larger than max bytes. */
KV_RESULT kv_secret_read_file(kv_secret *s, const char *path, size_t max);
/* The same, byte for byte (nothing dropped): binary secrets such as key files. */
KV_RESULT kv_secret_read_file_exact(kv_secret *s, const char *path, size_t max);
/* Reads from an fd until EOF or max bytes (stdin), dropping one trailing newline. */
KV_RESULT kv_secret_read_fd(kv_secret *s, int fd, size_t max);
/* Wipes the contents, keeps the allocation. */
void kv_secret_clear(kv_secret *s);

/* Wipes memory in a way the compiler may not remove. */
void kv_wipe(void *p, size_t n);
/* Constant-time equality of two equal-length byte strings. */
bool kv_ct_equal(const void *a, const void *b, size_t n);

#endif
