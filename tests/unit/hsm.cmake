# hsm unit tests: a real SoftHSM token in a temporary directory, no mocks.
# The fixture is compiled in here because testlib belongs to the test harness.
kv_add_test(NAME unit_hsm LABEL unit SOURCES unit/test_hsm.c lib/kv_softhsm.c
            LIBS hsm PkgConfig::OPENSSL Threads::Threads)
