add_library(client STATIC src/vaultclient.c)
target_include_directories(client PUBLIC include PRIVATE src)
target_link_libraries(client PUBLIC common proto client_rpc)

add_executable(vaultctl src/vaultctl.c src/print.c)
target_link_libraries(vaultctl PRIVATE client PkgConfig::OPENSSL)
