# BYOK (issue 4): the .byok parser (unit + fuzz replay).
kv_add_test(NAME unit_byok LABEL unit SOURCES unit/test_byok.c)
kv_add_fuzz(NAME byok SOURCES fuzz/fuzz_byok.c LIBS common CORPUS byok)
