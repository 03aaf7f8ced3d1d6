add_library(vault STATIC
  src/vault.c src/authz.c src/dek.c src/store.c src/reconcile.c src/methods.c
  src/ops_tenants.c src/ops_keys.c src/ops_lock.c src/notify.c src/ops_environments.c src/ops_key_access.c
  src/vaultd_config.c src/devmode.c
  src/import_keys.c src/material.c src/audit.c src/audit_ops.c)
target_include_directories(vault PUBLIC src)
target_compile_definitions(vault PRIVATE HSMVAULT_SOFTHSM_MODULE="${HSMVAULT_SOFTHSM_MODULE}")
target_link_libraries(vault PUBLIC common kv_audit proto hsm vault_rpc vault_crypto PkgConfig::LMDB PkgConfig::CURL)

add_executable(vaultd src/vaultd_main.c)
target_link_libraries(vaultd PRIVATE vault)
