kv_add_test(NAME unit_common LABEL unit SOURCES unit/test_common.c)
