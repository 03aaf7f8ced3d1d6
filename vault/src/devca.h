/*
 * devca.h: the private CA of `vaultd --dev` and of the tests: a CA key and
 * certificate, and leaf certificates for the server and for each principal.
 * Keys are written 0600 and never replaced.
 *
 * Files in dir: ca.pem, ca.key, <name>.pem, <name>.key.
 */
#ifndef DEVCA_H
#define DEVCA_H

#include <stdbool.h>

#include "kv_result.h"

/* Creates dir/ca.pem and dir/ca.key (EC P-256 or RSA, see devca.c). */
KV_RESULT devca_create(const char *dir, const char *ca_common_name);
/* Issues dir/<name>.pem + dir/<name>.key signed by the CA in dir.  A client
 * certificate carries san_uri (may be NULL: CN only) and clientAuth; a server
 * certificate carries DNS:localhost, IP:127.0.0.1, IP:::1 and serverAuth. */
KV_RESULT devca_issue(const char *dir, const char *name, const char *common_name,
                      const char *san_uri, bool server);

#endif
