/* ossl_detail.c: OpenSSL's error queue into the error record (kv_ossl.h). */
#include "kv_ossl.h"

#include <openssl/err.h>

#include "kv_result.h"

void kv_ossl_detail(void)
{
    unsigned long e = ERR_peek_last_error();
    if (e != 0) {
        char buf[160];
        ERR_error_string_n(e, buf, sizeof(buf));
        kv_error_detail("OpenSSL: %s", buf);
    }
    ERR_clear_error();
}
