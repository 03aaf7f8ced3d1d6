#!/bin/sh
# build.sh [BUILD_DIR [extra cmake args...]]: configures (once) and builds
# hsmvault with warnings as errors.  Default build directory: ./build.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
[ $# -gt 0 ] && shift
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHSMVAULT_WERROR=ON "$@"
fi
cmake --build "$BUILD" -j "$(nproc)"
