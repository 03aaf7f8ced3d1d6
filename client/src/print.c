/*
 * print.c: descriptor-driven text and JSON output for vaultctl.
 * Must never print bytes fields (key material) nor unescaped strings in JSON.
 */
#include "print.h"

#include <ctype.h>
#include <string.h>

#include "kv_clock.h"

static void print_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* "KEY_STATE_ACTIVE" -> "active", using the enum's first value's prefix. */
static void print_enum_name(FILE *f, const ProtobufCEnumDescriptor *d, int value, bool json)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);
    if (v == NULL) {
        fprintf(f, "%d", value);
        return;
    }
    const char *first = d->n_values > 0 ? d->values[0].name : "";
    size_t pre = 0;
    for (size_t i = 0; first[i] && v->name[i] && first[i] == v->name[i]; i++)
        if (first[i] == '_') pre = i + 1;
    char out[64];
    size_t o = 0;
    for (const char *p = v->name + pre; *p && o + 1 < sizeof(out); p++)
        out[o++] = *p == '_' ? '-' : (char)tolower((unsigned char)*p);
    out[o] = '\0';
    if (json)
        print_json_string(f, out);
    else
        fputs(out, f);
}

static bool field_is_time(const ProtobufCFieldDescriptor *fd)
{
    size_t n = strlen(fd->name);
    return fd->type == PROTOBUF_C_TYPE_INT64 &&
           ((n > 3 && strcmp(fd->name + n - 3, "_at") == 0) ||
            strcmp(fd->name, "unlock_not_before") == 0 || strcmp(fd->name, "now") == 0);
}

static void print_message_at(FILE *f, const ProtobufCMessage *m, bool json, int indent);

static void print_scalar(FILE *f, const ProtobufCFieldDescriptor *fd, const void *p, bool json,
                         int indent)
{
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        if (json)
            print_json_string(f, s ? s : "");
        else
            fputs(s ? s : "", f);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        fputs(*(const protobuf_c_boolean *)p ? "true" : "false", f);
        break;
    case PROTOBUF_C_TYPE_INT32:
        fprintf(f, "%d", *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
        fprintf(f, "%u", *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
        fprintf(f, "%llu", (unsigned long long)*(const uint64_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64: {
        int64_t v = *(const int64_t *)p;
        if (!json && field_is_time(fd) && v > 0) {
            char t[32];
            kv_clock_format(v, t, sizeof(t));
            fputs(t, f);
        } else if (!json && field_is_time(fd) && v == 0) {
            fputs("-", f); /* never happened */
        } else {
            fprintf(f, "%lld", (long long)v);
        }
        break;
    }
    case PROTOBUF_C_TYPE_ENUM:
        print_enum_name(f, fd->descriptor, *(const int *)p, json);
        break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
        if (sub == NULL)
            fputs(json ? "null" : "", f);
        else
            print_message_at(f, sub, json, indent + 1);
        break;
    }
    default:
        fputs(json ? "null" : "", f);
        break;
    }
}

static size_t field_size(const ProtobufCFieldDescriptor *fd)
{
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

static void print_message_at(FILE *f, const ProtobufCMessage *m, bool json, int indent)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    bool first = true;
    if (json) fputc('{', f);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        if (fd->type == PROTOBUF_C_TYPE_BYTES) continue; /* key material is never printed */
        const uint8_t *base = (const uint8_t *)m;
        bool repeated = fd->label == PROTOBUF_C_LABEL_REPEATED;
        bool nested = fd->type == PROTOBUF_C_TYPE_MESSAGE;
        if (json) {
            fprintf(f, "%s\"%s\":", first ? "" : ",", fd->name);
        } else {
            fprintf(f, "%*s%s:%s", indent * 2, "", fd->name, nested || repeated ? "\n" : " ");
        }
        first = false;
        if (repeated) {
            size_t n = *(const size_t *)(base + fd->quantifier_offset);
            const uint8_t *arr = *(uint8_t *const *)(base + fd->offset);
            if (json) fputc('[', f);
            for (size_t j = 0; j < n; j++) {
                if (json && j) fputc(',', f);
                if (!json && !nested) fprintf(f, "%*s- ", (indent + 1) * 2, "");
                print_scalar(f, fd, arr + j * field_size(fd), json, indent);
                if (!json && !nested) fputc('\n', f);
                if (!json && nested && j + 1 < n) fputc('\n', f);
            }
            if (json) fputc(']', f);
        } else {
            print_scalar(f, fd, base + fd->offset, json, indent);
            if (!json && !nested) fputc('\n', f);
        }
    }
    if (json) fputc('}', f);
}

void print_message(FILE *f, const ProtobufCMessage *m, bool json)
{
    print_message_at(f, m, json, 0);
    if (json) fputc('\n', f);
}

void print_pairs(FILE *f, const print_pair *pairs, size_t n, bool json)
{
    if (json) fputc('{', f);
    for (size_t i = 0; i < n; i++) {
        if (!json) {
            fprintf(f, "%s: %s\n", pairs[i].name, pairs[i].value);
            continue;
        }
        fprintf(f, "%s\"%s\":", i ? "," : "", pairs[i].name);
        if (pairs[i].number)
            fputs(pairs[i].value, f);
        else
            print_json_string(f, pairs[i].value);
    }
    if (json) fputs("}\n", f);
}
