/*
 * print.h: prints any hsmvault.v1 reply message as text or JSON by walking
 * its protobuf-c descriptor, so every vaultctl command has --json.
 * Never prints a bytes field (PFX files and DEKs are bytes).
 */
#ifndef VAULTCTL_PRINT_H
#define VAULTCTL_PRINT_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdio.h>

void print_message(FILE *f, const ProtobufCMessage *m, bool json);

/* Results that are no reply message (vaultctl's offline commands): name and
 * value pairs as "name: value" lines or one JSON object (strings escaped;
 * number values are printed bare in JSON). */
typedef struct {
    const char *name;
    const char *value;
    bool number;
} print_pair;
void print_pairs(FILE *f, const print_pair *pairs, size_t n, bool json);

#endif
