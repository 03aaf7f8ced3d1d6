# tdenode (storage/): page format and crypto.
kv_add_test(NAME unit_page LABEL unit SOURCES unit/test_page.c LIBS tde_page PkgConfig::OPENSSL Threads::Threads)
# tdenode's files (record files, write counters, journal) on real files.
kv_add_test(NAME unit_tde_files LABEL unit SOURCES unit/test_tde_files.c LIBS tde_node)
