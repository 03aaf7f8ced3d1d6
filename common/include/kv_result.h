/*
 * kv_result.h: the checked result type every fallible function returns, and
 * the thread-local error record that carries the detail.
 *
 * A function that can fail returns KV_RESULT (warn_unused_result), records
 * what went wrong with KV_BAIL/KV_ENSURE (code, actionable message, file and
 * line, optional low-level detail such as a CK_RV or an LMDB rc) and its
 * caller propagates with KV_GUARD.  Libraries never exit; main() and the RPC
 * adapter turn the record into an exit code or a gRPC status.
 *
 * Never put a secret (password, PIN, key byte) into a message or detail.
 */
#ifndef KV_RESULT_H
#define KV_RESULT_H

#include <stdbool.h>
#include <stddef.h>

/* Error codes mirror the gRPC status codes we answer with, so the adapter
 * maps them one to one (values are the gRPC numbers). */
typedef enum {
    KV_OK = 0,
    KV_ERR_CANCELLED = 1,
    KV_ERR_UNKNOWN = 2,
    KV_ERR_INVALID_ARGUMENT = 3,
    KV_ERR_DEADLINE_EXCEEDED = 4,
    KV_ERR_NOT_FOUND = 5,
    KV_ERR_ALREADY_EXISTS = 6,
    KV_ERR_PERMISSION_DENIED = 7,
    KV_ERR_RESOURCE_EXHAUSTED = 8,
    KV_ERR_FAILED_PRECONDITION = 9,
    KV_ERR_ABORTED = 10,
    KV_ERR_OUT_OF_RANGE = 11,
    KV_ERR_UNIMPLEMENTED = 12,
    KV_ERR_INTERNAL = 13,
    KV_ERR_UNAVAILABLE = 14,
    KV_ERR_DATA_LOSS = 15,
    KV_ERR_UNAUTHENTICATED = 16,
} kv_code;

typedef struct {
    int failed_; /* 0 on success; read only through kv_ok()/kv_failed() */
} kv_result;

#define KV_RESULT __attribute__((warn_unused_result)) kv_result
#define KV_SUCCESS ((kv_result){0})
#define KV_FAILURE ((kv_result){1})

static inline bool kv_ok(kv_result r) { return r.failed_ == 0; }
static inline bool kv_failed(kv_result r) { return r.failed_ != 0; }

/* Message and detail are truncated to these sizes (including NUL). */
#define KV_ERROR_MSG_MAX 512
#define KV_ERROR_DETAIL_MAX 256

/* Records an error for this thread; returns KV_FAILURE for tail calls. */
kv_result kv_error_set(kv_code code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Adds low-level detail (CK_RV, errno, LMDB rc, OpenSSL queue) for the log only:
 * it is never sent to a client. */
void kv_error_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefixes the current message with context ("loading PFX: ..."). */
void kv_error_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kv_error_clear(void);

kv_code kv_error_code(void);
const char *kv_error_msg(void);
const char *kv_error_detail_str(void);
const char *kv_error_file(void);
int kv_error_line(void);
const char *kv_code_name(kv_code code);

/* Saves and restores the record across cleanup code that may itself fail. */
typedef struct {
    kv_code code;
    int line;
    const char *file;
    char msg[KV_ERROR_MSG_MAX];
    char detail[KV_ERROR_DETAIL_MAX];
} kv_error_record;
void kv_error_save(kv_error_record *out);
void kv_error_restore(const kv_error_record *in);

#define KV_BAIL(code, ...) return kv_error_set((code), __FILE__, __LINE__, __VA_ARGS__)

#define KV_ENSURE(cond, code, ...)                                                                 \
    do {                                                                                           \
        if (!(cond)) KV_BAIL((code), __VA_ARGS__);                                                 \
    } while (0)

/* Propagates a failure; the callee already filled the error record. */
#define KV_GUARD(expr)                                                                             \
    do {                                                                                           \
        if (kv_failed(expr)) return KV_FAILURE;                                                    \
    } while (0)

/* For single-exit functions: on failure set r = KV_FAILURE and jump to label. */
#define KV_GUARD_GOTO(expr, r, label)                                                              \
    do {                                                                                           \
        if (kv_failed(expr)) {                                                                     \
            (r) = KV_FAILURE;                                                                      \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#define KV_BAIL_GOTO(r, label, code, ...)                                                          \
    do {                                                                                           \
        (r) = kv_error_set((code), __FILE__, __LINE__, __VA_ARGS__);                               \
        goto label;                                                                                \
    } while (0)

#define KV_ENSURE_GOTO(cond, r, label, code, ...)                                                  \
    do {                                                                                           \
        if (!(cond)) KV_BAIL_GOTO(r, label, code, __VA_ARGS__);                                    \
    } while (0)

/* Runs fn(&var) when var leaves scope (GCC/Clang cleanup attribute). */
#define KV_DEFER(fn) __attribute__((cleanup(fn)))

#define KV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
