/*
 * log.c: one-line, escaped, timestamped log records written with one write(2)
 * so lines from different threads never interleave.
 */
#include "kv_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static kv_log_level kv_log_min = KV_LOG_INFO;
static int kv_log_fd = 2;
static const char *kv_log_ident = "hsmvault";

void kv_log_set_level(kv_log_level level) { kv_log_min = level; }
void kv_log_set_fd(int fd) { kv_log_fd = fd; }
void kv_log_set_ident(const char *ident) { kv_log_ident = ident; }

void kv_log_escape(const char *src, char *dst, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) return;
    for (const unsigned char *p = (const unsigned char *)src; *p != '\0'; p++) {
        if (*p >= 0x20 && *p < 0x7f) {
            if (o + 1 >= cap) break;
            dst[o++] = (char)*p;
        } else {
            if (o + 4 >= cap) break;
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = digits[*p >> 4];
            dst[o++] = digits[*p & 15];
        }
    }
    dst[o] = '\0';
}

void kv_log(kv_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < kv_log_min) return;
    char raw[1024];
    char esc[2048];
    char line[2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    kv_log_escape(raw, esc, sizeof(esc));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, kv_log_ident, names[level], esc);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    ssize_t w = write(kv_log_fd, line, len);
    (void)w;
}

void kv_log_error_record(kv_log_level level, const char *what)
{
    const char *detail = kv_error_detail_str();
    kv_log(level, "%s: %s: %s%s%s (%s:%d)", what, kv_code_name(kv_error_code()), kv_error_msg(),
           detail[0] ? "; " : "", detail, kv_error_file(), kv_error_line());
}
