/*
 * devca.c: the private CA of `vaultd --dev` and the tests (see devca.h).
 * EC P-256 keys, SHA-256 signatures; the CA lives 10 years, leaves 825 days.
 * Files are created with O_EXCL (never replaced); keys are 0600 and their PEM
 * buffers wiped.
 */
#include "devca.h"

#include <limits.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_file.h"
#include "ossl.h"
#include "kv_secret.h"

#define CA_DAYS (10L * 365)
#define LEAF_DAYS 825L

#define CA_FAIL(msg) OSSL_FAIL(KV_ERR_INTERNAL, "dev CA: " msg)

static kv_result check_name(const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;
    KV_ENSURE(n >= 1 && n <= 64, KV_ERR_INVALID_ARGUMENT,
              "a certificate file name must be 1 to 64 characters");
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        KV_ENSURE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_',
                  KV_ERR_INVALID_ARGUMENT,
                  "certificate file name '%s' may hold only a-z, 0-9, '-' and '_'", name);
    }
    return KV_SUCCESS;
}

/* Subject CN: 1..64 printable ASCII characters (X.520 upper bound). */
static kv_result check_common_name(const char *cn)
{
    size_t n = cn != NULL ? strnlen(cn, 65) : 0;
    KV_ENSURE(n >= 1 && n <= 64, KV_ERR_INVALID_ARGUMENT,
              "a certificate common name must be 1 to 64 characters");
    for (size_t i = 0; i < n; i++)
        KV_ENSURE(cn[i] >= 0x20 && cn[i] < 0x7f, KV_ERR_INVALID_ARGUMENT,
                  "a certificate common name must be printable ASCII");
    return KV_SUCCESS;
}

/* SAN URI: "scheme:rest", visible ASCII without ',' (the openssl.cnf list
 * separator that ossl_add_ext would otherwise split on). */
static kv_result check_san_uri(const char *uri)
{
    size_t n = strnlen(uri, 400);
    KV_ENSURE(n >= 3 && n < 400 && strchr(uri, ':') != NULL && uri[0] != ':',
              KV_ERR_INVALID_ARGUMENT, "a SAN URI must look like scheme:path (under 400 bytes)");
    for (size_t i = 0; i < n; i++)
        KV_ENSURE(uri[i] > 0x20 && uri[i] < 0x7f && uri[i] != ',', KV_ERR_INVALID_ARGUMENT,
                  "a SAN URI must be visible ASCII without spaces or commas");
    return KV_SUCCESS;
}

static kv_result path_of(char *out, size_t cap, const char *dir, const char *name, const char *ext)
{
    KV_ENSURE(snprintf(out, cap, "%s/%s.%s", dir, name, ext) < (int)cap, KV_ERR_INVALID_ARGUMENT,
              "path too long under %s", dir);
    return KV_SUCCESS;
}

/* Writes a PEM produced by fn into path (new file, mode). */
static kv_result write_pem(const char *path, unsigned mode, int (*fn)(BIO *, const void *),
                           const void *obj, bool secret)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL || !fn(b, obj)) {
        BIO_free(b);
        return CA_FAIL("cannot encode PEM");
    }
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    kv_result r = kv_file_write_new(path, data, (size_t)n, mode);
    if (secret && n > 0) kv_wipe(data, (size_t)n);
    BIO_free(b);
    return r;
}

static int pem_key(BIO *b, const void *k)
{
    return PEM_write_bio_PrivateKey(b, (EVP_PKEY *)(uintptr_t)k, NULL, NULL, 0, NULL, NULL);
}
static int pem_cert(BIO *b, const void *x)
{
    return PEM_write_bio_X509(b, (X509 *)(uintptr_t)x);
}

/* A certificate for key, subject CN=cn, issued by (issuer, issuer_key); a
 * NULL issuer makes it self-signed. */
static kv_result new_cert(EVP_PKEY *key, const char *cn, X509 *issuer, long days, X509 **out)
{
    X509 *x = X509_new();
    if (x == NULL) return CA_FAIL("out of memory");
    kv_result r = ossl_random_serial(x);
    if (kv_failed(r)) goto out;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name) ||
        X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), days * 86400) == NULL || !X509_set_pubkey(x, key)) {
        r = CA_FAIL("cannot build a certificate");
        goto out;
    }
    *out = x;
    x = NULL;
out:
    X509_free(x);
    return r;
}

static kv_result sign(X509 *x, EVP_PKEY *key)
{
    if (X509_sign(x, key, EVP_sha256()) <= 0) return CA_FAIL("cannot sign a certificate");
    return KV_SUCCESS;
}

kv_result devca_create(const char *dir, const char *ca_common_name)
{
    char key_path[PATH_MAX], cert_path[PATH_MAX];
    KV_GUARD(path_of(key_path, sizeof(key_path), dir, "ca", "key"));
    KV_GUARD(path_of(cert_path, sizeof(cert_path), dir, "ca", "pem"));
    KV_GUARD(check_common_name(ca_common_name));
    /* Checked up front so a half-existing CA never gets a new key. */
    KV_ENSURE(access(key_path, F_OK) != 0 && access(cert_path, F_OK) != 0, KV_ERR_ALREADY_EXISTS,
              "%s already holds a CA (ca.pem/ca.key); it is never replaced", dir);
    KV_GUARD(kv_file_mkdirs(dir, 0700));
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (key == NULL) return CA_FAIL("EC key generation failed");
    X509 *x = NULL;
    kv_result r = new_cert(key, ca_common_name, NULL, CA_DAYS, &x);
    if (kv_ok(r)) r = ossl_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    if (kv_ok(r)) r = ossl_add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    if (kv_ok(r)) r = ossl_add_ext(x, x, NID_subject_key_identifier, "hash");
    if (kv_ok(r)) r = sign(x, key);
    if (kv_ok(r)) r = write_pem(key_path, 0600, pem_key, key, true);
    if (kv_ok(r)) {
        r = write_pem(cert_path, 0644, pem_cert, x, false);
        if (kv_failed(r)) unlink(key_path); /* no key without its certificate */
    }
    X509_free(x);
    EVP_PKEY_free(key);
    return r;
}

static kv_result load_ca(const char *dir, X509 **cert, EVP_PKEY **key)
{
    char path[PATH_MAX];
    uint8_t *data = NULL;
    size_t len = 0;
    KV_GUARD(path_of(path, sizeof(path), dir, "ca", "pem"));
    KV_GUARD(kv_file_read(path, 64 * 1024, &data, &len));
    BIO *b = BIO_new_mem_buf(data, (int)len);
    *cert = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    free(data);
    if (*cert == NULL) return CA_FAIL("cannot read ca.pem");

    KV_GUARD(path_of(path, sizeof(path), dir, "ca", "key"));
    kv_secret pem = KV_SECRET_INIT;
    if (kv_failed(kv_secret_read_file(&pem, path, 64 * 1024))) {
        X509_free(*cert);
        return KV_FAILURE;
    }
    b = BIO_new_mem_buf(pem.data, (int)pem.len);
    *key = b != NULL ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    kv_secret_free(&pem);
    if (*key == NULL || X509_check_private_key(*cert, *key) != 1) {
        EVP_PKEY_free(*key);
        X509_free(*cert);
        return CA_FAIL("ca.key does not load or does not match ca.pem");
    }
    return KV_SUCCESS;
}

kv_result devca_issue(const char *dir, const char *name, const char *common_name,
                      const char *san_uri, bool server)
{
    KV_GUARD(check_name(name));
    char key_path[PATH_MAX], cert_path[PATH_MAX];
    KV_GUARD(path_of(key_path, sizeof(key_path), dir, name, "key"));
    KV_GUARD(path_of(cert_path, sizeof(cert_path), dir, name, "pem"));
    KV_ENSURE(access(key_path, F_OK) != 0 && access(cert_path, F_OK) != 0, KV_ERR_ALREADY_EXISTS,
              "%s already has a certificate for '%s'; it is never replaced", dir, name);
    KV_GUARD(check_common_name(common_name));
    if (san_uri != NULL) KV_GUARD(check_san_uri(san_uri));
    X509 *ca = NULL, *x = NULL;
    EVP_PKEY *ca_key = NULL;
    KV_GUARD(load_ca(dir, &ca, &ca_key));
    EVP_PKEY *key = EVP_EC_gen("P-256");
    kv_result r = key != NULL ? KV_SUCCESS : CA_FAIL("EC key generation failed");
    if (kv_ok(r)) r = new_cert(key, common_name, ca, LEAF_DAYS, &x);
    if (kv_ok(r)) r = ossl_add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE");
    if (kv_ok(r)) r = ossl_add_ext(x, ca, NID_key_usage, "critical,digitalSignature,keyAgreement");
    if (kv_ok(r)) r = ossl_add_ext(x, ca, NID_ext_key_usage, server ? "serverAuth" : "clientAuth");
    if (kv_ok(r)) r = ossl_add_ext(x, ca, NID_subject_key_identifier, "hash");
    if (kv_ok(r)) r = ossl_add_ext(x, ca, NID_authority_key_identifier, "keyid:always");
    if (kv_ok(r) && server)
        r = ossl_add_ext(x, ca, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
    if (kv_ok(r) && !server && san_uri != NULL) {
        char san[512];
        snprintf(san, sizeof(san), "URI:%s", san_uri);
        r = ossl_add_ext(x, ca, NID_subject_alt_name, san);
    }
    if (kv_ok(r)) r = sign(x, ca_key);
    if (kv_ok(r)) r = write_pem(key_path, 0600, pem_key, key, true);
    if (kv_ok(r)) {
        r = write_pem(cert_path, 0644, pem_cert, x, false);
        if (kv_failed(r)) unlink(key_path); /* no key without its certificate */
    }
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(ca_key);
    return r;
}
