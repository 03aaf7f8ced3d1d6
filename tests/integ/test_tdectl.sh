#!/bin/sh
# test_tdectl.sh: tdectl against a real tdenode --dev beside a real
# vaultd --dev: help, documented exit codes with one line on stderr, pages
# through files and pipes (never argv; --out never replaces a file), JSON,
# backup/restore/copy/reset, DATA_LOSS's exit code; then tdenode from a
# config file (production mode) with an environment-scoped grant, and its
# refusals of bad settings.
set -u
TEST_NAME=tdectl
. "$(dirname "$0")/cli_lib.sh"
TDENODE=$BUILD/storage/tdenode
TDECTL=$BUILD/storage/tdectl
NPID=""
PPID2=""
# cli_lib's cleanup stops vaultd ($PID); the two tdenodes go first.
cleanup_nodes() {
    for p in $PPID2 $NPID; do kill -TERM "$p" 2>/dev/null && wait "$p"; done
    cleanup
}
trap cleanup_nodes EXIT

eng() { "$TDECTL" --config "$STATE/clients/tdenode-engine.conf" "$@"; }
adm() { "$TDECTL" --config "$STATE/clients/tdenode-admin.conf" "$@"; }
wait_for() {
    i=0
    while [ ! -f "$1" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    [ -f "$1" ]
}

"$VAULTD" --dev --state-dir "$STATE" --listen 127.0.0.1:0 --lease-seconds 5 >"$TMP/vaultd.out" 2>"$TMP/vaultd.log" &
PID=$!
wait_for "$STATE/vaultd.addr" || { cat "$TMP/vaultd.log" >&2; exit 1; }
as operator tenant create --name contoso --subscription sub-1 --admin-contact a@example.com >"$TMP/out"
TENANT=$(id_of tnt)
as operator tenant enable-self-managed --tenant "$TENANT" >/dev/null
as operator env create --tenant "$TENANT" --name prod --type production >"$TMP/out"
PROD=$(id_of env)
as operator env create --tenant "$TENANT" --name qa --type sandbox >"$TMP/out"
QA=$(id_of env)
as operator role bind --principal spiffe://hsmvault.dev/storage-node --role storage-node --tenant "$TENANT" >/dev/null
as operator role bind --principal spiffe://hsmvault.dev/environment-admin --role environment-admin --tenant "$TENANT" >/dev/null
as operator tenant create --name fabrikam --subscription sub-2 --admin-contact b@example.com >"$TMP/out"
TENANT2=$(id_of tnt)
as operator env create --tenant "$TENANT2" --name other --type sandbox >"$TMP/out"
OTHER=$(id_of env)
as operator role bind --principal spiffe://hsmvault.dev/storage-node --role storage-node --tenant "$TENANT2" >/dev/null

# tdenode --dev: usage errors, then the node.
expect 2 "tdenode without a mode" -- "$TDENODE"
expect 0 "tdenode --help" -- "$TDENODE" --help
grep -q "Exit codes" "$TMP/out" && ok || bad "tdenode --help lacks exit codes"
expect 1 "tdenode without vault certificates" -- "$TDENODE" --dev --vault-state "$TMP/nowhere"
"$TDENODE" --dev --vault-state "$STATE" --listen 127.0.0.1:0 --checkpoint-pages 64 >"$TMP/node.out" 2>"$TMP/node.log" &
NPID=$!
wait_for "$STATE/tdenode.addr" || { cat "$TMP/node.log" >&2; exit 1; }
grep -q "TDECTL_CONFIG=$STATE/clients/tdenode-engine.conf" "$TMP/node.out" && ok || bad "tdenode --dev does not say how to point tdectl at it"

# Help and usage errors.
expect 0 "help" -- "$TDECTL" --help
grep -q "10 data loss" "$TMP/out" && ok || bad "help lacks exit codes"
for c in "db create" "page write" "page read" "backup create" "restore" "copy" "env reset"; do
    # shellcheck disable=SC2086
    expect 0 "$c --help" -- "$TDECTL" $c --help
    grep -q "usage: tdectl $c" "$TMP/out" && ok || bad "$c --help: no usage line"
done
expect 2 "no profile" -- env -u TDECTL_CONFIG "$TDECTL" db list
expect 2 "unknown command" -- eng frobnicate
expect 2 "missing option" -- eng db create --env "$PROD"
expect 2 "bad page number" -- eng page read --env "$PROD" --db db-0000000000000000 --page -1
expect 2 "restore without a target" -- adm restore --backup bk-0000000000000000 --to-env "$PROD"
expect 4 "missing profile file" -- "$TDECTL" --config "$TMP/nope.conf" db list

# Databases and pages.
expect 0 "db create" -- eng --json db create --env "$PROD" --name orders
DB=$(id_of db)
grep -q '"state": *"open"' "$TMP/out" && ok || bad "db create --json: $(cat "$TMP/out")"
expect 8 "db create twice" -- eng db create --env "$PROD" --name orders
expect 3 "bad environment id" -- eng db create --env "../x" --name y
expect 0 "db list" -- eng db list --env "$PROD"
grep -q "$DB" "$TMP/out" && ok || bad "db list lacks $DB"
printf 'the first page\n' >"$TMP/p0"
expect 0 "page write from a file" -- eng page write --env "$PROD" --db "$DB" --page 0 --in "$TMP/p0" --flush
grep -q "flushed: true" "$TMP/out" && ok || bad "page write: $(cat "$TMP/out")"
printf 'from stdin' | eng page write --env "$PROD" --db "$DB" --page 1 >/dev/null && ok || bad "page write from stdin"
head -c 8145 /dev/zero >"$TMP/big"
expect 3 "page too large" -- eng page write --env "$PROD" --db "$DB" --page 2 --in "$TMP/big"
expect 0 "page read to stdout" -- eng page read --env "$PROD" --db "$DB" --page 0
[ "$(wc -c <"$TMP/out")" = 8144 ] && ok || bad "page read: $(wc -c <"$TMP/out") bytes"
head -c 15 "$TMP/out" | grep -q "the first page" && ok || bad "page 0 reads back wrong"
expect 0 "page read to a file" -- eng page read --env "$PROD" --db "$DB" --page 1 --out "$TMP/p1.out"
head -c 10 "$TMP/p1.out" | grep -q "from stdin" && ok || bad "page 1 reads back wrong"
[ "$(stat -c %a "$TMP/p1.out")" = 600 ] && ok || bad "page file not 0600"
expect 8 "--out never replaces" -- eng page read --env "$PROD" --db "$DB" --page 1 --out "$TMP/p1.out"
expect 4 "never written" -- eng page read --env "$PROD" --db "$DB" --page 7
grep -q "never been written" "$TMP/err" && ok || bad "never-written message: $(cat "$TMP/err")"
expect 4 "unknown database" -- eng page read --env "$PROD" --db db-0000000000000000 --page 0
expect 0 "flush" -- eng flush --env "$PROD" --db "$DB"
expect 0 "db show --json" -- eng --json db show --env "$PROD" --db "$DB"
grep -q '"pages_sealed": *2' "$TMP/out" && ok || bad "db show: $(cat "$TMP/out")"
expect 0 "db open" -- eng db open --env "$PROD" --db "$DB"

# Admin operations: the engine may not; the admin may.
expect 5 "engine backs up" -- eng backup create --env "$PROD" --db "$DB"
grep -q "'admin' grant" "$TMP/err" && ok || bad "denied message: $(cat "$TMP/err")"
expect 0 "backup" -- adm --json backup create --env "$PROD" --db "$DB"
BK=$(id_of bk)
[ -n "$BK" ] && ok || bad "no backup id in $(cat "$TMP/out")"
expect 0 "backup list" -- adm backup list --env "$PROD"
grep -q "$BK" "$TMP/out" && ok || bad "backup list lacks $BK"
expect 2 "backup list --db without --env" -- adm backup list --db "$DB"
expect 0 "restore into a new database" -- adm restore --backup "$BK" --to-env "$PROD" --name orders-restored
DB2=$(id_of db)
expect 0 "restored page" -- eng page read --env "$PROD" --db "$DB2" --page 0
head -c 15 "$TMP/out" | grep -q "the first page" && ok || bad "restored page 0 reads back wrong"
expect 0 "restore into qa (the same service key)" -- adm restore --backup "$BK" --to-env "$QA" --name from-prod
expect 6 "restore into another tenant's environment" -- adm restore --backup "$BK" --to-env "$OTHER" --name x
grep -q "the vault refuses this restore" "$TMP/err" && ok || bad "refusal: $(cat "$TMP/err")"
expect 6 "copy into the same environment" -- adm copy --env "$PROD" --db "$DB" --to-env "$PROD" --name x
expect 4 "restore an unknown backup" -- adm restore --backup bk-0000000000000000 --to-env "$PROD" --name x

# A tampered page: exit code 10, DATA_LOSS naming the page.
i=0
while [ $i -lt 64 ]; do
    printf 'page %d' $i | eng page write --env "$PROD" --db "$DB2" --page $((i + 10)) >/dev/null || bad "write $i"
    i=$((i + 1))
done
eng flush --env "$PROD" --db "$DB2" >/dev/null # the journal is checkpointed into the page file
PAGES=$STATE/tdenode/db/$PROD/$DB2/pages
[ -f "$PAGES" ] && ok || bad "no page file $PAGES"
printf 'X' | dd of="$PAGES" bs=1 seek=$((20 * 8192 + 500)) conv=notrunc 2>/dev/null
expect 10 "tampered page" -- eng page read --env "$PROD" --db "$DB2" --page 20
grep -q "DATA_LOSS: database $DB2 .*page 20 failed authentication" "$TMP/err" && ok || bad "data loss message: $(cat "$TMP/err")"

# Reset: confirmation typed back; everything of the environment goes.
expect 6 "reset without the name" -- adm env reset --env "$PROD" --confirm qa
expect 0 "reset" -- adm --json env reset --env "$PROD" --confirm prod
grep -q '"databases_deleted": *2' "$TMP/out" && ok || bad "reset: $(cat "$TMP/out")"
grep -q '"backups_deleted": *1' "$TMP/out" && ok || bad "reset: $(cat "$TMP/out")"
expect 6 "read after reset" -- eng page read --env "$PROD" --db "$DB" --page 0
grep -q "reset" "$TMP/err" && ok || bad "after reset: $(cat "$TMP/err")"
expect 0 "open after reset" -- eng --json db open --env "$PROD" --db "$DB"
grep -q '"dek_version": *2' "$TMP/out" && ok || bad "open after reset: $(cat "$TMP/out")"
expect 4 "empty after reset" -- eng page read --env "$PROD" --db "$DB" --page 0

# Production mode: a config file, an engine granted one environment only.
cat >"$TMP/node.conf" <<EOF
# tdenode for the test, as an operator would write it
listen = 127.0.0.1:0
tls_ca = $STATE/tls/ca.pem
tls_cert = $STATE/tls/tdenode.pem
tls_key = $STATE/tls/tdenode.key
vault_target = $(cat "$STATE/vaultd.addr")
vault_server_name = localhost
vault_ca = $STATE/tls/ca.pem
vault_cert = $STATE/tls/storage-node.pem
vault_key = $STATE/tls/storage-node.key
data_dir = $TMP/prod-node
engine = spiffe://hsmvault.dev/database-engine $QA
admin = spiffe://hsmvault.dev/tde-admin
max_lease = 30s
lock_memory = no
EOF
printf 'bogus = 1\n' >"$TMP/bad.conf"
expect 1 "unknown setting" -- "$TDENODE" --config "$TMP/bad.conf"
grep -q "bad.conf:1: unknown setting 'bogus'" "$TMP/err" && ok || bad "config error: $(cat "$TMP/err")"
sed 's/^engine = .*/engine = spiffe:\/\/x env\/..\/y/' "$TMP/node.conf" >"$TMP/bad2.conf"
expect 1 "bad grant" -- "$TDENODE" --config "$TMP/bad2.conf"
grep -v '^engine\|^admin' "$TMP/node.conf" >"$TMP/bad3.conf"
expect 1 "no grants" -- "$TDENODE" --config "$TMP/bad3.conf"
grep -q "nobody could use this node" "$TMP/err" && ok || bad "no grants: $(cat "$TMP/err")"
expect 1 "bad option value" -- "$TDENODE" --config "$TMP/node.conf" --workers 0
"$TDENODE" --config "$TMP/node.conf" --listen 127.0.0.1:0 >"$TMP/prod.out" 2>"$TMP/prod.log" &
PPID2=$!
i=0
while ! grep -q "listening on" "$TMP/prod.log" && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
PORT=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$TMP/prod.log" | head -n 1)
[ -n "$PORT" ] && ok || bad "production tdenode did not start: $(cat "$TMP/prod.log")"
sed "s/^target = .*/target = 127.0.0.1:$PORT/" "$STATE/clients/tdenode-engine.conf" >"$TMP/prod-engine.conf"
expect 0 "scoped engine in its environment" -- "$TDECTL" --config "$TMP/prod-engine.conf" db create --env "$QA" --name scoped
expect 5 "scoped engine elsewhere" -- "$TDECTL" --config "$TMP/prod-engine.conf" db create --env "$PROD" --name nope
grep -q "for environment $PROD" "$TMP/err" && ok || bad "scoped denial: $(cat "$TMP/err")"
expect 0 "scoped listing" -- "$TDECTL" --config "$TMP/prod-engine.conf" db list
grep -q "scoped" "$TMP/out" && ok || bad "scoped listing: $(cat "$TMP/out")"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
