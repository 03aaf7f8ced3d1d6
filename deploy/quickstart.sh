#!/bin/sh
# quickstart.sh: the main job on the embedded default.  Installs what is
# missing, builds, starts `vaultd --dev` (its own SoftHSM token, private CA
# and LMDB store under state/quickstart), then drives one short scenario with
# vaultctl, printing every command: a tenant, environments, a storage node's
# database key, a generated tenant key applied to production, an uploaded
# key activated with a live re-wrap, a lock and unlock, a BYOK key (a .byok
# file for the import key, made by vaultctl and by the openssl command line)
# activated, the token audit, and a restart that unwraps the same key.  It
# also starts `tdenode --dev` beside it (the TDE storage node) and shows pages
# written, read back after a key activation, refused during the lock,
# readable again after the unlock, backed up and restored.  Stops both at
# the end; state stays for a rerun of
# `build/vault/vaultd --dev --state-dir state/quickstart` (and
# `build/storage/tdenode --dev --vault-state state/quickstart`).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/deploy/install-deps.sh"
"$ROOT/deploy/build.sh" "$ROOT/build"

VAULTD=$ROOT/build/vault/vaultd
VAULTCTL=$ROOT/build/client/vaultctl
TDENODE=$ROOT/build/storage/tdenode
TDECTL=$ROOT/build/storage/tdectl
STATE=$ROOT/state/quickstart
WORK=$STATE/work
PID=""
NODE_PID=""
# Short DEK leases, so a lock reaches the storage node within seconds.
LEASE=4

stop_tdenode() {
    if [ -n "$NODE_PID" ]; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" || true
        NODE_PID=""
    fi
}

stop_all() {
    stop_tdenode
    stop_vaultd
}

stop_vaultd() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" || true
        PID=""
    fi
}
trap stop_all EXIT INT TERM

# wait_ready NAME PID ADDR_FILE LOG: waits until a server wrote its address.
wait_ready() {
    i=0
    while [ ! -f "$3" ]; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "$1 failed to start:" >&2
            cat "$4" >&2
            exit 1
        fi
        i=$((i + 1))
        [ $i -lt 600 ] || { echo "$1 did not start in 60 s" >&2; exit 1; }
        sleep 0.1
    done
}

start_vaultd() {
    rm -f "$STATE/vaultd.addr"
    "$VAULTD" --dev --state-dir "$STATE" --listen 127.0.0.1:0 --lease-seconds $LEASE >"$STATE.out" 2>>"$STATE.log" &
    PID=$!
    wait_ready vaultd "$PID" "$STATE/vaultd.addr" "$STATE.log"
    echo "== vaultd --dev listening on $(cat "$STATE/vaultd.addr") (pid $PID; log $STATE.log)"
}

start_tdenode() {
    rm -f "$STATE/tdenode.addr"
    "$TDENODE" --dev --vault-state "$STATE" --listen 127.0.0.1:0 >"$STATE.tdenode.out" 2>>"$STATE.tdenode.log" &
    NODE_PID=$!
    wait_ready tdenode "$NODE_PID" "$STATE/tdenode.addr" "$STATE.tdenode.log"
    echo "== tdenode --dev listening on $(cat "$STATE/tdenode.addr") (pid $NODE_PID; data in $STATE/tdenode; log $STATE.tdenode.log)"
}

# tde ROLE tdectl-args...: runs tdectl as the database engine (engine) or
# the tdenode admin (admin), echoing the command first.
tde() {
    role=$1
    shift
    echo "\$ tdectl --config $STATE/clients/tdenode-$role.conf $*" | sed "s|$ROOT/||g" >&2
    "$TDECTL" --config "$STATE/clients/tdenode-$role.conf" "$@"
}
# page_sum DB N: SHA-256 of page N of DB as the engine reads it ("" if refused).
page_sum() { "$TDECTL" --config "$STATE/clients/tdenode-engine.conf" page read --env "$PROD" --db "$1" --page "$2" 2>/dev/null | sha256sum | cut -c1-16; }
# until_code WANT DB N: reads page N until tdectl exits WANT (at most 20 s); prints the seconds.
until_code() {
    t=0
    while :; do
        set +e
        "$TDECTL" --config "$STATE/clients/tdenode-engine.conf" page read --env "$PROD" --db "$2" --page "$3" >/dev/null 2>"$WORK/tde.err"
        rc=$?
        set -e
        [ "$rc" = "$1" ] && break
        t=$((t + 1))
        [ $t -lt 100 ] || { echo "   still exit $rc after 20 s: $(cat "$WORK/tde.err")" >&2; return 1; }
        sleep 0.2
    done
    echo "$((t / 5)).$((t % 5 * 2)) s"
}

# as ROLE vaultctl-args...: runs vaultctl with a dev principal's profile and
# echoes the command first.
as() {
    role=$1
    shift
    shown=""
    for arg in "$@"; do
        case "$arg" in
        *" "*) shown="$shown '$arg'" ;;
        *) shown="$shown $arg" ;;
        esac
    done
    echo "\$ vaultctl --config $STATE/clients/$role.conf$shown" | sed "s|$ROOT/||g" >&2
    "$VAULTCTL" --config "$STATE/clients/$role.conf" "$@"
}
# field NAME: the value of the first "NAME: value" line of vaultctl's output.
field() { sed -n "s/^ *$1: //p" | head -n 1; }

echo "== fresh demo state in $STATE"
rm -rf "$STATE" "$STATE.log" "$STATE.out"
mkdir -p "$WORK"
chmod 700 "$STATE" "$WORK"
rm -f "$STATE.tdenode.log" "$STATE.tdenode.out"
start_vaultd

echo
echo "== 1. The operator creates a tenant, turns on self-managed keys and creates two environments"
as operator whoami
TENANT=$(as operator tenant create --name contoso --subscription 3f2a9c1e-0b7d-4e55-9a1f-7c2d8e6b4a10 \
    --admin-contact secops@contoso.example --admin-contact dba@contoso.example | tee /dev/stderr | field id)
as operator tenant enable-self-managed --tenant "$TENANT" >/dev/null
PROD=$(as operator env create --tenant "$TENANT" --name prod-eu --type production | tee /dev/stderr | field id)
SBX=$(as operator env create --tenant "$TENANT" --name sandbox-1 --type sandbox | field id)
echo "   tenant $TENANT, production environment $PROD, sandbox $SBX"

echo
echo "== 2. The operator binds the tenant's admins and the storage node"
as operator role bind --principal spiffe://hsmvault.dev/tenant-admin --role tenant-admin --tenant "$TENANT" >/dev/null
as operator role bind --principal spiffe://hsmvault.dev/environment-admin --role environment-admin --tenant "$TENANT" >/dev/null
as operator role bind --principal spiffe://hsmvault.dev/storage-node --role storage-node --tenant "$TENANT" --env "$PROD" >/dev/null
as operator role list

echo
echo "== 3. The storage node creates a database key (wrapped under the tenant's service key)"
OUT=$(as storage-node db create --env "$PROD" --name orders)
echo "$OUT"
DB=$(echo "$OUT" | field database_id)
CHECK1=$(echo "$OUT" | field dek_sha256)

echo
echo "== 3b. tdenode, the storage node, serves pages sealed with AES-256-GCM under database keys it leases"
start_tdenode
PAGES_DB=$(tde engine db create --env "$PROD" --name orders-pages | tee /dev/stderr | field database_id)
for n in 0 1 2; do
    printf 'order %d: 12 crates of kiwis, Contoso Ltd\n' "$n" | tde engine page write --env "$PROD" --db "$PAGES_DB" --page "$n" >/dev/null
done
tde engine flush --env "$PROD" --db "$PAGES_DB" >/dev/null
tde engine page read --env "$PROD" --db "$PAGES_DB" --page 1 | tr -d '\000'
echo "   on disk the page is ciphertext (8 KiB with header and tag); the plaintext is nowhere in it:"
if grep -rq "crates of kiwis" "$STATE/tdenode"; then echo "   FOUND PLAINTEXT" >&2; exit 1; else echo "   (grep -r finds no 'crates of kiwis' under $STATE/tdenode)" | sed "s|$ROOT/||g"; fi
PAGE1=$(page_sum "$PAGES_DB" 1)
echo "   SHA-256 of page 1: $PAGE1"

echo
echo "== 4. The tenant admin generates a key; the PFX (password from a file) is written 0600"
umask 077
printf '%s' "demo-password-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$WORK/pfx-password"
as tenant-admin key generate --tenant "$TENANT" --name kek-2026 --out "$WORK/kek-2026.pfx" \
    --password-file "$WORK/pfx-password"
echo "   openssl reads the PFX; SHA-256 of its public key:"
openssl pkcs12 -in "$WORK/kek-2026.pfx" -passin "file:$WORK/pfx-password" -nokeys -clcerts 2>/dev/null |
    openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | sed 's/^/   /'

echo
echo "== 5. The environment admin applies the tenant key to production (DEKs re-wrapped, no page touched)"
as environment-admin env apply-key --env "$PROD"
OUT=$(as storage-node db unwrap --env "$PROD" --db "$DB")
echo "$OUT"
CHECK2=$(echo "$OUT" | field dek_sha256)

echo
echo "== 6. The tenant admin uploads a second key (a legacy PFX made by openssl) and activates it (live re-wrap)"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/own.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/own.key" -subj /CN=contoso-own -days 365 -out "$WORK/own.crt"
openssl pkcs12 -export -legacy -inkey "$WORK/own.key" -in "$WORK/own.crt" \
    -passout "file:$WORK/pfx-password" -out "$WORK/own.pfx"
KEY2=$(as tenant-admin key upload --tenant "$TENANT" --name own-2026 --pfx "$WORK/own.pfx" \
    --password-file "$WORK/pfx-password" | tee /dev/stderr | field id)
echo "   activating it at once is refused: no activation within 24 h of the last one"
as tenant-admin key activate --tenant "$TENANT" --key "$KEY2" || true
echo "   (vaultd --dev lets the operator move its clock; release builds have no such thing)"
as operator clock advance --seconds 86400 >/dev/null
echo "   a database engine reads page 1 in a loop meanwhile:"
rm -f "$WORK/stop-io"
(
    n=0
    f=0
    while [ ! -f "$WORK/stop-io" ]; do
        if [ "$(page_sum "$PAGES_DB" 1)" = "$PAGE1" ]; then n=$((n + 1)); else f=$((f + 1)); fi
    done
    echo "$n $f" >"$WORK/io-count"
) &
IO_PID=$!
sleep 1
as tenant-admin key activate --tenant "$TENANT" --key "$KEY2" >/dev/null
sleep 1
touch "$WORK/stop-io"
wait "$IO_PID"
read -r IO_OK IO_FAILED <"$WORK/io-count"
as tenant-admin key list --tenant "$TENANT"
CHECK3=$(as storage-node db unwrap --env "$PROD" --db "$DB" | field dek_sha256)
echo "   database key check value after activation: $CHECK3"
PAGE2=$(page_sum "$PAGES_DB" 1)
echo "   tdenode served $IO_OK reads of page 1 across the activation, $IO_FAILED failed (no downtime); its SHA-256 is still $PAGE2 (nothing re-encrypted)"

echo
echo "== 7. Seed 001's lock: the tenant admin locks the tenant with the active key; nothing unwraps"
echo "   locking within 72 h of a key change is refused:"
TEXT=$(as tenant-admin tenant lock-text --tenant "$TENANT" | field text)
as tenant-admin tenant lock --tenant "$TENANT" --pfx "$WORK/own.pfx" --password-file "$WORK/pfx-password" \
    --confirm "$TEXT" || true
as operator clock advance --seconds 259200 >/dev/null
echo "   72 h later (dev clock), with the confirmation text typed back ('$TEXT'):"
as tenant-admin tenant lock --tenant "$TENANT" --pfx "$WORK/own.pfx" --password-file "$WORK/pfx-password" \
    --confirm "$TEXT"
set +e
as storage-node db unwrap --env "$PROD" --db "$DB"
LOCKED_RC=$?
set -e
echo "   exit code $LOCKED_RC: the environment is locked for everyone"
echo "   and tdenode: its next lease renewal is refused, the DEK wiped, every read and write refused:"
T=$(until_code 6 "$PAGES_DB" 1)
echo "   refused (exit code 6) $T after the lock (leases here: $LEASE s): $(cat "$WORK/tde.err")"
echo "   unlocking is refused for 1 h; an hour later the same key is uploaded again, then the environment unlocked:"
as tenant-admin key unlock --tenant "$TENANT" --key "$KEY2" --pfx "$WORK/own.pfx" --password-file "$WORK/pfx-password" || true
as operator clock advance --seconds 3600 >/dev/null
as tenant-admin key unlock --tenant "$TENANT" --key "$KEY2" --pfx "$WORK/own.pfx" --password-file "$WORK/pfx-password" >/dev/null
as environment-admin env unlock --env "$PROD" >/dev/null
CHECK5=$(as storage-node db unwrap --env "$PROD" --db "$DB" | field dek_sha256)
echo "   database key check value after unlock: $CHECK5"
T=$(until_code 0 "$PAGES_DB" 1)
PAGE3=$(page_sum "$PAGES_DB" 1)
echo "   tdenode serves the page again $T after the unlock, the same bytes: SHA-256 $PAGE3"

echo
echo "== 7b. BYOK: the tenant admin brings a key as a .byok file wrapped for the subscription's import key"
as tenant-admin key import-key --tenant "$TENANT" --out "$WORK/importkey.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/byok.key" 2>/dev/null
echo "   wrapped on the admin's side, in process (vaultctl byok wrap needs no vault):"
"$VAULTCTL" byok wrap --import-key "$WORK/importkey.pem" --key "$WORK/byok.key" --out "$WORK/byok.byok"
echo "   and with the openssl command line alone (deploy/byok-openssl.sh, docs/byok.md):"
sh "$ROOT/deploy/byok-openssl.sh" "$WORK/importkey.pem" "$WORK/byok.key" "$WORK/byok-openssl.byok"
KEY3=$(as tenant-admin key upload --tenant "$TENANT" --name byok-2026 --byok "$WORK/byok-openssl.byok" |
    tee /dev/stderr | field id)
echo "   the same key again (the vaultctl-made file) is refused: it is a key of the tenant already"
as tenant-admin key upload --tenant "$TENANT" --name byok-again --byok "$WORK/byok.byok" || true
as operator clock advance --seconds 86400 >/dev/null
as tenant-admin key activate --tenant "$TENANT" --key "$KEY3" >/dev/null
CHECK6=$(as storage-node db unwrap --env "$PROD" --db "$DB" | field dek_sha256)
echo "   database key check value under the BYOK key: $CHECK6"

echo
echo "== 8. The auditor lists the token: every private key sensitive, not extractable, decrypt/unwrap only"
as auditor audit token

echo
echo "== 8b. The auditor reads the audit log (every call, allowed or refused) and verifies it"
as auditor audit log --operation UnwrapDatabaseKey | tail -n 4
rm -f "$WORK/audit-checkpoint.pem" "$WORK/audit-export.txt"
as auditor audit key --out "$WORK/audit-checkpoint.pem" >/dev/null
as auditor audit export --out "$WORK/audit-export.txt"
as auditor audit verify
echo "   offline, with only the export and the checkpoint public key:"
"$VAULTCTL" audit verify --file "$WORK/audit-export.txt" --public-key "$WORK/audit-checkpoint.pem"

echo
echo "== 9. Restart vaultd on the same state; the storage node unwraps the same key"
stop_vaultd
start_vaultd
CHECK4=$(as storage-node db unwrap --env "$PROD" --db "$DB" | field dek_sha256)
echo "   check value after restart: $CHECK4"
T=$(until_code 0 "$PAGES_DB" 1)
PAGE4=$(page_sum "$PAGES_DB" 1)
echo "   tdenode found the restarted vault (another port) by itself; page 1: $PAGE4"

echo
echo "== 9b. The tdenode admin backs the database up (sealed pages + manifest, no key) and restores it into a new database"
BK=$(tde admin backup create --env "$PROD" --db "$PAGES_DB" | tee /dev/stderr | field backup_id)
RESTORED=$(tde admin restore --backup "$BK" --to-env "$PROD" --name orders-restored | field database_id)
PAGE5=$(page_sum "$RESTORED" 1)
echo "   restored as $RESTORED (every page re-sealed under its own key); page 1: $PAGE5"
echo "   restoring into the sandbox is refused by the vault (this storage node is not bound to it, and it is not on the production key):"
tde admin restore --backup "$BK" --to-env "$SBX" --name nope || true

echo
echo "== 10. A storage node asking for another environment is refused (exit code 5)"
set +e
as storage-node db create --env "$SBX" --name reports
rc=$?
set -e
echo "   exit code $rc"

if [ "$CHECK1" = "$CHECK2" ] && [ "$CHECK2" = "$CHECK3" ] && [ "$CHECK3" = "$CHECK4" ] && [ "$CHECK4" = "$CHECK5" ] &&
    [ "$CHECK5" = "$CHECK6" ] &&
    [ -n "$CHECK1" ] && [ "$rc" = 5 ] && [ "$LOCKED_RC" = 6 ] && [ -n "$PAGE1" ] &&
    [ "$PAGE1" = "$PAGE2" ] && [ "$PAGE2" = "$PAGE3" ] && [ "$PAGE3" = "$PAGE4" ] && [ "$PAGE4" = "$PAGE5" ] && [ "$IO_FAILED" = 0 ] && [ "$IO_OK" -gt 0 ]; then
    echo
    echo "== OK: the database key survived the service key, three tenant keys (one from a .byok file), a lock and a restart ($CHECK1);"
    echo "   tdenode's page read back the same through the activation, the lock, the restart and a restore ($PAGE1)"
else
    echo "== FAILED: check values differ ($CHECK1 $CHECK2 $CHECK3 $CHECK5 $CHECK4; pages $PAGE1 $PAGE2 $PAGE3 $PAGE4 $PAGE5) or exit codes $rc $LOCKED_RC" >&2
    exit 1
fi
stop_all
echo "== vaultd and tdenode stopped; run them again with: build/vault/vaultd --dev --state-dir state/quickstart"
echo "   and build/storage/tdenode --dev --vault-state state/quickstart"
