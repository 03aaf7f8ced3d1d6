add_library(client STATIC src/vaultclient.c)
target_include_directories(client PUBLIC include PRIVATE src)
target_link_libraries(client PUBLIC common proto client_rpc)

add_executable(vaultctl src/vaultctl.c src/audit_cli.c)
target_link_libraries(vaultctl PRIVATE client client_cli byok_wrap kv_audit PkgConfig::OPENSSL)

# BYOK in software for the admin (import key file, key files, .byok ciphertext).
# byok_file: the .byok file from a key file or from the admin's own token
# (C_WrapKey through the hsm library).
add_library(byok_wrap STATIC src/byok_wrap.c src/byok_file.c)
target_include_directories(byok_wrap PUBLIC include)
target_link_libraries(byok_wrap PUBLIC common PRIVATE hsm kv_ossl PkgConfig::OPENSSL)

# What the CLIs over libvaultclient share (vaultctl, tdectl): exit codes,
# error lines, the descriptor-driven text/JSON printer.
add_library(client_cli STATIC src/cli.c src/print.c)
target_include_directories(client_cli PUBLIC src)
target_link_libraries(client_cli PUBLIC client common proto PkgConfig::PROTOBUFC)
