/*
 * reconcile.c: keeps the token and the store in agreement, and tells the HSM
 * operator where they do not.  One matching (vault_match_object: which record
 * names a token object, and whether that record wants it in the token) and
 * one set of findings (vault_find) serve all three users:
 *   - start-up vault_reconcile destroys the objects a finding marks
 *     removed_at_start (hsmvault:* objects no record wants: left by a crash
 *     between token create and store commit, or by one between a commit and
 *     the destroy that follows it) and logs the rest;
 *   - Audit/ListTokenObjects shows every object with what the vault says it is;
 *   - Audit/Reconcile returns the findings and changes nothing.
 * Must never destroy an object that a record wants, nor one whose label is
 * not ours.  The policy table is documented in docs/audit-token.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kv_base64.h"
#include "kv_clock.h"
#include "kv_log.h"
#include "kv_pb.h"
#include "vault.h"

#define VAULT_OBJ_HEX_MAX (2 * sizeof(((hsm_object_info *)0)->id) + 1)

/* What the vault knows: every key record, import key record, the audit
 * log's key ids and every token object. */
typedef struct {
    store_list keys, imports;
    char audit_hex[2][VAULT_OBJ_HEX_MAX]; /* [0] HMAC key, [1] checkpoint key; "" if none */
    hsm_object_info *objs;
    size_t n_objs;
} vault_inv;

typedef enum {
    VOBJ_UNKNOWN,
    VOBJ_TENANT_KEY,
    VOBJ_SERVICE_KEY,
    VOBJ_IMPORT_KEY,
    VOBJ_AUDIT_HMAC,
    VOBJ_AUDIT_SIGN,
    VOBJ_AUDIT_ANCHOR, /* the audit log's anchor data object (no CKA_ID; docs/audit.md) */
} vault_obj_role;

static const char *vault_obj_role_name(vault_obj_role r)
{
    static const char *const names[] = {"unknown",     "tenant-key",     "service-key",
                                        "import-key",  "audit-hmac-key", "audit-checkpoint-key",
                                        "audit-anchor"};
    return names[r];
}

/* The record that names a token object, and whether it wants it there. */
typedef struct {
    vault_obj_role role;
    const KeyRecord *key;
    const ImportKeyRecord *import;
    bool expected;
} vault_match;

static const KeyRecord *vault_key_by_hsm_id(const store_list *l, const uint8_t *id, size_t id_len)
{
    for (size_t i = 0; i < l->n; i++) {
        const KeyRecord *k = (const KeyRecord *)l->items[i];
        if (k->hsm_id.len == id_len && memcmp(k->hsm_id.data, id, id_len) == 0) return k;
    }
    return NULL;
}

static bool vault_key_expected_in_token(const KeyRecord *k)
{
    return k->state != HSMVAULT__V1__KEY_STATE__KEY_STATE_DELETED &&
           k->state != HSMVAULT__V1__KEY_STATE__KEY_STATE_LOCKED;
}

static bool vault_obj_hex_is(const hsm_object_info *o, const char *hex)
{
    if (hex[0] == '\0' || strlen(hex) != 2 * o->id_len) return false;
    char mine[VAULT_OBJ_HEX_MAX];
    kv_hex_encode(o->id, o->id_len, mine);
    return strcasecmp(mine, hex) == 0;
}

static vault_obj_role vault_key_role(const KeyRecord *k)
{
    return k->source == HSMVAULT__V1__KEY_SOURCE__KEY_SOURCE_SERVICE ? VOBJ_SERVICE_KEY
                                                                     : VOBJ_TENANT_KEY;
}

static vault_match vault_match_object(const vault_inv *inv, const hsm_object_info *o)
{
    vault_match m = {.role = VOBJ_UNKNOWN};
    m.key = vault_key_by_hsm_id(&inv->keys, o->id, o->id_len);
    if (m.key != NULL) {
        m.role = vault_key_role(m.key);
        m.expected = vault_key_expected_in_token(m.key);
        return m;
    }
    m.import = vault_import_key_by_hsm_id(&inv->imports, o->id, o->id_len);
    if (m.import != NULL) {
        m.role = VOBJ_IMPORT_KEY;
        m.expected = !m.import->retired;
        return m;
    }
    for (int a = 0; a < 2; a++)
        if (vault_obj_hex_is(o, inv->audit_hex[a])) {
            m.role = a == 0 ? VOBJ_AUDIT_HMAC : VOBJ_AUDIT_SIGN;
            m.expected = true;
        }
    if (o->id_len == 0 && strcmp(o->label, VAULT_AUDIT_ANCHOR_LABEL) == 0)
        m.role = VOBJ_AUDIT_ANCHOR, m.expected = true;
    return m;
}

/* meta key -> out; absent is "" (no audit log keys yet). */
static kv_result vault_meta_optional(store_txn *t, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    if (kv_ok(store_meta_get(t, key, out, cap))) return KV_SUCCESS;
    if (kv_error_code() != KV_ERR_NOT_FOUND) return KV_FAILURE;
    kv_error_clear();
    out[0] = '\0';
    return KV_SUCCESS;
}

static void vault_inv_free(vault_inv *inv)
{
    store_list_free(&inv->keys);
    store_list_free(&inv->imports);
    free(inv->objs);
    memset(inv, 0, sizeof(*inv));
}

/* Loads the store's records (one snapshot), then lists the token. */
static kv_result vault_inventory(vault *v, vault_inv *inv)
{
    memset(inv, 0, sizeof(*inv));
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = store_collect(t, STORE_KEYS, "", &hsmvault__store__key_record__descriptor, NULL,
                                NULL, &inv->keys);
    if (kv_ok(r)) r = vault_import_keys_collect(t, &inv->imports);
    if (kv_ok(r))
        r = vault_meta_optional(t, VAULT_META_AUDIT_HMAC_ID, inv->audit_hex[0],
                                sizeof(inv->audit_hex[0]));
    if (kv_ok(r))
        r = vault_meta_optional(t, VAULT_META_AUDIT_SIGN_ID, inv->audit_hex[1],
                                sizeof(inv->audit_hex[1]));
    store_read_end(t);
    if (kv_ok(r)) r = hsm_objects_list(v->hsm, &inv->objs, &inv->n_objs);
    if (kv_failed(r)) vault_inv_free(inv);
    return r;
}

/* ---- policy (docs/audit-token.md) ---- */

enum {
    VOP_DECRYPT = 1u << 0,
    VOP_ENCRYPT = 1u << 1,
    VOP_SIGN = 1u << 2,
    VOP_VERIFY = 1u << 3,
    VOP_UNWRAP = 1u << 4,
    VOP_WRAP = 1u << 5,
    VOP_DERIVE = 1u << 6,
    VOP_ANY = 0x7f,
};

typedef struct {
    vault_obj_role role;
    const char *object_class; /* the only class of secret material the role has */
    bool need_private;        /* CKA_PRIVATE */
    bool born_in_token;       /* generated in the token: NEVER_EXTRACTABLE, ALWAYS_SENSITIVE */
    unsigned allowed;         /* operations the role needs */
    const char *rule;         /* for the finding's detail */
} vault_policy;

static const vault_policy vault_policies[] = {
    {VOBJ_TENANT_KEY, "private-key", true, false, VOP_DECRYPT | VOP_UNWRAP,
     "a tenant key is sensitive, not extractable, private, decrypt/unwrap only"},
    {VOBJ_SERVICE_KEY, "private-key", true, true, VOP_DECRYPT | VOP_UNWRAP,
     "a service key is generated in the token: sensitive, never extractable, private, "
     "decrypt/unwrap only"},
    {VOBJ_IMPORT_KEY, "private-key", true, true, VOP_UNWRAP,
     "an import key is generated in the token: sensitive, never extractable, private, unwrap "
     "only"},
    {VOBJ_AUDIT_HMAC, "secret-key", false, false, VOP_ANY,
     "the audit HMAC key is sensitive and not extractable"},
    {VOBJ_AUDIT_SIGN, "private-key", true, false, VOP_SIGN,
     "the audit checkpoint key is sensitive, not extractable, private, sign only"},
};

static void vault_why(char *why, size_t cap, const char *what)
{
    size_t n = strlen(why);
    snprintf(why + n, cap - n, "%s%s", n ? ", " : "", what);
}

/* Fills why with what the object breaks of its role's policy ("" if none).
 * Public keys carry no secret and have no policy; an object of a class the
 * role does not make (e.g. a secret key with a tenant key's id) breaks it. */
static const vault_policy *vault_policy_check(const vault_match *m, const hsm_object_info *o,
                                              char *why, size_t cap)
{
    why[0] = '\0';
    const vault_policy *p = NULL;
    for (size_t i = 0; i < KV_ARRAY_LEN(vault_policies); i++)
        if (vault_policies[i].role == m->role) p = &vault_policies[i];
    if (p == NULL || strcmp(o->object_class, "public-key") == 0) return p;
    if (strcmp(o->object_class, p->object_class) != 0) {
        snprintf(why, cap,
                 "a %s object carries its id (the vault makes only a %s and its public "
                 "key)",
                 o->object_class, p->object_class);
        return p;
    }
    if (!o->sensitive) vault_why(why, cap, "not sensitive");
    if (o->extractable) vault_why(why, cap, "extractable");
    if (p->need_private && !o->is_private) vault_why(why, cap, "not private");
    if (p->born_in_token && !o->never_extractable) vault_why(why, cap, "not never-extractable");
    if (p->born_in_token && !o->always_sensitive) vault_why(why, cap, "not always-sensitive");
    const struct {
        bool on;
        unsigned op;
        const char *name;
    } ops[] = {
        {o->can_decrypt, VOP_DECRYPT, "can decrypt"}, {o->can_encrypt, VOP_ENCRYPT, "can encrypt"},
        {o->can_sign, VOP_SIGN, "can sign"},          {o->can_verify, VOP_VERIFY, "can verify"},
        {o->can_unwrap, VOP_UNWRAP, "can unwrap"},    {o->can_wrap, VOP_WRAP, "can wrap"},
        {o->can_derive, VOP_DERIVE, "can derive"}};
    for (size_t i = 0; i < KV_ARRAY_LEN(ops); i++)
        if (ops[i].on && (p->allowed & ops[i].op) == 0) vault_why(why, cap, ops[i].name);
    return p;
}

/* ---- findings ---- */

typedef struct {
    const char *kind;
    vault_obj_role role;
    char label[sizeof(((hsm_object_info *)0)->label)];
    char id_hex[VAULT_OBJ_HEX_MAX];
    char object_class[sizeof(((hsm_object_info *)0)->object_class)];
    char tenant_id[VAULT_ID_MAX];
    char key_id[KV_BYOK_KID_MAX + 1];
    char detail[640];
    bool removed_at_start;
    hsm_key_id destroy_id; /* with removed_at_start */
} vault_finding;

typedef struct {
    vault_finding *items;
    size_t n, cap;
} vault_findings;

/* A new zeroed finding of kind, about object o (may be NULL). */
static vault_finding *vault_finding_add(vault_findings *f, const char *kind, const vault_match *m,
                                        const hsm_object_info *o)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 16;
        vault_finding *items = realloc(f->items, cap * sizeof(*items));
        if (items == NULL) return NULL;
        f->items = items;
        f->cap = cap;
    }
    vault_finding *x = &f->items[f->n++];
    memset(x, 0, sizeof(*x));
    x->kind = kind;
    x->role = m ? m->role : VOBJ_UNKNOWN;
    if (m != NULL && m->key != NULL) {
        snprintf(x->tenant_id, sizeof(x->tenant_id), "%s", m->key->tenant_id);
        snprintf(x->key_id, sizeof(x->key_id), "%s", m->key->id);
    } else if (m != NULL && m->import != NULL) {
        vault_import_kid(m->import->subscription_id, m->import->version, x->key_id,
                         sizeof(x->key_id));
    }
    if (o != NULL) {
        snprintf(x->label, sizeof(x->label), "%s", o->label);
        kv_hex_encode(o->id, o->id_len, x->id_hex);
        snprintf(x->object_class, sizeof(x->object_class), "%s", o->object_class);
    }
    return x;
}

static bool vault_ours(const hsm_object_info *o)
{
    return strncmp(o->label, VAULT_LABEL_PREFIX, strlen(VAULT_LABEL_PREFIX)) == 0;
}

/* Start-up destroys an unwanted object only if its label is ours (and its id
 * one the vault makes). */
static void vault_mark_removable(vault_finding *x, const hsm_object_info *o)
{
    x->removed_at_start = vault_ours(o) && o->id_len == HSM_KEY_ID_LEN;
    if (x->removed_at_start) memcpy(x->destroy_id.bytes, o->id, HSM_KEY_ID_LEN);
}

static kv_result vault_oom(void)
{
    return kv_error_set(KV_ERR_RESOURCE_EXHAUSTED, __FILE__, __LINE__, "out of memory");
}

/* Findings about one token object. */
static kv_result vault_find_object(const vault_inv *inv, const hsm_object_info *o,
                                   vault_findings *f)
{
    vault_match m = vault_match_object(inv, o);
    vault_finding *x;
    if (m.role == VOBJ_UNKNOWN) {
        if ((x = vault_finding_add(f, "orphan-object", &m, o)) == NULL) return vault_oom();
        vault_mark_removable(x, o);
        snprintf(x->detail, sizeof(x->detail), "%s",
                 x->removed_at_start
                     ? "no vault record names it (left by an interrupted change); vaultd destroys "
                       "it at its next start"
                 : vault_ours(o)
                     ? "labelled hsmvault:* but no vault record names it and its id is not one "
                       "the vault makes; vaultd leaves it: delete it with pkcs11-tool "
                       "--delete-object if nothing else uses it"
                     : "not the vault's (its label is not hsmvault:*) and vaultd never touches "
                       "it: if it does not belong in this token, delete it with pkcs11-tool "
                       "--delete-object");
        return KV_SUCCESS;
    }
    if (!m.expected) {
        if ((x = vault_finding_add(f, "should-be-deleted", &m, o)) == NULL) return vault_oom();
        vault_mark_removable(x, o);
        char what[320];
        if (m.key != NULL)
            snprintf(what, sizeof(what), "its key is locked or deleted (key %s of tenant %s is %s)",
                     m.key->id, m.key->tenant_id, vault_key_state_name(m.key->state));
        else
            snprintf(what, sizeof(what), "its import key version is retired (%s)", x->key_id);
        snprintf(x->detail, sizeof(x->detail), "%s and must not be in the token; %s", what,
                 x->removed_at_start ? "vaultd destroys it at its next start"
                                     : "its label is not hsmvault:*, so vaultd leaves it: delete "
                                       "it with pkcs11-tool --delete-object");
    }
    char why[320];
    const vault_policy *p = vault_policy_check(&m, o, why, sizeof(why));
    if (why[0] != '\0') {
        if ((x = vault_finding_add(f, "policy-violation", &m, o)) == NULL) return vault_oom();
        snprintf(x->detail, sizeof(x->detail),
                 "%s: %s; %s: destroy it and replace the key (it may have left the token)", why,
                 p->rule,
                 m.key != NULL      ? "the tenant's admins must upload and activate a new key"
                 : m.import != NULL ? "rotate the import key"
                                    : "recreate the audit log's key");
    }
    return KV_SUCCESS;
}

/* Whether an object of class with this id is in the token (hex: compare as
 * hex instead, for the audit keys). */
static bool vault_token_has(const vault_inv *inv, const uint8_t *id, size_t id_len, const char *hex,
                            const char *object_class)
{
    for (size_t j = 0; j < inv->n_objs; j++) {
        const hsm_object_info *o = &inv->objs[j];
        if (strcmp(o->object_class, object_class) != 0) continue;
        if (hex != NULL ? vault_obj_hex_is(o, hex)
                        : o->id_len == id_len && memcmp(o->id, id, id_len) == 0)
            return true;
    }
    return false;
}

static kv_result vault_missing(vault_findings *f, const vault_match *m, const uint8_t *id,
                               size_t id_len, const char *hex, const char *detail)
{
    vault_finding *x = vault_finding_add(f, "missing-key", m, NULL);
    if (x == NULL) return vault_oom();
    if (hex != NULL)
        snprintf(x->id_hex, sizeof(x->id_hex), "%s", hex);
    else if (id_len * 2 < sizeof(x->id_hex))
        kv_hex_encode(id, id_len, x->id_hex);
    snprintf(x->object_class, sizeof(x->object_class), "%s",
             m->role == VOBJ_AUDIT_HMAC ? "secret-key" : "private-key");
    snprintf(x->detail, sizeof(x->detail), "%s", detail);
    return KV_SUCCESS;
}

/* Every finding: objects first (token order), then records without their key. */
static kv_result vault_find(const vault_inv *inv, vault_findings *f)
{
    for (size_t i = 0; i < inv->n_objs; i++)
        KV_GUARD(vault_find_object(inv, &inv->objs[i], f));
    char detail[320];
    for (size_t i = 0; i < inv->keys.n; i++) {
        const KeyRecord *k = (const KeyRecord *)inv->keys.items[i];
        if (!vault_key_expected_in_token(k) ||
            vault_token_has(inv, k->hsm_id.data, k->hsm_id.len, NULL, "private-key"))
            continue;
        vault_match m = {.role = vault_key_role(k), .key = k, .expected = true};
        snprintf(detail, sizeof(detail),
                 "key %s of tenant %s (%s) is missing from the token; DEKs under it cannot be "
                 "unwrapped until it is restored (restore the token from a backup)",
                 k->id, k->tenant_id, vault_key_state_name(k->state));
        KV_GUARD(vault_missing(f, &m, k->hsm_id.data, k->hsm_id.len, NULL, detail));
    }
    for (size_t i = 0; i < inv->imports.n; i++) {
        const ImportKeyRecord *ik = (const ImportKeyRecord *)inv->imports.items[i];
        if (ik->retired ||
            vault_token_has(inv, ik->hsm_id.data, ik->hsm_id.len, NULL, "private-key"))
            continue;
        vault_match m = {.role = VOBJ_IMPORT_KEY, .import = ik, .expected = true};
        snprintf(detail, sizeof(detail),
                 "import key version %u of subscription %s is missing from the token; .byok "
                 "files made for it cannot be imported (rotate the import key)",
                 ik->version, ik->subscription_id);
        KV_GUARD(vault_missing(f, &m, ik->hsm_id.data, ik->hsm_id.len, NULL, detail));
    }
    static const char *const audit_what[2] = {
        "the audit log's HMAC key (meta " VAULT_META_AUDIT_HMAC_ID
        ") is missing from the token; audit records cannot be verified",
        "the audit log's checkpoint key (meta " VAULT_META_AUDIT_SIGN_ID
        ") is missing from the token; checkpoints cannot be signed"};
    for (int a = 0; a < 2; a++) {
        vault_match m = {.role = a == 0 ? VOBJ_AUDIT_HMAC : VOBJ_AUDIT_SIGN, .expected = true};
        const char *cls = a == 0 ? "secret-key" : "private-key";
        if (inv->audit_hex[a][0] == '\0' || vault_token_has(inv, NULL, 0, inv->audit_hex[a], cls))
            continue;
        KV_GUARD(vault_missing(f, &m, NULL, 0, inv->audit_hex[a], audit_what[a]));
    }
    return KV_SUCCESS;
}

kv_result vault_reconcile(vault *v)
{
    vault_inv inv;
    vault_findings f = {0};
    pthread_mutex_lock(&v->lifecycle);
    kv_result r = vault_inventory(v, &inv);
    if (kv_failed(r)) goto out;
    r = vault_find(&inv, &f);
    unsigned removed = 0, missing = 0;
    for (size_t i = 0; kv_ok(r) && i < f.n; i++) {
        const vault_finding *x = &f.items[i];
        if (x->removed_at_start) {
            r = hsm_key_destroy(v->hsm, &x->destroy_id);
            if (kv_failed(r)) break;
            removed++;
            KV_LOG_WARN("reconcile: removed token object '%s' (id %s, %s): %s", x->label, x->id_hex,
                        x->object_class, x->detail);
        } else if (strcmp(x->kind, "missing-key") == 0) {
            missing++;
            KV_LOG_ERROR("reconcile: %s", x->detail);
        } else {
            KV_LOG_WARN("reconcile: %s: token object '%s' (id %s, %s): %s", x->kind, x->label,
                        x->id_hex, x->object_class, x->detail);
        }
    }
    if (kv_ok(r)) {
        v->missing_keys = missing;
        KV_LOG_INFO(
            "reconcile: %zu key records, %zu token objects, %u orphans removed, %u keys missing",
            inv.keys.n, inv.n_objs, removed, missing);
    }
    vault_inv_free(&inv);
out:
    pthread_mutex_unlock(&v->lifecycle);
    free(f.items);
    return r;
}

/* Auditor or operator; then the inventory, taken under v->lifecycle so that
 * a change in flight (token object created, record not yet committed) does
 * not show as an orphan.  Reads only. */
static kv_result vault_audit_begin(vault *v, const rpc_ctx *ctx, const char *action, vault_inv *inv)
{
    store_txn *t;
    KV_GUARD(store_read_begin(v->store, &t));
    kv_result r = vault_authorize(
        t, ctx->principal, ROLE_BIT(ROLE_AUDITOR) | ROLE_BIT(ROLE_OPERATOR), NULL, NULL, action);
    store_read_end(t);
    KV_GUARD(r);
    pthread_mutex_lock(&v->lifecycle);
    r = vault_inventory(v, inv);
    pthread_mutex_unlock(&v->lifecycle);
    return r;
}

VAULT_HANDLER(vault_rpc_list_token_objects, Hsmvault__V1__ListTokenObjectsRequest,
              hsmvault__v1__list_token_objects_request__descriptor)
static kv_result vault_rpc_list_token_objects_impl(vault *v, const rpc_ctx *ctx,
                                                   const Hsmvault__V1__ListTokenObjectsRequest *req,
                                                   rpc_reply *reply)
{
    (void)req;
    vault_inv inv;
    KV_GUARD(vault_audit_begin(v, ctx, "audit the token", &inv));
    size_t n = inv.n_objs;
    kv_result r = KV_SUCCESS;
    char(*kids)[KV_BYOK_KID_MAX + 1] = calloc(n ? n : 1, sizeof(*kids));
    int64_t now = kv_clock_now();
    Hsmvault__V1__TokenObject *items = calloc(n ? n : 1, sizeof(*items));
    Hsmvault__V1__TokenObject **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    char(*hex)[VAULT_OBJ_HEX_MAX] = calloc(n ? n : 1, sizeof(*hex));
    if (items == NULL || ptrs == NULL || hex == NULL || kids == NULL) {
        r = vault_oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const hsm_object_info *o = &inv.objs[i];
        Hsmvault__V1__TokenObject *it = &items[i];
        hsmvault__v1__token_object__init(it);
        kv_hex_encode(o->id, o->id_len, hex[i]);
        it->label = (char *)(uintptr_t)o->label;
        it->id_hex = hex[i];
        it->object_class = (char *)(uintptr_t)o->object_class;
        it->key_type = (char *)(uintptr_t)o->key_type;
        it->bits = o->bits;
        it->sensitive = o->sensitive;
        it->extractable = o->extractable;
        it->never_extractable = o->never_extractable;
        it->always_sensitive = o->always_sensitive;
        it->private_ = o->is_private;
        it->can_decrypt = o->can_decrypt;
        it->can_encrypt = o->can_encrypt;
        it->can_sign = o->can_sign;
        it->can_unwrap = o->can_unwrap;
        it->can_wrap = o->can_wrap;
        vault_match m = vault_match_object(&inv, o);
        it->vault_role = (char *)(uintptr_t)vault_obj_role_name(m.role);
        it->vault_tenant_id = m.key ? m.key->tenant_id : (char *)"";
        it->vault_key_id = m.key ? m.key->id : (char *)"";
        it->vault_state = (char *)(uintptr_t)(m.key ? vault_key_state_name(m.key->state) : "");
        if (m.import != NULL) {
            vault_import_kid(m.import->subscription_id, m.import->version, kids[i],
                             sizeof(kids[i]));
            it->vault_key_id = kids[i];
            it->vault_state = (char *)(uintptr_t)vault_import_key_state(v, m.import, now);
        } else if (m.role == VOBJ_AUDIT_HMAC || m.role == VOBJ_AUDIT_SIGN ||
                   m.role == VOBJ_AUDIT_ANCHOR) {
            it->vault_state = "in-use";
        }
        ptrs[i] = it;
    }
    Hsmvault__V1__ListTokenObjectsResponse resp = HSMVAULT__V1__LIST_TOKEN_OBJECTS_RESPONSE__INIT;
    resp.n_objects = n;
    resp.objects = ptrs;
    r = vault_reply(reply, &resp.base, false);
out:
    free(items);
    free(ptrs);
    free(hex);
    free(kids);
    vault_inv_free(&inv);
    return r;
}

/* Read-only: the findings of a start-up reconcile, nothing destroyed. */
VAULT_HANDLER(vault_rpc_reconcile, Hsmvault__V1__ReconcileRequest,
              hsmvault__v1__reconcile_request__descriptor)
static kv_result vault_rpc_reconcile_impl(vault *v, const rpc_ctx *ctx,
                                          const Hsmvault__V1__ReconcileRequest *req,
                                          rpc_reply *reply)
{
    (void)req;
    vault_inv inv;
    KV_GUARD(vault_audit_begin(v, ctx, "reconcile the token with the vault", &inv));
    vault_findings f = {0};
    kv_result r = vault_find(&inv, &f);
    Hsmvault__V1__ReconcileFinding *items = calloc(f.n ? f.n : 1, sizeof(*items));
    Hsmvault__V1__ReconcileFinding **ptrs = calloc(f.n ? f.n : 1, sizeof(*ptrs));
    if (kv_ok(r) && (items == NULL || ptrs == NULL)) r = vault_oom();
    for (size_t i = 0; kv_ok(r) && i < f.n; i++) {
        vault_finding *x = &f.items[i];
        Hsmvault__V1__ReconcileFinding *it = &items[i];
        hsmvault__v1__reconcile_finding__init(it);
        it->kind = (char *)(uintptr_t)x->kind;
        it->label = x->label;
        it->id_hex = x->id_hex;
        it->detail = x->detail;
        it->tenant_id = x->tenant_id;
        it->key_id = x->key_id;
        it->vault_role = (char *)(uintptr_t)vault_obj_role_name(x->role);
        it->object_class = x->object_class;
        it->removed_at_start = x->removed_at_start;
        ptrs[i] = it;
    }
    if (kv_ok(r)) {
        Hsmvault__V1__ReconcileResponse resp = HSMVAULT__V1__RECONCILE_RESPONSE__INIT;
        resp.clean = f.n == 0;
        resp.n_findings = f.n;
        resp.findings = ptrs;
        resp.token_objects = (uint32_t)inv.n_objs;
        resp.key_records = (uint32_t)inv.keys.n;
        resp.import_key_records = (uint32_t)inv.imports.n;
        r = vault_reply(reply, &resp.base, false);
    }
    free(items);
    free(ptrs);
    free(f.items);
    vault_inv_free(&inv);
    return r;
}
