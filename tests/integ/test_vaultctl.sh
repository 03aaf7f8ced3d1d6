#!/bin/sh
# test_vaultctl.sh: vaultctl against a real vaultd --dev: help everywhere,
# documented exit codes with one line on stderr, --json output, passwords
# from files and stdin, the PFX written 0600 and never over an existing file,
# the PFX opening with openssl and holding the key the vault reports.
set -u
TEST_NAME=vaultctl
. "$(dirname "$0")/cli_lib.sh"
vaultd_dev_start
grep -q "VAULTCTL_CONFIG=$STATE/clients/operator.conf" "$TMP/vaultd.out" && ok || bad "vaultd --dev does not say how to point vaultctl at it"

# Help and usage errors.
expect 0 "help" -- "$VAULTCTL" --help
grep -q "Exit codes" "$TMP/out" && ok || bad "help lacks exit codes"
for c in "tenant create" "key generate" "key upload" "env return-key" "db unwrap" "role bind" "audit token"; do
    # shellcheck disable=SC2086
    expect 0 "$c --help" -- "$VAULTCTL" $c --help
    grep -q "usage: vaultctl $c" "$TMP/out" && ok || bad "$c --help: no usage line"
done
expect 2 "unknown command" -- "$VAULTCTL" --config "$STATE/clients/operator.conf" frobnicate
expect 2 "missing option" -- as operator tenant create --name x
expect 2 "no profile" -- env -u VAULTCTL_CONFIG "$VAULTCTL" whoami
expect 2 "bad env type" -- as operator env create --tenant tnt-0000000000000000 --name x --type staging
expect 4 "missing profile file" -- "$VAULTCTL" --config "$TMP/nope.conf" whoami

# The operator sets up a tenant (JSON output).
expect 0 "whoami --json" -- as operator --json whoami
grep -q '"principal": *"spiffe://hsmvault.dev/operator"' "$TMP/out" && ok || bad "whoami --json: $(cat "$TMP/out")"
expect 0 "tenant create" -- as operator --json tenant create --name contoso --subscription sub-1 \
    --admin-contact a@example.com
TENANT=$(id_of tnt)
[ -n "$TENANT" ] && ok || bad "no tenant id in $(cat "$TMP/out")"
expect 0 "enable" -- as operator tenant enable-self-managed --tenant "$TENANT"
expect 0 "env create" -- as operator env create --tenant "$TENANT" --name prod --type production
ENV=$(id_of env)
expect 0 "bind admin" -- as operator role bind --principal spiffe://hsmvault.dev/tenant-admin --role tenant-admin --tenant "$TENANT"
expect 0 "bind node" -- as operator role bind --principal spiffe://hsmvault.dev/storage-node --role storage-node --tenant "$TENANT" --env "$ENV"
expect 0 "bind env admin" -- as operator role bind --principal spiffe://hsmvault.dev/environment-admin --role environment-admin --tenant "$TENANT"
expect 3 "invalid subscription" -- as operator tenant create --name x --subscription "a b" --admin-contact a@example.com
expect 4 "unknown tenant" -- as operator tenant show --tenant tnt-0000000000000000
expect 5 "denied" -- as tenant-admin tenant create --name x --subscription s --admin-contact a@example.com
grep -q "PERMISSION_DENIED" "$TMP/err" && ok || bad "denied message: $(cat "$TMP/err")"

# Key generation: password from a file with a trailing newline (as openssl
# reads it), PFX 0600, never overwritten.
printf 'pfx password 1\n' >"$TMP/pw"
expect 0 "generate" -- as tenant-admin key generate --tenant "$TENANT" --name k1 --out "$TMP/k1.pfx" --password-file "$TMP/pw"
KEY1=$(id_of key)
[ "$(stat -c %a "$TMP/k1.pfx")" = 600 ] && ok || bad "PFX mode $(stat -c %a "$TMP/k1.pfx")"
sum1=$(sha256sum <"$TMP/k1.pfx")
expect 8 "generate over existing file" -- as tenant-admin key generate --tenant "$TENANT" --name k2 --out "$TMP/k1.pfx" --password-file "$TMP/pw"
[ "$(sha256sum <"$TMP/k1.pfx")" = "$sum1" ] && ok || bad "existing PFX was changed"
expect 0 "key list --json" -- as tenant-admin --json key list --tenant "$TENANT"
FPR=$(grep -o '"fingerprint": *"[0-9a-f]\{64\}"' "$TMP/out" | grep -o '[0-9a-f]\{64\}' | head -n 1)
grep -q '"state": *"active"' "$TMP/out" && ok || bad "first key not active: $(cat "$TMP/out")"
OSSL=$(openssl pkcs12 -in "$TMP/k1.pfx" -passin "file:$TMP/pw" -nokeys -clcerts 2>/dev/null |
    openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-64)
[ -n "$FPR" ] && [ "$OSSL" = "$FPR" ] && ok || bad "fingerprint $FPR != openssl $OSSL"

# Upload with the password on stdin; wrong password; duplicate.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/own.key" 2>/dev/null
openssl pkcs12 -export -nocerts -inkey "$TMP/own.key" -passout "file:$TMP/pw" -out "$TMP/own.pfx"
printf 'not it\n' >"$TMP/badpw"
expect 3 "wrong password" -- as tenant-admin key upload --tenant "$TENANT" --name own --pfx "$TMP/own.pfx" --password-file "$TMP/badpw"
grep -qi "password" "$TMP/err" && ok || bad "wrong-password message: $(cat "$TMP/err")"
grep -q "not it" "$TMP/err" && bad "the password was echoed" || ok
expect 0 "upload stdin" -- sh -c "printf 'pfx password 1' | '$VAULTCTL' --config '$STATE/clients/tenant-admin.conf' key upload --tenant $TENANT --name own --pfx '$TMP/own.pfx' --password-stdin"
KEY2=$(id_of key)
grep -q "available" "$TMP/out" && ok || bad "second key not available: $(cat "$TMP/out")"
expect 8 "duplicate upload" -- as tenant-admin key upload --tenant "$TENANT" --name again --pfx "$TMP/own.pfx" --password-file "$TMP/pw"
expect 2 "both password sources" -- as tenant-admin key upload --tenant "$TENANT" --name x --pfx "$TMP/own.pfx" --password-file "$TMP/pw" --password-stdin
expect 3 "no terminal for a prompt" -- sh -c "'$VAULTCTL' --config '$STATE/clients/tenant-admin.conf' key upload --tenant $TENANT --name x --pfx '$TMP/own.pfx' </dev/null"
expect 4 "unknown PFX file" -- as tenant-admin key upload --tenant "$TENANT" --name x --pfx "$TMP/none.pfx" --password-file "$TMP/pw"

# A database key survives apply, activation and return; the key never prints.
expect 0 "db create" -- as storage-node db create --env "$ENV" --name orders
DB=$(id_of db)
CHK=$(sed -n 's/^ *dek_sha256: //p' "$TMP/out")
[ ${#CHK} = 64 ] && ok || bad "no check value: $(cat "$TMP/out")"
grep -qi '^ *dek:' "$TMP/out" && bad "db create printed the key" || ok
expect 0 "apply" -- as environment-admin env apply-key --env "$ENV"
grep -q "customer-managed" "$TMP/out" && ok || bad "apply: $(cat "$TMP/out")"
expect 6 "activate within 24 h" -- as tenant-admin key activate --tenant "$TENANT" --key "$KEY2"
grep -q "activation is blocked until" "$TMP/err" && ok || bad "24 h refusal: $(cat "$TMP/err")"
expect 0 "advance 24 h" -- as operator clock advance --seconds 86400
expect 0 "activate" -- as tenant-admin key activate --tenant "$TENANT" --key "$KEY2"
# Roll-back: only another tenant admin, within 72 h.
expect 0 "bind second admin" -- as operator role bind --principal spiffe://hsmvault.dev/tenant-admin-2 --role tenant-admin --tenant "$TENANT"
expect 5 "activator cannot roll back" -- as tenant-admin key roll-back --tenant "$TENANT"
expect 0 "roll back" -- as tenant-admin-2 key roll-back --tenant "$TENANT"
grep -q "$KEY1" "$TMP/out" && grep -q "state: active" "$TMP/out" && ok || bad "roll-back output: $(cat "$TMP/out")"
expect 6 "nothing left to roll back" -- as tenant-admin-2 key roll-back --tenant "$TENANT"
expect 0 "unwrap" -- as storage-node --json db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "check value changed: $(cat "$TMP/out")"
grep -q '"dek"' "$TMP/out" && bad "--json printed the key" || ok

# Lock and unlock with the CLI (the active key is k1 again after the roll-back).
expect 0 "lock text" -- as tenant-admin tenant lock-text --tenant "$TENANT"
TEXT=$(sed -n 's/^text: //p' "$TMP/out")
[ "$TEXT" = "lock 1 environment of contoso" ] && ok || bad "lock text: $TEXT"
expect 6 "lock within 72 h" -- as tenant-admin tenant lock --tenant "$TENANT" --pfx "$TMP/k1.pfx" --password-file "$TMP/pw" --confirm "$TEXT"
expect 0 "advance 72 h" -- as operator clock advance --seconds 259200
expect 3 "lock with another key" -- as tenant-admin tenant lock --tenant "$TENANT" --pfx "$TMP/own.pfx" --password-file "$TMP/pw" --confirm "$TEXT"
expect 3 "lock without a terminal or --confirm" -- sh -c "'$VAULTCTL' --config '$STATE/clients/tenant-admin.conf' tenant lock --tenant $TENANT --pfx '$TMP/k1.pfx' --password-file '$TMP/pw' </dev/null"
expect 0 "lock" -- as tenant-admin tenant lock --tenant "$TENANT" --pfx "$TMP/k1.pfx" --password-file "$TMP/pw" --confirm "$TEXT"
grep -q "$ENV" "$TMP/out" && ok || bad "lock output: $(cat "$TMP/out")"
expect 6 "unwrap while locked" -- as storage-node db unwrap --env "$ENV" --db "$DB"
expect 6 "unlock within 1 h" -- as tenant-admin key unlock --tenant "$TENANT" --key "$KEY1" --pfx "$TMP/k1.pfx" --password-file "$TMP/pw"
expect 0 "advance 1 h" -- as operator clock advance --seconds 3600
expect 0 "unlock key" -- as tenant-admin key unlock --tenant "$TENANT" --key "$KEY1" --pfx "$TMP/k1.pfx" --password-file "$TMP/pw"
expect 6 "unwrap before the environment is unlocked" -- as storage-node db unwrap --env "$ENV" --db "$DB"
expect 0 "unlock environment" -- as environment-admin env unlock --env "$ENV"
expect 0 "unwrap after unlock" -- as storage-node db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "check value changed after unlock: $(cat "$TMP/out")"
expect 6 "return without confirmation" -- as environment-admin env return-key --env "$ENV"
expect 0 "return" -- as environment-admin env return-key --env "$ENV" --confirm prod
expect 0 "unwrap after return" -- as storage-node db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "check value changed after return"
expect 5 "operator cannot unwrap" -- as operator db unwrap --env "$ENV" --db "$DB"
expect 0 "audit token" -- as auditor audit token
grep -q "sensitive" "$TMP/out" && ok || bad "audit token output: $(head -5 "$TMP/out")"
expect 5 "auditor cannot create" -- as auditor tenant create --name x --subscription s --admin-contact a@example.com
[ -n "$KEY1" ] && ok || bad "no key id"

# Restore/copy authorization and reset (the environment is on the service key now).
expect 0 "restore into itself" -- as storage-node env may-restore --from "$ENV" --env "$ENV"
expect 6 "copy into itself" -- as storage-node env may-copy --from "$ENV" --env "$ENV"
grep -q "another environment" "$TMP/err" && ok || bad "copy refusal: $(cat "$TMP/err")"
expect 5 "may-restore by an admin" -- as environment-admin env may-restore --from "$ENV" --env "$ENV"
expect 6 "reset with the wrong name" -- as environment-admin env reset --env "$ENV" --confirm nope
expect 0 "reset" -- as environment-admin env reset --env "$ENV" --confirm prod
expect 0 "unwrap after reset" -- as storage-node db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && bad "the DEK survived a reset" || ok
CHK=$(sed -n 's/^ *dek_sha256: //p' "$TMP/out") # the environment's new DEK from here on

# The test clock: operator only, and only in --dev.
expect 0 "clock advance" -- as operator clock advance --seconds 60
expect 5 "clock advance by a tenant admin" -- as tenant-admin clock advance --seconds 60

# vaultd stops cleanly on SIGTERM.
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=""
[ "$rc" = 0 ] && ok || bad "vaultd exit status $rc after SIGTERM"
expect 7 "vaultd down" -- as operator whoami

# A normal start from a config file, on the same token, certificates and
# store: everything is still there; the test clock is not.
cat >"$TMP/vaultd.conf" <<CONF
# vaultd config for the test
module = ${HSMVAULT_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
token_label = hsmvault-dev
pin_file = $STATE/pin
listen = 127.0.0.1:0
tls_ca = $STATE/tls/ca.pem
tls_cert = $STATE/tls/server.pem
tls_key = $STATE/tls/server.key
state_dir = $STATE
workers = 2
CONF
SOFTHSM2_CONF=$STATE/softhsm2.conf "$VAULTD" --config "$TMP/vaultd.conf" >"$TMP/vaultd2.out" 2>"$TMP/vaultd2.log" &
PID=$!
i=0
PORT=""
while [ -z "$PORT" ] && [ $i -lt 600 ]; do
    sleep 0.05
    i=$((i + 1))
    PORT=$(sed -n 's/.*listening on .* (port \([0-9]*\)).*/\1/p' "$TMP/vaultd2.log" | head -n 1)
done
[ -n "$PORT" ] && ok || bad "vaultd --config did not start: $(cat "$TMP/vaultd2.log")"
sed "s/^target = .*/target = 127.0.0.1:$PORT/" "$STATE/clients/storage-node.conf" >"$TMP/node.conf"
sed "s/^target = .*/target = 127.0.0.1:$PORT/" "$STATE/clients/operator.conf" >"$TMP/op.conf"
expect 0 "unwrap via --config vaultd" -- "$VAULTCTL" --config "$TMP/node.conf" db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "check value changed under --config"
expect 9 "no test clock outside --dev" -- "$VAULTCTL" --config "$TMP/op.conf" clock advance --seconds 60
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=""
[ "$rc" = 0 ] && ok || bad "vaultd --config exit status $rc after SIGTERM"

# Bad config files: exit 1 (start-up failure) or 2 (usage), one clear line.
printf 'token_label = x\nbogus_key = 1\n' >"$TMP/bad1.conf"
expect 1 "unknown config key" -- "$VAULTD" --config "$TMP/bad1.conf"
grep -q "bogus_key" "$TMP/err" && ok || bad "unknown key not named: $(cat "$TMP/err")"
printf 'token_label = x\n' >"$TMP/bad2.conf"
expect 1 "missing required keys" -- "$VAULTD" --config "$TMP/bad2.conf"
expect 1 "missing config file" -- "$VAULTD" --config "$TMP/none.conf"
expect 2 "dev and config" -- "$VAULTD" --dev --config "$TMP/bad2.conf"
sed 's/^workers = 2/workers = 0/' "$TMP/vaultd.conf" >"$TMP/bad3.conf"
expect 1 "workers out of range" -- "$VAULTD" --config "$TMP/bad3.conf"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
