# BYOK (issue 4) end to end: a real vaultd --dev, the openssl command line
# (deploy/byok-openssl.sh), a second SoftHSM token as the admin's own HSM.
kv_add_test(NAME integ_byok_rpc LABEL integ SOURCES integ/test_byok.c integ/vaultd_proc.c
            lib/kv_softhsm.c
            LIBS client client_rpc hsm byok_wrap proto PkgConfig::OPENSSL TIMEOUT 600)
target_include_directories(integ_byok_rpc PRIVATE integ)
add_dependencies(integ_byok_rpc vaultd)
