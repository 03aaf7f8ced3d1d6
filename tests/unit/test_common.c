/* test_common.c: unit tests for common/: results, cursor bounds, secret
 * wiping, base64 vectors (RFC 4648 section 10), log escaping, files, clock. */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_cursor.h"
#include "kv_file.h"
#include "kv_log.h"
#include "kv_result.h"
#include "kv_secret.h"
#include "kv_test.h"

static kv_result fails_with_not_found(void) { KV_BAIL(KV_ERR_NOT_FOUND, "tenant %s not found", "t1"); }
static kv_result propagates(void)
{
    KV_GUARD(fails_with_not_found());
    return KV_SUCCESS;
}

static void test_result(void)
{
    CHECK_ERR(propagates(), KV_ERR_NOT_FOUND);
    CHECK(strcmp(kv_error_msg(), "tenant t1 not found") == 0);
    CHECK(strstr(kv_error_file(), "test_common.c") != NULL);
    kv_error_context("loading %s", "x");
    CHECK(strcmp(kv_error_msg(), "loading x: tenant t1 not found") == 0);
    CHECK(strcmp(kv_code_name(KV_ERR_FAILED_PRECONDITION), "FAILED_PRECONDITION") == 0);
    CHECK(strcmp(kv_code_name((kv_code)99), "UNKNOWN") == 0);
}

static void test_cursor(void)
{
    const uint8_t buf[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    kv_cursor c;
    kv_cursor_init(&c, buf, sizeof(buf));
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    CHECK_OK(kv_cursor_read_u8(&c, &u8));
    CHECK(u8 == 1);
    CHECK_OK(kv_cursor_read_u16be(&c, &u16));
    CHECK(u16 == 0x0203);
    CHECK_OK(kv_cursor_read_u32be(&c, &u32));
    CHECK(u32 == 0x04050607);
    /* 4 bytes left: a u64 read fails and moves nothing */
    CHECK_ERR(kv_cursor_read_u64be(&c, &u64), KV_ERR_INVALID_ARGUMENT);
    CHECK(kv_cursor_remaining(&c) == 4);
    CHECK_ERR(kv_cursor_expect_end(&c), KV_ERR_INVALID_ARGUMENT);
    /* a huge length must not wrap around the bounds check */
    CHECK_ERR(kv_cursor_skip(&c, SIZE_MAX), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_cursor_skip(&c, SIZE_MAX - 2), KV_ERR_INVALID_ARGUMENT);
    CHECK(kv_cursor_remaining(&c) == 4);
    CHECK_OK(kv_cursor_read_u32be(&c, &u32));
    CHECK(u32 == 0x08090a0b);
    CHECK_OK(kv_cursor_expect_end(&c));
    CHECK_ERR(kv_cursor_read_u8(&c, &u8), KV_ERR_INVALID_ARGUMENT);
    kv_cursor_init(&c, NULL, 100);
    CHECK(kv_cursor_remaining(&c) == 0);

    uint8_t out[6];
    kv_writer w;
    kv_writer_init(&w, out, sizeof(out));
    CHECK_OK(kv_writer_write_u32be(&w, 0xdeadbeef));
    CHECK_ERR(kv_writer_write_u32be(&w, 1), KV_ERR_RESOURCE_EXHAUSTED);
    CHECK(w.len == 4);
    CHECK_OK(kv_writer_write_u16be(&w, 0x0102));
    CHECK(out[0] == 0xde && out[3] == 0xef && out[4] == 1 && out[5] == 2);
    CHECK_ERR(kv_writer_write(&w, "x", SIZE_MAX), KV_ERR_RESOURCE_EXHAUSTED);
}

static void test_secret(void)
{
    kv_secret s = KV_SECRET_INIT;
    CHECK_OK(kv_secret_alloc(&s, 32));
    CHECK(s.cap == 32 && s.len == 0 && s.map_len >= 32);
    CHECK_OK(kv_secret_set(&s, "0123456789abcdef0123456789abcdef", 32));
    CHECK_ERR(kv_secret_set(&s, "0123456789abcdef0123456789abcdefX", 33), KV_ERR_INVALID_ARGUMENT);
    uint8_t *mem = s.data;
    /* the memory is wiped by clear, before it is unmapped by free */
    kv_secret_clear(&s);
    int all_zero = 1;
    for (size_t i = 0; i < 32; i++) all_zero &= mem[i] == 0;
    CHECK(all_zero);
    CHECK(s.len == 0);
    kv_secret_free(&s);
    CHECK(s.data == NULL && s.cap == 0);
    kv_secret_free(&s); /* idempotent */
    CHECK_ERR(kv_secret_alloc(&s, 0), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_secret_alloc(&s, KV_SECRET_MAX + 1), KV_ERR_INVALID_ARGUMENT);

    CHECK(kv_ct_equal("abcd", "abcd", 4));
    CHECK(!kv_ct_equal("abcd", "abce", 4));
    CHECK(kv_ct_equal("", "", 0));

    uint8_t junk[16];
    memset(junk, 0xaa, sizeof(junk));
    kv_wipe(junk, sizeof(junk));
    CHECK(junk[0] == 0 && junk[15] == 0);

    /* reading a PIN file drops one trailing newline and refuses oversize */
    char dir[256];
    kv_test_tmpdir(dir, sizeof(dir), "common");
    char path[512];
    snprintf(path, sizeof(path), "%s/pin", dir);
    CHECK_OK(kv_file_write_new(path, "1234\r\n", 6, 0600));
    kv_secret pin = KV_SECRET_INIT;
    CHECK_OK(kv_secret_read_file(&pin, path, 64));
    CHECK(pin.len == 4 && memcmp(pin.data, "1234", 4) == 0);
    kv_secret_free(&pin);
    CHECK_ERR(kv_secret_read_file(&pin, path, 3), KV_ERR_INVALID_ARGUMENT);
    CHECK(pin.data == NULL);
    /* a binary secret (a DER key file) is read byte for byte */
    CHECK_OK(kv_secret_read_file_exact(&pin, path, 64));
    CHECK(pin.len == 6 && memcmp(pin.data, "1234\r\n", 6) == 0);
    kv_secret_free(&pin);
    CHECK_ERR(kv_secret_read_file_exact(&pin, path, 5), KV_ERR_INVALID_ARGUMENT);
    CHECK(pin.data == NULL);
    snprintf(path, sizeof(path), "%s/absent", dir);
    CHECK_ERR(kv_secret_read_file(&pin, path, 64), KV_ERR_NOT_FOUND);
    kv_test_rmtree(dir);
}

static void b64_vector(const char *plain, const char *std, const char *url)
{
    char enc[64];
    uint8_t dec[64];
    size_t n = 0;
    CHECK_OK(kv_base64_encode((const uint8_t *)plain, strlen(plain), KV_B64_STD, enc, sizeof(enc)));
    CHECK(strcmp(enc, std) == 0);
    CHECK_OK(kv_base64_decode(std, strlen(std), KV_B64_STD, dec, sizeof(dec), &n));
    CHECK(n == strlen(plain) && memcmp(dec, plain, n) == 0);
    CHECK_OK(kv_base64_encode((const uint8_t *)plain, strlen(plain), KV_B64_URL, enc, sizeof(enc)));
    CHECK(strcmp(enc, url) == 0);
    CHECK_OK(kv_base64_decode(url, strlen(url), KV_B64_URL, dec, sizeof(dec), &n));
    CHECK(n == strlen(plain) && memcmp(dec, plain, n) == 0);
    /* base64url also accepts the padded form */
    CHECK_OK(kv_base64_decode(std, strlen(std), KV_B64_URL, dec, sizeof(dec), &n));
    CHECK(n == strlen(plain));
}

static void test_base64(void)
{
    b64_vector("", "", "");
    b64_vector("f", "Zg==", "Zg");
    b64_vector("fo", "Zm8=", "Zm8");
    b64_vector("foo", "Zm9v", "Zm9v");
    b64_vector("foob", "Zm9vYg==", "Zm9vYg");
    b64_vector("fooba", "Zm9vYmE=", "Zm9vYmE");
    b64_vector("foobar", "Zm9vYmFy", "Zm9vYmFy");

    const uint8_t bin[] = {0xfb, 0xff, 0xbf};
    char enc[16];
    CHECK_OK(kv_base64_encode(bin, 3, KV_B64_STD, enc, sizeof(enc)));
    CHECK(strcmp(enc, "+/+/") == 0);
    CHECK_OK(kv_base64_encode(bin, 3, KV_B64_URL, enc, sizeof(enc)));
    CHECK(strcmp(enc, "-_-_") == 0);

    uint8_t out[16];
    size_t n;
    CHECK_ERR(kv_base64_decode("Zg=", 3, KV_B64_STD, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("Zg", 2, KV_B64_STD, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("Z===", 4, KV_B64_STD, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("Zh==", 4, KV_B64_STD, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("-_-_", 4, KV_B64_STD, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("+/+/", 4, KV_B64_URL, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("Zm9v\n", 5, KV_B64_URL, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("Zm=v", 4, KV_B64_STD, out, sizeof(out), &n), KV_ERR_INVALID_ARGUMENT);
    CHECK_ERR(kv_base64_decode("Zm9vYmFy", 8, KV_B64_STD, out, 5, &n), KV_ERR_INVALID_ARGUMENT);

    char hex[7];
    kv_hex_encode(bin, 3, hex);
    CHECK(strcmp(hex, "fbffbf") == 0);
}

static void test_log(void)
{
    char out[64];
    kv_log_escape("ok \x01\xff\n", out, sizeof(out));
    CHECK(strcmp(out, "ok \\x01\\xff\\x0a") == 0);
    kv_log_escape("abcdef", out, 4);
    CHECK(strcmp(out, "abc") == 0);
    /* a log line is one escaped line on the chosen fd */
    char dir[256], path[512];
    kv_test_tmpdir(dir, sizeof(dir), "log");
    snprintf(path, sizeof(path), "%s/log", dir);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    kv_log_set_fd(fd);
    kv_log(KV_LOG_INFO, "hello %s", "a\nb");
    kv_log(KV_LOG_DEBUG, "hidden");
    kv_log_set_fd(2);
    close(fd);
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(path, 4096, &data, &len));
    CHECK(data != NULL && strstr((char *)data, "info: hello a\\x0ab\n") != NULL);
    CHECK(data != NULL && strstr((char *)data, "hidden") == NULL);
    free(data);
    kv_test_rmtree(dir);
}

static void test_file(void)
{
    char dir[256], path[512];
    kv_test_tmpdir(dir, sizeof(dir), "file");
    snprintf(path, sizeof(path), "%s/a/b/c", dir);
    CHECK_OK(kv_file_mkdirs(path, 0700));
    snprintf(path, sizeof(path), "%s/a/f", dir);
    CHECK_OK(kv_file_write_new(path, "xyz", 3, 0600));
    CHECK_ERR(kv_file_write_new(path, "abc", 3, 0600), KV_ERR_ALREADY_EXISTS);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(kv_file_read(path, 3, &data, &len));
    CHECK(len == 3 && memcmp(data, "xyz", 3) == 0);
    free(data);
    CHECK_ERR(kv_file_read(path, 2, &data, &len), KV_ERR_INVALID_ARGUMENT);
    CHECK_OK(kv_file_write_atomic(path, "new", 3, 0600));
    CHECK_OK(kv_file_read(path, 16, &data, &len));
    CHECK(len == 3 && memcmp(data, "new", 3) == 0);
    free(data);
    kv_test_rmtree(dir);
}

static void test_clock(void)
{
    char buf[32];
    kv_clock_format(1795341600, buf, sizeof(buf));
    CHECK(strcmp(buf, "2026-11-22T10:00:00Z") == 0);
    int64_t before = kv_clock_now();
    CHECK(before > 1700000000);
#ifdef KV_TEST_HOOKS
    kv_clock_advance(72 * 3600);
    CHECK(kv_clock_now() - before >= 72 * 3600);
    CHECK(kv_clock_offset() == 72 * 3600);
#endif
}

int main(void)
{
    RUN(test_result);
    RUN(test_cursor);
    RUN(test_secret);
    RUN(test_base64);
    RUN(test_log);
    RUN(test_file);
    RUN(test_clock);
    return kv_test_finish();
}
