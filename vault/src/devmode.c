/*
 * devmode.c: the embedded default (`vaultd --dev`): one state directory with
 * a SoftHSM token, a private CA and certificates for the server and for each
 * dev principal, the LMDB store, and vaultctl profiles.  Reused on restart.
 * The dev token's PINs are random and live in 0600 files of the state
 * directory; nothing here is for production.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devca.h"
#include "hsm.h"
#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_file.h"
#include "kv_log.h"
#include "kv_secret.h"
#include "vaultd_config.h"

#define DEV_TOKEN_LABEL "hsmvault-dev"

const char *const vaultd_dev_principals[VAULTD_DEV_PRINCIPALS] = {
    "operator", "tenant-admin", "tenant-admin-2", "environment-admin", "storage-node", "auditor"};

static bool dev_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static kv_result dev_path(char *out, size_t cap, const char *dir, const char *name)
{
    KV_ENSURE(snprintf(out, cap, "%s/%s", dir, name) < (int)cap, KV_ERR_INVALID_ARGUMENT,
              "state directory path is too long: %s", dir);
    return KV_SUCCESS;
}

/* Writes a fresh random PIN (32 hex chars) to path (0600). */
static kv_result dev_new_pin(const char *path, kv_secret *pin)
{
    uint8_t rnd[16];
    char hex[33];
    KV_ENSURE(getrandom(rnd, sizeof(rnd), 0) == (ssize_t)sizeof(rnd), KV_ERR_UNAVAILABLE,
              "the kernel random source failed");
    kv_hex_encode(rnd, sizeof(rnd), hex);
    kv_wipe(rnd, sizeof(rnd));
    kv_result r = kv_secret_from(pin, hex, 32);
    if (kv_ok(r)) r = kv_file_write_new(path, hex, 32, 0600);
    kv_wipe(hex, sizeof(hex));
    return r;
}

static kv_result dev_token(vaultd_config *c)
{
    char conf[PATH_MAX], tokens[PATH_MAX], so_path[PATH_MAX];
    KV_GUARD(dev_path(conf, sizeof(conf), c->state_dir, "softhsm2.conf"));
    KV_GUARD(dev_path(tokens, sizeof(tokens), c->state_dir, "tokens"));
    KV_GUARD(dev_path(so_path, sizeof(so_path), c->state_dir, "so-pin"));
    KV_GUARD(dev_path(c->pin_file, sizeof(c->pin_file), c->state_dir, "pin"));
    snprintf(c->token_label, sizeof(c->token_label), "%s", DEV_TOKEN_LABEL);
    if (!dev_exists(conf)) {
        KV_GUARD(kv_file_mkdirs(tokens, 0700));
        char text[PATH_MAX + 128];
        int n = snprintf(
            text, sizeof(text),
            "# SoftHSM for vaultd --dev\ndirectories.tokendir = %s\nobjectstore.backend = file\n"
            "log.level = ERROR\nslots.removable = false\n",
            tokens);
        KV_GUARD(kv_file_write_new(conf, text, (size_t)n, 0600));
    }
    /* SoftHSM reads its configuration from the environment at C_Initialize. */
    setenv("SOFTHSM2_CONF", conf, 1);
    if (dev_exists(c->pin_file)) return KV_SUCCESS;
    kv_secret so = KV_SECRET_INIT, user = KV_SECRET_INIT;
    kv_result r = dev_new_pin(so_path, &so);
    if (kv_ok(r)) r = dev_new_pin(c->pin_file, &user);
    if (kv_ok(r)) r = hsm_token_init(c->module, c->token_label, &so, &user);
    if (kv_ok(r)) KV_LOG_INFO("dev: initialized SoftHSM token '%s' in %s", c->token_label, tokens);
    kv_secret_free(&so);
    kv_secret_free(&user);
    return r;
}

static kv_result dev_tls(vaultd_config *c)
{
    char dir[PATH_MAX], ca[PATH_MAX];
    KV_GUARD(dev_path(dir, sizeof(dir), c->state_dir, "tls"));
    KV_GUARD(dev_path(ca, sizeof(ca), dir, "ca.pem"));
    KV_GUARD(dev_path(c->tls_ca, sizeof(c->tls_ca), dir, "ca.pem"));
    KV_GUARD(dev_path(c->tls_cert, sizeof(c->tls_cert), dir, "server.pem"));
    KV_GUARD(dev_path(c->tls_key, sizeof(c->tls_key), dir, "server.key"));
    if (!dev_exists(ca)) {
        KV_GUARD(kv_file_mkdirs(dir, 0700));
        KV_GUARD(devca_create(dir, "hsmvault dev CA"));
        KV_GUARD(devca_issue(dir, "server", "vaultd", NULL, true));
        KV_LOG_INFO("dev: created a private CA in %s", dir);
    }
    /* Every dev principal has a certificate; a state directory from an older
     * vaultd gets the ones it lacks. */
    for (size_t i = 0; i < KV_ARRAY_LEN(vaultd_dev_principals); i++) {
        char uri[128], pem[PATH_MAX + 64];
        snprintf(pem, sizeof(pem), "%s/%s.pem", dir, vaultd_dev_principals[i]);
        if (dev_exists(pem)) continue;
        snprintf(uri, sizeof(uri), VAULTD_DEV_URI_PREFIX "%s", vaultd_dev_principals[i]);
        KV_GUARD(devca_issue(dir, vaultd_dev_principals[i], vaultd_dev_principals[i], uri, false));
        KV_LOG_INFO("dev: issued a client certificate for %s", uri);
    }
    /* tdenode's certificates (docs/tdenode.md): its server certificate, and
     * client certificates for a database engine and a tdenode admin.  These
     * are tdenode's callers, not vault principals: no vaultctl profile. */
    static const struct {
        const char *name;
        bool server;
    } node_certs[] = {{"tdenode", true}, {"database-engine", false}, {"tde-admin", false}};
    for (size_t i = 0; i < KV_ARRAY_LEN(node_certs); i++) {
        char uri[128], pem[PATH_MAX + 64];
        snprintf(pem, sizeof(pem), "%s/%s.pem", dir, node_certs[i].name);
        if (dev_exists(pem)) continue;
        snprintf(uri, sizeof(uri), VAULTD_DEV_URI_PREFIX "%s", node_certs[i].name);
        KV_GUARD(devca_issue(dir, node_certs[i].name, node_certs[i].name,
                             node_certs[i].server ? NULL : uri, node_certs[i].server));
        KV_LOG_INFO("dev: issued tdenode's %s certificate %s",
                    node_certs[i].server ? "server" : "client", node_certs[i].name);
    }
    return KV_SUCCESS;
}

kv_result vaultd_dev_prepare(vaultd_config *c)
{
    if (c->state_dir[0] == '\0') snprintf(c->state_dir, sizeof(c->state_dir), "hsmvault-dev");
    KV_GUARD(kv_file_mkdirs(c->state_dir, 0700));
    /* Make it absolute: profiles and SOFTHSM2_CONF must work from anywhere. */
    char abs[PATH_MAX];
    KV_ENSURE(realpath(c->state_dir, abs) != NULL, KV_ERR_INVALID_ARGUMENT, "cannot resolve %s",
              c->state_dir);
    snprintf(c->state_dir, sizeof(c->state_dir), "%s", abs);
    KV_GUARD(dev_token(c));
    KV_GUARD(dev_tls(c));
    snprintf(c->bootstrap_operator, sizeof(c->bootstrap_operator),
             VAULTD_DEV_URI_PREFIX "operator");
    return KV_SUCCESS;
}

kv_result vaultd_dev_publish(const vaultd_config *c, int port)
{
    char dir[PATH_MAX], tls[PATH_MAX];
    KV_GUARD(dev_path(dir, sizeof(dir), c->state_dir, "clients"));
    KV_GUARD(dev_path(tls, sizeof(tls), c->state_dir, "tls"));
    KV_GUARD(kv_file_mkdirs(dir, 0700));
    char host[128];
    snprintf(host, sizeof(host), "%s", c->listen);
    char *colon = strrchr(host, ':');
    if (colon != NULL) *colon = '\0';
    for (size_t i = 0; i < KV_ARRAY_LEN(vaultd_dev_principals); i++) {
        const char *name = vaultd_dev_principals[i];
        char path[PATH_MAX + 64], text[4 * PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s.conf", dir, name);
        int n =
            snprintf(text, sizeof(text),
                     "# vaultctl profile for the dev principal %s" VAULTD_DEV_URI_PREFIX "%s\n"
                     "target = %s:%d\nserver_name = localhost\nca = %s/ca.pem\ncert = %s/%s.pem\n"
                     "key = %s/%s.key\n",
                     "", name, host, port, tls, tls, name, tls, name);
        KV_GUARD(kv_file_write_atomic(path, text, (size_t)n, 0600));
    }
    char addr_path[PATH_MAX], addr[160];
    KV_GUARD(dev_path(addr_path, sizeof(addr_path), c->state_dir, "vaultd.addr"));
    int n = snprintf(addr, sizeof(addr), "%s:%d\n", host, port);
    return kv_file_write_atomic(addr_path, addr, (size_t)n, 0644);
}

kv_result vaultd_dev_clock(const vaultd_config *c, char *path, size_t cap)
{
#ifndef KV_TEST_HOOKS
    (void)c;
    if (cap > 0) path[0] = '\0';
    return KV_SUCCESS;
#else
    KV_GUARD(dev_path(path, cap, c->state_dir, "test-clock-offset"));
    uint8_t *data = NULL;
    size_t len = 0;
    if (kv_failed(kv_file_read(path, 64, &data, &len))) {
        kv_error_clear(); /* no file: the clock is not moved */
        return KV_SUCCESS;
    }
    char text[65];
    memcpy(text, data, len);
    text[len] = '\0';
    free(data);
    char *end = NULL;
    long long off = strtoll(text, &end, 10);
    KV_ENSURE(end != text && (*end == '\n' || *end == '\0') && off >= 0, KV_ERR_DATA_LOSS,
              "%s does not hold a clock offset in seconds", path);
    kv_clock_advance(off - kv_clock_offset());
    KV_LOG_WARN("dev: test clock restored %lld s ahead of real time", off);
    return KV_SUCCESS;
#endif
}
