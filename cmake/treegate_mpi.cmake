# cmake/treegate_mpi.cmake — treegate/mpi/ (subtrees sharded over MPI ranks): the optional MPI
# dependency, its target, and the header-check settings its headers need.
#
# Include it from the top-level CMakeLists.txt after cmake/treegate_io.cmake and BEFORE
# add_subdirectory(tests): it may have to exclude mpi/ from the header check.
#
# Gives:  treegate::mpi  INTERFACE target = treegate::treegate + MPI::MPI_CXX, only when MPI's C++
#                        bindings are found (Debian: libopenmpi-dev openmpi-bin); the umbrella
#                        header treegate.hpp never includes mpi/, so nothing else depends on it.
#         TREEGATE_MPI_TEST_RANKS ("1;2;3;4")  rank counts the tests in tests/mpi/ run under mpirun
#         TREEGATE_MPI_TESTS               OFF in sanitizer builds (tests/mpi/ left out)
#         TREEGATE_MPIEXEC_FLAGS           mpirun flags of those runs (--oversubscribe for OpenMPI)
#         TREEGATE_MPI_TEST_ENV            their environment (OpenMPI as root, in containers)
include_guard(GLOBAL)

find_package(MPI QUIET COMPONENTS CXX)
if(MPI_CXX_FOUND)
  add_library(treegate_mpi INTERFACE)
  add_library(treegate::mpi ALIAS treegate_mpi)
  set_target_properties(treegate_mpi PROPERTIES EXPORT_NAME mpi)
  target_link_libraries(treegate_mpi INTERFACE treegate MPI::MPI_CXX)
  message(STATUS "treegate: MPI ${MPI_CXX_VERSION} found (${MPIEXEC_EXECUTABLE}), treegate::mpi available")
else()
  message(STATUS "treegate: MPI not found (Debian: libopenmpi-dev openmpi-bin), treegate/mpi/ and its tests are skipped")
  list(APPEND TREEGATE_HEADER_CHECK_EXCLUDE "^treegate/mpi/")
endif()
# Flags for our own mpirun runs (tests/mpi/, bench/mpi/): OpenMPI refuses more ranks than cores
# without --oversubscribe, which the 3- and 4-rank tests need on a 2-core machine.
set(TREEGATE_MPIEXEC_FLAGS ${MPIEXEC_PREFLAGS})
if(MPI_CXX_FOUND)
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE treegate_mpirun_version ERROR_QUIET)
  if(treegate_mpirun_version MATCHES "Open MPI|OpenRTE")
    list(APPEND TREEGATE_MPIEXEC_FLAGS --oversubscribe)
  endif()
endif()
# The environment of those runs: OpenMPI refuses root without the two ALLOW variables (test
# machines and containers often run as root), and in containers that forbid cross-process
# memory access its shared-memory transport's single-copy path fails, so copy through buffers.
set(TREEGATE_MPI_TEST_ENV
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_btl_vader_single_copy_mechanism=none")
# mpi/shard_io.hpp and mpi/ff_shard_io.hpp save and load shards through io/ (safetensors): they need both parts.
if(NOT TARGET treegate_io)
  list(APPEND TREEGATE_HEADER_CHECK_EXCLUDE "^treegate/mpi/shard_io.hpp" "^treegate/mpi/ff_shard_io.hpp")
endif()

set(TREEGATE_MPI_TEST_RANKS "1;2;3;4" CACHE STRING "Rank counts the MPI tests run with (;-list)")
# OpenMPI's runtime is not sanitizer-clean (LeakSanitizer reports its own allocations, TSan its
# progress threads), so tests/mpi/ is built only where no -fsanitize is in the flags: the dev
# preset runs it, asan and tsan leave it out.
set(TREEGATE_MPI_TESTS ON)
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize")
  set(TREEGATE_MPI_TESTS OFF)
  if(TARGET treegate_mpi)
    message(STATUS "treegate: sanitizer build, the MPI tests (tests/mpi/) are left out")
  endif()
endif()

# The header check compiles the mpi/ headers too, so it needs mpi.h.
function(treegate_mpi_link_header_check)
  if(TARGET treegate_header_check)
    target_link_libraries(treegate_header_check PRIVATE treegate::mpi)
  endif()
endfunction()
if(TARGET treegate_mpi AND TREEGATE_BUILD_TESTS)
  cmake_language(DEFER CALL treegate_mpi_link_header_check)
endif()
