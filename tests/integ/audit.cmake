# The audit log against a real vaultd --dev: records of allowed and refused
# calls, no secrets in the store file or the log, kill -9 between a change and
# its result record, journal resets, a failing journal fdatasync (fail closed),
# tampering on the store file (the store API, vaultd down).
kv_add_test(NAME integ_audit LABEL integ SOURCES integ/test_audit.c integ/vaultd_proc.c
            LIBS client client_rpc vault proto PkgConfig::OPENSSL TIMEOUT 300)
target_include_directories(integ_audit PRIVATE integ)
add_dependencies(integ_audit vaultd)
# The disk-error shim (tests/lib/syncfail_shim.c), preloaded into vaultd by
# integ_audit's fail-closed test; never installed, uninstrumented like the
# power-cut shim.
add_library(syncfail_shim MODULE lib/syncfail_shim.c)
target_link_libraries(syncfail_shim PRIVATE dl)
target_compile_options(syncfail_shim PRIVATE -fno-sanitize=all)
target_link_options(syncfail_shim PRIVATE -fno-sanitize=all)
target_compile_definitions(integ_audit PRIVATE SYNCFAIL_SHIM="$<TARGET_FILE:syncfail_shim>")
add_dependencies(integ_audit syncfail_shim)
