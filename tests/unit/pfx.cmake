# PFX/X.509 unit tests: fixtures made at run time by the openssl CLI.
kv_add_test(NAME unit_pfx LABEL unit SOURCES unit/test_pfx.c LIBS vault_crypto PkgConfig::OPENSSL)
