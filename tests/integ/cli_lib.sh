# cli_lib.sh: helpers of the CLI tests (sourced; needs $TMP, PASS=0, FAIL=0).
# ok / bad DESCRIPTION count a check; expect CODE DESCRIPTION -- command...
# checks the exit code (stdout in $TMP/out, stderr in $TMP/err) and that a
# failing command writes exactly one line on stderr.

ok() { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*" >&2; }
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
