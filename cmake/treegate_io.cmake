# cmake/treegate_io.cmake — treegate/io/ (safetensors) and its tests: the optional nlohmann_json
# and zlib dependencies, the Python interop test, and the libFuzzer target.
#
# Include it from the top-level CMakeLists.txt after the `treegate` target is defined and
# BEFORE add_subdirectory(tests): it may have to exclude io/ from the header check. Whatever
# needs targets made in tests/ runs deferred, at the end of the including directory.
#
# Gives:  treegate::io  INTERFACE target = treegate::treegate + nlohmann_json + ZLIB::ZLIB (when
#                       both are found; zlib computes the checksum of the tensor data)
#         TREEGATE_BUILD_FUZZERS (OFF)   fuzz_safetensors and fuzz_load_into, clang only, each a
#                                        bounded ctest (label fuzz), registered even without
#                                        TREEGATE_BUILD_TESTS
#         TREEGATE_FUZZ_SECONDS (60)     how long those ctests fuzz together (libFuzzer
#                                        -max_total_time: a third for fuzz_load_into)
#         ctest `safetensors_interop`  (label interop; skipped unless numpy + safetensors import;
#                                        TREEGATE_INTEROP_TEST=OFF leaves it and interop_main out)
#         ctest `pytorch_interop`      (label interop; skipped unless torch + fastfeedforward import;
#                                        TREEGATE_INTEROP_TEST=OFF leaves it out too)
include_guard(GLOBAL)

set(treegate_io_root ${CMAKE_CURRENT_LIST_DIR}/..)

find_package(nlohmann_json 3.2 QUIET)
find_package(ZLIB QUIET)
if(nlohmann_json_FOUND AND ZLIB_FOUND)
  add_library(treegate_io INTERFACE)
  add_library(treegate::io ALIAS treegate_io)
  set_target_properties(treegate_io PROPERTIES EXPORT_NAME io)
  target_link_libraries(treegate_io INTERFACE treegate nlohmann_json::nlohmann_json ZLIB::ZLIB)
  message(STATUS "treegate: nlohmann_json ${nlohmann_json_VERSION} and zlib ${ZLIB_VERSION_STRING} found, "
                 "treegate::io (safetensors) available")
else()
  # The core library needs neither; only io/ does, so leave io/ out of the header check.
  set(treegate_io_missing "")
  if(NOT nlohmann_json_FOUND)
    list(APPEND treegate_io_missing nlohmann_json)
  endif()
  if(NOT ZLIB_FOUND)
    list(APPEND treegate_io_missing "zlib (apt-get install zlib1g-dev)")
  endif()
  list(JOIN treegate_io_missing " and " treegate_io_missing)
  message(STATUS "treegate: ${treegate_io_missing} not found, treegate/io/ (safetensors) and its tests are skipped")
  list(APPEND TREEGATE_HEADER_CHECK_EXCLUDE "^treegate/io/")
endif()

option(TREEGATE_BUILD_FUZZERS "Build the libFuzzer targets (clang only) and a bounded ctest for each" OFF)
set(TREEGATE_FUZZ_SECONDS 60 CACHE STRING "Seconds each fuzzer ctest runs for (libFuzzer -max_total_time)")

# The unit tests and the header check get the include paths and zlib from treegate::io;
# tests/test_io_safetensors.cpp is compiled only where TREEGATE_HAS_IO says it exists.
function(treegate_io_link_test_targets)
  foreach(target IN ITEMS treegate_tests treegate_header_check)
    if(TARGET ${target})
      target_link_libraries(${target} PRIVATE treegate::io)
    endif()
  endforeach()
  if(TARGET treegate_tests)
    target_compile_definitions(treegate_tests PRIVATE TREEGATE_HAS_IO=1)
  endif()
endfunction()

if(TARGET treegate_io AND TREEGATE_BUILD_TESTS)
  cmake_language(DEFER CALL treegate_io_link_test_targets)
endif()

# The `asan` preset turns it off: it would build interop_main (the largest test program) for a
# test that has no Python environment there; the dev preset runs it.
option(TREEGATE_INTEROP_TEST "Build and run the safetensors interop test against Python's safetensors" ON)
if(TARGET treegate_io AND TREEGATE_BUILD_TESTS AND TREEGATE_INTEROP_TEST)
  include(${treegate_io_root}/cmake/treegateWarnings.cmake)

  # --- Interop with the Python `safetensors` package (tests/python/) ------------------------
  add_executable(treegate_interop_main ${treegate_io_root}/tests/python/interop_main.cpp)
  treegate_own_target(treegate_interop_main)
  target_link_libraries(treegate_interop_main PRIVATE treegate::io)

  # cmake/python_env.sh <build dir> makes <build dir>/pyenv; interop.py re-runs itself there
  # when the interpreter below lacks numpy or safetensors, and exits 77 (skip) when neither has them.
  set(treegate_pyenv ${PROJECT_BINARY_DIR}/pyenv)
  find_package(Python3 COMPONENTS Interpreter)
  if(Python3_Interpreter_FOUND)
    execute_process(COMMAND ${Python3_EXECUTABLE} -c "import safetensors, numpy"
                    RESULT_VARIABLE treegate_py_import OUTPUT_QUIET ERROR_QUIET)
    if(NOT treegate_py_import EQUAL 0 AND NOT EXISTS ${treegate_pyenv}/bin/python)
      message(STATUS "treegate: Python lacks numpy/safetensors; safetensors_interop will be skipped "
                     "unless `bash cmake/python_env.sh ${PROJECT_BINARY_DIR}` is run first")
    endif()
    add_test(NAME safetensors_interop
             COMMAND ${Python3_EXECUTABLE} ${treegate_io_root}/tests/python/interop.py
                     $<TARGET_FILE:treegate_interop_main> ${CMAKE_CURRENT_BINARY_DIR}/interop
                     --venv ${treegate_pyenv})
    set_tests_properties(safetensors_interop PROPERTIES SKIP_RETURN_CODE 77 LABELS interop TIMEOUT 300)
  else()
    add_test(NAME safetensors_interop
             COMMAND ${CMAKE_COMMAND} -E echo "SKIP: no Python 3 interpreter found for the safetensors interop test")
    set_tests_properties(safetensors_interop PROPERTIES SKIP_REGULAR_EXPRESSION "SKIP:" LABELS interop)
  endif()

  # --- PyTorch models through io/pytorch.hpp (tests/python/pytorch_interop.py) ----------------
  # Needs torch and fastfeedforward, which cmake/python_env.sh installs into the same pyenv.
  add_executable(treegate_pytorch_main ${treegate_io_root}/tests/python/pytorch_main.cpp)
  treegate_own_target(treegate_pytorch_main)
  target_link_libraries(treegate_pytorch_main PRIVATE treegate::io)
  if(Python3_Interpreter_FOUND)
    add_test(NAME pytorch_interop
             COMMAND ${Python3_EXECUTABLE} ${treegate_io_root}/tests/python/pytorch_interop.py
                     $<TARGET_FILE:treegate_pytorch_main> ${CMAKE_CURRENT_BINARY_DIR}/pytorch
                     --venv ${treegate_pyenv})
    set_tests_properties(pytorch_interop PROPERTIES SKIP_RETURN_CODE 77 LABELS interop TIMEOUT 300)
  else()
    add_test(NAME pytorch_interop
             COMMAND ${CMAKE_COMMAND} -E echo "SKIP: no Python 3 interpreter found for the PyTorch test")
    set_tests_properties(pytorch_interop PROPERTIES SKIP_REGULAR_EXPRESSION "SKIP:" LABELS interop)
  endif()
endif()

# --- libFuzzer -------------------------------------------------------------------------------
if(TREEGATE_BUILD_FUZZERS)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(WARNING "treegate: TREEGATE_BUILD_FUZZERS needs clang (libFuzzer), not ${CMAKE_CXX_COMPILER_ID}; "
                    "no fuzzers built")
  elseif(NOT TARGET treegate_io)
    message(WARNING "treegate: TREEGATE_BUILD_FUZZERS needs treegate::io (nlohmann_json and zlib); no fuzzers built")
  else()
    include(${treegate_io_root}/cmake/treegateWarnings.cmake)
    set(treegate_fuzz_flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
    # A libFuzzer executable, or (no `fuzz` flag) a seed writer, of treegate::io.
    function(treegate_fuzz_executable name source fuzz)
      add_executable(${name} ${source})
      treegate_own_target(${name})
      target_link_libraries(${name} PRIVATE treegate::io)
      if(fuzz)
        target_compile_options(${name} PRIVATE ${treegate_fuzz_flags} -g)
        target_link_options(${name} PRIVATE ${treegate_fuzz_flags})
      endif()
    endfunction()
    treegate_fuzz_executable(fuzz_safetensors ${treegate_io_root}/tests/fuzz/fuzz_safetensors.cpp ON)
    # Writes the seed corpus (the committed tests/fuzz/corpus/ came from it).
    treegate_fuzz_executable(treegate_make_corpus ${treegate_io_root}/tests/fuzz/make_corpus.cpp OFF)
    # The metadata-free load_into path and PyTorch's dtypes; the same source with
    # TREEGATE_FUZZ_MAKE_CORPUS writes its seeds (one option byte, then a state dict).
    treegate_fuzz_executable(fuzz_load_into ${treegate_io_root}/tests/fuzz/fuzz_load_into.cpp ON)
    treegate_fuzz_executable(treegate_make_load_into_corpus ${treegate_io_root}/tests/fuzz/fuzz_load_into.cpp OFF)
    target_compile_definitions(treegate_make_load_into_corpus PRIVATE TREEGATE_FUZZ_MAKE_CORPUS=1)

    # The bounded fuzz run is a ctest whenever fuzzers are built: the `fuzz` preset builds
    # nothing else (no TREEGATE_BUILD_TESTS), so it enables testing itself.
    enable_testing()
    if(NOT TREEGATE_FUZZ_SECONDS MATCHES "^[1-9][0-9]*$")
      message(FATAL_ERROR "treegate: TREEGATE_FUZZ_SECONDS must be a positive whole number of seconds, "
                          "not '${TREEGATE_FUZZ_SECONDS}'")
    endif()
    # Ctests `<name>_mkdir` and `<name>_seed` (the seed writer fills the work corpus), then
    # `<name>` fuzzing for `seconds` from it and the further corpus directories given.
    # libFuzzer adds what it finds to the first directory: keep that in the build tree.
    # -print_final_stats makes libFuzzer end with stat::number_of_executed_units, which
    # `bash cmake/treegate.sh test` reports; a crash leaves <name>_crash-* beside it.
    function(treegate_fuzz_test name seeder seconds)
      set(work ${CMAKE_CURRENT_BINARY_DIR}/${name}_corpus)
      add_test(NAME ${name}_seed COMMAND ${seeder} ${work})
      add_test(NAME ${name}_mkdir COMMAND ${CMAKE_COMMAND} -E make_directory ${work})
      add_test(NAME ${name}
               COMMAND ${name} -max_total_time=${seconds} -rss_limit_mb=2048 -print_final_stats=1
                       -dict=${treegate_io_root}/tests/fuzz/safetensors.dict
                       -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/${name}_ ${work} ${ARGN})
      # The timeout leaves room for loading the corpus and for a loaded machine.
      math(EXPR timeout "${seconds} * 2 + 120")
      set_tests_properties(${name}_mkdir PROPERTIES FIXTURES_SETUP ${name}_corpus LABELS fuzz)
      set_tests_properties(${name}_seed PROPERTIES FIXTURES_SETUP ${name}_corpus DEPENDS ${name}_mkdir LABELS fuzz)
      set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED ${name}_corpus LABELS fuzz TIMEOUT ${timeout})
    endfunction()
    # The fuzzers share TREEGATE_FUZZ_SECONDS, one after the other: the metadata-free load_into
    # target gets a third (at least 1 s), fuzz_safetensors the rest (at least 1 s).
    math(EXPR treegate_fuzz_load_into_seconds "${TREEGATE_FUZZ_SECONDS} / 3")
    if(treegate_fuzz_load_into_seconds LESS 1)
      set(treegate_fuzz_load_into_seconds 1)
    endif()
    math(EXPR treegate_fuzz_safetensors_seconds "${TREEGATE_FUZZ_SECONDS} - ${treegate_fuzz_load_into_seconds}")
    if(treegate_fuzz_safetensors_seconds LESS 1)
      set(treegate_fuzz_safetensors_seconds 1)
    endif()
    treegate_fuzz_test(fuzz_safetensors treegate_make_corpus ${treegate_fuzz_safetensors_seconds}
                       ${treegate_io_root}/tests/fuzz/corpus)
    treegate_fuzz_test(fuzz_load_into treegate_make_load_into_corpus ${treegate_fuzz_load_into_seconds})
    set_tests_properties(fuzz_load_into PROPERTIES DEPENDS fuzz_safetensors)
  endif()
endif()
