/*
 * cli.h: what the CLIs over libvaultclient (vaultctl, tdectl) share: exit
 * codes, the one line on stderr for an error, printing a reply.
 */
#ifndef CLI_H
#define CLI_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

#include "kv_result.h"
#include "vaultclient.h"

/* Exit codes (documented in each tool's --help and docs). */
enum {
    EXIT_OK = 0,
    EXIT_ERROR = 1,
    EXIT_USAGE = 2,
    EXIT_INVALID = 3,
    EXIT_NOT_FOUND = 4,
    EXIT_DENIED = 5,
    EXIT_PRECONDITION = 6,
    EXIT_UNAVAILABLE = 7,
    EXIT_EXISTS = 8,
    EXIT_UNIMPLEMENTED = 9,
    EXIT_DATA_LOSS = 10, /* tools that cli_init with data_loss_exit only */
    EXIT_FINDINGS = 11,  /* vaultctl audit reconcile: the token and the vault disagree */
};

/* The tool's name for messages; data_loss_exit: DATA_LOSS exits 10, else 1. */
void cli_init(const char *tool, bool data_loss_exit);
int cli_exit_for(kv_code code);
/* Prints "tool: CODE: message" for the error record; its exit code. */
int cli_fail(void);
/* Prints "tool: <message> (see tool --help)"; EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Calls method and prints the reply as text or JSON (print.h). */
int cli_call_print(vc *c, bool json, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *desc);

#endif
