#!/bin/sh
# test.sh: the whole test suite.  Installs what is missing, builds with
# warnings as errors, runs every ctest test (unit, integration against real
# SoftHSM tokens and real vaultd processes, fuzz corpus replays).  The output
# ends with ctest's summary; the exit code is ctest's.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/deploy/install-deps.sh"
"$ROOT/deploy/build.sh" "$ROOT/build"
cd "$ROOT/build"
exec ctest --output-on-failure --parallel "$(nproc)" --timeout 900
