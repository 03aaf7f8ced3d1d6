/*
 * kv_file.h: reading and writing whole (small) files safely.
 */
#ifndef KV_FILE_H
#define KV_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "kv_result.h"

/* Reads a whole file of at most max bytes into a malloc'd buffer (NUL added
 * after the data, not counted in *len).  Larger files are refused. */
KV_RESULT kv_file_read(const char *path, size_t max, uint8_t **data, size_t *len);
/* Creates path with the given mode, refusing to replace an existing file
 * (O_EXCL), writes data and fsyncs it.  On failure the file is removed. */
KV_RESULT kv_file_write_new(const char *path, const void *data, size_t len, unsigned mode);
/* Writes path atomically and durably (temp file + fsync + rename + fsync
 * dir; a failure of any step is an error). */
KV_RESULT kv_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* mkdir -p with mode for every created component. */
KV_RESULT kv_file_mkdirs(const char *path, unsigned mode);

#endif
