# Fuzz targets.  kv_add_fuzz(NAME n SOURCES ... LIBS ... CORPUS dir):
#  - always builds <n>_replay (replay.c + the target) and registers the ctest
#    fuzz_<n> (label fuzz-regress) that runs it over fuzz/corpus/<dir>, so a
#    gcc build replays the seeds and every saved crash reproducer;
#  - with clang also builds <n>, a libFuzzer binary:
#      build/tests/<n> -max_total_time=300 tests/fuzz/corpus/<dir>
#    In a clang build with HSMVAULT_SANITIZE=ON (the fuzzing build) the
#    project libraries in LIBS are compiled with -fsanitize=fuzzer-no-link, so
#    libFuzzer sees coverage of the parser itself, not only of the harness.
#    (That instrumentation needs a sanitizer runtime in every binary linking
#    those libraries, which HSMVAULT_SANITIZE guarantees.)
function(kv_add_fuzz)
  cmake_parse_arguments(F "" "NAME;CORPUS" "SOURCES;LIBS" ${ARGN})
  if(NOT F_NAME OR NOT F_SOURCES OR NOT F_CORPUS)
    message(FATAL_ERROR "kv_add_fuzz needs NAME, SOURCES and CORPUS")
  endif()
  set(corpus ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${F_CORPUS})
  add_executable(${F_NAME}_replay fuzz/replay.c ${F_SOURCES})
  target_link_libraries(${F_NAME}_replay PRIVATE ${F_LIBS})
  add_test(NAME fuzz_${F_NAME} COMMAND ${F_NAME}_replay ${corpus})
  set_tests_properties(fuzz_${F_NAME} PROPERTIES LABELS fuzz-regress TIMEOUT 300
                       ENVIRONMENT "${HSMVAULT_TEST_ENV}")
  if(CMAKE_C_COMPILER_ID STREQUAL "Clang")
    add_executable(${F_NAME} ${F_SOURCES})
    target_compile_options(${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${F_NAME} PRIVATE ${F_LIBS})
    if(HSMVAULT_SANITIZE)
      foreach(lib IN LISTS F_LIBS)
        if(TARGET ${lib})
          get_target_property(imported ${lib} IMPORTED)
          if(NOT imported)
            target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link)
          endif()
        endif()
      endforeach()
    endif()
  endif()
endfunction()

kv_add_fuzz(NAME pfx SOURCES fuzz/fuzz_pfx.c LIBS vault_crypto CORPUS pfx)
kv_add_fuzz(NAME config SOURCES fuzz/fuzz_config.c LIBS vault client CORPUS config)
kv_add_fuzz(NAME request SOURCES fuzz/fuzz_request.c LIBS proto common CORPUS request)
