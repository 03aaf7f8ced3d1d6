#!/bin/sh
# test.sh: the whole test suite.  Installs what is missing, then runs every
# ctest test (unit, integration against real SoftHSM tokens and real vaultd
# processes over mTLS, fuzz-corpus replays) twice:
#   1. build-asan/: Debug with AddressSanitizer + UndefinedBehaviorSanitizer;
#   2. build/:      RelWithDebInfo, the build quickstart.sh runs.
# Both builds use -Werror.  The output ends with the second run's ctest
# summary; the exit code is non-zero if either run failed.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
JOBS=$(nproc)
"$ROOT/deploy/install-deps.sh"

echo "== sanitizer build (ASan + UBSan) in build-asan/"
"$ROOT/deploy/build.sh" "$ROOT/build-asan" -DCMAKE_BUILD_TYPE=Debug -DHSMVAULT_SANITIZE=ON
asan=0
(cd "$ROOT/build-asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure --parallel "$JOBS" --timeout 900) || asan=1

[ "$asan" -eq 0 ] || echo "== the sanitizer run FAILED (see above); the release run follows, the exit code will be 1"
echo "== release build in build/"
"$ROOT/deploy/build.sh" "$ROOT/build"
cd "$ROOT/build"
rc=0
ctest --output-on-failure --parallel "$JOBS" --timeout 900 || rc=$?
[ "$asan" -eq 0 ] || exit 1
exit "$rc"
