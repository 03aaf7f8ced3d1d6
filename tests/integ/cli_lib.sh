# cli_lib.sh: shared by the integration tests that drive vaultctl from the
# shell (test_vaultctl.sh, test_byok_cli.sh).  Source it after setting
# TEST_NAME; it sets BUILD, VAULTD, VAULTCTL, TMP (removed at exit unless a
# check failed), STATE, PASS, FAIL and PID (a vaultd to stop at exit), and
# defines the helpers below.
BUILD=${HSMVAULT_BUILD_DIR:?}
VAULTD=$BUILD/vault/vaultd
VAULTCTL=$BUILD/client/vaultctl
TMP=$(mktemp -d "/tmp/hsmvault-${TEST_NAME:?}.XXXXXX")
STATE=$TMP/state
PASS=0
FAIL=0
PID=""

cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID"
    if [ "$FAIL" -eq 0 ]; then rm -rf "$TMP"; else echo "state kept in $TMP" >&2; fi
}
trap cleanup EXIT

ok() { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*" >&2; }
# expect CODE description -- command...: checks the exit code (and, for a
# failure, exactly one line on stderr); stdout in $TMP/out, stderr in $TMP/err.
expect() {
    want=$1
    what=$2
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    got=$?
    if [ "$got" = "$want" ]; then ok; else bad "$what: exit $got, want $want: $(cat "$TMP/err")"; fi
    if [ "$want" != 0 ]; then
        lines=$(wc -l <"$TMP/err")
        if [ "$lines" = 1 ]; then ok; else bad "$what: $lines lines on stderr, want 1: $(cat "$TMP/err")"; fi
    fi
}
# says TEXT: the last command's stderr holds TEXT.
says() { grep -q -- "$1" "$TMP/err" && ok || bad "message lacks '$1': $(cat "$TMP/err")"; }
# as ROLE args...: vaultctl with vaultd --dev's profile for ROLE.
as() { role=$1; shift; "$VAULTCTL" --config "$STATE/clients/$role.conf" "$@"; }
# id_of PREFIX: the first id "PREFIX-<16 hex>" in $TMP/out.
id_of() { grep -o "$1-[0-9a-f]\{16\}" "$TMP/out" | head -n 1; }
# vaultd_dev_start: vaultd --dev on $STATE, waits until it listens.
vaultd_dev_start() {
    "$VAULTD" --dev --state-dir "$STATE" --listen 127.0.0.1:0 >>"$TMP/vaultd.out" 2>>"$TMP/vaultd.log" &
    PID=$!
    i=0
    while [ ! -f "$STATE/vaultd.addr" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    [ -f "$STATE/vaultd.addr" ] || { cat "$TMP/vaultd.log" >&2; exit 1; }
}
