# BYOK (issue 4): the .byok parser (unit + fuzz replay).
kv_add_test(NAME unit_byok LABEL unit SOURCES unit/test_byok.c)
kv_add_fuzz(NAME byok SOURCES fuzz/fuzz_byok.c LIBS common CORPUS byok)
# BYOK inside real SoftHSM tokens: import keys, unwrap into the token, the
# admin's token wrapping with C_WrapKey.
kv_add_test(NAME unit_hsm_byok LABEL unit SOURCES unit/test_hsm_byok.c lib/kv_softhsm.c lib/kv_testkey.c
            LIBS hsm byok_wrap PkgConfig::OPENSSL TIMEOUT 300)
# BYOK as admins run it: vaultctl and the openssl command line against a real
# vaultd --dev, a second SoftHSM token as the admin's own HSM.
add_test(NAME integ_byok_cli COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integ/test_byok_cli.sh)
set_tests_properties(integ_byok_cli PROPERTIES LABELS integ TIMEOUT 600 ENVIRONMENT "${HSMVAULT_TEST_ENV}")
# The admin's side: import key files, key files, .byok made in software and
# in a real SoftHSM token standing in for the admin's HSM.
kv_add_test(NAME unit_byok_file LABEL unit SOURCES unit/test_byok_file.c lib/kv_softhsm.c lib/kv_testkey.c
            LIBS byok_wrap hsm PkgConfig::OPENSSL TIMEOUT 300)
kv_add_fuzz(NAME import_key SOURCES fuzz/fuzz_import_key.c LIBS byok_wrap PkgConfig::OPENSSL
            CORPUS import_key)
# A .byok file is bound to the tenant's subscription before any token call:
# the vault under test has no token at all (real LMDB store).
kv_add_test(NAME unit_material LABEL unit SOURCES unit/test_material.c LIBS vault proto)
