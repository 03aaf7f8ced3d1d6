# BYOK (issue 4): the .byok parser (unit + fuzz replay).
kv_add_test(NAME unit_byok LABEL unit SOURCES unit/test_byok.c)
kv_add_fuzz(NAME byok SOURCES fuzz/fuzz_byok.c LIBS common CORPUS byok)
# BYOK inside real SoftHSM tokens: import keys, unwrap into the token, the
# admin's token wrapping with C_WrapKey.
kv_add_test(NAME unit_hsm_byok LABEL unit SOURCES unit/test_hsm_byok.c lib/kv_softhsm.c
            LIBS hsm byok_wrap PkgConfig::OPENSSL TIMEOUT 300)
# BYOK as admins run it: vaultctl and the openssl command line against a real
# vaultd --dev, a second SoftHSM token as the admin's own HSM.
add_test(NAME integ_byok_cli COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integ/test_byok_cli.sh)
set_tests_properties(integ_byok_cli PROPERTIES LABELS integ TIMEOUT 600 ENVIRONMENT "${HSMVAULT_TEST_ENV}")
