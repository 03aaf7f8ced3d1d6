# Benchmarks: built with the tests, run by hand (never by ctest).
add_executable(bench_unwrap bench/bench_unwrap.c integ/vaultd_proc.c)
target_include_directories(bench_unwrap PRIVATE integ)
target_link_libraries(bench_unwrap PRIVATE testlib client hsm vault_crypto proto Threads::Threads)
target_compile_definitions(bench_unwrap PRIVATE
  HSMVAULT_DEFAULT_BUILD_DIR="${CMAKE_BINARY_DIR}")
add_dependencies(bench_unwrap vaultd)
