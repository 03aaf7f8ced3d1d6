# Token audit (vaultctl audit token / audit reconcile) against a real vaultd
# --dev, the token changed behind its back with pkcs11-tool and softhsm2-util.
add_test(NAME integ_token_audit COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integ/test_token_audit.sh)
set_tests_properties(integ_token_audit PROPERTIES LABELS integ TIMEOUT 300
                     ENVIRONMENT "${HSMVAULT_TEST_ENV}")

add_executable(store_meta_put integ/store_meta_put.c)
target_link_libraries(store_meta_put PRIVATE vault)
