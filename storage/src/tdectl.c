/*
 * tdectl.c: the CLI of tdenode (the Pages service) over libvaultclient's
 * generic call (the same mTLS client vaultctl uses): databases, pages,
 * backups, restore, copy, environment reset.  docs/tdectl.md.
 *
 * Page data goes through files or stdin/stdout, never argv; one line on
 * stderr per error; exit codes are vaultctl's plus 10 for DATA_LOSS.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hsmvault/v1/pages.pb-c.h"
#include "kv_file.h"
#include "kv_pb.h"
#include "kv_secret.h"
#include "page.h"
#include "cli.h"
#include "vaultclient.h"

typedef struct {
    const char *env, *db, *name, *page, *in, *out, *backup, *to_env, *to_db, *confirm;
    bool flush, json;
} cli;

typedef int (*cmd_fn)(vc *c, const cli *a);
typedef struct {
    const char *group, *verb;
    cmd_fn fn;
    const char *args, *help;
} cmd;

#define NEED(field, opt)                                                                           \
    do {                                                                                           \
        if (a->field == NULL) return cli_usage_error("%s is required", "--" opt);                  \
    } while (0)

#define M(name) "/hsmvault.v1.Pages/" name

static int with_ref(vc *c, const cli *a, const char *method, const ProtobufCMessageDescriptor *d)
{
    NEED(env, "env");
    NEED(db, "db");
    Hsmvault__V1__NodeDatabaseRef ref = HSMVAULT__V1__NODE_DATABASE_REF__INIT;
    ref.environment_id = (char *)(uintptr_t)a->env;
    ref.database_id = (char *)(uintptr_t)a->db;
    return cli_call_print(c, a->json, method, &ref.base, d);
}

static int cmd_db_create(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(name, "name");
    Hsmvault__V1__CreateNodeDatabaseRequest req = HSMVAULT__V1__CREATE_NODE_DATABASE_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    req.name = (char *)(uintptr_t)a->name;
    return cli_call_print(c, a->json, M("CreateDatabase"), &req.base,
                          &hsmvault__v1__node_database__descriptor);
}

static int cmd_db_open(vc *c, const cli *a)
{
    return with_ref(c, a, M("OpenDatabase"), &hsmvault__v1__node_database__descriptor);
}

static int cmd_db_show(vc *c, const cli *a)
{
    return with_ref(c, a, M("GetDatabase"), &hsmvault__v1__node_database__descriptor);
}

static int cmd_db_list(vc *c, const cli *a)
{
    Hsmvault__V1__ListNodeDatabasesRequest req = HSMVAULT__V1__LIST_NODE_DATABASES_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)(a->env ? a->env : "");
    return cli_call_print(c, a->json, M("ListDatabases"), &req.base,
                          &hsmvault__v1__list_node_databases_response__descriptor);
}

static int cmd_flush(vc *c, const cli *a)
{
    return with_ref(c, a, M("Flush"), &hsmvault__v1__flush_response__descriptor);
}

static int parse_page(const cli *a, uint64_t *out)
{
    NEED(page, "page");
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(a->page, &end, 10);
    if (errno != 0 || end == a->page || *end != '\0' || a->page[0] == '-')
        return cli_usage_error("--page takes a page number, not '%s'", a->page);
    *out = v;
    return EXIT_OK;
}

/* Page data: --in FILE or stdin, at most TDE_PAGE_DATA bytes, zero-padded. */
static int read_page_data(const cli *a, uint8_t data[TDE_PAGE_DATA])
{
    int fd = 0;
    if (a->in != NULL && strcmp(a->in, "-") != 0) {
        fd = open(a->in, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "tdectl: cannot open %s: %s\n", a->in, strerror(errno));
            return EXIT_INVALID;
        }
    }
    size_t got = 0;
    uint8_t extra;
    for (;;) {
        ssize_t n =
            got < TDE_PAGE_DATA ? read(fd, data + got, TDE_PAGE_DATA - got) : read(fd, &extra, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (got == TDE_PAGE_DATA) {
            if (fd != 0) close(fd);
            fprintf(stderr, "tdectl: page data is at most %u bytes\n", TDE_PAGE_DATA);
            return EXIT_INVALID;
        }
        got += (size_t)n;
    }
    if (fd != 0) close(fd);
    memset(data + got, 0, TDE_PAGE_DATA - got);
    return EXIT_OK;
}

static int cmd_page_write(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(db, "db");
    uint64_t number;
    int rc = parse_page(a, &number);
    if (rc != EXIT_OK) return rc;
    static uint8_t data[TDE_PAGE_DATA];
    if ((rc = read_page_data(a, data)) != EXIT_OK) return rc;
    Hsmvault__V1__NodeDatabaseRef ref = HSMVAULT__V1__NODE_DATABASE_REF__INIT;
    ref.environment_id = (char *)(uintptr_t)a->env;
    ref.database_id = (char *)(uintptr_t)a->db;
    Hsmvault__V1__Page page = HSMVAULT__V1__PAGE__INIT;
    page.number = number;
    page.data = (ProtobufCBinaryData){TDE_PAGE_DATA, data};
    Hsmvault__V1__WritePageRequest req = HSMVAULT__V1__WRITE_PAGE_REQUEST__INIT;
    req.database = &ref;
    req.page = &page;
    req.flush = a->flush;
    rc = cli_call_print(c, a->json, M("WritePage"), &req.base,
                        &hsmvault__v1__write_pages_response__descriptor);
    kv_wipe(data, sizeof(data));
    return rc;
}

static int cmd_page_read(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(db, "db");
    uint64_t number;
    int rc = parse_page(a, &number);
    if (rc != EXIT_OK) return rc;
    Hsmvault__V1__NodeDatabaseRef ref = HSMVAULT__V1__NODE_DATABASE_REF__INIT;
    ref.environment_id = (char *)(uintptr_t)a->env;
    ref.database_id = (char *)(uintptr_t)a->db;
    Hsmvault__V1__ReadPageRequest req = HSMVAULT__V1__READ_PAGE_REQUEST__INIT;
    req.database = &ref;
    req.number = number;
    Hsmvault__V1__Page *p = NULL;
    if (kv_failed(vc_call(c, M("ReadPage"), &req.base, &hsmvault__v1__page__descriptor,
                          (ProtobufCMessage **)&p)))
        return cli_fail();
    kv_result r = KV_SUCCESS;
    if (a->out != NULL && strcmp(a->out, "-") != 0) {
        r = kv_file_write_new(a->out, p->data.data, p->data.len, 0600);
    } else {
        size_t done = 0;
        while (done < p->data.len) {
            ssize_t w = write(1, p->data.data + done, p->data.len - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            done += (size_t)w;
        }
        if (done < p->data.len)
            r = kv_error_set(KV_ERR_UNAVAILABLE, __FILE__, __LINE__, "cannot write the page out");
    }
    kv_pb_free(&p->base);
    return kv_ok(r) ? EXIT_OK : cli_fail();
}

static int cmd_backup_create(vc *c, const cli *a)
{
    return with_ref(c, a, M("Backup"), &hsmvault__v1__node_backup__descriptor);
}

static int cmd_backup_list(vc *c, const cli *a)
{
    if (a->db != NULL && a->env == NULL) return cli_usage_error("--db needs %s", "--env");
    Hsmvault__V1__ListNodeBackupsRequest req = HSMVAULT__V1__LIST_NODE_BACKUPS_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)(a->env ? a->env : "");
    req.database_id = (char *)(uintptr_t)(a->db ? a->db : "");
    return cli_call_print(c, a->json, M("ListBackups"), &req.base,
                          &hsmvault__v1__list_node_backups_response__descriptor);
}

static int need_target(const cli *a)
{
    NEED(to_env, "to-env");
    if ((a->to_db == NULL) == (a->name == NULL))
        return cli_usage_error("give exactly one of --to-db DB and %s", "--name NEW-NAME");
    return EXIT_OK;
}

static int cmd_restore(vc *c, const cli *a)
{
    NEED(backup, "backup");
    int rc = need_target(a);
    if (rc != EXIT_OK) return rc;
    Hsmvault__V1__RestoreRequest req = HSMVAULT__V1__RESTORE_REQUEST__INIT;
    req.backup_id = (char *)(uintptr_t)a->backup;
    req.target_environment_id = (char *)(uintptr_t)a->to_env;
    req.target_database_id = (char *)(uintptr_t)(a->to_db ? a->to_db : "");
    req.new_database_name = (char *)(uintptr_t)(a->name ? a->name : "");
    return cli_call_print(c, a->json, M("Restore"), &req.base,
                          &hsmvault__v1__node_database__descriptor);
}

static int cmd_copy(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(db, "db");
    int rc = need_target(a);
    if (rc != EXIT_OK) return rc;
    Hsmvault__V1__NodeDatabaseRef src = HSMVAULT__V1__NODE_DATABASE_REF__INIT;
    src.environment_id = (char *)(uintptr_t)a->env;
    src.database_id = (char *)(uintptr_t)a->db;
    Hsmvault__V1__CopyRequest req = HSMVAULT__V1__COPY_REQUEST__INIT;
    req.source = &src;
    req.target_environment_id = (char *)(uintptr_t)a->to_env;
    req.target_database_id = (char *)(uintptr_t)(a->to_db ? a->to_db : "");
    req.new_database_name = (char *)(uintptr_t)(a->name ? a->name : "");
    return cli_call_print(c, a->json, M("Copy"), &req.base,
                          &hsmvault__v1__node_database__descriptor);
}

static int cmd_env_reset(vc *c, const cli *a)
{
    NEED(env, "env");
    NEED(confirm, "confirm");
    Hsmvault__V1__NodeResetRequest req = HSMVAULT__V1__NODE_RESET_REQUEST__INIT;
    req.environment_id = (char *)(uintptr_t)a->env;
    req.confirmation_name = (char *)(uintptr_t)a->confirm;
    return cli_call_print(c, a->json, M("ResetEnvironment"), &req.base,
                          &hsmvault__v1__node_reset_response__descriptor);
}

static const cmd commands[] = {
    {"db", "create", cmd_db_create, "--env E --name N",
     "create a database in an environment (a new DEK from the vault)"},
    {"db", "open", cmd_db_open, "--env E --db D",
     "lease a database's DEK (after a reset: start it again empty)"},
    {"db", "show", cmd_db_show, "--env E --db D", "show a database's state, lease and counters"},
    {"db", "list", cmd_db_list, "[--env E]", "list the databases on the node"},
    {"page", "write", cmd_page_write, "--env E --db D --page N [--in FILE] [--flush]",
     "write one page (data from FILE or stdin, at most 8144 bytes, zero-padded)"},
    {"page", "read", cmd_page_read, "--env E --db D --page N [--out FILE]",
     "read one page (8144 bytes to FILE, never replaced, or stdout)"},
    {"flush", NULL, cmd_flush, "--env E --db D", "make every acknowledged write durable"},
    {"backup", "create", cmd_backup_create, "--env E --db D",
     "back up a database (sealed pages and a manifest; no key, no plaintext)"},
    {"backup", "list", cmd_backup_list, "[--env E [--db D]]", "list backups on the node"},
    {"restore", NULL, cmd_restore, "--backup B --to-env E (--to-db D | --name N)",
     "re-seal a backup into a database (same environment or same customer-managed key)"},
    {"copy", NULL, cmd_copy, "--env E --db D --to-env E2 (--to-db D2 | --name N)",
     "copy a database into another environment with the same customer-managed key"},
    {"env", "reset", cmd_env_reset, "--env E --confirm NAME",
     "reset an environment: fresh DEKs in the vault, its pages and backups deleted here"},
};

static void help(FILE *f)
{
    fprintf(f, "usage: tdectl [--config PROFILE] [--json] <command> [options]\n\n"
               "Drives a tdenode (hsmvault's TDE storage node) over mTLS.  The profile (target,\n"
               "server_name, ca, cert, key) comes from --config or $TDECTL_CONFIG; tdenode --dev\n"
               "writes tdenode-engine.conf and tdenode-admin.conf under <vault state>/clients/.\n\n"
               "Commands:\n");
    for (size_t i = 0; i < KV_ARRAY_LEN(commands); i++) {
        char head[64];
        snprintf(head, sizeof(head), "%s%s%s", commands[i].group, commands[i].verb ? " " : "",
                 commands[i].verb ? commands[i].verb : "");
        fprintf(f, "  %-16s %s\n  %-16s   %s\n", head, commands[i].help, "", commands[i].args);
    }
    fprintf(f, "\nPage data travels through files and pipes, never the command line.\n\n"
               "Exit codes: 0 ok, 1 other error, 2 usage, 3 invalid argument, 4 not found,\n"
               "5 permission denied, 6 failed precondition (e.g. environment locked, vault\n"
               "refused), 7 unavailable (tdenode or the vault unreachable), 8 already exists,\n"
               "9 not implemented, 10 data loss (a page failed authentication).\n");
}

int main(int argc, char **argv)
{
    /* Long options that take a value, by the cli field they set. */
    static const struct {
        const char *name;
        size_t field;
    } values[] = {
        {"env", offsetof(cli, env)},       {"db", offsetof(cli, db)},
        {"name", offsetof(cli, name)},     {"page", offsetof(cli, page)},
        {"in", offsetof(cli, in)},         {"out", offsetof(cli, out)},
        {"backup", offsetof(cli, backup)}, {"to-env", offsetof(cli, to_env)},
        {"to-db", offsetof(cli, to_db)},   {"confirm", offsetof(cli, confirm)},
    };
    enum { O_CONFIG = 256, O_JSON, O_FLUSH, O_HELP, O_VALUE = 512 };
    struct option opts[KV_ARRAY_LEN(values) + 5];
    size_t k = 0;
    for (; k < KV_ARRAY_LEN(values); k++)
        opts[k] = (struct option){values[k].name, required_argument, NULL, O_VALUE + (int)k};
    opts[k++] = (struct option){"config", required_argument, NULL, O_CONFIG};
    opts[k++] = (struct option){"json", no_argument, NULL, O_JSON};
    opts[k++] = (struct option){"flush", no_argument, NULL, O_FLUSH};
    opts[k++] = (struct option){"help", no_argument, NULL, O_HELP};
    opts[k] = (struct option){NULL, 0, NULL, 0};

    cli_init("tdectl", true);
    cli a = {0};
    const char *config = getenv("TDECTL_CONFIG");
    const char *words[2] = {NULL, NULL};
    size_t n_words = 0;
    bool want_help = false;
    int ch;
    opterr = 0;
    while (optind < argc) {
        if ((ch = getopt_long(argc, argv, "+", opts, NULL)) == -1) {
            if (n_words == 2) return cli_usage_error("unexpected argument '%s'", argv[optind]);
            words[n_words++] = argv[optind++];
            continue;
        }
        if (ch >= O_VALUE && ch < O_VALUE + (int)KV_ARRAY_LEN(values))
            *(const char **)((char *)&a + values[ch - O_VALUE].field) = optarg;
        else if (ch == O_CONFIG)
            config = optarg;
        else if (ch == O_JSON)
            a.json = true;
        else if (ch == O_FLUSH)
            a.flush = true;
        else if (ch == O_HELP)
            want_help = true;
        else
            return cli_usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
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
        return cli_usage_error("unknown command '%s'", n_words == 2 ? words[1] : words[0]);
    if (want_help) {
        printf("usage: tdectl %s%s%s [--config PROFILE] [--json] %s\n\n%s.\n", found->group,
               found->verb ? " " : "", found->verb ? found->verb : "", found->args, found->help);
        return EXIT_OK;
    }
    if (config == NULL)
        return cli_usage_error("no profile: give %s or set TDECTL_CONFIG", "--config PROFILE");
    vc_profile p;
    if (kv_failed(vc_profile_load(config, &p))) return cli_fail();
    vc *c = NULL;
    if (kv_failed(vc_open(&p, &c))) return cli_fail();
    int rc = found->fn(c, &a);
    vc_close(c);
    return rc;
}
