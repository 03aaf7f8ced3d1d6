# The audit log's chain, verifier and export file, and its token keys
# (real SoftHSM token in a temporary directory).
kv_add_test(NAME unit_audit LABEL unit SOURCES unit/test_audit.c lib/kv_softhsm.c
            LIBS hsm kv_audit PkgConfig::OPENSSL)
