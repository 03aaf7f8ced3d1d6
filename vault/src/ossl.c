/* ossl.c: OpenSSL helpers shared by pfx.c and devca.c (see ossl.h). */
#include "ossl.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

kv_result ossl_fail(kv_code code, const char *file, int line, const char *msg)
{
    unsigned long e = ERR_peek_last_error();
    kv_error_set(code, file, line, "%s", msg);
    if (e != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        kv_error_detail("openssl: %s", buf);
    }
    ERR_clear_error();
    return KV_FAILURE;
}

kv_result ossl_add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = e != NULL && X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    if (!ok) return OSSL_FAIL(KV_ERR_INTERNAL, "cannot add a certificate extension");
    return KV_SUCCESS;
}

kv_result ossl_random_serial(X509 *x)
{
    uint8_t b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return OSSL_FAIL(KV_ERR_INTERNAL, "no random bytes for a serial");
    b[0] = (uint8_t)((b[0] & 0x7f) | 0x01);
    BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
    int ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    if (!ok) return OSSL_FAIL(KV_ERR_INTERNAL, "cannot set a certificate serial");
    return KV_SUCCESS;
}
