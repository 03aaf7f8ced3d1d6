/*
 * kv_log.h: logging for vaultd and the tools.
 *
 * The log cannot print secrets by construction as far as C allows: it takes
 * only a format and scalar/string arguments, never a kv_secret (whose bytes
 * are not strings), and it escapes every non-printable byte, so binary key
 * material can never reach the log verbatim.  Callers log ids, names, sizes,
 * codes and fingerprints; never passwords, PINs or key bytes.
 */
#ifndef KV_LOG_H
#define KV_LOG_H

#include "kv_result.h"

typedef enum { KV_LOG_DEBUG = 0, KV_LOG_INFO, KV_LOG_WARN, KV_LOG_ERROR } kv_log_level;

void kv_log_set_level(kv_log_level level);
/* Sends lines to fd (default 2, stderr). */
void kv_log_set_fd(int fd);
void kv_log_set_ident(const char *ident);
void kv_log(kv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs the current thread's error record (message, detail, source line). */
void kv_log_error_record(kv_log_level level, const char *what);

#define KV_LOG_DEBUG(...) kv_log(KV_LOG_DEBUG, __VA_ARGS__)
#define KV_LOG_INFO(...) kv_log(KV_LOG_INFO, __VA_ARGS__)
#define KV_LOG_WARN(...) kv_log(KV_LOG_WARN, __VA_ARGS__)
#define KV_LOG_ERROR(...) kv_log(KV_LOG_ERROR, __VA_ARGS__)

/* Copies src to dst escaping bytes outside printable ASCII as \xNN; always
 * NUL-terminates.  Exposed for tests. */
void kv_log_escape(const char *src, char *dst, size_t cap);

#endif
