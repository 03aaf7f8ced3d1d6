/*
 * test_pfx.c: PKCS#12 parsing and generation, fingerprints, software OAEP
 * and the dev CA, checked against files and verdicts of the openssl CLI.
 */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "devca.h"
#include "kv_file.h"
#include "kv_test.h"
#include "pfx.h"

#define PASSWORD "pfx-test-password"

static char dir[256];

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static uint8_t *load(const char *name, size_t *len)
{
    char p[512];
    uint8_t *data = NULL;
    path_of(p, sizeof(p), name);
    if (kv_failed(kv_file_read(p, 1u << 20, &data, len))) {
        fprintf(stderr, "cannot read %s: %s\n", p, kv_error_msg());
        return NULL;
    }
    return data;
}

static kv_secret pw(const char *s)
{
    kv_secret k = KV_SECRET_INIT;
    if (kv_failed(kv_secret_from(&k, s, strlen(s)))) abort();
    return k;
}

/* Opens a fixture; on success compares the SPKI with the one openssl wrote. */
static kv_result open_file(const char *name, const char *password, const char *spki_file)
{
    size_t len = 0;
    uint8_t *data = load(name, &len);
    if (data == NULL)
        return kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "fixture %s missing", name);
    kv_secret p = pw(password), key = KV_SECRET_INIT;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    kv_result r = pfx_open(data, len, &p, &key, &spki, &spki_len);
    if (kv_ok(r)) {
        CHECK(key.len > 1000 && key.data[0] == 0x30); /* PKCS#8 DER SEQUENCE */
        if (spki_file != NULL) {
            size_t want_len = 0;
            uint8_t *want = load(spki_file, &want_len);
            CHECK(want != NULL && want_len == spki_len && memcmp(want, spki, spki_len) == 0);
            free(want);
        }
    }
    free(spki);
    kv_secret_free(&key);
    kv_secret_free(&p);
    free(data);
    return r;
}

static void make_fixtures(void)
{
    CHECK(
        kv_test_sh(
            "cd %s && printf '%%s' '" PASSWORD "' > pw && "
            "for b in 1024 2048 4096; do openssl genpkey -algorithm RSA -pkeyopt "
            "rsa_keygen_bits:$b "
            "-out rsa$b.pem 2>/dev/null || exit 1; done && "
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.pem "
            "2>/dev/null && "
            "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem "
            "2>/dev/null && "
            "for k in rsa1024 rsa2048 rsa4096 ec other; do "
            "openssl req -x509 -new -key $k.pem -subj /CN=$k -days 30 -out $k.crt || exit 1; done "
            "&& "
            "openssl pkey -in rsa2048.pem -pubout -outform DER -out rsa2048.spki && "
            "openssl pkcs12 -export -inkey rsa2048.pem -in rsa2048.crt -passout file:pw -out "
            "modern.pfx && "
            "openssl pkcs12 -export -legacy -inkey rsa2048.pem -in rsa2048.crt -passout file:pw "
            "-out legacy.pfx && "
            "openssl pkcs12 -export -nocerts -inkey rsa2048.pem -passout file:pw -out nocert.pfx "
            "2>/dev/null && "
            "openssl pkcs12 -export -inkey rsa1024.pem -in rsa1024.crt -passout file:pw -out "
            "rsa1024.pfx && "
            "openssl pkcs12 -export -inkey rsa4096.pem -in rsa4096.crt -passout file:pw -out "
            "rsa4096.pfx && "
            "openssl pkcs12 -export -inkey ec.pem -in ec.crt -passout file:pw -out ec.pfx && "
            "openssl pkcs12 -export -nokeys -in rsa2048.crt -passout file:pw -out certonly.pfx && "
            "openssl pkcs12 -export -inkey rsa2048.pem -in rsa2048.crt -passout pass: -out "
            "emptypw.pfx && "
            "openssl pkcs12 -export -inkey rsa2048.pem -in rsa2048.crt -nomac -passout file:pw "
            "-out nomac.pfx && "
            "openssl pkcs8 -topk8 -nocrypt -in rsa2048.pem -outform DER -out rsa2048.p8",
            dir) == 0);
}

static EVP_PKEY *read_key(const char *name)
{
    char p[512];
    path_of(p, sizeof(p), name);
    FILE *f = fopen(p, "r");
    EVP_PKEY *k = f != NULL ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f != NULL) fclose(f);
    return k;
}

static X509 *read_cert(const char *name)
{
    char p[512];
    path_of(p, sizeof(p), name);
    FILE *f = fopen(p, "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL) fclose(f);
    return x;
}

static int write_p12(const char *name, PKCS12 *p12)
{
    uint8_t *der = NULL;
    int n = p12 != NULL ? i2d_PKCS12(p12, &der) : -1;
    char p[512];
    path_of(p, sizeof(p), name);
    int ok = n > 0 && kv_ok(kv_file_write_new(p, der, (size_t)n, 0600));
    OPENSSL_free(der);
    PKCS12_free(p12);
    return ok;
}

/* Files the openssl CLI refuses to make, built with the library. */
static void make_fixtures_c(void)
{
    EVP_PKEY *k = read_key("rsa2048.pem"), *k2 = read_key("other.pem");
    X509 *c = read_cert("rsa2048.crt"), *other = read_cert("other.crt");
    CHECK(k != NULL && k2 != NULL && c != NULL && other != NULL);
    if (k == NULL || k2 == NULL || c == NULL || other == NULL) return;

    /* The key with only someone else's certificate. */
    STACK_OF(X509) *ca = sk_X509_new_null();
    CHECK(ca != NULL && sk_X509_push(ca, other) > 0);
    CHECK(write_p12("mismatch.pfx", PKCS12_create(PASSWORD, NULL, k, NULL, ca, 0, 0, 0, 0, 0)));
    sk_X509_free(ca);

    /* Two private keys. */
    STACK_OF(PKCS12_SAFEBAG) *bags = NULL;
    STACK_OF(PKCS7) *safes = NULL;
    CHECK(PKCS12_add_key(&bags, k, 0, 2048, NID_pbe_WithSHA1And3_Key_TripleDES_CBC, PASSWORD) &&
          PKCS12_add_key(&bags, k2, 0, 2048, NID_pbe_WithSHA1And3_Key_TripleDES_CBC, PASSWORD) &&
          PKCS12_add_safe(&safes, bags, -1, 0, NULL));
    PKCS12 *two = PKCS12_add_safes(safes, 0);
    CHECK(two != NULL && PKCS12_set_mac(two, PASSWORD, -1, NULL, 0, 2048, NULL));
    CHECK(write_p12("twokeys.pfx", two));
    sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
    sk_PKCS7_pop_free(safes, PKCS7_free);

    /* A MAC asking for 50 million KDF iterations (the MAC value is stale:
     * the file must be refused before anything is computed). */
    PKCS12 *slow = PKCS12_create(PASSWORD, NULL, k, c, NULL, 0, 0, 0, 0, 0);
    const ASN1_INTEGER *iter = NULL;
    if (slow != NULL) PKCS12_get0_mac(NULL, NULL, NULL, &iter, slow);
    CHECK(iter != NULL && ASN1_INTEGER_set((ASN1_INTEGER *)(uintptr_t)iter, 50000000));
    CHECK(write_p12("slow.pfx", slow));
    EVP_PKEY_free(k);
    EVP_PKEY_free(k2);
    X509_free(c);
    X509_free(other);
    ERR_clear_error();
}

/* Without OpenSSL's legacy provider a legacy PFX gets a clear answer, and a
 * modern one still opens.  In a child: the provider is loaded once per
 * process, so this runs before the parent's first pfx_open. */
static void test_legacy_unavailable(void)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("OPENSSL_MODULES", "/nonexistent", 1);
        kv_result r = open_file("legacy.pfx", PASSWORD, NULL);
        int ok = kv_failed(r) && kv_error_code() == KV_ERR_FAILED_PRECONDITION &&
                 strstr(kv_error_msg(), "legacy provider is not available") != NULL;
        if (!ok) fprintf(stderr, "child: %s\n", kv_failed(r) ? kv_error_msg() : "opened");
        ok = ok && kv_ok(open_file("modern.pfx", PASSWORD, "rsa2048.spki"));
        _exit(ok && kv_test_failed == 0 ? 0 : 1);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_open_good(void)
{
    CHECK_OK(open_file("modern.pfx", PASSWORD, "rsa2048.spki"));
    CHECK_OK(open_file("legacy.pfx", PASSWORD, "rsa2048.spki"));
    CHECK_OK(open_file("nocert.pfx", PASSWORD, "rsa2048.spki"));
    CHECK_OK(open_file("emptypw.pfx", "", "rsa2048.spki"));

    /* The PKCS#8 out is byte for byte what `openssl pkcs8 -topk8` writes. */
    size_t len = 0, want_len = 0, spki_len = 0;
    uint8_t *data = load("legacy.pfx", &len), *want = load("rsa2048.p8", &want_len), *spki = NULL;
    kv_secret p = pw(PASSWORD), key = KV_SECRET_INIT;
    if (data != NULL && want != NULL) {
        CHECK_OK(pfx_open(data, len, &p, &key, &spki, &spki_len));
        CHECK(key.len == want_len && key.cap == want_len && kv_ct_equal(key.data, want, want_len));
    }
    free(spki);
    free(want);
    free(data);
    kv_secret_free(&key);
    kv_secret_free(&p);
}

static void test_open_bad(void)
{
    CHECK_ERR(open_file("modern.pfx", "wrong", NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "password is wrong") != NULL);
    CHECK(strstr(kv_error_msg(), "wrong") != NULL && strstr(kv_error_msg(), PASSWORD) == NULL);
    CHECK_ERR(open_file("legacy.pfx", "wrong", NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(open_file("nomac.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "no integrity MAC") != NULL);
    CHECK_ERR(open_file("emptypw.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(open_file("rsa1024.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "RSA-1024") != NULL &&
          strstr(kv_error_msg(), "only RSA-2048") != NULL);
    CHECK_ERR(open_file("rsa4096.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "RSA-4096") != NULL);
    CHECK_ERR(open_file("ec.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "EC (prime256v1)") != NULL);
    CHECK_ERR(open_file("certonly.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "no private key") != NULL);
    CHECK_ERR(open_file("mismatch.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "does not match its private key") != NULL);
    CHECK_ERR(open_file("twokeys.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "2 private keys") != NULL);
    CHECK_ERR(open_file("slow.pfx", PASSWORD, NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "iterations") != NULL);
    CHECK_ERR(open_file("emptypw.pfx", "wrong", NULL), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "password is wrong") != NULL);

    /* Garbage, empty, truncated at many lengths, oversized: all refused. */
    kv_secret p = pw(PASSWORD), key = KV_SECRET_INIT;
    uint8_t *spki = NULL;
    size_t spki_len = 0, len = 0;
    uint8_t *good = load("modern.pfx", &len);
    if (good == NULL) return;
    CHECK_ERR(pfx_open(good, 0, &p, &key, &spki, &spki_len), KV_ERR_INVALID_ARGUMENT);
    int refused = 0, tried = 0;
    for (size_t cut = 1; cut < len; cut += 97, tried++) {
        kv_error_clear();
        if (kv_failed(pfx_open(good, cut, &p, &key, &spki, &spki_len)) &&
            kv_error_code() == KV_ERR_INVALID_ARGUMENT)
            refused++;
    }
    CHECK(refused == tried);
    uint8_t junk[2048];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 7 + 3);
    CHECK_ERR(pfx_open(junk, sizeof(junk), &p, &key, &spki, &spki_len), KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "not a PKCS#12") != NULL);
    /* One flipped bit in the middle: the MAC catches it. */
    good[len / 2] ^= 0x10;
    CHECK_ERR(pfx_open(good, len, &p, &key, &spki, &spki_len), KV_ERR_INVALID_ARGUMENT);
    good[len / 2] ^= 0x10;
    /* Trailing bytes after the PFX. */
    uint8_t *longer = malloc(len + 1);
    if (longer != NULL) {
        memcpy(longer, good, len);
        longer[len] = 0;
        CHECK_ERR(pfx_open(longer, len + 1, &p, &key, &spki, &spki_len), KV_ERR_INVALID_ARGUMENT);
        CHECK(strstr(kv_error_msg(), "follow its end") != NULL);
        free(longer);
    }
    CHECK(key.data == NULL && spki == NULL); /* no output on any failure */
    uint8_t *big = calloc(1, PFX_MAX_BYTES + 1);
    memcpy(big, good, len);
    CHECK_ERR(pfx_open(big, PFX_MAX_BYTES + 1, &p, &key, &spki, &spki_len),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kv_error_msg(), "limit") != NULL);
    /* A password with a NUL byte cannot be a PKCS#12 password. */
    kv_secret nul = KV_SECRET_INIT;
    CHECK_OK(kv_secret_from(&nul, "a\0b", 3));
    CHECK_ERR(pfx_open(good, len, &nul, &key, &spki, &spki_len), KV_ERR_INVALID_ARGUMENT);
    CHECK(key.data == NULL && spki == NULL);
    kv_secret_free(&nul);
    free(big);
    free(good);
    kv_secret_free(&p);
}

static void test_generate(void)
{
    kv_secret p = pw(PASSWORD), key = KV_SECRET_INIT, key2 = KV_SECRET_INIT;
    uint8_t *pfx = NULL, *spki = NULL, *spki2 = NULL;
    size_t pfx_len = 0, spki_len = 0, spki2_len = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_OK(pfx_generate("contoso kek 2026", &p, &pfx, &pfx_len, &key, &spki, &spki_len));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "pfx_generate: %.0f ms\n",
            (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    if (pfx == NULL) return;
    CHECK(key.len == key.cap && key.data[0] == 0x30);
    unsigned bits = 0;
    CHECK_OK(spki_rsa_bits(spki, spki_len, &bits));
    CHECK(bits == 2048);
    /* Opens with our parser: same public key. */
    CHECK_OK(pfx_open(pfx, pfx_len, &p, &key2, &spki2, &spki2_len));
    CHECK(spki2_len == spki_len && spki2 != NULL && memcmp(spki, spki2, spki_len) == 0);
    CHECK(key2.len == key.len && kv_ct_equal(key.data, key2.data, key.len));

    /* And with the openssl CLI, without -legacy: AES-256-CBC under PBES2 /
     * PBKDF2 with hmacWithSHA256, a SHA-256 MAC, a sha256WithRSA cert. */
    char path[512];
    path_of(path, sizeof(path), "gen.pfx");
    CHECK_OK(kv_file_write_new(path, pfx, pfx_len, 0600));
    CHECK(kv_test_sh(
              "cd %s && openssl pkcs12 -in gen.pfx -passin file:pw -info -noout > gen.info 2>&1 && "
              "grep -q 'PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256' gen.info "
              "&& "
              "grep -q 'MAC: sha256, Iteration 100000' gen.info && ! grep -qi 'RC2\\|3DES\\|SHA1' "
              "gen.info",
              dir) == 0);
    CHECK(
        kv_test_sh("cd %s && openssl pkcs12 -in gen.pfx -passin file:pw -nokeys 2>/dev/null | "
                   "openssl x509 -noout -text > gen.txt && grep -q 'Signature Algorithm: "
                   "sha256WithRSAEncryption' gen.txt && "
                   "grep -q 'Subject: CN = contoso kek 2026' gen.txt && grep -q 'CA:FALSE' gen.txt",
                   dir) == 0);
    /* The SPKI from the cert in the file equals ours; the fingerprint too. */
    char hex[2 * KEY_FINGERPRINT_LEN + 1];
    uint8_t fpr[KEY_FINGERPRINT_LEN];
    CHECK_OK(key_fingerprint(spki, spki_len, fpr));
    for (int i = 0; i < KEY_FINGERPRINT_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", fpr[i]);
    CHECK(kv_test_sh("cd %s && openssl pkcs12 -in gen.pfx -passin file:pw -nokeys 2>/dev/null | "
                     "openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | "
                     "grep -q '^%s '",
                     dir, hex) == 0);
    CHECK(kv_test_sh("cd %s && printf nope > badpw && ! openssl pkcs12 -in gen.pfx -passin "
                     "file:badpw -noout "
                     "2>/dev/null",
                     dir) == 0);

    /* Bad names and passwords. */
    uint8_t *x = NULL;
    size_t xl = 0;
    kv_secret k3 = KV_SECRET_INIT, empty = KV_SECRET_INIT;
    CHECK_ERR(pfx_generate("", &p, &x, &xl, &k3, &spki2, &spki2_len), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(pfx_generate("bad\nname", &p, &x, &xl, &k3, &spki2, &spki2_len),
              KV_ERR_INVALID_ARGUMENT);
    char longname[80];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK_ERR(pfx_generate(longname, &p, &x, &xl, &k3, &spki2, &spki2_len),
              KV_ERR_INVALID_ARGUMENT);
    CHECK(x == NULL && k3.data == NULL);
    CHECK_ERR(pfx_generate("x", &empty, &x, &xl, &k3, &spki2, &spki2_len), KV_ERR_INVALID_ARGUMENT);
    free(spki2);
    free(spki);
    free(pfx);
    kv_secret_free(&key);
    kv_secret_free(&key2);
    kv_secret_free(&p);
}

static void test_oaep_and_fingerprint(void)
{
    size_t spki_len = 0;
    uint8_t *spki = load("rsa2048.spki", &spki_len);
    if (spki == NULL) return;
    const uint8_t msg[32] = "0123456789abcdef0123456789abcdef";
    for (int sha256 = 0; sha256 <= 1; sha256++) {
        uint8_t *ct = NULL;
        size_t ct_len = 0;
        CHECK_OK(rsa_oaep_encrypt(spki, spki_len, sha256, msg, sizeof(msg), &ct, &ct_len));
        CHECK(ct_len == 256);
        char path[512];
        snprintf(path, sizeof(path), "%s/ct%d.bin", dir, sha256);
        CHECK_OK(kv_file_write_new(path, ct, ct_len, 0600));
        CHECK(kv_test_sh(
                  "cd %s && openssl pkeyutl -decrypt -inkey rsa2048.pem -pkeyopt "
                  "rsa_padding_mode:oaep "
                  "-pkeyopt rsa_oaep_md:%s -pkeyopt rsa_mgf1_md:%s -in ct%d.bin -out pt%d.bin && "
                  "[ \"$(cat pt%d.bin)\" = 0123456789abcdef0123456789abcdef ]",
                  dir, sha256 ? "sha256" : "sha1", sha256 ? "sha256" : "sha1", sha256, sha256,
                  sha256) == 0);
        free(ct);
    }
    uint8_t fpr[KEY_FINGERPRINT_LEN];
    char hex[2 * KEY_FINGERPRINT_LEN + 1];
    CHECK_OK(key_fingerprint(spki, spki_len, fpr));
    for (int i = 0; i < KEY_FINGERPRINT_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", fpr[i]);
    CHECK(kv_test_sh("cd %s && sha256sum rsa2048.spki | grep -q '^%s '", dir, hex) == 0);
    char *pem = NULL;
    CHECK_OK(spki_to_pem(spki, spki_len, &pem));
    CHECK(pem != NULL && strncmp(pem, "-----BEGIN PUBLIC KEY-----\n", 27) == 0);
    free(pem);
    unsigned bits = 0;
    CHECK_ERR(spki_rsa_bits(spki, spki_len - 1, &bits), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(spki_rsa_bits((const uint8_t *)"junk", 4, &bits), KV_ERR_INVALID_ARGUMENT);
    free(spki);
    size_t ec_len = 0;
    CHECK(kv_test_sh("cd %s && openssl pkey -in ec.pem -pubout -outform DER -out ec.spki", dir) ==
          0);
    uint8_t *ec = load("ec.spki", &ec_len);
    CHECK_ERR(spki_rsa_bits(ec, ec_len, &bits), KV_ERR_INVALID_ARGUMENT);
    uint8_t *ct = NULL;
    size_t ct_len = 0;
    CHECK_ERR(rsa_oaep_encrypt(ec, ec_len, 0, msg, sizeof(msg), &ct, &ct_len),
              KV_ERR_INVALID_ARGUMENT);
    free(ec);
}

static void test_devca(void)
{
    char ca[300];
    snprintf(ca, sizeof(ca), "%s/ca", dir);
    CHECK_OK(devca_create(ca, "hsmvault test CA"));
    CHECK_ERR(devca_create(ca, "again"), KV_ERR_ALREADY_EXISTS);
    CHECK_OK(devca_issue(ca, "server", "localhost", NULL, true));
    CHECK_OK(devca_issue(ca, "alice", "alice", "spiffe://test/alice", false));
    CHECK_OK(devca_issue(ca, "bob", "bob", NULL, false));
    CHECK_ERR(devca_issue(ca, "alice", "alice", "spiffe://test/alice", false),
              KV_ERR_ALREADY_EXISTS);
    CHECK_ERR(devca_issue(ca, "../evil", "x", NULL, false), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(devca_issue(ca, "Upper", "x", NULL, false), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(devca_issue(ca, "", "x", NULL, false), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(devca_issue(ca, "a.b", "x", NULL, false), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(devca_issue(ca, "carol", "bad\ncn", NULL, false), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(devca_issue(ca, "carol", "carol", "spiffe://x,DNS:evil", false),
              KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(devca_issue(ca, "carol", "carol", "no scheme", false), KV_ERR_INVALID_ARGUMENT);
    CHECK(kv_test_sh("cd %s && [ ! -e carol.key ] && [ ! -e carol.pem ]", ca) == 0);
    /* A half-made CA (certificate only) is not overwritten either. */
    CHECK(kv_test_sh("mkdir -p %s/half && cp %s/ca.pem %s/half/", dir, ca, dir) == 0);
    char half[300];
    snprintf(half, sizeof(half), "%s/half", dir);
    CHECK_ERR(devca_create(half, "again"), KV_ERR_ALREADY_EXISTS);
    CHECK(kv_test_sh("[ ! -e %s/half/ca.key ]", dir) == 0);
    char nope[300];
    snprintf(nope, sizeof(nope), "%s/no-ca", dir);
    CHECK_ERR(devca_issue(nope, "x", "x", NULL, false), KV_ERR_NOT_FOUND);
    CHECK(kv_test_sh(
              "cd %s && openssl verify -CAfile ca.pem -purpose sslserver server.pem >/dev/null && "
              "openssl verify -CAfile ca.pem -purpose sslclient alice.pem >/dev/null && "
              "openssl verify -CAfile ca.pem -purpose sslclient bob.pem >/dev/null",
              ca) == 0);
    CHECK(kv_test_sh("cd %s && openssl x509 -in alice.pem -noout -ext subjectAltName | grep -q "
                     "'URI:spiffe://test/alice' && "
                     "openssl x509 -in server.pem -noout -ext subjectAltName | grep -q "
                     "'DNS:localhost, IP Address:127.0.0.1' && "
                     "openssl x509 -in ca.pem -noout -ext basicConstraints | grep -q 'CA:TRUE' && "
                     "openssl x509 -in alice.pem -noout -text | grep -q 'ecdsa-with-SHA256' && "
                     "! openssl verify -CAfile ca.pem -purpose sslserver alice.pem >/dev/null 2>&1",
                     ca) == 0);
    const char *keys[] = {"ca.key", "server.key", "alice.key", "bob.key"};
    for (size_t i = 0; i < 4; i++) {
        char p[400];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", ca, keys[i]);
        CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600);
    }
}

int main(void)
{
    kv_test_tmpdir(dir, sizeof(dir), "pfx");
    RUN(make_fixtures);
    RUN(make_fixtures_c);
    RUN(test_legacy_unavailable);
    RUN(test_open_good);
    RUN(test_open_bad);
    RUN(test_generate);
    RUN(test_oaep_and_fingerprint);
    RUN(test_devca);
    int rc = kv_test_finish();
    if (rc == 0)
        kv_test_rmtree(dir);
    else
        fprintf(stderr, "files kept in %s\n", dir);
    return rc;
}
