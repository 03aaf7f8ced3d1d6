# BYOK (issue 4): the .byok parser (unit + fuzz replay).
kv_add_test(NAME unit_byok LABEL unit SOURCES unit/test_byok.c)
kv_add_fuzz(NAME byok SOURCES fuzz/fuzz_byok.c LIBS common CORPUS byok)
# BYOK inside real SoftHSM tokens: import keys, unwrap into the token, the
# admin's token wrapping with C_WrapKey.
kv_add_test(NAME unit_hsm_byok LABEL unit SOURCES unit/test_hsm_byok.c lib/kv_softhsm.c
            LIBS hsm byok_wrap PkgConfig::OPENSSL TIMEOUT 300)
