/*
 * config.c: parser for `key = value` files; bounded line length, clear
 * errors with file and line.
 */
#include "kv_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_file.h"

#define KV_CONFIG_MAX (256u * 1024u)

static char *kv_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

kv_result kv_config_parse(const char *path, kv_config_fn fn, void *ctx)
{
    uint8_t *data = NULL;
    size_t len = 0;
    KV_GUARD(kv_file_read(path, KV_CONFIG_MAX, &data, &len));
    kv_result r = KV_SUCCESS;
    char *save = NULL;
    int line = 0;
    char *p = (char *)data;
    for (char *ln = p; ln != NULL && kv_ok(r); ln = save) {
        char *nl = strchr(ln, '\n');
        save = nl ? nl + 1 : NULL;
        if (nl) *nl = '\0';
        line++;
        char *s = kv_trim(ln);
        if (*s == '\0' || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                             "%s:%d: expected 'key = value'", path, line);
            break;
        }
        *eq = '\0';
        char *key = kv_trim(s);
        char *value = kv_trim(eq + 1);
        r = fn(key, value, ctx);
        if (kv_failed(r)) kv_error_context("%s:%d", path, line);
    }
    free(data);
    return r;
}

kv_result kv_config_str(const char *key, const char *value, char *out, size_t cap)
{
    KV_ENSURE(strlen(value) < cap, KV_ERR_INVALID_ARGUMENT, "%s is longer than %zu characters", key,
              cap - 1);
    snprintf(out, cap, "%s", value);
    return KV_SUCCESS;
}

kv_result kv_config_uint(const char *key, const char *value, unsigned long min, unsigned long max,
                         unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(value, &end, 10);
    KV_ENSURE(errno == 0 && end != value && *end == '\0' && value[0] != '-' && v >= min && v <= max,
              KV_ERR_INVALID_ARGUMENT, "%s must be a whole number from %lu to %lu (got '%s')", key,
              min, max, value);
    *out = v;
    return KV_SUCCESS;
}

kv_result kv_config_duration(const char *key, const char *value, int64_t min, int64_t max,
                             int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long n = strtoll(value, &end, 10);
    int64_t unit = 1;
    if (end != value && end != NULL && end[0] != '\0' && end[1] == '\0') {
        switch (end[0]) {
        case 's':
            unit = 1;
            end++;
            break;
        case 'm':
            unit = 60;
            end++;
            break;
        case 'h':
            unit = 3600;
            end++;
            break;
        case 'd':
            unit = 86400;
            end++;
            break;
        default:
            break;
        }
    }
    KV_ENSURE(
        errno == 0 && end != value && *end == '\0' && n >= 0 && n <= INT64_MAX / unit &&
            n * unit >= min && n * unit <= max,
        KV_ERR_INVALID_ARGUMENT,
        "%s must be a duration such as 90s, 30m, 24h or 28d, from %lld to %lld seconds (got '%s')",
        key, (long long)min, (long long)max, value);
    *out = n * unit;
    return KV_SUCCESS;
}
