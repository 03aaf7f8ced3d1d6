/*
 * kv_config.h: the `key = value` configuration format of vaultd and vaultctl
 * profiles.  Lines: blank, '# comment', or 'key = value' (whitespace around
 * both trimmed).  Secrets never go in these files: they name PIN and
 * password files instead.
 */
#ifndef KV_CONFIG_H
#define KV_CONFIG_H

#include <stdint.h>

#include "kv_result.h"

/* Called per setting; a failure stops parsing and gets "file:line: " prefixed. */
typedef kv_result (*kv_config_fn)(const char *key, const char *value, void *ctx);

KV_RESULT kv_config_parse(const char *path, kv_config_fn fn, void *ctx);
/* Copies value into out (cap bytes) or fails naming the key. */
KV_RESULT kv_config_str(const char *key, const char *value, char *out, size_t cap);
/* Parses an unsigned integer in [min, max] or fails naming the key. */
KV_RESULT kv_config_uint(const char *key, const char *value, unsigned long min, unsigned long max,
                         unsigned long *out);

/* Parses a duration "<n>s|m|h|d" (a bare number is seconds) in [min, max]
 * seconds, or fails naming the key. */
KV_RESULT kv_config_duration(const char *key, const char *value, int64_t min, int64_t max, int64_t *out);

#endif
