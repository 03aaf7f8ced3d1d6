/*
 * kv_softhsm.c: the SoftHSM test-token fixture behind kv_softhsm.h.
 * Test use only: it passes PINs on softhsm2-util's argv, which is acceptable
 * for throwaway test tokens and must never be copied into product code
 * (product PINs come from files or stdin).
 */
#include "kv_softhsm.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kv_file.h"

extern char **environ;

kv_result kv_softhsm_configure(const char *dir, kv_softhsm *out)
{
    KV_ENSURE(dir != NULL && dir[0] == '/' && strlen(dir) < sizeof(out->dir),
              KV_ERR_INVALID_ARGUMENT, "fixture directory must be an absolute, short path");
    memset(out, 0, sizeof(*out));
    snprintf(out->dir, sizeof(out->dir), "%s", dir);
    const char *module = getenv("HSMVAULT_SOFTHSM_MODULE");
    snprintf(out->module_path, sizeof(out->module_path), "%s",
             module && *module ? module : KV_SOFTHSM_DEFAULT_MODULE);
    snprintf(out->conf_path, sizeof(out->conf_path), "%s/softhsm2.conf", dir);
    snprintf(out->token_dir, sizeof(out->token_dir), "%s/tokens", dir);
    snprintf(out->pin_file, sizeof(out->pin_file), "%s/pin", dir);

    KV_GUARD(kv_file_mkdirs(out->token_dir, 0700));
    char conf[1024];
    int n = snprintf(conf, sizeof(conf),
                     "# hsmvault test token (kv_softhsm fixture)\n"
                     "directories.tokendir = %s\n"
                     "objectstore.backend = file\n"
                     "log.level = ERROR\n"
                     "slots.removable = false\n",
                     out->token_dir);
    KV_ENSURE(n > 0 && (size_t)n < sizeof(conf), KV_ERR_INVALID_ARGUMENT,
              "fixture path too long");
    KV_GUARD(kv_file_write_atomic(out->conf_path, conf, (size_t)n, 0600));
    KV_ENSURE(setenv("SOFTHSM2_CONF", out->conf_path, 1) == 0, KV_ERR_INTERNAL,
              "setenv SOFTHSM2_CONF: %s", strerror(errno));
    return KV_SUCCESS;
}

kv_result kv_softhsm_write_pin(const char *path, const char *pin)
{
    if (unlink(path) != 0 && errno != ENOENT)
        KV_BAIL(KV_ERR_INTERNAL, "cannot replace %s: %s", path, strerror(errno));
    return kv_file_write_new(path, pin, strlen(pin), 0600);
}

/* softhsm2-util --init-token --free ...; no shell, output to /dev/null. */
static kv_result kv_softhsm_init_token(const char *label)
{
    char *argv[] = {
        "softhsm2-util", "--init-token", "--free",          "--label", (char *)(uintptr_t)label,
        "--pin",         KV_SOFTHSM_USER_PIN, "--so-pin", KV_SOFTHSM_SO_PIN, NULL,
    };
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, "softhsm2-util", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    KV_ENSURE(rc == 0, KV_ERR_UNAVAILABLE, "cannot run softhsm2-util: %s", strerror(rc));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) KV_BAIL(KV_ERR_INTERNAL, "waitpid: %s", strerror(errno));
    }
    KV_ENSURE(WIFEXITED(status) && WEXITSTATUS(status) == 0, KV_ERR_UNAVAILABLE,
              "softhsm2-util --init-token --label %s failed (status %d)", label, status);
    return KV_SUCCESS;
}

kv_result kv_softhsm_setup(const char *dir, const char *label, kv_softhsm *out)
{
    KV_ENSURE(label != NULL && label[0] != '\0' && strlen(label) < sizeof(out->label),
              KV_ERR_INVALID_ARGUMENT, "token label must be 1 to 32 bytes");
    KV_GUARD(kv_softhsm_configure(dir, out));
    snprintf(out->label, sizeof(out->label), "%s", label);
    KV_GUARD(kv_softhsm_init_token(label));
    KV_GUARD(kv_softhsm_write_pin(out->pin_file, KV_SOFTHSM_USER_PIN));
    return KV_SUCCESS;
}
