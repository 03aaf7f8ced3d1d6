# tdenode (storage/): page format and crypto.
kv_add_test(NAME unit_page LABEL unit SOURCES unit/test_page.c LIBS tde_page PkgConfig::OPENSSL Threads::Threads)
