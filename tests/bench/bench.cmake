# Benchmarks: built with the tests, run by hand (never by ctest).
add_library(benchlib STATIC bench/bench_common.c integ/vaultd_proc.c)
target_include_directories(benchlib PUBLIC bench integ)
target_compile_definitions(benchlib PRIVATE HSMVAULT_DEFAULT_BUILD_DIR="${CMAKE_BINARY_DIR}")
target_link_libraries(benchlib PUBLIC testlib client hsm vault_crypto proto Threads::Threads)

foreach(b bench_unwrap bench_activate bench_rpc)
  add_executable(${b} bench/${b}.c)
  target_link_libraries(${b} PRIVATE benchlib)
  add_dependencies(${b} vaultd)
endforeach()
