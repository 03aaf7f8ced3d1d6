# vault integration: a real vaultd --dev (SoftHSM token, CA, LMDB) driven
# through libvaultclient.  The hsm library is linked to check the token
# directly while vaultd is down.
kv_add_test(NAME integ_vault LABEL integ SOURCES integ/test_vault.c integ/vaultd_proc.c
            LIBS client client_rpc hsm proto PkgConfig::OPENSSL TIMEOUT 600)
target_include_directories(integ_vault PRIVATE integ)
add_dependencies(integ_vault vaultd vaultctl)

# vaultctl as a user runs it: exit codes, JSON, password sources, PFX files.
add_test(NAME integ_vaultctl COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integ/test_vaultctl.sh)
set_tests_properties(integ_vaultctl PROPERTIES LABELS integ TIMEOUT 300 ENVIRONMENT "${HSMVAULT_TEST_ENV}")

# The role matrix: docs/roles.md parsed and enforced RPC by RPC.
kv_add_test(NAME integ_roles LABEL integ SOURCES integ/test_roles.c integ/vaultd_proc.c
            LIBS client client_rpc vault proto PkgConfig::OPENSSL TIMEOUT 300)
target_include_directories(integ_roles PRIVATE integ)
add_dependencies(integ_roles vaultd)

# Notifications over SMTP to a real relay (python3-aiosmtpd) on loopback.
add_test(NAME integ_notify COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integ/test_notify.sh)
set_tests_properties(integ_notify PROPERTIES LABELS integ TIMEOUT 300 ENVIRONMENT "${HSMVAULT_TEST_ENV}")
