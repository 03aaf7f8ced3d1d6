# Fuzz targets.  kv_add_fuzz(NAME n SOURCES ... LIBS ... CORPUS dir):
#  - always builds <n>_replay (replay.c + the target) and registers the ctest
#    fuzz_<n> (label fuzz-regress) that runs it over fuzz/corpus/<dir>;
#  - with clang also builds <n>, a libFuzzer binary:
#      build/tests/<n> -max_total_time=300 tests/fuzz/corpus/<dir>
function(kv_add_fuzz)
  cmake_parse_arguments(F "" "NAME;CORPUS" "SOURCES;LIBS" ${ARGN})
  add_executable(${F_NAME}_replay fuzz/replay.c ${F_SOURCES})
  target_link_libraries(${F_NAME}_replay PRIVATE ${F_LIBS})
  add_test(NAME fuzz_${F_NAME}
           COMMAND ${F_NAME}_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${F_CORPUS})
  set_tests_properties(fuzz_${F_NAME} PROPERTIES LABELS fuzz-regress TIMEOUT 300
                       ENVIRONMENT "${HSMVAULT_TEST_ENV}")
  if(CMAKE_C_COMPILER_ID STREQUAL "Clang")
    add_executable(${F_NAME} ${F_SOURCES})
    target_compile_options(${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${F_NAME} PRIVATE ${F_LIBS})
  endif()
endfunction()

kv_add_fuzz(NAME pfx SOURCES fuzz/fuzz_pfx.c LIBS vault_crypto CORPUS pfx)
kv_add_fuzz(NAME config SOURCES fuzz/fuzz_config.c LIBS vault client CORPUS config)
kv_add_fuzz(NAME request SOURCES fuzz/fuzz_request.c LIBS proto common CORPUS request)
