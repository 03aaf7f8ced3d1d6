/*
 * audit_cli.h: vaultctl's audit log commands (audit log, export, verify,
 * key); see docs/audit.md.
 */
#ifndef AUDIT_CLI_H
#define AUDIT_CLI_H

#include <stdbool.h>

#include "vaultclient.h"

typedef struct {
    const char *tenant, *principal, *operation, *since, *until; /* audit log filters */
    const char *from, *to;                                      /* export range (seq) */
    const char *out, *file, *public_key;
    bool json;
} audit_cli_args;

int audit_cli_log(vc *c, const audit_cli_args *a);
int audit_cli_export(vc *c, const audit_cli_args *a);
/* Online (c != NULL) or offline (--file and --public-key; c is NULL). */
int audit_cli_verify(vc *c, const audit_cli_args *a);
int audit_cli_key(vc *c, const audit_cli_args *a);

#endif
