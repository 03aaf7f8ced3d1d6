/*
 * vaultctl.c: the admin/operator CLI over libvaultclient.
 *
 * Passwords come from --password-file, --password-stdin or a no-echo prompt,
 * never argv.  A downloaded PFX is written 0600 and never over an existing
 * file.  One line on stderr per error; exit codes are documented in --help.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "hsmvault/v1/audit.pb-c.h"
#include "hsmvault/v1/environments.pb-c.h"
#include "hsmvault/v1/key_access.pb-c.h"
#include "hsmvault/v1/keys.pb-c.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "hsmvault/v1/testing.pb-c.h"
#include "byok_file.h"
#include "kv_base64.h"
#include "kv_byok.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_secret.h"
#include "audit_cli.h"
#include "cli.h"
#include "print.h"
#include "vaultclient.h"

#define MAX_CONTACTS 32
#define PFX_FILE_MAX (64u * 1024u)
#define KEY_FILE_MAX (64u * 1024u) /* a private key file: an RSA-8192 PEM is ~6 KiB */

typedef struct {
    const char *name, *tenant, *env, *key, *db, *principal, *role, *type, *subscription, *out, *pfx;
    const char *password_file, *confirm, *from;
    const char *contacts[MAX_CONTACTS];
    size_t n_contacts;
    long long seconds;
    bool password_stdin, json, have_seconds;
    /* BYOK (docs/byok.md) */
    const char *byok, *import_key, *pkcs11_module, *token, *key_label, *pin_file, *kid, *oaep_hash;
    unsigned bits;
    bool pin_stdin;
    /* audit log (audit_cli.c) */
    const char *operation, *since, *until, *to, *file, *public_key;
} cli;

typedef int (*cmd_fn)(vc *c, const cli *a);
typedef struct {
    const char *group, *verb;
    cmd_fn fn;
    const char *args;
    const char *help;
} cmd;

/* Exit codes, error lines and reply printing are shared with tdectl
 * (cli.h); vaultctl's own names for them: */
#define fail cli_fail
#define usage_error cli_usage_error

#define NEED(field, opt)                                                                           \
    do {                                                                                           \
        if (a->field == NULL) return usage_error("%s is required", "--" opt);                      \
    } while (0)

/* Calls method and prints the reply (text or JSON). */
static int call_print(vc *c, const cli *a, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *desc)
{
    return cli_call_print(c, a->json, method, req, desc);
}

/* Reads a password without echo from the terminal. */
static kv_result prompt_secret(const char *prompt, const char *what, kv_secret *out)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    KV_ENSURE(fd >= 0, KV_ERR_INVALID_ARGUMENT,
              "no terminal to ask for the %s: use --%s-file or --%s-stdin", what, what, what);
    struct termios old, quiet;
    bool restore = tcgetattr(fd, &old) == 0;
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(fd, TCSAFLUSH, &quiet);
    }
    ssize_t w = write(fd, prompt, strlen(prompt));
    (void)w;
    kv_result r = kv_secret_alloc(out, 1025);
    size_t n = 0;
    while (kv_ok(r)) {
        char ch;
        ssize_t got = read(fd, &ch, 1);
        if (got <= 0 || ch == '\n') break;
        if (n >= 1024) {
            r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__,
                             "%s longer than 1024 bytes", what);
            break;
        }
        out->data[n++] = (uint8_t)ch;
        ch = 0;
    }
    out->len = n;
    w = write(fd, "\n", 1);
    if (restore) tcsetattr(fd, TCSAFLUSH, &old);
    close(fd);
    if (kv_failed(r)) kv_secret_free(out);
    return r;
}

static kv_result prompt_password(const char *prompt, kv_secret *out)
{
    return prompt_secret(prompt, "password", out);
}

/* A password (or PIN) file or stdin holds it as its first line, as with
 * openssl's -passin file: (one trailing LF or CRLF is not part of it). */
static kv_result read_secret_line(const char *file, const char *what, kv_secret *out)
{
    if (file != NULL)
        KV_GUARD(kv_secret_read_file(out, file, 1024));
    else
        KV_GUARD(kv_secret_read_fd(out, 0, 1024));
    /* kv_secret_read_fd drops one trailing LF or CRLF. */
    if (memchr(out->data, '\n', out->len) != NULL) {
        kv_secret_free(out);
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "the %s %s holds more than one line", what,
                file != NULL ? "file" : "on stdin");
    }
    return KV_SUCCESS;
}

static kv_result read_password(const cli *a, bool confirm, kv_secret *out)
{
    if (a->password_file != NULL || a->password_stdin)
        return read_secret_line(a->password_file, "password", out);
    KV_GUARD(prompt_password("Password: ", out));
    if (!confirm) return KV_SUCCESS;
    kv_secret again = KV_SECRET_INIT;
    kv_result r = prompt_password("Repeat password: ", &again);
    if (kv_ok(r) && (again.len != out->len || !kv_ct_equal(again.data, out->data, out->len)))
        r = kv_error_set(KV_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "the passwords do not match");
    kv_secret_free(&again);
    if (kv_failed(r)) kv_secret_free(out);
    return r;
}

static int cmd_whoami(vc *c, const cli *a)
{
    Hsmvault__V1__WhoAmIRequest req = HSMVAULT__V1__WHO_AM_IREQUEST__INIT;
    return call_print(c, a, "/hsmvault.v1.Tenants/WhoAmI", &req.base,
                      &hsmvault__v1__who_am_iresponse__descriptor);
}

static int cmd_tenant_create(vc *c, const cli *a)
{
    NEED(name, "name");
    NEED(subscription, "subscription");
    if (a->n_contacts == 0)
        return usage_error("%s is required (repeat it for each admin)", "--admin-contact");
    Hsmvault__V1__CreateTenantRequest req = HSMVAULT__V1__CREATE_TENANT_REQUEST__INIT;
    req.name = (char *)(uintptr_t)a->name;
    req.subscription_id = (char *)(uintptr_t)a->subscription;
    req.n_admin_contacts = a->n_contacts;
    req.admin_contacts = (char **)(uintptr_t)a->contacts;
    return call_print(c, a, "/hsmvault.v1.Tenants/CreateTenant", &req.base,
                      &hsmvault__v1__tenant__descriptor);
}

static int cmd_tenant_list(vc *c, const cli *a)
{
    Hsmvault__V1__ListTenantsRequest req = HSMVAULT__V1__LIST_TENANTS_REQUEST__INIT;
    return call_print(c, a, "/hsmvault.v1.Tenants/ListTenants", &req.base,
                      &hsmvault__v1__list_tenants_response__descriptor);
}

static int cmd_tenant_show(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__GetTenantRequest req = HSMVAULT__V1__GET_TENANT_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.Tenants/GetTenant", &req.base,
                      &hsmvault__v1__tenant__descriptor);
}

static int cmd_tenant_enable(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__EnableSelfManagedKeysRequest req =
        HSMVAULT__V1__ENABLE_SELF_MANAGED_KEYS_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.Tenants/EnableSelfManagedKeys", &req.base,
                      &hsmvault__v1__tenant__descriptor);
}

static int parse_role(const char *s, Hsmvault__V1__Role *out)
{
    static const struct {
        const char *name;
        Hsmvault__V1__Role role;
    } roles[] = {
        {"operator", HSMVAULT__V1__ROLE__ROLE_OPERATOR},
        {"tenant-admin", HSMVAULT__V1__ROLE__ROLE_TENANT_ADMIN},
        {"environment-admin", HSMVAULT__V1__ROLE__ROLE_ENVIRONMENT_ADMIN},
        {"storage-node", HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE},
        {"auditor", HSMVAULT__V1__ROLE__ROLE_AUDITOR},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(roles); i++)
        if (strcmp(s, roles[i].name) == 0) {
            *out = roles[i].role;
            return 0;
        }
    return -1;
}

static int cmd_role_bind_or_unbind(vc *c, const cli *a, bool bind)
{
    NEED(principal, "principal");
    NEED(role, "role");
    Hsmvault__V1__RoleBinding b = HSMVAULT__V1__ROLE_BINDING__INIT;
    if (parse_role(a->role, &b.role) != 0)
        return usage_error(
            "unknown role '%s' (operator, tenant-admin, environment-admin, storage-node, auditor)",
            a->role);
    b.principal = (char *)(uintptr_t)a->principal;
    b.tenant_id = (char *)(uintptr_t)(a->tenant ? a->tenant : "");
    b.environment_id = (char *)(uintptr_t)(a->env ? a->env : "");
    if (bind) {
        Hsmvault__V1__BindRoleRequest req = HSMVAULT__V1__BIND_ROLE_REQUEST__INIT;
        req.binding = &b;
        return call_print(c, a, "/hsmvault.v1.Tenants/BindRole", &req.base,
                          &hsmvault__v1__role_binding__descriptor);
    }
    Hsmvault__V1__UnbindRoleRequest req = HSMVAULT__V1__UNBIND_ROLE_REQUEST__INIT;
    req.binding = &b;
    return call_print(c, a, "/hsmvault.v1.Tenants/UnbindRole", &req.base,
                      &hsmvault__v1__unbind_role_response__descriptor);
}

static int cmd_role_bind(vc *c, const cli *a)
{
    return cmd_role_bind_or_unbind(c, a, true);
}
static int cmd_role_unbind(vc *c, const cli *a)
{
    return cmd_role_bind_or_unbind(c, a, false);
}

static int cmd_role_list(vc *c, const cli *a)
{
    Hsmvault__V1__ListRoleBindingsRequest req = HSMVAULT__V1__LIST_ROLE_BINDINGS_REQUEST__INIT;
    req.principal = (char *)(uintptr_t)(a->principal ? a->principal : "");
    return call_print(c, a, "/hsmvault.v1.Tenants/ListRoleBindings", &req.base,
                      &hsmvault__v1__list_role_bindings_response__descriptor);
}

static int cmd_env_create(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    NEED(name, "name");
    NEED(type, "type");
    Hsmvault__V1__CreateEnvironmentRequest req = HSMVAULT__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
    if (strcmp(a->type, "production") == 0)
        req.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_PRODUCTION;
    else if (strcmp(a->type, "sandbox") == 0)
        req.type = HSMVAULT__V1__ENVIRONMENT_TYPE__ENVIRONMENT_TYPE_SANDBOX;
    else
        return usage_error("--type must be production or sandbox, not '%s'", a->type);
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.name = (char *)(uintptr_t)a->name;
    return call_print(c, a, "/hsmvault.v1.Environments/CreateEnvironment", &req.base,
                      &hsmvault__v1__environment__descriptor);
}

static int cmd_env_list(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__ListEnvironmentsRequest req = HSMVAULT__V1__LIST_ENVIRONMENTS_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.Environments/ListEnvironments", &req.base,
                      &hsmvault__v1__list_environments_response__descriptor);
}

static int cmd_env_show(vc *c, const cli *a)
{
    NEED(env, "env");
    Hsmvault__V1__GetEnvironmentRequest req = HSMVAULT__V1__GET_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    return call_print(c, a, "/hsmvault.v1.Environments/GetEnvironment", &req.base,
                      &hsmvault__v1__environment__descriptor);
}

static int cmd_env_apply(vc *c, const cli *a)
{
    NEED(env, "env");
    Hsmvault__V1__ApplyKeyRequest req = HSMVAULT__V1__APPLY_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    return call_print(c, a, "/hsmvault.v1.Environments/ApplyKey", &req.base,
                      &hsmvault__v1__environment__descriptor);
}

static int cmd_env_return(vc *c, const cli *a)
{
    NEED(env, "env");
    Hsmvault__V1__ReturnToServiceKeyRequest req = HSMVAULT__V1__RETURN_TO_SERVICE_KEY_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    req.confirmation_name = (char *)(uintptr_t)(a->confirm ? a->confirm : "");
    return call_print(c, a, "/hsmvault.v1.Environments/ReturnToServiceKey", &req.base,
                      &hsmvault__v1__environment__descriptor);
}

static int cmd_key_generate(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    NEED(name, "name");
    NEED(out, "out");
    if (access(a->out, F_OK) == 0) {
        fprintf(stderr, "vaultctl: ALREADY_EXISTS: %s already exists; refusing to overwrite it\n",
                a->out);
        return EXIT_EXISTS;
    }
    kv_secret pw = KV_SECRET_INIT;
    if (kv_failed(read_password(a, true, &pw))) return fail();
    Hsmvault__V1__GenerateKeyRequest req = HSMVAULT__V1__GENERATE_KEY_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.name = (char *)(uintptr_t)a->name;
    req.password = (ProtobufCBinaryData){pw.len, pw.data};
    Hsmvault__V1__GenerateKeyResponse *resp = NULL;
    kv_result r =
        vc_call(c, "/hsmvault.v1.TenantKeys/GenerateKey", &req.base,
                &hsmvault__v1__generate_key_response__descriptor, (ProtobufCMessage **)&resp);
    kv_secret_free(&pw);
    if (kv_failed(r)) return fail();
    r = kv_file_write_new(a->out, resp->pfx.data, resp->pfx.len, 0600);
    if (kv_ok(r) && resp->key != NULL) print_message(stdout, &resp->key->base, a->json);
    kv_pb_free(&resp->base);
    if (kv_failed(r)) {
        kv_error_context("the key was generated but its PFX could not be saved");
        return fail();
    }
    if (!a->json)
        fprintf(stderr, "vaultctl: PFX written to %s (mode 0600); keep it and its password safe\n",
                a->out);
    return EXIT_OK;
}

/* A presented key: the PFX file and its password, or a .byok file (wiped by
 * material_free). */
typedef struct {
    Hsmvault__V1__KeyMaterial m;
    uint8_t *file;
    size_t len;
    kv_secret pw;
} material;

static kv_result material_load(const cli *a, material *out)
{
    memset(out, 0, sizeof(*out));
    hsmvault__v1__key_material__init(&out->m);
    KV_ENSURE((a->pfx != NULL) != (a->byok != NULL), KV_ERR_INVALID_ARGUMENT,
              "give the key as exactly one of --pfx FILE and --byok FILE");
    if (a->byok != NULL) {
        /* wrapped for the vault's import key: no password */
        KV_GUARD(kv_file_read(a->byok, KV_BYOK_FILE_MAX, &out->file, &out->len));
        out->m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_BYOK;
        out->m.byok = (ProtobufCBinaryData){out->len, out->file};
        return KV_SUCCESS;
    }
    KV_GUARD(kv_file_read(a->pfx, PFX_FILE_MAX, &out->file, &out->len));
    if (kv_failed(read_password(a, false, &out->pw))) {
        kv_pb_buf_free(out->file, out->len);
        return KV_FAILURE;
    }
    out->m.material_case = HSMVAULT__V1__KEY_MATERIAL__MATERIAL_PFX;
    out->m.pfx = (ProtobufCBinaryData){out->len, out->file};
    out->m.password = (ProtobufCBinaryData){out->pw.len, out->pw.data};
    return KV_SUCCESS;
}

static void material_free(material *m)
{
    kv_secret_free(&m->pw);
    kv_pb_buf_free(m->file, m->len);
}

static int cmd_key_upload(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    NEED(name, "name");
    if ((a->pfx == NULL) == (a->byok == NULL))
        return usage_error("give the key as exactly one of %s", "--pfx FILE and --byok FILE");
    material m;
    if (kv_failed(material_load(a, &m))) return fail();
    Hsmvault__V1__UploadKeyRequest req = HSMVAULT__V1__UPLOAD_KEY_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.name = (char *)(uintptr_t)a->name;
    req.material = &m.m;
    int rc = call_print(c, a, "/hsmvault.v1.TenantKeys/UploadKey", &req.base,
                        &hsmvault__v1__tenant_key__descriptor);
    material_free(&m);
    return rc;
}

static int cmd_tenant_lock_text(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__GetLockConfirmationRequest req =
        HSMVAULT__V1__GET_LOCK_CONFIRMATION_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.TenantKeys/GetLockConfirmation", &req.base,
                      &hsmvault__v1__lock_confirmation__descriptor);
}

/* Shows the vault's confirmation text on the terminal and reads it typed
 * back (echoed: it is not a secret). */
static kv_result confirm_on_tty(const char *text, char *out, size_t cap)
{
    FILE *tty = fopen("/dev/tty", "r+");
    KV_ENSURE(tty != NULL, KV_ERR_INVALID_ARGUMENT,
              "no terminal to type the confirmation on: give --confirm TEXT");
    fprintf(
        tty,
        "Locking makes every customer-managed environment of the tenant unreadable, for everyone,\n"
        "until the same key is uploaded again.  To confirm, type: %s\n> ",
        text);
    fflush(tty);
    bool ok = fgets(out, (int)cap, tty) != NULL;
    fclose(tty);
    KV_ENSURE(ok, KV_ERR_INVALID_ARGUMENT, "no confirmation typed");
    out[strcspn(out, "\r\n")] = '\0';
    return KV_SUCCESS;
}

static int cmd_tenant_lock(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    if ((a->pfx == NULL) == (a->byok == NULL))
        return usage_error("give the key as exactly one of %s", "--pfx FILE and --byok FILE");
    char typed[256];
    const char *confirmation = a->confirm;
    if (confirmation == NULL) {
        /* Show the vault's text and have it typed back on the terminal. */
        Hsmvault__V1__GetLockConfirmationRequest q =
            HSMVAULT__V1__GET_LOCK_CONFIRMATION_REQUEST__INIT;
        q.tenant_id = (char *)(uintptr_t)a->tenant;
        Hsmvault__V1__LockConfirmation *lc = NULL;
        if (kv_failed(vc_call(c, "/hsmvault.v1.TenantKeys/GetLockConfirmation", &q.base,
                              &hsmvault__v1__lock_confirmation__descriptor,
                              (ProtobufCMessage **)&lc)))
            return fail();
        kv_result r = confirm_on_tty(lc->text, typed, sizeof(typed));
        kv_pb_free(&lc->base);
        if (kv_failed(r)) return fail();
        confirmation = typed;
    }
    material m;
    if (kv_failed(material_load(a, &m))) return fail();
    Hsmvault__V1__LockTenantRequest req = HSMVAULT__V1__LOCK_TENANT_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.active_key = &m.m;
    req.confirmation = (char *)(uintptr_t)confirmation;
    int rc = call_print(c, a, "/hsmvault.v1.TenantKeys/LockTenant", &req.base,
                        &hsmvault__v1__lock_tenant_response__descriptor);
    material_free(&m);
    return rc;
}

static int cmd_key_unlock(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    NEED(key, "key");
    if ((a->pfx == NULL) == (a->byok == NULL))
        return usage_error("give the key as exactly one of %s", "--pfx FILE and --byok FILE");
    material m;
    if (kv_failed(material_load(a, &m))) return fail();
    Hsmvault__V1__UnlockKeyRequest req = HSMVAULT__V1__UNLOCK_KEY_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.key_id = (char *)(uintptr_t)a->key;
    req.key = &m.m;
    int rc = call_print(c, a, "/hsmvault.v1.TenantKeys/UnlockKey", &req.base,
                        &hsmvault__v1__tenant_key__descriptor);
    material_free(&m);
    return rc;
}

static int env_transfer(vc *c, const cli *a, const char *method)
{
    NEED(from, "from");
    NEED(env, "env");
    Hsmvault__V1__AuthorizeTransferRequest req = HSMVAULT__V1__AUTHORIZE_TRANSFER_REQUEST__INIT;
    req.source_environment_id = (char *)(uintptr_t)a->from;
    req.target_environment_id = (char *)(uintptr_t)a->env;
    Hsmvault__V1__AuthorizeTransferResponse *resp = NULL;
    if (kv_failed(vc_call(c, method, &req.base,
                          &hsmvault__v1__authorize_transfer_response__descriptor,
                          (ProtobufCMessage **)&resp)))
        return fail();
    print_message(stdout, &resp->base, a->json);
    if (!resp->allowed) fprintf(stderr, "vaultctl: refused: %s\n", resp->reason);
    int rc = resp->allowed ? EXIT_OK : EXIT_PRECONDITION;
    kv_pb_free(&resp->base);
    return rc;
}

static int cmd_env_restore(vc *c, const cli *a)
{
    return env_transfer(c, a, "/hsmvault.v1.Environments/AuthorizeRestore");
}

static int cmd_env_copy(vc *c, const cli *a)
{
    return env_transfer(c, a, "/hsmvault.v1.Environments/AuthorizeCopy");
}

static int cmd_env_reset(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(confirm, "confirm");
    Hsmvault__V1__ResetEnvironmentRequest req = HSMVAULT__V1__RESET_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    req.confirmation_name = (char *)(uintptr_t)a->confirm;
    return call_print(c, a, "/hsmvault.v1.Environments/ResetEnvironment", &req.base,
                      &hsmvault__v1__environment__descriptor);
}

static int cmd_env_unlock(vc *c, const cli *a)
{
    NEED(env, "env");
    Hsmvault__V1__UnlockEnvironmentRequest req = HSMVAULT__V1__UNLOCK_ENVIRONMENT_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    return call_print(c, a, "/hsmvault.v1.Environments/UnlockEnvironment", &req.base,
                      &hsmvault__v1__environment__descriptor);
}

static int cmd_key_list(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__ListKeysRequest req = HSMVAULT__V1__LIST_KEYS_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.TenantKeys/ListKeys", &req.base,
                      &hsmvault__v1__list_keys_response__descriptor);
}

static int cmd_key_activate(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    NEED(key, "key");
    Hsmvault__V1__ActivateKeyRequest req = HSMVAULT__V1__ACTIVATE_KEY_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.key_id = (char *)(uintptr_t)a->key;
    return call_print(c, a, "/hsmvault.v1.TenantKeys/ActivateKey", &req.base,
                      &hsmvault__v1__tenant_key__descriptor);
}

static int cmd_key_rollback(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__RollBackRequest req = HSMVAULT__V1__ROLL_BACK_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.TenantKeys/RollBack", &req.base,
                      &hsmvault__v1__tenant_key__descriptor);
}

/* Prints a database and a check value of its DEK (SHA-256, never the key). */
static void print_dek_result(const cli *a, const char *env, const char *db, const kv_secret *dek,
                             uint32_t lease)
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    SHA256(dek->data, dek->len, digest);
    kv_hex_encode(digest, sizeof(digest), hex);
    if (a->json)
        printf("{\"environment_id\":\"%s\",\"database_id\":\"%s\",\"dek_sha256\":\"%s\",\"lease_"
               "seconds\":%u}\n",
               env, db, hex, lease);
    else
        printf("environment_id: %s\ndatabase_id: %s\ndek_sha256: %s\nlease_seconds: %u\n", env, db,
               hex, lease);
}

static int cmd_db_create(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(name, "name");
    char id[64];
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease = 0;
    if (kv_failed(vc_database_key_create(c, a->env, a->name, id, sizeof(id), &dek, &lease)))
        return fail();
    print_dek_result(a, a->env, id, &dek, lease);
    kv_secret_free(&dek);
    return EXIT_OK;
}

static int cmd_db_unwrap(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(db, "db");
    kv_secret dek = KV_SECRET_INIT;
    uint32_t lease = 0;
    if (kv_failed(vc_database_key_unwrap(c, a->env, a->db, &dek, &lease))) return fail();
    print_dek_result(a, a->env, a->db, &dek, lease);
    kv_secret_free(&dek);
    return EXIT_OK;
}

static int cmd_db_list(vc *c, const cli *a)
{
    NEED(env, "env");
    Hsmvault__V1__ListDatabasesRequest req = HSMVAULT__V1__LIST_DATABASES_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    return call_print(c, a, "/hsmvault.v1.KeyAccess/ListDatabases", &req.base,
                      &hsmvault__v1__list_databases_response__descriptor);
}

static const char *yn(protobuf_c_boolean b)
{
    return b ? "yes" : "no";
}

static int cmd_audit_log_run(vc *c, const cli *a, int (*fn)(vc *, const audit_cli_args *))
{
    audit_cli_args x = {.tenant = a->tenant,
                        .principal = a->principal,
                        .operation = a->operation,
                        .since = a->since,
                        .until = a->until,
                        .from = a->from,
                        .to = a->to,
                        .out = a->out,
                        .file = a->file,
                        .public_key = a->public_key,
                        .json = a->json};
    return fn(c, &x);
}
static int cmd_audit_log(vc *c, const cli *a)
{
    return cmd_audit_log_run(c, a, audit_cli_log);
}
static int cmd_audit_export(vc *c, const cli *a)
{
    return cmd_audit_log_run(c, a, audit_cli_export);
}
static int cmd_audit_verify(vc *c, const cli *a)
{
    return cmd_audit_log_run(c, a, audit_cli_verify);
}
static int cmd_audit_key(vc *c, const cli *a)
{
    return cmd_audit_log_run(c, a, audit_cli_key);
}

static int cmd_audit_token(vc *c, const cli *a)
{
    Hsmvault__V1__ListTokenObjectsRequest req = HSMVAULT__V1__LIST_TOKEN_OBJECTS_REQUEST__INIT;
    if (a->json)
        return call_print(c, a, "/hsmvault.v1.Audit/ListTokenObjects", &req.base,
                          &hsmvault__v1__list_token_objects_response__descriptor);
    /* Text: one row per object, the attributes an HSM operator checks. */
    Hsmvault__V1__ListTokenObjectsResponse *l = NULL;
    if (kv_failed(vc_call(c, "/hsmvault.v1.Audit/ListTokenObjects", &req.base,
                          &hsmvault__v1__list_token_objects_response__descriptor,
                          (ProtobufCMessage **)&l)))
        return fail();
    printf("%-12s %-4s %-5s %-4s %-4s %-5s %-5s %-4s %-16s %-20s %-10s %-20s %-20s %s\n", "CLASS",
           "TYPE", "BITS", "SENS", "EXTR", "NEVER", "ALWAYS", "PRIV", "OPERATIONS", "VAULT",
           "STATE", "TENANT", "KEY", "LABEL");
    for (size_t i = 0; i < l->n_objects; i++) {
        const Hsmvault__V1__TokenObject *o = l->objects[i];
        char ops[64];
        snprintf(ops, sizeof(ops), "%s%s%s%s%s", o->can_decrypt ? "decrypt," : "",
                 o->can_unwrap ? "unwrap," : "", o->can_encrypt ? "encrypt," : "",
                 o->can_wrap ? "wrap," : "", o->can_sign ? "sign," : "");
        size_t n = strlen(ops);
        if (n > 0) ops[n - 1] = '\0';
        printf("%-12s %-4s %-5u %-4s %-4s %-5s %-6s %-4s %-16s %-20s %-10s %-20s %-20s %s\n",
               o->object_class, o->key_type, o->bits, yn(o->sensitive), yn(o->extractable),
               yn(o->never_extractable), yn(o->always_sensitive), yn(o->private_),
               ops[0] ? ops : "-", o->vault_role, o->vault_state[0] ? o->vault_state : "-",
               o->vault_tenant_id[0] ? o->vault_tenant_id : "-",
               o->vault_key_id[0] ? o->vault_key_id : "-", o->label);
    }
    printf("%zu objects.  SENS sensitive, EXTR extractable, NEVER never extractable, ALWAYS always "
           "sensitive\n"
           "(keys imported from a PFX are NEVER/ALWAYS no by PKCS#11's definition), PRIV private "
           "object.\n",
           l->n_objects);
    kv_pb_free(&l->base);
    return EXIT_OK;
}

/* Exit 0 when the token and the vault agree, EXIT_FINDINGS when not. */
static int cmd_audit_reconcile(vc *c, const cli *a)
{
    Hsmvault__V1__ReconcileRequest req = HSMVAULT__V1__RECONCILE_REQUEST__INIT;
    Hsmvault__V1__ReconcileResponse *l = NULL;
    if (kv_failed(vc_call(c, "/hsmvault.v1.Audit/Reconcile", &req.base,
                          &hsmvault__v1__reconcile_response__descriptor, (ProtobufCMessage **)&l)))
        return fail();
    if (a->json) {
        print_message(stdout, &l->base, true);
    } else {
        if (l->n_findings > 0)
            printf("%-17s %-20s %-20s %-11s %s\n", "KIND", "VAULT", "TENANT", "CLASS", "KEY");
        for (size_t i = 0; i < l->n_findings; i++) {
            const Hsmvault__V1__ReconcileFinding *f = l->findings[i];
            printf("%-17s %-20s %-20s %-11s %s\n    %s\n", f->kind, f->vault_role,
                   f->tenant_id[0] ? f->tenant_id : "-", f->object_class[0] ? f->object_class : "-",
                   f->key_id[0] ? f->key_id : "-", f->detail);
            if (f->label[0] != '\0')
                printf("    label '%s', id %s%s\n", f->label, f->id_hex,
                       f->removed_at_start ? " (removed at the next vaultd start)" : "");
            else if (f->id_hex[0] != '\0')
                printf("    id %s\n", f->id_hex);
        }
        printf("%s: %zu findings; %u token objects, %u key records, %u import key records.\n",
               l->clean ? "clean" : "NOT CLEAN", l->n_findings, l->token_objects, l->key_records,
               l->import_key_records);
    }
    int rc = EXIT_OK;
    if (!l->clean) {
        fprintf(stderr,
                "vaultctl: audit reconcile: %zu findings: the token and the vault disagree\n",
                l->n_findings);
        rc = EXIT_FINDINGS;
    }
    kv_pb_free(&l->base);
    return rc;
}

static int cmd_clock_advance(vc *c, const cli *a)
{
    if (!a->have_seconds) return usage_error("%s is required", "--seconds");
    Hsmvault__V1__AdvanceClockRequest req = HSMVAULT__V1__ADVANCE_CLOCK_REQUEST__INIT;
    req.seconds = a->seconds;
    return call_print(c, a, "/hsmvault.v1.Testing/AdvanceClock", &req.base,
                      &hsmvault__v1__advance_clock_response__descriptor);
}

/* ---- BYOK (docs/byok.md) ---- */

static int cmd_key_import_key(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    NEED(out, "out");
    if (access(a->out, F_OK) == 0) {
        fprintf(stderr, "vaultctl: ALREADY_EXISTS: %s already exists; refusing to overwrite it\n",
                a->out);
        return EXIT_EXISTS;
    }
    Hsmvault__V1__GetImportKeyRequest req = HSMVAULT__V1__GET_IMPORT_KEY_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    Hsmvault__V1__ImportKey *ik = NULL;
    if (kv_failed(vc_call(c, "/hsmvault.v1.TenantKeys/GetImportKey", &req.base,
                          &hsmvault__v1__import_key__descriptor, (ProtobufCMessage **)&ik)))
        return fail();
    char *text = NULL;
    size_t len = 0;
    kv_result r = byok_import_key_format(ik->kid, ik->subscription_id, ik->bits, ik->public_key_pem,
                                         &text, &len);
    /* a public key: readable by others is fine; an existing file is never replaced */
    if (kv_ok(r)) r = kv_file_write_new(a->out, text, len, 0644);
    if (kv_ok(r)) print_message(stdout, &ik->base, a->json);
    free(text);
    kv_pb_free(&ik->base);
    if (kv_failed(r)) return fail();
    if (!a->json)
        fprintf(stderr,
                "vaultctl: import key written to %s; wrap your key for it with `vaultctl byok "
                "wrap --import-key %s ...`\n",
                a->out, a->out);
    return EXIT_OK;
}

static int cmd_import_key_rotate(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__RotateImportKeyRequest req = HSMVAULT__V1__ROTATE_IMPORT_KEY_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    req.bits = a->bits;
    return call_print(c, a, "/hsmvault.v1.Tenants/RotateImportKey", &req.base,
                      &hsmvault__v1__import_key__descriptor);
}

static int cmd_import_key_list(vc *c, const cli *a)
{
    NEED(tenant, "tenant");
    Hsmvault__V1__ListImportKeysRequest req = HSMVAULT__V1__LIST_IMPORT_KEYS_REQUEST__INIT;
    req.tenant_id = (char *)(uintptr_t)a->tenant;
    return call_print(c, a, "/hsmvault.v1.Tenants/ListImportKeys", &req.base,
                      &hsmvault__v1__list_import_keys_response__descriptor);
}

/* The admin token's PIN: --pin-file, --pin-stdin or a no-echo prompt. */
static kv_result read_pin(const cli *a, kv_secret *out)
{
    if (a->pin_file != NULL || a->pin_stdin) return read_secret_line(a->pin_file, "PIN", out);
    char prompt[128];
    snprintf(prompt, sizeof(prompt), "PIN for token '%.64s': ", a->token);
    return prompt_secret(prompt, "pin", out);
}

static int usage_token(const cli *a)
{
    if (a->pkcs11_module == NULL || a->token == NULL || a->key_label == NULL)
        return usage_error("%s are required together",
                           "--pkcs11-module PATH, --token LABEL and --key-label LABEL");
    if (a->pin_file != NULL && a->pin_stdin)
        return usage_error("give only one of --pin-file and %s", "--pin-stdin");
    if (a->pin_stdin && a->password_stdin)
        return usage_error("the PIN and the password cannot both come from %s", "stdin");
    return EXIT_OK;
}

static bool bytes_contain(const uint8_t *p, size_t n, const char *word)
{
    size_t m = strlen(word);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(p + i, word, m) == 0) return true;
    return false;
}

static int cmd_byok_wrap(vc *c, const cli *a)
{
    (void)c;
    NEED(import_key, "import-key");
    NEED(out, "out");
    bool token = a->pkcs11_module != NULL || a->token != NULL || a->key_label != NULL;
    if (token == (a->key != NULL))
        return usage_error("give the key to wrap as %s",
                           "--key FILE, or --pkcs11-module/--token/--key-label");
    if (token && usage_token(a) != EXIT_OK) return EXIT_USAGE;
    kv_byok_hash hash = KV_BYOK_OAEP_SHA1;
    if (a->oaep_hash != NULL && strcmp(a->oaep_hash, "sha256") == 0)
        hash = KV_BYOK_OAEP_SHA256;
    else if (a->oaep_hash != NULL && strcmp(a->oaep_hash, "sha1") != 0)
        return usage_error("--oaep-hash is sha1 or sha256, not '%s'", a->oaep_hash);
    if (access(a->out, F_OK) == 0) {
        fprintf(stderr, "vaultctl: ALREADY_EXISTS: %s already exists; refusing to overwrite it\n",
                a->out);
        return EXIT_EXISTS;
    }
    uint8_t *ik_text = NULL;
    size_t ik_len = 0;
    kv_secret key_file = KV_SECRET_INIT; /* the private key file, in locked memory */
    byok_import_key ik;
    memset(&ik, 0, sizeof(ik));
    kv_secret secret = KV_SECRET_INIT; /* the PIN, or the key file's password */
    char *json = NULL;
    size_t json_len = 0;
    kv_result r = kv_file_read(a->import_key, BYOK_IMPORT_KEY_FILE_MAX, &ik_text, &ik_len);
    if (kv_ok(r)) r = byok_import_key_parse(ik_text, ik_len, &ik);
    if (kv_ok(r) && token) {
        r = read_pin(a, &secret);
        byok_token tok = {a->pkcs11_module, a->token, a->key_label, &secret};
        if (kv_ok(r)) r = byok_file_from_token(&ik, a->kid, hash, &tok, &json, &json_len);
    } else if (kv_ok(r)) {
        r = kv_secret_read_file_exact(&key_file, a->key, KEY_FILE_MAX);
        /* a password only for an encrypted key file (PKCS#8 or traditional PEM) */
        bool encrypted = kv_ok(r) && (bytes_contain(key_file.data, key_file.len, "ENCRYPTED") ||
                                      a->password_file != NULL || a->password_stdin);
        if (encrypted) r = read_password(a, false, &secret);
        if (kv_ok(r))
            r = byok_file_from_key(&ik, a->kid, hash, key_file.data, key_file.len,
                                   encrypted ? &secret : NULL, &json, &json_len);
    }
    kv_secret_free(&secret);
    kv_secret_free(&key_file);
    if (kv_ok(r)) r = kv_file_write_new(a->out, json, json_len, 0600);
    if (kv_ok(r)) {
        print_pair out[] = {{"out", a->out, false},
                            {"kid", a->kid != NULL ? a->kid : ik.kid, false},
                            {"oaep_hash", kv_byok_hash_name(hash), false}};
        print_pairs(stdout, out, KV_ARRAY_LEN(out), a->json);
    }
    free(json);
    free(ik_text);
    byok_import_key_free(&ik);
    return kv_ok(r) ? EXIT_OK : fail();
}

static int cmd_byok_keygen(vc *c, const cli *a)
{
    (void)c;
    if (usage_token(a) != EXIT_OK) return EXIT_USAGE;
    kv_secret pin = KV_SECRET_INIT;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    kv_result r = read_pin(a, &pin);
    byok_token tok = {a->pkcs11_module, a->token, a->key_label, &pin};
    if (kv_ok(r))
        r = byok_token_keygen(&tok, a->bits ? a->bits : BYOK_TENANT_KEY_BITS, &spki, &spki_len);
    kv_secret_free(&pin);
    if (kv_failed(r)) return fail();
    uint8_t digest[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    SHA256(spki, spki_len, digest);
    kv_hex_encode(digest, sizeof(digest), hex);
    free(spki);
    print_pair out[] = {{"token", a->token, false},
                        {"key_label", a->key_label, false},
                        {"fingerprint", hex, false}};
    print_pairs(stdout, out, KV_ARRAY_LEN(out), a->json);
    return EXIT_OK;
}

static int cmd_byok_show(vc *c, const cli *a)
{
    (void)c;
    NEED(byok, "byok");
    uint8_t *file = NULL;
    size_t len = 0;
    kv_byok b;
    kv_result r = kv_file_read(a->byok, KV_BYOK_FILE_MAX, &file, &len);
    if (kv_ok(r)) r = kv_byok_parse(file, len, &b);
    free(file);
    if (kv_failed(r)) return fail();
    char bytes[32];
    snprintf(bytes, sizeof(bytes), "%zu", b.ciphertext_len);
    print_pair out[] = {{"kid", b.kid, false},
                        {"oaep_hash", kv_byok_hash_name(b.oaep_hash), false},
                        {"ciphertext_bytes", bytes, true},
                        {"generator", b.generator, false}};
    print_pairs(stdout, out, KV_ARRAY_LEN(out), a->json);
    kv_byok_free(&b);
    return EXIT_OK;
}

static const cmd commands[] = {
    {"whoami", NULL, cmd_whoami, "", "show your principal and role bindings"},
    {"tenant", "create", cmd_tenant_create, "--name N --subscription S --admin-contact EMAIL...",
     "create a tenant (operator)"},
    {"tenant", "list", cmd_tenant_list, "", "list tenants (operator, auditor)"},
    {"tenant", "show", cmd_tenant_show, "--tenant T", "show a tenant"},
    {"tenant", "enable-self-managed", cmd_tenant_enable, "--tenant T",
     "turn on self-managed keys for a tenant (operator)"},
    {"role", "bind", cmd_role_bind, "--principal P --role R [--tenant T] [--env E]",
     "give a principal a role (operator)"},
    {"role", "unbind", cmd_role_unbind, "--principal P --role R [--tenant T] [--env E]",
     "take a role away (operator)"},
    {"role", "list", cmd_role_list, "[--principal P]", "list role bindings (operator, auditor)"},
    {"env", "create", cmd_env_create, "--tenant T --name N --type production|sandbox",
     "create an environment on the service key (operator)"},
    {"env", "list", cmd_env_list, "--tenant T", "list a tenant's environments"},
    {"env", "show", cmd_env_show, "--env E", "show an environment"},
    {"env", "apply-key", cmd_env_apply, "--env E",
     "encrypt an environment with the tenant's active key (environment-admin)"},
    {"env", "return-key", cmd_env_return, "--env E [--confirm NAME]",
     "return an environment to the service key; production needs its name (environment-admin)"},
    {"key", "generate", cmd_key_generate,
     "--tenant T --name N --out FILE [--password-file F | --password-stdin]",
     "generate an RSA-2048 tenant key; its PFX is written to FILE (tenant-admin)"},
    {"key", "upload", cmd_key_upload,
     "--tenant T --name N (--pfx FILE [--password-file F | --password-stdin] | --byok FILE)",
     "upload a tenant key from a password-protected PFX or a .byok file (tenant-admin)"},
    {"key", "list", cmd_key_list, "--tenant T", "list tenant keys with state and fingerprint"},
    {"tenant", "lock-text", cmd_tenant_lock_text, "--tenant T",
     "show the text to type back to lock the tenant (tenant-admin)"},
    {"tenant", "lock", cmd_tenant_lock,
     "--tenant T (--pfx ACTIVE-KEY.pfx [--password-file F | --password-stdin] | --byok FILE) "
     "[--confirm TEXT]",
     "lock every customer-managed environment; the active key leaves the token (tenant-admin)"},
    {"key", "unlock", cmd_key_unlock,
     "--tenant T --key K (--pfx FILE [--password-file F | --password-stdin] | --byok FILE)",
     "after a lock, upload the locked key again to make it active (tenant-admin)"},
    {"env", "may-restore", cmd_env_restore, "--from SOURCE-ENV --env TARGET-ENV",
     "may a backup of SOURCE be restored into TARGET? exit 0 yes, 6 no (storage-node)"},
    {"env", "may-copy", cmd_env_copy, "--from SOURCE-ENV --env TARGET-ENV",
     "may SOURCE be copied into TARGET? exit 0 yes, 6 no (storage-node)"},
    {"env", "reset", cmd_env_reset, "--env E --confirm NAME",
     "replace every DEK of the environment (data and backups become unreadable); back to the "
     "service key"},
    {"env", "unlock", cmd_env_unlock, "--env E",
     "unlock a locked environment once its key is unlocked (environment-admin)"},
    {"key", "roll-back", cmd_key_rollback, "--tenant T",
     "within 72 h of an activation, make the previous key active again (another tenant-admin)"},
    {"key", "activate", cmd_key_activate, "--tenant T --key K",
     "activate an available key (tenant-admin)"},
    {"db", "create", cmd_db_create, "--env E --name N",
     "create a database DEK; prints its id and a SHA-256 check value (storage-node)"},
    {"db", "unwrap", cmd_db_unwrap, "--env E --db D",
     "unwrap a database DEK; prints its SHA-256 check value, never the key (storage-node)"},
    {"db", "list", cmd_db_list, "--env E", "list an environment's databases"},
    {"audit", "token", cmd_audit_token, "",
     "list token objects with security attributes and what the vault says each is (auditor, "
     "operator)"},
    {"audit", "reconcile", cmd_audit_reconcile, "",
     "compare the token with the vault, read-only: orphan objects, missing keys, policy "
     "violations, keys that should be deleted; exit 0 clean, 11 findings (auditor, operator)"},
    {"audit", "log", cmd_audit_log,
     "[--tenant ID] [--principal P] [--operation OP] [--since T] [--until T]",
     "read the audit log (auditor, operator; T: epoch seconds or UTC ISO time)"},
    {"audit", "export", cmd_audit_export, "--out FILE [--from SEQ] [--to SEQ]",
     "export records with their signed checkpoints for archiving (auditor, operator)"},
    {"audit", "verify", cmd_audit_verify, "[--file EXPORT --public-key PEM]",
     "verify the audit log online, or an export offline (auditor, operator)"},
    {"audit", "key", cmd_audit_key, "[--out FILE]",
     "the audit checkpoint public key as PEM (auditor, operator)"},
    {"clock", "advance", cmd_clock_advance, "--seconds N",
     "move the vault clock (vaultd --dev in test builds only; operator)"},
    {"key", "import-key", cmd_key_import_key, "--tenant T --out FILE",
     "download the subscription's BYOK import key (kid, subscription, PEM) into FILE "
     "(tenant-admin)"},
    {"import-key", "rotate", cmd_import_key_rotate, "--tenant T [--bits 2048|3072|4096]",
     "make a new current import key for the tenant's subscription (operator)"},
    {"import-key", "list", cmd_import_key_list, "--tenant T",
     "list the subscription's import key versions and until when each is accepted"},
    {"byok", "wrap", cmd_byok_wrap,
     "--import-key FILE --out FILE (--key KEY-FILE [--password-file F | --password-stdin] | "
     "--pkcs11-module PATH --token LABEL --key-label LABEL [--pin-file F | --pin-stdin]) "
     "[--oaep-hash sha1|sha256] [--kid KID]",
     "wrap an RSA-2048 tenant key for an import key into a .byok file, in process or inside "
     "your own PKCS#11 token (offline)"},
    {"byok", "keygen", cmd_byok_keygen,
     "--pkcs11-module PATH --token LABEL --key-label LABEL [--pin-file F | --pin-stdin]",
     "generate an extractable RSA-2048 key pair in your own PKCS#11 token, for byok wrap "
     "(offline)"},
    {"byok", "show", cmd_byok_show, "--byok FILE",
     "show what a .byok file names: kid, OAEP hash, ciphertext size, generator (offline)"},
};

static void command_help(FILE *f, const cmd *c)
{
    bool offline = strcmp(c->group, "byok") == 0;
    fprintf(f, "usage: vaultctl %s%s%s %s[--json] %s\n\n%s.\n", c->group, c->verb ? " " : "",
            c->verb ? c->verb : "", offline ? "" : "[--config PROFILE] ", c->args, c->help);
    if (strstr(c->args, "password") != NULL)
        fprintf(f, "\nThe password comes from --password-file FILE (its first line), "
                   "--password-stdin, or a\n"
                   "no-echo prompt on the terminal; never from the command line.\n");
    if (strstr(c->args, "--pin-") != NULL)
        fprintf(f,
                "\nThe token's user PIN comes from --pin-file FILE (its first line), --pin-stdin, "
                "or a\nno-echo prompt on the terminal; never from the command line.  The "
                "module is named\nby its absolute path.\n");
    if (offline)
        fprintf(f, "\nRuns on local files (and your own token): no vault, no profile.  See "
                   "docs/byok.md;\n`vaultctl --help` for exit codes.\n");
    else
        fprintf(f, "\nThe profile comes from --config or $VAULTCTL_CONFIG.  See `vaultctl --help` "
                   "for exit codes.\n");
}

static void help(FILE *f)
{
    fprintf(
        f,
        "usage: vaultctl [--config PROFILE] [--json] <command> [options]\n\n"
        "Drives an hsmvault vaultd over mTLS.  The profile (a file with target, server_name, ca,\n"
        "cert, key) comes from --config or $VAULTCTL_CONFIG; vaultd --dev writes one per role\n"
        "under <state>/clients/.\n\nCommands:\n");
    for (size_t i = 0; i < KV_ARRAY_LEN(commands); i++) {
        char head[64];
        snprintf(head, sizeof(head), "%s%s%s", commands[i].group, commands[i].verb ? " " : "",
                 commands[i].verb ? commands[i].verb : "");
        fprintf(f, "  %-26s %s\n", head, commands[i].help);
        if (commands[i].args[0] != '\0') fprintf(f, "  %-26s   %s\n", "", commands[i].args);
    }
    fprintf(
        f,
        "\nPasswords: --password-file FILE, --password-stdin, or a no-echo prompt; never on the\n"
        "command line.  Output: text, or one JSON object with --json.  Key bytes are never "
        "printed.\n\n"
        "Exit codes: 0 ok, 1 other error, 2 usage, 3 invalid argument, 4 not found,\n"
        "5 permission denied or unauthenticated, 6 failed precondition, 7 vault unavailable or\n"
        "deadline exceeded, 8 already exists, 9 not implemented, 11 audit reconcile found\n"
        "findings (docs/audit-token.md).\n");
}

int main(int argc, char **argv)
{
    enum {
        O_CONFIG = 256,
        O_JSON,
        O_NAME,
        O_TENANT,
        O_ENV,
        O_KEY,
        O_DB,
        O_PRINCIPAL,
        O_ROLE,
        O_TYPE,
        O_SUB,
        O_CONTACT,
        O_OUT,
        O_PFX,
        O_PWFILE,
        O_PWSTDIN,
        O_CONFIRM,
        O_FROM,
        O_SECONDS,
        O_HELP,
        O_BYOK,
        O_IMPORT_KEY,
        O_PKCS11_MODULE,
        O_TOKEN,
        O_KEY_LABEL,
        O_PIN_FILE,
        O_PIN_STDIN,
        O_KID,
        O_OAEP_HASH,
        O_BITS,
        O_OPERATION,
        O_SINCE,
        O_UNTIL,
        O_TO,
        O_FILE,
        O_PUBLIC_KEY,
    };
    static const struct option opts[] = {
        {"config", required_argument, NULL, O_CONFIG},
        {"json", no_argument, NULL, O_JSON},
        {"name", required_argument, NULL, O_NAME},
        {"tenant", required_argument, NULL, O_TENANT},
        {"env", required_argument, NULL, O_ENV},
        {"key", required_argument, NULL, O_KEY},
        {"db", required_argument, NULL, O_DB},
        {"principal", required_argument, NULL, O_PRINCIPAL},
        {"role", required_argument, NULL, O_ROLE},
        {"type", required_argument, NULL, O_TYPE},
        {"subscription", required_argument, NULL, O_SUB},
        {"admin-contact", required_argument, NULL, O_CONTACT},
        {"out", required_argument, NULL, O_OUT},
        {"pfx", required_argument, NULL, O_PFX},
        {"password-file", required_argument, NULL, O_PWFILE},
        {"password-stdin", no_argument, NULL, O_PWSTDIN},
        {"confirm", required_argument, NULL, O_CONFIRM},
        {"from", required_argument, NULL, O_FROM},
        {"seconds", required_argument, NULL, O_SECONDS},
        {"help", no_argument, NULL, O_HELP},
        {"byok", required_argument, NULL, O_BYOK},
        {"import-key", required_argument, NULL, O_IMPORT_KEY},
        {"pkcs11-module", required_argument, NULL, O_PKCS11_MODULE},
        {"token", required_argument, NULL, O_TOKEN},
        {"key-label", required_argument, NULL, O_KEY_LABEL},
        {"pin-file", required_argument, NULL, O_PIN_FILE},
        {"pin-stdin", no_argument, NULL, O_PIN_STDIN},
        {"kid", required_argument, NULL, O_KID},
        {"oaep-hash", required_argument, NULL, O_OAEP_HASH},
        {"bits", required_argument, NULL, O_BITS},
        {"operation", required_argument, NULL, O_OPERATION},
        {"since", required_argument, NULL, O_SINCE},
        {"until", required_argument, NULL, O_UNTIL},
        {"to", required_argument, NULL, O_TO},
        {"file", required_argument, NULL, O_FILE},
        {"public-key", required_argument, NULL, O_PUBLIC_KEY},
        {NULL, 0, NULL, 0},
    };
    cli_init("vaultctl", false);
    cli a = {0};
    const char *config = getenv("VAULTCTL_CONFIG");
    const char *words[2] = {NULL, NULL};
    size_t n_words = 0;
    bool want_help = false;
    int ch;
    opterr = 0;
    /* Options may come before or after the command words. */
    while (optind < argc) {
        if ((ch = getopt_long(argc, argv, "+", opts, NULL)) == -1) {
            if (n_words == 2) return usage_error("unexpected argument '%s'", argv[optind]);
            words[n_words++] = argv[optind++];
            continue;
        }
        switch (ch) {
        case O_CONFIG:
            config = optarg;
            break;
        case O_JSON:
            a.json = true;
            break;
        case O_NAME:
            a.name = optarg;
            break;
        case O_TENANT:
            a.tenant = optarg;
            break;
        case O_ENV:
            a.env = optarg;
            break;
        case O_KEY:
            a.key = optarg;
            break;
        case O_DB:
            a.db = optarg;
            break;
        case O_PRINCIPAL:
            a.principal = optarg;
            break;
        case O_ROLE:
            a.role = optarg;
            break;
        case O_TYPE:
            a.type = optarg;
            break;
        case O_SUB:
            a.subscription = optarg;
            break;
        case O_CONTACT:
            if (a.n_contacts == MAX_CONTACTS)
                return usage_error("at most 32 %s", "--admin-contact");
            a.contacts[a.n_contacts++] = optarg;
            break;
        case O_OUT:
            a.out = optarg;
            break;
        case O_PFX:
            a.pfx = optarg;
            break;
        case O_PWFILE:
            a.password_file = optarg;
            break;
        case O_PWSTDIN:
            a.password_stdin = true;
            break;
        case O_CONFIRM:
            a.confirm = optarg;
            break;
        case O_FROM:
            a.from = optarg;
            break;
        case O_SECONDS: {
            char *end = NULL;
            errno = 0;
            a.seconds = strtoll(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0')
                return usage_error("--seconds takes a number, not '%s'", optarg);
            a.have_seconds = true;
            break;
        }
        case O_HELP:
            want_help = true;
            break;
        case O_BYOK:
            a.byok = optarg;
            break;
        case O_IMPORT_KEY:
            a.import_key = optarg;
            break;
        case O_PKCS11_MODULE:
            a.pkcs11_module = optarg;
            break;
        case O_TOKEN:
            a.token = optarg;
            break;
        case O_KEY_LABEL:
            a.key_label = optarg;
            break;
        case O_PIN_FILE:
            a.pin_file = optarg;
            break;
        case O_PIN_STDIN:
            a.pin_stdin = true;
            break;
        case O_KID:
            a.kid = optarg;
            break;
        case O_OAEP_HASH:
            a.oaep_hash = optarg;
            break;
        case O_BITS:
            if (strcmp(optarg, "2048") != 0 && strcmp(optarg, "3072") != 0 &&
                strcmp(optarg, "4096") != 0)
                return usage_error("--bits is 2048, 3072 or 4096, not '%s'", optarg);
            a.bits = (unsigned)atoi(optarg);
            break;
        case O_OPERATION:
            a.operation = optarg;
            break;
        case O_SINCE:
            a.since = optarg;
            break;
        case O_UNTIL:
            a.until = optarg;
            break;
        case O_TO:
            a.to = optarg;
            break;
        case O_FILE:
            a.file = optarg;
            break;
        case O_PUBLIC_KEY:
            a.public_key = optarg;
            break;
        default:
            return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (n_words == 0) {
        help(want_help ? stdout : stderr);
        return want_help ? EXIT_OK : EXIT_USAGE;
    }
    const cmd *found = NULL;
    for (size_t i = 0; i < KV_ARRAY_LEN(commands) && found == NULL; i++) {
        if (strcmp(commands[i].group, words[0]) != 0) continue;
        if (commands[i].verb == NULL ? n_words == 1
                                     : (n_words == 2 && strcmp(commands[i].verb, words[1]) == 0))
            found = &commands[i];
    }
    if (found == NULL)
        return usage_error("unknown command '%s'", n_words == 2 ? words[1] : words[0]);
    if (want_help) {
        command_help(stdout, found);
        return EXIT_OK;
    }
    if (a.password_file != NULL && a.password_stdin)
        return usage_error("give only one of --password-file and %s", "--password-stdin");
    /* byok commands work on local files and the admin's own token: no vault */
    if (strcmp(found->group, "byok") == 0) return found->fn(NULL, &a);
    /* audit verify --file: offline, the export and the public key only */
    if (found->fn == cmd_audit_verify && (a.file != NULL || a.public_key != NULL))
        return found->fn(NULL, &a);
    if (config == NULL)
        return usage_error("no profile: give %s or set VAULTCTL_CONFIG", "--config PROFILE");
    vc_profile p;
    if (kv_failed(vc_profile_load(config, &p))) return fail();
    vc *c = NULL;
    if (kv_failed(vc_open(&p, &c))) return fail();
    int rc = found->fn(c, &a);
    vc_close(c);
    return rc;
}
