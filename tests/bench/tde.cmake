# tdenode benchmarks (run by hand, never by ctest).
#   bench_page: page seal+open on one core vs `openssl speed -evp aes-256-gcm -bytes 8192`
add_executable(bench_page bench/bench_page.c)
target_link_libraries(bench_page PRIVATE tde_page)
