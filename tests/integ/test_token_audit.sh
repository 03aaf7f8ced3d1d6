#!/bin/sh
# test_token_audit.sh: vaultctl audit token / audit reconcile against a real
# vaultd --dev (SoftHSM token, LMDB), with the token changed behind the
# vault's back by OpenSC's pkcs11-tool and softhsm2-util (docs/audit-token.md):
#   - a fresh vault is clean (exit 0, "clean": true);
#   - orphan objects (one hsmvault:*-labelled, one foreign) are found, a
#     deleted tenant key is missing-key, a key re-created extractable with the
#     vault's id is a policy-violation, a locked key put back into the token is
#     should-be-deleted (exit 11, --json fields);
#   - reconcile is read-only: the token listing and the key records are the
#     same before and after; only auditor and operator may call it;
#   - the next vaultd start removes the hsmvault:* orphan and the locked key's
#     object, and leaves the foreign object;
#   - the audit log's keys (objects + their ids in the meta table, written by
#     store_meta_put with vaultd stopped) are listed with their roles, are not
#     orphans, and are checked for policy and presence.
# pkcs11-tool and softhsm2-util take the user PIN on their command line: it is
# the throwaway dev token's random PIN of this test only.
set -u
TEST_NAME=token-audit
. "$(dirname "$0")/cli_lib.sh"
MODULE=${HSMVAULT_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
vaultd_dev_start
export SOFTHSM2_CONF="$STATE/softhsm2.conf"
PIN=$(cat "$STATE/pin")
p11() { pkcs11-tool --module "$MODULE" --token-label hsmvault-dev --login --pin "$PIN" "$@" >>"$TMP/p11.log" 2>&1; }
# json EXPR: evaluates a python expression over the JSON in $TMP/out (d).
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$TMP/out"; }
# id_hex KEY: the CKA_ID of the token objects of vault key KEY.
id_hex() {
    as auditor --json audit token >"$TMP/tok.json"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print([o['id_hex'] for o in d['objects'] if o.get('vault_key_id')==sys.argv[2]][0])" "$TMP/tok.json" "$1"
}
# snapshot FILE: what reconcile must not change (token listing, key records).
snapshot() {
    as auditor --json audit token >"$1"
    as tenant-admin --json key list --tenant "$TENANT" >>"$1"
}
# finding KIND FIELD VALUE: the reconcile JSON in $TMP/out has a finding of KIND
# whose FIELD is VALUE; prints it.
finding() {
    python3 -c "
import json,sys
d=json.load(open(sys.argv[1]))
f=[x for x in d.get('findings',[]) if x['kind']==sys.argv[2] and x.get(sys.argv[3])==sys.argv[4]]
print(json.dumps(f[0]) if f else '')" "$TMP/out" "$1" "$2" "$3"
}
has_finding() {
    f=$(finding "$1" "$2" "$3")
    [ -n "$f" ] && ok || bad "no $1 finding with $2=$3: $(cat "$TMP/out")"
}

expect 0 "reconcile --help" -- "$VAULTCTL" audit reconcile --help
grep -q "usage: vaultctl audit reconcile" "$TMP/out" && ok || bad "no usage line"
expect 0 "help names exit 11" -- "$VAULTCTL" --help
grep -q "11 audit reconcile" "$TMP/out" && ok || bad "help lacks exit code 11"

# A tenant with an active key (k1), two available keys, an environment on k1.
expect 0 "tenant create" -- as operator --json tenant create --name contoso --subscription sub-1 --admin-contact a@example.com
TENANT=$(id_of tnt)
expect 0 "enable" -- as operator tenant enable-self-managed --tenant "$TENANT"
expect 0 "env create" -- as operator env create --tenant "$TENANT" --name prod --type production
ENV=$(id_of env)
expect 0 "bind admin" -- as operator role bind --principal spiffe://hsmvault.dev/tenant-admin --role tenant-admin --tenant "$TENANT"
expect 0 "bind env admin" -- as operator role bind --principal spiffe://hsmvault.dev/environment-admin --role environment-admin --tenant "$TENANT"
printf 'pfx password 1\n' >"$TMP/pw"
for k in 1 2 3; do
    expect 0 "generate k$k" -- as tenant-admin key generate --tenant "$TENANT" --name "k$k" --out "$TMP/k$k.pfx" --password-file "$TMP/pw"
    eval "KEY$k=\$(id_of key)"
done
expect 0 "apply" -- as environment-admin env apply-key --env "$ENV"

# Clean, and the listing says what each object is.
expect 0 "fresh vault is clean" -- as auditor audit reconcile
grep -q "^clean: 0 findings" "$TMP/out" && ok || bad "clean text: $(cat "$TMP/out")"
expect 0 "clean --json" -- as auditor --json audit reconcile
[ "$(json "d.get('clean')")" = True ] && ok || bad "clean json: $(cat "$TMP/out")"
[ "$(json "d.get('key_records')")" = 4 ] && ok || bad "key_records (3 tenant keys + service key): $(cat "$TMP/out")"
expect 0 "audit token --json" -- as auditor --json audit token
[ "$(json "[o.get('vault_tenant_id') for o in d['objects'] if o.get('vault_key_id')=='$KEY1' and o['object_class']=='private-key'][0]")" = "$TENANT" ] && ok || bad "audit token: no tenant for $KEY1: $(cat "$TMP/out")"
[ "$(json "[o.get('vault_state') for o in d['objects'] if o.get('vault_key_id')=='$KEY1'][0]")" = active ] && ok || bad "audit token: k1 not active"
[ "$(json "[o.get('vault_role') for o in d['objects'] if o.get('vault_key_id')=='$KEY2'][0]")" = tenant-key ] && ok || bad "audit token: k2 role"
[ "$(json "len([o for o in d['objects'] if o.get('vault_role')=='service-key'])")" = 2 ] && ok || bad "audit token: service key pair"
expect 0 "audit token (table)" -- as auditor audit token
grep -q "tenant-key *active *$TENANT *$KEY1 " "$TMP/out" && grep -q "service-key" "$TMP/out" && ok || bad "audit token table: $(cat "$TMP/out")"
expect 5 "tenant-admin may not reconcile" -- as tenant-admin audit reconcile
says PERMISSION_DENIED
expect 5 "storage node may not reconcile" -- as storage-node audit reconcile

# Behind the vault's back.
ID2=$(id_hex "$KEY2")
ID3=$(id_hex "$KEY3")
ORPHAN_ID=00112233445566778899aabbccddeeff
p11 --keypairgen --key-type rsa:2048 --id "$ORPHAN_ID" --label hsmvault:behind-the-back --usage-decrypt && ok || bad "pkcs11-tool keypairgen: $(tail -3 "$TMP/p11.log")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/foreign.pem" 2>/dev/null
softhsm2-util --import "$TMP/foreign.pem" --token hsmvault-dev --label foreign-app-key --id 0a0b0c0d --pin "$PIN" >>"$TMP/p11.log" 2>&1 && ok || bad "softhsm2-util --import: $(tail -3 "$TMP/p11.log")"
p11 --delete-object --type privkey --id "$ID2" && ok || bad "pkcs11-tool delete k2: $(tail -3 "$TMP/p11.log")"
p11 --delete-object --type privkey --id "$ID3" && ok || bad "pkcs11-tool delete k3"
p11 --keypairgen --key-type rsa:2048 --id "$ID3" --label "hsmvault:$TENANT/$KEY3" --usage-decrypt --extractable && ok || bad "pkcs11-tool re-create k3"

snapshot "$TMP/before"
expect 11 "reconcile finds them" -- as auditor audit reconcile
grep -q "^NOT CLEAN" "$TMP/out" && ok || bad "text: $(cat "$TMP/out")"
grep -q "orphan-object" "$TMP/out" && grep -q "missing-key" "$TMP/out" && grep -q "policy-violation" "$TMP/out" && ok || bad "text lacks kinds: $(cat "$TMP/out")"
expect 11 "reconcile --json" -- as auditor --json audit reconcile
[ "$(json "d.get('clean', False)")" = False ] && ok || bad "json clean"
has_finding orphan-object label hsmvault:behind-the-back
[ "$(finding orphan-object label hsmvault:behind-the-back | grep -c '"removed_at_start": true')" = 1 ] && ok || bad "hsmvault orphan not removed_at_start"
[ "$(finding orphan-object id_hex "$ORPHAN_ID" | grep -c '"vault_role": "unknown"')" = 1 ] && ok || bad "orphan role"
has_finding orphan-object label foreign-app-key
finding orphan-object label foreign-app-key | grep -q '"removed_at_start": true' && bad "foreign object would be removed" || ok
has_finding missing-key key_id "$KEY2"
finding missing-key key_id "$KEY2" | grep -q "\"tenant_id\": \"$TENANT\"" && ok || bad "missing-key lacks tenant"
[ "$(finding missing-key key_id "$KEY2" | grep -o "\"id_hex\": \"[0-9a-f]*\"")" = "\"id_hex\": \"$ID2\"" ] && ok || bad "missing-key id_hex"
has_finding policy-violation key_id "$KEY3"
finding policy-violation key_id "$KEY3" | grep -q "extractable" && ok || bad "policy detail lacks extractable: $(finding policy-violation key_id "$KEY3")"
finding policy-violation key_id "$KEY1" | grep -q . && bad "k1 reported as a violation" || ok
expect 11 "operator may reconcile" -- as operator audit reconcile
snapshot "$TMP/after"
cmp -s "$TMP/before" "$TMP/after" && ok || bad "reconcile changed the token or the store: $(diff "$TMP/before" "$TMP/after" | head -5)"

# A locked key put back into the token (from its PFX): should-be-deleted.
ID1=$(id_hex "$KEY1")
expect 0 "advance 72 h" -- as operator clock advance --seconds 259200
expect 0 "lock text" -- as tenant-admin tenant lock-text --tenant "$TENANT"
TEXT=$(sed -n 's/^text: //p' "$TMP/out")
expect 0 "lock" -- as tenant-admin tenant lock --tenant "$TENANT" --pfx "$TMP/k1.pfx" --password-file "$TMP/pw" --confirm "$TEXT"
expect 11 "after the lock" -- as auditor --json audit reconcile
finding should-be-deleted key_id "$KEY1" | grep -q . && bad "locked key still in the token after lock" || ok
openssl pkcs12 -in "$TMP/k1.pfx" -passin "file:$TMP/pw" -nocerts -nodes 2>/dev/null | openssl pkey -out "$TMP/k1.pem"
softhsm2-util --import "$TMP/k1.pem" --token hsmvault-dev --label "hsmvault:$TENANT/$KEY1" --id "$ID1" --pin "$PIN" >>"$TMP/p11.log" 2>&1 && ok || bad "softhsm2-util import k1: $(tail -3 "$TMP/p11.log")"
expect 11 "locked key back in the token" -- as auditor --json audit reconcile
has_finding should-be-deleted key_id "$KEY1"
finding should-be-deleted key_id "$KEY1" | grep -q '"removed_at_start": true' && ok || bad "locked key object not removed_at_start"
finding should-be-deleted key_id "$KEY1" | grep -q 'locked' && ok || bad "should-be-deleted detail: $(finding should-be-deleted key_id "$KEY1")"

# Restart: start-up reconcile removes what is ours and unwanted, nothing else.
kill -TERM "$PID"
wait "$PID"
PID=""
rm -f "$STATE/vaultd.addr"
vaultd_dev_start
expect 11 "after restart" -- as auditor --json audit reconcile
finding orphan-object label hsmvault:behind-the-back | grep -q . && bad "hsmvault orphan survived the restart" || ok
finding should-be-deleted key_id "$KEY1" | grep -q . && bad "locked key object survived the restart" || ok
has_finding orphan-object label foreign-app-key
# (the lock deleted k2 and k3 with their objects: only the foreign pair is left)
[ "$(json "sorted(set(f['label'] for f in d['findings']))")" = "['foreign-app-key']" ] && ok || bad "findings after restart: $(cat "$TMP/out")"
grep -q "reconcile: removed token object 'hsmvault:behind-the-back'" "$TMP/vaultd.log" && ok || bad "start-up did not log the removal"
pkcs11-tool --module "$MODULE" --token-label hsmvault-dev --login --pin "$PIN" --list-objects >"$TMP/objs" 2>&1
grep -q "foreign-app-key" "$TMP/objs" && ok || bad "the foreign object was removed"
grep -q "behind-the-back" "$TMP/objs" && bad "the hsmvault orphan is still in the token" || ok

# The audit log's keys, as the audit log makes them: objects first, then
# their CKA_IDs in the store's meta table (vaultd stopped).  Known by id:
# listed with their roles, no orphans; policy and missing checked.
HMAC_ID=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
SIGN_ID=b0b1b2b3b4b5b6b7b8b9babbbcbdbebf
kill -TERM "$PID"
wait "$PID"
PID=""
p11 --keygen --key-type GENERIC:32 --id "$HMAC_ID" --label hsmvault:audit/hmac-key --sensitive && ok || bad "pkcs11-tool keygen hmac: $(tail -3 "$TMP/p11.log")"
p11 --keypairgen --key-type rsa:2048 --id "$SIGN_ID" --label hsmvault:audit/checkpoint-key --usage-sign && ok || bad "pkcs11-tool keypairgen checkpoint"
"$BUILD/tests/store_meta_put" "$STATE/store" audit_hmac_key_id "$HMAC_ID" && ok || bad "meta hmac"
"$BUILD/tests/store_meta_put" "$STATE/store" audit_checkpoint_key_id "$SIGN_ID" && ok || bad "meta checkpoint"
rm -f "$STATE/vaultd.addr"
vaultd_dev_start
expect 0 "audit token with audit keys" -- as auditor --json audit token
[ "$(json "sorted(o['vault_role'] for o in d['objects'] if o['id_hex'] in ('$HMAC_ID','$SIGN_ID'))")" = "['audit-checkpoint-key', 'audit-checkpoint-key', 'audit-hmac-key']" ] && ok || bad "audit key roles: $(cat "$TMP/out")"
expect 11 "audit keys are not orphans" -- as auditor --json audit reconcile
finding orphan-object id_hex "$HMAC_ID" | grep -q . && bad "HMAC key reported orphan" || ok
finding orphan-object id_hex "$SIGN_ID" | grep -q . && bad "checkpoint key reported orphan" || ok
# The HMAC key is sensitive and not extractable: compliant.  pkcs11-tool
# gives an RSA private key decrypt and unwrap whatever --usage-sign says, so
# the checkpoint key breaks its sign-only policy.
[ "$(json "sorted(set(f['label'] for f in d['findings']))")" = "['foreign-app-key', 'hsmvault:audit/checkpoint-key']" ] && ok || bad "audit key findings: $(cat "$TMP/out")"
finding policy-violation vault_role audit-checkpoint-key | grep -q "can decrypt" && ok || bad "checkpoint policy detail: $(finding policy-violation vault_role audit-checkpoint-key)"
# A missing audit key: the checkpoint key first (records are still written,
# so the auditor can still ask), then the HMAC key: with it gone no record
# can be folded into the log and every call fails closed (docs/audit.md),
# reconcile too.
p11 --delete-object --type privkey --id "$SIGN_ID" && ok || bad "delete checkpoint key"
expect 11 "audit checkpoint key deleted" -- as auditor --json audit reconcile
has_finding missing-key vault_role audit-checkpoint-key
finding missing-key vault_role audit-checkpoint-key | grep -q "\"id_hex\": \"$SIGN_ID\"" && ok || bad "missing checkpoint key id"
p11 --delete-object --type secrkey --id "$HMAC_ID" && ok || bad "delete hmac"
# The call whose record is the first to meet the missing key may still be
# answered (its record is in the journal, kept for the next start); the
# writer's next round fails and from then on every call is refused.
as auditor --json audit reconcile >/dev/null 2>&1 || true
sleep 0.2
expect 7 "audit HMAC key deleted: calls fail closed" -- as auditor --json audit reconcile
says "the audit log cannot be written"
grep -q -- "$PIN" "$TMP/vaultd.log" && bad "vaultd logged the PIN" || ok

echo "token audit: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
