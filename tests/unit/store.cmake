# store unit tests: real LMDB files in a temporary directory.
kv_add_test(NAME unit_store LABEL unit SOURCES unit/test_store.c LIBS vault proto)
