/*
 * kv_ossl.h: the one place that turns OpenSSL's error queue into the detail
 * of the current error record (library kv_ossl: common plus libcrypto, for
 * the modules that use OpenSSL).  The detail goes to logs, never to clients.
 */
#ifndef KV_OSSL_H
#define KV_OSSL_H

/* Moves the newest OpenSSL error into kv_error_detail and clears the queue. */
void kv_ossl_detail(void);

#endif
