#!/bin/sh
# install-deps.sh: installs the Debian packages hsmvault needs that are
# missing.  Idempotent; apt-get only; needs root only when something is
# missing.  Used by quickstart.sh and test.sh.
set -eu

PACKAGES="build-essential cmake pkg-config ca-certificates openssl
libssl-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler liblmdb-dev
libp11-dev libp11-kit-dev libcmocka-dev libcurl4-openssl-dev softhsm2 opensc
python3 python3-aiosmtpd"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $p"
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

echo "install-deps: installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages:$missing; run as root (or apt-get install them)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
