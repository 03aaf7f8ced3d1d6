#!/bin/sh
# test_byok_cli.sh: BYOK end to end as admins run it, against a real vaultd --dev
# (SoftHSM token, LMDB) and a second SoftHSM token as the admin's own HSM:
#   - the import key downloaded with vaultctl (never over an existing file);
#   - a .byok file made by the openssl command line alone (docs/byok.md's
#     recipe, run verbatim) uploads, becomes active, and wraps/unwraps DEKs;
#   - vaultctl byok wrap in process, and inside the admin's token (C_WrapKey);
#   - import key rotation to 3072 and 4096 bits, the previous version accepted
#     until import_key_validity, then refused;
#   - every bad input refused with one line on stderr and the vault's token
#     objects counted before and after (Audit/ListTokenObjects);
#   - lock and unlock with the active key presented as its .byok file.
set -u
TEST_NAME=byok-cli
. "$(dirname "$0")/cli_lib.sh"
MODULE=${HSMVAULT_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
# The vault token's objects, as the auditor sees them.
objects() { as auditor --json audit token | grep -o '"object_class"' | wc -l; }
# refused CODE description FILE: uploading FILE to tenant T1 fails with CODE
# and leaves the token's objects as they were.
refused() {
    n0=$(objects)
    expect "$1" "$2" -- as tenant-admin key upload --tenant "$T1" --name bad --byok "$3"
    n1=$(objects)
    [ "$n0" = "$n1" ] && ok || bad "$2: token objects $n0 before, $n1 after"
}
b64url() { basenc --base64url -w0; }

# docs/byok.md's openssl recipe (deploy/byok-openssl.sh):
# ossl_byok IMPORTKEY KEYFILE OUT [sha256]
ossl_byok() { sh "$HSMVAULT_SOURCE_DIR/deploy/byok-openssl.sh" "$@" 2>"$TMP/ossl.err"; }
# The ciphertext of a .byok file as bytes, and a file with other bytes.
ct_of() { sed -n 's/.*"ciphertext": *"\([^"]*\)".*/\1/p' "$1" | tr -d '\n' | tr -- '-_' '+/' |
    awk '{ n = length($0) % 4; if (n) $0 = $0 substr("===", 1, 4 - n); print }' | base64 -d; }
with_ct() { # with_ct TEMPLATE CTFILE OUT
    KID=$(sed -n 's/.*"kid": *"\([^"]*\)".*/\1/p' "$1" | head -n 1)
    printf '{"schema_version":"1.0.0","header":{"kid":"%s","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"%s"}\n' \
        "$KID" "$(b64url <"$2")" >"$3"
}

vaultd_dev_start

# Help for every new command, offline commands without a profile.
for c in "key import-key" "import-key rotate" "import-key list" "byok wrap" "byok keygen" "byok show"; do
    # shellcheck disable=SC2086
    expect 0 "$c --help" -- "$VAULTCTL" $c --help
    grep -q "usage: vaultctl $c" "$TMP/out" && ok || bad "$c --help: no usage line"
done
expect 0 "help lists byok" -- "$VAULTCTL" --help
grep -q "byok wrap" "$TMP/out" && ok || bad "--help lacks byok wrap"

# Two tenants on two subscriptions.
expect 0 "tenant 1" -- as operator tenant create --name contoso --subscription sub-one --admin-contact a@example.com
T1=$(id_of tnt)
expect 0 "tenant 2" -- as operator tenant create --name fabrikam --subscription sub-two --admin-contact b@example.com
T2=$(id_of tnt)
for t in "$T1" "$T2"; do
    expect 0 "enable $t" -- as operator tenant enable-self-managed --tenant "$t"
    expect 0 "bind admin $t" -- as operator role bind --principal spiffe://hsmvault.dev/tenant-admin --role tenant-admin --tenant "$t"
done
expect 0 "env" -- as operator env create --tenant "$T1" --name prod --type production
ENV=$(id_of env)
expect 0 "bind node" -- as operator role bind --principal spiffe://hsmvault.dev/storage-node --role storage-node --tenant "$T1" --env "$ENV"
expect 0 "bind env admin" -- as operator role bind --principal spiffe://hsmvault.dev/environment-admin --role environment-admin --tenant "$T1"
expect 0 "db create" -- as storage-node db create --env "$ENV" --name orders
DB=$(id_of db)
CHK=$(sed -n 's/^ *dek_sha256: //p' "$TMP/out")

# The import key: downloaded to a file that is never replaced; public, 0644.
expect 0 "import key" -- as tenant-admin key import-key --tenant "$T1" --out "$TMP/ik1.pem"
grep -q "^# kid: hsmvault:subscriptions/sub-one/import-keys/1$" "$TMP/ik1.pem" && ok || bad "import key file: $(head -5 "$TMP/ik1.pem")"
grep -q "^# subscription: sub-one$" "$TMP/ik1.pem" && ok || bad "import key file lacks the subscription"
[ "$(stat -c %a "$TMP/ik1.pem")" = 644 ] && ok || bad "import key file mode $(stat -c %a "$TMP/ik1.pem")"
openssl pkey -pubin -in "$TMP/ik1.pem" -noout -text 2>/dev/null | grep -q "Public-Key: (2048 bit)" && ok || bad "import key is not RSA-2048 for openssl"
sum=$(sha256sum <"$TMP/ik1.pem")
expect 8 "import key over an existing file" -- as tenant-admin key import-key --tenant "$T1" --out "$TMP/ik1.pem"
[ "$(sha256sum <"$TMP/ik1.pem")" = "$sum" ] && ok || bad "the import key file was changed"
expect 0 "same import key again" -- as tenant-admin key import-key --tenant "$T1" --out "$TMP/ik1-again.pem"
cmp -s "$TMP/ik1.pem" "$TMP/ik1-again.pem" && ok || bad "a second download gave another import key"
expect 0 "import key of tenant 2" -- as tenant-admin key import-key --tenant "$T2" --out "$TMP/ik2.pem"
grep -q "sub-two/import-keys/1" "$TMP/ik2.pem" && ok || bad "tenant 2 import key: $(head -4 "$TMP/ik2.pem")"
expect 0 "audit shows the import key" -- as auditor audit token
grep -q "import-key" "$TMP/out" && ok || bad "audit token lacks vault role import-key: $(cat "$TMP/out")"
expect 5 "storage node cannot download" -- as storage-node key import-key --tenant "$T1" --out "$TMP/x.pem"
expect 5 "tenant admin cannot rotate" -- as tenant-admin import-key rotate --tenant "$T1"

# A .byok made by the openssl command line alone imports, is active, and
# wraps/unwraps DEKs (the environment moves onto it).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/k1.pem" 2>/dev/null
ossl_byok "$TMP/ik1.pem" "$TMP/k1.pem" "$TMP/k1.byok" && ok || bad "openssl recipe failed"
expect 0 "byok show" -- "$VAULTCTL" byok show --byok "$TMP/k1.byok"
grep -q "generator: openssl command line" "$TMP/out" && ok || bad "byok show: $(cat "$TMP/out")"
n0=$(objects)
expect 0 "upload openssl-made .byok" -- as tenant-admin --json key upload --tenant "$T1" --name from-openssl --byok "$TMP/k1.byok"
K1=$(id_of key)
grep -q '"source": *"[a-z_]*byok"' "$TMP/out" && grep -q '"state": *"[a-z_]*active"' "$TMP/out" && ok || bad "first BYOK key: $(cat "$TMP/out")"
FPR=$(grep -o '"fingerprint": *"[0-9a-f]\{64\}"' "$TMP/out" | grep -o '[0-9a-f]\{64\}')
OSSL=$(openssl pkey -in "$TMP/k1.pem" -pubout -outform DER | sha256sum | cut -c1-64)
[ "$FPR" = "$OSSL" ] && ok || bad "fingerprint $FPR != openssl $OSSL"
[ "$(objects)" = $((n0 + 2)) ] && ok || bad "upload: token objects $n0 -> $(objects), want +2"
expect 0 "apply" -- as environment-admin env apply-key --env "$ENV"
expect 0 "unwrap under the BYOK key" -- as storage-node db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "DEK changed under the BYOK key"
expect 0 "new DEK under the BYOK key" -- as storage-node db create --env "$ENV" --name invoices
DB2=$(id_of db)
CHK2=$(sed -n 's/^ *dek_sha256: //p' "$TMP/out")
expect 0 "unwrap the new DEK" -- as storage-node db unwrap --env "$ENV" --db "$DB2"
grep -q "$CHK2" "$TMP/out" && ok || bad "new DEK does not unwrap to itself"
refused 8 "the same key again" "$TMP/k1.byok"

# Bad input: one line on stderr, the right exit code, no token object left.
printf '{"schema_version":"1.0.0",' >"$TMP/bad.json"
refused 3 "malformed JSON" "$TMP/bad.json"
says "INVALID_ARGUMENT"
sed 's/"alg": *"dir"/"alg": "RSA-OAEP"/' "$TMP/k1.byok" >"$TMP/bad-alg.byok"
refused 3 "wrong alg" "$TMP/bad-alg.byok"
says "alg"
sed 's/CKM_RSA_AES_KEY_WRAP/A256KW/' "$TMP/k1.byok" >"$TMP/bad-enc.byok"
refused 3 "wrong enc" "$TMP/bad-enc.byok"
sed 's/"schema_version": *"1.0.0",//' "$TMP/k1.byok" >"$TMP/no-schema.byok"
refused 3 "no schema_version" "$TMP/no-schema.byok"
sed 's/"1.0.0"/"2.0.0"/' "$TMP/k1.byok" >"$TMP/bad-schema.byok"
refused 3 "wrong schema_version" "$TMP/bad-schema.byok"
sed 's#sub-one/import-keys/1#sub-one/import-keys/9#' "$TMP/k1.byok" >"$TMP/unknown-kid.byok"
refused 4 "unknown kid version" "$TMP/unknown-kid.byok"
sed 's#"kid": *"[^"]*"#"kid": "https://myvault.vault.azure.net/keys/kek/1"#' "$TMP/k1.byok" >"$TMP/azure-kid.byok"
refused 3 "kid that is not ours" "$TMP/azure-kid.byok"
# made (correctly) for tenant 2's subscription, uploaded to tenant 1
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/k2.pem" 2>/dev/null
ossl_byok "$TMP/ik2.pem" "$TMP/k2.pem" "$TMP/foreign.byok"
refused 3 "a blob for another subscription" "$TMP/foreign.byok"
says "subscription sub-two"
# the same bytes with tenant 1's kid: the binding is by kid; the import key cannot unwrap it
sed 's#sub-two/#sub-one/#' "$TMP/foreign.byok" >"$TMP/foreign-kid.byok"
refused 3 "another import key's blob under our kid" "$TMP/foreign-kid.byok"
says "does not unwrap"
ct_of "$TMP/k1.byok" >"$TMP/ct.bin"
len=$(stat -c %s "$TMP/ct.bin")
head -c $((len - 1)) "$TMP/ct.bin" >"$TMP/short.bin"
with_ct "$TMP/k1.byok" "$TMP/short.bin" "$TMP/trunc1.byok"
refused 3 "truncated by one byte (KWP not a multiple of 8)" "$TMP/trunc1.byok"
says "multiple of 8"
head -c $((len - 8)) "$TMP/ct.bin" >"$TMP/short.bin"
with_ct "$TMP/k1.byok" "$TMP/short.bin" "$TMP/trunc8.byok"
refused 3 "truncated by 8 bytes" "$TMP/trunc8.byok"
head -c 200 "$TMP/ct.bin" >"$TMP/short.bin"
with_ct "$TMP/k1.byok" "$TMP/short.bin" "$TMP/tiny.byok"
refused 3 "shorter than the modulus" "$TMP/tiny.byok"
for at in 10 300 $((len - 3)); do
    # one bit flipped in the RSA part, in the middle and at the end of the KWP part
    /usr/bin/python3 -c "import sys; b=bytearray(open(sys.argv[1],'rb').read()); b[int(sys.argv[2])]^=4; open(sys.argv[3],'wb').write(b)" \
        "$TMP/ct.bin" "$at" "$TMP/flip.bin"
    with_ct "$TMP/k1.byok" "$TMP/flip.bin" "$TMP/flip.byok"
    refused 3 "one bit flipped at byte $at" "$TMP/flip.byok"
    says "does not unwrap"
done
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/ec.pem" 2>/dev/null
ossl_byok "$TMP/ik1.pem" "$TMP/ec.pem" "$TMP/ec.byok"
refused 3 "an EC key" "$TMP/ec.byok"
says "not an RSA private key"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$TMP/k4096.pem" 2>/dev/null
ossl_byok "$TMP/ik1.pem" "$TMP/k4096.pem" "$TMP/rsa4096.byok"
refused 3 "an RSA-4096 key" "$TMP/rsa4096.byok"
says "RSA-4096"
ossl_byok "$TMP/ik1.pem" "$TMP/k2.pem" "$TMP/sha256.byok" sha256
refused 3 "SHA-256 OAEP on a SHA-1 token" "$TMP/sha256.byok"
says "SHA-1"
head -c 3000000 /dev/zero | tr '\0' ' ' >"$TMP/big.byok"
cat "$TMP/k1.byok" >>"$TMP/big.byok"
refused 3 "a file of several MiB" "$TMP/big.byok"
expect 2 "both --pfx and --byok" -- as tenant-admin key upload --tenant "$T1" --name x --byok "$TMP/k1.byok" --pfx "$TMP/k1.byok"
expect 4 "missing .byok file" -- as tenant-admin key upload --tenant "$T1" --name x --byok "$TMP/none.byok"

# vaultctl byok wrap, in process: for the import key file as downloaded.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/k3.pem" 2>/dev/null
printf 'key file password\n' >"$TMP/kpw"
openssl pkcs8 -topk8 -in "$TMP/k3.pem" -v2 aes-256-cbc -passout "file:$TMP/kpw" -out "$TMP/k3-enc.pem"
expect 3 "wrap an encrypted key with the wrong password" -- sh -c "printf 'nope\n' | '$VAULTCTL' byok wrap --import-key '$TMP/ik1.pem' --key '$TMP/k3-enc.pem' --password-stdin --out '$TMP/k3.byok'"
[ -e "$TMP/k3.byok" ] && bad "a failed wrap left a file" || ok
expect 0 "byok wrap (software, encrypted PKCS#8)" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k3-enc.pem" --password-file "$TMP/kpw" --out "$TMP/k3.byok"
expect 8 "byok wrap over an existing file" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k3.pem" --out "$TMP/k3.byok"
expect 3 "byok wrap of an EC key" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/ec.pem" --out "$TMP/x.byok"
says "not an RSA key"
expect 3 "byok wrap of an RSA-4096 key" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k4096.pem" --out "$TMP/x.byok"
openssl pkey -in "$TMP/ik1.pem" -pubin -out "$TMP/plain-ik.pem"
expect 3 "byok wrap for a plain PEM without --kid" -- "$VAULTCTL" byok wrap --import-key "$TMP/plain-ik.pem" --key "$TMP/k3.pem" --out "$TMP/x.byok"
expect 2 "byok wrap without a key" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --out "$TMP/x.byok"
expect 2 "byok wrap with a bad hash" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k3.pem" --oaep-hash md5 --out "$TMP/x.byok"
expect 0 "upload vaultctl-made .byok" -- as tenant-admin key upload --tenant "$T1" --name from-vaultctl --byok "$TMP/k3.byok"
K3=$(id_of key)
grep -q "available" "$TMP/out" && ok || bad "second key not available: $(cat "$TMP/out")"
# the same key from a DER PKCS#8 file (binary, read byte for byte): the vault
# sees the same key again
openssl pkcs8 -topk8 -nocrypt -in "$TMP/k3.pem" -outform DER -out "$TMP/k3.der"
expect 0 "byok wrap (software, DER PKCS#8)" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k3.der" --out "$TMP/k3-der.byok"
refused 8 "the DER-made file of the same key" "$TMP/k3-der.byok"
expect 0 "byok wrap --oaep-hash sha256" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k2.pem" --oaep-hash sha256 --out "$TMP/k2-256.byok"
grep -q '"oaep_hash": "SHA-256"' "$TMP/k2-256.byok" && ok || bad "no oaep_hash field: $(cat "$TMP/k2-256.byok")"
refused 3 "vaultctl SHA-256 file on a SHA-1 token" "$TMP/k2-256.byok"
says "SHA-1"

# vaultctl byok wrap inside the admin's own token (a second SoftHSM token).
mkdir -p "$TMP/admin/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$TMP/admin/tokens" >"$TMP/admin/softhsm2.conf"
export SOFTHSM2_CONF="$TMP/admin/softhsm2.conf"
softhsm2-util --init-token --free --label admin-hsm --pin 246810 --so-pin 13579 >/dev/null
printf '246810\n' >"$TMP/admin/pin"
expect 0 "byok keygen" -- "$VAULTCTL" byok keygen --pkcs11-module "$MODULE" --token admin-hsm --key-label tenant-key --pin-file "$TMP/admin/pin"
TFPR=$(sed -n 's/^fingerprint: //p' "$TMP/out")
expect 8 "byok keygen with a used label" -- "$VAULTCTL" byok keygen --pkcs11-module "$MODULE" --token admin-hsm --key-label tenant-key --pin-file "$TMP/admin/pin"
expect 0 "byok wrap in the token (PIN on stdin)" -- sh -c "printf '246810\n' | '$VAULTCTL' byok wrap --import-key '$TMP/ik1.pem' --pkcs11-module '$MODULE' --token admin-hsm --key-label tenant-key --pin-stdin --out '$TMP/tok.byok'"
grep -q "PKCS#11 token 'admin-hsm'" "$TMP/tok.byok" && ok || bad "generator: $(cat "$TMP/tok.byok")"
printf 'wrong\n' >"$TMP/admin/badpin"
expect 5 "byok wrap with a wrong PIN" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --pkcs11-module "$MODULE" --token admin-hsm --key-label tenant-key --pin-file "$TMP/admin/badpin" --out "$TMP/x.byok"
grep -q "wrong" "$TMP/err" && bad "the PIN was echoed" || ok
expect 4 "byok wrap of an unknown label" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --pkcs11-module "$MODULE" --token admin-hsm --key-label nope --pin-file "$TMP/admin/pin" --out "$TMP/x.byok"
expect 3 "byok wrap with a relative module path" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --pkcs11-module libsofthsm2.so --token admin-hsm --key-label tenant-key --pin-file "$TMP/admin/pin" --out "$TMP/x.byok"
expect 2 "byok wrap with a token and a key file" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k3.pem" --pkcs11-module "$MODULE" --token admin-hsm --key-label tenant-key --out "$TMP/x.byok"
expect 3 "byok wrap without a terminal for the PIN" -- sh -c "'$VAULTCTL' byok wrap --import-key '$TMP/ik1.pem' --pkcs11-module '$MODULE' --token admin-hsm --key-label tenant-key --out '$TMP/x.byok' </dev/null"
unset SOFTHSM2_CONF
expect 0 "upload the token-made .byok" -- as tenant-admin --json key upload --tenant "$T1" --name from-admin-hsm --byok "$TMP/tok.byok"
grep -q "$TFPR" "$TMP/out" && ok || bad "token key fingerprint $TFPR not in $(cat "$TMP/out")"

# Rotation: 3072 and 4096-bit import keys round-trip; the previous version
# is accepted until import_key_validity (7 days), then refused.
expect 0 "rotate to 3072" -- as operator import-key rotate --tenant "$T1" --bits 3072
grep -q "import-keys/2" "$TMP/out" && ok || bad "rotate: $(cat "$TMP/out")"
expect 2 "rotate to 1024" -- as operator import-key rotate --tenant "$T1" --bits 1024
expect 0 "import key v2" -- as tenant-admin key import-key --tenant "$T1" --out "$TMP/ik1-v2.pem"
grep -q "^# bits: 3072$" "$TMP/ik1-v2.pem" && ok || bad "v2 is not 3072 bits: $(head -5 "$TMP/ik1-v2.pem")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/k5.pem" 2>/dev/null
ossl_byok "$TMP/ik1-v2.pem" "$TMP/k5.pem" "$TMP/k5.byok"
expect 0 "upload for a 3072-bit import key (openssl)" -- as tenant-admin key upload --tenant "$T1" --name k5 --byok "$TMP/k5.byok"
ct_of "$TMP/k5.byok" >"$TMP/ct5.bin"
head -c 300 "$TMP/ct5.bin" >"$TMP/short.bin"
with_ct "$TMP/k5.byok" "$TMP/short.bin" "$TMP/short5.byok"
refused 3 "shorter than a 3072-bit modulus" "$TMP/short5.byok"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/k6.pem" 2>/dev/null
expect 0 "byok wrap for v1 (still accepted)" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1.pem" --key "$TMP/k6.pem" --out "$TMP/k6-v1.byok"
expect 0 "upload for the previous version" -- as tenant-admin key upload --tenant "$T1" --name k6 --byok "$TMP/k6-v1.byok"
expect 0 "rotate to 4096" -- as operator import-key rotate --tenant "$T1" --bits 4096
expect 0 "import key v3" -- as tenant-admin key import-key --tenant "$T1" --out "$TMP/ik1-v3.pem"
grep -q "^# bits: 4096$" "$TMP/ik1-v3.pem" && ok || bad "v3 is not 4096 bits"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/k7.pem" 2>/dev/null
expect 0 "byok wrap for a 4096-bit import key" -- "$VAULTCTL" byok wrap --import-key "$TMP/ik1-v3.pem" --key "$TMP/k7.pem" --out "$TMP/k7.byok"
expect 0 "upload for a 4096-bit import key" -- as tenant-admin key upload --tenant "$T1" --name k7 --byok "$TMP/k7.byok"
expect 0 "import-key list" -- as tenant-admin import-key list --tenant "$T1"
grep -c "previous" "$TMP/out" | grep -q 2 && grep -q "current" "$TMP/out" && ok || bad "import-key list: $(cat "$TMP/out")"

# Lock with the active key presented as its .byok (made for v1, still valid).
expect 0 "advance 72 h" -- as operator clock advance --seconds 259200
expect 0 "lock text" -- as tenant-admin tenant lock-text --tenant "$T1"
TEXT=$(sed -n 's/^text: //p' "$TMP/out")
n0=$(objects)
expect 3 "lock with another key's .byok" -- as tenant-admin tenant lock --tenant "$T1" --byok "$TMP/k3.byok" --confirm "$TEXT"
[ "$(objects)" = "$n0" ] && ok || bad "a refused lock changed the token"
expect 3 "lock with a bad .byok" -- as tenant-admin tenant lock --tenant "$T1" --byok "$TMP/flip.byok" --confirm "$TEXT"
expect 0 "lock with the .byok" -- as tenant-admin tenant lock --tenant "$T1" --byok "$TMP/k1.byok" --confirm "$TEXT"
expect 6 "unwrap while locked" -- as storage-node db unwrap --env "$ENV" --db "$DB"
expect 0 "advance 1 h" -- as operator clock advance --seconds 3600
n0=$(objects)
expect 3 "unlock with another key's .byok" -- as tenant-admin key unlock --tenant "$T1" --key "$K1" --byok "$TMP/k5.byok"
[ "$(objects)" = "$n0" ] && ok || bad "a refused unlock changed the token"
# after v1's validity ends its files are refused; the same key wrapped for
# the current import key unlocks (same fingerprint)
expect 0 "advance 7 days" -- as operator clock advance --seconds 604800
expect 6 "unlock with a file for a retired import key" -- as tenant-admin key unlock --tenant "$T1" --key "$K1" --byok "$TMP/k1.byok"
says "no longer accepted"
expect 0 "import-key list after retirement" -- as tenant-admin import-key list --tenant "$T1"
grep -q "retired" "$TMP/out" && ok || bad "no retired version: $(cat "$TMP/out")"
ossl_byok "$TMP/ik1-v3.pem" "$TMP/k1.pem" "$TMP/k1-v3.byok"
expect 0 "unlock with the key re-wrapped for the current import key" -- as tenant-admin key unlock --tenant "$T1" --key "$K1" --byok "$TMP/k1-v3.byok"
expect 0 "unlock environment" -- as environment-admin env unlock --env "$ENV"
n0=$(objects)
expect 6 "upload for a retired import key" -- as tenant-admin key upload --tenant "$T1" --name late --byok "$TMP/k6-v1.byok"
says "no longer accepted"
[ "$(objects)" = "$n0" ] && ok || bad "a refused upload changed the token"
expect 0 "unwrap after unlock" -- as storage-node db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "DEK changed across lock/unlock"
expect 0 "unwrap the second DEK after unlock" -- as storage-node db unwrap --env "$ENV" --db "$DB2"
grep -q "$CHK2" "$TMP/out" && ok || bad "second DEK changed across lock/unlock"
expect 0 "audit after unlock" -- as auditor audit token
grep -q "import-key" "$TMP/out" && ok || bad "import key missing from the token listing"
# BYOK tenant keys and import keys (current, previous, retired) are what the
# token audit's policy expects: no findings (docs/audit-token.md).
expect 0 "token audit clean after BYOK" -- as auditor audit reconcile

# Restart: reconciliation keeps every import key and the BYOK key.
kill -TERM "$PID"
wait "$PID"
PID=""
"$VAULTD" --dev --state-dir "$STATE" --listen 127.0.0.1:0 >>"$TMP/vaultd.out" 2>"$TMP/vaultd2.log" &
PID=$!
i=0
while ! grep -q "reconcile:" "$TMP/vaultd2.log" && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
sleep 0.5
grep -q " 0 keys missing" "$TMP/vaultd2.log" && ok || bad "restart reconcile: $(grep reconcile "$TMP/vaultd2.log")"
expect 0 "unwrap after restart" -- as storage-node db unwrap --env "$ENV" --db "$DB"
grep -q "$CHK" "$TMP/out" && ok || bad "DEK changed across restart"
SNIP=$(sed -n 's/.*"ciphertext": *"\(.\{40\}\).*/\1/p' "$TMP/k1.byok")
[ ${#SNIP} = 40 ] && ok || bad "no ciphertext in k1.byok"
grep -q -- "$SNIP\|PRIVATE KEY" "$TMP/vaultd.log" "$TMP/vaultd2.log" && bad "vaultd logged key material" || ok

echo "test_byok_cli: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
