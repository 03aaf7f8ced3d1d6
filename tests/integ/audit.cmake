# The audit log against a real vaultd --dev: records of allowed and refused
# calls, no secrets in the store file or the log, kill -9 between a change and
# its result record, tampering on the store file (the store API, vaultd down).
kv_add_test(NAME integ_audit LABEL integ SOURCES integ/test_audit.c integ/vaultd_proc.c
            LIBS client client_rpc vault proto PkgConfig::OPENSSL TIMEOUT 300)
target_include_directories(integ_audit PRIVATE integ)
add_dependencies(integ_audit vaultd)
