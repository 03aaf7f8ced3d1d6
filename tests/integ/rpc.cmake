# RPC adapter integration test: real server and client over loopback mTLS,
# certificates made with the openssl command line in a temporary directory.
kv_add_test(NAME integ_rpc LABEL integ SOURCES integ/test_rpc.c
            LIBS vault_rpc client_rpc PkgConfig::OPENSSL Threads::Threads TIMEOUT 120)
