#!/bin/sh
# byok-openssl.sh IMPORT_KEY_FILE TENANT_KEY.pem OUT.byok [sha256]
#
# Builds a .byok file with the openssl command line alone (docs/byok.md
# shows the same commands): a fresh AES-256 key wrapped with RSA-OAEP under
# the import key, the tenant key (PKCS#8 DER) wrapped with AES key wrap with
# padding (RFC 5649) under the AES key, both base64url-encoded into the JSON
# of the Azure Key Vault BYOK format.
#
# IMPORT_KEY_FILE is the file `vaultctl key import-key` wrote (its "# kid:"
# line names the import key; set KID=... to give it for a plain PEM file).
# Add "sha256" to use RSA-OAEP with SHA-256 (marked by header.oaep_hash) for
# vaults whose token supports it; the default is SHA-1, the published format.
#
# Run it on a machine you trust: the tenant key and the AES key pass through
# a private temporary directory (removed at the end) and the AES key is on
# openssl's command line (-K) while it runs.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 IMPORT_KEY_FILE TENANT_KEY.pem OUT.byok [sha256]" >&2; exit 2; }
IMPORT=$1
TENANT=$2
OUT=$3
HASH=${4:-sha1}
[ -e "$OUT" ] && { echo "$0: $OUT exists; not overwriting it" >&2; exit 1; }
case $HASH in
sha1) HEADER_EXTRA="" ;;
sha256) HEADER_EXTRA=',"oaep_hash":"SHA-256"' ;;
*) echo "$0: the hash is sha1 or sha256, not $HASH" >&2; exit 2 ;;
esac
KID=${KID:-$(sed -n 's/^# kid: *//p' "$IMPORT" | head -n 1)}
[ -n "$KID" ] || { echo "$0: $IMPORT has no '# kid:' line; set KID=..." >&2; exit 2; }

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
umask 077

# 1. The tenant key as PKCS#8 DER.
openssl pkcs8 -topk8 -nocrypt -in "$TENANT" -outform DER -out "$W/key.p8"
# 2. A fresh AES-256 key.
openssl rand -out "$W/aes.bin" 32
# 3. RSA-OAEP (SHA-1 or SHA-256, MGF1 of the same hash, empty label) of the
#    AES key under the import key.
openssl pkeyutl -encrypt -pubin -inkey "$IMPORT" -in "$W/aes.bin" -out "$W/rsa.bin" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt "rsa_oaep_md:$HASH" -pkeyopt "rsa_mgf1_md:$HASH"
# 4. AES key wrap with padding (RFC 5649; A65959A6 is its alternative IV) of
#    the tenant key under the AES key.
openssl enc -id-aes256-wrap-pad -K "$(od -An -tx1 "$W/aes.bin" | tr -d ' \n')" -iv A65959A6 \
    -in "$W/key.p8" -out "$W/kwp.bin"
# 5. ciphertext = RSA part || KWP part, base64url without padding.
CT=$(cat "$W/rsa.bin" "$W/kwp.bin" | openssl base64 -A | tr '+/' '-_' | tr -d '=')
printf '{\n  "schema_version": "1.0.0",\n  "header": {"kid": "%s", "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"%s},\n  "ciphertext": "%s",\n  "generator": "openssl command line (byok-openssl.sh)"\n}\n' \
    "$KID" "$HEADER_EXTRA" "$CT" >"$W/out.byok"
umask 022
(set -C && cat "$W/out.byok" >"$OUT") # never over an existing file
