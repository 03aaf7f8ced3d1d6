# tdenode benchmarks (run by hand, never by ctest).
#   bench_page: page seal+open on one core vs `openssl speed -evp aes-256-gcm -bytes 8192`
add_executable(bench_page bench/bench_page.c)
target_link_libraries(bench_page PRIVATE tde_page)
#   bench_node: pages/s through tdenode's API vs tdenode_copycipher (cipher replaced by a copy)
add_executable(bench_node bench/bench_node.c integ/tdenode_proc.c)
target_link_libraries(bench_node PRIVATE benchlib storage_proto tde_page)
add_dependencies(bench_node vaultd tdenode tdenode_copycipher)
