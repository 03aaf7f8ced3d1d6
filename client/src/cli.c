/*
 * cli.c: exit codes, error lines and reply printing shared by vaultctl and
 * tdectl (see cli.h).  Never prints key bytes: replies go through print.c.
 */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>

#include "kv_pb.h"
#include "print.h"

static const char *cli_tool = "cli";
static bool cli_data_loss;

void cli_init(const char *tool, bool data_loss_exit)
{
    cli_tool = tool;
    cli_data_loss = data_loss_exit;
}

int cli_exit_for(kv_code code)
{
    switch (code) {
    case KV_ERR_INVALID_ARGUMENT:
    case KV_ERR_OUT_OF_RANGE:
    case KV_ERR_RESOURCE_EXHAUSTED:
        return EXIT_INVALID;
    case KV_ERR_NOT_FOUND:
        return EXIT_NOT_FOUND;
    case KV_ERR_PERMISSION_DENIED:
    case KV_ERR_UNAUTHENTICATED:
        return EXIT_DENIED;
    case KV_ERR_FAILED_PRECONDITION:
    case KV_ERR_ABORTED:
        return EXIT_PRECONDITION;
    case KV_ERR_UNAVAILABLE:
    case KV_ERR_DEADLINE_EXCEEDED:
        return EXIT_UNAVAILABLE;
    case KV_ERR_ALREADY_EXISTS:
        return EXIT_EXISTS;
    case KV_ERR_UNIMPLEMENTED:
        return EXIT_UNIMPLEMENTED;
    case KV_ERR_DATA_LOSS:
        return cli_data_loss ? EXIT_DATA_LOSS : EXIT_ERROR;
    default:
        return EXIT_ERROR;
    }
}

int cli_fail(void)
{
    fprintf(stderr, "%s: %s: %s\n", cli_tool, kv_code_name(kv_error_code()), kv_error_msg());
    return cli_exit_for(kv_error_code());
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_tool);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see %s --help)\n", cli_tool);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_call_print(vc *c, bool json, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *resp = NULL;
    if (kv_failed(vc_call(c, method, req, desc, &resp))) return cli_fail();
    print_message(stdout, resp, json);
    kv_pb_free(resp);
    return EXIT_OK;
}
