#!/bin/sh
# test_notify.sh: key-change notifications over SMTP to a real relay
# (python3-aiosmtpd on loopback).  The relay is down at first: the message
# waits in the LMDB outbox, survives a vaultd restart, and is delivered once
# the relay is up, to every admin contact, saying what changed, who, when.
set -u
BUILD=${HSMVAULT_BUILD_DIR:?}
VAULTD=$BUILD/vault/vaultd
VAULTCTL=$BUILD/client/vaultctl
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/hsmvault-notify.XXXXXX)
STATE=$TMP/state
PASS=0
FAIL=0
PID=""
RELAY=""

cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID"
    [ -n "$RELAY" ] && kill -TERM "$RELAY" 2>/dev/null && wait "$RELAY" 2>/dev/null
    if [ "$FAIL" -eq 0 ]; then rm -rf "$TMP"; else echo "state kept in $TMP" >&2; fi
}
trap cleanup EXIT
ok() { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*" >&2; }
as() { role=$1; shift; "$VAULTCTL" --config "$STATE/clients/$role.conf" "$@"; }
# wait_for SECONDS COMMAND...: polls until the command succeeds.
wait_for() {
    n=$(($1 * 10)); shift
    while [ $n -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}

if ! $PY -c 'import aiosmtpd' 2>/dev/null; then
    echo "FAIL: python3-aiosmtpd is not installed (deploy/install-deps.sh installs it)" >&2
    exit 1
fi
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

start_vaultd() {
    rm -f "$STATE/vaultd.addr"
    "$VAULTD" --dev --state-dir "$STATE" --listen 127.0.0.1:0 --smtp "smtp://127.0.0.1:$PORT" \
        >/dev/null 2>>"$TMP/vaultd.log" &
    PID=$!
    wait_for 30 test -f "$STATE/vaultd.addr" || { cat "$TMP/vaultd.log" >&2; exit 1; }
}
stop_vaultd() { kill -TERM "$PID"; wait "$PID"; PID=""; }

start_vaultd
T=$(as operator tenant create --name contoso --subscription sub-1 --admin-contact secops@example.com \
    --admin-contact dba@example.com | sed -n 's/^id: //p')
as operator tenant enable-self-managed --tenant "$T" >/dev/null
as operator role bind --principal spiffe://hsmvault.dev/tenant-admin --role tenant-admin --tenant "$T" >/dev/null
printf 'notify test password\n' >"$TMP/pw"
as tenant-admin key generate --tenant "$T" --name k1 --out "$TMP/k1.pfx" --password-file "$TMP/pw" >/dev/null 2>&1 \
    && ok || bad "key generate"

# The relay is down: the message is kept and retried.
wait_for 10 grep -q "not delivered (attempt 1" "$TMP/vaultd.log" && ok || bad "no failed delivery attempt logged"
grep -q "Connection refused\|Couldn't connect\|connect" "$TMP/vaultd.log" && ok || bad "the failure reason is not logged"
# It survives a restart (it lives in the LMDB outbox, not in memory).
stop_vaultd
start_vaultd
wait_for 10 grep -q "not delivered (attempt 2" "$TMP/vaultd.log" && ok || bad "the message did not survive the restart"

# The relay comes up; the next attempt (the dev clock skips the backoff) delivers it.
$PY -m aiosmtpd -n -l "127.0.0.1:$PORT" -c aiosmtpd.handlers.Mailbox "$TMP/mbox" >"$TMP/relay.log" 2>&1 &
RELAY=$!
sleep 1
as operator clock advance --seconds 600 >/dev/null
wait_for 20 sh -c "ls '$TMP/mbox/new' 2>/dev/null | grep -q ." && ok || bad "nothing delivered: $(tail -3 "$TMP/vaultd.log")"
MSG=$(ls "$TMP/mbox/new"/* 2>/dev/null | head -n 1)
[ -n "$MSG" ] || MSG=/dev/null
grep -q "^X-RcptTo: secops@example.com, dba@example.com" "$MSG" && ok || bad "recipients: $(grep X-RcptTo "$MSG")"
grep -q "^Subject: \[hsmvault\] tenant contoso: key change" "$MSG" && ok || bad "subject"
grep -q "^What: key k1 (key-[0-9a-f]*, fingerprint [0-9a-f]*\.\.\.) was generated and is active" "$MSG" && ok || bad "what: $(grep What "$MSG")"
grep -q "^Who:  spiffe://hsmvault.dev/tenant-admin" "$MSG" && ok || bad "who"
grep -q "^When: 20[0-9-]*T" "$MSG" && ok || bad "when"
grep -q "notify test password" "$MSG" && bad "the password was mailed" || ok
wait_for 10 grep -q "delivered to 2 admin contacts of tenant $T" "$TMP/vaultd.log" && ok || bad "delivery not logged"
# Delivered once: the outbox is empty, so a later pass sends nothing more.
sleep 2
[ "$(ls "$TMP/mbox/new" | wc -l)" = 1 ] && ok || bad "delivered $(ls "$TMP/mbox/new" | wc -l) times"

# A bad relay URL is refused at start-up with a clear message.
stop_vaultd
"$VAULTD" --dev --state-dir "$STATE" --listen 127.0.0.1:0 --smtp "http://127.0.0.1:$PORT" >/dev/null 2>"$TMP/bad.err"
[ $? = 1 ] && grep -q "smtp:// or smtps://" "$TMP/bad.err" && ok || bad "bad relay URL: $(cat "$TMP/bad.err")"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
