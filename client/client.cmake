add_library(client STATIC src/vaultclient.c)
target_include_directories(client PUBLIC include PRIVATE src)
target_link_libraries(client PUBLIC common proto client_rpc)

add_executable(vaultctl src/vaultctl.c src/print.c)
target_link_libraries(vaultctl PRIVATE client PkgConfig::OPENSSL)

# BYOK in software for the admin (import key file, key files, .byok ciphertext).
add_library(byok_wrap STATIC src/byok_wrap.c)
target_include_directories(byok_wrap PUBLIC include)
target_link_libraries(byok_wrap PUBLIC common PRIVATE kv_ossl PkgConfig::OPENSSL)
