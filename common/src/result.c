/*
 * result.c: the thread-local error record behind kv_result.
 * Must never format a secret: callers pass only names, sizes and codes.
 */
#include "kv_result.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local kv_error_record kv_err;

kv_result kv_error_set(kv_code code, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    kv_err.code = code;
    kv_err.file = file;
    kv_err.line = line;
    kv_err.detail[0] = '\0';
    va_start(ap, fmt);
    vsnprintf(kv_err.msg, sizeof(kv_err.msg), fmt, ap);
    va_end(ap);
    return KV_FAILURE;
}

void kv_error_detail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kv_err.detail, sizeof(kv_err.detail), fmt, ap);
    va_end(ap);
}

void kv_error_context(const char *fmt, ...)
{
    char joined[KV_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(joined, sizeof(joined), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t used = (size_t)n < sizeof(joined) ? (size_t)n : sizeof(joined) - 1;
    size_t left = sizeof(joined) - used;
    if (left > 2) {
        memcpy(joined + used, ": ", 2);
        used += 2;
        left -= 2;
        size_t msg_len = strnlen(kv_err.msg, sizeof(kv_err.msg));
        size_t take = msg_len < left - 1 ? msg_len : left - 1;
        memcpy(joined + used, kv_err.msg, take);
        used += take;
    }
    joined[used] = '\0';
    memcpy(kv_err.msg, joined, used + 1);
}

void kv_error_clear(void) { memset(&kv_err, 0, sizeof(kv_err)); }
kv_code kv_error_code(void) { return kv_err.code; }
const char *kv_error_msg(void) { return kv_err.msg; }
const char *kv_error_detail_str(void) { return kv_err.detail; }
const char *kv_error_file(void) { return kv_err.file ? kv_err.file : "?"; }
int kv_error_line(void) { return kv_err.line; }
void kv_error_save(kv_error_record *out) { *out = kv_err; }
void kv_error_restore(const kv_error_record *in) { kv_err = *in; }

const char *kv_code_name(kv_code code)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((unsigned)code >= KV_ARRAY_LEN(names)) return "UNKNOWN";
    return names[code];
}
