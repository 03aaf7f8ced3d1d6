# tdenode end to end: a real vaultd --dev and a real tdenode --dev on
# loopback with mTLS, kill -9 and crash points, driven through libvaultclient.
kv_add_test(NAME integ_tdenode LABEL integ
            SOURCES integ/test_tdenode.c integ/tdenode_proc.c integ/vaultd_proc.c
            LIBS client client_rpc tde_page storage_proto proto TIMEOUT 900)
target_include_directories(integ_tdenode PRIVATE integ)
add_dependencies(integ_tdenode vaultd tdenode)

# tdectl as a user runs it (and tdenode from a config file).
add_test(NAME integ_tdectl COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integ/test_tdectl.sh)
set_tests_properties(integ_tdectl PROPERTIES LABELS integ TIMEOUT 300 ENVIRONMENT "${HSMVAULT_TEST_ENV}")

# The power-loss shim (tests/lib/powercut_shim.c), preloaded into tdenode by
# integ_tdenode's power-cut rounds; never installed.
add_library(powercut_shim MODULE lib/powercut_shim.c)
target_link_libraries(powercut_shim PRIVATE dl)
# Uninstrumented: it only records files; the node it is preloaded into keeps
# its sanitizers.
target_compile_options(powercut_shim PRIVATE -fno-sanitize=all)
target_link_options(powercut_shim PRIVATE -fno-sanitize=all)
target_sources(integ_tdenode PRIVATE lib/powercut.c)
target_compile_definitions(integ_tdenode PRIVATE POWERCUT_SHIM="$<TARGET_FILE:powercut_shim>")
add_dependencies(integ_tdenode powercut_shim)
